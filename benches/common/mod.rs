//! What the benches share: the shipped `edge_access` schema and decode + validate of a body, as
//! the ingest path runs them.

use std::path::Path;

use sluice::decode::{self, BodyFormat, ContentEncoding, DecodeOptions};
use sluice::schema::SchemaSet;
use sluice::validate::{CompiledSchema, RequestContext, StreamOptions, ValidatedBatch};

/// The newest version of the shipped `edge_access` schema, compiled.
pub fn compiled() -> CompiledSchema {
    let set = SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let schema = set
        .versions("edge_access")
        .unwrap()
        .values()
        .next_back()
        .unwrap()
        .clone();
    CompiledSchema::new(schema, &StreamOptions::default()).unwrap()
}

/// Decompresses, decodes and validates `body` (no limits but the nesting depth's default).
pub fn decode_validate(
    compiled: &CompiledSchema,
    context: &RequestContext,
    body: &[u8],
    encoding: ContentEncoding,
    format: BodyFormat,
) -> ValidatedBatch {
    let mut bytes = decode::decompress(body, encoding, usize::MAX).unwrap();
    let fields = compiled.delimited_fields();
    let options = DecodeOptions {
        delimiter: compiled.delimiter(),
        delimited_fields: &fields,
        max_records: usize::MAX,
        max_line_bytes: usize::MAX,
        max_nesting_depth: 64,
    };
    let mut builder = compiled.begin(context, 100);
    decode::decode(format, &mut bytes, &options, &mut builder).unwrap();
    builder.finish()
}
