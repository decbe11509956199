//! [cold] Blocking client connections for the threads that talk to other
//! servers off the request path (the Redis cluster thread, the JWKS
//! fetcher): plain TCP or rustls TLS over it, where every read and write is
//! bounded by the deadline of the exchange in progress, not just by a
//! per-read timeout (a server trickling a byte at a time could otherwise
//! hold a thread for ever). Workers never use this: their sockets are
//! monoio's (`transport`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connected stream with an optional deadline.
pub struct DeadlineStream {
    kind: Kind,
    /// When set, no read or write may end later than this.
    pub deadline: Option<Instant>,
}

enum Kind {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// TLS for a connection: the client configuration and the name the
/// server's certificate must carry (also sent as SNI).
pub struct TlsTo<'a> {
    pub config: &'a Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

impl DeadlineStream {
    /// Connects to the first of `addrs` that answers within `timeout`
    /// each, then (with `tls`) completes the handshake before the same
    /// timeout, so a certificate problem shows as such and not as a later
    /// I/O error.
    pub fn connect(
        addrs: impl IntoIterator<Item = SocketAddr>,
        timeout: Duration,
        tls: Option<TlsTo<'_>>,
    ) -> std::io::Result<DeadlineStream> {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut last = None;
        let mut connected = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match connected {
            Some(s) => s,
            None => return Err(last.unwrap_or_else(|| std::io::ErrorKind::NotFound.into())),
        };
        stream.set_nodelay(true)?;
        let kind = match tls {
            None => Kind::Plain(stream),
            Some(tls) => {
                let deadline = Instant::now() + timeout;
                let session = rustls::ClientConnection::new(tls.config.clone(), tls.name)
                    .map_err(std::io::Error::other)?;
                let mut owned = rustls::StreamOwned::new(session, stream);
                while owned.conn.is_handshaking() {
                    arm(&owned.sock, deadline)?;
                    owned.conn.complete_io(&mut owned.sock)?;
                }
                Kind::Tls(Box::new(owned))
            }
        };
        Ok(DeadlineStream {
            kind,
            deadline: None,
        })
    }

    /// Sets the socket's timeouts to what is left before the deadline.
    fn arm(&mut self) -> std::io::Result<()> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        match &self.kind {
            Kind::Plain(s) => arm(s, deadline),
            Kind::Tls(s) => arm(&s.sock, deadline),
        }
    }
}

/// Sets `socket`'s timeouts to what is left before `deadline`.
fn arm(socket: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    socket.set_read_timeout(Some(left))?;
    socket.set_write_timeout(Some(left))
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        match &mut self.kind {
            Kind::Plain(s) => s.read(buf),
            Kind::Tls(s) => s.read(buf),
        }
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        match &mut self.kind {
            Kind::Plain(s) => s.write(buf),
            Kind::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.arm()?;
        match &mut self.kind {
            Kind::Plain(s) => s.flush(),
            Kind::Tls(s) => s.flush(),
        }
    }
}
