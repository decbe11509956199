//! [hot] One client connection: read a head, run the request through the
//! phases (`phase`), answer it (directly or through `forward`), repeat
//! while keep-alive allows. Requests on a connection are handled strictly
//! in order, so pipelined requests are answered in order.
//!
//! `handle_request` is the one place that runs the phases, in the order
//! DESIGN.md gives; every failure is turned into the client's answer by
//! `failure::Failure`.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;

use crate::failure::Failure;
use crate::http::{BodyFraming, RequestHead, parse_request};
use crate::snapshot::{RouteAction, Snapshot};
use crate::tls::listener::ListenerTls;
use crate::transport::Transport;

use super::client::{Client, Exchange, PeerIp};
use super::forward::{self, ProxyOutcome};
use super::phase::{self, RequestCtx, decide};
use super::request_id::RequestId;
use super::shard::{ConnectionGuard, Generation, Shard};
use crate::transport::{
    HEAD_READ, IoFailure, read_more_cancelable, read_more_timed, write_all_clear,
};

/// Initial capacity of a connection's read buffer. It lives as long as the
/// connection, idle or not, so it starts small and grows only if a request
/// needs more (it then keeps its size: no allocation per request).
const INITIAL_READ_BUFFER: usize = 2 * 1024;

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
pub async fn serve(
    shard: Rc<Shard>,
    socket: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    tls: Option<Arc<ListenerTls>>,
) {
    let _guard = ConnectionGuard::new(shard.clone());
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    let (stream, tls) = match tls {
        None => (Transport::Plain(socket), None),
        // Boxed: a handshake's state (rustls's connection, the acceptor) is
        // large, and inline it would size every connection's task, plain
        // ones included, for as long as the connection lives.
        Some(listener) => {
            match Box::pin(super::tls::handshake(
                &shard, socket, peer, listener, &mut buf,
            ))
            .await
            {
                Some((stream, facts)) => (stream, Some(Box::new(facts))),
                None => return,
            }
        }
    };
    let mut client = Client {
        stream,
        peer,
        listener,
        peer_ip: PeerIp::new(&peer),
        buf,
        // Lent from the worker's pool for each exchange (see BufferPool).
        out: BytesMut::new(),
        headers: Vec::with_capacity(32),
        iov: None,
        tls,
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
                // Refused heads are logged too.
                phase::log::record_refused(&shard, &client, &exchange);
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
            .map(|_| phase::log::LoggedTarget::capture(&client.buf, &head));
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
        phase::log::record(
            &shard,
            snapshot,
            &client,
            &exchange,
            logged.as_ref(),
            method,
            started,
        );
        if !keep || shard.draining.get() {
            linger_close(client).await;
            return;
        }
    }
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
                    return match phase::normalize::normalize_target(
                        &mut client.buf,
                        head,
                        limits.normalize_path,
                    ) {
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

/// Runs one request through the phases; returns whether the connection
/// stays open.
async fn handle_request(
    shard: &Rc<Shard>,
    generation: &Rc<Generation>,
    client: &mut Client,
    head: &RequestHead,
    last_allowed: bool,
    exchange: &mut Exchange,
) -> bool {
    let snapshot: &Snapshot = &generation.snapshot;
    if let Some(failure) = decide(|| phase::tls_host::check(&client.view(), head)).await {
        return refuse(shard, snapshot, client, head, failure, exchange).await;
    }
    if let Some(rule) = phase::ip_access::listener_rule(snapshot, client.listener)
        && let Some(refusal) = phase::ip_access::check(shard, snapshot, rule, &client.view())
    {
        return refuse_ip(shard, snapshot, client, head, refusal, exchange).await;
    }
    let Some(route_index) = phase::route::find(snapshot, &client.view(), head) else {
        if let Some(policy) = snapshot.no_route_cors {
            let view = client.view();
            phase::cors::judge(shard, snapshot, policy, head, &view, exchange, false);
        }
        return refuse(shard, snapshot, client, head, Failure::NotFound, exchange).await;
    };
    exchange.route = Some(route_index);
    let route = &snapshot.routes[route_index];
    let cors = match route.cors {
        Some(policy) => {
            let view = client.view();
            phase::cors::judge(shard, snapshot, policy, head, &view, exchange, true)
        }
        None => phase::cors::Step::Continue,
    };
    if let Some(rule) = route.ip_rule
        && let Some(refusal) = phase::ip_access::check(shard, snapshot, rule, &client.view())
    {
        return refuse_ip(shard, snapshot, client, head, refusal, exchange).await;
    }
    let ctx = RequestCtx {
        shard,
        generation,
        head,
        route,
    };
    let close_after = !head.keep_alive || last_allowed || shard.draining.get();
    match cors {
        phase::cors::Step::Continue => {}
        phase::cors::Step::AnswerPreflight => {
            return phase::cors::answer_preflight(&ctx, client, close_after, exchange).await;
        }
        phase::cors::Step::Refuse => {
            return refuse(
                shard,
                snapshot,
                client,
                head,
                Failure::CorsRefused,
                exchange,
            )
            .await;
        }
    }
    if let Some(port) = phase::https_redirect::applies(&ctx, client) {
        return phase::https_redirect::redirect(&ctx, port, client, close_after, exchange).await;
    }
    exchange.identity =
        match phase::auth::check(shard, generation, route, &client.view(), head, unix_now).await {
            Ok(identity) => identity,
            Err(failure) => return refuse(shard, snapshot, client, head, failure, exchange).await,
        };
    if let Some(failure) = decide(|| phase::route::check_body_size(route, head)).await {
        return refuse(shard, snapshot, client, head, failure, exchange).await;
    }
    let mut limits = phase::ratelimit::Progress::default();
    let mut request = client.view();
    request.consumer = exchange
        .identity
        .as_ref()
        .and_then(|id| id.consumer(&snapshot.auth));
    if let Some(failure) =
        decide(|| phase::ratelimit::check(shard, generation, route, &request, &mut limits)).await
    {
        return refuse(shard, snapshot, client, head, failure, exchange).await;
    }
    exchange.ratelimit = limits.tightest();

    match &route.action {
        RouteAction::Respond {
            status,
            content_type,
            body,
        } => {
            let answer = phase::respond::DirectResponse {
                status: *status,
                content_type,
                body,
            };
            // A body is not read: the connection cannot be reused after it.
            let close = close_after || head.framing != BodyFraming::None;
            phase::respond::respond(&ctx, answer, client, close, exchange).await
        }
        RouteAction::Aggregate(policy) => {
            super::aggregate::answer(&ctx, policy, client, close_after, exchange).await
        }
        RouteAction::Proxy { upstream } => {
            exchange.upgrade = super::tunnel::asked(route, head, &client.view());
            let view = client.view();
            exchange.encoding = route
                .compress
                .as_ref()
                .and_then(|c| c.negotiate(|| view.values(b"accept-encoding")));
            let mut waited = false;
            let fill = loop {
                // An upgrade is never answered from, or stored in, the cache.
                let Some(rc) = route.cache.as_ref().filter(|_| !exchange.upgrade) else {
                    break None;
                };
                break match phase::cache::lookup(
                    shard,
                    rc,
                    &route.name,
                    &request,
                    head,
                    unix_now(),
                    !waited,
                ) {
                    phase::cache::Decision::Hit(hit) => {
                        return phase::cache::serve(&ctx, hit, client, close_after, exchange, true)
                            .await;
                    }
                    phase::cache::Decision::Stale { hit, refresh } => {
                        if let Some(fill) = refresh {
                            super::cache_refresh::start(&ctx, *upstream, client, exchange, fill);
                        }
                        return phase::cache::serve(&ctx, hit, client, close_after, exchange, true)
                            .await;
                    }
                    phase::cache::Decision::Miss(fill) => {
                        shard.metrics.cache(crate::metrics::CACHE_MISS);
                        Some(fill)
                    }
                    phase::cache::Decision::Bypass => {
                        shard.metrics.cache(crate::metrics::CACHE_BYPASS);
                        None
                    }
                    phase::cache::Decision::Wait(wait) => {
                        // Coalescing: another request fetches this key;
                        // look again once it is stored (or not), at
                        // most one fetch's worth of waiting.
                        shard.metrics.cache(crate::metrics::CACHE_COALESCED);
                        let spec = &snapshot.upstreams[*upstream];
                        let budget = spec.connect_timeout + spec.response_timeout;
                        let _ = monoio::time::timeout(budget, wait.done()).await;
                        waited = true;
                        continue;
                    }
                };
            };
            let mut fill = fill;
            let outcome = forward::forward(
                &ctx,
                *upstream,
                client,
                close_after,
                exchange,
                fill.as_deref(),
            )
            .await;
            if fill.as_ref().is_some_and(|f| f.revalidate.is_some()) {
                use crate::metrics::Revalidated;
                shard.metrics.cache_revalidation(
                    false,
                    match &outcome {
                        ProxyOutcome::NotModified(_) => Revalidated::NotModified,
                        ProxyOutcome::Done { .. } => Revalidated::Modified,
                        _ => Revalidated::Failed,
                    },
                );
            }
            match outcome {
                ProxyOutcome::Done { keep_client } => keep_client,
                ProxyOutcome::Failed {
                    failure,
                    client_body_consumed,
                } => {
                    // stale-if-error: a stale stored answer instead of the failure.
                    if let Some(stale) = fill.as_mut().and_then(|f| f.take_fallback()) {
                        let close = close_after || !client_body_consumed;
                        return phase::cache::serve(&ctx, stale, client, close, exchange, false)
                            .await;
                    }
                    let close = close_after || !client_body_consumed || failure.closes_connection();
                    answer_failure(shard, snapshot, client, failure, close, exchange).await;
                    !close
                }
                ProxyOutcome::ServerError => match fill.as_mut().and_then(|f| f.take_fallback()) {
                    Some(stale) => {
                        phase::cache::serve(&ctx, stale, client, close_after, exchange, false).await
                    }
                    None => false,
                },
                ProxyOutcome::NotModified(fresh) => {
                    let hit = fill.as_ref().and_then(|f| {
                        let hit = f.freshen(shard, fresh);
                        f.release();
                        hit
                    });
                    match hit {
                        Some(hit) => {
                            phase::cache::serve(&ctx, hit, client, close_after, exchange, false)
                                .await
                        }
                        // Evicted while it was being revalidated: nothing
                        // to answer with; the client retries.
                        None => {
                            answer_failure(
                                shard,
                                snapshot,
                                client,
                                Failure::UpstreamMalformed("304 for an evicted cache entry"),
                                true,
                                exchange,
                            )
                            .await;
                            false
                        }
                    }
                }
                ProxyOutcome::Aborted => false,
            }
        }
    }
}

/// Wall-clock Unix seconds (token lifetimes are wall-clock claims).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Answers a request a phase refused before its body was read (so the
/// connection closes if there is one); returns whether it stays open.
async fn refuse(
    shard: &Shard,
    snapshot: &Snapshot,
    client: &mut Client,
    head: &RequestHead,
    failure: Failure,
    exchange: &mut Exchange,
) -> bool {
    let close = head.framing != BodyFraming::None
        || !head.keep_alive
        || shard.draining.get()
        || failure.closes_connection();
    client.buf.advance(head.len);
    answer_failure(shard, snapshot, client, failure, close, exchange).await;
    !close
}

/// Refuses a request an IP rule does not admit: a 403, or the connection
/// closed without an answer.
async fn refuse_ip(
    shard: &Shard,
    snapshot: &Snapshot,
    client: &mut Client,
    head: &RequestHead,
    refusal: crate::policy::ip_access::Refusal,
    exchange: &mut Exchange,
) -> bool {
    match refusal {
        crate::policy::ip_access::Refusal::Forbid => {
            refuse(
                shard,
                snapshot,
                client,
                head,
                Failure::IpForbidden,
                exchange,
            )
            .await
        }
        crate::policy::ip_access::Refusal::Close => {
            shard.metrics.failure(Failure::IpForbidden);
            client.buf.advance(head.len);
            false
        }
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
    if client.stream.shutdown(LINGER_TIME).await.is_err() {
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
    failure.write_response_with(
        &mut client.out,
        close,
        exchange.request_id.as_bytes(),
        |out| phase::response_headers::write_cors(out, snapshot, exchange),
    );
    exchange.sent += client.out.len() as u64;
    let _ = write_all_clear(
        &mut client.stream,
        &mut client.out,
        snapshot.limits.idle_timeout,
    )
    .await;
}
