//! `LogDir`: a directory that holds logs, opened once and used only through
//! its descriptor; `BaseName`: one log file's name inside it.
//!
//! The directory may be writable by hostile local users, who can plant a
//! symlink, a hard link, a FIFO or a directory at any name we use. So:
//! - every file is opened relative to the directory's descriptor (`openat`)
//!   with `O_NOFOLLOW`, and is used only if `fstat` says it is a regular file
//!   with a single link, owned by our effective uid; anything else is a
//!   `Found` and the file is closed unused;
//! - opens are `O_NONBLOCK` so a planted FIFO or device cannot hang them
//!   (cleared again once the file is known to be regular), `O_NOCTTY` so a
//!   planted terminal cannot become ours, and `O_CLOEXEC`;
//! - renames and unlinks are `renameat`/`unlinkat` within the same
//!   descriptor, which act on names and never follow them;
//! - nothing is ever changed by path: no chmod, chown or truncate by name.
//!
//! Only the directory's own path is resolved, once: by `LogDir::open`, with
//! `O_NOFOLLOW` on its last component, for the log directory the config
//! names; by `LogDir::open_beneath` for a directory libvirt names, resolved
//! from its root's descriptor with `openat2` so that no symlink anywhere
//! below the root is followed and nothing outside it is reached. The path
//! is kept for messages only.

use std::{
    fmt,
    fs::File,
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{AtFlags, FcntlArg, OFlag, fcntl, openat, renameat},
    sys::stat::{FileStat, Mode, SFlag, fstat, fstatat},
    unistd::{Uid, UnlinkatFlags, geteuid, unlinkat},
};

use super::name::LogName;

/// The directory `rel` beneath `root`, resolved as `open_beneath` says:
/// with `openat2` where it is allowed, else one component at a time. A
/// sandbox may refuse `openat2` (systemd's `RestrictSUIDSGID=`, which
/// libvirt's virtlogd.service sets, answers ENOSYS because it cannot see
/// the mode inside `open_how`); the walk gives the same guarantees with
/// plain `openat`: each step is one name opened with `O_NOFOLLOW |
/// O_DIRECTORY` from the previous step's descriptor, and `.`, `..` and
/// absolute paths are refused before any.
fn resolve_beneath(root: &Path, rel: &Path) -> Result<OwnedFd, Errno> {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use nix::fcntl::{OpenHow, ResolveFlag, openat2};
    static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

    let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open(root, dir, Mode::empty())?;
    if rel.as_os_str().is_empty() {
        return Ok(root);
    }
    if !NO_OPENAT2.load(Relaxed) {
        let how = OpenHow::new()
            .flags(dir | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match openat2(root.as_fd(), rel, how) {
            Err(Errno::ENOSYS | Errno::EPERM) => NO_OPENAT2.store(true, Relaxed),
            other => return other,
        }
    }
    walk_beneath(root, rel)
}

/// `rel` beneath the directory `root`, one component at a time.
fn walk_beneath(root: OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    use std::path::Component;
    let dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mut at = root;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(Errno::EXDEV);
        };
        at = openat(at.as_fd(), name, dir, Mode::empty())?;
    }
    Ok(at)
}

/// The longest `BaseName`: with `.N.next` or `.63` around it, every name we
/// derive stays far below the 255-byte limit of a path component.
pub const MAX_BASE_LEN: usize = 200;

/// The directory could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the log directory {path}")]
pub struct LogDirError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A directory of logs, held open. Every name is looked up in the directory
/// this descriptor was opened on, even if its path is later replaced.
#[derive(Debug)]
pub struct LogDir {
    fd: OwnedFd,
    path: PathBuf,
    /// Whose files we accept: the files we create are this uid's.
    owner: Uid,
    /// For a directory opened beneath a root: the root and the path below.
    beneath: Option<(PathBuf, PathBuf)>,
}

/// What was found at a name where one of our log files belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Symlink,
    Directory,
    Fifo,
    Socket,
    Device,
    /// A regular file, but another user's: not one we created.
    Owner(u32),
    /// A regular file with more than one name, so also somewhere else: a
    /// hard link to a file that is not ours.
    Links(u64),
    /// A name in use that we cannot tell apart from the above.
    Unknown,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => f.write_str("a symbolic link"),
            Self::Directory => f.write_str("a directory"),
            Self::Fifo => f.write_str("a FIFO"),
            Self::Socket => f.write_str("a socket"),
            Self::Device => f.write_str("a device node"),
            Self::Owner(uid) => write!(f, "a file owned by uid {uid}"),
            Self::Links(n) => write!(f, "a file with {n} hard links"),
            Self::Unknown => f.write_str("something that is not a regular file"),
        }
    }
}

/// What `LogDir::probe` saw at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Absent,
    /// Our own regular file.
    Ours,
    Planted(Found),
}

/// Why a checked open gave no file.
#[derive(Debug)]
pub enum OpenError {
    /// Something that is not our log file is at the name.
    Found(Found),
    Io(io::Error),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> Self {
        Self::Io(e.into())
    }
}

/// How a log file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and append, creating the file if it is absent.
    Append,
    /// Read and append a file that must not exist yet.
    CreateNew,
    /// Read only.
    Read,
}

impl LogDir {
    /// Opens the directory at `path`. Its last component must not be a
    /// symlink; the components above it are the administrator's.
    pub fn open(path: &Path) -> Result<Self, LogDirError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(|e| LogDirError {
            path: path.to_owned(),
            source: e.into(),
        })?;
        Ok(Self {
            fd,
            path: path.to_owned(),
            owner: geteuid(),
            beneath: None,
        })
    }

    /// Opens the directory `rel` (relative, possibly empty) beneath `root`:
    /// `rel` is resolved from the root's descriptor with no symlink
    /// anywhere on the way (`RESOLVE_NO_SYMLINKS`) and never leaving the
    /// root (`RESOLVE_BENEATH`: no `..` out, no absolute jump, no
    /// `/proc` magic link). A directory a user below the root replaced by
    /// a symlink is refused, not followed. The root itself is the
    /// config's, trusted, and opened as its path says.
    pub fn open_beneath(root: &Path, rel: &Path) -> Result<Self, LogDirError> {
        let path = root.join(rel);
        let failed = |e: Errno| LogDirError {
            path: path.clone(),
            source: e.into(),
        };
        let fd = resolve_beneath(root, rel).map_err(failed)?;
        Ok(Self {
            fd,
            path: path.clone(),
            owner: geteuid(),
            beneath: Some((root.to_owned(), rel.to_owned())),
        })
    }

    /// The path the directory was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name`'s path, for messages: it is never opened.
    pub fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` in this directory, refusing anything but our own
    /// regular file. An absent name for `Access::Read` is `NotFound`.
    pub fn open_file(&self, name: &str, access: Access) -> Result<File, OpenError> {
        debug_assert!(!name.contains('/'), "{name} is not one component");
        let mut flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        flags |= match access {
            // Read-write so the current file is also read through this
            // descriptor, never by its name again.
            Access::Append => OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT,
            Access::CreateNew => OFlag::O_RDWR | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::O_EXCL,
            Access::Read => OFlag::O_RDONLY,
        };
        // Logs hold whatever the guest printed, which may be secret.
        let fd = match openat(
            self.fd.as_fd(),
            name,
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(e) => return Err(self.explain(name, e)),
        };
        let st = fstat(&fd)?;
        if let Some(found) = self.foreign(&st) {
            return Err(OpenError::Found(found));
        }
        // Only needed to open safely; blocking I/O is what callers expect.
        let fl = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(fl - OFlag::O_NONBLOCK))?;
        Ok(File::from(fd))
    }

    /// Whether `name` is the very file `file` is open on (same device and
    /// inode), without following it: false once someone removed or
    /// replaced it (libvirt's `--remove-logs` unlinks logs itself).
    pub fn names(&self, name: &str, file: &File) -> bool {
        let (Ok(at), Ok(open)) = (
            fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW),
            fstat(file),
        ) else {
            return false;
        };
        (at.st_dev, at.st_ino) == (open.st_dev, open.st_ino)
    }

    /// Whether the path this directory was opened at still leads to it: a
    /// directory removed and made again is another directory.
    pub fn still_at_path(&self) -> bool {
        let at = match &self.beneath {
            Some((root, rel)) => resolve_beneath(root, rel).and_then(|fd| fstat(&fd)),
            None => nix::sys::stat::lstat(&self.path),
        };
        let (Ok(at), Ok(open)) = (at, fstat(&self.fd)) else {
            return false;
        };
        (at.st_dev, at.st_ino) == (open.st_dev, open.st_ino)
    }

    /// Every name in the directory, with what is there (not followed):
    /// `None` for an entry that went away while listing. For finding the
    /// logs on disk (`inventory`); nothing is opened but the directory.
    pub fn entries(&self) -> io::Result<Vec<(String, Option<FileStat>)>> {
        // A fresh open file description, so listing never races another
        // listing's position.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = openat(self.fd.as_fd(), ".", flags, Mode::empty())?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let st = fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
            out.push((name.to_owned(), st));
        }
        Ok(out)
    }

    /// Whether `st` is our own regular file with one link: one we may
    /// remove.
    pub fn is_ours(&self, st: &FileStat) -> bool {
        self.foreign(st).is_none()
    }

    /// Bytes free to unprivileged writers on this directory's file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let st = nix::sys::statvfs::fstatvfs(&self.fd)?;
        Ok(st.blocks_available() * st.fragment_size())
    }

    /// The directory's file system, as `st_dev`.
    pub fn device(&self) -> io::Result<u64> {
        Ok(fstat(&self.fd)?.st_dev)
    }

    /// What is at `name`, without following it.
    pub fn probe(&self, name: &str) -> io::Result<Entry> {
        match fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(self.foreign(&st).map_or(Entry::Ours, Entry::Planted)),
            Err(Errno::ENOENT) => Ok(Entry::Absent),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to`, both in this directory. `Ok(false)` when
    /// `from` does not exist.
    pub fn rename(&self, from: &str, to: &str) -> Result<bool, OpenError> {
        match renameat(self.fd.as_fd(), from, self.fd.as_fd(), to) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            // A directory at either name: the only thing rename cannot
            // move or replace.
            Err(e @ (Errno::EISDIR | Errno::ENOTDIR | Errno::ENOTEMPTY | Errno::EEXIST)) => {
                let found = [to, from].into_iter().find_map(|n| match self.probe(n) {
                    Ok(Entry::Planted(Found::Directory)) => Some(Found::Directory),
                    _ => None,
                });
                Err(found.map_or(OpenError::Io(e.into()), OpenError::Found))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the name `name` (never what a symlink there points to).
    /// `Ok(false)` when it does not exist.
    pub fn remove(&self, name: &str) -> Result<bool, OpenError> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e @ (Errno::EISDIR | Errno::EPERM)) => Err(self.explain(name, e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Why an operation on `name` failed: what is there if it is not ours,
    /// else the error itself.
    fn explain(&self, name: &str, e: Errno) -> OpenError {
        match e {
            // O_NOFOLLOW met a symlink.
            Errno::ELOOP => OpenError::Found(Found::Symlink),
            // A FIFO or socket without a reader, a directory opened for
            // writing, an existing name for O_EXCL, a directory unlinked,
            // or another user's file in a sticky directory.
            Errno::ENXIO
            | Errno::EISDIR
            | Errno::EEXIST
            | Errno::EPERM
            | Errno::EACCES
            | Errno::ENODEV => match self.probe(name) {
                Ok(Entry::Planted(found)) => OpenError::Found(found),
                _ => OpenError::Io(e.into()),
            },
            e => OpenError::Io(e.into()),
        }
    }

    /// What makes `st` not our log file, if anything.
    // nlink_t is u64 here but u32 on other targets.
    #[allow(clippy::unnecessary_cast)]
    fn foreign(&self, st: &FileStat) -> Option<Found> {
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        let found = match kind {
            SFlag::S_IFREG if st.st_uid != self.owner.as_raw() => Found::Owner(st.st_uid),
            // A name being unlinked right now has 0 links: still ours.
            SFlag::S_IFREG if st.st_nlink > 1 => Found::Links(st.st_nlink as u64),
            SFlag::S_IFREG => return None,
            SFlag::S_IFLNK => Found::Symlink,
            SFlag::S_IFDIR => Found::Directory,
            SFlag::S_IFIFO => Found::Fifo,
            SFlag::S_IFSOCK => Found::Socket,
            SFlag::S_IFCHR | SFlag::S_IFBLK => Found::Device,
            _ => Found::Unknown,
        };
        Some(found)
    }
}

/// Why a base name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseNameError {
    #[error("the file name is empty")]
    Empty,
    #[error("the file name is longer than {MAX_BASE_LEN} bytes")]
    TooLong,
    #[error("the file name starts with a dot")]
    LeadingDot,
    #[error("the file name holds a slash or a NUL")]
    BadChar,
    #[error("{0} has no file name")]
    NoFileName(PathBuf),
}

/// A log's file name in its `LogDir`: one path component, not hidden, so
/// it can never be `.`, `..` or one of our `.BASE.next` temporary files.
/// Its backups are `BASE.0` … and its temporary file `.BASE.next`, all in
/// the same directory.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BaseName(String);

impl BaseName {
    /// `NAME.log`, the file of a log known by name.
    pub fn for_log(name: &LogName) -> Self {
        // LogName's rule is stricter than ours: no slash, no leading dot,
        // at most 128 bytes.
        Self(format!("{name}.log"))
    }

    /// Splits an absolute log path, as libvirt names them
    /// (`/var/log/libvirt/qemu/NAME.log`), into its directory and name.
    pub fn split(path: &Path) -> Result<(&Path, Self), BaseNameError> {
        let no_name = || BaseNameError::NoFileName(path.to_owned());
        let name = path.file_name().ok_or_else(no_name)?;
        let dir = path.parent().ok_or_else(no_name)?;
        let name = name.to_str().ok_or(BaseNameError::BadChar)?;
        Ok((dir, Self::try_from(name)?))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of backup `k` (0 is the newest).
    pub fn backup(&self, k: u32) -> String {
        format!("{}.{k}", self.0)
    }

    /// The next file, prepared before a rotation and renamed into place.
    pub fn temp(&self) -> String {
        format!(".{}.next", self.0)
    }
}

impl TryFrom<&str> for BaseName {
    type Error = BaseNameError;

    fn try_from(name: &str) -> Result<Self, BaseNameError> {
        if name.is_empty() {
            return Err(BaseNameError::Empty);
        }
        if name.len() > MAX_BASE_LEN {
            return Err(BaseNameError::TooLong);
        }
        if name.starts_with('.') {
            return Err(BaseNameError::LeadingDot);
        }
        if name.contains(['/', '\0']) {
            return Err(BaseNameError::BadChar);
        }
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for BaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_a_root_no_symlink_is_followed_either_way() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/evil")).unwrap();
        let open_root = || {
            nix::fcntl::open(
                &root,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .unwrap()
        };
        for rel in ["a/b", "a", ""] {
            assert!(resolve_beneath(&root, Path::new(rel)).is_ok(), "{rel}");
            assert!(walk_beneath(open_root(), Path::new(rel)).is_ok(), "{rel}");
        }
        for rel in ["a/evil/sub", "a/evil", "a/../../outside", "/etc"] {
            assert!(resolve_beneath(&root, Path::new(rel)).is_err(), "{rel}");
            assert!(walk_beneath(open_root(), Path::new(rel)).is_err(), "{rel}");
        }
        let d = LogDir::open_beneath(&root, Path::new("a/b")).unwrap();
        assert!(d.still_at_path());
        std::fs::rename(root.join("a/b"), root.join("a/c")).unwrap();
        std::os::unix::fs::symlink(root.join("a/c"), root.join("a/b")).unwrap();
        assert!(!d.still_at_path(), "a directory replaced by a symlink");
    }
    use std::os::unix::fs::symlink;

    #[test]
    fn base_names_are_one_visible_component() {
        assert_eq!(BaseName::try_from("vm.log").unwrap().temp(), ".vm.log.next");
        assert_eq!(BaseName::try_from("vm.log").unwrap().backup(3), "vm.log.3");
        for bad in ["", ".", "..", ".vm.log.next", "a/b", "a\0b"] {
            assert!(BaseName::try_from(bad).is_err(), "{bad:?}");
        }
        assert!(BaseName::try_from("x".repeat(MAX_BASE_LEN + 1).as_str()).is_err());
        let (dir, base) = BaseName::split(Path::new("/var/log/libvirt/qemu/vm.log")).unwrap();
        assert_eq!(
            (dir, base.as_str()),
            (Path::new("/var/log/libvirt/qemu"), "vm.log")
        );
        assert!(BaseName::split(Path::new("/")).is_err());
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        symlink(tmp.path().join("real"), tmp.path().join("link")).unwrap();
        assert!(LogDir::open(&tmp.path().join("link")).is_err());
        assert!(LogDir::open(&tmp.path().join("real")).is_ok());
    }

    #[test]
    fn the_directory_is_used_by_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let dir = LogDir::open(&real).unwrap();
        // Swapping the path for a symlink changes nothing for us.
        std::fs::rename(&real, tmp.path().join("moved")).unwrap();
        symlink("/", &real).unwrap();
        dir.open_file("x.log", Access::Append).unwrap();
        assert!(tmp.path().join("moved/x.log").is_file());
    }
}
