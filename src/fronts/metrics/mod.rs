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

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    server::{ConnLimits, Counters, accept_loop},
    varlink::framing::Varlink,
};

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
