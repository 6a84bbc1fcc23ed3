//! A failure that repeats until something outside is fixed — the store
//! refusing writes while the disk is full, no file descriptors left —
//! logged when it starts, then at most once every [`REMIND_EVERY`] with
//! how often it happened since, and once when it ends. Logged at every
//! occurrence, a full disk wrote a warning for each refused request and
//! twenty a second from the dispatcher's passes, onto a disk that was
//! already full.
//!
//! It ends at the first success that comes [`QUIET`] after its last
//! failure: at the edge of a limit, successes and failures alternate (a
//! descriptor freed for a moment is taken by the next connection) and are
//! one failure, not one start and one end each time.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a failure that goes on is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(30);

/// How long after its last failure a success ends it.
pub const QUIET: Duration = Duration::from_secs(1);

pub struct Repeated {
    /// What fails, the start of the log lines' messages: "store writes".
    what: &'static str,
    quiet: Duration,
    /// Whether a failure is under way: all a success looks at otherwise.
    failing: AtomicBool,
    episode: Mutex<Option<Episode>>,
}

struct Episode {
    since: Instant,
    last: Instant,
    logged_at: Instant,
    /// Occurrences since it began, and since it was last logged.
    count: u64,
    unlogged: u64,
}

impl Repeated {
    pub const fn new(what: &'static str) -> Repeated {
        Repeated {
            what,
            quiet: QUIET,
            failing: AtomicBool::new(false),
            episode: Mutex::new(None),
        }
    }

    /// One more occurrence, with its error: a warning if it starts a
    /// failure, or if the last one logged is [`REMIND_EVERY`] old.
    pub fn failed(&self, error: &dyn Display) {
        let now = Instant::now();
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        match episode.as_mut() {
            None => {
                *episode = Some(Episode {
                    since: now,
                    last: now,
                    logged_at: now,
                    count: 1,
                    unlogged: 0,
                });
                self.failing.store(true, Ordering::Release);
                tracing::warn!(error = %error, "{}: failing", self.what);
            }
            Some(e) => {
                e.last = now;
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

    /// It worked: ends a failure whose last occurrence is [`QUIET`] old,
    /// with one line saying so. One atomic load when nothing is failing.
    pub fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut episode = self.episode.lock().unwrap_or_else(|e| e.into_inner());
        if episode
            .as_ref()
            .is_some_and(|e| e.last.elapsed() < self.quiet)
        {
            return;
        }
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

    /// Whether a failure is under way.
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
        let r = Repeated {
            quiet: Duration::from_millis(50),
            ..Repeated::new("store writes")
        };
        assert!(!r.failing());
        r.succeeded();
        r.failed(&"disk full");
        assert!(r.failing());
        for _ in 0..99 {
            r.failed(&"disk full");
            // Successes between failures do not end it.
            r.succeeded();
        }
        assert!(r.failing());
        assert_eq!(r.unlogged(), 99, "logged once, the rest counted");
        std::thread::sleep(Duration::from_millis(60));
        r.succeeded();
        assert!(!r.failing(), "a success once it has been quiet ends it");
        assert_eq!(r.unlogged(), 0);
        // The next failure is a new one, logged again.
        r.failed(&"disk full");
        assert!(r.failing());
        assert_eq!(r.unlogged(), 0);
    }
}
