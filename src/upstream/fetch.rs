//! [cold] One blocking HTTP/1.1 request to an upstream endpoint, for the
//! threads that work off the request path: a GET of a document (the JWKS
//! fetcher), a health probe (any status, a bounded body).
//! It goes where the upstream's config says, with its TLS settings
//! (verification, SNI, client certificate) and its timeouts, and holds the
//! answer to the same strict response parser the proxy uses; the whole
//! exchange has one deadline and the body a size cap.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::blocking::{DeadlineStream, TlsTo};
use crate::http::collect::{CollectError, Collector};
use crate::http::response::parse_response;
use crate::snapshot::UpstreamSpec;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    Io(std::io::Error),
    /// The endpoint answered with a status other than 200.
    Status(u16),
    /// The answer was not a well-formed HTTP/1.1 response.
    Malformed(&'static str),
    /// The body was longer than allowed.
    TooLarge,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                f.write_str("timed out")
            }
            FetchError::Io(e) => write!(f, "{e}"),
            FetchError::Status(s) => write!(f, "status {s}"),
            FetchError::Malformed(why) => write!(f, "malformed response: {why}"),
            FetchError::TooLarge => f.write_str("response too large"),
        }
    }
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        // A read timeout shows as WouldBlock on some platforms.
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return FetchError::Io(std::io::ErrorKind::TimedOut.into());
        }
        FetchError::Io(e)
    }
}

/// GETs `path` from `spec`'s endpoint `endpoint` and returns the body of
/// a 200 answer of at most `max_body` bytes. Connecting may take the
/// upstream's `connect_timeout`; the request and the whole answer its
/// `response_timeout`.
pub fn get(
    spec: &UpstreamSpec,
    endpoint: usize,
    path: &str,
    max_body: usize,
) -> Result<Vec<u8>, FetchError> {
    let (target, mut stream) = connect(spec, endpoint, spec.connect_timeout)?;
    stream.deadline = Some(Instant::now() + spec.response_timeout.max(Duration::from_millis(1)));
    let mut request = Vec::with_capacity(128 + path.len());
    request.extend_from_slice(b"GET ");
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    request.extend_from_slice(&target.authority);
    request.extend_from_slice(
        b"\r\naccept: application/json\r\nuser-agent: ringgate\r\nconnection: close\r\n\r\n",
    );
    stream.write_all(&request)?;
    stream.flush()?;
    match read_answer(&mut stream, max_body, false)? {
        (200, body) => Ok(body),
        (status, _) => Err(FetchError::Status(status)),
    }
}

/// One health probe: `method path` to `spec`'s endpoint `endpoint` (over
/// the upstream's TLS, if it has some), `Host` being `host` or the
/// endpoint's authority, the whole exchange within `timeout`. Returns the
/// status and at most `max_body` bytes of body, whatever the status.
pub fn probe(
    spec: &UpstreamSpec,
    endpoint: usize,
    method: &str,
    path: &str,
    host: Option<&str>,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Vec<u8>), FetchError> {
    let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
    let (target, mut stream) = connect(spec, endpoint, timeout)?;
    stream.deadline = Some(deadline);
    let mut request = Vec::with_capacity(128 + path.len());
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(path.as_bytes());
    request.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match host {
        Some(host) => request.extend_from_slice(host.as_bytes()),
        None => request.extend_from_slice(&target.authority),
    }
    request.extend_from_slice(b"\r\nuser-agent: ringgate-health\r\nconnection: close\r\n\r\n");
    stream.write_all(&request)?;
    stream.flush()?;
    read_answer(&mut stream, max_body, method.eq_ignore_ascii_case("HEAD"))
}

/// A connection to `spec`'s endpoint `endpoint` (TLS as the upstream
/// says), made within `timeout`.
fn connect(
    spec: &UpstreamSpec,
    endpoint: usize,
    timeout: Duration,
) -> Result<(&crate::snapshot::EndpointSpec, DeadlineStream), FetchError> {
    let Some(target) = spec.endpoints.get(endpoint) else {
        return Err(FetchError::Io(std::io::ErrorKind::NotFound.into()));
    };
    let tls = spec.tls.as_ref().map(|tls| TlsTo {
        config: &tls.config,
        name: tls
            .names
            .get(target.source)
            .cloned()
            .unwrap_or_else(|| rustls::pki_types::ServerName::from(target.addr.ip())),
    });
    Ok((
        target,
        DeadlineStream::connect([target.addr], timeout, tls)?,
    ))
}

/// Reads one response from `io`: its status and body (none after a HEAD).
fn read_answer(
    io: &mut impl Read,
    max_body: usize,
    head_request: bool,
) -> Result<(u16, Vec<u8>), FetchError> {
    let mut buf = Vec::with_capacity(8192);
    let mut headers = Vec::new();
    let head = loop {
        let got = fill(io, &mut buf, MAX_HEAD + 1)?;
        let parsed = parse_response(&buf, MAX_HEAD, 64, head_request, &mut headers)
            .map_err(|_| FetchError::Malformed("bad head"))?;
        match parsed {
            Some(head) if head.is_interim() => {
                buf.drain(..head.len);
            }
            Some(head) => break head,
            None if got == 0 => return Err(FetchError::Malformed("closed before the head")),
            None => {}
        }
    };
    let status = head.status;
    buf.drain(..head.len);
    let mut body = Collector::new(head.framing, max_body)?;
    loop {
        let used = body.feed(&buf)?;
        buf.drain(..used);
        if body.is_done() {
            return Ok((status, body.into_body()));
        }
        if fill(io, &mut buf, 64 * 1024)? == 0 {
            body.closed()?;
            return Ok((status, body.into_body()));
        }
    }
}

impl From<CollectError> for FetchError {
    fn from(e: CollectError) -> Self {
        match e {
            CollectError::TooLarge => FetchError::TooLarge,
            CollectError::Malformed(why) => FetchError::Malformed(why),
        }
    }
}

/// Reads once into `buf`, letting it grow to at most `cap` bytes; returns
/// the bytes read (0: the peer closed, or `buf` is full).
fn fill(io: &mut impl Read, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<usize> {
    let start = buf.len();
    if start >= cap {
        return Ok(0);
    }
    let want = (cap - start).min(64 * 1024);
    buf.resize(start + want, 0);
    let result = loop {
        match io.read(&mut buf[start..]) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    buf.truncate(start + *result.as_ref().unwrap_or(&0));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: &[u8], max: usize) -> Result<Vec<u8>, FetchError> {
        // One byte per read: every boundary is crossed mid-read.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        match read_answer(&mut Trickle(bytes), max, false)? {
            (200, body) => Ok(body),
            (status, _) => Err(FetchError::Status(status)),
        }
    }

    #[test]
    fn bodies_by_length_by_chunks_and_until_close() {
        let by_length = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(answer(by_length, 100).unwrap(), b"hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n";
        assert_eq!(answer(chunked, 100).unwrap(), b"hello");
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert_eq!(answer(until_close, 100).unwrap(), b"hello");
        let interim =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(answer(interim, 100).unwrap(), b"ok");
    }

    #[test]
    fn heads_up_to_16_kib_are_read() {
        let big = format!(
            "HTTP/1.1 200 OK\r\nx-padding: {}\r\ncontent-length: 2\r\n\r\nok",
            "p".repeat(12 * 1024)
        );
        assert_eq!(answer(big.as_bytes(), 100).unwrap(), b"ok");
        let huge = format!(
            "HTTP/1.1 200 OK\r\nx-padding: {}\r\ncontent-length: 2\r\n\r\nok",
            "p".repeat(17 * 1024)
        );
        assert!(matches!(
            answer(huge.as_bytes(), 100),
            Err(FetchError::Malformed(_))
        ));
    }

    #[test]
    fn the_body_cap_holds_for_every_framing() {
        let by_length = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert!(matches!(answer(by_length, 4), Err(FetchError::TooLarge)));
        assert_eq!(answer(by_length, 5).unwrap(), b"hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert!(matches!(answer(chunked, 4), Err(FetchError::TooLarge)));
        assert_eq!(answer(chunked, 5).unwrap(), b"hello");
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nhello";
        assert!(matches!(answer(until_close, 4), Err(FetchError::TooLarge)));
        assert_eq!(answer(until_close, 5).unwrap(), b"hello");
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let timed_out = FetchError::from(std::io::Error::from(std::io::ErrorKind::WouldBlock));
        assert_eq!(timed_out.to_string(), "timed out");
        let refused = FetchError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(
            matches!(&refused, FetchError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        );
        assert_ne!(refused.to_string(), "timed out");
        assert_eq!(FetchError::Status(503).to_string(), "status 503");
        assert_eq!(
            FetchError::Malformed("bad head").to_string(),
            "malformed response: bad head"
        );
        assert_eq!(FetchError::TooLarge.to_string(), "response too large");
    }

    #[test]
    fn other_statuses_and_broken_answers_are_errors() {
        let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(
            answer(not_found, 100),
            Err(FetchError::Status(404))
        ));
        let short = b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhello";
        assert!(matches!(answer(short, 100), Err(FetchError::Malformed(_))));
        let cut_chunks = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhel";
        assert!(matches!(
            answer(cut_chunks, 100),
            Err(FetchError::Malformed(_))
        ));
        let no_head = b"HTTP/1.1 200 OK\r\ncontent-le";
        assert!(matches!(
            answer(no_head, 100),
            Err(FetchError::Malformed(_))
        ));
        let garbage = b"SSH-2.0-OpenSSH\r\n\r\n";
        assert!(matches!(
            answer(garbage, 100),
            Err(FetchError::Malformed(_))
        ));
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(matches!(answer(both, 100), Err(FetchError::Malformed(_))));
    }
}
