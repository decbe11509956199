//! [hot] Time in the cache: a stored response's freshness lifetime
//! (RFC 9111 §4.2.1, shared-cache rules) and its age (§4.2.3), from its
//! dates (`http::date`). Pure: every function is told the time, in Unix
//! seconds.

use super::control::{MAX_DELTA, ResponseDirectives};

/// What a response says about its own time: its `Date`, `Expires`, `Age`
/// and `Last-Modified` headers, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseTimes {
    pub date: Option<u64>,
    /// `Some(0)` for an invalid `Expires` (it means "already expired",
    /// RFC 9111 §5.3).
    pub expires: Option<u64>,
    pub age: Option<u64>,
    pub last_modified: Option<u64>,
}

/// How long a response stays fresh when it says nothing itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heuristic {
    /// A fixed lifetime for responses without explicit freshness (the
    /// route's `default_ttl`), if configured.
    pub default_ttl: Option<u64>,
    /// A fraction (in percent) of the time since `Last-Modified`, if
    /// configured (RFC 9111 §4.2.2 suggests 10%), capped by `max`.
    pub last_modified_percent: Option<u64>,
    pub max: u64,
}

/// The freshness lifetime (seconds) of a response a shared cache stores,
/// and whether it is explicit (`None`: it has none, and may be stored only
/// if its status is heuristically cacheable and a heuristic applies).
pub fn lifetime(
    directives: &ResponseDirectives,
    times: &ResponseTimes,
    response_time: u64,
) -> Option<u64> {
    if let Some(s) = directives.s_maxage {
        return Some(s);
    }
    if let Some(m) = directives.max_age {
        return Some(m);
    }
    let expires = times.expires?;
    // Without Date, the time the response was received stands in for it.
    let date = times.date.unwrap_or(response_time);
    Some(expires.saturating_sub(date).min(MAX_DELTA))
}

/// The heuristic lifetime for a response without explicit freshness, when
/// `heuristic` allows one.
pub fn heuristic_lifetime(
    heuristic: &Heuristic,
    times: &ResponseTimes,
    response_time: u64,
) -> Option<u64> {
    if let (Some(percent), Some(modified)) = (heuristic.last_modified_percent, times.last_modified)
    {
        let date = times.date.unwrap_or(response_time);
        let since = date.saturating_sub(modified);
        return Some((since * percent / 100).min(heuristic.max));
    }
    heuristic.default_ttl
}

/// Statuses a cache may store with a heuristic lifetime (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The response's age when it was received (`corrected_initial_age`,
/// RFC 9111 §4.2.3): what its `Age` says plus the time the exchange took,
/// or how old its `Date` makes it, whichever is more.
pub fn initial_age(times: &ResponseTimes, request_time: u64, response_time: u64) -> u64 {
    let apparent = times
        .date
        .map_or(0, |date| response_time.saturating_sub(date));
    let delay = response_time.saturating_sub(request_time);
    let corrected = times.age.unwrap_or(0).saturating_add(delay);
    apparent.max(corrected).min(MAX_DELTA)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(date: Option<u64>, expires: Option<u64>, age: Option<u64>) -> ResponseTimes {
        ResponseTimes {
            date,
            expires,
            age,
            last_modified: None,
        }
    }

    #[test]
    fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
        let d = |s: &str| ResponseDirectives::parse([s.as_bytes()]);
        let t = times(Some(1000), Some(1300), None);
        assert_eq!(lifetime(&d("s-maxage=10, max-age=20"), &t, 1000), Some(10));
        assert_eq!(lifetime(&d("max-age=20"), &t, 1000), Some(20));
        assert_eq!(lifetime(&d(""), &t, 1000), Some(300));
        // Expires before Date: already stale; without Date, the receipt time.
        assert_eq!(
            lifetime(&d(""), &times(Some(1000), Some(900), None), 1000),
            Some(0)
        );
        assert_eq!(
            lifetime(&d(""), &times(None, Some(1300), None), 1100),
            Some(200)
        );
        assert_eq!(
            lifetime(&d("public"), &times(Some(1000), None, None), 1000),
            None
        );
    }

    #[test]
    fn heuristics_apply_only_when_configured() {
        let t = ResponseTimes {
            date: Some(100_000),
            expires: None,
            age: None,
            last_modified: Some(0),
        };
        let none = Heuristic::default();
        assert_eq!(heuristic_lifetime(&none, &t, 100_000), None);
        let lm = Heuristic {
            default_ttl: Some(5),
            last_modified_percent: Some(10),
            max: 86_400,
        };
        assert_eq!(heuristic_lifetime(&lm, &t, 100_000), Some(10_000));
        let capped = Heuristic { max: 600, ..lm };
        assert_eq!(heuristic_lifetime(&capped, &t, 100_000), Some(600));
        let no_lm = ResponseTimes {
            last_modified: None,
            ..t
        };
        assert_eq!(heuristic_lifetime(&lm, &no_lm, 100_000), Some(5));
        assert!(heuristically_cacheable(200) && heuristically_cacheable(404));
        assert!(!heuristically_cacheable(302) && !heuristically_cacheable(500));
    }

    #[test]
    fn initial_age_takes_the_larger_of_age_plus_delay_and_date_skew() {
        // Age 10, the exchange took 2 s: 12.
        assert_eq!(
            initial_age(&times(Some(1000), None, Some(10)), 998, 1000),
            12
        );
        // Date 30 s before receipt: 30.
        assert_eq!(initial_age(&times(Some(970), None, Some(5)), 999, 1000), 30);
        // A Date in the future counts as 0.
        assert_eq!(initial_age(&times(Some(2000), None, None), 1000, 1000), 0);
        assert_eq!(initial_age(&times(None, None, None), 1000, 1000), 0);
        assert_eq!(
            initial_age(&times(None, None, Some(u64::MAX)), 0, 10),
            MAX_DELTA
        );
    }
}
