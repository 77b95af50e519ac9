//! guestlogd: owns the logs and consoles of virtual machines.
//!
//! The layers, top down (`ARCHITECTURE.md` has the map): `fronts` decode
//! the wire and call `ops`, which is what guestlogd does whichever front
//! asks; `handover` takes over from a previous guestlogd and saves what
//! the next one needs; `consoles` relay guests to clients and logs; `logs`
//! owns every file. `daemon` ties them together for the process's life.
//! Beside them, `config` is the configuration, and two leaves anyone may
//! use: `fdstore` holds every descriptor that must outlive this process,
//! and `logging` is the daemon's own logging (`limited!` bounds the lines
//! an outsider can cause; `events` names the events an operator alerts on
//! with their journal `MESSAGE_ID`s). Three helpers every floor uses sit
//! here: `error_chain`, `lock` and `may_chown`.

#![deny(unsafe_code)]

pub mod config;
pub mod consoles;
pub mod daemon;
#[allow(unsafe_code)]
pub mod fdstore;
pub mod fronts;
pub mod handover;
pub mod logging;
pub mod logs;
pub mod ops;

/// The varlink API's wire types, for clients (`guestlogctl`, tests).
pub use fronts::varlink::api;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether this process may give a file to another owner: CAP_CHOWN in
/// its effective set. Under libvirt's virtlogd.service (guestlogd in
/// virtlogd's process, before it moves to its own unit) it is not, and a
/// chown there is not refused but kills the process (SIGSYS, the unit's
/// system call filter), with every pipe it holds: so nothing chowns
/// without asking this first, and a process whose capabilities cannot be
/// read is taken not to.
pub fn may_chown() -> bool {
    const CAP_CHOWN: u32 = 0;
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_CHOWN) != 0)
    })
}

/// Locks a mutex, taking the data even if a thread panicked while holding
/// it: every holder leaves the data consistent between calls.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
