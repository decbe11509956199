//! [hot] Upstreams as one worker sees them: per-endpoint keep-alive pools,
//! the balancer state, and in-flight counts. Built from the Snapshot's
//! `UpstreamSpec`s when a worker starts (or gets a new snapshot).

pub mod balance;
pub mod conn;
pub mod fetch;
pub mod hash;
pub mod health;
pub mod pool;
pub mod retry;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use crate::snapshot::UpstreamSpec;

pub use balance::Balancer;
pub use conn::UpstreamConn;
pub use pool::Pool;

/// One upstream's per-worker state.
#[derive(Debug)]
pub struct UpstreamState<C> {
    pub balancer: Balancer,
    pub pools: Vec<Pool<C>>,
    /// In-flight requests per endpoint. Shared (`Rc`) with the requests
    /// that counted themselves in, so that when a reload hands this state
    /// to the new generation, requests still running under the old one
    /// decrement the counts the balancer now reads.
    pub outstanding: Rc<[Cell<u32>]>,
    /// Endpoints health checks hold out of traffic (`down[i]`).
    pub down: Vec<bool>,
    /// How many retries this worker may still make to this upstream.
    pub retry_budget: retry::RetryBudget,
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
            outstanding: spec.endpoints.iter().map(|_| Cell::new(0)).collect(),
            down: vec![false; spec.endpoints.len()],
            retry_budget: retry::RetryBudget::new(spec.retry_budget),
        }
    }

    /// Marks the endpoints `down` names for this upstream out of traffic,
    /// and every other one in.
    pub fn apply_health(&mut self, spec: &UpstreamSpec, down: &health::DownEndpoints) {
        for (flag, endpoint) in self.down.iter_mut().zip(&spec.endpoints) {
            *flag = down.contains(&spec.name, endpoint.addr);
        }
    }

    pub fn evict_expired(&mut self, now: Instant) -> usize {
        self.pools.iter_mut().map(|p| p.evict_expired(now)).sum()
    }
}
