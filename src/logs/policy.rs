//! `Policy`: how large a log grows and how many backups it keeps, and
//! `PolicyChange`, a call's change to it; both plain data, with no I/O.

/// The most backups a log may keep. Old backups up to this number are
/// removed when a policy shrinks, so it also bounds that clean-up.
pub const MAX_BACKUPS: u32 = 64;
/// The smallest cap: rotating more often than every 4 KiB helps nobody.
pub const MIN_SIZE: u64 = 4096;
/// The largest cap, 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;
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

/// A policy change asked for with a call; `None` keeps what the log has.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyChange {
    pub max_size: Option<u64>,
    pub max_backups: Option<u32>,
}

impl PolicyChange {
    /// `p` with this change.
    pub fn over(self, p: Policy) -> Policy {
        Policy {
            max_size: self.max_size.unwrap_or(p.max_size),
            max_backups: self.max_backups.unwrap_or(p.max_backups),
        }
    }

    pub fn is_some(self) -> bool {
        self.max_size.is_some() || self.max_backups.is_some()
    }
}

impl From<Policy> for PolicyChange {
    /// A change to exactly `p`.
    fn from(p: Policy) -> Self {
        Self {
            max_size: Some(p.max_size),
            max_backups: Some(p.max_backups),
        }
    }
}
