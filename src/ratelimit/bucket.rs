//! The two limit algorithms, as plain state machines that are handed `now`
//! (nanoseconds on any monotonic clock), so their rules are tested on
//! simulated time without sleeping.

/// What a check decided, with what the RateLimit-* headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The limit in force (burst, or the window's limit).
    pub limit: u64,
    /// Requests still allowed now.
    pub remaining: u64,
    /// Seconds until the limit is fully available again (RateLimit-Reset).
    pub reset_secs: u64,
    /// Seconds a refused client should wait (Retry-After); 0 when allowed.
    pub retry_after_secs: u64,
    /// Refused only because this worker's part of a shared limit is spent
    /// while the node as a whole has more left: the next grant (a few sync
    /// intervals away) may give this worker more, so the request may wait
    /// for it instead of being refused now.
    pub defer: bool,
}

const NANOS: u128 = 1_000_000_000;

fn ceil_secs(nanos: u128) -> u64 {
    nanos.div_ceil(NANOS) as u64
}

pub use crate::snapshot::Rate;

/// A token bucket: `burst` tokens, refilled at `rate`. One token is
/// `rate.per_nanos` units and a nanosecond adds `rate.tokens` units, so
/// refills and waiting times are exact integers at any rate (1/min too).
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    /// Units available at `updated`.
    units: u128,
    updated: u64,
}

impl TokenBucket {
    pub fn full(burst: u64, rate: Rate, now: u64) -> TokenBucket {
        TokenBucket {
            units: u128::from(burst) * u128::from(rate.per_nanos),
            updated: now,
        }
    }

    fn refill(&mut self, now: u64, rate: Rate, burst: u64) {
        let elapsed = u128::from(now.saturating_sub(self.updated));
        let cap = u128::from(burst) * u128::from(rate.per_nanos);
        self.units = (self.units + elapsed * u128::from(rate.tokens)).min(cap);
        self.updated = now.max(self.updated);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: u64, rate: Rate, burst: u64) -> Decision {
        self.refill(now, rate, burst);
        let one = u128::from(rate.per_nanos.max(1));
        let per_ns = u128::from(rate.tokens.max(1));
        let cap = u128::from(burst) * one;
        let allowed = self.units >= one;
        if allowed {
            self.units -= one;
        }
        Decision {
            allowed,
            limit: burst,
            remaining: (self.units / one) as u64,
            reset_secs: ceil_secs((cap - self.units).div_ceil(per_ns)),
            retry_after_secs: if allowed {
                0
            } else {
                ceil_secs((one - self.units).div_ceil(per_ns)).max(1)
            },
            defer: false,
        }
    }

    /// The same bucket under another rate (a key that moved to another tier):
    /// the tokens it holds at `now` are kept, rounded down, so a change of
    /// tier never hands out tokens the key had used.
    pub fn rescale(&mut self, now: u64, from: Rate, from_burst: u64, to: Rate) {
        self.refill(now, from, from_burst);
        let tokens = self.units / u128::from(from.per_nanos.max(1));
        let fraction = self.units % u128::from(from.per_nanos.max(1));
        self.units = tokens * u128::from(to.per_nanos)
            + fraction * u128::from(to.per_nanos) / u128::from(from.per_nanos.max(1));
    }

    /// Whether the bucket has refilled completely: such an entry is
    /// indistinguishable from a new key and can be evicted for free.
    pub fn is_full(&self, now: u64, rate: Rate, burst: u64) -> bool {
        let mut probe = *self;
        probe.refill(now, rate, burst);
        probe.units >= u128::from(burst) * u128::from(rate.per_nanos)
    }
}

/// The start of the window of length `window_nanos` that `now` falls in
/// (windows are aligned to multiples of their length on the clock).
pub fn window_start(now: u64, window_nanos: u64) -> u64 {
    now - now % window_nanos.max(1)
}

/// A fixed-window quota: at most `limit` requests per `window`, windows
/// aligned to multiples of the window length on the clock.
#[derive(Debug, Clone, Copy)]
pub struct WindowQuota {
    window_start: u64,
    used: u64,
}

impl WindowQuota {
    pub fn new(now: u64, window_nanos: u64) -> WindowQuota {
        WindowQuota {
            window_start: window_start(now, window_nanos),
            used: 0,
        }
    }

    fn roll(&mut self, now: u64, window_nanos: u64) {
        let start = window_start(now, window_nanos);
        if start > self.window_start {
            self.window_start = start;
            self.used = 0;
        }
    }

    pub fn take(&mut self, now: u64, limit: u64, window_nanos: u64) -> Decision {
        self.roll(now, window_nanos);
        let allowed = self.used < limit;
        if allowed {
            self.used += 1;
        }
        let reset = ceil_secs(u128::from(
            self.window_start + window_nanos - now.min(self.window_start + window_nanos),
        ));
        Decision {
            allowed,
            limit,
            remaining: limit - self.used.min(limit),
            reset_secs: reset,
            retry_after_secs: if allowed { 0 } else { reset.max(1) },
            defer: false,
        }
    }

    /// Unused in the current window: evictable for free.
    pub fn is_idle(&self, now: u64, window_nanos: u64) -> bool {
        let mut probe = *self;
        probe.roll(now, window_nanos);
        probe.used == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const PER_SEC_10: Rate = Rate {
        tokens: 10,
        per_nanos: S,
    };

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::full(5, PER_SEC_10, 0);
        for i in 0..5 {
            let d = b.take(0, PER_SEC_10, 5);
            assert!(d.allowed);
            assert_eq!(d.remaining, 4 - i);
        }
        let refused = b.take(0, PER_SEC_10, 5);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1);
        assert_eq!(refused.reset_secs, 1, "5 tokens at 10/s");
        // 10/s: one token every 100 ms.
        assert!(!b.take(S / 20, PER_SEC_10, 5).allowed);
        assert!(b.take(S / 10, PER_SEC_10, 5).allowed);
        assert!(!b.take(S / 10, PER_SEC_10, 5).allowed);
    }

    #[test]
    fn bucket_rate_holds_over_a_long_run() {
        // 100/s for 10 simulated seconds, offered 1 000/s: burst + rate × time.
        let rate = Rate {
            tokens: 100,
            per_nanos: S,
        };
        let mut b = TokenBucket::full(200, rate, 0);
        let admitted = (0..10_000u64)
            .filter(|i| b.take(i * S / 1000, rate, 200).allowed)
            .count();
        assert_eq!(admitted, 200 + 999);
    }

    #[test]
    fn slow_rates_lose_nothing_to_rounding() {
        let per_minute = Rate {
            tokens: 1,
            per_nanos: 60 * S,
        };
        let mut b = TokenBucket::full(1, per_minute, 0);
        assert!(b.take(0, per_minute, 1).allowed);
        let refused = b.take(S, per_minute, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 59);
        for step in 2..60 {
            assert!(!b.take(step * S, per_minute, 1).allowed);
        }
        assert!(b.take(60 * S, per_minute, 1).allowed);
    }

    /// The header figures: what is left, and when the limit is whole again.
    #[test]
    fn decisions_report_remaining_and_reset() {
        let mut b = TokenBucket::full(10, PER_SEC_10, 0);
        let d = b.take(0, PER_SEC_10, 10);
        assert_eq!((d.remaining, d.reset_secs, d.limit), (9, 1, 10));
        for _ in 0..9 {
            b.take(0, PER_SEC_10, 10);
        }
        let d = b.take(0, PER_SEC_10, 10);
        assert!(!d.allowed);
        assert_eq!((d.remaining, d.reset_secs, d.retry_after_secs), (0, 1, 1));

        let mut w = WindowQuota::new(0, 60 * S);
        for expected in (0..3).rev() {
            let d = w.take(15 * S, 3, 60 * S);
            assert_eq!((d.remaining, d.reset_secs), (expected, 45));
        }
        let d = w.take(15 * S, 3, 60 * S);
        assert_eq!((d.allowed, d.remaining, d.retry_after_secs), (false, 0, 45));
    }

    #[test]
    fn full_buckets_are_evictable() {
        let rate = Rate {
            tokens: 1,
            per_nanos: S,
        };
        let mut b = TokenBucket::full(3, rate, 0);
        b.take(0, rate, 3);
        assert!(!b.is_full(S / 2, rate, 3));
        assert!(b.is_full(S, rate, 3));
    }

    #[test]
    fn window_quota_resets_at_window_boundaries() {
        let w = 60 * S;
        let mut q = WindowQuota::new(10 * S, w);
        for _ in 0..3 {
            assert!(q.take(10 * S, 3, w).allowed);
        }
        let refused = q.take(30 * S, 3, w);
        assert!(!refused.allowed);
        assert_eq!(refused.reset_secs, 30);
        assert_eq!(refused.retry_after_secs, 30);
        assert!(q.take(60 * S, 3, w).allowed, "a new window");
        assert!(!q.is_idle(61 * S, w));
        assert!(q.is_idle(120 * S, w));
    }
}
