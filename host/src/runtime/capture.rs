//! A plugin's standard output and error, captured for the log and for a
//! trapped delivery's last words: the first and the last bytes it wrote,
//! and how many between them were left out. Writing never fails, however
//! much the plugin prints (wasmtime-wasi's memory pipe traps the guest past
//! its capacity, which failed the delivery of a plugin that only talked a
//! lot, and kept its beginning rather than the panic at its end).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes kept from the start and from the end of the output.
const HEAD: usize = 32 * 1024;
const TAIL: usize = 32 * 1024;

#[derive(Default)]
struct Kept {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    /// Bytes written between the head and the tail, not kept.
    cut: u64,
}

impl Kept {
    fn write(&mut self, mut bytes: &[u8]) {
        let room = HEAD - self.head.len();
        if room > 0 {
            let n = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.len() >= TAIL {
            self.cut += (self.tail.len() + bytes.len() - TAIL) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - TAIL..]);
            return;
        }
        let over = (self.tail.len() + bytes.len()).saturating_sub(TAIL);
        self.tail.drain(..over);
        self.cut += over as u64;
        self.tail.extend(bytes);
    }
}

/// Shared by every stream the plugin opens on stdout and stderr.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Kept>>);

impl Capture {
    pub fn new() -> Capture {
        Capture::default()
    }

    /// What was kept, with a line saying how much was left out between the
    /// beginning and the end.
    pub fn contents(&self) -> String {
        let k = self.0.lock().unwrap();
        let mut out = String::from_utf8_lossy(&k.head).into_owned();
        if k.cut > 0 {
            out.push_str(&format!("\n[… {} bytes of output left out …]\n", k.cut));
        }
        let (a, b) = k.tail.as_slices();
        out.push_str(&String::from_utf8_lossy(&[a, b].concat()));
        out
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.0.lock().unwrap().write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().write(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_beginning_and_the_end_and_counts_what_it_left_out() {
        let c = Capture::new();
        let mut w = c.clone();
        w.write(bytes::Bytes::from("start\n")).unwrap();
        // 200 KiB in writes of every size, then the last words.
        let mut written = 6u64;
        for n in [1usize, 100, 4096, 40_000, 70_000, 90_000] {
            w.write(bytes::Bytes::from(vec![b'x'; n])).unwrap();
            written += n as u64;
        }
        w.write(bytes::Bytes::from("\npanic: the end\n")).unwrap();
        written += 16;
        let out = c.contents();
        assert!(out.starts_with("start\nxxx"), "{}", &out[..20]);
        assert!(out.ends_with("xxx\npanic: the end\n"));
        let cut = written - (HEAD + TAIL) as u64;
        assert!(
            out.contains(&format!("\n[… {cut} bytes of output left out …]\n")),
            "{cut}"
        );
        // Nothing is left out below the two halves.
        let small = Capture::new();
        small.clone().write(bytes::Bytes::from("a\nb\n")).unwrap();
        assert_eq!(small.contents(), "a\nb\n");
    }
}
