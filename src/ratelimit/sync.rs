//! The messages of node- and cluster-scope limiting. Workers send the
//! aggregator a `Report` each tick (every key they admitted requests for,
//! with their running total for it); the aggregator answers every worker
//! with a `GrantBatch` (each key's new grant for that worker: what it may
//! admit, from when on). Both carry their keys' bytes in one
//! arena, and each side hands the other's buffers back over a return
//! channel once it has read them, so a steady exchange allocates nothing.
//!
//! Both sides start with a stock of buffers sized for `STOCK_RECORDS` keys
//! and never make a new one while running: with every buffer in flight (the
//! other side is late), a side waits a tick rather than allocate. A buffer
//! grows only when more keys than it holds are exchanged at once.

/// Records a stock buffer has room for before it grows.
pub const STOCK_RECORDS: usize = 64;
/// Key bytes a stock buffer has room for before it grows.
pub const STOCK_KEY_BYTES: usize = 4096;

/// Records whose keys live in one shared byte arena.
#[derive(Debug)]
pub struct Keyed<R> {
    pub records: Vec<R>,
    pub keys: Vec<u8>,
}

impl<R> Default for Keyed<R> {
    fn default() -> Self {
        Keyed {
            records: Vec::new(),
            keys: Vec::new(),
        }
    }
}

/// Where a record's key sits in its arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpan {
    start: u32,
    len: u32,
}

impl KeySpan {
    pub fn slice(self, arena: &[u8]) -> &[u8] {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}

impl<R> Keyed<R> {
    /// An empty buffer with room for `STOCK_RECORDS` keys.
    pub fn stock() -> Self {
        Keyed {
            records: Vec::with_capacity(STOCK_RECORDS),
            keys: Vec::with_capacity(STOCK_KEY_BYTES),
        }
    }

    /// Appends `key` to the arena; the span goes into the record.
    pub fn push_key(&mut self, key: &[u8]) -> KeySpan {
        let start = self.keys.len() as u32;
        self.keys.extend_from_slice(key);
        KeySpan {
            start,
            len: key.len() as u32,
        }
    }

    pub fn key(&self, span: KeySpan) -> &[u8] {
        span.slice(&self.keys)
    }

    pub fn clear(&mut self) {
        self.records.clear();
        self.keys.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A worker's running total for one key.
#[derive(Debug, Clone, Copy)]
pub struct ReportRecord {
    pub policy: u32,
    pub tier: u32,
    pub key: KeySpan,
    /// Which life of the worker's entry for this key the total counts
    /// (an evicted and recreated entry counts from zero again).
    pub incarnation: u32,
    /// Requests this entry has admitted since it was created.
    pub admitted: u64,
    /// Requests this entry has seen (admitted or refused): the demand that
    /// sizes each worker's share.
    pub attempts: u64,
    /// Window policies: the window the latest of them fell in.
    pub window: u64,
    /// The grant the entry works under (its `start`), and how many of the
    /// entry's admissions it took over from the grant before (admitted
    /// while it was pending).
    pub grant_start: u64,
    pub carried: u64,
}

/// One key's new grant, for one worker.
#[derive(Debug, Clone, Copy)]
pub struct GrantRecord {
    pub policy: u32,
    pub tier: u32,
    pub key: KeySpan,
    pub grant: super::shared::Grant,
    /// The worker's entry incarnation and running total that `grant` has
    /// already counted.
    pub incarnation: u32,
    pub counted: u64,
}

#[derive(Debug)]
pub struct Report {
    pub worker: usize,
    /// `Snapshot::id` of the generation whose policy indices these are.
    pub snapshot: u64,
    pub entries: Keyed<ReportRecord>,
}

#[derive(Debug)]
pub struct GrantBatch {
    pub snapshot: u64,
    pub entries: Keyed<GrantRecord>,
}
