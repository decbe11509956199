//! ringgate: a thread-per-core HTTP/1.1 API gateway on io_uring (monoio).
//!
//! Module map (see docs/architecture.md): `config` (cold) compiles TOML into
//! an immutable `snapshot::Snapshot`; `control` (cold) owns the process:
//! workers, signals, drain; `worker` runs one pinned monoio runtime per core
//! and its `conn` module is the request loop, which drives `http` (codec, no
//! I/O), `router` and `upstream` in order. `failure` maps every error to the
//! answer a client sees, in one place.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod accesslog;
pub mod auth;
pub mod blocking;
pub mod cache;
pub mod config;
pub mod control;
pub mod crypto;
pub mod failure;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ipnet;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod redis;
pub mod router;
pub mod snapshot;
pub mod tls;
pub mod transport;
pub mod upstream;
pub mod worker;
