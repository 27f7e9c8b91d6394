//! NDJSON and JSON-array framing with simd-json, parsing records into its tape with reused
//! buffers.

use simd_json::{Buffers, Tape};

use super::{DecodeError, DecodeOptions, DecodeSummary, RecordVisitor};

/// One record per line; blank lines are skipped. A line that is not JSON is a malformed record,
/// unless no line at all is JSON: then the body is not NDJSON. Each line is parsed from a reused
/// copy (simd-json rewrites its input), so the body keeps every record's raw text; the copy
/// carries the padding simd-json needs, which spares it a second copy of its own.
pub(super) fn decode_ndjson(
    body: &mut [u8],
    options: &DecodeOptions<'_>,
    visitor: &mut impl RecordVisitor,
) -> Result<DecodeSummary, DecodeError> {
    let mut buffers = Buffers::with_max_depth(0, options.max_nesting_depth);
    let mut scratch: Vec<u8> = Vec::new();
    // The tape's allocation is kept from line to line; each line gives it a new lifetime.
    let mut spare: Tape<'static> = Tape(Vec::new());
    let mut summary = DecodeSummary::default();
    let mut first_error: Option<String> = None;
    // Lines that are not JSON at all; over-long lines are rejected for their size, which says
    // nothing about whether the body is NDJSON.
    let mut not_json = 0;
    let (mut overlong, mut too_deep) = (0, 0);
    for line in lines(body) {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        summary.records += 1;
        if summary.records > options.max_records {
            return Err(DecodeError::TooManyRecords {
                limit: options.max_records,
            });
        }
        if line.len() > options.max_line_bytes {
            summary.malformed += 1;
            overlong += 1;
            let reason = super::overlong_reason(options.max_line_bytes);
            visitor.malformed_record(summary.records, &reason, super::overlong_raw(line));
            continue;
        }
        scratch.clear();
        scratch.extend_from_slice(line);
        scratch.resize(line.len() + simd_json::INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(&mut spare, Tape(Vec::new())).reset();
        let parsed = simd_json::fill_tape_padded(&mut scratch, line.len(), &mut buffers, &mut tape);
        match parsed {
            Ok(()) => visitor.json_record(summary.records, tape.as_value(), Some(line)),
            Err(err) => {
                if matches!(err.error(), simd_json::ErrorType::DepthLimitExceeded) {
                    too_deep += 1;
                }
                let reason = format!("invalid JSON: {}", describe(&err, options));
                if first_error.is_none() {
                    first_error = Some(format!("line {}: {reason}", summary.records));
                }
                summary.malformed += 1;
                not_json += 1;
                visitor.malformed_record(summary.records, &reason, line);
            }
        }
        spare = tape.reset();
    }
    super::count_refused_records("line_bytes", overlong);
    super::count_refused_records("nesting_depth", too_deep);
    if summary.records > 0 && not_json == summary.records {
        return Err(DecodeError::NotFramed {
            format: "NDJSON",
            message: first_error.unwrap_or_default(),
        });
    }
    Ok(summary)
}

/// The lines of `body` without their `\n`, found with memchr (SIMD) rather than byte by byte.
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text) {
            Some(end) => {
                rest = Some(&text[end + 1..]);
                Some(&text[..end])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

/// One JSON array of records. A body that is not one valid JSON array cannot be framed.
pub(super) fn decode_array(
    body: &mut [u8],
    options: &DecodeOptions<'_>,
    visitor: &mut impl RecordVisitor,
) -> Result<DecodeSummary, DecodeError> {
    let body = trim_ascii_whitespace_mut(body);
    // The array is one level more than its records.
    let array_depth = options.max_nesting_depth.saturating_add(1);
    let mut buffers = Buffers::with_max_depth(body.len(), array_depth);
    let tape = simd_json::to_tape_with_buffers(body, &mut buffers).map_err(|err| {
        if matches!(err.error(), simd_json::ErrorType::DepthLimitExceeded) {
            super::count_refused_records("nesting_depth", 1);
        }
        DecodeError::NotFramed {
            format: "a JSON array",
            message: describe(&err, options),
        }
    })?;
    let Some(records) = tape.as_value().as_array() else {
        return Err(DecodeError::NotFramed {
            format: "a JSON array",
            message: "top-level value is not an array".to_string(),
        });
    };
    if records.len() > options.max_records {
        return Err(DecodeError::TooManyRecords {
            limit: options.max_records,
        });
    }
    for (index, record) in records.iter().enumerate() {
        visitor.json_record(index + 1, record, None);
    }
    Ok(DecodeSummary {
        records: records.len(),
        malformed: 0,
    })
}

fn describe(err: &simd_json::Error, options: &DecodeOptions<'_>) -> String {
    if matches!(err.error(), simd_json::ErrorType::DepthLimitExceeded) {
        return format!(
            "nested deeper than the limit of {} levels",
            options.max_nesting_depth
        );
    }
    match err.character() {
        _ if err.is_eof() => "unexpected end of input".to_string(),
        Some(c) => format!("unexpected {c:?} at byte {}", err.index()),
        None => format!("malformed at byte {}", err.index()),
    }
}

fn trim_ascii_whitespace_mut(bytes: &mut [u8]) -> &mut [u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &mut bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Recorder, options};
    use super::super::{BodyFormat, DecodeError, decode};

    fn run(format: BodyFormat, body: &str) -> Result<Recorder, DecodeError> {
        let mut recorder = Recorder::default();
        let mut bytes = body.as_bytes().to_vec();
        decode(format, &mut bytes, &options(), &mut recorder).map(|_| recorder)
    }

    #[test]
    fn ndjson_numbers_records_and_skips_blank_lines() {
        let recorder = run(
            BodyFormat::Ndjson,
            "{\"a\":1}\r\n\n  \n{\"b\":\"x\"}\n{oops}\n",
        )
        .unwrap();
        assert_eq!(recorder.records[0], (1, "json {\"a\":1}".to_string()));
        assert_eq!(recorder.records[1], (2, "json {\"b\":\"x\"}".to_string()));
        assert_eq!(recorder.records[2].0, 3);
        assert!(
            recorder.records[2].1.starts_with("malformed invalid JSON"),
            "{:?}",
            recorder.records[2]
        );
    }

    #[test]
    fn a_body_with_no_json_line_cannot_be_framed() {
        let err = run(BodyFormat::Ndjson, "hello\nworld\n").unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::NotFramed {
                    format: "NDJSON",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn json_array_records_and_errors() {
        let recorder = run(BodyFormat::JsonArray, " [{\"a\":1},{\"a\":2}] ").unwrap();
        assert_eq!(recorder.records.len(), 2);
        assert_eq!(recorder.records[1].0, 2);
        assert!(matches!(
            run(BodyFormat::JsonArray, "[{\"a\":1},").unwrap_err(),
            DecodeError::NotFramed { .. }
        ));
        assert!(matches!(
            run(BodyFormat::JsonArray, "{\"a\":1}").unwrap_err(),
            DecodeError::NotFramed { .. }
        ));
    }

    #[test]
    fn long_lines_and_deep_nesting_are_malformed_records() {
        // options(): lines up to 64 bytes, nesting up to 3 levels.
        let long = format!("{{\"a\":\"{}\"}}", "é".repeat(40));
        let body = format!("{long}\n{{\"a\":[[1]]}}\n{{\"a\":[[[1]]]}}\n");
        let recorder = run(BodyFormat::Ndjson, &body).unwrap();
        assert_eq!(
            recorder.records,
            [
                (
                    1,
                    "malformed record is longer than the limit of 64 bytes".to_string()
                ),
                (2, "json {\"a\":[[1]]}".to_string()),
                (
                    3,
                    "malformed invalid JSON: nested deeper than the limit of 3 levels".to_string()
                ),
            ]
        );
        // Only over-long lines: the body is still NDJSON, every record is rejected.
        let recorder = run(BodyFormat::Ndjson, &long).unwrap();
        assert_eq!(recorder.records.len(), 1);
        // A JSON array adds one level.
        assert_eq!(
            run(BodyFormat::JsonArray, "[{\"a\":[[1]]}]")
                .unwrap()
                .records
                .len(),
            1
        );
        assert_eq!(
            run(BodyFormat::JsonArray, "[{\"a\":[[[1]]]}]").unwrap_err(),
            DecodeError::NotFramed {
                format: "a JSON array",
                message: "nested deeper than the limit of 3 levels".to_string()
            }
        );
    }

    #[test]
    fn record_limit_is_enforced() {
        let body = "{}\n".repeat(1001);
        assert_eq!(
            run(BodyFormat::Ndjson, &body).unwrap_err(),
            DecodeError::TooManyRecords { limit: 1000 }
        );
        let body = format!("[{}{{}}]", "{},".repeat(1000));
        assert_eq!(
            run(BodyFormat::JsonArray, &body).unwrap_err(),
            DecodeError::TooManyRecords { limit: 1000 }
        );
    }
}
