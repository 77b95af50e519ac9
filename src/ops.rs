//! `Ops`: what guestlogd does, whichever front asked — open a pipe into a
//! log, append, read from a position, rotate, make and remove consoles,
//! follow a log.
//!
//! A front (`service` for varlink, `virtlogd` for libvirt's protocol) only
//! decodes, checks access, calls one of these and encodes the result, so
//! the same operation behaves the same from either: the same caps and
//! rotation, counters, FD store and saved state. Everything here may touch
//! the disk and blocks: fronts run it on a blocking thread. A change that
//! stores a descriptor saves the state before returning, so a crash right
//! after the caller hears of it keeps it (`restart`).

use std::{os::fd::OwnedFd, path::PathBuf, sync::Arc};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Limits,
    console::{Console, ConsoleError, Consoles, Owner, Settings},
    name::LogName,
    pipe,
    queue::{OutputQueue, SlowPolicy},
    registry::Registry,
    restart::Saver,
    rotator::{Chunk, Pos, RotatorError},
};

/// Why an operation failed; each front maps it to its own wire error.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no log {0}")]
    NoSuchLog(LogName),
    #[error("no console {0}")]
    NoSuchConsole(LogName),
    #[error("a console {0} exists already")]
    ConsoleExists(LogName),
    #[error("the limit of {max} {what} is reached")]
    Limit { what: &'static str, max: usize },
    #[error(transparent)]
    File(#[from] RotatorError),
    #[error("cannot create a pipe")]
    Pipe(#[source] std::io::Error),
    #[error("cannot create console {name}")]
    Console {
        name: LogName,
        #[source]
        source: ConsoleError,
    },
    #[error("a pipe into {0} is still open")]
    Busy(LogName),
}

/// How a new pipe treats its log.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipeOptions {
    pub policy: PolicyChange,
    /// Empty the log first.
    pub truncate: bool,
    /// With `truncate`, remove the backups too (virtlogd does).
    pub drop_backups: bool,
    /// Refuse while another pipe feeds the log (virtlogd's EBUSY: an old
    /// QEMU that has not exited yet).
    pub exclusive: bool,
}

/// How long GetLogFilePosition waits for the pipes to be read dry; a
/// writer that keeps its pipe full must not hold the call for ever.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A new pipe: its write end, and where its bytes begin in the log.
#[derive(Debug)]
pub struct Opened {
    pub fd: OwnedFd,
    pub path: PathBuf,
    /// The end of the log when the pipe was opened.
    pub position: Pos,
}

/// A policy change asked for with a call; `None` keeps what the log has.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyChange {
    pub max_size: Option<u64>,
    pub max_backups: Option<u32>,
}

/// What CreateConsole asks for, validated.
#[derive(Debug, Clone)]
pub struct ConsoleRequest {
    pub name: LogName,
    pub log: bool,
    pub policy: PolicyChange,
    pub replay: usize,
    pub slow: SlowPolicy,
    pub owner: Owner,
    pub viewers: bool,
    pub writers: crate::writers::Writers,
    /// The boot log's name and the bytes it keeps per guest connection.
    pub boot: Option<(LogName, u64)>,
}

/// The operations, over the daemon's shared state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ops {
    pub registry: Arc<Registry>,
    pub consoles: Arc<Consoles>,
    pub limits: Limits,
    /// Pipe tasks, so shutdown can wait for them to drain.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub saver: Arc<Saver>,
}

impl Ops {
    /// Creates a pipe into `name`'s log (created if new, with the given
    /// policy over the defaults).
    pub fn open_pipe(&self, name: &LogName, o: PipeOptions) -> Result<Opened, OpError> {
        let registry = &self.registry;
        let slot = registry.reserve_pipe().ok_or(OpError::Limit {
            what: "pipes",
            max: registry.max_pipes(),
        })?;
        let log = registry.open(name, o.policy.max_size, o.policy.max_backups)?;
        // Claimed before the file is touched: a refused caller must not
        // truncate it under the writer that has it.
        let guard = if o.exclusive {
            slot.bind_exclusive(log.clone())
                .map_err(|_| OpError::Busy(name.clone()))?
        } else {
            slot.bind(log.clone())
        };
        let position = log.with_file(|f| {
            if o.truncate {
                f.truncate()?;
                if o.drop_backups {
                    f.remove_backups()?;
                }
            }
            f.end()
        })?;
        let path = log.path().to_owned();
        let fd = pipe::open(guard, &self.tracker, self.shutdown.clone()).map_err(OpError::Pipe)?;
        self.saver.save_now();
        Ok(Opened { fd, path, position })
    }

    /// Appends `message` to `name`'s log, created if new.
    pub fn append(&self, name: &LogName, message: &[u8]) -> Result<(), OpError> {
        self.registry.open(name, None, None)?.write(message)?;
        Ok(())
    }

    /// Where `name`'s log ends once every pipe into it has been read dry.
    pub async fn position(&self, name: &LogName) -> Result<Pos, OpError> {
        let log = self.existing(name)?;
        log.drain_pipes(DRAIN_LIMIT).await;
        let pos = tokio::task::spawn_blocking(move || log.with_file(|f| f.end()))
            .await
            .map_err(|e| OpError::Pipe(std::io::Error::other(e)))??;
        Ok(pos)
    }

    /// Reads up to `max` bytes of `name`'s log from `from` (its oldest byte
    /// if `None`).
    pub fn read(&self, name: &LogName, from: Option<Pos>, max: usize) -> Result<Chunk, OpError> {
        let log = self.existing(name)?;
        Ok(log.with_file(|f| f.read(from, max))?)
    }

    pub fn rotate(&self, name: &LogName) -> Result<(), OpError> {
        self.existing(name)?.with_file(|f| f.rotate())?;
        Ok(())
    }

    /// Starts following `name`'s log: a queue that begins with its last
    /// `replay` bytes and then gets every write.
    pub fn follow(&self, name: &LogName, replay: usize) -> Result<Arc<OutputQueue>, OpError> {
        let log = self.existing(name)?;
        Ok(log.follow(replay, self.limits.client_queue)?)
    }

    /// Refuses a console that cannot be made, before anything is created.
    pub fn check_console(&self, name: &LogName) -> Result<(), OpError> {
        if self.consoles.get(name).is_some() {
            return Err(OpError::ConsoleExists(name.clone()));
        }
        if self.consoles.all().len() >= self.consoles.max() {
            return Err(OpError::Limit {
                what: "consoles",
                max: self.consoles.max(),
            });
        }
        Ok(())
    }

    /// Makes a console and its log. Must run inside the runtime.
    pub fn create_console(&self, r: ConsoleRequest) -> Result<Arc<Console>, OpError> {
        self.check_console(&r.name)?;
        let log = r
            .log
            .then(|| {
                self.registry
                    .open(&r.name, r.policy.max_size, r.policy.max_backups)
            })
            .transpose()?;
        let boot = r
            .boot
            .as_ref()
            .map(|(name, bytes)| crate::boot::open(&self.registry, name, *bytes))
            .transpose()?;
        let name = r.name.clone();
        let console = self
            .consoles
            .create(Settings {
                name: r.name,
                log,
                replay: r.replay,
                slow: r.slow,
                owner: r.owner,
                viewers: r.viewers,
                queue: self.limits.client_queue,
                max_clients: self.limits.max_clients,
                registry: self.registry.clone(),
                writers: r.writers,
                boot,
                boot_bytes: r.boot.as_ref().map_or(0, |(_, n)| *n),
            })
            .map_err(|source| match source {
                ConsoleError::Exists(name) => OpError::ConsoleExists(name),
                ConsoleError::Limit(max) => OpError::Limit {
                    what: "consoles",
                    max,
                },
                source => OpError::Console { name, source },
            })?;
        self.saver.save_now();
        Ok(console)
    }

    /// Closes a console's connections and removes its sockets; its log
    /// stays.
    pub async fn remove_console(&self, name: &LogName) -> Result<(), OpError> {
        if self.consoles.remove(name).await {
            Ok(())
        } else {
            Err(OpError::NoSuchConsole(name.clone()))
        }
    }

    fn existing(&self, name: &LogName) -> Result<Arc<crate::registry::Log>, OpError> {
        self.registry
            .get(name)
            .ok_or_else(|| OpError::NoSuchLog(name.clone()))
    }
}
