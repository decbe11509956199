//! CORS end to end: preflights answered at the gateway (allowed, refused
//! for an origin, a method or a header; before auth; Private Network
//! Access), forwarded when the policy says so, and the policy's headers on
//! every kind of answer: proxied (the upstream's own replaced), direct,
//! cached (each origin its own echo from one stored answer), and the
//! gateway's errors (401, 429, 404 with and without a route, 502).

mod common;

use std::net::SocketAddr;

use common::{Gateway, Reply, Response, Upstream, config, drivers, request, temp_path};

const APP: &str = "https://app.example.com";

fn send(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Response {
    request(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes(),
    )
}

fn preflight(addr: SocketAddr, path: &str, origin: &str, method: &str, extra: &str) -> Response {
    send(
        addr,
        "OPTIONS",
        path,
        &format!("Origin: {origin}\r\nAccess-Control-Request-Method: {method}\r\n{extra}"),
    )
}

fn with_origin(addr: SocketAddr, path: &str, origin: &str) -> Response {
    send(addr, "GET", path, &format!("Origin: {origin}\r\n"))
}

/// The policy's headers for an allowed origin on an actual answer.
fn assert_allowed(r: &Response, origin: &str, what: &str) {
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some(origin),
        "{what}"
    );
    assert_eq!(
        r.header("access-control-allow-credentials"),
        Some("true"),
        "{what}"
    );
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id, x-total"),
        "{what}"
    );
    assert!(
        r.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("vary") && v == "Origin"),
        "{what}: {:?}",
        r.headers
    );
}

fn gateway(driver: &str, upstream: &Upstream, keys: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[server]\ncors = \"web\"\n\n\
             [cors.web]\norigins = [\"{APP}\", \"https://*.example.org\"]\nmethods = [\"GET\", \"POST\"]\n\
             headers = [\"Authorization\", \"Content-Type\"]\nexpose_headers = [\"x-request-id\", \"x-total\"]\n\
             credentials = true\nmax_age = \"10m\"\nprivate_network = true\n\n\
             [cors.public]\norigins = [\"*\"]\n\n\
             [cors.passthrough]\norigins = [\"{APP}\"]\nforward_preflight = true\n\n\
             [auth.keys]\ntype = \"api_key\"\nkeys_file = \"{keys}\"\n\n\
             [rate_limits.one]\nkey = \"route\"\nrate = \"1/h\"\nburst = 1\n\n\
             [cache]\nmemory = \"8MiB\"\nmax_object = \"256KiB\"\n\n\
             [upstreams.app]\nendpoints = [\"{}\"]\n\n\
             [upstreams.gone]\nendpoints = [\"{}\"]\n\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\ncors = \"web\"\nauth = [\"keys\"]\n\n\
             [[routes]]\nname = \"limited\"\npath_prefix = \"/limited\"\nupstream = \"app\"\ncors = \"web\"\nrate_limits = [\"one\"]\n\n\
             [[routes]]\nname = \"cached\"\npath_prefix = \"/cached\"\nupstream = \"app\"\ncors = \"web\"\ncache = {{ }}\n\n\
             [[routes]]\nname = \"direct\"\npath = \"/direct\"\ncors = \"web\"\n[routes.respond]\nstatus = 200\nbody = \"{{}}\"\n\n\
             [[routes]]\nname = \"broken\"\npath_prefix = \"/broken\"\nupstream = \"gone\"\ncors = \"web\"\n\n\
             [[routes]]\nname = \"public\"\npath_prefix = \"/public\"\nupstream = \"app\"\ncors = \"public\"\n\n\
             [[routes]]\nname = \"passthrough\"\npath_prefix = \"/passthrough\"\nupstream = \"app\"\ncors = \"passthrough\"\nauth = [\"keys\"]\nauth_skip_preflight = true\n\n\
             [[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstream = \"app\"\ncors = \"web\"\n",
            upstream.addr,
            common::closed_port()
        ),
    ))
}

fn app() -> Upstream {
    Upstream::start("app", |req| {
        let status = if req.target.starts_with("/open/missing") {
            404
        } else {
            200
        };
        Reply::Ok(
            status,
            vec![
                // The upstream's own CORS headers: the route's policy
                // replaces them.
                ("Access-Control-Allow-Origin".into(), "*".into()),
                ("Access-Control-Allow-Methods".into(), "PUT".into()),
                ("Cache-Control".into(), "max-age=60".into()),
                ("x-total".into(), "3".into()),
            ],
            b"{\"ok\":true}".to_vec(),
        )
    })
}

fn keys_file() -> String {
    let path = temp_path("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nsha256 = \"{}\"\nconsumer = \"acme\"\n",
            ringgate::auth::api_key::hash_hex(b"k-acme")
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn preflights_are_answered_at_the_edge_before_auth() {
    let upstream = app();
    let keys = keys_file();
    for driver in drivers() {
        let gw = gateway(driver, &upstream, &keys);
        let before = upstream.request_count();
        // Allowed: 204 with what the policy allows, though the route needs
        // a key the preflight does not carry.
        let r = preflight(
            gw.addr,
            "/api/orders",
            APP,
            "POST",
            "Access-Control-Request-Headers: content-type, Authorization\r\nAccess-Control-Request-Private-Network: true\r\n",
        );
        assert_eq!(r.status, 204, "{driver}: {}", r.text());
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type")
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert_eq!(
            r.header("access-control-allow-private-network"),
            Some("true")
        );
        assert_eq!(
            r.header("vary"),
            Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        );
        assert!(r.header("content-length").is_none() && r.body.is_empty());
        assert!(r.header("x-request-id").is_some());
        // A subdomain of the pattern.
        let r = preflight(
            gw.addr,
            "/api/orders",
            "https://shop.example.org",
            "GET",
            "",
        );
        assert_eq!(r.status, 204, "{driver}");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://shop.example.org")
        );
        assert!(r.header("access-control-allow-private-network").is_none());
        // Refused: an origin, a method, a header the policy does not allow.
        for (origin, method, extra, what) in [
            ("https://evil.example.com", "GET", "", "origin"),
            (
                "https://app.example.com.evil.net",
                "GET",
                "",
                "suffix trick",
            ),
            ("http://app.example.com", "GET", "", "scheme"),
            (APP, "DELETE", "", "method"),
            (
                APP,
                "POST",
                "Access-Control-Request-Headers: content-type, x-secret\r\n",
                "header",
            ),
        ] {
            let r = preflight(gw.addr, "/api/orders", origin, method, extra);
            assert_eq!(r.status, 403, "{driver} {what}");
            assert!(
                r.text().contains("\"error\":\"cors_forbidden\""),
                "{}",
                r.text()
            );
            if what != "method" && what != "header" {
                assert!(
                    r.header("access-control-allow-origin").is_none(),
                    "{driver} {what}"
                );
            }
        }
        assert_eq!(
            upstream.request_count(),
            before,
            "{driver}: preflights answered here never reach the upstream"
        );
        // OPTIONS without Access-Control-Request-Method is not a
        // preflight: it goes through auth like any request.
        let r = send(
            gw.addr,
            "OPTIONS",
            "/api/orders",
            &format!("Origin: {APP}\r\n"),
        );
        assert_eq!(r.status, 401, "{driver}");
        assert_allowed(&r, APP, "a 401");
    }
}

#[test]
fn a_policy_may_forward_preflights_to_the_upstream() {
    let upstream = app();
    let keys = keys_file();
    for driver in drivers() {
        let gw = gateway(driver, &upstream, &keys);
        let before = upstream.request_count();
        let r = preflight(gw.addr, "/passthrough/x", APP, "PUT", "");
        // auth_skip_preflight lets it through anonymous; the upstream
        // answers, and the gateway's headers replace its own.
        assert_eq!(r.status, 200, "{driver}");
        assert_eq!(upstream.request_count(), before + 1);
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.method, "OPTIONS");
        assert_eq!(seen.header("access-control-request-method"), Some("PUT"));
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert!(
            r.header("access-control-allow-methods").is_none(),
            "{driver}: the upstream's replaced"
        );
    }
}

#[test]
fn every_kind_of_answer_carries_the_policy_headers() {
    let upstream = app();
    let keys = keys_file();
    for driver in drivers() {
        let gw = gateway(driver, &upstream, &keys);
        // Proxied: the origin echoed, the upstream's CORS headers dropped,
        // the Origin sent on.
        let r = with_origin(gw.addr, "/open/x", APP);
        assert_eq!(r.status, 200, "{driver}");
        assert_allowed(&r, APP, "proxied");
        assert_eq!(r.header_count("access-control-allow-origin"), 1);
        assert!(r.header("access-control-allow-methods").is_none());
        assert_eq!(
            upstream.requests().pop().unwrap().header("origin"),
            Some(APP)
        );
        // The upstream's 404.
        let r = with_origin(gw.addr, "/open/missing", APP);
        assert_eq!(r.status, 404, "{driver}");
        assert_allowed(&r, APP, "upstream 404");
        // Direct.
        let r = with_origin(gw.addr, "/direct", "https://x.example.org");
        assert_eq!(r.status, 200);
        assert_allowed(&r, "https://x.example.org", "direct");
        // Cached: one stored answer, each origin its own echo.
        let r = with_origin(gw.addr, "/cached/a", APP);
        assert_allowed(&r, APP, "cache miss");
        let stored_before = upstream.request_count();
        let r = with_origin(gw.addr, "/cached/a", "https://b.example.org");
        assert_eq!(upstream.request_count(), stored_before, "{driver}: a hit");
        assert!(
            r.header("age").is_some()
                || r.header("cache-status").is_some_and(|s| s.contains("hit")),
            "{:?}",
            r.headers
        );
        assert_allowed(&r, "https://b.example.org", "cache hit");
        let r = with_origin(gw.addr, "/cached/a", "https://evil.net");
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "{driver}: a hit for a refused origin"
        );
        // Errors: 401, 429, 502, and a 404 no route matched.
        let r = with_origin(gw.addr, "/api/x", APP);
        assert_eq!(r.status, 401);
        assert_allowed(&r, APP, "401");
        assert_eq!(with_origin(gw.addr, "/limited", APP).status, 200);
        let r = with_origin(gw.addr, "/limited", APP);
        assert_eq!(r.status, 429, "{driver}");
        assert_allowed(&r, APP, "429");
        let r = with_origin(gw.addr, "/broken", APP);
        assert_eq!(r.status, 502, "{driver}");
        assert_allowed(&r, APP, "502");
        let r = with_origin(gw.addr, "/nowhere", APP);
        assert_eq!(r.status, 404, "{driver}");
        assert_allowed(&r, APP, "no route 404");
        // An authenticated request passes with the key.
        let r = send(
            gw.addr,
            "GET",
            "/api/x",
            &format!("Origin: {APP}\r\nx-api-key: k-acme\r\n"),
        );
        assert_eq!(r.status, 200, "{driver}");
        assert_allowed(&r, APP, "authenticated");
        // A refused origin: the answer is served, without Allow-Origin
        // (the browser withholds it), and varies by Origin.
        let r = with_origin(gw.addr, "/open/x", "https://evil.net");
        assert_eq!(r.status, 200);
        assert!(r.header("access-control-allow-origin").is_none());
        assert_eq!(r.header("vary"), Some("Origin"));
        // No Origin: not a CORS request; the answer still varies by it.
        let r = common::get(gw.addr, "/open/x");
        assert!(r.header("access-control-allow-origin").is_none());
        assert_eq!(r.header("vary"), Some("Origin"));
        // `*` without credentials: the same answer for every origin.
        let r = with_origin(gw.addr, "/public/x", "https://anyone.net");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert!(r.header("access-control-allow-credentials").is_none());
        assert!(r.header("vary").is_none(), "{:?}", r.headers);
    }
}

#[test]
fn bad_policies_are_refused_at_load_naming_the_problem() {
    for (policy, wants) in [
        ("origins = []", "at least one origin"),
        ("origins = [\"app.example.com\"]", "not an origin"),
        (
            "origins = [\"https://app.example.com/path\"]",
            "not an origin",
        ),
        ("origins = [\"https://*.*.example.com\"]", "origin pattern"),
        ("origins = [\"*\"]\nmethods = [\"GE T\"]", "not a method"),
        (
            "origins = [\"*\"]\nheaders = [\"bad header\"]",
            "not a header name",
        ),
    ] {
        let text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[cors.c]\n{policy}\n\n[[routes]]\ncors = \"c\"\n[routes.respond]\nstatus = 200\n"
        );
        let err = common::config_error(&text);
        assert!(err.contains(wants), "{policy}: {err}");
    }
    let err = ringgate::config::load_str(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\ncors = \"nope\"\n[routes.respond]\nstatus = 200\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown cors `nope`"), "{err}");
}
