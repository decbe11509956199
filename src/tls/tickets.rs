//! [warm] Session tickets every worker, every reload and (with a shared key
//! file) every node can decrypt, and no two client-auth policies share.
//!
//! A ticket is sealed under a key derived for it alone: HKDF-SHA256 over
//! the master secret, the policy's label, the time epoch and 16 random
//! bytes sent in the clear. Nothing is stored or locked: any worker of any
//! process holding the same master derives the same key. Epochs are wall
//! clock (`rotation` long), so keys rotate without coordination; a ticket
//! opens in its own epoch and the next (a ticket lives at least one
//! rotation period), and in the previous one so a node whose clock is a
//! little behind still accepts its peers' tickets.
//!
//! The policy label is what keeps client authentication from being
//! bypassed by resumption: a server config that demands client
//! certificates and one that does not derive different keys, so a ticket
//! from one never resumes on the other (DESIGN.md, "TLS").

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::crypto::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use crate::crypto::hkdf;
use crate::crypto::rand::{SecureRandom, SystemRandom};

const VERSION: u8 = 1;
const SALT: usize = 16;
/// version ‖ epoch ‖ salt, authenticated as additional data.
const HEADER: usize = 1 + 8 + SALT;
const TAG: usize = 16;

/// The secret all tickets derive from: random per process unless an
/// operator shares one (`ticket_key_file`) so resumption survives restarts
/// and spans nodes.
#[derive(Clone)]
pub struct MasterSecret(hkdf::Prk);

impl MasterSecret {
    pub fn random() -> Result<MasterSecret, String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "no randomness for the session ticket key".to_string())?;
        Ok(MasterSecret::from_bytes(&bytes))
    }

    /// At least 32 bytes of secret (a key file's contents).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<MasterSecret, String> {
        if bytes.len() < 32 {
            return Err(format!(
                "holds {} bytes; at least 32 random bytes are needed (e.g. `openssl rand 48 > FILE`)",
                bytes.len()
            ));
        }
        Ok(MasterSecret::from_bytes(bytes))
    }

    fn from_bytes(bytes: &[u8]) -> MasterSecret {
        MasterSecret(
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"ringgate session tickets v1").extract(bytes),
        )
    }
}

/// The master secret of this process when no key file is configured,
/// created once so reloads keep resuming the sessions before them.
pub fn process_secret() -> Result<MasterSecret, String> {
    static SECRET: std::sync::OnceLock<Result<MasterSecret, String>> = std::sync::OnceLock::new();
    SECRET.get_or_init(MasterSecret::random).clone()
}

/// Seals and opens tickets for one client-auth policy.
pub struct Tickets {
    master: MasterSecret,
    /// Distinguishes policies (see the module doc).
    label: Vec<u8>,
    rotation_secs: u64,
    random: SystemRandom,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("rotation_secs", &self.rotation_secs)
            .finish_non_exhaustive()
    }
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl Tickets {
    pub fn new(master: MasterSecret, label: Vec<u8>, rotation_secs: u64) -> Arc<Tickets> {
        Arc::new(Tickets {
            master,
            label,
            rotation_secs: rotation_secs.max(60),
            random: SystemRandom::new(),
        })
    }

    fn epoch(&self, unix_secs: u64) -> u64 {
        unix_secs / self.rotation_secs
    }

    fn key(&self, epoch: u64, salt: &[u8]) -> Option<LessSafeKey> {
        let epoch = epoch.to_be_bytes();
        let info = [&self.label[..], &epoch[..], salt];
        let okm = self.master.0.expand(&info, KeyLen).ok()?;
        let mut bytes = [0u8; 32];
        okm.fill(&mut bytes).ok()?;
        Some(LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, &bytes).ok()?,
        ))
    }

    /// A ticket for `plain`, sealed in the epoch of `unix_secs`.
    pub fn seal_at(&self, plain: &[u8], unix_secs: u64) -> Option<Vec<u8>> {
        let mut ticket = Vec::with_capacity(HEADER + plain.len() + TAG);
        ticket.push(VERSION);
        let epoch = self.epoch(unix_secs);
        ticket.extend_from_slice(&epoch.to_be_bytes());
        let mut salt = [0u8; SALT];
        self.random.fill(&mut salt).ok()?;
        ticket.extend_from_slice(&salt);
        let key = self.key(epoch, &salt)?;
        let mut aad = [0u8; HEADER];
        aad.copy_from_slice(&ticket);
        ticket.extend_from_slice(plain);
        // A fresh key per ticket: the all-zero nonce is never reused.
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(aad),
                &mut ticket[HEADER..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    /// The plaintext of `ticket` if it was sealed for this policy in an
    /// epoch still accepted at `unix_secs`.
    pub fn open_at(&self, ticket: &[u8], unix_secs: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + TAG || ticket[0] != VERSION {
            return None;
        }
        let epoch = u64::from_be_bytes(ticket[1..9].try_into().ok()?);
        let now = self.epoch(unix_secs);
        if epoch + 1 < now || epoch > now + 1 {
            return None;
        }
        let key = self.key(epoch, &ticket[9..HEADER])?;
        let mut aad = [0u8; HEADER];
        aad.copy_from_slice(&ticket[..HEADER]);
        let mut sealed = ticket[HEADER..].to_vec();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(aad),
                &mut sealed,
            )
            .ok()?
            .len();
        sealed.truncate(plain);
        Some(sealed)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    /// What the client is told: a ticket is good for at least one rotation.
    fn lifetime(&self) -> u32 {
        self.rotation_secs.min(u32::MAX as u64) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const T0: u64 = 1_800_000_000;

    fn tickets(master: &MasterSecret, label: &[u8]) -> Arc<Tickets> {
        Tickets::new(master.clone(), label.to_vec(), 6 * HOUR)
    }

    #[test]
    fn a_ticket_opens_for_the_same_policy_and_master_only() {
        let master = MasterSecret::from_file_bytes(&[7; 48]).unwrap();
        let mine = tickets(&master, b"no-client-auth");
        let ticket = mine.seal_at(b"session state", T0).unwrap();
        assert_eq!(mine.open_at(&ticket, T0).unwrap(), b"session state");
        // Another process (node, restart) with the same key file.
        let same = tickets(
            &MasterSecret::from_file_bytes(&[7; 48]).unwrap(),
            b"no-client-auth",
        );
        assert_eq!(same.open_at(&ticket, T0).unwrap(), b"session state");
        // Another policy, or another master: never.
        assert!(
            tickets(&master, b"client-auth:ca1")
                .open_at(&ticket, T0)
                .is_none()
        );
        let other = MasterSecret::from_file_bytes(&[8; 48]).unwrap();
        assert!(
            tickets(&other, b"no-client-auth")
                .open_at(&ticket, T0)
                .is_none()
        );
    }

    #[test]
    fn tickets_live_through_the_next_epoch_and_no_longer() {
        let t = tickets(&MasterSecret::random().unwrap(), b"p");
        let start = (T0 / (6 * HOUR)) * (6 * HOUR);
        let ticket = t.seal_at(b"s", start + HOUR).unwrap();
        // Good for at least a rotation period (the lifetime clients hear).
        assert!(t.open_at(&ticket, start + HOUR + 6 * HOUR).is_some());
        assert!(t.open_at(&ticket, start + 12 * HOUR - 1).is_some());
        assert!(t.open_at(&ticket, start + 12 * HOUR).is_none());
        // A peer whose clock is up to an epoch behind still accepts it.
        assert!(t.open_at(&ticket, start - 1).is_some());
        assert!(t.open_at(&ticket, start - 6 * HOUR - 1).is_none());
        assert_eq!(rustls::server::ProducesTickets::lifetime(&*t), 6 * 3600);
        assert!(rustls::server::ProducesTickets::enabled(&*t));
        // Rotation follows the real clock.
        assert!(unix_now() > 1_700_000_000);
    }

    #[test]
    fn every_tampered_byte_is_refused_and_tickets_differ_each_time() {
        let t = tickets(&MasterSecret::random().unwrap(), b"p");
        let ticket = t.seal_at(b"state", T0).unwrap();
        assert_ne!(ticket, t.seal_at(b"state", T0).unwrap());
        for at in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[at] ^= 0x80;
            assert!(t.open_at(&bad, T0).is_none(), "flip at {at} accepted");
        }
        // Every truncation is refused (and none panics).
        for len in 0..HEADER + TAG {
            assert!(t.open_at(&ticket[..len], T0).is_none(), "{len} bytes");
        }
        // An empty session state still round-trips.
        let empty = t.seal_at(b"", T0).unwrap();
        assert_eq!(t.open_at(&empty, T0).unwrap(), b"");
    }

    #[test]
    fn a_short_key_file_is_refused() {
        assert!(MasterSecret::from_file_bytes(&[1; 31]).is_err());
        assert!(MasterSecret::from_file_bytes(&[1; 32]).is_ok());
    }
}
