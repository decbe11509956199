//! [hot] The upstream's response head: read it (relaying interim
//! responses to HTTP/1.1 clients), and write the head the client gets
//! (hop-by-hop and framing headers dropped, the route's response phases
//! applied, framing chosen for the client's version).

use std::time::Instant;

use bytes::{Buf, BufMut, BytesMut};

use crate::failure::Failure;
use crate::http::{
    self, MAX_HEADERS, Method, RequestHead, ResponseHead, Version, parse_response_upgrading,
};
use crate::snapshot::{Route, Snapshot, UpstreamSpec};

use super::super::client::Client;
use super::super::phase::response_headers;
use crate::transport::{IoFailure, read_more_timed, write_all_clear};
use crate::upstream::UpstreamConn;
use crate::upstream::conn::UPSTREAM_BUFFER;

pub(super) enum HeadError {
    /// The upstream closed or reset before sending a single byte.
    ClosedBeforeResponse,
    Failed(Failure),
}

impl HeadError {
    pub(super) fn failure(self) -> Failure {
        match self {
            HeadError::ClosedBeforeResponse => Failure::UpstreamReset,
            HeadError::Failed(f) => f,
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn read_response_head(
    conn: &mut UpstreamConn,
    client: &mut Client,
    head: &RequestHead,
    spec: &UpstreamSpec,
    snapshot: &Snapshot,
    try_deadline: Option<Instant>,
    upgrade_asked: bool,
    interim_forwarded: &mut bool,
) -> Result<ResponseHead, HeadError> {
    let deadline = Instant::now() + spec.response_timeout;
    let deadline = try_deadline.map_or(deadline, |d| d.min(deadline));
    let mut received_any = false;
    loop {
        if !conn.buf.is_empty() {
            received_any = true;
            let parsed = parse_response_upgrading(
                &conn.buf,
                snapshot.limits.max_header_bytes,
                MAX_HEADERS,
                head.method == Method::Head,
                upgrade_asked,
                &mut conn.headers,
            );
            match parsed {
                // The switch an upgrade asked for: final, not interim.
                Ok(Some(response)) if response.status == 101 => return Ok(response),
                Ok(Some(response)) if response.is_interim() => {
                    // 100 Continue was already answered by us (we do not
                    // forward Expect); other interim responses (103) go to
                    // HTTP/1.1 clients, and the final response follows.
                    if response.status != 100 && head.version == Version::Http11 {
                        // Part of the answer reaches the client: no retry now.
                        *interim_forwarded = true;
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

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum OutFraming {
    None,
    Length(u64),
    Chunked,
    /// Body bytes as they come, ended by closing the connection (HTTP/1.0).
    Raw,
}

/// Whether an upstream response header stays with the gateway (hop-by-hop
/// or framing, the upstream's `x-request-id`, a header its `Connection`
/// names, one the route's edits remove or replace) instead of going to
/// the client, or into the cache.
pub(super) fn withheld(
    conn: &UpstreamConn,
    response: &ResponseHead,
    route: &Route,
    name: &[u8],
) -> bool {
    response_headers::withheld_from(
        &conn.buf,
        &conn.headers,
        response.connection_names_others,
        route,
        name,
    )
}

/// Writes the client's response head. `cache_status`: a `Cache-Status`
/// line for a cached route's miss (empty otherwise).
#[allow(clippy::too_many_arguments)]
pub(super) fn build_response_head(
    out: &mut BytesMut,
    conn: &UpstreamConn,
    response: &ResponseHead,
    head: &RequestHead,
    route: &Route,
    framing: OutFraming,
    close: bool,
    snapshot: &crate::snapshot::Snapshot,
    exchange: &crate::worker::client::Exchange,
    peer: crate::worker::client::PeerFacts<'_>,
    cache_status: &[u8],
    shape: crate::policy::compress::Shape,
) {
    let buf = &conn.buf[..];
    let client_http10 = head.version == Version::Http10;
    http::write::status_line(out, response.status);
    let mut etag = None;
    for h in &conn.headers {
        let name = h.name.get(buf);
        if withheld(conn, response, route, name) {
            continue;
        }
        if shape.replaces(name) {
            if name.eq_ignore_ascii_case(b"etag") {
                etag = Some(h.value.get(buf));
            }
            continue;
        }
        http::write::header(out, name, h.value.get(buf));
    }
    shape.write(out, etag);
    response_headers::write(out, snapshot, route, exchange, peer);
    out.put_slice(cache_status);
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
