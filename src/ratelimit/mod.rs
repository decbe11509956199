//! [hot] Rate limits: per-worker shards of token buckets and window quotas.
//!
//! Worker scope: each worker enforces its own limits with its own bounded
//! key table, no lock, no atomic. Node scope (periodic aggregation across
//! workers) and cluster scope (Redis) are not built yet; the config refuses
//! them rather than silently enforcing something else.

pub mod bucket;
pub mod table;

pub use bucket::{Decision, Rate, TokenBucket, WindowQuota};
pub use table::KeyTable;

use bytes::{BufMut, BytesMut};

use crate::snapshot::{LimitKind, RateLimitPolicy};

/// One key's state under one policy, with the tier it was created for.
enum State {
    Bucket(TokenBucket),
    Window(WindowQuota),
}

struct Slot {
    tier: usize,
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
        Slot { tier, state }
    }

    fn fresh(&self, kind: LimitKind, now: u64) -> bool {
        match (&self.state, kind) {
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

/// A worker's limit state for one snapshot's policies (worker scope: each
/// worker enforces its own limits).
pub struct Limiter {
    tables: Vec<KeyTable<Slot>>,
}

impl Limiter {
    pub fn new(policies: &[RateLimitPolicy]) -> Limiter {
        Limiter {
            tables: policies.iter().map(|p| KeyTable::new(p.max_keys)).collect(),
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
        let tier_index = tier
            .and_then(|t| policy.tiers.iter().position(|(name, _)| name.as_ref() == t))
            .map_or(0, |i| i + 1);
        let kind_of = |tier: usize| {
            if tier == 0 {
                policy.default
            } else {
                policy.tiers[tier - 1].1
            }
        };
        let kind = kind_of(tier_index);
        let slot = self.tables[index].get_or_insert(
            key,
            || Slot::new(tier_index, kind, now),
            |s| s.fresh(kind_of(s.tier), now),
        );
        if slot.tier != tier_index {
            // The key moved to another tier: it starts that tier fresh.
            *slot = Slot::new(tier_index, kind, now);
        }
        slot.take(kind, now)
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
                LimitKind::Window {
                    limit: 5,
                    window_nanos: 60 * S,
                },
            )],
            headers: true,
            max_keys: 10,
        }
    }

    #[test]
    fn tiers_get_their_own_limits_and_keys_are_separate() {
        let p = policy();
        let mut l = Limiter::new(std::slice::from_ref(&p));
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
        assert!(!allowed(&mut l, b"g", Some(b"gold")), "gold: 5 per window");
        assert!(
            allowed(&mut l, b"c", Some(b"unknown-plan")),
            "unknown tiers use the default"
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
