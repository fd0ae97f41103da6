//! Bandwidth limits: a token bucket (governor) in units of 1 KiB, changeable at run time.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::RwLock;

const CELL: u64 = 1024;

/// A shared byte-rate limit; `None` is unlimited.
#[derive(Debug, Default)]
pub struct Throttle {
    limiter: RwLock<Option<(u64, Arc<DefaultDirectRateLimiter>)>>,
}

impl Throttle {
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        let t = Self::default();
        t.set_rate(bytes_per_sec);
        t
    }

    /// Changes the limit; transfers in progress follow it from their next chunk.
    pub fn set_rate(&self, bytes_per_sec: Option<u64>) {
        let limiter = bytes_per_sec.map(|rate| {
            let cells = u32::try_from((rate / CELL).max(1)).unwrap_or(u32::MAX);
            let per_sec = NonZeroU32::new(cells).unwrap_or(NonZeroU32::MIN);
            (
                rate,
                Arc::new(RateLimiter::direct(Quota::per_second(per_sec))),
            )
        });
        *self.limiter.write() = limiter;
    }

    /// The limit in bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.limiter.read().as_ref().map(|(r, _)| *r)
    }

    /// Waits until `bytes` may pass.
    pub async fn consume(&self, bytes: usize) {
        let Some((_, limiter)) = self.limiter.read().clone() else {
            return;
        };
        let mut cells = (bytes as u64).div_ceil(CELL);
        // The bucket holds one second of traffic; take larger amounts in pieces.
        while cells > 0 {
            let piece = cells.min(u64::from(u32::MAX)) as u32;
            let Some(n) = NonZeroU32::new(piece) else {
                return;
            };
            match limiter.until_n_ready(n).await {
                Ok(()) => cells -= u64::from(piece),
                Err(capacity) => {
                    let max = u64::from(capacity.0).max(1) as u32;
                    let Some(n) = NonZeroU32::new(max) else {
                        return;
                    };
                    let _ = limiter.until_n_ready(n).await;
                    cells = cells.saturating_sub(u64::from(max));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn unlimited_passes_and_limits_slow_down() {
        let open = Throttle::new(None);
        open.consume(1 << 30).await;
        assert_eq!(open.rate(), None);

        // 1 MiB/s: the first second's worth passes at once, the next 512 KiB must wait.
        let t = Throttle::new(Some(1 << 20));
        assert_eq!(t.rate(), Some(1 << 20));
        let started = Instant::now();
        t.consume(1 << 20).await;
        t.consume(512 << 10).await;
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );

        // Lifting the limit at run time takes effect at once.
        t.set_rate(None);
        let started = Instant::now();
        t.consume(64 << 20).await;
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
