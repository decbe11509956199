//! [hot] Phase: response headers the gateway adds to every answer from a
//! route (direct or relayed): the route's `response_headers` edits,
//! `x-request-id`, and the tightest rate-limit decision. Compiled part:
//! `Route::response_headers`. No per-worker part.

use bytes::BytesMut;

use crate::http;
use crate::snapshot::HeaderEdits;

/// Whether a relayed header of this name gives way to the route's edits
/// (removed, or replaced by a `set`).
#[inline]
pub fn drops(edits: &HeaderEdits, name: &[u8]) -> bool {
    !edits.is_empty() && edits.drops(name)
}

/// Writes the headers the gateway adds, in a fixed order.
pub fn write(
    out: &mut BytesMut,
    edits: &HeaderEdits,
    request_id: &[u8],
    ratelimit: Option<&crate::ratelimit::Decision>,
) {
    for (name, value) in edits.set.iter().chain(&edits.add) {
        http::write::header(out, name, value);
    }
    http::write::header(out, b"x-request-id", request_id);
    if let Some(d) = ratelimit {
        crate::ratelimit::write_headers(out, d);
    }
}
