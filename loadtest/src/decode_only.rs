//! The decode-only reference: how fast one core decompresses and parses the very bodies the run
//! sends — the ceiling sluice's whole ingest path (TLS, decode, validate, encode, spool) is
//! measured against.
//!
//! JSON bodies are parsed the way sluice's decoder parses them: simd-json into its tape with
//! reused buffers (a padded copy of each NDJSON line, the tape's allocation kept from line to
//! line), one call per NDJSON line or one per JSON array. CSV and delimited bodies
//! have no JSON parse: their reference is decompress + splitting into records and fields. The
//! rate is rows per CPU-second of the measuring thread (`CLOCK_THREAD_CPUTIME_ID`), so other
//! processes on the machine do not distort it.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::generator::{Encoding, Format};
use crate::pool::StreamPool;
use crate::procstat::thread_cpu_time;

/// The result of one measurement.
#[derive(Clone, Debug, Serialize)]
pub struct DecodeOnly {
    pub rows: u64,
    /// Bytes as sent.
    pub bytes_in: u64,
    /// Bytes after decompression.
    pub bytes_decoded: u64,
    pub cpu_secs: f64,
    pub wall_secs: f64,
    pub rows_per_cpu_sec: f64,
    /// Decompressed MB (10^6 bytes) per CPU-second.
    pub decoded_mb_per_cpu_sec: f64,
    /// simd-json's implementation on this machine (e.g. AVX2).
    pub simd_json: String,
}

/// Reusable state of the decoder.
struct Decoder {
    inflater: libdeflater::Decompressor,
    decompressed: Vec<u8>,
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: simd_json::Tape<'static>,
}

impl Decoder {
    fn new() -> Decoder {
        Decoder {
            inflater: libdeflater::Decompressor::new(),
            decompressed: Vec::new(),
            scratch: Vec::new(),
            buffers: simd_json::Buffers::new(4096),
            tape: simd_json::Tape(Vec::new()),
        }
    }

    /// Decompresses and parses one body; returns its record count.
    fn decode(&mut self, body: &[u8], format: Format, encoding: Encoding) -> anyhow::Result<u64> {
        match encoding {
            Encoding::Identity => {
                self.decompressed.clear();
                self.decompressed.extend_from_slice(body);
            }
            // One whole-buffer inflate into a buffer of the trailer's size, as sluice does
            // (the generator writes one gzip member per body); bytes left from the last body are
            // overwritten, not zeroed first.
            Encoding::Gzip => {
                let size = body
                    .last_chunk::<4>()
                    .map_or(0, |isize| u32::from_le_bytes(*isize) as usize);
                self.decompressed.resize(size, 0);
                let written = self
                    .inflater
                    .gzip_decompress(body, &mut self.decompressed)
                    .map_err(|err| anyhow::anyhow!("gunzip: {err}"))?;
                if written != size {
                    bail!("gunzip: {written} bytes, the trailer says {size}");
                }
            }
            Encoding::Zstd => {
                self.decompressed.clear();
                zstd::stream::read::Decoder::new(body)
                    .context("zstd")?
                    .read_to_end(&mut self.decompressed)
                    .context("zstd")?;
            }
        }
        let text = &self.decompressed;
        let mut records = 0u64;
        match format {
            Format::Ndjson => {
                for line in text.split(|&b| b == b'\n') {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.scratch.clear();
                    self.scratch.extend_from_slice(line);
                    self.scratch
                        .resize(line.len() + simd_json::INPUT_PADDING, b' ');
                    let mut tape =
                        std::mem::replace(&mut self.tape, simd_json::Tape(Vec::new())).reset();
                    simd_json::fill_tape_padded(
                        &mut self.scratch,
                        line.len(),
                        &mut self.buffers,
                        &mut tape,
                    )
                    .context("simd-json")?;
                    std::hint::black_box(tape.as_value());
                    self.tape = tape.reset();
                    records += 1;
                }
            }
            Format::JsonArray => {
                self.scratch.clear();
                self.scratch.extend_from_slice(text);
                let tape = simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers)
                    .context("simd-json")?;
                match tape.as_value().as_array() {
                    Some(items) => records = items.len() as u64,
                    None => bail!("a JSON array body is not an array"),
                }
            }
            Format::Csv | Format::Delimited => {
                let separator = if format == Format::Csv { b',' } else { b' ' };
                let mut fields = 0u64;
                for line in text.split(|&b| b == b'\n') {
                    if line.is_empty() {
                        continue;
                    }
                    fields += line.split(|&b| b == separator || b == b'\t').count() as u64;
                    records += 1;
                }
                std::hint::black_box(fields);
                if format == Format::Csv {
                    records = records.saturating_sub(1); // the header
                }
            }
        }
        Ok(records)
    }
}

/// Loops over the bodies in the run's mix (entry `sequence[k % len]`, its bodies round robin)
/// for at least `min_time` on the calling thread.
pub fn measure(
    pools: &[StreamPool],
    sequence: &[usize],
    min_time: Duration,
) -> anyhow::Result<DecodeOnly> {
    let mut decoder = Decoder::new();
    let mut next_body = vec![0u64; pools.len()];
    let (mut rows, mut bytes_in, mut bytes_decoded) = (0u64, 0u64, 0u64);
    // One untimed pass to size the buffers.
    for pool in pools {
        for body in &pool.bodies {
            decoder.decode(&body.body, pool.spec.format, pool.spec.encoding)?;
        }
    }
    let wall = Instant::now();
    let cpu = thread_cpu_time();
    let mut k = 0usize;
    loop {
        let entry = sequence[k % sequence.len()];
        k += 1;
        let pool = &pools[entry];
        let body = pool.body(next_body[entry]);
        next_body[entry] += 1;
        let n = decoder.decode(&body.body, pool.spec.format, pool.spec.encoding)?;
        if n != body.rows {
            bail!(
                "{}: decoded {n} records, the body has {}",
                pool.spec.label(),
                body.rows
            );
        }
        rows += n;
        bytes_in += body.body.len() as u64;
        bytes_decoded += decoder.decompressed.len() as u64;
        if k >= sequence.len() && wall.elapsed() >= min_time {
            break;
        }
    }
    let cpu_secs = (thread_cpu_time() - cpu).as_secs_f64().max(1e-9);
    Ok(DecodeOnly {
        rows,
        bytes_in,
        bytes_decoded,
        cpu_secs,
        wall_secs: wall.elapsed().as_secs_f64(),
        rows_per_cpu_sec: rows as f64 / cpu_secs,
        decoded_mb_per_cpu_sec: bytes_decoded as f64 / 1e6 / cpu_secs,
        simd_json: simd_json_implementation(),
    })
}

/// The SIMD implementation simd-json picks on this CPU.
pub fn simd_json_implementation() -> String {
    simd_json::Deserializer::algorithm().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::GeneratorConfig;
    use crate::pool::make_body;
    use crate::scenario::StreamSpec;
    use crate::send::Stream;

    fn pool(stream: Stream, format: Format, encoding: Encoding) -> StreamPool {
        let spec = StreamSpec {
            stream,
            format,
            encoding,
            batch_rows: 50,
            weight: 1,
        };
        let body = make_body(&spec, 7, &GeneratorConfig::default(), None, 50).unwrap();
        StreamPool {
            spec,
            bodies: vec![body],
        }
    }

    #[test]
    fn every_format_and_encoding_decodes_to_the_row_count() {
        let mut pools = Vec::new();
        for format in Format::ALL {
            for encoding in Encoding::ALL {
                pools.push(pool(Stream::EdgeAccess, format, encoding));
                pools.push(pool(Stream::EdgeEvents, format, encoding));
            }
        }
        let sequence: Vec<usize> = (0..pools.len()).collect();
        let result = measure(&pools, &sequence, Duration::ZERO).unwrap();
        assert_eq!(result.rows, 50 * pools.len() as u64);
        assert!(result.bytes_decoded > result.bytes_in);
        assert!(result.rows_per_cpu_sec > 0.0 && result.cpu_secs > 0.0);
        assert!(!result.simd_json.is_empty());
    }

    #[test]
    fn a_broken_body_is_an_error() {
        let mut p = pool(Stream::EdgeAccess, Format::Ndjson, Encoding::Identity);
        p.bodies[0].body = bytes::Bytes::from_static(b"{\"a\":\n");
        assert!(measure(&[p], &[0], Duration::ZERO).is_err());
    }
}
