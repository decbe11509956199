//! Response aggregation end to end: three upstreams called at once for one
//! request (shown by a rendezvous: each answers only once all three have
//! been asked), their JSON merged under keys and at the top level with
//! field allow/deny lists, path parameters and selected client headers
//! passed on; a slow backend cut by its timeout and a failing one, with
//! both failure policies; a path that does not fit the pattern; limits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Reply, Upstream, config, drivers, get, request};
use serde_json::{Value, json};

fn json_reply(body: Value) -> Reply {
    Reply::Ok(
        200,
        vec![("Content-Type".into(), "application/json".into())],
        body.to_string().into_bytes(),
    )
}

/// Waits until `arrived` reaches `n` (or 5 s pass): the backends answer
/// only once every one of them has been asked.
fn rendezvous(arrived: &AtomicUsize, n: usize) {
    arrived.fetch_add(1, Ordering::SeqCst);
    let until = Instant::now() + Duration::from_secs(5);
    while arrived.load(Ordering::SeqCst) < n && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn body(r: &common::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("not JSON: {}", r.text()))
}

#[test]
fn three_backends_are_called_at_once_and_merged() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let a = arrived.clone();
    let users = Upstream::start("users", move |req| {
        rendezvous(&a, 3);
        json_reply(json!({"id": 42, "name": "Ann", "password": "hunter2", "path": req.target}))
    });
    let a = arrived.clone();
    let orders = Upstream::start("orders", move |_| {
        rendezvous(&a, 3);
        json_reply(json!({"orders": [1, 2, 3], "total": 3, "internal_cost": 17}))
    });
    let a = arrived.clone();
    let flags = Upstream::start("flags", move |_| {
        rendezvous(&a, 3);
        json_reply(json!(["beta", "dark-mode"]))
    });
    for driver in drivers() {
        arrived.store(0, Ordering::SeqCst);
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[upstreams.users]\nendpoints = [\"{}\"]\n[upstreams.orders]\nendpoints = [\"{}\"]\n[upstreams.flags]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"dashboard\"\npath_prefix = \"/dashboard\"\n\
                 response_headers = {{ set = {{ \"x-route\" = \"${{route}}\" }} }}\n\
                 [routes.aggregate]\npattern = \"/dashboard/{{user}}/{{tab}}\"\ndeadline = \"8s\"\nheaders = [\"authorization\", \"accept-language\"]\n\
                 [[routes.aggregate.backends]]\nupstream = \"users\"\npath = \"/users/${{user}}?tab=${{tab}}&${{query}}\"\nkey = \"user\"\ndeny = [\"password\"]\n\
                 [[routes.aggregate.backends]]\nupstream = \"orders\"\npath = \"/orders/by-user/${{user}}\"\nallow = [\"orders\", \"total\"]\n\
                 [[routes.aggregate.backends]]\nupstream = \"flags\"\npath = \"/flags\"\nkey = \"flags\"\n",
                users.addr, orders.addr, flags.addr
            ),
        ));
        let r = request(
            gw.addr,
            b"GET /dashboard/42/home?lang=en HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer abc\r\nAccept-Language: en\r\nCookie: secret=1\r\nx-request-id: agg-1\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-aggregate-missing").is_none());
        assert_eq!(r.header("x-route"), Some("dashboard"));
        assert_eq!(
            body(&r),
            json!({"user": {"id": 42, "name": "Ann", "path": "/users/42?tab=home&lang=en"}, "orders": [1, 2, 3], "total": 3, "flags": ["beta", "dark-mode"]}),
            "{driver}"
        );
        for (upstream, path) in [
            (&users, "/users/42?tab=home&lang=en"),
            (&orders, "/orders/by-user/42"),
            (&flags, "/flags"),
        ] {
            let seen = upstream.requests().pop().unwrap();
            assert_eq!(seen.method, "GET");
            assert_eq!(seen.target, path, "{driver}");
            assert_eq!(seen.header("authorization"), Some("Bearer abc"));
            assert_eq!(seen.header("accept-language"), Some("en"));
            assert!(
                !seen.has_header("cookie"),
                "{driver}: only the selected headers"
            );
            assert_eq!(seen.header("x-request-id"), Some("agg-1"));
        }
        // A path that does not fit the pattern.
        assert_eq!(get(gw.addr, "/dashboard/42").status, 404, "{driver}");
    }
}

#[test]
fn a_slow_and_a_failing_backend_fail_the_whole_or_leave_their_part_out() {
    let fast = Upstream::start("fast", |_| json_reply(json!({"ok": true})));
    let slow = Upstream::start("slow", |_| {
        Reply::Delay(
            Duration::from_secs(3),
            Box::new(json_reply(json!({"late": true}))),
        )
    });
    let failing = Upstream::start("failing", |_| Reply::Ok(500, vec![], b"boom".to_vec()));
    let not_json = Upstream::start("html", |_| Reply::Ok(200, vec![], b"<html>".to_vec()));
    for driver in drivers() {
        let backends = "[[routes.aggregate.backends]]\nupstream = \"fast\"\npath = \"/\"\nkey = \"fast\"\n\
             [[routes.aggregate.backends]]\nupstream = \"slow\"\npath = \"/\"\nkey = \"slow\"\ntimeout = \"300ms\"\n\
             [[routes.aggregate.backends]]\nupstream = \"failing\"\npath = \"/\"\nkey = \"failing\"\n\
             [[routes.aggregate.backends]]\nupstream = \"html\"\npath = \"/\"\nkey = \"html\"\n";
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.fast]\nendpoints = [\"{}\"]\n[upstreams.slow]\nendpoints = [\"{}\"]\n[upstreams.failing]\nendpoints = [\"{}\"]\n[upstreams.html]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"partial\"\npath = \"/partial\"\n[routes.aggregate]\non_failure = \"partial\"\ndeadline = \"2s\"\n{backends}\n\
                 [[routes]]\nname = \"strict\"\npath = \"/strict\"\n[routes.aggregate]\ndeadline = \"2s\"\n{backends}\n\
                 [[routes]]\nname = \"broken\"\npath = \"/broken\"\n[routes.aggregate]\n[[routes.aggregate.backends]]\nupstream = \"failing\"\npath = \"/\"\n",
                fast.addr, slow.addr, failing.addr, not_json.addr
            ),
        ));
        let started = Instant::now();
        let r = get(gw.addr, "/partial");
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        assert_eq!(body(&r), json!({"fast": {"ok": true}}), "{driver}");
        assert_eq!(
            r.header("x-aggregate-missing"),
            Some("slow, failing, html"),
            "{driver}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{driver}: the slow backend's timeout cut it"
        );
        // Strict: a timed-out backend makes it a 504, naming what is missing.
        let r = get(gw.addr, "/strict");
        assert_eq!(r.status, 504, "{driver}: {}", r.text());
        assert_eq!(r.header("x-aggregate-missing"), Some("slow, failing, html"));
        let r = get(gw.addr, "/broken");
        assert_eq!(r.status, 502, "{driver}");
        assert!(
            r.text().contains("\"error\":\"aggregate_incomplete\""),
            "{}",
            r.text()
        );
        assert_eq!(r.header("x-aggregate-missing"), Some("failing"));
        let metrics = get(gw.admin.unwrap(), "/metrics").text();
        for line in [
            "ringgate_aggregate_responses_total{outcome=\"partial\"} 1",
            "ringgate_aggregate_responses_total{outcome=\"failed\"} 2",
            "ringgate_aggregate_backend_calls_total{result=\"timed_out\"} 2",
            "ringgate_aggregate_backend_calls_total{result=\"not_json\"} 2",
        ] {
            assert!(metrics.contains(line), "{driver}: {line} in\n{metrics}");
        }
    }
}

#[test]
fn bad_aggregate_routes_are_refused_at_load() {
    for (route, wants) in [
        (
            "upstream = \"u\"\n[routes.aggregate]\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/\"",
            "no upstream or respond of its own",
        ),
        ("[routes.aggregate]\nbackends = []", "between 1 and 16"),
        (
            "[routes.aggregate]\n[[routes.aggregate.backends]]\nupstream = \"nope\"\npath = \"/\"",
            "unknown upstream `nope`",
        ),
        (
            "[routes.aggregate]\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/${id}\"",
            "unknown variable `${id}`",
        ),
        (
            "[routes.aggregate]\npattern = \"/x/{id\"\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/\"",
            "pattern must look like",
        ),
        (
            "[routes.aggregate]\non_failure = \"maybe\"\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/\"",
            "\"fail\" or \"partial\"",
        ),
        (
            "[routes.aggregate]\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/\"\n[[routes.aggregate.backends]]\nupstream = \"u\"\npath = \"/b\"",
            "two backends are named `u`",
        ),
    ] {
        let text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\n{route}\n"
        );
        let err = common::config_error(&text);
        assert!(err.contains(wants), "{route}: {err}");
    }
}
