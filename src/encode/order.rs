//! Rows in the table's `ORDER BY` order before they are encoded.
//!
//! A MergeTree insert sorts its block by the sorting key and then copies every column into that
//! order, unless the block is sorted already: ClickHouse checks first (18.16 counts it as
//! `MergeTreeDataWriterBlocksAlreadySorted`) and then writes the columns as they come. Sorting
//! here costs sluice a sort of one small key per row and one copy, the copy that joining the
//! requests' batches into one block costs anyway; the server is spared its sort, its permutation
//! of every column and the memory that takes.
//!
//! The key is built from the `ORDER BY` columns: strings by their rank among the block's
//! distinct values (byte order, as ClickHouse compares them), integers, dates and enums by
//! value. Ties keep their arrival order. Other key types (floats, arrays, Nullable) are not
//! sorted here; the server sorts those blocks as before.

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType};
use hashbrown::HashMap;

use crate::encode::native::Texts;
use crate::schema::{ChType, Schema};

/// The columns of a table's sorting key that sluice can order rows by.
#[derive(Debug, Clone)]
pub struct SortKey {
    /// Column indexes, most significant first.
    columns: Vec<usize>,
}

impl SortKey {
    /// The key of `schema`'s table, when it has one and every column of it has a type sluice
    /// orders as ClickHouse does.
    pub fn of(schema: &Schema) -> Option<SortKey> {
        let columns = schema
            .table
            .order_by
            .iter()
            .map(|name| {
                let index = schema.columns.iter().position(|c| c.name() == name)?;
                orderable(&schema.columns[index].ch_type).then_some(index)
            })
            .collect::<Option<Vec<usize>>>()?;
        (!columns.is_empty()).then_some(SortKey { columns })
    }

    /// The rows of `batches` in key order (ties in the order given) as `(batch, row)` pairs;
    /// `None` when they are in order already.
    pub fn order(
        &self,
        batches: &[&RecordBatch],
    ) -> Result<Option<Vec<(usize, usize)>>, ArrowError> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let keys: Vec<Vec<u64>> = self
            .columns
            .iter()
            .map(|&column| {
                let arrays: Vec<&ArrayRef> = batches.iter().map(|b| b.column(column)).collect();
                column_key(&arrays, rows)
            })
            .collect::<Result<_, _>>()?;
        let order = match packed_order(&keys, rows) {
            Some(None) => return Ok(None),
            Some(Some(order)) => order,
            None => {
                let mut order: Vec<u32> = (0..rows as u32).collect();
                let in_order = |a: u32, b: u32| {
                    keys.iter()
                        .map(|key| key[a as usize].cmp(&key[b as usize]))
                        .find(|o| o.is_ne())
                        .unwrap_or(std::cmp::Ordering::Equal)
                };
                if order.is_sorted_by(|&a, &b| in_order(a, b).is_le()) {
                    return Ok(None);
                }
                order.sort_by(|&a, &b| in_order(a, b));
                order
            }
        };
        // Global row number → (batch, row in batch).
        let mut starts = Vec::with_capacity(batches.len());
        let mut start = 0;
        for batch in batches {
            starts.push(start);
            start += batch.num_rows();
        }
        let indices = order
            .iter()
            .map(|&row| {
                let row = row as usize;
                let batch = starts.partition_point(|&s| s <= row) - 1;
                (batch, row - starts[batch])
            })
            .collect();
        Ok(Some(indices))
    }
}

/// Every row of `batches` in the order given, as `(batch, row)` pairs.
pub fn in_sequence(batches: &[&RecordBatch]) -> Vec<(usize, usize)> {
    batches
        .iter()
        .enumerate()
        .flat_map(|(batch, b)| (0..b.num_rows()).map(move |row| (batch, row)))
        .collect()
}

/// The row order when every key column, less its smallest value, fits into 96 bits together:
/// each row becomes one `u128` (the key columns, most significant first, then the row number,
/// which keeps ties in arrival order) and an unstable sort of those is the stable sort by key.
/// `Some(None)`: the rows are in order already. `None`: the keys are too wide to pack.
fn packed_order(keys: &[Vec<u64>], rows: usize) -> Option<Option<Vec<u32>>> {
    let mut ranges = Vec::with_capacity(keys.len());
    let mut bits = 0u32;
    for key in keys {
        let (min, max) = key
            .iter()
            .fold((u64::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let width = 64 - max.saturating_sub(min).leading_zeros();
        bits += width;
        ranges.push((min, width));
    }
    if bits > 96 {
        return None;
    }
    let mut packed: Vec<u128> = (0..rows as u128).collect();
    for (key, &(min, width)) in keys.iter().zip(&ranges) {
        if width == 0 {
            continue;
        }
        for (p, &v) in packed.iter_mut().zip(key) {
            // The row number stays in the low 32 bits; the key columns shift in above it.
            let row = *p & u32::MAX as u128;
            *p = ((((*p >> 32) << width) | (v - min) as u128) << 32) | row;
        }
    }
    if packed.is_sorted() {
        return Some(None);
    }
    packed.sort_unstable();
    Some(Some(packed.into_iter().map(|p| p as u32).collect()))
}

fn orderable(ch_type: &ChType) -> bool {
    match ch_type {
        ChType::LowCardinality(inner) => orderable(inner),
        ChType::String
        | ChType::UInt8
        | ChType::UInt16
        | ChType::UInt32
        | ChType::UInt64
        | ChType::Int8
        | ChType::Int16
        | ChType::Int32
        | ChType::Int64
        | ChType::DateTime
        | ChType::Enum8(_) => true,
        _ => false,
    }
}

/// One `u64` per row whose order is the column's order in ClickHouse.
fn column_key(arrays: &[&ArrayRef], rows: usize) -> Result<Vec<u64>, ArrowError> {
    let mut key = Vec::with_capacity(rows);
    let data_type = arrays.first().map(|a| a.data_type().clone());
    match data_type {
        Some(ref text) if Texts::accepts(text) => {
            // Distinct values get ids as they come; ids then become ranks in byte order.
            let mut ids: HashMap<&str, u32> = HashMap::new();
            let mut distinct: Vec<&str> = Vec::new();
            for array in arrays {
                let texts = Texts::of(array.as_ref());
                for row in 0..array.len() {
                    let value = if array.is_null(row) {
                        ""
                    } else {
                        texts.value(row)
                    };
                    let id = *ids.entry(value).or_insert_with(|| {
                        distinct.push(value);
                        distinct.len() as u32 - 1
                    });
                    key.push(id as u64);
                }
            }
            let mut by_value: Vec<u32> = (0..distinct.len() as u32).collect();
            by_value.sort_unstable_by_key(|&id| distinct[id as usize]);
            let mut rank = vec![0u64; distinct.len()];
            for (position, id) in by_value.into_iter().enumerate() {
                rank[id as usize] = position as u64;
            }
            for k in &mut key {
                *k = rank[*k as usize];
            }
        }
        Some(data_type) => {
            for array in arrays {
                let array = array.as_ref();
                // Each value as a u64 in the same order: signed values are shifted by 2^63.
                macro_rules! keys {
                    ($t:ty, $key:expr) => {
                        key.extend(array.as_primitive::<$t>().values().iter().map($key))
                    };
                }
                match data_type {
                    DataType::UInt8 => keys!(UInt8Type, |&v| v as u64),
                    DataType::UInt16 => keys!(UInt16Type, |&v| v as u64),
                    DataType::UInt32 => keys!(UInt32Type, |&v| v as u64),
                    DataType::UInt64 => keys!(UInt64Type, |&v| v),
                    DataType::Int8 => keys!(Int8Type, |&v| (v as i64 as u64) ^ (1 << 63)),
                    DataType::Int16 => keys!(Int16Type, |&v| (v as i64 as u64) ^ (1 << 63)),
                    DataType::Int32 => keys!(Int32Type, |&v| (v as i64 as u64) ^ (1 << 63)),
                    DataType::Int64 => keys!(Int64Type, |&v| (v as u64) ^ (1 << 63)),
                    other => {
                        return Err(ArrowError::InvalidArgumentError(format!(
                            "cannot order rows by a {other} column"
                        )));
                    }
                }
            }
        }
        None => {}
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::types::{Int16Type, Int32Type};
    use arrow_array::{
        DictionaryArray, Int8Array, Int16Array, Int32Array, StringArray, UInt32Array,
    };
    use arrow_schema::{Field, Schema as ArrowSchema, SchemaRef};

    use super::*;

    /// The rows of `batches` in `key`'s order, as one batch.
    fn sort(key: &SortKey, schema: &SchemaRef, batches: &[&RecordBatch]) -> RecordBatch {
        let order = key
            .order(batches)
            .unwrap()
            .unwrap_or_else(|| in_sequence(batches));
        let columns = (0..schema.fields().len())
            .map(|column| {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(column).as_ref()).collect();
                arrow_select::interleave::interleave(&arrays, &order).unwrap()
            })
            .collect();
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    fn batch(schema: &SchemaRef, hosts: &[&str], times: &[u32], methods: &[i8]) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(hosts.to_vec())),
                Arc::new(UInt32Array::from(times.to_vec())),
                Arc::new(Int8Array::from(methods.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_of_several_batches_come_out_in_key_order_with_ties_as_they_came() {
        let schema: SchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new("host", DataType::Utf8, false),
            Field::new("time", DataType::UInt32, false),
            Field::new("m", DataType::Int8, false),
        ]));
        let a = batch(
            &schema,
            &["b.com", "a.com", "b.com"],
            &[5, 9, 1],
            &[1, 2, 3],
        );
        let b = batch(&schema, &["a.com", "ab", "b.com"], &[9, 0, 1], &[4, 5, 6]);
        let key = SortKey {
            columns: vec![0, 1],
        };
        let sorted = sort(&key, &schema, &[&a, &b]);
        let hosts: Vec<&str> = sorted
            .column(0)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        let times = sorted
            .column(1)
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec();
        let methods = sorted
            .column(2)
            .as_primitive::<Int8Type>()
            .values()
            .to_vec();
        assert_eq!(hosts, ["a.com", "a.com", "ab", "b.com", "b.com", "b.com"]);
        assert_eq!(times, [9, 9, 0, 1, 1, 5]);
        // (a.com, 9) came from the first batch before the second; (b.com, 1) likewise.
        assert_eq!(methods, [2, 4, 5, 3, 6, 1]);
        // A negative enum value sorts before a positive one.
        let key = SortKey { columns: vec![2] };
        let c = batch(&schema, &["x", "y"], &[0, 0], &[3, -2]);
        let sorted = sort(&key, &schema, &[&c]);
        assert_eq!(
            sorted
                .column(2)
                .as_primitive::<Int8Type>()
                .values()
                .to_vec(),
            [-2, 3]
        );
    }

    /// A request-context column (a dictionary of one value per request) orders rows as its
    /// text does, across batches whose dictionaries differ.
    #[test]
    fn a_dictionary_column_orders_rows_as_its_text() {
        let schema: SchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new("region", DataType::Utf8, false),
            Field::new("time", DataType::UInt32, false),
        ]));
        let keyed_schema: SchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new(
                "region",
                DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8)),
                false,
            ),
            Field::new("time", DataType::UInt32, false),
        ]));
        let plain = |regions: &[&str], times: &[u32]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(regions.to_vec())),
                    Arc::new(UInt32Array::from(times.to_vec())),
                ],
            )
            .unwrap()
        };
        let keyed = |values: &[&str], keys: &[i16], times: &[u32]| {
            let region = DictionaryArray::<Int16Type>::new(
                Int16Array::from(keys.to_vec()),
                Arc::new(StringArray::from(values.to_vec())),
            );
            RecordBatch::try_new(
                keyed_schema.clone(),
                vec![
                    Arc::new(region),
                    Arc::new(UInt32Array::from(times.to_vec())),
                ],
            )
            .unwrap()
        };
        let key = SortKey {
            columns: vec![0, 1],
        };
        let batches = [
            keyed(&["us", "eu"], &[0, 1, 0], &[3, 9, 1]),
            keyed(&["eu"], &[0, 0], &[2, 1]),
        ];
        let texts = [
            plain(&["us", "eu", "us"], &[3, 9, 1]),
            plain(&["eu", "eu"], &[2, 1]),
        ];
        let order = key.order(&[&batches[0], &batches[1]]).unwrap().unwrap();
        assert_eq!(order, key.order(&[&texts[0], &texts[1]]).unwrap().unwrap());
        assert_eq!(order, [(1, 1), (1, 0), (0, 1), (0, 2), (0, 0)]);
        // A dictionary the validator does not build is refused, not read.
        let wide = DictionaryArray::<Int32Type>::new(
            Int32Array::from(vec![0, 0]),
            Arc::new(StringArray::from(vec!["eu"])),
        );
        let wide = RecordBatch::try_from_iter([
            ("region", Arc::new(wide) as ArrayRef),
            ("time", Arc::new(UInt32Array::from(vec![2, 1])) as ArrayRef),
        ])
        .unwrap();
        assert!(key.order(&[&wide]).is_err());
    }

    #[test]
    fn packed_keys_give_the_stable_order_of_the_columns() {
        // xorshift: keys with many ties, offsets far from zero, a column of one value.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let rows = 5000;
        let keys: Vec<Vec<u64>> = vec![
            (0..rows).map(|_| 1_000_000 + next() % 7).collect(),
            (0..rows).map(|_| 42).collect(),
            (0..rows).map(|_| (1 << 63) + next() % 100_000).collect(),
        ];
        let mut expected: Vec<u32> = (0..rows as u32).collect();
        expected.sort_by_key(|&r| (keys[0][r as usize], keys[2][r as usize]));
        assert_eq!(packed_order(&keys, rows), Some(Some(expected)));
        // Already in order: nothing to permute.
        let sorted: Vec<Vec<u64>> = vec![(0..rows as u64).map(|v| v / 10).collect()];
        assert_eq!(packed_order(&sorted, rows), Some(None));
        // Two full-width columns need 128 bits: the comparison sort takes over.
        let wide: Vec<Vec<u64>> = vec![vec![0, u64::MAX], vec![u64::MAX, 0]];
        assert_eq!(packed_order(&wide, 2), None);
    }

    #[test]
    fn wide_keys_are_sorted_too() {
        let schema: SchemaRef = Arc::new(ArrowSchema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![
                    i64::MAX,
                    i64::MIN,
                    i64::MIN,
                ])),
                Arc::new(arrow_array::UInt64Array::from(vec![0, u64::MAX, 0])),
            ],
        )
        .unwrap();
        let key = SortKey {
            columns: vec![0, 1],
        };
        let sorted = sort(&key, &schema, &[&batch]);
        assert_eq!(
            sorted
                .column(1)
                .as_primitive::<UInt64Type>()
                .values()
                .to_vec(),
            [0, u64::MAX, 0]
        );
        assert_eq!(
            sorted
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            [i64::MIN, i64::MIN, i64::MAX]
        );
    }

    #[test]
    fn only_keys_of_types_ordered_like_clickhouse_are_sorted() {
        assert!(orderable(&ChType::LowCardinality(Box::new(ChType::String))));
        assert!(orderable(&ChType::DateTime));
        assert!(!orderable(&ChType::Float64));
        assert!(!orderable(&ChType::Nullable(Box::new(ChType::UInt32))));
    }
}
