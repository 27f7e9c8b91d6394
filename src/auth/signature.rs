//! Signed batches: `X-Sluice-Signature: v1=<hex>` is HMAC-SHA256, keyed by the signing key
//! named in `X-Sluice-Key-Id`, over
//!
//! ```text
//! METHOD \n PATH \n TIMESTAMP \n BATCH_ID \n hex(sha256(body bytes as sent))
//! ```
//!
//! PATH is the request path without the query string (`/v1/streams/edge_access`), TIMESTAMP
//! the `X-Sluice-Timestamp` header exactly as sent (unix seconds) and BATCH_ID the
//! `X-Sluice-Batch-Id` header, which a signed batch must carry: the batch id is what the dedup
//! store remembers, so a captured request replayed within the timestamp window is answered as a
//! duplicate and the id cannot be reused with another body (409).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// `hex(sha256(body))`, the last line of the signing string.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The string a sender signs; `body_hash` from [`body_hash`].
pub fn signing_string(
    method: &str,
    path: &str,
    timestamp: &str,
    batch_id: &str,
    body_hash: &str,
) -> String {
    format!("{method}\n{path}\n{timestamp}\n{batch_id}\n{body_hash}")
}

/// `v1=<hex>` of the signing string under `key` (what a sender puts in `X-Sluice-Signature`).
pub fn sign(key: &[u8], signing_string: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(signing_string.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Parses `v1=<64 hex digits>`.
pub fn parse_signature(header: &str) -> Option<[u8; 32]> {
    let hex_digits = header.trim().strip_prefix("v1=")?;
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut mac).ok()?;
    Some(mac)
}

/// Whether `mac` is the signature of `signing_string` under `key`, compared in constant time.
pub fn verify(key: &[u8], signing_string: &str, mac: &[u8; 32]) -> bool {
    let mut expected = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    expected.update(signing_string.as_bytes());
    expected.verify_slice(mac).is_ok()
}

/// Seconds by which `timestamp` lies outside `now ± window`, if it does.
pub fn outside_window(timestamp: i64, now: i64, window: u64) -> Option<u64> {
    let distance = timestamp.abs_diff(now);
    (distance > window).then(|| distance - window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_method_path_time_batch_and_body() {
        let key = b"0123456789abcdef0123456789abcdef";
        let text = signing_string(
            "POST",
            "/v1/streams/s",
            "1700000000",
            "b-1",
            &body_hash(b"{}\n"),
        );
        assert_eq!(
            text,
            "POST\n/v1/streams/s\n1700000000\nb-1\n\
             ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
        );
        let signature = sign(key, &text);
        let mac = parse_signature(&signature).unwrap();
        assert!(verify(key, &text, &mac));
        let other_body = signing_string(
            "POST",
            "/v1/streams/s",
            "1700000000",
            "b-1",
            &body_hash(b"{}"),
        );
        assert!(!verify(key, &other_body, &mac));
        assert!(!verify(b"another key, same length........", &text, &mac));
        assert_eq!(parse_signature("v2=00"), None);
        assert_eq!(parse_signature("v1=zz"), None);
        assert_eq!(parse_signature(&format!("v1={}", "ab".repeat(31))), None);
    }

    #[test]
    fn the_window_reports_how_far_outside_a_timestamp_is() {
        assert_eq!(outside_window(1000, 1000, 300), None);
        assert_eq!(outside_window(700, 1000, 300), None);
        assert_eq!(outside_window(288, 1000, 300), Some(412));
        assert_eq!(outside_window(1712, 1000, 300), Some(412));
    }
}
