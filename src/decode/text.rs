//! CSV (with a header row) and delimited-line framing.

use super::{DecodeError, DecodeOptions, DecodeSummary, RecordVisitor};

/// CSV with a header row (RFC 4180 quoting). A record with a bad field (invalid UTF-8) is
/// malformed; the header row must be readable or the body cannot be framed.
pub(super) fn decode_csv(
    body: &mut [u8],
    options: &DecodeOptions<'_>,
    visitor: &mut impl RecordVisitor,
) -> Result<DecodeSummary, DecodeError> {
    let not_framed = |message: String| DecodeError::NotFramed {
        format: "CSV",
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(&body[..]);
    let header = reader
        .headers()
        .map_err(|err| not_framed(format!("header row: {err}")))?
        .clone();
    if header.is_empty() {
        return Err(not_framed("missing header row".to_string()));
    }
    let names: Vec<&str> = header.iter().map(str::trim).collect();
    visitor.text_header(&names);

    let mut summary = DecodeSummary::default();
    let mut overlong = 0;
    let mut record = csv::ByteRecord::new();
    let mut start = reader.position().byte() as usize;
    loop {
        let more = match reader.read_byte_record(&mut record) {
            Ok(more) => more,
            Err(err) => return Err(not_framed(format!("record {}: {err}", summary.records + 1))),
        };
        if !more {
            break;
        }
        // The record's own bytes, for the quarantine table.
        let end = reader.position().byte() as usize;
        let raw = body[start.min(end)..end].trim_ascii_end();
        start = end;
        summary.records += 1;
        if summary.records > options.max_records {
            return Err(DecodeError::TooManyRecords {
                limit: options.max_records,
            });
        }
        if raw.len() > options.max_line_bytes {
            summary.malformed += 1;
            overlong += 1;
            let reason = super::overlong_reason(options.max_line_bytes);
            visitor.malformed_record(summary.records, &reason, super::overlong_raw(raw));
            continue;
        }
        // One small vector per record: its slices borrow `record`, which the next read reuses.
        let mut fields: Vec<&str> = Vec::with_capacity(names.len());
        let mut bad_field = None;
        for (index, field) in record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(text) => fields.push(text),
                Err(_) => {
                    bad_field = Some(index);
                    break;
                }
            }
        }
        match bad_field {
            Some(index) => {
                summary.malformed += 1;
                visitor.malformed_record(
                    summary.records,
                    &format!("field {} is not valid UTF-8", index + 1),
                    raw,
                );
            }
            None => visitor.text_record(summary.records, &fields, raw),
        }
    }
    super::count_refused_records("line_bytes", overlong);
    Ok(summary)
}

/// One record per line, fields separated by exactly one delimiter byte, in the configured order
/// (Akamai DataStream 2 "structured" format: values are URL-encoded, so they hold no spaces).
pub(super) fn decode_delimited(
    body: &mut [u8],
    options: &DecodeOptions<'_>,
    visitor: &mut impl RecordVisitor,
) -> Result<DecodeSummary, DecodeError> {
    visitor.text_header(options.delimited_fields);
    let mut summary = DecodeSummary::default();
    let mut overlong = 0;
    let mut fields: Vec<&str> = Vec::with_capacity(options.delimited_fields.len());
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
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
        let Ok(text) = std::str::from_utf8(line) else {
            summary.malformed += 1;
            visitor.malformed_record(summary.records, "line is not valid UTF-8", line);
            continue;
        };
        fields.clear();
        fields.extend(text.split(options.delimiter as char));
        visitor.text_record(summary.records, &fields, line);
    }
    super::count_refused_records("line_bytes", overlong);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{Recorder, options};
    use super::super::{BodyFormat, DecodeError, decode};

    fn run(format: BodyFormat, body: &[u8]) -> Result<Recorder, DecodeError> {
        let mut recorder = Recorder::default();
        let mut bytes = body.to_vec();
        decode(format, &mut bytes, &options(), &mut recorder).map(|_| recorder)
    }

    #[test]
    fn csv_header_quotes_and_ragged_rows() {
        let recorder = run(
            BodyFormat::Csv,
            b"a, b,c\n1,\"x, \"\"y\"\"\",3\n4,5\n\n6,\xff,7\n",
        )
        .unwrap();
        assert_eq!(recorder.header, ["a", "b", "c"]);
        assert_eq!(
            recorder.records,
            [
                (1, "text 1|x, \"y\"|3".to_string()),
                (2, "text 4|5".to_string()),
                (3, "malformed field 2 is not valid UTF-8".to_string()),
            ]
        );
    }

    #[test]
    fn over_long_records_are_malformed() {
        // options(): records up to 64 bytes.
        let long = "x".repeat(100);
        let csv = format!("a,b\n1,\"{long}\"\n2,3\n");
        let recorder = run(BodyFormat::Csv, csv.as_bytes()).unwrap();
        assert_eq!(
            recorder.records,
            [
                (
                    1,
                    "malformed record is longer than the limit of 64 bytes".to_string()
                ),
                (2, "text 2|3".to_string()),
            ]
        );
        let lines = format!("{long}\n1 2 3\n");
        let recorder = run(BodyFormat::Delimited, lines.as_bytes()).unwrap();
        assert_eq!(
            recorder.records[0],
            (
                1,
                "malformed record is longer than the limit of 64 bytes".to_string()
            )
        );
        assert_eq!(recorder.records[1], (2, "text 1|2|3".to_string()));
    }

    #[test]
    fn delimited_lines_follow_the_configured_order() {
        let recorder = run(BodyFormat::Delimited, b"1 2 3\r\n\n4 - 6 7\n").unwrap();
        assert_eq!(recorder.header, ["a", "b", "c"]);
        assert_eq!(
            recorder.records,
            [
                (1, "text 1|2|3".to_string()),
                (2, "text 4|-|6|7".to_string())
            ]
        );
    }
}
