//! What the fuzz targets run, one function per target. Each feeds arbitrary bytes to sluice's
//! public API the way the ingest path does and panics when an invariant breaks; a panic (or a
//! crash, a hang, an allocation over libFuzzer's limit) is a finding.
//!
//! The same functions replay the seed corpus and every kept crash input in the ordinary test
//! suite (`tests/fuzz_replay.rs` includes this file), so CI needs no fuzzer.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use sluice::accept::ingest::ingest_headers;
use sluice::auth::{Auth, signature};
use sluice::config::Config;
use sluice::decode::{
    self, BodyFormat, ContentEncoding, DecodeOptions, JsonValue, OVERLONG_RAW_PREFIX, RecordVisitor,
};
use sluice::encode::{native_columns, write_native_block};
use sluice::schema::Schema;
use sluice::validate::{self, BodyLimits, CompiledSchema, RequestContext, StreamOptions};

/// What one fuzz target runs on one input.
pub type Target = fn(&[u8]);

/// Every target, by name: what `fuzz/fuzz_targets/<name>.rs` runs and the folder of its seeds
/// under `fuzz/seeds/` and of its kept crash inputs under `fuzz/regressions/`.
pub const TARGETS: [(&str, Target); 7] = [
    ("decode_ndjson", decode_ndjson),
    ("decode_json_array", decode_json_array),
    ("decode_csv", decode_csv),
    ("decode_delimited", decode_delimited),
    ("decompress", decompress),
    ("validate_values", validate_values),
    ("headers", headers),
];

/// Limits small enough that the fuzzer reaches them.
const LIMITS: BodyLimits = BodyLimits {
    max_decompressed_bytes: 1 << 20,
    max_records: 2_000,
    max_errors: 10,
    max_line_bytes: 4 << 10,
    max_nesting_depth: 16,
};

/// The two shipped schemas, compiled: `edge_access` (numbers, IPs, DateTime, url-decoded text)
/// and `edge_events` (UUID, Enum8, Nullable, Array, LowCardinality, JSON text, unknown fields
/// kept).
fn schemas() -> &'static [CompiledSchema; 2] {
    static SCHEMAS: OnceLock<[CompiledSchema; 2]> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let compile = |text: &str, name: &str, options: StreamOptions| {
            let schema = Schema::from_toml(text, Path::new(name)).expect("shipped schema parses");
            CompiledSchema::new(Arc::new(schema), &options).expect("shipped schema compiles")
        };
        [
            compile(
                include_str!("../../schemas/edge_access.v1.toml"),
                "edge_access.v1.toml",
                StreamOptions::default(),
            ),
            compile(
                include_str!("../../schemas/edge_events.v1.toml"),
                "edge_events.v1.toml",
                StreamOptions {
                    unknown_fields: Some(sluice::schema::UnknownFields::Keep),
                    ..StreamOptions::default()
                },
            ),
        ]
    })
}

fn context() -> RequestContext {
    RequestContext {
        principal: "fuzz".to_string(),
        origin: "origin".to_string(),
        region: "region".to_string(),
        batch_id: "batch".to_string(),
        request_id: "request".to_string(),
        received_at: 1_700_000_000,
        url_encoded: true,
    }
}

/// Checks the decoder's side of the visitor contract: records numbered 1, 2, 3…, raw text
/// within the line limit (or the kept prefix of an over-long record), summary matching calls.
#[derive(Default)]
struct ContractVisitor {
    records: usize,
    malformed: usize,
    header_fields: Option<usize>,
}

impl ContractVisitor {
    fn record(&mut self, line: usize, raw: Option<&[u8]>) {
        self.records += 1;
        assert_eq!(line, self.records, "records are numbered in order from 1");
        if let Some(raw) = raw {
            assert!(
                raw.len() <= LIMITS.max_line_bytes,
                "raw text of {} bytes passed the line limit",
                raw.len()
            );
        }
    }
}

impl RecordVisitor for ContractVisitor {
    fn text_header(&mut self, names: &[&str]) {
        assert!(self.header_fields.is_none(), "one header per body");
        self.header_fields = Some(names.len());
    }
    fn json_record(&mut self, line: usize, record: JsonValue<'_>, raw: Option<&[u8]>) {
        let _ = record;
        self.record(line, raw);
    }
    fn text_record(&mut self, line: usize, fields: &[&str], raw: &[u8]) {
        assert!(self.header_fields.is_some(), "text records follow a header");
        assert!(!fields.is_empty());
        self.record(line, Some(raw));
    }
    fn malformed_record(&mut self, line: usize, reason: &str, raw: &[u8]) {
        assert!(!reason.is_empty());
        assert!(raw.len() <= LIMITS.max_line_bytes.max(OVERLONG_RAW_PREFIX));
        self.malformed += 1;
        self.record(line, None);
    }
}

/// Frames `body` as `format` with the contract visitor, then validates it against both
/// schemas and encodes what was accepted and quarantined as ClickHouse Native blocks.
fn decode_and_validate(format: BodyFormat, content_type: &str, body: &[u8]) {
    let fields = schemas()[0].delimited_fields();
    let options = DecodeOptions {
        delimiter: schemas()[0].delimiter(),
        delimited_fields: &fields,
        max_records: LIMITS.max_records,
        max_line_bytes: LIMITS.max_line_bytes,
        max_nesting_depth: LIMITS.max_nesting_depth,
    };
    let mut visitor = ContractVisitor::default();
    let mut bytes = body.to_vec();
    if let Ok(summary) = decode::decode(format, &mut bytes, &options, &mut visitor) {
        assert_eq!(summary.records, visitor.records);
        assert_eq!(summary.malformed, visitor.malformed);
        assert!(summary.records <= LIMITS.max_records);
    }
    for compiled in schemas() {
        validate_and_encode(compiled, body, ContentEncoding::Identity, content_type);
    }
}

/// `validate::validate_body` as the ingest handler calls it, with the invariants of its answer;
/// returns the records validated.
fn validate_and_encode(
    compiled: &CompiledSchema,
    body: &[u8],
    encoding: ContentEncoding,
    content_type: &str,
) -> Option<usize> {
    let validate = |part_bytes| {
        validate::validate_body(
            compiled,
            context(),
            body,
            encoding,
            Some(content_type),
            LIMITS,
            validate::Validation {
                digest: true,
                part_bytes,
            },
        )
    };
    let result = validate(0);
    // Validated in parts of 64 bytes or more at once, the answer is the same.
    match (&result, validate(64)) {
        (Ok(Some((whole, whole_digest))), Ok(Some((parts, parts_digest)))) => {
            assert_eq!(&parts_digest, whole_digest);
            assert_eq!(
                (parts.accepted, parts.rejected),
                (whole.accepted, whole.rejected)
            );
            assert_eq!(parts.errors, whole.errors);
            assert_eq!(parts.rejected_by_reason, whole.rejected_by_reason);
            assert_eq!(&parts.batch, &whole.batch);
            assert_eq!(&parts.quarantine, &whole.quarantine);
        }
        (Ok(None), Ok(None)) => {}
        (Err(whole), Err(parts)) => assert_eq!(parts.to_string(), whole.to_string()),
        (whole, parts) => panic!("one go: {whole:?}, in parts: {parts:?}"),
    }
    let Ok(Some((batch, digest))) = result else {
        return None;
    };
    assert!(digest.is_some());
    assert_eq!(batch.batch.num_rows(), batch.accepted);
    assert_eq!(batch.quarantine.num_rows(), batch.rejected);
    assert_eq!(batch.errors.len(), batch.rejected.min(LIMITS.max_errors));
    assert!(batch.accepted + batch.rejected <= LIMITS.max_records);
    let mut out = Vec::new();
    write_native_block(&native_columns(&compiled.schema), &batch.batch, &mut out)
        .expect("accepted rows encode as Native");
    write_native_block(
        &native_columns(&compiled.quarantine),
        &batch.quarantine,
        &mut out,
    )
    .expect("quarantined rows encode as Native");
    Some(batch.accepted + batch.rejected)
}

pub fn decode_ndjson(data: &[u8]) {
    decode_and_validate(BodyFormat::Ndjson, "application/x-ndjson", data);
}

pub fn decode_json_array(data: &[u8]) {
    decode_and_validate(BodyFormat::JsonArray, "application/json", data);
}

pub fn decode_csv(data: &[u8]) {
    decode_and_validate(BodyFormat::Csv, "text/csv", data);
}

pub fn decode_delimited(data: &[u8]) {
    // text/plain sniffs JSON: a body starting with `{` or `[` goes the JSON way.
    decode_and_validate(BodyFormat::Delimited, "text/plain", data);
}

/// The first byte picks gzip or zstd; the rest is decompressed under a 64 KiB cap, and also
/// compressed and decompressed again, which must give it back.
pub fn decompress(data: &[u8]) {
    const CAP: usize = 64 << 10;
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = if selector & 1 == 0 {
        ContentEncoding::Gzip
    } else {
        ContentEncoding::Zstd
    };
    if let Ok(out) = decode::decompress(body, encoding, CAP) {
        assert!(out.len() <= CAP, "decompressed past the cap");
    }
    let compressed = match encoding {
        ContentEncoding::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).unwrap();
            encoder.finish().unwrap()
        }
        _ => zstd::encode_all(body, 1).unwrap(),
    };
    match decode::decompress(&compressed, encoding, CAP) {
        Ok(out) => assert_eq!(out, body, "round trip"),
        Err(err) => {
            assert!(
                body.len() > CAP,
                "round trip of {} bytes failed: {err}",
                body.len()
            );
            assert_eq!(
                err,
                decode::DecodeError::DecompressedTooLarge { limit: CAP }
            );
        }
    }
    // A valid stream with garbage after it must not be accepted as more than it holds.
    let mut trailing = compressed;
    trailing.extend_from_slice(body);
    if let Ok(out) = decode::decompress(&trailing, encoding, CAP) {
        assert!(out.len() <= CAP);
    }
}

/// Arbitrary values for the schemas' fields: the input is split at 0xFF into values, assigned
/// to the body fields in order; each value is sent as JSON (the raw text when it is a JSON
/// scalar, else a JSON string), as a CSV field and as a delimited field. One record per body:
/// it is accepted or rejected, never lost, and whatever is accepted encodes.
pub fn validate_values(data: &[u8]) {
    for compiled in schemas() {
        let names: Vec<String> = compiled
            .schema
            .body_columns()
            .filter_map(|c| c.primary_field().map(str::to_string))
            .collect();
        let values: Vec<&[u8]> = data.split(|&b| b == 0xFF).collect();
        let mut json = String::from("{");
        let mut csv_header = String::new();
        let mut csv_row = String::new();
        let mut delimited = String::new();
        for (i, value) in values.iter().enumerate() {
            let name = &names[i % names.len()];
            let text = String::from_utf8_lossy(value);
            let as_json = match serde_json::from_slice::<serde_json::Value>(value) {
                Ok(parsed) if !parsed.is_object() && !parsed.is_array() => text.to_string(),
                Ok(parsed) if i % 3 == 0 => parsed.to_string(),
                _ => serde_json::Value::String(text.to_string()).to_string(),
            };
            if i > 0 {
                json.push(',');
                csv_header.push(',');
                csv_row.push(',');
            }
            if i < names.len() {
                if i > 0 {
                    delimited.push(' ');
                }
                delimited.push_str(&text.replace([' ', '\n', '\r'], "+"));
            }
            json.push_str(&serde_json::Value::String(name.clone()).to_string());
            json.push(':');
            json.push_str(&as_json);
            csv_header.push_str(name);
            csv_row.push('"');
            csv_row.push_str(&text.replace('"', "\"\""));
            csv_row.push('"');
        }
        json.push('}');
        let array = format!("[{json}]");
        let csv = format!("{csv_header}\n{csv_row}\n");
        for (body, content_type) in [
            (json.as_bytes(), "application/x-ndjson"),
            (array.as_bytes(), "application/json"),
            (csv.as_bytes(), "text/csv"),
            (delimited.as_bytes(), "text/plain"),
        ] {
            validate_and_encode(compiled, body, ContentEncoding::Identity, content_type);
        }
    }
}

/// Header names the request path reads, picked by a header line's first byte.
const HEADER_NAMES: [&str; 14] = [
    "x-sluice-signature",
    "x-sluice-key-id",
    "x-sluice-timestamp",
    "x-sluice-batch-id",
    "x-sluice-secret",
    "authorization",
    "x-sluice-origin",
    "x-sluice-region",
    "x-sluice-row-count",
    "content-encoding",
    "content-type",
    "x-sluice-schema-version",
    "x-request-id",
    "x-sluice-signature",
];

/// The clock of the header target, in unix seconds.
pub const HEADERS_NOW: i64 = 1_700_000_000;

fn auth() -> &'static Auth {
    static AUTH: OnceLock<Auth> = OnceLock::new();
    AUTH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let secret = write("secret", "fuzz-secret-0123456789");
        let signing = write("signing", "fuzz-signing-key-0123456789abcdef");
        let jwt = write("jwt", "fuzz-jwt-secret-0123456789abcdef");
        let text = format!(
            r#"
            [ingest]
            listen = "127.0.0.1:0"
            plain_http = true
            ack = "memory"
            [clickhouse]
            url = "http://127.0.0.1:8123"
            [auth.jwt]
            issuer = "fuzz"
            audience = "sluice"
            keys = [{{ alg = "HS256", file = "{jwt}" }}]
            [[principals]]
            name = "edge-a"
            cert_names = ["edge-a.sluice.local"]
            streams = ["*"]
            origins = ["o1", "o2"]
            header_secrets = [{{ file = "{secret}" }}]
            [[principals]]
            name = "edge-b"
            streams = ["edge_events"]
            region = "eu"
            require_signature = true
            signing_keys = [{{ id = "k1", file = "{signing}" }}]
            "#
        );
        let config = Config::from_toml(&text).expect("fuzz config is valid");
        let auth = Auth::from_config(&config).expect("fuzz auth config loads");
        let _ = std::fs::remove_dir_all(&dir);
        auth
    })
}

/// Header lines (`\n`-separated): a line whose first byte is below 0x80 names one of
/// [`HEADER_NAMES`] and the rest is its value; any other line is `name: value` as sent.
/// Credentials, signature headers, origin claims and the ingest headers are read as the
/// handler reads them.
pub fn headers(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&first, rest)) = line.split_first() else {
            continue;
        };
        let (name, value) = if first < 0x80 {
            (
                HEADER_NAMES[first as usize % HEADER_NAMES.len()].as_bytes(),
                rest,
            )
        } else {
            match rest.iter().position(|&b| b == b':') {
                Some(colon) => (&rest[..colon], rest[colon + 1..].trim_ascii()),
                None => continue,
            }
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        if let Ok(text) = value.to_str()
            && signature::parse_signature(text).is_some()
        {
            assert!(text.trim().starts_with("v1="), "{text:?}");
        }
        headers.append(name, value);
    }
    let auth = auth();
    let peer = sluice::accept::tls::PeerIdentity {
        dns_names: vec!["edge-a.sluice.local".to_string()],
        ..Default::default()
    };
    for peer in [None, Some(&peer)] {
        if let Ok(verified) = auth.authenticate(peer, &headers, HEADERS_NOW) {
            let name = verified.principal.name();
            assert!(name == "edge-a" || name == "edge-b", "{name}");
            let _ = verified.principal.authorize_stream("edge_events");
            let _ = verified.principal.origin_and_region(&headers);
            let batch_id = headers
                .get("x-sluice-batch-id")
                .and_then(|v| v.to_str().ok());
            let hash = signature::body_hash(data);
            let _ = verified.verify_body("POST", "/v1/streams/edge_events", batch_id, &hash);
        }
    }
    if let Ok(parsed) = ingest_headers(&headers) {
        if let Some(id) = parsed.batch_id {
            assert!((1..=128).contains(&id.len()));
            assert!(id.bytes().all(|b| b.is_ascii_graphic()));
        }
        let _ = decode::body_format(parsed.content_type, b"{\"a\":1}");
    }
}
