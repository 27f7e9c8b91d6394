//! Auth: who is sending, what they may write and claim, and how fast.
//!
//! A request may present several credentials; every one presented is verified, and a bad one
//! is a 401 even when another would have sufficed. They must all name the same principal, which
//! is then the principal of the request. From strongest to weakest:
//!
//! 1. a client certificate (verified in the TLS handshake), mapped by its DNS or URI SANs, then
//!    its subject CN, to `principals[].cert_names`;
//! 2. a signed batch (`X-Sluice-Signature`, see [`signature`]): the key named in
//!    `X-Sluice-Key-Id` belongs to one principal; the signature itself is checked once the body
//!    has been read ([`Verified::verify_body`]);
//! 3. a bearer JWT (`Authorization: Bearer`, see [`jwt`]): its principal claim names the
//!    principal;
//! 4. a header secret (`X-Sluice-Secret`, name configurable), for senders that can set only one
//!    custom header (DataStream 2, Logpush through its `header_*` URL parameters, which
//!    Cloudflare turns into request headers; Fastly).
//!
//! Origin and region come from the `X-Sluice-Origin` / `X-Sluice-Region` headers where the
//! principal's allow-lists permit them, or from the principal's configuration for senders that
//! can set no such header (DataStream 2).

pub mod jwt;
pub mod rate;
pub mod secret;
pub mod signature;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::accept::error::ApiError;
use crate::accept::tls::PeerIdentity;
use crate::config::{Config, PrincipalConfig};

pub const ORIGIN_HEADER: &str = "x-sluice-origin";
pub const REGION_HEADER: &str = "x-sluice-region";
pub const SIGNATURE_HEADER: &str = "x-sluice-signature";
pub const KEY_ID_HEADER: &str = "x-sluice-key-id";
pub const TIMESTAMP_HEADER: &str = "x-sluice-timestamp";
pub const ROW_COUNT_HEADER: &str = "x-sluice-row-count";

/// `[auth]`: listener-wide authentication settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Header that carries a static header secret.
    #[serde(default = "default_secret_header")]
    pub secret_header: String,
    /// How far `X-Sluice-Timestamp` of a signed batch may be from the server's clock, in
    /// seconds, either way.
    #[serde(default = "default_signature_window_secs")]
    pub signature_window_secs: u64,
    /// Bearer JWTs; absent: bearer tokens are refused.
    pub jwt: Option<jwt::JwtConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret_header: default_secret_header(),
            signature_window_secs: default_signature_window_secs(),
            jwt: None,
        }
    }
}

fn default_secret_header() -> String {
    "x-sluice-secret".to_string()
}
fn default_signature_window_secs() -> u64 {
    300
}

/// A refused credential: 401 (`forbidden = false`) or 403, a short reason for the metric and
/// the message for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub forbidden: bool,
    pub reason: &'static str,
    pub message: String,
}

impl AuthError {
    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> AuthError {
        AuthError {
            forbidden: false,
            reason,
            message: message.into(),
        }
    }
    pub fn forbidden(reason: &'static str, message: impl Into<String>) -> AuthError {
        AuthError {
            forbidden: true,
            reason,
            message: message.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        if err.forbidden {
            ApiError::Forbidden {
                reason: err.reason,
                message: err.message,
            }
        } else {
            ApiError::Unauthenticated {
                reason: err.reason,
                message: err.message,
            }
        }
    }
}

/// How a request proved its principal, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    HeaderSecret,
    BearerToken,
    Signature,
    ClientCertificate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::HeaderSecret => "header secret",
            Method::BearerToken => "bearer token",
            Method::Signature => "signature",
            Method::ClientCertificate => "client certificate",
        }
    }
}

/// A configured principal with its rate-limit state.
#[derive(Debug)]
pub struct Principal {
    pub config: PrincipalConfig,
    /// Shared with the principal of the same name and limits after a reload, so that a reload
    /// does not refill the buckets.
    rows: Option<Arc<rate::TokenBucket>>,
    bytes: Option<Arc<rate::TokenBucket>>,
}

/// Everything needed to authenticate requests, built once from the config.
pub struct Auth {
    principals: Vec<Principal>,
    /// SHA-256 of every header secret and its principal; scanned whole, in constant time.
    header_secrets: Vec<([u8; 32], usize)>,
    /// Signing key id → (principal, key).
    signing_keys: HashMap<String, (usize, Vec<u8>)>,
    jwt: Option<jwt::JwtVerifier>,
    secret_header: HeaderName,
    signature_window_secs: u64,
}

/// A request's authenticated principal; a signature, when presented, still awaits the body.
pub struct Verified<'a> {
    pub principal: &'a Principal,
    pub method: Method,
    signature: Option<PendingSignature<'a>>,
}

struct PendingSignature<'a> {
    key: &'a [u8],
    timestamp: String,
    mac: [u8; 32],
}

impl Auth {
    /// Loads secrets and keys; errors name the config key.
    pub fn from_config(config: &Config) -> Result<Auth, String> {
        Auth::build(config, None)
    }

    /// Loads secrets and keys again (a reload). A principal whose name and rate limit are
    /// unchanged keeps the rate-limit state it had in `previous`.
    pub fn reloaded(config: &Config, previous: &Auth) -> Result<Auth, String> {
        Auth::build(config, Some(previous))
    }

    fn build(config: &Config, previous: Option<&Auth>) -> Result<Auth, String> {
        let now = Instant::now();
        let mut principals = Vec::new();
        let mut header_secrets: Vec<([u8; 32], usize)> = Vec::new();
        let mut signing_keys = HashMap::new();
        for (i, p) in config.principals.iter().enumerate() {
            for (j, secret) in p.header_secrets.iter().enumerate() {
                let key = format!("principals[{i}].header_secrets[{j}]");
                let digest: [u8; 32] = Sha256::digest(secret.load(&key)?).into();
                if header_secrets.iter().any(|(d, _)| *d == digest) {
                    return Err(format!("{key}: the same secret is configured twice"));
                }
                header_secrets.push((digest, i));
            }
            for (j, secret) in p.signing_keys.iter().enumerate() {
                let key = format!("principals[{i}].signing_keys[{j}]");
                let id = secret
                    .id
                    .clone()
                    .ok_or_else(|| format!("{key}.id: required for a signing key"))?;
                signing_keys.insert(id, (i, secret.load(&key)?));
            }
            let same_limits = previous.and_then(|previous| {
                previous
                    .principals
                    .iter()
                    .find(|old| old.config.name == p.name && old.config.rate_limit == p.rate_limit)
            });
            if let Some(old) = same_limits {
                principals.push(Principal {
                    config: p.clone(),
                    rows: old.rows.clone(),
                    bytes: old.bytes.clone(),
                });
                continue;
            }
            let bucket = |rate: Option<f64>, limit: &rate::RateLimitConfig| {
                rate.map(|rate| Arc::new(rate::TokenBucket::new(rate, limit.burst_secs, now)))
            };
            principals.push(Principal {
                config: p.clone(),
                rows: p
                    .rate_limit
                    .as_ref()
                    .and_then(|l| bucket(l.rows_per_sec, l)),
                bytes: p
                    .rate_limit
                    .as_ref()
                    .and_then(|l| bucket(l.bytes_per_sec, l)),
            });
        }
        let jwt = config
            .auth
            .jwt
            .as_ref()
            .map(jwt::JwtVerifier::new)
            .transpose()?;
        let secret_header = HeaderName::try_from(config.auth.secret_header.as_str())
            .map_err(|_| "auth.secret_header: not a valid header name".to_string())?;
        Ok(Auth {
            principals,
            header_secrets,
            signing_keys,
            jwt,
            secret_header,
            signature_window_secs: config.auth.signature_window_secs,
        })
    }

    /// Every file the auth settings of `config` read (header secrets, signing keys, JWT keys,
    /// the JWKS file), for watching (see [`crate::reload`]).
    pub fn files(config: &Config) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = config
            .principals
            .iter()
            .flat_map(|p| p.header_secrets.iter().chain(&p.signing_keys))
            .filter_map(|secret| secret.file.clone())
            .collect();
        if let Some(jwt) = &config.auth.jwt {
            files.extend(jwt.keys.iter().filter_map(|key| key.file.clone()));
            files.extend(jwt.jwks_file.iter().cloned());
        }
        files
    }

    /// Verifies every credential the request presents (the signature only as far as its
    /// headers go: key id and timestamp window) and returns the principal they agree on.
    /// `now`: unix seconds.
    pub fn authenticate(
        &self,
        peer: Option<&PeerIdentity>,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Verified<'_>, AuthError> {
        let mut named: Vec<(Method, usize)> = Vec::new();
        if let Some(peer) = peer {
            named.push((
                Method::ClientCertificate,
                self.principal_of_certificate(peer)?,
            ));
        }
        let signature = self.signature_headers(headers, now)?;
        if let Some((index, _)) = &signature {
            named.push((Method::Signature, *index));
        }
        if let Some(token) = bearer_token(headers) {
            named.push((Method::BearerToken, self.principal_of_token(token, now)?));
        }
        if let Some(value) = headers.get(&self.secret_header) {
            named.push((
                Method::HeaderSecret,
                self.principal_of_secret(value.as_bytes())?,
            ));
        }
        let Some(&(method, index)) = named.iter().max_by_key(|(method, _)| *method) else {
            return Err(AuthError::unauthenticated(
                "no_credentials",
                "no credentials: present a client certificate, a bearer token, a header secret \
                 or a signed batch",
            ));
        };
        if named.iter().any(|(_, other)| *other != index) {
            let list = named
                .iter()
                .map(|(m, i)| format!("{} → {:?}", m.as_str(), self.principals[*i].config.name))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(AuthError::unauthenticated(
                "credentials_disagree",
                format!("credentials name different principals: {list}"),
            ));
        }
        let principal = &self.principals[index];
        if principal.config.require_signature && signature.is_none() {
            return Err(AuthError::unauthenticated(
                "signature_required",
                format!(
                    "principal {:?} must sign its batches ({SIGNATURE_HEADER})",
                    principal.config.name
                ),
            ));
        }
        Ok(Verified {
            principal,
            method,
            signature: signature.map(|(_, pending)| pending),
        })
    }

    fn principal_of_certificate(&self, peer: &PeerIdentity) -> Result<usize, AuthError> {
        let identities = peer
            .dns_names
            .iter()
            .chain(&peer.uris)
            .chain(&peer.common_name);
        identities
            .into_iter()
            .find_map(|identity| {
                self.principals
                    .iter()
                    .position(|p| p.config.cert_names.iter().any(|n| n == identity))
            })
            .ok_or_else(|| {
                let shown = peer
                    .dns_names
                    .first()
                    .or(peer.uris.first())
                    .or(peer.common_name.as_ref())
                    .cloned()
                    .unwrap_or_else(|| "(no name)".to_string());
                AuthError::forbidden(
                    "unknown_principal",
                    format!("client certificate {shown:?} does not map to a configured principal"),
                )
            })
    }

    fn principal_by_name(&self, name: &str) -> Option<usize> {
        self.principals.iter().position(|p| p.config.name == name)
    }

    fn principal_of_token(&self, token: &str, now: i64) -> Result<usize, AuthError> {
        let verifier = self.jwt.as_ref().ok_or_else(|| {
            AuthError::unauthenticated(
                "bad_token",
                "bearer tokens are not accepted here (no [auth.jwt])",
            )
        })?;
        let name = verifier.verify(token, now.max(0) as u64)?;
        self.principal_by_name(&name).ok_or_else(|| {
            AuthError::forbidden(
                "unknown_principal",
                format!("token names principal {name:?}, which is not configured"),
            )
        })
    }

    fn principal_of_secret(&self, presented: &[u8]) -> Result<usize, AuthError> {
        let digest: [u8; 32] = Sha256::digest(presented.trim_ascii()).into();
        // Every configured secret is compared, without an early exit.
        let mut found = usize::MAX;
        for (candidate, index) in &self.header_secrets {
            let equal = candidate.ct_eq(&digest).unwrap_u8() as usize;
            found = equal * index + (1 - equal) * found;
        }
        if found == usize::MAX {
            return Err(AuthError::unauthenticated(
                "bad_secret",
                format!("{} is not a valid secret", self.secret_header),
            ));
        }
        Ok(found)
    }

    fn signature_headers(
        &self,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Option<(usize, PendingSignature<'_>)>, AuthError> {
        let value = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let (signature, key_id) = match (value(SIGNATURE_HEADER), value(KEY_ID_HEADER)) {
            (None, None) => return Ok(None),
            (Some(signature), Some(key_id)) => (signature, key_id),
            _ => {
                return Err(AuthError::unauthenticated(
                    "bad_signature",
                    format!("{SIGNATURE_HEADER} and {KEY_ID_HEADER} go together"),
                ));
            }
        };
        let Some(timestamp) = value(TIMESTAMP_HEADER) else {
            return Err(AuthError::unauthenticated(
                "bad_signature",
                format!("a signed batch needs {TIMESTAMP_HEADER}"),
            ));
        };
        let Some((index, key)) = self.signing_keys.get(key_id) else {
            return Err(AuthError::unauthenticated(
                "bad_signature",
                format!("unknown signing key id {key_id:?}"),
            ));
        };
        let unix: i64 = timestamp.trim().parse().map_err(|_| {
            AuthError::unauthenticated(
                "bad_signature",
                format!("{TIMESTAMP_HEADER} must be unix seconds"),
            )
        })?;
        if let Some(by) = signature::outside_window(unix, now, self.signature_window_secs) {
            return Err(AuthError::unauthenticated(
                "stale_timestamp",
                format!("timestamp outside window by {by} s"),
            ));
        }
        let mac = signature::parse_signature(signature).ok_or_else(|| {
            AuthError::unauthenticated(
                "bad_signature",
                format!("{SIGNATURE_HEADER} must be v1=<64 hex digits>"),
            )
        })?;
        Ok(Some((
            *index,
            PendingSignature {
                key,
                timestamp: timestamp.to_string(),
                mac,
            },
        )))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Verified<'_> {
    /// Checks a presented signature against the body as sent (`body_hash`:
    /// [`signature::body_hash`]). Without a signature: nothing to check.
    pub fn verify_body(
        &self,
        method: &str,
        path: &str,
        batch_id: Option<&str>,
        body_hash: &str,
    ) -> Result<(), AuthError> {
        let Some(pending) = &self.signature else {
            return Ok(());
        };
        let Some(batch_id) = batch_id else {
            return Err(AuthError::unauthenticated(
                "bad_signature",
                "a signed batch needs x-sluice-batch-id",
            ));
        };
        let text = signature::signing_string(method, path, &pending.timestamp, batch_id, body_hash);
        if signature::verify(pending.key, &text, &pending.mac) {
            Ok(())
        } else {
            Err(AuthError::unauthenticated(
                "bad_signature",
                "signature mismatch",
            ))
        }
    }

    /// Whether a signature was presented (it must then be checked with [`Self::verify_body`]).
    pub fn signed(&self) -> bool {
        self.signature.is_some()
    }
}

impl Principal {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The principal may write `stream`.
    pub fn authorize_stream(&self, stream: &str) -> Result<(), AuthError> {
        if self.config.may_write(stream) {
            Ok(())
        } else {
            Err(AuthError::forbidden(
                "stream_forbidden",
                format!(
                    "principal {:?} may not write stream {stream:?}",
                    self.config.name
                ),
            ))
        }
    }

    /// Origin and region for the rows: the header's claim when the principal's allow-list
    /// permits it, else the principal's configured value.
    pub fn origin_and_region(&self, headers: &HeaderMap) -> Result<(String, String), ApiError> {
        let c = &self.config;
        let origin = claim(
            headers,
            ORIGIN_HEADER,
            "origin",
            &c.origin,
            &c.origins,
            &c.name,
        )?;
        let region = claim(
            headers,
            REGION_HEADER,
            "region",
            &c.region,
            &c.regions,
            &c.name,
        )?;
        Ok((origin, region))
    }

    /// Takes `n` tokens of the row or byte bucket, or answers 429.
    pub fn take(&self, what: RateResource, n: u64) -> Result<(), ApiError> {
        let bucket = match what {
            RateResource::Rows => &self.rows,
            RateResource::Bytes => &self.bytes,
        };
        let Some(bucket) = bucket else {
            return Ok(());
        };
        bucket
            .take(n, Instant::now())
            .map_err(|refusal| ApiError::RateLimited {
                principal: self.config.name.clone(),
                what: what.as_str(),
                asked: n,
                refusal,
            })
    }

    /// Returns tokens for a batch refused after they were taken.
    pub fn give_back(&self, what: RateResource, n: u64) {
        let bucket = match what {
            RateResource::Rows => &self.rows,
            RateResource::Bytes => &self.bytes,
        };
        if let Some(bucket) = bucket {
            bucket.give_back(n);
        }
    }
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateResource {
    Rows,
    Bytes,
}

impl RateResource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateResource::Rows => "rows",
            RateResource::Bytes => "bytes",
        }
    }
}

/// Whether `value` may be claimed: listed (or `"*"` listed), or, with no list, equal to the
/// configured default; with neither list nor default, anything.
pub fn may_claim(default: &str, allowed: &[String], value: &str) -> bool {
    if allowed.is_empty() {
        default.is_empty() || value == default
    } else {
        allowed.iter().any(|a| a == "*" || a == value)
    }
}

fn claim(
    headers: &HeaderMap,
    header: &'static str,
    what: &'static str,
    default: &str,
    allowed: &[String],
    principal: &str,
) -> Result<String, ApiError> {
    let Some(value) = headers.get(header) else {
        return Ok(default.to_string());
    };
    let value = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::BadHeader {
            name: header,
            reason: "must be 1 to 128 printable ASCII characters".to_string(),
        })?;
    if !may_claim(default, allowed, value) {
        return Err(AuthError::forbidden(
            if what == "origin" {
                "origin_forbidden"
            } else {
                "region_forbidden"
            },
            format!("principal {principal:?} may not claim {what} {value:?}"),
        )
        .into());
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_allow_list_or_the_default() {
        let list = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(may_claim("", &[], "anything"));
        assert!(may_claim("ew-1", &[], "ew-1"));
        assert!(!may_claim("ew-1", &[], "ew-2"));
        assert!(may_claim("ew-1", &list(&["ew-1", "ew-2"]), "ew-2"));
        assert!(!may_claim("", &list(&["ew-1"]), "ew-3"));
        assert!(may_claim("", &list(&["*"]), "ew-3"));
    }
}
