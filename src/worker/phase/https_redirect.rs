//! [hot] Phase: redirect plain HTTP to HTTPS, right after routing.
//! Compiled part: `Route::https_redirect` (the HTTPS port). No per-worker
//! part. A 308 keeps the method and body (RFC 9110 §15.4.9); the body, if
//! any, is not read, so the connection closes after the answer.

use bytes::{Buf, BufMut};

use crate::http::{self, BodyFraming};

use super::super::client::{Client, Exchange};
use super::{RequestCtx, response_headers};
use crate::transport::write_all_clear;

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
    out.put_slice(host_without_port(host));
    if port != 443 {
        out.put_u8(b':');
        http::write::decimal(out, u64::from(port));
    }
    let path = head.path.get(buf);
    out.put_slice(if path.is_empty() { b"/" } else { path });
    out.put_slice(head.query.get(buf));
    out.put_slice(b"\r\n");
    http::write::content_length(out, 0);
    response_headers::write(
        out,
        &ctx.route.response_headers,
        exchange.request_id.as_bytes(),
        exchange.ratelimit.as_ref(),
    );
    out.put_slice(if close {
        &b"connection: close\r\n\r\n"[..]
    } else {
        b"\r\n"
    });
    client.buf.advance(head.len);
    exchange.status = 308;
    exchange.sent = client.out.len() as u64;
    let timeout = ctx.snapshot().limits.idle_timeout;
    write_all_clear(&mut client.stream, &mut client.out, timeout)
        .await
        .is_ok()
        && !close
}

/// `example.com:8080` → `example.com`; `[::1]:8080` → `[::1]`.
fn host_without_port(host: &[u8]) -> &[u8] {
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) if !host.ends_with(b"]") => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_without_port;

    #[test]
    fn ports_are_dropped_from_names_and_bracketed_literals() {
        assert_eq!(host_without_port(b"example.com:8080"), b"example.com");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        assert_eq!(host_without_port(b""), b"");
    }
}
