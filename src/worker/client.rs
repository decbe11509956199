//! [hot] The client side of a connection and what one exchange on it
//! amounted to: the types every phase reads, so `conn` (the loop), the
//! phases and `forward` share them without importing one another.

use std::net::SocketAddr;

use bytes::BytesMut;

use crate::http::{self, HeaderSpan};

use super::request_id::RequestId;
use crate::transport::{IoVecPair, Transport};

/// The client side of a connection, with its reusable buffers.
pub struct Client {
    pub stream: Transport,
    pub peer: SocketAddr,
    /// The configured address of the listener that accepted it.
    pub listener: SocketAddr,
    /// The peer IP as text, computed once for X-Forwarded-For.
    pub peer_ip: PeerIp,
    pub buf: BytesMut,
    pub out: BytesMut,
    pub headers: Vec<HeaderSpan>,
    /// iovec room for vectored writes, allocated on first use.
    pub iov: Option<IoVecPair>,
    /// What the handshake established, on a TLS connection.
    pub tls: Option<Box<super::tls::ConnTls>>,
}

impl Client {
    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.view().header(name)
    }

    /// The request as the phases read it.
    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            buf: &self.buf,
            headers: &self.headers,
            peer: self.peer,
            peer_ip: self.peer_ip.as_bytes(),
            tls: self.tls.as_deref(),
            consumer: None,
        }
    }
}

/// Who is on the other end of the connection, borrowed field by field
/// from `Client` so that `client.out` can be written meanwhile (header
/// variables read it).
#[derive(Clone, Copy)]
pub struct PeerFacts<'a> {
    pub ip: &'a [u8],
    pub tls: Option<&'a super::tls::ConnTls>,
}

/// `PeerFacts` of a client, usable while its other fields are borrowed.
#[macro_export]
macro_rules! peer_facts {
    ($client:expr) => {
        $crate::worker::client::PeerFacts {
            ip: $client.peer_ip.as_bytes(),
            tls: $client.tls.as_deref(),
        }
    };
}

/// What a phase may read of a request: the head's bytes and header spans,
/// and who sent it. No socket, so phases are unit-tested without one.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub buf: &'a [u8],
    pub headers: &'a [HeaderSpan],
    pub peer: SocketAddr,
    /// The peer IP as text.
    pub peer_ip: &'a [u8],
    /// The connection's TLS facts (`None`: plain HTTP).
    pub tls: Option<&'a super::tls::ConnTls>,
    /// Who the request is from, once the auth phase has decided (`None`:
    /// anonymous, or before it).
    pub consumer: Option<&'a crate::auth::Consumer>,
}

impl<'a> RequestView<'a> {
    /// The first value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &[u8]) -> Option<&'a [u8]> {
        let buf = self.buf;
        self.headers
            .iter()
            .find(|h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(|h| http::trim_ows(h.value.get(buf)))
    }

    /// Every value of header `name`, in order, untrimmed.
    pub fn values(&self, name: &'a [u8]) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.headers
            .iter()
            .filter(move |h| h.name.get(buf).eq_ignore_ascii_case(name))
            .map(move |h| h.value.get(buf))
    }
}

/// An IP address rendered once, stored inline (no allocation per request).
pub struct PeerIp {
    text: [u8; 48],
    len: usize,
}

impl PeerIp {
    pub fn new(addr: &SocketAddr) -> PeerIp {
        use std::io::Write;
        let mut text = [0u8; 48];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = write!(cursor, "{}", addr.ip());
        let len = cursor.position() as usize;
        PeerIp { text, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// What one request/response exchange amounted to, for metrics and logs.
pub struct Exchange {
    pub request_id: RequestId,
    pub route: Option<usize>,
    /// Status sent to the client (0 if none was sent).
    pub status: u16,
    /// Bytes received from the client (head and body).
    pub received: u64,
    /// Bytes sent to the client.
    pub sent: u64,
    /// The endpoint that answered, for proxied requests.
    pub upstream: Option<SocketAddr>,
    /// Request sent upstream → response head, microseconds.
    pub upstream_us: Option<u64>,
    /// The tightest rate-limit decision, reported on the response.
    pub ratelimit: Option<crate::ratelimit::Decision>,
    /// Who the request was from, if it authenticated.
    pub identity: Option<crate::auth::Identity>,
    /// What the route's CORS policy made of the request's `Origin`: the
    /// answer, whatever it is, carries the policy's headers.
    pub cors: Option<crate::policy::cors::CorsMatch>,
    /// The request asks for an upgrade its route tunnels (`Upgrade` and
    /// `Connection: upgrade` go upstream; a 101 opens a tunnel).
    pub upgrade: bool,
    /// The encoding the request negotiated with its route's `compress`
    /// (`None`: no compression on the route, or none the client accepts).
    pub encoding: Option<crate::policy::compress::Encoding>,
}

impl Exchange {
    pub fn new(request_id: RequestId) -> Exchange {
        Exchange {
            request_id,
            route: None,
            status: 0,
            received: 0,
            sent: 0,
            upstream: None,
            upstream_us: None,
            ratelimit: None,
            identity: None,
            cors: None,
            upgrade: false,
            encoding: None,
        }
    }
}
