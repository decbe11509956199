//! [warm] What the raw ClientHello says that rustls's `Acceptor` does not
//! expose: whether the client offers a TLS 1.3 pre-shared key, i.e. is
//! resuming.
//!
//! A resuming client already holds tickets and gets one new ticket to
//! replace the one it spent; a full handshake gets two, for a client that
//! opens parallel connections (OpenSSL's policy too). Every ticket costs
//! the server a seal and the client a parse and a session object, so on a
//! connection-per-request load the second ticket is pure waste.
//!
//! The walk reads only the first record (a ClientHello split over records
//! is rare and simply counts as "not resuming", which costs one ticket).

/// The TLS 1.3 `pre_shared_key` extension (RFC 8446 §4.2.11).
const PRE_SHARED_KEY: u16 = 41;
const HANDSHAKE_RECORD: u8 = 22;
const CLIENT_HELLO: u8 = 1;

/// Whether the ClientHello at the start of `records` offers a PSK.
pub fn offers_resumption(records: &[u8]) -> bool {
    extension_types(records).is_some_and(|mut types| types.any(|t| t == PRE_SHARED_KEY))
}

/// The extension types of the ClientHello in the first record, or `None`
/// when the bytes are not one (or it is cut short before its extensions).
fn extension_types(records: &[u8]) -> Option<impl Iterator<Item = u16> + '_> {
    let mut r = Reader(records);
    if r.u8()? != HANDSHAKE_RECORD {
        return None;
    }
    r.take(2)?; // legacy record version
    let len = usize::from(r.u16()?);
    // A record longer than what has arrived is read as far as it goes.
    let mut record = Reader(&r.0[..len.min(r.0.len())]);
    if record.u8()? != CLIENT_HELLO {
        return None;
    }
    record.take(3)?; // handshake length: the record bounds the walk
    record.take(2 + 32)?; // legacy version, random
    let session_id = usize::from(record.u8()?);
    record.take(session_id)?;
    let suites = usize::from(record.u16()?);
    record.take(suites)?;
    let compression = usize::from(record.u8()?);
    record.take(compression)?;
    let len = usize::from(record.u16()?);
    let mut extensions = Reader(record.take(len)?);
    Some(std::iter::from_fn(move || {
        let kind = extensions.u16()?;
        let len = usize::from(extensions.u16()?);
        extensions.take(len)?;
        Some(kind)
    }))
}

/// A cursor over bytes; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

    use super::*;

    fn configs() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["s.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(crate::crypto::provider());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
        (Arc::new(client), Arc::new(server))
    }

    /// The client's first flight: its ClientHello record.
    fn hello(client: &mut ClientConnection) -> Vec<u8> {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        wire
    }

    /// Completes a handshake in memory, so the client stores tickets.
    fn complete(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..10 {
            if !server.is_handshaking() && !server.wants_write() && !client.wants_write() {
                return;
            }
            let wire = hello(client);
            server.read_tls(&mut &wire[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            client.read_tls(&mut &back[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        panic!("the handshake did not finish");
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("s.test").unwrap()
    }

    #[test]
    fn a_first_contact_does_not_resume_and_a_second_does() {
        let (client_config, server_config) = configs();
        let mut first = ClientConnection::new(client_config.clone(), name()).unwrap();
        let first_hello = hello(&mut first);
        assert!(extension_types(&first_hello).is_some());
        assert!(!offers_resumption(&first_hello));
        let mut server = ServerConnection::new(server_config).unwrap();
        server.read_tls(&mut &first_hello[..]).unwrap();
        server.process_new_packets().unwrap();
        complete(&mut first, &mut server);

        let mut second = ClientConnection::new(client_config, name()).unwrap();
        let second_hello = hello(&mut second);
        assert!(offers_resumption(&second_hello));
        // Cut anywhere, the hello is refused or read as far as it goes,
        // never past its end; the PSK is the last extension, so only the
        // whole hello shows it.
        for cut in 0..second_hello.len() {
            assert!(
                !offers_resumption(&second_hello[..cut]),
                "a hello cut at {cut} of {} offered a PSK",
                second_hello.len()
            );
        }
    }

    /// A hand-made ClientHello record with these extensions.
    fn made(extensions: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&kind.to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0xAB; 32]);
        body.extend_from_slice(&[2, 0xEE, 0xEE]); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut handshake = vec![CLIENT_HELLO];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let mut record = vec![HANDSHAKE_RECORD, 3, 1];
        record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
        record.extend_from_slice(&handshake);
        record
    }

    #[test]
    fn extensions_are_walked_by_type_not_searched_for_bytes() {
        let psk = PRE_SHARED_KEY.to_be_bytes();
        assert!(offers_resumption(&made(&[
            (0, b"host"),
            (PRE_SHARED_KEY, b"\0\0")
        ])));
        assert!(offers_resumption(&made(&[(PRE_SHARED_KEY, b"")])));
        // The PSK type's bytes inside another extension's data, or as a
        // length, are not the extension.
        assert!(!offers_resumption(&made(&[(0, &[psk[0], psk[1], 0, 0])])));
        assert!(!offers_resumption(&made(&[(0, &[0; 41])])));
        assert!(!offers_resumption(&made(&[
            (PRE_SHARED_KEY - 1, b""),
            (PRE_SHARED_KEY + 1, b"")
        ])));
        assert_eq!(
            extension_types(&made(&[(0, b"a"), (10, b""), (PRE_SHARED_KEY, b"xyz")]))
                .unwrap()
                .collect::<Vec<_>>(),
            [0, 10, PRE_SHARED_KEY]
        );
        assert_eq!(extension_types(&made(&[])).unwrap().count(), 0);
    }

    #[test]
    fn other_records_and_messages_are_not_hellos() {
        let good = made(&[(PRE_SHARED_KEY, b"")]);
        let mut alert = good.clone();
        alert[0] = 21;
        assert!(!offers_resumption(&alert));
        let mut server_hello = good.clone();
        server_hello[5] = 2;
        assert!(!offers_resumption(&server_hello));
        assert!(!offers_resumption(b""));
        // A record longer than what arrived is read as far as it goes.
        let mut long = good.clone();
        long[3..5].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(offers_resumption(&long));
        // A record shorter than its hello bounds the walk.
        let mut short = good.clone();
        let len = u16::from_be_bytes([good[3], good[4]]) - 1;
        short[3..5].copy_from_slice(&len.to_be_bytes());
        assert!(!offers_resumption(&short));
        // An extension whose length runs past the list ends the walk.
        let mut overrun = good;
        let last = overrun.len() - 2;
        overrun[last..].copy_from_slice(&[0, 1]);
        assert!(!offers_resumption(&overrun));
    }
}
