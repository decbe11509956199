//! [warm] Token introspection (RFC 7662) from a worker: the lookup of one
//! opaque token, asked of the introspection endpoint through this worker's
//! own pool for that upstream, on the requesting connection's task — the
//! worker goes on serving everyone else meanwhile.
//!
//! Answers are cached per worker (`Generation::token_caches`): an active
//! token until min(`exp`, `cache_ttl`), an inactive one `negative_cache_ttl`.
//! Concurrent requests with one token on one worker make one call: the
//! first asks, the others wait for its answer (with the same deadline the
//! call has); if the asking request goes away, its guard wakes them and the
//! next one asks. When the endpoint cannot be reached, a token seen valid
//! within `grace` is accepted, any other is answered 503.

use std::rc::Rc;

use super::single_flight::Lookups;
use super::upstream_call::{self, CallError};
use crate::auth::Outcome;
use crate::auth::introspection::{Introspection, Verdict};
use crate::auth::token_cache::Lookup;

use super::forward::pick_endpoint;
use super::shard::{Generation, Shard};

/// Largest introspection answer accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// What provider `index` (an introspection provider) makes of `token`.
pub async fn introspect(
    shard: &Shard,
    generation: &Generation,
    index: u16,
    provider: &Introspection,
    token: &[u8],
    now: &impl Fn() -> u64,
) -> Outcome {
    let lookups: &Lookups = &generation.lookups;
    let key = lookups.key(index, token);
    let cached = || {
        let mut caches = generation.token_caches.borrow_mut();
        caches
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
            .map_or(Lookup::Unknown, |c| c.lookup(token, now()))
    };
    let spec = &generation.snapshot.upstreams[provider.upstream];
    let budget = spec.connect_timeout + spec.response_timeout;
    let mut stale = None;
    loop {
        match cached() {
            Lookup::Valid(facts) => return Outcome::Token(facts),
            Lookup::Refused => return Outcome::Invalid,
            Lookup::Stale(facts) => stale = Some(facts),
            Lookup::Unknown => {}
        }
        if let Some(wait) = lookups.waiting(key) {
            let answered = monoio::time::timeout(budget, wait.done()).await.is_ok();
            if answered && !wait.failed() {
                // The answer is in the cache now (or its asker went away:
                // this request asks in its place).
                continue;
            }
            return unreachable_outcome(stale);
        }
        break;
    }
    let lead = lookups.lead(key);
    let called = call(shard, generation, provider, token).await;
    let now = now();
    let verdict = match &called {
        Ok(body) => provider.verdict(body, now),
        Err(_) => Verdict::Malformed,
    };
    let mut caches = generation.token_caches.borrow_mut();
    let cache = caches.get_mut(usize::from(index)).and_then(Option::as_mut);
    match verdict {
        Verdict::Active(facts) => {
            shard.metrics.introspection(usize::from(index), 0);
            let facts = Rc::new(facts);
            if let Some(cache) = cache {
                cache.insert(token, facts.clone(), now);
            }
            Outcome::Token(facts)
        }
        Verdict::Refused(why) => {
            shard.metrics.introspection(usize::from(index), 1);
            tracing::debug!(reason = ?why, "introspected token refused");
            if let Some(cache) = cache {
                cache.insert_refused(token, provider.negative_ttl.as_secs(), now);
            }
            Outcome::Invalid
        }
        Verdict::Malformed => {
            shard.metrics.introspection(usize::from(index), 2);
            lead.failed();
            match called {
                Err(error) => {
                    tracing::warn!(worker = shard.id, upstream = %spec.name, %error, grace = stale.is_some(), "token introspection failed")
                }
                Ok(_) => {
                    tracing::warn!(worker = shard.id, upstream = %spec.name, grace = stale.is_some(), "token introspection answer is not an RFC 7662 answer")
                }
            }
            unreachable_outcome(stale)
        }
    }
}

/// The endpoint could not say: a token valid within the grace passes.
fn unreachable_outcome(stale: Option<Rc<crate::auth::jwt::TokenFacts>>) -> Outcome {
    match stale {
        Some(facts) => Outcome::Token(facts),
        None => Outcome::Unavailable,
    }
}

/// One introspection call: the body of a 200 answer.
async fn call(
    shard: &Shard,
    generation: &Generation,
    provider: &Introspection,
    token: &[u8],
) -> Result<Vec<u8>, CallError> {
    let upstream = provider.upstream;
    let spec = &generation.snapshot.upstreams[upstream];
    let (endpoint, _in_flight) =
        pick_endpoint(generation, spec, upstream, None, 0).map_err(CallError::Connect)?;
    let mut request = Vec::with_capacity(512);
    provider.write_request(&mut request, &spec.endpoints[endpoint].authority, token);
    let answer =
        upstream_call::call(shard, generation, upstream, endpoint, &request, MAX_ANSWER).await?;
    if answer.status == 200 {
        Ok(answer.body)
    } else {
        Err(CallError::Status(answer.status))
    }
}
