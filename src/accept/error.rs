//! Every answer that is not a 200, and the one table that maps it to an HTTP status.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::decode::DecodeError;
use crate::validate::RowError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    #[error("stream {stream:?} has no schema version {version:?} (known: {known})")]
    UnknownSchemaVersion {
        stream: String,
        version: String,
        known: String,
    },
    #[error("{message}")]
    Unauthenticated {
        /// Short reason for `sluice_auth_failures_total{reason}`.
        reason: &'static str,
        message: String,
    },
    #[error("{message}")]
    Forbidden {
        reason: &'static str,
        message: String,
    },
    #[error(
        "principal {principal:?} is over its rate limit of {} {what}/s{}",
        refusal.rate,
        match refusal.retry_after_secs {
            Some(secs) => format!("; retry in {secs} s"),
            None => format!(": a batch of {asked} {what} is larger than its burst of {}", refusal.limit),
        }
    )]
    RateLimited {
        principal: String,
        /// `rows` or `bytes`.
        what: &'static str,
        asked: u64,
        refusal: crate::auth::rate::Refusal,
    },
    #[error("x-sluice-row-count declares {declared} records, the body has {parsed}")]
    RowCountMismatch { declared: u64, parsed: u64 },
    #[error("invalid header {name}: {reason}")]
    BadHeader { name: &'static str, reason: String },
    #[error("body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the body did not arrive within {secs} s")]
    BodyTimeout { secs: u64 },
    #[error("too many request bodies are being received at once, retry later")]
    BodyBufferFull,
    #[error("body could not be read: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("all {rejected} rows were rejected")]
    AllRowsRejected {
        rejected: usize,
        batch_id: String,
        errors: Vec<RowError>,
    },
    #[error("batch id {batch_id:?} was already stored with other content")]
    BatchIdConflict { batch_id: String },
    #[error("ingest queue is full, retry later")]
    Overloaded,
    #[error("spool is full while clickhouse catches up, retry later")]
    SpoolFull,
    #[error("clickhouse is unavailable, retry later")]
    Unavailable,
    /// The spool could not write or void a record (disk error): nothing was acknowledged.
    #[error("the spool cannot write, retry later")]
    SpoolUnavailable,
    #[error("clickhouse refused the rows; sluice's log has the details under this request id")]
    Refused,
    #[error("sluice is shutting down")]
    ShuttingDown,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status and stable code of each error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownStream(_) => (StatusCode::NOT_FOUND, "unknown_stream"),
            ApiError::UnknownSchemaVersion { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_schema_version")
            }
            ApiError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::RateLimited { refusal, .. } => match refusal.retry_after_secs {
                Some(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                None => (StatusCode::PAYLOAD_TOO_LARGE, "over_burst"),
            },
            ApiError::RowCountMismatch { .. } => (StatusCode::BAD_REQUEST, "row_count_mismatch"),
            ApiError::BadHeader { .. } => (StatusCode::BAD_REQUEST, "bad_header"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            ApiError::BodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ApiError::BodyBufferFull => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Decode(err) => match err {
                DecodeError::UnsupportedEncoding(_) => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding")
                }
                DecodeError::UnsupportedContentType(_) => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_content_type",
                ),
                DecodeError::Decompress { .. } => (StatusCode::BAD_REQUEST, "bad_compression"),
                DecodeError::DecompressedTooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "decompressed_too_large")
                }
                DecodeError::TooManyRecords { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_many_records")
                }
                DecodeError::NotFramed { .. } => (StatusCode::BAD_REQUEST, "malformed_body"),
            },
            ApiError::AllRowsRejected { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "all_rows_rejected")
            }
            ApiError::BatchIdConflict { .. } => (StatusCode::CONFLICT, "batch_id_conflict"),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::SpoolFull => (StatusCode::SERVICE_UNAVAILABLE, "spool_full"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "clickhouse_unavailable"),
            ApiError::SpoolUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "spool_unavailable"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::Refused => (StatusCode::INTERNAL_SERVER_ERROR, "insert_refused"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The reason counted in `sluice_auth_failures_total`, for refusals of the auth stage.
    pub fn auth_failure_reason(&self) -> Option<&'static str> {
        match self {
            ApiError::Unauthenticated { reason, .. } | ApiError::Forbidden { reason, .. } => {
                Some(reason)
            }
            ApiError::RateLimited { .. } => Some("rate_limited"),
            ApiError::RowCountMismatch { .. } => Some("row_count_mismatch"),
            _ => None,
        }
    }

    /// The limit that refused the request, for `sluice_limit_refusals_total{limit}`.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            ApiError::BodyTooLarge { .. } => Some("body_bytes"),
            ApiError::BodyTimeout { .. } => Some("body_timeout"),
            ApiError::BodyBufferFull => Some("buffered_body_bytes"),
            ApiError::Decode(DecodeError::DecompressedTooLarge { .. }) => {
                Some("decompressed_bytes")
            }
            ApiError::Decode(DecodeError::TooManyRecords { .. }) => Some("records"),
            ApiError::Overloaded => Some("in_flight"),
            _ => None,
        }
    }

    /// Seconds a sender should wait before retrying, for 429s and 503s.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { refusal, .. } => refusal.retry_after_secs,
            ApiError::Overloaded | ApiError::BodyBufferFull => Some(1),
            ApiError::Unavailable
            | ApiError::ShuttingDown
            | ApiError::SpoolFull
            | ApiError::SpoolUnavailable => Some(5),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [RowError]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut body = ErrorBody {
            code,
            message: self.to_string(),
            accepted: None,
            rejected: None,
            batch_id: None,
            errors: None,
        };
        if let ApiError::AllRowsRejected {
            rejected,
            batch_id,
            errors,
        } = &self
        {
            body.accepted = Some(0);
            body.rejected = Some(*rejected);
            body.batch_id = Some(batch_id);
            body.errors = Some(errors);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::RateLimited { refusal, .. } = &self {
            let headers = response.headers_mut();
            headers.insert("x-ratelimit-limit", HeaderValue::from(refusal.limit));
            headers.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(refusal.remaining),
            );
            headers.insert("x-ratelimit-reset", HeaderValue::from(refusal.reset_secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender tells a full or failing spool apart from an unreachable ClickHouse, and retries
    /// each later.
    #[test]
    fn spool_failures_are_503s_with_their_own_codes() {
        for (error, code, message) in [
            (
                ApiError::SpoolUnavailable,
                "spool_unavailable",
                "the spool cannot write, retry later",
            ),
            (
                ApiError::SpoolFull,
                "spool_full",
                "spool is full while clickhouse catches up, retry later",
            ),
            (
                ApiError::Unavailable,
                "clickhouse_unavailable",
                "clickhouse is unavailable, retry later",
            ),
        ] {
            assert_eq!(
                error.status_and_code(),
                (StatusCode::SERVICE_UNAVAILABLE, code)
            );
            assert_eq!(error.to_string(), message);
            let response = error.into_response();
            assert_eq!(response.headers()[header::RETRY_AFTER], "5", "{code}");
        }
    }
}
