//! IP allow/deny rules end to end: per route and per listener, deny-first
//! and allow-first, IPv4 and IPv6 (a `[::1]` listener and addresses behind
//! a trusted proxy), `X-Forwarded-For` believed only from trusted proxies,
//! refusal by 403 or by closing, a rule of a thousand networks from a
//! file, and the decisions counted on `/metrics`.

mod common;

use std::io::Read;
use std::net::SocketAddr;

use common::{Conn, Gateway, Upstream, config, drivers, get, metric, request, temp_path};

fn get_from(addr: SocketAddr, path: &str, forwarded_for: &str) -> common::Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {forwarded_for}\r\n\r\n")
            .as_bytes(),
    )
}

const ADMIN: &str = "[admin]\nbind = \"127.0.0.1:0\"\n\n";

#[test]
fn route_rules_admit_and_refuse_by_client_address() {
    let upstream = Upstream::named("app");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "{ADMIN}[ip_rules.loopback_but_one]\nallow = [\"127.0.0.0/8\", \"::1\"]\ndeny = [\"127.0.0.1\"]\n\n\
                 [ip_rules.exception]\norder = \"allow-first\"\ndeny = [\"127.0.0.0/8\"]\nallow = [\"127.0.0.1/32\"]\n\n\
                 [ip_rules.elsewhere]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n\n\
                 [ip_rules.blocklist]\ndeny = [\"192.0.2.0/24\"]\n\n\
                 [upstreams.app]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\nname = \"denied\"\npath_prefix = \"/denied\"\nupstream = \"app\"\nip_rule = \"loopback_but_one\"\n\n\
                 [[routes]]\nname = \"exception\"\npath_prefix = \"/exception\"\nupstream = \"app\"\nip_rule = \"exception\"\n\n\
                 [[routes]]\nname = \"elsewhere\"\npath_prefix = \"/elsewhere\"\nupstream = \"app\"\nip_rule = \"elsewhere\"\n\n\
                 [[routes]]\nname = \"blocklist\"\npath_prefix = \"/blocklist\"\nupstream = \"app\"\nip_rule = \"blocklist\"\n\n\
                 [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
                upstream.addr
            ),
        ));
        let before = upstream.request_count();
        // Deny-first: 127.0.0.1 is carved out of the allowed 127/8.
        let mut c = Conn::open(gw.addr);
        c.send(b"GET /denied/x HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.read_response(false);
        assert_eq!(r.status, 403, "{driver}");
        assert!(
            r.text().contains("\"error\":\"ip_forbidden\""),
            "{}",
            r.text()
        );
        assert!(r.header("x-request-id").is_some());
        // The connection stays open (it may be a proxy's): the next
        // request on it is served.
        c.send(b"GET /open HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200, "{driver}");
        // Allow-first: the allowed address passes a deny list holding it.
        assert_eq!(get(gw.addr, "/exception").status, 200, "{driver}");
        // Neither list holds 127.0.0.1: an allow list's default is deny,
        // a deny list's allow.
        assert_eq!(get(gw.addr, "/elsewhere").status, 403, "{driver}");
        assert_eq!(get(gw.addr, "/blocklist").status, 200, "{driver}");
        // Without trusted proxies, X-Forwarded-For is not believed.
        assert_eq!(get_from(gw.addr, "/elsewhere", "10.1.2.3").status, 403);
        assert_eq!(get_from(gw.addr, "/blocklist", "192.0.2.9").status, 200);
        assert_eq!(
            upstream.request_count() - before,
            4,
            "{driver}: refused requests never reach the upstream"
        );
        assert_eq!(
            metric(
                &gw,
                "ringgate_ip_rule_decisions_total{rule=\"loopback_but_one\",decision=\"refused\"}"
            ),
            1
        );
        assert_eq!(
            metric(
                &gw,
                "ringgate_ip_rule_decisions_total{rule=\"elsewhere\",decision=\"refused\"}"
            ),
            2
        );
        assert_eq!(
            metric(
                &gw,
                "ringgate_ip_rule_decisions_total{rule=\"exception\",decision=\"admitted\"}"
            ),
            1
        );
        assert!(
            metric(
                &gw,
                "ringgate_rejected_requests_total{reason=\"ip_forbidden\",status=\"403\"}"
            ) >= 3,
            "{driver}"
        );
    }
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_client_is_judged_ipv4_and_ipv6() {
    let upstream = Upstream::named("app");
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[ip_rules.partners]\ntrusted_proxies = [\"127.0.0.1\"]\nallow = [\"203.0.113.0/24\", \"2001:db8::/32\"]\ndeny = [\"203.0.113.66\", \"2001:db8:bad::/48\"]\n\n\
                 [upstreams.app]\nendpoints = [\"{}\"]\n\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nip_rule = \"partners\"\n",
                upstream.addr
            ),
        ));
        for (xff, status) in [
            ("203.0.113.7", 200),
            ("203.0.113.66", 403),
            ("198.51.100.1", 403),
            ("2001:db8::1", 200),
            ("2001:db8:bad::1", 403),
            ("2001:db9::1", 403),
            // The right-most untrusted entry decides; forged entries to
            // its left do not.
            ("203.0.113.7, 198.51.100.1", 403),
            ("198.51.100.1, 203.0.113.7", 200),
            ("203.0.113.7, 127.0.0.1", 200),
            // Garbage: the chain is not believed, the peer (127.0.0.1,
            // on no allow list) is judged.
            ("not-an-ip", 403),
        ] {
            assert_eq!(get_from(gw.addr, "/", xff).status, status, "{driver} {xff}");
        }
        // The peer itself, with no X-Forwarded-For.
        assert_eq!(get(gw.addr, "/").status, 403, "{driver}");
    }
}

#[test]
fn an_ipv6_client_is_judged_by_the_ipv6_networks() {
    let upstream = Upstream::named("app");
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: no IPv6 loopback here; skipping the [::1] listener test");
        return;
    }
    for driver in drivers() {
        for (rule, status) in [
            ("allow = [\"::1/128\"]", 200),
            ("allow = [\"127.0.0.1\", \"fe80::/10\"]", 403),
            ("deny = [\"::/0\"]", 403),
            ("deny = [\"0.0.0.0/0\"]", 200),
        ] {
            let gw = Gateway::start(&format!(
                "workers = 1\nio_driver = \"{driver}\"\n\n[[listeners]]\nbind = \"[::1]:0\"\nip_rule = \"v6\"\n\n\
                 [ip_rules.v6]\n{rule}\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
                upstream.addr
            ));
            assert!(gw.addr.is_ipv6());
            assert_eq!(get(gw.addr, "/").status, status, "{driver} {rule}");
        }
    }
}

#[test]
fn a_listener_rule_guards_every_route_and_can_close_without_answering() {
    let upstream = Upstream::named("app");
    for driver in drivers() {
        // config() leaves the listener table open: the rule is the
        // listener's.
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "ip_rule = \"nobody_local\"\n\n[ip_rules.nobody_local]\ndeny = [\"127.0.0.0/8\"]\naction = \"close\"\n\n\
                 [upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath = \"/known\"\nupstream = \"app\"\n",
                upstream.addr
            ),
        ));
        for path in ["/known", "/unknown"] {
            let mut c = Conn::open(gw.addr);
            c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let mut got = Vec::new();
            let _ = c.stream.read_to_end(&mut got);
            assert!(
                got.is_empty(),
                "{driver} {path}: closed without an answer, got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
        assert_eq!(upstream.request_count(), 0, "{driver}");
    }
}

#[test]
fn a_rule_of_a_thousand_networks_from_files() {
    let upstream = Upstream::named("app");
    // 1 000 /24s, none of them loopback, and the loopback /8 among them
    // in the allow file; the deny file carves out one address.
    let mut allow = String::from("# partner networks\n");
    for i in 0..1000u32 {
        allow.push_str(&format!(
            "{}.{}.{}.0/24  # partner {i}\n",
            11 + i / 250,
            i % 250,
            i % 7
        ));
    }
    allow.push_str("127.0.0.0/8\n\n2001:db8::/32\n");
    let allow_path = temp_path("allow.txt");
    std::fs::write(&allow_path, allow).unwrap();
    let deny_path = temp_path("deny.txt");
    std::fs::write(&deny_path, "127.0.0.2\n").unwrap();
    for driver in drivers() {
        let gw = Gateway::start(&config(
            driver,
            &format!(
                "[ip_rules.partners]\nallow_file = \"{}\"\ndeny_file = \"{}\"\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
                 [upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nip_rule = \"partners\"\n",
                allow_path.display(),
                deny_path.display(),
                upstream.addr
            ),
        ));
        assert_eq!(get(gw.addr, "/").status, 200, "{driver}");
        assert_eq!(get_from(gw.addr, "/", "11.0.0.9").status, 200, "{driver}");
        assert_eq!(get_from(gw.addr, "/", "11.0.1.9").status, 403, "{driver}");
        assert_eq!(get_from(gw.addr, "/", "127.0.0.2").status, 403, "{driver}");
        assert_eq!(
            get_from(gw.addr, "/", "2001:db8::2").status,
            200,
            "{driver}"
        );
    }
}

#[test]
fn bad_rules_are_refused_at_load_naming_the_problem() {
    for (rules, wants) in [
        (
            "[ip_rules.r]\nallow = [\"10.0.0.0/33\"]\n",
            "not an address or CIDR",
        ),
        (
            "[ip_rules.r]\nallow = [\"10.0.0.0/8\"]\norder = \"sideways\"\n",
            "deny-first",
        ),
        (
            "[ip_rules.r]\nallow = [\"10.0.0.0/8\"]\naction = \"drop\"\n",
            "forbid",
        ),
        ("[ip_rules.r]\n", "needs networks"),
        (
            "[ip_rules.r]\nallow_file = \"/nonexistent/allow\"\n",
            "cannot read",
        ),
    ] {
        let text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n\n{rules}\n[[routes]]\nip_rule = \"r\"\n[routes.respond]\nstatus = 200\n"
        );
        let err = common::config_error(&text);
        assert!(err.contains(wants), "{rules}: {err}");
    }
    let err = ringgate::config::load_str(
        "[[listeners]]\nbind = \"127.0.0.1:0\"\nip_rule = \"nope\"\n[[routes]]\n[routes.respond]\nstatus = 200\n",
        "t",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unknown ip_rules `nope`"), "{err}");
}
