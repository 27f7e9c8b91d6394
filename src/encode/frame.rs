//! ClickHouse's compressed-block framing (`decompress=1` on the insert URL).
//!
//! The Native bytes are cut into frames of at most [`FRAME_INPUT_BYTES`]; each frame is
//! `checksum (16) | method (1) | compressed size incl. this 9-byte header (u32 LE) |
//! uncompressed size (u32 LE) | payload`. The checksum is CityHash128 v1.0.2 of header and
//! payload, its two halves swapped (`rotate_right(64)`) and written little-endian — the order the
//! server verifies (a wrong one answers Code 40).

use serde::Deserialize;

/// Block compression of inserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No framing: plain Native bytes.
    None,
    /// LZ4 block (method 0x82): costs the server nothing measurable.
    Lz4,
    /// zstd frame (method 0x90): ~30 % fewer bytes than LZ4, ~20 % more server CPU.
    Zstd,
}

/// Most Native bytes per frame (ClickHouse's own block size for compression).
pub const FRAME_INPUT_BYTES: usize = 1 << 20;

const CHECKSUM_BYTES: usize = 16;
const HEADER_BYTES: usize = 9;
const METHOD_NONE: u8 = 0x02;
const METHOD_LZ4: u8 = 0x82;
const METHOD_ZSTD: u8 = 0x90;

/// Appends the framed, compressed form of `native` to `out`.
pub fn write_compressed_frames(
    native: &[u8],
    compression: Compression,
    zstd_level: i32,
    out: &mut Vec<u8>,
) {
    for chunk in native.chunks(FRAME_INPUT_BYTES) {
        let frame_start = out.len();
        out.resize(frame_start + CHECKSUM_BYTES + HEADER_BYTES, 0);
        let method = match compression {
            Compression::None => {
                out.extend_from_slice(chunk);
                METHOD_NONE
            }
            Compression::Lz4 => {
                let payload_start = out.len();
                out.resize(
                    payload_start + lz4_flex::block::get_maximum_output_size(chunk.len()),
                    0,
                );
                let written = lz4_flex::block::compress_into(chunk, &mut out[payload_start..])
                    .expect("output sized for the worst case");
                out.truncate(payload_start + written);
                METHOD_LZ4
            }
            Compression::Zstd => {
                let payload_start = out.len();
                let bound = zstd::zstd_safe::compress_bound(chunk.len());
                out.resize(payload_start + bound, 0);
                let written =
                    zstd::bulk::compress_to_buffer(chunk, &mut out[payload_start..], zstd_level)
                        .expect("output sized for the worst case");
                out.truncate(payload_start + written);
                METHOD_ZSTD
            }
        };
        let frame = &mut out[frame_start..];
        let compressed_size = (frame.len() - CHECKSUM_BYTES) as u32;
        let header = &mut frame[CHECKSUM_BYTES..CHECKSUM_BYTES + HEADER_BYTES];
        header[0] = method;
        header[1..5].copy_from_slice(&compressed_size.to_le_bytes());
        header[5..9].copy_from_slice(&(chunk.len() as u32).to_le_bytes());
        let checksum = cityhash_rs::cityhash_102_128(&frame[CHECKSUM_BYTES..]).rotate_right(64);
        frame[..CHECKSUM_BYTES].copy_from_slice(&checksum.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads frames back: (method, uncompressed bytes).
    fn unframe(mut framed: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !framed.is_empty() {
            let header = &framed[CHECKSUM_BYTES..CHECKSUM_BYTES + HEADER_BYTES];
            let compressed = u32::from_le_bytes(header[1..5].try_into().unwrap()) as usize;
            let raw = u32::from_le_bytes(header[5..9].try_into().unwrap()) as usize;
            let body = &framed[CHECKSUM_BYTES..CHECKSUM_BYTES + compressed];
            let checksum = cityhash_rs::cityhash_102_128(body).rotate_right(64);
            assert_eq!(&framed[..16], &checksum.to_le_bytes());
            let payload = &body[HEADER_BYTES..];
            let data = match header[0] {
                METHOD_LZ4 => lz4_flex::block::decompress(payload, raw).unwrap(),
                METHOD_ZSTD => zstd::bulk::decompress(payload, raw).unwrap(),
                METHOD_NONE => payload.to_vec(),
                other => panic!("method {other:#x}"),
            };
            assert_eq!(data.len(), raw);
            frames.push((header[0], data));
            framed = &framed[CHECKSUM_BYTES + compressed..];
        }
        frames
    }

    #[test]
    fn frames_round_trip_and_split_at_one_mebibyte() {
        let native: Vec<u8> = (0..(FRAME_INPUT_BYTES + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        for (compression, method) in [
            (Compression::Lz4, METHOD_LZ4),
            (Compression::Zstd, METHOD_ZSTD),
            (Compression::None, METHOD_NONE),
        ] {
            let mut framed = Vec::new();
            write_compressed_frames(&native, compression, 1, &mut framed);
            let frames = unframe(&framed);
            assert_eq!(frames.len(), 2);
            assert!(frames.iter().all(|(m, _)| *m == method));
            assert_eq!(frames[0].1.len(), FRAME_INPUT_BYTES);
            let joined: Vec<u8> = frames.into_iter().flat_map(|(_, d)| d).collect();
            assert_eq!(joined, native);
        }
    }
}
