//! Chaos tests against the binary: three endpoints behind one upstream,
//! continuous keep-alive GET load from several clients, and one endpoint
//! killed, black-holed or answering 503 mid-run. Clients must see no
//! failure (retries cover the tries that fail until outlier detection
//! ejects the endpoint), the endpoint must be ejected within the bound,
//! and it must come back (with slow start) once it is well.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Conn, Gateway, Reply, Upstream, config, ok};

const WAIT: Duration = Duration::from_secs(20);

/// Two workers; `upstream_extra` under the upstream, `route_extra` under
/// the route.
fn gateway(endpoints: &[&Upstream], upstream_extra: &str, route_extra: &str) -> Gateway {
    let list: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.addr))
        .collect();
    Gateway::start(
        &config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [{}]\nconnect_timeout = \"1s\"\nresponse_timeout = \"10s\"\n{upstream_extra}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n{route_extra}\n",
                list.join(", ")
            ),
        )
        .replace("workers = 1", "workers = 2"),
    )
}

/// Keep-alive GET load from `clients` threads until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Each client returns the statuses of its failed requests (0: no answer).
    threads: Vec<std::thread::JoinHandle<Vec<u16>>>,
}

impl Load {
    fn start(gw: &Gateway, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|i| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let addr = gw.addr;
                std::thread::spawn(move || {
                    let mut conn = Conn::open(addr);
                    let mut n = 0u64;
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        let sent = conn.try_send(
                            format!("GET /load/{i}/{n} HTTP/1.1\r\nHost: app.test\r\n\r\n")
                                .as_bytes(),
                        );
                        match conn.try_read_response(false).filter(|_| sent) {
                            Some(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            other => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                statuses.push(other.map_or(0, |r| r.status));
                                conn = Conn::open(addr);
                            }
                        }
                    }
                    statuses
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits for `more` successful requests from now.
    fn wait_for(&self, more: u64, what: &str) {
        let target = self.ok() + more;
        common::wait_until(WAIT, what, || self.ok() >= target);
    }

    /// Stops the clients; (succeeded, failed, failed statuses).
    fn finish(mut self) -> (u64, u64, Vec<u16>) {
        self.stop.store(true, Ordering::SeqCst);
        let statuses: Vec<u16> = self
            .threads
            .drain(..)
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            statuses,
        )
    }
}

fn state_of(gw: &Gateway, e: &Upstream) -> String {
    let text = common::get(gw.admin.unwrap(), "/upstreams").text();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let addr = e.addr.to_string();
    json["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == addr.as_str())
        .map(|x| x["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    common::get(gw.admin.unwrap(), "/metrics")
        .text()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// How many requests of the load an endpoint answered.
fn served(e: &Upstream) -> usize {
    e.request_count()
}

#[test]
fn a_killed_endpoint_costs_no_client_request_and_is_ejected() {
    let (a, b, c) = (
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
    );
    let gw = gateway(
        &[&a, &b, &c],
        "[upstreams.app.outlier_detection]\nconsecutive_gateway_failure = 3\nbase_ejection = \"60s\"",
        "retry = { attempts = 3 }",
    );
    let load = Load::start(&gw, 4);
    load.wait_for(600, "load under way");
    assert!(served(&b) > 0, "b in traffic before");
    b.kill();
    let killed = Instant::now();
    common::wait_until(WAIT, "b ejected", || state_of(&gw, &b) == "ejected");
    let ejected_after = killed.elapsed();
    let at_ejection = served(&b);
    load.wait_for(600, "load goes on without b");
    let (done, failed, statuses) = load.finish();
    assert_eq!(failed, 0, "failed client requests: {statuses:?} of {done}");
    assert_eq!(served(&b), at_ejection, "nothing reaches a dead endpoint");
    // The report interval (100 ms) plus the judge: far under a second
    // on a quiet machine; a busy one gets slack.
    assert!(ejected_after < Duration::from_secs(5), "{ejected_after:?}");
    eprintln!("killed endpoint ejected after {ejected_after:?}; {done} requests, none failed");
    let ejected = format!(
        "ringgate_upstream_endpoint_ejected{{upstream=\"app\",endpoint=\"{}\"}}",
        b.addr
    );
    assert_eq!(metric(&gw, &ejected), 1);
    let retried: u64 = common::get(gw.admin.unwrap(), "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with("ringgate_upstream_endpoint_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(retried >= 1, "the tries that failed were retried");
    let log = gw.log_text();
    assert!(
        log.contains("endpoint ejected by outlier detection"),
        "a log line on the change"
    );
}

#[test]
fn a_black_holed_endpoint_costs_no_client_request_and_is_ejected() {
    let silent = Arc::new(AtomicBool::new(false));
    let flag = silent.clone();
    let (a, c) = (Upstream::named("a"), Upstream::named("c"));
    let b = Upstream::start("b", move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::Delay(Duration::from_secs(60), Box::new(ok("late")))
        } else {
            ok("b")
        }
    });
    let gw = gateway(
        &[&a, &b, &c],
        "[upstreams.app.outlier_detection]\nconsecutive_gateway_failure = 3\nbase_ejection = \"60s\"",
        "retry = { attempts = 3, per_try_timeout = \"300ms\" }",
    );
    let load = Load::start(&gw, 4);
    load.wait_for(600, "load under way");
    silent.store(true, Ordering::SeqCst);
    let silenced = Instant::now();
    common::wait_until(WAIT, "b ejected", || state_of(&gw, &b) == "ejected");
    let ejected_after = silenced.elapsed();
    load.wait_for(600, "load goes on without b");
    let (done, failed, statuses) = load.finish();
    assert_eq!(failed, 0, "failed client requests: {statuses:?} of {done}");
    assert!(ejected_after < Duration::from_secs(5), "{ejected_after:?}");
    eprintln!("black-holed endpoint ejected after {ejected_after:?}; {done} requests, none failed");
}

#[test]
fn an_endpoint_answering_503_is_ejected_then_slowly_back() {
    let sick = Arc::new(AtomicBool::new(false));
    let flag = sick.clone();
    let (a, c) = (Upstream::named("a"), Upstream::named("c"));
    let b = Upstream::start("b", move |_| {
        if flag.load(Ordering::SeqCst) {
            Reply::Ok(503, vec![], b"sick".to_vec())
        } else {
            ok("b")
        }
    });
    let gw = gateway(
        &[&a, &b, &c],
        "slow_start = \"4s\"\n[upstreams.app.outlier_detection]\nconsecutive_5xx = 3\nbase_ejection = \"1s\"\ninterval = \"100ms\"",
        "retry = { attempts = 2, on = [\"503\"] }",
    );
    let load = Load::start(&gw, 3);
    // Long enough for the retry budget to hold a share of recent traffic.
    load.wait_for(3000, "load under way");
    sick.store(true, Ordering::SeqCst);
    common::wait_until(WAIT, "b ejected", || state_of(&gw, &b) == "ejected");
    let during = served(&b);
    sick.store(false, Ordering::SeqCst);
    // Ejected for a second; then back, at a tenth of its share at first.
    common::wait_until(WAIT, "b back", || state_of(&gw, &b) == "up");
    let back = Instant::now();
    let (before, total_before) = (served(&b), load.ok());
    load.wait_for(300, "load after b is back");
    let early = (served(&b) - before) as f64 / (load.ok() - total_before) as f64;
    let early_elapsed = back.elapsed();
    // Once the slow start is over, its full third.
    common::wait_until(WAIT, "slow start over", || {
        back.elapsed() > Duration::from_secs(4)
    });
    let (before, total_before) = (served(&b), load.ok());
    load.wait_for(600, "load at full share");
    let late = (served(&b) - before) as f64 / (load.ok() - total_before) as f64;
    let (done, failed, statuses) = load.finish();
    assert_eq!(failed, 0, "failed client requests: {statuses:?} of {done}");
    assert!(during > 0);
    eprintln!(
        "b's share: {early:.3} in the {early_elapsed:?} after it was back, {late:.3} after slow start"
    );
    if early_elapsed < Duration::from_secs(2) {
        assert!(early < 0.25, "slow start: {early:.3}");
    }
    assert!(late > 0.25, "full share after slow start: {late:.3}");
    assert!(
        metric(
            &gw,
            &format!(
                "ringgate_upstream_endpoint_ejections_total{{upstream=\"app\",endpoint=\"{}\"}}",
                b.addr
            )
        ) >= 1
    );
    assert!(
        gw.log_text()
            .contains("ejection over: endpoint back in traffic")
    );
}

/// The gateway's resident memory, in KiB.
fn rss_kib(gw: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn every_endpoint_dead_is_a_quick_503_without_pile_up() {
    let (a, b, c) = (
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
    );
    let gw = gateway(
        &[&a, &b, &c],
        "[upstreams.app.health_check]\ntype = \"tcp\"\ninterval = \"100ms\"\njitter = \"0s\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1\n[upstreams.app.outlier_detection]\nconsecutive_gateway_failure = 3",
        "retry = { attempts = 3 }",
    );
    for e in [&a, &b, &c] {
        e.kill();
    }
    // Health checks hold all three down, on both workers.
    common::wait_until(WAIT, "every endpoint down", || {
        let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
        (0..2).all(|w| {
            metrics.contains(&format!(
                "ringgate_worker_endpoints_down{{worker=\"{w}\"}} 3\n"
            ))
        })
    });
    let refuse = |n: usize| {
        let mut conn = Conn::open(gw.addr);
        let mut slowest = Duration::ZERO;
        for i in 0..n {
            let started = Instant::now();
            conn.send(format!("GET /dead/{i} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes());
            let r = conn.read_response(false);
            slowest = slowest.max(started.elapsed());
            assert_eq!(r.status, 503);
            assert!(r.header("retry-after").is_some());
        }
        slowest
    };
    refuse(500);
    let before = rss_kib(&gw);
    let slowest = refuse(3000);
    let after = rss_kib(&gw);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    assert!(
        after < before + 4096,
        "memory flat: {before} KiB before, {after} KiB after 3000 refusals"
    );
    // Nothing is waiting on an endpoint.
    for e in [&a, &b, &c] {
        let active = format!(
            "ringgate_upstream_requests_in_flight{{upstream=\"app\",endpoint=\"{}\"}}",
            e.addr
        );
        assert_eq!(metric(&gw, &active), 0, "{active}");
    }
}

#[test]
fn endpoints_given_by_name_are_resolved_again_without_disturbing_traffic() {
    let a = Upstream::named("a");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [\"localhost:{}\"]\nresolve_interval = \"50ms\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
            a.addr.port()
        ),
    ));
    let load = Load::start(&gw, 2);
    // Many intervals go by under load.
    let started = Instant::now();
    load.wait_for(300, "load under way");
    common::wait_until(WAIT, "several intervals", || {
        started.elapsed() > Duration::from_millis(500)
    });
    load.wait_for(300, "load goes on");
    let (done, failed, statuses) = load.finish();
    assert_eq!(failed, 0, "{statuses:?} of {done}");
    // The same answer each time: nothing was reinstalled.
    let log = gw.log_text();
    assert!(!log.contains("endpoint addresses changed"), "{log}");
    assert!(
        common::get(gw.admin.unwrap(), "/upstreams")
            .text()
            .contains(&format!("127.0.0.1:{}", a.addr.port()))
    );
}
