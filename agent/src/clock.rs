//! The agent's clock, injectable: every "now" the agent judges by (policy and timestamp expiry,
//! quarantine retention, sync verification) comes from one [`Clock`], so tests run the real
//! agent (`run_with_clock`) against a [`ManualClock`] and advance time instead of sleeping.
//! Timers (the idle trim, lock retries) stay on tokio's monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};

use embargo_policy::metadata::Time;

/// Where the agent reads the time of day.
pub trait Clock: Send + Sync {
    fn now(&self) -> Time;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        Time::now()
    }
}

/// A clock that moves only when told (tests).
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Starts at the system's current time.
    pub fn new() -> Self {
        Self(AtomicU64::new(Time::now().0))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        Time(self.0.load(Ordering::SeqCst))
    }
}
