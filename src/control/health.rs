//! [cold] Active health checks: one `ringgate-health` thread per process
//! (not one per worker) probes every endpoint of every upstream that has a
//! `health_check`, each on its own interval plus jitter, all probes due at
//! one moment in parallel. `upstream::health` turns results into states;
//! when one changes the thread logs it and sends every worker the whole
//! set of endpoints that are down (`Command::EndpointHealth`), so the
//! latest message is the truth whatever a worker missed. A reload hands it
//! the new snapshot: endpoints it still has keep their state, new ones
//! start up and are probed at once.
//!
//! What it saw is kept on a board the admin API reads (`GET /upstreams`,
//! `/metrics`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::snapshot::{Snapshot, UpstreamSpec};
use crate::upstream::health::{DownEndpoints, EndpointHealth, HealthCheck, Probe, judge};
use crate::worker::Command;

/// Largest probe answer body read.
const MAX_PROBE_BODY: usize = 64 * 1024;

/// One endpoint as the prober tracks it.
#[derive(Debug, Clone)]
pub struct EndpointReport {
    pub upstream: String,
    pub addr: SocketAddr,
    pub health: EndpointHealth,
    pub checks_passed: u64,
    pub checks_failed: u64,
    /// State changes since the endpoint was first seen.
    pub transitions: u64,
}

/// What the prober last saw, for the admin API.
#[allow(clippy::disallowed_types)]
pub type Board = Arc<std::sync::Mutex<Vec<EndpointReport>>>;

/// The running prober: send it each new snapshot.
pub struct Prober {
    pub snapshots: Sender<Arc<Snapshot>>,
    pub board: Board,
}

struct Tracked {
    report: EndpointReport,
    due: Instant,
}

/// Starts the prober for `snapshot`, telling `workers` what it finds.
pub fn spawn(snapshot: Arc<Snapshot>, workers: Vec<Sender<Command>>) -> std::io::Result<Prober> {
    let (snapshots, updates) = crossbeam_channel::unbounded();
    let board: Board = Default::default();
    let shared = board.clone();
    std::thread::Builder::new()
        .name("ringgate-health".into())
        .spawn(move || run(snapshot, updates, workers, shared))?;
    Ok(Prober { snapshots, board })
}

fn run(
    mut snapshot: Arc<Snapshot>,
    updates: Receiver<Arc<Snapshot>>,
    workers: Vec<Sender<Command>>,
    board: Board,
) {
    let mut tracked: HashMap<(String, SocketAddr), Tracked> = HashMap::new();
    // What the workers were last told.
    let mut told = DownEndpoints::default();
    let mut rng = seed();
    loop {
        retrack(&snapshot, &mut tracked);
        let now = Instant::now();
        let due: Vec<(usize, usize)> = checked(&snapshot)
            .flat_map(|(u, spec, _)| {
                spec.endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        tracked
                            .get(&(spec.name.clone(), e.addr))
                            .is_some_and(|t| t.due <= now)
                    })
                    .map(move |(i, _)| (u, i))
            })
            .collect();
        if !due.is_empty() {
            let results = probe_all(&snapshot, &due);
            for ((u, i), result) in due.into_iter().zip(results) {
                let spec = &snapshot.upstreams[u];
                let Some(check) = &spec.health_check else {
                    continue;
                };
                let addr = spec.endpoints[i].addr;
                let Some(t) = tracked.get_mut(&(spec.name.clone(), addr)) else {
                    continue;
                };
                match &result {
                    Ok(()) => t.report.checks_passed += 1,
                    Err(_) => t.report.checks_failed += 1,
                }
                if let Some(up) = t.report.health.record(result, check) {
                    t.report.transitions += 1;
                    if up {
                        tracing::info!(upstream = %spec.name, endpoint = %addr, "endpoint healthy again: back in traffic");
                    } else {
                        tracing::warn!(upstream = %spec.name, endpoint = %addr, reason = t.report.health.last_failure.as_deref().unwrap_or(""), "endpoint unhealthy: out of traffic");
                    }
                }
                t.due = next_due(
                    check
                        .interval
                        .saturating_add(jitter(&mut rng, check.jitter)),
                );
            }
            tell(&tracked, &mut told, &workers);
            publish(&snapshot, &tracked, &board);
        }
        let next = tracked
            .values()
            .map(|t| t.due)
            .min()
            .map_or(Duration::from_secs(3600), |d| {
                d.saturating_duration_since(Instant::now())
            });
        match updates.recv_timeout(next) {
            Ok(newer) => {
                snapshot = newer;
                // Newer ones queued meanwhile win.
                while let Ok(newer) = updates.try_recv() {
                    snapshot = newer;
                }
                // Endpoints no longer checked are no longer held down.
                retrack(&snapshot, &mut tracked);
                tell(&tracked, &mut told, &workers);
                publish(&snapshot, &tracked, &board);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The upstreams with health checks, with their index.
fn checked(snapshot: &Snapshot) -> impl Iterator<Item = (usize, &UpstreamSpec, &HealthCheck)> {
    snapshot
        .upstreams
        .iter()
        .enumerate()
        .filter_map(|(i, u)| u.health_check.as_ref().map(|c| (i, u, c)))
}

/// Keeps the endpoints `snapshot` still checks, adds new ones (up, probed
/// at once), drops the rest.
fn retrack(snapshot: &Snapshot, tracked: &mut HashMap<(String, SocketAddr), Tracked>) {
    let mut keep = HashMap::with_capacity(tracked.len());
    for (_, spec, _) in checked(snapshot) {
        for e in &spec.endpoints {
            let key = (spec.name.clone(), e.addr);
            let entry = tracked.remove(&key).unwrap_or_else(|| Tracked {
                report: EndpointReport {
                    upstream: spec.name.clone(),
                    addr: e.addr,
                    health: EndpointHealth::default(),
                    checks_passed: 0,
                    checks_failed: 0,
                    transitions: 0,
                },
                due: Instant::now(),
            });
            keep.insert(key, entry);
        }
    }
    *tracked = keep;
}

/// Probes every `(upstream, endpoint)` in `due` at once; results in order.
fn probe_all(snapshot: &Snapshot, due: &[(usize, usize)]) -> Vec<Result<(), String>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = due
            .iter()
            .map(|&(u, i)| scope.spawn(move || probe_one(&snapshot.upstreams[u], i)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("probe panicked".into())))
            .collect()
    })
}

/// One probe of endpoint `i` of `spec`.
fn probe_one(spec: &UpstreamSpec, i: usize) -> Result<(), String> {
    let Some(check) = &spec.health_check else {
        return Ok(());
    };
    match &check.probe {
        Probe::Tcp => std::net::TcpStream::connect_timeout(&spec.endpoints[i].addr, check.timeout)
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
        Probe::Http {
            method, path, host, ..
        } => {
            let (status, body) = crate::upstream::fetch::probe(
                spec,
                i,
                method,
                path,
                host.as_deref(),
                check.timeout,
                MAX_PROBE_BODY,
            )
            .map_err(|e| e.to_string())?;
            judge(&check.probe, status, &body)
        }
    }
}

/// Tells every worker which endpoints are down now, if that is not what
/// they were last told (`told`).
fn tell(
    tracked: &HashMap<(String, SocketAddr), Tracked>,
    told: &mut DownEndpoints,
    workers: &[Sender<Command>],
) {
    let mut down = DownEndpoints::default();
    for t in tracked.values().filter(|t| !t.report.health.up) {
        down.insert(&t.report.upstream, t.report.addr);
    }
    if down == *told {
        return;
    }
    *told = down.clone();
    let down = Arc::new(down);
    for w in workers {
        let _ = w.send(Command::EndpointHealth(down.clone()));
    }
}

/// Copies the tracked endpoints onto the board, in config order.
fn publish(snapshot: &Snapshot, tracked: &HashMap<(String, SocketAddr), Tracked>, board: &Board) {
    let reports: Vec<EndpointReport> = checked(snapshot)
        .flat_map(|(_, spec, _)| {
            spec.endpoints
                .iter()
                .filter_map(|e| tracked.get(&(spec.name.clone(), e.addr)))
                .map(|t| t.report.clone())
        })
        .collect();
    if let Ok(mut b) = board.lock() {
        *b = reports;
    }
}

/// The board as Prometheus text: each checked endpoint's state, probes
/// by result and state changes.
pub fn render_metrics(board: &Board) -> String {
    use crate::metrics::names::{ENDPOINT_HEALTHY, HEALTH_CHECKS, HEALTH_TRANSITIONS};
    use crate::metrics::render::endpoint_series;
    use std::fmt::Write;
    let Ok(reports) = board.lock() else {
        return String::new();
    };
    let mut out = String::new();
    if reports.is_empty() {
        return out;
    }
    endpoint_series(
        &mut out,
        ENDPOINT_HEALTHY,
        "gauge",
        "1 while health checks keep the endpoint in traffic, 0 while they hold it out.",
        reports
            .iter()
            .map(|r| (r.upstream.clone(), r.addr, u64::from(r.health.up))),
    );
    let _ = writeln!(
        out,
        "# HELP {HEALTH_CHECKS} Health probes by endpoint and result (one prober per process).\n# TYPE {HEALTH_CHECKS} counter"
    );
    for r in reports.iter() {
        let _ = writeln!(
            out,
            "{HEALTH_CHECKS}{{upstream=\"{u}\",endpoint=\"{a}\",result=\"passed\"}} {}\n{HEALTH_CHECKS}{{upstream=\"{u}\",endpoint=\"{a}\",result=\"failed\"}} {}",
            r.checks_passed,
            r.checks_failed,
            u = r.upstream,
            a = r.addr
        );
    }
    endpoint_series(
        &mut out,
        HEALTH_TRANSITIONS,
        "counter",
        "Times health checks moved the endpoint in or out of traffic.",
        reports
            .iter()
            .map(|r| (r.upstream.clone(), r.addr, r.transitions)),
    );
    out
}

/// `GET /upstreams`: every upstream of `snapshot` and each endpoint's
/// state ("up", "down" by health checks, "ejected" by outlier detection,
/// or "unchecked"), with why.
pub fn upstreams_json(
    snapshot: &Snapshot,
    board: &Board,
    outliers: &super::outlier::Board,
) -> String {
    let reports = board.lock().map(|b| b.clone()).unwrap_or_default();
    let ejections = outliers.lock().map(|b| b.clone()).unwrap_or_default();
    let upstreams: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|spec| {
            let endpoints: Vec<serde_json::Value> = spec
                .endpoints
                .iter()
                .map(|e| {
                    let report = reports
                        .iter()
                        .find(|r| r.upstream == spec.name && r.addr == e.addr);
                    let ejection = ejections
                        .iter()
                        .find(|r| r.upstream == spec.name && r.addr == e.addr);
                    let mut json = match report {
                        None => serde_json::json!({
                            "address": e.addr.to_string(),
                            "weight": e.weight,
                            "state": "unchecked",
                        }),
                        Some(r) => serde_json::json!({
                            "address": e.addr.to_string(),
                            "weight": e.weight,
                            "state": if r.health.up { "up" } else { "down" },
                            "last_failure": r.health.last_failure,
                            "checks_passed": r.checks_passed,
                            "checks_failed": r.checks_failed,
                            "transitions": r.transitions,
                        }),
                    };
                    if let Some(o) = ejection {
                        json["ejected"] = o.ejected.into();
                        json["ejections"] = o.ejections.into();
                        json["ejection_reason"] = o.reason.clone().into();
                        if o.ejected {
                            json["state"] = "ejected".into();
                        } else if report.is_none() {
                            json["state"] = "up".into();
                        }
                    }
                    json
                })
                .collect();
            serde_json::json!({
                "name": spec.name,
                "health_check": spec.health_check.is_some(),
                "outlier_detection": spec.outlier_detection.is_some(),
                "when_all_down": match spec.when_all_down {
                    crate::snapshot::WhenAllDown::Refuse => "refuse",
                    crate::snapshot::WhenAllDown::FailOpen => "fail_open",
                },
                "endpoints": endpoints,
            })
        })
        .collect();
    let mut text = serde_json::json!({ "upstreams": upstreams }).to_string();
    text.push('\n');
    text
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
        | 1
}

/// A random duration in [0, `max`] (xorshift64*).
fn jitter(state: &mut u64, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
    let bound = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(r % bound.saturating_add(1))
}

/// `wait` from now; an interval too long for the clock (a config can say
/// "100000000d") waits a year instead of overflowing `Instant`.
fn next_due(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bound() {
        let mut s = seed();
        assert_eq!(jitter(&mut s, Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(50);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(&mut s, max)).collect();
        assert!(draws.iter().all(|d| *d <= max));
        assert!(draws.iter().any(|d| *d > max / 2) && draws.iter().any(|d| *d < max / 2));
        // Bounds a config can reach must not overflow.
        assert!(jitter(&mut s, Duration::MAX) <= Duration::MAX);
        assert!(next_due(Duration::MAX) > Instant::now());
    }
}
