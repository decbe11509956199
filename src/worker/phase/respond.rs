//! [hot] The `respond` action: a route that answers by itself, with a fixed
//! status, content type and body. Compiled part: `RouteAction::Respond`
//! (204/304 with a body are refused at load). No per-worker part.

use bytes::{Buf, BufMut, BytesMut};

use crate::http::{self, Method};

use super::super::client::{Client, Exchange, PeerFacts};
use super::{RequestCtx, response_headers};
use crate::transport::write_all_clear;

/// A route's fixed answer.
pub struct DirectResponse<'a> {
    pub status: u16,
    pub content_type: &'a [u8],
    pub body: &'a [u8],
}

/// Writes the answer; returns whether the connection stays open.
pub async fn respond(
    ctx: &RequestCtx<'_>,
    answer: DirectResponse<'_>,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
) -> bool {
    let out = &mut client.out;
    out.clear();
    http::write::status_line(out, answer.status);
    // 204 and 304 carry neither a body nor its headers.
    let bodiless = matches!(answer.status, 204 | 304);
    if !bodiless {
        out.put_slice(b"content-type: ");
        out.put_slice(answer.content_type);
        out.put_slice(b"\r\n");
        http::write::content_length(out, answer.body.len() as u64);
    }
    end_head(ctx, out, close, exchange, crate::peer_facts!(client));
    if ctx.head.method != Method::Head && !bodiless {
        out.put_slice(answer.body);
    }
    send(ctx, client, answer.status, close, exchange).await
}

/// Ends a head the gateway writes itself: the route's response headers,
/// `x-request-id`, rate-limit headers and the connection line.
pub fn end_head(
    ctx: &RequestCtx<'_>,
    out: &mut BytesMut,
    close: bool,
    exchange: &Exchange,
    peer: PeerFacts<'_>,
) {
    response_headers::write(out, ctx.snapshot(), ctx.route, exchange, peer);
    out.put_slice(if close {
        &b"connection: close\r\n\r\n"[..]
    } else {
        b"\r\n"
    });
}

/// Sends the answer in `client.out` (the request's head is consumed);
/// returns whether the connection stays open.
pub async fn send(
    ctx: &RequestCtx<'_>,
    client: &mut Client,
    status: u16,
    close: bool,
    exchange: &mut Exchange,
) -> bool {
    client.buf.advance(ctx.head.len);
    exchange.status = status;
    exchange.sent = client.out.len() as u64;
    let timeout = ctx.snapshot().limits.idle_timeout;
    write_all_clear(&mut client.stream, &mut client.out, timeout)
        .await
        .is_ok()
        && !close
}
