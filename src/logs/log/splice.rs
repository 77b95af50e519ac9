//! A pipe's bytes moved into the log's file by `splice(2)`, in a job's
//! turn: for a log whose bytes no one needs in user space (no follower to
//! hand them to, no rate limit to count them against). The journal export
//! reads the file back after the write, as it does after any write.

use std::{os::fd::BorrowedFd, sync::atomic::Ordering::Relaxed};

use super::{Log, Slot};
use crate::{
    lock,
    logs::rotator::{Refused, RotatorError, Spliced},
};

impl Log {
    /// Whether a pipe may splice into this log now: nothing needs its
    /// bytes in user space. Asked in the log's turn, where no follower can
    /// join (following is a job too).
    pub fn splices(&self) -> bool {
        !self.limited() && lock(&self.followers).is_empty()
    }

    /// Moves up to `max` bytes from `pipe` into the file, in a job's turn.
    /// `NearCap`, `ReadInstead`, or an error, means nothing more is to be spliced this
    /// time: the caller reads and writes (`write_in`), which cuts at a line
    /// end, writes a migration's line first, and counts and marks what the
    /// disk refuses.
    pub fn splice_in(
        &self,
        slot: &mut Slot,
        pipe: BorrowedFd<'_>,
        max: usize,
    ) -> Result<Spliced, RotatorError> {
        // The domain's arrival line goes just before its first byte, which
        // only a read sees come.
        if self.arrival_pending() {
            return Ok(Spliced::ReadInstead);
        }
        let f = self.file(slot)?;
        self.write_gaps(f);
        match f.splice_from(pipe, max) {
            Ok(spliced) => {
                if let Spliced::Moved(n) = spliced {
                    self.grew_by_splice(slot, n);
                }
                Ok(spliced)
            }
            Err(Refused { error, moved, rest }) => {
                self.grew_by_splice(slot, moved);
                // Out of the pipe but not in the file: written the usual
                // way, or counted and marked as lost where it happened.
                if !rest.is_empty() {
                    let _ = self.write_in(slot, &rest);
                }
                Err(error)
            }
        }
    }

    fn grew_by_splice(&self, slot: &mut Slot, n: usize) {
        if n == 0 {
            return;
        }
        self.usage.grew(n as u64);
        if self.journal.on.load(Relaxed) {
            self.export_in(slot);
        }
    }
}
