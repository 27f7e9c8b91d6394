//! The Arrow builder of one column, appended to value by value as a record's fields are read.

use arrow_array::builder::{ArrayBuilder as _, FixedSizeBinaryBuilder, ListBuilder, StringBuilder};
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{ArrayRef, PrimitiveArray};
use arrow_buffer::{NullBufferBuilder, ScalarBuffer};
use std::sync::Arc;

use crate::schema::ChType;

/// One column's builder, by the Arrow type its ClickHouse type is built as.
///
/// Integer values were range-checked for the column's type before they get here, so the
/// narrowing casts cannot truncate; a value of the wrong kind for the builder is a bug in the
/// caller (`coerce` picks the method from the same type).
pub(super) enum ColumnBuilder {
    U8(Numbers<UInt8Type>),
    U16(Numbers<UInt16Type>),
    U32(Numbers<UInt32Type>),
    U64(Numbers<UInt64Type>),
    I8(Numbers<Int8Type>),
    I16(Numbers<Int16Type>),
    I32(Numbers<Int32Type>),
    I64(Numbers<Int64Type>),
    F32(Numbers<Float32Type>),
    F64(Numbers<Float64Type>),
    Str(StringBuilder),
    Fixed(FixedSizeBinaryBuilder, usize),
    List(ListBuilder<StringBuilder>),
}

/// A number column as a plain vector and a validity bitmap that exists only once a value is
/// null: an append is a push, without the calls of Arrow's general builder.
pub(super) struct Numbers<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowPrimitiveType> Numbers<T> {
    fn with_capacity(rows: usize) -> Numbers<T> {
        Numbers {
            values: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    #[inline]
    fn append_value(&mut self, v: T::Native) {
        self.values.push(v);
        self.nulls.append_non_null();
    }

    fn append_null(&mut self) {
        self.values.push(T::Native::default());
        self.nulls.append_null();
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn finish(&mut self) -> ArrayRef {
        let values = ScalarBuffer::from(std::mem::take(&mut self.values));
        Arc::new(PrimitiveArray::<T>::new(values, self.nulls.finish()))
    }
}

impl ColumnBuilder {
    /// A builder with room for `rows` values (and `string_bytes` of text for a String column),
    /// so that it does not grow, and copy, while a body is read.
    pub(super) fn new(ch_type: &ChType, rows: usize, string_bytes: usize) -> ColumnBuilder {
        match ch_type.value_type() {
            ChType::String => ColumnBuilder::Str(StringBuilder::with_capacity(rows, string_bytes)),
            ChType::FixedString(n) => {
                ColumnBuilder::Fixed(FixedSizeBinaryBuilder::with_capacity(rows, *n as i32), *n)
            }
            ChType::UUID => {
                ColumnBuilder::Fixed(FixedSizeBinaryBuilder::with_capacity(rows, 16), 16)
            }
            ChType::UInt8 => ColumnBuilder::U8(Numbers::with_capacity(rows)),
            ChType::UInt16 => ColumnBuilder::U16(Numbers::with_capacity(rows)),
            ChType::UInt32 | ChType::DateTime => ColumnBuilder::U32(Numbers::with_capacity(rows)),
            ChType::UInt64 => ColumnBuilder::U64(Numbers::with_capacity(rows)),
            ChType::Int8 | ChType::Enum8(_) => ColumnBuilder::I8(Numbers::with_capacity(rows)),
            ChType::Int16 => ColumnBuilder::I16(Numbers::with_capacity(rows)),
            ChType::Int32 => ColumnBuilder::I32(Numbers::with_capacity(rows)),
            ChType::Int64 => ColumnBuilder::I64(Numbers::with_capacity(rows)),
            ChType::Float32 => ColumnBuilder::F32(Numbers::with_capacity(rows)),
            ChType::Float64 => ColumnBuilder::F64(Numbers::with_capacity(rows)),
            ChType::Array(_) => ColumnBuilder::List(ListBuilder::new(StringBuilder::new())),
            ChType::Nullable(_) | ChType::LowCardinality(_) => {
                unreachable!("value_type() strips wrappers")
            }
        }
    }

    #[inline(always)]
    pub(super) fn append_u64(&mut self, v: u64) {
        match self {
            ColumnBuilder::U8(b) => b.append_value(v as u8),
            ColumnBuilder::U16(b) => b.append_value(v as u16),
            ColumnBuilder::U32(b) => b.append_value(v as u32),
            ColumnBuilder::U64(b) => b.append_value(v),
            _ => unreachable!("an unsigned value for a column of another kind"),
        }
    }

    #[inline(always)]
    pub(super) fn append_i64(&mut self, v: i64) {
        match self {
            ColumnBuilder::I8(b) => b.append_value(v as i8),
            ColumnBuilder::I16(b) => b.append_value(v as i16),
            ColumnBuilder::I32(b) => b.append_value(v as i32),
            ColumnBuilder::I64(b) => b.append_value(v),
            _ => unreachable!("a signed value for a column of another kind"),
        }
    }

    #[inline(always)]
    pub(super) fn append_f64(&mut self, v: f64) {
        match self {
            ColumnBuilder::F32(b) => b.append_value(v as f32),
            ColumnBuilder::F64(b) => b.append_value(v),
            _ => unreachable!("a float for a column of another kind"),
        }
    }

    /// Text of a String or FixedString column; a FixedString value (already checked to fit) is
    /// padded with zero bytes, as ClickHouse pads it.
    #[inline]
    pub(super) fn append_str(&mut self, text: &str) {
        match self {
            ColumnBuilder::Str(b) => b.append_value(text),
            ColumnBuilder::Fixed(b, width) => {
                let mut padded = [0u8; 256];
                padded[..text.len()].copy_from_slice(text.as_bytes());
                b.append_value(&padded[..*width])
                    .expect("width checked before appending");
            }
            _ => unreachable!("text for a column of another kind"),
        }
    }

    pub(super) fn append_bytes16(&mut self, bytes: &[u8; 16]) {
        match self {
            ColumnBuilder::Fixed(b, 16) => b.append_value(bytes).expect("UUID is 16 bytes"),
            _ => unreachable!("a UUID for a column of another kind"),
        }
    }

    /// One list of an Array(String) column: the items are `text[start..end]`.
    pub(super) fn append_list(&mut self, text: &str, items: &[(u32, u32)]) {
        match self {
            ColumnBuilder::List(b) => {
                for &(start, end) in items {
                    b.values().append_value(&text[start as usize..end as usize]);
                }
                b.append(true);
            }
            _ => unreachable!("a list for a column of another kind"),
        }
    }

    pub(super) fn append_null(&mut self) {
        match self {
            ColumnBuilder::U8(b) => b.append_null(),
            ColumnBuilder::U16(b) => b.append_null(),
            ColumnBuilder::U32(b) => b.append_null(),
            ColumnBuilder::U64(b) => b.append_null(),
            ColumnBuilder::I8(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Str(b) => b.append_null(),
            ColumnBuilder::Fixed(b, _) => b.append_null(),
            ColumnBuilder::List(b) => b.append_null(),
        }
    }

    /// The value an absent, non-nullable column without a default gets: ClickHouse's default
    /// for `ch_type` (an Enum8's first variant, whose code need not be 0).
    pub(super) fn append_zero(&mut self, ch_type: &ChType) {
        match (self, ch_type.value_type()) {
            (b, ChType::Enum8(variants)) => b.append_i64(variants[0].1 as i64),
            (ColumnBuilder::Fixed(b, width), _) => {
                b.append_value(&[0u8; 256][..*width])
                    .expect("the builder's own width");
            }
            (ColumnBuilder::Str(b), _) => b.append_value(""),
            (ColumnBuilder::List(b), _) => b.append(true),
            (b @ (ColumnBuilder::F32(_) | ColumnBuilder::F64(_)), _) => b.append_f64(0.0),
            (
                b @ (ColumnBuilder::I8(_)
                | ColumnBuilder::I16(_)
                | ColumnBuilder::I32(_)
                | ColumnBuilder::I64(_)),
                _,
            ) => b.append_i64(0),
            (b, _) => b.append_u64(0),
        }
    }

    /// Values appended so far.
    pub(super) fn len(&self) -> usize {
        match self {
            ColumnBuilder::U8(b) => b.len(),
            ColumnBuilder::U16(b) => b.len(),
            ColumnBuilder::U32(b) => b.len(),
            ColumnBuilder::U64(b) => b.len(),
            ColumnBuilder::I8(b) => b.len(),
            ColumnBuilder::I16(b) => b.len(),
            ColumnBuilder::I32(b) => b.len(),
            ColumnBuilder::I64(b) => b.len(),
            ColumnBuilder::F32(b) => b.len(),
            ColumnBuilder::F64(b) => b.len(),
            ColumnBuilder::Str(b) => b.len(),
            ColumnBuilder::Fixed(b, _) => b.len(),
            ColumnBuilder::List(b) => b.len(),
        }
    }

    /// Bytes of text per value of a String column (`None` for other columns or none yet).
    pub(super) fn text_bytes_per_value(&self) -> Option<usize> {
        match self {
            ColumnBuilder::Str(b) if !b.is_empty() => {
                Some(b.values_slice().len().div_ceil(b.len()))
            }
            _ => None,
        }
    }

    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::U8(b) => b.finish(),
            ColumnBuilder::U16(b) => b.finish(),
            ColumnBuilder::U32(b) => b.finish(),
            ColumnBuilder::U64(b) => b.finish(),
            ColumnBuilder::I8(b) => b.finish(),
            ColumnBuilder::I16(b) => b.finish(),
            ColumnBuilder::I32(b) => b.finish(),
            ColumnBuilder::I64(b) => b.finish(),
            ColumnBuilder::F32(b) => b.finish(),
            ColumnBuilder::F64(b) => b.finish(),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::Fixed(b, _) => Arc::new(b.finish()),
            ColumnBuilder::List(b) => Arc::new(b.finish()),
        }
    }
}
