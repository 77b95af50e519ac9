//! The bounds of one front's connections, the slots that hold them to
//! those bounds, and what happened to them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicU64},
    time::Duration,
};

/// The bounds of one front's connections.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Connections open at once, over every uid.
    pub max_connections: usize,
    /// Connections one non-root uid may hold at once.
    pub max_per_uid: usize,
    /// Of `max_connections`, the slots only uid 0 may take.
    pub root_only: usize,
    /// The largest message a peer may send, in bytes.
    pub max_message: usize,
    /// From a message's first byte to its last.
    pub message_timeout: Duration,
    /// With no call in progress; `None` for fronts whose peers idle by
    /// design (libvirt keeps a log connection through a migration).
    pub idle_timeout: Option<Duration>,
    /// How long a reply may wait for the peer to take any of it.
    pub write_timeout: Duration,
}

/// What happened to connections, for GetStatus and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub refused_connections: AtomicU64,
    pub refused_per_uid: AtomicU64,
    pub closed_idle: AtomicU64,
    pub closed_message_timeout: AtomicU64,
    pub closed_message_size: AtomicU64,
    pub closed_write_timeout: AtomicU64,
    pub closed_fds: AtomicU64,
    pub fds_dropped: AtomicU64,
    pub closed_oneway: AtomicU64,
    pub closed_bad_message: AtomicU64,
    /// Peers a front does not serve at all (the libvirt front's non-root).
    pub refused_peers: AtomicU64,
}

/// Slots taken, in all and by uid.
#[derive(Debug, Default)]
pub(super) struct Taken {
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
pub(super) enum Refusal {
    All,
    Uid,
}

pub(super) fn take_slot(
    taken: &Arc<Mutex<Taken>>,
    limits: &ConnLimits,
    uid: u32,
) -> Result<Slot, Refusal> {
    let mut t = taken.lock().unwrap_or_else(PoisonError::into_inner);
    if t.all >= limits.max_connections {
        return Err(Refusal::All);
    }
    // Non-root uids share what root's reserve leaves, so that however many
    // of them hold connections, root (libvirt, its hook) is still served.
    if uid != 0 && t.all + limits.root_only >= limits.max_connections {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            max_connections: 3,
            max_per_uid: 2,
            root_only: 0,
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

    #[test]
    fn the_last_slots_are_roots() {
        let taken = Arc::new(Mutex::new(Taken::default()));
        let l = ConnLimits {
            max_connections: 6,
            root_only: 2,
            ..limits()
        };
        let held: Vec<_> = [1, 1, 2, 2]
            .into_iter()
            .map(|uid| take_slot(&taken, &l, uid).ok().unwrap())
            .collect();
        // Four uids' worth is all non-root may hold: the rest is root's.
        assert!(matches!(take_slot(&taken, &l, 3), Err(Refusal::All)));
        let _r1 = take_slot(&taken, &l, 0).ok().unwrap();
        let _r2 = take_slot(&taken, &l, 0).ok().unwrap();
        assert!(matches!(take_slot(&taken, &l, 0), Err(Refusal::All)));
        drop(held);
        assert!(take_slot(&taken, &l, 3).is_ok());
    }
}
