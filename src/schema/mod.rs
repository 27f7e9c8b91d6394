//! Stream schemas: one TOML file per stream version in `schemas/`.
//!
//! A schema names the ClickHouse table, its engine settings, and every column: where its value
//! comes from (a body field and its aliases, or the verified request context), its ClickHouse
//! type, and the constraints a row must meet. Files are parsed into [`SchemaFile`] and checked
//! into a [`Schema`], which the validator compiles once per stream version.

pub mod ddl;
pub mod quarantine;
pub mod roles;
pub mod rollup;
pub mod types;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

pub use types::ChType;

/// One schema file as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFile {
    /// Stream name, the `{stream}` of `POST /v1/streams/{stream}`.
    pub stream: String,
    /// Schema version; senders pick one with `X-Sluice-Schema-Version` (default: the newest).
    pub version: u32,
    /// One line for humans; shown by `sluice check`.
    #[serde(default)]
    pub description: String,
    pub table: TableSpec,
    #[serde(default)]
    pub input: InputSpec,
    pub columns: Vec<ColumnSpec>,
    /// Pre-aggregated tables fed from the stream's accepted rows.
    #[serde(default)]
    pub rollups: Vec<rollup::RollupSpec>,
}

/// The ClickHouse table a stream lands in. The database comes from the sluice config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub name: String,
    /// Table engine; `MergeTree` family only.
    #[serde(default = "default_engine")]
    pub engine: String,
    /// `PARTITION BY` expression, e.g. `toYYYYMMDD(time)`.
    pub partition_by: Option<String>,
    /// `ORDER BY` columns.
    pub order_by: Vec<String>,
    /// `TTL` expression; emitted only for servers that support TTL (19.6+).
    pub ttl: Option<String>,
}

fn default_engine() -> String {
    "MergeTree".to_string()
}

/// How bodies for this stream are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// What to do with body fields the schema does not name.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Values that mean "absent" (DataStream 2 writes `-`).
    #[serde(default = "default_absent")]
    pub absent: Vec<String>,
    /// Field separator of `text/plain` delimited lines: a space or a tab.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
}

impl Default for InputSpec {
    fn default() -> Self {
        InputSpec {
            unknown_fields: UnknownFields::default(),
            absent: default_absent(),
            delimiter: default_delimiter(),
        }
    }
}

fn default_absent() -> Vec<String> {
    vec!["-".to_string()]
}

fn default_delimiter() -> String {
    " ".to_string()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// Unknown fields are skipped.
    #[default]
    Ignore,
    /// Unknown fields are kept as a JSON object in the column whose `context = "extra"`.
    Keep,
    /// A row with an unknown field is rejected.
    Reject,
}

/// One column of the table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    /// ClickHouse type, e.g. `LowCardinality(String)`.
    #[serde(rename = "type")]
    pub ch_type: String,
    /// Body field (JSON key, CSV header) the value comes from; defaults to the column name.
    pub field: Option<String>,
    /// Other body field names accepted for this column.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Value from the verified request context instead of the body; never read from the body.
    pub context: Option<ContextField>,
    /// A row without this field is rejected.
    #[serde(default)]
    pub required: bool,
    /// Value used when the field is absent (as text, coerced like a body value).
    pub default: Option<String>,
    /// Smallest accepted number (numeric columns).
    pub min: Option<f64>,
    /// Largest accepted number (numeric columns).
    pub max: Option<f64>,
    /// Longest accepted value in bytes (string columns).
    pub max_length: Option<usize>,
    /// Regular expression a string value must match.
    pub pattern: Option<String>,
    /// A named format check: `ip` (IPv4 or IPv6 text).
    pub format: Option<ValueFormat>,
    /// Decode RFC 1738 URL encoding (`%2F`, `+` for space) as DataStream 2 sends text.
    #[serde(default)]
    pub url_decode: bool,
    /// Store a JSON object or array value as its JSON text (free-form properties).
    #[serde(default)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ContextField {
    /// The authenticated principal's name.
    Principal,
    /// The verified origin (edge worker / property id).
    Origin,
    /// The verified region / PoP.
    Region,
    /// `X-Sluice-Batch-Id`, or an id sluice assigned.
    BatchId,
    /// `X-Request-Id`, or an id sluice assigned.
    RequestId,
    /// When sluice received the batch.
    ReceivedAt,
    /// Body fields the schema does not name, as a JSON object (`input.unknown_fields = "keep"`).
    Extra,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    Ip,
}

/// A checked schema: every type parsed, every reference resolved.
#[derive(Debug)]
pub struct Schema {
    pub stream: String,
    pub version: u32,
    pub description: String,
    pub table: TableSpec,
    pub input: InputSpec,
    pub columns: Vec<Column>,
    /// Checked rollups, in file order.
    pub rollups: Vec<Arc<rollup::Rollup>>,
    /// Where the schema came from, for messages.
    pub source: PathBuf,
}

/// A checked column.
#[derive(Debug)]
pub struct Column {
    pub spec: ColumnSpec,
    pub ch_type: ChType,
    pub pattern: Option<regex::Regex>,
}

impl Column {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The body field names that feed this column (none for context columns).
    pub fn body_fields(&self) -> impl Iterator<Item = &str> {
        let primary = match self.spec.context {
            Some(_) => None,
            None => Some(self.spec.field.as_deref().unwrap_or(&self.spec.name)),
        };
        let aliases = match self.spec.context {
            Some(_) => &[][..],
            None => &self.spec.aliases[..],
        };
        primary
            .into_iter()
            .chain(aliases.iter().map(String::as_str))
    }

    /// The primary body field name, or None for context columns.
    pub fn primary_field(&self) -> Option<&str> {
        self.body_fields().next()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Schema {
    /// Parses and checks one schema file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Schema, SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: SchemaFile = toml::from_str(text).map_err(|err| invalid(err.to_string()))?;
        if !is_identifier(&file.stream) {
            return Err(invalid(format!(
                "stream: {:?} is not a valid name",
                file.stream
            )));
        }
        if !is_identifier(&file.table.name) {
            return Err(invalid(format!(
                "table.name: {:?} is not a valid name",
                file.table.name
            )));
        }
        if !file.table.engine.ends_with("MergeTree") {
            return Err(invalid(format!(
                "table.engine: {:?} is not a MergeTree engine",
                file.table.engine
            )));
        }
        if !matches!(file.input.delimiter.as_str(), " " | "\t") {
            return Err(invalid(
                "input.delimiter: must be a space or a tab".to_string(),
            ));
        }
        let mut names = HashSet::new();
        let mut fields = HashSet::new();
        let mut columns = Vec::with_capacity(file.columns.len());
        for (index, spec) in file.columns.into_iter().enumerate() {
            let key = format!("columns[{index}] ({})", spec.name);
            if !is_identifier(&spec.name) {
                return Err(invalid(format!("{key}: name is not a valid identifier")));
            }
            if !names.insert(spec.name.clone()) {
                return Err(invalid(format!("{key}: duplicate column name")));
            }
            let ch_type = ChType::parse(&spec.ch_type)
                .map_err(|err| invalid(format!("{key}.type: {err}")))?;
            let pattern = match &spec.pattern {
                Some(p) => Some(
                    regex::Regex::new(p).map_err(|err| invalid(format!("{key}.pattern: {err}")))?,
                ),
                None => None,
            };
            if spec.context.is_some() && (spec.field.is_some() || !spec.aliases.is_empty()) {
                return Err(invalid(format!(
                    "{key}: a context column cannot also name body fields"
                )));
            }
            match spec.context {
                Some(ContextField::ReceivedAt) if ch_type != ChType::DateTime => {
                    return Err(invalid(format!("{key}: received_at needs type DateTime")));
                }
                Some(field)
                    if field != ContextField::ReceivedAt
                        && *ch_type.value_type() != ChType::String =>
                {
                    return Err(invalid(format!(
                        "{key}: a context column holds text: its type must be String, Nullable(String) or LowCardinality(String), not {ch_type}"
                    )));
                }
                _ => {}
            }
            if spec.required && spec.default.is_some() {
                return Err(invalid(format!(
                    "{key}: required and default exclude each other"
                )));
            }
            let column = Column {
                spec,
                ch_type,
                pattern,
            };
            for field in column.body_fields() {
                if !fields.insert(field.to_string()) {
                    return Err(invalid(format!(
                        "{key}: body field {field:?} already feeds another column"
                    )));
                }
            }
            columns.push(column);
        }
        let has_extra = columns
            .iter()
            .any(|c| c.spec.context == Some(ContextField::Extra));
        if file.input.unknown_fields == UnknownFields::Keep && !has_extra {
            return Err(invalid(
                "input.unknown_fields = \"keep\" needs a column with context = \"extra\"".into(),
            ));
        }
        for key in &file.table.order_by {
            if !names.contains(key) {
                return Err(invalid(format!("table.order_by: unknown column {key:?}")));
            }
        }
        let mut rollups: Vec<Arc<rollup::Rollup>> = Vec::new();
        for (index, spec) in file.rollups.into_iter().enumerate() {
            let checked = rollup::Rollup::check(index, spec, &columns).map_err(invalid)?;
            if checked.name == file.table.name || rollups.iter().any(|r| r.name == checked.name) {
                return Err(invalid(format!(
                    "rollups[{index}] ({}).name: already names a table",
                    checked.name
                )));
            }
            rollups.push(Arc::new(checked));
        }
        Ok(Schema {
            stream: file.stream,
            version: file.version,
            description: file.description,
            table: file.table,
            input: file.input,
            columns,
            rollups,
            source: path.to_path_buf(),
        })
    }

    pub fn load(path: &Path) -> Result<Schema, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Schema::from_toml(&text, path)
    }

    /// The columns fed by the body, in schema order: the default field order of delimited lines.
    pub fn body_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.spec.context.is_none())
    }
}

/// Every schema in a directory, by stream and version.
#[derive(Debug, Default)]
pub struct SchemaSet {
    streams: BTreeMap<String, BTreeMap<u32, Arc<Schema>>>,
}

impl SchemaSet {
    /// Loads every `*.toml` in `dir`.
    pub fn load_dir(dir: &Path) -> Result<SchemaSet, SchemaError> {
        let read_error = |source| SchemaError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        paths.sort();
        let mut set = SchemaSet::default();
        for path in paths {
            set.insert(Schema::load(&path)?)?;
        }
        if set.streams.is_empty() {
            return Err(SchemaError::Invalid {
                path: dir.to_path_buf(),
                message: "no schema files (*.toml) found".to_string(),
            });
        }
        Ok(set)
    }

    pub fn insert(&mut self, schema: Schema) -> Result<(), SchemaError> {
        let versions = self.streams.entry(schema.stream.clone()).or_default();
        if let Some(existing) = versions.get(&schema.version) {
            return Err(SchemaError::Invalid {
                path: schema.source.clone(),
                message: format!(
                    "stream {} version {} is also defined in {}",
                    schema.stream,
                    schema.version,
                    existing.source.display()
                ),
            });
        }
        versions.insert(schema.version, Arc::new(schema));
        Ok(())
    }

    /// All schemas, every version of every stream.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Schema>> {
        self.streams.values().flat_map(|versions| versions.values())
    }

    /// The newest version of each stream.
    pub fn latest(&self) -> impl Iterator<Item = &Arc<Schema>> {
        self.streams
            .values()
            .filter_map(|versions| versions.values().next_back())
    }

    pub fn stream_names(&self) -> impl Iterator<Item = &str> {
        self.streams.keys().map(String::as_str)
    }

    pub fn versions(&self, stream: &str) -> Option<&BTreeMap<u32, Arc<Schema>>> {
        self.streams.get(stream)
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> SchemaSet {
        SchemaSet::load_dir(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas")
                .as_path(),
        )
        .expect("shipped schemas load")
    }

    #[test]
    fn shipped_schemas_load() {
        let set = shipped();
        let names: Vec<_> = set.stream_names().collect();
        assert_eq!(names, ["edge_access", "edge_events"]);
        let access = set.latest().next().unwrap();
        assert!(
            access.columns.len() >= 20,
            "edge_access has about 20 fields"
        );
        assert_eq!(
            access.body_columns().next().unwrap().primary_field(),
            Some("version")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let text = r#"
            stream = "s"
            version = 1
            [table]
            name = "t"
            order_by = ["a"]
            [[columns]]
            name = "a"
            type = "Map(String, String)"
        "#;
        let err = Schema::from_toml(text, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("s.toml: columns[0] (a).type: unsupported or malformed type"),
            "{err}"
        );

        let text = text
            .replace("Map(String, String)", "String")
            .replace("[\"a\"]", "[\"b\"]");
        let err = Schema::from_toml(&text, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "s.toml: table.order_by: unknown column \"b\"");

        let text = text
            .replace("[\"b\"]", "[\"a\"]")
            .replace("name = \"a\"", "name = \"a\"\nbogus = 1");
        let err = Schema::from_toml(&text, Path::new("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }

    #[test]
    fn context_columns_need_a_type_that_holds_their_value() {
        let schema = |ty: &str, context: &str| {
            let text = format!(
                "stream = \"s\"\nversion = 1\n[table]\nname = \"t\"\norder_by = [\"a\"]\n\
                 [[columns]]\nname = \"a\"\ntype = \"{ty}\"\ncontext = \"{context}\"\n"
            );
            Schema::from_toml(&text, Path::new("s.toml")).map_err(|err| err.to_string())
        };
        assert_eq!(
            schema("UInt32", "region").unwrap_err(),
            "s.toml: columns[0] (a): a context column holds text: its type must be String, \
             Nullable(String) or LowCardinality(String), not UInt32"
        );
        assert_eq!(
            schema("String", "received_at").unwrap_err(),
            "s.toml: columns[0] (a): received_at needs type DateTime"
        );
        for ty in ["String", "Nullable(String)", "LowCardinality(String)"] {
            schema(ty, "batch_id").unwrap();
        }
        schema("DateTime", "received_at").unwrap();
    }
}
