//! Sockets handed over by systemd (or by a previous guestlogd) through
//! `LISTEN_FDS`/`LISTEN_FDNAMES`.
//!
//! Must run before any thread exists: it reads and then unsets the
//! activation environment, so no child inherits it. A `LISTEN_FDNAMES`
//! without a `LISTEN_PID` of ours (virtlogd leaves one when it re-executes
//! into guestlogd) is not activation, and is dropped the same way.
//!
//! Also the first thing every start does (`block_signals`): SIGUSR1
//! re-executes guestlogd, SIGTERM, SIGINT and SIGHUP stop it or are
//! ignored, and until their handlers exist the default action would kill
//! the process and every pipe it holds.

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
/// uses it, and we do not serve it: it is held, so that a hand-back to
/// virtlogd gives it back.
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
    /// virt-admin's listening socket, held and not served.
    pub libvirt_admin: Option<OwnedFd>,
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
        let ours = std::env::var("LISTEN_PID").is_ok_and(|p| p == std::process::id().to_string());
        if !ours {
            // SAFETY: the caller guarantees that the process is
            // single-threaded.
            unsafe {
                for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
                    std::env::remove_var(var);
                }
            }
            return Ok(Self::default());
        }
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
            } else if out.libvirt_admin.is_none() && name == LIBVIRT_ADMIN {
                out.libvirt_admin = Some(fd);
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

/// The signals the daemon handles, whose default action kills.
fn handled() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGUSR1,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the signals the daemon handles, in this thread and every thread
/// it starts: the first thing a start does. The daemon unblocks them once
/// its handlers exist (`unblock_signals`); a signal sent meanwhile waits
/// and is handled then, instead of killing the process with every pipe.
pub fn block_signals() {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    // Cannot fail with a valid `how` and set.
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None);
}

/// Unblocks them in the calling thread, once every handler exists.
pub fn unblock_signals() {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled()), None);
}

/// Before executing a program other than guestlogd (libvirt's virtlogd):
/// a signal mask survives exec and virtlogd never unblocks these, so they
/// are unblocked here. One sent while they were blocked is taken by a
/// handler that does nothing (a reload or a stop asked of a process that
/// is about to become a fresh virtlogd is moot), and exec resets every
/// handler to its default.
pub fn release_signals_for_exec() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    extern "C" fn nothing(_: nix::libc::c_int) {}
    let ignore = SigAction::new(
        SigHandler::Handler(nothing),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in handled().iter() {
        // SAFETY: `nothing` is async-signal-safe (it does nothing), and no
        // other handler of ours is relied on from here to the exec.
        let _ = unsafe { sigaction(signal, &ignore) };
    }
    unblock_signals();
}

/// Replaces this process with the guestlogd at `exe` (the new binary,
/// after an upgrade) and `args` (argv[1..]), handing it `fds` the way
/// systemd would: from fd 3 up, named in `LISTEN_FDNAMES`. Returns only on
/// failure.
pub fn reexec(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    fds: Vec<(String, OwnedFd)>,
) -> std::io::Error {
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
    // execve itself rather than Command, which would unblock every
    // signal: the new image starts with them still blocked, so a reload or
    // a stop sent while it starts waits for its handler instead of killing
    // it.
    use std::os::unix::ffi::OsStrExt;
    let cstring = |b: &[u8]| std::ffi::CString::new(b).ok();
    let mut env: Vec<std::ffi::CString> = std::env::vars_os()
        .filter(|(k, _)| {
            !matches!(
                k.to_str(),
                Some("LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES")
            )
        })
        .filter_map(|(k, v)| cstring(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
        .collect();
    env.extend(
        [
            format!("LISTEN_FDS={count}"),
            format!("LISTEN_PID={}", std::process::id()),
            format!("LISTEN_FDNAMES={}", names.join(":")),
        ]
        .iter()
        .filter_map(|v| cstring(v.as_bytes())),
    );
    let Some(path) = cstring(exe.as_os_str().as_bytes()) else {
        return std::io::Error::other("the binary's path holds a NUL");
    };
    let argv: Vec<std::ffi::CString> = std::iter::once(path.clone())
        .chain(args.iter().filter_map(|a| cstring(a.as_bytes())))
        .collect();
    block_signals();
    match nix::unistd::execve(&path, &argv, &env) {
        Err(e) => e.into(),
        Ok(never) => match never {},
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
