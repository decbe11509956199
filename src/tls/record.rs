//! [hot] The TLS record layer once the handshake is over: sealing and
//! opening records in place in the connection's own buffers.
//!
//! rustls runs the handshake; after it, `KernelConnection` hands over the
//! traffic secrets (the path rustls provides for kTLS) and this module does
//! what the kernel would: AEAD per record, with the nonce and additional data
//! RFC 8446 §5.2–5.3 (TLS 1.3) and RFC 5288 / RFC 7905 (TLS 1.2 AES-GCM and
//! ChaCha20-Poly1305) define. Doing it here rather than through rustls's
//! record API is what keeps an established connection allocation-free:
//! rustls 0.23 allocates a `Vec` for every record it seals and for every
//! application-data record it opens, while this module seals into the
//! outgoing buffer and opens inside the incoming one.
//!
//! Only the AEAD suites rustls offers exist (all of them are here); a secret
//! of another kind is refused when the connection is set up, never guessed.

use std::ops::Range;

use crate::crypto::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::{BufMut, BytesMut};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// Largest plaintext a record may carry (RFC 8446 §5.1).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record header: type, legacy version, length.
pub const HEADER: usize = 5;
const TAG: usize = 16;
const NONCE: usize = 12;
/// TLS 1.2 AES-GCM sends the last 8 bytes of the nonce with each record.
const EXPLICIT_NONCE: usize = 8;
/// Largest ciphertext a peer may send: TLS 1.3 allows 256 bytes of
/// expansion (RFC 8446 §5.2), TLS 1.2 2048 (RFC 5246 §6.2.3).
const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
const MAX_CIPHERTEXT_TLS12: usize = MAX_PLAINTEXT + 2048;

/// A record's (inner) content type. ChangeCipherSpec is not among them:
/// after the handshake it is never valid, so it is refused as malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alert,
    Handshake,
    ApplicationData,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Alert => 21,
            Kind::Handshake => 22,
            Kind::ApplicationData => 23,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            21 => Kind::Alert,
            22 => Kind::Handshake,
            23 => Kind::ApplicationData,
            _ => return None,
        })
    }
}

/// Why a record could not be opened or sealed; each ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Malformed header, unknown type, or a body too short to be a record.
    Malformed,
    /// Longer than the protocol allows.
    Overflow,
    /// Authentication failed: tampered, truncated, or the wrong key.
    BadMac,
    /// The sequence number would wrap (never in practice: 2^64 records).
    SequenceExhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// RFC 8446: outer type application_data, inner type appended, nonce =
    /// iv XOR seq, additional data = the record header.
    Tls13,
    /// RFC 5288: 8-byte explicit nonce on the wire, additional data =
    /// seq ‖ type ‖ version ‖ plaintext length.
    Tls12Gcm,
    /// RFC 7905: nonce = iv XOR seq, no explicit part; same additional data.
    Tls12ChaCha,
}

/// One direction's record protection: key, IV and sequence number.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE],
    seq: u64,
    layout: Layout,
}

impl RecordKey {
    /// The key for `secrets` (as rustls extracts them) starting at `seq`.
    /// `None` for a protocol version this layer does not speak.
    pub fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Option<RecordKey> {
        let (algorithm, key, iv, chacha) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, false),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, false),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, true)
            }
            _ => return None,
        };
        Self::from_parts(version, seq, algorithm, key.as_ref(), iv.as_ref(), chacha)
    }

    fn from_parts(
        version: ProtocolVersion,
        seq: u64,
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        chacha: bool,
    ) -> Option<RecordKey> {
        let layout = match (version, chacha) {
            (ProtocolVersion::TLSv1_3, _) => Layout::Tls13,
            (ProtocolVersion::TLSv1_2, false) => Layout::Tls12Gcm,
            (ProtocolVersion::TLSv1_2, true) => Layout::Tls12ChaCha,
            _ => return None,
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, key).ok()?);
        let iv: [u8; NONCE] = iv.try_into().ok()?;
        Some(RecordKey {
            key,
            iv,
            seq,
            layout,
        })
    }

    /// Records sealed or opened with this key so far (its sequence number).
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Bytes a record adds around `plaintext_len` bytes.
    pub fn overhead(&self) -> usize {
        match self.layout {
            Layout::Tls13 => HEADER + 1 + TAG,
            Layout::Tls12Gcm => HEADER + EXPLICIT_NONCE + TAG,
            Layout::Tls12ChaCha => HEADER + TAG,
        }
    }

    /// The longest record the peer may send under this key.
    pub fn max_record(&self) -> usize {
        HEADER
            + match self.layout {
                Layout::Tls13 => MAX_CIPHERTEXT_TLS13,
                _ => MAX_CIPHERTEXT_TLS12,
            }
    }

    fn nonce(&self) -> [u8; NONCE] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// `version` is the record header's, as sent or received.
    fn tls12_aad(&self, kind: Kind, version: [u8; 2], plaintext_len: usize) -> [u8; 13] {
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = kind.code();
        aad[9..11].copy_from_slice(&version);
        aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
        aad
    }

    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(())
    }

    /// Appends one record carrying `plaintext` (at most `MAX_PLAINTEXT`
    /// bytes) to `out`. Allocates only if `out` lacks the room.
    pub fn seal(
        &mut self,
        kind: Kind,
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), RecordError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        let nonce = self.nonce();
        let start = out.len();
        out.reserve(plaintext.len() + self.overhead());
        let result = match self.layout {
            Layout::Tls13 => {
                let len = plaintext.len() + 1 + TAG;
                let header = header(Kind::ApplicationData, len);
                out.put_slice(&header);
                out.put_slice(plaintext);
                out.put_u8(kind.code());
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(header),
                    &mut out[start + HEADER..],
                )
            }
            Layout::Tls12Gcm => {
                let len = EXPLICIT_NONCE + plaintext.len() + TAG;
                out.put_slice(&header(kind, len));
                out.put_slice(&nonce[NONCE - EXPLICIT_NONCE..]);
                out.put_slice(plaintext);
                let aad = self.tls12_aad(kind, [3, 3], plaintext.len());
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut out[start + HEADER + EXPLICIT_NONCE..],
                )
            }
            Layout::Tls12ChaCha => {
                out.put_slice(&header(kind, plaintext.len() + TAG));
                out.put_slice(plaintext);
                let aad = self.tls12_aad(kind, [3, 3], plaintext.len());
                self.key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut out[start + HEADER..],
                )
            }
        };
        match result {
            Ok(tag) => {
                out.put_slice(tag.as_ref());
                self.advance()
            }
            Err(_) => {
                // Sealing fails only for inputs ring cannot take (over
                // 2^36 bytes for GCM): undo the partial record.
                out.truncate(start);
                Err(RecordError::Overflow)
            }
        }
    }

    /// Opens the record that fills `record` (header included, as measured by
    /// `record_len`) in place; returns its (inner) type and where its
    /// plaintext now lies within `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(Kind, Range<usize>), RecordError> {
        if record.len() < HEADER {
            return Err(RecordError::Malformed);
        }
        let outer = Kind::from_code(record[0]).ok_or(RecordError::Malformed)?;
        let (head, body) = record.split_at_mut(HEADER);
        if u16::from_be_bytes([head[3], head[4]]) as usize != body.len() {
            return Err(RecordError::Malformed);
        }
        let (kind, plain) = match self.layout {
            Layout::Tls13 => {
                // Everything after the handshake is protected and carried
                // as application_data (RFC 8446 §5.2).
                if outer != Kind::ApplicationData || body.len() < TAG + 1 {
                    return Err(RecordError::Malformed);
                }
                let aad: [u8; HEADER] = [head[0], head[1], head[2], head[3], head[4]];
                let opened = self
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(self.nonce()),
                        Aad::from(aad),
                        body,
                    )
                    .map_err(|_| RecordError::BadMac)?;
                // The inner type is the last non-zero byte; zeros after it
                // are padding (RFC 8446 §5.4).
                let Some(at) = opened.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Malformed);
                };
                let kind = Kind::from_code(opened[at]).ok_or(RecordError::Malformed)?;
                if at > MAX_PLAINTEXT {
                    return Err(RecordError::Overflow);
                }
                (kind, at)
            }
            Layout::Tls12Gcm => {
                if body.len() < EXPLICIT_NONCE + TAG {
                    return Err(RecordError::Malformed);
                }
                let plain_len = body.len() - EXPLICIT_NONCE - TAG;
                let mut nonce = [0u8; NONCE];
                nonce[..4].copy_from_slice(&self.iv[..4]);
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
                let aad = self.tls12_aad(outer, [head[1], head[2]], plain_len);
                self.key
                    .open_within(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        body,
                        EXPLICIT_NONCE..,
                    )
                    .map_err(|_| RecordError::BadMac)?;
                (outer, plain_len)
            }
            Layout::Tls12ChaCha => {
                if body.len() < TAG {
                    return Err(RecordError::Malformed);
                }
                let plain_len = body.len() - TAG;
                let aad = self.tls12_aad(outer, [head[1], head[2]], plain_len);
                self.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(self.nonce()),
                        Aad::from(aad),
                        body,
                    )
                    .map_err(|_| RecordError::BadMac)?;
                (outer, plain_len)
            }
        };
        if plain > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        self.advance()?;
        Ok((kind, HEADER..HEADER + plain))
    }
}

fn header(kind: Kind, len: usize) -> [u8; HEADER] {
    let len = (len as u16).to_be_bytes();
    [kind.code(), 3, 3, len[0], len[1]]
}

/// The length of the first whole record in `buf` (header included), `None`
/// while it is incomplete. A header that cannot start a record of at most
/// `max_record` bytes is refused before its body is awaited.
pub fn record_len(buf: &[u8], max_record: usize) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    if Kind::from_code(buf[0]).is_none() || buf[1] != 3 {
        return Err(RecordError::Malformed);
    }
    let len = HEADER + u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if len > max_record {
        return Err(RecordError::Overflow);
    }
    Ok((buf.len() >= len).then_some(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    /// Suite 0: AES-128-GCM, 1: AES-256-GCM, 2: ChaCha20-Poly1305.
    fn key(version: ProtocolVersion, suite: u8) -> RecordKey {
        let (algorithm, len) = match suite {
            0 => (&aead::AES_128_GCM, 16),
            1 => (&aead::AES_256_GCM, 32),
            _ => (&aead::CHACHA20_POLY1305, 32),
        };
        RecordKey::from_parts(
            version,
            7,
            algorithm,
            &[9; 32][..len],
            &[10; NONCE],
            suite == 2,
        )
        .unwrap()
    }

    fn pair(version: ProtocolVersion, suite: u8) -> (RecordKey, RecordKey) {
        (key(version, suite), key(version, suite))
    }

    #[test]
    fn extracted_secrets_of_each_suite_make_a_key() {
        let iv = || Iv::new([1; NONCE]);
        for version in VERSIONS {
            for secrets in [
                ConnectionTrafficSecrets::Aes256Gcm {
                    key: AeadKey::from([2; 32]),
                    iv: iv(),
                },
                ConnectionTrafficSecrets::Chacha20Poly1305 {
                    key: AeadKey::from([2; 32]),
                    iv: iv(),
                },
            ] {
                assert!(RecordKey::new(version, 0, secrets).is_some());
            }
        }
        let secrets = ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([2; 32]),
            iv: iv(),
        };
        assert!(RecordKey::new(ProtocolVersion::TLSv1_1, 0, secrets).is_none());
    }

    const VERSIONS: [ProtocolVersion; 2] = [ProtocolVersion::TLSv1_2, ProtocolVersion::TLSv1_3];

    #[test]
    fn sealed_records_open_to_the_same_bytes_and_type_in_every_suite() {
        for version in VERSIONS {
            for suite in 0..3 {
                let (mut tx, mut rx) = pair(version, suite);
                let mut wire = BytesMut::new();
                let payloads: [(Kind, &[u8]); 4] = [
                    (Kind::ApplicationData, b"GET / HTTP/1.1\r\n\r\n"),
                    (Kind::ApplicationData, &[0u8; MAX_PLAINTEXT]),
                    (Kind::Alert, &[1, 0]),
                    (Kind::Handshake, &[24, 0, 0, 1, 0]),
                ];
                for (kind, payload) in payloads {
                    tx.seal(kind, payload, &mut wire).unwrap();
                }
                assert_eq!(tx.sequence(), 11);
                let mut at = 0;
                for (kind, payload) in payloads {
                    let len = record_len(&wire[at..], rx.max_record()).unwrap().unwrap();
                    assert_eq!(len, payload.len() + tx.overhead(), "{version:?} {suite}");
                    let (opened, range) = rx.open(&mut wire[at..at + len]).unwrap();
                    assert_eq!(opened, kind);
                    assert_eq!(&wire[at + range.start..at + range.end], payload);
                    at += len;
                }
                assert_eq!(at, wire.len());
            }
        }
    }

    #[test]
    fn tls13_hides_the_inner_type_and_tls12_shows_it() {
        let (mut tx13, _) = pair(ProtocolVersion::TLSv1_3, 1);
        let (mut tx12, _) = pair(ProtocolVersion::TLSv1_2, 1);
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        tx13.seal(Kind::Alert, &[1, 0], &mut a).unwrap();
        tx12.seal(Kind::Alert, &[1, 0], &mut b).unwrap();
        assert_eq!(&a[..3], &[23, 3, 3]);
        assert_eq!(&b[..3], &[21, 3, 3]);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        for version in VERSIONS {
            for suite in 0..3 {
                let (mut tx, _) = pair(version, suite);
                let mut wire = BytesMut::new();
                tx.seal(Kind::ApplicationData, b"hello", &mut wire).unwrap();
                for at in 0..wire.len() {
                    let (_, mut rx) = pair(version, suite);
                    let mut copy = wire.to_vec();
                    copy[at] ^= 0x01;
                    let result = rx.open(&mut copy);
                    assert!(
                        result.is_err(),
                        "{version:?} {suite}: flip at {at} accepted"
                    );
                    assert_eq!(rx.sequence(), 7, "a refused record must not advance");
                }
            }
        }
    }

    #[test]
    fn records_must_be_opened_in_order() {
        let (mut tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 0);
        let mut first = BytesMut::new();
        let mut second = BytesMut::new();
        tx.seal(Kind::ApplicationData, b"one", &mut first).unwrap();
        tx.seal(Kind::ApplicationData, b"two", &mut second).unwrap();
        assert_eq!(rx.open(&mut second.clone()), Err(RecordError::BadMac));
        assert!(rx.open(&mut first).is_ok());
        assert!(rx.open(&mut second).is_ok());
    }

    /// A TLS 1.3 record sealed by hand around `inner` (plaintext, inner
    /// type, padding: whatever the test needs, unchecked).
    fn seal_tls13_raw(tx: &RecordKey, inner: &[u8]) -> Vec<u8> {
        let mut body = inner.to_vec();
        let header = header(Kind::ApplicationData, body.len() + TAG);
        let tag = tx
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(tx.nonce()),
                Aad::from(header),
                &mut body,
            )
            .unwrap();
        let mut record = header.to_vec();
        record.extend_from_slice(&body);
        record.extend_from_slice(tag.as_ref());
        record
    }

    #[test]
    fn tls13_padding_is_stripped_and_all_zero_plaintext_refused() {
        let (tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 2);
        // Payload, inner type, then padding zeros.
        let seal_raw = |inner: &[u8]| seal_tls13_raw(&tx, inner);
        let mut padded = seal_raw(b"hi\x17\0\0\0");
        let (kind, range) = rx.open(&mut padded).unwrap();
        assert_eq!((kind, &padded[range]), (Kind::ApplicationData, &b"hi"[..]));
        let (_, mut rx) = pair(ProtocolVersion::TLSv1_3, 2);
        assert_eq!(
            rx.open(&mut seal_raw(b"\0\0\0")),
            Err(RecordError::Malformed)
        );
    }

    #[test]
    fn record_len_waits_for_the_whole_record_and_refuses_bad_headers() {
        let max = HEADER + MAX_CIPHERTEXT_TLS13;
        assert_eq!(record_len(&[23, 3, 3, 0], max), Ok(None));
        assert_eq!(record_len(&[23, 3, 3, 0, 2, 0], max), Ok(None));
        assert_eq!(record_len(&[23, 3, 3, 0, 2, 0, 0, 9], max), Ok(Some(7)));
        assert_eq!(
            record_len(&[24, 3, 3, 0, 2], max),
            Err(RecordError::Malformed)
        );
        assert_eq!(
            record_len(&[23, 2, 0, 0, 2], max),
            Err(RecordError::Malformed)
        );
        let too_long = ((max - HEADER + 1) as u16).to_be_bytes();
        assert_eq!(
            record_len(&[23, 3, 3, too_long[0], too_long[1]], max),
            Err(RecordError::Overflow)
        );
        let longest = ((max - HEADER) as u16).to_be_bytes();
        assert_eq!(
            record_len(&[23, 3, 3, longest[0], longest[1]], max),
            Ok(None)
        );
    }

    #[test]
    fn empty_records_open_and_shorter_ones_are_malformed_never_a_panic() {
        for version in VERSIONS {
            for suite in 0..3 {
                let (mut tx, mut rx) = pair(version, suite);
                let mut wire = BytesMut::new();
                tx.seal(Kind::ApplicationData, b"", &mut wire).unwrap();
                let shortest = wire.len();
                let (kind, range) = rx.open(&mut wire).unwrap();
                assert_eq!((kind, range.len()), (Kind::ApplicationData, 0));
                // Every shorter record, with a header that agrees with it.
                for len in 0..shortest {
                    let (_, mut rx) = pair(version, suite);
                    let mut record = vec![0u8; len];
                    if len >= HEADER {
                        record[..HEADER]
                            .copy_from_slice(&header(Kind::ApplicationData, len - HEADER));
                    } else if len > 0 {
                        record[0] = 23;
                    }
                    assert_eq!(
                        rx.open(&mut record),
                        Err(RecordError::Malformed),
                        "{version:?} suite {suite}: {len} bytes"
                    );
                }
            }
        }
    }

    #[test]
    fn a_tls13_record_must_be_application_data_outside() {
        let (mut tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 0);
        let mut wire = BytesMut::new();
        tx.seal(Kind::ApplicationData, b"x", &mut wire).unwrap();
        wire[0] = 21;
        assert_eq!(rx.open(&mut wire), Err(RecordError::Malformed));
    }

    #[test]
    fn the_protocol_limits_are_the_rfcs() {
        // RFC 8446 §5.1 and §5.2, RFC 5246 §6.2.3.
        assert_eq!(MAX_PLAINTEXT, 16_384);
        assert_eq!(
            pair(ProtocolVersion::TLSv1_3, 0).0.max_record(),
            5 + 16_384 + 256
        );
        assert_eq!(
            pair(ProtocolVersion::TLSv1_2, 0).0.max_record(),
            5 + 16_384 + 2048
        );
        assert_eq!(
            pair(ProtocolVersion::TLSv1_2, 2).0.max_record(),
            5 + 16_384 + 2048
        );
        // Only the four record types there are, and only version 3.x.
        for (typ, ok) in [
            (19, false),
            (20, false),
            (21, true),
            (22, true),
            (23, true),
            (24, false),
        ] {
            assert_eq!(
                record_len(&[typ, 3, 3, 0, 0], 100).is_ok(),
                ok,
                "type {typ}"
            );
        }
    }

    #[test]
    fn a_tls13_record_whose_plaintext_exceeds_16_kib_is_refused() {
        let (tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 1);
        let mut inner = vec![1u8; MAX_PLAINTEXT + 1];
        inner.push(Kind::ApplicationData.code());
        let mut record = seal_tls13_raw(&tx, &inner);
        assert_eq!(rx.open(&mut record), Err(RecordError::Overflow));
    }

    #[test]
    fn sealing_more_than_a_record_holds_is_refused() {
        let (mut tx, _) = pair(ProtocolVersion::TLSv1_3, 0);
        let mut out = BytesMut::new();
        assert_eq!(
            tx.seal(Kind::ApplicationData, &[0; MAX_PLAINTEXT + 1], &mut out),
            Err(RecordError::Overflow)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn sealing_into_a_buffer_with_room_does_not_grow_it() {
        let (mut tx, _) = pair(ProtocolVersion::TLSv1_3, 1);
        let mut out = BytesMut::with_capacity(MAX_PLAINTEXT + 64);
        let before = out.capacity();
        tx.seal(Kind::ApplicationData, &[7; MAX_PLAINTEXT], &mut out)
            .unwrap();
        assert_eq!(out.capacity(), before);
    }
}
