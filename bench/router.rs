//! Micro-benchmarks for route matching over 1 000 routes, balancing picks
//! and pool checkout/checkin.

use std::time::{Duration, Instant};

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ringgate::router::{HostMatch, PathMatch, RequestFacts, RouteMatcher, Router};
use ringgate::snapshot::{Balance, EndpointSpec, UpstreamSpec};
use ringgate::upstream::hash::{build_ring, stable_hash};
use ringgate::upstream::{Balancer, Pool};

struct Facts;

impl RequestFacts for Facts {
    fn method(&self) -> &[u8] {
        b"GET"
    }
    fn has_header_value(&self, _: &[u8], _: &[u8]) -> bool {
        false
    }
}

/// 1 000 routes: 100 services × (4 prefixes, 4 exact paths, 1 method-limited
/// prefix, 1 header-limited prefix) spread over exact hosts, wildcards and
/// any host.
fn thousand_routes() -> Router {
    let mut routes = Vec::new();
    for s in 0..100 {
        let host = match s % 3 {
            0 => HostMatch::Exact(format!("svc{s}.example.com")),
            1 => HostMatch::Suffix(format!(".svc{s}.example.com")),
            _ => HostMatch::Any,
        };
        for p in 0..4 {
            routes.push(RouteMatcher {
                host: host.clone(),
                path: PathMatch::Prefix(format!("/svc{s}/v{p}")),
                methods: vec![],
                headers: vec![],
            });
            routes.push(RouteMatcher {
                host: host.clone(),
                path: PathMatch::Exact(format!("/svc{s}/v{p}/health")),
                methods: vec![],
                headers: vec![],
            });
        }
        routes.push(RouteMatcher {
            host: host.clone(),
            path: PathMatch::Prefix(format!("/svc{s}/admin")),
            methods: vec![b"POST".as_slice().into()],
            headers: vec![],
        });
        routes.push(RouteMatcher {
            host,
            path: PathMatch::Prefix(format!("/svc{s}/canary")),
            methods: vec![],
            headers: vec![(b"x-canary".as_slice().into(), b"1".as_slice().into())],
        });
    }
    assert_eq!(routes.len(), 1000);
    Router::new(routes)
}

fn route_match(c: &mut Criterion) {
    let router = thousand_routes();
    let mut group = c.benchmark_group("route_match_1000_routes");
    group.bench_function("exact_host_prefix", |b| {
        b.iter(|| {
            router.find(
                black_box(b"svc42.example.com"),
                black_box(b"/svc42/v3/users/17"),
                &Facts,
            )
        })
    });
    group.bench_function("wildcard_host_prefix", |b| {
        b.iter(|| {
            router.find(
                black_box(b"eu.svc43.example.com"),
                black_box(b"/svc43/v1/items"),
                &Facts,
            )
        })
    });
    group.bench_function("any_host_exact_path", |b| {
        b.iter(|| {
            router.find(
                black_box(b"whatever.org"),
                black_box(b"/svc44/v2/health"),
                &Facts,
            )
        })
    });
    group.bench_function("no_match", |b| {
        b.iter(|| router.find(black_box(b"x.org"), black_box(b"/nothing/here"), &Facts))
    });
    group.finish();
}

fn upstream(n: usize, balance: Balance) -> UpstreamSpec {
    let endpoints: Vec<EndpointSpec> = (0..n)
        .map(|i| EndpointSpec {
            addr: format!("10.0.0.{i}:80").parse().unwrap(),
            weight: 1 + (i as u32 % 3),
            authority: b"x".as_slice().into(),
            source: i,
        })
        .collect();
    let ring = build_ring(
        &endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.weight))
            .collect::<Vec<_>>(),
    );
    UpstreamSpec {
        name: "b".into(),
        endpoints,
        balance,
        hash_key: None,
        hash_ring: ring,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        pool_max_idle: 64,
        pool_idle_timeout: Duration::from_secs(60),
        tls: None,
        health_check: None,
        when_all_down: ringgate::snapshot::WhenAllDown::Refuse,
        retry_budget: Default::default(),
        outlier_detection: None,
        circuit_breaker: None,
        sources: Vec::new(),
        resolve_interval: std::time::Duration::ZERO,
        slow_start: std::time::Duration::ZERO,
    }
}

fn balancing(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance_pick_8_endpoints");
    let outstanding = [3u32, 1, 4, 1, 5, 9, 2, 6].map(std::cell::Cell::new);
    for (name, policy) in [
        ("round_robin", Balance::RoundRobin),
        ("weighted_round_robin", Balance::WeightedRoundRobin),
        ("least_outstanding", Balance::LeastOutstanding),
        ("power_of_two", Balance::PowerOfTwo),
        ("consistent_hash", Balance::ConsistentHash),
    ] {
        let spec = upstream(8, policy);
        let mut balancer = Balancer::new(&spec, 1);
        let key = stable_hash(b"user-12345");
        group.bench_function(name, |b| {
            b.iter(|| balancer.pick(&spec, black_box(&outstanding), Some(key), &[]))
        });
    }
    group.finish();
}

fn pool(c: &mut Criterion) {
    let mut pool: Pool<u64> = Pool::new(64, Duration::from_secs(60));
    let now = Instant::now();
    for i in 0..32 {
        pool.checkin(i, now);
    }
    c.bench_function("pool/checkout_checkin", |b| {
        b.iter(|| {
            let conn = pool.checkout(now).unwrap();
            pool.checkin(black_box(conn), now);
        })
    });
}

criterion_group!(benches, route_match, balancing, pool);
criterion_main!(benches);
