//! A log's figures: what ListLogs, the metrics and the saved state show,
//! kept in atomics (`Stats`) that each job publishes, so readers never
//! wait for a job; and what a previous guestlogd carried over
//! (`Counters`). Plain data.

use std::{path::PathBuf, sync::atomic::AtomicU64};

use super::{name::LogName, policy::Policy};

/// The figures ListLogs shows and a reopened file starts from.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) size: AtomicU64,
    pub(crate) backups: AtomicU64,
    pub(crate) max_size: AtomicU64,
    pub(crate) max_backups: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) bytes_dropped: AtomicU64,
    pub(crate) rotations: AtomicU64,
    /// Bytes of backups deleted early under a disk budget (none yet).
    pub(crate) bytes_evicted: AtomicU64,
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
    pub rotations: u64,
    pub followers_dropped: u64,
    pub bytes_evicted: u64,
    /// `None` unless the log exports to the journal.
    pub journal: Option<JournalFigures>,
}

/// Counters carried over from a previous guestlogd.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub rotations: u64,
    pub followers_dropped: u64,
    pub bytes_evicted: u64,
    /// As last seen, until the file opens.
    pub size: u64,
    pub backups: u64,
}
