//! The real daemon, driven through the generated Rust client and raw bytes
//! on its socket.

mod common;

use std::{
    fs,
    io::Write,
    os::fd::OwnedFd,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use base64::Engine as _;
use common::{Daemon, call, call_with_fds, raw_call};
use guestlogd::api::{LogInfo, Manager as _, ManagerError, Position};
use serde_json::{Value, json};
use zlink::tokio::unix::Connection;

type Conn = Connection;

async fn connect(d: &Daemon) -> Conn {
    zlink::tokio::unix::connect(d.socket()).await.unwrap()
}

/// Calls OpenPipe and returns the reply and the write end it passed.
async fn open_pipe(conn: &mut Conn, params: Value) -> (Value, OwnedFd) {
    let (reply, mut fds) = call_with_fds(conn, "OpenPipe", params).await;
    let reply = reply.unwrap();
    assert_eq!(reply["fileDescriptor"], 0);
    assert_eq!(fds.len(), 1, "OpenPipe passes exactly one FD");
    (reply, fds.remove(0))
}

async fn info(conn: &mut Conn, name: &str) -> LogInfo {
    let logs = conn.list_logs().await.unwrap().unwrap().logs;
    logs.into_iter().find(|l| l.name == name).unwrap()
}

/// Waits until every pipe into `name` has closed and `bytes` were written.
async fn settle(conn: &mut Conn, name: &str, bytes: usize) -> LogInfo {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let i = info(conn, name).await;
        if i.pipes == 0 && i.bytes_written == bytes as i64 {
            return i;
        }
        assert!(Instant::now() < deadline, "log never settled: {i:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ReadLog from `from` to the end, in 64 KiB steps.
async fn read_all(conn: &mut Conn, name: &str, from: Option<Position>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let r = conn
            .read_log(name, pos.as_ref(), Some(65536), None)
            .await
            .unwrap()
            .unwrap();
        assert!(!r.skipped);
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(r.data)
                .unwrap(),
        );
        if r.eof {
            return out;
        }
        pos = Some(r.position);
    }
}

/// Numbered lines, so a loss or a repeat shows where it happened.
fn lines(from: usize, bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 64);
    let mut i = from;
    while out.len() < bytes {
        writeln!(out, "line {i:09} {}", "x".repeat(40)).unwrap();
        i += 1;
    }
    out.truncate(bytes);
    out
}

/// Every file of a log, oldest first, straight from disk.
fn on_disk(dir: &Path, name: &str, max_backups: u32) -> Vec<u8> {
    let mut all = Vec::new();
    for k in (0..max_backups).rev() {
        if let Ok(b) = fs::read(dir.join(format!("{name}.log.{k}"))) {
            all.extend(b);
        }
    }
    all.extend(fs::read(dir.join(format!("{name}.log"))).unwrap());
    all
}

#[tokio::test]
async fn introspection_is_the_interface_file() {
    let d = Daemon::start("");
    let reply = raw_call(
        &d.socket(),
        br#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.guestlogd.Manager"}}"#,
    )
    .unwrap();
    let reply: Value = serde_json::from_str(&reply).unwrap();
    let served = reply["parameters"]["description"].as_str().unwrap();
    let file = include_str!("../interfaces/io.guestlogd.Manager.varlink");
    assert_eq!(served, file);
    let served = zlink::idl::Interface::try_from(served).unwrap();
    let file = zlink::idl::Interface::try_from(file).unwrap();
    assert_eq!(served, file);
    let methods: Vec<_> = served.methods().map(|m| m.name().to_string()).collect();
    assert_eq!(
        methods,
        [
            "OpenPipe",
            "Rotate",
            "ListLogs",
            "ReadLog",
            "AppendLog",
            "CreateConsole",
            "AttachConsole",
            "RemoveConsole",
            "ExpectMigration",
            "EndMigration",
            "Follow",
            "GetStatus",
            "UseFdStore",
            "HandBackToVirtlogd",
        ]
    );

    let info = raw_call(&d.socket(), br#"{"method":"org.varlink.service.GetInfo"}"#).unwrap();
    assert!(info.contains(r#""interfaces":["io.guestlogd.Manager","org.varlink.service"]"#));
}

#[tokio::test]
async fn ten_megabytes_through_a_pipe_are_capped_and_lossless() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let (reply, fd) = open_pipe(
        &mut conn,
        json!({"name": "vm1", "maxSize": 1 << 20, "maxBackups": 3}),
    )
    .await;
    assert_eq!(reply["path"], d.log_path("vm1").display().to_string());
    let data = lines(0, 10_000_000);
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || fs::File::from(fd).write_all(&data).unwrap())
    };
    writer.join().unwrap();
    let i = settle(&mut conn, "vm1", data.len()).await;

    assert_eq!((i.max_size, i.max_backups, i.backups), (1 << 20, 3, 3));
    assert!(i.rotations >= 9, "{i:?}");
    assert_eq!(i.bytes_dropped, 0);
    let dir = d.log_dir();
    for f in ["vm1.log", "vm1.log.0", "vm1.log.1", "vm1.log.2"] {
        assert!(fs::metadata(dir.join(f)).unwrap().len() <= 1 << 20, "{f}");
    }
    assert!(!dir.join("vm1.log.3").exists());
    assert_eq!(
        i.size as u64,
        fs::metadata(dir.join("vm1.log")).unwrap().len()
    );

    let kept = on_disk(&dir, "vm1", 3);
    assert!(kept.len() > 3 << 20, "backups hold {} bytes", kept.len());
    assert!(
        data.ends_with(&kept),
        "the files are not the tail of the stream"
    );
    assert_eq!(read_all(&mut conn, "vm1", None).await, kept);
}

#[tokio::test]
async fn read_log_follows_a_position_across_rotation() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    conn.append_log("vm2", "before").await.unwrap().unwrap();
    let (reply, fd) = open_pipe(&mut conn, json!({"name": "vm2"})).await;
    let position: Position = serde_json::from_value(reply["position"].clone()).unwrap();
    assert_eq!(position.offset, 7);
    let mut w = fs::File::from(fd);
    w.write_all(b"one\n").unwrap();
    settle_bytes(&mut conn, "vm2", 11).await;
    conn.rotate("vm2").await.unwrap().unwrap();
    w.write_all(b"two\xff\x00\n").unwrap();
    drop(w);
    settle(&mut conn, "vm2", 17).await;
    assert_eq!(
        read_all(&mut conn, "vm2", Some(position)).await,
        b"one\ntwo\xff\x00\n"
    );

    let r = conn
        .read_log("vm2", None, Some(3), Some(true))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.data, r.text, r.eof), ("YmVm", Some("bef"), false));
}

async fn settle_bytes(conn: &mut Conn, name: &str, bytes: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while info(conn, name).await.bytes_written < bytes {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn append_rotate_and_list_fields() {
    let d = Daemon::start("[log]\nmax-size = 8192\nmax-backups = 1\n");
    let mut conn = connect(&d).await;
    conn.append_log("vm3", "starting up")
        .await
        .unwrap()
        .unwrap();
    conn.append_log("vm3", "second\n").await.unwrap().unwrap();
    let i = info(&mut conn, "vm3").await;
    let expected = LogInfo {
        name: "vm3".into(),
        path: d.log_path("vm3").display().to_string(),
        size: 19,
        backups: 0,
        max_size: 8192,
        max_backups: 1,
        pipes: 0,
        bytes_written: 19,
        bytes_dropped: 0,
        bytes_suppressed: 0,
        bytes_evicted: 0,
        rotations: 0,
        max_rate: 0,
        max_burst: 0,
        journal: None,
    };
    assert_eq!(i, expected);
    assert_eq!(
        fs::read(d.log_path("vm3")).unwrap(),
        b"starting up\nsecond\n"
    );

    conn.rotate("vm3").await.unwrap().unwrap();
    conn.rotate("vm3").await.unwrap().unwrap();
    let i = info(&mut conn, "vm3").await;
    assert_eq!(
        (i.size, i.backups, i.rotations, i.bytes_written),
        (0, 1, 2, 19)
    );
    assert_eq!(fs::read(d.log_dir().join("vm3.log.0")).unwrap(), b"");

    // A pipe keeps the log's policy unless it names one.
    let (_, fd) = open_pipe(&mut conn, json!({"name": "vm3", "maxBackups": 0})).await;
    let i = info(&mut conn, "vm3").await;
    assert_eq!(
        (i.max_size, i.max_backups, i.backups, i.pipes),
        (8192, 0, 0, 1)
    );
    assert!(!d.log_dir().join("vm3.log.0").exists());
    drop(fd);

    // The log outlives its pipes, and the list is sorted by name.
    conn.append_log("a-first", "x").await.unwrap().unwrap();
    let names: Vec<_> = conn
        .list_logs()
        .await
        .unwrap()
        .unwrap()
        .logs
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["a-first", "vm3"]);
}

#[tokio::test]
async fn pipes_interleave_only_at_read_boundaries() {
    let d = Daemon::start("[log]\nmax-size = 67108864\n");
    let mut conn = connect(&d).await;
    let mut writers = Vec::new();
    for w in 0..4u8 {
        let (_, fd) = open_pipe(&mut conn, json!({"name": "shared"})).await;
        writers.push(std::thread::spawn(move || {
            let mut f = fs::File::from(fd);
            // Writes up to PIPE_BUF are atomic, so each line arrives whole.
            let line = [vec![b'a' + w; 4095], vec![b'\n']].concat();
            for _ in 0..500 {
                f.write_all(&line).unwrap();
            }
        }));
    }
    for w in writers {
        w.join().unwrap();
    }
    settle(&mut conn, "shared", 4 * 500 * 4096).await;
    let log = fs::read(d.log_path("shared")).unwrap();
    let mut counts = [0; 4];
    for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        assert_eq!(line.len(), 4095);
        assert!(line.iter().all(|b| *b == line[0]), "a line was split");
        counts[(line[0] - b'a') as usize] += 1;
    }
    assert_eq!(counts, [500; 4]);
}

#[tokio::test]
async fn every_error_names_what_was_wrong() {
    let d = Daemon::start("[limits]\nmax-pipes = 2\n");
    let mut conn = connect(&d).await;

    assert_eq!(
        conn.rotate("nope").await.unwrap(),
        Err(ManagerError::NoSuchLog {
            name: "nope".into()
        })
    );
    assert!(matches!(
        conn.read_log("nope", None, None, None).await.unwrap(),
        Err(ManagerError::NoSuchLog { .. })
    ));

    let long = "n".repeat(10_000);
    for name in [
        "../x", "/", "a/b", "a\0b", "", ".hidden", "vm 1", "é", &long,
    ] {
        let err = call(&mut conn, "OpenPipe", json!({ "name": name }))
            .await
            .unwrap_err();
        let ManagerError::InvalidName {
            name: echoed,
            reason,
        } = err
        else {
            panic!("{name:?}: {err:?}");
        };
        assert!(
            echoed.len() <= 128 && name.starts_with(&echoed),
            "{echoed:?}"
        );
        assert!(!reason.is_empty());
    }

    let bad: [(&str, Value, &str); 10] = [
        ("OpenPipe", json!({"name": "vm", "maxSize": 10}), "maxSize"),
        ("OpenPipe", json!({"name": "vm", "maxSize": -1}), "maxSize"),
        (
            "OpenPipe",
            json!({"name": "vm", "maxBackups": 65}),
            "maxBackups",
        ),
        ("OpenPipe", json!({"name": 5}), "name"),
        ("OpenPipe", json!({"name": "vm", "maxSize": 1.5}), "maxSize"),
        ("OpenPipe", json!({}), "name"),
        (
            "OpenPipe",
            json!({"name": "vm", "maxsize": 4096}),
            "maxsize",
        ),
        ("ReadLog", json!({"name": "vm", "maxBytes": 0}), "maxBytes"),
        (
            "ReadLog",
            json!({"name": "vm", "position": {"inode": 1, "offset": -1}}),
            "position.offset",
        ),
        (
            "AppendLog",
            json!({"name": "vm", "message": "x".repeat(70_000)}),
            "message",
        ),
    ];
    for (method, params, parameter) in bad {
        let err = call(&mut conn, method, params.clone()).await.unwrap_err();
        let ManagerError::InvalidParameter {
            parameter: p,
            reason,
        } = err
        else {
            panic!("{method} {params}: {err:?}");
        };
        assert_eq!(p, parameter, "{method} {params}: {reason}");
    }

    let (_, a) = open_pipe(&mut conn, json!({"name": "p1"})).await;
    let (_, b) = open_pipe(&mut conn, json!({"name": "p2"})).await;
    assert_eq!(
        call(&mut conn, "OpenPipe", json!({"name": "p3"})).await,
        Err(ManagerError::LimitReached {
            limit: "pipes".into(),
            max: 2
        })
    );
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&mut conn, "OpenPipe", json!({"name": "p3"}))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "pipe slots never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // None of the refused calls created a log.
    let mut files: Vec<_> = fs::read_dir(d.log_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    files.sort();
    assert_eq!(files, ["p1.log", "p2.log", "p3.log"]);
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start("");
    let s = d.socket();
    let replies: [(&[u8], Option<&str>); 8] = [
        (
            br#"{"method":"io.guestlogd.Manager.Nope","parameters":{}}"#,
            Some("org.varlink.service.MethodNotFound"),
        ),
        (
            br#"{"method":"io.guestlogd.Manager.Nope"}"#,
            Some("org.varlink.service.MethodNotFound"),
        ),
        (
            br#"{"method":"org.example.X.Y","parameters":{}}"#,
            Some("org.varlink.service.InterfaceNotFound"),
        ),
        (
            br#"{"method":"io.guestlogd.Manager.ListLogs","parameters":{"extra":1}}"#,
            Some("io.guestlogd.Manager.InvalidParameter"),
        ),
        (
            br#"{"method":"io.guestlogd.Manager.Rotate","parameters":[1,2]}"#,
            Some("io.guestlogd.Manager.InvalidParameter"),
        ),
        (
            br#"{"method":"io.guestlogd.Manager.Rotate","parameters":{"name":null}}"#,
            Some("io.guestlogd.Manager.InvalidParameter"),
        ),
        // Not a call at all: the connection is closed, as sd-varlink does.
        (b"{not json", None),
        (br#"{"parameters":{}}"#, None),
    ];
    for (msg, expected) in replies {
        let reply = raw_call(&s, msg);
        match expected {
            Some(error) => {
                let reply: Value = serde_json::from_str(reply.as_deref().unwrap()).unwrap();
                assert_eq!(reply["error"], error, "{}", String::from_utf8_lossy(msg));
            }
            None => assert_eq!(reply, None, "{}", String::from_utf8_lossy(msg)),
        }
        d.assert_alive();
    }

    // 2 MB with no end: refused once it passes the 1 MiB message limit.
    let big = format!(
        r#"{{"method":"io.guestlogd.Manager.AppendLog","parameters":{{"name":"vm","message":"{}"}}}}"#,
        "x".repeat(2_000_000)
    );
    let reply: Value = serde_json::from_str(&raw_call(&s, big.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        reply,
        json!({"error": "io.guestlogd.Manager.LimitReached", "parameters": {"limit": "messageSize", "max": 1048576}})
    );
    d.assert_alive();

    let mut conn = connect(&d).await;
    assert_eq!(conn.list_logs().await.unwrap().unwrap().logs, []);
    assert_eq!(fs::read_dir(d.log_dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn connections_are_limited() {
    let d = Daemon::start("[limits]\nmax-connections = 2\n");
    let mut a = connect_when_free(&d).await;
    let mut b = connect_when_free(&d).await;
    let reply: Value = serde_json::from_str(
        &raw_call(
            &d.socket(),
            br#"{"method":"io.guestlogd.Manager.ListLogs"}"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        reply,
        json!({"error": "io.guestlogd.Manager.LimitReached", "parameters": {"limit": "connections", "max": 2}})
    );
    drop(a);
    connect_when_free(&d).await;
    b.list_logs().await.unwrap().unwrap();
    a = connect_when_free(&d).await;
    a.list_logs().await.unwrap().unwrap();
}

/// A connection that got past the limit. The daemon frees a slot when it
/// notices a peer has gone, which takes a moment.
async fn connect_when_free(d: &Daemon) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect(d).await;
        if c.list_logs().await.is_ok_and(|r| r.is_ok()) {
            return c;
        }
        assert!(Instant::now() < deadline, "no connection slot came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs guestlogctl as uid/gid 65534 with no supplementary groups.
fn as_nobody(d: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_guestlogctl"))
        .arg("--runtime-dir")
        .arg(d.dir.path().join("run"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn callers_are_checked_against_their_credentials() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the access test switches uid and needs root");
        return;
    }
    let d = Daemon::start("[socket]\nmode = \"0666\"\n");
    let mut conn = connect(&d).await;
    conn.append_log("vm", "x").await.unwrap().unwrap();

    let out = as_nobody(&d, &["rotate", "vm"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PermissionDenied { uid: 65534 }"),
        "{stderr}"
    );
    assert_eq!(info(&mut conn, "vm").await.rotations, 0);
    assert!(!as_nobody(&d, &["list"]).status.success());

    // The config can let that uid in.
    let d = Daemon::start("[socket]\nmode = \"0666\"\n[access]\nuids = [65534]\n");
    let out = as_nobody(&d, &["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // By default the socket itself keeps other users out.
    let d = Daemon::start("");
    let mode =
        fs::metadata(d.socket()).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600);
    let out = as_nobody(&d, &["list"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

#[tokio::test]
async fn sigterm_drains_every_pipe_then_exits_zero() {
    let mut d = Daemon::start("[log]\nmax-size = 67108864\n");
    let mut conn = connect(&d).await;
    let mut expected = Vec::new();
    let mut fds = Vec::new();
    for n in 0..3 {
        let (_, fd) = open_pipe(&mut conn, json!({"name": format!("drain{n}")})).await;
        fds.push(fd);
    }
    // Fill each pipe while the daemon is stopped, so the bytes are still
    // in the kernel when SIGTERM arrives.
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    for (n, fd) in fds.iter().enumerate() {
        let data = lines(n * 1_000_000, 60_000);
        nix::unistd::write(fd, &data).unwrap();
        expected.push(data);
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let status = d.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", d.stderr());
    for (n, data) in expected.iter().enumerate() {
        assert_eq!(&fs::read(d.log_path(&format!("drain{n}"))).unwrap(), data);
    }
    assert!(!d.socket().exists(), "the socket is removed on exit");
}

#[tokio::test]
async fn guestlogctl_reads_lists_and_rotates() {
    let d = Daemon::start("");
    let mut conn = connect(&d).await;
    let (_, fd) = open_pipe(&mut conn, json!({"name": "ctl"})).await;
    let data = lines(0, 300_000);
    fs::File::from(fd).write_all(&data).unwrap();
    settle(&mut conn, "ctl", data.len()).await;
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_guestlogctl"))
            .arg("--runtime-dir")
            .arg(d.dir.path().join("run"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(ctl(&["read", "ctl"]), data);
    ctl(&["rotate", "ctl"]);
    assert_eq!(ctl(&["read", "ctl"]), data, "a rotation loses nothing");
    let list = String::from_utf8(ctl(&["list"])).unwrap();
    let row: Vec<_> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row, ["ctl", "0", "2097152", "1/3", "0", "300000", "0", "1"]);
}

#[tokio::test]
async fn a_file_that_cannot_be_opened_is_an_io_error() {
    let d = Daemon::start_with("", |dir| {
        fs::create_dir_all(dir.join("log/taken.log")).unwrap();
    });
    let mut conn = connect(&d).await;
    let err = call(&mut conn, "OpenPipe", json!({"name": "taken"}))
        .await
        .unwrap_err();
    let ManagerError::IoError { message } = err else {
        panic!("{err:?}");
    };
    assert!(message.contains("taken.log"), "{message}");
    assert_eq!(conn.list_logs().await.unwrap().unwrap().logs, []);
}

/// A full disk: what does not fit is counted, never silently lost.
#[tokio::test]
async fn bytes_the_disk_refuses_are_counted() {
    let mounted = std::cell::Cell::new(false);
    let d = Daemon::start_with("[log]\nmax-size = 8388608\n", |dir| {
        fs::create_dir_all(dir.join("log")).unwrap();
        mounted.set(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                .arg(dir.join("log"))
                .status()
                .is_ok_and(|s| s.success()),
        );
    });
    if !mounted.get() {
        eprintln!("SKIPPED: cannot mount a small tmpfs to fill (needs root)");
        return;
    }
    // Dropped before the daemon: a lazy unmount works while files are open.
    let _unmount = Unmount(d.log_dir());
    let mut conn = connect(&d).await;
    let (_, fd) = open_pipe(&mut conn, json!({"name": "full"})).await;
    let data = lines(0, 3_000_000);
    fs::File::from(fd).write_all(&data).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let i = loop {
        let i = info(&mut conn, "full").await;
        if i.pipes == 0 && i.bytes_written + i.bytes_dropped == data.len() as i64 {
            break i;
        }
        assert!(Instant::now() < deadline, "{i:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(i.bytes_dropped > 1_000_000, "{i:?}");
    let kept = fs::read(d.log_path("full")).unwrap();
    assert_eq!(kept.len() as i64, i.bytes_written);
    assert!(data.starts_with(&kept));
    assert!(d.stderr().contains("log bytes dropped"));
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
