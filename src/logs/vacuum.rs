//! `Vacuum`: what keeps the logs' files within the host's means —
//! retention (`[log] max-age-days`) and the disk budget (`[disk] max-use`,
//! `keep-free`).
//!
//! Retention runs at start and every hour: a chain of files (`inventory`)
//! whose newest file is older than the age, and whose log no one uses, is
//! removed whole and its log forgotten, as virtlogd's cleaner does.
//!
//! The budget is enforced as logs grow: every write counts (`Usage`), and
//! each time the logs have written a sixty-fourth of `max-use` the task
//! looks at what is on disk. Over `max-use`, or with less than `keep-free`
//! left on a file system that holds logs, it removes the oldest backups
//! across all logs first (oldest modification first), then the current
//! files of logs no one uses; the current file of a log in use is never
//! removed. A registered log's files are removed in that log's own job, so
//! never under a rotation. What goes is counted (`bytesEvicted` per log,
//! and here) and logged, rate-limited. After it, the logs take at most
//! `max-use`, plus what they wrote while it ran.
//!
//! Only what `inventory` lists is ever removed: our own regular files at
//! names we give them, through their directory's descriptor.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use super::{
    inventory::{self, Chain},
    log::Wait,
    registry::Registry,
};

/// How often retention looks.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// What the budget and retention are set to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes over all logs' files; 0 is none.
    pub max_use: u64,
    /// Bytes left free on each file system holding logs; 0 is none.
    pub keep_free: u64,
    /// Days after which a log no one uses is removed; 0 is never.
    pub max_age_days: u64,
}

impl Limits {
    pub fn budget(&self) -> bool {
        self.max_use > 0 || self.keep_free > 0
    }

    /// Growth between two looks: a sixty-fourth of the budget, from 64 KiB
    /// to 64 MiB.
    pub fn slack(&self) -> u64 {
        let base = if self.max_use > 0 {
            self.max_use
        } else {
            self.keep_free
        };
        (base / 64).clamp(64 << 10, 64 << 20)
    }
}

/// What the vacuum did, for GetStatus.
#[derive(Debug, Default)]
pub struct Figures {
    /// At the last look; `u64::MAX` before the first.
    pub used: AtomicU64,
    pub bytes_evicted: AtomicU64,
    pub files_evicted: AtomicU64,
    pub logs_expired: AtomicU64,
    pub files_expired: AtomicU64,
}

/// Retention and the disk budget over one registry's logs.
#[derive(Debug)]
pub struct Vacuum {
    registry: Arc<Registry>,
    limits: Limits,
    pub figures: Figures,
}

impl Vacuum {
    pub fn new(registry: Arc<Registry>, limits: Limits) -> Self {
        let figures = Figures::default();
        figures.used.store(u64::MAX, Relaxed);
        Self {
            registry,
            limits,
            figures,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs until `stop`: retention at once and hourly, the budget at once
    /// and whenever the logs have grown by the slack.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.limits.max_age_days == 0 && !self.limits.budget() {
            return;
        }
        let mut hourly = tokio::time::interval(EXPIRE_EVERY);
        let usage = self.registry.usage().clone();
        let mut first = true;
        loop {
            let expire = tokio::select! {
                () = stop.cancelled() => return,
                _ = hourly.tick() => true,
                () = usage.grown(), if self.limits.budget() => false,
            };
            usage.take();
            if (expire || first) && self.limits.max_age_days > 0 {
                self.expire().await;
            }
            if self.limits.budget() {
                self.enforce().await;
            }
            first = false;
        }
    }

    /// Removes the chains older than the age whose logs no one uses.
    pub async fn expire(&self) {
        let places = self.registry.places().clone();
        let Ok(chains) = tokio::task::spawn_blocking(move || inventory::scan(&places)).await else {
            return;
        };
        let age = Duration::from_secs(self.limits.max_age_days * 86_400);
        let cutoff = SystemTime::now()
            .checked_sub(age)
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(i64::MIN, |d| d.as_secs() as i64);
        for chain in chains.into_iter().filter(|c| c.newest() < cutoff) {
            // A chain whose name is no log's is still ours (we only list
            // our own files at our names); no log can be using it.
            if let Some(name) = &chain.log
                && !self.registry.forget_if_unused(name)
            {
                continue;
            }
            let files = remove_files(&chain, chain.files.iter().map(|f| f.name.as_str()));
            if files > 0 {
                self.figures.logs_expired.fetch_add(1, Relaxed);
                self.figures.files_expired.fetch_add(files, Relaxed);
                crate::limited!(
                    info,
                    log = %chain.dir.display(&chain.base).display(),
                    files,
                    days = self.limits.max_age_days,
                    "removed a log older than max-age-days"
                );
            }
        }
    }

    /// Looks at what is on disk and removes what the budget asks for.
    pub async fn enforce(&self) {
        let places = self.registry.places().clone();
        let Ok(chains) = tokio::task::spawn_blocking(move || inventory::scan(&places)).await else {
            return;
        };
        let mut used: u64 = chains.iter().map(Chain::bytes).sum();
        self.figures.used.store(used, Relaxed);
        let mut short = self.short_of_free(&chains);
        let over = |used: u64, short: &Vec<(u64, u64)>| {
            (self.limits.max_use > 0 && used > self.limits.max_use)
                || short.iter().any(|(_, n)| *n > 0)
        };
        if !over(used, &short) {
            return;
        }
        // Oldest backups first, across all logs; then current files.
        let mut candidates: Vec<(bool, i64, usize, usize)> = Vec::new();
        for (c, chain) in chains.iter().enumerate() {
            for (f, file) in chain.files.iter().enumerate() {
                candidates.push((file.backup.is_none(), file.mtime, c, f));
            }
        }
        candidates.sort();
        let (mut bytes, mut files) = (0, 0);
        for (current, _, c, f) in candidates {
            if !over(used, &short) {
                break;
            }
            let (chain, file) = (&chains[c], &chains[c].files[f]);
            let wanted = (self.limits.max_use > 0 && used > self.limits.max_use)
                || short.iter().any(|(dev, n)| *dev == chain.device && *n > 0);
            if !wanted {
                continue;
            }
            let removed = if current {
                self.evict_current(chain, file).await
            } else {
                self.evict_backup(chain, file).await
            };
            if !removed {
                continue;
            }
            used = used.saturating_sub(file.size);
            for (dev, n) in &mut short {
                if *dev == chain.device {
                    *n = n.saturating_sub(file.size);
                }
            }
            bytes += file.size;
            files += 1;
        }
        self.figures.used.store(used, Relaxed);
        self.figures.bytes_evicted.fetch_add(bytes, Relaxed);
        self.figures.files_evicted.fetch_add(files, Relaxed);
        if files > 0 {
            crate::limited!(
                info,
                message_id = crate::logging::events::EVICTION,
                files,
                bytes,
                used,
                max_use = self.limits.max_use,
                keep_free = self.limits.keep_free,
                "removed the oldest log files to keep the disk budget"
            );
        }
        // Re-measured at the next look: keep-free counts other writers too.
        short = self.short_of_free(&chains);
        if short.iter().any(|(_, n)| *n > 0) {
            crate::limited!(
                warn,
                keep_free = self.limits.keep_free,
                "a file system holding logs stays short of keep-free: nothing more of ours to remove"
            );
        }
    }

    /// For each file system holding logs, how many bytes it is short of
    /// `keep-free`.
    fn short_of_free(&self, chains: &[Chain]) -> Vec<(u64, u64)> {
        if self.limits.keep_free == 0 {
            return Vec::new();
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        for chain in chains {
            if out.iter().any(|(dev, _)| *dev == chain.device) {
                continue;
            }
            if let Ok(free) = chain.dir.free_bytes() {
                out.push((chain.device, self.limits.keep_free.saturating_sub(free)));
            }
        }
        out
    }

    /// Removes a backup; a registered log's in its own job, so never
    /// under a rotation, and counted in its `bytesEvicted`.
    async fn evict_backup(&self, chain: &Chain, file: &inventory::File) -> bool {
        let log = chain.log.as_ref().and_then(|n| self.registry.get(n));
        let Some(log) = log else {
            return remove_files(chain, [file.name.as_str()]) > 0;
        };
        let (dir, name) = (chain.dir.clone(), file.name.clone());
        let removed = log
            .run(Wait::Call, move |_, slot| {
                let removed = matches!(dir.remove(&name), Ok(true));
                if let Some(f) = slot {
                    f.recount_backups();
                }
                Ok(removed)
            })
            .await
            .unwrap_or(false);
        if removed {
            log.evicted(file.size);
        }
        removed
    }

    /// Removes the current file of a log no one uses, and forgets the log.
    async fn evict_current(&self, chain: &Chain, file: &inventory::File) -> bool {
        if let Some(name) = &chain.log
            && !self.registry.forget_if_unused(name)
        {
            return false;
        }
        remove_files(chain, [file.name.as_str()]) > 0
    }
}

/// Removes these files of a chain through its directory; how many went.
fn remove_files<'a>(chain: &Chain, names: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut n = 0;
    for name in names {
        match chain.dir.remove(name) {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(_) => {
                crate::limited!(warn, file = %chain.dir.display(name).display(), "cannot remove a log file");
            }
        }
    }
    n
}
