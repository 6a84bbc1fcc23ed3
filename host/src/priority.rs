//! Background work (plugin deliveries, plugin compilation) runs on threads
//! with a higher nice value, or deliveries at the idle policy, so under load
//! the request path gets the CPU first. Linux threads each have their own
//! nice value and policy.

thread_local! {
    static NICE: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
    static IDLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets the calling thread's scheduling policy to `SCHED_IDLE` (Linux;
/// once per thread). Not undone: an unprivileged thread may not leave it.
pub fn idle_current_thread() {
    IDLE.with(|idle| {
        if !idle.get() {
            #[cfg(target_os = "linux")]
            // SAFETY: sched_setscheduler with pid = 0 changes only the
            // calling thread's policy; `p` outlives the call.
            unsafe {
                let p = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_IDLE, &p);
            }
            idle.set(true);
        }
    });
}

/// Sets the calling thread's nice value (once per thread and value).
pub fn lower_current_thread(nice: i32) {
    if nice <= 0 {
        return;
    }
    NICE.with(|n| {
        if n.get() != Some(nice) {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority with who = 0 changes only the calling
            // thread's scheduling priority.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
            }
            n.set(Some(nice));
        }
    });
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_delivery_thread_takes_the_idle_policy_and_others_keep_theirs() {
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let other = policy();
        let idle = std::thread::spawn(move || {
            super::idle_current_thread();
            super::idle_current_thread();
            policy()
        })
        .join()
        .unwrap();
        assert_eq!(idle, libc::SCHED_IDLE);
        assert_eq!(policy(), other, "only the calling thread changes");
        assert_ne!(other, libc::SCHED_IDLE);
    }
}
