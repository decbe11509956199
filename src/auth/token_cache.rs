//! [hot] A worker's cache of verified tokens, one per JWT provider: a
//! token seen before costs a keyed hash, a lookup and a comparison, not a
//! signature check, and allocates nothing.
//!
//! Entries are found by a 64-bit keyed hash of the token (the key is
//! random per cache, so nobody can aim at another token's slot) and hold
//! the token itself, compared in constant time before it counts: a hash
//! collision can never stand in for a verified token, and the comparison
//! does not leak how much of a cached token a guess got right. A
//! cryptographic digest would do the same job at about four times the
//! cost per request (bench/auth.rs).
//!
//! An entry lives until the token's `exp` (with the leeway) or the
//! provider's `cache_ttl`, whichever comes first; when the cache is full,
//! expired entries go first, then an arbitrary one. Bounded by
//! `cache_size` (memory: about the token's length per entry).
//!
//! Token introspection uses two more kinds of entry: refusals (an inactive
//! token, kept `negative_ttl` so a replayed bad token does not cost a call
//! each time), and a grace period after `cache_ttl` (never past `exp`)
//! during which a token that was valid may still be accepted — but only
//! when the introspection endpoint cannot be reached (`lookup` says
//! `Stale`; the caller decides).

use std::collections::HashMap;
use std::rc::Rc;

use super::jwt::TokenFacts;

pub struct TokenCache {
    entries: HashMap<u64, Entry, ahash::RandomState>,
    /// Keys the token hash; random per cache.
    hasher: ahash::RandomState,
    capacity: usize,
    ttl_secs: u64,
    grace_secs: u64,
}

struct Entry {
    token: Box<[u8]>,
    /// `None`: the token was refused.
    facts: Option<Rc<TokenFacts>>,
    /// Unix seconds after which the entry is not fresh.
    until: u64,
    /// Unix seconds after which it is gone (`until` plus any grace).
    kept_until: u64,
}

/// What the cache knows about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Valid, fresh.
    Valid(Rc<TokenFacts>),
    /// Refused recently.
    Refused,
    /// Was valid, past its cache time but within the grace period.
    Stale(Rc<TokenFacts>),
    Unknown,
}

impl TokenCache {
    pub fn new(capacity: usize, ttl_secs: u64) -> TokenCache {
        TokenCache {
            entries: HashMap::default(),
            hasher: ahash::RandomState::new(),
            capacity: capacity.max(1),
            ttl_secs,
            grace_secs: 0,
        }
    }

    /// Valid tokens are kept `grace_secs` past their cache time (never
    /// past their `exp`), as `Lookup::Stale`.
    pub fn with_grace(mut self, grace_secs: u64) -> TokenCache {
        self.grace_secs = grace_secs;
        self
    }

    fn slot(&self, token: &[u8]) -> u64 {
        self.hasher.hash_one(token)
    }

    /// The facts of `token` if it was verified before and is still valid
    /// (and fresh) at `now`.
    pub fn get(&mut self, token: &[u8], now: u64) -> Option<Rc<TokenFacts>> {
        match self.lookup(token, now) {
            Lookup::Valid(facts) => Some(facts),
            _ => None,
        }
    }

    /// Everything the cache knows about `token` at `now`.
    pub fn lookup(&mut self, token: &[u8], now: u64) -> Lookup {
        let slot = self.slot(token);
        let Some(entry) = self.entries.get(&slot) else {
            return Lookup::Unknown;
        };
        if aws_lc_rs::constant_time::verify_slices_are_equal(&entry.token, token).is_err() {
            return Lookup::Unknown;
        }
        if now > entry.kept_until {
            self.entries.remove(&slot);
            return Lookup::Unknown;
        }
        match (&entry.facts, now <= entry.until) {
            (Some(facts), true) => Lookup::Valid(facts.clone()),
            (Some(facts), false) => Lookup::Stale(facts.clone()),
            (None, _) => Lookup::Refused,
        }
    }

    /// Remembers a verified token from `now`.
    pub fn insert(&mut self, token: &[u8], facts: Rc<TokenFacts>, now: u64) {
        let until = facts.valid_until.min(now.saturating_add(self.ttl_secs));
        let kept_until = facts.valid_until.min(until.saturating_add(self.grace_secs));
        self.put(token, Some(facts), until, kept_until, now);
    }

    /// Remembers that `token` was refused, for `secs` from `now`.
    pub fn insert_refused(&mut self, token: &[u8], secs: u64, now: u64) {
        let until = now.saturating_add(secs);
        self.put(token, None, until, until, now);
    }

    fn put(
        &mut self,
        token: &[u8],
        facts: Option<Rc<TokenFacts>>,
        until: u64,
        kept_until: u64,
        now: u64,
    ) {
        let slot = self.slot(token);
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&slot) {
            self.entries.retain(|_, e| now <= e.kept_until);
            let victim = self.entries.keys().next().copied();
            if let Some(victim) = victim.filter(|_| self.entries.len() >= self.capacity) {
                self.entries.remove(&victim);
            }
        }
        self.entries.insert(
            slot,
            Entry {
                token: token.into(),
                facts,
                until,
                kept_until,
            },
        );
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
            claims: Box::new([]),
        })
    }

    #[test]
    fn entries_live_until_exp_or_ttl_whichever_is_first() {
        let mut c = TokenCache::new(10, 60);
        c.insert(b"token-a", facts("a", 1_030), 1_000); // exp first: 1030
        c.insert(b"token-b", facts("b", 9_999), 1_000); // ttl first: 1060
        assert!(!c.is_empty());
        assert_eq!(&*c.get(b"token-a", 1_030).unwrap().consumer.name, "a");
        assert!(c.get(b"token-a", 1_031).is_none());
        assert!(c.get(b"token-b", 1_060).is_some());
        assert!(c.get(b"token-b", 1_061).is_none());
        // Expired entries are dropped when looked up.
        assert!(c.is_empty());
        assert!(c.get(b"never", 0).is_none());
    }

    #[test]
    fn only_the_very_token_that_was_verified_is_found() {
        let mut c = TokenCache::new(10, 60);
        c.insert(b"header.payload.signature", facts("a", u64::MAX), 0);
        assert!(c.get(b"header.payload.signature", 0).is_some());
        for other in [
            &b"header.payload.signaturE"[..],
            b"header.payload.signatur",
            b"header.payload.signature.",
            b"",
        ] {
            assert!(c.get(other, 0).is_none(), "{other:?}");
        }
        // A different token that lands in the same slot is not taken for
        // the cached one (simulated: overwrite the slot's token).
        let slot = c.slot(b"header.payload.signature");
        c.entries.get_mut(&slot).unwrap().token = b"someone-else"[..].into();
        assert!(c.get(b"header.payload.signature", 0).is_none());
        // Two caches key differently.
        let d = TokenCache::new(10, 60);
        assert_ne!(d.slot(b"x"), c.slot(b"x"));
    }

    #[test]
    fn refusals_and_grace_periods() {
        let mut c = TokenCache::new(10, 60).with_grace(100);
        c.insert_refused(b"bad", 10, 1_000);
        assert_eq!(c.lookup(b"bad", 1_010), Lookup::Refused);
        assert!(c.get(b"bad", 1_000).is_none(), "a refusal is not facts");
        assert_eq!(c.lookup(b"bad", 1_011), Lookup::Unknown);
        // Fresh for the ttl, stale for the grace after it.
        c.insert(b"good", facts("g", 9_999), 1_000);
        assert!(matches!(c.lookup(b"good", 1_060), Lookup::Valid(_)));
        assert!(matches!(c.lookup(b"good", 1_061), Lookup::Stale(_)));
        assert!(c.get(b"good", 1_061).is_none(), "stale is not valid");
        assert!(matches!(c.lookup(b"good", 1_160), Lookup::Stale(_)));
        assert_eq!(c.lookup(b"good", 1_161), Lookup::Unknown);
        // The grace never outlives the token's exp.
        c.insert(b"short", facts("s", 1_080), 1_000);
        assert!(matches!(c.lookup(b"short", 1_080), Lookup::Stale(_)));
        assert_eq!(c.lookup(b"short", 1_081), Lookup::Unknown);
        // Without a grace, past the ttl is gone.
        let mut d = TokenCache::new(10, 60);
        d.insert(b"good", facts("g", 9_999), 1_000);
        assert_eq!(d.lookup(b"good", 1_061), Lookup::Unknown);
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = TokenCache::new(3, 60);
        for i in 0..3u32 {
            c.insert(&i.to_be_bytes(), facts("x", u64::MAX), 100);
        }
        assert_eq!(c.len(), 3);
        // Full: an expired entry goes first.
        let mut c2 = TokenCache::new(2, 60);
        c2.insert(b"short", facts("s", 150), 100);
        c2.insert(b"long", facts("l", u64::MAX), 100);
        c2.insert(b"new", facts("n", u64::MAX), 151);
        assert_eq!(c2.len(), 2);
        assert!(c2.get(b"long", 151).is_some());
        assert!(c2.get(b"new", 151).is_some());
        // Nothing expired: some entry makes room, the new one is kept.
        for i in 10..100u32 {
            c.insert(&i.to_be_bytes(), facts("y", u64::MAX), 100);
            assert!(c.len() <= 3);
            assert!(c.get(&i.to_be_bytes(), 100).is_some());
        }
        // Below capacity an insert does not scan: expired entries wait
        // for a lookup or for the cache to fill.
        let mut c3 = TokenCache::new(10, 60);
        c3.insert(b"old", facts("o", 150), 100);
        c3.insert(b"fresh", facts("f", u64::MAX), 200);
        assert_eq!(c3.len(), 2);
        // Re-inserting a present token does not evict anyone.
        c.insert(&99u32.to_be_bytes(), facts("z", u64::MAX), 100);
        assert_eq!(c.len(), 3);
    }
}
