//! `Registry`: every log the daemon knows, by name.
//!
//! A `Log` owns its `RotatingFile` behind a mutex, which is what keeps the
//! bytes of one read (or one AppendLog) together in the file. Its figures are
//! mirrored into atomics after each write, so ListLogs never waits for a
//! writer that is stuck on the disk.
//!
//! Every method here may touch the disk; callers run them off the varlink
//! loop (in `spawn_blocking` or a pipe's own task).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use tracing::warn;

use crate::{
    fdstore::FdStore,
    logdir::{BaseName, LogDir},
    name::LogName,
    queue::{Output, OutputQueue, Pushed, SlowPolicy, no_direct},
    rotator::{Policy, RotatingFile, RotatorError, Skipped},
    state::LogState,
};

/// One log: its file, its figures, and how many pipes feed it.
#[derive(Debug)]
pub struct Log {
    name: LogName,
    path: PathBuf,
    file: Mutex<RotatingFile>,
    stats: Stats,
    /// Open pipes into this log; owned by `PipeGuard`s.
    pipes: AtomicUsize,
    /// When a failed write was last logged; failures a guest can cause are
    /// logged at most once per `WARN_EVERY`.
    last_warning: Mutex<Option<Instant>>,
    /// When a planted backup was last logged; a local user decides how
    /// often those appear, so at most once per `WARN_EVERY`.
    last_skip_warning: Mutex<Option<Instant>>,
    /// Follow streams; each gets every write, without ever slowing it.
    /// Weak: the stream owns its queue, so a follower that leaves frees it
    /// at once, even if the log is never written again.
    followers: Mutex<Vec<Weak<OutputQueue>>>,
    /// Bytes the followers did not get because they fell behind.
    followers_dropped: AtomicU64,
    /// One per pipe task feeding this log: asks it to read its pipe dry.
    drains: Mutex<Vec<DrainRequests>>,
}

/// Where a pipe task takes requests to read its pipe dry; each request is
/// answered when it has.
pub type DrainRequests = tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>;

const WARN_EVERY: Duration = Duration::from_secs(10);

/// The figures ListLogs shows, copied from the file after each change.
#[derive(Debug, Default)]
struct Stats {
    size: AtomicU64,
    backups: AtomicU64,
    max_size: AtomicU64,
    max_backups: AtomicU64,
    bytes_written: AtomicU64,
    bytes_dropped: AtomicU64,
    rotations: AtomicU64,
}

/// A snapshot of one log's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSnapshot {
    pub name: LogName,
    pub path: PathBuf,
    pub size: u64,
    pub backups: u64,
    pub policy: Policy,
    pub pipes: usize,
    pub bytes_written: u64,
    pub bytes_dropped: u64,
    pub rotations: u64,
}

impl Log {
    fn open(
        dir: Arc<LogDir>,
        base: BaseName,
        name: &LogName,
        policy: Policy,
    ) -> Result<Self, RotatorError> {
        let file = RotatingFile::open(dir, base, policy)?;
        let log = Self {
            name: name.clone(),
            path: file.path(),
            stats: Stats::default(),
            file: Mutex::new(file),
            pipes: AtomicUsize::new(0),
            last_warning: Mutex::new(None),
            last_skip_warning: Mutex::new(None),
            followers: Mutex::default(),
            followers_dropped: AtomicU64::new(0),
            drains: Mutex::default(),
        };
        log.with_file(|_| Ok(()))?;
        Ok(log)
    }

    pub fn name(&self) -> &LogName {
        &self.name
    }

    /// Runs `f` on the file under the log's lock, then publishes the
    /// figures, whether `f` failed or not.
    pub fn with_file<T>(
        &self,
        f: impl FnOnce(&mut RotatingFile) -> Result<T, RotatorError>,
    ) -> Result<T, RotatorError> {
        let mut file = lock(&self.file);
        let result = f(&mut file);
        let skipped = file.take_skipped();
        if !skipped.is_empty() {
            self.warn_skipped(&skipped);
        }
        let s = &self.stats;
        s.size.store(file.size(), Relaxed);
        s.backups.store(file.backups().into(), Relaxed);
        s.max_size.store(file.policy().max_size, Relaxed);
        s.max_backups
            .store(file.policy().max_backups.into(), Relaxed);
        s.bytes_written.store(file.bytes_written(), Relaxed);
        s.bytes_dropped.store(file.bytes_dropped(), Relaxed);
        s.rotations.store(file.rotations(), Relaxed);
        result
    }

    /// Appends bytes a guest or caller sent. A failure is counted in
    /// `bytesDropped` and logged, rate-limited; the caller goes on.
    /// Appends bytes a guest or caller sent and hands them to followers.
    /// A failure is counted in `bytesDropped` and logged, rate-limited.
    pub fn write(&self, data: &[u8]) -> Result<(), RotatorError> {
        let result = self.with_file(|f| {
            let result = f.write(data);
            // Under the file's lock, so a follower's replay and its first
            // live bytes meet exactly.
            self.fan_out(data);
            result
        });
        if let Err(e) = &result {
            self.warn_dropped(e);
        }
        result
    }

    fn fan_out(&self, data: &[u8]) {
        let mut followers = lock(&self.followers);
        let mut out = Output::new(data);
        followers.retain(|q| {
            let Some(q) = q.upgrade() else {
                return false;
            };
            match q.push(&mut out, no_direct) {
                Pushed::Sent => true,
                Pushed::Queued { dropped, .. } => {
                    self.followers_dropped.fetch_add(dropped as u64, Relaxed);
                    true
                }
                Pushed::Closed => false,
            }
        });
    }

    /// A new follower: its queue starts with the log's last `replay` bytes
    /// and then gets every write, for as long as the caller keeps it.
    pub fn follow(&self, replay: usize, cap: usize) -> Result<Arc<OutputQueue>, RotatorError> {
        let queue = Arc::new(OutputQueue::new(cap, SlowPolicy::Drop));
        self.with_file(|f| {
            queue.start_with(f.tail(replay)?);
            let mut followers = lock(&self.followers);
            // Followers that left are forgotten here too, so that a log no
            // one writes does not collect them.
            followers.retain(|q| q.strong_count() > 0);
            followers.push(Arc::downgrade(&queue));
            Ok(())
        })?;
        Ok(queue)
    }

    /// Lets a pipe task be asked to read its pipe dry (`drain_pipes`).
    pub fn add_drain(&self, requests: DrainRequests) {
        let mut drains = lock(&self.drains);
        drains.retain(|d| !d.is_closed());
        drains.push(requests);
    }

    /// Waits, for at most `limit`, until every pipe into this log has been
    /// read dry and what was in it written: what a writer put in the pipe
    /// before this call is then in the log. libvirt writes its header into
    /// QEMU's pipe and then asks for the log's end, which must come after it.
    pub async fn drain_pipes(&self, limit: Duration) {
        let waits: Vec<_> = lock(&self.drains)
            .iter()
            .filter_map(|d| {
                let (done, wait) = tokio::sync::oneshot::channel();
                d.try_send(done).ok().map(|()| wait)
            })
            .collect();
        let all = futures_util::future::join_all(waits);
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// The last `n` bytes of the log.
    pub fn tail(&self, n: usize) -> Result<Vec<u8>, RotatorError> {
        self.with_file(|f| f.tail(n))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes that followers missed by falling behind.
    pub fn followers_dropped(&self) -> u64 {
        self.followers_dropped.load(Relaxed)
    }

    fn warn_dropped(&self, e: &RotatorError) {
        if due(&self.last_warning) {
            let dropped = self.stats.bytes_dropped.load(Relaxed);
            warn!(log = %self.name, dropped, error = %error_chain(e), "log bytes dropped");
        }
    }

    fn warn_skipped(&self, skipped: &[Skipped]) {
        if due(&self.last_skip_warning) {
            let first = &skipped[0];
            warn!(
                log = %self.name,
                path = %first.path.display(),
                found = %first.found,
                more = skipped.len() - 1,
                "skipped what is not a log file of ours at a backup's name"
            );
        }
    }

    pub fn snapshot(&self) -> LogSnapshot {
        let s = &self.stats;
        LogSnapshot {
            name: self.name.clone(),
            path: self.path.clone(),
            size: s.size.load(Relaxed),
            backups: s.backups.load(Relaxed),
            policy: Policy {
                max_size: s.max_size.load(Relaxed),
                max_backups: s.max_backups.load(Relaxed) as u32,
            },
            pipes: self.pipes.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            bytes_dropped: s.bytes_dropped.load(Relaxed),
            rotations: s.rotations.load(Relaxed),
        }
    }
}

/// Every known log, and the daemon-wide pipe count.
#[derive(Debug)]
pub struct Registry {
    dir: PathBuf,
    /// `dir`, held open once it could be: every log file is opened in it.
    log_dir: Mutex<Option<Arc<LogDir>>>,
    /// The directories of path-addressed logs, each opened once.
    path_dirs: Mutex<BTreeMap<PathBuf, Arc<LogDir>>>,
    defaults: Policy,
    logs: Mutex<BTreeMap<LogName, Arc<Log>>>,
    pipes: AtomicUsize,
    max_pipes: usize,
    /// Every long-lived descriptor, for the next guestlogd.
    store: Arc<FdStore>,
    /// Something the saved state describes has changed.
    changed: Notify,
    /// A planned stop hands descriptors over instead of finishing them.
    handing_over: AtomicBool,
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
    pub fn new(dir: PathBuf, defaults: Policy, max_pipes: usize, store: Arc<FdStore>) -> Self {
        Self {
            dir,
            log_dir: Mutex::new(None),
            path_dirs: Mutex::default(),
            defaults,
            logs: Mutex::new(BTreeMap::new()),
            pipes: AtomicUsize::new(0),
            max_pipes,
            store,
            changed: Notify::new(),
            handing_over: AtomicBool::new(false),
        }
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

    /// Reopens a log a previous guestlogd had, with its policy and counters.
    pub fn restore(&self, saved: &LogState) -> Result<Arc<Log>, RotatorError> {
        let name = LogName::parse(&saved.name).map_err(|e| RotatorError::Open {
            path: self.dir.join(&saved.name),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let log = self.open(
            &name,
            Some(saved.policy.max_size),
            Some(saved.policy.max_backups),
        )?;
        log.with_file(|f| {
            f.restore_counters(saved.bytes_written, saved.bytes_dropped, saved.rotations);
            Ok(())
        })?;
        log.followers_dropped
            .store(saved.followers_dropped, Relaxed);
        Ok(log)
    }

    pub fn get(&self, name: &LogName) -> Option<Arc<Log>> {
        lock(&self.logs).get(name).cloned()
    }

    /// The log called `name`, opened with the default policy if it is new.
    /// A given `max_size` or `max_backups` replaces the log's, new or not.
    pub fn open(
        &self,
        name: &LogName,
        max_size: Option<u64>,
        max_backups: Option<u32>,
    ) -> Result<Arc<Log>, RotatorError> {
        let with = |p: Policy| Policy {
            max_size: max_size.unwrap_or(p.max_size),
            max_backups: max_backups.unwrap_or(p.max_backups),
        };
        // The map stays locked while a new file opens, so two callers
        // cannot create the same log twice.
        let mut logs = lock(&self.logs);
        if let Some(log) = logs.get(name) {
            let log = log.clone();
            drop(logs);
            // Opened again only if someone removed or replaced its file or
            // directory; the check is two stats.
            let (dir, _) = self.place(name)?;
            log.with_file(|f| {
                if f.at_its_name(&dir) {
                    Ok(())
                } else {
                    f.reopen(dir)
                }
            })?;
            if max_size.is_some() || max_backups.is_some() {
                log.with_file(|f| f.set_policy(with(f.policy())))?;
            }
            return Ok(log);
        }
        let (dir, base) = self.place(name)?;
        let log = Arc::new(Log::open(dir, base, name, with(self.defaults))?);
        logs.insert(name.clone(), log.clone());
        Ok(log)
    }

    /// The log directory, opened on first use (and retried after a
    /// failure), so that `new` cannot fail.
    /// Where a log's file lives: `LOGDIR/NAME.log` for a plain name, the
    /// very file for a path-addressed one.
    fn place(&self, name: &LogName) -> Result<(Arc<LogDir>, BaseName), RotatorError> {
        let Some(path) = name.as_path() else {
            return Ok((self.log_dir()?, BaseName::for_log(name)));
        };
        let (parent, base) = BaseName::split(path).map_err(|e| RotatorError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let mut dirs = lock(&self.path_dirs);
        if let Some(d) = dirs.get(parent)
            && d.still_at_path()
        {
            return Ok((d.clone(), base));
        }
        let opened = Arc::new(LogDir::open(parent)?);
        dirs.insert(parent.to_owned(), opened.clone());
        Ok((opened, base))
    }

    fn log_dir(&self) -> Result<Arc<LogDir>, RotatorError> {
        let mut dir = lock(&self.log_dir);
        if let Some(d) = &*dir {
            return Ok(d.clone());
        }
        let opened = Arc::new(LogDir::open(&self.dir)?);
        *dir = Some(opened.clone());
        Ok(opened)
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

    pub fn logs(&self) -> Vec<Arc<Log>> {
        lock(&self.logs).values().cloned().collect()
    }
}

/// True at most once per `WARN_EVERY` for each `last`.
fn due(last: &Mutex<Option<Instant>>) -> bool {
    let mut last = lock(last);
    let due = last.is_none_or(|t| t.elapsed() >= WARN_EVERY);
    if due {
        *last = Some(Instant::now());
    }
    due
}

/// Locks a mutex, taking the data even if a thread panicked while holding
/// it: every holder leaves the data consistent between calls.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
