//! [hot] Per-worker load balancing. Each worker balances its own traffic with
//! its own state (no shared counters): round robin, smooth weighted round
//! robin (nginx's algorithm), least outstanding requests, power of two random
//! choices, and consistent hashing on a stable ring.
//!
//! "Outstanding" is this worker's in-flight count per endpoint; with
//! SO_REUSEPORT spreading clients across workers, per-worker views converge on
//! the same choice without cross-core traffic.

use crate::snapshot::{Balance, UpstreamSpec};

use super::hash::ring_lookup;

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
    fn random(&mut self) -> u64 {
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
    /// robin).
    #[inline]
    pub fn pick(
        &mut self,
        spec: &UpstreamSpec,
        outstanding: &[std::cell::Cell<u32>],
        key_hash: Option<u64>,
    ) -> usize {
        let n = spec.endpoints.len();
        if n <= 1 {
            return 0;
        }
        match spec.balance {
            Balance::RoundRobin => self.round_robin(n),
            Balance::WeightedRoundRobin => {
                let mut total = 0i64;
                let mut best = 0usize;
                for (i, e) in spec.endpoints.iter().enumerate() {
                    let w = i64::from(e.weight);
                    self.current[i] += w;
                    total += w;
                    if self.current[i] > self.current[best] {
                        best = i;
                    }
                }
                self.current[best] -= total;
                best
            }
            Balance::LeastOutstanding => {
                // Start the scan at a rotating offset so ties spread evenly.
                let start = self.round_robin(n);
                let mut best = start;
                for k in 1..n {
                    let i = (start + k) % n;
                    if outstanding[i].get() < outstanding[best].get() {
                        best = i;
                    }
                }
                best
            }
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
            Balance::ConsistentHash => match key_hash.and_then(|h| ring_lookup(&spec.hash_ring, h))
            {
                Some(i) => i as usize,
                None => self.round_robin(n),
            },
        }
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
        }
    }

    fn counts(s: &UpstreamSpec, rounds: usize) -> Vec<usize> {
        let mut b = Balancer::new(s, 3);
        let mut c = vec![0; s.endpoints.len()];
        let outstanding: Vec<std::cell::Cell<u32>> = s.endpoints.iter().map(|_| 0.into()).collect();
        for _ in 0..rounds {
            c[b.pick(s, &outstanding, None)] += 1;
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
            .map(|_| b.pick(&s, &[0, 0, 0].map(std::cell::Cell::new), None))
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_outstanding_avoids_the_busy_endpoint() {
        let s = spec(Balance::LeastOutstanding, &[1, 1, 1]);
        let mut b = Balancer::new(&s, 0);
        for _ in 0..50 {
            assert_ne!(b.pick(&s, &[0, 7, 0].map(std::cell::Cell::new), None), 1);
        }
    }

    #[test]
    fn power_of_two_prefers_the_less_loaded_of_two() {
        let s = spec(Balance::PowerOfTwo, &[1, 1]);
        let mut b = Balancer::new(&s, 9);
        for _ in 0..50 {
            assert_eq!(b.pick(&s, &[5, 1].map(std::cell::Cell::new), None), 1);
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
            let first = b.pick(&s, &[0u32; 3].map(std::cell::Cell::new), Some(h));
            for _ in 0..3 {
                assert_eq!(
                    b.pick(&s, &[0u32; 3].map(std::cell::Cell::new), Some(h)),
                    first
                );
            }
        }
    }
}
