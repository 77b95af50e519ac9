//! Moving a pipe's bytes into the current file without copying them
//! through user space (`splice(2)`), for a pipe whose bytes no one else
//! needs there.
//!
//! Invariants: the same as the rotator's. A splice never reaches the last
//! `LINE_WINDOW` bytes before the cap: there the caller reads and writes
//! (`RotatingFile::write`), so the cut at a line end is exactly the one a
//! read would have made. Bytes a splice does not take stay in the pipe.

use std::os::fd::{AsFd, BorrowedFd};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
};

use super::{LINE_WINDOW, RotatingFile, RotatorError, Spliced, last_byte};

impl RotatingFile {
    /// Moves up to `max` bytes from `pipe` (non-blocking) to the end of the
    /// current file, stopping `LINE_WINDOW` short of the cap. On error
    /// nothing was moved and the bytes are still in the pipe.
    pub fn splice_from(
        &mut self,
        pipe: BorrowedFd<'_>,
        max: usize,
    ) -> Result<Spliced, RotatorError> {
        let room = self.policy.max_size.saturating_sub(self.size) as usize;
        if room <= LINE_WINDOW {
            return Ok(Spliced::NearCap);
        }
        let n = max.min(room - LINE_WINDOW);
        let failed = |e: Errno| RotatorError::Write {
            path: self.path(),
            source: e.into(),
        };
        // The file is opened for appending, which splice(2) refuses; cleared
        // for the call, which writes at the file's end explicitly (`size`,
        // which the rotator keeps equal to the file's length).
        let flags = fcntl(self.file.as_fd(), FcntlArg::F_GETFL).map_err(failed)?;
        let append = OFlag::from_bits_truncate(flags);
        let plain = append & !OFlag::O_APPEND;
        fcntl(self.file.as_fd(), FcntlArg::F_SETFL(plain)).map_err(failed)?;
        let mut at = self.size as i64;
        let moved = loop {
            match splice(
                pipe,
                None,
                self.file.as_fd(),
                Some(&mut at),
                n,
                SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        // Back to appending, for `write`: if this fails the file is still
        // ours and written at explicit offsets by splices, and `write`
        // would write at the descriptor's offset; report it.
        fcntl(self.file.as_fd(), FcntlArg::F_SETFL(append)).map_err(failed)?;
        match moved {
            Ok(0) => Ok(Spliced::Eof),
            Ok(k) => {
                self.size += k as u64;
                self.bytes_written += k as u64;
                self.ends_in_newline = last_byte(&self.file, self.size) == Some(b'\n');
                Ok(Spliced::Moved(k))
            }
            Err(Errno::EAGAIN) => Ok(Spliced::Empty),
            Err(e) => Err(failed(e)),
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
}
