//! ClickHouse Native format blocks from Arrow arrays.
//!
//! A block is `varint columns, varint rows`, then per column `string name, string type, data`
//! (integers little-endian, `varint` unsigned LEB128, `string` = varint length + bytes). The
//! Arrow representation of each ClickHouse type is fixed by the validator
//! ([`crate::validate::arrow_type`]); this module turns it into the column data:
//!
//! | ClickHouse | Arrow | Native data for n rows |
//! |---|---|---|
//! | (U)Int8–64, Float32/64 | primitive | n fixed-width values: the Arrow buffer as is |
//! | DateTime | UInt32 | n × UInt32 unix seconds |
//! | Enum8 | Int8 | n × Int8 codes |
//! | String | Utf8 | n × string |
//! | FixedString(N) | FixedSizeBinary(N) | n × N bytes |
//! | UUID | FixedSizeBinary(16), RFC 4122 byte order | n × (UInt64 of bytes 0–7 read big-endian, UInt64 of bytes 8–15), each little-endian |
//! | Nullable(T) | T with validity | n null-map bytes (1 = NULL), then T's data |
//! | Array(String) | List(Utf8) | n × UInt64 cumulative end offsets, then the items |
//! | LowCardinality(String) | Utf8 | UInt64 1 (key version), UInt64 flags 0x600 \| index width, UInt64 key count, keys (the empty string first), UInt64 n, n indexes |
//! | LowCardinality(Nullable(String)) | Utf8 with validity | as above; keys start with the NULL slot then the empty string; index 0 is NULL |

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;

use crate::schema::ChType;

/// A column of the block: its name and ClickHouse type.
#[derive(Debug, Clone, Copy)]
pub struct NativeColumn<'a> {
    pub name: &'a str,
    pub ch_type: &'a ChType,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("batch has {batch} columns but {columns} were described")]
    ColumnCount { batch: usize, columns: usize },
    #[error("column {column}: Arrow type {arrow} cannot be written as {clickhouse}")]
    TypeMismatch {
        column: String,
        arrow: String,
        clickhouse: String,
    },
    #[error("column {column}: value of {len} bytes does not fit {clickhouse}")]
    ValueTooLong {
        column: String,
        len: usize,
        clickhouse: String,
    },
}

/// Appends one Native block (header and all columns) for `batch` to `out`.
pub fn write_native_block(
    columns: &[NativeColumn<'_>],
    batch: &RecordBatch,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if columns.len() != batch.num_columns() {
        return Err(EncodeError::ColumnCount {
            batch: batch.num_columns(),
            columns: columns.len(),
        });
    }
    write_varint(out, columns.len() as u64);
    write_varint(out, batch.num_rows() as u64);
    for (column, array) in columns.iter().zip(batch.columns()) {
        write_string(out, column.name.as_bytes());
        write_string(out, column.ch_type.to_string().as_bytes());
        write_column(column, column.ch_type, array, out)?;
    }
    Ok(())
}

fn write_column(
    column: &NativeColumn<'_>,
    ch_type: &ChType,
    array: &ArrayRef,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let mismatch = || EncodeError::TypeMismatch {
        column: column.name.to_string(),
        arrow: array.data_type().to_string(),
        clickhouse: ch_type.to_string(),
    };
    match (ch_type, array.data_type()) {
        (ChType::Nullable(inner), _) => {
            out.reserve(array.len());
            out.extend((0..array.len()).map(|i| u8::from(array.is_null(i))));
            write_column(column, inner, array, out)
        }
        (ChType::LowCardinality(inner), DataType::Utf8) => {
            write_low_cardinality(array, inner.is_nullable(), out);
            Ok(())
        }
        (ChType::String, DataType::Utf8) => {
            for value in array.as_string::<i32>().iter() {
                write_string(out, value.unwrap_or("").as_bytes());
            }
            Ok(())
        }
        (ChType::FixedString(width), DataType::FixedSizeBinary(w)) if *w as usize == *width => {
            let values = array.as_fixed_size_binary();
            for i in 0..values.len() {
                if values.is_null(i) {
                    out.resize(out.len() + width, 0);
                } else {
                    out.extend_from_slice(values.value(i));
                }
            }
            Ok(())
        }
        (ChType::FixedString(width), DataType::Utf8) => {
            for value in array.as_string::<i32>().iter() {
                let bytes = value.unwrap_or("").as_bytes();
                if bytes.len() > *width {
                    return Err(EncodeError::ValueTooLong {
                        column: column.name.to_string(),
                        len: bytes.len(),
                        clickhouse: ch_type.to_string(),
                    });
                }
                out.extend_from_slice(bytes);
                out.resize(out.len() + width - bytes.len(), 0);
            }
            Ok(())
        }
        (ChType::UUID, DataType::FixedSizeBinary(16)) => {
            let values = array.as_fixed_size_binary();
            for i in 0..values.len() {
                let bytes: [u8; 16] = if values.is_null(i) {
                    [0; 16]
                } else {
                    values.value(i).try_into().expect("width 16")
                };
                let (high, low) = bytes.split_at(8);
                out.extend(high.iter().rev());
                out.extend(low.iter().rev());
            }
            Ok(())
        }
        (ChType::Array(inner), DataType::List(_)) if **inner == ChType::String => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            let first = offsets[0];
            for end in &offsets[1..] {
                out.extend_from_slice(&((end - first) as u64).to_le_bytes());
            }
            let items = list.values().as_string::<i32>();
            for i in first as usize..offsets[offsets.len() - 1] as usize {
                write_string(out, items.value(i).as_bytes());
            }
            Ok(())
        }
        (ChType::UInt8, DataType::UInt8) => write_primitive::<UInt8Type>(array, out),
        (ChType::UInt16, DataType::UInt16) => write_primitive::<UInt16Type>(array, out),
        (ChType::UInt32 | ChType::DateTime, DataType::UInt32) => {
            write_primitive::<UInt32Type>(array, out)
        }
        (ChType::UInt64, DataType::UInt64) => write_primitive::<UInt64Type>(array, out),
        (ChType::Int8 | ChType::Enum8(_), DataType::Int8) => {
            write_primitive::<Int8Type>(array, out)
        }
        (ChType::Int16, DataType::Int16) => write_primitive::<Int16Type>(array, out),
        (ChType::Int32, DataType::Int32) => write_primitive::<Int32Type>(array, out),
        (ChType::Int64, DataType::Int64) => write_primitive::<Int64Type>(array, out),
        (ChType::Float32, DataType::Float32) => write_primitive::<Float32Type>(array, out),
        (ChType::Float64, DataType::Float64) => write_primitive::<Float64Type>(array, out),
        _ => return Err(mismatch()),
    }
}

/// Fixed-width values: on little-endian machines Arrow's buffer is already the wire layout.
/// Values under NULLs are whatever the builder left (zero), which ClickHouse ignores.
fn write_primitive<T: ArrowPrimitiveType>(
    array: &ArrayRef,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError>
where
    T::Native: ToLeBytes,
{
    let values = array.as_primitive::<T>().values();
    if cfg!(target_endian = "little") {
        out.extend_from_slice(values.inner().as_slice());
    } else {
        for value in values.iter() {
            value.extend_le(out);
        }
    }
    Ok(())
}

/// Little-endian bytes of a primitive (only used on big-endian machines).
trait ToLeBytes {
    fn extend_le(&self, out: &mut Vec<u8>);
}

macro_rules! to_le_bytes {
    ($($t:ty),*) => {$(
        impl ToLeBytes for $t {
            fn extend_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
to_le_bytes!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

const LOW_CARDINALITY_KEY_VERSION: u64 = 1;
/// "has additional keys" (0x200) | "needs dictionary update" (0x400).
const LOW_CARDINALITY_FLAGS: u64 = 0x600;

/// LowCardinality(String) / LowCardinality(Nullable(String)): a dictionary of the block's
/// distinct values and one index per row, in the narrowest index width.
fn write_low_cardinality(array: &ArrayRef, nullable: bool, out: &mut Vec<u8>) {
    let values = array.as_string::<i32>();
    // Reserved slots: [NULL,] default "".
    let reserved: u64 = if nullable { 2 } else { 1 };
    let empty_index = reserved - 1;
    let mut dictionary: HashMap<&str, u64> = HashMap::new();
    let mut keys: Vec<&str> = Vec::new();
    let mut indexes: Vec<u64> = Vec::with_capacity(values.len());
    for value in values.iter() {
        let index = match value {
            None => 0,
            Some("") => empty_index,
            Some(text) => *dictionary.entry(text).or_insert_with(|| {
                keys.push(text);
                reserved + keys.len() as u64 - 1
            }),
        };
        indexes.push(index);
    }
    let key_count = reserved + keys.len() as u64;
    let width: u64 = match key_count {
        0..=0x100 => 0,
        0x101..=0x1_0000 => 1,
        0x1_0001..=0x1_0000_0000 => 2,
        _ => 3,
    };
    out.extend_from_slice(&LOW_CARDINALITY_KEY_VERSION.to_le_bytes());
    out.extend_from_slice(&(LOW_CARDINALITY_FLAGS | width).to_le_bytes());
    out.extend_from_slice(&key_count.to_le_bytes());
    for _ in 0..reserved {
        write_string(out, b"");
    }
    for key in &keys {
        write_string(out, key.as_bytes());
    }
    out.extend_from_slice(&(indexes.len() as u64).to_le_bytes());
    match width {
        0 => out.extend(indexes.iter().map(|&i| i as u8)),
        1 => indexes
            .iter()
            .for_each(|&i| out.extend_from_slice(&(i as u16).to_le_bytes())),
        2 => indexes
            .iter()
            .for_each(|&i| out.extend_from_slice(&(i as u32).to_le_bytes())),
        _ => indexes
            .iter()
            .for_each(|&i| out.extend_from_slice(&i.to_le_bytes())),
    }
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{FixedSizeBinaryArray, Int8Array, StringArray, UInt16Array, UInt32Array};

    use super::*;

    fn block(ch_type: &str, array: ArrayRef) -> Vec<u8> {
        let ch_type = ChType::parse(ch_type).unwrap();
        let batch = RecordBatch::try_from_iter([("c", array)]).unwrap();
        let mut out = Vec::new();
        write_native_block(
            &[NativeColumn {
                name: "c",
                ch_type: &ch_type,
            }],
            &batch,
            &mut out,
        )
        .unwrap();
        out
    }

    /// The column data after the block header (`1, rows, "c", type`).
    fn data(ch_type: &str, array: ArrayRef) -> Vec<u8> {
        let rows = array.len();
        let out = block(ch_type, array);
        let header = 2 + 2 + 1 + ch_type.len() + usize::from(rows >= 128);
        out[header..].to_vec()
    }

    #[test]
    fn header_and_primitives() {
        let out = block("UInt16", Arc::new(UInt16Array::from(vec![1, 0x0203])));
        assert_eq!(
            out,
            [
                1, 2, 1, b'c', 6, b'U', b'I', b'n', b't', b'1', b'6', 1, 0, 3, 2
            ]
        );
        let sliced = Arc::new(UInt32Array::from(vec![7, 8, 9]).slice(1, 2));
        assert_eq!(data("DateTime", sliced), [8, 0, 0, 0, 9, 0, 0, 0]);
    }

    #[test]
    fn uuid_is_two_little_endian_halves_read_big_endian() {
        let uuid = uuid::Uuid::parse_str("61f0c404-5cb3-11e7-907b-a6006ad3dba0").unwrap();
        let array = FixedSizeBinaryArray::try_from_iter([uuid.as_bytes()].into_iter()).unwrap();
        assert_eq!(
            data("UUID", Arc::new(array)),
            [
                0xe7, 0x11, 0xb3, 0x5c, 0x04, 0xc4, 0xf0, 0x61, 0xa0, 0xdb, 0xd3, 0x6a, 0x00, 0xa6,
                0x7b, 0x90
            ]
        );
    }

    #[test]
    fn low_cardinality_nullable_matches_what_clickhouse_writes() {
        let array = StringArray::from(vec![None, Some("a"), Some(""), Some("a")]);
        let mut expected = Vec::new();
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&0x600u64.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(&[0, 0, 1, b'a']);
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&[0, 2, 1, 2]);
        assert_eq!(
            data("LowCardinality(Nullable(String))", Arc::new(array)),
            expected
        );
    }

    #[test]
    fn low_cardinality_picks_the_narrowest_index_width() {
        let values: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
        let array = StringArray::from_iter_values(values.iter());
        let out = data("LowCardinality(String)", Arc::new(array));
        assert_eq!(
            &out[8..16],
            &(0x600u64 | 1).to_le_bytes(),
            "301 keys need UInt16 indexes"
        );
    }

    #[test]
    fn nullable_enum_and_array() {
        let codes = Int8Array::from(vec![Some(1), None]);
        assert_eq!(
            data("Nullable(Enum8('a' = 1))", Arc::new(codes)),
            [0, 1, 1, 0]
        );

        let mut lists = ListBuilder::new(StringBuilder::new());
        lists.values().append_value("x");
        lists.values().append_value("yz");
        lists.append(true);
        lists.append(true);
        lists.values().append_value("w");
        lists.append(true);
        let array = lists.finish().slice(1, 2);
        let mut expected = Vec::new();
        expected.extend_from_slice(&0u64.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&[1, b'w']);
        assert_eq!(data("Array(String)", Arc::new(array)), expected);
    }

    #[test]
    fn type_mismatch_names_the_column() {
        let ch_type = ChType::parse("String").unwrap();
        let batch =
            RecordBatch::try_from_iter([("c", Arc::new(UInt16Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        let err = write_native_block(
            &[NativeColumn {
                name: "c",
                ch_type: &ch_type,
            }],
            &batch,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column c: Arrow type UInt16 cannot be written as String"
        );
    }
}
