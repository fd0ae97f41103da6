//! The trackers on one database, as a fleet: each running tracker reports in (the relay URL it
//! publishes with `--relay-url`, and its own relay and `/ws` counts), so that
//! - `GET /api/relays` lists the live relays peers choose a home relay from, whichever
//!   replica answers, and relays join and leave by starting and stopping;
//! - `/api/stats` sums the counts of every replica instead of showing the answering one's.
//!
//! A tracker that stops cleanly deletes its report; one that dies drops out of the lists after
//! [`REPORT_TTL`] (peers attached to it notice sooner: their WebSocket drops).
//!
//! It looks every [`REPORT_EVERY`] but writes only what others need ([`due`]): a changed report
//! at once, an unchanged one every [`REFRESH_EVERY`] to stay live, and nothing at all while it
//! publishes no relay and has no relay or `/ws` clients (it would add only zeros to the sums).
//! A tracker alone on its database (SQLite) has nobody to tell and never reports: its own
//! figures are read live. An idle tracker therefore writes nothing to its database, and one
//! on SQLite writes nothing for peers that merely stay attached to its relay.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use p2p_proto::api::{RelayInfo, RelayList, Stats};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{InstanceRecord, Store, StoreResult};

/// How often a tracker looks whether to report in (a change shows this late at most).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How often an unchanged report is written again, to stay within [`REPORT_TTL`] with a tick
/// to spare.
pub const REFRESH_EVERY: Duration = Duration::from_secs(4);
/// A report older than this no longer counts (a tracker that died without deleting it).
pub const REPORT_TTL: Duration = Duration::from_secs(10);
/// Longest `--relay-url` accepted (peers store it with their entry).
pub const MAX_RELAY_URL: usize = 256;

/// This tracker's place in the fleet.
#[derive(Debug)]
pub struct Fleet {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// Random, per process.
    id: String,
    /// `--relay-url` as given (its port may be 0: the listening port).
    relay_url: Option<String>,
    /// `relay_url` with the port filled in, once listening.
    published: OnceLock<Option<String>>,
}

/// Why a relay URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay URL {0:?}: expected http(s)://host:port or ws(s)://host:port, at most 256 bytes")]
pub struct BadRelayUrl(pub String);

/// Checks a relay URL (`--relay-url`, or a peer's home relay): `http`, `https`, `ws` or `wss`,
/// a host, no path, query, user info or control characters, at most [`MAX_RELAY_URL`] bytes.
pub fn check_relay_url(url: &str) -> Result<(), BadRelayUrl> {
    let bad = || BadRelayUrl(url.chars().take(MAX_RELAY_URL).collect());
    if url.len() > MAX_RELAY_URL || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    let rest = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find_map(|s| url.strip_prefix(s))
        .ok_or_else(bad)?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    Ok(())
}

/// `url` with port 0 replaced by `port` (`http://127.0.0.1:0` → `http://127.0.0.1:8123`).
fn fill_port(url: &str, port: u16) -> String {
    let trimmed = url.trim_end_matches('/');
    match trimmed.strip_suffix(":0") {
        Some(head) => format!("{head}:{port}"),
        None => trimmed.to_owned(),
    }
}

impl Fleet {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        relay_url: Option<String>,
    ) -> Result<Self, BadRelayUrl> {
        if let Some(url) = &relay_url {
            check_relay_url(url)?;
        }
        let mut id = [0u8; 12];
        // Without randomness the id still differs per process and start.
        if getrandom::fill(&mut id).is_err() {
            id[..8].copy_from_slice(&clock.now_ms().to_le_bytes());
            id[8..].copy_from_slice(&std::process::id().to_le_bytes());
        }
        Ok(Self {
            store,
            clock,
            metrics,
            id: hex::encode(id),
            relay_url,
            published: OnceLock::new(),
        })
    }

    /// The relay URL this tracker publishes, once listening.
    pub fn published_relay(&self) -> Option<&str> {
        self.published.get().and_then(|u| u.as_deref())
    }

    /// Reports in now and every [`REPORT_EVERY`] until `shutdown`, then deletes the report; on
    /// a database no other tracker shares, never. `addr` is where the tracker listens (for a
    /// `--relay-url` with port 0).
    pub fn start(self: &Arc<Self>, addr: SocketAddr, shutdown: CancellationToken) {
        let published = self.relay_url.as_deref().map(|u| fill_port(u, addr.port()));
        if let Some(url) = &published {
            tracing::info!(%url, "publishing this tracker's relay to the fleet");
        }
        let _ = self.published.set(published);
        if !self.store.backend().shared() {
            return;
        }
        let fleet = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPORT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            let mut last: Option<InstanceRecord> = None;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let own = fleet.own();
                if !due(last.as_ref(), &own) {
                    continue;
                }
                let result = fleet.store.put_instance(&own).await;
                if result.is_ok() {
                    last = Some(own);
                }
                match result {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("reporting to the fleet again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot report to the fleet");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot report to the fleet"),
                }
            }
            let stale = fleet.cutoff_ms();
            let forget = fleet.store.delete_instances(&fleet.id, stale);
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), forget).await {
                tracing::debug!(error = %e, "could not leave the fleet");
            }
        });
    }

    fn cutoff_ms(&self) -> u64 {
        let ttl = u64::try_from(REPORT_TTL.as_millis()).unwrap_or(u64::MAX);
        self.clock.now_ms().saturating_sub(ttl)
    }

    fn own(&self) -> InstanceRecord {
        InstanceRecord {
            id: self.id.clone(),
            relay_url: self.published_relay().map(str::to_owned),
            relay_attached: self.metrics.relay_connections.get().max(0) as u64,
            ws_clients: self.metrics.ws_clients.get().max(0) as u64,
            last_seen_ms: self.clock.now_ms(),
        }
    }

    /// The live relays, each URL once (the latest report of it), by URL.
    pub async fn relays(&self) -> StoreResult<RelayList> {
        let mut relays: Vec<RelayInfo> = Vec::new();
        let mut instances = self.store.live_instances(self.cutoff_ms()).await?;
        // This tracker's own figures are current, not those of its last report.
        let own = self.own();
        instances.retain(|i| i.id != own.id);
        instances.push(own);
        instances.sort_by_key(|i| std::cmp::Reverse(i.last_seen_ms));
        for i in instances {
            let Some(url) = i.relay_url else { continue };
            if relays.iter().any(|r| r.url == url) {
                continue;
            }
            relays.push(RelayInfo {
                url,
                attached: i.relay_attached,
                last_seen_ms: i.last_seen_ms,
            });
        }
        relays.sort_by(|a, b| a.url.cmp(&b.url));
        Ok(RelayList { relays })
    }

    /// Sets `stats`' relay and `/ws` counts to the sums over every live tracker: this one's
    /// current figures plus the others' last reports.
    pub async fn sum_into(&self, stats: &mut Stats) -> StoreResult<()> {
        let own = self.own();
        let others = self.store.live_instances(self.cutoff_ms()).await?;
        let (mut relay, mut ws) = (own.relay_attached, own.ws_clients);
        for i in others.iter().filter(|i| i.id != own.id) {
            relay = relay.saturating_add(i.relay_attached);
            ws = ws.saturating_add(i.ws_clients);
        }
        stats.relay_connections = relay;
        stats.ws_clients = ws;
        Ok(())
    }
}

/// Whether `now` must be written, `last` being the last report written (if any): when it
/// differs from `last` (always the first time), or `last` is [`REFRESH_EVERY`] old; never when
/// neither has anything to tell (no relay published, no relay or `/ws` clients).
fn due(last: Option<&InstanceRecord>, now: &InstanceRecord) -> bool {
    let telling =
        |r: &InstanceRecord| r.relay_url.is_some() || r.relay_attached > 0 || r.ws_clients > 0;
    let Some(last) = last else {
        return telling(now);
    };
    if !telling(last) && !telling(now) {
        return false;
    }
    let changed = (&last.relay_url, last.relay_attached, last.ws_clients)
        != (&now.relay_url, now.relay_attached, now.ws_clients);
    let refresh = u64::try_from(REFRESH_EVERY.as_millis()).unwrap_or(u64::MAX);
    changed || now.last_seen_ms.saturating_sub(last.last_seen_ms) >= refresh
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_checked() {
        for good in [
            "http://r:8080",
            "https://relay-0.example.org",
            "ws://127.0.0.1:9/",
            "wss://[::1]:1",
        ] {
            assert!(check_relay_url(good).is_ok(), "{good}");
        }
        let long = format!("http://{}", "a".repeat(300));
        for bad in [
            "",
            "r:8080",
            "ftp://r",
            "http://",
            "http://r/relay",
            "http://u:p@r",
            "http://r?x",
            "http://r\n",
            "http:// r",
            long.as_str(),
        ] {
            assert!(check_relay_url(bad).is_err(), "{bad:?}");
        }
    }

    fn record(relay: Option<&str>, attached: u64, ws: u64, at: u64) -> InstanceRecord {
        InstanceRecord {
            id: "me".into(),
            relay_url: relay.map(str::to_owned),
            relay_attached: attached,
            ws_clients: ws,
            last_seen_ms: at,
        }
    }

    #[test]
    fn an_idle_tracker_writes_nothing_and_a_busy_one_little() {
        // Idle, no relay: never written, however long it runs.
        let idle = record(None, 0, 0, 0);
        assert!(!due(None, &idle));
        assert!(!due(Some(&idle), &record(None, 0, 0, 3_600_000)));
        // A /ws client arrives: written at once; then only on change or refresh.
        let one = record(None, 0, 1, 10_000);
        assert!(due(Some(&idle), &one));
        assert!(!due(Some(&one), &record(None, 0, 1, 12_000)));
        assert!(due(Some(&one), &record(None, 0, 1, 14_000)));
        assert!(due(Some(&one), &record(None, 1, 1, 11_000)));
        // It leaves: the zeros are written once (the sums drop at once), then nothing.
        let gone = record(None, 0, 0, 11_000);
        assert!(due(Some(&one), &gone));
        assert!(!due(Some(&gone), &record(None, 0, 0, 60_000)));
        // A relay is listed from the first tick and kept live within the TTL.
        let relay = record(Some("http://r:1"), 0, 0, 0);
        assert!(due(None, &relay));
        assert!(!due(Some(&relay), &record(Some("http://r:1"), 0, 0, 2_000)));
        assert!(due(Some(&relay), &record(Some("http://r:1"), 0, 0, 4_000)));
        assert!(REFRESH_EVERY + REPORT_EVERY < REPORT_TTL);
    }

    #[test]
    fn port_zero_is_the_listening_port() {
        assert_eq!(fill_port("http://127.0.0.1:0", 81), "http://127.0.0.1:81");
        assert_eq!(fill_port("http://127.0.0.1:0/", 81), "http://127.0.0.1:81");
        assert_eq!(fill_port("http://r:8080", 81), "http://r:8080");
        assert_eq!(fill_port("http://r:10", 81), "http://r:10");
    }
}
