//! Live migration as a log daemon sees it: which libvirt domains are
//! arriving on this host, and which are leaving it.
//!
//! libvirt tells a log daemon nothing about migration in so many words,
//! and the two hosts learn of it in different ways:
//! - **Arriving** (the destination): guestlogd's hook calls
//!   ExpectMigration at `migrate begin`, the first thing libvirt does
//!   there, and EndMigration at `started begin` (or `release end`, when the
//!   migration failed). Everything that matters happens between the two,
//!   in libvirt's Prepare: it opens the domain's logs (OpenLogFile) and
//!   QEMU connects to its consoles. An arrival also ends by itself after
//!   `ARRIVAL_LIMIT`, so a domain that failed to arrive and is started
//!   afresh later still gets `append='off'`'s truncation.
//! - **Leaving** (the source): the first sign is libvirt's AppendLogFile of
//!   `initiating migration` into the domain's log; no hook runs until the
//!   domain's QEMU is gone. A later `shutting down, reason=…` other than
//!   `migrated` (the migration failed and the domain stopped here), or the
//!   domain opening its logs afresh, means it stays.
//!
//! This table only answers "is it arriving?" and "is it leaving?"; the
//! decision is taken where a log is opened or a guest connects, and holds
//! for that log or connection however late its first byte comes.
//!
//! Bounded: at most `MAX_DOMAINS` of each kind, the oldest going first;
//! a host never migrates that many domains at once.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::lock;

/// How long an arrival lasts without its EndMigration: libvirt's Prepare,
/// where every decision is taken, follows `migrate begin` within
/// milliseconds, even on a busy host.
pub const ARRIVAL_LIMIT: Duration = Duration::from_secs(120);

/// The most domains arriving, and separately leaving, at once.
pub const MAX_DOMAINS: usize = 4096;

/// The libvirt domain a log belongs to, as OpenLogFile names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDomain {
    pub uuid: String,
    pub name: String,
}

/// A log's part in its domain's migrations, kept across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopState {
    /// The domain whose output the log is, if a caller said.
    #[serde(default)]
    pub domain: Option<LogDomain>,
    /// The domain arrived by migration, and has not written yet: its name,
    /// for the line that goes before its first byte.
    #[serde(default)]
    pub arrival: Option<String>,
    /// The domain left by migration: the line that said so, which is how
    /// the log's followers are told why their stream ended.
    #[serde(default)]
    pub departed: Option<String>,
}

impl HopState {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One domain on the move: its UUID (libvirt's canonical form) and name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    pub uuid: String,
    pub name: String,
    /// When it was noted, in seconds since the Unix epoch: an arrival ends
    /// `ARRIVAL_LIMIT` after it, and the oldest entry goes first when full.
    pub since: u64,
}

/// The table, as the saved state keeps it across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationState {
    #[serde(default)]
    pub arriving: Vec<Hop>,
    #[serde(default)]
    pub leaving: Vec<Hop>,
}

/// The domains arriving and leaving now. See the module doc.
#[derive(Debug, Default)]
pub struct Migrations {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    arriving: BTreeMap<String, Hop>,
    leaving: BTreeMap<String, Hop>,
}

impl Migrations {
    /// The domain `uuid`, called `name`, is arriving by migration. A
    /// domain arriving again starts a new arrival; one that arrives is no
    /// longer leaving.
    pub fn expect(&self, uuid: &str, name: &str) {
        let mut inner = lock(&self.inner);
        inner.leaving.remove(uuid);
        insert(&mut inner.arriving, uuid, name);
    }

    /// The arrival of `uuid` is over (it started, or failed to).
    pub fn end(&self, uuid: &str) -> bool {
        lock(&self.inner).arriving.remove(uuid).is_some()
    }

    /// The name of domain `uuid` if it is arriving now.
    pub fn arriving(&self, uuid: &str) -> Option<String> {
        let mut inner = lock(&self.inner);
        let now = now();
        inner
            .arriving
            .retain(|_, h| now < h.since.saturating_add(ARRIVAL_LIMIT.as_secs()));
        inner.arriving.get(uuid).map(|h| h.name.clone())
    }

    /// The domain `uuid` began to migrate away.
    pub fn leave(&self, uuid: &str, name: &str) {
        insert(&mut lock(&self.inner).leaving, uuid, name);
    }

    /// The domain `uuid` stays on this host after all; true if it was
    /// leaving.
    pub fn stay(&self, uuid: &str) -> bool {
        lock(&self.inner).leaving.remove(uuid).is_some()
    }

    /// The name of domain `uuid` if it is leaving now.
    pub fn leaving(&self, uuid: &str) -> Option<String> {
        lock(&self.inner).leaving.get(uuid).map(|h| h.name.clone())
    }

    /// How many domains are arriving and leaving now.
    pub fn counts(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.arriving.len(), inner.leaving.len())
    }

    pub fn state(&self) -> MigrationState {
        let inner = lock(&self.inner);
        MigrationState {
            arriving: inner.arriving.values().cloned().collect(),
            leaving: inner.leaving.values().cloned().collect(),
        }
    }

    /// Takes the table a previous guestlogd saved, as bounded as ever.
    pub fn restore(&self, state: MigrationState) {
        let mut guard = lock(&self.inner);
        let inner = &mut *guard;
        for (map, hops) in [
            (&mut inner.arriving, state.arriving),
            (&mut inner.leaving, state.leaving),
        ] {
            for hop in hops {
                map.insert(hop.uuid.clone(), hop);
                evict_oldest(map);
            }
        }
    }
}

/// The line a log gets where its domain arrived (`true`) or left.
pub fn notice(domain: &str, arrived: bool) -> String {
    let way = if arrived { "in" } else { "out" };
    format!("[guestlogd: domain {domain} migrated {way}]")
}

fn insert(map: &mut BTreeMap<String, Hop>, uuid: &str, name: &str) {
    let hop = Hop {
        uuid: uuid.to_owned(),
        name: name.to_owned(),
        since: now(),
    };
    map.insert(hop.uuid.clone(), hop);
    evict_oldest(map);
}

fn evict_oldest(map: &mut BTreeMap<String, Hop>) {
    while map.len() > MAX_DOMAINS {
        let oldest = map.values().min_by_key(|h| h.since).map(|h| h.uuid.clone());
        match oldest {
            Some(uuid) => map.remove(&uuid),
            None => return,
        };
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6c62272e-07bb-0142-62b8-21756295c58d";
    const B: &str = "0000000a-0000-4000-8000-00000000000b";

    #[test]
    fn an_arrival_ends_at_its_end_or_after_the_limit() {
        let m = Migrations::default();
        assert_eq!(m.arriving(A), None);
        m.expect(A, "web");
        assert_eq!(m.arriving(A).as_deref(), Some("web"));
        assert_eq!(m.arriving(B), None);
        assert!(m.end(A));
        assert!(!m.end(A));
        assert_eq!(m.arriving(A), None);
        // One noted longer ago than the limit is over.
        let old = now() - ARRIVAL_LIMIT.as_secs() - 1;
        m.restore(MigrationState {
            arriving: vec![Hop {
                uuid: A.into(),
                name: "web".into(),
                since: old,
            }],
            leaving: vec![],
        });
        assert_eq!(m.arriving(A), None);
        assert_eq!(m.counts(), (0, 0));
    }

    #[test]
    fn a_domain_that_arrives_is_not_leaving() {
        let m = Migrations::default();
        m.leave(A, "web");
        assert_eq!(m.leaving(A).as_deref(), Some("web"));
        m.expect(A, "web");
        assert_eq!(m.leaving(A), None);
        m.leave(B, "db");
        assert!(m.stay(B));
        assert!(!m.stay(B));
        assert_eq!(m.leaving(B), None);
    }

    #[test]
    fn the_table_is_bounded_and_survives_a_restart() {
        let m = Migrations::default();
        for i in 0..MAX_DOMAINS + 10 {
            m.leave(&format!("{i:08x}-0000-4000-8000-000000000000"), "d");
        }
        assert_eq!(m.counts(), (0, MAX_DOMAINS));
        m.expect(A, "web");
        let saved = serde_json::to_string(&m.state()).unwrap();
        let again = Migrations::default();
        again.restore(serde_json::from_str(&saved).unwrap());
        assert_eq!(again.counts(), (1, MAX_DOMAINS));
        assert_eq!(again.arriving(A).as_deref(), Some("web"));
    }

    #[test]
    fn notices_name_the_domain_and_the_way() {
        assert_eq!(notice("web", true), "[guestlogd: domain web migrated in]");
        assert_eq!(notice("web", false), "[guestlogd: domain web migrated out]");
    }
}
