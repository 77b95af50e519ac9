//! What a log does about bytes that do not reach it, or should not: the
//! gaps it marks (`gap`), its rate limit (`rate`) and what the disk budget
//! took from it.

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use super::Log;
use crate::{
    lock,
    logs::{gap::Reason, rotator::RotatingFile},
};

impl Log {
    /// Writes the pending gaps' marker lines before what comes next; they
    /// stay pending while the disk still refuses them.
    pub(super) fn write_gaps(&self, f: &mut RotatingFile) {
        let mut gaps = lock(&self.gaps);
        if gaps.is_empty() {
            return;
        }
        let markers = gaps.markers(f.size() == 0 || f.ends_in_newline());
        if f.write_notice(&markers).is_ok() {
            self.usage.grew(markers.len() as u64);
            for (reason, bytes) in gaps.iter() {
                crate::limited!(
                    info,
                    message_id = crate::logging::events::GAP,
                    log = %self.name(),
                    bytes,
                    reason = reason.text(),
                    "a gap is marked in the log"
                );
                if *reason == Reason::RateLimit {
                    crate::limited!(
                        info,
                        message_id = crate::logging::events::THROTTLE_END,
                        log = %self.name(),
                        bytes,
                        "the log's rate limit stopped dropping"
                    );
                }
            }
            gaps.clear();
        }
    }

    pub(super) fn gap(&self, reason: Reason, bytes: u64) {
        let mut gaps = lock(&self.gaps);
        if reason == Reason::RateLimit && !gaps.last_is(&reason) {
            crate::limited!(
                info,
                message_id = crate::logging::events::THROTTLE_START,
                log = %self.name(),
                "the log's rate limit is dropping a pipe's output"
            );
        }
        gaps.add(reason, bytes);
    }

    /// How many of `n` bytes a pipe may write now; the rest is over the
    /// log's rate and must be dropped (`suppressed`).
    pub fn admit(&self, n: usize) -> usize {
        lock(&self.bucket).take_up_to(n, Instant::now())
    }

    /// Whether the log's rate admits nothing now: a pipe then drops what
    /// it holds without reading it (`pipe::discard`).
    pub fn rate_exhausted(&self) -> bool {
        lock(&self.bucket).exhausted(Instant::now())
    }

    /// Counts `n` bytes a rate limit dropped, to be marked in the log.
    pub fn suppressed(&self, n: usize) {
        if n > 0 {
            self.stats.bytes_suppressed.fetch_add(n as u64, Relaxed);
            self.gap(Reason::RateLimit, n as u64);
        }
    }

    /// Charges `n` bytes a console read to the rate limit; the console
    /// then waits `throttle()` before it reads again.
    pub fn charge(&self, n: usize) {
        lock(&self.bucket).take_all(n, Instant::now());
    }

    /// How long a console must wait before it reads its guest again.
    pub fn throttle(&self) -> Duration {
        lock(&self.bucket).wait(Instant::now())
    }

    /// Whether the log has a rate limit.
    pub fn limited(&self) -> bool {
        !lock(&self.bucket).limit().is_off()
    }

    /// Counts bytes of this log's files the disk budget removed.
    pub fn evicted(&self, n: u64) {
        self.stats.bytes_evicted.fetch_add(n, Relaxed);
    }
}
