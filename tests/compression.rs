//! Response compression end to end: gzip and brotli negotiated from
//! Accept-Encoding, the bodies decoded by the test and compared with what
//! the upstream sent (by length, chunked, until close, for an HTTP/1.0
//! client), ETags weakened, Vary and the framing headers right; the cases
//! that must pass untouched (already encoded, a type not listed, under the
//! minimum size, no-transform, a range, HEAD, a client that accepts
//! neither); and the cache keeping one variant per encoding, compressed.

mod common;

use std::io::Read;

use common::{Gateway, Reply, Response, Upstream, config, drivers, request};

/// A JSON body of `n` bytes or so, compressible like real API answers.
fn json(n: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    let mut i = 0;
    while body.len() < n {
        body.extend_from_slice(
            format!("{{\"id\":{i},\"name\":\"item {i}\",\"tags\":[\"a\",\"b\"]}},").as_bytes(),
        );
        i += 1;
    }
    body.push(b']');
    body
}

fn decode(r: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    match r.header("content-encoding") {
        Some("gzip") => flate2::read::GzDecoder::new(&r.body[..])
            .read_to_end(&mut out)
            .unwrap(),
        Some("br") => brotli::Decompressor::new(&r.body[..], 4096)
            .read_to_end(&mut out)
            .unwrap(),
        None => return r.body.clone(),
        Some(other) => panic!("unexpected encoding {other}"),
    };
    out
}

fn get(addr: std::net::SocketAddr, path: &str, accept: Option<&str>) -> Response {
    let ae = accept.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{ae}\r\n").as_bytes(),
    )
}

fn has_vary_accept_encoding(r: &Response) -> bool {
    r.headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("vary") && v.to_ascii_lowercase().contains("accept-encoding")
    })
}

fn upstream() -> Upstream {
    Upstream::start("app", |req| {
        let body = json(20_000);
        let typed = |ct: &str, extra: &[(&str, &str)]| {
            let mut headers = vec![("Content-Type".to_string(), ct.to_string())];
            headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
            headers
        };
        match req.target.as_str() {
            "/json" => Reply::Ok(
                200,
                typed(
                    "application/json; charset=utf-8",
                    &[
                        ("ETag", "\"v1\""),
                        ("Accept-Ranges", "bytes"),
                        ("Cache-Control", "max-age=60"),
                    ],
                ),
                body,
            ),
            "/chunked" => {
                let mut raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                for piece in body.chunks(3000) {
                    raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    raw.extend_from_slice(piece);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
                Reply::Raw(raw)
            }
            "/until-close" => {
                let mut raw =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n"
                        .to_vec();
                raw.extend_from_slice(&body);
                Reply::RawClose(raw)
            }
            "/encoded" => Reply::Ok(
                200,
                typed("application/json", &[("Content-Encoding", "gzip")]),
                b"not really gzip".repeat(200),
            ),
            "/png" => Reply::Ok(200, typed("image/png", &[]), vec![7u8; 5000]),
            "/small" => Reply::Ok(200, typed("application/json", &[]), json(500)),
            "/no-transform" => Reply::Ok(
                200,
                typed("application/json", &[("Cache-Control", "no-transform")]),
                body,
            ),
            "/range" => Reply::Ok(
                206,
                typed(
                    "application/json",
                    &[("Content-Range", "bytes 0-4999/20000")],
                ),
                json(5000)[..5000].to_vec(),
            ),
            _ => Reply::Ok(404, typed("text/plain", &[]), b"no".to_vec()),
        }
    })
}

#[test]
fn gzip_and_brotli_round_trip_with_the_headers_a_compressed_answer_needs() {
    let upstream = upstream();
    let original = json(20_000);
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncompress = {{ }}\n",
                upstream.addr
            ),
        ));
        for (accept, want) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("gzip, deflate, br", "br"),
            ("br;q=0.5, gzip", "gzip"),
            ("*", "br"),
        ] {
            let r = get(gw.addr, "/json", Some(accept));
            assert_eq!(r.status, 200, "{driver} {accept}");
            assert_eq!(
                r.header("content-encoding"),
                Some(want),
                "{driver} {accept}"
            );
            assert!(
                r.header("content-length").is_none() && r.chunked,
                "{driver} {accept}: streamed, chunked"
            );
            assert_eq!(
                r.header("etag"),
                Some("W/\"v1\""),
                "{driver} {accept}: strong ETag weakened"
            );
            assert!(r.header("accept-ranges").is_none(), "{driver} {accept}");
            assert!(has_vary_accept_encoding(&r), "{driver} {accept}");
            assert!(
                r.body.len() * 4 < original.len(),
                "{driver} {accept}: {} bytes",
                r.body.len()
            );
            assert_eq!(decode(&r), original, "{driver} {accept}");
            // The upstream saw the client's Accept-Encoding (it may
            // compress itself; then the gateway leaves the answer be).
            assert_eq!(
                upstream.requests().pop().unwrap().header("accept-encoding"),
                Some(accept)
            );
        }
        // A chunked upstream body and a close-delimited one.
        for path in ["/chunked", "/until-close"] {
            for accept in ["gzip", "br"] {
                let r = get(gw.addr, path, Some(accept));
                assert_eq!(
                    r.header("content-encoding"),
                    Some(accept),
                    "{driver} {path}"
                );
                assert_eq!(decode(&r), original, "{driver} {path} {accept}");
            }
        }
        // An HTTP/1.0 client: compressed, ended by closing.
        let r = request(
            gw.addr,
            b"GET /json HTTP/1.0\r\nAccept-Encoding: gzip\r\n\r\n",
        );
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{driver}");
        assert!(!r.chunked && r.header("content-length").is_none());
        assert_eq!(decode(&r), original, "{driver} HTTP/1.0");
        // No Accept-Encoding, or only encodings we do not make: as sent,
        // but it varies with Accept-Encoding all the same.
        for accept in [
            None,
            Some("identity"),
            Some("deflate, zstd"),
            Some("gzip;q=0, br;q=0"),
        ] {
            let r = get(gw.addr, "/json", accept);
            assert!(
                r.header("content-encoding").is_none(),
                "{driver} {accept:?}"
            );
            assert_eq!(
                r.header("content-length"),
                Some(original.len().to_string().as_str())
            );
            assert_eq!(r.body, original, "{driver} {accept:?}");
            assert_eq!(r.header("etag"), Some("\"v1\""));
            assert!(has_vary_accept_encoding(&r), "{driver} {accept:?}");
        }
    }
}

#[test]
fn answers_compression_must_not_touch_pass_as_they_are() {
    let upstream = upstream();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncompress = {{ encodings = [\"gzip\"] }}\n",
                upstream.addr
            ),
        ));
        for path in ["/encoded", "/png", "/small", "/no-transform", "/range"] {
            let direct = upstream_body(&upstream, path);
            let r = get(gw.addr, path, Some("gzip, br"));
            assert!(
                r.header("content-encoding")
                    .is_none_or(|e| path == "/encoded" && e == "gzip"),
                "{driver} {path}: {:?}",
                r.headers
            );
            assert_eq!(r.body, direct, "{driver} {path}: untouched");
            assert!(r.header("content-length").is_some(), "{driver} {path}");
            assert!(
                !has_vary_accept_encoding(&r),
                "{driver} {path}: not an answer the route compresses"
            );
        }
        // HEAD: the headers of the identity answer.
        let r = request(
            gw.addr,
            b"HEAD /json HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n",
        );
        assert!(r.header("content-encoding").is_none(), "{driver}");
        // br is not among this route's encodings.
        let r = get(gw.addr, "/json", Some("br"));
        assert!(r.header("content-encoding").is_none(), "{driver}");
    }
}

/// The body the upstream answers `path` with, asked directly.
fn upstream_body(upstream: &Upstream, path: &str) -> Vec<u8> {
    let r = request(
        upstream.addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    r.body
}

#[test]
fn the_cache_keeps_one_compressed_variant_per_encoding() {
    let upstream = upstream();
    let original = json(20_000);
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[cache]\nmemory = \"8MiB\"\nmax_object = \"1MiB\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncache = {{ }}\ncompress = {{ }}\n",
                upstream.addr
            ),
        ));
        let before = upstream.request_count();
        for accept in [Some("gzip"), Some("br"), None] {
            let miss = get(gw.addr, "/json", accept);
            let hit = get(gw.addr, "/json", accept);
            assert!(
                hit.header("cache-status")
                    .is_some_and(|s| s.contains("hit")),
                "{driver} {accept:?}: {:?}",
                hit.headers
            );
            assert_eq!(
                miss.header("content-encoding"),
                accept,
                "{driver} {accept:?}"
            );
            assert_eq!(
                hit.header("content-encoding"),
                accept,
                "{driver} {accept:?}: the stored variant"
            );
            assert_eq!(decode(&hit), original, "{driver} {accept:?}");
            if accept.is_some() {
                assert!(
                    hit.body.len() * 4 < original.len(),
                    "{driver} {accept:?}: stored compressed"
                );
                assert_eq!(hit.header("etag"), Some("W/\"v1\""));
            }
            assert!(has_vary_accept_encoding(&hit));
        }
        assert_eq!(
            upstream.request_count() - before,
            3,
            "{driver}: one fetch per variant"
        );
    }
}
