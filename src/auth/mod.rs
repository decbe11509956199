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
pub mod jwt;
pub mod token_cache;

use crate::failure::AuthRefusal;

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
        ProviderKind::Jwt(jwt) => match &jwt.provider.location {
            jwt::TokenLocation::Bearer => Some(b"authorization"[..].into()),
            jwt::TokenLocation::Header(h) => Some(h.clone()),
            jwt::TokenLocation::Query(_) | jwt::TokenLocation::Cookie(_) => None,
        },
    }
}

#[derive(Debug)]
pub enum ProviderKind {
    ApiKey(api_key::ApiKeys),
    Jwt(jwt::JwtCompiled),
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
    Authenticated(u32),
    /// A verified token.
    Token(std::rc::Rc<jwt::TokenFacts>),
}

/// Outcomes as metric labels (`Outcome::index`).
pub const OUTCOMES: [&str; 4] = ["authenticated", "missing", "invalid", "forbidden"];

impl Outcome {
    /// Index of this outcome's label in `OUTCOMES`.
    pub fn index(&self) -> usize {
        match self {
            Outcome::Authenticated(_) | Outcome::Token(_) => 0,
            Outcome::Absent => 1,
            Outcome::Invalid => 2,
            Outcome::Forbidden => 3,
        }
    }

    /// The answer a refused request gets for this outcome.
    pub fn refusal(&self) -> Option<AuthRefusal> {
        match self {
            Outcome::Absent => Some(AuthRefusal::Missing),
            Outcome::Invalid => Some(AuthRefusal::Invalid),
            Outcome::Forbidden => Some(AuthRefusal::Forbidden),
            Outcome::Authenticated(_) | Outcome::Token(_) => None,
        }
    }
}

impl Provider {
    pub fn consumer(&self, index: u32) -> Option<&Consumer> {
        match &self.kind {
            ProviderKind::ApiKey(keys) => keys.consumer(index),
            ProviderKind::Jwt(_) => None,
        }
    }
}
