//! [hot] Phase: CORS, right after routing. The route's policy judges the
//! request's `Origin` once; the result rides on the exchange, so whatever
//! answers the request (the upstream, a direct response, the cache, an
//! error) carries the policy's headers (`response_headers::write_cors`).
//! A preflight is answered here, before auth and rate limits (browsers
//! never send credentials on one), unless the policy forwards them.
//! Compiled part: `Snapshot::cors`, named by `Route::cors` (and
//! `Snapshot::no_route_cors` for 404s). No per-worker state beyond counters.

use crate::http::{self, BodyFraming, Method, RequestHead};
use crate::metrics::{
    CORS_ALLOWED, CORS_DISALLOWED, CORS_PREFLIGHT_ALLOWED, CORS_PREFLIGHT_REFUSED,
};
use crate::policy::cors::PreflightAsk;
use crate::snapshot::Snapshot;

use super::super::client::{Client, Exchange, RequestView};
use super::super::shard::Shard;
use super::{RequestCtx, respond};

/// `Access-Control-Request-Headers` lines a preflight may carry (browsers
/// send one); one with more is refused.
const MAX_REQUEST_HEADER_LINES: usize = 4;

/// What the phase decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not a preflight answered here: on to the next phase.
    Continue,
    /// An allowed preflight: answer it (`answer_preflight`).
    AnswerPreflight,
    /// A preflight the policy refuses: 403 `cors_forbidden`.
    Refuse,
}

/// A preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(head: &RequestHead, request: &RequestView<'_>) -> bool {
    head.method == Method::Options
        && request.header(b"origin").is_some()
        && request.header(b"access-control-request-method").is_some()
}

/// Runs `f` on what a preflight asks for; `None` if it asks in more
/// `Access-Control-Request-Headers` lines than we read.
fn with_ask<T>(request: &RequestView<'_>, f: impl FnOnce(&PreflightAsk<'_>) -> T) -> Option<T> {
    let mut lines: [&[u8]; MAX_REQUEST_HEADER_LINES] = [&[]; MAX_REQUEST_HEADER_LINES];
    let mut n = 0;
    for value in request.values(b"access-control-request-headers") {
        *lines.get_mut(n)? = value;
        n += 1;
    }
    let ask = PreflightAsk {
        method: request
            .header(b"access-control-request-method")
            .unwrap_or_default(),
        headers: &lines[..n],
        private_network: request
            .header(b"access-control-request-private-network")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"true")),
    };
    Some(f(&ask))
}

/// Judges the request by policy `policy` and records the result on the
/// exchange. `preflights`: whether a preflight may be answered here
/// (not for answers no route matched).
pub fn judge(
    shard: &Shard,
    snapshot: &Snapshot,
    policy: usize,
    head: &RequestHead,
    request: &RequestView<'_>,
    exchange: &mut Exchange,
    preflights: bool,
) -> Step {
    let Some(p) = snapshot.cors.get(policy) else {
        return Step::Continue;
    };
    let origin = request.header(b"origin");
    let judged = p.judge(origin);
    let step = if preflights && !p.forward_preflight && is_preflight(head, request) {
        let allowed =
            judged.allowed() && with_ask(request, |ask| p.allows_preflight(ask)).unwrap_or(false);
        shard.metrics.cors(
            policy,
            if allowed {
                CORS_PREFLIGHT_ALLOWED
            } else {
                CORS_PREFLIGHT_REFUSED
            },
        );
        if allowed {
            Step::AnswerPreflight
        } else {
            Step::Refuse
        }
    } else {
        if origin.is_some() {
            shard.metrics.cors(
                policy,
                if judged.allowed() {
                    CORS_ALLOWED
                } else {
                    CORS_DISALLOWED
                },
            );
        }
        Step::Continue
    };
    exchange.cors = Some(judged);
    step
}

/// Answers an allowed preflight: `204` with the policy's
/// `Access-Control-Allow-*` headers. Returns whether the connection stays
/// open (a preflight with a body, unread, closes it).
pub async fn answer_preflight(
    ctx: &RequestCtx<'_>,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
) -> bool {
    let close = close || ctx.head.framing != BodyFraming::None;
    // The preflight's own headers replace those of an actual answer.
    let judged = exchange.cors.take();
    let out = &mut client.out;
    out.clear();
    http::write::status_line(out, 204);
    if let Some(m) = &judged
        && let Some(p) = ctx.snapshot().cors.get(m.policy)
    {
        let view = RequestView {
            buf: &client.buf,
            headers: &client.headers,
            peer: client.peer,
            peer_ip: client.peer_ip.as_bytes(),
            tls: client.tls.as_deref(),
            consumer: None,
        };
        with_ask(&view, |ask| p.write_preflight(out, m, ask));
    }
    respond::end_head(ctx, out, close, exchange, crate::peer_facts!(client));
    respond::send(ctx, client, 204, close, exchange).await
}
