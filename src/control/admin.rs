//! [cold] The admin listener: `GET /metrics` (Prometheus text), `/healthz`,
//! `/readyz`, `/config`, `/workers`, `POST /reload`, `POST /cache/purge`.
//! It runs on its own
//! threads with blocking std I/O, never on a worker; it learns about workers
//! only by asking them for reports over their command channels.
//!
//! Each connection gets its own thread (at most `MAX_CONNECTIONS` at once)
//! and one deadline for the whole exchange, so a slow or silent client
//! cannot wedge `/healthz` for everyone else. Requests are checked before
//! they are served: the Host must be an IP literal, `localhost` or an
//! allowed name (a DNS-rebinding page cannot read `/config`), a POST must
//! not come from another site's page (Origin, Sec-Fetch-Site, form content
//! types), and with `token_file` every request but `/healthz` needs the
//! bearer token.

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
/// Admin connections served at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;
/// The longest one admin exchange may take to arrive and to be written.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);

pub struct Admin {
    #[allow(clippy::disallowed_types)]
    pub reloader: Arc<std::sync::Mutex<super::reload::Reloader>>,
    pub workers: Vec<Sender<Command>>,
    pub drivers: Vec<&'static str>,
    pub access_log_dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub limits: Arc<crate::ratelimit::aggregator::Stats>,
    pub jwks: crate::auth::jwks::Board,
    /// What the health prober last saw.
    pub health: super::health::Board,
    /// What outlier detection last decided.
    pub outliers: super::outlier::Board,
}

/// Binds the admin address and serves it on a new thread.
pub fn spawn(addr: SocketAddr, admin: Admin) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let admin = Arc::new(admin);
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("ringgate-admin".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                use std::sync::atomic::Ordering::SeqCst;
                if active.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, SeqCst);
                    continue; // dropped: closed at once
                }
                let (admin, active) = (admin.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("ringgate-admin-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &admin) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                        active.fetch_sub(1, SeqCst);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start an admin connection thread");
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

/// What the checks need of a request head.
struct AdminRequest {
    method: Vec<u8>,
    path: Vec<u8>,
    host: Vec<u8>,
    authorization: Option<Vec<u8>>,
    origin: Option<Vec<u8>>,
    fetch_site: Option<Vec<u8>>,
    content_type: Option<Vec<u8>>,
    query: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<AdminRequest>> {
    let deadline = Instant::now() + EXCHANGE_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let mut headers = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request(&buf, 16 * 1024, 64, &mut headers) {
            Ok(Some(head)) => {
                let header = |name: &[u8]| {
                    headers
                        .iter()
                        .find(|h| h.name.get(&buf).eq_ignore_ascii_case(name))
                        .map(|h| h.value.get(&buf).to_vec())
                };
                return Ok(Some(AdminRequest {
                    method: head.method_span.get(&buf).to_vec(),
                    path: head.path.get(&buf).to_vec(),
                    query: head.query.get(&buf).to_vec(),
                    host: head.host.map(|h| h.get(&buf).to_vec()).unwrap_or_default(),
                    authorization: header(b"authorization"),
                    origin: header(b"origin"),
                    fetch_site: header(b"sec-fetch-site"),
                    content_type: header(b"content-type"),
                }));
            }
            Ok(None) => continue,
            Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

/// The host part of a Host value or an Origin's authority (no port, no
/// brackets), lowercased.
fn host_name(authority: &[u8]) -> String {
    let text = String::from_utf8_lossy(authority).to_ascii_lowercase();
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    text.rsplit_once(':')
        .map_or(text.as_str(), |(h, _)| h)
        .to_string()
}

/// Host names a browser page cannot make resolve to us at will: IP
/// literals and localhost, plus the configured ones.
fn host_allowed(host: &str, access: &crate::snapshot::AdminAccess) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || host == "localhost"
        || access.allowed_hosts.iter().any(|h| h == host)
}

/// Why a request is refused before it is served, if it is.
fn refusal(
    req: &AdminRequest,
    access: &crate::snapshot::AdminAccess,
) -> Option<(u16, &'static str)> {
    if !host_allowed(&host_name(&req.host), access) {
        return Some((
            403,
            "host not allowed: use an IP address, localhost or admin.allowed_hosts\n",
        ));
    }
    if req.method == b"POST" {
        let cross_site_fetch = req.fetch_site.as_deref().is_some_and(|s| {
            !(s.eq_ignore_ascii_case(b"same-origin") || s.eq_ignore_ascii_case(b"none"))
        });
        let foreign_origin = req.origin.as_deref().is_some_and(|o| {
            let authority = o.split(|&b| b == b'/').nth(2).unwrap_or(b"");
            o == b"null" || !host_allowed(&host_name(authority), access)
        });
        // What an HTML form can send without a preflight.
        let form_type = req.content_type.as_deref().is_some_and(|t| {
            let t = String::from_utf8_lossy(t).to_ascii_lowercase();
            [
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "text/plain",
            ]
            .iter()
            .any(|f| t.starts_with(f))
        });
        if cross_site_fetch || foreign_origin || form_type {
            return Some((403, "cross-site requests may not change the gateway\n"));
        }
    }
    if let Some(token) = &access.token {
        let presented = req
            .authorization
            .as_deref()
            .and_then(|a| {
                a.strip_prefix(b"Bearer ")
                    .or_else(|| a.strip_prefix(b"bearer "))
            })
            .unwrap_or(b"");
        if !constant_time_eq(presented, token.as_bytes()) {
            return Some((401, "admin token required: Authorization: Bearer TOKEN\n"));
        }
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn serve(mut stream: TcpStream, admin: &Admin) -> std::io::Result<()> {
    stream.set_write_timeout(Some(EXCHANGE_DEADLINE))?;
    let req = match read_request(&mut stream) {
        Ok(Some(req)) => req,
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return respond(&mut stream, 400, "text/plain", "bad request\n");
        }
        Err(e) => return Err(e),
    };
    // Liveness says nothing and needs no lock: always answered.
    if req.method == b"GET" && req.path == b"/healthz" {
        return respond(&mut stream, 200, "text/plain", "ok\n");
    }
    let Some(snapshot) = admin.snapshot() else {
        return respond(&mut stream, 500, "text/plain", "reload state poisoned\n");
    };
    if let Some((status, why)) = refusal(&req, &snapshot.admin_access) {
        return respond(&mut stream, status, "text/plain", why);
    }
    drop(snapshot);
    match (req.method.as_slice(), req.path.as_slice()) {
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
            if let Ok(board) = admin.jwks.lock() {
                text.push_str(&crate::metrics::render_jwks(&board.sources));
            }
            text.push_str(&super::health::render_metrics(&admin.health));
            text.push_str(&super::outlier::render_metrics(&admin.outliers));
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
        (b"GET", b"/upstreams") => match admin.snapshot() {
            Some(s) => respond(
                &mut stream,
                200,
                "application/json",
                &super::health::upstreams_json(&s, &admin.health, &admin.outliers),
            ),
            None => respond(&mut stream, 500, "text/plain", "reload state poisoned\n"),
        },
        (b"GET", b"/config") => match admin.snapshot() {
            Some(s) => respond(&mut stream, 200, "application/toml", &s.redacted_config),
            None => respond(&mut stream, 500, "text/plain", "reload state poisoned\n"),
        },
        (b"POST", b"/cache/purge") => {
            let query = req.query.strip_prefix(b"?").unwrap_or(&req.query);
            match crate::cache::purge::Purge::from_query(query) {
                Err(why) => respond(&mut stream, 400, "text/plain", &format!("{why}\n")),
                Ok(purge) => {
                    let (purged, answered) =
                        super::cache_purge::purge_all(&admin.workers, purge.clone());
                    let mut status = if answered == admin.workers.len() {
                        200
                    } else {
                        504
                    };
                    let mut json = format!(
                        "{{\"purged\":{purged},\"workers\":{answered},\"of\":{}",
                        admin.workers.len()
                    );
                    // Other nodes: through Redis, where it is configured.
                    if let Some(redis) = admin.snapshot().and_then(|s| s.redis.clone()) {
                        match super::cache_purge::publish(&redis, &purge) {
                            Ok(nodes) => json.push_str(&format!(",\"nodes\":{nodes}")),
                            Err(error) => {
                                tracing::warn!(%error, "cache purge not published to other nodes");
                                status = 502;
                                json.push_str(",\"redis_error\":");
                                json.push_str(
                                    &serde_json::to_string(&error.to_string()).unwrap_or_default(),
                                );
                            }
                        }
                    }
                    json.push_str("}\n");
                    respond(&mut stream, status, "application/json", &json)
                }
            }
        }
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
            "not found: try GET /metrics, /healthz, /readyz, /config, /workers, /upstreams, POST /reload or POST /cache/purge\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let challenge = if status == 401 {
        "www-authenticate: Bearer realm=\"ringgate-admin\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{challenge}connection: close\r\n\r\n",
        crate::http::write::reason_phrase(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
