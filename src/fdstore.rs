//! `FdStore`: every long-lived descriptor, by name, kept so that the next
//! guestlogd can take it over.
//!
//! A descriptor is held once. The task that uses it (a relay, a client's
//! task, a pipe's task) owns it and *lends* its number to the store
//! (`add`); the store owns only descriptors that nothing uses (`keep`,
//! `adopt`, what an owner gave back). Under systemd the service manager
//! keeps a copy of each in its own FD store (`FDSTORE=1`), which survives a
//! stop, a restart and a crash; that copy is systemd's, not ours.
//!
//! Invariants:
//! - a lent descriptor comes back (`Kept`'s drop gives it back) unless its
//!   name was removed first: `remove` is the one way to close a descriptor
//!   for good, and it drops both our copy and systemd's;
//! - a lent number is open for as long as the entry says `Lent`: owners
//!   give back or remove before they close, so `take_all` may duplicate a
//!   number still lent (an owner held up by a disk that hangs at a
//!   re-exec) and hand that over.
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
    ops::Deref,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use sd_notify::NotifyState;
use tracing::warn;

/// One entry: the descriptor itself, or the number of one a task owns.
#[derive(Debug)]
enum Held {
    Owned(OwnedFd),
    Lent(RawFd),
}

impl Held {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Held::Owned(fd) => fd.as_fd(),
            // SAFETY: a lent number stays open while the entry says so
            // (the module's invariant).
            Held::Lent(raw) => unsafe { BorrowedFd::borrow_raw(*raw) },
        }
    }
}

/// An entry and whether systemd may drop it when it hangs up.
#[derive(Debug)]
struct Entry {
    held: Held,
    poll: bool,
}

#[derive(Debug)]
pub struct FdStore {
    fds: Mutex<BTreeMap<String, Entry>>,
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
            for (name, e) in fds.iter() {
                if let Err(err) = push(name, e.held.as_fd(), e.poll) {
                    warn!(name, error = %err, "cannot push a descriptor to the FD store");
                }
            }
        }
        fds.len()
    }

    /// Empties systemd's FD store of everything here, keeping ours, and
    /// stops using it: for a hand-back to a daemon without one.
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
        let held = Held::Owned(fd);
        self.lock().insert(name, Entry { held, poll });
    }

    /// Enters `fd`, which the caller goes on owning and using, under
    /// `name`: the caller wraps it in a `Kept` (or otherwise keeps it open
    /// until it gives it back or removes the name). `poll: false` keeps
    /// systemd from dropping it when it hangs up: a pipe whose writers are
    /// gone may still hold unread data.
    pub fn add(&self, name: String, fd: BorrowedFd<'_>, poll: bool) {
        let mut fds = self.lock();
        self.push_to_systemd(&name, fd, poll);
        let held = Held::Lent(fd.as_raw_fd());
        fds.insert(name, Entry { held, poll });
    }

    /// Keeps `fd` under `name`; the store owns it.
    pub fn keep(&self, name: String, fd: OwnedFd, poll: bool) {
        let mut fds = self.lock();
        self.push_to_systemd(&name, fd.as_fd(), poll);
        let held = Held::Owned(fd);
        fds.insert(name, Entry { held, poll });
    }

    fn push_to_systemd(&self, name: &str, fd: BorrowedFd<'_>, poll: bool) {
        if self.under_systemd()
            && let Err(e) = push(name, fd, poll)
        {
            warn!(name, error = %e, "cannot push a descriptor to the FD store");
        }
    }

    /// Forgets `name` and closes our copy (a lent one is closed by its
    /// owner, which will not give it back) and systemd's.
    pub fn remove(&self, name: &str) {
        let mut fds = self.lock();
        if fds.remove(name).is_some()
            && self.under_systemd()
            && let Err(e) = withdraw(name)
        {
            warn!(name, error = %e, "cannot remove a descriptor from the FD store");
        }
    }

    /// Lends the descriptor kept as `name` to a task that will use it (and
    /// wrap it in a `Kept`); `None` if it is not kept here, or lent already.
    pub fn lend(&self, name: &str) -> Option<OwnedFd> {
        let mut fds = self.lock();
        let held = &mut fds.get_mut(name)?.held;
        let raw = match held {
            Held::Owned(fd) => fd.as_raw_fd(),
            Held::Lent(_) => return None,
        };
        match std::mem::replace(held, Held::Lent(raw)) {
            Held::Owned(fd) => Some(fd),
            Held::Lent(_) => None,
        }
    }

    /// Takes back a descriptor lent as `name`; if the name was removed
    /// (or now names another descriptor), it is closed.
    pub fn give_back(&self, name: &str, fd: OwnedFd) {
        let mut fds = self.lock();
        if let Some(e) = fds.get_mut(name)
            && matches!(e.held, Held::Lent(raw) if raw == fd.as_raw_fd())
        {
            e.held = Held::Owned(fd);
        }
    }

    /// Whether `name` is kept.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
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

    /// Every descriptor, for a re-exec. A descriptor still lent (its owner
    /// is held by a disk that hangs, or lives as long as the process) is
    /// duplicated: the owner keeps it open while the entry says so.
    pub fn take_all(&self) -> Vec<(String, OwnedFd)> {
        let fds = std::mem::take(&mut *self.lock());
        fds.into_iter()
            .filter_map(|(name, e)| match e.held {
                Held::Owned(fd) => Some((name, fd)),
                Held::Lent(raw) => {
                    // SAFETY: a lent number stays open until its owner gives
                    // it back or its name is removed (the module's
                    // invariant), and the entry was still lent.
                    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
                    match fd.try_clone_to_owned() {
                        Ok(dup) => Some((name, dup)),
                        Err(e) => {
                            warn!(name, error = %e, "cannot hand a descriptor over");
                            None
                        }
                    }
                }
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
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

/// A descriptor's owner that can give it back as a plain descriptor.
pub trait IntoFd {
    fn into_fd(self) -> Option<OwnedFd>;
}

impl IntoFd for tokio::net::UnixStream {
    fn into_fd(self) -> Option<OwnedFd> {
        self.into_std().ok().map(OwnedFd::from)
    }
}

impl IntoFd for tokio::net::UnixListener {
    fn into_fd(self) -> Option<OwnedFd> {
        self.into_std().ok().map(OwnedFd::from)
    }
}

impl IntoFd for tokio::io::unix::AsyncFd<OwnedFd> {
    fn into_fd(self) -> Option<OwnedFd> {
        Some(self.into_inner())
    }
}

/// A descriptor in use and entered in the store under its name: the one
/// descriptor serves the task and the store. Dropped, it goes back to the
/// store (for the next guestlogd) unless its name was removed, in which
/// case it closes.
#[derive(Debug)]
pub struct Kept<T: IntoFd> {
    inner: Option<T>,
    name: String,
    store: Arc<FdStore>,
}

impl<T: IntoFd + AsFd> Kept<T> {
    /// `inner`, entered in `store` as `name` (see `FdStore::add`).
    pub fn add(store: &Arc<FdStore>, name: String, inner: T, poll: bool) -> Self {
        store.add(name.clone(), inner.as_fd(), poll);
        Self::lent(store, name, inner)
    }

    /// `inner`, already lent by `store` under `name` (`FdStore::lend`).
    pub fn lent(store: &Arc<FdStore>, name: String, inner: T) -> Self {
        Self {
            inner: Some(inner),
            name,
            store: store.clone(),
        }
    }
}

impl<T: IntoFd> Kept<T> {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<T: IntoFd> Deref for Kept<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // Taken only in `drop`.
        match &self.inner {
            Some(inner) => inner,
            None => unreachable!("a Kept descriptor is used after its drop"),
        }
    }
}

impl<T: IntoFd> Drop for Kept<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && self.store.contains(&self.name)
            && let Some(fd) = inner.into_fd()
        {
            self.store.give_back(&self.name, fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (a.into(), b.into())
    }

    #[test]
    fn a_lent_descriptor_is_held_once_and_comes_back() {
        let store = FdStore::new(false);
        let (a, _b) = pair();
        let raw = a.as_raw_fd();
        store.add("x".into(), a.as_fd(), false);
        // No duplicate: the store names the owner's descriptor.
        assert_eq!(store.lend("x").map(|f| f.as_raw_fd()), None);
        store.give_back("x", a);
        let back = store.lend("x").unwrap();
        assert_eq!(back.as_raw_fd(), raw);
        store.give_back("x", back);
        let all = store.take_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].1.as_raw_fd(), raw);
    }

    #[test]
    fn a_removed_name_closes_what_comes_back() {
        let store = FdStore::new(false);
        let (a, b) = pair();
        store.add("x".into(), a.as_fd(), false);
        store.remove("x");
        store.give_back("x", a);
        assert!(store.is_empty());
        // The peer sees the close.
        let mut buf = [0u8; 1];
        let b = std::os::unix::net::UnixStream::from(b);
        assert_eq!(std::io::Read::read(&mut &b, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_descriptor_still_lent_is_duplicated_for_a_reexec() {
        let store = FdStore::new(false);
        let (a, _b) = pair();
        store.add("x".into(), a.as_fd(), false);
        let all = store.take_all();
        assert_eq!(all.len(), 1);
        assert_ne!(all[0].1.as_raw_fd(), a.as_raw_fd());
    }
}
