//! [cold] Circuit-breaker limits (`[upstreams.NAME.circuit_breaker]`) and
//! how they are split among workers.
//!
//! Every limit is enforced per worker, on that worker's share of it
//! (the limit divided by the worker count, rounded up): a worker admits
//! or refuses from its own counters, with no atomic shared between cores
//! on the request path. SO_REUSEPORT spreads connections evenly, so the
//! shares add up to the limit; under uneven load a busy worker refuses at
//! its share while others have room (docs/resilience.md measures it).

use std::time::Duration;

/// The limits as configured, for the whole process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Upstream connections open (in use and idle).
    pub max_connections: u32,
    /// Requests to the upstream at once.
    pub max_requests: u32,
    /// Requests waiting for room (0: none wait; over the limit is 503).
    pub max_pending: u32,
    /// Retries under way at once.
    pub max_retries: u32,
    /// How long a request waits for room before its 503.
    pub queue_timeout: Duration,
}

/// One worker's share of each limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerShare {
    pub max_connections: u32,
    pub max_requests: u32,
    pub max_pending: u32,
    pub max_retries: u32,
}

impl CircuitBreaker {
    /// Each limit divided among `workers`, rounded up; a limit above zero
    /// leaves every worker at least one.
    pub fn share(&self, workers: usize) -> WorkerShare {
        let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
        let part = |limit: u32| limit.div_ceil(workers);
        WorkerShare {
            max_connections: part(self.max_connections),
            max_requests: part(self.max_requests),
            max_pending: part(self.max_pending),
            max_retries: part(self.max_retries),
        }
    }
}

impl WorkerShare {
    /// Requests a worker lets through at once: each holds a connection,
    /// so the connection limit bounds them too.
    pub fn admitted(&self) -> usize {
        self.max_requests.min(self.max_connections) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(limit: u32) -> CircuitBreaker {
        CircuitBreaker {
            max_connections: limit,
            max_requests: limit,
            max_pending: limit,
            max_retries: limit,
            queue_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn shares_are_rounded_up_and_never_zero_for_a_nonzero_limit() {
        for (limit, workers, share) in [
            (8, 1, 8),
            (8, 2, 4),
            (9, 2, 5),
            (1, 8, 1),
            (0, 4, 0),
            (1024, 3, 342),
            (5, 0, 5),
        ] {
            let s = breaker(limit).share(workers);
            assert_eq!(
                (
                    s.max_connections,
                    s.max_requests,
                    s.max_pending,
                    s.max_retries
                ),
                (share, share, share, share),
                "{limit} over {workers} workers"
            );
        }
    }

    #[test]
    fn admission_is_bounded_by_requests_and_connections() {
        let mut b = breaker(10);
        b.max_connections = 4;
        assert_eq!(b.share(2).admitted(), 2);
        b.max_connections = 100;
        assert_eq!(b.share(2).admitted(), 5);
    }
}
