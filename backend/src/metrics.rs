//! Prometheus metrics, registered with prometheus-client and served at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Every metric the tracker exports. Gauges of stored state are refreshed at each scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub peers_online: Gauge,
    pub peers_total: Gauge,
    pub files: Gauge,
    pub bytes_shared: Gauge,
    pub relay_connections: Gauge,
    pub relay_tunnels: Gauge,
    pub relay_bytes: Counter,
    pub relay_queued_bytes: Gauge,
    pub punch_requests: Counter,
    pub punch_ready: Counter,
    pub ws_clients: Gauge,
    pub heartbeats: Counter,
    pub announces: Counter,
    pub peers_expired: Counter,
    pub rate_limited: Counter,
    pub heartbeat_batch: Histogram,
    pub db_errors: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("p2p_tracker");
        let m = Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            peers_online: Gauge::default(),
            peers_total: Gauge::default(),
            files: Gauge::default(),
            bytes_shared: Gauge::default(),
            relay_connections: Gauge::default(),
            relay_tunnels: Gauge::default(),
            relay_bytes: Counter::default(),
            relay_queued_bytes: Gauge::default(),
            punch_requests: Counter::default(),
            punch_ready: Counter::default(),
            ws_clients: Gauge::default(),
            heartbeats: Counter::default(),
            announces: Counter::default(),
            peers_expired: Counter::default(),
            rate_limited: Counter::default(),
            heartbeat_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            db_errors: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.http_duration.clone(),
        );
        registry.register("peers_online", "Peers online now", m.peers_online.clone());
        registry.register(
            "peers",
            "Peers registered (online or not)",
            m.peers_total.clone(),
        );
        registry.register("files", "Files known to the tracker", m.files.clone());
        registry.register(
            "shared_bytes",
            "Sum of the sizes of all files",
            m.bytes_shared.clone(),
        );
        registry.register(
            "relay_connections",
            "Peers attached to the relay hub",
            m.relay_connections.clone(),
        );
        registry.register(
            "relay_tunnels_open",
            "Relay tunnels open now",
            m.relay_tunnels.clone(),
        );
        registry.register(
            "relay_bytes",
            "Tunnel bytes forwarded by the relay",
            m.relay_bytes.clone(),
        );
        registry.register(
            "relay_queued_bytes",
            "Tunnel bytes queued in the relay for slow receivers",
            m.relay_queued_bytes.clone(),
        );
        registry.register(
            "punch_requests",
            "Hole punches peers asked the relay hub to coordinate",
            m.punch_requests.clone(),
        );
        registry.register(
            "punch_ready",
            "Hole punches where both peers confirmed their UDP address and were told to probe",
            m.punch_ready.clone(),
        );
        registry.register(
            "ws_clients",
            "Clients on the live event feed",
            m.ws_clients.clone(),
        );
        registry.register("heartbeats", "Heartbeats accepted", m.heartbeats.clone());
        registry.register("announces", "File announces accepted", m.announces.clone());
        registry.register(
            "peers_expired",
            "Peers marked offline after missed heartbeats",
            m.peers_expired.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the rate limiter",
            m.rate_limited.clone(),
        );
        registry.register(
            "heartbeat_batch_size",
            "Heartbeats written per database transaction",
            m.heartbeat_batch.clone(),
        );
        registry.register(
            "db_errors",
            "Failed database operations",
            m.db_errors.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics did not encode");
        }
        out
    }

    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }
}
