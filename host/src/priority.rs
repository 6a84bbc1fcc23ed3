//! Background work (plugin deliveries, plugin compilation) runs on threads
//! with a higher nice value, so under load the request path gets the CPU
//! first. Linux threads each have their own nice value.

thread_local! {
    static NICE: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
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
