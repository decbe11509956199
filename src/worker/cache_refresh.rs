//! [warm] stale-while-revalidate's background refresh (RFC 5861 §3): a
//! request that is answered with a stale cache entry inside its
//! stale-while-revalidate window also starts one refresh of the entry, a
//! task of its own on this worker, so the client never waits for it. The
//! refresh sends the request as the route would have forwarded it, with
//! the entry's validators; a 304 freshens the entry, a storable answer
//! replaces it, an answer that may not be stored drops it, and a failure
//! (5xx, reset, timeout) leaves it to be served stale until its window
//! ends.
//!
//! Bounded: at most `[cache] background_refreshes` run on a worker at
//! once, one per key (the key's fetch is led while it runs, so a miss of
//! the same key waits for it instead of fetching again); a stale hit over
//! the bound is served stale and refreshes later.

use std::rc::Rc;

use bytes::BytesMut;

use crate::metrics::Revalidated;

use super::client::{Client, Exchange};
use super::forward::{build_request_head, consistent_hash_key, pick_endpoint};
use super::phase::RequestCtx;
use super::phase::cache::{Fill, Freshening, plan_capture, unix_now};
use super::phase::response_headers::withheld_from;
use super::shard::{Generation, Shard};
use super::upstream_call;

/// Starts the background refresh of `fill`'s entry for the request in
/// `ctx` (its head still in `client`'s buffer), unless the worker is
/// draining or already runs as many refreshes as it may.
pub fn start(
    ctx: &RequestCtx<'_>,
    upstream: usize,
    client: &Client,
    exchange: &Exchange,
    mut fill: Box<Fill>,
) {
    let shard = ctx.shard;
    let snapshot = ctx.snapshot();
    if shard.draining.get() || shard.cache_refreshes.get() >= snapshot.cache_background_refreshes {
        return;
    }
    let Some(route_index) = exchange.route else {
        return;
    };
    // Lead the key's fetch now, before anything else on this worker runs:
    // a second stale hit sees it and does not start another refresh.
    fill.lead = Some(
        shard
            .cache_fetches
            .lead(shard.cache_fetches.key(0, &fill.key)),
    );
    let spec = &snapshot.upstreams[upstream];
    let Ok((endpoint, in_flight)) = pick_endpoint(
        ctx.generation,
        spec,
        upstream,
        consistent_hash_key(spec, client),
        0,
    ) else {
        // No healthy endpoint: the stale entry serves on.
        return;
    };
    let mut request = BytesMut::with_capacity(1024);
    build_request_head(
        &mut request,
        client,
        ctx.head,
        ctx.route,
        &spec.endpoints[endpoint],
        exchange,
        snapshot,
        fill.revalidate.as_ref(),
    );
    let running = Running::new(shard.clone());
    let generation = ctx.generation.clone();
    monoio::spawn(super::catch::CatchUnwind::new(async move {
        let _in_flight = in_flight;
        let shard = running.0.clone();
        let result = refresh(
            &shard,
            &generation,
            route_index,
            upstream,
            endpoint,
            &request,
            &fill,
        )
        .await;
        shard.metrics.cache_revalidation(true, result);
        drop(running);
    }));
}

/// One refresh: what became of the entry.
async fn refresh(
    shard: &Shard,
    generation: &Generation,
    route_index: usize,
    upstream: usize,
    endpoint: usize,
    request: &[u8],
    fill: &Fill,
) -> Revalidated {
    let route = &generation.snapshot.routes[route_index];
    let Some(rc) = &route.cache else {
        return Revalidated::Failed;
    };
    let answer = match upstream_call::call(
        shard,
        generation,
        upstream,
        endpoint,
        request,
        rc.max_object,
    )
    .await
    {
        Ok(answer) => answer,
        Err(error) => {
            tracing::debug!(worker = shard.id, upstream = %generation.snapshot.upstreams[upstream].name, %error, "background cache refresh failed; the stale entry stays");
            return Revalidated::Failed;
        }
    };
    let now = unix_now();
    if answer.status == 304 && fill.revalidate.is_some() {
        let fresh = Freshening::of(&answer.head, &answer.headers, fill.request_time, now);
        return match fill.freshen(shard, fresh) {
            Some(_) => Revalidated::NotModified,
            None => Revalidated::Failed,
        };
    }
    if answer.status >= 500 || answer.status == 304 {
        return Revalidated::Failed;
    }
    // The variant refreshed is the one the original request negotiated:
    // compressed the same way.
    let (compressible, encoding) = match route.compress.as_deref() {
        Some(policy) => {
            let applies = policy.applies(&crate::policy::compress::AnswerFacts::read(
                answer.status,
                &answer.head,
                &answer.headers,
                Some(answer.body.len() as u64),
            ));
            let encoding = policy
                .negotiate(|| {
                    crate::cache::key::KeyFacts::header_values(
                        &fill.request_head,
                        b"accept-encoding",
                    )
                })
                .filter(|_| applies);
            (applies, encoding.zip(Some(policy)))
        }
        None => (false, None),
    };
    let compressed = match encoding {
        Some((e, policy)) => match policy.compress_whole(e, &answer.body) {
            Ok(body) => Some(body),
            Err(_) => return Revalidated::Failed,
        },
        None => None,
    };
    let body: &[u8] = compressed.as_deref().unwrap_or(&answer.body);
    let capture = plan_capture(
        rc,
        fill,
        answer.status,
        &answer.head,
        &answer.headers,
        Some(body.len() as u64),
        |name| {
            withheld_from(
                &answer.head,
                &answer.headers,
                answer.connection_names_others,
                route,
                name,
            )
        },
        now,
        crate::policy::compress::Shape {
            encoding: encoding.map(|(e, _)| e),
            varies_with_encoding: compressible,
        },
    );
    match capture {
        Some(mut capture) => {
            capture.take(body);
            capture.store(shard);
        }
        // The upstream's answer now may not be stored: neither may the
        // old one be served any longer.
        None => {
            shard.cache.borrow_mut().remove(&fill.key);
        }
    }
    Revalidated::Modified
}

/// Counts a refresh as running on its worker while it lives.
struct Running(Rc<Shard>);

impl Running {
    fn new(shard: Rc<Shard>) -> Running {
        shard.cache_refreshes.set(shard.cache_refreshes.get() + 1);
        Running(shard)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.cache_refreshes.set(self.0.cache_refreshes.get() - 1);
    }
}
