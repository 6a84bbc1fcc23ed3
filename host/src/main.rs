use clap::Parser;

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
