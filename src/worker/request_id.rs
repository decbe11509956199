//! [hot] `x-request-id`: taken from the client when well-formed, otherwise
//! generated; sent upstream, returned to the client, written to the access
//! log. Generated ids are unique across workers and restarts without any
//! shared state: process start time (ms) + pid + worker + a per-worker
//! counter, as 32 hex digits.

use std::time::{SystemTime, UNIX_EPOCH};

/// Longest client-supplied id we accept (longer ones are replaced).
pub const MAX_LEN: usize = 128;

/// An id held inline (no allocation).
#[derive(Clone, Copy)]
pub struct RequestId {
    bytes: [u8; MAX_LEN],
    len: u8,
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The client's id if it is 1..=128 bytes of `[A-Za-z0-9._:+/=-]`
    /// (UUIDs, ULIDs, base64 and the like); anything else could be used to
    /// inject into logs and is replaced.
    pub fn from_client(value: &[u8]) -> Option<RequestId> {
        let ok = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._:+/=-".contains(b));
        ok.then(|| {
            let mut bytes = [0u8; MAX_LEN];
            bytes[..value.len()].copy_from_slice(value);
            RequestId {
                bytes,
                len: value.len() as u8,
            }
        })
    }
}

/// Per-worker id generator.
pub struct IdGenerator {
    /// The fixed first 20 hex digits: start time, pid, worker.
    prefix: [u8; 20],
    counter: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

impl IdGenerator {
    pub fn new(worker: usize) -> IdGenerator {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut prefix = [0u8; 20];
        hex_into(&mut prefix[..12], start_ms);
        hex_into(&mut prefix[12..18], u64::from(std::process::id()));
        hex_into(&mut prefix[18..20], worker as u64);
        IdGenerator { prefix, counter: 0 }
    }

    #[inline]
    pub fn generate(&mut self) -> RequestId {
        self.counter += 1;
        let mut bytes = [0u8; MAX_LEN];
        bytes[..20].copy_from_slice(&self.prefix);
        hex_into(&mut bytes[20..32], self.counter);
        RequestId { bytes, len: 32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_per_worker_and_well_formed() {
        let mut a = IdGenerator::new(0);
        let mut b = IdGenerator::new(1);
        let (a1, a2, b1) = (a.generate(), a.generate(), b.generate());
        assert_ne!(a1.as_bytes(), a2.as_bytes());
        assert_ne!(a1.as_bytes(), b1.as_bytes());
        assert_eq!(a1.as_bytes().len(), 32);
        assert!(RequestId::from_client(a1.as_bytes()).is_some());
    }

    #[test]
    fn client_ids_are_accepted_only_when_safe() {
        assert!(RequestId::from_client(b"7f8e9d0c-1b2a-4c3d-9e8f-0a1b2c3d4e5f").is_some());
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"a b").is_none());
        assert!(RequestId::from_client(b"x\"}{\"evil\":1").is_none());
        assert!(RequestId::from_client(&[b'a'; 129]).is_none());
    }
}
