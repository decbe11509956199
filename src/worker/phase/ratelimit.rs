//! [hot] Phase: rate limits. Compiled part: `Snapshot::rate_limits` (the
//! policies) and `Route::rate_limits` (which apply, in order). Per-worker
//! part: the generation's `ratelimit::Limiter` (worker-scope buckets and
//! this worker's share of node and cluster limits, fed by the aggregator).
//!
//! A refusal of a shared limit whose node-wide allowance is not spent asks
//! the connection to wait a sync interval for a bigger grant (at most
//! `MAX_LIMIT_WAITS` times), then decides for good.

use std::time::Duration;

use crate::failure::Failure;
use crate::metrics::WorkerMetrics;
use crate::ratelimit::Decision;
use crate::snapshot::{LimitKey, Route};

use super::super::client::RequestView;
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
    request: &RequestView,
    progress: &mut Progress,
) -> Verdict {
    if route.rate_limits.is_empty() {
        return Verdict::Continue;
    }
    // A reload while this request waited for a grant moved the limiter's
    // state to the new generation: check there, as long as the policy list
    // is the same one (else this generation's policies no longer exist, and
    // its own limiter decides).
    let current = (progress.waits > 0).then(|| shard.generation());
    let limits = match &current {
        Some(c) if c.snapshot.limits_id == generation.snapshot.limits_id => c,
        _ => generation,
    };
    let wait = generation.snapshot.rate_limit_sync;
    let now = crate::ratelimit::clock::now();
    decide_at(&shard.metrics, limits, wait, route, request, progress, now)
}

/// What `check` decides once it knows the limiter to ask and the time:
/// unit-tested on simulated time.
fn decide_at(
    metrics: &WorkerMetrics,
    limits: &Generation,
    wait: Duration,
    route: &Route,
    request: &RequestView,
    progress: &mut Progress,
    now: u64,
) -> Verdict {
    let last_try = progress.waits >= MAX_LIMIT_WAITS;
    match check_policies(metrics, limits, route, request, progress, last_try, now) {
        Ok(()) => Verdict::Continue,
        Err(d) if d.defer && !last_try => {
            // This worker's part is spent but the node has more: wait for
            // the aggregator's next grant.
            progress.waits += 1;
            Verdict::Wait(wait)
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
    metrics: &WorkerMetrics,
    generation: &Generation,
    route: &Route,
    request: &RequestView,
    progress: &mut Progress,
    last_try: bool,
    now: u64,
) -> Result<(), Decision> {
    let snapshot = &generation.snapshot;
    let mut limiter = generation.limiter.borrow_mut();
    for &index in &route.rate_limits[progress.passed..] {
        let policy = &snapshot.rate_limits[index];
        let key: &[u8] = match &policy.key {
            LimitKey::ClientIp => crate::ratelimit::client_ip_key(
                request.peer.ip(),
                request.peer_ip,
                &policy.trusted_proxies,
                request.values(b"x-forwarded-for"),
            ),
            LimitKey::Header(name) => request.header(name).unwrap_or(b""),
            LimitKey::Route => route.name.as_bytes(),
            LimitKey::Global => b"",
            LimitKey::ClientCert => request
                .tls
                .and_then(|t| t.client_cert.as_ref())
                .map_or(&b""[..], |c| c.fingerprint.as_bytes()),
            LimitKey::Consumer => request.consumer.map_or(&b""[..], |c| c.name.as_bytes()),
        };
        let mut scratch = [0u8; crate::ratelimit::HASHED_KEY_LEN];
        let key = crate::ratelimit::bounded_key(key, &mut scratch);
        // The tier a verified consumer holds; a tier header only where
        // the policy names one (a client could set it to anything).
        let tier = match policy.tier_header.as_deref() {
            Some(h) => request.header(h),
            None => request
                .consumer
                .and_then(|c| c.tier.as_deref())
                .map(str::as_bytes),
        };
        let decision = limiter.check_again(index, policy, key, tier, now, progress.waits > 0);
        if !decision.allowed {
            if !decision.defer || last_try {
                metrics.rate_limit(index, false);
            }
            return Err(decision);
        }
        metrics.rate_limit(index, true);
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

#[cfg(test)]
mod tests {
    //! The phase on simulated time: a real compiled config, a real
    //! generation's limiter, parsed heads; no socket, no clock.
    use std::sync::Arc;

    use super::*;
    use crate::http::{HeaderSpan, parse_request};
    use crate::worker::shard::endpoint_counts;

    const S: u64 = 1_000_000_000;
    /// A minute boundary far from 0, so window tests start a window.
    const T0: u64 = 29_000_000 * 60 * S;

    struct Fixture {
        generation: Generation,
        metrics: WorkerMetrics,
    }

    fn fixture(limits: &str, workers: usize) -> Fixture {
        let text = format!(
            "workers = {workers}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n{limits}\n[[routes]]\nname = \"r\"\nrate_limits = [\"p\"]\n[routes.respond]\nstatus = 200\n"
        );
        let snapshot = Arc::new(crate::config::load_str(&text, "test").expect("valid config"));
        let metrics = WorkerMetrics::new(snapshot.routes.len(), &endpoint_counts(&snapshot));
        metrics.resize_policies(&snapshot);
        Fixture {
            generation: Generation::next(snapshot, None, 0),
            metrics,
        }
    }

    /// Runs the phase for one request from `peer` with `head_lines`, from
    /// a fresh start (`progress` given: a request that waited).
    fn run(
        fx: &Fixture,
        peer: &str,
        head_lines: &str,
        progress: &mut Progress,
        now: u64,
    ) -> Verdict {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{head_lines}\r\n");
        let mut headers: Vec<HeaderSpan> = Vec::new();
        parse_request(raw.as_bytes(), 8192, 64, &mut headers)
            .expect("valid head")
            .expect("complete head");
        let peer: std::net::SocketAddr = format!("{peer}:1000").parse().unwrap();
        let peer_ip = peer.ip().to_string();
        let request = RequestView {
            buf: raw.as_bytes(),
            headers: &headers,
            peer,
            peer_ip: peer_ip.as_bytes(),
            tls: None,
            consumer: None,
        };
        let snapshot = &fx.generation.snapshot;
        let wait = snapshot.rate_limit_sync;
        decide_at(
            &fx.metrics,
            &fx.generation,
            wait,
            &snapshot.routes[0],
            &request,
            progress,
            now,
        )
    }

    fn fresh(fx: &Fixture, peer: &str, head_lines: &str, now: u64) -> Verdict {
        run(fx, peer, head_lines, &mut Progress::default(), now)
    }

    #[test]
    fn a_window_refuses_past_its_limit_per_client_until_the_next_window() {
        let fx = fixture(
            "[rate_limits.p]\nkey = \"client_ip\"\nlimit = 2\nwindow = \"1m\"",
            1,
        );
        assert_eq!(fresh(&fx, "10.0.0.1", "", T0), Verdict::Continue);
        assert_eq!(fresh(&fx, "10.0.0.1", "", T0 + S), Verdict::Continue);
        assert_eq!(
            fresh(&fx, "10.0.0.1", "", T0 + 2 * S),
            Verdict::Answer(Failure::RateLimited {
                limit: 2,
                reset: 58,
                retry_after: 58,
            })
        );
        // Another client has its own count; the next window starts afresh.
        assert_eq!(fresh(&fx, "10.0.0.2", "", T0 + 3 * S), Verdict::Continue);
        assert_eq!(fresh(&fx, "10.0.0.1", "", T0 + 60 * S), Verdict::Continue);
        let counts = fx.metrics.report(0, 0, Vec::new()).policies[0];
        assert_eq!(counts, [4, 1], "allowed and refused are counted");
    }

    #[test]
    fn header_keys_and_tiers_come_from_the_request() {
        let fx = fixture(
            "[rate_limits.p]\nkey = \"header:x-api-key\"\nlimit = 1\nwindow = \"1m\"\ntier_header = \"x-plan\"\n[rate_limits.p.tiers.gold]\nlimit = 3\nwindow = \"1m\"",
            1,
        );
        let key_a = "x-api-key: a\r\n";
        assert_eq!(fresh(&fx, "10.0.0.1", key_a, T0), Verdict::Continue);
        assert!(matches!(
            fresh(&fx, "10.0.0.9", key_a, T0),
            Verdict::Answer(Failure::RateLimited { limit: 1, .. })
        ));
        assert_eq!(
            fresh(&fx, "10.0.0.1", "x-api-key: b\r\n", T0),
            Verdict::Continue
        );
        let gold = "x-api-key: g\r\nx-plan: gold\r\n";
        for _ in 0..3 {
            assert_eq!(fresh(&fx, "10.0.0.1", gold, T0), Verdict::Continue);
        }
        assert!(matches!(
            fresh(&fx, "10.0.0.1", gold, T0),
            Verdict::Answer(Failure::RateLimited { limit: 3, .. })
        ));
    }

    #[test]
    fn a_spent_worker_part_of_a_shared_limit_waits_then_decides() {
        // Node scope, 2 workers, burst 4: this worker's default part is 2.
        let fx = fixture(
            "[rate_limits.p]\nkey = \"global\"\nscope = \"node\"\nrate = \"1/min\"\nburst = 4",
            2,
        );
        assert_eq!(fresh(&fx, "10.0.0.1", "", T0), Verdict::Continue);
        assert_eq!(fresh(&fx, "10.0.0.1", "", T0), Verdict::Continue);
        let mut progress = Progress::default();
        let wait = fx.generation.snapshot.rate_limit_sync;
        assert_eq!(
            run(&fx, "10.0.0.1", "", &mut progress, T0),
            Verdict::Wait(wait),
            "the other worker holds the rest: worth waiting for a grant"
        );
        // No grant ever comes here: after MAX_LIMIT_WAITS waits, a 429.
        let mut verdicts = Vec::new();
        for i in 1..=MAX_LIMIT_WAITS {
            verdicts.push(run(
                &fx,
                "10.0.0.1",
                "",
                &mut progress,
                T0 + u64::from(i) * 10_000_000,
            ));
        }
        assert!(
            verdicts[..verdicts.len() - 1]
                .iter()
                .all(|v| *v == Verdict::Wait(wait))
        );
        assert!(matches!(
            verdicts.last(),
            Some(Verdict::Answer(Failure::RateLimited { limit: 4, .. }))
        ));
        assert_eq!(
            fx.metrics.report(0, 0, Vec::new()).policies[0],
            [2, 1],
            "a wait is not a refusal"
        );
    }
}
