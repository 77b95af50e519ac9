//! One writer at a time, AttachConsole and the boot log, against the real
//! daemon with a plain socket as the guest (no QEMU needed):
//! - with writers "one" the second client's input never reaches the guest,
//!   a forced attach takes over and the previous writer is told, the
//!   writer stays the writer across a SIGUSR1 re-exec, and the next client
//!   writes when the writer leaves;
//! - bootBytes keeps the first bytes of each guest connection, replaced at
//!   the next one, and the boot log outlives the console;
//! - bad options are refused by parameter and change nothing.
//!
//! Every wait polls with a deadline that only keeps a broken daemon from
//! hanging the run; nothing asserts on timing.

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Daemon, call, call_with_fds};
use guestlogd::api::{ConsoleInfo, Manager as _, ManagerError};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A socket whose incoming bytes a thread collects.
struct Peer {
    socket: UnixStream,
    got: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn new(socket: UnixStream) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut r, g) = (socket.try_clone().unwrap(), got.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                g.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { socket, got }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.text();
            if t.contains(what) {
                return t;
            }
            assert!(Instant::now() < deadline, "no {what:?} in {t:?}");
            sleep(Duration::from_millis(10));
        }
    }

    fn send(&self, data: &str) {
        (&self.socket).write_all(data.as_bytes()).unwrap();
    }
}

async fn attach(d: &Daemon, name: &str, params: Value) -> (Peer, bool) {
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let mut p = params;
    p["name"] = name.into();
    let (reply, mut fds) = call_with_fds(&mut conn, "AttachConsole", p).await;
    let reply = reply.unwrap();
    assert_eq!(fds.len(), 1, "{reply}");
    let socket = UnixStream::from(fds.remove(0));
    (Peer::new(socket), reply["writer"].as_bool().unwrap())
}

async fn info(d: &Daemon, name: &str) -> Option<ConsoleInfo> {
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let out = conn.list_logs().await.unwrap().unwrap();
    out.consoles.into_iter().find(|c| c.name == name)
}

async fn wait_info(d: &Daemon, name: &str, what: &str, ok: impl Fn(&ConsoleInfo) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = info(d, name).await;
        if c.as_ref().is_some_and(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn guest(d: &Daemon, name: &str) -> Peer {
    let path = d.dir.path().join(format!("run/consoles/{name}.guest"));
    Peer::new(UnixStream::connect(path).unwrap())
}

#[tokio::test]
async fn one_writer_at_a_time_with_a_forced_take_over() {
    let mut d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    call(
        &mut conn,
        "CreateConsole",
        json!({"name": "vm", "writers": "one"}),
    )
    .await
    .unwrap();
    let g = guest(&d, "vm");
    wait_info(&d, "vm", "a guest", |c| c.guest_connected).await;

    let (a, a_writes) = attach(&d, "vm", json!({})).await;
    let (b, b_writes) = attach(&d, "vm", json!({})).await;
    assert!(a_writes && !b_writes);
    let me = (nix::unistd::getuid().as_raw(), std::process::id());
    let c = info(&d, "vm").await.unwrap();
    assert_eq!(c.writers, "one");
    let w = c.writer.unwrap();
    assert_eq!((w.uid as u32, w.pid as u32), me);

    // A reader's input is dropped, and it is told; the writer's arrives.
    b.send("from-b\n");
    b.wait_for("another client is the writer; input dropped");
    a.send("from-a\n");
    g.wait_for("from-a");
    assert!(!g.text().contains("from-b"));

    // Take-over: the previous writer is told who writes now.
    let (f, f_writes) = attach(&d, "vm", json!({"force": true})).await;
    assert!(f_writes);
    a.wait_for(&format!(
        "\r\n[guestlogd: vm is now written by uid {} pid {}]\r\n",
        me.0, me.1
    ));
    f.wait_for("[guestlogd: you are now the writer of vm]");
    a.send("from-old-writer\n");
    a.wait_for("another client is the writer");
    f.send("from-forced\n");
    g.wait_for("from-forced");
    assert!(!g.text().contains("from-old-writer"));

    // A re-exec keeps the writer.
    let before = conn.get_status().await.unwrap().unwrap().adoptions;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut c) = zlink::tokio::unix::connect(d.socket()).await
            && let Ok(Ok(s)) = c.get_status().await
            && s.adoptions > before
        {
            break;
        }
        assert!(Instant::now() < deadline, "no re-exec");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_info(&d, "vm", "3 clients after the re-exec", |c| c.clients == 3).await;
    b.send("b-after-reexec\n");
    f.send("f-after-reexec\n");
    g.wait_for("f-after-reexec");
    assert!(!g.text().contains("b-after-reexec"));

    // The writer leaves: the longest attached client writes now.
    f.socket.shutdown(std::net::Shutdown::Both).unwrap();
    a.wait_for("[guestlogd: you are now the writer of vm]");
    a.send("a-again\n");
    g.wait_for("a-again");
    // Viewers never write, even forced.
    let (_v, v_writes) = attach(&d, "vm", json!({"viewer": true, "force": true})).await;
    assert!(!v_writes);
    d.assert_alive();
    let log = std::fs::read_to_string(d.log_path("vm")).unwrap_or_default();
    assert!(
        !log.contains("guestlogd:"),
        "notices went into the log: {log}"
    );
    let stderr = d.stderr();
    for line in [
        "console vm: client attached",
        "console vm: writer taken over by uid",
        "console vm: client detached",
        "console vm: the writer left",
    ] {
        assert!(stderr.contains(line), "the daemon did not log {line:?}");
    }
}

#[tokio::test]
async fn the_boot_log_keeps_the_start_of_each_guest_connection() {
    let d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let reply = call(
        &mut conn,
        "CreateConsole",
        json!({"name": "vm", "bootBytes": 100}),
    )
    .await
    .unwrap();
    let boot = d.log_dir().join("vm.boot.log");
    assert_eq!(reply["bootLogPath"], boot.display().to_string());
    let first: String = (0..30).map(|i| format!("boot1 {i:03}\n")).collect();
    let g = guest(&d, "vm");
    g.send(&first);
    wait_info(&d, "vm", "all of boot 1", |c| {
        c.bytes_from_guest == first.len() as i64
    })
    .await;
    assert_eq!(std::fs::read_to_string(&boot).unwrap(), first[..100]);

    // The next connection starts a new boot log.
    let g2 = guest(&d, "vm");
    g2.send("boot2\n");
    let total = first.len() + 6;
    wait_info(&d, "vm", "boot 2", |c| c.bytes_from_guest == total as i64).await;
    assert_eq!(std::fs::read_to_string(&boot).unwrap(), "boot2\n");
    let log = std::fs::read_to_string(d.log_path("vm")).unwrap();
    assert_eq!(log, format!("{first}boot2\n"));
    drop((g, g2));

    // It outlives the console, and is a log like any other.
    call(&mut conn, "RemoveConsole", json!({"name": "vm"}))
        .await
        .unwrap();
    let logs = conn.list_logs().await.unwrap().unwrap().logs;
    let b = logs.iter().find(|l| l.name == "vm.boot").unwrap();
    assert_eq!((b.size, b.max_backups, b.rotations), (6, 0, 0));
    let r = call(
        &mut conn,
        "ReadLog",
        json!({"name": "vm.boot", "text": true}),
    )
    .await
    .unwrap();
    assert_eq!(r["text"], "boot2\n");
}

#[tokio::test]
async fn bad_console_options_are_refused_and_change_nothing() {
    let d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let long = "x".repeat(125);
    for (params, parameter) in [
        (json!({"name": "vm", "writers": "two"}), "writers"),
        (json!({"name": "vm", "writers": 1}), "writers"),
        (json!({"name": "vm", "bootBytes": -1}), "bootBytes"),
        (json!({"name": "vm", "bootBytes": 1i64 << 40}), "bootBytes"),
        (json!({"name": long, "bootBytes": 10}), "bootBytes"),
    ] {
        let what = params.to_string();
        match call(&mut conn, "CreateConsole", params).await {
            Err(ManagerError::InvalidParameter { parameter: p, .. }) => {
                assert_eq!(p, parameter, "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    for params in [
        json!({"name": "nope"}),
        json!({"name": "nope", "force": true}),
    ] {
        assert!(matches!(
            call_with_fds(&mut conn, "AttachConsole", params).await,
            (Err(ManagerError::NoSuchConsole { .. }), fds) if fds.is_empty()
        ));
    }
    assert!(matches!(
        call(&mut conn, "AttachConsole", json!({"name": "../x"})).await,
        Err(ManagerError::InvalidName { .. })
    ));
    assert!(matches!(
        call(
            &mut conn,
            "AttachConsole",
            json!({"name": "vm", "forced": true})
        )
        .await,
        Err(ManagerError::InvalidParameter { .. })
    ));
    let out = conn.list_logs().await.unwrap().unwrap();
    assert!(out.logs.is_empty() && out.consoles.is_empty(), "{out:?}");
}

/// A boot log can never be another log: names ending in `.boot` are
/// reserved, so no caller can make `x.boot` before console `x` takes it as
/// its boot log, nor write into a boot log as into a plain log.
#[tokio::test]
async fn boot_log_names_are_reserved() {
    let d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    for (method, params) in [
        ("CreateConsole", json!({"name": "x.boot", "maxBackups": 3})),
        ("AppendLog", json!({"name": "x.boot", "message": "planted"})),
        ("OpenPipe", json!({"name": "x.boot"})),
    ] {
        match call_with_fds(&mut conn, method, params).await {
            (Err(ManagerError::InvalidName { name, reason }), fds) => {
                assert!(fds.is_empty());
                assert_eq!(name, "x.boot");
                assert!(reason.contains("reserved"), "{reason}");
            }
            other => panic!("{method}: {other:?}"),
        }
    }
    assert!(!d.log_dir().join("x.boot.log").exists());
    // The console's own boot log is made, and read like any log.
    call(
        &mut conn,
        "CreateConsole",
        json!({"name": "x", "bootBytes": 4096}),
    )
    .await
    .unwrap();
    let g = guest(&d, "x");
    g.send("booting\n");
    wait_info(&d, "x", "the boot", |c| c.bytes_from_guest == 8).await;
    let r = call(
        &mut conn,
        "ReadLog",
        json!({"name": "x.boot", "text": true}),
    )
    .await
    .unwrap();
    assert_eq!(r["text"], "booting\n");
    // Still not a name to append to.
    assert!(matches!(
        call(
            &mut conn,
            "AppendLog",
            json!({"name": "x.boot", "message": "m"})
        )
        .await,
        Err(ManagerError::InvalidName { .. })
    ));
}
