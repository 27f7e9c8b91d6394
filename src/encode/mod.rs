//! Encode: Arrow batches to the bytes ClickHouse ingests cheapest.
//!
//! [`native`] writes Native-format blocks (the server's own columnar layout: it copies columns
//! instead of parsing rows); [`frame`] wraps them in ClickHouse's compressed-block framing (LZ4
//! or zstd, CityHash128 checksums), sent with `decompress=1`. The byte layouts are those checked
//! against ClickHouse 18.16 and the current engine.

pub mod frame;
pub mod native;

pub use frame::{Compression, write_compressed_frames};
pub use native::{EncodeError, NativeColumn, write_native_block};
