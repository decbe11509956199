//! [hot] Phase: redirect plain HTTP to HTTPS, right after routing.
//! Compiled part: `Route::https_redirect` (the HTTPS port). No per-worker
//! part. A 308 keeps the method and body (RFC 9110 §15.4.9); the body, if
//! any, is not read, so the connection closes after the answer.

use bytes::BufMut;

use crate::http::{self, BodyFraming};

use super::super::client::{Client, Exchange};
use super::{RequestCtx, respond};

/// Whether this request is answered with a redirect (plain connection, and
/// the route asks for HTTPS).
pub fn applies(ctx: &RequestCtx<'_>, client: &Client) -> Option<u16> {
    ctx.route.https_redirect.filter(|_| !client.stream.is_tls())
}

/// Writes `308 Permanent Redirect` to `https://HOST[:PORT]TARGET`; returns
/// whether the connection stays open.
pub async fn redirect(
    ctx: &RequestCtx<'_>,
    port: u16,
    client: &mut Client,
    close: bool,
    exchange: &mut Exchange,
) -> bool {
    let head = ctx.head;
    let close = close || head.framing != BodyFraming::None;
    let buf = &client.buf[..];
    let out = &mut client.out;
    out.clear();
    http::write::status_line(out, 308);
    out.put_slice(b"location: https://");
    let host = head.host.map_or(&b""[..], |h| h.get(buf));
    out.put_slice(http::host_without_port(host));
    if port != 443 {
        out.put_u8(b':');
        http::write::decimal(out, u64::from(port));
    }
    let path = head.path.get(buf);
    out.put_slice(if path.is_empty() { b"/" } else { path });
    out.put_slice(head.query.get(buf));
    out.put_slice(b"\r\n");
    http::write::content_length(out, 0);
    respond::end_head(ctx, out, close, exchange, crate::peer_facts!(client));
    respond::send(ctx, client, 308, close, exchange).await
}
