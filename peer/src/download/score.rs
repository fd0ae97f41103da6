//! Peer scoring: how fast and how reliably each source delivers during a download.
//!
//! A peer's score is its measured throughput (verified bytes per second, smoothed), its latency
//! (request to chunk: smoothed, and the least seen) and its failures (timeouts, refusals, bad
//! chunks). The score decides how many requests the peer may have outstanding, fewer after
//! failures (see [`Sizing`]). Over direct TCP that is its bandwidth-delay product (throughput
//! times the least latency, the round trip plus one chunk's sending with nothing queued before
//! it) with [`BDP_GAIN`] headroom, plus [`QUEUE_CHUNKS`] queued at a peer that has the whole
//! file and sends at least [`QUEUE_FROM`]. That keeps a long link full without queueing more than it needs: a deeper queue only
//! holds data in socket buffers longer, out of the CPU caches (on loopback it costs throughput;
//! the measurements are in `bench/README.md`), and lets a slow peer sit on chunks a fast one
//! could deliver. A peer that has only part of the file (see [`Source`]) is another leecher,
//! whose upload the whole swarm shares: it gets no queue beyond its bandwidth-delay product.
//! Only peers within [`ENDGAME_FRACTION`] of the best take part in the endgame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use p2p_proto::PeerId;
use parking_lot::Mutex;

/// Headroom over a peer's measured bandwidth-delay product: a pipeline too short for its link
/// measures a higher throughput at the same latency next time, so it grows by this factor
/// (plus [`QUEUE_CHUNKS`]) per measurement until the link is full (as TCP's slow start does).
pub const BDP_GAIN: f64 = 2.0;
/// Requests queued at a peer that has the whole file beyond its bandwidth-delay product, so it
/// never waits for the next request (see [`Source`] for peers that have part of it).
pub const QUEUE_CHUNKS: f64 = 2.0;
/// Throughput (bytes/s) from which a peer with the whole file gets [`QUEUE_CHUNKS`] queued.
/// Past it (loopback, a fast LAN) the time to answer a request is the CPU's, not the link's,
/// and the measured product misses it: the queue keeps the peer busy (1 GiB one to one on
/// loopback). Below it the link is the bound and the product covers the round trip; a
/// queue there only lets TCP, not the leechers' demand, split a seeder's upload among them:
/// in the swarm lab (100 Mbit/s seeder, eight 20 Mbit/s leechers) the seeder's connections
/// each held 0.1-1.5 MB unsent and its upload went where congestion windows were largest.
pub const QUEUE_FROM: f64 = 50e6;
/// How much work a tunnelled peer (see [`Sizing::Queue`]) may have queued, in time at its
/// own pace.
pub const QUEUE_TARGET: Duration = Duration::from_secs(2);
/// Requests a peer keeps in flight however slow it is.
pub const MIN_PIPELINE: usize = 2;
/// Requests a peer gets before its throughput is measured. Few, so that its first chunks
/// arrive unqueued and show its least latency; a long link grows from there.
pub const START_PIPELINE: usize = 4;
/// Peers slower than this fraction of the best sit out the endgame.
pub const ENDGAME_FRACTION: f64 = 1.0 / 8.0;
/// Throughput is sampled over windows at least this long.
const WINDOW: Duration = Duration::from_millis(250);
/// Weight of a new sample in the smoothed figures.
const ALPHA: f64 = 0.5;

/// What a peer has of the file, which decides whether requests queue there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The whole file (a seeder): [`QUEUE_CHUNKS`] beyond its bandwidth-delay product when it
    /// sends at least [`QUEUE_FROM`] (else as [`Source::Partial`]), at
    /// least [`MIN_PIPELINE`].
    Complete,
    /// Part of it (another leecher): its bandwidth-delay product only, at least one request.
    /// Its upload is shared by every leecher that wants its chunks, and a chunk queued there
    /// is a chunk no other peer is asked for meanwhile: with two queued at each of eight
    /// leechers sharing 20 Mbit/s uploads, the leechers that had the most chunks sat on
    /// everyone's requests while the others' uploads idled (the swarm lab in
    /// `bench/README.md`). Its other requesters keep its upload busy; alone, the measured
    /// product still covers its round trip.
    Partial,
}

/// How a peer's pipeline is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Direct TCP: under load, a chunk's latency is the round trip and its sending plus the
    /// requests queued before it, so the bandwidth-delay product from the least latency is
    /// what keeps the link full.
    BandwidthDelay,
    /// Relayed or hole-punched: the stream crosses user-space hops (the relay hub and its
    /// per-stream windows, QUIC's own congestion control) whose latency grows with load at
    /// every hop, so the least latency says little about what keeps it full (sized from it,
    /// a relayed transfer lost much of its throughput; see `bench/README.md`). The peer may
    /// queue [`QUEUE_TARGET`] of its own throughput instead; the tunnel's windows bound what
    /// is really in flight.
    Queue,
}

/// One peer's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerScore {
    /// Verified bytes per second, smoothed; `None` until a first window is measured.
    pub throughput: Option<f64>,
    /// Request-to-chunk time, smoothed.
    pub latency: Option<Duration>,
    /// The least request-to-chunk time seen: the round trip and one chunk's sending, with no
    /// earlier request queued before it (a download's first requests find the peer idle).
    pub base_latency: Option<Duration>,
    /// Timeouts, refusals and bad chunks.
    pub failures: u32,
    /// Verified bytes received from the peer in all.
    pub received: u64,
    window_start: Option<Instant>,
    window_bytes: u64,
}

impl PeerScore {
    fn record_chunk(&mut self, bytes: u64, latency: Duration, now: Instant) {
        self.latency = Some(match self.latency {
            Some(l) => l.mul_f64(1.0 - ALPHA) + latency.mul_f64(ALPHA),
            None => latency,
        });
        self.base_latency = Some(self.base_latency.map_or(latency, |b| b.min(latency)));
        let start = *self.window_start.get_or_insert(now - latency);
        self.received += bytes;
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
    fn pipeline(&self, sizing: Sizing, source: Source, chunk_size: u32, max: usize) -> usize {
        let chunks = |bytes: f64| bytes / f64::from(chunk_size.max(1));
        let fast = self.throughput.is_some_and(|t| t >= QUEUE_FROM);
        let (queue, least) = match source {
            Source::Complete if fast => (QUEUE_CHUNKS, MIN_PIPELINE),
            Source::Complete | Source::Partial => (0.0, 1),
        };
        let wanted = match (sizing, self.throughput, self.base_latency) {
            (Sizing::BandwidthDelay, Some(throughput), Some(base)) => {
                chunks(throughput * base.as_secs_f64()) * BDP_GAIN + queue
            }
            (Sizing::Queue, Some(throughput), _) => chunks(throughput * QUEUE_TARGET.as_secs_f64()),
            _ => return Self::unmeasured(sizing, max),
        };
        let depth = wanted / f64::from(1 + self.failures.min(7));
        (depth.ceil().min(max as f64) as usize).clamp(least.min(max), max)
    }

    /// Requests a peer gets before its throughput is measured.
    fn unmeasured(sizing: Sizing, max: usize) -> usize {
        match sizing {
            Sizing::BandwidthDelay => START_PIPELINE.min(max),
            Sizing::Queue => max,
        }
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
        self.0
            .lock()
            .entry(peer)
            .or_default()
            .record_chunk(bytes, latency, now);
    }

    /// `peer` timed out, refused a chunk it had announced, or sent a bad one.
    pub fn record_failure(&self, peer: PeerId) {
        self.0.lock().entry(peer).or_default().failures += 1;
    }

    /// Requests `peer` may have in flight (chunks of `chunk_size`), at most `max`.
    pub fn pipeline(
        &self,
        peer: &PeerId,
        sizing: Sizing,
        source: Source,
        chunk_size: u32,
        max: usize,
    ) -> usize {
        self.0
            .lock()
            .get(peer)
            .map(|s| s.pipeline(sizing, source, chunk_size, max))
            .unwrap_or(PeerScore::unmeasured(sizing, max))
    }

    /// Whether `peer` is fast enough to take duplicates of other peers' chunks at the end.
    pub fn may_endgame(&self, peer: &PeerId) -> bool {
        let m = self.0.lock();
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
        self.0.lock().get(peer).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 262_144;

    /// A link from one peer: `rate` bytes/s, round trip `rtt`.
    #[derive(Clone, Copy)]
    struct Link {
        rate: f64,
        rtt: Duration,
    }

    impl Link {
        fn new(rate: f64, rtt_ms: f64) -> Self {
            Self {
                rate,
                rtt: Duration::from_secs_f64(rtt_ms / 1000.0),
            }
        }

        /// One chunk's sending.
        fn send(self) -> Duration {
            Duration::from_secs_f64(f64::from(CHUNK) / self.rate)
        }

        /// The first chunk from `peer`, asked at `t0` of an idle peer.
        fn first(self, board: &Scoreboard, peer: PeerId, t0: Instant) -> Instant {
            let latency = self.rtt + self.send();
            board.record_chunk_at(peer, u64::from(CHUNK), latency, t0 + latency);
            t0 + latency
        }

        /// `chunks` more with `depth` requests in flight, from `now` on. Little's law: one
        /// chunk per sending time when the link is full, each waiting about `depth` of them,
        /// never less than the round trip and its own sending.
        fn deliver(
            self,
            board: &Scoreboard,
            peer: PeerId,
            depth: u32,
            chunks: u32,
            mut now: Instant,
        ) -> Instant {
            let base = self.rtt + self.send();
            let (gap, latency) = if self.send() * depth >= base {
                (self.send(), self.send() * depth)
            } else {
                (base / depth, base)
            };
            for _ in 0..chunks {
                now += gap;
                board.record_chunk_at(peer, u64::from(CHUNK), latency, now);
            }
            now
        }

        /// A download's start (every request at once, `depth` of them) and `chunks` more.
        fn feed(self, board: &Scoreboard, peer: PeerId, depth: u32, chunks: u32) {
            let now = self.first(board, peer, Instant::now());
            self.deliver(board, peer, depth, chunks, now);
        }
    }

    #[test]
    fn unmeasured_peers_start_with_a_short_pipeline() {
        let board = Scoreboard::default();
        assert_eq!(
            board.pipeline(
                &PeerId([1; 32]),
                Sizing::BandwidthDelay,
                Source::Complete,
                CHUNK,
                32
            ),
            START_PIPELINE
        );
        assert_eq!(
            board.pipeline(
                &PeerId([1; 32]),
                Sizing::BandwidthDelay,
                Source::Complete,
                CHUNK,
                1
            ),
            1
        );
        assert!(board.may_endgame(&PeerId([1; 32])));
    }

    #[test]
    fn a_pipeline_holds_its_links_bandwidth_delay_product_and_a_little_more() {
        let board = Scoreboard::default();
        let (local, far, slow) = (PeerId([1; 32]), PeerId([2; 32]), PeerId([3; 32]));
        // Loopback: 1 GB/s, 50 µs round trip. Full at any depth past two; 32 would only
        // hold 8 MiB in socket buffers.
        Link::new(1e9, 0.05).feed(&board, local, 32, 4000);
        assert_eq!(
            board.pipeline(&local, Sizing::BandwidthDelay, Source::Complete, CHUNK, 32),
            5
        );
        // 40 MB/s over 100 ms: 4.3 MB (16.3 chunks) in flight keep the link full.
        Link::new(40e6, 100.0).feed(&board, far, 32, 160);
        let depth = board.pipeline(&far, Sizing::BandwidthDelay, Source::Complete, CHUNK, 64);
        assert!((31..=35).contains(&depth), "{depth}");
        assert_eq!(
            board.pipeline(&far, Sizing::BandwidthDelay, Source::Complete, CHUNK, 16),
            16,
            "never more than the cap"
        );
        // 1 MB/s over 100 ms: sending one chunk takes longer than the round trip; the
        // product (with its headroom) covers it, and a peer this slow gets no queue.
        Link::new(1e6, 100.0).feed(&board, slow, 32, 20);
        assert_eq!(
            board.pipeline(&slow, Sizing::BandwidthDelay, Source::Complete, CHUNK, 32),
            3
        );
        let s = board.get(&slow);
        assert!((s.throughput.unwrap() - 1e6).abs() < 1e4, "{s:?}");
        assert!(s.latency.unwrap() > Duration::from_secs(1), "{s:?}");
        assert!(
            s.base_latency.unwrap() < Duration::from_millis(400),
            "{s:?}"
        );
    }

    #[test]
    fn a_pipeline_too_short_for_its_link_grows_until_the_link_is_full() {
        let board = Scoreboard::default();
        let peer = PeerId([1; 32]);
        // 100 MB/s over 50 ms: 20 chunks fill the link.
        let link = Link::new(100e6, 50.0);
        let mut now = link.first(&board, peer, Instant::now());
        let mut depth = START_PIPELINE;
        for _ in 0..8 {
            now = link.deliver(&board, peer, depth as u32, 100, now);
            depth = board.pipeline(&peer, Sizing::BandwidthDelay, Source::Complete, CHUNK, 64);
        }
        let throughput = board.get(&peer).throughput.unwrap();
        assert!((20..=50).contains(&depth), "{depth}");
        assert!(throughput > 95e6, "{throughput}");
    }

    #[test]
    fn a_leecher_gets_its_bandwidth_delay_product_and_no_queue() {
        let board = Scoreboard::default();
        let (shared, alone) = (PeerId([1; 32]), PeerId([2; 32]));
        // A 20 Mbit/s upload shared by seven leechers: the first chunk from it idle (0.1 s),
        // then 0.36 MB/s each. A seeder at that pace (a 100 Mbit/s upload shared by many)
        // gets no queue either: its leechers' requests, not TCP, split its upload.
        let now = Link::new(2.5e6, 0.1).first(&board, shared, Instant::now());
        Link::new(2.5e6 / 7.0, 0.1).deliver(&board, shared, 1, 20, now);
        let depth = |peer, source| board.pipeline(&peer, Sizing::BandwidthDelay, source, CHUNK, 32);
        assert_eq!(depth(shared, Source::Partial), 1);
        assert_eq!(depth(shared, Source::Complete), 1);
        // The same upload for this leecher alone, 40 ms away: its product covers the round trip.
        Link::new(2.5e6, 40.0).feed(&board, alone, 3, 40);
        assert_eq!(depth(alone, Source::Partial), 3);
    }

    #[test]
    fn tunnelled_peers_queue_two_seconds_of_their_throughput() {
        let board = Scoreboard::default();
        let (fast, slow) = (PeerId([1; 32]), PeerId([2; 32]));
        assert_eq!(
            board.pipeline(&fast, Sizing::Queue, Source::Complete, CHUNK, 32),
            32,
            "unmeasured"
        );
        Link::new(200e6, 1.0).feed(&board, fast, 32, 800);
        Link::new(1e6, 1.0).feed(&board, slow, 32, 20);
        assert_eq!(
            board.pipeline(&fast, Sizing::Queue, Source::Complete, CHUNK, 32),
            32
        );
        // 1 MB/s for two seconds is about eight chunks.
        assert_eq!(
            board.pipeline(&slow, Sizing::Queue, Source::Complete, CHUNK, 32),
            8
        );
    }

    #[test]
    fn slow_peers_sit_out_the_endgame() {
        let board = Scoreboard::default();
        let (fast, slow) = (PeerId([1; 32]), PeerId([2; 32]));
        Link::new(400e6, 1.0).feed(&board, fast, 8, 400);
        Link::new(1e6, 1.0).feed(&board, slow, 8, 20);
        assert!(board.may_endgame(&fast));
        assert!(!board.may_endgame(&slow));
    }

    #[test]
    fn failures_shrink_a_peers_share() {
        let board = Scoreboard::default();
        let peer = PeerId([1; 32]);
        Link::new(20e6, 100.0).feed(&board, peer, 32, 80);
        let before = board.pipeline(&peer, Sizing::BandwidthDelay, Source::Complete, CHUNK, 32);
        board.record_failure(peer);
        board.record_failure(peer);
        let after = board.pipeline(&peer, Sizing::BandwidthDelay, Source::Complete, CHUNK, 32);
        assert!(after < before, "{after} < {before}");
        assert_eq!(board.get(&peer).failures, 2);
    }
}
