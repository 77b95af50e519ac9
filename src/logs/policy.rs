//! `Policy`: how large a log grows, how many backups it keeps and how fast
//! it may be written, and `PolicyChange`, a call's change to it; both plain
//! data, with no I/O. The rotator uses the size and backups; the log's
//! rate limit (`rate`) the rest.

/// The most backups a log may keep. Old backups up to this number are
/// removed when a policy shrinks, so it also bounds that clean-up.
pub const MAX_BACKUPS: u32 = 64;
/// The smallest cap: rotating more often than every 4 KiB helps nobody.
pub const MIN_SIZE: u64 = 4096;
/// The largest cap, 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;
/// The largest rate or burst, 1 TiB (a second).
pub const MAX_RATE: u64 = 1 << 40;

/// How large a log grows, how many backups it keeps, and how fast it may
/// be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub max_size: u64,
    pub max_backups: u32,
    /// Bytes a second the log takes on average; 0 is no limit.
    #[serde(default)]
    pub max_rate: u64,
    /// Bytes the log takes at once beyond the rate.
    #[serde(default)]
    pub max_burst: u64,
}

impl Default for Policy {
    /// libvirt's virtlogd defaults, with no rate limit.
    fn default() -> Self {
        Self {
            max_size: 2 * 1024 * 1024,
            max_backups: 3,
            max_rate: 0,
            max_burst: 0,
        }
    }
}

impl Policy {
    /// The size and backups of `size`, the rate of `self`.
    pub fn with_size_of(self, size: Policy) -> Self {
        Self {
            max_size: size.max_size,
            max_backups: size.max_backups,
            ..self
        }
    }
}

/// A policy change asked for with a call; `None` keeps what the log has.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyChange {
    pub max_size: Option<u64>,
    pub max_backups: Option<u32>,
    pub max_rate: Option<u64>,
    pub max_burst: Option<u64>,
}

impl PolicyChange {
    /// `p` with this change.
    pub fn over(self, p: Policy) -> Policy {
        Policy {
            max_size: self.max_size.unwrap_or(p.max_size),
            max_backups: self.max_backups.unwrap_or(p.max_backups),
            max_rate: self.max_rate.unwrap_or(p.max_rate),
            max_burst: self.max_burst.unwrap_or(p.max_burst),
        }
    }

    pub fn is_some(self) -> bool {
        self.changes_size() || self.max_rate.is_some() || self.max_burst.is_some()
    }

    /// Whether it changes the size or the backups: only such a change
    /// removes backups.
    pub fn changes_size(self) -> bool {
        self.max_size.is_some() || self.max_backups.is_some()
    }
}

impl From<Policy> for PolicyChange {
    /// A change to exactly `p`.
    fn from(p: Policy) -> Self {
        Self {
            max_size: Some(p.max_size),
            max_backups: Some(p.max_backups),
            max_rate: Some(p.max_rate),
            max_burst: Some(p.max_burst),
        }
    }
}
