//! `POST /v1/streams/{stream}`: authenticate, read the body under its limit, decode and validate
//! off the async workers, hand the rows to the pipeline, and answer once they are delivered.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use super::tls::PeerIdentity;
use crate::auth::{self, RateResource, signature};
use crate::config::AckMode;
use crate::decode;
use crate::dedup::{Claim, ClaimGuard};
use crate::pipeline::{Reservation, StreamVersion, SubmitError};
use crate::sink::SinkError;
use crate::spool::{AppendGuard, RecordId, SpoolError, SpoolRecord};
use crate::validate::{self, RejectReason, RequestContext, RowError, ValidatedBatch};

pub const BATCH_ID_HEADER: &str = "x-sluice-batch-id";
pub const SCHEMA_VERSION_HEADER: &str = "x-sluice-schema-version";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The 200 answer.
#[derive(Debug, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub rejected: usize,
    pub batch_id: String,
    pub request_id: String,
    pub errors: Vec<RowError>,
    /// The batch id was already stored with this content: nothing was stored again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

impl Accepted {
    /// An answer that stores nothing: Logpush's probe, or a duplicate batch.
    fn nothing(batch_id: String, request_id: &str, duplicate: bool) -> Accepted {
        Accepted {
            accepted: 0,
            rejected: 0,
            batch_id,
            request_id: request_id.to_string(),
            errors: Vec::new(),
            duplicate,
        }
    }
}

pub async fn ingest(
    State(state): State<Arc<AppState>>,
    Path(stream): Path<String>,
    uri: axum::http::Uri,
    peer: Option<axum::Extension<Option<Arc<PeerIdentity>>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let request_id = header_value(&headers, REQUEST_ID_HEADER)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let peer = peer.and_then(|axum::Extension(peer)| peer);
    let mut seen = Seen::default();
    let result = handle(
        &state,
        &stream,
        Request {
            peer: peer.as_deref(),
            headers: &headers,
            path: uri.path(),
            request_id: &request_id,
        },
        body,
        &mut seen,
    )
    .instrument(tracing::info_span!("ingest", %stream, %request_id))
    .await;
    let stream_label = if state.pipeline.stream(&stream).is_some() {
        stream.clone()
    } else {
        "unknown".to_string()
    };
    let principal_label = seen.principal.clone().unwrap_or_default();
    let rejected_rows = |by_reason: &[usize; RejectReason::ALL.len()]| {
        for (reason, count) in RejectReason::ALL.iter().zip(by_reason) {
            if *count > 0 {
                metrics::counter!("sluice_rows_rejected_total", "stream" => stream_label.clone(),
                    "principal" => principal_label.clone(), "reason" => reason.as_str())
                .increment(*count as u64);
            }
        }
    };
    let mut response = match result {
        Ok(accepted) => {
            metrics::counter!("sluice_rows_accepted_total", "stream" => stream_label.clone(),
                "principal" => principal_label.clone())
            .increment(accepted.accepted as u64);
            rejected_rows(&seen.rejected_by_reason);
            state.status.rows(
                accepted.accepted as u64,
                &seen.rejected_by_reason,
                seen.wire_bytes as u64,
            );
            state.status.answered(None);
            tracing::info!(
                %stream,
                %request_id,
                batch_id = %accepted.batch_id,
                principal = %principal_label,
                status = 200,
                accepted = accepted.accepted,
                rejected = accepted.rejected,
                duplicate = accepted.duplicate,
                insert_ids = seen.insert_ids.as_deref().unwrap_or(""),
                "request answered"
            );
            Json(accepted).into_response()
        }
        Err(error) => {
            if let Some(limit) = error.limit() {
                super::conn::count_refusal(limit);
            }
            if let Some(reason) = error.auth_failure_reason() {
                metrics::counter!("sluice_auth_failures_total", "reason" => reason).increment(1);
            }
            if let ApiError::AllRowsRejected { .. } = &error {
                rejected_rows(&seen.rejected_by_reason);
                state
                    .status
                    .rows(0, &seen.rejected_by_reason, seen.wire_bytes as u64);
            }
            let (status, code) = error.status_and_code();
            state.status.answered(Some(format!(
                "{} {code} ({stream}): {error}",
                status.as_u16()
            )));
            tracing::info!(
                %stream,
                %request_id,
                principal = %principal_label,
                status = status.as_u16(),
                code,
                %error,
                "request refused"
            );
            error.into_response()
        }
    };
    metrics::counter!(
        "sluice_requests_total",
        "stream" => stream_label.clone(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    if let Some(principal) = seen.principal {
        metrics::counter!(
            "sluice_principal_requests_total",
            "principal" => principal,
            "status" => response.status().as_u16().to_string()
        )
        .increment(1);
    }
    metrics::histogram!("sluice_request_seconds", "stream" => stream_label)
        .record(started.elapsed().as_secs_f64());
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

/// What `handle` reads of the request besides its body.
struct Request<'r> {
    peer: Option<&'r PeerIdentity>,
    headers: &'r HeaderMap,
    /// The path as sent (signed batches sign it).
    path: &'r str,
    request_id: &'r str,
}

/// What the answer's log line and metrics need to know of a request, filled in as `handle`
/// learns it.
#[derive(Default)]
struct Seen {
    /// The authenticated principal.
    principal: Option<String>,
    /// Body bytes as sent.
    wire_bytes: usize,
    rejected_by_reason: [usize; RejectReason::ALL.len()],
    /// The inserts that carried the rows (`ingest.ack = "clickhouse"` only: in the other modes
    /// the answer comes first, and the `request delivered` line names them later).
    insert_ids: Option<String>,
}

/// Bodies larger than this are hashed for a signature check off the async workers.
const SIGNATURE_HASH_INLINE_BYTES: usize = 256 << 10;

/// How often a request waiting for in-flight room looks again (`limits.overload_wait_ms`).
const OVERLOAD_POLL: Duration = Duration::from_millis(5);

/// `seen` receives what the answer's log line and metrics report.
async fn handle(
    state: &AppState,
    stream: &str,
    request: Request<'_>,
    body: Body,
    seen: &mut Seen,
) -> Result<Accepted, ApiError> {
    let Request {
        peer,
        headers,
        path,
        request_id,
    } = request;
    let config = &state.config;
    // Authentication comes first: an anonymous client learns nothing, not even stream names.
    // The credentials in force when the request arrived decide it, even if a reload swaps
    // them meanwhile.
    let auth = state.auth.load_full();
    let verified = auth.authenticate(peer, headers, unix_now() as i64)?;
    let principal = verified.principal;
    seen.principal = Some(principal.name().to_string());
    let versions = state
        .pipeline
        .stream(stream)
        .ok_or_else(|| ApiError::UnknownStream(stream.to_string()))?;
    principal.authorize_stream(stream)?;
    let (origin, region) = principal.origin_and_region(headers)?;
    let version = match header_value(headers, SCHEMA_VERSION_HEADER) {
        None => versions.values().next_back(),
        Some(text) => text
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|v| versions.get(&v)),
    }
    .ok_or_else(|| ApiError::UnknownSchemaVersion {
        stream: stream.to_string(),
        version: header_value(headers, SCHEMA_VERSION_HEADER)
            .unwrap_or("")
            .to_string(),
        known: versions
            .keys()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let IngestHeaders {
        batch_id: sender_batch_id,
        encoding,
        content_type,
        declared_rows,
    } = ingest_headers(headers)?;
    // Only a sender's own batch id can be retried; generated ones are never deduplicated.
    let batch_id = sender_batch_id
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let content_type = content_type.map(str::to_string);
    let limit = principal
        .config
        .max_batch_bytes
        .map_or(config.limits.max_body_bytes, |max| {
            max.min(config.limits.max_body_bytes)
        });
    let (bytes, _buffered) = read_body(
        body,
        limit,
        &state.buffered_bodies,
        Duration::from_secs(config.limits.body_read_timeout_secs),
    )
    .await?;
    metrics::counter!("sluice_request_bytes_total", "stream" => stream.to_string(),
        "principal" => principal.name().to_string())
    .increment(bytes.len() as u64);
    seen.wire_bytes = bytes.len();
    // Under overload, wait for room before decoding, then refuse: the CPU goes to the inserts
    // that drain the backlog, not to bodies that would be refused after all.
    let overload_wait = Duration::from_millis(config.limits.overload_wait_ms);
    let waiting_since = Instant::now();
    if version.saturated() {
        let room = loop {
            if !version.saturated() {
                break Ok(());
            }
            if waiting_since.elapsed() >= overload_wait {
                break Err(submit_error(SubmitError::Overloaded));
            }
            tokio::time::sleep(OVERLOAD_POLL).await;
        };
        record_in_flight_wait(stream, "arrival", waiting_since);
        room?;
    }
    // What is left of the wait for room once the body is validated.
    let overload_wait = overload_wait.saturating_sub(waiting_since.elapsed());
    if verified.signed() {
        let body_hash = if bytes.len() <= SIGNATURE_HASH_INLINE_BYTES {
            signature::body_hash(&bytes)
        } else {
            let body = bytes.clone();
            tokio::task::spawn_blocking(move || signature::body_hash(&body))
                .await
                .map_err(|_| ApiError::Internal)?
        };
        verified.verify_body("POST", path, sender_batch_id, &body_hash)?;
    }
    let bytes_len = bytes.len();
    principal.take(RateResource::Bytes, bytes_len as u64)?;

    let context = RequestContext {
        principal: principal.name().to_string(),
        origin,
        region,
        batch_id: batch_id.clone(),
        request_id: request_id.to_string(),
        received_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0),
        url_encoded: principal.config.url_encoded,
    };
    // A batch id stored before: the request is a duplicate or a conflict, answered once its
    // digest is known, and never stored, so it is not spooled (a retry storm costs no disk).
    let stored_digest = sender_batch_id.and_then(|_| {
        state
            .dedup
            .stored_digest(principal.name(), stream, &batch_id)
    });
    // With `ingest.ack = "spool"` the body is appended to the spool while it is validated: the
    // disk's sync and the CPU's work overlap. A batch refused after all is voided (durably)
    // before the refusal is answered.
    let spool = match config.ingest.ack {
        AckMode::Spool if stored_digest.is_some() => None,
        AckMode::Spool => Some(
            state
                .spool
                .as_ref()
                .expect("config validation: ack = spool needs a spool"),
        ),
        AckMode::Memory | AckMode::ClickHouse => None,
    };
    let mut limits = config.limits.body_limits();
    if let Some(max) = principal.config.max_batch_rows {
        limits.max_records = limits.max_records.min(max);
    }
    let mut spooling = match spool {
        Some(spool) => Some(
            spool
                .begin_guarded_append(&SpoolRecord {
                    stream: stream.to_string(),
                    schema_version: version.compiled.schema.version,
                    context: context.clone(),
                    content_type: content_type.clone(),
                    content_encoding: header_value(headers, header::CONTENT_ENCODING.as_str())
                        .map(str::to_string),
                    declared_rows,
                    limits: Some(limits),
                    sender_batch_id: sender_batch_id.is_some(),
                    body: bytes.clone(),
                })
                .map_err(spool_error)?,
        ),
        None => None,
    };
    let shared_context = Arc::new(context.clone());
    let compiled = version.compiled.clone();
    let how = validate::Validation {
        digest: sender_batch_id.is_some(),
        part_bytes: config.ingest.decode_part_bytes,
    };
    let validating = async {
        // At most `limits.max_concurrent_decodes` bodies are inflated at once: a bound on memory.
        let _decoding = state
            .decodes
            .acquire()
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        // A small body is validated here, on the async worker; a larger one on a blocking thread.
        // A panic is answered as the blocking thread's would be, not by dropping the connection.
        let small = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            validate::validate_small_body(
                &compiled,
                &context,
                &bytes,
                encoding,
                content_type.as_deref(),
                limits,
                how,
                config.ingest.inline_decode_bytes,
            )
        }))
        .map_err(|_| {
            tracing::error!(error = "panicked", "validation task failed");
            ApiError::Internal
        })?;
        let validated = match small {
            Some(validated) => validated?,
            None => tokio::task::spawn_blocking(move || {
                validate::validate_body(
                    &compiled,
                    context,
                    &bytes,
                    encoding,
                    content_type.as_deref(),
                    limits,
                    how,
                )
            })
            .await
            .map_err(|err| {
                tracing::error!(error = %err, "validation task failed");
                ApiError::Internal
            })??,
        };
        Ok::<_, ApiError>((validated, Instant::now()))
    };
    let (validated, spooled) = tokio::join!(validating, async {
        match spooling.as_mut() {
            Some(spooling) => Some(spooling.durable().await),
            None => None,
        }
    });
    // `sluice_ack_seconds` counts from here: what is left of the spool's sync once the body
    // is validated, or the wait for ClickHouse.
    let (validated, validated_at) = match validated {
        Ok((validated, at)) => (Ok(validated), at),
        Err(err) => (Err(err), Instant::now()),
    };

    let verdict = async {
        let Some((validated, digest)) = validated? else {
            // Logpush's destination probe: acknowledged, nothing stored.
            return Ok(Verdict::Answer(Accepted::nothing(
                batch_id.clone(),
                request_id,
                false,
            )));
        };
        let ValidatedBatch {
            batch,
            quarantine,
            accepted,
            rejected,
            errors,
            rejected_by_reason,
            decoded_bytes,
        } = validated;
        let records = (accepted + rejected) as u64;
        metrics::counter!("sluice_request_decoded_bytes_total", "stream" => stream.to_string(),
            "principal" => principal.name().to_string())
        .increment(decoded_bytes as u64);
        metrics::histogram!("sluice_batch_rows", "stream" => stream.to_string())
            .record(records as f64);
        if let Some(declared) = declared_rows
            && declared != records
        {
            return Err(ApiError::RowCountMismatch {
                declared,
                parsed: records,
            });
        }
        if let Err(err) = principal.take(RateResource::Rows, records) {
            principal.give_back(RateResource::Bytes, bytes_len as u64);
            return Err(err);
        }
        seen.rejected_by_reason = rejected_by_reason;
        if accepted == 0 && rejected == 0 {
            // An empty body: nothing to deliver.
            return Ok(Verdict::Answer(Accepted::nothing(
                batch_id.clone(),
                request_id,
                false,
            )));
        }
        // A batch whose every row is rejected is answered 422, but its rows are delivered to
        // the quarantine table all the same.
        let answer = if accepted == 0 {
            Err(ApiError::AllRowsRejected {
                rejected,
                batch_id: batch_id.clone(),
                errors,
            })
        } else {
            Ok(Accepted {
                accepted,
                rejected,
                batch_id: batch_id.clone(),
                request_id: request_id.to_string(),
                errors,
                duplicate: false,
            })
        };
        let claim = match (digest, stored_digest) {
            (Some(digest), Some(stored)) if digest == stored => Some(Claim::Duplicate),
            (Some(_), Some(_)) => Some(Claim::Conflict),
            (Some(digest), None) if accepted > 0 => Some(
                state
                    .dedup
                    .claim(principal.name(), stream, &batch_id, digest)
                    .await,
            ),
            // A stored digest comes only with a sender's batch id, whose body is always
            // digested: this request was not spooled and must not be stored.
            (None, Some(_)) => return Err(ApiError::Internal),
            (_, None) => None,
        };
        let claim = match claim {
            Some(Claim::Duplicate) => {
                metrics::counter!("sluice_duplicate_batches_total", "stream" => stream.to_string())
                    .increment(1);
                seen.rejected_by_reason = Default::default();
                return Ok(Verdict::Answer(Accepted::nothing(
                    batch_id.clone(),
                    request_id,
                    true,
                )));
            }
            Some(Claim::Conflict) => {
                return Err(ApiError::BatchIdConflict {
                    batch_id: batch_id.clone(),
                });
            }
            Some(Claim::New(guard)) => Some(guard),
            None => None,
        };
        // Accepted and rejected rows (the latter to the quarantine table) travel together: both
        // are acknowledged the same way. Room taken by other requests since the check before
        // decoding is waited for (what is left of `overload_wait_ms`) rather than the validated
        // rows thrown away with a 503 — holding a decode place, so that the rows waiting count
        // against `max_concurrent_decodes` as they did while decoded; with none free, 503.
        let bytes = batch.get_array_memory_size() + quarantine.get_array_memory_size();
        let reservation = match version.reserve(bytes) {
            Ok(reservation) => reservation,
            Err(err) => {
                let Ok(_place) = state.decodes.try_acquire() else {
                    return Err(submit_error(err));
                };
                let since = Instant::now();
                let waited =
                    tokio::time::timeout(overload_wait, version.reserve_waiting(bytes)).await;
                record_in_flight_wait(stream, "validated", since);
                waited.map_err(|_| submit_error(SubmitError::Overloaded))?
            }
        };
        Ok(Verdict::Store(Delivery {
            batch,
            quarantine,
            reservation,
            claim,
            answer,
        }))
    }
    .await;

    let delivery = match verdict {
        Ok(Verdict::Store(delivery)) => delivery,
        Ok(Verdict::Answer(answer)) => {
            withdraw(spooling).await?;
            return Ok(answer);
        }
        Err(err) => {
            withdraw(spooling).await?;
            return Err(err);
        }
    };
    let Delivery {
        batch,
        quarantine,
        reservation,
        claim,
        answer,
    } = delivery;
    let record_id = spooled.transpose().map_err(spool_error)?;
    let acknowledged = acknowledge(
        state,
        version,
        batch,
        quarantine,
        reservation,
        shared_context,
        record_id,
    )
    .await;
    seen.insert_ids = match acknowledged {
        Ok(insert_ids) => insert_ids,
        Err(err) => {
            // Refused by the pipeline (full, or shutting down): not delivered now, not later.
            withdraw(spooling).await?;
            return Err(err);
        }
    };
    if let Some(spooling) = spooling {
        spooling.handed_over();
    }
    metrics::histogram!("sluice_ack_seconds", "stream" => stream.to_string())
        .record(validated_at.elapsed().as_secs_f64());
    if let Some(claim) = claim {
        claim.commit();
    }
    answer
}

/// How long a request waited for in-flight room (`sluice_in_flight_wait_seconds`), whether
/// it got it or was then refused: `at` is `arrival` (before decoding) or `validated`.
fn record_in_flight_wait(stream: &str, at: &'static str, since: Instant) {
    metrics::histogram!("sluice_in_flight_wait_seconds", "stream" => stream.to_string(), "at" => at)
        .record(since.elapsed().as_secs_f64());
}

/// Voids the spool record of a batch that is answered without being delivered: until the void
/// is on disk, replay would deliver what the answer refuses.
async fn withdraw(spooling: Option<AppendGuard>) -> Result<(), ApiError> {
    let Some(spooling) = spooling else {
        return Ok(());
    };
    spooling.void().await.map_err(|err| {
        tracing::error!(error = %err, "spool void failed");
        ApiError::SpoolUnavailable
    })
}

/// A validated batch on its way to the pipeline.
struct Delivery<'s> {
    batch: RecordBatch,
    quarantine: RecordBatch,
    reservation: Reservation,
    /// The batch id's dedup claim, committed once the batch is acknowledged.
    claim: Option<ClaimGuard<'s>>,
    /// Once delivered: a 200, or 422 when every row was rejected (to the quarantine table).
    answer: Result<Accepted, ApiError>,
}

/// What `handle` does with a validated batch.
// One per request, moved once: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Verdict<'s> {
    /// Deliver it, then answer.
    Store(Delivery<'s>),
    /// Store nothing (a probe, an empty body, a duplicate) and give this answer.
    Answer(Accepted),
}

/// What the ingest handler reads from a request's headers besides credentials, origin and
/// schema version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestHeaders<'h> {
    /// `X-Sluice-Batch-Id` as the sender set it: 1 to 128 printable ASCII characters.
    pub batch_id: Option<&'h str>,
    /// `Content-Encoding`.
    pub encoding: decode::ContentEncoding,
    /// `Content-Type` as sent (the format is chosen once the body is decompressed).
    pub content_type: Option<&'h str>,
    /// `X-Sluice-Row-Count`: the records the sender says the body holds.
    pub declared_rows: Option<u64>,
}

/// Reads and checks the headers of [`IngestHeaders`]; a bad one is a 400 (415 for an unknown
/// encoding) naming the header.
pub fn ingest_headers(headers: &HeaderMap) -> Result<IngestHeaders<'_>, ApiError> {
    let batch_id = match header_value(headers, BATCH_ID_HEADER) {
        Some(id) if valid_id(id) => Some(id),
        Some(_) => {
            return Err(ApiError::BadHeader {
                name: BATCH_ID_HEADER,
                reason: "must be 1 to 128 printable ASCII characters".to_string(),
            });
        }
        None if headers.contains_key(BATCH_ID_HEADER) => {
            return Err(ApiError::BadHeader {
                name: BATCH_ID_HEADER,
                reason: "must be 1 to 128 printable ASCII characters".to_string(),
            });
        }
        None => None,
    };
    let encoding =
        decode::content_encoding(header_value(headers, header::CONTENT_ENCODING.as_str()))?;
    let content_type = header_value(headers, header::CONTENT_TYPE.as_str());
    let declared_rows = match header_value(headers, auth::ROW_COUNT_HEADER) {
        None => None,
        Some(text) => Some(
            text.trim()
                .parse::<u64>()
                .map_err(|_| ApiError::BadHeader {
                    name: auth::ROW_COUNT_HEADER,
                    reason: "must be a whole number".to_string(),
                })?,
        ),
    };
    Ok(IngestHeaders {
        batch_id,
        encoding,
        content_type,
        declared_rows,
    })
}

/// Hands the rows to the pipeline and returns once they are acknowledged as `ingest.ack` says:
/// in the spool (as `record_id`, already durable), confirmed by ClickHouse (then with the ids of
/// the inserts that carried them), or queued in memory.
async fn acknowledge(
    state: &AppState,
    version: &StreamVersion,
    accepted: RecordBatch,
    rejected: RecordBatch,
    reservation: Reservation,
    context: Arc<RequestContext>,
    record_id: Option<RecordId>,
) -> Result<Option<String>, ApiError> {
    match state.config.ingest.ack {
        AckMode::Spool | AckMode::Memory => {
            version
                .submit(accepted, rejected, reservation, context, record_id, None)
                .map_err(submit_error)?;
            Ok(None)
        }
        AckMode::ClickHouse => {
            let (done, delivered) = tokio::sync::oneshot::channel();
            version
                .submit(accepted, rejected, reservation, context, None, Some(done))
                .map_err(submit_error)?;
            match delivered.await {
                Ok(Ok(insert_ids)) => Ok(Some(insert_ids.to_string())),
                Ok(Err(SinkError::Retryable(reason) | SinkError::Unreachable(reason))) => {
                    tracing::warn!(%reason, "batch not delivered");
                    Err(ApiError::Unavailable)
                }
                Ok(Err(SinkError::Permanent { code, message })) => {
                    tracing::error!(code, %message, "clickhouse refused the batch");
                    Err(ApiError::Refused)
                }
                Err(_) => Err(ApiError::ShuttingDown),
            }
        }
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`, holding a share of the
/// buffered-body budget (`limits.max_buffered_body_bytes`, one permit per byte) for as long as
/// the returned permit lives. A declared `Content-Length` over the limit is refused before any of
/// the body is read.
async fn read_body(
    body: Body,
    limit: usize,
    budget: &Semaphore,
    timeout: Duration,
) -> Result<(Bytes, Option<SemaphorePermit<'_>>), ApiError> {
    let mut body = body;
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    if declared.is_some_and(|declared| declared > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let read = async {
        let mut held: Option<SemaphorePermit<'_>> = None;
        let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| ApiError::BodyRead(err.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if buffer.len() + data.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            let permits =
                u32::try_from(data.len()).map_err(|_| ApiError::BodyTooLarge { limit })?;
            let permit = budget
                .try_acquire_many(permits)
                .map_err(|_| ApiError::BodyBufferFull)?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
            buffer.extend_from_slice(&data);
        }
        Ok((buffer.freeze(), held))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout {
            secs: timeout.as_secs(),
        }))
}

fn spool_error(err: SpoolError) -> ApiError {
    match err {
        SpoolError::Full { .. } => ApiError::SpoolFull,
        other => {
            tracing::error!(error = %other, "spool append failed");
            ApiError::SpoolUnavailable
        }
    }
}

fn submit_error(err: SubmitError) -> ApiError {
    match err {
        SubmitError::Overloaded => ApiError::Overloaded,
        SubmitError::ShuttingDown => ApiError::ShuttingDown,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn header_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}
