//! What a plugin printed before it trapped, in one line for its delivery's
//! error: a panic's message is there (Rust's `panic = abort` and Go's
//! runtime print it, then trap as `unreachable`), not in the trap.

/// At most this many characters of what the plugin printed.
const MAX_CHARS: usize = 300;

/// The part of a plugin's captured output that says why it stopped: a
/// Python exception (the line after its traceback; componentize-py's own
/// panic follows it), a JavaScript error (the line before its stack), a
/// Rust panic's place and message, a Go panic's line, or else the last
/// line it printed. `None` when it printed nothing.
pub fn last_words(output: &str) -> Option<String> {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let said = python_exception(output)
        .or_else(|| javascript_error(&lines))
        .or_else(|| rust_panic(&lines))
        .or_else(|| go_panic(&lines))
        .or_else(|| lines.last().map(|l| l.to_string()))?;
    Some(truncate(&said))
}

/// The exception line of the last Python traceback: the first line after
/// it that is not indented (the traceback's frames are).
fn python_exception(output: &str) -> Option<String> {
    let (_, after) = output.rsplit_once("Traceback (most recent call last):")?;
    after
        .lines()
        .skip(1)
        .find(|l| !l.trim().is_empty() && !l.starts_with(char::is_whitespace))
        .map(|l| l.trim_end().to_string())
}

/// componentize-js prints the error, then `Stack:` and its frames, then the
/// abort; an error thrown out of `handle` is quoted as "received `…`".
fn javascript_error(lines: &[&str]) -> Option<String> {
    let i = lines
        .iter()
        .position(|l| *l == "Stack:")
        .filter(|i| *i > 0)?;
    let error = lines[i - 1];
    let thrown = error
        .split_once("(received `")
        .and_then(|(_, r)| r.rsplit_once("`)"))
        .map_or(error, |(thrown, _)| thrown);
    Some(thrown.to_string())
}

/// `thread '<unnamed>' panicked at src/lib.rs:12:5:` and the message on
/// the next line, as `panicked at src/lib.rs:12:5: the message`.
fn rust_panic(lines: &[&str]) -> Option<String> {
    let i = lines.iter().position(|l| l.contains(" panicked at "))?;
    let at = &lines[i][lines[i].find("panicked at ").unwrap_or(0)..];
    Some(match lines.get(i + 1) {
        Some(message) if !message.starts_with("note: ") => format!("{at} {message}"),
        _ => at.to_string(),
    })
}

/// `panic: …`, before the goroutines' stacks.
fn go_panic(lines: &[&str]) -> Option<String> {
    lines
        .iter()
        .find(|l| l.starts_with("panic: "))
        .map(|l| l.to_string())
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
    fn a_python_exception_gives_its_line_rather_than_the_runtime_panic_after_it() {
        // As componentize-py prints it (a chained exception: the last one).
        let out = "handling 1\nTraceback (most recent call last):\n  File \"/0/app.py\", line 9, in f\n\
                   ValueError: first\n\nDuring handling of the above exception, another exception occurred:\n\n\
                   Traceback (most recent call last):\n  File \"/0/app.py\", line 11, in handle\n\
                   \x20   return settings[\"notify_to\"]\nKeyError: 'notify_to'\n\n\
                   thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\n\
                   Python function threw an unexpected exception\n";
        assert_eq!(last_words(out).unwrap(), "KeyError: 'notify_to'");
    }

    #[test]
    fn a_javascript_error_gives_what_was_thrown() {
        // As componentize-js prints an error thrown out of `handle`.
        let out = "handling 1\ninvalid variant tag value `undefined` (received `TypeError: can't access \
                   property \"notifyTo\", settings is undefined`) specified for `HandlerError`\nStack:\n\
                   \x20 export_handler_0_1_0$handle@/tmp/x/initializer.js:1955:17\n\n\
                   Redirecting call to abort() to mozalloc_abort\n";
        assert_eq!(
            last_words(out).unwrap(),
            "TypeError: can't access property \"notifyTo\", settings is undefined"
        );
        assert_eq!(
            last_words("Error: boom\nStack:\n  f@x.js:1:1\n").unwrap(),
            "Error: boom"
        );
    }

    #[test]
    fn otherwise_the_last_line_printed_and_none_for_silence() {
        assert_eq!(last_words("one\ntwo  \n\n").unwrap(), "two");
        assert_eq!(last_words(" \n\n"), None);
        let long = "é".repeat(400);
        let cut = last_words(&long).unwrap();
        assert_eq!(cut.chars().count(), MAX_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
