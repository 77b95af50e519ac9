//! `FdStore`: every long-lived descriptor, by name, kept so that the next
//! guestlogd can take it over.
//!
//! Each descriptor is kept twice: our own duplicate, which a re-exec hands
//! over, and, under systemd, a copy in the service manager's FD store
//! (`FDSTORE=1`), which survives a stop, a restart and a crash. Closing a
//! connection for good therefore means `remove`, which drops both copies;
//! otherwise the peer stays connected.
//!
//! Names say what a descriptor is, built from validated log names (which
//! never hold `:`; a path-addressed log's `/` is spelt `%2F`, see
//! `LogName::fd_part`): `pipe/NAME/ID`, `console/NAME/guest-listen`,
//! `console/NAME/client-listen`, `console/NAME/view-listen`,
//! `console/NAME/guest`, `console/NAME/client/ID`, `console/NAME/viewer/ID`,
//! and `state/SEQ`.
//!
//! A guestlogd that took over from libvirt's virtlogd in its process starts
//! without an FD store (virtlogd's unit has none); `use_systemd` pushes
//! everything once its unit has one, and a hand-back to virtlogd empties it
//! (`withdraw`), since a stored read end would keep a pipe virtlogd closes
//! open.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use sd_notify::NotifyState;
use tracing::warn;

#[derive(Debug)]
pub struct FdStore {
    /// Each descriptor, and whether systemd may drop it when it hangs up.
    fds: Mutex<BTreeMap<String, (OwnedFd, bool)>>,
    /// systemd keeps copies (`$FDSTORE` was set and `NOTIFY_SOCKET` works,
    /// or `use_systemd` was called).
    systemd: AtomicBool,
    /// Makes names unique across restarts: ids continue from the largest
    /// adopted one.
    next_id: AtomicU64,
}

impl FdStore {
    pub fn new(systemd: bool) -> Self {
        Self {
            fds: Mutex::default(),
            systemd: AtomicBool::new(systemd),
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether the service manager keeps copies, so a crash loses nothing
    /// the kernel still holds.
    pub fn under_systemd(&self) -> bool {
        self.systemd.load(Relaxed)
    }

    /// From now on systemd keeps copies: every descriptor is pushed into
    /// its FD store, for a process started without one whose unit has one
    /// now. Returns how many are kept.
    pub fn use_systemd(&self) -> usize {
        let fds = self.lock();
        if !self.systemd.swap(true, Relaxed) {
            for (name, (fd, poll)) in fds.iter() {
                if let Err(e) = push(name, fd.as_fd(), *poll) {
                    warn!(name, error = %e, "cannot push a descriptor to the FD store");
                }
            }
        }
        fds.len()
    }

    /// Empties systemd's FD store of everything here, keeping our copies,
    /// and stops using it: for a hand-back to a daemon without one.
    pub fn withdraw(&self) {
        let fds = self.lock();
        if self.systemd.swap(false, Relaxed) {
            for name in fds.keys() {
                if let Err(e) = withdraw(name) {
                    warn!(name, error = %e, "cannot remove a descriptor from the FD store");
                }
            }
        }
    }

    /// A fresh id for a name.
    pub fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Takes over a descriptor that was passed to this process; systemd
    /// already holds it under `name`.
    pub fn adopt(&self, name: String, fd: OwnedFd) {
        if let Some(id) = name.rsplit('/').next().and_then(|s| s.parse::<u64>().ok()) {
            self.next_id.fetch_max(id + 1, Relaxed);
        }
        // As they were added: listeners and states polled, pipes,
        // connections and the journal's cursors not.
        let poll = name.starts_with("state/") || name.ends_with("-listen");
        self.lock().insert(name, (fd, poll));
    }

    /// Keeps a duplicate of `fd` under `name`. `poll: false` keeps systemd
    /// from dropping it when it hangs up: a pipe whose writers are gone may
    /// still hold unread data.
    pub fn add(&self, name: String, fd: BorrowedFd<'_>, poll: bool) {
        let dup = match fd.try_clone_to_owned() {
            Ok(d) => d,
            Err(e) => {
                warn!(name, error = %e, "cannot keep a descriptor for restarts");
                return;
            }
        };
        let mut fds = self.lock();
        if self.under_systemd()
            && let Err(e) = push(&name, dup.as_fd(), poll)
        {
            warn!(name, error = %e, "cannot push a descriptor to the FD store");
        }
        fds.insert(name, (dup, poll));
    }

    /// Forgets `name` and closes our copy and systemd's.
    pub fn remove(&self, name: &str) {
        let mut fds = self.lock();
        if fds.remove(name).is_some()
            && self.under_systemd()
            && let Err(e) = withdraw(name)
        {
            warn!(name, error = %e, "cannot remove a descriptor from the FD store");
        }
    }

    /// Our copy of `name`, if kept.
    pub fn get(&self, name: &str) -> Option<OwnedFd> {
        self.lock()
            .get(name)
            .and_then(|(fd, _)| fd.try_clone().ok())
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every descriptor, for a re-exec.
    pub fn take_all(&self) -> Vec<(String, OwnedFd)> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(|(name, (fd, _))| (name, fd))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (OwnedFd, bool)>> {
        self.fds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pushes a copy of `fd` into systemd's FD store under `name`; `poll:
/// false` keeps systemd from dropping it when it hangs up.
pub fn push(name: &str, fd: BorrowedFd<'_>, poll: bool) -> std::io::Result<()> {
    let mut state = vec![NotifyState::FdStore, NotifyState::FdName(name)];
    if !poll {
        state.push(NotifyState::Custom("FDPOLL=0"));
    }
    sd_notify::notify_with_fds(&state, &[fd])
}

/// Removes every copy systemd keeps under `name`.
pub fn withdraw(name: &str) -> std::io::Result<()> {
    sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)])
}
