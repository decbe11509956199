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
