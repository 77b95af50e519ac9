//! The accept loop: a slot under the caps, then a task per connection.
//!
//! A connection past `max_connections`, or past `max_per_uid` for a
//! non-root uid, is told so by its front (best effort, never waited for)
//! and closed. Accept errors (out of FDs, say) back off exponentially, from
//! 10 ms to 1 s, so the loop neither spins nor stops; the daemon's other
//! tasks are never held up by it.

use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::net::UnixListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug_span};

use super::{Conn, ConnLimits, Counters, Peer};
use crate::limited;

/// A protocol served on a listener.
pub trait Front: Send + Sync + 'static {
    /// Serves one connection until it ends, and says why it ended.
    fn serve(
        self: Arc<Self>,
        conn: Conn,
        shutdown: CancellationToken,
    ) -> impl Future<Output = super::ConnError> + Send;

    /// Tells a peer it is refused for `limit` (at most `max`). It must not
    /// wait: a peer that does not read simply misses it.
    fn refuse(&self, fd: BorrowedFd<'_>, limit: &str, max: usize);

    /// The front's name, for the daemon's own log.
    fn name(&self) -> &'static str;
}

/// Slots taken, in all and by uid.
#[derive(Debug, Default)]
struct Taken {
    all: usize,
    by_uid: HashMap<u32, usize>,
}

/// A connection's place under the caps, given back on drop.
#[derive(Debug)]
pub struct Slot {
    taken: Arc<Mutex<Taken>>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        t.all -= 1;
        if let Some(n) = t.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                t.by_uid.remove(&self.uid);
            }
        }
    }
}

/// Why a slot was not given.
enum Refusal {
    All,
    Uid,
}

fn take_slot(taken: &Arc<Mutex<Taken>>, limits: &ConnLimits, uid: u32) -> Result<Slot, Refusal> {
    let mut t = taken.lock().unwrap_or_else(PoisonError::into_inner);
    if t.all >= limits.max_connections {
        return Err(Refusal::All);
    }
    let mine = t.by_uid.get(&uid).copied().unwrap_or(0);
    if uid != 0 && mine >= limits.max_per_uid {
        return Err(Refusal::Uid);
    }
    t.all += 1;
    *t.by_uid.entry(uid).or_default() += 1;
    Ok(Slot {
        taken: taken.clone(),
        uid,
    })
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
    let taken = Arc::new(Mutex::new(Taken::default()));
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
        let span = debug_span!(
            "connection",
            front = front.name(),
            uid = peer.uid,
            pid = peer.pid
        );
        let conn = Conn::new(stream, peer, limits.clone(), counters.clone(), slot);
        let (front, counters, shutdown) = (front.clone(), counters.clone(), shutdown.clone());
        tracker.spawn(
            async move {
                let why = front.clone().serve(conn, shutdown).await;
                counters.closed(&why);
                match &why {
                    super::ConnError::Closed
                    | super::ConnError::Shutdown
                    | super::ConnError::Refused => {}
                    super::ConnError::Io(e) => {
                        limited!(debug, front = front.name(), error = %e, "connection failed");
                    }
                    why => limited!(warn, front = front.name(), reason = %why, "connection closed"),
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            max_connections: 3,
            max_per_uid: 2,
            max_message: 4096,
            message_timeout: Duration::from_secs(1),
            idle_timeout: None,
            write_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn one_uid_cannot_take_every_slot_but_root_can() {
        let taken = Arc::new(Mutex::new(Taken::default()));
        let l = limits();
        let a = take_slot(&taken, &l, 1000).ok().unwrap();
        let _b = take_slot(&taken, &l, 1000).ok().unwrap();
        assert!(matches!(take_slot(&taken, &l, 1000), Err(Refusal::Uid)));
        let _c = take_slot(&taken, &l, 0).ok().unwrap();
        assert!(matches!(take_slot(&taken, &l, 0), Err(Refusal::All)));
        drop(a);
        let _d = take_slot(&taken, &l, 1000).ok().unwrap();
        assert_eq!(taken.lock().unwrap().by_uid.get(&1000), Some(&2));
        drop(_c);
        assert_eq!(taken.lock().unwrap().by_uid.get(&0), None);
    }
}
