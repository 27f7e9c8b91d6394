//! Rollups declared in a schema file: pre-aggregated tables fed on the hot path.
//!
//! A rollup groups a stream's accepted rows by a time bucket over a DateTime column and a list of
//! keys (columns, or values derived from one: the HTTP status class, the first N segments of a
//! path), and keeps measures per group: count, sum, min, max, distinct count and quantiles.
//!
//! Sluice does not insert ClickHouse aggregate states (18.16 cannot take them from a client).
//! It inserts plain *partial rows* — one per group per flush — into a `Null`-engine input table;
//! a materialized view turns them into aggregate states in an AggregatingMergeTree, which merges
//! partials from every flush and every sluice node:
//!
//! | measure | input column(s) | state in the rollup table | analyst query |
//! |---|---|---|---|
//! | count | `UInt64` | `sumState` | `sumMerge(m)` |
//! | sum | `UInt64` / `Int64` / `Float64` | `sumState` | `sumMerge(m)` |
//! | min, max | the column's type (Nullable when it is) | `minState` / `maxState` | `minMerge(m)` / `maxMerge(m)` |
//! | distinct | `Array(T)`: the group's distinct values in this partial | `uniqCombinedArrayState` | `uniqCombinedArrayMerge(m)` |
//! | quantiles | `Array(Float64)` bin values, `Array(UInt64)` counts | `quantilesExactWeightedArrayState` | `quantilesExactWeightedArrayMerge(0.5, 0.99)(m)` |
//!
//! Quantile bins are DDSketch's logarithmic bins: a value `v > 0` falls in bin
//! `i = ceil(ln v / ln γ)` with `γ = (1 + α) / (1 − α)`, represented by `2γ^i / (γ + 1)`, which is
//! within relative error `α` of every value of the bin (0 is its own bin, negative values mirror
//! positive ones). Ranks are kept exactly, so a quantile over bins is within `α` of the same
//! quantile over raw values (`quantileExactWeighted` semantics).
//!
//! Every insert also lists the requests whose rows it carries (`_principals`, `_batch_ids`,
//! `_rows`, on its first row); a second materialized view writes them to `<rollup>_flushes`, so
//! sluice can ask, after a crash or a lost answer, whether a request's contribution is stored.

use std::collections::HashSet;

use serde::Deserialize;

use super::{ChType, Column};

/// One `[[rollups]]` entry as written in a schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupSpec {
    /// Name of the rollup table (the input table is `<name>_input`, the flush log
    /// `<name>_flushes`).
    pub name: String,
    /// The DateTime column whose value picks the bucket; the rollup's bucket column has its name.
    pub time: String,
    /// Bucket width in seconds (e.g. 10, 60, 3600).
    pub bucket_secs: u32,
    /// Group-by keys, in ORDER BY order after the bucket.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    pub measures: Vec<MeasureSpec>,
    /// Live groups per flush; rows that would open more go to the bucket's overflow group.
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Distinct values one group holds per partial; a group reaching it is emitted early.
    #[serde(default = "default_max_distinct")]
    pub max_distinct: usize,
    /// Rows whose time is more than this many seconds before the request was received are
    /// counted as late (they still count in their bucket).
    #[serde(default = "default_lateness_secs")]
    pub lateness_secs: u64,
    /// `PARTITION BY` of the rollup table; default `toYYYYMM(<time>)`.
    pub partition_by: Option<String>,
    /// `TTL` of the rollup table (servers from 19.6).
    pub ttl: Option<String>,
}

fn default_max_groups() -> usize {
    100_000
}
fn default_max_distinct() -> usize {
    4096
}
fn default_lateness_secs() -> u64 {
    300
}

/// One group-by key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Name of the key in the rollup table.
    pub name: String,
    /// Source column; default: the key's name.
    pub column: Option<String>,
    /// How the key is derived from the column; default: the value itself.
    #[serde(default)]
    pub derive: Derive,
    /// `path_prefix`: how many path segments to keep.
    pub segments: Option<usize>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Derive {
    /// The column's value (NULL becomes the type's default: keys cannot be NULL).
    #[default]
    Value,
    /// `intDiv(status, 100)` as UInt8: 2 for 2xx.
    StatusClass,
    /// The path before any `?`, cut after `segments` segments: `/a/b/c?x` → `/a` for 1.
    PathPrefix,
}

/// One measure.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasureSpec {
    /// Column name in the rollup table.
    pub name: String,
    pub kind: MeasureKind,
    /// Source column (all kinds but `count`).
    pub column: Option<String>,
    /// `quantiles`: relative accuracy α of the bins (default 0.01).
    pub relative_accuracy: Option<f64>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MeasureKind {
    Count,
    Sum,
    Min,
    Max,
    Distinct,
    Quantiles,
}

/// A checked rollup: every column resolved to its index in the stream's table (which is also its
/// index in the validated Arrow batch).
#[derive(Debug)]
pub struct Rollup {
    pub name: String,
    pub time_name: String,
    pub time_column: usize,
    pub bucket_secs: u32,
    pub keys: Vec<RollupKey>,
    pub measures: Vec<RollupMeasure>,
    pub max_groups: usize,
    pub max_distinct: usize,
    pub lateness_secs: u64,
    pub partition_by: String,
    pub ttl: Option<String>,
}

#[derive(Debug)]
pub struct RollupKey {
    pub name: String,
    pub column: usize,
    pub derive: Derive,
    pub segments: usize,
    /// Type in the rollup table (never Nullable).
    pub ch_type: ChType,
}

#[derive(Debug)]
pub struct RollupMeasure {
    pub name: String,
    pub kind: MeasureKind,
    /// Source column (None for count).
    pub column: Option<usize>,
    /// The source column's value type (without Nullable/LowCardinality); UInt64 for count.
    pub value_type: ChType,
    /// Whether the source column may hold NULL.
    pub nullable: bool,
    pub relative_accuracy: f64,
}

/// How a measure's numbers are held while folding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberKind {
    Unsigned,
    Signed,
    Float,
}

pub fn number_kind(value_type: &ChType) -> Option<NumberKind> {
    match value_type {
        ChType::UInt8 | ChType::UInt16 | ChType::UInt32 | ChType::UInt64 | ChType::DateTime => {
            Some(NumberKind::Unsigned)
        }
        ChType::Int8 | ChType::Int16 | ChType::Int32 | ChType::Int64 => Some(NumberKind::Signed),
        ChType::Float32 | ChType::Float64 => Some(NumberKind::Float),
        _ => None,
    }
}

impl RollupMeasure {
    /// The input-table columns of this measure: (name, type).
    pub fn input_columns(&self) -> Vec<(String, ChType)> {
        let nullable = |t: ChType| {
            if self.nullable {
                ChType::Nullable(Box::new(t))
            } else {
                t
            }
        };
        match self.kind {
            MeasureKind::Count => vec![(self.name.clone(), ChType::UInt64)],
            MeasureKind::Sum => {
                let t = match number_kind(&self.value_type) {
                    Some(NumberKind::Unsigned) => ChType::UInt64,
                    Some(NumberKind::Signed) => ChType::Int64,
                    _ => ChType::Float64,
                };
                vec![(self.name.clone(), t)]
            }
            MeasureKind::Min | MeasureKind::Max => {
                vec![(self.name.clone(), nullable(self.value_type.clone()))]
            }
            MeasureKind::Distinct => vec![(
                self.name.clone(),
                ChType::Array(Box::new(self.value_type.clone())),
            )],
            MeasureKind::Quantiles => vec![
                (
                    format!("{}_values", self.name),
                    ChType::Array(Box::new(ChType::Float64)),
                ),
                (
                    format!("{}_weights", self.name),
                    ChType::Array(Box::new(ChType::UInt64)),
                ),
            ],
        }
    }

    /// The materialized view's expression for this measure's state.
    pub fn state_expression(&self) -> String {
        let name = &self.name;
        match self.kind {
            MeasureKind::Count | MeasureKind::Sum => format!("sumState(`{name}`)"),
            MeasureKind::Min => format!("minState(`{name}`)"),
            MeasureKind::Max => format!("maxState(`{name}`)"),
            MeasureKind::Distinct => format!("uniqCombinedArrayState(`{name}`)"),
            MeasureKind::Quantiles => {
                format!("quantilesExactWeightedArrayState(0.5)(`{name}_values`, `{name}_weights`)")
            }
        }
    }

    /// What an analyst writes to read the merged measure.
    pub fn merge_expression(&self) -> String {
        let name = &self.name;
        match self.kind {
            MeasureKind::Count | MeasureKind::Sum => format!("sumMerge({name})"),
            MeasureKind::Min => format!("minMerge({name})"),
            MeasureKind::Max => format!("maxMerge({name})"),
            MeasureKind::Distinct => format!("uniqCombinedArrayMerge({name})"),
            MeasureKind::Quantiles => {
                format!("quantilesExactWeightedArrayMerge(0.5, 0.9, 0.99)({name})")
            }
        }
    }
}

/// The bookkeeping columns of every input row: the flush id and the requests a flush carries.
pub const FLUSH_COLUMNS: [&str; 4] = ["_flush_id", "_principals", "_batch_ids", "_rows"];

fn flush_column_types() -> [ChType; 4] {
    let array = |t| ChType::Array(Box::new(t));
    [
        ChType::String,
        array(ChType::String),
        array(ChType::String),
        array(ChType::UInt64),
    ]
}

impl Rollup {
    /// Checks a spec against the stream's columns; errors name the key (`rollups[0].keys[1]: …`).
    pub fn check(index: usize, spec: RollupSpec, columns: &[Column]) -> Result<Rollup, String> {
        let at = format!("rollups[{index}] ({})", spec.name);
        if !super::is_identifier(&spec.name) {
            return Err(format!("{at}.name: not a valid identifier"));
        }
        let find = |key: &str, name: &str| {
            columns
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| format!("{key}: unknown column {name:?}"))
        };
        let time_column = find(&format!("{at}.time"), &spec.time)?;
        if columns[time_column].ch_type != ChType::DateTime {
            return Err(format!(
                "{at}.time: {:?} is not a DateTime column",
                spec.time
            ));
        }
        if spec.bucket_secs == 0 {
            return Err(format!("{at}.bucket_secs: must be at least 1"));
        }
        if spec.max_groups == 0 {
            return Err(format!("{at}.max_groups: must be at least 1"));
        }
        if spec.max_distinct == 0 {
            return Err(format!("{at}.max_distinct: must be at least 1"));
        }
        if spec.measures.is_empty() {
            return Err(format!("{at}.measures: at least one measure"));
        }
        let mut names = HashSet::from([spec.time.clone()]);
        for name in FLUSH_COLUMNS {
            names.insert(name.to_string());
        }
        let mut keys = Vec::new();
        for (i, key) in spec.keys.into_iter().enumerate() {
            let at = format!("{at}.keys[{i}] ({})", key.name);
            if !super::is_identifier(&key.name) || !names.insert(key.name.clone()) {
                return Err(format!("{at}.name: not a valid identifier or used twice"));
            }
            let source = key.column.as_deref().unwrap_or(&key.name);
            let column = find(&format!("{at}.column"), source)?;
            let source_type = columns[column].ch_type.value_type().clone();
            let (ch_type, segments) = match key.derive {
                Derive::Value => {
                    let ch_type = match &columns[column].ch_type {
                        ChType::LowCardinality(_) => {
                            ChType::LowCardinality(Box::new(ChType::String))
                        }
                        other => other.value_type().clone(),
                    };
                    let supported = ch_type == ChType::String
                        || ch_type.uses_low_cardinality()
                        || number_kind(&ch_type).is_some_and(|k| k != NumberKind::Float);
                    if !supported {
                        return Err(format!(
                            "{at}.column: keys may be strings or integers, not {}",
                            columns[column].ch_type
                        ));
                    }
                    (ch_type, 0)
                }
                Derive::StatusClass => {
                    if number_kind(&source_type) != Some(NumberKind::Unsigned) {
                        return Err(format!(
                            "{at}.derive: status_class needs an unsigned column"
                        ));
                    }
                    (ChType::UInt8, 0)
                }
                Derive::PathPrefix => {
                    if source_type != ChType::String {
                        return Err(format!("{at}.derive: path_prefix needs a String column"));
                    }
                    match key.segments {
                        Some(n) if n >= 1 => (ChType::String, n),
                        _ => return Err(format!("{at}.segments: path_prefix needs segments ≥ 1")),
                    }
                }
            };
            if key.segments.is_some() && key.derive != Derive::PathPrefix {
                return Err(format!("{at}.segments: only for derive = \"path_prefix\""));
            }
            keys.push(RollupKey {
                name: key.name,
                column,
                derive: key.derive,
                segments,
                ch_type,
            });
        }
        let mut measures = Vec::new();
        for (i, measure) in spec.measures.into_iter().enumerate() {
            let at = format!("{at}.measures[{i}] ({})", measure.name);
            if !super::is_identifier(&measure.name) || !names.insert(measure.name.clone()) {
                return Err(format!("{at}.name: not a valid identifier or used twice"));
            }
            if measure.relative_accuracy.is_some() && measure.kind != MeasureKind::Quantiles {
                return Err(format!(
                    "{at}.relative_accuracy: only for kind = \"quantiles\""
                ));
            }
            let relative_accuracy = measure.relative_accuracy.unwrap_or(0.01);
            if !(relative_accuracy > 0.0 && relative_accuracy < 1.0) {
                return Err(format!("{at}.relative_accuracy: must be in (0, 1)"));
            }
            let (column, value_type, nullable) = match (measure.kind, &measure.column) {
                (MeasureKind::Count, None) => (None, ChType::UInt64, false),
                (MeasureKind::Count, Some(_)) => {
                    return Err(format!("{at}.column: count takes no column"));
                }
                (_, None) => return Err(format!("{at}.column: missing")),
                (kind, Some(name)) => {
                    let column = find(&format!("{at}.column"), name)?;
                    let ch_type = &columns[column].ch_type;
                    let value_type = ch_type.value_type().clone();
                    let numeric = number_kind(&value_type).is_some();
                    let ok = match kind {
                        MeasureKind::Distinct => {
                            value_type == ChType::String
                                || number_kind(&value_type).is_some_and(|k| k != NumberKind::Float)
                        }
                        _ => numeric,
                    };
                    if !ok {
                        return Err(format!("{at}.column: {kind:?} does not apply to {ch_type}"));
                    }
                    (Some(column), value_type, ch_type.is_nullable())
                }
            };
            if measure.kind == MeasureKind::Quantiles {
                names.insert(format!("{}_values", measure.name));
                names.insert(format!("{}_weights", measure.name));
            }
            measures.push(RollupMeasure {
                name: measure.name,
                kind: measure.kind,
                column,
                value_type,
                nullable,
                relative_accuracy,
            });
        }
        Ok(Rollup {
            partition_by: spec
                .partition_by
                .unwrap_or_else(|| format!("toYYYYMM({})", spec.time)),
            name: spec.name,
            time_name: spec.time,
            time_column,
            bucket_secs: spec.bucket_secs,
            keys,
            measures,
            max_groups: spec.max_groups,
            max_distinct: spec.max_distinct,
            lateness_secs: spec.lateness_secs,
            ttl: spec.ttl,
        })
    }

    /// The input table's columns, in insert order: bucket, keys, measures, flush bookkeeping.
    pub fn input_columns(&self) -> Vec<(String, ChType)> {
        let mut columns = vec![(self.time_name.clone(), ChType::DateTime)];
        columns.extend(
            self.keys
                .iter()
                .map(|k| (k.name.clone(), k.ch_type.clone())),
        );
        for measure in &self.measures {
            columns.extend(measure.input_columns());
        }
        for (name, ty) in FLUSH_COLUMNS.into_iter().zip(flush_column_types()) {
            columns.push((name.to_string(), ty));
        }
        columns
    }

    pub fn input_table(&self) -> String {
        format!("{}_input", self.name)
    }

    pub fn flushes_table(&self) -> String {
        format!("{}_flushes", self.name)
    }

    /// The bucket and keys, in ORDER BY order.
    pub fn group_columns(&self) -> Vec<&str> {
        std::iter::once(self.time_name.as_str())
            .chain(self.keys.iter().map(|k| k.name.as_str()))
            .collect()
    }

    /// An example analyst query over the rollup table.
    pub fn example_query(&self, database: &str) -> String {
        let group = self.group_columns().join(", ");
        let measures: Vec<String> = self
            .measures
            .iter()
            .map(|m| format!("{} AS {}", m.merge_expression(), m.name))
            .collect();
        format!(
            "SELECT {group}, {} FROM {database}.{} GROUP BY {group} ORDER BY {group}",
            measures.join(", "),
            self.name
        )
    }
}

/// The path before any `?`, cut after `segments` segments (`/a/b/c?x`, 2 → `/a/b`): the same as
/// `arrayStringConcat(arraySlice(splitByChar('/', splitByChar('?', path)[1]), 1, segments + 1), '/')`.
pub fn path_prefix(path: &str, segments: usize) -> &str {
    let path = path.split('?').next().unwrap_or("");
    match path.match_indices('/').nth(segments) {
        Some((cut, _)) => &path[..cut],
        None => path,
    }
}

/// DDSketch bin of a value for relative accuracy α, as its representative value.
pub struct QuantileBins {
    log_gamma: f64,
    gamma: f64,
    /// The bins of the integers below [`SMALL_INTEGERS`] (milliseconds, bytes, counts: most
    /// values measured are such integers), computed once instead of a logarithm per value.
    small: Box<[i32]>,
}

/// Integers whose bins [`QuantileBins`] keeps at hand.
const SMALL_INTEGERS: usize = 4096;

impl QuantileBins {
    pub fn new(relative_accuracy: f64) -> QuantileBins {
        let gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy);
        let mut bins = QuantileBins {
            log_gamma: gamma.ln(),
            gamma,
            small: Box::new([]),
        };
        bins.small = (0..SMALL_INTEGERS)
            .map(|v| bins.compute(v as f64))
            .collect();
        bins
    }

    /// The bin index of `value` (0 and values too small to index share bin `i32::MIN`; negative
    /// values get the negated index of their magnitude, offset so that they sort below zero).
    pub fn index(&self, value: f64) -> i32 {
        let small = value as usize;
        if small as f64 == value
            && let Some(&bin) = self.small.get(small)
        {
            return bin;
        }
        self.compute(value)
    }

    fn compute(&self, value: f64) -> i32 {
        let magnitude = value.abs();
        // NaN fails both tests and lands in the zero bin.
        if magnitude.is_nan() || magnitude < 1e-9 || !magnitude.is_finite() {
            return 0;
        }
        // Positive bins start at 2^20 so that every index fits and sorts with its value.
        let bin = (magnitude.ln() / self.log_gamma).ceil() as i32;
        let bin = bin.clamp(-(1 << 19), 1 << 19) + (1 << 20);
        if value < 0.0 { -bin } else { bin }
    }

    /// The value a bin stands for.
    pub fn value(&self, index: i32) -> f64 {
        if index == 0 {
            return 0.0;
        }
        let bin = index.abs() - (1 << 20);
        let magnitude = 2.0 * self.gamma.powi(bin) / (self.gamma + 1.0);
        if index < 0 { -magnitude } else { magnitude }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bins kept for small integers are the ones the formula gives, and values that are not
    /// such integers (fractions, negatives, large, not finite) are computed as before.
    #[test]
    fn quantile_bins_of_small_integers_are_the_computed_ones() {
        let bins = QuantileBins::new(0.01);
        let values = (0..SMALL_INTEGERS + 10).map(|v| v as f64).chain([
            -0.0,
            -1.0,
            -4095.0,
            0.5,
            1.5,
            4095.5,
            1e-12,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ]);
        for value in values {
            assert_eq!(bins.index(value), bins.compute(value), "{value}");
        }
        assert_eq!(bins.index(0.0), 0);
        assert_eq!(bins.index(1.0), 1 << 20);
        assert!(bins.index(100.0) < bins.index(110.0));
        assert_eq!(bins.index(-100.0), -bins.index(100.0));
    }

    #[test]
    fn path_prefix_matches_the_sql_expression() {
        assert_eq!(path_prefix("/a/b/c?x=/y", 1), "/a");
        assert_eq!(path_prefix("/a/b/c?x=/y", 2), "/a/b");
        assert_eq!(path_prefix("/a", 2), "/a");
        assert_eq!(path_prefix("/", 1), "/");
        assert_eq!(path_prefix("", 1), "");
        assert_eq!(path_prefix("a/b/c", 1), "a/b");
        assert_eq!(path_prefix("/a/", 1), "/a");
    }

    #[test]
    fn quantile_bins_keep_order_and_relative_error() {
        let bins = QuantileBins::new(0.01);
        let mut previous = i32::MIN;
        for value in [-1e6, -3.5, -1.0, 0.0, 1.0, 2.0, 3.0, 250.0, 251.0, 1e9] {
            let index = bins.index(value);
            assert!(index >= previous, "{value}");
            previous = index;
            let back = bins.value(index);
            assert!(
                (back - value).abs() <= 0.01 * value.abs() + 1e-12,
                "{value} → {back}"
            );
        }
    }
}
