//! `Usage`: how much the logs have written since the disk budget last
//! looked, so that the budget (`vacuum`) is enforced as logs grow, not on a
//! timer. Every write adds its bytes; once they pass the slack, the budget
//! task is woken. Atomics and a `Notify`: a write never waits for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Usage {
    /// Bytes written since the last look.
    growth: AtomicU64,
    /// Growth that wakes the budget task; 0 with no budget.
    slack: u64,
    wake: Notify,
}

impl Usage {
    /// No budget: writes are not counted.
    pub fn off() -> Self {
        Self::default()
    }

    /// Wakes the budget task every `slack` bytes written (at least 1).
    pub fn every(slack: u64) -> Self {
        Self {
            slack: slack.max(1),
            ..Self::default()
        }
    }

    /// A log wrote `n` bytes.
    pub fn grew(&self, n: u64) {
        if self.slack == 0 || n == 0 {
            return;
        }
        let before = self.growth.fetch_add(n, Relaxed);
        if before < self.slack && before + n >= self.slack {
            self.wake.notify_one();
        }
    }

    /// What was written since the last call.
    pub fn take(&self) -> u64 {
        self.growth.swap(0, Relaxed)
    }

    /// Waits until the logs have written `slack` bytes since the last
    /// `take`.
    pub async fn grown(&self) {
        if self.growth.load(Relaxed) >= self.slack && self.slack > 0 {
            return;
        }
        self.wake.notified().await;
    }
}
