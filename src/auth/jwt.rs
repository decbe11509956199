//! [cold/warm] JWT bearer tokens: keys pinned to one algorithm each, the
//! signature checked by jsonwebtoken (on the aws-lc-rs provider rustls
//! uses), the claims checked here on the caller's clock.
//!
//! The algorithm is never taken from the token alone: every configured key
//! carries the one algorithm it verifies (`kid` → key → algorithm), a token
//! whose header names another is refused before any signature check, so an
//! RSA public key can never be used as an HMAC secret (algorithm
//! confusion) and `alg: none` does not parse. Time claims (`exp`, `nbf`,
//! `iat`, the maximum lifetime) are checked here rather than by the crate
//! so that they run on the time the caller passes (tests use simulated
//! time) and share one leeway.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::Consumer;
use crate::snapshot::UpstreamSpec;

/// Where a request carries its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// `Authorization: Bearer TOKEN` (RFC 6750 §2.1).
    Bearer,
    /// The whole value of this (lower-case) header.
    Header(Box<[u8]>),
    /// A query parameter.
    Query(Box<[u8]>),
    /// A cookie.
    Cookie(Box<[u8]>),
}

/// A verification key with the one algorithm it accepts.
pub struct PinnedKey {
    pub kid: Option<Box<str>>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// A key as configured or fetched: `(kid, algorithm, key)`.
pub type KeySpec = (Option<String>, Algorithm, DecodingKey);

impl PinnedKey {
    pub fn new((kid, alg, key): KeySpec) -> PinnedKey {
        PinnedKey {
            kid: kid.map(Into::into),
            alg,
            key,
        }
    }
}

impl std::fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material (HMAC secrets).
        f.debug_struct("PinnedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// What the claims must satisfy, and which of them say who the caller is.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Most seconds a token may live (`exp - iat`, and `exp - now`).
    pub max_lifetime: Option<u64>,
    /// Claims a token must carry (default `exp`).
    pub required: Vec<String>,
    /// The claims naming the consumer, the first present one wins
    /// (`sub`; introspection: `sub`, then `client_id`).
    pub consumer_claims: Vec<String>,
    pub tier_claim: Option<String>,
    pub scope_claim: String,
    /// Claims forwarded as headers: (claim, lower-case header name).
    pub claim_headers: Vec<(String, Box<[u8]>)>,
    /// Claims the routes' header templates name (`${jwt.NAME}`), kept
    /// with the token's facts.
    pub template_claims: Vec<String>,
}

/// A `type = "jwt"` section compiled: the provider and how its tokens are
/// cached per worker.
#[derive(Debug)]
pub struct JwtCompiled {
    pub provider: JwtProvider,
    pub cache_ttl: std::time::Duration,
    pub cache_size: usize,
    /// Keys fetched from a JWKS URL, besides the configured ones.
    pub jwks: Option<Box<JwksSource>>,
}

/// Where a provider's keys come from (`jwks_upstream`, `jwks_path`),
/// compiled.
#[derive(Debug, Clone)]
pub struct JwksSource {
    pub provider: Arc<str>,
    pub upstream: UpstreamSpec,
    pub path: String,
    /// Fetch again this long after a good fetch.
    pub refresh: Duration,
    /// No two fetches start closer together than this because of unknown
    /// `kid`s.
    pub min_refetch: Duration,
    /// How long start-up waits for the first good fetch.
    pub startup_wait: Duration,
    /// The upstream's name and endpoints and the path: a key set fetched
    /// from one origin is never used by a provider a reload pointed at
    /// another.
    pub origin: Arc<str>,
}

impl JwksSource {
    /// The origin string for `upstream` and `path`.
    pub fn origin_of(upstream: &UpstreamSpec, path: &str) -> Arc<str> {
        let mut origin = upstream.name.clone();
        for e in &upstream.endpoints {
            origin.push(' ');
            origin.push_str(&String::from_utf8_lossy(&e.authority));
            origin.push('=');
            origin.push_str(&e.addr.to_string());
        }
        origin.push(' ');
        origin.push_str(path);
        origin.into()
    }
}

/// A compiled JWT provider.
#[derive(Debug)]
pub struct JwtProvider {
    pub location: TokenLocation,
    /// The configured keys (PEM files, secrets, a JWKS file); keys fetched
    /// from a JWKS URL come with each call to `verify`.
    keys: Vec<PinnedKey>,
    rules: ClaimRules,
    /// jsonwebtoken's checks (the one algorithm, `iss`, `aud`) for each
    /// algorithm a key of this provider may carry.
    validations: Vec<Validation>,
}

/// Every signature algorithm a key may be pinned to.
const ALGORITHMS: [Algorithm; 12] = [
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

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFacts {
    pub consumer: Consumer,
    /// Unix seconds after which the token is no longer accepted (with the
    /// leeway already added); `u64::MAX` without `exp`.
    pub valid_until: u64,
    /// Headers for the upstream (`claims_to_headers`).
    pub headers: Box<[ClaimHeader]>,
    /// The claims header templates name, as header-safe text.
    pub claims: Box<[NamedClaim]>,
}

/// A claim by name, as header-safe text.
pub type NamedClaim = (Box<str>, Box<[u8]>);

/// A header made from a claim: lower-case name, value.
pub type ClaimHeader = (Box<[u8]>, Box<[u8]>);

/// Why a token was refused (for the debug log; clients see one answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    /// The header names an algorithm no key with its `kid` accepts.
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    TooLongLived,
    MissingClaim,
    WrongIssuerOrAudience,
    BadConsumer,
}

impl JwtProvider {
    /// Builds a provider from its configured keys (possibly none, when
    /// a JWKS URL supplies them).
    pub fn new(location: TokenLocation, keys: Vec<KeySpec>, rules: ClaimRules) -> JwtProvider {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut validation = Validation::new(alg);
                validation.algorithms = vec![alg];
                // Time claims are ours (`check_claims`), on the caller's clock.
                validation.validate_exp = false;
                validation.validate_nbf = false;
                validation.required_spec_claims = HashSet::new();
                validation.leeway = 0;
                validation.validate_aud = !rules.audiences.is_empty();
                if !rules.audiences.is_empty() {
                    validation.set_audience(&rules.audiences);
                }
                if !rules.issuers.is_empty() {
                    validation.set_issuer(&rules.issuers);
                }
                validation
            })
            .collect();
        JwtProvider {
            location,
            keys: keys.into_iter().map(PinnedKey::new).collect(),
            rules,
            validations,
        }
    }

    pub fn claim_headers(&self) -> impl Iterator<Item = &[u8]> {
        self.rules.claim_headers.iter().map(|(_, h)| &h[..])
    }

    /// Verifies `token` at `now` (Unix seconds) against the configured
    /// keys and `fetched` (a JWKS URL's current set).
    pub fn verify(
        &self,
        token: &[u8],
        now: u64,
        fetched: &[PinnedKey],
    ) -> Result<TokenFacts, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let mut named_key = false;
        let mut last = Rejection::UnknownKey;
        for key in self.keys.iter().chain(fetched) {
            if let Some(kid) = &header.kid {
                if key.kid.as_deref() != Some(kid.as_str()) {
                    continue;
                }
                named_key = true;
            }
            if key.alg != header.alg {
                last = Rejection::AlgorithmNotAllowed;
                continue;
            }
            let Some(validation) = self.validations.iter().find(|v| v.algorithms[0] == key.alg)
            else {
                continue;
            };
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return check_claims(&data.claims, &self.rules, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => Rejection::BadSignature,
                        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                            return Err(Rejection::WrongIssuerOrAudience);
                        }
                        _ => Rejection::Malformed,
                    };
                }
            }
        }
        if header.kid.is_some() && !named_key {
            return Err(Rejection::UnknownKey);
        }
        Err(last)
    }
}

/// The time and identity claims, at `now` (a verified token's, or an
/// introspection answer's).
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now: u64,
) -> Result<TokenFacts, Rejection> {
    for name in &rules.required {
        if !claims.contains_key(name) {
            return Err(Rejection::MissingClaim);
        }
    }
    let time = |name: &str| -> Result<Option<u64>, Rejection> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .map(Some)
                .ok_or(Rejection::Malformed),
        }
    };
    let (exp, nbf, iat) = (time("exp")?, time("nbf")?, time("iat")?);
    let leeway = rules.leeway;
    if exp.is_some_and(|exp| now > exp.saturating_add(leeway)) {
        return Err(Rejection::Expired);
    }
    // Not valid before `nbf`, nor before it was issued.
    if [nbf, iat]
        .into_iter()
        .flatten()
        .any(|start| now.saturating_add(leeway) < start)
    {
        return Err(Rejection::NotYetValid);
    }
    if let Some(max) = rules.max_lifetime {
        let Some(exp) = exp else {
            return Err(Rejection::MissingClaim);
        };
        let from_iat = iat.is_some_and(|iat| exp.saturating_sub(iat) > max);
        let from_now = exp.saturating_sub(now) > max.saturating_add(leeway);
        if from_iat || from_now {
            return Err(Rejection::TooLongLived);
        }
    }
    let name = rules
        .consumer_claims
        .iter()
        .find_map(|c| claims.get(c))
        .and_then(Value::as_str)
        .filter(|n| is_consumer_name(n))
        .ok_or(Rejection::BadConsumer)?;
    let tier = rules
        .tier_claim
        .as_deref()
        .and_then(|c| claims.get(c))
        .and_then(Value::as_str)
        .filter(|t| is_consumer_name(t));
    let scopes: Box<[Box<str>]> = match claims.get(&rules.scope_claim) {
        Some(Value::String(s)) => s.split_ascii_whitespace().map(Into::into).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(Into::into)
            .collect(),
        _ => Box::new([]),
    };
    let headers = rules
        .claim_headers
        .iter()
        .filter_map(|(claim, header)| {
            let value = claim_text(claims.get(claim)?)?;
            Some((header.clone(), value.into_bytes().into_boxed_slice()))
        })
        .collect();
    let kept = rules
        .template_claims
        .iter()
        .filter_map(|claim| {
            let value = claim_text(claims.get(claim)?)?;
            Some((claim.as_str().into(), value.into_bytes().into_boxed_slice()))
        })
        .collect();
    Ok(TokenFacts {
        headers,
        claims: kept,
        consumer: Consumer {
            name: name.into(),
            tier: tier.map(Into::into),
            routes: None,
            scopes,
        },
        valid_until: exp.map_or(u64::MAX, |e| e.saturating_add(leeway)),
    })
}

/// A claim as a header value: strings as they are, numbers and booleans
/// printed, arrays of those joined with ", "; nothing for objects, or for
/// text a header cannot carry (control characters).
fn claim_text(value: &Value) -> Option<String> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let text = match value {
        Value::Array(items) => items
            .iter()
            .map(one)
            .collect::<Option<Vec<_>>>()?
            .join(", "),
        v => one(v)?,
    };
    (text.len() <= 4096 && text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)))
        .then_some(text)
}

/// A consumer name or tier from a token: printable ASCII without quotes or
/// backslashes, at most 256 bytes (it goes into logs, metrics, headers).
fn is_consumer_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// The keys of a JWKS document, each pinned to its algorithm: the `alg`
/// the set gives it, else the one its curve implies (P-256 → ES256,
/// P-384 → ES384, Ed25519 → EdDSA). An RSA or symmetric key without `alg`
/// is refused: it could verify more than one algorithm. Strict (a JWKS
/// file in the config): any unusable key is an error.
pub fn jwks_keys(text: &str) -> Result<Vec<KeySpec>, String> {
    parse_jwks(text)?.into_iter().collect()
}

/// The signing keys of a fetched JWKS document, and why the others were
/// skipped (encryption keys, keys without a single algorithm): identity
/// providers publish such keys next to the ones that sign tokens.
pub fn jwks_signing_keys(text: &str) -> Result<(Vec<KeySpec>, Vec<String>), String> {
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for key in parse_jwks(text)? {
        match key {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(why),
        }
    }
    Ok((keys, skipped))
}

/// Each key of a JWKS document, pinned, or why it cannot be.
fn parse_jwks(text: &str) -> Result<Vec<Result<KeySpec, String>>, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let pin = |n: usize, jwk: &jsonwebtoken::jwk::Jwk| -> Result<KeySpec, String> {
        let which = || {
            jwk.common
                .key_id
                .as_deref()
                .map_or_else(|| format!("key {}", n + 1), |k| format!("key `{k}`"))
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err(format!("{}: an encryption key (\"use\": \"enc\")", which()));
        }
        let alg = match (jwk.common.key_algorithm, &jwk.algorithm) {
            // KeyAlgorithm's names are the JWA ones; the signature
            // algorithms among them parse as an `Algorithm`.
            (Some(alg), _) => format!("{alg:?}").parse::<Algorithm>().map_err(|_| {
                format!(
                    "{}: algorithm {alg:?} is not a JWS signature algorithm",
                    which()
                )
            })?,
            (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return Err(format!("{}: unsupported curve", which())),
            },
            (None, AlgorithmParameters::OctetKeyPair(okp))
                if okp.curve == EllipticCurve::Ed25519 =>
            {
                Algorithm::EdDSA
            }
            (None, _) => {
                return Err(format!(
                    "{}: needs \"alg\" (an RSA or symmetric key could verify several algorithms)",
                    which()
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", which()))?;
        Ok((jwk.common.key_id.clone(), alg, key))
    };
    Ok(set
        .keys
        .iter()
        .enumerate()
        .map(|(n, jwk)| pin(n, jwk))
        .collect())
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_900_000_000;

    fn rules() -> ClaimRules {
        ClaimRules {
            issuers: vec!["https://issuer.test".into()],
            audiences: vec!["api".into(), "other".into()],
            leeway: 30,
            max_lifetime: None,
            required: vec!["exp".into()],
            consumer_claims: vec!["sub".into()],
            tier_claim: Some("plan".into()),
            scope_claim: "scope".into(),
            claim_headers: vec![
                ("email".into(), b"x-user-email"[..].into()),
                ("groups".into(), b"x-user-groups"[..].into()),
                ("evil".into(), b"x-evil"[..].into()),
                ("absent".into(), b"x-absent"[..].into()),
            ],
            template_claims: vec!["email".into(), "absent".into()],
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": NOW + 600, "iat": NOW - 10, "plan": "gold", "scope": "orders:read orders:write"})
    }

    fn hs_provider(secret: &[u8], kid: Option<&str>) -> JwtProvider {
        JwtProvider::new(
            TokenLocation::Bearer,
            vec![(
                kid.map(str::to_string),
                Algorithm::HS256,
                DecodingKey::from_secret(secret).unwrap(),
            )],
            rules(),
        )
    }

    fn hs_token(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    #[test]
    fn a_valid_token_says_who_what_tier_and_until_when() {
        let p = hs_provider(b"s3cret-s3cret-s3cret-s3cret-s3cret", None);
        let t = hs_token(b"s3cret-s3cret-s3cret-s3cret-s3cret", None, &claims());
        let facts = p.verify(t.as_bytes(), NOW, &[]).unwrap();
        assert_eq!(&*facts.consumer.name, "alice");
        assert_eq!(facts.consumer.tier.as_deref(), Some("gold"));
        assert!(
            facts
                .consumer
                .has_scopes(&["orders:read".into(), "orders:write".into()])
        );
        assert!(!facts.consumer.has_scopes(&["admin".into()]));
        assert_eq!(facts.valid_until, NOW + 600 + 30);
        assert!(facts.headers.is_empty());
        let named: Vec<&[u8]> = p.claim_headers().collect();
        assert_eq!(
            named,
            [
                &b"x-user-email"[..],
                b"x-user-groups",
                b"x-evil",
                b"x-absent"
            ]
        );
        // Claims become headers; ones a header cannot carry, and absent
        // ones, do not.
        let mut c = claims();
        c["email"] = json!("alice@example.test");
        c["groups"] = json!(["dev", 7, true]);
        c["evil"] = json!("a\r\nx-injected: 1");
        let facts = p
            .verify(
                hs_token(b"s3cret-s3cret-s3cret-s3cret-s3cret", None, &c).as_bytes(),
                NOW,
                &[],
            )
            .unwrap();
        let headers: Vec<(&[u8], &[u8])> = facts
            .headers
            .iter()
            .map(|(n, v)| (&n[..], &v[..]))
            .collect();
        assert_eq!(
            headers,
            [
                (&b"x-user-email"[..], &b"alice@example.test"[..]),
                (&b"x-user-groups"[..], &b"dev, 7, true"[..])
            ]
        );
        // Scopes as an array; no tier claim.
        let mut c = claims();
        c["scope"] = json!(["a", "b", 3]);
        c.as_object_mut().unwrap().remove("plan");
        let facts = p
            .verify(
                hs_token(b"s3cret-s3cret-s3cret-s3cret-s3cret", None, &c).as_bytes(),
                NOW,
                &[],
            )
            .unwrap();
        assert_eq!(
            &*facts.consumer.scopes,
            &["a".into(), "b".into()] as &[Box<str>]
        );
        assert_eq!(facts.consumer.tier, None);
    }

    #[test]
    fn time_claims_follow_the_callers_clock_with_the_leeway() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let p = hs_provider(secret, None);
        let t = hs_token(secret, None, &claims());
        let exp = NOW + 600;
        assert!(p.verify(t.as_bytes(), exp + 30, &[]).is_ok());
        assert_eq!(
            p.verify(t.as_bytes(), exp + 31, &[]),
            Err(Rejection::Expired)
        );
        let mut c = claims();
        c["nbf"] = json!(NOW + 100);
        let t = hs_token(secret, None, &c);
        assert_eq!(
            p.verify(t.as_bytes(), NOW + 69, &[]),
            Err(Rejection::NotYetValid)
        );
        assert!(p.verify(t.as_bytes(), NOW + 70, &[]).is_ok());
        // Issued in the future (beyond the leeway).
        let mut c = claims();
        c["iat"] = json!(NOW + 31);
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::NotYetValid)
        );
        // exp required by default; a non-numeric exp is malformed.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::MissingClaim)
        );
        // Fractional times are allowed (RFC 7519 NumericDate); negative
        // ones are not times.
        let mut c = claims();
        c["exp"] = json!(exp as f64 + 0.5);
        assert!(
            p.verify(hs_token(secret, None, &c).as_bytes(), exp + 30, &[])
                .is_ok()
        );
        c["exp"] = json!(-5.0);
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::Malformed)
        );
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn max_lifetime_bounds_exp_from_iat_and_from_now() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let mut r = rules();
        r.max_lifetime = Some(3600);
        let p = JwtProvider::new(
            TokenLocation::Bearer,
            vec![(
                None,
                Algorithm::HS256,
                DecodingKey::from_secret(secret).unwrap(),
            )],
            r,
        );
        let mut c = claims();
        c["iat"] = json!(NOW);
        c["exp"] = json!(NOW + 3600);
        assert!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[])
                .is_ok()
        );
        c["exp"] = json!(NOW + 3601);
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::TooLongLived)
        );
        // Without iat, measured from now (plus the leeway).
        c.as_object_mut().unwrap().remove("iat");
        c["exp"] = json!(NOW + 3630);
        assert!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[])
                .is_ok()
        );
        c["exp"] = json!(NOW + 3631);
        assert_eq!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
            Err(Rejection::TooLongLived)
        );
    }

    #[test]
    fn issuer_audience_consumer_and_signature_are_enforced() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let p = hs_provider(secret, None);
        for (field, value, why) in [
            (
                "iss",
                json!("https://evil.test"),
                Rejection::WrongIssuerOrAudience,
            ),
            ("aud", json!("nope"), Rejection::WrongIssuerOrAudience),
            ("sub", json!(42), Rejection::BadConsumer),
            ("sub", json!("has space"), Rejection::BadConsumer),
            ("sub", json!("a\"b"), Rejection::BadConsumer),
            ("sub", json!("x".repeat(257)), Rejection::BadConsumer),
        ] {
            let mut c = claims();
            c[field] = value;
            assert_eq!(
                p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[]),
                Err(why),
                "{field}"
            );
        }
        // aud as a list with one accepted value passes.
        let mut c = claims();
        c["aud"] = json!(["x", "other"]);
        assert!(
            p.verify(hs_token(secret, None, &c).as_bytes(), NOW, &[])
                .is_ok()
        );
        // Another secret: bad signature.
        let forged = hs_token(b"another-secret-another-secret-xx", None, &claims());
        assert_eq!(
            p.verify(forged.as_bytes(), NOW, &[]),
            Err(Rejection::BadSignature)
        );
        for junk in [
            &b""[..],
            b"abc",
            b"a.b.c",
            b"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        ] {
            assert_eq!(
                p.verify(junk, NOW, &[]),
                Err(Rejection::Malformed),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn the_algorithm_is_pinned_by_the_key_not_the_token() {
        // An ES256 key; a token signed HS256 with the key's public PEM as
        // the secret (the classic confusion) is refused before any check.
        let key = rcgen::KeyPair::generate().unwrap();
        let public_pem = key.public_key_pem();
        let p = JwtProvider::new(
            TokenLocation::Bearer,
            vec![(
                Some("ec-1".into()),
                Algorithm::ES256,
                DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
            )],
            rules(),
        );
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-1".into());
        let good = encode(
            &header,
            &claims(),
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(p.verify(good.as_bytes(), NOW, &[]).is_ok());
        let confused = hs_token(public_pem.as_bytes(), Some("ec-1"), &claims());
        assert_eq!(
            p.verify(confused.as_bytes(), NOW, &[]),
            Err(Rejection::AlgorithmNotAllowed)
        );
        // An unknown kid, and a token without kid (tries keys by algorithm).
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("ec-2".into());
        let unknown = encode(
            &header,
            &claims(),
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(
            p.verify(unknown.as_bytes(), NOW, &[]),
            Err(Rejection::UnknownKey)
        );
        let no_kid = encode(
            &Header::new(Algorithm::ES256),
            &claims(),
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(p.verify(no_kid.as_bytes(), NOW, &[]).is_ok());
        // The Debug form names keys by kid and algorithm, never material.
        let debug = format!("{p:?}");
        assert!(debug.contains("ec-1") && debug.contains("ES256"), "{debug}");
        assert!(!debug.contains("BEGIN"));
    }

    #[test]
    fn consumer_names_are_printable_and_bounded() {
        assert!(is_consumer_name("client-42@example.com"));
        assert!(is_consumer_name(&"x".repeat(256)));
        assert!(!is_consumer_name(""));
        assert!(!is_consumer_name(&"x".repeat(257)));
        assert!(!is_consumer_name("a b"));
        assert!(!is_consumer_name("a\\b"));
        assert!(!is_consumer_name("é"));
    }

    fn jwk(key: &rcgen::KeyPair, alg: Option<Algorithm>, kid: &str) -> Value {
        let decoding = match key.algorithm() {
            a if a == &rcgen::PKCS_ED25519 => {
                DecodingKey::from_ed_pem(key.public_key_pem().as_bytes())
            }
            _ => DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()),
        }
        .unwrap();
        let mut jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(&decoding, alg).unwrap();
        jwk.common.key_id = Some(kid.into());
        serde_json::to_value(jwk).unwrap()
    }

    #[test]
    fn jwks_keys_take_their_alg_or_the_one_their_curve_implies() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let set = json!({"keys": [
            jwk(&p256, None, "a"),
            jwk(&p384, None, "b"),
            jwk(&ed, None, "c"),
            jwk(&p256, Some(Algorithm::ES256), "d"),
        ]});
        let keys = jwks_keys(&set.to_string()).unwrap();
        let pinned: Vec<(Option<&str>, Algorithm)> = keys
            .iter()
            .map(|(kid, alg, _)| (kid.as_deref(), *alg))
            .collect();
        assert_eq!(
            pinned,
            [
                (Some("a"), Algorithm::ES256),
                (Some("b"), Algorithm::ES384),
                (Some("c"), Algorithm::EdDSA),
                (Some("d"), Algorithm::ES256),
            ]
        );
        // The keys verify what their private halves sign.
        let provider = JwtProvider::new(TokenLocation::Bearer, keys, rules());
        for (key, kid, alg) in [
            (&p256, "a", Algorithm::ES256),
            (&p384, "b", Algorithm::ES384),
            (&ed, "c", Algorithm::EdDSA),
        ] {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            let encoding = match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_pem(key.serialize_pem().as_bytes()),
                _ => EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()),
            }
            .unwrap();
            let token = encode(&header, &claims(), &encoding).unwrap();
            assert!(provider.verify(token.as_bytes(), NOW, &[]).is_ok(), "{kid}");
        }
    }

    #[test]
    fn jwks_keys_that_could_verify_several_algorithms_are_refused() {
        let rsa_without_alg = json!({"keys": [{"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}]});
        let err = jwks_keys(&rsa_without_alg.to_string()).unwrap_err();
        assert!(
            err.contains("key `r`") && err.contains("needs \"alg\""),
            "{err}"
        );
        let encryption_alg =
            json!({"keys": [{"kty": "RSA", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"}]});
        let err = jwks_keys(&encryption_alg.to_string()).unwrap_err();
        assert!(
            err.contains("key 1") && err.contains("not a JWS signature algorithm"),
            "{err}"
        );
        // An X25519 key agrees on secrets; it signs nothing.
        let x25519 = json!({"keys": [{"kty": "OKP", "crv": "X25519", "kid": "x", "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}]});
        let err = jwks_keys(&x25519.to_string()).unwrap_err();
        assert!(err.contains("key `x`"), "{err}");
        assert!(
            jwks_keys("not json")
                .unwrap_err()
                .contains("not a JWKS document")
        );
        assert!(jwks_keys("{\"keys\": []}").unwrap().is_empty());
    }
}
