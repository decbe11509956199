//! [hot] Phase: response headers the gateway adds to every answer from a
//! route (direct or relayed): the route's `response_headers` edits,
//! `x-request-id`, the tightest rate-limit decision and the CORS headers. Compiled part:
//! `Route::response_headers`. No per-worker part.

use bytes::BytesMut;

use crate::http;
use crate::policy::header_value::Vars;
use crate::snapshot::{HeaderEdits, Route, Snapshot};
use crate::worker::client::{Exchange, PeerFacts};

/// Whether a relayed header of this name gives way to the route's edits
/// (removed, or replaced by a `set`).
#[inline]
pub fn drops(edits: &HeaderEdits, name: &[u8]) -> bool {
    !edits.is_empty() && edits.drops(name)
}

/// Writes the headers the gateway adds, in a fixed order: the route's
/// edits, `x-request-id`, rate-limit headers, the CORS policy's headers.
pub fn write(
    out: &mut BytesMut,
    snapshot: &Snapshot,
    route: &Route,
    exchange: &Exchange,
    peer: PeerFacts<'_>,
) {
    let edits = &route.response_headers;
    if !edits.set.is_empty() || !edits.add.is_empty() {
        let vars = vars(snapshot, route, exchange, peer, None);
        for (name, value) in edits.set.iter().chain(&edits.add) {
            value.write_header(out, name, &vars);
        }
    }
    http::write::header(out, b"x-request-id", exchange.request_id.as_bytes());
    if let Some(d) = &exchange.ratelimit {
        crate::ratelimit::write_headers(out, d);
    }
    write_cors(out, snapshot, exchange);
}

/// What header variables stand for in this exchange; `host` where the
/// request head is still at hand (request headers).
pub fn vars<'a>(
    snapshot: &'a Snapshot,
    route: &'a Route,
    exchange: &'a Exchange,
    peer: PeerFacts<'a>,
    host: Option<&'a [u8]>,
) -> Vars<'a> {
    let identity = exchange.identity.as_ref();
    Vars {
        client_ip: peer.ip,
        request_id: exchange.request_id.as_bytes(),
        consumer: identity
            .and_then(|i| i.consumer(&snapshot.auth))
            .map_or(&[][..], |c| c.name.as_bytes()),
        route: route.name.as_bytes(),
        host,
        claims: match identity {
            Some(crate::auth::Identity::Token { facts, .. }) => &facts.claims,
            _ => &[],
        },
        cert: peer.tls.and_then(|t| t.client_cert.as_ref()),
    }
}

/// The CORS headers of an actual answer, when the exchange was judged by a
/// policy (on every answer: proxied, direct, cached, an error).
#[inline]
pub fn write_cors(out: &mut BytesMut, snapshot: &Snapshot, exchange: &Exchange) {
    if let Some(m) = &exchange.cors
        && let Some(policy) = snapshot.cors.get(m.policy)
    {
        policy.write_actual(out, m);
    }
}

/// Whether a relayed header is the gateway's to write instead: with a
/// CORS policy on the route, the upstream's `Access-Control-*` headers.
#[inline]
pub fn replaced_by_cors(route: &crate::snapshot::Route, name: &[u8]) -> bool {
    route.cors.is_some() && name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
}

/// Whether an upstream response header stays with the gateway (hop-by-hop
/// or framing, the upstream's `x-request-id`, a header its `Connection`
/// names, one the route's edits remove or replace, or CORS headers the
/// route's policy writes) instead of going to the client or the cache.
pub fn withheld_from(
    buf: &[u8],
    headers: &[http::HeaderSpan],
    connection_names_others: bool,
    route: &Route,
    name: &[u8],
) -> bool {
    http::is_hop_by_hop_or_framing(name)
        || (name.len() == 12 && name.eq_ignore_ascii_case(b"x-request-id"))
        || (connection_names_others && http::connection_names(buf, headers, name))
        || drops(&route.response_headers, name)
        || replaced_by_cors(route, name)
}
