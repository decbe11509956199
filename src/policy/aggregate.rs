//! [warm] Response aggregation (`[routes.aggregate]`): one client request
//! answered by calling several upstream requests at once and merging their
//! JSON bodies. This module holds the compiled route — the backends with
//! their path templates, field filters, keys and limits — and the pure
//! parts: path parameters matched from the request, backend paths filled
//! in, bodies merged. The calls themselves are `worker::aggregate`.

use std::time::Duration;

use serde_json::{Map, Value};

/// What happens when a backend fails (error status, timeout, not JSON,
/// too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// The client gets 502 `aggregate_incomplete` (504 if the deadline
    /// passed).
    Fail,
    /// The client gets what arrived, and `x-aggregate-missing` naming the
    /// backends that did not.
    Partial,
}

/// A piece of a backend's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPiece {
    Text(Box<str>),
    /// The request path after the route's prefix (`${rest}`).
    Rest,
    /// The request's query without `?` (`${query}`).
    Query,
    /// A named path parameter of the route's `pattern` (`${name}`).
    Param(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// For `x-aggregate-missing`, logs and metrics.
    pub name: Box<str>,
    pub upstream: usize,
    pub path: Box<[PathPiece]>,
    /// Put the body under this key; `None`: merge its fields at the top.
    pub key: Option<Box<str>>,
    /// Top-level fields kept (`None`: all).
    pub allow: Option<Box<[Box<str>]>>,
    /// Top-level fields dropped.
    pub deny: Box<[Box<str>]>,
    pub timeout: Duration,
    pub max_body: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatePolicy {
    pub backends: Box<[Backend]>,
    /// The whole aggregate, all backends together.
    pub deadline: Duration,
    pub on_failure: OnFailure,
    /// Largest merged body.
    pub max_result: usize,
    /// Lower-case names of client headers passed to every backend.
    pub pass_headers: Box<[Box<[u8]>]>,
    /// Named path parameters (`/users/{id}`) the backends' paths may use;
    /// a request whose path does not fit gets 404.
    pub pattern: Option<Pattern>,
    /// The length of the route's path prefix (what `${rest}` skips).
    pub prefix_len: usize,
}

/// A path pattern with named parameters, matched segment by segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Box<[Segment]>,
    pub names: Box<[Box<str>]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(Box<str>),
    /// Index into `Pattern::names`.
    Param(usize),
}

impl Pattern {
    /// `/users/{id}/overview` → segments; `None` for a malformed pattern.
    pub fn parse(text: &str) -> Option<Pattern> {
        let rest = text.strip_prefix('/')?;
        let mut segments = Vec::new();
        let mut names: Vec<Box<str>> = Vec::new();
        for seg in rest.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid || names.iter().any(|n| &**n == name) {
                    return None;
                }
                segments.push(Segment::Param(names.len()));
                names.push(name.into());
            } else if seg.contains(['{', '}']) {
                return None;
            } else {
                segments.push(Segment::Literal(seg.into()));
            }
        }
        Some(Pattern {
            segments: segments.into_boxed_slice(),
            names: names.into_boxed_slice(),
        })
    }

    /// The parameters' values in `path` (a normalized request path), in
    /// name order; `None` if it does not match.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let rest = path.strip_prefix('/')?;
        let mut values = vec![""; self.names.len()];
        let mut parts = rest.split('/');
        for seg in self.segments.iter() {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if **l == *part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(i) => values[*i] = part,
            }
        }
        parts.next().is_none().then_some(values)
    }
}

/// A backend's path for one request.
pub fn fill_path(pieces: &[PathPiece], rest: &str, query: &str, params: &[&str], out: &mut String) {
    out.clear();
    for p in pieces {
        match p {
            PathPiece::Text(t) => out.push_str(t),
            PathPiece::Rest => out.push_str(rest),
            PathPiece::Query => out.push_str(query),
            PathPiece::Param(i) => out.push_str(params.get(*i).copied().unwrap_or("")),
        }
    }
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
}

/// Parses a backend path template: `/users${rest}?${query}`, `/users/${id}`.
pub fn parse_path(text: &str, names: &[Box<str>]) -> Result<Box<[PathPiece]>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 {
            pieces.push(PathPiece::Text(rest[..at].into()));
        }
        let Some(end) = rest[at..].find('}') else {
            return Err(format!("`{text}`: `${{` without a closing `}}`"));
        };
        let name = &rest[at + 2..at + end];
        pieces.push(match name {
            "rest" => PathPiece::Rest,
            "query" => PathPiece::Query,
            _ => match names.iter().position(|n| &**n == name) {
                Some(i) => PathPiece::Param(i),
                None => {
                    return Err(format!(
                        "`{text}`: unknown variable `${{{name}}}` (known: rest, query{})",
                        names.iter().map(|n| format!(", {n}")).collect::<String>()
                    ));
                }
            },
        });
        rest = &rest[at + end + 1..];
    }
    if !rest.is_empty() {
        pieces.push(PathPiece::Text(rest.into()));
    }
    Ok(pieces.into_boxed_slice())
}

/// Why a backend contributed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No answer in time (its timeout or the deadline).
    TimedOut,
    /// Connect failure, reset, an error status, a body over `max_body`.
    Failed,
    /// The body was not JSON (or not an object, to merge at the top).
    NotJson,
}

impl Missing {
    pub fn label(self) -> &'static str {
        match self {
            Missing::TimedOut => "timed_out",
            Missing::Failed => "failed",
            Missing::NotJson => "not_json",
        }
    }
}

/// A backend body, filtered: `allow` first, then `deny`, on an object's
/// top-level fields (an array or scalar passes as it is).
fn filter(value: Value, backend: &Backend) -> Value {
    match value {
        Value::Object(map) => {
            let kept: Map<String, Value> = map
                .into_iter()
                .filter(|(k, _)| {
                    backend
                        .allow
                        .as_ref()
                        .is_none_or(|a| a.iter().any(|f| **f == **k))
                        && !backend.deny.iter().any(|f| **f == **k)
                })
                .collect();
            Value::Object(kept)
        }
        other => other,
    }
}

/// Merges the backends' bodies, in backend order: each under its key, or
/// its fields at the top level (a later backend's field wins a clash).
/// A body that is not JSON (or, merged at the top, not an object) is
/// `Missing::NotJson`; the merged value and each backend's outcome come
/// back.
pub fn merge(
    backends: &[Backend],
    bodies: Vec<Result<Vec<u8>, Missing>>,
) -> (Value, Vec<Option<Missing>>) {
    let mut out = Map::new();
    let mut outcomes = Vec::with_capacity(backends.len());
    for (backend, body) in backends.iter().zip(bodies) {
        let parsed =
            body.and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| Missing::NotJson));
        let value = match parsed {
            Ok(v) if backend.key.is_none() && !v.is_object() => Err(Missing::NotJson),
            other => other,
        };
        match value {
            Ok(v) => {
                let v = filter(v, backend);
                match (&backend.key, v) {
                    (Some(key), v) => {
                        out.insert(key.to_string(), v);
                    }
                    (None, Value::Object(fields)) => out.extend(fields),
                    (None, _) => {}
                }
                outcomes.push(None);
            }
            Err(missing) => outcomes.push(Some(missing)),
        }
    }
    (Value::Object(out), outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, key: Option<&str>) -> Backend {
        Backend {
            name: name.into(),
            upstream: 0,
            path: Box::new([]),
            key: key.map(Into::into),
            allow: None,
            deny: Box::new([]),
            timeout: Duration::from_secs(1),
            max_body: 1 << 20,
        }
    }

    #[test]
    fn patterns_match_segment_by_segment() {
        let p = Pattern::parse("/users/{id}/overview/{tab}").unwrap();
        assert_eq!(
            p.matches("/users/42/overview/orders"),
            Some(vec!["42", "orders"])
        );
        assert_eq!(p.matches("/users/42/overview"), None);
        assert_eq!(p.matches("/users//overview/x"), None);
        assert_eq!(p.matches("/users/42/summary/x"), None);
        assert_eq!(p.matches("/users/42/overview/x/more"), None);
        assert!(Pattern::parse("users/{id}").is_none());
        assert!(Pattern::parse("/users/{id}/{id}").is_none());
        assert!(Pattern::parse("/users/{i-d}").is_none());
        assert!(Pattern::parse("/users/x{id}").is_none());
    }

    #[test]
    fn backend_paths_fill_in_the_request() {
        let names: Vec<Box<str>> = vec!["id".into()];
        let pieces = parse_path("/v2/users/${id}/orders${rest}?${query}", &names).unwrap();
        let mut out = String::new();
        fill_path(&pieces, "/recent", "limit=5", &["42"], &mut out);
        assert_eq!(out, "/v2/users/42/orders/recent?limit=5");
        let pieces = parse_path("profile", &names).unwrap();
        fill_path(&pieces, "", "", &[], &mut out);
        assert_eq!(out, "/profile");
        assert!(
            parse_path("/x/${nope}", &names)
                .unwrap_err()
                .contains("unknown variable")
        );
        assert!(parse_path("/x/${id", &names).is_err());
    }

    #[test]
    fn bodies_merge_under_keys_or_at_the_top_filtered() {
        let mut users = backend("users", Some("user"));
        users.deny = vec!["password".into()].into_boxed_slice();
        let mut orders = backend("orders", None);
        orders.allow = Some(vec!["orders".into(), "total".into()].into_boxed_slice());
        let flags = backend("flags", None);
        let broken = backend("broken", Some("broken"));
        let list = backend("list", Some("items"));
        let (merged, outcomes) = merge(
            &[users, orders, flags, broken, list],
            vec![
                Ok(br#"{"id":7,"name":"Ann","password":"x"}"#.to_vec()),
                Ok(br#"{"orders":[1,2],"total":2,"internal":true}"#.to_vec()),
                Ok(br#"{"beta":true,"total":3}"#.to_vec()),
                Ok(b"<html>".to_vec()),
                Ok(b"[1,2,3]".to_vec()),
            ],
        );
        assert_eq!(
            merged,
            serde_json::json!({"user": {"id": 7, "name": "Ann"}, "orders": [1, 2], "total": 3, "beta": true, "items": [1, 2, 3]})
        );
        assert_eq!(outcomes, [None, None, None, Some(Missing::NotJson), None]);
        // At the top level, only an object can merge.
        let (merged, outcomes) = merge(
            &[backend("a", None), backend("b", None)],
            vec![Ok(b"[1]".to_vec()), Err(Missing::TimedOut)],
        );
        assert_eq!(merged, serde_json::json!({}));
        assert_eq!(outcomes, [Some(Missing::NotJson), Some(Missing::TimedOut)]);
    }
}
