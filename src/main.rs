//! The `ringgate` command line (clap): argument parsing, exit codes and
//! the `check`/`route` output only.

use std::path::PathBuf;
use std::process::ExitCode;

use ringgate::config;
use ringgate::router::{RequestFacts, Verdict};
use ringgate::snapshot::{PathRewrite, RouteAction, Snapshot};

use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand};

const AFTER_HELP: &str = "\
Without -c, `run` uses an embedded config: one listener on 127.0.0.1:8080
answering GET / directly.

EXIT CODES:
    0 success · 1 runtime failure · 2 bad usage · 3 invalid config

SIGNALS:
    SIGTERM, SIGINT  stop accepting, finish in-flight requests (up to
                     server.drain_timeout), then exit 0.
    SIGHUP           reload the config file (kept on any error).
    SIGUSR1          reopen the access log file.";

#[derive(Parser)]
#[command(
    name = "ringgate",
    version,
    about = "ringgate — a thread-per-core HTTP/1.1 API gateway",
    override_usage = "ringgate [run] [-c FILE] [--workers N] [--log-level LEVEL]
       ringgate check -c FILE
       ringgate route -c FILE METHOD URL [-H 'name: value']...
       ringgate completions SHELL",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// `ringgate` alone is `ringgate run`.
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway (the default).
    Run(RunArgs),
    /// Validate a config file: every error as FILE:LINE:COL, exit 3 if any.
    Check {
        /// Config file (TOML). See docs/config.md.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Explain which route a request would match, why earlier candidates
    /// did not, and where it would be sent.
    Route {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// The request method, e.g. GET.
        method: String,
        /// The request URL (http://host/path?query) or a path.
        url: String,
        /// A request header, 'name: value'; repeatable.
        #[arg(short = 'H', long = "header", value_name = "'N: V'")]
        headers: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(ClapArgs, Default)]
struct RunArgs {
    /// Config file (TOML). See docs/config.md.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override `workers` from the config.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// error, warn, info, debug or trace (default: the config's, else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn load(path: Option<&PathBuf>) -> Result<Snapshot, ExitCode> {
    let loaded = match path {
        Some(path) => config::load_file(path),
        None => config::embedded_default(),
    };
    loaded.map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("ringgate: {} error(s) in the config", errors.0.len());
        ExitCode::from(3)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check { config }) => load(Some(&config)).map(|snapshot| {
            println!(
                "{}: ok ({} listeners, {} upstreams, {} routes, {} workers)",
                snapshot.source,
                snapshot.listeners.len(),
                snapshot.upstreams.len(),
                snapshot.routes.len(),
                snapshot.workers
            );
            ExitCode::SUCCESS
        }),
        Some(Command::Route {
            config,
            method,
            url,
            headers,
        }) => load(Some(&config)).map(|snapshot| explain_route(&snapshot, &method, &url, &headers)),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ringgate",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|code| code)
}

fn run(args: RunArgs) -> Result<ExitCode, ExitCode> {
    let mut snapshot = load(args.config.as_ref())?;
    if let Some(n) = args.workers {
        snapshot.workers = usize::from(n);
    }
    let level = args
        .log_level
        .or_else(|| snapshot.log_level.clone())
        .unwrap_or_else(|| "info".into());
    init_logging(&level);
    Ok(match ringgate::control::run(snapshot) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringgate: {e}");
            ExitCode::from(1)
        }
    })
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

fn explain_route(snapshot: &Snapshot, method: &str, url: &str, header_args: &[String]) -> ExitCode {
    let mut headers = Vec::new();
    for h in header_args {
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
            url.to_string(),
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
        RouteAction::Aggregate(policy) => {
            println!(
                "result: route {} aggregates {} backends (deadline {:?}):",
                route.name,
                policy.backends.len(),
                policy.deadline
            );
            for b in policy.backends.iter() {
                println!(
                    "  backend {} → upstream {}{}",
                    b.name,
                    snapshot.upstreams[b.upstream].name,
                    b.key
                        .as_deref()
                        .map_or(String::new(), |k| format!(" under \"{k}\""))
                );
            }
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
                println!("  request header set: {}: {v}", String::from_utf8_lossy(n));
            }
            for (n, v) in &edits.add {
                println!("  request header add: {}: {v}", String::from_utf8_lossy(n));
            }
            for n in &edits.remove {
                println!("  request header remove: {}", String::from_utf8_lossy(n));
            }
        }
    }
    ExitCode::SUCCESS
}
