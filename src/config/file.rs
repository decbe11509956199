//! The config file exactly as written: plain serde structs with
//! `deny_unknown_fields` and documented defaults. Nothing here is validated
//! beyond what serde checks; `compile` turns these into a `Snapshot`.
//!
//! Every key here is documented in docs/config.md — keep the two in step.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `"auto"` (one per allowed CPU) or a positive number.
    #[serde(default)]
    pub workers: Option<Spanned<WorkersSetting>>,
    /// `"auto"`, `"io_uring"` or `"epoll"`.
    #[serde(default)]
    pub io_driver: IoDriverSetting,
    /// Pin worker i to the i-th CPU of the allowed set.
    #[serde(default = "yes")]
    pub pin_workers: bool,
    /// Diagnostic log level (error, warn, info, debug, trace).
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: Option<AdminSection>,
    #[serde(default)]
    pub access_log: Option<AccessLogSection>,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamSection>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteSection>>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, Spanned<RateLimitSection>>,
    #[serde(default)]
    pub rate_limit_sync: RateLimitSyncSection,
    /// The Redis that cluster-scope limits share.
    #[serde(default)]
    pub redis: Option<Spanned<RedisSection>>,
    /// Authentication providers, attached to routes by name.
    #[serde(default)]
    pub auth: BTreeMap<String, Spanned<AuthSection>>,
    /// The response cache (routes opt in with `cache = { ... }`).
    #[serde(default)]
    pub cache: Option<Spanned<CacheSection>>,
    /// IP allow/deny rules, attached to listeners and routes by name
    /// (docs/policies.md).
    #[serde(default)]
    pub ip_rules: BTreeMap<String, Spanned<IpRuleSection>>,
    /// CORS policies, attached to routes by name (docs/policies.md).
    #[serde(default)]
    pub cors: BTreeMap<String, Spanned<CorsSection>>,
}

/// `[ip_rules.NAME]`: which client addresses may pass.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRuleSection {
    /// Networks (CIDR or bare addresses, IPv4 or IPv6) admitted.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Networks refused.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// A file of networks admitted, one per line (`#` comments).
    #[serde(default)]
    pub allow_file: Option<Spanned<String>>,
    /// A file of networks refused, one per line.
    #[serde(default)]
    pub deny_file: Option<Spanned<String>>,
    /// "deny-first" (default: deny wins over allow) or "allow-first".
    #[serde(default)]
    pub order: Option<Spanned<String>>,
    /// An address on neither list: "deny" (the default when `allow` has
    /// networks) or "allow" (the default otherwise).
    #[serde(default)]
    pub default: Option<Spanned<String>>,
    /// A refused client gets "forbid" (403, default) or "close" (the
    /// connection closed without an answer).
    #[serde(default)]
    pub action: Option<Spanned<String>>,
    /// Peers whose X-Forwarded-For is believed (as for rate limits).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// `[cors.NAME]`: what browsers of other origins may do with a route.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSection {
    /// Exact origins (`https://app.example.com`), subdomain patterns
    /// (`https://*.example.com`) or `*`.
    pub origins: Vec<Spanned<String>>,
    /// Methods a preflight may ask for (default GET, HEAD, POST, PUT,
    /// PATCH, DELETE; `*`: any).
    #[serde(default)]
    pub methods: Option<Vec<Spanned<String>>>,
    /// Request headers a preflight may ask for (default: any it asks).
    #[serde(default)]
    pub headers: Option<Vec<Spanned<String>>>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose_headers: Vec<Spanned<String>>,
    /// Requests with cookies or HTTP auth may read answers.
    #[serde(default)]
    pub credentials: bool,
    /// How long browsers may cache a preflight's answer.
    #[serde(default)]
    pub max_age: Option<HumanDuration>,
    /// Allow Private Network Access preflights.
    #[serde(default)]
    pub private_network: bool,
    /// Send preflights on to the upstream instead of answering them here.
    #[serde(default)]
    pub forward_preflight: bool,
}

/// The response cache's process-wide settings.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Memory for cached responses, for the whole process, split evenly
    /// across workers (default 256MiB).
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Largest response body stored (default 8MiB); larger ones pass
    /// through.
    #[serde(default)]
    pub max_object: Option<ByteSize>,
    /// Stale entries each worker refreshes in the background at once
    /// (stale-while-revalidate; default 16). More stale hits meanwhile are
    /// served stale and refresh later.
    #[serde(default)]
    pub background_refreshes: Option<usize>,
}

/// `query` in a route's cache key: "all", "none", or parameter names.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CacheQuerySetting {
    Word(String),
    Names(Vec<String>),
}

/// A route's `cache = { ... }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The query in the key: "all" (default), "none", or `["page", ...]`.
    #[serde(default)]
    pub query: Option<Spanned<CacheQuerySetting>>,
    /// Request headers whose values are in the key.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Cookies whose values are in the key.
    #[serde(default)]
    pub cookies: Vec<String>,
    /// The authenticated consumer is in the key.
    #[serde(default)]
    pub consumer: bool,
    /// Lifetime of responses that state none (heuristically cacheable
    /// statuses only); default: not stored.
    #[serde(default)]
    pub default_ttl: Option<HumanDuration>,
    /// Or a percentage of the time since Last-Modified (RFC 9111 §4.2.2).
    #[serde(default)]
    pub heuristic_percent: Option<Spanned<u64>>,
    /// Cap on heuristic lifetimes (default 1d).
    #[serde(default)]
    pub heuristic_max: Option<HumanDuration>,
    /// A client's `Cache-Control: no-cache` makes the cache revalidate
    /// (default true).
    #[serde(default = "yes")]
    pub honour_client_no_cache: bool,
    /// Serve stale this long while refreshing, when the response says
    /// nothing (default 0s).
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// Serve stale this long when the upstream fails, when the response
    /// says nothing (default 0s).
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
}

/// An authentication provider (`[auth.NAME]`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// "api_key".
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// API keys: the key file (TOML `[[keys]]` or `HASH CONSUMER [TIER]` lines).
    #[serde(default)]
    pub keys_file: Option<Spanned<String>>,
    /// API keys: the request header carrying the key (default `x-api-key`
    /// unless `query` is given).
    #[serde(default)]
    pub header: Option<Spanned<String>>,
    /// API keys: the query parameter carrying the key.
    #[serde(default)]
    pub query: Option<Spanned<String>>,

    /// JWT: where the token is: "bearer" (default: `Authorization:
    /// Bearer`), "header:NAME", "query:NAME" or "cookie:NAME".
    #[serde(default)]
    pub token: Option<Spanned<String>>,
    /// JWT: verification keys, each pinned to one algorithm.
    #[serde(default)]
    pub keys: Vec<Spanned<JwtKeySection>>,
    /// JWT: a JWKS document (keys with their `kid` and `alg`).
    #[serde(default)]
    pub jwks_file: Option<Spanned<String>>,
    /// JWT: fetch a JWKS document from this upstream (by name; its TLS
    /// settings and timeouts apply).
    #[serde(default)]
    pub jwks_upstream: Option<Spanned<String>>,
    /// JWT: the JWKS document's path on `jwks_upstream` (default
    /// `/.well-known/jwks.json`).
    #[serde(default)]
    pub jwks_path: Option<Spanned<String>>,
    /// JWT: fetch the JWKS again this long after a good fetch (default 5m).
    #[serde(default)]
    pub jwks_refresh: Option<HumanDuration>,
    /// JWT: an unknown `kid` refetches the JWKS at most this often
    /// (default 30s).
    #[serde(default)]
    pub jwks_min_refetch: Option<HumanDuration>,
    /// JWT: start-up waits this long for the first JWKS fetch (default
    /// 10s; 0s: do not wait).
    #[serde(default)]
    pub jwks_startup_wait: Option<HumanDuration>,
    /// Introspection: the upstream serving the RFC 7662 endpoint.
    #[serde(default)]
    pub introspection_upstream: Option<Spanned<String>>,
    /// Introspection: the endpoint's path (default `/introspect`).
    #[serde(default)]
    pub introspection_path: Option<Spanned<String>>,
    /// Introspection: the gateway's client id at the endpoint.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Introspection: the client secret, read from this file.
    #[serde(default)]
    pub client_secret_file: Option<Spanned<String>>,
    /// Introspection: the client secret, from this environment variable.
    #[serde(default)]
    pub client_secret_env: Option<Spanned<String>>,
    /// Introspection: how long an inactive answer is kept (default 10s).
    #[serde(default)]
    pub negative_cache_ttl: Option<HumanDuration>,
    /// Introspection: with the endpoint unreachable, accept a token that
    /// was valid within this long past its cache_ttl (default 0s: 503).
    #[serde(default)]
    pub grace: Option<HumanDuration>,
    /// JWT: accepted `iss` values (any of; empty: not checked).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// JWT: accepted `aud` values (any of; empty: not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// JWT: clock skew allowed on exp, nbf and iat.
    #[serde(default)]
    pub leeway: Option<HumanDuration>,
    /// JWT: the longest lifetime a token may claim.
    #[serde(default)]
    pub max_lifetime: Option<HumanDuration>,
    /// JWT: claims every token must carry (default `["exp"]`).
    #[serde(default)]
    pub required_claims: Option<Vec<String>>,
    /// JWT: the claim naming the consumer (default `sub`).
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// JWT: a claim naming the consumer's rate-limit tier.
    #[serde(default)]
    pub tier_claim: Option<String>,
    /// JWT: the scopes claim (default `scope`: a space-separated string or
    /// an array).
    #[serde(default)]
    pub scope_claim: Option<String>,
    /// JWT: how long a worker keeps a verified token (at most to its exp).
    #[serde(default)]
    pub cache_ttl: Option<HumanDuration>,
    /// JWT: verified tokens kept per worker.
    #[serde(default)]
    pub cache_size: Option<usize>,
    /// JWT: claims sent to the upstream as headers (claim → header name);
    /// clients' own copies of those headers are dropped.
    #[serde(default)]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Send the credential (key or token header) on to the upstream
    /// (default true); false removes that header.
    #[serde(default = "yes")]
    pub forward_credential: bool,
}

/// One JWT verification key.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeySection {
    /// Matches the token header's `kid` (a token with a `kid` is checked
    /// only against keys with that `kid`).
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies (HS256 … EdDSA).
    pub alg: Spanned<String>,
    /// A PEM public key (RSA, EC or Ed25519) or certificate.
    #[serde(default)]
    pub pem_file: Option<Spanned<String>>,
    /// An HMAC secret, read from this file (trailing newline removed).
    #[serde(default)]
    pub secret_file: Option<Spanned<String>>,
    /// An HMAC secret, read from this environment variable.
    #[serde(default)]
    pub secret_env: Option<Spanned<String>>,
}

/// How node- and cluster-scope limits are kept in step.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSyncSection {
    /// How often workers report and the aggregator answers (and, for
    /// cluster scope, how often each node syncs with Redis).
    pub interval: Spanned<HumanDuration>,
}

impl Default for RateLimitSyncSection {
    fn default() -> Self {
        RateLimitSyncSection {
            interval: Spanned::new(0..0, HumanDuration(std::time::Duration::from_millis(10))),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// "host:port".
    pub address: Spanned<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub database: u32,
    /// Longest wait for one sync round trip before the node falls back.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// TLS to Redis, verified against the CAs in `ca_file` (PEM).
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// The name the server's certificate must carry (default: the host of
    /// `address`).
    #[serde(default)]
    pub server_name: Option<String>,
}

fn default_redis_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(200))
}

fn default_key_prefix() -> String {
    "ringgate:rl:".into()
}

/// A rate-limit policy, attached to routes by name.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// "client_ip", "header:NAME", "route" or "global".
    pub key: Spanned<String>,
    #[serde(flatten)]
    pub limit: LimitSection,
    /// "worker" (default), "node" or "cluster".
    #[serde(default)]
    pub scope: Option<Spanned<String>>,
    /// Cluster scope, while Redis cannot be reached: "local_share"
    /// (default), "allow" or "deny".
    #[serde(default)]
    pub on_redis_error: Option<Spanned<String>>,
    /// RateLimit-* headers on allowed responses too.
    #[serde(default = "yes")]
    pub headers: bool,
    /// A request header naming the client's tier (plan).
    #[serde(default)]
    pub tier_header: Option<String>,
    #[serde(default)]
    pub tiers: BTreeMap<String, LimitSection>,
    /// Most keys tracked per worker.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// For `key = "client_ip"`: proxies (addresses or CIDR networks) whose
    /// X-Forwarded-For is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_max_keys() -> usize {
    100_000
}

/// Either a token bucket (`rate`, `burst`) or a quota (`limit`, `window`).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSection {
    /// "100/s", "10/min", "5000/h". (Plain string: flattened fields cannot
    /// carry spans, so errors point at the policy's table.)
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub window: Option<HumanDuration>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum WorkersSetting {
    Count(i64),
    Auto(AutoWord),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AutoWord {
    Auto,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoDriverSetting {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub max_header_bytes: ByteSize,
    pub max_headers: usize,
    pub max_body_bytes: ByteSize,
    pub header_read_timeout: HumanDuration,
    pub body_read_timeout: HumanDuration,
    /// The longest a whole request body may take to arrive.
    pub body_timeout: HumanDuration,
    pub idle_timeout: HumanDuration,
    pub max_requests_per_connection: u64,
    pub drain_timeout: HumanDuration,
    pub max_connections_per_worker: usize,
    /// Normalize request paths before routing (RFC 3986 §6.2.2).
    pub normalize_path: bool,
    /// With normalize_path: merge runs of slashes.
    pub merge_slashes: bool,
    /// With normalize_path: "reject" (default), "keep" or "decode" `%2F`.
    pub encoded_slash: String,
    /// Forwarded-identity headers toward upstreams: "append" (default),
    /// "replace" or "strip".
    pub forwarded_headers: String,
    /// A `[cors.NAME]` policy whose headers go on answers no route
    /// matched (so a browser sees the 404).
    pub cors: Option<String>,
}

impl Default for ServerSection {
    fn default() -> Self {
        use std::time::Duration;
        ServerSection {
            max_header_bytes: ByteSize(16 * 1024),
            max_headers: 100,
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            body_read_timeout: HumanDuration(Duration::from_secs(30)),
            body_timeout: HumanDuration(Duration::from_secs(300)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            max_requests_per_connection: 0,
            drain_timeout: HumanDuration(Duration::from_secs(30)),
            max_connections_per_worker: 10_000,
            normalize_path: true,
            merge_slashes: true,
            encoded_slash: "reject".into(),
            forwarded_headers: "append".into(),
            cors: None,
        }
    }
}

/// The JSON access log. Absent: no access log.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// "stdout" or a file path (appended to; reopened on SIGUSR1).
    pub path: Spanned<String>,
    /// Fraction of requests logged, (0, 1].
    #[serde(default = "one")]
    pub sample: Spanned<f64>,
}

fn one() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

/// The admin listener (metrics, health, config). Keep it on loopback or a
/// management network: it is not authenticated.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub bind: Spanned<String>,
    /// Host names (besides IP literals and `localhost`) the admin API
    /// answers to; anything else is refused (DNS rebinding).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// A file holding a bearer token every admin request but `/healthz`
    /// must present (`Authorization: Bearer TOKEN`).
    #[serde(default)]
    pub token_file: Option<Spanned<String>>,
    /// How many of the heaviest consumers get their own
    /// `ringgate_consumer_requests_total` series (0: none; at most 1000).
    #[serde(default)]
    pub top_consumers: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub bind: Spanned<String>,
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// HTTPS on this listener.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTlsSection>>,
    /// An `[ip_rules.NAME]` every request on this listener must pass.
    #[serde(default)]
    pub ip_rule: Option<Spanned<String>>,
}

/// TLS termination on a listener (docs/tls.md).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// Certificate chains and keys; chosen per connection by SNI.
    pub certificates: Vec<Spanned<CertificateEntry>>,
    /// A ClientHello whose SNI no certificate covers (or with no SNI):
    /// "default" (the first certificate, or the one marked `default`) or
    /// "refuse" (a handshake alert).
    #[serde(default)]
    pub unknown_sni: Option<Spanned<String>>,
    /// "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<Spanned<String>>,
    /// ALPN protocols offered, in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<Spanned<String>>,
    /// "none" (default), "optional" or "required"; a certificate entry may
    /// override it for its names.
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    /// PEM CA bundle client certificates must chain to.
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
    /// From accept to a finished handshake.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Handshakes one worker runs at once; later ones wait (within their
    /// timeout) so a flood of ClientHellos cannot starve established
    /// connections.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes_in_flight: usize,
    #[serde(default = "yes")]
    pub session_tickets: bool,
    /// At least 32 random bytes shared by every node (and kept across
    /// restarts) so their tickets resume anywhere; default: a random key
    /// per process.
    #[serde(default)]
    pub ticket_key_file: Option<Spanned<String>>,
    /// How long a ticket key is used for sealing; tickets open for up to
    /// twice this.
    #[serde(default = "default_ticket_rotation")]
    pub ticket_rotation: HumanDuration,
    /// Warn (log and metric) this long before a certificate expires.
    #[serde(default = "default_expiry_warning")]
    pub expiry_warning: HumanDuration,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// PEM: the certificate, then its chain.
    pub cert: Spanned<String>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    pub key: Spanned<String>,
    /// The names this certificate serves (`*.example.com` allowed);
    /// default: the DNS names in its subjectAltName.
    #[serde(default)]
    pub names: Option<Vec<Spanned<String>>>,
    /// Served to ClientHellos whose SNI matches no certificate.
    #[serde(default)]
    pub default: bool,
    /// Overrides the listener's `client_auth` / `client_ca` for these names.
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
}

fn default_alpn() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "http/1.1".to_string())]
}

fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

fn default_max_handshakes() -> usize {
    64
}

fn default_ticket_rotation() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(6 * 3600))
}

fn default_expiry_warning() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(14 * 86400))
}

fn default_backlog() -> u32 {
    1024
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub endpoints: Vec<Spanned<EndpointEntry>>,
    #[serde(default)]
    pub balance: BalanceSetting,
    /// For `consistent_hash`: `"client_ip"` or `"header:NAME"`.
    #[serde(default)]
    pub hash_on: Option<Spanned<String>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: HumanDuration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: HumanDuration,
    /// HTTPS to the endpoints.
    #[serde(default)]
    pub tls: Option<Spanned<UpstreamTlsSection>>,
    /// Active health checks (docs/resilience.md).
    #[serde(default)]
    pub health_check: Option<Spanned<HealthCheckSection>>,
    /// "refuse" (503, the default) or "fail_open" when every endpoint is down.
    #[serde(default)]
    pub when_all_down: WhenAllDownSetting,
    /// How many retries routes may make of this upstream's traffic.
    #[serde(default)]
    pub retry_budget: Option<Spanned<RetryBudgetSection>>,
    /// Passive health: eject endpoints whose answers fail.
    #[serde(default)]
    pub outlier_detection: Option<Spanned<OutlierDetectionSection>>,
    /// An endpoint back in traffic gets its full share only after this
    /// long, ramping up (default 0s: at once).
    #[serde(default)]
    pub slow_start: Option<HumanDuration>,
    /// How often endpoints given as host names are resolved again
    /// (default 30s; "0s": never).
    #[serde(default)]
    pub resolve_interval: Option<HumanDuration>,
    /// Limits on what the upstream is sent at once, and a bounded queue.
    #[serde(default)]
    pub circuit_breaker: Option<Spanned<CircuitBreakerSection>>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenAllDownSetting {
    #[default]
    Refuse,
    FailOpen,
}

/// A route's `retry = { ... }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Tries in all, the first included (default 3).
    #[serde(default)]
    pub attempts: Option<Spanned<u32>>,
    /// "connect-failure", "reset", "timeout", or a status such as "503"
    /// (default: connect-failure, reset, timeout, 502, 503, 504).
    #[serde(default)]
    pub on: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub per_try_timeout: Option<HumanDuration>,
    /// The whole request's bound to its response head, every try included.
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    #[serde(default)]
    pub backoff: Option<BackoffSection>,
    /// Retry POST and other non-idempotent requests after they were sent.
    #[serde(default)]
    pub non_idempotent: bool,
    /// Largest request body kept to replay (default 64KiB, at most 1MiB).
    #[serde(default)]
    pub max_body: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffSection {
    #[serde(default)]
    pub base: Option<HumanDuration>,
    #[serde(default)]
    pub max: Option<HumanDuration>,
}

/// `[upstreams.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    #[serde(default)]
    pub max_connections: Option<u32>,
    #[serde(default)]
    pub max_requests: Option<u32>,
    #[serde(default)]
    pub max_pending: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub queue_timeout: Option<HumanDuration>,
}

/// `[upstreams.NAME.outlier_detection]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionSection {
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub consecutive_5xx: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default)]
    pub failure_percentage: Option<Spanned<u32>>,
    #[serde(default)]
    pub failure_percentage_min_requests: Option<u32>,
    #[serde(default)]
    pub base_ejection: Option<HumanDuration>,
    #[serde(default)]
    pub max_ejection: Option<HumanDuration>,
    #[serde(default)]
    pub max_ejection_percent: Option<Spanned<u32>>,
}

/// `[upstreams.NAME.retry_budget]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries at most this percentage of requests (default 20).
    #[serde(default)]
    pub percent: Option<Spanned<u32>>,
    /// Plus this many a second, per worker (default 10).
    #[serde(default)]
    pub min_per_second: Option<u32>,
}

/// `[upstreams.NAME.health_check]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// "http" (default) or "tcp".
    #[serde(default, rename = "type")]
    pub kind: Option<Spanned<String>>,
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Statuses that pass; any 2xx or 3xx by default.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    /// A string the answer's body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub jitter: Option<HumanDuration>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
}

/// TLS toward an upstream's endpoints (docs/tls.md).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// PEM CA bundle to verify endpoints against; default: the system's.
    #[serde(default)]
    pub ca_file: Option<Spanned<String>>,
    /// SNI and the name verified; default: each endpoint's host.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// Verify the endpoint's certificate (default true).
    #[serde(default = "yes")]
    pub verify: bool,
    /// A client certificate (PEM chain) and key for upstream mTLS.
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
    /// "1.2" (default) or "1.3".
    #[serde(default)]
    pub min_version: Option<String>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(2))
}
fn default_response_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_pool_max_idle() -> usize {
    64
}
fn default_pool_idle_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(50))
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum EndpointEntry {
    Address(String),
    Detailed {
        addr: String,
        #[serde(default = "default_weight")]
        weight: u32,
    },
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSetting {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastOutstanding,
    PowerOfTwo,
    ConsistentHash,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    #[serde(default)]
    pub name: Option<String>,
    /// Exact host (`api.example.com`) or suffix wildcard (`*.example.com`).
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// Exact path match.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    /// Segment-aware prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Header equality predicates (name → exact value).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,

    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    #[serde(default)]
    pub respond: Option<RespondSection>,

    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub replace_prefix: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub preserve_host: bool,
    #[serde(default)]
    pub host_rewrite: Option<Spanned<String>>,
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Names of `[rate_limits.NAME]` policies applied to this route.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Names of `[auth.NAME]` providers guarding this route.
    #[serde(default)]
    pub auth: Vec<Spanned<String>>,
    /// "any" (default: one provider must accept) or "all".
    #[serde(default)]
    pub auth_mode: Option<Spanned<String>>,
    /// Requests without credentials pass, anonymous; wrong credentials
    /// are still refused.
    #[serde(default)]
    pub auth_optional: bool,
    /// Scopes an authenticated consumer must hold (else 403).
    #[serde(default)]
    pub auth_scopes: Vec<String>,
    /// CORS preflights (`OPTIONS` with `Access-Control-Request-Method`)
    /// pass without credentials: browsers never send them.
    #[serde(default)]
    pub auth_skip_preflight: bool,
    /// Cache this route's responses (docs/cache.md).
    #[serde(default)]
    pub cache: Option<Spanned<RouteCacheSection>>,
    /// Retry failed tries on another endpoint (docs/resilience.md).
    #[serde(default)]
    pub retry: Option<Spanned<RetrySection>>,
    #[serde(default)]
    pub request_headers: HeaderEdits,
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Requests on a plain-HTTP connection are answered with a 308 to the
    /// same URL over HTTPS (HTTPS ones are served as usual).
    #[serde(default)]
    pub https_redirect: bool,
    /// The HTTPS port the redirect names (default 443, left out of the URL).
    #[serde(default)]
    pub https_port: Option<Spanned<u16>>,
    /// An `[ip_rules.NAME]` the route's requests must pass.
    #[serde(default)]
    pub ip_rule: Option<Spanned<String>>,
    /// A `[cors.NAME]` policy for the route.
    #[serde(default)]
    pub cors: Option<Spanned<String>>,
    /// Protocols a client may upgrade to through this route
    /// (`["websocket"]`); the connection then becomes a tunnel.
    #[serde(default)]
    pub upgrades: Vec<Spanned<String>>,
    /// A tunnel with no bytes either way for this long is closed.
    #[serde(default)]
    pub tunnel_idle_timeout: Option<HumanDuration>,
    /// A tunnel is closed after this long whatever it carries.
    #[serde(default)]
    pub tunnel_max_lifetime: Option<HumanDuration>,
    /// Compress this route's answers (docs/policies.md).
    #[serde(default)]
    pub compress: Option<Spanned<CompressSection>>,
    /// Answer by calling several backends and merging their JSON
    /// (docs/policies.md); instead of `upstream` or `respond`.
    #[serde(default)]
    pub aggregate: Option<Spanned<AggregateSection>>,
}

/// `[routes.aggregate]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// The whole aggregate's time limit (default 5s).
    #[serde(default)]
    pub deadline: Option<HumanDuration>,
    /// "fail" (default: 502 when a backend fails) or "partial" (what
    /// arrived, with `x-aggregate-missing`).
    #[serde(default)]
    pub on_failure: Option<Spanned<String>>,
    /// Largest merged body (default 1MiB).
    #[serde(default)]
    pub max_result: Option<ByteSize>,
    /// Client headers passed to every backend.
    #[serde(default)]
    pub headers: Vec<Spanned<String>>,
    /// `/users/{id}`: named path parameters for the backends' paths.
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    pub backends: Vec<Spanned<AggregateBackendSection>>,
}

/// `[[routes.aggregate.backends]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateBackendSection {
    /// Default: the upstream's name.
    #[serde(default)]
    pub name: Option<String>,
    pub upstream: Spanned<String>,
    /// Path and query template: `/users/${id}`, `/feed${rest}?${query}`.
    pub path: Spanned<String>,
    /// Put the body under this key (default: merge its fields at the top).
    #[serde(default)]
    pub key: Option<String>,
    /// Top-level fields kept.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// Top-level fields dropped.
    #[serde(default)]
    pub deny: Vec<String>,
    /// This backend's time limit (default: the deadline).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Largest body accepted from it (default 256KiB).
    #[serde(default)]
    pub max_body: Option<ByteSize>,
}

/// A route's `compress = { ... }`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressSection {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// "br", "gzip", in the server's order of preference (default both,
    /// brotli first).
    #[serde(default)]
    pub encodings: Option<Vec<Spanned<String>>>,
    /// Content types compressed: `application/json`, `text/*`.
    #[serde(default)]
    pub types: Option<Vec<Spanned<String>>>,
    /// Answers of a known length below this are sent as they are.
    #[serde(default)]
    pub min_size: Option<ByteSize>,
    /// 1 (fastest) to 9 (smallest); default 4.
    #[serde(default)]
    pub gzip_level: Option<Spanned<u32>>,
    /// 0 (fastest) to 11 (smallest); default 4.
    #[serde(default)]
    pub brotli_quality: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSection {
    #[serde(default = "default_status")]
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_status() -> Spanned<u16> {
    Spanned::new(0..0, 200)
}
fn default_content_type() -> String {
    "application/json".to_string()
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Appended after the forwarded headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replaces any header of the same name.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Removed (case-insensitive).
    #[serde(default)]
    pub remove: Vec<String>,
}
