//! Node-scope rate limits against the real binary with 4 workers (threads
//! may outnumber this machine's cores): one limit across all workers,
//! counted at the upstream, under traffic spread over many connections
//! (so over every worker) and under traffic on one connection (so on one
//! worker). docs/rate-limiting.md derives the bounds asserted here.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WORKERS: usize = 4;

/// These tests load the machine heavily (and the tiers test measures
/// waiting for grants): one at a time.
#[allow(clippy::disallowed_types)] // test harness, not the data plane
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn gateway(up: &Upstream, key: &str, policy: &str) -> Gateway {
    let text = config(
        "auto",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[rate_limits.shared]\nkey = \"{key}\"\nscope = \"node\"\n{policy}\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\nupstream = \"app\"\nrate_limits = [\"shared\"]\n",
            up.addr
        ),
    )
    .replace("workers = 1", &format!("workers = {WORKERS}"));
    Gateway::start(&text)
}

/// Requests served per worker, from the admin endpoint.
fn worker_requests(gw: &Gateway) -> Vec<u64> {
    let text = get(gw.admin.unwrap(), "/workers").text();
    text.split("\"requests\":")
        .skip(1)
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// Keep-alive clients sending as fast as they can until `stop`; returns
/// (admitted, refused) as the clients saw them. Anything but 200 or 429
/// fails the test.
fn load(gw: &Gateway, connections: usize, run_for: Duration) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let (ok, limited, stop, addr) = (ok.clone(), limited.clone(), stop.clone(), gw.addr);
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                while !stop.load(Ordering::Relaxed) {
                    c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
                    let r = c.read_response(false);
                    match r.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            assert!(r.header("retry-after").is_some());
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("unexpected status {other}: {}", r.text()),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed))
}

#[test]
fn a_window_quota_holds_across_workers_spread_evenly_or_all_on_one() {
    let _serial = serial();
    const LIMIT: usize = 600;
    // Demand far above the limit for this long, all inside one window.
    const LOAD: Duration = Duration::from_millis(2600);
    for (name, connections) in [("spread over 16 connections", 16), ("one connection", 1)] {
        let up = Upstream::named("app");
        let (window, _) = window_with_room(TEST_ROOM);
        let gw = gateway(
            &up,
            "global",
            &format!("limit = {LIMIT}\nwindow = \"{window}\""),
        );
        let (ok, limited) = load(&gw, connections, LOAD);
        let served = worker_requests(&gw);
        let admitted = up.request_count();
        println!(
            "{name}: admitted {admitted} of limit {LIMIT} ({limited} refused); per worker {served:?}"
        );
        assert_eq!(ok, admitted, "{name}: every 200 reached the upstream");
        assert!(
            limited > 0,
            "{name}: demand must exceed the limit for this test to mean anything"
        );
        // Bound: the limit plus rounding (N - 1), docs/rate-limiting.md.
        assert!(
            admitted < LIMIT + WORKERS,
            "{name}: {admitted} admitted, limit {LIMIT}"
        );
        assert!(
            admitted * 100 >= LIMIT * 98,
            "{name}: only {admitted} of {LIMIT} admitted"
        );
        let busy = served.iter().filter(|&&n| n > 0).count();
        if connections == 1 {
            assert_eq!(busy, 1, "{name}: one worker served everything");
        } else {
            assert!(busy >= 3, "{name}: traffic reached {busy} workers");
        }
    }
}

#[test]
fn a_token_bucket_rate_holds_over_ten_seconds() {
    let _serial = serial();
    let up = Upstream::named("app");
    let gw = gateway(&up, "global", "rate = \"300/s\"\nburst = 30");
    let started = Instant::now();
    // Enough clients that demand stays well past the rate even though
    // requests wait for grants (8 were paced to the rate by those waits on
    // a busy machine, and none was refused).
    let (ok, limited) = load(&gw, 32, Duration::from_secs(10));
    // Clients stop asking after 10 s; requests then in flight (some waiting
    // for a grant) finish a little later: the allowance lies between the
    // two spans.
    let asked = 10.0;
    let finished = started.elapsed().as_secs_f64();
    let (low, high) = (30.0 + 300.0 * asked, 30.0 + 300.0 * finished);
    let admitted = up.request_count();
    let error = (admitted as f64 - low).abs() / low;
    println!(
        "token bucket 300/s, burst 30, {asked:.2}-{finished:.2} s: admitted {admitted}, allowed {low:.0}-{high:.0} ({:.2}% from the lower), {limited} refused",
        error * 100.0
    );
    assert_eq!(ok, admitted);
    assert!(limited > 0);
    assert!(
        admitted as f64 >= low * 0.98 && admitted as f64 <= high * 1.02,
        "{admitted} admitted, allowed {low:.0}-{high:.0}"
    );
}

/// Node scope: alternating tiers over many connections (so over every
/// worker) never gets more than the generous tier's limit.
#[test]
fn alternating_tiers_under_node_scope_never_beat_the_generous_tier() {
    let _serial = serial();
    let (window, _) = window_with_room(TEST_ROOM);
    let up = Upstream::named("app");
    let gw = gateway(
        &up,
        "header:x-api-key",
        &format!(
            "limit = 5\nwindow = \"{window}\"\ntier_header = \"x-plan\"\n[rate_limits.shared.tiers.gold]\nlimit = 10\nwindow = \"{window}\""
        ),
    );
    let mut conns: Vec<Conn> = (0..8).map(|_| gw.conn()).collect();
    let mut admitted = 0;
    for round in 0..10 {
        for (i, c) in conns.iter_mut().enumerate() {
            let plan = if (round + i) % 2 == 0 { "gold" } else { "none" };
            c.send(
                format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: alice\r\nX-Plan: {plan}\r\n\r\n")
                    .as_bytes(),
            );
            if c.read_response(false).status == 200 {
                admitted += 1;
            }
        }
    }
    println!("alternating tiers, node scope: {admitted} of 80 admitted (gold allows 10)");
    assert_eq!(up.request_count(), admitted);
    assert!(
        admitted <= 10,
        "{admitted} admitted; the generous tier allows 10"
    );
    assert!(admitted >= 5, "{admitted} admitted");
}

#[test]
fn tiers_and_headers_under_node_scope() {
    let _serial = serial();
    let up = Upstream::named("app");
    let (window, window_secs) = window_with_room(TEST_ROOM);
    let gw = gateway(
        &up,
        "header:x-api-key",
        &format!(
            "limit = 3\nwindow = \"{window}\"\ntier_header = \"x-plan\"\n[rate_limits.shared.tiers.gold]\nlimit = 6\nwindow = \"{window}\""
        ),
    );
    let mut c = gw.conn();
    let mut send = |key: &str, plan: &str| {
        c.send(format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n{plan}\r\n").as_bytes());
        c.read_response(false)
    };
    // Each request waits at most a few sync intervals for the aggregator to
    // hand this worker more of the limit: none is refused early.
    for remaining in ["2", "1", "0"] {
        let r = send("alice", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    let refused = send("alice", "");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=window_secs).contains(&retry), "retry-after {retry}");
    let gold = (0..8)
        .filter(|_| send("bob", "X-Plan: gold\r\n").status == 200)
        .count();
    assert_eq!(gold, 6, "the gold tier has its own, larger limit");
    assert_eq!(up.request_count(), 3 + 6);

    // The aggregator shows in the metrics.
    let metrics = get(gw.admin.unwrap(), "/metrics").text();
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ringgate_rate_limit_sync_tick_duration_seconds_count "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(count > 0, "ticks recorded");
    assert!(
        metrics.contains("ringgate_rate_limit_shared_keys 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "ringgate_rate_limit_decisions_total{policy=\"shared\",decision=\"limited\"} 3"
        )
    );
}
