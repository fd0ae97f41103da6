//! Turns at sending: how this peer's upload is shared among the connections that have a chunk
//! ready to go.
//!
//! Without them every connection writes as soon as its chunk is read, the kernel takes it
//! into the socket's buffer, and the split of a slow upload among the peers follows the
//! connections' congestion windows (in the swarm lab a seeder's connections each held
//! 0.1-1.5 MB unsent, and one leecher got four times another's share; `bench/README.md`).
//! With them only a few chunks ([`SENDERS`] to [`MOST`], below) are being written at once,
//! and each accepted TCP socket keeps little unsent
//! ([`crate::net::accept::NOT_SENT_LOW_WATER`]), so the order of turns is the order the
//! bytes leave in. The next turn goes to the waiting connection
//! whose peer this peer has sent the fewest bytes so far: peers share the upload evenly, and
//! one that joins late (with nothing yet) is served first until it has caught up, which is
//! what lets the last leecher of a swarm finish near the others.
//!
//! A turn ends when its chunk is written or after [`OVERTIME`] times the smoothed time a
//! chunk takes: a peer that reads slowly, or not at all, keeps its own chunk but not the
//! turn, so it never holds the others up.
//!
//! How many chunks go out at once follows what fills the link: as few as do, since fewer
//! split the upload by need more finely and keep less queued in the kernel, but more where
//! each flow alone is slow: with packet loss (in the swarm lab with 1 % lost between peers 40
//! ms apart, three turns left the leechers' uploads 57-83 % used), or where TCP restarts idle
//! connections from a small window (cubic or reno, the default of users' systems, see
//! [`crate::net::accept::tcp_restarts_after_idle`]: a connection waiting for its next turn
//! longer than the retransmission timeout starts each chunk slowly again). The uploader
//! measures its own rate, the chunks written (each counted when its write ends, within its
//! turn or after) while some connection waited for a turn, and tries other numbers of turns
//! against it, each judged after its second window of a second, on the mean of the two (not
//! after the first alone, while windows are still opening):
//! - at its first judgment an upload that started with [`SENDERS_FAST`] goes to [`SENDERS`]
//!   if slower than [`SLOW_UPLOAD`], and keeps six otherwise; what it has then is the fewest
//!   it will try;
//! - then twice as many ([`MOST`] at most), kept if [`MORE_GAIN`] times as fast (a margin
//!   over the rise of a swarm's first seconds), and then twice as many again; if not faster,
//!   tried again after a pause that doubles from [`MORE_PAUSE`] to [`MORE_PAUSE_MAX`];
//! - half as many, down to the fewest, [`FEWER_EVERY`] after more were kept or fewer were
//!   slower, kept if at least [`FEWER_KEEP`] as fast.
//!
//! A try that cannot be judged within [`TRIAL_LONGEST`] (no connection waited long enough
//! to measure) ends: more turns were not needed, fewer were enough.
//!
//! It starts with [`SENDERS_FAST`] where TCP restarts idle connections (three took the lab's
//! seeder 40 ms from its leechers to 4.5-4.8 of its 12.5 MB/s at the start), else [`SENDERS`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::PeerId;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Chunks written at once. More than one keeps the link busy across a turn's handover (the
/// previous chunk's last bytes are still in the kernel then) and lets cores encrypt side by
/// side on loopback; with two, the swarm lab's seeder idled 9 % of the time (BBR paces each
/// of the few flows at its own estimate), with three 5-7 % (`bench/README.md`).
pub const SENDERS: usize = 3;
/// Chunks written at once at the start on a host whose TCP restarts idle connections (see the
/// module's documentation): in the swarm lab with cubic, a 100 Mbit/s seeder of 32 leechers
/// was used 94-95 % with six instead of 59-87 %, and the run took 1.14-1.15 T* instead of
/// 1.15-1.21 (median 1.20; `bench/README.md`).
pub const SENDERS_FAST: usize = 6;
/// The most chunks written at once.
pub const MOST: usize = 16;
/// Twice the turns are kept if the rate with them is at least this many times the rate
/// before.
pub const MORE_GAIN: f64 = 1.25;
/// Half the turns are kept if the rate with them is at least this share of the rate before.
pub const FEWER_KEEP: f64 = 0.95;
/// The pause before twice the turns are tried again after they were not faster, doubling
/// each time up to [`MORE_PAUSE_MAX`].
pub const MORE_PAUSE: Duration = Duration::from_secs(10);
/// The longest pause before twice the turns are tried again.
pub const MORE_PAUSE_MAX: Duration = Duration::from_secs(80);
/// How long after the turns last went up half as many are tried, and again after that try
/// was slower.
pub const FEWER_EVERY: Duration = Duration::from_secs(30);
/// Bytes a second under which an upload that started with [`SENDERS_FAST`] goes to
/// [`SENDERS`] at its first judgment (a 20 Mbit/s leecher's upload, 2.5 MB/s, which three
/// fill where there is no loss); at or above it, it keeps six, and never tries fewer. Half as
/// many would be tried and found slower otherwise, and a fast upload on a host that restarts
/// idle connections loses most of its rate meanwhile: with a 40 ms round trip the lab's
/// seeder fell to 10-16 Mbit/s of its 100 for the two seconds of such a try.
pub const SLOW_UPLOAD: f64 = 3e6;
/// A try not judged within this long (no connection waited for a turn long enough to measure
/// the rate) ends: more turns were not needed, fewer were enough.
pub const TRIAL_LONGEST: Duration = Duration::from_secs(4);
/// The rate is measured over windows at least this long in which every turn was wanted.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A turn lasts at most this many times the smoothed time a chunk took to write.
pub const OVERTIME: u32 = 4;
/// Bounds of a turn's length, whatever the smoothed time says.
const TURN_MIN: Duration = Duration::from_millis(2);
const TURN_MAX: Duration = Duration::from_secs(1);
/// A turn's length before any chunk was timed.
const TURN_FIRST: Duration = Duration::from_millis(100);

/// The turns of one uploader (one per node), shared by all its connections. `default()` is
/// for a host whose TCP does not restart idle connections: [`SENDERS`] at the start.
#[derive(Debug, Default)]
pub struct Turns {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Turns held.
    held: usize,
    /// Connections waiting for a turn, in arrival order.
    waiting: Vec<Waiter>,
    /// Bytes granted to each connected peer (over all its connections) while connected.
    served: HashMap<PeerId, Served>,
    /// The smoothed time a chunk took to write.
    write_time: Option<Duration>,
    /// Since when some connection has been waiting for a turn without pause, and the bytes
    /// of the chunks written since then (or since the last rate sample), each counted when
    /// its write ended.
    backlog: Option<(Instant, u64)>,
    /// Bytes written per second while every turn was wanted, smoothed, since the number of
    /// turns last changed.
    rate: Option<f64>,
    /// Chunks written at once now.
    senders: usize,
    /// Other turns being tried: the turns before and the rate measured with them.
    trial: Option<Trial>,
    /// When twice the turns may be tried next (now if `None`), and the pause after the next
    /// try that is not faster.
    more_after: Option<Instant>,
    more_pause: Duration,
    /// When half the turns may be tried next (now if `None`).
    fewer_after: Option<Instant>,
    /// The fewest turns tried, set by the first judgment (see [`SLOW_UPLOAD`]); `None` until
    /// then.
    floor: Option<usize>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            held: 0,
            waiting: Vec::new(),
            served: HashMap::new(),
            write_time: None,
            backlog: None,
            rate: None,
            senders: SENDERS,
            trial: None,
            more_after: None,
            more_pause: MORE_PAUSE,
            fewer_after: None,
            floor: None,
        }
    }
}

/// A number of turns being tried against the rate measured before.
#[derive(Debug, Clone, Copy)]
struct Trial {
    from: usize,
    rate: f64,
    since: Instant,
}

#[derive(Debug)]
struct Waiter {
    peer: PeerId,
    bytes: u64,
    grant: oneshot::Sender<Turn>,
}

#[derive(Debug, Default)]
struct Served {
    bytes: u64,
    connections: usize,
}

impl Turns {
    /// Turns for a host whose TCP restarts idle connections or not (see [`SENDERS_FAST`]).
    pub fn new(restarts_after_idle: bool) -> Self {
        Self {
            state: Mutex::new(State {
                senders: if restarts_after_idle {
                    SENDERS_FAST
                } else {
                    SENDERS
                },
                ..State::default()
            }),
        }
    }

    /// Registers a connection from `peer` until the returned guard is dropped; the bytes
    /// granted to the peer are kept while it has a connection.
    pub fn connect(self: &Arc<Self>, peer: PeerId) -> Connected {
        self.state
            .lock()
            .served
            .entry(peer)
            .or_default()
            .connections += 1;
        Connected {
            turns: self.clone(),
            peer,
        }
    }

    /// Waits for a turn to send `bytes` to `peer`.
    pub async fn take(self: &Arc<Self>, peer: PeerId, bytes: u64) -> Turn {
        let rx = {
            let mut s = self.state.lock();
            if s.held < s.senders() && s.waiting.is_empty() {
                s.held += 1;
                s.add_served(&peer, bytes);
                return Turn::new(self, bytes);
            }
            if s.backlog.is_none() {
                s.backlog = Some((Instant::now(), 0));
            }
            let (grant, rx) = oneshot::channel();
            s.waiting.push(Waiter { peer, bytes, grant });
            rx
        };
        match rx.await {
            Ok(mut turn) => {
                turn.started = Instant::now();
                turn
            }
            // The sender is dropped only with the waiter, which `grant` never does without
            // sending; a turn is granted in any case rather than wait forever.
            Err(_) => {
                let mut s = self.state.lock();
                s.held += 1;
                s.add_served(&peer, bytes);
                drop(s);
                Turn::new(self, bytes)
            }
        }
    }

    /// How long a turn may last before it passes on.
    pub fn limit(&self) -> Duration {
        let s = self.state.lock();
        s.write_time
            .map_or(TURN_FIRST, |t| (t * OVERTIME).clamp(TURN_MIN, TURN_MAX))
    }

    /// A turn ended after `took`, having written `written` bytes within it (none when it
    /// passed on before its chunk was written, counted by [`Turns::wrote`] when the write
    /// ends): the next ones are granted.
    fn release(self: &Arc<Self>, took: Duration, written: u64) {
        {
            let mut s = self.state.lock();
            s.write_time = Some(match s.write_time {
                Some(t) => t.mul_f64(0.875) + took.mul_f64(0.125),
                None => took,
            });
            s.held = s.held.saturating_sub(1);
            s.count_backlog(written, Instant::now());
        }
        self.grant();
    }

    /// Grants free turns to the waiters whose peers were sent the least (the earliest among
    /// equals). Turns are handed over outside the lock: one that cannot be delivered (its
    /// connection stopped waiting) is taken back and granted again.
    fn grant(self: &Arc<Self>) {
        // Each round removes at least one waiter, so this ends.
        loop {
            let granted: Vec<Waiter> = {
                let mut s = self.state.lock();
                // Connections that stopped waiting are not waiting (nor part of a backlog).
                s.waiting.retain(|w| !w.grant.is_closed());
                let mut granted = Vec::new();
                while s.held < s.senders() {
                    let Some(next) =
                        (0..s.waiting.len()).min_by_key(|&i| (s.served_to(&s.waiting[i].peer), i))
                    else {
                        break;
                    };
                    let w = s.waiting.remove(next);
                    s.held += 1;
                    s.add_served(&w.peer, w.bytes);
                    granted.push(w);
                }
                if s.waiting.is_empty() {
                    s.backlog = None;
                }
                granted
            };
            if granted.is_empty() {
                return;
            }
            let mut undelivered = false;
            for w in granted {
                if let Err(mut turn) = w.grant.send(Turn::new(self, w.bytes)) {
                    turn.turns = None;
                    let mut s = self.state.lock();
                    s.held -= 1;
                    s.sub_served(&w.peer, w.bytes);
                    undelivered = true;
                }
            }
            if !undelivered {
                return;
            }
        }
    }

    /// A chunk of `bytes` whose write outlasted its turn is written; the turns may have grown
    /// with it, and are granted.
    fn wrote(self: &Arc<Self>, bytes: u64) {
        self.state.lock().count_backlog(bytes, Instant::now());
        self.grant();
    }

    /// Bytes granted to `peer` so far (for tests and reports).
    pub fn served(&self, peer: &PeerId) -> u64 {
        self.state.lock().served_to(peer)
    }
}

impl State {
    /// Chunks written at once now (see the module's documentation).
    fn senders(&self) -> usize {
        self.senders
    }

    /// Counts `bytes` of a chunk whose write ended at `now` while a backlog lasts, and
    /// samples the rate once it has lasted [`RATE_WINDOW`].
    fn count_backlog(&mut self, bytes: u64, now: Instant) {
        self.end_stale_trial(now);
        let Some((since, granted)) = self.backlog.as_mut() else {
            return;
        };
        *granted += bytes;
        let elapsed = now.saturating_duration_since(*since);
        if elapsed >= RATE_WINDOW {
            let sample = *granted as f64 / elapsed.as_secs_f64();
            let first = self.rate.is_none();
            let rate = self.rate.map_or(sample, |r| (r + sample) / 2.0);
            self.backlog = Some((now, 0));
            self.rate = Some(rate);
            if !first {
                self.judge(rate, now);
            }
        }
    }

    /// Ends a try that could not be judged within [`TRIAL_LONGEST`]: no connection waited for
    /// a turn long enough, so more turns were not needed (back to those before) and fewer
    /// were enough (kept).
    fn end_stale_trial(&mut self, now: Instant) {
        let Some(t) = self.trial else { return };
        if now < t.since + TRIAL_LONGEST {
            return;
        }
        self.trial = None;
        if self.senders > t.from {
            self.more_after = Some(now + self.more_pause);
            self.more_pause = (self.more_pause * 2).min(MORE_PAUSE_MAX);
            self.switch(t.from, now, "more were not needed");
        }
    }

    /// Writes `next` chunks at once from `now` on, their rate measured anew: what the turns
    /// before wrote is not theirs.
    fn switch(&mut self, next: usize, now: Instant, why: &'static str) {
        tracing::debug!(
            bytes_per_sec = self.rate.map(|r| r as u64),
            from = self.senders,
            turns = next,
            why,
            "upload turns changed"
        );
        self.senders = next;
        self.rate = None;
        if self.backlog.is_some() {
            self.backlog = Some((now, 0));
        }
    }

    /// Weighs `rate`, measured with the turns of the moment over two windows at least, and
    /// changes them or tries others (see the module's documentation).
    fn judge(&mut self, rate: f64, now: Instant) {
        let senders = self.senders;
        let Some(floor) = self.floor else {
            // The first judgment: a slow upload that started with more goes to the fewest.
            let next = if senders > SENDERS && rate < SLOW_UPLOAD {
                SENDERS
            } else {
                senders
            };
            self.floor = Some(next);
            if next != senders {
                self.switch(next, now, "slow at the first judgment");
            }
            return;
        };
        let next = match self.trial.take() {
            // More turns: kept if faster, and more tried at once; else back, tried later.
            // Nothing written is never faster than nothing.
            Some(t) if senders > t.from => {
                if rate > 0.0 && rate >= t.rate * MORE_GAIN {
                    self.more_pause = MORE_PAUSE;
                    self.fewer_after = Some(now + FEWER_EVERY);
                    None
                } else {
                    self.more_after = Some(now + self.more_pause);
                    self.more_pause = (self.more_pause * 2).min(MORE_PAUSE_MAX);
                    Some(t.from)
                }
            }
            // Fewer turns: kept unless slower, and fewer tried at once; else back.
            Some(t) => {
                if rate >= t.rate * FEWER_KEEP {
                    None
                } else {
                    self.fewer_after = Some(now + FEWER_EVERY);
                    Some(t.from)
                }
            }
            None => {
                let due = |after: Option<Instant>| after.is_none_or(|t| now >= t);
                let next = if senders > floor && due(self.fewer_after) {
                    (senders / 2).max(floor)
                } else if senders < MOST && due(self.more_after) {
                    (senders * 2).min(MOST)
                } else {
                    return;
                };
                self.trial = Some(Trial {
                    from: senders,
                    rate,
                    since: now,
                });
                Some(next)
            }
        };
        if let Some(next) = next {
            let why = if self.trial.is_some() {
                "trying"
            } else {
                "back"
            };
            self.switch(next, now, why);
        }
    }

    fn served_to(&self, peer: &PeerId) -> u64 {
        self.served.get(peer).map_or(0, |s| s.bytes)
    }

    fn add_served(&mut self, peer: &PeerId, bytes: u64) {
        if let Some(s) = self.served.get_mut(peer) {
            s.bytes += bytes;
        }
    }

    fn sub_served(&mut self, peer: &PeerId, bytes: u64) {
        if let Some(s) = self.served.get_mut(peer) {
            s.bytes = s.bytes.saturating_sub(bytes);
        }
    }
}

/// A connection registered with [`Turns::connect`].
#[derive(Debug)]
pub struct Connected {
    turns: Arc<Turns>,
    peer: PeerId,
}

impl Connected {
    /// Runs `send` (writing a chunk of `bytes`) in this connection's turn: waits for the
    /// turn, then holds it until `send` is done or has taken [`Turns::limit`]; a slow reader
    /// keeps its chunk, not the turn.
    pub async fn in_turn<F: Future>(&self, bytes: u64, send: F) -> F::Output {
        let turn = self.turns.take(self.peer, bytes).await;
        self.hold(turn, send).await
    }

    /// As [`Connected::in_turn`], unless `withdrawn` resolves while waiting for the turn: then
    /// `send` is not run and the turn, if it comes, passes on. Once `send` runs, it finishes.
    pub async fn in_turn_unless<F: Future>(
        &self,
        bytes: u64,
        send: F,
        withdrawn: impl Future<Output = ()>,
    ) -> Option<F::Output> {
        let turn = tokio::select! {
            biased;
            () = withdrawn => return None,
            turn = self.turns.take(self.peer, bytes) => turn,
        };
        Some(self.hold(turn, send).await)
    }

    /// Runs `send` holding `turn` until it is done or has taken [`Turns::limit`].
    async fn hold<F: Future>(&self, mut turn: Turn, send: F) -> F::Output {
        let limit = self.turns.limit();
        tokio::pin!(send);
        tokio::select! {
            sent = &mut send => {
                turn.written = true;
                drop(turn);
                sent
            }
            () = tokio::time::sleep(limit) => {
                let bytes = turn.bytes;
                drop(turn);
                let sent = send.await;
                // A write that outlasted its turn carried its bytes all the same (a slow flow
                // on a lossy link): they count when it ends.
                self.turns.wrote(bytes);
                sent
            }
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut s = self.turns.state.lock();
        if let Some(served) = s.served.get_mut(&self.peer) {
            served.connections -= 1;
            if served.connections == 0 {
                s.served.remove(&self.peer);
            }
        }
    }
}

/// A turn at sending; dropping it passes the turn on.
#[derive(Debug)]
pub struct Turn {
    /// `None` once passed on (or never held).
    turns: Option<Arc<Turns>>,
    started: Instant,
    /// The chunk's bytes, and whether its write finished within the turn (counted in the
    /// upload's rate when the turn ends; a write that outlasts it is counted when it ends,
    /// [`Turns::wrote`]).
    bytes: u64,
    written: bool,
}

impl Turn {
    fn new(turns: &Arc<Turns>, bytes: u64) -> Self {
        Self {
            turns: Some(turns.clone()),
            started: Instant::now(),
            bytes,
            written: false,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(turns) = self.turns.take() {
            let written = if self.written { self.bytes } else { 0 };
            turns.release(self.started.elapsed(), written);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        PeerId([n; 32])
    }

    /// Spawns a connection of `p` waiting for a turn to send `bytes`; it reports its peer
    /// when granted and keeps the turn until told to pass it on.
    fn waiter(
        turns: &Arc<Turns>,
        p: PeerId,
        bytes: u64,
        order: &tokio::sync::mpsc::UnboundedSender<PeerId>,
    ) -> oneshot::Sender<()> {
        let (done, until) = oneshot::channel::<()>();
        let (turns, order) = (turns.clone(), order.clone());
        tokio::spawn(async move {
            let turn = turns.take(p, bytes).await;
            let _ = order.send(p);
            let _ = until.await;
            drop(turn);
        });
        done
    }

    /// `n` peers that each write a chunk of `chunk` bytes in their turn, taking `write`
    /// each, `rounds` times, pausing `pause` between chunks. Returns the most turns held at
    /// once.
    async fn writers(
        turns: &Arc<Turns>,
        n: u8,
        chunk: u64,
        rounds: usize,
        write: Duration,
        pause: Duration,
    ) -> usize {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let peers: Vec<_> = (1..=n)
            .map(|p| {
                let (turns, now, most) = (turns.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    let conn = turns.connect(peer(p));
                    for _ in 0..rounds {
                        let writing = async {
                            most.fetch_max(
                                now.fetch_add(1, Ordering::SeqCst) + 1,
                                Ordering::SeqCst,
                            );
                            tokio::time::sleep(write).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                        };
                        conn.in_turn(chunk, writing).await;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        for p in peers {
            p.await.unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    /// `n` peers that write chunks of `chunk` bytes in their turns for `secs` seconds, on a
    /// link of `link` bytes a second shared evenly by the chunks being written, none of which
    /// goes faster than `flow` (as loss or small windows bound a TCP flow). Returns the most
    /// turns held at once and the turns at the end.
    async fn on_link(
        turns: &Arc<Turns>,
        n: u8,
        chunk: u64,
        link: f64,
        flow: f64,
        secs: u64,
    ) -> (usize, usize) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let end = Instant::now() + Duration::from_secs(secs);
        let peers: Vec<_> = (1..=n)
            .map(|p| {
                let (turns, now, most) = (turns.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    let conn = turns.connect(peer(p));
                    while Instant::now() < end {
                        let writing = async {
                            let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(at_once, Ordering::SeqCst);
                            let rate = (link / at_once as f64).min(flow);
                            tokio::time::sleep(Duration::from_secs_f64(chunk as f64 / rate)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                        };
                        conn.in_turn(chunk, writing).await;
                    }
                })
            })
            .collect();
        for p in peers {
            p.await.unwrap();
        }
        // The turns settled on: those a try under way would go back to.
        let settled = {
            let s = turns.state.lock();
            s.trial.map_or(s.senders(), |t| t.from)
        };
        (most.load(Ordering::SeqCst), settled)
    }

    #[tokio::test(start_paused = true)]
    async fn the_turns_follow_what_fills_the_link() {
        let senders = |turns: &Turns| turns.state.lock().senders();
        // Where TCP restarts idle connections an upload starts with six; elsewhere (BBR) three.
        assert_eq!(senders(&Turns::new(true)), SENDERS_FAST);
        assert_eq!(senders(&Turns::new(false)), SENDERS);
        let chunk = 16 << 10;
        // A 2.5 MB/s link that any flow fills (a leecher's, without loss): six are no faster
        // than three, so three, from either start.
        for restarts in [false, true] {
            let turns = Arc::new(Turns::new(restarts));
            let (_, end) = on_link(&turns, 24, chunk, 2.5e6, f64::INFINITY, 60).await;
            assert_eq!(end, SENDERS, "restarts {restarts}");
        }
        // Flows of at most a fifth of the link (a seeder whose connections restart slowly):
        // fast at the first judgment, so six are the fewest; twelve are no faster, so six.
        let turns = Arc::new(Turns::new(true));
        let (most, end) = on_link(&turns, 24, chunk, 12.5e6, 12.5e6 / 5.0, 60).await;
        assert_eq!(end, SENDERS_FAST);
        assert!(most >= 2 * SENDERS_FAST, "twelve were tried: {most}");
        // Flows of a tenth of the link (packet loss): up from three to twelve, which fill it,
        // and not sixteen, which are no faster.
        let turns = Arc::new(Turns::new(false));
        let (_, end) = on_link(&turns, 24, chunk, 2.5e6, 2.5e6 / 10.0, 60).await;
        assert_eq!(end, 12);
        // Flows of a fortieth: up to the most, and never more.
        let turns = Arc::new(Turns::new(false));
        let (most, end) = on_link(&turns, 24, chunk, 2.5e6, 2.5e6 / 40.0, 60).await;
        assert_eq!((most, end), (MOST, MOST));
    }

    #[test]
    fn the_turns_change_on_the_second_window_measured_with_them() {
        // A window of a second in which `rate` bytes were written, from the backlog's start.
        fn window(s: &mut State, rate: u64) -> (usize, Option<f64>) {
            let (since, _) = s.backlog.expect("a backlog");
            s.count_backlog(rate, since + RATE_WINDOW);
            (s.senders(), s.rate)
        }
        let mut s = State {
            backlog: Some((Instant::now(), 0)),
            ..State::default()
        };
        // Three, 2 MB/s: the first window is not judged, the second keeps three as the
        // fewest, and after the third six are tried, measured anew.
        assert_eq!(window(&mut s, 2_000_000), (SENDERS, Some(2e6)));
        assert_eq!(window(&mut s, 2_000_000), (SENDERS, Some(2e6)));
        assert_eq!(window(&mut s, 2_000_000), (2 * SENDERS, None));
        // 2.1 MB/s with six is not 25 % faster: back to three, and six are not tried again
        // for ten seconds.
        assert_eq!(window(&mut s, 2_100_000), (2 * SENDERS, Some(2.1e6)));
        assert_eq!(window(&mut s, 2_100_000), (SENDERS, None));
        for _ in 0..9 {
            assert_eq!(window(&mut s, 2_000_000).0, SENDERS);
        }
        // Then six again, and 3 MB/s with them is faster: kept, and twelve tried on the next
        // window.
        assert_eq!(window(&mut s, 2_000_000), (2 * SENDERS, None));
        assert_eq!(window(&mut s, 3_000_000).0, 2 * SENDERS);
        assert_eq!(window(&mut s, 3_000_000), (2 * SENDERS, Some(3e6)));
        assert_eq!(window(&mut s, 3_000_000), (4 * SENDERS, None));
        // Twelve no faster: back to six; twelve are tried again in ten seconds, and after
        // twenty if they are no faster then.
        window(&mut s, 3_000_000);
        assert_eq!(window(&mut s, 3_000_000), (2 * SENDERS, None));
        assert_eq!(s.more_pause, MORE_PAUSE * 2);
        // Thirty seconds after six were kept, three are tried, and kept when no slower.
        let mut windows = 0;
        while s.senders() != SENDERS {
            window(&mut s, 3_000_000);
            windows += 1;
            assert!(windows < 40, "three never tried");
        }
        window(&mut s, 2_900_000);
        assert_eq!(window(&mut s, 2_900_000), (SENDERS, Some(2.9e6)));

        // Starting with six where TCP restarts idle connections: under 3 MB/s at the first
        // judgment, three, the fewest from then on.
        let mut s = State {
            senders: SENDERS_FAST,
            backlog: Some((Instant::now(), 0)),
            ..State::default()
        };
        window(&mut s, 2_000_000);
        assert_eq!(window(&mut s, 2_000_000), (SENDERS, None));
        // Six are tried next; then no connection waits long enough to judge them: after
        // four seconds they were not needed, and three come back.
        window(&mut s, 2_000_000);
        assert_eq!(window(&mut s, 2_000_000), (SENDERS_FAST, None));
        let tried = s.trial.expect("a try").since;
        s.backlog = None;
        s.count_backlog(0, tried + TRIAL_LONGEST - Duration::from_millis(1));
        assert_eq!(s.senders(), SENDERS_FAST);
        s.count_backlog(0, tried + TRIAL_LONGEST);
        assert_eq!((s.senders(), s.trial.is_none()), (SENDERS, true));
        assert_eq!(s.more_after, Some(tried + TRIAL_LONGEST + MORE_PAUSE));
        // At 8 MB/s six stay, and are the fewest: twelve are tried next, three never.
        let mut s = State {
            senders: SENDERS_FAST,
            backlog: Some((Instant::now(), 0)),
            ..State::default()
        };
        window(&mut s, 8_000_000);
        assert_eq!(window(&mut s, 8_000_000), (SENDERS_FAST, Some(8e6)));
        assert_eq!(window(&mut s, 8_000_000), (2 * SENDERS_FAST, None));
        window(&mut s, 8_100_000);
        assert_eq!(window(&mut s, 8_100_000), (SENDERS_FAST, None));
        for _ in 0..60 {
            assert!(window(&mut s, 8_000_000).0 >= SENDERS_FAST);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_counts_only_while_every_turn_is_wanted() {
        let measured = |turns: &Turns| {
            let s = turns.state.lock();
            (s.rate, s.backlog, s.senders())
        };
        let write = Duration::from_millis(50);
        // Small chunks but never more than five wanted at once: a turn is always free, so no
        // rate is measured and the upload keeps the six it started with.
        let turns = Arc::new(Turns::new(true));
        writers(&turns, 5, 4 << 10, 30, write, Duration::ZERO).await;
        assert_eq!(measured(&turns), (None, None, SENDERS_FAST));
        // Eight at once, then a pause: each backlog lasts one chunk's write, then no one
        // waits for 200 ms. A backlog ends when the queue empties; none lasts a second.
        let turns = Arc::new(Turns::new(true));
        writers(&turns, 8, 4 << 10, 30, write, Duration::from_millis(200)).await;
        assert_eq!(measured(&turns), (None, None, SENDERS_FAST));
        // A write that outlasts its turn counts when it ends: twelve peers with a chunk of 1000
        // bytes each, whose writes take 150 ms where a first turn lasts 100 ms. At 100 ms the
        // first three pass their turns on, counting nothing; at 150 ms their writes end, while
        // six still wait, and count then.
        let turns = Arc::new(Turns::default());
        assert_eq!(turns.limit(), TURN_FIRST);
        let writes: Vec<_> = (1..=12)
            .map(|p| {
                let turns = turns.clone();
                tokio::spawn(async move {
                    let conn = turns.connect(peer(p));
                    let write = async { tokio::time::sleep(Duration::from_millis(150)).await };
                    conn.in_turn(1000, write).await;
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(turns.state.lock().backlog.map(|(_, b)| b), Some(0));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(turns.state.lock().backlog.map(|(_, b)| b), Some(3000));
        for w in writes {
            w.await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_least_served_peer_goes_first_and_dropped_waiters_lose_nothing() {
        let turns = Arc::new(Turns::default());
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let _conns = [a, b, c].map(|p| turns.connect(p));
        // `a` was sent a lot already; every turn is taken.
        let mut held = Vec::new();
        for _ in 0..SENDERS {
            held.push(turns.take(a, 1 << 20).await);
        }
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let pass_a = waiter(&turns, a, 1000, &tx);
        tokio::task::yield_now().await;
        let pass_b = waiter(&turns, b, 1000, &tx);
        tokio::task::yield_now().await;
        // A connection that closes while waiting: the turn it would have had goes on.
        let gone = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.take(c, 10).await })
        };
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        let pass_c = waiter(&turns, c, 5000, &tx);
        tokio::task::yield_now().await;
        assert!(order.try_recv().is_err(), "no turn free yet");

        // Two turns free: b and c (sent nothing yet), not a, which came first.
        drop(held.pop());
        drop(held.pop());
        let first = [order.recv().await, order.recv().await];
        assert!(
            first.contains(&Some(b)) && first.contains(&Some(c)),
            "{first:?}"
        );
        assert_eq!(turns.served(&b), 1000);
        assert_eq!(turns.served(&c), 5000);
        let _ = pass_b.send(());
        assert_eq!(order.recv().await, Some(a));
        let _ = (pass_a.send(()), pass_c.send(()));
        drop(held);
        // Every turn came back: all can be taken at once again.
        let mut again = Vec::new();
        for _ in 0..SENDERS {
            again.push(turns.take(b, 1).await);
        }
        assert_eq!(turns.state.lock().held, SENDERS);
        assert!(turns.state.lock().waiting.is_empty());
        drop(again);
        assert_eq!(turns.state.lock().held, 0);
    }

    #[tokio::test]
    async fn a_peer_is_forgotten_with_its_last_connection_and_turns_have_a_limit() {
        let turns = Arc::new(Turns::default());
        assert_eq!(turns.limit(), TURN_FIRST);
        let (one, two) = (turns.connect(peer(1)), turns.connect(peer(1)));
        drop(turns.take(peer(1), 300).await);
        drop(one);
        assert_eq!(turns.served(&peer(1)), 300);
        drop(two);
        assert_eq!(turns.served(&peer(1)), 0);
        assert!(turns.state.lock().served.is_empty());
        // Turns that ended at once: the limit is the least allowed.
        for _ in 0..64 {
            drop(turns.take(peer(2), 1).await);
        }
        assert_eq!(turns.limit(), TURN_MIN);
    }

    #[tokio::test]
    async fn a_chunk_withdrawn_while_waiting_is_not_sent_and_its_turn_goes_on() {
        let turns = Arc::new(Turns::default());
        let (a, b) = (peer(1), peer(2));
        let (conn_a, _conn_b) = (turns.connect(a), turns.connect(b));
        let mut held = Vec::new();
        for _ in 0..SENDERS {
            held.push(turns.take(b, 1 << 20).await);
        }
        // `a` (sent nothing: first in line) waits for a turn, then its peer withdraws the
        // chunk.
        let (withdraw, withdrawn) = oneshot::channel::<()>();
        let sent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiting = {
            let sent = sent.clone();
            tokio::spawn(async move {
                let send = async { sent.store(true, std::sync::atomic::Ordering::SeqCst) };
                let withdrawn = async {
                    let _ = withdrawn.await;
                };
                conn_a.in_turn_unless(1000, send, withdrawn).await
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(turns.state.lock().waiting.len(), 1);
        let _ = withdraw.send(());
        assert!(
            waiting.await.is_ok_and(|r| r.is_none()),
            "withdrawn, not sent"
        );
        assert!(!sent.load(std::sync::atomic::Ordering::SeqCst));
        // The turn it would have had goes to the next in line, and nothing was counted as
        // sent to `a`.
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        let _pass_b = waiter(&turns, b, 1000, &tx);
        tokio::task::yield_now().await;
        drop(held.pop());
        assert_eq!(order.recv().await, Some(b));
        assert_eq!(turns.served(&a), 0);
        // Withdrawn before it waited: not sent even with turns free.
        drop(held);
        let conn = turns.connect(a);
        let again = conn
            .in_turn_unless(1000, async { unreachable!("withdrawn") }, async {})
            .await;
        assert!(again.is_none());
    }
}
