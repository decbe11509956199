//! The `ringgate` command line: argument parsing and exit codes only.

use std::path::PathBuf;
use std::process::ExitCode;

use ringgate::config;
use ringgate::router::{RequestFacts, Verdict};
use ringgate::snapshot::{PathRewrite, RouteAction, Snapshot};

const HELP: &str = "\
ringgate — a thread-per-core HTTP/1.1 API gateway

USAGE:
    ringgate [run] [-c FILE] [--workers N] [--log-level LEVEL]
    ringgate check -c FILE
    ringgate route -c FILE METHOD URL [-H 'name: value']...

COMMANDS:
    run      Start the gateway (the default). Without -c it runs an embedded
             config: one listener on 127.0.0.1:8080 answering GET / directly.
    check    Validate a config file. Prints every error as FILE:LINE:COL and
             exits 3 if there are any.
    route    Explain which route a request would match, why earlier candidates
             did not, and where it would be sent.

OPTIONS:
    -c, --config FILE      Config file (TOML). See docs/config.md.
    --workers N            Override `workers` from the config.
    --log-level LEVEL      error, warn, info, debug or trace (default info).
    -H, --header 'N: V'    (route) A request header; repeatable.
    -h, --help             Print this help.
    -V, --version          Print the version.

EXIT CODES:
    0 success · 1 runtime failure · 2 bad usage · 3 invalid config

SIGNALS:
    SIGTERM, SIGINT  stop accepting, finish in-flight requests (up to
                     server.drain_timeout), then exit 0.
";

enum Mode {
    Run,
    Check,
    Route,
}

struct Args {
    mode: Mode,
    config: Option<PathBuf>,
    workers: Option<usize>,
    log_level: Option<String>,
    headers: Vec<String>,
    positional: Vec<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut raw = std::env::args().skip(1).peekable();
    let mode = match raw.peek().map(String::as_str) {
        Some("run") => {
            raw.next();
            Mode::Run
        }
        Some("check") => {
            raw.next();
            Mode::Check
        }
        Some("route") => {
            raw.next();
            Mode::Route
        }
        _ => Mode::Run,
    };
    let mut args = Args {
        mode,
        config: None,
        workers: None,
        log_level: None,
        headers: Vec::new(),
        positional: Vec::new(),
    };
    while let Some(arg) = raw.next() {
        let mut value = |name: &str| raw.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("ringgate {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-c" | "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--workers" => {
                let v = value("--workers")?;
                args.workers = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| {
                            format!("--workers must be a number from 1 to 1024, got `{v}`")
                        })?,
                );
            }
            "--log-level" => args.log_level = Some(value("--log-level")?),
            "-H" | "--header" => args.headers.push(value("--header")?),
            other if other.starts_with('-') => {
                return Err(format!("unknown option `{other}` (see --help)"));
            }
            other => args.positional.push(other.to_string()),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringgate: {e}");
            return ExitCode::from(2);
        }
    };
    let loaded = match &args.config {
        Some(path) => config::load_file(path),
        None if matches!(args.mode, Mode::Run) => config::embedded_default(),
        None => {
            eprintln!("ringgate: this command needs -c FILE");
            return ExitCode::from(2);
        }
    };
    let mut snapshot = match loaded {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("ringgate: {} error(s) in the config", errors.0.len());
            return ExitCode::from(3);
        }
    };
    match args.mode {
        Mode::Check => {
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes, {} workers)",
                snapshot.source,
                snapshot.listeners.len(),
                snapshot.upstreams.len(),
                snapshot.routes.len(),
                snapshot.workers
            );
            ExitCode::SUCCESS
        }
        Mode::Route => explain_route(&snapshot, &args),
        Mode::Run => {
            if !args.positional.is_empty() {
                eprintln!(
                    "ringgate: unexpected argument `{}` (see --help)",
                    args.positional[0]
                );
                return ExitCode::from(2);
            }
            if let Some(n) = args.workers {
                snapshot.workers = n;
            }
            let level = args
                .log_level
                .clone()
                .or_else(|| snapshot.log_level.clone())
                .unwrap_or_else(|| "info".into());
            init_logging(&level);
            match ringgate::control::run(snapshot) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringgate: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

struct CliFacts<'a> {
    method: &'a [u8],
    headers: &'a [(String, String)],
}

impl RequestFacts for CliFacts<'_> {
    fn method(&self) -> &[u8] {
        self.method
    }
    fn has_header_value(&self, name: &[u8], value: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.as_bytes().eq_ignore_ascii_case(name) && v.as_bytes() == value)
    }
}

fn explain_route(snapshot: &Snapshot, args: &Args) -> ExitCode {
    let [method, url] = args.positional.as_slice() else {
        eprintln!("ringgate: usage: ringgate route -c FILE METHOD URL [-H 'name: value']...");
        return ExitCode::from(2);
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((n, v)) => headers.push((n.trim().to_string(), v.trim().to_string())),
            None => {
                eprintln!("ringgate: header `{h}` must look like 'name: value'");
                return ExitCode::from(2);
            }
        }
    }
    let (host, path_and_query) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), "/".to_string()),
        },
        None => (
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("host"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            url.clone(),
        ),
    };
    let raw_path = path_and_query.split('?').next().unwrap_or("/");
    // Routed as the gateway would: normalized first (server.normalize_path).
    let mut normalized = raw_path.as_bytes().to_vec();
    if let Some(options) = snapshot.limits.normalize_path {
        match ringgate::http::normalize_path(&mut normalized, options) {
            Ok(len) => normalized.truncate(len),
            Err(e) => {
                println!("request: {method} host={host:?} path={raw_path:?}");
                println!("result: 400 Bad Request ({})", e.reason());
                return ExitCode::SUCCESS;
            }
        }
    }
    let path = String::from_utf8_lossy(&normalized).into_owned();
    let path = path.as_str();
    if path != raw_path {
        println!("normalized: {raw_path:?} -> {path:?}");
    }
    let facts = CliFacts {
        method: method.as_bytes(),
        headers: &headers,
    };
    let explanation = snapshot
        .router
        .explain(host.as_bytes(), path.as_bytes(), &facts);
    println!("request: {method} host={host:?} path={path:?}");
    for (index, verdict) in &explanation.steps {
        let name = &snapshot.routes[*index as usize].name;
        let m = &snapshot.router.matchers()[*index as usize];
        match verdict {
            Verdict::Matched => println!("  MATCH  #{index} {name} ({}, {})", m.host, m.path),
            Verdict::PredicateFailed(why) => println!("  skip   #{index} {name}: {why}"),
            Verdict::NotApplicable(why) => println!("  -      #{index} {name}: {why}"),
        }
    }
    let Some(winner) = explanation.winner else {
        println!("result: no route matches → 404");
        return ExitCode::from(1);
    };
    let route = &snapshot.routes[winner as usize];
    match &route.action {
        RouteAction::Respond { status, body, .. } => {
            println!(
                "result: route {} answers directly: {status} ({} byte body)",
                route.name,
                body.len()
            );
        }
        RouteAction::Proxy { upstream } => {
            let spec = &snapshot.upstreams[*upstream];
            let forwarded = match &route.path_rewrite {
                PathRewrite::None => path.to_string(),
                PathRewrite::StripPrefix(len) => {
                    let rest = &path[(*len).min(path.len())..];
                    if rest.starts_with('/') {
                        rest.to_string()
                    } else {
                        format!("/{rest}")
                    }
                }
                PathRewrite::ReplacePrefix { len, with } => {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(with),
                        &path[(*len).min(path.len())..]
                    )
                }
            };
            println!(
                "result: route {} → upstream {} ({:?})",
                route.name, spec.name, spec.balance
            );
            for e in &spec.endpoints {
                println!("  endpoint {} weight {}", e.addr, e.weight);
            }
            println!("  forwarded path: {forwarded}");
            println!("  host: {:?}", route.host_rewrite);
            let edits = &route.request_headers;
            for (n, v) in &edits.set {
                println!(
                    "  request header set: {}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                );
            }
            for (n, v) in &edits.add {
                println!(
                    "  request header add: {}: {}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                );
            }
            for n in &edits.remove {
                println!("  request header remove: {}", String::from_utf8_lossy(n));
            }
        }
    }
    ExitCode::SUCCESS
}
