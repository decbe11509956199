//! JWT authentication end to end: every algorithm with its right and a
//! wrong key, the attacks (alg none, algorithm confusion, forged, expired,
//! not yet valid, wrong issuer or audience, malformed and oversized
//! tokens), scopes, token locations, a JWKS file with rotating kids, the
//! consumer as rate-limit key and tier — each checked by status and by
//! what the upstream received.

mod common;

use common::jwt::{SigningKey, now};
use common::{Gateway, Upstream, config, drivers, request};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn claims(sub: &str) -> Value {
    json!({"iss": "https://issuer.test", "aud": "api", "sub": sub, "exp": now() + 600, "iat": now() - 5, "scope": "orders:read"})
}

fn bearer(addr: std::net::SocketAddr, path: &str, token: &str) -> common::Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
}

fn gateway(
    driver: &str,
    keys: &[&SigningKey],
    extra_provider: &str,
    upstream: &Upstream,
    extra: &str,
) -> Gateway {
    let entries: Vec<&str> = keys.iter().map(|k| k.entry.as_str()).collect();
    Gateway::start(&config(
        driver,
        &format!(
            "[auth.users]\ntype = \"jwt\"\nissuers = [\"https://issuer.test\"]\naudiences = [\"api\", \"other\"]\nkeys = [{}]\n{extra_provider}\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstream = \"app\"\nauth = [\"users\"]\nauth_scopes = [\"orders:read\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"users\"]\n{extra}",
            entries.join(", "),
            upstream.addr
        ),
    ))
}

#[test]
fn every_algorithm_verifies_with_its_key_and_refuses_another() {
    let upstream = Upstream::named("app");
    let keys: Vec<SigningKey> = ALL
        .iter()
        .enumerate()
        .map(|(i, alg)| SigningKey::new(*alg, &format!("k{i}")))
        .collect();
    // The same algorithms again, keys the gateway does not know.
    let strangers: Vec<SigningKey> = ALL
        .iter()
        .enumerate()
        .map(|(i, alg)| SigningKey::new(*alg, &format!("k{i}")))
        .collect();
    let refs: Vec<&SigningKey> = keys.iter().collect();
    for driver in drivers() {
        let gw = gateway(driver, &refs, "", &upstream, "");
        let before = upstream.request_count();
        for (key, stranger) in keys.iter().zip(&strangers) {
            let alg = key.alg;
            let r = bearer(
                gw.addr,
                "/orders/1",
                &key.sign(&claims(&format!("user-{alg:?}"))),
            );
            assert_eq!(r.status, 200, "{driver} {alg:?}: {}", r.text());
            let r = bearer(gw.addr, "/orders/1", &stranger.sign(&claims("mallory")));
            assert_eq!(r.status, 401, "{driver} {alg:?} with another key");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"ringgate\", error=\"invalid_token\"")
            );
        }
        assert_eq!(upstream.request_count() - before, ALL.len(), "{driver}");
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn attacks_and_bad_tokens_get_401_or_403_and_never_reach_the_upstream() {
    let upstream = Upstream::named("app");
    let rsa = SigningKey::new(Algorithm::RS256, "rsa-1");
    let hs = SigningKey::new(Algorithm::HS256, "hs-1");
    let gw = gateway("epoll", &[&rsa, &hs], "", &upstream, "");
    let rsa_pem = std::fs::read_to_string(
        rsa.entry
            .split("pem_file = \"")
            .nth(1)
            .unwrap()
            .trim_end_matches(" }")
            .trim_end_matches('"'),
    )
    .unwrap();
    let good = claims("alice");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let t = now();
    // alg none, hand-made.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
        b64(serde_json::to_string(&good).unwrap().as_bytes())
    );
    // Algorithm confusion: HS256 keyed with the RSA public key, kid of the RSA key.
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(rsa_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let signed = rsa.sign(&good);
    // Control: re-encoding the same payload by hand reproduces the signed
    // token, so the tampered one below differs only in what it claims.
    assert_eq!(b64(b"abc"), "YWJj");
    assert_eq!(b64(b"ab"), "YWI");
    assert_eq!(b64(b"\xfb\xff"), "-_8");
    let same_payload = b64(serde_json::to_string(&good).unwrap().as_bytes());
    assert_eq!(signed.split('.').nth(1), Some(same_payload.as_str()));
    let mut parts: Vec<&str> = signed.split('.').collect();
    let tampered_payload = b64(serde_json::to_string(&with(&|c| c["sub"] = json!("admin")))
        .unwrap()
        .as_bytes());
    parts[1] = &tampered_payload;
    let tampered = parts.join(".");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_token = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","kid":"rsa-1"}"#),
        b64(deep.as_bytes()),
        b64(b"sig")
    );
    let cases: Vec<(&str, String, u16)> = vec![
        ("alg none", none, 401),
        ("algorithm confusion", confused, 401),
        ("tampered payload", tampered, 401),
        (
            "expired",
            rsa.sign(&with(&|c| c["exp"] = json!(t - 3600))),
            401,
        ),
        (
            "not yet valid",
            rsa.sign(&with(&|c| c["nbf"] = json!(t + 3600))),
            401,
        ),
        (
            "wrong issuer",
            rsa.sign(&with(&|c| c["iss"] = json!("https://evil.test"))),
            401,
        ),
        (
            "wrong audience",
            rsa.sign(&with(&|c| c["aud"] = json!("elsewhere"))),
            401,
        ),
        (
            "no exp",
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            401,
        ),
        (
            "no subject",
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            401,
        ),
        (
            "unknown kid",
            rsa.sign_with(
                {
                    let mut h = Header::new(Algorithm::RS256);
                    h.kid = Some("rsa-9".into());
                    h
                },
                &good,
            ),
            401,
        ),
        ("bad base64", "!!!.@@@.###".to_string(), 401),
        ("not a jwt", "hello".to_string(), 401),
        ("deep json", deep_token, 401),
        (
            "missing scope",
            rsa.sign(&with(&|c| c["scope"] = json!("orders:write"))),
            403,
        ),
    ];
    for (what, token, status) in &cases {
        let r = bearer(gw.addr, "/orders/1", token);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
    }
    // A huge token: refused whole (431), the gateway unharmed.
    let huge = "a".repeat(100_000);
    assert!(bearer(gw.addr, "/orders/1", &huge).status >= 400);
    // No credential, or another scheme: 401 without an error code.
    let r = request(
        gw.addr,
        b"GET /orders/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Basic YTpi\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"ringgate\"")
    );
    assert_eq!(
        upstream.request_count(),
        0,
        "nothing refused reached the upstream"
    );
    // And the right tokens still pass, both keys, scheme case-insensitive.
    assert_eq!(bearer(gw.addr, "/orders/1", &rsa.sign(&good)).status, 200);
    let r = request(
        gw.addr,
        format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nAuthorization: bearer   {}\r\n\r\n",
            hs.sign(&good)
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(upstream.request_count(), 2);
}

#[test]
fn tokens_come_from_a_header_a_query_parameter_or_a_cookie() {
    let upstream = Upstream::named("app");
    let key = SigningKey::new(Algorithm::ES256, "es");
    for (location, how) in [
        ("header:X-Token", "header"),
        ("query:access_token", "query"),
        ("cookie:session", "cookie"),
    ] {
        let gw = gateway(
            "epoll",
            &[&key],
            &format!("token = \"{location}\""),
            &upstream,
            "",
        );
        let token = key.sign(&claims("carol"));
        let (path, headers) = match how {
            "header" => ("/x".to_string(), format!("X-Token: {token}\r\n")),
            "query" => (format!("/x?a=1&access_token={token}"), String::new()),
            _ => (
                "/x".to_string(),
                format!("Cookie: theme=dark; session={token}; other=1\r\n"),
            ),
        };
        let r = request(
            gw.addr,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{location}");
        // The bearer header is not looked at when another place is configured.
        assert_eq!(bearer(gw.addr, "/x", &token).status, 401, "{location}");
    }
}

#[test]
fn a_jwks_file_pins_each_kid_to_its_algorithm_and_reload_rotates_keys() {
    let upstream = Upstream::named("app");
    let old = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let new = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let jwk = |key: &rcgen::KeyPair, kid: &str| {
        let decoding =
            jsonwebtoken::DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).unwrap();
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_decoding_key(&decoding, Some(Algorithm::ES256)).unwrap();
        jwk.common.key_id = Some(kid.into());
        jwk
    };
    let jwks_path = common::temp_path("jwks.json");
    let write_set = |keys: Vec<jsonwebtoken::jwk::Jwk>| {
        std::fs::write(
            &jwks_path,
            serde_json::to_string(&jsonwebtoken::jwk::JwkSet { keys }).unwrap(),
        )
        .unwrap();
    };
    write_set(vec![jwk(&old, "2026-01")]);
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[auth.users]\ntype = \"jwt\"\njwks_file = \"{}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = [\"users\"]\n",
            jwks_path.display(),
            upstream.addr
        ),
    ));
    let sign = |key: &rcgen::KeyPair, kid: &str| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &claims("dave"),
            &jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(bearer(gw.addr, "/", &sign(&old, "2026-01")).status, 200);
    assert_eq!(bearer(gw.addr, "/", &sign(&new, "2026-02")).status, 401);
    // The new key under the old kid is a forgery.
    assert_eq!(bearer(gw.addr, "/", &sign(&new, "2026-01")).status, 401);
    write_set(vec![jwk(&old, "2026-01"), jwk(&new, "2026-02")]);
    gw.signal(libc::SIGHUP);
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the new kid is accepted",
        || bearer(gw.addr, "/", &sign(&new, "2026-02")).status == 200,
    );
    assert_eq!(bearer(gw.addr, "/", &sign(&old, "2026-01")).status, 200);
}

#[test]
fn the_token_consumer_is_the_rate_limit_key_and_its_tier_claim_picks_the_tier() {
    let upstream = Upstream::named("app");
    let key = SigningKey::new(Algorithm::EdDSA, "ed");
    let gw = gateway(
        "epoll",
        &[&key],
        "tier_claim = \"plan\"",
        &upstream,
        "rate_limits = [\"per_consumer\"]\n\n[rate_limits.per_consumer]\nkey = \"consumer\"\nlimit = 2\nwindow = \"1h\"\n[rate_limits.per_consumer.tiers.gold]\nlimit = 3\nwindow = \"1h\"\n",
    );
    let free = key.sign(&claims("free-user"));
    let mut gold_claims = claims("gold-user");
    gold_claims["plan"] = json!("gold");
    let gold = key.sign(&gold_claims);
    // Another token of the same consumer shares its budget.
    let mut again = claims("free-user");
    again["jti"] = json!("second");
    let free_again = key.sign(&again);
    let statuses: Vec<u16> = [&free, &free_again, &free, &gold, &gold, &gold, &gold]
        .iter()
        .map(|t| {
            request(
                gw.addr,
                format!("GET /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nX-Tier: gold\r\n\r\n").as_bytes(),
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200, 200, 429]);
}

#[test]
fn the_upstream_gets_the_consumer_and_claims_as_headers_never_a_clients_copies() {
    let upstream = Upstream::named("app");
    let key = SigningKey::new(Algorithm::ES384, "es384");
    let drivers = drivers();
    for (i, forward) in [true, false].into_iter().enumerate() {
        let driver = drivers[i % drivers.len()];
        let gw = gateway(
            driver,
            &[&key],
            &format!(
                "claims_to_headers = {{ email = \"X-User-Email\", groups = \"x-user-groups\" }}\nforward_credential = {forward}"
            ),
            &upstream,
            "\n[[routes]]\nname = \"public\"\npath_prefix = \"/public\"\nupstream = \"app\"\n",
        );
        let mut c = claims("erin");
        c["email"] = json!("erin@example.test");
        c["groups"] = json!(["ops", "dev"]);
        let token = key.sign(&c);
        let before = upstream.request_count();
        let r = request(
            gw.addr,
            format!("GET /orders/7 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nX-Consumer: admin\r\nx-user-email: ceo@example.test\r\nX-User-Groups: root\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{driver}");
        let seen = &upstream.requests()[before];
        assert_eq!(seen.header("x-consumer"), Some("erin"));
        assert_eq!(seen.header("x-user-email"), Some("erin@example.test"));
        assert_eq!(seen.header("x-user-groups"), Some("ops, dev"));
        for name in ["x-consumer", "x-user-email", "x-user-groups"] {
            assert_eq!(
                seen.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .count(),
                1,
                "{driver} {name}"
            );
        }
        assert_eq!(
            seen.has_header("authorization"),
            forward,
            "{driver}: forward_credential = {forward}"
        );
        // A route without auth: nobody's identity, and no client can claim one.
        let r = request(
            gw.addr,
            b"GET /public HTTP/1.1\r\nHost: t\r\nX-Consumer: admin\r\nX-User-Email: x@y\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        let seen = upstream.requests().last().unwrap().clone();
        assert!(!seen.has_header("x-consumer"), "{driver}");
        // Claim headers are the guarded routes' business: elsewhere they pass.
        assert_eq!(seen.header("x-user-email"), Some("x@y"));
    }
}
