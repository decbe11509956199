//! [cold/warm] Keys from a JWKS URL. One fetcher thread per process GETs
//! each provider's key set from an upstream (`jwks_upstream` +
//! `jwks_path`, with that upstream's TLS settings and timeouts) on an
//! interval, and sooner when a worker meets a token whose `kid` it does
//! not know. Every attempt's outcome goes to every worker as a `KeySet`
//! (a command, so the request path reads the keys without a lock); a
//! failed attempt republishes the last good keys, so an identity provider
//! that is down leaves the gateway verifying with what it had.
//!
//! Unknown `kid`s are the one way a client can make the gateway fetch, so
//! they are bounded twice: the fetcher refetches at most once per
//! `jwks_min_refetch`, and a worker does not even ask (it refuses at once:
//! the negative cache) while the last attempt is younger than that. A
//! request that did ask waits on its own task for the answer, at most
//! `KEY_WAIT`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use super::jwt::JwksSource;
use super::jwt::PinnedKey;

/// Longest a request waits for a refetch its unknown `kid` asked for.
pub const KEY_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting request looks for the answer.
pub const KEY_WAIT_POLL: Duration = Duration::from_millis(5);
/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// Failed fetches are retried after at least this long, doubling.
const MIN_RETRY: Duration = Duration::from_secs(1);

/// The JWKS sources of `providers` (a snapshot's `auth`).
pub fn sources(providers: &[super::Provider]) -> Vec<JwksSource> {
    providers
        .iter()
        .filter_map(|p| match &p.kind {
            super::ProviderKind::Jwt(jwt) => jwt.jwks.as_deref().cloned(),
            _ => None,
        })
        .collect()
}

/// One fetch attempt's outcome, as every worker gets it.
#[derive(Debug)]
pub struct KeySet {
    pub provider: Arc<str>,
    pub origin: Arc<str>,
    /// The last good keys (none before the first good fetch).
    pub keys: Arc<[PinnedKey]>,
    /// Attempts completed for this provider, good or not: a request
    /// waiting for a refetch waits for this to change.
    pub attempt: u64,
    /// When that attempt started.
    pub attempted_at: Instant,
}

/// When the fetcher fetches a source: every `refresh` after a good fetch,
/// sooner after a failure (backing off from `MIN_RETRY` or `min_refetch`
/// to `refresh`), and at once when asked, unless the last attempt is
/// younger than `min_refetch`. Pure: it is told the time.
#[derive(Debug, Clone)]
pub struct Schedule {
    refresh: Duration,
    min_refetch: Duration,
    next_due: Instant,
    last_attempt: Option<Instant>,
    failures: u32,
}

impl Schedule {
    /// A schedule whose first fetch is due at `now`.
    pub fn new(now: Instant, refresh: Duration, min_refetch: Duration) -> Schedule {
        Schedule {
            refresh,
            min_refetch,
            next_due: now,
            last_attempt: None,
            failures: 0,
        }
    }

    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    pub fn is_due(&self, now: Instant) -> bool {
        now >= self.next_due
    }

    /// A worker met an unknown `kid`: fetch now, if the last attempt is
    /// old enough; returns whether it is.
    pub fn ask(&mut self, now: Instant) -> bool {
        let allowed = self
            .last_attempt
            .is_none_or(|last| now >= last + self.min_refetch);
        if allowed {
            self.next_due = self.next_due.min(now);
        }
        allowed
    }

    /// An attempt that started at `started` ended, good or not.
    pub fn attempted(&mut self, started: Instant, good: bool) {
        self.last_attempt = Some(started);
        if good {
            self.failures = 0;
            self.next_due = started + self.refresh;
        } else {
            self.failures = self.failures.saturating_add(1);
            let base = self.min_refetch.max(MIN_RETRY);
            let backoff = base.saturating_mul(1 << (self.failures - 1).min(16));
            self.next_due = started + backoff.min(self.refresh);
        }
    }
}

/// A worker's view of the fetched key sets, and its side of the
/// unknown-`kid` protocol. Single-threaded (`RefCell`).
#[derive(Default)]
pub struct WorkerKeys {
    sets: std::cell::RefCell<HashMap<Arc<str>, Arc<KeySet>>>,
    waits: std::cell::RefCell<HashMap<Arc<str>, Waiting>>,
    asks: Option<Sender<Arc<str>>>,
}

/// A worker asked for a refetch at `asked_at`, when `attempt` attempts
/// were known.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    asked_at: Instant,
    attempt: u64,
}

/// What to do about a token whose key is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKey {
    /// A refetch is under way: look again after this long.
    Wait(Duration),
    /// No refetch is coming soon: refuse the token.
    Refuse,
}

impl WorkerKeys {
    /// Keys `sets` to begin with; unknown `kid`s are reported on `asks`.
    pub fn new(sets: Vec<Arc<KeySet>>, asks: Option<Sender<Arc<str>>>) -> WorkerKeys {
        let keys = WorkerKeys {
            asks,
            ..WorkerKeys::default()
        };
        for set in sets {
            keys.install(set);
        }
        keys
    }

    /// Takes a newly published set (an older attempt never replaces a
    /// newer one).
    pub fn install(&self, set: Arc<KeySet>) {
        let mut sets = self.sets.borrow_mut();
        if let Some(have) = sets.get(&set.provider)
            && have.origin == set.origin
            && have.attempt > set.attempt
        {
            return;
        }
        sets.insert(set.provider.clone(), set);
    }

    /// The current set for `source`'s provider, if it came from `source`.
    pub fn current(&self, source: &JwksSource) -> Option<Arc<KeySet>> {
        let sets = self.sets.borrow();
        let set = sets.get(&source.provider)?;
        (set.origin == source.origin).then(|| set.clone())
    }

    /// A token names a key `source`'s provider does not have (or has no
    /// `kid` and no key verified it) at `now`.
    pub fn unknown_key(&self, source: &JwksSource, now: Instant) -> UnknownKey {
        let current = self.current(source);
        let attempt = current.as_ref().map_or(0, |s| s.attempt);
        let mut waits = self.waits.borrow_mut();
        if let Some(w) = waits.get(&source.provider) {
            if w.attempt == attempt && now < w.asked_at + KEY_WAIT {
                return UnknownKey::Wait(KEY_WAIT_POLL);
            }
            if now < w.asked_at + source.min_refetch {
                return UnknownKey::Refuse;
            }
        }
        if current.is_some_and(|s| now < s.attempted_at + source.min_refetch) {
            return UnknownKey::Refuse;
        }
        let Some(asks) = &self.asks else {
            return UnknownKey::Refuse;
        };
        if asks.try_send(source.provider.clone()).is_err() {
            return UnknownKey::Refuse;
        }
        waits.insert(
            source.provider.clone(),
            Waiting {
                asked_at: now,
                attempt,
            },
        );
        UnknownKey::Wait(KEY_WAIT_POLL)
    }
}

/// What the fetcher knows about one source, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub provider: Arc<str>,
    pub fetches_ok: u64,
    pub fetches_failed: u64,
    pub keys: usize,
    /// Unix seconds of the last good fetch (0: none yet).
    pub last_success: u64,
    /// Every attempt, good or not.
    pub attempts: u64,
}

/// The fetcher's state as `/metrics` and start-up read it. Written by the
/// fetcher thread, read by the control and admin threads: cold, so a
/// mutex.
#[allow(clippy::disallowed_types)]
pub type Board = Arc<std::sync::Mutex<BoardState>>;

#[derive(Debug, Default)]
pub struct BoardState {
    pub sources: Vec<SourceStatus>,
    /// The latest set per source (what a worker starts with).
    pub latest: Vec<Arc<KeySet>>,
}

/// The running fetcher.
pub struct Fetcher {
    /// Cloned into each worker.
    pub asks: Sender<Arc<str>>,
    sources: Sender<Vec<JwksSource>>,
    pub board: Board,
}

impl Fetcher {
    /// Starts the fetcher thread for `sources`; `publish` hands each
    /// attempt's set to every worker.
    pub fn spawn(
        sources: Vec<JwksSource>,
        publish: impl Fn(Arc<KeySet>) + Send + 'static,
    ) -> std::io::Result<Fetcher> {
        // Asks are hints: a full channel loses nothing a later ask would
        // not bring back.
        let (asks, asks_rx) = crossbeam_channel::bounded(256);
        let (sources_tx, sources_rx) = crossbeam_channel::unbounded();
        let board = Board::default();
        let thread_board = board.clone();
        std::thread::Builder::new()
            .name("ringgate-jwks".into())
            .spawn(move || run(sources, asks_rx, sources_rx, thread_board, publish))?;
        Ok(Fetcher {
            asks,
            sources: sources_tx,
            board,
        })
    }

    /// Where a reload sends the new sources: new ones are fetched at
    /// once, unchanged ones keep their keys and schedule, removed ones are
    /// forgotten.
    pub fn reloads(&self) -> Sender<Vec<JwksSource>> {
        self.sources.clone()
    }

    /// Waits until every source with a `startup_wait` has fetched keys or
    /// its wait is over; returns the providers still without keys.
    pub fn wait_for_first(&self, sources: &[JwksSource]) -> Vec<Arc<str>> {
        let start = Instant::now();
        loop {
            let missing: Vec<&JwksSource> = {
                let Ok(board) = self.board.lock() else {
                    return Vec::new();
                };
                sources
                    .iter()
                    .filter(|s| {
                        !board
                            .sources
                            .iter()
                            .any(|st| st.provider == s.provider && st.fetches_ok > 0)
                    })
                    .collect()
            };
            let waiting = missing.iter().any(|s| start.elapsed() < s.startup_wait);
            if !waiting {
                return missing.iter().map(|s| s.provider.clone()).collect();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The latest set of every source.
    pub fn latest(&self) -> Vec<Arc<KeySet>> {
        self.board
            .lock()
            .map(|b| b.latest.clone())
            .unwrap_or_default()
    }
}

/// One source as the fetcher tracks it.
struct Tracked {
    source: JwksSource,
    schedule: Schedule,
    keys: Arc<[PinnedKey]>,
    status: SourceStatus,
    /// The endpoint to try first (the last one that answered).
    endpoint: usize,
    /// The last attempt's set, as published.
    published: Option<Arc<KeySet>>,
}

impl Tracked {
    fn new(source: JwksSource, now: Instant) -> Tracked {
        Tracked {
            schedule: Schedule::new(now, source.refresh, source.min_refetch),
            status: SourceStatus {
                provider: source.provider.clone(),
                ..SourceStatus::default()
            },
            source,
            keys: Arc::from(Vec::new()),
            endpoint: 0,
            published: None,
        }
    }
}

fn run(
    sources: Vec<JwksSource>,
    asks: Receiver<Arc<str>>,
    reloads: Receiver<Vec<JwksSource>>,
    board: Board,
    publish: impl Fn(Arc<KeySet>),
) {
    let now = Instant::now();
    let mut tracked: Vec<Tracked> = sources.into_iter().map(|s| Tracked::new(s, now)).collect();
    loop {
        for t in &mut tracked {
            if t.schedule.is_due(Instant::now()) {
                let set = attempt(t);
                publish(set);
            }
        }
        post(&board, &tracked);
        let next = tracked.iter().map(|t| t.schedule.next_due()).min();
        let wait = next.map_or(Duration::from_secs(3600), |n| {
            n.saturating_duration_since(Instant::now())
        });
        crossbeam_channel::select! {
            recv(asks) -> ask => {
                let Ok(provider) = ask else { return };
                if let Some(t) = tracked.iter_mut().find(|t| t.source.provider == provider) {
                    t.schedule.ask(Instant::now());
                }
            }
            recv(reloads) -> sources => {
                let Ok(sources) = sources else { return };
                tracked = retrack(std::mem::take(&mut tracked), sources);
            }
            default(wait) => {}
        }
    }
}

/// The tracked sources after a reload: same provider and origin keep
/// their keys and schedule (with the new intervals).
fn retrack(mut old: Vec<Tracked>, sources: Vec<JwksSource>) -> Vec<Tracked> {
    let now = Instant::now();
    sources
        .into_iter()
        .map(|source| {
            match old.iter().position(|t| {
                t.source.provider == source.provider && t.source.origin == source.origin
            }) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    kept.schedule.refresh = source.refresh;
                    kept.schedule.min_refetch = source.min_refetch;
                    kept.source = source;
                    kept
                }
                None => Tracked::new(source, now),
            }
        })
        .collect()
}

/// Fetches `t`'s document once (trying each endpoint, the last good one
/// first) and returns the set to publish.
fn attempt(t: &mut Tracked) -> Arc<KeySet> {
    let started = Instant::now();
    let endpoints = t.source.upstream.endpoints.len().max(1);
    let mut outcome = Err(String::from("the upstream has no endpoints"));
    for i in 0..endpoints {
        let endpoint = (t.endpoint + i) % endpoints;
        outcome =
            crate::upstream::fetch::get(&t.source.upstream, endpoint, &t.source.path, MAX_DOCUMENT)
                .map_err(|e| e.to_string())
                .and_then(|body| parse_document(&body));
        if outcome.is_ok() {
            t.endpoint = endpoint;
            break;
        }
    }
    t.status.attempts += 1;
    match outcome {
        Ok(keys) => {
            t.status.fetches_ok += 1;
            t.status.keys = keys.len();
            t.status.last_success = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            tracing::debug!(provider = %t.source.provider, keys = keys.len(), "JWKS fetched");
            t.keys = keys.into();
            t.schedule.attempted(started, true);
        }
        Err(error) => {
            t.status.fetches_failed += 1;
            tracing::warn!(provider = %t.source.provider, upstream = %t.source.upstream.name, path = %t.source.path, %error, kept_keys = t.keys.len(), "JWKS fetch failed; keeping the last good keys");
            t.schedule.attempted(started, false);
        }
    }
    let set = Arc::new(KeySet {
        provider: t.source.provider.clone(),
        origin: t.source.origin.clone(),
        keys: t.keys.clone(),
        attempt: t.status.attempts,
        attempted_at: started,
    });
    t.published = Some(set.clone());
    set
}

/// The usable keys of a fetched document. Keys that cannot be pinned to
/// one algorithm, or are for encryption, are skipped (identity providers
/// publish such keys next to signing keys); a document with no usable key
/// at all is an error, so a broken answer never replaces good keys.
fn parse_document(body: &[u8]) -> Result<Vec<PinnedKey>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the document is not UTF-8".to_string())?;
    let (keys, skipped) = super::jwt::jwks_signing_keys(text)?;
    for why in &skipped {
        tracing::debug!(%why, "JWKS key skipped");
    }
    if keys.is_empty() {
        return Err(format!(
            "no usable signing key in the document ({} skipped)",
            skipped.len()
        ));
    }
    Ok(keys.into_iter().map(PinnedKey::new).collect())
}

/// Publishes the tracked sources' status.
fn post(board: &Board, tracked: &[Tracked]) {
    if let Ok(mut b) = board.lock() {
        b.sources = tracked.iter().map(|t| t.status.clone()).collect();
        b.latest = tracked.iter().filter_map(|t| t.published.clone()).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Duration = Duration::from_secs(300);
    const MIN: Duration = Duration::from_secs(30);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_schedule_fetches_at_once_then_every_refresh() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, REFRESH, MIN);
        assert!(s.is_due(t0));
        s.attempted(t0, true);
        assert!(!s.is_due(t0 + secs(299)));
        assert!(s.is_due(t0 + REFRESH));
        assert_eq!(s.next_due(), t0 + REFRESH);
    }

    #[test]
    fn asks_are_heeded_at_most_once_per_min_refetch() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, REFRESH, MIN);
        s.attempted(t0, true);
        assert!(!s.ask(t0 + secs(29)), "too soon after the last attempt");
        assert!(!s.is_due(t0 + secs(29)));
        assert!(s.ask(t0 + MIN));
        assert!(s.is_due(t0 + MIN));
        s.attempted(t0 + MIN, true);
        assert!(!s.ask(t0 + secs(59)));
        assert!(s.ask(t0 + secs(60)));
        // Before any attempt, an ask is always heeded.
        let mut fresh = Schedule::new(t0 + secs(5), REFRESH, MIN);
        assert!(fresh.ask(t0));
        assert!(fresh.is_due(t0));
    }

    #[test]
    fn failures_back_off_from_min_refetch_to_refresh() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, REFRESH, MIN);
        let mut at = t0;
        for expected in [30, 60, 120, 240, 300, 300] {
            s.attempted(at, false);
            assert_eq!(s.next_due(), at + secs(expected));
            at = s.next_due();
        }
        s.attempted(at, true);
        assert_eq!(s.next_due(), at + REFRESH);
        // A short min_refetch backs off from MIN_RETRY instead.
        let mut quick = Schedule::new(t0, REFRESH, Duration::from_millis(10));
        quick.attempted(t0, false);
        assert_eq!(quick.next_due(), t0 + MIN_RETRY);
        quick.attempted(t0, false);
        assert_eq!(quick.next_due(), t0 + MIN_RETRY * 2);
    }

    fn source(min_refetch: Duration) -> JwksSource {
        JwksSource {
            provider: "idp".into(),
            upstream: crate::snapshot::UpstreamSpec {
                name: "idp".into(),
                endpoints: Vec::new(),
                balance: crate::snapshot::Balance::RoundRobin,
                hash_key: None,
                hash_ring: Vec::new(),
                connect_timeout: secs(1),
                response_timeout: secs(1),
                pool_max_idle: 0,
                pool_idle_timeout: secs(1),
                tls: None,
                health_check: None,
                when_all_down: crate::snapshot::WhenAllDown::Refuse,
                retry_budget: Default::default(),
                outlier_detection: None,
                circuit_breaker: None,
                sources: Vec::new(),
                resolve_interval: std::time::Duration::ZERO,
                slow_start: std::time::Duration::ZERO,
            },
            path: "/jwks".into(),
            refresh: REFRESH,
            min_refetch,
            startup_wait: Duration::ZERO,
            origin: "idp /jwks".into(),
        }
    }

    fn set(attempt: u64, at: Instant, origin: &str) -> Arc<KeySet> {
        Arc::new(KeySet {
            provider: "idp".into(),
            origin: origin.into(),
            keys: Arc::from(Vec::new()),
            attempt,
            attempted_at: at,
        })
    }

    #[test]
    fn an_unknown_kid_asks_once_waits_for_the_answer_then_is_refused() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let t0 = Instant::now();
        let keys = WorkerKeys::new(vec![set(1, t0, "idp /jwks")], Some(tx));
        let src = source(MIN);
        // The last attempt is fresh: refused at once, nothing asked.
        assert_eq!(keys.unknown_key(&src, t0 + secs(1)), UnknownKey::Refuse);
        assert!(rx.try_recv().is_err());
        // Old enough: ask, and wait (without asking again) for the answer.
        let t1 = t0 + MIN;
        assert_eq!(keys.unknown_key(&src, t1), UnknownKey::Wait(KEY_WAIT_POLL));
        assert_eq!(&*rx.try_recv().unwrap(), "idp");
        assert_eq!(
            keys.unknown_key(&src, t1 + secs(1)),
            UnknownKey::Wait(KEY_WAIT_POLL)
        );
        assert!(rx.try_recv().is_err(), "one ask per refetch");
        // The answer came and the key is still unknown: refused, no ask.
        keys.install(set(2, t1, "idp /jwks"));
        assert_eq!(keys.unknown_key(&src, t1 + secs(1)), UnknownKey::Refuse);
        assert!(rx.try_recv().is_err());
        // No answer within KEY_WAIT: refused too.
        let t2 = t1 + MIN;
        assert_eq!(keys.unknown_key(&src, t2), UnknownKey::Wait(KEY_WAIT_POLL));
        assert_eq!(keys.unknown_key(&src, t2 + KEY_WAIT), UnknownKey::Refuse);
        assert_eq!(rx.try_iter().count(), 1);
    }

    #[test]
    fn sets_from_another_origin_or_older_attempts_are_not_used() {
        let t0 = Instant::now();
        let keys = WorkerKeys::new(Vec::new(), None);
        let src = source(MIN);
        assert!(keys.current(&src).is_none());
        keys.install(set(3, t0, "elsewhere /jwks"));
        assert!(keys.current(&src).is_none(), "another origin");
        keys.install(set(3, t0, "idp /jwks"));
        assert_eq!(keys.current(&src).unwrap().attempt, 3);
        keys.install(set(2, t0, "idp /jwks"));
        assert_eq!(keys.current(&src).unwrap().attempt, 3, "older attempt");
        keys.install(set(4, t0, "idp /jwks"));
        assert_eq!(keys.current(&src).unwrap().attempt, 4);
        // Without a fetcher to ask, an unknown kid is refused.
        assert_eq!(keys.unknown_key(&src, t0 + MIN), UnknownKey::Refuse);
    }

    #[test]
    fn every_attempt_counts_and_a_failed_one_keeps_the_last_good_keys() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut src = source(MIN);
        src.upstream.endpoints = vec![crate::snapshot::EndpointSpec {
            addr: closed,
            weight: 1,
            authority: closed.to_string().into_bytes().into(),
            source: 0,
        }];
        let mut t = Tracked::new(src, Instant::now());
        let good = crate::auth::jwt::jwks_keys(
            r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "e", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
        )
        .unwrap();
        t.keys = good
            .into_iter()
            .map(PinnedKey::new)
            .collect::<Vec<_>>()
            .into();
        for n in 1..=3 {
            let set = attempt(&mut t);
            assert_eq!(set.attempt, n);
            assert_eq!(set.keys.len(), 1, "the last good keys stay");
            assert_eq!(t.status.fetches_failed, n);
            assert_eq!(t.status.fetches_ok, 0);
        }
        // Each failure pushed the next attempt back.
        assert!(t.schedule.next_due() > Instant::now());
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        assert!(parse_document(b"not json").is_err());
        assert!(parse_document(br#"{"keys": []}"#).is_err());
        let only_rsa_without_alg =
            br#"{"keys": [{"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"}]}"#;
        assert!(parse_document(only_rsa_without_alg).is_err());
        assert!(parse_document(b"\xff\xfe").is_err());
    }
}
