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
    /// Sealed records waiting to be written (a buffer lent for one write).
    pub outgoing: BytesMut,
    /// Handshake records not yet sent (a TLS 1.3 server's tickets, a
    /// client's Finished): written before the first sealed record.
    pub pending: BytesMut,
}

impl TlsSession {
    /// Takes over from rustls after the handshake: `incoming` may already
    /// hold records the peer sent after its last handshake message, and
    /// `pending` handshake records still to be sent.
    pub fn new(
        kernel: Kernel,
        secrets: ExtractedSecrets,
        incoming: BytesMut,
        pending: BytesMut,
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
            outgoing: BytesMut::new(),
            pending,
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

    /// Moves handshake records still unsent to the front of `outgoing`
    /// (once; the buffer that held them is freed).
    pub fn take_pending(&mut self) {
        if !self.pending.is_empty() {
            self.outgoing.extend_from_slice(&self.pending);
            self.pending = BytesMut::new();
        }
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

#[cfg(test)]
mod tests {
    //! The record layer against a real rustls client: an in-memory
    //! handshake with rustls's unbuffered server (as `handshake` drives
    //! it), then the session takes over and talks to the client.

    use std::io::{Read, Write};
    use std::sync::Arc;

    use bytes::BytesMut;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::server::UnbufferedServerConnection;
    use rustls::unbuffered::{ConnectionState, EncodeError};
    use rustls::{ClientConfig, ClientConnection, ProtocolVersion, ServerConfig};

    use super::{Kernel, TlsError, TlsSession};

    fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["s.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(crate::crypto::provider());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        (Arc::new(client), Arc::new(server))
    }

    /// Runs a handshake in memory; returns the client and the server's
    /// session.
    fn established(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (ClientConnection, TlsSession) {
        let (client_config, server_config) = configs(version);
        let mut client =
            ClientConnection::new(client_config, ServerName::try_from("s.test").unwrap()).unwrap();
        let mut server = UnbufferedServerConnection::new(server_config).unwrap();
        let mut incoming = BytesMut::new();
        loop {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            incoming.extend_from_slice(&wire);
            let mut to_client = Vec::new();
            loop {
                let status = server.process_tls_records(&mut incoming[..]);
                let discard = status.discard;
                let done = match status.state.unwrap() {
                    ConnectionState::EncodeTlsData(mut e) => {
                        let mut out = vec![0u8; 16 * 1024];
                        match e.encode(&mut out) {
                            Ok(n) => to_client.extend_from_slice(&out[..n]),
                            Err(EncodeError::InsufficientSize(_)) => panic!("room"),
                            Err(EncodeError::AlreadyEncoded) => {}
                        }
                        None
                    }
                    ConnectionState::TransmitTlsData(t) => {
                        t.done();
                        None
                    }
                    ConnectionState::BlockedHandshake => Some(false),
                    ConnectionState::WriteTraffic(_) => Some(true),
                    other => panic!("unexpected {other:?}"),
                };
                bytes::Buf::advance(&mut incoming, discard);
                match done {
                    None => continue,
                    Some(finished) => {
                        client.read_tls(&mut &to_client[..]).unwrap();
                        client.process_new_packets().unwrap();
                        if finished && !client.is_handshaking() && !client.wants_write() {
                            let (secrets, kernel) =
                                server.dangerous_into_kernel_connection().unwrap();
                            let session = TlsSession::new(
                                Kernel::Server(kernel),
                                secrets,
                                incoming,
                                BytesMut::new(),
                            )
                            .unwrap();
                            return (client, session);
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Moves what the client has to send into the session's incoming.
    fn client_to_session(client: &mut ClientConnection, session: &mut TlsSession) {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        session.incoming.extend_from_slice(&wire);
    }

    /// Hands the session's sealed records to the client; returns the
    /// plaintext it reads.
    fn session_to_client(session: &mut TlsSession, client: &mut ClientConnection) -> Vec<u8> {
        let wire = std::mem::take(&mut session.outgoing);
        let mut at = 0;
        let mut plain = Vec::new();
        while at < wire.len() {
            at += client.read_tls(&mut &wire[at..]).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut plain);
        }
        plain
    }

    const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];

    #[test]
    fn data_flows_both_ways_in_records_of_at_most_16_kib() {
        for version in VERSIONS {
            let (mut client, mut session) = established(version);
            assert_eq!(session.version(), version.version);
            let request: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
            client.writer().write_all(&request).unwrap();
            client_to_session(&mut client, &mut session);
            let mut got = BytesMut::new();
            // Feed a byte at a time at first: partial records wait.
            let all = std::mem::take(&mut session.incoming);
            session.incoming.extend_from_slice(&all[..3]);
            assert_eq!(session.open_records(&mut got).unwrap(), 0);
            assert!(session.pending_need() == 0, "no header yet");
            session.incoming.extend_from_slice(&all[3..10]);
            assert_eq!(session.open_records(&mut got).unwrap(), 0);
            let record = 5 + u16::from_be_bytes([all[3], all[4]]) as usize;
            assert_eq!(session.pending_need(), record - 10);
            session.incoming.extend_from_slice(&all[10..]);
            assert_eq!(session.open_records(&mut got).unwrap(), request.len());
            assert_eq!(&got[..], &request[..]);
            assert!(session.incoming.is_empty());

            let response = vec![b'r'; 50_000];
            session.seal(&response).unwrap();
            // 16 KiB + 16 KiB + 16 KiB + the rest: four records, each with
            // its header, tag and (1.3) inner type or (1.2 GCM) explicit nonce.
            let overhead = if version.version == ProtocolVersion::TLSv1_3 {
                22
            } else {
                29
            };
            assert_eq!(session.outgoing.len(), response.len() + 4 * overhead);
            assert_eq!(session_to_client(&mut session, &mut client), response);
        }
    }

    #[test]
    fn key_updates_from_the_client_are_followed_and_answered() {
        let (mut client, mut session) = established(&rustls::version::TLS13);
        for round in 0..3u8 {
            client.refresh_traffic_keys().unwrap();
            client.writer().write_all(&[round; 10]).unwrap();
            client_to_session(&mut client, &mut session);
            let mut got = BytesMut::new();
            assert_eq!(session.open_records(&mut got).unwrap(), 10);
            assert_eq!(&got[..], &[round; 10]);
            // The answer starts with our own KeyUpdate; the client (now on
            // its new receive key) must read the data after it.
            session.seal(b"ok").unwrap();
            assert_eq!(session_to_client(&mut session, &mut client), b"ok");
            session.seal(b"again").unwrap();
            assert_eq!(session_to_client(&mut session, &mut client), b"again");
        }
    }

    #[test]
    fn close_notify_both_ways() {
        for version in VERSIONS {
            let (mut client, mut session) = established(version);
            client.writer().write_all(b"last").unwrap();
            client.send_close_notify();
            client_to_session(&mut client, &mut session);
            let mut got = BytesMut::new();
            assert_eq!(session.open_records(&mut got).unwrap(), 4);
            assert!(session.peer_closed());
            // Nothing is opened after close_notify.
            assert_eq!(session.open_records(&mut got).unwrap(), 0);
            session.seal_close_notify();
            let _ = session_to_client(&mut session, &mut client);
            let mut rest = Vec::new();
            assert_eq!(
                client.reader().read_to_end(&mut rest).unwrap(),
                0,
                "clean end for the client"
            );
        }
    }

    #[test]
    fn a_fatal_alert_or_a_tampered_record_ends_the_session() {
        for version in VERSIONS {
            let (mut client, mut session) = established(version);
            client.writer().write_all(b"hello").unwrap();
            client_to_session(&mut client, &mut session);
            let last = session.incoming.len() - 1;
            session.incoming[last] ^= 1;
            let mut got = BytesMut::new();
            assert!(matches!(
                session.open_records(&mut got),
                Err(TlsError::Record(_))
            ));
            assert!(got.is_empty());
        }
    }

    #[test]
    fn handshake_messages_after_the_handshake_are_refused_but_key_update() {
        let (_, mut session) = established(&rustls::version::TLS12);
        assert!(
            matches!(
                session.on_handshake(&[24, 0, 0, 1, 0]),
                Err(TlsError::Protocol(_))
            ),
            "TLS 1.2 has no KeyUpdate: renegotiation refused"
        );
        let (_, mut session) = established(&rustls::version::TLS13);
        assert!(
            session.on_handshake(&[4, 0, 0, 0]).is_err(),
            "a ticket sent to a server"
        );
        assert!(
            session.on_handshake(&[24, 0, 0, 1, 2]).is_err(),
            "bad KeyUpdate value"
        );
        assert!(
            session.on_handshake(&[24, 0, 0, 1, 0, 24]).is_err(),
            "data after KeyUpdate"
        );
        assert!(
            session.on_handshake(&[24, 0, 0, 2, 0]).is_err(),
            "split across records"
        );
        assert!(session.on_handshake(&[24, 0]).is_err(), "truncated");
        assert!(session.on_handshake(&[24, 0, 0, 1, 0]).is_ok());
        assert!(
            !session.update_tx,
            "update_not_requested asks for nothing back"
        );
        assert!(session.on_handshake(&[24, 0, 0, 1, 1]).is_ok());
        assert!(session.update_tx, "update_requested is answered");
    }

    #[test]
    fn alerts_other_than_close_notify_end_the_session_unless_benign() {
        let (_, mut session) = established(&rustls::version::TLS13);
        assert!(session.on_alert(&[1, 90]).is_ok(), "user_canceled");
        assert!(matches!(
            session.on_alert(&[2, 40]),
            Err(TlsError::Alert(40))
        ));
        assert!(
            session.on_alert(&[1, 100]).is_err(),
            "TLS 1.3: every other alert is fatal"
        );
        assert!(session.on_alert(&[1]).is_err(), "malformed");
        let (_, mut session) = established(&rustls::version::TLS12);
        assert!(session.on_alert(&[1, 100]).is_ok(), "a TLS 1.2 warning");
        assert!(session.on_alert(&[2, 100]).is_err());
        assert!(!session.peer_closed());
        assert!(session.on_alert(&[1, 0]).is_ok());
        assert!(session.peer_closed());
    }

    #[test]
    fn keys_rotate_well_before_the_suites_confidentiality_limit() {
        for version in VERSIONS {
            let (_, session) = established(version);
            let limit = session.kernel.confidentiality_limit();
            assert_eq!(limit - session.tx_limit, 65_536, "{version:?}");
        }
    }

    #[test]
    fn handshake_records_left_over_go_first_and_only_once() {
        let (_, mut session) = established(&rustls::version::TLS13);
        session.pending.extend_from_slice(b"finished");
        session.outgoing.clear();
        session.take_pending();
        assert_eq!(&session.outgoing[..], b"finished");
        assert!(session.pending.is_empty());
        session.take_pending();
        assert_eq!(&session.outgoing[..], b"finished");
    }

    #[test]
    fn errors_say_what_went_wrong() {
        assert!(TlsError::Alert(40).to_string().contains("alert 40"));
        assert!(
            TlsError::Protocol("renegotiation")
                .to_string()
                .contains("renegotiation")
        );
        assert!(
            TlsError::Record(super::RecordError::BadMac)
                .to_string()
                .contains("BadMac")
        );
    }

    #[test]
    fn a_tls12_key_past_its_limit_refuses_to_seal_and_tls13_rotates() {
        let (mut client, mut session) = established(&rustls::version::TLS13);
        session.tx_limit = session.tx.sequence() + 1;
        session.seal(b"one").unwrap();
        session.seal(b"two").unwrap();
        assert_eq!(session_to_client(&mut session, &mut client), b"onetwo");
        assert_eq!(session.tx.sequence(), 1, "a new key after the update");
        let (_, mut session) = established(&rustls::version::TLS12);
        session.tx_limit = session.tx.sequence();
        assert!(session.seal(b"x").is_err());
    }
}
