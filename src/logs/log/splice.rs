//! A pipe's bytes moved into the log's file by `splice(2)`, in a job's
//! turn: for a log whose bytes no one needs in user space (no follower to
//! hand them to, no rate limit to count them against). The journal export
//! reads the file back after the write, as it does after any write.

use std::{os::fd::BorrowedFd, sync::atomic::Ordering::Relaxed};

use super::{Log, Slot};
use crate::{
    lock,
    logs::rotator::{RotatorError, Spliced},
};

impl Log {
    /// Whether a pipe may splice into this log now: nothing needs its
    /// bytes in user space. Asked in the log's turn, where no follower can
    /// join (following is a job too).
    pub fn splices(&self) -> bool {
        !self.limited() && lock(&self.followers).is_empty()
    }

    /// Moves up to `max` bytes from `pipe` into the file, in a job's turn.
    /// `NearCap`, or an error, means nothing was moved: the caller reads
    /// and writes this time (`write_in`), which cuts at a line end and
    /// counts and marks what the disk refuses.
    pub fn splice_in(
        &self,
        slot: &mut Slot,
        pipe: BorrowedFd<'_>,
        max: usize,
    ) -> Result<Spliced, RotatorError> {
        let f = self.file(slot)?;
        self.write_gaps(f);
        let spliced = f.splice_from(pipe, max)?;
        if let Spliced::Moved(n) = spliced {
            self.usage.grew(n as u64);
            if self.journal.on.load(Relaxed) {
                self.export_in(slot);
            }
        }
        Ok(spliced)
    }
}
