//! [cold] The aggregator thread: the one place that knows how much of each
//! node- and cluster-scope limit is left.
//!
//! Every sync interval it drains the workers' reports (running totals of
//! admissions per key), charges what is new to each key's exact bucket or
//! window, and sends every worker a view of each key that changed: what is
//! left, and the instant (two intervals ahead) from which all workers use
//! that figure. Workers never wait for it: between views they keep
//! admitting against their 1/N part of the last figure (`shared.rs`).
//!
//! Cluster-scope keys are also charged to Redis by the cluster thread
//! (`cluster.rs`); the figure this thread publishes for them is this node's
//! part of what Redis says is left cluster-wide.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::shared::{SHARE_ONE, View, window_start};
use super::sync::{KeySpan, Keyed, Report, ReportRecord, ViewBatch, ViewRecord};
use super::{KeyTable, clock, tier_kind};
use crate::snapshot::{LimitKind, LimitScope, RateLimitPolicy, Snapshot};

/// Upper bounds (seconds) of the tick-duration histogram buckets.
pub const TICK_BUCKETS: [f64; 8] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05,
];

/// What the aggregator tells the metrics endpoint. Written once per tick
/// by one thread, read by scrapes: relaxed atomics, off the request path.
#[derive(Debug, Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub tick_nanos_sum: AtomicU64,
    /// Cumulative counts per `TICK_BUCKETS` bound.
    pub tick_buckets: [AtomicU64; 8],
    /// Keys tracked across node- and cluster-scope policies.
    pub keys: AtomicU64,
    /// Failed Redis sync rounds (connect, auth, I/O, timeout, bad reply).
    pub redis_errors: AtomicU64,
    /// 1 while the last Redis sync round succeeded.
    pub redis_up: AtomicU64,
    /// Nodes sharing cluster limits, as last seen in Redis.
    pub cluster_nodes: AtomicU64,
}

impl Stats {
    fn record_tick(&self, took: Duration) {
        let secs = took.as_secs_f64();
        self.ticks.fetch_add(1, Relaxed);
        self.tick_nanos_sum
            .fetch_add(took.as_nanos() as u64, Relaxed);
        for (bound, count) in TICK_BUCKETS.iter().zip(&self.tick_buckets) {
            if secs <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
    }
}

pub enum Control {
    Reload(Arc<Snapshot>),
    Stop,
}

pub struct Handle {
    pub control: Sender<Control>,
    pub stats: Arc<Stats>,
    thread: std::thread::JoinHandle<()>,
}

impl Handle {
    pub fn stop(self) {
        let _ = self.control.send(Control::Stop);
        let _ = self.thread.join();
    }
}

/// The channels between the workers and the aggregator. Bounded (array
/// based), so passing a message never allocates; a worker whose report
/// does not fit drops it, and its running totals go out with the next.
pub struct Channels {
    pub reports: (Sender<Report>, Receiver<Report>),
    pub views: Vec<(Sender<ViewBatch>, Receiver<ViewBatch>)>,
}

impl Channels {
    pub fn new(workers: usize) -> Channels {
        Channels {
            reports: crossbeam_channel::bounded(workers * 4 + 4),
            views: (0..workers)
                .map(|_| crossbeam_channel::bounded(8))
                .collect(),
        }
    }
}

/// Starts the aggregator. `reports` is the receiving end of the channel
/// every worker reports on; `workers[i]` reaches worker i.
pub fn spawn(
    snapshot: Arc<Snapshot>,
    reports: Receiver<Report>,
    workers: Vec<Sender<ViewBatch>>,
) -> std::io::Result<Handle> {
    let (control, control_rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(Stats::default());
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("ringgate-limits".into())
        .spawn(move || {
            let mut aggregator = Aggregator::new(snapshot, workers, thread_stats);
            aggregator.run(&reports, &control_rx);
        })?;
    Ok(Handle {
        control,
        stats,
        thread,
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    incarnation: u32,
    admitted: u64,
    attempts: u64,
    demand: u64,
}

/// Of what is left, the part (in 1/65536ths) each worker admits from: a
/// small equal floor so that a worker meeting the key for the first time in
/// a while can still admit a few, the rest in proportion to each worker's
/// demand since the last view. Parts sum to exactly `SHARE_ONE`.
fn shares(seen: &[Seen], out: &mut [u32]) {
    let n = seen.len() as u64;
    let total: u64 = seen.iter().map(|s| s.demand).sum();
    if total == 0 || n == 0 {
        out.fill(0);
        return;
    }
    let one = u64::from(SHARE_ONE);
    let floor = one / 10 / n; // 10% of the whole split evenly
    let spread = one - floor * n;
    let mut given = 0;
    for (part, s) in out.iter_mut().zip(seen) {
        let p = floor + (u128::from(spread) * u128::from(s.demand) / u128::from(total)) as u64;
        *part = p as u32;
        given += p;
    }
    // Rounding leftovers go to the busiest worker.
    if let Some((i, _)) = seen.iter().enumerate().max_by_key(|(_, s)| s.demand) {
        out[i] += (one - given) as u32;
    }
}

/// One key's exact state in the aggregator.
struct NodeKey {
    tier: u32,
    /// Buckets: units at `at` (negative: debt). Windows: requests left in
    /// the window starting at `at`.
    available: i128,
    at: u64,
    /// Per worker: the entry incarnation and running totals (admitted,
    /// attempts) last counted, and the attempts since the last view.
    seen: Box<[Seen]>,
    /// When the last view sent for this key takes effect; no newer view is
    /// sent before then, so a worker holds at most one pending view.
    view_effective: u64,
    /// Charged since the last view: listed for the next one.
    waiting: bool,
}

impl NodeKey {
    fn new(tier: u32, kind: LimitKind, now: u64, workers: usize) -> NodeKey {
        let fresh = View::fresh(kind, now, 1);
        NodeKey {
            tier,
            available: fresh.available,
            at: fresh.at,
            seen: vec![Seen::default(); workers].into_boxed_slice(),
            view_effective: 0,
            waiting: false,
        }
    }

    /// Brings the state up to `now`: refill, or a new window.
    fn advance(&mut self, kind: LimitKind, now: u64) {
        match kind {
            LimitKind::Bucket { rate, burst } => {
                let cap = i128::from(burst) * i128::from(rate.per_nanos);
                let elapsed = i128::from(now.saturating_sub(self.at));
                self.available = (self.available + elapsed * i128::from(rate.tokens)).min(cap);
                self.at = self.at.max(now);
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => {
                let start = window_start(now, window_nanos);
                if start > self.at {
                    self.at = start;
                    self.available = i128::from(limit);
                }
            }
        }
    }

    /// How many of a worker's reported admissions are new (and notes its
    /// new attempts as demand).
    fn newly_admitted(&mut self, worker: usize, r: &ReportRecord) -> u64 {
        let Some(seen) = self.seen.get_mut(worker) else {
            return 0;
        };
        let known = seen.incarnation == r.incarnation && r.admitted >= seen.admitted;
        // A new entry at the worker (or one this table never saw):
        // everything it reports is new.
        let (admitted, attempts) = if known {
            (
                r.admitted - seen.admitted,
                r.attempts.saturating_sub(seen.attempts),
            )
        } else {
            (r.admitted, r.attempts)
        };
        *seen = Seen {
            incarnation: r.incarnation,
            admitted: r.admitted,
            attempts: r.attempts,
            demand: seen.demand + attempts,
        };
        admitted
    }

    fn charge(&mut self, kind: LimitKind, admitted: u64, window: u64, now: u64) {
        self.advance(kind, now);
        match kind {
            LimitKind::Bucket { rate, .. } => {
                self.available -= i128::from(admitted) * i128::from(rate.per_nanos);
            }
            LimitKind::Window { limit, .. } => {
                if window > self.at {
                    self.at = window;
                    self.available = i128::from(limit);
                }
                // Admissions reported for an earlier window no longer matter.
                if window == self.at {
                    self.available -= i128::from(admitted);
                }
            }
        }
    }

    fn is_fresh(&self, kind: LimitKind, now: u64) -> bool {
        let mut probe = View {
            available: self.available,
            at: self.at,
            nodes: 1,
            share: 0,
        };
        if let LimitKind::Bucket { .. } = kind {
            probe.at = self.at.min(now);
        }
        !self.waiting && now >= self.view_effective && probe.is_full(kind, now)
    }
}

struct PolicyState {
    policy: RateLimitPolicy,
    table: KeyTable<NodeKey>,
    /// Keys charged since their last view, waiting for the next one.
    waiting: Keyed<KeySpan>,
    /// The list being drained while `waiting` collects keys for next tick.
    draining: Keyed<KeySpan>,
}

impl PolicyState {
    fn new(policy: RateLimitPolicy) -> PolicyState {
        PolicyState {
            table: KeyTable::new(policy.max_keys),
            policy,
            waiting: Keyed::default(),
            draining: Keyed::default(),
        }
    }
}

struct Aggregator {
    snapshot: Arc<Snapshot>,
    policies: Vec<PolicyState>,
    workers: Vec<Sender<ViewBatch>>,
    stats: Arc<Stats>,
    /// Buffers for the next batch to each worker (reused).
    spare_views: Vec<Keyed<ViewRecord>>,
    /// Report buffers to hand back to each worker with its next batch.
    spare_reports: Vec<Option<Keyed<ReportRecord>>>,
    /// Scratch for one key's per-worker shares.
    shares: Vec<u32>,
}

impl Aggregator {
    fn new(snapshot: Arc<Snapshot>, workers: Vec<Sender<ViewBatch>>, stats: Arc<Stats>) -> Self {
        let n = workers.len();
        Aggregator {
            policies: snapshot
                .rate_limits
                .iter()
                .cloned()
                .map(PolicyState::new)
                .collect(),
            snapshot,
            workers,
            stats,
            spare_views: (0..n).map(|_| Keyed::default()).collect(),
            spare_reports: (0..n).map(|_| None).collect(),
            shares: vec![0; n],
        }
    }

    fn run(&mut self, reports: &Receiver<Report>, control: &Receiver<Control>) {
        let mut next_tick = Instant::now();
        loop {
            let shared = super::Limiter::has_shared(&self.snapshot.rate_limits);
            // With no shared policy there is nothing to do but wait for a
            // reload or the stop; reports cannot arrive.
            let interval = if shared {
                self.snapshot.rate_limit_sync
            } else {
                Duration::from_millis(200)
            };
            next_tick += interval;
            let now = Instant::now();
            if next_tick < now {
                next_tick = now;
            }
            match control.recv_timeout(next_tick - now) {
                Ok(Control::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return;
                }
                Ok(Control::Reload(snapshot)) => self.reload(snapshot),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if shared {
                let started = Instant::now();
                self.tick(reports, clock::now());
                self.stats.record_tick(started.elapsed());
            }
        }
    }

    /// A new config: unchanged policies keep their keys' state.
    fn reload(&mut self, snapshot: Arc<Snapshot>) {
        let mut old = std::mem::take(&mut self.policies);
        self.policies = snapshot
            .rate_limits
            .iter()
            .map(|p| match old.iter().position(|o| o.policy == *p) {
                Some(i) => old.swap_remove(i),
                None => PolicyState::new(p.clone()),
            })
            .collect();
        self.snapshot = snapshot;
    }

    fn tick(&mut self, reports: &Receiver<Report>, now: u64) {
        let workers = self.workers.len();
        while let Ok(mut report) = reports.try_recv() {
            if let Some(spare) = report.spare.take()
                && let Some(slot) = self.spare_views.get_mut(report.worker)
                && slot.records.capacity() < spare.records.capacity()
            {
                *slot = spare;
            }
            if report.snapshot == self.snapshot.id {
                self.charge(&report, now, workers);
            }
            if let Some(slot) = self.spare_reports.get_mut(report.worker) {
                *slot = Some(report.entries);
            }
        }
        self.publish(now);
        let keys: usize = self.policies.iter().map(|p| p.table.len()).sum();
        self.stats.keys.store(keys as u64, Relaxed);
    }

    fn charge(&mut self, report: &Report, now: u64, workers: usize) {
        for r in &report.entries.records {
            let Some(state) = self.policies.get_mut(r.policy as usize) else {
                continue;
            };
            if state.policy.scope == LimitScope::Worker {
                continue;
            }
            let kind = tier_kind(&state.policy, r.tier as usize);
            let key = report.entries.key(r.key);
            let policy = &state.policy;
            let entry = state.table.get_or_insert(
                key,
                || NodeKey::new(r.tier, kind, now, workers),
                |k| k.is_fresh(tier_kind(policy, k.tier as usize), now),
            );
            if entry.tier != r.tier {
                *entry = NodeKey::new(r.tier, kind, now, workers);
            }
            let admitted = entry.newly_admitted(report.worker, r);
            entry.charge(kind, admitted, r.window, now);
            if !entry.waiting {
                entry.waiting = true;
                let span = state.waiting.push_key(key);
                state.waiting.records.push(span);
            }
        }
    }

    /// Sends a view of every charged key whose previous view is in effect.
    fn publish(&mut self, now: u64) {
        let effective = now + 4 * self.snapshot.rate_limit_sync.as_nanos() as u64;
        let batches = &mut self.spare_views;
        for b in batches.iter_mut() {
            b.clear();
        }
        for (index, state) in self.policies.iter_mut().enumerate() {
            if state.waiting.is_empty() {
                continue;
            }
            std::mem::swap(&mut state.waiting, &mut state.draining);
            state.waiting.clear();
            for span in &state.draining.records {
                let key = state.draining.key(*span);
                let Some(entry) = state.table.get_mut(key) else {
                    continue;
                };
                if now < entry.view_effective {
                    // Its previous view is not in force yet: next tick.
                    let again = state.waiting.push_key(key);
                    state.waiting.records.push(again);
                    continue;
                }
                let kind = tier_kind(&state.policy, entry.tier as usize);
                entry.advance(kind, now);
                entry.waiting = false;
                entry.view_effective = effective;
                shares(&entry.seen, &mut self.shares);
                for (worker, batch) in batches.iter_mut().enumerate() {
                    let span = batch.push_key(key);
                    let seen = &mut entry.seen[worker];
                    batch.records.push(ViewRecord {
                        policy: index as u32,
                        tier: entry.tier,
                        key: span,
                        view: View {
                            available: entry.available,
                            at: entry.at,
                            nodes: 1,
                            share: self.shares[worker],
                        },
                        effective,
                        incarnation: seen.incarnation,
                        counted: seen.admitted,
                    });
                    seen.demand = 0;
                }
            }
        }
        for (worker, tx) in self.workers.iter().enumerate() {
            if self.spare_views[worker].is_empty() {
                continue;
            }
            let batch = ViewBatch {
                snapshot: self.snapshot.id,
                nodes: 1,
                entries: std::mem::take(&mut self.spare_views[worker]),
                spare: self.spare_reports[worker].take(),
            };
            if let Err(e) = tx.try_send(batch) {
                // The worker is far behind: publish these keys again next
                // tick rather than leave it on views that are out of date.
                let batch = e.into_inner();
                for r in &batch.entries.records {
                    let key = batch.entries.key(r.key);
                    if let Some(state) = self.policies.get_mut(r.policy as usize)
                        && let Some(entry) = state.table.get_mut(key)
                        && !entry.waiting
                    {
                        entry.waiting = true;
                        entry.view_effective = 0;
                        let span = state.waiting.push_key(key);
                        state.waiting.records.push(span);
                    }
                }
                self.spare_views[worker] = batch.entries;
                self.spare_reports[worker] = batch.spare;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole node-scope loop on simulated time: N worker limiters and
    //! the aggregator, exchanging reports and views through the real
    //! channels, each worker ticking at its own phase.
    use super::*;
    use crate::ratelimit::Limiter;

    const MS: u64 = 1_000_000;

    fn snapshot(limit: &str, workers: usize) -> Arc<Snapshot> {
        let text = format!(
            "workers = {workers}\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[rate_limits.p]\nkey = \"global\"\nscope = \"node\"\n{limit}\n[[routes]]\nname = \"r\"\nrate_limits = [\"p\"]\n[routes.respond]\nstatus = 200\n"
        );
        Arc::new(crate::config::load_str(&text, "test").expect("valid config"))
    }

    /// Runs `millis` of simulated time; `demand(worker, ms)` is how many
    /// requests arrive at that worker in that millisecond. Returns the
    /// requests admitted per millisecond, node-wide.
    fn simulate(
        snapshot: &Arc<Snapshot>,
        millis: u64,
        start: u64,
        demand: impl Fn(usize, u64) -> u64,
    ) -> Vec<u64> {
        let n = snapshot.workers;
        let channels = Channels::new(n);
        let mut aggregator = Aggregator::new(
            snapshot.clone(),
            channels.views.iter().map(|(tx, _)| tx.clone()).collect(),
            Arc::new(Stats::default()),
        );
        let policy = &snapshot.rate_limits[0];
        let mut limiters: Vec<Limiter> = (0..n)
            .map(|_| Limiter::new(&snapshot.rate_limits, snapshot.id, n))
            .collect();
        let mut admitted = Vec::new();
        let tick = snapshot.rate_limit_sync.as_nanos() as u64 / MS;
        for ms in 0..millis {
            let now = start + ms * MS;
            let mut this_ms = 0;
            for (w, limiter) in limiters.iter_mut().enumerate() {
                // Workers tick out of phase with each other and the aggregator.
                if (ms + 3 * w as u64 + 1).is_multiple_of(tick) {
                    while let Ok(batch) = channels.views[w].1.try_recv() {
                        limiter.apply(&batch, &snapshot.rate_limits, now);
                    }
                    let mut entries = Keyed::default();
                    limiter.take_report(&mut entries);
                    let _ = channels.reports.0.try_send(Report {
                        worker: w,
                        snapshot: snapshot.id,
                        entries,
                        spare: None,
                    });
                }
                for i in 0..demand(w, ms) {
                    let at = now + i * 1000;
                    if limiter.check(0, policy, b"", None, at).allowed {
                        this_ms += 1;
                    }
                }
            }
            if ms.is_multiple_of(tick) {
                aggregator.tick(&channels.reports.1, now);
            }
            admitted.push(this_ms);
        }
        admitted
    }

    #[test]
    fn a_window_quota_holds_across_workers_evenly_or_all_on_one() {
        let snap = snapshot("limit = 1000\nwindow = \"1s\"", 4);
        // Start 100 ms into a window; look at the next whole window.
        let start = 1_000_000 * 1000 * MS + 900 * MS;
        for (name, skewed) in [("even", false), ("one worker", true)] {
            let admitted = simulate(&snap, 2_100, start, |w, _| {
                if skewed {
                    if w == 0 { 20 } else { 0 }
                } else {
                    5
                }
            });
            let window: u64 = admitted[100..1100].iter().sum();
            assert!(
                window <= 1000 + 3,
                "{name}: {window} admitted in one window of 1000"
            );
            assert!(window >= 980, "{name}: only {window} of 1000 admitted");
        }
    }

    #[test]
    fn a_token_bucket_rate_holds_when_all_traffic_is_on_one_worker() {
        let snap = snapshot("rate = \"1000/s\"\nburst = 100", 4);
        for skewed in [false, true] {
            let admitted = simulate(&snap, 10_000, 5 * 1_000_000 * 1000 * MS, |w, _| {
                if skewed {
                    if w == 0 { 8 } else { 0 }
                } else {
                    2
                }
            });
            let total: u64 = admitted.iter().sum();
            let expected = 100 + 10_000; // burst + rate × 10 s
            let error = (total as f64 - expected as f64).abs() / expected as f64;
            assert!(
                error < 0.02,
                "skewed={skewed}: {total} admitted, expected {expected}"
            );
            // Never more than the burst plus the rounding in any 100 ms.
            for chunk in admitted.chunks(100).skip(1) {
                let sum: u64 = chunk.iter().sum();
                assert!(sum <= 100 + 100 + 3, "skewed={skewed}: {sum} in 100 ms");
            }
        }
    }
}
