//! The write connection's WAL writes, gathered into one call per commit
//! (or a few, for commits over 124 KiB).
//!
//! SQLite writes each frame of a commit to the WAL with two calls (the
//! frame's 24-byte header, then the page), and as the frames are 24 bytes
//! longer than the pages, each call touches one or two pages of the
//! kernel's page cache: ~30 `pwrite`s for a commit of 20 events, a fifth
//! of the writer's time. The `hookhost-wal` VFS wraps the default one and
//! opens only WAL files differently: their consecutive writes are held in
//! memory and written with one call once the commit frame (the one whose
//! header carries the database size) is complete, before any other
//! operation on the file (a read, a sync, a truncation, its size), when a
//! write does not follow the previous one, or past [`HOLD_AT_MOST`].
//!
//! Nothing is acknowledged earlier than before: a commit frame reaches the
//! file in the call that writes it, so its error (a full disk) is that
//! call's, and the `fsync` that makes it durable comes after, as SQLite
//! asks. What is held and lost in a crash is what had not been committed.

use rusqlite::ffi;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The VFS's name, for `Connection::open_with_flags_and_vfs`.
pub const NAME: &CStr = c"hookhost-wal";

/// Writes held past this many bytes are written at once (a transaction
/// larger than the page cache spills frames before its commit).
const HOLD_AT_MOST: usize = 1 << 20;

/// The most the default VFS writes in one call: it takes a write's size
/// modulo 128 KiB (`seekAndWriteFd`), so larger ones go in parts.
const WRITE_AT_MOST: usize = 124 * 1024;

/// A WAL frame's header: page number, then the database size in pages
/// after the commit (zero except in a commit frame), salts, checksums.
const FRAME_HEADER: usize = 24;

#[cfg(test)]
thread_local! {
    /// Writes SQLite asked of WAL files on this thread, and the calls made.
    static COUNTS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

#[cfg(test)]
fn count(asked: u64, made: u64) {
    COUNTS.with(|c| {
        let (a, m) = c.get();
        c.set((a + asked, m + made));
    });
}

/// A WAL file opened through this VFS; the default VFS's file follows it
/// in the same allocation.
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    held: *mut Held,
}

/// Consecutive bytes not yet written, from `at`.
struct Held {
    bytes: Vec<u8>,
    at: i64,
    /// The last write was a commit frame's header: its page completes it.
    commit_next: bool,
}

const REAL_OFFSET: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

/// Registers the VFS (once); `false` if SQLite has no default VFS to wrap.
pub fn register() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        // SAFETY: called once; SQLite's default VFS lives for the whole
        // process, and the copy registered here is leaked on purpose (a
        // registered VFS must outlive every connection).
        unsafe {
            let real = ffi::sqlite3_vfs_find(std::ptr::null());
            if real.is_null() {
                return false;
            }
            let mut vfs: ffi::sqlite3_vfs = std::ptr::read(real);
            vfs.szOsFile = (REAL_OFFSET + (*real).szOsFile as usize) as c_int;
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = NAME.as_ptr();
            vfs.pAppData = real.cast();
            vfs.xOpen = Some(open);
            let vfs = Box::leak(Box::new(vfs));
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    })
}

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = (*vfs).pAppData as *mut ffi::sqlite3_vfs;
    let real_open = (*real_vfs).xOpen.expect("a VFS opens files");
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Every other file is the default VFS's own, at the same address.
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let w = file as *mut WalFile;
    let real = (file as *mut u8).add(REAL_OFFSET) as *mut ffi::sqlite3_file;
    (*w).base.pMethods = std::ptr::null();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        return rc;
    }
    (*w).real = real;
    (*w).held = Box::into_raw(Box::new(Held {
        bytes: Vec::new(),
        at: 0,
        commit_next: false,
    }));
    (*w).base.pMethods = &METHODS;
    rc
}

// The methods of a WAL file opened by `open`: SQLite calls each with that
// file, one call at a time (the file belongs to one connection).
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// The default VFS's file and its methods.
unsafe fn real(
    f: *mut ffi::sqlite3_file,
) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    let real = (*(f as *mut WalFile)).real;
    (real, &*(*real).pMethods)
}

/// What a WAL file holds, not yet written.
unsafe fn held<'a>(f: *mut ffi::sqlite3_file) -> &'a mut Held {
    &mut *(*(f as *mut WalFile)).held
}

/// Writes what is held, in one call.
unsafe fn flush(f: *mut ffi::sqlite3_file) -> c_int {
    let held = held(f);
    held.commit_next = false;
    if held.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let (real, m) = real(f);
    let rc = write_through(real, m, &held.bytes, held.at);
    // Written or failed, the bytes are no longer held: after a failure
    // SQLite rolls the transaction back and writes its frames again.
    held.bytes.clear();
    rc
}

unsafe fn write_through(
    real: *mut ffi::sqlite3_file,
    m: &ffi::sqlite3_io_methods,
    bytes: &[u8],
    at: i64,
) -> c_int {
    let xwrite = m.xWrite.expect("files are written");
    let mut at = at;
    for part in bytes.chunks(WRITE_AT_MOST) {
        #[cfg(test)]
        count(0, 1);
        let rc = xwrite(real, part.as_ptr().cast(), part.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        at += part.len() as i64;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn write(
    f: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    #[cfg(test)]
    count(1, 0);
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
    let pending = held(f);
    if !pending.bytes.is_empty() && pending.at + pending.bytes.len() as i64 != offset {
        let rc = flush(f);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    let held = held(f);
    if held.bytes.is_empty() {
        held.at = offset;
    }
    let completes_commit = held.commit_next;
    held.commit_next = bytes.len() == FRAME_HEADER && bytes[4..8] != [0, 0, 0, 0];
    held.bytes.extend_from_slice(bytes);
    if completes_commit || held.bytes.len() >= HOLD_AT_MOST {
        return flush(f);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(f: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(f);
    let (real, m) = real(f);
    let rc = (m.xClose.expect("files are closed"))(real);
    let w = f as *mut WalFile;
    drop(Box::from_raw((*w).held));
    (*w).held = std::ptr::null_mut();
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        rc
    }
}

/// Forwards a call to the default VFS's file after writing what is held.
macro_rules! after_flush {
    ($name:ident, $method:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(f: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            let rc = flush(f);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let (real, m) = real(f);
            match m.$method {
                Some(call) => call(real, $($arg),*),
                None => ffi::SQLITE_NOTFOUND,
            }
        }
    };
}

after_flush!(read, xRead, (data: *mut c_void, amount: c_int, offset: i64));
after_flush!(truncate, xTruncate, (size: i64));
after_flush!(sync, xSync, (flags: c_int));
after_flush!(file_size, xFileSize, (size: *mut i64));
after_flush!(lock, xLock, (level: c_int));
after_flush!(unlock, xUnlock, (level: c_int));
after_flush!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int));
after_flush!(file_control, xFileControl, (op: c_int, arg: *mut c_void));
after_flush!(shm_map, xShmMap, (region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void));
after_flush!(shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int));
after_flush!(shm_unmap, xShmUnmap, (delete: c_int));
after_flush!(fetch, xFetch, (offset: i64, amount: c_int, out: *mut *mut c_void));
after_flush!(unfetch, xUnfetch, (offset: i64, page: *mut c_void));

unsafe extern "C" fn sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    let (real, m) = real(f);
    m.xSectorSize.map_or(4096, |call| call(real))
}

unsafe extern "C" fn device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    let (real, m) = real(f);
    m.xDeviceCharacteristics.map_or(0, |call| call(real))
}

unsafe extern "C" fn shm_barrier(f: *mut ffi::sqlite3_file) {
    let _ = flush(f);
    let (real, m) = real(f);
    if let Some(call) = m.xShmBarrier {
        call(real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn rows(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_commit_reaches_the_wal_in_few_writes_and_other_connections_read_it_at_once() {
        assert!(register());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let w = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            NAME,
        )
        .unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        // No sync at commit: what other connections see depends on the
        // commit frame having been written, nothing else.
        w.pragma_update(None, "synchronous", "NORMAL").unwrap();
        w.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        let r = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let before = COUNTS.with(|c| c.get());
        let mut next = 0i64;
        let mut insert = |w: &mut Connection, n: usize, size: usize| {
            let tx = w.transaction().unwrap();
            for _ in 0..n {
                // Distinct bytes, so that nothing compresses into one page.
                let v: Vec<u8> = (0..size).map(|i| (i as i64 * 31 + next) as u8).collect();
                tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (next, v))
                    .unwrap();
                next += 1;
            }
            tx.commit().unwrap();
        };
        let mut w = w;
        for i in 1..=50 {
            insert(&mut w, 20, 300);
            assert_eq!(rows(&r), i * 20, "commit {i} seen by another connection");
        }
        let (asked, made) = COUNTS.with(|c| c.get());
        let (asked, made) = (asked - before.0, made - before.1);
        assert!(asked >= 50 * 4, "{asked} writes asked");
        assert!(made * 4 <= asked, "{made} writes made for {asked} asked");
        // A transaction larger than what is held at most (its frames spill
        // before the commit) and commits larger than one write may carry.
        insert(&mut w, 3000, 1000);
        assert_eq!(rows(&r), 1000 + 3000);
        insert(&mut w, 200, 2000);
        assert_eq!(rows(&r), 1000 + 3000 + 200);
        // Rolled back after spilling: nothing of it is seen, and the next
        // commit (written over its frames) is.
        {
            let tx = w.transaction().unwrap();
            for k in 0..3000 {
                tx.execute(
                    "INSERT INTO t (k, v) VALUES (?1, zeroblob(1000))",
                    [1_000_000 + k],
                )
                .unwrap();
            }
            tx.rollback().unwrap();
        }
        assert_eq!(rows(&r), 4200);
        insert(&mut w, 10, 100);
        assert_eq!(rows(&r), 4210);
        w.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        insert(&mut w, 10, 100);
        drop(w);
        let ok: String = r
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        assert_eq!(rows(&r), 4220);
        // Read again from the files alone.
        drop(r);
        let again = Connection::open(&path).unwrap();
        assert_eq!(rows(&again), 4220);
        let sum: i64 = again
            .query_row("SELECT sum(length(v)) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(sum, 1000 * 300 + 3000 * 1000 + 200 * 2000 + 20 * 100);
    }
}
