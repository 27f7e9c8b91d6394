use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, Int16Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ListArray};

use super::*;
use crate::decode::{self, BodyFormat, DecodeOptions};
use crate::schema::SchemaSet;

fn schemas() -> SchemaSet {
    SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

fn compiled(stream: &str, options: &StreamOptions) -> CompiledSchema {
    let set = schemas();
    let schema = set
        .versions(stream)
        .unwrap()
        .values()
        .next_back()
        .unwrap()
        .clone();
    CompiledSchema::new(schema, options).unwrap()
}

fn context() -> RequestContext {
    RequestContext {
        principal: "edge-a".into(),
        origin: "worker-1".into(),
        region: "eu-west".into(),
        batch_id: "b-1".into(),
        request_id: "r-1".into(),
        received_at: 1_700_000_000,
        url_encoded: true,
    }
}

fn validate(compiled: &CompiledSchema, format: BodyFormat, body: &str) -> ValidatedBatch {
    let context = context();
    let mut builder = compiled.begin(&context, 100);
    let fields = compiled.delimited_fields();
    let options = DecodeOptions {
        delimiter: compiled.delimiter(),
        delimited_fields: &fields,
        max_records: 10_000,
        max_line_bytes: usize::MAX,
        max_nesting_depth: 64,
    };
    let mut bytes = body.as_bytes().to_vec();
    decode::decode(format, &mut bytes, &options, &mut builder).unwrap();
    builder.finish()
}

fn column<'a>(batch: &'a ValidatedBatch, name: &str) -> &'a dyn Array {
    batch.batch.column_by_name(name).unwrap().as_ref()
}

/// A text column's values, whether Utf8 or (a request-context column) a dictionary.
fn strings(batch: &ValidatedBatch, name: &str) -> Vec<Option<String>> {
    let array = column(batch, name);
    let texts = crate::encode::native::Texts::of(array);
    (0..array.len())
        .map(|row| (!array.is_null(row)).then(|| texts.value(row).to_string()))
        .collect()
}

/// Akamai's documented DataStream 2 JSON sample shape: every value a string, absent fields left
/// out, text URL-encoded.
const DS2_BATCH: &str = r#"{"version":"1","cp":"123456","reqId":"1239f220","reqTimeSec":"1573840000","bytes":"4995","cliIP":"128.147.28.68","statusCode":"206","proto":"HTTPS","reqHost":"test.hostname.net","reqMethod":"GET","reqPath":"%2Fpath1%2Fpath2%2Ffile.ext","reqPort":"443","rspContentLen":"5000","rspContentType":"text%2Fhtml","UA":"Mozilla%2F5.0+%28Macintosh%3B+Intel+Mac+OS+X+10_14_3%29","tlsOverheadTimeMSec":"0","tlsVersion":"TLSv1","objSize":"484","uncompressedSize":"484","overheadBytes":"232","totalBytes":"0","queryStr":"param=value","accLang":"en-US","cookie":"cookie-content","range":"37334-42356","referer":"https%3A%2F%2Ftest.referrer.net%2Fen-US%2Fdocs%2FWeb%2Ftest","xForwardedFor":"8.47.28.38","maxAgeSec":"3600","reqEndTimeMSec":"3","errorCode":"ERR_ACCESS_DENIED|fwd_acl","turnAroundTimeMSec":"11","transferTimeMSec":"125","dnsLookupTimeMSec":"50","cacheStatus":"1","country":"US","city":"HERNDON","streamId":"12345"}
{"version":"1","cp":"123456","reqId":"1239f221","reqTimeSec":"1573840001","cliIP":"2001:db8::1","statusCode":"404","reqHost":"test.hostname.net","reqMethod":"HEAD","reqPath":"%2Fmissing","cacheStatus":"0","streamId":"12345"}
"#;

#[test]
fn a_datastream2_batch_is_accepted_with_every_value_decoded() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let batch = validate(&compiled, BodyFormat::Ndjson, DS2_BATCH);
    assert_eq!(batch.errors, []);
    assert_eq!((batch.accepted, batch.rejected), (2, 0));
    assert_eq!(
        strings(&batch, "path")[0].as_deref(),
        Some("/path1/path2/file.ext")
    );
    assert_eq!(
        strings(&batch, "user_agent")[0].as_deref(),
        Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_3)")
    );
    assert_eq!(
        strings(&batch, "referer"),
        [
            Some("https://test.referrer.net/en-US/docs/Web/test".to_string()),
            None
        ]
    );
    assert_eq!(
        strings(&batch, "content_type")[0].as_deref(),
        Some("text/html")
    );
    let status: Vec<u16> = column(&batch, "status")
        .as_primitive::<UInt16Type>()
        .values()
        .to_vec();
    assert_eq!(status, [206, 404]);
    let time = column(&batch, "time")
        .as_primitive::<UInt32Type>()
        .values()
        .to_vec();
    assert_eq!(time, [1_573_840_000, 1_573_840_001]);
    // turnAroundTimeMSec is an alias of ttfb_ms; the second record has neither → NULL.
    let ttfb = column(&batch, "ttfb_ms").as_primitive::<UInt32Type>();
    assert_eq!((ttfb.value(0), ttfb.is_null(1)), (11, true));
    let bytes = column(&batch, "bytes").as_primitive::<UInt64Type>();
    assert_eq!(
        (bytes.value(0), bytes.value(1)),
        (4995, 0),
        "absent non-nullable → 0"
    );
    let method = column(&batch, "method").as_primitive::<Int8Type>();
    assert_eq!((method.value(0), method.value(1)), (1, 2));
    assert_eq!(
        column(&batch, "cache_status")
            .as_primitive::<UInt8Type>()
            .value(0),
        1
    );
    assert_eq!(strings(&batch, "region")[1].as_deref(), Some("eu-west"));
    assert_eq!(strings(&batch, "_principal")[0].as_deref(), Some("edge-a"));
    // Context columns are built once per request: every row holds the request's values, as a
    // dictionary of that one value.
    for (name, value) in [
        ("_principal", "edge-a"),
        ("_origin", "worker-1"),
        ("region", "eu-west"),
        ("_batch_id", "b-1"),
        ("_request_id", "r-1"),
    ] {
        assert_eq!(
            strings(&batch, name),
            vec![Some(value.to_string()); 2],
            "{name}"
        );
        let dictionary = column(&batch, name).as_dictionary::<Int16Type>();
        assert_eq!(dictionary.values().len(), 1, "{name}");
    }
    assert_eq!(
        column(&batch, "_received_at")
            .as_primitive::<UInt32Type>()
            .value(0),
        1_700_000_000
    );
}

#[test]
fn bad_rows_are_reported_with_line_field_and_reason() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let good = r#"{"reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/"}"#;
    let body = [
        good.to_string(),
        good.replace("\"200\"", "\"abc\""),
        good.replace("\"GET\"", "\"BREW\""),
        "{not json".to_string(),
        good.replace(",\"reqHost\":\"h\"", ""),
        good.replace("\"200\"", "\"700\""),
        good.replace("1.2.3.4", "1.2.3"),
        "[1,2]".to_string(),
        good.replace("\"200\"", "\"70000\""),
        good.replace(
            "\"reqTimeSec\":\"1573840000\"",
            "\"reqTimeSec\":\"yesterday\"",
        ),
        good.replace("{", "{\"statusCode\":\"201\","),
    ]
    .join("\n");
    let batch = validate(&compiled, BodyFormat::Ndjson, &body);
    assert_eq!((batch.accepted, batch.rejected), (1, 10));
    let errors: Vec<(usize, Option<&str>, &str)> = batch
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_deref(), e.reason.as_str()))
        .collect();
    assert_eq!(
        errors[0],
        (2, Some("statusCode"), "expected UInt16, got \"abc\"")
    );
    assert_eq!(
        errors[1],
        (
            3,
            Some("reqMethod"),
            "\"BREW\" is not one of GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, CONNECT, TRACE"
        )
    );
    assert_eq!(errors[2].0, 4);
    assert!(errors[2].2.starts_with("invalid JSON"), "{:?}", errors[2]);
    assert_eq!(errors[3], (5, Some("reqHost"), "missing required field"));
    assert_eq!(
        errors[4],
        (6, Some("statusCode"), "value 700 is above the maximum 599")
    );
    assert_eq!(
        errors[5],
        (7, Some("cliIP"), "\"1.2.3\" is not an IP address")
    );
    assert_eq!(errors[6], (8, None, "record is not a JSON object"));
    assert_eq!(
        errors[7],
        (9, Some("statusCode"), "value 70000 out of range for UInt16")
    );
    assert_eq!(
        errors[8],
        (
            10,
            Some("reqTimeSec"),
            "expected DateTime (unix time or RFC 3339), got \"yesterday\""
        )
    );
    assert_eq!(
        errors[9],
        (11, Some("statusCode"), "field appears more than once")
    );
    // Counted per reason class for the metrics: malformed, missing_field, type, constraint,
    // unknown_field.
    let by_reason: Vec<(&str, usize)> = RejectReason::ALL
        .iter()
        .map(|r| r.as_str())
        .zip(batch.rejected_by_reason)
        .collect();
    assert_eq!(
        by_reason,
        [
            ("malformed", 2),
            ("missing_field", 1),
            ("type", 3),
            ("constraint", 3),
            ("unknown_field", 1)
        ]
    );
}

#[test]
fn delimited_lines_use_the_schema_order_or_the_configured_one() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    // Akamai's documented STRUCTURED sample, completed to the schema's field count with "-".
    let line = "1 12345 123456 1239f220 1573840000 4995 128.147.28.68 206 HTTPS test.hostname.net GET /path1/path2/file.ext 443 5000 text/html Mozilla%2F5.0+%28Macintosh%3B+Intel+Mac+OS+X+10_14_3%29 0 TLSv1 - 1 - US - -";
    let batch = validate(
        &compiled,
        BodyFormat::Delimited,
        &format!("{line}\n{line}\n"),
    );
    assert_eq!(batch.errors, []);
    assert_eq!(batch.accepted, 2);
    assert_eq!(
        strings(&batch, "host")[0].as_deref(),
        Some("test.hostname.net")
    );
    assert_eq!(
        strings(&batch, "user_agent")[0].as_deref(),
        Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_14_3)")
    );

    let options = StreamOptions {
        delimited_fields: Some(
            [
                "reqTimeSec",
                "reqId",
                "_",
                "cliIP",
                "statusCode",
                "reqHost",
                "reqMethod",
                "reqPath",
            ]
            .map(String::from)
            .to_vec(),
        ),
        ..Default::default()
    };
    let compiled = super::CompiledSchema::new(compiled.schema.clone(), &options).unwrap();
    let batch = validate(
        &compiled,
        BodyFormat::Delimited,
        "1573840000 r1 ignored 10.0.0.1 200 h GET /a\n1573840000 r2 x 10.0.0.1 200 h GET\n",
    );
    assert_eq!(batch.accepted, 1);
    assert_eq!(batch.errors[0].reason, "expected 8 fields, got 7");
    assert_eq!(strings(&batch, "request_id")[0].as_deref(), Some("r1"));

    let bad = StreamOptions {
        delimited_fields: Some(vec!["nope".into()]),
        ..Default::default()
    };
    let err = super::CompiledSchema::new(compiled.schema.clone(), &bad).unwrap_err();
    assert!(
        err.starts_with("delimited_fields: \"nope\" is not a field"),
        "{err}"
    );
}

#[test]
fn csv_header_names_may_be_fields_aliases_or_column_names() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let body = "request_id,time,client_ip,status,host,method,path,country\nr1,2019-11-15T17:46:40Z,10.0.0.1,200,h,POST,\"/a,b\",DE\nr2,1573840000123,10.0.0.2,,h,GET,/,\n";
    let batch = validate(&compiled, BodyFormat::Csv, body);
    assert_eq!(batch.accepted, 1, "{:?}", batch.errors);
    assert_eq!(batch.errors[0].line, 2);
    assert_eq!(
        batch.errors[0].field.as_deref(),
        Some("statusCode"),
        "the primary field name"
    );
    assert_eq!(batch.errors[0].reason, "missing required field");
    assert_eq!(strings(&batch, "path")[0].as_deref(), Some("/a,b"));
    assert_eq!(
        column(&batch, "time").as_primitive::<UInt32Type>().value(0),
        1_573_840_000
    );
}

#[test]
fn events_keep_unknown_fields_lists_uuids_and_json_properties() {
    let compiled = compiled("edge_events", &StreamOptions::default());
    let body = r#"[{"id":"61f0c404-5cb3-11e7-907b-a6006ad3dba0","ts":1573840000123,"worker":"w1","event":"cold_start","tags":["a","b"],"properties":{"k":[1,2],"s":"x"},"surprise":"yes","level":"warn"},
      {"id":"61f0c404-5cb3-11e7-907b-a6006ad3dba0","ts":"2019-11-15T17:46:40.5+01:00","worker":"w1","event":"Bad Name"},
      {"id":"not-a-uuid","ts":1,"worker":"w","event":"e"},
      {"id":"61f0c404-5cb3-11e7-907b-a6006ad3dba0","ts":1573840000,"worker":"w1","event":"ok","tags":"x, y","duration_ms":"-1"}]"#;
    let batch = validate(&compiled, BodyFormat::JsonArray, body);
    let reasons: Vec<_> = batch
        .errors
        .iter()
        .map(|e| (e.line, e.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (2, "\"Bad Name\" does not match ^[a-z][a-z0-9_.]*$"),
            (3, "expected UUID, got \"not-a-uuid\""),
            (4, "value -1 is below the minimum 0"),
        ]
    );
    assert_eq!(batch.accepted, 1);
    assert_eq!(
        strings(&batch, "_extra")[0].as_deref(),
        Some(r#"{"surprise":"yes"}"#)
    );
    assert_eq!(
        strings(&batch, "properties")[0].as_deref(),
        Some(r#"{"k":[1,2],"s":"x"}"#)
    );
    assert_eq!(
        column(&batch, "level").as_primitive::<Int8Type>().value(0),
        3
    );
    assert_eq!(
        column(&batch, "time").as_primitive::<UInt32Type>().value(0),
        1_573_840_000
    );
    let tags = column(&batch, "tags")
        .as_any()
        .downcast_ref::<ListArray>()
        .unwrap();
    assert_eq!(
        tags.value(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    let uuid = column(&batch, "event_id")
        .as_fixed_size_binary()
        .value(0)
        .to_vec();
    assert_eq!(
        uuid,
        uuid::Uuid::parse_str("61f0c404-5cb3-11e7-907b-a6006ad3dba0")
            .unwrap()
            .as_bytes()
    );
}

#[test]
fn a_repeated_field_is_refused_in_a_record_of_any_size() {
    // simd-json's DOM kept repeated keys up to 32 keys and silently dropped all but the last
    // beyond; the tape keeps every key, so both records are refused alike.
    let compiled = compiled("edge_access", &StreamOptions::default());
    let good = r#""reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/""#;
    let filler: String = (0..40).map(|i| format!(",\"x{i}\":{i}")).collect();
    let body = format!(
        "{{{good},\"statusCode\":\"201\"}}\n{{{good}{filler},\"statusCode\":\"201\"}}\n{{{good}{filler}}}"
    );
    let batch = validate(&compiled, BodyFormat::Ndjson, &body);
    assert_eq!((batch.accepted, batch.rejected), (1, 2));
    for (error, line) in batch.errors.iter().zip([1, 2]) {
        assert_eq!(error.line, line);
        assert_eq!(error.field.as_deref(), Some("statusCode"));
        assert_eq!(error.reason, "field appears more than once");
    }
}

#[test]
fn fields_are_matched_by_name_whatever_their_order() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let body = [
        r#"{"reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h1","reqMethod":"GET","reqPath":"/a"}"#,
        r#"{"reqPath":"/b","x":1,"reqHost":"h2","reqMethod":"GET","statusCode":"404","cliIP":"1.2.3.4","reqTimeSec":"1573840001","reqId":"b"}"#,
        r#"{"reqId":"c","reqTimeSec":"1573840002","cliIP":"1.2.3.4","statusCode":"500","reqHost":"h3","reqMethod":"GET","reqPath":"/c"}"#,
    ]
    .join("\n");
    let batch = validate(&compiled, BodyFormat::Ndjson, &body);
    assert_eq!((batch.accepted, batch.rejected), (3, 0));
    let some = |v: &[&str]| v.iter().map(|s| Some(s.to_string())).collect::<Vec<_>>();
    assert_eq!(strings(&batch, "host"), some(&["h1", "h2", "h3"]));
    assert_eq!(strings(&batch, "path"), some(&["/a", "/b", "/c"]));
    assert_eq!(
        column(&batch, "status")
            .as_primitive::<UInt16Type>()
            .values()
            .to_vec(),
        [200, 404, 500]
    );
}

#[test]
fn unknown_fields_can_be_rejected() {
    let options = StreamOptions {
        unknown_fields: Some(UnknownFields::Reject),
        ..Default::default()
    };
    let compiled = compiled("edge_access", &options);
    let batch = validate(
        &compiled,
        BodyFormat::Ndjson,
        r#"{"reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/","mystery":"1"}"#,
    );
    assert_eq!(batch.errors[0].field.as_deref(), Some("mystery"));
    assert_eq!(batch.errors[0].reason, "unknown field");
}

#[test]
fn url_decoding_matches_percent_encoding() {
    for text in [
        "a+b%20c",
        "%2B+%2b",
        "100%",
        "%zz%4",
        "%e2%82%ac+x",
        "plain",
        "+%",
        "%%41",
        "",
    ] {
        let expected: Vec<u8> = text
            .split('+')
            .map(|part| percent_encoding::percent_decode_str(part).collect::<Vec<u8>>())
            .collect::<Vec<_>>()
            .join(&b' ');
        let mut decoded = Vec::new();
        super::coerce::url_decode_into(text.as_bytes(), &mut decoded);
        assert_eq!(decoded, expected, "{text:?}");
    }
}

#[test]
fn url_decoded_text_must_be_utf8() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let row = |path: &str| {
        format!(
            r#"{{"reqId":"a","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"{path}"}}"#
        )
    };
    let body = [row("/caf%C3%A9+%2F"), row("/a%FFb"), row("/%E2%82")].join("\n");
    let batch = validate(&compiled, BodyFormat::Ndjson, &body);
    assert_eq!((batch.accepted, batch.rejected), (1, 2));
    assert_eq!(strings(&batch, "path"), [Some("/café /".to_string())]);
    let errors: Vec<(usize, Option<&str>, &str)> = batch
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_deref(), e.reason.as_str()))
        .collect();
    let invalid = "value is not valid UTF-8 after URL decoding";
    assert_eq!(
        errors,
        [(2, Some("reqPath"), invalid), (3, Some("reqPath"), invalid)]
    );
}

#[test]
fn rows_that_fail_after_good_fields_leave_no_trace_in_any_column() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let row = |id: &str, status: &str, path: &str, extra: &str| {
        format!(
            r#"{{"reqId":"{id}","reqTimeSec":"1573840000","cliIP":"1.2.3.4","statusCode":"{status}","reqHost":"h","reqMethod":"GET","reqPath":"{path}"{extra}}}"#
        )
    };
    let body = [
        row("a", "200", "/a", ""),
        // Fails on its fourth field, after three values went into their columns.
        row("b", "abc", "/b", ""),
        row("c", "201", "/c", r#","timeToFirstByte":"7""#),
        // Fails at the end of the row: a required field is missing, defaults already appended.
        row("d", "202", "/d", "").replace(r#","reqHost":"h""#, ""),
        // Fails on a repeated field, its last.
        row("e", "203", "/e", r#","reqId":"again""#),
        row("f", "204", "/f%20x", r#","asn":"64500""#),
    ]
    .join("\n");
    let batch = validate(&compiled, BodyFormat::Ndjson, &body);
    assert_eq!((batch.accepted, batch.rejected), (3, 3));
    assert_eq!(batch.batch.num_rows(), 3);
    let ids: Vec<Option<String>> = strings(&batch, "request_id");
    assert_eq!(ids, [Some("a".into()), Some("c".into()), Some("f".into())]);
    let statuses: Vec<u16> = column(&batch, "status")
        .as_primitive::<UInt16Type>()
        .values()
        .to_vec();
    assert_eq!(statuses, [200, 201, 204]);
    assert_eq!(
        strings(&batch, "path"),
        [Some("/a".into()), Some("/c".into()), Some("/f x".into())]
    );
    let ttfb = column(&batch, "ttfb_ms").as_primitive::<UInt32Type>();
    assert_eq!(ttfb.iter().collect::<Vec<_>>(), [None, Some(7), None]);
    let asn = column(&batch, "asn").as_primitive::<UInt32Type>();
    assert_eq!(asn.iter().collect::<Vec<_>>(), [None, None, Some(64500)]);
    let errors: Vec<(usize, Option<&str>)> = batch
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_deref()))
        .collect();
    assert_eq!(
        errors,
        [
            (2, Some("statusCode")),
            (4, Some("reqHost")),
            (5, Some("reqId"))
        ]
    );
}

#[test]
fn field_names_are_found_in_the_index_as_they_were_stored() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    assert!(compiled.field_index.len() > 24);
    for (name, &index) in &compiled.field_index {
        assert_eq!(
            compiled.field_index.get(&crate::text::ShortStr(name)),
            Some(&index),
            "{name}"
        );
        let mut other = name.clone();
        other.push('x');
        assert_eq!(
            compiled.field_index.get(&crate::text::ShortStr(&other)),
            None,
            "{other}"
        );
    }
}

/// Records that leave fields out, add unknown ones and change their order, in every mix: each
/// value still lands in its own column (the field list learned from earlier records is a
/// shortcut only), also after more distinct names than the list keeps.
#[test]
fn fields_left_out_added_or_moved_keep_their_columns() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let mut state = 7u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for row in 0..400u64 {
        let mut fields = vec![
            format!(r#""reqId":"r{row}""#),
            r#""reqTimeSec":"1573840000""#.to_string(),
            r#""cliIP":"1.2.3.4""#.to_string(),
            format!(r#""statusCode":"{}""#, 200 + row % 300),
            format!(r#""reqHost":"h{row}""#),
            r#""reqMethod":"GET""#.to_string(),
            format!(r#""reqPath":"/p{row}""#),
        ];
        let bytes = (next(3) != 0).then(|| row * 10);
        if let Some(bytes) = bytes {
            fields.insert(
                next(fields.len() as u64 + 1) as usize,
                format!(r#""bytes":"{bytes}""#),
            );
        }
        let country = (next(2) == 0).then_some(if row % 2 == 0 { "DE" } else { "FR" });
        if let Some(country) = country {
            fields.push(format!(r#""country":"{country}""#));
        }
        // Unknown fields: a few names that recur, and from row 200 a new name in every record.
        for _ in 0..next(3) {
            let name = if row >= 200 {
                format!("new{row}")
            } else {
                format!("x{}", next(4))
            };
            if !fields.iter().any(|f| f.starts_with(&format!("\"{name}\""))) {
                fields.insert(next(fields.len() as u64) as usize, format!(r#""{name}":1"#));
            }
        }
        if next(4) == 0 {
            let n = fields.len() as u64;
            let (a, b) = (next(n) as usize, next(n) as usize);
            fields.swap(a, b);
        }
        lines.push(format!("{{{}}}", fields.join(",")));
        expected.push((
            format!("h{row}"),
            format!("/p{row}"),
            200 + row % 300,
            bytes,
            country,
        ));
    }
    let batch = validate(&compiled, BodyFormat::Ndjson, &lines.join("\n"));
    assert_eq!((batch.accepted, batch.rejected), (400, 0));
    let hosts = strings(&batch, "host");
    let paths = strings(&batch, "path");
    let countries = strings(&batch, "country");
    let status = column(&batch, "status").as_primitive::<UInt16Type>();
    let bytes = column(&batch, "bytes").as_primitive::<UInt64Type>();
    for (row, (host, path, code, sent_bytes, country)) in expected.into_iter().enumerate() {
        assert_eq!(hosts[row].as_deref(), Some(host.as_str()), "row {row}");
        assert_eq!(paths[row].as_deref(), Some(path.as_str()), "row {row}");
        assert_eq!(status.value(row) as u64, code, "row {row}");
        assert_eq!(bytes.value(row), sent_bytes.unwrap_or(0), "row {row}");
        assert_eq!(
            countries[row].as_deref(),
            Some(country.unwrap_or("")),
            "row {row}"
        );
    }
}

/// The builders of a body are sized by counting its lines the first time, then from the last
/// body's bytes per record, without a pass over the body.
#[test]
fn builders_are_sized_from_the_last_body() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    assert_eq!(compiled.expected_rows(b"{}\n{}\n{}", BodyFormat::Ndjson), 3);
    assert_eq!(compiled.expected_rows(b"[{},{}]", BodyFormat::JsonArray), 0);
    compiled.note_body(50_000, 100);
    assert_eq!(
        compiled.expected_rows(&[b'\n'; 100_000], BodyFormat::Ndjson),
        226
    );
    assert_eq!(
        compiled.expected_rows(&[b'x'; 10], BodyFormat::JsonArray),
        1
    );
    // A body without records leaves the figure as it was.
    compiled.note_body(1_000, 0);
    assert_eq!(
        compiled.expected_rows(&[b'x'; 100_000], BodyFormat::Ndjson),
        226
    );
}

/// A body of `lines` DataStream 2 records with a bad one every `bad_every` lines (a wrong
/// type, a missing field, a line that is not JSON, in turn), blank lines between some.
fn mixed_body(lines: usize, bad_every: usize) -> Vec<u8> {
    let good = DS2_BATCH.lines().next().unwrap();
    let mut body = String::new();
    for n in 1..=lines {
        let record = good.replace("1239f220", &format!("req-{n}"));
        let record = match (n % bad_every == 0).then_some(n / bad_every % 3) {
            None => record,
            Some(0) => record.replace("\"206\"", "\"abc\""),
            Some(1) => record.replace(",\"reqHost\":\"test.hostname.net\"", ""),
            Some(_) => format!("{{not json {n}"),
        };
        body.push_str(&record);
        body.push('\n');
        if n % 97 == 0 {
            body.push_str("  \n");
        }
    }
    body.into_bytes()
}

fn validate_whole(
    compiled: &CompiledSchema,
    body: &[u8],
    limits: BodyLimits,
    part_bytes: usize,
) -> Result<ValidatedBatch, decode::DecodeError> {
    let how = Validation {
        digest: false,
        part_bytes,
    };
    validate_body(
        compiled,
        context(),
        body,
        decode::ContentEncoding::Identity,
        Some("application/x-ndjson"),
        limits,
        how,
    )
    .map(|validated| validated.expect("not a probe").0)
}

fn limits(max_records: usize, max_errors: usize) -> BodyLimits {
    BodyLimits {
        max_decompressed_bytes: usize::MAX,
        max_records,
        max_errors,
        max_line_bytes: 1 << 20,
        max_nesting_depth: 64,
    }
}

#[test]
fn a_body_validated_in_parts_is_answered_as_in_one_go() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let body = mixed_body(3_000, 7);
    let limits = limits(10_000, 1_000);
    let whole = validate_whole(&compiled, &body, limits, 0).unwrap();
    // In parts wherever there are two CPUs or more (3 parts asked for).
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(parts_of(body.len(), body.len() / 3), cpus.min(3));
    let parts = validate_whole(&compiled, &body, limits, body.len() / 3).unwrap();
    assert_eq!((whole.accepted, whole.rejected), (2_572, 428));
    assert_eq!(
        (parts.accepted, parts.rejected),
        (whole.accepted, whole.rejected)
    );
    assert_eq!(parts.rejected_by_reason, whole.rejected_by_reason);
    assert_eq!(parts.errors, whole.errors);
    assert_eq!(parts.errors.last().unwrap().line, 2_996);
    assert_eq!(parts.batch, whole.batch);
    assert_eq!(parts.quarantine, whole.quarantine);
    assert_eq!(parts.decoded_bytes, body.len());
    // The rows keep the body's order across the cut.
    let ids = strings(&parts, "request_id");
    assert_eq!(ids[0].as_deref(), Some("req-1"));
    assert_eq!(ids[2_571].as_deref(), Some("req-3000"));
}

/// A small body is answered where it arrives, as on a blocking thread; one that is larger as
/// received or once inflated is left to [`validate_body`], unless it is over the real limit
/// anyway, which is then the answer.
#[test]
fn a_small_body_is_answered_as_a_blocking_thread_would_and_a_larger_one_is_left_to_it() {
    use std::io::Write;
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let compiled = compiled("edge_access", &StreamOptions::default());
    let how = Validation {
        digest: true,
        part_bytes: 1 << 10,
    };
    let small = |body: &[u8], limits: BodyLimits, max_bytes: usize| {
        let encoding = decode::ContentEncoding::Gzip;
        let ndjson = Some("application/x-ndjson");
        validate_small_body(
            &compiled,
            &context(),
            body,
            encoding,
            ndjson,
            limits,
            how,
            max_bytes,
        )
    };
    let plain = mixed_body(200, 7);
    let body = gzip(&plain);
    assert!(body.len() < 16 << 10 && plain.len() > 64 << 10);
    let roomy = limits(10_000, 100);

    // Within the bound both ways: validate_body's answer, on this thread alone (no parts).
    let (here, digest) = small(&body, roomy, plain.len()).unwrap().unwrap().unwrap();
    let whole = validate_whole(&compiled, &plain, roomy, 0).unwrap();
    assert_eq!((here.accepted, here.rejected), (172, 28));
    assert_eq!(here.errors, whole.errors);
    assert_eq!(here.batch, whole.batch);
    assert_eq!(here.quarantine, whole.quarantine);
    assert_eq!(digest, Some(crate::dedup::digest(&plain)));

    // Inflated past the bound, over it as received, or more records than a small body holds:
    // left to a blocking thread.
    assert!(small(&body, roomy, plain.len() - 1).is_none());
    assert!(small(&body, roomy, body.len() - 1).is_none());
    // Past the bound by its trailer alone: a forged one (this body would be refused for it).
    let mut forged = body.clone();
    let at = forged.len() - 4;
    forged[at..].copy_from_slice(&((plain.len() as u32) * 2).to_le_bytes());
    assert!(small(&forged, roomy, plain.len()).is_none());
    // A trailer that says less (the last of two members): the bound still holds.
    let mut members = gzip(&plain[..plain.len() - 100]);
    members.extend(gzip(&plain[plain.len() - 100..]));
    assert!(small(&members, roomy, plain.len() - 1).is_none());
    let (whole_again, _) = small(&members, roomy, plain.len())
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(whole_again.batch, here.batch);
    let many = gzip("{}\n".repeat(SMALL_BODY_RECORDS + 1).as_bytes());
    assert!(small(&many, roomy, 64 << 10).is_none());
    let few = gzip("{}\n".repeat(SMALL_BODY_RECORDS).as_bytes());
    let (few, _) = small(&few, roomy, 64 << 10).unwrap().unwrap().unwrap();
    assert_eq!((few.accepted, few.rejected), (0, SMALL_BODY_RECORDS));

    // Over the real limit, which is within the bound: refused here, naming that limit.
    let tight = BodyLimits {
        max_decompressed_bytes: plain.len() - 1,
        ..roomy
    };
    let refused = small(&body, tight, plain.len() + 1).unwrap().unwrap_err();
    assert_eq!(
        refused.to_string(),
        format!(
            "decompressed body exceeds the limit of {} bytes",
            plain.len() - 1
        )
    );
    let refused = small(&body, limits(199, 100), plain.len())
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "batch has more than the limit of 199 records"
    );
}

#[test]
fn the_errors_listed_are_the_first_ones_of_the_whole_body() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let body = mixed_body(2_000, 5);
    let limits = limits(10_000, 3);
    let parts = validate_whole(&compiled, &body, limits, 1 << 10).unwrap();
    let lines: Vec<usize> = parts.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [5, 10, 15]);
    assert_eq!(parts.rejected, 400);
}

#[test]
fn a_body_over_the_record_limit_is_refused_in_parts_as_in_one_go() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let body = mixed_body(2_000, 5);
    for max_records in [1_500, 900] {
        let limits = limits(max_records, 10);
        let whole = validate_whole(&compiled, &body, limits, 0).unwrap_err();
        let parts = validate_whole(&compiled, &body, limits, 1 << 10).unwrap_err();
        assert_eq!(parts.to_string(), whole.to_string());
        assert!(
            matches!(parts, decode::DecodeError::TooManyRecords { limit } if limit == max_records)
        );
    }
}

#[test]
fn a_part_without_json_is_a_part_of_malformed_records() {
    let compiled = compiled("edge_access", &StreamOptions::default());
    let limits = limits(10_000, 10);
    // The second half is not JSON at all: one go rejects those lines, it does not refuse the body.
    let mut body = mixed_body(500, 1_000);
    let half = body.len();
    // Longer lines than the JSON ones: the cut in the middle falls among them.
    let width = half / 500 + 20;
    for n in 0..500 {
        body.extend_from_slice(format!("not json at all {n:0>width$}\n").as_bytes());
    }
    let whole = validate_whole(&compiled, &body, limits, 0).unwrap();
    let parts = validate_whole(&compiled, &body, limits, half / 2).unwrap();
    assert_eq!((parts.accepted, parts.rejected), (500, 500));
    assert_eq!(parts.errors, whole.errors);
    assert_eq!(parts.batch, whole.batch);
    assert_eq!(parts.quarantine, whole.quarantine);
    // A body that is not JSON anywhere is refused the same way.
    let garbage = body[half..].to_vec();
    let whole = validate_whole(&compiled, &garbage, limits, 0).unwrap_err();
    let parts = validate_whole(&compiled, &garbage, limits, 1 << 10).unwrap_err();
    assert_eq!(parts.to_string(), whole.to_string());
    assert!(parts.to_string().contains("line 1:"), "{parts}");
}

#[test]
fn lines_refused_in_parts_are_counted_once() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let compiled = compiled("edge_access", &StreamOptions::default());
    let limits = BodyLimits {
        max_nesting_depth: 3,
        ..limits(10_000, 10)
    };
    // Five lines too deep at the start (in the first part, which this thread validates),
    // JSON records, then a second half of lines that are not JSON at all.
    let mut body = "{\"a\":[[[1]]]}\n".repeat(5).into_bytes();
    body.extend(mixed_body(500, 1_000));
    let half = body.len();
    let width = half / 500 + 20;
    for n in 0..500 {
        body.extend_from_slice(format!("not json at all {n:0>width$}\n").as_bytes());
    }
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let parts = metrics::with_local_recorder(&recorder, || {
        validate_whole(&compiled, &body, limits, half / 2).unwrap()
    });
    let whole = validate_whole(&compiled, &body, limits, 0).unwrap();
    assert_eq!((parts.accepted, parts.rejected), (500, 505));
    assert_eq!(parts.errors, whole.errors);
    assert_eq!(parts.quarantine, whole.quarantine);
    let too_deep: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == "sluice_limit_refusals_total"
                && key.labels().any(|label| label.value() == "nesting_depth")
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(too_deep, 5);
}

#[test]
fn bodies_are_cut_into_at_most_one_part_per_cpu() {
    let most = std::thread::available_parallelism().unwrap().get();
    assert_eq!(parts_of(1 << 20, 0), 1);
    assert_eq!(parts_of(100, 128), 1);
    assert_eq!(parts_of(255, 128), 1);
    assert_eq!(parts_of(256, 128), 2.min(most));
    assert_eq!(parts_of(1 << 30, 128), most);
}
