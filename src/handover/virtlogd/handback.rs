//! Handing libvirt's logs back to libvirt's virtlogd in this process: the
//! way back from `guestlogctl replace-virtlogd`, with domains running.
//!
//! A caller asks (`Request`, from the varlink front, after `plan` says what
//! goes back and what would be closed); the daemon stops as for a re-exec,
//! so every byte read from a pipe is in its log and the rest stays in the
//! kernel, libvirt's connections are collected at a frame boundary, and
//! systemd's FD store is emptied (a stored read end would keep a pipe
//! virtlogd closes open). `exec` then writes virtlogd's state for the
//! libvirt logs (their pipes, made blocking as virtlogd reads them,
//! libvirt's listener and its clients, virt-admin's listener if held) and
//! executes the real virtlogd, which adopts them as after its own reload.
//!
//! If that exec fails, nothing is lost: the file goes, every descriptor is
//! as it was (pushed back into the FD store if there was one), and the
//! caller re-executes guestlogd with all of them. Consoles and pipes into
//! logs libvirt did not open, which virtlogd cannot take, are closed by the
//! exec; `plan` names them, and the front refuses unless told to force.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::PathBuf,
};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio_util::sync::CancellationToken;

use super::{
    format::{Client, Server, Sock, VirtlogdState},
    inherit::{VIRTLOGD, exec_virtlogd, put_back, set_nonblocking, state_path},
    origins::{Origin, Origins},
};
use crate::{
    consoles::table::Consoles,
    handover::activation::{LIBVIRT, LIBVIRT_ADMIN, METRICS, VARLINK},
    logs::{name::LogName, registry::Registry},
};

/// virtlogd's default `max_clients` for its `admin` server.
const ADMIN_MAX_CLIENTS: u64 = 5000;

/// A hand-back a caller asked for, for the daemon to carry out.
#[derive(Debug, Default)]
pub struct Request {
    pub asked: CancellationToken,
}

/// What a hand-back would give virtlogd and what it would close.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// libvirt's logs with an open pipe, by path.
    pub pipes: Vec<String>,
    /// The consoles, by name.
    pub consoles: Vec<String>,
    /// Logs with an open pipe that libvirt did not open (varlink's
    /// OpenPipe), by name.
    pub others: Vec<String>,
}

impl Plan {
    /// What virtlogd cannot take, as `console NAME` and `pipe into NAME`.
    pub fn closes(&self) -> Vec<String> {
        let consoles = self.consoles.iter().map(|c| format!("console {c}"));
        let pipes = self.others.iter().map(|p| format!("pipe into {p}"));
        consoles.chain(pipes).collect()
    }
}

/// What a hand-back would do now.
pub fn plan(registry: &Registry, consoles: &Consoles, origins: &Origins) -> Plan {
    let mut plan = Plan::default();
    for log in registry.logs() {
        if log.snapshot().pipes == 0 {
            continue;
        }
        let name = log.name().to_string();
        if origins.get(log.name()).is_some() {
            plan.pipes.push(name);
        } else {
            plan.others.push(name);
        }
    }
    plan.consoles = consoles.all().iter().map(|c| c.name.to_string()).collect();
    plan
}

/// Why the real virtlogd cannot take over now, if it cannot: this process
/// must be virtlogd.service's (a standalone guestlogd.service that serves
/// libvirt's protocol on a socket of its own has nothing of virtlogd's to
/// give back), and virtlogd must be at `VIRTLOGD`, runnable, and not
/// guestlogd itself.
pub fn virtlogd_missing() -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if !cgroup.lines().any(|l| l.ends_with("/virtlogd.service")) {
        return Some("guestlogd does not run as virtlogd.service".into());
    }
    let m = match std::fs::metadata(VIRTLOGD) {
        Ok(m) => m,
        Err(e) => return Some(format!("{VIRTLOGD}: {e}")),
    };
    if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
        return Some(format!("{VIRTLOGD} is not an executable file"));
    }
    let me = std::fs::metadata("/proc/self/exe").ok()?;
    ((me.dev(), me.ino()) == (m.dev(), m.ino()))
        .then(|| format!("{VIRTLOGD} is guestlogd itself, not libvirt's virtlogd"))
}

/// Everything the daemon held when it stopped for a hand-back.
#[derive(Debug)]
pub struct HandBack {
    /// Every descriptor by its name: the FD store's (`pipe/…`,
    /// `console/…`, `state/…`) and the listeners' (`activation`'s names).
    pub fds: Vec<(String, OwnedFd)>,
    /// libvirt's connections, each at a frame boundary, nothing queued.
    pub clients: Vec<OwnedFd>,
    pub origins: BTreeMap<LogName, Origin>,
    /// libvirt's socket's path, if guestlogd (or virtlogd before it) bound
    /// it: virtlogd removes it at its final close then.
    pub listener_path: Option<PathBuf>,
    /// systemd's FD store held copies, withdrawn before the stop.
    pub fd_store: bool,
    /// The `max_clients` virtlogd's `virtlogd` server gets.
    pub max_clients: u64,
}

/// Why a hand-back did not happen; guestlogd goes on with `fds`.
#[derive(Debug)]
pub struct Failed {
    pub error: std::io::Error,
    pub fds: Vec<(String, OwnedFd)>,
}

/// Writes virtlogd's state and executes it; returns only on failure, with
/// every descriptor back as it was.
pub fn exec(hb: HandBack) -> Failed {
    let HandBack {
        fds,
        clients,
        origins,
        listener_path,
        fd_store,
        max_clients,
    } = hb;
    let fd = |name: &str| fds.iter().find(|(n, _)| n == name).map(|(_, f)| f);
    let Some(listener) = fd(LIBVIRT) else {
        let error = std::io::Error::other("guestlogd holds no libvirt socket to give back");
        return Failed { error, fds };
    };
    let mut files = Vec::new();
    let mut pipes = Vec::new();
    for (name, f) in &fds {
        let Some(log) = pipe_log(name) else { continue };
        let Some(origin) = origins.get(&log) else {
            continue;
        };
        files.push(super::format::LogFile {
            pipefd: f.as_raw_fd(),
            path: log.to_string(),
            driver: origin.driver.clone(),
            domname: origin.domain.clone(),
            domuuid: origin.uuid.clone(),
        });
        pipes.push(f);
    }
    let sock = |fd: &OwnedFd, unlink: bool| Sock {
        fd: fd.as_raw_fd(),
        errfd: -1,
        pid: 0,
        is_client: false,
        unlink_unix: Some(unlink),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let state = VirtlogdState {
        magic: std::process::id().to_string(),
        virtlogd: Server::new(
            max_clients,
            sock(listener, listener_path.is_some()),
            clients
                .iter()
                .enumerate()
                .map(|(i, c)| Client::new(i as u64 + 1, c.as_raw_fd(), Some(now)))
                .collect(),
        ),
        admin: fd(LIBVIRT_ADMIN).map(|a| Server::new(ADMIN_MAX_CLIENTS, sock(a, false), vec![])),
        files,
    };
    let inherited: Vec<&OwnedFd> = pipes
        .iter()
        .copied()
        .chain([listener])
        .chain(fd(LIBVIRT_ADMIN))
        .chain(clients.iter())
        .collect();
    let path = state_path();
    let error = match (|| -> std::io::Result<std::convert::Infallible> {
        put_back(&path, &state.to_json())?;
        for f in &pipes {
            set_nonblocking(f.as_fd(), false)?;
        }
        for f in &inherited {
            fcntl(f, FcntlArg::F_SETFD(FdFlag::empty()))?;
        }
        // virtlogd sets no status of its own: ours would stay.
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("")]);
        }
        tracing::info!(
            message_id = crate::logging::events::HANDBACK,
            pipes = pipes.len(),
            clients = clients.len(),
            "handing libvirt's logs back to virtlogd"
        );
        Err(exec_virtlogd(&[VIRTLOGD.into()]))
    })() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    // Still here: virtlogd did not start. Everything as it was.
    let _ = std::fs::remove_file(&path);
    for f in &inherited {
        let _ = fcntl(f, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
    for f in &pipes {
        let _ = set_nonblocking(f.as_fd(), true);
    }
    if fd_store {
        for (name, f) in &fds {
            if ![VARLINK, LIBVIRT, LIBVIRT_ADMIN, METRICS].contains(&name.as_str()) {
                let poll = name.starts_with("state/") || name.ends_with("-listen");
                let _ = crate::fdstore::push(name, f.as_fd(), poll);
            }
        }
    }
    Failed { error, fds }
}

/// The log of a pipe's FD-store name, `pipe/NAME/ID`.
fn pipe_log(name: &str) -> Option<LogName> {
    let mut parts = name.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("pipe"), Some(log), Some(_), None) => LogName::from_fd_part(log).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_pipes_log() {
        assert_eq!(
            pipe_log("pipe/%2Fvar%2Flog%2Flibvirt%2Fqemu%2Fvm1.log/7").map(|l| l.to_string()),
            Some("/var/log/libvirt/qemu/vm1.log".into())
        );
        assert_eq!(
            pipe_log("pipe/vm1/7").map(|l| l.to_string()),
            Some("vm1".into())
        );
        assert_eq!(pipe_log("console/vm1/guest"), None);
        assert_eq!(pipe_log("state/3"), None);
    }

    #[test]
    fn says_what_a_forced_hand_back_closes() {
        let plan = Plan {
            pipes: vec!["/var/log/libvirt/qemu/vm1.log".into()],
            consoles: vec!["vm1-serial0".into()],
            others: vec!["app".into()],
        };
        assert_eq!(plan.closes(), ["console vm1-serial0", "pipe into app"]);
    }
}
