//! `scan`: the log files guestlogd wrote that are on disk now, whether or
//! not the registry remembers their logs, for retention and the disk
//! budget (`vacuum`).
//!
//! Where: the log directory, and each of libvirt's roots with its
//! subdirectories one level down (as virtlogd's cleaner looks). What: the
//! names guestlogd gives files, `NAME.log` and `NAME.log.N`, grouped into
//! chains by `NAME.log`, and only our own regular files with one link (a
//! symlink, a FIFO, another user's file or a hard link is none of ours and
//! is never listed, so never removed). Directories are opened through
//! their root's descriptor with no symlink followed (`LogDir::open_beneath`).
//! Blocks: runs on a blocking thread.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use nix::sys::stat::{FileStat, SFlag};

use super::{logdir::LogDir, name::LogName, places::Places};

/// One file of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its name in the chain's directory.
    pub name: String,
    /// `None` for the current file, `Some(k)` for the backup `.k`.
    pub backup: Option<u32>,
    pub size: u64,
    /// Last modified, in seconds since the epoch.
    pub mtime: i64,
}

/// A log's files in one directory.
#[derive(Debug)]
pub struct Chain {
    pub dir: Arc<LogDir>,
    /// `NAME.log`.
    pub base: String,
    /// The log's name, when the name rule takes it: `NAME` in the log
    /// directory, the file's path under a root.
    pub log: Option<LogName>,
    /// The directory's file system.
    pub device: u64,
    pub files: Vec<File>,
}

impl Chain {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// When the chain was last written.
    pub fn newest(&self) -> i64 {
        self.files.iter().map(|f| f.mtime).max().unwrap_or(i64::MIN)
    }
}

/// Every chain on disk. A directory that cannot be listed is left out,
/// with its error, rate-limited.
pub fn scan(places: &Places) -> Vec<Chain> {
    let mut chains = Vec::new();
    if let Ok(dir) = LogDir::open(places.dir()) {
        list(Arc::new(dir), true, &mut chains, None);
    }
    for root in places.roots() {
        let Ok(top) = LogDir::open_beneath(root, Path::new("")) else {
            continue;
        };
        let top = Arc::new(top);
        let subdirs = list(top.clone(), false, &mut chains, Some(root));
        for sub in subdirs {
            if let Ok(d) = LogDir::open_beneath(root, Path::new(&sub)) {
                list(Arc::new(d), false, &mut chains, None);
            }
        }
    }
    chains
}

/// Adds `dir`'s chains; returns its subdirectories' names when `root` is
/// given (the caller lists them too).
fn list(
    dir: Arc<LogDir>,
    plain: bool,
    chains: &mut Vec<Chain>,
    root: Option<&Path>,
) -> Vec<String> {
    let entries = match dir.entries() {
        Ok(e) => e,
        Err(e) => {
            crate::limited!(warn, dir = %dir.path().display(), error = %e, "cannot list a log directory");
            return Vec::new();
        }
    };
    let device = dir.device().unwrap_or(0);
    let mut subdirs = Vec::new();
    let mut found: BTreeMap<String, Vec<File>> = BTreeMap::new();
    for (name, st) in entries {
        let Some(st) = st else { continue };
        if root.is_some() && is_dir(&st) {
            subdirs.push(name);
            continue;
        }
        let Some((base, backup)) = log_file(&name) else {
            continue;
        };
        if !dir.is_ours(&st) {
            continue;
        }
        found.entry(base.to_owned()).or_default().push(File {
            name: name.clone(),
            backup,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: st.st_mtime,
        });
    }
    for (base, files) in found {
        let log = if plain {
            base.strip_suffix(".log")
                .and_then(|n| LogName::try_from(n).ok())
        } else {
            LogName::from_path(&dir.display(&base).display().to_string()).ok()
        };
        chains.push(Chain {
            dir: dir.clone(),
            base,
            log,
            device,
            files,
        });
    }
    subdirs
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// `NAME.log` is a current file, `NAME.log.N` backup N; anything else is
/// not a log file's name.
pub fn log_file(name: &str) -> Option<(&str, Option<u32>)> {
    if name.starts_with('.') {
        return None;
    }
    if name.ends_with(".log") && name.len() > 4 {
        return Some((name, None));
    }
    let (base, index) = name.rsplit_once('.')?;
    if !base.ends_with(".log") || base.len() <= 4 || index.is_empty() {
        return None;
    }
    if !index.bytes().all(|b| b.is_ascii_digit()) || index.len() > 3 {
        return None;
    }
    Some((base, Some(index.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_log_files() {
        assert_eq!(log_file("vm.log"), Some(("vm.log", None)));
        assert_eq!(log_file("vm.log.0"), Some(("vm.log", Some(0))));
        assert_eq!(log_file("vm.boot.log.12"), Some(("vm.boot.log", Some(12))));
        for not in [
            "vm.log.",
            "vm.log.x",
            ".vm.log.next",
            ".log",
            "vm.txt",
            "vm.log.1234",
            "log.1",
        ] {
            assert_eq!(log_file(not), None, "{not}");
        }
    }

    #[test]
    fn finds_chains_and_only_our_regular_files() {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("logs");
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::create_dir_all(root.join("qemu")).unwrap();
        std::fs::write(logs.join("a.log"), b"12345").unwrap();
        std::fs::write(logs.join("a.log.0"), b"123").unwrap();
        std::fs::write(logs.join("notes.txt"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", logs.join("b.log")).unwrap();
        nix::unistd::mkfifo(&logs.join("c.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(root.join("qemu/vm.log"), b"xy").unwrap();
        std::fs::hard_link(root.join("qemu/vm.log"), root.join("qemu/linked.log")).unwrap();
        std::fs::write(root.join("qemu/other.log.1"), b"abc").unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("evil")).unwrap();
        let places = Places::new(logs.clone(), vec![root.clone()]);
        let mut chains: Vec<(String, u64, Option<String>)> = scan(&places)
            .iter()
            .map(|c| {
                (
                    c.base.clone(),
                    c.bytes(),
                    c.log.as_ref().map(|l| l.to_string()),
                )
            })
            .collect();
        chains.sort();
        let other = root.join("qemu/other.log").display().to_string();
        assert_eq!(
            chains,
            [
                ("a.log".to_owned(), 8, Some("a".to_owned())),
                ("other.log".to_owned(), 3, Some(other)),
            ]
        );
    }
}
