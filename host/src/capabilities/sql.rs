//! `sql`: a SQLite database private to (tenant, plugin), in its own file.
//! The authorizer refuses everything that could leave that file (ATTACH,
//! extensions, PRAGMAs, VACUUM INTO); size, rows and time are capped.

use super::{Action, Capabilities};
use crate::bindings::sql::{Host, Rows, Value};
use crate::bindings::types::HostError;
use crate::config::Grant;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const MAX_STATEMENT: usize = 64 * 1024;
const MAX_RESULT_BYTES: usize = 8 * 1024 * 1024;

/// Connections idle between deliveries, per (database file, size cap):
/// opening one costs more than most deliveries' statements.
#[derive(Default)]
pub struct SqlPool {
    idle: Mutex<HashMap<(PathBuf, u64), Vec<Connection>>>,
}

/// Idle connections kept per plugin database.
const IDLE_PER_DB: usize = 4;

impl SqlPool {
    fn take(&self, path: &Path, max_mb: u64) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&(path.to_path_buf(), max_mb))?;
        if !path.exists() {
            // The file was removed under us: a kept connection would write
            // to the unlinked file. Start again from the path.
            list.clear();
            return None;
        }
        list.pop()
    }

    fn put(&self, path: PathBuf, max_mb: u64, c: Connection) {
        // Nothing a delivery left behind reaches the next one: an open
        // transaction is rolled back, or the connection is closed. So is
        // one holding TEMP tables, views or triggers, which live as long
        // as the connection and would otherwise carry one delivery's data
        // (or a trigger's side effects) into the next.
        c.progress_handler(0, None::<fn() -> bool>);
        if !c.is_autocommit() && (c.execute_batch("ROLLBACK").is_err() || !c.is_autocommit()) {
            return;
        }
        let temp: rusqlite::Result<i64> = c
            .prepare_cached("SELECT count(*) FROM temp.sqlite_master")
            .and_then(|mut st| st.query_row([], |r| r.get(0)));
        if temp != Ok(0) {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry((path, max_mb)).or_default();
        if list.len() < IDLE_PER_DB {
            list.push(c);
        }
    }
}

/// The plugin's database file, opened (or taken from the pool) on first use.
pub struct SqlDb {
    path: PathBuf,
    pool: Option<Arc<SqlPool>>,
    conn: Option<(Connection, u64)>,
}

impl SqlDb {
    /// A database whose connection is closed after the delivery.
    pub fn new(path: PathBuf) -> SqlDb {
        SqlDb {
            path,
            pool: None,
            conn: None,
        }
    }

    /// A database whose connection returns to `pool` after the delivery.
    pub fn pooled(path: PathBuf, pool: Arc<SqlPool>) -> SqlDb {
        SqlDb {
            path,
            pool: Some(pool),
            conn: None,
        }
    }

    fn open(&mut self, max_mb: u64, deadline: Instant) -> Result<&Connection, HostError> {
        if self.conn.is_none() {
            let pooled = self.pool.as_ref().and_then(|p| p.take(&self.path, max_mb));
            let c = match pooled {
                Some(c) => c,
                None => open_until(&self.path, max_mb, deadline).map_err(|e| {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open plugin database");
                    HostError::Unavailable("database unavailable".into())
                })?,
            };
            self.conn = Some((c, max_mb));
        }
        let (c, _) = self.conn.as_ref().expect("opened above");
        // Long statements stop at the delivery's deadline.
        c.progress_handler(10_000, Some(move || Instant::now() > deadline));
        Ok(c)
    }

    /// The error for a statement that failed: SQLite answers "full" both
    /// when the database reaches its quota (`max_page_count`) and when the
    /// disk under it is full. The quota is the plugin's to mind (`quota
    /// exceeded`, a permanent failure); a full disk is the operator's, and
    /// the delivery is retried once there is room (`unavailable`).
    /// Whichever leaves less room is the one that was hit.
    fn error(&self, e: rusqlite::Error) -> HostError {
        if e.sqlite_error_code() != Some(rusqlite::ErrorCode::DiskFull) {
            return sql_err(e);
        }
        let Some((c, _)) = self.conn.as_ref() else {
            return sql_err(e);
        };
        let disk = self.path.parent().and_then(free_bytes);
        match (room_in_quota(c), disk) {
            (Some(quota), Some(disk)) if disk < quota => {
                tracing::debug!(path = %self.path.display(), free_bytes = disk, "plugin database: the disk is full");
                HostError::Unavailable("disk full".into())
            }
            _ => HostError::QuotaExceeded,
        }
    }
}

/// Bytes the database may still grow by under its `max_page_count`. The
/// plugin's statements may not read pragmas; these are the host's.
fn room_in_quota(c: &Connection) -> Option<u64> {
    c.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    let read = |name: &str| c.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0));
    let room = (|| -> rusqlite::Result<i64> {
        Ok((read("max_page_count")? - read("page_count")?).max(0) * read("page_size")?)
    })();
    c.authorizer(Some(authorize));
    room.ok().map(|r| r as u64)
}

/// Bytes free on the filesystem holding `dir` for this process (root may
/// use the blocks kept back for it).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string and `st` a writable
    // `statvfs` that the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // SAFETY: geteuid cannot fail.
    let blocks = if unsafe { libc::geteuid() } == 0 {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Some(blocks as u64 * st.f_frsize as u64)
}

impl Drop for SqlDb {
    fn drop(&mut self) {
        if let (Some(pool), Some((c, max_mb))) = (self.pool.take(), self.conn.take()) {
            pool.put(std::mem::take(&mut self.path), max_mb, c);
        }
    }
}

fn authorize(ctx: AuthContext<'_>) -> Authorization {
    match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } | AuthAction::Pragma { .. } => {
            Authorization::Deny
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        // Direct writes to sqlite_master are refused by SQLITE_DBCONFIG_DEFENSIVE
        // (and `PRAGMA writable_schema` by the rule above); CREATE statements
        // still update it through SQLite itself.
        _ => Authorization::Allow,
    }
}

/// Opens the database, trying again while another connection holds a lock
/// that setting up a connection needs. The first opener of a new file turns
/// it to WAL under an exclusive lock, and SQLite answers the others' reads
/// of it with `SQLITE_BUSY` without calling the busy handler; they wait
/// here instead, until `deadline`.
fn open_until(
    path: &std::path::Path,
    max_mb: u64,
    deadline: Instant,
) -> rusqlite::Result<Connection> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match open(path, max_mb) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn open(path: &std::path::Path, max_mb: u64) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Deliveries of one plugin for different chats run in parallel and
    // share this file: wait briefly for the write lock instead of failing.
    c.busy_timeout(std::time::Duration::from_millis(500))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    c.pragma_update(
        None,
        "max_page_count",
        (max_mb as i64 * 1024 * 1024) / page.max(512),
    )?;
    c.pragma_update(None, "trusted_schema", "OFF")?;
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    c.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    c.set_limit(
        rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH,
        8 * 1024 * 1024,
    )?;
    c.set_limit(
        rusqlite::limits::Limit::SQLITE_LIMIT_SQL_LENGTH,
        MAX_STATEMENT as i32,
    )?;
    c.authorizer(Some(authorize));
    Ok(c)
}

struct Param<'a>(&'a Value);

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self.0 {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(f) => ValueRef::Real(*f),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sql_err(e: rusqlite::Error) -> HostError {
    match e.sqlite_error_code() {
        // Told apart from a full disk by `SqlDb::error`.
        Some(rusqlite::ErrorCode::DiskFull) => HostError::QuotaExceeded,
        Some(rusqlite::ErrorCode::OperationInterrupted) => {
            HostError::Unavailable("statement interrupted at the deadline".into())
        }
        Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) => HostError::AccessDenied,
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            HostError::Unavailable("database busy".into())
        }
        _ => HostError::Invalid(e.to_string()),
    }
}

impl Capabilities {
    fn sql_prepare(&mut self, statement: &str) -> Result<(), HostError> {
        self.check(Grant::Sql)?;
        if statement.len() > MAX_STATEMENT {
            return Err(HostError::Invalid("statement too long".into()));
        }
        if self.journal.is_some() {
            let s = statement.to_string();
            self.note(|| Action::Sql { statement: s });
        }
        Ok(())
    }
}

impl Host for Capabilities {
    fn execute(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, HostError>> {
        Ok((|| {
            self.sql_prepare(&statement)?;
            let c = self.sql.open(self.limits.sql_mb, self.deadline)?;
            let mut st = c.prepare_cached(&statement).map_err(sql_err)?;
            let params: Vec<Param> = params.iter().map(Param).collect();
            let n = st.execute(rusqlite::params_from_iter(params));
            drop(st);
            let n = n.map_err(|e| self.sql.error(e))?;
            Ok(n as u64)
        })())
    }

    fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, HostError>> {
        Ok((|| {
            self.sql_prepare(&statement)?;
            let max_rows = self.limits.sql_rows;
            let c = self.sql.open(self.limits.sql_mb, self.deadline)?;
            let mut st = c.prepare_cached(&statement).map_err(sql_err)?;
            let columns: Vec<String> = st.column_names().iter().map(|s| s.to_string()).collect();
            let params: Vec<Param> = params.iter().map(Param).collect();
            let mut rows = st
                .query(rusqlite::params_from_iter(params))
                .map_err(sql_err)?;
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut full = None;
            loop {
                let r = match rows.next() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    // A write with `RETURNING` that found no room.
                    Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
                        full = Some(e);
                        break;
                    }
                    Err(e) => return Err(sql_err(e)),
                };
                if out.len() as u64 >= max_rows {
                    return Err(HostError::QuotaExceeded);
                }
                let mut row = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    let v = match r.get_ref(i).map_err(sql_err)? {
                        ValueRef::Null => Value::Null,
                        ValueRef::Integer(i) => Value::Integer(i),
                        ValueRef::Real(f) => Value::Real(f),
                        ValueRef::Text(t) => {
                            bytes += t.len();
                            Value::Text(String::from_utf8_lossy(t).into_owned())
                        }
                        ValueRef::Blob(b) => {
                            bytes += b.len();
                            Value::Blob(b.to_vec())
                        }
                    };
                    bytes += 8;
                    row.push(v);
                }
                if bytes > MAX_RESULT_BYTES {
                    return Err(HostError::QuotaExceeded);
                }
                out.push(row);
            }
            drop(rows);
            drop(st);
            if let Some(e) = full {
                return Err(self.sql.error(e));
            }
            Ok(Rows { columns, rows: out })
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_opening_a_new_database_together_all_get_it() {
        // The first opener switches the new file to WAL while the others
        // read it; none of them may come back with "database unavailable".
        let dir = tempfile::tempdir().unwrap();
        for round in 0..40 {
            let path = dir.path().join(format!("p{round}.sqlite"));
            let start = Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|i| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        let deadline = Instant::now() + std::time::Duration::from_secs(5);
                        let mut db = SqlDb::new(path);
                        start.wait();
                        let c = db.open(8, deadline).map_err(|e| format!("{e:?}"))?;
                        c.execute_batch("CREATE TABLE IF NOT EXISTS t (x)")
                            .map_err(|e| e.to_string())?;
                        c.execute("INSERT INTO t VALUES (?1)", [i])
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>(())
                    })
                })
                .collect();
            for t in threads {
                t.join()
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
            let c = Connection::open(&path).unwrap();
            let n: i64 = c
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 6, "round {round}");
        }
    }

    /// One delivery runs `first` on a pooled connection and ends; `then`
    /// gets the next delivery's connection to the same database.
    fn after_a_delivery(
        first: impl FnOnce(&Connection),
        then: impl FnOnce(&Connection, &SqlPool, &Path),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sqlite");
        let pool = Arc::new(SqlPool::default());
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        {
            let mut db = SqlDb::pooled(path.clone(), pool.clone());
            first(db.open(8, deadline).unwrap());
        }
        let mut db = SqlDb::pooled(path.clone(), pool.clone());
        then(db.open(8, deadline).unwrap(), &pool, &path);
    }

    #[test]
    fn a_pooled_connection_comes_back_without_the_last_deliverys_transaction() {
        after_a_delivery(
            |c| {
                c.execute_batch("CREATE TABLE t (x); BEGIN; INSERT INTO t VALUES (1);")
                    .unwrap();
                assert!(!c.is_autocommit());
            },
            |c, pool, path| {
                assert!(c.is_autocommit(), "the open transaction was rolled back");
                let n: i64 = c
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(n, 0);
                // The same connection came back from the pool: no new one opened.
                assert!(pool.take(path, 8).is_none());
            },
        );
    }

    #[test]
    fn temp_objects_do_not_outlive_their_delivery() {
        after_a_delivery(
            |c| {
                c.execute_batch(
                    "CREATE TABLE t (x);
                     CREATE TEMP TABLE scratch (secret);
                     INSERT INTO scratch VALUES ('chat A');
                     CREATE TEMP TRIGGER copy AFTER INSERT ON t BEGIN INSERT INTO scratch VALUES (new.x); END;",
                )
                .unwrap();
            },
            |c, _, _| {
                let n: i64 = c
                    .query_row("SELECT count(*) FROM temp.sqlite_master", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(n, 0, "the next delivery sees no TEMP table or trigger");
                c.execute("INSERT INTO t VALUES (1)", []).unwrap();
            },
        );
    }
}
