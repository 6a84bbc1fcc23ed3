//! Watches the dispatcher from a thread at normal priority, so the log says
//! when deliveries are held up, whatever holds them.
//!
//! At idle priority (`dispatch.idle_priority`) the dispatcher and the
//! deliveries take only CPU time nothing else wants. Ingest takes it first,
//! and deliveries catch up after a burst; other programs that keep every
//! core busy for long hold them back for as long. Linux counts, for each
//! thread, the time it was ready to run but waited for a core
//! (`/proc/self/task/TID/schedstat`): the share of wall time the
//! dispatcher's thread spends so is published as
//! `hookhost_dispatcher_cpu_wait_ratio`, and a minute spent mostly waiting
//! is logged. A dispatcher that does not go through its loop at all for
//! 30 s (it does at least twice a second while it runs) is logged too.

use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;

const EVERY: Duration = Duration::from_secs(5);
/// A dispatcher not seen for this long is held up.
const STALLED: Duration = Duration::from_secs(30);
/// Waiting for a core more than this share of the time counts as held back…
const WAITING: f64 = 0.5;
/// … and for this long in a row is worth a line in the log.
const HELD_BACK: Duration = Duration::from_secs(60);
/// At most one line of each kind this often.
const REPEAT: Duration = Duration::from_secs(600);

pub async fn run(metrics: Arc<Metrics>) {
    let mut waits = WaitTracker::default();
    let mut said_stalled: Option<tokio::time::Instant> = None;
    let mut said_held_back: Option<tokio::time::Instant> = None;
    let due = |said: &Option<tokio::time::Instant>| said.is_none_or(|at| at.elapsed() >= REPEAT);
    loop {
        tokio::time::sleep(EVERY).await;
        if let Some(age) = metrics.dispatcher_pass_age() {
            if age >= STALLED && due(&said_stalled) {
                said_stalled = Some(tokio::time::Instant::now());
                tracing::warn!(
                    seconds = age.as_secs(),
                    "the dispatcher has not gone through its loop for a while: deliveries \
                     are held up (by other work keeping every core busy, or by a fault \
                     named earlier in the log)"
                );
            }
        }
        let Some(wait) = metrics.dispatcher_tid().and_then(cpu_wait) else {
            continue;
        };
        let Some(ratio) = waits.sample(std::time::Instant::now(), wait) else {
            continue;
        };
        metrics.set_dispatcher_cpu_wait(ratio);
        if waits.held_back() >= HELD_BACK && due(&said_held_back) {
            said_held_back = Some(tokio::time::Instant::now());
            tracing::warn!(
                seconds = waits.held_back().as_secs(),
                ratio,
                "deliveries have been waiting for the CPU most of the time: at idle \
                 priority they get only what ingest and other programs leave \
                 (dispatch.idle_priority = false gives them a share at `nice`)"
            );
        }
    }
}

/// How long the thread `tid` of this process has waited for a core, in
/// total (Linux; `None` elsewhere or when it cannot be read).
fn cpu_wait(tid: i64) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    parse_schedstat(&text)
}

/// The second of `schedstat`'s fields: nanoseconds spent runnable but not
/// running.
fn parse_schedstat(text: &str) -> Option<Duration> {
    let ns = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The share of wall time spent waiting between two samples, and for how
/// long in a row it has been above [`WAITING`].
#[derive(Default)]
struct WaitTracker {
    last: Option<(std::time::Instant, Duration)>,
    held_back: Duration,
}

impl WaitTracker {
    fn sample(&mut self, now: std::time::Instant, waited: Duration) -> Option<f64> {
        let (at, before) = self.last.replace((now, waited))?;
        let wall = now.checked_duration_since(at)?;
        if wall.is_zero() {
            return None;
        }
        let ratio = (waited.saturating_sub(before).as_secs_f64() / wall.as_secs_f64()).min(1.0);
        if ratio > WAITING {
            self.held_back += wall;
        } else {
            self.held_back = Duration::ZERO;
        }
        Some(ratio)
    }

    fn held_back(&self) -> Duration {
        self.held_back
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_the_time_spent_waiting_for_a_core() {
        assert_eq!(
            parse_schedstat("1525270 987654321 2\n"),
            Some(Duration::from_nanos(987_654_321))
        );
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1 x 2"), None);
        // This thread's own, read the way the watchdog reads the
        // dispatcher's.
        #[cfg(target_os = "linux")]
        assert!(cpu_wait(unsafe { libc::gettid() } as i64).is_some());
    }

    #[test]
    fn a_minute_mostly_waiting_counts_as_held_back_and_a_good_sample_resets_it() {
        let mut t = WaitTracker::default();
        let start = std::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut waited = Duration::ZERO;
        assert_eq!(t.sample(at(0), waited), None, "needs two samples");
        for s in 1..=12 {
            waited += Duration::from_millis(4_000); // 4 s of every 5
            let ratio = t.sample(at(s * 5), waited).unwrap();
            assert!((ratio - 0.8).abs() < 1e-9, "{ratio}");
        }
        assert_eq!(t.held_back(), Duration::from_secs(60));
        waited += Duration::from_millis(500);
        assert!(t.sample(at(65), waited).unwrap() < 0.2);
        assert_eq!(t.held_back(), Duration::ZERO);
    }
}
