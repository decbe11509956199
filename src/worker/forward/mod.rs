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

mod admission;
mod relay;
mod request_head;
mod response_head;
mod upstream;

use std::time::Instant;

use bytes::{Buf, BytesMut};

use crate::failure::Failure;
use crate::http::{BodyFraming, Method, RequestHead, ResponseFraming, ResponseHead, Version};
use crate::snapshot::{Route, Snapshot, UpstreamSpec};
use crate::upstream::UpstreamConn;
use crate::upstream::outlier::Outcome;
use crate::upstream::retry::TryFailure;

use super::client::{Client, Exchange};
use super::phase::RequestCtx;
use super::shard::{Generation, Shard};
use crate::transport::{IoFailure, write_all_keep};
use relay::{Relay, send_request_body};
pub(in crate::worker) use request_head::build_request_head;
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

/// The request as staged for one try: how much of the client's buffer it
/// takes (head, and a body in hand), consumed once, when the exchange is
/// settled, so a retry can stage it again for another endpoint.
struct Staged {
    /// Bytes of `client.buf` still to consume (0 once consumed).
    unconsumed: usize,
    /// Body bytes in `unconsumed`.
    body: u64,
    /// The whole request is in `client.out` and can be sent again.
    in_hand: bool,
}

impl Staged {
    fn consume(&mut self, client: &mut Client, exchange: &mut Exchange) {
        if self.unconsumed > 0 {
            client.buf.advance(self.unconsumed.min(client.buf.len()));
            exchange.received += self.body;
            self.unconsumed = 0;
            self.body = 0;
        }
    }
}

/// A try that got no usable response head.
struct TryFailed {
    failure: Failure,
    /// What a retry policy would call it; `None`: never retried (the
    /// request or part of the answer is gone).
    kind: Option<TryFailure>,
    /// The request body was read to its end.
    body_consumed: bool,
}

impl TryFailed {
    fn final_(failure: Failure, body_consumed: bool) -> TryFailed {
        TryFailed {
            failure,
            kind: None,
            body_consumed,
        }
    }
}

/// Forwards the request to upstream `upstream` and relays the answer;
/// with `fill` (a cached route's miss), stores it if the rules allow.
/// A route's retry policy tries again, on another endpoint where there
/// is one, until a try answers or the policy, its deadline or the
/// upstream's retry budget says stop; nothing of the answer has reached
/// the client before then.
pub async fn forward(
    ctx: &RequestCtx<'_>,
    upstream: usize,
    client: &mut Client,
    close_after: bool,
    exchange: &mut Exchange,
    fill: Option<&crate::worker::phase::cache::Fill>,
) -> ProxyOutcome {
    let spec = &ctx.snapshot().upstreams[upstream];
    let policy = ctx.route.retry.as_deref();
    let _admitted = match admission::admit(ctx, spec, upstream, &client.stream).await {
        Ok(place) => place,
        Err(refused) => {
            client.buf.advance(ctx.head.len.min(client.buf.len()));
            return match refused {
                admission::Refused::Failure(failure) => {
                    ProxyOutcome::failed(failure, ctx.head.framing == BodyFraming::None)
                }
                admission::Refused::ClientGone => ProxyOutcome::Aborted,
            };
        }
    };
    let key_hash = consistent_hash_key(spec, client);
    if let Some(policy) = policy
        && let Err(failure) = keep_body_for_replay(ctx, client, policy.max_body).await
    {
        client.buf.advance(ctx.head.len.min(client.buf.len()));
        return ProxyOutcome::failed(failure, false);
    }
    // Read the clock only for a route with a deadline.
    let deadline = policy.and_then(|p| p.deadline).map(|d| Instant::now() + d);
    let idempotent = ctx.head.method.is_idempotent();
    let mut avoid = 0u64;
    let mut tries = 0u32;
    let mut staged: Option<Staged> = None;
    let mut last_failure: Option<TryFailed> = None;
    // A place among the retries under way, once this request retries.
    let mut retrying: Option<Option<admission::RetryPlace<'_>>> = None;
    loop {
        tries += 1;
        let (endpoint, in_flight) =
            match pick_endpoint(ctx.generation, spec, upstream, key_hash, avoid) {
                Ok(picked) => picked,
                Err(failure) => {
                    let failed = last_failure.unwrap_or(TryFailed::final_(
                        failure,
                        ctx.head.framing == BodyFraming::None,
                    ));
                    return settle_failed(client, exchange, staged, ctx.head, failed);
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
        let mut this =
            trip.stage_request(client, exchange, fill.and_then(|f| f.revalidate.as_ref()));
        if !this.in_hand {
            // Streamed: the head goes now and the body follows it.
            this.consume(client, exchange);
        }
        let staged_now = staged.insert(this);
        let try_deadline = match (policy.and_then(|p| p.per_try_timeout), deadline) {
            (Some(per_try), Some(d)) => Some((Instant::now() + per_try).min(d)),
            (Some(per_try), None) => Some(Instant::now() + per_try),
            (None, d) => d,
        };
        let result = trip
            .send_and_await_head(client, staged_now, exchange, try_deadline)
            .await;
        let kind = match &result {
            Ok(answered) => Some(TryFailure::Status(answered.response.status)),
            Err(failed) => failed.kind,
        };
        // What the endpoint did, for outlier detection (a client that
        // went away says nothing about it).
        let outcome = match &result {
            Ok(answered) => Some(Outcome::Status(answered.response.status)),
            Err(failed) => failed.failure.is_upstream_fault().then_some(Outcome::Local),
        };
        if let Some(outcome) = outcome {
            let urgent = {
                let mut ups = ctx.generation.upstreams.borrow_mut();
                let window = &mut ups[upstream].outcomes[endpoint];
                window.record(outcome);
                spec.outlier_detection
                    .as_ref()
                    .is_some_and(|rules| window.streak_reached(rules))
            };
            if urgent {
                ctx.shard.report_outcomes();
            }
        }
        let retry_policy = policy.filter(|p| {
            tries < p.attempts
                && staged_now.in_hand
                && kind.is_some_and(|k| p.wants(k, idempotent))
                && deadline.is_none_or(|d| Instant::now() < d)
        });
        let retry_policy = retry_policy.filter(|_| {
            if retrying.is_none() {
                retrying = admission::retry_place(ctx, spec, upstream);
            }
            retrying.is_some()
        });
        let retry_policy = retry_policy.filter(|_| {
            let granted = ctx.generation.upstreams.borrow_mut()[upstream]
                .retry_budget
                .withdraw();
            ctx.shard.metrics.policy_retry(upstream, endpoint, granted);
            if !granted {
                tracing::debug!(worker = ctx.shard.id, upstream = %spec.name, "retry budget exhausted");
            }
            granted
        });
        let Some(policy) = retry_policy else {
            match result {
                Ok(answered) => {
                    staged_now.consume(client, exchange);
                    return trip
                        .relay_response(answered, client, close_after, exchange, fill)
                        .await;
                }
                Err(failed) => return settle_failed(client, exchange, staged, ctx.head, failed),
            }
        };
        // The failed try's connection (and any answer on it) is dropped.
        if let Err(failed) = result {
            last_failure = Some(failed);
        }
        // (Past 64 endpoints the last bit stands for the rest.)
        avoid |= 1u64 << endpoint.min(63);
        drop(in_flight);
        // The first retry goes at once if another endpoint is there to
        // take it (what failed was that endpoint); later retries, and any
        // back to an endpoint already tried, wait their backoff.
        let (random, fresh_endpoint_left) = {
            let mut ups = ctx.generation.upstreams.borrow_mut();
            let state = &mut ups[upstream];
            let left = (0..spec.endpoints.len())
                .any(|i| !state.down[i] && avoid & (1u64 << i.min(63)) == 0);
            (state.balancer.random(), left)
        };
        let mut wait = if tries == 1 && fresh_endpoint_left {
            std::time::Duration::ZERO
        } else {
            policy.backoff(tries, random)
        };
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
        tracing::debug!(worker = ctx.shard.id, upstream = %spec.name, try_ = tries + 1, "retrying on another endpoint");
    }
}

/// The answer for a request whose last try failed: its bytes consumed,
/// and whether its connection may go on.
fn settle_failed(
    client: &mut Client,
    exchange: &mut Exchange,
    staged: Option<Staged>,
    head: &RequestHead,
    failed: TryFailed,
) -> ProxyOutcome {
    match staged {
        Some(mut staged) => staged.consume(client, exchange),
        // Never staged: the head is still in the buffer.
        None => client.buf.advance(head.len.min(client.buf.len())),
    }
    ProxyOutcome::failed(failed.failure, failed.body_consumed)
}

/// Reads the rest of a body of known length up to `max` bytes into the
/// client's buffer, so that it can be replayed on a retry. Longer bodies,
/// and bodies of unknown length, stream as usual and are not retried.
async fn keep_body_for_replay(
    ctx: &RequestCtx<'_>,
    client: &mut Client,
    max: u64,
) -> Result<(), Failure> {
    let BodyFraming::Length(n) = ctx.head.framing else {
        return Ok(());
    };
    if n > max || ctx.head.expect_continue {
        return Ok(());
    }
    let want = ctx.head.len + n as usize;
    let limits = &ctx.snapshot().limits;
    let deadline = Instant::now() + limits.body_timeout;
    while client.buf.len() < want {
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .min(limits.body_read_timeout);
        if remaining.is_zero() {
            return Err(Failure::BadRequestBody("request body timed out"));
        }
        let need = want - client.buf.len();
        match crate::transport::read_more_timed(
            &mut client.stream,
            &mut client.buf,
            need,
            remaining,
        )
        .await
        {
            Ok(_) => {}
            Err(IoFailure::TimedOut) => {
                return Err(Failure::BadRequestBody("request body timed out"));
            }
            Err(_) => return Err(Failure::BadRequestBody("client went away")),
        }
    }
    Ok(())
}

impl Trip<'_> {
    fn snapshot(&self) -> &Snapshot {
        &self.generation.snapshot
    }

    /// Writes the upstream request head into the client's output buffer,
    /// and after it a body that has fully arrived if it is small (so head
    /// and body go in one write, and can be replayed). The client's buffer
    /// is not consumed: the returned `Staged` says how much to consume.
    fn stage_request(
        &self,
        client: &mut Client,
        exchange: &Exchange,
        revalidation: Option<&crate::worker::phase::cache::Revalidation>,
    ) -> Staged {
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
        let after_head = client.buf.len().saturating_sub(self.head.len) as u64;
        let (body, in_hand) = match self.head.framing {
            BodyFraming::None => (0, true),
            BodyFraming::Length(n)
                if after_head >= n && (n <= INLINE_BODY_MAX || self.route.retry.is_some()) =>
            {
                let at = self.head.len;
                client
                    .out
                    .extend_from_slice(&client.buf[at..at + n as usize]);
                (n, true)
            }
            _ => (0, false),
        };
        Staged {
            unconsumed: self.head.len + body as usize,
            body,
            in_hand,
        }
    }

    /// Sends the staged request (and streams a body not in hand), then
    /// reads the final response head before `deadline` (if given);
    /// retries a stale pooled connection once per the module's rule.
    async fn send_and_await_head(
        &self,
        client: &mut Client,
        staged: &mut Staged,
        exchange: &mut Exchange,
        deadline: Option<Instant>,
    ) -> Result<Answered, TryFailed> {
        let body_in_hand = staged.in_hand;
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
                deadline,
            )
            .await
            .map_err(|failure| TryFailed {
                failure,
                kind: Some(TryFailure::Connect),
                body_consumed: body_in_hand,
            })?;
            let may_retry = reused && attempt == 0 && body_in_hand;
            let sent_at = Instant::now();
            match write_all_keep(&mut conn.stream, &mut client.out, write_timeout).await {
                Ok(()) => {}
                Err(IoFailure::TimedOut) => {
                    return Err(TryFailed {
                        failure: Failure::UpstreamTimeout,
                        kind: Some(TryFailure::Timeout),
                        body_consumed: body_in_hand,
                    });
                }
                Err(_) if may_retry => {
                    attempt += 1;
                    self.shard.metrics.retry();
                    continue;
                }
                Err(_) => {
                    return Err(TryFailed {
                        failure: Failure::UpstreamReset,
                        kind: Some(TryFailure::Reset),
                        body_consumed: body_in_hand,
                    });
                }
            }
            if !body_in_hand {
                // The request cannot be replayed, so its bytes need not be kept.
                client.out.clear();
                match send_request_body(self.snapshot(), self.route, client, &mut conn, self.head)
                    .await
                {
                    Ok(moved) => exchange.received += moved,
                    Err(failure) => return Err(TryFailed::final_(failure, false)),
                }
            }
            let mut interim_forwarded = false;
            let read = read_response_head(
                &mut conn,
                client,
                self.head,
                self.spec,
                self.snapshot(),
                deadline,
                exchange.upgrade,
                &mut interim_forwarded,
            )
            .await;
            match read {
                Ok(response) => {
                    return Ok(Answered {
                        conn,
                        response,
                        sent_at,
                    });
                }
                Err(HeadError::ClosedBeforeResponse)
                    if may_retry && self.head.method.is_idempotent() && !interim_forwarded =>
                {
                    attempt += 1;
                    self.shard.metrics.retry();
                    tracing::debug!(worker = self.shard.id, upstream = %self.spec.name, "stale pooled connection; retrying once");
                }
                Err(e) => {
                    let failure = e.failure();
                    let kind = match failure {
                        _ if interim_forwarded => None,
                        Failure::UpstreamTimeout => Some(TryFailure::Timeout),
                        Failure::UpstreamReset => Some(TryFailure::Reset),
                        _ => None,
                    };
                    return Err(TryFailed {
                        failure,
                        kind,
                        body_consumed: true,
                    });
                }
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
        if response.status == 101 {
            // Only an upgrade the route allows was asked for
            // (`parse_response_upgrading`): the exchange becomes a tunnel.
            exchange.upstream_us = Some(sent_at.elapsed().as_micros() as u64);
            exchange.upstream = Some(self.spec.endpoints[self.endpoint].addr);
            super::tunnel::open(
                self.shard,
                self.generation,
                self.route,
                conn,
                &response,
                client,
                exchange,
            )
            .await;
            return ProxyOutcome::Done { keep_client: false };
        }
        let client_http10 = self.head.version == Version::Http10;
        // Compression: whether this answer is one the route compresses
        // (then it varies with Accept-Encoding, whoever asks), and whether
        // this request gets it compressed.
        let compressible = self.route.compress.as_deref().is_some_and(|c| {
            c.applies(&crate::policy::compress::AnswerFacts::read(
                response.status,
                &conn.buf,
                &conn.headers,
                response.content_length,
            ))
        });
        let encoding = exchange.encoding.filter(|_| {
            compressible
                && self.head.method != Method::Head
                && response.framing != ResponseFraming::None
        });
        let (out_framing, close_for_framing) = match response.framing {
            _ if encoding.is_some() && client_http10 => (OutFraming::Raw, true),
            _ if encoding.is_some() => (OutFraming::Chunked, false),
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
                crate::policy::compress::Shape {
                    encoding,
                    varies_with_encoding: compressible,
                },
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
            &self.generation.snapshot,
            exchange,
            crate::peer_facts!(client),
            cache_status,
            crate::policy::compress::Shape {
                encoding,
                varies_with_encoding: compressible,
            },
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
            encoding: encoding
                .zip(self.route.compress.as_deref())
                .map(|(e, policy)| {
                    self.shard.metrics.compressed(e);
                    relay::Encoding {
                        encoder: Some(policy.encoder(e)),
                        encoded: BytesMut::new(),
                        chunked: !client_http10,
                    }
                }),
        };
        // Compressing, the relay frames the output itself.
        let reframe = !client_http10 && encoding.is_none();
        let relayed = match response.framing {
            ResponseFraming::None => relay.flush().await,
            ResponseFraming::Length(n) => relay.length(n).await,
            ResponseFraming::Chunked => relay.chunked(reframe, u64::MAX).await,
            ResponseFraming::UntilClose => relay.until_close(reframe).await,
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
