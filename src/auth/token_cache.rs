//! [hot] A worker's cache of verified tokens, one per JWT provider: a
//! token seen before costs a SHA-256 and a hash lookup, not a signature
//! check, and allocates nothing.
//!
//! Keyed by the SHA-256 of the token (not the token: a dump of the cache
//! holds no credentials). An entry lives until the token's `exp` (with the
//! leeway) or the provider's `cache_ttl`, whichever comes first; when the
//! cache is full, expired entries go first, then an arbitrary one. Bounded
//! by `cache_size`, so a flood of distinct tokens costs memory only up to
//! that.

use std::collections::HashMap;
use std::rc::Rc;

use super::jwt::TokenFacts;
use crate::crypto::digest;

pub struct TokenCache {
    entries: HashMap<[u8; 32], Entry, ahash::RandomState>,
    capacity: usize,
    ttl_secs: u64,
}

struct Entry {
    facts: Rc<TokenFacts>,
    /// Unix seconds after which the entry is not used.
    until: u64,
}

/// The cache key of a token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenCache {
    pub fn new(capacity: usize, ttl_secs: u64) -> TokenCache {
        TokenCache {
            entries: HashMap::default(),
            capacity: capacity.max(1),
            ttl_secs,
        }
    }

    /// The facts of a token verified before, if still valid at `now`.
    pub fn get(&mut self, hash: &[u8; 32], now: u64) -> Option<Rc<TokenFacts>> {
        let entry = self.entries.get(hash)?;
        if now > entry.until {
            self.entries.remove(hash);
            return None;
        }
        Some(entry.facts.clone())
    }

    /// Remembers a verified token from `now`.
    pub fn insert(&mut self, hash: [u8; 32], facts: Rc<TokenFacts>, now: u64) {
        let until = facts.valid_until.min(now.saturating_add(self.ttl_secs));
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, e| now <= e.until);
            let victim = self.entries.keys().next().copied();
            if let Some(victim) = victim.filter(|_| self.entries.len() >= self.capacity) {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(hash, Entry { facts, until });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Consumer;

    fn facts(name: &str, valid_until: u64) -> Rc<TokenFacts> {
        Rc::new(TokenFacts {
            consumer: Consumer {
                name: name.into(),
                tier: None,
                routes: None,
                scopes: Box::new([]),
            },
            valid_until,
            headers: Box::new([]),
        })
    }

    #[test]
    fn entries_live_until_exp_or_ttl_whichever_is_first() {
        let mut c = TokenCache::new(10, 60);
        let (a, b) = (token_hash(b"token-a"), token_hash(b"token-b"));
        assert_ne!(a, b);
        c.insert(a, facts("a", 1_030), 1_000); // exp first: 1030
        c.insert(b, facts("b", 9_999), 1_000); // ttl first: 1060
        assert_eq!(&*c.get(&a, 1_030).unwrap().consumer.name, "a");
        assert!(c.get(&a, 1_031).is_none());
        assert!(c.get(&b, 1_060).is_some());
        assert!(c.get(&b, 1_061).is_none());
        // Expired entries are dropped when looked up.
        assert!(c.is_empty());
        assert!(c.get(&token_hash(b"never"), 0).is_none());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = TokenCache::new(3, 60);
        for i in 0..3u32 {
            c.insert(token_hash(&i.to_be_bytes()), facts("x", u64::MAX), 100);
        }
        assert_eq!(c.len(), 3);
        // Full: an expired entry goes first.
        let short = token_hash(b"short");
        let mut c2 = TokenCache::new(2, 60);
        c2.insert(short, facts("s", 150), 100);
        c2.insert(token_hash(b"long"), facts("l", u64::MAX), 100);
        c2.insert(token_hash(b"new"), facts("n", u64::MAX), 151);
        assert_eq!(c2.len(), 2);
        assert!(c2.get(&token_hash(b"long"), 151).is_some());
        assert!(c2.get(&token_hash(b"new"), 151).is_some());
        // Nothing expired: some entry makes room, the new one is kept.
        for i in 10..100u32 {
            let h = token_hash(&i.to_be_bytes());
            c.insert(h, facts("y", u64::MAX), 100);
            assert!(c.len() <= 3);
            assert!(c.get(&h, 100).is_some());
        }
        // Re-inserting a present token does not evict anyone.
        let h = token_hash(&99u32.to_be_bytes());
        c.insert(h, facts("z", u64::MAX), 100);
        assert_eq!(c.len(), 3);
    }
}
