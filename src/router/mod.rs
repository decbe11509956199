//! [hot] The compiled request matcher.
//!
//! Routes are compiled once per Snapshot into tables indexed by host and path,
//! so matching costs a few hash lookups however many routes there are.
//!
//! Precedence (documented in docs/config.md, shown by `ringgate route`):
//! 1. host: exact host, then `*.suffix` wildcards longest first, then routes with
//!    no host condition;
//! 2. within a host tier, path: exact path, then prefixes longest first, then
//!    routes with no path condition;
//! 3. within one host+path key, routes in file order; the first whose method
//!    and header predicates hold wins. If none holds, matching falls through to
//!    the next path key and then to the next host tier.
//!
//! The router knows nothing about HTTP parsing: requests are seen through the
//! `RequestFacts` trait, so it can be benchmarked and tested alone.

mod explain;

pub use explain::{Explanation, Verdict};

use ahash::AHashMap;

/// What the router needs to know about a request beyond host and path.
pub trait RequestFacts {
    fn method(&self) -> &[u8];
    /// Whether any header named `name` (lower-case) has exactly `value`.
    fn has_header_value(&self, name: &[u8], value: &[u8]) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host without port.
    Exact(String),
    /// Lower-case suffix including the leading dot: `*.example.com` → `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// Segment-aware prefix: `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
    Prefix(String),
}

/// (lower-case name, exact value) a request header must have.
pub type HeaderPredicate = (Box<[u8]>, Box<[u8]>);

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => f.write_str("any host"),
            HostMatch::Exact(h) => write!(f, "host {h}"),
            HostMatch::Suffix(s) => write!(f, "host *{s}"),
        }
    }
}

impl std::fmt::Display for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Any => f.write_str("any path"),
            PathMatch::Exact(p) => write!(f, "path = {p}"),
            PathMatch::Prefix(p) => write!(f, "path prefix {p}"),
        }
    }
}

/// The match conditions of one route, in file order.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub host: HostMatch,
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Box<[u8]>>,
    /// (lower-case name, exact value)
    pub headers: Vec<HeaderPredicate>,
}

impl RouteMatcher {
    fn predicates_hold<F: RequestFacts>(&self, facts: &F) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| &**m == facts.method()))
            && self
                .headers
                .iter()
                .all(|(name, value)| facts.has_header_value(name, value))
    }
}

#[derive(Default)]
struct PathTable {
    exact: AHashMap<Box<[u8]>, Vec<u32>>,
    prefixes: AHashMap<Box<[u8]>, Vec<u32>>,
    /// Distinct prefix lengths, longest first.
    prefix_lengths: Vec<usize>,
    any_path: Vec<u32>,
}

impl PathTable {
    fn insert(&mut self, path: &PathMatch, index: u32) {
        match path {
            PathMatch::Any => self.any_path.push(index),
            PathMatch::Exact(p) => self
                .exact
                .entry(p.as_bytes().into())
                .or_default()
                .push(index),
            PathMatch::Prefix(p) => {
                self.prefixes
                    .entry(p.as_bytes().into())
                    .or_default()
                    .push(index);
                if !self.prefix_lengths.contains(&p.len()) {
                    self.prefix_lengths.push(p.len());
                    self.prefix_lengths.sort_unstable_by(|a, b| b.cmp(a));
                }
            }
        }
    }

    fn find<F: RequestFacts>(
        &self,
        routes: &[RouteMatcher],
        path: &[u8],
        facts: &F,
    ) -> Option<u32> {
        let first_holding = |candidates: &Vec<u32>| {
            candidates
                .iter()
                .copied()
                .find(|&i| routes[i as usize].predicates_hold(facts))
        };
        if !self.exact.is_empty()
            && let Some(found) = self.exact.get(path).and_then(first_holding)
        {
            return Some(found);
        }
        for &len in &self.prefix_lengths {
            if len > path.len() || !prefix_boundary_ok(path, len) {
                continue;
            }
            if let Some(found) = self.prefixes.get(&path[..len]).and_then(first_holding) {
                return Some(found);
            }
        }
        first_holding(&self.any_path)
    }
}

/// A prefix of length `len` (already known to be a byte prefix candidate) only
/// counts at a path-segment boundary.
#[inline]
pub(crate) fn prefix_boundary_ok(path: &[u8], len: usize) -> bool {
    len == path.len() || len == 0 || path[len - 1] == b'/' || path[len] == b'/'
}

pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix) && prefix_boundary_ok(path, prefix.len())
}

/// The compiled router: immutable, shared by all workers through the Snapshot.
pub struct Router {
    matchers: Vec<RouteMatcher>,
    exact_hosts: AHashMap<Box<[u8]>, PathTable>,
    suffix_hosts: AHashMap<Box<[u8]>, PathTable>,
    any_host: PathTable,
}

/// Longest host name we look up; DNS names are at most 253 bytes.
const MAX_HOST: usize = 255;

impl Router {
    pub fn new(matchers: Vec<RouteMatcher>) -> Router {
        let mut router = Router {
            matchers: Vec::new(),
            exact_hosts: AHashMap::default(),
            suffix_hosts: AHashMap::default(),
            any_host: PathTable::default(),
        };
        for (index, m) in matchers.iter().enumerate() {
            let index = index as u32;
            let table = match &m.host {
                HostMatch::Any => &mut router.any_host,
                HostMatch::Exact(h) => router.exact_hosts.entry(h.as_bytes().into()).or_default(),
                HostMatch::Suffix(s) => router.suffix_hosts.entry(s.as_bytes().into()).or_default(),
            };
            table.insert(&m.path, index);
        }
        router.matchers = matchers;
        router
    }

    pub fn matchers(&self) -> &[RouteMatcher] {
        &self.matchers
    }

    /// The index of the route serving this request, if any.
    ///
    /// `host` is the raw Host value (port and case are handled here); `path`
    /// excludes the query string.
    pub fn find<F: RequestFacts>(&self, host: &[u8], path: &[u8], facts: &F) -> Option<u32> {
        let mut lower = [0u8; MAX_HOST];
        let host = normalize_host(host, &mut lower);
        if let Some(host) = host {
            if !self.exact_hosts.is_empty()
                && let Some(table) = self.exact_hosts.get(host)
                && let Some(found) = table.find(&self.matchers, path, facts)
            {
                return Some(found);
            }
            if !self.suffix_hosts.is_empty() {
                // `a.b.example.com` tries `.b.example.com`, `.example.com`, `.com`:
                // longest suffix first.
                for (i, &b) in host.iter().enumerate() {
                    if b == b'.'
                        && let Some(table) = self.suffix_hosts.get(&host[i..])
                        && let Some(found) = table.find(&self.matchers, path, facts)
                    {
                        return Some(found);
                    }
                }
            }
        }
        self.any_host.find(&self.matchers, path, facts)
    }
}

/// Lower-cases the host and strips a port (IPv6 literals keep their brackets).
/// Returns None for hosts too long to be valid.
pub fn normalize_host<'a>(host: &[u8], out: &'a mut [u8; MAX_HOST]) -> Option<&'a [u8]> {
    let without_port = crate::http::host_without_port(host);
    // A trailing dot names the same host (RFC 1034 §3.1).
    let without_dot = without_port.strip_suffix(b".").unwrap_or(without_port);
    if without_dot.len() > MAX_HOST {
        return None;
    }
    let dst = &mut out[..without_dot.len()];
    for (d, s) in dst.iter_mut().zip(without_dot) {
        *d = s.to_ascii_lowercase();
    }
    Some(&out[..without_dot.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct Facts<'a> {
        pub method: &'a [u8],
        pub headers: &'a [(&'a [u8], &'a [u8])],
    }

    impl RequestFacts for Facts<'_> {
        fn method(&self) -> &[u8] {
            self.method
        }
        fn has_header_value(&self, name: &[u8], value: &[u8]) -> bool {
            self.headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
        }
    }

    fn route(host: HostMatch, path: PathMatch) -> RouteMatcher {
        RouteMatcher {
            host,
            path,
            methods: vec![],
            headers: vec![],
        }
    }

    fn get<'a>() -> Facts<'a> {
        Facts {
            method: b"GET",
            headers: &[],
        }
    }

    #[test]
    fn exact_path_beats_prefix_and_longest_prefix_wins() {
        let router = Router::new(vec![
            route(HostMatch::Any, PathMatch::Prefix("/".into())),
            route(HostMatch::Any, PathMatch::Prefix("/api".into())),
            route(HostMatch::Any, PathMatch::Exact("/api/health".into())),
            route(HostMatch::Any, PathMatch::Prefix("/api/v1".into())),
        ]);
        assert_eq!(router.find(b"x", b"/api/health", &get()), Some(2));
        assert_eq!(router.find(b"x", b"/api/v1/users", &get()), Some(3));
        assert_eq!(router.find(b"x", b"/api/v2", &get()), Some(1));
        assert_eq!(router.find(b"x", b"/api", &get()), Some(1));
        assert_eq!(router.find(b"x", b"/apix", &get()), Some(0));
        assert_eq!(router.find(b"x", b"/", &get()), Some(0));
    }

    #[test]
    fn prefix_is_segment_aware() {
        assert!(prefix_matches(b"/api", b"/api"));
        assert!(prefix_matches(b"/api", b"/api/"));
        assert!(prefix_matches(b"/api", b"/api/x"));
        assert!(!prefix_matches(b"/api", b"/apix"));
        assert!(prefix_matches(b"/api/", b"/api/x"));
        assert!(!prefix_matches(b"/api/", b"/api"));
        assert!(prefix_matches(b"/", b"/anything"));
    }

    #[test]
    fn host_tiers_exact_then_longest_suffix_then_any() {
        let router = Router::new(vec![
            route(HostMatch::Any, PathMatch::Any),
            route(HostMatch::Suffix(".example.com".into()), PathMatch::Any),
            route(HostMatch::Suffix(".eu.example.com".into()), PathMatch::Any),
            route(
                HostMatch::Exact("api.example.com".into()),
                PathMatch::Exact("/only".into()),
            ),
        ]);
        assert_eq!(
            router.find(b"API.Example.com:8080", b"/only", &get()),
            Some(3)
        );
        // Exact host without a matching path falls through to the suffix tier.
        assert_eq!(router.find(b"api.example.com", b"/other", &get()), Some(1));
        assert_eq!(router.find(b"x.eu.example.com", b"/", &get()), Some(2));
        assert_eq!(router.find(b"example.com", b"/", &get()), Some(0));
        assert_eq!(router.find(b"other.org.", b"/", &get()), Some(0));
    }

    #[test]
    fn method_and_header_predicates_in_file_order() {
        let mut post_only = route(HostMatch::Any, PathMatch::Prefix("/v1".into()));
        post_only.methods = vec![b"POST".as_slice().into()];
        let mut canary = route(HostMatch::Any, PathMatch::Prefix("/v1".into()));
        canary.headers = vec![(b"x-env".as_slice().into(), b"canary".as_slice().into())];
        let fallback = route(HostMatch::Any, PathMatch::Prefix("/v1".into()));
        let router = Router::new(vec![post_only, canary, fallback]);
        let post = Facts {
            method: b"POST",
            headers: &[],
        };
        let canary_get = Facts {
            method: b"GET",
            headers: &[(b"X-Env", b"canary")],
        };
        assert_eq!(router.find(b"h", b"/v1/a", &post), Some(0));
        assert_eq!(router.find(b"h", b"/v1/a", &canary_get), Some(1));
        assert_eq!(router.find(b"h", b"/v1/a", &get()), Some(2));
        assert_eq!(router.find(b"h", b"/v2", &get()), None);
    }

    #[test]
    fn overlong_host_matches_only_hostless_routes() {
        let router = Router::new(vec![
            route(HostMatch::Exact("a".into()), PathMatch::Any),
            route(HostMatch::Any, PathMatch::Any),
        ]);
        let long = vec![b'a'; 400];
        assert_eq!(router.find(&long, b"/", &get()), Some(1));
    }
}
