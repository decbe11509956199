//! [warm] Phase: log and metrics, once an exchange is over (answered,
//! refused, or broken). Compiled part: `Snapshot::access_log` (format and
//! sampling are applied by the writer). Per-worker part: the shard's
//! `WorkerMetrics` and its side of the access log.

use std::time::Instant;

use crate::http::RequestHead;
use crate::snapshot::Snapshot;

use super::super::client::{Client, Exchange};
use super::super::shard::Shard;

/// Method and target copied for the access log before the head's bytes are
/// consumed (targets past 512 bytes are cut, with a trailing `...`).
pub struct LoggedTarget {
    bytes: [u8; 531],
    method_len: usize,
    len: usize,
}

impl LoggedTarget {
    pub fn capture(buf: &[u8], head: &RequestHead) -> LoggedTarget {
        let mut t = LoggedTarget {
            bytes: [0; 531],
            method_len: 0,
            len: 0,
        };
        let method = head.method_span.get(buf);
        let method = &method[..method.len().min(16)];
        t.bytes[..method.len()].copy_from_slice(method);
        t.method_len = method.len();
        let mut at = method.len();
        for part in [head.path.get(buf), head.query.get(buf)] {
            let room = 512 + t.method_len - at;
            let take = part.len().min(room);
            t.bytes[at..at + take].copy_from_slice(&part[..take]);
            at += take;
            if take < part.len() {
                t.bytes[at..at + 3].copy_from_slice(b"...");
                at += 3;
                break;
            }
        }
        t.len = at;
        t
    }

    fn method(&self) -> &[u8] {
        &self.bytes[..self.method_len]
    }

    fn target(&self) -> &[u8] {
        &self.bytes[self.method_len..self.len]
    }
}

/// Counts a finished exchange and writes its access-log line.
pub fn record(
    shard: &Shard,
    snapshot: &Snapshot,
    client: &Client,
    exchange: &Exchange,
    logged: Option<&LoggedTarget>,
    method: usize,
    started: Instant,
) {
    let duration_us = started.elapsed().as_micros() as u64;
    shard
        .metrics
        .exchange(exchange.route, method, exchange.status, duration_us);
    shard.metrics.bytes(exchange.received, exchange.sent);
    if snapshot.top_consumers > 0
        && let Some(consumer) = exchange
            .identity
            .as_ref()
            .and_then(|id| id.consumer(&snapshot.auth))
    {
        shard.metrics.consumer(&consumer.name);
    }
    if let (Some(log), Some(logged)) = (&shard.log, logged) {
        log.record(&crate::accesslog::Entry {
            request_id: exchange.request_id.as_bytes(),
            client: client.peer,
            method: logged.method(),
            path: logged.target(),
            status: exchange.status,
            route: exchange
                .route
                .map_or("", |r| snapshot.routes[r].name.as_str()),
            upstream: exchange.upstream,
            bytes_in: exchange.received,
            bytes_out: exchange.sent,
            duration_us,
            upstream_us: exchange.upstream_us,
            worker: shard.id,
            tls: tls_fields(client),
            consumer: exchange
                .identity
                .as_ref()
                .and_then(|id| Some(&*id.consumer(&snapshot.auth)?.name)),
        });
    }
}

/// Counts and logs a head that was refused before it was understood (no
/// method, path or route).
pub fn record_refused(shard: &Shard, client: &Client, exchange: &Exchange) {
    let received = client.buf.len() as u64;
    shard.metrics.exchange(None, 7, exchange.status, 0);
    shard.metrics.bytes(received, exchange.sent);
    if let Some(log) = &shard.log {
        log.record(&crate::accesslog::Entry {
            request_id: exchange.request_id.as_bytes(),
            client: client.peer,
            method: b"",
            path: b"",
            status: exchange.status,
            route: "",
            upstream: None,
            bytes_in: received,
            bytes_out: exchange.sent,
            duration_us: 0,
            upstream_us: None,
            worker: shard.id,
            tls: tls_fields(client),
            consumer: None,
        });
    }
}

fn tls_fields(client: &Client) -> Option<crate::accesslog::TlsFields<'_>> {
    let tls = client.tls.as_deref()?;
    let cert = tls.client_cert.as_ref();
    Some(crate::accesslog::TlsFields {
        version: tls.version,
        client_subject: cert.map(|c| &*c.subject),
        client_sha256: cert.map(|c| &*c.fingerprint),
    })
}
