//! The routing matrix against the real binary: host, path, method and header
//! conditions, precedence and file order, rewrites, header edits, direct
//! responses and the 404 answer.

mod common;
use common::*;

fn matrix_config(driver: &str, a: &Upstream, b: &Upstream, c: &Upstream) -> String {
    config(
        driver,
        &format!(
            r#"
[upstreams.a]
endpoints = ["{a}"]
[upstreams.b]
endpoints = ["{b}"]
[upstreams.c]
endpoints = ["{c}"]

[[routes]]
name = "exact-host"
host = "api.example.com"
path_prefix = "/v1"
upstream = "a"

[[routes]]
name = "wildcard"
host = "*.example.com"
path_prefix = "/v1"
upstream = "b"

[[routes]]
name = "post-only"
path_prefix = "/items"
methods = ["POST"]
upstream = "a"

[[routes]]
name = "canary"
path_prefix = "/items"
headers = {{ "x-env" = "canary" }}
upstream = "b"

[[routes]]
name = "items"
path_prefix = "/items"
upstream = "c"

[[routes]]
name = "exact"
path = "/items/special"
upstream = "a"

[[routes]]
name = "strip"
path_prefix = "/strip"
strip_prefix = true
upstream = "a"

[[routes]]
name = "replace"
path_prefix = "/old"
replace_prefix = "/new/v2"
upstream = "a"
preserve_host = false
request_headers = {{ set = {{ "x-route" = "replace" }}, add = {{ "x-extra" = "1" }}, remove = ["x-secret"] }}
response_headers = {{ set = {{ "x-served-by" = "ringgate" }}, remove = ["x-internal"] }}

[[routes]]
name = "fixed-host"
path_prefix = "/fixed"
host_rewrite = "internal.svc"
upstream = "a"

[[routes]]
name = "hello"
path = "/hello"
respond = {{ status = 201, body = '{{"hi":true}}', content_type = "application/json" }}
"#,
            a = a.addr,
            b = b.addr,
            c = c.addr
        ),
    )
}

fn send(gw: &Gateway, method: &str, host: &str, path: &str, extra: &str) -> Response {
    let body = if method == "POST" {
        "content-length: 0\r\n"
    } else {
        ""
    };
    request(
        gw.addr,
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{body}{extra}\r\n").as_bytes(),
    )
}

#[test]
fn routing_matrix_host_path_method_header_and_order() {
    for driver in drivers() {
        let (a, b, c) = (
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
        );
        let gw = Gateway::start(&matrix_config(driver, &a, &b, &c));
        let cases = [
            ("GET", "api.example.com", "/v1/users", "", "a"),
            ("GET", "API.EXAMPLE.COM:8080", "/v1/users", "", "a"),
            ("GET", "eu.example.com", "/v1/users", "", "b"),
            ("GET", "deep.eu.example.com", "/v1", "", "b"),
            ("POST", "x", "/items/1", "", "a"),
            ("GET", "x", "/items/1", "x-env: canary\r\n", "b"),
            ("GET", "x", "/items/1", "x-env: prod\r\n", "c"),
            ("GET", "x", "/items", "", "c"),
            ("GET", "x", "/items/special", "", "a"),
            ("POST", "x", "/items/special", "", "a"),
        ];
        for (method, host, path, extra, want) in cases {
            let r = send(&gw, method, host, path, extra);
            assert_eq!(r.status, 200, "{driver} {method} {host}{path}");
            assert_eq!(r.text(), want, "{driver} {method} {host}{path} {extra}");
        }
        // Segment-aware prefixes and unknown paths.
        let r = send(&gw, "GET", "x", "/itemsx", "");
        assert_eq!(r.status, 404);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.text().contains("\"error\":\"no_route\""), "{}", r.text());
        let r = send(&gw, "GET", "example.com", "/v1", "");
        assert_eq!(
            r.status, 404,
            "*.example.com does not match the bare domain"
        );
        assert_eq!(
            a.request_count() + b.request_count() + c.request_count(),
            cases.len()
        );
    }
}

#[test]
fn rewrites_and_header_edits_reach_the_upstream() {
    for driver in drivers() {
        let a = Upstream::start("a", |_| {
            Reply::Ok(
                200,
                vec![
                    ("x-internal".into(), "1".into()),
                    ("x-keep".into(), "2".into()),
                ],
                b"ok".to_vec(),
            )
        });
        let (b, c) = (Upstream::named("b"), Upstream::named("c"));
        let gw = Gateway::start(&matrix_config(driver, &a, &b, &c));

        send(&gw, "GET", "h", "/strip/x/y?q=1", "");
        send(&gw, "GET", "h", "/strip", "");
        let r = send(
            &gw,
            "GET",
            "client.host",
            "/old/z?k=v",
            "x-secret: s\r\nx-route: client\r\n",
        );
        assert_eq!(r.header("x-served-by"), Some("ringgate"));
        assert_eq!(r.header("x-internal"), None);
        assert_eq!(r.header("x-keep"), Some("2"));
        send(&gw, "GET", "client.host", "/fixed/p", "");

        let got = a.requests();
        assert_eq!(got[0].target, "/x/y?q=1");
        assert_eq!(got[1].target, "/");
        assert_eq!(
            got[0].header("host"),
            Some("h"),
            "preserve_host is the default"
        );
        let replaced = &got[2];
        assert_eq!(replaced.target, "/new/v2/z?k=v");
        assert_eq!(
            replaced.header("host"),
            Some(a.addr.to_string().as_str()),
            "preserve_host = false sends the endpoint"
        );
        assert_eq!(
            replaced.header("x-route"),
            Some("replace"),
            "set replaces the client's value"
        );
        assert_eq!(
            replaced
                .headers
                .iter()
                .filter(|(n, _)| n == "x-route")
                .count(),
            1
        );
        assert_eq!(replaced.header("x-extra"), Some("1"));
        assert!(!replaced.has_header("x-secret"));
        assert_eq!(replaced.header("x-forwarded-host"), Some("client.host"));
        assert_eq!(replaced.header("x-forwarded-proto"), Some("http"));
        assert_eq!(got[3].header("host"), Some("internal.svc"));
    }
}

#[test]
fn direct_response_route_answers_without_an_upstream() {
    for driver in drivers() {
        let (a, b, c) = (
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
        );
        let gw = Gateway::start(&matrix_config(driver, &a, &b, &c));
        let r = send(&gw, "GET", "x", "/hello", "");
        assert_eq!(r.status, 201);
        assert_eq!(r.text(), r#"{"hi":true}"#);
        assert_eq!(r.header("content-length"), Some("11"));
        let r = send(&gw, "HEAD", "x", "/hello", "");
        assert_eq!(r.status, 201);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some("11"));
    }
}

/// 204 and 304 never carry a body or its length: a configured body is
/// refused at load, and the answer has neither.
#[test]
fn direct_204_and_304_carry_no_body() {
    for status in [204, 304] {
        let gw = Gateway::start(&config(
            "epoll",
            &format!("[[routes]]\nrespond = {{ status = {status} }}\n"),
        ));
        let mut c = gw.conn();
        for _ in 0..2 {
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.status, status);
            assert_eq!(r.header("content-length"), None, "{status}");
            assert_eq!(r.header("transfer-encoding"), None, "{status}");
        }
        let path = temp_path("bodied.toml");
        std::fs::write(
            &path,
            config(
                "epoll",
                &format!("[[routes]]\nrespond = {{ status = {status}, body = \"x\" }}\n"),
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{status} with a body is refused");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("never carries a body"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn default_embedded_config_serves_a_welcome() {
    // The embedded default binds 127.0.0.1:8080, which may be taken on a
    // shared machine; `check` proves it compiles, and the same route is
    // exercised through a copy on an ephemeral port.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["check", "-c", "config/default.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string("config/default.toml")
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let gw = Gateway::start(&text);
    let r = get(gw.addr, "/");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ringgate"));
}
