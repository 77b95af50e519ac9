//! Connections, for every front end: an accept loop and one task per
//! connection.
//!
//! The model (mini-redis's): `listener` takes a slot under the daemon-wide
//! and the per-uid caps, then hands each accepted socket to its front's
//! `serve` in a task of its own. The task owns a `Conn`: the socket, its
//! read buffer and its deadlines. Calls on one connection are answered in
//! order, one at a time; calls on different connections run concurrently.
//! Whatever a peer does — stop reading, send half a message, pass FDs, go
//! quiet — costs only its own task and slot:
//!
//! - a reply that makes no progress for `write_timeout` closes the
//!   connection; a connection holds at most the one reply it is writing
//!   (beyond the kernel's socket buffer), since it reads no further call
//!   until that reply is out;
//! - a message not complete `message_timeout` after its first byte, or
//!   larger than `max_message`, closes the connection;
//! - a connection with no call in progress for `idle_timeout` is closed;
//! - FDs a peer passes are closed as they arrive, counted, and the
//!   connection is closed: no front takes FDs from callers.
//!
//! Each such close is counted in `Counters` and logged, rate-limited.

#[allow(unsafe_code)]
pub mod conn;
pub mod listener;

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

pub use conn::{Conn, ConnError, Framing, Peer};
pub use listener::{Front, accept_loop};

/// The bounds of one front's connections.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections open at once, over every uid.
    pub max_connections: usize,
    /// Connections one non-root uid may hold at once.
    pub max_per_uid: usize,
    /// The largest message a peer may send, in bytes.
    pub max_message: usize,
    /// From a message's first byte to its last.
    pub message_timeout: Duration,
    /// With no call in progress; `None` for fronts whose peers idle by
    /// design (libvirt keeps a log connection through a migration).
    pub idle_timeout: Option<Duration>,
    /// How long a reply may wait for the peer to take any of it.
    pub write_timeout: Duration,
}

/// What happened to connections, for GetStatus and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused_connections: AtomicU64,
    pub refused_per_uid: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_message_timeout: AtomicU64,
    pub closed_message_size: AtomicU64,
    pub closed_write_timeout: AtomicU64,
    pub closed_fds: AtomicU64,
    pub fds_dropped: AtomicU64,
    pub closed_oneway: AtomicU64,
    pub closed_bad_message: AtomicU64,
    /// Peers a front does not serve at all (the libvirt front's non-root).
    pub refused_peers: AtomicU64,
}

impl Counters {
    /// Counts why a connection ended, if it ended for a reason we count.
    pub fn closed(&self, why: &ConnError) {
        let counter = match why {
            ConnError::Idle => &self.closed_idle,
            ConnError::MessageTimeout => &self.closed_message_timeout,
            ConnError::MessageSize => &self.closed_message_size,
            ConnError::WriteTimeout => &self.closed_write_timeout,
            ConnError::FdsPassed => &self.closed_fds,
            ConnError::Oneway => &self.closed_oneway,
            ConnError::BadMessage(_) => &self.closed_bad_message,
            ConnError::Refused => &self.refused_peers,
            ConnError::Closed | ConnError::Io(_) | ConnError::Shutdown => return,
        };
        counter.fetch_add(1, Relaxed);
    }
}
