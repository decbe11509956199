//! The admin listener: Prometheus metrics that match the traffic sent,
//! health and readiness, the running config and per-worker counts.

mod common;
use common::*;
use std::collections::HashMap;

fn gateway(driver: &str, up: &Upstream) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n\n[upstreams.app]\nendpoints = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\n\n[[routes]]\nname = \"hello\"\npath = \"/hello\"\nrespond = {{ status = 200, body = \"hi\" }}\n",
            up.addr
        ),
    ))
}

/// Parses the text exposition format strictly enough to catch mistakes:
/// every sample belongs to a family announced by HELP and TYPE, names and
/// labels are well-formed, values are numbers. Returns sample → value.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "bad HELP name in {line:?}");
            helped.insert(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1]
                .split("\",")
                .filter(|p| !p.is_empty())
            {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(!v.trim_end_matches('"').contains('\n'));
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            typed.contains_key(family) && helped.contains(family),
            "sample {name} before its HELP/TYPE"
        );
        if typed[family] == "counter" {
            assert!(
                family.ends_with("_total"),
                "counter {family} must end in _total"
            );
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_count_exactly_the_requests_sent() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        let admin = gw.admin.expect("admin address");
        let mut c = gw.conn();
        for _ in 0..5 {
            c.send(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(c.read_response(false).status, 200);
        }
        c.send(b"POST /api/y HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(c.read_response(false).status, 200);
        for _ in 0..2 {
            c.send(b"GET /nowhere HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(c.read_response(false).status, 404);
        }
        c.send(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
        assert_eq!(request(gw.addr, b"GET / HTTP/1.1\r\n\r\n").status, 400);

        let r = get(admin, "/metrics");
        assert_eq!(r.status, 200, "{driver}");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let m = parse_exposition(&r.text());
        let v = |k: &str| {
            m.get(k)
                .copied()
                .unwrap_or_else(|| panic!("{driver}: missing {k}\n{}", r.text()))
        };
        assert_eq!(
            v(r#"ringgate_requests_total{route="api",method="GET",class="2xx"}"#),
            5.0
        );
        assert_eq!(
            v(r#"ringgate_requests_total{route="api",method="POST",class="2xx"}"#),
            1.0
        );
        assert_eq!(
            v(r#"ringgate_requests_total{route="",method="GET",class="4xx"}"#),
            2.0
        );
        assert_eq!(
            v(r#"ringgate_requests_total{route="hello",method="GET",class="2xx"}"#),
            1.0
        );
        assert_eq!(
            v(r#"ringgate_rejected_requests_total{reason="no_route",status="404"}"#),
            2.0
        );
        assert_eq!(
            v(r#"ringgate_rejected_requests_total{reason="bad_request",status="400"}"#),
            1.0
        );
        assert_eq!(
            v(r#"ringgate_worker_requests_total{worker="0"}"#),
            9.0,
            "the 400 had no parsed request"
        );
        assert_eq!(v("ringgate_request_duration_seconds_count"), 10.0);
        assert_eq!(
            v(r#"ringgate_request_duration_seconds_bucket{le="+Inf"}"#),
            10.0
        );
        assert_eq!(v("ringgate_upstream_response_duration_seconds_count"), 6.0);
        let endpoint = format!(r#"{{upstream="app",endpoint="{}"}}"#, up.addr);
        assert_eq!(
            v(&format!(
                "ringgate_upstream_connections_created_total{endpoint}"
            )),
            up.connections() as f64
        );
        assert_eq!(
            v(&format!("ringgate_upstream_connections_idle{endpoint}")),
            1.0
        );
        assert_eq!(v("ringgate_upstream_connections_reused_total"), 5.0);
        assert!(
            v("ringgate_received_bytes_total") > 300.0 && v("ringgate_sent_bytes_total") > 300.0
        );
        assert_eq!(
            v(r#"ringgate_connections_open{worker="0"}"#),
            1.0,
            "the test's keep-alive connection (the scrape is not on a worker)"
        );
        // Buckets are cumulative.
        let mut last = 0.0;
        for le in ["0.0001", "0.001", "0.01", "0.1", "1", "10", "60"] {
            let b = v(&format!(
                "ringgate_request_duration_seconds_bucket{{le=\"{le}\"}}"
            ));
            assert!(b >= last, "{driver}: bucket {le} decreased");
            last = b;
        }
    }
}

#[test]
fn health_readiness_config_and_workers() {
    let up = Upstream::named("app");
    let gw = Gateway::start_args(
        &config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
                up.addr
            ),
        ),
        &["--workers", "2"],
    );
    let admin = gw.admin.unwrap();
    assert_eq!(get(admin, "/healthz").text(), "ok\n");
    assert_eq!(get(admin, "/readyz").status, 200);
    let cfg = get(admin, "/config");
    assert_eq!(cfg.status, 200);
    assert!(cfg.text().contains("[upstreams.app]"), "{}", cfg.text());
    let workers = get(admin, "/workers").text();
    assert!(
        workers.contains("\"worker\":0") && workers.contains("\"worker\":1"),
        "{workers}"
    );
    assert!(workers.contains("\"driver\":\"epoll\""), "{workers}");
    assert_eq!(get(admin, "/nope").status, 404);
}

#[test]
fn request_ids_are_propagated_or_generated_and_returned() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let gw = gateway(driver, &up);
        // A well-formed client id is kept, sent upstream and returned.
        let r = request(
            gw.addr,
            b"GET /api/a HTTP/1.1\r\nHost: a\r\nX-Request-Id: trace-42.abc\r\n\r\n",
        );
        assert_eq!(r.header("x-request-id"), Some("trace-42.abc"), "{driver}");
        assert_eq!(
            up.requests()[0].header("x-request-id"),
            Some("trace-42.abc")
        );
        assert_eq!(
            up.requests()[0]
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
                .count(),
            1
        );
        // A malformed one (log injection) is replaced by a generated id.
        let r = request(
            gw.addr,
            b"GET /api/b HTTP/1.1\r\nHost: a\r\nX-Request-Id: a\"b c\r\n\r\n",
        );
        let generated = r.header("x-request-id").unwrap().to_string();
        assert_eq!(generated.len(), 32, "{driver}: {generated}");
        assert_eq!(
            up.requests()[1].header("x-request-id"),
            Some(generated.as_str())
        );
        // Every answer carries one, direct responses and failures too, all distinct.
        let mut seen = std::collections::HashSet::new();
        for path in ["/hello", "/nowhere", "/api/c", "/api/d"] {
            let r = get(gw.addr, path);
            let id = r
                .header("x-request-id")
                .unwrap_or_else(|| panic!("{driver} {path}: no id"))
                .to_string();
            assert!(seen.insert(id), "{driver}: ids repeat");
        }
        let r = request(gw.addr, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(r.status, 400);
        assert!(
            r.header("x-request-id").is_some(),
            "{driver}: refusals carry an id too"
        );
    }
}

fn log_gateway(driver: &str, up: &Upstream, log_path: &str, sample: f64) -> Gateway {
    Gateway::start(&config(
        driver,
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[access_log]\npath = \"{log_path}\"\nsample = {sample}\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"app\"\n",
            up.addr
        ),
    ))
}

fn read_lines(path: &std::path::Path, at_least: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines.len() >= at_least || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn access_log_writes_json_lines_and_reopens_on_sigusr1() {
    for driver in drivers() {
        let up = Upstream::named("app");
        let path = temp_path("access.log");
        let gw = log_gateway(driver, &up, path.to_str().unwrap(), 1.0);
        request(
            gw.addr,
            b"GET /api/x?q=1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: rid-1\r\n\r\n",
        );
        request(gw.addr, b"GET /api/%22quoted\" HTTP/1.1\r\nHost: a\r\n\r\n");
        get(gw.addr, "/missing");
        let lines = read_lines(&path, 3);
        assert_eq!(lines.len(), 3, "{driver}");
        let first = &lines[0];
        assert_eq!(first["request_id"], "rid-1");
        assert_eq!(first["method"], "GET");
        assert_eq!(first["path"], "/api/x?q=1");
        assert_eq!(first["status"], 200);
        assert_eq!(first["route"], "api");
        assert_eq!(first["upstream"], up.addr.to_string());
        assert_eq!(first["client"], "127.0.0.1");
        assert_eq!(first["worker"], 0);
        assert!(
            first["bytes_in"].as_u64().unwrap() > 20 && first["bytes_out"].as_u64().unwrap() > 20
        );
        assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
        assert!(first["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["path"], "/api/%22quoted\"");
        assert_eq!(lines[2]["status"], 404);
        assert!(lines[2]["upstream"].is_null());

        // Rotation: move the file away, SIGUSR1, new lines go to a new file.
        let rotated = path.with_extension("log.1");
        std::fs::rename(&path, &rotated).unwrap();
        gw.signal(libc::SIGUSR1);
        wait_until(PATIENCE, "the log file is reopened", || path.exists());
        request(gw.addr, b"GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n");
        let fresh = read_lines(&path, 1);
        assert_eq!(fresh.len(), 1, "{driver}: reopened file gets the new line");
        assert_eq!(fresh[0]["path"], "/api/after");
        assert_eq!(read_lines(&rotated, 3).len(), 3);
    }
}

/// Heads refused before they were understood (400, 431, 414, 408) are
/// logged too, with their status.
#[test]
fn refused_heads_reach_the_access_log() {
    let up = Upstream::named("app");
    let path = temp_path("refused.log");
    let gw = log_gateway("epoll", &up, path.to_str().unwrap(), 1.0);
    let mut c = gw.conn();
    c.send(b"GET /a%2fb HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response(false).status, 400);
    let mut c = gw.conn();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(c.read_response(false).status, 400);
    let lines = read_lines(&path, 2);
    let statuses: Vec<u64> = lines
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [400, 400]);
    assert_eq!(lines[0]["route"], "");
}

#[test]
fn a_full_disk_never_fails_requests_and_drops_are_counted() {
    let up = Upstream::named("app");
    let gw = log_gateway("epoll", &up, "/dev/full", 1.0);
    let mut c = gw.conn();
    for _ in 0..50 {
        c.send(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    let dropped = || -> f64 {
        get(gw.admin.unwrap(), "/metrics")
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("ringgate_access_log_dropped_lines_total "))
            .expect("dropped-lines metric")
            .parse()
            .unwrap()
    };
    wait_until(PATIENCE, "50 dropped lines counted", || dropped() >= 50.0);
    assert_eq!(dropped(), 50.0);
}

#[test]
fn access_log_sampling_keeps_about_the_configured_fraction() {
    let up = Upstream::named("app");
    let path = temp_path("sampled.log");
    let gw = log_gateway("epoll", &up, path.to_str().unwrap(), 0.25);
    let mut c = gw.conn();
    for _ in 0..800 {
        c.send(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    // Shipped every tick: wait until at least the lower bound has arrived.
    let n = read_lines(&path, 120).len();
    assert!(
        (120..=280).contains(&n),
        "{n} of 800 logged at sample = 0.25"
    );
}

/// The admin API checks who is asking: a DNS-rebinding page (a foreign
/// Host), a cross-site form post, and (with token_file) a missing token are
/// refused; /healthz always answers.
#[test]
fn admin_refuses_foreign_hosts_cross_site_posts_and_missing_tokens() {
    let token_path = temp_path("admin.token");
    std::fs::write(&token_path, "s3cret-token\n").unwrap();
    let up = Upstream::named("app");
    let text = |token: bool| {
        config(
            "epoll",
            &format!(
                "[admin]\nbind = \"127.0.0.1:0\"\nallowed_hosts = [\"gw.internal\"]\n{}\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
                if token {
                    format!("token_file = \"{}\"", token_path.display())
                } else {
                    String::new()
                },
                up.addr
            ),
        )
    };
    let gw = Gateway::start(&text(false));
    let admin = gw.admin.unwrap();
    let ask = |raw: &str| request(admin, raw.as_bytes()).status;
    assert_eq!(
        ask("GET /config HTTP/1.1\r\nHost: 127.0.0.1:9901\r\n\r\n"),
        200
    );
    assert_eq!(ask("GET /config HTTP/1.1\r\nHost: [::1]:9901\r\n\r\n"), 200);
    assert_eq!(
        ask("GET /config HTTP/1.1\r\nHost: gw.internal\r\n\r\n"),
        200
    );
    assert_eq!(
        ask("GET /config HTTP/1.1\r\nHost: attacker.example:9901\r\n\r\n"),
        403,
        "DNS rebinding: a foreign name"
    );
    assert_eq!(
        ask("GET /healthz HTTP/1.1\r\nHost: attacker.example\r\n\r\n"),
        200
    );
    let post = |extra: &str| {
        ask(&format!(
            "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Content-Length: 0\r\n\r\n"
        ))
    };
    assert_eq!(post(""), 200, "curl -X POST");
    assert_eq!(post("Origin: https://evil.example\r\n"), 403);
    assert_eq!(post("Origin: null\r\n"), 403);
    assert_eq!(post("Sec-Fetch-Site: cross-site\r\n"), 403);
    assert_eq!(
        post("Content-Type: application/x-www-form-urlencoded\r\n"),
        403
    );
    assert_eq!(post("Origin: http://127.0.0.1:9901\r\n"), 200);

    let gw = Gateway::start(&text(true));
    let admin = gw.admin.unwrap();
    let ask = |raw: &str| request(admin, raw.as_bytes());
    let r = ask("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(
        ask("GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong\r\n\r\n")
            .status,
        401
    );
    assert_eq!(
        ask(
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret-token\r\n\r\n"
        )
        .status,
        200
    );
    assert_eq!(
        ask("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").status,
        200
    );
}

/// A client that connects and sends nothing (or trickles) holds its own
/// admin thread only: /healthz keeps answering.
#[test]
fn a_silent_admin_client_does_not_wedge_healthz() {
    let up = Upstream::named("app");
    let gw = Gateway::start(&config(
        "epoll",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\n[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
            up.addr
        ),
    ));
    let admin = gw.admin.unwrap();
    let mut silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(admin).unwrap())
        .collect();
    use std::io::Write;
    silent[0].write_all(b"GET /metr").unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get(admin, "/healthz").text(), "ok\n");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "answered while others hang"
    );
}

/// /config shows no secret: Redis credentials, header values the gateway
/// sets, header predicates. Secrets may come from the environment or a
/// file, and still reach the upstream.
#[test]
fn config_redacts_secrets_and_secrets_come_from_env_or_files() {
    let up = Upstream::named("app");
    let secret_file = temp_path("upstream.secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let path = temp_path("secrets.toml");
    std::fs::write(
        &path,
        config(
            "epoll",
            &format!(
                r#"[admin]
bind = "127.0.0.1:0"
[upstreams.app]
endpoints = ["{}"]
[[routes]]
path_prefix = "/inline"
upstream = "app"
headers = {{ "x-shared" = "predicate-secret" }}
request_headers = {{ set = {{ "authorization" = "Bearer inline-secret" }} }}
[[routes]]
path_prefix = "/env"
upstream = "app"
request_headers = {{ set = {{ "authorization" = "${{env:RINGGATE_TEST_UPSTREAM_TOKEN}}", "x-file" = "${{file:{}}}" }} }}
"#,
                up.addr,
                secret_file.display()
            ),
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("RINGGATE_TEST_UPSTREAM_TOKEN", "Bearer from-env")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Addresses from the startup lines, as the harness reads them.
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let line = lines.next().expect("startup line").unwrap();
        if let Some(rest) = line.split("admin on http://").nth(1) {
            admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.split("listening on http://").nth(1) {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    let (addr, admin): (std::net::SocketAddr, std::net::SocketAddr) =
        (addr.unwrap(), admin.unwrap());
    let shown = get(admin, "/config").text();
    for secret in ["predicate-secret", "inline-secret"] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(
        shown.contains("${env:RINGGATE_TEST_UPSTREAM_TOKEN}"),
        "references are shown, values are not: {shown}"
    );
    let r = request(addr, b"GET /env/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    let received = up.requests().pop().unwrap();
    let header = |n: &str| {
        received
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("authorization").as_deref(), Some("Bearer from-env"));
    assert_eq!(header("x-file").as_deref(), Some("from-a-file"));
    let _ = child.kill();
    let _ = child.wait();
}
