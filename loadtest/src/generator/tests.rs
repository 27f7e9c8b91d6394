use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use serde_json::Value;

use super::*;

/// `field` values of the body-sourced columns (no `context`) of a schema file, in order.
fn schema_body_fields(file: &str) -> Vec<String> {
    let path = format!("{}/../schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split("[[columns]]")
        .skip(1)
        .filter(|block| !block.lines().any(|l| l.trim_start().starts_with("context")))
        .map(|block| {
            let line = block
                .lines()
                .find(|l| l.trim_start().starts_with("field ="))
                .expect("body column has a field");
            line.split('"').nth(1).expect("quoted field").to_string()
        })
        .collect()
}

/// RFC 1738 decoding with `+` for space (what sluice's `url_decode` columns do).
fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn access(seed: u64, n: usize) -> Vec<EdgeAccess> {
    Generator::new(seed).edge_access(n)
}

fn events(seed: u64, n: usize) -> Vec<EdgeEvent> {
    Generator::new(seed).edge_events(n)
}

#[test]
fn field_lists_match_the_schemas() {
    assert_eq!(schema_body_fields("edge_access.v1.toml"), ACCESS_FIELDS);
    assert_eq!(schema_body_fields("edge_events.v1.toml"), EVENT_FIELDS);
}

#[test]
fn same_seed_same_bytes() {
    for format in Format::ALL {
        let a = encode_access(&access(7, 500), format);
        let b = encode_access(&access(7, 500), format);
        assert_eq!(a, b, "{format:?}");
        assert_ne!(a, encode_access(&access(8, 500), format), "{format:?}");
        let a = encode_events(&events(7, 300), format);
        assert_eq!(a, encode_events(&events(7, 300), format), "{format:?}");
        assert_ne!(a, encode_events(&events(8, 300), format), "{format:?}");
    }
    // Calls continue the stream: two halves equal one whole.
    let mut g = Generator::new(3);
    let mut halves = g.edge_access(100);
    halves.extend(g.edge_access(100));
    assert_eq!(halves, access(3, 200));
    for enc in Encoding::ALL {
        let body = encode_access(&access(9, 200), Format::Ndjson);
        assert_eq!(compress(&body, enc), compress(&body, enc));
    }
}

#[test]
fn ds2_json_values_are_strings_and_absent_fields_are_omitted() {
    let rows = access(11, 3000);
    for format in [Format::Ndjson, Format::JsonArray] {
        let body = encode_access(&rows, format);
        let records: Vec<Value> = match format {
            Format::Ndjson => std::str::from_utf8(&body)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            _ => serde_json::from_slice(&body).unwrap(),
        };
        assert_eq!(records.len(), rows.len());
        for (row, record) in rows.iter().zip(&records) {
            let object = record.as_object().expect("record is an object");
            let values = row.values();
            for (i, key) in ACCESS_FIELDS.iter().enumerate() {
                match (&values[i], object.get(*key)) {
                    (None, None) => {}
                    (Some(plain), Some(Value::String(sent))) => {
                        assert!(!sent.is_empty() && sent != "-", "{key}: {sent:?}");
                        assert!(!sent.contains(' '), "{key}: {sent:?}");
                        assert_eq!(&url_decode(sent), plain, "{key}");
                    }
                    (plain, sent) => panic!("{key}: typed {plain:?}, sent {sent:?}"),
                }
            }
            assert!(object.keys().all(|k| ACCESS_FIELDS.contains(&k.as_str())));
        }
    }
    // The fixed sample too.
    let mut count = 0;
    for line in ds2_sample_batch().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(
            v.as_object().unwrap().values().all(Value::is_string),
            "{line}"
        );
        count += 1;
    }
    assert_eq!(count, DS2_SAMPLE_RECORDS);
    let moved = ds2_sample_batch_at(1_800_000_000);
    assert_eq!(moved.matches("\"reqTimeSec\":\"180000000").count(), 3);
}

#[test]
fn url_encoding_matches_akamai_samples() {
    assert_eq!(
        url_encode_full("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_3)"),
        "Mozilla%2F5.0+%28Macintosh%3B+Intel+Mac+OS+X+10_14_3%29"
    );
    assert_eq!(
        url_encode_full("https://test.referrer.net/en-US/docs/Web/test"),
        "https%3A%2F%2Ftest.referrer.net%2Fen-US%2Fdocs%2FWeb%2Ftest"
    );
    assert_eq!(
        url_encode_lenient("/path1/path2/file.ext"),
        "/path1/path2/file.ext"
    );
    assert_eq!(url_encode_lenient("text/html"), "text/html");
    assert_eq!(
        url_encode_lenient("/summer sale/café+100%"),
        "/summer+sale/caf%C3%A9%2B100%25"
    );
    assert_eq!(
        url_encode_lenient("text/html; charset=utf-8"),
        "text/html;+charset=utf-8"
    );
}

#[test]
fn delimited_lines_have_exactly_the_column_count() {
    let rows = access(12, 3000);
    let body = String::from_utf8(encode_access(&rows, Format::Delimited)).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), rows.len());
    for (row, line) in rows.iter().zip(&lines) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), ACCESS_FIELDS.len(), "{line}");
        for (field, plain) in fields.iter().zip(row.values()) {
            match plain {
                None => assert_eq!(*field, "-"),
                Some(plain) => {
                    assert!(!field.is_empty() && !field.contains(['\t', '\r']));
                    assert_eq!(url_decode(field), plain);
                }
            }
        }
    }

    let rows = events(12, 2000);
    let body = String::from_utf8(encode_events(&rows, Format::Delimited)).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), rows.len());
    for (row, line) in rows.iter().zip(&lines) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), EVENT_FIELDS.len(), "{line}");
        let tags: Vec<String> = serde_json::from_str(fields[8]).unwrap();
        assert_eq!(tags, row.tags);
        let properties: Value = serde_json::from_str(fields[9]).unwrap();
        assert_eq!(properties, row.properties);
        assert_eq!(fields[4], row.level.as_deref().unwrap_or("-"));
    }
}

#[test]
fn csv_parses_back() {
    let rows = access(13, 2000);
    let body = encode_access(&rows, Format::Csv);
    let mut reader = csv::Reader::from_reader(&body[..]);
    assert_eq!(reader.headers().unwrap(), &ACCESS_FIELDS[..]);
    let mut n = 0;
    for (row, record) in rows.iter().zip(reader.records()) {
        let record = record.unwrap();
        let expected: Vec<String> = row
            .values()
            .iter()
            .map(|v| v.as_deref().unwrap_or("-").to_string())
            .collect();
        assert_eq!(record.iter().collect::<Vec<_>>(), expected);
        n += 1;
    }
    assert_eq!(n, rows.len());

    let rows = events(13, 2000);
    let body = encode_events(&rows, Format::Csv);
    let mut reader = csv::Reader::from_reader(&body[..]);
    assert_eq!(reader.headers().unwrap(), &EVENT_FIELDS[..]);
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), rows.len());
    for (row, record) in rows.iter().zip(&records) {
        assert_eq!(&record[0], row.id);
        let properties: Value = serde_json::from_str(&record[9]).unwrap();
        assert_eq!(properties, row.properties);
        let tags: Vec<String> = serde_json::from_str(&record[8]).unwrap();
        assert_eq!(tags, row.tags);
    }
    // Quoting is exercised: some properties hold commas and quotes.
    assert!(body.windows(2).any(|w| w == b"\"\""));
}

#[test]
fn compression_round_trips() {
    let body = encode_access(&access(14, 1000), Format::Ndjson);
    let gz = compress(&body, Encoding::Gzip);
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    assert!(gz.len() < body.len() / 3);
    let mut back = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, body);
    let zst = compress(&body, Encoding::Zstd);
    assert_eq!(zstd::decode_all(&zst[..]).unwrap(), body);
    assert_eq!(compress(&body, Encoding::Identity), body);
}

#[test]
fn access_distributions_look_like_edge_traffic() {
    let rows = access(15, 20_000);
    let n = rows.len() as f64;
    let share = |f: &dyn Fn(&EdgeAccess) -> bool| rows.iter().filter(|r| f(r)).count() as f64 / n;
    let s200 = share(&|r| r.status_code == 200);
    assert!((0.80..0.90).contains(&s200), "200: {s200}");
    let s404 = share(&|r| r.status_code == 404);
    assert!((0.02..0.04).contains(&s404), "404: {s404}");
    let s5xx = share(&|r| r.status_code >= 500);
    assert!((0.002..0.01).contains(&s5xx), "5xx: {s5xx}");
    assert!(share(&|r| r.req_method == "GET") > 0.85);
    assert!(share(&|r| r.req_method == "HEAD") > 0.0);
    assert!(share(&|r| r.cli_ip.contains(':')) > 0.05);
    assert!(share(&|r| r.ew_id.is_some()) > 0.05);
    assert!(share(&|r| r.tls_version.as_deref() == Some("TLSv1.2")) > 0.1);
    assert!(share(&|r| r.tls_version.as_deref() == Some("TLSv1.3")) > 0.5);
    assert!(share(&|r| r.proto == "HTTP") > 0.01);
    assert!(share(&|r| r.req_path.contains(' ')) > 0.0);
    let mut hosts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *hosts.entry(&r.req_host).or_default() += 1;
    }
    assert!(hosts.len() >= 25, "{} hosts", hosts.len());
    let top = *hosts.values().max().unwrap() as f64 / n;
    assert!((0.1..0.4).contains(&top), "top host share {top}");
    let mut agents: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        if let Some(ua) = &r.ua {
            *agents.entry(ua).or_default() += 1;
        }
    }
    // A long tail, as in real logs (1,055 distinct in these rows), led by current browsers.
    assert!(agents.len() > 500, "{} user agents", agents.len());
    let top = *agents.values().max().unwrap() as f64 / n;
    assert!((0.02..0.15).contains(&top), "top user agent share {top}");
    let ips: HashSet<&str> = rows.iter().map(|r| r.cli_ip.as_str()).collect();
    assert!(ips.len() > 2_000 && ips.len() < rows.len());
    for r in &rows {
        r.cli_ip.parse::<std::net::IpAddr>().unwrap();
        assert!(r.req_path.starts_with('/'));
        let segments = r.req_path.split('/').count() - 1;
        assert!((1..=4).contains(&segments), "{}", r.req_path);
        assert!(r.req_time_sec >= DEFAULT_START_UNIX && r.req_time_sec < DEFAULT_START_UNIX + 3600);
        assert!(r.country.as_ref().is_none_or(|c| c.len() == 2));
        assert!(r.req_id.len() == 16 && r.req_id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    let ids: HashSet<&str> = rows.iter().map(|r| r.req_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len());
}

#[test]
fn events_have_the_documented_shape() {
    let rows = events(16, 5000);
    let body = encode_events(&rows, Format::Ndjson);
    let mut numeric_ts = 0;
    let mut text_ts = 0;
    let mut extras = 0;
    let mut ids = HashSet::new();
    for (row, line) in rows.iter().zip(std::str::from_utf8(&body).unwrap().lines()) {
        let v: Value = serde_json::from_str(line).unwrap();
        let o = v.as_object().unwrap();
        let id = o["id"].as_str().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert!(ids.insert(id.to_string()));
        match &o["ts"] {
            Value::Number(n) => {
                assert_eq!(n.as_u64(), Some(row.ts_ms));
                numeric_ts += 1;
            }
            Value::String(s) => {
                assert_eq!(s, &rfc3339_millis(row.ts_ms));
                text_ts += 1;
            }
            other => panic!("ts {other}"),
        }
        let name = o["event"].as_str().unwrap();
        let mut chars = name.chars();
        assert!(chars.next().unwrap().is_ascii_lowercase());
        assert!(
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        );
        assert!(o["properties"].is_object());
        assert!(o["tags"].as_array().unwrap().iter().all(Value::is_string));
        if let Some(d) = o.get("duration_ms") {
            assert!(d.as_f64().unwrap() >= 0.0);
        }
        if let Some(level) = o.get("level") {
            assert!(["debug", "info", "warn", "error"].contains(&level.as_str().unwrap()));
        }
        if o.keys().any(|k| !EVENT_FIELDS.contains(&k.as_str())) {
            extras += 1;
        }
    }
    assert!(
        numeric_ts > 1000 && text_ts > 1000,
        "{numeric_ts} {text_ts}"
    );
    assert!(extras > 100, "{extras}");
    assert!(rows.iter().any(|r| r.level.is_none()));
    assert!(rows.iter().any(|r| r.host.is_none()));
    assert!(rows.iter().any(|r| r.duration_ms.is_none()));

    let array: Vec<Value> =
        serde_json::from_slice(&encode_events(&rows, Format::JsonArray)).unwrap();
    assert_eq!(array.len(), rows.len());
}

#[test]
fn rfc3339_formatting() {
    assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        rfc3339_millis(DEFAULT_START_UNIX * 1000 + 7),
        "2026-01-01T00:00:00.007Z"
    );
    assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    assert_eq!(
        rfc3339_millis(1_573_840_000_123),
        "2019-11-15T17:46:40.123Z"
    );
}

#[test]
fn formats_and_encodings_parse() {
    for f in Format::ALL {
        assert_eq!(f.as_str().parse::<Format>().unwrap(), f);
    }
    for e in Encoding::ALL {
        assert_eq!(e.content_encoding().parse::<Encoding>().unwrap(), e);
    }
    assert!("xml".parse::<Format>().is_err());
}
