//! [hot] The upstream's circuit breaker, on this worker's share of its
//! limits (`upstream::breaker`): a request is let through while fewer
//! than `max_requests` (and `max_connections`) are; otherwise it waits in
//! the worker's FIFO queue, if fewer than `max_pending` wait, for at most
//! `queue_timeout`, and else gets 503 with `Retry-After`. A queued request
//! whose client goes away leaves the queue (and is never sent upstream).
//! Retries are capped by `max_retries` under way at once.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::failure::Failure;
use crate::snapshot::UpstreamSpec;
use crate::transport::Transport;

use super::super::gate::Slot;
use super::super::phase::RequestCtx;

/// How often a queued request looks whether its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(50);

/// Why a request was not let through.
pub(super) enum Refused {
    /// Answer with this (503).
    Failure(Failure),
    /// The client went away while queued: nothing to answer.
    ClientGone,
}

/// Lets the request through `spec`'s circuit breaker, waiting in the
/// queue if it must. `Ok(None)`: the upstream has no breaker.
pub(super) async fn admit<'a>(
    ctx: &RequestCtx<'a>,
    spec: &UpstreamSpec,
    upstream: usize,
    client: &Transport,
) -> Result<Option<Slot<'a>>, Refused> {
    let Some(breaker) = &spec.circuit_breaker else {
        return Ok(None);
    };
    let generation: &'a super::super::shard::Generation = ctx.generation;
    let share = breaker.share(ctx.snapshot().workers);
    let gate = &generation.admission[upstream].gate;
    let max = share.admitted();
    if gate.in_flight() < max && gate.queued() == 0 {
        let (slot, _) = gate.acquire(max).await;
        return Ok(Some(slot));
    }
    let metrics = &ctx.shard.metrics;
    if gate.queued() >= share.max_pending as usize {
        metrics.breaker(upstream, |b| b.refused_queue_full += 1);
        return Err(Refused::Failure(Failure::UpstreamOverloaded));
    }
    let queued_at = Instant::now();
    let deadline = queued_at + breaker.queue_timeout;
    let mut waiting = gate.acquire(max);
    let outcome = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            metrics.breaker(upstream, |b| b.refused_queue_timeout += 1);
            break Err(Refused::Failure(Failure::UpstreamOverloaded));
        }
        match monoio::time::timeout(remaining.min(CLIENT_CHECK), &mut waiting).await {
            Ok((slot, _)) => break Ok(Some(slot)),
            Err(_) if client_gone(client) => {
                metrics.breaker(upstream, |b| b.abandoned += 1);
                break Err(Refused::ClientGone);
            }
            Err(_) => {}
        }
    };
    let waited = queued_at.elapsed().as_micros() as u64;
    metrics.breaker(upstream, |b| {
        b.queued += 1;
        b.queue_wait_us += waited;
    });
    outcome
}

/// Whether the client closed its side or broke the connection: one
/// non-blocking peek (bytes waiting, a pipelined request, mean it is there).
fn client_gone(client: &Transport) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local; the fd is owned by `client`.
    let n = unsafe {
        libc::recv(
            client.socket().as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n > 0 {
        return false;
    }
    if n == 0 {
        return true;
    }
    let e = std::io::Error::last_os_error().raw_os_error();
    !(e == Some(libc::EAGAIN) || e == Some(libc::EWOULDBLOCK) || e == Some(libc::EINTR))
}

/// A retry under way, counted against `max_retries` until dropped.
pub(super) struct RetryPlace<'a>(&'a Cell<u32>);

impl Drop for RetryPlace<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A place for one more retry to `upstream`, if its breaker has room
/// (always, without a breaker).
pub(super) fn retry_place<'a>(
    ctx: &RequestCtx<'a>,
    spec: &UpstreamSpec,
    upstream: usize,
) -> Option<Option<RetryPlace<'a>>> {
    let Some(breaker) = &spec.circuit_breaker else {
        return Some(None);
    };
    let generation: &'a super::super::shard::Generation = ctx.generation;
    let under_way = &generation.admission[upstream].retries;
    if under_way.get() >= breaker.share(ctx.snapshot().workers).max_retries {
        ctx.shard
            .metrics
            .breaker(upstream, |b| b.retries_refused += 1);
        return None;
    }
    under_way.set(under_way.get() + 1);
    Some(Some(RetryPlace(under_way)))
}
