//! [cold] Active health checking's rules, without I/O: what one probe's
//! answer means (`judge`), and an endpoint's state as probe results come
//! in, moving only after `healthy_threshold` successes in a row (down →
//! up) or `unhealthy_threshold` failures in a row (up → down), as
//! HAProxy's `rise` / `fall`. The probing thread feeds it; workers only
//! ever see the state it settles on.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

/// The endpoints health checks hold out of traffic, by upstream name and
/// address: what the prober sends every worker whenever it changes (the
/// whole set, so the latest message is the truth whatever came before).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownEndpoints(HashSet<(String, SocketAddr)>);

impl DownEndpoints {
    pub fn insert(&mut self, upstream: &str, addr: SocketAddr) {
        self.0.insert((upstream.to_string(), addr));
    }

    pub fn contains(&self, upstream: &str, addr: SocketAddr) -> bool {
        !self.0.is_empty() && self.0.contains(&(upstream.to_string(), addr))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// How an upstream's endpoints are probed (`[upstreams.NAME.health_check]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    /// Up to this much is added to each interval at random, so that probes
    /// of many endpoints (and many gateways) do not line up.
    pub jitter: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// A TCP connection that opens is success.
    Tcp,
    /// An HTTP/1.1 request whose answer must have one of `statuses` (any
    /// 2xx or 3xx when empty) and, with `body`, contain it.
    Http {
        method: String,
        path: String,
        /// The Host header; the endpoint's `ip:port` when `None`.
        host: Option<String>,
        statuses: Vec<u16>,
        body: Option<String>,
    },
}

/// Whether an HTTP probe's answer (`status`, `body`) passes `probe`; if
/// not, why.
pub fn judge(probe: &Probe, status: u16, body: &[u8]) -> Result<(), String> {
    let Probe::Http {
        statuses,
        body: wanted,
        ..
    } = probe
    else {
        return Ok(());
    };
    let status_ok = if statuses.is_empty() {
        (200..400).contains(&status)
    } else {
        statuses.contains(&status)
    };
    if !status_ok {
        return Err(format!("status {status}"));
    }
    if let Some(wanted) = wanted
        && !contains(body, wanted.as_bytes())
    {
        return Err(format!("body lacks {wanted:?}"));
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One endpoint's health as the prober sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub up: bool,
    /// Results in a row that disagree with `up`.
    streak: u32,
    /// Why the last probe failed, if it did.
    pub last_failure: Option<String>,
}

impl Default for EndpointHealth {
    /// An endpoint counts as up until probes say otherwise: a gateway
    /// that starts (or reloads) sends traffic at once, as before checks.
    fn default() -> Self {
        EndpointHealth {
            up: true,
            streak: 0,
            last_failure: None,
        }
    }
}

impl EndpointHealth {
    /// Records one probe's result; returns the new state if it changed.
    pub fn record(&mut self, result: Result<(), String>, check: &HealthCheck) -> Option<bool> {
        let ok = result.is_ok();
        self.last_failure = result.err();
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if ok {
            check.healthy_threshold
        } else {
            check.unhealthy_threshold
        };
        if self.streak < threshold.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_secs(1),
            jitter: Duration::ZERO,
            timeout: Duration::from_secs(1),
            healthy_threshold: rise,
            unhealthy_threshold: fall,
        }
    }

    #[test]
    fn the_state_moves_only_after_a_streak_of_the_threshold() {
        let c = check(2, 3);
        let mut h = EndpointHealth::default();
        assert!(h.up);
        let fail = || Err("refused".to_string());
        assert_eq!(h.record(fail(), &c), None);
        assert_eq!(h.record(fail(), &c), None);
        // A success breaks the streak: three more failures are needed.
        assert_eq!(h.record(Ok(()), &c), None);
        assert_eq!(h.record(fail(), &c), None);
        assert_eq!(h.record(fail(), &c), None);
        assert_eq!(h.last_failure.as_deref(), Some("refused"));
        assert_eq!(h.record(fail(), &c), Some(false));
        assert!(!h.up);
        assert_eq!(h.record(fail(), &c), None, "already down");
        assert_eq!(h.record(Ok(()), &c), None);
        assert_eq!(h.last_failure, None);
        assert_eq!(h.record(fail(), &c), None);
        assert_eq!(h.record(Ok(()), &c), None);
        assert_eq!(h.record(Ok(()), &c), Some(true));
        assert!(h.up);
    }

    #[test]
    fn the_down_set_is_by_upstream_and_address() {
        let a: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let mut down = DownEndpoints::default();
        assert!(down.is_empty() && !down.contains("api", a));
        assert_eq!(down.len(), 0);
        down.insert("api", a);
        down.insert("api", a);
        assert_eq!(down.len(), 1);
        assert!(!down.is_empty());
        assert!(down.contains("api", a));
        assert!(!down.contains("api", b), "another address");
        assert!(!down.contains("web", a), "another upstream");
        down.insert("api", b);
        assert_eq!(down.len(), 2);
        assert!(down.contains("api", b));
    }

    #[test]
    fn a_threshold_of_zero_or_one_moves_at_once() {
        for t in [0, 1] {
            let mut h = EndpointHealth::default();
            assert_eq!(h.record(Err("x".into()), &check(t, t)), Some(false));
            assert_eq!(h.record(Ok(()), &check(t, t)), Some(true));
        }
    }

    #[test]
    fn http_answers_are_judged_by_status_and_body() {
        let any = Probe::Http {
            method: "GET".into(),
            path: "/healthz".into(),
            host: None,
            statuses: vec![],
            body: None,
        };
        assert_eq!(judge(&any, 200, b""), Ok(()));
        assert_eq!(judge(&any, 399, b""), Ok(()));
        assert_eq!(judge(&any, 199, b""), Err("status 199".into()));
        assert_eq!(judge(&any, 400, b""), Err("status 400".into()));
        assert_eq!(judge(&any, 503, b""), Err("status 503".into()));
        let strict = Probe::Http {
            method: "GET".into(),
            path: "/healthz".into(),
            host: None,
            statuses: vec![200, 204],
            body: Some("ok".into()),
        };
        assert_eq!(judge(&strict, 204, b"all ok"), Ok(()));
        assert_eq!(judge(&strict, 301, b"ok"), Err("status 301".into()));
        assert_eq!(
            judge(&strict, 200, b"degraded"),
            Err("body lacks \"ok\"".into())
        );
        assert_eq!(judge(&strict, 200, b"o"), Err("body lacks \"ok\"".into()));
        assert_eq!(judge(&Probe::Tcp, 0, b""), Ok(()));
    }
}
