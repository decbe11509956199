//! DESIGN.md's failure table against the real binary: what a client sees
//! when the client, the upstream or the gateway's limits go wrong, and the
//! one safe retry for stale pooled connections.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gw_for(driver: &str, endpoints: &str, server: &str, upstream_extra: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[server]\n{server}\n[upstreams.app]\nendpoints = [{endpoints}]\n{upstream_extra}\n[[routes]]\nupstream = \"app\"\n"
        ),
    ))
}

#[test]
fn refused_upstream_gives_502_and_keeps_the_client_connection() {
    for driver in drivers() {
        let gw = gw_for(driver, &format!("\"{}\"", closed_port()), "", "");
        let mut c = gw.conn();
        for _ in 0..2 {
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 502, "{driver}");
            assert!(r.text().contains("upstream_connect_failed"));
        }
    }
}

#[test]
fn upstream_reset_before_response_gives_502() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| Reply::Close);
        let gw = gw_for(driver, &format!("\"{}\"", up.addr), "", "");
        let r = get(gw.addr, "/");
        assert_eq!(r.status, 502, "{driver}");
        assert!(r.text().contains("upstream_reset"), "{}", r.text());
    }
}

#[test]
fn silent_upstream_gives_504_after_response_timeout() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::Delay(Duration::from_secs(3), Box::new(ok("late")))
        });
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "",
            "response_timeout = \"300ms\"",
        );
        let start = Instant::now();
        let r = get(gw.addr, "/");
        let took = start.elapsed();
        assert_eq!(r.status, 504, "{driver}");
        assert!(r.text().contains("upstream_timeout"));
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{driver}: {took:?}"
        );
    }
}

#[test]
fn slow_client_head_is_closed_after_header_read_timeout() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "header_read_timeout = \"300ms\"",
            "",
        );
        // Nothing sent at all: 408 and close.
        let mut c = gw.conn();
        let r = c.read_response(false);
        assert_eq!(r.status, 408, "{driver}");
        assert!(c.is_closed());
        // Half a head, then silence: closed too.
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ");
        let start = Instant::now();
        let r = c.read_response(false);
        assert_eq!(r.status, 408);
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(c.is_closed());
        assert_eq!(up.request_count(), 0);
    }
}

#[test]
fn stale_pooled_connection_is_retried_once_and_never_reaches_the_client() {
    for driver in drivers() {
        // The upstream answers with keep-alive, then closes the connection
        // shortly after: the classic keep-alive race.
        let up = Upstream::start("app", |_| {
            Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        });
        let gw = gw_for(driver, &format!("\"{}\"", up.addr), "", "");
        let mut c = gw.conn();
        for i in 0..5 {
            c.send(b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "{driver} request {i}: {}", r.text());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(up.request_count(), 5);
        assert!(
            up.connections() >= 5,
            "each request needed a fresh connection"
        );
    }
}

#[test]
fn a_post_never_goes_out_twice_when_the_pooled_connection_went_stale() {
    for driver in drivers() {
        // First response keeps the connection "open" then the upstream drops
        // it. The gateway sees the FIN at checkout (one peek) and sends the
        // POST on a fresh connection; should the FIN arrive only after that
        // peek, the POST fails with 502 rather than being sent twice (a
        // non-idempotent request is never retried once written).
        let up = Upstream::start("app", |_| {
            Reply::RawClose(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        });
        let gw = gw_for(driver, &format!("\"{}\"", up.addr), "", "");
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        std::thread::sleep(Duration::from_millis(50));
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
        let r = c.read_response(false);
        let posts = up.requests().iter().filter(|r| r.method == "POST").count();
        match r.status {
            200 => assert_eq!(posts, 1, "{driver}: the POST arrived exactly once"),
            502 => assert_eq!(posts, 0, "{driver}: refused, never sent twice"),
            other => panic!("{driver}: unexpected {other}"),
        }
    }
}

#[test]
fn connection_cap_refuses_new_connections_and_spares_existing_ones() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "max_connections_per_worker = 2",
            "",
        );
        let mut a = gw.conn();
        let mut b = gw.conn();
        a.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(a.read_response(false).status, 200);
        b.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(b.read_response(false).status, 200);
        let mut third = gw.conn();
        let _ = third.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            third.try_read_response(false).is_none(),
            "{driver}: third connection must be refused"
        );
        for c in [&mut a, &mut b] {
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                c.read_response(false).status,
                200,
                "{driver}: existing connections unharmed"
            );
        }
        drop(a);
        wait_until(
            PATIENCE,
            "capacity returns once a connection closes",
            || {
                let mut c = gw.conn();
                c.try_send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                    && c.try_read_response(false).is_some_and(|r| r.status == 200)
            },
        );
    }
}

#[test]
fn idle_keep_alive_connections_close_after_idle_timeout() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "idle_timeout = \"300ms\"",
            "",
        );
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        let start = Instant::now();
        assert!(c.is_closed(), "{driver}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}

#[test]
fn max_requests_per_connection_closes_after_the_last() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "max_requests_per_connection = 2",
            "",
        );
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).header("connection"), None);
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            c.read_response(false).header("connection"),
            Some("close"),
            "{driver}"
        );
        assert!(c.is_closed());
    }
}

/// An upstream that answers 204 and then, while the connection idles in the
/// gateway's pool, sends bytes nobody asked for (a buggy server, or a body
/// after a bodiless response). Those bytes must never become the next
/// request's answer: the dirty connection is dropped, a fresh one used.
#[test]
fn stray_bytes_on_an_idle_pooled_connection_never_reach_the_next_request() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, mpsc};
    for driver in drivers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent_junk, junk_sent) = mpsc::channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let sent_junk = sent_junk.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let mut first = true;
                    loop {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(k) => got.extend_from_slice(&buf[..k]),
                            }
                        }
                        if n == 0 && first {
                            first = false;
                            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
                            std::thread::sleep(Duration::from_millis(50));
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL");
                            let _ = sent_junk.send(());
                        } else {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh");
                        }
                    }
                });
            }
        });
        let gw = gw_for(driver, &format!("\"{addr}\""), "", "");
        let mut c = gw.conn();
        c.send(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 204, "{driver}");
        junk_sent
            .recv_timeout(PATIENCE)
            .expect("the upstream sent its junk");
        // Loopback delivers at once; the junk now waits in the idle socket.
        c.send(b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!((r.status, r.text().as_str()), (200, "fresh"), "{driver}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "{driver}: a fresh connection"
        );
    }
}

/// A client trickling its body (each byte well within body_read_timeout)
/// is cut off at body_timeout for the whole body: it cannot hold an
/// upstream connection for ever.
#[test]
fn a_trickled_body_is_cut_off_at_the_whole_body_deadline() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gw_for(
            driver,
            &format!("\"{}\"", up.addr),
            "body_read_timeout = \"10s\"\nbody_timeout = \"1s\"",
            "",
        );
        let mut c = gw.conn();
        c.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n");
        let started = Instant::now();
        let mut answered = None;
        while started.elapsed() < Duration::from_secs(8) {
            if !c.try_send(b"x") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            c.stream
                .set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            let mut probe = [0u8; 1];
            if matches!(c.stream.peek(&mut probe), Ok(n) if n > 0) {
                c.stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                answered = Some(c.read_response(false));
                break;
            }
        }
        let elapsed = started.elapsed();
        let r = answered.unwrap_or_else(|| panic!("{driver}: no answer within {elapsed:?}"));
        assert_eq!(r.status, 400, "{driver}");
        assert!(r.text().contains("not received in time"), "{}", r.text());
        assert!(
            elapsed < Duration::from_secs(5),
            "{driver}: cut off after {elapsed:?}"
        );
        assert!(c.is_closed(), "{driver}");
        assert_eq!(
            up.request_count(),
            0,
            "{driver}: the upstream saw no complete request"
        );
    }
}
