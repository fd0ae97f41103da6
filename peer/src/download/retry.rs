//! Which source peers a download tries, and when it tries one again: a peer whose workers all
//! ended (it could not be reached, reset the connection, refused this peer, or had nothing more
//! to give then) is tried again when the file's peers are listed again (see
//! [`super::MoreSources`]), after a pause that doubles with each fruitless try, from
//! [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`]; a peer that sent bad data or another manifest is
//! never tried again. Pure bookkeeping: the caller says what happened and when.
//!
//! Bounded against a tracker (or DHT) that lists endless peer ids: at most [`MAX_TRACKED`]
//! peers are remembered (peers that ended longest ago make room), and at most [`MAX_LIVE`]
//! have workers at once (the others are started when listed again once there is room).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use p2p_proto::PeerId;

use crate::net::PeerAddr;

/// The pause before the first retry of a peer.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause between tries of a peer.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Peers one download remembers at most.
pub(super) const MAX_TRACKED: usize = 256;
/// Peers with workers at once, at most.
pub(super) const MAX_LIVE: usize = 64;

/// How a peer's workers (all of them) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It delivered chunks before it ended: worth trying again soon.
    Delivered,
    /// It delivered nothing (unreachable, reset, refused, not admitted, nothing to give).
    Fruitless,
    /// It sent bad chunks (banned) or offers another manifest: never again.
    Never,
}

/// What the download knows of one peer.
#[derive(Debug)]
struct Tried {
    /// Whether it has workers now.
    live: bool,
    /// Never to be tried again.
    never: bool,
    /// The pause after its next fruitless try.
    backoff: Duration,
    /// When it may be tried again.
    not_before: Instant,
    /// Where to reach it, when it was listed again while it had to wait: it is tried then.
    pending: Option<PeerAddr>,
}

impl Tried {
    /// Not tried yet: may be at `now`, unless `never`.
    fn new(never: bool, now: Instant) -> Self {
        Self {
            live: false,
            never,
            backoff: FIRST_BACKOFF,
            not_before: now,
            pending: None,
        }
    }
}

/// The download's source peers, tried and to be tried.
#[derive(Debug)]
pub(super) struct Retries {
    peers: HashMap<PeerId, Tried>,
    live: usize,
}

impl Retries {
    /// Nothing tried yet; `me` (this node) never is.
    pub(super) fn new(me: PeerId, now: Instant) -> Self {
        let mut peers = HashMap::new();
        peers.insert(me, Tried::new(true, now));
        Self { peers, live: 0 }
    }

    /// `peer` is listed as a source (at the start, or by a refresh) at `now`: whether to start
    /// its workers now. A peer waiting for its pause to end is tried when it ends.
    pub(super) fn listed(&mut self, peer: &PeerAddr, now: Instant) -> bool {
        if self.live >= MAX_LIVE {
            return false;
        }
        if !self.peers.contains_key(&peer.peer_id) && !self.make_room() {
            return false;
        }
        let tried = self
            .peers
            .entry(peer.peer_id)
            .or_insert_with(|| Tried::new(false, now));
        if tried.live || tried.never {
            return false;
        }
        if now < tried.not_before {
            tried.pending = Some(peer.clone());
            return false;
        }
        tried.pending = None;
        tried.live = true;
        self.live += 1;
        true
    }

    /// Frees an entry for a new peer when all [`MAX_TRACKED`] are taken: the peer that may be
    /// tried again soonest of those waiting for no retry (it ended longest ago, or did best).
    fn make_room(&mut self) -> bool {
        // `me` counts too, so that this never evicts it.
        if self.peers.len() < MAX_TRACKED + 1 {
            return true;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|(_, t)| !t.live && !t.never && t.pending.is_none())
            .min_by_key(|(_, t)| t.not_before)
            .map(|(id, _)| *id);
        oldest.is_some_and(|id| self.peers.remove(&id).is_some())
    }

    /// The last of `peer`'s workers ended at `now`, as `how` says.
    pub(super) fn ended(&mut self, peer: &PeerId, how: Ending, now: Instant) {
        let Some(tried) = self.peers.get_mut(peer) else {
            return;
        };
        if tried.live {
            tried.live = false;
            self.live -= 1;
        }
        let pause = match how {
            Ending::Never => {
                tried.never = true;
                tried.pending = None;
                return;
            }
            Ending::Delivered => FIRST_BACKOFF,
            Ending::Fruitless => tried.backoff,
        };
        tried.backoff = (pause * 2).min(MAX_BACKOFF);
        tried.not_before = now + pause;
    }

    /// The peers listed again while they waited whose pause is over by `now` (as many as there
    /// is room for): their workers are to start now.
    pub(super) fn due(&mut self, now: Instant) -> Vec<PeerAddr> {
        let mut due = Vec::new();
        for tried in self.peers.values_mut() {
            if self.live >= MAX_LIVE {
                break;
            }
            if tried.not_before > now {
                continue;
            }
            if let Some(peer) = tried.pending.take() {
                tried.live = true;
                self.live += 1;
                due.push(peer);
            }
        }
        due
    }

    /// When the next peer waiting to be tried again may be.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|t| t.pending.is_some())
            .map(|t| t.not_before)
            .min()
    }

    /// Peers with workers now.
    pub(super) fn live(&self) -> usize {
        self.live
    }

    /// Peers tried (or trying) so far and still remembered, this node aside.
    pub(super) fn known(&self) -> usize {
        self.peers.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn peer(port: u16) -> PeerAddr {
        PeerAddr::new(
            Identity::generate().unwrap().peer_id(),
            vec![format!("127.0.0.1:{port}").parse().unwrap()],
        )
    }

    fn me() -> PeerId {
        Identity::generate().unwrap().peer_id()
    }

    #[test]
    fn a_peer_is_tried_again_when_listed_after_a_doubling_pause() {
        let t0 = Instant::now();
        let mut r = Retries::new(me(), t0);
        let p = peer(1);
        assert!(r.listed(&p, t0), "new: tried at once");
        assert!(!r.listed(&p, t0), "already has workers");
        assert_eq!(r.live(), 1);
        // Unreachable: 1 s, then 2, 4, … up to 30 s between tries.
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..7 {
            r.ended(&p.peer_id, Ending::Fruitless, now);
            assert_eq!(r.live(), 0);
            assert!(!r.listed(&p, now), "listed again during the pause: waits");
            let due = r.next_due().unwrap();
            assert!(r.due(due - Duration::from_millis(1)).is_empty());
            let started = r.due(due);
            assert_eq!(started.len(), 1);
            assert_eq!(started[0].peer_id, p.peer_id);
            pauses.push((due - now).as_secs());
            now = due;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        // A try that delivered chunks starts over at the shortest pause.
        r.ended(&p.peer_id, Ending::Delivered, now);
        assert!(r.listed(&p, now + FIRST_BACKOFF));
        r.ended(&p.peer_id, Ending::Fruitless, now + FIRST_BACKOFF);
        assert!(!r.listed(&p, now + FIRST_BACKOFF * 2));
        assert!(r.listed(&p, now + FIRST_BACKOFF * 3), "paused 2 s");
    }

    #[test]
    fn a_peer_not_listed_again_is_not_tried_again_and_the_latest_address_is_used() {
        let t0 = Instant::now();
        let mut r = Retries::new(me(), t0);
        let p = peer(1);
        assert!(r.listed(&p, t0));
        r.ended(&p.peer_id, Ending::Fruitless, t0);
        assert!(r.due(t0 + MAX_BACKOFF).is_empty(), "nobody listed it again");
        assert_eq!(r.next_due(), None);
        // Listed again, from a new port (it restarted): tried there.
        let moved = PeerAddr::new(p.peer_id, vec!["127.0.0.1:2".parse().unwrap()]);
        assert!(r.listed(&moved, t0 + MAX_BACKOFF));
        r.ended(&p.peer_id, Ending::Fruitless, t0 + MAX_BACKOFF);
        assert!(!r.listed(&p, t0 + MAX_BACKOFF));
        assert!(!r.listed(&moved, t0 + MAX_BACKOFF));
        let started = r.due(t0 + MAX_BACKOFF * 2);
        assert_eq!(started, vec![moved]);
    }

    #[test]
    fn a_banned_peer_and_this_node_are_never_tried() {
        let t0 = Instant::now();
        let me = me();
        let mut r = Retries::new(me, t0);
        let myself = PeerAddr::new(me, vec!["127.0.0.1:1".parse().unwrap()]);
        assert!(!r.listed(&myself, t0));
        let bad = peer(2);
        assert!(r.listed(&bad, t0));
        r.ended(&bad.peer_id, Ending::Never, t0);
        let later = t0 + MAX_BACKOFF * 10;
        assert!(!r.listed(&bad, later));
        assert!(r.due(later).is_empty() && r.next_due().is_none());
        assert_eq!((r.live(), r.known()), (0, 1));
    }

    #[test]
    fn endless_peer_lists_are_bounded() {
        let t0 = Instant::now();
        let mut r = Retries::new(me(), t0);
        let bad = peer(1);
        assert!(r.listed(&bad, t0));
        r.ended(&bad.peer_id, Ending::Never, t0);
        // A tracker listing ever new peers: at most MAX_LIVE at once.
        let many: Vec<PeerAddr> = (0..1000).map(|i| peer(2 + i as u16)).collect();
        let started = many.iter().filter(|p| r.listed(p, t0)).count();
        assert_eq!(
            (started, r.live(), r.known()),
            (MAX_LIVE, MAX_LIVE, MAX_LIVE + 1)
        );
        // As they end, others take their places (and those listed again during their pause
        // when it is over), and what is remembered stays bounded.
        let mut now = t0;
        let mut tried: std::collections::HashSet<PeerId> = std::collections::HashSet::new();
        for round in 0..20 {
            let live: Vec<PeerId> = r
                .peers
                .iter()
                .filter(|(_, t)| t.live)
                .map(|(id, _)| *id)
                .collect();
            tried.extend(live.iter().copied());
            for id in live {
                r.ended(&id, Ending::Fruitless, now);
            }
            now += MAX_BACKOFF / 4;
            let again = r.due(now).len();
            let fresh = many.iter().skip(50 * round).take(300);
            let started = fresh.filter(|p| r.listed(p, now)).count();
            assert!(again + started > 0, "round {round}: nobody tried");
            assert!(r.live() <= MAX_LIVE);
            assert!(r.known() <= MAX_TRACKED, "{}", r.known());
        }
        assert!(
            tried.len() > MAX_TRACKED,
            "peers made room: {}",
            tried.len()
        );
        // The banned peer was not forgotten to make room.
        assert!(!r.listed(&bad, now + MAX_BACKOFF));
        assert!(r.peers[&bad.peer_id].never);
    }
}
