//! [hot] Per-worker counters and latency histograms, and [cold] their merge
//! and Prometheus rendering.
//!
//! A worker updates its `WorkerMetrics` with plain `Cell`s and `RefCell`s: it
//! is the only writer, so there is no lock and no atomic on the request path.
//! On a scrape the control side asks every worker for a `WorkerReport` (an
//! owned copy, made in the worker's command tick), merges them, and renders
//! the text exposition format. Metric names live in `names.rs` only.

pub mod consumers;
pub mod names;
pub mod render;

use std::cell::{Cell, RefCell};

use hdrhistogram::Histogram;

use crate::failure::{FAILURE_KINDS, Failure};
use crate::tls::handshake::HANDSHAKE_FAILURES;

pub use render::{render_jwks, render_limit_sync, render_prometheus};

/// Methods with their own label value; everything else is "other".
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other",
];
/// Status classes 1xx..5xx (index 0 unused).
pub const CLASSES: usize = 6;

/// Latency histograms count microseconds from 1 µs to 10 minutes, 3
/// significant digits: fixed size, so recording never allocates.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

#[inline]
pub fn method_index(method: &[u8]) -> usize {
    match method {
        b"GET" => 0,
        b"HEAD" => 1,
        b"POST" => 2,
        b"PUT" => 3,
        b"DELETE" => 4,
        b"OPTIONS" => 5,
        b"PATCH" => 6,
        _ => 7,
    }
}

const AUTH_OUTCOMES: usize = crate::auth::OUTCOMES.len();
const INTROSPECTION_RESULTS: usize = crate::auth::introspection::CALL_RESULTS.len();
/// Cache counters: `ringgate_cache_requests_total` results hit, miss,
/// bypass, stale (stale-if-error); then coalesced waits.
pub const CACHE_RESULTS: usize = 5;
pub const CACHE_HIT: usize = 0;
pub const CACHE_MISS: usize = 1;
pub const CACHE_BYPASS: usize = 2;
pub const CACHE_STALE: usize = 3;
pub const CACHE_COALESCED: usize = 4;

/// How a revalidation of a stale cache entry ended: the upstream confirmed
/// it (304), replaced it (a full answer), or could not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revalidated {
    NotModified = 0,
    Modified = 1,
    Failed = 2,
}
/// `ringgate_cache_revalidations_total`: (foreground, background) ×
/// (not_modified, modified, failed).
pub const CACHE_REVALIDATIONS: usize = 6;

/// Why an upgrade tunnel ended: `ringgate_tunnels_closed_total{reason}`.
pub const TUNNEL_ENDS: [&str; 6] = [
    "client_closed",
    "upstream_closed",
    "idle_timeout",
    "max_lifetime",
    "drain",
    "error",
];

/// What a CORS policy made of requests with an `Origin`:
/// `ringgate_cors_requests_total{outcome}`.
pub const CORS_OUTCOMES: [&str; 4] = [
    "preflight_allowed",
    "preflight_refused",
    "allowed",
    "disallowed",
];
pub const CORS_PREFLIGHT_ALLOWED: usize = 0;
pub const CORS_PREFLIGHT_REFUSED: usize = 1;
pub const CORS_ALLOWED: usize = 2;
pub const CORS_DISALLOWED: usize = 3;

/// One endpoint's connection counters, as this worker saw them.
#[derive(Debug, Default, Clone, Copy)]
pub struct EndpointCounts {
    pub connects: u64,
    pub connect_failures: u64,
    /// Failed tries on this endpoint that a route's retry policy retried.
    pub retried: u64,
    /// Failed tries on this endpoint not retried for want of retry budget.
    pub budget_refused: u64,
}

/// One upstream's circuit breaker in one worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct BreakerCounts {
    /// Requests that waited in the queue (whatever came of it).
    pub queued: u64,
    /// Their waits, summed.
    pub queue_wait_us: u64,
    /// Refused: the queue was full.
    pub refused_queue_full: u64,
    /// Refused: no room within `queue_timeout`.
    pub refused_queue_timeout: u64,
    /// Retries not made: `max_retries` were under way.
    pub retries_refused: u64,
    /// Clients that went away while queued.
    pub abandoned: u64,
    /// Waiting now (filled at report time).
    pub queue_length: u64,
}

/// A worker's live metrics. Single writer: the worker's own thread.
pub struct WorkerMetrics {
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub requests: Cell<u64>,
    pub failures: [Cell<u64>; FAILURE_KINDS],
    pub bytes_received: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    pub upstream_reuses: Cell<u64>,
    pub upstream_retries: Cell<u64>,
    pub panics: Cell<u64>,
    /// TLS handshakes finished: [full, resumed].
    pub tls_handshakes: [Cell<u64>; 2],
    /// TLS handshakes that failed, by `HandshakeError::index`.
    pub tls_handshake_failures: [Cell<u64>; HANDSHAKE_FAILURES.len()],
    /// Handshakes that had to wait for a free slot (max_handshakes_in_flight).
    pub tls_handshakes_queued: Cell<u64>,
    /// Upgrade tunnels open now.
    pub tunnels_open: Cell<u64>,
    /// Answers compressed, [gzip, br].
    pub compressed: [Cell<u64>; 2],
    /// Aggregate routes' backend calls, by `worker::aggregate::BACKEND_RESULTS`.
    pub aggregate_backends: [Cell<u64>; 4],
    /// Aggregate routes' answers, by `worker::aggregate::ANSWERS`.
    pub aggregate_answers: [Cell<u64>; 3],
    /// Tunnels ended, by `TUNNEL_ENDS` index.
    pub tunnel_ends: [Cell<u64>; TUNNEL_ENDS.len()],
    /// routes+1 (the last is "no route") × METHODS × CLASSES, flattened.
    by_route: RefCell<Vec<u64>>,
    /// Per upstream, per endpoint.
    endpoints: RefCell<Vec<Vec<EndpointCounts>>>,
    /// Per upstream.
    pub breakers: RefCell<Vec<BreakerCounts>>,
    /// Per rate-limit policy: [allowed, limited].
    policies: RefCell<Vec<[u64; 2]>>,
    /// Per auth provider, by `auth::Outcome::index`.
    auth: RefCell<Vec<[u64; AUTH_OUTCOMES]>>,
    /// Per IP rule: [admitted, refused].
    ip_rules: RefCell<Vec<[u64; 2]>>,
    /// Per CORS policy, by `CORS_OUTCOMES` index.
    cors: RefCell<Vec<[u64; CORS_OUTCOMES.len()]>>,
    /// Per auth provider, introspection calls by
    /// `auth::introspection::CALL_RESULTS` index.
    introspection: RefCell<Vec<[u64; INTROSPECTION_RESULTS]>>,
    /// Cache lookups by result (`phase::cache::CACHE_RESULTS`).
    cache: RefCell<[u64; CACHE_RESULTS]>,
    cache_revalidations: RefCell<[u64; CACHE_REVALIDATIONS]>,
    /// Requests of the heaviest consumers (`admin.top_consumers`).
    consumers: RefCell<consumers::TopConsumers>,
    request_latency: RefCell<Histogram<u64>>,
    request_latency_sum_us: Cell<u64>,
    upstream_latency: RefCell<Histogram<u64>>,
    upstream_latency_sum_us: Cell<u64>,
}

#[inline]
fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

impl WorkerMetrics {
    /// Sized for a snapshot's routes and upstream endpoints.
    pub fn new(routes: usize, endpoints_per_upstream: &[usize]) -> WorkerMetrics {
        WorkerMetrics {
            connections_accepted: Cell::new(0),
            connections_refused: Cell::new(0),
            requests: Cell::new(0),
            failures: Default::default(),
            bytes_received: Cell::new(0),
            bytes_sent: Cell::new(0),
            upstream_reuses: Cell::new(0),
            upstream_retries: Cell::new(0),
            panics: Cell::new(0),
            tls_handshakes: Default::default(),
            tls_handshake_failures: Default::default(),
            tls_handshakes_queued: Cell::new(0),
            tunnels_open: Cell::new(0),
            tunnel_ends: Default::default(),
            compressed: Default::default(),
            aggregate_backends: Default::default(),
            aggregate_answers: Default::default(),
            by_route: RefCell::new(vec![0; (routes + 1) * METHODS.len() * CLASSES]),
            endpoints: RefCell::new(
                endpoints_per_upstream
                    .iter()
                    .map(|&n| vec![EndpointCounts::default(); n])
                    .collect(),
            ),
            breakers: RefCell::new(vec![BreakerCounts::default(); endpoints_per_upstream.len()]),
            policies: RefCell::new(Vec::new()),
            auth: RefCell::new(Vec::new()),
            ip_rules: RefCell::new(Vec::new()),
            cors: RefCell::new(Vec::new()),
            introspection: RefCell::new(Vec::new()),
            consumers: RefCell::new(consumers::TopConsumers::new(0)),
            cache: RefCell::new([0; CACHE_RESULTS]),
            cache_revalidations: RefCell::new([0; CACHE_REVALIDATIONS]),
            request_latency: RefCell::new(latency_histogram()),
            request_latency_sum_us: Cell::new(0),
            upstream_latency: RefCell::new(latency_histogram()),
            upstream_latency_sum_us: Cell::new(0),
        }
    }

    /// Resizes the per-route and per-endpoint tables for a new snapshot.
    /// Their counts restart (Prometheus treats that as a counter reset).
    pub fn resize(&self, routes: usize, endpoints_per_upstream: &[usize]) {
        *self.by_route.borrow_mut() = vec![0; (routes + 1) * METHODS.len() * CLASSES];
        *self.endpoints.borrow_mut() = endpoints_per_upstream
            .iter()
            .map(|&n| vec![EndpointCounts::default(); n])
            .collect();
        *self.breakers.borrow_mut() = vec![BreakerCounts::default(); endpoints_per_upstream.len()];
    }

    /// Counts a circuit-breaker event of upstream `upstream`.
    pub fn breaker(&self, upstream: usize, count: impl FnOnce(&mut BreakerCounts)) {
        if let Some(b) = self.breakers.borrow_mut().get_mut(upstream) {
            count(b);
        }
    }

    /// Sizes the per-policy and per-auth-provider counters (at start and
    /// after a reload).
    pub fn resize_policies(&self, snapshot: &crate::snapshot::Snapshot) {
        let (policies, auth_providers) = (snapshot.rate_limits.len(), snapshot.auth.len());
        *self.policies.borrow_mut() = vec![[0, 0]; policies];
        *self.ip_rules.borrow_mut() = vec![[0, 0]; snapshot.ip_rules.len()];
        *self.cors.borrow_mut() = vec![[0; CORS_OUTCOMES.len()]; snapshot.cors.len()];
        *self.auth.borrow_mut() = vec![[0; AUTH_OUTCOMES]; auth_providers];
        *self.introspection.borrow_mut() = vec![[0; INTROSPECTION_RESULTS]; auth_providers];
    }

    #[inline]
    /// Shows `top` consumers: each worker counts twice as many (see
    /// `consumers`). Counts restart only when `top` changes.
    pub fn set_top_consumers(&self, top: usize) {
        let mut consumers = self.consumers.borrow_mut();
        if consumers.capacity() != top * 2 {
            *consumers = consumers::TopConsumers::new(top * 2);
        }
    }

    /// A cache lookup ended with `result` (`phase::cache::CACHE_*`).
    #[inline]
    pub fn cache(&self, result: usize) {
        if let Some(c) = self.cache.borrow_mut().get_mut(result) {
            *c += 1;
        }
    }

    /// A revalidation of a stale cache entry ended; `background`: a
    /// stale-while-revalidate refresh rather than a client's request.
    pub fn cache_revalidation(&self, background: bool, result: Revalidated) {
        let at = usize::from(background) * 3 + result as usize;
        if let Some(c) = self.cache_revalidations.borrow_mut().get_mut(at) {
            *c += 1;
        }
    }

    /// A request from consumer `name` ended.
    #[inline]
    pub fn consumer(&self, name: &str) {
        self.consumers.borrow_mut().count(name);
    }

    /// An introspection call of `provider` ended with `result`.
    pub fn introspection(&self, provider: usize, result: usize) {
        if let Some(count) = self
            .introspection
            .borrow_mut()
            .get_mut(provider)
            .and_then(|counts| counts.get_mut(result))
        {
            *count += 1;
        }
    }

    pub fn auth(&self, provider: usize, outcome: usize) {
        if let Some(count) = self
            .auth
            .borrow_mut()
            .get_mut(provider)
            .and_then(|counts| counts.get_mut(outcome))
        {
            *count += 1;
        }
    }

    /// An IP rule admitted or refused a request.
    #[inline]
    pub fn ip_rule(&self, rule: usize, admitted: bool) {
        if let Some(counts) = self.ip_rules.borrow_mut().get_mut(rule) {
            counts[usize::from(!admitted)] += 1;
        }
    }

    /// A CORS policy judged a request (`CORS_*` outcome).
    #[inline]
    pub fn cors(&self, policy: usize, outcome: usize) {
        if let Some(c) = self
            .cors
            .borrow_mut()
            .get_mut(policy)
            .and_then(|counts| counts.get_mut(outcome))
        {
            *c += 1;
        }
    }

    #[inline]
    pub fn rate_limit(&self, policy: usize, allowed: bool) {
        if let Some(counts) = self.policies.borrow_mut().get_mut(policy) {
            counts[usize::from(!allowed)] += 1;
        }
    }

    #[inline]
    pub fn accepted(&self) {
        bump(&self.connections_accepted);
    }

    #[inline]
    pub fn refused(&self) {
        bump(&self.connections_refused);
    }

    #[inline]
    pub fn request(&self) {
        bump(&self.requests);
    }

    #[inline]
    pub fn failure(&self, f: Failure) {
        bump(&self.failures[f.index()]);
    }

    #[inline]
    pub fn reuse(&self) {
        bump(&self.upstream_reuses);
    }

    #[inline]
    pub fn retry(&self) {
        bump(&self.upstream_retries);
    }

    #[inline]
    pub fn panic(&self) {
        bump(&self.panics);
    }

    pub fn tls_handshake(&self, resumed: bool) {
        bump(&self.tls_handshakes[usize::from(resumed)]);
    }

    pub fn tls_handshake_failed(&self, index: usize) {
        if let Some(cell) = self.tls_handshake_failures.get(index) {
            bump(cell);
        }
    }

    /// An aggregate route's backend call ended (`BACKEND_RESULTS` index).
    pub fn aggregate_backend(&self, result: usize) {
        if let Some(c) = self.aggregate_backends.get(result) {
            bump(c);
        }
    }

    /// An aggregate route answered (`ANSWERS` index).
    pub fn aggregate_answer(&self, outcome: usize) {
        if let Some(c) = self.aggregate_answers.get(outcome) {
            bump(c);
        }
    }

    /// An answer is being compressed with `encoding`.
    pub fn compressed(&self, encoding: crate::policy::compress::Encoding) {
        bump(&self.compressed[encoding as usize]);
    }

    pub fn tls_handshake_queued(&self) {
        bump(&self.tls_handshakes_queued);
    }

    #[inline]
    pub fn bytes(&self, received: u64, sent: u64) {
        self.bytes_received
            .set(self.bytes_received.get() + received);
        self.bytes_sent.set(self.bytes_sent.get() + sent);
    }

    /// One finished exchange: route (None = no route), method, status and
    /// total time in microseconds.
    #[inline]
    pub fn exchange(&self, route: Option<usize>, method: usize, status: u16, micros: u64) {
        let class = usize::from(status / 100).min(CLASSES - 1);
        let mut table = self.by_route.borrow_mut();
        let routes = table.len() / (METHODS.len() * CLASSES);
        let route = route.unwrap_or(routes - 1).min(routes - 1);
        table[(route * METHODS.len() + method) * CLASSES + class] += 1;
        self.request_latency
            .borrow_mut()
            .saturating_record(micros.max(1));
        self.request_latency_sum_us
            .set(self.request_latency_sum_us.get() + micros);
    }

    /// Time from sending the request upstream to the response head.
    #[inline]
    pub fn upstream_latency(&self, micros: u64) {
        self.upstream_latency
            .borrow_mut()
            .saturating_record(micros.max(1));
        self.upstream_latency_sum_us
            .set(self.upstream_latency_sum_us.get() + micros);
    }

    #[inline]
    /// A route's retry policy wanted to retry a try that failed on this
    /// endpoint; `granted`: the upstream's retry budget allowed it.
    pub fn policy_retry(&self, upstream: usize, endpoint: usize, granted: bool) {
        if granted {
            bump(&self.upstream_retries);
        }
        if let Some(e) = self
            .endpoints
            .borrow_mut()
            .get_mut(upstream)
            .and_then(|u| u.get_mut(endpoint))
        {
            if granted {
                e.retried += 1;
            } else {
                e.budget_refused += 1;
            }
        }
    }

    pub fn connect(&self, upstream: usize, endpoint: usize, ok: bool) {
        if let Some(e) = self
            .endpoints
            .borrow_mut()
            .get_mut(upstream)
            .and_then(|u| u.get_mut(endpoint))
        {
            if ok {
                e.connects += 1;
            } else {
                e.connect_failures += 1;
            }
        }
    }

    /// An owned copy for the control side (allocates; called off the
    /// request path, in the worker's command tick).
    pub fn report(
        &self,
        worker: usize,
        open_connections: usize,
        pools: Vec<Vec<PoolGauge>>,
    ) -> WorkerReport {
        WorkerReport {
            worker,
            open_connections: open_connections as u64,
            connections_accepted: self.connections_accepted.get(),
            connections_refused: self.connections_refused.get(),
            requests: self.requests.get(),
            failures: std::array::from_fn(|i| self.failures[i].get()),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
            upstream_reuses: self.upstream_reuses.get(),
            upstream_retries: self.upstream_retries.get(),
            panics: self.panics.get(),
            tls_handshakes: std::array::from_fn(|i| self.tls_handshakes[i].get()),
            tls_handshake_failures: std::array::from_fn(|i| self.tls_handshake_failures[i].get()),
            tls_handshakes_queued: self.tls_handshakes_queued.get(),
            tunnels_open: self.tunnels_open.get(),
            compressed: std::array::from_fn(|i| self.compressed[i].get()),
            aggregate_backends: std::array::from_fn(|i| self.aggregate_backends[i].get()),
            aggregate_answers: std::array::from_fn(|i| self.aggregate_answers[i].get()),
            tunnel_ends: std::array::from_fn(|i| self.tunnel_ends[i].get()),
            by_route: self.by_route.borrow().clone(),
            endpoints: self.endpoints.borrow().clone(),
            breakers: self.breakers.borrow().clone(),
            policies: self.policies.borrow().clone(),
            auth: self.auth.borrow().clone(),
            ip_rules: self.ip_rules.borrow().clone(),
            cors: self.cors.borrow().clone(),
            introspection: self.introspection.borrow().clone(),
            consumers: self.consumers.borrow().snapshot(),
            cache: *self.cache.borrow(),
            cache_revalidations: *self.cache_revalidations.borrow(),
            cache_store: Default::default(),
            endpoints_down: 0,
            pools,
            request_latency: self.request_latency.borrow().clone(),
            request_latency_sum_us: self.request_latency_sum_us.get(),
            upstream_latency: self.upstream_latency.borrow().clone(),
            upstream_latency_sum_us: self.upstream_latency_sum_us.get(),
        }
    }
}

/// Gauges of one endpoint's pool in one worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolGauge {
    pub idle: u64,
    pub in_flight: u64,
}

/// A worker's metrics at one moment, sent to the control side.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub worker: usize,
    pub open_connections: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub requests: u64,
    pub failures: [u64; FAILURE_KINDS],
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub upstream_reuses: u64,
    pub upstream_retries: u64,
    pub panics: u64,
    pub tls_handshakes: [u64; 2],
    pub tls_handshake_failures: [u64; HANDSHAKE_FAILURES.len()],
    pub tls_handshakes_queued: u64,
    pub tunnels_open: u64,
    pub compressed: [u64; 2],
    pub aggregate_backends: [u64; 4],
    pub aggregate_answers: [u64; 3],
    pub tunnel_ends: [u64; TUNNEL_ENDS.len()],
    pub by_route: Vec<u64>,
    pub endpoints: Vec<Vec<EndpointCounts>>,
    /// Per upstream (queue lengths filled by the worker).
    pub breakers: Vec<BreakerCounts>,
    pub policies: Vec<[u64; 2]>,
    pub auth: Vec<[u64; AUTH_OUTCOMES]>,
    pub ip_rules: Vec<[u64; 2]>,
    pub cors: Vec<[u64; CORS_OUTCOMES.len()]>,
    pub introspection: Vec<[u64; INTROSPECTION_RESULTS]>,
    /// The consumers this worker counts, with their counts.
    pub consumers: Vec<(Box<str>, u64)>,
    /// Cache lookups by result.
    pub cache: [u64; CACHE_RESULTS],
    /// Revalidations by mode and result (`WorkerMetrics::cache_revalidation`).
    pub cache_revalidations: [u64; CACHE_REVALIDATIONS],
    /// The cache shard: objects, bytes, evictions (filled by the worker).
    pub cache_store: [u64; 3],
    /// Endpoints this worker holds out of traffic (filled by the worker).
    pub endpoints_down: u64,
    pub pools: Vec<Vec<PoolGauge>>,
    pub request_latency: Histogram<u64>,
    pub request_latency_sum_us: u64,
    pub upstream_latency: Histogram<u64>,
    pub upstream_latency_sum_us: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_counts_survive_a_reload_that_keeps_top_consumers() {
        let m = WorkerMetrics::new(1, &[]);
        m.set_top_consumers(2);
        m.consumer("alice");
        m.set_top_consumers(2);
        m.consumer("alice");
        assert_eq!(m.consumers.borrow().snapshot(), [("alice".into(), 2)]);
        m.set_top_consumers(3);
        assert!(
            m.consumers.borrow().snapshot().is_empty(),
            "resized: restarted"
        );
        m.set_top_consumers(0);
        m.consumer("bob");
        assert!(m.consumers.borrow().snapshot().is_empty());
    }

    #[test]
    fn exchanges_land_in_their_route_method_and_class() {
        let m = WorkerMetrics::new(2, &[1]);
        m.exchange(Some(1), method_index(b"POST"), 201, 150);
        m.exchange(None, method_index(b"GET"), 404, 20);
        m.exchange(Some(9), method_index(b"BREW"), 502, 20);
        let r = m.report(0, 0, vec![]);
        let at = |route: usize, method: usize, class: usize| {
            r.by_route[(route * METHODS.len() + method) * CLASSES + class]
        };
        assert_eq!(at(1, 2, 2), 1);
        assert_eq!(at(2, 0, 4), 1, "no route counts in the last row");
        assert_eq!(
            at(2, 7, 5),
            1,
            "out-of-range route clamps; unknown method is other"
        );
        assert_eq!(r.request_latency.len(), 3);
        assert_eq!(r.request_latency_sum_us, 190);
    }
}
