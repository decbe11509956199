//! [warm] Everything one worker owns: the current snapshot, upstream pools
//! and balancers, counters, and drain state. `Rc`, never shared with another
//! thread, so nothing here needs a lock or an atomic.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{CancelHandle, Canceller};

use crate::metrics::WorkerMetrics;
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamState;

use crate::upstream::UpstreamConn;

/// Output buffers lent to connections for the length of one exchange, so an
/// idle keep-alive connection holds no write buffer. Taking and giving back
/// is a Vec pop/push: no allocation once the pool has warmed up.
pub struct BufferPool {
    free: RefCell<Vec<BytesMut>>,
    size: usize,
    max_free: usize,
}

impl BufferPool {
    pub fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::with_capacity(max_free)),
            size,
            max_free,
        }
    }

    #[inline]
    pub fn take(&self) -> BytesMut {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Keeps the buffer for reuse unless the pool is full or the buffer
    /// grew far past the usual size (a one-off large head is not hoarded).
    #[inline]
    pub fn give(&self, mut buf: BytesMut) {
        if buf.capacity() < self.size || buf.capacity() > self.size * 8 {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }
}

/// One config generation as this worker runs it: the snapshot and the
/// upstream pools and balancers built for it. A request takes the current
/// generation once, when its head has arrived, and uses it to the end, so a
/// reload never pairs an old route's upstream index with new pool state.
/// Requests in flight keep their generation alive; it is dropped (closing
/// its remaining idle connections) when the last of them finishes.
pub struct Generation {
    pub snapshot: Arc<Snapshot>,
    pub upstreams: RefCell<Vec<UpstreamState<UpstreamConn>>>,
    /// This worker's rate-limit state for this snapshot's policies (its
    /// buckets and windows, and its grants of shared limits); a reload
    /// carries the state of unchanged policies over (`Limiter::carry_over`).
    pub limiter: RefCell<crate::ratelimit::Limiter>,
    /// Verified tokens, per auth provider (`None` for providers that are
    /// not JWT). A reload starts them empty: keys may have changed.
    pub token_caches: RefCell<Vec<Option<crate::auth::token_cache::TokenCache>>>,
    /// Token introspection calls under way (one per token at a time).
    pub lookups: super::single_flight::Lookups,
    /// Per upstream: this worker's side of its circuit breaker. Outside
    /// the `upstreams` RefCell: requests hold places across awaits.
    pub admission: Vec<Admission>,
}

/// One upstream's circuit breaker in one worker: the requests let
/// through (and the queue of those waiting), and the retries under way.
#[derive(Default)]
pub struct Admission {
    pub gate: super::gate::Gate,
    pub retries: Cell<u32>,
}

impl Generation {
    /// Marks the endpoints `down` (health checks) or `ejected` (outlier
    /// detection) name out of traffic in this generation's upstreams.
    pub fn apply_health(
        &self,
        down: &crate::upstream::health::DownEndpoints,
        ejected: &crate::upstream::health::DownEndpoints,
    ) {
        let now = std::time::Instant::now();
        for (state, spec) in self
            .upstreams
            .borrow_mut()
            .iter_mut()
            .zip(&self.snapshot.upstreams)
        {
            state.apply_health(spec, down, ejected, now);
        }
    }

    /// A generation for `snapshot`, taking over the pools and balancer of
    /// every upstream that `previous` ran unchanged (same name, endpoints,
    /// balancing and pool settings); changed and removed ones start fresh
    /// and their old pools drain with the old generation.
    pub fn next(
        snapshot: Arc<Snapshot>,
        previous: Option<&Generation>,
        worker: usize,
    ) -> Generation {
        let upstreams = snapshot
            .upstreams
            .iter()
            .map(|spec| {
                let reusable = previous.and_then(|prev| {
                    let index = prev
                        .snapshot
                        .upstreams
                        .iter()
                        .position(|old| same_upstream(old, spec))?;
                    let mut states = prev.upstreams.borrow_mut();
                    // Leave a fresh state behind for the old generation's
                    // requests still in flight.
                    Some(std::mem::replace(
                        &mut states[index],
                        UpstreamState::new(spec, worker),
                    ))
                });
                reusable.unwrap_or_else(|| {
                    let mut fresh = UpstreamState::new(spec, worker);
                    if let Some(prev) = previous {
                        keep_pools_of_unchanged_addresses(prev, spec, &mut fresh);
                    }
                    fresh
                })
            })
            .collect();
        let limiter = RefCell::new(match previous {
            Some(prev) => crate::ratelimit::Limiter::carry_over(
                &mut prev.limiter.borrow_mut(),
                &prev.snapshot.rate_limits,
                &snapshot.rate_limits,
                snapshot.limits_id,
            ),
            None => crate::ratelimit::Limiter::new(
                &snapshot.rate_limits,
                snapshot.limits_id,
                snapshot.workers,
            ),
        });
        let token_caches = snapshot
            .auth
            .iter()
            .map(|p| match &p.kind {
                crate::auth::ProviderKind::Jwt(jwt) => {
                    Some(crate::auth::token_cache::TokenCache::new(
                        jwt.cache_size,
                        jwt.cache_ttl.as_secs(),
                    ))
                }
                crate::auth::ProviderKind::Introspection(i) => Some(
                    crate::auth::token_cache::TokenCache::new(i.cache_size, i.cache_ttl.as_secs())
                        .with_grace(i.grace.as_secs()),
                ),
                crate::auth::ProviderKind::ApiKey(_) => None,
            })
            .collect();
        let upstream_count = snapshot.upstreams.len();
        Generation {
            snapshot,
            upstreams: RefCell::new(upstreams),
            limiter,
            token_caches: RefCell::new(token_caches),
            lookups: Default::default(),
            admission: (0..upstream_count).map(|_| Admission::default()).collect(),
        }
    }
}

/// An upstream whose endpoints changed (a reload, a DNS answer) keeps
/// the idle connections of the addresses it still has, if they were made
/// with the same TLS and pool settings.
fn keep_pools_of_unchanged_addresses(
    prev: &Generation,
    spec: &crate::snapshot::UpstreamSpec,
    fresh: &mut UpstreamState<UpstreamConn>,
) {
    let Some(index) = prev.snapshot.upstreams.iter().position(|old| {
        old.name == spec.name
            && old.tls == spec.tls
            && old.pool_max_idle == spec.pool_max_idle
            && old.pool_idle_timeout == spec.pool_idle_timeout
    }) else {
        return;
    };
    let old_spec = &prev.snapshot.upstreams[index];
    let mut states = prev.upstreams.borrow_mut();
    let old = &mut states[index];
    for (i, endpoint) in spec.endpoints.iter().enumerate() {
        if let Some(j) = old_spec
            .endpoints
            .iter()
            .position(|e| e.addr == endpoint.addr)
        {
            std::mem::swap(&mut fresh.pools[i], &mut old.pools[j]);
        }
    }
}

fn same_upstream(a: &crate::snapshot::UpstreamSpec, b: &crate::snapshot::UpstreamSpec) -> bool {
    a.name == b.name
        && a.balance == b.balance
        && a.retry_budget == b.retry_budget
        && a.hash_key == b.hash_key
        && a.pool_max_idle == b.pool_max_idle
        && a.pool_idle_timeout == b.pool_idle_timeout
        // Pooled connections carry their TLS settings.
        && a.tls == b.tls
        && a.endpoints.len() == b.endpoints.len()
        && a.endpoints
            .iter()
            .zip(&b.endpoints)
            .all(|(x, y)| x.addr == y.addr && x.weight == y.weight)
}

/// One listener's accept loop, as the shard tracks it.
pub struct ListenerHandle {
    pub addr: Option<std::net::SocketAddr>,
    pub stop: Rc<Cell<bool>>,
    pub canceller: Canceller,
}

pub struct Shard {
    pub id: usize,
    pub listeners: RefCell<Vec<ListenerHandle>>,
    /// Requests clone the Rc (a plain increment), never an Arc.
    current: RefCell<Rc<Generation>>,
    pub metrics: WorkerMetrics,
    pub draining: Cell<bool>,
    /// When a drain ends (set with `draining`): open tunnels close by then.
    pub drain_deadline: Cell<Option<std::time::Instant>>,
    /// Tasks of open tunnels, woken when a drain begins.
    pub tunnel_wakers: RefCell<Vec<std::task::Waker>>,
    pub active_connections: Cell<usize>,
    /// Write buffers for client exchanges.
    pub out_buffers: BufferPool,
    pub request_ids: RefCell<super::request_id::IdGenerator>,
    /// This worker's side of the access log, if one is configured.
    pub log: Option<crate::accesslog::WorkerLog>,
    /// Cancels every idle keep-alive read and pending accept at once (drain).
    idle_canceller: RefCell<Canceller>,
    /// Caps TLS handshakes in flight on this worker.
    pub handshakes: super::gate::Gate,
    /// Keys fetched from JWKS URLs, as the fetcher last published them.
    pub jwks: crate::auth::jwks::WorkerKeys,
    /// This worker's response cache shard (kept across reloads).
    pub cache: RefCell<crate::cache::store::Store>,
    /// Cache misses being fetched: one fetch per key at a time.
    pub cache_fetches: super::single_flight::Lookups,
    /// Background refreshes (stale-while-revalidate) running now.
    pub cache_refreshes: Cell<usize>,
    /// Scratch buffers for cache keys (primary, secondary): building a
    /// key allocates nothing once they have grown.
    pub cache_keys: RefCell<(Vec<u8>, Vec<u8>)>,
    /// Endpoints the health checks hold out of traffic, as the prober last
    /// said; applied to every generation this worker installs.
    pub down: RefCell<Arc<crate::upstream::health::DownEndpoints>>,
    /// Endpoints outlier detection has ejected, as it last said.
    pub ejected: RefCell<Arc<crate::upstream::health::DownEndpoints>>,
    /// To the outlier detection thread: this worker's tries per endpoint.
    pub outcome_reports: Option<crossbeam_channel::Sender<crate::upstream::outlier::OutcomeReport>>,
}

impl Shard {
    pub fn new(id: usize, snapshot: Arc<Snapshot>) -> Shard {
        let cache_memory = snapshot.cache_memory_per_worker;
        let metrics = WorkerMetrics::new(snapshot.routes.len(), &endpoint_counts(&snapshot));
        metrics.resize_policies(&snapshot);
        metrics.set_top_consumers(snapshot.top_consumers);
        Shard {
            id,
            current: RefCell::new(Rc::new(Generation::next(snapshot, None, id))),
            listeners: RefCell::new(Vec::new()),
            metrics,
            draining: Cell::new(false),
            drain_deadline: Cell::new(None),
            tunnel_wakers: RefCell::new(Vec::new()),
            active_connections: Cell::new(0),
            out_buffers: BufferPool::new(8 * 1024, 4096),
            request_ids: RefCell::new(super::request_id::IdGenerator::new(id)),
            log: None,
            idle_canceller: RefCell::new(Canceller::new()),
            handshakes: Default::default(),
            jwks: Default::default(),
            cache: RefCell::new(crate::cache::store::Store::new(cache_memory)),
            cache_fetches: Default::default(),
            cache_refreshes: Cell::new(0),
            cache_keys: RefCell::new((Vec::with_capacity(256), Vec::with_capacity(64))),
            down: Default::default(),
            ejected: Default::default(),
            outcome_reports: None,
        }
    }

    /// The prober's latest word on which endpoints are down.
    pub fn set_down(&self, down: Arc<crate::upstream::health::DownEndpoints>) {
        *self.down.borrow_mut() = down;
        self.generation()
            .apply_health(&self.down.borrow(), &self.ejected.borrow());
    }

    /// Outlier detection's latest word on which endpoints are ejected.
    pub fn set_ejected(&self, ejected: Arc<crate::upstream::health::DownEndpoints>) {
        *self.ejected.borrow_mut() = ejected;
        self.generation()
            .apply_health(&self.down.borrow(), &self.ejected.borrow());
    }

    /// Sends outlier detection the tries counted since the last report,
    /// for the upstreams that have it.
    pub fn report_outcomes(&self) {
        let Some(reports) = &self.outcome_reports else {
            return;
        };
        let generation = self.generation();
        let mut windows = Vec::new();
        for (state, spec) in generation
            .upstreams
            .borrow_mut()
            .iter_mut()
            .zip(&generation.snapshot.upstreams)
        {
            if spec.outlier_detection.is_none() {
                continue;
            }
            for (i, window) in state.take_outcomes() {
                windows.push((spec.name.clone(), spec.endpoints[i].addr, window));
            }
        }
        if !windows.is_empty() {
            let _ = reports.send(crate::upstream::outlier::OutcomeReport { windows });
        }
    }

    /// The current generation (snapshot + upstream state).
    #[inline]
    pub fn generation(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }

    /// Switches to a new snapshot; requests that start from now on use it.
    pub fn reload(&self, snapshot: Arc<Snapshot>) {
        let previous = self.generation();
        let next = Generation::next(snapshot, Some(&previous), self.id);
        next.apply_health(&self.down.borrow(), &self.ejected.borrow());
        self.metrics
            .resize(next.snapshot.routes.len(), &endpoint_counts(&next.snapshot));
        self.metrics.resize_policies(&next.snapshot);
        self.metrics.set_top_consumers(next.snapshot.top_consumers);
        self.cache
            .borrow_mut()
            .set_budget(next.snapshot.cache_memory_per_worker);
        *self.current.borrow_mut() = Rc::new(next);
    }

    pub fn idle_cancel_handle(&self) -> CancelHandle {
        self.idle_canceller.borrow().handle()
    }

    /// Stop accepting and wake every idle connection so it closes.
    pub fn begin_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        for waker in self.tunnel_wakers.borrow_mut().drain(..) {
            waker.wake();
        }
        let old = std::mem::take(&mut *self.idle_canceller.borrow_mut());
        *self.idle_canceller.borrow_mut() = old.cancel();
        for l in self.listeners.borrow_mut().drain(..) {
            l.stop.set(true);
            drop(l.canceller.cancel());
        }
        for u in self.generation().upstreams.borrow_mut().iter_mut() {
            for p in &mut u.pools {
                p.clear();
            }
        }
    }
}

/// Endpoints per upstream, to size per-endpoint metric tables.
pub fn endpoint_counts(snapshot: &Snapshot) -> Vec<usize> {
    snapshot
        .upstreams
        .iter()
        .map(|u| u.endpoints.len())
        .collect()
}

/// Counts a connection as active for as long as it lives.
pub struct ConnectionGuard(Rc<Shard>);

impl ConnectionGuard {
    pub fn new(shard: Rc<Shard>) -> ConnectionGuard {
        shard
            .active_connections
            .set(shard.active_connections.get() + 1);
        ConnectionGuard(shard)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .active_connections
            .set(self.0.active_connections.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_buffers_and_drops_outsized_ones() {
        let pool = BufferPool::new(1024, 2);
        let a = pool.take();
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.take().as_ptr(), ptr, "the same buffer comes back");
        pool.give(BytesMut::with_capacity(64 * 1024));
        assert!(
            pool.free.borrow().is_empty(),
            "a buffer that grew 64x is not kept"
        );
        for _ in 0..3 {
            pool.give(BytesMut::with_capacity(1024));
        }
        assert_eq!(pool.free.borrow().len(), 2, "bounded");
    }
}
