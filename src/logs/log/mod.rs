//! `Log`: one log the daemon knows — its file, when open, its figures, and
//! who feeds and follows it.
//!
//! Every file operation runs as a job on a blocking thread, never on the
//! async workers, and a log runs one job at a time. A job waits for the
//! log's turn asynchronously, so a disk that hangs holds one blocking
//! thread per stuck log and nothing else: other logs, consoles and calls
//! go on, and a caller of a stuck log gets an error after `CALL_WAIT`
//! instead of waiting with it. (A writer thread per log would cost a
//! thread per idle log too; `spawn_blocking` keeps a pool sized by what is
//! busy. io_uring would still block in `openat` on a hung NFS mount.)
//!
//! The file is opened on first use and closed when no one uses the log
//! (`Registry::close_idle`), so descriptors follow what is active, not
//! every log ever touched. Its figures live in atomics, published after
//! each job, so ListLogs and the saved state never wait for a job, and a
//! closed file reopens with them.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::sync::OwnedMutexGuard;
use tracing::warn;

pub use super::figures::{Counters, JournalFigures, LogSnapshot};
mod export;
mod hop;
mod shaping;
mod splice;

use super::{
    figures::Stats,
    gap::{Gaps, Reason},
    journal::export::{Export, Shared},
    migration::HopState,
    name::LogName,
    places::Places,
    policy::Policy,
    queue::{Output, OutputQueue, Pushed, SlowPolicy, no_direct},
    rate::{Bucket, Limit},
    rotator::{RotatingFile, RotatorError, Skipped},
    usage::Usage,
};
use crate::{error_chain, lock};

/// How long a caller waits for its turn on a log before it is told the
/// log's file does not answer. Pipes and consoles wait for as long as it
/// takes: their writers are held by the kernel meanwhile, losing nothing.
pub const CALL_WAIT: Duration = Duration::from_secs(10);

/// The most file jobs that run at once, over all logs: the blocking
/// threads, each with its read buffer. As many logs may hang at once
/// before the others' jobs have to wait for a thread.
pub const MAX_JOBS: usize = 128;

const WARN_EVERY: Duration = Duration::from_secs(10);

/// A log whose file no job has used for this long closes it, whoever holds
/// the log (an idle console, a pipe that says nothing): descriptors follow
/// what is active. The next job opens it again.
pub const IDLE_AFTER: Duration = Duration::from_secs(5);

/// Whose turn it is to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A call: at most `CALL_WAIT`.
    Call,
    /// A pipe or a console: until the disk answers.
    Forever,
}

/// The log's file, open or not; guarded by the log's turn.
pub type Slot = Option<RotatingFile>;

/// One log: see the module doc.
#[derive(Debug)]
pub struct Log {
    name: LogName,
    path: PathBuf,
    places: Arc<Places>,
    file: Arc<tokio::sync::Mutex<Slot>>,
    stats: Stats,
    /// The file is open (a mirror of the slot, read without the turn).
    open: AtomicBool,
    /// The file was opened once: a log that never was is forgotten when
    /// its first opening fails, so a refused call leaves nothing behind.
    opened_once: AtomicBool,
    /// A console's boot log (`consoles::boot`), not a log of its own.
    boot: AtomicBool,
    /// When the log was last used, in seconds since the registry began.
    last_used: AtomicU64,
    epoch: Instant,
    /// Open pipes into this log; owned by `PipeGuard`s.
    pub(crate) pipes: AtomicUsize,
    /// Failures a guest can cause are logged at most once per `WARN_EVERY`.
    last_warning: Mutex<Option<Instant>>,
    /// A local user decides how often planted backups appear.
    last_skip_warning: Mutex<Option<Instant>>,
    /// Follow streams; each gets every write, without ever slowing it.
    /// Weak: the stream owns its queue, so a follower that leaves frees it
    /// at once, even if the log is never written again.
    followers: Mutex<Vec<Weak<OutputQueue>>>,
    followers_dropped: AtomicU64,
    /// One per pipe task feeding this log: asks it to read its pipe dry,
    /// or to finish if its writers are gone.
    drains: Mutex<Vec<PipeRequests>>,
    /// Bytes that did not reach the file, to be marked in it.
    gaps: Mutex<Gaps>,
    /// The rate limit.
    bucket: Mutex<Bucket>,
    /// Where writes are counted for the disk budget.
    usage: Arc<Usage>,
    /// The journal export's figures and settings, read without the turn.
    journal: Arc<Shared>,
    /// The journal export, when on; used in the log's jobs (and by the
    /// journal's tick, which only tries).
    export: Mutex<Option<Export>>,
    /// Its domain's migrations (`hop`).
    hop: Mutex<HopState>,
}

/// Where a pipe task takes requests; each is answered once done.
pub type PipeRequests = tokio::sync::mpsc::Sender<PipeRequest>;

/// What a pipe task can be asked, beside its own work.
#[derive(Debug)]
pub enum PipeRequest {
    /// Read the pipe dry: what its writers put in it before now is then in
    /// the log.
    Drain(tokio::sync::oneshot::Sender<()>),
    /// If every writer has closed the pipe, read it to its end and finish,
    /// answering true once the pipe no longer counts against the log.
    FinishIfEnded(tokio::sync::oneshot::Sender<bool>),
}

impl Log {
    /// A log whose file is not open yet: no I/O.
    pub(crate) fn new(
        name: LogName,
        path: PathBuf,
        places: Arc<Places>,
        policy: Policy,
        counters: Counters,
        epoch: Instant,
        usage: Arc<Usage>,
    ) -> Self {
        let stats = Stats::new(policy, &counters);
        let limit = Limit {
            rate: policy.max_rate,
            burst: policy.max_burst,
        };
        let log = Self {
            name,
            path,
            places,
            file: Arc::new(tokio::sync::Mutex::new(None)),
            stats,
            open: AtomicBool::new(false),
            opened_once: AtomicBool::new(false),
            boot: AtomicBool::new(false),
            last_used: AtomicU64::new(0),
            epoch,
            pipes: AtomicUsize::new(0),
            last_warning: Mutex::new(None),
            last_skip_warning: Mutex::new(None),
            followers: Mutex::default(),
            followers_dropped: AtomicU64::new(counters.followers_dropped),
            drains: Mutex::default(),
            gaps: Mutex::new(counters.gaps),
            bucket: Mutex::new(Bucket::new(limit, Instant::now())),
            usage,
            journal: Arc::default(),
            export: Mutex::new(None),
            hop: Mutex::new(counters.hop),
        };
        log.touch();
        log
    }

    pub fn name(&self) -> &LogName {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `job` on a blocking thread in this log's turn, with the file
    /// slot (open or not), then publishes the figures, whether it failed
    /// or not.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        wait: Wait,
        job: impl FnOnce(&Log, &mut Slot) -> Result<T, RotatorError> + Send + 'static,
    ) -> Result<T, RotatorError> {
        let turn = self.turn(wait).await?;
        let log = self.clone();
        tokio::task::spawn_blocking(move || log.in_turn(turn, job))
            .await
            .unwrap_or_else(|e| {
                Err(RotatorError::Job {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })
            })
    }

    /// Runs `f` on the open file in this log's turn (see `run`).
    pub async fn with_file<T: Send + 'static>(
        self: &Arc<Self>,
        wait: Wait,
        f: impl FnOnce(&mut RotatingFile) -> Result<T, RotatorError> + Send + 'static,
    ) -> Result<T, RotatorError> {
        self.run(wait, move |log, slot| f(log.file(slot)?)).await
    }

    async fn turn(&self, wait: Wait) -> Result<OwnedMutexGuard<Slot>, RotatorError> {
        let turn = self.file.clone().lock_owned();
        match wait {
            Wait::Forever => Ok(turn.await),
            Wait::Call => {
                tokio::time::timeout(CALL_WAIT, turn)
                    .await
                    .map_err(|_| RotatorError::Stalled {
                        path: self.path.clone(),
                        secs: CALL_WAIT.as_secs(),
                    })
            }
        }
    }

    /// The blocking half of `run`.
    fn in_turn<T>(
        &self,
        mut slot: OwnedMutexGuard<Slot>,
        job: impl FnOnce(&Log, &mut Slot) -> Result<T, RotatorError>,
    ) -> Result<T, RotatorError> {
        self.touch();
        let result = job(self, &mut slot);
        self.publish(&mut slot);
        result
    }

    /// The open file, opened now (at its name, with the log's policy and
    /// counters) if it was closed.
    pub fn file<'a>(&self, slot: &'a mut Slot) -> Result<&'a mut RotatingFile, RotatorError> {
        match slot {
            Some(file) => Ok(file),
            None => {
                let s = &self.stats;
                let policy = s.policy();
                let (dir, base) = self.places.place(&self.name)?;
                let mut file = RotatingFile::open(dir, base, policy)?;
                let rotated = file.rotations();
                file.restore_counters(
                    s.bytes_written.load(Relaxed),
                    s.bytes_dropped.load(Relaxed),
                    s.rotations.load(Relaxed) + rotated,
                );
                self.open.store(true, Relaxed);
                self.opened_once.store(true, Relaxed);
                Ok(slot.insert(file))
            }
        }
    }

    /// The file, opened again if someone removed or replaced it (or its
    /// directory) since: the next bytes then go to a file that can be
    /// found, as virtlogd's do. Two stats when nothing changed.
    pub fn placed_file<'a>(
        &self,
        slot: &'a mut Slot,
    ) -> Result<&'a mut RotatingFile, RotatorError> {
        if let Some(file) = slot.as_mut() {
            let (dir, _) = self.places.place(&self.name)?;
            if !file.at_its_name(&dir) {
                file.reopen(dir)?;
            }
        }
        self.file(slot)
    }

    /// Closes the file if no job runs and no one but the registry (and the
    /// caller) holds the log, or no job has used it for `IDLE_AFTER`; it
    /// reopens on demand.
    pub(crate) fn close_if_unused(self: &Arc<Self>, holders: usize) {
        if Arc::strong_count(self) > holders && !self.idle() {
            return;
        }
        let Ok(mut slot) = self.file.clone().try_lock_owned() else {
            return;
        };
        if let Some(file) = slot.take() {
            self.open.store(false, Relaxed);
            // close(2) may flush, and block on a slow disk.
            tokio::task::spawn_blocking(move || drop((file, slot)));
        }
    }

    /// Marks the log as a console's boot log.
    pub fn mark_boot(&self) {
        self.boot.store(true, Relaxed);
    }

    pub fn is_boot(&self) -> bool {
        self.boot.load(Relaxed)
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Relaxed)
    }

    pub(crate) fn opened_once(&self) -> bool {
        self.opened_once.load(Relaxed)
    }

    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Relaxed)
    }

    /// No job has used the file for `IDLE_AFTER`.
    pub(crate) fn idle(&self) -> bool {
        self.epoch.elapsed().as_secs() >= self.last_used() + IDLE_AFTER.as_secs()
    }

    fn touch(&self) {
        self.last_used
            .store(self.epoch.elapsed().as_secs(), Relaxed);
    }

    fn publish(&self, slot: &mut Slot) {
        let Some(file) = slot else {
            return;
        };
        let skipped = file.take_skipped();
        if !skipped.is_empty() {
            self.warn_skipped(&skipped);
        }
        let before = self.stats.policy();
        self.stats.publish(file);
        let after = file.policy();
        if (before.max_rate, before.max_burst) != (after.max_rate, after.max_burst) {
            let limit = Limit {
                rate: after.max_rate,
                burst: after.max_burst,
            };
            lock(&self.bucket).set_limit(limit, Instant::now());
        }
    }

    /// Appends bytes a guest or caller sent, in a job's turn, and hands
    /// them to followers. A failure (the file cannot even be opened
    /// included) is counted in `bytesDropped`, logged, rate-limited, and
    /// marked in the log at the next write that succeeds (`gap`).
    pub fn write_in(&self, slot: &mut Slot, data: &[u8]) -> Result<(), RotatorError> {
        self.write_arrival(slot);
        let result = match self.file(slot) {
            Ok(f) => {
                self.write_gaps(f);
                let before = f.bytes_dropped();
                let written = f.write(data);
                if let Err(e) = &written {
                    self.gap(Reason::of(e), f.bytes_dropped() - before);
                }
                written
            }
            Err(e) => {
                // Counted where a reopened file will find it.
                self.stats
                    .bytes_dropped
                    .fetch_add(data.len() as u64, Relaxed);
                self.gap(Reason::of(&e), data.len() as u64);
                Err(e)
            }
        };
        self.usage.grew(data.len() as u64);
        // In the turn, so a follower's replay and its first live bytes
        // meet exactly.
        self.fan_out(data);
        if let Err(e) = &result {
            self.publish(slot);
            self.warn_dropped(e);
        }
        if result.is_ok() && self.journal.on.load(Relaxed) {
            self.export_in(slot);
        }
        result
    }

    /// Appends `data` (see `write_in`).
    pub async fn write(
        self: &Arc<Self>,
        wait: Wait,
        data: bytes::Bytes,
    ) -> Result<(), RotatorError> {
        self.run(wait, move |log, slot| log.write_in(slot, &data))
            .await
    }

    fn fan_out(&self, data: &[u8]) {
        let mut followers = lock(&self.followers);
        if followers.is_empty() {
            return;
        }
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
                // Never asked to wait: a follower never slows the log.
                Pushed::Full => true,
            }
        });
    }

    /// A new follower: its queue starts with the log's last `replay` bytes
    /// and then gets every write, for as long as the caller keeps it.
    pub async fn follow(
        self: &Arc<Self>,
        replay: usize,
        cap: usize,
    ) -> Result<Arc<OutputQueue>, RotatorError> {
        let queue = Arc::new(OutputQueue::new(cap, SlowPolicy::Drop));
        let q = queue.clone();
        self.run(Wait::Call, move |log, slot| {
            let tail = match replay {
                0 => Vec::new(),
                n => log.file(slot)?.tail(n)?,
            };
            q.start_with(tail);
            let mut followers = lock(&log.followers);
            // Followers that left are forgotten here too, so that a log no
            // one writes does not collect them.
            followers.retain(|q| q.strong_count() > 0);
            followers.push(Arc::downgrade(&q));
            Ok(())
        })
        .await?;
        Ok(queue)
    }

    /// The last `n` bytes of the log.
    pub async fn tail(self: &Arc<Self>, wait: Wait, n: usize) -> Result<Vec<u8>, RotatorError> {
        self.with_file(wait, move |f| f.tail(n)).await
    }

    /// Lets a pipe task be asked to read its pipe dry (`drain_pipes`) or
    /// to finish (`finish_ended_pipes`).
    pub fn add_drain(&self, requests: PipeRequests) {
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
                d.try_send(PipeRequest::Drain(done)).ok().map(|()| wait)
            })
            .collect();
        let all = futures_util::future::join_all(waits);
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Finishes, within `limit`, every pipe into this log whose writers
    /// have all closed it but whose end its task has not read yet (a QEMU
    /// that just exited): their bytes go into the log and they stop
    /// counting against it. Pipes with a writer left are not touched.
    pub async fn finish_ended_pipes(&self, limit: Duration) {
        let waits: Vec<_> = lock(&self.drains)
            .iter()
            .filter_map(|d| {
                let (done, wait) = tokio::sync::oneshot::channel();
                d.try_send(PipeRequest::FinishIfEnded(done))
                    .ok()
                    .map(|()| wait)
            })
            .collect();
        let all = futures_util::future::join_all(waits);
        let _ = tokio::time::timeout(limit, all).await;
    }

    /// Bytes that followers missed by falling behind.
    pub fn followers_dropped(&self) -> u64 {
        self.followers_dropped.load(Relaxed)
    }

    pub fn pipes(&self) -> usize {
        self.pipes.load(Relaxed)
    }

    fn warn_dropped(&self, e: &RotatorError) {
        if due(&self.last_warning) {
            let dropped = self.stats.bytes_dropped.load(Relaxed);
            warn!(
                message_id = crate::logging::events::DISK_ERROR,
                log = %self.name,
                dropped,
                error = %error_chain(e),
                "log bytes dropped"
            );
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
            policy: s.policy(),
            pipes: self.pipes.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            bytes_dropped: s.bytes_dropped.load(Relaxed),
            bytes_suppressed: s.bytes_suppressed.load(Relaxed),
            bytes_evicted: s.bytes_evicted.load(Relaxed),
            rotations: s.rotations.load(Relaxed),
            followers_dropped: self.followers_dropped.load(Relaxed),
            gaps: lock(&self.gaps).clone(),
            journal: self.journal.on.load(Relaxed).then(|| JournalFigures {
                lines_sent: self.journal.sent.load(Relaxed),
                lines_suppressed: self.journal.suppressed.load(Relaxed),
            }),
        }
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
