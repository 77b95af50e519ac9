//! Taking over from a previous guestlogd, and leaving for the next one.
//!
//! `adopt` runs at start on the descriptors that systemd's FD store or a
//! re-exec passed: it reads the newest saved `State`, reopens each log with
//! its policy and counters, restarts each pipe and console on its stored
//! descriptors, and closes whatever the state does not describe. `save`
//! writes the state after every change and at a planned stop. Both work
//! the same with systemd and with SIGUSR1.
//!
//! A `kill -9` may come at any instant, so no stored descriptor may depend
//! on a save that has not happened yet:
//! - a call that stores something new (OpenPipe, CreateConsole) saves the
//!   state before it replies, so whatever a caller was told exists is
//!   described;
//! - descriptors that arrive with no call — a guest connecting, a client
//!   attaching, a pipe into a log that is already described — carry all
//!   their successor needs in their names (`pipe/NAME/ID`,
//!   `console/NAME/guest`, `console/NAME/client/ID`,
//!   `console/NAME/viewer/ID`), and are adopted by name when the state
//!   does not list them yet.

use std::{collections::BTreeSet, os::fd::OwnedFd, sync::Arc};

use base64::Engine as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::{
    state::{self, ConsoleState, ForgottenLog, JournalState, LogState, State},
    virtlogd::origins::{Origin, Origins},
};
use crate::{
    config::Limits,
    consoles::{
        boot,
        console::{Adopted, AdoptedClient, Handover, Listeners, Owner, Settings},
        table::Consoles,
    },
    error_chain,
    fdstore::Kept,
    lock,
    logs::{
        journal::{Journal, export::Shared},
        log::Counters,
        name::LogName,
        pipe,
        registry::Registry,
    },
};

/// Reads the daemon-wide counters to save, when a state is written.
pub struct Totals(pub Box<dyn Fn() -> std::collections::BTreeMap<String, u64> + Send + Sync>);

impl std::fmt::Debug for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Totals")
    }
}

/// What a takeover found beyond the descriptors.
#[derive(Debug, Default)]
pub struct Takeover {
    /// How many takeovers came before, this one included.
    pub adoptions: u64,
    /// The daemon-wide counters the state carried (`State::totals`).
    pub totals: std::collections::BTreeMap<String, u64>,
    /// The libvirt logs' origins the state carried (`State::libvirt`).
    pub libvirt: std::collections::BTreeMap<String, Origin>,
}

/// Takes over what `stored` holds: logs (with their journal exports),
/// pipes and consoles.
pub fn adopt(
    stored: Vec<(String, OwnedFd)>,
    registry: &Arc<Registry>,
    consoles: &Consoles,
    journal: &Arc<Journal>,
    limits: &Limits,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Takeover {
    let store = registry.store();
    let newest = stored.iter().filter_map(|(n, _)| state::seq(n)).max();
    let mut saved = State::default();
    for (name, fd) in stored {
        match state::seq(&name) {
            Some(seq) => {
                if Some(seq) == newest {
                    match fd
                        .try_clone()
                        .map_err(state::StateError::Read)
                        .and_then(State::read)
                    {
                        Ok(s) => saved = s,
                        Err(e) => warn!(name, error = %error_chain(&e), "ignoring a saved state"),
                    }
                }
                // Replaced by the next save either way.
                store.adopt(name.clone(), fd);
                store.remove(&name);
            }
            None => store.adopt(name, fd),
        }
    }
    if newest.is_none() && store.is_empty() {
        return Takeover::default();
    }

    // Whatever the state does not describe, by list or by name, is closed:
    // a stray descriptor must never keep a connection open forever.
    let described: BTreeSet<&String> = saved.fds.iter().collect();
    for name in store.names() {
        if !described.contains(&name) && !self_described(&name, &saved) {
            warn!(
                name,
                "closing a stored descriptor the saved state does not describe"
            );
            store.remove(&name);
        }
    }
    for name in &saved.fds {
        if !store.contains(name) {
            warn!(
                name,
                "a descriptor the saved state describes was not passed"
            );
        }
    }

    for log in &saved.logs {
        let counters = Counters {
            bytes_written: log.bytes_written,
            bytes_dropped: log.bytes_dropped,
            bytes_suppressed: log.bytes_suppressed,
            bytes_evicted: log.bytes_evicted,
            rotations: log.rotations,
            followers_dropped: log.followers_dropped,
            size: log.size,
            backups: log.backups,
            gaps: log.gaps.clone(),
            hop: log.hop.clone(),
        };
        match registry.restore(&log.name, log.policy, counters) {
            Ok(restored) => {
                if log.boot {
                    restored.mark_boot();
                }
                if let Some(j) = &log.journal {
                    restored.enable_journal(journal, j.settings.clone(), Some(j.record()));
                    restored.set_journal_pid(i32::try_from(j.object_pid).unwrap_or(0));
                }
            }
            Err(e) => warn!(log = log.name, error = %error_chain(&e), "cannot reopen a log"),
        }
    }
    registry.migrations().restore(saved.migrations.clone());
    for f in &saved.forgotten {
        if let Err(e) = registry.restore_forgotten(&f.name, f.policy) {
            warn!(log = f.name, error = %error_chain(&e), "cannot remember a forgotten log");
        }
    }
    // Positions kept for logs no longer known; and what a crash left
    // between a write and its export is sent now.
    journal.cursors.prune();
    journal.all_behind();
    for name in store.names() {
        if let Some(log) = name.strip_prefix("pipe/").and_then(|r| r.split('/').next()) {
            adopt_pipe(&name, log, registry, tracker, shutdown);
        }
    }
    // Client connections by console, in one pass over the names.
    let mut clients: std::collections::BTreeMap<String, Vec<(String, bool)>> = Default::default();
    for name in store.names() {
        let mut parts = name.split('/');
        if let (Some("console"), Some(console), Some(kind @ ("client" | "viewer"))) =
            (parts.next(), parts.next(), parts.next())
        {
            let (console, viewer) = (console.to_owned(), kind == "viewer");
            clients.entry(console).or_default().push((name, viewer));
        }
    }
    for console in &saved.consoles {
        let attached = clients.remove(&console.name).unwrap_or_default();
        let crashed = !saved.planned;
        if let Err(e) = adopt_console(console, attached, crashed, registry, consoles, limits) {
            warn!(console = console.name, error = %e, "cannot take over a console");
        }
    }
    let crashed = !saved.planned;
    info!(
        message_id = if crashed {
            crate::logging::events::TAKEOVER_CRASH
        } else {
            crate::logging::events::TAKEOVER
        },
        adoptions = saved.adoptions + 1,
        descriptors = store.len(),
        crashed,
        "took over from the previous guestlogd{}",
        if crashed { " after a crash" } else { "" }
    );
    Takeover {
        adoptions: saved.adoptions + 1,
        totals: saved.totals,
        libvirt: saved.libvirt,
    }
}

/// What a client adopted after a crash sees where output it had not been
/// sent yet may be missing.
pub const CRASH_MARKER: &str = "\r\n[guestlogd: took over after a crash: output not yet sent to this client may be missing here]\r\n";

/// Whether `name` says all that is needed to adopt it: a pipe into a
/// described log, or a connection of a described console.
fn self_described(name: &str, saved: &State) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    let id = |s: &str| s.parse::<u64>().is_ok();
    match parts[..] {
        ["pipe", log, n] if id(n) => LogName::from_fd_part(log)
            .is_ok_and(|log| saved.logs.iter().any(|l| l.name == log.as_str())),
        ["console", console, "guest"] => saved.consoles.iter().any(|c| c.name == console),
        ["console", console, "client" | "viewer", n] if id(n) => {
            saved.consoles.iter().any(|c| c.name == console)
        }
        // Written at every exported line; describes itself.
        ["journal", "cursors"] => true,
        _ => false,
    }
}

fn adopt_pipe(
    name: &str,
    log: &str,
    registry: &Arc<Registry>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let store = registry.store();
    let found = LogName::from_fd_part(log)
        .ok()
        .and_then(|l| registry.get(&l));
    let (Some(log), Some(slot)) = (found, registry.reserve_pipe()) else {
        warn!(name, "cannot take over a pipe");
        store.remove(name);
        return;
    };
    let Some(fd) = store.lend(name) else {
        warn!(name, "cannot take over a pipe");
        store.remove(name);
        return;
    };
    if let Err(e) = pipe::adopt(
        name.to_owned(),
        fd,
        slot.bind(log),
        tracker,
        shutdown.clone(),
    ) {
        warn!(name, error = %e, "cannot take over a pipe");
        store.remove(name);
    }
}

fn adopt_console(
    saved: &ConsoleState,
    attached: Vec<(String, bool)>,
    crashed: bool,
    registry: &Arc<Registry>,
    consoles: &Consoles,
    limits: &Limits,
) -> Result<(), String> {
    let name = LogName::try_from(saved.name.as_str()).map_err(|e| e.to_string())?;
    let store = registry.store();
    let prefix = format!("console/{name}");
    // Each descriptor is lent to its new owner, not duplicated: the one
    // descriptor serves the console and the store. One that cannot be
    // used is removed, and so closed.
    let listener = |kind: &str| -> Option<Kept<tokio::net::UnixListener>> {
        let name = format!("{prefix}/{kind}");
        let fd = store.lend(&name)?;
        let std = std::os::unix::net::UnixListener::from(fd);
        let l = std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixListener::from_std(std));
        match l {
            Ok(l) => Some(Kept::lent(store, name, l)),
            Err(_) => {
                store.remove(&name);
                None
            }
        }
    };
    let stream = |name: &str| -> Option<Kept<tokio::net::UnixStream>> {
        let fd = store.lend(name)?;
        let std = std::os::unix::net::UnixStream::from(fd);
        let s = std
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(std));
        match s {
            Ok(s) => Some(Kept::lent(store, name.to_owned(), s)),
            Err(_) => {
                store.remove(name);
                None
            }
        }
    };
    let listeners = Listeners {
        guest: listener("guest-listen").ok_or("its guest socket was not passed")?,
        client: listener("client-listen").ok_or("its client socket was not passed")?,
        view: if saved.viewers {
            listener("view-listen")
        } else {
            None
        },
    };
    let mut adopted = Adopted {
        guest: stream(&format!("{prefix}/guest")),
        clients: Vec::new(),
        writer: saved.writer.clone(),
        boot_closed: saved.boot_closed,
    };
    for (fd_name, viewer) in attached {
        let Some(s) = stream(&fd_name) else {
            continue;
        };
        let pending = saved
            .pending
            .get(&fd_name)
            .and_then(|p| {
                base64::engine::general_purpose::STANDARD
                    .decode(&p.data)
                    .ok()
            })
            .unwrap_or_else(|| {
                // What was queued for it died with the process: say so
                // where the gap is, as a slow client's drops are.
                if crashed {
                    CRASH_MARKER.as_bytes().to_vec()
                } else {
                    Vec::new()
                }
            });
        adopted.clients.push(AdoptedClient {
            who: saved.peers.get(&fd_name).copied(),
            stream: s,
            viewer,
            pending,
        });
    }
    let log = if saved.log {
        Some(registry.get(&name).ok_or("its log was not restored")?)
    } else {
        None
    };
    let boot = if saved.boot_bytes > 0 {
        let boot_name = boot::name(&name).map_err(|e| e.to_string())?;
        let boot = registry
            .get(&boot_name)
            .ok_or("its boot log was not restored")?;
        boot.mark_boot();
        Some(boot)
    } else {
        None
    };
    let settings = Settings {
        name,
        log,
        replay: saved.replay,
        slow: saved.slow,
        owner: Owner {
            uid: saved.uid,
            gid: saved.gid,
            mode: saved.mode,
        },
        viewers: saved.viewers,
        queue: limits.client_queue,
        max_clients: limits.max_clients,
        registry: registry.clone(),
        writers: saved.writers,
        boot,
        boot_bytes: saved.boot_bytes,
        domain: saved.domain.clone(),
    };
    let console = consoles
        .adopt(settings, listeners, adopted)
        .map_err(|e| error_chain(&e))?;
    use std::sync::atomic::Ordering::Relaxed;
    let s = &console.stats;
    s.bytes_from_guest.store(saved.bytes_from_guest, Relaxed);
    s.bytes_to_guest.store(saved.bytes_to_guest, Relaxed);
    s.bytes_dropped_for_clients
        .store(saved.bytes_dropped_for_clients, Relaxed);
    Ok(())
}

/// Saves the state: a new memfd first, then the previous one forgotten.
/// One at a time, whoever asks: the state task after each change, a call
/// before it replies, and the daemon at a stop.
#[derive(Debug)]
pub struct Saver {
    registry: Arc<Registry>,
    consoles: Arc<Consoles>,
    /// The name of the newest saved state, and how many takeovers came
    /// before this process.
    last: std::sync::Mutex<Option<String>>,
    adoptions: u64,
    /// Set once the fronts exist.
    totals: std::sync::OnceLock<Totals>,
    /// Which logs libvirt opened, saved with them.
    pub origins: Origins,
}

impl Saver {
    pub fn new(registry: Arc<Registry>, consoles: Arc<Consoles>, adoptions: u64) -> Self {
        Self {
            registry,
            consoles,
            last: std::sync::Mutex::new(None),
            adoptions,
            totals: std::sync::OnceLock::new(),
            origins: Origins::default(),
        }
    }

    /// Where the daemon-wide counters are read from at each save.
    pub fn set_totals(&self, totals: Totals) {
        let _ = self.totals.set(totals);
    }

    /// Saves what is true now.
    pub fn save_now(&self) {
        self.write(&Default::default(), false);
    }

    /// Saves at a planned stop, with the clients' unsent output.
    pub fn save(&self, handovers: &std::collections::BTreeMap<LogName, Handover>) {
        self.write(handovers, true);
    }

    fn write(&self, handovers: &std::collections::BTreeMap<LogName, Handover>, planned: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (registry, consoles) = (&self.registry, &self.consoles);
        let store = registry.store();
        let logs = registry
            .logs()
            .iter()
            .map(|l| {
                let s = l.snapshot();
                LogState {
                    name: s.name.to_string(),
                    policy: s.policy,
                    bytes_written: s.bytes_written,
                    bytes_dropped: s.bytes_dropped,
                    rotations: s.rotations,
                    followers_dropped: l.followers_dropped(),
                    size: s.size,
                    backups: s.backups,
                    boot: l.is_boot(),
                    bytes_suppressed: s.bytes_suppressed,
                    bytes_evicted: s.bytes_evicted,
                    gaps: s.gaps,
                    journal: journal_state(l.journal()),
                    hop: l.hop_state(),
                }
            })
            .collect();
        let consoles = consoles
            .all()
            .iter()
            .map(|c| {
                let st = &c.settings;
                ConsoleState {
                    name: c.name.to_string(),
                    log: st.log.is_some(),
                    replay: st.replay,
                    slow: st.slow,
                    uid: st.owner.uid,
                    gid: st.owner.gid,
                    mode: st.owner.mode,
                    viewers: st.viewers,
                    bytes_from_guest: c.stats.bytes_from_guest.load(Relaxed),
                    bytes_to_guest: c.stats.bytes_to_guest.load(Relaxed),
                    bytes_dropped_for_clients: c.stats.bytes_dropped_for_clients.load(Relaxed),
                    pending: handovers.get(&c.name).cloned().unwrap_or_default(),
                    writers: st.writers,
                    writer: lock(&c.stats.writer).as_ref().map(|(n, _)| n.clone()),
                    peers: lock(&c.stats.peers).iter().cloned().collect(),
                    boot_bytes: if st.boot.is_some() { st.boot_bytes } else { 0 },
                    domain: c.domain(),
                    boot_closed: c.stats.boot_closed.load(Relaxed),
                }
            })
            .collect();
        let fds = store
            .names()
            .into_iter()
            .filter(|n| state::seq(n).is_none())
            .collect();
        let state = State {
            version: state::VERSION,
            adoptions: self.adoptions,
            logs,
            consoles,
            fds,
            planned,
            forgotten: registry
                .forgotten()
                .into_iter()
                .map(|(name, policy)| ForgottenLog {
                    name: name.to_string(),
                    policy,
                })
                .collect(),
            totals: self.totals.get().map(|t| (t.0)()).unwrap_or_default(),
            migrations: registry.migrations().state(),
            libvirt: self.origins.save(|name| registry.get(name).is_some()),
        };
        let fd = match state.to_memfd() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot save the state");
                return;
            }
        };
        let name = state::fd_name(store.id());
        store.keep(name.clone(), fd, true);
        if let Some(old) = last.replace(name) {
            store.remove(&old);
        }
    }
}

/// A log's export as the state keeps it, if it exports.
fn journal_state(shared: &Shared) -> Option<JournalState> {
    use std::sync::atomic::Ordering::Relaxed;
    if !shared.on.load(Relaxed) {
        return None;
    }
    let r = shared.record();
    Some(JournalState {
        settings: shared.settings()?,
        inode: r.inode,
        offset: r.offset,
        sent: r.sent,
        suppressed: r.suppressed,
        episode: r.episode,
        object_pid: shared.object_pid.load(Relaxed),
    })
}
