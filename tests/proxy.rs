//! Forwarding behaviour against the real binary: keep-alive and upstream
//! connection reuse, pipelining, bodies in both directions in every framing,
//! 10 MiB bodies checked by hash, interim responses, hop-by-hop headers and
//! X-Forwarded-*.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::time::Duration;

fn proxy_config(driver: &str, up: &Upstream, extra_upstream: &str) -> String {
    config(
        driver,
        &format!(
            "[upstreams.app]\nendpoints = [\"{}\"]\n{extra_upstream}\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    )
}

/// Echoes the request body back (same length), with a header naming the size.
fn echo() -> impl Fn(&Recorded) -> Reply + Send + Sync {
    |r: &Recorded| {
        Reply::Ok(
            200,
            vec![("x-got".into(), r.body.len().to_string())],
            r.body.clone(),
        )
    }
}

#[test]
fn keep_alive_reuses_upstream_connections() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        // 4 concurrent keep-alive clients, 5 000 requests in all.
        let per_client = 1250;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let addr = gw.addr;
                std::thread::spawn(move || {
                    let mut c = Conn::open(addr);
                    for _ in 0..per_client {
                        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
                        assert_eq!(c.read_response(false).status, 200);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let requests = up.request_count();
        assert_eq!(requests, 4 * per_client);
        let per_thousand = up.connections() as f64 * 1000.0 / requests as f64;
        eprintln!(
            "{driver}: {} upstream connections for {requests} requests = {per_thousand:.2} per 1000",
            up.connections()
        );
        assert!(
            per_thousand < 1.0,
            "{driver}: {per_thousand} upstream connections per 1000 requests"
        );
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    for driver in drivers() {
        let up = Upstream::start("app", |r| ok(&r.target));
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        let mut burst = Vec::new();
        for i in 0..5 {
            burst.extend_from_slice(format!("GET /p{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        }
        burst.extend_from_slice(b"POST /p5 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
        burst.extend_from_slice(b"GET /p6 HTTP/1.1\r\nHost: a\r\n\r\n");
        c.send(&burst);
        for i in 0..7 {
            assert_eq!(c.read_response(false).text(), format!("/p{i}"), "{driver}");
        }
        assert_eq!(up.requests()[5].body, b"abc");
    }
}

#[test]
fn content_length_and_chunked_request_bodies_are_forwarded() {
    for driver in drivers() {
        let up = Upstream::start("app", echo());
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        c.send(b"POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!(c.read_response(false).text(), "hello world");
        // Chunked with an extension and a trailer: re-framed, trailer dropped.
        c.send(b"POST /ch HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.text(), "hello world");
        // Body split across many small writes.
        c.send(b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        for piece in [&b"3\r"[..], b"\nabc", b"\r\n", b"2\r\nde\r\n0\r", b"\n\r\n"] {
            std::thread::sleep(Duration::from_millis(5));
            c.send(piece);
        }
        assert_eq!(c.read_response(false).text(), "abcde");
        let got = up.requests();
        assert_eq!(got[0].header("content-length"), Some("11"));
        assert!(got[1].chunked && !got[1].has_header("content-length"));
        assert_eq!(got[1].body, b"hello world");
        assert_eq!(got[2].body, b"abcde");
    }
}

#[test]
fn chunked_and_close_delimited_responses_reach_both_http_versions() {
    for driver in drivers() {
        let up = Upstream::start("app", |r| match r.target.as_str() {
            "/chunked" => Reply::Chunked(200, vec![b"ab".to_vec(), b"cde".to_vec()]),
            "/close" => Reply::UntilClose(200, b"until close".to_vec()),
            _ => ok("plain"),
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        c.send(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(false);
        assert!(r.chunked);
        assert_eq!(r.text(), "abcde");
        // A close-delimited upstream body becomes chunked for HTTP/1.1, and
        // the client connection stays usable.
        c.send(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(false);
        assert!(r.chunked, "{driver}");
        assert_eq!(r.text(), "until close");
        c.send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).text(), "plain");

        // HTTP/1.0 clients never see chunked framing.
        for path in ["/chunked", "/close"] {
            let mut c = gw.conn();
            c.send(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes());
            let r = c.read_response(false);
            assert!(
                !r.chunked && r.header("transfer-encoding").is_none(),
                "{driver} {path}"
            );
            assert!(r.text() == "abcde" || r.text() == "until close");
            assert!(c.is_closed());
        }
        // HTTP/1.0 keep-alive with a length-delimited response.
        let mut c = gw.conn();
        c.send(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        c.send(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!(c.read_response(false).text(), "plain");
        assert!(c.is_closed());
    }
}

#[test]
fn ten_mebibyte_bodies_each_way_arrive_intact() {
    let big: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = Sha256::digest(&big);
    for driver in drivers() {
        let big_for_upstream = big.clone();
        let up = Upstream::start("app", move |r| {
            if r.target == "/download" {
                Reply::Ok(200, vec![], big_for_upstream.clone())
            } else if r.target == "/download-chunked" {
                Reply::Chunked(
                    200,
                    big_for_upstream
                        .chunks(300_000)
                        .map(<[u8]>::to_vec)
                        .collect(),
                )
            } else {
                Reply::Ok(
                    200,
                    vec![],
                    format!("{:x}", Sha256::digest(&r.body)).into_bytes(),
                )
            }
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        // Upload with Content-Length.
        let mut req = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .into_bytes();
        req.extend_from_slice(&big);
        c.send(&req);
        assert_eq!(
            c.read_response(false).text(),
            format!("{want:x}"),
            "{driver} upload"
        );
        // Upload chunked.
        let mut req =
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in big.chunks(70_000) {
            req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            req.extend_from_slice(piece);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n\r\n");
        c.send(&req);
        assert_eq!(
            c.read_response(false).text(),
            format!("{want:x}"),
            "{driver} chunked upload"
        );
        // Downloads.
        for path in ["/download", "/download-chunked"] {
            c.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            let r = c.read_response(false);
            assert_eq!(Sha256::digest(&r.body), want, "{driver} {path}");
        }
    }
}

#[test]
fn expect_continue_gets_100_before_the_body() {
    for driver in drivers() {
        let up = Upstream::start("app", echo());
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        c.send(b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
        let interim = c.read_response(false);
        assert_eq!(interim.status, 100, "{driver}");
        c.send(b"body");
        let r = c.read_response(false);
        assert_eq!(r.text(), "body");
        assert!(
            !up.requests()[0].has_header("expect"),
            "Expect is answered by the gateway, not forwarded"
        );
    }
}

#[test]
fn interim_103_is_relayed_before_the_final_response() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::Raw(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let all = c.read_responses_until_final(false);
        assert_eq!(all.len(), 2, "{driver}");
        assert_eq!(all[0].status, 103);
        assert_eq!(all[0].header("link"), Some("</s.css>; rel=preload"));
        assert_eq!(all[1].text(), "ok");
    }
}

/// RFC 9112 §4: the reason phrase is optional and may carry obs-text; a
/// client SHOULD ignore it. Such upstream answers are relayed with the
/// standard phrase, for final and interim responses alike, and the
/// connection and the worker carry on.
#[test]
fn status_lines_without_a_reason_or_with_obs_text_are_relayed() {
    let variants: [(&[u8], u16, &str); 7] = [
        (b"HTTP/1.1 200\r\n", 200, "OK"),
        (b"HTTP/1.1 200 \r\n", 200, "OK"),
        ("HTTP/1.1 200 Réussi\r\n".as_bytes(), 200, "OK"),
        (b"HTTP/1.1 200 R\xe9ussi\r\n", 200, "OK"),
        (b"HTTP/1.1 404\r\n", 404, "Not Found"),
        (b"HTTP/1.1 299 Whatever\r\n", 299, ""),
        (b"HTTP/1.1 200\n", 200, "OK"),
    ];
    for driver in drivers() {
        for (line, status, reason) in variants {
            let line = line.to_vec();
            let up = Upstream::start("app", move |_| {
                let mut raw = b"HTTP/1.1 103\r\nLink: </a>\r\n\r\n".to_vec();
                raw.extend_from_slice(&line);
                raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
                Reply::Raw(raw)
            });
            let gw = Gateway::start(&proxy_config(driver, &up, ""));
            let mut c = gw.conn();
            for _ in 0..2 {
                c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                let all = c.read_responses_until_final(false);
                let what = format!("{driver} {status} {reason:?}");
                assert_eq!(all.len(), 2, "{what}");
                assert_eq!(
                    (all[0].status, all[0].reason.as_str()),
                    (103, "Early Hints")
                );
                assert_eq!(all[0].header("link"), Some("</a>"), "{what}");
                assert_eq!(
                    (all[1].status, all[1].reason.as_str()),
                    (status, reason),
                    "{what}"
                );
                assert_eq!(all[1].text(), "ok", "{what}");
            }
        }
    }
}

/// X-Forwarded-For, Forwarded, X-Real-IP, X-Forwarded-Proto and
/// X-Forwarded-Host are handled alike, by server.forwarded_headers; a
/// client can never pass its own X-Real-IP or Forwarded through as is.
#[test]
fn forwarded_identity_headers_are_consistent_in_every_mode() {
    let spoof = b"GET / HTTP/1.1\r\nHost: api.example:8080\r\nX-Forwarded-For: 203.0.113.7\r\nForwarded: for=203.0.113.7;proto=https\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n";
    for (mode, xff, forwarded, real_ip) in [
        (
            "append",
            Some("203.0.113.7, 127.0.0.1"),
            Some("for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=\"api.example:8080\""),
            Some("127.0.0.1"),
        ),
        (
            "replace",
            Some("127.0.0.1"),
            Some("for=127.0.0.1;proto=http;host=\"api.example:8080\""),
            Some("127.0.0.1"),
        ),
        ("strip", None, None, None),
    ] {
        let up = Upstream::named("app");
        let gw = Gateway::start(&config(
            "epoll",
            &format!(
                "[server]\nforwarded_headers = \"{mode}\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
                up.addr
            ),
        ));
        assert_eq!(request(gw.addr, spoof).status, 200);
        let got = &up.requests()[0];
        assert_eq!(got.header("x-forwarded-for"), xff, "{mode}");
        assert_eq!(got.header("forwarded"), forwarded, "{mode}");
        assert_eq!(got.header("x-real-ip"), real_ip, "{mode}");
        let (proto, host) = if mode == "strip" {
            (None, None)
        } else {
            (Some("http"), Some("api.example:8080"))
        };
        assert_eq!(got.header("x-forwarded-proto"), proto, "{mode}");
        assert_eq!(got.header("x-forwarded-host"), host, "{mode}");
        for name in [
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
        ] {
            assert!(
                got.headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .count()
                    <= 1,
                "{mode}: one {name}"
            );
        }
    }
}

#[test]
fn hop_by_hop_headers_are_removed_and_forwarded_for_is_appended() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::Ok(
                200,
                vec![
                    ("connection".into(), "x-up-private".into()),
                    ("x-up-private".into(), "1".into()),
                    ("keep-alive".into(), "timeout=5".into()),
                    ("x-public".into(), "yes".into()),
                ],
                b"ok".to_vec(),
            )
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let r = request(
            gw.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-private\r\nX-Private: secret\r\nKeep-Alive: 300\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: keep-alive\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n",
        );
        assert_eq!(r.header("x-public"), Some("yes"));
        assert_eq!(r.header("x-up-private"), None);
        assert_eq!(r.header("keep-alive"), None);
        let got = &up.requests()[0];
        for h in [
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-connection",
        ] {
            assert!(!got.has_header(h), "{driver}: {h} must not be forwarded");
        }
        assert_eq!(
            got.header("x-forwarded-for"),
            Some("203.0.113.7, 127.0.0.1")
        );
        assert_eq!(got.header("x-forwarded-proto"), Some("http"));
        assert_eq!(got.version, 1);
    }
}

#[test]
fn head_and_304_responses_carry_no_body() {
    for driver in drivers() {
        let up = Upstream::start("app", |r| {
            if r.target == "/304" {
                Reply::Raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec())
            } else {
                Reply::Ok(200, vec![], b"0123456789".to_vec())
            }
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        c.send(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(true);
        assert_eq!(r.header("content-length"), Some("10"), "{driver}");
        c.send(b"GET /304 HTTP/1.1\r\nHost: a\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some("\"x\""));
        c.send(b"GET /h HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).text(), "0123456789");
    }
}

#[test]
fn upstream_connection_close_is_honoured() {
    for driver in drivers() {
        let up = Upstream::start("app", |_| {
            Reply::RawClose(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            )
        });
        let gw = Gateway::start(&proxy_config(driver, &up, ""));
        let mut c = gw.conn();
        for _ in 0..3 {
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let r = c.read_response(false);
            assert_eq!(r.text(), "ok");
            assert_eq!(
                r.header("connection"),
                None,
                "the upstream's Connection header is hop-by-hop"
            );
        }
        assert_eq!(
            up.connections(),
            3,
            "{driver}: a closed upstream connection is never pooled"
        );
        assert_eq!(up.request_count(), 3, "{driver}: and never retried");
    }
}
