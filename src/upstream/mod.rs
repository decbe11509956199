//! [hot] Upstreams as one worker sees them: per-endpoint keep-alive pools,
//! the balancer state, and in-flight counts. Built from the Snapshot's
//! `UpstreamSpec`s when a worker starts (or gets a new snapshot).

pub mod balance;
pub mod breaker;
pub mod conn;
pub mod fetch;
pub mod hash;
pub mod health;
pub mod outlier;
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
    /// Endpoints out of traffic (`down[i]`): health checks hold them down
    /// or outlier detection ejected them.
    pub down: Vec<bool>,
    /// Since when each endpoint is back in traffic, while its slow start
    /// lasts.
    pub back_since: Vec<Option<Instant>>,
    /// Some endpoint is in its slow start.
    pub ramping: bool,
    /// Each endpoint's tries since this worker last reported them to
    /// outlier detection.
    pub outcomes: Vec<outlier::Window>,
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
            back_since: vec![None; spec.endpoints.len()],
            ramping: false,
            outcomes: vec![outlier::Window::default(); spec.endpoints.len()],
            retry_budget: retry::RetryBudget::new(spec.retry_budget),
        }
    }

    /// Marks the endpoints that `down` (health checks) or `ejected`
    /// (outlier detection) name for this upstream out of traffic, and
    /// every other one in; one coming back starts its slow start at `now`.
    pub fn apply_health(
        &mut self,
        spec: &UpstreamSpec,
        down: &health::DownEndpoints,
        ejected: &health::DownEndpoints,
        now: Instant,
    ) {
        for (i, endpoint) in spec.endpoints.iter().enumerate() {
            let out = down.contains(&spec.name, endpoint.addr)
                || ejected.contains(&spec.name, endpoint.addr);
            if out {
                self.back_since[i] = None;
            } else if self.down[i] && !spec.slow_start.is_zero() {
                self.back_since[i] = Some(now);
            }
            self.down[i] = out;
        }
        self.ramping = self.back_since.iter().any(Option::is_some);
    }

    /// Whether to pass over `endpoint`, just picked, for its slow start:
    /// its share of traffic grows in proportion to the time it has been
    /// back (from a tenth), `random` drawing which requests it gets.
    pub fn slow_start_declines(
        &mut self,
        spec: &UpstreamSpec,
        endpoint: usize,
        now: Instant,
        random: u64,
    ) -> bool {
        let Some(since) = self.back_since[endpoint] else {
            return false;
        };
        let back_for = now.saturating_duration_since(since);
        if back_for >= spec.slow_start {
            self.back_since[endpoint] = None;
            self.ramping = self.back_since.iter().any(Option::is_some);
            return false;
        }
        let share = (back_for.as_micros() * 1024 / spec.slow_start.as_micros().max(1)) as u64;
        random % 1024 >= share.max(102)
    }

    /// Takes the outcome windows that hold tries, to report them.
    pub fn take_outcomes(&mut self) -> impl Iterator<Item = (usize, outlier::Window)> + '_ {
        self.outcomes
            .iter_mut()
            .enumerate()
            .filter(|(_, w)| !w.is_empty())
            .map(|(i, w)| (i, std::mem::take(w)))
    }

    pub fn evict_expired(&mut self, now: Instant) -> usize {
        self.pools.iter_mut().map(|p| p.evict_expired(now)).sum()
    }
}
