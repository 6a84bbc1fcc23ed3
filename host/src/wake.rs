//! The dispatcher's wake-up: signalled by every stored event, never making
//! the signalling thread wait.
//!
//! The dispatcher may run at idle priority (`dispatch.idle_priority`). A
//! request thread that wakes it through tokio's `Notify`, or through its
//! runtime's queue of tasks woken from other threads, takes a lock the
//! dispatcher also takes; were the dispatcher preempted while holding it,
//! the request would wait until the machine has a moment with nothing else
//! to do. Here a signal is an atomic
//! flag and, for the first signal since the dispatcher last looked, one
//! write to an eventfd, whose locks are the kernel's and never held by a
//! preempted thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

pub struct Wake {
    pending: AtomicBool,
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd returns a new descriptor that nothing else owns,
        // or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wake {
            pending: AtomicBool::new(false),
            // SAFETY: `fd` is open and owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Signals the listener; wakes it if it waits. Signals before it looks
    /// again count as one.
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer. It fails only when
            // the counter is full, and then a wake-up is waiting anyway.
            unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Waits for signals from inside the runtime that calls it.
    pub fn listen(&self) -> Listener<'_> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| e.to_string())
            .and_then(|fd| {
                // SAFETY: the runtime watches a descriptor of its own, open
                // until the `AsyncFd` that owns it is dropped.
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = &fd {
            tracing::warn!(error = %e, "cannot wait on the wake-up descriptor; polling instead");
        }
        Listener {
            wake: self,
            fd: fd.ok(),
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer; non-blocking.
        unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

pub struct Listener<'a> {
    wake: &'a Wake,
    /// `None` when the runtime could not register the descriptor: the
    /// flag is then looked at every millisecond.
    fd: Option<AsyncFd<OwnedFd>>,
}

impl Listener<'_> {
    /// Returns once a signal came after the last return. Cancel-safe: a
    /// signal is consumed only by a call that returns.
    pub async fn notified(&self) {
        loop {
            if self.wake.pending.swap(false, Ordering::AcqRel) {
                // A signal whose write comes later makes the next call loop
                // once more, nothing worse.
                self.wake.drain();
                return;
            }
            match &self.fd {
                Some(fd) => match fd.readable().await {
                    Ok(mut ready) => {
                        self.wake.drain();
                        ready.clear_ready();
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                },
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_signal_before_or_during_the_wait_wakes_the_listener_once() {
        let wake = Arc::new(Wake::new().unwrap());
        runtime().block_on(async {
            let l = wake.listen();
            assert!(l.fd.is_some());
            let short = Duration::from_millis(50);
            // Nothing signalled: waits.
            assert!(tokio::time::timeout(short, l.notified()).await.is_err());
            // Several signals before it looks count as one.
            wake.notify();
            wake.notify();
            tokio::time::timeout(short, l.notified()).await.unwrap();
            assert!(tokio::time::timeout(short, l.notified()).await.is_err());
            // A signal from another thread while it waits.
            let w = wake.clone();
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                w.notify();
            });
            tokio::time::timeout(Duration::from_secs(10), l.notified())
                .await
                .expect("woken from another thread");
            t.join().unwrap();
        });
    }

    #[test]
    fn no_signal_is_lost_between_threads() {
        let wake = Arc::new(Wake::new().unwrap());
        let rounds = 2000;
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (w, s) = (wake.clone(), seen.clone());
        // Each round the other thread waits until the listener has seen the
        // previous signal, then signals again: a lost signal hangs the round
        // and fails the timeout below.
        let signaller = std::thread::spawn(move || {
            for i in 0..rounds {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while s.load(Ordering::Acquire) < i {
                    assert!(std::time::Instant::now() < deadline, "listener stuck");
                    std::thread::yield_now();
                }
                w.notify();
            }
        });
        runtime().block_on(async {
            let l = wake.listen();
            for i in 0..rounds {
                tokio::time::timeout(Duration::from_secs(10), l.notified())
                    .await
                    .unwrap_or_else(|_| panic!("signal {i} lost"));
                seen.store(i + 1, Ordering::Release);
            }
        });
        signaller.join().unwrap();
    }
}
