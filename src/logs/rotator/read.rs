//! Positions in a log's byte stream and reading across its files.
//!
//! A position names a file by inode, so it survives that file being renamed
//! to a backup. Backups are opened through `LogDir`'s checked open only;
//! the current file is read through the writer's own descriptor, so nothing
//! planted at its name after it was opened is ever read. A backup name that
//! holds something not ours is skipped: its content is not ours to return,
//! and our backup that was there is gone anyway.

use std::{
    fs::File,
    io,
    os::unix::fs::{FileExt, MetadataExt},
    path::PathBuf,
};

use super::error::{RotatorError, Skipped};
use crate::logs::{
    logdir::{Access, BaseName, LogDir, OpenError},
    policy::Policy,
};

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

/// One file of a log, opened for reading.
pub(super) struct LogFile<'a> {
    file: Handle<'a>,
    path: PathBuf,
    inode: u64,
    len: u64,
}

/// A backup is opened for the read; the current file is borrowed.
enum Handle<'a> {
    Backup(File),
    Current(&'a File),
}

impl Handle<'_> {
    fn file(&self) -> &File {
        match self {
            Self::Backup(f) => f,
            Self::Current(f) => f,
        }
    }
}

impl<'a> LogFile<'a> {
    fn new(file: Handle<'a>, path: PathBuf) -> Result<Self, RotatorError> {
        let meta = file
            .file()
            .metadata()
            .map_err(|source| RotatorError::Read {
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

/// The backups, oldest first, then the current file, and what was skipped.
pub(super) fn files<'a>(
    dir: &LogDir,
    base: &BaseName,
    current: &'a File,
    policy: Policy,
) -> Result<(Vec<LogFile<'a>>, Vec<Skipped>), RotatorError> {
    let mut files = Vec::with_capacity(policy.max_backups as usize + 1);
    let mut skipped = Vec::new();
    for k in (0..policy.max_backups).rev() {
        let name = base.backup(k);
        let path = dir.display(&name);
        match dir.open_file(&name, Access::Read) {
            Ok(file) => files.push(LogFile::new(Handle::Backup(file), path)?),
            Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(OpenError::Found(found)) => skipped.push(Skipped { path, found }),
            Err(OpenError::Io(source)) => return Err(RotatorError::Read { path, source }),
        }
    }
    files.push(LogFile::new(
        Handle::Current(current),
        dir.display(base.as_str()),
    )?);
    Ok((files, skipped))
}

/// Reads up to `max` bytes forward from `from` in `files` (oldest first,
/// the current file last).
pub(super) fn read_files(
    files: &[LogFile],
    from: Option<Pos>,
    max: usize,
) -> Result<Chunk, RotatorError> {
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
            let got = read_at(f.file.file(), &mut data[start..], offset).map_err(|source| {
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

/// The last `n` bytes of `files`, fewer if they hold less.
pub(super) fn tail(files: &[LogFile], n: usize) -> Result<Vec<u8>, RotatorError> {
    let mut skip = files
        .iter()
        .map(|f| f.len)
        .sum::<u64>()
        .saturating_sub(n as u64);
    for (i, f) in files.iter().enumerate() {
        if skip < f.len {
            let mut out = Vec::with_capacity(n);
            let mut pos = Some(Pos {
                inode: f.inode,
                offset: skip,
            });
            // `read_files` crosses into newer files by itself.
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
