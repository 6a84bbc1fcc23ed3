//! Group commit on one write connection. Operations are queued; the thread
//! that queues one and finds no commit running commits the whole queue in
//! one transaction (a request's own thread, usually: no hand-off to another
//! thread and back), and threads that queue meanwhile leave theirs to it.
//! Plugin threads, which run at a lower priority, hand theirs to the
//! `store-writer` thread instead, so a batch of events never waits on a
//! niced thread. Each operation runs in
//! its own savepoint (or is a single statement, which SQLite undoes by
//! itself), so one failing operation does not undo its neighbours;
//! its caller hears back only after the batch's COMMIT succeeded.

use super::{StoreError, StoreOptions};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// One unit of work for the writer.
pub(super) trait WriteOp: Send {
    /// `Ok(false)`: this operation failed on its own and its savepoint is
    /// rolled back; `Err`: the storage failed and the whole batch with it.
    fn apply(&mut self, c: &Connection) -> rusqlite::Result<bool>;
    /// Whether the operation needs its own savepoint. An operation whose
    /// only change is one SQL statement does not: SQLite undoes a failed
    /// statement by itself, and a savepoint per event costs a copy of every
    /// page it touches.
    fn guarded(&self) -> bool;
    fn complete(self: Box<Self>, committed: Result<(), StoreError>);
}

pub(super) struct Op<T, F> {
    pub f: Option<F>,
    pub result: Option<Result<T, StoreError>>,
    pub reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
    pub guarded: bool,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, c: &Connection) -> rusqlite::Result<bool> {
        let f = self.f.take().expect("applied once");
        let r = f(c);
        // A storage failure (disk full, I/O) fails the whole batch; a
        // domain error (quota, constraint) fails this operation only.
        if let Err(StoreError::Sqlite(e)) = &r {
            if is_fatal(e) {
                return Err(clone_err(e));
            }
        }
        let ok = r.is_ok();
        self.result = Some(r);
        Ok(ok)
    }

    fn guarded(&self) -> bool {
        self.guarded
    }

    fn complete(self: Box<Self>, committed: Result<(), StoreError>) {
        let r = match committed {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Unavailable("operation not applied".into()))),
            Err(e) => Err(e),
        };
        let _ = self.reply.send(r);
    }
}

fn is_fatal(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DiskFull
                | SystemIoFailure
                | ReadOnly
                | CannotOpen
                | DatabaseBusy
                | DatabaseLocked
                | DatabaseCorrupt
                | NotADatabase
                | FileLockingProtocolFailed
                | PermissionDenied
        )
    )
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(f, m) => rusqlite::Error::SqliteFailure(*f, m.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(other.to_string()),
        ),
    }
}

/// What the committer owns: the write connection and the checks around it.
pub(super) struct Committer {
    pub path: PathBuf,
    pub opts: StoreOptions,
    pub conn: Option<Connection>,
    pub identity: Option<(u64, u64)>,
    pub last_open_try: Instant,
}

/// Operations waiting for the next commit, and whether the store is closed.
#[derive(Default)]
pub(super) struct Queue {
    pub ops: Vec<Box<dyn WriteOp>>,
    pub closed: bool,
}

/// Group commit without a hand-off: whoever submits an operation and finds
/// no commit running commits everything queued (its own operation and the
/// others'), then looks again for operations queued meanwhile. A submitter
/// that finds a commit running leaves its operation to that committer.
pub(super) struct Shared {
    pub queue: Mutex<Queue>,
    pub committer: Mutex<Committer>,
}

impl Shared {
    /// Commits until the queue is empty or another thread is committing.
    pub fn drive(&self) {
        loop {
            let mut c = match self.committer.try_lock() {
                Ok(c) => c,
                // A committer that panicked left the connection as SQLite
                // left it (the transaction rolls back at the next BEGIN's
                // failure or is committed whole): keep committing.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let batch = {
                let mut q = self.queue.lock().unwrap();
                let n = q.ops.len().min(c.opts.max_batch);
                q.ops.drain(..n).collect::<Vec<_>>()
            };
            if batch.is_empty() {
                drop(c);
                // An operation queued after the queue was read and before the
                // lock was released found the lock taken: it is ours.
                if self.queue.lock().unwrap().ops.is_empty() {
                    return;
                }
                continue;
            }
            c.commit(batch);
        }
    }
}

impl Committer {
    fn commit(&mut self, mut batch: Vec<Box<dyn WriteOp>>) {
        // The database file must still be the one we opened: writing to
        // a deleted file would acknowledge events that are already lost.
        if self.conn.is_some() && file_identity(&self.path) != self.identity {
            tracing::error!(path = %self.path.display(), "database file vanished or was replaced; refusing writes until restart");
            self.conn = None;
        }
        if self.conn.is_none()
            && self.identity.is_none()
            && self.last_open_try.elapsed() > Duration::from_millis(500)
        {
            // Never opened (the store was unavailable at start): try again.
            self.last_open_try = Instant::now();
            if let Ok(c) = super::init(&self.path, &self.opts) {
                self.identity = file_identity(&self.path);
                self.conn = Some(c);
            }
        }
        let Some(c) = self.conn.as_mut() else {
            for op in batch {
                op.complete(Err(StoreError::Unavailable(
                    "database is not available".into(),
                )));
            }
            return;
        };
        let outcome = commit_batch(c, &mut batch);
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, ops = batch.len(), "store batch failed");
        }
        for op in batch {
            op.complete(outcome.clone());
        }
    }
}

pub(super) fn file_identity_of(p: &std::path::Path) -> Option<(u64, u64)> {
    file_identity(p)
}

/// The writer thread commits for submitters that must not (threads with a
/// lowered priority): they queue and kick it.
pub(super) fn run_writer(shared: Arc<Shared>, kicks: mpsc::Receiver<()>) {
    while kicks.recv().is_ok() {
        while kicks.try_recv().is_ok() {}
        shared.drive();
    }
    shared.drive();
}

fn commit_batch(c: &mut Connection, batch: &mut [Box<dyn WriteOp>]) -> Result<(), StoreError> {
    let run = |c: &mut Connection, batch: &mut [Box<dyn WriteOp>]| -> rusqlite::Result<()> {
        c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for op in batch.iter_mut() {
            if !op.guarded() {
                op.apply(c)?;
                continue;
            }
            c.prepare_cached("SAVEPOINT op")?.execute([])?;
            if !op.apply(c)? {
                c.prepare_cached("ROLLBACK TO op")?.execute([])?;
            }
            c.prepare_cached("RELEASE op")?.execute([])?;
        }
        c.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    };
    match run(c, batch) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = c.execute_batch("ROLLBACK");
            Err(StoreError::from_sqlite(e))
        }
    }
}

#[cfg(unix)]
fn file_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|_| (0, 0))
}
