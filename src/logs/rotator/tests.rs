use std::{fs, path::Path};

use proptest::prelude::*;

use super::*;
use crate::logs::{name::LogName, policy::Policy};

pub(super) fn name() -> LogName {
    LogName::try_from("vm").unwrap()
}

pub(super) fn open(dir: &Path, max_size: u64, max_backups: u32) -> RotatingFile {
    RotatingFile::open(
        Arc::new(LogDir::open(dir).unwrap()),
        BaseName::for_log(&name()),
        Policy {
            max_size,
            max_backups,
            ..Policy::default()
        },
    )
    .unwrap()
}

/// Every byte kept, oldest first, read straight from disk.
fn kept(dir: &Path, max_backups: u32) -> Vec<u8> {
    let mut all = Vec::new();
    for k in (0..max_backups).rev() {
        if let Ok(b) = fs::read(dir.join(format!("vm.log.{k}"))) {
            all.extend(b);
        }
    }
    all.extend(fs::read(dir.join("vm.log")).unwrap());
    all
}

pub(super) fn read_all(log: &mut RotatingFile, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = None;
    loop {
        let c = log.read(pos, step).unwrap();
        assert!(!c.skipped);
        out.extend(&c.data);
        pos = Some(c.next);
        if c.eof {
            return out;
        }
    }
}

#[test]
fn cuts_after_the_last_newline_near_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 100, 2);
    let line = format!("{}\n", "a".repeat(59)); // 60 bytes
    log.write(line.as_bytes()).unwrap();
    log.write(line.as_bytes()).unwrap();
    // The second line does not fit. The last newline before the cap is
    // the file's own last byte, so the whole line moves on.
    assert_eq!(
        fs::read(dir.path().join("vm.log.0")).unwrap(),
        line.as_bytes()
    );
    assert_eq!(
        fs::read(dir.path().join("vm.log")).unwrap(),
        line.as_bytes()
    );
    assert_eq!(log.rotations(), 1);
}

#[test]
fn a_read_that_ended_mid_line_below_the_cap_moves_the_line_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 100, 2);
    let first = [&[b'a'; 79][..], b"\n"].concat();
    log.write(&first).unwrap();
    // A read ends mid-line, 5 bytes below the cap.
    log.write(&[b'b'; 15]).unwrap();
    log.write(b"bbbbbbbbbb\n").unwrap();
    assert_eq!(fs::read(dir.path().join("vm.log.0")).unwrap(), first);
    let line = [&[b'b'; 25][..], b"\n"].concat();
    assert_eq!(fs::read(dir.path().join("vm.log")).unwrap(), line);
    assert_eq!(log.size(), 26);
    assert_eq!(log.bytes_written(), 106);
    assert_eq!(read_all(&mut log, 7), [first, line].concat());
    // A line longer than the window is still cut at the cap.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 100, 2);
    log.write(&[b'c'; 95]).unwrap();
    log.write(b"ccccccccccc\n").unwrap();
    assert_eq!(log.size(), 7);
}

#[test]
fn no_backups_truncates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096, 0);
    let inode = log.end().unwrap().inode;
    log.write(&[b'x'; 5000]).unwrap();
    assert_eq!(log.size(), 5000 - 4096);
    assert_eq!(log.end().unwrap().inode, inode);
    assert!(!dir.path().join("vm.log.0").exists());
}

#[test]
fn a_file_over_its_cap_is_rotated_on_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("vm.log"), vec![b'x'; 10_000]).unwrap();
    fs::write(dir.path().join("vm.log.7"), b"stale").unwrap();
    let log = open(dir.path(), 4096, 2);
    assert_eq!(log.size(), 0);
    assert_eq!(
        fs::metadata(dir.path().join("vm.log.0")).unwrap().len(),
        10_000
    );
    // Beyond the policy: left for an explicit policy change to remove.
    assert!(dir.path().join("vm.log.7").exists());
    assert_eq!(log.backups(), 1);
}

#[test]
fn only_an_explicit_policy_change_removes_backups() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path(), 4096, 8);
        for _ in 0..9 {
            log.write(&[b'x'; 4096]).unwrap();
        }
        assert_eq!(log.backups(), 8);
    }
    // Opened again with a smaller policy (a forgotten log's was lost):
    // nothing is removed, and rotating keeps what lies beyond.
    let mut log = open(dir.path(), 4096, 3);
    assert_eq!(log.backups(), 3);
    log.rotate().unwrap();
    for k in 0..8 {
        assert!(
            dir.path().join(format!("vm.log.{k}")).exists(),
            "vm.log.{k}"
        );
    }
    // Asked for: then they go.
    log.set_policy(Policy {
        max_size: 4096,
        max_backups: 3,
        ..Policy::default()
    })
    .unwrap();
    let left: Vec<bool> = (0..8)
        .map(|k| dir.path().join(format!("vm.log.{k}")).exists())
        .collect();
    assert_eq!(left, [true, true, true, false, false, false, false, false]);
}

#[test]
fn positions_survive_rotation_and_report_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096, 1);
    log.write(b"first\n").unwrap();
    let pos = log.end().unwrap();
    log.write(b"second\n").unwrap();
    log.rotate().unwrap();
    log.write(b"third\n").unwrap();
    let c = log.read(Some(pos), 1000).unwrap();
    assert_eq!(c.data, b"second\nthird\n");
    assert!(c.eof && !c.skipped);
    // Two more rotations push that file out of the only backup slot.
    log.rotate().unwrap();
    log.rotate().unwrap();
    let c = log.read(Some(pos), 1000).unwrap();
    assert!(c.skipped);
    log.truncate().unwrap();
    let c = log
        .read(
            Some(Pos {
                inode: log.end().unwrap().inode,
                offset: 99,
            }),
            10,
        )
        .unwrap();
    assert!(c.skipped);
}

#[test]
fn tail_reads_across_backups() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096, 2);
    log.write(b"abc").unwrap();
    log.rotate().unwrap();
    log.write(b"defg").unwrap();
    assert_eq!(log.tail(5).unwrap(), b"cdefg");
    assert_eq!(log.tail(100).unwrap(), b"abcdefg");
    assert_eq!(log.tail(0).unwrap(), b"");
    log.rotate().unwrap();
    assert_eq!(log.tail(2).unwrap(), b"fg");
}

#[test]
fn write_errors_are_counted_as_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), 4096, 1);
    // A read-only descriptor makes every write fail, as a full disk would.
    log.file = File::open(dir.path().join("vm.log")).unwrap();
    assert!(log.write(b"lost").is_err());
    assert_eq!(log.bytes_dropped(), 4);
    assert_eq!(log.bytes_written(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random writes and rotations against every invariant.
    #[test]
    fn invariants_hold(
        max_size in 4096u64..6000,
        max_backups in 0u32..4,
        ops in prop::collection::vec(
            prop_oneof![
                8 => (1usize..9000, any::<u8>()).prop_map(Some),
                1 => Just(None),
            ],
            1..40,
        ),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), max_size, max_backups);
        let mut written = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Some((len, seed)) => {
                    // Newlines at varying places exercise the line cut.
                    let data: Vec<u8> = (0..len)
                        .map(|j| if (j + seed as usize).is_multiple_of(37) { b'\n' } else { b'a' + (i % 26) as u8 })
                        .collect();
                    log.write(&data).unwrap();
                    written.extend(data);
                }
                None => log.rotate().unwrap(),
            }
            let current = fs::metadata(dir.path().join("vm.log")).unwrap().len();
            prop_assert!(current <= max_size);
            prop_assert_eq!(current, log.size());
            let mut disk = current;
            let mut backups = 0;
            for entry in fs::read_dir(dir.path()).unwrap() {
                let entry = entry.unwrap();
                let file = entry.file_name().into_string().unwrap();
                if let Some(k) = file.strip_prefix("vm.log.") {
                    let k: u32 = k.parse().unwrap();
                    prop_assert!(k < max_backups);
                    let len = entry.metadata().unwrap().len();
                    prop_assert!(len <= max_size);
                    disk += len;
                    backups += 1;
                } else {
                    prop_assert_eq!(file, "vm.log");
                }
            }
            prop_assert_eq!(backups, log.backups());
            prop_assert!(disk <= max_size * (max_backups as u64 + 1));
            let kept = kept(dir.path(), max_backups);
            prop_assert!(written.ends_with(&kept));
            prop_assert_eq!(read_all(&mut log, 1000), kept);
        }
        prop_assert_eq!(log.bytes_written(), written.len() as u64);
    }
}
