//! `RotatingFile`: one log file that guestlogd writes itself, rotated at a
//! hard size cap, inside a `LogDir`.
//!
//! Invariants, held after every call whether it succeeds or not:
//! - `BASE` (`NAME.log` for a log known by name) is never larger than
//!   `max_size`, not even by one byte;
//! - backups are `BASE.0` (newest) to `BASE.<max_backups-1>`, in the same
//!   directory, so the log uses at most `max_size × (max_backups + 1)` bytes
//!   of disk;
//! - the backups read oldest to newest, then `BASE`, are exactly the tail
//!   of everything written: a rotation cuts, it never drops or repeats;
//! - no name is ever followed: every file goes through `LogDir`'s checked
//!   open, so what a hostile user planted at one of our names is refused
//!   (`RotatorError::Planted`) when we would write it, and skipped (and
//!   reported through `take_skipped`) when we would only read it.
//!
//! Plain synchronous code over a file, with no runtime: callers serialise
//! access (a mutex per log) and choose the thread.
//!
//! `read` holds positions and reading across the files; `splice` moves a
//! pipe's bytes into the file without copying them.

mod error;
#[cfg(test)]
mod planted;
mod read;
mod splice;
#[cfg(test)]
mod tests;

use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::FileExt,
    path::PathBuf,
    sync::Arc,
};

pub use error::{RotatorError, Skipped};
pub use read::{Chunk, Pos};

use crate::logs::{
    logdir::{Access, BaseName, Entry, Found, LogDir, OpenError},
    policy::{MAX_BACKUPS, Policy, PolicyChange},
};

/// A write that crosses the cap is cut after the last newline within this
/// many bytes before the cap, as libvirt does, so lines stay whole.
const LINE_WINDOW: usize = 80;

/// What a splice did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spliced {
    /// Moved this many bytes into the file.
    Moved(usize),
    /// The pipe is empty and every writer has closed it.
    Eof,
    /// The pipe is empty for now.
    Empty,
    /// The file is within `LINE_WINDOW` of its cap: nothing was moved; read
    /// a little and `write` instead, which cuts at a line end.
    NearCap,
    /// Nothing was moved: read and `write` this time instead. The file is
    /// longer than this rotator made it (another host appends to it: a
    /// log directory shared while a domain migrates), and only `write`
    /// appends; or a line of guestlogd's must go before the next byte.
    ReadInstead,
}

/// A splice the file refused part way: `moved` bytes went into the file,
/// `rest` had left the pipe and did not, and is the caller's to write or
/// count as lost.
#[derive(Debug)]
pub struct Refused {
    pub error: RotatorError,
    pub moved: usize,
    pub rest: Vec<u8>,
}

impl From<RotatorError> for Refused {
    fn from(error: RotatorError) -> Self {
        Self {
            error,
            moved: 0,
            rest: Vec::new(),
        }
    }
}

/// A size-capped log file and its backups. See the module's invariants.
#[derive(Debug)]
pub struct RotatingFile {
    dir: Arc<LogDir>,
    base: BaseName,
    /// Read-write: the current file is read through it too, never reopened
    /// by name.
    file: File,
    size: u64,
    policy: Policy,
    backups: u32,
    rotations: u64,
    bytes_written: u64,
    bytes_dropped: u64,
    /// The file's last byte is a newline, so a cut there keeps lines whole.
    ends_in_newline: bool,
    /// Planted entries met since `take_skipped`, at most `MAX_BACKUPS`.
    skipped: Vec<Skipped>,
}

impl RotatingFile {
    /// Opens `BASE` in `dir` for appending, creating it if needed. A file
    /// found over its cap is rotated first. Backups beyond the policy are
    /// left as they are: only an explicit policy change (`set_policy`)
    /// removes them, so a log opened again with a policy that was lost (a
    /// forgotten log's, say) never loses history.
    pub fn open(dir: Arc<LogDir>, base: BaseName, policy: Policy) -> Result<Self, RotatorError> {
        let path = dir.display(base.as_str());
        let open_failed = |source| RotatorError::Open {
            path: path.clone(),
            source,
        };
        let file = dir
            .open_file(base.as_str(), Access::Append)
            .map_err(|e| refused(&dir, base.as_str(), e, open_failed))?;
        let size = file.metadata().map_err(open_failed)?.len();
        let mut log = Self {
            ends_in_newline: last_byte(&file, size) == Some(b'\n'),
            dir,
            base,
            file,
            size,
            policy,
            backups: 0,
            rotations: 0,
            bytes_written: 0,
            bytes_dropped: 0,
            skipped: Vec::new(),
        };
        log.count_backups();
        if log.size > policy.max_size {
            log.rotate()?;
        }
        Ok(log)
    }

    /// Whether this log's name in `dir` is still the file we write.
    pub fn at_its_name(&self, dir: &Arc<LogDir>) -> bool {
        Arc::ptr_eq(dir, &self.dir) && self.dir.names(self.base.as_str(), &self.file)
    }

    /// Opens the log's file again, in `dir`, keeping the counters: after
    /// someone removed it (or its directory) the next bytes go to a file
    /// that can be found, as virtlogd's do.
    pub fn reopen(&mut self, dir: Arc<LogDir>) -> Result<(), RotatorError> {
        let mut fresh = Self::open(dir, self.base.clone(), self.policy)?;
        fresh.restore_counters(self.bytes_written, self.bytes_dropped, self.rotations);
        *self = fresh;
        Ok(())
    }

    /// Writes a line of guestlogd's own (a gap's marker) under the same cap
    /// and rotation as data, without counting it as data written or
    /// dropped.
    pub fn write_notice(&mut self, text: &[u8]) -> Result<(), RotatorError> {
        let (written, dropped) = (self.bytes_written, self.bytes_dropped);
        let result = self.write(text);
        (self.bytes_written, self.bytes_dropped) = (written, dropped);
        result
    }

    /// Whether the current file's last byte is a newline.
    pub fn ends_in_newline(&self) -> bool {
        self.ends_in_newline
    }

    /// Applies a call's policy change, if it asks for one. Only a change
    /// of size or backups applies them now (`set_policy`); a change of rate
    /// alone is kept for the log's rate limit and touches no file.
    pub fn change_policy(&mut self, change: PolicyChange) -> Result<(), RotatorError> {
        if change.changes_size() {
            self.set_policy(change.over(self.policy))?;
        } else if change.is_some() {
            self.policy = change.over(self.policy);
        }
        Ok(())
    }

    /// Applies a new policy at once: backups beyond it are removed and a
    /// file over the new cap is rotated.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), RotatorError> {
        self.policy = policy;
        for k in policy.max_backups..MAX_BACKUPS {
            let name = self.base.backup(k);
            match self.dir.remove(&name) {
                Ok(_) => {}
                // Beyond the policy it is never read nor renamed onto, so
                // it cannot stop the log; it is reported, not fatal.
                Err(OpenError::Found(found)) => self.skip(&name, found),
                Err(OpenError::Io(source)) => {
                    return Err(RotatorError::Rotate {
                        path: self.dir.display(&name),
                        source,
                    });
                }
            }
        }
        self.count_backups();
        if self.size > policy.max_size {
            self.rotate()?;
        }
        Ok(())
    }

    /// Counts the backups again, after one was removed behind the
    /// rotator's back (by the disk budget, in the log's own job).
    pub fn recount_backups(&mut self) {
        self.count_backups();
    }

    /// The backups the policy keeps that are there and ours.
    fn count_backups(&mut self) {
        self.backups = (0..self.policy.max_backups)
            .filter(|k| matches!(self.dir.probe(&self.base.backup(*k)), Ok(Entry::Ours)))
            .count() as u32;
    }

    /// Appends `data`, rotating as often as the cap requires. On error the
    /// bytes not written are counted in `bytes_dropped`; the invariants hold.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), RotatorError> {
        while !data.is_empty() {
            let room = self.policy.max_size.saturating_sub(self.size) as usize;
            if room == 0 {
                if let Err(e) = self.rotate() {
                    self.bytes_dropped += data.len() as u64;
                    return Err(e);
                }
                continue;
            }
            let fits = data.len() <= room;
            let n = if fits {
                data.len()
            } else {
                cut(&data[..room], self.size > 0 && self.ends_in_newline)
            };
            // No line end in the window, which reaches back into the file:
            // a read ended mid-line just below the cap. The line's start
            // moves to the next file rather than the line being split.
            if !fits && n == room && room < LINE_WINDOW && !self.ends_in_newline {
                match self.rotate_moving_partial_line(LINE_WINDOW - room) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        self.bytes_dropped += data.len() as u64;
                        return Err(e);
                    }
                }
            }
            if let Err(source) = self.append(&data[..n]) {
                self.bytes_dropped += data.len() as u64;
                return Err(RotatorError::Write {
                    path: self.path(),
                    source,
                });
            }
            data = &data[n..];
            if !fits {
                // Cut before the cap: what is left starts the next file.
                if let Err(e) = self.rotate() {
                    self.bytes_dropped += data.len() as u64;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Rotates for a write that would split a line begun within the last
    /// `back` bytes of the current file: that line's start moves to the new
    /// file. False, with nothing done, when those bytes hold no line end
    /// (a line longer than the window is cut as usual) or there are no
    /// backups to keep the order in. The bytes are written to the new file
    /// before they are taken off the backup, and any failure in between
    /// puts things back as a plain cut: a line may stay split, but no byte
    /// is lost or written twice.
    fn rotate_moving_partial_line(&mut self, back: usize) -> Result<bool, RotatorError> {
        let back = (back as u64).min(self.size);
        if back == 0 || self.policy.max_backups == 0 {
            return Ok(false);
        }
        let mut tail = vec![0; back as usize];
        if self
            .file
            .read_exact_at(&mut tail, self.size - back)
            .is_err()
        {
            return Ok(false);
        }
        let Some(end) = tail.iter().rposition(|b| *b == b'\n') else {
            return Ok(false);
        };
        let carry = tail.split_off(end + 1);
        let keep = self.size - carry.len() as u64;
        let Ok(old) = self.file.try_clone() else {
            return Ok(false);
        };
        self.rotate()?;
        let moved = self.append(&carry).is_ok() && old.set_len(keep).is_ok();
        if moved {
            // The same bytes, in another file: not written twice.
            self.bytes_written -= carry.len() as u64;
        } else {
            self.bytes_written -= self.size;
            let _ = self.file.set_len(0);
            self.size = 0;
            self.ends_in_newline = false;
        }
        Ok(true)
    }

    /// Writes all of `data`, keeping `size` equal to the file's length even
    /// when a short write is followed by an error.
    fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.file.write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.size += n as u64;
                    self.bytes_written += n as u64;
                    self.ends_in_newline = data[n - 1] == b'\n';
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Rotates now. With no backups the file is truncated in place.
    pub fn rotate(&mut self) -> Result<(), RotatorError> {
        if self.policy.max_backups == 0 {
            // Our own descriptor: whatever is at the name now is not touched.
            self.file
                .set_len(0)
                .map_err(|source| RotatorError::Rotate {
                    path: self.path(),
                    source,
                })?;
        } else {
            self.file = self.shift()?;
            self.backups = (self.backups + 1).min(self.policy.max_backups);
        }
        self.size = 0;
        self.ends_in_newline = false;
        self.rotations += 1;
        Ok(())
    }

    /// Moves every file one name up and returns the new, empty current file.
    fn shift(&self) -> Result<File, RotatorError> {
        let dir = &*self.dir;
        let failed = |name: &str| {
            let path = dir.display(name);
            move |source| RotatorError::Rotate { path, source }
        };
        let oldest = self.policy.max_backups - 1;
        // rename cannot move a file onto a directory, nor the other way
        // round: refuse before anything moves rather than stop halfway. Any
        // other planted name is only renamed along (never followed) until
        // it falls off the end.
        let names = (0..=oldest).map(|k| self.base.backup(k));
        for name in std::iter::once(self.base.to_string()).chain(names) {
            if let Entry::Planted(Found::Directory) = dir.probe(&name).map_err(failed(&name))? {
                return Err(RotatorError::Planted {
                    path: dir.display(&name),
                    found: Found::Directory,
                });
            }
        }
        // The temporary name is ours alone: what is there is a leftover of
        // a failed rotation or a plant, and is removed, not followed. It
        // is then created exclusively, so it is certainly a new file of
        // ours, and before the oldest backup is replaced, so it cannot
        // take over that backup's inode, which a reader's position may
        // still name.
        let temp = self.base.temp();
        let planted = |e| refused(dir, &temp, e, failed(&temp));
        dir.remove(&temp).map_err(planted)?;
        let next = dir.open_file(&temp, Access::CreateNew).map_err(planted)?;
        let rename = |from: &str, to: &str| {
            dir.rename(from, to)
                .map_err(|e| refused(dir, to, e, failed(from)))
        };
        for k in (0..oldest).rev() {
            rename(&self.base.backup(k), &self.base.backup(k + 1))?;
        }
        // Absent only if someone removed it: nothing of ours to keep.
        rename(self.base.as_str(), &self.base.backup(0))?;
        if !rename(&temp, self.base.as_str())? {
            return Err(failed(&temp)(io::ErrorKind::NotFound.into()));
        }
        Ok(next)
    }

    /// Removes every backup, as virtlogd does when libvirt truncates a log.
    /// Removing a name never follows it, whatever was planted there.
    pub fn remove_backups(&mut self) -> Result<(), RotatorError> {
        let dir = &*self.dir;
        for k in 0..self.policy.max_backups.max(self.backups) {
            let name = self.base.backup(k);
            dir.remove(&name).map_err(|e| {
                let path = dir.display(&name);
                refused(dir, &name, e, move |source| RotatorError::Rotate {
                    path,
                    source,
                })
            })?;
        }
        self.backups = 0;
        Ok(())
    }

    /// Empties the current file; backups stay.
    pub fn truncate(&mut self) -> Result<(), RotatorError> {
        self.file.set_len(0).map_err(|source| RotatorError::Write {
            path: self.path(),
            source,
        })?;
        self.size = 0;
        self.ends_in_newline = false;
        Ok(())
    }

    /// Flushes the file's data to disk.
    pub fn sync(&self) -> Result<(), RotatorError> {
        self.file.sync_data().map_err(|source| RotatorError::Write {
            path: self.path(),
            source,
        })
    }

    /// Reads up to `max` bytes forward from `from` (the oldest byte kept
    /// when `None`), across backups and into the current file.
    pub fn read(&mut self, from: Option<Pos>, max: usize) -> Result<Chunk, RotatorError> {
        let (files, skipped) = read::files(&self.dir, &self.base, &self.file, self.policy)?;
        let chunk = read::read_files(&files, from, max);
        drop(files);
        self.note(skipped);
        chunk
    }

    /// Up to `max` bytes of the current file from `offset`, without
    /// opening the backups: a reader that keeps up (the journal export)
    /// reads what was just written at the cost of one `pread`.
    pub fn read_current(&self, offset: u64, max: usize) -> Result<Vec<u8>, RotatorError> {
        let want = max.min(self.size.saturating_sub(offset) as usize);
        let mut buf = vec![0; want];
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(RotatorError::Read {
                        path: self.path(),
                        source,
                    });
                }
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// The last `n` bytes kept (fewer if the log holds less), across
    /// backups.
    pub fn tail(&mut self, n: usize) -> Result<Vec<u8>, RotatorError> {
        let (files, skipped) = read::files(&self.dir, &self.base, &self.file, self.policy)?;
        let tail = read::tail(&files, n);
        drop(files);
        self.note(skipped);
        tail
    }

    /// The end of the current file.
    pub fn end(&self) -> Result<Pos, RotatorError> {
        let meta = self.file.metadata().map_err(|source| RotatorError::Read {
            path: self.path(),
            source,
        })?;
        Ok(Pos {
            inode: std::os::unix::fs::MetadataExt::ino(&meta),
            offset: self.size,
        })
    }

    /// Planted entries met since the last call, for the caller to report
    /// (rate-limited: a hostile user decides how often they appear).
    pub fn take_skipped(&mut self) -> Vec<Skipped> {
        std::mem::take(&mut self.skipped)
    }

    fn skip(&mut self, name: &str, found: Found) {
        let path = self.dir.display(name);
        self.note(vec![Skipped { path, found }]);
    }

    fn note(&mut self, skipped: Vec<Skipped>) {
        let room = (MAX_BACKUPS as usize).saturating_sub(self.skipped.len());
        self.skipped.extend(skipped.into_iter().take(room));
    }

    /// The current file's path, for messages and replies.
    pub fn path(&self) -> PathBuf {
        self.dir.display(self.base.as_str())
    }

    pub fn dir(&self) -> &Arc<LogDir> {
        &self.dir
    }

    pub fn base(&self) -> &BaseName {
        &self.base
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn policy(&self) -> Policy {
        self.policy
    }
    pub fn backups(&self) -> u32 {
        self.backups
    }
    pub fn rotations(&self) -> u64 {
        self.rotations
    }
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }
    pub fn bytes_dropped(&self) -> u64 {
        self.bytes_dropped
    }

    /// Carries a previous guestlogd's counters over.
    pub fn restore_counters(&mut self, written: u64, dropped: u64, rotations: u64) {
        self.bytes_written = written;
        self.bytes_dropped = dropped;
        self.rotations = rotations;
    }
}

/// Turns a checked operation's failure on `name` into a `RotatorError`:
/// `Planted` for something not ours, else `io` with its context.
fn refused(
    dir: &LogDir,
    name: &str,
    e: OpenError,
    io: impl FnOnce(io::Error) -> RotatorError,
) -> RotatorError {
    match e {
        OpenError::Found(found) => RotatorError::Planted {
            path: dir.display(name),
            found,
        },
        OpenError::Io(source) => io(source),
    }
}

/// How much of `fits` (the part of a write that fits under the cap) to put
/// in this file: up to the last newline in the final `LINE_WINDOW` bytes
/// before the cap, which may be the file's own last byte; else all of it.
fn cut(fits: &[u8], file_ends_in_newline: bool) -> usize {
    let window = fits.len().saturating_sub(LINE_WINDOW);
    match fits[window..].iter().rposition(|b| *b == b'\n') {
        Some(i) => window + i + 1,
        None if window == 0 && file_ends_in_newline => 0,
        None => fits.len(),
    }
}

fn last_byte(file: &File, size: u64) -> Option<u8> {
    let mut byte = [0];
    (size > 0 && file.read_at(&mut byte, size - 1).ok()? == 1).then_some(byte[0])
}
