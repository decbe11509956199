//! Header transforms with variables end to end: `${client_ip}`,
//! `${request_id}`, `${consumer}`, `${route}`, `${host}`, a JWT claim and
//! a client-certificate field in request and response edits, static
//! values beside them, headers that come to nothing left out, values that
//! cannot inject a header, and bad templates refused at load.

mod common;

use common::jwt::{SigningKey, now};
use common::tls::{Alg, ClientOptions, Pki, client_config, connect, listener_tls};
use common::{Gateway, Upstream, config, drivers, request};
use jsonwebtoken::Algorithm;
use serde_json::json;

const EDITS: &str = "request_headers = { set = { \"x-client\" = \"${client_ip}\", \"x-rid\" = \"${request_id}\", \"x-who\" = \"${consumer}@${route}\", \"x-host\" = \"${host}\", \"x-org\" = \"org=${jwt.org}\", \"x-team\" = \"${jwt.team}\", \"x-cert\" = \"${tls.client_subject}\" }, add = { \"x-static\" = \"plain $${not-a-variable}\" } }\nresponse_headers = { set = { \"x-served-by\" = \"${route}\", \"x-for\" = \"${consumer} ${jwt.org}\", \"x-trace\" = \"${request_id}\" } }\n";

#[test]
fn request_and_response_headers_fill_in_their_variables() {
    let upstream = Upstream::named("app");
    let key = SigningKey::new(Algorithm::HS256, "k1");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[auth.users]\ntype = \"jwt\"\nkeys = [{}]\nauth_optional = false\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"app\"\nauth = [\"users\"]\nauth_optional = true\n{EDITS}",
                key.entry,
                upstream.addr
            )
            .replace("auth_optional = false\n", ""),
        ));
        // A token with the `org` claim (and a `team` claim a header cannot
        // carry as it is: CR LF inside).
        let token = key.sign(&json!({"sub": "alice", "exp": now() + 600, "org": "acme", "team": "red\r\nx-admin: yes"}));
        let r = request(
            gw.addr,
            format!(
                "GET /orders/1 HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {token}\r\nx-request-id: trace-42\r\nx-who: forged\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.header("x-client"), Some("127.0.0.1"), "{driver}");
        assert_eq!(seen.header("x-rid"), Some("trace-42"));
        assert_eq!(seen.header("x-who"), Some("alice@orders"));
        assert_eq!(
            seen.headers.iter().filter(|(n, _)| n == "x-who").count(),
            1,
            "the client's replaced"
        );
        assert_eq!(seen.header("x-host"), Some("api.example.com"));
        assert_eq!(seen.header("x-org"), Some("org=acme"));
        assert!(
            !seen.has_header("x-admin"),
            "{driver}: a claim injected a header"
        );
        assert!(
            !seen.has_header("x-cert"),
            "{driver}: no client certificate, no header"
        );
        assert_eq!(seen.header("x-static"), Some("plain ${not-a-variable}"));
        // The response's edits.
        assert_eq!(r.header("x-served-by"), Some("orders"));
        assert_eq!(r.header("x-for"), Some("alice acme"));
        assert_eq!(r.header("x-trace"), Some("trace-42"));

        // Anonymous (auth optional): the consumer and claims are empty.
        let r = request(gw.addr, b"GET /orders/2 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r.status, 200, "{driver}");
        let seen = upstream.requests().pop().unwrap();
        assert_eq!(seen.header("x-who"), Some("@orders"));
        assert_eq!(seen.header("x-org"), Some("org="));
        assert!(!seen.has_header("x-team"));
        assert!(r.header("x-for").is_none(), "{driver}: {:?}", r.headers);
        let generated = r.header("x-request-id").unwrap();
        assert_eq!(r.header("x-trace"), Some(generated));
        assert_eq!(seen.header("x-rid"), Some(generated));
    }
}

#[test]
fn a_client_certificate_field_is_a_variable() {
    let pki = Pki::new("transforms");
    let cert = pki.server(&["m.test"], Alg::EcdsaP256);
    let alice = pki.client("alice");
    let upstream = Upstream::named("app");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{}\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"m\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
                 request_headers = {{ set = {{ \"x-caller\" = \"${{tls.client_subject}} / ${{tls.client_san}}\", \"x-caller-sha\" = \"${{tls.client_sha256}}\" }} }}\n",
                listener_tls(
                    &[&cert],
                    &format!(
                        "client_auth = \"required\"\nclient_ca = \"{}\"",
                        pki.ca_path.display()
                    )
                ),
                upstream.addr
            ),
        ));
        let client = client_config(
            &[&pki.ca_der],
            &ClientOptions {
                identity: Some((alice.cert_pem.clone(), alice.key_pem.clone())),
                ..Default::default()
            },
        );
        let mut conn = connect(gw.addr, "m.test", &client).unwrap();
        conn.send(b"GET / HTTP/1.1\r\nHost: m.test\r\n\r\n");
        assert_eq!(conn.read_response(false).status, 200, "{driver}");
        let seen = upstream.requests().pop().unwrap();
        let caller = seen.header("x-caller").unwrap();
        assert!(
            caller.contains("CN=alice") && caller.ends_with(" / DNS:alice.clients.test"),
            "{driver}: {caller}"
        );
        assert_eq!(
            seen.header("x-caller-sha"),
            seen.header("x-client-cert-sha256")
        );
    }
}

#[test]
fn bad_templates_are_refused_at_load() {
    for (edits, wants) in [
        (
            "request_headers = { set = { \"x-a\" = \"${nope}\" } }",
            "unknown variable `${nope}`",
        ),
        (
            "request_headers = { set = { \"x-a\" = \"${client_ip\" } }",
            "without a closing",
        ),
        (
            "response_headers = { set = { \"x-a\" = \"${host}\" } }",
            "${host} is for request_headers",
        ),
    ] {
        let text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[[routes]]\n{edits}\n[routes.respond]\nstatus = 200\n"
        );
        let err = common::config_error(&text);
        assert!(err.contains(wants), "{edits}: {err}");
    }
}
