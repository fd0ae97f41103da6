//! The live event bus behind `/ws`: events are serialised once and fanned out to every client
//! through a bounded broadcast channel; the most recent ones are kept for clients that join.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use p2p_proto::api::{Event, EventMessage};
use tokio::sync::broadcast;

use crate::clock::Clock;

/// How many events a slow client may fall behind before it misses some.
const CHANNEL_CAPACITY: usize = 1024;
/// How many recent events a new client receives first.
const HISTORY: usize = 50;

/// Publishes tracker events to the live feed.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<str>>,
    recent: Arc<Mutex<VecDeque<Arc<str>>>>,
    clock: Arc<dyn Clock>,
}

impl EventBus {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            tx,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY))),
            clock,
        }
    }

    /// Stamps, serialises and sends an event. Never blocks; with no subscribers it is only kept
    /// in the recent history.
    pub fn publish(&self, event: Event) {
        let msg = EventMessage {
            ts_ms: self.clock.now_ms(),
            event,
        };
        let Ok(json) = serde_json::to_string(&msg) else {
            tracing::error!(?msg, "event did not serialise");
            return;
        };
        let json: Arc<str> = json.into();
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == HISTORY {
                recent.pop_front();
            }
            recent.push_back(json.clone());
        }
        let _ = self.tx.send(json);
    }

    /// A receiver of future events plus the recent ones, oldest first. Subscribing under the
    /// history lock means no event is both missed and absent from the history.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        match self.recent.lock() {
            Ok(recent) => (recent.iter().cloned().collect(), self.tx.subscribe()),
            Err(_) => (Vec::new(), self.tx.subscribe()),
        }
    }

    /// A JSON message built now (for per-client messages such as `hello` and `lagged`).
    pub fn message(&self, event: Event) -> String {
        serde_json::to_string(&EventMessage {
            ts_ms: self.clock.now_ms(),
            event,
        })
        .unwrap_or_default()
    }
}
