//! Hot reload under load: SIGHUP and POST /reload switch routes and
//! upstreams without failing a request; a broken file is refused with every
//! error and the old config keeps serving.

mod common;
use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

fn config_to(driver: &str, target: &Upstream, extra_route: &str) -> String {
    config(
        driver,
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[upstreams.a]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"a\"\n{extra_route}",
            target.addr
        ),
    )
}

fn post(addr: std::net::SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: localhost:9901\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
}

/// Keep-alive clients hammering the gateway until told to stop; counts
/// answers that were not 200 and connections that broke.
fn load(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<usize>> {
    (0..4)
        .map(|_| {
            let (stop, failures) = (stop.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) {
                    if !c.try_send(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n") {
                        failures.fetch_add(1, Ordering::Relaxed);
                        c = Conn::open(addr);
                        continue;
                    }
                    match c.try_read_response(false) {
                        Some(r) if r.status == 200 => done += 1,
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            c = Conn::open(addr);
                        }
                    }
                }
                done
            })
        })
        .collect()
}

#[test]
fn reload_switches_routes_and_upstreams_under_load_without_failures() {
    for driver in drivers() {
        let (a, b) = (Upstream::named("a"), Upstream::named("b"));
        let gw = Gateway::start(&config_to(driver, &a, ""));
        let admin = gw.admin.unwrap();
        let path = gw.log.with_file_name("gateway.toml");
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let clients = load(gw.addr, stop.clone(), failures.clone());
        std::thread::sleep(Duration::from_millis(300));

        // 1. SIGHUP: the same upstream name now points at b, plus a new route.
        std::fs::write(&path, config_to(driver, &b, "[[routes]]\nname = \"new\"\npath = \"/new\"\nrespond = { status = 201, body = \"fresh\" }\n")).unwrap();
        gw.signal(libc::SIGHUP);
        wait_until(
            PATIENCE,
            "traffic moves to the new upstream after SIGHUP",
            || b.request_count() > 0,
        );
        let r = get(gw.addr, "/new");
        assert_eq!(
            (r.status, r.text().as_str()),
            (201, "fresh"),
            "{driver}: the added route answers"
        );

        // 2. POST /reload back to a; the new route disappears again.
        std::fs::write(&path, config_to(driver, &a, "")).unwrap();
        let r = post(admin, "/reload");
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        assert!(r.text().contains("workers switched"), "{}", r.text());
        let a_mark = a.request_count();
        wait_until(PATIENCE, "traffic back on a", || a.request_count() > a_mark);
        assert_eq!(
            get(gw.addr, "/new").text(),
            "a",
            "{driver}: /new falls back to the prefix route"
        );

        stop.store(true, Ordering::Relaxed);
        let served: usize = clients.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(served > 200, "{driver}: the load really ran ({served})");
        assert_eq!(
            failures.load(Ordering::Relaxed),
            0,
            "{driver}: no request failed across two reloads"
        );
        // /config shows the running (reloaded) file.
        assert!(get(admin, "/config").text().contains(&a.addr.to_string()));
    }
}

#[test]
fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let a = Upstream::named("a");
    let gw = Gateway::start(&config_to("epoll", &a, ""));
    let admin = gw.admin.unwrap();
    let path = gw.log.with_file_name("gateway.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nbind = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"nowhere\"\nbogus = 1\n",
    )
    .unwrap();

    let r = post(admin, "/reload");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("gateway.toml:5:1: unknown field `bogus`"),
        "{}",
        r.text()
    );
    assert_eq!(get(gw.addr, "/x").text(), "a", "old config still serving");

    gw.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        get(gw.addr, "/x").text(),
        "a",
        "old config still serving after SIGHUP"
    );
    assert!(
        gw.log_text().contains("reload rejected"),
        "{}",
        gw.log_text()
    );
    assert_eq!(get(admin, "/healthz").status, 200);
}

#[test]
fn reload_starts_added_listeners_and_stops_removed_ones() {
    for driver in drivers() {
        let a = Upstream::named("a");
        let original = config_to(driver, &a, "");
        let gw = Gateway::start_args(&original, &["--workers", "2"]);
        let admin = gw.admin.unwrap();
        let path = gw.log.with_file_name("gateway.toml");
        let free = closed_port();

        // Add a second listener.
        let with_second = original.replace(
            "[[listeners]]\nbind = \"127.0.0.1:0\"\n",
            &format!("[[listeners]]\nbind = \"127.0.0.1:0\"\n\n[[listeners]]\nbind = \"{free}\"\n"),
        );
        std::fs::write(&path, &with_second).unwrap();
        let r = post(admin, "/reload");
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        assert!(
            r.text().contains(&format!("listening on http://{free}")),
            "{}",
            r.text()
        );
        for _ in 0..6 {
            assert_eq!(
                get(free, "/x").text(),
                "a",
                "{driver}: the added listener serves on every worker"
            );
        }
        assert_eq!(get(gw.addr, "/x").text(), "a");

        // Remove the original one.
        std::fs::write(
            &path,
            with_second.replace("[[listeners]]\nbind = \"127.0.0.1:0\"\n\n", ""),
        )
        .unwrap();
        let r = post(admin, "/reload");
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        wait_until(PATIENCE, "the removed listener closes", || {
            std::net::TcpStream::connect(gw.addr).is_err()
        });
        assert!(
            std::net::TcpStream::connect(gw.addr).is_err(),
            "{driver}: the removed listener is closed"
        );
        assert_eq!(
            get(free, "/x").text(),
            "a",
            "{driver}: the remaining listener still serves"
        );
    }
}

/// Requests in flight across a reload count themselves out of the counts
/// the balancer reads after it: the in-flight gauge returns to 0, and
/// least_outstanding keeps using both endpoints.
#[test]
fn in_flight_counts_survive_a_reload() {
    let slow = || {
        Upstream::start("app", |_| {
            Reply::Delay(Duration::from_millis(400), Box::new(ok("slow")))
        })
    };
    let (a, b) = (slow(), slow());
    let text = config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nbalance = \"least_outstanding\"\nendpoints = [\"{}\", \"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            a.addr, b.addr
        ),
    );
    let gw = Gateway::start(&text);
    let admin = gw.admin.unwrap();
    let in_flight = || -> u64 {
        get(admin, "/metrics")
            .text()
            .lines()
            .filter(|l| l.starts_with("ringgate_upstream_requests_in_flight{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    for _ in 0..3 {
        let clients: Vec<_> = (0..6)
            .map(|_| {
                let addr = gw.addr;
                std::thread::spawn(move || get(addr, "/x").status)
            })
            .collect();
        wait_until(PATIENCE, "requests in flight", || {
            a.request_count() + b.request_count() > 0 && in_flight() > 0
        });
        assert_eq!(post(admin, "/reload").status, 200);
        for c in clients {
            assert_eq!(c.join().unwrap(), 200);
        }
        wait_until(PATIENCE, "the in-flight gauge back at 0", || {
            in_flight() == 0
        });
    }
    let (before_a, before_b) = (a.request_count(), b.request_count());
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let addr = gw.addr;
            std::thread::spawn(move || get(addr, "/x").status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    let (after_a, after_b) = (a.request_count() - before_a, b.request_count() - before_b);
    assert!(
        after_a >= 2 && after_b >= 2,
        "least_outstanding spreads 6 concurrent requests: {after_a} / {after_b}"
    );
}

/// A reload that leaves the rate-limit policies unchanged must not make
/// them refuse anything: a node-scope bucket whose rate is far above the
/// load (and whose small burst makes workers live on the aggregator's
/// grants) admits every request through a series of reloads under load.
/// (Before reloads kept the policy list's identity, this run saw ~2 400
/// refusals: grants for the old snapshot id were ignored.)
#[test]
fn reloads_under_load_never_make_an_unchanged_node_limit_refuse() {
    let up = Upstream::named("app");
    let text = config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[rate_limits.roomy]\nkey = \"global\"\nscope = \"node\"\nrate = \"1000000/s\"\nburst = 50\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\nrate_limits = [\"roomy\"]\n",
            up.addr
        ),
    )
    .replace("workers = 1", "workers = 2");
    let gw = Gateway::start(&text);
    let admin = gw.admin.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let clients = load(gw.addr, stop.clone(), failures.clone());
    wait_until(PATIENCE, "load running", || up.request_count() > 100);
    for i in 0..12 {
        let mark = up.request_count();
        if i % 2 == 0 {
            gw.signal(libc::SIGHUP);
        } else {
            assert_eq!(post(admin, "/reload").status, 200);
        }
        // Let some traffic through under the new generation each time.
        wait_until(PATIENCE, "traffic after the reload", || {
            up.request_count() > mark + 200
        });
    }
    stop.store(true, Ordering::Relaxed);
    let served: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let limited = get(admin, "/metrics")
        .text()
        .lines()
        .find_map(|l| {
            l.strip_prefix("ringgate_rejected_requests_total{reason=\"rate_limited\"")
                .and_then(|rest| rest.rsplit(' ').next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    assert!(served > 2000, "{served} served");
    assert_eq!(limited, 0, "429s during reloads of an unchanged policy");
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

/// The path DNS re-resolution takes too: an upstream whose endpoint list
/// changes keeps its pooled connections to the addresses it still has.
#[test]
fn a_changed_endpoint_list_keeps_the_pools_of_unchanged_addresses() {
    let (a, b, c) = (
        Upstream::named("a"),
        Upstream::named("b"),
        Upstream::named("c"),
    );
    let with = |second: &Upstream| {
        config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nendpoints = [\"{}\", \"{}\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
                a.addr, second.addr
            ),
        )
    };
    let gw = Gateway::start(&with(&b));
    let path = gw.log.with_file_name("gateway.toml");
    let mut client = Conn::open(gw.addr);
    let mut get = |n: usize| {
        for i in 0..n {
            client.send(format!("GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            assert_eq!(client.read_response(false).status, 200);
        }
    };
    get(10);
    assert_eq!((a.request_count(), b.request_count()), (5, 5));
    assert_eq!(a.connections(), 1, "one pooled connection to a");
    std::fs::write(&path, with(&c)).unwrap();
    let r = post(gw.admin.unwrap(), "/reload");
    assert_eq!(r.status, 200, "{}", r.text());
    get(10);
    assert_eq!(a.request_count(), 10);
    assert_eq!(c.request_count(), 5);
    assert_eq!(b.request_count(), 5, "b is gone");
    assert_eq!(a.connections(), 1, "a's pooled connection was kept");
}
