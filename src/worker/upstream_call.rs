//! [warm] The gateway's own calls to an upstream, as opposed to relayed
//! requests: a token introspection, a cache entry refreshed in the
//! background. One request written whole, one answer read whole (head and
//! a body of bounded size), through this worker's pool for that upstream.
//! A pooled connection that turns out closed before answering is retried
//! once on a new one: callers send only requests without side effects.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use crate::http::HeaderSpan;
use crate::http::collect::{CollectError, Collector};
use crate::http::response::{ResponseFraming, parse_response};
use crate::transport::{IoFailure, read_more_timed, write_all_keep};
use crate::upstream::conn::UPSTREAM_BUFFER;

use super::forward::acquire;
use super::shard::{Generation, Shard};

/// Largest response head read.
const MAX_HEAD: usize = 16 * 1024;

/// Why a call failed (for the log).
#[derive(Debug)]
pub enum CallError {
    Connect(crate::failure::Failure),
    Io(&'static str),
    Status(u16),
    Malformed(&'static str),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(failure) => write!(f, "cannot connect: {}", failure.code()),
            CallError::Io(why) => f.write_str(why),
            CallError::Status(status) => write!(f, "status {status}"),
            CallError::Malformed(why) => write!(f, "malformed answer: {why}"),
        }
    }
}

/// A whole answer.
pub struct Answer {
    pub status: u16,
    /// The response head's bytes; `headers` are spans into it.
    pub head: BytesMut,
    pub headers: Vec<HeaderSpan>,
    /// `Connection` names other headers (they are hop-by-hop).
    pub connection_names_others: bool,
    pub body: Vec<u8>,
}

/// Sends `request` (a whole request, head and any body) to `endpoint` of
/// `upstream` and reads the answer, whose body may be at most `max_body`
/// bytes.
pub async fn call(
    shard: &Shard,
    generation: &Generation,
    upstream: usize,
    endpoint: usize,
    request: &[u8],
    max_body: usize,
) -> Result<Answer, CallError> {
    let spec = &generation.snapshot.upstreams[upstream];
    let mut allow_pooled = true;
    loop {
        let mut out = BytesMut::from(request);
        let (mut conn, pooled) = acquire(
            shard,
            generation,
            spec,
            upstream,
            endpoint,
            allow_pooled,
            None,
        )
        .await
        .map_err(CallError::Connect)?;
        let deadline = Instant::now() + spec.response_timeout;
        let sent = write_all_keep(&mut conn.stream, &mut out, spec.response_timeout).await;
        let answer = match sent {
            Ok(()) => read_answer(&mut conn, deadline, max_body).await,
            Err(_) => Err(CallError::Io("write failed")),
        };
        match answer {
            // A pooled connection the endpoint had closed: nothing was
            // answered, ask again on a new one.
            Err(CallError::Io("write failed" | "closed")) if pooled && conn.buf.is_empty() => {
                allow_pooled = false;
                continue;
            }
            Err(e) => return Err(e),
            Ok((answer, reusable)) => {
                if reusable && !shard.draining.get() {
                    generation.upstreams.borrow_mut()[upstream].pools[endpoint]
                        .checkin(conn, Instant::now());
                }
                return Ok(answer);
            }
        }
    }
}

/// Reads one response, and whether the connection can be pooled after it.
async fn read_answer(
    conn: &mut crate::upstream::UpstreamConn,
    deadline: Instant,
    max_body: usize,
) -> Result<(Answer, bool), CallError> {
    let head = loop {
        if !conn.buf.is_empty() {
            match parse_response(&conn.buf, MAX_HEAD, 64, false, &mut conn.headers) {
                Ok(Some(head)) if head.is_interim() => {
                    conn.buf.advance(head.len);
                    continue;
                }
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(_) => return Err(CallError::Malformed("bad response head")),
            }
        }
        fill(conn, deadline).await?;
    };
    let head_bytes = conn.buf.split_to(head.len);
    let headers = conn.headers.clone();
    let mut body = Collector::new(head.framing, max_body).map_err(collect_error)?;
    loop {
        let used = body.feed(&conn.buf).map_err(collect_error)?;
        conn.buf.advance(used);
        if body.is_done() {
            break;
        }
        match fill(conn, deadline).await {
            Ok(()) => {}
            Err(CallError::Io("closed")) => {
                body.closed().map_err(collect_error)?;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // A body ended by closing leaves nothing to reuse.
    let reusable =
        head.keep_alive && head.framing != ResponseFraming::UntilClose && conn.buf.is_empty();
    let answer = Answer {
        status: head.status,
        head: head_bytes,
        headers,
        connection_names_others: head.connection_names_others,
        body: body.into_body(),
    };
    Ok((answer, reusable))
}

fn collect_error(e: CollectError) -> CallError {
    match e {
        CollectError::TooLarge => CallError::Malformed("answer too large"),
        CollectError::Malformed(why) => CallError::Malformed(why),
    }
}

/// Reads more of the answer before `deadline`.
async fn fill(
    conn: &mut crate::upstream::UpstreamConn,
    deadline: Instant,
) -> Result<(), CallError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left == Duration::ZERO {
        return Err(CallError::Io("timed out"));
    }
    match read_more_timed(&mut conn.stream, &mut conn.buf, UPSTREAM_BUFFER, left).await {
        Ok(_) => Ok(()),
        Err(IoFailure::TimedOut) => Err(CallError::Io("timed out")),
        Err(IoFailure::Closed) => Err(CallError::Io("closed")),
        Err(_) => Err(CallError::Io("read failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_say_what_went_wrong() {
        assert_eq!(CallError::Io("timed out").to_string(), "timed out");
        assert_eq!(CallError::Status(401).to_string(), "status 401");
        assert_eq!(
            CallError::Malformed("answer too large").to_string(),
            "malformed answer: answer too large"
        );
        assert_eq!(
            CallError::Connect(crate::failure::Failure::UpstreamConnect).to_string(),
            "cannot connect: upstream_connect_failed"
        );
    }
}
