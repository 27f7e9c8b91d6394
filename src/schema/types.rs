//! ClickHouse column types that sluice can validate into and encode.
//!
//! The type string in a schema file is parsed once into [`ChType`]; its [`Display`] form is the
//! exact string that goes into DDL and into the header of every Native block.

use std::fmt;

/// A ClickHouse column type supported by the validator and the Native encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChType {
    String,
    /// `FixedString(N)`: exactly N bytes on the wire (shorter values are zero-padded).
    FixedString(usize),
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `DateTime`: unix seconds as UInt32.
    DateTime,
    /// `Enum8('a' = 1, …)`: the names and codes in declaration order.
    Enum8(Vec<(String, i8)>),
    UUID,
    Nullable(Box<ChType>),
    LowCardinality(Box<ChType>),
    Array(Box<ChType>),
}

/// A type string that sluice cannot parse or does not support.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported or malformed type {type_string:?}: {reason}")]
pub struct TypeParseError {
    pub type_string: String,
    pub reason: &'static str,
}

impl ChType {
    /// Parses a ClickHouse type string such as `LowCardinality(Nullable(String))`.
    pub fn parse(type_string: &str) -> Result<ChType, TypeParseError> {
        let fail = |reason| TypeParseError {
            type_string: type_string.to_string(),
            reason,
        };
        let text = type_string.trim();
        let (head, inner) = match text.find('(') {
            Some(open) => {
                if !text.ends_with(')') {
                    return Err(fail("unbalanced parentheses"));
                }
                (&text[..open], Some(&text[open + 1..text.len() - 1]))
            }
            None => (text, None),
        };
        let wrapped = |inner: Option<&str>| -> Result<Box<ChType>, TypeParseError> {
            let inner = inner.ok_or_else(|| fail("missing inner type"))?;
            ChType::parse(inner).map(Box::new)
        };
        let ty = match (head, inner) {
            ("String", None) => ChType::String,
            ("UInt8", None) => ChType::UInt8,
            ("UInt16", None) => ChType::UInt16,
            ("UInt32", None) => ChType::UInt32,
            ("UInt64", None) => ChType::UInt64,
            ("Int8", None) => ChType::Int8,
            ("Int16", None) => ChType::Int16,
            ("Int32", None) => ChType::Int32,
            ("Int64", None) => ChType::Int64,
            ("Float32", None) => ChType::Float32,
            ("Float64", None) => ChType::Float64,
            ("DateTime", None) => ChType::DateTime,
            ("UUID", None) => ChType::UUID,
            ("FixedString", Some(n)) => {
                let n: usize = n
                    .trim()
                    .parse()
                    .map_err(|_| fail("FixedString needs a length"))?;
                if n == 0 {
                    return Err(fail("FixedString length must be positive"));
                }
                ChType::FixedString(n)
            }
            ("Enum8", Some(body)) => ChType::Enum8(parse_enum_body(body).map_err(fail)?),
            ("Nullable", inner) => {
                let inner = wrapped(inner)?;
                if matches!(
                    *inner,
                    ChType::Nullable(_) | ChType::Array(_) | ChType::LowCardinality(_)
                ) {
                    return Err(fail(
                        "Nullable cannot wrap Nullable, Array or LowCardinality",
                    ));
                }
                ChType::Nullable(inner)
            }
            ("LowCardinality", inner) => {
                let inner = wrapped(inner)?;
                match &*inner {
                    ChType::String => {}
                    ChType::Nullable(s) if **s == ChType::String => {}
                    _ => return Err(fail("LowCardinality is supported for String only")),
                }
                ChType::LowCardinality(inner)
            }
            ("Array", inner) => {
                let inner = wrapped(inner)?;
                if *inner != ChType::String {
                    return Err(fail("Array is supported for Array(String) only"));
                }
                ChType::Array(inner)
            }
            _ => return Err(fail("unknown type")),
        };
        Ok(ty)
    }

    /// The type under `Nullable`/`LowCardinality`, i.e. what a present value is coerced to.
    pub fn value_type(&self) -> &ChType {
        match self {
            ChType::Nullable(inner) | ChType::LowCardinality(inner) => inner.value_type(),
            other => other,
        }
    }

    /// Whether an absent value may be stored as NULL.
    pub fn is_nullable(&self) -> bool {
        match self {
            ChType::Nullable(_) => true,
            ChType::LowCardinality(inner) => inner.is_nullable(),
            _ => false,
        }
    }

    /// Whether the type needs `allow_experimental_low_cardinality_type=1` on ClickHouse 18.x.
    pub fn uses_low_cardinality(&self) -> bool {
        match self {
            ChType::LowCardinality(_) => true,
            ChType::Nullable(inner) | ChType::Array(inner) => inner.uses_low_cardinality(),
            _ => false,
        }
    }
}

fn parse_enum_body(body: &str) -> Result<Vec<(String, i8)>, &'static str> {
    let mut variants = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let after_quote = rest.strip_prefix('\'').ok_or("enum names must be quoted")?;
        let close = after_quote.find('\'').ok_or("unterminated enum name")?;
        let name = &after_quote[..close];
        let after_name = after_quote[close + 1..].trim_start();
        let after_eq = after_name
            .strip_prefix('=')
            .ok_or("enum variant needs '= code'")?;
        let (code_text, tail) = match after_eq.find(',') {
            Some(comma) => (&after_eq[..comma], &after_eq[comma + 1..]),
            None => (after_eq, ""),
        };
        let code: i8 = code_text
            .trim()
            .parse()
            .map_err(|_| "enum code must fit in Int8")?;
        if variants.iter().any(|(n, c)| n == name || *c == code) {
            return Err("duplicate enum name or code");
        }
        variants.push((name.to_string(), code));
        rest = tail.trim();
    }
    if variants.is_empty() {
        return Err("Enum8 needs at least one variant");
    }
    Ok(variants)
}

impl fmt::Display for ChType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChType::String => f.write_str("String"),
            ChType::FixedString(n) => write!(f, "FixedString({n})"),
            ChType::UInt8 => f.write_str("UInt8"),
            ChType::UInt16 => f.write_str("UInt16"),
            ChType::UInt32 => f.write_str("UInt32"),
            ChType::UInt64 => f.write_str("UInt64"),
            ChType::Int8 => f.write_str("Int8"),
            ChType::Int16 => f.write_str("Int16"),
            ChType::Int32 => f.write_str("Int32"),
            ChType::Int64 => f.write_str("Int64"),
            ChType::Float32 => f.write_str("Float32"),
            ChType::Float64 => f.write_str("Float64"),
            ChType::DateTime => f.write_str("DateTime"),
            ChType::UUID => f.write_str("UUID"),
            ChType::Enum8(variants) => {
                f.write_str("Enum8(")?;
                for (i, (name, code)) in variants.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "'{}' = {code}", name.replace('\'', "\\'"))?;
                }
                f.write_str(")")
            }
            ChType::Nullable(inner) => write!(f, "Nullable({inner})"),
            ChType::LowCardinality(inner) => write!(f, "LowCardinality({inner})"),
            ChType::Array(inner) => write!(f, "Array({inner})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_supported_type() {
        for text in [
            "String",
            "FixedString(16)",
            "UInt8",
            "UInt64",
            "Int32",
            "Float64",
            "DateTime",
            "UUID",
            "Enum8('GET' = 1, 'POST' = 2)",
            "Nullable(UInt32)",
            "LowCardinality(String)",
            "LowCardinality(Nullable(String))",
            "Array(String)",
        ] {
            assert_eq!(ChType::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_what_the_encoder_cannot_write() {
        for (text, reason) in [
            ("Map(String, String)", "unknown type"),
            (
                "LowCardinality(UInt8)",
                "LowCardinality is supported for String only",
            ),
            (
                "Nullable(Nullable(String))",
                "Nullable cannot wrap Nullable, Array or LowCardinality",
            ),
            ("Enum8('a' = 1, 'a' = 2)", "duplicate enum name or code"),
            ("Enum8('a' = 300)", "enum code must fit in Int8"),
            ("Array(UInt8)", "Array is supported for Array(String) only"),
        ] {
            assert_eq!(ChType::parse(text).unwrap_err().reason, reason, "{text}");
        }
    }

    #[test]
    fn value_type_and_nullability_see_through_wrappers() {
        let ty = ChType::parse("LowCardinality(Nullable(String))").unwrap();
        assert_eq!(ty.value_type(), &ChType::String);
        assert!(ty.is_nullable());
        assert!(ty.uses_low_cardinality());
        assert!(!ChType::parse("Array(String)").unwrap().is_nullable());
    }
}
