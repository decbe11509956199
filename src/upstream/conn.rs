//! [hot] An upstream connection as a worker keeps it: the stream and its
//! own reusable buffers (they travel with it into and out of the pool).

use bytes::BytesMut;

use crate::http::HeaderSpan;
use crate::transport::Transport;

/// Read buffer of an upstream connection: big enough that a 16 KiB response
/// arrives in one read. Pooled upstream connections are few (per endpoint,
/// per worker), so this costs little memory.
pub const UPSTREAM_BUFFER: usize = 32 * 1024;

/// A (possibly pooled) upstream connection with its own reusable buffers.
pub struct UpstreamConn {
    pub stream: Transport,
    pub buf: BytesMut,
    pub headers: Vec<HeaderSpan>,
}

impl UpstreamConn {
    pub fn new(stream: Transport) -> UpstreamConn {
        UpstreamConn {
            stream,
            buf: BytesMut::with_capacity(UPSTREAM_BUFFER),
            headers: Vec::with_capacity(32),
        }
    }
}
