//! The JSON access log: [hot] lines formatted into a per-worker buffer,
//! [warm] shipped in the worker's tick to [cold] one writer thread.
//!
//! A request never waits on the log: a worker only appends to its own
//! buffer. Every tick (20 ms), or at once when the buffer has no room for
//! another line, it hands the buffer to the writer over a bounded channel
//! and takes an emptied one back. Buffers are a fixed stock made when the
//! worker starts and never grow (a line has a bounded size), so the log
//! allocates nothing however late the tick or the writer runs. If the writer
//! falls behind (slow or full disk) and no emptied buffer is back, lines are
//! dropped and counted, never waited for and never allocated for.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::snapshot::{AccessLogSpec, LogTarget};

/// Capacity of one line buffer. A worker ships its buffer when the next
/// line might not fit.
const BUFFER_BYTES: usize = 256 * 1024;
/// Buffers each worker adds to the shared stock when it starts (besides the
/// one it fills): enough for the writer to lag a few ticks without loss.
const SPARE_BUFFERS_PER_WORKER: usize = 3;
/// Buffers in flight to the writer.
const QUEUE: usize = 64;
/// Most bytes of the path (before escaping) and of the route name written to
/// a line; longer ones are cut and marked with `...`. This is what bounds a
/// line, and so what lets buffers never grow.
const MAX_LOGGED_PATH: usize = 2048;
const MAX_LOGGED_ROUTE: usize = 128;
const MAX_LOGGED_REQUEST_ID: usize = 128;
const MAX_LOGGED_METHOD: usize = 32;
const MAX_LOGGED_CERT_SUBJECT: usize = 256;
const MAX_LOGGED_CONSUMER: usize = 128;
/// An upper bound on one formatted line: every logged byte may escape to six
/// (`\u00XX`), plus the fixed fields (addresses, numbers, timestamp).
pub const MAX_LINE_BYTES: usize = 6
    * (MAX_LOGGED_PATH
        + MAX_LOGGED_ROUTE
        + MAX_LOGGED_REQUEST_ID
        + MAX_LOGGED_METHOD
        + MAX_LOGGED_CERT_SUBJECT
        + MAX_LOGGED_CONSUMER
        + 64)
    + 512;

pub enum LogMsg {
    Lines(Vec<u8>),
    /// Reopen the file (log rotation, SIGUSR1).
    Reopen,
}

/// Handles to the writer thread, shared by the control thread and workers.
#[derive(Clone)]
pub struct AccessLog {
    pub sample: f64,
    pub to_writer: Sender<LogMsg>,
    free: Receiver<Vec<u8>>,
    free_tx: Sender<Vec<u8>>,
    /// Lines lost: writer errors plus lines workers dropped.
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer thread for `spec`.
    pub fn start(spec: &AccessLogSpec) -> Result<AccessLog, String> {
        let (to_writer, from_workers) = bounded::<LogMsg>(QUEUE);
        // Large enough for every worker's spares; a buffer that finds it
        // full (cannot happen with fewer than 1 000 workers) is freed.
        let (free_tx, free) = bounded::<Vec<u8>>(4096);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut sink = Sink::open(&spec.target)?;
        let writer_dropped = dropped.clone();
        let writer_free = free_tx.clone();
        std::thread::Builder::new()
            .name("ringgate-log".into())
            .spawn(move || {
                for msg in from_workers {
                    match msg {
                        LogMsg::Lines(mut buf) => {
                            if let Err(e) = sink.write(&buf) {
                                let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                                if writer_dropped.fetch_add(lines, Ordering::Relaxed) == 0 {
                                    tracing::error!(error = %e, "access log write failed; dropping lines (counted)");
                                }
                            }
                            buf.clear();
                            let _ = writer_free.try_send(buf);
                        }
                        LogMsg::Reopen => {
                            if let Err(e) = sink.reopen() {
                                tracing::error!(error = %e, "cannot reopen the access log; keeping the old file");
                            }
                        }
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(AccessLog {
            sample: spec.sample,
            to_writer,
            free,
            free_tx,
            dropped,
        })
    }
}

enum Sink {
    Stdout,
    File {
        path: std::path::PathBuf,
        file: std::fs::File,
    },
}

impl Sink {
    fn open(target: &LogTarget) -> Result<Sink, String> {
        match target {
            LogTarget::Stdout => Ok(Sink::Stdout),
            LogTarget::File(path) => {
                let file = open_append(path)
                    .map_err(|e| format!("cannot open access log {}: {e}", path.display()))?;
                Ok(Sink::File {
                    path: path.clone(),
                    file,
                })
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        if let Sink::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// What one finished request contributes to its log line.
pub struct Entry<'a> {
    pub request_id: &'a [u8],
    pub client: SocketAddr,
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub status: u16,
    pub route: &'a str,
    pub upstream: Option<SocketAddr>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    pub upstream_us: Option<u64>,
    pub worker: usize,
    /// HTTPS connections: the TLS version and the verified client
    /// certificate (subject, SHA-256 fingerprint), if any.
    pub tls: Option<TlsFields<'a>>,
    /// The authenticated consumer's name.
    pub consumer: Option<&'a str>,
}

#[derive(Clone, Copy)]
pub struct TlsFields<'a> {
    pub version: &'static str,
    pub client_subject: Option<&'a str>,
    pub client_sha256: Option<&'a str>,
}

/// A worker's side of the access log.
pub struct WorkerLog {
    log: AccessLog,
    buf: RefCell<Vec<u8>>,
    /// Sampling: log when the next random value is below this.
    threshold: u64,
    rng: Cell<u64>,
    dropped: Cell<u64>,
}

impl WorkerLog {
    pub fn new(log: AccessLog, worker: usize) -> WorkerLog {
        let threshold = if log.sample >= 1.0 {
            u64::MAX
        } else {
            (log.sample * u64::MAX as f64) as u64
        };
        for _ in 0..SPARE_BUFFERS_PER_WORKER {
            let _ = log.free_tx.try_send(Vec::with_capacity(BUFFER_BYTES));
        }
        WorkerLog {
            log,
            buf: RefCell::new(Vec::with_capacity(BUFFER_BYTES)),
            threshold,
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1)),
            dropped: Cell::new(0),
        }
    }

    fn sampled(&self) -> bool {
        if self.threshold == u64::MAX {
            return true;
        }
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x < self.threshold
    }

    /// Appends one line (if sampled). Never allocates: a buffer without
    /// room for a whole line is shipped first, and without an emptied
    /// buffer to take its place the line is dropped and counted.
    pub fn record(&self, e: &Entry<'_>) {
        if !self.sampled() {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        if buf.capacity() - buf.len() < MAX_LINE_BYTES {
            self.ship(&mut buf);
            if buf.capacity() - buf.len() < MAX_LINE_BYTES {
                self.dropped.set(self.dropped.get() + 1);
                return;
            }
        }
        format_line(&mut buf, e);
    }

    /// Called from the worker's tick: ship what accumulated.
    pub fn flush(&self) {
        let dropped = self.dropped.replace(0);
        if dropped > 0 {
            self.log.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            self.ship(&mut buf);
        }
    }

    /// Hands `buf`'s lines to the writer in exchange for an emptied buffer
    /// from the stock. With none back yet, `buf` stays as it is (the caller
    /// drops lines); with the writer's queue full, the lines are dropped and
    /// counted and `buf` is reused.
    fn ship(&self, buf: &mut Vec<u8>) {
        let Ok(replacement) = self.log.free.try_recv() else {
            return;
        };
        let full = std::mem::replace(buf, replacement);
        if let Err(
            TrySendError::Full(LogMsg::Lines(mut full))
            | TrySendError::Disconnected(LogMsg::Lines(mut full)),
        ) = self.log.to_writer.try_send(LogMsg::Lines(full))
        {
            let lines = full.iter().filter(|&&b| b == b'\n').count() as u64;
            self.log.dropped.fetch_add(lines, Ordering::Relaxed);
            full.clear();
            let _ = self.log.free_tx.try_send(full);
        }
    }
}

/// At most `max` bytes of `s`; `true` when it was cut.
fn truncated(s: &[u8], max: usize) -> (&[u8], bool) {
    if s.len() > max {
        (&s[..max], true)
    } else {
        (s, false)
    }
}

fn json_escape_bounded(out: &mut Vec<u8>, s: &[u8], max: usize) {
    let (s, cut) = truncated(s, max);
    json_escape(out, s);
    if cut {
        out.extend_from_slice(b"...");
    }
}

/// Appends one JSON object and a newline.
pub fn format_line(out: &mut Vec<u8>, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"ts\":\"");
    rfc3339_now(out);
    out.extend_from_slice(b"\",\"request_id\":\"");
    json_escape_bounded(out, e.request_id, MAX_LOGGED_REQUEST_ID);
    let _ = write!(out, "\",\"client\":\"{}\",\"method\":\"", e.client.ip());
    json_escape_bounded(out, e.method, MAX_LOGGED_METHOD);
    out.extend_from_slice(b"\",\"path\":\"");
    json_escape_bounded(out, e.path, MAX_LOGGED_PATH);
    let _ = write!(out, "\",\"status\":{},\"route\":\"", e.status);
    json_escape_bounded(out, e.route.as_bytes(), MAX_LOGGED_ROUTE);
    out.extend_from_slice(b"\",\"upstream\":");
    match e.upstream {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream_ms\":",
        e.bytes_in,
        e.bytes_out,
        e.duration_us as f64 / 1000.0
    );
    match e.upstream_us {
        Some(us) => {
            let _ = write!(out, "{:.3}", us as f64 / 1000.0);
        }
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(out, ",\"worker\":{}", e.worker);
    if let Some(tls) = &e.tls {
        let _ = write!(out, ",\"tls\":\"{}\"", tls.version);
        if let (Some(subject), Some(sha256)) = (tls.client_subject, tls.client_sha256) {
            out.extend_from_slice(b",\"client_cert\":{\"subject\":\"");
            json_escape_bounded(out, subject.as_bytes(), MAX_LOGGED_CERT_SUBJECT);
            out.extend_from_slice(b"\",\"sha256\":\"");
            json_escape_bounded(out, sha256.as_bytes(), 64);
            out.extend_from_slice(b"\"}");
        }
    }
    if let Some(consumer) = e.consumer {
        out.extend_from_slice(b",\"consumer\":\"");
        json_escape_bounded(out, consumer.as_bytes(), MAX_LOGGED_CONSUMER);
        out.extend_from_slice(b"\"");
    }
    out.extend_from_slice(b"}\n");
}

/// JSON string escaping; bytes ≥ 0x80 are written as \u00XX so the line is
/// valid UTF-8 whatever the client sent.
fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
    }
}

/// `2026-11-24T02:00:00.123Z` for now.
fn rfc3339_now(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::http::date::civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_even_for_hostile_paths() {
        let mut out = Vec::new();
        format_line(
            &mut out,
            &Entry {
                request_id: b"abc",
                client: "127.0.0.1:5000".parse().unwrap(),
                method: b"GET",
                path: b"/a\"b\\c\x01\xff",
                status: 200,
                route: "r\"1",
                upstream: None,
                bytes_in: 10,
                bytes_out: 20,
                duration_us: 1500,
                upstream_us: Some(700),
                worker: 3,
                tls: None,
                consumer: None,
            },
        );
        let text = String::from_utf8(out).expect("valid UTF-8");
        assert!(text.ends_with("}\n"));
        assert!(text.contains(r#""path":"/a\"b\\c\u0001\u00ff""#), "{text}");
        assert!(text.contains(r#""route":"r\"1""#));
        assert!(
            text.contains(r#""duration_ms":1.500,"upstream_ms":0.700,"worker":3"#),
            "{text}"
        );
        assert_eq!(text.matches('"').count() % 2, 0);
    }

    #[test]
    fn a_line_never_exceeds_its_bound_whatever_the_fields() {
        let hostile = vec![0xffu8; 20_000];
        let route = "\u{1}".repeat(1000);
        let mut out = Vec::new();
        format_line(
            &mut out,
            &Entry {
                request_id: &hostile,
                client: "[2001:db8::1]:5000".parse().unwrap(),
                method: &hostile,
                path: &hostile,
                status: 599,
                route: &route,
                upstream: Some("[2001:db8::2]:65535".parse().unwrap()),
                bytes_in: u64::MAX,
                bytes_out: u64::MAX,
                duration_us: u64::MAX,
                upstream_us: Some(u64::MAX),
                worker: usize::MAX,
                tls: Some(TlsFields {
                    version: "1.3",
                    client_subject: Some(&route),
                    client_sha256: Some("ab12"),
                }),
                consumer: Some(&route),
            },
        );
        assert!(
            out.len() <= MAX_LINE_BYTES,
            "{} > {MAX_LINE_BYTES}",
            out.len()
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\\u00ff...\""), "cut fields are marked");
    }

    fn entry() -> Entry<'static> {
        Entry {
            request_id: b"id",
            client: "127.0.0.1:1".parse().unwrap(),
            method: b"GET",
            path: b"/x",
            status: 200,
            route: "r",
            upstream: None,
            bytes_in: 1,
            bytes_out: 2,
            duration_us: 3,
            upstream_us: None,
            worker: 0,
            tls: None,
            consumer: Some("acme"),
        }
    }

    #[test]
    fn buffers_never_grow_and_lines_are_dropped_when_the_writer_lags() {
        // A log whose writer never runs: channels only, no thread.
        let (to_writer, from_workers) = bounded::<LogMsg>(1);
        let (free_tx, free) = bounded::<Vec<u8>>(16);
        let log = AccessLog {
            sample: 1.0,
            to_writer,
            free,
            free_tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let worker = WorkerLog::new(log.clone(), 0);
        let capacity = worker.buf.borrow().capacity();
        let per_buffer = (BUFFER_BYTES - MAX_LINE_BYTES) / 100 + 1;
        let mut recorded = 0u64;
        // Enough lines to fill the worker's buffer and every spare.
        for _ in 0..per_buffer * (SPARE_BUFFERS_PER_WORKER + 3) {
            worker.record(&entry());
            recorded += 1;
            assert_eq!(worker.buf.borrow().capacity(), capacity, "never grows");
        }
        worker.flush();
        let shipped: u64 = from_workers
            .try_iter()
            .map(|m| match m {
                LogMsg::Lines(b) => b.iter().filter(|&&c| c == b'\n').count() as u64,
                LogMsg::Reopen => 0,
            })
            .sum();
        let buffered = worker.buf.borrow().iter().filter(|&&c| c == b'\n').count() as u64;
        let dropped = log.dropped.load(Ordering::Relaxed);
        assert!(dropped > 0, "the writer lagged, so lines were dropped");
        assert!(shipped > 0, "one buffer fitted in the writer's queue");
        assert_eq!(
            shipped + buffered + dropped,
            recorded,
            "every line accounted"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = Vec::new();
        rfc3339_now(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(s.len(), 24, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T",
            "{s}"
        );
    }
}
