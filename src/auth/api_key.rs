//! [cold/hot] API keys: a file of SHA-256 hashes of keys with their
//! consumers, and the per-request lookup.
//!
//! Keys are never held in memory, only their hashes (a leaked config dump
//! or core file does not leak keys). A presented key is hashed and looked
//! up by its hash: the lookup's timing depends on the hash, which an
//! attacker cannot steer toward a stored one without a preimage, and the
//! final comparison is constant-time.
//!
//! The file is TOML:
//!
//! ```toml
//! [[keys]]
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! consumer = "acme"
//! tier = "gold"            # optional
//! routes = ["orders"]      # optional: only these routes
//! scopes = ["orders:read"] # optional: for routes with `auth_scopes`
//! ```
//!
//! or one key per line, `SHA256-HEX CONSUMER [TIER]`, `#` starting a
//! comment.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Consumer, Outcome};
use crate::crypto::digest;

/// Where a request carries its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLocation {
    /// Lower-case header name.
    pub header: Option<Box<[u8]>>,
    /// Query parameter name.
    pub query: Option<Box<[u8]>>,
}

/// A compiled API-key provider.
#[derive(Debug)]
pub struct ApiKeys {
    pub location: KeyLocation,
    /// By key hash: the index of its consumer.
    by_hash: HashMap<[u8; 32], u32, ahash::RandomState>,
    hashes: Vec<[u8; 32]>,
    consumers: Vec<Consumer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    sha256: String,
    consumer: String,
    #[serde(default)]
    tier: Option<String>,
    #[serde(default)]
    routes: Option<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
}

impl ApiKeys {
    /// Parses a key file's text (`source` names it in errors).
    pub fn parse(text: &str, location: KeyLocation, source: &str) -> Result<ApiKeys, String> {
        let entries = if text.lines().any(|l| l.trim_start().starts_with("[[keys]]")) {
            toml::from_str::<KeyFile>(text)
                .map_err(|e| format!("{source}: {}", e.message()))?
                .keys
        } else {
            lines(text, source)?
        };
        let mut keys = ApiKeys {
            location,
            by_hash: HashMap::default(),
            hashes: Vec::new(),
            consumers: Vec::new(),
        };
        for (n, entry) in entries.into_iter().enumerate() {
            let hash = parse_hash(&entry.sha256)
                .ok_or_else(|| format!("{source}: key {}: sha256 must be 64 hex digits", n + 1))?;
            if entry.consumer.is_empty() || !entry.consumer.bytes().all(is_name_byte) {
                return Err(format!(
                    "{source}: key {}: consumer must be letters, digits, '-', '_', '.', '@' or ':'",
                    n + 1
                ));
            }
            let index = keys.consumers.len() as u32;
            if keys.by_hash.insert(hash, index).is_some() {
                return Err(format!(
                    "{source}: key {}: the same key is listed twice",
                    n + 1
                ));
            }
            keys.hashes.push(hash);
            keys.consumers.push(Consumer {
                name: entry.consumer.into(),
                tier: entry.tier.map(Into::into),
                routes: entry
                    .routes
                    .map(|r| r.into_iter().map(Into::into).collect()),
                scopes: entry.scopes.into_iter().map(Into::into).collect(),
            });
        }
        Ok(keys)
    }

    pub fn consumer(&self, index: u32) -> Option<&Consumer> {
        self.consumers.get(index as usize)
    }

    pub fn len(&self) -> usize {
        self.consumers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.consumers.is_empty()
    }

    /// Who `key` (as presented) belongs to, for a request on `route`.
    pub fn check(&self, key: Option<&[u8]>, route: &str) -> Outcome {
        let Some(key) = key else {
            return Outcome::Absent;
        };
        let digest = digest::digest(&digest::SHA256, key);
        let Ok(hash) = <[u8; 32]>::try_from(digest.as_ref()) else {
            return Outcome::Invalid;
        };
        let Some(&index) = self.by_hash.get(&hash) else {
            return Outcome::Invalid;
        };
        let stored = &self.hashes[index as usize];
        if aws_lc_rs::constant_time::verify_slices_are_equal(stored, &hash).is_err() {
            return Outcome::Invalid;
        }
        let consumer = &self.consumers[index as usize];
        match &consumer.routes {
            Some(routes) if !routes.iter().any(|r| &**r == route) => Outcome::Forbidden,
            _ => Outcome::Authenticated(index),
        }
    }
}

/// The line format: `HASH CONSUMER [TIER]`.
fn lines(text: &str, source: &str) -> Result<Vec<KeyEntry>, String> {
    let mut entries = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(sha256), Some(consumer)) = (fields.next(), fields.next()) else {
            return Err(format!(
                "{source}:{}: expected `SHA256-HEX CONSUMER [TIER]`",
                n + 1
            ));
        };
        let tier = fields.next().map(str::to_string);
        if fields.next().is_some() {
            return Err(format!(
                "{source}:{}: expected `SHA256-HEX CONSUMER [TIER]`",
                n + 1
            ));
        }
        entries.push(KeyEntry {
            sha256: sha256.to_string(),
            consumer: consumer.to_string(),
            tier,
            routes: None,
            scopes: Vec::new(),
        });
    }
    Ok(entries)
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Consumer names go into logs, metrics labels and headers unescaped.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':')
}

/// The SHA-256 of a key as the key file wants it (for tooling and tests).
pub fn hash_hex(key: &[u8]) -> String {
    crate::crypto::hex_digest(&digest::SHA256, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> KeyLocation {
        KeyLocation {
            header: Some(b"x-api-key"[..].into()),
            query: None,
        }
    }

    #[test]
    fn keys_from_toml_authenticate_their_consumer_on_their_routes() {
        let text = format!(
            "[[keys]]\nsha256 = \"{}\"\nconsumer = \"acme\"\ntier = \"gold\"\n\n[[keys]]\nsha256 = \"{}\"\nconsumer = \"beta\"\nroutes = [\"orders\"]\n",
            hash_hex(b"k-acme"),
            hash_hex(b"k-beta").to_uppercase()
        );
        let keys = ApiKeys::parse(&text, location(), "keys.toml").unwrap();
        assert_eq!(keys.len(), 2);
        assert!(!keys.is_empty());
        assert_eq!(
            keys.check(Some(b"k-acme"), "any"),
            Outcome::Authenticated(0)
        );
        let acme = keys.consumer(0).unwrap();
        assert_eq!((&*acme.name, acme.tier.as_deref()), ("acme", Some("gold")));
        assert_eq!(
            keys.check(Some(b"k-beta"), "orders"),
            Outcome::Authenticated(1)
        );
        assert_eq!(keys.check(Some(b"k-beta"), "other"), Outcome::Forbidden);
        assert_eq!(keys.check(Some(b"k-acm"), "any"), Outcome::Invalid);
        assert_eq!(keys.check(Some(b""), "any"), Outcome::Invalid);
        assert_eq!(keys.check(None, "any"), Outcome::Absent);
        assert!(keys.consumer(2).is_none());
    }

    #[test]
    fn keys_from_lines_with_comments_and_tiers() {
        let text = format!(
            "# partners\n{} acme gold\n\n  {} beta   # no tier\n",
            hash_hex(b"one"),
            hash_hex(b"two")
        );
        let keys = ApiKeys::parse(&text, location(), "keys.txt").unwrap();
        assert_eq!(keys.check(Some(b"one"), "r"), Outcome::Authenticated(0));
        assert_eq!(keys.check(Some(b"two"), "r"), Outcome::Authenticated(1));
        assert_eq!(keys.consumer(1).unwrap().tier, None);
        assert_eq!(keys.consumer(0).unwrap().tier.as_deref(), Some("gold"));
        assert!(ApiKeys::parse("", location(), "empty").unwrap().is_empty());
    }

    #[test]
    fn bad_files_are_refused_with_where_and_why() {
        let h = hash_hex(b"k");
        for (text, why) in [
            (h.to_string(), "keys.txt:1: expected"),
            (format!("{h} a b c"), "keys.txt:1: expected"),
            (
                "abc acme".to_string(),
                "key 1: sha256 must be 64 hex digits",
            ),
            (
                format!("{}zz acme", &h[..62]),
                "key 1: sha256 must be 64 hex digits",
            ),
            (
                format!("{h} acme\n{h} other"),
                "key 2: the same key is listed twice",
            ),
            (format!("{h} a\"b"), "key 1: consumer must be"),
            (
                "[[keys]]\nsha256 = \"x\"".to_string(),
                "keys.txt: missing field",
            ),
            (
                "[[keys]]\nconsumer = \"a\"\nsha256 = \"x\"\nextra = 1".to_string(),
                "unknown field",
            ),
        ] {
            let err = ApiKeys::parse(&text, location(), "keys.txt").unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn hashes_parse_as_hex_of_either_case() {
        let h = hash_hex(b"abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let lower = parse_hash(&h).unwrap();
        assert_eq!(parse_hash(&h.to_uppercase()), Some(lower));
        assert_eq!(lower[0], 0xba);
        assert_eq!(lower[31], 0xad);
        assert_eq!(parse_hash(&h[..63]), None);
        assert_eq!(parse_hash(&format!("{h}0")), None);
        assert_eq!(parse_hash(&format!("g{}", &h[1..])), None);
    }
}
