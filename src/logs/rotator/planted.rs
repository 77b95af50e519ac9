//! What a hostile user can plant at our names: each is refused with a
//! `Planted` error or skipped, and what it points to is left as it was.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{sys::stat::Mode, unistd::mkfifo};

use super::tests::{name, open, read_all};
use super::*;

const SECRET: &[u8] = b"root:only:secret\n";

/// A log directory and, outside it, a root-only file to aim plants at.
struct Plot {
    logs: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Plot {
    fn new() -> Self {
        let plot = Self {
            logs: tempfile::tempdir().unwrap(),
            outside: tempfile::tempdir().unwrap(),
        };
        fs::write(plot.target(), SECRET).unwrap();
        fs::set_permissions(plot.target(), fs::Permissions::from_mode(0o600)).unwrap();
        plot
    }

    fn dir(&self) -> &Path {
        self.logs.path()
    }

    fn at(&self, name: &str) -> PathBuf {
        self.logs.path().join(name)
    }

    fn target(&self) -> PathBuf {
        self.outside.path().join("secret")
    }

    fn assert_target_untouched(&self) {
        assert_eq!(fs::read(self.target()).unwrap(), SECRET);
        assert_eq!(
            fs::metadata(self.target()).unwrap().mode() & 0o7777,
            0o600,
            "never chmod by path"
        );
    }

    fn try_open(&self, max_backups: u32) -> Result<RotatingFile, RotatorError> {
        RotatingFile::open(
            Arc::new(LogDir::open(self.dir()).unwrap()),
            BaseName::for_log(&name()),
            Policy {
                max_size: 4096,
                max_backups,
                ..Policy::default()
            },
        )
    }
}

/// The error is `Planted` for `file`, found as `found`, and says so.
fn assert_planted(e: RotatorError, file: &str, found: Found) {
    let message = e.to_string();
    match e {
        RotatorError::Planted { path, found: f } => {
            assert_eq!(path.file_name().unwrap(), file);
            assert_eq!(f, found);
        }
        e => panic!("expected Planted, got {e:?}"),
    }
    assert!(message.contains(file), "{message}");
    assert!(message.contains(&found.to_string()), "{message}");
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn a_symlink_at_the_current_file_is_refused() {
    let plot = Plot::new();
    symlink(plot.target(), plot.at("vm.log")).unwrap();
    assert_planted(plot.try_open(3).unwrap_err(), "vm.log", Found::Symlink);
    plot.assert_target_untouched();
    assert!(
        fs::symlink_metadata(plot.at("vm.log"))
            .unwrap()
            .is_symlink()
    );
}

#[test]
fn a_dangling_symlink_at_the_current_file_creates_nothing() {
    let plot = Plot::new();
    let nowhere = plot.outside.path().join("created");
    symlink(&nowhere, plot.at("vm.log")).unwrap();
    assert_planted(plot.try_open(3).unwrap_err(), "vm.log", Found::Symlink);
    assert!(!nowhere.exists());
}

#[test]
fn a_symlink_at_the_temporary_file_is_removed_not_followed() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 2);
    log.write(b"one\n").unwrap();
    symlink(plot.target(), plot.at(".vm.log.next")).unwrap();
    log.rotate().unwrap();
    log.write(b"two\n").unwrap();
    plot.assert_target_untouched();
    assert!(fs::symlink_metadata(plot.at(".vm.log.next")).is_err());
    assert!(fs::symlink_metadata(plot.at("vm.log")).unwrap().is_file());
    assert_eq!(read_all(&mut log, 100), b"one\ntwo\n");
}

#[test]
fn a_directory_at_the_temporary_file_stops_rotation_within_the_cap() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 2);
    fs::create_dir(plot.at(".vm.log.next")).unwrap();
    assert_planted(log.rotate().unwrap_err(), ".vm.log.next", Found::Directory);
    // Writing past the cap needs a rotation: what does not fit is dropped.
    let e = log.write(&[b'x'; 5000]).unwrap_err();
    assert_planted(e, ".vm.log.next", Found::Directory);
    assert_eq!(log.size(), 4096);
    assert_eq!(fs::metadata(plot.at("vm.log")).unwrap().len(), 4096);
    assert_eq!(log.bytes_dropped(), 5000 - 4096);
    assert!(plot.at(".vm.log.next").is_dir());
}

#[test]
fn a_symlink_at_a_backup_is_skipped_when_reading() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 3);
    log.write(b"one\n").unwrap();
    log.rotate().unwrap();
    log.write(b"two\n").unwrap();
    // Our .0 replaced by a link to the secret, and one more at .1.
    fs::remove_file(plot.at("vm.log.0")).unwrap();
    symlink(plot.target(), plot.at("vm.log.0")).unwrap();
    symlink(plot.target(), plot.at("vm.log.1")).unwrap();
    assert_eq!(read_all(&mut log, 100), b"two\n");
    assert_eq!(log.tail(1000).unwrap(), b"two\n");
    let skipped = log.take_skipped();
    assert!(!skipped.is_empty());
    assert!(skipped.iter().all(|s| s.found == Found::Symlink));
    assert!(skipped.iter().any(|s| s.path.ends_with("vm.log.0")));
    assert!(log.take_skipped().is_empty(), "taken once");
    // A rotation only renames the links along, never through them.
    log.rotate().unwrap();
    log.rotate().unwrap();
    plot.assert_target_untouched();
    assert_eq!(read_all(&mut log, 100), b"two\n");
}

#[test]
fn a_directory_at_a_backup_is_skipped_and_stops_rotation() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 3);
    log.write(b"one\n").unwrap();
    log.rotate().unwrap();
    log.write(b"two\n").unwrap();
    fs::create_dir(plot.at("vm.log.1")).unwrap();
    fs::write(plot.at("vm.log.1/inside"), SECRET).unwrap();
    assert_eq!(read_all(&mut log, 100), b"one\ntwo\n");
    assert_eq!(log.take_skipped()[0].found, Found::Directory);
    // Refused before anything moved.
    assert_planted(log.rotate().unwrap_err(), "vm.log.1", Found::Directory);
    assert_eq!(fs::read(plot.at("vm.log.0")).unwrap(), b"one\n");
    assert_eq!(fs::read(plot.at("vm.log")).unwrap(), b"two\n");
    assert_eq!(fs::read(plot.at("vm.log.1/inside")).unwrap(), SECRET);
    assert!(!plot.at(".vm.log.next").exists());
}

#[test]
fn a_directory_beyond_the_policy_does_not_stop_the_log() {
    let plot = Plot::new();
    fs::create_dir(plot.at("vm.log.9")).unwrap();
    let mut log = plot.try_open(2).unwrap();
    log.write(&[b'x'; 9000]).unwrap();
    assert_eq!(log.rotations(), 2);
    // An explicit policy change, which removes what lies beyond, skips it.
    log.set_policy(log.policy()).unwrap();
    assert_eq!(log.take_skipped()[0].found, Found::Directory);
    assert!(plot.at("vm.log.9").is_dir());
}

#[test]
fn a_fifo_at_the_current_file_is_refused_without_hanging() {
    let plot = Plot::new();
    mkfifo(&plot.at("vm.log"), Mode::from_bits_truncate(0o600)).unwrap();
    let start = Instant::now();
    assert_planted(plot.try_open(3).unwrap_err(), "vm.log", Found::Fifo);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_fifo_at_a_backup_is_skipped_without_hanging() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 2);
    log.write(b"mine\n").unwrap();
    mkfifo(&plot.at("vm.log.0"), Mode::from_bits_truncate(0o600)).unwrap();
    assert_eq!(read_all(&mut log, 100), b"mine\n");
    assert_eq!(log.take_skipped()[0].found, Found::Fifo);
}

#[test]
fn a_symlink_to_another_users_file_is_refused() {
    let plot = Plot::new();
    let theirs = plot.outside.path().join("theirs");
    fs::write(&theirs, b"theirs\n").unwrap();
    if is_root() {
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    }
    symlink(&theirs, plot.at("vm.log")).unwrap();
    assert_planted(plot.try_open(3).unwrap_err(), "vm.log", Found::Symlink);
    assert_eq!(fs::read(&theirs).unwrap(), b"theirs\n");
}

#[test]
fn another_users_file_at_our_name_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: chown to another user needs root");
        return;
    }
    let plot = Plot::new();
    fs::write(plot.at("vm.log"), b"theirs\n").unwrap();
    std::os::unix::fs::chown(plot.at("vm.log"), Some(65534), None).unwrap();
    assert_planted(plot.try_open(3).unwrap_err(), "vm.log", Found::Owner(65534));
    assert_eq!(fs::read(plot.at("vm.log")).unwrap(), b"theirs\n");
}

#[test]
fn a_hard_link_at_our_name_is_refused() {
    let plot = Plot::new();
    // Same file system: the secret's directory is a sibling temp dir.
    if fs::hard_link(plot.target(), plot.at("vm.log")).is_err() {
        eprintln!("SKIPPED: cannot hard-link across these directories");
        return;
    }
    assert_planted(plot.try_open(0).unwrap_err(), "vm.log", Found::Links(2));
    fs::remove_file(plot.at("vm.log")).unwrap();
    let mut log = open(plot.dir(), 4096, 2);
    log.write(b"mine\n").unwrap();
    fs::hard_link(plot.target(), plot.at("vm.log.0")).unwrap();
    assert_eq!(read_all(&mut log, 100), b"mine\n");
    assert_eq!(log.take_skipped()[0].found, Found::Links(2));
    plot.assert_target_untouched();
}

#[test]
fn a_name_swapped_after_open_is_never_used() {
    let plot = Plot::new();
    let mut log = open(plot.dir(), 4096, 0);
    log.write(b"mine\n").unwrap();
    // The directory is writable by the attacker: our file moved away, a
    // link put in its place.
    fs::rename(plot.at("vm.log"), plot.outside.path().join("moved")).unwrap();
    symlink(plot.target(), plot.at("vm.log")).unwrap();
    log.truncate().unwrap();
    log.write(&[b'x'; 5000]).unwrap();
    log.rotate().unwrap();
    assert_eq!(read_all(&mut log, 100), b"");
    plot.assert_target_untouched();
}
