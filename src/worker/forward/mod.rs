//! [hot] The `forward` action: one request to an upstream and its response
//! back, in four named steps: pick an endpoint, stage the request head (and
//! a small body already in hand), send it and read the response head (with
//! the one safe retry), then relay the response.
//!
//! The retry rule: a request that met a *pooled* connection which turns out
//! to be closed (the write fails, or the upstream closes before sending a
//! single response byte) is retried once on a fresh connection, provided the
//! whole request is still in hand (no streamed body) and either nothing could
//! have reached the upstream (the write failed) or the method is idempotent.

mod relay;
mod request_head;
mod response_head;
mod upstream;

use std::time::Instant;

use bytes::Buf;

use crate::failure::Failure;
use crate::http::{BodyFraming, RequestHead, ResponseFraming, ResponseHead, Version};
use crate::snapshot::{Route, Snapshot, UpstreamSpec};
use crate::upstream::UpstreamConn;

use super::client::{Client, Exchange};
use super::phase::RequestCtx;
use super::shard::{Generation, Shard};
use crate::transport::{IoFailure, write_all_keep};
use relay::{Relay, send_request_body};
pub(in crate::worker) use request_head::build_request_head;
pub(in crate::worker) use response_head::withheld_from;
use response_head::{HeadError, OutFraming, build_response_head, read_response_head};
pub(in crate::worker) use upstream::{acquire, consistent_hash_key, pick_endpoint};

/// Request bodies up to this size that already sit in the read buffer are
/// sent with the head in one write, and can be replayed on a safe retry.
const INLINE_BODY_MAX: u64 = 64 * 1024;

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
    /// The upstream answered 5xx and the cache holds a stale answer that
    /// stale-if-error lets stand in: nothing was sent to the client.
    ServerError,
    /// The upstream confirmed the cache's stale answer (304 to its
    /// revalidation): nothing was sent to the client.
    NotModified(crate::worker::phase::cache::Freshening),
}

impl ProxyOutcome {
    fn failed(failure: Failure, client_body_consumed: bool) -> ProxyOutcome {
        ProxyOutcome::Failed {
            failure,
            client_body_consumed,
        }
    }
}

/// What every step of one forward reads: the request, and the endpoint
/// chosen for it.
struct Trip<'a> {
    shard: &'a Shard,
    generation: &'a Generation,
    route: &'a Route,
    head: &'a RequestHead,
    spec: &'a UpstreamSpec,
    upstream: usize,
    endpoint: usize,
}

/// A response head read from the upstream, and the connection it came on.
struct Answered {
    conn: UpstreamConn,
    response: ResponseHead,
    /// When the request was (last) written upstream.
    sent_at: Instant,
}

/// Forwards the request to upstream `upstream` and relays the answer;
/// with `fill` (a cached route's miss), stores it if the rules allow.
pub async fn forward(
    ctx: &RequestCtx<'_>,
    upstream: usize,
    client: &mut Client,
    close_after: bool,
    exchange: &mut Exchange,
    fill: Option<&crate::worker::phase::cache::Fill>,
) -> ProxyOutcome {
    let spec = &ctx.snapshot().upstreams[upstream];
    let (endpoint, _in_flight) = match pick_endpoint(
        ctx.generation,
        spec,
        upstream,
        consistent_hash_key(spec, client),
    ) {
        Ok(picked) => picked,
        // Nothing was read of a body: the connection closes if it has one.
        Err(failure) => {
            return ProxyOutcome::failed(failure, ctx.head.framing == BodyFraming::None);
        }
    };
    let trip = Trip {
        shard: ctx.shard,
        generation: ctx.generation,
        route: ctx.route,
        head: ctx.head,
        spec,
        upstream,
        endpoint,
    };
    let body_in_hand =
        trip.stage_request(client, exchange, fill.and_then(|f| f.revalidate.as_ref()));
    let answered = match trip
        .send_and_await_head(client, body_in_hand, exchange)
        .await
    {
        Ok(answered) => answered,
        Err(outcome) => return outcome,
    };
    trip.relay_response(answered, client, close_after, exchange, fill)
        .await
}

impl Trip<'_> {
    fn snapshot(&self) -> &Snapshot {
        &self.generation.snapshot
    }

    /// Writes the upstream request head into the client's output buffer,
    /// consumes the client's head, and appends a small body that has
    /// already arrived (so head and body go in one write, and can be
    /// replayed). Returns whether the whole request is now in hand.
    fn stage_request(
        &self,
        client: &mut Client,
        exchange: &mut Exchange,
        revalidation: Option<&crate::worker::phase::cache::Revalidation>,
    ) -> bool {
        let mut out = std::mem::take(&mut client.out);
        out.clear();
        request_head::build_request_head(
            &mut out,
            client,
            self.head,
            self.route,
            &self.spec.endpoints[self.endpoint],
            exchange,
            self.snapshot(),
            revalidation,
        );
        client.out = out;
        client.buf.advance(self.head.len);
        match self.head.framing {
            BodyFraming::None => true,
            BodyFraming::Length(n) if n <= INLINE_BODY_MAX && client.buf.len() as u64 >= n => {
                let n = n as usize;
                client.out.extend_from_slice(&client.buf[..n]);
                client.buf.advance(n);
                exchange.received += n as u64;
                true
            }
            _ => false,
        }
    }

    /// Sends the staged request (and streams a body not in hand), then
    /// reads the final response head; retries once per the module's rule.
    async fn send_and_await_head(
        &self,
        client: &mut Client,
        body_in_hand: bool,
        exchange: &mut Exchange,
    ) -> Result<Answered, ProxyOutcome> {
        let write_timeout = self.snapshot().limits.idle_timeout;
        let mut attempt = 0;
        loop {
            let (mut conn, reused) = acquire(
                self.shard,
                self.generation,
                self.spec,
                self.upstream,
                self.endpoint,
                attempt == 0,
            )
            .await
            .map_err(|failure| ProxyOutcome::failed(failure, body_in_hand))?;
            let may_retry = reused && attempt == 0 && body_in_hand;
            let sent_at = Instant::now();
            match write_all_keep(&mut conn.stream, &mut client.out, write_timeout).await {
                Ok(()) => {}
                Err(IoFailure::TimedOut) => {
                    return Err(ProxyOutcome::failed(Failure::UpstreamTimeout, body_in_hand));
                }
                Err(_) if may_retry => {
                    attempt += 1;
                    self.shard.metrics.retry();
                    continue;
                }
                Err(_) => {
                    return Err(ProxyOutcome::failed(Failure::UpstreamReset, body_in_hand));
                }
            }
            if !body_in_hand {
                // The request cannot be replayed, so its bytes need not be kept.
                client.out.clear();
                match send_request_body(self.snapshot(), self.route, client, &mut conn, self.head)
                    .await
                {
                    Ok(moved) => exchange.received += moved,
                    Err(failure) => return Err(ProxyOutcome::failed(failure, false)),
                }
            }
            match read_response_head(&mut conn, client, self.head, self.spec, self.snapshot()).await
            {
                Ok(response) => {
                    return Ok(Answered {
                        conn,
                        response,
                        sent_at,
                    });
                }
                Err(HeadError::ClosedBeforeResponse)
                    if may_retry && self.head.method.is_idempotent() =>
                {
                    attempt += 1;
                    self.shard.metrics.retry();
                    tracing::debug!(worker = self.shard.id, upstream = %self.spec.name, "stale pooled connection; retrying once");
                }
                Err(e) => return Err(ProxyOutcome::failed(e.failure(), true)),
            }
        }
    }

    /// Writes the client's response head and relays the body; a connection
    /// that ended cleanly goes back to the pool.
    async fn relay_response(
        &self,
        answered: Answered,
        client: &mut Client,
        close_after: bool,
        exchange: &mut Exchange,
        fill: Option<&crate::worker::phase::cache::Fill>,
    ) -> ProxyOutcome {
        let Answered {
            mut conn,
            response,
            sent_at,
        } = answered;
        let client_http10 = self.head.version == Version::Http10;
        let (out_framing, close_for_framing) = match response.framing {
            ResponseFraming::None => (OutFraming::None, false),
            ResponseFraming::Length(n) => (OutFraming::Length(n), false),
            ResponseFraming::Chunked | ResponseFraming::UntilClose if client_http10 => {
                (OutFraming::Raw, true)
            }
            ResponseFraming::Chunked | ResponseFraming::UntilClose => (OutFraming::Chunked, false),
        };
        let close = close_after || close_for_framing || self.shard.draining.get();
        if response.status == 304
            && let Some(fill) = fill.filter(|f| f.revalidate.is_some())
        {
            let fresh = crate::worker::phase::cache::Freshening::of(
                &conn.buf,
                &conn.headers,
                fill.request_time,
                crate::worker::phase::cache::unix_now(),
            );
            conn.buf.advance(response.len);
            if response.keep_alive && conn.buf.is_empty() && !self.shard.draining.get() {
                self.generation.upstreams.borrow_mut()[self.upstream].pools[self.endpoint]
                    .checkin(conn, Instant::now());
            }
            return ProxyOutcome::NotModified(fresh);
        }
        if response.status >= 500 && fill.is_some_and(|f| f.fallback.is_some()) {
            // The upstream connection is dropped with its unread answer.
            return ProxyOutcome::ServerError;
        }
        let mut capture = match (fill, &self.route.cache) {
            (Some(fill), Some(rc)) => crate::worker::phase::cache::plan_capture(
                rc,
                fill,
                response.status,
                &conn.buf,
                &conn.headers,
                match response.framing {
                    ResponseFraming::Length(n) => Some(n),
                    _ => None,
                },
                |name| response_head::withheld(&conn, &response, self.route, name),
                crate::worker::phase::cache::unix_now(),
            ),
            _ => None,
        };
        if capture.is_none()
            && let Some(fill) = fill
        {
            // Not stored: requests waiting for this fetch fetch for
            // themselves, now rather than after the body.
            fill.release();
        }
        let cache_status = match fill {
            Some(_) => crate::worker::phase::cache::miss_status(capture.is_some()),
            None => &b""[..],
        };
        client.out.clear();
        build_response_head(
            &mut client.out,
            &conn,
            &response,
            self.head,
            self.route,
            out_framing,
            close,
            exchange.request_id.as_bytes(),
            exchange.ratelimit.as_ref(),
            cache_status,
        );
        exchange.status = response.status;
        exchange.sent += client.out.len() as u64;
        let upstream_us = sent_at.elapsed().as_micros() as u64;
        self.shard.metrics.upstream_latency(upstream_us);
        exchange.upstream_us = Some(upstream_us);
        exchange.upstream = Some(self.spec.endpoints[self.endpoint].addr);
        conn.buf.advance(response.len);

        let mut relay = Relay {
            src: &mut conn.stream,
            src_buf: &mut conn.buf,
            dst: &mut client.stream,
            out: &mut client.out,
            iov: &mut client.iov,
            read_timeout: self.spec.response_timeout,
            deadline: None,
            write_timeout: self.snapshot().limits.idle_timeout,
            moved: 0,
            capture: capture.as_deref_mut(),
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
        if let Some(capture) = capture {
            capture.store(self.shard);
        }
        if let Some(fill) = fill {
            fill.release();
        }
        let reusable = response.keep_alive && conn.buf.is_empty() && !self.shard.draining.get();
        if reusable {
            self.generation.upstreams.borrow_mut()[self.upstream].pools[self.endpoint]
                .checkin(conn, Instant::now());
        }
        ProxyOutcome::Done {
            keep_client: !close,
        }
    }
}
