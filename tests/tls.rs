//! HTTPS listeners end to end: certificates by SNI, versions, ALPN,
//! resumption across workers, the record layer under real clients (rustls
//! and openssl), and what the upstream receives.

mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::tls::{
    Alg, ClientOptions, Pki, client_config, connect, listener_tls, resumed, server_names,
};
use common::{Gateway, Reply, Upstream, config, drivers, ok};

fn proxy_to(upstream: &Upstream) -> String {
    format!(
        "[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    )
}

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[test]
fn https_requests_are_proxied_with_forwarded_proto_and_exact_bytes() {
    let pki = Pki::new("basic");
    let cert = pki.server(&["app.test"], Alg::EcdsaP256);
    let big = vec![b'x'; 1 << 20];
    let big_reply = big.clone();
    let upstream = Upstream::start("app", move |r| match r.target.as_str() {
        "/big" => Reply::Ok(200, vec![], big_reply.clone()),
        "/echo" => Reply::Ok(200, vec![], r.body.clone()),
        _ => ok("hello over tls"),
    });
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
        ));
        let client = client_config(&[&pki.ca_der], &ClientOptions::default());
        let mut conn = connect(gw.addr, "app.test", &client).expect("handshake");
        assert_eq!(conn.stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        conn.send(&get("/", "app.test"));
        let r = conn.read_response(false);
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello over tls"),
            "{driver}"
        );
        // Many records each way on the same connection.
        conn.send(&get("/big", "app.test"));
        let r = conn.read_response(false);
        assert_eq!(r.body.len(), big.len(), "{driver}");
        assert!(r.body == big);
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut post = format!(
            "POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        post.extend_from_slice(&body);
        conn.send(&post);
        let r = conn.read_response(false);
        assert!(r.body == body, "{driver}: echoed body differs");
        // Pipelined requests in one write, answered in order.
        let mut two = get("/", "app.test");
        two.extend_from_slice(&get("/big", "app.test"));
        conn.send(&two);
        assert_eq!(conn.read_response(false).text(), "hello over tls");
        assert_eq!(conn.read_response(false).body.len(), big.len());
        let seen = upstream.requests();
        let last = seen.last().unwrap();
        assert_eq!(last.header("x-forwarded-proto"), Some("https"), "{driver}");
    }
}

#[test]
fn a_client_key_update_is_followed_and_close_notify_ends_the_connection() {
    let pki = Pki::new("keyupdate");
    let cert = pki.server(&["app.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
        ));
        let client = client_config(&[&pki.ca_der], &ClientOptions::default());
        let mut conn = connect(gw.addr, "app.test", &client).unwrap();
        for round in 0..3 {
            conn.send(&get("/", "app.test"));
            assert_eq!(
                conn.read_response(false).status,
                200,
                "{driver} round {round}"
            );
            // KeyUpdate(update_requested): the gateway must switch its
            // receive key and answer with its own update.
            conn.stream.conn.refresh_traffic_keys().unwrap();
        }
        conn.send(&get("/", "app.test"));
        assert_eq!(conn.read_response(false).status, 200, "{driver}");
        conn.stream.conn.send_close_notify();
        conn.stream.flush().unwrap();
        let _ = conn.stream.conn.write_tls(&mut conn.stream.sock);
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut conn.stream, &mut rest);
        assert!(rest.is_empty(), "{driver}: nothing after close_notify");
    }
}

#[test]
fn sni_selects_the_certificate_and_unknown_names_get_the_default_or_an_alert() {
    let pki = Pki::new("sni");
    let api = pki.server(&["api.test"], Alg::EcdsaP256);
    let wild = pki.server(&["*.apps.test"], Alg::EcdsaP256);
    let fallback = pki.server(&["fallback.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[listeners.tls]\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\", default = true }},\n]\n\n{}",
                api.cert.display(),
                api.key.display(),
                wild.cert.display(),
                wild.key.display(),
                fallback.cert.display(),
                fallback.key.display(),
                proxy_to(&upstream)
            ),
        ));
        for (sni, expect) in [
            ("api.test", "api.test"),
            ("API.Test", "api.test"),
            ("one.apps.test", "*.apps.test"),
            ("two.apps.test", "*.apps.test"),
        ] {
            let mut conn = connect(gw.addr, sni, &client).expect(sni);
            assert_eq!(server_names(&conn), [expect], "{driver} {sni}");
            conn.send(&get("/", sni));
            assert_eq!(conn.read_response(false).status, 200);
        }
        // Unknown name: the default certificate, which the client rejects.
        let err = connect(gw.addr, "other.test", &client)
            .err()
            .expect("name mismatch");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. }
                    )
            ),
            "{driver}: {err:?}"
        );
        // The gateway is unharmed.
        let mut conn = connect(gw.addr, "api.test", &client).unwrap();
        conn.send(&get("/", "api.test"));
        assert_eq!(conn.read_response(false).status, 200);
    }
    // unknown_sni = "refuse": an alert, and nothing else.
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n{}",
            listener_tls(&[&api], "unknown_sni = \"refuse\""),
            proxy_to(&upstream)
        ),
    ));
    let err = connect(gw.addr, "other.test", &client)
        .err()
        .expect("refused");
    assert!(matches!(err, rustls::Error::AlertReceived(_)), "{err:?}");
    assert!(connect(gw.addr, "api.test", &client).is_ok());
}

#[test]
fn an_ecdsa_and_an_rsa_certificate_for_one_name_are_chosen_by_what_the_client_supports() {
    let pki = Pki::new("dual");
    let ecdsa = pki.server(&["dual.test"], Alg::EcdsaP256);
    let rsa = pki.server(&["dual.test"], Alg::Rsa2048);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n{}",
            listener_tls(&[&rsa, &ecdsa], ""),
            proxy_to(&upstream)
        ),
    ));
    let any = client_config(&[&pki.ca_der], &ClientOptions::default());
    let conn = connect(gw.addr, "dual.test", &any).unwrap();
    assert!(!common::tls::server_key_is_rsa(&conn), "ECDSA preferred");
    for versions in [vec![&rustls::version::TLS13], vec![&rustls::version::TLS12]] {
        let rsa_only = client_config(
            &[&pki.ca_der],
            &ClientOptions {
                only_rsa: true,
                versions,
                ..Default::default()
            },
        );
        let mut conn = connect(gw.addr, "dual.test", &rsa_only).unwrap();
        assert!(common::tls::server_key_is_rsa(&conn));
        conn.send(&get("/", "dual.test"));
        assert_eq!(conn.read_response(false).status, 200);
    }
}

#[test]
fn tls12_and_tls13_with_every_suite_work_and_min_version_is_enforced() {
    let pki = Pki::new("versions");
    let cert = pki.server(&["v.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
        ));
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            for chacha in [false, true] {
                let client = client_config(
                    &[&pki.ca_der],
                    &ClientOptions {
                        versions: vec![version],
                        chacha_only: chacha,
                        ..Default::default()
                    },
                );
                let mut conn = connect(gw.addr, "v.test", &client).unwrap();
                assert_eq!(conn.stream.conn.protocol_version(), Some(version.version));
                for _ in 0..3 {
                    conn.send(&get("/", "v.test"));
                    assert_eq!(
                        conn.read_response(false).text(),
                        "app",
                        "{driver} {version:?}"
                    );
                }
            }
        }
    }
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n{}",
            listener_tls(&[&cert], "min_version = \"1.3\""),
            proxy_to(&upstream)
        ),
    ));
    let old = client_config(
        &[&pki.ca_der],
        &ClientOptions {
            versions: vec![&rustls::version::TLS12],
            ..Default::default()
        },
    );
    assert!(connect(gw.addr, "v.test", &old).is_err(), "TLS 1.2 refused");
}

#[test]
fn alpn_offers_http11_and_refuses_a_client_that_wants_only_h2() {
    let pki = Pki::new("alpn");
    let cert = pki.server(&["a.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
    ));
    let none = client_config(
        &[&pki.ca_der],
        &ClientOptions {
            alpn: vec![],
            ..Default::default()
        },
    );
    let conn = connect(gw.addr, "a.test", &none).unwrap();
    assert_eq!(conn.stream.conn.alpn_protocol(), None);
    let h2 = client_config(
        &[&pki.ca_der],
        &ClientOptions {
            alpn: vec![b"h2".to_vec()],
            ..Default::default()
        },
    );
    let err = connect(gw.addr, "a.test", &h2)
        .err()
        .expect("no common protocol");
    assert!(
        matches!(
            err,
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        ),
        "{err:?}"
    );
}

#[test]
fn resumed_sessions_resume_on_whichever_worker_they_land() {
    let pki = Pki::new("resume");
    let cert = pki.server(&["r.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    for (version, name) in [
        (&rustls::version::TLS13, "1.3"),
        (&rustls::version::TLS12, "1.2"),
    ] {
        let gw = Gateway::start(
            &config(
                "epoll",
                &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
            )
            .replace("workers = 1", "workers = 4"),
        );
        let client = client_config(
            &[&pki.ca_der],
            &ClientOptions {
                versions: vec![version],
                ..Default::default()
            },
        );
        let total = 60;
        let mut resumptions = 0;
        for i in 0..total {
            // A fresh source port each time: SO_REUSEPORT spreads these
            // connections over the 4 workers.
            let mut conn = connect(gw.addr, "r.test", &client).unwrap();
            if resumed(&conn) {
                resumptions += 1;
            }
            conn.send(&get("/", "r.test"));
            assert_eq!(conn.read_response(false).status, 200, "TLS {name} #{i}");
        }
        // Every connection after the first resumes, whichever worker took it.
        assert_eq!(resumptions, total - 1, "TLS {name}");
    }
}

#[test]
fn openssl_s_client_sees_the_certificate_its_servername_asks_for() {
    let pki = Pki::new("openssl");
    let one = pki.server(&["one.test"], Alg::EcdsaP256);
    let two = pki.server(&["two.test"], Alg::Rsa2048);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n{}",
            listener_tls(&[&one, &two], ""),
            proxy_to(&upstream)
        ),
    ));
    for (name, tls_flag) in [("one.test", "-tls1_3"), ("two.test", "-tls1_2")] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &gw.addr.to_string(),
                "-servername",
                name,
            ])
            .args([
                tls_flag,
                "-CAfile",
                pki.ca_path.to_str().unwrap(),
                "-verify_return_error",
                "-quiet",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                let mut stdin = child.stdin.take().unwrap();
                stdin.write_all(
                    format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )?;
                std::thread::sleep(Duration::from_millis(300));
                drop(stdin);
                child.wait_with_output()
            })
            .expect("openssl s_client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("CN={name}")) || stderr.contains(&format!("CN = {name}")),
            "{name}: {stderr}"
        );
        assert!(
            stdout.starts_with("HTTP/1.1 200"),
            "{name}: {stdout} / {stderr}"
        );
    }
}

fn mtls_client(
    pki: &Pki,
    who: Option<&common::tls::Issued>,
) -> std::sync::Arc<rustls::ClientConfig> {
    client_config(
        &[&pki.ca_der],
        &ClientOptions {
            identity: who.map(|c| (c.cert_pem.clone(), c.key_pem.clone())),
            ..Default::default()
        },
    )
}

/// Whether a client certificate check refused the connection: at the
/// handshake, or (TLS 1.3: the client finishes first) on its first read.
fn refused(conn: Result<common::tls::TlsConn, rustls::Error>, host: &str) -> bool {
    match conn {
        Err(_) => true,
        Ok(mut c) => {
            c.send(&get("/", host));
            c.try_read_response(false).is_none()
        }
    }
}

#[test]
fn mtls_required_admits_trusted_clients_and_passes_their_identity_upstream() {
    let pki = Pki::new("mtls");
    let stranger_ca = Pki::new("stranger");
    let cert = pki.server(&["m.test"], Alg::EcdsaP256);
    let alice = pki.client("alice");
    let mallory = stranger_ca.client("mallory");
    let upstream = Upstream::named("app");
    let log = common::temp_path("access.log");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{}\n[access_log]\npath = \"{}\"\n\n{}",
                listener_tls(
                    &[&cert],
                    &format!(
                        "client_auth = \"required\"\nclient_ca = \"{}\"",
                        pki.ca_path.display()
                    )
                ),
                log.display(),
                proxy_to(&upstream)
            ),
        ));
        let mut conn = connect(gw.addr, "m.test", &mtls_client(&pki, Some(&alice))).unwrap();
        conn.send(b"GET /who HTTP/1.1\r\nHost: m.test\r\nX-Client-Cert-Subject: CN=admin\r\nx-client-cert-sha256: forged\r\n\r\n");
        assert_eq!(conn.read_response(false).status, 200, "{driver}");
        let seen = upstream.requests().pop().unwrap();
        let subject = seen.header("x-client-cert-subject").unwrap();
        assert!(subject.contains("CN=alice"), "{driver}: {subject}");
        assert_eq!(
            seen.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-client-cert-subject"))
                .count(),
            1
        );
        assert_eq!(
            seen.header("x-client-cert-san"),
            Some("DNS:alice.clients.test")
        );
        let sha = seen.header("x-client-cert-sha256").unwrap();
        assert_eq!(sha.len(), 64, "{driver}: {sha}");
        assert_ne!(sha, "forged");
        // No certificate, or one from a CA the listener does not trust:
        // the handshake fails, nothing else happens.
        let before = upstream.request_count();
        let none_refused = refused(
            connect(gw.addr, "m.test", &mtls_client(&pki, None)),
            "m.test",
        );
        assert!(none_refused, "{driver}: no certificate admitted");
        let stranger_refused = refused(
            connect(gw.addr, "m.test", &mtls_client(&pki, Some(&mallory))),
            "m.test",
        );
        assert!(stranger_refused, "{driver}: untrusted certificate admitted");
        assert_eq!(upstream.request_count(), before);
        common::wait_until(Duration::from_secs(10), "the access log line", || {
            std::fs::read_to_string(&log).is_ok_and(|l| {
                l.contains("\"tls\":\"1.3\",\"client_cert\":{\"subject\":\"CN=alice")
            })
        });
        drop(gw);
        let _ = std::fs::remove_file(&log);
    }
}

#[test]
fn mtls_optional_serves_anonymous_clients_without_identity_headers() {
    let pki = Pki::new("optional");
    let cert = pki.server(&["o.test"], Alg::EcdsaP256);
    let bob = pki.client("bob");
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n{}",
            listener_tls(
                &[&cert],
                &format!(
                    "client_auth = \"optional\"\nclient_ca = \"{}\"",
                    pki.ca_path.display()
                )
            ),
            proxy_to(&upstream)
        ),
    ));
    let mut anon = connect(gw.addr, "o.test", &mtls_client(&pki, None)).unwrap();
    anon.send(b"GET / HTTP/1.1\r\nHost: o.test\r\nX-Client-Cert-Subject: CN=bob\r\n\r\n");
    assert_eq!(anon.read_response(false).status, 200);
    let seen = upstream.requests().pop().unwrap();
    assert!(
        !seen.has_header("x-client-cert-subject"),
        "a spoofed identity was passed on"
    );
    let mut known = connect(gw.addr, "o.test", &mtls_client(&pki, Some(&bob))).unwrap();
    known.send(&get("/", "o.test"));
    assert_eq!(known.read_response(false).status, 200);
    let seen = upstream.requests().pop().unwrap();
    assert!(
        seen.header("x-client-cert-subject")
            .unwrap()
            .contains("CN=bob")
    );
}

#[test]
fn client_cert_headers_sent_over_plain_http_are_stripped() {
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config("epoll", &proxy_to(&upstream)));
    let r = common::request(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Client-Cert-Subject: CN=root\r\nX-Client-Cert-SAN: DNS:x\r\nX-Client-Cert-SHA256: ab\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = upstream.requests().pop().unwrap();
    for h in [
        "x-client-cert-subject",
        "x-client-cert-san",
        "x-client-cert-sha256",
    ] {
        assert!(!seen.has_header(h), "{h} passed through");
    }
}

#[test]
fn an_mtls_listener_answers_421_when_host_names_a_server_the_handshake_did_not_cover() {
    let pki = Pki::new("misdirect");
    let open = pki.server(&["open.test"], Alg::EcdsaP256);
    let secure = pki.server(&["secure.test"], Alg::EcdsaP256);
    let carol = pki.client("carol");
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[listeners.tls]\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\", client_auth = \"required\", client_ca = \"{}\" }},\n]\n\n{}",
            open.cert.display(),
            open.key.display(),
            secure.cert.display(),
            secure.key.display(),
            pki.ca_path.display(),
            proxy_to(&upstream)
        ),
    ));
    // Authenticated nowhere, asking for the server that needs a certificate.
    let mut anon = connect(gw.addr, "open.test", &mtls_client(&pki, None)).unwrap();
    anon.send(&get("/", "open.test"));
    assert_eq!(anon.read_response(false).status, 200);
    let before = upstream.request_count();
    anon.send(&get("/admin", "secure.test"));
    let r = anon.read_response(false);
    assert_eq!(r.status, 421);
    assert!(r.text().contains("misdirected_request"));
    assert_eq!(
        upstream.request_count(),
        before,
        "the upstream never saw it"
    );
    // The authenticated connection is held to its own server too.
    let mut carol = connect(gw.addr, "secure.test", &mtls_client(&pki, Some(&carol))).unwrap();
    carol.send(&get("/", "secure.test:443"));
    assert_eq!(carol.read_response(false).status, 200);
    carol.send(&get("/", "open.test"));
    assert_eq!(carol.read_response(false).status, 421);
    // Without a certificate the secure name cannot even be reached.
    assert!(refused(
        connect(gw.addr, "secure.test", &mtls_client(&pki, None)),
        "secure.test"
    ));
}

#[test]
fn a_rate_limit_keyed_on_the_client_certificate_counts_each_client_apart() {
    let pki = Pki::new("certlimit");
    let cert = pki.server(&["l.test"], Alg::EcdsaP256);
    let dave = pki.client("dave");
    let erin = pki.client("erin");
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n[rate_limits.per_client]\nkey = \"client_cert\"\nrate = \"1/h\"\nburst = 2\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nrate_limits = [\"per_client\"]\n",
            listener_tls(
                &[&cert],
                &format!(
                    "client_auth = \"required\"\nclient_ca = \"{}\"",
                    pki.ca_path.display()
                )
            ),
            upstream.addr
        ),
    ));
    let mut d = connect(gw.addr, "l.test", &mtls_client(&pki, Some(&dave))).unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            d.send(&get("/", "l.test"));
            d.read_response(false).status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let mut e = connect(gw.addr, "l.test", &mtls_client(&pki, Some(&erin))).unwrap();
    e.send(&get("/", "l.test"));
    assert_eq!(
        e.read_response(false).status,
        200,
        "another certificate has its own bucket"
    );
}

#[test]
fn a_route_can_redirect_plain_http_to_https() {
    let pki = Pki::new("redirect");
    let cert = pki.server(&["shop.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n{}\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nhttps_redirect = true\nhttps_port = 8443\n",
            listener_tls(&[&cert], ""),
            upstream.addr
        ),
    ));
    // The first listener is plain: redirected, and the upstream sees nothing.
    let r = common::request(
        gw.addr,
        b"GET /cart?id=7 HTTP/1.1\r\nHost: shop.test:8080\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://shop.test:8443/cart?id=7")
    );
    assert_eq!(upstream.request_count(), 0);
}

fn metric(gw: &Gateway, line_prefix: &str) -> u64 {
    let text = common::get(gw.admin.unwrap(), "/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

#[test]
fn silent_connections_hold_no_handshake_slot_and_time_out() {
    let pki = Pki::new("silent");
    let cert = pki.server(&["s.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    for driver in drivers() {
        // One slot, a long timeout: if a silent connection held the slot,
        // the real client below would wait 30 s for it.
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{}\n[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
                listener_tls(
                    &[&cert],
                    "max_handshakes_in_flight = 1\nhandshake_timeout = \"30s\""
                ),
                proxy_to(&upstream)
            ),
        ));
        let silent: Vec<_> = (0..20).map(|_| common::Conn::open(gw.addr)).collect();
        // One that sends half a ClientHello and stops.
        let mut half = common::Conn::open(gw.addr);
        half.send(&[22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3]);
        std::thread::sleep(Duration::from_millis(100));
        let mut conn =
            connect(gw.addr, "s.test", &client).expect("handshake while others are silent");
        conn.send(&get("/", "s.test"));
        assert_eq!(conn.read_response(false).status, 200, "{driver}");
        drop(silent);
    }
    // A silent connection is closed when the handshake timeout passes.
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
            listener_tls(&[&cert], "handshake_timeout = \"500ms\""),
            proxy_to(&upstream)
        ),
    ));
    let mut silent = common::Conn::open(gw.addr);
    assert!(silent.is_closed(), "closed after the handshake timeout");
    common::wait_until(Duration::from_secs(10), "the timeout counted", || {
        metric(
            &gw,
            "ringgate_tls_handshake_failures_total{reason=\"timeout\"} ",
        ) == 1
    });
}

#[test]
fn a_handshake_flood_leaves_established_connections_served() {
    let pki = Pki::new("flood");
    // RSA-2048: each full handshake costs the gateway about a millisecond.
    let cert = pki.server(&["f.test"], Alg::Rsa2048);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
            listener_tls(&[&cert], "max_handshakes_in_flight = 4"),
            proxy_to(&upstream)
        ),
    ));
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    let mut established = connect(gw.addr, "f.test", &client).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = gw.addr;
    let flooders: Vec<_> = (0..6)
        .map(|_| {
            let stop = stop.clone();
            let ca = pki.ca_der.clone();
            std::thread::spawn(move || {
                let mut config = (*client_config(&[&ca], &ClientOptions::default())).clone();
                // Full handshakes every time.
                config.resumption = rustls::client::Resumption::disabled();
                let config = std::sync::Arc::new(config);
                let mut done = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if connect(addr, "f.test", &config).is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let started = std::time::Instant::now();
        established.send(&get("/", "f.test"));
        assert_eq!(
            established.read_response(false).status,
            200,
            "request {i} during the flood"
        );
        slowest = slowest.max(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let handshakes: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{handshakes} flood handshakes; slowest established request {slowest:?}");
    assert!(handshakes > 0);
    // A client is done with its handshake before the server has read its
    // Finished: the last few are counted a moment after the flood stops.
    common::wait_until(
        Duration::from_secs(10),
        "every flood handshake counted",
        || metric(&gw, "ringgate_tls_handshakes_total{kind=\"full\"} ") >= handshakes,
    );
}

fn fingerprint(conn: &common::tls::TlsConn) -> Vec<u8> {
    conn.stream.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn a_reload_swaps_the_certificate_with_zero_failed_requests_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pki = Pki::new("reload");
    let old = pki.server(&["re.test"], Alg::EcdsaP256);
    let new = pki.server(&["re.test"], Alg::EcdsaP256);
    // The config names one pair of files; the reload finds new contents.
    let cert_path = common::temp_path("live.pem");
    let key_path = cert_path.with_file_name("live.key");
    std::fs::copy(&old.cert, &cert_path).unwrap();
    std::fs::copy(&old.key, &key_path).unwrap();
    let live = common::tls::Issued {
        cert: cert_path.clone(),
        key: key_path.clone(),
        cert_pem: String::new(),
        key_pem: String::new(),
    };
    let upstream = Upstream::named("app");
    for driver in drivers() {
        std::fs::copy(&old.cert, &cert_path).unwrap();
        std::fs::copy(&old.key, &key_path).unwrap();
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{}\n[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
                listener_tls(&[&live], ""),
                proxy_to(&upstream)
            )
            .replace("workers = 1", "workers = 2"),
        ));
        let full_only = {
            let mut c = (*client_config(&[&pki.ca_der], &ClientOptions::default())).clone();
            c.resumption = rustls::client::Resumption::disabled();
            std::sync::Arc::new(c)
        };
        let old_der = fingerprint(&connect(gw.addr, "re.test", &full_only).unwrap());
        // A connection established before the reload, used after it.
        let mut before = connect(gw.addr, "re.test", &full_only).unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let failures = std::sync::Arc::new(AtomicUsize::new(0));
        let addr = gw.addr;
        let load: Vec<_> = (0..4)
            .map(|i| {
                let (stop, failures) = (stop.clone(), failures.clone());
                // Half resume (tickets outlive the reload), half do not.
                let config = if i % 2 == 0 {
                    full_only.clone()
                } else {
                    client_config(&[&pki.ca_der], &ClientOptions::default())
                };
                std::thread::spawn(move || {
                    let mut served = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut conn) = connect(addr, "re.test", &config) else {
                            failures.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        for _ in 0..3 {
                            conn.send(&get("/", "re.test"));
                            match conn.try_read_response(false) {
                                Some(r) if r.status == 200 => served += 1,
                                _ => {
                                    failures.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    served
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        std::fs::copy(&new.cert, &cert_path).unwrap();
        std::fs::copy(&new.key, &key_path).unwrap();
        let r = common::request(
            gw.admin.unwrap(),
            b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        let new_der = std::fs::read(&new.cert).unwrap();
        assert!(!new_der.is_empty());
        common::wait_until(
            Duration::from_secs(10),
            "new handshakes get the new certificate",
            || fingerprint(&connect(addr, "re.test", &full_only).unwrap()) != old_der,
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let served: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(served > 50, "{driver}: the load ran ({served})");
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "{driver}: failures across the swap"
        );
        // The connection from before the reload still works, on its session.
        before.send(&get("/", "re.test"));
        assert_eq!(before.read_response(false).status, 200);
        assert_eq!(fingerprint(&before), old_der);
    }
}

#[test]
fn an_expired_certificate_is_served_with_a_warning_and_a_negative_expiry_metric() {
    let pki = Pki::new("expiry");
    let expired = pki.server_valid(&["old.test"], Alg::EcdsaP256, -30, -1);
    let soon = pki.server_valid(&["soon.test"], Alg::EcdsaP256, -30, 5);
    let fine = pki.server_valid(&["fine.test"], Alg::EcdsaP256, -30, 90);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "{}\n[admin]\nbind = \"127.0.0.1:0\"\n\n{}",
            listener_tls(&[&expired, &soon, &fine], ""),
            proxy_to(&upstream)
        ),
    ));
    common::wait_until(
        Duration::from_secs(10),
        "expiry warnings in the log",
        || {
            let log = gw.log_text();
            log.contains("TLS certificate has expired")
                && log.contains("TLS certificate expires soon")
        },
    );
    let log = gw.log_text();
    assert!(
        !log.contains("fine.test"),
        "a certificate with 90 days left is not warned about"
    );
    let metrics = common::get(gw.admin.unwrap(), "/metrics").text();
    let expiry = |name: &str| -> i64 {
        metrics
            .lines()
            .find(|l| l.starts_with("ringgate_tls_certificate_expiry_seconds") && l.contains(name))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(expiry("old.test") < 0);
    assert!((4 * 86_400..=5 * 86_400).contains(&expiry("soon.test")));
    assert!(expiry("fine.test") > 89 * 86_400);
    // Clients refuse the expired one; the rest are served.
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    let err = connect(gw.addr, "old.test", &client)
        .err()
        .expect("expired");
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    assert!(connect(gw.addr, "fine.test", &client).is_ok());
}

fn tls_upstream_config(upstream: &Upstream, tls: &str, extra: &str) -> String {
    format!(
        "[upstreams.app]\nendpoints = [\"{}\"]\n{extra}\n[upstreams.app.tls]\n{tls}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    )
}

#[test]
fn upstream_tls_verifies_the_endpoint_and_carries_requests_both_ways() {
    let pki = Pki::new("up");
    let backend = pki.server(&["backend.test"], Alg::EcdsaP256);
    let upstream =
        Upstream::start_tls(
            "secure",
            common::tls::server_config(&backend, None),
            |r| match r.target.as_str() {
                "/echo" => Reply::Ok(200, vec![], r.body.clone()),
                "/big" => Reply::Chunked(200, vec![vec![7u8; 100_000]; 5]),
                _ => ok("over tls"),
            },
        );
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &tls_upstream_config(
                &upstream,
                &format!(
                    "ca_file = \"{}\"\nserver_name = \"backend.test\"",
                    pki.ca_path.display()
                ),
                "",
            ),
        ));
        for _ in 0..5 {
            let r = common::get(gw.addr, "/");
            assert_eq!((r.status, r.text().as_str()), (200, "over tls"), "{driver}");
        }
        let body: Vec<u8> = (0..250_000u32).map(|i| (i % 253) as u8).collect();
        let mut post = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        post.extend_from_slice(&body);
        let r = common::request(gw.addr, &post);
        assert!(r.body == body, "{driver}: echoed body differs");
        let r = common::get(gw.addr, "/big");
        assert_eq!(r.body.len(), 500_000, "{driver}");
        let seen = upstream.tls_seen();
        assert!(
            seen.iter()
                .all(|s| s.sni.as_deref() == Some("backend.test")),
            "{seen:?}"
        );
    }
}

#[test]
fn upstream_tls_pools_connections_and_resumes_new_ones() {
    let pki = Pki::new("uppool");
    let backend = pki.server(&["127.0.0.1"], Alg::EcdsaP256);
    let upstream =
        Upstream::start_tls("secure", common::tls::server_config(&backend, None), |_| {
            ok("x")
        });
    // The endpoint's IP is the name verified (its certificate carries it).
    let gw = Gateway::start(&config(
        "epoll",
        &tls_upstream_config(
            &upstream,
            &format!("ca_file = \"{}\"", pki.ca_path.display()),
            "",
        ),
    ));
    let mut conn = common::Conn::open(gw.addr);
    for _ in 0..20 {
        conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(conn.read_response(false).status, 200);
    }
    assert_eq!(
        upstream.connections(),
        1,
        "one pooled TLS connection served them all"
    );
    // No pooling: every request a new connection, resumed after the first.
    let upstream2 = Upstream::start_tls(
        "secure2",
        common::tls::server_config(&backend, None),
        |_| ok("y"),
    );
    let gw2 = Gateway::start(&config(
        "epoll",
        &tls_upstream_config(
            &upstream2,
            &format!("ca_file = \"{}\"", pki.ca_path.display()),
            "pool_max_idle = 0",
        ),
    ));
    for _ in 0..6 {
        assert_eq!(common::get(gw2.addr, "/").status, 200);
    }
    let seen = upstream2.tls_seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(!seen[0].resumed);
    assert!(seen[1..].iter().all(|s| s.resumed), "{seen:?}");
    assert!(
        seen.iter().all(|s| s.sni.is_none()),
        "no SNI for an IP address"
    );
}

#[test]
fn an_untrusted_or_misnamed_upstream_certificate_is_a_502_with_a_log_line() {
    let pki = Pki::new("trusted");
    let rogue = Pki::new("rogue");
    let imposter = rogue.server(&["backend.test"], Alg::EcdsaP256);
    let misnamed = pki.server(&["other.test"], Alg::EcdsaP256);
    for (cert, why) in [
        (&imposter, "UnknownIssuer"),
        (&misnamed, "not valid for name"),
    ] {
        let upstream = Upstream::start_tls("bad", common::tls::server_config(cert, None), |_| {
            ok("leak")
        });
        let gw = Gateway::start(&config(
            "epoll",
            &tls_upstream_config(
                &upstream,
                &format!(
                    "ca_file = \"{}\"\nserver_name = \"backend.test\"",
                    pki.ca_path.display()
                ),
                "",
            ),
        ));
        let r = common::get(gw.addr, "/");
        assert_eq!(r.status, 502, "{why}");
        assert!(r.text().contains("upstream_connect_failed"), "{}", r.text());
        assert_eq!(upstream.request_count(), 0, "{why}: nothing was sent");
        common::wait_until(Duration::from_secs(10), "the log line", || {
            let log = gw.log_text();
            log.contains("upstream TLS handshake failed") && log.contains(why)
        });
    }
}

#[test]
fn upstream_mtls_presents_the_configured_client_certificate() {
    let pki = Pki::new("upmtls");
    let backend = pki.server(&["backend.test"], Alg::EcdsaP256);
    let gateway_id = pki.client("gateway");
    let upstream = Upstream::start_tls(
        "strict",
        common::tls::server_config(&backend, Some(&pki)),
        |_| ok("admitted"),
    );
    let gw = Gateway::start(&config(
        "epoll",
        &tls_upstream_config(
            &upstream,
            &format!(
                "ca_file = \"{}\"\nserver_name = \"backend.test\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
                pki.ca_path.display(),
                gateway_id.cert.display(),
                gateway_id.key.display()
            ),
            "",
        ),
    ));
    assert_eq!(common::get(gw.addr, "/").text(), "admitted");
    assert!(upstream.tls_seen()[0].client_cert);
}

#[test]
fn a_shared_ticket_key_file_lets_sessions_resume_across_a_restart() {
    let pki = Pki::new("ticketfile");
    let cert = pki.server(&["t.test"], Alg::EcdsaP256);
    let key_file = common::temp_path("tickets.key");
    std::fs::write(&key_file, [42u8; 48]).unwrap();
    let upstream = Upstream::named("app");
    let section = listener_tls(
        &[&cert],
        &format!("ticket_key_file = \"{}\"", key_file.display()),
    );
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    let first = Gateway::start(&config(
        "epoll",
        &format!("{section}\n{}", proxy_to(&upstream)),
    ));
    let mut conn = connect(first.addr, "t.test", &client).unwrap();
    conn.send(&get("/", "t.test"));
    assert_eq!(conn.read_response(false).status, 200);
    drop(conn);
    drop(first);
    // Another process (a restart, or another node) with the same key file.
    let second = Gateway::start(&config(
        "epoll",
        &format!("{section}\n{}", proxy_to(&upstream)),
    ));
    let conn = connect(second.addr, "t.test", &client).unwrap();
    assert!(
        resumed(&conn),
        "the ticket from the first process resumed on the second"
    );
    // Without the file, a new process cannot open the old tickets.
    let plain = listener_tls(&[&cert], "");
    let third = Gateway::start(&config(
        "epoll",
        &format!("{plain}\n{}", proxy_to(&upstream)),
    ));
    let mut fresh = (*client).clone();
    fresh.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let fresh = std::sync::Arc::new(fresh);
    let conn = connect(second.addr, "t.test", &fresh).unwrap();
    assert!(!resumed(&conn));
    let conn = connect(third.addr, "t.test", &fresh).unwrap();
    assert!(!resumed(&conn), "a ticket from another key must not resume");
}

#[test]
fn tls13_session_tickets_are_sent_right_after_the_handshake() {
    // Holding the tickets back until the first response would also hold
    // back the ACK of the client's Finished: a client with Nagle on (the
    // default) would then wait for a delayed ACK before sending its
    // request. The tickets must arrive without a request.
    use std::io::Read;
    let pki = Pki::new("tickets");
    let cert = pki.server(&["k.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
    ));
    let client = client_config(&[&pki.ca_der], &ClientOptions::default());
    let mut conn = connect(gw.addr, "k.test", &client).unwrap();
    conn.stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = conn
        .stream
        .sock
        .read(&mut buf)
        .expect("tickets arrive unasked");
    assert!(n > 0);
    assert_eq!(buf[0], 23, "a TLS 1.3 record (NewSessionTicket, encrypted)");
}

/// Counts the TLS 1.3 tickets a client is given.
#[derive(Debug)]
struct CountingStore {
    inner: rustls::client::ClientSessionMemoryCache,
    tickets: std::sync::atomic::AtomicUsize,
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(name)
    }
}

#[test]
fn a_full_handshake_gets_two_tickets_and_a_resumption_one() {
    // Two after a full handshake, for a client opening parallel
    // connections; one after a resumption, replacing the ticket it spent.
    // Each extra ticket costs both sides work on every new connection.
    let pki = Pki::new("ticketcount");
    let cert = pki.server(&["n.test"], Alg::EcdsaP256);
    let upstream = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!("{}\n{}", listener_tls(&[&cert], ""), proxy_to(&upstream)),
    ));
    let store = Arc::new(CountingStore {
        inner: rustls::client::ClientSessionMemoryCache::new(32),
        tickets: Default::default(),
    });
    let mut client = (*client_config(&[&pki.ca_der], &ClientOptions::default())).clone();
    client.resumption = rustls::client::Resumption::store(store.clone());
    let client = Arc::new(client);
    let count = || store.tickets.load(std::sync::atomic::Ordering::SeqCst);
    let mut expected = 0;
    for (i, (resumes, tickets)) in [(false, 2), (true, 1), (true, 1), (true, 1)]
        .into_iter()
        .enumerate()
    {
        let mut conn = connect(gw.addr, "n.test", &client).unwrap();
        assert_eq!(resumed(&conn), resumes, "connection {i}");
        conn.send(&get("/", "n.test"));
        // The tickets precede the response on the wire.
        assert_eq!(conn.read_response(false).status, 200);
        expected += tickets;
        assert_eq!(count(), expected, "tickets after connection {i}");
    }
}
