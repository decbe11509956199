//! [cold] The aggregator's exact account of one key: how much of the limit
//! is left (and where that figure comes from: the node's own bucket or
//! window, tokens claimed from Redis, or the fallback while Redis is
//! away), what each worker has admitted, and the grants it holds.
//!
//! `Ledger::grant` is the heart of shared limits. Grants take effect two
//! sync intervals after they are made, so until then each worker may keep
//! admitting under the grant it already holds. New grants therefore split
//! only what is left *after* reserving, for each worker, the most it could
//! still admit under its current grant (`Seen::ceiling`): whatever the
//! timing, everything the workers can admit never exceeds what is left
//! (docs/rate-limiting.md has the argument).

use super::bucket::window_start;
use super::shared::{Grant, SHARE_ONE, part};
use super::sync::ReportRecord;
use crate::snapshot::{LimitKind, OnRedisError};

/// Where a key's remaining tokens are known from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Node scope: the exact bucket or window kept here.
    Node,
    /// Cluster scope with Redis answering: tokens this node claimed.
    Claimed,
    /// Cluster scope while Redis cannot be reached.
    Fallback(OnRedisError),
}

/// A grant big enough to mean "no limit" (`on_redis_error = "allow"`).
const UNLIMITED: u64 = 1 << 40;

/// What the aggregator knows of one worker's side of one key.
#[derive(Debug, Clone, Copy)]
struct Seen {
    incarnation: u32,
    /// Running totals last reported.
    admitted: u64,
    attempts: u64,
    /// Recent attempts (halved at each grant): this worker's demand.
    demand: u64,
    /// The worker's latest grant, the running total it counts from, and
    /// what the worker may have admitted under the grant before it while
    /// the latest was pending.
    grant: Grant,
    base: u64,
    carried: u64,
    /// The worker has reported under `grant` (or `grant` is the default,
    /// which is what having no entry means): it no longer holds any grant
    /// before it.
    switched: bool,
}

impl Seen {
    fn new(kind: LimitKind, now: u64, parts: u64) -> Seen {
        Seen {
            incarnation: 0,
            admitted: 0,
            attempts: 0,
            demand: 0,
            grant: Grant::fresh(kind, now, parts),
            base: 0,
            carried: 0,
            switched: true,
        }
    }

    /// The most this worker's running total can reach by `t` under what it
    /// holds.
    fn ceiling(&self, kind: LimitKind, t: u64, parts: u64) -> u64 {
        self.base + self.carried + self.grant.ceiling(kind, t, parts)
    }

    /// What this worker may still admit, by `t`, beyond what was counted.
    fn outstanding(&self, kind: LimitKind, t: u64, parts: u64) -> u64 {
        self.ceiling(kind, t, parts).saturating_sub(self.admitted)
    }
}

/// Of what is left, the part (in 1/`SHARE_ONE`ths) each worker gets: a
/// small equal floor, so that a worker meeting the key for the first time
/// in a while can still admit a few at once, and the rest in proportion to
/// each worker's demand since the last grant. Parts sum to `SHARE_ONE`.
fn shares(seen: &[Seen], out: &mut [u64]) {
    let n = seen.len().max(1) as u64;
    let total: u64 = seen.iter().map(|s| s.demand).sum();
    let (floor, spread) = if total == 0 {
        (SHARE_ONE / n, 0)
    } else {
        let floor = SHARE_ONE / 10 / n; // 10% of the whole, split evenly
        (floor, SHARE_ONE - floor * n)
    };
    let mut given = 0;
    for (part, s) in out.iter_mut().zip(seen) {
        let p =
            floor + (u128::from(spread) * u128::from(s.demand) / u128::from(total.max(1))) as u64;
        *part = p;
        given += p;
    }
    // Rounding leftovers go to the busiest worker.
    if let Some((i, _)) = seen.iter().enumerate().max_by_key(|(_, s)| s.demand) {
        out[i] += SHARE_ONE - given;
    }
}

/// Splits `pool` by `shares` (1/`SHARE_ONE`ths summing to one) into whole
/// requests that sum to exactly `pool`: each share rounded down, the few
/// left over to the largest share. (Rounding every part up would let the
/// workers together admit up to N − 1 more than is left.)
fn split_exactly(pool: u64, shares: &[u64], out: &mut Vec<u64>) {
    out.clear();
    out.extend(
        shares
            .iter()
            .map(|&s| (u128::from(pool) * u128::from(s) / u128::from(SHARE_ONE)) as u64),
    );
    let left = pool - out.iter().sum::<u64>();
    if let Some((i, _)) = shares.iter().enumerate().max_by_key(|(_, s)| **s) {
        out[i] += left;
    }
}

/// A cluster-scope key's tokens claimed from Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims {
    /// Claimed and not yet admitted (for windows: in `window`).
    pub held: u64,
    pub window: u64,
    /// A claim for this key is in the current Redis round.
    pub in_flight: bool,
    /// Attempts since the last claim (sizes the next one).
    pub demand: u64,
    /// Ticks since the last attempt (an idle key gives its tokens back).
    pub idle_ticks: u32,
    /// Left in Redis after the last claim (for RateLimit-Remaining).
    pub cluster_left: u64,
    /// In the aggregator's list of keys to look at for claims.
    pub listed: bool,
    /// Which fallback period the local state below belongs to.
    fallback_epoch: u64,
}

/// Ticks without demand after which a key's unreserved claimed tokens go
/// back to Redis.
const IDLE_TICKS_BEFORE_GIVING_BACK: u32 = 20;

/// A cluster key's part of the next Redis round.
pub struct ClaimRequest {
    pub want: u64,
    pub give_back: u64,
    /// Windows: the window the claim is for.
    pub window: Option<u64>,
}

/// This node's part of a cluster limit: what it enforces alone while
/// Redis is away (`on_redis_error = "local_share"`).
pub fn node_part(kind: LimitKind, nodes: u64) -> LimitKind {
    let nodes = nodes.max(1);
    match kind {
        LimitKind::Bucket { rate, burst } => LimitKind::Bucket {
            rate: crate::ratelimit::Rate {
                tokens: rate.tokens,
                per_nanos: rate.per_nanos.saturating_mul(nodes),
            },
            burst: burst.div_ceil(nodes),
        },
        LimitKind::Window {
            limit,
            window_nanos,
        } => LimitKind::Window {
            limit: limit.div_ceil(nodes),
            window_nanos,
        },
    }
}

/// One key's exact state in the aggregator.
pub struct Ledger {
    pub tier: u32,
    /// Node scope (and the local-share fallback): buckets: units at `at`
    /// (negative: debt); windows: requests left in the window from `at`.
    available: i128,
    at: u64,
    seen: Box<[Seen]>,
    /// Equal parts of a fresh key per worker: N for node scope, 0 for
    /// cluster scope (a node holds nothing until it claims).
    parts: u64,
    pub claims: Option<Claims>,
    /// When the last grants sent for this key take effect.
    pub grants_effective: u64,
    /// Scratch for the split of a pool.
    amounts: Vec<u64>,
    /// Charged since the last grants: listed for the next ones.
    pub waiting: bool,
}

impl Ledger {
    pub fn new(tier: u32, kind: LimitKind, now: u64, workers: usize, cluster: bool) -> Ledger {
        let parts = if cluster { 0 } else { workers as u64 };
        let mut ledger = Ledger {
            tier,
            available: 0,
            at: 0,
            seen: vec![Seen::new(kind, now, parts); workers].into_boxed_slice(),
            parts,
            claims: cluster.then(|| Claims {
                window: match kind {
                    LimitKind::Window { window_nanos, .. } => window_start(now, window_nanos),
                    LimitKind::Bucket { .. } => 0,
                },
                ..Claims::default()
            }),
            grants_effective: 0,
            amounts: Vec::new(),
            waiting: false,
        };
        ledger.reset_local(kind, now);
        ledger
    }

    /// The local bucket or window, full.
    fn reset_local(&mut self, kind: LimitKind, now: u64) {
        (self.available, self.at) = match kind {
            LimitKind::Bucket { rate, burst } => {
                (i128::from(burst) * i128::from(rate.per_nanos), now)
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => (i128::from(limit), window_start(now, window_nanos)),
        };
    }

    /// The limit the local state runs: the policy's, or for the
    /// local-share fallback this node's part of it. Starts the local state
    /// afresh when a new fallback period begins.
    fn local_kind(
        &mut self,
        kind: LimitKind,
        source: Source,
        epoch: u64,
        nodes: u64,
        now: u64,
    ) -> LimitKind {
        match (source, &mut self.claims) {
            (Source::Fallback(_), Some(claims)) => {
                let local = node_part(kind, nodes);
                if claims.fallback_epoch != epoch {
                    claims.fallback_epoch = epoch;
                    self.reset_local(local, now);
                }
                local
            }
            _ => kind,
        }
    }

    /// Brings the local state up to `now`: refill, or a new window (in
    /// which every worker starts again from its default grant).
    fn advance(&mut self, kind: LimitKind, local: LimitKind, now: u64) {
        match local {
            LimitKind::Bucket { rate, burst } => {
                let cap = i128::from(burst) * i128::from(rate.per_nanos);
                let elapsed = i128::from(now.saturating_sub(self.at));
                self.available = (self.available + elapsed * i128::from(rate.tokens)).min(cap);
                self.at = self.at.max(now);
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                let start = window_start(now, window_nanos);
                if start > self.at {
                    self.roll(kind, start, limit);
                }
            }
        }
    }

    fn roll(&mut self, kind: LimitKind, start: u64, limit: u64) {
        self.at = start;
        self.available = i128::from(limit);
        if let Some(claims) = &mut self.claims {
            claims.held = 0;
            claims.window = start;
        }
        for s in self.seen.iter_mut() {
            s.grant = Grant::fresh(kind, start, self.parts);
            s.base = s.admitted;
            s.carried = 0;
        }
    }

    /// Takes a worker's running totals: returns the admissions that are new
    /// and the new attempts (which are also noted as the worker's demand).
    pub fn newly_admitted(
        &mut self,
        worker: usize,
        r: &ReportRecord,
        kind: LimitKind,
        now: u64,
    ) -> (u64, u64) {
        let parts = self.parts;
        let Some(seen) = self.seen.get_mut(worker) else {
            return (0, 0);
        };
        if seen.incarnation == 0 {
            // The first report of this worker's entry, which counts from
            // zero under whatever grant it holds (the default, or ours).
            seen.incarnation = r.incarnation;
        } else if seen.incarnation != r.incarnation || r.admitted < seen.admitted {
            // The worker evicted its entry and made a new one: it counts
            // from zero again, under the default grant.
            *seen = Seen::new(kind, now, parts);
            seen.incarnation = r.incarnation;
        }
        let admitted = r.admitted - seen.admitted;
        if r.grant_start == seen.grant.start {
            // The worker works under the latest grant: what it carried over
            // from the one before is known exactly now.
            seen.carried = seen.carried.min(r.carried);
            seen.switched = true;
        }
        let attempts = r.attempts.saturating_sub(seen.attempts);
        seen.demand += attempts;
        seen.admitted = r.admitted;
        seen.attempts = r.attempts;
        if let Some(claims) = &mut self.claims {
            claims.demand += attempts;
            if attempts > 0 {
                claims.idle_ticks = 0;
            }
        }
        (admitted, attempts)
    }

    /// Charges new admissions (reported for `window`, for window policies).
    #[allow(clippy::too_many_arguments)]
    pub fn charge(
        &mut self,
        kind: LimitKind,
        admitted: u64,
        window: u64,
        source: Source,
        epoch: u64,
        nodes: u64,
        now: u64,
    ) {
        let local = self.local_kind(kind, source, epoch, nodes, now);
        self.advance(kind, local, now);
        match source {
            Source::Node | Source::Fallback(OnRedisError::LocalShare) => match local {
                LimitKind::Bucket { rate, .. } => {
                    self.available -= i128::from(admitted) * i128::from(rate.per_nanos);
                }
                LimitKind::Window { limit, .. } => {
                    if window > self.at {
                        self.roll(kind, window, limit);
                    }
                    // Admissions reported for an earlier window no longer matter.
                    if window == self.at {
                        self.available -= i128::from(admitted);
                    }
                }
            },
            Source::Claimed => {
                if let Some(claims) = &mut self.claims
                    && (matches!(kind, LimitKind::Bucket { .. }) || window == claims.window)
                {
                    claims.held = claims.held.saturating_sub(admitted);
                }
            }
            Source::Fallback(_) => {}
        }
    }

    /// Requests left at `t` under the local state, if nobody admitted more.
    fn local_left(&self, local: LimitKind, t: u64) -> u64 {
        let left = match local {
            LimitKind::Bucket { rate, burst } => {
                let one = i128::from(rate.per_nanos.max(1));
                let elapsed = i128::from(t.saturating_sub(self.at));
                let units = (self.available + elapsed * i128::from(rate.tokens))
                    .min(i128::from(burst) * one);
                units.div_euclid(one)
            }
            LimitKind::Window { .. } => self.available,
        };
        left.max(0) as u64
    }

    /// Whether dropping this entry loses nothing (every worker back to its
    /// default grant, the limit whole, nothing claimed).
    pub fn is_fresh(&self, kind: LimitKind, now: u64) -> bool {
        let whole = match (&self.claims, kind) {
            (Some(c), _) => c.held == 0 && !c.in_flight,
            (None, LimitKind::Bucket { burst, .. }) => self.local_left(kind, now) >= burst,
            (
                None,
                LimitKind::Window {
                    limit,
                    window_nanos,
                },
            ) => window_start(now, window_nanos) > self.at || self.available >= i128::from(limit),
        };
        !self.waiting
            && now >= self.grants_effective
            && whole
            && self
                .seen
                .iter()
                .all(|s| s.grant.is_default(kind, now, self.parts))
    }

    /// Whether every worker has moved onto its latest grant: only then may
    /// new grants be made (a worker holding two superseded grants could
    /// admit under both).
    pub fn all_switched(&self) -> bool {
        self.seen.iter().all(|s| s.switched)
    }

    /// Sizes this cluster key's part of the next Redis round, if it needs
    /// one (and notes the claim as in flight): enough for about two rounds
    /// of the recent demand, but no more than a fair part per round (so a
    /// node flooded with requests does not drain the cluster's quota in one
    /// claim) and never less than a few rounds of refill (so a fast bucket
    /// is not throttled by it); plus, from a key idle for a while, its
    /// claimed tokens no grant reserves.
    pub fn next_claim(
        &mut self,
        kind: LimitKind,
        now: u64,
        interval: u64,
        nodes: u64,
    ) -> Option<ClaimRequest> {
        let give_back = match self.claims {
            Some(c)
                if c.demand == 0 && c.held > 0 && c.idle_ticks >= IDLE_TICKS_BEFORE_GIVING_BACK =>
            {
                self.unreserved_claims(kind, now)
            }
            _ => 0,
        };
        let c = self.claims.as_mut()?;
        let fair = match kind {
            LimitKind::Bucket { rate, burst } => {
                let per_round = u128::from(rate.tokens) * u128::from(interval) * 3
                    / u128::from(rate.per_nanos.max(1));
                (burst / (2 * nodes.max(1))).max(per_round as u64)
            }
            LimitKind::Window { limit, .. } => limit / (2 * nodes.max(1)),
        }
        .max(1);
        let want = if c.demand > 0 {
            (c.demand * 2).min(fair).saturating_sub(c.held)
        } else {
            c.idle_ticks += 1;
            0
        };
        if c.in_flight || (want == 0 && give_back == 0) {
            return None;
        }
        c.in_flight = true;
        c.held -= give_back;
        c.demand = 0;
        let window = match kind {
            LimitKind::Window { window_nanos, .. } => Some(window_start(now, window_nanos)),
            LimitKind::Bucket { .. } => None,
        };
        if let Some(w) = window
            && w != c.window
        {
            c.window = w;
            c.held = 0;
        }
        Some(ClaimRequest {
            want,
            give_back,
            window,
        })
    }

    /// Whether the aggregator should keep looking at this key for claims
    /// (it holds tokens, awaits them or wants them); unlists it otherwise.
    pub fn still_claiming(&mut self) -> bool {
        let Some(c) = &mut self.claims else {
            return false;
        };
        let keep = c.held > 0 || c.in_flight || c.demand > 0;
        c.listed = keep;
        keep
    }

    /// Worker `worker`'s latest grant, with the incarnation and running
    /// total of its entry that the grant counts.
    pub fn grant_for(&self, worker: usize) -> (Grant, u32, u64) {
        let s = &self.seen[worker];
        (s.grant, s.incarnation, s.admitted)
    }

    /// What each worker may still admit under the grants it holds until
    /// `t` (noted as carried into the next grant), summed.
    fn reserve(&mut self, kind: LimitKind, t: u64) -> u64 {
        let mut reserved = 0u64;
        for s in self.seen.iter_mut() {
            let out = s.outstanding(kind, t, self.parts);
            s.carried = out;
            reserved = reserved.saturating_add(out);
        }
        reserved
    }

    /// Claimed tokens not reserved by the grants workers hold: what an idle
    /// key can give back to Redis.
    pub fn unreserved_claims(&self, kind: LimitKind, now: u64) -> u64 {
        let held = self.claims.map_or(0, |c| c.held);
        let reserved = self
            .seen
            .iter()
            .map(|s| s.outstanding(kind, now, self.parts))
            .fold(0u64, u64::saturating_add);
        held.saturating_sub(reserved)
    }

    /// New grants, effective at `effective`, for every worker: what is
    /// left then, less what each worker may still admit under the grants
    /// it holds until then, split by demand.
    #[allow(clippy::too_many_arguments)]
    pub fn grant(
        &mut self,
        kind: LimitKind,
        now: u64,
        effective: u64,
        source: Source,
        epoch: u64,
        nodes: u64,
        shares_out: &mut [u64],
    ) {
        let local = self.local_kind(kind, source, epoch, nodes, now);
        self.advance(kind, local, now);
        let reserved = self.reserve(kind, effective);
        // `left`: what this node may grant; `node_left`: what is left at
        // all (for headers); `beyond`: tokens no worker holds that more
        // grants could still reach (unclaimed in Redis).
        let (left, node_left, beyond) = match source {
            Source::Node | Source::Fallback(OnRedisError::LocalShare) => {
                let left = self.local_left(local, effective);
                (left, left, 0)
            }
            Source::Claimed => {
                let claims = self.claims.unwrap_or_default();
                let current = match kind {
                    LimitKind::Window { window_nanos, .. } => {
                        claims.window == window_start(effective, window_nanos)
                    }
                    LimitKind::Bucket { .. } => true,
                };
                let held = if current { claims.held } else { 0 };
                (held, held + claims.cluster_left, claims.cluster_left)
            }
            Source::Fallback(OnRedisError::Allow) => (UNLIMITED, UNLIMITED, 0),
            Source::Fallback(OnRedisError::Deny) => (0, 0, 0),
        };
        let pool = left.saturating_sub(reserved);
        shares(&self.seen, shares_out);
        let window = match (local, &self.claims, source) {
            (LimitKind::Bucket { .. }, _, _) => 0,
            (_, Some(c), Source::Claimed) => c.window,
            (
                LimitKind::Window { window_nanos, .. },
                _,
                Source::Fallback(OnRedisError::Allow | OnRedisError::Deny),
            ) => window_start(effective, window_nanos),
            _ => self.at,
        };
        split_exactly(pool, shares_out, &mut self.amounts);
        let total_carried: u64 = self.seen.iter().map(|s| s.carried).sum();
        for ((s, &share), &amount) in self
            .seen
            .iter_mut()
            .zip(shares_out.iter())
            .zip(&self.amounts)
        {
            // Refill accrues to workers only where this node refills the
            // limit itself; claimed tokens come from Redis.
            let (refill_share, cap) = match (source, local) {
                (Source::Node, LimitKind::Bucket { burst, .. }) => (share, part(burst, share)),
                (Source::Fallback(OnRedisError::LocalShare), LimitKind::Bucket { burst, .. }) => {
                    (share / nodes.max(1), part(burst, share))
                }
                _ => (0, amount),
            };
            s.grant = Grant {
                amount,
                share: refill_share,
                cap,
                start: effective,
                window,
                node_left,
                // Reserved for admissions under superseded grants, and
                // freed again once workers show they did not make them.
                elsewhere: (pool - amount)
                    .saturating_add(total_carried)
                    .saturating_add(beyond),
            };
            s.base = s.admitted;
            s.switched = s.grant.is_default(kind, effective, self.parts);
            // Demand fades by half per grant rather than restarting, so a
            // worker whose requests are waiting for this grant still
            // counts as busy in the next one.
            s.demand /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_split_into_exactly_the_pool() {
        let mut out = Vec::new();
        let third = SHARE_ONE / 3;
        for pool in [0, 1, 2, 3, 7, 100, 1001] {
            split_exactly(pool, &[third, third, SHARE_ONE - 2 * third], &mut out);
            assert_eq!(out.iter().sum::<u64>(), pool, "{out:?}");
        }
        split_exactly(8, &[SHARE_ONE / 4, SHARE_ONE - SHARE_ONE / 4], &mut out);
        assert_eq!(out, [2, 6]);
        split_exactly(3, &[SHARE_ONE / 4; 4], &mut out);
        assert_eq!(out.iter().sum::<u64>(), 3);
    }

    const KIND: LimitKind = LimitKind::Window {
        limit: 100,
        window_nanos: 60_000_000_000,
    };

    #[test]
    fn shares_are_an_even_floor_plus_demand_and_sum_to_one() {
        let mut seen = [Seen::new(KIND, 0, 2), Seen::new(KIND, 0, 2)];
        let mut out = [0u64; 2];
        // No demand anywhere: equal halves.
        shares(&seen, &mut out);
        assert_eq!(out, [SHARE_ONE / 2, SHARE_ONE / 2]);
        // Demand 3:1 — 5% each as a floor, the other 90% split 3:1.
        seen[0].demand = 3;
        seen[1].demand = 1;
        shares(&seen, &mut out);
        let floor = SHARE_ONE / 10 / 2;
        let spread = SHARE_ONE - 2 * floor;
        assert_eq!(out[1], floor + spread / 4);
        assert_eq!(out[0], SHARE_ONE - out[1], "leftovers go to the busiest");
        assert!(out[0] >= floor + spread * 3 / 4);
        // All demand on one worker: the other keeps only the floor.
        seen[1].demand = 0;
        shares(&seen, &mut out);
        assert_eq!(out, [SHARE_ONE - floor, floor]);
        // Thirds do not divide 2^32: the rounding leftover goes to one
        // worker (the last of the busiest), so the parts still sum to one.
        let mut three = [
            Seen::new(KIND, 0, 3),
            Seen::new(KIND, 0, 3),
            Seen::new(KIND, 0, 3),
        ];
        let mut out = [0u64; 3];
        shares(&three, &mut out);
        let third = SHARE_ONE / 3;
        assert_eq!(out, [third, third, SHARE_ONE - 2 * third]);
        for s in &mut three {
            s.demand = 1;
        }
        shares(&three, &mut out);
        assert_eq!(out.iter().sum::<u64>(), SHARE_ONE);
        assert_eq!(out[0], out[1]);
        assert_eq!(out[2], out[0] + (SHARE_ONE - 3 * out[0]));
        assert!(out[2] > out[0], "a leftover exists here");
    }

    #[test]
    fn the_allow_fallback_grants_what_no_request_rate_reaches() {
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        let mut shares = [0u64; 2];
        ledger.grant(
            KIND,
            0,
            20_000_000,
            Source::Fallback(OnRedisError::Allow),
            0,
            1,
            &mut shares,
        );
        let (grant, _, _) = ledger.grant_for(0);
        assert!(
            grant.amount >= 1 << 38,
            "an allow fallback grants {} only",
            grant.amount
        );
    }

    fn report(incarnation: u32, admitted: u64, attempts: u64) -> ReportRecord {
        let mut arena = super::super::sync::Keyed::<ReportRecord>::default();
        ReportRecord {
            policy: 0,
            tier: 0,
            key: arena.push_key(b"k"),
            incarnation,
            admitted,
            attempts,
            window: 0,
            grant_start: 0,
            carried: 0,
        }
    }

    #[test]
    fn running_totals_count_once_and_restart_with_a_new_entry() {
        let mut ledger = Ledger::new(0, KIND, 0, 2, false);
        assert_eq!(
            ledger.newly_admitted(0, &report(5, 10, 12), KIND, 0),
            (10, 12)
        );
        assert_eq!(
            ledger.newly_admitted(0, &report(5, 15, 20), KIND, 0),
            (5, 8)
        );
        // The worker evicted its entry and made a new one (new incarnation):
        // its totals count from zero again.
        assert_eq!(ledger.newly_admitted(0, &report(6, 3, 4), KIND, 0), (3, 4));
        // The same incarnation number but a smaller total: also a new entry.
        assert_eq!(ledger.newly_admitted(0, &report(6, 1, 1), KIND, 0), (1, 1));
        // Another worker's totals are its own.
        assert_eq!(ledger.newly_admitted(1, &report(5, 2, 2), KIND, 0), (2, 2));
        assert_eq!(ledger.newly_admitted(9, &report(5, 2, 2), KIND, 0), (0, 0));
    }

    #[test]
    fn cluster_demand_sizes_claims_and_wakes_an_idle_key() {
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        ledger.claims.as_mut().unwrap().idle_ticks = 5;
        ledger.newly_admitted(0, &report(1, 0, 0), KIND, 0);
        let claims = ledger.claims.unwrap();
        assert_eq!(
            (claims.demand, claims.idle_ticks),
            (0, 5),
            "no attempts: still idle"
        );
        ledger.newly_admitted(0, &report(1, 3, 4), KIND, 0);
        ledger.newly_admitted(1, &report(1, 1, 3), KIND, 0);
        let claims = ledger.claims.unwrap();
        assert_eq!((claims.demand, claims.idle_ticks), (7, 0));
    }

    #[test]
    fn the_local_share_fallback_holds_this_node_to_its_part() {
        // Cluster scope, Redis away, 2 nodes last seen: this node may
        // grant half of the window's 100, from a fresh local window.
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        let mut shares = [0u64; 2];
        let source = Source::Fallback(OnRedisError::LocalShare);
        ledger.grant(KIND, 0, 20_000_000, source, 1, 2, &mut shares);
        let total: u64 = (0..2).map(|w| ledger.grant_for(w).0.amount).sum();
        assert_eq!(total, 50);
    }

    #[test]
    fn a_new_fallback_period_starts_the_local_share_afresh() {
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        let source = Source::Fallback(OnRedisError::LocalShare);
        let now = 60_000_000_000 * 1_000 + 5_000_000_000;
        let window = window_start(now, 60_000_000_000);
        ledger.charge(KIND, 40, window, source, 1, 2, now);
        let local = node_part(KIND, 2);
        assert_eq!(
            ledger.local_left(local, now),
            10,
            "50 of 100 here, 40 spent"
        );
        // Same period: unchanged. A new period (Redis was back, then away
        // again): this node's part is whole again.
        assert_eq!(ledger.local_kind(KIND, source, 1, 2, now), local);
        assert_eq!(ledger.local_left(local, now), 10);
        assert_eq!(ledger.local_kind(KIND, source, 2, 2, now), local);
        assert_eq!(ledger.local_left(local, now), 50);
    }

    #[test]
    fn claimed_tokens_are_spent_only_in_their_window() {
        let now = 60_000_000_000 * 1_000 + 5_000_000_000;
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        let window = window_start(now, 60_000_000_000);
        {
            let claims = ledger.claims.as_mut().unwrap();
            claims.window = window;
            claims.held = 30;
        }
        ledger.charge(KIND, 10, window, Source::Claimed, 0, 1, now);
        assert_eq!(ledger.claims.unwrap().held, 20);
        // Admissions reported for the window before: not from these tokens.
        ledger.charge(KIND, 5, window - 60_000_000_000, Source::Claimed, 0, 1, now);
        assert_eq!(ledger.claims.unwrap().held, 20);
    }

    #[test]
    fn the_local_bucket_refills_at_the_rate_up_to_its_burst() {
        let bucket = LimitKind::Bucket {
            rate: crate::snapshot::Rate {
                tokens: 10,
                per_nanos: 1_000_000_000,
            },
            burst: 100,
        };
        let t0 = 1_000_000_000_000;
        let mut ledger = Ledger::new(0, bucket, t0, 2, false);
        ledger.charge(bucket, 100, 0, Source::Node, 0, 1, t0);
        assert_eq!(ledger.local_left(bucket, t0), 0);
        assert_eq!(ledger.local_left(bucket, t0 + 1_000_000_000), 10);
        assert_eq!(ledger.local_left(bucket, t0 + 2_500_000_000), 25);
        assert_eq!(ledger.local_left(bucket, t0 + 60_000_000_000), 100);
    }

    #[test]
    fn a_window_left_without_reports_rolls_when_grants_are_made() {
        let minute = 60_000_000_000;
        let now = minute * 1_000 + 5_000_000_000;
        let mut ledger = Ledger::new(0, KIND, now, 2, false);
        ledger.charge(
            KIND,
            100,
            window_start(now, minute),
            Source::Node,
            0,
            1,
            now,
        );
        assert_eq!(ledger.local_left(KIND, now), 0);
        // No report since, but the next window has begun when grants are
        // made (advance, from `grant`): the whole limit again.
        ledger.advance(KIND, KIND, now + minute);
        assert_eq!(ledger.local_left(KIND, now + minute), 100);
        ledger.advance(KIND, KIND, now + minute + 1);
        assert_eq!(
            ledger.local_left(KIND, now + minute),
            100,
            "same window: kept"
        );
    }

    #[test]
    fn an_entry_is_fresh_only_when_dropping_it_loses_nothing() {
        let minute = 60_000_000_000;
        let now = minute * 1_000 + 5_000_000_000;
        let window = window_start(now, minute);
        let mut ledger = Ledger::new(0, KIND, now, 2, false);
        assert!(ledger.is_fresh(KIND, now));
        ledger.charge(KIND, 10, window, Source::Node, 0, 1, now);
        assert!(!ledger.is_fresh(KIND, now), "part of the window is spent");
        assert!(
            ledger.is_fresh(KIND, now + minute),
            "the next window is whole"
        );
        let mut ledger = Ledger::new(0, KIND, now, 2, false);
        ledger.waiting = true;
        assert!(!ledger.is_fresh(KIND, now), "grants are due");
        ledger.waiting = false;
        ledger.grants_effective = now + 1;
        assert!(!ledger.is_fresh(KIND, now), "grants not in force yet");
        assert!(ledger.is_fresh(KIND, now + 1));
        ledger.seen[1].grant.amount = 0;
        assert!(
            !ledger.is_fresh(KIND, now + 1),
            "a worker holds less than its part"
        );

        // A bucket: fresh again once refilled to its burst.
        let bucket = LimitKind::Bucket {
            rate: crate::snapshot::Rate {
                tokens: 10,
                per_nanos: 1_000_000_000,
            },
            burst: 100,
        };
        let mut ledger = Ledger::new(0, bucket, now, 2, false);
        assert!(ledger.is_fresh(bucket, now));
        ledger.charge(bucket, 1, 0, Source::Node, 0, 1, now);
        assert!(!ledger.is_fresh(bucket, now));
        assert!(ledger.is_fresh(bucket, now + 100_000_000));

        // Cluster scope: fresh only with nothing claimed or being claimed.
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        assert!(ledger.is_fresh(KIND, now));
        ledger.claims.as_mut().unwrap().held = 5;
        assert!(!ledger.is_fresh(KIND, now));
        ledger.claims.as_mut().unwrap().held = 0;
        ledger.claims.as_mut().unwrap().in_flight = true;
        assert!(!ledger.is_fresh(KIND, now));
    }

    #[test]
    fn claims_are_sized_by_demand_capped_at_a_fair_part() {
        let minute = 60_000_000_000;
        let now = minute * 1_000 + 5_000_000_000;
        let window = window_start(now, minute);
        let tick = 10_000_000;
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        // No demand, nothing held: no claim (one more idle tick).
        assert!(ledger.next_claim(KIND, now, tick, 2).is_none());
        assert_eq!(ledger.claims.unwrap().idle_ticks, 1);
        // Demand 10: twice that, within the fair part (100 / (2 × 2 nodes)).
        ledger.claims.as_mut().unwrap().demand = 10;
        let claim = ledger.next_claim(KIND, now, tick, 2).unwrap();
        assert_eq!(
            (claim.want, claim.give_back, claim.window),
            (20, 0, Some(window))
        );
        let c = ledger.claims.unwrap();
        assert!(c.in_flight && c.demand == 0);
        // One claim at a time.
        ledger.claims.as_mut().unwrap().demand = 10;
        assert!(ledger.next_claim(KIND, now, tick, 2).is_none());
        // A flood: the fair part less what is held.
        {
            let c = ledger.claims.as_mut().unwrap();
            c.in_flight = false;
            c.demand = 100;
            c.held = 5;
        }
        assert_eq!(ledger.next_claim(KIND, now, tick, 2).unwrap().want, 20);
        // A claim for a new window forgets what was held in the old one.
        {
            let c = ledger.claims.as_mut().unwrap();
            c.in_flight = false;
            c.demand = 1;
            c.held = 1;
        }
        let claim = ledger.next_claim(KIND, now + minute, tick, 2).unwrap();
        assert_eq!(claim.window, Some(window + minute));
        assert_eq!(ledger.claims.unwrap().held, 0);
    }

    #[test]
    fn an_idle_key_gives_its_unreserved_tokens_back() {
        let now = 1_000_000_000_000;
        let tick = 10_000_000;
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        {
            let c = ledger.claims.as_mut().unwrap();
            c.held = 10;
            c.idle_ticks = IDLE_TICKS_BEFORE_GIVING_BACK - 2;
        }
        // Idle, but not long enough yet.
        assert!(ledger.next_claim(KIND, now, tick, 2).is_none());
        assert!(ledger.next_claim(KIND, now, tick, 2).is_none());
        let claim = ledger.next_claim(KIND, now, tick, 2).unwrap();
        assert_eq!((claim.want, claim.give_back), (0, 10));
        assert_eq!(ledger.claims.unwrap().held, 0);
        // With demand (which what is held covers), nothing goes back and
        // nothing is claimed.
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        {
            let c = ledger.claims.as_mut().unwrap();
            c.held = 10;
            c.demand = 4;
            c.idle_ticks = IDLE_TICKS_BEFORE_GIVING_BACK;
        }
        assert!(ledger.next_claim(KIND, now, tick, 2).is_none());
        assert_eq!(ledger.claims.unwrap().held, 10);
    }

    #[test]
    fn a_fast_bucket_claims_at_least_a_few_rounds_of_refill() {
        let tick = 10_000_000;
        let bucket = |burst| LimitKind::Bucket {
            rate: crate::snapshot::Rate {
                tokens: 1_000,
                per_nanos: 1_000_000_000,
            },
            burst,
        };
        let want = |burst: u64, demand: u64| {
            let mut ledger = Ledger::new(0, bucket(burst), 0, 2, true);
            ledger.claims.as_mut().unwrap().demand = demand;
            ledger.next_claim(bucket(burst), 0, tick, 2).unwrap().want
        };
        // 1 000/s × 10 ms × 3 rounds = 30, more than burst 10 / 4.
        assert_eq!(want(10, 1_000), 30);
        // A large burst: its fair part, 1 000 / 4.
        assert_eq!(want(1_000, 1_000), 250);
        // Small demand: twice the demand.
        assert_eq!(want(1_000, 7), 14);
        // Three nodes: a fair part is 1 000 / (2 × 3).
        let mut ledger = Ledger::new(0, bucket(1_000), 0, 2, true);
        ledger.claims.as_mut().unwrap().demand = 1_000;
        assert_eq!(
            ledger.next_claim(bucket(1_000), 0, tick, 3).unwrap().want,
            166
        );
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        ledger.claims.as_mut().unwrap().demand = 1_000;
        assert_eq!(ledger.next_claim(KIND, 0, tick, 3).unwrap().want, 16);
    }

    #[test]
    fn a_key_is_looked_at_while_it_holds_awaits_or_wants_tokens() {
        assert!(!Ledger::new(0, KIND, 0, 2, false).still_claiming());
        let mut ledger = Ledger::new(0, KIND, 0, 2, true);
        assert!(!ledger.still_claiming());
        assert!(!ledger.claims.unwrap().listed);
        for set in [
            |c: &mut Claims| c.held = 1,
            |c: &mut Claims| c.in_flight = true,
            |c: &mut Claims| c.demand = 1,
        ] {
            let mut ledger = Ledger::new(0, KIND, 0, 2, true);
            set(ledger.claims.as_mut().unwrap());
            assert!(ledger.still_claiming());
            assert!(ledger.claims.unwrap().listed);
        }
    }

    /// A cluster ledger at `now` holding `held` claimed tokens for the
    /// current window, with `cluster_left` more in Redis.
    fn claimed(now: u64, held: u64, cluster_left: u64) -> Ledger {
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        let c = ledger.claims.as_mut().unwrap();
        c.held = held;
        c.cluster_left = cluster_left;
        ledger
    }

    #[test]
    fn claimed_tokens_are_granted_and_then_reserved() {
        let minute = 60_000_000_000;
        let now = minute * 1_000 + 5_000_000_000;
        let effective = now + 20_000_000;
        let mut shares = [0u64; 2];
        let mut ledger = claimed(now, 10, 40);
        assert_eq!(
            ledger.unreserved_claims(KIND, now),
            10,
            "nothing granted yet"
        );
        ledger.seen[0].demand = 8;
        ledger.grant(KIND, now, effective, Source::Claimed, 0, 2, &mut shares);
        let grants: Vec<Grant> = (0..2).map(|w| ledger.grant_for(w).0).collect();
        assert_eq!(grants[0].amount + grants[1].amount, 10);
        for g in &grants {
            assert_eq!(g.node_left, 50, "held + what Redis still has");
            assert_eq!(g.elsewhere, 10 - g.amount + 40);
            assert_eq!(g.window, window_start(now, minute));
            assert_eq!(g.share, 0, "claimed tokens do not refill here");
        }
        assert_eq!(ledger.unreserved_claims(KIND, effective), 0, "all granted");
        assert_eq!(ledger.seen[0].demand, 4, "demand fades by half per grant");
        // Tokens claimed for another window are not this window's.
        let mut ledger = claimed(now, 10, 40);
        ledger.claims.as_mut().unwrap().window -= minute;
        ledger.grant(KIND, now, effective, Source::Claimed, 0, 2, &mut shares);
        assert_eq!(
            ledger.grant_for(0).0.amount + ledger.grant_for(1).0.amount,
            0
        );
    }

    #[test]
    fn the_fallbacks_grant_everything_nothing_or_this_nodes_part() {
        let minute = 60_000_000_000;
        // 10 ms before a window ends: the grants take effect in the next.
        let now = minute * 1_001 - 10_000_000;
        let effective = now + 20_000_000;
        let mut shares = [0u64; 2];
        let mut ledger = Ledger::new(0, KIND, now, 2, true);
        let deny = Source::Fallback(OnRedisError::Deny);
        ledger.grant(KIND, now, effective, deny, 0, 2, &mut shares);
        let g = ledger.grant_for(0).0;
        assert_eq!((g.amount, g.node_left), (0, 0));
        assert_eq!(g.window, window_start(effective, minute));
        assert_eq!(g.window, minute * 1_001, "the window the grant is for");
        // Local share of a bucket: this node refills at its part of the
        // rate (the workers' refill shares sum to 1 / nodes).
        let bucket = LimitKind::Bucket {
            rate: crate::snapshot::Rate {
                tokens: 10,
                per_nanos: 1_000_000_000,
            },
            burst: 100,
        };
        let mut ledger = Ledger::new(0, bucket, now, 2, true);
        let local = Source::Fallback(OnRedisError::LocalShare);
        ledger.grant(bucket, now, effective, local, 1, 2, &mut shares);
        let refill: u64 = (0..2).map(|w| ledger.grant_for(w).0.share).sum();
        assert!(
            refill.abs_diff(SHARE_ONE / 2) <= 2,
            "refill shares {refill} of {SHARE_ONE}"
        );
        assert_eq!(ledger.grant_for(0).0.window, 0, "buckets have no window");
    }
}
