//! The accept loop: a slot under the caps, then a task per connection.
//!
//! A connection past `max_connections`, or past `max_per_uid` for a
//! non-root uid, is told so by its front (best effort, never waited for)
//! and closed. Accept errors (out of FDs, say) back off exponentially, from
//! 10 ms to 1 s, so the loop neither spins nor stops; the daemon's other
//! tasks are never held up by it.

use std::{
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::net::{UnixListener, UnixStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug_span};

use super::{
    conn::{Conn, ConnError, Peer},
    limits::{ConnLimits, Counters, Refusal, Taken, take_slot},
};
use crate::limited;

/// A protocol served on a listener.
pub trait Front: Send + Sync + 'static {
    /// Serves one connection until it ends, and says why it ended.
    fn serve(
        self: Arc<Self>,
        conn: Conn,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ConnError> + Send;

    /// Tells a peer it is refused for `limit` (at most `max`). It must not
    /// wait: a peer that does not read simply misses it.
    fn refuse(&self, fd: BorrowedFd<'_>, limit: &str, max: usize);

    /// The front's name, for the daemon's own log.
    fn name(&self) -> &'static str;
}

/// Accepts on `listener` until `shutdown`, serving each connection in a
/// task of its own on `tracker`.
pub async fn accept_loop<F: Front>(
    listener: UnixListener,
    front: Arc<F>,
    limits: Arc<ConnLimits>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let conns = Conns {
        front,
        limits,
        counters,
        shutdown,
        tracker,
    };
    accept_adopting(listener, Vec::new(), conns).await;
}

/// What the connections of one listener share.
pub struct Conns<F> {
    pub front: Arc<F>,
    pub limits: Arc<ConnLimits>,
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

/// `accept_loop`, after serving `adopted`: connections a previous daemon
/// accepted (libvirt's virtlogd, handing over), under the same caps.
pub async fn accept_adopting<F: Front>(
    listener: UnixListener,
    adopted: Vec<UnixStream>,
    c: Conns<F>,
) {
    let Conns {
        front,
        limits,
        counters,
        shutdown,
        tracker,
    } = c;
    let taken = Arc::new(Mutex::new(Taken::default()));
    for stream in adopted {
        let Ok(peer) = Peer::of(stream.as_fd()) else {
            continue;
        };
        match take_slot(&taken, &limits, peer.uid) {
            Ok(slot) => {
                let conn = Conn::new(stream, peer, limits.clone(), counters.clone(), slot);
                serve(conn, &front, &counters, &shutdown, &tracker);
            }
            Err(_) => front.refuse(stream.as_fd(), "connections", limits.max_connections),
        }
    }
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            // A peer that left before we took it: nothing to wait for.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => continue,
            // Out of FDs or memory: the listener itself is fine, so wait
            // for some to come free and go on.
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                limited!(warn, front = front.name(), error = %e, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => continue,
                }
            }
        };
        let peer = match Peer::of(stream.as_fd()) {
            Ok(p) => p,
            Err(e) => {
                limited!(warn, front = front.name(), error = %e, "cannot read a peer's credentials");
                continue;
            }
        };
        let slot = match take_slot(&taken, &limits, peer.uid) {
            Ok(slot) => slot,
            Err(Refusal::All) => {
                counters.refused_connections.fetch_add(1, Relaxed);
                limited!(
                    warn,
                    front = front.name(),
                    uid = peer.uid,
                    max = limits.max_connections,
                    "connection refused: every slot is taken"
                );
                front.refuse(stream.as_fd(), "connections", limits.max_connections);
                continue;
            }
            Err(Refusal::Uid) => {
                counters.refused_per_uid.fetch_add(1, Relaxed);
                limited!(
                    warn,
                    front = front.name(),
                    uid = peer.uid,
                    max = limits.max_per_uid,
                    "connection refused: the uid holds its share of slots"
                );
                front.refuse(stream.as_fd(), "connectionsPerUid", limits.max_per_uid);
                continue;
            }
        };
        counters.accepted.fetch_add(1, Relaxed);
        let conn = Conn::new(stream, peer, limits.clone(), counters.clone(), slot);
        serve(conn, &front, &counters, &shutdown, &tracker);
    }
}

/// Serves one connection in a task of its own.
fn serve<F: Front>(
    conn: Conn,
    front: &Arc<F>,
    counters: &Arc<Counters>,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let span = debug_span!(
        "connection",
        front = front.name(),
        uid = conn.peer.uid,
        pid = conn.peer.pid
    );
    let (front, counters, shutdown) = (front.clone(), counters.clone(), shutdown.clone());
    tracker.spawn(
        async move {
            let why = front.clone().serve(conn, shutdown).await;
            count_close(&counters, &why);
            match &why {
                ConnError::Closed | ConnError::Shutdown | ConnError::Refused => {}
                ConnError::Io(e) => {
                    limited!(debug, front = front.name(), error = %e, "connection failed");
                }
                why => limited!(warn, front = front.name(), reason = %why, "connection closed"),
            }
        }
        .instrument(span),
    );
}

/// Counts why a connection ended, if it ended for a reason we count.
fn count_close(c: &Counters, why: &ConnError) {
    let counter = match why {
        ConnError::Idle => &c.closed_idle,
        ConnError::MessageTimeout => &c.closed_message_timeout,
        ConnError::MessageSize => &c.closed_message_size,
        ConnError::WriteTimeout => &c.closed_write_timeout,
        ConnError::FdsPassed => &c.closed_fds,
        ConnError::Oneway => &c.closed_oneway,
        ConnError::BadMessage(_) => &c.closed_bad_message,
        ConnError::Refused => &c.refused_peers,
        ConnError::Closed | ConnError::Io(_) | ConnError::Shutdown => return,
    };
    counter.fetch_add(1, Relaxed);
}
