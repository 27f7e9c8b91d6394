//! Credentials for the auth tests: secret files, JWTs, signed requests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "sluice";
pub const HS256_SECRET: &str = "hs256-test-secret-0123456789abcdef";

/// Secrets and keys written into a directory, and the config text that names them.
pub struct Credentials {
    pub dir: PathBuf,
    pub es256_private_pem: String,
}

impl Credentials {
    pub fn write(dir: &Path) -> Credentials {
        std::fs::create_dir_all(dir).unwrap();
        let es256 = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.join("es256.pub.pem"), es256.public_key_pem()).unwrap();
        std::fs::write(dir.join("hs256.key"), format!("{HS256_SECRET}\n")).unwrap();
        for name in ["ew-secret-1", "ew-secret-2", "signer-secret", "slow-secret"] {
            std::fs::write(dir.join(name), format!("{name}-0123456789abcdef\n")).unwrap();
        }
        std::fs::write(dir.join("ew-signing"), "ew-signing-key-0123456789abcdef\n").unwrap();
        std::fs::write(
            dir.join("signer-signing"),
            "signer-signing-key-0123456789\n",
        )
        .unwrap();
        Credentials {
            dir: dir.to_path_buf(),
            es256_private_pem: es256.serialize_pem(),
        }
    }

    pub fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Principals `ew` (header secrets, signing key `ew-2026`, origin/region allow-lists,
    /// edge_access only), `tok` (JWT only), `signer` (must sign), `slow` (5 rows/s), and the
    /// `[auth.jwt]` section.
    pub fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"
[[principals]]
name = "ew"
streams = ["edge_access"]
origin = "ew-1"
origins = ["ew-1", "ew-2"]
region = "eu-west"
regions = ["eu-west", "us-east"]
header_secrets = [{{ file = "{d}/ew-secret-1" }}, {{ id = "next", file = "{d}/ew-secret-2" }}]
signing_keys = [{{ id = "ew-2026", file = "{d}/ew-signing" }}]
[[principals]]
name = "tok"
streams = ["edge_access"]
[[principals]]
name = "signer"
streams = ["edge_access"]
require_signature = true
header_secrets = [{{ file = "{d}/signer-secret" }}]
signing_keys = [{{ id = "signer-1", file = "{d}/signer-signing" }}]
[[principals]]
name = "slow"
streams = ["edge_access"]
header_secrets = [{{ file = "{d}/slow-secret" }}]
rate_limit = {{ rows_per_sec = 5, burst_secs = 1 }}
[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
leeway_secs = 5
keys = [{{ alg = "HS256", file = "{d}/hs256.key" }}, {{ kid = "es-1", alg = "ES256", file = "{d}/es256.pub.pem" }}]
"#
        )
    }

    /// An HS256 token with these claims on top of iss/aud/sub.
    pub fn hs256(&self, sub: &str, claims: serde_json::Value) -> String {
        token(
            Header::new(Algorithm::HS256),
            &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
            sub,
            claims,
        )
    }

    pub fn es256(&self, sub: &str, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("es-1".to_string());
        token(
            header,
            &EncodingKey::from_ec_pem(self.es256_private_pem.as_bytes()).unwrap(),
            sub,
            claims,
        )
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(header: Header, key: &EncodingKey, sub: &str, claims: serde_json::Value) -> String {
    let mut all = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "exp": now() + 600,
    });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    jsonwebtoken::encode(&header, &all, key).unwrap()
}

/// The headers of a signed batch.
pub fn signed_headers(
    key_id: &str,
    key: &str,
    path: &str,
    timestamp: i64,
    batch_id: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    use sluice::auth::signature;
    let text = signature::signing_string(
        "POST",
        path,
        &timestamp.to_string(),
        batch_id,
        &signature::body_hash(body),
    );
    vec![
        ("x-sluice-key-id", key_id.to_string()),
        ("x-sluice-timestamp", timestamp.to_string()),
        ("x-sluice-batch-id", batch_id.to_string()),
        ("x-sluice-signature", signature::sign(key.as_bytes(), &text)),
    ]
}

pub fn access_record(i: usize) -> String {
    format!(
        r#"{{"reqId":"r{i}","reqTimeSec":"{}","cliIP":"10.0.0.{}","statusCode":"200","reqHost":"h.example","reqMethod":"GET","reqPath":"/p/{i}"}}"#,
        1_700_000_000 + i,
        i % 250,
    )
}

pub fn records(range: std::ops::Range<usize>) -> Vec<u8> {
    range
        .map(access_record)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}
