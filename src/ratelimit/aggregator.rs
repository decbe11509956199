//! [cold] The aggregator thread: the one place that knows how much of each
//! node- and cluster-scope limit is left.
//!
//! Every sync interval it drains the workers' reports (running totals of
//! admissions per key), charges what is new to each key's `Ledger`, and,
//! for each charged key whose current grants every worker has taken, sends
//! every worker a new grant effective two intervals ahead (`ledger.rs` has
//! how grants are sized so that together they never exceed what is left).
//! Workers never wait for it: they admit against the grant they hold
//! (`shared.rs`).
//!
//! For cluster-scope keys the tokens come from Redis: this thread sends the
//! cluster thread (`cluster.rs`) a round of claims and polls for the
//! answer, and while Redis cannot be reached follows each policy's
//! `on_redis_error`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::ledger::{Ledger, Source};
use super::sync::{GrantBatch, GrantRecord, KeySpan, Keyed, Report, ReportRecord};
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

/// Longest the aggregator sleeps before looking at its control channel
/// (how late a reload or stop can be taken).
const CONTROL_POLL: Duration = Duration::from_millis(10);

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

/// Grant batches that may wait in one worker's channel.
const GRANTS_IN_FLIGHT: usize = 8;

pub struct Channels {
    pub reports: Pair<Report>,
    pub grants: Vec<Pair<GrantBatch>>,
    /// Read report buffers going back to each worker.
    pub report_returns: Vec<Pair<Keyed<ReportRecord>>>,
    /// Read batch buffers going back to the aggregator.
    pub grant_returns: Pair<Keyed<GrantRecord>>,
}

impl Channels {
    pub fn new(workers: usize) -> Channels {
        let grant_returns = crossbeam_channel::bounded(GRANTS_IN_FLIGHT * workers + 8);
        // The aggregator's stock of batch buffers: one per batch that can be
        // in flight to a worker, so it never has to make one.
        for _ in 0..GRANTS_IN_FLIGHT * workers {
            let _ = grant_returns.0.try_send(Keyed::stock());
        }
        Channels {
            reports: crossbeam_channel::bounded(workers * 4 + 4),
            grants: (0..workers)
                .map(|_| crossbeam_channel::bounded(GRANTS_IN_FLIGHT))
                .collect(),
            report_returns: (0..workers)
                .map(|_| crossbeam_channel::bounded(8))
                .collect(),
            grant_returns,
        }
    }

    /// What the aggregator thread holds.
    pub fn aggregator_side(&self) -> AggregatorChannels {
        AggregatorChannels {
            reports: self.reports.1.clone(),
            grants: self.grants.iter().map(|(tx, _)| tx.clone()).collect(),
            report_returns: self
                .report_returns
                .iter()
                .map(|(tx, _)| tx.clone())
                .collect(),
            grant_returns: self.grant_returns.1.clone(),
        }
    }
}

/// What one worker holds.
pub struct WorkerChannels {
    pub reports: Sender<Report>,
    pub grants: Receiver<GrantBatch>,
    pub report_returns: Receiver<Keyed<ReportRecord>>,
    pub grant_returns: Sender<Keyed<GrantRecord>>,
}

impl WorkerChannels {
    pub fn new(channels: &Channels, worker: usize) -> WorkerChannels {
        WorkerChannels {
            reports: channels.reports.0.clone(),
            grants: channels.grants[worker].1.clone(),
            report_returns: channels.report_returns[worker].1.clone(),
            grant_returns: channels.grant_returns.0.clone(),
        }
    }
}

pub struct AggregatorChannels {
    reports: Receiver<Report>,
    grants: Vec<Sender<GrantBatch>>,
    report_returns: Vec<Sender<Keyed<ReportRecord>>>,
    grant_returns: Receiver<Keyed<GrantRecord>>,
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

struct PolicyState {
    policy: RateLimitPolicy,
    table: KeyTable<Ledger>,
    /// Keys charged since their last grants, waiting for the next ones.
    waiting: Keyed<KeySpan>,
    /// The list being drained while `waiting` collects keys for next tick.
    draining: Keyed<KeySpan>,
    /// Cluster scope: keys with demand or claimed tokens, looked at when a
    /// Redis round is made (and the same double buffer).
    claiming: Keyed<KeySpan>,
    claiming_next: Keyed<KeySpan>,
}

impl PolicyState {
    fn new(policy: RateLimitPolicy) -> PolicyState {
        PolicyState {
            table: KeyTable::new(policy.max_keys),
            policy,
            waiting: Keyed::default(),
            draining: Keyed::default(),
            claiming: Keyed::default(),
            claiming_next: Keyed::default(),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self.policy.scope, LimitScope::Cluster { .. })
    }

    fn mark_waiting(&mut self, key: &[u8]) {
        if let Some(ledger) = self.table.get_mut(key)
            && !ledger.waiting
        {
            ledger.waiting = true;
            let span = self.waiting.push_key(key);
            self.waiting.records.push(span);
        }
    }
}

/// The Redis side, when cluster-scope limits are configured.
struct Cluster {
    thread: super::cluster::ClusterThread,
    prefix: String,
    address: String,
    /// The round in flight, if any.
    in_flight: Option<u64>,
    next_id: u64,
    last_round: u64,
    /// Redis failed its last round: cluster keys follow on_redis_error.
    down: bool,
    /// Counts fallback periods (a new one starts every local state afresh).
    epoch: u64,
    /// Nodes sharing the limits, as last seen in Redis.
    nodes: u64,
}

/// Sync intervals after which a key's next grants are made even though
/// some worker has not reported under the current ones.
const SWITCH_TIMEOUT_INTERVALS: u64 = 50;

/// How often a node registers with Redis when it has nothing to claim, and
/// how often it tries Redis again while it is down.
const HEARTBEAT: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(500);

struct Aggregator {
    snapshot: Arc<Snapshot>,
    policies: Vec<PolicyState>,
    channels: AggregatorChannels,
    stats: Arc<Stats>,
    /// The next batch to each worker, being built.
    batches: Vec<Keyed<GrantRecord>>,
    /// Batch buffers kept back when sends failed (one per failed send, so a
    /// tick with several never loses a buffer from the stock; the others
    /// come back from the workers over `grant_returns`).
    spare_batches: Vec<Keyed<GrantRecord>>,
    /// Scratch for one key's per-worker shares.
    shares: Vec<u64>,
    cluster: Option<Cluster>,
}

impl Aggregator {
    fn new(snapshot: Arc<Snapshot>, channels: AggregatorChannels, stats: Arc<Stats>) -> Self {
        let n = channels.grants.len();
        let cluster = snapshot.redis.as_ref().and_then(|spec| {
            match super::cluster::spawn(spec.clone()) {
                Ok(thread) => Some(Cluster {
                    thread,
                    prefix: spec.key_prefix.clone(),
                    address: spec.address.clone(),
                    in_flight: None,
                    next_id: 1,
                    last_round: 0,
                    down: false,
                    epoch: 0,
                    nodes: 1,
                }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the Redis thread; cluster-scope limits follow on_redis_error");
                    None
                }
            }
        });
        stats.cluster_nodes.store(1, Relaxed);
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
            batches: (0..n).map(|_| Keyed::stock()).collect(),
            spare_batches: Vec::with_capacity(n),
            shares: vec![0; n],
            cluster,
        }
    }

    fn run(&mut self, control: &Receiver<Control>) {
        let mut next_tick = Instant::now();
        loop {
            // With no shared policy there is nothing to do but wait for a
            // reload or the stop; reports cannot arrive.
            let interval = if super::Limiter::has_shared(&self.snapshot.rate_limits) {
                self.snapshot.rate_limit_sync
            } else {
                Duration::from_millis(200)
            };
            next_tick += interval;
            let now = Instant::now();
            if next_tick < now {
                next_tick = now;
            }
            // Control messages are taken between short sleeps, and never
            // move a tick: a grant computed early (right after a reload)
            // would split the limit by the demand of a fraction of an
            // interval. A plain sleep rather than a blocking receive:
            // crossbeam allocates a thread's wait context on its first
            // blocking receive, which on a starved thread could happen in
            // the middle of steady-state traffic (the allocation test saw
            // it).
            loop {
                match control.try_recv() {
                    Ok(Control::Stop) | Err(crossbeam_channel::TryRecvError::Disconnected) => {
                        return;
                    }
                    Ok(Control::Reload(snapshot)) => {
                        self.reload(snapshot);
                        continue;
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => {}
                }
                let left = next_tick.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(CONTROL_POLL));
            }
            if super::Limiter::has_shared(&self.snapshot.rate_limits) {
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

    /// Where cluster keys' tokens come from right now.
    fn source(&self, policy: &RateLimitPolicy) -> (Source, u64, u64) {
        match (policy.scope, &self.cluster) {
            (LimitScope::Cluster { on_redis_error }, Some(c)) if c.down => {
                (Source::Fallback(on_redis_error), c.epoch, c.nodes)
            }
            (LimitScope::Cluster { .. }, Some(c)) => (Source::Claimed, c.epoch, c.nodes),
            (LimitScope::Cluster { on_redis_error }, None) => {
                (Source::Fallback(on_redis_error), 0, 1)
            }
            _ => (Source::Node, 0, 1),
        }
    }

    fn tick(&mut self, now: u64) {
        self.take_answer();
        let workers = self.batches.len();
        while let Ok(report) = self.channels.reports.try_recv() {
            if report.snapshot == self.snapshot.limits_id {
                self.charge(&report, now, workers);
            }
            if let Some(back) = self.channels.report_returns.get(report.worker) {
                let _ = back.try_send(report.entries);
            }
        }
        self.start_round(now);
        self.publish(now);
        let keys: usize = self.policies.iter().map(|p| p.table.len()).sum();
        self.stats.keys.store(keys as u64, Relaxed);
    }

    fn charge(&mut self, report: &Report, now: u64, workers: usize) {
        for r in &report.entries.records {
            let Some(policy) = self.policies.get(r.policy as usize).map(|s| &s.policy) else {
                continue;
            };
            if policy.scope == LimitScope::Worker {
                continue;
            }
            let (source, epoch, nodes) = self.source(policy);
            let state = &mut self.policies[r.policy as usize];
            let cluster = state.is_cluster();
            let kind = tier_kind(&state.policy, r.tier as usize);
            let key = report.entries.key(r.key);
            let policy = &state.policy;
            let ledger = state.table.get_or_insert(
                key,
                || Ledger::new(r.tier, kind, now, workers, cluster),
                |k| k.is_fresh(tier_kind(policy, k.tier as usize), now),
            );
            // A key keeps the tier it is held under until its usage is
            // fresh, whatever tier a worker reports: alternating tiers must
            // not restart the key's quota.
            if ledger.tier != r.tier
                && ledger.is_fresh(tier_kind(policy, ledger.tier as usize), now)
            {
                *ledger = Ledger::new(r.tier, kind, now, workers, cluster);
            }
            let kind = tier_kind(policy, ledger.tier as usize);
            let (admitted, _) = ledger.newly_admitted(report.worker, r, kind, now);
            ledger.charge(kind, admitted, r.window, source, epoch, nodes, now);
            let listed_for_claims = ledger.claims.is_some_and(|c| c.listed);
            if let Some(claims) = &mut ledger.claims {
                claims.listed = true;
            }
            if cluster && !listed_for_claims {
                let span = state.claiming.push_key(key);
                state.claiming.records.push(span);
            }
            state.mark_waiting(key);
        }
    }

    /// Applies the answer of the Redis round in flight, if it has come.
    fn take_answer(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let Ok(answer) = cluster.thread.answers.try_recv() else {
            return;
        };
        if cluster.in_flight == Some(answer.id) {
            cluster.in_flight = None;
        }
        // Where tokens come from changed: every cluster key gets new grants.
        let mut regrant = false;
        let results = match answer.outcome {
            Ok((nodes, results)) => {
                cluster.nodes = nodes;
                self.stats.cluster_nodes.store(nodes, Relaxed);
                self.stats.redis_up.store(1, Relaxed);
                if cluster.down {
                    tracing::info!(redis = %cluster.address, "Redis answers again; cluster-scope limits are shared again");
                    cluster.down = false;
                    cluster.epoch += 1;
                    regrant = true;
                }
                Some(results)
            }
            Err(error) => {
                self.stats.redis_errors.fetch_add(1, Relaxed);
                self.stats.redis_up.store(0, Relaxed);
                if !cluster.down {
                    tracing::warn!(redis = %cluster.address, %error, "Redis sync failed; cluster-scope limits follow on_redis_error until it answers again");
                    cluster.down = true;
                    cluster.epoch += 1;
                    regrant = true;
                }
                None
            }
        };
        for (i, claim) in answer.round.claims.iter().enumerate() {
            let Some(state) = self.policies.get_mut(claim.policy as usize) else {
                continue;
            };
            if let Some(ledger) = state.table.get_mut(&claim.key)
                && let Some(claims) = &mut ledger.claims
            {
                claims.in_flight = false;
                if let Some(&(granted, left)) = results.as_ref().and_then(|r| r.get(i))
                    && (matches!(claim.kind, LimitKind::Bucket { .. })
                        || claims.window == claim.window)
                {
                    claims.held += granted;
                    claims.cluster_left = left.max(0) as u64;
                }
            }
            // New tokens (or the fallback) make new grants.
            state.mark_waiting(&claim.key);
        }
        if regrant {
            for state in self.policies.iter_mut().filter(|s| s.is_cluster()) {
                let keys: Vec<Vec<u8>> = state.table.keys().map(<[u8]>::to_vec).collect();
                for key in keys {
                    if let Some(ledger) = state.table.get_mut(&key) {
                        ledger.grants_effective = 0;
                    }
                    state.mark_waiting(&key);
                }
            }
        }
    }

    /// Sends Redis a round: tokens for keys in demand, tokens back from
    /// idle keys, and this node's registration.
    fn start_round(&mut self, now: u64) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if cluster.in_flight.is_some() {
            return;
        }
        let interval = self.snapshot.rate_limit_sync.as_nanos() as u64;
        let mut claims = Vec::new();
        if !cluster.down {
            for (index, state) in self.policies.iter_mut().enumerate() {
                if !state.is_cluster() || state.claiming.is_empty() {
                    continue;
                }
                std::mem::swap(&mut state.claiming, &mut state.claiming_next);
                state.claiming.clear();
                for span in &state.claiming_next.records {
                    let key = state.claiming_next.key(*span);
                    let Some(ledger) = state.table.get_mut(key) else {
                        continue;
                    };
                    let kind = tier_kind(&state.policy, ledger.tier as usize);
                    if let Some(request) = ledger.next_claim(kind, now, interval, cluster.nodes) {
                        claims.push(super::cluster::Claim {
                            redis_key: super::cluster::redis_key(
                                &cluster.prefix,
                                &state.policy.name,
                                key,
                                request.window,
                            ),
                            kind,
                            want: request.want,
                            give_back: request.give_back,
                            policy: index as u32,
                            tier: ledger.tier,
                            key: key.to_vec(),
                            window: request.window.unwrap_or(0),
                        });
                    }
                    if ledger.still_claiming() {
                        let again = state.claiming.push_key(key);
                        state.claiming.records.push(again);
                    }
                }
            }
        }
        let pause = if cluster.down { RETRY } else { HEARTBEAT };
        if claims.is_empty() && now < cluster.last_round + pause.as_nanos() as u64 {
            return;
        }
        let id = cluster.next_id;
        cluster.next_id += 1;
        cluster.last_round = now;
        match cluster
            .thread
            .rounds
            .try_send(super::cluster::Round { id, claims })
        {
            Ok(()) => cluster.in_flight = Some(id),
            Err(e) => {
                // The Redis thread is stuck on the round before: give these
                // keys back to the next tick.
                for claim in e.into_inner().claims {
                    if let Some(state) = self.policies.get_mut(claim.policy as usize)
                        && let Some(ledger) = state.table.get_mut(&claim.key)
                        && let Some(c) = &mut ledger.claims
                    {
                        c.in_flight = false;
                        c.held += claim.give_back;
                    }
                }
            }
        }
    }

    /// Sends new grants for every charged key whose previous grants are in
    /// force (and, for cluster keys, whose claim is not in flight).
    fn publish(&mut self, now: u64) {
        let interval = self.snapshot.rate_limit_sync.as_nanos() as u64;
        let effective = now + 2 * interval;
        for index in 0..self.policies.len() {
            if self.policies[index].waiting.is_empty() {
                continue;
            }
            let (source, epoch, nodes) = self.source(&self.policies[index].policy);
            let state = &mut self.policies[index];
            std::mem::swap(&mut state.waiting, &mut state.draining);
            state.waiting.clear();
            for span in &state.draining.records {
                let key = state.draining.key(*span);
                let Some(ledger) = state.table.get_mut(key) else {
                    continue;
                };
                let claim_pending =
                    source == Source::Claimed && ledger.claims.is_some_and(|c| c.in_flight);
                // A worker that never reports under its grant (its entry
                // evicted, its thread stuck) must not stall the key forever.
                let acknowledged = ledger.all_switched()
                    || now >= ledger.grants_effective + SWITCH_TIMEOUT_INTERVALS * interval;
                if now < ledger.grants_effective + interval || claim_pending || !acknowledged {
                    // Its previous grants are not in force yet, not every
                    // worker has reported under them (which tells how much
                    // each carried over), or tokens are on their way: next
                    // tick.
                    let again = state.waiting.push_key(key);
                    state.waiting.records.push(again);
                    continue;
                }
                let kind = tier_kind(&state.policy, ledger.tier as usize);
                ledger.grant(kind, now, effective, source, epoch, nodes, &mut self.shares);
                ledger.waiting = false;
                ledger.grants_effective = effective;
                for (worker, batch) in self.batches.iter_mut().enumerate() {
                    let span = batch.push_key(key);
                    let (grant, incarnation, counted) = ledger.grant_for(worker);
                    batch.records.push(GrantRecord {
                        policy: index as u32,
                        tier: ledger.tier,
                        key: span,
                        grant,
                        incarnation,
                        counted,
                    });
                }
            }
        }
        for (worker, tx) in self.channels.grants.iter().enumerate() {
            if self.batches[worker].is_empty() {
                continue;
            }
            let Some(mut next) = self
                .spare_batches
                .pop()
                .or_else(|| self.channels.grant_returns.try_recv().ok())
            else {
                // Every buffer is in flight (workers are late returning
                // them): this worker's grants go out with the next tick's,
                // rather than in a newly allocated buffer.
                continue;
            };
            next.clear();
            let batch = GrantBatch {
                snapshot: self.snapshot.limits_id,
                entries: std::mem::replace(&mut self.batches[worker], next),
            };
            if let Err(e) = tx.try_send(batch) {
                // The worker is far behind: publish these keys again next
                // tick rather than leave it on grants that are out of date.
                let batch = e.into_inner();
                for r in &batch.entries.records {
                    let key = batch.entries.key(r.key);
                    if let Some(state) = self.policies.get_mut(r.policy as usize) {
                        if let Some(ledger) = state.table.get_mut(key) {
                            ledger.grants_effective = 0;
                        }
                        state.mark_waiting(key);
                    }
                }
                let mut entries = batch.entries;
                entries.clear();
                let spare = std::mem::replace(&mut self.batches[worker], entries);
                self.spare_batches.push(spare);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole node-scope loop on simulated time: N worker limiters and
    //! the aggregator, exchanging reports and grants through the real
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
        simulate_late(snapshot, millis, start, demand, 0)
    }

    /// As `simulate`, with worker 0 taking every batch of grants `late`
    /// milliseconds after it could have (a thread starved of CPU).
    fn simulate_late(
        snapshot: &Arc<Snapshot>,
        millis: u64,
        start: u64,
        demand: impl Fn(usize, u64) -> u64,
        late: u64,
    ) -> Vec<u64> {
        let mut delayed: std::collections::VecDeque<(u64, GrantBatch)> = Default::default();
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
                    while let Ok(batch) = channels.grants[w].1.try_recv() {
                        if w == 0 && late > 0 {
                            delayed.push_back((ms + late, batch));
                        } else {
                            limiter.apply(&batch, &snapshot.rate_limits, now);
                            let _ = channels.grant_returns.0.try_send(batch.entries);
                        }
                    }
                    while delayed.front().is_some_and(|(at, _)| *at <= ms) && w == 0 {
                        if let Some((_, batch)) = delayed.pop_front() {
                            limiter.apply(&batch, &snapshot.rate_limits, now);
                            let _ = channels.grant_returns.0.try_send(batch.entries);
                        }
                    }
                    let mut entries = Keyed::default();
                    limiter.take_report(&mut entries, now);
                    let _ = channels.reports.0.try_send(Report {
                        worker: w,
                        snapshot: snapshot.id,
                        entries,
                    });
                }
                // Requests spread evenly over the millisecond.
                let n = demand(w, ms);
                for i in 0..n {
                    let at = now + i * (MS / n);
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
    fn a_late_worker_overshoots_by_at_most_the_rate_times_its_lateness() {
        // Bucket 1 000/s, burst 100, 4 workers all busy; worker 0 takes its
        // grants 40 ms late, i.e. up to 40 + 10 - 20 = 30 ms after they take
        // effect (they are made to take effect 2 intervals = 20 ms on, and
        // reach a worker within its 10 ms tick). Bound: rate × 30 ms = 30.
        let snap = snapshot("rate = \"1000/s\"\nburst = 100", 4);
        for late in [0, 40, 200] {
            let admitted = simulate_late(&snap, 5_000, 7 * 1_000_000 * 1000 * MS, |_, _| 2, late);
            let mut total = 0u64;
            let mut worst = 0i64;
            for (ms, n) in admitted.iter().enumerate() {
                total += n;
                let allowed = 100 + (ms as u64 + 1); // burst + 1 per ms
                worst = worst.max(total as i64 - allowed as i64);
            }
            println!(
                "token bucket 1000/s burst 100, 4 workers, worker 0 late by {late} ms: worst overshoot {worst}, admitted {total} of {} over 5 s",
                100 + admitted.len()
            );
            let bound = if late == 0 {
                0
            } else {
                (late + 10 - 20) as i64
            };
            assert!(worst <= bound, "late {late}: overshoot {worst} > {bound}");
        }
        // Windows: a late worker's old grant holds no refill, so nothing.
        let snap = snapshot("limit = 1000\nwindow = \"1s\"", 4);
        let start = 1_000_000 * 1000 * MS + 900 * MS;
        let admitted = simulate_late(&snap, 1_100, start, |_, _| 5, 40);
        let window: u64 = admitted[100..1100].iter().sum();
        println!("window quota 1000/s, 4 workers, worker 0 late by 40 ms: {window} admitted");
        assert!(window <= 1000);
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

    #[test]
    fn a_small_burst_does_not_cap_a_high_rate() {
        // Bucket 100 000/s (100 per ms), burst 10, 2 workers: each worker's
        // part of the burst is 5, but its part of the rate refills it all
        // the time. (When a part was capped over a grant's life rather than
        // at every moment, a worker admitted at most 5 per grant: ~1 per ms.)
        let snap = snapshot("rate = \"100000/s\"\nburst = 10", 2);
        let start = 3 * 1_000_000 * 1000 * MS;
        let admitted = simulate(&snap, 2_000, start, |_, _| 20);
        let total: u64 = admitted[100..].iter().sum();
        let offered = 1_900 * 2 * 20;
        println!("token bucket 100000/s burst 10, 2 workers at 40/ms: {total} of {offered}");
        assert!(
            total as f64 >= offered as f64 * 0.98,
            "{total} of {offered} admitted, far below the rate"
        );
        // Offered 160/ms: the rate holds (burst + 100 per ms, at most).
        let admitted = simulate(&snap, 2_000, start, |_, _| 80);
        let mut total = 0u64;
        for (ms, n) in admitted.iter().enumerate() {
            total += n;
            assert!(
                total <= 10 + 100 * (ms as u64 + 1),
                "{total} admitted by {ms} ms"
            );
        }
        assert!(
            total as f64 >= 100.0 * 2_000.0 * 0.95,
            "only {total} admitted"
        );
    }

    #[test]
    fn an_idle_bucket_does_not_bank_refill_past_its_burst() {
        // Bucket 1 000/s, burst 100, 4 workers. Drain it, leave it idle for
        // 2 s (full after 0.1 s: the other 1.9 s of refill are lost), then
        // flood it from one worker for 1 s: burst + rate = 1 100 at most.
        let snap = snapshot("rate = \"1000/s\"\nburst = 100", 4);
        let start = 11 * 1_000_000 * 1000 * MS;
        let admitted = simulate(&snap, 3_500, start, |w, ms| {
            if w == 0 && !(500..2_500).contains(&ms) {
                8
            } else {
                0
            }
        });
        let flood: u64 = admitted[2_500..].iter().sum();
        println!("token bucket 1000/s burst 100, after 2 s idle, 1 s flood: {flood} admitted");
        assert!(
            flood <= 1_100 + 3,
            "{flood} admitted: refill banked while full"
        );
        assert!(flood >= 1_050, "only {flood} admitted of 1 100");
    }

    #[test]
    fn every_window_starts_whole_for_the_busiest_worker() {
        // Window 1 000/s, 4 workers, all demand on worker 0 for three
        // windows: each whole window admits its limit, not only worker 0's
        // fresh part (250).
        let snap = snapshot("limit = 1000\nwindow = \"1s\"", 4);
        let start = 1_000_000 * 1000 * MS + 900 * MS;
        let admitted = simulate(&snap, 3_100, start, |w, _| if w == 0 { 20 } else { 0 });
        for window in [100..1_100, 1_100..2_100, 2_100..3_100] {
            let n: u64 = admitted[window.clone()].iter().sum();
            println!("window quota 1000/s, one busy worker, ms {window:?}: {n} admitted");
            assert!(n <= 1_000 + 3, "{n} admitted in one window of 1000");
            assert!(n >= 950, "only {n} of 1000 admitted in ms {window:?}");
        }
    }

    #[test]
    fn a_fresh_key_gives_its_whole_burst_to_the_worker_that_wants_it() {
        // Bucket with a negligible refill (1/min), burst 100, 4 workers:
        // one worker's first burst gets all 100, not only its fresh part.
        let snap = snapshot("rate = \"1/min\"\nburst = 100", 4);
        let start = 13 * 1_000_000 * 1000 * MS;
        let admitted = simulate(&snap, 500, start, |w, _| if w == 0 { 8 } else { 0 });
        let total: u64 = admitted.iter().sum();
        println!("token bucket burst 100, fresh key, one busy worker: {total} admitted");
        assert_eq!(total, 100);
    }
}
