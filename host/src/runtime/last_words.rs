//! What a plugin printed before it trapped, in one line for its delivery's
//! error: a panic's message is there (Rust's `panic = abort` and Go's
//! runtime print it, then trap as `unreachable`), not in the trap.

/// At most this many characters of what the plugin printed.
const MAX_CHARS: usize = 300;

/// The part of a plugin's captured output that says why it stopped: a Rust
/// panic's place and message, a Go panic's line, a Python exception's
/// last line, or else the last line it printed. `None` when it printed
/// nothing.
pub fn last_words(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let said = if let Some(i) = lines.iter().position(|l| l.contains(" panicked at ")) {
        // thread '<unnamed>' panicked at src/lib.rs:12:5:
        // the message
        let at = &lines[i][lines[i].find("panicked at ").unwrap_or(0)..];
        match lines.get(i + 1) {
            Some(message) if !message.starts_with("note: ") => format!("{at} {message}"),
            _ => at.to_string(),
        }
    } else if let Some(panic) = lines.iter().find(|l| l.starts_with("panic: ")) {
        panic.to_string()
    } else {
        lines.last()?.to_string()
    };
    Some(truncate(&said))
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_panic_gives_its_place_and_message() {
        let out = "starting\nthread '<unnamed>' panicked at src/lib.rs:135:21:\n\
                   probe was told to panic\nnote: run with `RUST_BACKTRACE=1` to display a backtrace\n";
        assert_eq!(
            last_words(out).unwrap(),
            "panicked at src/lib.rs:135:21: probe was told to panic"
        );
    }

    #[test]
    fn a_go_panic_gives_its_line_without_the_goroutines() {
        let out = "panic: assignment to entry in nil map\n\ngoroutine 1 [running]:\n\
                   main.Handle(...)\n\t/src/h.go:18 +0xa\n";
        assert_eq!(
            last_words(out).unwrap(),
            "panic: assignment to entry in nil map"
        );
    }

    #[test]
    fn otherwise_the_last_line_printed_and_none_for_silence() {
        let out = "Traceback (most recent call last):\n  File \"app.py\", line 3\n\
                   KeyError: 'notify_to'\n\n";
        assert_eq!(last_words(out).unwrap(), "KeyError: 'notify_to'");
        assert_eq!(last_words(" \n\n"), None);
        let long = "é".repeat(400);
        let cut = last_words(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
