//! [cold] Hot reload (SIGHUP or `POST /reload` on the admin listener):
//! parse and validate the file again; on any error keep the running config
//! and report every error; on success hand each worker the new snapshot and
//! wait for all of them to switch. Requests that start after the switch use
//! the new config; requests in flight finish on the old one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config;
use crate::snapshot::Snapshot;
use crate::worker::Command;

pub struct Reloader {
    path: Option<PathBuf>,
    current: Arc<Snapshot>,
    workers: Vec<Sender<Command>>,
    limits: Sender<crate::ratelimit::aggregator::Control>,
    /// The JWKS fetcher's sources.
    jwks: Sender<Vec<crate::auth::jwks::JwksSource>>,
    /// The health prober and outlier detection (they follow the
    /// upstreams a reload brings).
    health: Vec<Sender<Arc<Snapshot>>>,
    generation: u64,
    /// (configured address, bound address) of every running listener.
    listeners: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
}

impl Reloader {
    pub fn new(
        current: Arc<Snapshot>,
        workers: Vec<Sender<Command>>,
        limits: Sender<crate::ratelimit::aggregator::Control>,
        jwks: Sender<Vec<crate::auth::jwks::JwksSource>>,
        health: Vec<Sender<Arc<Snapshot>>>,
        bound: &[std::net::SocketAddr],
    ) -> Reloader {
        let path =
            (current.source != config::EMBEDDED_NAME).then(|| PathBuf::from(&current.source));
        let listeners = current
            .listeners
            .iter()
            .map(|l| l.addr)
            .zip(bound.iter().copied())
            .collect();
        Reloader {
            path,
            current,
            workers,
            limits,
            jwks,
            health,
            generation: 1,
            listeners,
        }
    }

    /// Starts added listeners and stops removed ones on every worker.
    fn apply_listener_changes(&mut self, next: &Snapshot) -> Result<Vec<String>, Vec<String>> {
        let added: Vec<_> = next
            .listeners
            .iter()
            .filter(|l| {
                !self
                    .listeners
                    .iter()
                    .any(|(configured, _)| *configured == l.addr)
            })
            .cloned()
            .collect();
        let removed: Vec<_> = self
            .listeners
            .iter()
            .filter(|(configured, _)| !next.listeners.iter().any(|l| l.addr == *configured))
            .copied()
            .collect();
        let mut notes = Vec::new();
        if !added.is_empty() {
            // Bind before anything changes, so a port in use refuses the reload.
            let (mut sockets, bound) =
                super::listeners::bind_all(&added, self.workers.len()).map_err(|e| vec![e])?;
            for (w, tx) in self.workers.iter().enumerate() {
                let _ = tx.send(Command::AddListeners(std::mem::take(&mut sockets[w])));
            }
            for (spec, addr) in added.iter().zip(bound) {
                notes.push(format!("listening on http://{addr}"));
                self.listeners.push((spec.addr, addr));
            }
        }
        for (configured, bound) in removed {
            for tx in &self.workers {
                let _ = tx.send(Command::RemoveListener(bound));
            }
            self.listeners.retain(|(c, _)| *c != configured);
            notes.push(format!("stopped listening on {bound}"));
        }
        Ok(notes)
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.clone()
    }

    /// Reloads the config file. `Ok` carries a one-line summary; `Err`
    /// carries every problem, and the running config is unchanged.
    pub fn reload(&mut self) -> Result<String, Vec<String>> {
        let Some(path) = &self.path else {
            return Err(vec![
                "running on the embedded default config: there is no file to reload".into(),
            ]);
        };
        let mut next = match config::load_file(path) {
            Ok(s) => s,
            Err(errors) => {
                let list: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                for e in &list {
                    tracing::error!(error = %e, "reload rejected; the running config stays");
                }
                return Err(list);
            }
        };
        // What a reload cannot change in a running process (a restart can).
        let old = &self.current;
        next.workers = old.workers;
        if next.rate_limits == old.rate_limits {
            next.limits_id = old.limits_id;
        }
        let mut notes = Vec::new();
        if next.admin != old.admin {
            notes.push("admin.bind changed: it takes effect after a restart");
        }
        if next.access_log != old.access_log {
            notes.push("access_log changed: it takes effect after a restart");
        }
        if next.io_driver != old.io_driver || next.pin_workers != old.pin_workers {
            notes.push("io_driver/pin_workers changed: they take effect after a restart");
        }
        if next.redis != old.redis {
            notes.push("[redis] changed: it takes effect after a restart");
            next.redis = old.redis.clone();
        }
        for n in &notes {
            tracing::warn!("{n}");
        }
        let listener_notes = self.apply_listener_changes(&next)?;
        for n in &listener_notes {
            tracing::info!("{n}");
        }
        let next = Arc::new(next);
        // The aggregator first, so it knows the new policy indices by the
        // time workers report with them.
        let _ = self
            .limits
            .send(crate::ratelimit::aggregator::Control::Reload(next.clone()));
        let (ack_tx, ack_rx) = crossbeam_channel::unbounded();
        for w in &self.workers {
            let _ = w.send(Command::Reload(next.clone(), ack_tx.clone()));
        }
        drop(ack_tx);
        let _ = self.jwks.send(crate::auth::jwks::sources(&next.auth));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut switched = 0;
        while switched < self.workers.len() {
            match ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(_) => switched += 1,
                Err(_) => break,
            }
        }
        self.current = next;
        self.generation += 1;
        for watcher in &self.health {
            let _ = watcher.send(self.current.clone());
        }
        super::warn_expiring_certificates(&self.current);
        let summary = format!(
            "reloaded {} (generation {}): {} routes, {} upstreams; {switched}/{} workers switched{}",
            self.current.source,
            self.generation,
            self.current.routes.len(),
            self.current.upstreams.len(),
            self.workers.len(),
            notes
                .iter()
                .map(|s| s.to_string())
                .chain(listener_notes)
                .map(|s| format!("; {s}"))
                .collect::<String>()
        );
        tracing::info!("{summary}");
        Ok(summary)
    }
}
