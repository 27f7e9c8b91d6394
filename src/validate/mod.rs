//! Validate: check every record against its stream's schema and append the good ones to Arrow
//! column builders.
//!
//! A schema is compiled once per stream version into a [`CompiledSchema`] (field-name index,
//! Arrow schema, defaults). Each request gets a [`BatchBuilder`], which implements the decoder's
//! [`RecordVisitor`]: every field of a record is coerced into an owned staging slot (strings into
//! one reused scratch buffer, so nothing is allocated per field); only when the whole row is valid
//! are the slots appended to the column builders, so a bad row leaves no trace in the batch. Bad
//! rows are counted and the first N are reported with line, field and reason.

mod coerce;

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, FixedSizeBinaryBuilder, Float32Builder, Float64Builder, Int8Builder,
    Int16Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder, UInt8Builder,
    UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_schema::{DataType, Field, SchemaRef};
use hashbrown::HashMap;
use serde::Serialize;
use simd_json::prelude::Writable;

use crate::decode::{self, JsonValue, RecordVisitor};
use crate::schema::{ChType, ContextField, Schema, UnknownFields, quarantine};

use coerce::{Json, Raw, Staged};

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
        let offsets = OffsetBuffer::<i32>::from_lengths(std::iter::repeat_n(text.len(), rows));
        let values = Buffer::from(text.repeat(rows).into_bytes());
        Arc::new(StringArray::new(offsets, values, None))
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
    /// Per column: its value is the same in every row of a request (a context column other
    /// than `extra`). Such a column is built once per request, not staged per row.
    per_request: Vec<bool>,
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
                .map(|c| Field::new(c.name(), arrow_type(&c.ch_type), c.ch_type.is_nullable()))
                .collect();
            Arc::new(arrow_schema::Schema::new(fields))
        };
        let quarantine = Arc::new(quarantine::schema_for(&schema));
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
            per_request: schema
                .columns
                .iter()
                .map(|c| c.spec.context.is_some_and(|f| f != ContextField::Extra))
                .collect(),
            schema,
        })
    }

    pub fn delimited_fields(&self) -> Vec<&str> {
        self.delimited_fields.iter().map(String::as_str).collect()
    }

    pub fn delimiter(&self) -> u8 {
        self.schema.input.delimiter.as_bytes()[0]
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
            staged: vec![Staged::Unset; self.schema.columns.len()],
            scratch: String::new(),
            list_items: Vec::new(),
            url_buffer: Vec::new(),
            extra: String::new(),
            text_names: Vec::new(),
            json_fields: Vec::new(),
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

/// Arrow builder of one column.
enum ColumnBuilder {
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Fixed(FixedSizeBinaryBuilder, usize),
    List(ListBuilder<StringBuilder>),
}

impl ColumnBuilder {
    /// A builder with room for `rows` values (and `string_bytes` of text for a String column),
    /// so that it does not grow, and copy, while a body is read.
    fn new(ch_type: &ChType, rows: usize, string_bytes: usize) -> ColumnBuilder {
        if rows > 0 {
            macro_rules! sized {
                ($variant:ident, $builder:ty) => {
                    return ColumnBuilder::$variant(<$builder>::with_capacity(rows))
                };
            }
            match ch_type.value_type() {
                ChType::String => {
                    return ColumnBuilder::Str(StringBuilder::with_capacity(rows, string_bytes));
                }
                ChType::UInt8 => sized!(U8, UInt8Builder),
                ChType::UInt16 => sized!(U16, UInt16Builder),
                ChType::UInt32 | ChType::DateTime => sized!(U32, UInt32Builder),
                ChType::UInt64 => sized!(U64, UInt64Builder),
                ChType::Int8 | ChType::Enum8(_) => sized!(I8, Int8Builder),
                ChType::Int16 => sized!(I16, Int16Builder),
                ChType::Int32 => sized!(I32, Int32Builder),
                ChType::Int64 => sized!(I64, Int64Builder),
                ChType::Float32 => sized!(F32, Float32Builder),
                ChType::Float64 => sized!(F64, Float64Builder),
                _ => {}
            }
        }
        match ch_type.value_type() {
            ChType::String => ColumnBuilder::Str(StringBuilder::new()),
            ChType::FixedString(n) => {
                ColumnBuilder::Fixed(FixedSizeBinaryBuilder::new(*n as i32), *n)
            }
            ChType::UUID => ColumnBuilder::Fixed(FixedSizeBinaryBuilder::new(16), 16),
            ChType::UInt8 => ColumnBuilder::U8(UInt8Builder::new()),
            ChType::UInt16 => ColumnBuilder::U16(UInt16Builder::new()),
            ChType::UInt32 | ChType::DateTime => ColumnBuilder::U32(UInt32Builder::new()),
            ChType::UInt64 => ColumnBuilder::U64(UInt64Builder::new()),
            ChType::Int8 | ChType::Enum8(_) => ColumnBuilder::I8(Int8Builder::new()),
            ChType::Int16 => ColumnBuilder::I16(Int16Builder::new()),
            ChType::Int32 => ColumnBuilder::I32(Int32Builder::new()),
            ChType::Int64 => ColumnBuilder::I64(Int64Builder::new()),
            ChType::Float32 => ColumnBuilder::F32(Float32Builder::new()),
            ChType::Float64 => ColumnBuilder::F64(Float64Builder::new()),
            ChType::Array(_) => ColumnBuilder::List(ListBuilder::new(StringBuilder::new())),
            ChType::Nullable(_) | ChType::LowCardinality(_) => {
                unreachable!("value_type() strips wrappers")
            }
        }
    }

    /// Appends one staged value. Integer slots were range-checked for this column's type when
    /// staged, so the narrowing casts below cannot truncate. `Null` in a non-nullable column
    /// cannot happen: absent values resolve to the type's zero value before appending.
    fn append(&mut self, value: &Staged, scratch: &str, list_items: &[(u32, u32)]) {
        let text = |start: u32, end: u32| &scratch[start as usize..end as usize];
        match (self, value) {
            (ColumnBuilder::U8(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::U16(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::U32(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::U64(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::I8(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::I16(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::I32(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::I64(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::F32(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::F64(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::Str(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::Fixed(b, _), Staged::Null) => b.append_null(),
            (ColumnBuilder::List(b), Staged::Null) => b.append_null(),
            (ColumnBuilder::U8(b), Staged::U64(v)) => b.append_value(*v as u8),
            (ColumnBuilder::U16(b), Staged::U64(v)) => b.append_value(*v as u16),
            (ColumnBuilder::U32(b), Staged::U64(v)) => b.append_value(*v as u32),
            (ColumnBuilder::U64(b), Staged::U64(v)) => b.append_value(*v),
            (ColumnBuilder::I8(b), Staged::I64(v)) => b.append_value(*v as i8),
            (ColumnBuilder::I16(b), Staged::I64(v)) => b.append_value(*v as i16),
            (ColumnBuilder::I32(b), Staged::I64(v)) => b.append_value(*v as i32),
            (ColumnBuilder::I64(b), Staged::I64(v)) => b.append_value(*v),
            (ColumnBuilder::F32(b), Staged::F64(v)) => b.append_value(*v as f32),
            (ColumnBuilder::F64(b), Staged::F64(v)) => b.append_value(*v),
            (ColumnBuilder::Str(b), Staged::Str(start, end)) => b.append_value(text(*start, *end)),
            (ColumnBuilder::Fixed(b, width), Staged::Str(start, end)) => {
                let mut padded = [0u8; 256];
                let bytes = text(*start, *end).as_bytes();
                padded[..bytes.len()].copy_from_slice(bytes);
                b.append_value(&padded[..*width])
                    .expect("width checked when staged");
            }
            (ColumnBuilder::Fixed(b, _), Staged::Bytes16(bytes)) => {
                b.append_value(bytes).expect("UUID is 16 bytes")
            }
            (ColumnBuilder::List(b), Staged::List(first, last)) => {
                for &(start, end) in &list_items[*first as usize..*last as usize] {
                    b.values().append_value(text(start, end));
                }
                b.append(true);
            }
            (_, value) => unreachable!("staged {value:?} does not fit the column builder"),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::U8(b) => Arc::new(b.finish()),
            ColumnBuilder::U16(b) => Arc::new(b.finish()),
            ColumnBuilder::U32(b) => Arc::new(b.finish()),
            ColumnBuilder::U64(b) => Arc::new(b.finish()),
            ColumnBuilder::I8(b) => Arc::new(b.finish()),
            ColumnBuilder::I16(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) => Arc::new(b.finish()),
            ColumnBuilder::F32(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            ColumnBuilder::Str(b) => Arc::new(b.finish()),
            ColumnBuilder::Fixed(b, _) => Arc::new(b.finish()),
            ColumnBuilder::List(b) => Arc::new(b.finish()),
        }
    }
}

/// Validates the records of one request into Arrow columns.
pub struct BatchBuilder<'s> {
    compiled: &'s CompiledSchema,
    context: &'s RequestContext,
    builders: Vec<ColumnBuilder>,
    /// The current row, one slot per column.
    staged: Vec<Staged>,
    /// Text of the current row's string slots.
    scratch: String,
    /// `(start, end)` of each Array(String) item in `scratch`.
    list_items: Vec<(u32, u32)>,
    /// URL-decoding buffer.
    url_buffer: Vec<u8>,
    /// Unknown fields of the current row as JSON object members (`"k":v,…`).
    extra: String,
    /// Field names of the positional fields of text records.
    text_names: Vec<String>,
    /// The fields of the last JSON record by position, with their columns: a sender's records
    /// mostly name the same fields in the same order, so one comparison replaces a lookup.
    json_fields: Vec<(Box<str>, Option<usize>)>,
    /// First problem of the current row.
    row_error: Option<(Option<String>, String)>,
    accepted: usize,
    rejected: usize,
    errors: Vec<RowError>,
    rejected_by_reason: [usize; RejectReason::ALL.len()],
    max_errors: usize,
    quarantine: QuarantineBuilder,
}

impl BatchBuilder<'_> {
    pub fn rows(&self) -> usize {
        self.accepted
    }

    pub fn finish(mut self) -> ValidatedBatch {
        for (builder, per_row) in self
            .builders
            .iter()
            .zip(&self.compiled.string_bytes_per_row)
        {
            if let ColumnBuilder::Str(b) = builder
                && b.len() > 0
            {
                let bytes = b.values_slice().len().div_ceil(b.len());
                per_row.store(bytes as u32, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .zip(&self.compiled.schema.columns)
            .zip(&self.compiled.per_request)
            .map(
                |((builder, column), &per_request)| match column.spec.context {
                    Some(field) if per_request => self.context.column(field, self.accepted),
                    _ => builder.finish(),
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
        self.staged.fill(Staged::Unset);
        self.scratch.clear();
        self.list_items.clear();
        self.extra.clear();
        self.row_error = None;
    }

    fn fail(&mut self, field: Option<&str>, reason: String) {
        if self.row_error.is_none() {
            self.row_error = Some((field.map(str::to_string), reason));
        }
    }

    /// [`Self::stage_field`] for the `position`-th field of a JSON record.
    fn stage_json_field(&mut self, position: usize, name: &str, value: Raw<'_>) {
        let index = match self.json_fields.get(position) {
            Some((known, index)) if **known == *name => *index,
            _ => {
                let index = self.compiled.field_index.get(name).copied();
                let entry = (Box::from(name), index);
                match self.json_fields.get_mut(position) {
                    Some(slot) => *slot = entry,
                    None => self.json_fields.push(entry),
                }
                index
            }
        };
        self.stage_at(index, name, value);
    }

    /// Coerces one body field into its column's slot.
    fn stage_field(&mut self, name: &str, value: Raw<'_>) {
        self.stage_at(self.compiled.field_index.get(name).copied(), name, value);
    }

    /// Stages a field whose column is `index` (`None`: not a column of the schema).
    fn stage_at(&mut self, index: Option<usize>, name: &str, value: Raw<'_>) {
        match index {
            Some(index) => self.stage_into(index, name, value),
            None => self.unknown_field(name, value),
        }
    }

    /// Coerces a value into the slot of column `index`; `name` is the field as the sender named it.
    fn stage_into(&mut self, index: usize, name: &str, value: Raw<'_>) {
        if self.row_error.is_some() {
            return;
        }
        if !matches!(self.staged[index], Staged::Unset) {
            return self.fail(Some(name), "field appears more than once".to_string());
        }
        let column = &self.compiled.schema.columns[index];
        let absent = &self.compiled.schema.input.absent;
        match coerce::stage(
            column,
            value,
            absent,
            self.context.url_encoded,
            &mut self.scratch,
            &mut self.list_items,
            &mut self.url_buffer,
        ) {
            Ok(staged) => self.staged[index] = staged,
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

    /// Fills absent columns (default, NULL or zero, or a missing-field error), context columns,
    /// and appends the row if it is valid; otherwise returns the field and reason.
    fn end_row(&mut self, _line: usize) -> Option<(Option<String>, String)> {
        let columns = &self.compiled.schema.columns;
        #[allow(clippy::needless_range_loop)] // the body needs `&mut self` beside `columns`
        for index in 0..columns.len() {
            if self.row_error.is_some() {
                break;
            }
            if !matches!(self.staged[index], Staged::Unset) || self.compiled.per_request[index] {
                continue;
            }
            let column = &columns[index];
            let resolved = match column.spec.context {
                Some(ContextField::Extra) => {
                    if self.extra.is_empty() {
                        Ok(coerce::stage_text(&mut self.scratch, "{}"))
                    } else {
                        self.extra.push('}');
                        Ok(coerce::stage_text(&mut self.scratch, &self.extra))
                    }
                }
                Some(field) => unreachable!("{field:?} is built per request"),
                None if column.spec.required => Err("missing required field".to_string()),
                None => match &column.spec.default {
                    Some(default) => coerce::stage(
                        column,
                        Raw::Text(default),
                        &[],
                        false,
                        &mut self.scratch,
                        &mut self.list_items,
                        &mut self.url_buffer,
                    )
                    .map(|staged| match staged {
                        Staged::Unset => coerce::zero_value(&column.ch_type, &mut self.scratch),
                        staged => staged,
                    })
                    .map_err(|reason| format!("default value: {reason}")),
                    None if column.ch_type.is_nullable() => Ok(Staged::Null),
                    None => Ok(coerce::zero_value(&column.ch_type, &mut self.scratch)),
                },
            };
            match resolved {
                Ok(staged) => self.staged[index] = staged,
                Err(reason) => {
                    let field = column.primary_field().unwrap_or(column.name()).to_string();
                    self.row_error = Some((Some(field), reason));
                }
            }
        }
        match self.row_error.take() {
            None => {
                let per_request = &self.compiled.per_request;
                for ((builder, value), _) in self
                    .builders
                    .iter_mut()
                    .zip(&self.staged)
                    .zip(per_request)
                    .filter(|(_, per_request)| !**per_request)
                {
                    builder.append(value, &self.scratch, &self.list_items);
                }
                self.accepted += 1;
                None
            }
            failure => failure,
        }
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
            repeat(&context.principal),
            repeat(&context.origin),
            repeat(&context.batch_id),
            repeat(&context.request_id),
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
        self.text_names = names.iter().map(|name| name.to_string()).collect();
    }

    fn json_record(&mut self, line: usize, record: JsonValue<'_>, raw: Option<&[u8]>) {
        self.start_row();
        let failure = match record.as_object() {
            Some(fields) => {
                for (position, (name, value)) in fields.iter().enumerate() {
                    self.stage_json_field(position, name, Raw::Json(Json::of(value)));
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
            for (name, value) in names.iter().zip(fields) {
                self.stage_field(name, Raw::Text(value));
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
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_decompressed_bytes: usize,
    pub max_records: usize,
    pub max_errors: usize,
    /// Longest record in bytes (see [`decode::DecodeOptions::max_line_bytes`]).
    pub max_line_bytes: usize,
    /// Deepest JSON nesting of a record (see [`decode::DecodeOptions::max_nesting_depth`]).
    pub max_nesting_depth: usize,
}

/// Decompresses, frames and validates one body: CPU work, run it off the async workers.
/// `None` for Logpush's destination probe (`{"content":"tests"}`).
/// `digest`: also return the digest of the decompressed body (for batch-id deduplication).
pub fn validate_body(
    compiled: &CompiledSchema,
    context: RequestContext,
    body: &[u8],
    encoding: decode::ContentEncoding,
    content_type: Option<&str>,
    limits: BodyLimits,
    digest: bool,
) -> Result<Option<(ValidatedBatch, Option<crate::dedup::Digest>)>, decode::DecodeError> {
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
            digest,
            buffer,
        );
        if buffer.capacity() > KEEP_BYTES {
            *buffer = Vec::new();
        }
        result
    })
}

#[allow(clippy::too_many_arguments)] // validate_body's arguments and its buffer
fn validate_decompressed(
    compiled: &CompiledSchema,
    mut context: RequestContext,
    body: &[u8],
    encoding: decode::ContentEncoding,
    content_type: Option<&str>,
    limits: BodyLimits,
    digest: bool,
    buffer: &mut Vec<u8>,
) -> Result<Option<(ValidatedBatch, Option<crate::dedup::Digest>)>, decode::DecodeError> {
    decode::decompress_into(body, encoding, limits.max_decompressed_bytes, buffer)?;
    let body = buffer;
    if decode::is_logpush_probe(body) {
        return Ok(None);
    }
    let digest = digest.then(|| crate::dedup::digest(body));
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
    // One record per line but in a JSON array: a count of lines sizes the builders once.
    let rows = match format {
        decode::BodyFormat::JsonArray => 0,
        _ => (memchr::memchr_iter(b'\n', body).count() + 1).min(limits.max_records),
    };
    let mut builder = compiled.begin_sized(&context, limits.max_errors, rows, body.len());
    decode::decode(format, body, &options, &mut builder)?;
    let mut validated = builder.finish();
    validated.decoded_bytes = decoded_bytes;
    Ok(Some((validated, digest)))
}

#[cfg(test)]
mod tests;
