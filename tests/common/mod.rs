//! End-to-end test harness: starts the real `ringgate` binary on loopback,
//! a recording upstream that keeps exactly what it received, and a raw-socket
//! client that checks bytes on the wire.

#![allow(dead_code, clippy::disallowed_types)]

pub mod jwt;
pub mod redis;
pub mod tls;
pub mod websocket;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- drivers

/// The io drivers to run each scenario under: epoll always, io_uring where
/// the kernel and sandbox allow it. `RINGGATE_TEST_DRIVERS=epoll` narrows it.
pub fn drivers() -> Vec<&'static str> {
    if let Ok(list) = std::env::var("RINGGATE_TEST_DRIVERS") {
        return ["epoll", "io_uring"]
            .into_iter()
            .filter(|d| list.split(',').any(|x| x == *d))
            .collect();
    }
    let mut d = vec!["epoll"];
    if io_uring_available() {
        d.push("io_uring");
    } else {
        eprintln!("note: io_uring unavailable here; running the epoll driver only");
    }
    d
}

fn io_uring_available() -> bool {
    // io_uring_setup(2) with 4 entries; a valid fd back means it works.
    let mut params = [0u8; 120];
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        true
    } else {
        false
    }
}

/// A config with one loopback listener on an ephemeral port.
pub fn config(driver: &str, rest: &str) -> String {
    format!(
        "workers = 1\nio_driver = \"{driver}\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n{rest}"
    )
}

// ---------------------------------------------------------------- gateway

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn temp_path(name: &str) -> std::path::PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ringgate-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config has an `[admin]` section.
    pub admin: Option<SocketAddr>,
    pub log: std::path::PathBuf,
}

impl Gateway {
    pub fn start(config: &str) -> Gateway {
        Self::start_args(config, &[])
    }

    pub fn start_args(config: &str, extra: &[&str]) -> Gateway {
        let path = temp_path("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let log = path.with_file_name("gateway.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .arg("run")
            .arg("-c")
            .arg(&path)
            .args(extra)
            .args(
                std::env::var("RINGGATE_TEST_LOG")
                    .map(|l| vec!["--log-level".to_string(), l])
                    .unwrap_or_default(),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn ringgate");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                for (marker, kind) in [
                    ("listening on http://", "main"),
                    ("admin on http://", "admin"),
                ] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send((kind, addr));
                    }
                }
            }
        });
        let wants_admin = config.contains("[admin]");
        let mut main_addr = None;
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while main_addr.is_none() || (wants_admin && admin.is_none()) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(("main", a)) => main_addr = Some(a.parse().unwrap()),
                Ok((_, a)) => admin = Some(a.parse().unwrap()),
                Err(_) => break,
            }
        }
        match main_addr.filter(|_| !wants_admin || admin.is_some()) {
            Some(addr) => Gateway {
                child,
                addr,
                admin,
                log,
            },
            None => {
                let _ = child.kill();
                panic!(
                    "gateway did not start:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn conn(&self) -> Conn {
        Conn::open(self.addr)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Keep the config and log of a failing test for diagnosis.
        if !std::thread::panicking()
            && std::env::var_os("RINGGATE_TEST_KEEP").is_none()
            && let Some(dir) = self.log.parent()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

// ---------------------------------------------------------------- client

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The reason phrase as the gateway wrote it.
    pub reason: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body was chunked on the wire.
    pub chunked: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that keeps unread bytes between responses, so
/// pipelined responses can be read one after another.
pub struct Conn<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn::over(stream)
    }
}

impl<S: Read + Write> Conn<S> {
    /// A connection over an already open stream (a TLS one, say).
    pub fn over(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends, tolerating a peer that already closed.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        match retry_interrupted(|| self.stream.read(&mut chunk)) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("timed out waiting for the gateway")
            }
            Err(_) => 0,
        }
    }

    /// Reads interim (1xx) and final responses; returns all of them in order.
    pub fn read_responses_until_final(&mut self, head_request: bool) -> Vec<Response> {
        let mut all = Vec::new();
        loop {
            let r = self.read_response(head_request);
            let interim = (100..200).contains(&r.status);
            all.push(r);
            if !interim {
                return all;
            }
        }
    }

    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request)
            .expect("connection closed before a complete response")
    }

    pub fn try_read_response(&mut self, head_request: bool) -> Option<Response> {
        let (status, reason, version, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut res = httparse::Response::new(&mut hs);
            match res
                .parse(&self.buf)
                .expect("valid response head from the gateway")
            {
                httparse::Status::Complete(len) => {
                    let headers = res
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    let reason = res.reason.unwrap_or_default().to_string();
                    break (
                        res.code.unwrap(),
                        reason,
                        res.version.unwrap(),
                        headers,
                        len,
                    );
                }
                httparse::Status::Partial => {
                    if self.fill() == 0 {
                        return None;
                    }
                }
            }
        };
        self.buf.drain(..head_len);
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut chunked = false;
        let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304
        {
            Vec::new()
        } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            chunked = true;
            self.read_chunked()
        } else if let Some(cl) = find("content-length") {
            let n: usize = cl.trim().parse().unwrap();
            while self.buf.len() < n {
                assert!(self.fill() > 0, "closed inside a content-length body");
            }
            self.buf.drain(..n).collect()
        } else {
            while self.fill() > 0 {}
            std::mem::take(&mut self.buf)
        };
        Some(Response {
            status,
            reason,
            version,
            headers,
            body,
            chunked,
        })
    }

    fn read_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill() > 0, "closed inside chunked framing");
        }
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line();
            let size_text = String::from_utf8(line).unwrap();
            let size =
                usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                loop {
                    if self.read_line().is_empty() {
                        return body;
                    }
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill() > 0, "closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            assert_eq!(&self.buf[..2], b"\r\n");
            self.buf.drain(..2);
        }
    }
}

impl Conn {
    /// True if the gateway closed the connection (EOF or reset) within 5s.
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1024];
        loop {
            match retry_interrupted(|| self.stream.read(&mut b)) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// True only for an orderly close (FIN, read returns 0) within 5s; a
    /// reset or a timeout is false.
    pub fn closed_cleanly(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1024];
        loop {
            match retry_interrupted(|| self.stream.read(&mut b)) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }

    pub fn close_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// Retries a read that a signal interrupted (EINTR). Plain `read` does not,
/// and io_uring teardown in this process can interrupt blocking calls.
pub fn retry_interrupted<T>(mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut c = Conn::open(addr);
    c.send(raw);
    c.read_response(raw.starts_with(b"HEAD "))
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

// ---------------------------------------------------------------- upstream

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
    /// Which upstream connection (0-based, in accept order) carried it.
    pub connection: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

pub enum Reply {
    /// A normal response with Content-Length.
    Ok(u16, Vec<(String, String)>, Vec<u8>),
    /// A chunked response with these chunks.
    Chunked(u16, Vec<Vec<u8>>),
    /// A response delimited by closing the connection.
    UntilClose(u16, Vec<u8>),
    /// These exact bytes, then keep reading requests.
    Raw(Vec<u8>),
    /// These exact bytes, then close.
    RawClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
}

pub fn ok(body: &str) -> Reply {
    Reply::Ok(200, vec![], body.as_bytes().to_vec())
}

type Handler = dyn Fn(&Recorded) -> Reply + Send + Sync;

pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    state: Arc<UpstreamState>,
}

struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    tls_seen: Mutex<Vec<TlsSeen>>,
    connections: AtomicUsize,
    stop: AtomicBool,
    handler: Box<Handler>,
    /// A copy of every open connection, to cut them all at once (`kill`).
    open: Mutex<Vec<(usize, TcpStream)>>,
}

impl Upstream {
    /// An upstream answering `200` with its own name as the body.
    pub fn named(name: &str) -> Upstream {
        let n = name.to_string();
        Self::start(name, move |_| ok(&n))
    }

    pub fn start(
        name: &str,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Self::start_on(name, None, handler)
    }

    /// An upstream speaking HTTPS with `config` (rustls).
    pub fn start_tls(
        name: &str,
        config: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Self::start_on(name, Some(config), handler)
    }

    /// An upstream on `addr` (a port an earlier, killed one had: it is
    /// back).
    pub fn start_at(
        name: &str,
        addr: SocketAddr,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Self::listen(name, TcpListener::bind(addr).unwrap(), None, handler)
    }

    fn start_on(
        name: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        Self::listen(
            name,
            TcpListener::bind("127.0.0.1:0").unwrap(),
            tls,
            handler,
        )
    }

    /// As if its process died: the port refuses connections from now on
    /// and every open connection is cut.
    pub fn kill(&self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then drops the listener.
        let _ = TcpStream::connect(self.addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.addr).is_ok() {
            assert!(Instant::now() < deadline, "the listener did not close");
            std::thread::sleep(Duration::from_millis(5));
        }
        for (_, c) in self.state.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn listen(
        name: &str,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            requests: Mutex::new(Vec::new()),
            tls_seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            handler: Box::new(handler),
            open: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = s.connections.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    s.open.lock().unwrap().push((id, clone));
                }
                let s = s.clone();
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let open = s.clone();
                    serve_connection(s, stream, id, tls);
                    // Its copy for `kill` goes too, so the socket closes now.
                    open.open.lock().unwrap().retain(|(i, _)| *i != id);
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            state,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The TLS handshakes this upstream completed, in order.
    pub fn tls_seen(&self) -> Vec<TlsSeen> {
        self.state.tls_seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one accepted connection, plain or TLS, to its end.
fn serve_connection(
    s: Arc<UpstreamState>,
    stream: TcpStream,
    id: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let Some(config) = tls else {
        return serve_upstream(s, stream, id);
    };
    let mut stream = stream;
    let _ = stream.set_nodelay(true);
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    while conn.is_handshaking() {
        if conn.complete_io(&mut stream).is_err() {
            return;
        }
    }
    s.tls_seen.lock().unwrap().push(TlsSeen {
        sni: conn.server_name().map(str::to_string),
        resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        client_cert: conn.peer_certificates().is_some(),
    });
    serve_upstream_on(s, rustls::StreamOwned::new(conn, stream), id);
}

fn serve_upstream(state: Arc<UpstreamState>, stream: TcpStream, connection: usize) {
    let _ = stream.set_nodelay(true);
    serve_upstream_on(state, stream, connection);
}

/// What a TLS upstream saw of one connection's handshake.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    pub sni: Option<String>,
    pub resumed: bool,
    /// The client presented a certificate (upstream mTLS).
    pub client_cert: bool,
}

fn serve_upstream_on<S: Read + Write>(state: Arc<UpstreamState>, mut stream: S, connection: usize) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        // Head.
        let (recorded_head, head_len, framing) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let te = headers.iter().any(|(n, v)| {
                        n.eq_ignore_ascii_case("transfer-encoding")
                            && v.eq_ignore_ascii_case("chunked")
                    });
                    let cl = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.trim().parse::<usize>().unwrap());
                    let rec = Recorded {
                        method: req.method.unwrap().to_string(),
                        target: req.path.unwrap().to_string(),
                        version: req.version.unwrap(),
                        headers,
                        body: Vec::new(),
                        chunked: te,
                        connection,
                    };
                    break (rec, len, (te, cl));
                }
                Ok(httparse::Status::Partial) => {
                    match retry_interrupted(|| stream.read(&mut chunk)) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                Err(_) => {
                    let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    return;
                }
            }
        };
        buf.drain(..head_len);
        let mut rec = recorded_head;
        // Body.
        match framing {
            (true, _) => {
                // Chunked: decode strictly enough for tests.
                loop {
                    let line_end = loop {
                        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                            break i;
                        }
                        match retry_interrupted(|| stream.read(&mut chunk)) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buf[..line_end])
                            .unwrap()
                            .split(';')
                            .next()
                            .unwrap(),
                        16,
                    )
                    .unwrap();
                    buf.drain(..line_end + 2);
                    if size == 0 {
                        while buf.len() < 2 {
                            match retry_interrupted(|| stream.read(&mut chunk)) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        assert_eq!(&buf[..2], b"\r\n", "gateway must not forward trailers");
                        buf.drain(..2);
                        break;
                    }
                    while buf.len() < size + 2 {
                        match retry_interrupted(|| stream.read(&mut chunk)) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    rec.body.extend(buf.drain(..size));
                    buf.drain(..2);
                }
            }
            (false, Some(n)) => {
                while buf.len() < n {
                    match retry_interrupted(|| stream.read(&mut chunk)) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                rec.body = buf.drain(..n).collect();
            }
            (false, None) => {}
        }
        state.requests.lock().unwrap().push(rec.clone());
        let reply = (state.handler)(&rec);
        if !write_reply(&mut stream, reply, rec.method == "HEAD") {
            return;
        }
    }
}

/// Writes a reply; returns whether the connection stays open.
fn write_reply(stream: &mut impl Write, reply: Reply, head: bool) -> bool {
    match reply {
        Reply::Ok(status, headers, body) => {
            let mut out =
                format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", body.len()).into_bytes();
            for (n, v) in headers {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if !head {
                out.extend_from_slice(&body);
            }
            stream.write_all(&out).is_ok()
        }
        Reply::Chunked(status, chunks) => {
            let mut out =
                format!("HTTP/1.1 {status} X\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
            for c in chunks {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(&c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            stream.write_all(&out).is_ok()
        }
        Reply::UntilClose(status, body) => {
            let mut out = format!("HTTP/1.1 {status} X\r\nconnection: close\r\n\r\n").into_bytes();
            out.extend_from_slice(&body);
            let _ = stream.write_all(&out);
            false
        }
        Reply::Raw(bytes) => stream.write_all(&bytes).is_ok(),
        Reply::RawClose(bytes) => {
            let _ = stream.write_all(&bytes);
            false
        }
        Reply::Close => false,
        Reply::Delay(d, inner) => {
            std::thread::sleep(d);
            write_reply(stream, *inner, head)
        }
    }
}

/// A port nothing listens on (bound then released).
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A window length whose current window has at least `room` left now.
///
/// Window quotas are aligned to multiples of their length on the wall clock
/// (docs/rate-limiting.md), so a test that used a fixed window ("10m") would
/// see the quota renewed whenever its run happened to cross a boundary. A
/// test that finishes within `room` and uses this window stays inside one
/// window wherever the clock is. Returns (config text, seconds).
pub fn window_with_room(room: Duration) -> (String, u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let room = room.as_nanos();
    let first = (2 * room).div_ceil(1_000_000_000) as u64;
    for secs in first..first * 4 {
        let w = u128::from(secs) * 1_000_000_000;
        if w - now % w >= room {
            return (format!("{secs}s"), secs);
        }
    }
    panic!("no window length in [2, 8) x room has room left now")
}

/// Room for any test here, on the busiest machine it must pass on.
pub const TEST_ROOM: Duration = Duration::from_secs(900);

/// Polls `cond` every 10 ms until it holds, failing the test with `what`
/// after `limit`. End-to-end tests wait for a condition this way, never for
/// a fixed time that a busy machine might overrun.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {limit:?} for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How long a test waits for something the gateway does in the background.
pub const PATIENCE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- config & metrics

/// The error `ringgate::config` gives for `text` (which must not load).
pub fn config_error(text: &str) -> String {
    match ringgate::config::load_str(text, "t") {
        Ok(_) => panic!("the config loaded, but it should not:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// The sum of the values of every `/metrics` line that starts with
/// `series` (a name, or a name and some of its labels).
pub fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = get(gw.admin.expect("an [admin] listener"), "/metrics").text();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(series)).collect();
    assert!(!lines.is_empty(), "no {series} on /metrics");
    lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
