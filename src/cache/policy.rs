//! [hot] The shared-cache rules as decisions, without I/O: whether a
//! response may be stored and for how long (RFC 9111 §3, §4.2, §3.5),
//! whether a stored response may answer a request now — fresh, stale
//! while it is revalidated in the background, or only after revalidation
//! (§4, §4.2.4, RFC 5861) — and whether a client's conditional request is
//! answered 304 from it (RFC 9110 §13).

use super::control::{RequestDirectives, ResponseDirectives};
use super::freshness::{
    Heuristic, ResponseTimes, heuristic_lifetime, heuristically_cacheable, initial_age, lifetime,
};
use super::key::Vary;
use super::store::Variant;

/// A route's cache settings, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCache {
    pub key: super::key::KeySpec,
    /// Lifetimes for responses that state none (only heuristically
    /// cacheable statuses).
    pub heuristic: Heuristic,
    /// A client's `Cache-Control: no-cache` (or `max-age=0`) makes the
    /// cache revalidate before answering.
    pub honour_client_no_cache: bool,
    /// Used when the response does not say (`stale-while-revalidate`,
    /// `stale-if-error` of its own win).
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// Largest body stored; larger ones pass through.
    pub max_object: usize,
}

/// What a request brings to the cache rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFacts<'a> {
    pub directives: RequestDirectives,
    /// `Authorization`, or a consumer the gateway authenticated (an API
    /// key in another header is a credential all the same).
    pub authorized: bool,
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<u64>,
}

/// Why a response was not stored (for `Cache-Status` and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    VaryStar,
    SetCookie,
    /// A credential was presented and the response does not say it is
    /// shareable (`public`, `s-maxage`, `must-revalidate`; §3.5).
    Authorization,
    /// No explicit freshness and no heuristic for it.
    NoFreshness,
    /// Nothing to gain: stale at once, without a validator or stale use.
    Useless,
}

/// How a response is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub lifetime: u64,
    pub initial_age: u64,
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    pub must_revalidate: bool,
    pub no_cache: bool,
}

/// The response as the store rules see it.
#[derive(Debug, Clone, Copy)]
pub struct ResponseFacts<'a> {
    pub status: u16,
    pub directives: ResponseDirectives,
    pub times: ResponseTimes,
    pub vary: &'a Vary,
    pub set_cookie: bool,
    pub has_validator: bool,
}

/// Whether a response to a GET may be stored, and how (RFC 9111 §3).
/// `request_time`/`response_time`: when the request went upstream and the
/// response head came back (Unix seconds).
pub fn store_plan(
    route: &RouteCache,
    request: &RequestFacts,
    is_get: bool,
    response: &ResponseFacts,
    request_time: u64,
    response_time: u64,
) -> Result<Plan, NotStored> {
    let d = &response.directives;
    if !is_get {
        return Err(NotStored::Method);
    }
    // Final statuses only; partial content is not assembled.
    // A 304 is not a whole response.
    if response.status < 200 || matches!(response.status, 206 | 304) || response.status > 599 {
        return Err(NotStored::Status);
    }
    if d.no_store || request.directives.no_store {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    if *response.vary == Vary::Star {
        return Err(NotStored::VaryStar);
    }
    if response.set_cookie {
        return Err(NotStored::SetCookie);
    }
    if request.authorized && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    let lifetime = match lifetime(d, &response.times, response_time) {
        Some(l) => l,
        None if heuristically_cacheable(response.status) => {
            heuristic_lifetime(&route.heuristic, &response.times, response_time)
                .ok_or(NotStored::NoFreshness)?
        }
        None => return Err(NotStored::NoFreshness),
    };
    // s-maxage carries proxy-revalidate's meaning for a shared cache
    // (§5.2.2.10): no stale use unless the response itself grants one with
    // an explicit stale-* directive; the route's defaults do not apply.
    let hard = d.must_revalidate || d.proxy_revalidate;
    let granted = |own: Option<u64>, default: u64| match (hard, d.s_maxage.is_some()) {
        (true, _) => 0,
        (false, true) => own.unwrap_or(0),
        (false, false) => own.unwrap_or(default),
    };
    let stale_while_revalidate = granted(d.stale_while_revalidate, route.stale_while_revalidate);
    let stale_if_error = granted(d.stale_if_error, route.stale_if_error);
    let must_revalidate =
        hard || (d.s_maxage.is_some() && stale_while_revalidate == 0 && stale_if_error == 0);
    let initial_age = initial_age(&response.times, request_time, response_time);
    let fresh_for_a_while = lifetime > initial_age && !d.no_cache;
    if !fresh_for_a_while
        && !response.has_validator
        && stale_while_revalidate == 0
        && stale_if_error == 0
    {
        return Err(NotStored::Useless);
    }
    Ok(Plan {
        lifetime,
        initial_age,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate,
        no_cache: d.no_cache,
    })
}

/// What a stored variant can do for a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Answer from the cache.
    Fresh,
    /// Answer from the cache and refresh it in the background.
    StaleWhileRevalidate,
    /// Ask the upstream with the variant's validators first.
    Revalidate,
    /// Unusable: fetch as a miss.
    Miss,
}

/// Whether `variant` may answer `request` at `now` (RFC 9111 §4, §4.2.4,
/// §5.2.1; RFC 5861).
pub fn serve(variant: &Variant, request: &RequestFacts, honour_no_cache: bool, now: u64) -> Serve {
    let has_validator = variant.etag.is_some() || variant.last_modified.is_some();
    let revalidate = if has_validator {
        Serve::Revalidate
    } else {
        Serve::Miss
    };
    let r = &request.directives;
    if honour_no_cache && (r.no_cache || r.max_age == Some(0)) {
        return revalidate;
    }
    let age = variant.age(now);
    let fresh = variant.is_fresh(now)
        && r.max_age.is_none_or(|max| age <= max)
        && r.min_fresh
            .is_none_or(|min| variant.lifetime.saturating_sub(age) >= min);
    if fresh {
        return Serve::Fresh;
    }
    if variant.no_cache || variant.must_revalidate {
        return revalidate;
    }
    let staleness = variant.staleness(now);
    if honour_no_cache && r.max_stale.is_some_and(|max| staleness <= max) && r.max_age.is_none() {
        return Serve::Fresh;
    }
    if staleness <= variant.stale_while_revalidate && variant.stale_while_revalidate > 0 {
        return Serve::StaleWhileRevalidate;
    }
    revalidate
}

/// Whether `variant` may stand in for an upstream that failed (5xx, reset,
/// timeout) at `now`: `stale-if-error` (RFC 5861 §4).
pub fn usable_on_error(variant: &Variant, now: u64) -> bool {
    !variant.must_revalidate
        && !variant.no_cache
        && variant.stale_if_error > 0
        && variant.staleness(now) <= variant.stale_if_error
}

/// Whether the client's conditional request is satisfied by `variant`
/// (answered 304): `If-None-Match` by weak comparison against its ETag;
/// without `If-None-Match`, `If-Modified-Since` against its
/// Last-Modified (RFC 9110 §13.1.2, §13.1.3, §13.2.2).
pub fn not_modified(variant: &Variant, request: &RequestFacts) -> bool {
    if let Some(candidates) = request.if_none_match {
        let Some(etag) = &variant.etag else {
            return false;
        };
        let candidates = crate::http::trim_ows(candidates);
        if candidates == b"*" {
            return true;
        }
        return crate::http::list_elements(candidates).any(|c| weak_eq(c, etag));
    }
    match (request.if_modified_since, variant.last_modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Weak comparison of two entity tags (`W/` ignored, opaque parts equal).
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    let opaque = |t: &[u8]| -> Option<Vec<u8>> {
        let t = crate::http::trim_ows(t);
        let t = t.strip_prefix(b"W/").unwrap_or(t);
        (t.len() >= 2 && t[0] == b'"' && t[t.len() - 1] == b'"').then(|| t.to_vec())
    };
    matches!((opaque(a), opaque(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn route() -> RouteCache {
        RouteCache {
            key: Default::default(),
            heuristic: Heuristic::default(),
            honour_client_no_cache: true,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            max_object: 1 << 20,
        }
    }

    fn response<'a>(status: u16, cc: &str, vary: &'a Vary) -> ResponseFacts<'a> {
        ResponseFacts {
            status,
            directives: ResponseDirectives::parse([cc.as_bytes()]),
            times: ResponseTimes {
                date: Some(1000),
                ..Default::default()
            },
            vary,
            set_cookie: false,
            has_validator: false,
        }
    }

    fn plan(cc: &str) -> Result<Plan, NotStored> {
        store_plan(
            &route(),
            &RequestFacts::default(),
            true,
            &response(200, cc, &Vary::Nothing),
            1000,
            1000,
        )
    }

    #[test]
    fn what_is_stored_and_for_how_long() {
        assert_eq!(plan("max-age=60").unwrap().lifetime, 60);
        assert_eq!(plan("s-maxage=5, max-age=60").unwrap().lifetime, 5);
        assert_eq!(plan("no-store, max-age=60"), Err(NotStored::NoStore));
        assert_eq!(plan("private, max-age=60"), Err(NotStored::Private));
        assert_eq!(plan(""), Err(NotStored::NoFreshness));
        assert_eq!(plan("max-age=0"), Err(NotStored::Useless));
        let p = plan("max-age=10, stale-while-revalidate=30, stale-if-error=300").unwrap();
        assert_eq!((p.stale_while_revalidate, p.stale_if_error), (30, 300));
        let p = plan("s-maxage=10").unwrap();
        assert!(
            p.must_revalidate,
            "s-maxage is proxy-revalidate for a shared cache"
        );
        let p = plan("s-maxage=10, stale-while-revalidate=5").unwrap();
        assert!(!p.must_revalidate);
        assert_eq!(p.stale_while_revalidate, 5);
        let p = plan("max-age=10, proxy-revalidate, stale-while-revalidate=5").unwrap();
        assert!(p.must_revalidate);
        assert_eq!(p.stale_while_revalidate, 0);
        let p = plan("max-age=10, must-revalidate, stale-if-error=300").unwrap();
        assert!(p.must_revalidate);
        assert_eq!(p.stale_if_error, 0, "must-revalidate forbids stale use");
        let r = route();
        let vary_star = Vary::Star;
        let req = RequestFacts::default();
        assert_eq!(
            store_plan(
                &r,
                &req,
                true,
                &response(200, "max-age=60", &vary_star),
                1000,
                1000
            ),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            store_plan(
                &r,
                &req,
                false,
                &response(200, "max-age=60", &Vary::Nothing),
                1000,
                1000
            ),
            Err(NotStored::Method)
        );
        for status in [101, 199, 206, 304, 600] {
            assert_eq!(
                store_plan(
                    &r,
                    &req,
                    true,
                    &response(status, "max-age=60", &Vary::Nothing),
                    1000,
                    1000
                ),
                Err(NotStored::Status)
            );
        }
        // Explicit freshness makes any final status storable.
        for status in [200, 302, 599] {
            assert!(
                store_plan(
                    &r,
                    &req,
                    true,
                    &response(status, "max-age=60", &Vary::Nothing),
                    1000,
                    1000
                )
                .is_ok(),
                "{status}"
            );
        }
        let mut cookie = response(200, "max-age=60", &Vary::Nothing);
        cookie.set_cookie = true;
        assert_eq!(
            store_plan(&r, &req, true, &cookie, 1000, 1000),
            Err(NotStored::SetCookie)
        );
        let no_store_request = RequestFacts {
            directives: RequestDirectives::parse([&b"no-store"[..]]),
            ..Default::default()
        };
        assert_eq!(
            store_plan(
                &r,
                &no_store_request,
                true,
                &response(200, "max-age=60", &Vary::Nothing),
                1000,
                1000
            ),
            Err(NotStored::NoStore)
        );
    }

    #[test]
    fn credentials_need_a_response_that_says_it_is_shareable() {
        let r = route();
        let authorized = RequestFacts {
            authorized: true,
            ..Default::default()
        };
        let stored = |cc: &str| {
            store_plan(
                &r,
                &authorized,
                true,
                &response(200, cc, &Vary::Nothing),
                1000,
                1000,
            )
        };
        assert_eq!(stored("max-age=60"), Err(NotStored::Authorization));
        assert!(stored("public, max-age=60").is_ok());
        assert!(stored("s-maxage=60").is_ok());
        assert!(stored("max-age=60, must-revalidate").is_ok());
    }

    #[test]
    fn heuristics_only_for_heuristically_cacheable_statuses_when_configured() {
        let mut r = route();
        r.heuristic.default_ttl = Some(30);
        let req = RequestFacts::default();
        assert_eq!(
            store_plan(
                &r,
                &req,
                true,
                &response(200, "", &Vary::Nothing),
                1000,
                1000
            )
            .unwrap()
            .lifetime,
            30
        );
        assert_eq!(
            store_plan(
                &r,
                &req,
                true,
                &response(404, "", &Vary::Nothing),
                1000,
                1000
            )
            .unwrap()
            .lifetime,
            30
        );
        assert_eq!(
            store_plan(
                &r,
                &req,
                true,
                &response(302, "", &Vary::Nothing),
                1000,
                1000
            ),
            Err(NotStored::NoFreshness)
        );
        assert_eq!(
            store_plan(
                &r,
                &req,
                true,
                &response(500, "", &Vary::Nothing),
                1000,
                1000
            ),
            Err(NotStored::NoFreshness)
        );
    }

    fn variant(lifetime: u64, swr: u64, sie: u64) -> Variant {
        Variant {
            secondary: Box::new([]),
            head: Bytes::new(),
            body: Bytes::new(),
            received: 1000,
            initial_age: 0,
            lifetime,
            stale_while_revalidate: swr,
            stale_if_error: sie,
            must_revalidate: false,
            no_cache: false,
            etag: Some(Bytes::from_static(b"\"v1\"")),
            last_modified: Some(900),
            status: 200,
        }
    }

    fn req(cc: &str) -> RequestFacts<'static> {
        RequestFacts {
            directives: RequestDirectives::parse([cc.as_bytes()]),
            ..Default::default()
        }
    }

    #[test]
    fn fresh_stale_while_revalidate_or_revalidate() {
        let v = variant(60, 30, 0);
        assert_eq!(serve(&v, &req(""), true, 1059), Serve::Fresh);
        assert_eq!(serve(&v, &req(""), true, 1060), Serve::StaleWhileRevalidate);
        assert_eq!(serve(&v, &req(""), true, 1090), Serve::StaleWhileRevalidate);
        assert_eq!(serve(&v, &req(""), true, 1091), Serve::Revalidate);
        let mut no_validator = variant(60, 0, 0);
        no_validator.etag = None;
        no_validator.last_modified = None;
        assert_eq!(serve(&no_validator, &req(""), true, 1061), Serve::Miss);
        // Either validator alone is enough to revalidate.
        let mut etag_only = variant(60, 0, 0);
        etag_only.last_modified = None;
        assert_eq!(serve(&etag_only, &req(""), true, 1061), Serve::Revalidate);
        let mut date_only = variant(60, 0, 0);
        date_only.etag = None;
        assert_eq!(serve(&date_only, &req(""), true, 1061), Serve::Revalidate);
        let mut must = variant(60, 30, 0);
        must.must_revalidate = true;
        assert_eq!(serve(&must, &req(""), true, 1061), Serve::Revalidate);
        let mut no_cache = variant(60, 0, 0);
        no_cache.no_cache = true;
        assert_eq!(serve(&no_cache, &req(""), true, 1000), Serve::Revalidate);
    }

    #[test]
    fn client_directives() {
        let v = variant(60, 0, 0);
        assert_eq!(serve(&v, &req("no-cache"), true, 1000), Serve::Revalidate);
        assert_eq!(
            serve(&v, &req("no-cache"), false, 1000),
            Serve::Fresh,
            "not honoured"
        );
        assert_eq!(serve(&v, &req("max-age=0"), true, 1000), Serve::Revalidate);
        assert_eq!(serve(&v, &req("max-age=10"), true, 1010), Serve::Fresh);
        assert_eq!(serve(&v, &req("max-age=10"), true, 1011), Serve::Revalidate);
        assert_eq!(serve(&v, &req("min-fresh=20"), true, 1040), Serve::Fresh);
        assert_eq!(
            serve(&v, &req("min-fresh=20"), true, 1041),
            Serve::Revalidate
        );
        assert_eq!(serve(&v, &req("max-stale=10"), true, 1070), Serve::Fresh);
        assert_eq!(
            serve(&v, &req("max-stale=10"), true, 1071),
            Serve::Revalidate
        );
        assert_eq!(serve(&v, &req("max-stale"), true, 99_999), Serve::Fresh);
    }

    #[test]
    fn stale_if_error_window() {
        let v = variant(60, 0, 100);
        assert!(usable_on_error(&v, 1160));
        assert!(!usable_on_error(&v, 1161));
        let mut must = v.clone();
        must.must_revalidate = true;
        assert!(!usable_on_error(&must, 1061));
        assert!(!usable_on_error(&variant(60, 0, 0), 1061));
        // No stale-if-error window: not even at the moment it goes stale.
        assert!(!usable_on_error(&variant(60, 0, 0), 1060));
        assert!(!usable_on_error(&variant(60, 0, 0), 1000));
    }

    #[test]
    fn conditional_requests() {
        let v = variant(60, 0, 0);
        let cond = |inm: Option<&'static [u8]>, ims: Option<u64>| RequestFacts {
            if_none_match: inm,
            if_modified_since: ims,
            ..Default::default()
        };
        assert!(not_modified(&v, &cond(Some(b"\"v1\""), None)));
        assert!(
            not_modified(&v, &cond(Some(b"W/\"v1\""), None)),
            "weak comparison"
        );
        assert!(not_modified(&v, &cond(Some(b"\"x\", \"v1\""), None)));
        assert!(not_modified(&v, &cond(Some(b"*"), None)));
        assert!(!not_modified(&v, &cond(Some(b"\"v2\""), None)));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(&v, &cond(Some(b"\"v2\""), Some(2000))));
        assert!(not_modified(&v, &cond(None, Some(900))));
        assert!(not_modified(&v, &cond(None, Some(901))));
        assert!(!not_modified(&v, &cond(None, Some(899))));
        assert!(!not_modified(&v, &cond(None, None)));
        assert!(!weak_eq(b"v1", b"v1"), "unquoted tags are not tags");
        assert!(!weak_eq(b"\"v1", b"\"v1"), "a tag needs its closing quote");
        assert!(!weak_eq(b"v1\"", b"v1\""), "and its opening one");
    }
}
