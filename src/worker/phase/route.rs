//! [hot] Phase: route. Compiled part: `Snapshot::router` (host, path,
//! method and header predicates) and each `Route`'s body limit. No
//! per-worker part.

use crate::failure::Failure;
use crate::http::{self, BodyFraming, HeaderSpan, RequestHead};
use crate::router::RequestFacts;
use crate::snapshot::{Route, Snapshot};

use super::super::client::Client;
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
pub fn find(snapshot: &Snapshot, client: &Client, head: &RequestHead) -> Option<usize> {
    let buf = &client.buf[..];
    let facts = HeadFacts {
        buf,
        headers: &client.headers,
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
