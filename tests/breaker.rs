//! Circuit breaking and the bounded queue end to end: requests over
//! `max_requests` wait (at most `max_pending` of them, each for at most
//! `queue_timeout`) and the excess gets 503 with `Retry-After`; a client
//! that leaves the queue frees its place; `max_retries` caps retries.
//! One worker, so its share of each limit is the whole limit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Conn, Gateway, Reply, Upstream, closed_port, config, ok};

const WAIT: Duration = Duration::from_secs(20);

fn gateway(endpoints: &[String], breaker: &str, route_extra: &str) -> Gateway {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [{}]\n\n[upstreams.app.circuit_breaker]\n{breaker}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n{route_extra}\n",
            list.join(", ")
        ),
    ))
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    common::get(gw.admin.unwrap(), "/metrics")
        .text()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn queue_length(gw: &Gateway) -> u64 {
    metric(gw, "ringgate_upstream_queue_length{upstream=\"app\"}")
}

/// An upstream that holds each request for `hold`, counting how many it
/// holds at once (now, and the most ever).
struct Slow {
    upstream: Upstream,
    most: Arc<AtomicUsize>,
}

fn slow(hold: Duration) -> Slow {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (n, m) = (now.clone(), most.clone());
    let upstream = Upstream::start("slow", move |_| {
        let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(at_once, Ordering::SeqCst);
        std::thread::sleep(hold);
        n.fetch_sub(1, Ordering::SeqCst);
        ok("done")
    });
    Slow { upstream, most }
}

/// Sends a GET on its own connection, in a thread: (status, how long).
fn send(gw: &Gateway, path: &str) -> std::thread::JoinHandle<(u16, Duration, bool)> {
    let addr = gw.addr;
    let raw = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n");
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut c = Conn::open(addr);
        c.send(raw.as_bytes());
        let r = c.read_response(false);
        (
            r.status,
            started.elapsed(),
            r.header("retry-after").is_some(),
        )
    })
}

#[test]
fn over_max_requests_the_queue_holds_a_few_and_the_rest_get_503() {
    let s = slow(Duration::from_millis(1500));
    let gw = gateway(
        &[s.upstream.addr.to_string()],
        "max_requests = 2\nmax_pending = 2\nqueue_timeout = \"500ms\"",
        "",
    );
    let admitted: Vec<_> = (0..2).map(|i| send(&gw, &format!("/in/{i}"))).collect();
    common::wait_until(WAIT, "two requests at the upstream", || {
        s.upstream.request_count() == 2
    });
    let queued: Vec<_> = (0..2).map(|i| send(&gw, &format!("/queued/{i}"))).collect();
    common::wait_until(WAIT, "two requests queued", || queue_length(&gw) == 2);
    // The queue is full: refused at once.
    for i in 0..2 {
        let (status, took, retry_after) = send(&gw, &format!("/full/{i}")).join().unwrap();
        assert_eq!(status, 503);
        assert!(retry_after, "Retry-After on the 503");
        assert!(took < Duration::from_millis(450), "at once: {took:?}");
    }
    // The queued ones give up after the queue timeout, not later.
    for q in queued {
        let (status, took, retry_after) = q.join().unwrap();
        assert_eq!(status, 503);
        assert!(retry_after);
        assert!(took >= Duration::from_millis(450), "waited: {took:?}");
        assert!(
            took < Duration::from_millis(1400),
            "before the upstream freed: {took:?}"
        );
    }
    for a in admitted {
        assert_eq!(a.join().unwrap().0, 200);
    }
    assert_eq!(
        s.upstream.request_count(),
        2,
        "nothing refused went upstream"
    );
    assert_eq!(s.most.load(Ordering::SeqCst), 2);
    let trips = |limit: &str| {
        metric(
            &gw,
            &format!("ringgate_upstream_breaker_trips_total{{upstream=\"app\",limit=\"{limit}\"}}"),
        )
    };
    assert_eq!(trips("queue_full"), 2);
    assert_eq!(trips("queue_timeout"), 2);
    assert_eq!(
        metric(&gw, "ringgate_upstream_queued_total{upstream=\"app\"}"),
        2
    );
    assert_eq!(queue_length(&gw), 0);
}

#[test]
fn queued_requests_go_through_in_turn_as_room_frees() {
    let s = slow(Duration::from_millis(200));
    let gw = gateway(
        &[s.upstream.addr.to_string()],
        "max_requests = 1\nmax_pending = 10\nqueue_timeout = \"10s\"",
        "",
    );
    let all: Vec<_> = (0..5).map(|i| send(&gw, &format!("/{i}"))).collect();
    for r in all {
        assert_eq!(r.join().unwrap().0, 200);
    }
    assert_eq!(s.upstream.request_count(), 5);
    assert_eq!(s.most.load(Ordering::SeqCst), 1, "one at a time upstream");
    assert!(metric(&gw, "ringgate_upstream_queued_total{upstream=\"app\"}") >= 1);
}

#[test]
fn a_client_that_leaves_the_queue_frees_its_place() {
    let s = slow(Duration::from_millis(1500));
    let gw = gateway(
        &[s.upstream.addr.to_string()],
        "max_requests = 1\nmax_pending = 1\nqueue_timeout = \"10s\"",
        "",
    );
    let first = send(&gw, "/first");
    common::wait_until(WAIT, "the first at the upstream", || {
        s.upstream.request_count() == 1
    });
    let mut leaver = Conn::open(gw.addr);
    leaver.send(b"GET /leaver HTTP/1.1\r\nHost: app.test\r\n\r\n");
    common::wait_until(WAIT, "the leaver queued", || queue_length(&gw) == 1);
    drop(leaver);
    common::wait_until(WAIT, "its place freed", || {
        metric(
            &gw,
            "ringgate_upstream_queue_abandoned_total{upstream=\"app\"}",
        ) == 1
            && queue_length(&gw) == 0
    });
    // The place is free: the next one queues instead of a 503.
    let (status, _, _) = send(&gw, "/next").join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(first.join().unwrap().0, 200);
    let targets: Vec<String> = s
        .upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec!["/first", "/next"],
        "the leaver never went upstream"
    );
}

#[test]
fn max_retries_caps_retries_under_way() {
    let well = Upstream::start("well", |_| Reply::Ok(200, vec![], b"well".to_vec()));
    let dead = closed_port().to_string();
    // No retry may be under way: the dead endpoint's share fails.
    let gw = gateway(
        &[dead.clone(), well.addr.to_string()],
        "max_retries = 0",
        "retry = { attempts = 3 }",
    );
    let statuses: Vec<u16> = (0..10)
        .map(|i| send(&gw, &format!("/{i}")).join().unwrap().0)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        metric(
            &gw,
            "ringgate_upstream_breaker_trips_total{upstream=\"app\",limit=\"max_retries\"}"
        ),
        5
    );
    // With room for them, every request succeeds.
    let gw = gateway(
        &[dead, well.addr.to_string()],
        "max_retries = 1",
        "retry = { attempts = 3 }",
    );
    for i in 0..10 {
        assert_eq!(send(&gw, &format!("/{i}")).join().unwrap().0, 200);
    }
}
