//! Seeded, realistic edge traffic and the exact bytes edge senders put on the wire.
//!
//! [`Generator`] draws typed rows ([`EdgeAccess`], [`EdgeEvent`]) from a `ChaCha8Rng`: the same
//! seed and config give the same rows, and the encoders are pure functions of the rows, so the
//! same seed gives the same bytes. Tests keep the typed rows to compare with what landed in
//! ClickHouse; the typed values are the *decoded* values (what should land), the encoders add the
//! sender's escaping.
//!
//! Wire conventions (see `SENDERS.md` and the schemas):
//! - `edge_access` JSON is Akamai DataStream 2 JSON: keys are DS2 names ([`ACCESS_FIELDS`]), every
//!   value is a JSON string, absent values are omitted, and text is URL-encoded per RFC 1738 with
//!   `+` for space (UA and referer fully, like Akamai's sample; path and content type only where a
//!   byte is outside 0x21..=0x7E or is `%`/`+`).
//! - `edge_access` delimited is DS2 "structured": one record per line, single-space separated, in
//!   schema body-column order, the same URL encoding, `-` for absent.
//! - CSV has a header row of the same keys, plain (not URL-encoded) values, RFC 4180 quoting, `-`
//!   for absent.
//! - `edge_events` JSON carries native JSON types; delimited is TAB-separated with `tags` and
//!   `properties` as JSON text; CSV likewise. Unknown extra keys exist only in the JSON formats.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;

use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

mod agents;

/// DataStream 2 JSON keys of `edge_access`, in the schema's body-column order (the default field
/// order of delimited lines).
pub const ACCESS_FIELDS: [&str; 24] = [
    "version",
    "streamId",
    "cp",
    "reqId",
    "reqTimeSec",
    "bytes",
    "cliIP",
    "statusCode",
    "proto",
    "reqHost",
    "reqMethod",
    "reqPath",
    "reqPort",
    "rspContentLen",
    "rspContentType",
    "UA",
    "tlsOverheadTimeMSec",
    "tlsVersion",
    "timeToFirstByte",
    "cacheStatus",
    "referer",
    "country",
    "asn",
    "ewId",
];

/// JSON keys of `edge_events`, in the schema's body-column order.
pub const EVENT_FIELDS: [&str; 10] = [
    "id",
    "ts",
    "worker",
    "event",
    "level",
    "duration_ms",
    "status",
    "host",
    "tags",
    "properties",
];

/// Field separator of `edge_access` delimited lines (schema `input.delimiter`).
pub const ACCESS_DELIMITER: u8 = b' ';
/// Field separator of `edge_events` delimited lines (schema `input.delimiter`).
pub const EVENT_DELIMITER: u8 = b'\t';
/// What text formats write for an absent value (schema `input.absent`).
pub const ABSENT: &str = "-";

// ---------------------------------------------------------------------------------------------
// Formats and encodings

/// Body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
    /// One JSON array of objects (`application/json`).
    JsonArray,
    /// CSV with a header row (`text/csv`).
    Csv,
    /// DataStream 2 "structured" delimited lines (`text/plain`).
    Delimited,
}

impl Format {
    pub const ALL: [Format; 4] = [
        Format::Ndjson,
        Format::JsonArray,
        Format::Csv,
        Format::Delimited,
    ];

    /// The `Content-Type` a sender puts on this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::JsonArray => "application/json",
            Format::Csv => "text/csv",
            Format::Delimited => "text/plain",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::JsonArray => "json",
            Format::Csv => "csv",
            Format::Delimited => "delimited",
        }
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            "json" | "json-array" | "json_array" | "array" => Ok(Format::JsonArray),
            "csv" => Ok(Format::Csv),
            "delimited" | "structured" | "text" => Ok(Format::Delimited),
            other => Err(format!(
                "unknown format {other:?}: use ndjson, json, csv or delimited"
            )),
        }
    }
}

/// `Content-Encoding` of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Identity, Encoding::Gzip, Encoding::Zstd];

    /// The `Content-Encoding` header value.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "identity" | "none" => Ok(Encoding::Identity),
            "gzip" | "gz" => Ok(Encoding::Gzip),
            "zstd" | "zst" => Ok(Encoding::Zstd),
            other => Err(format!(
                "unknown encoding {other:?}: use identity, gzip or zstd"
            )),
        }
    }
}

/// Compresses a body for `Content-Encoding: enc` (gzip default level, zstd level 3).
pub fn compress(body: &[u8], enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Identity => body.to_vec(),
        Encoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4 + 64),
                flate2::Compression::default(),
            );
            encoder.write_all(body).expect("write to Vec");
            encoder.finish().expect("write to Vec")
        }
        Encoding::Zstd => zstd::bulk::compress(body, 3).expect("zstd compress to memory"),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed rows

/// One edge access log record as DataStream 2 knows it. Values are decoded (what should land in
/// ClickHouse); `None` is a field DataStream 2 would report as `-` (omitted in JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeAccess {
    pub version: u8,
    pub stream_id: u32,
    pub cp: u32,
    pub req_id: String,
    /// Unix seconds.
    pub req_time_sec: u64,
    pub bytes: u64,
    pub cli_ip: String,
    pub status_code: u16,
    /// `HTTPS` or `HTTP` (DataStream 2 "protocol type").
    pub proto: String,
    pub req_host: String,
    pub req_method: String,
    pub req_path: String,
    pub req_port: u16,
    pub rsp_content_len: Option<u64>,
    pub rsp_content_type: Option<String>,
    pub ua: Option<String>,
    pub tls_overhead_time_msec: Option<u32>,
    pub tls_version: Option<String>,
    pub time_to_first_byte: Option<u32>,
    pub cache_status: u8,
    pub referer: Option<String>,
    pub country: Option<String>,
    pub asn: Option<u32>,
    pub ew_id: Option<u32>,
}

/// How a text field is escaped on the DataStream 2 wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlEnc {
    /// Never holds anything that needs escaping.
    None,
    /// Only bytes outside 0x21..=0x7E, `%` and `+` (space is `+`).
    Lenient,
    /// Everything but `A-Z a-z 0-9 - _ .` (space is `+`), like Akamai's UA and referer samples.
    Full,
}

const ACCESS_URL_ENC: [UrlEnc; 24] = {
    let mut enc = [UrlEnc::None; 24];
    enc[11] = UrlEnc::Lenient; // reqPath
    enc[14] = UrlEnc::Lenient; // rspContentType
    enc[15] = UrlEnc::Full; // UA
    enc[20] = UrlEnc::Full; // referer
    enc
};

fn num<T: ToString>(v: T) -> Option<Cow<'static, str>> {
    Some(Cow::Owned(v.to_string()))
}

fn s(v: &str) -> Option<Cow<'_, str>> {
    Some(Cow::Borrowed(v))
}

fn opt(v: &Option<String>) -> Option<Cow<'_, str>> {
    v.as_deref().map(Cow::Borrowed)
}

impl EdgeAccess {
    /// Plain (unescaped) text of every field in [`ACCESS_FIELDS`] order; `None` is absent.
    pub fn values(&self) -> [Option<Cow<'_, str>>; 24] {
        [
            num(self.version),
            num(self.stream_id),
            num(self.cp),
            s(&self.req_id),
            num(self.req_time_sec),
            num(self.bytes),
            s(&self.cli_ip),
            num(self.status_code),
            s(&self.proto),
            s(&self.req_host),
            s(&self.req_method),
            s(&self.req_path),
            num(self.req_port),
            self.rsp_content_len.and_then(num),
            opt(&self.rsp_content_type),
            opt(&self.ua),
            self.tls_overhead_time_msec.and_then(num),
            opt(&self.tls_version),
            self.time_to_first_byte.and_then(num),
            num(self.cache_status),
            opt(&self.referer),
            opt(&self.country),
            self.asn.and_then(num),
            self.ew_id.and_then(num),
        ]
    }

    /// Values as DataStream 2 writes them (URL-encoded text), in [`ACCESS_FIELDS`] order.
    pub fn wire_values(&self) -> [Option<Cow<'_, str>>; 24] {
        let mut values = self.values();
        for (value, enc) in values.iter_mut().zip(ACCESS_URL_ENC) {
            if let Some(v) = value.as_mut() {
                match enc {
                    UrlEnc::None => {}
                    UrlEnc::Lenient => {
                        if let Cow::Owned(e) = url_encode_lenient(v) {
                            *v = Cow::Owned(e)
                        }
                    }
                    UrlEnc::Full => {
                        if let Cow::Owned(e) = url_encode_full(v) {
                            *v = Cow::Owned(e)
                        }
                    }
                }
            }
        }
        values
    }
}

/// One custom EdgeWorker event.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeEvent {
    /// UUID v4, lower-case hyphenated.
    pub id: String,
    /// Event time, unix milliseconds.
    pub ts_ms: u64,
    /// Whether `ts` is sent as an RFC 3339 string (`2026-01-01T00:00:00.123Z`) rather than a
    /// number of unix milliseconds.
    pub ts_rfc3339: bool,
    pub worker: String,
    pub event: String,
    /// `None`: not sent (the schema default `info` applies).
    pub level: Option<String>,
    pub duration_ms: Option<f64>,
    pub status: Option<u16>,
    pub host: Option<String>,
    pub tags: Vec<String>,
    /// A JSON object.
    pub properties: Value,
    /// Keys the schema does not name (sent in JSON formats only).
    pub extra: Map<String, Value>,
}

impl EdgeEvent {
    /// `ts` as it is sent: a JSON number of unix ms, or an RFC 3339 string.
    pub fn ts_value(&self) -> Value {
        if self.ts_rfc3339 {
            Value::String(rfc3339_millis(self.ts_ms))
        } else {
            Value::from(self.ts_ms)
        }
    }

    /// Event time in unix seconds (what a ClickHouse `DateTime` holds).
    pub fn unix_seconds(&self) -> u64 {
        self.ts_ms / 1000
    }

    /// The level that should land (`info` when not sent).
    pub fn effective_level(&self) -> &str {
        self.level.as_deref().unwrap_or("info")
    }

    /// The event as a JSON object (absent fields omitted, extras included). Key order is
    /// serde_json's map order; [`encode_events`] writes keys in [`EVENT_FIELDS`] order.
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), Value::String(self.id.clone()));
        o.insert("ts".into(), self.ts_value());
        o.insert("worker".into(), Value::String(self.worker.clone()));
        o.insert("event".into(), Value::String(self.event.clone()));
        if let Some(level) = &self.level {
            o.insert("level".into(), Value::String(level.clone()));
        }
        if let Some(d) = self.duration_ms {
            o.insert("duration_ms".into(), Value::from(d));
        }
        if let Some(s) = self.status {
            o.insert("status".into(), Value::from(s));
        }
        if let Some(h) = &self.host {
            o.insert("host".into(), Value::String(h.clone()));
        }
        o.insert(
            "tags".into(),
            Value::Array(self.tags.iter().cloned().map(Value::String).collect()),
        );
        o.insert("properties".into(), self.properties.clone());
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }

    /// Plain text of every field in [`EVENT_FIELDS`] order (`tags`/`properties` as compact JSON);
    /// `None` is absent.
    pub fn text_values(&self) -> [Option<String>; 10] {
        let ts = if self.ts_rfc3339 {
            rfc3339_millis(self.ts_ms)
        } else {
            self.ts_ms.to_string()
        };
        [
            Some(self.id.clone()),
            Some(ts),
            Some(self.worker.clone()),
            Some(self.event.clone()),
            self.level.clone(),
            self.duration_ms.map(|d| Value::from(d).to_string()),
            self.status.map(|s| s.to_string()),
            self.host.clone(),
            Some(serde_json::to_string(&self.tags).expect("tags to JSON")),
            Some(self.properties.to_string()),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders

/// Encodes access rows exactly as DataStream 2 (JSON, structured) or a CSV sender would.
pub fn encode_access(rows: &[EdgeAccess], format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 600 + 64);
    match format {
        Format::Ndjson | Format::JsonArray => {
            let array = format == Format::JsonArray;
            if array {
                out.push(b'[');
            }
            for (i, row) in rows.iter().enumerate() {
                if array && i > 0 {
                    out.extend_from_slice(b",\n");
                }
                out.push(b'{');
                let mut first = true;
                for (key, value) in ACCESS_FIELDS.iter().zip(row.wire_values()) {
                    let Some(value) = value else { continue };
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_json_str(&mut out, key);
                    out.push(b':');
                    write_json_str(&mut out, &value);
                }
                out.push(b'}');
                if !array {
                    out.push(b'\n');
                }
            }
            if array {
                out.extend_from_slice(b"]\n");
            }
        }
        Format::Csv => {
            write_csv_record(&mut out, ACCESS_FIELDS.iter().copied());
            for row in rows {
                let values = row.values();
                write_csv_record(
                    &mut out,
                    values.iter().map(|v| v.as_deref().unwrap_or(ABSENT)),
                );
            }
        }
        Format::Delimited => {
            for row in rows {
                for (i, value) in row.wire_values().iter().enumerate() {
                    if i > 0 {
                        out.push(ACCESS_DELIMITER);
                    }
                    out.extend_from_slice(value.as_deref().unwrap_or(ABSENT).as_bytes());
                }
                out.push(b'\n');
            }
        }
    }
    out
}

/// Encodes events as a custom EdgeWorker would (native JSON types in JSON formats).
pub fn encode_events(rows: &[EdgeEvent], format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 400 + 64);
    match format {
        Format::Ndjson => {
            for row in rows {
                write_event_json(&mut out, row);
                out.push(b'\n');
            }
        }
        Format::JsonArray => {
            out.push(b'[');
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                write_event_json(&mut out, row);
            }
            out.extend_from_slice(b"]\n");
        }
        Format::Csv => {
            write_csv_record(&mut out, EVENT_FIELDS.iter().copied());
            for row in rows {
                let values = row.text_values();
                write_csv_record(
                    &mut out,
                    values.iter().map(|v| v.as_deref().unwrap_or(ABSENT)),
                );
            }
        }
        Format::Delimited => {
            for row in rows {
                for (i, value) in row.text_values().iter().enumerate() {
                    if i > 0 {
                        out.push(EVENT_DELIMITER);
                    }
                    out.extend_from_slice(value.as_deref().unwrap_or(ABSENT).as_bytes());
                }
                out.push(b'\n');
            }
        }
    }
    out
}

/// One event object: keys in [`EVENT_FIELDS`] order, absent ones omitted, extras last.
fn write_event_json(out: &mut Vec<u8>, row: &EdgeEvent) {
    fn member(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &dyn erased::Json) {
        if !*first {
            out.push(b',');
        }
        *first = false;
        write_json_str(out, key);
        out.push(b':');
        value.write(out);
    }
    let mut first = true;
    out.push(b'{');
    member(out, &mut first, "id", &row.id.as_str());
    member(out, &mut first, "ts", &row.ts_value());
    member(out, &mut first, "worker", &row.worker.as_str());
    member(out, &mut first, "event", &row.event.as_str());
    if let Some(level) = &row.level {
        member(out, &mut first, "level", &level.as_str());
    }
    if let Some(d) = row.duration_ms {
        member(out, &mut first, "duration_ms", &d);
    }
    if let Some(status) = row.status {
        member(out, &mut first, "status", &status);
    }
    if let Some(host) = &row.host {
        member(out, &mut first, "host", &host.as_str());
    }
    member(out, &mut first, "tags", &row.tags);
    member(out, &mut first, "properties", &row.properties);
    for (key, value) in &row.extra {
        member(out, &mut first, key, value);
    }
    out.push(b'}');
}

mod erased {
    /// A value serde_json can write, behind `dyn`.
    pub(super) trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            serde_json::to_writer(out, self).expect("write to Vec");
        }
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("write to Vec");
}

/// One CSV record with RFC 4180 quoting (quoted when a field holds `,` `"` CR LF or edge spaces).
fn write_csv_record<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let needs_quotes = field.contains([',', '"', '\n', '\r'])
            || field.starts_with(' ')
            || field.ends_with(' ');
        if needs_quotes {
            out.push(b'"');
            for b in field.bytes() {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.push(b'\n');
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn url_encode_with(s: &str, keep: impl Fn(u8) -> bool) -> Cow<'_, str> {
    if s.bytes().all(|b| b != b' ' && keep(b)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for b in s.bytes() {
        if b == b' ' {
            out.push('+');
        } else if keep(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    Cow::Owned(out)
}

/// URL-encodes like DataStream 2 does for UA and referer (RFC 1738 escapes, `+` for space):
/// keeps only `A-Z a-z 0-9 - _ .`.
pub fn url_encode_full(s: &str) -> Cow<'_, str> {
    url_encode_with(s, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
    })
}

/// URL-encodes only what must be: bytes outside 0x21..=0x7E, and `%` and `+` so the value decodes
/// back to itself (`+` for space). `/path1/path2/file.ext` and `text/html` stay as they are.
pub fn url_encode_lenient(s: &str) -> Cow<'_, str> {
    url_encode_with(s, |b| (0x21..=0x7E).contains(&b) && b != b'%' && b != b'+')
}

/// RFC 3339 UTC with milliseconds, as JavaScript's `Date.prototype.toISOString` writes it.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------
// Fixed samples

/// Akamai's documented sample record (DataStream 2 "Log format" page), as NDJSON of three
/// records: the documented one with every field of the default data set (many not in the
/// schema, ignored by it), then two shorter ones with fields omitted as DataStream 2 omits `-`
/// values. Every value is a string. Request times are those of the sample (November 2019):
/// use [`ds2_sample_batch_at`] for rows that must not fall outside a table's TTL.
pub fn ds2_sample_batch() -> &'static str {
    DS2_SAMPLE
}

/// [`ds2_sample_batch`] with the three records' `reqTimeSec` set to `unix_seconds`,
/// `unix_seconds + 1` and `unix_seconds + 2`.
pub fn ds2_sample_batch_at(unix_seconds: u64) -> String {
    DS2_SAMPLE
        .replace(
            "\"reqTimeSec\":\"1573840000\"",
            &format!("\"reqTimeSec\":\"{unix_seconds}\""),
        )
        .replace(
            "\"reqTimeSec\":\"1573840001\"",
            &format!("\"reqTimeSec\":\"{}\"", unix_seconds + 1),
        )
        .replace(
            "\"reqTimeSec\":\"1573840002\"",
            &format!("\"reqTimeSec\":\"{}\"", unix_seconds + 2),
        )
}

/// Number of records in [`ds2_sample_batch`].
pub const DS2_SAMPLE_RECORDS: usize = 3;

const DS2_SAMPLE: &str = concat!(
    r#"{"version":"1","streamId":"12345","cp":"123456","reqId":"1239f220","reqTimeSec":"1573840000","bytes":"4995","cliIP":"128.147.28.68","statusCode":"206","proto":"HTTPS","reqHost":"test.hostname.net","reqMethod":"GET","reqPath":"/path1/path2/file.ext","reqPort":"443","rspContentLen":"5000","rspContentType":"text/html","UA":"Mozilla%2F5.0+%28Macintosh%3B+Intel+Mac+OS+X+10_14_3%29","tlsOverheadTimeMSec":"0","tlsVersion":"TLSv1","objSize":"484","uncompressedSize":"484","overheadBytes":"232","totalBytes":"0","queryStr":"param=value","breadcrumbs":"//BC/%5Ba=23.33.41.20,c=g,k=0,l=1%5D","accLang":"en-US","cookie":"cookie-content","range":"37334-42356","referer":"https%3A%2F%2Ftest.referrer.net%2Fen-US%2Fdocs%2FWeb%2Ftest","xForwardedFor":"8.47.28.38","maxAgeSec":"3600","reqEndTimeMSec":"3","errorCode":"ERR_ACCESS_DENIED|fwd_acl","turnAroundTimeMSec":"11","transferTimeMSec":"125","dnsLookupTimeMSec":"50","lastByte":"1","edgeIP":"23.50.51.173","country":"IN","state":"Virginia","city":"HERNDON","serverCountry":"SG","billingRegion":"8","cacheStatus":"1","ewUsageInfo":"//4380/4.4/1/-/0/4/#1,2\\//4380/4.4/4/-/0/4/#0,0\\//4380/4.4/5/-/0/4/#0,0","ewExecutionInfo":"c:4380:7:161:162:161:n:::12473:200|C:4380:3:0:4:0:n:::6967:200|R:4380:20:99:99:1:n:::35982:200","customField":"any-custom-value"}"#,
    "\n",
    r#"{"version":"1","streamId":"12345","cp":"123456","reqId":"1239f221","reqTimeSec":"1573840001","bytes":"0","cliIP":"2001:db8:85a3::8a2e:370:7334","statusCode":"304","proto":"HTTPS","reqHost":"test.hostname.net","reqMethod":"GET","reqPath":"/images/summer+sale/caf%C3%A9.jpg","reqPort":"443","UA":"Mozilla%2F5.0+%28iPhone%3B+CPU+iPhone+OS+17_4_1+like+Mac+OS+X%29+AppleWebKit%2F605.1.15+%28KHTML%2C+like+Gecko%29+Version%2F17.4.1+Mobile%2F15E148+Safari%2F604.1","tlsOverheadTimeMSec":"0","tlsVersion":"TLSv1.3","turnAroundTimeMSec":"4","cacheStatus":"1","country":"DE"}"#,
    "\n",
    r#"{"version":"1","streamId":"12345","cp":"123456","reqId":"1239f222","reqTimeSec":"1573840002","bytes":"1234","cliIP":"198.51.100.7","statusCode":"404","proto":"HTTP","reqHost":"test.hostname.net","reqMethod":"HEAD","reqPath":"/missing","reqPort":"80","rspContentType":"text/html%3B+charset%3Dutf-8","cacheStatus":"0"}"#,
    "\n",
);

// ---------------------------------------------------------------------------------------------
// Generator

/// What the generator may vary besides the seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratorConfig {
    /// Earliest request/event time, unix seconds.
    pub start_unix: u64,
    /// Times are spread uniformly over `[start_unix, start_unix + span_secs)`.
    pub span_secs: u64,
    /// DataStream 2 stream id written in every access record.
    pub stream_id: u32,
    /// DataStream 2 stream version written in every access record.
    pub ds_version: u8,
}

/// 2026-01-01T00:00:00Z.
pub const DEFAULT_START_UNIX: u64 = 1_767_225_600;

impl Default for GeneratorConfig {
    /// A fixed start ([`DEFAULT_START_UNIX`]) and one hour: deterministic, but tables with a TTL
    /// may drop such rows once they are older than the TTL — use [`GeneratorConfig::recent`].
    fn default() -> Self {
        GeneratorConfig {
            start_unix: DEFAULT_START_UNIX,
            span_secs: 3600,
            stream_id: 12345,
            ds_version: 1,
        }
    }
}

impl GeneratorConfig {
    /// Times in the `span_secs` before now (the start is rounded down to a whole minute).
    pub fn recent(span_secs: u64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(DEFAULT_START_UNIX);
        let start = now.saturating_sub(span_secs);
        GeneratorConfig {
            start_unix: start - start % 60,
            span_secs,
            ..GeneratorConfig::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HostKind {
    Www,
    Static,
    Img,
    Api,
    Video,
    Download,
}

struct HostSpec {
    name: &'static str,
    kind: HostKind,
    cp: u32,
    ew_id: Option<u32>,
}

const fn host(name: &'static str, kind: HostKind, cp: u32, ew_id: Option<u32>) -> HostSpec {
    HostSpec {
        name,
        kind,
        cp,
        ew_id,
    }
}

/// In popularity order (sampled Zipf-like). Reserved example names only (RFC 2606).
const HOSTS: &[HostSpec] = &[
    host("www.example.com", HostKind::Www, 123456, Some(4380)),
    host("static.example.com", HostKind::Static, 123457, None),
    host("img.example.com", HostKind::Img, 123458, Some(6812)),
    host("api.example.com", HostKind::Api, 123460, Some(7120)),
    host("video.example.net", HostKind::Video, 223001, None),
    host("m.example.com", HostKind::Www, 123456, Some(4380)),
    host("cdn.example.net", HostKind::Static, 223003, None),
    host("www.example.net", HostKind::Www, 223002, None),
    host("shop.example.org", HostKind::Www, 323100, Some(9051)),
    host("assets.example.org", HostKind::Static, 323101, None),
    host("api.example.org", HostKind::Api, 323102, Some(9052)),
    host("live.media.example", HostKind::Video, 423001, None),
    host("downloads.example.net", HostKind::Download, 223004, None),
    host("news.example.com", HostKind::Www, 123470, None),
    host("images.news.example.com", HostKind::Img, 123471, None),
    host("vod.media.example", HostKind::Video, 423002, None),
    host("auth.example.com", HostKind::Api, 123480, Some(4402)),
    host("beacon.example.com", HostKind::Api, 123481, None),
    host("fonts.example.net", HostKind::Static, 223005, None),
    host("docs.example.org", HostKind::Www, 323103, None),
    host("blog.example.org", HostKind::Www, 323104, None),
    host("www.shop.example", HostKind::Www, 523001, Some(9051)),
    host("cdn.shop.example", HostKind::Static, 523002, None),
    host("api.shop.example", HostKind::Api, 523003, Some(9053)),
    host("img.shop.example", HostKind::Img, 523004, None),
    host("app.example.com", HostKind::Www, 123490, None),
    host("updates.example.net", HostKind::Download, 223006, None),
    host("graphql.example.com", HostKind::Api, 123491, Some(7121)),
    host("status.example.com", HostKind::Www, 123492, None),
    host("media.example.org", HostKind::Img, 323105, None),
    host("partners.example.net", HostKind::Api, 223007, None),
    host("ws.example.com", HostKind::Api, 123493, None),
];

/// ISO 3166-1 alpha-2 codes with rough traffic shares and a few of each country's real ASNs.
const COUNTRIES: &[(&str, f64, &[u32])] = &[
    ("US", 30.0, &[7922, 7018, 701, 20115, 16509, 15169]),
    ("IN", 7.0, &[9498, 55836, 45609]),
    ("DE", 7.0, &[3320, 3209, 6805]),
    ("GB", 6.0, &[2856, 5089, 5378]),
    ("JP", 5.0, &[2516, 4713, 17676]),
    ("BR", 5.0, &[28573, 18881, 26599]),
    ("FR", 5.0, &[3215, 12322, 5410]),
    ("CA", 4.0, &[812, 577, 852]),
    ("NL", 3.0, &[1136, 33915]),
    ("AU", 3.0, &[1221, 4804]),
    ("ES", 2.5, &[3352, 12479]),
    ("IT", 2.5, &[3269, 30722]),
    ("MX", 2.0, &[8151]),
    ("KR", 2.0, &[4766, 9318]),
    ("ID", 1.5, &[7713]),
    ("SE", 1.5, &[3301]),
    ("PL", 1.5, &[5617]),
    ("SG", 1.5, &[9506, 7473]),
    ("ZA", 1.0, &[37457]),
    ("TR", 1.0, &[9121]),
    ("CH", 1.0, &[3303]),
    ("AR", 1.0, &[7303]),
];

/// Status codes with shares (~85 % 200, 404 3 %, 5xx 0.5 %).
const STATUSES: &[(u16, f64)] = &[
    (200, 84.5),
    (206, 3.0),
    (301, 1.5),
    (302, 1.5),
    (304, 5.5),
    (403, 0.5),
    (404, 3.0),
    (500, 0.1),
    (502, 0.2),
    (503, 0.15),
    (504, 0.05),
];

const METHODS: &[(&str, f64)] = &[
    ("GET", 92.0),
    ("HEAD", 2.5),
    ("POST", 3.5),
    ("OPTIONS", 1.5),
    ("PUT", 0.3),
    ("PATCH", 0.1),
    ("DELETE", 0.1),
];

const WORDS: &[&str] = &[
    "products", "category", "en-us", "de-de", "blog", "news", "2025", "2026", "static", "assets",
    "images", "user", "account", "search", "sale", "help", "docs", "catalog", "media", "uploads",
    "items", "landing", "promo", "about", "shoes", "kitchen", "garden", "releases", "thumbs",
];

/// Path segments with characters DataStream 2 must escape (never `%` or `+`).
const SPECIAL_SEGMENTS: &[&str] = &[
    "summer sale",
    "café",
    "Zürich",
    "日本語",
    "files (1)",
    "a&b",
    "[draft]",
    "über uns",
    "naïve-art",
    "q\"uote",
];

const REFERER_SITES: &[&str] = &[
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://l.facebook.com/",
    "https://t.co/",
    "android-app://com.google.android.gm/",
];

struct EventKind {
    name: &'static str,
    weight: f64,
    /// (level, weight); the first is the usual one.
    levels: &'static [(&'static str, f64)],
    statuses: &'static [u16],
    /// Median duration, ms (`0.0`: no duration).
    duration_median: f64,
}

const EVENT_KINDS: &[EventKind] = &[
    EventKind {
        name: "request.complete",
        weight: 40.0,
        levels: &[("info", 0.95), ("debug", 0.05)],
        statuses: &[200, 200, 200, 200, 200, 304, 206, 404],
        duration_median: 12.0,
    },
    EventKind {
        name: "kv.read",
        weight: 15.0,
        levels: &[("debug", 0.9), ("warn", 0.1)],
        statuses: &[],
        duration_median: 4.0,
    },
    EventKind {
        name: "cache.miss",
        weight: 10.0,
        levels: &[("debug", 1.0)],
        statuses: &[],
        duration_median: 0.0,
    },
    EventKind {
        name: "subrequest.timing",
        weight: 10.0,
        levels: &[("info", 0.9), ("warn", 0.1)],
        statuses: &[200, 200, 200, 503],
        duration_median: 80.0,
    },
    EventKind {
        name: "ab.assign",
        weight: 8.0,
        levels: &[("info", 1.0)],
        statuses: &[],
        duration_median: 0.0,
    },
    EventKind {
        name: "cold_start",
        weight: 5.0,
        levels: &[("info", 1.0)],
        statuses: &[],
        duration_median: 35.0,
    },
    EventKind {
        name: "redirect.geo",
        weight: 5.0,
        levels: &[("info", 1.0)],
        statuses: &[301, 302, 302],
        duration_median: 1.5,
    },
    EventKind {
        name: "auth.denied",
        weight: 3.0,
        levels: &[("warn", 1.0)],
        statuses: &[401, 403],
        duration_median: 2.0,
    },
    EventKind {
        name: "bot.detected",
        weight: 2.0,
        levels: &[("warn", 0.8), ("info", 0.2)],
        statuses: &[],
        duration_median: 0.0,
    },
    EventKind {
        name: "rate_limit.hit",
        weight: 1.0,
        levels: &[("warn", 1.0)],
        statuses: &[429],
        duration_median: 0.0,
    },
    EventKind {
        name: "error.uncaught",
        weight: 1.0,
        levels: &[("error", 1.0)],
        statuses: &[500],
        duration_median: 20.0,
    },
];

const WORKERS: &[&str] = &[
    "ab-router",
    "geo-redirect",
    "auth-gate",
    "image-resizer",
    "edge-cache-keys",
    "bot-score",
    "header-rewrite",
    "api-aggregator",
];

const TAGS: &[&str] = &[
    "prod",
    "canary",
    "eu",
    "us",
    "apac",
    "beta",
    "tier:free",
    "tier:pro",
    "exp:checkout-v2",
    "mobile",
    "retry",
];

const POPS: &[&str] = &[
    "FRA", "LHR", "IAD", "SJC", "NRT", "GRU", "SIN", "SYD", "ZRH", "BOM",
];

/// Seeded generator of edge traffic. Same seed and config → same rows, call after call.
pub struct Generator {
    rng: ChaCha8Rng,
    config: GeneratorConfig,
    hosts: WeightedIndex<f64>,
    /// The user agent pool ([`agents`]) and its weights.
    agents: Vec<String>,
    user_agents: WeightedIndex<f64>,
    countries: WeightedIndex<f64>,
    statuses: WeightedIndex<f64>,
    methods: WeightedIndex<f64>,
    event_kinds: WeightedIndex<f64>,
    workers: WeightedIndex<f64>,
}

fn zipf(n: usize, s: f64) -> WeightedIndex<f64> {
    WeightedIndex::new((1..=n).map(|k| 1.0 / (k as f64).powf(s))).expect("positive weights")
}

fn weighted<T>(items: &[T], weight: impl Fn(&T) -> f64) -> WeightedIndex<f64> {
    WeightedIndex::new(items.iter().map(weight)).expect("positive weights")
}

impl Generator {
    /// A generator with [`GeneratorConfig::default`] (fixed start time).
    pub fn new(seed: u64) -> Self {
        Generator::with_config(seed, GeneratorConfig::default())
    }

    pub fn with_config(seed: u64, config: GeneratorConfig) -> Self {
        let (agents, user_agents) = agents::pool();
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            hosts: zipf(HOSTS.len(), 1.1),
            agents,
            user_agents,
            countries: weighted(COUNTRIES, |c| c.1),
            statuses: weighted(STATUSES, |s| s.1),
            methods: weighted(METHODS, |m| m.1),
            event_kinds: weighted(EVENT_KINDS, |e| e.weight),
            workers: zipf(WORKERS.len(), 1.0),
        }
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// `n` access log records.
    pub fn edge_access(&mut self, n: usize) -> Vec<EdgeAccess> {
        (0..n).map(|_| self.one_access()).collect()
    }

    /// `n` custom EdgeWorker events.
    pub fn edge_events(&mut self, n: usize) -> Vec<EdgeEvent> {
        (0..n).map(|_| self.one_event()).collect()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen_bool(p.clamp(0.0, 1.0))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.gen_range(0..items.len())]
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1: f64 = 1.0 - self.rng.r#gen::<f64>(); // (0, 1]
        let u2: f64 = self.rng.r#gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and shape.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }

    fn time_ms(&mut self) -> u64 {
        let start = self.config.start_unix * 1000;
        match self.config.span_secs {
            0 => start,
            span => start + self.rng.gen_range(0..span * 1000),
        }
    }

    fn client_ip(&mut self) -> String {
        // 70 % of requests come from a pool of returning clients, the rest from anywhere.
        let index: u64 = if self.chance(0.7) {
            self.rng.gen_range(0..2_000)
        } else {
            self.rng.r#gen()
        };
        let h = splitmix64(index);
        if h % 100 < 15 {
            const PREFIXES: [u16; 6] = [0x2a01, 0x2a02, 0x2600, 0x2607, 0x2001, 0x2409];
            let prefix = PREFIXES[(h >> 8) as usize % PREFIXES.len()];
            let h2 = splitmix64(h);
            let ip = std::net::Ipv6Addr::new(
                prefix,
                (h >> 16) as u16,
                (h >> 32) as u16,
                (h >> 48) as u16,
                0,
                (h2 >> 16) as u16 & 0x00ff,
                (h2 >> 32) as u16,
                (h2 >> 48) as u16,
            );
            ip.to_string()
        } else {
            // First octets of public unicast ranges only.
            const FIRST: [u8; 16] = [
                24, 31, 37, 46, 62, 73, 81, 89, 98, 109, 151, 176, 185, 188, 203, 213,
            ];
            let first = FIRST[(h >> 8) as usize % FIRST.len()];
            let ip = std::net::Ipv4Addr::new(
                first,
                (h >> 16) as u8,
                (h >> 24) as u8,
                ((h >> 32) as u8).max(1),
            );
            ip.to_string()
        }
    }

    fn path(&mut self, kind: HostKind) -> String {
        let segments = match kind {
            HostKind::Api => self.rng.gen_range(1..=3),
            HostKind::Video => 3,
            _ => self.rng.gen_range(1..=4),
        };
        let mut path = String::with_capacity(64);
        let special = self.chance(0.02);
        for i in 0..segments - 1 {
            path.push('/');
            if special && i == 0 {
                path.push_str(self.pick(SPECIAL_SEGMENTS));
            } else if kind == HostKind::Api && i == 0 {
                path.push_str(self.pick(&["v1", "v2"]));
            } else {
                path.push_str(self.pick(WORDS));
            }
        }
        path.push('/');
        let id: u32 = self.rng.gen_range(1..100_000);
        match kind {
            HostKind::Www => match self.rng.gen_range(0..10) {
                0..=4 => write!(path, "{}.html", self.pick(WORDS)),
                5..=7 => write!(path, "{id}"),
                _ => Ok(()), // directory index: ".../"
            },
            HostKind::Static => {
                let ext = self.pick(&["js", "js", "css", "woff2", "svg", "json", "map"]);
                write!(
                    path,
                    "{}.{:08x}.{ext}",
                    self.pick(WORDS),
                    splitmix64(id as u64) as u32
                )
            }
            HostKind::Img => {
                let ext = self.pick(&["jpg", "jpg", "webp", "webp", "png", "avif", "gif"]);
                let size = self.pick(&["thumb", "small", "large", "original"]);
                write!(path, "{id}-{size}.{ext}")
            }
            HostKind::Api => {
                let ext = self.pick(&["", "", "", ".json"]);
                write!(
                    path,
                    "{}{ext}",
                    self.pick(&["items", "cart", "session", "search", "graphql", "prices"])
                )
            }
            HostKind::Video => {
                if self.chance(0.1) {
                    write!(path, "index.m3u8")
                } else {
                    let ext = self.pick(&["ts", "m4s", "mp4"]);
                    write!(path, "segment_{:05}.{ext}", id % 2000)
                }
            }
            HostKind::Download => {
                let ext = self.pick(&["zip", "dmg", "exe", "tar.gz", "deb", "msi"]);
                write!(path, "app-{}.{}.{}.{ext}", id % 5, id % 20, id % 100)
            }
        }
        .expect("write to String");
        path
    }

    fn one_access(&mut self) -> EdgeAccess {
        let spec = &HOSTS[self.hosts.sample(&mut self.rng)];
        let kind = spec.kind;
        let req_time_sec = self.time_ms() / 1000;
        let req_id = format!("{:016x}", self.rng.r#gen::<u64>());
        let cli_ip = self.client_ip();
        let mut status_code = STATUSES[self.statuses.sample(&mut self.rng)].0;
        let req_method = METHODS[self.methods.sample(&mut self.rng)].0;
        if status_code == 206 && req_method != "GET" {
            status_code = 200;
        }
        let https = !self.chance(0.03);
        let (proto, req_port) = if https {
            ("HTTPS", if self.chance(0.005) { 8443 } else { 443 })
        } else {
            ("HTTP", 80)
        };
        let req_path = self.path(kind);

        let cache_hit_rate = match kind {
            HostKind::Static => 0.95,
            HostKind::Img => 0.92,
            HostKind::Video => 0.9,
            HostKind::Download => 0.85,
            HostKind::Www => 0.55,
            HostKind::Api => 0.1,
        };
        let cacheable = req_method == "GET" || req_method == "HEAD";
        let cache_status = u8::from(cacheable && status_code < 500 && self.chance(cache_hit_rate));

        let content_type = content_type_for(&req_path, kind, status_code);
        let full_size = match kind {
            HostKind::Www => self.lognormal(25_000.0, 1.0),
            HostKind::Static => self.lognormal(15_000.0, 1.4),
            HostKind::Img => self.lognormal(40_000.0, 1.2),
            HostKind::Api => self.lognormal(1_500.0, 1.3),
            HostKind::Video => self.lognormal(600_000.0, 0.8),
            HostKind::Download => self.lognormal(5_000_000.0, 1.5),
        }
        .clamp(20.0, 4.0e9) as u64;
        let body_len = match status_code {
            304 | 204 => 0,
            301 | 302 => self.rng.gen_range(0..300),
            403 | 404 | 500..=599 => self.rng.gen_range(200..2_500),
            206 => (full_size / self.rng.gen_range(2..20)).max(1),
            _ => full_size,
        };
        let bytes = if req_method == "HEAD" { 0 } else { body_len };
        let rsp_content_len = match status_code {
            304 => None,
            _ if self.chance(0.05) => None, // chunked: no Content-Length
            _ => Some(body_len),
        };
        let rsp_content_type = match status_code {
            304 => None,
            301 | 302 if self.chance(0.5) => None,
            _ => Some(content_type),
        };

        let ua = if self.chance(0.01) {
            None
        } else {
            Some(self.agents[self.user_agents.sample(&mut self.rng)].clone())
        };
        let (tls_overhead_time_msec, tls_version) = if https {
            let overhead = if self.chance(0.7) {
                0 // resumed session / reused connection
            } else {
                self.lognormal(35.0, 0.7).clamp(1.0, 5_000.0) as u32
            };
            let version = if self.chance(0.75) {
                "TLSv1.3"
            } else {
                "TLSv1.2"
            };
            (Some(overhead), Some(version.to_string()))
        } else {
            (None, None)
        };
        let time_to_first_byte = if self.chance(0.02) {
            None
        } else {
            let ms = if status_code >= 500 {
                self.lognormal(900.0, 1.0)
            } else if cache_status == 1 {
                self.lognormal(6.0, 0.8)
            } else if kind == HostKind::Api {
                self.lognormal(60.0, 0.9)
            } else {
                self.lognormal(110.0, 0.9)
            };
            Some(ms.clamp(0.0, 120_000.0) as u32)
        };

        let referer_rate = match kind {
            HostKind::Www | HostKind::Static | HostKind::Img => 0.6,
            HostKind::Api => 0.4,
            HostKind::Video => 0.3,
            HostKind::Download => 0.2,
        };
        let referer = if self.chance(referer_rate) {
            if self.chance(0.6) {
                let page = self.path(HostKind::Www);
                Some(format!("https://{}{page}", HOSTS[0].name))
            } else {
                Some(self.pick(REFERER_SITES).to_string())
            }
        } else {
            None
        };

        let (country, asn) = if self.chance(0.005) {
            (None, None)
        } else {
            let (code, _, asns) = COUNTRIES[self.countries.sample(&mut self.rng)];
            let asn = if self.chance(0.01) {
                None
            } else {
                Some(self.pick(asns))
            };
            (Some(code.to_string()), asn)
        };
        let ew_id = match spec.ew_id {
            Some(id) if self.chance(0.7) => Some(id),
            _ => None,
        };

        EdgeAccess {
            version: self.config.ds_version,
            stream_id: self.config.stream_id,
            cp: spec.cp,
            req_id,
            req_time_sec,
            bytes,
            cli_ip,
            status_code,
            proto: proto.to_string(),
            req_host: spec.name.to_string(),
            req_method: req_method.to_string(),
            req_path,
            req_port,
            rsp_content_len,
            rsp_content_type,
            ua,
            tls_overhead_time_msec,
            tls_version,
            time_to_first_byte,
            cache_status,
            referer,
            country,
            asn,
            ew_id,
        }
    }

    fn uuid_v4(&mut self) -> String {
        let mut b: [u8; 16] = self.rng.r#gen();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut s = String::with_capacity(36);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            write!(s, "{byte:02x}").expect("write to String");
        }
        s
    }

    fn one_event(&mut self) -> EdgeEvent {
        let id = self.uuid_v4();
        let ts_ms = self.time_ms();
        let ts_rfc3339 = self.chance(0.4);
        let worker = WORKERS[self.workers.sample(&mut self.rng)].to_string();
        let kind = &EVENT_KINDS[self.event_kinds.sample(&mut self.rng)];

        let mut level = kind.levels[0].0;
        let mut roll: f64 = self.rng.r#gen();
        for (l, w) in kind.levels {
            if roll < *w {
                level = l;
                break;
            }
            roll -= w;
        }
        // Workers often leave `info` to the default.
        let level = if level == "info" && self.chance(0.3) {
            None
        } else {
            Some(level.to_string())
        };
        let duration_ms = if kind.duration_median > 0.0 && !self.chance(0.1) {
            let d = self.lognormal(kind.duration_median, 0.9).min(60_000.0);
            Some((d * 1000.0).round() / 1000.0)
        } else {
            None
        };
        let status = if kind.statuses.is_empty() {
            None
        } else {
            Some(self.pick(kind.statuses))
        };
        let host = if self.chance(0.9) {
            Some(HOSTS[self.hosts.sample(&mut self.rng)].name.to_string())
        } else {
            None
        };
        let tag_count = self.rng.gen_range(0..=3);
        let mut tags: Vec<String> = Vec::with_capacity(tag_count);
        for _ in 0..tag_count {
            let tag = self.pick(TAGS).to_string();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        let properties = self.properties(kind.name);
        let mut extra = Map::new();
        if self.chance(0.1) {
            match self.rng.gen_range(0..3) {
                0 => {
                    extra.insert(
                        "sampling_rate".into(),
                        json!(self.pick(&[0.01, 0.1, 0.25, 1.0])),
                    );
                }
                1 => {
                    let trace: u128 = self.rng.r#gen();
                    extra.insert("trace_id".into(), json!(format!("{trace:032x}")));
                }
                _ => {
                    extra.insert(
                        "sdk".into(),
                        json!({"name": "ew-telemetry", "version": self.pick(&["1.4.2", "1.5.0"])}),
                    );
                }
            }
        }
        EdgeEvent {
            id,
            ts_ms,
            ts_rfc3339,
            worker,
            event: kind.name.to_string(),
            level,
            duration_ms,
            status,
            host,
            tags,
            properties,
            extra,
        }
    }

    fn properties(&mut self, event: &str) -> Value {
        let pop = self.pick(POPS);
        match event {
            "request.complete" => json!({
                "pop": pop,
                "cache": {"hit": self.chance(0.8), "ttl": self.pick(&[60, 300, 3600, 86400])},
                "subrequests": self.rng.gen_range(0..4),
                "bytes_out": self.lognormal(20_000.0, 1.2) as u64,
            }),
            "kv.read" => json!({
                "namespace": self.pick(&["config", "flags", "redirects", "sessions"]),
                "key": format!("k{}", self.rng.gen_range(0..500)),
                "hit": self.chance(0.93),
                "bytes": self.rng.gen_range(16..4096),
            }),
            "cache.miss" => json!({
                "pop": pop,
                "reason": self.pick(&["expired", "not_found", "bypass", "vary"]),
                "key": {"path": self.path(HostKind::Static), "variant": self.pick(&["br", "gzip", "identity"])},
            }),
            "subrequest.timing" => json!({
                "origin": self.pick(&["origin-eu.example.net", "origin-us.example.net", "api-internal.example.com"]),
                "dns_ms": (self.lognormal(3.0, 0.7) * 10.0).round() / 10.0,
                "connect_ms": (self.lognormal(12.0, 0.7) * 10.0).round() / 10.0,
                "retries": self.pick(&[0, 0, 0, 0, 1, 2]),
            }),
            "ab.assign" => json!({
                "experiment": self.pick(&["checkout-v2", "hero-banner", "search-ranking"]),
                "variant": self.pick(&["A", "B", "control"]),
                "weights": [50, 50],
            }),
            "cold_start" => json!({
                "pop": pop,
                "isolate": {"memory_kb": self.rng.gen_range(512..4096), "bundle_kb": self.rng.gen_range(20..600)},
                "runtime": "v8",
            }),
            "redirect.geo" => {
                let (code, _, _) = COUNTRIES[self.countries.sample(&mut self.rng)];
                json!({"from": code, "to": format!("/{}/", code.to_ascii_lowercase()), "rule": self.rng.gen_range(1..40)})
            }
            "auth.denied" => json!({
                "reason": self.pick(&["expired_token", "bad_signature", "missing_cookie"]),
                "user": {"id": format!("u_{}", self.rng.gen_range(1..100_000)), "tier": self.pick(&["free", "pro"])},
            }),
            "bot.detected" => json!({
                "score": self.rng.gen_range(0..100),
                "signals": ["headless", "ua_mismatch"],
                "action": self.pick(&["challenge", "deny", "monitor"]),
            }),
            "rate_limit.hit" => json!({
                "policy": "per-ip-100rps",
                "window_s": 10,
                "count": self.rng.gen_range(100..1000),
            }),
            _ => json!({
                "message": self.pick(&[
                    "TypeError: Cannot read properties of undefined (reading 'headers')",
                    "RangeError: Maximum call stack size exceeded",
                    "Error: subrequest to \"origin\" timed out\tafter 5000ms",
                    "Fehler in Zürich: ungültige Antwort",
                ]),
                "stack": ["at onClientRequest (main.js:42:17)", "at async handler (main.js:7:3)"],
                "pop": pop,
            }),
        }
    }
}

fn content_type_for(path: &str, kind: HostKind, status: u16) -> String {
    if status >= 400 || matches!(status, 301 | 302) {
        return "text/html; charset=utf-8".to_string();
    }
    let ext = path.rsplit('.').next().unwrap_or("");
    let ct = match ext {
        "html" => "text/html; charset=utf-8",
        "js" => "application/javascript",
        "css" => "text/css",
        "woff2" => "font/woff2",
        "svg" => "image/svg+xml",
        "json" | "map" => "application/json",
        "jpg" => "image/jpeg",
        "webp" => "image/webp",
        "png" => "image/png",
        "avif" => "image/avif",
        "gif" => "image/gif",
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "dmg" | "exe" | "msi" | "deb" => "application/octet-stream",
        _ => match kind {
            HostKind::Api => "application/json",
            _ => "text/html; charset=utf-8",
        },
    };
    ct.to_string()
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests;
