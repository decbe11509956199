//! Path normalization before routing (RFC 3986 §6.2.2), against the real
//! binary: hostile spellings of a guarded path reach the guard, a prefix
//! route never forwards a path outside its prefix, what cannot be
//! normalized safely is refused with 400, and the switches work.

mod common;
use common::*;

fn gateway(driver: &str, public: &Upstream, fallback: &Upstream, server: &str) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            r#"
[server]
{server}
[upstreams.public]
endpoints = ["{}"]
[upstreams.fallback]
endpoints = ["{}"]

[[routes]]
name = "admin-guard"
path_prefix = "/admin"
respond = {{ status = 403, body = "guarded" }}

[[routes]]
name = "public"
path_prefix = "/public"
strip_prefix = true
upstream = "public"

[[routes]]
name = "rest"
path_prefix = "/"
upstream = "fallback"
"#,
            public.addr, fallback.addr
        ),
    ))
}

fn status_of(gw: &Gateway, target: &str) -> (u16, String) {
    let r = request(
        gw.addr,
        format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    );
    (r.status, r.text())
}

#[test]
fn hostile_spellings_of_a_guarded_path_reach_the_guard() {
    for driver in drivers() {
        let (public, fallback) = (Upstream::named("public"), Upstream::named("fallback"));
        let gw = gateway(driver, &public, &fallback, "");
        for target in [
            "/admin",
            "//admin",
            "///admin/",
            "/./admin",
            "/x/../admin",
            "/x/y/../../admin/users",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/%2e/admin",
            "/x/%2E%2E/admin",
            "/public/../admin",
            "/../admin",
            "/admin/./",
            "http://a/x/../admin",
        ] {
            assert_eq!(
                status_of(&gw, target),
                (403, "guarded".to_string()),
                "{driver}: {target}"
            );
        }
        assert_eq!(
            fallback.request_count(),
            0,
            "{driver}: nothing slipped past"
        );
        assert_eq!(public.request_count(), 0);
    }
}

#[test]
fn a_prefix_route_forwards_only_normalized_paths_inside_its_prefix() {
    for driver in drivers() {
        let (public, fallback) = (Upstream::named("public"), Upstream::named("fallback"));
        let gw = gateway(driver, &public, &fallback, "");
        // (target, which upstream, the path it receives)
        for (target, to_public, forwarded) in [
            ("/public/a/./b/../c?q=%2F", true, "/a/c?q=%2F"),
            ("/public//a//b", true, "/a/b"),
            ("/public/%7euser/x%3f", true, "/~user/x%3F"),
            ("/public/../internal", false, "/internal"),
            ("/public/%2e%2e/internal", false, "/internal"),
            ("/public/x/../../internal", false, "/internal"),
            ("/publicity", false, "/publicity"),
        ] {
            let before = (public.request_count(), fallback.request_count());
            let (status, _) = status_of(&gw, target);
            assert_eq!(status, 200, "{driver}: {target}");
            let up = if to_public { &public } else { &fallback };
            let received = up.requests().last().unwrap().target.clone();
            assert_eq!(received, forwarded, "{driver}: {target}");
            let after = (public.request_count(), fallback.request_count());
            assert_eq!(
                after,
                if to_public {
                    (before.0 + 1, before.1)
                } else {
                    (before.0, before.1 + 1)
                },
                "{driver}: {target} went to the wrong upstream"
            );
        }
    }
}

#[test]
fn paths_that_cannot_be_normalized_safely_get_400_and_close() {
    for driver in drivers() {
        let (public, fallback) = (Upstream::named("public"), Upstream::named("fallback"));
        let gw = gateway(driver, &public, &fallback, "");
        for target in [
            "/admin%2fx",
            "/x%2F..%2Fadmin",
            "/a%5cadmin",
            "/a\\admin",
            "/a%00",
            "/a%0d%0aX-Injected:%20yes",
            "/a%",
            "/a%zz",
        ] {
            let mut c = gw.conn();
            c.send(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            let r = c.read_response(false);
            assert_eq!(r.status, 400, "{driver}: {target}");
            assert!(r.text().contains("bad_request"), "{}", r.text());
            assert!(c.is_closed(), "{driver}: {target}: connection closed");
        }
        assert_eq!(fallback.request_count() + public.request_count(), 0);
    }
}

#[test]
fn encoded_slashes_and_slash_merging_are_configurable_and_normalization_can_be_off() {
    let driver = "epoll";
    let (public, fallback) = (Upstream::named("public"), Upstream::named("fallback"));
    let forwarded = |gw: &Gateway, up: &Upstream, target: &str| {
        let (status, _) = status_of(gw, target);
        assert_eq!(status, 200, "{target}");
        up.requests().last().unwrap().target.clone()
    };
    let keep = gateway(driver, &public, &fallback, "encoded_slash = \"keep\"");
    assert_eq!(forwarded(&keep, &fallback, "/x/a%2fb"), "/x/a%2Fb");
    let decode = gateway(driver, &public, &fallback, "encoded_slash = \"decode\"");
    assert_eq!(forwarded(&decode, &fallback, "/x/a%2fb"), "/x/a/b");
    assert_eq!(
        status_of(&decode, "/x%2F..%2Fadmin").0,
        403,
        "decoded slashes are separators before dot segments go"
    );
    let no_merge = gateway(driver, &public, &fallback, "merge_slashes = false");
    assert_eq!(forwarded(&no_merge, &fallback, "/x//y/./z"), "/x//y/z");
    let raw = gateway(driver, &public, &fallback, "normalize_path = false");
    assert_eq!(forwarded(&raw, &fallback, "/x/../%61b"), "/x/../%61b");
}
