//! [hot] Cache keys. The primary key says which resource (RFC 9111 §4:
//! target URI, here host, path and the configured parts of the query,
//! headers, cookies and, where configured, the consumer); GET and HEAD
//! share it. The secondary key is built from the request's values of the
//! stored response's `Vary` header fields (§4.1), normalized so that
//! insignificant differences (whitespace around list commas) do not
//! split variants. Both are written into a caller's buffer: building a
//! key allocates nothing once the buffer has grown.

/// Which parts of the query string are in the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    /// The query as received.
    All,
    /// None of it.
    Ignore,
    /// Only these parameters (by name, raw), in this order.
    Only(Box<[Box<[u8]>]>),
}

/// What a route's cache key is made of besides host and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub query: QueryKey,
    /// Request headers (lower-case names) whose values are in the key.
    pub headers: Box<[Box<[u8]>]>,
    /// Cookies whose values are in the key.
    pub cookies: Box<[Box<[u8]>]>,
    /// The authenticated consumer is in the key.
    pub consumer: bool,
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec {
            query: QueryKey::All,
            headers: Box::new([]),
            cookies: Box::new([]),
            consumer: false,
        }
    }
}

/// What a request offers a key (read through the caller's view of it).
pub trait KeyFacts {
    fn host(&self) -> &[u8];
    fn path(&self) -> &[u8];
    /// Without the leading `?`.
    fn query(&self) -> &[u8];
    /// Every value of header `name` (lower-case), in order.
    fn header_values<'a>(&'a self, name: &[u8]) -> impl Iterator<Item = &'a [u8]>;
    fn consumer(&self) -> Option<&str>;
}

/// Separates key parts: bytes that cannot occur in a header value or
/// request target, so no two different requests write the same key.
const PART: u8 = 0;
const ABSENT: u8 = 1;

/// Writes the primary key of `request` under `spec` into `out` (cleared
/// first). The route's name leads it, so two routes never share entries.
pub fn primary_key(out: &mut Vec<u8>, route: &str, spec: &KeySpec, request: &impl KeyFacts) {
    out.clear();
    out.extend_from_slice(route.as_bytes());
    out.push(PART);
    for b in request.host() {
        out.push(b.to_ascii_lowercase());
    }
    out.extend_from_slice(request.path());
    out.push(PART);
    let query = request.query();
    match &spec.query {
        QueryKey::All => out.extend_from_slice(query),
        QueryKey::Ignore => {}
        QueryKey::Only(names) => {
            for name in names.iter() {
                for pair in query.split(|&b| b == b'&') {
                    let key = pair.split(|&b| b == b'=').next().unwrap_or(pair);
                    if key == &name[..] {
                        out.extend_from_slice(pair);
                        out.push(b'&');
                    }
                }
                out.push(PART);
            }
        }
    }
    for name in spec.headers.iter() {
        out.push(PART);
        write_values(out, request.header_values(name));
    }
    for name in spec.cookies.iter() {
        out.push(PART);
        match crate::http::cookie(request.header_values(b"cookie"), name) {
            Some(v) => out.extend_from_slice(v),
            None => out.push(ABSENT),
        }
    }
    if spec.consumer {
        out.push(PART);
        match request.consumer() {
            Some(c) => out.extend_from_slice(c.as_bytes()),
            None => out.push(ABSENT),
        }
    }
}

/// Writes the secondary key: for each of `vary` (lower-case names, as
/// stored), the request's values of that field, normalized.
pub fn secondary_key(out: &mut Vec<u8>, vary: &[Box<[u8]>], request: &impl KeyFacts) {
    out.clear();
    for name in vary {
        out.push(PART);
        write_values(out, request.header_values(name));
    }
}

/// A field's values as one list: elements trimmed of surrounding
/// whitespace, joined with `,`; a field that is absent differs from one
/// that is present but empty.
fn write_values<'a>(out: &mut Vec<u8>, values: impl Iterator<Item = &'a [u8]>) {
    let mut any = false;
    for value in values {
        for element in value.split(|&b| b == b',') {
            let element = crate::http::trim_ows(element);
            if element.is_empty() {
                continue;
            }
            if any {
                out.push(b',');
            }
            out.extend_from_slice(element);
            any = true;
        }
        if !any {
            // Present, but empty.
            any = true;
        }
    }
    if !any {
        out.push(ABSENT);
    }
}

/// Header field names, lower-case.
pub type FieldNames = Box<[Box<[u8]>]>;

/// What a response's `Vary` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`: one variant for every request.
    Nothing,
    /// These fields (lower-case, sorted, without duplicates).
    Fields(FieldNames),
    /// `Vary: *`: never served from a cache (§4.1).
    Star,
}

/// The `Vary` of a response, from its `Vary` header lines.
pub fn vary<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vary {
    let mut names: Vec<Box<[u8]>> = Vec::new();
    for value in values {
        for name in crate::http::list_elements(value) {
            if name == b"*" {
                return Vary::Star;
            }
            names.push(name.to_ascii_lowercase().into_boxed_slice());
        }
    }
    if names.is_empty() {
        return Vary::Nothing;
    }
    names.sort();
    names.dedup();
    Vary::Fields(names.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        host: &'static str,
        path: &'static str,
        query: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        consumer: Option<&'static str>,
    }

    impl KeyFacts for Req {
        fn host(&self) -> &[u8] {
            self.host.as_bytes()
        }
        fn path(&self) -> &[u8] {
            self.path.as_bytes()
        }
        fn query(&self) -> &[u8] {
            self.query.as_bytes()
        }
        fn header_values<'a>(&'a self, name: &[u8]) -> impl Iterator<Item = &'a [u8]> {
            let name = name.to_vec();
            self.headers
                .iter()
                .filter(move |(n, _)| n.as_bytes().eq_ignore_ascii_case(&name))
                .map(|(_, v)| v.as_bytes())
        }
        fn consumer(&self) -> Option<&str> {
            self.consumer
        }
    }

    fn req(query: &'static str, headers: Vec<(&'static str, &'static str)>) -> Req {
        Req {
            host: "Example.COM",
            path: "/items",
            query,
            headers,
            consumer: None,
        }
    }

    fn key(spec: &KeySpec, r: &Req) -> Vec<u8> {
        let mut out = Vec::new();
        primary_key(&mut out, "r", spec, r);
        out
    }

    #[test]
    fn the_query_is_whole_ignored_or_selected() {
        let all = KeySpec::default();
        assert_ne!(
            key(&all, &req("a=1", vec![])),
            key(&all, &req("a=2", vec![]))
        );
        assert_eq!(
            key(&all, &req("a=1", vec![])),
            key(&all, &req("a=1", vec![]))
        );
        let ignore = KeySpec {
            query: QueryKey::Ignore,
            ..KeySpec::default()
        };
        assert_eq!(
            key(&ignore, &req("a=1", vec![])),
            key(&ignore, &req("b=2", vec![]))
        );
        let only = KeySpec {
            query: QueryKey::Only(vec![b"page"[..].into(), b"sort"[..].into()].into()),
            ..KeySpec::default()
        };
        assert_eq!(
            key(&only, &req("page=2&utm=x&sort=asc", vec![])),
            key(&only, &req("sort=asc&page=2&utm=y", vec![])),
            "order and other parameters do not matter"
        );
        assert_ne!(
            key(&only, &req("page=2", vec![])),
            key(&only, &req("page=3", vec![]))
        );
        assert_ne!(
            key(&only, &req("page=2", vec![])),
            key(&only, &req("sort=2", vec![])),
            "which parameter a value belongs to matters"
        );
        assert_ne!(
            key(&only, &req("pagex=2", vec![])),
            key(&only, &req("page=2", vec![]))
        );
    }

    #[test]
    fn host_is_case_insensitive_and_parts_cannot_run_together() {
        let spec = KeySpec::default();
        let mut lower = req("", vec![]);
        lower.host = "example.com";
        assert_eq!(key(&spec, &req("", vec![])), key(&spec, &lower));
        let mut other = req("", vec![]);
        other.path = "/other";
        assert_ne!(key(&spec, &lower), key(&spec, &other));
        // A route name is its own part.
        let mut a = Vec::new();
        let mut b = Vec::new();
        primary_key(&mut a, "r1", &spec, &lower);
        primary_key(&mut b, "r", &spec, &lower);
        assert_ne!(a, b);
    }

    #[test]
    fn headers_cookies_and_consumer_when_configured() {
        let spec = KeySpec {
            headers: vec![b"x-tenant"[..].into()].into(),
            cookies: vec![b"region"[..].into()].into(),
            consumer: true,
            ..KeySpec::default()
        };
        let base = key(
            &spec,
            &req("", vec![("x-tenant", "a"), ("cookie", "id=1; region=eu")]),
        );
        assert_eq!(
            base,
            key(
                &spec,
                &req("", vec![("X-Tenant", " a "), ("cookie", "region=eu; id=2")])
            ),
            "other cookies and whitespace do not matter"
        );
        assert_ne!(
            base,
            key(
                &spec,
                &req("", vec![("x-tenant", "b"), ("cookie", "region=eu")])
            )
        );
        assert_ne!(
            base,
            key(
                &spec,
                &req("", vec![("x-tenant", "a"), ("cookie", "region=us")])
            )
        );
        assert_ne!(
            base,
            key(&spec, &req("", vec![("x-tenant", "a")])),
            "cookie absent"
        );
        assert_ne!(
            key(&spec, &req("", vec![("cookie", "region=eu")])),
            key(
                &spec,
                &req("", vec![("x-tenant", ""), ("cookie", "region=eu")])
            ),
            "an absent header differs from an empty one"
        );
        let mut alice = req("", vec![("x-tenant", "a"), ("cookie", "region=eu")]);
        alice.consumer = Some("alice");
        let mut bob = req("", vec![("x-tenant", "a"), ("cookie", "region=eu")]);
        bob.consumer = Some("bob");
        assert_ne!(key(&spec, &alice), key(&spec, &bob));
        assert_ne!(
            key(&spec, &alice),
            base,
            "anonymous differs from a consumer"
        );
    }

    #[test]
    fn vary_names_and_secondary_keys() {
        let Vary::Fields(names) = vary(
            ["Accept-Encoding, accept-language", "ACCEPT-ENCODING"]
                .iter()
                .map(|s| s.as_bytes()),
        ) else {
            panic!("fields")
        };
        assert_eq!(
            names.iter().map(|n| n.to_vec()).collect::<Vec<_>>(),
            [b"accept-encoding".to_vec(), b"accept-language".to_vec()]
        );
        assert_eq!(vary(std::iter::empty()), Vary::Nothing);
        assert_eq!(vary(["accept, *"].iter().map(|s| s.as_bytes())), Vary::Star);
        let sk = |headers| {
            let mut out = Vec::new();
            secondary_key(&mut out, &names, &req("", headers));
            out
        };
        assert_eq!(
            sk(vec![
                ("accept-encoding", "gzip,br"),
                ("accept-language", "en")
            ]),
            sk(vec![
                ("Accept-Encoding", "gzip ,  br"),
                ("accept-language", "en")
            ])
        );
        assert_eq!(
            sk(vec![("accept-encoding", "gzip"), ("accept-encoding", "br")]),
            sk(vec![("accept-encoding", "gzip, br")]),
            "several lines are one list"
        );
        assert_ne!(
            sk(vec![("accept-encoding", "gzip")]),
            sk(vec![("accept-encoding", "br")])
        );
        assert_ne!(sk(vec![("accept-encoding", "gzip")]), sk(vec![]));
        assert_ne!(
            sk(vec![("accept-encoding", "gzip")]),
            sk(vec![("accept-language", "gzip")]),
            "which field a value belongs to matters"
        );
    }
}
