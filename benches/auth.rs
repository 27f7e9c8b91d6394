//! What origin trust costs per batch, next to what the batch itself costs: authenticating a
//! request (header secret; bearer JWT, cached and not; signed batch: SHA-256 of the body as
//! sent plus the HMAC) against decoding and validating the same 1000-row gzip NDJSON body of
//! DataStream 2-style `edge_access` records. The README's "Origin trust" section quotes the
//! ratio.

mod common;

use std::path::Path;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sluice::auth::{Auth, signature};
use sluice::config::Config;
use sluice::decode::{BodyFormat, ContentEncoding};
use sluice::validate::RequestContext;
use sluice_loadtest::generator::{self, Encoding, Format, Generator};

const ROWS: usize = 1000;
const PATH: &str = "/v1/streams/edge_access";
const HS256_SECRET: &str = "bench-hs256-secret-0123456789abcdef";
const HEADER_SECRET: &str = "bench-header-secret-0123456789abcdef";
const SIGNING_KEY: &str = "bench-signing-key-0123456789abcdef";

/// Principals `ew` (header secret, signing key `ew-1`) and `tok` (bearer JWTs: HS256, ES256).
fn auth(dir: &Path, es256_public_pem: &str) -> Auth {
    std::fs::write(dir.join("secret"), HEADER_SECRET).unwrap();
    std::fs::write(dir.join("signing"), SIGNING_KEY).unwrap();
    std::fs::write(dir.join("hs256"), HS256_SECRET).unwrap();
    std::fs::write(dir.join("es256.pem"), es256_public_pem).unwrap();
    let d = dir.display();
    let config = Config::from_toml(&format!(
        r#"
[ingest]
listen = "127.0.0.1:0"
plain_http = true
ack = "memory"
[clickhouse]
url = "http://127.0.0.1:8123"
[[principals]]
name = "ew"
streams = ["edge_access"]
origins = ["ew-1"]
header_secrets = [{{ file = "{d}/secret" }}]
signing_keys = [{{ id = "ew-1", file = "{d}/signing" }}]
[[principals]]
name = "tok"
streams = ["edge_access"]
[auth.jwt]
issuer = "https://issuer.bench"
audience = "sluice"
keys = [{{ alg = "HS256", file = "{d}/hs256" }}, {{ kid = "es", alg = "ES256", file = "{d}/es256.pem" }}]
"#
    ))
    .unwrap();
    Auth::from_config(&config).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token for `sub`; `jti` makes each one new.
fn token(header: Header, key: &EncodingKey, sub: &str, jti: u64) -> String {
    let claims = serde_json::json!({
        "iss": "https://issuer.bench",
        "aud": "sluice",
        "sub": sub,
        "exp": now() + 3600,
        "jti": jti.to_string(),
    });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn trust_per_batch(c: &mut Criterion) {
    let compiled = common::compiled();
    let context = RequestContext {
        principal: "ew".into(),
        region: "bench".into(),
        url_encoded: true,
        ..Default::default()
    };
    let rows = Generator::new(7).edge_access(ROWS);
    let body = generator::compress(
        &generator::encode_access(&rows, Format::Ndjson),
        Encoding::Gzip,
    );

    let dir = tempfile::tempdir().unwrap();
    let es256 = rcgen::KeyPair::generate().unwrap();
    let auth = auth(dir.path(), &es256.public_key_pem());
    let now = now();

    let secret = headers(&[
        ("x-sluice-secret", HEADER_SECRET.to_string()),
        ("x-sluice-origin", "ew-1".to_string()),
    ]);
    let hs256 = token(
        Header::new(Algorithm::HS256),
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
        "tok",
        0,
    );
    let bearer = headers(&[("authorization", format!("Bearer {hs256}"))]);
    let mut es_header = Header::new(Algorithm::ES256);
    es_header.kid = Some("es".to_string());
    let es_key = EncodingKey::from_ec_pem(es256.serialize_pem().as_bytes()).unwrap();
    let timestamp = now.to_string();
    let signed_text = signature::signing_string(
        "POST",
        PATH,
        &timestamp,
        "batch-1",
        &signature::body_hash(&body),
    );
    let signed = headers(&[
        ("x-sluice-key-id", "ew-1".to_string()),
        ("x-sluice-timestamp", timestamp.clone()),
        ("x-sluice-batch-id", "batch-1".to_string()),
        (
            "x-sluice-signature",
            signature::sign(SIGNING_KEY.as_bytes(), &signed_text),
        ),
    ]);

    let mut group = c.benchmark_group("trust_per_batch");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.bench_function("decode_validate_gzip_ndjson", |b| {
        b.iter(|| {
            let batch = common::decode_validate(
                &compiled,
                &context,
                &body,
                ContentEncoding::Gzip,
                BodyFormat::Ndjson,
            );
            assert_eq!(batch.accepted, ROWS);
            batch
        })
    });
    // Everything auth does for a request: credential, stream allow-list, origin/region claim.
    let check = |headers: &HeaderMap| {
        let verified = auth.authenticate(None, headers, now).unwrap();
        verified.principal.authorize_stream("edge_access").unwrap();
        verified.principal.origin_and_region(headers).unwrap();
        verified
    };
    group.bench_function("header_secret", |b| b.iter(|| check(&secret).method));
    group.bench_function("bearer_hs256_cached", |b| b.iter(|| check(&bearer).method));
    group.bench_function("signed_batch", |b| {
        b.iter(|| {
            let verified = check(&signed);
            verified
                .verify_body("POST", PATH, Some("batch-1"), &signature::body_hash(&body))
                .unwrap();
            verified.method
        })
    });
    // A token seen for the first time: the signature check the cache spares later batches.
    // Each iteration signs a new token outside the measurement.
    group.bench_function("bearer_es256_uncached", |b| {
        let mut n = 0u64;
        b.iter_batched(
            || {
                n += 1;
                headers(&[(
                    "authorization",
                    format!("Bearer {}", token(es_header.clone(), &es_key, "tok", n)),
                )])
            },
            |headers| check(&headers).method,
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = trust_per_batch
}
criterion_main!(benches);
