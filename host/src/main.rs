use clap::Parser;

// Request threads allocate each event's buffers and the store's writer
// thread frees them: glibc's malloc then takes the other arena's lock (and
// a futex wake) for every cross-thread free. mimalloc frees across threads
// without a lock: 15 % less CPU per request under load (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
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
