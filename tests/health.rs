//! Active health checks end to end: three test upstreams whose `/healthz`
//! the test turns bad and good; what the gateway sends where is counted at
//! the upstreams, and what it thinks is read from `GET /upstreams`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Gateway, Reply, Upstream, config, request};

/// An endpoint whose health the test sets.
struct Endpoint {
    upstream: Upstream,
    healthy: Arc<AtomicBool>,
}

fn endpoint(name: &'static str) -> Endpoint {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = healthy.clone();
    let upstream = Upstream::start(name, move |r| {
        if r.target == "/healthz" {
            if flag.load(Ordering::SeqCst) {
                Reply::Ok(200, vec![], b"ok".to_vec())
            } else {
                Reply::Ok(503, vec![], b"draining".to_vec())
            }
        } else {
            Reply::Ok(200, vec![], name.as_bytes().to_vec())
        }
    });
    Endpoint { upstream, healthy }
}

fn traffic(e: &Endpoint) -> usize {
    e.upstream
        .requests()
        .iter()
        .filter(|r| r.target != "/healthz")
        .count()
}

fn probes(e: &Endpoint) -> usize {
    e.upstream
        .requests()
        .iter()
        .filter(|r| r.target == "/healthz")
        .count()
}

/// The gateway's config: `extra` lines under the upstream, and its
/// health check unless `checked` is false.
fn gateway_config(endpoints: &[&Endpoint], extra: &str, checked: bool) -> String {
    let list: Vec<String> = endpoints
        .iter()
        .map(|e| format!("\"{}\"", e.upstream.addr))
        .collect();
    let check = if checked {
        "[upstreams.app.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\njitter = \"0s\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n"
    } else {
        ""
    };
    config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [{}]\n{extra}\n{check}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
            list.join(", ")
        ),
    )
    .replace("workers = 1", "workers = 2")
}

fn gateway(endpoints: &[&Endpoint], extra: &str) -> Gateway {
    Gateway::start(&gateway_config(endpoints, extra, true))
}

fn get(gw: &Gateway, path: &str) -> common::Response {
    request(
        gw.addr,
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
    )
}

fn state_of(gw: &Gateway, e: &Endpoint) -> String {
    let text = common::get(gw.admin.unwrap(), "/upstreams").text();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let addr = e.upstream.addr.to_string();
    json["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["address"] == addr.as_str())
        .map(|x| x["state"].as_str().unwrap().to_string())
        .unwrap()
}

/// Whether both workers hold `n` endpoints out of traffic.
fn workers_hold_down(gw: &Gateway, n: usize) -> bool {
    let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
    (0..2).all(|w| {
        metrics.contains(&format!(
            "ringgate_worker_endpoints_down{{worker=\"{w}\"}} {n}\n"
        ))
    })
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn an_unhealthy_endpoint_gets_no_traffic_until_it_is_healthy_again() {
    let (a, b, c) = (endpoint("a"), endpoint("b"), endpoint("c"));
    let gw = gateway(&[&a, &b, &c], "");
    common::wait_until(WAIT, "every endpoint probed", || {
        [&a, &b, &c].iter().all(|e| probes(e) >= 1)
    });
    b.healthy.store(false, Ordering::SeqCst);
    common::wait_until(WAIT, "b marked down", || state_of(&gw, &b) == "down");
    common::wait_until(WAIT, "every worker told", || workers_hold_down(&gw, 1));
    let before = traffic(&b);
    for _ in 0..30 {
        assert_eq!(get(&gw, "/x").status, 200);
    }
    assert_eq!(traffic(&b), before, "a down endpoint got traffic");
    assert!(traffic(&a) >= 10 && traffic(&c) >= 10);
    let text = common::get(gw.admin.unwrap(), "/upstreams").text();
    assert!(text.contains("\"last_failure\":\"status 503\""), "{text}");
    let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
    let line = format!(
        "ringgate_upstream_endpoint_healthy{{upstream=\"app\",endpoint=\"{}\"}} 0",
        b.upstream.addr
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");

    b.healthy.store(true, Ordering::SeqCst);
    common::wait_until(WAIT, "b back up", || state_of(&gw, &b) == "up");
    common::wait_until(WAIT, "every worker told", || workers_hold_down(&gw, 0));
    let before = traffic(&b);
    for _ in 0..30 {
        assert_eq!(get(&gw, "/x").status, 200);
    }
    assert!(traffic(&b) > before, "b is back in traffic");
}

#[test]
fn one_prober_per_process_whatever_the_worker_count() {
    let a = endpoint("a");
    let _gw = gateway(&[&a], "");
    common::wait_until(WAIT, "probing started", || probes(&a) >= 1);
    let start = probes(&a);
    std::thread::sleep(Duration::from_secs(2));
    let made = probes(&a) - start;
    // 200 ms interval: about 10 in 2 s from one prober; two workers
    // probing each would make about 20. Fewer is a slow machine.
    assert!((2..=13).contains(&made), "{made} probes in 2 s");
}

#[test]
fn with_every_endpoint_down_the_upstream_refuses_or_fails_open() {
    let (a, b) = (endpoint("a"), endpoint("b"));
    a.healthy.store(false, Ordering::SeqCst);
    b.healthy.store(false, Ordering::SeqCst);
    let refusing = gateway(&[&a, &b], "");
    common::wait_until(WAIT, "both down", || workers_hold_down(&refusing, 2));
    let r = get(&refusing, "/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(r.text().contains("no_healthy_upstream"), "{}", r.text());
    let open = gateway(&[&a, &b], "when_all_down = \"fail_open\"\n");
    common::wait_until(WAIT, "both down", || workers_hold_down(&open, 2));
    assert_eq!(get(&open, "/x").status, 200);
}

#[test]
fn a_reload_that_drops_the_health_check_puts_every_endpoint_back() {
    let (a, b) = (endpoint("a"), endpoint("b"));
    b.healthy.store(false, Ordering::SeqCst);
    let gw = gateway(&[&a, &b], "");
    common::wait_until(WAIT, "b held down", || workers_hold_down(&gw, 1));
    let path = gw.log.with_file_name("gateway.toml");
    std::fs::write(&path, gateway_config(&[&a, &b], "", false)).unwrap();
    let r = request(
        gw.admin.unwrap(),
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    common::wait_until(WAIT, "b released", || {
        let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
        // Without health checks the gauge is gone: every worker's set is
        // empty once the prober's word reaches it.
        !metrics.contains("ringgate_upstream_endpoint_healthy") && state_of(&gw, &b) == "unchecked"
    });
    common::wait_until(WAIT, "b gets traffic again", || {
        get(&gw, "/x");
        traffic(&b) > 0
    });
}
