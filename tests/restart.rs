//! Zero-downtime restart: process A serves, process B starts on the same
//! config and port (SO_REUSEPORT), A gets SIGTERM and drains. Under
//! continuous load no request fails and no connection is reset.
//!
//! Needs net.ipv4.tcp_migrate_req = 1 (pending connections in A's accept
//! queue move to B when A closes its listeners); the test enables it when it
//! can (root in its own network namespace, as in CI) and says so otherwise.

mod common;
use common::*;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn ensure_migrate_req() -> bool {
    let path = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => true,
        Ok(_) => std::fs::write(path, "1").is_ok(),
        Err(_) => false,
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    resets: AtomicUsize,
    retried: AtomicUsize,
}

/// One request on `conn` (reused if present), as an HTTP client does it: a
/// reused connection that ends before any response byte is retried once on a
/// fresh connection (RFC 9112 §9.3.1); everything else is final.
fn one_request(addr: std::net::SocketAddr, conn: &mut Option<Conn>, tally: &Tally) {
    let raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let reused = conn.is_some();
    let mut c = conn.take().unwrap_or_else(|| Conn::open(addr));
    let sent = c.try_send(raw);
    let response = if sent {
        c.try_read_response(false)
    } else {
        None
    };
    match response {
        Some(r) if r.status == 200 => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            if r.header("connection") != Some("close") {
                *conn = Some(c);
            }
            return;
        }
        Some(r) => panic!("status {}", r.status),
        None => {}
    }
    // Was it a reset? Probe the socket's error.
    if c.stream
        .take_error()
        .ok()
        .flatten()
        .is_some_and(|e| e.kind() == ErrorKind::ConnectionReset)
    {
        tally.resets.fetch_add(1, Ordering::Relaxed);
    }
    if !reused {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    tally.retried.fetch_add(1, Ordering::Relaxed);
    let mut fresh = Conn::open(addr);
    fresh.send(raw);
    match fresh.try_read_response(false) {
        Some(r) if r.status == 200 => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
            *conn = Some(fresh);
        }
        _ => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn restart_with_a_second_process_drops_no_request() {
    if !ensure_migrate_req() {
        eprintln!(
            "note: cannot enable net.ipv4.tcp_migrate_req here; skipping the zero-downtime restart test"
        );
        return;
    }
    for driver in drivers() {
        let up = Upstream::named("app");
        let body = format!(
            "[server]\ndrain_timeout = \"5s\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        );
        let mut a = Gateway::start(&config(driver, &body));
        let fixed = config(driver, &body).replace("127.0.0.1:0", &a.addr.to_string());

        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let addr = a.addr;
        // Keep-alive clients, and clients opening a new connection per request.
        let clients: Vec<_> = (0..6)
            .map(|i| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        one_request(addr, &mut conn, &tally);
                        if i % 2 == 1 {
                            conn = None;
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let b = Gateway::start(&fixed);
        assert_eq!(b.addr, a.addr);
        std::thread::sleep(Duration::from_millis(300));
        a.signal(libc::SIGTERM);
        let status = a
            .wait_exit(Duration::from_secs(10))
            .expect("A exits after draining");
        assert!(status.success(), "{driver}: A exit status {status:?}");
        let at_exit = tally.ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let ok = tally.ok.load(Ordering::Relaxed);
        eprintln!(
            "{driver}: {ok} requests, {} retried on a closed keep-alive connection, {} failed, {} resets",
            tally.retried.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.resets.load(Ordering::Relaxed)
        );
        assert!(ok > at_exit, "{driver}: B kept serving after A left");
        assert_eq!(
            tally.failed.load(Ordering::Relaxed),
            0,
            "{driver}: failed requests"
        );
        assert_eq!(
            tally.resets.load(Ordering::Relaxed),
            0,
            "{driver}: connection resets"
        );
        drop(b);
    }
}
