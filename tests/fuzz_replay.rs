//! Replays every fuzz seed (`fuzz/seeds/<target>/`) and every kept crash input
//! (`fuzz/regressions/<target>/`) through the functions the fuzz targets run, so the suite
//! checks them without cargo-fuzz. `write_seeds` (ignored) regenerates the seeds from the
//! load-test generator:
//!
//! ```sh
//! cargo test --test fuzz_replay -- --ignored write_seeds
//! ```

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::io::Write;
use std::path::{Path, PathBuf};

use sluice_loadtest::generator::{self, Format, Generator};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<_> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_seed_and_kept_crash_input_passes_its_target() {
    let mut replayed = 0;
    for (target, run) in harness::TARGETS {
        let seeds = inputs(&fuzz_dir().join("seeds").join(target));
        assert!(
            seeds.len() >= 3,
            "fuzz/seeds/{target} holds {} seeds: run write_seeds",
            seeds.len()
        );
        let regressions = inputs(&fuzz_dir().join("regressions").join(target));
        for (path, bytes) in seeds.iter().chain(&regressions) {
            let outcome = std::panic::catch_unwind(|| run(bytes));
            assert!(outcome.is_ok(), "{target} fails on {}", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 7 * 3);
}

/// Writes `fuzz/seeds/<target>/<name>` from generated traffic and a few hand-made hostile
/// inputs. Deterministic (fixed generator seed).
#[test]
#[ignore = "regenerates the committed seed corpus"]
fn write_seeds() {
    let mut generate = Generator::new(8);
    let access = generate.edge_access(4);
    let events = generate.edge_events(4);
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for (target, format) in [
        ("decode_ndjson", Format::Ndjson),
        ("decode_json_array", Format::JsonArray),
        ("decode_csv", Format::Csv),
        ("decode_delimited", Format::Delimited),
    ] {
        write(
            target,
            "edge_access",
            &generator::encode_access(&access, format),
        );
        write(
            target,
            "edge_events",
            &generator::encode_events(&events, format),
        );
    }
    write(
        "decode_ndjson",
        "datastream2",
        generator::ds2_sample_batch().as_bytes(),
    );
    write(
        "decode_ndjson",
        "hostile",
        b"{\"reqId\":\"a\",\"reqId\":\"b\"}\n{\"a\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}\n\
          {\"cliIP\":\"\xff\xfe\"}\n{\"statusCode\":99999999999999999999}\n{\"x\":\"\0\"}\n",
    );
    write(
        "decode_json_array",
        "hostile",
        b"[{\"statusCode\":-1},{\"bytes\":1e400},[],null,{\"reqTimeSec\":\"2026-13-40T99:00:00Z\"}]",
    );
    write(
        "decode_csv",
        "hostile",
        b"reqId,statusCode,cliIP\n\"a\"\"b\",200\n\"unterminated,1,2\n1,2,3,4\n",
    );
    write(
        "decode_delimited",
        "hostile",
        b"1 2 3\r\n\xff\xfe\n- - - - - - - - - - - - - - - - - - - - - - - - - - -\n",
    );

    let ndjson = generator::encode_access(&access, Format::Ndjson);
    let mut gzip = vec![0u8];
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&ndjson).unwrap();
    gzip.extend(encoder.finish().unwrap());
    write("decompress", "gzip", &gzip);
    let mut zstd = vec![1u8];
    zstd.extend(zstd::encode_all(&ndjson[..], 3).unwrap());
    write("decompress", "zstd", &zstd);
    let mut bomb = vec![1u8];
    bomb.extend(zstd::encode_all(&vec![b' '; 1 << 20][..], 19).unwrap());
    write("decompress", "zstd_bomb", &bomb);

    // Values are separated by the byte 0xFF (never part of UTF-8).
    let join = |values: Vec<String>| {
        let slices: Vec<&[u8]> = values.iter().map(String::as_bytes).collect();
        slices.join(&0xFF)
    };
    for (i, row) in access.iter().enumerate().take(2) {
        let values = row
            .wire_values()
            .iter()
            .map(|v| v.as_deref().unwrap_or("-").to_string())
            .collect();
        write(
            "validate_values",
            &format!("edge_access_{i}"),
            &join(values),
        );
    }
    for (i, row) in events.iter().enumerate().take(2) {
        let values = row
            .text_values()
            .iter()
            .map(|v| v.clone().unwrap_or_else(|| "-".to_string()))
            .collect();
        write(
            "validate_values",
            &format!("edge_events_{i}"),
            &join(values),
        );
    }
    write(
        "validate_values",
        "out_of_range",
        b"1\xff99999999999\xff-5\xffx\xff1e309\xff256\xff-\xff\xff\"\"",
    );

    write(
        "headers",
        "secret",
        b"\x04fuzz-secret-0123456789\n\x06o1\n\x03batch-1\n\x08 12 \n\x09gzip\n\x0aapplication/json",
    );
    write(
        "headers",
        "signed",
        b"\x00v1=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n\x01k1\n\
          \x021700000000\n\x03batch-1\n\x07eu",
    );
    write(
        "headers",
        "bearer",
        b"\x05Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJlZGdlLWEifQ.c2lnbmF0dXJl\n\
          \x80X-Custom: value\n\x08-1\n\x09br",
    );
}
