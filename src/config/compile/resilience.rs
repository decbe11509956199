//! [cold] Validation of the resilience settings: a route's `retry`, an
//! upstream's `retry_budget` and `outlier_detection` (docs/resilience.md).

use std::time::Duration;

use toml::Spanned;

use super::Errors;
use crate::config::file;
use crate::upstream::breaker::CircuitBreaker;
use crate::upstream::outlier::OutlierDetection;
use crate::upstream::retry::{BudgetRule, RetryPolicy};

/// Bodies kept for replay are held in memory per request: at most this.
const MAX_REPLAY_BODY: u64 = 1024 * 1024;
const DEFAULT_REPLAY_BODY: u64 = 64 * 1024;
const DEFAULT_ON: [&str; 6] = ["connect-failure", "reset", "timeout", "502", "503", "504"];

pub(super) fn compile_retry(
    route: &str,
    section: &Spanned<file::RetrySection>,
    errors: &mut Errors,
) -> Option<RetryPolicy> {
    let r = section.get_ref();
    let before = errors.list.len();
    let attempts = r.attempts.as_ref().map_or(3, |a| *a.get_ref());
    if let Some(a) = &r.attempts
        && !(1..=10).contains(a.get_ref())
    {
        errors.at(
            a,
            format!("route `{route}` retry: attempts must be between 1 and 10 (tries in all)"),
        );
    }
    let mut policy = RetryPolicy {
        attempts,
        on_connect_failure: false,
        on_reset: false,
        on_timeout: false,
        on_statuses: Vec::new(),
        per_try_timeout: r.per_try_timeout.map(|d| d.0),
        deadline: r.deadline.map(|d| d.0),
        backoff_base: r
            .backoff
            .as_ref()
            .and_then(|b| b.base)
            .map_or(Duration::from_millis(25), |d| d.0),
        backoff_max: r
            .backoff
            .as_ref()
            .and_then(|b| b.max)
            .map_or(Duration::from_millis(250), |d| d.0),
        non_idempotent: r.non_idempotent,
        max_body: r
            .max_body
            .as_ref()
            .map_or(DEFAULT_REPLAY_BODY, |b| b.get_ref().0),
    };
    let named: Vec<(&str, Option<std::ops::Range<usize>>)> = match &r.on {
        None => DEFAULT_ON.iter().map(|s| (*s, None)).collect(),
        Some(list) => list
            .iter()
            .map(|s| (s.get_ref().as_str(), Some(s.span())))
            .collect(),
    };
    for (what, span) in named {
        match what {
            "connect-failure" => policy.on_connect_failure = true,
            "reset" => policy.on_reset = true,
            "timeout" => policy.on_timeout = true,
            status => match status.parse::<u16>() {
                Ok(s) if (400..=599).contains(&s) => policy.on_statuses.push(s),
                _ => errors.span(
                    span.or(Some(section.span())),
                    format!("route `{route}` retry: `on` lists \"connect-failure\", \"reset\", \"timeout\" or statuses 400-599, not `{status}`"),
                ),
            },
        }
    }
    policy.on_statuses.sort_unstable();
    policy.on_statuses.dedup();
    if let Some(b) = &r.max_body
        && b.get_ref().0 > MAX_REPLAY_BODY
    {
        errors.at(
            b,
            format!(
                "route `{route}` retry: max_body is at most 1MiB (it is held in memory per request)"
            ),
        );
    }
    if policy.per_try_timeout.is_some_and(|d| d.is_zero())
        || policy.deadline.is_some_and(|d| d.is_zero())
    {
        errors.at(
            section,
            format!(
                "route `{route}` retry: per_try_timeout and deadline must be greater than zero"
            ),
        );
    }
    if policy.backoff_max < policy.backoff_base {
        errors.at(
            section,
            format!("route `{route}` retry: backoff max must be at least its base"),
        );
    }
    (errors.list.len() == before).then_some(policy)
}

pub(super) fn compile_retry_budget(
    upstream: &str,
    section: Option<&Spanned<file::RetryBudgetSection>>,
    errors: &mut Errors,
) -> BudgetRule {
    let default = BudgetRule::default();
    let Some(section) = section else {
        return default;
    };
    let b = section.get_ref();
    if let Some(p) = &b.percent
        && *p.get_ref() > 100
    {
        errors.at(
            p,
            format!("upstream `{upstream}` retry_budget: percent must be between 0 and 100"),
        );
    }
    BudgetRule {
        percent: b.percent.as_ref().map_or(default.percent, |p| *p.get_ref()),
        min_per_second: b.min_per_second.unwrap_or(default.min_per_second),
    }
}

/// `[upstreams.NAME.circuit_breaker]`: Envoy's defaults (1024
/// connections, requests and pending, 3 retries) and a 1 s queue.
pub(super) fn compile_circuit_breaker(
    upstream: &str,
    section: &Spanned<file::CircuitBreakerSection>,
    errors: &mut Errors,
) -> Option<CircuitBreaker> {
    let b = section.get_ref();
    let breaker = CircuitBreaker {
        max_connections: b.max_connections.unwrap_or(1024),
        max_requests: b.max_requests.unwrap_or(1024),
        max_pending: b.max_pending.unwrap_or(1024),
        max_retries: b.max_retries.unwrap_or(3),
        queue_timeout: b.queue_timeout.map_or(Duration::from_secs(1), |d| d.0),
    };
    if breaker.max_connections == 0 || breaker.max_requests == 0 {
        errors.at(
            section,
            format!("upstream `{upstream}` circuit_breaker: max_connections and max_requests must be at least 1"),
        );
        return None;
    }
    if breaker.max_pending > 0 && breaker.queue_timeout.is_zero() {
        errors.at(
            section,
            format!("upstream `{upstream}` circuit_breaker: a queue (max_pending) needs a queue_timeout above zero"),
        );
        return None;
    }
    Some(breaker)
}

/// `[upstreams.NAME.outlier_detection]`: Envoy's defaults, except that a
/// failure percentage is judged only when configured.
pub(super) fn compile_outlier_detection(
    upstream: &str,
    section: &Spanned<file::OutlierDetectionSection>,
    errors: &mut Errors,
) -> Option<OutlierDetection> {
    let o = section.get_ref();
    let before = errors.list.len();
    let rules = OutlierDetection {
        interval: o.interval.map_or(Duration::from_secs(1), |d| d.0),
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        consecutive_gateway_failure: o.consecutive_gateway_failure.unwrap_or(5),
        failure_percentage: o.failure_percentage.as_ref().map(|p| *p.get_ref()),
        failure_percentage_min_requests: o.failure_percentage_min_requests.unwrap_or(20),
        base_ejection: o.base_ejection.map_or(Duration::from_secs(10), |d| d.0),
        max_ejection: o.max_ejection.map_or(Duration::from_secs(300), |d| d.0),
        max_ejection_percent: o.max_ejection_percent.as_ref().map_or(50, |p| *p.get_ref()),
    };
    if rules.interval < Duration::from_millis(10) {
        errors.at(
            section,
            format!("upstream `{upstream}` outlier_detection: interval must be at least 10ms"),
        );
    }
    if rules.base_ejection.is_zero() || rules.max_ejection < rules.base_ejection {
        errors.at(
            section,
            format!("upstream `{upstream}` outlier_detection: base_ejection must be greater than zero and max_ejection at least base_ejection"),
        );
    }
    for p in [&o.failure_percentage, &o.max_ejection_percent]
        .into_iter()
        .flatten()
    {
        if !(1..=100).contains(p.get_ref()) {
            errors.at(
                p,
                format!(
                    "upstream `{upstream}` outlier_detection: percentages are between 1 and 100"
                ),
            );
        }
    }
    (errors.list.len() == before).then_some(rules)
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::snapshot::{RouteAction, Snapshot};
    use std::time::Duration;

    const BASE: &str = r#"
workers = 1
[[listeners]]
bind = "127.0.0.1:0"
[upstreams.api]
endpoints = ["127.0.0.1:9000"]
"#;

    fn load(extra: &str) -> Result<Snapshot, Vec<String>> {
        load_str(&format!("{BASE}{extra}"), "t.toml")
            .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
    }

    fn errors_of(extra: &str) -> Vec<String> {
        load(extra).err().unwrap_or_default()
    }

    #[test]
    fn retry_defaults() {
        let s = load("[[routes]]\nupstream = \"api\"\nretry = {}\n").expect("valid");
        let p = s.routes[0].retry.as_deref().expect("a policy");
        assert_eq!(p.attempts, 3);
        assert!(p.on_connect_failure && p.on_reset && p.on_timeout);
        assert_eq!(p.on_statuses, vec![502, 503, 504]);
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.deadline, None);
        assert_eq!(p.backoff_base, Duration::from_millis(25));
        assert_eq!(p.backoff_max, Duration::from_millis(250));
        assert!(!p.non_idempotent);
        assert_eq!(p.max_body, 64 * 1024);
        assert_eq!(s.upstreams[0].retry_budget.percent, 20);
        assert_eq!(s.upstreams[0].retry_budget.min_per_second, 10);
        let s = load("[[routes]]\nupstream = \"api\"\n").expect("valid");
        assert!(s.routes[0].retry.is_none());
        assert!(matches!(s.routes[0].action, RouteAction::Proxy { .. }));
    }

    #[test]
    fn retry_settings_are_read() {
        let s = load(
            "retry_budget = { percent = 50, min_per_second = 0 }\n[[routes]]\nupstream = \"api\"\nretry = { attempts = 5, on = [\"reset\", \"503\", \"429\", \"503\"], per_try_timeout = \"1s\", deadline = \"3s\", backoff = { base = \"10ms\", max = \"1s\" }, non_idempotent = true, max_body = \"1MiB\" }\n",
        )
        .expect("valid");
        let p = s.routes[0].retry.as_deref().expect("a policy");
        assert_eq!(p.attempts, 5);
        assert!(!p.on_connect_failure && p.on_reset && !p.on_timeout);
        assert_eq!(p.on_statuses, vec![429, 503]);
        assert_eq!(p.per_try_timeout, Some(Duration::from_secs(1)));
        assert_eq!(p.deadline, Some(Duration::from_secs(3)));
        assert_eq!(p.backoff_base, Duration::from_millis(10));
        assert_eq!(p.backoff_max, Duration::from_secs(1));
        assert!(p.non_idempotent);
        assert_eq!(p.max_body, 1024 * 1024);
        assert_eq!(s.upstreams[0].retry_budget.percent, 50);
        assert_eq!(s.upstreams[0].retry_budget.min_per_second, 0);
    }

    #[test]
    fn outlier_detection_defaults_and_settings() {
        let s = load("[upstreams.api.outlier_detection]\n[[routes]]\nupstream = \"api\"\n")
            .expect("valid");
        let o = s.upstreams[0].outlier_detection.as_ref().expect("on");
        assert_eq!(o.interval, Duration::from_secs(1));
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_failure), (5, 5));
        assert_eq!(o.failure_percentage, None);
        assert_eq!(o.failure_percentage_min_requests, 20);
        assert_eq!(o.base_ejection, Duration::from_secs(10));
        assert_eq!(o.max_ejection, Duration::from_secs(300));
        assert_eq!(o.max_ejection_percent, 50);
        assert_eq!(s.upstreams[0].slow_start, Duration::ZERO);
        let s = load("slow_start = \"20s\"\n[upstreams.api.outlier_detection]\ninterval = \"500ms\"\nconsecutive_5xx = 0\nconsecutive_gateway_failure = 2\nfailure_percentage = 40\nfailure_percentage_min_requests = 7\nbase_ejection = \"2s\"\nmax_ejection = \"2s\"\nmax_ejection_percent = 100\n[[routes]]\nupstream = \"api\"\n").expect("valid");
        let o = s.upstreams[0].outlier_detection.as_ref().expect("on");
        assert_eq!(o.interval, Duration::from_millis(500));
        assert_eq!((o.consecutive_5xx, o.consecutive_gateway_failure), (0, 2));
        assert_eq!(o.failure_percentage, Some(40));
        assert_eq!(o.failure_percentage_min_requests, 7);
        assert_eq!(
            (o.base_ejection, o.max_ejection),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert_eq!(o.max_ejection_percent, 100);
        assert_eq!(s.upstreams[0].slow_start, Duration::from_secs(20));
        assert!(
            load("[[routes]]\nupstream = \"api\"\n")
                .expect("valid")
                .upstreams[0]
                .outlier_detection
                .is_none()
        );
        for (setting, message) in [
            ("interval = \"1ms\"", "interval must be at least 10ms"),
            (
                "base_ejection = \"0s\"",
                "base_ejection must be greater than zero",
            ),
            (
                "base_ejection = \"10s\"\nmax_ejection = \"9s\"",
                "max_ejection at least base_ejection",
            ),
            ("failure_percentage = 0", "between 1 and 100"),
            ("failure_percentage = 101", "between 1 and 100"),
            ("max_ejection_percent = 0", "between 1 and 100"),
            ("max_ejection_percent = 101", "between 1 and 100"),
        ] {
            let errs = errors_of(&format!(
                "[upstreams.api.outlier_detection]\n{setting}\n[[routes]]\nupstream = \"api\"\n"
            ));
            assert_eq!(errs.len(), 1, "{setting}: {errs:?}");
            assert!(
                errs[0].contains(message) && errs[0].contains("upstream `api`"),
                "{setting}: {errs:?}"
            );
        }
        for setting in [
            "interval = \"10ms\"",
            "failure_percentage = 1",
            "failure_percentage = 100",
            "max_ejection_percent = 1",
            "base_ejection = \"1s\"\nmax_ejection = \"1s\"",
        ] {
            let errs = errors_of(&format!(
                "[upstreams.api.outlier_detection]\n{setting}\n[[routes]]\nupstream = \"api\"\n"
            ));
            assert!(errs.is_empty(), "{setting}: {errs:?}");
        }
    }

    #[test]
    fn circuit_breaker_defaults_and_settings() {
        let s = load("[upstreams.api.circuit_breaker]\n[[routes]]\nupstream = \"api\"\n")
            .expect("valid");
        let b = s.upstreams[0].circuit_breaker.expect("on");
        assert_eq!(
            (
                b.max_connections,
                b.max_requests,
                b.max_pending,
                b.max_retries
            ),
            (1024, 1024, 1024, 3)
        );
        assert_eq!(b.queue_timeout, Duration::from_secs(1));
        let s = load("[upstreams.api.circuit_breaker]\nmax_connections = 7\nmax_requests = 5\nmax_pending = 0\nmax_retries = 0\nqueue_timeout = \"0s\"\n[[routes]]\nupstream = \"api\"\n").expect("valid");
        let b = s.upstreams[0].circuit_breaker.expect("on");
        assert_eq!(
            (
                b.max_connections,
                b.max_requests,
                b.max_pending,
                b.max_retries
            ),
            (7, 5, 0, 0)
        );
        assert!(
            load("[[routes]]\nupstream = \"api\"\n")
                .expect("valid")
                .upstreams[0]
                .circuit_breaker
                .is_none()
        );
        for (setting, message) in [
            ("max_connections = 0", "at least 1"),
            ("max_requests = 0", "at least 1"),
            ("queue_timeout = \"0s\"", "needs a queue_timeout above zero"),
        ] {
            let errs = errors_of(&format!(
                "[upstreams.api.circuit_breaker]\n{setting}\n[[routes]]\nupstream = \"api\"\n"
            ));
            assert_eq!(errs.len(), 1, "{setting}: {errs:?}");
            assert!(
                errs[0].contains(message) && errs[0].contains("upstream `api`"),
                "{setting}: {errs:?}"
            );
        }
    }

    #[test]
    fn bad_retry_settings_are_reported() {
        for (retry, message) in [
            ("{ attempts = 0 }", "attempts must be between 1 and 10"),
            ("{ attempts = 11 }", "attempts must be between 1 and 10"),
            ("{ on = [\"flaky\"] }", "not `flaky`"),
            ("{ on = [\"200\"] }", "not `200`"),
            ("{ on = [\"600\"] }", "not `600`"),
            ("{ max_body = \"2MiB\" }", "max_body is at most 1MiB"),
            ("{ per_try_timeout = \"0s\" }", "greater than zero"),
            ("{ deadline = \"0s\" }", "greater than zero"),
            (
                "{ backoff = { base = \"1s\", max = \"10ms\" } }",
                "at least its base",
            ),
        ] {
            let errs = errors_of(&format!(
                "[[routes]]\nname = \"r\"\nupstream = \"api\"\nretry = {retry}\n"
            ));
            assert_eq!(errs.len(), 1, "{retry}: {errs:?}");
            assert!(
                errs[0].contains(message) && errs[0].contains("route `r`"),
                "{retry}: {errs:?}"
            );
        }
        // The boundaries are accepted.
        for retry in [
            "{ attempts = 1 }",
            "{ attempts = 10, on = [\"400\", \"599\"] }",
        ] {
            let errs = errors_of(&format!(
                "[[routes]]\nupstream = \"api\"\nretry = {retry}\n"
            ));
            assert!(errs.is_empty(), "{retry}: {errs:?}");
        }
        let errs = errors_of("[[routes]]\nrespond = { status = 200 }\nretry = {}\n");
        assert!(
            errs.iter()
                .any(|e| e.contains("retry needs a route with an upstream")),
            "{errs:?}"
        );
        let errs = errors_of("retry_budget = { percent = 101 }\n[[routes]]\nupstream = \"api\"\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("percent must be between 0 and 100"),
            "{errs:?}"
        );
    }
}
