//! [cold] Why a request matches the route it does: the evaluation order of
//! every candidate route and the reason each earlier one was passed over.
//! Used by `ringgate route`; the test below keeps it in agreement with the
//! fast matcher.

use super::{HostMatch, PathMatch, RequestFacts, Router, normalize_host, prefix_matches};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Matched,
    /// Host and path fit, but a predicate did not.
    PredicateFailed(String),
    /// Host or path did not fit.
    NotApplicable(String),
}

#[derive(Debug)]
pub struct Explanation {
    /// (route index, verdict) in evaluation order: candidates first (up to
    /// and including the winner), then routes that were never candidates.
    pub steps: Vec<(u32, Verdict)>,
    pub winner: Option<u32>,
}

impl Router {
    pub fn explain<F: RequestFacts>(&self, host: &[u8], path: &[u8], facts: &F) -> Explanation {
        let mut buf = [0u8; super::MAX_HOST];
        let host = normalize_host(host, &mut buf).map(<[u8]>::to_vec);
        let mut candidates: Vec<((u8, usize, usize), u32)> = Vec::new();
        let mut others = Vec::new();
        for (i, m) in self.matchers.iter().enumerate() {
            let i = i as u32;
            let host_rank = match (&m.host, &host) {
                (HostMatch::Any, _) => Some(usize::MAX),
                (HostMatch::Exact(h), Some(host)) if h.as_bytes() == host.as_slice() => Some(0),
                (HostMatch::Suffix(s), Some(host)) if host.ends_with(s.as_bytes()) => {
                    Some(1 + host.len() - s.len())
                }
                _ => None,
            };
            let path_rank = match &m.path {
                PathMatch::Any => Some((2u8, usize::MAX)),
                PathMatch::Exact(p) if p.as_bytes() == path => Some((0, 0)),
                PathMatch::Prefix(p) if prefix_matches(p.as_bytes(), path) => {
                    Some((1, path.len() - p.len()))
                }
                _ => None,
            };
            match (host_rank, path_rank) {
                (Some(h), Some((tier, distance))) => {
                    candidates.push(((tier, distance, h), i));
                }
                (None, _) => others.push((
                    i,
                    Verdict::NotApplicable(format!("{} does not match", m.host)),
                )),
                (_, None) => others.push((
                    i,
                    Verdict::NotApplicable(format!("{} does not match", m.path)),
                )),
            }
        }
        // Host tier first, then path tier, then file order.
        candidates.sort_by_key(|&((tier, distance, h), i)| (h, tier, distance, i));
        let mut steps = Vec::new();
        let mut winner = None;
        for (_, i) in candidates {
            if winner.is_some() {
                steps.push((
                    i,
                    Verdict::NotApplicable("a more specific route matched first".into()),
                ));
                continue;
            }
            let m = &self.matchers[i as usize];
            let verdict =
                if !m.methods.is_empty() && !m.methods.iter().any(|x| &**x == facts.method()) {
                    Verdict::PredicateFailed(format!(
                        "method {} not in [{}]",
                        String::from_utf8_lossy(facts.method()),
                        m.methods
                            .iter()
                            .map(|x| String::from_utf8_lossy(x).into_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                } else if let Some((name, value)) = m
                    .headers
                    .iter()
                    .find(|(n, v)| !facts.has_header_value(n, v))
                {
                    Verdict::PredicateFailed(format!(
                        "header {}: {} not present",
                        String::from_utf8_lossy(name),
                        String::from_utf8_lossy(value)
                    ))
                } else {
                    winner = Some(i);
                    Verdict::Matched
                };
            steps.push((i, verdict));
        }
        steps.extend(others);
        Explanation { steps, winner }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Facts;
    use super::super::*;

    /// The explanation's winner must always be the fast matcher's answer.
    #[test]
    fn explain_agrees_with_find() {
        let hosts = [
            HostMatch::Any,
            HostMatch::Exact("a.example.com".into()),
            HostMatch::Suffix(".example.com".into()),
        ];
        let paths = [
            PathMatch::Any,
            PathMatch::Exact("/a/b".into()),
            PathMatch::Prefix("/a".into()),
            PathMatch::Prefix("/a/b".into()),
            PathMatch::Prefix("/".into()),
        ];
        let mut matchers = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..40 {
            let mut m = RouteMatcher {
                host: hosts[(next() % 3) as usize].clone(),
                path: paths[(next() % 5) as usize].clone(),
                methods: vec![],
                headers: vec![],
            };
            if next() % 3 == 0 {
                m.methods = vec![b"POST".as_slice().into()];
            }
            if next() % 4 == 0 {
                m.headers = vec![(b"x-v".as_slice().into(), b"1".as_slice().into())];
            }
            matchers.push(m);
            let router = Router::new(matchers.clone());
            for host in [&b"a.example.com"[..], b"b.example.com", b"other"] {
                for path in [&b"/a/b"[..], b"/a/b/c", b"/a", b"/ab", b"/"] {
                    for method in [&b"GET"[..], b"POST"] {
                        for headers in [&[][..], &[(&b"x-v"[..], &b"1"[..])][..]] {
                            let facts = Facts { method, headers };
                            assert_eq!(
                                router.find(host, path, &facts),
                                router.explain(host, path, &facts).winner,
                                "host {:?} path {:?}",
                                String::from_utf8_lossy(host),
                                String::from_utf8_lossy(path)
                            );
                        }
                    }
                }
            }
        }
    }
}
