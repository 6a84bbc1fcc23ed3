//! Ingest pressure: how many webhook events wait for their commit at once.
//! Many at a time mean requests are queueing for the store, and every
//! other write it takes (a delivery's ledger marks, a plugin's key-value
//! set) lengthens their wait; the dispatcher then runs fewer deliveries
//! (`dispatch.busy_workers`) until the queue has been short for a while.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Events waiting for one commit at once from which ingest counts as crowded.
pub const CROWDED_AT: usize = 8;

/// How long ingest counts as crowded after the last time it was.
pub const CROWDED_FOR: Duration = Duration::from_millis(250);

pub struct Pressure {
    waiting: AtomicUsize,
    start: Instant,
    /// Milliseconds after `start` at which the queue last reached
    /// `CROWDED_AT`, plus one (0: never).
    crowded_at: AtomicU64,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure {
            waiting: AtomicUsize::new(0),
            start: Instant::now(),
            crowded_at: AtomicU64::new(0),
        }
    }
}

impl Pressure {
    /// Counts an event as waiting for its commit until the guard is dropped.
    pub fn wait(&self) -> Waiting<'_> {
        let n = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= CROWDED_AT {
            let now = self.start.elapsed().as_millis() as u64 + 1;
            // Written at most once a millisecond, not by every request.
            if self.crowded_at.load(Ordering::Relaxed) != now {
                self.crowded_at.store(now, Ordering::Relaxed);
            }
        }
        Waiting(self)
    }

    /// Whether the queue reached [`CROWDED_AT`] within the last [`CROWDED_FOR`].
    pub fn crowded(&self) -> bool {
        match self.crowded_at.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let now = self.start.elapsed().as_millis() as u64 + 1;
                now.saturating_sub(at) < CROWDED_FOR.as_millis() as u64
            }
        }
    }
}

pub struct Waiting<'a>(&'a Pressure);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crowded_once_enough_wait_together_and_for_a_while_after() {
        let p = Pressure::default();
        let few: Vec<_> = (0..CROWDED_AT - 1).map(|_| p.wait()).collect();
        assert!(!p.crowded(), "{} waiting is not crowded", CROWDED_AT - 1);
        let one_more = p.wait();
        assert!(p.crowded());
        drop((few, one_more));
        assert!(p.crowded(), "still crowded just after the queue emptied");
        std::thread::sleep(CROWDED_FOR + Duration::from_millis(20));
        assert!(
            !p.crowded(),
            "no longer crowded once the queue stayed short"
        );
        // Guards gave their places back: a short queue again is not crowded.
        let _again: Vec<_> = (0..CROWDED_AT - 1).map(|_| p.wait()).collect();
        assert!(!p.crowded());
    }
}
