//! The immutable, compiled configuration that requests borrow.
//!
//! Built by `config::compile` on the control thread, shared with workers as an
//! `Arc<Snapshot>` that each worker clones once when it receives it (never per
//! request). Everything a request needs is precomputed here: router tables,
//! parsed addresses, lower-cased header names, consistent-hash rings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::router::Router;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

impl IoDriver {
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::Auto => "auto",
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

/// The admin API's request checks.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    /// Lowercase host names allowed besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// The bearer token, when `token_file` is set.
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0 means unlimited.
    pub max_requests_per_connection: u64,
    pub drain_timeout: Duration,
    pub max_connections_per_worker: usize,
    /// How request paths are normalized before routing; `None`: routed and
    /// forwarded as received.
    pub normalize_path: Option<crate::http::NormalizeOptions>,
    pub forwarded: ForwardedMode,
}

/// What the gateway tells upstreams about the client: `X-Forwarded-For`,
/// `Forwarded` (RFC 7239), `X-Real-IP`, `X-Forwarded-Proto`,
/// `X-Forwarded-Host`, all handled alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedMode {
    /// The lists (`X-Forwarded-For`, `Forwarded`) keep what earlier hops
    /// wrote and gain this hop; the single-valued ones are set from what
    /// this hop saw (a client's own values are dropped).
    Append,
    /// Every one written afresh from what this hop saw; a client's dropped.
    Replace,
    /// None sent: a client's dropped, none added.
    Strip,
}

#[derive(Debug, Clone)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub backlog: u32,
    /// HTTPS: certificates, policies and handshake limits.
    pub tls: Option<std::sync::Arc<crate::tls::listener::ListenerTls>>,
    /// Index into `Snapshot::ip_rules` every request must pass.
    pub ip_rule: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    WeightedRoundRobin,
    LeastOutstanding,
    PowerOfTwo,
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// Lower-case header name.
    Header(Box<[u8]>),
}

#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    pub weight: u32,
    /// `host:port` as the config wrote it: the Host header when the route
    /// rewrites it to the endpoint's.
    pub authority: Box<[u8]>,
    /// Which of the upstream's `sources` it came from.
    pub source: usize,
}

/// An endpoint as the config wrote it: an address, or a host name that
/// stands for every address it resolves to (re-resolved in the
/// background, docs/resilience.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSource {
    /// `host:port` or `ip:port`.
    pub text: String,
    pub weight: u32,
    /// An address to begin with: never resolved again.
    pub literal: bool,
}

#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    pub endpoints: Vec<EndpointSpec>,
    pub balance: Balance,
    pub hash_key: Option<HashKey>,
    /// Sorted (point, endpoint index) pairs for consistent hashing.
    pub hash_ring: Vec<(u64, u32)>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_max_idle: usize,
    pub pool_idle_timeout: Duration,
    /// HTTPS to the endpoints.
    pub tls: Option<std::sync::Arc<crate::tls::upstream::UpstreamTls>>,
    /// Active health checks (`None`: every endpoint counts as up).
    pub health_check: Option<crate::upstream::health::HealthCheck>,
    /// What a request gets when every endpoint is down.
    pub when_all_down: WhenAllDown,
    /// How many retries routes may make of this upstream's traffic.
    pub retry_budget: crate::upstream::retry::BudgetRule,
    /// Passive health checks (`None`: off).
    pub outlier_detection: Option<crate::upstream::outlier::OutlierDetection>,
    /// How long an endpoint back in traffic takes to reach its full share.
    pub slow_start: Duration,
    /// Limits on what is sent at once (`None`: none).
    pub circuit_breaker: Option<crate::upstream::breaker::CircuitBreaker>,
    /// The endpoints as configured; `endpoints` is what they resolved to.
    pub sources: Vec<EndpointSource>,
    /// How often host names among `sources` are resolved again (zero:
    /// never).
    pub resolve_interval: Duration,
}

impl UpstreamSpec {
    /// Whether any endpoint is given by a host name.
    pub fn resolves(&self) -> bool {
        !self.resolve_interval.is_zero() && self.sources.iter().any(|s| !s.literal)
    }

    /// This upstream with `endpoints` (fresh resolutions of its sources)
    /// in place of its own, and the consistent-hash ring to match.
    pub fn with_endpoints(&self, endpoints: Vec<EndpointSpec>) -> UpstreamSpec {
        let mut next = self.clone();
        if self.balance == Balance::ConsistentHash {
            let identities: Vec<(String, u32)> = endpoints
                .iter()
                .map(|e| (e.addr.to_string(), e.weight))
                .collect();
            next.hash_ring = crate::upstream::hash::build_ring(&identities);
        }
        next.endpoints = endpoints;
        next
    }
}

/// The endpoints `sources` stand for: each address as it is, each host
/// name as every address `lookup` gives for it (sorted, so an unchanged
/// answer in another order is no change). A name that does not resolve
/// is an error naming it.
pub fn resolve_endpoints(
    sources: &[EndpointSource],
    lookup: &dyn Fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<Vec<EndpointSpec>, String> {
    let mut endpoints = Vec::new();
    for (source, s) in sources.iter().enumerate() {
        let mut addrs = match s.text.parse::<SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => lookup(&s.text).map_err(|e| format!("`{}`: {e}", s.text))?,
        };
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("`{}` resolves to no address", s.text));
        }
        endpoints.extend(addrs.into_iter().map(|addr| EndpointSpec {
            addr,
            weight: s.weight,
            authority: s.text.as_bytes().into(),
            source,
        }));
    }
    Ok(endpoints)
}

/// The system resolver (getaddrinfo), for `resolve_endpoints`.
pub fn system_lookup(host_port: &str) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok(host_port.to_socket_addrs()?.collect())
}

/// An upstream whose endpoints are all down: refuse (503 with
/// `Retry-After`) or send traffic to all of them as if none were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAllDown {
    Refuse,
    FailOpen,
}

/// (lower-case name, value, possibly with variables).
pub type HeaderPair = (Box<[u8]>, crate::policy::header_value::HeaderValue);

/// Header edits with names already lower-cased.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub add: Vec<HeaderPair>,
    pub set: Vec<HeaderPair>,
    pub remove: Vec<Box<[u8]>>,
}

impl HeaderEdits {
    /// Whether a forwarded header of this name is dropped (removed or replaced).
    #[inline]
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove.iter().any(|r| name.eq_ignore_ascii_case(r))
            || self.set.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum PathRewrite {
    None,
    /// Remove the first `n` bytes of the path (the matched prefix).
    StripPrefix(usize),
    /// Replace the first `n` bytes of the path with `with`.
    ReplacePrefix {
        len: usize,
        with: Box<[u8]>,
    },
}

#[derive(Debug, Clone)]
pub enum HostRewrite {
    /// Forward the client's Host.
    Preserve,
    /// Use the chosen endpoint's `ip:port`.
    Endpoint,
    /// Use this fixed value.
    Fixed(Box<[u8]>),
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Proxy {
        upstream: usize,
    },
    Respond {
        status: u16,
        content_type: Bytes,
        body: Bytes,
    },
    /// Several backends called at once, their JSON merged.
    Aggregate(Box<crate::policy::aggregate::AggregatePolicy>),
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub action: RouteAction,
    pub path_rewrite: PathRewrite,
    pub host_rewrite: HostRewrite,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub max_body_bytes: u64,
    /// Indices into `Snapshot::rate_limits`.
    pub rate_limits: Vec<usize>,
    /// Plain-HTTP requests get a 308 to HTTPS on this port.
    pub https_redirect: Option<u16>,
    /// Who may use the route (`None`: anyone).
    pub auth: Option<RouteAuth>,
    /// The response cache, when the route uses it.
    pub cache: Option<Box<crate::cache::policy::RouteCache>>,
    /// Which failed tries are tried again (`None`: only a stale pooled
    /// connection is).
    pub retry: Option<Box<crate::upstream::retry::RetryPolicy>>,
    /// Index into `Snapshot::ip_rules` the route's requests must pass.
    pub ip_rule: Option<usize>,
    /// Index into `Snapshot::cors`.
    pub cors: Option<usize>,
    /// Upgrades (WebSocket) the route tunnels (`None`: none).
    pub tunnel: Option<Box<crate::policy::tunnel::TunnelPolicy>>,
    /// Response compression (`None`: off).
    pub compress: Option<Box<crate::policy::compress::CompressPolicy>>,
}

/// A route's authentication requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    /// Indices into `Snapshot::auth`.
    pub providers: Vec<u16>,
    /// Every provider must accept (else one is enough).
    pub all: bool,
    /// Requests with no credential at all pass, anonymous.
    pub optional: bool,
    /// Scopes the consumer must hold (403 otherwise).
    pub scopes: Box<[Box<str>]>,
    /// Client headers not sent on to the upstream (lower-case): the
    /// providers' claim headers and hidden credentials.
    pub hidden_headers: Box<[Box<[u8]>]>,
    /// CORS preflights pass anonymous.
    pub skip_preflight: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    /// Lower-case header name.
    Header(Box<[u8]>),
    Route,
    Global,
    /// The verified client certificate's SHA-256 (mTLS); requests without
    /// one share the empty key.
    ClientCert,
    /// The authenticated consumer's name; anonymous requests share the
    /// empty key.
    Consumer,
}

/// A refill rate: `tokens` every `per_nanos` ("100/s", "10/min").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub tokens: u64,
    pub per_nanos: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Bucket { rate: Rate, burst: u64 },
    Window { limit: u64, window_nanos: u64 },
}

/// Who shares one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// Each worker enforces the whole limit on its own.
    Worker,
    /// One limit for all workers of this process.
    Node,
    /// One limit for every node sharing the Redis.
    Cluster { on_redis_error: OnRedisError },
}

/// What cluster-scope limits do while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Enforce this node's share (limit ÷ nodes last seen) locally.
    LocalShare,
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisSpec {
    /// "host:port" as configured (resolved at each connection attempt).
    pub address: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub database: u32,
    pub timeout: std::time::Duration,
    pub key_prefix: String,
    pub tls: Option<RedisTls>,
}

/// TLS to Redis: the trusted CA certificates (DER) and the name to verify.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisTls {
    pub ca_certs: Vec<Vec<u8>>,
    pub server_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub name: String,
    pub scope: LimitScope,
    pub key: LimitKey,
    pub default: LimitKind,
    /// Lower-case header naming the tier, and (tier value, limit) pairs.
    pub tier_header: Option<Box<[u8]>>,
    pub tiers: Vec<(Box<[u8]>, LimitKind)>,
    pub headers: bool,
    pub max_keys: usize,
    pub trusted_proxies: Vec<crate::ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogTarget {
    Stdout,
    File(std::path::PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub target: LogTarget,
    /// Fraction of requests logged, (0, 1].
    pub sample: f64,
}

#[derive(Clone)]
pub struct Snapshot {
    /// Unique within the process: tells which snapshot's policy indices a
    /// rate-limit report or view uses.
    pub id: u64,
    /// Authentication providers (`[auth.NAME]`, in name order).
    pub auth: Arc<Vec<crate::auth::Provider>>,
    /// Where this snapshot came from (a path, or "<embedded default>").
    pub source: String,
    pub workers: usize,
    pub io_driver: IoDriver,
    pub pin_workers: bool,
    pub log_level: Option<String>,
    pub limits: ServerLimits,
    pub listeners: Vec<ListenerSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<Route>,
    pub router: Arc<Router>,
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `[ip_rules.NAME]`, in name order.
    pub ip_rules: Vec<crate::policy::ip_access::IpRule>,
    /// `[cors.NAME]`, in name order.
    pub cors: Vec<crate::policy::cors::CorsPolicy>,
    /// The CORS policy whose headers go on answers no route matched.
    pub no_route_cors: Option<usize>,
    /// Report/aggregate period for node- and cluster-scope limits.
    pub rate_limit_sync: std::time::Duration,
    pub redis: Option<RedisSpec>,
    pub access_log: Option<AccessLogSpec>,
    /// The admin listener's address, if configured.
    pub admin: Option<SocketAddr>,
    /// Who the admin API answers (checked per request, so a reload applies).
    pub admin_access: AdminAccess,
    /// Consumers shown in `ringgate_consumer_requests_total` (0: none).
    pub top_consumers: usize,
    /// Each worker's cache shard size in bytes (`[cache] memory` split
    /// across workers).
    pub cache_memory_per_worker: usize,
    /// Stale-while-revalidate refreshes one worker runs at once.
    pub cache_background_refreshes: usize,
    /// Which rate-limit policy list this is: kept by a reload that leaves
    /// `rate_limits` unchanged, so workers and the aggregator go on
    /// exchanging reports and grants for it without a gap; new when the
    /// list changes (its indices then mean other policies).
    pub limits_id: u64,
    /// The running config as TOML, secrets redacted (served at /config).
    pub redacted_config: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("source", &self.source)
            .field("routes", &self.routes.len())
            .field("upstreams", &self.upstreams.len())
            .finish()
    }
}
