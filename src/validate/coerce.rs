//! Coercion of one body value into its column's builder, with the column's constraints.
//!
//! Senders disagree on types: DataStream 2 sends every value as a string and `-` for absent,
//! Logpush sends unix nanoseconds or RFC 3339, custom workers send real JSON numbers. Each rule
//! here accepts every spelling of a value that means the same thing and nothing else.

use std::fmt::Write as _;

use simd_json::StaticNode;
use simd_json::prelude::{
    TypedValue as _, ValueAsScalar as _, ValueIntoString as _, ValueType, Writable as _,
};

use super::column::ColumnBuilder;
use crate::decode::JsonValue;
use crate::schema::{ChType, Column, ValueFormat};
use crate::text::same_text;

/// A body value as the decoder delivered it.
#[derive(Clone, Copy)]
pub(super) enum Raw<'a> {
    Json(Json<'a>),
    Text(&'a str),
}

/// A JSON value by its kind; arrays and objects stay views of the tape.
#[derive(Clone, Copy)]
pub(super) enum Json<'a> {
    Static(StaticNode),
    String(&'a str),
    Array(JsonValue<'a>),
    Object(JsonValue<'a>),
}

impl<'a> Json<'a> {
    pub(super) fn of(value: JsonValue<'a>) -> Json<'a> {
        let node = match value.value_type() {
            ValueType::String => return Json::String(value.into_string().unwrap_or_default()),
            ValueType::Array => return Json::Array(value),
            ValueType::Object => return Json::Object(value),
            ValueType::Bool => value.as_bool().map(StaticNode::Bool),
            ValueType::I64 => value.as_i64().map(StaticNode::I64),
            ValueType::U64 => value.as_u64().map(StaticNode::U64),
            ValueType::F64 => value.as_f64().map(StaticNode::F64),
            _ => None,
        };
        Json::Static(node.unwrap_or(StaticNode::Null))
    }

    /// The value as compact JSON.
    pub(super) fn encode(&self) -> String {
        match self {
            Json::Static(node) => simd_json::BorrowedValue::Static(*node).encode(),
            Json::String(s) => simd_json::BorrowedValue::String((*s).into()).encode(),
            Json::Array(v) | Json::Object(v) => v.encode(),
        }
    }
}

#[derive(Clone, Copy)]
enum Number {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

/// Buffers of one request's coercions: text that is not in the body as it is stored (URL-decoded,
/// a number written as text, re-encoded JSON) and list items.
#[derive(Default)]
pub(super) struct Scratch {
    text: String,
    url: Vec<u8>,
    items: Vec<(u32, u32)>,
}

/// How one column's values are coerced and checked, resolved once per schema from the column's
/// type and options, so that appending a value does not derive it again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    kind: Kind,
    /// The schema's `min` and `max` (number columns); -∞ and +∞ when not given.
    min: f64,
    max: f64,
    /// Text columns: a check beyond UTF-8 applies (FixedString width, `max_length`, `pattern`,
    /// `format`).
    checked_text: bool,
    /// Text columns: text is URL-decoded when the sender URL-encodes it.
    url_decode: bool,
}

/// The coercion of a column's values, by its type (wrappers stripped).
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// An unsigned integer up to the given maximum.
    Unsigned(u64),
    /// A signed integer within the given bounds.
    Signed(i64, i64),
    Float,
    DateTime,
    Enum,
    Uuid,
    /// String or FixedString.
    Text,
    List,
}

impl Plan {
    pub(super) fn new(column: &Column) -> Plan {
        let kind = match column.ch_type.value_type() {
            ChType::UInt8 => Kind::Unsigned(u8::MAX as u64),
            ChType::UInt16 => Kind::Unsigned(u16::MAX as u64),
            ChType::UInt32 => Kind::Unsigned(u32::MAX as u64),
            ChType::UInt64 => Kind::Unsigned(u64::MAX),
            ChType::Int8 => Kind::Signed(i8::MIN as i64, i8::MAX as i64),
            ChType::Int16 => Kind::Signed(i16::MIN as i64, i16::MAX as i64),
            ChType::Int32 => Kind::Signed(i32::MIN as i64, i32::MAX as i64),
            ChType::Int64 => Kind::Signed(i64::MIN, i64::MAX),
            ChType::Float32 | ChType::Float64 => Kind::Float,
            ChType::DateTime => Kind::DateTime,
            ChType::Enum8(_) => Kind::Enum,
            ChType::UUID => Kind::Uuid,
            ChType::String | ChType::FixedString(_) => Kind::Text,
            ChType::Array(_) => Kind::List,
            ChType::Nullable(_) | ChType::LowCardinality(_) => {
                unreachable!("value_type strips wrappers")
            }
        };
        let spec = &column.spec;
        Plan {
            kind,
            min: spec.min.unwrap_or(f64::NEG_INFINITY),
            max: spec.max.unwrap_or(f64::INFINITY),
            checked_text: matches!(column.ch_type.value_type(), ChType::FixedString(_))
                || spec.max_length.is_some()
                || column.pattern.is_some()
                || spec.format.is_some(),
            url_decode: spec.url_decode,
        }
    }

    /// Whether `value` means "absent": JSON null, one of the schema's `absent` markers, or
    /// empty text for a column that is not text.
    #[inline(always)]
    pub(super) fn is_absent(&self, value: Raw<'_>, absent: &[String]) -> bool {
        match value {
            Raw::Json(Json::Static(StaticNode::Null)) => true,
            Raw::Json(Json::String(s)) => absent.iter().any(|a| same_text(a, s)),
            Raw::Text(s) => {
                (s.is_empty() && !matches!(self.kind, Kind::Text))
                    || absent.iter().any(|a| same_text(a, s))
            }
            Raw::Json(_) => false,
        }
    }

    fn check_range(&self, v: f64) -> Result<(), String> {
        if v < self.min {
            return Err(format!("value {v} is below the minimum {}", self.min));
        }
        if v > self.max {
            return Err(format!("value {v} is above the maximum {}", self.max));
        }
        Ok(())
    }
}

/// Coerces a present value (see [`Plan::is_absent`]) for `column` by its `plan` and appends it
/// to the column's builder; on an error nothing is appended. `url_encoded`: the sender
/// URL-encodes text, so `url_decode` columns are decoded.
pub(super) fn append(
    column: &Column,
    plan: &Plan,
    value: Raw<'_>,
    url_encoded: bool,
    builder: &mut ColumnBuilder,
    scratch: &mut Scratch,
) -> Result<(), String> {
    match plan.kind {
        Kind::Unsigned(max) => {
            let v = unsigned(value, column, max)?;
            plan.check_range(v as f64)?;
            builder.append_u64(v);
        }
        Kind::Signed(min, max) => {
            let v = signed(value, column, min, max)?;
            plan.check_range(v as f64)?;
            builder.append_i64(v);
        }
        Kind::Float => {
            let v = match number(value) {
                Some(Number::Unsigned(v)) => v as f64,
                Some(Number::Signed(v)) => v as f64,
                Some(Number::Float(v)) => v,
                None => return Err(expected_value(column, value)),
            };
            plan.check_range(v)?;
            builder.append_f64(v);
        }
        Kind::DateTime => builder.append_u64(unix_seconds(value)?),
        Kind::Enum => {
            let ChType::Enum8(variants) = column.ch_type.value_type() else {
                unreachable!("an Enum plan is made from an Enum8 column")
            };
            let name = text_of(value).ok_or_else(|| expected_value(column, value))?;
            match variants.iter().find(|(n, _)| n == name) {
                Some((_, code)) => builder.append_i64(*code as i64),
                None => {
                    let names: Vec<&str> = variants.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!("{} is not one of {}", got(value), names.join(", ")));
                }
            }
        }
        Kind::Uuid => {
            let text = text_of(value).ok_or_else(|| expected_value(column, value))?;
            let uuid =
                uuid::Uuid::try_parse(text.trim()).map_err(|_| expected_value(column, value))?;
            builder.append_bytes16(uuid.as_bytes());
        }
        Kind::Text => {
            let text = text(column, value, url_encoded && plan.url_decode, scratch)?;
            if plan.checked_text {
                check_text(column, text)?;
            }
            builder.append_str(text);
        }
        Kind::List => {
            list(value, scratch)?;
            builder.append_list(&scratch.text, &scratch.items);
        }
    }
    Ok(())
}

fn check_text(column: &Column, text: &str) -> Result<(), String> {
    if let ChType::FixedString(n) = column.ch_type.value_type()
        && text.len() > *n
    {
        return Err(format!(
            "value is {} bytes, longer than FixedString({n})",
            text.len()
        ));
    }
    if let Some(max) = column.spec.max_length
        && text.len() > max
    {
        return Err(format!(
            "value is {} bytes, longer than the maximum {max}",
            text.len()
        ));
    }
    if let Some(pattern) = &column.pattern
        && !pattern.is_match(text)
    {
        return Err(format!(
            "{} does not match {}",
            quoted(text),
            pattern.as_str()
        ));
    }
    if column.spec.format == Some(ValueFormat::Ip) && !is_ip(text) {
        return Err(format!("{} is not an IP address", quoted(text)));
    }
    Ok(())
}

/// The text form of `value`: the body's own text when it needs no decoding (the common case,
/// no copy), else text written into `scratch`. `url_decode`: URL-decode it.
fn text<'a>(
    column: &Column,
    value: Raw<'a>,
    url_decode: bool,
    scratch: &'a mut Scratch,
) -> Result<&'a str, String> {
    let text: &str = match value {
        Raw::Text(t) => t,
        Raw::Json(Json::String(s)) => s,
        Raw::Json(Json::Static(node)) => {
            scratch.text.clear();
            match node {
                StaticNode::I64(v) => write!(scratch.text, "{v}").expect("write to String"),
                StaticNode::U64(v) => write!(scratch.text, "{v}").expect("write to String"),
                StaticNode::F64(v) => write!(scratch.text, "{v}").expect("write to String"),
                StaticNode::Bool(v) => scratch.text.push_str(if v { "true" } else { "false" }),
                StaticNode::Null => {}
            }
            return Ok(&scratch.text);
        }
        Raw::Json(composite) => {
            if column.spec.json {
                scratch.text = composite.encode();
                return Ok(&scratch.text);
            }
            return Err(expected(&column.ch_type, value));
        }
    };
    if url_decode && let Some(at) = memchr::memchr2(b'%', b'+', text.as_bytes()) {
        scratch.url.clear();
        scratch.url.extend_from_slice(&text.as_bytes()[..at]);
        if url_decode_into(&text.as_bytes()[at..], &mut scratch.url) {
            return std::str::from_utf8(&scratch.url)
                .map_err(|_| "value is not valid UTF-8 after URL decoding".to_string());
        }
        // SAFETY: every escape decoded to ASCII, so the bytes are the text's own (valid UTF-8)
        // with ASCII runs replaced by ASCII bytes: still valid UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(&scratch.url) });
    }
    Ok(text)
}

/// Whether `text` is an IP address as the standard parser reads one. A plain dotted quad or
/// plain IPv6 groups (nearly every client address) are accepted in one pass; anything else
/// (an IPv4 tail in IPv6, every refusal) is left to the standard parser, so the answer is
/// always its answer.
fn is_ip(text: &str) -> bool {
    let bytes = text.as_bytes();
    plain_dotted_quad(bytes) || plain_ipv6(bytes) || text.parse::<std::net::IpAddr>().is_ok()
}

/// Colon-separated groups of one to four hex digits and nothing else: eight of them, or at most
/// seven with one `::` standing for the rest. A subset of what the standard parser accepts.
fn plain_ipv6(text: &[u8]) -> bool {
    let (mut groups, mut digits, mut compressed) = (0, 0, false);
    let mut at = 0;
    if text.starts_with(b"::") {
        compressed = true;
        at = 2;
    }
    while at < text.len() {
        let byte = text[at];
        at += 1;
        if byte.is_ascii_hexdigit() {
            digits += 1;
            if digits > 4 {
                return false;
            }
            continue;
        }
        // A colon ends a group, which must have digits; a second one is the `::`.
        if byte != b':' || digits == 0 {
            return false;
        }
        (groups, digits) = (groups + 1, 0);
        if text.get(at) == Some(&b':') {
            if compressed {
                return false;
            }
            compressed = true;
            at += 1;
        } else if at == text.len() {
            return false;
        }
    }
    if digits > 0 {
        groups += 1;
    }
    if compressed { groups <= 7 } else { groups == 8 }
}

/// Four dot-separated decimal numbers, each 0..=255 without a leading zero, and nothing else:
/// a subset of what the standard parser accepts.
fn plain_dotted_quad(text: &[u8]) -> bool {
    let (mut dots, mut digits, mut value) = (0, 0, 0u32);
    for &byte in text {
        match byte {
            b'0'..=b'9' => {
                if digits == 1 && value == 0 {
                    return false;
                }
                value = value * 10 + u32::from(byte - b'0');
                digits += 1;
                if value > 255 {
                    return false;
                }
            }
            b'.' if digits > 0 && dots < 3 => (dots, digits, value) = (dots + 1, 0, 0),
            _ => return false,
        }
    }
    dots == 3 && digits > 0
}

/// URL decoding (RFC 1738): `+` is a space, `%XX` a byte, and a `%` without two hex digits after
/// it stays as it is, as the `percent-encoding` crate decodes; the tests compare the two. One
/// byte at a time: values that need decoding at all (user agents, referers) are dense with
/// escapes, where a search per escape costs more than it skips. Copying the text between escapes
/// 8 bytes at a time, the next escape found by word arithmetic (SWAR), was tried: 2 % more
/// instructions and 1.5–11 % more time for decode + validate of generated gzip NDJSON.
///
/// Returns whether an escape decoded to a byte outside ASCII: only then can the output be
/// invalid UTF-8 when `text` is valid UTF-8 (every other byte is copied or is ASCII).
pub(super) fn url_decode_into(text: &[u8], out: &mut Vec<u8>) -> bool {
    /// Hex digit values; 0xFF for bytes that are not hex digits.
    const HEX: [u8; 256] = {
        let mut table = [0xFF; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            table[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    // Decoded text is never longer than the text: write into room for all of it, then cut
    // it to what was written (one store per byte, no capacity check per byte).
    let start = out.len();
    out.resize(start + text.len(), 0);
    let mut escaped = 0u8;
    let written = {
        let out = &mut out[start..];
        let (mut i, mut j) = (0, 0);
        while i < text.len() {
            let byte = text[i];
            let (decoded, len) = match byte {
                b'+' => (b' ', 1),
                b'%' if i + 3 <= text.len() => {
                    let (hi, lo) = (HEX[text[i + 1] as usize], HEX[text[i + 2] as usize]);
                    if (hi | lo) == 0xFF {
                        (byte, 1)
                    } else {
                        escaped |= hi;
                        (hi << 4 | lo, 3)
                    }
                }
                other => (other, 1),
            };
            out[j] = decoded;
            j += 1;
            i += len;
        }
        j
    };
    out.truncate(start + written);
    escaped >= 8
}

/// The items of an Array(String) value, into `scratch.text` and `scratch.items`.
fn list(value: Raw<'_>, scratch: &mut Scratch) -> Result<(), String> {
    let Scratch { text, items, .. } = scratch;
    text.clear();
    items.clear();
    let mut push = |item: &str| {
        let start = text.len() as u32;
        text.push_str(item);
        items.push((start, text.len() as u32));
    };
    match value {
        Raw::Json(Json::Array(array)) => {
            let array = array.as_array().expect("Json::Array holds an array");
            for item in array.iter() {
                match Json::of(item) {
                    Json::String(s) => push(s),
                    Json::Static(StaticNode::Null) => {
                        return Err("array items cannot be null".to_string());
                    }
                    Json::Static(node) => push(&node.to_string()),
                    _ => return Err("array items must be strings".to_string()),
                }
            }
        }
        Raw::Json(Json::String(text)) => split_list(text, &mut push)?,
        Raw::Text(text) => split_list(text, &mut push)?,
        Raw::Json(_) => return Err(expected(&ChType::Array(Box::new(ChType::String)), value)),
    }
    Ok(())
}

/// A list sent as text: a JSON array of strings, or comma-separated items.
fn split_list(text: &str, push: &mut dyn FnMut(&str)) -> Result<(), String> {
    let text = text.trim();
    if text.starts_with('[') {
        let items: Vec<String> = serde_json::from_str(text)
            .map_err(|_| format!("expected Array(String), got {}", quoted(text)))?;
        items.iter().for_each(|item| push(item));
    } else if !text.is_empty() {
        text.split(',').for_each(|item| push(item.trim()));
    }
    Ok(())
}

fn number(value: Raw<'_>) -> Option<Number> {
    match value {
        Raw::Json(Json::Static(StaticNode::U64(v))) => Some(Number::Unsigned(v)),
        Raw::Json(Json::Static(StaticNode::I64(v))) => Some(Number::Signed(v)),
        Raw::Json(Json::Static(StaticNode::F64(v))) => Some(Number::Float(v)),
        Raw::Json(Json::String(s)) => parse_number(s),
        Raw::Text(s) => parse_number(s),
        Raw::Json(_) => None,
    }
}

fn parse_number(text: &str) -> Option<Number> {
    // Most numbers are plain digits (DataStream 2 sends them all as strings): read them in one
    // pass. 19 digits always fit in a u64.
    let bytes = text.as_bytes();
    if !bytes.is_empty() && bytes.len() <= 19 {
        // Digits are checked and added up in the same pass, without a branch per byte; the sum
        // is used only when every byte was a digit.
        let (v, digits) = bytes.iter().fold((0u64, true), |(v, digits), &byte| {
            let digit = byte.wrapping_sub(b'0');
            (
                v.wrapping_mul(10).wrapping_add(u64::from(digit)),
                digits & (digit < 10),
            )
        });
        if digits {
            return Some(Number::Unsigned(v));
        }
    }
    let text = text.trim();
    if let Ok(v) = text.parse::<u64>() {
        return Some(Number::Unsigned(v));
    }
    if let Ok(v) = text.parse::<i64>() {
        return Some(Number::Signed(v));
    }
    if text.contains(['.', 'e', 'E'])
        && let Ok(v) = text.parse::<f64>()
        && v.is_finite()
    {
        return Some(Number::Float(v));
    }
    None
}

fn unsigned(value: Raw<'_>, column: &Column, max: u64) -> Result<u64, String> {
    let out_of_range = |shown: String| {
        let ty = column.ch_type.value_type();
        format!("value {shown} out of range for {ty}")
    };
    match number(value) {
        Some(Number::Unsigned(v)) if v <= max => Ok(v),
        Some(Number::Unsigned(v)) => Err(out_of_range(v.to_string())),
        Some(Number::Signed(v)) => Err(out_of_range(v.to_string())),
        Some(Number::Float(v)) if v.fract() == 0.0 && v >= 0.0 && v <= max as f64 => Ok(v as u64),
        Some(Number::Float(v)) if v.fract() == 0.0 => Err(out_of_range(v.to_string())),
        _ => Err(expected_value(column, value)),
    }
}

fn signed(value: Raw<'_>, column: &Column, min: i64, max: i64) -> Result<i64, String> {
    let out_of_range = |shown: String| {
        let ty = column.ch_type.value_type();
        format!("value {shown} out of range for {ty}")
    };
    match number(value) {
        Some(Number::Signed(v)) if (min..=max).contains(&v) => Ok(v),
        Some(Number::Unsigned(v)) if v <= max as u64 => Ok(v as i64),
        Some(Number::Signed(v)) => Err(out_of_range(v.to_string())),
        Some(Number::Unsigned(v)) => Err(out_of_range(v.to_string())),
        Some(Number::Float(v)) if v.fract() == 0.0 && v >= min as f64 && v <= max as f64 => {
            Ok(v as i64)
        }
        Some(Number::Float(v)) if v.fract() == 0.0 => Err(out_of_range(v.to_string())),
        _ => Err(expected_value(column, value)),
    }
}

/// Unix seconds from unix time in s, ms, µs or ns (told apart by magnitude: DataStream 2 sends
/// seconds, Logpush's default is nanoseconds), fractional seconds, RFC 3339, or
/// `YYYY-MM-DD hh:mm:ss` (UTC).
fn unix_seconds(value: Raw<'_>) -> Result<u64, String> {
    let seconds: Option<i128> = match number(value) {
        Some(Number::Unsigned(v)) => Some(scale_integer_time(v as i128)),
        Some(Number::Signed(v)) => Some(scale_integer_time(v as i128)),
        Some(Number::Float(v)) => Some(scale_integer_time(v.trunc() as i128)),
        None => text_of(value).and_then(parse_datetime_text),
    };
    let seconds = seconds.ok_or_else(|| {
        format!(
            "expected DateTime (unix time or RFC 3339), got {}",
            got(value)
        )
    })?;
    if !(0..=u32::MAX as i128).contains(&seconds) {
        return Err(format!("time {} out of range for DateTime", got(value)));
    }
    Ok(seconds as u64)
}

fn scale_integer_time(v: i128) -> i128 {
    match v.abs() {
        0..100_000_000_000 => v,
        100_000_000_000..100_000_000_000_000 => v / 1_000,
        100_000_000_000_000..100_000_000_000_000_000 => v / 1_000_000,
        _ => v / 1_000_000_000,
    }
}

fn parse_datetime_text(text: &str) -> Option<i128> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp() as i128);
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp() as i128)
}

fn text_of<'a>(value: Raw<'a>) -> Option<&'a str> {
    match value {
        Raw::Json(Json::String(s)) => Some(s),
        Raw::Text(s) => Some(s),
        Raw::Json(_) => None,
    }
}

fn expected(ty: &ChType, value: Raw<'_>) -> String {
    format!("expected {ty}, got {}", got(value))
}

/// [`expected`] naming the column's type without its wrappers (`UInt32`, not
/// `Nullable(UInt32)`).
fn expected_value(column: &Column, value: Raw<'_>) -> String {
    expected(column.ch_type.value_type(), value)
}

/// The value as the sender wrote it, shortened for messages.
fn got(value: Raw<'_>) -> String {
    match value {
        Raw::Text(s) => quoted(s),
        Raw::Json(Json::String(s)) => quoted(s),
        Raw::Json(Json::Array(_)) => "an array".to_string(),
        Raw::Json(Json::Object(_)) => "an object".to_string(),
        Raw::Json(Json::Static(node)) => node.to_string(),
    }
}

fn quoted(text: &str) -> String {
    const MAX: usize = 64;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &text[..end])
}

/// Appends `text` as a JSON string literal.
pub(super) fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                write!(out, "\\u{:04x}", c as u32).expect("write to String");
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Number, is_ip, parse_number, plain_dotted_quad, plain_ipv6, url_decode_into};

    /// What `percent-encoding` makes of `text`, with `+` as a space.
    fn reference_decode(text: &str) -> Vec<u8> {
        text.split('+')
            .map(|part| percent_encoding::percent_decode_str(part).collect::<Vec<u8>>())
            .collect::<Vec<_>>()
            .join(&b' ')
    }

    #[test]
    fn plain_quads_take_the_one_pass_check() {
        for quad in ["0.0.0.0", "255.255.255.255", "128.147.28.68", "10.0.0.1"] {
            assert!(plain_dotted_quad(quad.as_bytes()), "{quad}");
        }
        for other in [
            "01.2.3.4",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.",
            "1..2.3",
            ".1.2.3",
            "::1",
            "",
        ] {
            assert!(!plain_dotted_quad(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn plain_ipv6_groups_take_the_one_pass_check() {
        for address in [
            "2a02:62f7:96db:785e:0:e1:313c:1a8e",
            "2001:DB8:0:0:0:0:0:1",
            "2001:db8::1",
            "::",
            "::1",
            "fe80::",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "0000:0000:0000:0000:0000:0000:0000:0001",
        ] {
            assert!(plain_ipv6(address.as_bytes()), "{address}");
            assert!(address.parse::<std::net::Ipv6Addr>().is_ok(), "{address}");
        }
        for other in [
            "1:2:3:4:5:6:7",
            "1:2:3:4:5:6:7:8:9",
            "1::2::3",
            ":::",
            ":1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7:8:",
            "1:2:3:4:5:6:7:8::",
            "::1:2:3:4:5:6:7:8",
            "12345::",
            "g::1",
            "::ffff:1.2.3.4",
            "fe80::1%eth0",
            ":",
            "",
        ] {
            assert!(!plain_ipv6(other.as_bytes()), "{other}");
        }
        // Left to the standard parser, which reads it.
        assert!(is_ip("::ffff:1.2.3.4"));
    }

    proptest! {
        #[test]
        fn url_decoding_matches_percent_encoding_on_any_text(text in "[%+aAfFgz09 é]{0,24}") {
            let mut decoded = b"kept".to_vec();
            let high_escape = url_decode_into(text.as_bytes(), &mut decoded);
            let mut expected = b"kept".to_vec();
            expected.extend(reference_decode(&text));
            // Non-ASCII bytes are copied one to one, so there are more of them after decoding
            // exactly when an escape decoded to one; without one the output is valid UTF-8.
            let non_ascii = |bytes: &[u8]| bytes.iter().filter(|b| !b.is_ascii()).count();
            prop_assert_eq!(high_escape, non_ascii(&expected) > non_ascii(text.as_bytes()));
            if !high_escape {
                prop_assert!(std::str::from_utf8(&decoded).is_ok());
            }
            prop_assert_eq!(decoded, expected);
        }

        /// The one-pass checks accept only what the standard parser accepts; with the fallback
        /// the answer is the standard parser's. Dotted texts, IPv6-shaped texts (groups of zero
        /// to five hex digits, one or two colons between them) and a mix of both alphabets.
        #[test]
        fn ip_addresses_are_read_as_the_standard_parser_reads_them(
            text in "[0-9]{1,4}(\\.[0-9]{0,4}){0,4}|(:{0,2}[0-9a-fA-F]{0,5}){0,10}:{0,2}|[0-9.:a-f ]{0,16}"
        ) {
            let std = text.parse::<std::net::IpAddr>().is_ok();
            prop_assert_eq!(is_ip(&text), std, "{:?}", text);
            if plain_dotted_quad(text.as_bytes()) || plain_ipv6(text.as_bytes()) {
                prop_assert!(std, "{:?}", text);
            }
        }

        /// Digit strings of every length around the 19-digit fast path, and short strings
        /// with the bytes on either side of '0'..='9' ('/' and ':'), which the one-pass check
        /// must refuse.
        #[test]
        fn digit_strings_read_as_the_standard_parser_reads_them(
            text in "[0-9]{1,21}|[+ /:a0-9]{1,5}"
        ) {
            let ours = match parse_number(&text) {
                Some(Number::Unsigned(v)) => Some(v),
                _ => None,
            };
            let std = text.trim().parse::<u64>().ok();
            prop_assert_eq!(ours, std, "{:?}", text);
        }
    }
}
