//! [cold] Validation: file structs → `Snapshot`. Collects every error with its
//! position; on success everything the hot path needs is precomputed.

use std::collections::HashSet;
use std::net::SocketAddr;

use bytes::Bytes;
use toml::Spanned;

use super::file::{self, FileConfig, IoDriverSetting, WorkersSetting};
use super::{ConfigError, ConfigErrors, SourceMap};
use crate::router::{HostMatch, PathMatch, RouteMatcher, Router};
use crate::snapshot::{
    AccessLogSpec, Balance, EndpointSource, HashKey, HeaderEdits, HostRewrite, IoDriver,
    ListenerSpec, LogTarget, PathRewrite, Route, RouteAction, ServerLimits, Snapshot, UpstreamSpec,
    resolve_endpoints, system_lookup,
};
use crate::upstream::hash::build_ring;

use crate::policy::header_value::{HeaderValue, Variable};

mod aggregate;
mod auth;
mod policies;
mod resilience;
use auth::{compile_auth, compile_route_auth};

struct Errors<'a> {
    map: &'a SourceMap<'a>,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at<T>(&mut self, spanned: &Spanned<T>, message: impl Into<String>) {
        self.list
            .push(self.map.error(Some(spanned.span()), message));
    }
    fn span(&mut self, span: Option<std::ops::Range<usize>>, message: impl Into<String>) {
        self.list.push(self.map.error(span, message));
    }
    fn nowhere(&mut self, message: impl Into<String>) {
        self.list.push(self.map.error(None, message));
    }
}

/// A new snapshot id, unique within the process.
pub fn next_snapshot_id() -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The number of CPUs this process may run on (its affinity mask), which is
/// what `workers = "auto"` means.
pub fn allowed_cpu_count() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

pub(super) fn compile(cfg: FileConfig, map: &SourceMap<'_>) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Errors {
        map,
        list: Vec::new(),
    };

    let workers = match &cfg.workers {
        None => allowed_cpu_count(),
        Some(w) => match w.get_ref() {
            WorkersSetting::Auto(_) => allowed_cpu_count(),
            WorkersSetting::Count(n) if (1..=1024).contains(n) => *n as usize,
            WorkersSetting::Count(n) => {
                errors.at(
                    w,
                    format!("workers must be \"auto\" or between 1 and 1024, got {n}"),
                );
                1
            }
        },
    };
    let io_driver = match cfg.io_driver {
        IoDriverSetting::Auto => IoDriver::Auto,
        IoDriverSetting::IoUring => IoDriver::IoUring,
        IoDriverSetting::Epoll => IoDriver::Epoll,
    };
    if let Some(level) = &cfg.log_level
        && !matches!(
            level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        )
    {
        errors.nowhere(format!(
            "log_level must be one of error, warn, info, debug, trace; got `{level}`"
        ));
    }

    let s = &cfg.server;
    let limits = ServerLimits {
        max_header_bytes: s.max_header_bytes.0 as usize,
        max_headers: s.max_headers,
        max_body_bytes: s.max_body_bytes.0,
        header_read_timeout: s.header_read_timeout.0,
        body_read_timeout: s.body_read_timeout.0,
        body_timeout: s.body_timeout.0,
        idle_timeout: s.idle_timeout.0,
        max_requests_per_connection: s.max_requests_per_connection,
        drain_timeout: s.drain_timeout.0,
        max_connections_per_worker: s.max_connections_per_worker,
        forwarded: match s.forwarded_headers.as_str() {
            "append" => crate::snapshot::ForwardedMode::Append,
            "replace" => crate::snapshot::ForwardedMode::Replace,
            "strip" => crate::snapshot::ForwardedMode::Strip,
            other => {
                errors.nowhere(format!(
                    "server.forwarded_headers must be \"append\", \"replace\" or \"strip\", not \"{other}\""
                ));
                crate::snapshot::ForwardedMode::Append
            }
        },
        normalize_path: s.normalize_path.then(|| crate::http::NormalizeOptions {
            merge_slashes: s.merge_slashes,
            encoded_slash: match s.encoded_slash.as_str() {
                "keep" => crate::http::EncodedSlash::Keep,
                "decode" => crate::http::EncodedSlash::Decode,
                "reject" => crate::http::EncodedSlash::Reject,
                other => {
                    errors.nowhere(format!(
                        "server.encoded_slash must be \"reject\", \"keep\" or \"decode\", not \"{other}\""
                    ));
                    crate::http::EncodedSlash::Reject
                }
            },
        }),
    };
    if !(1024..=1 << 20).contains(&limits.max_header_bytes) {
        errors.nowhere("server.max_header_bytes must be between 1KiB and 1MiB");
    }
    if !(1..=1000).contains(&limits.max_headers) {
        errors.nowhere("server.max_headers must be between 1 and 1000");
    }
    if limits.max_connections_per_worker == 0 {
        errors.nowhere("server.max_connections_per_worker must be at least 1");
    }
    for (name, d) in [
        ("header_read_timeout", limits.header_read_timeout),
        ("idle_timeout", limits.idle_timeout),
        ("body_read_timeout", limits.body_read_timeout),
        ("body_timeout", limits.body_timeout),
    ] {
        if d.is_zero() {
            errors.nowhere(format!("server.{name} must be greater than zero"));
        }
    }

    let mut listeners = Vec::new();
    if cfg.listeners.is_empty() {
        errors.nowhere("at least one [[listeners]] entry with `bind = \"ADDR:PORT\"` is required");
    }
    for l in &cfg.listeners {
        match l.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                let tls = l.tls.as_ref().and_then(|section| {
                    match crate::tls::listener::compile(section.get_ref()) {
                        Ok(tls) => Some(std::sync::Arc::new(tls)),
                        Err(list) => {
                            for e in list {
                                errors.span(e.span.or(Some(section.span())), format!("tls: {}", e.message));
                            }
                            None
                        }
                    }
                });
                listeners.push(ListenerSpec { addr, backlog: l.backlog.clamp(1, 65535), tls, ip_rule: None })
            }
            Err(_) => errors.at(
                &l.bind,
                format!("bind must be an IP address and port like \"127.0.0.1:8080\" or \"[::]:8080\", got `{}`", l.bind.get_ref()),
            ),
        }
    }

    let admin = match &cfg.admin {
        None => None,
        Some(a) => match a.bind.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.at(
                    &a.bind,
                    "admin.bind must be an IP address and port like \"127.0.0.1:9901\"",
                );
                None
            }
        },
    };

    let mut admin_access = crate::snapshot::AdminAccess::default();
    let mut top_consumers = 0;
    if let Some(a) = &cfg.admin {
        if let Some(top) = &a.top_consumers {
            top_consumers = *top.get_ref();
            if top_consumers > MAX_TOP_CONSUMERS {
                errors.at(
                    top,
                    format!("admin.top_consumers must be at most {MAX_TOP_CONSUMERS}"),
                );
            }
        }
        admin_access.allowed_hosts = a
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Some(path) = &a.token_file {
            match std::fs::read_to_string(path.get_ref()) {
                Ok(text) if !text.trim().is_empty() => {
                    admin_access.token = Some(text.trim().to_string())
                }
                Ok(_) => errors.at(path, "admin.token_file is empty"),
                Err(e) => errors.at(
                    path,
                    format!("admin.token_file: cannot read {}: {e}", path.get_ref()),
                ),
            }
        }
    }

    let access_log = cfg.access_log.as_ref().map(|a| {
        let sample = *a.sample.get_ref();
        if !(sample > 0.0 && sample <= 1.0) {
            errors.at(
                &a.sample,
                "access_log.sample must be a fraction in (0, 1], e.g. 0.1 for one request in ten",
            );
        }
        let path = a.path.get_ref();
        if path.is_empty() {
            errors.at(&a.path, "access_log.path must be \"stdout\" or a file path");
        }
        AccessLogSpec {
            target: if path == "stdout" {
                LogTarget::Stdout
            } else {
                LogTarget::File(path.into())
            },
            sample,
        }
    });

    let mut rate_limits = Vec::new();
    for (name, section) in &cfg.rate_limits {
        if let Some(policy) = compile_rate_limit(name, section, cfg.redis.is_some(), &mut errors) {
            rate_limits.push(policy);
        }
    }
    let policy_names: Vec<&String> = cfg.rate_limits.keys().collect();
    let sync_interval = cfg.rate_limit_sync.interval.get_ref().0;
    if sync_interval < std::time::Duration::from_millis(1)
        || sync_interval > std::time::Duration::from_secs(1)
    {
        errors.at(
            &cfg.rate_limit_sync.interval,
            "rate_limit_sync.interval must be between 1ms and 1s",
        );
    }
    let redis = cfg.redis.as_ref().map(|section| {
        let r = section.get_ref();
        if r.address
            .get_ref()
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            errors.at(&r.address, "redis.address must be \"host:port\"");
        }
        if r.timeout.0.is_zero() {
            errors.at(section, "redis.timeout must be more than 0");
        }
        let tls = if r.tls {
            let host = r
                .address
                .get_ref()
                .rsplit_once(':')
                .map_or("", |(h, _)| h)
                .trim_matches(['[', ']']);
            let server_name = r.server_name.clone().unwrap_or_else(|| host.to_string());
            if rustls::pki_types::ServerName::try_from(server_name.clone()).is_err() {
                errors.at(section, format!("redis.server_name `{server_name}` is not a DNS name or IP address"));
            }
            match &r.ca_file {
                None => {
                    errors.at(section, "redis.tls = true needs ca_file = \"PATH\" (PEM certificates of the CAs to trust)");
                    None
                }
                Some(path) => match load_pem_certs(path.get_ref()) {
                    Ok(ca_certs) => Some(crate::snapshot::RedisTls { ca_certs, server_name }),
                    Err(e) => {
                        errors.at(path, format!("redis.ca_file: {e}"));
                        None
                    }
                },
            }
        } else {
            if r.ca_file.is_some() || r.server_name.is_some() {
                errors.at(section, "redis.ca_file and redis.server_name need tls = true");
            }
            None
        };
        let mut resolve = |key: &str, v: &Option<String>| {
            v.as_deref().and_then(|v| match secret(v) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.at(section, format!("redis.{key}: {e}"));
                    None
                }
            })
        };
        crate::snapshot::RedisSpec {
            address: r.address.get_ref().clone(),
            username: resolve("username", &r.username),
            password: resolve("password", &r.password),
            database: r.database,
            timeout: r.timeout.0,
            key_prefix: r.key_prefix.clone(),
            tls,
        }
    });

    let upstream_names: Vec<&String> = cfg.upstreams.keys().collect();
    let mut upstreams = Vec::new();
    for (name, section) in &cfg.upstreams {
        upstreams.push(compile_upstream(name, section, &mut errors));
    }

    let auth_names: Vec<&String> = cfg.auth.keys().collect();
    let template_claims = claims_in_templates(&cfg.routes);
    let mut auth = Vec::new();
    for (name, section) in &cfg.auth {
        if let Some(provider) =
            compile_auth(name, section, &upstreams, &template_claims, &mut errors)
        {
            auth.push(provider);
        }
    }

    let ip_rule_names: Vec<&String> = cfg.ip_rules.keys().collect();
    let ip_rules: Vec<crate::policy::ip_access::IpRule> = cfg
        .ip_rules
        .iter()
        .map(|(name, section)| policies::compile_ip_rule(name, section, &mut errors))
        .collect();
    let cors_names: Vec<&String> = cfg.cors.keys().collect();
    let cors: Vec<crate::policy::cors::CorsPolicy> = cfg
        .cors
        .iter()
        .enumerate()
        .map(|(i, (name, section))| policies::compile_cors(name, i, section, &mut errors))
        .collect();
    // Listeners that failed to parse were not compiled: pair by address.
    for l in &cfg.listeners {
        if let Some(rule) = &l.ip_rule {
            let index = policies::resolve(rule, &ip_rule_names, "ip_rules", &mut errors);
            if let Ok(addr) = l.bind.get_ref().parse::<SocketAddr>()
                && let Some(spec) = listeners.iter_mut().find(|s| s.addr == addr)
            {
                spec.ip_rule = index;
            }
        }
    }
    let no_route_cors = cfg.server.cors.as_ref().and_then(|name| {
        let found = cors_names.iter().position(|n| *n == name);
        if found.is_none() {
            errors.nowhere(format!(
                "server.cors: unknown cors policy `{name}`; define it as [cors.{name}]"
            ));
        }
        found
    });

    let cache_memory = cfg
        .cache
        .as_ref()
        .and_then(|c| c.get_ref().memory)
        .map_or(256 << 20, |m| m.0);
    let max_object = cfg
        .cache
        .as_ref()
        .and_then(|c| c.get_ref().max_object)
        .map_or(8 << 20, |m| m.0 as usize);
    if let Some(c) = &cfg.cache
        && (max_object as u64).saturating_mul(2 * workers as u64) > cache_memory
    {
        errors.at(
            c,
            "cache.max_object must be at most half of each worker's share of cache.memory",
        );
    }
    let named = Named {
        upstreams: &upstream_names,
        policies: &policy_names,
        auth: &auth_names,
        auth_providers: &auth,
        max_object,
        ip_rules: &ip_rule_names,
        cors: &cors_names,
    };
    let mut routes = Vec::new();
    let mut matchers = Vec::new();
    let mut seen_names = HashSet::new();
    if cfg.routes.is_empty() {
        errors.nowhere("at least one [[routes]] entry is required");
    }
    for (index, spanned) in cfg.routes.iter().enumerate() {
        let r = spanned.get_ref();
        let name = r.name.clone().unwrap_or_else(|| format!("route-{index}"));
        if !seen_names.insert(name.clone()) {
            errors.at(
                spanned,
                format!("route name `{name}` is used twice; names must be unique"),
            );
        }
        if let Some((route, matcher)) = compile_route(name, spanned, &named, &limits, &mut errors) {
            routes.push(route);
            matchers.push(matcher);
        }
    }

    if !errors.list.is_empty() {
        return Err(ConfigErrors(errors.list));
    }
    let mut cfg = cfg;
    redact(&mut cfg);
    let id = next_snapshot_id();
    Ok(Snapshot {
        auth: auth.into(),
        id,
        limits_id: id,
        source: map.name.to_string(),
        workers,
        io_driver,
        pin_workers: cfg.pin_workers,
        log_level: cfg.log_level.clone(),
        limits,
        listeners,
        upstreams,
        routes,
        router: Router::new(matchers).into(),
        rate_limits,
        ip_rules,
        cors,
        no_route_cors,
        rate_limit_sync: sync_interval,
        redis,
        admin,
        admin_access,
        top_consumers,
        cache_memory_per_worker: (cache_memory / workers.max(1) as u64) as usize,
        cache_background_refreshes: cfg
            .cache
            .as_ref()
            .and_then(|c| c.get_ref().background_refreshes)
            .unwrap_or(16),
        access_log,
        // Every value that can carry a secret was replaced above.
        redacted_config: toml::to_string_pretty(&cfg).unwrap_or_default(),
    })
}

const REDACTED: &str = "<redacted>";

/// Most consumer series `/metrics` may carry.
const MAX_TOP_CONSUMERS: usize = 1000;

/// Blanks every value in the file that can carry a secret, for `/config`:
/// Redis credentials, header values the gateway adds toward upstreams or
/// clients (an `Authorization` set for an upstream), header predicates
/// (a route matched on a shared-secret header). Secret references
/// (`${env:…}`, `${file:…}`) name no secret and are kept.
fn redact(cfg: &mut FileConfig) {
    let hide = |v: &mut String| {
        if !(v.starts_with("${") && v.ends_with('}')) {
            *v = REDACTED.into();
        }
    };
    if let Some(redis) = &mut cfg.redis {
        let r = redis.get_mut();
        r.password.iter_mut().for_each(hide);
        r.username.iter_mut().for_each(hide);
    }
    for route in &mut cfg.routes {
        let route = route.get_mut();
        route.headers.values_mut().for_each(hide);
        for edits in [&mut route.request_headers, &mut route.response_headers] {
            edits.add.values_mut().for_each(hide);
            edits.set.values_mut().for_each(hide);
        }
    }
}

/// `[upstreams.NAME.health_check]`: defaults, and bounds that keep a
/// probe inside its interval.
fn compile_health_check(
    name: &str,
    section: &Spanned<file::HealthCheckSection>,
    errors: &mut Errors,
) -> Option<crate::upstream::health::HealthCheck> {
    use crate::upstream::health::{HealthCheck, Probe};
    use std::time::Duration;
    let h = section.get_ref();
    let interval = h.interval.map_or(Duration::from_secs(5), |d| d.0);
    // Unset, the timeout fits in a short interval rather than refusing it.
    let timeout = h
        .timeout
        .map_or(Duration::from_secs(2).min(interval), |d| d.0);
    let jitter = h.jitter.map_or(interval / 10, |d| d.0);
    if interval < Duration::from_millis(10) || timeout.is_zero() || timeout > interval {
        errors.at(
            section,
            format!("upstream `{name}` health_check: interval must be at least 10ms and timeout between 0 and the interval"),
        );
        return None;
    }
    let probe = match h.kind.as_ref().map(|k| k.get_ref().as_str()) {
        None | Some("http") => {
            let path = h.path.as_ref().map_or("/", |p| p.get_ref().as_str());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                errors.at(section, format!("upstream `{name}` health_check: path must start with / and hold no spaces or controls"));
                return None;
            }
            let method = h.method.as_ref().map_or("GET", |m| m.get_ref().as_str());
            if !is_token(method.as_bytes()) {
                errors.at(
                    section,
                    format!(
                        "upstream `{name}` health_check: method must be a token such as GET or HEAD"
                    ),
                );
                return None;
            }
            let host = h.host.as_ref().map(|s| s.get_ref().clone());
            if host
                .as_ref()
                .is_some_and(|s| s.is_empty() || s.bytes().any(|b| b <= b' ' || b == 0x7f))
            {
                errors.at(
                    section,
                    format!("upstream `{name}` health_check: host must be a host name"),
                );
                return None;
            }
            if h.expected_statuses.iter().any(|s| !(100..=599).contains(s)) {
                errors.at(section, format!("upstream `{name}` health_check: expected_statuses must be HTTP statuses (100-599)"));
                return None;
            }
            Probe::Http {
                method: method.to_string(),
                path: path.to_string(),
                host,
                statuses: h.expected_statuses.clone(),
                body: h.body_contains.clone(),
            }
        }
        Some("tcp") => Probe::Tcp,
        Some(_) => {
            errors.at(
                section,
                format!("upstream `{name}` health_check: type must be \"http\" or \"tcp\""),
            );
            return None;
        }
    };
    Some(HealthCheck {
        probe,
        interval,
        jitter,
        timeout,
        healthy_threshold: h.healthy_threshold.unwrap_or(2).max(1),
        unhealthy_threshold: h.unhealthy_threshold.unwrap_or(3).max(1),
    })
}

fn compile_upstream(
    name: &str,
    section: &Spanned<file::UpstreamSection>,
    errors: &mut Errors,
) -> UpstreamSpec {
    let u = section.get_ref();
    let mut endpoints = Vec::new();
    let mut sources = Vec::new();
    if u.endpoints.is_empty() {
        errors.at(
            section,
            format!("upstream `{name}` needs at least one endpoint"),
        );
    }
    for e in &u.endpoints {
        let (addr_text, weight) = match e.get_ref() {
            file::EndpointEntry::Address(a) => (a.as_str(), 1),
            file::EndpointEntry::Detailed { addr, weight } => (addr.as_str(), *weight),
        };
        if !(1..=10_000).contains(&weight) {
            errors.at(e, "endpoint weight must be between 1 and 10000");
        }
        let source = EndpointSource {
            text: addr_text.to_string(),
            weight: weight.max(1),
            literal: addr_text.parse::<SocketAddr>().is_ok(),
        };
        // A host name stands for every address it resolves to, now and
        // at each `resolve_interval` (control::dns).
        match resolve_endpoints(std::slice::from_ref(&source), &system_lookup) {
            Ok(resolved) => endpoints.extend(resolved.into_iter().map(|mut endpoint| {
                endpoint.source = sources.len();
                endpoint
            })),
            Err(_) => errors.at(
                e,
                format!("endpoint `{addr_text}` is not an address like \"127.0.0.1:9000\" or a resolvable \"host:port\""),
            ),
        }
        sources.push(source);
    }
    let balance = match u.balance {
        file::BalanceSetting::RoundRobin => Balance::RoundRobin,
        file::BalanceSetting::WeightedRoundRobin => Balance::WeightedRoundRobin,
        file::BalanceSetting::LeastOutstanding => Balance::LeastOutstanding,
        file::BalanceSetting::PowerOfTwo => Balance::PowerOfTwo,
        file::BalanceSetting::ConsistentHash => Balance::ConsistentHash,
    };
    let hash_key = match &u.hash_on {
        None => None,
        Some(h) => match h.get_ref().as_str() {
            "client_ip" => Some(HashKey::ClientIp),
            text => match text.strip_prefix("header:") {
                Some(header) if is_token(header.as_bytes()) => Some(HashKey::Header(
                    header.to_ascii_lowercase().into_bytes().into(),
                )),
                _ => {
                    errors.at(h, "hash_on must be \"client_ip\" or \"header:NAME\"");
                    None
                }
            },
        },
    };
    if balance == Balance::ConsistentHash && hash_key.is_none() && u.hash_on.is_none() {
        errors.at(section, format!("upstream `{name}` uses consistent_hash and needs hash_on = \"client_ip\" or \"header:NAME\""));
    }
    let ring = if balance == Balance::ConsistentHash {
        let identities: Vec<(String, u32)> = endpoints
            .iter()
            .map(|e| (e.addr.to_string(), e.weight))
            .collect();
        build_ring(&identities)
    } else {
        Vec::new()
    };
    if u.connect_timeout.0.is_zero() || u.response_timeout.0.is_zero() {
        errors.at(
            section,
            "connect_timeout and response_timeout must be greater than zero",
        );
    }
    let tls = u.tls.as_ref().and_then(|section| {
        let authorities: Vec<&str> = sources.iter().map(|s| s.text.as_str()).collect();
        match crate::tls::upstream::compile(section, &authorities) {
            Ok(tls) => Some(std::sync::Arc::new(tls)),
            Err(list) => {
                for e in list {
                    errors.span(
                        e.span.or(Some(section.span())),
                        format!("upstream `{name}` tls: {}", e.message),
                    );
                }
                None
            }
        }
    });
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|h| compile_health_check(name, h, errors));
    let retry_budget = resilience::compile_retry_budget(name, u.retry_budget.as_ref(), errors);
    let outlier_detection = u
        .outlier_detection
        .as_ref()
        .and_then(|o| resilience::compile_outlier_detection(name, o, errors));
    let circuit_breaker = u
        .circuit_breaker
        .as_ref()
        .and_then(|b| resilience::compile_circuit_breaker(name, b, errors));
    UpstreamSpec {
        sources,
        resolve_interval: u
            .resolve_interval
            .map_or(std::time::Duration::from_secs(30), |d| d.0),
        circuit_breaker,
        outlier_detection,
        slow_start: u.slow_start.map_or(std::time::Duration::ZERO, |d| d.0),
        tls,
        health_check,
        retry_budget,
        when_all_down: match u.when_all_down {
            file::WhenAllDownSetting::Refuse => crate::snapshot::WhenAllDown::Refuse,
            file::WhenAllDownSetting::FailOpen => crate::snapshot::WhenAllDown::FailOpen,
        },
        name: name.to_string(),
        endpoints,
        balance,
        hash_key,
        hash_ring: ring,
        connect_timeout: u.connect_timeout.0,
        response_timeout: u.response_timeout.0,
        pool_max_idle: u.pool_max_idle,
        pool_idle_timeout: u.pool_idle_timeout.0,
    }
}

/// What routes may refer to by name.
struct Named<'a> {
    upstreams: &'a [&'a String],
    policies: &'a [&'a String],
    auth: &'a [&'a String],
    auth_providers: &'a [crate::auth::Provider],
    /// `[cache] max_object`.
    max_object: usize,
    ip_rules: &'a [&'a String],
    cors: &'a [&'a String],
}

/// A route's `cache = { ... }`.
fn compile_route_cache(
    section: &Spanned<file::RouteCacheSection>,
    action: &RouteAction,
    max_object: usize,
    errors: &mut Errors,
) -> Option<Box<crate::cache::policy::RouteCache>> {
    use crate::cache::key::{KeySpec, QueryKey};
    let c = section.get_ref();
    if !c.enabled {
        return None;
    }
    if !matches!(action, RouteAction::Proxy { .. }) {
        errors.at(section, "cache needs a route with an upstream");
        return None;
    }
    let query = match c.query.as_ref().map(|q| (q, q.get_ref())) {
        None => QueryKey::All,
        Some((_, file::CacheQuerySetting::Word(w))) if w == "all" => QueryKey::All,
        Some((_, file::CacheQuerySetting::Word(w))) if w == "none" => QueryKey::Ignore,
        Some((_, file::CacheQuerySetting::Names(names))) if !names.is_empty() => QueryKey::Only(
            names
                .iter()
                .map(|n| n.as_bytes().into())
                .collect::<Vec<Box<[u8]>>>()
                .into_boxed_slice(),
        ),
        Some((q, _)) => {
            errors.at(
                q,
                "cache query must be \"all\", \"none\" or a list of parameter names",
            );
            return None;
        }
    };
    for h in &c.headers {
        if !is_token(h.as_bytes()) {
            errors.at(
                section,
                format!("cache headers: `{h}` is not a header name"),
            );
        }
    }
    if let Some(p) = &c.heuristic_percent
        && *p.get_ref() > 100
    {
        errors.at(p, "heuristic_percent must be at most 100");
    }
    Some(Box::new(crate::cache::policy::RouteCache {
        key: KeySpec {
            query,
            headers: c
                .headers
                .iter()
                .map(|h| h.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect(),
            cookies: c.cookies.iter().map(|n| n.as_bytes().into()).collect(),
            consumer: c.consumer,
        },
        heuristic: crate::cache::freshness::Heuristic {
            default_ttl: c.default_ttl.map(|d| d.0.as_secs()),
            last_modified_percent: c.heuristic_percent.as_ref().map(|p| *p.get_ref()),
            max: c.heuristic_max.map_or(86_400, |d| d.0.as_secs()),
        },
        honour_client_no_cache: c.honour_client_no_cache,
        stale_while_revalidate: c.stale_while_revalidate.map_or(0, |d| d.0.as_secs()),
        stale_if_error: c.stale_if_error.map_or(0, |d| d.0.as_secs()),
        max_object,
    }))
}

fn compile_route(
    name: String,
    spanned: &Spanned<file::RouteSection>,
    named: &Named<'_>,
    limits: &ServerLimits,
    errors: &mut Errors,
) -> Option<(Route, RouteMatcher)> {
    let (upstream_names, policy_names) = (named.upstreams, named.policies);
    let r = spanned.get_ref();
    let before = errors.list.len();

    let host = match &r.host {
        None => HostMatch::Any,
        Some(h) => {
            let text = h.get_ref().to_ascii_lowercase();
            if let Some(suffix) = text.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    errors.at(h, "a wildcard host looks like \"*.example.com\"");
                }
                HostMatch::Suffix(format!(".{suffix}"))
            } else {
                if text.is_empty() || text.contains(['*', '/', ' ', ':']) {
                    errors.at(h, "host must be a name like \"api.example.com\" or \"*.example.com\" (no port)");
                }
                HostMatch::Exact(text.trim_end_matches('.').to_string())
            }
        }
    };

    let path = match (&r.path, &r.path_prefix) {
        (Some(_), Some(p)) => {
            errors.at(p, "use either path (exact) or path_prefix, not both");
            PathMatch::Any
        }
        (Some(p), None) => {
            check_path(p, errors);
            PathMatch::Exact(p.get_ref().clone())
        }
        (None, Some(p)) => {
            check_path(p, errors);
            PathMatch::Prefix(p.get_ref().clone())
        }
        (None, None) => PathMatch::Any,
    };

    let mut methods = Vec::new();
    for m in &r.methods {
        let text = m.get_ref();
        if !is_token(text.as_bytes()) || text.to_ascii_uppercase() != *text {
            errors.at(
                m,
                format!("method `{text}` must be an upper-case token like \"GET\""),
            );
        }
        methods.push(text.as_bytes().into());
    }
    let mut headers = Vec::new();
    for (n, v) in &r.headers {
        let v = secret(v).unwrap_or_else(|e| {
            errors.at(spanned, format!("header predicate `{n}`: {e}"));
            String::new()
        });
        if !is_token(n.as_bytes()) || !is_field_value(v.as_bytes()) {
            errors.at(
                spanned,
                format!("header predicate `{n}` must be a valid header name and value"),
            );
        }
        headers.push((
            n.to_ascii_lowercase().into_bytes().into(),
            v.as_bytes().into(),
        ));
    }

    let prefix_len = match &path {
        PathMatch::Prefix(p) => p.len(),
        _ => 0,
    };
    let action = match (&r.upstream, &r.respond) {
        _ if r.aggregate.is_some() => {
            if r.upstream.is_some() || r.respond.is_some() {
                errors.at(
                    spanned,
                    format!(
                        "route `{name}`: an aggregate route has no upstream or respond of its own"
                    ),
                );
                return None;
            }
            let section = r.aggregate.as_ref()?;
            RouteAction::Aggregate(Box::new(aggregate::compile_aggregate(
                &name,
                section,
                upstream_names,
                prefix_len,
                errors,
            )?))
        }
        (Some(u), None) => match upstream_names.iter().position(|n| *n == u.get_ref()) {
            Some(index) => RouteAction::Proxy { upstream: index },
            None => {
                let known = upstream_names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                errors.at(
                    u,
                    format!(
                        "unknown upstream `{}`; defined upstreams: [{known}]",
                        u.get_ref()
                    ),
                );
                RouteAction::Proxy { upstream: 0 }
            }
        },
        (None, Some(resp)) => {
            let status = *resp.status.get_ref();
            if !(200..=599).contains(&status) {
                errors.at(&resp.status, "respond.status must be between 200 and 599");
            }
            if !is_field_value(resp.content_type.as_bytes()) {
                errors.at(spanned, "respond.content_type must be a valid header value");
            }
            if matches!(status, 204 | 304) && !resp.body.is_empty() {
                errors.at(
                    &resp.status,
                    format!("respond.status {status} never carries a body (RFC 9110 §15.3.5, §15.4.5): remove respond.body or use 200"),
                );
            }
            RouteAction::Respond {
                status,
                content_type: Bytes::from(resp.content_type.clone()),
                body: Bytes::from(resp.body.clone()),
            }
        }
        (Some(u), Some(_)) => {
            errors.at(
                u,
                "a route has either upstream = \"NAME\" or a [routes.respond] table, not both",
            );
            return None;
        }
        (None, None) => {
            errors.at(
                spanned,
                format!("route `{name}` needs upstream = \"NAME\", a [routes.respond] table or a [routes.aggregate] table"),
            );
            return None;
        }
    };

    let prefix_len = match &path {
        PathMatch::Prefix(p) => Some(p.len()),
        _ => None,
    };
    let path_rewrite = match (r.strip_prefix, &r.replace_prefix, prefix_len) {
        (false, None, _) => PathRewrite::None,
        (true, Some(rp), _) => {
            errors.at(rp, "use either strip_prefix or replace_prefix, not both");
            PathRewrite::None
        }
        (true, None, Some(len)) => PathRewrite::StripPrefix(len),
        (false, Some(rp), Some(len)) => {
            if !rp.get_ref().starts_with('/') || !is_path(rp.get_ref().as_bytes()) {
                errors.at(rp, "replace_prefix must be a path starting with '/'");
            }
            PathRewrite::ReplacePrefix {
                len,
                with: rp.get_ref().as_bytes().into(),
            }
        }
        (_, _, None) => {
            errors.at(
                spanned,
                "strip_prefix and replace_prefix need a path_prefix to act on",
            );
            PathRewrite::None
        }
    };

    let host_rewrite = match (&r.host_rewrite, r.preserve_host) {
        (Some(h), _) => {
            if !is_field_value(h.get_ref().as_bytes()) || h.get_ref().is_empty() {
                errors.at(h, "host_rewrite must be a host name");
            }
            HostRewrite::Fixed(h.get_ref().as_bytes().into())
        }
        (None, true) => HostRewrite::Preserve,
        (None, false) => HostRewrite::Endpoint,
    };

    let mut route_limits = Vec::new();
    for p in &r.rate_limits {
        match policy_names.iter().position(|n| *n == p.get_ref()) {
            Some(i) => route_limits.push(i),
            None => errors.at(
                p,
                format!(
                    "unknown rate limit `{}`; define it as [rate_limits.{}]",
                    p.get_ref(),
                    p.get_ref()
                ),
            ),
        }
    }
    let auth = compile_route_auth(r, named.auth, named.auth_providers, errors);
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| compile_route_cache(c, &action, named.max_object, errors));
    let retry = r.retry.as_ref().and_then(|section| {
        if !matches!(action, RouteAction::Proxy { .. }) {
            errors.at(section, "retry needs a route with an upstream");
        }
        resilience::compile_retry(&name, section, errors).map(Box::new)
    });
    if let Some(port) = &r.https_port {
        if !r.https_redirect {
            errors.at(port, "https_port needs https_redirect = true");
        } else if *port.get_ref() == 0 {
            errors.at(port, "https_port must be a port number (1-65535)");
        }
    }
    let ip_rule = r
        .ip_rule
        .as_ref()
        .and_then(|n| policies::resolve(n, named.ip_rules, "ip_rules", errors));
    let cors = r
        .cors
        .as_ref()
        .and_then(|n| policies::resolve(n, named.cors, "cors", errors));
    let tunnel = policies::compile_tunnel(
        &name,
        r,
        matches!(action, RouteAction::Proxy { .. }),
        spanned,
        errors,
    );
    let compress = r.compress.as_ref().and_then(|c| {
        if !matches!(action, RouteAction::Proxy { .. }) {
            errors.at(
                c,
                format!("route `{name}`: compress needs a route with an upstream"),
            );
        }
        policies::compile_compress(&name, c, errors)
    });
    let request_headers = compile_edits(&r.request_headers, spanned, "request_headers", errors);
    let response_headers = compile_edits(&r.response_headers, spanned, "response_headers", errors);

    if errors.list.len() != before {
        return None;
    }
    let route = Route {
        name,
        action,
        path_rewrite,
        host_rewrite,
        request_headers,
        response_headers,
        max_body_bytes: r.max_body_bytes.map_or(limits.max_body_bytes, |b| b.0),
        rate_limits: route_limits,
        https_redirect: r
            .https_redirect
            .then(|| r.https_port.as_ref().map_or(443, |p| *p.get_ref())),
        auth,
        cache,
        retry,
        ip_rule,
        cors,
        tunnel,
        compress,
    };
    Some((
        route,
        RouteMatcher {
            host,
            path,
            methods,
            headers,
        },
    ))
}

/// "100/s", "10/min", "5000/h" → tokens per period.
fn parse_rate(text: &str) -> Option<crate::ratelimit::Rate> {
    let (n, unit) = text.trim().split_once('/')?;
    let tokens: u64 = n.trim().parse().ok().filter(|&t| t > 0)?;
    let secs: u64 = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "m" | "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "d" | "day" => 86_400,
        _ => return None,
    };
    Some(crate::ratelimit::Rate {
        tokens,
        per_nanos: secs * 1_000_000_000,
    })
}

fn compile_limit(
    section: &file::LimitSection,
    at: &Spanned<file::RateLimitSection>,
    what: &str,
    errors: &mut Errors,
) -> Option<crate::snapshot::LimitKind> {
    use crate::snapshot::LimitKind;
    match (&section.rate, section.limit, section.window) {
        (Some(rate), None, None) => match parse_rate(rate) {
            Some(r) => Some(LimitKind::Bucket {
                rate: r,
                burst: section.burst.unwrap_or(r.tokens).max(1),
            }),
            None => {
                errors.at(
                    at,
                    format!("{what}: rate must look like \"100/s\", \"10/min\" or \"5000/h\""),
                );
                None
            }
        },
        (None, Some(limit), Some(window)) if limit > 0 && !window.0.is_zero() => {
            Some(LimitKind::Window {
                limit,
                window_nanos: window.0.as_nanos().min(u128::from(u64::MAX)) as u64,
            })
        }
        _ => {
            errors.at(at, format!("{what}: give either rate (and optional burst) for a token bucket, or limit and window for a quota"));
            None
        }
    }
}

fn compile_rate_limit(
    name: &str,
    section: &Spanned<file::RateLimitSection>,
    has_redis: bool,
    errors: &mut Errors,
) -> Option<crate::snapshot::RateLimitPolicy> {
    use crate::snapshot::{LimitKey, LimitScope, OnRedisError, RateLimitPolicy};
    let r = section.get_ref();
    let key = match r.key.get_ref().as_str() {
        "client_ip" => LimitKey::ClientIp,
        "route" => LimitKey::Route,
        "global" => LimitKey::Global,
        "client_cert" => LimitKey::ClientCert,
        "consumer" => LimitKey::Consumer,
        other => match other.strip_prefix("header:") {
            Some(h) if is_token(h.as_bytes()) => {
                LimitKey::Header(h.to_ascii_lowercase().into_bytes().into())
            }
            _ => {
                errors.at(
                    &r.key,
                    "key must be \"client_ip\", \"header:NAME\", \"client_cert\", \"consumer\", \"route\" or \"global\"",
                );
                return None;
            }
        },
    };
    let on_redis_error = match r.on_redis_error.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "local_share")) => OnRedisError::LocalShare,
        Some((_, "allow")) => OnRedisError::Allow,
        Some((_, "deny")) => OnRedisError::Deny,
        Some((at, _)) => {
            errors.at(
                at,
                "on_redis_error must be \"local_share\", \"allow\" or \"deny\"",
            );
            OnRedisError::LocalShare
        }
    };
    let scope = match r.scope.as_ref().map(|s| (s, s.get_ref().as_str())) {
        None | Some((_, "worker")) => LimitScope::Worker,
        Some((_, "node")) => LimitScope::Node,
        Some((at, "cluster")) => {
            if !has_redis {
                errors.at(at, format!("rate_limits.{name}: scope = \"cluster\" needs a [redis] section (address of the Redis the nodes share)"));
            }
            LimitScope::Cluster { on_redis_error }
        }
        Some((at, other)) => {
            errors.at(
                at,
                format!("scope must be \"worker\", \"node\" or \"cluster\", not \"{other}\""),
            );
            LimitScope::Worker
        }
    };
    if let Some(at) = &r.on_redis_error
        && !matches!(scope, LimitScope::Cluster { .. })
    {
        errors.at(at, "on_redis_error applies to scope = \"cluster\" only");
    }
    let default = compile_limit(&r.limit, section, &format!("rate_limits.{name}"), errors)?;
    let mut tiers = Vec::new();
    for (tier, limit) in &r.tiers {
        if let Some(kind) = compile_limit(
            limit,
            section,
            &format!("rate_limits.{name}.tiers.{tier}"),
            errors,
        ) {
            // A key that changes tier keeps what it used (so alternating
            // tiers cannot restart a quota), which needs one algorithm, and
            // for windows one window length, across a policy's tiers.
            use crate::snapshot::LimitKind;
            let same_algorithm = match (default, kind) {
                (LimitKind::Bucket { .. }, LimitKind::Bucket { .. }) => true,
                (
                    LimitKind::Window {
                        window_nanos: a, ..
                    },
                    LimitKind::Window {
                        window_nanos: b, ..
                    },
                ) => a == b,
                _ => false,
            };
            if !same_algorithm {
                errors.at(
                    section,
                    format!("rate_limits.{name}.tiers.{tier}: a tier changes a policy's numbers, not its algorithm: give it `rate` and `burst` if the policy has them, or `limit` with the policy's own `window`"),
                );
            }
            tiers.push((tier.as_bytes().into(), kind));
        }
    }
    let mut trusted_proxies = Vec::new();
    for t in &r.trusted_proxies {
        match crate::ipnet::IpNet::parse(t) {
            Some(net) => trusted_proxies.push(net),
            None => errors.at(section, format!("rate_limits.{name}: trusted_proxies entry `{t}` is not an address or CIDR network like \"10.0.0.0/8\"")),
        }
    }
    Some(RateLimitPolicy {
        trusted_proxies,
        scope,
        name: name.to_string(),
        key,
        default,
        tier_header: r
            .tier_header
            .as_ref()
            .map(|h| h.to_ascii_lowercase().into_bytes().into()),
        tiers,
        headers: r.headers,
        max_keys: r.max_keys.clamp(1, 10_000_000),
    })
}

/// The certificates in a PEM file (at least one).
fn load_pem_certs(path: &str) -> Result<Vec<Vec<u8>>, String> {
    let pem = crate::tls::pem::read_certs(path)?;
    Ok(pem.certs.iter().map(|c| c.to_vec()).collect())
}

fn check_path(p: &Spanned<String>, errors: &mut Errors) {
    let text = p.get_ref();
    if !text.starts_with('/') || !is_path(text.as_bytes()) || text.contains('?') {
        errors.at(
            p,
            "paths start with '/' and contain no spaces, '?' or control characters",
        );
    }
}

/// Headers the gateway itself manages; editing them would break framing.
const MANAGED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

fn compile_edits(
    edits: &file::HeaderEdits,
    at: &Spanned<file::RouteSection>,
    section: &str,
    errors: &mut Errors,
) -> HeaderEdits {
    let mut out = HeaderEdits::default();
    let check = |name: &str, value: Option<&str>, errors: &mut Errors| -> Box<[u8]> {
        let lower = name.to_ascii_lowercase();
        if !is_token(name.as_bytes()) {
            errors.at(
                at,
                format!("{section}: `{name}` is not a valid header name"),
            );
        } else if MANAGED_HEADERS.contains(&lower.as_str()) {
            errors.at(at, format!("{section}: `{name}` is managed by the gateway and cannot be edited (use host_rewrite for Host)"));
        }
        if let Some(v) = value
            && !is_field_value(v.as_bytes())
        {
            errors.at(
                at,
                format!(
                    "{section}: the value of `{name}` contains characters not allowed in a header"
                ),
            );
        }
        lower.into_bytes().into()
    };
    // A whole value `${env:…}`/`${file:…}` is a secret, taken as it
    // is; anything else may use `${variables}`.
    let value = |n: &str, v: &str, errors: &mut Errors| -> (String, HeaderValue) {
        let secret_ref = (v.starts_with("${env:") || v.starts_with("${file:"))
            && v.ends_with('}')
            && v.matches("${").count() == 1;
        if secret_ref {
            let text = secret(v).unwrap_or_else(|e| {
                errors.at(at, format!("{section}: the value of `{n}`: {e}"));
                String::new()
            });
            let literal = HeaderValue::Static(text.as_bytes().into());
            return (text, literal);
        }
        match HeaderValue::parse(v) {
            Ok(parsed) => {
                if section == "response_headers"
                    && parsed.variables().any(|var| *var == Variable::Host)
                {
                    errors.at(at, format!("{section}: the value of `{n}`: ${{host}} is for request_headers (the request is gone when the answer is written)"));
                }
                (v.to_string(), parsed)
            }
            Err(e) => {
                errors.at(at, format!("{section}: the value of `{n}`: {e}"));
                (v.to_string(), HeaderValue::Static(Box::default()))
            }
        }
    };
    for (n, v) in &edits.add {
        let (text, v) = value(n, v, errors);
        let name = check(n, Some(&text), errors);
        out.add.push((name, v));
    }
    for (n, v) in &edits.set {
        let (text, v) = value(n, v, errors);
        let name = check(n, Some(&text), errors);
        out.set.push((name, v));
    }
    for n in &edits.remove {
        let name = check(n, None, errors);
        out.remove.push(name);
    }
    out
}

/// The claims the routes' header templates name (`${jwt.NAME}`): token
/// providers keep them with a verified token's facts.
fn claims_in_templates(routes: &[Spanned<file::RouteSection>]) -> Vec<String> {
    let mut claims: Vec<String> = routes
        .iter()
        .flat_map(|r| {
            let r = r.get_ref();
            [&r.request_headers, &r.response_headers]
        })
        .flat_map(|e| e.add.values().chain(e.set.values()))
        .filter_map(|v| HeaderValue::parse(v).ok())
        .flat_map(|v| {
            v.variables()
                .filter_map(|var| match var {
                    Variable::Claim(c) => Some(c.to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// A config value that may name where a secret lives instead of holding
/// it: `"${env:NAME}"` (an environment variable) or `"${file:/path}"` (a
/// file's contents, one trailing newline removed). Anything else is taken
/// as written.
pub(crate) fn secret(value: &str) -> Result<String, String> {
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(value.to_string());
    };
    if let Some(name) = inner.strip_prefix("env:") {
        return std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
    }
    if let Some(path) = inner.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(text.strip_suffix('\r').unwrap_or(text).to_string());
    }
    Err(format!(
        "`{value}` looks like a secret reference but is neither ${{env:NAME}} nor ${{file:PATH}}"
    ))
}

/// RFC 9110 §5.6.2 token.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        && !s.starts_with(b" ")
        && !s.ends_with(b" ")
}

fn is_path(s: &[u8]) -> bool {
    s.iter().all(|&b| b > 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::super::load_str;

    const BASE: &str = r#"
workers = 1
[[listeners]]
bind = "127.0.0.1:0"
[upstreams.api]
endpoints = ["127.0.0.1:9000", { addr = "127.0.0.1:9001", weight = 3 }]
"#;

    fn errors_of(extra: &str) -> Vec<String> {
        match load_str(&format!("{BASE}{extra}"), "t.toml") {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn accepts_a_valid_config() {
        let errs = errors_of(
            r#"
[[routes]]
host = "*.example.com"
path_prefix = "/api"
strip_prefix = true
methods = ["GET"]
upstream = "api"
request_headers = { set = { "x-a" = "1" }, remove = ["x-b"] }
[[routes]]
path = "/"
respond = { status = 200, body = "{}" }
"#,
        );
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_position() {
        let errs = errors_of("\n[[routes]]\nupstreem = \"api\"\n");
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("t.toml:9:1: unknown field `upstreem`"),
            "{errs:?}"
        );
    }

    #[test]
    fn every_validation_error_is_reported_with_line_and_column() {
        let errs = errors_of(
            r#"
[[routes]]
upstream = "nope"
[[routes]]
path = "no-slash"
upstream = "api"
"#,
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs[0].starts_with("t.toml:9:12: unknown upstream `nope`"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("t.toml:11:8: paths start with '/'"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_units_name_the_value() {
        let errs = errors_of(
            "[server]\nidle_timeout = \"10 fortnights\"\n[[routes]]\nupstream = \"api\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("t.toml:8:16:"), "{errs:?}");
        assert!(errs[0].contains("unknown duration unit"), "{errs:?}");
    }

    #[test]
    fn managed_headers_cannot_be_edited() {
        let errs = errors_of(
            "[[routes]]\nupstream = \"api\"\nrequest_headers = { set = { \"Content-Length\" = \"1\" } }\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("managed by the gateway"));
    }

    #[test]
    fn consistent_hash_needs_a_key() {
        let errs = errors_of(
            "[upstreams.h]\nendpoints = [\"127.0.0.1:1\"]\nbalance = \"consistent_hash\"\n[[routes]]\nupstream = \"h\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("needs hash_on"));
    }
}
