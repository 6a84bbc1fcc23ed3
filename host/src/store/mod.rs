//! The durable store: inbox, delivery ledger, sends and plugin key-value in
//! one SQLite database (WAL). One writer thread owns the write connection;
//! reads use their own connections. An event that received 200 is in the
//! inbox, committed.

mod answers;
mod inbox;
mod kv;
mod ledger;
mod pressure;
mod requeue;
pub mod retention;
mod schema;
mod sends;
pub mod serve_lock;
mod wal_writes;
mod writer;

pub use answers::Answers;
pub use inbox::{
    get as get_event, heads as event_heads, list as list_events, list_last as list_last_events,
    EventHead, EventRow, IngestOutcome, NewEvent,
};
pub use kv::{
    entries as kv_entries, remove as kv_remove, usage as kv_usage, value as kv_value,
    Entry as KvEntry, KvError, Scope as KvScope, Selection as KvSelection, Usage as KvUsage,
};
pub use sends::{NewSend, SendState};

pub fn kv_scope<'a>(tenant: &'a str, plugin: &'a str) -> KvScope<'a> {
    KvScope { tenant, plugin }
}
pub use ledger::{
    delivery_page, list_deliveries, DeliveryFilter, DeliveryOutcome, DeliveryPage, DeliveryRow,
    DueDelivery, LaneWalk, NewDelivery, DELIVERY_STATES,
};
pub use requeue::{
    delivered_plugins, replay, replay_many, settle_dead, settle_dead_all, DeadFilter, DeadLetter,
    ReplayError, Replayed,
};

use crate::config::{StoreConfig, Synchronous};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::Duration;
use writer::{Batch, Op, WriteOp, Writer};

/// Where a write's result arrives once its batch is committed.
type Reply<T> = tokio::sync::oneshot::Receiver<Result<T, StoreError>>;

/// A write's answer when its reply was dropped unanswered: the writer is
/// gone.
fn writer_stopped<T>(_: tokio::sync::oneshot::error::RecvError) -> Result<T, StoreError> {
    Err(StoreError::Unavailable("writer stopped".into()))
}

/// The store's file in the data directory.
pub const STORE_FILE: &str = "hookhost.sqlite";
/// The folder of the data directory that holds each plugin's SQL database,
/// as `TENANT/PLUGIN.sqlite`.
pub const PLUGIN_DATA_DIR: &str = "plugin-data";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Sqlite(Arc<rusqlite::Error>),
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

impl StoreError {
    fn from_sqlite(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub synchronous: Synchronous,
    pub max_batch: usize,
    pub max_size_mb: u64,
}

impl From<&StoreConfig> for StoreOptions {
    fn from(c: &StoreConfig) -> Self {
        StoreOptions {
            synchronous: c.synchronous,
            max_batch: c.max_batch.max(1),
            max_size_mb: c.max_size_mb,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open_connection(path: &Path, opts: &StoreOptions, write: bool) -> rusqlite::Result<Connection> {
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // The write connection gathers its WAL writes (`wal_writes`); readers
    // never write the WAL.
    let c = if write && wal_writes::register() {
        Connection::open_with_flags_and_vfs(path, flags, wal_writes::NAME)?
    } else {
        Connection::open_with_flags(path, flags)?
    };
    // Every statement the store runs stays prepared (rusqlite keeps 16 by
    // default, fewer than the writer uses, and re-parses what it evicted).
    c.set_prepared_statement_cache_capacity(64);
    c.busy_timeout(Duration::from_secs(5))?;
    if write {
        c.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match opts.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        c.pragma_update(None, "synchronous", sync)?;
        if opts.max_size_mb > 0 {
            let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (opts.max_size_mb as i64 * 1024 * 1024) / page.max(512);
            c.pragma_update(None, "max_page_count", pages)?;
        }
    }
    c.pragma_update(None, "foreign_keys", "ON")?;
    Ok(c)
}

/// Creates the folder and the database, migrates it, and requeues the
/// deliveries that were running when the process stopped.
fn init(path: &Path, opts: &StoreOptions) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let mut c = open_connection(path, opts, true)?;
    schema::migrate(&mut c, path)?;
    ledger::requeue_running(&c)?;
    Ok(c)
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    opts: StoreOptions,
    /// Shared for sending (a sender never waits for another, so a thread
    /// at idle priority cannot hold up a request here); taken by `close`.
    tx: RwLock<Option<mpsc::Sender<Box<dyn WriteOp>>>>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<writer::Stats>,
    /// Counts the operator's changes to the ledger made through this
    /// handle (replays, dead letters retried or discarded).
    ledger_changes: std::sync::atomic::AtomicU64,
    /// Webhook events waiting for their commit.
    pressure: pressure::Pressure,
}

impl Store {
    /// Opens (creating if needed) `DIR/hookhost.sqlite` and starts the writer.
    /// When the database cannot be opened the store still starts and answers
    /// every write with `Unavailable`, so the server stays up and says 503.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Store {
        let path = data_dir.join(STORE_FILE);
        let conn = init(&path, &opts);
        let conn = match conn {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "store unavailable at start; writes answer 503");
                None
            }
        };
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(writer::Stats::default());
        let w = Writer {
            path: path.clone(),
            opts: opts.clone(),
            rx,
            stats: stats.clone(),
            trouble: crate::repeated::Repeated::new("store writes"),
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run(conn))
            .expect("spawn store writer");
        Store {
            inner: Arc::new(Inner {
                path,
                opts,
                tx: RwLock::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer: Mutex::new(Some(handle)),
                stats,
                ledger_changes: Default::default(),
                pressure: Default::default(),
            }),
        }
    }

    pub(crate) fn submit<T, F>(&self, f: F) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_op(move |b: &mut Batch<'_>| f(b.conn), true)
    }

    /// Queues `f` for the writer's next batch, where it may run statements
    /// the batch keeps prepared ([`Batch::statement`]); `guarded` gives it
    /// a savepoint of its own.
    fn submit_op<T, F>(&self, f: F, guarded: bool) -> Reply<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let op: Box<dyn WriteOp> = Box::new(Op {
            f: Some(f),
            result: None,
            reply,
            guarded,
            answer_to: answers::here(),
        });
        let sent = match self.inner.tx.read().unwrap().as_ref() {
            Some(tx) => tx.send(op).map_err(|e| e.0),
            None => Err(op),
        };
        if let Err(op) = sent {
            op.complete(Err(StoreError::Unavailable("store is shut down".into())));
        }
        rx
    }

    /// Runs `f` in the writer's next batch; resolves after COMMIT.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f).await.unwrap_or_else(writer_stopped)
    }

    /// [`Store::write`] for an `f` that changes the database with at most one
    /// statement: it runs without a savepoint of its own.
    pub(crate) async fn write_statement<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_batch_statement(move |b: &mut Batch<'_>| f(b.conn))
            .await
    }

    /// [`Store::write_statement`] for an `f` that runs a statement the
    /// batch keeps prepared ([`Batch::statement`]).
    async fn write_batch_statement<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Batch<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_op(f, false)
            .await
            .unwrap_or_else(writer_stopped)
    }

    /// The same as [`Store::write`] for threads outside the async runtime.
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f)
            .blocking_recv()
            .unwrap_or_else(writer_stopped)
    }

    /// How many times an operator changed the ledger through this store
    /// (see [`Store::replay`] and [`Store::settle_dead`]): what the
    /// dispatcher read of a lane before is stale once this moves.
    pub fn ledger_changes(&self) -> u64 {
        self.inner
            .ledger_changes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Counts an operator's change to the ledger, once its write has
    /// returned `r` (committed or not: a pass reading the lane again costs
    /// little).
    fn ledger_changed<T>(&self, r: T) -> T {
        self.inner
            .ledger_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }

    /// Runs `f` on a read connection (blocking; call from a blocking thread).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.inner.readers.lock().unwrap().pop();
        let conn = match conn {
            Some(c) => c,
            None => open_connection(&self.inner.path, &self.inner.opts, false)?,
        };
        let r = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap();
        if pool.len() < 8 {
            pool.push(conn);
        }
        r
    }

    /// Appends the writer's histograms (each batch's time and size) to a
    /// Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        self.inner.stats.batch_seconds.render(out);
        self.inner.stats.batch_writes.render(out);
    }

    /// A real write, for readiness checks.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.write(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('probe', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Stops the writer after the operations already queued are committed.
    pub fn close(&self) {
        self.inner.tx.write().unwrap().take();
        if let Some(h) = self.inner.writer.lock().unwrap().take() {
            let _ = h.join();
        }
    }
}

fn open_existing(data_dir: &Path, write: bool) -> Result<Connection, StoreError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Err(StoreError::Unavailable(format!(
            "no store at {}",
            path.display()
        )));
    }
    let opts = StoreOptions {
        synchronous: Synchronous::Full,
        max_batch: 1,
        max_size_mb: 0,
    };
    let c = open_connection(&path, &opts, write)?;
    let version = schema::version(&c)?;
    if version == 0 {
        return Err(StoreError::Unavailable(format!(
            "{} is not a hookhost store, or its server has not created it yet",
            path.display()
        )));
    }
    if version > schema::latest() {
        return Err(schema::newer(&path, version));
    }
    if !write && version < schema::latest() {
        // A read-only command does not upgrade the store, and reads what
        // only this build's schema has.
        return Err(schema::older(&path, version));
    }
    Ok(c)
}

/// Refuses a store that a newer hookhost has upgraded (see
/// [`schema::newer`]); a missing or unreadable store is left to
/// [`Store::open`], which keeps the server up and answers 503.
pub fn check_not_newer(data_dir: &Path) -> Result<(), StoreError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(());
    }
    let Ok(c) = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return Ok(());
    };
    match schema::version(&c) {
        Ok(v) if v > schema::latest() => Err(schema::newer(&path, v)),
        _ => Ok(()),
    }
}

/// Opens an existing store for the offline CLI commands that change the
/// ledger (replay, retry). SQLite serialises them with a running server.
pub fn open_for_update(data_dir: &Path) -> Result<Connection, StoreError> {
    let mut c = open_existing(data_dir, true)?;
    schema::migrate(&mut c, &data_dir.join(STORE_FILE))?;
    Ok(c)
}

/// Copies the store and every plugin's SQL database (`plugin-data/`) of
/// `data_dir` into `dest` (a new or empty folder), each file a consistent
/// snapshot taken with `VACUUM INTO` on a read-only connection, so a running
/// server is neither stopped nor held up. The store goes first, so the
/// plugins' databases hold at least what its ledger marks done: after a
/// restore, deliveries are run again rather than lost. The copy is made in
/// `.NAME.partial` beside `dest`, synced, and renamed to `dest` only when
/// whole: a backup that fails (a full disk) or is killed never leaves a
/// folder that looks like a backup. Returns the files written.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<Vec<(PathBuf, u64)>, StoreError> {
    let unavailable = |what: String| StoreError::Unavailable(what);
    if dest.exists()
        && std::fs::read_dir(dest)
            .map_err(|e| unavailable(format!("{}: {e}", dest.display())))?
            .next()
            .is_some()
    {
        return Err(StoreError::Invalid(format!(
            "{} is not empty: back up into a new folder",
            dest.display()
        )));
    }
    let store = data_dir.join(STORE_FILE);
    if !store.exists() {
        return Err(unavailable(format!("no store at {}", store.display())));
    }
    let name = dest
        .file_name()
        .ok_or_else(|| StoreError::Invalid(format!("{}: not a folder name", dest.display())))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", parent.display())))?;
    let staging = parent.join(format!(".{}.partial", name.to_string_lossy()));
    // Left by a backup that was killed: ours, by its name.
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| unavailable(format!("cannot remove {}: {e}", staging.display())))?;
    }
    let copied = copy_databases(data_dir, &staging).and_then(|files| {
        if dest.exists() {
            // Empty (checked above): rename replaces it.
            std::fs::remove_dir(dest)
                .map_err(|e| unavailable(format!("cannot replace {}: {e}", dest.display())))?;
        }
        std::fs::rename(&staging, dest)
            .map_err(|e| unavailable(format!("cannot rename to {}: {e}", dest.display())))?;
        sync_dir(&parent)?;
        Ok(files
            .into_iter()
            .map(|(rel, bytes)| (dest.join(rel), bytes))
            .collect())
    });
    if copied.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    copied
}

/// The databases of `data_dir` copied into `to`, each synced; returns their
/// paths relative to it and sizes.
fn copy_databases(data_dir: &Path, to: &Path) -> Result<Vec<(PathBuf, u64)>, StoreError> {
    let unavailable = |what: String| StoreError::Unavailable(what);
    let mut sources = vec![PathBuf::from(STORE_FILE)];
    let plugins = data_dir.join(PLUGIN_DATA_DIR);
    if let Ok(tenants) = std::fs::read_dir(&plugins) {
        for tenant in tenants.flatten() {
            for file in std::fs::read_dir(tenant.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if file.path().extension().is_some_and(|x| x == "sqlite") {
                    sources.push(file.path().strip_prefix(data_dir).unwrap().to_path_buf());
                }
            }
        }
    }
    sources[1..].sort();
    let mut written = Vec::new();
    let mut dirs = std::collections::BTreeSet::new();
    for rel in sources {
        let (from, target) = (data_dir.join(&rel), to.join(&rel));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
            // The folder and those above it up to `to`: each holds a new entry.
            dirs.extend(
                dir.ancestors()
                    .take_while(|a| a.starts_with(to))
                    .map(Path::to_path_buf),
            );
        }
        let c = Connection::open_with_flags(&from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.busy_timeout(Duration::from_secs(5))?;
        c.execute("VACUUM INTO ?1", [target.to_string_lossy()])
            .map_err(|e| unavailable(format!("copying {}: {e}", from.display())))?;
        let file = std::fs::File::open(&target)
            .and_then(|f| f.sync_all().map(|()| f))
            .map_err(|e| unavailable(format!("cannot sync {}: {e}", target.display())))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        written.push((rel, bytes));
    }
    // Deepest first: each folder's entries are durable before its parent's.
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    Ok(written)
}

/// Makes a folder's entries (files created or renamed in it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::Unavailable(format!("cannot sync {}: {e}", dir.display())))
}

/// Opens an existing store read-only, for the offline CLI commands. Its
/// schema must be this build's: an older store is upgraded by this
/// version's server (or a command that changes the store), not here.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, StoreError> {
    open_existing(data_dir, false)
}
