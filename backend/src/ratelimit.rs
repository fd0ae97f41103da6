//! Per-client rate limiting (governor), as a poem middleware answering 429 with `Retry-After`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response, Result};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The client's IP: the socket peer, or behind `trust_proxy` trusted reverse proxies the
/// `X-Forwarded-For` entry that many from the right (then `X-Real-IP`). Each proxy appends the
/// address it was connected from, so entries further left come from the client and prove
/// nothing; the leftmost one is never used.
pub fn client_ip(req: &Request, trust_proxy: Option<u8>) -> Option<IpAddr> {
    if let Some(hops) = trust_proxy {
        let forwarded = match req.header("x-forwarded-for") {
            Some(list) => list
                .rsplit(',')
                .nth(usize::from(hops.max(1)) - 1)
                .and_then(|v| v.trim().parse().ok()),
            None => req.header("x-real-ip").and_then(|v| v.trim().parse().ok()),
        };
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
    trust_proxy: Option<u8>,
    metrics: Arc<Metrics>,
}

impl RateLimit {
    /// `None` when `rps` is 0 (no limit).
    pub fn new(
        rps: u32,
        burst: Option<u32>,
        trust_proxy: Option<u8>,
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

#[cfg(test)]
mod tests {
    use super::client_ip;
    use poem::Request;

    fn from(xff: &str) -> Request {
        Request::builder().header("x-forwarded-for", xff).finish()
    }

    #[test]
    fn the_client_is_counted_from_the_right() {
        let req = from("6.6.6.6, 1.2.3.4, 10.0.0.1");
        assert_eq!(client_ip(&req, Some(1)), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(client_ip(&req, Some(2)), Some("1.2.3.4".parse().unwrap()));
        // Fewer entries than hops: not from behind the proxies; the socket address counts.
        assert_eq!(client_ip(&from("6.6.6.6"), Some(2)), None);
        assert_eq!(client_ip(&req, None), None);
    }
}
