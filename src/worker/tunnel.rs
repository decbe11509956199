//! [warm] Upgrade tunnels: after the upstream switches protocols (101) on
//! a request whose route tunnels that protocol, the gateway relays the 101
//! and then copies bytes both ways, unparsed, until both sides have closed
//! — or the tunnel idles past its timeout, outlives its maximum lifetime,
//! or a drain reaches its deadline. One task per tunnel: both directions
//! are read at once, the read that did not finish is cancelled (and any
//! bytes it did get kept) before the other direction is written, so no
//! buffer is shared and nothing is lost. Compiled part:
//! `policy::tunnel::TunnelPolicy` on the route. The tunnel holds its
//! request's generation: a reload leaves it alone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use monoio::io::Canceller;

use crate::http::{self, BodyFraming, RequestHead, ResponseHead, Version};
use crate::metrics::TUNNEL_ENDS;
use crate::snapshot::Route;
use crate::transport::{Transport, read_more_cancelable, write_all_clear};
use crate::upstream::UpstreamConn;

use super::client::{Client, Exchange, RequestView};
use super::phase::response_headers::{self, withheld_from};
use super::shard::{Generation, Shard};

/// Whether the request asks for an upgrade its route tunnels: an HTTP/1.1
/// request without a body, `Connection: upgrade`, and an `Upgrade` whose
/// first offer the route lists. Anything else goes upstream as a plain
/// request (its `Upgrade` dropped as hop-by-hop) — so `h2c` never switches.
pub fn asked(route: &Route, head: &RequestHead, request: &RequestView<'_>) -> bool {
    let Some(policy) = route.tunnel.as_deref() else {
        return false;
    };
    head.upgrade
        && head.version == Version::Http11
        && head.framing == BodyFraming::None
        && request
            .values(b"connection")
            .flat_map(http::list_elements)
            .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        && request.header(b"upgrade").is_some_and(|u| policy.allows(u))
}

/// Why a tunnel ended (index into `TUNNEL_ENDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientClosed = 0,
    UpstreamClosed = 1,
    IdleTimeout = 2,
    MaxLifetime = 3,
    Drain = 4,
    Error = 5,
}

const _: () = assert!(TUNNEL_ENDS.len() == End::Error as usize + 1);

/// Counts a tunnel open for as long as it lives.
struct OpenTunnel<'a>(&'a Shard);

impl<'a> OpenTunnel<'a> {
    fn new(shard: &'a Shard) -> OpenTunnel<'a> {
        shard
            .metrics
            .tunnels_open
            .set(shard.metrics.tunnels_open.get() + 1);
        OpenTunnel(shard)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        let open = &self.0.metrics.tunnels_open;
        open.set(open.get().saturating_sub(1));
    }
}

/// Relays the 101 to the client, then runs the tunnel to its end.
#[allow(clippy::too_many_arguments)]
pub(super) async fn open(
    shard: &Shard,
    generation: &Generation,
    route: &Route,
    mut conn: UpstreamConn,
    response: &ResponseHead,
    client: &mut Client,
    exchange: &mut Exchange,
) {
    let Some(policy) = route.tunnel.as_deref() else {
        return;
    };
    let snapshot = &generation.snapshot;
    client.out.clear();
    {
        let out = &mut client.out;
        http::write::status_line(out, 101);
        for h in &conn.headers {
            let name = h.name.get(&conn.buf);
            if !withheld_from(
                &conn.buf,
                &conn.headers,
                response.connection_names_others,
                route,
                name,
            ) {
                http::write::header(out, name, h.value.get(&conn.buf));
            }
        }
        out.put_slice(b"connection: upgrade\r\n");
        for h in &conn.headers {
            if h.name.get(&conn.buf).eq_ignore_ascii_case(b"upgrade") {
                http::write::header(out, b"upgrade", http::trim_ows(h.value.get(&conn.buf)));
            }
        }
        response_headers::write(out, snapshot, route, exchange, crate::peer_facts!(client));
        out.put_slice(b"\r\n");
    }
    exchange.status = 101;
    exchange.sent += client.out.len() as u64;
    conn.buf.advance(response.len);
    let write_limit = policy.idle_timeout;
    if write_all_clear(&mut client.stream, &mut client.out, write_limit)
        .await
        .is_err()
    {
        count_end(shard, End::Error);
        return;
    }
    // The tunnel writes from the read buffers: the output buffer goes
    // back to the worker's pool for the tunnel's life (idle tunnels hold
    // only what they read into).
    shard.out_buffers.give(std::mem::take(&mut client.out));
    let _open = OpenTunnel::new(shard);
    let ends = Ends {
        client: &mut client.stream,
        client_buf: &mut client.buf,
        upstream: &mut conn.stream,
        upstream_buf: &mut conn.buf,
    };
    let (end, moved) = run(shard, policy, ends).await;
    exchange.received += moved.0;
    exchange.sent += moved.1;
    shard.metrics.bytes(moved.0, moved.1);
    count_end(shard, end);
    tracing::debug!(worker = shard.id, route = %route.name, ?end, up = moved.0, down = moved.1, "tunnel ended");
}

fn count_end(shard: &Shard, end: End) {
    let cell = &shard.metrics.tunnel_ends[end as usize];
    cell.set(cell.get() + 1);
}

/// The two sides of a tunnel with their read buffers.
struct Ends<'a> {
    client: &'a mut Transport,
    client_buf: &'a mut BytesMut,
    upstream: &'a mut Transport,
    upstream_buf: &'a mut BytesMut,
}

/// How close to a drain's deadline a tunnel closes itself, so it ends
/// with FINs rather than with the worker.
fn drain_margin(drain_timeout: Duration) -> Duration {
    (drain_timeout / 10).min(Duration::from_secs(1))
}

/// Copies bytes both ways until the tunnel ends; returns why, and the
/// bytes moved (client → upstream, upstream → client).
async fn run(
    shard: &Shard,
    policy: &crate::policy::tunnel::TunnelPolicy,
    ends: Ends<'_>,
) -> (End, (u64, u64)) {
    let Ends {
        client,
        client_buf,
        upstream,
        upstream_buf,
    } = ends;
    let started = Instant::now();
    let lifetime_end = policy.max_lifetime.map(|d| started + d);
    let mut last_activity = started;
    let (mut client_open, mut upstream_open) = (true, true);
    let mut moved = (0u64, 0u64);
    let mut registered: Option<std::task::Waker> = None;
    let end = loop {
        // Bytes either side sent early (with its head, or read while the
        // other side's read was being cancelled) go first.
        if !client_buf.is_empty() {
            moved.0 += client_buf.len() as u64;
            if write_all_clear(upstream, client_buf, policy.idle_timeout)
                .await
                .is_err()
            {
                break End::Error;
            }
        }
        if !upstream_buf.is_empty() {
            moved.1 += upstream_buf.len() as u64;
            if write_all_clear(client, upstream_buf, policy.idle_timeout)
                .await
                .is_err()
            {
                break End::Error;
            }
        }
        if !client_open && !upstream_open {
            // Both said they are done; the last to close names the end.
            break End::ClientClosed;
        }
        let now = Instant::now();
        let mut deadline = last_activity + policy.idle_timeout;
        let mut why = End::IdleTimeout;
        if let Some(l) = lifetime_end
            && l < deadline
        {
            (deadline, why) = (l, End::MaxLifetime);
        }
        if shard.draining.get()
            && let Some(d) = shard.drain_deadline.get()
        {
            let limits = &shard.generation().snapshot.limits;
            let d = d
                .checked_sub(drain_margin(limits.drain_timeout))
                .unwrap_or(d);
            if d < deadline {
                (deadline, why) = (d, End::Drain);
            }
        }
        if now >= deadline {
            break why;
        }

        let (from_client, from_upstream) = {
            let client_cancel = Canceller::new();
            let upstream_cancel = Canceller::new();
            let mut client_read = std::pin::pin!(client_open.then(|| read_more_cancelable(
                client,
                client_buf,
                client_cancel.handle()
            )));
            let mut upstream_read = std::pin::pin!(upstream_open.then(|| read_more_cancelable(
                upstream,
                upstream_buf,
                upstream_cancel.handle()
            )));
            let mut timer = std::pin::pin!(monoio::time::sleep(deadline - now));
            let mut drain = DrainWatch {
                shard,
                registered: &mut registered,
            };
            let mut from_client: Option<std::io::Result<usize>> = None;
            let mut from_upstream: Option<std::io::Result<usize>> = None;
            std::future::poll_fn(|cx| {
                if let Some(read) = client_read.as_mut().as_pin_mut()
                    && let Poll::Ready(r) = read.poll(cx)
                {
                    from_client = Some(r);
                }
                if let Some(read) = upstream_read.as_mut().as_pin_mut()
                    && let Poll::Ready(r) = read.poll(cx)
                {
                    from_upstream = Some(r);
                }
                if from_client.is_some() || from_upstream.is_some() {
                    return Poll::Ready(());
                }
                // Once draining, the drain's deadline is in `timer`.
                let drain_began = !shard.draining.get() && Pin::new(&mut drain).poll(cx).is_ready();
                if timer.as_mut().poll(cx).is_ready() || drain_began {
                    return Poll::Ready(());
                }
                Poll::Pending
            })
            .await;
            // Finish the read that did not: cancelled, it ends with an error,
            // or with bytes that arrived first (kept, written next round).
            let _ = client_cancel.cancel();
            let _ = upstream_cancel.cancel();
            if from_client.is_none()
                && let Some(read) = client_read.as_mut().as_pin_mut()
            {
                from_client = Some(read.await).filter(|r| r.is_ok());
            }
            if from_upstream.is_none()
                && let Some(read) = upstream_read.as_mut().as_pin_mut()
            {
                from_upstream = Some(read.await).filter(|r| r.is_ok());
            }
            (from_client, from_upstream)
        };
        match from_client {
            Some(Ok(0)) => {
                // The client is done sending: tell the upstream, keep
                // relaying what it still sends.
                client_open = false;
                if !upstream_open {
                    break End::ClientClosed;
                }
                let _ = upstream.shutdown(policy.idle_timeout).await;
            }
            Some(Ok(_)) => last_activity = Instant::now(),
            Some(Err(_)) => break End::Error,
            None => {}
        }
        match from_upstream {
            Some(Ok(0)) => {
                upstream_open = false;
                if !client_open {
                    break End::UpstreamClosed;
                }
                let _ = client.shutdown(policy.idle_timeout).await;
            }
            Some(Ok(_)) => last_activity = Instant::now(),
            Some(Err(_)) => break End::Error,
            None => {}
        }
    };
    if let Some(waker) = registered {
        shard
            .tunnel_wakers
            .borrow_mut()
            .retain(|w| !w.will_wake(&waker));
    }
    if !matches!(end, End::ClientClosed | End::UpstreamClosed) {
        // Ended by us: FIN both ways (what each side still sends is dropped
        // with the sockets).
        if client_open {
            let _ = client.shutdown(Duration::from_secs(1)).await;
        }
        if upstream_open {
            let _ = upstream.shutdown(Duration::from_secs(1)).await;
        }
    }
    (end, moved)
}

/// Ready once the worker drains; until then its task is among the
/// shard's `tunnel_wakers` (registered once per tunnel).
struct DrainWatch<'a> {
    shard: &'a Shard,
    registered: &'a mut Option<std::task::Waker>,
}

impl Future for DrainWatch<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shard.draining.get() {
            return Poll::Ready(());
        }
        let stale = self
            .registered
            .as_ref()
            .is_none_or(|w| !w.will_wake(cx.waker()));
        if stale {
            let mut wakers = self.shard.tunnel_wakers.borrow_mut();
            if let Some(old) = self.registered.take() {
                wakers.retain(|w| !w.will_wake(&old));
            }
            wakers.push(cx.waker().clone());
            *self.registered = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_closes_itself_shortly_before_the_drain_deadline() {
        assert_eq!(
            drain_margin(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
        assert_eq!(
            drain_margin(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
    }
}
