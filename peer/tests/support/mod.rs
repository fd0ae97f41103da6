//! What the peer's integration tests share. Each test binary uses part of it.
#![allow(dead_code)]

pub mod procs;

/// Deterministic pseudo-random content (xorshift).
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fails the test when `P2P_REQUIRE_ALL=1` (CI), else prints a SKIPPED line.
pub fn skip(what: &str, why: &str) {
    if std::env::var("P2P_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{what} cannot run under P2P_REQUIRE_ALL=1: {why}");
    }
    println!("SKIPPED: {what}: {why}");
}

/// A child process's output (stderr, or stdout), line by line as it arrives (read on a thread
/// of its own).
#[derive(Clone, Default)]
pub struct Log(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Set once the pipe is at its end (every line read).
    std::sync::Arc<std::sync::atomic::AtomicBool>,
);

impl Log {
    /// Starts reading `stderr` (or any pipe) into the log.
    pub fn capture(stderr: impl std::io::Read + Send + 'static) -> Self {
        use std::io::BufRead;
        let log = Self::default();
        let (lines, ended) = (log.0.clone(), log.1.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
            ended.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        log
    }

    /// Waits (at most 10 s) until every line is read: call after the process exited.
    pub async fn ended(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.1.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < deadline,
                "the pipe stays open after the process exited"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Lines logged so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Lines containing `text`.
    pub fn count(&self, text: &str) -> usize {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| l.contains(text)).count()
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits (at most `within`) for a line containing all of `texts` and returns it; panics if
    /// `child` exits first.
    pub async fn wait_for(
        &self,
        child: &mut std::process::Child,
        texts: &[&str],
        within: std::time::Duration,
    ) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let found = {
                let lines = self.0.lock().unwrap();
                lines
                    .iter()
                    .find(|l| texts.iter().all(|t| l.contains(t)))
                    .cloned()
            };
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the process exited ({status}):\n{}", self.tail(usize::MAX));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {texts:?}:\n{}",
                self.tail(usize::MAX)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
