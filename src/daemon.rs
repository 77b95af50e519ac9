//! The daemon's life: set up directories and the socket, serve, and on
//! SIGTERM drain every pipe into its log before exiting.

use std::{
    fs,
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    config::Config,
    console::Consoles,
    registry::{Registry, error_chain},
    service::{AccessPolicy, Manager},
    transport::Listener,
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
    #[error("the varlink server failed")]
    Serve(#[source] zlink::Error),
}

/// Runs the daemon until SIGTERM or SIGINT. `activated` is a listening
/// socket passed by the service manager, if any.
pub fn run(opts: Options, activated: Option<OwnedFd>) -> Result<(), DaemonError> {
    for (dir, mode) in [(&opts.runtime_dir, 0o755), (&opts.log_dir, 0o750)] {
        create_dir(dir, mode)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(opts, activated))
}

async fn serve(opts: Options, activated: Option<OwnedFd>) -> Result<(), DaemonError> {
    let config = &opts.config;
    let socket_path = opts.runtime_dir.join(SOCKET);
    let (listener, bound) = match activated {
        Some(fd) => {
            let std = std::os::unix::net::UnixListener::from(fd);
            (listen_on(std, &socket_path)?, false)
        }
        None => (bind(&socket_path, config)?, true),
    };
    let limits = &config.limits;
    let listener = Listener::new(listener, limits.max_connections, limits.max_message_size);
    let live = listener.live();

    let registry = Arc::new(Registry::new(
        opts.log_dir.clone(),
        config.log.policy(),
        limits.max_pipes,
    ));
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let consoles = Arc::new(Consoles::new(
        &opts.runtime_dir,
        limits.max_consoles,
        shutdown.clone(),
    ));
    let manager = Manager::new(
        registry.clone(),
        consoles.clone(),
        AccessPolicy::new(config.access.clone()),
        limits.clone(),
        tracker.clone(),
        shutdown.clone(),
    );
    let server = zlink::Server::new(listener, manager);

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    info!(socket = %socket_path.display(), logs = %opts.log_dir.display(), "ready");
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    let result = tokio::select! {
        r = server.run() => r.map_err(DaemonError::Serve),
        _ = sigterm.recv() => Ok(()),
        _ = sigint.recv() => Ok(()),
    };

    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining pipes"),
    ]);
    info!(connections = live.load(Relaxed), "stopping; draining pipes");
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    consoles.stop_all().await;
    let logs = registry.logs();
    let synced = tokio::task::spawn_blocking(move || {
        for log in logs {
            if let Err(e) = log.with_file(|f| f.sync()) {
                warn!(log = %log.name(), error = %error_chain(&e), "cannot sync log");
            }
        }
    })
    .await;
    if let Err(e) = synced {
        warn!(error = %e, "sync task failed");
    }
    if bound {
        let _ = fs::remove_file(&socket_path);
    }
    info!("stopped");
    result
}

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
fn bind(path: &Path, config: &Config) -> Result<tokio::net::UnixListener, DaemonError> {
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
    // The mode was validated when the config was loaded.
    let mode = config.socket_mode().unwrap_or(0o600);
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(failed)?;
    if let Some(group) = &config.socket.group {
        let gid = match group.parse::<u32>() {
            Ok(gid) => nix::unistd::Gid::from_raw(gid),
            Err(_) => {
                nix::unistd::Group::from_name(group)
                    .ok()
                    .flatten()
                    .ok_or_else(|| DaemonError::NoGroup(group.clone()))?
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
