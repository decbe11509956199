//! [hot] Phase: authentication. Compiled part: `Snapshot::auth` (the
//! providers) and `Route::auth` (which guard the route, any or all, and
//! whether anonymous callers pass); per-worker part: the token caches (in
//! the `Generation`) and the fetched JWKS keys (`Shard::jwks`). Decides
//! without I/O; the one wait is for a JWKS refetch that a token with an
//! unknown `kid` asked for. A refusal is a 401 or 403 before the body is
//! read and nothing reaches the upstream.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::auth::jwks::{UnknownKey, WorkerKeys};
use crate::auth::jwt::{JwtCompiled, Rejection, TokenLocation};
use crate::auth::{AuthRefusal, Identity, Outcome, Provider, ProviderKind};
use crate::failure::Failure;
use crate::http::{Method, RequestHead};
use crate::snapshot::Route;

use super::super::client::RequestView;
use super::super::shard::{Generation, Shard};

/// Who the request is from (`Ok(None)`: anonymous, allowed), or the
/// refusal. `now` reads the clock (Unix seconds, for token lifetimes); only
/// a token check calls it, so API-key and open routes read no clock.
pub async fn check(
    shard: &Shard,
    generation: &Generation,
    route: &Route,
    request: &RequestView<'_>,
    head: &RequestHead,
    now: impl Fn() -> u64,
) -> Result<Option<Identity>, Failure> {
    let Some(guard) = &route.auth else {
        return Ok(None);
    };
    if guard.skip_preflight
        && head.method == Method::Options
        && request.header(b"access-control-request-method").is_some()
    {
        return Ok(None);
    }
    let target_query = head.query.get(request.buf);
    let snapshot = &generation.snapshot;
    let mut identity = None;
    // The most telling refusal seen: a wrong credential says more than a
    // missing one, a known-but-not-admitted consumer more than both.
    let mut refusal: Option<AuthRefusal> = None;
    let mut any_present = false;
    for &index in &guard.providers {
        let Some(provider) = snapshot.auth.get(usize::from(index)) else {
            continue;
        };
        let outcome = ask(
            shard,
            generation,
            index,
            provider,
            request,
            target_query,
            &route.name,
            &now,
        )
        .await;
        shard.metrics.auth(usize::from(index), outcome.index());
        any_present |= outcome != Outcome::Absent;
        let found = match outcome {
            Outcome::Authenticated(consumer) => Identity::Listed {
                provider: index,
                consumer,
            },
            Outcome::Token(facts) => Identity::Token {
                provider: index,
                facts,
            },
            other => {
                let why = other.refusal().unwrap_or(AuthRefusal::Invalid);
                refusal = Some(refusal.map_or(why, |seen| seen.max(why)));
                if guard.all && !guard.optional {
                    return Err(Failure::Unauthorized(refusal.unwrap_or(why)));
                }
                continue;
            }
        };
        let admitted = found
            .consumer(&snapshot.auth)
            .is_some_and(|c| c.has_scopes(&guard.scopes));
        if !admitted {
            refusal = Some(AuthRefusal::Forbidden);
            if guard.all {
                return Err(Failure::Unauthorized(AuthRefusal::Forbidden));
            }
            continue;
        }
        if identity.is_none() {
            identity = Some(found);
        }
        if !guard.all {
            return Ok(identity);
        }
    }
    if !any_present && guard.optional {
        return Ok(None);
    }
    match refusal {
        None if identity.is_some() => Ok(identity),
        None => Err(Failure::Unauthorized(AuthRefusal::Missing)),
        Some(why) => Err(Failure::Unauthorized(why)),
    }
}

/// What `provider` makes of the request.
#[allow(clippy::too_many_arguments)]
async fn ask(
    shard: &Shard,
    generation: &Generation,
    index: u16,
    provider: &Provider,
    request: &RequestView<'_>,
    target_query: &[u8],
    route: &str,
    now: &impl Fn() -> u64,
) -> Outcome {
    match &provider.kind {
        ProviderKind::ApiKey(keys) => {
            let from_header = keys
                .location
                .header
                .as_deref()
                .and_then(|h| request.header(h));
            let from_query = || {
                keys.location
                    .query
                    .as_deref()
                    .and_then(|name| query_param(target_query, name))
            };
            keys.check(from_header.or_else(from_query), route)
        }
        ProviderKind::Jwt(jwt) => {
            let Some(token) = token_in(&jwt.provider.location, request, target_query) else {
                return Outcome::Absent;
            };
            loop {
                match verify_cached(generation, &shard.jwks, index, jwt, token, now()) {
                    Ok(outcome) => return outcome,
                    // A refetch for the token's unknown key is under way:
                    // this request waits on its own task.
                    Err(pause) => monoio::time::sleep(pause).await,
                }
            }
        }
        ProviderKind::Introspection(introspection) => {
            let Some(token) = token_in(&introspection.location, request, target_query) else {
                return Outcome::Absent;
            };
            super::super::introspect::introspect(
                shard,
                generation,
                index,
                introspection,
                token,
                now,
            )
            .await
        }
    }
}

/// A token verified on this worker before costs a hash and a lookup;
/// others are verified (with the fetched keys too) and remembered. `Err`:
/// look again after this long.
fn verify_cached(
    generation: &Generation,
    fetched: &WorkerKeys,
    index: u16,
    jwt: &JwtCompiled,
    token: &[u8],
    now: u64,
) -> Result<Outcome, Duration> {
    let mut caches = generation.token_caches.borrow_mut();
    let mut cache = caches.get_mut(usize::from(index)).and_then(Option::as_mut);
    if let Some(facts) = cache.as_mut().and_then(|c| c.get(token, now)) {
        return Ok(Outcome::Token(facts));
    }
    let set = jwt.jwks.as_ref().and_then(|source| fetched.current(source));
    let keys = set.as_ref().map_or(&[][..], |s| &s.keys[..]);
    match jwt.provider.verify(token, now, keys) {
        Ok(facts) => {
            let facts = Rc::new(facts);
            if let Some(cache) = cache {
                cache.insert(token, facts.clone(), now);
            }
            Ok(Outcome::Token(facts))
        }
        Err(Rejection::UnknownKey) if jwt.jwks.is_some() => {
            let source = jwt
                .jwks
                .as_ref()
                .map(|s| fetched.unknown_key(s, Instant::now()));
            match source {
                Some(UnknownKey::Wait(pause)) => Err(pause),
                _ => {
                    tracing::debug!(reason = ?Rejection::UnknownKey, "token refused");
                    Ok(Outcome::Invalid)
                }
            }
        }
        Err(why) => {
            tracing::debug!(reason = ?why, "token refused");
            Ok(Outcome::Invalid)
        }
    }
}

/// The token a request carries where `location` says.
fn token_in<'a>(
    location: &TokenLocation,
    request: &RequestView<'a>,
    target_query: &'a [u8],
) -> Option<&'a [u8]> {
    let token = match location {
        TokenLocation::Bearer => {
            let value = request.header(b"authorization")?;
            let (scheme, rest) = split_at_space(value)?;
            if !scheme.eq_ignore_ascii_case(b"bearer") {
                return None;
            }
            crate::http::trim_ows(rest)
        }
        TokenLocation::Header(name) => request.header(name)?,
        TokenLocation::Query(name) => query_param(target_query, name)?,
        TokenLocation::Cookie(name) => crate::http::cookie(request.values(b"cookie"), name)?,
    };
    (!token.is_empty()).then_some(token)
}

/// `scheme credentials` split at the first space (the credentials keep
/// their leading whitespace, which the caller trims).
fn split_at_space(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = value.iter().position(|&b| b == b' ')?;
    Some(value.split_at(at))
}

/// The raw (not percent-decoded) value of the first `name=` parameter in
/// `query` (which may start with `?`).
fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        (key == name).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_found_by_exact_name() {
        assert_eq!(
            query_param(b"?api_key=abc&x=1", b"api_key"),
            Some(&b"abc"[..])
        );
        assert_eq!(
            query_param(b"x=1&api_key=abc", b"api_key"),
            Some(&b"abc"[..])
        );
        assert_eq!(query_param(b"?my_api_key=abc", b"api_key"), None);
        assert_eq!(query_param(b"?api_key", b"api_key"), Some(&b""[..]));
        assert_eq!(query_param(b"?api_key=a=b", b"api_key"), Some(&b"a=b"[..]));
        assert_eq!(
            query_param(b"?api_key=1&api_key=2", b"api_key"),
            Some(&b"1"[..])
        );
        assert_eq!(query_param(b"", b"api_key"), None);
    }

    #[test]
    fn the_most_telling_refusal_wins() {
        use AuthRefusal::*;
        assert_eq!(Missing.max(Invalid), Invalid);
        assert_eq!(Invalid.max(Missing), Invalid);
        assert_eq!(Invalid.max(Forbidden), Forbidden);
        assert_eq!(Forbidden.max(Missing), Forbidden);
        assert_eq!(Missing.max(Missing), Missing);
    }
}
