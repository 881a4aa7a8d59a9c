//! The controller's time. Health and policy count from a fixed origin (the
//! daemon's start), so tests drive them on a simulated clock; status and
//! events show wall-clock times from the origin's.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time since a fixed origin.
pub trait Clock: Send {
    fn now(&self) -> Duration;
}

/// `CLOCK_MONOTONIC` since `.0`.
pub struct MonotonicClock(pub Instant);

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Wall-clock time, ms since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
