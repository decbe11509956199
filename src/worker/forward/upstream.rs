//! [hot] Upstream side of a forward: which endpoint answers (balancer plus
//! its in-flight count), and a connection to it (a quiet pooled one, or a
//! fresh connect under `connect_timeout`).

use std::time::Instant;

use monoio::net::TcpStream;

use crate::failure::Failure;
use crate::snapshot::{Balance, HashKey, UpstreamSpec, WhenAllDown};
use crate::transport::{TlsStream, Transport};
use crate::upstream::hash::stable_hash;
use crate::upstream::{UpstreamConn, UpstreamState};

use super::super::client::Client;
use super::super::shard::{Generation, Shard};

/// Decrements the endpoint's in-flight count however `forward` ends — in
/// the counts the balancer reads now, even if a reload moved them to a new
/// generation meanwhile.
pub(in crate::worker) struct Outstanding {
    counts: std::rc::Rc<[std::cell::Cell<u32>]>,
    endpoint: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        let slot = &self.counts[self.endpoint];
        slot.set(slot.get().saturating_sub(1));
    }
}

/// Picks the endpoint for a request (`key_hash`: its consistent-hash
/// key, if the upstream balances by one), never one the health checks
/// hold down, and counts it in flight until the returned guard drops.
/// With every endpoint down, `when_all_down` refuses
/// (`NoHealthyEndpoint`) or picks among all of them.
///
/// `avoid` (a retry's earlier endpoints, bit i for endpoint i) are passed
/// over while any other endpoint is up. A first try (`avoid == 0`) counts
/// toward the upstream's retry budget.
pub(in crate::worker) fn pick_endpoint(
    generation: &Generation,
    spec: &UpstreamSpec,
    upstream: usize,
    key_hash: Option<u64>,
    avoid: u64,
) -> Result<(usize, Outstanding), Failure> {
    let mut ups = generation.upstreams.borrow_mut();
    let state = &mut ups[upstream];
    // Every endpoint down: the upstream's policy says refuse or fail open.
    let all_down = state.down.iter().all(|d| *d) && !state.down.is_empty();
    let down: &[bool] = match (all_down, spec.when_all_down) {
        (false, _) => &state.down,
        (true, WhenAllDown::FailOpen) => &[],
        (true, WhenAllDown::Refuse) => return Err(Failure::NoHealthyEndpoint),
    };
    let endpoint = if avoid == 0 {
        state.retry_budget.deposit();
        let endpoint = state
            .balancer
            .pick(spec, &state.outstanding, key_hash, down);
        if state.ramping && !all_down {
            slow_start(state, spec, endpoint, key_hash)
        } else {
            endpoint
        }
    } else {
        // A retry: off the hot path, so a mask may be built.
        let masked: Vec<bool> = (0..spec.endpoints.len())
            .map(|i| down.get(i).copied().unwrap_or(false) || (i < 64 && avoid & (1 << i) != 0))
            .collect();
        let mask = if masked.iter().all(|m| *m) {
            down
        } else {
            &masked
        };
        state
            .balancer
            .pick(spec, &state.outstanding, key_hash, mask)
    };
    let slot = &state.outstanding[endpoint];
    slot.set(slot.get() + 1);
    Ok((
        endpoint,
        Outstanding {
            counts: state.outstanding.clone(),
            endpoint,
        },
    ))
}

/// `endpoint`, or another if `endpoint` is in its slow start and this
/// request is not among the share it gets yet.
fn slow_start(
    state: &mut UpstreamState<UpstreamConn>,
    spec: &UpstreamSpec,
    endpoint: usize,
    key_hash: Option<u64>,
) -> usize {
    let random = state.balancer.random();
    if !state.slow_start_declines(spec, endpoint, Instant::now(), random) {
        return endpoint;
    }
    // Held out for this one pick, if another endpoint is up.
    state.down[endpoint] = true;
    let other = if state.down.iter().all(|d| *d) {
        endpoint
    } else {
        state
            .balancer
            .pick(spec, &state.outstanding, key_hash, &state.down)
    };
    state.down[endpoint] = false;
    other
}

/// Keeps the upstream's open connections within this worker's share of
/// `max_connections`: before one more is opened, an idle one (the oldest
/// of the fullest pool) is closed if that limit would be passed. Each
/// request let through holds at most one connection, and no more are let
/// through than the limit, so one is always idle when it is reached.
fn make_room_for_a_connection(generation: &Generation, spec: &UpstreamSpec, upstream: usize) {
    let Some(breaker) = &spec.circuit_breaker else {
        return;
    };
    let limit = breaker.share(generation.snapshot.workers).max_connections as usize;
    // Requests let through, this one included: at most one connection each.
    let in_use = generation.admission[upstream].gate.in_flight();
    let mut ups = generation.upstreams.borrow_mut();
    let pools = &mut ups[upstream].pools;
    let idle: usize = pools.iter().map(|p| p.idle_count()).sum();
    if in_use + idle > limit
        && let Some(fullest) = pools.iter_mut().max_by_key(|p| p.idle_count())
    {
        fullest.close_oldest();
    }
}

/// The client request's consistent-hash key, if `spec` balances by one.
pub(in crate::worker) fn consistent_hash_key(spec: &UpstreamSpec, client: &Client) -> Option<u64> {
    if spec.balance != Balance::ConsistentHash {
        return None;
    }
    match spec.hash_key.as_ref()? {
        HashKey::ClientIp => Some(stable_hash(client.peer_ip.as_bytes())),
        HashKey::Header(name) => client.header(name).map(stable_hash),
    }
}

/// Whether an idle upstream connection has nothing to read: no stray bytes
/// (a body after HEAD/204/304, a confused upstream) and no FIN. One
/// non-blocking peek, whatever the io driver.
fn is_quiet(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local; the fd is owned by `stream`.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && {
        let e = std::io::Error::last_os_error().raw_os_error();
        e == Some(libc::EAGAIN) || e == Some(libc::EWOULDBLOCK)
    }
}

/// A connection to `endpoint`: a quiet pooled one if `allow_pooled`, else
/// a new one (TLS included) within `connect_timeout`, and before
/// `deadline` if one is given; `true` if pooled.
pub(in crate::worker) async fn acquire(
    shard: &Shard,
    generation: &Generation,
    spec: &UpstreamSpec,
    upstream: usize,
    endpoint: usize,
    allow_pooled: bool,
    deadline: Option<Instant>,
) -> Result<(UpstreamConn, bool), Failure> {
    if allow_pooled {
        loop {
            let pooled = generation.upstreams.borrow_mut()[upstream].pools[endpoint]
                .checkout(Instant::now());
            let Some(conn) = pooled else { break };
            if is_quiet(conn.stream.socket()) {
                shard.metrics.reuse();
                return Ok((conn, true));
            }
            // Bytes or a FIN arrived while it sat idle: never hand those to
            // the next request (they would become its answer). Dropped.
        }
    }
    make_room_for_a_connection(generation, spec, upstream);
    let addr = spec.endpoints[endpoint].addr;
    // connect_timeout covers the TCP connect and, over TLS, the handshake.
    let now = Instant::now();
    let within = deadline.map_or(spec.connect_timeout, |d| {
        spec.connect_timeout.min(d.saturating_duration_since(now))
    });
    let deadline = now + within;
    match monoio::time::timeout(within, TcpStream::connect_addr(addr)).await {
        Err(_) => {
            shard.metrics.connect(upstream, endpoint, false);
            Err(Failure::UpstreamConnectTimeout)
        }
        Ok(Err(e)) => {
            shard.metrics.connect(upstream, endpoint, false);
            tracing::debug!(worker = shard.id, %addr, error = %e, "upstream connect failed");
            Err(Failure::UpstreamConnect)
        }
        Ok(Ok(mut stream)) => {
            let _ = stream.set_nodelay(true);
            let Some(tls) = &spec.tls else {
                shard.metrics.connect(upstream, endpoint, true);
                return Ok((UpstreamConn::new(Transport::Plain(stream)), false));
            };
            let name = tls.names[spec.endpoints[endpoint].source].clone();
            // Boxed, like the server side: the handshake's state would
            // otherwise size every request's task.
            let shaken = monoio::time::timeout_at(
                deadline.into(),
                Box::pin(crate::tls::handshake::connect(
                    &mut stream,
                    tls.config.clone(),
                    name,
                    deadline,
                )),
            )
            .await
            .unwrap_or(Err(crate::tls::handshake::HandshakeError::TimedOut));
            match shaken {
                Ok((session, _resumed)) => {
                    shard.metrics.connect(upstream, endpoint, true);
                    let stream = Transport::Tls(Box::new(TlsStream {
                        socket: stream,
                        session,
                    }));
                    Ok((UpstreamConn::new(stream), false))
                }
                Err(e) => {
                    shard.metrics.connect(upstream, endpoint, false);
                    tracing::warn!(worker = shard.id, upstream = %spec.name, %addr, error = %e, "upstream TLS handshake failed");
                    Err(match e {
                        crate::tls::handshake::HandshakeError::TimedOut => {
                            Failure::UpstreamConnectTimeout
                        }
                        _ => Failure::UpstreamConnect,
                    })
                }
            }
        }
    }
}
