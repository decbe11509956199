//! Micro-benchmarks for the rate-limit check: a known key (the hot path:
//! no allocation, no lock), a new key into a full table (eviction), and the
//! bare algorithms.

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ringgate::ratelimit::{Limiter, Rate, TokenBucket, WindowQuota};
use ringgate::snapshot::{LimitKey, LimitKind, LimitScope, RateLimitPolicy};

const S: u64 = 1_000_000_000;

fn policy(max_keys: usize, scope: LimitScope) -> RateLimitPolicy {
    RateLimitPolicy {
        name: "bench".into(),
        scope,
        key: LimitKey::ClientIp,
        default: LimitKind::Bucket {
            rate: Rate {
                tokens: 1_000_000,
                per_nanos: S,
            },
            burst: 1_000_000,
        },
        tier_header: None,
        tiers: vec![],
        headers: true,
        max_keys,
        trusted_proxies: vec![],
    }
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit");
    for (name, scope) in [
        ("check_known_key_10k_keys", LimitScope::Worker),
        // Node scope: the worker's 1/N part of the aggregator's last view.
        ("check_known_key_10k_keys_node_scope", LimitScope::Node),
    ] {
        let p = policy(100_000, scope);
        let mut limiter = Limiter::new(std::slice::from_ref(&p), 1, 4);
        for i in 0..10_000u32 {
            limiter.check(
                0,
                &p,
                format!("10.0.{}.{}", i / 256, i % 256).as_bytes(),
                None,
                0,
            );
        }
        let mut now = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                now += 1000;
                limiter.check(0, &p, black_box(b"10.0.17.42"), None, now)
            })
        });
    }

    let small = policy(1_000, LimitScope::Worker);
    let mut full = Limiter::new(std::slice::from_ref(&small), 1, 1);
    let mut n = 0u64;
    group.bench_function("check_new_key_full_table", |b| {
        b.iter(|| {
            n += 1;
            full.check(0, &small, &n.to_le_bytes(), None, n)
        })
    });

    let rate = Rate {
        tokens: 100,
        per_nanos: S,
    };
    let mut bucket = TokenBucket::full(100, rate, 0);
    let mut t = 0u64;
    group.bench_function("token_bucket_take", |b| {
        b.iter(|| {
            t += 10_000_000;
            bucket.take(black_box(t), rate, 100)
        })
    });
    let mut quota = WindowQuota::new(0, 60 * S);
    let mut q = 0u64;
    group.bench_function("window_quota_take", |b| {
        b.iter(|| {
            q += 1000;
            quota.take(black_box(q), 1_000_000, 60 * S)
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
