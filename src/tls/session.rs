//! [hot] An established TLS session: the record keys of both directions,
//! the ciphertext buffers, and the few post-handshake messages TLS 1.3
//! still exchanges (KeyUpdate both ways; NewSessionTicket toward a client).
//!
//! No I/O here: `transport` reads ciphertext into `incoming` and writes
//! `outgoing`; this module turns one into plaintext and plaintext into the
//! other, so every rule below is unit-tested without a socket.

use bytes::{Buf, BytesMut};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ExtractedSecrets, ProtocolVersion};

use super::record::{Kind, MAX_PLAINTEXT, RecordError, RecordKey, record_len};

/// The rustls side of a session after the handshake: what derives the next
/// traffic secrets (and, toward an upstream, stores its tickets).
pub enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn version(&self) -> ProtocolVersion {
        match self {
            Kernel::Server(k) => k.protocol_version(),
            Kernel::Client(k) => k.protocol_version(),
        }
    }

    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Kernel::Server(k) => k.negotiated_cipher_suite(),
            Kernel::Client(k) => k.negotiated_cipher_suite(),
        };
        match suite {
            rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
            rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        }
    }

    fn next_rx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_rx_secret(),
            Kernel::Client(k) => k.update_rx_secret(),
        }
    }

    fn next_tx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Server(k) => k.update_tx_secret(),
            Kernel::Client(k) => k.update_tx_secret(),
        }
    }
}

/// Why a session ended badly. Every one closes the connection.
#[derive(Debug)]
pub enum TlsError {
    Record(RecordError),
    /// A message TLS does not allow here (renegotiation, a stray
    /// ChangeCipherSpec, a malformed post-handshake message).
    Protocol(&'static str),
    /// The peer sent a fatal alert (its description code).
    Alert(u8),
    Rustls(rustls::Error),
}

impl From<RecordError> for TlsError {
    fn from(e: RecordError) -> Self {
        TlsError::Record(e)
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Record(e) => write!(f, "TLS record: {e:?}"),
            TlsError::Protocol(what) => write!(f, "TLS protocol: {what}"),
            TlsError::Alert(code) => write!(f, "TLS alert {code} from peer"),
            TlsError::Rustls(e) => write!(f, "TLS: {e}"),
        }
    }
}

impl From<TlsError> for std::io::Error {
    fn from(e: TlsError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
    }
}

const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_WARNING: u8 = 1;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
/// A KeyUpdate asking for nothing back (RFC 8446 §4.6.3).
const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
/// Keys are refreshed (TLS 1.3) or the connection closed (TLS 1.2) this
/// many records before the suite's confidentiality limit.
const LIMIT_MARGIN: u64 = 1 << 16;

pub struct TlsSession {
    kernel: Kernel,
    version: ProtocolVersion,
    rx: RecordKey,
    tx: RecordKey,
    /// Seal no more records than this with one key.
    tx_limit: u64,
    /// TLS 1.3: a KeyUpdate goes out before the next record (the peer asked
    /// for one, or our key is near its limit).
    update_tx: bool,
    peer_closed: bool,
    /// Ciphertext received and not yet opened (at most a partial record
    /// after `open_records`).
    pub incoming: BytesMut,
    /// Sealed records waiting to be written.
    pub outgoing: BytesMut,
}

impl TlsSession {
    /// Takes over from rustls after the handshake: `incoming` may already
    /// hold records the peer sent after its last handshake message.
    pub fn new(
        kernel: Kernel,
        secrets: ExtractedSecrets,
        incoming: BytesMut,
        outgoing: BytesMut,
    ) -> Result<TlsSession, TlsError> {
        let version = kernel.version();
        let (rx_seq, rx) = secrets.rx;
        let (tx_seq, tx) = secrets.tx;
        let unsupported = TlsError::Protocol("negotiated suite has no record layer here");
        let rx = RecordKey::new(version, rx_seq, rx).ok_or(unsupported)?;
        let tx = RecordKey::new(version, tx_seq, tx).ok_or(TlsError::Protocol(
            "negotiated suite has no record layer here",
        ))?;
        let tx_limit = kernel.confidentiality_limit().saturating_sub(LIMIT_MARGIN);
        Ok(TlsSession {
            kernel,
            version,
            rx,
            tx,
            tx_limit,
            update_tx: false,
            peer_closed: false,
            incoming,
            outgoing,
        })
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The peer sent close_notify: no more data will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Bytes still missing from the partial record in `incoming` (0 when
    /// none has started), so a read can make room for all of it.
    pub fn pending_need(&self) -> usize {
        match self.incoming.get(..super::record::HEADER) {
            Some(h) => {
                let len = super::record::HEADER + u16::from_be_bytes([h[3], h[4]]) as usize;
                len.saturating_sub(self.incoming.len())
            }
            None => 0,
        }
    }

    /// Opens every whole record in `incoming`, appending application data
    /// to `dst`; returns how many bytes were appended. A partial record is
    /// left for the next read.
    pub fn open_records(&mut self, dst: &mut BytesMut) -> Result<usize, TlsError> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let result = self.open_from(&mut incoming, dst);
        self.incoming = incoming;
        result
    }

    fn open_from(
        &mut self,
        incoming: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<usize, TlsError> {
        let mut appended = 0;
        while !self.peer_closed {
            let Some(len) = record_len(incoming, self.rx.max_record())? else {
                break;
            };
            let (kind, range) = self.rx.open(&mut incoming[..len])?;
            let payload = &incoming[range];
            match kind {
                Kind::ApplicationData => {
                    dst.extend_from_slice(payload);
                    appended += payload.len();
                }
                Kind::Alert => self.on_alert(payload)?,
                Kind::Handshake => self.on_handshake(payload)?,
                Kind::ChangeCipherSpec => {
                    return Err(TlsError::Protocol("ChangeCipherSpec after the handshake"));
                }
            }
            incoming.advance(len);
        }
        Ok(appended)
    }

    fn on_alert(&mut self, payload: &[u8]) -> Result<(), TlsError> {
        let &[level, description] = payload else {
            return Err(TlsError::Protocol("malformed alert"));
        };
        match description {
            ALERT_CLOSE_NOTIFY => {
                self.peer_closed = true;
                Ok(())
            }
            // Precedes a close_notify (RFC 8446 §6.1).
            ALERT_USER_CANCELED => Ok(()),
            // TLS 1.2 warnings are not fatal (RFC 5246 §7.2.2); in TLS 1.3
            // every other alert is (RFC 8446 §6).
            _ if level == ALERT_WARNING && self.version == ProtocolVersion::TLSv1_2 => Ok(()),
            _ => Err(TlsError::Alert(description)),
        }
    }

    /// TLS 1.3 post-handshake messages. A handshake message split across
    /// records is refused: no peer splits the few bytes these take.
    fn on_handshake(&mut self, mut payload: &[u8]) -> Result<(), TlsError> {
        if self.version != ProtocolVersion::TLSv1_3 {
            return Err(TlsError::Protocol("renegotiation is not supported"));
        }
        while !payload.is_empty() {
            let &[typ, a, b, c, ref rest @ ..] = payload else {
                return Err(TlsError::Protocol("truncated handshake message"));
            };
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            if rest.len() < len {
                return Err(TlsError::Protocol("handshake message split across records"));
            }
            let (body, rest) = rest.split_at(len);
            match (typ, &mut self.kernel) {
                (HANDSHAKE_KEY_UPDATE, _) => {
                    // The record must end with it (RFC 8446 §5.1): what
                    // follows is protected by the next key.
                    if !rest.is_empty() {
                        return Err(TlsError::Protocol("data after KeyUpdate in its record"));
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(TlsError::Protocol("malformed KeyUpdate")),
                    };
                    let (seq, secrets) = self.kernel.next_rx()?;
                    self.rx = RecordKey::new(self.version, seq, secrets)
                        .ok_or(TlsError::Protocol("key update changed the suite"))?;
                    self.update_tx |= requested;
                }
                (HANDSHAKE_NEW_SESSION_TICKET, Kernel::Client(kernel)) => {
                    kernel.handle_new_session_ticket(body)?;
                }
                _ => return Err(TlsError::Protocol("unexpected post-handshake message")),
            }
            payload = rest;
        }
        Ok(())
    }

    /// Seals `plaintext` into `outgoing` as records of at most 16 KiB.
    pub fn seal(&mut self, mut plaintext: &[u8]) -> Result<(), TlsError> {
        while !plaintext.is_empty() {
            self.before_record()?;
            let n = plaintext.len().min(MAX_PLAINTEXT);
            self.tx
                .seal(Kind::ApplicationData, &plaintext[..n], &mut self.outgoing)?;
            plaintext = &plaintext[n..];
        }
        Ok(())
    }

    /// Sends a pending KeyUpdate, and keeps the key within its limit.
    fn before_record(&mut self) -> Result<(), TlsError> {
        if self.tx.sequence() >= self.tx_limit {
            if self.version != ProtocolVersion::TLSv1_3 {
                return Err(TlsError::Record(RecordError::SequenceExhausted));
            }
            self.update_tx = true;
        }
        if self.update_tx {
            self.tx.seal(
                Kind::Handshake,
                &KEY_UPDATE_NOT_REQUESTED,
                &mut self.outgoing,
            )?;
            let (seq, secrets) = self.kernel.next_tx()?;
            self.tx = RecordKey::new(self.version, seq, secrets)
                .ok_or(TlsError::Protocol("key update changed the suite"))?;
            self.update_tx = false;
        }
        Ok(())
    }

    /// Seals a close_notify alert into `outgoing` (best effort: a session
    /// past its key limit just closes).
    pub fn seal_close_notify(&mut self) {
        if self.before_record().is_ok() {
            let _ = self.tx.seal(
                Kind::Alert,
                &[ALERT_WARNING, ALERT_CLOSE_NOTIFY],
                &mut self.outgoing,
            );
        }
    }
}
