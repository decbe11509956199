//! [warm] Passive outlier detection's rules, without I/O or a clock of
//! their own: what each worker counts per endpoint as answers come back
//! (`Window`, a few integer bumps per try), and how the one
//! `ringgate-outlier` thread judges the windows every worker sends it —
//! consecutive 5xx, consecutive gateway failures, a failure percentage
//! over a minimum of requests — into ejections of base time × ejections
//! so far (capped), never more than a set share of an upstream's
//! endpoints at once (Envoy's outlier detection, judged on every worker's
//! traffic together: one worker sees 1/N of it).
//!
//! Consecutive counts across workers: each window says how many failures
//! ended it (`tail_*`) and whether anything else came before them
//! (`*_broken`); the judge adds a window's tail to the streak, or starts
//! the streak over from the tail when the window was broken. With one
//! worker that is exact; with several it is the streak as their windows
//! arrive, which is what an ejection should follow anyway.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An upstream's `[upstreams.NAME.outlier_detection]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// How often failure percentages are judged and ejections end.
    pub interval: Duration,
    /// 5xx answers or gateway failures in a row that eject (0: never).
    pub consecutive_5xx: u32,
    /// Gateway failures (connect failure, reset, timeout, 502/503/504)
    /// in a row that eject (0: never).
    pub consecutive_gateway_failure: u32,
    /// Eject when at least this percentage of an interval's tries failed
    /// (`None`: never), given `failure_percentage_min_requests` tries.
    pub failure_percentage: Option<u32>,
    pub failure_percentage_min_requests: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of the upstream's endpoints is ejected at once
    /// (at least one if it has two or more; never a sole endpoint).
    pub max_ejection_percent: u32,
}

/// How one try at an endpoint ended, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// No answer: the connection failed, broke or timed out, or the
    /// answer was not HTTP.
    Local,
}

impl Outcome {
    fn is_error(self) -> bool {
        match self {
            Outcome::Status(s) => s >= 500,
            Outcome::Local => true,
        }
    }

    fn is_gateway_failure(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::Local => true,
        }
    }
}

/// One worker's count of one endpoint's tries since its last report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub requests: u32,
    /// 5xx answers and gateway failures.
    pub errors: u32,
    pub gateway_failures: u32,
    /// Errors since the window's last non-error (all of them if none).
    pub tail_errors: u32,
    pub tail_gateway_failures: u32,
    /// A non-error came first in the window: the tail is the streak.
    pub errors_broken: bool,
    pub gateway_broken: bool,
}

impl Window {
    #[inline]
    pub fn record(&mut self, outcome: Outcome) {
        self.requests = self.requests.saturating_add(1);
        if outcome.is_error() {
            self.errors = self.errors.saturating_add(1);
            self.tail_errors = self.tail_errors.saturating_add(1);
        } else {
            self.tail_errors = 0;
            self.errors_broken = true;
        }
        if outcome.is_gateway_failure() {
            self.gateway_failures = self.gateway_failures.saturating_add(1);
            self.tail_gateway_failures = self.tail_gateway_failures.saturating_add(1);
        } else {
            self.tail_gateway_failures = 0;
            self.gateway_broken = true;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Whether this window alone ends with a streak as long as a
    /// consecutive-failure threshold of `rules`: the worker then reports
    /// at once rather than at its next tick, so an ejection follows the
    /// failures within milliseconds.
    #[inline]
    pub fn streak_reached(&self, rules: &OutlierDetection) -> bool {
        (rules.consecutive_gateway_failure > 0
            && self.tail_gateway_failures == rules.consecutive_gateway_failure)
            || (rules.consecutive_5xx > 0 && self.tail_errors == rules.consecutive_5xx)
    }
}

/// One worker's windows since its last report, by upstream name and
/// endpoint address (indices change with reloads; these do not).
#[derive(Debug, Clone, Default)]
pub struct OutcomeReport {
    pub windows: Vec<(String, SocketAddr, Window)>,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx(u32),
    ConsecutiveGatewayFailures(u32),
    /// (failed percentage, tries) over one interval.
    FailurePercentage(u32, u32),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Consecutive5xx(n) => write!(f, "{n} consecutive 5xx or gateway failures"),
            Reason::ConsecutiveGatewayFailures(n) => {
                write!(f, "{n} consecutive gateway failures")
            }
            Reason::FailurePercentage(p, n) => write!(f, "{p}% of {n} tries failed"),
        }
    }
}

/// One endpoint as the judge tracks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRecord {
    pub addr: SocketAddr,
    streak_errors: u32,
    streak_gateway: u32,
    interval_requests: u32,
    interval_errors: u32,
    /// Ejections that set the current ejection time's multiple.
    multiplier: u32,
    pub ejected_until: Option<Instant>,
    /// When it last came back (the multiplier is forgiven after a
    /// `max_ejection` in traffic).
    back_at: Option<Instant>,
    /// Why it was last ejected.
    pub reason: Option<Reason>,
    pub ejections_total: u64,
}

impl EndpointRecord {
    pub fn new(addr: SocketAddr) -> EndpointRecord {
        EndpointRecord {
            addr,
            streak_errors: 0,
            streak_gateway: 0,
            interval_requests: 0,
            interval_errors: 0,
            multiplier: 0,
            ejected_until: None,
            back_at: None,
            reason: None,
            ejections_total: 0,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    fn absorb(&mut self, w: &Window) {
        self.streak_errors = if w.errors_broken {
            w.tail_errors
        } else {
            self.streak_errors.saturating_add(w.tail_errors)
        };
        self.streak_gateway = if w.gateway_broken {
            w.tail_gateway_failures
        } else {
            self.streak_gateway.saturating_add(w.tail_gateway_failures)
        };
        self.interval_requests = self.interval_requests.saturating_add(w.requests);
        self.interval_errors = self.interval_errors.saturating_add(w.errors);
    }

    fn consecutive_verdict(&self, rules: &OutlierDetection) -> Option<Reason> {
        if rules.consecutive_gateway_failure > 0
            && self.streak_gateway >= rules.consecutive_gateway_failure
        {
            return Some(Reason::ConsecutiveGatewayFailures(self.streak_gateway));
        }
        if rules.consecutive_5xx > 0 && self.streak_errors >= rules.consecutive_5xx {
            return Some(Reason::Consecutive5xx(self.streak_errors));
        }
        None
    }

    fn percentage_verdict(&self, rules: &OutlierDetection) -> Option<Reason> {
        let threshold = rules.failure_percentage?;
        let n = self.interval_requests;
        if n == 0 || n < rules.failure_percentage_min_requests {
            return None;
        }
        let failed = (u64::from(self.interval_errors) * 100 / u64::from(n)) as u32;
        (failed >= threshold).then_some(Reason::FailurePercentage(failed, n))
    }

    fn eject(&mut self, reason: Reason, rules: &OutlierDetection, now: Instant) -> Duration {
        if self
            .back_at
            .is_some_and(|t| now.saturating_duration_since(t) >= rules.max_ejection)
        {
            self.multiplier = 0;
        }
        self.multiplier = self.multiplier.saturating_add(1);
        let time = rules
            .base_ejection
            .saturating_mul(self.multiplier)
            .min(rules.max_ejection);
        self.ejected_until = Some(now.checked_add(time).unwrap_or(now));
        self.reason = Some(reason);
        self.ejections_total += 1;
        time
    }

    fn readmit(&mut self, now: Instant) {
        self.ejected_until = None;
        self.back_at = Some(now);
        self.streak_errors = 0;
        self.streak_gateway = 0;
        self.interval_requests = 0;
        self.interval_errors = 0;
    }
}

/// A change the judge made: the endpoint at this index was ejected
/// (`Some(reason, for how long)`) or is back (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub endpoint: usize,
    pub ejected: Option<(Reason, Duration)>,
}

/// One upstream's endpoints under outlier detection.
#[derive(Debug, Clone)]
pub struct UpstreamOutliers {
    pub rules: OutlierDetection,
    pub endpoints: Vec<EndpointRecord>,
}

impl UpstreamOutliers {
    pub fn new(rules: OutlierDetection, addrs: &[SocketAddr]) -> UpstreamOutliers {
        UpstreamOutliers {
            rules,
            endpoints: addrs.iter().map(|a| EndpointRecord::new(*a)).collect(),
        }
    }

    /// How many endpoints may be ejected at once.
    pub fn max_ejected(&self) -> usize {
        let n = self.endpoints.len();
        if n < 2 {
            return 0;
        }
        (n * self.rules.max_ejection_percent as usize / 100).clamp(1, n - 1)
    }

    fn ejected(&self) -> usize {
        self.endpoints.iter().filter(|e| e.is_ejected()).count()
    }

    /// Takes in a worker's window for the endpoint at `addr`, and ejects
    /// it at once if its streaks say so.
    pub fn absorb(&mut self, addr: SocketAddr, w: &Window, now: Instant) -> Option<Change> {
        let room = self.ejected() < self.max_ejected();
        let rules = &self.rules;
        let (i, e) = self
            .endpoints
            .iter_mut()
            .enumerate()
            .find(|(_, e)| e.addr == addr)?;
        if e.is_ejected() {
            return None;
        }
        e.absorb(w);
        let reason = e.consecutive_verdict(rules).filter(|_| room)?;
        let time = e.eject(reason, rules, now);
        Some(Change {
            endpoint: i,
            ejected: Some((reason, time)),
        })
    }

    /// The interval's end: ejections that ran out end, failure
    /// percentages are judged, and the interval's counts start over.
    pub fn interval_ended(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = self.readmit_due(now);
        for i in 0..self.endpoints.len() {
            if self.endpoints[i].is_ejected() {
                continue;
            }
            let verdict = self.endpoints[i].percentage_verdict(&self.rules);
            if let Some(reason) = verdict
                && self.ejected() < self.max_ejected()
            {
                let time = self.endpoints[i].eject(reason, &self.rules, now);
                changes.push(Change {
                    endpoint: i,
                    ejected: Some((reason, time)),
                });
            }
        }
        for e in &mut self.endpoints {
            e.interval_requests = 0;
            e.interval_errors = 0;
        }
        changes
    }

    /// Ends the ejections that have run out by `now`.
    pub fn readmit_due(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for (i, e) in self.endpoints.iter_mut().enumerate() {
            if e.ejected_until.is_some_and(|until| until <= now) {
                e.readmit(now);
                changes.push(Change {
                    endpoint: i,
                    ejected: None,
                });
            }
        }
        changes
    }

    /// The earliest moment an ejection ends, if any is under way.
    pub fn next_readmission(&self) -> Option<Instant> {
        self.endpoints.iter().filter_map(|e| e.ejected_until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> OutlierDetection {
        OutlierDetection {
            interval: Duration::from_secs(1),
            consecutive_5xx: 5,
            consecutive_gateway_failure: 3,
            failure_percentage: Some(50),
            failure_percentage_min_requests: 10,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejection_percent: 50,
        }
    }

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
            .collect()
    }

    fn window(outcomes: &[Outcome]) -> Window {
        let mut w = Window::default();
        for o in outcomes {
            w.record(*o);
        }
        w
    }

    const OK: Outcome = Outcome::Status(200);
    const E500: Outcome = Outcome::Status(500);
    const E503: Outcome = Outcome::Status(503);
    const LOCAL: Outcome = Outcome::Local;

    #[test]
    fn a_window_counts_errors_and_the_streak_that_ends_it() {
        let w = window(&[E500, OK, E503, LOCAL]);
        assert_eq!(w.requests, 4);
        assert_eq!(w.errors, 3);
        assert_eq!(w.gateway_failures, 2);
        assert_eq!(w.tail_errors, 2);
        assert_eq!(w.tail_gateway_failures, 2);
        assert!(w.errors_broken && w.gateway_broken);
        // A 500 is an error but not a gateway failure: it breaks that streak.
        let w = window(&[LOCAL, E500]);
        assert_eq!((w.tail_errors, w.tail_gateway_failures), (2, 0));
        assert!(!w.errors_broken && w.gateway_broken);
        let w = window(&[E503, E503]);
        assert_eq!((w.tail_errors, w.tail_gateway_failures), (2, 2));
        assert!(!w.errors_broken && !w.gateway_broken);
        // 4xx and 2xx are not errors; 499 neither, 599 is.
        let w = window(&[Outcome::Status(404), Outcome::Status(499)]);
        assert_eq!((w.errors, w.gateway_failures), (0, 0));
        let w = window(&[
            Outcome::Status(599),
            Outcome::Status(501),
            Outcome::Status(505),
        ]);
        assert_eq!((w.errors, w.gateway_failures), (3, 0));
        let w = window(&[Outcome::Status(502), Outcome::Status(504)]);
        assert_eq!(w.gateway_failures, 2);
        assert!(Window::default().is_empty() && !w.is_empty());
    }

    #[test]
    fn a_window_calls_for_an_early_report_once_a_streak_reaches_a_threshold() {
        let r = rules();
        assert!(!window(&[LOCAL, LOCAL]).streak_reached(&r));
        assert!(
            window(&[LOCAL, LOCAL, LOCAL]).streak_reached(&r),
            "3 gateway failures"
        );
        assert!(
            !window(&[LOCAL, LOCAL, LOCAL, LOCAL]).streak_reached(&r),
            "once"
        );
        assert!(!window(&[LOCAL, LOCAL, OK, LOCAL]).streak_reached(&r));
        assert!(
            window(&[E500, E500, E500, E500, E500]).streak_reached(&r),
            "5 errors"
        );
        assert!(!window(&[E500, E500, E500, E500]).streak_reached(&r));
        let mut off = r.clone();
        off.consecutive_5xx = 0;
        off.consecutive_gateway_failure = 0;
        assert!(!window(&[]).streak_reached(&off));
        assert!(!window(&[E503; 5]).streak_reached(&off));
    }

    #[test]
    fn consecutive_gateway_failures_across_windows_eject() {
        let t = Instant::now();
        let a = addrs(3);
        let mut u = UpstreamOutliers::new(rules(), &a);
        assert_eq!(u.absorb(a[0], &window(&[LOCAL, LOCAL]), t), None);
        // Another worker's window, unbroken: the streak goes on to 3.
        let change = u.absorb(a[0], &window(&[LOCAL]), t).expect("ejected");
        assert_eq!(change.endpoint, 0);
        assert_eq!(
            change.ejected,
            Some((
                Reason::ConsecutiveGatewayFailures(3),
                Duration::from_secs(10)
            ))
        );
        assert!(u.endpoints[0].is_ejected());
        assert_eq!(u.endpoints[0].ejections_total, 1);
        // A broken window starts the streak over from its tail.
        assert_eq!(u.absorb(a[1], &window(&[LOCAL, LOCAL]), t), None);
        assert_eq!(u.absorb(a[1], &window(&[LOCAL, OK, LOCAL]), t), None);
        assert_eq!(u.absorb(a[1], &window(&[LOCAL]), t), None);
        assert!(
            u.absorb(a[1], &window(&[LOCAL]), t).is_none(),
            "room is 1 of 3"
        );
    }

    #[test]
    fn consecutive_5xx_count_any_server_error() {
        let t = Instant::now();
        let a = addrs(2);
        let mut u = UpstreamOutliers::new(rules(), &a);
        assert_eq!(u.absorb(a[0], &window(&[E500, E500, E503, E500]), t), None);
        let c = u.absorb(a[0], &window(&[E500]), t).expect("ejected");
        assert_eq!(
            c.ejected,
            Some((Reason::Consecutive5xx(5), Duration::from_secs(10)))
        );
        // Switched off, a streak never ejects.
        let mut off = rules();
        off.consecutive_5xx = 0;
        off.consecutive_gateway_failure = 0;
        let mut u = UpstreamOutliers::new(off, &a);
        for _ in 0..10 {
            assert_eq!(u.absorb(a[0], &window(&[E503; 10]), t), None);
        }
        // Unknown addresses are ignored.
        let stranger = SocketAddr::from(([10, 0, 0, 1], 1));
        assert_eq!(u.absorb(stranger, &window(&[E503; 10]), t), None);
    }

    #[test]
    fn ejections_grow_with_each_one_up_to_the_cap_and_are_forgiven() {
        let mut t = Instant::now();
        let a = addrs(2);
        let mut u = UpstreamOutliers::new(rules(), &a);
        let mut times = Vec::new();
        for _ in 0..5 {
            let c = u.absorb(a[0], &window(&[LOCAL; 3]), t).expect("ejected");
            let (_, time) = c.ejected.expect("an ejection");
            times.push(time.as_secs());
            // Not back one moment early.
            assert!(
                u.interval_ended(t + time - Duration::from_millis(1))
                    .is_empty()
            );
            t += time;
            let back = u.interval_ended(t);
            assert_eq!(
                back,
                vec![Change {
                    endpoint: 0,
                    ejected: None
                }]
            );
            assert!(!u.endpoints[0].is_ejected());
        }
        assert_eq!(times, vec![10, 20, 30, 35, 35]);
        // Back in traffic for max_ejection: the multiplier starts over.
        t += Duration::from_secs(35);
        let c = u.absorb(a[0], &window(&[LOCAL; 3]), t).expect("ejected");
        assert_eq!(c.ejected.map(|e| e.1), Some(Duration::from_secs(10)));
        assert_eq!(u.endpoints[0].ejections_total, 6);
        assert_eq!(u.next_readmission(), Some(t + Duration::from_secs(10)));
    }

    #[test]
    fn readmission_starts_the_streaks_over() {
        let t = Instant::now();
        let a = addrs(2);
        let mut u = UpstreamOutliers::new(rules(), &a);
        assert!(u.absorb(a[0], &window(&[LOCAL; 3]), t).is_some());
        // Windows from before the ejection still arriving are ignored.
        assert_eq!(u.absorb(a[0], &window(&[LOCAL; 3]), t), None);
        let back = t + Duration::from_secs(10);
        assert_eq!(u.interval_ended(back).len(), 1);
        assert_eq!(u.absorb(a[0], &window(&[LOCAL, LOCAL]), back), None);
        assert!(u.absorb(a[0], &window(&[LOCAL]), back).is_some());
    }

    #[test]
    fn failure_percentage_is_judged_per_interval_over_a_minimum() {
        let t = Instant::now();
        let a = addrs(4);
        let mut rules = rules();
        rules.consecutive_5xx = 0;
        rules.consecutive_gateway_failure = 0;
        let mut u = UpstreamOutliers::new(rules, &a);
        // 5 of 9: over 50% but under the minimum of 10 tries.
        u.absorb(
            a[0],
            &window(&[E500, OK, E500, OK, E500, OK, E500, OK, E500]),
            t,
        );
        assert!(u.interval_ended(t).is_empty());
        // The count started over: 5 of 10 now.
        u.absorb(a[0], &window(&[E500, OK, E500, OK, E500]), t);
        u.absorb(a[0], &window(&[OK, E500, OK, E500, OK]), t);
        // Another endpoint at 4 of 10 stays.
        u.absorb(
            a[1],
            &window(&[E500, E500, E500, E500, OK, OK, OK, OK, OK, OK]),
            t,
        );
        let changes = u.interval_ended(t);
        assert_eq!(
            changes,
            vec![Change {
                endpoint: 0,
                ejected: Some((Reason::FailurePercentage(50, 10), Duration::from_secs(10)))
            }]
        );
        assert_eq!(
            u.endpoints[0].reason.map(|r| r.to_string()).as_deref(),
            Some("50% of 10 tries failed")
        );
        assert!(u.interval_ended(t).is_empty(), "counts started over");
        let mut off = u.rules.clone();
        off.failure_percentage = None;
        let mut u = UpstreamOutliers::new(off, &a);
        u.absorb(a[0], &window(&[E500; 20]), t);
        assert!(u.interval_ended(t).is_empty());
    }

    #[test]
    fn never_more_than_the_share_and_never_a_sole_endpoint() {
        let t = Instant::now();
        for (n, pct, max) in [
            (1, 100, 0),
            (2, 10, 1),
            (2, 100, 1),
            (4, 50, 2),
            (10, 35, 3),
        ] {
            let mut r = rules();
            r.max_ejection_percent = pct;
            let a = addrs(n);
            let mut u = UpstreamOutliers::new(r, &a);
            assert_eq!(u.max_ejected(), max, "{n} endpoints, {pct}%");
            let ejected = a
                .iter()
                .filter(|addr| u.absorb(**addr, &window(&[LOCAL; 3]), t).is_some())
                .count();
            assert_eq!(ejected, max, "{n} endpoints, {pct}%");
        }
        // The percentage rule respects the share too.
        let mut r = rules();
        r.consecutive_gateway_failure = 0;
        r.consecutive_5xx = 0;
        let a = addrs(2);
        let mut u = UpstreamOutliers::new(r, &a);
        for addr in &a {
            u.absorb(*addr, &window(&[E500; 10]), t);
        }
        assert_eq!(u.interval_ended(t).len(), 1);
    }
}
