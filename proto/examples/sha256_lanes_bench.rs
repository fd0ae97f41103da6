//! SHA-256 over 256 KiB chunks: one stream (`sha2`) against 2, 3 and 4 interleaved lanes
//! (`p2p_proto::sha256_lanes`). Prints GB/s, the best of 15 timings each, so a neighbour's
//! burst on a shared host does not count. `bench/hashing/run.sh` runs it.

use std::time::Instant;

use p2p_proto::sha256_lanes::{MAX_LANES, compress_lanes};

const CHUNK: usize = 256 * 1024;
const REPEAT: usize = 10;
const TIMINGS: usize = 15;

fn main() {
    // Eight chunks: 2 MiB, as many as a few downloads keep between receiving and writing.
    let data: Vec<u8> = (0..8 * CHUNK)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect();
    let (blocks, _) = data.as_chunks::<64>();
    let chunks: Vec<&[[u8; 64]]> = blocks.chunks(CHUNK / 64).collect();
    let bytes = (data.len() * REPEAT) as f64;
    let best = |work: &dyn Fn()| {
        let fastest = (0..TIMINGS)
            .map(|_| {
                let t = Instant::now();
                work();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        bytes / fastest / 1e9
    };
    let single = best(&|| {
        for _ in 0..REPEAT {
            for c in &chunks {
                let mut state = [0u32; 8];
                sha2::block_api::compress256(&mut state, c);
                std::hint::black_box(state);
            }
        }
    });
    println!("sha2, one stream: {single:.2} GB/s");
    for lanes in 2..=MAX_LANES {
        let rate = best(&|| {
            for _ in 0..REPEAT {
                for group in chunks.chunks(lanes) {
                    let mut work: Vec<([u32; 8], &[[u8; 64]])> =
                        group.iter().map(|c| ([0u32; 8], *c)).collect();
                    compress_lanes(&mut work);
                    std::hint::black_box(&work);
                }
            }
        });
        println!(
            "{lanes} lanes: {rate:.2} GB/s ({:.2}x one stream)",
            rate / single
        );
    }
}
