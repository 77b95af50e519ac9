//! `Bucket`: a log's rate limit, a token bucket of bytes.
//!
//! A log with `maxRate` R (bytes a second) and `maxBurst` B takes at most B
//! bytes at once and R a second on average. What is over the rate is
//! handled by the writer's kind: a console waits until the bucket refills
//! (its guest slows down as on a real serial line and loses nothing), a
//! pipe drops it (QEMU's stdout must never block its main loop) and the log
//! says so (`gap`). Plain data over a clock the caller passes, so it is
//! tested without waiting.

use std::time::{Duration, Instant};

/// A rate limit: `rate` bytes a second, bursts of `burst` bytes. A rate of
/// 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    pub rate: u64,
    pub burst: u64,
}

impl Limit {
    pub fn is_off(self) -> bool {
        self.rate == 0
    }

    /// The burst, never less than what one second may take: a burst below
    /// the rate would cap the rate itself.
    fn depth(self) -> f64 {
        self.burst.max(self.rate) as f64
    }
}

/// The bucket of one log.
#[derive(Debug)]
pub struct Bucket {
    limit: Limit,
    /// Bytes that may pass now; negative after a console's read that took
    /// more than was there (it then waits until this is back at zero).
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(limit: Limit, now: Instant) -> Self {
        Self {
            limit,
            tokens: limit.depth(),
            at: now,
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// Takes a new limit, keeping what is in the bucket (up to the new
    /// depth).
    pub fn set_limit(&mut self, limit: Limit, now: Instant) {
        self.refill(now);
        self.limit = limit;
        self.tokens = self.tokens.min(limit.depth());
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.limit.rate as f64).min(self.limit.depth());
    }

    /// How many of `n` bytes may pass now (all of them with no limit); the
    /// rest is over the rate. For a writer that drops what is over.
    pub fn take_up_to(&mut self, n: usize, now: Instant) -> usize {
        if self.limit.is_off() {
            return n;
        }
        self.refill(now);
        let granted = (self.tokens.max(0.0) as usize).min(n);
        self.tokens -= granted as f64;
        granted
    }

    /// Whether not one byte may pass now.
    pub fn exhausted(&mut self, now: Instant) -> bool {
        if self.limit.is_off() {
            return false;
        }
        self.refill(now);
        self.tokens < 1.0
    }

    /// Takes all `n` bytes, going into debt if need be, for a writer that
    /// read them already and will wait (`wait`) before reading more.
    pub fn take_all(&mut self, n: usize, now: Instant) {
        if self.limit.is_off() {
            return;
        }
        self.refill(now);
        self.tokens -= n as f64;
    }

    /// How long until the bucket is out of debt; zero when it is.
    pub fn wait(&mut self, now: Instant) -> Duration {
        if self.limit.is_off() {
            return Duration::ZERO;
        }
        self.refill(now);
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.limit.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_dropping_writer_gets_the_burst_then_the_rate() {
        let t = Instant::now();
        let mut b = Bucket::new(
            Limit {
                rate: 1000,
                burst: 4000,
            },
            t,
        );
        assert_eq!(b.take_up_to(10_000, t), 4000);
        assert_eq!(b.take_up_to(10_000, t), 0);
        assert_eq!(b.take_up_to(10_000, t + 500 * MS), 500);
        // Over ten seconds at twenty times the rate: the rate gets through.
        let mut passed = 0;
        for k in 1..=1000 {
            passed += b.take_up_to(200, t + 500 * MS + 10 * k * MS);
        }
        assert_eq!(passed, 10_000);
    }

    #[test]
    fn a_waiting_writer_waits_off_its_debt() {
        let t = Instant::now();
        let mut b = Bucket::new(
            Limit {
                rate: 1000,
                burst: 0,
            },
            t,
        );
        b.take_all(1000, t);
        assert_eq!(b.wait(t), Duration::ZERO);
        b.take_all(500, t);
        assert_eq!(b.wait(t), 500 * MS);
        assert_eq!(b.wait(t + 200 * MS), 300 * MS);
        assert_eq!(b.wait(t + 600 * MS), Duration::ZERO);
    }

    #[test]
    fn no_limit_is_no_limit() {
        let t = Instant::now();
        let mut b = Bucket::new(Limit::default(), t);
        assert_eq!(b.take_up_to(1 << 30, t), 1 << 30);
        b.take_all(1 << 30, t);
        assert_eq!(b.wait(t), Duration::ZERO);
    }
}
