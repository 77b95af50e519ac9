//! A log's journal budget: a token bucket of lines (`max-lines-per-second`
//! refilled continuously, at most `max-burst` saved up), and the episode
//! of suppression it reports once.
//!
//! Pure, with the time passed in, so it is tested without waiting.

use std::time::{Duration, Instant};

/// An episode ends when this long passes without a suppressed line; its
/// one "suppressed N lines" entry is sent then.
pub const EPISODE_END: Duration = Duration::from_secs(1);

/// Lines per second and burst; a rate of 0 means no budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_second: u32,
    pub burst: u32,
}

/// One log's budget.
#[derive(Debug, Clone)]
pub struct Bucket {
    limits: Limits,
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            tokens: f64::from(limits.burst.max(1)),
            at: None,
        }
    }

    /// Takes one line's token: false when the budget is spent.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.limits.per_second == 0 {
            return true;
        }
        let burst = f64::from(self.limits.burst.max(1));
        if let Some(at) = self.at {
            let earned =
                now.saturating_duration_since(at).as_secs_f64() * f64::from(self.limits.per_second);
            self.tokens = (self.tokens + earned).min(burst);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Gives back a token taken for a line that could not be sent yet (it
    /// is taken again when it is).
    pub fn refund(&mut self) {
        if self.limits.per_second > 0 {
            self.tokens = (self.tokens + 1.0).min(f64::from(self.limits.burst.max(1)));
        }
    }
}

/// Lines suppressed since an episode began, and when the last one was.
#[derive(Debug, Clone, Copy, Default)]
pub struct Episode {
    pub lines: u64,
    pub last: Option<Instant>,
}

impl Episode {
    pub fn suppressed(&mut self, now: Instant) {
        self.lines += 1;
        self.last = Some(now);
    }

    /// Whether an episode is open and has been quiet for `EPISODE_END`
    /// (an episode carried over a restart, with no time, has ended).
    pub fn ended(&self, now: Instant) -> bool {
        self.lines > 0
            && self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= EPISODE_END)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(Limits {
            per_second: 10,
            burst: 5,
        });
        let passed = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(passed, 5);
        // 10 a second: one more every 100 ms, never more than the burst.
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| b.take(later)).count(), 5);
        b.refund();
        assert!(b.take(later));
    }

    #[test]
    fn no_rate_means_no_budget() {
        let mut b = Bucket::new(Limits {
            per_second: 0,
            burst: 0,
        });
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| b.take(t0)));
    }

    #[test]
    fn an_episode_ends_after_a_quiet_second() {
        let t0 = Instant::now();
        let mut e = Episode::default();
        assert!(!e.ended(t0));
        e.suppressed(t0);
        e.suppressed(t0 + Duration::from_millis(900));
        assert!(!e.ended(t0 + Duration::from_millis(1500)));
        assert!(e.ended(t0 + Duration::from_millis(1900)));
        let carried = Episode {
            lines: 3,
            last: None,
        };
        assert!(carried.ended(t0));
    }
}
