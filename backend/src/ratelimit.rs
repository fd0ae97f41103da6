//! Per-client rate limiting (governor), as a poem middleware answering 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The client's IP: the socket peer, or with `trust_proxy` the first `X-Forwarded-For` entry
/// (then `X-Real-IP`), as set by a reverse proxy in front of the tracker.
pub fn client_ip(req: &Request, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy {
        let forwarded = req
            .header("x-forwarded-for")
            .and_then(|v| v.split(',').next())
            .or_else(|| req.header("x-real-ip"))
            .and_then(|v| v.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    req.remote_addr().as_socket_addr().map(|a| a.ip())
}

/// A keyed limiter shared by every request.
#[derive(Debug, Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    trust_proxy: bool,
    metrics: Arc<Metrics>,
}

impl RateLimit {
    /// `None` when `rps` is 0 (no limit).
    pub fn new(
        rps: u32,
        burst: Option<u32>,
        trust_proxy: bool,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        let rate = NonZeroU32::new(rps)?;
        let burst = burst
            .and_then(NonZeroU32::new)
            .unwrap_or_else(|| rate.saturating_mul(NonZeroU32::MIN.saturating_add(1)));
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Self {
            limiter: Arc::new(RateLimiter::keyed(quota)),
            trust_proxy,
            metrics,
        })
    }

    /// Forgets clients that are back to a full bucket (call periodically to bound memory).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

impl<E: Endpoint> Middleware<E> for RateLimit {
    type Output = RateLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RateLimitEndpoint {
            inner: ep,
            limit: self.clone(),
        }
    }
}

#[derive(Debug)]
pub struct RateLimitEndpoint<E> {
    inner: E,
    limit: RateLimit,
}

impl<E: Endpoint> Endpoint for RateLimitEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Self::Output> {
        // Probes and scrapes are never limited.
        let exempt = matches!(req.uri().path(), "/health" | "/metrics");
        if let Some(ip) = client_ip(&req, self.limit.trust_proxy).filter(|_| !exempt)
            && let Err(not_until) = self.limit.limiter.check_key(&ip)
        {
            self.limit.metrics.rate_limited.inc();
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Ok(ApiError::too_many_requests(secs.max(1)).into_response());
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}
