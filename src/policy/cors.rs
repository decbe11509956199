//! [hot] CORS policies (`[cors.NAME]`): which browser origins may call a
//! route, and the `Access-Control-*` headers that tell the browser so.
//! The Fetch standard's rules, compiled: origins as exact strings and
//! `scheme://*.suffix` patterns, header lines rendered once at load so an
//! answer copies them. What a request asked is decided once
//! (`CorsPolicy::judge`) into a `CorsMatch` the exchange carries to
//! whichever answer it ends with: proxied, direct, cached or an error.

use bytes::{BufMut, BytesMut};

use crate::http;

/// The longest `Origin` echoed back (scheme, a 253-byte host, a port);
/// a longer one is not a browser's and is treated as not allowed.
pub const MAX_ORIGIN: usize = 280;

/// An origin pattern as (scheme with `://`, `.suffix`).
pub type OriginPattern = (Box<[u8]>, Box<[u8]>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    pub name: String,
    /// Index in `Snapshot::cors` (metrics).
    pub index: usize,
    /// `*`: any origin.
    pub any_origin: bool,
    /// Lower-case origins allowed as written.
    pub exact: Box<[Box<[u8]>]>,
    /// `https://*.example.com` as (`https://`, `.example.com`): an origin
    /// of that scheme whose host is a subdomain of the suffix.
    pub patterns: Box<[OriginPattern]>,
    /// `*`: any method (the requested one is echoed).
    pub any_method: bool,
    pub methods: Box<[Box<[u8]>]>,
    /// `Access-Control-Allow-Methods` value.
    pub methods_line: Box<[u8]>,
    /// Any request header (the requested ones are echoed): `*`, or no
    /// `headers` list configured.
    pub any_header: bool,
    /// Lower-case request header names allowed.
    pub headers: Box<[Box<[u8]>]>,
    pub headers_line: Box<[u8]>,
    /// `Access-Control-Expose-Headers` value (empty: none sent).
    pub expose_line: Box<[u8]>,
    pub credentials: bool,
    /// `Access-Control-Max-Age` seconds.
    pub max_age: Option<u64>,
    /// Answer Private Network Access preflights with
    /// `Access-Control-Allow-Private-Network: true`.
    pub private_network: bool,
    /// Preflights go to the upstream instead of being answered here.
    pub forward_preflight: bool,
    /// What follows `Access-Control-Allow-Origin` on an allowed actual
    /// answer (`prepare`).
    pub allowed_tail: Box<[u8]>,
}

/// The header lines that follow `Access-Control-Allow-Origin` on an
/// actual answer from an allowed origin, rendered once.
fn actual_tail(credentials: bool, expose_line: &[u8]) -> Vec<u8> {
    let mut tail = Vec::new();
    if credentials {
        tail.extend_from_slice(b"access-control-allow-credentials: true\r\n");
    }
    if !expose_line.is_empty() {
        tail.extend_from_slice(b"access-control-expose-headers: ");
        tail.extend_from_slice(expose_line);
        tail.extend_from_slice(b"\r\n");
    }
    tail
}

/// What a policy made of a request's `Origin`: carried by the exchange
/// to the answer's head.
#[derive(Clone)]
pub struct CorsMatch {
    pub policy: usize,
    /// The allowed origin to echo (`len == 0`: the origin was absent or
    /// not allowed, and only `Vary` is written).
    origin: [u8; MAX_ORIGIN],
    len: u16,
}

impl CorsMatch {
    pub fn allowed(&self) -> bool {
        self.len != 0
    }

    pub fn origin(&self) -> &[u8] {
        &self.origin[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for CorsMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorsMatch")
            .field("policy", &self.policy)
            .field("origin", &String::from_utf8_lossy(self.origin()))
            .finish()
    }
}

/// A preflight's question: `Access-Control-Request-*`.
pub struct PreflightAsk<'a> {
    pub method: &'a [u8],
    /// `Access-Control-Request-Headers` values, comma lists.
    pub headers: &'a [&'a [u8]],
    /// `Access-Control-Request-Private-Network: true` was sent.
    pub private_network: bool,
}

impl CorsPolicy {
    /// Whether `origin` (as the browser sent it) may read answers.
    pub fn allows_origin(&self, origin: &[u8]) -> bool {
        if origin.is_empty() || origin.len() > MAX_ORIGIN {
            return false;
        }
        if self.any_origin || self.exact.iter().any(|o| origin.eq_ignore_ascii_case(o)) {
            return true;
        }
        self.patterns.iter().any(|(scheme, suffix)| {
            origin.len() > scheme.len() + suffix.len()
                && origin[..scheme.len()].eq_ignore_ascii_case(scheme)
                && origin[origin.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && origin[scheme.len()..origin.len() - suffix.len()]
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && origin[scheme.len()] != b'.'
        })
    }

    /// What this policy makes of a request's `Origin` header.
    pub fn judge(&self, origin: Option<&[u8]>) -> CorsMatch {
        let mut m = CorsMatch {
            policy: self.index,
            origin: [0; MAX_ORIGIN],
            len: 0,
        };
        if let Some(origin) = origin.filter(|o| self.allows_origin(o)) {
            m.origin[..origin.len()].copy_from_slice(origin);
            m.len = origin.len() as u16;
        }
        m
    }

    /// Whether a preflight's method and headers are allowed (its origin
    /// was judged already).
    pub fn allows_preflight(&self, ask: &PreflightAsk<'_>) -> bool {
        let method_ok = self.any_method || self.methods.iter().any(|m| **m == *ask.method);
        method_ok
            && (self.any_header
                || ask.headers.iter().all(|value| {
                    value
                        .split(|&b| b == b',')
                        .map(http::trim_ows)
                        .filter(|h| !h.is_empty())
                        .all(|h| self.headers.iter().any(|a| h.eq_ignore_ascii_case(a)))
                }))
    }

    /// Whether answers vary with `Origin` (anything but `*` without
    /// credentials).
    fn varies(&self) -> bool {
        !self.any_origin || self.credentials
    }

    fn write_origin(&self, out: &mut BytesMut, m: &CorsMatch) {
        if self.any_origin && !self.credentials {
            out.put_slice(b"access-control-allow-origin: *\r\n");
        } else {
            http::write::header(out, b"access-control-allow-origin", m.origin());
        }
        if self.credentials {
            out.put_slice(b"access-control-allow-credentials: true\r\n");
        }
    }

    /// Renders what the policy writes the same on every answer; call
    /// once the fields are set (config load).
    pub fn prepare(&mut self) {
        let mut tail = actual_tail(self.credentials, &self.expose_line);
        if self.varies() {
            tail.extend_from_slice(b"vary: Origin\r\n");
        }
        self.allowed_tail = tail.into_boxed_slice();
    }

    /// The headers of an actual (non-preflight) answer.
    #[inline]
    pub fn write_actual(&self, out: &mut BytesMut, m: &CorsMatch) {
        if m.allowed() {
            if self.any_origin && !self.credentials {
                out.put_slice(b"access-control-allow-origin: *\r\n");
            } else {
                http::write::header(out, b"access-control-allow-origin", m.origin());
            }
            out.put_slice(&self.allowed_tail);
        } else if self.varies() {
            out.put_slice(b"vary: Origin\r\n");
        }
    }

    /// The headers of an allowed preflight's answer.
    pub fn write_preflight(&self, out: &mut BytesMut, m: &CorsMatch, ask: &PreflightAsk<'_>) {
        self.write_origin(out, m);
        if self.any_method {
            http::write::header(out, b"access-control-allow-methods", ask.method);
        } else {
            http::write::header(out, b"access-control-allow-methods", &self.methods_line);
        }
        if self.any_header {
            let mut first = true;
            for value in ask
                .headers
                .iter()
                .map(|v| http::trim_ows(v))
                .filter(|v| !v.is_empty())
            {
                if first {
                    out.put_slice(b"access-control-allow-headers: ");
                    first = false;
                } else {
                    out.put_slice(b", ");
                }
                out.put_slice(value);
            }
            if !first {
                out.put_slice(b"\r\n");
            }
        } else if !self.headers_line.is_empty() {
            http::write::header(out, b"access-control-allow-headers", &self.headers_line);
        }
        if let Some(age) = self.max_age {
            out.put_slice(b"access-control-max-age: ");
            http::write::decimal(out, age);
            out.put_slice(b"\r\n");
        }
        if ask.private_network && self.private_network {
            out.put_slice(b"access-control-allow-private-network: true\r\n");
        }
        out.put_slice(
            b"vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(list: &[&str]) -> Box<[Box<[u8]>]> {
        list.iter().map(|s| s.as_bytes().into()).collect()
    }

    pub(crate) fn policy() -> CorsPolicy {
        CorsPolicy {
            name: "web".into(),
            index: 0,
            any_origin: false,
            exact: boxed(&["https://app.example.com", "http://localhost:3000"]),
            patterns: vec![(
                b"https://".as_slice().into(),
                b".example.org".as_slice().into(),
            )]
            .into_boxed_slice(),
            any_method: false,
            methods: boxed(&["GET", "POST"]),
            methods_line: b"GET, POST".as_slice().into(),
            any_header: false,
            headers: boxed(&["authorization", "content-type"]),
            headers_line: b"authorization, content-type".as_slice().into(),
            expose_line: b"x-request-id".as_slice().into(),
            credentials: true,
            max_age: Some(600),
            private_network: true,
            forward_preflight: false,
            allowed_tail: Box::default(),
        }
        .prepared()
    }

    impl CorsPolicy {
        fn prepared(mut self) -> CorsPolicy {
            self.prepare();
            self
        }
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_a_pattern() {
        let p = policy();
        for ok in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "http://localhost:3000",
            "https://a.example.org",
            "https://a-b.c.example.org",
        ] {
            assert!(p.allows_origin(ok.as_bytes()), "{ok}");
        }
        for refused in [
            "",
            "null",
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "https://example.org",
            "https://.example.org",
            "http://a.example.org",
            "https://a.example.org:8443",
            "https://evil.com/.example.org",
            "https://user@a.example.org",
            "https://evilexample.org",
            "http://localhost:30001",
        ] {
            assert!(!p.allows_origin(refused.as_bytes()), "{refused}");
        }
        let long = format!("https://{}.example.org", "a".repeat(MAX_ORIGIN));
        assert!(!p.allows_origin(long.as_bytes()));
        // The longest origin echoed is allowed, one byte more is not.
        let longest = format!("https://{}.example.org", "a".repeat(MAX_ORIGIN - 20));
        assert_eq!(longest.len(), MAX_ORIGIN);
        assert!(p.allows_origin(longest.as_bytes()));
        let m = p.judge(Some(longest.as_bytes()));
        assert_eq!(m.origin(), longest.as_bytes());
        let over = format!("https://{}.example.org", "a".repeat(MAX_ORIGIN - 19));
        assert!(!p.allows_origin(over.as_bytes()));
        let any = CorsPolicy {
            any_origin: true,
            ..policy()
        };
        assert!(any.allows_origin(b"https://whoever.net") && !any.allows_origin(b""));
    }

    #[test]
    fn preflights_are_allowed_only_for_listed_methods_and_headers() {
        let p = policy();
        let ask = |method: &'static str, headers: &'static [&'static [u8]]| PreflightAsk {
            method: method.as_bytes(),
            headers,
            private_network: false,
        };
        assert!(p.allows_preflight(&ask("POST", &[b"Content-Type, authorization"])));
        assert!(p.allows_preflight(&ask("GET", &[])));
        assert!(p.allows_preflight(&ask("GET", &[b" , "])));
        assert!(!p.allows_preflight(&ask("DELETE", &[])));
        assert!(!p.allows_preflight(&ask("post", &[])));
        assert!(!p.allows_preflight(&ask("POST", &[b"content-type, x-secret"])));
        assert!(!p.allows_preflight(&ask("POST", &[b"content-type", b"x-secret"])));
        let open = CorsPolicy {
            any_method: true,
            any_header: true,
            ..policy()
        };
        assert!(open.allows_preflight(&ask("PURGE", &[b"x-anything"])));
    }

    fn text(out: &BytesMut) -> String {
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn actual_answers_echo_an_allowed_origin_and_always_vary() {
        let p = policy();
        let mut out = BytesMut::new();
        p.write_actual(&mut out, &p.judge(Some(b"https://a.example.org")));
        assert_eq!(
            text(&out),
            "access-control-allow-origin: https://a.example.org\r\naccess-control-allow-credentials: true\r\naccess-control-expose-headers: x-request-id\r\nvary: Origin\r\n"
        );
        out.clear();
        p.write_actual(&mut out, &p.judge(Some(b"https://evil.com")));
        assert_eq!(text(&out), "vary: Origin\r\n");
        out.clear();
        p.write_actual(&mut out, &p.judge(None));
        assert_eq!(text(&out), "vary: Origin\r\n");
        // `*` without credentials: the same answer for everyone.
        let any = CorsPolicy {
            any_origin: true,
            credentials: false,
            expose_line: Box::default(),
            ..policy()
        }
        .prepared();
        out.clear();
        any.write_actual(&mut out, &any.judge(Some(b"https://x.net")));
        assert_eq!(text(&out), "access-control-allow-origin: *\r\n");
        // `*` with credentials: the origin is echoed (browsers refuse `*`).
        let any_cred = CorsPolicy {
            any_origin: true,
            ..policy()
        }
        .prepared();
        out.clear();
        any_cred.write_actual(&mut out, &any_cred.judge(Some(b"https://x.net")));
        assert!(text(&out).starts_with("access-control-allow-origin: https://x.net\r\n"));
        assert!(text(&out).ends_with("vary: Origin\r\n"));
    }

    #[test]
    fn a_preflight_answer_names_what_is_allowed() {
        let p = policy();
        let mut out = BytesMut::new();
        let ask = PreflightAsk {
            method: b"POST",
            headers: &[b"content-type"],
            private_network: true,
        };
        p.write_preflight(&mut out, &p.judge(Some(b"https://app.example.com")), &ask);
        let t = text(&out);
        for line in [
            "access-control-allow-origin: https://app.example.com\r\n",
            "access-control-allow-credentials: true\r\n",
            "access-control-allow-methods: GET, POST\r\n",
            "access-control-allow-headers: authorization, content-type\r\n",
            "access-control-max-age: 600\r\n",
            "access-control-allow-private-network: true\r\n",
            "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
        ] {
            assert!(t.contains(line), "{line} in {t}");
        }
        let open = CorsPolicy {
            any_method: true,
            any_header: true,
            private_network: false,
            max_age: None,
            ..policy()
        };
        out.clear();
        let ask = PreflightAsk {
            method: b"PURGE",
            headers: &[b"x-a, x-b", b" x-c "],
            private_network: true,
        };
        open.write_preflight(
            &mut out,
            &open.judge(Some(b"https://app.example.com")),
            &ask,
        );
        let t = text(&out);
        assert!(t.contains("access-control-allow-methods: PURGE\r\n"), "{t}");
        assert!(
            t.contains("access-control-allow-headers: x-a, x-b, x-c\r\n"),
            "{t}"
        );
        assert!(
            !t.contains("max-age") && !t.contains("private-network"),
            "{t}"
        );
    }
}
