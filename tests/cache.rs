//! The response cache end to end: a test upstream whose answers say how
//! they may be cached, and counts what it is asked; every rule is checked
//! by what the client got (status, body, `Age`, `Cache-Status`) and by how
//! many requests reached the upstream.

mod common;

use common::{Gateway, Reply, Upstream, config, drivers, request};

/// The upstream: the path says how the answer may be cached.
fn origin() -> Upstream {
    Upstream::start("origin", |r| {
        let path = r.target.split('?').next().unwrap_or("");
        let cc = |v: &str| vec![("cache-control".to_string(), v.to_string())];
        let body = format!("{} {}", r.method, r.target).into_bytes();
        match path {
            "/fresh" | "/other" => Reply::Ok(200, cc("max-age=60"), body),
            "/no-store" => Reply::Ok(200, cc("no-store, max-age=60"), body),
            "/private" => Reply::Ok(200, cc("private, max-age=60"), body),
            "/silent" => Reply::Ok(200, vec![], body),
            "/cookie" => {
                let mut h = cc("max-age=60");
                h.push(("set-cookie".into(), "session=secret".into()));
                Reply::Ok(200, h, body)
            }
            "/vary-star" => {
                let mut h = cc("max-age=60");
                h.push(("vary".into(), "*".into()));
                Reply::Ok(200, h, body)
            }
            "/public" => Reply::Ok(200, cc("public, max-age=60"), body),
            "/vary" => {
                let mut h = cc("max-age=60");
                h.push(("vary".into(), "Accept-Encoding".into()));
                let enc = r.header("accept-encoding").unwrap_or("none").to_string();
                Reply::Ok(200, h, enc.into_bytes())
            }
            "/etag" => {
                let mut h = cc("max-age=60");
                h.push(("etag".into(), "\"v1\"".into()));
                h.push((
                    "last-modified".into(),
                    "Sun, 06 Nov 1994 08:49:37 GMT".into(),
                ));
                Reply::Ok(200, h, body)
            }
            "/chunked" => Reply::Chunked(200, vec![b"hello ".to_vec(), b"world".to_vec()]),
            "/big" => Reply::Ok(200, cc("max-age=60"), vec![b'x'; 300_000]),
            "/not-found" => Reply::Ok(404, cc("max-age=60"), b"gone".to_vec()),
            "/error" => Reply::Ok(500, vec![], b"boom".to_vec()),
            _ => Reply::Ok(200, cc("max-age=60"), body),
        }
    })
}

fn gateway(driver: &str, upstream: &Upstream, cache: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[cache]\nmemory = \"8MiB\"\nmax_object = \"256KiB\"\n\n[upstreams.origin]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\ncache = {{ {cache} }}\n",
            upstream.addr
        ),
    ))
}

fn get(addr: std::net::SocketAddr, path: &str, extra: &str) -> common::Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: cache.test\r\n{extra}\r\n").as_bytes(),
    )
}

fn count(upstream: &Upstream, path: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.target.split('?').next() == Some(path))
        .count()
}

#[test]
fn fresh_responses_are_answered_from_the_cache_with_age_and_cache_status() {
    for driver in drivers() {
        let up = origin();
        let gw = gateway(driver, &up, "");
        let first = get(gw.addr, "/fresh", "");
        assert_eq!(first.status, 200);
        assert_eq!(
            first.header("cache-status"),
            Some("ringgate; fwd=miss; stored"),
            "{driver}"
        );
        assert!(first.header("age").is_none());
        let second = get(gw.addr, "/fresh", "");
        assert_eq!(second.status, 200);
        assert_eq!(second.text(), "GET /fresh");
        assert!(
            second
                .header("cache-status")
                .unwrap()
                .starts_with("ringgate; hit; ttl="),
            "{driver}: {:?}",
            second.header("cache-status")
        );
        let age: u64 = second.header("age").unwrap().parse().unwrap();
        assert!(age <= 2);
        assert_eq!(second.header("cache-control"), Some("max-age=60"));
        assert_eq!(second.header("content-length"), Some("10"));
        assert!(second.header("x-request-id").is_some());
        assert_eq!(count(&up, "/fresh"), 1, "{driver}: one upstream request");
        // HEAD is answered from the stored GET: headers, no body.
        let head = request(gw.addr, b"HEAD /fresh HTTP/1.1\r\nHost: cache.test\r\n\r\n");
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("10"));
        assert!(head.body.is_empty());
        assert_eq!(count(&up, "/fresh"), 1, "{driver}");
        // Another query is another resource; so is another host.
        assert_eq!(
            get(gw.addr, "/fresh?page=2", "").text(),
            "GET /fresh?page=2"
        );
        let other_host = request(gw.addr, b"GET /fresh HTTP/1.1\r\nHost: other.test\r\n\r\n");
        assert_eq!(
            other_host.header("cache-status"),
            Some("ringgate; fwd=miss; stored")
        );
        assert_eq!(count(&up, "/fresh"), 3, "{driver}");
        // A stored 404 with explicit freshness is a hit too.
        get(gw.addr, "/not-found", "");
        let again = get(gw.addr, "/not-found", "");
        assert_eq!(again.status, 404);
        assert!(again.header("cache-status").unwrap().contains("hit"));
        assert_eq!(count(&up, "/not-found"), 1);
    }
}

#[test]
fn responses_the_rules_forbid_are_fetched_every_time() {
    let up = origin();
    let gw = gateway("epoll", &up, "");
    for path in [
        "/no-store",
        "/private",
        "/silent",
        "/cookie",
        "/vary-star",
        "/error",
    ] {
        for _ in 0..2 {
            let r = get(gw.addr, path, "");
            assert_eq!(
                r.header("cache-status"),
                Some("ringgate; fwd=miss"),
                "{path}"
            );
        }
        assert_eq!(count(&up, path), 2, "{path} reached the upstream twice");
    }
    // A credential: only a response that says it is shareable is stored.
    for _ in 0..2 {
        get(gw.addr, "/fresh?auth", "Authorization: Bearer x\r\n");
        get(gw.addr, "/public?auth", "Authorization: Bearer x\r\n");
    }
    assert_eq!(
        count(&up, "/fresh"),
        2,
        "max-age alone does not share a credentialed answer"
    );
    assert_eq!(count(&up, "/public"), 1, "public does");
    // Methods other than GET and HEAD pass through; so do ranges.
    for _ in 0..2 {
        request(
            gw.addr,
            b"OPTIONS /fresh?m HTTP/1.1\r\nHost: cache.test\r\n\r\n",
        );
        get(gw.addr, "/fresh?range", "Range: bytes=0-3\r\n");
    }
    assert_eq!(count(&up, "/fresh"), 6);
}

#[test]
fn a_heuristic_lifetime_applies_only_when_configured() {
    let up = origin();
    let gw = gateway("epoll", &up, "default_ttl = \"60s\"");
    get(gw.addr, "/silent", "");
    assert!(
        get(gw.addr, "/silent", "")
            .header("cache-status")
            .unwrap()
            .contains("hit")
    );
    // 500 is not heuristically cacheable.
    get(gw.addr, "/error", "");
    get(gw.addr, "/error", "");
    assert_eq!(count(&up, "/silent"), 1);
    assert_eq!(count(&up, "/error"), 2);
}

#[test]
fn vary_keeps_a_variant_per_request_header_value() {
    let up = origin();
    let gw = gateway("epoll", &up, "");
    for _ in 0..2 {
        assert_eq!(
            get(gw.addr, "/vary", "Accept-Encoding: gzip\r\n").text(),
            "gzip"
        );
        assert_eq!(
            get(gw.addr, "/vary", "Accept-Encoding: br\r\n").text(),
            "br"
        );
        assert_eq!(get(gw.addr, "/vary", "").text(), "none");
        // Whitespace in a list is not a different value.
        assert_eq!(
            get(gw.addr, "/vary", "Accept-Encoding:  gzip \r\n").text(),
            "gzip"
        );
    }
    assert_eq!(count(&up, "/vary"), 3, "one fetch per variant");
}

#[test]
fn a_satisfied_conditional_request_gets_304_from_the_cache() {
    let up = origin();
    let gw = gateway("epoll", &up, "");
    get(gw.addr, "/etag", "");
    let r = get(gw.addr, "/etag", "If-None-Match: \"v1\"\r\n");
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = get(gw.addr, "/etag", "If-None-Match: \"v0\"\r\n");
    assert_eq!(r.status, 200);
    let r = get(
        gw.addr,
        "/etag",
        "If-Modified-Since: Mon, 07 Nov 1994 00:00:00 GMT\r\n",
    );
    assert_eq!(r.status, 304);
    let r = get(
        gw.addr,
        "/etag",
        "If-Modified-Since: Sat, 05 Nov 1994 00:00:00 GMT\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(count(&up, "/etag"), 1);
}

#[test]
fn unsafe_methods_invalidate_and_client_no_cache_refetches() {
    let up = origin();
    let gw = gateway("epoll", &up, "");
    get(gw.addr, "/fresh", "");
    get(gw.addr, "/fresh", "");
    assert_eq!(count(&up, "/fresh"), 1);
    let r = request(
        gw.addr,
        b"POST /fresh HTTP/1.1\r\nHost: cache.test\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert_eq!(r.status, 200);
    assert_eq!(count(&up, "/fresh"), 2);
    let after = get(gw.addr, "/fresh", "");
    assert_eq!(
        after.header("cache-status"),
        Some("ringgate; fwd=miss; stored")
    );
    assert_eq!(count(&up, "/fresh"), 3);
    // A client's no-cache: not answered from the cache.
    let r = get(gw.addr, "/fresh", "Cache-Control: no-cache\r\n");
    assert_eq!(r.header("cache-status"), Some("ringgate; fwd=miss; stored"));
    assert_eq!(count(&up, "/fresh"), 4);
    let hit = get(gw.addr, "/fresh", "");
    assert!(hit.header("cache-status").unwrap().contains("hit"));
}

#[test]
fn chunked_answers_are_stored_and_large_ones_pass_through() {
    let up = origin();
    let gw = gateway("epoll", &up, "default_ttl = \"60s\"");
    let first = get(gw.addr, "/chunked", "");
    assert_eq!(first.text(), "hello world");
    let second = get(gw.addr, "/chunked", "");
    assert_eq!(second.text(), "hello world");
    assert_eq!(second.header("content-length"), Some("11"));
    assert!(second.header("transfer-encoding").is_none());
    assert_eq!(count(&up, "/chunked"), 1);
    // 300 000 bytes > max_object (256 KiB): relayed whole, never stored.
    for _ in 0..2 {
        let r = get(gw.addr, "/big", "");
        assert_eq!(r.body.len(), 300_000);
        assert_eq!(r.header("cache-status"), Some("ringgate; fwd=miss"));
    }
    assert_eq!(count(&up, "/big"), 2);
}

#[test]
fn the_cache_answers_only_routes_that_use_it_and_counts_what_it_does() {
    let up = origin();
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[cache]\nmemory = \"8MiB\"\nmax_object = \"1MiB\"\n\n[upstreams.origin]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/cached\"\nupstream = \"origin\"\ncache = {{ query = \"none\" }}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\n",
            up.addr
        ),
    ));
    for _ in 0..3 {
        get(gw.addr, "/cached/x?utm=1", "");
        get(gw.addr, "/plain", "");
    }
    assert_eq!(
        count(&up, "/cached/x"),
        1,
        "query = none: one key for all queries"
    );
    assert_eq!(count(&up, "/plain"), 3);
    assert!(get(gw.addr, "/plain", "").header("cache-status").is_none());
    let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
    for line in [
        "ringgate_cache_requests_total{worker=\"0\",result=\"hit\"} 2",
        "ringgate_cache_requests_total{worker=\"0\",result=\"miss\"} 1",
        "ringgate_cache_objects{worker=\"0\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[test]
fn a_purge_reaches_every_worker_before_the_admin_answers() {
    let up = origin();
    let gw = Gateway::start(&format!(
        "workers = 2\nio_driver = \"epoll\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[cache]\nmemory = \"8MiB\"\nmax_object = \"1MiB\"\n\n[upstreams.origin]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\ncache = {{ }}\n",
        up.addr
    ));
    let admin = gw.admin.unwrap();
    let purge = |query: &str| {
        request(
            admin,
            format!(
                "POST /cache/purge?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    // New connections spread over both workers; each stores its own copy.
    for _ in 0..30 {
        get(gw.addr, "/fresh", "");
        get(gw.addr, "/docs/a", "");
        get(gw.addr, "/docs/b?x=1", "");
    }
    let copies = count(&up, "/fresh");
    assert!((1..=2).contains(&copies));
    // Every stored copy, on every worker, is purged before the answer.
    let r = purge("path=/fresh");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("{{\"purged\":{copies},\"workers\":2,\"of\":2}}\n")
    );
    assert_eq!(
        get(gw.addr, "/fresh", "").header("cache-status"),
        Some("ringgate; fwd=miss; stored")
    );
    // By prefix, on one host (another host's copies stay).
    let docs_before = count(&up, "/docs/a") + count(&up, "/docs/b");
    let r = purge("host=other.test&path=/docs/&prefix=true");
    assert_eq!(r.text(), "{\"purged\":0,\"workers\":2,\"of\":2}\n");
    let r = purge("host=cache.test&path=/docs/&prefix=true");
    assert!(r.text().starts_with("{\"purged\":"), "{}", r.text());
    assert_ne!(r.text(), "{\"purged\":0,\"workers\":2,\"of\":2}\n");
    for _ in 0..10 {
        get(gw.addr, "/docs/a", "");
    }
    assert!(count(&up, "/docs/a") + count(&up, "/docs/b") > docs_before);
    // Soft: kept, but stale (no validator here: fetched again).
    let before = count(&up, "/fresh");
    for _ in 0..10 {
        get(gw.addr, "/fresh", "");
    }
    let r = purge("path=/fresh&soft=true");
    assert!(!r.text().starts_with("{\"purged\":0"), "{}", r.text());
    let after = get(gw.addr, "/fresh", "");
    assert_eq!(
        after.header("cache-status"),
        Some("ringgate; fwd=miss; stored")
    );
    assert!(count(&up, "/fresh") > before);
    // Bad requests say why.
    let r = purge("host=x");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("path is required"));
}

fn purge_on(admin: std::net::SocketAddr, query: &str) -> common::Response {
    request(
        admin,
        format!(
            "POST /cache/purge?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[test]
fn a_purge_reaches_the_other_nodes_through_redis() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let up = origin();
    let node = || {
        Gateway::start(&config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n\n[redis]\naddress = \"127.0.0.1:{}\"\ntimeout = \"1s\"\n\n[cache]\nmemory = \"8MiB\"\nmax_object = \"256KiB\"\n\n[upstreams.origin]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\ncache = {{ }}\n",
                redis.port, up.addr
            ),
        ))
    };
    let (a, b) = (node(), node());
    let wait = std::time::Duration::from_secs(10);
    // Both nodes' purge threads subscribed: a purge reaches two nodes.
    common::wait_until(wait, "both nodes subscribed", || {
        purge_on(a.admin.unwrap(), "path=/nothing")
            .text()
            .contains("\"nodes\":2")
    });
    for gw in [&a, &b, &a, &b] {
        assert_eq!(get(gw.addr, "/fresh", "").status, 200);
    }
    assert_eq!(count(&up, "/fresh"), 2, "one copy per node");
    let r = purge_on(a.admin.unwrap(), "path=/fresh");
    assert_eq!(
        (r.status, r.text()),
        (
            200,
            "{\"purged\":1,\"workers\":1,\"of\":1,\"nodes\":2}\n".to_string()
        )
    );
    // Node A purged before answering; node B as soon as the message is in.
    assert_eq!(
        get(a.addr, "/fresh", "").header("cache-status"),
        Some("ringgate; fwd=miss; stored")
    );
    common::wait_until(wait, "node B applies the purge", || {
        get(b.addr, "/fresh", "")
            .header("cache-status")
            .is_some_and(|s| s.contains("fwd=miss"))
    });
    assert_eq!(count(&up, "/fresh"), 4);
    // Redis gone: the local purge still happens, and the answer says the
    // other nodes were not told.
    drop(redis);
    let r = purge_on(a.admin.unwrap(), "path=/fresh");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text()
            .starts_with("{\"purged\":1,\"workers\":1,\"of\":1,\"redis_error\":\""),
        "{}",
        r.text()
    );
    assert!(
        get(a.addr, "/fresh", "")
            .header("cache-status")
            .unwrap()
            .contains("fwd=miss")
    );
}

#[test]
fn stale_if_error_serves_a_stale_answer_when_the_upstream_fails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};
    // 0: answer, 1: 503, 2: close without answering.
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let up = Upstream::start("flaky", move |r| match m.load(Ordering::SeqCst) {
        1 => Reply::Ok(503, vec![], b"down".to_vec()),
        2 => Reply::Close,
        _ => {
            let cc = if r.target.starts_with("/sie") {
                "max-age=1, stale-if-error=600"
            } else {
                "max-age=1"
            };
            Reply::Ok(
                200,
                vec![("cache-control".into(), cc.into())],
                b"good".to_vec(),
            )
        }
    });
    let gw = gateway("epoll", &up, "");
    assert_eq!(get(gw.addr, "/sie", "").text(), "good");
    assert_eq!(get(gw.addr, "/plain", "").text(), "good");
    // Both stored answers live one second: two seconds later they are
    // stale whatever the clock's phase.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for failing in [1, 2] {
        mode.store(failing, Ordering::SeqCst);
        let r = get(gw.addr, "/sie", "");
        assert_eq!(r.status, 200, "mode {failing}");
        assert_eq!(r.text(), "good");
        let status = r.header("cache-status").unwrap();
        assert!(
            status.starts_with("ringgate; hit; ttl=-") && status.ends_with("detail=stale-if-error"),
            "{status}"
        );
        // Without stale-if-error the failure is what the client gets.
        let plain = get(gw.addr, "/plain", "");
        assert!(plain.status >= 500, "mode {failing}: {}", plain.status);
    }
    // The upstream gone altogether: connection refused, still stale.
    drop(up);
    let r = get(gw.addr, "/sie", "");
    assert_eq!((r.status, r.text().as_str()), (200, "good"));
    assert!(
        r.header("cache-status")
            .unwrap()
            .ends_with("detail=stale-if-error")
    );
}

#[test]
fn concurrent_misses_for_one_key_make_one_upstream_request() {
    for driver in drivers() {
        let up = Upstream::start("slow", |r| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let vary = r.target.starts_with("/vary");
            let mut h = vec![("cache-control".to_string(), "max-age=60".to_string())];
            if vary {
                h.push(("vary".into(), "x-tenant".into()));
            }
            let body = r.header("x-tenant").unwrap_or("all").to_string();
            Reply::Ok(200, h, body.into_bytes())
        });
        let gw = gateway(driver, &up, "");
        let clients = 12;
        let barrier = std::sync::Barrier::new(clients);
        std::thread::scope(|s| {
            for i in 0..clients {
                let (barrier, addr) = (&barrier, gw.addr);
                s.spawn(move || {
                    barrier.wait();
                    let r = get(addr, "/shared", "");
                    assert_eq!((r.status, r.text().as_str()), (200, "all"), "client {i}");
                });
            }
        });
        assert_eq!(count(&up, "/shared"), 1, "{driver}: one fetch for all");
        // Coalescing never hands one variant to a request of another: the
        // waiters whose tenant differs from the stored one fetch their own.
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for tenant in ["a", "a", "b", "b"] {
                let (barrier, addr) = (&barrier, gw.addr);
                s.spawn(move || {
                    barrier.wait();
                    let r = get(addr, "/vary", &format!("X-Tenant: {tenant}\r\n"));
                    assert_eq!(r.text(), tenant);
                });
            }
        });
        let fetched = count(&up, "/vary");
        assert!(
            (2..=3).contains(&fetched),
            "{driver}: {fetched} fetches for two variants"
        );
    }
}

#[test]
fn a_stale_entry_is_revalidated_and_a_304_freshens_it() {
    let up = Upstream::start("validating", |r| {
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let conditional = match r.target.as_str() {
            "/by-etag" => r.header("if-none-match") == Some("\"v1\""),
            _ => r.header("if-modified-since") == Some(lm),
        };
        if conditional {
            return Reply::Ok(
                304,
                vec![("cache-control".into(), "max-age=60".into())],
                Vec::new(),
            );
        }
        Reply::Ok(
            200,
            vec![
                ("cache-control".into(), "max-age=1".into()),
                ("etag".into(), "\"v1\"".into()),
                ("last-modified".into(), lm.into()),
            ],
            b"body".to_vec(),
        )
    });
    let gw = gateway("epoll", &up, "");
    for path in ["/by-etag", "/by-date"] {
        assert_eq!(get(gw.addr, path, "").text(), "body");
    }
    // max-age=1: stale two seconds later, whatever the clock's phase.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for path in ["/by-etag", "/by-date"] {
        let r = get(gw.addr, path, "");
        assert_eq!((r.status, r.text().as_str()), (200, "body"), "{path}");
        let status = r.header("cache-status").unwrap();
        assert!(status.contains("fwd-status=304"), "{path}: {status}");
        // Freshened for 60 s: answered without asking.
        let again = get(gw.addr, path, "");
        let ttl: u64 = again
            .header("cache-status")
            .unwrap()
            .strip_prefix("ringgate; hit; ttl=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(ttl >= 55, "{path}: the 304's max-age=60 applies, ttl {ttl}");
        assert_eq!(again.text(), "body");
    }
    let asked: Vec<(String, Option<String>, Option<String>)> = up
        .requests()
        .iter()
        .map(|r| {
            (
                r.target.clone(),
                r.header("if-none-match").map(str::to_string),
                r.header("if-modified-since").map(str::to_string),
            )
        })
        .collect();
    assert_eq!(asked.len(), 4, "{asked:?}");
    assert_eq!(asked[2].1.as_deref(), Some("\"v1\""), "{asked:?}");
    assert!(asked[3].2.is_some(), "{asked:?}");
    // A client's own condition is answered from the revalidated entry.
    std::thread::sleep(std::time::Duration::from_millis(10));
    let r = get(gw.addr, "/by-etag", "If-None-Match: \"v1\"\r\n");
    assert_eq!(r.status, 304);
}

#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Every answer: fresh 1 s, then 60 s stale-while-revalidate. The
    // version is the request's number; /changed's refresh is held until
    // `go`.
    let go = Arc::new(AtomicBool::new(false));
    let held = go.clone();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    let up = Upstream::start("swr", move |r| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if n > 1 && r.target == "/changed" {
            while !held.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let cc = "max-age=1, stale-while-revalidate=60";
        if r.target == "/failing" && r.header("if-none-match").is_some() {
            return Reply::Ok(500, vec![], b"boom".to_vec());
        }
        if r.target == "/confirmed" && r.header("if-none-match") == Some("\"v5\"") {
            return Reply::Ok(
                304,
                vec![("cache-control".into(), "max-age=60".into())],
                vec![],
            );
        }
        Reply::Ok(
            200,
            vec![
                ("cache-control".into(), cc.into()),
                ("etag".into(), format!("\"v{n}\"")),
            ],
            format!("version {n}").into_bytes(),
        )
    });
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[cache]\nmemory = \"8MiB\"\nmax_object = \"256KiB\"\nbackground_refreshes = 1\n\n[upstreams.origin]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"origin\"\ncache = {{ }}\n",
            up.addr
        ),
    ));
    assert_eq!(get(gw.addr, "/changed", "").text(), "version 1");
    assert_eq!(get(gw.addr, "/second", "").text(), "version 2");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    // Stale: answered from the cache while the refresh is held upstream
    // (the answer could not arrive if the client waited for it), and a
    // second stale hit starts no second refresh.
    for path in ["/changed", "/changed", "/second"] {
        let r = get(gw.addr, path, "");
        assert!(r.text().starts_with("version "), "{path}");
        let status = r.header("cache-status").unwrap();
        assert!(
            status.starts_with("ringgate; hit; ttl=-")
                && status.ends_with("detail=stale-while-revalidate"),
            "{status}"
        );
    }
    let wait = std::time::Duration::from_secs(10);
    common::wait_until(wait, "the refresh reaches the upstream", || {
        up.request_count() == 3
    });
    let refresh = &up.requests()[2];
    assert_eq!(refresh.target, "/changed");
    assert_eq!(
        refresh.header("if-none-match"),
        Some("\"v1\""),
        "sent with the entry's validator"
    );
    go.store(true, Ordering::SeqCst);
    common::wait_until(wait, "the refreshed answer is served", || {
        get(gw.addr, "/changed", "").text() == "version 3"
    });
    // background_refreshes = 1: /second's stale hit came while /changed's
    // refresh ran, so it started none; its next one does.
    assert_eq!(count(&up, "/second"), 1);
    assert_eq!(get(gw.addr, "/second", "").text(), "version 2");
    common::wait_until(wait, "the second key is refreshed", || {
        get(gw.addr, "/second", "").text() == "version 4"
    });
    assert_eq!(
        up.request_count(),
        4,
        "served from the cache once refreshed"
    );

    // A 304 to the refresh freshens the entry it has.
    assert_eq!(get(gw.addr, "/confirmed", "").text(), "version 5");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(get(gw.addr, "/confirmed", "").text(), "version 5");
    common::wait_until(wait, "the entry is freshened", || {
        let r = get(gw.addr, "/confirmed", "");
        r.header("cache-status")
            .is_some_and(|s| !s.contains("ttl=-"))
    });
    let r = get(gw.addr, "/confirmed", "");
    assert_eq!(r.text(), "version 5");
    assert_eq!(up.request_count(), 6);

    // A refresh answered 5xx leaves the stale entry serving.
    assert_eq!(get(gw.addr, "/failing", "").text(), "version 7");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(get(gw.addr, "/failing", "").text(), "version 7");
    common::wait_until(wait, "the failed refresh is counted", || {
        common::get(gw.admin.unwrap(), "/metrics").text().contains(
            "ringgate_cache_revalidations_total{worker=\"0\",mode=\"background\",result=\"failed\"} 1\n",
        )
    });
    let r = get(gw.addr, "/failing", "");
    assert_eq!((r.status, r.text().as_str()), (200, "version 7"));
    assert!(
        r.header("cache-status")
            .unwrap()
            .ends_with("detail=stale-while-revalidate")
    );
    let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
    for line in [
        "ringgate_cache_revalidations_total{worker=\"0\",mode=\"background\",result=\"modified\"} 2",
        "ringgate_cache_revalidations_total{worker=\"0\",mode=\"background\",result=\"not_modified\"} 1",
        "ringgate_cache_revalidations_total{worker=\"0\",mode=\"foreground\",result=\"not_modified\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

/// An upstream that sends a 10 MiB body in two halves: the second only
/// once `go` is set (the test sets it when the client has bytes).
fn slow_big_upstream(
    go: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let go = go.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let half = 5 << 20;
                let body: Vec<u8> = (0..2 * half).map(|i| (i % 251) as u8).collect();
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                let _ = stream.write_all(&body[..half]);
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                let _ = stream.write_all(&body[half..]);
            });
        }
    });
    (addr, served)
}

#[test]
fn a_large_answer_streams_to_the_client_while_it_is_stored() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let go = std::sync::Arc::new(AtomicBool::new(false));
    let (upstream, served) = slow_big_upstream(go.clone());
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[cache]\nmemory = \"64MiB\"\nmax_object = \"16MiB\"\n\n[upstreams.big]\nendpoints = [\"{upstream}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"big\"\ncache = {{ }}\n"
        ),
    ));
    let mut client = std::net::TcpStream::connect(gw.addr).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: cache.test\r\n\r\n")
        .unwrap();
    // The first half arrives while the upstream holds back the second.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while got.len() < (1 << 20) {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!go.load(Ordering::SeqCst));
    go.store(true, Ordering::SeqCst);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let want = head_end + (10 << 20);
    while got.len() < want {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let body = &got[head_end..];
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    // Stored whole: the next request is a hit with the same bytes.
    let again = get(gw.addr, "/big", "");
    assert!(again.header("cache-status").unwrap().contains("hit"));
    assert_eq!(again.body.len(), 10 << 20);
    assert_eq!(&again.body[..], body);
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

#[test]
fn a_flood_of_distinct_urls_stays_within_the_memory_budget() {
    let up = Upstream::start("many", |_| {
        Reply::Ok(
            200,
            vec![("cache-control".into(), "max-age=600".into())],
            vec![b'z'; 10_000],
        )
    });
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[cache]\nmemory = \"4MiB\"\nmax_object = \"64KiB\"\n\n[upstreams.many]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"many\"\ncache = {{ }}\n",
            up.addr
        ),
    ));
    let mut conn = common::Conn::open(gw.addr);
    let mut flood = |from: usize, to: usize| {
        for i in from..to {
            conn.send(format!("GET /item/{i} HTTP/1.1\r\nHost: cache.test\r\n\r\n").as_bytes());
            assert_eq!(conn.read_response(false).status, 200);
        }
    };
    // 1 000 objects of 10 KB fill the 4 MiB shard more than twice over.
    flood(0, 1000);
    let filled = rss_kib(gw.child.id());
    flood(1000, 4000);
    let after = rss_kib(gw.child.id());
    let metric = |name: &str| -> u64 {
        let text = common::get(gw.admin.unwrap(), "/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap()
    };
    assert!(metric("ringgate_cache_bytes{worker=\"0\"}") <= 4 << 20);
    assert!(metric("ringgate_cache_evictions_total{worker=\"0\"}") > 3000);
    assert!(
        after <= filled + 2048,
        "RSS grew from {filled} KiB to {after} KiB over 3 000 more distinct URLs"
    );
}
