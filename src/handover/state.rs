//! `State`: what the next guestlogd needs to take over, beyond the stored
//! descriptors themselves: each log's policy and counters, each console's
//! options, and client output that was queued but not yet sent.
//!
//! It travels in a memfd stored as `state/SEQ`. Every save writes a new
//! memfd and only then removes the previous one, so a crash at any point
//! leaves at least one whole state; on adoption the highest SEQ wins.
//! Versioned: a newer guestlogd reads every older version.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Seek, Write},
    os::fd::OwnedFd,
};

use serde::{Deserialize, Serialize};

use super::virtlogd::origins::Origin;
use crate::{
    consoles::{
        console::{Domain, Pending},
        writers::{Who, Writers},
    },
    logs::{
        gap::Gaps,
        journal::{cursors::Record, export::Settings},
        migration::{HopState, MigrationState},
        policy::Policy,
        queue::SlowPolicy,
    },
};

/// The version this build writes.
pub const VERSION: u32 = 1;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub version: u32,
    /// How many times a daemon took over from a previous one.
    pub adoptions: u64,
    pub logs: Vec<LogState>,
    pub consoles: Vec<ConsoleState>,
    /// The stored descriptors this state describes, by name.
    pub fds: Vec<String>,
    /// Saved at a planned stop, with the clients' unsent output; a state
    /// without it is a crash's, and that output is gone.
    pub planned: bool,
    /// Daemon-wide counters that must stay monotonic across takeovers
    /// (the fronts' connection counters), by key.
    #[serde(default)]
    pub totals: BTreeMap<String, u64>,
    /// The policies of logs forgotten under `max-logs`, so that one that
    /// comes back gets its own.
    pub forgotten: Vec<ForgottenLog>,
    /// The domains arriving and leaving by live migration.
    pub migrations: MigrationState,
    /// The logs libvirt opened, by name, with the driver and domain of
    /// their OpenLogFile: what a hand-back to virtlogd writes.
    #[serde(default)]
    pub libvirt: BTreeMap<String, Origin>,
}

/// A forgotten log's policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgottenLog {
    pub name: String,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogState {
    pub name: String,
    pub policy: Policy,
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub rotations: u64,
    #[serde(default)]
    pub followers_dropped: u64,
    /// The current file's size and the backups, as last seen: a log's
    /// file opens only when it is used, and ListLogs shows these until.
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub backups: u64,
    /// A console's boot log.
    #[serde(default)]
    pub boot: bool,
    #[serde(default)]
    pub bytes_suppressed: u64,
    #[serde(default)]
    pub bytes_evicted: u64,
    /// Gaps not yet marked in the log.
    #[serde(default)]
    pub gaps: Gaps,
    /// The journal export, if the log has one.
    #[serde(default)]
    pub journal: Option<JournalState>,
    /// Its domain's migrations.
    #[serde(default, skip_serializing_if = "HopState::is_empty")]
    pub hop: HopState,
}

/// A log's journal export: what its entries say, and where it stood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalState {
    pub settings: Settings,
    /// The first byte not yet sent (inode 0: none yet).
    pub inode: u64,
    pub offset: u64,
    pub sent: u64,
    pub suppressed: u64,
    /// Lines of the open suppression episode, still to be reported.
    pub episode: u64,
    /// QEMU's pid, if known.
    #[serde(default)]
    pub object_pid: u64,
}

impl JournalState {
    pub fn record(&self) -> Record {
        Record {
            inode: self.inode,
            offset: self.offset,
            sent: self.sent,
            suppressed: self.suppressed,
            episode: self.episode,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleState {
    pub name: String,
    pub log: bool,
    pub replay: usize,
    pub slow: SlowPolicy,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    pub viewers: bool,
    #[serde(default)]
    pub bytes_from_guest: u64,
    #[serde(default)]
    pub bytes_to_guest: u64,
    #[serde(default)]
    pub bytes_dropped_for_clients: u64,
    /// Output queued for a client (by descriptor name) at a planned stop.
    #[serde(default)]
    pub pending: BTreeMap<String, Pending>,
    #[serde(default)]
    pub writers: Writers,
    /// With one writer: the writer's descriptor name.
    #[serde(default)]
    pub writer: Option<String>,
    /// Each client's credentials, by descriptor name.
    #[serde(default)]
    pub peers: BTreeMap<String, Who>,
    /// The boot log's size per guest connection; 0 for none.
    #[serde(default)]
    pub boot_bytes: u64,
    /// The domain the console belongs to.
    #[serde(default)]
    pub domain: Option<Domain>,
    /// The guest connection came by live migration: not a boot.
    #[serde(default)]
    pub boot_closed: bool,
}

/// Why a stored state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state")]
    Read(#[source] std::io::Error),
    #[error("cannot parse the state")]
    Parse(#[source] serde_json::Error),
    #[error("state version {0} is newer than this guestlogd ({VERSION})")]
    TooNew(u32),
    #[error("cannot write the state")]
    Write(#[source] std::io::Error),
}

impl State {
    /// Reads a state from a stored memfd.
    pub fn read(fd: OwnedFd) -> Result<Self, StateError> {
        let mut file = File::from(fd);
        file.rewind().map_err(StateError::Read)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(StateError::Read)?;
        Self::parse(&text)
    }

    pub fn parse(text: &[u8]) -> Result<Self, StateError> {
        let state: State = serde_json::from_slice(text).map_err(StateError::Parse)?;
        // Version 1 is the first; older layouts would be converted here.
        if state.version > VERSION {
            return Err(StateError::TooNew(state.version));
        }
        Ok(state)
    }

    /// Writes the state into a new memfd.
    pub fn to_memfd(&self) -> Result<OwnedFd, StateError> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create("guestlogd-state", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| StateError::Write(e.into()))?;
        let mut file = File::from(fd);
        let text = serde_json::to_vec(self).map_err(StateError::Parse)?;
        file.write_all(&text).map_err(StateError::Write)?;
        Ok(OwnedFd::from(file))
    }
}

/// The name a state is stored under.
pub fn fd_name(seq: u64) -> String {
    format!("state/{seq}")
}

/// The sequence number of a stored state's name.
pub fn seq(name: &str) -> Option<u64> {
    name.strip_prefix("state/")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_memfd() {
        let state = State {
            version: VERSION,
            adoptions: 3,
            logs: vec![LogState {
                name: "vm".into(),
                policy: Policy::default(),
                bytes_written: 10,
                bytes_dropped: 1,
                rotations: 2,
                size: 0,
                backups: 0,
                followers_dropped: 0,
                boot: false,
                bytes_suppressed: 0,
                bytes_evicted: 0,
                gaps: Gaps::default(),
                journal: None,
                hop: HopState {
                    arrival: Some("vm".into()),
                    ..HopState::default()
                },
            }],
            consoles: vec![],
            fds: vec!["pipe/vm/1".into()],
            planned: true,
            forgotten: vec![ForgottenLog {
                name: "old".into(),
                policy: Policy::default(),
            }],
            totals: BTreeMap::from([("varlink/accepted".into(), 4)]),
            migrations: MigrationState::default(),
            libvirt: BTreeMap::from([(
                "/var/log/libvirt/qemu/vm.log".into(),
                Origin {
                    driver: "QEMU".into(),
                    domain: "vm".into(),
                    uuid: "00010203-0405-0607-0809-0a0b0c0d0e0f".into(),
                },
            )]),
        };
        assert_eq!(State::read(state.to_memfd().unwrap()).unwrap(), state);
        assert_eq!(seq(&fd_name(42)), Some(42));
    }

    #[test]
    fn refuses_a_newer_version() {
        assert!(matches!(
            State::parse(br#"{"version": 99}"#),
            Err(StateError::TooNew(99))
        ));
    }
}
