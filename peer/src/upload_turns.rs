//! Turns at sending: how this peer's upload is shared among the connections that have a chunk
//! ready to go.
//!
//! Without them every connection writes as soon as its chunk is read, the kernel takes it
//! into the socket's buffer, and the split of a slow upload among the peers follows the
//! connections' congestion windows (in the swarm lab a seeder's connections each held
//! 0.1-1.5 MB unsent, and one leecher got four times another's share; `bench/README.md`).
//! With them at most [`SENDERS`] chunks ([`SENDERS_FAST`] at a fast upload, below) are
//! being written at once, and each accepted TCP socket keeps little unsent
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
//! A fast upload with many peers asking gets [`SENDERS_FAST`] turns where the host's TCP
//! restarts idle connections (cubic or reno, the default of users' systems, see
//! [`crate::net::accept::tcp_restarts_after_idle`]): each connection then waits for its
//! next turn longer than TCP's retransmission timeout, and starts each chunk from a small
//! window again, so three flows left a 100 Mbit/s seeder of 32 leechers 59-87 % used in the
//! swarm lab, and 36-38 % of 16 leechers 40 ms away. Such an upload starts with six, and
//! measures its own rate: the chunks whose writes finished within their turns, while some
//! connection waited for a turn. Measured slow with six ([`SLOW_UPLOAD`]), it keeps three
//! (a leecher's 20 Mbit/s, which lets the least served peers, those that joined late, hold
//! every turn between them); measured fast with three ([`FAST_UPLOAD`]), six again.

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
/// Chunks written at once by a fast upload on a host whose TCP restarts idle connections
/// (see the module's documentation): in the swarm lab with cubic, a 100 Mbit/s seeder of 32
/// leechers was used 94-95 % with six instead of 59-87 %, and the run took 1.14-1.15 T* instead
/// of 1.15-1.21 (median 1.20; `bench/README.md`).
pub const SENDERS_FAST: usize = 6;
/// Bytes a second, measured while every turn is wanted, from which an upload is fast: between
/// the swarm lab's 20 Mbit/s leechers (2.5 MB/s) and its 100 Mbit/s seeder (12.5 MB/s). It is
/// judged on the rate reached with the turns of the moment. Idle restarts lower the rate
/// reached with three: with a 40 ms round trip the lab's seeder sent 4.5-4.8 MB/s with three
/// and was never judged fast when it started with three (1.35-1.40 T*; `bench/README.md`).
/// This is the rate at which an upload with three goes to six; see [`SLOW_UPLOAD`] for the way
/// back.
pub const FAST_UPLOAD: f64 = 6e6;
/// Bytes a second, measured with six turns, under which an upload goes to three: below
/// [`FAST_UPLOAD`], so that a rate between the two keeps the turns it was measured with. With
/// both at 6 MB/s, the lab's seeder 40 ms from its leechers was measured under it with six
/// early in one of two runs, went to three, and stayed there (1.35 T*). Three turns suffice
/// below it (an upload limit under 3 MB/s too): each connection's next chunk needs a small
/// window. The first window after the start or a change is not judged: connections are
/// still opening their windows then, and turns that pass on before their chunk is written
/// count nothing. An upload that goes to three stays there until measured fast with three,
/// which a fast link with a long round trip may never be; more than [`SENDERS_FAST`]
/// connections must be waiting for the rate to be measured at all, and with fewer, six
/// turns stay however slow the upload is.
pub const SLOW_UPLOAD: f64 = 3e6;
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
/// for a host whose TCP does not restart idle connections: never more than [`SENDERS`].
#[derive(Debug, Default)]
pub struct Turns {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Turns held.
    held: usize,
    /// Connections waiting for a turn, in arrival order.
    waiting: Vec<Waiter>,
    /// Bytes granted to each connected peer (over all its connections) while connected.
    served: HashMap<PeerId, Served>,
    /// The smoothed time a chunk took to write.
    write_time: Option<Duration>,
    /// Whether this host's TCP restarts idle connections (see [`SENDERS_FAST`]).
    restarts_after_idle: bool,
    /// Since when some connection has been waiting for a turn without pause, and the bytes
    /// of the chunks written within their turns since then (or since the last rate sample).
    backlog: Option<(Instant, u64)>,
    /// Bytes written per second while every turn was wanted, smoothed, since the number of
    /// turns last changed.
    rate: Option<f64>,
    /// Whether a fast upload's turns are in use: where TCP restarts idle connections from the
    /// start, until the rate says otherwise; elsewhere never.
    fast: bool,
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
                restarts_after_idle,
                fast: restarts_after_idle,
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
    /// passed on before its chunk was written): the next ones are granted.
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

    /// Bytes granted to `peer` so far (for tests and reports).
    pub fn served(&self, peer: &PeerId) -> u64 {
        self.state.lock().served_to(peer)
    }
}

impl State {
    /// Chunks written at once now (see [`SENDERS_FAST`]).
    fn senders(&self) -> usize {
        if self.fast { SENDERS_FAST } else { SENDERS }
    }

    /// Counts `bytes` written within a turn that ended at `now` while a backlog lasts, and
    /// samples the rate once it has lasted [`RATE_WINDOW`].
    fn count_backlog(&mut self, bytes: u64, now: Instant) {
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
            if first {
                return;
            }
            // Judged with the turns it was measured with; measured anew with new ones.
            let change = if self.fast {
                rate < SLOW_UPLOAD
            } else {
                rate >= FAST_UPLOAD
            };
            if self.restarts_after_idle && change {
                self.fast = !self.fast;
                self.rate = None;
            }
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
                drop(turn);
                send.await
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
    /// The chunk's bytes, and whether its write finished within the turn (the upload's rate
    /// counts only those).
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

    #[tokio::test(start_paused = true)]
    async fn a_fast_upload_gets_more_turns_only_where_tcp_restarts_idle_connections() {
        let senders = |turns: &Turns| turns.state.lock().senders();
        // Where TCP restarts idle connections an upload starts with six; elsewhere (BBR) three.
        assert_eq!(senders(&Turns::new(true)), SENDERS_FAST);
        assert_eq!(senders(&Turns::new(false)), SENDERS);
        // Eight peers keep every turn wanted, each chunk's write taking 50 ms (under any
        // turn's limit), until `rounds` chunks each are written: the most turns held at once,
        // the turns at the end, and the rate then.
        let after = |restarts: bool, chunk: u64, rounds: usize| async move {
            let turns = Arc::new(Turns::new(restarts));
            let write = Duration::from_millis(50);
            let most = writers(&turns, 8, chunk, rounds, write, Duration::ZERO).await;
            let s = turns.state.lock();
            (most, s.senders(), s.rate)
        };
        // 6 chunks of 1 MiB every 50 ms (126 MB/s) is fast, and six stay.
        let (most, now, _) = after(true, 1 << 20, 20).await;
        assert_eq!((most, now), (SENDERS_FAST, SENDERS_FAST));
        // The same where TCP does not restart idle connections (BBR): three.
        let (most, now, _) = after(false, 1 << 20, 20).await;
        assert_eq!((most, now), (SENDERS, SENDERS));
        // Chunks of 64 KiB: 7.9 MB/s with six at once, 3.9 with three (as idle restarts slow
        // a link with a long round trip). Judged with the six it is measured with: six stay.
        let (most, now, _) = after(true, 64 << 10, 40).await;
        assert_eq!((most, now), (SENDERS_FAST, SENDERS_FAST));
        // Chunks of 32 KiB: 3.9 MB/s with six, neither slow nor fast: six stay.
        let (most, now, _) = after(true, 32 << 10, 80).await;
        assert_eq!((most, now), (SENDERS_FAST, SENDERS_FAST));
        // Chunks of 16 KiB, a leecher's upload: 2 MB/s with six is slow, so three, and 1 MB/s
        // with three keeps them.
        let (most, now, rate) = after(true, 16 << 10, 80).await;
        assert_eq!((most, now), (SENDERS_FAST, SENDERS));
        assert!(rate.is_some_and(|r| r < FAST_UPLOAD));
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
            restarts_after_idle: true,
            fast: true,
            backlog: Some((Instant::now(), 0)),
            ..State::default()
        };
        // Six, 2 MB/s: the first window is not judged, the second is slow: three, measured
        // anew.
        assert_eq!(window(&mut s, 2_000_000), (SENDERS_FAST, Some(2e6)));
        assert_eq!(window(&mut s, 2_000_000), (SENDERS, None));
        // Three, 4 MB/s: neither slow nor fast, so three stay.
        assert_eq!(window(&mut s, 4_000_000), (SENDERS, Some(4e6)));
        assert_eq!(window(&mut s, 4_000_000), (SENDERS, Some(4e6)));
        // Three, then 8 MB/s: the smoothed rate reaches 6 MB/s, fast: six, measured anew.
        assert_eq!(window(&mut s, 8_000_000), (SENDERS_FAST, None));
        // Where TCP does not restart idle connections, three whatever the rate.
        let mut s = State {
            backlog: Some((Instant::now(), 0)),
            ..State::default()
        };
        for _ in 0..3 {
            assert_eq!(window(&mut s, 20_000_000).0, SENDERS);
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
        // A turn that passes on before its chunk is written counts nothing: 32 peers whose
        // writes never finish within their turns (10 s each; a turn lasts at most 1 s) keep
        // some waiting for seconds, and the upload, measured at nothing twice, is slow.
        let turns = Arc::new(Turns::new(true));
        writers(
            &turns,
            32,
            8 << 20,
            4,
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .await;
        assert!(turns.state.lock().rate.is_none_or(|r| r == 0.0));
        assert_eq!(turns.state.lock().senders(), SENDERS);
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
