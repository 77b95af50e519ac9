//! `Gaps`: bytes meant for a log that did not reach it, waiting to be
//! written into the log as a marker line where they are missing.
//!
//! When the disk refuses a write, or a rate limit drops a pipe's bytes, the
//! next write to the log first puts one line per gap:
//! `[guestlogd: N bytes not logged (REASON)]`, on a line of its own (a
//! newline comes first when the file does not end at a line end), so that
//! someone reading the file sees where something is missing and how much.
//! N is the growth of the counter that counted them (`bytesDropped` for
//! the disk's refusals, `bytesSuppressed` for a rate limit), and
//! consecutive gaps of one reason merge into one line. Plain data: the log
//! (`log`) keeps it, since a gap may outlive the file being open.

use std::io;

use serde::{Deserialize, Serialize};

use super::rotator::RotatorError;

/// Why bytes did not reach a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    NoSpace,
    Io,
    RateLimit,
    /// Another error, by its text.
    Other(String),
}

impl Reason {
    /// The reason a failed file operation gives: its errno's.
    pub fn of(e: &RotatorError) -> Self {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = source {
            if let Some(code) = s
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
            {
                return Self::of_errno(code);
            }
            source = s.source();
        }
        Self::Other(first_lower(&e.to_string()))
    }

    pub fn of_errno(code: i32) -> Self {
        match code {
            nix::libc::ENOSPC => Self::NoSpace,
            nix::libc::EIO => Self::Io,
            code => Self::Other(first_lower(nix::errno::Errno::from_raw(code).desc())),
        }
    }

    /// The text in the marker line.
    pub fn text(&self) -> &str {
        match self {
            Self::NoSpace => "no space left on device",
            Self::Io => "input/output error",
            Self::RateLimit => "rate limit",
            Self::Other(text) => text,
        }
    }
}

fn first_lower(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The gaps not yet written into the log, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gaps(Vec<(Reason, u64)>);

impl Gaps {
    /// Counts `bytes` more missing for `reason`, merged into the last gap if
    /// it has the same reason.
    pub fn add(&mut self, reason: Reason, bytes: u64) {
        if bytes == 0 {
            return;
        }
        match self.0.last_mut() {
            Some((last, n)) if *last == reason => *n += bytes,
            _ => self.0.push((reason, bytes)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the newest gap has this reason (a drop episode goes on).
    pub fn last_is(&self, reason: &Reason) -> bool {
        self.0.last().is_some_and(|(r, _)| r == reason)
    }

    /// Each gap: its reason and how many bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&Reason, u64)> {
        self.0.iter().map(|(r, n)| (r, *n))
    }

    /// The marker lines, with a newline first unless the file ends at a
    /// line end.
    pub fn markers(&self, file_ends_a_line: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if !file_ends_a_line {
            out.push(b'\n');
        }
        for (reason, n) in &self.0 {
            out.extend_from_slice(
                format!("[guestlogd: {n} bytes not logged ({})]\n", reason.text()).as_bytes(),
            );
        }
        out
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_of_one_reason_merge_and_each_is_a_line_of_its_own() {
        let mut g = Gaps::default();
        g.add(Reason::NoSpace, 100);
        g.add(Reason::NoSpace, 20);
        g.add(Reason::RateLimit, 5);
        g.add(Reason::Io, 0);
        assert_eq!(
            String::from_utf8(g.markers(false)).unwrap(),
            "\n[guestlogd: 120 bytes not logged (no space left on device)]\n\
             [guestlogd: 5 bytes not logged (rate limit)]\n"
        );
        assert_eq!(
            String::from_utf8(g.markers(true)).unwrap(),
            "[guestlogd: 120 bytes not logged (no space left on device)]\n\
             [guestlogd: 5 bytes not logged (rate limit)]\n"
        );
    }

    #[test]
    fn reasons_come_from_the_errno() {
        assert_eq!(
            Reason::of_errno(nix::libc::ENOSPC).text(),
            "no space left on device"
        );
        assert_eq!(
            Reason::of_errno(nix::libc::EIO).text(),
            "input/output error"
        );
        assert_eq!(Reason::of_errno(nix::libc::EDQUOT).text(), "quota exceeded");
        let e = RotatorError::Write {
            path: "/x".into(),
            source: io::Error::from_raw_os_error(nix::libc::ENOSPC),
        };
        assert_eq!(Reason::of(&e), Reason::NoSpace);
    }
}
