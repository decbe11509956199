//! A worker's bounded table of per-key limit state.
//!
//! At most `max_keys` entries, so a client inventing keys cannot grow memory
//! without bound. When full, a new key takes the slot chosen by a CLOCK hand
//! with second chance: entries whose state is back to "fresh" (a refilled
//! bucket, an unused window: evicting them loses nothing) go first; entries
//! used since the hand last passed are skipped once. A flood of one-shot keys
//! therefore evicts its own earlier keys, while a busy key — used between
//! passes — keeps its state.
//!
//! Known keys are found without allocating; a new key allocates once (its
//! bytes, shared by the map and the clock ring).

use std::rc::Rc;

use ahash::AHashMap;

struct Entry<V> {
    value: V,
    referenced: bool,
}

pub struct KeyTable<V> {
    map: AHashMap<Rc<[u8]>, Entry<V>>,
    ring: Vec<Rc<[u8]>>,
    hand: usize,
    max_keys: usize,
}

/// How far the hand may travel looking for a victim before taking the entry
/// under it anyway (bounds the cost of one insertion).
const MAX_SCAN: usize = 64;

impl<V> KeyTable<V> {
    pub fn new(max_keys: usize) -> KeyTable<V> {
        KeyTable {
            map: AHashMap::with_capacity(max_keys.min(1 << 16)),
            ring: Vec::with_capacity(max_keys.min(1 << 16)),
            hand: 0,
            max_keys: max_keys.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every key in the table.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.ring.iter().map(|k| k.as_ref())
    }

    /// The state for `key`, if present (not marked as used).
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        self.map.get_mut(key).map(|e| &mut e.value)
    }

    /// The state for `key`, created with `make` if absent, and marked as
    /// used (the CLOCK hand passes it over once). `fresh` tells whether an
    /// entry is back to its initial state (free to evict).
    pub fn get_or_insert(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> V,
        fresh: impl Fn(&V) -> bool,
    ) -> &mut V {
        self.find_or_insert(key, make, fresh, true)
    }

    /// As `get_or_insert`, without marking the entry as used: for updates
    /// that are not a client's request (a grant from the aggregator), which
    /// must not make flood keys look as busy as real ones.
    pub fn get_or_insert_unmarked(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> V,
        fresh: impl Fn(&V) -> bool,
    ) -> &mut V {
        self.find_or_insert(key, make, fresh, false)
    }

    fn find_or_insert(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> V,
        fresh: impl Fn(&V) -> bool,
        mark: bool,
    ) -> &mut V {
        if self.map.contains_key(key) {
            let entry = self.map.get_mut(key).expect("checked above");
            entry.referenced |= mark;
            return &mut entry.value;
        }
        let key: Rc<[u8]> = Rc::from(key);
        if self.ring.len() < self.max_keys {
            self.ring.push(key.clone());
        } else {
            let slot = self.choose_victim(&fresh);
            let old = std::mem::replace(&mut self.ring[slot], key.clone());
            self.map.remove(&old);
        }
        &mut self
            .map
            .entry(key)
            .or_insert(Entry {
                value: make(),
                referenced: false,
            })
            .value
    }

    fn choose_victim(&mut self, fresh: &impl Fn(&V) -> bool) -> usize {
        let n = self.ring.len();
        let window = MAX_SCAN.min(n);
        // First choice: an entry back to its initial state, anywhere in the
        // window ahead of the hand (evicting it loses nothing).
        for step in 0..window {
            let slot = (self.hand + step) % n;
            if fresh(&self.map[&self.ring[slot]].value) {
                self.hand = (slot + 1) % n;
                return slot;
            }
        }
        // Then CLOCK with second chance: skip (once) entries used since the
        // hand last passed them.
        for _ in 0..2 * window {
            let slot = self.hand;
            self.hand = (self.hand + 1) % n;
            let entry = self
                .map
                .get_mut(&self.ring[slot])
                .expect("ring and map agree");
            if entry.referenced {
                entry.referenced = false;
                continue;
            }
            return slot;
        }
        let slot = self.hand;
        self.hand = (self.hand + 1) % n;
        slot
    }

    #[cfg(test)]
    fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key) && self.ring.iter().any(|k| k.as_ref() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_under_a_flood_of_new_keys() {
        let mut t: KeyTable<u32> = KeyTable::new(1000);
        assert!(t.is_empty());
        t.get_or_insert(b"first", || 0, |_| false);
        assert!(!t.is_empty());
        for k in 0..100_000u32 {
            *t.get_or_insert(&k.to_le_bytes(), || 0, |_| false) += 1;
        }
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn a_busy_key_survives_a_flood() {
        let mut t: KeyTable<u32> = KeyTable::new(100);
        for k in 0..200_000u32 {
            // The legitimate client sends every tenth request.
            if k % 10 == 0 {
                *t.get_or_insert(b"busy-client", || 0, |_| false) += 1;
            }
            t.get_or_insert(&k.to_le_bytes(), || 0, |_| false);
        }
        assert!(t.contains(b"busy-client"));
        assert_eq!(
            *t.get_or_insert(b"busy-client", || 0, |_| false),
            20_000,
            "its state was never reset"
        );
    }

    #[test]
    fn the_fresh_scan_starts_after_the_last_victim_and_lists_every_key() {
        let fresh = |v: &u32| *v == 0;
        let mut t: KeyTable<u32> = KeyTable::new(4);
        for (key, value) in [(&b"a"[..], 5), (b"b", 0), (b"c", 7), (b"d", 0)] {
            *t.get_or_insert(key, || 1, fresh) = value;
        }
        let mut keys: Vec<&[u8]> = t.keys().collect();
        keys.sort();
        assert_eq!(keys, [&b"a"[..], b"b", b"c", b"d"]);
        // The first fresh entry from the hand (slot 0) is b (slot 1); e,
        // itself fresh, takes its slot and the hand moves past it.
        t.get_or_insert(b"e", || 0, fresh);
        assert!(!t.contains(b"b") && t.contains(b"e"));
        // a is fresh now too, but behind the hand: d (slot 3) goes next.
        *t.get_or_insert(b"a", || 1, fresh) = 0;
        t.get_or_insert(b"f", || 1, fresh);
        assert!(!t.contains(b"d") && t.contains(b"f"));
        assert!(t.contains(b"a") && t.contains(b"c") && t.contains(b"e"));
        // Nothing fresh: the CLOCK hand (which the scan left past the last
        // slot, i.e. on slot 0) picks a victim; the table keeps its bound.
        *t.get_or_insert(b"a", || 1, fresh) = 1;
        *t.get_or_insert(b"e", || 1, fresh) = 1;
        t.get_or_insert(b"g", || 1, fresh);
        assert!(t.contains(b"g") && t.len() == 4);
    }

    #[test]
    fn the_clock_hand_clears_at_most_two_windows_then_takes_what_is_under_it() {
        // 200 keys, all used again since they were added, none fresh.
        let never = |_: &u32| false;
        let mut t: KeyTable<u32> = KeyTable::new(200);
        let key = |k: u32| k.to_le_bytes();
        for _ in 0..2 {
            for k in 0..200 {
                t.get_or_insert(&key(k), || 1, never);
            }
        }
        // The hand clears 2 × 64 marks (slots 0..128), then takes slot 128.
        t.get_or_insert(&key(1000), || 1, never);
        assert!(!t.contains(&key(128)) && t.contains(&key(1000)));
        assert!(t.contains(&key(66)), "not after 2 + 64 steps");
        // Mark 0..128 used again. From slot 129 the hand clears 129..200
        // and 0..57 (128 marks), then takes slot 57.
        for k in 0..128 {
            t.get_or_insert(&key(k), || 1, never);
        }
        t.get_or_insert(&key(1001), || 1, never);
        assert!(!t.contains(&key(57)));
        assert!(t.contains(&key(56)) && t.contains(&key(1000)) && t.contains(&key(127)));
    }

    #[test]
    fn fresh_entries_are_evicted_first() {
        let mut t: KeyTable<u32> = KeyTable::new(3);
        *t.get_or_insert(b"a", || 0, |v| *v == 0) = 5;
        *t.get_or_insert(b"b", || 0, |v| *v == 0) = 0; // fresh
        *t.get_or_insert(b"c", || 0, |v| *v == 0) = 7;
        t.get_or_insert(b"d", || 0, |v| *v == 0);
        assert!(t.contains(b"a") && t.contains(b"c") && t.contains(b"d"));
        assert!(!t.contains(b"b"));
    }
}
