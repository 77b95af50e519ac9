//! The daemon's life: set up directories and the socket, serve, and on
//! SIGTERM drain every pipe into its log before exiting. Started in
//! libvirt's virtlogd's process (`FromVirtlogd`), it first takes over what
//! virtlogd left; asked to hand back, it stops as for a re-exec and leaves
//! libvirt's logs to virtlogd (`Exit::HandBack`).

use std::{
    fs,
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::PermissionsExt,
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
        server::{self, BindError, ConnLimits, Counters},
        varlink::{
            framing::Varlink,
            manager::{AccessPolicy, Manager},
        },
        virtlogd::serve::{self as libvirt, Given},
    },
    handover::{
        activation::{self, Activation},
        restart::{self, Saver},
        virtlogd::{
            handback::{self, HandBack},
            inherit::{Inherited, KitHold},
        },
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
    #[error(transparent)]
    Socket(#[from] BindError),
    #[error("cannot take over virtlogd's pipe into {log}")]
    Adopt {
        log: String,
        #[source]
        source: crate::ops::OpError,
    },
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
    /// HandBackToVirtlogd: exec libvirt's virtlogd with libvirt's logs.
    HandBack(HandBack),
}

/// What libvirt's virtlogd left this process (`handover::virtlogd`).
#[derive(Debug)]
pub struct FromVirtlogd {
    pub inherited: Inherited,
    /// Given up (committed) once everything is taken over; until then the
    /// caller keeps it for a fall-back to virtlogd if `run` fails.
    pub kit: Arc<KitHold>,
}

/// Runs the daemon until SIGTERM or SIGINT (or SIGUSR1, for a re-exec).
pub fn run(
    opts: Options,
    activation: Activation,
    from_virtlogd: Option<FromVirtlogd>,
) -> Result<Exit, DaemonError> {
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
    let exit = runtime.block_on(serve(opts, activation, from_virtlogd));
    // Blocking threads may still wait on a disk; they hold nothing we need.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    exit
}

async fn serve(
    opts: Options,
    activation: Activation,
    from_virtlogd: Option<FromVirtlogd>,
) -> Result<Exit, DaemonError> {
    let config = &opts.config;
    let socket_path = opts.runtime_dir.join(SOCKET);
    let (listener, bound) = match activation.varlink {
        Some(fd) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            (server::listen_on(std, &socket_path)?, false)
        }
        None => {
            // The mode was validated when the config was loaded.
            let mode = config.socket_mode().unwrap_or(0o600);
            let group = config.socket.group.as_deref();
            (server::bind(&socket_path, mode, group)?, true)
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
    saver.origins.restore(takeover.libvirt);
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
    let (mut given, mut admin_fd) = (Given::default(), activation.libvirt_admin);
    let (mut taken, mut kit) = (None, None);
    if let Some(v) = from_virtlogd {
        let Inherited {
            pipes,
            listener,
            listener_path,
            admin,
            clients,
        } = v.inherited;
        kit = Some(v.kit);
        let adopted = libvirt::adopt(pipes, clients.len(), config, &ops).await;
        taken = Some(adopted.map_err(|(log, source)| DaemonError::Adopt { log, source })?);
        given = Given {
            listener: Some(listener),
            path: listener_path,
            clients,
        };
        admin_fd = admin_fd.or(admin);
    }
    given.listener = given.listener.or(activation.libvirt);
    let libvirt = libvirt::start(given, config, &ops, &stop_serving)?;
    let hand_back = Arc::new(handback::Request::default());
    let manager = Manager {
        ops,
        access: AccessPolicy::new(config.access.clone()),
        status: Arc::new(Status {
            started: std::time::SystemTime::now(),
            adoptions,
            from_virtlogd: taken,
        }),
        counters: counters.clone(),
        connections: connections.clone(),
        libvirt: libvirt
            .as_ref()
            .map(|l| (l.counters.clone(), l.connections.clone())),
        hand_back: libvirt.as_ref().map(|_| hand_back.clone()),
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
    let metrics_listener = metrics::listener(activation.metrics, config)?;
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
    // Blocked since main's first line; a signal sent meanwhile comes now.
    // This is the thread `run` was called on: block_on polls us here.
    activation::unblock_signals();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            crate::limited!(warn, "SIGHUP ignored: SIGUSR1 re-executes, SIGTERM stops");
        }
    });
    check_fd_budget(limits, config.libvirt.max_clients(limits));
    // Everything virtlogd left is taken: its originals go, and from here
    // on a failure is guestlogd's to survive, not virtlogd's to take back.
    if let Some(kit) = &kit {
        kit.commit();
    }
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

    let (reexec, back) = tokio::select! {
        () = server => (false, false),
        _ = sigterm.recv() => (false, false),
        _ = sigint.recv() => (false, false),
        _ = sigusr1.recv() => (true, false),
        () = hand_back.asked.cancelled() => (true, true),
    };
    if back && let Some(l) = &libvirt {
        l.kept.arm();
    }
    stop_serving.cancel();
    if back && let Some(l) = &libvirt {
        // Each of libvirt's connections finishes the call it is reading
        // and leaves its socket for virtlogd, before pipes stop: a pipe it
        // opened meanwhile goes back too.
        l.connections.close();
        let _ = tokio::time::timeout(STOP_WAIT, l.connections.wait()).await;
    }

    // Under systemd's FD store, and for a re-exec, everything open is
    // handed over; otherwise pipes are drained and consoles closed.
    let handing_over = reexec || store.under_systemd();
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
        // The FD store goes empty before a hand-back: a stored read end
        // would keep open a pipe virtlogd closes.
        let fd_store = back && store.under_systemd();
        if back {
            store.withdraw();
        }
        let mut fds = store.take_all();
        fds.push((activation::VARLINK.to_owned(), varlink_fd));
        let (mut kept, mut listener_path) = (Vec::new(), None);
        if let Some(l) = libvirt {
            fds.push((activation::LIBVIRT.to_owned(), l.fd));
            (kept, listener_path) = (l.kept.take(), l.bound);
        }
        if let Some(fd) = admin_fd {
            fds.push((activation::LIBVIRT_ADMIN.to_owned(), fd));
        }
        if let Some((fd, _)) = metrics {
            fds.push((activation::METRICS.to_owned(), fd));
        }
        if back {
            info!(
                descriptors = fds.len(),
                clients = kept.len(),
                "handing back to virtlogd"
            );
            return Ok(Exit::HandBack(HandBack {
                fds,
                clients: kept,
                origins: saver.origins.all(),
                listener_path,
                fd_store,
                max_clients: config.libvirt.max_clients.unwrap_or(1024) as u64,
            }));
        }
        info!(descriptors = fds.len(), "re-executing");
        return Ok(Exit::Reexec(fds));
    }
    if !handing_over {
        if bound {
            let _ = fs::remove_file(&socket_path);
        }
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

/// Tells the service manager, if there is one, how we are doing.
fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        warn!(error = %e, "cannot notify the service manager");
    }
}
