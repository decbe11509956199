//! [cold] DNS re-resolution: one `ringgate-dns` thread per process
//! resolves the endpoints given as host names again every upstream's
//! `resolve_interval` (the system resolver gives no TTL, so the interval
//! is the refresh), and when an upstream's address set changed, installs
//! it like a reload of that upstream alone (`Reloader::apply_resolved`):
//! workers keep the pools of the addresses that stayed. A name that stops
//! resolving keeps its last addresses (and is logged): a DNS outage must
//! not empty an upstream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::snapshot::{EndpointSource, EndpointSpec, Snapshot, resolve_endpoints, system_lookup};

/// How often the thread looks for due upstreams when none resolve (a
/// reload may add some).
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// What one round found: (upstream, its sources, what they resolve to).
type Resolved = Vec<(String, Vec<EndpointSource>, Vec<EndpointSpec>)>;

#[allow(clippy::disallowed_types)]
pub fn spawn(
    reloader: Arc<std::sync::Mutex<super::reload::Reloader>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ringgate-dns".into())
        .spawn(move || run(reloader))
}

#[allow(clippy::disallowed_types)]
fn run(reloader: Arc<std::sync::Mutex<super::reload::Reloader>>) {
    // When each upstream (by name) is due next.
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        let Ok(current) = reloader.lock().map(|r| r.current()) else {
            return;
        };
        let resolved = round(&current, &mut due, Instant::now(), &system_lookup);
        if !resolved.is_empty() {
            match reloader.lock() {
                Ok(mut r) => {
                    r.apply_resolved(resolved);
                }
                Err(_) => return,
            }
        }
        let wait = due
            .values()
            .min()
            .map_or(IDLE_CHECK, |t| t.saturating_duration_since(Instant::now()))
            .min(IDLE_CHECK);
        std::thread::sleep(wait);
    }
}

/// One round at `now`: resolves the upstreams of `current` that are due
/// (by `due`, which it keeps: a new upstream is first due one interval
/// after it is seen, as its names were just resolved when its config
/// was loaded), with `lookup`.
fn round(
    current: &Snapshot,
    due: &mut HashMap<String, Instant>,
    now: Instant,
    lookup: &dyn Fn(&str) -> std::io::Result<Vec<std::net::SocketAddr>>,
) -> Resolved {
    let mut resolved: Resolved = Vec::new();
    for spec in current.upstreams.iter().filter(|u| u.resolves()) {
        let next = *due
            .entry(spec.name.clone())
            .or_insert(now + spec.resolve_interval);
        if next > now {
            continue;
        }
        due.insert(spec.name.clone(), now + spec.resolve_interval);
        // Outside the reloader's lock: a slow resolver holds up nothing.
        match resolve_endpoints(&spec.sources, lookup) {
            Ok(endpoints) => resolved.push((spec.name.clone(), spec.sources.clone(), endpoints)),
            Err(e) => {
                tracing::warn!(upstream = %spec.name, error = %e, "DNS re-resolution failed; keeping the last addresses")
            }
        }
    }
    due.retain(|name, _| {
        current
            .upstreams
            .iter()
            .any(|u| &u.name == name && u.resolves())
    });
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn snapshot(extra: &str) -> Snapshot {
        crate::config::load_str(
            &format!(
                "workers = 1\n[[listeners]]\nbind = \"127.0.0.1:0\"\n[upstreams.named]\nendpoints = [\"localhost:9000\", \"127.0.0.1:9001\"]\n{extra}\n[upstreams.fixed]\nendpoints = [\"127.0.0.1:9002\"]\n[[routes]]\nupstream = \"named\"\n"
            ),
            "t.toml",
        )
        .expect("valid")
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn host_names_are_resolved_again_each_interval_and_addresses_never() {
        let s = snapshot("resolve_interval = \"10s\"");
        let by_name = |n: &str| {
            s.upstreams
                .iter()
                .find(|u| u.name == n)
                .expect("configured")
        };
        let named = by_name("named");
        assert!(named.resolves() && !by_name("fixed").resolves());
        assert!(!named.sources[0].literal && named.sources[1].literal);
        let t = Instant::now();
        let mut due = HashMap::new();
        let looked_up = std::cell::RefCell::new(Vec::new());
        let lookup = |name: &str| -> std::io::Result<Vec<SocketAddr>> {
            looked_up.borrow_mut().push(name.to_string());
            Ok(addrs(&["10.0.0.2:9000", "10.0.0.1:9000", "10.0.0.2:9000"]))
        };
        // Just loaded: not due for an interval.
        assert!(round(&s, &mut due, t, &lookup).is_empty());
        assert!(round(&s, &mut due, t + Duration::from_secs(9), &lookup).is_empty());
        let found = round(&s, &mut due, t + Duration::from_secs(10), &lookup);
        assert_eq!(looked_up.borrow().as_slice(), ["localhost:9000"]);
        assert_eq!(found.len(), 1);
        let (name, sources, endpoints) = &found[0];
        assert_eq!(name, "named");
        assert_eq!(sources, &named.sources);
        // Every address of the name, sorted and once, then the literal.
        let got: Vec<(SocketAddr, usize)> = endpoints.iter().map(|e| (e.addr, e.source)).collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.1:9000".parse().unwrap(), 0),
                ("10.0.0.2:9000".parse().unwrap(), 0),
                ("127.0.0.1:9001".parse().unwrap(), 1),
            ]
        );
        assert!(endpoints.iter().all(|e| e.weight == 1));
        assert_eq!(&*endpoints[0].authority, b"localhost:9000");
        // Next due an interval later.
        assert!(round(&s, &mut due, t + Duration::from_secs(19), &lookup).is_empty());
        assert_eq!(
            round(&s, &mut due, t + Duration::from_secs(20), &lookup).len(),
            1
        );
    }

    #[test]
    fn a_failed_lookup_changes_nothing() {
        let s = snapshot("resolve_interval = \"1s\"");
        let mut due = HashMap::new();
        let t = Instant::now();
        let failing = |_: &str| -> std::io::Result<Vec<SocketAddr>> {
            Err(std::io::ErrorKind::TimedOut.into())
        };
        round(&s, &mut due, t, &failing);
        assert!(round(&s, &mut due, t + Duration::from_secs(1), &failing).is_empty());
        let empty = |_: &str| -> std::io::Result<Vec<SocketAddr>> { Ok(vec![]) };
        assert!(round(&s, &mut due, t + Duration::from_secs(2), &empty).is_empty());
    }

    #[test]
    fn a_zero_interval_never_resolves_again() {
        let s = snapshot("resolve_interval = \"0s\"");
        assert!(!s.upstreams.iter().any(|u| u.resolves()));
        let mut due = HashMap::new();
        let lookup = |_: &str| -> std::io::Result<Vec<SocketAddr>> { panic!("not looked up") };
        assert!(
            round(
                &s,
                &mut due,
                Instant::now() + Duration::from_secs(3600),
                &lookup
            )
            .is_empty()
        );
        assert!(due.is_empty());
    }
}
