//! Where each exported log's journal export stands, in a memfd stored as
//! `journal/cursors`, written in place after every line sent: a crash (a
//! `kill -9` at any instant) leaves the successor the exact position, so
//! it neither repeats nor skips lines, except one line whose send and
//! write a kill falls between.
//!
//! One 256-byte record per exported log, never across a page (a write
//! of one record cannot be torn by a kill): the position (inode, offset)
//! of the first byte not yet sent, the lines sent and suppressed so far,
//! the lines of the open suppression episode, and the log's name. A free
//! record has an empty name. The saved state holds the same figures as of
//! its last save; the record wins, being never older.

use std::{
    collections::BTreeMap,
    fs::File,
    os::{fd::AsFd, unix::fs::FileExt},
    sync::{Arc, Mutex},
};

use tracing::warn;

use crate::{fdstore::FdStore, lock};

/// The descriptor's name in the store.
pub const FD_NAME: &str = "journal/cursors";
const RECORD: usize = 256;
const NAME_AT: usize = 42;
const MAX_NAME: usize = RECORD - NAME_AT;

/// One log's export position and figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    pub inode: u64,
    pub offset: u64,
    pub sent: u64,
    pub suppressed: u64,
    pub episode: u64,
}

impl Record {
    fn encode(&self, name: &str) -> [u8; RECORD] {
        let mut b = [0u8; RECORD];
        for (i, v) in [
            self.inode,
            self.offset,
            self.sent,
            self.suppressed,
            self.episode,
        ]
        .iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let name = &name.as_bytes()[..name.len().min(MAX_NAME)];
        b[40..42].copy_from_slice(&(name.len() as u16).to_le_bytes());
        b[NAME_AT..NAME_AT + name.len()].copy_from_slice(name);
        b
    }

    fn decode(b: &[u8]) -> Option<(String, Self)> {
        let n = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or_default());
        let len = u16::from_le_bytes([b[40], b[41]]) as usize;
        if len == 0 || len > MAX_NAME {
            return None;
        }
        let name = std::str::from_utf8(&b[NAME_AT..NAME_AT + len])
            .ok()?
            .to_owned();
        let r = Self {
            inode: n(0),
            offset: n(1),
            sent: n(2),
            suppressed: n(3),
            episode: n(4),
        };
        Some((name, r))
    }
}

/// The records, by index; the memfd is made on first use.
#[derive(Debug)]
pub struct Cursors {
    store: Arc<FdStore>,
    table: Mutex<Option<Table>>,
}

#[derive(Debug)]
struct Table {
    file: File,
    /// Each record's name; `None` is free.
    names: Vec<Option<String>>,
    /// Records found at start, until their log claims them.
    found: BTreeMap<String, (usize, Record)>,
}

impl Cursors {
    pub fn new(store: Arc<FdStore>) -> Self {
        Self {
            store,
            table: Mutex::new(None),
        }
    }

    /// The table, read from the store (a previous guestlogd's) or made.
    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> Option<T> {
        let mut table = lock(&self.table);
        if table.is_none() {
            *table = self.open();
        }
        table.as_mut().map(f)
    }

    fn open(&self) -> Option<Table> {
        // Lent to the table, which holds it as long as the process lives:
        // the one descriptor serves both.
        if let Some(fd) = self.store.lend(FD_NAME) {
            let file = File::from(fd);
            let len = file.metadata().map_or(0, |m| m.len()) as usize;
            let mut names = vec![None; len / RECORD];
            let mut found = BTreeMap::new();
            let mut buf = [0u8; RECORD];
            for (i, slot) in names.iter_mut().enumerate() {
                if file.read_exact_at(&mut buf, (i * RECORD) as u64).is_ok()
                    && let Some((name, r)) = Record::decode(&buf)
                {
                    *slot = Some(name.clone());
                    found.insert(name, (i, r));
                }
            }
            return Some(Table { file, names, found });
        }
        use nix::sys::memfd::{MFdFlags, memfd_create};
        match memfd_create("guestlogd-journal", MFdFlags::MFD_CLOEXEC) {
            Ok(fd) => {
                self.store.add(FD_NAME.to_owned(), fd.as_fd(), false);
                Some(Table {
                    file: File::from(fd),
                    names: Vec::new(),
                    found: BTreeMap::new(),
                })
            }
            Err(e) => {
                warn!(error = %e, "cannot keep journal positions for restarts");
                None
            }
        }
    }

    /// A record for `name`: the one a previous guestlogd left, with its
    /// figures, or a free one.
    pub fn claim(&self, name: &str) -> Option<(usize, Option<Record>)> {
        self.with(|t| {
            if let Some((i, r)) = t.found.remove(name) {
                return (i, Some(r));
            }
            let i = match t.names.iter().position(|n| n.as_deref() == Some(name)) {
                Some(i) => i,
                None => match t.names.iter().position(Option::is_none) {
                    Some(i) => i,
                    None => {
                        t.names.push(None);
                        t.names.len() - 1
                    }
                },
            };
            t.names[i] = Some(name.to_owned());
            (i, None)
        })
    }

    /// Writes a record in place: one `pwrite` within one page.
    pub fn write(&self, index: usize, name: &str, r: &Record) {
        let bytes = r.encode(name);
        self.with(|t| {
            if let Err(e) = t.file.write_all_at(&bytes, (index * RECORD) as u64) {
                crate::limited!(warn, error = %e, "cannot write a journal position");
            }
        });
    }

    /// Frees a record whose log is gone.
    pub fn free(&self, index: usize) {
        self.with_existing(|t| {
            if let Some(slot) = t.names.get_mut(index) {
                *slot = None;
                let _ = t.file.write_all_at(&[0u8; RECORD], (index * RECORD) as u64);
            }
        });
    }

    /// Frees what a previous guestlogd left for logs this one did not
    /// take over.
    pub fn prune(&self) {
        self.with_existing(|t| {
            for (_, (i, _)) in std::mem::take(&mut t.found) {
                t.names[i] = None;
                let _ = t.file.write_all_at(&[0u8; RECORD], (i * RECORD) as u64);
            }
        });
    }

    /// `f` on the table if there is one (here or in the store); a table
    /// left with no record in use is dropped, its memfd with it, so a
    /// daemon whose logs no longer export holds nothing for it.
    fn with_existing(&self, f: impl FnOnce(&mut Table)) {
        let mut table = lock(&self.table);
        if table.is_none() && self.store.contains(FD_NAME) {
            *table = self.open();
        }
        let Some(t) = table.as_mut() else { return };
        f(t);
        if t.names.iter().all(Option::is_none) && t.found.is_empty() {
            // Out of the store before the memfd closes: the store names
            // the table's descriptor until then (`fdstore`'s invariant).
            self.store.remove(FD_NAME);
            *table = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_into_a_new_table_and_are_reused() {
        let store = Arc::new(FdStore::new(false));
        let c = Cursors::new(store.clone());
        let (a, none) = c.claim("vm1").unwrap();
        assert!(none.is_none());
        let (b, _) = c.claim("/var/log/libvirt/qemu/vm2.log").unwrap();
        let r = Record {
            inode: 7,
            offset: 4096,
            sent: 3,
            suppressed: 2,
            episode: 1,
        };
        c.write(b, "/var/log/libvirt/qemu/vm2.log", &r);
        c.write(a, "vm1", &Record::default());
        // The successor reads the same memfd, handed over.
        let handed = Arc::new(FdStore::new(false));
        for (name, fd) in store.take_all() {
            handed.adopt(name, fd);
        }
        let next = Cursors::new(handed.clone());
        assert_eq!(
            next.claim("/var/log/libvirt/qemu/vm2.log").unwrap(),
            (b, Some(r))
        );
        next.prune();
        let (again, found) = next.claim("vm3").unwrap();
        assert_eq!((again, found), (a, None), "vm1's record was freed");
        // Once no record is in use, the memfd goes.
        next.free(again);
        assert!(handed.contains(FD_NAME), "vm2's record is in use");
        next.free(b);
        assert!(!handed.contains(FD_NAME), "an empty table kept its memfd");
    }

    #[test]
    fn a_takeover_without_exports_stores_nothing() {
        let store = Arc::new(FdStore::new(false));
        Cursors::new(store.clone()).prune();
        assert!(!store.contains(FD_NAME));
        assert_eq!(store.len(), 0);
    }
}
