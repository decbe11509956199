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
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::single_flight::Lookups;
use crate::auth::Outcome;
use crate::auth::introspection::{Introspection, Verdict};
use crate::auth::token_cache::Lookup;
use crate::http::collect::{CollectError, Collector};
use crate::http::response::{ResponseFraming, parse_response};
use crate::transport::{IoFailure, read_more_timed, write_all_keep};
use crate::upstream::conn::UPSTREAM_BUFFER;

use super::forward::{acquire, pick_endpoint};
use super::shard::{Generation, Shard};

/// Largest introspection answer accepted.
const MAX_ANSWER: usize = 64 * 1024;

/// Why a call to the endpoint failed (for the log).
#[derive(Debug)]
enum CallError {
    Connect(crate::failure::Failure),
    Io(&'static str),
    Status(u16),
    Malformed(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(failure) => write!(f, "cannot connect: {}", failure.code()),
            CallError::Io(why) => f.write_str(why),
            CallError::Status(status) => write!(f, "status {status}"),
            CallError::Malformed(why) => write!(f, "malformed answer: {why}"),
        }
    }
}

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

/// One introspection call: the body of a 200 answer. A pooled connection
/// that turns out closed is retried once on a new one (introspection has
/// no side effects).
async fn call(
    shard: &Shard,
    generation: &Generation,
    provider: &Introspection,
    token: &[u8],
) -> Result<Vec<u8>, CallError> {
    let upstream = provider.upstream;
    let spec = &generation.snapshot.upstreams[upstream];
    let (endpoint, _in_flight) = pick_endpoint(generation, spec, upstream, None);
    let mut request = Vec::with_capacity(512);
    provider.write_request(&mut request, &spec.endpoints[endpoint].authority, token);
    let mut out = BytesMut::from(&request[..]);
    let mut allow_pooled = true;
    loop {
        let (mut conn, pooled) = acquire(shard, generation, spec, upstream, endpoint, allow_pooled)
            .await
            .map_err(CallError::Connect)?;
        let deadline = Instant::now() + spec.response_timeout;
        let sent = write_all_keep(&mut conn.stream, &mut out, spec.response_timeout).await;
        let answer = match sent {
            Ok(()) => read_answer(&mut conn, deadline).await,
            Err(_) => Err(CallError::Io("write failed")),
        };
        match answer {
            // A pooled connection the endpoint had closed: nothing was
            // answered, ask again on a new one.
            Err(CallError::Io("write failed" | "closed")) if pooled && conn.buf.is_empty() => {
                allow_pooled = false;
                continue;
            }
            Err(e) => return Err(e),
            Ok((status, body, reusable)) => {
                if reusable && !shard.draining.get() {
                    generation.upstreams.borrow_mut()[upstream].pools[endpoint]
                        .checkin(conn, Instant::now());
                }
                return if status == 200 {
                    Ok(body)
                } else {
                    Err(CallError::Status(status))
                };
            }
        }
    }
}

/// Reads one response: status, body, and whether the connection can be
/// pooled after it.
async fn read_answer(
    conn: &mut crate::upstream::UpstreamConn,
    deadline: Instant,
) -> Result<(u16, Vec<u8>, bool), CallError> {
    let head = loop {
        if !conn.buf.is_empty() {
            match parse_response(&conn.buf, 16 * 1024, 64, false, &mut conn.headers) {
                Ok(Some(head)) if head.is_interim() => {
                    conn.buf.advance(head.len);
                    continue;
                }
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(_) => return Err(CallError::Malformed("bad response head")),
            }
        }
        fill(conn, deadline).await?;
    };
    conn.buf.advance(head.len);
    let mut body = Collector::new(head.framing, MAX_ANSWER).map_err(collect_error)?;
    loop {
        let used = body.feed(&conn.buf).map_err(collect_error)?;
        conn.buf.advance(used);
        if body.is_done() {
            break;
        }
        match fill(conn, deadline).await {
            Ok(()) => {}
            Err(CallError::Io("closed")) => {
                body.closed().map_err(collect_error)?;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // A body ended by closing leaves nothing to reuse.
    let reusable =
        head.keep_alive && head.framing != ResponseFraming::UntilClose && conn.buf.is_empty();
    Ok((head.status, body.into_body(), reusable))
}

fn collect_error(e: CollectError) -> CallError {
    match e {
        CollectError::TooLarge => CallError::Malformed("answer too large"),
        CollectError::Malformed(why) => CallError::Malformed(why),
    }
}

/// Reads more of the answer before `deadline`.
async fn fill(
    conn: &mut crate::upstream::UpstreamConn,
    deadline: Instant,
) -> Result<(), CallError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left == Duration::ZERO {
        return Err(CallError::Io("timed out"));
    }
    match read_more_timed(&mut conn.stream, &mut conn.buf, UPSTREAM_BUFFER, left).await {
        Ok(_) => Ok(()),
        Err(IoFailure::TimedOut) => Err(CallError::Io("timed out")),
        Err(IoFailure::Closed) => Err(CallError::Io("closed")),
        Err(_) => Err(CallError::Io("read failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_say_what_went_wrong() {
        assert_eq!(CallError::Io("timed out").to_string(), "timed out");
        assert_eq!(CallError::Status(401).to_string(), "status 401");
        assert_eq!(
            CallError::Malformed("answer too large").to_string(),
            "malformed answer: answer too large"
        );
        assert_eq!(
            CallError::Connect(crate::failure::Failure::UpstreamConnect).to_string(),
            "cannot connect: upstream_connect_failed"
        );
    }
}
