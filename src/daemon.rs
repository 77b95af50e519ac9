//! The daemon's life: set up directories and the socket, serve, and on
//! SIGTERM drain every pipe into its log before exiting.

use std::{
    fs,
    os::{
        fd::{AsFd, OwnedFd},
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::{
        Config,
        budget::{FdBudget, raise_nofile},
    },
    consoles::table::Consoles,
    error_chain,
    fdstore::FdStore,
    fronts::{
        metrics::{
            self,
            families::{FrontTally, Sources},
        },
        server::{self, ConnLimits, Counters},
        varlink::{
            framing::Varlink,
            manager::{AccessPolicy, Manager},
        },
        virtlogd::front::{self as libvirt, Virtlogd},
    },
    handover::{
        activation::{self, Activation},
        restart::{self, Saver},
    },
    logs::{
        journal::{self, Journal},
        log::Wait,
        registry::Registry,
        usage::Usage,
        vacuum::{self, Vacuum},
    },
    ops::{Ops, Status},
};

/// The socket's file name in the runtime directory.
pub const SOCKET: &str = "io.guestlogd.Manager";

/// Where the daemon keeps its files, and its configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub runtime_dir: PathBuf,
    pub log_dir: PathBuf,
    pub config: Config,
}

/// Why the daemon could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another guestlogd is listening on {0}")]
    InUse(PathBuf),
    #[error("socket group {0:?} does not exist")]
    NoGroup(String),
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
}

/// How the daemon ended.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM or SIGINT.
    Stopped,
    /// SIGUSR1: exec a new guestlogd with these descriptors.
    Reexec(Vec<(String, OwnedFd)>),
}

/// Runs the daemon until SIGTERM or SIGINT (or SIGUSR1, for a re-exec).
pub fn run(opts: Options, activation: Activation) -> Result<Exit, DaemonError> {
    // Every console, pipe and client is a descriptor: the hard limit is
    // what the host allows us, the soft one only guards select(2).
    if let Err(e) = raise_nofile() {
        warn!(error = %e, "cannot raise the soft RLIMIT_NOFILE to the hard limit");
    }
    for (dir, mode) in [(&opts.runtime_dir, 0o755), (&opts.log_dir, 0o750)] {
        create_dir(dir, mode)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(crate::logs::log::MAX_JOBS)
        .build()
        .map_err(DaemonError::Runtime)?;
    let exit = runtime.block_on(serve(opts, activation));
    // Blocking threads may still wait on a disk; they hold nothing we need.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    exit
}

async fn serve(opts: Options, activation: Activation) -> Result<Exit, DaemonError> {
    let config = &opts.config;
    let socket_path = opts.runtime_dir.join(SOCKET);
    let (listener, bound) = match activation.varlink {
        Some(fd) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            (listen_on(std, &socket_path)?, false)
        }
        None => {
            // The mode was validated when the config was loaded.
            let mode = config.socket_mode().unwrap_or(0o600);
            let group = config.socket.group.as_deref();
            (bind(&socket_path, mode, group)?, true)
        }
    };
    // Kept to hand the socket itself to a re-exec'd successor.
    let varlink_fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DaemonError::Bind {
            path: socket_path.clone(),
            source,
        })?;
    let limits = &config.limits;
    let secs = std::time::Duration::from_secs;
    let conn_limits = Arc::new(ConnLimits {
        max_connections: limits.max_connections,
        max_per_uid: limits.max_connections_per_uid,
        root_only: limits.root_reserve(),
        max_message: limits.max_message_size,
        message_timeout: secs(limits.message_timeout),
        idle_timeout: (limits.idle_timeout > 0).then(|| secs(limits.idle_timeout)),
        write_timeout: secs(limits.write_timeout),
    });
    let counters = Arc::new(Counters::default());
    let connections = TaskTracker::new();

    // systemd keeps copies only when it has an FD store for us.
    let systemd = std::env::var_os("FDSTORE").is_some_and(|v| v != "0")
        && std::env::var_os("NOTIFY_SOCKET").is_some();
    let store = Arc::new(FdStore::new(systemd));
    let disk = vacuum::Limits {
        max_use: config.disk.max_use,
        keep_free: config.disk.keep_free,
        max_age_days: config.log.max_age_days.unwrap_or(0),
    };
    let usage = Arc::new(if disk.budget() {
        Usage::every(disk.slack())
    } else {
        Usage::off()
    });
    let registry = Arc::new(
        Registry::new(
            opts.log_dir.clone(),
            config.libvirt.roots.clone(),
            config.log.policy(),
            limits.max_pipes,
            limits.max_logs,
            store.clone(),
            usage,
        )
        .with_seats(limits.max_clients_total),
    );
    let vacuum = Arc::new(Vacuum::new(registry.clone(), disk));
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let consoles = Arc::new(Consoles::new(
        &opts.runtime_dir,
        limits.max_consoles,
        shutdown.clone(),
    ));
    let journal = Arc::new(Journal::new(
        config.journal.socket.clone(),
        journal::budget::Limits {
            per_second: config.journal.max_lines_per_second,
            burst: config.journal.max_burst,
        },
        store.clone(),
    ));
    let takeover = restart::adopt(
        activation.stored,
        &registry,
        &consoles,
        &journal,
        limits,
        &tracker,
        &shutdown,
    );
    let adoptions = takeover.adoptions;
    tokio::spawn(journal.clone().run(shutdown.clone()));
    let saver = Arc::new(Saver::new(registry.clone(), consoles.clone(), adoptions));
    let status = Arc::new(Status {
        started: std::time::SystemTime::now(),
        adoptions,
    });
    let ops = Ops {
        registry: registry.clone(),
        consoles: consoles.clone(),
        limits: limits.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        saver: saver.clone(),
        vacuum: vacuum.clone(),
        journal: journal.clone(),
    };
    // Connections end with the accept loop; pipes and consoles have their
    // own ending below.
    let stop_serving = CancellationToken::new();
    let libvirt = libvirt_front(activation.libvirt, config, &ops, &stop_serving)?;
    let manager = Manager {
        ops,
        access: AccessPolicy::new(config.access.clone()),
        status,
        counters: counters.clone(),
        connections: connections.clone(),
        libvirt: libvirt
            .as_ref()
            .map(|l| (l.counters.clone(), l.connections.clone())),
    };
    let server = server::accept_loop(
        listener,
        Arc::new(Varlink { service: manager }),
        conn_limits.clone(),
        counters.clone(),
        stop_serving.clone(),
        connections.clone(),
    );
    let tally = |name, counters: &Arc<Counters>, connections: &TaskTracker| FrontTally {
        name,
        counters: counters.clone(),
        connections: connections.clone(),
        base: takeover.totals.clone(),
    };
    let mut fronts = vec![tally("varlink", &counters, &connections)];
    if let Some(l) = &libvirt {
        fronts.push(tally("libvirt", &l.counters, &l.connections));
    }
    let metrics_listener = metrics_listener(activation.metrics, config)?;
    let metrics_counters = Arc::new(Counters::default());
    let metrics_connections = TaskTracker::new();
    if metrics_listener.is_some() {
        fronts.push(tally("metrics", &metrics_counters, &metrics_connections));
    }
    let sources = Arc::new(Sources {
        registry: registry.clone(),
        consoles: consoles.clone(),
        adoptions,
        fronts,
    });
    {
        let sources = sources.clone();
        saver.set_totals(restart::Totals(Box::new(move || sources.totals())));
    }
    saver.save_now();
    let metrics = metrics_listener.map(|(listener, fd, bound)| {
        let (counters, stop) = (metrics_counters, stop_serving.clone());
        metrics::serve(
            listener,
            sources,
            &conn_limits,
            counters,
            stop,
            metrics_connections,
        );
        (fd, bound)
    });

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).map_err(DaemonError::Signals)?;
    // SIGHUP's default would kill us, and with us every pipe and console
    // when there is no FD store. There is nothing to reload that a re-exec
    // (SIGUSR1) does not do better, so it is ignored, with a word.
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            crate::limited!(warn, "SIGHUP ignored: SIGUSR1 re-executes, SIGTERM stops");
        }
    });
    check_fd_budget(limits, config.libvirt.max_clients(limits));
    info!(socket = %socket_path.display(), logs = %opts.log_dir.display(), adoptions, "ready");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    // The state is saved again after every change, by one task, so saves
    // never interleave.
    let saving = {
        let (registry, saver) = (registry.clone(), saver.clone());
        tokio::spawn(async move {
            loop {
                registry.changed().await;
                saver.save_now();
            }
        })
    };
    // Files of logs no one uses are closed, so descriptors follow what is
    // in use, not every log ever touched.
    // Retention and the disk budget; it ends with the daemon's shutdown.
    tokio::spawn(vacuum.clone().run(shutdown.clone()));
    let closing = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(crate::logs::registry::IDLE_SWEEP);
            loop {
                sweep.tick().await;
                registry.close_idle();
            }
        })
    };

    let reexec = tokio::select! {
        () = server => false,
        _ = sigterm.recv() => false,
        _ = sigint.recv() => false,
        _ = sigusr1.recv() => true,
    };
    stop_serving.cancel();

    // Under systemd's FD store, and for a re-exec, everything open is
    // handed over; otherwise pipes are drained and consoles closed.
    let handing_over = reexec || systemd;
    if handing_over {
        registry.hand_over();
    }
    notify(&[
        if reexec {
            sd_notify::NotifyState::Reloading
        } else {
            sd_notify::NotifyState::Stopping
        },
        sd_notify::NotifyState::Status(if handing_over {
            "handing over"
        } else {
            "draining pipes"
        }),
    ]);
    info!(
        connections = connections.len(),
        reexec, handing_over, "stopping"
    );
    saving.abort();
    closing.abort();
    shutdown.cancel();
    tracker.close();
    // A pipe or console whose disk hangs never finishes its job: past the
    // bound it is left to the kernel (a re-exec or exit ends the thread),
    // costing at most the one read that job holds.
    if tokio::time::timeout(STOP_WAIT, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            pipes = tracker.len(),
            "pipes whose logs do not answer are left as they are"
        );
    }
    let handovers = match tokio::time::timeout(STOP_WAIT, consoles.stop_all()).await {
        Ok(handovers) => handovers,
        Err(_) => {
            warn!("consoles whose logs do not answer are left as they are");
            Default::default()
        }
    };
    saver.save(&handovers);
    // A successor runs on the same kernel and its page cache: only a final
    // stop flushes the logs to disk.
    if !handing_over {
        // All at once: a log whose disk hangs costs its own wait only.
        let syncs = registry
            .logs()
            .into_iter()
            .filter(|l| l.is_open())
            .map(|log| async move {
                if let Err(e) = log.with_file(Wait::Call, |f| f.sync()).await {
                    warn!(log = %log.name(), error = %error_chain(&e), "cannot sync log");
                }
            });
        futures_util::future::join_all(syncs).await;
    }
    if reexec {
        let mut fds = store.take_all();
        fds.push((activation::VARLINK.to_owned(), varlink_fd));
        if let Some(l) = libvirt {
            fds.push((activation::LIBVIRT.to_owned(), l.fd));
        }
        if let Some((fd, _)) = metrics {
            fds.push((activation::METRICS.to_owned(), fd));
        }
        info!(descriptors = fds.len(), "re-executing");
        return Ok(Exit::Reexec(fds));
    }
    if bound && !handing_over {
        let _ = fs::remove_file(&socket_path);
        if let Some(path) = libvirt.as_ref().and_then(|l| l.bound.as_ref()) {
            let _ = fs::remove_file(path);
        }
        if let Some(path) = metrics.as_ref().and_then(|(_, bound)| bound.as_ref()) {
            let _ = fs::remove_file(path);
        }
    }
    info!("stopped");
    Ok(Exit::Stopped)
}

/// The libvirt front, while it serves.
struct LibvirtFront {
    /// Kept to hand the socket to a re-exec'd successor.
    fd: OwnedFd,
    /// The path we bound, to remove at a final stop; none under activation.
    bound: Option<std::path::PathBuf>,
    counters: Arc<Counters>,
    connections: TaskTracker,
}

/// Serves libvirt's log protocol on the socket systemd passed as
/// `virtlogd.socket`, or else on `libvirt.socket` of the config, if either.
fn libvirt_front(
    passed: Option<OwnedFd>,
    config: &Config,
    ops: &Ops,
    stop: &CancellationToken,
) -> Result<Option<LibvirtFront>, DaemonError> {
    let shown = config
        .libvirt
        .socket
        .clone()
        .unwrap_or_else(|| activation::LIBVIRT.into());
    let (listener, bound) = match (passed, &config.libvirt.socket) {
        (Some(fd), _) => (listen_on(fd.into(), &shown)?, None),
        (None, Some(path)) => (bind(path, 0o600, None)?, Some(path.clone())),
        (None, None) => return Ok(None),
    };
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DaemonError::Bind {
            path: shown.clone(),
            source,
        })?;
    let l = &config.limits;
    let limits = Arc::new(ConnLimits {
        // virtlogd.conf's max_clients, unless guestlogd's config says.
        max_connections: config.libvirt.max_clients(l),
        max_per_uid: l.max_connections_per_uid,
        root_only: l.root_reserve(),
        max_message: libvirt::MAX_CALL,
        message_timeout: std::time::Duration::from_secs(l.message_timeout),
        // libvirt keeps a connection idle through a whole migration.
        idle_timeout: None,
        write_timeout: std::time::Duration::from_secs(l.write_timeout),
    });
    let front = Arc::new(Virtlogd {
        ops: ops.clone(),
        roots: config.libvirt.roots.clone(),
        policy: config.libvirt.policy(),
        journal: config.libvirt.journal,
    });
    let (counters, connections) = (Arc::new(Counters::default()), TaskTracker::new());
    tokio::spawn(server::accept_loop(
        listener,
        front,
        limits,
        counters.clone(),
        stop.clone(),
        connections.clone(),
    ));
    info!(socket = %shown.display(), "serving libvirt's log protocol");
    Ok(Some(LibvirtFront {
        fd,
        bound,
        counters,
        connections,
    }))
}

/// The `io.systemd.Metrics` socket systemd passed as `varlink-metrics`,
/// or else `[metrics] socket` bound here, if either; with a duplicate for
/// a re-exec and the path we bound.
#[allow(clippy::type_complexity)]
fn metrics_listener(
    passed: Option<OwnedFd>,
    config: &Config,
) -> Result<Option<(tokio::net::UnixListener, OwnedFd, Option<PathBuf>)>, DaemonError> {
    let (listener, bound) = match (passed, &config.metrics.socket) {
        (Some(fd), _) => (listen_on(fd.into(), Path::new(activation::METRICS))?, None),
        (None, Some(path)) => {
            if let Some(dir) = path.parent() {
                create_dir(dir, 0o755)?;
            }
            // Validated when the config was loaded.
            let mode = config.metrics_mode().unwrap_or(0o666);
            (bind(path, mode, None)?, Some(path.clone()))
        }
        (None, None) => return Ok(None),
    };
    let shown = bound.clone().unwrap_or_else(|| activation::METRICS.into());
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DaemonError::Bind {
            path: shown.clone(),
            source,
        })?;
    info!(socket = %shown.display(), "serving io.systemd.Metrics");
    Ok(Some((listener, fd, bound)))
}

/// Says, at start, whether the configuration's worst case fits in
/// RLIMIT_NOFILE and in systemd's FD store (`$FDSTORE`, its
/// FileDescriptorStoreMax=).
fn check_fd_budget(l: &crate::config::Limits, libvirt_connections: usize) {
    let b = FdBudget::of(l, libvirt_connections);
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(0, |(soft, _)| soft);
    if (b.process as u64) > limit {
        warn!(
            budget = b.process,
            limit,
            "the configured limits may need more descriptors than RLIMIT_NOFILE allows; \
             lower max-consoles, max-clients or max-pipes, or raise LimitNOFILE="
        );
    } else {
        info!(budget = b.process, limit, "descriptor budget fits");
    }
    let store_max = std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    match store_max {
        Some(max) if b.stored as u64 > max => warn!(
            stored = b.stored,
            max,
            "the configured limits may store more descriptors than FileDescriptorStoreMax= \
             allows: past it systemd drops them, and a crash loses those"
        ),
        Some(max) => info!(stored = b.stored, max, "FD store budget fits"),
        None => {}
    }
}

/// How long a stop waits for pipes and consoles to finish.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn create_dir(dir: &Path, mode: u32) -> Result<(), DaemonError> {
    let failed = |source| DaemonError::Dir {
        path: dir.to_owned(),
        source,
    };
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(failed)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(failed)?;
    }
    Ok(())
}

/// Binds the socket, replacing a stale one but never a live daemon's, and
/// applies the configured mode and group.
fn bind(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<tokio::net::UnixListener, DaemonError> {
    let failed = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    if UnixStream::connect(path).is_ok() {
        return Err(DaemonError::InUse(path.to_owned()));
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let std = std::os::unix::net::UnixListener::bind(path).map_err(failed)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)?;
    if let Some(group) = group {
        let gid = match group.parse::<u32>() {
            Ok(gid) => nix::unistd::Gid::from_raw(gid),
            Err(_) => {
                nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| DaemonError::NoGroup(group.to_owned()))?
                    .gid
            }
        };
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| failed(e.into()))?;
    }
    listen_on(std, path)
}

fn listen_on(
    std: std::os::unix::net::UnixListener,
    path: &Path,
) -> Result<tokio::net::UnixListener, DaemonError> {
    let failed = |source| DaemonError::Bind {
        path: path.to_owned(),
        source,
    };
    std.set_nonblocking(true).map_err(failed)?;
    tokio::net::UnixListener::from_std(std).map_err(failed)
}

/// Tells the service manager, if there is one, how we are doing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        warn!(error = %e, "cannot notify the service manager");
    }
}
