//! Request smuggling and malformed-message defences (RFC 9112), each case
//! named after the attack or rule. Every refused request must get its
//! answer, close the connection, and never reach the upstream.

mod common;
use common::*;

fn gateway(driver: &str, up: &Upstream) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[server]\nmax_header_bytes = \"4KiB\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nmax_body_bytes = 1000\n",
            up.addr
        ),
    ))
}

/// (name, raw request, expected status)
const REFUSED: &[(&str, &[u8], u16)] = &[
    // RFC 9112 §6.1: CL together with TE (CL.TE / TE.CL smuggling).
    ("cl_with_te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_with_cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
    // RFC 9112 §6.3: differing duplicate Content-Length.
    ("duplicate_differing_cl", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("cl_list_differing", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    ("cl_not_a_number", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
    ("cl_signed", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    // RFC 9112 §6.1: final transfer coding must be chunked.
    ("te_not_final_chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("te_unknown_only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("te_chunked_twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te_gzip_then_chunked_unsupported", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0.
    ("te_in_http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    // RFC 9112 §5.2: obs-fold.
    ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400),
    // RFC 9112 §5.1: no whitespace between field name and colon.
    ("space_before_colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n", 400),
    // RFC 9110 §5.5: control characters in values; bare CR.
    ("ctl_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400),
    ("bare_cr_in_value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    // RFC 9110 §9.1: method is a token.
    ("invalid_method_token", b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1.
    ("missing_host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid_host", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    ("bad_version", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
    ("bad_target", b"GET nothing HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    // Sizes and unsupported features.
    ("cl_over_route_limit", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", 413),
    ("expect_unknown", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx", 417),
    ("connect_method", b"CONNECT a.com:443 HTTP/1.1\r\nHost: a.com:443\r\n\r\n", 501),
];

#[test]
fn ambiguous_or_malformed_requests_are_refused_and_never_forwarded() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        for (name, raw, status) in REFUSED {
            let mut c = gw.conn();
            c.send(raw);
            let r = c.read_response(false);
            assert_eq!(r.status, *status, "{driver} {name}: {}", r.text());
            assert_eq!(r.header("connection"), Some("close"), "{driver} {name}");
            assert!(
                r.text().contains("\"status\":"),
                "{driver} {name}: JSON body"
            );
            assert!(c.is_closed(), "{driver} {name}: connection must close");
        }
        assert_eq!(
            up.request_count(),
            0,
            "{driver}: nothing refused may reach the upstream"
        );
        // The worker goes on serving everyone else.
        assert_eq!(get(gw.addr, "/").status, 200);
    }
}

#[test]
fn oversized_heads_get_431() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        raw.resize(5000, b'a');
        raw.extend_from_slice(b"\r\n\r\n");
        let mut c = gw.conn();
        c.send(&raw);
        assert_eq!(c.read_response(false).status, 431);
        assert!(c.is_closed());
        // Too many header lines, each small.
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..300 {
            raw.extend_from_slice(format!("X{i}: 1\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let mut c = gw.conn();
        c.send(&raw);
        assert_eq!(c.read_response(false).status, 431);
        assert_eq!(up.request_count(), 0);
    }
}

/// RFC 9112 §3: a request-target longer than the server parses gets 414,
/// whether or not the rest of the head has arrived.
#[test]
fn an_overlong_target_gets_414() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        for complete in [false, true] {
            let mut raw = b"GET /".to_vec();
            raw.resize(5000, b'a');
            if complete {
                raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
            }
            let mut c = gw.conn();
            c.send(&raw);
            let r = c.read_response(false);
            assert_eq!(r.status, 414, "{driver}, complete head: {complete}");
            assert!(r.text().contains("uri_too_long"), "{}", r.text());
            assert!(c.is_closed());
        }
        assert_eq!(up.request_count(), 0);
    }
}

/// RFC 9110 §10.1.1: a server ignores 100-continue in an HTTP/1.0 request
/// (the client would not understand an interim response).
#[test]
fn no_100_continue_for_http10_clients() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        let mut c = gw.conn();
        c.send(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
        // Give an old gateway time to (wrongly) send 100 Continue; the pause
        // only makes the test sensitive, a pass never depends on it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        c.send(b"ok");
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{driver}: the final answer comes first");
        assert_eq!(up.requests()[0].body, b"ok");
    }
}

#[test]
fn malformed_chunked_bodies_are_refused_mid_stream() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        for (name, body) in [
            ("negative_size", &b"-1\r\nx\r\n0\r\n\r\n"[..]),
            ("overflowing_size", b"ffffffffffffffffff\r\n"),
            ("bare_lf_after_size", b"1\nx\r\n0\r\n\r\n"),
            ("missing_crlf_after_data", b"1\r\nxy\r\n0\r\n\r\n"),
        ] {
            let mut c = gw.conn();
            c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
            c.send(body);
            let r = c.read_response(false);
            assert_eq!(r.status, 400, "{driver} {name}");
            assert!(c.is_closed(), "{driver} {name}");
        }
        // A chunked body over the route limit is cut off with 413.
        let mut c = gw.conn();
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n");
        c.send(&[b'x'; 1001]);
        c.send(b"\r\n0\r\n\r\n");
        assert_eq!(c.read_response(false).status, 413, "{driver}");
        // No complete request may have reached the upstream.
        assert_eq!(up.request_count(), 0, "{driver}");
    }
}

#[test]
fn absolute_form_authority_replaces_the_host_header() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        let r = request(
            gw.addr,
            b"GET http://real.example:81/p?q=1 HTTP/1.1\r\nHost: spoofed\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        let got = &up.requests()[0];
        assert_eq!(got.target, "/p?q=1");
        assert_eq!(got.header("host"), Some("real.example:81"), "{driver}");
    }
}

/// (name, raw upstream response)
const BAD_RESPONSES: &[(&str, &[u8])] = &[
    ("garbage_status_line", b"HTTP/1.1 OK\r\n\r\n"),
    ("not_http", b"SSH-2.0-OpenSSH\r\n\r\n"),
    (
        "differing_content_length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    ),
    (
        "cl_with_te",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    (
        "obs_fold",
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "bad_header_line",
        b"HTTP/1.1 200 OK\r\nX A: b\r\nContent-Length: 0\r\n\r\n",
    ),
];

#[test]
fn malformed_upstream_responses_become_502() {
    for driver in drivers() {
        for (name, raw) in BAD_RESPONSES {
            let up = Upstream::start("bad", move |_| Reply::RawClose(raw.to_vec()));
            let gw = gateway(driver, &up);
            let r = get(gw.addr, "/");
            assert_eq!(r.status, 502, "{driver} {name}");
            assert!(
                r.text().contains("upstream_malformed_response"),
                "{driver} {name}: {}",
                r.text()
            );
        }
    }
}

#[test]
fn refusal_survives_an_unread_body_thanks_to_lingering_close() {
    // The client sends its whole oversized body at once. Closing with those
    // bytes unread would reset the connection and could destroy the 413
    // before the client reads it (RFC 9112 §9.6: half-close, then drain).
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        let mut c = gw.conn();
        let mut raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n".to_vec();
        raw.resize(raw.len() + 2_000_000, b'b');
        let mut writer = c.stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            use std::io::Write;
            let _ = writer.write_all(&raw);
        });
        let r = c.read_response(false);
        assert_eq!(r.status, 413, "{driver}");
        assert!(c.closed_cleanly(), "{driver}: orderly FIN, not a reset");
        sender.join().unwrap();
        // Pipelined requests behind a refused one are not answered, and the
        // refusal itself arrives intact.
        let mut c = gw.conn();
        c.send(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 400, "{driver}");
        assert!(c.closed_cleanly(), "{driver}: orderly FIN, not a reset");
        assert_eq!(up.request_count(), 0);
    }
}
