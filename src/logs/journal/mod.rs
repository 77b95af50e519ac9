//! Journal export: each line of a log that opts in (`journal: true`) is
//! also sent to journald over its native protocol, with the log's and
//! the VM's fields, under a per-log line budget.
//!
//! Owns: the daemon-wide sender (`Journal`: one datagram socket to
//! journald, the budget's limits, the list of exports that fell behind,
//! and the task that catches them up), each log's export (`export`), the
//! positions that survive a crash (`cursors`), the budget (`budget`) and
//! the wire format (`native`).
//!
//! Invariants: nothing here ever waits for journald. Sends are
//! non-blocking; when journald takes no more, an export stops where it
//! is and is caught up when the socket is writable again (or journald is
//! back), from the log's file, so nothing is buffered in memory and a
//! slow journald slows no guest, log or caller. The capped file stays the
//! complete record. Nothing here knows `Log`: a log registers as an
//! `Exporter`.

pub mod budget;
pub mod cursors;
pub mod export;
pub mod native;

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tokio::{net::UnixDatagram, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{fdstore::FdStore, lock};
use budget::Limits;
use cursors::Cursors;

/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// How often a journald that is gone is looked for again, an episode's
/// end is checked, and a writable socket is not trusted to say so.
const TICK: Duration = Duration::from_secs(1);

/// Whether journald took an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    /// Its queue is full, or it is not there: try again later.
    No,
}

/// A log that exports, as the journal sees it.
pub trait Exporter: Send + Sync + 'static {
    /// Sends what the log's file holds past its position, in its turn.
    fn catch_up(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    /// Ends a quiet suppression episode, if its export is free now.
    fn tick(&self);
}

/// The daemon-wide sender.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    pub limits: Limits,
    pub cursors: Cursors,
    socket: Mutex<Option<Arc<UnixDatagram>>>,
    /// Exports that journald stopped, to catch up.
    behind: Mutex<Vec<Weak<dyn Exporter>>>,
    /// Every export, for the tick.
    all: Mutex<Vec<Weak<dyn Exporter>>>,
    wake: Notify,
}

impl std::fmt::Debug for dyn Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Journal {
    pub fn new(path: PathBuf, limits: Limits, store: Arc<FdStore>) -> Self {
        Self {
            path,
            limits,
            cursors: Cursors::new(store),
            socket: Mutex::new(None),
            behind: Mutex::default(),
            all: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Sends one entry without waiting.
    pub fn send(&self, entry: &[u8]) -> Sent {
        let Some(socket) = lock(&self.socket).clone() else {
            return Sent::No;
        };
        match socket.try_send(entry) {
            Ok(_) => Sent::Yes,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Sent::No,
            Err(e) => {
                // journald went away (a restart): connect again later.
                crate::limited!(warn, error = %e, "cannot send to the journal; retrying");
                lock(&self.socket).take();
                Sent::No
            }
        }
    }

    /// Registers an export, for the tick.
    pub fn register(&self, e: Weak<dyn Exporter>) {
        let mut all = lock(&self.all);
        all.retain(|w| w.strong_count() > 0);
        all.push(e);
    }

    /// An export journald stopped: caught up when it takes more.
    pub fn behind(&self, e: Weak<dyn Exporter>) {
        lock(&self.behind).push(e);
        self.wake.notify_one();
    }

    /// Catches up every registered export once (at start: a crash may
    /// have come between a write and its export).
    pub fn all_behind(&self) {
        let all = lock(&self.all).clone();
        lock(&self.behind).extend(all);
        self.wake.notify_one();
    }

    fn connect(&self) -> Option<Arc<UnixDatagram>> {
        if let Some(s) = lock(&self.socket).clone() {
            return Some(s);
        }
        let socket = UnixDatagram::unbound().and_then(|s| s.connect(&self.path).map(|()| s));
        match socket {
            Ok(s) => {
                // Room for bursts; the kernel may give less.
                let _ =
                    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::SndBuf, &(8 << 20));
                info!(socket = %self.path.display(), "sending exported logs to the journal");
                let s = Arc::new(s);
                *lock(&self.socket) = Some(s.clone());
                Some(s)
            }
            Err(e) => {
                debug!(socket = %self.path.display(), error = %e, "no journal to export to yet");
                None
            }
        }
    }

    /// Catches up exports that journald stopped, whenever its socket takes
    /// more, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {
                    for e in lock(&self.all).iter().filter_map(Weak::upgrade) {
                        e.tick();
                    }
                }
            }
            if lock(&self.behind).is_empty() {
                continue;
            }
            let Some(socket) = self.connect() else {
                continue;
            };
            // Writable again, or a tick later at the latest (a full peer
            // does not always wake its writers).
            tokio::select! {
                () = stop.cancelled() => return,
                _ = socket.writable() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            let behind = std::mem::take(&mut *lock(&self.behind));
            for e in behind.iter().filter_map(Weak::upgrade) {
                tokio::spawn(e.catch_up());
            }
        }
    }
}
