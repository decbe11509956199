//! [hot] Retry rules, without I/O: which failed tries a route's `retry`
//! policy repeats (`RetryPolicy::wants`), how long to wait before the next
//! one (full-jitter exponential backoff), and the per-worker retry budget
//! that keeps retries a bounded share of an upstream's traffic.
//!
//! The budget is a balance in thousandths of a retry: every request to
//! the upstream deposits `percent` / 100 of a retry, every retry withdraws
//! one, deposits fade with a ten-second time constant, and at the start of
//! each second the balance is topped up to `min_per_second` retries so a
//! quiet upstream can still retry. Hence, on one worker, over any stretch:
//! retries ≤ percent% × requests + min_per_second × seconds (+1). Counting
//! requests rather than Envoy's concurrent retries gives that bound
//! whatever the upstream's latency; the fading balance lets a burst of
//! failures after a healthy stretch be retried in full (about percent% of
//! the last ten seconds' requests).

use std::time::Duration;

/// What failed about one try, as a retry policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// The connection could not be opened (refused, unreachable, connect
    /// or TLS handshake timed out): nothing reached the upstream.
    Connect,
    /// The connection broke before a response head arrived.
    Reset,
    /// No response head within the try's timeout.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

/// A route's `retry = { ... }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (2..=10).
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Statuses that are retried (sorted).
    pub on_statuses: Vec<u16>,
    /// Each try's bound from connect to response head (default: the
    /// upstream's connect and response timeouts).
    pub per_try_timeout: Option<Duration>,
    /// The whole request's bound, every try and wait included, to the
    /// response head.
    pub deadline: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retry methods that are not idempotent (POST, PATCH) after their
    /// request was sent. Without it they are retried only when the
    /// connection could not be opened.
    pub non_idempotent: bool,
    /// Largest request body kept to replay (bodies of unknown length are
    /// never kept).
    pub max_body: u64,
}

impl RetryPolicy {
    /// Whether a try that failed so is retried, for a request whose
    /// method is `idempotent`.
    pub fn wants(&self, failure: TryFailure, idempotent: bool) -> bool {
        let named = match failure {
            TryFailure::Connect => return self.on_connect_failure,
            TryFailure::Reset => self.on_reset,
            TryFailure::Timeout => self.on_timeout,
            TryFailure::Status(s) => self.on_statuses.binary_search(&s).is_ok(),
        };
        named && (idempotent || self.non_idempotent)
    }

    /// The wait before retry number `retry` (1 for the first retry):
    /// uniform in [0, min(max, base × 2^(retry-1))] ("full jitter"), from
    /// the random number `random`.
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let exp = retry.saturating_sub(1).min(20);
        let ceiling = self
            .backoff_base
            .saturating_mul(1 << exp)
            .min(self.backoff_max);
        let nanos = ceiling.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(random % (nanos + 1))
    }
}

/// An upstream's `retry_budget`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRule {
    /// Retries at most this percentage of requests (0..=100).
    pub percent: u32,
    /// Plus this many retries a second, per worker.
    pub min_per_second: u32,
}

impl Default for BudgetRule {
    fn default() -> Self {
        BudgetRule {
            percent: 20,
            min_per_second: 10,
        }
    }
}

/// Thousandths of a retry.
const MILLI: u64 = 1000;
/// What is left of the balance after each second: deposits fade with a
/// ten-second time constant (e^-0.1), so the balance is about `percent`%
/// of the last ten seconds' requests, never a bank of the last hour.
const KEPT_PER_SECOND: u64 = 905;

/// One worker's retry budget for one upstream. Takes no clock: the
/// worker's once-a-second sweep calls `second_passed`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    rule: BudgetRule,
    balance: u64,
    /// Retries refused for want of budget.
    pub exhausted: u64,
}

impl RetryBudget {
    pub fn new(rule: BudgetRule) -> RetryBudget {
        RetryBudget {
            rule,
            balance: u64::from(rule.min_per_second) * MILLI,
            exhausted: 0,
        }
    }

    /// A request to the upstream was made.
    #[inline]
    pub fn deposit(&mut self) {
        self.balance = self
            .balance
            .saturating_add(u64::from(self.rule.percent) * MILLI / 100);
    }

    /// Takes one retry from the budget, if it holds one.
    pub fn withdraw(&mut self) -> bool {
        if self.balance >= MILLI {
            self.balance -= MILLI;
            true
        } else {
            self.exhausted += 1;
            false
        }
    }

    /// A second went by: older deposits fade, and at least
    /// `min_per_second` retries are available for the next second.
    pub fn second_passed(&mut self) {
        self.balance = (self.balance / MILLI * KEPT_PER_SECOND)
            + (self.balance % MILLI) * KEPT_PER_SECOND / MILLI;
        self.balance = self
            .balance
            .max(u64::from(self.rule.min_per_second) * MILLI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            on_statuses: vec![502, 503],
            per_try_timeout: None,
            deadline: None,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            non_idempotent: false,
            max_body: 1024,
        }
    }

    #[test]
    fn only_what_is_named_is_retried() {
        let p = policy();
        assert!(p.wants(TryFailure::Connect, true));
        assert!(p.wants(TryFailure::Reset, true));
        assert!(!p.wants(TryFailure::Timeout, true));
        assert!(p.wants(TryFailure::Status(502), true));
        assert!(p.wants(TryFailure::Status(503), true));
        assert!(!p.wants(TryFailure::Status(500), true));
        assert!(!p.wants(TryFailure::Status(504), true));
        let mut none = policy();
        none.on_connect_failure = false;
        none.on_reset = false;
        assert!(!none.wants(TryFailure::Connect, true));
        assert!(!none.wants(TryFailure::Reset, true));
        none.on_timeout = true;
        assert!(none.wants(TryFailure::Timeout, true));
    }

    #[test]
    fn a_sent_non_idempotent_request_is_retried_only_when_allowed() {
        let mut p = policy();
        // Nothing reached the upstream: safe for any method.
        assert!(p.wants(TryFailure::Connect, false));
        assert!(!p.wants(TryFailure::Reset, false));
        assert!(!p.wants(TryFailure::Status(503), false));
        p.non_idempotent = true;
        assert!(p.wants(TryFailure::Reset, false));
        assert!(p.wants(TryFailure::Status(503), false));
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let p = policy();
        let ms = Duration::from_millis;
        // The largest draw reaches the ceiling exactly; zero is possible.
        let top = |retry| p.backoff(retry, u64::MAX - (u64::MAX % (ms(1).as_nanos() as u64)));
        assert_eq!(p.backoff(1, 0), Duration::ZERO);
        for (retry, ceiling) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (40, 100)] {
            let c = ms(ceiling).as_nanos() as u64;
            assert_eq!(p.backoff(retry, c), ms(ceiling), "retry {retry}");
            assert_eq!(p.backoff(retry, c + 1), Duration::ZERO, "retry {retry}");
            assert!(top(retry) <= ms(ceiling));
        }
        let mut flat = policy();
        flat.backoff_base = Duration::ZERO;
        assert_eq!(flat.backoff(3, 12345), Duration::ZERO);
    }

    #[test]
    fn the_budget_is_a_percentage_of_requests() {
        let rule = BudgetRule {
            percent: 20,
            min_per_second: 0,
        };
        let mut b = RetryBudget::new(rule);
        assert!(!b.withdraw(), "nothing deposited yet");
        for _ in 0..4 {
            b.deposit();
        }
        assert!(!b.withdraw(), "4 requests are 0.8 of a retry");
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
        assert_eq!(b.exhausted, 3);
        // 1000 requests allow 200 retries, never more.
        let mut b = RetryBudget::new(rule);
        let mut granted = 0;
        for _ in 0..1000 {
            b.deposit();
            granted += u32::from(b.withdraw());
            granted += u32::from(b.withdraw());
        }
        assert_eq!(granted, 200);
    }

    #[test]
    fn deposits_fade_over_seconds() {
        let rule = BudgetRule {
            percent: 100,
            min_per_second: 0,
        };
        let mut b = RetryBudget::new(rule);
        for _ in 0..1000 {
            b.deposit();
        }
        b.second_passed();
        // 1000 × 0.905.
        assert_eq!((0..2000).filter(|_| b.withdraw()).count(), 905);
        let mut b = RetryBudget::new(rule);
        for _ in 0..1000 {
            b.deposit();
        }
        for _ in 0..10 {
            b.second_passed();
        }
        // e^-1 of it is left after ten seconds: 1000 × 0.905^10 = 368.
        assert_eq!((0..2000).filter(|_| b.withdraw()).count(), 368);
        // Fractions fade too.
        let mut b = RetryBudget::new(BudgetRule {
            percent: 10,
            min_per_second: 0,
        });
        for _ in 0..19 {
            b.deposit();
        }
        b.second_passed();
        assert!(b.withdraw(), "1.9 × 0.905 = 1.72");
        assert!(!b.withdraw());
        b.deposit();
        b.deposit();
        b.deposit();
        assert!(b.withdraw(), "0.72 + 0.3");
        // The fraction of a retry fades with the rest: 1.99 → 1.800.
        let mut b = RetryBudget::new(BudgetRule {
            percent: 1,
            min_per_second: 0,
        });
        for _ in 0..199 {
            b.deposit();
        }
        b.second_passed();
        assert!(b.withdraw());
        for _ in 0..11 {
            b.deposit();
        }
        assert!(!b.withdraw(), "0.800 + 0.110");
        for _ in 0..9 {
            b.deposit();
        }
        assert!(b.withdraw(), "0.800 + 0.200");
    }

    #[test]
    fn the_minimum_is_there_each_second_and_does_not_pile_up() {
        let rule = BudgetRule {
            percent: 0,
            min_per_second: 4,
        };
        let mut b = RetryBudget::new(rule);
        assert_eq!(
            (0..10).filter(|_| b.withdraw()).count(),
            4,
            "from the start"
        );
        b.second_passed();
        assert_eq!((0..10).filter(|_| b.withdraw()).count(), 4);
        for _ in 0..3600 {
            b.second_passed();
        }
        assert_eq!((0..10).filter(|_| b.withdraw()).count(), 4, "an idle hour");
        // Deposits above the minimum are kept.
        let mut b = RetryBudget::new(BudgetRule {
            percent: 100,
            min_per_second: 2,
        });
        for _ in 0..10 {
            b.deposit();
        }
        b.second_passed();
        assert_eq!((0..20).filter(|_| b.withdraw()).count(), 10, "12 × 0.905");
        let mut none = RetryBudget::new(BudgetRule {
            percent: 0,
            min_per_second: 0,
        });
        none.second_passed();
        assert!(!none.withdraw());
    }
}
