//! The connections a download has to one peer: each has its own worker; they share what was
//! asked of the peer, and the further ones wait for the main one to connect directly. Lanes
//! added while the download runs (see [`super::grow`]) can be stopped again.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One of the connections a download has to a peer (see
/// [`super::connections_per_peer`]).
#[derive(Debug)]
pub(super) struct Lane {
    /// 0 for the peer's main connection.
    pub(super) index: u8,
    /// Every chunk asked of this peer over any of its connections: the endgame duplicates a
    /// chunk to another peer, not to the same one over its other connection.
    pub(super) asked: Arc<Mutex<HashMap<u64, ()>>>,
    /// The main connection's worker tells here whether its connection is direct TCP (dropped
    /// unsent if it could not connect) …
    pub(super) connected: Option<watch::Sender<Option<bool>>>,
    /// … and the others wait for that: only a direct peer gets further connections, and a peer
    /// that could not be reached is not tried again by each of them in turn.
    main: watch::Receiver<Option<bool>>,
    /// Cancelled when this lane is to end before the download does (see [`super::grow`]).
    pub(super) stop: CancellationToken,
}

/// What the lanes of one peer share, from which further lanes are made.
#[derive(Debug)]
pub(super) struct LaneGroup {
    asked: Arc<Mutex<HashMap<u64, ()>>>,
    main: watch::Receiver<Option<bool>>,
}

impl LaneGroup {
    /// The group of one peer and its first `count` lanes, its main connection first.
    pub(super) fn new(count: u8) -> (Self, Vec<Lane>) {
        let asked = Arc::new(Mutex::new(HashMap::new()));
        let (connected, main) = watch::channel(None);
        let group = Self { asked, main };
        let mut connected = Some(connected);
        let lanes = (0..count.max(1))
            .map(|index| Lane {
                connected: if index == 0 { connected.take() } else { None },
                ..group.lane(index, CancellationToken::new())
            })
            .collect();
        (group, lanes)
    }

    /// A further lane (not the main one), which ends when `stop` is cancelled.
    pub(super) fn lane(&self, index: u8, stop: CancellationToken) -> Lane {
        Lane {
            index,
            asked: self.asked.clone(),
            connected: None,
            main: self.main.clone(),
            stop,
        }
    }

    /// Whether the peer's main connection is direct TCP (only then may it have more).
    pub(super) fn direct(&self) -> bool {
        *self.main.borrow() == Some(true)
    }
}

impl Lane {
    /// Whether this lane may go on: the main one always; a further one once the main one is
    /// connected, directly.
    pub(super) async fn may_connect(&self) -> bool {
        if self.index == 0 {
            return true;
        }
        let mut main = self.main.clone();
        matches!(main.wait_for(Option::is_some).await, Ok(direct) if *direct == Some(true))
    }
}
