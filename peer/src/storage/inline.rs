//! Where a chunk's disk work runs: on the task that needs it while that stays fast, on the
//! blocking pool once it is not.
//!
//! Reading or writing a 256 KiB chunk through the page cache, with its SHA-256, takes a fraction
//! of a millisecond. Handing each one to `spawn_blocking` costs more than that in thread
//! wake-ups and context switches (`bench/transfer` moves more data per second with the work
//! done in place; figures in `bench/README.md`). But a disk that cannot keep up (dirty-page throttling,
//! a seek-bound read) can block for much longer, and a blocked runtime worker stalls every task
//! behind it. So the work runs in place and is timed; [`STRIKES`] operations in a row slower
//! than [`SLOW`] send the next ones to the blocking pool for [`COOL_DOWN`], after which in place
//! is tried again. A slow disk costs the runtime a couple of slow operations per cool-down; a
//! single hiccup (the scheduler preempting this thread, say) costs nothing.
//!
//! Only work for plain TCP connections runs in place. Relayed and hole-punched streams are
//! driven by tasks on the same runtime (WebSocket and QUIC flow control), and holding a worker
//! for a chunk's disk work held those up: in place cost the relayed path throughput
//! (`bench/relay`, see `bench/README.md`), so their chunks keep the blocking pool.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A chunk operation slower than this means the disk may not be keeping up.
pub const SLOW: Duration = Duration::from_millis(8);
/// Slow operations in a row that move disk work to the blocking pool.
pub const STRIKES: u32 = 2;
/// How long work stays on the blocking pool after that.
pub const COOL_DOWN: Duration = Duration::from_secs(5);

/// Decides, per file or connection, whether disk work runs in place.
#[derive(Debug)]
pub struct InlineIo {
    /// Milliseconds since `epoch` before which work goes to the blocking pool.
    pooled_until_ms: AtomicU64,
    epoch: Instant,
    /// Slow operations in a row.
    streak: AtomicU32,
}

impl Default for InlineIo {
    fn default() -> Self {
        Self {
            pooled_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            streak: AtomicU32::new(0),
        }
    }
}

impl InlineIo {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the next operation may run in place.
    pub fn inline(&self) -> bool {
        self.now_ms() >= self.pooled_until_ms.load(Ordering::Relaxed)
    }

    /// Runs `work` in place and times it: [`STRIKES`] slow runs in a row send what follows to
    /// the blocking pool.
    pub fn timed<T>(&self, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        let took = started.elapsed();
        if took <= SLOW {
            self.streak.store(0, Ordering::Relaxed);
        } else if self.streak.fetch_add(1, Ordering::Relaxed) + 1 >= STRIKES {
            self.streak.store(0, Ordering::Relaxed);
            let until = self.now_ms() + COOL_DOWN.as_millis() as u64;
            self.pooled_until_ms.store(until, Ordering::Relaxed);
            tracing::debug!(
                ?took,
                "slow disk: moving chunk IO to the blocking pool for a while"
            );
        }
        out
    }

    /// Runs `work` in place when the caller allows it (`in_place`) and the disk has been
    /// keeping up, else on the blocking pool; `None` if it panicked there.
    pub async fn run<T: Send + 'static>(
        &self,
        in_place: bool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if in_place && self.inline() {
            Some(self.timed(work))
        } else {
            tokio::task::spawn_blocking(work).await.ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_work_moves_to_the_pool_for_a_while() {
        let io = InlineIo::default();
        let here = std::thread::current().id();
        assert_eq!(
            io.run(true, move || std::thread::current().id()).await,
            Some(here)
        );
        let pooled = io.run(false, || std::thread::current().id()).await;
        assert_ne!(pooled, Some(here), "the caller asked for the pool");
        // One slow operation is a hiccup; a second in a row is a disk that blocks.
        io.timed(|| std::thread::sleep(SLOW * 2));
        assert!(io.inline());
        io.timed(|| ());
        io.timed(|| std::thread::sleep(SLOW * 2));
        assert!(io.inline(), "a fast one in between starts the count again");
        io.timed(|| std::thread::sleep(SLOW * 2));
        assert!(!io.inline());
        let there = io.run(true, || std::thread::current().id()).await.unwrap();
        assert_ne!(there, here, "ran on the blocking pool");
        // After the cool-down, in place again.
        io.pooled_until_ms.store(io.now_ms(), Ordering::Relaxed);
        assert!(io.inline());
    }
}
