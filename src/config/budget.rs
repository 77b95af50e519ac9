//! `FdBudget`: the most descriptors the configured limits can make the
//! daemon hold, in the process and in systemd's FD store; and the start-up
//! step that raises the soft `RLIMIT_NOFILE` to the hard one.
//!
//! Each descriptor is held once (`fdstore`: the store borrows what tasks
//! own), so the process holds the stored ones plus log files, connections
//! and a few of its own. Readers of output (console clients, viewers,
//! Follow streams) are counted by the host-wide `max-clients-total`, not
//! as every console full.

use super::Limits;
use crate::logs::log::MAX_JOBS;

/// The most descriptors the configured limits can make the daemon hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// Kept for the next guestlogd: every pipe; each console's guest and
    /// client listeners, its view listener (with viewers), its guest; every
    /// client and viewer; the state and the journal positions.
    pub stored: usize,
    /// In this process: every stored descriptor once, the open log files
    /// (one per log in use: by a pipe, a console and its boot log, or a
    /// call or follower on a connection), both fronts' connections, the
    /// pipe each file job may splice through (two descriptors, for the
    /// length of one splice), and a few of our own.
    pub process: usize,
}

impl FdBudget {
    /// With the varlink front's `max-connections` and the libvirt front's
    /// `libvirt_connections`.
    pub fn of(l: &Limits, libvirt_connections: usize) -> Self {
        let stored = l.max_pipes + 4 * l.max_consoles + l.max_clients_total + 2;
        let connections = l.max_connections + libvirt_connections;
        let logs_in_use = l
            .max_logs
            .min(l.max_pipes + 2 * l.max_consoles + connections);
        Self {
            stored,
            process: stored + logs_in_use + connections + 2 * MAX_JOBS + 64,
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one, as systemd advises
/// services to (the soft limit stays 1024 for `select(2)`'s sake, which
/// guestlogd never uses). Returns the soft limit now in force.
pub fn raise_nofile() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_the_shipped_units() {
        let l = Limits::default();
        assert!(l.max_consoles >= 4096, "{}", l.max_consoles);
        // The varlink front's connections, and as many for libvirt's.
        let b = FdBudget::of(&l, l.max_connections);
        // systemd/guestlogd.service and the virtlogd drop-in.
        let units = [
            include_str!("../../systemd/guestlogd.service"),
            include_str!("../../systemd/virtlogd.service.d/guestlogd.conf"),
        ];
        for unit in units {
            let value = |key: &str| -> usize {
                unit.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{key} not set"))
            };
            assert!(b.stored <= value("FileDescriptorStoreMax="), "{b:?}");
            assert!(b.process <= value("LimitNOFILE="), "{b:?}");
        }
        assert_eq!((b.stored, b.process), (28_674, 37_698));
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        use nix::sys::resource::{Resource, getrlimit};
        let soft = raise_nofile().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (soft, soft));
    }
}
