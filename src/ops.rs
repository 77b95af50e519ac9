//! `Ops`: what guestlogd does, whichever front asked — open a pipe into a
//! log, append, read from a position, rotate, make and remove consoles,
//! follow a log.
//!
//! A front (`fronts::varlink`, or `fronts::virtlogd` for libvirt's
//! protocol) only decodes, checks access, calls one of these and encodes
//! the result, so the same operation behaves the same from either: the
//! same caps and rotation, counters, FD store and saved state. File work
//! runs in each log's jobs, never on the caller's task. A change that
//! stores a descriptor saves the state before returning, so a crash right
//! after the caller hears of it keeps it (`handover::restart`).

use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::Arc,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::Limits,
    consoles::{
        boot,
        console::{Console, ConsoleError, Domain, Owner, RemoveError, Settings},
        table::Consoles,
        writers::Writers,
    },
    handover::{restart::Saver, virtlogd::origins::Origin},
    logs::{
        journal::{
            Journal,
            export::{Kind, Settings as JournalSettings},
        },
        log::{Log, Slot, Wait},
        migration::LogDomain,
        name::LogName,
        pipe,
        policy::PolicyChange,
        queue::{OutputQueue, SlowPolicy},
        registry::{Registry, RegistryError},
        rotator::{Chunk, Pos, RotatingFile, RotatorError},
        seats::Seat,
        vacuum::Vacuum,
    },
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
    #[error("console {name} belongs to another domain")]
    ConsoleOwned {
        name: LogName,
        owner: Option<Domain>,
    },
    #[error("the log {0} exists and is not this console's boot log")]
    BootLogTaken(LogName),
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
    #[error(
        "cannot give console {0}'s sockets another owner: guestlogd runs without CAP_CHOWN \
         (in virtlogd.service's sandbox until the switch from virtlogd has finished)"
    )]
    NoChown(LogName),
}

/// How a new pipe treats its log.
#[derive(Debug, Clone, Default)]
pub struct PipeOptions {
    pub policy: PolicyChange,
    /// Empty the log first.
    pub truncate: bool,
    /// With `truncate`, remove the backups too (virtlogd does).
    pub drop_backups: bool,
    /// Refuse while another pipe feeds the log (virtlogd's EBUSY: an old
    /// QEMU that has not exited yet).
    pub exclusive: bool,
    /// A change to the log's journal export.
    pub journal: JournalRequest,
    /// The libvirt domain whose output the pipe carries, if known.
    pub domain: Option<LogDomain>,
    /// The domain arrives by live migration: its first byte in the log
    /// follows a line that says so (`logs::migration`).
    pub arrival: Option<String>,
    /// The driver and domain of libvirt's OpenLogFile, for a hand-back to
    /// virtlogd.
    pub libvirt: Option<Origin>,
}

/// What a call asks of a log's journal export.
#[derive(Debug, Clone, Default)]
pub struct JournalRequest {
    /// `Some(true)` exports, `Some(false)` stops; `None` keeps.
    pub on: Option<bool>,
    /// The machine, validated; `None` keeps what an earlier call gave.
    pub vm: Option<Machine>,
}

/// A virtual machine's name and UUID, validated by the front.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    pub name: Option<String>,
    pub uuid: Option<String>,
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
    pub writers: Writers,
    /// The boot log's name and the bytes it keeps per guest connection.
    pub boot: Option<(LogName, u64)>,
    /// The domain the console belongs to.
    pub domain: Option<Domain>,
    /// Export the console's log to the journal.
    pub journal: JournalRequest,
}

/// What GetStatus reports beyond the live figures.
#[derive(Debug)]
pub struct Status {
    pub started: std::time::SystemTime,
    /// How many times a guestlogd took over before this one.
    pub adoptions: u64,
    /// What this process took over from libvirt's virtlogd, if it started
    /// in virtlogd's place.
    pub from_virtlogd: Option<TakenFromVirtlogd>,
}

/// What a process took over from libvirt's virtlogd.
#[derive(Debug, Clone)]
pub struct TakenFromVirtlogd {
    /// The logs of virtlogd's pipes, by path.
    pub pipes: Vec<String>,
    /// libvirt's connections.
    pub clients: usize,
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
    /// Retention and the disk budget, for GetStatus.
    pub vacuum: Arc<Vacuum>,
    /// The journal that exporting logs send to.
    pub journal: Arc<Journal>,
}

impl Ops {
    /// Creates a pipe into `name`'s log (created if new, with the given
    /// policy over the defaults). Must run inside the runtime.
    pub async fn open_pipe(&self, name: &LogName, o: PipeOptions) -> Result<Opened, OpError> {
        let registry = &self.registry;
        let slot = registry.reserve_pipe().ok_or(OpError::Limit {
            what: "pipes",
            max: registry.max_pipes(),
        })?;
        let log = self.enter(name, o.policy)?;
        // Claimed before the file is touched: a refused caller must not
        // truncate it under the writer that has it.
        let guard = if o.exclusive {
            match slot.bind_exclusive(log.clone()) {
                Ok(guard) => guard,
                Err(slot) => {
                    // The pipe that holds the log may have ended a moment
                    // ago (its QEMU exited) with its end not yet read: it
                    // is finished first, and only a live one is busy.
                    log.finish_ended_pipes(DRAIN_LIMIT).await;
                    slot.bind_exclusive(log.clone())
                        .map_err(|_| OpError::Busy(name.clone()))?
                }
            }
        } else {
            slot.bind(log.clone())
        };
        let change = o.policy;
        self.journal_change(&log, &o.journal, Kind::Pipe);
        let (truncate, drop_backups) = (o.truncate, o.drop_backups);
        let position = log
            .run(Wait::Call, move |log, slot| {
                let f = log.placed_file(slot)?;
                f.change_policy(change)?;
                if truncate {
                    f.truncate()?;
                    if drop_backups {
                        f.remove_backups()?;
                    }
                }
                log.journal_begin(f, truncate);
                f.end()
            })
            .await;
        let position = match position {
            Ok(p) => p,
            Err(e) => {
                drop(guard);
                self.registry.forget_unopened(&log);
                return Err(e.into());
            }
        };
        if o.domain.is_some() {
            log.set_domain(o.domain);
        }
        if let Some(name) = &o.arrival {
            log.expect_arrival(name);
        }
        let path = log.path().to_owned();
        let fd = pipe::open(guard, &self.tracker, self.shutdown.clone()).map_err(OpError::Pipe)?;
        if let Some(origin) = o.libvirt {
            self.saver.origins.set(name.clone(), origin);
        }
        self.saver.save_now();
        Ok(Opened { fd, path, position })
    }

    /// Feeds `name`'s log from the read end of a pipe someone else made
    /// (libvirt's virtlogd, handing over in its process), as `open_pipe`
    /// would have: the same policy, journal export and origin. Must run
    /// inside the runtime; the caller saves the state once all are in.
    pub async fn adopt_pipe(
        &self,
        name: &LogName,
        read: OwnedFd,
        o: PipeOptions,
    ) -> Result<(), OpError> {
        let slot = self.registry.reserve_pipe().ok_or(OpError::Limit {
            what: "pipes",
            max: self.registry.max_pipes(),
        })?;
        let log = self.enter(name, o.policy)?;
        let guard = slot.bind(log.clone());
        self.journal_change(&log, &o.journal, Kind::Pipe);
        let change = o.policy;
        // The file opens now, appended to as virtlogd left it.
        let opened = log
            .run(Wait::Call, move |log, slot| {
                let f = log.placed_file(slot)?;
                f.change_policy(change)?;
                log.journal_begin(f, false);
                Ok(())
            })
            .await;
        if let Err(e) = opened {
            // The pipe is kept all the same: a log that cannot be written
            // counts what it drops, while a closed pipe loses all after.
            tracing::warn!(log = %name, error = %crate::error_chain(&e), "cannot open an adopted pipe's log");
        }
        let store = self.registry.store();
        let fd_name = format!("pipe/{}/{}", log.name().fd_part(), store.id());
        // No polling: a pipe whose writers are gone may still hold data.
        store.add(fd_name.clone(), read.as_fd(), false);
        if let Some(origin) = o.libvirt {
            self.saver.origins.set(name.clone(), origin);
        }
        pipe::adopt(
            fd_name.clone(),
            read,
            guard,
            &self.tracker,
            self.shutdown.clone(),
        )
        .map_err(|e| {
            store.remove(&fd_name);
            OpError::Pipe(e)
        })
    }

    /// Appends `message` to `name`'s log, created if new (with `policy`
    /// over the defaults then).
    pub async fn append(
        &self,
        name: &LogName,
        message: Vec<u8>,
        policy: PolicyChange,
    ) -> Result<(), OpError> {
        let log = self.enter(name, policy)?;
        self.first_use_with(&log, move |log, slot| {
            log.placed_file(slot)?;
            log.write_in(slot, &message)
        })
        .await?;
        Ok(())
    }

    /// Where `name`'s log ends once every pipe into it has been read dry.
    pub async fn position(&self, name: &LogName) -> Result<Pos, OpError> {
        let log = self.existing(name)?;
        log.drain_pipes(DRAIN_LIMIT).await;
        Ok(log.with_file(Wait::Call, |f| f.end()).await?)
    }

    /// Reads up to `max` bytes of `name`'s log from `from` (its oldest byte
    /// if `None`).
    pub async fn read(
        &self,
        name: &LogName,
        from: Option<Pos>,
        max: usize,
    ) -> Result<Chunk, OpError> {
        let log = self.existing(name)?;
        Ok(log
            .with_file(Wait::Call, move |f| f.read(from, max))
            .await?)
    }

    pub async fn rotate(&self, name: &LogName) -> Result<(), OpError> {
        let log = self.existing(name)?;
        log.with_file(Wait::Call, |f| f.rotate()).await?;
        Ok(())
    }

    /// Starts following `name`'s log: a queue that begins with its last
    /// `replay` bytes and then gets every write, and the log, which the
    /// follower holds so that it is not forgotten under it.
    pub async fn follow(
        &self,
        name: &LogName,
        replay: usize,
    ) -> Result<(Arc<OutputQueue>, Arc<Log>, Seat), OpError> {
        let log = self.existing(name)?;
        // A follower is a reader like a console client: one host-wide cap.
        let seats = self.registry.seats();
        let seat = seats.take().ok_or(OpError::Limit {
            what: "clientsTotal",
            max: seats.max(),
        })?;
        let queue = log.follow(replay, self.limits.client_queue).await?;
        Ok((queue, log, seat))
    }

    /// The log called `name`, entered if new: no I/O.
    fn enter(&self, name: &LogName, change: PolicyChange) -> Result<Arc<Log>, OpError> {
        let (log, _) = self.registry.entry(name, change).map_err(|e| match e {
            RegistryError::Full(max) => OpError::Limit { what: "logs", max },
            RegistryError::File(e) => OpError::File(e),
        })?;
        Ok(log)
    }

    /// Runs `f` on a log's file that a call has just entered or found,
    /// opened again at its name if it was replaced; a log whose file could
    /// never be opened is forgotten, so a refused call leaves nothing.
    async fn first_use<T: Send + 'static>(
        &self,
        log: &Arc<Log>,
        f: impl FnOnce(&mut RotatingFile) -> Result<T, RotatorError> + Send + 'static,
    ) -> Result<T, OpError> {
        self.first_use_with(log, move |log, slot| f(log.placed_file(slot)?))
            .await
    }

    async fn first_use_with<T: Send + 'static>(
        &self,
        log: &Arc<Log>,
        job: impl FnOnce(&Log, &mut Slot) -> Result<T, RotatorError> + Send + 'static,
    ) -> Result<T, OpError> {
        let result = log.run(Wait::Call, job).await;
        if result.is_err() {
            self.registry.forget_unopened(log);
        }
        Ok(result?)
    }

    /// Refuses a console that cannot be made, before anything is created:
    /// one past the limit, and one that exists. An existing console is
    /// `ConsoleExists` if it belongs to `domain`, or to no domain (made by
    /// hand, it then becomes `domain`'s, and that domain's release removes
    /// it), and `ConsoleOwned` if it belongs to another.
    pub fn check_console(&self, name: &LogName, domain: Option<&Domain>) -> Result<(), OpError> {
        if let Some(existing) = self.consoles.get(name) {
            return Err(self.exists(&existing, domain));
        }
        if self.consoles.all().len() >= self.consoles.max() {
            return Err(OpError::Limit {
                what: "consoles",
                max: self.consoles.max(),
            });
        }
        Ok(())
    }

    /// What a call that would make `existing` again is told; see
    /// `check_console`.
    fn exists(&self, existing: &Console, asked: Option<&Domain>) -> OpError {
        let name = existing.name.clone();
        match asked {
            Some(d) => {
                let before = existing.domain();
                if !existing.claim(d) {
                    return OpError::ConsoleOwned {
                        name,
                        owner: existing.domain(),
                    };
                }
                if before.is_none() {
                    tracing::info!(console = %name, domain = %d.name, uuid = %d.uuid, "console made by hand now belongs to its domain");
                    self.saver.save_now();
                }
                OpError::ConsoleExists(name)
            }
            None => OpError::ConsoleExists(name),
        }
    }

    /// Makes a console and its log. Must run inside the runtime.
    pub async fn create_console(&self, mut r: ConsoleRequest) -> Result<Arc<Console>, OpError> {
        self.check_console(&r.name, r.domain.as_ref())?;
        // Without CAP_CHOWN (virtlogd's sandbox, where a chown kills the
        // process and every pipe with it) only our own owner needs none.
        if !crate::may_chown() {
            let (uid, gid) = (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            if r.owner.uid.is_some_and(|u| u != uid) || r.owner.gid.is_some_and(|g| g != gid) {
                return Err(OpError::NoChown(r.name));
            }
            r.owner.uid = None;
            r.owner.gid = None;
        }
        if let Some((boot_name, _)) = &r.boot
            && self.registry.get(boot_name).is_some_and(|l| !l.is_boot())
        {
            return Err(OpError::BootLogTaken(boot_name.clone()));
        }
        let log = match r.log {
            false => None,
            true => {
                let log = self.enter(&r.name, r.policy)?;
                let change = r.policy;
                self.journal_change(&log, &r.journal, Kind::Console);
                self.first_use_with(&log, move |log, slot| {
                    let f = log.placed_file(slot)?;
                    f.change_policy(change)?;
                    log.journal_begin(f, false);
                    Ok(())
                })
                .await?;
                Some(log)
            }
        };
        let boot = match &r.boot {
            None => None,
            Some((name, bytes)) => {
                let change = boot::policy(*bytes);
                let log = self.enter(name, change)?;
                log.mark_boot();
                self.first_use(&log, move |f| f.change_policy(change))
                    .await?;
                Some(log)
            }
        };
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
                domain: r.domain.clone(),
            })
            .map_err(|source| match source {
                ConsoleError::Exists { name, .. } => match self.consoles.get(&name) {
                    Some(existing) => self.exists(&existing, r.domain.as_ref()),
                    None => OpError::ConsoleExists(name),
                },
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
    /// stays. With `owner`, only if the console belongs to that domain;
    /// `migrated`: the domain left by live migration, and the log and the
    /// clients are told so first.
    pub async fn remove_console(
        &self,
        name: &LogName,
        owner: Option<&str>,
        migrated: bool,
    ) -> Result<(), OpError> {
        self.consoles
            .remove(name, owner, migrated)
            .await
            .map_err(|e| match e {
                RemoveError::NoSuchConsole(name) => OpError::NoSuchConsole(name),
                RemoveError::Owned { name, owner } => OpError::ConsoleOwned { name, owner },
            })
    }

    /// The domain is arriving by live migration (`logs::migration`).
    pub fn expect_migration(&self, domain: &Domain) {
        self.registry
            .migrations()
            .expect(&domain.uuid, &domain.name);
        self.registry.touch();
    }

    /// The domain's arrival is over; true if it was arriving.
    pub fn end_migration(&self, uuid: &str) -> bool {
        let was = self.registry.migrations().end(uuid);
        if was {
            self.registry.touch();
        }
        was
    }

    /// Applies a call's journal request to `log` (no I/O: the export
    /// begins at the file's end in the call's job).
    fn journal_change(&self, log: &Arc<Log>, r: &JournalRequest, kind: Kind) {
        let before = log.journal().settings();
        let vm = |before: Option<&JournalSettings>| match &r.vm {
            Some(m) => (m.name.clone(), m.uuid.clone()),
            None => before.map_or((None, None), |b| (b.vm_name.clone(), b.vm_uuid.clone())),
        };
        match r.on {
            Some(false) => log.disable_journal(),
            Some(true) => {
                let (vm_name, vm_uuid) = vm(before.as_ref());
                let settings = JournalSettings {
                    kind,
                    vm_name,
                    vm_uuid,
                };
                log.enable_journal(&self.journal, settings, None);
            }
            None => {
                if let Some(b) = before.filter(|_| r.vm.is_some() && log.exports()) {
                    let (vm_name, vm_uuid) = vm(None);
                    let settings = JournalSettings {
                        vm_name,
                        vm_uuid,
                        ..b
                    };
                    log.enable_journal(&self.journal, settings, None);
                }
            }
        }
    }

    fn existing(&self, name: &LogName) -> Result<Arc<Log>, OpError> {
        self.registry
            .get(name)
            .ok_or_else(|| OpError::NoSuchLog(name.clone()))
    }
}
