//! [cold] Merging worker reports and writing the Prometheus text format.

use std::fmt::Write;

use hdrhistogram::Histogram;

use super::names::*;
use super::{CLASSES, METHODS, WorkerReport};
use crate::failure::Failure;
use crate::snapshot::Snapshot;

/// Escapes a label value (backslash, double quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One series per endpoint, `name{upstream,endpoint} value`, under its
/// HELP and TYPE lines; nothing for no rows. For the health and outlier
/// boards, which keep their own per-endpoint rows.
pub fn endpoint_series(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (String, std::net::SocketAddr, u64)>,
) {
    let mut rows = rows.into_iter().peekable();
    if rows.peek().is_none() {
        return;
    }
    header(out, name, kind, help);
    for (upstream, endpoint, value) in rows {
        let _ = writeln!(
            out,
            "{name}{{upstream=\"{}\",endpoint=\"{endpoint}\"}} {value}",
            label(&upstream)
        );
    }
}

fn histogram(out: &mut String, name: &str, help: &str, hist: &Histogram<u64>, sum_us: u64) {
    header(out, name, "histogram", help);
    for le in LATENCY_BUCKETS {
        let micros = (le * 1e6) as u64;
        let count = if hist.is_empty() {
            0
        } else {
            hist.count_between(0, micros)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", hist.len());
    let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {}", hist.len());
}

/// Renders merged metrics. Reports whose tables were sized for another
/// snapshot (a reload raced the scrape) are skipped for per-route and
/// per-endpoint series.
pub fn render_prometheus(snapshot: &Snapshot, reports: &[WorkerReport]) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let routes = snapshot.routes.len();
    let row = METHODS.len() * CLASSES;

    header(
        &mut out,
        REQUESTS,
        "counter",
        "Requests answered, by route, method and status class.",
    );
    let mut by_route = vec![0u64; (routes + 1) * row];
    let table_len = by_route.len();
    for r in reports.iter().filter(|r| r.by_route.len() == table_len) {
        for (total, v) in by_route.iter_mut().zip(&r.by_route) {
            *total += v;
        }
    }
    for route in 0..=routes {
        let name = if route == routes {
            ""
        } else {
            snapshot.routes[route].name.as_str()
        };
        for (m, method) in METHODS.iter().enumerate() {
            for class in 1..CLASSES {
                let v = by_route[(route * METHODS.len() + m) * CLASSES + class];
                if v > 0 {
                    let _ = writeln!(
                        out,
                        "{REQUESTS}{{route=\"{}\",method=\"{method}\",class=\"{class}xx\"}} {v}",
                        label(name)
                    );
                }
            }
        }
    }

    let mut request_latency = None::<Histogram<u64>>;
    let mut upstream_latency = None::<Histogram<u64>>;
    for r in reports {
        match &mut request_latency {
            None => request_latency = Some(r.request_latency.clone()),
            Some(h) => {
                let _ = h.add(&r.request_latency);
            }
        }
        match &mut upstream_latency {
            None => upstream_latency = Some(r.upstream_latency.clone()),
            Some(h) => {
                let _ = h.add(&r.upstream_latency);
            }
        }
    }
    if let (Some(req), Some(up)) = (&request_latency, &upstream_latency) {
        let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
        histogram(
            &mut out,
            REQUEST_DURATION,
            "Time from a complete request head to the end of the response.",
            req,
            sum(|r| r.request_latency_sum_us),
        );
        histogram(
            &mut out,
            UPSTREAM_DURATION,
            "Time from sending a request upstream to its response head.",
            up,
            sum(|r| r.upstream_latency_sum_us),
        );
    }

    let total = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    header(
        &mut out,
        BYTES_RECEIVED,
        "counter",
        "Bytes received from clients.",
    );
    let _ = writeln!(out, "{BYTES_RECEIVED} {}", total(|r| r.bytes_received));
    header(&mut out, BYTES_SENT, "counter", "Bytes sent to clients.");
    let _ = writeln!(out, "{BYTES_SENT} {}", total(|r| r.bytes_sent));

    header(
        &mut out,
        CONNECTIONS_OPEN,
        "gauge",
        "Open client connections, per worker.",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{CONNECTIONS_OPEN}{{worker=\"{}\"}} {}",
            r.worker, r.open_connections
        );
    }
    if snapshot.upstreams.iter().any(|u| u.health_check.is_some()) {
        header(
            &mut out,
            WORKER_ENDPOINTS_DOWN,
            "gauge",
            "Endpoints the worker holds out of traffic, as the health prober last told it.",
        );
        for r in reports {
            let _ = writeln!(
                out,
                "{WORKER_ENDPOINTS_DOWN}{{worker=\"{}\"}} {}",
                r.worker, r.endpoints_down
            );
        }
    }
    header(
        &mut out,
        CONNECTIONS_ACCEPTED,
        "counter",
        "Client connections accepted, per worker.",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{CONNECTIONS_ACCEPTED}{{worker=\"{}\"}} {}",
            r.worker, r.connections_accepted
        );
    }
    header(
        &mut out,
        CONNECTIONS_REFUSED,
        "counter",
        "Client connections closed at once because the worker was at max_connections_per_worker.",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{CONNECTIONS_REFUSED}{{worker=\"{}\"}} {}",
            r.worker, r.connections_refused
        );
    }
    header(
        &mut out,
        WORKER_REQUESTS,
        "counter",
        "Requests read, per worker (shows how SO_REUSEPORT spreads load).",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{WORKER_REQUESTS}{{worker=\"{}\"}} {}",
            r.worker, r.requests
        );
    }

    header(
        &mut out,
        REJECTED,
        "counter",
        "Requests answered with an error by the gateway, by reason and status.",
    );
    for f in Failure::ALL {
        let v: u64 = reports.iter().map(|r| r.failures[f.index()]).sum();
        let _ = writeln!(
            out,
            "{REJECTED}{{reason=\"{}\",status=\"{}\"}} {v}",
            f.code(),
            f.status()
        );
    }
    header(
        &mut out,
        UPSTREAM_TIMEOUTS,
        "counter",
        "Upstream timeouts, by kind.",
    );
    for (kind, f) in [
        ("connect", Failure::UpstreamConnectTimeout),
        ("response", Failure::UpstreamTimeout),
    ] {
        let v: u64 = reports.iter().map(|r| r.failures[f.index()]).sum();
        let _ = writeln!(out, "{UPSTREAM_TIMEOUTS}{{kind=\"{kind}\"}} {v}");
    }
    header(
        &mut out,
        RATE_LIMIT_DECISIONS,
        "counter",
        "Rate-limit checks, by policy and decision.",
    );
    for (i, policy) in snapshot.rate_limits.iter().enumerate() {
        for (d, decision) in ["allowed", "limited"].iter().enumerate() {
            let v: u64 = reports
                .iter()
                .filter_map(|r| r.policies.get(i))
                .map(|c| c[d])
                .sum();
            let _ = writeln!(
                out,
                "{RATE_LIMIT_DECISIONS}{{policy=\"{}\",decision=\"{decision}\"}} {v}",
                label(&policy.name)
            );
        }
    }
    header(
        &mut out,
        COMPRESSED,
        "counter",
        "Answers compressed by the gateway, by encoding.",
    );
    for (i, encoding) in ["gzip", "br"].iter().enumerate() {
        let v: u64 = reports.iter().map(|r| r.compressed[i]).sum();
        let _ = writeln!(out, "{COMPRESSED}{{encoding=\"{encoding}\"}} {v}");
    }
    header(
        &mut out,
        AGGREGATE_BACKENDS,
        "counter",
        "Backend calls of aggregate routes, by result.",
    );
    for (i, result) in crate::worker::aggregate::BACKEND_RESULTS.iter().enumerate() {
        let v: u64 = reports.iter().map(|r| r.aggregate_backends[i]).sum();
        let _ = writeln!(out, "{AGGREGATE_BACKENDS}{{result=\"{result}\"}} {v}");
    }
    header(
        &mut out,
        AGGREGATE_ANSWERS,
        "counter",
        "Answers of aggregate routes, by outcome.",
    );
    for (i, outcome) in crate::worker::aggregate::ANSWERS.iter().enumerate() {
        let v: u64 = reports.iter().map(|r| r.aggregate_answers[i]).sum();
        let _ = writeln!(out, "{AGGREGATE_ANSWERS}{{outcome=\"{outcome}\"}} {v}");
    }
    header(
        &mut out,
        TUNNELS_OPEN,
        "gauge",
        "Upgrade (WebSocket) tunnels open, by worker.",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{TUNNELS_OPEN}{{worker=\"{}\"}} {}",
            r.worker, r.tunnels_open
        );
    }
    header(
        &mut out,
        TUNNELS_CLOSED,
        "counter",
        "Upgrade tunnels ended, by why.",
    );
    for (i, reason) in crate::metrics::TUNNEL_ENDS.iter().enumerate() {
        let v: u64 = reports.iter().map(|r| r.tunnel_ends[i]).sum();
        let _ = writeln!(out, "{TUNNELS_CLOSED}{{reason=\"{reason}\"}} {v}");
    }
    header(
        &mut out,
        IP_RULE_DECISIONS,
        "counter",
        "Requests an IP rule judged, by rule and decision.",
    );
    for (i, rule) in snapshot.ip_rules.iter().enumerate() {
        for (d, decision) in ["admitted", "refused"].iter().enumerate() {
            let v: u64 = reports
                .iter()
                .filter_map(|r| r.ip_rules.get(i))
                .map(|c| c[d])
                .sum();
            let _ = writeln!(
                out,
                "{IP_RULE_DECISIONS}{{rule=\"{}\",decision=\"{decision}\"}} {v}",
                label(&rule.name)
            );
        }
    }
    header(
        &mut out,
        CORS_REQUESTS,
        "counter",
        "Requests with an Origin a CORS policy judged, by policy and outcome.",
    );
    for (i, policy) in snapshot.cors.iter().enumerate() {
        for (o, outcome) in crate::metrics::CORS_OUTCOMES.iter().enumerate() {
            let v: u64 = reports
                .iter()
                .filter_map(|r| r.cors.get(i))
                .map(|c| c[o])
                .sum();
            let _ = writeln!(
                out,
                "{CORS_REQUESTS}{{policy=\"{}\",outcome=\"{outcome}\"}} {v}",
                label(&policy.name)
            );
        }
    }
    header(
        &mut out,
        AUTH_DECISIONS,
        "counter",
        "What authentication providers made of requests, by provider and outcome.",
    );
    for (i, provider) in snapshot.auth.iter().enumerate() {
        for (o, outcome) in crate::auth::OUTCOMES.iter().enumerate() {
            let v: u64 = reports
                .iter()
                .filter_map(|r| r.auth.get(i))
                .map(|c| c[o])
                .sum();
            let _ = writeln!(
                out,
                "{AUTH_DECISIONS}{{provider=\"{}\",outcome=\"{outcome}\"}} {v}",
                label(&provider.name)
            );
        }
    }

    if snapshot
        .auth
        .iter()
        .any(|p| matches!(p.kind, crate::auth::ProviderKind::Introspection(_)))
    {
        header(
            &mut out,
            INTROSPECTION_CALLS,
            "counter",
            "Token introspection calls by provider and result (error: unreachable, timed out, error status or not an answer).",
        );
    }
    for (i, provider) in snapshot.auth.iter().enumerate() {
        if !matches!(provider.kind, crate::auth::ProviderKind::Introspection(_)) {
            continue;
        }
        for (r, result) in crate::auth::introspection::CALL_RESULTS.iter().enumerate() {
            let v: u64 = reports
                .iter()
                .filter_map(|rep| rep.introspection.get(i))
                .map(|c| c[r])
                .sum();
            let _ = writeln!(
                out,
                "{INTROSPECTION_CALLS}{{provider=\"{}\",result=\"{result}\"}} {v}",
                label(&provider.name)
            );
        }
    }

    if snapshot.routes.iter().any(|r| r.cache.is_some()) {
        header(
            &mut out,
            CACHE_REQUESTS,
            "counter",
            "Response cache lookups by result (hit: answered from the cache; miss: fetched; bypass: a request the cache does not handle; stale: a stale answer served, because the upstream failed (stale-if-error) or while it is refreshed (stale-while-revalidate)), per worker.",
        );
        for r in reports {
            for (i, result) in ["hit", "miss", "bypass", "stale"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{CACHE_REQUESTS}{{worker=\"{}\",result=\"{result}\"}} {}",
                    r.worker, r.cache[i]
                );
            }
        }
        header(
            &mut out,
            CACHE_COALESCED,
            "counter",
            "Cache misses that waited for another request's fetch of the same key (coalescing), per worker.",
        );
        for r in reports {
            let _ = writeln!(
                out,
                "{CACHE_COALESCED}{{worker=\"{}\"}} {}",
                r.worker, r.cache[4]
            );
        }
        header(
            &mut out,
            CACHE_REVALIDATIONS,
            "counter",
            "Revalidations of stale cache entries with the upstream, by mode (foreground: for a waiting client; background: stale-while-revalidate) and result (not_modified: 304, entry freshened; modified: replaced by a full answer; failed: no usable answer), per worker.",
        );
        for r in reports {
            for (i, mode) in ["foreground", "background"].iter().enumerate() {
                for (j, result) in ["not_modified", "modified", "failed"].iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{CACHE_REVALIDATIONS}{{worker=\"{}\",mode=\"{mode}\",result=\"{result}\"}} {}",
                        r.worker,
                        r.cache_revalidations[i * 3 + j]
                    );
                }
            }
        }
        for (i, (name, kind, help)) in [
            (
                CACHE_OBJECTS,
                "gauge",
                "Responses stored in the worker's cache shard.",
            ),
            (
                CACHE_BYTES,
                "gauge",
                "Bytes the worker's cache shard holds (keys, heads, bodies, bookkeeping).",
            ),
            (
                CACHE_EVICTIONS,
                "counter",
                "Responses evicted from the worker's cache shard to stay within its memory.",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            header(&mut out, name, kind, help);
            for r in reports {
                let _ = writeln!(
                    out,
                    "{name}{{worker=\"{}\"}} {}",
                    r.worker, r.cache_store[i]
                );
            }
        }
    }
    if snapshot.top_consumers > 0 {
        header(
            &mut out,
            CONSUMER_REQUESTS,
            "counter",
            "Requests of the heaviest consumers (admin.top_consumers of them; a newcomer's count may be overstated by the one it displaced).",
        );
        let per_worker: Vec<Vec<(Box<str>, u64)>> =
            reports.iter().map(|r| r.consumers.clone()).collect();
        for (name, count) in super::consumers::merge_top(&per_worker, snapshot.top_consumers) {
            let _ = writeln!(
                out,
                "{CONSUMER_REQUESTS}{{consumer=\"{}\"}} {count}",
                label(&name)
            );
        }
    }

    let endpoint_series =
        |out: &mut String,
         name: &str,
         value: &dyn Fn(&WorkerReport, usize, usize) -> Option<u64>| {
            for (u, spec) in snapshot.upstreams.iter().enumerate() {
                for (e, endpoint) in spec.endpoints.iter().enumerate() {
                    let v: u64 = reports.iter().filter_map(|r| value(r, u, e)).sum();
                    let _ = writeln!(
                        out,
                        "{name}{{upstream=\"{}\",endpoint=\"{}\"}} {v}",
                        label(&spec.name),
                        endpoint.addr
                    );
                }
            }
        };
    header(
        &mut out,
        UPSTREAM_CREATED,
        "counter",
        "Upstream connections opened.",
    );
    endpoint_series(&mut out, UPSTREAM_CREATED, &|r, u, e| {
        r.endpoints.get(u)?.get(e).map(|c| c.connects)
    });
    header(
        &mut out,
        UPSTREAM_FAILED,
        "counter",
        "Upstream connection attempts that failed or timed out.",
    );
    endpoint_series(&mut out, UPSTREAM_FAILED, &|r, u, e| {
        r.endpoints.get(u)?.get(e).map(|c| c.connect_failures)
    });
    header(
        &mut out,
        UPSTREAM_ENDPOINT_RETRIES,
        "counter",
        "Failed tries on the endpoint that a route's retry policy tried again.",
    );
    endpoint_series(&mut out, UPSTREAM_ENDPOINT_RETRIES, &|r, u, e| {
        r.endpoints.get(u)?.get(e).map(|c| c.retried)
    });
    header(
        &mut out,
        UPSTREAM_RETRY_BUDGET_EXHAUSTED,
        "counter",
        "Failed tries on the endpoint not retried because the upstream's retry budget was spent.",
    );
    endpoint_series(&mut out, UPSTREAM_RETRY_BUDGET_EXHAUSTED, &|r, u, e| {
        r.endpoints.get(u)?.get(e).map(|c| c.budget_refused)
    });
    // Circuit breakers, for the upstreams that have one.
    let breaker_series =
        |out: &mut String,
         name: &str,
         extra: &str,
         value: &dyn Fn(&crate::metrics::BreakerCounts) -> u64| {
            for (u, spec) in snapshot.upstreams.iter().enumerate() {
                if spec.circuit_breaker.is_none() {
                    continue;
                }
                let v: u64 = reports
                    .iter()
                    .filter_map(|r| r.breakers.get(u).map(value))
                    .sum();
                let _ = writeln!(
                    out,
                    "{name}{{upstream=\"{}\"{extra}}} {v}",
                    label(&spec.name)
                );
            }
        };
    if snapshot
        .upstreams
        .iter()
        .any(|u| u.circuit_breaker.is_some())
    {
        header(
            &mut out,
            BREAKER_QUEUE_LENGTH,
            "gauge",
            "Requests waiting for room under the upstream's circuit breaker.",
        );
        breaker_series(&mut out, BREAKER_QUEUE_LENGTH, "", &|b| b.queue_length);
        header(
            &mut out,
            BREAKER_QUEUED,
            "counter",
            "Requests that waited in the upstream's queue.",
        );
        breaker_series(&mut out, BREAKER_QUEUED, "", &|b| b.queued);
        header(
            &mut out,
            BREAKER_QUEUE_WAIT,
            "counter",
            "Time requests spent in the upstream's queue, summed.",
        );
        for (u, spec) in snapshot.upstreams.iter().enumerate() {
            if spec.circuit_breaker.is_none() {
                continue;
            }
            let us: u64 = reports
                .iter()
                .filter_map(|r| r.breakers.get(u).map(|b| b.queue_wait_us))
                .sum();
            let _ = writeln!(
                out,
                "{BREAKER_QUEUE_WAIT}{{upstream=\"{}\"}} {:.6}",
                label(&spec.name),
                us as f64 / 1e6
            );
        }
        header(
            &mut out,
            BREAKER_TRIPS,
            "counter",
            "Requests refused (queue full, queue timeout: 503) and retries not made, by the limit that tripped.",
        );
        breaker_series(&mut out, BREAKER_TRIPS, ",limit=\"queue_full\"", &|b| {
            b.refused_queue_full
        });
        breaker_series(&mut out, BREAKER_TRIPS, ",limit=\"queue_timeout\"", &|b| {
            b.refused_queue_timeout
        });
        breaker_series(&mut out, BREAKER_TRIPS, ",limit=\"max_retries\"", &|b| {
            b.retries_refused
        });
        header(
            &mut out,
            BREAKER_ABANDONED,
            "counter",
            "Clients that went away while their request waited in the queue.",
        );
        breaker_series(&mut out, BREAKER_ABANDONED, "", &|b| b.abandoned);
    }
    header(
        &mut out,
        UPSTREAM_IDLE,
        "gauge",
        "Idle pooled upstream connections.",
    );
    endpoint_series(&mut out, UPSTREAM_IDLE, &|r, u, e| {
        r.pools.get(u)?.get(e).map(|p| p.idle)
    });
    header(
        &mut out,
        UPSTREAM_ACTIVE,
        "gauge",
        "Requests in flight to each endpoint.",
    );
    endpoint_series(&mut out, UPSTREAM_ACTIVE, &|r, u, e| {
        r.pools.get(u)?.get(e).map(|p| p.in_flight)
    });
    header(
        &mut out,
        UPSTREAM_REUSED,
        "counter",
        "Requests sent on a pooled (reused) upstream connection.",
    );
    let _ = writeln!(out, "{UPSTREAM_REUSED} {}", total(|r| r.upstream_reuses));
    header(
        &mut out,
        UPSTREAM_RETRIES,
        "counter",
        "Retries: after a stale pooled connection, or by a route's retry policy.",
    );
    let _ = writeln!(out, "{UPSTREAM_RETRIES} {}", total(|r| r.upstream_retries));
    header(
        &mut out,
        PANICS,
        "counter",
        "Connection tasks that panicked (the worker kept serving).",
    );
    let _ = writeln!(out, "{PANICS} {}", total(|r| r.panics));
    render_tls(&mut out, snapshot, reports);
    out
}

fn render_tls(out: &mut String, snapshot: &Snapshot, reports: &[WorkerReport]) {
    let tls_listeners: Vec<_> = snapshot
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (l.addr, t)))
        .collect();
    if tls_listeners.is_empty() {
        return;
    }
    let total = |f: &dyn Fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    header(
        out,
        TLS_HANDSHAKES,
        "counter",
        "TLS handshakes completed, full or resumed.",
    );
    for (i, kind) in ["full", "resumed"].iter().enumerate() {
        let _ = writeln!(
            out,
            "{TLS_HANDSHAKES}{{kind=\"{kind}\"}} {}",
            total(&|r| r.tls_handshakes[i])
        );
    }
    header(
        out,
        TLS_HANDSHAKE_FAILURES,
        "counter",
        "TLS handshakes that failed, by reason.",
    );
    for (i, reason) in crate::tls::handshake::HANDSHAKE_FAILURES.iter().enumerate() {
        let _ = writeln!(
            out,
            "{TLS_HANDSHAKE_FAILURES}{{reason=\"{reason}\"}} {}",
            total(&|r| r.tls_handshake_failures[i])
        );
    }
    header(
        out,
        TLS_HANDSHAKES_QUEUED,
        "counter",
        "TLS handshakes that waited for a slot (max_handshakes_in_flight per worker).",
    );
    let _ = writeln!(
        out,
        "{TLS_HANDSHAKES_QUEUED} {}",
        total(&|r| r.tls_handshakes_queued)
    );
    header(
        out,
        TLS_CERT_EXPIRY,
        "gauge",
        "Seconds until each served certificate expires (negative once expired).",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (addr, tls) in tls_listeners {
        for site in tls.sites() {
            for cert in &site.certificates {
                let _ = writeln!(
                    out,
                    "{TLS_CERT_EXPIRY}{{listener=\"{addr}\",certificate=\"{}\",subject=\"{}\"}} {}",
                    label(&cert.path),
                    label(&cert.facts.subject),
                    cert.facts.expires_in(now)
                );
            }
        }
    }
}

/// The rate-limit aggregator's own figures (node and cluster scope).
pub fn render_limit_sync(stats: &crate::ratelimit::aggregator::Stats) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    use super::names;
    let tick = names::LIMIT_SYNC_TICK;
    let _ = writeln!(
        out,
        "# HELP {tick} Time the aggregator spent on one sync tick (charging reports, publishing views).\n# TYPE {tick} histogram"
    );
    for (bound, count) in crate::ratelimit::aggregator::TICK_BUCKETS
        .iter()
        .zip(&stats.tick_buckets)
    {
        let _ = writeln!(
            out,
            "{tick}_bucket{{le=\"{bound}\"}} {}",
            count.load(Relaxed)
        );
    }
    let ticks = stats.ticks.load(Relaxed);
    let _ = writeln!(out, "{tick}_bucket{{le=\"+Inf\"}} {ticks}");
    let _ = writeln!(
        out,
        "{tick}_sum {}\n{tick}_count {ticks}",
        stats.tick_nanos_sum.load(Relaxed) as f64 / 1e9
    );
    for (name, kind, help, value) in [
        (
            names::LIMIT_SYNC_KEYS,
            "gauge",
            "Keys of node- and cluster-scope limits the aggregator tracks.",
            stats.keys.load(Relaxed),
        ),
        (
            names::REDIS_ERRORS,
            "counter",
            "Redis sync rounds that failed (connect, auth, I/O, timeout or reply).",
            stats.redis_errors.load(Relaxed),
        ),
        (
            names::REDIS_UP,
            "gauge",
            "1 while the last Redis sync round succeeded.",
            stats.redis_up.load(Relaxed),
        ),
        (
            names::CLUSTER_NODES,
            "gauge",
            "Nodes sharing cluster-scope limits, as last seen in Redis.",
            stats.cluster_nodes.load(Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

/// The JWKS fetcher's state: fetches by outcome, keys held, last success.
pub fn render_jwks(sources: &[crate::auth::jwks::SourceStatus]) -> String {
    use super::names::{JWKS_FETCHES, JWKS_KEYS, JWKS_LAST_SUCCESS};
    use std::fmt::Write;
    let mut out = String::new();
    if sources.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "# HELP {JWKS_FETCHES} JWKS fetches by provider and outcome (error: the last good keys stay in use).\n# TYPE {JWKS_FETCHES} counter"
    );
    for s in sources {
        let p = &s.provider;
        let _ = writeln!(
            out,
            "{JWKS_FETCHES}{{provider=\"{p}\",outcome=\"ok\"}} {}\n{JWKS_FETCHES}{{provider=\"{p}\",outcome=\"error\"}} {}",
            s.fetches_ok, s.fetches_failed
        );
    }
    let _ = writeln!(
        out,
        "# HELP {JWKS_KEYS} Signing keys in use from the provider's JWKS.\n# TYPE {JWKS_KEYS} gauge"
    );
    for s in sources {
        let _ = writeln!(out, "{JWKS_KEYS}{{provider=\"{}\"}} {}", s.provider, s.keys);
    }
    let _ = writeln!(
        out,
        "# HELP {JWKS_LAST_SUCCESS} Unix time of the provider's last good JWKS fetch (0: none yet).\n# TYPE {JWKS_LAST_SUCCESS} gauge"
    );
    for s in sources {
        let _ = writeln!(
            out,
            "{JWKS_LAST_SUCCESS}{{provider=\"{}\"}} {}",
            s.provider, s.last_success
        );
    }
    out
}
