//! Sockets handed over by systemd (or by a previous guestlogd) through
//! `LISTEN_FDS`/`LISTEN_FDNAMES`.
//!
//! Must run before any thread exists: it reads and then unsets the
//! activation environment, so no child inherits it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, fcntl};
use tracing::warn;

/// The name the socket unit gives the varlink socket.
pub const VARLINK: &str = "varlink";

/// What the service manager passed.
#[derive(Debug, Default)]
pub struct Activation {
    /// The listening varlink socket, if one was passed.
    pub varlink: Option<OwnedFd>,
    /// Names of descriptors we did not expect; they were closed. Logged
    /// once tracing is up.
    pub unknown: Vec<String>,
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
                out.unknown.push(format!("{name} (fd {fd} is not open)"));
                continue;
            };
            // A socket unit without FileDescriptorName= passes "unknown";
            // a lone socket is then taken as ours.
            if out.varlink.is_none() && (name == VARLINK || name == "unknown") {
                out.varlink = Some(fd);
            } else {
                out.unknown.push(name);
            }
        }
        Ok(out)
    }

    /// Logs what `take` could not use.
    pub fn report(&self) {
        for name in &self.unknown {
            warn!(name, "closed an unexpected passed file descriptor");
        }
    }
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
