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

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use sd_notify::NotifyState;
use tracing::warn;

#[derive(Debug)]
pub struct FdStore {
    fds: Mutex<BTreeMap<String, OwnedFd>>,
    /// systemd keeps copies (`$FDSTORE` was set and `NOTIFY_SOCKET` works).
    systemd: bool,
    /// Makes names unique across restarts: ids continue from the largest
    /// adopted one.
    next_id: AtomicU64,
}

impl FdStore {
    pub fn new(systemd: bool) -> Self {
        Self {
            fds: Mutex::default(),
            systemd,
            next_id: AtomicU64::new(1),
        }
    }

    /// Whether the service manager keeps copies, so a crash loses nothing
    /// the kernel still holds.
    pub fn under_systemd(&self) -> bool {
        self.systemd
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
        self.lock().insert(name, fd);
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
        if self.systemd {
            let mut state = vec![NotifyState::FdStore, NotifyState::FdName(&name)];
            if !poll {
                state.push(NotifyState::Custom("FDPOLL=0"));
            }
            if let Err(e) = sd_notify::notify_with_fds(&state, &[dup.as_fd()]) {
                warn!(name, error = %e, "cannot push a descriptor to the FD store");
            }
        }
        self.lock().insert(name, dup);
    }

    /// Forgets `name` and closes our copy and systemd's.
    pub fn remove(&self, name: &str) {
        if self.lock().remove(name).is_some() && self.systemd {
            let state = [NotifyState::FdStoreRemove, NotifyState::FdName(name)];
            if let Err(e) = sd_notify::notify(&state) {
                warn!(name, error = %e, "cannot remove a descriptor from the FD store");
            }
        }
    }

    /// Our copy of `name`, if kept.
    pub fn get(&self, name: &str) -> Option<OwnedFd> {
        self.lock().get(name).and_then(|fd| fd.try_clone().ok())
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
        std::mem::take(&mut *self.lock()).into_iter().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, OwnedFd>> {
        self.fds.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
