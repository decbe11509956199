//! The command line: `check`, `route`, `--help`, overrides and exit codes.

mod common;
use common::*;
use std::process::Command;

fn ringgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_example_configs() {
    for file in ["config/gateway.toml", "config/default.toml"] {
        let (code, stdout, stderr) = ringgate(&["check", "-c", file]);
        assert_eq!(code, 0, "{file}: {stderr}");
        assert!(stdout.contains(": ok"), "{stdout}");
    }
}

#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let path = temp_path("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nbind = \"nowhere\"\n\n[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n\n[[routes]]\nupstream = \"b\"\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, _, stderr) = ringgate(&["check", "-c", p]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!("{p}:2:8: bind must be an IP address and port")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{p}:8:12: unknown upstream `b`")),
        "{stderr}"
    );
    assert!(stderr.contains("2 error(s)"), "{stderr}");

    std::fs::write(&path, "[[routes]]\nupstrem = \"a\"\n").unwrap();
    let (code, _, stderr) = ringgate(&["check", "-c", p]);
    assert_eq!(code, 3);
    assert!(
        stderr.contains(&format!("{p}:2:1: unknown field `upstrem`")),
        "{stderr}"
    );

    let (code, _, stderr) = ringgate(&["check", "-c", "/nonexistent/ringgate.toml"]);
    assert_eq!(code, 3);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn route_explains_the_match_and_the_rewrite() {
    let (code, stdout, _) = ringgate(&[
        "route",
        "-c",
        "config/gateway.toml",
        "GET",
        "http://localhost/api/users?x=1",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("MATCH  #0 api"), "{stdout}");
    assert!(stdout.contains("forwarded path: /users"), "{stdout}");
    assert!(stdout.contains("endpoint 127.0.0.1:9000"), "{stdout}");

    let (code, stdout, _) = ringgate(&[
        "route",
        "-c",
        "config/gateway.toml",
        "GET",
        "http://localhost/v2/x",
        "-H",
        "x-canary: 1",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("MATCH  #1 api-v2-canary"), "{stdout}");
    assert!(stdout.contains("forwarded path: /api/v2/x"), "{stdout}");

    let (code, stdout, _) = ringgate(&[
        "route",
        "-c",
        "config/gateway.toml",
        "GET",
        "http://localhost/v2/x",
    ]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("skip   #1 api-v2-canary: header x-canary: 1 not present"),
        "{stdout}"
    );
    assert!(stdout.contains("no route matches"), "{stdout}");

    // Routed as the gateway routes: after path normalization.
    let (code, stdout, _) = ringgate(&[
        "route",
        "-c",
        "config/gateway.toml",
        "GET",
        "http://localhost/x/..//%61pi/users",
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("normalized: \"/x/..//%61pi/users\" -> \"/api/users\""),
        "{stdout}"
    );
    assert!(stdout.contains("MATCH  #0 api"), "{stdout}");
    let (code, stdout, _) = ringgate(&[
        "route",
        "-c",
        "config/gateway.toml",
        "GET",
        "http://localhost/api%2fusers",
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("result: 400 Bad Request (encoded slash"),
        "{stdout}"
    );
}

#[test]
fn help_and_usage_errors() {
    let (code, stdout, _) = ringgate(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("ringgate check -c FILE"));
    let (code, _, stderr) = ringgate(&["--bogus"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
    let (code, _, stderr) = ringgate(&["check"]);
    assert_eq!(code, 2, "check needs -c");
    assert!(stderr.contains("--config <FILE>"), "{stderr}");
    let (code, stdout, _) = ringgate(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ringgate "), "{stdout}");
    let (code, stdout, _) = ringgate(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("_ringgate()") && stdout.contains("check"),
        "bash completion script"
    );
    let (code, _, stderr) = ringgate(&["route", "-c", "config/gateway.toml", "GET"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, _, _) = ringgate(&["--workers", "0"]);
    assert_eq!(code, 2);
}

#[test]
fn workers_override_starts_that_many_workers() {
    let up = Upstream::named("app");
    let gw = Gateway::start_args(
        &config(
            "epoll",
            &format!(
                "[upstreams.app]\nendpoints = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
                up.addr
            ),
        ),
        &["--workers", "3", "--log-level", "debug"],
    );
    // Several connections so that SO_REUSEPORT spreads them across workers.
    for _ in 0..12 {
        assert_eq!(get(gw.addr, "/").status, 200);
    }
    let log = gw.log_text();
    for w in 0..3 {
        assert!(
            log.contains(&format!("worker={w}")),
            "worker {w} missing from log:\n{log}"
        );
    }
}
