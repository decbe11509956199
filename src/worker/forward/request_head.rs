//! [hot] The request head sent upstream: request line (path rewrites),
//! Host (host rewrites), the client's headers less hop-by-hop, framing and
//! forwarded-identity ones, the forwarded-identity headers by
//! `server.forwarded_headers`, `x-request-id`, and the route's request
//! header edits.

use bytes::{BufMut, BytesMut};

use crate::http::{self, BodyFraming, RequestHead};
use crate::snapshot::{EndpointSpec, ForwardedMode, HostRewrite, PathRewrite, Route, Snapshot};

use crate::auth::{CONSUMER_HEADER, Identity};

use super::super::client::{Client, Exchange};

/// The headers that tell an upstream who the client is; never copied from
/// the client as they are (see `write_forwarded`).
fn is_forwarded_identity(name: &[u8]) -> bool {
    match name.len() {
        9 => name.eq_ignore_ascii_case(b"forwarded") || name.eq_ignore_ascii_case(b"x-real-ip"),
        15 => name.eq_ignore_ascii_case(b"x-forwarded-for"),
        16 => name.eq_ignore_ascii_case(b"x-forwarded-host"),
        17 => name.eq_ignore_ascii_case(b"x-forwarded-proto") || is_client_cert_header(name),
        _ => is_client_cert_header(name),
    }
}

/// The verified client certificate (mTLS), as the upstream receives it.
pub const CLIENT_CERT_SUBJECT: &[u8] = b"x-client-cert-subject";
pub const CLIENT_CERT_SAN: &[u8] = b"x-client-cert-san";
pub const CLIENT_CERT_FINGERPRINT: &[u8] = b"x-client-cert-sha256";

/// Client-certificate headers come only from the handshake: a client's
/// own copies are dropped on every listener, TLS or not.
fn is_client_cert_header(name: &[u8]) -> bool {
    name.len() > 14
        && name[..14].eq_ignore_ascii_case(b"x-client-cert-")
        && [
            CLIENT_CERT_SUBJECT,
            CLIENT_CERT_SAN,
            CLIENT_CERT_FINGERPRINT,
        ]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

fn write_client_cert(out: &mut BytesMut, client: &Client) {
    let Some(cert) = client.tls.as_ref().and_then(|t| t.client_cert.as_ref()) else {
        return;
    };
    http::write::header(out, CLIENT_CERT_SUBJECT, cert.subject.as_bytes());
    if !cert.sans.is_empty() {
        http::write::header(out, CLIENT_CERT_SAN, cert.sans.as_bytes());
    }
    http::write::header(out, CLIENT_CERT_FINGERPRINT, cert.fingerprint.as_bytes());
}

/// Who the request is from, as the gateway verified it: `x-consumer`, and
/// a token's `claims_to_headers`.
fn write_identity(
    out: &mut BytesMut,
    identity: Option<&Identity>,
    providers: &[crate::auth::Provider],
) {
    let Some(identity) = identity else {
        return;
    };
    if let Some(consumer) = identity.consumer(providers) {
        http::write::header(out, CONSUMER_HEADER, consumer.name.as_bytes());
    }
    if let Identity::Token { facts, .. } = identity {
        for (name, value) in &facts.headers {
            http::write::header(out, name, value);
        }
    }
}

/// `X-Forwarded-For`, `Forwarded`, `X-Real-IP`, `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, consistently, by `server.forwarded_headers`.
fn write_forwarded(out: &mut BytesMut, client: &Client, head: &RequestHead, mode: ForwardedMode) {
    if mode == ForwardedMode::Strip {
        return;
    }
    let buf = &client.buf[..];
    let peer = client.peer_ip.as_bytes();
    let append = mode == ForwardedMode::Append;
    let earlier = |name: &'static [u8]| {
        client
            .headers
            .iter()
            .filter(move |h| append && h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| http::trim_ows(h.value.get(buf)))
            .filter(|v| !v.is_empty())
    };
    out.put_slice(b"x-forwarded-for: ");
    for v in earlier(b"x-forwarded-for") {
        out.put_slice(v);
        out.put_slice(b", ");
    }
    out.put_slice(peer);
    out.put_slice(b"\r\n");
    // RFC 7239: IPv6 addresses quoted and bracketed; the host quoted (it
    // may carry a port, which is not a token character).
    out.put_slice(b"forwarded: ");
    for v in earlier(b"forwarded") {
        out.put_slice(v);
        out.put_slice(b", ");
    }
    if client.peer.ip().is_ipv6() {
        out.put_slice(b"for=\"[");
        out.put_slice(peer);
        out.put_slice(b"]\"");
    } else {
        out.put_slice(b"for=");
        out.put_slice(peer);
    }
    let proto: &[u8] = if client.stream.is_tls() {
        b"https"
    } else {
        b"http"
    };
    out.put_slice(b";proto=");
    out.put_slice(proto);
    if let Some(h) = head.host {
        out.put_slice(b";host=\"");
        out.put_slice(h.get(buf));
        out.put_u8(b'"');
    }
    out.put_slice(b"\r\n");
    http::write::header(out, b"x-real-ip", peer);
    http::write::header(out, b"x-forwarded-proto", proto);
    if let Some(h) = head.host {
        http::write::header(out, b"x-forwarded-host", h.get(buf));
    }
}

/// Writes the request line and headers sent upstream.
#[allow(clippy::too_many_arguments)]
pub(in crate::worker) fn build_request_head(
    out: &mut BytesMut,
    client: &Client,
    head: &RequestHead,
    route: &Route,
    endpoint: &EndpointSpec,
    exchange: &Exchange,
    snapshot: &Snapshot,
    revalidation: Option<&crate::worker::phase::cache::Revalidation>,
) {
    let request_id = exchange.request_id.as_bytes();
    let forwarded = snapshot.limits.forwarded;
    let buf = &client.buf[..];
    out.put_slice(head.method_span.get(buf));
    out.put_u8(b' ');
    let path = head.path.get(buf);
    match &route.path_rewrite {
        PathRewrite::None => out.put_slice(if path.is_empty() { b"/" } else { path }),
        PathRewrite::StripPrefix(len) => {
            let rest = &path[(*len).min(path.len())..];
            if !rest.starts_with(b"/") {
                out.put_u8(b'/');
            }
            out.put_slice(rest);
        }
        PathRewrite::ReplacePrefix { len, with } => {
            let mut rest = &path[(*len).min(path.len())..];
            out.put_slice(with);
            let with_slash = with.ends_with(b"/");
            if with_slash && rest.starts_with(b"/") {
                rest = &rest[1..];
            } else if !with_slash && !rest.is_empty() && !rest.starts_with(b"/") {
                out.put_u8(b'/');
            }
            out.put_slice(rest);
        }
    }
    out.put_slice(head.query.get(buf));
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    match &route.host_rewrite {
        HostRewrite::Preserve => match head.host {
            Some(h) if !h.is_empty() => out.put_slice(h.get(buf)),
            _ => out.put_slice(&endpoint.authority),
        },
        HostRewrite::Endpoint => out.put_slice(&endpoint.authority),
        HostRewrite::Fixed(h) => out.put_slice(h),
    }
    out.put_slice(b"\r\n");

    let edits = &route.request_headers;
    let check_edits = !edits.is_empty();
    write_forwarded(out, client, head, forwarded);
    write_client_cert(out, client);
    write_identity(out, exchange.identity.as_ref(), &snapshot.auth);
    let hidden: &[Box<[u8]>] = route.auth.as_ref().map_or(&[], |a| &a.hidden_headers);
    for h in &client.headers {
        let name = h.name.get(buf);
        let skip = http::is_hop_by_hop_or_framing(name)
            || match name.len() {
                4 => name.eq_ignore_ascii_case(b"host"),
                6 => name.eq_ignore_ascii_case(b"expect"),
                10 => name.eq_ignore_ascii_case(CONSUMER_HEADER),
                12 => name.eq_ignore_ascii_case(b"x-request-id"),
                _ => is_forwarded_identity(name),
            }
            || hidden.iter().any(|h| h.eq_ignore_ascii_case(name))
            || (head.connection_names_others && http::connection_names(buf, &client.headers, name))
            || (check_edits && edits.drops(name))
            // Revalidating for the cache: its validators replace the
            // client's (the cache answers the client's conditions itself).
            || (revalidation.is_some()
                && (name.eq_ignore_ascii_case(b"if-none-match")
                    || name.eq_ignore_ascii_case(b"if-modified-since")));
        if !skip {
            http::write::header(out, name, h.value.get(buf));
        }
    }
    http::write::header(out, b"x-request-id", request_id);
    if exchange.upgrade {
        // Hop-by-hop, so dropped above: an upgrade the route tunnels asks
        // the upstream again, with the client's offers.
        out.put_slice(b"connection: upgrade\r\n");
        for value in client.view().values(b"upgrade") {
            http::write::header(out, b"upgrade", http::trim_ows(value));
        }
    }
    if let Some(r) = revalidation {
        r.write_headers(out);
    }
    if !edits.set.is_empty() || !edits.add.is_empty() {
        let host = head.host.map(|h| h.get(buf));
        let peer = crate::peer_facts!(client);
        let vars =
            crate::worker::phase::response_headers::vars(snapshot, route, exchange, peer, host);
        for (name, value) in edits.set.iter().chain(&edits.add) {
            value.write_header(out, name, &vars);
        }
    }
    match head.framing {
        BodyFraming::None => {}
        BodyFraming::Length(n) => http::write::content_length(out, n),
        BodyFraming::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}
