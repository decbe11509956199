//! [hot] Phase: normalize the request target (RFC 3986 §6.2.2), in place in
//! the read buffer, so routing, every later phase and the upstream see one
//! spelling of the path. Compiled part: `ServerLimits::normalize_path`
//! (`None`: routed and forwarded as received). No per-worker part.

use bytes::BytesMut;

use crate::failure::Failure;
use crate::http::{self, NormalizeOptions, RequestHead};

/// Normalizes `head`'s path in `buf` (it never grows) and returns the head
/// with the path's new end; a target that cannot be normalized safely is a
/// 400.
pub fn normalize_target(
    buf: &mut BytesMut,
    mut head: RequestHead,
    options: Option<NormalizeOptions>,
) -> Result<RequestHead, Failure> {
    if let Some(options) = options {
        let (start, end) = (head.path.start as usize, head.path.end as usize);
        let len = http::normalize_path(&mut buf[start..end], options)
            .map_err(|e| Failure::BadRequest(e.reason()))?;
        head.path.end = head.path.start + len as u32;
    }
    Ok(head)
}
