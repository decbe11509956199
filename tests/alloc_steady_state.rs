//! Heap allocations per proxied keep-alive request in steady state, counted
//! by a global allocator. The gateway runs in this process (through
//! `control::start`); the client and upstream here use fixed buffers only,
//! so every allocation counted inside the window is the gateway's.
//!
//! This file holds one test so that no other test's threads allocate while
//! it measures. The process's main thread is not counted: it is the test
//! harness's, which allocates when a test runs longer than a minute (its
//! "has been running for over 60 seconds" bookkeeping) — on a busy machine
//! this test does.
//!
//! Over HTTPS the client is rustls, which allocates for every record it
//! seals or opens; its thread is marked uncounted, so what is counted is
//! still the gateway's alone.
//!
//! `RINGGATE_ALLOC_TRACE=1` prints a backtrace for each of the first
//! allocations inside a measured window: how a failure is diagnosed.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Inside a measured window (backtraces are printed only there).
static MEASURING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Backtraces printed so far (at most `MAX_TRACES`), when tracing.
static TRACED: AtomicU64 = AtomicU64::new(0);
const MAX_TRACES: u64 = 8;

thread_local! {
    /// Whether this thread is the process's main thread (the harness's).
    static MAIN_THREAD: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    /// This thread's allocations are not the gateway's (a TLS client).
    static UNCOUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This thread is capturing a backtrace (whose own allocations are not
    /// traced again).
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tracing_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("RINGGATE_ALLOC_TRACE").is_some())
}

fn count() {
    let main = MAIN_THREAD.with(|m| match m.get() {
        Some(main) => main,
        None => {
            // gettid == getpid only on the main thread; neither allocates.
            let main =
                unsafe { libc::syscall(libc::SYS_gettid) } == i64::from(unsafe { libc::getpid() });
            m.set(Some(main));
            main
        }
    });
    if !main && !UNCOUNTED.with(|u| u.get()) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if MEASURING.load(Ordering::Relaxed) && !TRACING.with(|t| t.replace(true)) {
            if tracing_enabled() && TRACED.fetch_add(1, Ordering::Relaxed) < MAX_TRACES {
                let thread = std::thread::current();
                eprintln!(
                    "allocation in the measured window on thread {:?}:\n{}",
                    thread.name(),
                    std::backtrace::Backtrace::force_capture()
                );
            }
            TRACING.with(|t| t.set(false));
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\nCache-Control: public\r\n\r\nhello";

/// An upstream that answers every request head with `RESPONSE`, using one
/// fixed buffer per connection.
fn start_upstream() -> SocketAddr {
    start_upstream_over(None)
}

/// The same upstream, speaking TLS with `tls` when given (rustls, on
/// threads marked uncounted).
fn start_upstream_over(tls: Option<std::sync::Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        UNCOUNTED.with(|u| u.set(tls.is_some()));
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let tls = tls.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut stream: Box<dyn ReadWrite> = match tls {
                    None => Box::new(stream),
                    Some(config) => {
                        UNCOUNTED.with(|u| u.set(true));
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        Box::new(rustls::StreamOwned::new(conn, stream))
                    }
                };
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match stream.read(&mut buf[filled..]) {
                        Ok(0) => return,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => return,
                    }
                    // Answer each complete head (GET requests, no bodies).
                    while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                        if stream.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An HTTPS listener and a client that trusts it.
struct Https {
    section: String,
    /// An `[upstreams.app.tls]` table, when the upstream speaks TLS.
    upstream_tls: Option<String>,
    client: std::sync::Arc<rustls::ClientConfig>,
}

fn https() -> Https {
    let pki = common::tls::Pki::new("alloc");
    let cert = pki.server(&["api.example.com"], common::tls::Alg::EcdsaP256);
    Https {
        section: common::tls::listener_tls(&[&cert], ""),
        upstream_tls: None,
        client: common::tls::client_config(&[&pki.ca_der], &Default::default()),
    }
}

/// An HTTPS listener whose upstream `app` is reached over TLS, trusting
/// the CA at `upstream_ca`.
fn https_to(upstream_ca: &std::path::Path) -> Https {
    let mut https = https();
    https.upstream_tls = Some(format!(
        "[upstreams.app.tls]\nca_file = \"{}\"\n",
        upstream_ca.display()
    ));
    https
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `n` keep-alive requests and reads each response completely, with
/// fixed buffers. Returns the status code of the last one.
fn run_requests(stream: &mut impl ReadWrite, request: &[u8], n: usize) {
    let mut buf = [0u8; 8192];
    for _ in 0..n {
        stream.write_all(request).unwrap();
        let mut filled = 0;
        loop {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => panic!("gateway closed the connection"),
                Ok(k) => filled += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("read: {e}"),
            }
            if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "unexpected response");
                let head = &buf[..end];
                let at = find(head, b"content-length: ").expect("content-length") + 16;
                let mut len = 0usize;
                for &d in head[at..].iter().take_while(|d| d.is_ascii_digit()) {
                    len = len * 10 + usize::from(d - b'0');
                }
                if filled >= end + 4 + len {
                    assert_eq!(filled, end + 4 + len, "no pipelining here");
                    break;
                }
            }
        }
    }
}

/// The HMAC secret of the JWT route, and a long-lived token signed with it.
const JWT_SECRET: &[u8] = b"alloc-test-secret-alloc-test-secret!";

fn alloc_token() -> String {
    let claims = serde_json::json!({"sub": "alloc-user", "exp": 4_000_000_000u64, "scope": "read", "plan": "gold"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET).unwrap(),
    )
    .unwrap()
}

fn allocations_per_request(driver: &str, upstream: SocketAddr, path: &str, extra: &str) -> f64 {
    allocations_per_request_over(driver, upstream, path, extra, None)
}

fn allocations_per_request_over(
    driver: &str,
    upstream: SocketAddr,
    path: &str,
    extra: &str,
    tls: Option<&Https>,
) -> f64 {
    let tls_section = tls.map_or("", |t| t.section.as_str());
    let upstream_tls = tls.and_then(|t| t.upstream_tls.as_deref()).unwrap_or("");
    let config = format!(
        r#"workers = 1
io_driver = "{driver}"
{extra}
[[listeners]]
bind = "127.0.0.1:0"
{tls_section}
[upstreams.app]
endpoints = ["{upstream}"]
{upstream_tls}
[rate_limits.generous]
key = "client_ip"
rate = "1000000/s"
burst = 1000000
[rate_limits.generous_node]
key = "client_ip"
scope = "node"
rate = "1000000/s"
burst = 1000000

[[routes]]
path = "/direct"
respond = {{ status = 200, body = "hello" }}

[[routes]]
path_prefix = "/limited"
upstream = "app"
rate_limits = ["generous"]
[[routes]]
path_prefix = "/node-limited"
upstream = "app"
rate_limits = ["generous_node"]
[[routes]]
path_prefix = "/"
upstream = "app"
request_headers = {{ set = {{ "x-gateway" = "ringgate" }} }}
"#
    );
    let snapshot = ringgate::config::load_str(&config, "alloc-test").unwrap();
    let running = ringgate::control::start(snapshot).unwrap();
    let addr = running.addrs()[0];
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Box::new(stream)
        }
        Some(tls) => {
            UNCOUNTED.with(|u| u.set(true));
            let conn = common::tls::connect(addr, "api.example.com", &tls.client).unwrap();
            Box::new(conn.stream)
        }
    };
    let request = format!(
        "GET {path}?q=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: alloc-test\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.9\r\nOrigin: https://shop.example.org\r\nX-Api-Key: alloc-key\r\nAuthorization: Bearer {}\r\n\r\n",
        alloc_token()
    )
    .into_bytes();

    // Warm up: buffers reach their working size, pools fill, timers settle.
    run_requests(&mut stream, &request, 3_000);
    let measured = 20_000;
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    MEASURING.store(true, Ordering::SeqCst);
    run_requests(&mut stream, &request, measured);
    MEASURING.store(false, Ordering::SeqCst);
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    drop(stream);
    UNCOUNTED.with(|u| u.set(false));
    running.drain().unwrap();
    (after - before) as f64 / measured as f64
}

fn drivers() -> Vec<&'static str> {
    let mut params = [0u8; 120];
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        unsafe { libc::close(fd as i32) };
        vec!["epoll", "io_uring"]
    } else {
        vec!["epoll"]
    }
}

#[test]
fn proxied_keep_alive_requests_allocate_nothing_in_steady_state() {
    let upstream = start_upstream();
    let tls_upstream = {
        let pki = common::tls::Pki::new("alloc-upstream");
        let cert = pki.server(&["127.0.0.1"], common::tls::Alg::EcdsaP256);
        let addr = start_upstream_over(Some(common::tls::server_config(&cert, None)));
        (addr, pki.ca_path.clone())
    };
    for driver in drivers() {
        let proxied = allocations_per_request(driver, upstream, "/api/items", "");
        let direct = allocations_per_request(driver, upstream, "/direct", "");
        let logged = allocations_per_request(
            driver,
            upstream,
            "/api/items",
            "[access_log]\npath = \"/dev/null\"",
        );
        eprintln!(
            "{driver}: heap allocations per request: proxied {proxied:.4}, direct response {direct:.4}, proxied with access log {logged:.4}"
        );
        assert_eq!(proxied, 0.0, "{driver}: proxied requests allocate");
        assert_eq!(direct, 0.0, "{driver}: direct responses allocate");
        assert_eq!(logged, 0.0, "{driver}: access logging allocates");
        let limited = allocations_per_request(driver, upstream, "/limited/items", "");
        eprintln!("{driver}: heap allocations per rate-limited request (known key): {limited:.4}");
        assert_eq!(
            limited, 0.0,
            "{driver}: a rate-limit check for a known key allocates"
        );
        // Node scope: the check, and the reports and grants exchanged with
        // the aggregator every sync interval while requests flow.
        let node = allocations_per_request(driver, upstream, "/node-limited/items", "");
        eprintln!("{driver}: heap allocations per node-scope rate-limited request: {node:.4}");
        assert_eq!(node, 0.0, "{driver}: node-scope limiting allocates");
        // An API-key route: the key hashed and looked up, the consumer as
        // the rate-limit key, the consumer in the access log.
        let keys = std::env::temp_dir().join(format!("ringgate-alloc-keys-{}", std::process::id()));
        std::fs::write(
            &keys,
            format!(
                "{} alloc-consumer gold\n",
                ringgate::auth::api_key::hash_hex(b"alloc-key")
            ),
        )
        .unwrap();
        let authed = allocations_per_request(
            driver,
            upstream,
            "/authed/items",
            &format!(
                "[access_log]\npath = \"/dev/null\"\n[admin]\nbind = \"127.0.0.1:0\"\ntop_consumers = 5\n[auth.keys]\ntype = \"api_key\"\nkeys_file = \"{}\"\n[rate_limits.per_consumer]\nkey = \"consumer\"\nrate = \"1000000/s\"\nburst = 1000000\n[rate_limits.per_consumer.tiers.gold]\nrate = \"2000000/s\"\nburst = 2000000\n[[routes]]\npath_prefix = \"/authed\"\nupstream = \"app\"\nauth = [\"keys\"]\nrate_limits = [\"per_consumer\"]\n",
                keys.display()
            ),
        );
        eprintln!(
            "{driver}: heap allocations per API-key request (consumer-keyed limit, logged): {authed:.4}"
        );
        assert_eq!(authed, 0.0, "{driver}: an API-key request allocates");
        // A JWT route with a cached token: the token hashed and found in
        // the worker's cache, scopes checked, the consumer as the limit key.
        let secret =
            std::env::temp_dir().join(format!("ringgate-alloc-jwt-{}", std::process::id()));
        std::fs::write(&secret, JWT_SECRET).unwrap();
        let jwt = allocations_per_request(
            driver,
            upstream,
            "/jwt/items",
            &format!(
                "[access_log]\npath = \"/dev/null\"\n[auth.users]\ntype = \"jwt\"\ntier_claim = \"plan\"\nkeys = [{{ alg = \"HS256\", secret_file = \"{}\" }}]\n[rate_limits.per_user]\nkey = \"consumer\"\nrate = \"1000000/s\"\nburst = 1000000\n[[routes]]\npath_prefix = \"/jwt\"\nupstream = \"app\"\nauth = [\"users\"]\nauth_scopes = [\"read\"]\nrate_limits = [\"per_user\"]\n",
                secret.display()
            ),
        );
        eprintln!(
            "{driver}: heap allocations per JWT request (cached token, consumer-keyed limit, logged): {jwt:.4}"
        );
        assert_eq!(
            jwt, 0.0,
            "{driver}: a request with a cached token allocates"
        );
        // The edge policies on a JWT route: an IP rule judging the client
        // behind a trusted proxy, a CORS policy echoing the Origin, header
        // templates with the consumer, the route, a claim and the client.
        let edge = allocations_per_request(
            driver,
            upstream,
            "/edge/items",
            &format!(
                "[access_log]\npath = \"/dev/null\"\n[auth.users]\ntype = \"jwt\"\ntier_claim = \"plan\"\nkeys = [{{ alg = \"HS256\", secret_file = \"{}\" }}]\n[cors.web]\norigins = [\"https://app.example.com\", \"https://*.example.org\"]\ncredentials = true\nexpose_headers = [\"x-request-id\"]\n[ip_rules.partners]\nallow = [\"127.0.0.0/8\", \"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n[[routes]]\npath_prefix = \"/edge\"\nupstream = \"app\"\nauth = [\"users\"]\ncors = \"web\"\nip_rule = \"partners\"\nrequest_headers = {{ set = {{ \"x-who\" = \"${{consumer}}@${{route}} ${{jwt.plan}}\", \"x-client\" = \"${{client_ip}}\" }} }}\nresponse_headers = {{ set = {{ \"x-route\" = \"${{route}}\" }} }}\n",
                secret.display()
            ),
        );
        eprintln!(
            "{driver}: heap allocations per request through an IP rule, CORS and header templates: {edge:.4}"
        );
        assert_eq!(edge, 0.0, "{driver}: the edge policies allocate");
        // A cache hit: the key built in the shard's scratch buffers, the
        // stored head and body shared, Age and Cache-Status written. (The
        // request carries credentials; the upstream's `public` lets its
        // answer be shared, and default_ttl gives it a lifetime.)
        let cached = allocations_per_request(
            driver,
            upstream,
            "/cached/items",
            "[access_log]\npath = \"/dev/null\"\n[cache]\nmemory = \"32MiB\"\n[[routes]]\npath_prefix = \"/cached\"\nupstream = \"app\"\ncache = { default_ttl = \"1h\" }\n",
        );
        eprintln!("{driver}: heap allocations per cache hit (logged): {cached:.4}");
        assert_eq!(cached, 0.0, "{driver}: a cache hit allocates");
        let https = https();
        let tls = allocations_per_request_over(driver, upstream, "/api/items", "", Some(&https));
        eprintln!("{driver}: heap allocations per proxied HTTPS request: {tls:.4}");
        assert_eq!(
            tls, 0.0,
            "{driver}: requests on an established TLS connection allocate"
        );
        // HTTPS on both sides: the pooled upstream connection is TLS too.
        let both = allocations_per_request_over(
            driver,
            tls_upstream.0,
            "/api/items",
            "",
            Some(&https_to(&tls_upstream.1)),
        );
        eprintln!(
            "{driver}: heap allocations per request, HTTPS client and HTTPS upstream: {both:.4}"
        );
        assert_eq!(
            both, 0.0,
            "{driver}: requests over TLS to a TLS upstream allocate"
        );
    }
}
