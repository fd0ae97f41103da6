//! SHA-256 compression over several independent inputs at once.
//!
//! With the x86 SHA extensions, one SHA-256 stream is bound by the latency of `sha256rnds2`:
//! each pair of rounds waits for the one before, and the SHA unit idles in between. Interleaving
//! the rounds of up to four independent streams fills those gaps. On the 2-core AMD EPYC
//! (Zen 4, 2.6 GHz) CI machine one stream hashes 1.80 GB/s, two 2.35 GB/s, three 2.81 and four
//! 3.50 GB/s in all (`bench/hashing/run.sh`). A downloader checks every chunk it receives from its own chaining value
//! (see [`crate::manifest`]), so chunks that arrive together can be checked together.
//!
//! Elsewhere (other CPUs, WASM) the lanes run one after another through `sha2`, which picks its
//! own fastest single-stream code. Either way the results are exactly SHA-256's compression;
//! `tests` check every lane count against `sha2`.

/// Most streams interleaved in one pass: beyond four, the 16 SSE registers spill and the
/// gain stops.
pub const MAX_LANES: usize = 4;

/// Runs SHA-256's compression function over each lane's blocks, from and into its chaining
/// value. Lanes are independent and may hold different numbers of blocks.
pub fn compress_lanes(lanes: &mut [([u32; 8], &[[u8; 64]])]) {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        let mut rest = &mut lanes[..];
        while rest.len() >= 2 {
            let take = rest.len().min(MAX_LANES);
            let (group, tail) = rest.split_at_mut(take);
            compress_group(group);
            rest = tail;
        }
        for (state, blocks) in rest.iter_mut() {
            sha2::block_api::compress256(state, blocks);
        }
        return;
    }
    for (state, blocks) in lanes.iter_mut() {
        sha2::block_api::compress256(state, blocks);
    }
}

/// Compresses 2 to [`MAX_LANES`] lanes: their common run of blocks interleaved, whatever one
/// lane has beyond that on its own.
#[cfg(target_arch = "x86_64")]
fn compress_group(group: &mut [([u32; 8], &[[u8; 64]])]) {
    let common = group.iter().map(|(_, b)| b.len()).min().unwrap_or(0);
    match group {
        [a, b] => shani::run([&mut a.0, &mut b.0], [&a.1[..common], &b.1[..common]]),
        [a, b, c] => shani::run(
            [&mut a.0, &mut b.0, &mut c.0],
            [&a.1[..common], &b.1[..common], &c.1[..common]],
        ),
        [a, b, c, d] => shani::run(
            [&mut a.0, &mut b.0, &mut c.0, &mut d.0],
            [
                &a.1[..common],
                &b.1[..common],
                &c.1[..common],
                &d.1[..common],
            ],
        ),
        _ => {}
    }
    let done = if group.len() >= 2 { common } else { 0 };
    for (state, blocks) in group.iter_mut() {
        sha2::block_api::compress256(state, &blocks[done..]);
    }
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_extract_epi32,
        _mm_loadu_si128, _mm_set_epi32, _mm_set_epi64x, _mm_sha256msg1_epu32, _mm_sha256msg2_epu32,
        _mm_sha256rnds2_epu32, _mm_shuffle_epi8, _mm_shuffle_epi32,
    };

    /// SHA-256's round constants (FIPS 180-4, §4.2.2), four per step.
    const K: [[u32; 4]; 16] = [
        [0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5],
        [0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5],
        [0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3],
        [0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174],
        [0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc],
        [0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da],
        [0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7],
        [0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967],
        [0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13],
        [0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85],
        [0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3],
        [0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070],
        [0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5],
        [0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3],
        [0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208],
        [0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2],
    ];

    /// Whether this CPU has the SHA extensions and the SSE levels the code below uses.
    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("sha")
            && std::is_x86_feature_detected!("ssse3")
            && std::is_x86_feature_detected!("sse4.1")
    }

    /// Compresses `N` lanes of equally many blocks, interleaved.
    pub(super) fn run<const N: usize>(states: [&mut [u32; 8]; N], data: [&[[u8; 64]]; N]) {
        assert!(
            available(),
            "the SHA-256 lanes need the SHA extensions, SSSE3 and SSE4.1"
        );
        // SAFETY: the CPU has every feature `compress` is compiled for (checked just above);
        // `compress` itself is safe code.
        #[allow(unsafe_code)]
        unsafe {
            compress(states, data)
        }
    }

    #[target_feature(enable = "sha,ssse3,sse4.1")]
    fn lane(words: [u32; 4]) -> __m128i {
        let [a, b, c, d] = words.map(|w| w as i32);
        // Lowest lane first, as a load from memory places them.
        _mm_set_epi32(d, c, b, a)
    }

    #[target_feature(enable = "sha,ssse3,sse4.1")]
    fn load_block(block: &[u8; 64]) -> [__m128i; 4] {
        // Big-endian words: loaded as they lie, then each word's bytes reversed.
        let swap = _mm_set_epi64x(0x0c0d_0e0f_0809_0a0b, 0x0405_0607_0001_0203);
        let (parts, _) = block.as_chunks::<16>();
        [0, 1, 2, 3].map(|i| {
            // SAFETY: `parts[i]` is 16 readable bytes; the load has no alignment requirement.
            #[allow(unsafe_code)]
            let words = unsafe { _mm_loadu_si128(parts[i].as_ptr().cast()) };
            _mm_shuffle_epi8(words, swap)
        })
    }

    /// The interleaved compression. Each lane runs the usual SHA-NI sequence: the state held as
    /// ABEF and CDGH, four rounds per step, the message schedule computed four words at a time
    /// with `sha256msg1` and `sha256msg2`.
    // Indexed loops on purpose: the lanes advance in lockstep, and LLVM unrolls these counted
    // loops into straight-line code (the iterator forms measured slower).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "sha,ssse3,sse4.1")]
    fn compress<const N: usize>(states: [&mut [u32; 8]; N], data: [&[[u8; 64]]; N]) {
        let mut abef = [lane([0; 4]); N];
        let mut cdgh = [lane([0; 4]); N];
        for j in 0..N {
            let s = &*states[j];
            let dcba = lane([s[0], s[1], s[2], s[3]]);
            let efgh = _mm_shuffle_epi32(lane([s[4], s[5], s[6], s[7]]), 0x1b);
            let cdab = _mm_shuffle_epi32(dcba, 0xb1);
            abef[j] = _mm_alignr_epi8(cdab, efgh, 8);
            cdgh[j] = _mm_blend_epi16(efgh, cdab, 0xf0);
        }
        let blocks = data.iter().map(|d| d.len()).min().unwrap_or(0);
        for b in 0..blocks {
            let (abef_in, cdgh_in) = (abef, cdgh);
            let mut w = [[lane([0; 4]); 4]; N];
            for j in 0..N {
                w[j] = load_block(&data[j][b]);
            }
            for step in 0..16 {
                let k = lane(K[step]);
                for j in 0..N {
                    let words = if step < 4 {
                        w[j][step]
                    } else {
                        let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|o| w[j][(step + o) % 4]);
                        let next = _mm_sha256msg2_epu32(
                            _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4)),
                            w3,
                        );
                        w[j][step % 4] = next;
                        next
                    };
                    let wk = _mm_add_epi32(words, k);
                    cdgh[j] = _mm_sha256rnds2_epu32(cdgh[j], abef[j], wk);
                    abef[j] = _mm_sha256rnds2_epu32(abef[j], cdgh[j], _mm_shuffle_epi32(wk, 0x0e));
                }
            }
            for j in 0..N {
                abef[j] = _mm_add_epi32(abef[j], abef_in[j]);
                cdgh[j] = _mm_add_epi32(cdgh[j], cdgh_in[j]);
            }
        }
        for (j, state) in states.into_iter().enumerate() {
            let feba = _mm_shuffle_epi32(abef[j], 0x1b);
            let dchg = _mm_shuffle_epi32(cdgh[j], 0xb1);
            let dcba = _mm_blend_epi16(feba, dchg, 0xf0);
            let hgef = _mm_alignr_epi8(dchg, feba, 8);
            *state = [
                _mm_extract_epi32(dcba, 0),
                _mm_extract_epi32(dcba, 1),
                _mm_extract_epi32(dcba, 2),
                _mm_extract_epi32(dcba, 3),
                _mm_extract_epi32(hgef, 0),
                _mm_extract_epi32(hgef, 1),
                _mm_extract_epi32(hgef, 2),
                _mm_extract_epi32(hgef, 3),
            ]
            .map(|w| w as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blocks(seed: u8, n: usize) -> Vec<[u8; 64]> {
        (0..n)
            .map(|i| std::array::from_fn(|j| seed ^ (i * 64 + j).wrapping_mul(151) as u8))
            .collect()
    }

    fn one_by_one(lanes: &[([u32; 8], Vec<[u8; 64]>)]) -> Vec<[u32; 8]> {
        lanes
            .iter()
            .map(|(state, b)| {
                let mut s = *state;
                sha2::block_api::compress256(&mut s, b);
                s
            })
            .collect()
    }

    proptest! {
        #[test]
        fn lanes_compress_like_one_stream_each(
            sizes in proptest::collection::vec(0usize..40, 0..=9),
            starts in proptest::collection::vec(any::<[u32; 8]>(), 9),
        ) {
            let inputs: Vec<([u32; 8], Vec<[u8; 64]>)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (starts[i], blocks(i as u8, n)))
                .collect();
            let expected = one_by_one(&inputs);
            let mut lanes: Vec<([u32; 8], &[[u8; 64]])> =
                inputs.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            compress_lanes(&mut lanes);
            let got: Vec<[u32; 8]> = lanes.iter().map(|(s, _)| *s).collect();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn four_full_chunks_match_sha256() {
        use sha2::Digest;
        // 256 KiB chunks, as downloads check them, from SHA-256's initial value.
        let data: Vec<Vec<[u8; 64]>> = (0..4).map(|i| blocks(i, 4096)).collect();
        let mut lanes: Vec<([u32; 8], &[[u8; 64]])> = data
            .iter()
            .map(|b| (crate::manifest::SHA256_IV, b.as_slice()))
            .collect();
        compress_lanes(&mut lanes);
        for ((state, _), b) in lanes.iter().zip(&data) {
            let mut h = crate::manifest::ChainHasher::new();
            h.update(b.as_flattened());
            let mut words = *state;
            // Padding block of a 256 KiB message, to compare with sha2's digest.
            let mut pad = [0u8; 64];
            pad[0] = 0x80;
            pad[56..].copy_from_slice(&((b.len() as u64) * 512).to_be_bytes());
            sha2::block_api::compress256(&mut words, &[pad]);
            let digest: [u8; 32] = sha2::Sha256::digest(b.as_flattened()).into();
            let mine: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            assert_eq!(mine, digest);
            assert_eq!(h.finish().0, digest);
        }
    }
}
