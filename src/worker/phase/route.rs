//! [hot] Phase: route. Compiled part: `Snapshot::router` (host, path,
//! method and header predicates) and each `Route`'s body limit. No
//! per-worker part.

use crate::failure::Failure;
use crate::http::{self, BodyFraming, HeaderSpan, RequestHead};
use crate::router::RequestFacts;
use crate::snapshot::{Route, Snapshot};

use super::super::client::RequestView;
use super::Verdict;

/// The router's view of a parsed head.
struct HeadFacts<'a> {
    buf: &'a [u8],
    headers: &'a [HeaderSpan],
    method: &'a [u8],
}

impl RequestFacts for HeadFacts<'_> {
    #[inline]
    fn method(&self) -> &[u8] {
        self.method
    }

    #[inline]
    fn has_header_value(&self, name: &[u8], value: &[u8]) -> bool {
        self.headers.iter().any(|h| {
            h.name.get(self.buf).eq_ignore_ascii_case(name)
                && http::trim_ows(h.value.get(self.buf)) == value
        })
    }
}

/// The index of the route that answers this request, if any.
pub fn find(snapshot: &Snapshot, request: &RequestView, head: &RequestHead) -> Option<usize> {
    let buf = request.buf;
    let facts = HeadFacts {
        buf,
        headers: request.headers,
        method: head.method_span.get(buf),
    };
    let host = head.host.map_or(&b""[..], |h| h.get(buf));
    snapshot
        .router
        .find(host, head.path.get(buf), &facts)
        .map(|index| index as usize)
}

/// A declared body larger than the route allows is refused before a byte
/// of it is read (a chunked one is counted as it streams, in `forward`).
pub fn check_body_size(route: &Route, head: &RequestHead) -> Verdict {
    match head.framing {
        BodyFraming::Length(n) if n > route.max_body_bytes => {
            Verdict::Answer(Failure::BodyTooLarge)
        }
        _ => Verdict::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_request;

    fn snapshot() -> Snapshot {
        crate::config::load_str(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"post-api\"\npath_prefix = \"/api\"\nmethods = [\"POST\"]\nmax_body_bytes = 10\n[routes.respond]\nstatus = 201\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\n[routes.respond]\nstatus = 200\n",
            "test",
        )
        .expect("valid config")
    }

    /// The route a head goes to, and the body-size verdict there.
    fn route(snapshot: &Snapshot, raw: &str) -> Option<(String, Verdict)> {
        let mut headers = Vec::new();
        let head = parse_request(raw.as_bytes(), 8192, 64, &mut headers)
            .expect("valid head")
            .expect("complete head");
        let request = RequestView {
            buf: raw.as_bytes(),
            headers: &headers,
            peer: "127.0.0.1:1".parse().unwrap(),
            peer_ip: b"127.0.0.1",
            tls: None,
            consumer: None,
        };
        let route = &snapshot.routes[find(snapshot, &request, &head)?];
        Some((route.name.clone(), check_body_size(route, &head)))
    }

    #[test]
    fn routes_by_path_and_method_and_checks_the_declared_body() {
        let s = snapshot();
        let found = |raw: &str| route(&s, raw);
        assert_eq!(
            found("GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(("api".into(), Verdict::Continue))
        );
        assert_eq!(
            found("POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"),
            Some(("post-api".into(), Verdict::Continue))
        );
        assert_eq!(
            found("POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"),
            Some(("post-api".into(), Verdict::Answer(Failure::BodyTooLarge)))
        );
        // A chunked body is counted as it streams, not here.
        assert_eq!(
            found("POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(("post-api".into(), Verdict::Continue))
        );
        assert_eq!(found("GET /other HTTP/1.1\r\nHost: a\r\n\r\n"), None);
    }
}
