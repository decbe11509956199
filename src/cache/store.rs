//! [hot] One worker's cache shard: stored responses by key, within a byte
//! budget, evicted by S3-FIFO (Yang et al., SOSP '23): new objects enter a
//! small FIFO (a tenth of the bytes); those hit again while there move to
//! the main FIFO, the others leave and are remembered in a ghost FIFO of
//! key hashes, and a key that comes back while remembered goes straight to
//! main. Main evicts in FIFO order, giving objects hit since their last
//! pass another round. A hit costs a hash lookup and a counter increment,
//! never a list move (unlike LRU); one-hit wonders (a scan, a flood of
//! distinct URLs) never displace the working set. `bench/cache.rs` compares
//! its hit ratio with LRU and CLOCK on Zipf workloads.
//!
//! An object is the unit of eviction: one primary key (method-independent
//! request key) with all its `Vary` variants. Objects live in a slab (a
//! `Vec` with a free list) and the queues hold slab indices, so once the
//! shard has filled, storing and evicting reuse memory rather than grow.
//!
//! Keys are found by a 64-bit hash (keyed at random per shard) and then
//! compared whole, so a hash collision can never serve one URL's response
//! for another.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// A stored response.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The request's values of the response's `Vary` headers, normalized
    /// (`vary::secondary_key`); empty without `Vary`.
    pub secondary: Box<[u8]>,
    /// The response head as the cache serves it (status line and headers,
    /// without `Age` and the final CRLF).
    pub head: Bytes,
    pub body: Bytes,
    /// Unix seconds: when the response was received, and its age then.
    pub received: u64,
    pub initial_age: u64,
    /// Seconds it is fresh for, from `received - initial_age`.
    pub lifetime: u64,
    /// Seconds past its lifetime it may still be served while revalidating
    /// in the background, or when the upstream fails.
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// `must-revalidate` / `proxy-revalidate` / `no-cache`: never served
    /// stale, and (no-cache) never served without revalidation.
    pub must_revalidate: bool,
    pub no_cache: bool,
    /// Validators for conditional requests.
    pub etag: Option<Bytes>,
    pub last_modified: Option<u64>,
    pub status: u16,
}

impl Variant {
    /// Seconds old at `now`.
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.received))
    }

    /// Fresh at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        !self.no_cache && self.age(now) < self.lifetime
    }

    /// Seconds past its lifetime at `now` (0 while fresh).
    pub fn staleness(&self, now: u64) -> u64 {
        self.age(now).saturating_sub(self.lifetime)
    }

    fn bytes(&self) -> usize {
        self.secondary.len()
            + self.head.len()
            + self.body.len()
            + self.etag.as_ref().map_or(0, Bytes::len)
            + std::mem::size_of::<Variant>()
    }
}

/// One object: a primary key and its variants.
#[derive(Debug)]
struct Object {
    key: Box<[u8]>,
    hash: u64,
    /// The response's `Vary` field names, lower-case, sorted; `None`: the
    /// stored response has no `Vary`. `Vary: *` is never stored.
    vary: Option<Box<[Box<[u8]>]>>,
    variants: Vec<Variant>,
    bytes: usize,
    /// Hits since the object's last pass through a queue (0..=3).
    freq: u8,
    in_main: bool,
}

/// Variants kept per primary key; past this the oldest goes.
pub const MAX_VARIANTS: usize = 8;
/// Ghost entries kept, relative to the objects that fit: a key evicted
/// from the small queue is remembered about as long as main holds objects.
const GHOST_FACTOR: usize = 1;

/// What the shard did, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreCounters {
    pub evictions: u64,
}

pub struct Store {
    budget: usize,
    small_budget: usize,
    used: usize,
    small_used: usize,
    slab: Vec<Option<Object>>,
    free: Vec<usize>,
    index: HashMap<u64, usize, ahash::RandomState>,
    hasher: ahash::RandomState,
    small: VecDeque<usize>,
    main: VecDeque<usize>,
    ghost: VecDeque<u64>,
    ghost_set: HashMap<u64, (), ahash::RandomState>,
    pub counters: StoreCounters,
}

/// A lookup's result: the object's `Vary` names (to build the secondary
/// key) and its variants.
pub struct Found<'a> {
    pub vary: Option<&'a [Box<[u8]>]>,
    pub variants: &'a [Variant],
}

impl Store {
    /// A shard holding at most `budget` bytes (keys, heads, bodies and
    /// bookkeeping).
    pub fn new(budget: usize) -> Store {
        Store {
            budget,
            small_budget: budget / 10,
            used: 0,
            small_used: 0,
            slab: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            hasher: ahash::RandomState::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashMap::default(),
            counters: StoreCounters::default(),
        }
    }

    /// Changes the budget (a reload); evicts down to it at once.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.small_budget = budget / 10;
        self.make_room();
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Objects stored.
    pub fn objects(&self) -> usize {
        self.index.len()
    }

    fn slot_of(&self, key: &[u8], hash: u64) -> Option<usize> {
        let &slot = self.index.get(&hash)?;
        let object = self.slab[slot].as_ref()?;
        (*object.key == *key).then_some(slot)
    }

    /// The object stored under `key`; counts as a hit for eviction.
    pub fn get(&mut self, key: &[u8]) -> Option<Found<'_>> {
        let hash = self.hash(key);
        let slot = self.slot_of(key, hash)?;
        let object = self.slab[slot].as_mut()?;
        object.freq = (object.freq + 1).min(3);
        Some(Found {
            vary: object.vary.as_deref(),
            variants: &object.variants,
        })
    }

    /// Mutable access to a stored variant (a 304 freshening it).
    pub fn variant_mut(&mut self, key: &[u8], secondary: &[u8]) -> Option<&mut Variant> {
        let hash = self.hash(key);
        let slot = self.slot_of(key, hash)?;
        self.slab[slot]
            .as_mut()?
            .variants
            .iter_mut()
            .find(|v| *v.secondary == *secondary)
    }

    /// Stores `variant` under `key`, with the response's `Vary` names. A
    /// response whose `Vary` differs from the stored variants' replaces
    /// them all (the resource changed how it varies). Returns false when
    /// it cannot fit at all.
    pub fn insert(&mut self, key: &[u8], vary: Option<Box<[Box<[u8]>]>>, variant: Variant) -> bool {
        let size = variant.bytes() + key.len();
        if size > self.budget / 2 || size > self.budget.saturating_sub(self.small_budget) {
            return false;
        }
        let hash = self.hash(key);
        if let Some(slot) = self.slot_of(key, hash) {
            let Some(object) = self.slab[slot].as_mut() else {
                return false;
            };
            let before = object.bytes;
            if object.vary != vary {
                object.vary = vary;
                object.variants.clear();
            }
            object.variants.retain(|v| v.secondary != variant.secondary);
            if object.variants.len() >= MAX_VARIANTS {
                object.variants.remove(0);
            }
            object.variants.push(variant);
            object.bytes = key.len() + object.variants.iter().map(Variant::bytes).sum::<usize>();
            let after = object.bytes;
            let in_main = object.in_main;
            self.used = self.used - before + after;
            if !in_main {
                self.small_used = self.small_used - before + after;
            }
            self.make_room();
            return true;
        }
        let to_main = self.ghost_set.remove(&hash).is_some();
        let object = Object {
            key: key.into(),
            hash,
            vary,
            variants: vec![variant],
            bytes: size,
            freq: 0,
            in_main: to_main,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot] = Some(object);
                slot
            }
            None => {
                self.slab.push(Some(object));
                self.slab.len() - 1
            }
        };
        self.index.insert(hash, slot);
        self.used += size;
        if to_main {
            self.main.push_back(slot);
        } else {
            self.small_used += size;
            self.small.push_back(slot);
        }
        self.make_room();
        true
    }

    /// Removes the object under `key` (invalidation, purge).
    pub fn remove(&mut self, key: &[u8]) -> bool {
        let hash = self.hash(key);
        let Some(slot) = self.slot_of(key, hash) else {
            return false;
        };
        self.drop_slot(slot);
        true
    }

    /// Removes the objects `purge` names, or with `soft` marks them
    /// stale (they are then revalidated before use, and stale-if-error
    /// may still serve them); returns how many.
    pub fn purge(&mut self, purge: &super::purge::Purge) -> usize {
        let doomed: Vec<usize> = self
            .slab
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().filter(|o| purge.matches(&o.key)).map(|_| i))
            .collect();
        for &slot in &doomed {
            if purge.soft {
                if let Some(object) = self.slab[slot].as_mut() {
                    for v in &mut object.variants {
                        v.lifetime = 0;
                        v.stale_while_revalidate = 0;
                    }
                }
            } else {
                self.drop_slot(slot);
            }
        }
        doomed.len()
    }

    /// Removes every object whose key starts with `prefix`; returns how
    /// many.
    pub fn remove_prefix(&mut self, prefix: &[u8]) -> usize {
        let doomed: Vec<usize> = self
            .slab
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.as_ref().filter(|o| o.key.starts_with(prefix)).map(|_| i))
            .collect();
        for &slot in &doomed {
            self.drop_slot(slot);
        }
        doomed.len()
    }

    /// Frees a slot; its queue entry is skipped when reached.
    fn drop_slot(&mut self, slot: usize) {
        let Some(object) = self.slab[slot].take() else {
            return;
        };
        self.index.remove(&object.hash);
        self.used -= object.bytes;
        if !object.in_main {
            self.small_used -= object.bytes;
        }
        self.free.push(slot);
    }

    /// Evicts until the shard is within its budget.
    fn make_room(&mut self) {
        while self.used > self.budget {
            if self.small_used > self.small_budget || self.main.is_empty() {
                if !self.evict_small() {
                    break;
                }
            } else if !self.evict_main() {
                break;
            }
        }
    }

    /// Takes the small queue's oldest object: to main if it was hit, out
    /// (and into the ghost queue) if not.
    fn evict_small(&mut self) -> bool {
        while let Some(slot) = self.small.pop_front() {
            let Some(object) = self.slab[slot].as_mut() else {
                continue; // removed meanwhile
            };
            if object.in_main {
                continue;
            }
            if object.freq > 0 {
                object.freq = 0;
                object.in_main = true;
                self.small_used -= object.bytes;
                self.main.push_back(slot);
                return true;
            }
            let hash = object.hash;
            self.drop_slot(slot);
            self.counters.evictions += 1;
            self.remember(hash);
            return true;
        }
        false
    }

    /// Takes main's oldest object: another round if it was hit since its
    /// last pass, out if not.
    fn evict_main(&mut self) -> bool {
        while let Some(slot) = self.main.pop_front() {
            let Some(object) = self.slab[slot].as_mut() else {
                continue;
            };
            if !object.in_main {
                continue;
            }
            if object.freq > 0 {
                object.freq -= 1;
                self.main.push_back(slot);
                continue;
            }
            self.drop_slot(slot);
            self.counters.evictions += 1;
            return true;
        }
        false
    }

    fn remember(&mut self, hash: u64) {
        let limit = (self.index.len() * GHOST_FACTOR).max(16);
        while self.ghost.len() >= limit {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
        if self.ghost_set.insert(hash, ()).is_none() {
            self.ghost.push_back(hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(body: usize, secondary: &str) -> Variant {
        Variant {
            secondary: secondary.as_bytes().into(),
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\n"),
            body: Bytes::from(vec![b'x'; body]),
            received: 1000,
            initial_age: 0,
            lifetime: 60,
            stale_while_revalidate: 0,
            stale_if_error: 0,
            must_revalidate: false,
            no_cache: false,
            etag: None,
            last_modified: None,
            status: 200,
        }
    }

    #[test]
    fn stored_objects_are_found_by_their_whole_key() {
        let mut s = Store::new(1 << 20);
        assert!(s.insert(b"GET example.com/a", None, variant(10, "")));
        assert_eq!(s.get(b"GET example.com/a").unwrap().variants.len(), 1);
        assert!(s.get(b"GET example.com/b").is_none());
        // A different key that landed on the same slot is not served
        // (simulated: rewrite the stored key).
        let slot = s.index[&s.hash(b"GET example.com/a")];
        s.slab[slot].as_mut().unwrap().key = b"GET example.com/z"[..].into();
        assert!(s.get(b"GET example.com/a").is_none());
    }

    #[test]
    fn variants_share_an_object_and_a_new_vary_replaces_them() {
        let mut s = Store::new(1 << 20);
        let vary = || Some(vec![b"accept-encoding"[..].into()].into_boxed_slice());
        s.insert(b"k", vary(), variant(10, "gzip"));
        s.insert(b"k", vary(), variant(10, "br"));
        s.insert(b"k", vary(), variant(20, "gzip"));
        let found = s.get(b"k").unwrap();
        assert_eq!(found.variants.len(), 2);
        assert_eq!(found.vary.unwrap().len(), 1);
        assert_eq!(s.objects(), 1);
        s.insert(b"k", None, variant(5, ""));
        assert_eq!(s.get(b"k").unwrap().variants.len(), 1);
        for i in 0..20 {
            s.insert(b"many", vary(), variant(1, &format!("v{i}")));
        }
        assert_eq!(s.get(b"many").unwrap().variants.len(), MAX_VARIANTS);
        let used: usize = s.slab.iter().flatten().map(|o| o.bytes).sum();
        assert_eq!(s.used(), used, "byte accounting follows replacements");
    }

    #[test]
    fn the_budget_holds_and_too_large_objects_are_refused() {
        let mut s = Store::new(100_000);
        for i in 0..1000 {
            s.insert(format!("k{i}").as_bytes(), None, variant(1000, ""));
            assert!(s.used() <= 100_000);
        }
        assert!(s.counters.evictions > 900);
        assert!(!s.insert(b"huge", None, variant(60_000, "")));
        assert!(s.get(b"huge").is_none());
        assert!(s.used() <= 100_000);
    }

    #[test]
    fn hit_objects_survive_a_scan_of_one_hit_wonders() {
        let mut s = Store::new(200_000);
        // A working set of 50 objects, hit repeatedly.
        for round in 0..3 {
            for i in 0..50 {
                let key = format!("hot{i}");
                if s.get(key.as_bytes()).is_none() {
                    assert!(round == 0 || i < 50);
                    s.insert(key.as_bytes(), None, variant(1000, ""));
                }
            }
        }
        // A scan of 2 000 distinct keys, each seen once.
        for i in 0..2000 {
            s.insert(format!("scan{i}").as_bytes(), None, variant(1000, ""));
        }
        let survivors = (0..50)
            .filter(|i| s.get(format!("hot{i}").as_bytes()).is_some())
            .count();
        assert!(
            survivors >= 45,
            "only {survivors} of 50 hot objects survived the scan"
        );
    }

    #[test]
    fn a_key_evicted_unhit_comes_back_into_main() {
        let mut s = Store::new(12_000);
        s.insert(b"once", None, variant(1000, ""));
        // Enough newcomers to push it out of the small queue, not so many
        // that the ghost queue (about as long as the shard has objects)
        // forgets it.
        for i in 0..20 {
            s.insert(format!("f{i}").as_bytes(), None, variant(1000, ""));
        }
        assert!(s.get(b"once").is_none(), "evicted from small");
        s.insert(b"once", None, variant(1000, ""));
        let slot = s.index[&s.hash(b"once")];
        assert!(
            s.slab[slot].as_ref().unwrap().in_main,
            "remembered: straight to main"
        );
    }

    #[test]
    fn removal_by_key_and_prefix() {
        let mut s = Store::new(1 << 20);
        for k in ["h/a/1", "h/a/2", "h/b/1"] {
            s.insert(k.as_bytes(), None, variant(10, ""));
        }
        assert!(s.remove(b"h/b/1"));
        assert!(!s.remove(b"h/b/1"));
        assert_eq!(s.remove_prefix(b"h/a/"), 2);
        assert_eq!(s.objects(), 0);
        assert_eq!(s.used(), 0);
        // Freed slots are reused, and stale queue entries skipped.
        for i in 0..10 {
            s.insert(format!("n{i}").as_bytes(), None, variant(10, ""));
        }
        assert_eq!(s.slab.len(), 10);
    }

    #[test]
    fn age_freshness_and_staleness() {
        let mut v = variant(1, "");
        v.initial_age = 5;
        assert_eq!(v.age(1000), 5);
        assert_eq!(v.age(1010), 15);
        assert!(v.is_fresh(1054));
        assert!(!v.is_fresh(1055));
        assert_eq!(v.staleness(1054), 0);
        assert_eq!(v.staleness(1065), 10);
        v.no_cache = true;
        assert!(!v.is_fresh(1000));
    }
}
