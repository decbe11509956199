//! [warm] Everything one worker owns: the current snapshot, upstream pools
//! and balancers, counters, and drain state. `Rc`, never shared with another
//! thread, so nothing here needs a lock or an atomic.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::{CancelHandle, Canceller};

use crate::failure::{FAILURE_KINDS, Failure};
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamState;

use super::proxy::UpstreamConn;

/// Plain per-worker counters (single writer: this worker's thread).
#[derive(Default)]
pub struct WorkerStats {
    pub connections_accepted: Cell<u64>,
    pub connections_refused: Cell<u64>,
    pub requests: Cell<u64>,
    pub responses_by_class: [Cell<u64>; 6],
    pub failures: [Cell<u64>; FAILURE_KINDS],
    pub upstream_connects: Cell<u64>,
    pub upstream_reuses: Cell<u64>,
    pub upstream_retries: Cell<u64>,
    pub panics: Cell<u64>,
}

impl WorkerStats {
    #[inline]
    pub fn bump(cell: &Cell<u64>) {
        cell.set(cell.get() + 1);
    }

    #[inline]
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        Self::bump(&self.responses_by_class[class]);
    }

    #[inline]
    pub fn failure(&self, f: Failure) {
        Self::bump(&self.failures[f.index()]);
    }
}

pub struct Shard {
    pub id: usize,
    /// `Rc<Arc<_>>`: requests clone the Rc (a plain increment), never the
    /// Arc (an atomic read-modify-write shared with other cores).
    #[allow(clippy::redundant_allocation)]
    snapshot: RefCell<Rc<Arc<Snapshot>>>,
    pub upstreams: RefCell<Vec<UpstreamState<UpstreamConn>>>,
    pub stats: WorkerStats,
    pub draining: Cell<bool>,
    pub active_connections: Cell<usize>,
    /// Cancels every idle keep-alive read and pending accept at once (drain).
    idle_canceller: RefCell<Canceller>,
}

impl Shard {
    pub fn new(id: usize, snapshot: Arc<Snapshot>) -> Shard {
        let upstreams = snapshot
            .upstreams
            .iter()
            .map(|spec| UpstreamState::new(spec, id))
            .collect();
        Shard {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            upstreams: RefCell::new(upstreams),
            stats: WorkerStats::default(),
            draining: Cell::new(false),
            active_connections: Cell::new(0),
            idle_canceller: RefCell::new(Canceller::new()),
        }
    }

    #[inline]
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }

    pub fn idle_cancel_handle(&self) -> CancelHandle {
        self.idle_canceller.borrow().handle()
    }

    /// Stop accepting and wake every idle connection so it closes.
    pub fn begin_drain(&self) {
        if self.draining.replace(true) {
            return;
        }
        let old = std::mem::take(&mut *self.idle_canceller.borrow_mut());
        *self.idle_canceller.borrow_mut() = old.cancel();
        for u in self.upstreams.borrow_mut().iter_mut() {
            for p in &mut u.pools {
                p.clear();
            }
        }
    }
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
