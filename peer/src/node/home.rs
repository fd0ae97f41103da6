//! The home relay: which relay hub this peer attaches to and registers with the tracker, so
//! that others open tunnels and punches to it there.
//!
//! The candidates are the `--relay` URLs in their order, else the tracker's relay fleet
//! (`GET /api/relays`, each peer ordering it by a hash of its id and the URL, which spreads
//! peers over the relays), else the tracker's own relay. The keeper registers the hub once
//! attached to it; when the hub stays unreachable for [`REHOME_AFTER`] it moves to the next
//! candidate that has not failed in the last [`DOWN_FOR`], and registers that one.
//!
//! The keeper sleeps between changes of the attachment and its own deadlines (the fleet's
//! refresh, the end of [`REHOME_AFTER`]): an idle peer that stays attached costs it no wake-up
//! but the fleet's refresh.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use p2p_proto::PeerId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::NodeArgs;
use crate::net::RelayUrl;
use crate::net::connector::Connector;
use crate::net::relay::{RelayStatus, relay_url};
use crate::tracker_client::{SessionHandle, TrackerClient};

/// How long the home relay may stay unreachable before the peer moves to another.
pub const REHOME_AFTER: Duration = Duration::from_secs(2);
/// How long a relay that failed is passed over.
const DOWN_FOR: Duration = Duration::from_secs(30);
/// How often the fleet is asked for again while all is well.
const FLEET_REFRESH: Duration = Duration::from_secs(30);
/// Relays taken from the tracker's list at most (the rest are ignored).
const MAX_FLEET: usize = 64;

/// The relays our own configuration names (`--relay`) and the tracker URLs' own relays: the
/// relays that may be visited before the tracker lists its fleet.
pub(super) fn configured_relays(args: &NodeArgs) -> Vec<RelayUrl> {
    args.relays
        .iter()
        .chain(&args.tracker)
        .filter_map(|u| relay_url(u).ok())
        .collect()
}

/// Keeps the home relay, as the module says, until `shutdown`.
pub(super) struct HomeKeeper {
    pub tracker: TrackerClient,
    pub connector: Arc<Connector>,
    pub session: SessionHandle,
    pub peer_id: PeerId,
    /// `--relay`, in order.
    pub configured: Vec<String>,
    /// The tracker URLs (their own relays may always be visited).
    pub trackers: Vec<String>,
}

impl HomeKeeper {
    pub(super) fn spawn(self, shutdown: CancellationToken) {
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.run() => {}
            }
        });
    }

    async fn run(mut self) {
        let Some(client) = self.connector.relay().cloned() else {
            return;
        };
        // Registered as written here, so in the form the tracker accepts.
        self.configured = self.configured.iter().map(|u| registrable(u)).collect();
        // The candidate we are homed on (`None`: the tracker's own relay).
        let mut home = self.configured.first().cloned();
        let mut fleet: Vec<String> = Vec::new();
        let mut fleet_at: Option<Instant> = None;
        let mut down: HashMap<String, Instant> = HashMap::new();
        let mut unreachable_since: Option<Instant> = None;
        let mut status = Some(client.status_changes());
        let mut first = true;
        loop {
            if !first {
                // The next deadline: the fleet's refresh (at once when it was dropped), the end
                // of the grace before moving.
                let refresh = self
                    .configured
                    .is_empty()
                    .then(|| fleet_at.map_or_else(Instant::now, |at| at + FLEET_REFRESH));
                let rehome = unreachable_since.map(|since| since + REHOME_AFTER);
                let wake = refresh.into_iter().chain(rehome).min();
                tokio::select! {
                    changed = async { status.as_mut()?.changed().await.ok() }, if status.is_some() => {
                        // The client is gone: no more changes, only deadlines.
                        if changed.is_none() {
                            status = None;
                        }
                    }
                    () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                    // Neither: nothing will ever call for a look again.
                    else => std::future::pending::<()>().await,
                }
            }
            first = false;
            let now = Instant::now();
            if self.configured.is_empty() && fleet_at.is_none_or(|at| now - at >= FLEET_REFRESH) {
                fleet_at = Some(now);
                match self.tracker.relays().await {
                    Ok(list) => {
                        fleet = list
                            .relays
                            .into_iter()
                            .map(|r| r.url)
                            .filter(|u| relay_url(u).is_ok())
                            .take(MAX_FLEET)
                            .collect();
                        fleet.sort_by_key(|u| preference(&self.peer_id, u));
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot list the relay fleet"),
                }
                self.connector.set_known_relays(self.known(&fleet));
            }
            let candidates = if self.configured.is_empty() {
                &fleet
            } else {
                &self.configured
            };
            down.retain(|_, at| now - *at < DOWN_FOR);
            let attached = client.status() == RelayStatus::Attached;
            // First choice: the tracker's own relay is a stand-in until the fleet is known.
            let settle = home.is_none() && !candidates.is_empty();
            if attached && !settle {
                unreachable_since = None;
                self.session.set_relay(home.clone());
                continue;
            }
            let since = *unreachable_since.get_or_insert(now);
            if !settle && now - since < REHOME_AFTER {
                continue;
            }
            if let Some(failed) = &home
                && !settle
            {
                tracing::info!(relay = %failed, "home relay unreachable; moving to another");
                down.insert(failed.clone(), now);
                // The fleet may have changed (the dead relay left, new ones joined).
                fleet_at = None;
            }
            let next = candidates
                .iter()
                .find(|c| Some(*c) != home.as_ref() && !down.contains_key(*c))
                .or_else(|| candidates.iter().find(|c| Some(*c) != home.as_ref()));
            let Some(next) = next.cloned() else {
                // No other relay: keep trying this one (the client retries by itself).
                unreachable_since = Some(now);
                continue;
            };
            let Ok(url) = relay_url(&next) else {
                continue;
            };
            tracing::info!(relay = %next, "homing on relay");
            self.connector.rehome(url);
            home = Some(next);
            unreachable_since = Some(now);
        }
    }

    /// The relays that may be visited: the fleet, ours, the trackers'.
    fn known(&self, fleet: &[String]) -> Vec<RelayUrl> {
        fleet
            .iter()
            .chain(&self.configured)
            .chain(&self.trackers)
            .filter_map(|u| relay_url(u).ok())
            .collect()
    }
}

/// A relay URL as the tracker takes it in a registration: with a scheme (`r:8080` →
/// `http://r:8080`, as `--tracker` reads it) and no trailing slash.
fn registrable(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// This peer's order of preference for `url` (lowest first): a hash of both, so that peers
/// spread over the fleet and each keeps its order while the fleet changes (rendezvous hashing).
fn preference(peer: &PeerId, url: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.0.hash(&mut h);
    url.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_registered_with_a_scheme() {
        assert_eq!(registrable("r:8080"), "http://r:8080");
        assert_eq!(registrable("https://r/"), "https://r");
        assert_eq!(registrable(" ws://r:1 "), "ws://r:1");
        // The same hub either way.
        assert_eq!(
            relay_url("r:8080").unwrap(),
            relay_url(&registrable("r:8080")).unwrap()
        );
    }

    #[test]
    fn peers_spread_over_the_fleet_and_keep_their_order() {
        let fleet = ["http://r0:1", "http://r1:1", "http://r2:1", "http://r3:1"];
        let mut firsts = std::collections::HashSet::new();
        for i in 0..64u8 {
            let peer = PeerId([i; 32]);
            let mut order = fleet.to_vec();
            order.sort_by_key(|u| preference(&peer, u));
            firsts.insert(order[0]);
            // Without one relay, the others keep their order.
            let mut fewer: Vec<_> = fleet[1..].to_vec();
            fewer.sort_by_key(|u| preference(&peer, u));
            let kept: Vec<_> = order.iter().filter(|u| **u != fleet[0]).copied().collect();
            assert_eq!(fewer, kept);
        }
        assert_eq!(
            firsts.len(),
            fleet.len(),
            "every relay is someone's first choice"
        );
    }
}
