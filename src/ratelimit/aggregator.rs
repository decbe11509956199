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

use super::shared::{Grant, SHARE_ONE, part, window_start};
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
type Pair<T> = (Sender<T>, Receiver<T>);

pub struct Channels {
    pub reports: Pair<Report>,
    pub views: Vec<Pair<ViewBatch>>,
    /// Read report buffers going back to each worker.
    pub report_returns: Vec<Pair<Keyed<ReportRecord>>>,
    /// Read batch buffers going back to the aggregator.
    pub view_returns: Pair<Keyed<ViewRecord>>,
}

impl Channels {
    pub fn new(workers: usize) -> Channels {
        Channels {
            reports: crossbeam_channel::bounded(workers * 4 + 4),
            views: (0..workers)
                .map(|_| crossbeam_channel::bounded(8))
                .collect(),
            report_returns: (0..workers)
                .map(|_| crossbeam_channel::bounded(8))
                .collect(),
            view_returns: crossbeam_channel::bounded(workers * 8 + 8),
        }
    }

    /// What the aggregator thread holds.
    pub fn aggregator_side(&self) -> AggregatorChannels {
        AggregatorChannels {
            reports: self.reports.1.clone(),
            views: self.views.iter().map(|(tx, _)| tx.clone()).collect(),
            report_returns: self
                .report_returns
                .iter()
                .map(|(tx, _)| tx.clone())
                .collect(),
            view_returns: self.view_returns.1.clone(),
        }
    }
}

/// What one worker holds.
pub struct WorkerChannels {
    pub reports: Sender<Report>,
    pub views: Receiver<ViewBatch>,
    pub report_returns: Receiver<Keyed<ReportRecord>>,
    pub view_returns: Sender<Keyed<ViewRecord>>,
}

impl WorkerChannels {
    pub fn new(channels: &Channels, worker: usize) -> WorkerChannels {
        WorkerChannels {
            reports: channels.reports.0.clone(),
            views: channels.views[worker].1.clone(),
            report_returns: channels.report_returns[worker].1.clone(),
            view_returns: channels.view_returns.0.clone(),
        }
    }
}

pub struct AggregatorChannels {
    reports: Receiver<Report>,
    views: Vec<Sender<ViewBatch>>,
    report_returns: Vec<Sender<Keyed<ReportRecord>>>,
    view_returns: Receiver<Keyed<ViewRecord>>,
}

/// Starts the aggregator. `reports` is the receiving end of the channel
/// every worker reports on; `workers[i]` reaches worker i.
pub fn spawn(snapshot: Arc<Snapshot>, channels: AggregatorChannels) -> std::io::Result<Handle> {
    let (control, control_rx) = crossbeam_channel::unbounded();
    let stats = Arc::new(Stats::default());
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("ringgate-limits".into())
        .spawn(move || {
            let mut aggregator = Aggregator::new(snapshot, channels, thread_stats);
            aggregator.run(&control_rx);
        })?;
    Ok(Handle {
        control,
        stats,
        thread,
    })
}

/// What the aggregator knows of one worker's side of one key.
#[derive(Debug, Clone, Copy)]
struct Seen {
    incarnation: u32,
    /// Running totals last reported.
    admitted: u64,
    attempts: u64,
    /// Attempts since the last grant: this worker's recent demand.
    demand: u64,
    /// The worker's latest grant, the running total it counts from, and
    /// what the worker may still have admitted under the grant before it.
    grant: Grant,
    base: u64,
    carried: u64,
}

impl Seen {
    fn new(kind: LimitKind, now: u64, parts: u64) -> Seen {
        Seen {
            incarnation: 0,
            admitted: 0,
            attempts: 0,
            demand: 0,
            grant: Grant::fresh(kind, now, parts),
            base: 0,
            carried: 0,
        }
    }

    /// The most this worker's running total can reach by `t` under what it
    /// holds: what it admitted under its previous grant while the latest
    /// was pending (at most `carried`), plus the latest grant.
    fn ceiling(&self, kind: LimitKind, t: u64, parts: u64) -> u64 {
        self.base + self.carried + self.grant.allowance(kind, t, parts)
    }
}

/// Of what is left, the part (in 1/`SHARE_ONE`ths) each worker gets: a
/// small equal floor, so that a worker meeting the key for the first time
/// in a while can still admit a few at once, and the rest in proportion to
/// each worker's demand since the last grant. Parts sum to `SHARE_ONE`.
fn shares(seen: &[Seen], out: &mut [u64]) {
    let n = seen.len().max(1) as u64;
    let total: u64 = seen.iter().map(|s| s.demand).sum();
    let (floor, spread) = if total == 0 {
        (SHARE_ONE / n, 0)
    } else {
        let floor = SHARE_ONE / 10 / n; // 10% of the whole, split evenly
        (floor, SHARE_ONE - floor * n)
    };
    let mut given = 0;
    for (part, s) in out.iter_mut().zip(seen) {
        let p =
            floor + (u128::from(spread) * u128::from(s.demand) / u128::from(total.max(1))) as u64;
        *part = p;
        given += p;
    }
    // Rounding leftovers go to the busiest worker.
    if let Some((i, _)) = seen.iter().enumerate().max_by_key(|(_, s)| s.demand) {
        out[i] += SHARE_ONE - given;
    }
}

/// One key's exact state in the aggregator.
struct NodeKey {
    tier: u32,
    /// Buckets: units at `at` (negative: debt). Windows: requests left in
    /// the window starting at `at`.
    available: i128,
    at: u64,
    seen: Box<[Seen]>,
    /// When the last grants sent for this key take effect; no newer ones
    /// are sent before then, so a worker holds at most one pending grant.
    grants_effective: u64,
    /// Charged since the last grants: listed for the next ones.
    waiting: bool,
}

impl NodeKey {
    fn new(tier: u32, kind: LimitKind, now: u64, workers: usize) -> NodeKey {
        let parts = workers as u64;
        let (available, at) = match kind {
            LimitKind::Bucket { rate, burst } => {
                (i128::from(burst) * i128::from(rate.per_nanos), now)
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => (i128::from(limit), window_start(now, window_nanos)),
        };
        NodeKey {
            tier,
            available,
            at,
            seen: vec![Seen::new(kind, now, parts); workers].into_boxed_slice(),
            grants_effective: 0,
            waiting: false,
        }
    }

    /// Brings the state up to `now`: refill, or a new window (in which
    /// every worker starts again from an equal part).
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
                    self.roll(kind, start, limit);
                }
            }
        }
    }

    fn roll(&mut self, kind: LimitKind, start: u64, limit: u64) {
        self.at = start;
        self.available = i128::from(limit);
        let parts = self.seen.len() as u64;
        for s in self.seen.iter_mut() {
            s.grant = Grant::fresh(kind, start, parts);
            s.base = s.admitted;
            s.carried = 0;
        }
    }

    /// Takes a worker's running totals: returns how many admissions are
    /// new, and notes its new attempts as demand.
    fn newly_admitted(
        &mut self,
        worker: usize,
        r: &ReportRecord,
        kind: LimitKind,
        now: u64,
    ) -> u64 {
        let parts = self.seen.len() as u64;
        let Some(seen) = self.seen.get_mut(worker) else {
            return 0;
        };
        if seen.incarnation == 0 {
            // The first report of this worker's entry, which counts from
            // zero under whatever grant it holds (the default, or ours).
            seen.incarnation = r.incarnation;
        } else if seen.incarnation != r.incarnation || r.admitted < seen.admitted {
            // The worker evicted its entry and made a new one: it counts
            // from zero again, under the default grant.
            *seen = Seen::new(kind, now, parts);
            seen.incarnation = r.incarnation;
        }
        let admitted = r.admitted - seen.admitted;
        if r.grant_start == seen.grant.start {
            // The worker works under the latest grant: what it carried over
            // from the one before is known exactly now.
            seen.carried = seen.carried.min(r.carried);
        }
        seen.demand += r.attempts.saturating_sub(seen.attempts);
        seen.admitted = r.admitted;
        seen.attempts = r.attempts;
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
                    self.roll(kind, window, limit);
                }
                // Admissions reported for an earlier window no longer matter.
                if window == self.at {
                    self.available -= i128::from(admitted);
                }
            }
        }
    }

    /// Requests left at `t` if nobody admitted any more (refill included).
    fn left_at(&self, kind: LimitKind, t: u64) -> u64 {
        let left = match kind {
            LimitKind::Bucket { rate, burst } => {
                let one = i128::from(rate.per_nanos.max(1));
                let elapsed = i128::from(t.saturating_sub(self.at));
                let units = (self.available + elapsed * i128::from(rate.tokens))
                    .min(i128::from(burst) * one);
                units.div_euclid(one)
            }
            LimitKind::Window { .. } => self.available,
        };
        left.max(0) as u64
    }

    fn is_fresh(&self, kind: LimitKind, now: u64) -> bool {
        let parts = self.seen.len() as u64;
        let full = match kind {
            LimitKind::Bucket { burst, .. } => self.left_at(kind, now) >= burst,
            LimitKind::Window {
                limit,
                window_nanos,
            } => window_start(now, window_nanos) > self.at || self.available >= i128::from(limit),
        };
        !self.waiting
            && now >= self.grants_effective
            && full
            && self
                .seen
                .iter()
                .all(|s| s.grant.is_default(kind, now, parts))
    }

    /// New grants, effective at `effective`, for every worker: what is
    /// left then, less what each worker may still admit under the grants
    /// it holds until then, split by demand.
    fn grant(&mut self, kind: LimitKind, now: u64, effective: u64, shares_out: &mut [u64]) {
        self.advance(kind, now);
        let parts = self.seen.len() as u64;
        let mut reserved = 0u64;
        for s in self.seen.iter_mut() {
            let out = s.ceiling(kind, effective, parts).saturating_sub(s.admitted);
            s.carried = out;
            reserved = reserved.saturating_add(out);
        }
        let left = self.left_at(kind, effective);
        let pool = left.saturating_sub(reserved);
        shares(&self.seen, shares_out);
        for (s, &share) in self.seen.iter_mut().zip(shares_out.iter()) {
            s.grant = Grant {
                amount: part(pool, share),
                share,
                cap: match kind {
                    LimitKind::Bucket { burst, .. } => part(burst, share),
                    LimitKind::Window { .. } => 0,
                },
                start: effective,
                window: match kind {
                    LimitKind::Bucket { .. } => 0,
                    LimitKind::Window { .. } => self.at,
                },
                node_left: left,
            };
            s.base = s.admitted;
            s.demand = 0;
        }
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
    channels: AggregatorChannels,
    stats: Arc<Stats>,
    /// The next batch to each worker, being built.
    batches: Vec<Keyed<ViewRecord>>,
    /// Scratch for one key's per-worker shares.
    shares: Vec<u64>,
}

impl Aggregator {
    fn new(snapshot: Arc<Snapshot>, channels: AggregatorChannels, stats: Arc<Stats>) -> Self {
        let n = channels.views.len();
        Aggregator {
            policies: snapshot
                .rate_limits
                .iter()
                .cloned()
                .map(PolicyState::new)
                .collect(),
            snapshot,
            channels,
            stats,
            batches: (0..n).map(|_| Keyed::default()).collect(),
            shares: vec![0; n],
        }
    }

    fn run(&mut self, control: &Receiver<Control>) {
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
                self.tick(clock::now());
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

    fn tick(&mut self, now: u64) {
        let workers = self.batches.len();
        while let Ok(report) = self.channels.reports.try_recv() {
            if report.snapshot == self.snapshot.id {
                self.charge(&report, now, workers);
            }
            if let Some(back) = self.channels.report_returns.get(report.worker) {
                let _ = back.try_send(report.entries);
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
            let admitted = entry.newly_admitted(report.worker, r, kind, now);
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
        let interval = self.snapshot.rate_limit_sync.as_nanos() as u64;
        let effective = now + 2 * interval;
        let batches = &mut self.batches;
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
                if now < entry.grants_effective + interval {
                    // Its previous grants are not in force yet, or no
                    // worker has reported under them (which tells how much
                    // each carried over): next tick.
                    let again = state.waiting.push_key(key);
                    state.waiting.records.push(again);
                    continue;
                }
                let kind = tier_kind(&state.policy, entry.tier as usize);
                entry.grant(kind, now, effective, &mut self.shares);
                entry.waiting = false;
                entry.grants_effective = effective;
                for (worker, batch) in batches.iter_mut().enumerate() {
                    let span = batch.push_key(key);
                    let seen = &entry.seen[worker];
                    batch.records.push(ViewRecord {
                        policy: index as u32,
                        tier: entry.tier,
                        key: span,
                        grant: seen.grant,
                        incarnation: seen.incarnation,
                        counted: seen.admitted,
                    });
                }
            }
        }
        for (worker, tx) in self.channels.views.iter().enumerate() {
            if self.batches[worker].is_empty() {
                continue;
            }
            let mut next = self.channels.view_returns.try_recv().unwrap_or_default();
            next.clear();
            let batch = ViewBatch {
                snapshot: self.snapshot.id,
                nodes: 1,
                entries: std::mem::replace(&mut self.batches[worker], next),
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
                        entry.grants_effective = 0;
                        let span = state.waiting.push_key(key);
                        state.waiting.records.push(span);
                    }
                }
                let mut entries = batch.entries;
                entries.clear();
                self.batches[worker] = entries;
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
            channels.aggregator_side(),
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
                    limiter.take_report(&mut entries, now);
                    let _ = channels.reports.0.try_send(Report {
                        worker: w,
                        snapshot: snapshot.id,
                        entries,
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
                aggregator.tick(now);
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
        type Demand = fn(usize, u64) -> u64;
        let cases: [(&str, Demand); 3] = [
            ("even", |_, _| 5),
            ("one worker", |w, _| if w == 0 { 20 } else { 0 }),
            // The busy worker changes every 7 ms, out of step with the
            // ticks: every grant is sized for the wrong worker.
            (
                "moving",
                |w, ms| if (ms / 7) % 4 == w as u64 { 20 } else { 0 },
            ),
        ];
        for (name, demand) in cases {
            let admitted = simulate(&snap, 2_100, start, demand);
            let window: u64 = admitted[100..1100].iter().sum();
            println!("window quota 1000/s, 4 workers, {name}: {window} admitted");
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
            println!(
                "token bucket 1000/s burst 100, 4 workers, skewed={skewed}: {total} admitted of {expected}"
            );
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
