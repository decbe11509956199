//! [hot] Moving a body between two sockets: by length, chunked (decoded
//! and re-framed canonically, or unframed for HTTP/1.0 clients), or until
//! close; small pieces copied next to pending framing, large ones written
//! straight from the read buffer.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};

use crate::failure::{Failure, client_chunk_failure};
use crate::http::{self, BodyFraming, ChunkedDecoder, RequestHead, Step};
use crate::snapshot::{Route, Snapshot};

use super::super::client::Client;
use crate::transport::{
    BODY_READ, IoFailure, IoVecPair, Transport, read_more_timed, write_all_clear, write_front,
    write_owned, write_two,
};
use crate::upstream::UpstreamConn;

/// Body pieces up to this size are copied into the output buffer (one write
/// for head and body); larger ones are written straight from the read buffer.
const COPY_MAX: usize = 16 * 1024;

/// Streams a request body that was not already in hand.
pub(super) async fn send_request_body(
    snapshot: &Snapshot,
    route: &Route,
    client: &mut Client,
    conn: &mut UpstreamConn,
    head: &RequestHead,
) -> Result<u64, Failure> {
    if head.expect_continue && client.buf.is_empty() {
        // Bounded like every other write to a client that may not read.
        let interim: &'static [u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        if write_owned(&mut client.stream, interim, snapshot.limits.idle_timeout)
            .await
            .is_err()
        {
            return Err(Failure::BadRequestBody("client went away"));
        }
    }
    let mut relay = Relay {
        src: &mut client.stream,
        src_buf: &mut client.buf,
        dst: &mut conn.stream,
        out: &mut client.out,
        iov: &mut client.iov,
        read_timeout: snapshot.limits.body_read_timeout,
        deadline: Some(Instant::now() + snapshot.limits.body_timeout),
        write_timeout: snapshot.limits.idle_timeout,
        moved: 0,
        capture: None,
        encoding: None,
    };
    let result = match head.framing {
        BodyFraming::None => Ok(()),
        BodyFraming::Length(n) => relay.length(n).await,
        BodyFraming::Chunked => relay.chunked(true, route.max_body_bytes).await,
    };
    let moved = relay.moved;
    result.map(|()| moved).map_err(|e| match e {
        RelayError::TooLarge => Failure::BodyTooLarge,
        RelayError::Malformed(c) => client_chunk_failure(c),
        RelayError::SourceTimedOut => Failure::BadRequestBody("request body not received in time"),
        RelayError::SourceClosed => {
            Failure::BadRequestBody("client closed before sending its whole body")
        }
        RelayError::Destination => Failure::UpstreamReset,
    })
}

#[derive(Debug)]
pub(super) enum RelayError {
    SourceTimedOut,
    SourceClosed,
    Malformed(http::ChunkError),
    TooLarge,
    Destination,
}

/// Moves a body from `src` to `dst`. `out` holds bytes to send before the
/// body (a head) and collects framing and small pieces so that one write
/// carries as much as possible; large pieces go straight from `src_buf`.
pub(super) struct Relay<'a> {
    pub(super) src: &'a mut Transport,
    pub(super) src_buf: &'a mut BytesMut,
    pub(super) dst: &'a mut Transport,
    pub(super) out: &'a mut BytesMut,
    /// Reused iovec room for head + body `writev`s.
    pub(super) iov: &'a mut Option<IoVecPair>,
    pub(super) read_timeout: Duration,
    /// When the whole body must have arrived (request bodies:
    /// `server.body_timeout`, so a client trickling bytes cannot hold an
    /// upstream connection for ever).
    pub(super) deadline: Option<Instant>,
    pub(super) write_timeout: Duration,
    /// Body bytes passed to the destination (for byte counters).
    pub(super) moved: u64,
    /// A response being stored in the cache as it streams (body data
    /// only, after chunked decoding; compressed, when `encoding` is set).
    pub(super) capture: Option<&'a mut crate::worker::phase::cache::Capture>,
    /// Compressing the body on its way: the destination gets the encoded
    /// stream, chunked or (HTTP/1.0) until close.
    pub(super) encoding: Option<Encoding>,
}

/// A body being compressed as it is relayed.
pub(super) struct Encoding {
    pub(super) encoder: Option<crate::policy::compress::Encoder>,
    /// The encoder's output waiting to be framed.
    pub(super) encoded: BytesMut,
    /// Frame the output as chunks (an HTTP/1.1 client).
    pub(super) chunked: bool,
}

impl Relay<'_> {
    pub(super) async fn flush(&mut self) -> Result<(), RelayError> {
        write_all_clear(self.dst, self.out, self.write_timeout)
            .await
            .map_err(|_| RelayError::Destination)
    }

    async fn fill(&mut self) -> Result<(), RelayError> {
        let mut timeout = self.read_timeout;
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RelayError::SourceTimedOut);
            }
            timeout = timeout.min(left);
        }
        match read_more_timed(self.src, self.src_buf, BODY_READ, timeout).await {
            Ok(_) => Ok(()),
            Err(IoFailure::TimedOut) => Err(RelayError::SourceTimedOut),
            Err(_) => Err(RelayError::SourceClosed),
        }
    }

    /// Moves what the encoder produced into `out`, framed.
    fn frame_encoded(&mut self) {
        let Some(e) = self.encoding.as_mut() else {
            return;
        };
        if e.encoded.is_empty() {
            return;
        }
        let n = e.encoded.len();
        self.moved += n as u64;
        if let Some(capture) = self.capture.as_deref_mut() {
            capture.take(&e.encoded);
        }
        if e.chunked {
            http::write::chunk_start(self.out, n as u64);
        }
        self.out.extend_from_slice(&e.encoded);
        if e.chunked {
            self.out.put_slice(http::write::CHUNK_END);
        }
        e.encoded.clear();
    }

    /// Before waiting for more of the body: what was fed so far goes out
    /// decodable (a sync flush), so a streamed answer is not held back.
    fn flush_encoder(&mut self) -> Result<(), RelayError> {
        if let Some(e) = self.encoding.as_mut()
            && let Some(encoder) = e.encoder.as_mut()
        {
            encoder
                .flush(&mut e.encoded)
                .map_err(|_| RelayError::Destination)?;
        }
        self.frame_encoded();
        Ok(())
    }

    /// The body ended: the encoder's last bytes and the last chunk.
    fn finish_encoder(&mut self) -> Result<(), RelayError> {
        let Some(e) = self.encoding.as_mut() else {
            return Ok(());
        };
        if let Some(encoder) = e.encoder.take() {
            encoder
                .finish(&mut e.encoded)
                .map_err(|_| RelayError::Destination)?;
        }
        let chunked = e.chunked;
        self.frame_encoded();
        if chunked {
            self.out.put_slice(http::write::LAST_CHUNK);
        }
        Ok(())
    }

    /// Waits for more of the body, first sending what is pending.
    async fn refill(&mut self) -> Result<(), RelayError> {
        self.flush_encoder()?;
        self.flush().await?;
        self.fill().await
    }

    /// Sends the first `n` bytes of `src_buf`: copied if small, else
    /// direct; through the encoder when compressing.
    async fn pass(&mut self, n: usize) -> Result<(), RelayError> {
        if let Some(e) = self.encoding.as_mut() {
            if let Some(encoder) = e.encoder.as_mut() {
                encoder
                    .feed(&self.src_buf[..n], &mut e.encoded)
                    .map_err(|_| RelayError::Destination)?;
            }
            self.src_buf.advance(n);
            self.frame_encoded();
            if self.out.len() >= 2 * COPY_MAX {
                return self.flush().await;
            }
            return Ok(());
        }
        self.moved += n as u64;
        if let Some(capture) = self.capture.as_deref_mut() {
            capture.take(&self.src_buf[..n]);
        }
        if n <= COPY_MAX && self.out.len() + n <= 2 * COPY_MAX {
            self.out.extend_from_slice(&self.src_buf[..n]);
            self.src_buf.advance(n);
            Ok(())
        } else if self.out.is_empty() {
            write_front(self.dst, self.src_buf, n, self.write_timeout)
                .await
                .map_err(|_| RelayError::Destination)
        } else {
            // Pending head or framing plus a large piece: one writev, no copy.
            write_two(
                self.dst,
                self.out,
                self.src_buf,
                n,
                self.iov,
                self.write_timeout,
            )
            .await
            .map_err(|_| RelayError::Destination)
        }
    }

    pub(super) async fn length(&mut self, mut remaining: u64) -> Result<(), RelayError> {
        loop {
            let n = (self.src_buf.len() as u64).min(remaining) as usize;
            if n > 0 {
                self.pass(n).await?;
                remaining -= n as u64;
            }
            if remaining == 0 {
                self.finish_encoder()?;
                return self.flush().await;
            }
            self.refill().await?;
        }
    }

    /// Decodes a chunked body; re-frames it canonically when `reframe`,
    /// else sends only the data (for HTTP/1.0 clients).
    pub(super) async fn chunked(&mut self, reframe: bool, limit: u64) -> Result<(), RelayError> {
        let mut decoder = ChunkedDecoder::new();
        let mut total: u64 = 0;
        loop {
            match decoder
                .step(&self.src_buf[..])
                .map_err(RelayError::Malformed)?
            {
                Step::Skip(n) => self.src_buf.advance(n),
                Step::ChunkStart { consumed, size } => {
                    self.src_buf.advance(consumed);
                    total = total.saturating_add(size);
                    if total > limit {
                        return Err(RelayError::TooLarge);
                    }
                    if reframe {
                        http::write::chunk_start(self.out, size);
                    }
                }
                Step::Data(n) => self.pass(n).await?,
                Step::ChunkEnd(n) => {
                    self.src_buf.advance(n);
                    if reframe {
                        self.out.put_slice(http::write::CHUNK_END);
                    }
                }
                Step::End(n) => {
                    self.src_buf.advance(n);
                    if reframe {
                        self.out.put_slice(http::write::LAST_CHUNK);
                    }
                    self.finish_encoder()?;
                    return self.flush().await;
                }
                Step::NeedMore => self.refill().await?,
            }
        }
    }

    /// Relays until the source closes; chunk-encodes for HTTP/1.1 clients.
    pub(super) async fn until_close(&mut self, reframe: bool) -> Result<(), RelayError> {
        loop {
            let n = self.src_buf.len();
            if n > 0 {
                if reframe {
                    http::write::chunk_start(self.out, n as u64);
                }
                self.pass(n).await?;
                if reframe {
                    self.out.put_slice(http::write::CHUNK_END);
                }
            }
            match self.refill().await {
                Ok(()) => {}
                Err(RelayError::SourceClosed) => {
                    if reframe {
                        self.out.put_slice(http::write::LAST_CHUNK);
                    }
                    self.finish_encoder()?;
                    return self.flush().await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
