//! [cold] The control thread: owns the process. It binds listeners, spawns
//! and pins workers, prints where it listens, waits for signals and drives
//! a graceful drain on SIGTERM/SIGINT. Nothing here is on the request path.

pub mod admin;
mod cache_purge;
mod dns;
pub mod health;
mod listeners;
pub mod outlier;
pub mod reload;
pub mod signals;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use std::net::SocketAddr;
use std::thread::JoinHandle;

use crate::snapshot::Snapshot;
use crate::worker::{self, Command, Event, WorkerSetup};

/// Runs the gateway until a termination signal has been handled and every
/// worker has drained. Returns an error message if startup fails.
pub fn run(snapshot: Snapshot) -> Result<(), String> {
    signals::block().map_err(|e| format!("cannot block signals: {e}"))?;
    if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0")
    {
        tracing::warn!(
            "net.ipv4.tcp_migrate_req is 0: in a zero-downtime restart, connections still queued on this \
             process's listeners when it stops would be reset; set it to 1 (docs/operations.md)"
        );
    }
    let running = start(snapshot)?;
    for addr in &running.bound {
        // Printed on stdout for people and scripts (tests read the port here).
        println!(
            "ringgate listening on http://{addr} ({} workers, io driver {}, config {})",
            running.snapshot.workers, running.driver_summary, running.snapshot.source
        );
    }
    if let Some(addr) = running.admin_addr {
        println!("ringgate admin on http://{addr} (/metrics /healthz /readyz /config /workers)");
    }
    running.serve_until_signal()
}

/// How often the running certificates are checked for coming expiry (also
/// at start and after every reload).
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Logs a warning for each served certificate that expires within its
/// listener's `expiry_warning` (the metric
/// `ringgate_tls_certificate_expiry_seconds` tells the same at any time).
pub fn warn_expiring_certificates(snapshot: &Snapshot) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for listener in &snapshot.listeners {
        let Some(tls) = &listener.tls else { continue };
        for (cert, left) in tls.expiring(now) {
            let (path, subject) = (&*cert.path, &*cert.facts.subject);
            if left <= 0 {
                tracing::warn!(listener = %listener.addr, certificate = path, subject, expired_days_ago = -left / 86_400, "TLS certificate has expired; clients will refuse it");
            } else {
                tracing::warn!(listener = %listener.addr, certificate = path, subject, days_left = left / 86_400, "TLS certificate expires soon");
            }
        }
    }
}

/// A started gateway: workers running, listeners accepting.
pub struct Running {
    snapshot: Arc<Snapshot>,
    #[allow(clippy::disallowed_types)]
    reloader: Arc<std::sync::Mutex<reload::Reloader>>,
    bound: Vec<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    access_log: Option<crate::accesslog::AccessLog>,
    driver_summary: String,
    command_txs: Vec<Sender<Command>>,
    event_rx: Receiver<Event>,
    handles: Vec<JoinHandle<()>>,
    limits: crate::ratelimit::aggregator::Handle,
    /// Kept for its channels: the fetcher thread ends when they close.
    _jwks: crate::auth::jwks::Fetcher,
    _health: health::Prober,
    _outliers: outlier::Detector,
}

/// Binds listeners and starts every worker; returns once all accept.
/// Signals are not touched here (embedders and tests call this directly).
pub fn start(snapshot: Snapshot) -> Result<Running, String> {
    let snapshot = Arc::new(snapshot);
    let workers = snapshot.workers;
    let (mut sockets, bound) = listeners::bind_all(&snapshot.listeners, workers)?;

    // Worker i runs on the i-th CPU this process may use (taskset, cgroup
    // cpuset and systemd CPUAffinity all shape that set), never blindly CPU i.
    let cpus = if snapshot.pin_workers {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let access_log = match &snapshot.access_log {
        Some(spec) => Some(crate::accesslog::AccessLog::start(spec)?),
        None => None,
    };
    let (event_tx, event_rx) = unbounded();
    let (command_txs, command_rxs): (Vec<Sender<Command>>, Vec<Receiver<Command>>) =
        (0..workers).map(|_| unbounded()).unzip();
    let jwks = start_jwks_fetcher(&snapshot, command_txs.clone())?;
    let jwks_sets = jwks.latest();
    let mut handles = Vec::new();
    let limit_channels = crate::ratelimit::aggregator::Channels::new(workers);
    let (outcome_tx, outcome_rx) = unbounded();
    for (id, rx) in command_rxs.into_iter().enumerate() {
        let setup = WorkerSetup {
            id,
            cpu: if cpus.is_empty() {
                None
            } else {
                Some(cpus[id % cpus.len()])
            },
            listeners: std::mem::take(&mut sockets[id]),
            snapshot: snapshot.clone(),
            commands: rx,
            events: event_tx.clone(),
            access_log: access_log.clone(),
            limit_sync: crate::ratelimit::aggregator::WorkerChannels::new(&limit_channels, id),
            jwks_sets: jwks_sets.clone(),
            jwks_asks: Some(jwks.asks.clone()),
            outcome_reports: Some(outcome_tx.clone()),
        };
        handles.push(worker::spawn(setup).map_err(|e| format!("cannot spawn worker {id}: {e}"))?);
    }

    let mut drivers: Vec<&'static str> = vec![""; workers];
    let mut started = 0;
    let start_deadline = Instant::now() + Duration::from_secs(10);
    while started < workers {
        let remaining = start_deadline.saturating_duration_since(Instant::now());
        match event_rx.recv_timeout(remaining) {
            Ok(Event::Started {
                worker,
                driver,
                cpu,
            }) => {
                tracing::info!(worker, driver, cpu = ?cpu, "worker started");
                if let Some(slot) = drivers.get_mut(worker) {
                    *slot = driver;
                }
                started += 1;
            }
            Ok(Event::Failed { worker, error }) => {
                return Err(format!("worker {worker} failed to start: {error}"));
            }
            Ok(Event::Exited { worker, .. }) => {
                return Err(format!("worker {worker} exited during startup"));
            }
            Err(_) => return Err("workers did not start within 10s".into()),
        }
    }
    let limits =
        crate::ratelimit::aggregator::spawn(snapshot.clone(), limit_channels.aggregator_side())
            .map_err(|e| format!("cannot start the rate-limit aggregator: {e}"))?;
    let uring = drivers.iter().filter(|d| **d == "io_uring").count();
    let driver_summary = if uring == workers {
        "io_uring".to_string()
    } else if uring == 0 {
        "epoll".to_string()
    } else {
        format!("mixed: {uring} io_uring, {} epoll", workers - uring)
    };
    // Active health checks: one prober for the process.
    let prober = health::spawn(snapshot.clone(), command_txs.clone())
        .map_err(|e| format!("cannot start the health prober: {e}"))?;
    // Passive health: one judge for the process. It ends when every
    // worker's sender is gone.
    drop(outcome_tx);
    let detector = outlier::spawn(snapshot.clone(), outcome_rx, command_txs.clone())
        .map_err(|e| format!("cannot start outlier detection: {e}"))?;
    // Shared by the control thread (SIGHUP) and the admin thread (POST
    // /reload); both are cold paths, so a mutex is the simple, right tool.
    #[allow(clippy::disallowed_types)]
    let reloader = Arc::new(std::sync::Mutex::new(reload::Reloader::new(
        snapshot.clone(),
        command_txs.clone(),
        limits.control.clone(),
        jwks.reloads(),
        vec![prober.snapshots.clone(), detector.snapshots.clone()],
        &bound,
    )));
    // Endpoints given as host names follow their DNS records.
    dns::spawn(reloader.clone()).map_err(|e| format!("cannot start the DNS thread: {e}"))?;
    // Other nodes' cache purges, through Redis. For the process's life:
    // a [redis] change takes a restart.
    if let Some(redis) = &snapshot.redis {
        cache_purge::spawn_subscriber(redis.clone(), command_txs.clone())
            .map_err(|e| format!("cannot start the cache purge thread: {e}"))?;
    }
    let admin_addr = match snapshot.admin {
        None => None,
        Some(addr) => Some(admin::spawn(
            addr,
            admin::Admin {
                reloader: reloader.clone(),
                workers: command_txs.clone(),
                drivers: drivers.clone(),
                access_log_dropped: access_log.as_ref().map(|l| l.dropped.clone()),
                limits: limits.stats.clone(),
                jwks: jwks.board.clone(),
                health: prober.board.clone(),
                outliers: detector.board.clone(),
            },
        )?),
    };
    Ok(Running {
        snapshot,
        reloader,
        bound,
        admin_addr,
        access_log,
        driver_summary,
        command_txs,
        event_rx,
        handles,
        limits,
        _jwks: jwks,
        _health: prober,
        _outliers: detector,
    })
}

/// Starts the JWKS fetcher (publishing to the workers' command channels)
/// and waits, as far as each source's `jwks_startup_wait` allows, for its
/// first keys, so that workers start with them.
fn start_jwks_fetcher(
    snapshot: &Snapshot,
    workers: Vec<Sender<Command>>,
) -> Result<crate::auth::jwks::Fetcher, String> {
    let sources = crate::auth::jwks::sources(&snapshot.auth);
    let fetcher = crate::auth::jwks::Fetcher::spawn(sources.clone(), move |set| {
        for w in &workers {
            let _ = w.send(Command::Jwks(set.clone()));
        }
    })
    .map_err(|e| format!("cannot start the JWKS fetcher: {e}"))?;
    for provider in fetcher.wait_for_first(&sources) {
        tracing::error!(
            %provider,
            "no JWKS keys within jwks_startup_wait; this provider's tokens are refused until a fetch succeeds"
        );
    }
    Ok(fetcher)
}

impl Running {
    /// The bound listener addresses, port 0 resolved.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.bound
    }

    /// Reloads the config file (what SIGHUP does). See `reload::Reloader`.
    pub fn reload(&self) -> Result<String, Vec<String>> {
        match self.reloader.lock() {
            Ok(mut r) => r.reload(),
            Err(_) => Err(vec!["reload state poisoned by an earlier panic".into()]),
        }
    }

    /// The admin listener's bound address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `io_uring`, `epoll` or a mix, as the workers reported.
    pub fn driver_summary(&self) -> &str {
        &self.driver_summary
    }

    /// Waits for SIGTERM/SIGINT (blocked by `signals::block`), then drains.
    pub fn serve_until_signal(self) -> Result<(), String> {
        warn_expiring_certificates(&self.snapshot);
        let mut expiry_checked = Instant::now();
        loop {
            if expiry_checked.elapsed() >= EXPIRY_CHECK_INTERVAL {
                expiry_checked = Instant::now();
                if let Ok(r) = self.reloader.lock() {
                    warn_expiring_certificates(&r.current());
                }
            }
            match signals::wait(Duration::from_millis(200)) {
                Some(signals::Signal::Terminate) => break,
                Some(signals::Signal::Reload) => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = self.reload();
                }
                Some(signals::Signal::Reopen) => {
                    if let Some(log) = &self.access_log {
                        tracing::info!("SIGUSR1: reopening the access log");
                        let _ = log.to_writer.send(crate::accesslog::LogMsg::Reopen);
                    }
                }
                None => {}
            }
            while let Ok(event) = self.event_rx.try_recv() {
                if let Event::Failed { worker, error } = event {
                    tracing::error!(worker, %error, "worker failed");
                }
            }
            if let Some(dead) = self.handles.iter().position(|h| h.is_finished()) {
                return Err(format!("worker {dead} stopped unexpectedly"));
            }
        }
        self.drain()
    }

    /// Drains every worker (see `Command::Drain`) and joins their threads.
    pub fn drain(self) -> Result<(), String> {
        let workers = self.handles.len();
        // The running config's drain_timeout: a reload may have changed it.
        let drain = self
            .reloader
            .lock()
            .map_or(self.snapshot.limits.drain_timeout, |r| {
                r.current().limits.drain_timeout
            });
        tracing::info!(
            ?drain,
            "draining: no new connections; finishing in-flight requests"
        );
        for tx in &self.command_txs {
            let _ = tx.send(Command::Drain);
        }
        let deadline = Instant::now() + drain + Duration::from_secs(2);
        let mut exited = 0;
        while exited < workers {
            match self
                .event_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Event::Exited {
                    worker,
                    requests,
                    panics,
                }) => {
                    tracing::info!(worker, requests, panics, "worker drained");
                    exited += 1;
                }
                Ok(_) => {}
                Err(_) => return Err("workers did not finish draining in time".into()),
            }
        }
        for h in self.handles {
            let _ = h.join();
        }
        self.limits.stop();
        Ok(())
    }
}
