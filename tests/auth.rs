//! Authentication end to end: API keys from a file (TOML and line
//! formats, header and query parameter), 401/403 answers that never reach
//! the upstream, `any`/`all`/optional guards, the consumer as a rate-limit
//! key and tier (a tier header no longer decides), the access log's
//! consumer, and the key file re-read on reload.

mod common;

use std::time::Duration;

use common::{Gateway, Upstream, config, drivers, get, request, temp_path, wait_until};
use ringgate::auth::api_key::hash_hex;

fn key_file(name: &str, text: &str) -> String {
    let path = temp_path(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn toml_keys(entries: &[(&str, &str, Option<&str>, Option<&str>)]) -> String {
    let mut text = String::new();
    for (key, consumer, tier, routes) in entries {
        text.push_str(&format!(
            "[[keys]]\nsha256 = \"{}\"\nconsumer = \"{consumer}\"\n",
            hash_hex(key.as_bytes())
        ));
        if let Some(t) = tier {
            text.push_str(&format!("tier = \"{t}\"\n"));
        }
        if let Some(r) = routes {
            text.push_str(&format!("routes = [{r}]\n"));
        }
    }
    text
}

fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> common::Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes(),
    )
}

#[test]
fn api_keys_admit_their_consumers_and_everyone_else_gets_401_or_403() {
    let upstream = Upstream::named("app");
    let keys = key_file(
        "keys.toml",
        &toml_keys(&[
            ("k-acme", "acme", None, None),
            ("k-orders-only", "beta", None, Some("\"orders\"")),
        ]),
    );
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[auth.partners]\ntype = \"api_key\"\nkeys_file = \"{keys}\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"app\"\nauth = [\"partners\"]\n\n[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"app\"\nauth = [\"partners\"]\nauth_skip_preflight = true\n\n[[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
                upstream.addr
            ),
        ));
        let before = upstream.request_count();
        // No key: 401 with a bare challenge.
        let r = get(gw.addr, "/orders/1");
        assert_eq!(r.status, 401, "{driver}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ringgate\"")
        );
        assert!(
            r.text().contains("\"error\":\"unauthorized\""),
            "{}",
            r.text()
        );
        // A wrong key, and a key that is a prefix of a right one: 401 invalid_token.
        for bad in ["k-nope", "k-acm", "K-ACME", ""] {
            let r = get_with(gw.addr, "/orders/1", &format!("x-api-key: {bad}\r\n"));
            assert_eq!(r.status, 401, "{driver} {bad:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"ringgate\", error=\"invalid_token\""),
                "{driver} {bad:?}"
            );
        }
        // A known consumer on a route it is not given: 403.
        let r = get_with(gw.addr, "/admin", "x-api-key: k-orders-only\r\n");
        assert_eq!(r.status, 403, "{driver}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
        // Nothing refused reached the upstream, and the connection stays
        // usable (keep-alive after a 401).
        assert_eq!(upstream.request_count(), before, "{driver}");
        let mut conn = gw.conn();
        conn.send(b"GET /orders/1 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(conn.read_response(false).status, 401);
        conn.send(b"GET /orders/2 HTTP/1.1\r\nHost: t\r\nX-Api-Key:  k-acme \r\n\r\n");
        assert_eq!(conn.read_response(false).status, 200, "{driver}");
        // A CORS preflight is refused like any request unless the route
        // lets preflights through (the "admin" route does, below).
        let preflight = b"OPTIONS /orders/1 HTTP/1.1\r\nHost: t\r\nOrigin: https://app.test\r\nAccess-Control-Request-Method: POST\r\n\r\n";
        assert_eq!(request(gw.addr, preflight).status, 401, "{driver}");
        let r = request(gw.addr, b"OPTIONS /admin HTTP/1.1\r\nHost: t\r\nOrigin: https://app.test\r\nAccess-Control-Request-Method: POST\r\n\r\n");
        assert_eq!(r.status, 200, "{driver}: preflight bypass");
        // A plain OPTIONS is not a preflight.
        assert_eq!(
            request(gw.addr, b"OPTIONS /admin HTTP/1.1\r\nHost: t\r\n\r\n").status,
            401
        );
        // Admitted keys go through; the open route needs none.
        assert_eq!(
            get_with(gw.addr, "/orders/3", "x-api-key: k-orders-only\r\n").status,
            200
        );
        assert_eq!(
            get_with(gw.addr, "/admin", "x-api-key: k-acme\r\n").status,
            200
        );
        assert_eq!(get(gw.addr, "/anything").status, 200);
        let seen: Vec<String> = upstream.requests()[before..]
            .iter()
            .map(|r| r.target.clone())
            .collect();
        assert_eq!(
            seen,
            ["/orders/2", "/admin", "/orders/3", "/admin", "/anything"],
            "{driver}"
        );
        assert_eq!(upstream.requests()[before + 1].method, "OPTIONS");
    }
}

#[test]
fn a_refused_request_body_is_never_read_or_forwarded() {
    let upstream = Upstream::named("app");
    let keys = key_file("keys.txt", &format!("{} acme\n", hash_hex(b"secret")));
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[auth.k]\ntype = \"api_key\"\nkeys_file = \"{keys}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"k\"]\n",
            upstream.addr
        ),
    ));
    let mut conn = gw.conn();
    // A body is announced and only partly sent: the answer comes anyway,
    // and the connection closes (the rest of the stream is not a request).
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\npartial");
    let r = conn.read_response(false);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.is_closed());
    assert_eq!(upstream.request_count(), 0);
}

#[test]
fn keys_come_from_a_query_parameter_and_a_custom_header_and_any_or_all_decide() {
    let upstream = Upstream::named("app");
    let header_keys = key_file("h.txt", &format!("{} by-header\n", hash_hex(b"hk")));
    let query_keys = key_file("q.txt", &format!("{} by-query\n", hash_hex(b"qk")));
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntop_consumers = 1\n\n[auth.h]\ntype = \"api_key\"\nkeys_file = \"{header_keys}\"\nheader = \"X-Partner-Key\"\n\n[auth.q]\ntype = \"api_key\"\nkeys_file = \"{query_keys}\"\nquery = \"api_key\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"any\"\npath_prefix = \"/any\"\nupstream = \"app\"\nauth = [\"h\", \"q\"]\n\n[[routes]]\nname = \"all\"\npath_prefix = \"/all\"\nupstream = \"app\"\nauth = [\"h\", \"q\"]\nauth_mode = \"all\"\n\n[[routes]]\nname = \"maybe\"\npath_prefix = \"/maybe\"\nupstream = \"app\"\nauth = [\"h\"]\nauth_optional = true\n",
            upstream.addr
        ),
    ));
    let a = gw.addr;
    // any: either provider is enough.
    assert_eq!(get_with(a, "/any", "x-partner-key: hk\r\n").status, 200);
    assert_eq!(get(a, "/any?x=1&api_key=qk").status, 200);
    assert_eq!(get(a, "/any?my_api_key=qk").status, 401);
    // The default header is not looked at when another is configured.
    assert_eq!(get_with(a, "/any", "x-api-key: hk\r\n").status, 401);
    // any with one wrong and one missing: the wrong one is reported.
    let r = get_with(a, "/any", "x-partner-key: nope\r\n");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    // all: both, or 401.
    assert_eq!(get_with(a, "/all", "x-partner-key: hk\r\n").status, 401);
    assert_eq!(get(a, "/all?api_key=qk").status, 401);
    assert_eq!(
        get_with(a, "/all?api_key=qk", "x-partner-key: hk\r\n").status,
        200
    );
    // optional: anonymous passes, a wrong key does not.
    assert_eq!(get(a, "/maybe").status, 200);
    assert_eq!(get_with(a, "/maybe", "x-partner-key: hk\r\n").status, 200);
    assert_eq!(get_with(a, "/maybe", "x-partner-key: bad\r\n").status, 401);
    let targets: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        [
            "/any",
            "/any?x=1&api_key=qk",
            "/all?api_key=qk",
            "/maybe",
            "/maybe"
        ]
    );
    // Each provider asked counts its outcome; `any` stops at the first
    // acceptance, `all` at the first refusal.
    let expected = [
        ("h", "authenticated", 4),
        ("h", "missing", 5),
        ("h", "invalid", 2),
        ("h", "forbidden", 0),
        ("q", "authenticated", 2),
        ("q", "missing", 4),
        ("q", "invalid", 0),
    ];
    let mut last = String::new();
    let settled = (0..2000).any(|_| {
        last = get(gw.admin.unwrap(), "/metrics").text();
        // The heaviest consumer has its series; with top_consumers = 1,
        // the other has none.
        let all = expected.iter().all(|(p, o, n)| {
            last.contains(&format!(
                "ringgate_auth_decisions_total{{provider=\"{p}\",outcome=\"{o}\"}} {n}\n"
            ))
        }) && last
            .contains("ringgate_consumer_requests_total{consumer=\"by-header\"} 3\n")
            && !last.contains("consumer=\"by-query\"");
        if !all {
            std::thread::sleep(Duration::from_millis(10));
        }
        all
    });
    let got: Vec<&str> = last
        .lines()
        .filter(|l| l.starts_with("ringgate_auth_decisions_total") || l.contains("consumer"))
        .collect();
    assert!(settled, "auth metrics never matched {expected:?}: {got:#?}");
}

#[test]
fn the_consumer_is_the_rate_limit_key_and_its_tier_cannot_be_chosen_by_header() {
    let upstream = Upstream::named("app");
    let keys = key_file(
        "keys.toml",
        &toml_keys(&[
            ("k-free", "free-co", None, None),
            ("k-free-2", "free-co", None, None),
            ("k-gold", "gold-co", Some("gold"), None),
        ]),
    );
    let log_path = temp_path("access.log");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[access_log]\npath = \"{}\"\n\n[auth.k]\ntype = \"api_key\"\nkeys_file = \"{keys}\"\n\n[rate_limits.per_consumer]\nkey = \"consumer\"\nlimit = 2\nwindow = \"1h\"\n[rate_limits.per_consumer.tiers.gold]\nlimit = 4\nwindow = \"1h\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"k\"]\nrate_limits = [\"per_consumer\"]\n",
            log_path.display(),
            upstream.addr
        ),
    ));
    let status = |key: &str, extra: &str| {
        get_with(gw.addr, "/x", &format!("x-api-key: {key}\r\n{extra}")).status
    };
    // free-co has 2 per hour, whichever of its keys it uses, and claiming
    // a tier by header changes nothing.
    assert_eq!(status("k-free", ""), 200);
    assert_eq!(status("k-free-2", "x-tier: gold\r\n"), 200);
    assert_eq!(status("k-free", "x-tier: gold\r\n"), 429);
    assert_eq!(status("k-free-2", ""), 429);
    // gold-co's tier comes from the key file: 4.
    for i in 0..4 {
        assert_eq!(status("k-gold", ""), 200, "gold request {i}");
    }
    assert_eq!(status("k-gold", ""), 429);
    // The access log names the consumer.
    wait_until(Duration::from_secs(10), "access log lines", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.lines().count() >= 9)
    });
    let text = std::fs::read_to_string(&log_path).unwrap();
    let consumers: Vec<&str> = text
        .lines()
        .map(|l| {
            l.split("\"consumer\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("-")
        })
        .collect();
    assert_eq!(
        consumers,
        [
            "free-co", "free-co", "free-co", "free-co", "gold-co", "gold-co", "gold-co", "gold-co",
            "gold-co"
        ],
        "{text}"
    );
}

#[test]
fn a_reload_re_reads_the_key_file_and_a_bad_file_is_refused_at_start() {
    let upstream = Upstream::named("app");
    let keys_path = temp_path("reload-keys.txt");
    std::fs::write(&keys_path, format!("{} first\n", hash_hex(b"old-key"))).unwrap();
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[auth.k]\ntype = \"api_key\"\nkeys_file = \"{}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"k\"]\n",
            keys_path.display(),
            upstream.addr
        ),
    ));
    assert_eq!(get_with(gw.addr, "/", "x-api-key: old-key\r\n").status, 200);
    std::fs::write(&keys_path, format!("{} second\n", hash_hex(b"new-key"))).unwrap();
    gw.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(20),
        "the new key file is in force",
        || get_with(gw.addr, "/", "x-api-key: new-key\r\n").status == 200,
    );
    assert_eq!(get_with(gw.addr, "/", "x-api-key: old-key\r\n").status, 401);
    // A broken key file on reload keeps the running keys.
    std::fs::write(&keys_path, "not a key file\n").unwrap();
    gw.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(20),
        "the refused reload is logged",
        || gw.log_text().contains("reload-keys.txt"),
    );
    assert_eq!(get_with(gw.addr, "/", "x-api-key: new-key\r\n").status, 200);

    // At start, a bad file stops the gateway with the file and line named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "-c"])
        .arg(gw.log.with_file_name("gateway.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reload-keys.txt:1: expected"), "{text}");
}
