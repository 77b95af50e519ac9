//! Rate-limited logging for everything an outsider can make happen.
//!
//! A caller, a guest or a client can trigger a log line as often as it can
//! connect or misbehave; unlimited, that costs a core and, under journald,
//! the per-service rate limit then hides the lines that matter. As
//! firecracker's `rate_limited` logger does, each call site gets its own
//! budget of `PER_WINDOW` lines per `WINDOW`; the first line after a quiet
//! spell says how many were suppressed.
//!
//! Written by hand: it is a dozen lines over one mutex per call site, and
//! the crates that do this (governor and friends) bring a clock and a
//! key space we do not need.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How long one budget lasts.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Lines one call site may log per window.
pub const PER_WINDOW: u32 = 5;

/// One call site's budget.
#[derive(Debug)]
pub struct RateLimit(Mutex<Budget>);

#[derive(Debug)]
struct Budget {
    since: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new() -> Self {
        Self(Mutex::new(Budget {
            since: None,
            logged: 0,
            suppressed: 0,
        }))
    }

    /// `Some(suppressed)` when a line may be logged now, with the count of
    /// lines dropped since the last one that was; `None` to drop this one.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if b.since.is_none_or(|t| now.duration_since(t) >= WINDOW) {
            b.since = Some(now);
            b.logged = 0;
        }
        if b.logged < PER_WINDOW {
            b.logged += 1;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at most `PER_WINDOW` lines per second from this call site, adding
/// `suppressed = N` for the lines dropped before it:
/// `limited!(warn, error = %e, "accept failed")`.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($rest:tt)+) => {{
        static LIMIT: $crate::logging::ratelimit::RateLimit = $crate::logging::ratelimit::RateLimit::new();
        if let Some(suppressed) = LIMIT.check() {
            if suppressed > 0 {
                tracing::$level!(suppressed, $($rest)+);
            } else {
                tracing::$level!($($rest)+);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_rest_counted() {
        let limit = RateLimit::new();
        let t0 = Instant::now();
        let logged = (0..1000).filter(|_| limit.check_at(t0).is_some()).count();
        assert_eq!(logged, PER_WINDOW as usize);
        // The next window's first line reports what the last one dropped.
        assert_eq!(limit.check_at(t0 + WINDOW), Some(1000 - PER_WINDOW as u64));
        assert_eq!(limit.check_at(t0 + WINDOW), Some(0));
    }
}
