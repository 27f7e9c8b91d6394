//! Validate: check every record against its stream's schema and append the good ones to Arrow
//! column builders.
//!
//! A schema is compiled once per stream version into a [`CompiledSchema`] (field-name index,
//! Arrow schema, defaults). Each request gets a [`BatchBuilder`], which implements the decoder's
//! [`RecordVisitor`]: every field of a record is coerced and appended straight to its column's
//! builder, text from the body without an intermediate copy. A row that fails after some of its
//! values went in is completed with zero values and dropped when the batch is finished, so a bad
//! row leaves no trace in the batch. Bad rows are counted and the first N are reported with line,
//! field and reason.

mod coerce;
mod column;

use std::borrow::Cow;
use std::sync::Arc;

use arrow_array::builder::{ArrayBuilder as _, StringBuilder, UInt32Builder};
use arrow_array::types::Int16Type;
use arrow_array::{ArrayRef, DictionaryArray, Int16Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, SchemaRef};
use hashbrown::HashMap;
use serde::Serialize;
use simd_json::prelude::Writable;

use crate::decode::{self, JsonValue, RecordVisitor};
use crate::schema::{ChType, ContextField, Schema, UnknownFields, quarantine};
use crate::text::{ShortStr, same_text};

use coerce::{Json, Raw};
use column::ColumnBuilder;

/// A delimited-line field name that marks a position to skip.
pub const SKIP_FIELD: &str = "_";

/// What the verified request context contributes to rows (audit columns, region).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub principal: String,
    pub origin: String,
    pub region: String,
    pub batch_id: String,
    pub request_id: String,
    /// Unix seconds.
    pub received_at: u32,
    /// The sender URL-encodes text values (RFC 1738, `+` for space) as Akamai DataStream 2
    /// does: columns marked `url_decode` are decoded.
    pub url_encoded: bool,
}

impl RequestContext {
    /// The column of `rows` rows of a context field whose value is the same in every row of
    /// the request (every field but `extra`).
    fn column(&self, field: ContextField, rows: usize) -> ArrayRef {
        let text = match field {
            ContextField::Principal => &self.principal,
            ContextField::Origin => &self.origin,
            ContextField::Region => &self.region,
            ContextField::BatchId => &self.batch_id,
            ContextField::RequestId => &self.request_id,
            ContextField::ReceivedAt => {
                return Arc::new(UInt32Array::from_value(self.received_at, rows));
            }
            ContextField::Extra => unreachable!("extra differs from row to row"),
        };
        // One value and a two-byte key per row (see `context_type`).
        let keys = Int16Array::from_value(0, rows);
        let values = Arc::new(StringArray::from_iter_values([text]));
        Arc::new(DictionaryArray::<Int16Type>::new(keys, values))
    }
}

/// Per-stream options from the sluice config that change how bodies map to columns.
#[derive(Debug, Clone, Default)]
pub struct StreamOptions {
    /// Field order of delimited lines (default: the schema's body columns in order).
    pub delimited_fields: Option<Vec<String>>,
    /// Overrides the schema's `input.unknown_fields`.
    pub unknown_fields: Option<UnknownFields>,
}

/// One rejected row, as reported to the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// 1-based record number (a CSV header is not counted).
    pub line: usize,
    /// The body field at fault, when one is.
    pub field: Option<String>,
    pub reason: String,
}

/// The validated rows of one request.
#[derive(Debug)]
pub struct ValidatedBatch {
    pub batch: RecordBatch,
    /// Every rejected row, for the stream's quarantine table.
    pub quarantine: RecordBatch,
    pub accepted: usize,
    pub rejected: usize,
    /// The first `max_errors` rejected rows.
    pub errors: Vec<RowError>,
    /// Rejected rows per [`RejectReason`] (every rejected row, not only the reported ones).
    pub rejected_by_reason: [usize; RejectReason::ALL.len()],
    /// Size of the body after decompression.
    pub decoded_bytes: usize,
}

/// Why a row was rejected, in a few classes: the `reason` label of
/// `sluice_rows_rejected_total` and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The record is not a well-formed record of its format (not JSON, wrong CSV width).
    Malformed,
    /// A required field is missing.
    MissingField,
    /// A value does not have the column's type.
    Type,
    /// A value breaks a constraint: range, enum values, length, pattern, IP format.
    Constraint,
    /// A field the schema does not know (`input.unknown_fields = "reject"`) or one given twice.
    UnknownField,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Malformed,
        RejectReason::MissingField,
        RejectReason::Type,
        RejectReason::Constraint,
        RejectReason::UnknownField,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField => "missing_field",
            RejectReason::Type => "type",
            RejectReason::Constraint => "constraint",
            RejectReason::UnknownField => "unknown_field",
        }
    }

    /// Classifies a row error by the messages the validator writes.
    pub fn of(field: Option<&str>, reason: &str) -> RejectReason {
        const CONSTRAINT_WORDS: [&str; 6] = [
            "below the minimum",
            "above the maximum",
            "is not one of",
            "longer than",
            "does not match",
            "not an IP address",
        ];
        if field.is_none() {
            RejectReason::Malformed
        } else if reason == "missing required field" {
            RejectReason::MissingField
        } else if reason == "unknown field" || reason == "field appears more than once" {
            RejectReason::UnknownField
        } else if CONSTRAINT_WORDS.iter().any(|word| reason.contains(word)) {
            RejectReason::Constraint
        } else {
            RejectReason::Type
        }
    }
}

/// A schema prepared for validation.
#[derive(Debug)]
pub struct CompiledSchema {
    pub schema: Arc<Schema>,
    pub arrow_schema: SchemaRef,
    /// The stream's quarantine table.
    pub quarantine: Arc<Schema>,
    pub quarantine_arrow_schema: SchemaRef,
    /// Body field name (primary, alias, or column name) → column index. Looked up once per
    /// field of every record: foldhash, not SipHash. The table is small and never grows from
    /// what a sender writes, so colliding keys cost a sender at most a few probes.
    field_index: HashMap<String, usize>,
    /// Field order of delimited lines.
    delimited_fields: Vec<String>,
    unknown_fields: UnknownFields,
    /// Bytes of text per row of each String column in the last body (0 for other columns):
    /// how much room [`CompiledSchema::begin_sized`] gives the next one.
    string_bytes_per_row: Vec<std::sync::atomic::AtomicU32>,
    /// Decompressed body bytes per record of the last body (0 before the first): how many
    /// records [`CompiledSchema::expected_rows`] expects of the next one.
    body_bytes_per_row: std::sync::atomic::AtomicU32,
    /// Per column: its value is the same in every row of a request (a context column other
    /// than `extra`). Such a column is built once per request, not appended to per row.
    per_request: Vec<bool>,
    /// Columns that get a value in every row (all but the per-request ones).
    row_columns: usize,
    /// Per column: how its values are coerced and checked.
    plans: Vec<coerce::Plan>,
}

impl CompiledSchema {
    pub fn new(schema: Arc<Schema>, options: &StreamOptions) -> Result<CompiledSchema, String> {
        let mut field_index = HashMap::new();
        for (index, column) in schema.columns.iter().enumerate() {
            for field in column.body_fields() {
                field_index.insert(field.to_string(), index);
            }
        }
        for (index, column) in schema.columns.iter().enumerate() {
            if column.spec.context.is_none() {
                field_index
                    .entry(column.name().to_string())
                    .or_insert(index);
            }
        }
        let delimited_fields = match &options.delimited_fields {
            Some(fields) => {
                for field in fields {
                    if field != SKIP_FIELD && !field_index.contains_key(field) {
                        return Err(format!(
                            "delimited_fields: {field:?} is not a field of stream {} (use \"_\" to skip a position)",
                            schema.stream
                        ));
                    }
                }
                fields.clone()
            }
            None => schema
                .body_columns()
                .filter_map(|c| c.primary_field().map(str::to_string))
                .collect(),
        };
        let arrow_schema_of = |schema: &Schema| -> SchemaRef {
            let fields: Vec<Field> = schema
                .columns
                .iter()
                .map(|c| {
                    let data_type = match c.spec.context {
                        Some(field) => context_type(field, &c.ch_type),
                        None => arrow_type(&c.ch_type),
                    };
                    Field::new(c.name(), data_type, c.ch_type.is_nullable())
                })
                .collect();
            Arc::new(arrow_schema::Schema::new(fields))
        };
        let quarantine = Arc::new(quarantine::schema_for(&schema));
        let per_request: Vec<bool> = schema
            .columns
            .iter()
            .map(|c| c.spec.context.is_some_and(|f| f != ContextField::Extra))
            .collect();
        let row_columns = per_request.iter().filter(|&&p| !p).count();
        Ok(CompiledSchema {
            arrow_schema: arrow_schema_of(&schema),
            quarantine_arrow_schema: arrow_schema_of(&quarantine),
            quarantine,
            field_index,
            delimited_fields,
            unknown_fields: options
                .unknown_fields
                .unwrap_or(schema.input.unknown_fields),
            string_bytes_per_row: schema.columns.iter().map(|_| Default::default()).collect(),
            body_bytes_per_row: Default::default(),
            per_request,
            row_columns,
            plans: schema.columns.iter().map(coerce::Plan::new).collect(),
            schema,
        })
    }

    pub fn delimited_fields(&self) -> Vec<&str> {
        self.delimited_fields.iter().map(String::as_str).collect()
    }

    pub fn delimiter(&self) -> u8 {
        self.schema.input.delimiter.as_bytes()[0]
    }

    /// About how many records the decompressed `body` holds, to size the column builders: as
    /// many as the last body's bytes per record make (an eighth more), or, for the first body,
    /// one per line (none for a JSON array), counted.
    fn expected_rows(&self, body: &[u8], format: decode::BodyFormat) -> usize {
        match self
            .body_bytes_per_row
            .load(std::sync::atomic::Ordering::Relaxed) as usize
        {
            0 if format == decode::BodyFormat::JsonArray => 0,
            0 => memchr::memchr_iter(b'\n', body).count() + 1,
            per_row => body.len() / per_row * 9 / 8 + 1,
        }
    }

    /// Remembers the bytes per record of a body for [`Self::expected_rows`].
    fn note_body(&self, bytes: usize, records: usize) {
        if let Some(per_row) = bytes.checked_div(records) {
            let per_row = per_row.clamp(1, u32::MAX as usize) as u32;
            self.body_bytes_per_row
                .store(per_row, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Starts the batch of one request.
    pub fn begin<'s>(&'s self, context: &'s RequestContext, max_errors: usize) -> BatchBuilder<'s> {
        self.begin_sized(context, max_errors, 0, 0)
    }

    /// [`CompiledSchema::begin`] for a body of about `rows` records and `body_bytes` bytes: the
    /// column builders start with room for them, and String columns with room for as many
    /// bytes per row as the last body of this schema had (plus an eighth), never more than a
    /// quarter of the body each (a body of huge values must not size the next one's columns).
    pub fn begin_sized<'s>(
        &'s self,
        context: &'s RequestContext,
        max_errors: usize,
        rows: usize,
        body_bytes: usize,
    ) -> BatchBuilder<'s> {
        BatchBuilder {
            compiled: self,
            context,
            builders: self
                .schema
                .columns
                .iter()
                .zip(&self.string_bytes_per_row)
                .zip(&self.per_request)
                .map(|((c, per_row), &per_request)| {
                    let rows = if per_request { 0 } else { rows };
                    let per_row = per_row.load(std::sync::atomic::Ordering::Relaxed) as usize;
                    let bytes = (rows * per_row / 8 * 9).min(body_bytes / 4);
                    ColumnBuilder::new(&c.ch_type, rows, bytes)
                })
                .collect(),
            filled: vec![0; self.schema.columns.len()],
            serial: 0,
            row_values: 0,
            builder_rows: 0,
            dropped: Vec::new(),
            scratch: coerce::Scratch::default(),
            extra: String::new(),
            text_names: Vec::new(),
            json_fields: Vec::new(),
            json_skipped: 0,
            row_error: None,
            accepted: 0,
            rejected: 0,
            errors: Vec::new(),
            rejected_by_reason: [0; RejectReason::ALL.len()],
            max_errors,
            quarantine: QuarantineBuilder::default(),
        }
    }
}

/// The Arrow type a ClickHouse type is built as (see `encode` for the wire side).
pub fn arrow_type(ch_type: &ChType) -> DataType {
    match ch_type {
        ChType::String => DataType::Utf8,
        ChType::FixedString(n) => DataType::FixedSizeBinary(*n as i32),
        ChType::UInt8 => DataType::UInt8,
        ChType::UInt16 => DataType::UInt16,
        ChType::UInt32 | ChType::DateTime => DataType::UInt32,
        ChType::UInt64 => DataType::UInt64,
        ChType::Int8 | ChType::Enum8(_) => DataType::Int8,
        ChType::Int16 => DataType::Int16,
        ChType::Int32 => DataType::Int32,
        ChType::Int64 => DataType::Int64,
        ChType::Float32 => DataType::Float32,
        ChType::Float64 => DataType::Float64,
        ChType::UUID => DataType::FixedSizeBinary(16),
        ChType::Nullable(inner) | ChType::LowCardinality(inner) => arrow_type(inner),
        ChType::Array(_) => DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
    }
}

/// The Arrow type of a context column: the text of a request (every field but `extra` and
/// `received_at`) is one value for all its rows, so it is a dictionary of that value with an
/// Int16 key per row. As Utf8 the five audit columns of `edge_access` were a quarter of a
/// batch's Arrow bytes, and so of what `batch.max_bytes` and the in-flight bound count.
fn context_type(field: ContextField, ch_type: &ChType) -> DataType {
    match field {
        ContextField::Extra | ContextField::ReceivedAt => arrow_type(ch_type),
        _ => DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8)),
    }
}

/// Validates the records of one request into Arrow columns.
pub struct BatchBuilder<'s> {
    compiled: &'s CompiledSchema,
    context: &'s RequestContext,
    /// One per column; per-request context columns stay empty (built at [`Self::finish`]).
    builders: Vec<ColumnBuilder>,
    /// Per column: the serial number of the last row that appended a value to it.
    filled: Vec<u64>,
    /// The current row's serial number (from 1, so that 0 in `filled` is "never").
    serial: u64,
    /// Values the current row has appended so far.
    row_values: usize,
    /// Rows in the builders: accepted rows, and rows that failed after appending a value.
    builder_rows: usize,
    /// Builder rows of rejected records, dropped at [`Self::finish`] (rare: a failed row
    /// leaves values behind only when its error comes after a good field).
    dropped: Vec<usize>,
    scratch: coerce::Scratch,
    /// Unknown fields of the current row as JSON object members (`"k":v,…`).
    extra: String,
    /// Field names of the positional fields of text records, with their columns.
    text_names: Vec<(String, Option<usize>)>,
    /// The fields JSON records name, in the order they name them, with their columns: a
    /// sender's records mostly name the same fields in the same order, so one comparison with
    /// the field expected next replaces a lookup. A record that leaves fields out skips over
    /// them; a field that is not here yet is inserted where it came, so the list becomes the
    /// union of the records' fields in their order (up to [`JSON_FIELDS_KEPT`] entries).
    json_fields: Vec<(Cow<'s, str>, Option<usize>)>,
    /// Entries of `json_fields` the current record has skipped.
    json_skipped: usize,
    /// First problem of the current row.
    row_error: Option<(Option<String>, String)>,
    accepted: usize,
    rejected: usize,
    errors: Vec<RowError>,
    rejected_by_reason: [usize; RejectReason::ALL.len()],
    max_errors: usize,
    quarantine: QuarantineBuilder,
}

/// Entries of [`BatchBuilder::json_fields`] compared with a field before it is looked up.
const JSON_FIELDS_AHEAD: usize = 4;
/// Most entries [`BatchBuilder::json_fields`] grows to (records whose fields vary more than that
/// replace entries instead).
const JSON_FIELDS_KEPT: usize = 128;

impl<'s> BatchBuilder<'s> {
    pub fn rows(&self) -> usize {
        self.accepted
    }

    pub fn finish(mut self) -> ValidatedBatch {
        for (builder, per_row) in self
            .builders
            .iter()
            .zip(&self.compiled.string_bytes_per_row)
        {
            if let Some(bytes) = builder.text_bytes_per_value() {
                per_row.store(bytes as u32, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let keep = (!self.dropped.is_empty()).then(|| {
            let mut keep = vec![true; self.builder_rows];
            for &row in &self.dropped {
                keep[row] = false;
            }
            arrow_array::BooleanArray::from(keep)
        });
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .zip(&self.compiled.schema.columns)
            .zip(&self.compiled.per_request)
            .map(
                |((builder, column), &per_request)| match column.spec.context {
                    Some(field) if per_request => self.context.column(field, self.accepted),
                    _ => {
                        debug_assert_eq!(builder.len(), self.builder_rows, "{}", column.name());
                        let array = builder.finish();
                        match &keep {
                            Some(keep) => arrow_select::filter::filter(&array, keep)
                                .expect("a mask as long as the column"),
                            None => array,
                        }
                    }
                },
            )
            .collect();
        let batch = RecordBatch::try_new(self.compiled.arrow_schema.clone(), columns)
            .expect("builders follow the compiled Arrow schema");
        let quarantine = self.quarantine.finish(self.compiled, self.context);
        ValidatedBatch {
            batch,
            quarantine,
            accepted: self.accepted,
            rejected: self.rejected,
            errors: self.errors,
            rejected_by_reason: self.rejected_by_reason,
            decoded_bytes: 0,
        }
    }

    fn start_row(&mut self) {
        self.serial += 1;
        self.json_skipped = 0;
        self.row_values = 0;
        self.extra.clear();
        self.row_error = None;
    }

    fn fail(&mut self, field: Option<&str>, reason: String) {
        if self.row_error.is_none() {
            self.row_error = Some((field.map(str::to_string), reason));
        }
    }

    /// [`Self::append_field`] for the `position`-th field of a JSON record.
    fn append_json_field(&mut self, position: usize, name: &str, value: Raw<'_>) {
        let at = (position + self.json_skipped).min(self.json_fields.len());
        let ahead = &self.json_fields[at..];
        // The common case, the field expected next, without the search's iterator.
        let found = match ahead.first() {
            Some((known, index)) if same_text(known, name) => Some((0, *index)),
            _ => ahead
                .iter()
                .take(JSON_FIELDS_AHEAD)
                .enumerate()
                .skip(1)
                .find(|(_, (known, _))| same_text(known, name))
                .map(|(skip, (_, index))| (skip, *index)),
        };
        let index = match found {
            Some((skip, index)) => {
                self.json_skipped += skip;
                index
            }
            None => {
                let compiled: &'s CompiledSchema = self.compiled;
                let entry = match compiled.field_index.get_key_value(&ShortStr(name)) {
                    Some((known, &index)) => (Cow::Borrowed(known.as_str()), Some(index)),
                    None => (Cow::Owned(name.to_string()), None),
                };
                let index = entry.1;
                if self.json_fields.len() < JSON_FIELDS_KEPT {
                    self.json_fields.insert(at, entry);
                } else if let Some(slot) = self.json_fields.get_mut(at) {
                    *slot = entry;
                }
                index
            }
        };
        self.append_field(index, name, value);
    }

    /// Appends a field whose column is `index` (`None`: not a column of the schema).
    #[inline(always)]
    fn append_field(&mut self, index: Option<usize>, name: &str, value: Raw<'_>) {
        match index {
            Some(index) => self.append_to(index, name, value),
            None => self.unknown_field(name, value),
        }
    }

    /// Coerces a value and appends it to column `index`; `name` is the field as the sender
    /// named it. Inlined into the record loops, which call it once per field.
    #[inline(always)]
    fn append_to(&mut self, index: usize, name: &str, value: Raw<'_>) {
        if self.row_error.is_some() {
            return;
        }
        if self.filled[index] == self.serial {
            return self.fail(Some(name), "field appears more than once".to_string());
        }
        let plan = &self.compiled.plans[index];
        if plan.is_absent(value, &self.compiled.schema.input.absent) {
            return;
        }
        match coerce::append(
            &self.compiled.schema.columns[index],
            plan,
            value,
            self.context.url_encoded,
            &mut self.builders[index],
            &mut self.scratch,
        ) {
            Ok(()) => {
                self.filled[index] = self.serial;
                self.row_values += 1;
            }
            Err(reason) => self.fail(Some(name), reason),
        }
    }

    fn unknown_field(&mut self, name: &str, value: Raw<'_>) {
        if self.row_error.is_some() || name == SKIP_FIELD {
            return;
        }
        match self.compiled.unknown_fields {
            UnknownFields::Ignore => {}
            UnknownFields::Reject => self.fail(Some(name), "unknown field".to_string()),
            UnknownFields::Keep => {
                self.extra
                    .push(if self.extra.is_empty() { '{' } else { ',' });
                coerce::push_json_string(&mut self.extra, name);
                self.extra.push(':');
                match value {
                    Raw::Json(v) => self.extra.push_str(&v.encode()),
                    Raw::Text(t) => coerce::push_json_string(&mut self.extra, t),
                }
            }
        }
    }

    /// Fills the columns the row did not name (default, NULL or zero, `extra`, or a
    /// missing-field error) and counts the row if it is valid; otherwise returns the field and
    /// reason, and a row that left values in the builders is completed and marked to be
    /// dropped, so that every column keeps one value per builder row.
    fn end_row(&mut self, _line: usize) -> Option<(Option<String>, String)> {
        if self.row_error.is_none() && self.row_values < self.compiled.row_columns {
            self.fill_absent();
        }
        match self.row_error.take() {
            None => {
                self.builder_rows += 1;
                self.accepted += 1;
                None
            }
            failure => {
                if self.row_values > 0 {
                    self.pad_row();
                }
                failure
            }
        }
    }

    /// Appends what each column the row did not name gets, until a column has nothing to get.
    fn fill_absent(&mut self) {
        let columns = &self.compiled.schema.columns;
        for (index, column) in columns.iter().enumerate() {
            if self.filled[index] == self.serial || self.compiled.per_request[index] {
                continue;
            }
            let builder = &mut self.builders[index];
            let resolved = match column.spec.context {
                Some(ContextField::Extra) => {
                    if self.extra.is_empty() {
                        builder.append_str("{}");
                    } else {
                        self.extra.push('}');
                        builder.append_str(&self.extra);
                    }
                    Ok(())
                }
                Some(field) => unreachable!("{field:?} is built per request"),
                None if column.spec.required => Err("missing required field".to_string()),
                None => match &column.spec.default {
                    Some(default) => {
                        let plan = &self.compiled.plans[index];
                        if plan.is_absent(Raw::Text(default), &[]) {
                            builder.append_zero(&column.ch_type);
                            Ok(())
                        } else {
                            coerce::append(
                                column,
                                plan,
                                Raw::Text(default),
                                false,
                                builder,
                                &mut self.scratch,
                            )
                            .map_err(|reason| format!("default value: {reason}"))
                        }
                    }
                    None if column.ch_type.is_nullable() => {
                        builder.append_null();
                        Ok(())
                    }
                    None => {
                        builder.append_zero(&column.ch_type);
                        Ok(())
                    }
                },
            };
            match resolved {
                Ok(()) => {
                    self.filled[index] = self.serial;
                    self.row_values += 1;
                }
                Err(reason) => {
                    let field = column.primary_field().unwrap_or(column.name()).to_string();
                    self.row_error = Some((Some(field), reason));
                    return;
                }
            }
        }
    }

    /// Completes a failed row that already appended values with zero values, and marks it to
    /// be dropped.
    fn pad_row(&mut self) {
        let columns = &self.compiled.schema.columns;
        for (index, column) in columns.iter().enumerate() {
            if self.filled[index] != self.serial && !self.compiled.per_request[index] {
                self.builders[index].append_zero(&column.ch_type);
            }
        }
        self.dropped.push(self.builder_rows);
        self.builder_rows += 1;
    }

    /// Counts and reports a rejected row and keeps it for the quarantine table.
    fn reject(&mut self, line: usize, field: Option<String>, reason: String, raw: &[u8]) {
        self.rejected += 1;
        let class = RejectReason::of(field.as_deref(), &reason);
        self.rejected_by_reason[class as usize] += 1;
        let raw = String::from_utf8_lossy(raw);
        let field_name = field.as_deref().unwrap_or("");
        self.quarantine.push(line as u32, field_name, &reason, &raw);
        if self.errors.len() < self.max_errors {
            self.errors.push(RowError {
                line,
                field,
                reason,
            });
        }
    }
}

/// Rejected rows on their way to the stream's quarantine table (see [`quarantine::COLUMNS`]):
/// rows that failed validation, and rows ClickHouse refused.
#[derive(Default)]
pub struct QuarantineBuilder {
    line: UInt32Builder,
    field: StringBuilder,
    error: StringBuilder,
    raw: StringBuilder,
}

impl QuarantineBuilder {
    pub fn push(&mut self, line: u32, field: &str, error: &str, raw: &str) {
        self.line.append_value(line);
        self.field.append_value(field);
        self.error.append_value(error);
        self.raw.append_value(raw);
    }

    /// The quarantine rows of one request.
    pub fn finish(&mut self, compiled: &CompiledSchema, context: &RequestContext) -> RecordBatch {
        let rows = self.line.len();
        let repeat = |text: &str| -> ArrayRef {
            Arc::new(arrow_array::StringArray::from_iter_values(
                std::iter::repeat_n(text, rows),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(arrow_array::UInt32Array::from_value(
                context.received_at,
                rows,
            )),
            repeat(&compiled.schema.stream),
            Arc::new(arrow_array::UInt32Array::from_value(
                compiled.schema.version,
                rows,
            )),
            context.column(ContextField::Principal, rows),
            context.column(ContextField::Origin, rows),
            context.column(ContextField::BatchId, rows),
            context.column(ContextField::RequestId, rows),
            Arc::new(self.line.finish()),
            Arc::new(self.field.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(compiled.quarantine_arrow_schema.clone(), columns)
            .expect("quarantine columns follow quarantine::COLUMNS")
    }
}

impl RecordVisitor for BatchBuilder<'_> {
    fn text_header(&mut self, names: &[&str]) {
        self.text_names = names
            .iter()
            .map(|name| {
                let index = self.compiled.field_index.get(*name).copied();
                (name.to_string(), index)
            })
            .collect();
    }

    fn json_record(&mut self, line: usize, record: JsonValue<'_>, raw: Option<&[u8]>) {
        self.start_row();
        let failure = match record.as_object() {
            Some(fields) => {
                for (position, (name, value)) in fields.iter().enumerate() {
                    self.append_json_field(position, name, Raw::Json(Json::of(value)));
                }
                self.end_row(line)
            }
            None => Some((None, "record is not a JSON object".to_string())),
        };
        if let Some((field, reason)) = failure {
            // Elements of a JSON array have no text of their own: keep them re-encoded.
            let encoded;
            let raw = match raw {
                Some(raw) => raw,
                None => {
                    encoded = record.encode();
                    encoded.as_bytes()
                }
            };
            self.reject(line, field, reason, raw);
        }
    }

    fn text_record(&mut self, line: usize, fields: &[&str], raw: &[u8]) {
        self.start_row();
        let failure = if fields.len() != self.text_names.len() {
            let reason = format!(
                "expected {} fields, got {}",
                self.text_names.len(),
                fields.len()
            );
            Some((None, reason))
        } else {
            let names = std::mem::take(&mut self.text_names);
            for ((name, index), value) in names.iter().zip(fields) {
                self.append_field(*index, name, Raw::Text(value));
            }
            self.text_names = names;
            self.end_row(line)
        };
        if let Some((field, reason)) = failure {
            self.reject(line, field, reason, raw);
        }
    }

    fn malformed_record(&mut self, line: usize, reason: &str, raw: &[u8]) {
        self.reject(line, None, reason.to_string(), raw);
    }
}

/// Limits that apply while decoding one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub max_decompressed_bytes: usize,
    pub max_records: usize,
    pub max_errors: usize,
    /// Longest record in bytes (see [`decode::DecodeOptions::max_line_bytes`]).
    pub max_line_bytes: usize,
    /// Deepest JSON nesting of a record (see [`decode::DecodeOptions::max_nesting_depth`]).
    pub max_nesting_depth: usize,
}

/// How [`validate_body`] goes about one body, besides its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Validation {
    /// Also return the digest of the decompressed body (for batch-id deduplication).
    pub digest: bool,
    /// An NDJSON body of at least twice this many bytes after decompression is validated in
    /// parts of at least this size at once, up to one per CPU (`ingest.decode_part_bytes`);
    /// 0 validates every body on one thread. The answer is the same either way.
    pub part_bytes: usize,
}

/// What [`validate_body`] makes of a body: its rows and, if asked for, the digest of the
/// inflated body; `None` for Logpush's destination probe; or why the body as a whole is refused.
pub type BodyVerdict =
    Result<Option<(ValidatedBatch, Option<crate::dedup::Digest>)>, decode::DecodeError>;

/// Decompresses, frames and validates one body: CPU work, run it off the async workers (a small
/// body may be validated on one with [`validate_small_body`]).
/// `None` for Logpush's destination probe (`{"content":"tests"}`).
pub fn validate_body(
    compiled: &CompiledSchema,
    context: RequestContext,
    body: &[u8],
    encoding: decode::ContentEncoding,
    content_type: Option<&str>,
    limits: BodyLimits,
    how: Validation,
) -> BodyVerdict {
    thread_local! {
        /// The decompressed body, one buffer per decode thread: a fresh multi-megabyte vector
        /// per request cost page faults (the allocator gives freed pages back at once).
        static DECOMPRESSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Larger buffers are freed after their request rather than kept by an idle thread.
    const KEEP_BYTES: usize = 8 << 20;
    DECOMPRESSED.with_borrow_mut(|buffer| {
        let result = validate_decompressed(
            compiled,
            context,
            body,
            encoding,
            content_type,
            limits,
            how,
            buffer,
        );
        if buffer.capacity() > KEEP_BYTES {
            *buffer = Vec::new();
        }
        result
    })
}

/// Records [`validate_small_body`] validates at most: a request of 64 KiB of 3-byte records
/// (21,845 rows, each rejected) took 11 ms in sluice's handler, which no async worker should
/// spend on one body. (Decoding stops at the first record past the cap, before it counts any
/// record refused for its length or depth: the blocking thread's pass counts them once.)
pub const SMALL_BODY_RECORDS: usize = 500;

/// [`validate_body`] for a body small enough to validate on an async worker: handing it to a
/// blocking thread and back costs two thread wake-ups, more CPU than validating a few dozen
/// rows. `None` when the body is larger than `max_bytes` as received or once inflated, or holds
/// more than [`SMALL_BODY_RECORDS`] records (inflating or decoding stops there): validate it
/// with [`validate_body`] on a blocking thread. Otherwise the answer is [`validate_body`]'s under
/// the same limits, on this thread alone (no parts).
#[allow(clippy::too_many_arguments)] // validate_body's arguments and the bound
pub fn validate_small_body(
    compiled: &CompiledSchema,
    context: &RequestContext,
    body: &[u8],
    encoding: decode::ContentEncoding,
    content_type: Option<&str>,
    limits: BodyLimits,
    how: Validation,
    max_bytes: usize,
) -> Option<BodyVerdict> {
    // A body whose trailer already says it is larger is not inflated here up to the bound
    // only to be inflated again on the blocking thread.
    if body.len() > max_bytes
        || decode::announced_size(body, encoding).is_some_and(|size| size > max_bytes)
    {
        return None;
    }
    let capped = BodyLimits {
        max_decompressed_bytes: limits.max_decompressed_bytes.min(max_bytes),
        max_records: limits.max_records.min(SMALL_BODY_RECORDS),
        ..limits
    };
    let how = Validation {
        part_bytes: 0,
        ..how
    };
    let context = context.clone();
    match validate_body(compiled, context, body, encoding, content_type, capped, how) {
        // Over the bound, not over the limit: the body is not small.
        Err(decode::DecodeError::DecompressedTooLarge { .. })
            if limits.max_decompressed_bytes > capped.max_decompressed_bytes =>
        {
            None
        }
        Err(decode::DecodeError::TooManyRecords { .. })
            if limits.max_records > capped.max_records =>
        {
            None
        }
        answer => Some(answer),
    }
}

#[allow(clippy::too_many_arguments)] // validate_body's arguments and its buffer
fn validate_decompressed(
    compiled: &CompiledSchema,
    mut context: RequestContext,
    body: &[u8],
    encoding: decode::ContentEncoding,
    content_type: Option<&str>,
    limits: BodyLimits,
    how: Validation,
    buffer: &mut Vec<u8>,
) -> BodyVerdict {
    decode::decompress_into(body, encoding, limits.max_decompressed_bytes, buffer)?;
    let body = buffer;
    if decode::is_logpush_probe(body) {
        return Ok(None);
    }
    let digest = how.digest.then(|| crate::dedup::digest(body));
    let format = decode::body_format(content_type, body)?;
    // Structured lines hold no spaces only because their values are URL-encoded.
    context.url_encoded |= format == decode::BodyFormat::Delimited;
    let delimited_fields = compiled.delimited_fields();
    let options = decode::DecodeOptions {
        delimiter: compiled.delimiter(),
        delimited_fields: &delimited_fields,
        max_records: limits.max_records,
        max_line_bytes: limits.max_line_bytes,
        max_nesting_depth: limits.max_nesting_depth,
    };
    let decoded_bytes = body.len();
    let rows = compiled.expected_rows(body, format).min(limits.max_records);
    let parts = match format {
        decode::BodyFormat::Ndjson => parts_of(body.len(), how.part_bytes),
        _ => 1,
    };
    let in_parts = match parts {
        1 => None,
        _ => validate_in_parts(compiled, &context, body, &options, limits, rows, parts)?,
    };
    let mut validated = match in_parts {
        Some(validated) => validated,
        None => {
            let mut builder = compiled.begin_sized(&context, limits.max_errors, rows, body.len());
            decode::decode(format, body, &options, &mut builder)?;
            builder.finish()
        }
    };
    validated.decoded_bytes = decoded_bytes;
    compiled.note_body(decoded_bytes, validated.accepted + validated.rejected);
    Ok(Some((validated, digest)))
}

/// How many parts a body of `bytes` is validated in: one per `part_bytes` (none when 0), at
/// most one per CPU.
fn parts_of(bytes: usize, part_bytes: usize) -> usize {
    /// Read once: `available_parallelism` reads the cgroup's CPU quota from files on every
    /// call, which took 5.8 % of sluice's CPU at 100-row batches when every body asked.
    static CPUS: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    match bytes.checked_div(part_bytes) {
        Some(parts) if parts > 1 => parts.min(*CPUS),
        _ => 1,
    }
}

/// Validates an NDJSON body as `parts` runs of whole lines at once, the first on this thread,
/// the others on threads of their own (`decode-part`), and joins the results as the body
/// validated in one go would be: rows in body order, line numbers counted from the body's
/// first line, the first `max_errors` errors. A part none of whose lines is JSON is a part of
/// malformed records, as those lines are in the body as a whole; only when no part has JSON is
/// the body refused as not NDJSON. `None` when a part's thread could not start or panicked:
/// the caller validates the body in one go, whose answer is the reference (what the parts that
/// did decode counted in metrics, lines refused for their length or depth, is then counted
/// twice).
fn validate_in_parts(
    compiled: &CompiledSchema,
    context: &RequestContext,
    body: &mut [u8],
    options: &decode::DecodeOptions<'_>,
    limits: BodyLimits,
    rows: usize,
    parts: usize,
) -> Result<Option<ValidatedBatch>, decode::DecodeError> {
    let total = body.len();
    let mut pieces: Vec<&mut [u8]> = Vec::with_capacity(parts);
    let mut rest = body;
    let mut start = 0;
    for part in 1..parts {
        // Each cut follows the first line end at or after its share of the body.
        let from = (total * part / parts).max(start) - start;
        let Some(at) = memchr::memchr(b'\n', &rest[from..]) else {
            break;
        };
        let (piece, tail) = rest.split_at_mut(from + at + 1);
        start += piece.len();
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    let rows = rows / pieces.len() + 1;
    let validate = |piece: &mut [u8]| {
        let mut builder = compiled.begin_sized(context, limits.max_errors, rows, piece.len());
        let decoded = decode::decode(decode::BodyFormat::Ndjson, piece, options, &mut builder);
        (decoded, builder.finish())
    };
    // A thread of its own for every part but the first, which this thread validates: a
    // thread starts in tens of microseconds, a part takes milliseconds, and no part waits
    // behind another body's as it would in a pool. `None` for a part whose thread could not
    // start or panicked: the body is then validated in one go.
    let results: Vec<Option<_>> = std::thread::scope(|scope| {
        let mut pieces = pieces.into_iter();
        let first = pieces.next();
        let others: Vec<_> = pieces
            .map(|piece| {
                std::thread::Builder::new()
                    .name("decode-part".into())
                    .spawn_scoped(scope, || validate(piece))
            })
            .collect();
        let first = first.map(validate);
        std::iter::once(first)
            .chain(others.into_iter().map(|spawned| spawned.ok()?.join().ok()))
            .collect()
    });
    let mut validated = Vec::with_capacity(results.len());
    let (mut records, mut framed, mut not_framed) = (0, false, None);
    for result in results {
        let Some((decoded, part)) = result else {
            return Ok(None);
        };
        let part_records = match decoded {
            Ok(summary) => {
                framed = true;
                summary.records
            }
            // Every line of the part is a malformed record, each counted as one rejected row.
            Err(err @ decode::DecodeError::NotFramed { .. }) => {
                not_framed.get_or_insert(err);
                part.accepted + part.rejected
            }
            // More records in a part than in the whole body allowed.
            Err(err) => return Err(err),
        };
        validated.push((records, part));
        records += part_records;
    }
    // No line of any part is JSON: the first part's first line is the body's first line, so
    // its refusal is the body's.
    if let (false, Some(err)) = (framed, not_framed) {
        return Err(err);
    }
    if records > limits.max_records {
        return Err(decode::DecodeError::TooManyRecords {
            limit: limits.max_records,
        });
    }
    Ok(Some(ValidatedBatch::joined(validated, limits.max_errors)))
}

impl ValidatedBatch {
    /// The parts of one body, each with the records before it, as one batch (its
    /// `decoded_bytes` left for the caller).
    fn joined(parts: Vec<(usize, ValidatedBatch)>, max_errors: usize) -> ValidatedBatch {
        let schema = parts[0].1.batch.schema();
        let quarantine_schema = parts[0].1.quarantine.schema();
        let line = quarantine_schema
            .index_of("line")
            .expect("the quarantine table has a line column");
        let mut batches = Vec::with_capacity(parts.len());
        let mut quarantines = Vec::with_capacity(parts.len());
        let (mut accepted, mut rejected) = (0, 0);
        let mut errors: Vec<RowError> = Vec::new();
        let mut rejected_by_reason = [0; RejectReason::ALL.len()];
        for (before, part) in parts {
            accepted += part.accepted;
            rejected += part.rejected;
            for (sum, count) in rejected_by_reason.iter_mut().zip(part.rejected_by_reason) {
                *sum += count;
            }
            let room = max_errors.saturating_sub(errors.len());
            errors.extend(part.errors.into_iter().take(room).map(|error| RowError {
                line: error.line + before,
                ..error
            }));
            let mut quarantine = part.quarantine;
            if before > 0 && quarantine.num_rows() > 0 {
                let lines: &UInt32Array = quarantine
                    .column(line)
                    .as_any()
                    .downcast_ref()
                    .expect("line is UInt32");
                let shifted =
                    UInt32Array::from_iter_values(lines.values().iter().map(|l| l + before as u32));
                let mut columns = quarantine.columns().to_vec();
                columns[line] = Arc::new(shifted);
                quarantine = RecordBatch::try_new(quarantine_schema.clone(), columns)
                    .expect("the same columns");
            }
            batches.push(part.batch);
            quarantines.push(quarantine);
        }
        let concat = |schema, batches: &[RecordBatch]| {
            arrow_select::concat::concat_batches(schema, batches).expect("parts of one schema")
        };
        ValidatedBatch {
            batch: concat(&schema, &batches),
            quarantine: concat(&quarantine_schema, &quarantines),
            accepted,
            rejected,
            errors,
            rejected_by_reason,
            decoded_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests;
