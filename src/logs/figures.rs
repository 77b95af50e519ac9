//! A log's figures: what ListLogs, the metrics and the saved state show,
//! kept in atomics (`Stats`) that each job publishes, so readers never
//! wait for a job, and a file opened again starts from them; and what a
//! previous guestlogd carried over (`Counters`). Plain data.

use std::{
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use super::{gap::Gaps, name::LogName, policy::Policy, rotator::RotatingFile};
use crate::lock;

/// The figures of one log.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) policy: Mutex<Policy>,
    pub(crate) size: AtomicU64,
    pub(crate) backups: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    /// Bytes the disk refused (and a file that could not be opened).
    pub(crate) bytes_dropped: AtomicU64,
    /// Bytes a rate limit dropped.
    pub(crate) bytes_suppressed: AtomicU64,
    /// Bytes of this log's files removed to keep the disk budget.
    pub(crate) bytes_evicted: AtomicU64,
    pub(crate) rotations: AtomicU64,
}

impl Stats {
    pub(crate) fn new(policy: Policy, c: &Counters) -> Self {
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

    pub(crate) fn policy(&self) -> Policy {
        *lock(&self.policy)
    }

    /// Takes the file's figures.
    pub(crate) fn publish(&self, file: &RotatingFile) {
        *lock(&self.policy) = file.policy();
        self.size.store(file.size(), Relaxed);
        self.backups.store(file.backups().into(), Relaxed);
        self.bytes_written.store(file.bytes_written(), Relaxed);
        self.bytes_dropped.store(file.bytes_dropped(), Relaxed);
        self.rotations.store(file.rotations(), Relaxed);
    }
}

/// A log's journal export figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalFigures {
    pub lines_sent: u64,
    pub lines_suppressed: u64,
}

/// A snapshot of one log's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot {
    pub name: LogName,
    pub path: PathBuf,
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
    /// `None` unless the log exports to the journal.
    pub journal: Option<JournalFigures>,
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
    /// Its domain's migrations, as the previous guestlogd left them.
    pub hop: super::migration::HopState,
}
