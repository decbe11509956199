//! [warm] Handshakes: rustls's unbuffered connection driven over the
//! connection's own socket and buffers, then handed to `TlsSession`.
//!
//! The server side first reads the ClientHello with rustls's `Acceptor` to
//! learn the SNI, picks the site and its policy's `ServerConfig`
//! (`listener`), then replays the same bytes into an unbuffered connection
//! built on that config. Application data the client sends right after its
//! Finished (often in the same packet) is decrypted by rustls and returned
//! with the session, so nothing is lost at the hand-over.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{HandshakeKind, ProtocolVersion};

use super::listener::ListenerTls;
use super::session::{Kernel, TlsError, TlsSession};

/// Room for a ClientHello in one read (post-quantum key shares make them
/// about 1.5 KiB; a few KiB more arrive only with many extensions).
const HELLO_READ: usize = 4 * 1024;

/// Why a handshake did not finish. Every one closes the connection.
#[derive(Debug)]
pub enum HandshakeError {
    TimedOut,
    /// The peer closed (or reset) the connection.
    Closed,
    /// Refused by TLS (bad or unacceptable hello, no certificate for the
    /// name, untrusted client certificate…); an alert was sent.
    Tls(rustls::Error),
    /// The session could not take over after the handshake.
    Session(TlsError),
}

/// Handshake failure reasons, as metric labels (`HandshakeError::index`).
pub const HANDSHAKE_FAILURES: [&str; 10] = [
    "timeout",
    "closed",
    "no_client_certificate",
    "bad_client_certificate",
    "no_alpn_match",
    "incompatible",
    "no_certificate",
    "alert_received",
    "protocol",
    "session",
];

impl HandshakeError {
    /// Index of this failure's reason in `HANDSHAKE_FAILURES`.
    pub fn index(&self) -> usize {
        match self {
            HandshakeError::TimedOut => 0,
            HandshakeError::Closed => 1,
            HandshakeError::Tls(rustls::Error::NoCertificatesPresented) => 2,
            HandshakeError::Tls(rustls::Error::InvalidCertificate(_)) => 3,
            HandshakeError::Tls(rustls::Error::NoApplicationProtocol) => 4,
            HandshakeError::Tls(rustls::Error::PeerIncompatible(_)) => 5,
            HandshakeError::Tls(rustls::Error::General(_)) => 6,
            HandshakeError::Tls(rustls::Error::AlertReceived(_)) => 7,
            HandshakeError::Tls(_) => 8,
            HandshakeError::Session(_) => 9,
        }
    }

    pub fn reason(&self) -> &'static str {
        HANDSHAKE_FAILURES[self.index()]
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::TimedOut => f.write_str("handshake timed out"),
            HandshakeError::Closed => f.write_str("peer closed during the handshake"),
            HandshakeError::Tls(e) => write!(f, "{e}"),
            HandshakeError::Session(e) => write!(f, "{e}"),
        }
    }
}

/// Paces a handshake's CPU work: `busy` before rustls processes what
/// arrived (may wait for a turn), `idle` while the handshake waits on the
/// network. A connection that sends nothing, or stalls between flights,
/// holds no turn.
pub trait Pacer {
    fn busy(&mut self) -> impl std::future::Future<Output = ()>;
    fn idle(&mut self);
}

/// No pacing (upstream handshakes: the worker started them itself).
pub struct Unpaced;

impl Pacer for Unpaced {
    async fn busy(&mut self) {}
    fn idle(&mut self) {}
}

/// What a finished server handshake established.
pub struct Accepted {
    pub session: TlsSession,
    /// The site the SNI selected (`ListenerTls::covers`).
    pub site: Option<usize>,
    pub resumed: bool,
    pub version: ProtocolVersion,
    /// The client's verified certificate chain (mTLS), leaf first.
    pub client_chain: Option<Vec<CertificateDer<'static>>>,
}

/// Runs the server side of a handshake on `stream`. Plaintext the client
/// sent after its Finished is appended to `early`.
pub async fn accept(
    stream: &mut TcpStream,
    tls: &ListenerTls,
    early: &mut BytesMut,
    deadline: Instant,
    pacer: &mut impl Pacer,
) -> Result<Accepted, HandshakeError> {
    let mut incoming = BytesMut::with_capacity(HELLO_READ);
    let mut outgoing = BytesMut::new();

    // 1. The ClientHello, to learn which server the client wants.
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    let hello = loop {
        read_some(stream, &mut incoming, HELLO_READ, deadline).await?;
        while fed < incoming.len() {
            match acceptor.read_tls(&mut &incoming[fed..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => fed += n,
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) if fed < incoming.len() => {
                // rustls would not take more bytes before the hello ended:
                // not a TLS client.
                return Err(HandshakeError::Tls(rustls::Error::General(
                    "ClientHello too large".into(),
                )));
            }
            Ok(None) => continue,
            Err((e, mut alert)) => {
                let mut bytes = Vec::new();
                while matches!(alert.write(&mut bytes), Ok(n) if n > 0) {}
                outgoing.extend_from_slice(&bytes);
                let _ = write_out(stream, &mut outgoing, deadline).await;
                return Err(HandshakeError::Tls(e));
            }
        }
    };
    let site = tls.site_for(hello.client_hello().server_name());
    let config = tls.config_for(site, super::client_hello::offers_resumption(&incoming));
    drop(hello);

    // 2. The handshake proper, replaying the hello into the chosen config.
    pacer.busy().await;
    let mut conn = UnbufferedServerConnection::new(config).map_err(HandshakeError::Tls)?;
    drive(
        stream,
        &mut ServerSide(&mut conn),
        &mut incoming,
        &mut outgoing,
        early,
        deadline,
        pacer,
    )
    .await?;
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let client_chain = conn.peer_certificates().map(|c| c.to_vec());
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(HandshakeError::Tls)?;
    let version = kernel.protocol_version();
    // The server's last flight goes now: in TLS 1.2 it holds the Finished
    // the client waits for; in TLS 1.3 only session tickets, but holding
    // them back until the response also holds back the ACK of the client's
    // Finished, and a client with Nagle on then waits for a delayed ACK
    // (40 ms) before it sends its request.
    write_out(stream, &mut outgoing, deadline).await?;
    let session = TlsSession::new(Kernel::Server(kernel), secrets, settled(incoming), outgoing)
        .map_err(HandshakeError::Session)?;
    Ok(Accepted {
        session,
        site,
        resumed,
        version,
        client_chain,
    })
}

/// Runs the client side of a handshake toward an upstream.
pub async fn connect(
    stream: &mut TcpStream,
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    deadline: Instant,
) -> Result<(TlsSession, bool), HandshakeError> {
    let mut conn = rustls::client::UnbufferedClientConnection::new(config, name)
        .map_err(HandshakeError::Tls)?;
    let mut incoming = BytesMut::with_capacity(HELLO_READ);
    let mut outgoing = BytesMut::new();
    // A server sends nothing before our Finished, so nothing can come early.
    let mut early = BytesMut::new();
    drive(
        stream,
        &mut ClientSide(&mut conn),
        &mut incoming,
        &mut outgoing,
        &mut early,
        deadline,
        &mut Unpaced,
    )
    .await?;
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(HandshakeError::Tls)?;
    // The client's Finished goes out with the request (the server reads
    // them in order), one write instead of two.
    let session = TlsSession::new(Kernel::Client(kernel), secrets, settled(incoming), outgoing)
        .map_err(HandshakeError::Session)?;
    Ok((session, resumed))
}

/// The handshake's read buffer, kept for the session only if it still
/// holds bytes: an idle connection then holds no read buffer of its own
/// until its next read (which takes a small one).
fn settled(incoming: BytesMut) -> BytesMut {
    if incoming.is_empty() {
        BytesMut::new()
    } else {
        incoming
    }
}

/// The one operation the driver needs from either side of rustls.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

struct ServerSide<'a>(&'a mut UnbufferedServerConnection);
struct ClientSide<'a>(&'a mut rustls::client::UnbufferedClientConnection);

impl Unbuffered for ServerSide<'_> {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.0.process_tls_records(incoming)
    }
}

impl Unbuffered for ClientSide<'_> {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.0.process_tls_records(incoming)
    }
}

enum Next {
    Process,
    Send,
    SendAndRead,
    Done,
    Fail(HandshakeError),
}

/// Steps rustls until the handshake is done (it offers `WriteTraffic`),
/// sending what it encodes and reading what it waits for. Records encoded
/// after the peer's last flight are left in `outgoing`.
async fn drive<C: Unbuffered>(
    stream: &mut TcpStream,
    conn: &mut C,
    incoming: &mut BytesMut,
    outgoing: &mut BytesMut,
    early: &mut BytesMut,
    deadline: Instant,
    pacer: &mut impl Pacer,
) -> Result<(), HandshakeError> {
    let mut failed: Option<rustls::Error> = None;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process(&mut incoming[..]);
        let next = match state {
            // After an error rustls still offers the alert it queued; send
            // it, then give up.
            Err(e) => match failed.take() {
                Some(first) => Next::Fail(HandshakeError::Tls(first)),
                None => {
                    failed = Some(e);
                    Next::Process
                }
            },
            Ok(ConnectionState::EncodeTlsData(mut encoder)) => {
                let mut room = 2048;
                loop {
                    let start = outgoing.len();
                    outgoing.resize(start + room, 0);
                    match encoder.encode(&mut outgoing[start..]) {
                        Ok(n) => {
                            outgoing.truncate(start + n);
                            break Next::Process;
                        }
                        Err(EncodeError::InsufficientSize(need)) => {
                            outgoing.truncate(start);
                            room = need.required_size;
                        }
                        Err(EncodeError::AlreadyEncoded) => {
                            outgoing.truncate(start);
                            break Next::Process;
                        }
                    }
                }
            }
            // Records pile up until rustls waits for the peer (or the
            // handshake ends): one write per flight.
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                if failed.is_some() {
                    Next::Send
                } else {
                    Next::Process
                }
            }
            Ok(ConnectionState::BlockedHandshake) => Next::SendAndRead,
            Ok(ConnectionState::WriteTraffic(_)) => Next::Done,
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            early.extend_from_slice(record.payload);
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                Next::Process
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                Next::Fail(HandshakeError::Closed)
            }
            // 0-RTT is not enabled; anything newer is not understood.
            Ok(_) => Next::Fail(HandshakeError::Tls(rustls::Error::General(
                "unexpected handshake state".into(),
            ))),
        };
        incoming.advance(discard);
        if failed.is_some() && matches!(next, Next::SendAndRead | Next::Done) {
            let _ = write_out(stream, outgoing, deadline).await;
            return Err(HandshakeError::Tls(
                failed.take().unwrap_or(rustls::Error::HandshakeNotComplete),
            ));
        }
        match next {
            Next::Process => {}
            Next::Send => write_out(stream, outgoing, deadline).await?,
            Next::SendAndRead => {
                write_out(stream, outgoing, deadline).await?;
                pacer.idle();
                read_some(stream, incoming, HELLO_READ, deadline).await?;
                pacer.busy().await;
            }
            // What is left (a TLS 1.3 server's tickets, a client's
            // Finished) may wait for the first write: the caller decides.
            Next::Done => return Ok(()),
            Next::Fail(e) => {
                let _ = write_out(stream, outgoing, deadline).await;
                return Err(e);
            }
        }
    }
}

/// Reads what the peer sends next into `buf`'s spare room, by `deadline`.
async fn read_some(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    want: usize,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    if buf.capacity() - buf.len() < want / 4 {
        buf.reserve(want);
    }
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    let limit = deadline.saturating_duration_since(Instant::now());
    let read = stream.read(monoio::buf::IoBufMut::slice_mut(owned, len..cap));
    match monoio::time::timeout(limit, read).await {
        Err(_) => Err(HandshakeError::TimedOut),
        Ok((result, slice)) => {
            *buf = slice.into_inner();
            match result {
                Ok(0) | Err(_) => Err(HandshakeError::Closed),
                Ok(_) => Ok(()),
            }
        }
    }
}

/// Writes and clears `outgoing`, by `deadline`.
async fn write_out(
    stream: &mut TcpStream,
    outgoing: &mut BytesMut,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    if outgoing.is_empty() {
        return Ok(());
    }
    // A flight nearly always fits the empty socket buffer: send it now
    // rather than after the worker's other ready tasks (`send_now`).
    let sent = crate::transport::send_now(stream, outgoing).map_err(|_| HandshakeError::Closed)?;
    if sent == outgoing.len() {
        outgoing.clear(); // capacity kept for the session
        return Ok(());
    }
    outgoing.advance(sent);
    let owned = std::mem::take(outgoing);
    let limit = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(limit, stream.write_all(owned)).await {
        Err(_) => Err(HandshakeError::TimedOut),
        Ok((result, mut owned)) => {
            owned.clear();
            *outgoing = owned;
            result.map(|_| ()).map_err(|e: io::Error| {
                let _ = e;
                HandshakeError::Closed
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Duration;

    /// The regression this guards: on io_uring a queued write reaches the
    /// kernel only when the worker runs out of ready tasks, so a flight
    /// written after a signature waited for every other handshake's
    /// signature too. Here the worker thread blocks right after writing;
    /// the peer must still receive the flight.
    #[test]
    fn a_flight_is_on_the_wire_before_the_worker_moves_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (received_tx, received_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut peer = std::net::TcpStream::connect(addr).expect("connect");
            let mut got = [0u8; 6];
            peer.read_exact(&mut got).expect("read");
            received_tx.send(got).expect("report");
            // Hold the connection until the worker side is done.
            let _ = peer.read(&mut [0u8; 1]);
        });
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        let run = |ours: std::net::TcpStream| async move {
            let mut stream = TcpStream::from_std(ours).expect("register");
            // The handshake task writes its flight and finishes; another
            // ready task (standing for the next handshake's signature)
            // then holds the thread without yielding. A write merely
            // queued in the ring would reach the kernel only after it.
            let handshake = monoio::spawn(async move {
                let mut flight = BytesMut::from(&b"flight"[..]);
                let deadline = Instant::now() + Duration::from_secs(10);
                write_out(&mut stream, &mut flight, deadline)
                    .await
                    .map(|()| stream)
            });
            let busy =
                monoio::spawn(async move { received_rx.recv_timeout(Duration::from_secs(20)) });
            let stream = handshake.await.expect("write");
            let got = busy.await;
            drop(stream);
            got
        };
        let got = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .uring_builder({
                let mut b = io_uring::IoUring::builder();
                b.setup_coop_taskrun().setup_single_issuer();
                b
            })
            .build()
        {
            Ok(mut rt) => rt.block_on(run(ours)),
            // No io_uring here: the epoll driver writes at once anyway.
            Err(_) => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("runtime")
                .block_on(run(ours)),
        };
        assert_eq!(&got.expect("the flight never reached the peer"), b"flight");
        reader.join().expect("reader");
    }
}
