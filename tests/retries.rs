//! Route retry policies end to end: tries that fail (connection refused,
//! an upstream that closes without answering, one that never answers, a
//! 503) are tried again on another endpoint within the policy, its
//! deadline and the upstream's retry budget; what each endpoint received
//! is counted at the endpoint.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Reply, Upstream, closed_port, config, ok, request};

/// Two workers, the given endpoints round robin, and a route with `retry`.
fn gateway(endpoints: &[String], upstream_extra: &str, retry: &str) -> Gateway {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    Gateway::start(
        &config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [{}]\nconnect_timeout = \"1s\"\nresponse_timeout = \"10s\"\n{upstream_extra}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nretry = {retry}\n",
                list.join(", ")
            ),
        )
        .replace("workers = 1", "workers = 2"),
    )
}

fn get(gw: &Gateway, path: &str) -> common::Response {
    request(
        gw.addr,
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes(),
    )
}

fn post(gw: &Gateway, body: &[u8]) -> common::Response {
    let mut raw = format!(
        "POST /orders HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    request(gw.addr, &raw)
}

fn metric_sum(gw: &Gateway, name: &str) -> u64 {
    common::get(gw.admin.unwrap(), "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn addr(u: &Upstream) -> String {
    u.addr.to_string()
}

/// An endpoint that accepts connections and reads requests but never answers.
fn black_hole(name: &str) -> Upstream {
    Upstream::start(name, |_| {
        Reply::Delay(Duration::from_secs(60), Box::new(ok("too late")))
    })
}

#[test]
fn a_refused_connection_is_retried_on_another_endpoint() {
    let (a, b) = (Upstream::named("a"), Upstream::named("b"));
    let dead = closed_port().to_string();
    // A third of the tries fail, and nothing ejects the endpoint here: a
    // budget above that share (the default 20% would refuse some).
    let gw = gateway(
        &[dead, addr(&a), addr(&b)],
        "retry_budget = { percent = 50 }",
        "{ attempts = 3 }",
    );
    for i in 0..30 {
        let r = get(&gw, &format!("/item/{i}"));
        assert_eq!(r.status, 200, "request {i}");
    }
    assert_eq!(a.request_count() + b.request_count(), 30);
    assert!(metric_sum(&gw, "ringgate_upstream_endpoint_retries_total") >= 1);
    // A POST that never reached the dead endpoint is safe to retry too.
    for _ in 0..6 {
        assert_eq!(post(&gw, b"{\"n\":1}").status, 200);
    }
    let posted: Vec<_> = [a.requests(), b.requests()]
        .concat()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posted.len(), 6);
    assert!(posted.iter().all(|r| r.body == b"{\"n\":1}"));
}

#[test]
fn a_503_is_retried_and_the_client_gets_the_good_answer() {
    let sick = Upstream::start("sick", |_| Reply::Ok(503, vec![], b"sick".to_vec()));
    let well = Upstream::named("well");
    let gw = gateway(
        &[addr(&sick), addr(&well)],
        "retry_budget = { percent = 100 }",
        "{ attempts = 2, on = [\"503\"] }",
    );
    for i in 0..20 {
        let r = get(&gw, &format!("/x/{i}"));
        assert_eq!(
            (r.status, r.text()),
            (200, "well".to_string()),
            "request {i}"
        );
    }
    assert_eq!(well.request_count(), 20);
    assert!(sick.request_count() >= 1);
    // A status the policy does not name is the client's answer.
    let teapot = Upstream::start("teapot", |_| Reply::Ok(500, vec![], b"oops".to_vec()));
    let gw = gateway(&[addr(&teapot)], "", "{ attempts = 3, on = [\"503\"] }");
    assert_eq!(get(&gw, "/").status, 500);
    assert_eq!(teapot.request_count(), 1);
}

#[test]
fn a_post_is_never_retried_once_it_was_sent() {
    // The first endpoint reads the request and closes without a word.
    let rude = Upstream::start("rude", |_| Reply::Close);
    let well = Upstream::named("well");
    let gw = gateway(
        &[addr(&rude), addr(&well)],
        "retry_budget = { percent = 100 }",
        "{ attempts = 3 }",
    );
    let mut failed = 0;
    for _ in 0..10 {
        match post(&gw, b"pay=1").status {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let rude_posts = rude
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(failed, rude_posts, "each POST the rude endpoint saw failed");
    assert!(rude_posts >= 1);
    assert_eq!(well.request_count() + rude_posts, 10, "no POST sent twice");
    // GETs on the same endpoints are retried.
    for _ in 0..10 {
        assert_eq!(get(&gw, "/").status, 200);
    }

    // With non_idempotent, the POST is replayed, body and all.
    let rude = Upstream::start("rude", |_| Reply::Close);
    let well = Upstream::named("well");
    let gw = gateway(
        &[addr(&rude), addr(&well)],
        "retry_budget = { percent = 100 }",
        "{ attempts = 2, non_idempotent = true }",
    );
    for _ in 0..6 {
        assert_eq!(post(&gw, b"pay=2").status, 200);
    }
    let replayed = well.requests();
    assert_eq!(replayed.len(), 6);
    assert!(replayed.iter().all(|r| r.body == b"pay=2"));
}

#[test]
fn a_body_larger_than_max_body_is_not_retried() {
    let rude = Upstream::start("rude", |_| Reply::Close);
    let well = Upstream::named("well");
    let gw = gateway(
        &[addr(&rude), addr(&well)],
        "retry_budget = { percent = 100 }",
        "{ attempts = 2, non_idempotent = true, max_body = \"1KiB\" }",
    );
    let big = vec![b'x'; 4096];
    let statuses: Vec<u16> = (0..6).map(|_| post(&gw, &big).status).collect();
    assert!(statuses.contains(&502), "{statuses:?}");
    assert_eq!(
        well.request_count() + rude.request_count(),
        6,
        "sent once each"
    );
    // A small one is kept and replayed.
    for _ in 0..4 {
        assert_eq!(post(&gw, b"small").status, 200);
    }
}

#[test]
fn a_black_holed_endpoint_costs_one_per_try_timeout() {
    let hole = black_hole("hole");
    let well = Upstream::named("well");
    let gw = gateway(
        &[addr(&hole), addr(&well)],
        "retry_budget = { percent = 100 }",
        "{ attempts = 2, per_try_timeout = \"300ms\" }",
    );
    for i in 0..6 {
        let started = Instant::now();
        let r = get(&gw, &format!("/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "well");
        // At most one timed-out try, far under the 10 s response timeout.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(hole.request_count() >= 1);
}

#[test]
fn the_deadline_bounds_every_try_together() {
    let (h1, h2) = (black_hole("h1"), black_hole("h2"));
    let gw = gateway(
        &[addr(&h1), addr(&h2)],
        "",
        "{ attempts = 10, per_try_timeout = \"400ms\", deadline = \"600ms\" }",
    );
    let started = Instant::now();
    let r = get(&gw, "/");
    assert_eq!(r.status, 504);
    // Two tries at most fit in the deadline (the second cut short).
    assert!(h1.request_count() + h2.request_count() <= 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_retry_budget_bounds_upstream_attempts() {
    let a = Upstream::start("a", |_| Reply::Ok(503, vec![], b"down".to_vec()));
    let b = Upstream::start("b", |_| Reply::Ok(503, vec![], b"down".to_vec()));
    let gw = gateway(
        &[addr(&a), addr(&b)],
        "retry_budget = { percent = 20, min_per_second = 0 }",
        "{ attempts = 5, on = [\"503\"], backoff = { base = \"0s\", max = \"0s\" } }",
    );
    let requests = 100;
    for _ in 0..requests {
        assert_eq!(get(&gw, "/").status, 503);
    }
    let attempts = a.request_count() + b.request_count();
    // Each worker retries at most 20% of its requests; the 100 spread over
    // two workers, so a few fractions of a retry are lost to rounding.
    assert!(
        attempts <= requests * 120 / 100,
        "{attempts} attempts for {requests} requests"
    );
    assert!(attempts >= requests + 15, "retries happened: {attempts}");
    let refused = metric_sum(&gw, "ringgate_upstream_retry_budget_exhausted_total");
    assert!(refused >= 50, "budget refusals counted: {refused}");
}
