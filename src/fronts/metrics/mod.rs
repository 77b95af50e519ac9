//! The metrics front: systemd's `io.systemd.Metrics` on a socket of its
//! own (`/run/systemd/report/io.guestlogd` under systemd, where
//! `systemd-report` looks; `[metrics] socket` without activation).
//!
//! Owns: the family table and the lazy listing of metrics (`families`),
//! and the service that answers List and Describe (`service`), served by
//! the varlink framing over the shared connection layer (`server`).
//!
//! Invariants: the socket serves only this interface and introspection,
//! to anyone who reaches it (mode 0666 by default); it shows names and
//! numbers, never log content; a caller holds no log or console, so a
//! slow one costs only its own connection.
//!
//! May use: what the varlink front may, and its framing.

pub mod families;
pub mod service;

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::net::UnixListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    server::{self, BindError, ConnLimits, Counters, accept_loop},
    varlink::framing::Varlink,
};
use crate::{config::Config, handover::activation};

/// Connections the metrics socket serves at once, and per non-root uid:
/// collectors call briefly, and anyone may connect.
const CONNECTIONS: usize = 64;
const PER_UID: usize = 8;
/// Calls here are a method name and no parameters.
const MAX_MESSAGE: usize = 64 * 1024;

/// Serves `io.systemd.Metrics` on `listener` until `stop`, each
/// connection a task on `connections`, under the varlink socket's
/// timeouts and limits of its own.
pub fn serve(
    listener: UnixListener,
    sources: Arc<families::Sources>,
    limits: &ConnLimits,
    counters: Arc<Counters>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    let limits = Arc::new(ConnLimits {
        max_connections: CONNECTIONS,
        max_per_uid: PER_UID,
        max_message: MAX_MESSAGE,
        ..limits.clone()
    });
    let front = Arc::new(Varlink {
        service: service::Metrics { sources },
    });
    tokio::spawn(accept_loop(
        listener,
        front,
        limits,
        counters,
        stop,
        connections,
    ));
}

/// The `io.systemd.Metrics` socket systemd passed as `varlink-metrics`,
/// or else `[metrics] socket` bound here, if either; with a duplicate for
/// a re-exec and the path we bound.
#[allow(clippy::type_complexity)]
pub fn listener(
    passed: Option<OwnedFd>,
    config: &Config,
) -> Result<Option<(UnixListener, OwnedFd, Option<PathBuf>)>, BindError> {
    let (listener, bound) = match (passed, &config.metrics.socket) {
        (Some(fd), _) => (
            server::listen_on(fd.into(), Path::new(activation::METRICS))?,
            None,
        ),
        (None, Some(path)) => {
            if let Some(dir) = path.parent().filter(|d| !d.is_dir()) {
                use std::os::unix::fs::PermissionsExt;
                let failed = |source| BindError::Bind {
                    path: dir.to_owned(),
                    source,
                };
                std::fs::create_dir_all(dir).map_err(failed)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(failed)?;
            }
            // Validated when the config was loaded.
            let mode = config.metrics_mode().unwrap_or(0o666);
            (server::bind(path, mode, None)?, Some(path.clone()))
        }
        (None, None) => return Ok(None),
    };
    let shown = bound.clone().unwrap_or_else(|| activation::METRICS.into());
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| BindError::Bind {
            path: shown.clone(),
            source,
        })?;
    tracing::info!(socket = %shown.display(), "serving io.systemd.Metrics");
    Ok(Some((listener, fd, bound)))
}
