//! Encode: Arrow record batches into the bytes ClickHouse ingests most cheaply.
//!
//! This stage sits between aggregation and the sink. It takes a [`RecordBatch`] whose columns
//! have the Arrow types the validator builds for the table's ClickHouse types, and produces an
//! insert body for `INSERT INTO db.t (cols…) FORMAT Native`:
//!
//! 0. [`order`] puts the rows in the table's `ORDER BY` order, so the server need not sort them.
//! 1. [`native`] writes a Native block: the server's own columnar layout, which it copies into
//!    its columns instead of parsing rows (about 3–4× cheaper for it than JSON or CSV), including
//!    the LowCardinality dictionaries, Nullable null maps and Array offsets.
//! 2. [`frame`] optionally wraps those bytes in ClickHouse's compressed-block framing (LZ4 or
//!    zstd frames with CityHash128 checksums), which the sink sends with `decompress=1`.
//!
//! The stage knows nothing of HTTP: the sink decides URLs, settings and retries. The byte
//! layouts are the ones checked against ClickHouse 18.16 (`tests/encode_clickhouse.rs`) and the
//! current engine through chDB (`tests/encode_chdb.rs`).
//!
//! [`RecordBatch`]: arrow_array::RecordBatch

pub mod frame;
pub mod native;
pub mod order;

pub use frame::{Compression, FrameEncoder, MAX_FRAME_INPUT_BYTES, write_compressed_frames};
pub use native::{
    BlockRows, EncodeError, NativeColumn, write_native_block, write_native_block_chunked,
};
pub use order::{SortKey, in_sequence};

/// The Native columns of a schema's table, in order.
pub fn native_columns(schema: &crate::schema::Schema) -> Vec<NativeColumn<'_>> {
    schema
        .columns
        .iter()
        .map(|c| NativeColumn {
            name: c.name(),
            ch_type: &c.ch_type,
        })
        .collect()
}
