//! [hot] Phase: authentication. Compiled part: `Snapshot::auth` (the
//! providers) and `Route::auth` (which guard the route, any or all, and
//! whether anonymous callers pass). Decides without I/O; a refusal is a
//! 401 or 403 before the body is read and nothing reaches the upstream.

use crate::auth::{Identity, Outcome, Provider, ProviderKind};
use crate::failure::{AuthRefusal, Failure};
use crate::metrics::WorkerMetrics;
use crate::snapshot::{Route, Snapshot};

use super::super::client::RequestView;

/// Who the request is from (`Ok(None)`: anonymous, allowed), or the
/// refusal.
pub fn check(
    metrics: &WorkerMetrics,
    snapshot: &Snapshot,
    route: &Route,
    request: &RequestView,
    target_query: &[u8],
) -> Result<Option<Identity>, Failure> {
    let Some(guard) = &route.auth else {
        return Ok(None);
    };
    let mut identity = None;
    // The most telling refusal seen: a wrong credential says more than a
    // missing one, a known-but-not-admitted consumer more than both.
    let mut refusal: Option<AuthRefusal> = None;
    let mut any_present = false;
    for &index in &guard.providers {
        let Some(provider) = snapshot.auth.get(usize::from(index)) else {
            continue;
        };
        let outcome = ask(provider, request, target_query, &route.name);
        metrics.auth(usize::from(index), outcome.index());
        any_present |= outcome != Outcome::Absent;
        match outcome {
            Outcome::Authenticated(consumer) => {
                identity.get_or_insert(Identity {
                    provider: index,
                    consumer,
                });
                if !guard.all {
                    return Ok(identity);
                }
            }
            other => {
                let why = other.refusal().unwrap_or(AuthRefusal::Invalid);
                refusal = Some(refusal.map_or(why, |seen| seen.max_with(why)));
                if guard.all && !guard.optional {
                    return Err(Failure::Unauthorized(refusal.unwrap_or(why)));
                }
            }
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

fn ask(provider: &Provider, request: &RequestView, target_query: &[u8], route: &str) -> Outcome {
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
    }
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

impl AuthRefusal {
    /// The more telling of two refusals.
    fn max_with(self, other: AuthRefusal) -> AuthRefusal {
        let rank = |r: AuthRefusal| match r {
            AuthRefusal::Missing => 0,
            AuthRefusal::Invalid => 1,
            AuthRefusal::Forbidden => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
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
        assert_eq!(Missing.max_with(Invalid), Invalid);
        assert_eq!(Invalid.max_with(Missing), Invalid);
        assert_eq!(Invalid.max_with(Forbidden), Forbidden);
        assert_eq!(Forbidden.max_with(Missing), Forbidden);
        assert_eq!(Missing.max_with(Missing), Missing);
    }
}
