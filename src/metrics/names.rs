//! Every metric name ringgate exports, in one place (docs/operations.md
//! lists them). Prometheus conventions: `ringgate_` prefix, `_total` for
//! counters, base units (`_seconds`, `_bytes`).

pub const REQUESTS: &str = "ringgate_requests_total";
pub const REQUEST_DURATION: &str = "ringgate_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "ringgate_upstream_response_duration_seconds";
pub const BYTES_RECEIVED: &str = "ringgate_received_bytes_total";
pub const BYTES_SENT: &str = "ringgate_sent_bytes_total";
pub const CONNECTIONS_OPEN: &str = "ringgate_connections_open";
pub const CONNECTIONS_ACCEPTED: &str = "ringgate_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "ringgate_connections_refused_total";
pub const WORKER_REQUESTS: &str = "ringgate_worker_requests_total";
pub const REJECTED: &str = "ringgate_rejected_requests_total";
pub const UPSTREAM_TIMEOUTS: &str = "ringgate_upstream_timeouts_total";
pub const UPSTREAM_CREATED: &str = "ringgate_upstream_connections_created_total";
pub const UPSTREAM_FAILED: &str = "ringgate_upstream_connections_failed_total";
pub const UPSTREAM_IDLE: &str = "ringgate_upstream_connections_idle";
pub const UPSTREAM_ACTIVE: &str = "ringgate_upstream_requests_in_flight";
pub const UPSTREAM_REUSED: &str = "ringgate_upstream_connections_reused_total";
pub const UPSTREAM_RETRIES: &str = "ringgate_upstream_retries_total";
pub const BREAKER_QUEUE_LENGTH: &str = "ringgate_upstream_queue_length";
pub const BREAKER_QUEUED: &str = "ringgate_upstream_queued_total";
pub const BREAKER_QUEUE_WAIT: &str = "ringgate_upstream_queue_wait_seconds_total";
pub const BREAKER_TRIPS: &str = "ringgate_upstream_breaker_trips_total";
pub const BREAKER_ABANDONED: &str = "ringgate_upstream_queue_abandoned_total";
pub const ENDPOINT_EJECTED: &str = "ringgate_upstream_endpoint_ejected";
pub const ENDPOINT_EJECTIONS: &str = "ringgate_upstream_endpoint_ejections_total";
pub const UPSTREAM_ENDPOINT_RETRIES: &str = "ringgate_upstream_endpoint_retries_total";
pub const UPSTREAM_RETRY_BUDGET_EXHAUSTED: &str = "ringgate_upstream_retry_budget_exhausted_total";
pub const TLS_HANDSHAKES: &str = "ringgate_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "ringgate_tls_handshake_failures_total";
pub const TLS_HANDSHAKES_QUEUED: &str = "ringgate_tls_handshakes_queued_total";
pub const TLS_CERT_EXPIRY: &str = "ringgate_tls_certificate_expiry_seconds";
pub const PANICS: &str = "ringgate_connection_panics_total";
pub const RATE_LIMIT_DECISIONS: &str = "ringgate_rate_limit_decisions_total";
pub const AUTH_DECISIONS: &str = "ringgate_auth_decisions_total";
pub const IP_RULE_DECISIONS: &str = "ringgate_ip_rule_decisions_total";
pub const CORS_REQUESTS: &str = "ringgate_cors_requests_total";
pub const TUNNELS_OPEN: &str = "ringgate_tunnels_open";
pub const COMPRESSED: &str = "ringgate_compressed_responses_total";
pub const AGGREGATE_BACKENDS: &str = "ringgate_aggregate_backend_calls_total";
pub const AGGREGATE_ANSWERS: &str = "ringgate_aggregate_responses_total";
pub const TUNNELS_CLOSED: &str = "ringgate_tunnels_closed_total";
pub const CACHE_REQUESTS: &str = "ringgate_cache_requests_total";
pub const CACHE_COALESCED: &str = "ringgate_cache_coalesced_total";
pub const CACHE_REVALIDATIONS: &str = "ringgate_cache_revalidations_total";
pub const ENDPOINT_HEALTHY: &str = "ringgate_upstream_endpoint_healthy";
pub const WORKER_ENDPOINTS_DOWN: &str = "ringgate_worker_endpoints_down";
pub const HEALTH_CHECKS: &str = "ringgate_upstream_health_checks_total";
pub const HEALTH_TRANSITIONS: &str = "ringgate_upstream_health_transitions_total";
pub const CACHE_OBJECTS: &str = "ringgate_cache_objects";
pub const CACHE_BYTES: &str = "ringgate_cache_bytes";
pub const CACHE_EVICTIONS: &str = "ringgate_cache_evictions_total";
pub const CONSUMER_REQUESTS: &str = "ringgate_consumer_requests_total";
pub const INTROSPECTION_CALLS: &str = "ringgate_auth_introspection_calls_total";
pub const JWKS_FETCHES: &str = "ringgate_auth_jwks_fetches_total";
pub const JWKS_KEYS: &str = "ringgate_auth_jwks_keys";
pub const JWKS_LAST_SUCCESS: &str = "ringgate_auth_jwks_last_success_timestamp_seconds";
pub const ACCESS_LOG_DROPPED: &str = "ringgate_access_log_dropped_lines_total";
pub const LIMIT_SYNC_TICK: &str = "ringgate_rate_limit_sync_tick_duration_seconds";
pub const LIMIT_SYNC_KEYS: &str = "ringgate_rate_limit_shared_keys";
pub const REDIS_ERRORS: &str = "ringgate_rate_limit_redis_errors_total";
pub const REDIS_UP: &str = "ringgate_rate_limit_redis_up";
pub const CLUSTER_NODES: &str = "ringgate_rate_limit_cluster_nodes";

/// Latency buckets (seconds): from 100 µs (a loopback hop) to a minute.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
