//! [cold/warm] OAuth2 token introspection (RFC 7662) for opaque tokens,
//! the parts without I/O: the compiled provider, the request a worker
//! sends to the introspection endpoint, and what the answer means. The
//! worker side (`worker::introspect`) sends it through the worker's own
//! upstream pool, caches answers and coalesces concurrent lookups.
//!
//! An answer counts only if it says `"active": true` and its claims pass
//! the same checks as a JWT's (`exp`/`nbf`/`iat` with the leeway, `iss`,
//! `aud`, required claims); its consumer is `sub`, else `client_id`
//! (a client-credentials token has no subject), unless configured.

use std::time::Duration;

use serde_json::{Map, Value};

use super::jwt::{ClaimRules, Rejection, TokenFacts, TokenLocation, check_claims};

/// How introspection calls ended, as metric labels: the endpoint said the
/// token is active, or not (or its claims fail), or it could not be asked
/// (unreachable, timed out, an error status, not an introspection answer).
pub const CALL_RESULTS: [&str; 3] = ["active", "inactive", "error"];

/// A `type = "introspection"` section, compiled.
pub struct Introspection {
    pub location: TokenLocation,
    /// Index of the introspection endpoint's upstream in the snapshot.
    pub upstream: usize,
    pub path: Box<str>,
    /// The `Authorization` value for the client credentials (HTTP Basic
    /// over the form-encoded id and secret, RFC 6749 §2.3.1). Secret: never
    /// printed.
    authorization: Box<[u8]>,
    pub rules: ClaimRules,
    /// Positive answers are kept this long (at most to the token's `exp`).
    pub cache_ttl: Duration,
    /// Inactive answers are kept this long.
    pub negative_ttl: Duration,
    /// When the endpoint cannot be reached, a token valid within this long
    /// past its cache time is still accepted (0: fail closed, 503).
    pub grace: Duration,
    pub cache_size: usize,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("upstream", &self.upstream)
            .field("path", &self.path)
            .field("cache_ttl", &self.cache_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// What an introspection answer says about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Active(TokenFacts),
    /// Inactive, expired, for another audience, or without a consumer.
    Refused(Rejection),
    /// Not an introspection answer at all (the endpoint is broken).
    Malformed,
}

impl Introspection {
    /// A provider; `client_id` and `client_secret` authenticate the
    /// gateway to the endpoint.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        location: TokenLocation,
        upstream: usize,
        path: &str,
        client_id: &str,
        client_secret: &[u8],
        rules: ClaimRules,
        cache_ttl: Duration,
        negative_ttl: Duration,
        grace: Duration,
        cache_size: usize,
    ) -> Introspection {
        let mut credentials = Vec::new();
        form_encode(&mut credentials, client_id.as_bytes());
        credentials.push(b':');
        form_encode(&mut credentials, client_secret);
        let mut authorization = b"Basic ".to_vec();
        base64_encode(&mut authorization, &credentials);
        Introspection {
            location,
            upstream,
            path: path.into(),
            authorization: authorization.into(),
            rules,
            cache_ttl,
            negative_ttl,
            grace,
            cache_size,
        }
    }

    /// Appends the introspection request for `token` to `out`, for the
    /// endpoint whose Host is `host`.
    pub fn write_request(&self, out: &mut Vec<u8>, host: &[u8], token: &[u8]) {
        let mut body = Vec::with_capacity(token.len() + 40);
        body.extend_from_slice(b"token=");
        form_encode(&mut body, token);
        body.extend_from_slice(b"&token_type_hint=access_token");
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\nauthorization: ");
        out.extend_from_slice(&self.authorization);
        out.extend_from_slice(
            b"\r\ncontent-type: application/x-www-form-urlencoded\r\naccept: application/json\r\nuser-agent: ringgate\r\ncontent-length: ",
        );
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
    }

    /// What the endpoint's answer (a 200's body) says, at `now`.
    pub fn verdict(&self, body: &[u8], now: u64) -> Verdict {
        let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(body) else {
            return Verdict::Malformed;
        };
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Verdict::Refused(Rejection::Expired),
            _ => return Verdict::Malformed,
        }
        if !issuer_and_audience_match(&claims, &self.rules) {
            return Verdict::Refused(Rejection::WrongIssuerOrAudience);
        }
        match check_claims(&claims, &self.rules, now) {
            Ok(facts) => Verdict::Active(facts),
            Err(why) => Verdict::Refused(why),
        }
    }
}

/// `iss` is one of the configured issuers and `aud` (a string or an
/// array) names one of the configured audiences; either check is off when
/// nothing is configured for it.
fn issuer_and_audience_match(claims: &Map<String, Value>, rules: &ClaimRules) -> bool {
    let issuer_ok = rules.issuers.is_empty()
        || claims
            .get("iss")
            .and_then(Value::as_str)
            .is_some_and(|iss| rules.issuers.iter().any(|i| i == iss));
    let audience_ok = rules.audiences.is_empty()
        || match claims.get("aud") {
            Some(Value::String(aud)) => rules.audiences.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| rules.audiences.iter().any(|a| a == aud)),
            _ => false,
        };
    issuer_ok && audience_ok
}

/// `application/x-www-form-urlencoded` (the unreserved characters as they
/// are, everything else percent-encoded).
fn form_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    crate::http::form::percent_encode(out, bytes, b"");
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_900_000_000;

    fn provider(issuers: &[&str], audiences: &[&str]) -> Introspection {
        Introspection::new(
            TokenLocation::Bearer,
            0,
            "/introspect",
            "gateway",
            b"s3cr:t&",
            ClaimRules {
                issuers: issuers.iter().map(|s| s.to_string()).collect(),
                audiences: audiences.iter().map(|s| s.to_string()).collect(),
                leeway: 30,
                max_lifetime: None,
                required: Vec::new(),
                consumer_claims: vec!["sub".into(), "client_id".into()],
                tier_claim: Some("plan".into()),
                scope_claim: "scope".into(),
                claim_headers: Vec::new(),
                template_claims: Vec::new(),
            },
            Duration::from_secs(60),
            Duration::from_secs(5),
            Duration::ZERO,
            100,
        )
    }

    #[test]
    fn base64_and_form_encoding_follow_their_rfcs() {
        // RFC 4648 §10 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64_encode(&mut out, plain.as_bytes());
            assert_eq!(out, encoded.as_bytes(), "{plain}");
        }
        let mut out = Vec::new();
        base64_encode(&mut out, &[0xff, 0xfe, 0xfd]);
        assert_eq!(out, b"//79");
        let mut out = Vec::new();
        form_encode(&mut out, b"a-Z.0_~ +/=&%\x7f\xc3");
        assert_eq!(out, b"a-Z.0_~%20%2B%2F%3D%26%25%7F%C3");
    }

    #[test]
    fn the_request_carries_the_client_credentials_and_the_encoded_token() {
        let p = provider(&[], &[]);
        let mut out = Vec::new();
        p.write_request(&mut out, b"idp.test:8443", b"tok+en/=");
        let text = String::from_utf8(out).unwrap();
        let body = "token=tok%2Ben%2F%3D&token_type_hint=access_token";
        // base64("gateway:s3cr%3At%26")
        assert_eq!(
            text,
            format!(
                "POST /introspect HTTP/1.1\r\nhost: idp.test:8443\r\nauthorization: Basic Z2F0ZXdheTpzM2NyJTNBdCUyNg==\r\ncontent-type: application/x-www-form-urlencoded\r\naccept: application/json\r\nuser-agent: ringgate\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        );
        let debug = format!("{p:?}");
        assert!(!debug.contains("Z2F0"), "no secret in Debug");
        assert!(debug.contains("/introspect") && debug.contains("cache_ttl"));
    }

    #[test]
    fn only_an_active_answer_with_good_claims_authenticates() {
        let p = provider(&["https://idp.test"], &["api"]);
        let answer = |v: serde_json::Value| p.verdict(v.to_string().as_bytes(), NOW);
        let base = serde_json::json!({"active": true, "iss": "https://idp.test", "aud": ["x", "api"], "sub": "alice", "client_id": "app", "exp": NOW + 60, "scope": "a b", "plan": "gold"});
        let Verdict::Active(facts) = answer(base.clone()) else {
            panic!("active")
        };
        assert_eq!(&*facts.consumer.name, "alice");
        assert_eq!(facts.consumer.tier.as_deref(), Some("gold"));
        assert_eq!(facts.consumer.scopes.len(), 2);
        assert_eq!(facts.valid_until, NOW + 90);
        // No subject: the client is the consumer.
        let mut client = base.clone();
        client.as_object_mut().unwrap().remove("sub");
        let Verdict::Active(facts) = answer(client) else {
            panic!("active")
        };
        assert_eq!(&*facts.consumer.name, "app");
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            answer(c)
        };
        assert!(matches!(with("active", false.into()), Verdict::Refused(_)));
        assert_eq!(with("active", "true".into()), Verdict::Malformed);
        assert_eq!(
            with("iss", "https://evil.test".into()),
            Verdict::Refused(Rejection::WrongIssuerOrAudience)
        );
        assert_eq!(
            with("aud", "other".into()),
            Verdict::Refused(Rejection::WrongIssuerOrAudience)
        );
        assert!(matches!(with("aud", "api".into()), Verdict::Active(_)));
        assert_eq!(
            with("aud", serde_json::json!(["x", "y"])),
            Verdict::Refused(Rejection::WrongIssuerOrAudience)
        );
        assert_eq!(
            with("exp", (NOW - 31).into()),
            Verdict::Refused(Rejection::Expired)
        );
        assert_eq!(
            with("nbf", (NOW + 31).into()),
            Verdict::Refused(Rejection::NotYetValid)
        );
        assert_eq!(p.verdict(b"not json", NOW), Verdict::Malformed);
        assert_eq!(p.verdict(b"[true]", NOW), Verdict::Malformed);
        assert_eq!(p.verdict(b"{}", NOW), Verdict::Malformed);
        // Nothing configured: iss and aud are not checked.
        let open = provider(&[], &[]);
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove("iss");
        c.as_object_mut().unwrap().remove("aud");
        assert!(matches!(
            open.verdict(c.to_string().as_bytes(), NOW),
            Verdict::Active(_)
        ));
        assert_eq!(
            p.verdict(c.to_string().as_bytes(), NOW),
            Verdict::Refused(Rejection::WrongIssuerOrAudience)
        );
    }
}
