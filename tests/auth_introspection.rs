//! OAuth2 token introspection (RFC 7662) end to end: a small
//! authorization-server upstream answers for opaque tokens; the tests check
//! what the gateway asked it (client credentials, the form-encoded token),
//! what it cached (active and inactive answers), that concurrent requests
//! with one token make one call, and what clients get when the endpoint is
//! down or slow (503, or the grace for tokens seen valid) — and what the
//! application upstream received.

// Test fixtures, not the data plane: a mutex is the plain tool here.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::jwt::now;
use common::{Gateway, Reply, Upstream, config, drivers, request};
use serde_json::{Value, json};

/// What the authorization server does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answer,
    /// 503 to every call.
    Down,
    /// Closes the connection without answering.
    Hangup,
}

/// An authorization server with an introspection endpoint.
struct AuthServer {
    upstream: Upstream,
    answers: Arc<Mutex<HashMap<String, Value>>>,
    mode: Arc<Mutex<Mode>>,
    /// Calls per token.
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

/// The Authorization header the gateway must send: Basic over
/// `gateway:s3cret/pass` with the secret form-encoded.
const BASIC: &str = "Basic Z2F0ZXdheTpzM2NyZXQlMkZwYXNz";

impl AuthServer {
    fn start(delay: Duration) -> AuthServer {
        let answers: Arc<Mutex<HashMap<String, Value>>> = Arc::default();
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let calls: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (a, m, c) = (answers.clone(), mode.clone(), calls.clone());
        let upstream = Upstream::start("idp", move |r| {
            std::thread::sleep(delay);
            let body = String::from_utf8_lossy(&r.body).to_string();
            let token = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("")
                .replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=");
            *c.lock().unwrap().entry(token.clone()).or_default() += 1;
            match *m.lock().unwrap() {
                Mode::Down => return Reply::Ok(503, vec![], b"maintenance".to_vec()),
                Mode::Hangup => return Reply::Close,
                Mode::Answer => {}
            }
            if r.method != "POST"
                || r.target != "/oauth2/introspect"
                || r.header("authorization") != Some(BASIC)
                || r.header("content-type") != Some("application/x-www-form-urlencoded")
            {
                return Reply::Ok(401, vec![], b"{\"error\":\"invalid_client\"}".to_vec());
            }
            let answer = a
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or_else(|| json!({"active": false}));
            Reply::Ok(
                200,
                vec![("content-type".into(), "application/json".into())],
                answer.to_string().into_bytes(),
            )
        });
        AuthServer {
            upstream,
            answers,
            mode,
            calls,
        }
    }

    fn issue(&self, token: &str, answer: Value) {
        self.answers.lock().unwrap().insert(token.into(), answer);
    }

    fn calls(&self, token: &str) -> usize {
        self.calls.lock().unwrap().get(token).copied().unwrap_or(0)
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

fn active(sub: &str, scope: &str) -> Value {
    json!({"active": true, "sub": sub, "client_id": "web", "scope": scope, "exp": now() + 600, "email": format!("{sub}@example.test")})
}

/// A gateway with an `[auth.opaque]` introspection provider guarding
/// `/reports` (scope `reports:read`) and everything else.
fn gateway(driver: &str, server: &AuthServer, app: &Upstream, provider_extra: &str) -> Gateway {
    gateway_with_timeout(driver, server, app, provider_extra, "1s")
}

/// The same, with the endpoint's response_timeout.
fn gateway_with_timeout(
    driver: &str,
    server: &AuthServer,
    app: &Upstream,
    provider_extra: &str,
    response_timeout: &str,
) -> Gateway {
    let secret = common::temp_path("client-secret");
    std::fs::write(&secret, "s3cret/pass\n").unwrap();
    Gateway::start(&config(
        driver,
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[auth.opaque]\ntype = \"introspection\"\nintrospection_upstream = \"idp\"\nintrospection_path = \"/oauth2/introspect\"\nclient_id = \"gateway\"\nclient_secret_file = \"{}\"\nclaims_to_headers = {{ email = \"x-user-email\" }}\n{provider_extra}\n\n[upstreams.idp]\nendpoints = [\"{}\"]\nresponse_timeout = \"{response_timeout}\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"reports\"\npath_prefix = \"/reports\"\nupstream = \"app\"\nauth = [\"opaque\"]\nauth_scopes = [\"reports:read\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"opaque\"]\n",
            secret.display(),
            server.upstream.addr,
            app.addr
        ),
    ))
}

fn bearer(addr: std::net::SocketAddr, path: &str, token: &str) -> common::Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nX-Consumer: spoofed\r\nX-User-Email: spoofed\r\n\r\n")
            .as_bytes(),
    )
}

fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    let text = common::get(gw.admin.unwrap(), "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn introspected_tokens_authenticate_and_answers_are_cached() {
    for driver in drivers() {
        let server = AuthServer::start(Duration::ZERO);
        let app = Upstream::named("app");
        let gw = gateway(driver, &server, &app, "");
        server.issue("opaque-alice", active("alice", "reports:read"));
        server.issue("opaque+bob/=", active("bob", "profile"));
        server.issue(
            "machine-token",
            json!({"active": true, "client_id": "batch-job", "exp": now() + 600, "roles": vec!["reader"; 400]}),
        );
        server.issue(
            "expired",
            json!({"active": true, "sub": "old", "exp": now() - 3600}),
        );

        for _ in 0..3 {
            let r = bearer(gw.addr, "/reports/1", "opaque-alice");
            assert_eq!(r.status, 200, "{driver}");
        }
        assert_eq!(
            server.calls("opaque-alice"),
            1,
            "{driver}: cached after one call"
        );
        let seen = app.requests();
        assert_eq!(seen[0].header("x-consumer"), Some("alice"), "{driver}");
        assert_eq!(
            seen[0].header("x-user-email"),
            Some("alice@example.test"),
            "{driver}: a claim as a header, the spoofed copy dropped"
        );

        // Authenticated but without the route's scope: 403.
        let r = bearer(gw.addr, "/reports/1", "opaque+bob/=");
        assert_eq!(r.status, 403, "{driver}");
        assert!(
            r.header("www-authenticate")
                .unwrap()
                .contains("insufficient_scope")
        );
        assert_eq!(
            bearer(gw.addr, "/home", "opaque+bob/=").status,
            200,
            "{driver}"
        );
        assert_eq!(server.calls("opaque+bob/="), 1, "{driver}");

        // A client-credentials token: the client is the consumer.
        assert_eq!(bearer(gw.addr, "/jobs", "machine-token").status, 200);
        assert_eq!(
            app.requests().last().unwrap().header("x-consumer"),
            Some("batch-job")
        );

        // Inactive and expired tokens: 401, and the refusal is cached.
        let before = app.request_count();
        for token in ["unknown-token", "unknown-token", "expired", "expired"] {
            let r = bearer(gw.addr, "/home", token);
            assert_eq!(r.status, 401, "{driver}: {token}");
            assert!(
                r.header("www-authenticate")
                    .unwrap()
                    .contains("invalid_token")
            );
        }
        assert_eq!(server.calls("unknown-token"), 1, "{driver}: negative cache");
        assert_eq!(server.calls("expired"), 1, "{driver}");
        assert_eq!(
            app.request_count(),
            before,
            "{driver}: nothing reached the app"
        );
        let r = request(gw.addr, b"GET /home HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 401);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"ringgate\"")
        );

        let active_calls =
            "ringgate_auth_introspection_calls_total{provider=\"opaque\",result=\"active\"}";
        assert_eq!(metric(&gw, active_calls), Some(3), "{driver}");
        let inactive =
            "ringgate_auth_introspection_calls_total{provider=\"opaque\",result=\"inactive\"}";
        assert_eq!(metric(&gw, inactive), Some(2), "{driver}");
    }
}

#[test]
fn concurrent_requests_with_one_token_make_one_call() {
    for driver in drivers() {
        let server = AuthServer::start(Duration::from_millis(300));
        let app = Upstream::named("app");
        // A response_timeout above the connect_timeout (2s): waiters wait
        // for as long as the call itself may take, both together.
        let gw = gateway_with_timeout(driver, &server, &app, "", "3s");
        server.issue("shared-token", active("carol", "reports:read"));
        let clients = 16;
        let barrier = Barrier::new(clients);
        let ok = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..clients {
                s.spawn(|| {
                    barrier.wait();
                    if bearer(gw.addr, "/reports", "shared-token").status == 200 {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(ok.load(Ordering::SeqCst), clients, "{driver}");
        assert_eq!(
            server.calls("shared-token"),
            1,
            "{driver}: one call for all"
        );
        assert_eq!(app.request_count(), clients, "{driver}");
    }
}

#[test]
fn an_unreachable_endpoint_fails_closed() {
    let server = AuthServer::start(Duration::ZERO);
    let app = Upstream::named("app");
    let gw = gateway("epoll", &server, &app, "");
    server.issue("t1", active("dave", ""));
    server.issue("t2", active("dave", ""));
    for (mode, token) in [(Mode::Down, "t1"), (Mode::Hangup, "t2")] {
        server.set_mode(mode);
        let r = bearer(gw.addr, "/home", token);
        assert_eq!(r.status, 503, "{token}");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(r.header("www-authenticate").is_none());
        assert!(r.text().contains("auth_unavailable"));
    }
    assert_eq!(app.request_count(), 0);
    // Back: the same tokens pass (a failure is not cached).
    server.set_mode(Mode::Answer);
    assert_eq!(bearer(gw.addr, "/home", "t1").status, 200);
    assert_eq!(bearer(gw.addr, "/home", "t2").status, 200);
    let errors = "ringgate_auth_introspection_calls_total{provider=\"opaque\",result=\"error\"}";
    assert_eq!(metric(&gw, errors), Some(2));

    // A slow endpoint: the request waits at most response_timeout (1s).
    let slow = AuthServer::start(Duration::from_secs(3));
    slow.issue("t3", active("erin", ""));
    let gw = gateway("epoll", &slow, &app, "");
    let started = std::time::Instant::now();
    assert_eq!(bearer(gw.addr, "/home", "t3").status, 503);
    assert!(started.elapsed() < Duration::from_millis(2900));
}

#[test]
fn with_a_grace_a_token_seen_valid_outlives_an_outage() {
    let server = AuthServer::start(Duration::ZERO);
    let app = Upstream::named("app");
    let gw = gateway("epoll", &server, &app, "cache_ttl = \"1s\"\ngrace = \"1h\"");
    server.issue("seen", active("fay", ""));
    server.issue("unseen", active("gus", ""));
    assert_eq!(bearer(gw.addr, "/home", "seen").status, 200);
    // Past cache_ttl the token is asked about again...
    common::wait_until(Duration::from_secs(10), "a second call", || {
        bearer(gw.addr, "/home", "seen").status == 200 && server.calls("seen") == 2
    });
    // ...and when the endpoint cannot answer, the grace lets it through,
    // while a token never seen valid gets 503.
    server.set_mode(Mode::Down);
    common::wait_until(Duration::from_secs(10), "a call during the outage", || {
        bearer(gw.addr, "/home", "seen").status == 200 && server.calls("seen") >= 3
    });
    assert_eq!(
        app.requests().last().unwrap().header("x-consumer"),
        Some("fay")
    );
    assert_eq!(bearer(gw.addr, "/home", "unseen").status, 503);
}

#[test]
fn when_the_endpoint_fails_the_waiting_requests_do_not_ask_again() {
    let server = AuthServer::start(Duration::from_millis(300));
    server.set_mode(Mode::Down);
    let app = Upstream::named("app");
    let gw = gateway_with_timeout("epoll", &server, &app, "", "3s");
    let clients = 8;
    let barrier = Barrier::new(clients);
    let unavailable = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                barrier.wait();
                if bearer(gw.addr, "/home", "during-outage").status == 503 {
                    unavailable.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(unavailable.load(Ordering::SeqCst), clients);
    assert_eq!(server.calls("during-outage"), 1, "one failed call for all");
    assert_eq!(app.request_count(), 0);
}
