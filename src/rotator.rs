//! `RotatingFile`: one log file that guestlogd writes itself, rotated at a
//! hard size cap.
//!
//! Invariants, held after every call whether it succeeds or not:
//! - `NAME.log` is never larger than `max_size`, not even by one byte;
//! - backups are `NAME.log.0` (newest) to `NAME.log.<max_backups-1>`, so the
//!   log uses at most `max_size × (max_backups + 1)` bytes of disk;
//! - the backups read oldest to newest, then `NAME.log`, are exactly the tail
//!   of everything written: a rotation cuts, it never drops or repeats.
//!
//! Plain synchronous code over a file, with no runtime: callers serialise
//! access (a mutex per log) and choose the thread.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::name::LogName;

/// The most backups a log may keep. Old backups up to this number are
/// removed when a policy shrinks, so it also bounds that clean-up.
pub const MAX_BACKUPS: u32 = 64;
/// The smallest cap: rotating more often than every 4 KiB helps nobody.
pub const MIN_SIZE: u64 = 4096;
/// The largest cap, 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;
/// A write that crosses the cap is cut after the last newline within this
/// many bytes before the cap, as libvirt does, so lines stay whole.
const LINE_WINDOW: usize = 80;

/// How large a log grows and how many backups it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub max_size: u64,
    pub max_backups: u32,
}

impl Default for Policy {
    /// libvirt's virtlogd defaults.
    fn default() -> Self {
        Self {
            max_size: 2 * 1024 * 1024,
            max_backups: 3,
        }
    }
}

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
}

/// A point in the log's byte stream: a file, by inode, and an offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub inode: u64,
    pub offset: u64,
}

/// What `read` returns.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pub data: Vec<u8>,
    /// Where the next read goes on.
    pub next: Pos,
    /// The read reached the end of the current file.
    pub eof: bool,
    /// The position asked for was rotated away or truncated: reading began
    /// at the oldest byte kept.
    pub skipped: bool,
}

/// A size-capped log file and its backups. See the module's invariants.
#[derive(Debug)]
pub struct RotatingFile {
    dir: PathBuf,
    name: LogName,
    file: File,
    size: u64,
    policy: Policy,
    backups: u32,
    rotations: u64,
    bytes_written: u64,
    bytes_dropped: u64,
    /// The file's last byte is a newline, so a cut there keeps lines whole.
    ends_in_newline: bool,
}

impl RotatingFile {
    /// Opens `DIR/NAME.log` for appending, creating it if needed. A file
    /// found over its cap is rotated first, and backups beyond the policy
    /// are removed.
    pub fn open(dir: &Path, name: &LogName, policy: Policy) -> Result<Self, RotatorError> {
        let path = dir.join(format!("{name}.log"));
        let file = open_append(&path, false)?;
        let size = file
            .metadata()
            .map_err(|source| RotatorError::Open {
                path: path.clone(),
                source,
            })?
            .len();
        let mut log = Self {
            dir: dir.to_owned(),
            name: name.clone(),
            file,
            size,
            policy,
            backups: 0,
            rotations: 0,
            bytes_written: 0,
            bytes_dropped: 0,
            ends_in_newline: last_byte(&path, size) == Some(b'\n'),
        };
        log.set_policy(policy)?;
        Ok(log)
    }

    /// Applies a new policy at once: backups beyond it are removed and a
    /// file over the new cap is rotated.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), RotatorError> {
        self.policy = policy;
        for k in policy.max_backups..MAX_BACKUPS {
            let path = self.backup_path(k);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RotatorError::Rotate { path, source: e });
                }
                _ => {}
            }
        }
        self.backups = (0..policy.max_backups)
            .filter(|k| self.backup_path(*k).exists())
            .count() as u32;
        if self.size > policy.max_size {
            self.rotate()?;
        }
        Ok(())
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
        let path = self.path();
        let failed = |source| RotatorError::Rotate {
            path: path.clone(),
            source,
        };
        if self.policy.max_backups == 0 {
            self.file.set_len(0).map_err(failed)?;
        } else {
            // The next file is created before the oldest backup is deleted,
            // so it cannot take over that backup's inode, which a reader's
            // position may still name.
            let next_path = self.dir.join(format!(".{}.log.next", self.name));
            let next = open_append(&next_path, true)?;
            for k in (0..self.policy.max_backups - 1).rev() {
                match fs::rename(self.backup_path(k), self.backup_path(k + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(failed(e)),
                    _ => {}
                }
            }
            fs::rename(&path, self.backup_path(0)).map_err(failed)?;
            fs::rename(&next_path, &path).map_err(failed)?;
            self.file = next;
            self.backups = (self.backups + 1).min(self.policy.max_backups);
        }
        self.size = 0;
        self.ends_in_newline = false;
        self.rotations += 1;
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

    /// Removes every backup, as virtlogd does when libvirt truncates a log.
    pub fn remove_backups(&mut self) -> Result<(), RotatorError> {
        for k in 0..self.policy.max_backups.max(self.backups) {
            match std::fs::remove_file(self.backup_path(k)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(RotatorError::Rotate {
                        path: self.backup_path(k),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        self.backups = 0;
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
    pub fn read(&self, from: Option<Pos>, max: usize) -> Result<Chunk, RotatorError> {
        read_files(&self.files()?, from, max)
    }

    /// The last `n` bytes kept (fewer if the log holds less), across
    /// backups.
    pub fn tail(&self, n: usize) -> Result<Vec<u8>, RotatorError> {
        let files = self.files()?;
        let mut skip = files
            .iter()
            .map(|f| f.len)
            .sum::<u64>()
            .saturating_sub(n as u64);
        for (i, f) in files.iter().enumerate() {
            if skip < f.len {
                let from = Pos {
                    inode: f.inode,
                    offset: skip,
                };
                let mut out = Vec::with_capacity(n);
                let mut pos = Some(from);
                // `read` crosses into newer files by itself.
                while out.len() < n {
                    let chunk = read_files(&files[i..], pos, n - out.len())?;
                    out.extend_from_slice(&chunk.data);
                    if chunk.eof || chunk.data.is_empty() {
                        break;
                    }
                    pos = Some(chunk.next);
                }
                return Ok(out);
            }
            skip -= f.len;
        }
        Ok(Vec::new())
    }

    /// The end of the current file.
    pub fn end(&self) -> Result<Pos, RotatorError> {
        let meta = self.file.metadata().map_err(|source| RotatorError::Read {
            path: self.path(),
            source,
        })?;
        Ok(Pos {
            inode: meta.ino(),
            offset: self.size,
        })
    }

    /// The backups, oldest first, then the current file.
    fn files(&self) -> Result<Vec<LogFile>, RotatorError> {
        let mut files = Vec::with_capacity(self.backups as usize + 1);
        for k in (0..self.policy.max_backups).rev() {
            let path = self.backup_path(k);
            match File::open(&path) {
                Ok(file) => files.push(LogFile::new(file, path)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(RotatorError::Read { path, source }),
            }
        }
        // The writer's descriptor is write-only; under the caller's lock the
        // path names the same file.
        let path = self.path();
        match File::open(&path) {
            Ok(file) => files.push(LogFile::new(file, path)?),
            Err(source) => return Err(RotatorError::Read { path, source }),
        }
        Ok(files)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn backup_path(&self, k: u32) -> PathBuf {
        self.dir.join(format!("{}.log.{k}", self.name))
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

/// Reads up to `max` bytes forward from `from` in `files` (oldest first).
fn read_files(files: &[LogFile], from: Option<Pos>, max: usize) -> Result<Chunk, RotatorError> {
    let last = files.len() - 1;
    let (mut i, mut offset, skipped) = match from {
        None => (0, 0, false),
        Some(pos) => match files.iter().position(|f| f.inode == pos.inode) {
            Some(i) if pos.offset <= files[i].len => (i, pos.offset, false),
            // Truncated in place, or an inode we never had.
            _ => (0, 0, true),
        },
    };
    let mut data = Vec::with_capacity(max.min(64 * 1024));
    loop {
        let f = &files[i];
        let want = (max - data.len()).min((f.len - offset) as usize);
        if want > 0 {
            let start = data.len();
            data.resize(start + want, 0);
            let got = read_at(&f.file, &mut data[start..], offset).map_err(|source| {
                RotatorError::Read {
                    path: f.path.clone(),
                    source,
                }
            })?;
            data.truncate(start + got);
            offset += got as u64;
        }
        // A finished backup hands over to the next file at once, so the
        // returned position does not die with the backup.
        if offset >= f.len && i < last {
            i += 1;
            offset = 0;
            continue;
        }
        break;
    }
    Ok(Chunk {
        data,
        next: Pos {
            inode: files[i].inode,
            offset,
        },
        eof: i == last && offset >= files[last].len,
        skipped,
    })
}

/// One file of a log, opened for reading.
struct LogFile {
    file: File,
    path: PathBuf,
    inode: u64,
    len: u64,
}

impl LogFile {
    fn new(file: File, path: PathBuf) -> Result<Self, RotatorError> {
        let meta = file.metadata().map_err(|source| RotatorError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path,
            inode: meta.ino(),
            len: meta.len(),
        })
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

fn last_byte(path: &Path, size: u64) -> Option<u8> {
    let mut byte = [0];
    let file = File::open(path).ok()?;
    (size > 0 && file.read_at(&mut byte, size - 1).ok()? == 1).then_some(byte[0])
}

fn open_append(path: &Path, truncate: bool) -> Result<File, RotatorError> {
    let mut options = OpenOptions::new();
    // Logs hold whatever the guest printed, which may be secret.
    options.append(true).create(true).mode(0o600);
    if truncate {
        // std refuses `append` with `truncate`; O_APPEND as a raw flag is fine.
        options
            .append(false)
            .write(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_APPEND.bits());
    }
    options.open(path).map_err(|source| RotatorError::Open {
        path: path.to_owned(),
        source,
    })
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> LogName {
        LogName::try_from("vm").unwrap()
    }

    fn open(dir: &Path, max_size: u64, max_backups: u32) -> RotatingFile {
        RotatingFile::open(
            dir,
            &name(),
            Policy {
                max_size,
                max_backups,
            },
        )
        .unwrap()
    }

    /// Every byte kept, oldest first, read straight from disk.
    fn kept(dir: &Path, max_backups: u32) -> Vec<u8> {
        let mut all = Vec::new();
        for k in (0..max_backups).rev() {
            if let Ok(b) = fs::read(dir.join(format!("vm.log.{k}"))) {
                all.extend(b);
            }
        }
        all.extend(fs::read(dir.join("vm.log")).unwrap());
        all
    }

    fn read_all(log: &RotatingFile, step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = None;
        loop {
            let c = log.read(pos, step).unwrap();
            assert!(!c.skipped);
            out.extend(&c.data);
            pos = Some(c.next);
            if c.eof {
                return out;
            }
        }
    }

    #[test]
    fn cuts_after_the_last_newline_near_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 100, 2);
        let line = format!("{}\n", "a".repeat(59)); // 60 bytes
        log.write(line.as_bytes()).unwrap();
        log.write(line.as_bytes()).unwrap();
        // The second line does not fit. The last newline before the cap is
        // the file's own last byte, so the whole line moves on.
        assert_eq!(
            fs::read(dir.path().join("vm.log.0")).unwrap(),
            line.as_bytes()
        );
        assert_eq!(
            fs::read(dir.path().join("vm.log")).unwrap(),
            line.as_bytes()
        );
        assert_eq!(log.rotations(), 1);
    }

    #[test]
    fn no_backups_truncates_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096, 0);
        let inode = log.end().unwrap().inode;
        log.write(&[b'x'; 5000]).unwrap();
        assert_eq!(log.size(), 5000 - 4096);
        assert_eq!(log.end().unwrap().inode, inode);
        assert!(!dir.path().join("vm.log.0").exists());
    }

    #[test]
    fn a_file_over_its_cap_is_rotated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vm.log"), vec![b'x'; 10_000]).unwrap();
        fs::write(dir.path().join("vm.log.7"), b"stale").unwrap();
        let log = open(dir.path(), 4096, 2);
        assert_eq!(log.size(), 0);
        assert_eq!(
            fs::metadata(dir.path().join("vm.log.0")).unwrap().len(),
            10_000
        );
        assert!(!dir.path().join("vm.log.7").exists());
        assert_eq!(log.backups(), 1);
    }

    #[test]
    fn positions_survive_rotation_and_report_loss() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096, 1);
        log.write(b"first\n").unwrap();
        let pos = log.end().unwrap();
        log.write(b"second\n").unwrap();
        log.rotate().unwrap();
        log.write(b"third\n").unwrap();
        let c = log.read(Some(pos), 1000).unwrap();
        assert_eq!(c.data, b"second\nthird\n");
        assert!(c.eof && !c.skipped);
        // Two more rotations push that file out of the only backup slot.
        log.rotate().unwrap();
        log.rotate().unwrap();
        let c = log.read(Some(pos), 1000).unwrap();
        assert!(c.skipped);
        log.truncate().unwrap();
        let c = log
            .read(
                Some(Pos {
                    inode: log.end().unwrap().inode,
                    offset: 99,
                }),
                10,
            )
            .unwrap();
        assert!(c.skipped);
    }

    #[test]
    fn tail_reads_across_backups() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096, 2);
        log.write(b"abc").unwrap();
        log.rotate().unwrap();
        log.write(b"defg").unwrap();
        assert_eq!(log.tail(5).unwrap(), b"cdefg");
        assert_eq!(log.tail(100).unwrap(), b"abcdefg");
        assert_eq!(log.tail(0).unwrap(), b"");
        log.rotate().unwrap();
        assert_eq!(log.tail(2).unwrap(), b"fg");
    }

    #[test]
    fn write_errors_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 4096, 1);
        // A read-only descriptor makes every write fail, as a full disk would.
        log.file = File::open(log.path()).unwrap();
        assert!(log.write(b"lost").is_err());
        assert_eq!(log.bytes_dropped(), 4);
        assert_eq!(log.bytes_written(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random writes and rotations against every invariant.
        #[test]
        fn invariants_hold(
            max_size in 4096u64..6000,
            max_backups in 0u32..4,
            ops in prop::collection::vec(
                prop_oneof![
                    8 => (1usize..9000, any::<u8>()).prop_map(Some),
                    1 => Just(None),
                ],
                1..40,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut log = open(dir.path(), max_size, max_backups);
            let mut written = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Some((len, seed)) => {
                        // Newlines at varying places exercise the line cut.
                        let data: Vec<u8> = (0..len)
                            .map(|j| if (j + seed as usize).is_multiple_of(37) { b'\n' } else { b'a' + (i % 26) as u8 })
                            .collect();
                        log.write(&data).unwrap();
                        written.extend(data);
                    }
                    None => log.rotate().unwrap(),
                }
                let current = fs::metadata(dir.path().join("vm.log")).unwrap().len();
                prop_assert!(current <= max_size);
                prop_assert_eq!(current, log.size());
                let mut disk = current;
                let mut backups = 0;
                for entry in fs::read_dir(dir.path()).unwrap() {
                    let entry = entry.unwrap();
                    let file = entry.file_name().into_string().unwrap();
                    if let Some(k) = file.strip_prefix("vm.log.") {
                        let k: u32 = k.parse().unwrap();
                        prop_assert!(k < max_backups);
                        let len = entry.metadata().unwrap().len();
                        prop_assert!(len <= max_size);
                        disk += len;
                        backups += 1;
                    } else {
                        prop_assert_eq!(file, "vm.log");
                    }
                }
                prop_assert_eq!(backups, log.backups());
                prop_assert!(disk <= max_size * (max_backups as u64 + 1));
                let kept = kept(dir.path(), max_backups);
                prop_assert!(written.ends_with(&kept));
                prop_assert_eq!(read_all(&log, 1000), kept);
            }
            prop_assert_eq!(log.bytes_written(), written.len() as u64);
        }
    }
}
