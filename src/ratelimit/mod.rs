//! [hot] Rate limits: per-worker shards of token buckets and window quotas.
//!
//! Every worker keeps its own bounded key table per policy and checks
//! requests against it with no lock and no atomic. Worker scope: the
//! table's buckets are the whole truth. Node and cluster scope: the table
//! holds the worker's part of a shared limit (`shared`), kept current by
//! the aggregator thread (`aggregator`) from the reports every worker sends
//! each sync interval (`sync`); cluster scope adds Redis (`redis`).

pub mod aggregator;
pub mod bucket;
pub mod clock;
pub mod cluster;
pub mod ledger;
pub mod shared;
pub mod sync;
pub mod table;

pub use bucket::{Decision, Rate, TokenBucket, WindowQuota};
pub use table::KeyTable;

use bytes::{BufMut, BytesMut};

use crate::ipnet::IpNet;
use crate::snapshot::{LimitKind, LimitScope, RateLimitPolicy};
use shared::SharedSlot;
use sync::{GrantBatch, Keyed, ReportRecord};

/// One key's state under one policy, with the tier it was created for.
enum State {
    Bucket(TokenBucket),
    Window(WindowQuota),
    Shared(SharedSlot),
}

struct Slot {
    /// The tier whose numbers the key is held to.
    tier: usize,
    /// Shared scopes: the tier the key's latest request claimed. Reported to
    /// the aggregator, which alone moves a key to another tier (once the
    /// key's usage is fresh) and hands the new tier back with its grants.
    claimed: usize,
    state: State,
}

impl Slot {
    fn new(tier: usize, kind: LimitKind, now: u64) -> Slot {
        let state = match kind {
            LimitKind::Bucket { rate, burst } => State::Bucket(TokenBucket::full(burst, rate, now)),
            LimitKind::Window { window_nanos, .. } => {
                State::Window(WindowQuota::new(now, window_nanos))
            }
        };
        Slot {
            tier,
            claimed: tier,
            state,
        }
    }

    fn shared(tier: usize, kind: LimitKind, now: u64, parts: u64, incarnation: u32) -> Slot {
        Slot {
            tier,
            claimed: tier,
            state: State::Shared(SharedSlot::new(kind, now, parts, incarnation)),
        }
    }

    /// `parts`: equal parts of a fresh shared limit (see `Limiter::parts`).
    fn fresh(&self, kind: LimitKind, now: u64, parts: u64) -> bool {
        match (&self.state, kind) {
            (State::Shared(s), kind) => s.is_fresh(kind, now, parts),
            (State::Bucket(b), LimitKind::Bucket { rate, burst }) => b.is_full(now, rate, burst),
            (State::Window(w), LimitKind::Window { window_nanos, .. }) => {
                w.is_idle(now, window_nanos)
            }
            _ => true,
        }
    }

    fn take(&mut self, kind: LimitKind, now: u64) -> Decision {
        match (&mut self.state, kind) {
            (State::Bucket(b), LimitKind::Bucket { rate, burst }) => b.take(now, rate, burst),
            (
                State::Window(w),
                LimitKind::Window {
                    limit,
                    window_nanos,
                },
            ) => w.take(now, limit, window_nanos),
            _ => unreachable!("a slot is rebuilt when its tier's kind changes"),
        }
    }
}

/// Most keys one worker reports per sync interval, in all and per policy
/// (a quarter of the policy's `max_keys`). Beyond it (a flood of new keys),
/// a key is reported the next time it is used; a one-shot key may never be,
/// which costs nothing since its default grant is all it had. This bounds
/// the memory of reports and grants, and keeps a flood from cycling the
/// aggregator's table faster than busy keys are reported (which would
/// evict them there).
const MAX_REPORT: usize = 2048;

/// The keys of the next report, with how many each policy has there.
struct ReportQueue {
    entries: Keyed<ReportRecord>,
    per_policy: Vec<usize>,
}

impl ReportQueue {
    fn len(&self) -> usize {
        self.entries.records.len()
    }

    /// Lists `key`; its totals are filled in when the report is taken.
    fn push(&mut self, policy: u32, tier: u32, key: &[u8]) {
        let span = self.entries.push_key(key);
        self.entries.records.push(ReportRecord {
            policy,
            tier,
            key: span,
            incarnation: 0,
            admitted: 0,
            attempts: 0,
            window: 0,
            grant_start: 0,
            carried: 0,
        });
        if let Some(n) = self.per_policy.get_mut(policy as usize) {
            *n += 1;
        }
    }
}

fn report_cap(policy: &RateLimitPolicy) -> usize {
    (policy.max_keys / 4).clamp(16, MAX_REPORT)
}

/// The limit of a policy's tier (0 is the default, i is `tiers[i - 1]`).
pub fn tier_kind(policy: &RateLimitPolicy, tier: usize) -> LimitKind {
    match tier.checked_sub(1).and_then(|i| policy.tiers.get(i)) {
        Some((_, kind)) => *kind,
        None => policy.default,
    }
}

/// A worker's limit state for one snapshot's policies.
pub struct Limiter {
    tables: Vec<KeyTable<Slot>>,
    /// `Snapshot::id` these policy indices belong to.
    snapshot: u64,
    /// Workers sharing node- and cluster-scope limits.
    workers: u32,
    /// Shared-scope keys seen since the last report.
    queue: ReportQueue,
    next_incarnation: u32,
}

impl Limiter {
    /// Limits for `policies` of snapshot `snapshot` (its id), in one of
    /// `workers` workers.
    pub fn new(policies: &[RateLimitPolicy], snapshot: u64, workers: usize) -> Limiter {
        Limiter {
            tables: policies.iter().map(|p| KeyTable::new(p.max_keys)).collect(),
            snapshot,
            workers: workers as u32,
            queue: ReportQueue {
                entries: Keyed::stock(),
                per_policy: vec![0; policies.len()],
            },
            next_incarnation: 1,
        }
    }

    /// The limiter for a reloaded config: policies that did not change (same
    /// name and settings) keep their keys' state, so a config push does not
    /// hand every client a fresh quota; changed and new policies start empty.
    pub fn carry_over(
        previous: &mut Limiter,
        old: &[RateLimitPolicy],
        new: &[RateLimitPolicy],
        snapshot: u64,
    ) -> Limiter {
        let mut limiter = Limiter::new(new, snapshot, previous.workers as usize);
        limiter.next_incarnation = previous.next_incarnation;
        let moved: Vec<Option<usize>> = old
            .iter()
            .map(|o| new.iter().position(|p| p == o))
            .collect();
        for (i, target) in moved.iter().enumerate() {
            if let Some(j) = *target {
                limiter.tables[j] = std::mem::replace(&mut previous.tables[i], KeyTable::new(1));
            }
        }
        // Keys waiting to be reported keep their place in the next report.
        let old_queue = &previous.queue.entries;
        for r in &old_queue.records {
            if let Some(Some(j)) = moved.get(r.policy as usize) {
                limiter.queue.push(*j as u32, r.tier, old_queue.key(r.key));
            }
        }
        limiter
    }

    /// Whether any policy is shared between workers (node or cluster scope).
    pub fn has_shared(policies: &[RateLimitPolicy]) -> bool {
        policies.iter().any(|p| p.scope != LimitScope::Worker)
    }

    /// Moves the shared-scope keys admitted since the last report, with
    /// their running totals, into `out` (cleared first).
    pub fn take_report(&mut self, out: &mut Keyed<ReportRecord>, now: u64) {
        out.clear();
        std::mem::swap(&mut self.queue.entries, out);
        self.queue.per_policy.fill(0);
        for r in &mut out.records {
            let Some(slot) = self.tables[r.policy as usize].get_mut(r.key.slice(&out.keys)) else {
                continue; // evicted since: nothing to report
            };
            if let State::Shared(s) = &mut slot.state {
                // Report under the grant in force now.
                s.promote(now);
                r.admitted = s.admitted();
                r.attempts = s.attempts();
                r.incarnation = s.incarnation();
                r.window = s.window();
                (r.grant_start, r.carried) = s.carried();
                r.tier = slot.claimed as u32;
                if s.has_pending() {
                    // Report again once the pending grant is in force: the
                    // aggregator learns then what this worker carried over,
                    // and stops holding room for it.
                    self.queue.push(r.policy, r.tier, r.key.slice(&out.keys));
                } else {
                    s.queued = false;
                }
            }
        }
    }

    /// Takes the aggregator's grants. Keys this worker has not seen are
    /// entered only when the grant differs from the default one.
    pub fn apply(&mut self, batch: &GrantBatch, policies: &[RateLimitPolicy], now: u64) {
        if batch.snapshot != self.snapshot {
            return;
        }
        for r in &batch.entries.records {
            let Some(policy) = policies.get(r.policy as usize) else {
                continue;
            };
            let tier = r.tier as usize;
            let kind = tier_kind(policy, tier);
            let key = batch.entries.key(r.key);
            let parts = self.parts(policy);
            let table = &mut self.tables[r.policy as usize];
            // The default grant is what a missing entry means.
            if table.get_mut(key).is_none() && r.grant.is_default(kind, now, parts) {
                continue;
            }
            let next_incarnation = &mut self.next_incarnation;
            let slot = table.get_or_insert_unmarked(
                key,
                || {
                    *next_incarnation = next_incarnation.wrapping_add(1).max(1);
                    Slot::shared(tier, kind, now, parts, *next_incarnation)
                },
                |s| s.fresh(tier_kind(policy, s.tier), now, parts),
            );
            if matches!(slot.state, State::Shared(_)) {
                // The aggregator holds the key under one tier (the first it
                // saw, until the key's usage is fresh): that one is in force
                // here too, whatever tier this worker's requests claimed.
                slot.tier = tier;
            }
            if let State::Shared(s) = &mut slot.state {
                s.schedule(r.grant, r.incarnation, r.counted, now);
                if !s.queued && self.queue.len() < MAX_REPORT {
                    // Reported once it is in force (see take_report).
                    s.queued = true;
                    self.queue.push(r.policy, r.tier, key);
                }
            }
        }
    }

    /// How many equal parts a fresh shared limit is split into here: one
    /// per worker for node scope; none for cluster scope, where a worker
    /// admits only what the aggregator has claimed from Redis for it.
    fn parts(&self, policy: &RateLimitPolicy) -> u64 {
        match policy.scope {
            LimitScope::Cluster { .. } => 0,
            _ => u64::from(self.workers),
        }
    }

    /// Counts one request for `key` under policy `index`. `tier` is the
    /// value of the policy's tier header, if the request carried one.
    pub fn check(
        &mut self,
        index: usize,
        policy: &RateLimitPolicy,
        key: &[u8],
        tier: Option<&[u8]>,
        now: u64,
    ) -> Decision {
        self.check_again(index, policy, key, tier, now, false)
    }

    /// `check`, for a request asking again after waiting for a grant
    /// (`retry`: it counts as demand, not as a new request).
    pub fn check_again(
        &mut self,
        index: usize,
        policy: &RateLimitPolicy,
        key: &[u8],
        tier: Option<&[u8]>,
        now: u64,
        retry: bool,
    ) -> Decision {
        let tier_index = tier
            .and_then(|t| policy.tiers.iter().position(|(name, _)| name.as_ref() == t))
            .map_or(0, |i| i + 1);
        let kind = tier_kind(policy, tier_index);
        let shared = policy.scope != LimitScope::Worker;
        let parts = self.parts(policy);
        let next_incarnation = &mut self.next_incarnation;
        let mut make = || {
            if shared {
                *next_incarnation = next_incarnation.wrapping_add(1).max(1);
                Slot::shared(tier_index, kind, now, parts, *next_incarnation)
            } else {
                Slot::new(tier_index, kind, now)
            }
        };
        let slot = self.tables[index].get_or_insert(key, &mut make, |s| {
            s.fresh(tier_kind(policy, s.tier), now, parts)
        });
        if slot.tier != tier_index {
            // The key claims another tier. It never starts afresh: a client
            // alternating tiers gets at most the most generous one's
            // allowance (tiers of a policy share its algorithm, checked at
            // load, so usage carries over).
            let old = tier_kind(policy, slot.tier);
            match &mut slot.state {
                // Shared scopes: the aggregator holds the key under one
                // tier and moves it (see `claimed`). Never a new entry here:
                // admissions not yet reported would be lost with the old one.
                State::Shared(_) => {}
                // Worker scope: what the key used is kept; the new tier's
                // numbers apply from now on.
                State::Bucket(b) => match (old, kind) {
                    (LimitKind::Bucket { rate, burst }, LimitKind::Bucket { rate: to, .. }) => {
                        b.rescale(now, rate, burst, to);
                        slot.tier = tier_index;
                    }
                    // Config validation keeps tiers on one algorithm.
                    _ => *slot = make(),
                },
                State::Window(_) => match (old, kind) {
                    (
                        LimitKind::Window {
                            window_nanos: a, ..
                        },
                        LimitKind::Window {
                            window_nanos: b, ..
                        },
                    ) if a == b => slot.tier = tier_index,
                    _ => *slot = make(),
                },
            }
        }
        slot.claimed = tier_index;
        let kind = tier_kind(policy, slot.tier);
        match &mut slot.state {
            State::Shared(s) => {
                let decision = s.take(kind, now, parts, retry);
                if !s.queued
                    && self.queue.len() < MAX_REPORT
                    && self.queue.per_policy[index] < report_cap(policy)
                {
                    s.queued = true;
                    self.queue.push(index as u32, tier_index as u32, key);
                }
                decision
            }
            _ => slot.take(kind, now),
        }
    }
}

/// The RateLimit-* headers (IETF draft) and their X-RateLimit-* forms.
pub fn write_headers(out: &mut BytesMut, d: &Decision) {
    for name in ["RateLimit", "X-RateLimit"] {
        for (suffix, value) in [
            ("-Limit", d.limit),
            ("-Remaining", d.remaining),
            ("-Reset", d.reset_secs),
        ] {
            out.put_slice(name.as_bytes());
            out.put_slice(suffix.as_bytes());
            out.put_slice(b": ");
            crate::http::write::decimal(out, value);
            out.put_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod limiter_tests {
    use super::*;
    use crate::snapshot::LimitKey;

    const S: u64 = 1_000_000_000;

    fn policy() -> RateLimitPolicy {
        RateLimitPolicy {
            name: "p".into(),
            scope: LimitScope::Worker,
            trusted_proxies: vec![],
            key: LimitKey::Global,
            default: LimitKind::Bucket {
                rate: Rate {
                    tokens: 1,
                    per_nanos: S,
                },
                burst: 2,
            },
            tier_header: Some(b"x-plan".as_slice().into()),
            tiers: vec![(
                b"gold".as_slice().into(),
                LimitKind::Bucket {
                    rate: Rate {
                        tokens: 60,
                        per_nanos: 60 * S,
                    },
                    burst: 5,
                },
            )],
            headers: true,
            max_keys: 10,
        }
    }

    #[test]
    fn tiers_get_their_own_limits_and_keys_are_separate() {
        let p = policy();
        let mut l = Limiter::new(std::slice::from_ref(&p), 1, 1);
        let allowed =
            |l: &mut Limiter, key: &[u8], tier: Option<&[u8]>| l.check(0, &p, key, tier, 0).allowed;
        assert!(allowed(&mut l, b"a", None) && allowed(&mut l, b"a", None));
        assert!(!allowed(&mut l, b"a", None), "default tier: burst 2");
        assert!(
            allowed(&mut l, b"b", None),
            "another key has its own bucket"
        );
        for _ in 0..5 {
            assert!(allowed(&mut l, b"g", Some(b"gold")));
        }
        assert!(!allowed(&mut l, b"g", Some(b"gold")), "gold: a burst of 5");
        assert!(
            allowed(&mut l, b"c", Some(b"unknown-plan")),
            "unknown tiers use the default"
        );
    }

    /// Tier alternation never restarts a key's quota: whatever the client
    /// alternates, it gets at most the most generous tier's allowance.
    #[test]
    fn alternating_tiers_never_beats_the_most_generous_tier() {
        // Buckets (with rates in different units: 1/s and 60/min).
        let p = policy();
        for pattern in [
            &[None, Some(&b"gold"[..])][..],
            &[Some(&b"gold"[..]), None],
            &[Some(&b"gold"[..]), Some(b"gold"), None],
            &[None, None, Some(b"gold")],
        ] {
            let mut l = Limiter::new(std::slice::from_ref(&p), 1, 1);
            let mut admitted = 0;
            // Ten seconds of 20 requests a second.
            for i in 0..200u64 {
                let tier = pattern[i as usize % pattern.len()];
                if l.check(0, &p, b"k", tier, i * S / 20).allowed {
                    admitted += 1;
                }
            }
            // Gold's allowance over 10 s: burst 5 + 1/s × 10 s.
            assert!(admitted <= 5 + 10, "{pattern:?}: {admitted} admitted");
            // And at least the least generous one's (burst 2 + 9 refills).
            assert!(admitted >= 2 + 9, "{pattern:?}: {admitted} admitted");
        }

        // Windows: default 5, gold 10 per window.
        let mut w = policy();
        w.default = LimitKind::Window {
            limit: 5,
            window_nanos: 60 * S,
        };
        w.tiers[0].1 = LimitKind::Window {
            limit: 10,
            window_nanos: 60 * S,
        };
        let mut l = Limiter::new(std::slice::from_ref(&w), 1, 1);
        let admitted = (0..40)
            .filter(|i| {
                let tier = if i % 2 == 0 { Some(&b"gold"[..]) } else { None };
                l.check(0, &w, b"k", tier, 0).allowed
            })
            .count();
        assert_eq!(admitted, 10, "at most gold's 10, never 5 + 10 or more");
        // The next window starts afresh.
        assert!(l.check(0, &w, b"k", None, 60 * S).allowed);
    }

    #[test]
    fn a_bucket_keeps_its_tokens_when_rescaled_to_another_rate() {
        let per_sec = Rate {
            tokens: 1,
            per_nanos: S,
        };
        let per_min = Rate {
            tokens: 60,
            per_nanos: 60 * S,
        };
        let mut b = TokenBucket::full(3, per_sec, 0);
        b.take(0, per_sec, 3);
        b.rescale(0, per_sec, 3, per_min);
        let taken = (0..5).filter(|_| b.take(0, per_min, 10).allowed).count();
        assert_eq!(taken, 2, "the two tokens left, no more");
    }

    #[test]
    fn unchanged_policies_keep_their_state_across_a_reload() {
        let p = policy();
        let mut l = Limiter::new(std::slice::from_ref(&p), 1, 1);
        assert!(l.check(0, &p, b"a", None, 0).allowed && l.check(0, &p, b"a", None, 0).allowed);
        assert!(!l.check(0, &p, b"a", None, 0).allowed);
        // Same policy, now second in the list: its state follows it.
        let mut other = policy();
        other.name = "other".into();
        let new = [other.clone(), p.clone()];
        let mut next = Limiter::carry_over(&mut l, std::slice::from_ref(&p), &new, 2);
        assert!(
            !next.check(1, &p, b"a", None, 0).allowed,
            "still exhausted after the reload"
        );
        // A changed policy starts fresh.
        let mut changed = p.clone();
        changed.max_keys = 11;
        let mut fresh = Limiter::carry_over(&mut next, &new, std::slice::from_ref(&changed), 3);
        assert!(fresh.check(0, &changed, b"a", None, 0).allowed);
    }

    #[test]
    fn long_keys_are_stored_bounded_and_still_tell_keys_apart() {
        let mut a_scratch = [0u8; HASHED_KEY_LEN];
        let mut b_scratch = [0u8; HASHED_KEY_LEN];
        let short = b"client-1";
        assert_eq!(bounded_key(short, &mut a_scratch), short);
        let exactly = [b'k'; MAX_RAW_KEY];
        assert_eq!(bounded_key(&exactly, &mut a_scratch), &exactly[..]);
        let long_a = [b'x'; 16 * 1024];
        let mut long_b = long_a;
        long_b[16 * 1024 - 1] = b'y';
        let a = bounded_key(&long_a, &mut a_scratch).to_vec();
        let b = bounded_key(&long_b, &mut b_scratch).to_vec();
        assert_eq!(a.len(), HASHED_KEY_LEN);
        assert_ne!(a, b, "keys differing only at the end stay apart");
        assert_eq!(
            bounded_key(&long_a, &mut b_scratch),
            &a[..],
            "deterministic"
        );
    }

    #[test]
    fn headers_carry_limit_remaining_and_reset() {
        let mut out = BytesMut::new();
        write_headers(
            &mut out,
            &Decision {
                allowed: true,
                limit: 100,
                remaining: 42,
                reset_secs: 7,
                retry_after_secs: 0,
                defer: false,
            },
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains("RateLimit-Limit: 100\r\n")
                && text.contains("RateLimit-Remaining: 42\r\n")
        );
        assert!(text.contains("X-RateLimit-Reset: 7\r\n"));
    }
}

/// The client address for rate limiting: the peer, unless the peer is a
/// trusted proxy, in which case the right-most X-Forwarded-For entry that is
/// not itself a trusted proxy (entries further left are the client's own
/// claims and could be forged). `xff` yields header values in order.
/// Longest key stored as it is; longer keys (a `header:NAME` value may be
/// up to the whole head) are stored as `KEY_PREFIX` bytes of the key and a
/// 128-bit SHA-256 prefix of all of it, so `max_keys` bounds memory.
pub const MAX_RAW_KEY: usize = 64;
const KEY_PREFIX: usize = MAX_RAW_KEY;
/// The stored form of a long key: never the length of a raw one, so the two
/// cannot collide; the same on every worker and node (keys of node and
/// cluster limits must agree across them).
pub const HASHED_KEY_LEN: usize = KEY_PREFIX + 16;
const _: () = assert!(HASHED_KEY_LEN > MAX_RAW_KEY);

/// `key` if it is short, else its bounded stored form, written to `scratch`.
pub fn bounded_key<'a>(key: &'a [u8], scratch: &'a mut [u8; HASHED_KEY_LEN]) -> &'a [u8] {
    if key.len() <= MAX_RAW_KEY {
        return key;
    }
    let digest = crate::crypto::digest::digest(&crate::crypto::digest::SHA256, key);
    scratch[..KEY_PREFIX].copy_from_slice(&key[..KEY_PREFIX]);
    scratch[KEY_PREFIX..].copy_from_slice(&digest.as_ref()[..16]);
    &scratch[..]
}

pub fn client_ip_key<'a>(
    peer: std::net::IpAddr,
    peer_text: &'a [u8],
    trusted: &[IpNet],
    xff: impl DoubleEndedIterator<Item = &'a [u8]>,
) -> &'a [u8] {
    crate::ipnet::behind_trusted_proxies(peer, trusted, xff).map_or(peer_text, |(text, _)| text)
}

#[cfg(test)]
mod ip_tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_through_trusted_proxies() {
        let trusted = [IpNet::parse("10.0.0.0/8").unwrap()];
        let proxy: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let key = |peer: std::net::IpAddr, values: &[&'static [u8]]| {
            client_ip_key(peer, b"PEER", &trusted, values.iter().copied())
        };
        assert_eq!(key(proxy, &[b"203.0.113.7"]), b"203.0.113.7");
        // Forged left-most entries are ignored; trusted hops are skipped.
        assert_eq!(
            key(proxy, &[b"1.1.1.1, 203.0.113.7, 10.0.0.9"]),
            b"203.0.113.7"
        );
        assert_eq!(key(proxy, &[b"1.1.1.1", b"203.0.113.8"]), b"203.0.113.8");
        // An untrusted peer's header is not believed at all.
        assert_eq!(
            key("198.51.100.1".parse().unwrap(), &[b"203.0.113.7"]),
            b"PEER"
        );
        assert_eq!(key(proxy, &[b"garbage"]), b"PEER");
        assert_eq!(key(proxy, &[]), b"PEER");
    }
}
