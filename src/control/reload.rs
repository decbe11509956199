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

    /// Makes `next` the running snapshot everywhere: the rate-limit
    /// aggregator, every worker (waiting up to 5 s for each to switch),
    /// the JWKS fetcher, the health prober and outlier detection. Returns
    /// how many workers switched.
    fn install(&mut self, next: Arc<Snapshot>) -> usize {
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
        switched
    }

    /// Installs fresh resolutions of upstreams' host names: `(upstream,
    /// the sources resolved, what they resolved to)`. One whose sources
    /// are no longer the running ones (a reload came in between) is
    /// skipped. Everything else stays as it is; workers keep the pools
    /// of addresses that did not change. Returns the upstreams changed.
    pub fn apply_resolved(
        &mut self,
        resolved: Vec<(
            String,
            Vec<crate::snapshot::EndpointSource>,
            Vec<crate::snapshot::EndpointSpec>,
        )>,
    ) -> Vec<String> {
        let mut next = (*self.current).clone();
        let mut changed = Vec::new();
        for (name, sources, endpoints) in resolved {
            let Some(spec) = next
                .upstreams
                .iter_mut()
                .find(|u| u.name == name && u.sources == sources)
            else {
                continue;
            };
            let before: Vec<_> = spec.endpoints.iter().map(|e| (e.addr, e.source)).collect();
            let after: Vec<_> = endpoints.iter().map(|e| (e.addr, e.source)).collect();
            if before == after {
                continue;
            }
            tracing::info!(
                upstream = %name,
                before = ?before.iter().map(|e| e.0).collect::<Vec<_>>(),
                after = ?after.iter().map(|e| e.0).collect::<Vec<_>>(),
                "endpoint addresses changed (DNS)"
            );
            *spec = spec.with_endpoints(endpoints);
            changed.push(name);
        }
        if !changed.is_empty() {
            next.id = crate::config::next_snapshot_id();
            self.install(Arc::new(next));
        }
        changed
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
        let switched = self.install(Arc::new(next));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EndpointSpec;

    fn reloader(balance: &str) -> (Reloader, crossbeam_channel::Receiver<Command>) {
        let current = crate::config::load_str(
            &format!("workers = 1\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.named]\nendpoints = [\"localhost:9000\", \"127.0.0.1:9001\"]\nbalance = \"{balance}\"\nhash_on = \"client_ip\"\n[[routes]]\nupstream = \"named\"\n"),
            "t.toml",
        )
        .expect("valid");
        let (worker_tx, worker_rx) = crossbeam_channel::unbounded();
        let (limits, _) = crossbeam_channel::unbounded();
        let (jwks, _) = crossbeam_channel::unbounded();
        let r = Reloader::new(
            Arc::new(current),
            vec![worker_tx],
            limits,
            jwks,
            vec![],
            &[],
        );
        (r, worker_rx)
    }

    fn endpoint(addr: &str, source: usize) -> EndpointSpec {
        EndpointSpec {
            addr: addr.parse().unwrap(),
            weight: 1,
            authority: b"localhost:9000".as_slice().into(),
            source,
        }
    }

    /// Answers the worker's Reload (as a worker would), returning it.
    fn take_reload(rx: &crossbeam_channel::Receiver<Command>) -> Option<Arc<Snapshot>> {
        match rx.try_recv() {
            Ok(Command::Reload(s, ack)) => {
                let _ = ack.send(0);
                Some(s)
            }
            _ => None,
        }
    }

    #[test]
    fn a_changed_address_set_is_installed_for_that_upstream_alone() {
        let (mut r, rx) = reloader("consistent_hash");
        let before = r.current();
        let sources = before.upstreams[0].sources.clone();
        let fresh = vec![
            endpoint("10.0.0.1:9000", 0),
            endpoint("10.0.0.2:9000", 0),
            endpoint("127.0.0.1:9001", 1),
        ];
        // The worker answers from its own thread, as install waits for it.
        let answer = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Some(s) = take_reload(&rx) {
                    return (s, rx);
                }
                assert!(Instant::now() < deadline, "no reload reached the worker");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let changed = r.apply_resolved(vec![("named".into(), sources.clone(), fresh.clone())]);
        assert_eq!(changed, vec!["named".to_string()]);
        let (sent, rx) = answer.join().unwrap();
        let now = r.current();
        assert!(Arc::ptr_eq(&sent, &now), "the worker got the new snapshot");
        let addrs: Vec<_> = now.upstreams[0].endpoints.iter().map(|e| e.addr).collect();
        assert_eq!(addrs, fresh.iter().map(|e| e.addr).collect::<Vec<_>>());
        assert_ne!(now.id, before.id);
        assert_eq!(now.limits_id, before.limits_id, "rate limits untouched");
        assert_ne!(now.upstreams[0].hash_ring, before.upstreams[0].hash_ring);
        assert!(
            now.upstreams[0]
                .hash_ring
                .iter()
                .all(|(_, i)| (*i as usize) < 3),
            "the ring is of the new endpoints"
        );
        assert_eq!(now.routes.len(), before.routes.len());
        // The same answer again changes nothing and tells nobody.
        let changed = r.apply_resolved(vec![("named".into(), sources, fresh.clone())]);
        assert!(changed.is_empty());
        assert!(take_reload(&rx).is_none());
        // An answer for sources a reload has since replaced is dropped.
        let mut old_sources = now.upstreams[0].sources.clone();
        old_sources[0].text = "elsewhere:9000".into();
        let changed = r.apply_resolved(vec![(
            "named".into(),
            old_sources,
            vec![endpoint("10.9.9.9:9000", 0)],
        )]);
        assert!(changed.is_empty());
        assert!(take_reload(&rx).is_none());
        assert!(Arc::ptr_eq(&r.current(), &now));
    }
}
