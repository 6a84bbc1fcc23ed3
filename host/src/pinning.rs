//! The request threads, one per CPU, each kept on its own CPU
//! (`[server] pin_request_threads`).
//!
//! Left to the scheduler, the request threads gather on the CPU that runs
//! the load's network work while the other sits idle each time the store's
//! writer waits for `fsync`: a thread that ran within the last half
//! millisecond counts as cache-hot and is not moved to the idle CPU.
//! Kept one per CPU, each CPU has a request thread to run when it frees up.
//!
//! Threads inherit the CPUs of the thread that starts them, so a thread a
//! request thread starts (its runtime's blocking pool) first takes the
//! process's whole set back.

/// The CPUs the process may run on, one request thread each.
#[derive(Debug)]
pub struct Pinning {
    cpus: Vec<usize>,
}

impl Pinning {
    /// A plan for `threads` request threads, when they can go one per CPU:
    /// the process may run on exactly that many CPUs, at least two. `None`
    /// otherwise (one CPU, fewer threads than CPUs, or the CPUs unknown),
    /// and the scheduler places them.
    pub fn plan(threads: usize) -> Option<Pinning> {
        let cpus = allowed_cpus()?;
        (cpus.len() >= 2 && cpus.len() == threads).then_some(Pinning { cpus })
    }

    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// For a thread started by a request thread: it may run on every CPU
    /// of the process again.
    pub fn release_current(&self) {
        set_current(&self.cpus);
    }

    /// The calling thread, the `i`-th request thread, keeps to its CPU.
    pub fn pin_current(&self, i: usize) {
        if let Some(cpu) = self.cpus.get(i) {
            set_current(&[*cpu]);
        }
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: `set` is a plain bit set written by the kernel; pid 0 is the
    // calling thread, and its size is passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect(),
        )
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

#[cfg(target_os = "linux")]
fn set_current(cpus: &[usize]) {
    // SAFETY: as above; pid 0 changes only the calling thread's CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn set_current(_: &[usize]) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn request_threads_take_one_cpu_each_and_threads_they_start_get_them_all_back() {
        let all = allowed_cpus().unwrap();
        if all.len() < 2 {
            eprintln!("one CPU: nothing to pin");
            assert!(Pinning::plan(1).is_none());
            return;
        }
        assert!(Pinning::plan(all.len() + 1).is_none());
        assert!(Pinning::plan(all.len() - 1).is_none());
        let plan = std::sync::Arc::new(Pinning::plan(all.len()).unwrap());
        assert_eq!(plan.cpus(), &all[..]);
        let threads: Vec<_> = (0..all.len())
            .map(|i| {
                let plan = plan.clone();
                std::thread::spawn(move || {
                    plan.pin_current(i);
                    let pinned = allowed_cpus().unwrap();
                    // A thread started from a pinned one inherits its CPU
                    // until it is released.
                    let child = {
                        let plan = plan.clone();
                        std::thread::spawn(move || {
                            let inherited = allowed_cpus().unwrap();
                            plan.release_current();
                            (inherited, allowed_cpus().unwrap())
                        })
                        .join()
                        .unwrap()
                    };
                    (pinned, child)
                })
            })
            .collect();
        let mut taken = Vec::new();
        for t in threads {
            let (pinned, (inherited, released)) = t.join().unwrap();
            assert_eq!(pinned.len(), 1, "{pinned:?}");
            assert_eq!(inherited, pinned);
            assert_eq!(released, all);
            taken.push(pinned[0]);
        }
        taken.sort();
        assert_eq!(taken, all, "each CPU taken once");
        assert_eq!(allowed_cpus().unwrap(), all, "the test's thread untouched");
    }
}
