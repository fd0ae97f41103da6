//! What the peer's integration tests share. Each test binary uses part of it.
#![allow(dead_code)]

/// Deterministic pseudo-random content (xorshift).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fails the test when `P2P_REQUIRE_ALL=1` (CI), else prints a SKIPPED line.
pub fn skip(what: &str, why: &str) {
    if std::env::var("P2P_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{what} cannot run under P2P_REQUIRE_ALL=1: {why}");
    }
    println!("SKIPPED: {what}: {why}");
}
