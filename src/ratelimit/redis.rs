//! [cold] A minimal Redis client for cluster-scope limits: RESP2 over one
//! blocking TCP (or rustls TLS) connection with timeouts, AUTH and SELECT, and scripts run
//! by EVALSHA (loaded on first NOSCRIPT). Used only by the cluster thread,
//! never on the request path. Written here rather than taken from a crate
//! because ringgate needs four commands, blocking I/O with hard deadlines
//! and no async runtime of its own — the popular clients bring tokio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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

/// Writes one command as a RESP array of bulk strings.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Longest bulk string or array accepted from the server (a guard against
/// a confused or hostile peer).
const MAX_REPLY_LEN: usize = 64 << 20;

pub fn read_reply(r: &mut impl BufRead) -> Result<Reply, RedisError> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(RedisError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol("reply line without CRLF".into()));
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
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)?;
            body.truncate(n);
            Ok(Reply::Bulk(Some(body)))
        }
        b'*' => {
            let n = number()?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let n = n as usize;
            if n > MAX_REPLY_LEN / 16 {
                return Err(RedisError::Protocol(format!("array of {n} items")));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(RedisError::Protocol(format!(
            "unexpected reply type byte {other:#x}"
        ))),
    }
}

/// The connection's byte stream: plain TCP, or TLS over it (rustls,
/// blocking; the socket's timeouts bound every read and write).
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
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
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RedisError::Protocol(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

pub struct Connection {
    io: BufReader<Stream>,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects (with TLS when `tls` is given), authenticates and selects
    /// the database, each step within `spec.timeout`.
    pub fn open(
        spec: &RedisSpec,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, RedisError> {
        let timeout = spec.timeout.max(Duration::from_millis(1));
        let mut last = None;
        let mut stream = None;
        for addr in spec.address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            RedisError::Io(last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
        })?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let stream = match (tls, &spec.tls) {
            (Some(config), Some(spec_tls)) => {
                let name = rustls::pki_types::ServerName::try_from(spec_tls.server_name.clone())
                    .map_err(|e| RedisError::Protocol(format!("server name: {e}")))?;
                let session = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| RedisError::Protocol(format!("TLS: {e}")))?;
                let mut tls = rustls::StreamOwned::new(session, stream);
                // Handshake now, so a certificate problem shows as such.
                while tls.conn.is_handshaking() {
                    tls.conn
                        .complete_io(&mut tls.sock)
                        .map_err(RedisError::Io)?;
                }
                Stream::Tls(Box::new(tls))
            }
            _ => Stream::Plain(stream),
        };
        let mut conn = Connection {
            io: BufReader::new(stream),
            buf: Vec::new(),
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
        stream.write_all(&self.buf)?;
        stream.flush()?;
        read_reply(&mut self.io)
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

/// SHA-1 (FIPS 180-4), only to name scripts for EVALSHA.
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
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
        for bad in [&b"?x\r\n"[..], b":12", b"$99999999999\r\n", b":abc\r\n"] {
            let mut r = bad;
            assert!(read_reply(&mut r).is_err(), "{bad:?}");
        }
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
