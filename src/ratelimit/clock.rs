//! The clock every rate limit runs on: nanoseconds since the Unix epoch,
//! read as the wall clock once at first use and advanced by the monotonic
//! clock from then on. Monotonic (a wall-clock step never refills a bucket
//! or reopens a window), identical in every thread of the process (so the
//! workers and the aggregator agree on window boundaries and on when a grant
//! takes effect), and close to other nodes' clocks (windows of a cluster
//! quota line up on wall-clock boundaries).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

static ORIGIN: OnceLock<(Instant, u64)> = OnceLock::new();

fn origin() -> &'static (Instant, u64) {
    ORIGIN.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (Instant::now(), wall)
    })
}

/// Nanoseconds since the Unix epoch, monotonic within this process.
#[inline]
pub fn now() -> u64 {
    let (start, wall) = origin();
    wall + start.elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_and_near_the_wall_clock() {
        let a = super::now();
        let b = super::now();
        assert!(b >= a);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(wall.abs_diff(b) < 5_000_000_000);
    }
}
