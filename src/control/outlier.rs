//! [cold] Passive outlier detection: one `ringgate-outlier` thread per
//! process takes in every worker's per-endpoint windows of tries (sent
//! each 100 ms), judges them together with `upstream::outlier`'s rules,
//! and when the set of ejected endpoints changes, logs it and sends every
//! worker the whole set (`Command::Ejections`), as the health prober does
//! for the endpoints it holds down. Its own thread, not the prober's: a
//! probe round can block for its timeout, and an ejection must not wait.
//!
//! What it decided is kept on a board for the admin API (`GET
//! /upstreams`, `/metrics`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::snapshot::Snapshot;
use crate::upstream::health::DownEndpoints;
use crate::upstream::outlier::{Change, OutcomeReport, UpstreamOutliers};
use crate::worker::Command;

/// One endpoint as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionReport {
    pub upstream: String,
    pub addr: SocketAddr,
    pub ejected: bool,
    /// Why it was (last) ejected.
    pub reason: Option<String>,
    pub ejections: u64,
}

/// What the thread last decided, for the admin API.
#[allow(clippy::disallowed_types)]
pub type Board = Arc<std::sync::Mutex<Vec<EjectionReport>>>;

/// The running detector: send it each new snapshot.
pub struct Detector {
    pub snapshots: Sender<Arc<Snapshot>>,
    pub board: Board,
}

/// Starts the detector for `snapshot`, judging what comes on `reports`
/// and telling `workers`.
pub fn spawn(
    snapshot: Arc<Snapshot>,
    reports: Receiver<OutcomeReport>,
    workers: Vec<Sender<Command>>,
) -> std::io::Result<Detector> {
    let (snapshots, updates) = crossbeam_channel::unbounded();
    let board: Board = Default::default();
    let shared = board.clone();
    std::thread::Builder::new()
        .name("ringgate-outlier".into())
        .spawn(move || run(snapshot, updates, reports, workers, shared))?;
    Ok(Detector { snapshots, board })
}

/// An upstream under detection, and when its interval ends next.
struct Judged {
    outliers: UpstreamOutliers,
    interval_ends: Instant,
}

fn run(
    snapshot: Arc<Snapshot>,
    updates: Receiver<Arc<Snapshot>>,
    reports: Receiver<OutcomeReport>,
    workers: Vec<Sender<Command>>,
    board: Board,
) {
    let mut snapshot = snapshot;
    let mut judged = rejudge(&snapshot, HashMap::new());
    let mut told = DownEndpoints::default();
    publish(&snapshot, &judged, &board);
    loop {
        let now = Instant::now();
        let mut changed = false;
        for (name, j) in &mut judged {
            let changes = if j.interval_ends <= now {
                j.interval_ends = now + j.outliers.rules.interval;
                j.outliers.interval_ended(now)
            } else {
                j.outliers.readmit_due(now)
            };
            changed |= !changes.is_empty();
            log_changes(name, &j.outliers, &changes);
        }
        if changed {
            tell(&judged, &mut told, &workers);
            publish(&snapshot, &judged, &board);
        }
        let wake = judged
            .values()
            .flat_map(|j| [Some(j.interval_ends), j.outliers.next_readmission()])
            .flatten()
            .min()
            .map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
        crossbeam_channel::select! {
            recv(reports) -> report => {
                let Ok(report) = report else { return };
                let mut changed = absorb(&mut judged, &report, Instant::now());
                // Whatever else has queued, in one go.
                while let Ok(report) = reports.try_recv() {
                    changed |= absorb(&mut judged, &report, Instant::now());
                }
                if changed {
                    tell(&judged, &mut told, &workers);
                    publish(&snapshot, &judged, &board);
                }
            }
            recv(updates) -> newer => {
                let Ok(mut newer) = newer else { return };
                while let Ok(latest) = updates.try_recv() {
                    newer = latest;
                }
                snapshot = newer;
                judged = rejudge(&snapshot, judged);
                tell(&judged, &mut told, &workers);
                publish(&snapshot, &judged, &board);
            }
            default(wake) => {}
        }
    }
}

/// Takes in one worker's report; whether an endpoint was ejected.
fn absorb(judged: &mut HashMap<String, Judged>, report: &OutcomeReport, now: Instant) -> bool {
    let mut changed = false;
    for (name, addr, window) in &report.windows {
        let Some(j) = judged.get_mut(name) else {
            continue;
        };
        if let Some(change) = j.outliers.absorb(*addr, window, now) {
            log_changes(name, &j.outliers, std::slice::from_ref(&change));
            changed = true;
        }
    }
    changed
}

/// The upstreams `snapshot` runs detection on, keeping what `before` knew
/// of endpoints that are still there (an ejection outlives a reload).
fn rejudge(snapshot: &Snapshot, mut before: HashMap<String, Judged>) -> HashMap<String, Judged> {
    let now = Instant::now();
    let mut judged = HashMap::new();
    for spec in &snapshot.upstreams {
        let Some(rules) = &spec.outlier_detection else {
            continue;
        };
        let addrs: Vec<SocketAddr> = spec.endpoints.iter().map(|e| e.addr).collect();
        let mut outliers = UpstreamOutliers::new(rules.clone(), &addrs);
        if let Some(old) = before.remove(&spec.name) {
            for record in &mut outliers.endpoints {
                if let Some(known) = old
                    .outliers
                    .endpoints
                    .iter()
                    .find(|r| r.addr == record.addr)
                {
                    *record = known.clone();
                }
            }
        }
        judged.insert(
            spec.name.clone(),
            Judged {
                outliers,
                interval_ends: now + rules.interval,
            },
        );
    }
    judged
}

fn log_changes(upstream: &str, outliers: &UpstreamOutliers, changes: &[Change]) {
    for change in changes {
        let Some(record) = outliers.endpoints.get(change.endpoint) else {
            continue;
        };
        match &change.ejected {
            Some((reason, time)) => tracing::warn!(
                upstream,
                endpoint = %record.addr,
                reason = %reason,
                ejected_for_ms = time.as_millis() as u64,
                ejections = record.ejections_total,
                "endpoint ejected by outlier detection: out of traffic"
            ),
            None => tracing::info!(
                upstream,
                endpoint = %record.addr,
                "ejection over: endpoint back in traffic"
            ),
        }
    }
}

/// Tells every worker which endpoints are ejected now, if that is not
/// what they were last told (`told`).
fn tell(judged: &HashMap<String, Judged>, told: &mut DownEndpoints, workers: &[Sender<Command>]) {
    let mut ejected = DownEndpoints::default();
    for (name, j) in judged {
        for record in j.outliers.endpoints.iter().filter(|r| r.is_ejected()) {
            ejected.insert(name, record.addr);
        }
    }
    if ejected == *told {
        return;
    }
    *told = ejected.clone();
    let ejected = Arc::new(ejected);
    for w in workers {
        let _ = w.send(Command::Ejections(ejected.clone()));
    }
}

/// Copies every judged endpoint onto the board, in config order.
fn publish(snapshot: &Snapshot, judged: &HashMap<String, Judged>, board: &Board) {
    let reports: Vec<EjectionReport> = snapshot
        .upstreams
        .iter()
        .filter_map(|spec| Some((spec, judged.get(&spec.name)?)))
        .flat_map(|(spec, j)| {
            j.outliers.endpoints.iter().map(|r| EjectionReport {
                upstream: spec.name.clone(),
                addr: r.addr,
                ejected: r.is_ejected(),
                reason: r.reason.map(|reason| reason.to_string()),
                ejections: r.ejections_total,
            })
        })
        .collect();
    if let Ok(mut b) = board.lock() {
        *b = reports;
    }
}

/// The board as Prometheus text.
pub fn render_metrics(board: &Board) -> String {
    use crate::metrics::names::{ENDPOINT_EJECTED, ENDPOINT_EJECTIONS};
    use crate::metrics::render::endpoint_series;
    let Ok(reports) = board.lock() else {
        return String::new();
    };
    let mut out = String::new();
    endpoint_series(
        &mut out,
        ENDPOINT_EJECTED,
        "gauge",
        "1 while outlier detection holds the endpoint out of traffic.",
        reports
            .iter()
            .map(|r| (r.upstream.clone(), r.addr, u64::from(r.ejected))),
    );
    endpoint_series(
        &mut out,
        ENDPOINT_EJECTIONS,
        "counter",
        "Times outlier detection ejected the endpoint.",
        reports
            .iter()
            .map(|r| (r.upstream.clone(), r.addr, r.ejections)),
    );
    out
}
