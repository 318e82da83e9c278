//! The log's writer: every line (the access log's and `tracing`'s) is appended to one
//! in-memory batch, and a background thread writes the batch out in one `write`: at once
//! after a quiet spell, and while lines keep coming, at most once per [`LINGER`].
//!
//! A request thread never blocks on the log's destination and never makes a system call for
//! it: appending is a short critical section, and only the line that finds the batch empty
//! wakes the writer. Under load that is one wake-up and one `write` per [`LINGER`] instead
//! of one of each per line (a channel per line, as `tracing-appender` does, cost a sync
//! request about a tenth of its CPU here). Lines stay whole and in order: a line is appended
//! whole, and the batch is written by one thread.
//!
//! Memory is bounded: when [`MAX_PENDING`] bytes wait (the destination is slower than the
//! lines), new lines are dropped and counted, never queued without bound and never waited
//! for. The last batch is written when the [`Flush`] guard is dropped (at exit); a process
//! killed at once loses at most the lines of its last [`LINGER`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long the writer gathers lines after the first one of a batch.
pub const LINGER: Duration = Duration::from_millis(10);

/// Bytes that may wait to be written; lines past it are dropped and counted.
pub const MAX_PENDING: usize = 8 << 20;

struct Shared {
    batch: Mutex<Vec<u8>>,
    ready: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

/// A handle that appends lines to the batch (cheap to clone).
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Writes the last batch and stops the writer thread when dropped.
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Starts the writer thread on `out`.
    pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, Flush)> {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Vec::with_capacity(64 * 1024)),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wasmgate-log".into())
                .spawn(move || run(&shared, out))?
        };
        Ok((
            LogWriter {
                shared: shared.clone(),
            },
            Flush {
                shared,
                thread: Some(thread),
            },
        ))
    }

    /// Appends one whole line (or several); drops it if [`MAX_PENDING`] bytes already wait.
    pub fn append(&self, line: &[u8]) {
        let Ok(mut batch) = self.shared.batch.lock() else {
            return;
        };
        if batch.len() + line.len() > MAX_PENDING {
            drop(batch);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS.log_lines_dropped.inc();
            return;
        }
        let first = batch.is_empty();
        batch.extend_from_slice(line);
        drop(batch);
        if first {
            self.shared.ready.notify_one();
        }
    }

    /// Lines dropped so far because the destination did not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn run<W: Write>(shared: &Shared, mut out: W) {
    let mut spare: Vec<u8> = Vec::with_capacity(64 * 1024);
    let now = std::time::Instant::now();
    let mut last_write = now.checked_sub(LINGER).unwrap_or(now);
    loop {
        {
            let Ok(mut batch) = shared.batch.lock() else {
                return;
            };
            while batch.is_empty() && !shared.closed.load(Ordering::Acquire) {
                batch = match shared.ready.wait(batch) {
                    Ok(b) => b,
                    Err(_) => return,
                };
            }
            if batch.is_empty() {
                return;
            }
        }
        // A line after a quiet spell goes out at once; while lines keep coming, the batch
        // fills until LINGER after the previous write (and at once when the process stops).
        let since = last_write.elapsed();
        if since < LINGER && !shared.closed.load(Ordering::Acquire) {
            std::thread::sleep(LINGER - since);
        }
        match shared.batch.lock() {
            Ok(mut batch) => std::mem::swap(&mut *batch, &mut spare),
            Err(_) => return,
        }
        // A destination that fails (a closed pipe) loses these lines; the next batch tries
        // again.
        let _ = out.write_all(&spare).and_then(|()| out.flush());
        last_write = std::time::Instant::now();
        spare.clear();
        if spare.capacity() > 1 << 20 {
            spare.shrink_to(64 * 1024);
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.ready.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `tracing_subscriber`'s formatter writes each event with one `write_all` of the whole
/// line, so appending what each `write` gets keeps lines whole.
impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that records each `write` it gets.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_few_writes_and_the_guard_flushes_the_rest() {
        let out = Recorder::default();
        let (writer, flush) = LogWriter::start(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        w.append(format!("thread {t} line {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Appended while the writer gathers a batch: the guard must still write it.
        writer.append(b"thread 9 line last\n");
        drop(flush);
        let writes = out.0.lock().unwrap();
        let all: Vec<u8> = writes.concat();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            8001,
            "every line is written once, none is lost at the flush"
        );
        assert_eq!(lines.last(), Some(&"thread 9 line last"));
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..2000).collect::<Vec<_>>(),
                "thread {t}'s lines whole, in order"
            );
        }
        assert!(
            writes.len() < 800,
            "lines are written in batches, not one write each: {} writes for 8000 lines",
            writes.len()
        );
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_destination_that_does_not_keep_up_costs_dropped_lines_not_memory() {
        /// Blocks every write until told to go on.
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (m, c) = &*self.0;
                let mut go = m.lock().unwrap();
                while !*go {
                    go = c.wait(go).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (writer, flush) = LogWriter::start(Stuck(gate.clone())).unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // The writer takes at most one batch into its stuck write; then at most MAX_PENDING
        // bytes wait, so of 3 x MAX_PENDING bytes offered at least one third is dropped.
        let offered = 3 * MAX_PENDING / line.len();
        for _ in 0..offered {
            writer.append(&line);
        }
        let pending = writer.shared.batch.lock().unwrap().len();
        assert!(pending <= MAX_PENDING, "{pending} bytes wait");
        assert!(
            writer.dropped() as usize >= offered / 3,
            "{} of {offered} lines dropped",
            writer.dropped()
        );
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(flush);
    }
}
