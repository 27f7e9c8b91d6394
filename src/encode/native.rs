//! ClickHouse Native format blocks from Arrow record batches.
//!
//! A block is `varint columns, varint rows`, then per column `string name, string type, data`
//! (integers little-endian, `varint` unsigned LEB128, `string` = varint length + bytes). A block
//! without rows carries no column data at all (ClickHouse neither writes nor reads any for
//! `rows = 0`). The Arrow representation of each ClickHouse type is the one the validator builds;
//! this module turns it into the column data:
//!
//! | ClickHouse | Arrow | Native data for n rows |
//! |---|---|---|
//! | (U)Int8–64, Float32/64 | primitive | n fixed-width values: the Arrow buffer as is |
//! | DateTime | UInt32 | n × UInt32 unix seconds |
//! | Enum8 | Int8 | n × Int8 codes (each checked against the declared codes) |
//! | String | Utf8, or Dictionary(Int16, Utf8) (the request-context columns; also inside Nullable and LowCardinality) | n × string |
//! | FixedString(N) | FixedSizeBinary(N) | n × N bytes: the Arrow buffer as is |
//! | UUID | FixedSizeBinary(16), RFC 4122 byte order | n × (UInt64 of bytes 0–7 read big-endian, UInt64 of bytes 8–15 read big-endian), each written little-endian |
//! | Nullable(T) | T with validity | n null-map bytes (1 = NULL), then T's data (whatever the buffer holds under a NULL) |
//! | Array(String) | List(Utf8), i32 offsets, items without nulls | n × UInt64 end offsets counted from this block's first item, then the items as strings |
//! | Array(T), T fixed-width | List(T), items without nulls | n × UInt64 end offsets as above, then the items' fixed-width values |
//! | LowCardinality(String) | Utf8 | UInt64 1 (key version), UInt64 flags 0x600 \| index width, UInt64 key count, keys as strings (`""`, the default, first), UInt64 n, n indexes |
//! | LowCardinality(Nullable(String)) | Utf8 with validity | as above, but the keys start with the NULL slot (written `""`) then the default `""`; index 0 is NULL |
//!
//! Sliced arrays (non-zero Arrow offset) are handled everywhere: every buffer is read through the
//! array's own offsets. A column that may not hold NULL but whose array has nulls is refused
//! rather than written as zero or `""`, so a validator bug cannot silently change data.
//!
//! The rows of a block are one batch as it is, or rows of several batches in a given order
//! ([`BlockRows::Gathered`]: the table's `ORDER BY` order). Gathered string columns, plain and
//! LowCardinality, are copied from the batches straight into the block; other columns are
//! gathered a column at a time, so the reordered rows are never held whole.
//!
//! Hot path: nothing is allocated per row. Fixed-width columns are one `extend_from_slice`;
//! strings are copied straight from Arrow's value buffer into `out`; the LowCardinality
//! dictionary borrows its keys from the array and its scratch space is reused across the
//! block's columns.

use std::fmt::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch, StringArray};
use arrow_buffer::{NullBuffer, ToByteSlice};
use arrow_schema::DataType;
// foldhash: one lookup per row of every LowCardinality column.
use hashbrown::HashMap;

use crate::schema::ChType;
use crate::text::{ShortStr, same_text};

/// A text column in either of the Arrow shapes the validator builds: Utf8, a value per row, or
/// a dictionary of Utf8 values with Int16 keys, which it builds for the request-context columns
/// (one value per request, so a row costs two bytes instead of its text and offset).
#[derive(Clone, Copy)]
pub(crate) enum Texts<'a> {
    Plain(&'a StringArray),
    Keyed {
        keys: &'a [i16],
        values: &'a StringArray,
        nulls: Option<&'a NullBuffer>,
    },
}

impl<'a> Texts<'a> {
    /// Whether an array of this type is text in one of the two shapes.
    pub(crate) fn accepts(data_type: &DataType) -> bool {
        match data_type {
            DataType::Utf8 => true,
            DataType::Dictionary(key, value) => {
                **key == DataType::Int16 && **value == DataType::Utf8
            }
            _ => false,
        }
    }

    /// The text of an array whose type [`Texts::accepts`] (see [`check_column`]).
    pub(crate) fn of(array: &'a dyn Array) -> Texts<'a> {
        match array.data_type() {
            DataType::Dictionary(..) => {
                let dictionary = array.as_dictionary::<Int16Type>();
                Texts::Keyed {
                    keys: dictionary.keys().values(),
                    values: dictionary.values().as_string::<i32>(),
                    nulls: dictionary.nulls(),
                }
            }
            _ => Texts::Plain(array.as_string::<i32>()),
        }
    }

    /// The row's text; under a NULL what the Utf8 buffer holds there, `""` in a dictionary.
    #[inline]
    pub(crate) fn value(&self, row: usize) -> &'a str {
        match *self {
            Texts::Plain(strings) => strings.value(row),
            Texts::Keyed {
                keys,
                values,
                nulls,
            } => match usize::try_from(keys[row]) {
                Ok(key) if key < values.len() && !nulls.is_some_and(|n| n.is_null(row)) => {
                    values.value(key)
                }
                _ => "",
            },
        }
    }

    /// Bytes of text in all rows, the room the Native strings need less their lengths (for a
    /// dictionary an estimate: its values' average length times the rows).
    fn text_bytes(&self) -> usize {
        match *self {
            Texts::Plain(strings) => {
                let offsets = strings.value_offsets();
                (offsets[offsets.len() - 1] - offsets[0]) as usize
            }
            Texts::Keyed { keys, values, .. } => {
                let offsets = values.value_offsets();
                let all = (offsets[offsets.len() - 1] - offsets[0]) as usize;
                all * keys.len() / values.len().max(1)
            }
        }
    }
}

/// One column of a Native block: the name and ClickHouse type written into the block header.
/// The `i`-th column describes the `i`-th array of the batch.
#[derive(Clone, Copy, Debug)]
pub struct NativeColumn<'a> {
    /// Column name as in the target table.
    pub name: &'a str,
    /// ClickHouse type; its `Display` form is the type string of the block header.
    pub ch_type: &'a ChType,
}

/// Why a batch cannot be written as a Native block.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("batch has {batch} columns but {described} columns were described")]
    ColumnCount { described: usize, batch: usize },
    #[error(
        "column {column:?}: Arrow type {arrow} cannot be written as ClickHouse type {clickhouse}"
    )]
    TypeMismatch {
        column: String,
        arrow: String,
        clickhouse: String,
    },
    #[error(
        "column {column:?}: {nulls} NULL value(s) in a column of type {clickhouse}, which cannot hold NULL"
    )]
    UnexpectedNull {
        column: String,
        clickhouse: String,
        nulls: usize,
    },
    #[error("column {column:?}: row {row}: code {code} is not a value of {clickhouse}")]
    UnknownEnumCode {
        column: String,
        row: usize,
        code: i8,
        clickhouse: String,
    },
    #[error("column {column:?}: {rows} rows are more than one LowCardinality block can index")]
    TooManyRows { column: String, rows: usize },
    #[error("column {column:?}: the rows cannot be gathered: {message}")]
    Gather { column: String, message: String },
}

/// The rows of one Native block.
#[derive(Clone, Copy, Debug)]
pub enum BlockRows<'a> {
    /// A batch's rows as they are.
    Batch(&'a RecordBatch),
    /// Rows of batches of one schema in this order: `(batch, row)` pairs, as
    /// `arrow_select::interleave` takes them.
    Gathered {
        batches: &'a [&'a RecordBatch],
        order: &'a [(usize, usize)],
    },
}

impl<'a> From<&'a RecordBatch> for BlockRows<'a> {
    fn from(batch: &'a RecordBatch) -> BlockRows<'a> {
        BlockRows::Batch(batch)
    }
}

impl BlockRows<'_> {
    fn num_rows(&self) -> usize {
        match self {
            BlockRows::Batch(batch) => batch.num_rows(),
            BlockRows::Gathered { order, .. } => order.len(),
        }
    }
}

/// Key version of the LowCardinality serialization ("shared dictionaries with additional keys").
const LOW_CARDINALITY_KEY_VERSION: u64 = 1;
/// Index flags: 0x200 "has additional keys" | 0x400 "needs dictionary update", as ClickHouse
/// writes them; the low byte is the index width (0 = UInt8 … 3 = UInt64).
const LOW_CARDINALITY_FLAGS: u64 = 0x600;

/// Appends one Native block (header and all columns) of `rows` (a `&RecordBatch` or
/// [`BlockRows`]) to `out`.
///
/// On error `out` is left as it was.
pub fn write_native_block<'a>(
    columns: &[NativeColumn<'_>],
    rows: impl Into<BlockRows<'a>>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write_block(columns, rows.into(), out, &mut |_| {});
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Writes one Native block of `rows` in pieces: `emit` receives every `chunk_bytes` of it in
/// order (the last piece may be shorter), so no more than about one column is held at once,
/// not the whole block. The pieces joined are the bytes [`write_native_block`] writes. On error
/// some pieces may have been emitted already.
///
/// `buffer` holds a column until it is emitted; it is cleared first. A caller that keeps it
/// from block to block writes into memory it already has: growing it a column at a time copied
/// and page-faulted each column anew.
pub fn write_native_block_chunked<'a>(
    columns: &[NativeColumn<'_>],
    rows: impl Into<BlockRows<'a>>,
    chunk_bytes: usize,
    buffer: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), EncodeError> {
    assert!(chunk_bytes > 0, "chunk_bytes must be positive");
    buffer.clear();
    let mut drain = |buffer: &mut Vec<u8>| {
        let whole = buffer.len() - buffer.len() % chunk_bytes;
        for chunk in buffer[..whole].chunks(chunk_bytes) {
            emit(chunk);
        }
        buffer.drain(..whole);
    };
    write_block(columns, rows.into(), buffer, &mut drain)?;
    if !buffer.is_empty() {
        emit(buffer);
    }
    buffer.clear();
    Ok(())
}

fn write_block<'a>(
    columns: &[NativeColumn<'_>],
    block: BlockRows<'a>,
    out: &mut Vec<u8>,
    after_column: &mut dyn FnMut(&mut Vec<u8>),
) -> Result<(), EncodeError> {
    let batches: &[&RecordBatch] = match &block {
        BlockRows::Batch(batch) => std::slice::from_ref(batch),
        BlockRows::Gathered { batches, .. } => batches,
    };
    if let Some(batch) = batches.iter().find(|b| b.num_columns() != columns.len()) {
        return Err(EncodeError::ColumnCount {
            described: columns.len(),
            batch: batch.num_columns(),
        });
    }
    let rows = block.num_rows();
    write_varint(out, columns.len() as u64);
    write_varint(out, rows as u64);
    let mut scratch = Scratch::default();
    let mut arrays: Vec<&'a dyn Array> = Vec::with_capacity(batches.len());
    for (index, column) in columns.iter().enumerate() {
        arrays.clear();
        arrays.extend(batches.iter().map(|batch| batch.column(index).as_ref()));
        for array in &arrays {
            check_column(column, *array)?;
        }
        write_string(out, column.name.as_bytes());
        scratch.type_name.clear();
        write!(scratch.type_name, "{}", column.ch_type).expect("writing to a String");
        write_string(out, scratch.type_name.as_bytes());
        if rows > 0 {
            match block {
                BlockRows::Batch(_) => {
                    write_column_data(column, column.ch_type, arrays[0], &mut scratch, out)?
                }
                BlockRows::Gathered { order, .. } => {
                    write_gathered(column, &arrays, order, &mut scratch, out)?
                }
            }
        }
        after_column(out);
    }
    Ok(())
}

/// Writes the data of a column whose rows are `order` of `arrays`: strings and numbers are
/// copied from the arrays into `out`, other types are gathered into one array first.
fn write_gathered<'a>(
    column: &NativeColumn<'_>,
    arrays: &[&'a dyn Array],
    order: &[(usize, usize)],
    scratch: &mut Scratch<'a>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let strings = || -> Vec<Texts<'a>> { arrays.iter().map(|a| Texts::of(*a)).collect() };
    match column.ch_type {
        ChType::String => write_gathered_strings(&strings(), order, out),
        ChType::Nullable(inner) if **inner == ChType::String => {
            out.extend(order.iter().map(|&(b, r)| u8::from(arrays[b].is_null(r))));
            write_gathered_strings(&strings(), order, out);
        }
        ChType::LowCardinality(inner) => {
            write_gathered_low_cardinality(
                column,
                arrays,
                &strings(),
                order,
                inner.is_nullable(),
                scratch,
                out,
            )?;
        }
        ch_type => {
            let number = match ch_type {
                ChType::Nullable(inner) => inner,
                ch_type => ch_type,
            };
            if let Some(gather) = number_gather(number) {
                if let ChType::Enum8(variants) = number {
                    for array in arrays {
                        check_enum_codes(column, variants, *array)?;
                    }
                }
                if number != ch_type {
                    out.extend(order.iter().map(|&(b, r)| u8::from(arrays[b].is_null(r))));
                }
                gather(arrays, order, out);
                return Ok(());
            }
            let array = arrow_select::interleave::interleave(arrays, order).map_err(|err| {
                EncodeError::Gather {
                    column: column.name.to_string(),
                    message: err.to_string(),
                }
            })?;
            write_column_data(
                column,
                ch_type,
                array.as_ref(),
                &mut Scratch::default(),
                out,
            )?;
        }
    }
    Ok(())
}

/// Writes the values at `order` (batch, row) of one column's arrays to a block.
type GatherNumbers = fn(&[&dyn Array], &[(usize, usize)], &mut Vec<u8>);

/// How the values at `order` of a block's arrays of fixed-width numbers are written: copied
/// straight from the batches, with no gathered array in between. None for other types, and on
/// a big-endian machine (there the values are gathered into an array and written as one).
fn number_gather(ch_type: &ChType) -> Option<GatherNumbers> {
    fn gather<T: ArrowPrimitiveType>(
        arrays: &[&dyn Array],
        order: &[(usize, usize)],
        out: &mut Vec<u8>,
    ) {
        let values: Vec<&[T::Native]> = arrays
            .iter()
            .map(|array| array.as_primitive::<T>().values().as_ref())
            .collect();
        out.reserve(order.len() * std::mem::size_of::<T::Native>());
        for &(batch, row) in order {
            out.extend_from_slice(std::slice::from_ref(&values[batch][row]).to_byte_slice());
        }
    }
    if cfg!(target_endian = "big") {
        return None;
    }
    Some(match ch_type {
        ChType::Enum8(_) | ChType::Int8 => gather::<Int8Type>,
        ChType::UInt8 => gather::<UInt8Type>,
        ChType::UInt16 => gather::<UInt16Type>,
        ChType::UInt32 | ChType::DateTime => gather::<UInt32Type>,
        ChType::UInt64 => gather::<UInt64Type>,
        ChType::Int16 => gather::<Int16Type>,
        ChType::Int32 => gather::<Int32Type>,
        ChType::Int64 => gather::<Int64Type>,
        ChType::Float32 => gather::<Float32Type>,
        ChType::Float64 => gather::<Float64Type>,
        _ => return None,
    })
}

/// The strings at `order` of `strings` as Native strings.
fn write_gathered_strings(strings: &[Texts<'_>], order: &[(usize, usize)], out: &mut Vec<u8>) {
    let bytes: usize = strings.iter().map(Texts::text_bytes).sum();
    out.reserve(bytes + order.len());
    // The rows come from the batches in key order, so each value is a cache miss of its own:
    // the offsets of the row AHEAD rows on, and the text of the row half as far on, are fetched
    // while this one is copied (a dictionary's one value stays in the cache).
    const AHEAD: usize = 16;
    for (at, &(batch, row)) in order.iter().enumerate() {
        if let Some(&(batch, row)) = order.get(at + AHEAD)
            && let Texts::Plain(array) = strings[batch]
        {
            prefetch(array.value_offsets()[row..].as_ptr());
        }
        if let Some(&(batch, row)) = order.get(at + AHEAD / 2)
            && let Texts::Plain(array) = strings[batch]
        {
            prefetch(array.values()[array.value_offsets()[row] as usize..].as_ptr());
        }
        write_string(out, strings[batch].value(row).as_bytes());
    }
}

/// A hint to bring the cache line at `at` in; it never faults and has no other effect.
#[inline(always)]
fn prefetch<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it reads nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// A gathered LowCardinality column. The values are looked up batch by batch, in the batches'
/// own order: memory is read in sequence, and a row that repeats the previous row's value (as
/// the request context columns always do) costs a comparison, not a hash. The dictionary is then
/// numbered in `order`, so the block is the one [`write_low_cardinality`] writes for the
/// gathered rows.
fn write_gathered_low_cardinality<'a>(
    column: &NativeColumn<'_>,
    arrays: &[&'a dyn Array],
    strings: &[Texts<'a>],
    order: &[(usize, usize)],
    nullable: bool,
    scratch: &mut Scratch<'a>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    const NULL: u32 = u32::MAX;
    const EMPTY: u32 = u32::MAX - 1;
    let rows = order.len();
    let reserved = low_cardinality_reserved(column, rows, nullable)?;
    let Scratch {
        dictionary,
        keys,
        indexes,
        first_row,
        found,
        renumber,
        mapped,
        ..
    } = scratch;
    // Every row of every batch as an index into `keys`, in the batches' order.
    dictionary.clear();
    keys.clear();
    first_row.clear();
    found.clear();
    for (array, texts) in arrays.iter().zip(strings) {
        first_row.push(found.len());
        let nulls = array.nulls().filter(|nulls| nulls.null_count() > 0);
        let array = match *texts {
            Texts::Plain(array) => array,
            Texts::Keyed {
                keys: rows, values, ..
            } => {
                // One lookup per dictionary value, not per row.
                mapped.clear();
                mapped.extend((0..values.len()).map(|key| match values.value(key) {
                    "" => EMPTY,
                    value => *dictionary.entry(ShortStr(value)).or_insert_with(|| {
                        keys.push(value);
                        keys.len() as u32 - 1
                    }),
                }));
                found.extend(rows.iter().enumerate().map(|(row, &key)| {
                    if nulls.is_some_and(|nulls| nulls.is_null(row)) {
                        return NULL;
                    }
                    let key = usize::try_from(key).ok();
                    key.and_then(|key| mapped.get(key))
                        .copied()
                        .unwrap_or(EMPTY)
                }));
                continue;
            }
        };
        let mut previous: Option<(&str, u32)> = None;
        for row in 0..array.len() {
            if nulls.is_some_and(|nulls| nulls.is_null(row)) {
                found.push(NULL);
                continue;
            }
            let value = array.value(row);
            let index = match previous {
                Some((last, index)) if same_text(last, value) => index,
                _ if value.is_empty() => EMPTY,
                _ => *dictionary.entry(ShortStr(value)).or_insert_with(|| {
                    keys.push(value);
                    keys.len() as u32 - 1
                }),
            };
            previous = Some((value, index));
            found.push(index);
        }
    }
    // The block's dictionary numbers the values in order of first appearance among the rows.
    let default_index = reserved - 1;
    renumber.clear();
    renumber.resize(keys.len(), NULL);
    let mut block_keys = 0u32;
    indexes.clear();
    indexes.reserve(rows);
    for &(batch, row) in order {
        let index = match found[first_row[batch] + row] {
            NULL => 0,
            EMPTY => default_index,
            key => {
                let slot = &mut renumber[key as usize];
                if *slot == NULL {
                    *slot = block_keys;
                    block_keys += 1;
                }
                reserved + *slot
            }
        };
        indexes.push(index);
    }
    // Dictionary keys in the block's numbering.
    let mut block_order: Vec<&str> = vec![""; block_keys as usize];
    for (key, &slot) in keys.iter().zip(renumber.iter()) {
        if slot != NULL {
            block_order[slot as usize] = key;
        }
    }
    write_low_cardinality_data(reserved, &block_order, indexes, out);
    Ok(())
}

/// Buffers reused across the columns of one block.
#[derive(Default)]
struct Scratch<'a> {
    /// The type string of the current column.
    type_name: String,
    /// LowCardinality: distinct non-empty values of the column → their dictionary index.
    dictionary: HashMap<ShortStr<'a>, u32>,
    /// LowCardinality: the same values in index order.
    keys: Vec<&'a str>,
    /// LowCardinality: one dictionary index per row.
    indexes: Vec<u32>,
    /// Gathered LowCardinality: where each batch's rows start in `found`.
    first_row: Vec<usize>,
    /// Gathered LowCardinality: each row's index into `keys`, batch after batch.
    found: Vec<u32>,
    /// Gathered LowCardinality: `keys` index → block dictionary index.
    renumber: Vec<u32>,
    /// Gathered LowCardinality: a dictionary array's values → their index into `keys`.
    mapped: Vec<u32>,
}

/// Checks that the Arrow type is the one the validator builds for the column's ClickHouse type
/// and that a column which cannot hold NULL has none.
fn check_column(column: &NativeColumn<'_>, array: &dyn Array) -> Result<(), EncodeError> {
    if !arrow_type_fits(column.ch_type.value_type(), array.data_type()) {
        return Err(EncodeError::TypeMismatch {
            column: column.name.to_string(),
            arrow: array.data_type().to_string(),
            clickhouse: column.ch_type.to_string(),
        });
    }
    let nulls = array.null_count();
    if nulls > 0 && !column.ch_type.is_nullable() {
        return Err(unexpected_null(column, nulls));
    }
    if let ChType::Array(_) = column.ch_type {
        let list = array.as_list::<i32>();
        let offsets = list.value_offsets();
        let first = offsets[0] as usize;
        let items = offsets[offsets.len() - 1] as usize - first;
        let nulls = list.values().slice(first, items).null_count();
        if nulls > 0 {
            return Err(unexpected_null(column, nulls));
        }
    }
    Ok(())
}

fn unexpected_null(column: &NativeColumn<'_>, nulls: usize) -> EncodeError {
    EncodeError::UnexpectedNull {
        column: column.name.to_string(),
        clickhouse: column.ch_type.to_string(),
        nulls,
    }
}

/// Whether `data_type` is the Arrow representation of `value_type` (a type without
/// Nullable/LowCardinality around it).
fn arrow_type_fits(value_type: &ChType, data_type: &DataType) -> bool {
    match (value_type, data_type) {
        (ChType::String, data_type) => Texts::accepts(data_type),
        (ChType::FixedString(width), DataType::FixedSizeBinary(w)) => *w as usize == *width,
        (ChType::UUID, DataType::FixedSizeBinary(16)) => true,
        (ChType::UInt8, DataType::UInt8)
        | (ChType::UInt16, DataType::UInt16)
        | (ChType::UInt32 | ChType::DateTime, DataType::UInt32)
        | (ChType::UInt64, DataType::UInt64)
        | (ChType::Int8 | ChType::Enum8(_), DataType::Int8)
        | (ChType::Int16, DataType::Int16)
        | (ChType::Int32, DataType::Int32)
        | (ChType::Int64, DataType::Int64)
        | (ChType::Float32, DataType::Float32)
        | (ChType::Float64, DataType::Float64) => true,
        (ChType::Array(item), DataType::List(field)) => {
            !matches!(
                **item,
                ChType::Array(_) | ChType::Nullable(_) | ChType::LowCardinality(_)
            ) && !matches!(field.data_type(), DataType::Dictionary(..))
                && arrow_type_fits(item, field.data_type())
        }
        _ => false,
    }
}

/// Writes the data of a column with at least one row whose Arrow type [`check_column`] accepted.
fn write_column_data<'a>(
    column: &NativeColumn<'_>,
    ch_type: &ChType,
    array: &'a dyn Array,
    scratch: &mut Scratch<'a>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match ch_type {
        ChType::Nullable(inner) => {
            write_null_map(array, out);
            write_column_data(column, inner, array, scratch, out)?;
        }
        ChType::LowCardinality(inner) => {
            let strings = Texts::of(array);
            // check_column refused nulls unless the type is nullable.
            let nulls = array.nulls().filter(|nulls| nulls.null_count() > 0);
            let values = (0..array.len()).map(|row| {
                (!nulls.is_some_and(|nulls| nulls.is_null(row))).then(|| strings.value(row))
            });
            write_low_cardinality(column, values, inner.is_nullable(), scratch, out)?;
        }
        ChType::String => match Texts::of(array) {
            Texts::Plain(strings) => write_strings(strings.value_offsets(), strings.values(), out),
            keyed => {
                out.reserve(keyed.text_bytes() + array.len());
                for row in 0..array.len() {
                    write_string(out, keyed.value(row).as_bytes());
                }
            }
        },
        // Arrow keeps a sliced FixedSizeBinary buffer cut to exactly `len × width` bytes.
        ChType::FixedString(_) => out.extend_from_slice(array.as_fixed_size_binary().value_data()),
        ChType::UUID => write_uuids(array.as_fixed_size_binary().value_data(), out),
        ChType::Array(item) if **item == ChType::String => write_string_lists(array, out),
        ChType::Array(item) => {
            let list = array.as_list::<i32>();
            let offsets = list.value_offsets();
            let first = offsets[0];
            let last = offsets[offsets.len() - 1];
            out.reserve((offsets.len() - 1) * 8);
            for &end in &offsets[1..] {
                out.extend_from_slice(&((end - first) as u64).to_le_bytes());
            }
            let items = list.values().slice(first as usize, (last - first) as usize);
            write_column_data(column, item, items.as_ref(), &mut Scratch::default(), out)?;
        }
        ChType::Enum8(variants) => {
            check_enum_codes(column, variants, array)?;
            write_primitive::<Int8Type>(array, out);
        }
        ChType::UInt8 => write_primitive::<UInt8Type>(array, out),
        ChType::UInt16 => write_primitive::<UInt16Type>(array, out),
        ChType::UInt32 | ChType::DateTime => write_primitive::<UInt32Type>(array, out),
        ChType::UInt64 => write_primitive::<UInt64Type>(array, out),
        ChType::Int8 => write_primitive::<Int8Type>(array, out),
        ChType::Int16 => write_primitive::<Int16Type>(array, out),
        ChType::Int32 => write_primitive::<Int32Type>(array, out),
        ChType::Int64 => write_primitive::<Int64Type>(array, out),
        ChType::Float32 => write_primitive::<Float32Type>(array, out),
        ChType::Float64 => write_primitive::<Float64Type>(array, out),
    }
    Ok(())
}

/// UUIDs in RFC 4122 byte order (16 bytes each) as ClickHouse's two UInt64: the number the
/// first 8 bytes spell big-endian, then the number of the last 8, each written little-endian.
fn write_uuids(values: &[u8], out: &mut Vec<u8>) {
    out.reserve(values.len());
    for uuid in values.chunks_exact(16) {
        let (high, low) = uuid.split_at(8);
        let high = u64::from_be_bytes(high.try_into().expect("8 bytes"));
        let low = u64::from_be_bytes(low.try_into().expect("8 bytes"));
        out.extend_from_slice(&high.to_le_bytes());
        out.extend_from_slice(&low.to_le_bytes());
    }
}

/// Array(String): UInt64 end offsets counted from the block's first item, then the items.
fn write_string_lists(array: &dyn Array, out: &mut Vec<u8>) {
    let list = array.as_list::<i32>();
    // A sliced list keeps the whole item array: its offsets need not start at 0.
    let offsets = list.value_offsets();
    let first = offsets[0];
    let last = offsets[offsets.len() - 1];
    out.reserve((offsets.len() - 1) * 8);
    for &end in &offsets[1..] {
        out.extend_from_slice(&((end - first) as u64).to_le_bytes());
    }
    // The item array may itself be sliced: read it through its own offsets.
    let items = list.values().as_string::<i32>();
    let item_offsets = &items.value_offsets()[first as usize..=last as usize];
    write_strings(item_offsets, items.values(), out);
}

/// Refuses a code that the Enum8 does not declare: ClickHouse would store it, and every later
/// read of the row would fail. Codes under NULLs are not looked at.
fn check_enum_codes(
    column: &NativeColumn<'_>,
    variants: &[(String, i8)],
    array: &dyn Array,
) -> Result<(), EncodeError> {
    let codes = array.as_primitive::<Int8Type>();
    let mut declared = [false; 256];
    for (_, code) in variants {
        declared[*code as u8 as usize] = true;
    }
    let unknown = codes
        .values()
        .iter()
        .enumerate()
        .find(|(row, code)| !declared[**code as u8 as usize] && codes.is_valid(*row));
    match unknown {
        None => Ok(()),
        Some((row, &code)) => Err(EncodeError::UnknownEnumCode {
            column: column.name.to_string(),
            row,
            code,
            clickhouse: column.ch_type.to_string(),
        }),
    }
}

/// The null map of a Nullable column: one byte per row, 1 = NULL.
fn write_null_map(array: &dyn Array, out: &mut Vec<u8>) {
    match array.nulls() {
        None => out.resize(out.len() + array.len(), 0),
        Some(nulls) => out.extend(nulls.iter().map(|valid| u8::from(!valid))),
    }
}

/// Fixed-width values. Arrow's (sliced) value buffer is the Native layout on a little-endian
/// machine; values under NULLs are whatever the builder left there, which ClickHouse ignores.
fn write_primitive<T: ArrowPrimitiveType>(array: &dyn Array, out: &mut Vec<u8>)
where
    T::Native: LittleEndian,
{
    let values = array.as_primitive::<T>().values();
    if cfg!(target_endian = "little") {
        out.extend_from_slice(values.inner().as_slice());
    } else {
        out.reserve(std::mem::size_of_val(values.as_ref()));
        for value in values.iter() {
            value.write_le(out);
        }
    }
}

/// Little-endian bytes of a primitive value; only used on big-endian machines.
trait LittleEndian {
    fn write_le(&self, out: &mut Vec<u8>);
}

macro_rules! little_endian {
    ($($t:ty),*) => {$(
        impl LittleEndian for $t {
            fn write_le(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
little_endian!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

/// Writes the strings `data[offsets[i]..offsets[i + 1]]` as Native strings.
fn write_strings(offsets: &[i32], data: &[u8], out: &mut Vec<u8>) {
    let rows = offsets.len() - 1;
    let bytes = (offsets[rows] - offsets[0]) as usize;
    out.reserve(bytes + rows);
    for bounds in offsets.windows(2) {
        let value = &data[bounds[0] as usize..bounds[1] as usize];
        write_varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// LowCardinality(String) and LowCardinality(Nullable(String)): the dictionary of this block's
/// distinct values (the reserved slots first, then the values in order of first appearance) and
/// one index per row in the narrowest width that holds the largest index. `values` has one item
/// per row, `None` for NULL.
fn write_low_cardinality<'a>(
    column: &NativeColumn<'_>,
    values: impl ExactSizeIterator<Item = Option<&'a str>>,
    nullable: bool,
    scratch: &mut Scratch<'a>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let rows = values.len();
    let reserved = low_cardinality_reserved(column, rows, nullable)?;
    let default_index = reserved - 1;
    let Scratch {
        dictionary,
        keys,
        indexes,
        ..
    } = scratch;
    dictionary.clear();
    keys.clear();
    indexes.clear();
    indexes.reserve(rows);
    for value in values {
        // check_column refused nulls unless the type is nullable, so index 0 is the NULL slot.
        let Some(value) = value else {
            indexes.push(0);
            continue;
        };
        let index = if value.is_empty() {
            default_index
        } else {
            *dictionary.entry(ShortStr(value)).or_insert_with(|| {
                keys.push(value);
                reserved + keys.len() as u32 - 1
            })
        };
        indexes.push(index);
    }
    write_low_cardinality_data(reserved, keys, indexes, out);
    Ok(())
}

/// The reserved keys of a LowCardinality dictionary: [NULL slot,] the default `""`. Every row
/// can add at most one key, so the rows must leave room for them in a UInt32 index.
fn low_cardinality_reserved(
    column: &NativeColumn<'_>,
    rows: usize,
    nullable: bool,
) -> Result<u32, EncodeError> {
    let reserved: u32 = if nullable { 2 } else { 1 };
    if rows > (u32::MAX - reserved) as usize {
        return Err(EncodeError::TooManyRows {
            column: column.name.to_string(),
            rows,
        });
    }
    Ok(reserved)
}

/// The LowCardinality column data: the reserved keys, then `keys`, then one index per row in
/// the narrowest width that holds the largest index.
fn write_low_cardinality_data(reserved: u32, keys: &[&str], indexes: &[u32], out: &mut Vec<u8>) {
    let rows = indexes.len();
    let key_count = u64::from(reserved) + keys.len() as u64;
    let index_width: u64 = if key_count <= 1 << 8 {
        0
    } else if key_count <= 1 << 16 {
        1
    } else {
        2
    };
    out.extend_from_slice(&LOW_CARDINALITY_KEY_VERSION.to_le_bytes());
    out.extend_from_slice(&(LOW_CARDINALITY_FLAGS | index_width).to_le_bytes());
    out.extend_from_slice(&key_count.to_le_bytes());
    for _ in 0..reserved {
        write_string(out, b"");
    }
    for key in keys.iter() {
        write_string(out, key.as_bytes());
    }
    out.extend_from_slice(&(rows as u64).to_le_bytes());
    match index_width {
        0 => out.extend(indexes.iter().map(|&index| index as u8)),
        1 => {
            out.reserve(rows * 2);
            for &index in indexes.iter() {
                out.extend_from_slice(&(index as u16).to_le_bytes());
            }
        }
        _ => {
            out.reserve(rows * 4);
            for &index in indexes.iter() {
                out.extend_from_slice(&index.to_le_bytes());
            }
        }
    }
}

/// Unsigned LEB128.
fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Varint length, then the bytes.
fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::Arc;

    use arrow_array::builder::{FixedSizeBinaryBuilder, ListBuilder, StringBuilder};
    use arrow_array::{
        ArrayRef, DictionaryArray, FixedSizeBinaryArray, Float32Array, Float64Array, Int8Array,
        Int16Array, Int32Array, Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
    };

    use super::*;

    fn types(columns: &[(&str, &str)]) -> Vec<ChType> {
        columns
            .iter()
            .map(|(_, ty)| ChType::parse(ty).unwrap())
            .collect()
    }

    /// The columns `(name, type string)` as described, with their parsed `types`.
    fn described<'a>(columns: &[(&'a str, &str)], types: &'a [ChType]) -> Vec<NativeColumn<'a>> {
        columns
            .iter()
            .zip(types)
            .map(|((name, _), ch_type)| NativeColumn { name, ch_type })
            .collect()
    }

    fn encode(columns: &[(&str, &str)], arrays: Vec<ArrayRef>) -> Result<Vec<u8>, EncodeError> {
        let types = types(columns);
        let native_columns = described(columns, &types);
        let batch =
            RecordBatch::try_from_iter(columns.iter().map(|(name, _)| *name).zip(arrays)).unwrap();
        let mut out = Vec::new();
        write_native_block(&native_columns, &batch, &mut out)?;
        Ok(out)
    }

    /// The data of a single column named "c" of type `ch_type`, after the block header.
    fn data(ch_type: &str, array: ArrayRef) -> Vec<u8> {
        let rows = array.len();
        let out = encode(&[("c", ch_type)], vec![array]).unwrap();
        let mut header = Vec::new();
        write_varint(&mut header, 1);
        write_varint(&mut header, rows as u64);
        write_string(&mut header, b"c");
        write_string(&mut header, ch_type.as_bytes());
        assert_eq!(&out[..header.len()], header, "block header");
        out[header.len()..].to_vec()
    }

    fn u64s(values: &[u64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn strings(values: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for value in values {
            write_string(&mut out, value.as_bytes());
        }
        out
    }

    fn list(rows: &[&[&str]]) -> ListBuilder<StringBuilder> {
        let mut builder = ListBuilder::new(StringBuilder::new());
        for row in rows {
            for item in *row {
                builder.values().append_value(item);
            }
            builder.append(true);
        }
        builder
    }

    /// A FixedSizeBinary array of `width`, also when empty (which `try_from_iter` refuses).
    fn fixed<'v>(width: i32, values: impl IntoIterator<Item = &'v [u8]>) -> FixedSizeBinaryArray {
        let mut builder = FixedSizeBinaryBuilder::new(width);
        for value in values {
            builder.append_value(value).unwrap();
        }
        builder.finish()
    }

    #[test]
    fn a_block_written_in_pieces_is_the_block_written_whole() {
        let batch = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec!["alpha", "", "gamma-delta", "é"])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(UInt64Array::from(vec![1, 2, 3, u64::MAX])) as ArrayRef,
            ),
            (
                "lc",
                Arc::new(StringArray::from(vec!["x", "y", "x", "x"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let (string, uint, low) = (
            ChType::String,
            ChType::UInt64,
            ChType::LowCardinality(Box::new(ChType::String)),
        );
        let columns = [
            NativeColumn {
                name: "s",
                ch_type: &string,
            },
            NativeColumn {
                name: "n",
                ch_type: &uint,
            },
            NativeColumn {
                name: "lc",
                ch_type: &low,
            },
        ];
        let mut whole = Vec::new();
        write_native_block(&columns, &batch, &mut whole).unwrap();
        // One buffer for every block, as a caller keeps it; what it held before is not written.
        let mut buffer = b"left over".to_vec();
        for chunk_bytes in [1, 7, 64, whole.len(), whole.len() + 1] {
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            write_native_block_chunked(&columns, &batch, chunk_bytes, &mut buffer, |piece| {
                pieces.push(piece.to_vec())
            })
            .unwrap();
            let (last, full) = pieces.split_last().unwrap();
            assert!(
                full.iter().all(|p| p.len() == chunk_bytes),
                "chunk {chunk_bytes}"
            );
            assert!(
                !last.is_empty() && last.len() <= chunk_bytes,
                "chunk {chunk_bytes}"
            );
            assert_eq!(pieces.concat(), whole, "chunk {chunk_bytes}");
        }
    }

    /// The request-context columns come as a dictionary (Int16 keys) of one value per request,
    /// several once parts of a body are joined: their block is the block of the same text as
    /// plain Utf8, alone and gathered from batches with different dictionaries.
    #[test]
    fn a_dictionary_column_is_written_as_its_text() {
        let columns = [
            ("s", "String"),
            ("ns", "Nullable(String)"),
            ("lc", "LowCardinality(String)"),
            ("lcn", "LowCardinality(Nullable(String))"),
        ];
        let types = types(&columns);
        let native = described(&columns, &types);
        let text =
            |rows: &[Option<&str>]| -> ArrayRef { Arc::new(StringArray::from(rows.to_vec())) };
        let keyed = |values: &[&str], keys: &[Option<i16>]| -> ArrayRef {
            Arc::new(DictionaryArray::<Int16Type>::new(
                Int16Array::from(keys.to_vec()),
                Arc::new(StringArray::from(values.to_vec())),
            ))
        };
        // A NULL only where the column is Nullable; the same text in the same places otherwise.
        let batch = |make: &dyn Fn(bool) -> ArrayRef| {
            let arrays: Vec<ArrayRef> = vec![make(false), make(true), make(false), make(true)];
            RecordBatch::try_from_iter(columns.iter().map(|(name, _)| *name).zip(arrays)).unwrap()
        };
        let a_text = batch(&|nullable| {
            text(&[
                Some("edge-a"),
                Some(""),
                if nullable { None } else { Some("b") },
                Some("edge-a"),
            ])
        });
        let a_keyed = batch(&|nullable| {
            keyed(
                &["edge-a", "", "b"],
                &[
                    Some(0),
                    Some(1),
                    if nullable { None } else { Some(2) },
                    Some(0),
                ],
            )
        });
        let b_text =
            batch(&|_| text(&[Some("ignored"), Some("日本"), Some("日本"), Some("edge-a")]));
        let b_keyed = batch(&|_| keyed(&["edge-a", "日本"], &[Some(0), Some(1), Some(1), Some(0)]));
        // Sliced: the keys do not start at offset 0.
        let (b_text, b_keyed) = (b_text.slice(1, 3), b_keyed.slice(1, 3));
        for (plain, dictionary) in [(&a_text, &a_keyed), (&b_text, &b_keyed)] {
            let (mut expected, mut got) = (Vec::new(), Vec::new());
            write_native_block(&native, plain, &mut expected).unwrap();
            write_native_block(&native, dictionary, &mut got).unwrap();
            assert_eq!(got, expected);
        }
        let order = [(1, 0), (0, 2), (0, 0), (1, 2), (0, 1), (1, 1), (0, 3)];
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        let plain = BlockRows::Gathered {
            batches: &[&a_text, &b_text],
            order: &order,
        };
        write_native_block(&native, plain, &mut expected).unwrap();
        let dictionary = BlockRows::Gathered {
            batches: &[&a_keyed, &b_keyed],
            order: &order,
        };
        write_native_block(&native, dictionary, &mut got).unwrap();
        assert_eq!(got, expected);
        // A dictionary of other keys or values is not text the encoder knows.
        let wide: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(
            Int32Array::from(vec![0]),
            Arc::new(StringArray::from(vec!["x"])),
        ));
        let one = [NativeColumn {
            name: "s",
            ch_type: &types[0],
        }];
        let wide = RecordBatch::try_from_iter([("s", wide)]).unwrap();
        assert!(matches!(
            write_native_block(&one, &wide, &mut Vec::new()),
            Err(EncodeError::TypeMismatch { .. })
        ));
    }

    #[test]
    fn a_gathered_block_is_the_block_of_the_reordered_rows() {
        let columns = [
            ("s", "String"),
            ("ns", "Nullable(String)"),
            ("lc", "LowCardinality(String)"),
            ("lcn", "LowCardinality(Nullable(String))"),
            ("n", "UInt32"),
            ("nn", "Nullable(Int64)"),
            ("a", "Array(String)"),
            ("u", "UUID"),
            ("e", "Enum8('a' = 1, 'b' = 2)"),
            ("f", "Float64"),
        ];
        let types = types(&columns);
        let native = described(&columns, &types);
        let batch = |rows: &[(&str, Option<&str>, u32, Option<i64>)]| {
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.get(..1).unwrap_or("")),
                )),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.3))),
                Arc::new(
                    list(
                        &rows
                            .iter()
                            .map(|r| vec![r.0; r.2 as usize % 3])
                            .collect::<Vec<_>>()
                            .iter()
                            .map(|v| v.as_slice())
                            .collect::<Vec<_>>(),
                    )
                    .finish(),
                ),
                Arc::new(fixed(
                    16,
                    rows.iter()
                        .map(|r| [r.2 as u8; 16])
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|v| v.as_slice()),
                )),
                Arc::new(Int8Array::from_iter_values(
                    rows.iter().map(|r| (r.2 % 2 + 1) as i8),
                )),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| r.2 as f64 / 4.0),
                )),
            ];
            RecordBatch::try_from_iter(columns.iter().map(|(name, _)| *name).zip(arrays)).unwrap()
        };
        let a = batch(&[
            ("bravo", Some("x"), 7, None),
            ("alpha", None, 1, Some(-5)),
            ("alfa", None, 5, Some(6)),
            ("", Some(""), 2, Some(9)),
        ]);
        let b = batch(&[
            ("zulu", Some("z"), 9, Some(2)),
            ("charlie", Some("y"), 3, Some(1)),
            ("alpha", None, 4, None),
        ]);
        // The second batch sliced: its arrays do not start at offset 0.
        let b = b.slice(1, 2);
        // Rows 1 and 2 of the first batch repeat a LowCardinality value; the block takes them apart.
        let order = [(1, 1), (0, 1), (0, 0), (1, 0), (0, 3), (0, 2)];
        let gathered = BlockRows::Gathered {
            batches: &[&a, &b],
            order: &order,
        };
        let reordered: Vec<ArrayRef> = (0..columns.len())
            .map(|c| {
                let arrays = [a.column(c).as_ref(), b.column(c).as_ref()];
                arrow_select::interleave::interleave(&arrays, &order).unwrap()
            })
            .collect();
        let reordered = RecordBatch::try_new(a.schema(), reordered).unwrap();
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        write_native_block(&native, &reordered, &mut expected).unwrap();
        write_native_block(&native, gathered, &mut got).unwrap();
        assert_eq!(got, expected);
        // A NULL in a column that cannot hold one is refused in a gathered block too.
        let mut strict = types.clone();
        strict[1] = ChType::String;
        let strict = described(&columns, &strict);
        assert!(matches!(
            write_native_block(&strict, gathered, &mut Vec::new()),
            Err(EncodeError::UnexpectedNull { .. })
        ));
        // So is an Enum8 code the type does not name.
        let mut narrow = types.clone();
        narrow[8] = ChType::parse("Enum8('a' = 1)").unwrap();
        let narrow = described(&columns, &narrow);
        assert!(matches!(
            write_native_block(&narrow, gathered, &mut Vec::new()),
            Err(EncodeError::UnknownEnumCode { .. })
        ));
    }

    #[test]
    fn block_header_and_primitive_column() {
        let out = encode(
            &[("c", "UInt16")],
            vec![Arc::new(UInt16Array::from(vec![1, 0x0203]))],
        )
        .unwrap();
        assert_eq!(
            out,
            [
                1, 2, 1, b'c', 6, b'U', b'I', b'n', b't', b'1', b'6', 1, 0, 3, 2
            ]
        );
    }

    #[test]
    fn varints_are_leb128() {
        for (value, bytes) in [
            (0u64, &[0u8][..]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
        }
        let rows = data("UInt8", Arc::new(UInt8Array::from(vec![7; 200])));
        assert_eq!(rows, vec![7; 200]);
    }

    #[test]
    fn primitives_are_little_endian_and_respect_slices() {
        let sliced = |array: ArrayRef| array.slice(1, 2);
        assert_eq!(
            data(
                "DateTime",
                sliced(Arc::new(UInt32Array::from(vec![7, 1_500_000_000, 9])))
            ),
            [0x00, 0x2f, 0x68, 0x59, 9, 0, 0, 0]
        );
        assert_eq!(
            data("Int64", sliced(Arc::new(Int64Array::from(vec![1, -2, 3])))),
            [
                0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(
            data(
                "Int16",
                sliced(Arc::new(Int16Array::from(vec![1, -2, 0x0304])))
            ),
            [0xfe, 0xff, 0x04, 0x03]
        );
        assert_eq!(
            data(
                "Float32",
                sliced(Arc::new(Float32Array::from(vec![0.0, 1.0, -2.5])))
            ),
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
        assert_eq!(
            data(
                "Float64",
                sliced(Arc::new(Float64Array::from(vec![0.0, 0.5, 1e300])))
            ),
            [0.5f64.to_le_bytes(), 1e300f64.to_le_bytes()].concat()
        );
        assert_eq!(
            data(
                "UInt64",
                sliced(Arc::new(UInt64Array::from(vec![0, u64::MAX, 1])))
            ),
            u64s(&[u64::MAX, 1])
        );
        assert_eq!(
            data(
                "Int32",
                sliced(Arc::new(Int32Array::from(vec![0, i32::MIN, 1])))
            ),
            [0, 0, 0, 0x80, 1, 0, 0, 0]
        );
    }

    #[test]
    fn uuid_matches_the_documented_example() {
        let uuid = uuid::Uuid::parse_str("61f0c404-5cb3-11e7-907b-a6006ad3dba0").unwrap();
        let other = uuid::Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        let array =
            FixedSizeBinaryArray::try_from_iter([other.as_bytes(), uuid.as_bytes()].into_iter())
                .unwrap();
        assert_eq!(
            data("UUID", Arc::new(array.slice(1, 1))),
            [
                0xe7, 0x11, 0xb3, 0x5c, 0x04, 0xc4, 0xf0, 0x61, 0xa0, 0xdb, 0xd3, 0x6a, 0x00, 0xa6,
                0x7b, 0x90
            ]
        );
    }

    #[test]
    fn strings_and_fixed_strings_respect_slices() {
        let array = StringArray::from(vec!["skip", "", "héllo", "日本"]);
        assert_eq!(
            data("String", Arc::new(array.slice(1, 3))),
            strings(&["", "héllo", "日本"])
        );
        let fixed = FixedSizeBinaryArray::try_from_iter([b"ab", b"cd", b"ef"].into_iter()).unwrap();
        assert_eq!(data("FixedString(2)", Arc::new(fixed.slice(1, 2))), b"cdef");
    }

    #[test]
    fn nullable_writes_the_null_map_then_the_values() {
        let array = UInt32Array::from(vec![Some(5), None, Some(7), None]);
        assert_eq!(
            data("Nullable(UInt32)", Arc::new(array.slice(1, 3))),
            [1, 0, 1, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        let array = StringArray::from(vec![Some("x"), None, Some("ü")]);
        let mut expected = vec![0, 1, 0];
        expected.extend(strings(&["x", "", "ü"]));
        assert_eq!(data("Nullable(String)", Arc::new(array)), expected);
        let no_nulls = StringArray::from(vec!["a", "b"]);
        let mut expected = vec![0, 0];
        expected.extend(strings(&["a", "b"]));
        assert_eq!(data("Nullable(String)", Arc::new(no_nulls)), expected);
    }

    #[test]
    fn enum8_writes_codes_and_refuses_undeclared_ones() {
        let ty = "Enum8('GET' = 1, 'POST' = 2, 'neg' = -3)";
        let codes = Int8Array::from(vec![1, 2, -3, 1]);
        assert_eq!(data(ty, Arc::new(codes)), [1, 2, 0xfd, 1]);
        // A NULL's code (0 here) is not checked.
        let nullable = format!("Nullable({ty})");
        let codes = Int8Array::from(vec![Some(2), None]);
        assert_eq!(data(&nullable, Arc::new(codes)), [0, 1, 2, 0]);

        let err = encode(
            &[("method", ty)],
            vec![Arc::new(Int8Array::from(vec![1, 4]))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"method\": row 1: code 4 is not a value of Enum8('GET' = 1, 'POST' = 2, 'neg' = -3)"
        );
    }

    #[test]
    fn array_offsets_count_from_the_first_item_of_the_block() {
        let array = list(&[&["skip", "me"], &["x", "yz"], &[], &["w"]]).finish();
        let mut expected = u64s(&[2, 2, 3]);
        expected.extend(strings(&["x", "yz", "w"]));
        assert_eq!(data("Array(String)", Arc::new(array.slice(1, 3))), expected);

        // Only empty arrays.
        let array = list(&[&["a"], &[], &[]]).finish();
        assert_eq!(
            data("Array(String)", Arc::new(array.slice(1, 2))),
            u64s(&[0, 0])
        );

        // A list whose item array is itself sliced.
        let items: ArrayRef = Arc::new(StringArray::from(vec!["junk", "p", "q", "r"]).slice(1, 3));
        let field = Arc::new(arrow_schema::Field::new("item", DataType::Utf8, true));
        let offsets = arrow_buffer::OffsetBuffer::new(vec![0, 1, 3].into());
        let array = arrow_array::ListArray::new(field, offsets, items, None);
        let mut expected = u64s(&[1, 3]);
        expected.extend(strings(&["p", "q", "r"]));
        assert_eq!(data("Array(String)", Arc::new(array)), expected);
    }

    fn low_cardinality(keys_and_flags: (u64, &[&str]), indexes: &[u8]) -> Vec<u8> {
        let (flags, keys) = keys_and_flags;
        let mut out = u64s(&[1, flags, keys.len() as u64]);
        out.extend(strings(keys));
        out.extend(u64s(&[indexes.len() as u64]));
        out.extend(indexes);
        out
    }

    #[test]
    fn low_cardinality_nullable_matches_what_clickhouse_writes() {
        let array = StringArray::from(vec![None, Some("a"), Some(""), Some("a")]);
        assert_eq!(
            data("LowCardinality(Nullable(String))", Arc::new(array)),
            low_cardinality((0x600, &["", "", "a"]), &[0, 2, 1, 2])
        );
    }

    #[test]
    fn low_cardinality_puts_the_default_first_and_respects_slices() {
        let array = StringArray::from(vec!["skip", "b", "", "a", "b", "é"]);
        assert_eq!(
            data("LowCardinality(String)", Arc::new(array.slice(1, 5))),
            low_cardinality((0x600, &["", "b", "a", "é"]), &[1, 0, 2, 1, 3])
        );
        let array = StringArray::from(vec![Some("skip"), None, Some("z")]);
        assert_eq!(
            data(
                "LowCardinality(Nullable(String))",
                Arc::new(array.slice(1, 2))
            ),
            low_cardinality((0x600, &["", "", "z"]), &[0, 2])
        );
    }

    #[test]
    fn low_cardinality_picks_the_narrowest_index_width() {
        // (distinct non-empty values, type, expected width flag, bytes per index)
        for (distinct, ty, width, index_bytes) in [
            (255, "LowCardinality(String)", 0, 1),
            (256, "LowCardinality(String)", 1, 2),
            (254, "LowCardinality(Nullable(String))", 0, 1),
            (255, "LowCardinality(Nullable(String))", 1, 2),
            (65_535, "LowCardinality(String)", 1, 2),
            (65_536, "LowCardinality(String)", 2, 4),
        ] {
            let values: Vec<String> = (0..distinct).map(|i| format!("v{i}")).collect();
            let array = StringArray::from_iter_values(values.iter());
            let out = data(ty, Arc::new(array));
            assert_eq!(
                &out[8..16],
                &(0x600u64 | width).to_le_bytes(),
                "{distinct} {ty}"
            );
            let reserved = if ty.contains("Nullable") { 2 } else { 1 };
            assert_eq!(
                u64::from_le_bytes(out[16..24].try_into().unwrap()),
                distinct + reserved
            );
            let last_index = &out[out.len() - index_bytes..];
            let mut expected = (distinct + reserved - 1).to_le_bytes().to_vec();
            expected.truncate(index_bytes);
            assert_eq!(last_index, expected, "{distinct} {ty}");
        }
    }

    /// One column of every supported type; rows `range` of a fixed sample.
    fn sample(range: Range<usize>) -> (Vec<(&'static str, &'static str)>, Vec<ArrayRef>) {
        let columns = vec![
            ("s", "String"),
            ("lc", "LowCardinality(String)"),
            ("lcn", "LowCardinality(Nullable(String))"),
            ("fs", "FixedString(3)"),
            ("u8", "UInt8"),
            ("i64", "Int64"),
            ("f64", "Float64"),
            ("ts", "DateTime"),
            ("e", "Enum8('a' = 1, 'b' = 2)"),
            ("id", "UUID"),
            ("n", "Nullable(Int32)"),
            ("ns", "Nullable(String)"),
            ("arr", "Array(String)"),
        ];
        let r = || range.clone();
        let s = ["", "a", "ü", "bb", "a", ""];
        let lc = ["x", "", "bb", "x", "a", "ü"];
        let lcn = [None, Some("x"), Some(""), None, Some("y"), Some("x")];
        let fs: [&[u8; 3]; 6] = [b"abc", b"def", b"\0\0\0", b"ghi", b"jkl", b"mno"];
        let n = [Some(1), None, Some(-3), Some(4), None, Some(6)];
        let uuids: Vec<[u8; 16]> = (0..6).map(|i| [i as u8; 16]).collect();
        let arr: [&[&str]; 6] = [&["a"], &[], &["b", "c"], &[""], &[], &["d"]];
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(s[r()].to_vec())),
            Arc::new(StringArray::from(lc[r()].to_vec())),
            Arc::new(StringArray::from(lcn[r()].to_vec())),
            Arc::new(fixed(3, fs[r()].iter().map(|v| &v[..]))),
            Arc::new(UInt8Array::from_iter_values(r().map(|i| i as u8))),
            Arc::new(Int64Array::from_iter_values(r().map(|i| -(i as i64) << 40))),
            Arc::new(Float64Array::from_iter_values(r().map(|i| i as f64 / 4.0))),
            Arc::new(UInt32Array::from_iter_values(
                r().map(|i| 1_700_000_000 + i as u32),
            )),
            Arc::new(Int8Array::from_iter_values(r().map(|i| 1 + (i % 2) as i8))),
            Arc::new(fixed(16, uuids[r()].iter().map(|v| &v[..]))),
            Arc::new(Int32Array::from(n[r()].to_vec())),
            Arc::new(StringArray::from(lcn[r()].to_vec())),
            Arc::new(list(&arr[r()]).finish()),
        ];
        (columns, arrays)
    }

    #[test]
    fn a_sliced_batch_encodes_like_the_same_rows_built_fresh() {
        let (columns, arrays) = sample(0..6);
        let batch = RecordBatch::try_from_iter(columns.iter().map(|(n, _)| *n).zip(arrays))
            .unwrap()
            .slice(2, 3);
        let (_, fresh) = sample(2..5);
        assert_eq!(
            encode(&columns, batch.columns().to_vec()).unwrap(),
            encode(&columns, fresh).unwrap()
        );
    }

    #[test]
    fn a_block_without_rows_has_no_column_data() {
        let (columns, arrays) = sample(0..0);
        let out = encode(&columns, arrays).unwrap();
        let mut expected = Vec::new();
        write_varint(&mut expected, columns.len() as u64);
        write_varint(&mut expected, 0);
        for (name, ty) in &columns {
            write_string(&mut expected, name.as_bytes());
            write_string(&mut expected, ty.as_bytes());
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn mismatches_are_refused_and_leave_the_output_untouched() {
        let err = encode(
            &[("status", "UInt16")],
            vec![Arc::new(StringArray::from(vec!["1"]))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"status\": Arrow type Utf8 cannot be written as ClickHouse type UInt16"
        );
        let err = encode(
            &[("code", "FixedString(3)")],
            vec![Arc::new(
                FixedSizeBinaryArray::try_from_iter([b"ab"].into_iter()).unwrap(),
            )],
        )
        .unwrap_err();
        assert!(matches!(err, EncodeError::TypeMismatch { .. }), "{err}");

        let err = encode(
            &[("s", "String")],
            vec![Arc::new(StringArray::from(vec![None::<&str>]))],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "column \"s\": 1 NULL value(s) in a column of type String, which cannot hold NULL"
        );
        let err = encode(
            &[("lc", "LowCardinality(String)")],
            vec![Arc::new(StringArray::from(vec![Some("a"), None]))],
        )
        .unwrap_err();
        assert!(
            matches!(err, EncodeError::UnexpectedNull { nulls: 1, .. }),
            "{err}"
        );

        let mut with_null_item = ListBuilder::new(StringBuilder::new());
        with_null_item.values().append_null();
        with_null_item.append(true);
        let err = encode(
            &[("a", "Array(String)")],
            vec![Arc::new(with_null_item.finish())],
        )
        .unwrap_err();
        assert!(matches!(err, EncodeError::UnexpectedNull { .. }), "{err}");

        // A later column fails: nothing of the block stays in `out`.
        let ch_types = [ChType::UInt8, ChType::UInt8];
        let columns = [
            NativeColumn {
                name: "a",
                ch_type: &ch_types[0],
            },
            NativeColumn {
                name: "b",
                ch_type: &ch_types[1],
            },
        ];
        let batch = RecordBatch::try_from_iter([
            ("a", Arc::new(UInt8Array::from(vec![1])) as ArrayRef),
            ("b", Arc::new(Int8Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let mut out = b"earlier".to_vec();
        assert!(write_native_block(&columns, &batch, &mut out).is_err());
        assert_eq!(out, b"earlier");
        let err = write_native_block(&columns[..1], &batch, &mut out).unwrap_err();
        assert_eq!(
            err,
            EncodeError::ColumnCount {
                described: 1,
                batch: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "batch has 2 columns but 1 columns were described"
        );
    }
}
