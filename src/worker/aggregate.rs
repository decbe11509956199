//! [warm] The aggregate action: one client request answered by calling
//! every backend of the route at once, on this worker, through its pools
//! (`upstream_call`), each under its timeout and all under the route's
//! deadline, then merging their JSON (`policy::aggregate::merge`). A
//! backend that fails makes the answer a 502 (`on_failure = "fail"`) or
//! leaves its part out, named in `x-aggregate-missing` (`"partial"`).
//! Compiled part: `RouteAction::Aggregate`.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, BufMut};

use crate::failure::Failure;
use crate::http::{self, BodyFraming};
use crate::policy::aggregate::{AggregatePolicy, Missing, OnFailure, fill_path, merge};

use super::client::{Client, Exchange};
use super::forward::pick_endpoint;
use super::phase::{RequestCtx, respond, response_headers};
use super::upstream_call::call;

/// Counters: backend calls by result, answers by outcome.
pub const BACKEND_RESULTS: [&str; 4] = ["ok", "timed_out", "failed", "not_json"];
pub const ANSWERS: [&str; 3] = ["complete", "partial", "failed"];

type Call<'a> = Pin<Box<dyn Future<Output = Result<Vec<u8>, Missing>> + 'a>>;

/// Answers the request; returns whether the connection stays open.
pub async fn answer(
    ctx: &RequestCtx<'_>,
    policy: &AggregatePolicy,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
) -> bool {
    let head = ctx.head;
    // A body is not read (backends get GETs): the connection cannot be
    // reused after it.
    let close = close || head.framing != BodyFraming::None;
    let buf = &client.buf[..];
    let path = std::str::from_utf8(head.path.get(buf)).unwrap_or("/");
    let query = std::str::from_utf8(head.query.get(buf))
        .unwrap_or("")
        .trim_start_matches('?');
    let params = match &policy.pattern {
        None => Vec::new(),
        Some(p) => match p.matches(path) {
            Some(values) => values,
            None => {
                client.buf.advance(head.len);
                return fail(ctx, client, close, exchange, Failure::NotFound, &[]).await;
            }
        },
    };
    let rest = path.get(policy.prefix_len.min(path.len())..).unwrap_or("");
    let snapshot = ctx.snapshot();
    let started = Instant::now();
    let deadline = started + policy.deadline;

    // Each backend's request, whole, and its endpoint (held in flight
    // until the call ends).
    let mut requests = Vec::with_capacity(policy.backends.len());
    let mut target = String::new();
    for backend in policy.backends.iter() {
        let spec = &snapshot.upstreams[backend.upstream];
        let picked = pick_endpoint(ctx.generation, spec, backend.upstream, None, 0);
        fill_path(&backend.path, rest, query, &params, &mut target);
        let request = picked.ok().map(|(endpoint, in_flight)| {
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(b"GET ");
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
            out.extend_from_slice(&spec.endpoints[endpoint].authority);
            out.extend_from_slice(b"\r\naccept: application/json\r\nx-request-id: ");
            out.extend_from_slice(exchange.request_id.as_bytes());
            out.extend_from_slice(b"\r\nx-forwarded-for: ");
            out.extend_from_slice(client.peer_ip.as_bytes());
            out.extend_from_slice(b"\r\n");
            for h in &client.headers {
                let name = h.name.get(buf);
                if policy
                    .pass_headers
                    .iter()
                    .any(|p| name.eq_ignore_ascii_case(p))
                {
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(http::trim_ows(h.value.get(buf)));
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            (endpoint, in_flight, out)
        });
        requests.push(request);
    }
    client.buf.advance(head.len);

    let shard = ctx.shard;
    let generation = ctx.generation;
    let mut calls: Vec<Option<Call<'_>>> = policy
        .backends
        .iter()
        .zip(requests.iter())
        .map(|(backend, request)| {
            let call: Call<'_> = match request {
                None => Box::pin(async { Err(Missing::Failed) }),
                Some((endpoint, _, bytes)) => {
                    let limit = backend
                        .timeout
                        .min(deadline.saturating_duration_since(Instant::now()));
                    Box::pin(async move {
                        let answer = monoio::time::timeout(
                            limit,
                            call(
                                shard,
                                generation,
                                backend.upstream,
                                *endpoint,
                                bytes,
                                backend.max_body,
                            ),
                        )
                        .await;
                        match answer {
                            Err(_) => Err(Missing::TimedOut),
                            Ok(Ok(a)) if (200..300).contains(&a.status) => Ok(a.body),
                            Ok(_) => Err(Missing::Failed),
                        }
                    })
                }
            };
            Some(call)
        })
        .collect();
    let mut bodies: Vec<Option<Result<Vec<u8>, Missing>>> = vec![None; calls.len()];
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, body) in calls.iter_mut().zip(bodies.iter_mut()) {
            if let Some(call) = slot {
                match call.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *body = Some(result);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    drop(calls);
    drop(requests);
    exchange.upstream_us = Some(started.elapsed().as_micros() as u64);

    let bodies: Vec<Result<Vec<u8>, Missing>> = bodies
        .into_iter()
        .map(|b| b.unwrap_or(Err(Missing::Failed)))
        .collect();
    let (merged, outcomes) = merge(&policy.backends, bodies);
    for outcome in &outcomes {
        let result = match outcome {
            None => 0,
            Some(Missing::TimedOut) => 1,
            Some(Missing::Failed) => 2,
            Some(Missing::NotJson) => 3,
        };
        shard.metrics.aggregate_backend(result);
    }
    let missing: Vec<&str> = policy
        .backends
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.is_some())
        .map(|(b, _)| &*b.name)
        .collect();
    if !missing.is_empty() && policy.on_failure == OnFailure::Fail {
        shard.metrics.aggregate_answer(2);
        let failure = if outcomes.contains(&Some(Missing::TimedOut)) {
            Failure::UpstreamTimeout
        } else {
            Failure::AggregateIncomplete
        };
        return fail(ctx, client, close, exchange, failure, &missing).await;
    }
    let body = serde_json::to_vec(&merged).unwrap_or_else(|_| b"{}".to_vec());
    if body.len() > policy.max_result {
        shard.metrics.aggregate_answer(2);
        return fail(
            ctx,
            client,
            close,
            exchange,
            Failure::UpstreamMalformed("the merged answer exceeds the route's max_result"),
            &[],
        )
        .await;
    }
    shard
        .metrics
        .aggregate_answer(if missing.is_empty() { 0 } else { 1 });
    let out = &mut client.out;
    out.clear();
    http::write::status_line(out, 200);
    out.put_slice(b"content-type: application/json\r\n");
    http::write::content_length(out, body.len() as u64);
    write_missing(out, &missing);
    respond::end_head(ctx, out, close, exchange, crate::peer_facts!(client));
    if head.method != http::Method::Head {
        out.put_slice(&body);
    }
    exchange.status = 200;
    exchange.sent = client.out.len() as u64;
    let timeout = snapshot.limits.idle_timeout;
    crate::transport::write_all_clear(&mut client.stream, &mut client.out, timeout)
        .await
        .is_ok()
        && !close
}

fn write_missing(out: &mut bytes::BytesMut, missing: &[&str]) {
    if missing.is_empty() {
        return;
    }
    out.put_slice(b"x-aggregate-missing: ");
    for (i, name) in missing.iter().enumerate() {
        if i > 0 {
            out.put_slice(b", ");
        }
        out.put_slice(name.as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// The failure answer, naming the missing backends.
async fn fail(
    ctx: &RequestCtx<'_>,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
    failure: Failure,
    missing: &[&str],
) -> bool {
    let snapshot = ctx.snapshot();
    let shard = ctx.shard;
    shard.metrics.failure(failure);
    exchange.status = failure.status();
    let close = close || failure.closes_connection();
    client.out.clear();
    failure.write_response_with(
        &mut client.out,
        close,
        exchange.request_id.as_bytes(),
        |out| {
            write_missing(out, missing);
            response_headers::write_cors(out, snapshot, exchange);
        },
    );
    exchange.sent = client.out.len() as u64;
    crate::transport::write_all_clear(
        &mut client.stream,
        &mut client.out,
        snapshot.limits.idle_timeout,
    )
    .await
    .is_ok()
        && !close
}
