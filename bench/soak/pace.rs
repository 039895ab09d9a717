//! Rate limiting for the soak's publishers: a token bucket, so that a publisher held back (by
//! flow control, or a busy machine) catches up by a bounded burst, never by a flood.

use std::time::{Duration, Instant};

/// The longest burst a publisher may send to catch up.
const BURST: Duration = Duration::from_millis(100);
/// How long a publisher with nothing to send waits before looking again.
pub const IDLE: Duration = Duration::from_millis(1);

/// Events a publisher may send now, at `rate` events/s.
pub struct Pace {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    pub fn new(rate: f64) -> Pace {
        Pace {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Up to `max` events that may go now (0: none yet); take them with [`Pace::spend`].
    pub fn available(&mut self, max: u64) -> u64 {
        let now = Instant::now();
        let cap = (self.rate * BURST.as_secs_f64()).max(1.0);
        self.tokens = (self.tokens + (now - self.last).as_secs_f64() * self.rate).min(cap);
        self.last = now;
        (self.tokens.floor() as u64).min(max)
    }

    pub fn spend(&mut self, n: u64) {
        self.tokens -= n as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_accrue_with_time_and_are_capped() {
        let mut p = Pace::new(1_000.0);
        p.last -= Duration::from_secs(10);
        // Ten seconds owed, but only a burst's worth (100 ms at 1,000/s) may go.
        assert_eq!(p.available(1_000), 100);
        p.spend(100);
        assert_eq!(p.available(1_000), 0);
    }
}
