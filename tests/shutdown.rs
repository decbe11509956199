//! Graceful shutdown: SIGTERM stops accepting, lets in-flight requests
//! finish (answered with `Connection: close`), closes idle connections, and
//! exits 0; `drain_timeout` bounds the wait.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gateway(driver: &str, up: &Upstream, drain: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[server]\ndrain_timeout = \"{drain}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    ))
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::Delay(Duration::from_millis(700), Box::new(ok("finished")))
        });
        let mut gw = gateway(driver, &up, "10s");
        let mut idle = gw.conn();
        let mut busy = gw.conn();
        busy.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
        wait_until(PATIENCE, "the request reaches the upstream", || {
            up.request_count() == 1
        });
        gw.signal(libc::SIGTERM);

        // The idle keep-alive connection is closed promptly.
        let start = Instant::now();
        assert!(
            idle.is_closed(),
            "{driver}: idle connection closed on drain"
        );
        assert!(start.elapsed() < Duration::from_secs(2));

        // The in-flight request completes, told that the connection closes.
        let r = busy.read_response(false);
        assert_eq!(r.status, 200, "{driver}");
        assert_eq!(r.text(), "finished");
        assert_eq!(r.header("connection"), Some("close"), "{driver}");
        assert!(busy.is_closed());

        let status = gw
            .wait_exit(Duration::from_secs(5))
            .expect("gateway exits after draining");
        assert!(status.success(), "{driver}: exit status {status:?}");
        // Nothing listens any more.
        assert!(std::net::TcpStream::connect(gw.addr).is_err(), "{driver}");
    }
}

#[test]
fn drain_timeout_bounds_the_wait_for_stuck_requests() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::Delay(Duration::from_secs(20), Box::new(ok("never")))
        });
        let mut gw = gateway(driver, &up, "500ms");
        let mut stuck = gw.conn();
        stuck.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        wait_until(PATIENCE, "the request reaches the upstream", || {
            up.request_count() == 1
        });
        let start = Instant::now();
        gw.signal(libc::SIGTERM);
        let status = gw.wait_exit(Duration::from_secs(5)).expect("gateway exits");
        assert!(status.success(), "{driver}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{driver}: {:?}",
            start.elapsed()
        );
        assert!(stuck.is_closed());
    }
}

#[test]
fn sigint_also_drains() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let mut gw = gateway(driver, &up, "5s");
        assert_eq!(get(gw.addr, "/").status, 200);
        gw.signal(libc::SIGINT);
        let status = gw.wait_exit(Duration::from_secs(5)).expect("gateway exits");
        assert!(status.success());
    }
}

/// A reload that lengthens drain_timeout is honoured by the whole process:
/// a request that takes longer than the startup value but less than the
/// reloaded one finishes before the gateway exits.
#[test]
fn drain_uses_the_reloaded_drain_timeout() {
    let up = Upstream::start("app", |_| {
        Reply::Delay(Duration::from_millis(4000), Box::new(ok("finished")))
    });
    let text = |drain: &str| {
        config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n[server]\ndrain_timeout = \"{drain}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
                up.addr
            ),
        )
    };
    let mut gw = Gateway::start(&text("1s"));
    let path = gw.log.with_file_name("gateway.toml");
    std::fs::write(&path, text("20s")).unwrap();
    let reload = request(
        gw.admin.unwrap(),
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(reload.status, 200, "{}", reload.text());
    let mut slow = gw.conn();
    slow.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_until(PATIENCE, "the request reaches the upstream", || {
        up.request_count() == 1
    });
    gw.signal(libc::SIGTERM);
    let r = slow.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "finished"));
    let status = gw
        .wait_exit(Duration::from_secs(25))
        .expect("gateway exits");
    assert!(status.success());
}
