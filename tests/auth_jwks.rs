//! JWT keys from a JWKS URL end to end: a small identity-provider upstream
//! serves the key set (over HTTP or HTTPS); the tests rotate it, flood the
//! gateway with unknown `kid`s, take the endpoint down and start the
//! gateway against a slow or absent one — and count what the identity
//! provider was asked and what the application upstream received.

// Test fixtures, not the data plane: a mutex is the plain tool here.
#![allow(clippy::disallowed_types)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::jwt::now;
use common::{Gateway, Reply, Upstream, config, drivers, request};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

/// A signing key and its JWK.
struct Key {
    kid: String,
    private_pem: String,
    jwk: Jwk,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let decoding = DecodingKey::from_ec_pem(pair.public_key_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_decoding_key(&decoding, Some(Algorithm::ES256)).unwrap();
        jwk.common.key_id = Some(kid.into());
        Key {
            kid: kid.into(),
            private_pem: pair.serialize_pem(),
            jwk,
        }
    }

    /// A token for `sub`, unique (its `jti`), so that no worker has it
    /// cached: every one is verified.
    fn sign(&self, sub: &str) -> String {
        self.sign_as(&self.kid, sub)
    }

    fn sign_as(&self, kid: &str, sub: &str) -> String {
        static JTI: AtomicUsize = AtomicUsize::new(0);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let claims: Value = json!({"sub": sub, "exp": now() + 600, "iat": now() - 5, "jti": JTI.fetch_add(1, Ordering::Relaxed)});
        let key = EncodingKey::from_ec_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// What the identity provider serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serve,
    /// 503 to every fetch.
    Down,
    /// 200 with a body that is not a key set.
    Garbage,
}

/// An identity-provider upstream serving a JWKS at `/jwks`.
struct Idp {
    upstream: Upstream,
    keys: Arc<Mutex<Vec<Jwk>>>,
    mode: Arc<Mutex<Mode>>,
    /// Fetches answered (after any delay).
    answered: Arc<AtomicUsize>,
    /// When the last one was.
    last_answer: Arc<Mutex<Option<Instant>>>,
}

impl Idp {
    fn start(keys: &[&Key], delay: Duration) -> Idp {
        Self::start_with(keys, delay, None)
    }

    fn start_with(keys: &[&Key], delay: Duration, tls: Option<Arc<rustls::ServerConfig>>) -> Idp {
        let set: Arc<Mutex<Vec<Jwk>>> =
            Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect()));
        let mode = Arc::new(Mutex::new(Mode::Serve));
        let answered = Arc::new(AtomicUsize::new(0));
        let last_answer = Arc::new(Mutex::new(None));
        let (s, m, a, l) = (
            set.clone(),
            mode.clone(),
            answered.clone(),
            last_answer.clone(),
        );
        let handler = move |r: &common::Recorded| {
            std::thread::sleep(delay);
            a.fetch_add(1, Ordering::SeqCst);
            *l.lock().unwrap() = Some(Instant::now());
            if r.target != "/jwks" {
                return Reply::Ok(404, vec![], Vec::new());
            }
            match *m.lock().unwrap() {
                Mode::Down => Reply::Ok(503, vec![], b"down".to_vec()),
                Mode::Garbage => Reply::Ok(200, vec![], b"{\"keys\": 7}".to_vec()),
                Mode::Serve => Reply::Ok(
                    200,
                    vec![("content-type".into(), "application/jwk-set+json".into())],
                    serde_json::to_vec(&JwkSet {
                        keys: s.lock().unwrap().clone(),
                    })
                    .unwrap(),
                ),
            }
        };
        let upstream = match tls {
            None => Upstream::start("idp", handler),
            Some(config) => Upstream::start_tls("idp", config, handler),
        };
        Idp {
            upstream,
            keys: set,
            mode,
            answered,
            last_answer,
        }
    }

    /// Sleeps until `pause` after the last fetch was answered.
    fn sleep_past_last_fetch(&self, pause: Duration) {
        let last = self.last_answer.lock().unwrap().expect("a fetch");
        std::thread::sleep((last + pause).saturating_duration_since(Instant::now()));
    }

    fn publish(&self, keys: &[&Key]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.upstream.request_count()
    }
}

/// The sections for an `[auth.users]` JWKS provider guarding every route.
fn sections(idp: &Idp, app: &Upstream, provider_extra: &str, idp_extra: &str) -> String {
    format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n\n[auth.users]\ntype = \"jwt\"\njwks_upstream = \"idp\"\njwks_path = \"/jwks\"\n{provider_extra}\n\n[upstreams.idp]\nendpoints = [\"{}\"]\n{idp_extra}\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"users\"]\n",
        idp.upstream.addr, app.addr
    )
}

fn bearer(addr: std::net::SocketAddr, token: &str) -> u16 {
    request(
        addr,
        format!("GET /data HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .status
}

/// The value of a metric line (`name{labels}`) on `/metrics`.
fn metric(gw: &Gateway, series: &str) -> Option<u64> {
    let text = common::get(gw.admin.unwrap(), "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_rotated_key_set_is_fetched_again_when_a_token_names_a_new_kid() {
    let (k1, k2) = (Key::new("2026-11"), Key::new("2026-12"));
    // Identity providers publish many keys: the set is kilobytes.
    let decoys: Vec<Key> = (0..40).map(|i| Key::new(&format!("old-{i}"))).collect();
    for driver in drivers() {
        let app = Upstream::named("app");
        let idp = Idp::start(&[&k1], Duration::ZERO);
        let gw = Gateway::start(&config(
            driver,
            &sections(
                &idp,
                &app,
                "jwks_min_refetch = \"300ms\"\njwks_refresh = \"1h\"",
                "",
            ),
        ));
        assert_eq!(idp.fetches(), 1, "{driver}: fetched once at start-up");
        assert_eq!(bearer(gw.addr, &k1.sign("alice")), 200, "{driver}");
        assert_eq!(
            bearer(gw.addr, &k2.sign("bob")),
            401,
            "{driver}: not published yet"
        );
        // The identity provider rotates; once min_refetch has passed, the
        // first token with the new kid waits for one refetch and passes.
        let mut published: Vec<&Key> = decoys.iter().collect();
        published.extend([&k1, &k2]);
        idp.publish(&published);
        idp.sleep_past_last_fetch(Duration::from_millis(350));
        let fetches = idp.fetches();
        assert_eq!(bearer(gw.addr, &k2.sign("bob")), 200, "{driver}");
        assert_eq!(idp.fetches(), fetches + 1, "{driver}: exactly one refetch");
        assert_eq!(bearer(gw.addr, &k1.sign("alice")), 200, "{driver}");
        assert_eq!(bearer(gw.addr, &k2.sign("carol")), 200, "{driver}");
        assert_eq!(
            idp.fetches(),
            fetches + 1,
            "{driver}: known kids fetch nothing"
        );
        let seen: Vec<String> = app
            .requests()
            .iter()
            .map(|r| r.header("x-consumer").unwrap_or("").to_string())
            .collect();
        assert_eq!(seen, ["alice", "bob", "alice", "carol"], "{driver}");
        assert_eq!(
            metric(&gw, "ringgate_auth_jwks_keys{provider=\"users\"}"),
            Some(42)
        );
    }
}

#[test]
fn an_unknown_kid_flood_refetches_at_most_once_per_min_refetch() {
    let key = Key::new("real");
    let app = Upstream::named("app");
    let idp = Idp::start(&[&key], Duration::ZERO);
    let before_start = Instant::now();
    let gw = Gateway::start(&format!(
        "workers = 2\nio_driver = \"epoll\"\n\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\n{}",
        sections(
            &idp,
            &app,
            "jwks_min_refetch = \"1s\"\njwks_refresh = \"1h\"",
            ""
        )
    ));
    assert_eq!(idp.fetches(), 1);
    // Right after a fetch, unknown kids are refused without asking.
    for i in 0..20 {
        assert_eq!(
            bearer(gw.addr, &key.sign_as(&format!("early-{i}"), "x")),
            401
        );
    }
    // (Unless this machine took a second over those: then one may have
    // been asked for, rightly.)
    if before_start.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            idp.fetches(),
            1,
            "no refetch within min_refetch of the last"
        );
    }
    idp.sleep_past_last_fetch(Duration::from_millis(1100));
    let fetched_before = idp.fetches();
    let flood_start = Instant::now();
    let refused = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (key, refused, addr) = (&key, &refused, gw.addr);
            s.spawn(move || {
                for i in 0..50 {
                    if bearer(addr, &key.sign_as(&format!("forged-{t}-{i}"), "x")) == 401 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let periods = flood_start.elapsed().as_secs() as usize;
    assert_eq!(
        refused.load(Ordering::Relaxed),
        200,
        "every forged kid refused"
    );
    let refetches = idp.fetches() - fetched_before;
    assert!(
        (1..=1 + periods).contains(&refetches),
        "{refetches} refetches for a flood of {periods}+ s with min_refetch 1s"
    );
    assert_eq!(app.request_count(), 0, "nothing reached the application");
    // The real key still works.
    assert_eq!(bearer(gw.addr, &key.sign("dana")), 200);
}

#[test]
fn with_the_key_endpoint_down_or_broken_the_last_good_keys_stay() {
    let (k1, k2) = (Key::new("one"), Key::new("two"));
    let app = Upstream::named("app");
    let idp = Idp::start(&[&k1], Duration::ZERO);
    let gw = Gateway::start(&config(
        "epoll",
        &sections(
            &idp,
            &app,
            "jwks_min_refetch = \"100ms\"\njwks_refresh = \"300ms\"",
            "",
        ),
    ));
    let errors = "ringgate_auth_jwks_fetches_total{provider=\"users\",outcome=\"error\"}";
    assert_eq!(bearer(gw.addr, &k1.sign("erin")), 200);
    for mode in [Mode::Down, Mode::Garbage] {
        let before = metric(&gw, errors).unwrap();
        idp.set_mode(mode);
        common::wait_until(Duration::from_secs(20), "failed fetches", || {
            metric(&gw, errors).unwrap() >= before + 2
        });
        // Fresh tokens (none cached) still verify with the kept keys.
        for _ in 0..3 {
            assert_eq!(bearer(gw.addr, &k1.sign("erin")), 200);
        }
        assert_eq!(
            metric(&gw, "ringgate_auth_jwks_keys{provider=\"users\"}"),
            Some(1)
        );
    }
    // Back, with the old key retired: the next good fetch replaces the set.
    idp.publish(&[&k2]);
    idp.set_mode(Mode::Serve);
    common::wait_until(Duration::from_secs(20), "the new set", || {
        bearer(gw.addr, &k2.sign("erin")) == 200
    });
    assert_eq!(bearer(gw.addr, &k1.sign("erin")), 401, "retired key");
}

#[test]
fn start_up_waits_for_the_first_key_set_and_starts_without_one_when_told() {
    let key = Key::new("k");
    let app = Upstream::named("app");
    // A slow identity provider: start-up waits for its answer.
    let slow = Idp::start(&[&key], Duration::from_millis(400));
    let gw = Gateway::start(&config(
        "epoll",
        &sections(&slow, &app, "jwks_startup_wait = \"10s\"", ""),
    ));
    assert_eq!(
        slow.answered.load(Ordering::SeqCst),
        1,
        "keys before listening"
    );
    assert!(!gw.log_text().contains("no JWKS keys within"));
    assert_eq!(bearer(gw.addr, &key.sign("fay")), 200);
    drop(gw);

    // An absent one: start-up gives up after its wait and says so;
    // tokens are refused until a fetch succeeds.
    let down = Idp::start(&[&key], Duration::ZERO);
    down.set_mode(Mode::Down);
    let gw = Gateway::start(&config(
        "epoll",
        &sections(
            &down,
            &app,
            "jwks_startup_wait = \"200ms\"\njwks_min_refetch = \"100ms\"",
            "",
        ),
    ));
    assert_eq!(bearer(gw.addr, &key.sign("gus")), 401);
    common::wait_until(Duration::from_secs(10), "the start-up error", || {
        gw.log_text()
            .contains("no JWKS keys within jwks_startup_wait")
    });
    down.set_mode(Mode::Serve);
    // Failed fetches are retried (backing off from 1s).
    common::wait_until(Duration::from_secs(20), "keys after the outage", || {
        bearer(gw.addr, &key.sign("gus")) == 200
    });
}

#[test]
fn the_key_set_can_come_from_an_https_upstream() {
    let pki = common::tls::Pki::new("idp");
    let cert = pki.server(&["idp.test"], common::tls::Alg::EcdsaP256);
    let key = Key::new("tls");
    let app = Upstream::named("app");
    let idp = Idp::start_with(
        &[&key],
        Duration::ZERO,
        Some(common::tls::server_config(&cert, None)),
    );
    let tls = format!(
        "[upstreams.idp.tls]\nca_file = \"{}\"\nserver_name = \"idp.test\"",
        pki.ca_path.display()
    );
    let gw = Gateway::start(&config("epoll", &sections(&idp, &app, "", &tls)));
    assert_eq!(bearer(gw.addr, &key.sign("hal")), 200);
    assert_eq!(idp.upstream.tls_seen()[0].sni.as_deref(), Some("idp.test"));

    // The same provider against a CA that did not issue the certificate:
    // no keys (the fetch fails verification), so tokens are refused.
    let other = common::tls::Pki::new("other");
    let wrong = format!(
        "[upstreams.idp.tls]\nca_file = \"{}\"\nserver_name = \"idp.test\"",
        other.ca_path.display()
    );
    let gw = Gateway::start(&config(
        "epoll",
        &sections(&idp, &app, "jwks_startup_wait = \"0s\"", &wrong),
    ));
    assert_eq!(bearer(gw.addr, &key.sign("hal")), 401);
}

#[test]
fn a_reload_keeps_unchanged_key_sets_and_fetches_changed_ones_from_any_endpoint() {
    let (k1, k2) = (Key::new("a"), Key::new("b"));
    let app = Upstream::named("app");
    let idp = Idp::start(&[&k1], Duration::ZERO);
    // The identity provider's first endpoint is down: fetches go on to
    // the next one.
    let dead = common::closed_port();
    let idp_extra = "";
    let text = |path: &str| {
        config(
            "epoll",
            &sections(&idp, &app, "jwks_refresh = \"1h\"", idp_extra)
                .replace(
                    &format!("endpoints = [\"{}\"]", idp.upstream.addr),
                    &format!("endpoints = [\"{dead}\", \"{}\"]", idp.upstream.addr),
                )
                .replace("jwks_path = \"/jwks\"", &format!("jwks_path = \"{path}\"")),
        )
    };
    let gw = Gateway::start(&text("/jwks"));
    assert_eq!(idp.fetches(), 1);
    assert_eq!(bearer(gw.addr, &k1.sign("ida")), 200);
    let reload = |gw: &Gateway| {
        let r = request(
            gw.admin.unwrap(),
            b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    // The same source: its keys stay, nothing is fetched.
    reload(&gw);
    assert_eq!(bearer(gw.addr, &k1.sign("ida")), 200);
    assert_eq!(idp.fetches(), 1, "an unchanged source is not fetched again");
    // Another path: fetched afresh (the server answers 404 there, so the
    // provider has no keys until the path is right again).
    idp.publish(&[&k2]);
    let config_path = gw.log.with_file_name("gateway.toml");
    std::fs::write(&config_path, text("/elsewhere")).unwrap();
    reload(&gw);
    common::wait_until(Duration::from_secs(10), "the new path fetched", || {
        idp.upstream
            .requests()
            .iter()
            .any(|r| r.target == "/elsewhere")
    });
    assert_eq!(
        bearer(gw.addr, &k1.sign("ida")),
        401,
        "no keys from another origin"
    );
    std::fs::write(&config_path, text("/jwks")).unwrap();
    reload(&gw);
    common::wait_until(Duration::from_secs(10), "the rotated set", || {
        bearer(gw.addr, &k2.sign("ida")) == 200
    });
}
