//! The writer's answers, carried back to the thread that asked in one
//! wake-up per batch.
//!
//! Waking a task on another thread's single-threaded runtime costs a system
//! call (the runtime's eventfd) for every task woken, and under ingest load
//! the writer answered ~20 waiting requests per commit, one call each. A
//! thread that asks for writes from its runtime can instead open its
//! [`Answers`]: the writer hands it all of a batch's answers for that thread
//! at once, and a task on the thread completes them there, where waking the
//! waiting requests is a push onto the local run queue.

use super::writer::WriteOp;
use super::StoreError;
use std::cell::RefCell;
use tokio::sync::mpsc;

type Answered = (Vec<Box<dyn WriteOp>>, Result<(), StoreError>);

/// Where the writer sends the answers for one thread.
#[derive(Clone)]
pub(super) struct ReturnAddress(mpsc::UnboundedSender<Answered>);

thread_local! {
    static HERE: RefCell<Option<ReturnAddress>> = const { RefCell::new(None) };
}

/// The writer's answers for the thread that opened them.
pub struct Answers(mpsc::UnboundedReceiver<Answered>);

impl Answers {
    /// Makes the writer send the answers to writes asked for on this
    /// thread to the returned queue, which a task on this thread's
    /// single-threaded runtime must then run ([`Answers::run`]): until it
    /// runs, those writes wait. Writes asked for on other threads, or once
    /// the queue is dropped, are answered directly.
    pub fn open_here() -> Answers {
        let (tx, rx) = mpsc::unbounded_channel();
        HERE.with(|h| *h.borrow_mut() = Some(ReturnAddress(tx)));
        Answers(rx)
    }

    /// Completes the answers as they arrive, on this thread.
    pub async fn run(mut self) {
        while let Some((ops, outcome)) = self.0.recv().await {
            complete_all(ops, &outcome);
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        // Answers sent here already are completed; later ones find the
        // queue closed and are answered directly.
        self.0.close();
        while let Ok((ops, outcome)) = self.0.try_recv() {
            complete_all(ops, &outcome);
        }
    }
}

/// Where the calling thread's answers go, if it opened [`Answers`].
pub(super) fn here() -> Option<ReturnAddress> {
    HERE.try_with(|h| h.borrow().clone()).ok().flatten()
}

fn complete_all(ops: Vec<Box<dyn WriteOp>>, outcome: &Result<(), StoreError>) {
    for op in ops {
        op.complete(outcome.clone());
    }
}

/// Answers one batch: the operations asked for on a thread that opened
/// [`Answers`] through its queue, all of one thread's in one message; the
/// rest directly.
pub(super) fn answer(batch: Vec<Box<dyn WriteOp>>, outcome: Result<(), StoreError>) {
    let mut by_thread: Vec<(ReturnAddress, Vec<Box<dyn WriteOp>>)> = Vec::new();
    for mut op in batch {
        let Some(to) = op.return_address() else {
            op.complete(outcome.clone());
            continue;
        };
        match by_thread.iter_mut().find(|(a, _)| a.0.same_channel(&to.0)) {
            Some((_, ops)) => ops.push(op),
            None => by_thread.push((to, vec![op])),
        }
    }
    for (to, ops) in by_thread {
        if let Err(mpsc::error::SendError((ops, outcome))) = to.0.send((ops, outcome.clone())) {
            // The thread's queue is gone: its callers are gone too, or
            // waiting on a runtime that is shutting down.
            complete_all(ops, &outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::StoreConfig;
    use crate::store::{Answers, NewEvent, Store};

    fn event(key: &str) -> NewEvent {
        NewEvent::sample("t", key)
    }

    #[test]
    fn writes_asked_for_on_a_thread_with_answers_are_answered_there_and_directly_once_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let written = rt.block_on(async {
            let answers = Answers::open_here();
            // Asked for before the queue runs: the answer waits for it.
            let first = tokio::spawn({
                let store = store.clone();
                async move { store.ingest(event("first")).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(!first.is_finished(), "answered before the queue ran");
            let running = tokio::spawn(answers.run());
            let first = first.await.unwrap();
            let many: Vec<_> = (0..50)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.ingest(event(&format!("e{i}"))).await })
                })
                .collect();
            let mut ok = usize::from(first.is_ok());
            for w in many {
                ok += usize::from(w.await.unwrap().is_ok());
            }
            // Once the queue is gone, writes are answered directly.
            running.abort();
            let _ = running.await;
            let after = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                store.ingest(event("after")),
            )
            .await
            .expect("answered without the queue");
            ok + usize::from(after.is_ok())
        });
        assert_eq!(written, 52);
        assert_eq!(store.events_after(None, 0, 100).unwrap().len(), 52);
        store.close();
    }
}
