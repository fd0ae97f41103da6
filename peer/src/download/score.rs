//! Peer scoring: how fast and how reliably each source delivers during a download.
//!
//! A peer's score is its measured throughput (verified bytes per second, smoothed), its latency
//! (request to chunk, smoothed) and its failures (timeouts, refusals, bad chunks). The score
//! decides how many requests the peer may have outstanding — about [`QUEUE_TARGET`] worth of
//! its own throughput, fewer after failures — so a slow peer never holds many chunks that a
//! fast one could deliver, and only peers within [`ENDGAME_FRACTION`] of the best take part in
//! the endgame.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use p2p_proto::PeerId;

/// How much work, in time at a peer's own pace, it may have queued.
pub const QUEUE_TARGET: Duration = Duration::from_secs(2);
/// Requests a peer keeps in flight however slow it is.
pub const MIN_PIPELINE: usize = 2;
/// Peers slower than this fraction of the best sit out the endgame.
pub const ENDGAME_FRACTION: f64 = 1.0 / 8.0;
/// Throughput is sampled over windows at least this long.
const WINDOW: Duration = Duration::from_millis(250);
/// Weight of a new sample in the smoothed figures.
const ALPHA: f64 = 0.5;

/// One peer's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerScore {
    /// Verified bytes per second, smoothed; `None` until a first window is measured.
    pub throughput: Option<f64>,
    /// Request-to-chunk time, smoothed.
    pub latency: Option<Duration>,
    /// Timeouts, refusals and bad chunks.
    pub failures: u32,
    window_start: Option<Instant>,
    window_bytes: u64,
}

impl PeerScore {
    fn record_chunk(&mut self, bytes: u64, latency: Duration, now: Instant) {
        self.latency = Some(match self.latency {
            Some(l) => l.mul_f64(1.0 - ALPHA) + latency.mul_f64(ALPHA),
            None => latency,
        });
        let start = *self.window_start.get_or_insert(now - latency);
        self.window_bytes += bytes;
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let rate = self.window_bytes as f64 / elapsed.as_secs_f64();
            self.throughput = Some(match self.throughput {
                Some(t) => t * (1.0 - ALPHA) + rate * ALPHA,
                None => rate,
            });
            self.window_start = Some(now);
            self.window_bytes = 0;
        }
    }

    /// Requests this peer may have in flight, at most `max`.
    fn pipeline(&self, chunk_size: u32, max: usize) -> usize {
        let Some(throughput) = self.throughput else {
            return max; // not measured yet: give it a fair chance
        };
        let target = QUEUE_TARGET.as_secs_f64() / f64::from(1 + self.failures.min(7));
        let depth = (throughput * target / f64::from(chunk_size.max(1))).ceil();
        (depth.min(max as f64) as usize).clamp(MIN_PIPELINE.min(max), max)
    }
}

/// The scores of every source of one download.
#[derive(Debug, Default)]
pub struct Scoreboard(Mutex<HashMap<PeerId, PeerScore>>);

impl Scoreboard {
    /// A verified chunk of `bytes` arrived from `peer`, `latency` after it was asked for.
    pub fn record_chunk(&self, peer: PeerId, bytes: u64, latency: Duration) {
        self.record_chunk_at(peer, bytes, latency, Instant::now());
    }

    fn record_chunk_at(&self, peer: PeerId, bytes: u64, latency: Duration, now: Instant) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(peer).or_default().record_chunk(bytes, latency, now);
        }
    }

    /// `peer` timed out, refused a chunk it had announced, or sent a bad one.
    pub fn record_failure(&self, peer: PeerId) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(peer).or_default().failures += 1;
        }
    }

    /// Requests `peer` may have in flight (chunks of `chunk_size`), at most `max`.
    pub fn pipeline(&self, peer: &PeerId, chunk_size: u32, max: usize) -> usize {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(peer).map(|s| s.pipeline(chunk_size, max)))
            .unwrap_or(max)
    }

    /// Whether `peer` is fast enough to take duplicates of other peers' chunks at the end.
    pub fn may_endgame(&self, peer: &PeerId) -> bool {
        let Ok(m) = self.0.lock() else { return true };
        let best = m
            .values()
            .filter_map(|s| s.throughput)
            .fold(0.0_f64, f64::max);
        match m.get(peer).and_then(|s| s.throughput) {
            Some(mine) => best <= 0.0 || mine >= best * ENDGAME_FRACTION,
            None => true,
        }
    }

    /// The figures of `peer` so far.
    pub fn get(&self, peer: &PeerId) -> PeerScore {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(peer).cloned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 262_144;

    /// Feeds `chunks` chunks at `rate` bytes/s to `peer`, starting at `t0`.
    fn feed(board: &Scoreboard, peer: PeerId, rate: f64, chunks: u32, t0: Instant) -> Instant {
        let gap = Duration::from_secs_f64(f64::from(CHUNK) / rate);
        let mut now = t0;
        for _ in 0..chunks {
            now += gap;
            board.record_chunk_at(peer, u64::from(CHUNK), gap, now);
        }
        now
    }

    #[test]
    fn unmeasured_peers_get_the_full_pipeline() {
        let board = Scoreboard::default();
        assert_eq!(board.pipeline(&PeerId([1; 32]), CHUNK, 32), 32);
        assert!(board.may_endgame(&PeerId([1; 32])));
    }

    #[test]
    fn slow_peers_get_fewer_requests_and_sit_out_the_endgame() {
        let board = Scoreboard::default();
        let (fast, slow, trickle) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        let t0 = Instant::now();
        feed(&board, fast, 400e6, 400, t0);
        feed(&board, slow, 1e6, 20, t0);
        feed(&board, trickle, 20e3, 3, t0);
        assert_eq!(board.pipeline(&fast, CHUNK, 32), 32);
        // 1 MB/s for two seconds is about eight chunks.
        assert_eq!(board.pipeline(&slow, CHUNK, 32), 8);
        assert_eq!(board.pipeline(&trickle, CHUNK, 32), MIN_PIPELINE);
        assert!(board.may_endgame(&fast));
        assert!(!board.may_endgame(&slow));
        let s = board.get(&slow);
        assert!((s.throughput.unwrap() - 1e6).abs() < 1e4, "{s:?}");
        assert!(s.latency.unwrap() > Duration::from_millis(200));
    }

    #[test]
    fn failures_shrink_a_peers_share() {
        let board = Scoreboard::default();
        let peer = PeerId([1; 32]);
        feed(&board, peer, 2e6, 40, Instant::now());
        let before = board.pipeline(&peer, CHUNK, 32);
        board.record_failure(peer);
        board.record_failure(peer);
        let after = board.pipeline(&peer, CHUNK, 32);
        assert!(after < before, "{after} < {before}");
        assert_eq!(board.get(&peer).failures, 2);
    }
}
