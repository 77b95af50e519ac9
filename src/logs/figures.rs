//! A log's figures: its policy and counters, mirrored out of its file after
//! every job (`Log::run`), so that ListLogs, metrics and the saved state
//! read them without waiting for a job, and a file opened again starts
//! from them.

use std::sync::{
    Mutex,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use super::{gap::Gaps, policy::Policy, rotator::RotatingFile};
use crate::lock;

/// The figures of one log.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) policy: Mutex<Policy>,
    pub(super) size: AtomicU64,
    pub(super) backups: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    /// Bytes the disk refused (and a file that could not be opened).
    pub(super) bytes_dropped: AtomicU64,
    /// Bytes a rate limit dropped.
    pub(super) bytes_suppressed: AtomicU64,
    /// Bytes of this log's files removed to keep the disk budget.
    pub(super) bytes_evicted: AtomicU64,
    pub(super) rotations: AtomicU64,
}

impl Stats {
    pub(super) fn new(policy: Policy, c: &Counters) -> Self {
        Self {
            policy: Mutex::new(policy),
            size: AtomicU64::new(c.size),
            backups: AtomicU64::new(c.backups),
            bytes_written: AtomicU64::new(c.bytes_written),
            bytes_dropped: AtomicU64::new(c.bytes_dropped),
            bytes_suppressed: AtomicU64::new(c.bytes_suppressed),
            bytes_evicted: AtomicU64::new(c.bytes_evicted),
            rotations: AtomicU64::new(c.rotations),
        }
    }

    pub(super) fn policy(&self) -> Policy {
        *lock(&self.policy)
    }

    /// Takes the file's figures.
    pub(super) fn publish(&self, file: &RotatingFile) {
        *lock(&self.policy) = file.policy();
        self.size.store(file.size(), Relaxed);
        self.backups.store(file.backups().into(), Relaxed);
        self.bytes_written.store(file.bytes_written(), Relaxed);
        self.bytes_dropped.store(file.bytes_dropped(), Relaxed);
        self.rotations.store(file.rotations(), Relaxed);
    }
}

/// A snapshot of one log's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot {
    pub name: super::name::LogName,
    pub path: std::path::PathBuf,
    pub size: u64,
    pub backups: u64,
    pub policy: Policy,
    pub pipes: usize,
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub bytes_suppressed: u64,
    pub bytes_evicted: u64,
    pub rotations: u64,
    pub followers_dropped: u64,
    /// Gaps not yet written into the log.
    pub gaps: Gaps,
}

/// Counters carried over from a previous guestlogd.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub bytes_suppressed: u64,
    pub bytes_evicted: u64,
    pub rotations: u64,
    pub followers_dropped: u64,
    /// As last seen, until the file opens.
    pub size: u64,
    pub backups: u64,
    /// Gaps the previous guestlogd had not written into the log yet.
    pub gaps: Gaps,
}
