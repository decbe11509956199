//! [warm] Worker threads: each pinned to one CPU of the process's allowed
//! set, running its own monoio runtime (io_uring, or epoll as a fallback)
//! with its own SO_REUSEPORT listener sockets and its own `Shard`.
//!
//! Workers hear from the control thread only through a crossbeam channel of
//! `Command`s, polled without blocking on a short timer, and report back
//! through `Event`s.

pub mod aggregate;
mod cache_refresh;
mod catch;
pub mod client;
pub mod conn;
pub mod forward;
pub mod gate;
pub mod introspect;
pub mod phase;
pub mod request_id;
pub mod shard;
pub mod single_flight;
pub mod tls;
mod tunnel;
pub mod upstream_call;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use monoio::net::TcpListener;

use crate::snapshot::{IoDriver, Snapshot};
use shard::Shard;

/// How often a worker looks at its command channel.
const COMMAND_POLL: Duration = Duration::from_millis(20);
/// How often the worker tells outlier detection how each endpoint's tries
/// went: how late, at most, an ejection can follow the failure that
/// called for it (plus the judge's own reaction).
const OUTCOME_REPORT: Duration = Duration::from_millis(100);
/// How often idle upstream connections past their timeout are closed.
const POOL_SWEEP: Duration = Duration::from_secs(1);

/// Messages from the control thread to a worker.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, finish in-flight requests (answering with
    /// `Connection: close`), close idle connections, exit when none are left
    /// or `drain_timeout` has passed.
    Drain,
    /// Send a copy of this worker's metrics (answered within one tick).
    Report(Sender<crate::metrics::WorkerReport>),
    /// Switch to a new snapshot, then acknowledge with the worker id.
    Reload(Arc<Snapshot>, Sender<usize>),
    /// Purge the cache shard; answer with how many objects matched.
    CachePurge(Arc<crate::cache::purge::Purge>, Sender<usize>),
    /// The endpoints health checks now hold out of traffic (all of them).
    EndpointHealth(Arc<crate::upstream::health::DownEndpoints>),
    /// The endpoints outlier detection has now ejected (all of them).
    Ejections(Arc<crate::upstream::health::DownEndpoints>),
    /// Keys fetched from a JWKS URL (or the last good ones, after a
    /// failed fetch).
    Jwks(Arc<crate::auth::jwks::KeySet>),
    /// Start accepting on these sockets (listeners added by a reload).
    AddListeners(Vec<ListenerSocket>),
    /// Stop accepting on this address (a listener removed by a reload).
    RemoveListener(std::net::SocketAddr),
}

/// Messages from a worker to the control thread.
#[derive(Debug)]
pub enum Event {
    /// The worker's runtime is up and its listeners accept connections.
    Started {
        worker: usize,
        driver: &'static str,
        cpu: Option<usize>,
    },
    /// The worker could not start (no runtime could be built).
    Failed { worker: usize, error: String },
    /// The worker finished draining and its thread is ending.
    Exited {
        worker: usize,
        requests: u64,
        panics: u64,
    },
}

/// Everything a worker thread needs, moved into it at spawn.
/// A listener socket for one worker, with the address the config gave
/// it (port 0 stays 0 here): how the worker finds the listener's settings
/// in each snapshot.
#[derive(Debug)]
pub struct ListenerSocket {
    pub configured: std::net::SocketAddr,
    pub socket: std::net::TcpListener,
}

pub struct WorkerSetup {
    pub id: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub listeners: Vec<ListenerSocket>,
    pub snapshot: Arc<Snapshot>,
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    pub access_log: Option<crate::accesslog::AccessLog>,
    /// To the rate-limit aggregator, and back (node and cluster scope).
    pub limit_sync: crate::ratelimit::aggregator::WorkerChannels,
    /// The JWKS key sets fetched before the worker started.
    pub jwks_sets: Vec<Arc<crate::auth::jwks::KeySet>>,
    /// To the JWKS fetcher: a token named a key this worker lacks.
    pub jwks_asks: Option<Sender<Arc<str>>>,
    /// To outlier detection: how each endpoint's tries went.
    pub outcome_reports: Option<Sender<crate::upstream::outlier::OutcomeReport>>,
}

pub fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringgate-w{}", setup.id))
        .spawn(move || run_thread(setup))
}

fn run_thread(setup: WorkerSetup) {
    let cpu = setup
        .cpu
        .and_then(|core| core_affinity::set_for_current(core).then_some(core.id));
    let id = setup.id;
    let events = setup.events.clone();
    let driver = setup.snapshot.io_driver;
    let entries = 1024;
    let result = match driver {
        IoDriver::Epoll => run_epoll(setup, cpu),
        IoDriver::IoUring => run_uring(setup, cpu, entries),
        IoDriver::Auto => match uring_runtime(entries) {
            Ok(mut rt) => {
                rt.block_on(worker_main(setup, "io_uring", cpu));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    worker = id,
                    error = %e,
                    "io_uring is unavailable (seccomp, kernel or RLIMIT_MEMLOCK); FALLING BACK TO EPOLL"
                );
                run_epoll(setup, cpu)
            }
        },
    };
    if let Err(error) = result {
        let _ = events.send(Event::Failed { worker: id, error });
    }
}

fn run_uring(setup: WorkerSetup, cpu: Option<usize>, entries: u32) -> Result<(), String> {
    let mut rt = uring_runtime(entries)
        .map_err(|e| format!("cannot start an io_uring runtime (io_driver = \"io_uring\"): {e}"))?;
    rt.block_on(worker_main(setup, "io_uring", cpu));
    Ok(())
}

type UringRuntime = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

/// Builds this worker's io_uring runtime. The ring is created on, and only
/// ever entered from, this thread, so it can be SINGLE_ISSUER; COOP_TASKRUN
/// lets completions wait for our next io_uring_enter instead of interrupting
/// the thread with an IPI. On this project's 2-core loopback benchmark the
/// two flags raised proxied throughput by about 25% (docs/benchmarks.md).
/// Kernels older than 6.0 refuse the flags; a plain ring is tried next.
fn uring_runtime(entries: u32) -> std::io::Result<UringRuntime> {
    let build = |tuned: bool| {
        let mut builder = io_uring::IoUring::builder();
        if tuned {
            builder.setup_coop_taskrun().setup_single_issuer();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(entries)
            .uring_builder(builder)
            .build()
    };
    build(true).or_else(|e| {
        tracing::info!(error = %e, "io_uring without COOP_TASKRUN/SINGLE_ISSUER (older kernel)");
        build(false)
    })
}

fn run_epoll(setup: WorkerSetup, cpu: Option<usize>) -> Result<(), String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot start an epoll runtime: {e}"))?;
    rt.block_on(worker_main(setup, "epoll", cpu));
    Ok(())
}

async fn worker_main(setup: WorkerSetup, driver: &'static str, cpu: Option<usize>) {
    let mut shard = Shard::new(setup.id, setup.snapshot.clone());
    shard.log = setup
        .access_log
        .map(|log| crate::accesslog::WorkerLog::new(log, setup.id));
    shard.jwks = crate::auth::jwks::WorkerKeys::new(setup.jwks_sets, setup.jwks_asks);
    shard.outcome_reports = setup.outcome_reports.clone();
    let limit_sync = LimitSync {
        channels: setup.limit_sync,
        report_buffers: RefCell::new(
            (0..REPORT_STOCK)
                .map(|_| crate::ratelimit::sync::Keyed::stock())
                .collect(),
        ),
    };
    let shard = Rc::new(shard);
    let mut listeners = Vec::new();
    for socket in setup.listeners {
        match TcpListener::from_std(socket.socket) {
            Ok(l) => listeners.push((socket.configured, l)),
            Err(e) => {
                let _ = setup.events.send(Event::Failed {
                    worker: setup.id,
                    error: format!("cannot register listener: {e}"),
                });
                return;
            }
        }
    }
    for (configured, listener) in listeners {
        start_accepting(&shard, configured, listener);
    }
    let _ = setup.events.send(Event::Started {
        worker: setup.id,
        driver,
        cpu,
    });

    let mut drain_deadline: Option<Instant> = None;
    let mut last_sweep = Instant::now();
    let mut last_outcome_report = Instant::now();
    loop {
        let generation = shard.generation();
        let shared_limits = crate::ratelimit::Limiter::has_shared(&generation.snapshot.rate_limits);
        let tick = if shared_limits {
            COMMAND_POLL.min(generation.snapshot.rate_limit_sync)
        } else {
            COMMAND_POLL
        };
        drop(generation);
        monoio::time::sleep(tick).await;
        limit_sync.exchange(&shard, shared_limits);
        while let Ok(command) = setup.commands.try_recv() {
            match command {
                Command::Report(reply) => {
                    let pools = shard
                        .generation()
                        .upstreams
                        .borrow()
                        .iter()
                        .map(|u| {
                            u.pools
                                .iter()
                                .zip(u.outstanding.iter())
                                .map(|(p, n)| crate::metrics::PoolGauge {
                                    idle: p.idle_count() as u64,
                                    in_flight: u64::from(n.get()),
                                })
                                .collect()
                        })
                        .collect();
                    let mut report =
                        shard
                            .metrics
                            .report(shard.id, shard.active_connections.get(), pools);
                    let store = shard.cache.borrow();
                    report.cache_store = [
                        store.objects() as u64,
                        store.used() as u64,
                        store.counters.evictions,
                    ];
                    drop(store);
                    report.endpoints_down = shard.down.borrow().len() as u64;
                    for (counts, admission) in report
                        .breakers
                        .iter_mut()
                        .zip(&shard.generation().admission)
                    {
                        counts.queue_length = admission.gate.queued() as u64;
                    }
                    let _ = reply.send(report);
                }
                Command::AddListeners(sockets) => {
                    for socket in sockets {
                        match TcpListener::from_std(socket.socket) {
                            Ok(l) => start_accepting(&shard, socket.configured, l),
                            Err(e) => {
                                tracing::error!(worker = shard.id, error = %e, "cannot register an added listener")
                            }
                        }
                    }
                }
                Command::RemoveListener(addr) => stop_accepting(&shard, addr),
                Command::Jwks(set) => shard.jwks.install(set),
                Command::EndpointHealth(down) => shard.set_down(down),
                Command::Ejections(ejected) => shard.set_ejected(ejected),
                Command::CachePurge(purge, reply) => {
                    let _ = reply.send(shard.cache.borrow_mut().purge(&purge));
                }
                Command::Reload(snapshot, ack) => {
                    shard.reload(snapshot);
                    let _ = ack.send(shard.id);
                }
                Command::Drain => {
                    if drain_deadline.is_none() {
                        drain_deadline =
                            Some(Instant::now() + shard.generation().snapshot.limits.drain_timeout);
                        shard.drain_deadline.set(drain_deadline);
                        shard.begin_drain();
                    }
                }
            }
        }
        if let Some(log) = &shard.log {
            log.flush();
        }
        let now = Instant::now();
        if now.duration_since(last_outcome_report) >= OUTCOME_REPORT {
            last_outcome_report = now;
            shard.report_outcomes();
        }
        if let Some(deadline) = drain_deadline {
            if shard.active_connections.get() == 0 || now >= deadline {
                if shard.active_connections.get() > 0 {
                    tracing::warn!(
                        worker = shard.id,
                        open = shard.active_connections.get(),
                        "drain_timeout reached; closing remaining connections"
                    );
                }
                break;
            }
        } else if now.duration_since(last_sweep) >= POOL_SWEEP {
            last_sweep = now;
            for u in shard.generation().upstreams.borrow_mut().iter_mut() {
                u.evict_expired(now);
                u.retry_budget.second_passed();
            }
        }
    }
    let _ = setup.events.send(Event::Exited {
        worker: shard.id,
        requests: shard.metrics.requests.get(),
        panics: shard.metrics.panics.get(),
    });
}

/// This worker's side of node- and cluster-scope limiting: each tick, take
/// the aggregator's grants, then report the shared keys admitted since the
/// last tick.
struct LimitSync {
    channels: crate::ratelimit::aggregator::WorkerChannels,
    /// Report buffers at hand; the rest are in flight or on their way back.
    report_buffers:
        RefCell<Vec<crate::ratelimit::sync::Keyed<crate::ratelimit::sync::ReportRecord>>>,
}

/// Report buffers a worker starts with: one in the limiter's queue, one in
/// flight and one coming back is the steady state; the others cover an
/// aggregator that runs late.
const REPORT_STOCK: usize = 3;

impl LimitSync {
    fn exchange(&self, shard: &Shard, shared_limits: bool) {
        let generation = shard.generation();
        let mut limiter = generation.limiter.borrow_mut();
        let now = crate::ratelimit::clock::now();
        while let Ok(batch) = self.channels.grants.try_recv() {
            limiter.apply(&batch, &generation.snapshot.rate_limits, now);
            let _ = self.channels.grant_returns.try_send(batch.entries);
        }
        if !shared_limits {
            return;
        }
        let mut stock = self.report_buffers.borrow_mut();
        let Some(mut entries) = stock
            .pop()
            .or_else(|| self.channels.report_returns.try_recv().ok())
        else {
            // Every buffer is with the aggregator, which runs late: the keys
            // stay queued for the next tick rather than allocate a buffer.
            return;
        };
        limiter.take_report(&mut entries, now);
        if entries.is_empty() {
            stock.push(entries);
            return;
        }
        let report = crate::ratelimit::sync::Report {
            worker: shard.id,
            snapshot: generation.snapshot.limits_id,
            entries,
        };
        if let Err(e) = self.channels.reports.try_send(report) {
            // The aggregator is behind: the running totals go out next time
            // these keys are admitted.
            stock.push(e.into_inner().entries);
        }
    }
}

/// Registers a listener with the shard (so a reload can stop it and a
/// drain stops them all) and starts its accept loop.
fn start_accepting(shard: &Rc<Shard>, configured: std::net::SocketAddr, listener: TcpListener) {
    let addr = listener.local_addr().ok();
    let stop = Rc::new(std::cell::Cell::new(false));
    let canceller = monoio::io::Canceller::new();
    let handle = canceller.handle();
    shard.listeners.borrow_mut().push(shard::ListenerHandle {
        addr,
        stop: stop.clone(),
        canceller,
    });
    monoio::spawn(accept_loop(
        shard.clone(),
        configured,
        listener,
        handle,
        stop,
    ));
}

/// Stops accepting on `addr` (the listener closes when its loop ends).
fn stop_accepting(shard: &Shard, addr: std::net::SocketAddr) {
    let mut listeners = shard.listeners.borrow_mut();
    listeners.retain_mut(|l| {
        if l.addr == Some(addr) {
            l.stop.set(true);
            let canceller = std::mem::take(&mut l.canceller);
            drop(canceller.cancel());
            false
        } else {
            true
        }
    });
}

async fn accept_loop(
    shard: Rc<Shard>,
    configured: std::net::SocketAddr,
    listener: TcpListener,
    cancel: monoio::io::CancelHandle,
    stop: Rc<std::cell::Cell<bool>>,
) {
    loop {
        if shard.draining.get() || stop.get() {
            return;
        }
        let accepted = listener.cancelable_accept(cancel.clone()).await;
        match accepted {
            Ok((stream, peer)) => {
                shard.metrics.accepted();
                let generation = shard.generation();
                let max = generation.snapshot.limits.max_connections_per_worker;
                // TLS settings as of this accept: a reload that changes
                // certificates applies to new connections only.
                let tls = generation
                    .snapshot
                    .listeners
                    .iter()
                    .find(|l| l.addr == configured)
                    .and_then(|l| l.tls.clone());
                drop(generation);
                if shard.active_connections.get() >= max {
                    // Refuse early: existing connections are unharmed.
                    shard.metrics.refused();
                    drop(stream);
                    continue;
                }
                let conn_shard = shard.clone();
                monoio::spawn(async move {
                    let stats_shard = conn_shard.clone();
                    if catch::CatchUnwind::new(conn::serve(
                        conn_shard, stream, peer, configured, tls,
                    ))
                    .await
                    .is_err()
                    {
                        stats_shard.metrics.panic();
                        tracing::error!(worker = stats_shard.id, %peer, "connection task panicked; connection dropped");
                    }
                });
            }
            Err(e) => {
                if shard.draining.get() || stop.get() {
                    return;
                }
                tracing::warn!(worker = shard.id, error = %e, "accept failed");
                // Out of file descriptors and similar: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
