//! Auth: who is sending, and what they may claim.
//!
//! The principal comes from the verified client certificate (its DNS or URI SANs, then its
//! subject CN, matched against `principals[].cert_names`). Origin and region come from the
//! `X-Sluice-Origin` / `X-Sluice-Region` headers where the principal allows them, or from the
//! principal's configuration for senders that can set no such header (DataStream 2).

use axum::http::HeaderMap;

use crate::accept::error::ApiError;
use crate::accept::tls::PeerIdentity;
use crate::config::{Config, PrincipalConfig};

pub const ORIGIN_HEADER: &str = "x-sluice-origin";
pub const REGION_HEADER: &str = "x-sluice-region";

/// Maps the client certificate to a configured principal.
pub fn authenticate<'c>(
    config: &'c Config,
    peer: Option<&PeerIdentity>,
) -> Result<&'c PrincipalConfig, ApiError> {
    let Some(peer) = peer else {
        return Err(ApiError::Unauthenticated(
            "no client certificate was presented".to_string(),
        ));
    };
    let identities = peer
        .dns_names
        .iter()
        .chain(&peer.uris)
        .chain(&peer.common_name)
        .map(String::as_str);
    config.principal_for_cert(identities).ok_or_else(|| {
        let shown = peer
            .dns_names
            .first()
            .or(peer.uris.first())
            .or(peer.common_name.as_ref())
            .cloned()
            .unwrap_or_else(|| "(no name)".to_string());
        ApiError::Forbidden(format!(
            "client certificate {shown:?} does not map to a configured principal"
        ))
    })
}

/// The principal may write `stream`.
pub fn authorize_stream(principal: &PrincipalConfig, stream: &str) -> Result<(), ApiError> {
    if principal.may_write(stream) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "principal {:?} may not write stream {stream:?}",
            principal.name
        )))
    }
}

/// Origin and region for the rows: the header's claim when the principal allows it, else the
/// principal's configured value.
pub fn origin_and_region(
    principal: &PrincipalConfig,
    headers: &HeaderMap,
) -> Result<(String, String), ApiError> {
    let origin = claim(
        headers,
        ORIGIN_HEADER,
        "origin",
        &principal.origin,
        &principal.name,
    )?;
    let region = claim(
        headers,
        REGION_HEADER,
        "region",
        &principal.region,
        &principal.name,
    )?;
    Ok((origin, region))
}

fn claim(
    headers: &HeaderMap,
    header: &'static str,
    what: &str,
    configured: &str,
    principal: &str,
) -> Result<String, ApiError> {
    let Some(value) = headers.get(header) else {
        return Ok(configured.to_string());
    };
    let value = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::BadHeader {
            name: header,
            reason: "must be 1 to 128 printable ASCII characters".to_string(),
        })?;
    if !configured.is_empty() && value != configured {
        return Err(ApiError::Forbidden(format!(
            "principal {principal:?} may not claim {what} {value:?}"
        )));
    }
    Ok(value.to_string())
}
