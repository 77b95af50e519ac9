//! Sockets handed over by systemd (or by a previous guestlogd) through
//! `LISTEN_FDS`/`LISTEN_FDNAMES`.
//!
//! Must run before any thread exists: it reads and then unsets the
//! activation environment, so no child inherits it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, fcntl};
use tracing::warn;

/// The name the socket unit gives the varlink socket.
pub const VARLINK: &str = "varlink";
/// The name `guestlogd-metrics.socket` gives the `io.systemd.Metrics`
/// socket, as systemd's own metrics sockets are named.
pub const METRICS: &str = "varlink-metrics";
/// The name libvirt's own unit gives its log manager socket, which we
/// serve in virtlogd's place.
pub const LIBVIRT: &str = "virtlogd.socket";
/// libvirt's admin socket for virtlogd (virt-admin); no libvirt daemon
/// uses it, and we do not serve it.
pub const LIBVIRT_ADMIN: &str = "virtlogd-admin.socket";

/// What the service manager passed.
#[derive(Debug, Default)]
pub struct Activation {
    /// The listening varlink socket, if one was passed.
    pub varlink: Option<OwnedFd>,
    /// The listening socket of libvirt's log protocol, if one was passed.
    pub libvirt: Option<OwnedFd>,
    /// The listening `io.systemd.Metrics` socket, if one was passed.
    pub metrics: Option<OwnedFd>,
    /// Passed sockets we do not serve, closed; logged once tracing is up.
    pub unserved: Vec<String>,
    /// Every other passed descriptor, by name: what a previous guestlogd
    /// stored (see `fdstore`).
    pub stored: Vec<(String, OwnedFd)>,
    /// Names that were passed but not open. Logged once tracing is up.
    pub missing: Vec<String>,
}

impl Activation {
    /// Takes the passed descriptors and clears the environment.
    ///
    /// # Safety
    /// No other thread may run: this changes the environment.
    pub unsafe fn take() -> std::io::Result<Self> {
        // SAFETY: the caller guarantees that the process is single-threaded.
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }?;
        let mut out = Self::default();
        for (fd, name) in fds {
            let Some(fd) = adopt(fd) else {
                out.missing.push(format!("{name} (fd {fd} is not open)"));
                continue;
            };
            // A socket unit without FileDescriptorName= passes "unknown";
            // a lone socket is then taken as ours.
            if out.varlink.is_none() && (name == VARLINK || name == "unknown") {
                out.varlink = Some(fd);
            } else if out.libvirt.is_none() && name == LIBVIRT {
                out.libvirt = Some(fd);
            } else if out.metrics.is_none() && name == METRICS {
                out.metrics = Some(fd);
            } else if name == LIBVIRT_ADMIN {
                drop(fd);
                out.unserved.push(name);
            } else {
                out.stored.push((name, fd));
            }
        }
        Ok(out)
    }

    /// Logs what `take` could not use.
    pub fn report(&self) {
        for name in &self.missing {
            warn!(name, "a passed file descriptor was not open");
        }
        for name in &self.unserved {
            tracing::info!(name, "closed a passed socket guestlogd does not serve");
        }
    }
}

/// The path this guestlogd was started from, read before anything can
/// replace it: after an upgrade renames a new binary over it, the path
/// names the new one while `/proc/self/exe` still names the old.
pub fn own_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let shown = exe.to_string_lossy();
    // Started from a binary that had already been replaced.
    match shown.strip_suffix(" (deleted)") {
        Some(path) => path.into(),
        None => exe,
    }
}

/// Replaces this process with the guestlogd at `exe` (the new binary,
/// after an upgrade), handing it `fds` the way systemd would: from fd 3
/// up, named in `LISTEN_FDNAMES`. Returns only on failure.
pub fn reexec(exe: &std::path::Path, fds: Vec<(String, OwnedFd)>) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let count = fds.len();
    let names: Vec<String> = fds.iter().map(|(n, _)| n.clone()).collect();
    // Each descriptor first moves above the range it will take, so that
    // placing one cannot close another.
    let mut high = Vec::with_capacity(count);
    for (_, fd) in &fds {
        match fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3 + count as RawFd)) {
            Ok(dup) => high.push(dup),
            Err(e) => return e.into(),
        }
    }
    drop(fds);
    for (i, fd) in high.iter().enumerate() {
        // SAFETY: the target numbers are below every descriptor in `high`;
        // whatever held them is ours and closes at exec anyway (CLOEXEC).
        // dup2 leaves the copy without CLOEXEC, so it survives the exec.
        if unsafe { nix::libc::dup2(fd.as_raw_fd(), 3 + i as RawFd) } < 0 {
            return std::io::Error::last_os_error();
        }
    }
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .exec()
}

/// Wraps a passed descriptor, if it is really open: wrapping a closed one
/// would break I/O safety.
fn adopt(fd: RawFd) -> Option<OwnedFd> {
    fcntl(
        // SAFETY: only borrowed for this one check.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        FcntlArg::F_GETFD,
    )
    .ok()?;
    // SAFETY: the descriptor is open, and LISTEN_PID named this process as
    // its owner; nothing else in the process refers to it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
