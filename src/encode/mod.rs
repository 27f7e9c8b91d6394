// placeholder until the encoder lands
use crate::schema::ChType;
use arrow_array::RecordBatch;
pub struct NativeColumn<'a> {
    pub name: &'a str,
    pub ch_type: &'a ChType,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4,
    Zstd,
}
#[derive(Debug, thiserror::Error)]
#[error("encode")]
pub struct EncodeError;
pub fn write_native_block(
    _c: &[NativeColumn<'_>],
    _b: &RecordBatch,
    _o: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    Err(EncodeError)
}
pub fn write_compressed_frames(_n: &[u8], _c: Compression, _l: i32, _o: &mut Vec<u8>) {}
