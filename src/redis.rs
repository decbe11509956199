//! [cold] A minimal Redis client for what nodes share through Redis
//! (cluster-scope limits, cache purges): RESP2 over one blocking TCP (or
//! rustls TLS) connection with timeouts, AUTH and SELECT, scripts run by
//! EVALSHA (loaded on first NOSCRIPT), and a subscription's pushed
//! messages. Used only by the cluster and purge threads and the admin
//! API, never on the request path. Written here rather than taken from a
//! crate because ringgate needs a handful of commands, blocking I/O with
//! hard deadlines and no async runtime of its own — the popular clients
//! bring tokio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::blocking::DeadlineStream;
use crate::snapshot::RedisSpec;

/// A Redis reply (RESP2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(n) => Some(*n),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum RedisError {
    Io(std::io::Error),
    /// The server answered with an error reply.
    Server(String),
    /// The reply could not be parsed, or was not what the command returns.
    Protocol(String),
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Io(e) => write!(f, "I/O: {e}"),
            RedisError::Server(e) => write!(f, "server: {e}"),
            RedisError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl From<std::io::Error> for RedisError {
    fn from(e: std::io::Error) -> Self {
        RedisError::Io(e)
    }
}

/// This process's name among the nodes that share a Redis: host, process
/// id and the start time's low bits (a restarted process is a new node).
/// The same for every thread of the process.
pub fn node_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!(
            "{}:{}:{:x}",
            host.trim(),
            std::process::id(),
            started & 0xffff_ffff
        )
    })
}

/// Writes one command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Bounds on what the server may send (a guard against a confused or
/// hostile peer): the longest bulk string, the most array items, the longest
/// simple line, and how deeply arrays nest (ringgate's replies nest once).
const MAX_REPLY_LEN: usize = 64 << 20;
const MAX_ARRAY_ITEMS: usize = 1 << 20;
const MAX_LINE: usize = 64 * 1024;
const MAX_DEPTH: usize = 8;

pub fn read_reply(r: &mut impl BufRead) -> Result<Reply, RedisError> {
    read_reply_at(r, 0)
}

fn read_reply_at(r: &mut impl BufRead, depth: usize) -> Result<Reply, RedisError> {
    if depth > MAX_DEPTH {
        return Err(RedisError::Protocol("arrays nested too deeply".into()));
    }
    let mut line = Vec::new();
    r.by_ref()
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol(if line.len() > MAX_LINE {
            "reply line too long".into()
        } else {
            "reply line without CRLF".into()
        }));
    }
    // A bare CRLF has no type byte (found by fuzzing: it used to panic).
    if line.len() < 3 {
        return Err(RedisError::Protocol("empty reply line".into()));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let number = || {
        text.parse::<i64>()
            .map_err(|_| RedisError::Protocol(format!("bad number `{text}`")))
    };
    match line[0] {
        b'+' => Ok(Reply::Status(text)),
        b'-' => Ok(Reply::Error(text)),
        b':' => Ok(Reply::Integer(number()?)),
        b'$' => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = n as usize;
            if n > MAX_REPLY_LEN {
                return Err(RedisError::Protocol(format!("bulk of {n} bytes")));
            }
            // Read as it arrives rather than allocating what the peer claims.
            let mut body = Vec::with_capacity(n.min(64 * 1024) + 2);
            r.by_ref().take(n as u64 + 2).read_to_end(&mut body)?;
            if body.len() != n + 2 {
                return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if !body.ends_with(b"\r\n") {
                return Err(RedisError::Protocol("bulk string without CRLF".into()));
            }
            body.truncate(n);
            Ok(Reply::Bulk(Some(body)))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let n = n as usize;
            if n > MAX_ARRAY_ITEMS {
                return Err(RedisError::Protocol(format!("array of {n} items")));
            }
            let mut items = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                items.push(read_reply_at(r, depth + 1)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(RedisError::Protocol(format!(
            "unexpected reply type byte {other:#x}"
        ))),
    }
}

/// The rustls client configuration for `tls` (built once per thread).
pub fn tls_config(
    tls: &crate::snapshot::RedisTls,
) -> Result<std::sync::Arc<rustls::ClientConfig>, RedisError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in &tls.ca_certs {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| RedisError::Protocol(format!("CA certificate: {e}")))?;
    }
    let provider = std::sync::Arc::new(crate::crypto::provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RedisError::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

pub struct Connection {
    io: BufReader<DeadlineStream>,
    buf: Vec<u8>,
    /// The longest one round trip (command and whole reply) may take.
    timeout: Duration,
}

impl Connection {
    /// Connects (with TLS when `tls` is given), authenticates and selects
    /// the database, each step within `spec.timeout`.
    pub fn open(
        spec: &RedisSpec,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, RedisError> {
        let timeout = spec.timeout.max(Duration::from_millis(1));
        let tls = match (tls, &spec.tls) {
            (Some(config), Some(spec_tls)) => Some(crate::blocking::TlsTo {
                config,
                name: rustls::pki_types::ServerName::try_from(spec_tls.server_name.clone())
                    .map_err(|e| RedisError::Protocol(format!("server name: {e}")))?,
            }),
            _ => None,
        };
        let stream = DeadlineStream::connect(spec.address.to_socket_addrs()?, timeout, tls)?;
        let mut conn = Connection {
            io: BufReader::new(stream),
            buf: Vec::new(),
            timeout,
        };
        if let Some(password) = &spec.password {
            let reply = match &spec.username {
                Some(user) => conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])?,
                None => conn.call(&[b"AUTH", password.as_bytes()])?,
            };
            expect_ok(reply)?;
        }
        if spec.database != 0 {
            let db = spec.database.to_string();
            expect_ok(conn.call(&[b"SELECT", db.as_bytes()])?)?;
        }
        Ok(conn)
    }

    /// One command, one reply. An error reply is returned as `Reply::Error`.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.buf.clear();
        encode(&mut self.buf, args);
        let stream = self.io.get_mut();
        stream.deadline = Some(std::time::Instant::now() + self.timeout);
        stream.write_all(&self.buf)?;
        stream.flush()?;
        let reply = read_reply(&mut self.io);
        self.io.get_mut().deadline = None;
        reply
    }

    /// Subscribes to `channel` (the connection then only receives its
    /// messages: `next_message`).
    pub fn subscribe(&mut self, channel: &[u8]) -> Result<(), RedisError> {
        match self.call(&[b"SUBSCRIBE", channel])? {
            Reply::Array(Some(parts))
                if parts.first() == Some(&Reply::Bulk(Some(b"subscribe".to_vec()))) =>
            {
                Ok(())
            }
            Reply::Error(e) => Err(RedisError::Server(e)),
            other => Err(RedisError::Protocol(format!(
                "SUBSCRIBE answered {other:?}"
            ))),
        }
    }

    /// The next message published to a subscribed channel, waiting at
    /// most `wait` for it to start arriving (`None`: nothing yet).
    pub fn next_message(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, RedisError> {
        self.io.get_mut().deadline = Some(std::time::Instant::now() + wait);
        match self.io.fill_buf() {
            Ok([]) => return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                self.io.get_mut().deadline = None;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        // Started: the rest of it within the usual round trip.
        self.io.get_mut().deadline = Some(std::time::Instant::now() + self.timeout);
        let reply = read_reply(&mut self.io);
        self.io.get_mut().deadline = None;
        match reply? {
            Reply::Array(Some(mut parts))
                if parts.len() == 3 && parts[0] == Reply::Bulk(Some(b"message".to_vec())) =>
            {
                match parts.pop() {
                    Some(Reply::Bulk(Some(payload))) => Ok(Some(payload)),
                    other => Err(RedisError::Protocol(format!("message payload {other:?}"))),
                }
            }
            other => Err(RedisError::Protocol(format!(
                "expected a message, got {other:?}"
            ))),
        }
    }

    /// Runs `script` by its SHA-1, loading it when the server lacks it.
    pub fn eval(&mut self, script: &Script, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut call = Vec::with_capacity(args.len() + 2);
        call.push(&b"EVALSHA"[..]);
        call.push(script.sha.as_bytes());
        call.extend_from_slice(args);
        match self.call(&call)? {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                call[0] = b"EVAL";
                call[1] = script.source.as_bytes();
                match self.call(&call)? {
                    Reply::Error(e) => Err(RedisError::Server(e)),
                    reply => Ok(reply),
                }
            }
            Reply::Error(e) => Err(RedisError::Server(e)),
            reply => Ok(reply),
        }
    }
}

fn expect_ok(reply: Reply) -> Result<(), RedisError> {
    match reply {
        Reply::Status(_) => Ok(()),
        Reply::Error(e) => Err(RedisError::Server(e)),
        other => Err(RedisError::Protocol(format!("expected OK, got {other:?}"))),
    }
}

/// A Lua script and its SHA-1 (what EVALSHA names it by).
pub struct Script {
    pub source: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(source: &'static str) -> Script {
        Script {
            source,
            sha: sha1_hex(source.as_bytes()),
        }
    }
}

/// SHA-1, only to name scripts for EVALSHA (ring's, already linked
/// through rustls).
fn sha1_hex(data: &[u8]) -> String {
    crate::crypto::hex_digest(&crate::crypto::digest::SHA1_FOR_LEGACY_USE_ONLY, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_matches_known_digests() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            sha1_hex(&[b'a'; 1000]),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn replies_parse_and_bad_ones_are_refused() {
        let mut input: &[u8] = b"*3\r\n:5\r\n$3\r\nabc\r\n$-1\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Reply::Array(Some(vec![
                Reply::Integer(5),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None)
            ]))
        );
        let mut err: &[u8] = b"-NOSCRIPT No matching script\r\n";
        assert!(
            matches!(read_reply(&mut err).unwrap(), Reply::Error(e) if e.starts_with("NOSCRIPT"))
        );
        for bad in [
            &b"\r\n"[..],
            b"\r\n*1\r\n",
            b"?x\r\n",
            b":12",
            b"$99999999999\r\n",
            b":abc\r\n",
            b"$3\r\nabcXY",
            b"$3\r\nab",
        ] {
            let mut r = bad;
            assert!(read_reply(&mut r).is_err(), "{bad:?}");
        }
        // Bounds: nesting (no stack overflow), line length, array claims.
        let mut deep = b"*1\r\n".repeat(100_000);
        deep.extend_from_slice(b":1\r\n");
        assert!(
            matches!(read_reply(&mut &deep[..]), Err(RedisError::Protocol(m)) if m.contains("nested"))
        );
        let mut long = b"+".to_vec();
        long.resize(10 * MAX_LINE, b'a');
        long.extend_from_slice(b"\r\n");
        assert!(
            matches!(read_reply(&mut &long[..]), Err(RedisError::Protocol(m)) if m.contains("too long"))
        );
        let mut nested_ok: &[u8] = b"*1\r\n*1\r\n:7\r\n";
        assert_eq!(
            read_reply(&mut nested_ok).unwrap(),
            Reply::Array(Some(vec![Reply::Array(Some(vec![Reply::Integer(7)]))]))
        );
        // A claimed huge array with nothing behind it fails without
        // reserving memory for it.
        assert!(read_reply(&mut &b"*1000000\r\n"[..]).is_err());
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
