//! Who may type on a console: every client (`Writers::All`), or one writer
//! at a time (`Writers::One`), decided by `Arbiter`.
//!
//! With one writer, the first client to attach writes and later ones only
//! read. When the writer leaves, the client attached longest takes over;
//! a forced attach (`AttachConsole(force: true)`) takes over at once. The
//! arbiter is plain data over client ids, so the relay owns it and the
//! rules are tested here without sockets. Viewers never join it.

use serde::{Deserialize, Serialize};

/// CreateConsole's `writers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writers {
    #[default]
    All,
    One,
}

impl Writers {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::One => "one",
        }
    }
}

/// A client's process, by its socket credentials: kept for the audit
/// lines and the take-over notice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Who {
    pub uid: u32,
    /// 0 for a process outside guestlogd's PID namespace.
    pub pid: i32,
}

impl Who {
    /// The credentials of a connected unix socket's peer.
    pub fn of(stream: &tokio::net::UnixStream) -> Option<Self> {
        let c = stream.peer_cred().ok()?;
        Some(Self {
            uid: c.uid(),
            pid: c.pid().unwrap_or(0),
        })
    }
}

/// A change of writer, for the relay to announce.
#[derive(Debug, PartialEq, Eq)]
pub struct NewWriter {
    pub id: u64,
    /// The writer it replaces, told in-band that it reads only now.
    pub previous: Option<u64>,
    /// True for a forced take-over, false when a writer left.
    pub forced: bool,
}

/// The writer among a console's clients (viewers are never members).
#[derive(Debug)]
pub struct Arbiter {
    mode: Writers,
    /// Clients in the order they attached.
    members: Vec<u64>,
    writer: Option<u64>,
}

impl Arbiter {
    pub fn new(mode: Writers) -> Self {
        Self {
            mode,
            members: Vec::new(),
            writer: None,
        }
    }

    /// A client attaches. Returns whether it may write, and the change of
    /// writer it made, if any (a forced one, with a previous writer).
    pub fn join(&mut self, id: u64, force: bool) -> (bool, Option<NewWriter>) {
        if self.members.contains(&id) {
            return (self.may_write(id), None);
        }
        self.members.push(id);
        if self.mode == Writers::All {
            return (true, None);
        }
        match self.writer {
            None => {
                self.writer = Some(id);
                (true, None)
            }
            Some(previous) if force => {
                self.writer = Some(id);
                let change = NewWriter {
                    id,
                    previous: Some(previous),
                    forced: true,
                };
                (true, Some(change))
            }
            Some(_) => (false, None),
        }
    }

    /// Forgets every client `live` says has gone; if the writer went, the
    /// longest attached client left takes over.
    pub fn retain(&mut self, mut live: impl FnMut(u64) -> bool) -> Option<NewWriter> {
        self.members.retain(|id| live(*id));
        if self.mode == Writers::All {
            return None;
        }
        match self.writer {
            Some(w) if self.members.contains(&w) => None,
            _ => {
                self.writer = self.members.first().copied();
                self.writer.map(|id| NewWriter {
                    id,
                    previous: None,
                    forced: false,
                })
            }
        }
    }

    pub fn may_write(&self, id: u64) -> bool {
        self.mode == Writers::All || self.writer == Some(id)
    }

    /// The writer, with one writer at a time.
    pub fn writer(&self) -> Option<u64> {
        self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_all_writers_everyone_writes() {
        let mut a = Arbiter::new(Writers::All);
        assert_eq!(a.join(1, false), (true, None));
        assert_eq!(a.join(2, true), (true, None));
        assert!(a.may_write(1) && a.may_write(2));
        assert_eq!(a.retain(|id| id == 2), None);
        assert_eq!(a.writer(), None);
    }

    #[test]
    fn the_first_client_writes_and_later_ones_read_until_it_leaves() {
        let mut a = Arbiter::new(Writers::One);
        assert_eq!(a.join(1, false), (true, None));
        assert_eq!(a.join(2, false), (false, None));
        assert_eq!(a.join(3, false), (false, None));
        assert!(a.may_write(1) && !a.may_write(2) && !a.may_write(3));
        // A reader leaving changes nothing.
        assert_eq!(a.retain(|id| id != 3), None);
        // The writer leaving promotes the longest attached client.
        let change = a.retain(|id| id != 1);
        assert_eq!(
            change,
            Some(NewWriter {
                id: 2,
                previous: None,
                forced: false
            })
        );
        assert!(a.may_write(2));
        // The last one leaving leaves no writer; the next to come writes.
        assert_eq!(a.retain(|_| false), None);
        assert_eq!(a.writer(), None);
        assert_eq!(a.join(4, false), (true, None));
    }

    #[test]
    fn force_takes_over_and_the_previous_writer_reads() {
        let mut a = Arbiter::new(Writers::One);
        a.join(1, false);
        a.join(2, false);
        let (writes, change) = a.join(3, true);
        assert!(writes);
        assert_eq!(
            change,
            Some(NewWriter {
                id: 3,
                previous: Some(1),
                forced: true
            })
        );
        assert!(!a.may_write(1) && !a.may_write(2) && a.may_write(3));
        // A forced attach with no writer is just the writer.
        let mut b = Arbiter::new(Writers::One);
        assert_eq!(b.join(7, true), (true, None));
        // The forced writer leaving hands over to the oldest client.
        assert_eq!(a.retain(|id| id != 3).map(|c| c.id), Some(1));
    }

    #[test]
    fn joining_twice_is_one_membership() {
        let mut a = Arbiter::new(Writers::One);
        a.join(1, false);
        assert_eq!(a.join(1, true), (true, None));
        assert_eq!(a.retain(|id| id != 1), None);
        assert_eq!(a.writer(), None);
    }
}
