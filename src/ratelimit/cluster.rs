//! [cold] The cluster thread: the only code that talks to Redis. Each round
//! the aggregator hands it the cluster-scope keys that need tokens (or have
//! tokens to give back); one script call claims them atomically from the
//! cluster-wide bucket or window in Redis and registers this node, and the
//! answer goes back to the aggregator. Nothing waits for it: the aggregator
//! polls for the answer, and workers only ever see the grants it makes from
//! tokens already claimed.
//!
//! Claiming (rather than each node reading what is left and taking its
//! part) is what keeps a cluster limit exact: a token is in Redis, held by
//! one node, or spent — never counted by two nodes at once.

use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::redis::{Connection, RedisError, Reply, Script};
use crate::snapshot::{LimitKind, RedisSpec};

/// Claims (and gives back) tokens for many keys, and registers this node,
/// in one atomic step. KEYS[1] is the node registry (a sorted set by last
/// seen, in ms); KEYS[2..] the limit keys. ARGV: now (ms), node id, node
/// lifetime (ms), then six per key: kind ("b" bucket, "w" window), wanted,
/// given back, burst or limit, refill per ms (buckets), key lifetime (ms).
/// Returns the number of live nodes, then per key: granted, left.
const CLAIM: &str = r#"
local now = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 10)
local out = {redis.call('ZCARD', KEYS[1])}
local a = 4
for i = 2, #KEYS do
  local kind = ARGV[a]
  local want = tonumber(ARGV[a + 1])
  local back = tonumber(ARGV[a + 2])
  local size = tonumber(ARGV[a + 3])
  local refill = tonumber(ARGV[a + 4])
  local ttl = tonumber(ARGV[a + 5])
  a = a + 6
  local granted, left
  if kind == 'b' then
    local st = redis.call('HMGET', KEYS[i], 'v', 't')
    local v = tonumber(st[1]) or size
    local t = tonumber(st[2]) or now
    if now > t then
      v = v + (now - t) * refill
      t = now
    end
    v = math.min(size, v + back)
    granted = math.max(0, math.min(want, math.floor(v)))
    v = v - granted
    redis.call('HSET', KEYS[i], 'v', tostring(v), 't', tostring(t))
    redis.call('PEXPIRE', KEYS[i], ttl)
    left = math.floor(v)
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or '0')
    used = math.max(0, used - back)
    granted = math.max(0, math.min(want, size - used))
    used = used + granted
    redis.call('SET', KEYS[i], used, 'PX', ttl)
    left = size - used
  end
  out[#out + 1] = granted
  out[#out + 1] = left
end
return out
"#;

/// How long a node counts as live after its last sync.
const NODE_LIFETIME: Duration = Duration::from_secs(3);

/// One key's part of a round.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The Redis key (prefix, policy, key bytes in hex, and for
    /// windows the window's start in ms).
    pub redis_key: Vec<u8>,
    pub kind: LimitKind,
    pub want: u64,
    pub give_back: u64,
    /// Identifies the key to the aggregator when the answer comes back.
    pub policy: u32,
    pub tier: u32,
    pub key: Vec<u8>,
    /// Windows: the window the claim is for.
    pub window: u64,
}

#[derive(Debug)]
pub struct Round {
    pub id: u64,
    pub claims: Vec<Claim>,
}

#[derive(Debug)]
pub struct Answer {
    pub id: u64,
    /// Live nodes, and per claim (granted, left cluster-wide); or what
    /// went wrong.
    pub outcome: Result<(u64, Vec<(u64, i64)>), String>,
    pub round: Round,
}

pub struct ClusterThread {
    pub rounds: Sender<Round>,
    pub answers: Receiver<Answer>,
}

/// Starts the cluster thread for `spec`.
pub fn spawn(spec: RedisSpec) -> std::io::Result<ClusterThread> {
    let (rounds, rounds_rx) = crossbeam_channel::bounded::<Round>(2);
    let (answers_tx, answers) = crossbeam_channel::bounded(2);
    std::thread::Builder::new()
        .name("ringgate-redis".into())
        .spawn(move || {
            let node = crate::redis::node_id();
            let script = Script::new(CLAIM);
            let tls = spec.tls.as_ref().map(crate::redis::tls_config);
            let mut conn: Option<Connection> = None;
            for round in rounds_rx.iter() {
                let result = match &tls {
                    Some(Err(e)) => Err(RedisError::Protocol(e.to_string())),
                    Some(Ok(config)) => {
                        run_round(&spec, Some(config), &mut conn, &script, node, &round)
                    }
                    None => run_round(&spec, None, &mut conn, &script, node, &round),
                };
                let outcome = result.map_err(|e| {
                    conn = None; // reconnect next round
                    e.to_string()
                });
                if answers_tx
                    .send(Answer {
                        id: round.id,
                        outcome,
                        round,
                    })
                    .is_err()
                {
                    return;
                }
            }
        })?;
    Ok(ClusterThread { rounds, answers })
}

fn run_round(
    spec: &RedisSpec,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    conn: &mut Option<Connection>,
    script: &Script,
    node: &str,
    round: &Round,
) -> Result<(u64, Vec<(u64, i64)>), RedisError> {
    if conn.is_none() {
        *conn = Some(Connection::open(spec, tls)?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(RedisError::Protocol("no connection".into()));
    };
    let now_ms = super::clock::now() / 1_000_000;
    let registry = format!("{}nodes", spec.key_prefix).into_bytes();
    let mut keys: Vec<&[u8]> = vec![&registry];
    keys.extend(round.claims.iter().map(|c| c.redis_key.as_slice()));
    let mut text: Vec<String> = vec![
        now_ms.to_string(),
        node.to_string(),
        NODE_LIFETIME.as_millis().to_string(),
    ];
    for claim in &round.claims {
        let (kind, size, refill, ttl_ms) = match claim.kind {
            LimitKind::Bucket { rate, burst } => {
                let per_ms = rate.tokens as f64 * 1e6 / rate.per_nanos.max(1) as f64;
                // Long enough to refill completely, then some.
                let fill_ms = burst as f64 / per_ms.max(1e-9);
                ("b", burst, per_ms, (fill_ms * 2.0) as u64 + 1000)
            }
            LimitKind::Window {
                limit,
                window_nanos,
            } => ("w", limit, 0.0, window_nanos / 1_000_000 * 2 + 1000),
        };
        text.extend([
            kind.to_string(),
            claim.want.to_string(),
            claim.give_back.to_string(),
            size.to_string(),
            format!("{refill:.9}"),
            ttl_ms.to_string(),
        ]);
    }
    let numkeys = keys.len().to_string();
    let mut args: Vec<&[u8]> = vec![numkeys.as_bytes()];
    args.extend(keys);
    args.extend(text.iter().map(|t| t.as_bytes()));
    let reply = c.eval(script, &args)?;
    let Reply::Array(Some(items)) = reply else {
        return Err(RedisError::Protocol(format!(
            "claim script returned {reply:?}"
        )));
    };
    let numbers: Option<Vec<i64>> = items.iter().map(Reply::integer).collect();
    let numbers =
        numbers.ok_or_else(|| RedisError::Protocol("claim script returned non-integers".into()))?;
    if numbers.len() != 1 + 2 * round.claims.len() {
        return Err(RedisError::Protocol(format!(
            "claim script returned {} numbers for {} claims",
            numbers.len(),
            round.claims.len()
        )));
    }
    let nodes = numbers[0].max(1) as u64;
    let results = numbers[1..]
        .chunks(2)
        .map(|pair| (pair[0].max(0) as u64, pair[1]))
        .collect();
    Ok((nodes, results))
}

/// The Redis key for one claim. The tier is not part of it: every node
/// counts a key's use on one counter, under whichever tier it holds the key
/// (tiers share an algorithm and window), so nodes that saw the key claim
/// different tiers cannot add their allowances up.
pub fn redis_key(prefix: &str, policy: &str, key: &[u8], window: Option<u64>) -> Vec<u8> {
    use std::fmt::Write;
    let mut k = format!("{prefix}{policy}:");
    crate::crypto::push_hex(&mut k, key);
    if let Some(start) = window {
        let _ = write!(k, ":{}", start / 1_000_000);
    }
    k.into_bytes()
}
