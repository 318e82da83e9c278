//! Guest stdout/stderr: each complete line goes to the log with the request id, and the last
//! 4 KiB of the invocation's output is kept for `X-Fc-Log-Type: Tail`.
//!
//! Output is bounded twice: the tail buffer never exceeds [`TAIL_BYTES`], and at most
//! [`MAX_LOGGED_BYTES`] per invocation reach the log, so a chatty guest cannot flood it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of output kept for the tail.
pub const TAIL_BYTES: usize = 4096;
/// Bytes of output per invocation written to the log before it is cut.
pub const MAX_LOGGED_BYTES: usize = 64 * 1024;
/// A line longer than this is logged in pieces.
const MAX_LINE: usize = 4096;

#[derive(Debug)]
struct State {
    tail: VecDeque<u8>,
    logged: usize,
    truncated: bool,
}

/// One invocation's output, shared by its stdout and stderr.
#[derive(Clone, Debug)]
pub struct GuestLog {
    state: Arc<Mutex<State>>,
    request_id: Arc<str>,
    function: Arc<str>,
}

impl GuestLog {
    pub fn new(request_id: Arc<str>, function: Arc<str>) -> Self {
        GuestLog {
            state: Arc::new(Mutex::new(State {
                tail: VecDeque::new(),
                logged: 0,
                truncated: false,
            })),
            request_id,
            function,
        }
    }

    /// The last [`TAIL_BYTES`] bytes the guest wrote to stdout and stderr.
    pub fn tail(&self) -> Vec<u8> {
        match self.state.lock() {
            Ok(s) => s.tail.iter().copied().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A writer for one of the guest's streams.
    pub fn stream(&self, name: &'static str) -> GuestStream {
        GuestStream {
            log: self.clone(),
            name,
            line: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn emit(&self, stream: &'static str, line: &[u8]) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.logged >= MAX_LOGGED_BYTES {
            if !s.truncated {
                s.truncated = true;
                tracing::warn!(
                    target: "wasmgate::guest",
                    request_id = &*self.request_id,
                    function = &*self.function,
                    "guest output over {MAX_LOGGED_BYTES} bytes; the rest is not logged"
                );
            }
            return;
        }
        s.logged += line.len();
        drop(s);
        tracing::info!(
            target: "wasmgate::guest",
            request_id = &*self.request_id,
            function = &*self.function,
            stream,
            "{}",
            String::from_utf8_lossy(line)
        );
    }

    fn record(&self, bytes: &[u8]) {
        let Ok(mut s) = self.state.lock() else { return };
        let keep = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
        let overflow = (s.tail.len() + keep.len()).saturating_sub(TAIL_BYTES);
        s.tail.drain(..overflow);
        s.tail.extend(keep);
    }
}

/// The writer behind one guest stream: splits output into lines.
#[derive(Clone, Debug)]
pub struct GuestStream {
    log: GuestLog,
    name: &'static str,
    line: Arc<Mutex<Vec<u8>>>,
}

impl GuestStream {
    fn write(&self, mut buf: &[u8]) {
        self.log.record(buf);
        let Ok(mut line) = self.line.lock() else {
            return;
        };
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..pos]);
            self.log.emit(self.name, &line);
            line.clear();
            buf = &buf[pos + 1..];
        }
        line.extend_from_slice(buf);
        while line.len() >= MAX_LINE {
            let rest = line.split_off(MAX_LINE);
            self.log.emit(self.name, &line);
            *line = rest;
        }
    }

    fn flush_partial(&self) {
        let Ok(mut line) = self.line.lock() else {
            return;
        };
        if !line.is_empty() {
            self.log.emit(self.name, &line);
            line.clear();
        }
    }
}

impl Drop for GuestStream {
    fn drop(&mut self) {
        // The last clone (the store going away) flushes an unterminated last line.
        if Arc::strong_count(&self.line) == 1 {
            self.flush_partial();
        }
    }
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_4k() {
        let log = GuestLog::new("r".into(), "f".into());
        let out = log.stream("stdout");
        for i in 0..2000 {
            out.write(format!("line {i}\n").as_bytes());
        }
        let tail = log.tail();
        assert_eq!(tail.len(), TAIL_BYTES);
        assert!(String::from_utf8_lossy(&tail).ends_with("line 1999\n"));
    }

    #[test]
    fn a_huge_single_write_is_bounded() {
        let log = GuestLog::new("r".into(), "f".into());
        log.stream("stderr").write(&vec![b'x'; 1 << 20]);
        assert_eq!(log.tail().len(), TAIL_BYTES);
    }
}
