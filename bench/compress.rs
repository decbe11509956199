//! Micro-benchmarks for response compression: a 16 KiB JSON answer
//! compressed whole by a fresh encoder (what each compressed answer costs
//! today: the encoder's state is set up per answer) and fed to an encoder
//! in 4 KiB pieces with a flush between pieces (a streamed answer), for
//! gzip levels 1/4/6 and brotli qualities 1/4/5. Throughput is reported per
//! byte of the uncompressed body, so `µs per KiB` reads straight off.
//!
//! `cargo bench --bench compress`.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringgate::policy::compress::{CompressPolicy, Encoding, TypeMatch};

fn body(n: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    let mut i = 0u64;
    while body.len() < n {
        body.extend_from_slice(
            format!(
                "{{\"id\":{i},\"name\":\"customer {i}\",\"email\":\"user{i}@example.com\",\"plan\":\"{}\",\"active\":{},\"balance\":{}.{:02}}},",
                ["free", "pro", "team"][(i % 3) as usize],
                !i.is_multiple_of(7),
                (i * 7919) % 10_000,
                i % 100
            )
            .as_bytes(),
        );
        i += 1;
    }
    body.truncate(n);
    body
}

fn policy(gzip_level: u32, brotli_quality: u32) -> CompressPolicy {
    CompressPolicy {
        encodings: vec![Encoding::Brotli, Encoding::Gzip].into_boxed_slice(),
        types: vec![TypeMatch::Exact(b"application/json".as_slice().into())].into_boxed_slice(),
        min_size: 0,
        gzip_level,
        brotli_quality,
    }
}

fn compression(c: &mut Criterion) {
    let input = body(16 * 1024);
    let mut group = c.benchmark_group("compress_16KiB_json");
    group.throughput(Throughput::Bytes(input.len() as u64));
    for (label, encoding, level) in [
        ("gzip_1", Encoding::Gzip, 1),
        ("gzip_4", Encoding::Gzip, 4),
        ("gzip_6", Encoding::Gzip, 6),
        ("br_1", Encoding::Brotli, 1),
        ("br_4", Encoding::Brotli, 4),
        ("br_5", Encoding::Brotli, 5),
    ] {
        let p = policy(level.max(1), level);
        group.bench_function(format!("{label}_whole"), |b| {
            b.iter(|| black_box(p.compress_whole(encoding, black_box(&input)).unwrap().len()))
        });
        let mut out = BytesMut::with_capacity(32 * 1024);
        group.bench_function(format!("{label}_streamed_4KiB_flushed"), |b| {
            b.iter(|| {
                out.clear();
                let mut e = p.encoder(encoding);
                for piece in input.chunks(4096) {
                    e.feed(piece, &mut out).unwrap();
                    e.flush(&mut out).unwrap();
                }
                e.finish(&mut out).unwrap();
                black_box(out.len())
            })
        });
        group.bench_function(format!("{label}_encoder_setup_only"), |b| {
            b.iter(|| {
                out.clear();
                let e = p.encoder(encoding);
                e.finish(&mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
