//! Hit ratios of the cache shard's eviction (S3-FIFO, `cache::store`)
//! against LRU and CLOCK, and of per-core shards against one shared cache
//! of the same total size, on Zipf-distributed keys (α 0.9, 1.0, 1.1).
//! Not a timing benchmark: it prints ratios (`cargo bench --bench
//! cache_hit_ratio`). Deterministic (a fixed-seed generator).
//!
//! Per-core: each request goes to one of W shards at random (SO_REUSEPORT
//! spreads connections by hash; with many clients that is a uniform choice
//! per request), each shard with a W-th of the memory.

use std::collections::HashMap;

use bytes::Bytes;
use ringgate::cache::store::{Store, Variant};

const KEYS: usize = 100_000;
const REQUESTS: usize = 1_000_000;
const OBJECT: usize = 1_000;

/// xorshift64*: fast, deterministic, good enough to sample keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples key ranks 0..n with probability ∝ 1/(rank+1)^alpha.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, alpha: f64) -> Zipf {
        let mut cumulative = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 0..n {
            sum += 1.0 / ((rank + 1) as f64).powf(alpha);
            cumulative.push(sum);
        }
        for c in &mut cumulative {
            *c /= sum;
        }
        Zipf { cumulative }
    }
    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c < u)
            .min(self.cumulative.len() - 1)
    }
}

trait Cache {
    /// Looks `key` up; on a miss, stores it. Returns whether it hit.
    fn access(&mut self, key: u64) -> bool;
}

/// The gateway's shard.
struct S3Fifo(Store);

fn variant() -> Variant {
    Variant {
        secondary: Box::new([]),
        head: Bytes::new(),
        body: Bytes::from_static(&[0u8; OBJECT]),
        received: 0,
        initial_age: 0,
        lifetime: u64::MAX,
        stale_while_revalidate: 0,
        stale_if_error: 0,
        must_revalidate: false,
        no_cache: false,
        etag: None,
        last_modified: None,
        status: 200,
    }
}

impl Cache for S3Fifo {
    fn access(&mut self, key: u64) -> bool {
        let k = key.to_be_bytes();
        if self.0.get(&k).is_some() {
            return true;
        }
        self.0.insert(&k, None, variant());
        false
    }
}

/// The bytes one stored object costs the shard (to size the others alike).
fn object_cost() -> usize {
    let mut s = Store::new(1 << 20);
    s.insert(&0u64.to_be_bytes(), None, variant());
    s.used()
}

/// LRU over a slab-backed doubly linked list.
struct Lru {
    capacity: usize,
    map: HashMap<u64, usize>,
    nodes: Vec<(u64, usize, usize)>, // key, prev, next
    head: usize,
    tail: usize,
}

const NIL: usize = usize::MAX;

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            map: HashMap::new(),
            nodes: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }
    fn unlink(&mut self, i: usize) {
        let (_, prev, next) = self.nodes[i];
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].2 = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].1 = prev;
        }
    }
    fn push_front(&mut self, i: usize) {
        self.nodes[i].1 = NIL;
        self.nodes[i].2 = self.head;
        if self.head != NIL {
            self.nodes[self.head].1 = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }
}

impl Cache for Lru {
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.map.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.map.len() >= self.capacity {
            let victim = self.tail;
            self.unlink(victim);
            self.map.remove(&self.nodes[victim].0);
            self.nodes[victim].0 = key;
            victim
        } else {
            self.nodes.push((key, NIL, NIL));
            self.nodes.len() - 1
        };
        self.map.insert(key, i);
        self.push_front(i);
        false
    }
}

/// CLOCK (second chance).
struct Clock {
    capacity: usize,
    map: HashMap<u64, usize>,
    slots: Vec<(u64, bool)>,
    hand: usize,
}

impl Cache for Clock {
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.map.get(&key) {
            self.slots[i].1 = true;
            return true;
        }
        if self.slots.len() < self.capacity {
            self.map.insert(key, self.slots.len());
            self.slots.push((key, false));
            return false;
        }
        loop {
            let (old, referenced) = self.slots[self.hand];
            if referenced {
                self.slots[self.hand].1 = false;
                self.hand = (self.hand + 1) % self.capacity;
                continue;
            }
            self.map.remove(&old);
            self.slots[self.hand] = (key, false);
            self.map.insert(key, self.hand);
            self.hand = (self.hand + 1) % self.capacity;
            return false;
        }
    }
}

/// Hit ratio of `shards` caches, each request to a random one.
fn hit_ratio(shards: &mut [Box<dyn Cache>], zipf: &Zipf, seed: u64) -> f64 {
    let mut rng = Rng(seed);
    let mut hits = 0;
    for _ in 0..REQUESTS {
        let key = zipf.sample(&mut rng) as u64;
        let shard = (rng.next() % shards.len() as u64) as usize;
        if shards[shard].access(key) {
            hits += 1;
        }
    }
    hits as f64 / REQUESTS as f64
}

fn main() {
    let cost = object_cost();
    println!("{KEYS} keys, {REQUESTS} requests, objects of {OBJECT} B ({cost} B in a shard)\n");
    println!("| α | cache holds | S3-FIFO | LRU | CLOCK | S3-FIFO, 4 per-core shards | 8 shards |");
    println!("|---|---|---|---|---|---|---|");
    for alpha in [0.9, 1.0, 1.1] {
        let zipf = Zipf::new(KEYS, alpha);
        for percent in [1, 5, 10] {
            let objects = KEYS * percent / 100;
            let bytes = objects * cost;
            let shared = |n: usize| -> Vec<Box<dyn Cache>> {
                (0..n)
                    .map(|_| Box::new(S3Fifo(Store::new(bytes / n))) as Box<dyn Cache>)
                    .collect()
            };
            let s3 = hit_ratio(&mut shared(1), &zipf, 7);
            let lru = hit_ratio(
                &mut [Box::new(Lru::new(objects)) as Box<dyn Cache>],
                &zipf,
                7,
            );
            let clock = hit_ratio(
                &mut [Box::new(Clock {
                    capacity: objects,
                    map: HashMap::new(),
                    slots: Vec::new(),
                    hand: 0,
                }) as Box<dyn Cache>],
                &zipf,
                7,
            );
            let four = hit_ratio(&mut shared(4), &zipf, 7);
            let eight = hit_ratio(&mut shared(8), &zipf, 7);
            println!(
                "| {alpha} | {percent} % of keys | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % |",
                s3 * 100.0,
                lru * 100.0,
                clock * 100.0,
                four * 100.0,
                eight * 100.0
            );
        }
    }
}
