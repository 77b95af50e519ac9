//! A host's disk stays bounded whatever its guests do, and every gap is
//! written into the log where it is:
//! - ENOSPC: the log directory on a 2 MiB tmpfs, filled while a pipe and a
//!   console with a client write numbered lines, then freed: the log holds
//!   `[guestlogd: N bytes not logged (no space left on device)]` exactly
//!   where the lines are missing, N = bytesDropped; the client saw every
//!   line; the writers were never held up;
//! - EIO: the same with a FUSE file system that fails writes
//!   (tests/stuck/hangfs.py), marked `(input/output error)`;
//! - retention: backdated chains go (in the log directory and under a
//!   libvirt root), recent ones and one held by a pipe stay, and planted
//!   symlinks, FIFOs and other users' files stay untouched;
//! - the disk budget: 20 logs written past their caps under a 1 MiB
//!   max-use never take more than max-use plus one maxSize, each keeps its
//!   current file, and bytesEvicted adds up;
//! - a pipe flooded at 20 times its rate: the writer is never held up, the
//!   log gets at most the burst plus the rate, and what was dropped is
//!   counted and marked.

#[path = "common/collect.rs"]
mod collect;
mod common;
#[path = "common/hangfs.rs"]
mod hangfs;

use collect::collect;
use std::{
    fs,
    io::Write,
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Daemon, call, call_with_fds};
use serde_json::{Value, json};

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn connect(d: &Daemon) -> zlink::tokio::unix::Connection {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

async fn log_info(d: &Daemon, name: &str) -> Value {
    let list = call(&mut connect(d).await, "ListLogs", json!({}))
        .await
        .unwrap();
    list["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_log(d: &Daemon, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = log_info(d, name).await;
        if ok(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "{name}: never {what}: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Numbered 16-byte lines: 256 of them are one 4 KiB page.
fn lines(tag: char, from: u32, to: u32) -> String {
    (from..to).map(|i| format!("{tag} {i:08} ....\n")).collect()
}

/// A socket whose incoming bytes a thread collects.
struct Peer {
    _socket: UnixStream,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn connect(path: &Path) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        let seen = collect(socket.try_clone().unwrap());
        Self {
            _socket: socket,
            seen,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// The log as written: the stream with exactly `n` bytes missing where one
/// marker line of `reason` says so.
fn assert_marked(log: &str, stream: &str, n: u64, reason: &str) {
    let marker = format!("[guestlogd: {n} bytes not logged ({reason})]\n");
    let Some(at) = log.find(&marker) else {
        panic!("no {marker:?} in the log:\n{log}");
    };
    let (before, after) = (&log[..at], &log[at + marker.len()..]);
    assert!(stream.starts_with(before), "the log before the marker");
    assert!(stream.ends_with(after), "the log after the marker");
    assert_eq!(
        stream.len() - before.len() - after.len(),
        n as usize,
        "the marker's count is what is missing there"
    );
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_marked_where_the_lines_are_missing() {
    if !nix::unistd::geteuid().is_root() {
        return println!("SKIPPED: mounting a tmpfs needs root");
    }
    let mut mount = None;
    let d = Daemon::start_with("", |dir| {
        let logs = dir.join("log");
        fs::create_dir_all(&logs).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0750", "tmpfs"])
            .arg(&logs)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs");
        mount = Some(Tmpfs(logs));
    });
    let _mount = mount;
    let mut c = connect(&d).await;
    let (r, mut fds) = call_with_fds(&mut c, "OpenPipe", json!({"name": "p"})).await;
    r.unwrap();
    let mut pipe = fs::File::from(fds.remove(0));
    let created = call(&mut c, "CreateConsole", json!({"name": "c"}))
        .await
        .unwrap();
    let guest = UnixStream::connect(created["guestSocket"].as_str().unwrap()).unwrap();
    let mut guest_w = guest.try_clone().unwrap();
    let client = Peer::connect(Path::new(created["clientSocket"].as_str().unwrap()));

    // A page of lines each, then the disk fills up.
    let (p1, c1) = (lines('p', 0, 256), lines('c', 0, 256));
    pipe.write_all(p1.as_bytes()).unwrap();
    guest_w.write_all(c1.as_bytes()).unwrap();
    for name in ["p", "c"] {
        wait_log(&d, name, "its first page", |l| l["size"] == 4096).await;
    }
    let mut filler = fs::File::create(d.log_dir().join("filler")).unwrap();
    for chunk in [65536, 4096, 1] {
        while filler.write_all(&vec![0u8; chunk]).is_ok() {}
    }
    // Written while the disk is full: refused, counted, and the writers go
    // on (nothing waits in the pipe or the socket).
    let (p2, c2) = (lines('p', 256, 512), lines('c', 256, 512));
    pipe.write_all(p2.as_bytes()).unwrap();
    guest_w.write_all(c2.as_bytes()).unwrap();
    for name in ["p", "c"] {
        wait_log(&d, name, "the second page dropped", |l| {
            l["bytesDropped"] == 4096
        })
        .await;
    }
    wait_until("the client seeing the lines the disk refused", || {
        client.text().contains("c 00000511")
    });
    // Space comes back.
    drop(filler);
    fs::remove_file(d.log_dir().join("filler")).unwrap();
    let (p3, c3) = (lines('p', 512, 600), lines('c', 512, 600));
    pipe.write_all(p3.as_bytes()).unwrap();
    guest_w.write_all(c3.as_bytes()).unwrap();
    for (name, last) in [("p", "p 00000599"), ("c", "c 00000599")] {
        let path = d.log_path(name);
        wait_until("the third batch", || {
            fs::read_to_string(&path).unwrap_or_default().contains(last)
        });
    }
    for (name, stream) in [
        ("p", format!("{p1}{p2}{p3}")),
        ("c", format!("{c1}{c2}{c3}")),
    ] {
        let log = fs::read_to_string(d.log_path(name)).unwrap();
        assert_marked(&log, &stream, 4096, "no space left on device");
        let info = log_info(&d, name).await;
        assert_eq!(info["bytesDropped"], 4096, "{info}");
    }
    let seen = client.text();
    for i in 0..600 {
        assert!(
            seen.contains(&format!("c {i:08} ....")),
            "client missed {i}"
        );
    }
    drop(guest);
}

#[tokio::test]
async fn a_failing_disk_is_marked_with_its_error() {
    let backing = tempfile::tempdir().unwrap();
    let mut mounted = None;
    let d = Daemon::start_with("", |dir| {
        mounted = Some(hangfs::HangFs::mount(
            &backing.path().join("b"),
            &dir.join("log"),
        ));
    });
    let fs_ = match mounted {
        Some(Ok(f)) => f,
        Some(Err(why)) => return println!("SKIPPED: {why}"),
        None => unreachable!(),
    };
    let mut c = connect(&d).await;
    let (r, mut fds) = call_with_fds(&mut c, "OpenPipe", json!({"name": "failing-p"})).await;
    r.unwrap();
    let mut pipe = fs::File::from(fds.remove(0));
    let (a, b, e) = (lines('f', 0, 10), lines('f', 10, 20), lines('f', 20, 30));
    pipe.write_all(a.as_bytes()).unwrap();
    wait_log(&d, "failing-p", "the first lines", |l| l["size"] == 160).await;
    fs_.fail_writes();
    pipe.write_all(b.as_bytes()).unwrap();
    wait_log(&d, "failing-p", "the second lines dropped", |l| {
        l["bytesDropped"] == 160
    })
    .await;
    fs_.heal();
    pipe.write_all(e.as_bytes()).unwrap();
    wait_until("the third lines", || {
        fs_.read("failing-p.log").contains("f 00000029")
    });
    let log = fs_.read("failing-p.log");
    assert_marked(&log, &format!("{a}{b}{e}"), 160, "input/output error");
    drop(d);
}

/// Sets a file's times (not following a symlink) `days` into the past.
fn backdate(path: &Path, days: u32) {
    let ok = Command::new("touch")
        .args(["-h", "-d", &format!("{days} days ago")])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "touch {}", path.display());
}

async fn disk_status(d: &Daemon) -> Value {
    call(&mut connect(d).await, "GetStatus", json!({}))
        .await
        .unwrap()["disk"]
        .clone()
}

#[tokio::test]
async fn old_logs_no_one_uses_are_removed_and_nothing_else() {
    let root_dir = tempfile::tempdir().unwrap();
    let lv = root_dir.path().join("lv");
    let config = format!(
        "[log]\nmax-age-days = 2\n[libvirt]\nroots = [{:?}]\n",
        lv.display().to_string()
    );
    let outside = root_dir.path().join("outside.txt");
    fs::write(&outside, b"not ours\n").unwrap();
    let d = Daemon::start_with(&config, |dir| {
        let log = dir.join("log");
        fs::create_dir_all(&log).unwrap();
        fs::create_dir_all(lv.join("qemu")).unwrap();
        fs::create_dir_all(lv.join("deep/sub")).unwrap();
        let old = [
            log.join("old.log"),
            log.join("old.log.0"),
            log.join("old.log.1"),
            lv.join("qemu/vm.log"),
            lv.join("qemu/vm.log.0"),
            lv.join("top.log"),
        ];
        let kept = [
            log.join("recent.log"),
            log.join("half.log.0"),
            log.join("notes.txt"),
            lv.join("qemu/new.log"),
            lv.join("deep/sub/far.log"),
        ];
        for f in old.iter().chain(&kept) {
            fs::write(f, b"line\n").unwrap();
        }
        // A chain with a recent file is recent.
        fs::write(log.join("half.log"), b"line\n").unwrap();
        std::os::unix::fs::symlink(&outside, log.join("link.log")).unwrap();
        nix::unistd::mkfifo(&log.join("fifo.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::write(log.join("foreign.log"), b"theirs\n").unwrap();
        nix::unistd::chown(&log.join("foreign.log"), Some(65534.into()), None).unwrap();
        let planted = [
            log.join("link.log"),
            log.join("fifo.log"),
            log.join("foreign.log"),
        ];
        // Old, but recent company, not a log's name, or too deep.
        let old_kept = [
            log.join("half.log.0"),
            log.join("notes.txt"),
            lv.join("deep/sub/far.log"),
        ];
        for f in old.iter().chain(&old_kept).chain(&planted) {
            backdate(f, 3);
        }
        backdate(&outside, 3);
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = disk_status(&d).await;
    while status["logsExpired"] != 3 {
        assert!(Instant::now() < deadline, "retention never ran: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = disk_status(&d).await;
    }
    assert_eq!(status["filesExpired"], 6, "{status}");
    let log = d.log_dir();
    for gone in ["old.log", "old.log.0", "old.log.1"] {
        assert!(!log.join(gone).exists(), "{gone}");
    }
    assert!(!lv.join("qemu/vm.log").exists() && !lv.join("qemu/vm.log.0").exists());
    assert!(!lv.join("top.log").exists());
    for kept in [
        "recent.log",
        "half.log",
        "half.log.0",
        "notes.txt",
        "foreign.log",
    ] {
        assert!(log.join(kept).exists(), "{kept}");
    }
    assert!(lv.join("qemu/new.log").exists() && lv.join("deep/sub/far.log").exists());
    assert!(
        log.join("link.log")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(log.join("fifo.log").exists());
    assert_eq!(fs::read(&outside).unwrap(), b"not ours\n");

    // A log in use is never removed, however old: after a re-exec (which
    // runs retention at its start) the held log stays, a new old one goes.
    let mut c = connect(&d).await;
    let (r, mut fds) = call_with_fds(&mut c, "OpenPipe", json!({"name": "held"})).await;
    r.unwrap();
    let _pipe = fs::File::from(fds.remove(0));
    backdate(&log.join("held.log"), 5);
    fs::write(log.join("late.log"), b"x\n").unwrap();
    backdate(&log.join("late.log"), 5);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    wait_until("the successor to serve", || {
        d.stderr().matches(" ready ").count() >= 2
    });
    wait_until("late.log removed", || !log.join("late.log").exists());
    assert!(log.join("held.log").exists(), "a held log was removed");
    let status = disk_status(&d).await;
    assert_eq!(
        (
            status["maxAgeDays"].as_u64(),
            status["logsExpired"].as_u64()
        ),
        (Some(2), Some(1))
    );
}

/// Bytes of the files in `dir`, as `du --apparent-size` counts them.
fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[tokio::test]
async fn twenty_logs_past_their_caps_stay_within_the_disk_budget() {
    const MAX_USE: u64 = 1 << 20;
    const MAX_SIZE: u64 = 65536;
    let d = Daemon::start(&format!("[disk]\nmax-use = {MAX_USE}\n"));
    let mut c = connect(&d).await;
    let mut pipes = Vec::new();
    for k in 0..20 {
        let (r, mut fds) = call_with_fds(
            &mut c,
            "OpenPipe",
            json!({"name": format!("vm{k:02}"), "maxSize": MAX_SIZE, "maxBackups": 3}),
        )
        .await;
        r.unwrap();
        pipes.push(fs::File::from(fds.remove(0)));
    }
    let status = disk_status(&d).await;
    assert_eq!(
        (status["active"].as_bool(), status["maxUse"].as_u64()),
        (Some(true), Some(MAX_USE))
    );
    let mut written = 0u64;
    for round in 0..4u32 {
        // 50 KiB of lines into each log: 4 MB in all over the rounds, four
        // times what the budget allows and less than the logs' own caps.
        let batch = lines('b', round * 3200, round * 3200 + 3200);
        for p in &mut pipes {
            p.write_all(batch.as_bytes()).unwrap();
        }
        written += batch.len() as u64;
        for k in 0..20 {
            wait_log(&d, &format!("vm{k:02}"), "its batch", |l| {
                l["bytesWritten"].as_u64() == Some(written)
            })
            .await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while dir_bytes(&d.log_dir()) > MAX_USE + MAX_SIZE {
            assert!(
                Instant::now() < deadline,
                "round {round}: the logs take {} bytes, over {MAX_USE} + {MAX_SIZE}",
                dir_bytes(&d.log_dir())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "round {round}: {} bytes on disk for a budget of {MAX_USE}",
            dir_bytes(&d.log_dir())
        );
    }
    // Every log kept its current file; what was evicted adds up.
    let list = call(&mut c, "ListLogs", json!({})).await.unwrap();
    let mut evicted = 0;
    for l in list["logs"].as_array().unwrap() {
        assert!(
            Path::new(l["path"].as_str().unwrap()).exists(),
            "{} lost its current file",
            l["name"]
        );
        evicted += l["bytesEvicted"].as_u64().unwrap();
    }
    let status = disk_status(&d).await;
    assert!(evicted > 0, "nothing was evicted: {status}");
    assert_eq!(status["bytesEvicted"].as_u64(), Some(evicted), "{status}");
    assert!(
        status["used"].as_u64().unwrap() <= MAX_USE + MAX_SIZE,
        "{status}"
    );
}

#[tokio::test]
async fn a_pipe_over_its_rate_drops_what_is_over_and_says_so() {
    const RATE: u64 = 16384;
    let d = Daemon::start("");
    let mut c = connect(&d).await;
    let (r, mut fds) = call_with_fds(
        &mut c,
        "OpenPipe",
        json!({"name": "flood", "maxRate": RATE, "maxBurst": RATE, "maxSize": 1 << 24}),
    )
    .await;
    r.unwrap();
    let pipe = fs::File::from(fds.remove(0));
    // The pipe (1 MiB) holds three seconds of the flood: were the daemon
    // to stop reading, the writer would see EAGAIN instead of waiting.
    nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut pipe = pipe;
    // Twenty times the rate for three seconds, in 16 KiB writes.
    let chunk = lines('r', 0, 1024);
    let start = Instant::now();
    let (mut sent, mut refused) = (0u64, 0u32);
    for k in 0..60u32 {
        let due = start + Duration::from_millis(50) * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match pipe.write(chunk.as_bytes()) {
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 0, "the writer was held up");
    let info = wait_log(&d, "flood", "every byte read", |l| {
        l["bytesWritten"].as_u64().unwrap() + l["bytesSuppressed"].as_u64().unwrap() == sent
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    let admitted = info["bytesWritten"].as_u64().unwrap();
    let suppressed = info["bytesSuppressed"].as_u64().unwrap();
    let most = RATE + (RATE as f64 * elapsed) as u64;
    assert!(admitted <= most, "{admitted} bytes logged, over {most}");
    assert!(suppressed >= sent / 2, "{suppressed} of {sent} dropped");
    // Once the bucket has refilled, a last line brings the last gap's
    // marker before it: every dropped byte is accounted for in the file.
    std::thread::sleep(Duration::from_millis(1200));
    pipe.write_all(b"after the flood\n").unwrap();
    let path = d.log_path("flood");
    wait_until("the last line", || {
        fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("after the flood")
    });
    let log = fs::read_to_string(&path).unwrap();
    let marked: u64 = log
        .lines()
        .filter_map(|l| l.strip_prefix("[guestlogd: "))
        .filter_map(|l| l.strip_suffix(" bytes not logged (rate limit)]"))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    let info = log_info(&d, "flood").await;
    assert_eq!(
        marked,
        info["bytesSuppressed"].as_u64().unwrap(),
        "markers against the counter"
    );
    println!(
        "flood: {sent} bytes sent in {elapsed:.2} s, {admitted} logged (at most {most}), {suppressed} dropped"
    );
}

#[tokio::test]
async fn keep_free_leaves_room_on_the_logs_file_system() {
    if !nix::unistd::geteuid().is_root() {
        return println!("SKIPPED: mounting a tmpfs needs root");
    }
    const FREE: u64 = 1 << 20;
    let mut mount = None;
    let d = Daemon::start_with(&format!("[disk]\nkeep-free = {FREE}\n"), |dir| {
        let logs = dir.join("log");
        fs::create_dir_all(&logs).unwrap();
        assert!(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=3m,mode=0750", "tmpfs"])
                .arg(&logs)
                .status()
                .unwrap()
                .success()
        );
        mount = Some(Tmpfs(logs));
    });
    let _mount = mount;
    let mut c = connect(&d).await;
    let mut pipes = Vec::new();
    for k in 0..4 {
        let (r, mut fds) = call_with_fds(
            &mut c,
            "OpenPipe",
            json!({"name": format!("f{k}"), "maxSize": 131072, "maxBackups": 4}),
        )
        .await;
        r.unwrap();
        pipes.push(fs::File::from(fds.remove(0)));
    }
    // 2.5 MiB in all: past what keep-free leaves of the 3 MiB.
    let free = || {
        let st = nix::sys::statvfs::statvfs(&d.log_dir()).unwrap();
        st.blocks_available() * st.fragment_size()
    };
    for round in 0..10u32 {
        let batch = lines('k', round * 4096, round * 4096 + 4096);
        for p in &mut pipes {
            p.write_all(&batch.as_bytes()[..65536]).unwrap();
        }
        let written = 65536 * u64::from(round + 1);
        for k in 0..4 {
            wait_log(&d, &format!("f{k}"), "its batch", |l| {
                l["bytesWritten"].as_u64() == Some(written)
            })
            .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while free() + 131072 < FREE {
        assert!(Instant::now() < deadline, "only {} bytes free", free());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = disk_status(&d).await;
    assert!(status["filesEvicted"].as_u64().unwrap() > 0, "{status}");
    println!("keep-free: {} bytes free of 3 MiB, {status}", free());
}
