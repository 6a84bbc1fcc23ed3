//! What the commands print on standard output. `println!` panics when the
//! reader has gone (`hookhost deliveries | head`); here a closed pipe ends
//! the command quietly, as it ends `ls` or `grep`, and any other failure to
//! write is an error message rather than a panic.

use std::fmt;
use std::io::{self, Write};

/// Writes `args` to standard output. The process ends here with status 0
/// when the reader has closed the pipe, and with status 2 when standard
/// output cannot be written for another reason (a full disk).
pub fn print(args: fmt::Arguments<'_>) {
    let result = io::stdout().lock().write_fmt(args);
    finish(result);
}

/// Writes `bytes` as they are (a stored value) to standard output, with the
/// same endings as [`print`].
pub fn bytes(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    let result = out.write_all(bytes).and_then(|()| out.flush());
    finish(result);
}

fn finish(result: io::Result<()>) {
    if let Err(e) = result {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(2);
    }
}

/// `println!` to standard output through [`print`].
macro_rules! outln {
    () => {
        $crate::cli::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use outln;
