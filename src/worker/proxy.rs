//! [hot] Forwarding one request to an upstream and its response back:
//! endpoint choice, pooled connection, request head rewrite, streamed bodies
//! in both directions, interim responses, and the one safe-retry rule.
//!
//! The retry rule: a request that met a *pooled* connection which turns out
//! to be closed (the write fails, or the upstream closes before sending a
//! single response byte) is retried once on a fresh connection, provided the
//! whole request is still in hand (no streamed body) and either nothing could
//! have reached the upstream (the write failed) or the method is idempotent.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::failure::{Failure, client_chunk_failure};
use crate::http::{
    self, BodyFraming, ChunkedDecoder, HeaderSpan, MAX_HEADERS, Method, RequestHead,
    ResponseFraming, ResponseHead, Step, Version, parse_response,
};
use crate::snapshot::{
    Balance, EndpointSpec, ForwardedMode, HashKey, HostRewrite, PathRewrite, Route, Snapshot,
    UpstreamSpec,
};
use crate::upstream::hash::stable_hash;

use super::conn::Client;
use super::conn::Exchange;
use super::io::{
    BODY_READ, IoFailure, IoVecPair, read_more_timed, write_all_clear, write_all_keep, write_front,
    write_two,
};
use super::shard::{Generation, Shard};

/// Request bodies up to this size that already sit in the read buffer are
/// sent with the head in one write, and can be replayed on a safe retry.
const INLINE_BODY_MAX: u64 = 64 * 1024;
/// Body pieces up to this size are copied into the output buffer (one write
/// for head and body); larger ones are written straight from the read buffer.
const COPY_MAX: usize = 16 * 1024;

/// Read buffer of an upstream connection: big enough that a 16 KiB response
/// arrives in one read. Pooled upstream connections are few (per endpoint,
/// per worker), so this costs little memory.
const UPSTREAM_BUFFER: usize = 32 * 1024;

/// A pooled upstream connection with its own reusable buffers.
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub headers: Vec<HeaderSpan>,
}

pub enum ProxyOutcome {
    /// The response was relayed completely.
    Done { keep_client: bool },
    /// Nothing was sent to the client yet: answer with `failure`. If the
    /// request body was not fully read, the connection must close.
    Failed {
        failure: Failure,
        client_body_consumed: bool,
    },
    /// Part of a response was sent and the exchange broke: close.
    Aborted,
}

/// Decrements the endpoint's in-flight count however `forward` ends — in
/// the counts the balancer reads now, even if a reload moved them to a new
/// generation meanwhile.
struct Outstanding {
    counts: std::rc::Rc<[std::cell::Cell<u32>]>,
    endpoint: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let slot = &self.counts[self.endpoint];
        slot.set(slot.get().saturating_sub(1));
    }
}

#[allow(clippy::too_many_arguments)] // the one place the request path meets the upstream path
pub async fn forward(
    shard: &Rc<Shard>,
    generation: &Generation,
    route: &Route,
    upstream: usize,
    client: &mut Client,
    head: &RequestHead,
    close_after: bool,
    exchange: &mut Exchange,
) -> ProxyOutcome {
    let snapshot: &Snapshot = &generation.snapshot;
    let spec = &snapshot.upstreams[upstream];
    let write_timeout = snapshot.limits.idle_timeout;
    let key_hash = consistent_hash_key(spec, client);
    let (endpoint, _outstanding) = {
        let mut ups = generation.upstreams.borrow_mut();
        let state = &mut ups[upstream];
        let e = state.balancer.pick(spec, &state.outstanding, key_hash);
        let slot = &state.outstanding[e];
        slot.set(slot.get() + 1);
        (
            e,
            Outstanding {
                counts: state.outstanding.clone(),
                endpoint: e,
            },
        )
    };

    let mut out = std::mem::take(&mut client.out);
    out.clear();
    build_request_head(
        &mut out,
        client,
        head,
        route,
        &spec.endpoints[endpoint],
        exchange.request_id.as_bytes(),
        snapshot.limits.forwarded,
    );
    client.out = out;
    client.buf.advance(head.len);
    let body_in_hand = match head.framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) if n <= INLINE_BODY_MAX && client.buf.len() as u64 >= n => {
            let n = n as usize;
            client.out.extend_from_slice(&client.buf[..n]);
            client.buf.advance(n);
            exchange.received += n as u64;
            true
        }
        _ => false,
    };
    // Set when the request is written upstream (each attempt).
    let mut sent_at;

    let mut attempt = 0;
    let (mut conn, response) = loop {
        let (mut conn, reused) =
            match acquire(shard, generation, spec, upstream, endpoint, attempt == 0).await {
                Ok(c) => c,
                Err(failure) => {
                    return ProxyOutcome::Failed {
                        failure,
                        client_body_consumed: body_in_hand,
                    };
                }
            };
        let may_retry = reused && attempt == 0 && body_in_hand;
        sent_at = Instant::now();
        match write_all_keep(&mut conn.stream, &mut client.out, write_timeout).await {
            Ok(()) => {}
            Err(IoFailure::TimedOut) => {
                return ProxyOutcome::Failed {
                    failure: Failure::UpstreamTimeout,
                    client_body_consumed: body_in_hand,
                };
            }
            Err(_) if may_retry => {
                attempt += 1;
                shard.metrics.retry();
                continue;
            }
            Err(_) => {
                return ProxyOutcome::Failed {
                    failure: Failure::UpstreamReset,
                    client_body_consumed: body_in_hand,
                };
            }
        }
        if !body_in_hand {
            // The request cannot be replayed, so its bytes need not be kept.
            client.out.clear();
            match send_request_body(snapshot, route, client, &mut conn, head).await {
                Ok(moved) => exchange.received += moved,
                Err(failure) => {
                    return ProxyOutcome::Failed {
                        failure,
                        client_body_consumed: false,
                    };
                }
            }
        }
        match read_response_head(&mut conn, client, head, spec, snapshot).await {
            Ok(response) => break (conn, response),
            Err(HeadError::ClosedBeforeResponse) if may_retry && head.method.is_idempotent() => {
                attempt += 1;
                shard.metrics.retry();
                tracing::debug!(worker = shard.id, upstream = %spec.name, "stale pooled connection; retrying once");
            }
            Err(e) => {
                return ProxyOutcome::Failed {
                    failure: e.failure(),
                    client_body_consumed: true,
                };
            }
        }
    };

    // What the client is told about the body.
    let client_http10 = head.version == Version::Http10;
    let (out_framing, close_for_framing) = match response.framing {
        ResponseFraming::None => (OutFraming::None, false),
        ResponseFraming::Length(n) => (OutFraming::Length(n), false),
        ResponseFraming::Chunked | ResponseFraming::UntilClose if client_http10 => {
            (OutFraming::Raw, true)
        }
        ResponseFraming::Chunked | ResponseFraming::UntilClose => (OutFraming::Chunked, false),
    };
    let close = close_after || close_for_framing || shard.draining.get();
    client.out.clear();
    build_response_head(
        &mut client.out,
        &conn,
        &response,
        head,
        route,
        out_framing,
        close,
        client_http10,
        exchange.request_id.as_bytes(),
        exchange.ratelimit.as_ref(),
    );
    exchange.status = response.status;
    exchange.sent += client.out.len() as u64;
    let upstream_us = sent_at.elapsed().as_micros() as u64;
    shard.metrics.upstream_latency(upstream_us);
    exchange.upstream_us = Some(upstream_us);
    exchange.upstream = Some(spec.endpoints[endpoint].addr);
    conn.buf.advance(response.len);

    let mut relay = Relay {
        src: &mut conn.stream,
        src_buf: &mut conn.buf,
        dst: &mut client.stream,
        out: &mut client.out,
        iov: &mut client.iov,
        read_timeout: spec.response_timeout,
        deadline: None,
        write_timeout,
        moved: 0,
    };
    let relayed = match response.framing {
        ResponseFraming::None => relay.flush().await,
        ResponseFraming::Length(n) => relay.length(n).await,
        ResponseFraming::Chunked => relay.chunked(!client_http10, u64::MAX).await,
        ResponseFraming::UntilClose => relay.until_close(!client_http10).await,
    };
    exchange.sent += relay.moved;
    if relayed.is_err() {
        return ProxyOutcome::Aborted;
    }
    let reusable = response.keep_alive && conn.buf.is_empty() && !shard.draining.get();
    if reusable {
        generation.upstreams.borrow_mut()[upstream].pools[endpoint].checkin(conn, Instant::now());
    }
    ProxyOutcome::Done {
        keep_client: !close,
    }
}

fn consistent_hash_key(spec: &UpstreamSpec, client: &Client) -> Option<u64> {
    if spec.balance != Balance::ConsistentHash {
        return None;
    }
    match spec.hash_key.as_ref()? {
        HashKey::ClientIp => Some(stable_hash(client.peer_ip.as_bytes())),
        HashKey::Header(name) => client.header(name).map(stable_hash),
    }
}

/// Whether an idle upstream connection has nothing to read: no stray bytes
/// (a body after HEAD/204/304, a confused upstream) and no FIN. One
/// non-blocking peek, whatever the io driver.
fn is_quiet(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local; the fd is owned by `stream`.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error().raw_os_error();
        e == Some(libc::EAGAIN) || e == Some(libc::EWOULDBLOCK)
    }
}

async fn acquire(
    shard: &Shard,
    generation: &Generation,
    spec: &UpstreamSpec,
    upstream: usize,
    endpoint: usize,
    allow_pooled: bool,
) -> Result<(UpstreamConn, bool), Failure> {
    if allow_pooled {
        loop {
            let pooled = generation.upstreams.borrow_mut()[upstream].pools[endpoint]
                .checkout(Instant::now());
            let Some(conn) = pooled else { break };
            if is_quiet(&conn.stream) {
                shard.metrics.reuse();
                return Ok((conn, true));
            }
            // Bytes or a FIN arrived while it sat idle: never hand those to
            // the next request (they would become its answer). Dropped.
        }
    }
    let addr = spec.endpoints[endpoint].addr;
    match monoio::time::timeout(spec.connect_timeout, TcpStream::connect_addr(addr)).await {
        Err(_) => {
            shard.metrics.connect(upstream, endpoint, false);
            Err(Failure::UpstreamConnectTimeout)
        }
        Ok(Err(e)) => {
            shard.metrics.connect(upstream, endpoint, false);
            tracing::debug!(worker = shard.id, %addr, error = %e, "upstream connect failed");
            Err(Failure::UpstreamConnect)
        }
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            shard.metrics.connect(upstream, endpoint, true);
            Ok((
                UpstreamConn {
                    stream,
                    buf: BytesMut::with_capacity(UPSTREAM_BUFFER),
                    headers: Vec::with_capacity(32),
                },
                false,
            ))
        }
    }
}

/// Streams a request body that was not already in hand.
async fn send_request_body(
    snapshot: &Snapshot,
    route: &Route,
    client: &mut Client,
    conn: &mut UpstreamConn,
    head: &RequestHead,
) -> Result<u64, Failure> {
    if head.expect_continue && client.buf.is_empty() {
        // Bounded like every other write to a client that may not read.
        let write = client
            .stream
            .write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
        match monoio::time::timeout(snapshot.limits.idle_timeout, write).await {
            Ok((Ok(_), _)) => {}
            _ => return Err(Failure::BadRequestBody("client went away")),
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

enum HeadError {
    /// The upstream closed or reset before sending a single byte.
    ClosedBeforeResponse,
    Failed(Failure),
}

impl HeadError {
    fn failure(self) -> Failure {
        match self {
            HeadError::ClosedBeforeResponse => Failure::UpstreamReset,
            HeadError::Failed(f) => f,
        }
    }
}

async fn read_response_head(
    conn: &mut UpstreamConn,
    client: &mut Client,
    head: &RequestHead,
    spec: &UpstreamSpec,
    snapshot: &Snapshot,
) -> Result<ResponseHead, HeadError> {
    let deadline = Instant::now() + spec.response_timeout;
    let mut received_any = false;
    loop {
        if !conn.buf.is_empty() {
            received_any = true;
            let parsed = parse_response(
                &conn.buf,
                snapshot.limits.max_header_bytes,
                MAX_HEADERS,
                head.method == Method::Head,
                &mut conn.headers,
            );
            match parsed {
                Ok(Some(response)) if response.is_interim() => {
                    // 100 Continue was already answered by us (we do not
                    // forward Expect); other interim responses (103) go to
                    // HTTP/1.1 clients, and the final response follows.
                    if response.status != 100 && head.version == Version::Http11 {
                        client.out.clear();
                        write_interim(&mut client.out, conn, &response);
                        write_all_clear(
                            &mut client.stream,
                            &mut client.out,
                            snapshot.limits.idle_timeout,
                        )
                        .await
                        .map_err(|_| {
                            HeadError::Failed(Failure::BadRequestBody("client went away"))
                        })?;
                    }
                    conn.buf.advance(response.len);
                    continue;
                }
                Ok(Some(response)) => return Ok(response),
                Ok(None) => {}
                Err(e) => return Err(HeadError::Failed(e.into())),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HeadError::Failed(Failure::UpstreamTimeout));
        }
        match read_more_timed(&mut conn.stream, &mut conn.buf, UPSTREAM_BUFFER, remaining).await {
            Ok(_) => {}
            Err(IoFailure::TimedOut) => return Err(HeadError::Failed(Failure::UpstreamTimeout)),
            Err(_) if !received_any && conn.buf.is_empty() => {
                return Err(HeadError::ClosedBeforeResponse);
            }
            Err(_) => return Err(HeadError::Failed(Failure::UpstreamReset)),
        }
    }
}

fn write_interim(out: &mut BytesMut, conn: &UpstreamConn, response: &ResponseHead) {
    http::write::status_line(out, response.status);
    for h in &conn.headers {
        let name = h.name.get(&conn.buf);
        if !http::is_hop_by_hop_or_framing(name) {
            http::write::header(out, name, h.value.get(&conn.buf));
        }
    }
    out.put_slice(b"\r\n");
}

/// The headers that tell an upstream who the client is; never copied from
/// the client as they are (see `write_forwarded`).
fn is_forwarded_identity(name: &[u8]) -> bool {
    match name.len() {
        9 => name.eq_ignore_ascii_case(b"forwarded") || name.eq_ignore_ascii_case(b"x-real-ip"),
        15 => name.eq_ignore_ascii_case(b"x-forwarded-for"),
        16 => name.eq_ignore_ascii_case(b"x-forwarded-host"),
        17 => name.eq_ignore_ascii_case(b"x-forwarded-proto"),
        _ => false,
    }
}

/// `X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, consistently, by `server.forwarded_headers`.
fn write_forwarded(out: &mut BytesMut, client: &Client, head: &RequestHead, mode: ForwardedMode) {
    if mode == ForwardedMode::Strip {
        return;
    }
    let buf = &client.buf[..];
    let peer = client.peer_ip.as_bytes();
    let append = mode == ForwardedMode::Append;
    let earlier = |name: &'static [u8]| {
        client
            .headers
            .iter()
            .filter(move |h| append && h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| http::trim_ows(h.value.get(buf)))
            .filter(|v| !v.is_empty())
    };
    out.put_slice(b"x-forwarded-for: ");
    for v in earlier(b"x-forwarded-for") {
        out.put_slice(v);
        out.put_slice(b", ");
    }
    out.put_slice(peer);
    out.put_slice(b"\r\n");
    // RFC 7239: IPv6 addresses quoted and bracketed; the host quoted (it
    // may carry a port, which is not a token character).
    out.put_slice(b"forwarded: ");
    for v in earlier(b"forwarded") {
        out.put_slice(v);
        out.put_slice(b", ");
    }
    if client.peer.ip().is_ipv6() {
        out.put_slice(b"for=\"[");
        out.put_slice(peer);
        out.put_slice(b"]\"");
    } else {
        out.put_slice(b"for=");
        out.put_slice(peer);
    }
    out.put_slice(b";proto=http");
    if let Some(h) = head.host {
        out.put_slice(b";host=\"");
        out.put_slice(h.get(buf));
        out.put_u8(b'"');
    }
    out.put_slice(b"\r\n");
    http::write::header(out, b"x-real-ip", peer);
    out.put_slice(b"x-forwarded-proto: http\r\n");
    if let Some(h) = head.host {
        http::write::header(out, b"x-forwarded-host", h.get(buf));
    }
}

/// Writes the request line and headers sent upstream.
fn build_request_head(
    out: &mut BytesMut,
    client: &Client,
    head: &RequestHead,
    route: &Route,
    endpoint: &EndpointSpec,
    request_id: &[u8],
    forwarded: ForwardedMode,
) {
    let buf = &client.buf[..];
    out.put_slice(head.method_span.get(buf));
    out.put_u8(b' ');
    let path = head.path.get(buf);
    match &route.path_rewrite {
        PathRewrite::None => out.put_slice(if path.is_empty() { b"/" } else { path }),
        PathRewrite::StripPrefix(len) => {
            let rest = &path[(*len).min(path.len())..];
            if !rest.starts_with(b"/") {
                out.put_u8(b'/');
            }
            out.put_slice(rest);
        }
        PathRewrite::ReplacePrefix { len, with } => {
            let mut rest = &path[(*len).min(path.len())..];
            out.put_slice(with);
            let with_slash = with.ends_with(b"/");
            if with_slash && rest.starts_with(b"/") {
                rest = &rest[1..];
            } else if !with_slash && !rest.is_empty() && !rest.starts_with(b"/") {
                out.put_u8(b'/');
            }
            out.put_slice(rest);
        }
    }
    out.put_slice(head.query.get(buf));
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    match &route.host_rewrite {
        HostRewrite::Preserve => match head.host {
            Some(h) if !h.is_empty() => out.put_slice(h.get(buf)),
            _ => out.put_slice(&endpoint.authority),
        },
        HostRewrite::Endpoint => out.put_slice(&endpoint.authority),
        HostRewrite::Fixed(h) => out.put_slice(h),
    }
    out.put_slice(b"\r\n");

    let edits = &route.request_headers;
    let check_edits = !edits.is_empty();
    write_forwarded(out, client, head, forwarded);
    for h in &client.headers {
        let name = h.name.get(buf);
        let skip = http::is_hop_by_hop_or_framing(name)
            || match name.len() {
                4 => name.eq_ignore_ascii_case(b"host"),
                6 => name.eq_ignore_ascii_case(b"expect"),
                12 => name.eq_ignore_ascii_case(b"x-request-id"),
                _ => is_forwarded_identity(name),
            }
            || (head.connection_names_others && http::connection_names(buf, &client.headers, name))
            || (check_edits && edits.drops(name));
        if !skip {
            http::write::header(out, name, h.value.get(buf));
        }
    }
    http::write::header(out, b"x-request-id", request_id);
    for (name, value) in edits.set.iter().chain(&edits.add) {
        http::write::header(out, name, value);
    }
    match head.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => http::write::content_length(out, n),
        BodyFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutFraming {
    None,
    Length(u64),
    Chunked,
    /// Body bytes as they come, ended by closing the connection (HTTP/1.0).
    Raw,
}

#[allow(clippy::too_many_arguments)]
fn build_response_head(
    out: &mut BytesMut,
    conn: &UpstreamConn,
    response: &ResponseHead,
    head: &RequestHead,
    route: &Route,
    framing: OutFraming,
    close: bool,
    client_http10: bool,
    request_id: &[u8],
    ratelimit: Option<&crate::ratelimit::Decision>,
) {
    let buf = &conn.buf[..];
    http::write::status_line(out, response.status);
    let edits = &route.response_headers;
    let check_edits = !edits.is_empty();
    for h in &conn.headers {
        let name = h.name.get(buf);
        let skip = http::is_hop_by_hop_or_framing(name)
            || (name.len() == 12 && name.eq_ignore_ascii_case(b"x-request-id"))
            || (response.connection_names_others
                && http::connection_names(buf, &conn.headers, name))
            || (check_edits && edits.drops(name));
        if !skip {
            http::write::header(out, name, h.value.get(buf));
        }
    }
    for (name, value) in edits.set.iter().chain(&edits.add) {
        http::write::header(out, name, value);
    }
    http::write::header(out, b"x-request-id", request_id);
    if let Some(d) = ratelimit {
        crate::ratelimit::write_headers(out, d);
    }
    match framing {
        OutFraming::None => {
            // HEAD and 304 keep the length the full response would have had.
            if let Some(n) = response.content_length
                && (head.method == Method::Head || response.status == 304)
            {
                http::write::content_length(out, n);
            }
        }
        OutFraming::Length(n) => http::write::content_length(out, n),
        OutFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        OutFraming::Raw => {}
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    } else if client_http10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
}

#[derive(Debug)]
enum RelayError {
    SourceTimedOut,
    SourceClosed,
    Malformed(http::ChunkError),
    TooLarge,
    Destination,
}

/// Moves a body from `src` to `dst`. `out` holds bytes to send before the
/// body (a head) and collects framing and small pieces so that one write
/// carries as much as possible; large pieces go straight from `src_buf`.
struct Relay<'a> {
    src: &'a mut TcpStream,
    src_buf: &'a mut BytesMut,
    dst: &'a mut TcpStream,
    out: &'a mut BytesMut,
    /// Reused iovec room for head + body `writev`s.
    iov: &'a mut Option<IoVecPair>,
    read_timeout: Duration,
    /// When the whole body must have arrived (request bodies:
    /// `server.body_timeout`, so a client trickling bytes cannot hold an
    /// upstream connection for ever).
    deadline: Option<Instant>,
    write_timeout: Duration,
    /// Body bytes passed to the destination (for byte counters).
    moved: u64,
}

impl Relay<'_> {
    async fn flush(&mut self) -> Result<(), RelayError> {
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

    /// Sends the first `n` bytes of `src_buf`: copied if small, else direct.
    async fn pass(&mut self, n: usize) -> Result<(), RelayError> {
        self.moved += n as u64;
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

    async fn length(&mut self, mut remaining: u64) -> Result<(), RelayError> {
        loop {
            let n = (self.src_buf.len() as u64).min(remaining) as usize;
            if n > 0 {
                self.pass(n).await?;
                remaining -= n as u64;
            }
            if remaining == 0 {
                return self.flush().await;
            }
            self.flush().await?;
            self.fill().await?;
        }
    }

    /// Decodes a chunked body; re-frames it canonically when `reframe`,
    /// else sends only the data (for HTTP/1.0 clients).
    async fn chunked(&mut self, reframe: bool, limit: u64) -> Result<(), RelayError> {
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
                    return self.flush().await;
                }
                Step::NeedMore => {
                    self.flush().await?;
                    self.fill().await?;
                }
            }
        }
    }

    /// Relays until the source closes; chunk-encodes for HTTP/1.1 clients.
    async fn until_close(&mut self, reframe: bool) -> Result<(), RelayError> {
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
            self.flush().await?;
            match self.fill().await {
                Ok(()) => {}
                Err(RelayError::SourceClosed) => {
                    if reframe {
                        self.out.put_slice(http::write::LAST_CHUNK);
                    }
                    return self.flush().await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
