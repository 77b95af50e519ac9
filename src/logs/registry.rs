//! `Registry`: every log the daemon knows, by name, with the places their
//! files live in (`places`) and the daemon-wide pipe count.
//!
//! Nothing here touches the disk under a lock that another log needs: a
//! new log is entered closed and opens its file in its own first job, and
//! directories are opened outside the cache's lock. The registry is
//! bounded by `max-logs`: when it is full, the logs no one uses and that
//! were used least recently are forgotten (their files stay; their
//! counters go); when every log is in use, a new one is refused. A
//! forgotten log's policy is remembered (`Forgotten`, as many as `max-logs`
//! more), so that a call that brings it back without naming a policy gets
//! the one it had, not the defaults.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

use super::{
    log::{Counters, Log},
    migration::Migrations,
    name::LogName,
    places::Places,
    policy::{Policy, PolicyChange},
    rotator::RotatorError,
    seats::Seats,
    usage::Usage,
};
use crate::{fdstore::FdStore, lock};

/// How often files of logs no one uses are closed.
pub const IDLE_SWEEP: Duration = Duration::from_secs(5);

/// Why a log could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("the limit of {0} logs in use is reached")]
    Full(usize),
    #[error(transparent)]
    File(#[from] RotatorError),
}

/// Every known log, and the daemon-wide pipe count.
#[derive(Debug)]
pub struct Registry {
    places: Arc<Places>,
    defaults: Policy,
    logs: Mutex<BTreeMap<LogName, Arc<Log>>>,
    max_logs: usize,
    pipes: AtomicUsize,
    max_pipes: usize,
    epoch: Instant,
    /// Every long-lived descriptor, for the next guestlogd.
    store: Arc<FdStore>,
    /// Something the saved state describes has changed.
    changed: Notify,
    /// A planned stop hands descriptors over instead of finishing them.
    handing_over: AtomicBool,
    /// The policies of logs forgotten under `max_logs`.
    forgotten: Mutex<Forgotten>,
    /// Where every log counts what it writes, for the disk budget.
    usage: Arc<Usage>,
    /// The domains arriving and leaving by live migration.
    migrations: Migrations,
    /// The host-wide cap on console clients, viewers and followers.
    seats: Arc<Seats>,
}

/// The policies of forgotten logs, the most recently forgotten kept: at
/// most `max` of them, so memory stays bounded (about 200 bytes each)
/// however many logs pass through. One forgotten too long ago comes back
/// with the defaults; its backups stay all the same, since only an
/// explicit policy change removes any (`RotatingFile::set_policy`).
#[derive(Debug, Default)]
struct Forgotten {
    policies: BTreeMap<LogName, (u64, Policy)>,
    /// The same entries by when they were forgotten.
    order: BTreeMap<u64, LogName>,
    next: u64,
    max: usize,
}

impl Forgotten {
    fn remember(&mut self, name: LogName, policy: Policy) {
        self.take(&name);
        if self.max == 0 {
            return;
        }
        while self.policies.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.policies.remove(&oldest);
        }
        self.next += 1;
        self.order.insert(self.next, name.clone());
        self.policies.insert(name, (self.next, policy));
    }

    fn take(&mut self, name: &LogName) -> Option<Policy> {
        let (seq, policy) = self.policies.remove(name)?;
        self.order.remove(&seq);
        Some(policy)
    }
}

/// A pipe's place under `max_pipes`, given back when dropped.
#[derive(Debug)]
pub struct PipeSlot(Arc<Registry>);

impl Drop for PipeSlot {
    fn drop(&mut self) {
        self.0.pipes.fetch_sub(1, Relaxed);
    }
}

impl PipeSlot {
    /// Ties the slot to a log no other pipe feeds, in one step, so that of
    /// two callers racing for the same log only one wins; the slot comes
    /// back if another pipe is open.
    pub fn bind_exclusive(self, log: Arc<Log>) -> Result<PipeGuard, Self> {
        match log.pipes.compare_exchange(0, 1, Relaxed, Relaxed) {
            Ok(_) => Ok(PipeGuard { _slot: self, log }),
            Err(_) => Err(self),
        }
    }

    /// Ties the slot to the log the pipe feeds.
    pub fn bind(self, log: Arc<Log>) -> PipeGuard {
        log.pipes.fetch_add(1, Relaxed);
        PipeGuard { _slot: self, log }
    }
}

/// Held while a pipe is open; counts it in its log and the registry.
#[derive(Debug)]
pub struct PipeGuard {
    _slot: PipeSlot,
    log: Arc<Log>,
}

impl Drop for PipeGuard {
    fn drop(&mut self) {
        self.log.pipes.fetch_sub(1, Relaxed);
    }
}

impl PipeGuard {
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self._slot.0
    }
}

impl Registry {
    /// A registry of logs in `dir`, and of libvirt's logs under `roots`.
    pub fn new(
        dir: PathBuf,
        roots: Vec<PathBuf>,
        defaults: Policy,
        max_pipes: usize,
        max_logs: usize,
        store: Arc<FdStore>,
        usage: Arc<Usage>,
    ) -> Self {
        Self {
            places: Arc::new(Places::new(dir, roots)),
            defaults,
            logs: Mutex::new(BTreeMap::new()),
            max_logs: max_logs.max(1),
            pipes: AtomicUsize::new(0),
            max_pipes,
            epoch: Instant::now(),
            store,
            changed: Notify::new(),
            handing_over: AtomicBool::new(false),
            forgotten: Mutex::new(Forgotten {
                max: max_logs.max(1),
                ..Forgotten::default()
            }),
            usage,
            migrations: Migrations::default(),
            seats: Arc::new(Seats::new(usize::MAX)),
        }
    }

    /// With at most `max` console clients, viewers and followers at once.
    pub fn with_seats(mut self, max: usize) -> Self {
        self.seats = Arc::new(Seats::new(max));
        self
    }

    /// The host-wide cap on readers of output.
    pub fn seats(&self) -> &Arc<Seats> {
        &self.seats
    }

    pub fn places(&self) -> &Arc<Places> {
        &self.places
    }

    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    pub fn migrations(&self) -> &Migrations {
        &self.migrations
    }

    /// Forgets the log called `name`, and what is remembered of it, unless
    /// someone uses it: a pipe, console, follower or job holds it. True if
    /// it is not remembered any more (or never was): its files may go.
    pub fn forget_if_unused(&self, name: &LogName) -> bool {
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(name) {
            if Arc::strong_count(log) > 1 || log.pipes() > 0 {
                return false;
            }
            logs.remove(name);
        }
        drop(logs);
        lock(&self.forgotten).take(name);
        true
    }

    pub fn store(&self) -> &Arc<FdStore> {
        &self.store
    }

    /// Asks for the state to be saved again.
    pub fn touch(&self) {
        self.changed.notify_one();
    }

    /// Waits until something changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// From now on, stopping hands descriptors over to the next guestlogd.
    pub fn hand_over(&self) {
        self.handing_over.store(true, Relaxed);
    }

    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Relaxed)
    }

    /// Enters a log a previous guestlogd had, by its saved name, with its
    /// policy and counters; its file opens when it is first used.
    pub fn restore(
        &self,
        name: &str,
        policy: Policy,
        counters: Counters,
    ) -> Result<Arc<Log>, RegistryError> {
        let name = self.saved_name(name)?;
        self.enter(&name, PolicyChange::from(policy), counters)
            .map(|(log, _)| log)
    }

    /// Remembers the policy of a log a previous guestlogd had forgotten.
    pub fn restore_forgotten(&self, name: &str, policy: Policy) -> Result<(), RegistryError> {
        let name = self.saved_name(name)?;
        if self.get(&name).is_none() {
            lock(&self.forgotten).remember(name, policy);
        }
        Ok(())
    }

    fn saved_name(&self, name: &str) -> Result<LogName, RegistryError> {
        Ok(LogName::parse(name).map_err(|e| RotatorError::Open {
            path: self.places.dir().join(name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?)
    }

    /// The policies of forgotten logs, for the saved state.
    pub fn forgotten(&self) -> Vec<(LogName, Policy)> {
        lock(&self.forgotten)
            .policies
            .iter()
            .map(|(name, (_, p))| (name.clone(), *p))
            .collect()
    }

    pub fn get(&self, name: &LogName) -> Option<Arc<Log>> {
        lock(&self.logs).get(name).cloned()
    }

    /// The log called `name`, entered if it is new (true then) with
    /// `change` over the policy it had when it was forgotten, else over the
    /// defaults. An existing log is returned as it is: applying `change` to
    /// it is its caller's job. No I/O: its file opens in its first job.
    pub fn entry(
        &self,
        name: &LogName,
        change: PolicyChange,
    ) -> Result<(Arc<Log>, bool), RegistryError> {
        self.enter(name, change, Counters::default())
    }

    fn enter(
        &self,
        name: &LogName,
        change: PolicyChange,
        counters: Counters,
    ) -> Result<(Arc<Log>, bool), RegistryError> {
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(name) {
            return Ok((log.clone(), false));
        }
        let (path, _) = self.places.path_of(name)?;
        if logs.len() >= self.max_logs {
            let forgotten = forget_unused(&mut logs, self.max_logs);
            if forgotten.is_empty() {
                return Err(RegistryError::Full(self.max_logs));
            }
            let mut memory = lock(&self.forgotten);
            for log in &forgotten {
                memory.remember(log.name().clone(), log.snapshot().policy);
            }
            drop(memory);
            // Dropping a log closes its file, which may block on the disk.
            tokio::task::spawn_blocking(move || drop(forgotten));
        }
        let base = lock(&self.forgotten).take(name).unwrap_or(self.defaults);
        let log = Arc::new(Log::new(
            name.clone(),
            path,
            self.places.clone(),
            change.over(base),
            counters,
            self.epoch,
            self.usage.clone(),
        ));
        logs.insert(name.clone(), log.clone());
        Ok((log, true))
    }

    /// Forgets `log` if its file was never opened and no one else holds
    /// it: the call that entered it failed, and must leave nothing behind.
    pub fn forget_unopened(&self, log: &Arc<Log>) {
        let mut logs = lock(&self.logs);
        if !log.opened_once()
            && Arc::strong_count(log) <= 2
            && logs.get(log.name()).is_some_and(|l| Arc::ptr_eq(l, log))
        {
            logs.remove(log.name());
        }
    }

    /// Closes the files of logs no one uses (no pipe, console, follower or
    /// job holds them) and of logs no job has used for `IDLE_AFTER` (an
    /// idle console's, a silent pipe's). Each reopens when it is next used.
    pub fn close_idle(&self) -> usize {
        let unused: Vec<_> = lock(&self.logs)
            .values()
            .filter(|l| l.is_open() && (Arc::strong_count(l) == 1 || l.idle()))
            .cloned()
            .collect();
        let n = unused.len();
        for log in unused {
            // The map's and ours.
            log.close_if_unused(2);
        }
        n
    }

    /// How many logs the registry remembers.
    pub fn len(&self) -> usize {
        lock(&self.logs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many logs have their file open.
    pub fn open_files(&self) -> usize {
        lock(&self.logs).values().filter(|l| l.is_open()).count()
    }

    /// Takes a pipe slot, or `None` when `max_pipes` are open. Taken before
    /// anything is created, so a refused call changes nothing.
    pub fn reserve_pipe(self: &Arc<Self>) -> Option<PipeSlot> {
        self.pipes
            .fetch_update(Relaxed, Relaxed, |n| (n < self.max_pipes).then_some(n + 1))
            .ok()?;
        Some(PipeSlot(self.clone()))
    }

    pub fn max_pipes(&self) -> usize {
        self.max_pipes
    }

    pub fn defaults(&self) -> Policy {
        self.defaults
    }

    pub fn max_logs(&self) -> usize {
        self.max_logs
    }

    pub fn logs(&self) -> Vec<Arc<Log>> {
        lock(&self.logs).values().cloned().collect()
    }
}

/// Removes the least recently used logs no one holds, an eighth of the
/// registry at a time so that a full registry is not scanned at every new
/// log; returns them, to be dropped off the async workers.
fn forget_unused(logs: &mut BTreeMap<LogName, Arc<Log>>, max: usize) -> Vec<Arc<Log>> {
    let mut unused: Vec<(u64, LogName)> = logs
        .values()
        .filter(|l| Arc::strong_count(l) == 1)
        .map(|l| (l.last_used(), l.name().clone()))
        .collect();
    unused.sort_unstable();
    unused.truncate((max / 8).max(1));
    unused
        .into_iter()
        .filter_map(|(_, name)| logs.remove(&name))
        .collect()
}
