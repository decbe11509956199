//! [hot] Requests per consumer, for the heaviest consumers only: a metric
//! label must never take one value per consumer (an attacker with many
//! keys, or a big tenant list, would grow `/metrics` without bound), so
//! each worker counts at most `capacity` consumers with the space-saving
//! algorithm (Metwally et al.): a consumer not counted yet takes the slot
//! of the least-counted one and inherits its count. Every consumer whose
//! true count exceeds total / capacity is guaranteed a slot, and no count
//! is under its true value; `/metrics` sums the workers' slots and shows
//! the top `top_consumers` (a newcomer's inherited count may overstate it,
//! which is why workers keep twice as many slots as are shown).
//!
//! Slots keep their name buffers: once warm, counting allocates nothing,
//! even when the long tail makes slots change hands.

use std::collections::HashMap;

/// The heaviest consumers one worker has seen.
pub struct TopConsumers {
    slots: Vec<Slot>,
    /// Slot index by name hash (a hash shared by two names is told apart
    /// by comparing the name).
    index: HashMap<u64, usize, ahash::RandomState>,
    hasher: ahash::RandomState,
    capacity: usize,
}

struct Slot {
    name: String,
    hash: u64,
    count: u64,
}

impl TopConsumers {
    /// Counts at most `capacity` consumers (0: none).
    pub fn new(capacity: usize) -> TopConsumers {
        let mut index = HashMap::with_hasher(ahash::RandomState::new());
        index.reserve(capacity);
        TopConsumers {
            slots: Vec::with_capacity(capacity),
            index,
            hasher: ahash::RandomState::new(),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// One request from `name`.
    pub fn count(&mut self, name: &str) {
        if self.capacity == 0 {
            return;
        }
        let hash = self.hasher.hash_one(name);
        if let Some(&i) = self.index.get(&hash) {
            let slot = &mut self.slots[i];
            if slot.name == name {
                slot.count += 1;
                return;
            }
            // Another name with the same hash holds the index entry (keyed
            // 64-bit hashes: practically never): find this one by name.
            if let Some(slot) = self.slots.iter_mut().find(|s| s.name == name) {
                slot.count += 1;
                return;
            }
        }
        if self.slots.len() < self.capacity {
            self.index.entry(hash).or_insert(self.slots.len());
            self.slots.push(Slot {
                name: name.to_string(),
                hash,
                count: 1,
            });
            return;
        }
        let Some(least) = (0..self.slots.len()).min_by_key(|&i| self.slots[i].count) else {
            return;
        };
        let slot = &mut self.slots[least];
        if self.index.get(&slot.hash) == Some(&least) {
            self.index.remove(&slot.hash);
        }
        slot.name.clear();
        slot.name.push_str(name);
        slot.hash = hash;
        slot.count += 1;
        self.index.entry(hash).or_insert(least);
    }

    /// The counted consumers and their counts.
    pub fn snapshot(&self) -> Vec<(Box<str>, u64)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str().into(), s.count))
            .collect()
    }
}

/// The `top` heaviest consumers across workers' snapshots, heaviest first
/// (ties by name, so the output is stable).
pub fn merge_top(workers: &[Vec<(Box<str>, u64)>], top: usize) -> Vec<(Box<str>, u64)> {
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for (name, count) in workers.iter().flatten() {
        *sums.entry(name).or_default() += count;
    }
    let mut all: Vec<(Box<str>, u64)> = sums.into_iter().map(|(n, c)| (n.into(), c)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(top);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(t: &TopConsumers) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = t
            .snapshot()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn within_capacity_counts_are_exact() {
        let mut t = TopConsumers::new(3);
        for name in ["a", "b", "a", "c", "a", "b"] {
            t.count(name);
        }
        assert_eq!(
            counts(&t),
            [("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]
        );
        let none = {
            let mut n = TopConsumers::new(0);
            n.count("a");
            n
        };
        assert!(none.snapshot().is_empty());
    }

    #[test]
    fn a_newcomer_takes_the_least_counted_slot_and_inherits_its_count() {
        let mut t = TopConsumers::new(2);
        for name in ["a", "a", "a", "b", "c"] {
            t.count(name);
        }
        // c replaced b (count 1) and counts 2: never under its true count.
        assert_eq!(counts(&t), [("a".into(), 3), ("c".into(), 2)]);
        t.count("c");
        assert_eq!(counts(&t), [("a".into(), 3), ("c".into(), 3)]);
        // b comes back into the least slot (a ties with c at 3: either).
        t.count("b");
        let after = counts(&t);
        assert_eq!(after.len(), 2);
        assert!(after.contains(&("b".into(), 4)));
    }

    #[test]
    fn heavy_consumers_always_hold_a_slot_among_a_long_tail() {
        let mut t = TopConsumers::new(4);
        for i in 0..10_000u32 {
            t.count("heavy");
            if i % 2 == 0 {
                t.count("medium");
            }
            t.count(&format!("tail-{i}"));
        }
        let c = counts(&t);
        assert!(c.iter().any(|(n, k)| n == "heavy" && *k >= 10_000), "{c:?}");
        assert!(c.iter().any(|(n, k)| n == "medium" && *k >= 5_000), "{c:?}");
        assert!(c.len() <= 4);
        // The index never points at a slot with another hash.
        for (hash, &i) in &t.index {
            assert_eq!(t.slots[i].hash, *hash);
        }
    }

    #[test]
    fn names_with_one_hash_are_told_apart() {
        let mut t = TopConsumers::new(3);
        t.count("a");
        // Simulate a collision: "b" lands on "a"'s index entry.
        let hash_a = t.slots[0].hash;
        let hash_b = t.hasher.hash_one("b");
        t.index.remove(&hash_a);
        t.slots[0].hash = hash_b;
        t.index.insert(hash_b, 0);
        t.count("b");
        assert_eq!(counts(&t), [("a".into(), 1), ("b".into(), 1)]);
        t.count("b");
        assert_eq!(counts(&t), [("a".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn merging_sums_workers_and_keeps_the_top() {
        let w1 = vec![("a".into(), 5), ("b".into(), 1)];
        let w2 = vec![("b".into(), 3), ("c".into(), 4)];
        assert_eq!(
            merge_top(&[w1.clone(), w2.clone()], 2),
            [("a".into(), 5), ("b".into(), 4)]
        );
        assert_eq!(merge_top(&[w1, w2], 0), []);
        // Ties are broken by name.
        let t = vec![("y".into(), 2), ("x".into(), 2)];
        assert_eq!(merge_top(&[t], 5), [("x".into(), 2), ("y".into(), 2)]);
    }
}
