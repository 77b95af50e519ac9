//! What a rotating file's operations fail with, and what they skip.

use std::{io, path::PathBuf};

use crate::logs::logdir::{Found, LogDirError};

/// A failed file operation, with the path it was about.
#[derive(Debug, thiserror::Error)]
pub enum RotatorError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rotate {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not our file at one of our names: planted, so never used.
    #[error("refusing {path}: it is {found}, not a log file of ours")]
    Planted { path: PathBuf, found: Found },
    #[error(transparent)]
    Dir(#[from] LogDirError),
    /// The log's previous file operation has not returned (a hung disk).
    #[error("{path} does not answer: its last file operation has not returned for {secs} s")]
    Stalled { path: PathBuf, secs: u64 },
    /// The thread running the operation failed.
    #[error("a file operation on {path} failed: {reason}")]
    Job { path: PathBuf, reason: String },
}

/// Something not ours at one of our backup names, left alone and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub found: Found,
}
