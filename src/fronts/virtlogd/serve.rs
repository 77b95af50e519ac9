//! `LibvirtFront`: libvirt's log protocol served on its socket, for the
//! daemon: the listener systemd passed as `virtlogd.socket` (or virtlogd
//! handed over, or `[libvirt] socket` bound here), its limits, and the
//! connections virtlogd handed over, served first; and `adopt`, virtlogd's
//! pipes taken as this front's OpenLogFile would have opened them.
//!
//! Owns the listener's duplicate (for a re-exec or a hand-back) and the
//! path it must remove at a final stop, if it is the one that bound it.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::Arc,
};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::info;

use super::front::{Kept, MAX_CALL, Virtlogd};
use crate::{
    config::Config,
    fronts::{
        server::{self, BindError, ConnLimits, Conns, Counters},
        varlink::wire::vm_name,
    },
    handover::{activation, virtlogd::inherit::InheritedPipe},
    ops::{JournalRequest, Machine, OpError, Ops, PipeOptions, TakenFromVirtlogd},
};

/// The libvirt front, while it serves.
#[derive(Debug)]
pub struct LibvirtFront {
    /// Kept to hand the socket to a successor.
    pub fd: OwnedFd,
    /// The path to remove at a final stop: bound here, or by virtlogd
    /// (`unlinkUNIX`); none when systemd owns it.
    pub bound: Option<PathBuf>,
    pub counters: Arc<Counters>,
    pub connections: TaskTracker,
    /// Connections kept for a hand-back to virtlogd.
    pub kept: Arc<Kept>,
}

/// Where the front's listener comes from.
#[derive(Debug, Default)]
pub struct Given {
    /// A listening socket passed to the process (systemd's, virtlogd's).
    pub listener: Option<OwnedFd>,
    /// Its path, if the predecessor bound it itself.
    pub path: Option<PathBuf>,
    /// Connections the predecessor accepted.
    pub clients: Vec<OwnedFd>,
}

/// Serves libvirt's log protocol on the socket `given`, or else on
/// `[libvirt] socket` of the config, if either.
pub fn start(
    given: Given,
    config: &Config,
    ops: &Ops,
    stop: &CancellationToken,
) -> Result<Option<LibvirtFront>, BindError> {
    let shown = config
        .libvirt
        .socket
        .clone()
        .unwrap_or_else(|| activation::LIBVIRT.into());
    let (listener, bound) = match (given.listener, &config.libvirt.socket) {
        (Some(fd), _) => (server::listen_on(fd.into(), &shown)?, given.path),
        (None, Some(path)) => (server::bind(path, 0o600, None)?, Some(path.clone())),
        (None, None) => return Ok(None),
    };
    let failed = |source| BindError::Bind {
        path: shown.clone(),
        source,
    };
    let fd = listener.as_fd().try_clone_to_owned().map_err(failed)?;
    let mut adopted = Vec::new();
    for c in given.clients {
        let std = std::os::unix::net::UnixStream::from(c);
        std.set_nonblocking(true).map_err(failed)?;
        adopted.push(tokio::net::UnixStream::from_std(std).map_err(failed)?);
    }
    let l = &config.limits;
    let limits = Arc::new(ConnLimits {
        // virtlogd.conf's max_clients, unless guestlogd's config says.
        max_connections: config.libvirt.max_clients(l),
        max_per_uid: l.max_connections_per_uid,
        root_only: l.root_reserve(),
        max_message: MAX_CALL,
        message_timeout: std::time::Duration::from_secs(l.message_timeout),
        // libvirt keeps a connection idle through a whole migration.
        idle_timeout: None,
        write_timeout: std::time::Duration::from_secs(l.write_timeout),
    });
    let kept = Arc::new(Kept::default());
    let front = Arc::new(Virtlogd {
        ops: ops.clone(),
        roots: config.libvirt.roots.clone(),
        policy: config.libvirt.policy(),
        journal: config.libvirt.journal,
        kept: kept.clone(),
    });
    let (counters, connections) = (Arc::new(Counters::default()), TaskTracker::new());
    let conns = Conns {
        front,
        limits,
        counters: counters.clone(),
        shutdown: stop.clone(),
        tracker: connections.clone(),
    };
    let clients = adopted.len();
    tokio::spawn(server::accept_adopting(listener, adopted, conns));
    info!(socket = %shown.display(), clients, "serving libvirt's log protocol");
    Ok(Some(LibvirtFront {
        fd,
        bound,
        counters,
        connections,
        kept,
    }))
}

/// Feeds each of virtlogd's pipes into its log as this front's OpenLogFile
/// would have (its policy, its journal export, the domain as the origin),
/// saves the state with them, and says what was taken; or the log that
/// could not be, and why.
pub async fn adopt(
    pipes: Vec<InheritedPipe>,
    clients: usize,
    config: &Config,
    ops: &Ops,
) -> Result<TakenFromVirtlogd, (String, OpError)> {
    let mut paths = Vec::new();
    for p in pipes {
        let export = config.libvirt.journal;
        let machine = || Machine {
            name: vm_name(&p.origin.domain).ok(),
            uuid: Some(p.origin.uuid.clone()),
        };
        let options = PipeOptions {
            policy: config.libvirt.policy().into(),
            journal: JournalRequest {
                on: export.then_some(true),
                vm: export.then(machine),
            },
            libvirt: Some(p.origin.clone()),
            ..PipeOptions::default()
        };
        let log = p.log.to_string();
        if let Err(e) = ops.adopt_pipe(&p.log, p.read, options).await {
            return Err((log, e));
        }
        paths.push(log);
    }
    ops.saver.save_now();
    info!(
        message_id = crate::logging::events::VIRTLOGD_TAKEOVER,
        pipes = paths.len(),
        clients,
        "took over libvirt's logs from virtlogd in its process"
    );
    Ok(TakenFromVirtlogd {
        pipes: paths,
        clients,
    })
}
