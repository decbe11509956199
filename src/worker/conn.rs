//! [hot] One client connection: read a head, route it, answer it (directly or
//! through `proxy`), repeat while keep-alive allows. Requests on a connection
//! are handled strictly in order, so pipelined requests are answered in order.
//!
//! This is the one place that runs the feature modules in sequence. Every
//! failure is turned into the client's answer by `failure::Failure`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};
use monoio::net::TcpStream;

use crate::failure::Failure;
use crate::http::{self, BodyFraming, HeaderSpan, Method, RequestHead, parse_request};
use crate::router::RequestFacts;
use crate::snapshot::{Route, RouteAction, Snapshot};

use super::io::{HEAD_READ, IoFailure, read_more_cancelable, read_more_timed, write_all_clear};
use super::proxy::{self, ProxyOutcome};
use super::request_id::RequestId;
use super::shard::{ConnectionGuard, Generation, Shard};

/// Initial capacity of a connection's read buffer. It lives as long as the
/// connection, idle or not, so it starts small and grows only if a request
/// needs more (it then keeps its size: no allocation per request).
const INITIAL_READ_BUFFER: usize = 2 * 1024;

/// The client side of a connection, with its reusable buffers.
pub struct Client {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The peer IP as text, computed once for X-Forwarded-For.
    pub peer_ip: PeerIp,
    pub buf: BytesMut,
    pub out: BytesMut,
    pub headers: Vec<HeaderSpan>,
    /// iovec room for vectored writes, allocated on first use.
    pub iov: Option<super::io::IoVecPair>,
}

impl Client {
    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.get(&self.buf).eq_ignore_ascii_case(name))
            .map(|h| http::trim_ows(h.value.get(&self.buf)))
    }
}

/// An IP address rendered once, stored inline (no allocation per request).
pub struct PeerIp {
    text: [u8; 48],
    len: usize,
}

impl PeerIp {
    fn new(addr: &SocketAddr) -> PeerIp {
        use std::io::Write;
        let mut text = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(cursor, "{}", addr.ip());
        let len = cursor.position() as usize;
        PeerIp { text, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// The router's view of a parsed head.
pub struct HeadFacts<'a> {
    pub buf: &'a [u8],
    pub headers: &'a [HeaderSpan],
    pub method: &'a [u8],
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

/// What one request/response exchange amounted to, for metrics and logs.
pub struct Exchange {
    pub request_id: RequestId,
    pub route: Option<usize>,
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// Bytes received from the client (head and body).
    pub received: u64,
    /// Bytes sent to the client.
    pub sent: u64,
    /// The endpoint that answered, for proxied requests.
    pub upstream: Option<SocketAddr>,
    /// Request sent upstream → response head, microseconds.
    pub upstream_us: Option<u64>,
    /// The tightest rate-limit decision, reported on the response.
    pub ratelimit: Option<crate::ratelimit::Decision>,
}

impl Exchange {
    pub fn new(request_id: RequestId) -> Exchange {
        Exchange {
            request_id,
            route: None,
            status: 0,
            received: 0,
            sent: 0,
            upstream: None,
            upstream_us: None,
            ratelimit: None,
        }
    }
}

/// Method and target copied for the access log before the head's bytes are
/// consumed (targets past 512 bytes are cut, with a trailing `...`).
struct LoggedTarget {
    bytes: [u8; 531],
    method_len: usize,
    len: usize,
}

impl LoggedTarget {
    fn capture(buf: &[u8], head: &RequestHead) -> LoggedTarget {
        let mut t = LoggedTarget {
            bytes: [0; 531],
            method_len: 0,
            len: 0,
        };
        let method = head.method_span.get(buf);
        let method = &method[..method.len().min(16)];
        t.bytes[..method.len()].copy_from_slice(method);
        t.method_len = method.len();
        let mut at = method.len();
        for part in [head.path.get(buf), head.query.get(buf)] {
            let room = 512 + t.method_len - at;
            let take = part.len().min(room);
            t.bytes[at..at + take].copy_from_slice(&part[..take]);
            at += take;
            if take < part.len() {
                t.bytes[at..at + 3].copy_from_slice(b"...");
                at += 3;
                break;
            }
        }
        t.len = at;
        t
    }

    fn method(&self) -> &[u8] {
        &self.bytes[..self.method_len]
    }

    fn target(&self) -> &[u8] {
        &self.bytes[self.method_len..self.len]
    }
}

/// The request's `x-request-id` if the client sent a usable one, else a new one.
fn request_id_for(shard: &Shard, client: &Client) -> RequestId {
    client
        .header(b"x-request-id")
        .and_then(RequestId::from_client)
        .unwrap_or_else(|| shard.request_ids.borrow_mut().generate())
}

enum HeadOutcome {
    Head(RequestHead),
    /// The client went away: nothing left to do.
    Closed,
    /// We end an idle connection (idle timeout or drain): FIN first, then a
    /// lingering close, so a client racing us with a request sees an orderly
    /// end of stream (and retries), never a reset.
    Retire,
    Failed(Failure),
}

/// Serves one accepted connection until it closes.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _guard = ConnectionGuard::new(shard.clone());
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        peer,
        peer_ip: PeerIp::new(&peer),
        buf: BytesMut::with_capacity(INITIAL_READ_BUFFER),
        // Lent from the worker's pool for each exchange (see BufferPool).
        out: BytesMut::new(),
        headers: Vec::with_capacity(32),
        iov: None,
    };
    let mut served: u64 = 0;
    loop {
        // The generation current while we wait; the request itself uses the
        // one current when its head has arrived (requests that start after a
        // reload use the new config).
        let waiting = shard.generation();
        let head = match read_head(&shard, &waiting.snapshot, &mut client, served == 0).await {
            HeadOutcome::Head(head) => head,
            HeadOutcome::Closed => return,
            HeadOutcome::Retire => {
                linger_close(client).await;
                return;
            }
            HeadOutcome::Failed(failure) => {
                client.out = shard.out_buffers.take();
                let mut exchange = Exchange::new(shard.request_ids.borrow_mut().generate());
                answer_failure(
                    &shard,
                    &waiting.snapshot,
                    &mut client,
                    failure,
                    true,
                    &mut exchange,
                )
                .await;
                shard.out_buffers.give(std::mem::take(&mut client.out));
                shard.metrics.exchange(None, 7, exchange.status, 0);
                shard.metrics.bytes(client.buf.len() as u64, exchange.sent);
                // Refused heads are logged too (no method or path: the head
                // was never understood).
                if let Some(log) = &shard.log {
                    log.record(&crate::accesslog::Entry {
                        request_id: exchange.request_id.as_bytes(),
                        client: client.peer,
                        method: b"",
                        path: b"",
                        status: exchange.status,
                        route: "",
                        upstream: None,
                        bytes_in: client.buf.len() as u64,
                        bytes_out: exchange.sent,
                        duration_us: 0,
                        upstream_us: None,
                        worker: shard.id,
                    });
                }
                linger_close(client).await;
                return;
            }
        };
        drop(waiting);
        let generation = shard.generation();
        let snapshot: &Snapshot = &generation.snapshot;
        served += 1;
        shard.metrics.request();
        let started = Instant::now();
        let method = crate::metrics::method_index(head.method_span.get(&client.buf));
        let mut exchange = Exchange::new(request_id_for(&shard, &client));
        exchange.received = head.len as u64;
        let logged = shard
            .log
            .as_ref()
            .map(|_| LoggedTarget::capture(&client.buf, &head));
        let last_allowed = snapshot.limits.max_requests_per_connection != 0
            && served >= snapshot.limits.max_requests_per_connection;
        client.out = shard.out_buffers.take();
        let keep = handle_request(
            &shard,
            &generation,
            &mut client,
            &head,
            last_allowed,
            &mut exchange,
        )
        .await;
        shard.out_buffers.give(std::mem::take(&mut client.out));
        shard.metrics.exchange(
            exchange.route,
            method,
            exchange.status,
            started.elapsed().as_micros() as u64,
        );
        shard.metrics.bytes(exchange.received, exchange.sent);
        if let (Some(log), Some(logged)) = (&shard.log, &logged) {
            log.record(&crate::accesslog::Entry {
                request_id: exchange.request_id.as_bytes(),
                client: client.peer,
                method: logged.method(),
                path: logged.target(),
                status: exchange.status,
                route: exchange
                    .route
                    .map_or("", |r| snapshot.routes[r].name.as_str()),
                upstream: exchange.upstream,
                bytes_in: exchange.received,
                bytes_out: exchange.sent,
                duration_us: started.elapsed().as_micros() as u64,
                upstream_us: exchange.upstream_us,
                worker: shard.id,
            });
        }
        if !keep || shard.draining.get() {
            linger_close(client).await;
            return;
        }
    }
}

/// Normalizes the request path in the read buffer (it never grows), so
/// that routing, every later phase and the upstream see one spelling of it.
fn normalize_target(
    buf: &mut BytesMut,
    mut head: RequestHead,
    limits: &crate::snapshot::ServerLimits,
) -> Result<RequestHead, Failure> {
    if let Some(options) = limits.normalize_path {
        let (start, end) = (head.path.start as usize, head.path.end as usize);
        let len = http::normalize_path(&mut buf[start..end], options)
            .map_err(|e| Failure::BadRequest(e.reason()))?;
        head.path.end = head.path.start + len as u32;
    }
    Ok(head)
}

async fn read_head(
    shard: &Shard,
    snapshot: &Snapshot,
    client: &mut Client,
    first: bool,
) -> HeadOutcome {
    let limits = &snapshot.limits;
    // The head deadline starts at accept for a new connection, and at the
    // first byte of each later request (before that, idle_timeout applies).
    let mut deadline = first.then(|| Instant::now() + limits.header_read_timeout);
    loop {
        if !client.buf.is_empty() {
            match parse_request(
                &client.buf,
                limits.max_header_bytes,
                limits.max_headers,
                &mut client.headers,
            ) {
                Ok(Some(head)) => {
                    return match normalize_target(&mut client.buf, head, limits) {
                        Ok(head) => HeadOutcome::Head(head),
                        Err(failure) => HeadOutcome::Failed(failure),
                    };
                }
                Ok(None) => {}
                Err(e) => return HeadOutcome::Failed(e.into()),
            }
            if deadline.is_none() {
                deadline = Some(Instant::now() + limits.header_read_timeout);
            }
        }
        if client.buf.is_empty() {
            // Nothing of this request yet: the connection is idle, and a
            // drain cancels this read. A new connection waits under its head
            // deadline (408 when it passes), a kept-alive one under
            // idle_timeout (retired quietly). In the empty-buffer state a
            // deadline exists exactly when this is the first request.
            if !shard.draining.get() {
                let limit = match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    None => limits.idle_timeout,
                };
                let read = read_more_cancelable(
                    &mut client.stream,
                    &mut client.buf,
                    shard.idle_cancel_handle(),
                );
                match monoio::time::timeout(limit, read).await {
                    Ok(Ok(n)) if n > 0 => continue,
                    Ok(Ok(_)) => return HeadOutcome::Closed,
                    Ok(Err(_)) if !shard.draining.get() => return HeadOutcome::Closed,
                    // A drain cancelled the read: handled below.
                    Ok(Err(_)) => {}
                    Err(_) if first => return HeadOutcome::Failed(Failure::HeaderTimeout),
                    Err(_) => return HeadOutcome::Retire,
                }
            }
            // Draining. A kept-alive connection is retired; a new one may
            // have been accepted a moment ago with its request on the way,
            // so it gets a short grace (and is answered with Connection:
            // close).
            if !first {
                return HeadOutcome::Retire;
            }
            let remaining = deadline.map_or(limits.header_read_timeout, |d| {
                d.saturating_duration_since(Instant::now())
            });
            match read_more_timed(
                &mut client.stream,
                &mut client.buf,
                HEAD_READ,
                remaining.min(FIRST_REQUEST_GRACE),
            )
            .await
            {
                Ok(_) => {}
                Err(IoFailure::TimedOut) => return HeadOutcome::Retire,
                Err(_) => return HeadOutcome::Closed,
            }
        } else {
            let deadline = deadline.unwrap_or_else(Instant::now);
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return HeadOutcome::Failed(Failure::HeaderTimeout);
            }
            match read_more_timed(&mut client.stream, &mut client.buf, HEAD_READ, remaining).await {
                Ok(_) => {}
                Err(IoFailure::TimedOut) => return HeadOutcome::Failed(Failure::HeaderTimeout),
                Err(_) => return HeadOutcome::Closed,
            }
        }
    }
}

/// Answers one request; returns whether the connection stays open.
async fn handle_request(
    shard: &Rc<Shard>,
    generation: &Generation,
    client: &mut Client,
    head: &RequestHead,
    last_allowed: bool,
    exchange: &mut Exchange,
) -> bool {
    let snapshot: &Snapshot = &generation.snapshot;
    let route_index = {
        let buf = &client.buf[..];
        let facts = HeadFacts {
            buf,
            headers: &client.headers,
            method: head.method_span.get(buf),
        };
        let host = head.host.map_or(&b""[..], |h| h.get(buf));
        snapshot.router.find(host, head.path.get(buf), &facts)
    };
    let has_body = head.framing != BodyFraming::None;
    let Some(route_index) = route_index else {
        // The body was not read, so the connection cannot be reused after it.
        let close = has_body || !head.keep_alive || shard.draining.get();
        client.buf.advance(head.len);
        answer_failure(shard, snapshot, client, Failure::NotFound, close, exchange).await;
        return !close;
    };
    exchange.route = Some(route_index as usize);
    let route = &snapshot.routes[route_index as usize];
    if let BodyFraming::Length(n) = head.framing
        && n > route.max_body_bytes
    {
        answer_failure(
            shard,
            snapshot,
            client,
            Failure::BodyTooLarge,
            true,
            exchange,
        )
        .await;
        return false;
    }
    if !route.rate_limits.is_empty() {
        let mut checked = RateLimitProgress::default();
        loop {
            let last_try = checked.waits >= MAX_LIMIT_WAITS;
            // A reload while this request waited for a grant moved the
            // limiter's state to the new generation: check there, as long
            // as the policy list is the same one (else this generation's
            // policies no longer exist, and its own limiter decides).
            let current = (checked.waits > 0).then(|| shard.generation());
            let limits = match &current {
                Some(c) if c.snapshot.limits_id == generation.snapshot.limits_id => c,
                _ => generation,
            };
            match check_rate_limits(shard, limits, route, client, &mut checked, last_try) {
                Ok(()) => {
                    exchange.ratelimit = checked.tightest;
                    break;
                }
                Err(d) if d.defer && !last_try => {
                    // This worker's part is spent but the node has more:
                    // wait for the aggregator's next grant.
                    checked.waits += 1;
                    monoio::time::sleep(snapshot.rate_limit_sync).await;
                    continue;
                }
                Err(d) => {
                    // The body was not read: close if there was one.
                    let close = has_body || !head.keep_alive || shard.draining.get();
                    client.buf.advance(head.len);
                    let failure = Failure::RateLimited {
                        limit: d.limit,
                        reset: d.reset_secs,
                        retry_after: d.retry_after_secs,
                    };
                    answer_failure(shard, snapshot, client, failure, close, exchange).await;
                    return !close;
                }
            }
        }
    }
    let close_after = !head.keep_alive || last_allowed || shard.draining.get();
    match &route.action {
        RouteAction::Respond {
            status,
            content_type,
            body,
        } => {
            let close = close_after || has_body;
            client.out.clear();
            http::write::status_line(&mut client.out, *status);
            // 204 and 304 carry neither a body nor its headers (a body is
            // refused at load).
            let bodiless = matches!(*status, 204 | 304);
            if !bodiless {
                client.out.put_slice(b"content-type: ");
                client.out.put_slice(content_type);
                client.out.put_slice(b"\r\n");
                http::write::content_length(&mut client.out, body.len() as u64);
            }
            write_route_headers(&mut client.out, route);
            http::write::header(
                &mut client.out,
                b"x-request-id",
                exchange.request_id.as_bytes(),
            );
            if let Some(d) = &exchange.ratelimit {
                crate::ratelimit::write_headers(&mut client.out, d);
            }
            client.out.put_slice(if close {
                &b"connection: close\r\n\r\n"[..]
            } else {
                b"\r\n"
            });
            if head.method != Method::Head && !bodiless {
                client.out.put_slice(body);
            }
            client.buf.advance(head.len);
            exchange.status = *status;
            exchange.sent = client.out.len() as u64;
            let timeout = snapshot.limits.idle_timeout;
            write_all_clear(&mut client.stream, &mut client.out, timeout)
                .await
                .is_ok()
                && !close
        }
        RouteAction::Proxy { upstream } => {
            match proxy::forward(
                shard,
                generation,
                route,
                *upstream,
                client,
                head,
                close_after,
                exchange,
            )
            .await
            {
                ProxyOutcome::Done { keep_client } => keep_client,
                ProxyOutcome::Failed {
                    failure,
                    client_body_consumed,
                } => {
                    let close = close_after || !client_body_consumed || failure.closes_connection();
                    answer_failure(shard, snapshot, client, failure, close, exchange).await;
                    !close
                }
                ProxyOutcome::Aborted => false,
            }
        }
    }
}

/// How many sync intervals a request may wait for a bigger grant of a
/// shared limit (a grant cycle takes about three: report, grant, two
/// intervals until it takes effect; a cluster key adds a Redis round).
const MAX_LIMIT_WAITS: u32 = 20;

/// Where a request is in its route's rate-limit policies.
#[derive(Default)]
struct RateLimitProgress {
    /// Policies already passed (a wait resumes after them, so they are not
    /// charged twice).
    passed: usize,
    waits: u32,
    /// The tightest decision among passed policies that report headers.
    tightest: Option<crate::ratelimit::Decision>,
}

/// Runs the route's rate-limit policies in order, from where `progress`
/// left off. `Err` is the refusing decision (if `defer` is set and this is
/// not the `last_try`, the caller may wait and call again).
fn check_rate_limits(
    shard: &Shard,
    generation: &Generation,
    route: &Route,
    client: &Client,
    progress: &mut RateLimitProgress,
    last_try: bool,
) -> Result<(), crate::ratelimit::Decision> {
    use crate::snapshot::LimitKey;
    let buf = &client.buf[..];
    let now = crate::ratelimit::clock::now();
    let snapshot = &generation.snapshot;
    let mut limiter = generation.limiter.borrow_mut();
    for &index in &route.rate_limits[progress.passed..] {
        let policy = &snapshot.rate_limits[index];
        let key: &[u8] = match &policy.key {
            LimitKey::ClientIp => crate::ratelimit::client_ip_key(
                client.peer.ip(),
                client.peer_ip.as_bytes(),
                &policy.trusted_proxies,
                client
                    .headers
                    .iter()
                    .filter(|h| h.name.get(buf).eq_ignore_ascii_case(b"x-forwarded-for"))
                    .map(|h| h.value.get(buf)),
            ),
            LimitKey::Header(name) => client.header(name).unwrap_or(b""),
            LimitKey::Route => route.name.as_bytes(),
            LimitKey::Global => b"",
        };
        let mut scratch = [0u8; crate::ratelimit::HASHED_KEY_LEN];
        let key = crate::ratelimit::bounded_key(key, &mut scratch);
        let tier = policy.tier_header.as_deref().and_then(|h| client.header(h));
        let decision = limiter.check_again(index, policy, key, tier, now, progress.waits > 0);
        if !decision.allowed {
            if !decision.defer || last_try {
                shard.metrics.rate_limit(index, false);
            }
            return Err(decision);
        }
        shard.metrics.rate_limit(index, true);
        progress.passed += 1;
        if policy.headers
            && progress
                .tightest
                .is_none_or(|t| decision.remaining < t.remaining)
        {
            progress.tightest = Some(decision);
        }
    }
    Ok(())
}

/// Route-level response header edits for direct responses (set and add).
fn write_route_headers(out: &mut BytesMut, route: &Route) {
    for (name, value) in route
        .response_headers
        .set
        .iter()
        .chain(&route.response_headers.add)
    {
        http::write::header(out, name, value);
    }
}

/// During a drain, how long a new connection that has sent nothing yet may
/// take to send its first request.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long, and how many bytes, a closing connection is drained for.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes after an answer that said `Connection: close` (RFC 9112 §9.6):
/// half-close, then read and discard what the client still sends for a
/// moment. Closing with unread bytes makes the kernel send a reset, which
/// can destroy the answer before the client reads it (a 413 whose body was
/// never read, a 400 followed by pipelined requests).
async fn linger_close(mut client: Client) {
    use monoio::io::AsyncWriteRent;
    if client.stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        client.buf.clear();
        let remaining = deadline.saturating_duration_since(Instant::now());
        match read_more_timed(&mut client.stream, &mut client.buf, HEAD_READ, remaining).await {
            Ok(n) if !remaining.is_zero() => drained += n,
            _ => return,
        }
    }
}

/// Writes a failure answer, counting it. The request's bytes are discarded.
pub async fn answer_failure(
    shard: &Shard,
    snapshot: &Snapshot,
    client: &mut Client,
    failure: Failure,
    close: bool,
    exchange: &mut Exchange,
) {
    shard.metrics.failure(failure);
    exchange.status = failure.status();
    tracing::debug!(worker = shard.id, peer = %client.peer, code = failure.code(), "request failed");
    client.out.clear();
    failure.write_response(&mut client.out, close, exchange.request_id.as_bytes());
    exchange.sent += client.out.len() as u64;
    let _ = write_all_clear(
        &mut client.stream,
        &mut client.out,
        snapshot.limits.idle_timeout,
    )
    .await;
}
