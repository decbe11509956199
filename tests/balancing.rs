//! Each balancing policy's distribution, measured at the upstreams.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn gateway(driver: &str, ups: &[&Upstream], upstream_section: &str) -> Gateway {
    let endpoints: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr)).collect();
    Gateway::start(&config(
        driver,
        &format!(
            "[upstreams.app]\nendpoints = [{}]\n{upstream_section}\n[[routes]]\nupstream = \"app\"\n",
            endpoints.join(", ")
        ),
    ))
}

fn fire(gw: &Gateway, n: usize, header: &str) -> HashMap<String, usize> {
    let mut c = gw.conn();
    let mut counts = HashMap::new();
    for _ in 0..n {
        c.send(format!("GET / HTTP/1.1\r\nHost: a\r\n{header}\r\n").as_bytes());
        *counts.entry(c.read_response(false).text()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_exactly_evenly() {
    for driver in drivers() {
        let ups = [
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
        ];
        let gw = gateway(
            driver,
            &[&ups[0], &ups[1], &ups[2]],
            "balance = \"round_robin\"",
        );
        let counts = fire(&gw, 300, "");
        for name in ["a", "b", "c"] {
            assert_eq!(counts[name], 100, "{driver} {counts:?}");
        }
    }
}

#[test]
fn weighted_round_robin_follows_weights() {
    for driver in drivers() {
        let ups = [
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
        ];
        let section = format!(
            "balance = \"weighted_round_robin\"\nendpoints = [{{ addr = \"{}\", weight = 5 }}, {{ addr = \"{}\", weight = 1 }}, {{ addr = \"{}\", weight = 1 }}]",
            ups[0].addr, ups[1].addr, ups[2].addr
        );
        let gw = Gateway::start(&config(
            driver,
            &format!("[upstreams.app]\n{section}\n[[routes]]\nupstream = \"app\"\n"),
        ));
        let counts = fire(&gw, 700, "");
        assert_eq!(
            (counts["a"], counts["b"], counts["c"]),
            (500, 100, 100),
            "{driver}"
        );
    }
}

/// Concurrent clients against one slow and one fast endpoint.
fn slow_fast_counts(driver: &str, policy: &str) -> (usize, usize) {
    let slow = Upstream::start("slow", |_| {
        Reply::Delay(Duration::from_millis(100), Box::new(ok("slow")))
    });
    let fast = Upstream::named("fast");
    let gw = gateway(driver, &[&slow, &fast], &format!("balance = \"{policy}\""));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                for _ in 0..30 {
                    c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
                    assert_eq!(c.read_response(false).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = (slow.request_count(), fast.request_count());
    eprintln!("{driver} {policy}: slow {} fast {}", counts.0, counts.1);
    counts
}

#[test]
fn least_outstanding_sends_less_to_the_slow_endpoint() {
    for driver in drivers() {
        let (slow, fast) = slow_fast_counts(driver, "least_outstanding");
        assert_eq!(slow + fast, 120);
        assert!(fast >= 3 * slow, "{driver}: slow {slow}, fast {fast}");
        // Round robin, for contrast, splits evenly regardless of speed.
        let (slow_rr, fast_rr) = slow_fast_counts(driver, "round_robin");
        assert!(
            slow_rr.abs_diff(fast_rr) <= 4,
            "{driver}: rr slow {slow_rr}, fast {fast_rr}"
        );
    }
}

#[test]
fn power_of_two_spreads_and_avoids_the_slow_endpoint() {
    for driver in drivers() {
        let ups = [
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
            Upstream::named("d"),
        ];
        let gw = gateway(
            driver,
            &[&ups[0], &ups[1], &ups[2], &ups[3]],
            "balance = \"power_of_two\"",
        );
        let counts = fire(&gw, 800, "");
        for name in ["a", "b", "c", "d"] {
            assert!(
                counts.get(name).copied().unwrap_or(0) >= 120,
                "{driver} {counts:?}"
            );
        }
        let (slow, fast) = slow_fast_counts(driver, "power_of_two");
        assert!(fast >= 3 * slow, "{driver}: slow {slow}, fast {fast}");
    }
}

#[test]
fn consistent_hash_pins_each_key_to_one_endpoint() {
    for driver in drivers() {
        let ups = [
            Upstream::named("a"),
            Upstream::named("b"),
            Upstream::named("c"),
        ];
        let gw = gateway(
            driver,
            &[&ups[0], &ups[1], &ups[2]],
            "balance = \"consistent_hash\"\nhash_on = \"header:x-user\"",
        );
        let mut owners = HashMap::new();
        for key in 0..60 {
            let counts = fire(&gw, 3, &format!("x-user: user-{key}\r\n"));
            assert_eq!(
                counts.len(),
                1,
                "{driver}: key {key} spread over {counts:?}"
            );
            owners.insert(key, counts.into_keys().next().unwrap());
        }
        let mut per_endpoint: HashMap<&str, usize> = HashMap::new();
        for owner in owners.values() {
            *per_endpoint.entry(owner.as_str()).or_default() += 1;
        }
        assert_eq!(
            per_endpoint.len(),
            3,
            "{driver}: keys land on every endpoint {per_endpoint:?}"
        );

        // By client IP: every request from 127.0.0.1 goes to one endpoint.
        let gw = gateway(
            driver,
            &[&ups[0], &ups[1], &ups[2]],
            "balance = \"consistent_hash\"\nhash_on = \"client_ip\"",
        );
        assert_eq!(fire(&gw, 30, "").len(), 1, "{driver}");
    }
}
