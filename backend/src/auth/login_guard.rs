//! Bounds on password checks: argon2id costs 19 MiB and tens of milliseconds of CPU each, so
//! at most a few run at once (a semaphore; the rest wait in line), on as many threads of their
//! own (on the shared blocking pool each check could land on a new thread, and each thread's
//! allocator arena keeps its 19 MiB), and an account that keeps failing is answered with 429
//! until its minute is over, without checking anything.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit, oneshot};

/// Accounts whose failures are remembered at most; past it, the oldest windows are dropped.
const MAX_TRACKED: usize = 10_000;
const WINDOW: Duration = Duration::from_secs(60);
/// Longest wait for a turn at checking a password before the login is answered with 429.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Why a login was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_secs: u64,
}

/// A password check for the worker threads.
type Check = Box<dyn FnOnce() + Send>;

#[derive(Debug)]
pub struct LoginGuard {
    checks: Semaphore,
    /// Work for the checking threads, which end when this is dropped.
    workers: Mutex<mpsc::Sender<Check>>,
    failures_per_window: u32,
    /// Failures per account in the window that started at the instant.
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginGuard {
    pub fn new(concurrency: usize, failures_per_minute: u32) -> Self {
        let (tx, rx) = mpsc::channel::<Check>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..concurrency.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, not while running it.
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        Self {
            checks: Semaphore::new(concurrency.max(1)),
            workers: Mutex::new(tx),
            failures_per_window: failures_per_minute.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// A turn at checking `account`'s password, or how long to wait when it failed too often
    /// or the line is too long.
    pub async fn turn(&self, account: &str) -> Result<SemaphorePermit<'_>, Throttled> {
        self.check_account(account)?;
        let permit = match tokio::time::timeout(QUEUE_WAIT, self.checks.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(Throttled {
                    retry_after_secs: 1,
                });
            }
        };
        // Failures may have piled up while this one waited.
        self.check_account(account)?;
        Ok(permit)
    }

    /// Runs `check` on a checking thread (call it holding a [`turn`](Self::turn)); `None` when
    /// the threads are gone.
    pub async fn run<T: Send + 'static>(
        &self,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let job: Check = Box::new(move || {
            let _ = done.send(check());
        });
        self.workers.lock().send(job).ok()?;
        result.await.ok()
    }

    fn check_account(&self, account: &str) -> Result<(), Throttled> {
        let failures = self.failures.lock();
        match failures.get(account) {
            Some((start, n)) if *n >= self.failures_per_window && start.elapsed() < WINDOW => {
                let left = WINDOW.saturating_sub(start.elapsed());
                Err(Throttled {
                    retry_after_secs: left.as_secs().max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong password for `account`.
    pub fn failed(&self, account: &str) {
        let mut failures = self.failures.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(account) {
            failures.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = failures
            .entry(account.to_owned())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_account_is_throttled_after_its_failures() {
        let guard = LoginGuard::new(1, 2);
        assert!(guard.turn("a").await.is_ok());
        assert_eq!(guard.run(|| 6 * 7).await, Some(42));
        guard.failed("a");
        guard.failed("a");
        let t = guard.turn("a").await.unwrap_err();
        assert!((1..=60).contains(&t.retry_after_secs));
        assert!(
            guard.turn("b").await.is_ok(),
            "other accounts are not affected"
        );
    }
}
