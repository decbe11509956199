//! [hot] Node and cluster scope, the worker's side: one limit shared by
//! every worker (and, for cluster scope, every node), enforced without a
//! lock or an atomic on the request path.
//!
//! The aggregator (`aggregator.rs`) keeps the exact state of each key's
//! limit from the workers' reports and publishes it as a `View`: what was
//! left at time `at`. A worker admits a request while the requests it has
//! admitted since that view are fewer than its 1/N part of what is left now
//! (the view's figure plus refill since `at`, rounded up). Because every
//! worker takes 1/N of the same figure, the node as a whole never admits
//! more than is left (plus the rounding, N − 1); because the figure is
//! what is *left*, a worker that gets all the traffic keeps taking 1/N of
//! an ever-fresh remainder and so gets the whole limit, never a static 1/N.
//!
//! All workers switch to a new view at the same clock instant
//! (`effective`, a couple of sync intervals after the aggregator computed
//! it): a worker still on an older, larger figure while the others were
//! already on a newer one is what would let the node overshoot.
//! docs/rate-limiting.md has the argument and the measured figures.

use super::bucket::Decision;
use crate::snapshot::LimitKind;

const NANOS: i128 = 1_000_000_000;

/// What was left of one key's limit (for this node) at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Token buckets: units (1/`per_nanos` of a token) at `at`, negative
    /// while the key is in debt. Windows: requests left in the window that
    /// starts at `at`.
    pub available: i128,
    pub at: u64,
    /// The limit is this node's 1/`nodes` part of a cluster limit (1 for
    /// node scope): refill and capacity are divided by it.
    pub nodes: u32,
    /// This worker's part of what is left, in 1/65536ths; 0 means an equal
    /// part (1/N). Parts follow each worker's recent demand and sum to the
    /// whole across workers.
    pub share: u32,
}

/// `View::share` denominator.
pub const SHARE_ONE: u32 = 1 << 16;

impl View {
    /// A key nobody has used: the whole limit (this node's part of it).
    pub fn fresh(kind: LimitKind, now: u64, nodes: u32) -> View {
        let nodes = nodes.max(1);
        match kind {
            LimitKind::Bucket { rate, burst } => View {
                available: i128::from(burst) * i128::from(rate.per_nanos) / i128::from(nodes),
                at: now,
                nodes,
                share: 0,
            },
            LimitKind::Window {
                limit,
                window_nanos,
            } => View {
                available: i128::from(limit.div_ceil(u64::from(nodes))),
                at: window_start(now, window_nanos),
                nodes,
                share: 0,
            },
        }
    }

    /// Tokens (requests) left at `now`, the refill since `at` included.
    pub fn tokens(&self, kind: LimitKind, now: u64) -> i128 {
        match kind {
            LimitKind::Bucket { rate, burst } => {
                let one = i128::from(rate.per_nanos.max(1));
                self.units(rate, burst, now).div_euclid(one)
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                if window_start(now, window_nanos) > self.at {
                    i128::from(limit.div_ceil(self.nodes.max(1) as u64))
                } else {
                    self.available
                }
            }
        }
    }

    fn units(&self, rate: crate::ratelimit::Rate, burst: u64, now: u64) -> i128 {
        let nodes = i128::from(self.nodes.max(1));
        let cap = i128::from(burst) * i128::from(rate.per_nanos) / nodes;
        let elapsed = i128::from(now.saturating_sub(self.at));
        (self.available + elapsed * i128::from(rate.tokens) / nodes).min(cap)
    }

    /// Whether this view is as good as a fresh one (a worker need not keep
    /// an entry for it).
    pub fn is_full(&self, kind: LimitKind, now: u64) -> bool {
        self.tokens(kind, now) >= View::fresh(kind, now, self.nodes).tokens(kind, now)
    }
}

pub fn window_start(now: u64, window_nanos: u64) -> u64 {
    now - now % window_nanos.max(1)
}

/// A view that takes effect later, with the worker's admissions it does
/// not yet count.
#[derive(Debug, Clone, Copy)]
struct Pending {
    effective: u64,
    view: View,
    used: u64,
}

/// One key's node- or cluster-scope state in one worker.
#[derive(Debug, Clone)]
pub struct SharedSlot {
    current: View,
    /// Requests admitted here that `current` does not count.
    used: u64,
    next: Option<Pending>,
    /// Running totals of admissions and of all requests (reported).
    admitted: u64,
    attempts: u64,
    incarnation: u32,
    /// Window policies: the window `window_admitted` counts in.
    window: u64,
    window_admitted: u64,
    /// Listed in the report being built.
    pub queued: bool,
}

impl SharedSlot {
    pub fn new(kind: LimitKind, now: u64, nodes: u32, incarnation: u32) -> SharedSlot {
        let current = View::fresh(kind, now, nodes);
        SharedSlot {
            current,
            used: 0,
            next: None,
            admitted: 0,
            attempts: 0,
            incarnation,
            window: current.at,
            window_admitted: 0,
            queued: false,
        }
    }

    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    fn promote(&mut self, now: u64) {
        if let Some(p) = self.next
            && now >= p.effective
        {
            self.current = p.view;
            self.used = p.used;
            self.next = None;
        }
    }

    /// Counts one request against this worker's part of the shared limit.
    pub fn take(&mut self, kind: LimitKind, now: u64, workers: u32) -> Decision {
        self.promote(now);
        let workers = i128::from(workers.max(1));
        let (tokens, used) = match kind {
            LimitKind::Bucket { .. } => (self.current.tokens(kind, now), self.used),
            LimitKind::Window { window_nanos, .. } => {
                let start = window_start(now, window_nanos);
                if start != self.window {
                    self.window = start;
                    self.window_admitted = 0;
                }
                // Admissions from an earlier window never count in this one.
                let used = if self.current.at < start {
                    self.window_admitted
                } else {
                    self.used.min(self.window_admitted)
                };
                (self.current.tokens(kind, now), used)
            }
        };
        let left = tokens.max(0) as u128;
        let allowance = match self.current.share {
            0 => left.div_ceil(workers as u128),
            share => (left * u128::from(share)).div_ceil(u128::from(SHARE_ONE)),
        } as u64;
        let allowed = used < allowance;
        self.attempts += 1;
        if allowed {
            self.used += 1;
            if let Some(p) = &mut self.next {
                p.used += 1;
            }
            self.admitted += 1;
            self.window_admitted += 1;
        }
        let mut decision = self.decision(
            kind,
            now,
            allowed,
            tokens,
            used + u64::from(allowed),
            workers,
        );
        decision.defer = !allowed && tokens > i128::from(used);
        decision
    }

    fn decision(
        &self,
        kind: LimitKind,
        now: u64,
        allowed: bool,
        tokens: i128,
        used: u64,
        workers: i128,
    ) -> Decision {
        let nodes = i128::from(self.current.nodes.max(1));
        let remaining = if allowed {
            (tokens - i128::from(used)).max(0) as u64
        } else {
            0
        };
        match kind {
            LimitKind::Bucket { rate, burst } => {
                let per_ns = (i128::from(rate.tokens) / nodes).max(1);
                let one = i128::from(rate.per_nanos.max(1));
                let units = self.current.units(rate, burst, now);
                let cap = i128::from(burst) * one / nodes;
                let secs = |units_needed: i128| {
                    ((units_needed.max(0) / per_ns) as u128).div_ceil(NANOS as u128) as u64
                };
                // A refused client may come back once this worker's part has
                // grown by a token: the node-wide figure must gain about
                // used ÷ share (N × used for an equal share).
                let parts = match self.current.share {
                    0 => workers,
                    share => (i128::from(SHARE_ONE) / i128::from(share)).max(1),
                };
                let needed = one * (parts * i128::from(used) + 1) - units;
                Decision {
                    allowed,
                    limit: burst,
                    remaining,
                    reset_secs: secs(cap - units),
                    retry_after_secs: if allowed { 0 } else { secs(needed).max(1) },
                    defer: false,
                }
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                let end = window_start(now, window_nanos) + window_nanos;
                let reset = (u128::from(end - now)).div_ceil(NANOS as u128) as u64;
                Decision {
                    allowed,
                    limit,
                    remaining,
                    reset_secs: reset,
                    retry_after_secs: if allowed { 0 } else { reset.max(1) },
                    defer: false,
                }
            }
        }
    }

    /// Takes a view from the aggregator. `counted` is the running total of
    /// this entry's admissions the view already counts (if the view knew
    /// this incarnation of the entry).
    pub fn schedule(
        &mut self,
        view: View,
        effective: u64,
        incarnation: u32,
        counted: u64,
        now: u64,
    ) {
        self.promote(now);
        let used = if incarnation == self.incarnation {
            self.admitted.saturating_sub(counted)
        } else {
            self.admitted
        };
        if now >= effective {
            self.current = view;
            self.used = used;
            self.next = None;
        } else {
            self.next = Some(Pending {
                effective,
                view,
                used,
            });
        }
    }

    /// Back to the state of a key nobody has used: evicting it loses
    /// nothing. (An entry holding an unequal share is not: dropping it
    /// would hand this worker an equal share that the others' parts do not
    /// leave room for.)
    pub fn is_fresh(&self, kind: LimitKind, now: u64) -> bool {
        !self.queued
            && self.next.is_none()
            && self.used == 0
            && self.current.share == 0
            && self.current.is_full(kind, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn each_worker_takes_its_part_of_what_is_left() {
        let kind = LimitKind::Window {
            limit: 100,
            window_nanos: 60 * S,
        };
        let mut a = SharedSlot::new(kind, 0, 1, 1);
        let admitted = (0..100).filter(|_| a.take(kind, 1, 4).allowed).count();
        assert_eq!(admitted, 25, "a quarter of a fresh limit before any sync");
        // The aggregator counted those 25: 75 left; this worker takes a quarter.
        let view = View {
            available: 75,
            at: 0,
            nodes: 1,
            share: 0,
        };
        a.schedule(view, 2, 1, 25, 1);
        assert!(
            !a.take(kind, 1, 4).allowed,
            "the old view (its quarter spent) is in force until 2"
        );
        let more = (0..100).filter(|_| a.take(kind, 2, 4).allowed).count();
        assert_eq!(more as u64, 75u64.div_ceil(4), "a quarter of the 75 left");
    }

    #[test]
    fn the_refill_since_the_view_is_shared_too() {
        let rate = Rate {
            tokens: 100,
            per_nanos: S,
        };
        let kind = LimitKind::Bucket { rate, burst: 100 };
        let mut a = SharedSlot::new(kind, 0, 1, 1);
        a.schedule(
            View {
                available: 0,
                at: 0,
                nodes: 1,
                share: 0,
            },
            0,
            1,
            0,
            0,
        );
        let refused = a.take(kind, 0, 4);
        assert!(!refused.allowed);
        assert!(refused.retry_after_secs >= 1);
        // 100 ms at 100/s: 10 tokens node-wide, 3 (rounded up) here.
        let admitted = (0..10).filter(|_| a.take(kind, S / 10, 4).allowed).count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn a_new_window_starts_fresh_and_forgets_the_old_one() {
        let kind = LimitKind::Window {
            limit: 8,
            window_nanos: 10 * S,
        };
        let mut a = SharedSlot::new(kind, 0, 1, 1);
        assert_eq!((0..10).filter(|_| a.take(kind, S, 2).allowed).count(), 4);
        assert_eq!(
            (0..10).filter(|_| a.take(kind, 10 * S, 2).allowed).count(),
            4
        );
        assert!(!a.is_fresh(kind, 10 * S));
    }
}
