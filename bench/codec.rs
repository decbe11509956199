//! Micro-benchmarks for the HTTP/1.1 codec: head parsing (request and
//! response), head serialization, and chunked decoding.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ringgate::http::{self, ChunkedDecoder, Step, parse_request, parse_response};

const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&cursor=abc HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl\r\n\
X-Request-Id: 7f8e9d0c-1b2a-4c3d-9e8f-0a1b2c3d4e5f\r\n\
Connection: keep-alive\r\n\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 1024\r\n\
Cache-Control: private, max-age=0\r\n\
Date: Tue, 24 Nov 2026 02:00:00 GMT\r\n\
Server: upstream\r\n\
Vary: Accept-Encoding\r\n\r\n";

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(REQUEST.len() as u64));
    let mut headers = Vec::with_capacity(64);
    group.bench_function("request_head_9_headers", |b| {
        b.iter(|| {
            parse_request(black_box(REQUEST), 16 * 1024, 100, &mut headers)
                .unwrap()
                .unwrap()
                .len
        })
    });
    group.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    group.bench_function("response_head_6_headers", |b| {
        b.iter(|| {
            parse_response(black_box(RESPONSE), 16 * 1024, 100, false, &mut headers)
                .unwrap()
                .unwrap()
                .len
        })
    });
    group.finish();
}

fn serialize(c: &mut Criterion) {
    let mut headers = Vec::with_capacity(64);
    let head = parse_response(RESPONSE, 16 * 1024, 100, false, &mut headers)
        .unwrap()
        .unwrap();
    let mut out = BytesMut::with_capacity(4096);
    c.bench_function("serialize/response_head", |b| {
        b.iter(|| {
            out.clear();
            http::write::status_line(&mut out, head.status);
            for h in &headers {
                let name = h.name.get(RESPONSE);
                if !http::is_hop_by_hop_or_framing(name) {
                    http::write::header(&mut out, name, h.value.get(RESPONSE));
                }
            }
            http::write::content_length(&mut out, 1024);
            out.len()
        })
    });
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut group = c.benchmark_group("chunked");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decode_64x1KiB", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            let mut pos = 0;
            let mut data = 0;
            loop {
                match d.step(&body[pos..]).unwrap() {
                    Step::Skip(n) | Step::ChunkEnd(n) => pos += n,
                    Step::ChunkStart { consumed, .. } => pos += consumed,
                    Step::Data(n) => {
                        data += n;
                        pos += n;
                    }
                    Step::End(_) | Step::NeedMore => break,
                }
            }
            data
        })
    });
    group.finish();
}

/// Path normalization as every request pays it: a clean path (the common
/// case: one scan, nothing moves) and a hostile one.
fn normalize(c: &mut Criterion) {
    let options = ringgate::http::NormalizeOptions::default();
    let mut group = c.benchmark_group("normalize_path");
    for (name, path) in [
        ("clean_24B", &b"/api/v1/users/1234/items"[..]),
        ("hostile_40B", b"//api/./v1/%75sers/x/../1234/%7eitems%2e"),
    ] {
        let mut buf = path.to_vec();
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.copy_from_slice(path);
                black_box(ringgate::http::normalize_path(black_box(&mut buf), options))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, serialize, chunked, normalize);
criterion_main!(benches);
