//! What taking over from virtlogd and handing back do to the process
//! itself: where virtlogd's files are, executing the real virtlogd, writing
//! its state file, descriptor flags, the descriptors a process was born
//! with, and virtlogd's pid file.
//!
//! Nothing here makes a system call virtlogd's sandbox forbids: no chown,
//! no setuid; files are created through `O_NOFOLLOW` and a rename.

use std::{
    ffi::{CString, OsString},
    fs::File,
    io::Write,
    os::{
        fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::OsStrExt,
            fs::{MetadataExt, OpenOptionsExt},
        },
    },
    path::{Path, PathBuf},
};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// Where a privileged virtlogd writes its state at SIGUSR1.
pub const STATE_FILE: &str = "/run/virtlogd-restart-exec.json";
/// libvirt's virtlogd, where its package installs it (and where its
/// SIGUSR1 re-exec, `execvp(argv[0])`, finds whatever is there).
pub const VIRTLOGD: &str = "/usr/sbin/virtlogd";
/// Where `guestlogctl replace-virtlogd` keeps the real binary while
/// guestlogd sits at `VIRTLOGD` (a dpkg diversion without rename and a hard
/// link): a fall-back tries it first. Its file name is `virtlogd`, so that
/// a virtlogd executed from here is still `virtlogd` to `pidof` and
/// systemctl (the kernel names a process after the file it executed).
pub const DIVERTED: &str = "/usr/libexec/guestlogd/virtlogd";
/// virtlogd's pid file, unless `-p` names another.
pub const PID_FILE: &str = "/run/virtlogd.pid";

/// The state file for this uid: privileged in /run, per-user under
/// `$XDG_RUNTIME_DIR`, as virtlogd places it.
pub fn state_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return STATE_FILE.into();
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| "/run/user".into());
    Path::new(&dir).join("libvirt/virtlogd-restart-exec.json")
}

/// Executes the real virtlogd (never guestlogd itself: a candidate that is
/// this process's binary is skipped) with `argv`, argv[0] included.
pub fn exec_virtlogd(argv: &[OsString]) -> std::io::Error {
    let me = std::fs::metadata("/proc/self/exe").ok();
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no virtlogd at {DIVERTED} or {VIRTLOGD}"),
    );
    let argv: Vec<CString> = argv
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    crate::handover::activation::release_signals_for_exec();
    for candidate in [DIVERTED, VIRTLOGD] {
        let Ok(m) = std::fs::metadata(candidate) else {
            continue;
        };
        if me
            .as_ref()
            .is_some_and(|me| (me.dev(), me.ino()) == (m.dev(), m.ino()))
        {
            continue;
        }
        let Ok(path) = CString::new(candidate) else {
            continue;
        };
        match nix::unistd::execv(&path, &argv) {
            Err(e) => last = std::io::Error::other(format!("{candidate}: {e}")),
            Ok(never) => match never {},
        }
    }
    last
}

/// Writes virtlogd's state file as virtlogd does (mode 0700), replacing
/// whatever is there by a rename, never through a link.
pub fn put_back(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Sets or clears `O_NONBLOCK`, keeping the other status flags.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    let flags = if on {
        flags | OFlag::O_NONBLOCK
    } else {
        flags & !OFlag::O_NONBLOCK
    };
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// The descriptors open now (above 2), read from /proc/self/fd; the
/// directory's own descriptor is gone by the time each is checked.
pub(super) fn open_descriptors() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    listed
        .into_iter()
        .filter(|fd| {
            // SAFETY: only borrowed for this one check.
            fcntl(unsafe { BorrowedFd::borrow_raw(*fd) }, FcntlArg::F_GETFD).is_ok()
        })
        .collect()
}

/// Closes what the process was born with that virtlogd's state does not
/// name: nothing else may keep a peer's connection or a pipe open.
pub(super) fn close_others(born: &[RawFd], keep: &[RawFd]) {
    for fd in born {
        if !keep.contains(fd) {
            // SAFETY: inherited at exec, named by no state: nothing in
            // this process refers to it (it was open before `find`, and
            // nothing of ours opens a descriptor before `adopt`).
            drop(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
}

/// virtlogd's pid file, taken as virtlogd takes it (a write lock on its
/// first byte, the pid written): held for this process's life, so a second
/// virtlogd cannot start beside it. Best effort: it guards nothing of ours.
pub(super) fn retake_pid_file(path: &Path) {
    static HELD: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path);
    let Ok(mut f) = opened else {
        return;
    };
    let lock = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 1,
        l_pid: 0,
    };
    if fcntl(&f, FcntlArg::F_SETLK(&lock)).is_err() {
        return;
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    let _ = HELD.set(f);
}
