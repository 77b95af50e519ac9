//! Taking over from libvirt's virtlogd in its own process: the state file
//! its SIGUSR1 re-exec wrote, and the descriptors it names.
//!
//! `find` runs first in `main`, before guestlogd opens anything: it notes
//! which descriptors the process was born with, reads the file (at most
//! `format::MAX_SIZE`, never through a link, only one this uid owns) and
//! decides by its `magic` alone whether it is this process's. `adopt` then
//! parses it strictly, checks every descriptor it names (pipes are pipes
//! read ends, listeners listen, clients are connected, libvirt's clients
//! are uid 0, paths are under libvirt's roots), and only then changes
//! anything: it closes every other inherited descriptor above 2, sets
//! `FD_CLOEXEC` and `O_NONBLOCK` on what it keeps, and hands the daemon
//! duplicates.
//!
//! Invariant: a successor never dies with the pipes in its hands. The
//! `Kit` keeps each named descriptor at its number and the file's bytes
//! until the daemon has taken everything over (`Kit::commit`); until then
//! any failure — a state `adopt` refuses, a bad configuration, an error of
//! the daemon's own — is `Kit::fall_back`: the file goes back, pipes are
//! made blocking again, and the real virtlogd is executed in this process,
//! which adopts them as after its own reload. Nothing here makes a system
//! call virtlogd's sandbox forbids.

use std::{
    ffi::OsString,
    io::Read,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    sys::socket::{AddressFamily, SockaddrLike, UnixAddr, getsockname, getsockopt, sockopt},
};

pub use super::process::{
    DIVERTED, PID_FILE, STATE_FILE, VIRTLOGD, exec_virtlogd, put_back, set_nonblocking, state_path,
};
use super::{
    format::{FormatError, MAX_SIZE, VirtlogdState, magic},
    origins::Origin,
    process::{close_others, open_descriptors, retake_pid_file},
};
use crate::logs::name::LogName;

/// Why virtlogd's state was not taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("cannot read virtlogd's state")]
    Format(#[from] FormatError),
    #[error("fd {fd} ({what}): {why}")]
    Descriptor {
        fd: RawFd,
        what: &'static str,
        why: String,
    },
    #[error("virtlogd's log {path}: {why}; guestlogd would refuse it")]
    Path { path: String, why: String },
    #[error("cannot duplicate fd {0}")]
    Dup(RawFd, #[source] nix::Error),
}

/// What `find` found.
#[derive(Debug)]
pub enum Found {
    /// No state for this process; the note says why a file was left alone.
    Nothing(Option<String>),
    /// Started as virtlogd, another process's state (a failed exec's):
    /// removed, as virtlogd removes it.
    Stale { magic: String },
    /// virtlogd executed this process: its state, removed from disk.
    Ours(Taken),
    /// Started as virtlogd, a file whose magic cannot be read: it goes
    /// back to virtlogd as it is.
    Unreadable(Taken),
}

/// virtlogd's state, read and removed.
#[derive(Debug)]
pub struct Taken {
    path: PathBuf,
    bytes: Vec<u8>,
    /// The descriptors this process was born with.
    born: Vec<RawFd>,
}

/// The state file, if there is one; see `Found`. `as_virtlogd`: this
/// process was started by virtlogd's name (argv[0]).
pub fn find(as_virtlogd: bool) -> Found {
    let born = open_descriptors();
    let path = state_path();
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Nothing(None),
        Err(e) => return Found::Nothing(Some(format!("{}: {e}", path.display()))),
    };
    let own = |m: &std::fs::Metadata| {
        m.is_file() && m.uid() == nix::unistd::geteuid().as_raw() && m.len() <= MAX_SIZE
    };
    match file.metadata() {
        Ok(m) if own(&m) => {}
        _ => {
            return Found::Nothing(Some(format!(
                "{}: not a regular file of this user of at most {MAX_SIZE} bytes",
                path.display()
            )));
        }
    }
    let mut bytes = Vec::new();
    if let Err(e) = (&mut file).take(MAX_SIZE).read_to_end(&mut bytes) {
        return Found::Nothing(Some(format!("{}: {e}", path.display())));
    }
    drop(file);
    let ours = std::process::id().to_string();
    let taken = |bytes| {
        // Removed before anything is parsed, as virtlogd does: a stale
        // file must never be read twice.
        let _ = std::fs::remove_file(&path);
        Taken {
            path: path.clone(),
            bytes,
            born,
        }
    };
    match magic(&bytes) {
        Some(m) if m == ours => Found::Ours(taken(bytes)),
        Some(m) if as_virtlogd => {
            drop(taken(bytes));
            Found::Stale { magic: m }
        }
        None if as_virtlogd => Found::Unreadable(taken(bytes)),
        _ => Found::Nothing(Some(format!(
            "{}: not this process's state; left as it is",
            path.display()
        ))),
    }
}

/// A pipe virtlogd was reading: its read end, its log and who opened it.
#[derive(Debug)]
pub struct InheritedPipe {
    pub read: OwnedFd,
    pub log: LogName,
    pub origin: Origin,
}

/// What the daemon takes over: duplicates, each `FD_CLOEXEC` and
/// `O_NONBLOCK`.
#[derive(Debug)]
pub struct Inherited {
    pub pipes: Vec<InheritedPipe>,
    /// libvirt's listening socket.
    pub listener: OwnedFd,
    /// Its path, when virtlogd bound it itself (`unlinkUNIX`): removed at
    /// a final stop, as virtlogd would.
    pub listener_path: Option<PathBuf>,
    /// virt-admin's listener under socket activation: held, not served,
    /// so that a hand-back can give it back.
    pub admin: Option<OwnedFd>,
    /// libvirt's connected clients (uid 0).
    pub clients: Vec<OwnedFd>,
}

/// Everything needed to give virtlogd its state back untouched, until the
/// daemon has taken it over.
#[derive(Debug)]
pub struct Kit {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Every descriptor the file names, at its number.
    originals: Vec<OwnedFd>,
    /// Of those, the pipes, made blocking again for virtlogd.
    pipes: Vec<RawFd>,
    /// Sockets virtlogd bound itself that guestlogd closes: their paths
    /// go at `commit` (`unlinkUNIX`).
    unlink: Vec<PathBuf>,
}

impl Taken {
    /// The bytes as read, for a fall-back.
    pub fn kit(self) -> Kit {
        Kit {
            path: self.path,
            bytes: self.bytes,
            originals: Vec::new(),
            pipes: Vec::new(),
            unlink: Vec::new(),
        }
    }

    /// Checks everything, then takes it; see the module's documentation.
    /// `roots`: where libvirt may name logs.
    #[allow(clippy::result_large_err)]
    pub fn adopt(self, roots: &[PathBuf]) -> Result<(Inherited, Kit), (Kit, AdoptError)> {
        let born = self.born.clone();
        let mut kit = self.kit();
        let state = match VirtlogdState::parse(&kit.bytes) {
            Ok(s) => s,
            Err(e) => return Err((kit, e.into())),
        };
        match kit.take(&state, roots) {
            Ok(inherited) => {
                // Everything checked: from here on, changes.
                let keep: Vec<RawFd> = kit.originals.iter().map(AsRawFd::as_raw_fd).collect();
                close_others(&born, &keep);
                if let Err(e) = kit.prepare() {
                    return Err((kit, e));
                }
                Ok((inherited, kit))
            }
            Err(e) => Err((kit, e)),
        }
    }
}

impl Kit {
    /// Wraps every descriptor `state` names into the kit, then checks each
    /// and makes the daemon's duplicates; changes nothing else.
    fn take(&mut self, state: &VirtlogdState, roots: &[PathBuf]) -> Result<Inherited, AdoptError> {
        let admin = state.admin.as_ref();
        let named: Vec<(RawFd, &'static str)> = state
            .virtlogd
            .listeners()
            .map(|s| (s.fd, "libvirt's listener"))
            .chain(
                state
                    .virtlogd
                    .clients
                    .iter()
                    .map(|c| (c.sock.fd, "a libvirt client")),
            )
            .chain(
                admin
                    .into_iter()
                    .flat_map(|a| a.listeners().map(|s| (s.fd, "virt-admin's listener"))),
            )
            .chain(
                admin
                    .into_iter()
                    .flat_map(|a| a.clients.iter().map(|c| (c.sock.fd, "a virt-admin client"))),
            )
            .chain(state.files.iter().map(|f| (f.pipefd, "a log pipe")))
            .collect();
        // First all of them, so that whatever fails next the kit holds
        // every one at its number, and nothing closes one by accident.
        for (fd, what) in named {
            // SAFETY: only borrowed for this one check.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            if let Err(e) = fcntl(borrowed, FcntlArg::F_GETFD) {
                return Err(AdoptError::Descriptor {
                    fd,
                    what,
                    why: format!("not open: {e}"),
                });
            }
            // SAFETY: the descriptor is open, virtlogd left it to this
            // process under this number, and the file names it once
            // (`format` checks): nothing else in the process owns it.
            self.originals.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let originals = &self.originals;
        let held = |fd: RawFd| {
            originals
                .iter()
                .find(|o| o.as_raw_fd() == fd)
                .ok_or(AdoptError::Descriptor {
                    fd,
                    what: "a named descriptor",
                    why: "not held".into(),
                })
        };

        let sock =
            state.virtlogd.listeners().next().ok_or_else(|| {
                AdoptError::Format(FormatError::Unsupported("no listener".into()))
            })?;
        let listener = held(sock.fd)?;
        let path = socket_path(listener, true, "libvirt's listener")?;
        let mut out = Inherited {
            pipes: Vec::new(),
            listener: dup(listener)?,
            listener_path: sock.unlinks().then_some(path).flatten(),
            admin: None,
            clients: Vec::new(),
        };
        for c in &state.virtlogd.clients {
            let fd = held(c.sock.fd)?;
            socket_path(fd, false, "a libvirt client")?;
            // libvirt's system daemons are root, and virtlogd refuses
            // others too; one that is not is closed (at `commit`).
            if getsockopt(fd, sockopt::PeerCredentials).is_ok_and(|p| p.uid() == 0) {
                out.clients.push(dup(fd)?);
            } else {
                tracing::warn!(
                    fd = c.sock.fd,
                    "closing a client of virtlogd's that is not uid 0"
                );
            }
        }
        let mut unlink = Vec::new();
        if let Some(admin) = admin {
            for s in admin.listeners() {
                let fd = held(s.fd)?;
                match (s.unlinks(), socket_path(fd, true, "virt-admin's listener")?) {
                    // virtlogd bound it: the path goes with guestlogd's
                    // copy, as at virtlogd's final close.
                    (true, Some(path)) => unlink.push(path),
                    (true, None) => {}
                    // systemd's socket unit's: held, for a hand-back.
                    (false, _) if out.admin.is_none() => out.admin = Some(dup(fd)?),
                    (false, _) => {}
                }
            }
            for c in &admin.clients {
                socket_path(held(c.sock.fd)?, false, "a virt-admin client")?;
            }
        }
        let mut paths = std::collections::BTreeSet::new();
        let mut pipes = Vec::new();
        for f in &state.files {
            let read = held(f.pipefd)?;
            check_pipe(read, f.pipefd)?;
            let log = LogName::libvirt(&f.path, roots).map_err(|why| AdoptError::Path {
                path: f.path.clone(),
                why,
            })?;
            if !paths.insert(log.clone()) {
                return Err(AdoptError::Path {
                    path: f.path.clone(),
                    why: "named twice".into(),
                });
            }
            out.pipes.push(InheritedPipe {
                read: dup(read)?,
                log,
                origin: Origin {
                    driver: f.driver.clone(),
                    domain: f.domname.clone(),
                    uuid: f.domuuid.to_ascii_lowercase(),
                },
            });
            pipes.push(f.pipefd);
        }
        self.pipes = pipes;
        self.unlink = unlink;
        Ok(out)
    }

    /// `FD_CLOEXEC` on every original and `O_NONBLOCK` on every
    /// description (shared with the duplicates the daemon gets).
    fn prepare(&self) -> Result<(), AdoptError> {
        for fd in &self.originals {
            let raw = fd.as_raw_fd();
            let failed = |e: nix::Error| AdoptError::Descriptor {
                fd: raw,
                what: "an inherited descriptor",
                why: e.to_string(),
            };
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(failed)?;
            set_nonblocking(fd.as_fd(), true).map_err(failed)?;
        }
        Ok(())
    }

    /// The daemon has taken everything over: the originals close (so do
    /// virt-admin's clients: they see the end of their connection), the
    /// paths of sockets virtlogd bound and guestlogd closed go, and the
    /// pid file is taken again.
    pub fn commit(self, pid_file: &Path) {
        for path in &self.unlink {
            let _ = std::fs::remove_file(path);
        }
        drop(self.originals);
        retake_pid_file(pid_file);
    }

    /// Gives virtlogd its state back: the file as it was read, every named
    /// descriptor at its number without `FD_CLOEXEC`, the pipes blocking as
    /// virtlogd reads them, then the real virtlogd executed with `argv`.
    /// Returns only if no virtlogd could be executed.
    pub fn fall_back(self, argv: &[OsString]) -> std::io::Error {
        if let Err(e) = put_back(&self.path, &self.bytes) {
            return e;
        }
        for fd in &self.originals {
            let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()));
        }
        for fd in &self.pipes {
            // SAFETY: one of `originals`, open until the exec.
            let _ = set_nonblocking(unsafe { BorrowedFd::borrow_raw(*fd) }, false);
        }
        let err = exec_virtlogd(argv);
        // Still here: no virtlogd to give it to. The file would mislead a
        // later start; the descriptors go with this process.
        let _ = std::fs::remove_file(&self.path);
        err
    }
}

/// The kit between `adopt` and the daemon's commit: the caller keeps one
/// handle for a fall-back, the daemon commits through the other once it
/// has taken everything over.
#[derive(Debug)]
pub struct KitHold {
    kit: std::sync::Mutex<Option<Kit>>,
    pid_file: PathBuf,
}

impl KitHold {
    pub fn new(kit: Kit, pid_file: PathBuf) -> Self {
        Self {
            kit: std::sync::Mutex::new(Some(kit)),
            pid_file,
        }
    }

    /// See `Kit::commit`; once.
    pub fn commit(&self) {
        if let Some(kit) = crate::lock(&self.kit).take() {
            kit.commit(&self.pid_file);
        }
    }

    /// The kit, if not committed yet: for a fall-back.
    pub fn take(&self) -> Option<Kit> {
        crate::lock(&self.kit).take()
    }
}

/// A duplicate for the daemon, `FD_CLOEXEC`, above the standard three.
fn dup(fd: &OwnedFd) -> Result<OwnedFd, AdoptError> {
    let dup =
        fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(|e| AdoptError::Dup(fd.as_raw_fd(), e))?;
    // SAFETY: fcntl just made this descriptor for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// A pipe's read end, or why not.
fn check_pipe(fd: &OwnedFd, n: RawFd) -> Result<(), AdoptError> {
    let bad = |why: String| AdoptError::Descriptor {
        fd: n,
        what: "a log pipe",
        why,
    };
    let st = nix::sys::stat::fstat(fd).map_err(|e| bad(e.to_string()))?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFIFO {
        return Err(bad("not a pipe".into()));
    }
    let flags =
        OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| bad(e.to_string()))?);
    if flags & OFlag::O_ACCMODE != OFlag::O_RDONLY {
        return Err(bad("not a read end".into()));
    }
    Ok(())
}

/// A unix socket, listening or not as `listening` says, and its path if it
/// has one; virtlogd requires `getsockname` to work on each.
fn socket_path(
    fd: &OwnedFd,
    listening: bool,
    what: &'static str,
) -> Result<Option<PathBuf>, AdoptError> {
    let n = fd.as_raw_fd();
    let bad = |why: String| AdoptError::Descriptor { fd: n, what, why };
    let addr: UnixAddr = getsockname(n).map_err(|e| bad(format!("not a unix socket: {e}")))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(bad("not a unix socket".into()));
    }
    let accepts = getsockopt(fd, sockopt::AcceptConn).map_err(|e| bad(e.to_string()))?;
    if accepts != listening {
        return Err(bad(if listening {
            "not listening".into()
        } else {
            "a listener, not a connection".into()
        }));
    }
    Ok(addr.path().map(Path::to_owned))
}
