//! The single writer: one thread owns the write connection and commits the
//! operations it receives in batches (group commit). Each operation runs in
//! its own savepoint (or is a single statement, which SQLite undoes by
//! itself), so one failing operation does not undo its neighbours;
//! its caller hears back only after the batch's COMMIT succeeded.

use super::answers::{self, ReturnAddress};
use super::{StoreError, StoreOptions};
use crate::metrics::{Fixed, LATENCY_BUCKETS};
use crate::repeated::Repeated;
use rusqlite::{CachedStatement, Connection, Statement};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// One unit of work for the writer.
pub(super) trait WriteOp: Send {
    /// `Ok(false)`: this operation failed on its own and its savepoint is
    /// rolled back; `Err`: the storage failed and the whole batch with it.
    fn apply(&mut self, b: &mut Batch<'_>) -> rusqlite::Result<bool>;
    /// Whether the operation needs its own savepoint. An operation whose
    /// only change is one SQL statement does not: SQLite undoes a failed
    /// statement by itself, and a savepoint per event costs a copy of every
    /// page it touches.
    fn guarded(&self) -> bool;
    /// Where its caller's thread wants the answer (see `answers`), taken
    /// once.
    fn return_address(&mut self) -> Option<ReturnAddress>;
    fn complete(self: Box<Self>, committed: Result<(), StoreError>);
}

/// The batch being applied: the write connection, and the statements its
/// operations asked for, each taken from the connection's statement cache
/// once per batch instead of once per operation (a cache lookup hashes the
/// statement's text, twice: out and back in).
pub(super) struct Batch<'c> {
    pub conn: &'c Connection,
    kept: Vec<(&'static str, CachedStatement<'c>)>,
}

impl<'c> Batch<'c> {
    pub(super) fn new(conn: &'c Connection) -> Self {
        Batch {
            conn,
            kept: Vec::new(),
        }
    }

    /// `sql` prepared, for as long as the batch: run it as often as needed
    /// (rusqlite resets a statement after each `execute`).
    pub fn statement(&mut self, sql: &'static str) -> rusqlite::Result<&mut Statement<'c>> {
        let i = match self.kept.iter().position(|(k, _)| *k == sql) {
            Some(i) => i,
            None => {
                self.kept.push((sql, self.conn.prepare_cached(sql)?));
                self.kept.len() - 1
            }
        };
        Ok(&mut self.kept[i].1)
    }
}

/// An operation from a closure over the batch (see `Store::submit_op`).
pub(super) struct Op<T, F> {
    pub f: Option<F>,
    pub result: Option<Result<T, StoreError>>,
    pub reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
    pub guarded: bool,
    pub answer_to: Option<ReturnAddress>,
}

impl<T, F> WriteOp for Op<T, F>
where
    T: Send,
    F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, b: &mut Batch<'_>) -> rusqlite::Result<bool> {
        let f = self.f.take().expect("applied once");
        let r = f(b);
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

    fn return_address(&mut self) -> Option<ReturnAddress> {
        self.answer_to.take()
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

pub(super) struct Writer {
    pub path: PathBuf,
    pub opts: StoreOptions,
    pub rx: mpsc::Receiver<Box<dyn WriteOp>>,
    pub stats: Arc<Stats>,
    /// Failed batches (a full disk) are logged when they start failing and
    /// when they work again, not once each.
    pub trouble: Repeated,
}

/// What the writer's batches take: a slow disk shows here first.
pub(super) struct Stats {
    pub batch_seconds: Fixed,
    pub batch_writes: Fixed,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            batch_seconds: Fixed::new(
                "hookhost_store_batch_seconds",
                "Time to apply and commit one batch of the store's writes, fsync included.",
                LATENCY_BUCKETS,
                1e9,
            ),
            batch_writes: Fixed::new(
                "hookhost_store_batch_writes",
                "Writes (events, delivery changes, key-value sets) committed together in one batch.",
                &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0],
                1.0,
            ),
        }
    }
}

impl Writer {
    pub fn run(self, mut conn: Option<Connection>) {
        let mut identity = conn.as_ref().and_then(|_| file_identity(&self.path));
        let mut last_open_try = Instant::now();
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.opts.max_batch {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            // The database file must still be the one we opened: writing to
            // a deleted file would acknowledge events that are already lost.
            if conn.is_some() && file_identity(&self.path) != identity {
                tracing::error!(path = %self.path.display(), "database file vanished or was replaced; refusing writes until restart");
                conn = None;
            }
            if conn.is_none()
                && identity.is_none()
                && last_open_try.elapsed() > Duration::from_millis(500)
            {
                // Never opened (the store was unavailable at start): try again.
                last_open_try = Instant::now();
                if let Ok(c) = super::init(&self.path, &self.opts) {
                    identity = file_identity(&self.path);
                    conn = Some(c);
                }
            }
            let Some(c) = conn.as_mut() else {
                self.trouble.failed(&"the database is not available");
                for op in batch {
                    op.complete(Err(StoreError::Unavailable(
                        "database is not available".into(),
                    )));
                }
                continue;
            };
            let started = Instant::now();
            // A panic in an operation (a bug) fails its batch, not the
            // writer: without this every later write would answer 503
            // until a restart.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                commit_batch(c, &mut batch)
            }))
            .unwrap_or_else(|_| {
                let _ = c.execute_batch("ROLLBACK");
                tracing::error!(
                    ops = batch.len(),
                    "a store operation panicked; its batch was rolled back"
                );
                Err(StoreError::Unavailable(
                    "internal error in the store writer".into(),
                ))
            });
            self.stats
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            self.stats.batch_writes.observe(batch.len() as f64);
            match &outcome {
                Ok(()) => self.trouble.succeeded(),
                Err(e) => {
                    tracing::debug!(error = %e, ops = batch.len(), "store batch failed");
                    self.trouble.failed(e);
                }
            }
            answers::answer(batch, outcome);
        }
    }
}

fn commit_batch(c: &mut Connection, batch: &mut [Box<dyn WriteOp>]) -> Result<(), StoreError> {
    let run = |c: &mut Connection, batch: &mut [Box<dyn WriteOp>]| -> rusqlite::Result<()> {
        c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut b = Batch::new(c);
        for op in batch.iter_mut() {
            if !op.guarded() {
                op.apply(&mut b)?;
                continue;
            }
            b.statement("SAVEPOINT op")?.execute([])?;
            if !op.apply(&mut b)? {
                b.statement("ROLLBACK TO op")?.execute([])?;
            }
            b.statement("RELEASE op")?.execute([])?;
        }
        // Back into the cache before the commit.
        drop(b);
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

#[cfg(test)]
mod tests {
    use crate::config::StoreConfig;
    use crate::store::{NewEvent, Store, StoreError};

    fn event(key: &str) -> NewEvent {
        NewEvent::sample("t", key)
    }

    #[test]
    fn an_operation_that_panics_fails_its_batch_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), (&StoreConfig::default()).into());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let panicked = store.write_blocking(|c| -> Result<(), StoreError> {
            c.execute("INSERT INTO meta (key, value) VALUES ('half', 1)", [])?;
            panic!("a bug in an operation");
        });
        assert!(
            matches!(&panicked, Err(StoreError::Unavailable(m)) if m.contains("internal error")),
            "{panicked:?}"
        );
        // What it wrote before the panic was rolled back; the writer still
        // commits.
        let stored = rt.block_on(store.ingest(event("after")));
        assert!(stored.is_ok(), "{stored:?}");
        let half: i64 = store
            .read(|c| {
                Ok(
                    c.query_row("SELECT count(*) FROM meta WHERE key = 'half'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .unwrap();
        assert_eq!(half, 0);
        assert_eq!(store.events_after(None, 0, 10).unwrap().len(), 1);
        store.close();
    }
}
