//! [hot] Per-worker load balancing. Each worker balances its own traffic with
//! its own state (no shared counters): round robin, smooth weighted round
//! robin (nginx's algorithm), least outstanding requests, power of two random
//! choices, and consistent hashing on a stable ring.
//!
//! "Outstanding" is this worker's in-flight count per endpoint; with
//! SO_REUSEPORT spreading clients across workers, per-worker views converge on
//! the same choice without cross-core traffic.
//!
//! Endpoints marked down (health checks) are never picked; each policy
//! spreads their share over the others as it would with them gone (a
//! consistent-hash key whose endpoint is down moves to the next on the
//! ring, and only those keys move).

use crate::snapshot::{Balance, UpstreamSpec};

use super::hash::ring_lookup_where;

#[derive(Debug)]
pub struct Balancer {
    next: usize,
    /// Smooth weighted round robin running weights.
    current: Vec<i64>,
    rng: u64,
}

impl Balancer {
    /// `seed` differs per worker so workers do not start in lock step.
    pub fn new(spec: &UpstreamSpec, seed: u64) -> Balancer {
        Balancer {
            next: seed as usize % spec.endpoints.len().max(1),
            current: vec![0; spec.endpoints.len()],
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    #[inline]
    pub fn random(&mut self) -> u64 {
        // xorshift64*: fast and good enough to pick between two endpoints.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Picks an endpoint index. `outstanding[i]` is this worker's in-flight
    /// count for endpoint i; `key_hash` is the consistent-hash key, if the
    /// request carried one (otherwise consistent hashing falls back to round
    /// robin); `down[i]` marks endpoint i out of traffic (an empty slice:
    /// none is). At least one endpoint must be up.
    #[inline]
    pub fn pick(
        &mut self,
        spec: &UpstreamSpec,
        outstanding: &[std::cell::Cell<u32>],
        key_hash: Option<u64>,
        down: &[bool],
    ) -> usize {
        let n = spec.endpoints.len();
        if n <= 1 {
            return 0;
        }
        let is_down = |i: usize| down.get(i).copied().unwrap_or(false);
        let any_down = down.iter().any(|d| *d);
        match spec.balance {
            Balance::RoundRobin if !any_down => self.round_robin(n),
            Balance::RoundRobin => {
                for _ in 0..n {
                    let i = self.round_robin(n);
                    if !is_down(i) {
                        return i;
                    }
                }
                0
            }
            Balance::WeightedRoundRobin => {
                let mut total = 0i64;
                let mut best = None;
                for (i, e) in spec.endpoints.iter().enumerate() {
                    if is_down(i) {
                        continue;
                    }
                    let w = i64::from(e.weight);
                    self.current[i] += w;
                    total += w;
                    if best.is_none_or(|b: usize| self.current[i] > self.current[b]) {
                        best = Some(i);
                    }
                }
                let best = best.unwrap_or(0);
                self.current[best] -= total;
                best
            }
            Balance::LeastOutstanding => self.least_outstanding(n, outstanding, is_down),
            // Two random choices among the live endpoints would need them
            // listed; with some down (rare), the least loaded of all live
            // ones is as good an answer.
            Balance::PowerOfTwo if any_down => self.least_outstanding(n, outstanding, is_down),
            Balance::PowerOfTwo => {
                let a = (self.random() % n as u64) as usize;
                let mut b = (self.random() % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                if outstanding[b].get() < outstanding[a].get() {
                    b
                } else {
                    a
                }
            }
            Balance::ConsistentHash => match key_hash
                .and_then(|h| ring_lookup_where(&spec.hash_ring, h, |e| !is_down(e as usize)))
            {
                Some(i) => i as usize,
                None if any_down => self.least_outstanding(n, outstanding, is_down),
                None => self.round_robin(n),
            },
        }
    }

    /// The live endpoint with the fewest requests in flight, the scan
    /// starting at a rotating offset so that ties spread evenly.
    fn least_outstanding(
        &mut self,
        n: usize,
        outstanding: &[std::cell::Cell<u32>],
        is_down: impl Fn(usize) -> bool,
    ) -> usize {
        let start = self.round_robin(n);
        let mut best = None;
        for k in 0..n {
            let i = (start + k) % n;
            if is_down(i) {
                continue;
            }
            if best.is_none_or(|b: usize| outstanding[i].get() < outstanding[b].get()) {
                best = Some(i);
            }
        }
        best.unwrap_or(start)
    }

    #[inline]
    fn round_robin(&mut self, n: usize) -> usize {
        let i = self.next % n;
        self.next = self.next.wrapping_add(1);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EndpointSpec;
    use crate::upstream::hash::{build_ring, stable_hash};
    use std::time::Duration;

    fn spec(balance: Balance, weights: &[u32]) -> UpstreamSpec {
        let endpoints: Vec<EndpointSpec> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| EndpointSpec {
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight,
                authority: b"x".as_slice().into(),
                source: i,
            })
            .collect();
        let ring = build_ring(
            &endpoints
                .iter()
                .map(|e| (e.addr.to_string(), e.weight))
                .collect::<Vec<_>>(),
        );
        UpstreamSpec {
            name: "t".into(),
            endpoints,
            balance,
            hash_key: None,
            hash_ring: ring,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            pool_idle_timeout: Duration::from_secs(1),
            tls: None,
            health_check: None,
            when_all_down: crate::snapshot::WhenAllDown::Refuse,
            retry_budget: Default::default(),
            outlier_detection: None,
            circuit_breaker: None,
            sources: Vec::new(),
            resolve_interval: std::time::Duration::ZERO,
            slow_start: std::time::Duration::ZERO,
        }
    }

    fn counts(s: &UpstreamSpec, rounds: usize) -> Vec<usize> {
        let mut b = Balancer::new(s, 3);
        let mut c = vec![0; s.endpoints.len()];
        let outstanding: Vec<std::cell::Cell<u32>> = s.endpoints.iter().map(|_| 0.into()).collect();
        for _ in 0..rounds {
            c[b.pick(s, &outstanding, None, &[])] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exactly_even() {
        assert_eq!(
            counts(&spec(Balance::RoundRobin, &[1, 1, 1]), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn smooth_weighted_follows_weights_and_interleaves() {
        let s = spec(Balance::WeightedRoundRobin, &[5, 1, 1]);
        assert_eq!(counts(&s, 700), vec![500, 100, 100]);
        // nginx's smooth sequence for 5,1,1: a a b a c a a
        let mut b = Balancer::new(&s, 0);
        let seq: Vec<usize> = (0..7)
            .map(|_| b.pick(&s, &[0, 0, 0].map(std::cell::Cell::new), None, &[]))
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_outstanding_avoids_the_busy_endpoint() {
        let s = spec(Balance::LeastOutstanding, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 0);
        for _ in 0..50 {
            assert_ne!(
                b.pick(&s, &[0, 7, 0].map(std::cell::Cell::new), None, &[]),
                1
            );
        }
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded_of_two() {
        let s = spec(Balance::PowerOfTwo, &[1, 1]);
        let mut b = Balancer::new(&s, 9);
        for _ in 0..50 {
            assert_eq!(b.pick(&s, &[5, 1].map(std::cell::Cell::new), None, &[]), 1);
        }
        let even = counts(&spec(Balance::PowerOfTwo, &[1, 1, 1, 1]), 4000);
        assert!(even.iter().all(|&c| c > 800), "{even:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_per_key() {
        let s = spec(Balance::ConsistentHash, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 1);
        for k in 0..100 {
            let h = stable_hash(format!("user{k}").as_bytes());
            let first = b.pick(&s, &[0u32; 3].map(std::cell::Cell::new), Some(h), &[]);
            for _ in 0..3 {
                assert_eq!(
                    b.pick(&s, &[0u32; 3].map(std::cell::Cell::new), Some(h), &[]),
                    first
                );
            }
        }
    }

    #[test]
    fn power_of_two_does_not_herd_onto_the_least_loaded_and_keyless_hashing_rotates() {
        // Two random choices: the idle endpoint wins only when drawn, about
        // half the time with four endpoints, not every time.
        let s = spec(Balance::PowerOfTwo, &[1, 1, 1, 1]);
        let mut b = Balancer::new(&s, 11);
        let loads = [0, 5, 5, 5].map(std::cell::Cell::new);
        let idle = (0..1000)
            .filter(|_| b.pick(&s, &loads, None, &[]) == 0)
            .count();
        assert!((350..650).contains(&idle), "{idle}");
        // Consistent hashing without a key: round robin, busy or not.
        let s = spec(Balance::ConsistentHash, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 0);
        let loads = [5, 0, 0].map(std::cell::Cell::new);
        let busy = (0..300)
            .filter(|_| b.pick(&s, &loads, None, &[]) == 0)
            .count();
        assert_eq!(busy, 100);
        // ... but never onto an endpoint that is down.
        let zero = [0, 0, 0].map(std::cell::Cell::new);
        assert!((0..300).all(|_| b.pick(&s, &zero, None, &[true, false, false]) != 0));
    }

    #[test]
    fn every_policy_skips_endpoints_that_are_down() {
        let down = [false, true, false, false];
        for balance in [
            Balance::RoundRobin,
            Balance::WeightedRoundRobin,
            Balance::LeastOutstanding,
            Balance::PowerOfTwo,
            Balance::ConsistentHash,
        ] {
            let s = spec(balance, &[1, 3, 1, 1]);
            let mut b = Balancer::new(&s, 5);
            let outstanding: Vec<std::cell::Cell<u32>> = vec![0.into(); 4];
            let mut c = [0usize; 4];
            for k in 0..3000u64 {
                let key = stable_hash(&k.to_le_bytes());
                c[b.pick(&s, &outstanding, Some(key), &down)] += 1;
            }
            assert_eq!(c[1], 0, "{balance:?}: {c:?}");
            assert!(c[0] > 600 && c[2] > 600 && c[3] > 600, "{balance:?}: {c:?}");
        }
    }

    #[test]
    fn weights_and_sticky_keys_hold_among_the_live_endpoints() {
        let s = spec(Balance::WeightedRoundRobin, &[5, 1, 1]);
        let mut b = Balancer::new(&s, 0);
        let zero = [0, 0, 0].map(std::cell::Cell::new);
        let mut c = [0usize; 3];
        for _ in 0..600 {
            c[b.pick(&s, &zero, None, &[false, false, true])] += 1;
        }
        assert_eq!(c, [500, 100, 0]);
        // Consistent hashing: only the keys of the down endpoint move.
        let s = spec(Balance::ConsistentHash, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 1);
        let zero = [0u32; 3].map(std::cell::Cell::new);
        for k in 0..300 {
            let h = stable_hash(format!("user{k}").as_bytes());
            let before = b.pick(&s, &zero, Some(h), &[]);
            let after = b.pick(&s, &zero, Some(h), &[false, true, false]);
            if before == 1 {
                assert_ne!(after, 1);
            } else {
                assert_eq!(after, before, "key {k} moved though its endpoint is up");
            }
        }
        // Round robin over what is left, evenly.
        let s = spec(Balance::RoundRobin, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 0);
        let mut c = [0usize; 3];
        for _ in 0..300 {
            c[b.pick(&s, &zero, None, &[true, false, false])] += 1;
        }
        assert_eq!(c, [0, 150, 150]);
    }
}
