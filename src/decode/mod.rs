//! Decode: turn a request body into records.
//!
//! The body is first decompressed (`Content-Encoding: gzip | zstd | identity`) under a cap on the
//! decompressed size, then framed by its format — NDJSON, a JSON array, CSV with a header row, or
//! delimited lines (Akamai DataStream 2 "structured") — and every record is handed to a
//! [`RecordVisitor`] (the validator) without copying: JSON records are parsed by simd-json into
//! its tape (a flat list of nodes, reused from record to record; no tree of maps is built) and
//! handed over as a [`JsonValue`] view of it, text records are slices of the body.
//!
//! A record that cannot be parsed inside a body that can be framed is reported to the visitor as
//! malformed (a row reject); only a body that cannot be framed at all is a [`DecodeError`].

mod gzip;
mod json;
mod text;

use std::io::Read;

/// A parsed JSON value: a view of simd-json's tape whose strings borrow from the body.
pub type JsonValue<'a> = simd_json::tape::Value<'a, 'a>;

/// The format of a body, from its `Content-Type` or sniffed from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Ndjson,
    JsonArray,
    Csv,
    Delimited,
}

impl BodyFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyFormat::Ndjson => "ndjson",
            BodyFormat::JsonArray => "json_array",
            BodyFormat::Csv => "csv",
            BodyFormat::Delimited => "delimited",
        }
    }
}

/// `Content-Encoding` of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    Zstd,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unsupported Content-Encoding {0:?}: use gzip, zstd or identity")]
    UnsupportedEncoding(String),
    #[error(
        "unsupported Content-Type {0:?}: use application/x-ndjson, application/json, text/csv or text/plain"
    )]
    UnsupportedContentType(String),
    #[error("body is not valid {encoding}: {message}")]
    Decompress {
        encoding: &'static str,
        message: String,
    },
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("batch has more than the limit of {limit} records")]
    TooManyRecords { limit: usize },
    #[error("body cannot be read as {format}: {message}")]
    NotFramed {
        format: &'static str,
        message: String,
    },
}

/// Receives the records of one body, in order. `line` is the 1-based record number (a CSV header
/// is not counted; blank lines are not records). `raw` is the record as it stood in the body
/// (kept for the quarantine table); `None` for the elements of a JSON array, which have no text
/// of their own once parsed.
pub trait RecordVisitor {
    /// Names of the positional fields of the text records that follow (CSV header, or the
    /// configured field order of delimited lines).
    fn text_header(&mut self, names: &[&str]);
    fn json_record(&mut self, line: usize, record: JsonValue<'_>, raw: Option<&[u8]>);
    fn text_record(&mut self, line: usize, fields: &[&str], raw: &[u8]);
    /// A record inside a well-framed body that could not be parsed.
    fn malformed_record(&mut self, line: usize, reason: &str, raw: &[u8]);
}

/// Per-stream framing options.
#[derive(Debug, Clone)]
pub struct DecodeOptions<'a> {
    /// Field separator of delimited lines (space or tab).
    pub delimiter: u8,
    /// Field names of delimited lines, in order.
    pub delimited_fields: &'a [&'a str],
    /// Most records one body may hold.
    pub max_records: usize,
    /// Longest record (NDJSON line, CSV record, delimited line) in bytes; a longer one is a
    /// malformed record.
    pub max_line_bytes: usize,
    /// Deepest nesting of JSON arrays and objects in a record (the record itself is level 1);
    /// a deeper record is malformed.
    pub max_nesting_depth: usize,
}

/// Bytes of an over-long record handed to the visitor as its raw text (for the quarantine
/// table): enough to recognise it, not enough to let one record fill the table.
pub const OVERLONG_RAW_PREFIX: usize = 1024;

/// The reason given for a record longer than `limit` bytes.
fn overlong_reason(limit: usize) -> String {
    format!("record is longer than the limit of {limit} bytes")
}

/// Counts records refused by a limit (`line_bytes`, `nesting_depth`) in
/// `sluice_limit_refusals_total{limit}`, once per body.
fn count_refused_records(limit: &'static str, records: usize) {
    if records > 0 {
        metrics::counter!("sluice_limit_refusals_total", "limit" => limit)
            .increment(records as u64);
    }
}

/// The start of an over-long record, cut at a character boundary when it is UTF-8.
fn overlong_raw(raw: &[u8]) -> &[u8] {
    let mut end = raw.len().min(OVERLONG_RAW_PREFIX);
    while end > 0 && end < raw.len() && (raw[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &raw[..end]
}

/// What the decoder saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeSummary {
    pub records: usize,
    pub malformed: usize,
}

pub fn content_encoding(header: Option<&str>) -> Result<ContentEncoding, DecodeError> {
    match header.map(|h| h.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Ok(ContentEncoding::Identity),
        Some("gzip") | Some("x-gzip") => Ok(ContentEncoding::Gzip),
        Some("zstd") => Ok(ContentEncoding::Zstd),
        Some(other) => Err(DecodeError::UnsupportedEncoding(other.to_string())),
    }
}

/// Picks the body format from `Content-Type`, sniffing JSON when the type is missing, generic, or
/// `text/plain` (Logpush and others send NDJSON under whatever type they were configured with).
pub fn body_format(content_type: Option<&str>, body: &[u8]) -> Result<BodyFormat, DecodeError> {
    let sniffed_json = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Some(BodyFormat::JsonArray),
        Some(b'{') => Some(BodyFormat::Ndjson),
        _ => None,
    };
    let media_type = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media_type.as_str() {
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/json-lines" => Ok(BodyFormat::Ndjson),
        "application/json" => Ok(sniffed_json.unwrap_or(BodyFormat::Ndjson)),
        "text/csv" | "application/csv" => Ok(BodyFormat::Csv),
        "text/plain" | "" | "application/octet-stream" | "*/*" => {
            Ok(sniffed_json.unwrap_or(BodyFormat::Delimited))
        }
        _ => Err(DecodeError::UnsupportedContentType(media_type)),
    }
}

/// Decompresses `body`, refusing to produce more than `max_decompressed` bytes.
pub fn decompress(
    body: &[u8],
    encoding: ContentEncoding,
    max_decompressed: usize,
) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    decompress_into(body, encoding, max_decompressed, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first), so that a caller can reuse one buffer.
pub fn decompress_into(
    body: &[u8],
    encoding: ContentEncoding,
    max_decompressed: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    fn read_capped(
        reader: impl Read,
        encoding: &'static str,
        size_hint: usize,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        out.reserve(size_hint.min(limit));
        reader
            .take((limit as u64).saturating_add(1))
            .read_to_end(out)
            .map_err(|err| DecodeError::Decompress {
                encoding,
                message: err.to_string(),
            })?;
        if out.len() > limit {
            return Err(DecodeError::DecompressedTooLarge { limit });
        }
        Ok(())
    }
    out.clear();
    match encoding {
        ContentEncoding::Identity => {
            if body.len() > max_decompressed {
                return Err(DecodeError::DecompressedTooLarge {
                    limit: max_decompressed,
                });
            }
            out.extend_from_slice(body);
            Ok(())
        }
        ContentEncoding::Gzip => {
            let size_hint = gzip_size_hint(body);
            // An empty body holds no member, which libdeflate would take as nothing to do:
            // flate2 calls it an unexpected end.
            if !body.is_empty() {
                match gzip::inflate(body, size_hint, max_decompressed, out) {
                    gzip::Inflated::Done => return Ok(()),
                    gzip::Inflated::TooLarge => {
                        return Err(DecodeError::DecompressedTooLarge {
                            limit: max_decompressed,
                        });
                    }
                    gzip::Inflated::Refused => out.clear(),
                }
            }
            // What libdeflate refused, read again for flate2's account of what is wrong.
            read_capped(
                flate2::bufread::MultiGzDecoder::new(body),
                "gzip",
                size_hint,
                max_decompressed,
                out,
            )
        }
        ContentEncoding::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(|err| {
                DecodeError::Decompress {
                    encoding: "zstd",
                    message: err.to_string(),
                }
            })?;
            read_capped(decoder, "zstd", body.len() * 8, max_decompressed, out)
        }
    }
}

/// The decompressed size a gzip body announces: ISIZE, the last four bytes (its last member's
/// size mod 2^32), never more than deflate's largest ratio (1032:1) allows, so a forged trailer
/// cannot make a small body reserve much. Most bodies are one member, so the vector that
/// receives them is allocated once instead of doubling (and copying) as it fills.
fn gzip_size_hint(body: &[u8]) -> usize {
    gzip_isize(body)
        .unwrap_or(0)
        .min(body.len().saturating_mul(1032))
        .max(body.len() * 4)
}

/// A gzip body's ISIZE: the last four bytes, its last member's inflated size mod 2^32.
fn gzip_isize(body: &[u8]) -> Option<usize> {
    match body.last_chunk::<4>() {
        Some(isize) if body.len() >= 18 => Some(u32::from_le_bytes(*isize) as usize),
        _ => None,
    }
}

/// The size `body` says it has once decompressed, read without decompressing it: its length
/// when it is not compressed, a gzip body's ISIZE (exact for the usual one-member body; a body
/// of several members, or a forged trailer, says less or more than it holds), None for zstd.
/// A hint of where to decompress it, never a limit.
pub fn announced_size(body: &[u8], encoding: ContentEncoding) -> Option<usize> {
    match encoding {
        ContentEncoding::Identity => Some(body.len()),
        ContentEncoding::Gzip => gzip_isize(body),
        ContentEncoding::Zstd => None,
    }
}

/// Frames `body` (already decompressed) and hands every record to `visitor`. JSON is parsed in
/// place, so the body is mutated.
pub fn decode(
    format: BodyFormat,
    body: &mut [u8],
    options: &DecodeOptions<'_>,
    visitor: &mut impl RecordVisitor,
) -> Result<DecodeSummary, DecodeError> {
    match format {
        BodyFormat::Ndjson => json::decode_ndjson(body, options, visitor),
        BodyFormat::JsonArray => json::decode_array(body, options, visitor),
        BodyFormat::Csv => text::decode_csv(body, options, visitor),
        BodyFormat::Delimited => text::decode_delimited(body, options, visitor),
    }
}

/// Cloudflare Logpush validates a new destination by posting `{"content":"tests"}` and needs a
/// 2xx answer; sluice acknowledges it without storing anything.
pub fn is_logpush_probe(body: &[u8]) -> bool {
    body.trim_ascii() == br#"{"content":"tests"}"#
}

/// The SIMD implementation simd-json picked at run time on this CPU (e.g. "AVX2").
pub fn json_implementation() -> String {
    simd_json::Deserializer::algorithm().to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every callback, for tests of the framing.
    #[derive(Default, Debug)]
    pub struct Recorder {
        pub header: Vec<String>,
        pub records: Vec<(usize, String)>,
    }

    impl RecordVisitor for Recorder {
        fn text_header(&mut self, names: &[&str]) {
            self.header = names.iter().map(|s| s.to_string()).collect();
        }
        fn json_record(&mut self, line: usize, record: JsonValue<'_>, _raw: Option<&[u8]>) {
            self.records.push((
                line,
                format!("json {}", simd_json::prelude::Writable::encode(&record)),
            ));
        }
        fn text_record(&mut self, line: usize, fields: &[&str], _raw: &[u8]) {
            self.records
                .push((line, format!("text {}", fields.join("|"))));
        }
        fn malformed_record(&mut self, line: usize, reason: &str, _raw: &[u8]) {
            self.records.push((line, format!("malformed {reason}")));
        }
    }

    pub fn options() -> DecodeOptions<'static> {
        DecodeOptions {
            delimiter: b' ',
            delimited_fields: &["a", "b", "c"],
            max_records: 1000,
            max_line_bytes: 64,
            max_nesting_depth: 3,
        }
    }

    #[test]
    fn content_type_and_sniffing() {
        let json = br#" {"a":1}"#;
        let csv = b"a,b\n1,2\n";
        assert_eq!(
            body_format(Some("application/x-ndjson"), csv),
            Ok(BodyFormat::Ndjson)
        );
        assert_eq!(
            body_format(Some("application/json"), b"[{}]"),
            Ok(BodyFormat::JsonArray)
        );
        assert_eq!(
            body_format(Some("application/json; charset=utf-8"), json),
            Ok(BodyFormat::Ndjson)
        );
        assert_eq!(body_format(Some("text/csv"), csv), Ok(BodyFormat::Csv));
        assert_eq!(
            body_format(Some("text/plain"), b"1 2 3"),
            Ok(BodyFormat::Delimited)
        );
        assert_eq!(
            body_format(Some("text/plain"), json),
            Ok(BodyFormat::Ndjson)
        );
        assert_eq!(body_format(None, b"[{}]"), Ok(BodyFormat::JsonArray));
        assert_eq!(
            body_format(Some("image/png"), json),
            Err(DecodeError::UnsupportedContentType("image/png".into()))
        );
    }

    #[test]
    fn decompression_is_capped() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'a'; 1 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 4096);
        assert_eq!(
            decompress(&bomb, ContentEncoding::Gzip, 1 << 16),
            Err(DecodeError::DecompressedTooLarge { limit: 1 << 16 })
        );
        assert_eq!(
            decompress(&bomb, ContentEncoding::Gzip, 1 << 20)
                .unwrap()
                .len(),
            1 << 20
        );

        let zst = zstd::encode_all(&vec![b'a'; 1 << 20][..], 3).unwrap();
        // No limit at all (usize::MAX) is no limit, not an overflow into a limit of 0.
        for (body, encoding) in [
            (&bomb, ContentEncoding::Gzip),
            (&zst, ContentEncoding::Zstd),
        ] {
            assert_eq!(
                decompress(body, encoding, usize::MAX).unwrap().len(),
                1 << 20
            );
        }
        assert_eq!(
            decompress(&zst, ContentEncoding::Zstd, 1000),
            Err(DecodeError::DecompressedTooLarge { limit: 1000 })
        );
        for body in [&b"not gzip"[..], b""] {
            let err = decompress(body, ContentEncoding::Gzip, 1000).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::Decompress {
                        encoding: "gzip",
                        ..
                    }
                ),
                "{body:?}: {err:?}"
            );
        }
        assert_eq!(
            content_encoding(Some("br")),
            Err(DecodeError::UnsupportedEncoding("br".into()))
        );
    }

    #[test]
    fn logpush_probe_is_recognised() {
        assert!(is_logpush_probe(b"{\"content\":\"tests\"}\n"));
        assert!(!is_logpush_probe(b"{\"content\":\"other\"}"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_json_uses_a_simd_implementation_where_the_cpu_has_one() {
        let implementation = json_implementation();
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("pclmulqdq") {
            assert_eq!(implementation, "AVX2");
        } else if std::is_x86_feature_detected!("sse4.2") {
            assert_eq!(implementation, "SSE42");
        }
    }
}
