//! [hot] A per-worker, per-endpoint keep-alive pool: a LIFO stack of idle
//! connections (the most recently used is the most likely still open and warm),
//! bounded in count, each dropped once idle longer than the idle timeout.
//!
//! Generic over the connection type and handed `now` by the caller, so its
//! rules are tested without sockets or sleeps.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Pool<C> {
    /// Oldest at the front, newest at the back.
    idle: VecDeque<(C, Instant)>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<C> Pool<C> {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool<C> {
        Pool {
            idle: VecDeque::with_capacity(max_idle.min(1024)),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently returned connection that has not expired.
    #[inline]
    pub fn checkout(&mut self, now: Instant) -> Option<C> {
        while let Some((conn, since)) = self.idle.pop_back() {
            if now.saturating_duration_since(since) < self.idle_timeout {
                return Some(conn);
            }
            // The newest has expired, so all older ones have too.
            self.idle.clear();
        }
        None
    }

    /// Returns a connection; the oldest idle one is closed if the pool is full.
    #[inline]
    pub fn checkin(&mut self, conn: C, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        if self.idle.len() >= self.max_idle {
            self.idle.pop_front();
        }
        self.idle.push_back((conn, now));
    }

    /// Closes connections idle past the timeout; returns how many.
    pub fn evict_expired(&mut self, now: Instant) -> usize {
        let before = self.idle.len();
        while let Some((_, since)) = self.idle.front() {
            if now.saturating_duration_since(*since) >= self.idle_timeout {
                self.idle.pop_front();
            } else {
                break;
            }
        }
        before - self.idle.len()
    }

    /// Closes the oldest idle connection; whether there was one.
    pub fn close_oldest(&mut self) -> bool {
        self.idle.pop_front().is_some()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    /// Drops every idle connection (used when draining).
    pub fn clear(&mut self) {
        self.idle.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_is_lifo() {
        let t = Instant::now();
        let mut p = Pool::new(4, Duration::from_secs(10));
        p.checkin(1, t);
        p.checkin(2, t);
        assert_eq!(p.checkout(t), Some(2));
        assert_eq!(p.checkout(t), Some(1));
        assert_eq!(p.checkout(t), None);
    }

    #[test]
    fn full_pool_drops_the_oldest() {
        let t = Instant::now();
        let mut p = Pool::new(2, Duration::from_secs(10));
        for i in 0..3 {
            p.checkin(i, t);
        }
        assert_eq!(p.idle_count(), 2);
        assert_eq!(p.checkout(t), Some(2));
        assert_eq!(p.checkout(t), Some(1));
    }

    #[test]
    fn expired_connections_are_never_handed_out() {
        let t = Instant::now();
        let mut p = Pool::new(4, Duration::from_secs(10));
        p.checkin(1, t);
        p.checkin(2, t + Duration::from_secs(5));
        assert_eq!(p.evict_expired(t + Duration::from_secs(11)), 1);
        assert_eq!(p.checkout(t + Duration::from_secs(16)), None);
        assert_eq!(p.idle_count(), 0);
    }

    #[test]
    fn zero_max_idle_disables_pooling() {
        let mut p = Pool::new(0, Duration::from_secs(10));
        p.checkin(1, Instant::now());
        assert_eq!(p.checkout(Instant::now()), None);
    }
}
