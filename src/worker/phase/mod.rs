//! [hot] The request path as phases. Each phase is a module with a
//! compiled part (built into the `Snapshot` by `config::compile`) and,
//! where it keeps state, a per-worker part (in the `Shard` or the
//! `Generation`). `conn::handle_request` runs them in this fixed order:
//!
//! ```text
//! [tls handshake] ─▶ read head ─▶ normalize ─▶ tls host
//!   ─▶ ip access (listener) ─▶ route ─▶ cors (judge) ─▶ ip access (route)
//!   ─▶ cors preflight ─▶ https redirect ─▶ auth ─▶ body size ─▶ rate limits
//!   ─▶ respond | cache lookup (hit: answer) ─▶ forward
//!   ─▶ response headers ─▶ log + metrics
//! ```
//!
//! A phase decides without I/O where it can, returning a `Verdict`; the
//! connection task performs what the verdict asks (an answer, a wait).
//! Phases a route does not configure cost one branch. Adding a phase is a
//! module here plus one line in `handle_request`.

pub mod auth;
pub mod cache;
pub mod cors;
pub mod https_redirect;
pub mod ip_access;
pub mod log;
pub mod normalize;
pub mod ratelimit;
pub mod respond;
pub mod response_headers;
pub mod route;
pub mod tls_host;

use std::rc::Rc;
use std::time::Duration;

use crate::failure::Failure;
use crate::http::RequestHead;
use crate::snapshot::{Route, Snapshot};

use super::shard::{Generation, Shard};

/// What a phase decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next phase.
    Continue,
    /// Answer the client with this failure; no later phase runs.
    Answer(Failure),
    /// Ask again after this long: the connection task sleeps, the worker
    /// goes on serving everyone else.
    Wait(Duration),
}

/// One routed request as the phases after routing see it.
pub struct RequestCtx<'a> {
    pub shard: &'a Rc<Shard>,
    /// The generation current when the head arrived; the request uses it
    /// to the end.
    pub generation: &'a Rc<Generation>,
    pub head: &'a RequestHead,
    pub route: &'a Route,
}

impl RequestCtx<'_> {
    /// The compiled config of the request's generation.
    #[inline]
    pub fn snapshot(&self) -> &Snapshot {
        &self.generation.snapshot
    }
}

/// Runs a phase until it stops asking to wait: `None` to go on, or the
/// failure to answer with.
pub async fn decide(mut phase: impl FnMut() -> Verdict) -> Option<Failure> {
    loop {
        match phase() {
            Verdict::Continue => return None,
            Verdict::Answer(failure) => return Some(failure),
            Verdict::Wait(pause) => monoio::time::sleep(pause).await,
        }
    }
}
