//! More connections to a peer where one alone is slow.
//!
//! A TCP connection's throughput is bound by its congestion window, and with packet loss that
//! window stays small: a cubic flow with 1 % loss and a 40 ms round trip carries 2-3 Mbit/s
//! whatever the link. One download from one seeder over such a path (the swarm lab, 16 MiB)
//! took 20.0 s with two connections, 8.0 s with eight and 3.2 s with sixteen (forced; the
//! seeder's turns may grow to sixteen with them, see [`crate::upload_turns`]);
//! `bench/README.md` has the figures. Where the link, not the connection, is the bound, more
//! connections only cost.
//!
//! So a download tries more connections to the peer that delivers most: twice as many (at
//! most [`MOST_LANES`] to one peer and [`MOST_CONNECTIONS`] in all), kept if that peer then
//! delivers [`MORE_GAIN`] times as much and the whole download is [`TOTAL_GAIN`] times as
//! fast (more from one peer that only takes from the others is no gain), else stopped again
//! and tried again after a pause that doubles from [`MORE_PAUSE`] to [`MORE_PAUSE_MAX`]. In a
//! swarm one peer's connections carry only a part of the download: judged on the whole
//! download alone (1.5 times as fast), every try in the lab's lossy swarm of eight was stopped
//! and the seeder's upload stayed 73-80 % idle; judged on the peer alone, more from one peer
//! could merely take from the others.
//!
//! Each rate is the mean of two windows (at least [`WINDOW`] and [`WINDOW_CHUNKS`] chunks),
//! after one window that is not counted (connections opening, windows growing), and only
//! while chunks are left that no peer was asked for: the endgame's rate says nothing about the
//! links. A download that starts on a new peer meanwhile measures afresh, and a try under way
//! then ends without a judgment (its connections stop, with no pause): a swarm's new peers
//! speed a download up by themselves. The first try comes after three windows, so a download
//! over in a few seconds (loopback, a LAN) never makes one.
//!
//! This module decides; the download's loop ([`super::run`]) starts and stops the connections.

use std::time::{Duration, Instant};

use p2p_proto::PeerId;

/// The most connections one download grows to one peer (as many as a peer accepts from
/// another, [`crate::net::accept::MAX_PER_PEER`]).
pub const MOST_LANES: u8 = 16;
/// The most connections one download grows to, over all its peers: a swarm's many peers give
/// it flows enough, and each connection holds requests and buffers.
pub const MOST_CONNECTIONS: usize = 16;
/// A peer whose connections each carry this many bytes a second or more gets no more: past
/// it the CPU, not a connection's window, is the bound (loopback, a fast LAN; the same
/// threshold as [`super::score::QUEUE_FROM`]), and each connection costs buffers (a seeder's
/// peak memory rose from 31 to 44-47 MiB in `bench/memory` with tries of four there).
pub const GROW_BELOW: f64 = super::score::QUEUE_FROM;
/// More connections to a peer are kept if it delivers at least this many times as much with
/// them: twice the flows where each is bound by loss came 2.0-2.2 times as fast in the swarm
/// lab, while a download's first seconds speed up by a quarter or more by themselves.
pub const MORE_GAIN: f64 = 1.5;
/// … and if the whole download is at least this many times as fast.
pub const TOTAL_GAIN: f64 = 1.1;
/// The pause before more connections are tried again after they were not faster, doubling
/// each time up to [`MORE_PAUSE_MAX`]. Short: a try costs only a few seconds of idle
/// connections, and the first is often judged against the rate of a download's first seconds,
/// which loss has not yet cut.
pub const MORE_PAUSE: Duration = Duration::from_secs(5);
/// The longest pause before more connections are tried again.
pub const MORE_PAUSE_MAX: Duration = Duration::from_secs(60);
/// The rate is measured over windows at least this long …
pub const WINDOW: Duration = Duration::from_secs(1);
/// … holding at least this many chunks, so that one chunk more or less moves a rate by an
/// eighth at most (a slow download's second holds three or four) …
pub const WINDOW_CHUNKS: u64 = 8;
/// … or this long, if fewer come.
pub const WINDOW_LONGEST: Duration = Duration::from_secs(4);

/// What the download is to do with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Try more connections to the peer that delivers most.
    More,
    /// The connections added by the try were not faster: stop them.
    Back,
}

/// What a download is like at a measurement (see [`Growth::tick`]).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Verified bytes received so far, from all peers.
    pub received: u64,
    /// The peer more connections would go to (the one being tried, during a try) and the
    /// bytes received from it so far; `None` if no peer may get more.
    pub peer: Option<(PeerId, u64)>,
    /// Whether that peer may get more now (after a try: it has room for twice as many).
    pub may_grow: bool,
    /// Chunks are left that no peer was asked for (not the endgame).
    pub measurable: bool,
    /// The download started on a peer since the last measurement.
    pub new_peer: bool,
}

/// Rates over one or more windows: the whole download's, and the bytes a second from one peer
/// if the same peer was the one to grow throughout.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    total: f64,
    peer: Option<(PeerId, f64)>,
}

/// The measurements and tries of one download.
#[derive(Debug)]
pub struct Growth {
    /// The download's chunk size.
    chunk: u64,
    /// The window being measured: when it started and what had been received by then.
    window: Option<(Instant, Sample)>,
    /// Windows still to be left uncounted after the last change.
    settle: u8,
    /// The rates of the first of the two windows counted since the last change, once it is.
    first: Option<Rates>,
    /// The rates before the try under way, if one is.
    trial: Option<Rates>,
    /// When more may be tried next, and the pause after the next try that is not faster.
    more_after: Option<Instant>,
    pause: Duration,
}

impl Growth {
    /// The measurements of a download in chunks of `chunk` bytes.
    pub fn new(chunk: u64) -> Self {
        Self {
            chunk: chunk.max(1),
            window: None,
            settle: 1,
            first: None,
            trial: None,
            more_after: None,
            pause: MORE_PAUSE,
        }
    }

    /// Takes a measurement; says what to do, if anything: more connections to the sample's
    /// peer, or back to those before the try.
    pub fn tick(&mut self, now: Instant, sample: Sample) -> Option<Step> {
        if !sample.measurable {
            // The endgame: what more connections hold is in flight; they stay, untried.
            self.trial = None;
            self.afresh(None);
            return None;
        }
        if sample.new_peer {
            // Measured afresh; a try under way ends unjudged, without a pause.
            self.afresh(Some((now, sample)));
            return self.trial.take().map(|_| Step::Back);
        }
        let Some((start, at_start)) = self.window else {
            self.window = Some((now, sample));
            return None;
        };
        let elapsed = now.saturating_duration_since(start);
        let chunks = sample.received.saturating_sub(at_start.received) / self.chunk;
        if elapsed < WINDOW || (chunks < WINDOW_CHUNKS && elapsed < WINDOW_LONGEST) {
            return None;
        }
        self.window = Some((now, sample));
        if self.settle > 0 {
            self.settle -= 1;
            return None;
        }
        let per_sec = |bytes: u64| bytes as f64 / elapsed.as_secs_f64();
        let peer = match (at_start.peer, sample.peer) {
            (Some((a, before)), Some((b, after))) if a == b => {
                Some((a, per_sec(after.saturating_sub(before))))
            }
            _ => None,
        };
        let rates = Rates {
            total: per_sec(sample.received.saturating_sub(at_start.received)),
            peer,
        };
        let Some(first) = self.first.take() else {
            self.first = Some(rates);
            return None;
        };
        let mean = mean(first, rates);
        tracing::trace!(?mean, before = ?self.trial, "download rates measured");
        match self.trial.take() {
            Some(before) if gained(before, mean) => {
                // Kept; these rates are the ones the next try is judged against.
                self.pause = MORE_PAUSE;
                self.next(now, mean, sample.may_grow)
            }
            Some(_) => {
                self.more_after = Some(now + self.pause);
                self.pause = (self.pause * 2).min(MORE_PAUSE_MAX);
                self.afresh(self.window);
                Some(Step::Back)
            }
            None => self.next(now, mean, sample.may_grow),
        }
    }

    /// With `rates` measured: a try of more connections, if one may start.
    fn next(&mut self, now: Instant, rates: Rates, may_grow: bool) -> Option<Step> {
        let due = self.more_after.is_none_or(|at| now >= at);
        let delivers = rates.peer.is_some_and(|(_, rate)| rate > 0.0);
        if !(may_grow && due && delivers) {
            return None;
        }
        self.trial = Some(rates);
        self.afresh(self.window);
        Some(Step::More)
    }

    /// Measures afresh from `window` on, its first window not counted.
    fn afresh(&mut self, window: Option<(Instant, Sample)>) {
        self.window = window;
        self.first = None;
        self.settle = 1;
    }
}

/// The mean of two windows' rates (the peer's only if both measured the same one).
fn mean(a: Rates, b: Rates) -> Rates {
    let peer = match (a.peer, b.peer) {
        (Some((p, x)), Some((q, y))) if p == q => Some((p, (x + y) / 2.0)),
        _ => None,
    };
    Rates {
        total: (a.total + b.total) / 2.0,
        peer,
    }
}

/// Whether the rates `after` a try show it worth keeping against those `before`.
fn gained(before: Rates, after: Rates) -> bool {
    let peer = match (before.peer, after.peer) {
        (Some((a, before)), Some((b, after))) => a == b && after >= before * MORE_GAIN,
        _ => false,
    };
    peer && after.total >= before.total * TOTAL_GAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of 64 KiB: 16 a second at 1 MB/s.
    const CHUNK: u64 = 1 << 16;
    const PEER: PeerId = PeerId([7; 32]);

    /// A download's measurements every 250 ms.
    struct Feed {
        g: Growth,
        origin: Instant,
        ms: u64,
        received: u64,
        from_peer: u64,
        /// Whether the peer has room for more.
        room: bool,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                g: Growth::new(CHUNK),
                origin: Instant::now(),
                ms: 0,
                received: 0,
                from_peer: 0,
                room: true,
            }
        }

        /// Ticks for `secs`, receiving `total` bytes a second, `peer` of them from [`PEER`]
        /// (`None`: no peer may grow); `new_peer` on the first tick. The steps, with the
        /// milliseconds since the start they were taken at.
        fn run(
            &mut self,
            secs: f64,
            total: f64,
            peer: Option<f64>,
            measurable: bool,
            new_peer: bool,
        ) -> Vec<(u64, Step)> {
            let mut steps = Vec::new();
            for i in 0..(secs * 4.0).round() as usize {
                self.ms += 250;
                self.received += (total / 4.0) as u64;
                self.from_peer += (peer.unwrap_or(0.0) / 4.0) as u64;
                let sample = Sample {
                    received: self.received,
                    peer: peer.map(|_| (PEER, self.from_peer)),
                    may_grow: peer.is_some() && self.room,
                    measurable,
                    new_peer: new_peer && i == 0,
                };
                let now = self.origin + Duration::from_millis(self.ms);
                if let Some(step) = self.g.tick(now, sample) {
                    steps.push((self.ms, step));
                }
            }
            steps
        }
    }

    use Step::{Back, More};

    #[test]
    fn connections_that_raise_the_peer_and_the_download_are_kept_and_doubled_again() {
        let mut f = Feed::new();
        // A start, a window not counted, two counted: then the first try.
        assert_eq!(f.run(3.25, 2e6, Some(1e6), true, false), vec![(3250, More)]);
        // Twice as much from the peer, 1.5 times the download: kept, and twice as many tried
        // at once; no faster with those: back, tried again after 5 s, then after 10.
        assert_eq!(
            f.run(27.0, 3e6, Some(2e6), true, false),
            vec![
                (6250, More),
                (9250, Back),
                (14250, More),
                (17250, Back),
                (28250, More)
            ]
        );
    }

    #[test]
    fn a_peer_with_no_room_left_keeps_what_it_has_untried() {
        let mut f = Feed::new();
        assert_eq!(f.run(3.25, 2e6, Some(1e6), true, false), vec![(3250, More)]);
        // Kept, but the peer is at the most: nothing more is tried, and nothing goes back.
        f.room = false;
        assert_eq!(f.run(20.0, 3e6, Some(2e6), true, false), vec![]);
    }

    #[test]
    fn more_from_one_peer_that_only_takes_from_the_others_goes() {
        let mut f = Feed::new();
        assert_eq!(f.run(3.25, 2e6, Some(1e6), true, false), vec![(3250, More)]);
        assert_eq!(
            f.run(4.0, 2.1e6, Some(2e6), true, false),
            vec![(6250, Back)]
        );
    }

    #[test]
    fn no_try_without_a_peer_to_grow_nor_in_the_endgame_and_a_try_there_ends_unjudged() {
        let mut f = Feed::new();
        assert_eq!(f.run(10.0, 1e6, None, true, false), vec![]);
        // Measured with the peer through two whole windows first.
        assert_eq!(
            f.run(3.25, 1e6, Some(1e6), true, false),
            vec![(13250, More)]
        );
        // The endgame begins mid-try: the try ends, its connections stay.
        assert_eq!(f.run(5.0, 1e6, Some(1e6), false, false), vec![]);
        assert!(f.g.trial.is_none());
        // After it (a resumed download's new chunks, say), measured afresh before a try.
        assert_eq!(f.run(4.0, 1e6, Some(1e6), true, false), vec![(21500, More)]);
    }

    #[test]
    fn a_new_peer_ends_a_try_unjudged_and_the_next_comes_without_a_pause() {
        let mut f = Feed::new();
        assert_eq!(f.run(3.25, 2e6, Some(1e6), true, false), vec![(3250, More)]);
        assert_eq!(f.run(0.5, 2e6, Some(1e6), true, false), vec![]);
        assert_eq!(
            f.run(4.0, 2e6, Some(1e6), true, true),
            vec![(4000, Back), (7000, More)]
        );
    }

    #[test]
    fn a_download_that_receives_nothing_tries_nothing() {
        let mut f = Feed::new();
        assert_eq!(f.run(30.0, 0.0, Some(0.0), true, false), vec![]);
    }

    #[test]
    fn a_slow_download_measures_over_longer_windows() {
        let mut f = Feed::new();
        // 2 chunks a second: windows of 4 s (eight chunks would take longer).
        assert_eq!(
            f.run(
                13.0,
                2.0 * CHUNK as f64,
                Some(2.0 * CHUNK as f64),
                true,
                false
            ),
            vec![(12250, More)]
        );
    }
}
