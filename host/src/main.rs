use clap::Parser;

// Request threads allocate each event's buffers and the store's writer
// thread frees them: glibc's malloc then takes the other arena's lock (and
// a futex wake) for every cross-thread free. mimalloc frees across threads
// without a lock: 7–15 % less CPU per request under load (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's options (`mi_option_e`, mimalloc 3), by number.
mod mi_option {
    pub const ARENA_EAGER_COMMIT: i32 = 4;
    pub const PURGE_DELAY: i32 = 15;
}

/// Memory freed goes back to the system soon. With its defaults (arenas in
/// transparent huge pages and committed up front, freed pages purged a
/// second later) mimalloc's peak resident memory in the memory benchmark
/// was 337 MiB against glibc's 123; built without huge pages (the `no_thp`
/// feature) 158 MiB, and with these options too 128 MiB. Purging at once
/// instead of after 10 ms gave the same peak, but `madvise` then took 2.7 %
/// of the server's CPU under load instead of 0.9 %. Set first thing in
/// `main`; `MIMALLOC_*` environment variables override them.
fn tune_allocator() {
    let unset = |name: &str| std::env::var_os(name).is_none();
    for (option, value, env) in [
        (
            mi_option::ARENA_EAGER_COMMIT,
            0,
            "MIMALLOC_ARENA_EAGER_COMMIT",
        ),
        (mi_option::PURGE_DELAY, 10, "MIMALLOC_PURGE_DELAY"),
    ] {
        if unset(env) {
            // SAFETY: sets one of mimalloc's option values; any thread may.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

fn main() {
    tune_allocator();
    let cli = hookhost::cli::Cli::parse();
    hookhost::cli::init_logging(cli.log_format);
    match hookhost::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mi_option;

    /// The numbers name the options meant: each still holds the default
    /// mimalloc documents for it.
    #[test]
    fn mimalloc_option_numbers_name_the_options_tuned() {
        // SAFETY: reads one of mimalloc's option values.
        let get = |o| unsafe { libmimalloc_sys::mi_option_get(o) };
        assert_eq!(get(mi_option::ARENA_EAGER_COMMIT), 2);
        assert_eq!(get(mi_option::PURGE_DELAY), 1000);
    }
}
