//! Rollup accumulators: validated rows folded into per-group partial aggregates.
//!
//! A [`RollupState`] belongs to one thread (an accumulator thread, or one shard of a bench): it
//! is fed Arrow batches over the crossbeam hand-off and takes no lock. Groups are found by their
//! key bytes (bucket start, then each key: integers as 8 bytes, strings length-prefixed) in one
//! hash map; nothing is allocated for a row of an existing group, apart from a new distinct
//! value. At a flush every group becomes one *partial row*; ClickHouse merges partials from every
//! flush and every node (see [`crate::schema::rollup`]). Partials are never held back for their
//! bucket to close, so a late row simply joins its bucket's next partial.
//!
//! Bounds: at most `max_groups` live groups; a row that would open one more goes to its bucket's
//! overflow group (string keys `__overflow__`, integer keys their type's maximum), counted in
//! `overflow_rows`. Overflow groups themselves are capped at `max_groups` too: past that every
//! live group is emitted (made a finished partial row) and folding starts afresh. A group whose
//! distinct set reaches `max_distinct` values is emitted early the same way.

use std::collections::BTreeMap;

// foldhash, not SipHash: every row touches a group and its distinct sets. A set holds at most
// `max_distinct` values before its group is emitted, so colliding values cost little.
use hashbrown::HashMap as GroupMap;
use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_buffer::NullBuffer;
use compact_str::CompactString;

use crate::encode::native::Texts;
use crate::schema::ChType;
use crate::schema::rollup::{
    Derive, MeasureKind, NumberKind, QuantileBins, Rollup, number_kind, path_prefix,
};
use crate::text::{ShortBytes, ShortStr};

/// The string every string key of an overflow group holds.
pub const OVERFLOW_KEY: &str = "__overflow__";

/// A number as a measure keeps it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    U(u64),
    I(i64),
    F(f64),
}

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::U(v) => v as f64,
            Num::I(v) => v as f64,
            Num::F(v) => v,
        }
    }

    fn less(self, other: Num) -> bool {
        match (self, other) {
            (Num::U(a), Num::U(b)) => a < b,
            (Num::I(a), Num::I(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }
}

/// One measure of one group.
#[derive(Clone, Debug, PartialEq)]
pub enum MeasureState {
    Count(u64),
    SumU(u64),
    SumI(i64),
    SumF(f64),
    Min(Option<Num>),
    Max(Option<Num>),
    /// Values of up to 24 bytes (addresses, ids) are kept inline: no allocation per new value
    /// and no pointer to follow to compare one. A set of 64-bit hashes of the values with the
    /// values in a list beside it was tried: the rollup thread's CPU per row rose from 421–467
    /// to 534–550 ns in the gzip load test (alternated, two runs each) — the list's spare
    /// capacity made the states larger, not smaller.
    DistinctStr(HashSet<CompactString>),
    DistinctInt(HashSet<i64>),
    /// Bin index → count.
    Quantiles(HashMap<i32, u64>),
}

impl MeasureState {
    fn merge(&mut self, other: MeasureState) {
        match (self, other) {
            (MeasureState::Count(a), MeasureState::Count(b)) => *a += b,
            (MeasureState::SumU(a), MeasureState::SumU(b)) => *a = a.wrapping_add(b),
            (MeasureState::SumI(a), MeasureState::SumI(b)) => *a = a.wrapping_add(b),
            (MeasureState::SumF(a), MeasureState::SumF(b)) => *a += b,
            (MeasureState::Min(a), MeasureState::Min(Some(b))) if a.is_none_or(|a| b.less(a)) => {
                *a = Some(b);
            }
            (MeasureState::Max(a), MeasureState::Max(Some(b))) if a.is_none_or(|a| a.less(b)) => {
                *a = Some(b);
            }
            (MeasureState::DistinctStr(a), MeasureState::DistinctStr(b)) => a.extend(b),
            (MeasureState::DistinctInt(a), MeasureState::DistinctInt(b)) => a.extend(b),
            (MeasureState::Quantiles(a), MeasureState::Quantiles(b)) => {
                for (bin, count) in b {
                    *a.entry(bin).or_default() += count;
                }
            }
            _ => {}
        }
    }
}

/// The partial aggregate of one group.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub measures: Vec<MeasureState>,
}

impl Group {
    fn new(rollup: &Rollup) -> Group {
        let measures = rollup
            .measures
            .iter()
            .map(|m| match m.kind {
                MeasureKind::Count => MeasureState::Count(0),
                MeasureKind::Sum => match number_kind(&m.value_type) {
                    Some(NumberKind::Unsigned) => MeasureState::SumU(0),
                    Some(NumberKind::Signed) => MeasureState::SumI(0),
                    _ => MeasureState::SumF(0.0),
                },
                MeasureKind::Min => MeasureState::Min(None),
                MeasureKind::Max => MeasureState::Max(None),
                MeasureKind::Distinct if m.value_type == ChType::String => {
                    MeasureState::DistinctStr(HashSet::new())
                }
                MeasureKind::Distinct => MeasureState::DistinctInt(HashSet::new()),
                MeasureKind::Quantiles => MeasureState::Quantiles(HashMap::new()),
            })
            .collect();
        Group { measures }
    }

    pub fn merge(&mut self, other: Group) {
        for (mine, theirs) in self.measures.iter_mut().zip(other.measures) {
            mine.merge(theirs);
        }
    }
}

/// Counters of one fold or flush window, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub rows: u64,
    pub late_rows: u64,
    pub overflow_rows: u64,
    pub early_emits: u64,
}

type Hasher = hashbrown::DefaultHashBuilder;

/// The live groups of one rollup, plus groups already emitted and waiting for the flush.
pub struct RollupState {
    rollup: Arc<Rollup>,
    groups: GroupMap<Box<[u8]>, Group, Hasher>,
    /// Overflow groups, one per bucket (kept apart so that the cap on them is separate).
    overflow: GroupMap<Box<[u8]>, Group, Hasher>,
    /// Finished partial rows (emitted early), flushed with the live groups.
    emitted: Vec<(Box<[u8]>, Group)>,
    bins: Vec<Option<QuantileBins>>,
    key: Vec<u8>,
    pub stats: FoldStats,
}

/// One column of a batch, read as a key or measure source: its values as a slice of their own
/// type, read without a downcast or an indirect call per value, and its validity.
struct Reader<'a> {
    values: Values<'a>,
    nulls: Option<&'a NullBuffer>,
}

enum Values<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Utf8, or a request-context column's dictionary (one value per request, Int16 keys).
    Text(Texts<'a>),
}

impl<'a> Reader<'a> {
    fn new(array: &'a ArrayRef) -> Reader<'a> {
        use arrow_schema::DataType as D;
        macro_rules! values {
            ($variant:ident, $t:ty) => {
                Values::$variant(array.as_primitive::<$t>().values())
            };
        }
        let values = match array.data_type() {
            D::UInt8 => values!(U8, UInt8Type),
            D::UInt16 => values!(U16, UInt16Type),
            D::UInt32 => values!(U32, UInt32Type),
            D::UInt64 => values!(U64, UInt64Type),
            D::Int8 => values!(I8, Int8Type),
            D::Int16 => values!(I16, Int16Type),
            D::Int32 => values!(I32, Int32Type),
            D::Int64 => values!(I64, Int64Type),
            D::Float32 => values!(F32, Float32Type),
            D::Float64 => values!(F64, Float64Type),
            D::Utf8 | D::Dictionary(..) => Values::Text(Texts::of(array.as_ref())),
            other => panic!("rollup source column of Arrow type {other} (checked at schema load)"),
        };
        Reader {
            values,
            nulls: array.nulls(),
        }
    }

    #[inline]
    fn is_null(&self, row: usize) -> bool {
        self.nulls.is_some_and(|nulls| nulls.is_null(row))
    }

    // Inlined into the fold's row loop, which calls it once per numeric key and measure per
    // row: 7.6 % fewer instructions to fold (callgrind, 160,000 generated rows).
    #[inline(always)]
    fn num(&self, row: usize) -> Option<Num> {
        if self.is_null(row) {
            return None;
        }
        Some(match self.values {
            Values::U8(v) => Num::U(v[row] as u64),
            Values::U16(v) => Num::U(v[row] as u64),
            Values::U32(v) => Num::U(v[row] as u64),
            Values::U64(v) => Num::U(v[row]),
            Values::I8(v) => Num::I(v[row] as i64),
            Values::I16(v) => Num::I(v[row] as i64),
            Values::I32(v) => Num::I(v[row] as i64),
            Values::I64(v) => Num::I(v[row]),
            Values::F32(v) => Num::F(v[row] as f64),
            Values::F64(v) => Num::F(v[row]),
            Values::Text(_) => return None,
        })
    }

    #[inline]
    fn str(&self, row: usize) -> Option<&'a str> {
        match self.values {
            _ if self.is_null(row) => None,
            Values::Text(texts) => Some(texts.value(row)),
            _ => None,
        }
    }

    fn is_signed(&self) -> bool {
        matches!(
            self.values,
            Values::I8(_) | Values::I16(_) | Values::I32(_) | Values::I64(_)
        )
    }
}

fn write_str_key(key: &mut Vec<u8>, value: &str) {
    key.extend_from_slice(&(value.len() as u32).to_le_bytes());
    key.extend_from_slice(value.as_bytes());
}

/// The largest value of an integer key type: the overflow group's key.
fn type_max(ch_type: &ChType) -> u64 {
    match ch_type {
        ChType::UInt8 => u8::MAX as u64,
        ChType::UInt16 => u16::MAX as u64,
        ChType::UInt32 | ChType::DateTime => u32::MAX as u64,
        ChType::Int8 => i8::MAX as u64,
        ChType::Int16 => i16::MAX as u64,
        ChType::Int32 => i32::MAX as u64,
        ChType::Int64 => i64::MAX as u64,
        _ => u64::MAX,
    }
}

impl RollupState {
    pub fn new(rollup: Arc<Rollup>) -> RollupState {
        let bins = rollup
            .measures
            .iter()
            .map(|m| {
                (m.kind == MeasureKind::Quantiles).then(|| QuantileBins::new(m.relative_accuracy))
            })
            .collect();
        RollupState {
            rollup,
            groups: GroupMap::with_hasher(Hasher::default()),
            overflow: GroupMap::with_hasher(Hasher::default()),
            emitted: Vec::new(),
            bins,
            key: Vec::with_capacity(128),
            stats: FoldStats::default(),
        }
    }

    pub fn rollup(&self) -> &Arc<Rollup> {
        &self.rollup
    }

    /// Partial rows a flush would write now.
    pub fn rows(&self) -> usize {
        self.groups.len() + self.overflow.len() + self.emitted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    /// Folds the rows of a batch of the stream's table (columns in schema order). `now` (unix
    /// seconds) tells late rows from timely ones; both are counted.
    ///
    /// Rows are folded in their order. Folding them group by group (rows sorted by the hash of
    /// their group key, so that a group's entry and states are loaded once per run of its rows)
    /// was tried: the rollup thread's CPU per row rose from 448–499 to 549–573 ns in the gzip
    /// load test (two runs each) — the sort costs more than the locality saves, since a row's
    /// distinct value and quantile bin are a random access in any order. Resolving the groups
    /// of 64 rows first, then folding them with each row's measure states prefetched 8 rows
    /// ahead, was tried too: no measurable gain folding 1.2 million rows into 20,852 groups
    /// (317–521 ns per row before, 335–428 after, two runs of five rounds each) — the misses
    /// that remain are inside the distinct sets and quantile maps, whose slots a prefetch
    /// cannot name before the state is loaded. Nor is it the group key's own allocation, read
    /// to compare keys: keys kept in the table's slots (up to 64 bytes inline) gave 480 and
    /// 480 ns per row against 470 and 440 (two alternated pairs of gzip load tests).
    pub fn fold(&mut self, batch: &RecordBatch, now: u64) {
        let rollup = self.rollup.clone();
        let columns = batch.columns();
        let time = columns[rollup.time_column].as_primitive::<UInt32Type>();
        let keys: Vec<Reader<'_>> = rollup
            .keys
            .iter()
            .map(|k| Reader::new(&columns[k.column]))
            .collect();
        let measures: Vec<Option<Reader<'_>>> = rollup
            .measures
            .iter()
            .map(|m| m.column.map(|c| Reader::new(&columns[c])))
            .collect();
        let bucket_secs = rollup.bucket_secs as u64;
        for row in 0..batch.num_rows() {
            let t = time.value(row) as u64;
            if now.saturating_sub(t) > rollup.lateness_secs {
                self.stats.late_rows += 1;
            }
            let bucket = (t - t % bucket_secs) as u32;
            self.key.clear();
            self.key.extend_from_slice(&bucket.to_le_bytes());
            for (spec, reader) in rollup.keys.iter().zip(&keys) {
                match spec.derive {
                    Derive::Value => match reader.values {
                        Values::Text(_) => {
                            write_str_key(&mut self.key, reader.str(row).unwrap_or(""))
                        }
                        _ if reader.is_signed() => {
                            let v = match reader.num(row) {
                                Some(Num::I(v)) => v,
                                _ => 0,
                            };
                            self.key.extend_from_slice(&v.to_le_bytes());
                        }
                        _ => {
                            let v = match reader.num(row) {
                                Some(Num::U(v)) => v,
                                _ => 0,
                            };
                            self.key.extend_from_slice(&v.to_le_bytes());
                        }
                    },
                    Derive::StatusClass => {
                        let class = match reader.num(row) {
                            Some(Num::U(v)) => (v / 100).min(u8::MAX as u64 - 1) as u8,
                            _ => 0,
                        };
                        self.key.push(class);
                    }
                    Derive::PathPrefix => {
                        let path = reader.str(row).unwrap_or("");
                        write_str_key(&mut self.key, path_prefix(path, spec.segments));
                    }
                }
            }
            // Common case first: below the cap a group is found or opened with one lookup.
            let in_groups = self.groups.len() < rollup.max_groups
                || self.groups.contains_key(&ShortBytes(&self.key));
            if !in_groups {
                self.stats.overflow_rows += 1;
                self.key.clear();
                self.key.extend_from_slice(&bucket.to_le_bytes());
                for spec in &rollup.keys {
                    match (&spec.derive, &spec.ch_type) {
                        (Derive::StatusClass, _) => self.key.push(u8::MAX),
                        (_, ChType::String | ChType::LowCardinality(_)) => {
                            write_str_key(&mut self.key, OVERFLOW_KEY)
                        }
                        (_, t) => self.key.extend_from_slice(&type_max(t).to_le_bytes()),
                    }
                }
                if self.overflow.len() >= rollup.max_groups
                    && !self.overflow.contains_key(&ShortBytes(&self.key))
                {
                    self.emit_all();
                }
            }
            let groups = if in_groups {
                &mut self.groups
            } else {
                &mut self.overflow
            };
            let group = groups
                .entry_ref(&ShortBytes(&self.key))
                .or_insert_with(|| Group::new(&rollup));
            let mut full = false;
            for (reader, (state, bins)) in measures
                .iter()
                .zip(group.measures.iter_mut().zip(&self.bins))
            {
                let Some(reader) = reader else {
                    if let MeasureState::Count(n) = state {
                        *n += 1;
                    }
                    continue;
                };
                match state {
                    MeasureState::Count(n) => *n += 1,
                    MeasureState::SumU(sum) => {
                        if let Some(Num::U(v)) = reader.num(row) {
                            *sum = sum.wrapping_add(v);
                        }
                    }
                    MeasureState::SumI(sum) => {
                        if let Some(Num::I(v)) = reader.num(row) {
                            *sum = sum.wrapping_add(v);
                        }
                    }
                    MeasureState::SumF(sum) => {
                        if let Some(v) = reader.num(row) {
                            *sum += v.as_f64();
                        }
                    }
                    MeasureState::Min(min) => {
                        if let Some(v) = reader.num(row)
                            && min.is_none_or(|m| v.less(m))
                        {
                            *min = Some(v);
                        }
                    }
                    MeasureState::Max(max) => {
                        if let Some(v) = reader.num(row)
                            && max.is_none_or(|m| m.less(v))
                        {
                            *max = Some(v);
                        }
                    }
                    MeasureState::DistinctStr(set) => {
                        if let Some(v) = reader.str(row) {
                            // One probe: the value is copied only when it is new.
                            let before = set.len();
                            set.get_or_insert_with(&ShortStr(v), |v| CompactString::from(v.0));
                            if set.len() > before {
                                full |= set.len() >= rollup.max_distinct;
                            }
                        }
                    }
                    MeasureState::DistinctInt(set) => {
                        let v = match reader.num(row) {
                            Some(Num::U(v)) => Some(v as i64),
                            Some(Num::I(v)) => Some(v),
                            _ => None,
                        };
                        if let Some(v) = v
                            && set.insert(v)
                        {
                            full |= set.len() >= rollup.max_distinct;
                        }
                    }
                    MeasureState::Quantiles(counts) => {
                        if let (Some(v), Some(bins)) = (reader.num(row), bins) {
                            *counts.entry(bins.index(v.as_f64())).or_default() += 1;
                        }
                    }
                }
            }
            self.stats.rows += 1;
            if full {
                // The key buffer still names the group (its own, or its bucket's overflow).
                self.stats.early_emits += 1;
                let key: &[u8] = &self.key;
                let entry = match self.groups.remove_entry(key) {
                    Some(entry) => Some(entry),
                    None => self.overflow.remove_entry(key),
                };
                self.emitted.extend(entry);
            }
        }
    }

    /// Makes every live group a finished partial row.
    fn emit_all(&mut self) {
        self.stats.early_emits += (self.groups.len() + self.overflow.len()) as u64;
        self.emitted.extend(self.groups.drain());
        self.emitted.extend(self.overflow.drain());
    }

    /// Takes every partial row (emitted and live), leaving the state empty.
    pub fn take(&mut self) -> Vec<(Box<[u8]>, Group)> {
        let mut rows = std::mem::take(&mut self.emitted);
        rows.extend(self.groups.drain());
        rows.extend(self.overflow.drain());
        rows
    }

    /// Adds another state's partial rows to this one (shards of one rollup).
    pub fn merge(&mut self, mut other: RollupState) {
        for (key, group) in other.take() {
            match self.groups.get_mut(&key) {
                Some(mine) => mine.merge(group),
                None => {
                    self.groups.insert(key, group);
                }
            }
        }
        self.stats.rows += other.stats.rows;
        self.stats.late_rows += other.stats.late_rows;
        self.stats.overflow_rows += other.stats.overflow_rows;
        self.stats.early_emits += other.stats.early_emits;
    }

    /// What ClickHouse would answer after merging every partial row: one group per key.
    pub fn merged_view(rows: Vec<(Box<[u8]>, Group)>) -> BTreeMap<Box<[u8]>, Group> {
        let mut merged: BTreeMap<Box<[u8]>, Group> = BTreeMap::new();
        for (key, group) in rows {
            match merged.get_mut(&key) {
                Some(mine) => mine.merge(group),
                None => {
                    merged.insert(key, group);
                }
            }
        }
        merged
    }

    /// The partial rows as a batch of the rollup's input table (columns of
    /// [`Rollup::input_columns`]), with the flush bookkeeping: `flush_id` on every row, the
    /// contributing requests on the first.
    pub fn to_batch(
        &self,
        rows: &[(Box<[u8]>, Group)],
        flush_id: &str,
        contributions: &[(String, String, u64)],
    ) -> RecordBatch {
        build_batch(&self.rollup, &self.bins, rows, flush_id, contributions)
    }
}

// ------------------------------------------------------------------------------------------
// Partial rows → Arrow columns of the input table.

use arrow_array::builder::{
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, ListBuilder,
    PrimitiveBuilder, StringBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::types::ArrowPrimitiveType;

/// A builder for an integer or float column of a given ClickHouse type.
enum NumBuilder {
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(PrimitiveBuilder<Float32Type>),
    F64(Float64Builder),
}

impl NumBuilder {
    fn new(ch_type: &ChType) -> NumBuilder {
        match ch_type {
            ChType::UInt8 => NumBuilder::U8(UInt8Builder::new()),
            ChType::UInt16 => NumBuilder::U16(UInt16Builder::new()),
            ChType::UInt32 | ChType::DateTime => NumBuilder::U32(UInt32Builder::new()),
            ChType::UInt64 => NumBuilder::U64(UInt64Builder::new()),
            ChType::Int8 => NumBuilder::I8(Int8Builder::new()),
            ChType::Int16 => NumBuilder::I16(Int16Builder::new()),
            ChType::Int32 => NumBuilder::I32(Int32Builder::new()),
            ChType::Int64 => NumBuilder::I64(Int64Builder::new()),
            ChType::Float32 => NumBuilder::F32(PrimitiveBuilder::new()),
            _ => NumBuilder::F64(Float64Builder::new()),
        }
    }

    fn append(&mut self, value: Option<Num>) {
        fn put<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>, v: Option<T::Native>) {
            b.append_option(v);
        }
        let u = |v: Option<Num>| {
            v.map(|v| match v {
                Num::U(v) => v,
                Num::I(v) => v as u64,
                Num::F(v) => v as u64,
            })
        };
        let i = |v: Option<Num>| {
            v.map(|v| match v {
                Num::U(v) => v as i64,
                Num::I(v) => v,
                Num::F(v) => v as i64,
            })
        };
        let f = |v: Option<Num>| v.map(Num::as_f64);
        match self {
            NumBuilder::U8(b) => put(b, u(value).map(|v| v as u8)),
            NumBuilder::U16(b) => put(b, u(value).map(|v| v as u16)),
            NumBuilder::U32(b) => put(b, u(value).map(|v| v as u32)),
            NumBuilder::U64(b) => put(b, u(value)),
            NumBuilder::I8(b) => put(b, i(value).map(|v| v as i8)),
            NumBuilder::I16(b) => put(b, i(value).map(|v| v as i16)),
            NumBuilder::I32(b) => put(b, i(value).map(|v| v as i32)),
            NumBuilder::I64(b) => put(b, i(value)),
            NumBuilder::F32(b) => put(b, f(value).map(|v| v as f32)),
            NumBuilder::F64(b) => put(b, f(value)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            NumBuilder::U8(b) => Arc::new(b.finish()),
            NumBuilder::U16(b) => Arc::new(b.finish()),
            NumBuilder::U32(b) => Arc::new(b.finish()),
            NumBuilder::U64(b) => Arc::new(b.finish()),
            NumBuilder::I8(b) => Arc::new(b.finish()),
            NumBuilder::I16(b) => Arc::new(b.finish()),
            NumBuilder::I32(b) => Arc::new(b.finish()),
            NumBuilder::I64(b) => Arc::new(b.finish()),
            NumBuilder::F32(b) => Arc::new(b.finish()),
            NumBuilder::F64(b) => Arc::new(b.finish()),
        }
    }
}

/// A list of numbers, built from its items and offsets.
fn number_lists(item_type: &ChType, lists: impl Iterator<Item = Vec<Num>>) -> ArrayRef {
    let mut items = NumBuilder::new(item_type);
    let mut offsets = vec![0i32];
    for list in lists {
        for v in &list {
            items.append(Some(*v));
        }
        offsets.push(offsets.last().unwrap() + list.len() as i32);
    }
    let values = items.finish();
    let field = Arc::new(arrow_schema::Field::new(
        "item",
        values.data_type().clone(),
        false,
    ));
    Arc::new(arrow_array::ListArray::new(
        field,
        arrow_buffer::OffsetBuffer::new(offsets.into()),
        values,
        None,
    ))
}

fn string_lists<'a>(lists: impl Iterator<Item = Vec<&'a str>>) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new()).with_field(arrow_schema::Field::new(
        "item",
        arrow_schema::DataType::Utf8,
        false,
    ));
    for list in lists {
        for v in list {
            builder.values().append_value(v);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn read_u32(bytes: &[u8], at: &mut usize) -> u32 {
    let v = u32::from_le_bytes(bytes[*at..*at + 4].try_into().expect("4 bytes"));
    *at += 4;
    v
}

fn build_batch(
    rollup: &Rollup,
    bins: &[Option<QuantileBins>],
    rows: &[(Box<[u8]>, Group)],
    flush_id: &str,
    contributions: &[(String, String, u64)],
) -> RecordBatch {
    let mut arrays: Vec<ArrayRef> = Vec::new();
    // Bucket and keys, decoded from the key bytes.
    let mut bucket = UInt32Builder::with_capacity(rows.len());
    enum KeyBuilder {
        S(StringBuilder),
        N(NumBuilder),
    }
    let mut key_builders: Vec<KeyBuilder> = rollup
        .keys
        .iter()
        .map(|k| match &k.ch_type {
            ChType::String | ChType::LowCardinality(_) => KeyBuilder::S(StringBuilder::new()),
            t => KeyBuilder::N(NumBuilder::new(t)),
        })
        .collect();
    for (key, _) in rows {
        let mut at = 0;
        bucket.append_value(read_u32(key, &mut at));
        for (spec, builder) in rollup.keys.iter().zip(&mut key_builders) {
            match builder {
                KeyBuilder::S(b) => {
                    let len = read_u32(key, &mut at) as usize;
                    let text = std::str::from_utf8(&key[at..at + len]).expect("utf-8 key");
                    b.append_value(text);
                    at += len;
                }
                KeyBuilder::N(b) if spec.derive == Derive::StatusClass => {
                    b.append(Some(Num::U(key[at] as u64)));
                    at += 1;
                }
                KeyBuilder::N(b) => {
                    let raw = u64::from_le_bytes(key[at..at + 8].try_into().expect("8 bytes"));
                    at += 8;
                    b.append(Some(match number_kind(&spec.ch_type) {
                        Some(NumberKind::Signed) => Num::I(raw as i64),
                        _ => Num::U(raw),
                    }));
                }
            }
        }
    }
    arrays.push(Arc::new(bucket.finish()));
    for builder in &mut key_builders {
        arrays.push(match builder {
            KeyBuilder::S(b) => Arc::new(b.finish()),
            KeyBuilder::N(b) => b.finish(),
        });
    }
    for (index, (measure, bins)) in rollup.measures.iter().zip(bins).enumerate() {
        let states = rows.iter().map(|(_, g)| &g.measures[index]);
        match measure.kind {
            MeasureKind::Count | MeasureKind::Sum => {
                let column_type = &measure.input_columns()[0].1;
                let mut b = NumBuilder::new(column_type);
                for state in states {
                    b.append(Some(match state {
                        MeasureState::Count(n) | MeasureState::SumU(n) => Num::U(*n),
                        MeasureState::SumI(n) => Num::I(*n),
                        MeasureState::SumF(n) => Num::F(*n),
                        _ => unreachable!("count/sum state"),
                    }));
                }
                arrays.push(b.finish());
            }
            MeasureKind::Min | MeasureKind::Max => {
                let mut b = NumBuilder::new(&measure.value_type);
                for state in states {
                    match state {
                        MeasureState::Min(v) | MeasureState::Max(v) => b.append(*v),
                        _ => unreachable!("min/max state"),
                    }
                }
                arrays.push(b.finish());
            }
            MeasureKind::Distinct => arrays.push(match measure.value_type {
                ChType::String => string_lists(states.map(|s| match s {
                    MeasureState::DistinctStr(set) => {
                        let mut values: Vec<&str> = set.iter().map(|v| v.as_str()).collect();
                        values.sort_unstable();
                        values
                    }
                    _ => unreachable!("distinct state"),
                })),
                _ => {
                    let signed = number_kind(&measure.value_type) == Some(NumberKind::Signed);
                    number_lists(
                        &measure.value_type,
                        states.map(|s| match s {
                            MeasureState::DistinctInt(set) => {
                                let mut values: Vec<i64> = set.iter().copied().collect();
                                values.sort_unstable();
                                values
                                    .into_iter()
                                    .map(|v| if signed { Num::I(v) } else { Num::U(v as u64) })
                                    .collect()
                            }
                            _ => unreachable!("distinct state"),
                        }),
                    )
                }
            }),
            MeasureKind::Quantiles => {
                let bins = bins.as_ref().expect("quantile bins");
                let sorted: Vec<Vec<(i32, u64)>> = states
                    .map(|s| match s {
                        MeasureState::Quantiles(counts) => {
                            let mut v: Vec<(i32, u64)> =
                                counts.iter().map(|(b, c)| (*b, *c)).collect();
                            v.sort_unstable();
                            v
                        }
                        _ => unreachable!("quantile state"),
                    })
                    .collect();
                arrays.push(number_lists(
                    &ChType::Float64,
                    sorted
                        .iter()
                        .map(|v| v.iter().map(|(b, _)| Num::F(bins.value(*b))).collect()),
                ));
                arrays.push(number_lists(
                    &ChType::UInt64,
                    sorted
                        .iter()
                        .map(|v| v.iter().map(|(_, c)| Num::U(*c)).collect()),
                ));
            }
        }
    }
    // Flush bookkeeping.
    let mut ids = StringBuilder::new();
    for _ in rows {
        ids.append_value(flush_id);
    }
    arrays.push(Arc::new(ids.finish()));
    let first_only = |values: Vec<&str>| {
        string_lists(
            std::iter::once(values)
                .chain(std::iter::repeat_with(Vec::new))
                .take(rows.len()),
        )
    };
    arrays.push(first_only(
        contributions.iter().map(|c| c.0.as_str()).collect(),
    ));
    arrays.push(first_only(
        contributions.iter().map(|c| c.1.as_str()).collect(),
    ));
    arrays.push(number_lists(
        &ChType::UInt64,
        std::iter::once(contributions.iter().map(|c| Num::U(c.2)).collect())
            .chain(std::iter::repeat_with(Vec::new))
            .take(rows.len()),
    ));
    let names = rollup.input_columns();
    let fields: Vec<arrow_schema::Field> = names
        .iter()
        .zip(&arrays)
        .map(|((name, ty), array)| {
            arrow_schema::Field::new(name, array.data_type().clone(), ty.is_nullable())
        })
        .collect();
    RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), arrays)
        .expect("rollup columns match their fields")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use arrow_array::{
        DictionaryArray, Int16Array, Int32Array, StringArray, UInt16Array, UInt32Array, UInt64Array,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::schema::Schema;

    fn schema(max_groups: usize, max_distinct: usize) -> Schema {
        let text = format!(
            r#"
            stream = "s"
            version = 1
            [table]
            name = "t"
            order_by = ["time"]
            [[columns]]
            name = "time"
            type = "DateTime"
            [[columns]]
            name = "host"
            type = "LowCardinality(String)"
            [[columns]]
            name = "status"
            type = "UInt16"
            [[columns]]
            name = "path"
            type = "String"
            [[columns]]
            name = "bytes"
            type = "UInt64"
            [[columns]]
            name = "ttfb"
            type = "Nullable(UInt32)"
            [[columns]]
            name = "ip"
            type = "String"
            [[columns]]
            name = "delta"
            type = "Int32"
            [[rollups]]
            name = "r"
            time = "time"
            bucket_secs = 60
            max_groups = {max_groups}
            max_distinct = {max_distinct}
            keys = [{{ name = "host" }}, {{ name = "class", column = "status", derive = "status_class" }},
                    {{ name = "prefix", column = "path", derive = "path_prefix", segments = 1 }}]
            measures = [{{ name = "n", kind = "count" }}, {{ name = "b", kind = "sum", column = "bytes" }},
                        {{ name = "d", kind = "sum", column = "delta" }}, {{ name = "lo", kind = "min", column = "ttfb" }},
                        {{ name = "hi", kind = "max", column = "delta" }}, {{ name = "ips", kind = "distinct", column = "ip" }},
                        {{ name = "q", kind = "quantiles", column = "ttfb" }}]
            "#
        );
        Schema::from_toml(&text, Path::new("s.toml")).unwrap()
    }

    /// One generated row: time, host, status, path, bytes, ttfb, ip, delta.
    type Row = (u32, u8, u16, u8, u64, Option<u32>, u8, i32);

    fn batch(rows: &[Row]) -> RecordBatch {
        let hosts = ["a.example", "b.example", "c.example"];
        let paths = [
            "/",
            "/img/x.png",
            "/img/y.png",
            "/api/v1?q=/z",
            "/video/1/2",
        ];
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| hosts[r.1 as usize % 3]),
            )),
            Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| paths[r.3 as usize % 5]),
            )),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.5))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("10.0.0.{}", r.6)),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.7))),
        ];
        let names = [
            "time", "host", "status", "path", "bytes", "ttfb", "ip", "delta",
        ];
        RecordBatch::try_from_iter(names.into_iter().zip(columns)).unwrap()
    }

    /// The model: every row's contribution computed directly, groups keyed by their key bytes
    /// written out by hand.
    fn naive(rows: &[Row]) -> BTreeMap<Box<[u8]>, Group> {
        let hosts = ["a.example", "b.example", "c.example"];
        let prefixes = ["/", "/img", "/img", "/api", "/video"];
        let bins = QuantileBins::new(0.01);
        let mut model: BTreeMap<Box<[u8]>, Group> = BTreeMap::new();
        for r in rows {
            let mut key = Vec::new();
            key.extend_from_slice(&(r.0 - r.0 % 60).to_le_bytes());
            let host = hosts[r.1 as usize % 3];
            key.extend_from_slice(&(host.len() as u32).to_le_bytes());
            key.extend_from_slice(host.as_bytes());
            key.push((r.2 / 100) as u8);
            let prefix = prefixes[r.3 as usize % 5];
            key.extend_from_slice(&(prefix.len() as u32).to_le_bytes());
            key.extend_from_slice(prefix.as_bytes());
            let one = Group {
                measures: vec![
                    MeasureState::Count(1),
                    MeasureState::SumU(r.4),
                    MeasureState::SumI(r.7 as i64),
                    MeasureState::Min(r.5.map(|v| Num::U(v as u64))),
                    MeasureState::Max(Some(Num::I(r.7 as i64))),
                    MeasureState::DistinctStr(HashSet::from([format!("10.0.0.{}", r.6).into()])),
                    MeasureState::Quantiles(
                        r.5.map(|v| (bins.index(v as f64), 1)).into_iter().collect(),
                    ),
                ],
            };
            match model.get_mut(&key[..]) {
                Some(group) => group.merge(one),
                None => {
                    model.insert(key.into(), one);
                }
            }
        }
        model
    }

    fn row() -> impl Strategy<Value = Row> {
        (
            1_767_225_600u32..1_767_225_600 + 600,
            0u8..3,
            prop::sample::select(vec![200u16, 204, 301, 404, 503]),
            0u8..5,
            0u64..1 << 40,
            prop::option::of(0u32..100_000),
            0u8..40,
            -1000i32..1000,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Rows folded in any split over any number of shards, merged in any order, give the
        /// model's groups; a small distinct cap (early partial rows) changes nothing once
        /// partials are merged, as ClickHouse merges them.
        #[test]
        fn shards_merge_to_the_model(
            rows in prop::collection::vec(row(), 0..400),
            shard_of in prop::collection::vec(0usize..4, 400),
            cuts in prop::collection::vec(1usize..50, 1..20),
            max_distinct in prop::sample::select(vec![2usize, 5, 1000]),
            reversed in any::<bool>(),
        ) {
            let schema = schema(100_000, max_distinct);
            let rollup = schema.rollups[0].clone();
            let mut shards: Vec<RollupState> =
                (0..4).map(|_| RollupState::new(rollup.clone())).collect();
            let mut per_shard: Vec<Vec<Row>> = vec![Vec::new(); 4];
            for (i, r) in rows.iter().enumerate() {
                per_shard[shard_of[i]].push(*r);
            }
            for (shard, rows) in shards.iter_mut().zip(&per_shard) {
                let mut start = 0;
                for cut in cuts.iter().cycle() {
                    if start >= rows.len() {
                        break;
                    }
                    let end = (start + cut).min(rows.len());
                    shard.fold(&batch(&rows[start..end]), 0);
                    start = end;
                }
            }
            if reversed {
                shards.reverse();
            }
            let mut merged = shards.remove(0);
            let mut partials = merged.take();
            for shard in shards {
                let mut other = RollupState::new(rollup.clone());
                other.merge(shard);
                partials.extend(other.take());
            }
            prop_assert_eq!(RollupState::merged_view(partials), naive(&rows));
        }
    }

    #[test]
    fn a_full_distinct_set_emits_the_group_early() {
        let schema = schema(100_000, 3);
        let mut state = RollupState::new(schema.rollups[0].clone());
        let rows: Vec<Row> = (0..7u8)
            .map(|ip| (1_767_225_600, 0, 200, 0, 1, Some(5), ip, 0))
            .collect();
        state.fold(&batch(&rows), 1_767_225_600);
        assert_eq!(
            state.stats.early_emits, 2,
            "3 + 3 distinct values emitted, 1 live"
        );
        assert_eq!(state.rows(), 3);
        let partials = state.take();
        let counts: Vec<_> = partials
            .iter()
            .map(|(_, g)| g.measures[0].clone())
            .collect();
        assert_eq!(
            counts,
            [
                MeasureState::Count(3),
                MeasureState::Count(3),
                MeasureState::Count(1)
            ]
        );
    }

    /// A key or measure column that is a request-context column comes as a dictionary (Int16
    /// keys): it folds as its text does.
    #[test]
    fn dictionary_columns_fold_as_their_text() {
        let schema = schema(100, 100);
        let t = 1_767_225_600;
        let rows: Vec<Row> = (0..40)
            .map(|i| {
                (
                    t + i * 7,
                    i as u8,
                    200 + i as u16 % 3 * 100,
                    i as u8,
                    i as u64,
                    Some(i),
                    i as u8 % 9,
                    0,
                )
            })
            .collect();
        let plain = batch(&rows);
        let as_dictionary = |column: &ArrayRef| -> ArrayRef {
            let texts = column.as_string::<i32>();
            let mut values: Vec<&str> = Vec::new();
            let keys: Vec<i16> = texts
                .iter()
                .map(|text| {
                    let text = text.unwrap();
                    let key = values.iter().position(|v| *v == text).unwrap_or_else(|| {
                        values.push(text);
                        values.len() - 1
                    });
                    key as i16
                })
                .collect();
            Arc::new(DictionaryArray::<Int16Type>::new(
                Int16Array::from(keys),
                Arc::new(StringArray::from(values)),
            ))
        };
        let mut columns = plain.columns().to_vec();
        for at in [1, 6] {
            columns[at] = as_dictionary(&columns[at]);
        }
        let names = plain
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect::<Vec<_>>();
        let keyed = RecordBatch::try_from_iter(names.into_iter().zip(columns)).unwrap();
        assert!(matches!(
            keyed.column(1).data_type(),
            arrow_schema::DataType::Dictionary(..)
        ));
        let fold = |batch: &RecordBatch| {
            let mut state = RollupState::new(schema.rollups[0].clone());
            state.fold(batch, t as u64);
            RollupState::merged_view(state.take())
        };
        let folded = fold(&keyed);
        assert_eq!(folded, fold(&plain));
        assert_eq!(folded, naive(&rows));
    }

    #[test]
    fn groups_past_the_cap_go_to_the_overflow_group_of_their_bucket() {
        let schema = schema(2, 1000);
        let mut state = RollupState::new(schema.rollups[0].clone());
        let t = 1_767_225_600;
        let rows: Vec<Row> = vec![
            (t, 0, 200, 0, 1, None, 0, 0),
            (t, 1, 200, 0, 2, None, 0, 0),
            (t, 2, 200, 0, 4, None, 0, 0),
            (t + 1, 2, 404, 1, 8, None, 0, 0),
            (t + 60, 2, 200, 0, 16, None, 0, 0),
            (t, 0, 200, 0, 32, None, 0, 0),
        ];
        // `now` an hour later: every row is late, and still counted.
        state.fold(&batch(&rows), t as u64 + 3600);
        assert_eq!(state.stats.overflow_rows, 3);
        assert_eq!(state.stats.late_rows, 6);
        let rows = state.take();
        let batch = state.to_batch(&rows, "f", &[]);
        let hosts = batch.column(1).as_string::<i32>();
        let classes = batch.column(2).as_primitive::<UInt8Type>();
        let bytes = batch.column(5).as_primitive::<UInt64Type>();
        let mut found: Vec<(String, u8, u64)> = (0..batch.num_rows())
            .map(|i| (hosts.value(i).to_string(), classes.value(i), bytes.value(i)))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("__overflow__".to_string(), 255, 12),
                ("__overflow__".to_string(), 255, 16),
                ("a.example".to_string(), 2, 33),
                ("b.example".to_string(), 2, 2),
            ]
        );
    }

    #[test]
    fn partial_rows_encode_as_the_input_table_reads_them() {
        let schema = schema(100, 100);
        let rollup = schema.rollups[0].clone();
        let mut state = RollupState::new(rollup.clone());
        state.fold(
            &batch(&[
                (1_767_225_601, 0, 200, 1, 10, Some(100), 1, -5),
                (1_767_225_659, 0, 204, 2, 20, None, 2, 7),
            ]),
            0,
        );
        let rows = state.take();
        let contributions = [("p".to_string(), "b1".to_string(), 2)];
        let batch = state.to_batch(&rows, "flush-1", &contributions);
        let columns = rollup.input_columns();
        let native: Vec<crate::encode::NativeColumn<'_>> = columns
            .iter()
            .map(|(name, ch_type)| crate::encode::NativeColumn { name, ch_type })
            .collect();
        let mut out = Vec::new();
        crate::encode::write_native_block(&native, &batch, &mut out).unwrap();
        let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "time",
                "host",
                "class",
                "prefix",
                "n",
                "b",
                "d",
                "lo",
                "hi",
                "ips",
                "q_values",
                "q_weights",
                "_flush_id",
                "_principals",
                "_batch_ids",
                "_rows"
            ]
        );
        assert_eq!(batch.num_rows(), 1);
        let ips = batch.column(9).as_list::<i32>();
        assert_eq!(ips.value(0).as_string::<i32>().len(), 2);
        let lo = batch.column(7).as_primitive::<UInt32Type>();
        assert_eq!(lo.value(0), 100);
        let hi = batch.column(8).as_primitive::<Int32Type>();
        assert_eq!(hi.value(0), 7);
        let weights = batch.column(11).as_list::<i32>();
        assert_eq!(
            weights
                .value(0)
                .as_primitive::<UInt64Type>()
                .values()
                .as_ref(),
            [1]
        );
    }
}
