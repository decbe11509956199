//! [cold] Cache purges: applied on every worker of this node before the
//! admin API answers, and, where `[redis]` is configured, published on the
//! channel `{key_prefix}cache-purge` for the other nodes, whose purge
//! thread (subscribed to it) applies each one on their workers.
//!
//! Redis pub/sub delivers to the nodes connected at that moment: a node
//! cut off from Redis when a purge is published misses it (its copies
//! live until they expire). The admin answer says how many nodes received
//! it, so an operator (or a script) can tell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::cache::purge::Purge;
use crate::redis::{Connection, RedisError, Reply};
use crate::snapshot::RedisSpec;
use crate::worker::Command;

/// How long the workers get to apply a purge.
const WORKER_WAIT: Duration = Duration::from_secs(2);

/// How long the purge thread waits for a message at a time (a silent
/// channel is normal), and before connecting again after a failure.
const POLL: Duration = Duration::from_secs(30);
const RECONNECT: Duration = Duration::from_secs(1);

/// The channel purges are published on.
pub fn channel(spec: &RedisSpec) -> Vec<u8> {
    format!("{}cache-purge", spec.key_prefix).into_bytes()
}

/// Sends `purge` to every worker and waits until each has applied it:
/// returns the objects matched and the workers that answered.
pub fn purge_all(workers: &[Sender<Command>], purge: Purge) -> (usize, usize) {
    let purge = Arc::new(purge);
    let (tx, rx) = crossbeam_channel::unbounded();
    for w in workers {
        let _ = w.send(Command::CachePurge(purge.clone(), tx.clone()));
    }
    drop(tx);
    let deadline = Instant::now() + WORKER_WAIT;
    let (mut purged, mut answered) = (0, 0);
    while answered < workers.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(n) => {
                purged += n;
                answered += 1;
            }
            Err(_) => break,
        }
    }
    (purged, answered)
}

/// Publishes `purge` to the other nodes; returns how many nodes received
/// it (this one included).
pub fn publish(spec: &RedisSpec, purge: &Purge) -> Result<i64, RedisError> {
    let mut conn = connect(spec)?;
    let message = purge.message(crate::redis::node_id());
    match conn.call(&[b"PUBLISH", &channel(spec), &message])? {
        Reply::Integer(n) => Ok(n),
        Reply::Error(e) => Err(RedisError::Server(e)),
        other => Err(RedisError::Protocol(format!("PUBLISH answered {other:?}"))),
    }
}

/// Starts the thread that applies the other nodes' purges here. It runs
/// for the life of the process (a `[redis]` change needs a restart),
/// connecting again after any failure.
pub fn spawn_subscriber(
    spec: RedisSpec,
    workers: Vec<Sender<Command>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringgate-purge".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                let error = subscribe_and_apply(&spec, &workers, &mut failing);
                // Once per outage, not once per attempt.
                if !failing {
                    tracing::warn!(%error, "cache purge subscription to Redis lost; purges from other nodes are missed until it is back");
                }
                failing = true;
                std::thread::sleep(RECONNECT);
            }
        })
}

/// Subscribes and applies purges until the connection fails.
fn subscribe_and_apply(
    spec: &RedisSpec,
    workers: &[Sender<Command>],
    failing: &mut bool,
) -> RedisError {
    let mut conn = match connect(spec) {
        Ok(conn) => conn,
        Err(e) => return e,
    };
    if let Err(e) = conn.subscribe(&channel(spec)) {
        return e;
    }
    tracing::info!("cache purges from other nodes: subscribed");
    *failing = false;
    let me = crate::redis::node_id();
    loop {
        let message = match conn.next_message(POLL) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(e) => return e,
        };
        match Purge::from_message(&message) {
            Ok((node, _)) if node == me => {}
            Ok((node, purge)) => {
                let (purged, answered) = purge_all(workers, purge);
                tracing::info!(
                    from = node,
                    purged,
                    workers = answered,
                    "cache purge from another node applied"
                );
            }
            Err(why) => tracing::warn!(why, "unreadable cache purge message ignored"),
        }
    }
}

/// A connection to the configured Redis, over TLS where it says so.
fn connect(spec: &RedisSpec) -> Result<Connection, RedisError> {
    let tls = match spec.tls.as_ref().map(crate::redis::tls_config) {
        Some(Err(e)) => return Err(RedisError::Protocol(e.to_string())),
        Some(Ok(config)) => Some(config),
        None => None,
    };
    Connection::open(spec, tls.as_ref())
}
