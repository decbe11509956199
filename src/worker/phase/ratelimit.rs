//! [hot] Phase: rate limits. Compiled part: `Snapshot::rate_limits` (the
//! policies) and `Route::rate_limits` (which apply, in order). Per-worker
//! part: the generation's `ratelimit::Limiter` (worker-scope buckets and
//! this worker's share of node and cluster limits, fed by the aggregator).
//!
//! A refusal of a shared limit whose node-wide allowance is not spent asks
//! the connection to wait a sync interval for a bigger grant (at most
//! `MAX_LIMIT_WAITS` times), then decides for good.

use crate::failure::Failure;
use crate::ratelimit::Decision;
use crate::snapshot::{LimitKey, Route};

use super::super::client::Client;
use super::super::shard::{Generation, Shard};
use super::Verdict;

/// How many sync intervals a request may wait for a bigger grant of a
/// shared limit (a grant cycle takes about three: report, grant, two
/// intervals until it takes effect; a cluster key adds a Redis round).
const MAX_LIMIT_WAITS: u32 = 20;

/// Where a request is in its route's rate-limit policies.
#[derive(Default)]
pub struct Progress {
    /// Policies already passed (a wait resumes after them, so they are not
    /// charged twice).
    passed: usize,
    waits: u32,
    /// The tightest decision among passed policies that report headers.
    tightest: Option<Decision>,
}

impl Progress {
    /// The decision to report on the response (`RateLimit-*` headers).
    pub fn tightest(&self) -> Option<Decision> {
        self.tightest
    }
}

/// Checks the route's policies from where `progress` left off.
pub fn check(
    shard: &Shard,
    generation: &Generation,
    route: &Route,
    client: &Client,
    progress: &mut Progress,
) -> Verdict {
    if route.rate_limits.is_empty() {
        return Verdict::Continue;
    }
    let last_try = progress.waits >= MAX_LIMIT_WAITS;
    // A reload while this request waited for a grant moved the limiter's
    // state to the new generation: check there, as long as the policy list
    // is the same one (else this generation's policies no longer exist, and
    // its own limiter decides).
    let current = (progress.waits > 0).then(|| shard.generation());
    let limits = match &current {
        Some(c) if c.snapshot.limits_id == generation.snapshot.limits_id => c,
        _ => generation,
    };
    let now = crate::ratelimit::clock::now();
    match check_policies(shard, limits, route, client, progress, last_try, now) {
        Ok(()) => Verdict::Continue,
        Err(d) if d.defer && !last_try => {
            // This worker's part is spent but the node has more: wait for
            // the aggregator's next grant.
            progress.waits += 1;
            Verdict::Wait(generation.snapshot.rate_limit_sync)
        }
        Err(d) => Verdict::Answer(Failure::RateLimited {
            limit: d.limit,
            reset: d.reset_secs,
            retry_after: d.retry_after_secs,
        }),
    }
}

/// Runs the route's policies in order, from where `progress` left off, at
/// time `now`. `Err` is the refusing decision.
fn check_policies(
    shard: &Shard,
    generation: &Generation,
    route: &Route,
    client: &Client,
    progress: &mut Progress,
    last_try: bool,
    now: u64,
) -> Result<(), Decision> {
    let buf = &client.buf[..];
    let snapshot = &generation.snapshot;
    let mut limiter = generation.limiter.borrow_mut();
    for &index in &route.rate_limits[progress.passed..] {
        let policy = &snapshot.rate_limits[index];
        let key: &[u8] = match &policy.key {
            LimitKey::ClientIp => crate::ratelimit::client_ip_key(
                client.peer.ip(),
                client.peer_ip.as_bytes(),
                &policy.trusted_proxies,
                client
                    .headers
                    .iter()
                    .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
                    .map(|h| h.value.get(buf)),
            ),
            LimitKey::Header(name) => client.header(name).unwrap_or(b""),
            LimitKey::Route => route.name.as_bytes(),
            LimitKey::Global => b"",
        };
        let mut scratch = [0u8; crate::ratelimit::HASHED_KEY_LEN];
        let key = crate::ratelimit::bounded_key(key, &mut scratch);
        let tier = policy.tier_header.as_deref().and_then(|h| client.header(h));
        let decision = limiter.check_again(index, policy, key, tier, now, progress.waits > 0);
        if !decision.allowed {
            if !decision.defer || last_try {
                shard.metrics.rate_limit(index, false);
            }
            return Err(decision);
        }
        shard.metrics.rate_limit(index, true);
        progress.passed += 1;
        if policy.headers
            && progress
                .tightest
                .is_none_or(|t| decision.remaining < t.remaining)
        {
            progress.tightest = Some(decision);
        }
    }
    Ok(())
}
