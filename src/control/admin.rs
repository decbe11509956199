//! [cold] The admin listener: `GET /metrics` (Prometheus text), `/healthz`,
//! `/readyz`, `/config`, `/workers`. It runs on its own thread with blocking
//! std I/O, never on a worker; it learns about workers only by asking them
//! for reports over their command channels.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::http::parse_request;
use crate::metrics::{WorkerReport, render_prometheus};
use crate::snapshot::Snapshot;
use crate::worker::Command;

/// How long a scrape waits for every worker's report (workers look at their
/// command channel every 20 ms).
const REPORT_WAIT: Duration = Duration::from_secs(2);

pub struct Admin {
    #[allow(clippy::disallowed_types)]
    pub reloader: Arc<std::sync::Mutex<super::reload::Reloader>>,
    pub workers: Vec<Sender<Command>>,
    pub drivers: Vec<&'static str>,
    pub access_log_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub limits: Arc<crate::ratelimit::aggregator::Stats>,
}

/// Binds the admin address and serves it on a new thread.
pub fn spawn(addr: SocketAddr, admin: Admin) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve(stream, &admin) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "admin accept failed"),
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

/// Asks every worker for its report; `None` for a worker that did not
/// answer in time.
pub fn collect_reports(workers: &[Sender<Command>]) -> Vec<Option<WorkerReport>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for w in workers {
        let _ = w.send(Command::Report(tx.clone()));
    }
    drop(tx);
    let mut reports: Vec<Option<WorkerReport>> = vec![None; workers.len()];
    let deadline = Instant::now() + REPORT_WAIT;
    while reports.iter().any(Option::is_none) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(report) => {
                let slot = report.worker;
                if slot < reports.len() {
                    reports[slot] = Some(report);
                }
            }
            Err(_) => break,
        }
    }
    reports
}

impl Admin {
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.reloader.lock().ok().map(|r| r.current())
    }
}

fn serve(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut headers = Vec::new();
    let (method, path) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, 16 * 1024, 64, &mut headers) {
            Ok(Some(head)) => {
                break (
                    head.method_span.get(&buf).to_vec(),
                    head.path.get(&buf).to_vec(),
                );
            }
            Ok(None) => continue,
            Err(_) => return respond(&mut stream, 400, "text/plain", "bad request\n"),
        }
    };
    match (method.as_slice(), path.as_slice()) {
        (b"GET", b"/healthz") => respond(&mut stream, 200, "text/plain", "ok\n"),
        (b"GET", b"/readyz") => {
            let reports = collect_reports(&admin.workers);
            let missing: Vec<usize> = (0..reports.len())
                .filter(|&i| reports[i].is_none())
                .collect();
            if missing.is_empty() {
                respond(&mut stream, 200, "text/plain", "ready\n")
            } else {
                respond(
                    &mut stream,
                    503,
                    "text/plain",
                    &format!("workers not answering: {missing:?}\n"),
                )
            }
        }
        (b"GET", b"/metrics") => {
            let reports: Vec<WorkerReport> = collect_reports(&admin.workers)
                .into_iter()
                .flatten()
                .collect();
            let Some(snapshot) = admin.snapshot() else {
                return respond(&mut stream, 500, "text/plain", "reload state poisoned\n");
            };
            let mut text = render_prometheus(&snapshot, &reports);
            if let Some(dropped) = &admin.access_log_dropped {
                let name = crate::metrics::names::ACCESS_LOG_DROPPED;
                text.push_str(&format!(
                    "# HELP {name} Access log lines lost (writer errors or a writer that fell behind).\n# TYPE {name} counter\n{name} {}\n",
                    dropped.load(std::sync::atomic::Ordering::Relaxed)
                ));
            }
            text.push_str(&crate::metrics::render_limit_sync(&admin.limits));
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
            )
        }
        (b"GET", b"/workers") => {
            let reports = collect_reports(&admin.workers);
            let mut json = String::from("{\"workers\":[");
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                let driver = admin.drivers.get(i).copied().unwrap_or("unknown");
                match r {
                    Some(r) => json.push_str(&format!(
                        "{{\"worker\":{i},\"driver\":\"{driver}\",\"connections_open\":{},\"connections_accepted\":{},\"requests\":{},\"answering\":true}}",
                        r.open_connections, r.connections_accepted, r.requests
                    )),
                    None => json.push_str(&format!("{{\"worker\":{i},\"driver\":\"{driver}\",\"answering\":false}}")),
                }
            }
            json.push_str("]}\n");
            respond(&mut stream, 200, "application/json", &json)
        }
        (b"GET", b"/config") => match admin.snapshot() {
            Some(s) => respond(&mut stream, 200, "application/toml", &s.redacted_config),
            None => respond(&mut stream, 500, "text/plain", "reload state poisoned\n"),
        },
        (b"POST", b"/reload") => {
            let result = match admin.reloader.lock() {
                Ok(mut r) => r.reload(),
                Err(_) => Err(vec!["reload state poisoned".into()]),
            };
            match result {
                Ok(summary) => respond(&mut stream, 200, "text/plain", &format!("{summary}\n")),
                Err(errors) => respond(
                    &mut stream,
                    422,
                    "text/plain",
                    &format!(
                        "reload rejected; the running config stays:\n{}\n",
                        errors.join("\n")
                    ),
                ),
            }
        }
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try GET /metrics, /healthz, /readyz, /config, /workers or POST /reload\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        crate::http::write::reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
