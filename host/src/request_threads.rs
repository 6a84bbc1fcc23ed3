//! The request threads: one per CPU the process may use, each running a
//! single-threaded Tokio runtime that serves the connections the accept
//! loop hands it (each new one to the thread with the fewest open); each
//! kept on its own CPU unless `pin_request_threads` is off (see `pinning`).
//!
//! A connection stays on the thread it was given: its requests, the
//! wake-ups when their events are committed and their answers never move
//! between threads. A work-stealing runtime under ingest load spent much
//! of its time doing just that, waking idle workers to steal tasks that
//! the next commit would have woken anyway (BENCHMARKS.md).

use crate::pinning::Pinning;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

/// The threads' name, as `top -H` shows it (their blocking pools' too).
const NAME: &str = "hookhost-http";

pub struct RequestThreads {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Tasks (connections) each thread runs.
    open: Arc<[AtomicUsize]>,
    next: AtomicUsize,
}

impl RequestThreads {
    /// One thread per CPU the process may use; `pin` keeps each on its own
    /// CPU when there are at least two (and as many threads as CPUs).
    pub fn start(pin: bool) -> std::io::Result<RequestThreads> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let plan = pin.then(|| Pinning::plan(n)).flatten().map(Arc::new);
        match &plan {
            Some(plan) => {
                tracing::info!(threads = n, cpus = ?plan.cpus(), "request threads, one kept on each CPU")
            }
            None => tracing::info!(threads = n, "request threads, placed by the kernel"),
        }
        let mut threads = RequestThreads {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
        };
        for i in 0..n {
            let (handle, stop, thread) = start_one(i, plan.clone())?;
            threads.handles.push(handle);
            threads.stops.push(stop);
            threads.threads.push(thread);
        }
        Ok(threads)
    }

    /// Runs `task` on the thread running the fewest tasks (of those, the
    /// next in turn): a connection stays where it is put, so where the
    /// connections that ended were matters for the next one.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let n = self.handles.len();
        let from = self.next.fetch_add(1, Ordering::Relaxed);
        let i = (from..from + n)
            .map(|k| k % n)
            .min_by_key(|&k| self.open[k].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.open[i].fetch_add(1, Ordering::Relaxed);
        let running = Running(self.open.clone(), i);
        self.handles[i].spawn(async move {
            let _running = running;
            task.await
        });
    }

    /// How many tasks each thread runs.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        self.open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops the threads; what they still run (connections past the
    /// shutdown's grace) is dropped.
    pub fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Counts a task on thread `.1` until it ends or is dropped.
struct Running(Arc<[AtomicUsize]>, usize);

impl Drop for Running {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, Ordering::Relaxed);
    }
}

type Started = (
    tokio::runtime::Handle,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
);

/// The `i`-th thread, once its runtime is up.
fn start_one(i: usize, plan: Option<Arc<Pinning>>) -> std::io::Result<Started> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(NAME.into())
        .spawn(move || {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all().thread_name(NAME);
            if let Some(plan) = plan.clone() {
                // The blocking pool's threads, started from this one.
                builder.on_thread_start(move || plan.release_current());
            }
            let rt = match builder.build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if let Some(plan) = &plan {
                plan.pin_current(i);
            }
            let _ = ready_tx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                // The store's answers to this thread's requests, all of a
                // commit's in one wake-up.
                let answers = tokio::spawn(crate::store::Answers::open_here().run());
                let _ = stop_rx.await;
                answers.abort();
            });
        })?;
    let handle = ready_rx
        .recv()
        .map_err(|_| std::io::Error::other("a request thread ended while starting"))??;
    Ok((handle, stop_tx, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_task_goes_to_the_thread_running_the_fewest() {
        let threads = RequestThreads::start(false).unwrap();
        let n = threads.handles.len();
        // Two tasks on each thread, each saying where it runs and waiting.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let spawn = |threads: &RequestThreads, k: usize| {
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
            let started = started_tx.clone();
            threads.spawn(async move {
                let _ = started.send((k, std::thread::current().id()));
                let _ = end_rx.await;
            });
            end_tx
        };
        let mut ends: Vec<_> = (0..2 * n).map(|k| Some(spawn(&threads, k))).collect();
        let mut ran_on = vec![None; 2 * n];
        for _ in 0..2 * n {
            let (k, on) = started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            ran_on[k] = Some(on);
        }
        assert_eq!(threads.open(), vec![2; n]);
        // The two tasks of the first one's thread end.
        let first = ran_on[0].unwrap();
        for k in 0..2 * n {
            if ran_on[k] == Some(first) {
                ends[k] = None;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while threads.open().iter().sum::<usize>() != 2 * n - 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", threads.open());
            std::thread::sleep(Duration::from_millis(5));
        }
        // Both new tasks go there, not one to each thread in turn.
        ends.push(Some(spawn(&threads, 2 * n)));
        ends.push(Some(spawn(&threads, 2 * n + 1)));
        for _ in 0..2 {
            let (_, on) = started_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(on, first);
        }
        assert_eq!(threads.open(), vec![2; n]);
        drop(ends);
        threads.stop();
    }
}
