//! [hot] Upstreams as one worker sees them: per-endpoint keep-alive pools,
//! the balancer state, and in-flight counts. Built from the Snapshot's
//! `UpstreamSpec`s when a worker starts (or gets a new snapshot).

pub mod balance;
pub mod hash;
pub mod pool;

use std::time::Instant;

use crate::snapshot::UpstreamSpec;

pub use balance::Balancer;
pub use pool::Pool;

/// One upstream's per-worker state.
#[derive(Debug)]
pub struct UpstreamState<C> {
    pub balancer: Balancer,
    pub pools: Vec<Pool<C>>,
    pub outstanding: Vec<u32>,
}

impl<C> UpstreamState<C> {
    pub fn new(spec: &UpstreamSpec, worker_id: usize) -> Self {
        UpstreamState {
            balancer: Balancer::new(spec, worker_id as u64 + 1),
            pools: spec
                .endpoints
                .iter()
                .map(|_| Pool::new(spec.pool_max_idle, spec.pool_idle_timeout))
                .collect(),
            outstanding: vec![0; spec.endpoints.len()],
        }
    }

    pub fn evict_expired(&mut self, now: Instant) -> usize {
        self.pools.iter_mut().map(|p| p.evict_expired(now)).sum()
    }
}
