//! Worker-scope rate limits against the real binary: 429 with Retry-After
//! and RateLimit-* headers, headers on allowed responses, keys and tiers,
//! the rate over time, and config validation.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gateway(driver: &str, up: &Upstream, policies: &str, route_limits: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n{policies}\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\nupstream = \"app\"\nrate_limits = [{route_limits}]\n",
            up.addr
        ),
    ))
}

#[test]
fn token_bucket_refuses_with_429_and_headers_then_refills() {
    for driver in drivers() {
        let up = Upstream::named("app");
        // One token a minute: no refill can land between these requests
        // however slowly a busy machine runs them.
        let gw = gateway(
            driver,
            &up,
            "[rate_limits.per_ip]\nkey = \"client_ip\"\nrate = \"1/m\"\nburst = 5\n",
            "\"per_ip\"",
        );
        let mut c = gw.conn();
        for expected_remaining in (0..5).rev() {
            c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, 200, "{driver}");
            assert_eq!(r.header("ratelimit-limit"), Some("5"));
            assert_eq!(
                r.header("ratelimit-remaining"),
                Some(expected_remaining.to_string().as_str())
            );
            assert_eq!(
                r.header("x-ratelimit-remaining"),
                Some(expected_remaining.to_string().as_str())
            );
        }
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 429, "{driver}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{driver}: retry-after {retry}");
        assert_eq!(r.header("ratelimit-remaining"), Some("0"));
        assert!(
            r.text().contains("\"error\":\"rate_limited\""),
            "{}",
            r.text()
        );
        assert_eq!(
            up.request_count(),
            5,
            "{driver}: the refused request never reached the upstream"
        );

        // Refill, on a fast bucket: empty it (a refusal shows it is empty),
        // then the connection stays usable and a token comes back.
        let gw = gateway(
            driver,
            &up,
            "[rate_limits.per_ip]\nkey = \"client_ip\"\nrate = \"5/s\"\nburst = 1\n",
            "\"per_ip\"",
        );
        let mut c = gw.conn();
        let mut status = || {
            c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
            c.read_response(false).status
        };
        let refused_within = (0..100).position(|_| status() == 429);
        assert!(refused_within.is_some(), "{driver}: burst 1 runs out");
        wait_until(PATIENCE, "the bucket refills", || status() == 200);
    }
}

#[test]
fn header_keys_and_tiers_have_their_own_limits() {
    let up = Upstream::named("app");
    let (window, window_secs) = window_with_room(TEST_ROOM);
    let policies = format!(
        "[rate_limits.per_key]\nkey = \"header:x-api-key\"\nlimit = 2\nwindow = \"{window}\"\ntier_header = \"x-plan\"\nheaders = false\n[rate_limits.per_key.tiers.gold]\nlimit = 4\nwindow = \"{window}\"\n"
    );
    let gw = gateway("epoll", &up, &policies, "\"per_key\"");
    let status = |key: &str, plan: &str| {
        let r = request(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n{plan}\r\n").as_bytes(),
        );
        assert!(
            r.header("ratelimit-limit").is_none() || r.status == 429,
            "headers = false hides them on allowed answers"
        );
        r.status
    };
    assert_eq!(
        [status("k1", ""), status("k1", ""), status("k1", "")],
        [200, 200, 429]
    );
    assert_eq!(status("k2", ""), 200, "another key has its own quota");
    let gold: Vec<u16> = (0..5).map(|_| status("k3", "X-Plan: gold\r\n")).collect();
    assert_eq!(gold, [200, 200, 200, 200, 429], "the gold tier allows 4");
    let r = request(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: k1\r\n\r\n",
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("ratelimit-limit"),
        Some("2"),
        "refusals always carry the headers"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=window_secs).contains(&retry),
        "retry-after within the window: {retry}"
    );
}

/// Switching tiers must never restart a quota: a client alternating a
/// generous tier and none gets the generous tier's allowance, not the sum
/// (or more, as when each switch handed out a fresh quota).
#[test]
fn alternating_tiers_gets_no_more_than_the_most_generous_tier() {
    let up = Upstream::named("app");
    let (window, _) = window_with_room(TEST_ROOM);
    for (policy, allowance) in [
        (
            format!("limit = 5\nwindow = \"{window}\"\ntier_header = \"x-plan\"\n[rate_limits.per_ip.tiers.gold]\nlimit = 10\nwindow = \"{window}\"\n"),
            10,
        ),
        // One token an hour: no refill during the test.
        (
            "rate = \"1/h\"\nburst = 5\ntier_header = \"x-plan\"\n[rate_limits.per_ip.tiers.gold]\nrate = \"1/h\"\nburst = 10\n".to_string(),
            10,
        ),
    ] {
        for (pattern, name) in [
            (&["gold", "none"][..], "gold first"),
            (&["none", "gold"][..], "none first"),
            (&["none", "none", "gold"][..], "mostly none"),
        ] {
            let gw = gateway(
                "epoll",
                &up,
                &format!("[rate_limits.per_ip]\nkey = \"client_ip\"\n{policy}"),
                "\"per_ip\"",
            );
            let mut c = gw.conn();
            let admitted = (0..40)
                .filter(|i| {
                    let plan = pattern[i % pattern.len()];
                    c.send(format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Plan: {plan}\r\n\r\n").as_bytes());
                    c.read_response(false).status == 200
                })
                .count();
            assert!(
                (5..=allowance).contains(&admitted),
                "{name}: {admitted} of 40 admitted, allowance {allowance}"
            );
        }
    }
}

/// Long header keys are stored in a bounded form (prefix + hash) that still
/// tells keys apart.
#[test]
fn long_header_keys_keep_separate_quotas() {
    let up = Upstream::named("app");
    let (window, _) = window_with_room(TEST_ROOM);
    let gw = gateway(
        "epoll",
        &up,
        &format!(
            "[rate_limits.per_key]\nkey = \"header:x-api-key\"\nlimit = 1\nwindow = \"{window}\"\n"
        ),
        "\"per_key\"",
    );
    let long = "k".repeat(8000);
    let status = |key: &str| {
        request(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n\r\n").as_bytes(),
        )
        .status
    };
    assert_eq!(status(&format!("{long}1")), 200);
    assert_eq!(status(&format!("{long}2")), 200, "differs only at the end");
    assert_eq!(status(&format!("{long}1")), 429, "the same long key again");
}

#[test]
fn token_bucket_rate_holds_over_time() {
    let up = Upstream::named("app");
    let gw = gateway(
        "epoll",
        &up,
        "[rate_limits.global]\nkey = \"global\"\nrate = \"200/s\"\nburst = 50\n",
        "\"global\"",
    );
    let mut c = gw.conn();
    let start = Instant::now();
    let run = Duration::from_secs(3);
    let (mut ok, mut refused) = (0u64, 0u64);
    while start.elapsed() < run {
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        match c.read_response(false).status {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("status {s}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // burst 50 absorbs pauses of the client (up to 250 ms) that would
    // otherwise waste tokens; the rate itself is what is measured.
    let expected = 50.0 + 200.0 * elapsed;
    let error = (ok as f64 - expected).abs() / expected;
    eprintln!(
        "admitted {ok} of {} in {elapsed:.2}s; expected {expected:.0} (error {:.2}%)",
        ok + refused,
        error * 100.0
    );
    assert!(refused > ok, "the client offered more than the limit");
    assert!(error < 0.02, "admitted {ok}, expected {expected:.0}");
}

#[test]
fn policies_are_validated() {
    let up = Upstream::named("app");
    let path = temp_path("limits.toml");
    let cases = [
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5/s\"\nscope = \"planet\"\n",
            "\"p\"",
            "scope must be \"worker\", \"node\" or \"cluster\"",
        ),
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5/s\"\nscope = \"cluster\"\n",
            "\"p\"",
            "scope = \"cluster\" needs a [redis] section",
        ),
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5/s\"\nscope = \"node\"\non_redis_error = \"allow\"\n",
            "\"p\"",
            "on_redis_error applies to scope = \"cluster\" only",
        ),
        (
            "[redis]\naddress = \"localhost\"\n[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5/s\"\nscope = \"cluster\"\non_redis_error = \"panic\"\n",
            "\"p\"",
            "on_redis_error must be",
        ),
        (
            "[redis]\naddress = \"localhost\"\n",
            "",
            "redis.address must be \"host:port\"",
        ),
        (
            "[redis]\naddress = \"localhost:6379\"\ntls = true\n",
            "",
            "redis.tls = true needs ca_file",
        ),
        (
            "[redis]\naddress = \"localhost:6379\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\n",
            "",
            "redis.ca_file: cannot read",
        ),
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5 per second\"\n",
            "\"p\"",
            "rate must look like",
        ),
        (
            "[rate_limits.p]\nkey = \"cookie:x\"\nrate = \"5/s\"\n",
            "\"p\"",
            "key must be",
        ),
        ("", "\"missing\"", "unknown rate limit `missing`"),
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nrate = \"5/s\"\ntier_header = \"x-plan\"\n[rate_limits.p.tiers.gold]\nlimit = 10\nwindow = \"1m\"\n",
            "\"p\"",
            "rate_limits.p.tiers.gold: a tier changes a policy's numbers, not its algorithm",
        ),
        (
            "[rate_limits.p]\nkey = \"client_ip\"\nlimit = 5\nwindow = \"1m\"\ntier_header = \"x-plan\"\n[rate_limits.p.tiers.gold]\nlimit = 10\nwindow = \"1h\"\n",
            "\"p\"",
            "with the policy's own `window`",
        ),
    ];
    for (policies, route, expected) in cases {
        let text = config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n{policies}\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nrate_limits = [{route}]\n",
                up.addr
            ),
        );
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in {stderr}"
        );
    }
}

#[test]
fn client_ip_comes_from_forwarded_for_only_through_trusted_proxies() {
    let up = Upstream::named("app");
    let (window, _) = window_with_room(TEST_ROOM);
    let trusted = format!(
        "[rate_limits.per_ip]\nkey = \"client_ip\"\nlimit = 1\nwindow = \"{window}\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n"
    );
    let gw = gateway("epoll", &up, &trusted, "\"per_ip\"");
    let from = |client: &str| {
        request(
            gw.addr,
            format!(
                "GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 198.51.100.1, {client}\r\n\r\n"
            )
            .as_bytes(),
        )
        .status
    };
    assert_eq!(
        [
            from("203.0.113.5"),
            from("203.0.113.5"),
            from("203.0.113.6")
        ],
        [200, 429, 200],
        "one quota per forwarded client"
    );

    // Without trusted proxies the header is ignored: every request is 127.0.0.1's.
    let untrusted =
        format!("[rate_limits.per_ip]\nkey = \"client_ip\"\nlimit = 1\nwindow = \"{window}\"\n");
    let gw = gateway("epoll", &up, &untrusted, "\"per_ip\"");
    let from = |client: &str| {
        request(
            gw.addr,
            format!("GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: {client}\r\n\r\n").as_bytes(),
        )
        .status
    };
    assert_eq!(
        [from("203.0.113.5"), from("203.0.113.6")],
        [200, 429],
        "a client cannot pick its own key"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends `requests` pipelined on one connection from a writer thread and
/// returns the statuses in order.
fn pipeline(addr: std::net::SocketAddr, requests: Vec<u8>, count: usize) -> Vec<u16> {
    let mut c = Conn::open(addr);
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&requests).unwrap();
    });
    let statuses = (0..count).map(|_| c.read_response(false).status).collect();
    sender.join().unwrap();
    statuses
}

#[test]
fn a_key_flood_stays_within_the_table_and_a_busy_key_keeps_its_quota() {
    // Worker scope: a million keys. Node scope (the aggregator keeps its
    // own bounded table, and grants go to every worker): 200 000.
    for (scope, flood_keys) in [("worker", 1_000_000), ("node", 200_000)] {
        key_flood(scope, flood_keys);
    }
}

fn key_flood(scope: &str, flood_keys: usize) {
    let (window, _) = window_with_room(TEST_ROOM);
    let policies = format!(
        "[rate_limits.per_key]\nkey = \"header:x-api-key\"\nlimit = 50\nwindow = \"{window}\"\nheaders = false\nmax_keys = 1000\nscope = \"{scope}\"\n"
    );
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{policies}\n[[routes]]\nrespond = {{ status = 200, body = \"ok\" }}\nrate_limits = [\"per_key\"]\n"
        ),
    ));
    let request =
        |key: &str| format!("GET / HTTP/1.1\r\nHost: a\r\nX-Api-Key: {key}\r\n\r\n").into_bytes();
    // Warm up: fill the table once.
    let warm: Vec<u8> = (0..2_000)
        .flat_map(|i| request(&format!("warm-{i}")))
        .collect();
    assert!(pipeline(gw.addr, warm, 2_000).iter().all(|&s| s == 200));
    let before = rss_kib(gw.child.id());

    // One-shot keys, with the busy key every 11th request.
    let total = flood_keys / 10 * 11;
    let mut flood = Vec::with_capacity(total * 60);
    for i in 0..total {
        if i % 11 == 0 {
            flood.extend(request("busy-client"));
        } else {
            flood.extend(request(&format!("flood-{i}")));
        }
    }
    let statuses = pipeline(gw.addr, flood, total);
    let after = rss_kib(gw.child.id());
    let busy: Vec<u16> = statuses.iter().step_by(11).copied().collect();
    let busy_allowed = busy.iter().filter(|&&s| s == 200).count();
    eprintln!(
        "{scope} scope: RSS {before} KiB -> {after} KiB after {total} keys; busy key allowed {busy_allowed} of {}",
        busy.len()
    );
    assert_eq!(
        busy_allowed, 50,
        "the busy key's quota was never reset by eviction"
    );
    assert!(
        statuses
            .iter()
            .enumerate()
            .all(|(i, &s)| i % 11 == 0 || s == 200),
        "every flood key is new and allowed"
    );
    // The table holds at most max_keys (1 000) entries of well under 1 KiB.
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn a_reload_keeps_quotas_of_unchanged_policies() {
    let up = Upstream::named("app");
    let (window, _) = window_with_room(TEST_ROOM);
    let policy = |limit: u32| {
        format!(
            "[rate_limits.per_ip]\nkey = \"client_ip\"\nlimit = {limit}\nwindow = \"{window}\"\n"
        )
    };
    let gw = gateway("epoll", &up, &policy(2), "\"per_ip\"");
    let admin = gw.admin.unwrap();
    let path = gw.log.with_file_name("gateway.toml");
    let reload = || {
        request(
            admin,
            b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        )
        .status
    };
    let status = || get(gw.addr, "/x").status;
    assert_eq!([status(), status(), status()], [200, 200, 429]);
    // Same file: the quota is not handed out again.
    assert_eq!(reload(), 200);
    assert_eq!(
        status(),
        429,
        "an unchanged policy keeps its state across a reload"
    );
    // A changed policy starts fresh.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("limit = 2", "limit = 3");
    std::fs::write(&path, text).unwrap();
    assert_eq!(reload(), 200);
    assert_eq!(status(), 200, "a changed policy starts fresh");
}
