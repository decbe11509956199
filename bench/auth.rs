//! Micro-benchmarks for authentication: a JWT verified from scratch, per
//! algorithm (what a token costs the first time a worker sees it), a
//! cached token (what it costs every time after), and an API-key lookup.
//!
//! `cargo bench --bench auth`. RSA keys come from the openssl CLI.

use std::rc::Rc;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ringgate::auth::api_key::{ApiKeys, KeyLocation, hash_hex};
use ringgate::auth::jwt::{ClaimRules, JwtProvider, TokenLocation};
use ringgate::auth::token_cache::TokenCache;

const NOW: u64 = 1_900_000_000;

fn rules() -> ClaimRules {
    ClaimRules {
        issuers: vec!["https://issuer.test".into()],
        audiences: vec!["api".into()],
        leeway: 30,
        max_lifetime: None,
        required: vec!["exp".into()],
        consumer_claims: vec!["sub".into()],
        tier_claim: Some("plan".into()),
        scope_claim: "scope".into(),
        claim_headers: Vec::new(),
        template_claims: Vec::new(),
    }
}

fn claims() -> serde_json::Value {
    serde_json::json!({"iss": "https://issuer.test", "aud": "api", "sub": "user-12345", "exp": NOW + 3600, "iat": NOW, "plan": "gold", "scope": "orders:read orders:write"})
}

/// (encoding key, decoding key) for `alg`.
fn keys(alg: Algorithm) -> (EncodingKey, DecodingKey) {
    match alg {
        Algorithm::HS256 => {
            let secret = b"bench-secret-bench-secret-bench-secret!";
            (
                EncodingKey::from_secret(secret).unwrap(),
                DecodingKey::from_secret(secret).unwrap(),
            )
        }
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => {
            let kind = match alg {
                Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                _ => &rcgen::PKCS_ED25519,
            };
            let k = rcgen::KeyPair::generate_for(kind).unwrap();
            let private = k.serialize_pem();
            let public = k.public_key_pem();
            match alg {
                Algorithm::EdDSA => (
                    EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                    DecodingKey::from_ed_pem(public.as_bytes()).unwrap(),
                ),
                _ => (
                    EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                    DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
                ),
            }
        }
        _ => {
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("openssl makes the RSA bench key");
            let private = String::from_utf8(out.stdout).unwrap();
            let k =
                rcgen::KeyPair::from_pem_and_sign_algo(&private, &rcgen::PKCS_RSA_SHA256).unwrap();
            (
                EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(k.public_key_pem().as_bytes()).unwrap(),
            )
        }
    }
}

fn verify_uncached(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt_verify_uncached");
    for alg in [
        Algorithm::HS256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let (encoding, decoding) = keys(alg);
        let token = jsonwebtoken::encode(&Header::new(alg), &claims(), &encoding).unwrap();
        let provider =
            JwtProvider::new(TokenLocation::Bearer, vec![(None, alg, decoding)], rules());
        assert!(provider.verify(token.as_bytes(), NOW, &[]).is_ok());
        group.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| {
                provider
                    .verify(black_box(token.as_bytes()), NOW, &[])
                    .is_ok()
            })
        });
    }
    group.finish();
}

fn cached(c: &mut Criterion) {
    let (encoding, decoding) = keys(Algorithm::RS256);
    let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &encoding).unwrap();
    let provider = JwtProvider::new(
        TokenLocation::Bearer,
        vec![(None, Algorithm::RS256, decoding)],
        rules(),
    );
    let mut cache = TokenCache::new(10_000, 300);
    let facts = Rc::new(provider.verify(token.as_bytes(), NOW, &[]).unwrap());
    cache.insert(token.as_bytes(), facts, NOW);
    // A full cache, as under real traffic.
    for i in 0..9_999u32 {
        let other = Rc::new(provider.verify(token.as_bytes(), NOW, &[]).unwrap());
        cache.insert(&i.to_be_bytes(), other, NOW);
    }
    c.bench_function("jwt_cached_lookup", |b| {
        b.iter(|| cache.get(black_box(token.as_bytes()), NOW).is_some())
    });
}

fn api_key(c: &mut Criterion) {
    let mut text = String::new();
    for i in 0..10_000 {
        text.push_str(&format!(
            "{} consumer-{i}\n",
            hash_hex(format!("key-{i}").as_bytes())
        ));
    }
    let keys = ApiKeys::parse(
        &text,
        KeyLocation {
            header: Some(b"x-api-key"[..].into()),
            query: None,
        },
        "bench",
    )
    .unwrap();
    c.bench_function("api_key_check_10k_keys", |b| {
        b.iter(|| keys.check(Some(black_box(b"key-4242")), "route"))
    });
}

criterion_group!(benches, verify_uncached, cached, api_key);
criterion_main!(benches);
