//! The request threads: one per CPU the process may use, each running a
//! single-threaded Tokio runtime that serves the connections the accept
//! loop hands it, in turn; each kept on its own CPU unless
//! `pin_request_threads` is off (see `pinning`).
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

/// The threads' name, as `top -H` shows it (their blocking pools' too).
const NAME: &str = "hookhost-http";

pub struct RequestThreads {
    handles: Vec<tokio::runtime::Handle>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
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

    /// Runs `task` on the next thread in turn.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
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
