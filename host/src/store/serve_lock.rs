//! One server per data directory. Two `hookhost serve` on one store would
//! each dispatch the same deliveries (a reply sent twice) and each take the
//! other's running deliveries for ones a crash interrupted. The server
//! holds an exclusive `flock` on `DATA_DIR/serve.lock` while it runs; the
//! kernel lets it go when the process ends, however it ends. The operator
//! commands do not take it: they work beside a running server.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

const FILE: &str = "serve.lock";

/// Held while the server runs; dropping it lets the directory go.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another `hookhost serve`{pid}: \
         stop it first, or give this one another data_dir"
    )]
    InUse { dir: String, pid: String },
    /// The lock file cannot be made (a read-only or missing directory):
    /// the store will say what is wrong when it is opened.
    #[error("cannot lock {path}: {error}")]
    Io { path: String, error: std::io::Error },
}

/// Takes the data directory for this process, creating it when missing.
pub fn acquire(data_dir: &Path) -> Result<ServeLock, LockError> {
    let path = data_dir.join(FILE);
    let io = |error| LockError::Io {
        path: path.display().to_string(),
        error,
    };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor this function owns.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::WouldBlock {
            return Err(io(error));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let pid = match holder.trim().parse::<u32>() {
            Ok(pid) => format!(" (pid {pid})"),
            Err(_) => String::new(),
        };
        return Err(LockError::InUse {
            dir: data_dir.display().to_string(),
            pid,
        });
    }
    // Whose it is, for the message above; the lock, not this, decides.
    let _ = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    Ok(ServeLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = acquire(&data).unwrap();
        // flock locks belong to the open file description, so a second
        // open in the same process is refused as another process would be.
        let err = acquire(&data).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "data directory {} is in use by another `hookhost serve` (pid {}): \
                 stop it first, or give this one another data_dir",
                data.display(),
                std::process::id()
            )
        );
        drop(first);
        acquire(&data).unwrap();
    }
}
