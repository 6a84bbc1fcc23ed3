//! A failure that repeats until something outside is fixed — the store
//! refusing writes while the disk is full — logged when it starts, then
//! at most once every [`REMIND_EVERY`] with how often it happened since,
//! and once when it ends. Logged at every occurrence, a full disk wrote
//! a warning for each refused request and twenty a second from the
//! dispatcher's passes, onto a disk that was already full.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a failure that goes on is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

pub struct Repeated {
    /// What fails, the start of the log lines' messages: "store writes".
    what: &'static str,
    failing: AtomicBool,
    episode: Mutex<Option<Episode>>,
}

struct Episode {
    since: Instant,
    logged_at: Instant,
    /// Occurrences since it began, and since it was last logged.
    count: u64,
    unlogged: u64,
}

impl Repeated {
    pub const fn new(what: &'static str) -> Repeated {
        Repeated {
            what,
            failing: AtomicBool::new(false),
            episode: Mutex::new(None),
        }
    }

    /// One more occurrence, with its error: a warning if it is the first
    /// since the last success, or if the last one logged is
    /// [`REMIND_EVERY`] old.
    pub fn failed(&self, error: &dyn Display) {
        let now = Instant::now();
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        match episode.as_mut() {
            None => {
                *episode = Some(Episode {
                    since: now,
                    logged_at: now,
                    count: 1,
                    unlogged: 0,
                });
                self.failing.store(true, Ordering::Release);
                tracing::warn!(error = %error, "{}: failing", self.what);
            }
            Some(e) => {
                e.count += 1;
                e.unlogged += 1;
                if now.duration_since(e.logged_at) >= REMIND_EVERY {
                    tracing::warn!(
                        error = %error,
                        times = e.count,
                        since_s = e.since.elapsed().as_secs(),
                        "{}: still failing",
                        self.what
                    );
                    e.logged_at = now;
                    e.unlogged = 0;
                }
            }
        }
    }

    /// It worked: ends a failure, with one line saying so. Costs one atomic
    /// load when nothing was failing.
    pub fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = episode.take() {
            self.failing.store(false, Ordering::Release);
            tracing::info!(
                times = e.count,
                for_s = e.since.elapsed().as_secs(),
                "{}: working again",
                self.what
            );
        }
    }

    /// Whether the last occurrence was a failure.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Occurrences not yet logged (for tests).
    #[cfg(test)]
    fn unlogged(&self) -> u64 {
        self.episode
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |e| e.unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_once_then_counted_until_it_ends() {
        let r = Repeated::new("store writes");
        assert!(!r.failing());
        r.succeeded();
        r.failed(&"disk full");
        assert!(r.failing());
        for _ in 0..99 {
            r.failed(&"disk full");
        }
        assert_eq!(r.unlogged(), 99, "logged once, the rest counted");
        r.succeeded();
        assert!(!r.failing());
        assert_eq!(r.unlogged(), 0);
        // The next failure is a new one, logged again.
        r.failed(&"disk full");
        assert!(r.failing());
        assert_eq!(r.unlogged(), 0);
    }
}
