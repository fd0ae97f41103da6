//! The live event bus behind `/ws`: events are serialised once and fanned out to every client
//! through a bounded broadcast channel; the most recent ones are kept for clients that join.
//!
//! With a database that several trackers share (PostgreSQL), events travel through it
//! ([`EventFanout`]): a tracker sends its events there and delivers to its own clients only
//! what comes back, so every client of every tracker sees every event once, in one order.
//! While the database cannot take an event, it is delivered to this tracker's clients only.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use p2p_proto::api::{Event, EventMessage};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{EventFanout, StoreResult};

/// How many events a slow client may fall behind before it misses some.
const CHANNEL_CAPACITY: usize = 1024;
/// How many recent events a new client receives first.
const HISTORY: usize = 50;
/// Most events sent to the database in one statement.
const SEND_BATCH: usize = 256;
/// Pause before listening again after the database connection was lost.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Publishes tracker events to the live feed.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<str>>,
    recent: Arc<Mutex<VecDeque<Arc<str>>>>,
    clock: Arc<dyn Clock>,
    /// Events on their way to the other trackers; `None`: this tracker is alone.
    outbox: Option<mpsc::Sender<Arc<str>>>,
}

impl EventBus {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            tx,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(HISTORY))),
            clock,
            outbox: None,
        }
    }

    /// Routes events through `fanout`, shared with the other trackers on the database. Listens
    /// before returning, so no event published afterwards is missed; the tasks end at
    /// `shutdown`.
    pub async fn with_fanout(
        mut self,
        fanout: Arc<dyn EventFanout>,
        shutdown: CancellationToken,
    ) -> StoreResult<Self> {
        let incoming = fanout.subscribe().await?;
        tokio::spawn(
            self.clone()
                .receive(fanout.clone(), incoming, shutdown.clone()),
        );
        let (outbox, pending) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(self.clone().send(fanout, pending, shutdown));
        self.outbox = Some(outbox);
        Ok(self)
    }

    /// Delivers what any tracker sent, listening again whenever the connection is lost.
    async fn receive(
        self,
        fanout: Arc<dyn EventFanout>,
        mut incoming: BoxStream<'static, StoreResult<String>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = incoming.next() => next,
            };
            match next {
                Some(Ok(json)) => {
                    self.deliver(json.into());
                    continue;
                }
                Some(Err(e)) => tracing::warn!("event feed from the database lost: {e:#}"),
                None => tracing::warn!("event feed from the database ended"),
            }
            incoming = loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
                }
                match fanout.subscribe().await {
                    Ok(stream) => break stream,
                    Err(e) => tracing::warn!("cannot listen for events: {e:#}"),
                }
            };
        }
    }

    /// Sends this tracker's events to all trackers, as many at a time as are waiting, or
    /// straight to its own clients when the database cannot take them.
    async fn send(
        self,
        fanout: Arc<dyn EventFanout>,
        mut pending: mpsc::Receiver<Arc<str>>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(SEND_BATCH);
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                n = pending.recv_many(&mut batch, SEND_BATCH) => n,
            };
            if received == 0 {
                return; // every sender is gone
            }
            if let Err(e) = fanout.send(&batch).await {
                tracing::warn!(
                    "{} events not shared with other trackers: {e:#}",
                    batch.len()
                );
                for json in batch.drain(..) {
                    self.deliver(json);
                }
            }
            batch.clear();
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
        match &self.outbox {
            None => self.deliver(json),
            Some(outbox) => {
                // Full (the database lags) or closed (shutting down): local clients still see it.
                if let Err(e) = outbox.try_send(json) {
                    tracing::warn!("event kept on this tracker: {e}");
                    self.deliver(e.into_inner());
                }
            }
        }
    }

    /// Hands an event to this tracker's clients and keeps it in the recent history.
    fn deliver(&self, json: Arc<str>) {
        {
            let mut recent = self.recent.lock();
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
        let recent = self.recent.lock();
        (recent.iter().cloned().collect(), self.tx.subscribe())
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
