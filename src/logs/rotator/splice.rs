//! Moving a pipe's bytes into the current file without copying them
//! through user space (`splice(2)`), for a pipe whose bytes no one else
//! needs there.
//!
//! The bytes go through a pipe of our own (`Stage`): a splice into a file
//! holds its source pipe's lock for as long as the file system takes to
//! write, and on a disk that hangs the writer of the log's pipe (QEMU)
//! would then hang in the kernel, unkillably, on its next write or even
//! its close. The first move, between two pipes, passes page references
//! and never waits for a disk; only the second, from our own pipe, does.
//!
//! Invariants: the same as the rotator's. A splice never reaches the last
//! `LINE_WINDOW` bytes before the cap: there the caller reads and writes
//! (`RotatingFile::write`), so the cut at a line end is exactly the one a
//! read would have made. Bytes a splice does not take stay in the pipe;
//! bytes that left it and the file refused come back in `Refused`.

use std::{
    io::Read,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};

use super::{LINE_WINDOW, Refused, RotatingFile, RotatorError, Spliced, last_byte};

/// What our own pipe is asked to hold: what a log's pipe holds.
const STAGE_SIZE: i32 = 1024 * 1024;

/// Our own pipe, for one splice: made and closed per call, so that nothing
/// is left in it between calls and an idle thread holds no descriptor.
struct Stage {
    read: OwnedFd,
    write: OwnedFd,
}

impl Stage {
    fn new() -> nix::Result<Self> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
        // Best effort: a smaller pipe only means smaller moves.
        let _ = fcntl(&write, FcntlArg::F_SETPIPE_SZ(STAGE_SIZE));
        Ok(Self { read, write })
    }

    /// What is left in it, `n` bytes, read out.
    fn drain(self, n: usize) -> Vec<u8> {
        let mut rest = Vec::with_capacity(n);
        drop(self.write);
        let _ = std::fs::File::from(self.read).read_to_end(&mut rest);
        rest
    }
}

/// `splice(2)`, again after EINTR.
fn splice_all(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    at: Option<&mut i64>,
    n: usize,
    flags: SpliceFFlags,
) -> nix::Result<usize> {
    let mut at = at;
    loop {
        match splice(from, None, to, at.as_deref_mut(), n, flags) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

impl RotatingFile {
    fn write_error(&self, e: Errno) -> RotatorError {
        RotatorError::Write {
            path: self.path(),
            source: e.into(),
        }
    }

    /// Moves up to `max` bytes from `pipe` (non-blocking) to the end of the
    /// current file, stopping `LINE_WINDOW` short of the cap. An error
    /// before any byte left the pipe comes back with nothing moved and no
    /// `rest`.
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>, max: usize) -> Result<Spliced, Refused> {
        let room = self.policy.max_size.saturating_sub(self.size) as usize;
        if room <= LINE_WINDOW {
            return Ok(Spliced::NearCap);
        }
        // A splice writes at an explicit offset, and `write` appends: while
        // another host appends to the same file, only `write` is safe.
        // (Left: another append between this check and the splice.)
        match nix::sys::stat::fstat(self.file.as_fd()) {
            Ok(st) if st.st_size as u64 == self.size => {}
            _ => return Ok(Spliced::ReadInstead),
        }
        let n = max.min(room - LINE_WINDOW);
        let stage = Stage::new().map_err(|e| self.write_error(e))?;
        // Page references move from the log's pipe to ours; nothing here
        // waits for a disk.
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        let k = match splice_all(pipe, stage.write.as_fd(), None, n, flags) {
            Ok(0) => return Ok(Spliced::Eof),
            Ok(k) => k,
            Err(Errno::EAGAIN) => return Ok(Spliced::Empty),
            Err(e) => return Err(self.write_error(e).into()),
        };
        // The file is opened for appending, which splice(2) refuses; cleared
        // for the call, which writes at the file's end explicitly (`size`,
        // which the rotator keeps equal to the file's length).
        let mode = fcntl(self.file.as_fd(), FcntlArg::F_GETFL)
            .map(OFlag::from_bits_truncate)
            .and_then(|append| {
                fcntl(
                    self.file.as_fd(),
                    FcntlArg::F_SETFL(append & !OFlag::O_APPEND),
                )
                .map(|_| append)
            });
        let append = match mode {
            Ok(append) => append,
            Err(e) => {
                let error = self.write_error(e);
                return Err(Refused {
                    error,
                    moved: 0,
                    rest: stage.drain(k),
                });
            }
        };
        let mut at = self.size as i64;
        let mut moved = 0;
        let written = loop {
            if moved == k {
                break Ok(());
            }
            let to = self.file.as_fd();
            match splice_all(
                stage.read.as_fd(),
                to,
                Some(&mut at),
                k - moved,
                SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Ok(0) => break Err(Errno::EIO),
                Ok(m) => moved += m,
                Err(e) => break Err(e),
            }
        };
        self.size += moved as u64;
        self.bytes_written += moved as u64;
        if moved > 0 {
            self.ends_in_newline = last_byte(&self.file, self.size) == Some(b'\n');
        }
        // Back to appending, for `write`: if this fails the file is still
        // ours and written at explicit offsets by splices, and `write`
        // would write at the descriptor's offset; report it.
        let restored = fcntl(self.file.as_fd(), FcntlArg::F_SETFL(append));
        match written.and(restored.map(|_| ())) {
            Ok(()) => Ok(Spliced::Moved(k)),
            Err(e) => Err(Refused {
                error: self.write_error(e),
                moved,
                rest: stage.drain(k - moved),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::fd::AsFd};

    use nix::{
        fcntl::{FcntlArg, OFlag, fcntl},
        unistd::pipe2,
    };

    use super::{super::tests::open, *};

    /// Splices what `data` holds (through a pipe, as a pipe task does),
    /// reading and writing near the cap, until every byte is in the log.
    fn feed(log: &mut RotatingFile, data: &[u8]) {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut w = std::fs::File::from(w);
        let mut buf = vec![0; 4096];
        for piece in data.chunks(3000) {
            w.write_all(piece).unwrap();
            loop {
                match log.splice_from(r.as_fd(), 1 << 20).unwrap() {
                    Spliced::Moved(_) => {}
                    Spliced::Empty => break,
                    Spliced::Eof => unreachable!("the writer is open"),
                    Spliced::ReadInstead => unreachable!("no one else writes the file"),
                    Spliced::NearCap => match nix::unistd::read(&r, &mut buf) {
                        Ok(n) => log.write(&buf[..n]).unwrap(),
                        Err(nix::errno::Errno::EAGAIN) => break,
                        Err(e) => panic!("{e}"),
                    },
                }
            }
        }
        drop(w);
        assert_eq!(log.splice_from(r.as_fd(), 1).unwrap(), Spliced::Eof);
    }

    #[test]
    fn spliced_lines_are_kept_whole_under_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 10_000, 3);
        let data: Vec<u8> = (0..2000)
            .flat_map(|i| format!("line {i:04} {}\n", "x".repeat(i % 50)).into_bytes())
            .collect();
        feed(&mut log, &data);
        // The same as `write` would have kept: the tail of everything, in
        // files no larger than the cap, each ending at a line end.
        let mut kept = Vec::new();
        for k in (0..3).rev() {
            let Ok(f) = std::fs::read(dir.path().join(format!("vm.log.{k}"))) else {
                continue;
            };
            assert!(f.len() <= 10_000 && f.ends_with(b"\n"), "backup {k}");
            kept.extend(f);
        }
        let current = std::fs::read(dir.path().join("vm.log")).unwrap();
        assert!(current.len() <= 10_000);
        kept.extend(&current);
        assert!(data.ends_with(&kept));
        assert_eq!(log.bytes_written(), data.len() as u64);
        assert_eq!(log.size(), current.len() as u64);
        assert!(log.ends_in_newline());
        // And the file is appended to again by `write`.
        log.write(b"after\n").unwrap();
        let current = std::fs::read(dir.path().join("vm.log")).unwrap();
        assert!(current.ends_with(b"x\nafter\n") || current == b"after\n");
    }

    #[test]
    fn a_file_another_writer_appends_to_is_appended_to_not_spliced() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), 1 << 20, 3);
        log.write(b"ours\n").unwrap();
        // Another host's append, to the same file.
        let mut other = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("vm.log"))
            .unwrap();
        other.write_all(b"theirs\n").unwrap();
        let (r, w) = pipe2(OFlag::O_CLOEXEC).unwrap();
        fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        std::fs::File::from(w).write_all(b"more\n").unwrap();
        assert_eq!(
            log.splice_from(r.as_fd(), 1 << 20).unwrap(),
            Spliced::ReadInstead
        );
        // Nothing left the pipe, and `write` appends after theirs.
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(&r, &mut buf).unwrap();
        log.write(&buf[..n]).unwrap();
        let text = std::fs::read(dir.path().join("vm.log")).unwrap();
        assert_eq!(text, b"ours\ntheirs\nmore\n");
    }
}
