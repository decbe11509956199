//! [hot] Node and cluster scope, the worker's side: one limit shared by
//! every worker (and, for cluster scope, every node), enforced without a
//! lock or an atomic on the request path.
//!
//! Each worker holds, per key, a `Grant` from the aggregator
//! (`aggregator.rs`): how many requests it may admit from a given instant
//! on, plus a share of the refill from then. The aggregator keeps the
//! exact state of the limit from the workers' reports and hands out grants
//! so that everything the workers could admit — under the grants they are
//! about to give up as well as the new ones — never exceeds what is left.
//! Shares follow each worker's recent demand, so traffic that all arrives
//! on one core gets (nearly) the whole limit, not a static 1/N.
//!
//! A key a worker has no grant for has the default one: an equal 1/N part
//! of a full limit. docs/rate-limiting.md has the algorithm, the bound and
//! the measured figures.

use super::bucket::{Decision, window_start};
use crate::snapshot::LimitKind;

const NANOS: u128 = 1_000_000_000;

/// `Grant::share` denominator.
pub const SHARE_ONE: u64 = 1 << 32;

/// What one worker may admit for one key, from `start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests this worker may admit beyond those the aggregator had
    /// counted when it made the grant.
    pub amount: u64,
    /// Token buckets: this worker's part of the policy's refill rate, in
    /// 1/`SHARE_ONE`ths, accruing from `start`.
    pub share: u64,
    /// Token buckets: the most the grant grows to by refill.
    pub cap: u64,
    /// When the grant takes effect (clock nanoseconds).
    pub start: u64,
    /// Windows: the window (its start) the grant belongs to.
    pub window: u64,
    /// Requests left node-wide when the grant was made (for the
    /// RateLimit-Remaining header and for deciding whether a refused
    /// request may wait for a bigger grant).
    pub node_left: u64,
    /// Of what is left, how much this grant does not cover (other workers'
    /// parts, or tokens still unclaimed in Redis): when it is more than
    /// zero, a request refused under this grant may be worth waiting for
    /// the next one.
    pub elsewhere: u64,
}

/// `value × share / SHARE_ONE`, rounded up.
pub fn part(value: u64, share: u64) -> u64 {
    (u128::from(value) * u128::from(share)).div_ceil(u128::from(SHARE_ONE)) as u64
}

impl Grant {
    /// A key nobody has used: an equal part (of `parts`) of a full limit.
    /// With no parts (cluster scope) nothing, until tokens are claimed; the
    /// limit left is unknown, so a refused request may wait for them.
    pub fn fresh(kind: LimitKind, now: u64, parts: u64) -> Grant {
        if parts == 0 {
            return Grant {
                amount: 0,
                share: 0,
                cap: 0,
                start: now,
                window: match kind {
                    LimitKind::Window { window_nanos, .. } => window_start(now, window_nanos),
                    LimitKind::Bucket { .. } => 0,
                },
                node_left: u64::MAX,
                elsewhere: u64::MAX,
            };
        }
        let share = SHARE_ONE / parts;
        match kind {
            LimitKind::Bucket { burst, .. } => Grant {
                amount: burst.div_ceil(parts),
                share,
                cap: burst.div_ceil(parts),
                start: now,
                window: 0,
                node_left: burst,
                elsewhere: burst - burst.div_ceil(parts),
            },
            LimitKind::Window {
                limit,
                window_nanos,
            } => Grant {
                amount: limit.div_ceil(parts),
                share,
                cap: 0,
                start: now,
                window: window_start(now, window_nanos),
                node_left: limit,
                elsewhere: limit - limit.div_ceil(parts),
            },
        }
    }

    /// Requests this grant allows in total by `now` (a grant for an earlier
    /// window is replaced by a fresh equal part of the new one), its refill
    /// counted from `start`.
    pub fn allowance(&self, kind: LimitKind, now: u64, parts: u64) -> u64 {
        self.allowance_from(kind, now, parts, self.start)
    }

    /// `allowance` with the refill counted from `refill_from` (when the
    /// worker actually took the grant, if that was after `start`: until
    /// then the grant before it was accruing that refill).
    pub fn allowance_from(&self, kind: LimitKind, now: u64, parts: u64, refill_from: u64) -> u64 {
        match kind {
            LimitKind::Bucket { rate, .. } => {
                let refill = self.refill(rate, now, refill_from);
                (u128::from(self.amount) + refill).min(u128::from(self.cap.max(self.amount))) as u64
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                if window_start(now, window_nanos) > self.window {
                    if parts == 0 { 0 } else { limit.div_ceil(parts) }
                } else {
                    self.amount
                }
            }
        }
    }

    /// The most a worker holding this grant can admit by `now`: its amount
    /// plus all the refill since `start`. The worker's part is a bucket of
    /// its own (capped at `cap` at every moment, not over its life), so
    /// one that keeps spending keeps refilling: this, not `allowance`,
    /// bounds what the aggregator must hold room for.
    pub fn ceiling(&self, kind: LimitKind, now: u64, parts: u64) -> u64 {
        match kind {
            LimitKind::Bucket { rate, .. } => {
                let refill = self.refill(rate, now, self.start);
                u64::try_from(u128::from(self.amount) + refill).unwrap_or(u64::MAX)
            }
            LimitKind::Window { .. } => self.allowance(kind, now, parts),
        }
    }

    /// Whole requests this grant's share of `rate` refills from `from`
    /// (or `start`, if later) to `now`.
    fn refill(&self, rate: crate::snapshot::Rate, now: u64, from: u64) -> u128 {
        let elapsed = u128::from(now.saturating_sub(from.max(self.start)));
        elapsed
            .saturating_mul(u128::from(rate.tokens))
            .saturating_mul(u128::from(self.share))
            / (u128::from(rate.per_nanos.max(1)) * u128::from(SHARE_ONE))
    }

    /// Whether a worker holding this grant is indistinguishable from one
    /// holding none (so it need not keep an entry).
    pub fn is_default(&self, kind: LimitKind, now: u64, parts: u64) -> bool {
        if parts == 0 {
            return self.allowance(kind, now, parts) == 0;
        }
        let fresh = Grant::fresh(kind, now, parts);
        self.share == fresh.share && self.allowance(kind, now, parts) >= fresh.amount
    }
}

/// A grant that takes effect later, with the worker's admissions it does
/// not yet count (the aggregator reserved room for them beside it).
#[derive(Debug, Clone, Copy)]
struct Pending {
    grant: Grant,
    uncounted: u64,
}

/// One key's node- or cluster-scope state in one worker.
#[derive(Debug, Clone)]
pub struct SharedSlot {
    current: Grant,
    /// When this worker switched to `current` (its refill accrues from
    /// then, or from `current.start` if that is later).
    refill_from: u64,
    /// Requests admitted under `current`.
    used: u64,
    /// Token buckets: what is left of this worker's part, in
    /// 1/`SHARE_ONE`ths of a request, as of `tokens_at`. Refilled at
    /// `current.share` of the rate and capped at `current.cap` at every
    /// moment, like the node-wide bucket it is a part of.
    tokens: u128,
    tokens_at: u64,
    /// Requests `current` took over from the grant before it (admitted
    /// while it was pending, beyond what the aggregator had counted).
    carried: u64,
    next: Option<Pending>,
    /// Running totals of admissions and of all requests (reported).
    admitted: u64,
    attempts: u64,
    incarnation: u32,
    /// Window policies: the window `window_admitted` counts in.
    window: u64,
    window_admitted: u64,
    /// Requests first seen (not retries) since `current` took effect.
    attempts_since_switch: u64,
    /// Listed in the report being built.
    pub queued: bool,
}

impl SharedSlot {
    /// `parts`: equal parts of a fresh limit (workers; 0 for cluster scope).
    pub fn new(kind: LimitKind, now: u64, parts: u64, incarnation: u32) -> SharedSlot {
        let current = Grant::fresh(kind, now, parts);
        SharedSlot {
            current,
            refill_from: now,
            used: 0,
            tokens: u128::from(current.amount) * u128::from(SHARE_ONE),
            tokens_at: now,
            carried: 0,
            next: None,
            admitted: 0,
            attempts: 0,
            incarnation,
            window: current.window,
            window_admitted: 0,
            attempts_since_switch: 0,
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

    pub fn has_pending(&self) -> bool {
        self.next.is_some()
    }

    /// The `start` of the grant in force, and what it took over.
    pub fn carried(&self) -> (u64, u64) {
        (self.current.start, self.carried)
    }

    /// Switches to the pending grant if it is due.
    pub fn promote(&mut self, now: u64) {
        if let Some(p) = self.next
            && now >= p.grant.start
        {
            self.switch(p.grant, p.uncounted, now);
        }
    }

    fn switch(&mut self, grant: Grant, uncounted: u64, now: u64) {
        self.current = grant;
        self.refill_from = now;
        self.used = 0;
        self.tokens = u128::from(grant.amount) * u128::from(SHARE_ONE);
        self.tokens_at = now.max(grant.start);
        self.carried = uncounted;
        self.next = None;
        self.attempts_since_switch = 0;
    }

    /// Counts one request against this worker's grant. `parts`: equal parts
    /// of a fresh limit (workers; 0 for cluster scope). `retry`: the same
    /// request again after waiting for a grant.
    pub fn take(&mut self, kind: LimitKind, now: u64, parts: u64, retry: bool) -> Decision {
        self.promote(now);
        let used = match kind {
            LimitKind::Bucket { .. } => self.used,
            LimitKind::Window { window_nanos, .. } => {
                let start = window_start(now, window_nanos);
                if start != self.window {
                    self.window = start;
                    self.window_admitted = 0;
                }
                // Admissions from an earlier window never count in this one.
                if self.current.window < start {
                    self.window_admitted
                } else {
                    self.used.min(self.window_admitted)
                }
            }
        };
        let allowance = match kind {
            LimitKind::Bucket { rate, .. } => used + self.refill(rate, now),
            LimitKind::Window { .. } => {
                self.current
                    .allowance_from(kind, now, parts, self.refill_from)
            }
        };
        let allowed = used < allowance;
        // A waiting request counts as demand each time it asks (so the
        // aggregator moves tokens here), but once toward the flood guard.
        self.attempts += 1;
        if !retry {
            self.attempts_since_switch += 1;
        }
        if allowed {
            self.used += 1;
            self.tokens = self.tokens.saturating_sub(u128::from(SHARE_ONE));
            if let Some(p) = &mut self.next {
                p.uncounted += 1;
            }
            self.admitted += 1;
            self.window_admitted += 1;
        }
        let used = used + u64::from(allowed);
        let (node_left, elsewhere) = match kind {
            // A new window: the whole limit is there again (for cluster
            // scope, somewhere in the cluster).
            LimitKind::Window {
                limit,
                window_nanos,
            } if self.current.window < self.window => {
                let fresh = Grant::fresh(kind, window_start(now, window_nanos), parts);
                (if parts == 0 { u64::MAX } else { limit }, fresh.elsewhere)
            }
            _ => (self.current.node_left, self.current.elsewhere),
        };
        let mut decision = self.decision(kind, now, allowed, node_left, used, allowance);
        // Refused because this worker's part is spent while others hold
        // more of what is left: the next grant (a few sync intervals away)
        // may move some here. Worth waiting for when demand only slightly
        // exceeds this worker's part (a client's first burst on a worker),
        // not when it floods past it (then refusing at once is right).
        decision.defer = !allowed
            && elsewhere > 0
            && self.attempts_since_switch <= allowance + (allowance / 8).max(2);
        decision
    }

    /// Refills this worker's part of a bucket up to `now`; returns the
    /// whole requests it holds.
    fn refill(&mut self, rate: crate::snapshot::Rate, now: u64) -> u64 {
        let top = u128::from(self.current.cap.max(self.current.amount)) * u128::from(SHARE_ONE);
        if now > self.tokens_at {
            let added = u128::from(now - self.tokens_at)
                .saturating_mul(u128::from(rate.tokens))
                .saturating_mul(u128::from(self.current.share))
                / u128::from(rate.per_nanos.max(1));
            self.tokens = self.tokens.saturating_add(added).min(top);
            self.tokens_at = now;
        }
        u64::try_from(self.tokens.min(top) / u128::from(SHARE_ONE)).unwrap_or(u64::MAX)
    }

    fn decision(
        &self,
        kind: LimitKind,
        now: u64,
        allowed: bool,
        node_left: u64,
        used: u64,
        allowance: u64,
    ) -> Decision {
        let limit = match kind {
            LimitKind::Bucket { burst, .. } => burst,
            LimitKind::Window { limit, .. } => limit,
        };
        let remaining = if allowed {
            node_left.saturating_sub(used).min(limit)
        } else {
            0
        };
        match kind {
            LimitKind::Bucket { rate, burst } => {
                // Whole seconds for `tokens` to accrue at `share` of the
                // rate (saturating: burst and rate come from the config).
                let secs = |tokens: u64, share: u64| -> u64 {
                    let needed = u128::from(tokens)
                        .saturating_mul(u128::from(rate.per_nanos))
                        .saturating_mul(u128::from(SHARE_ONE));
                    let per_nano = u128::from(rate.tokens) * u128::from(share.max(1));
                    u64::try_from(needed.div_ceil(per_nano.max(1)) / NANOS).unwrap_or(u64::MAX)
                };
                Decision {
                    allowed,
                    limit: burst,
                    remaining,
                    reset_secs: secs(burst.saturating_sub(remaining), SHARE_ONE),
                    retry_after_secs: if allowed {
                        0
                    } else {
                        secs(used + 1 - allowance.min(used), self.current.share).max(1)
                    },
                    defer: false,
                }
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                let end = window_start(now, window_nanos) + window_nanos;
                let reset = u128::from(end - now).div_ceil(NANOS) as u64;
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

    /// Takes a grant from the aggregator. `counted` is the running total
    /// of this entry's admissions the grant already counts (if the grant
    /// knew this incarnation of the entry).
    pub fn schedule(&mut self, grant: Grant, incarnation: u32, counted: u64, now: u64) {
        self.promote(now);
        let uncounted = if incarnation == self.incarnation {
            self.admitted.saturating_sub(counted)
        } else {
            self.admitted
        };
        if now >= grant.start {
            self.switch(grant, uncounted, now);
        } else {
            self.next = Some(Pending { grant, uncounted });
        }
    }

    /// Back to the state of a key nobody has used: evicting it loses
    /// nothing (an entry holding an unequal share is not, since dropping it
    /// would hand this worker an equal part the others leave no room for).
    pub fn is_fresh(&self, kind: LimitKind, now: u64, parts: u64) -> bool {
        !self.queued
            && self.next.is_none()
            && self.used == 0
            && self.current.is_default(kind, now, parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::Rate;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_fresh_key_gives_each_worker_an_equal_part() {
        let kind = LimitKind::Window {
            limit: 100,
            window_nanos: 60 * S,
        };
        let mut a = SharedSlot::new(kind, 0, 4, 1);
        let admitted = (0..25)
            .filter(|_| a.take(kind, 1, 4, false).allowed)
            .count();
        assert_eq!(admitted, 25);
        let refused = a.take(kind, 1, 4, false);
        assert!(
            !refused.allowed && refused.defer,
            "others hold the rest: the request may wait"
        );
        for _ in 0..60 {
            a.take(kind, 1, 4, false);
        }
        assert!(
            !a.take(kind, 1, 4, false).defer,
            "a flood past this worker's part is refused at once"
        );
    }

    #[test]
    fn a_grant_counts_what_the_aggregator_had_not_seen() {
        let kind = LimitKind::Window {
            limit: 100,
            window_nanos: 60 * S,
        };
        let mut a = SharedSlot::new(kind, 0, 4, 1);
        for _ in 0..10 {
            assert!(a.take(kind, 1, 4, false).allowed);
        }
        // The grant counted 6 of the 10; it takes effect at 5.
        let grant = Grant {
            amount: 20,
            share: SHARE_ONE / 2,
            cap: 0,
            start: 5,
            window: 0,
            node_left: 84,
            elsewhere: 30,
        };
        a.schedule(grant, 1, 6, 2);
        let before = (0..100)
            .filter(|_| a.take(kind, 3, 4, false).allowed)
            .count();
        assert_eq!(before, 15, "the old equal part (25) until 5");
        let after = (0..100)
            .filter(|_| a.take(kind, 5, 4, false).allowed)
            .count();
        assert_eq!(
            after, 20,
            "20 more; the 19 uncounted were reserved beside it"
        );
        assert_eq!(a.carried(), (5, 19));
    }

    #[test]
    fn a_bucket_grant_refills_at_its_share_up_to_its_cap() {
        let rate = Rate {
            tokens: 100,
            per_nanos: S,
        };
        let kind = LimitKind::Bucket { rate, burst: 100 };
        let mut a = SharedSlot::new(kind, 0, 4, 1);
        let grant = Grant {
            amount: 0,
            share: SHARE_ONE / 4,
            cap: 25,
            start: 0,
            window: 0,
            node_left: 0,
            elsewhere: 0,
        };
        a.schedule(grant, 1, 0, 0);
        let refused = a.take(kind, 0, 4, false);
        assert!(!refused.allowed && !refused.defer);
        assert_eq!(refused.retry_after_secs, 1);
        // 100 ms at a quarter of 100/s: 2.5 tokens.
        assert_eq!(
            (0..10)
                .filter(|_| a.take(kind, S / 10, 4, false).allowed)
                .count(),
            2
        );
        // Ten seconds later: full at its cap, 25, and no more.
        assert_eq!(
            (0..100)
                .filter(|_| a.take(kind, 10 * S, 4, false).allowed)
                .count(),
            25
        );
        // The part is a bucket, capped at every moment rather than over the
        // grant's life: spent, it refills at 25/s again (a second: 25).
        assert_eq!(
            (0..100)
                .filter(|_| a.take(kind, 11 * S, 4, false).allowed)
                .count(),
            25
        );
        // Half a second: 12 whole requests (12.5 tokens).
        assert_eq!(
            (0..100)
                .filter(|_| a.take(kind, 11 * S + S / 2, 4, false).allowed)
                .count(),
            12
        );
    }

    #[test]
    fn a_new_window_starts_fresh_and_forgets_the_old_one() {
        let kind = LimitKind::Window {
            limit: 8,
            window_nanos: 10 * S,
        };
        let mut a = SharedSlot::new(kind, 0, 2, 1);
        assert_eq!(
            (0..10)
                .filter(|_| a.take(kind, S, 2, false).allowed)
                .count(),
            4
        );
        assert_eq!(
            (0..10)
                .filter(|_| a.take(kind, 10 * S, 2, false).allowed)
                .count(),
            4
        );
        assert!(!a.is_fresh(kind, 10 * S, 2));
    }
}
