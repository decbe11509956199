//! [cold/hot] Authentication: who a request is from. Compiled from
//! `[auth.NAME]` sections into `Provider`s (on the control thread, files
//! read there, so a reload re-reads them); the request path asks them
//! through `phase::auth`, which attaches an `Identity` to the request.
//!
//! An `Identity` is two indices (provider, consumer), `Copy`: a request
//! that authenticates allocates nothing, and everything that wants the
//! consumer — rate-limit keys and tiers, the access log — reads its name
//! and tier from the provider by index.

pub mod api_key;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod token_cache;

/// Why authentication refused a request, least telling first: with
/// several providers the greatest is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthRefusal {
    /// No credential (401, no error code: RFC 6750 §3.1).
    Missing,
    /// A credential that authenticates no one (401, `invalid_token`).
    Invalid,
    /// A credential that could not be checked: the introspection endpoint
    /// is unreachable and no grace applies (503 with `Retry-After`).
    Unavailable,
    /// A known consumer the route does not admit (403, `insufficient_scope`).
    Forbidden,
}

/// A compiled `[auth.NAME]` section.
#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Headers a client may not send on to the upstream through a route
    /// this provider guards (lower-case): the claim headers it sets, and
    /// its credential's header when `forward_credential = false`.
    pub hidden_headers: Vec<Box<[u8]>>,
}

/// The consumer's name toward the upstream; clients' own copies are
/// always dropped.
pub const CONSUMER_HEADER: &[u8] = b"x-consumer";

/// The header a provider's credential arrives in, if it is a header.
pub fn credential_header(kind: &ProviderKind) -> Option<Box<[u8]>> {
    match kind {
        ProviderKind::ApiKey(keys) => keys.location.header.clone(),
        ProviderKind::Jwt(jwt) => location_header(&jwt.provider.location),
        ProviderKind::Introspection(i) => location_header(&i.location),
    }
}

fn location_header(location: &jwt::TokenLocation) -> Option<Box<[u8]>> {
    match location {
        jwt::TokenLocation::Bearer => Some(b"authorization"[..].into()),
        jwt::TokenLocation::Header(h) => Some(h.clone()),
        jwt::TokenLocation::Query(_) | jwt::TokenLocation::Cookie(_) => None,
    }
}

#[derive(Debug)]
pub enum ProviderKind {
    ApiKey(api_key::ApiKeys),
    Jwt(jwt::JwtCompiled),
    Introspection(Box<introspection::Introspection>),
}

/// Who an authenticated request is from: an index for a consumer the
/// config lists (API keys), a shared handle for one a token describes
/// (cloned from the worker's token cache, no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Provider index into `Snapshot::auth`, consumer index in it.
    Listed { provider: u16, consumer: u32 },
    Token {
        provider: u16,
        facts: std::rc::Rc<jwt::TokenFacts>,
    },
}

impl Identity {
    /// The consumer, looked up in `providers` (`Snapshot::auth`).
    pub fn consumer<'a>(&'a self, providers: &'a [Provider]) -> Option<&'a Consumer> {
        match self {
            Identity::Listed { provider, consumer } => {
                providers.get(usize::from(*provider))?.consumer(*consumer)
            }
            Identity::Token { facts, .. } => Some(&facts.consumer),
        }
    }
}

/// A consumer as the gateway knows it (an API key's owner, later a token's
/// subject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub name: Box<str>,
    /// Selects a rate-limit tier (`[rate_limits.P.tiers.TIER]`).
    pub tier: Option<Box<str>>,
    /// Route names this consumer may use (`None`: all its provider guards).
    pub routes: Option<Box<[Box<str>]>>,
    /// What the consumer may do (a token's `scope`, a key's `scopes`);
    /// routes may require some (`auth_scopes`).
    pub scopes: Box<[Box<str>]>,
}

impl Consumer {
    /// Whether the consumer holds every scope in `required`.
    pub fn has_scopes(&self, required: &[Box<str>]) -> bool {
        required.iter().all(|r| self.scopes.iter().any(|s| s == r))
    }
}

/// What a provider made of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No credential of this provider's kind in the request.
    Absent,
    /// A credential that does not authenticate anyone.
    Invalid,
    /// Authenticated, but this consumer may not use the route.
    Forbidden,
    /// The credential could not be checked (introspection endpoint down).
    Unavailable,
    Authenticated(u32),
    /// A verified token.
    Token(std::rc::Rc<jwt::TokenFacts>),
}

/// Outcomes as metric labels (`Outcome::index`).
pub const OUTCOMES: [&str; 5] = [
    "authenticated",
    "missing",
    "invalid",
    "forbidden",
    "unavailable",
];

impl Outcome {
    /// Index of this outcome's label in `OUTCOMES`.
    pub fn index(&self) -> usize {
        match self {
            Outcome::Authenticated(_) | Outcome::Token(_) => 0,
            Outcome::Absent => 1,
            Outcome::Invalid => 2,
            Outcome::Forbidden => 3,
            Outcome::Unavailable => 4,
        }
    }

    /// The answer a refused request gets for this outcome.
    pub fn refusal(&self) -> Option<AuthRefusal> {
        match self {
            Outcome::Absent => Some(AuthRefusal::Missing),
            Outcome::Invalid => Some(AuthRefusal::Invalid),
            Outcome::Forbidden => Some(AuthRefusal::Forbidden),
            Outcome::Unavailable => Some(AuthRefusal::Unavailable),
            Outcome::Authenticated(_) | Outcome::Token(_) => None,
        }
    }
}

impl Provider {
    pub fn consumer(&self, index: u32) -> Option<&Consumer> {
        match &self.kind {
            ProviderKind::ApiKey(keys) => keys.consumer(index),
            ProviderKind::Jwt(_) | ProviderKind::Introspection(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    fn consumer(name: &str, scopes: &[&str]) -> Consumer {
        Consumer {
            name: name.into(),
            tier: None,
            routes: None,
            scopes: scopes.iter().map(|s| (*s).into()).collect(),
        }
    }

    fn key_provider() -> Provider {
        let text = format!("{} acme gold\n", api_key::hash_hex(b"k"));
        let keys = api_key::ApiKeys::parse(
            &text,
            api_key::KeyLocation {
                header: Some(b"x-api-key"[..].into()),
                query: None,
            },
            "t",
        )
        .unwrap();
        Provider {
            name: "keys".into(),
            kind: ProviderKind::ApiKey(keys),
            hidden_headers: Vec::new(),
        }
    }

    #[test]
    fn outcomes_map_to_refusals_and_metric_labels() {
        let token = Outcome::Token(Rc::new(jwt::TokenFacts {
            consumer: consumer("t", &[]),
            valid_until: 0,
            headers: Box::new([]),
            claims: Box::new([]),
        }));
        let cases = [
            (Outcome::Authenticated(3), None, "authenticated"),
            (token, None, "authenticated"),
            (Outcome::Absent, Some(AuthRefusal::Missing), "missing"),
            (Outcome::Invalid, Some(AuthRefusal::Invalid), "invalid"),
            (
                Outcome::Forbidden,
                Some(AuthRefusal::Forbidden),
                "forbidden",
            ),
        ];
        for (outcome, refusal, label) in cases {
            assert_eq!(outcome.refusal(), refusal, "{outcome:?}");
            assert_eq!(OUTCOMES[outcome.index()], label, "{outcome:?}");
        }
    }

    #[test]
    fn identities_find_their_consumer() {
        let providers = [key_provider()];
        let listed = Identity::Listed {
            provider: 0,
            consumer: 0,
        };
        assert_eq!(&*listed.consumer(&providers).unwrap().name, "acme");
        assert_eq!(
            providers[0].consumer(0).unwrap().tier.as_deref(),
            Some("gold")
        );
        assert!(providers[0].consumer(1).is_none());
        let stale = Identity::Listed {
            provider: 1,
            consumer: 0,
        };
        assert!(stale.consumer(&providers).is_none());
        let token = Identity::Token {
            provider: 0,
            facts: Rc::new(jwt::TokenFacts {
                consumer: consumer("tok", &[]),
                valid_until: 0,
                headers: Box::new([]),
                claims: Box::new([]),
            }),
        };
        assert_eq!(&*token.consumer(&providers).unwrap().name, "tok");
    }

    #[test]
    fn scopes_must_all_be_held() {
        let c = consumer("c", &["a", "b"]);
        assert!(c.has_scopes(&[]));
        assert!(c.has_scopes(&["a".into()]));
        assert!(c.has_scopes(&["b".into(), "a".into()]));
        assert!(!c.has_scopes(&["a".into(), "c".into()]));
        assert!(!consumer("d", &[]).has_scopes(&["a".into()]));
    }

    #[test]
    fn credentials_live_in_the_header_their_provider_reads() {
        assert_eq!(
            credential_header(&key_provider().kind).as_deref(),
            Some(&b"x-api-key"[..])
        );
        let rules = jwt::ClaimRules {
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: 0,
            max_lifetime: None,
            required: Vec::new(),
            consumer_claims: vec!["sub".into()],
            tier_claim: None,
            scope_claim: "scope".into(),
            claim_headers: Vec::new(),
            template_claims: Vec::new(),
        };
        let jwt_at = |location| {
            ProviderKind::Jwt(jwt::JwtCompiled {
                provider: jwt::JwtProvider::new(location, Vec::new(), rules.clone()),
                cache_ttl: std::time::Duration::ZERO,
                cache_size: 1,
                jwks: None,
            })
        };
        assert_eq!(
            credential_header(&jwt_at(jwt::TokenLocation::Bearer)).as_deref(),
            Some(&b"authorization"[..])
        );
        assert_eq!(
            credential_header(&jwt_at(jwt::TokenLocation::Header(b"x-token"[..].into())))
                .as_deref(),
            Some(&b"x-token"[..])
        );
        assert_eq!(
            credential_header(&jwt_at(jwt::TokenLocation::Query(b"t"[..].into()))),
            None
        );
        assert_eq!(
            credential_header(&jwt_at(jwt::TokenLocation::Cookie(b"t"[..].into()))),
            None
        );
    }
}
