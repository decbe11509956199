//! WebSocket and other upgrades end to end, against an RFC 6455 echo
//! upstream: the handshake relayed (101 with the upstream's accept key),
//! messages both ways (text, 100 KiB binary, the upstream's first frame
//! sent with its 101), ping/pong, the close handshake; upgrades a route
//! does not allow (none configured, `h2c`) and a non-101 answer relayed as
//! a normal response; the tunnel idle timeout and maximum lifetime; open
//! tunnels counted; a drain that lets tunnels run until its deadline; a
//! reload that leaves an open tunnel alone.

mod common;

use std::time::Duration;

use common::websocket::{BINARY, CLOSE, KEY, PING, PONG, TEXT, WsClient, WsUpstream, accept_key};
use common::{Conn, Gateway, config, drivers, metric, wait_until};

const ADMIN: &str = "[admin]\nbind = \"127.0.0.1:0\"\n\n";

fn routes(upstream: &WsUpstream, tunnel: &str) -> String {
    format!(
        "[upstreams.ws]\nendpoints = [\"{}\"]\n\n\
         [[routes]]\nname = \"chat\"\npath_prefix = \"/chat\"\nupstream = \"ws\"\nupgrades = [\"websocket\"]\n{tunnel}\n\
         response_headers = {{ set = {{ \"x-route\" = \"${{route}}\" }} }}\n\n\
         [[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"ws\"\n",
        upstream.addr
    )
}

#[test]
fn messages_go_both_ways_through_a_tunnel_until_the_close_handshake() {
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{ADMIN}{}", routes(&upstream, "")),
        ));
        let mut ws = WsClient::connect(gw.addr, "/chat/room", "").expect("101");
        // The upstream's handshake answer, relayed.
        assert_eq!(
            ws.header("sec-websocket-accept"),
            Some(accept_key(KEY)),
            "{driver}"
        );
        assert_eq!(ws.header("upgrade").as_deref(), Some("websocket"));
        assert!(
            ws.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
        );
        assert_eq!(ws.header("x-upstream").as_deref(), Some("ws"));
        assert_eq!(
            ws.header("x-route").as_deref(),
            Some("chat"),
            "the route's response headers"
        );
        assert!(ws.header("x-request-id").is_some());
        // What the upstream was asked: the upgrade, with the client's key.
        let asked = upstream.heads().pop().unwrap().to_ascii_lowercase();
        assert!(
            asked.contains("upgrade: websocket\r\n") && asked.contains("connection: upgrade\r\n"),
            "{asked}"
        );
        assert!(asked.contains(&format!(
            "sec-websocket-key: {}\r\n",
            KEY.to_ascii_lowercase()
        )));
        // The first frame came with the 101.
        assert_eq!(ws.recv(), Some((TEXT, b"welcome".to_vec())), "{driver}");
        wait_until(Duration::from_secs(10), "the tunnel counted", || {
            metric(&gw, "ringgate_tunnels_open{") == 1
        });
        for i in 0..20 {
            let text = format!("message {i}");
            assert!(ws.send(TEXT, text.as_bytes()));
            assert_eq!(ws.recv(), Some((TEXT, text.into_bytes())), "{driver}");
        }
        let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        assert!(ws.send(BINARY, &big));
        assert_eq!(ws.recv(), Some((BINARY, big)), "{driver}");
        assert!(ws.send(PING, b"are you there"));
        assert_eq!(ws.recv(), Some((PONG, b"are you there".to_vec())));
        // The close handshake, then the TCP connection ends.
        assert!(ws.send(CLOSE, &1000u16.to_be_bytes()));
        assert_eq!(ws.recv(), Some((CLOSE, 1000u16.to_be_bytes().to_vec())));
        let _ = ws.stream.shutdown(std::net::Shutdown::Write);
        assert!(
            ws.closed_within(Duration::from_secs(10)),
            "{driver}: the tunnel ends"
        );
        wait_until(Duration::from_secs(10), "the tunnel uncounted", || {
            metric(&gw, "ringgate_tunnels_open{") == 0
                && metric(
                    &gw,
                    "ringgate_tunnels_closed_total{reason=\"upstream_closed\"}",
                ) + metric(
                    &gw,
                    "ringgate_tunnels_closed_total{reason=\"client_closed\"}",
                ) == 1
        });
    }
}

#[test]
fn upgrades_a_route_does_not_tunnel_are_ordinary_requests() {
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let gw = Gateway::start(&config(driver, &routes(&upstream, "")));
        // No `upgrades` on the route: Upgrade is hop-by-hop and dropped.
        let err = WsClient::connect(gw.addr, "/plain/x", "").err().unwrap();
        assert!(err.starts_with("HTTP/1.1 426"), "{driver}: {err}");
        let asked = upstream.heads().pop().unwrap().to_ascii_lowercase();
        assert!(!asked.contains("upgrade:"), "{asked}");
        // h2c is never switched to, even on a route that tunnels.
        let mut c = Conn::open(gw.addr);
        c.send(b"GET /chat/x HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 426, "{driver}");
        let asked = upstream.heads().pop().unwrap().to_ascii_lowercase();
        assert!(
            !asked.contains("upgrade:") && !asked.contains("http2-settings"),
            "{asked}"
        );
        // The connection is still an HTTP connection.
        c.send(b"GET /plain/y HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 426);
        // A non-101 answer to an upgrade is relayed as a response, and
        // the client connection stays usable.
        let err = WsClient::connect(gw.addr, "/chat/refuse", "")
            .err()
            .unwrap();
        assert!(err.starts_with("HTTP/1.1 403"), "{driver}: {err}");
        // Without Connection: upgrade, Upgrade alone asks for nothing.
        let mut c = Conn::open(gw.addr);
        c.send(b"GET /chat/x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(c.read_response(false).status, 426, "{driver}");
    }
}

#[test]
fn an_idle_tunnel_is_closed_and_a_busy_one_outlives_its_idle_timeout_but_not_its_lifetime() {
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{ADMIN}{}",
                routes(&upstream, "tunnel_idle_timeout = \"400ms\"")
            ),
        ));
        let mut ws = WsClient::connect(gw.addr, "/chat/idle", "").expect("101");
        assert_eq!(ws.recv(), Some((TEXT, b"welcome".to_vec())));
        assert!(
            ws.closed_within(Duration::from_secs(10)),
            "{driver}: idle tunnel not closed"
        );
        wait_until(Duration::from_secs(10), "the idle end counted", || {
            metric(
                &gw,
                "ringgate_tunnels_closed_total{reason=\"idle_timeout\"}",
            ) == 1
        });
        drop(gw);

        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{ADMIN}{}",
                routes(
                    &upstream,
                    "tunnel_idle_timeout = \"400ms\"\ntunnel_max_lifetime = \"1500ms\""
                )
            ),
        ));
        let mut ws = WsClient::connect(gw.addr, "/chat/busy", "").expect("101");
        assert_eq!(ws.recv(), Some((TEXT, b"welcome".to_vec())));
        let started = std::time::Instant::now();
        // Traffic every 100 ms keeps it past the idle timeout...
        let mut echoed = 0;
        while started.elapsed() < Duration::from_secs(10) {
            if !ws.send(PING, b"k") {
                break;
            }
            match ws.recv() {
                Some((PONG, _)) => echoed += 1,
                _ => break,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // ...until its lifetime ends it.
        assert!(echoed >= 5, "{driver}: only {echoed} pings before the end");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{driver}: never ended"
        );
        wait_until(Duration::from_secs(10), "the lifetime end counted", || {
            metric(
                &gw,
                "ringgate_tunnels_closed_total{reason=\"max_lifetime\"}",
            ) == 1
        });
    }
}

#[test]
fn a_drain_lets_open_tunnels_run_until_its_deadline() {
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let mut gw = Gateway::start(&config(
            driver,
            &format!(
                "[server]\ndrain_timeout = \"3s\"\n\n{}",
                routes(&upstream, "")
            ),
        ));
        let mut ws = WsClient::connect(gw.addr, "/chat/drain", "").expect("101");
        assert_eq!(ws.recv(), Some((TEXT, b"welcome".to_vec())));
        gw.signal(libc::SIGTERM);
        // Draining: the tunnel still carries messages...
        std::thread::sleep(Duration::from_millis(300));
        assert!(ws.send(TEXT, b"still here"));
        assert_eq!(ws.recv(), Some((TEXT, b"still here".to_vec())), "{driver}");
        // ...and is closed by the gateway before it exits.
        assert!(
            ws.closed_within(Duration::from_secs(10)),
            "{driver}: tunnel not closed"
        );
        let status = gw
            .wait_exit(Duration::from_secs(10))
            .expect("exit after the drain");
        assert!(status.success(), "{driver}: {status:?}");
    }
}

#[test]
fn a_reload_leaves_an_open_tunnel_alone() {
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{ADMIN}{}", routes(&upstream, "")),
        ));
        let mut ws = WsClient::connect(gw.addr, "/chat/reload", "").expect("101");
        assert_eq!(ws.recv(), Some((TEXT, b"welcome".to_vec())));
        // The new config has no tunnelling route at all.
        let path = gw.log.with_file_name("gateway.toml");
        std::fs::write(
            &path,
            config(
                driver,
                &format!(
                    "{ADMIN}[upstreams.ws]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"plain\"\npath_prefix = \"/\"\nupstream = \"ws\"\n",
                    upstream.addr
                ),
            ),
        )
        .unwrap();
        gw.signal(libc::SIGHUP);
        wait_until(Duration::from_secs(10), "the reload applied", || {
            WsClient::connect(gw.addr, "/chat/new", "").is_err()
        });
        // The open tunnel finishes on the generation it started on.
        for i in 0..5 {
            let text = format!("after reload {i}");
            assert!(ws.send(TEXT, text.as_bytes()));
            assert_eq!(ws.recv(), Some((TEXT, text.into_bytes())), "{driver}");
        }
        assert_eq!(metric(&gw, "ringgate_tunnels_open{"), 1, "{driver}");
    }
}

#[test]
fn bad_upgrade_settings_are_refused_at_load() {
    for (route, wants) in [
        (
            "upstream = \"u\"\nupgrades = [\"h2c\"]",
            "h2c cannot be tunnelled",
        ),
        (
            "upgrades = [\"websocket\"]\n[routes.respond]\nstatus = 200",
            "need a route with an upstream",
        ),
        (
            "upstream = \"u\"\ntunnel_idle_timeout = \"1s\"",
            "need upgrades",
        ),
        (
            "upstream = \"u\"\nupgrades = [\"web socket\"]",
            "not a protocol name",
        ),
    ] {
        let text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.u]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\n{route}\n"
        );
        let err = common::config_error(&text);
        assert!(err.contains(wants), "{route}: {err}");
    }
}

#[test]
fn a_tunnel_runs_over_tls_to_the_client() {
    use common::tls::{Alg, ClientOptions, Pki, client_config, connect, listener_tls};
    use common::websocket::{frame, read_frame};
    use std::io::{Read, Write};
    let pki = Pki::new("wss");
    let cert = pki.server(&["ws.test"], Alg::EcdsaP256);
    let upstream = WsUpstream::start();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{}\n{}", listener_tls(&[&cert], ""), routes(&upstream, "")),
        ));
        let client = client_config(&[&pki.ca_der], &ClientOptions::default());
        let mut conn = connect(gw.addr, "ws.test", &client).unwrap();
        let s = &mut conn.stream;
        s.write_all(format!("GET /chat/tls HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{driver}: {}",
            String::from_utf8_lossy(&head)
        );
        assert_eq!(
            read_frame(s).map(|f| (f.0, f.1)),
            Some((TEXT, b"welcome".to_vec()))
        );
        for i in 0..10 {
            let text = format!("secret {i}");
            s.write_all(&frame(TEXT, text.as_bytes(), Some([1, 2, 3, 4])))
                .unwrap();
            assert_eq!(
                read_frame(s).map(|f| (f.0, f.1)),
                Some((TEXT, text.into_bytes())),
                "{driver}"
            );
        }
        let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 13) as u8).collect();
        s.write_all(&frame(BINARY, &big, Some([9, 8, 7, 6])))
            .unwrap();
        assert_eq!(
            read_frame(s).map(|f| (f.0, f.1)),
            Some((BINARY, big)),
            "{driver}"
        );
    }
}
