//! One caller costs only itself: the real daemon against callers that never
//! read, pass FDs, send half messages, flood oneway calls, list thousands
//! of logs, or connect and leave in a loop, as root and as a uid the daemon
//! refuses (nobody, let in by the socket's mode).
//!
//! The hostile peers are `tests/isolation/peer.py`, run with the system's
//! Python (stdlib only) so setpriv can run them as another uid. Waits have
//! generous guards against hanging; nothing asserts how fast a call is.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, call};
use serde_json::{Value, json};

const PEER: &str = include_str!("isolation/peer.py");
/// Guards against hanging; a call that works answers in milliseconds.
const GUARD: Duration = Duration::from_secs(5);

fn python() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/python3");
    p.exists().then_some(p)
}

/// Runs the hostile peer, as root or as nobody, and returns what it printed.
fn peer(d: &Daemon, nobody: bool, args: &[&str]) -> Value {
    peer_at(&d.socket(), nobody, args)
}

fn skip() -> bool {
    if !nix::unistd::geteuid().is_root() || python().is_none() {
        eprintln!("SKIPPED: isolation tests need root (setpriv) and /usr/bin/python3");
        return true;
    }
    false
}

/// GetStatus on a fresh connection, within the guard; a moment when every
/// slot is taken is waited out.
async fn status(d: &Daemon) -> Value {
    tokio::time::timeout(GUARD, async {
        loop {
            let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
            match call(&mut c, "GetStatus", json!({})).await {
                Ok(v) => return v,
                Err(guestlogd::api::ManagerError::LimitReached { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("GetStatus: {e:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("GetStatus got no answer in {GUARD:?}"))
}

/// Polls GetStatus until `ok` holds for its connection figures.
async fn wait_connections(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(d).await;
        if ok(&s["connections"]) {
            return s["connections"].clone();
        }
        assert!(Instant::now() < deadline, "{what}: {}", s["connections"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Callers keep being answered while `hostile` runs on another thread.
async fn others_are_served_while<T: Send + 'static>(
    d: &Daemon,
    hostile: impl FnOnce() -> T + Send + 'static,
) -> T {
    let hostile = tokio::task::spawn_blocking(hostile);
    // Let the hostile peer fill what it can first.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..20 {
        status(d).await;
        let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
        let r = tokio::time::timeout(
            GUARD,
            call(
                &mut c,
                "AppendLog",
                json!({"name": "other", "message": "hi"}),
            ),
        )
        .await;
        assert!(r.is_ok_and(|r| r.is_ok()), "AppendLog got no answer");
    }
    hostile.await.unwrap()
}

#[tokio::test]
async fn a_caller_that_never_reads_stalls_only_itself() {
    if skip() {
        return;
    }
    let d = Daemon::start("[socket]\nmode = \"0666\"\n[limits]\nwrite-timeout = 2\n");
    let sock = d.socket();
    let describe = r#"{"method":"org.varlink.service.GetInterfaceDescription","parameters":{"interface":"io.guestlogd.Manager"}}"#;
    let root = others_are_served_while(&d, move || {
        peer_at(&sock, false, &["pipeline", "300", describe, "15"])
    })
    .await;
    assert!(root["closedAfter"].is_number(), "not closed: {root}");
    wait_connections(&d, "the stuck reader is counted", |c| {
        c["closedWriteTimeout"] == 1
    })
    .await;

    // A refused uid, whose replies are PermissionDenied, the same way.
    let sock = d.socket();
    let list = r#"{"method":"io.guestlogd.Manager.ListLogs"}"#;
    let nobody = others_are_served_while(&d, move || {
        peer_at(&sock, true, &["pipeline", "20000", list, "15"])
    })
    .await;
    assert!(nobody["closedAfter"].is_number(), "not closed: {nobody}");
    wait_connections(&d, "the refused stuck reader is counted", |c| {
        c["closedWriteTimeout"] == 2
    })
    .await;
}

/// Runs the hostile peer against the daemon at `socket` (RUNDIR/NAME, in
/// the daemon's test directory, where the script is put).
fn peer_at(socket: &Path, nobody: bool, args: &[&str]) -> Value {
    peer_as(socket, nobody.then_some(65534), args)
}

/// Runs the hostile peer as `uid` (and its gid), or as root.
fn peer_as(socket: &Path, uid: Option<u32>, args: &[&str]) -> Value {
    let dir = socket.parent().unwrap().parent().unwrap();
    let script = dir.join("peer.py");
    if !script.exists() {
        std::fs::write(&script, PEER).unwrap();
    }
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "/usr/bin/python3"]);
            c
        }
        None => Command::new("/usr/bin/python3"),
    };
    let out = cmd
        .arg(&script)
        .arg(args[0])
        .arg(socket)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn passed_fds_are_closed_at_once_and_the_connection_with_them() {
    if skip() {
        return;
    }
    let d = Daemon::start("[socket]\nmode = \"0666\"\n");
    status(&d).await;
    let before = fd_count(d.pid());
    // Half a message and 2,000 FDs, from a uid that may not even call.
    let out = peer(&d, true, &["fds", "2000"]);
    assert_eq!(out["state"], "closed", "{out}");
    let c = wait_connections(&d, "the FDs are counted", |c| c["closedFds"] == 1).await;
    let dropped = c["fdsDropped"].as_u64().unwrap();
    assert!((1..=2000).contains(&dropped), "{c}");
    // Polled: the saved state's memfd is replaced by a new one, stored
    // before the old one goes, whenever what is saved changes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fd_count(d.pid()) > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fd_count(d.pid()) <= before,
        "the daemon holds {} FDs, {before} before",
        fd_count(d.pid())
    );
    // And it still has FDs to give.
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let (r, fds) = common::call_with_fds(&mut conn, "OpenPipe", json!({"name": "vm"})).await;
    r.unwrap();
    assert_eq!(fds.len(), 1);
}

#[tokio::test]
async fn half_messages_time_out_and_one_uid_cannot_take_every_slot() {
    if skip() {
        return;
    }
    let d = Daemon::start(
        "[socket]\nmode = \"0666\"\n[limits]\nmax-connections = 32\n\
         max-connections-per-uid = 8\nmessage-timeout = 2\n",
    );
    let sock = d.socket();
    let held = others_are_served_while(&d, move || {
        peer_at(&sock, true, &["half", "12", "40", "15"])
    })
    .await;
    let held = held.as_array().unwrap();
    let refused: Vec<_> = held.iter().filter(|c| c["state"] == "refused").collect();
    let closed: Vec<_> = held.iter().filter(|c| c["state"] == "closed").collect();
    assert_eq!((refused.len(), closed.len()), (4, 8), "{held:?}");
    let reply: Value = serde_json::from_str(refused[0]["reply"].as_str().unwrap()).unwrap();
    assert_eq!(
        reply,
        json!({"error": "io.guestlogd.Manager.LimitReached",
               "parameters": {"limit": "connectionsPerUid", "max": 8}})
    );
    let c = wait_connections(&d, "holders are counted", |c| {
        c["closedMessageTimeout"] == 8 && c["refusedPerUid"] == 4
    })
    .await;
    assert_eq!(c["open"], 1, "{c}");
}

/// Four local uids each holding their share of idle connections take
/// every slot but root's: root (libvirt, its hook) is still answered.
#[tokio::test]
async fn uids_holding_every_share_leave_roots_slots() {
    if skip() {
        return;
    }
    // The default limits: 256 slots, 64 per uid, the last 16 root's.
    let d = Daemon::start("[socket]\nmode = \"0666\"\n");
    status(&d).await;
    let before = fd_count(d.pid());
    let sock = d.socket();
    let holders: Vec<_> = (60001..=60004)
        .map(|uid| {
            let sock = sock.clone();
            std::thread::spawn(move || peer_as(&sock, Some(uid), &["idle", "64", "8"]))
        })
        .collect();
    // Once the daemon holds what the four could take, root calls.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fd_count(d.pid()) < before + 230 {
        assert!(Instant::now() < deadline, "the holders never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status(&d).await;
    assert!(s["connections"]["open"].as_u64().unwrap() >= 240, "{s}");
    let fates: Vec<Value> = holders
        .into_iter()
        .flat_map(|h| h.join().unwrap().as_array().unwrap().clone())
        .collect();
    let refused: Vec<_> = fates.iter().filter(|f| f["state"] == "refused").collect();
    let open = fates.iter().filter(|f| f["state"] == "open").count();
    assert_eq!((open, refused.len()), (240, 16), "{fates:?}");
    let reply: Value = serde_json::from_str(refused[0]["reply"].as_str().unwrap()).unwrap();
    assert_eq!(
        reply,
        json!({"error": "io.guestlogd.Manager.LimitReached",
               "parameters": {"limit": "connections", "max": 256}})
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let d = Daemon::start("[limits]\nidle-timeout = 1\n");
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut s, &mut buf).unwrap(), 0);
    wait_connections(&d, "the idle close is counted", |c| c["closedIdle"] == 1).await;
}

/// Sends `calls` on one connection while reading their replies.
fn pipelined(socket: &Path, calls: Vec<Vec<u8>>) -> Vec<Value> {
    let s = UnixStream::connect(socket).unwrap();
    let mut w = s.try_clone().unwrap();
    let n = calls.len();
    let writer = std::thread::spawn(move || {
        for c in calls {
            w.write_all(&c).unwrap();
        }
    });
    let mut r = BufReader::new(s);
    let replies = (0..n).map(|_| next_message(&mut r).unwrap()).collect();
    writer.join().unwrap();
    replies
}

fn next_message(r: &mut impl BufRead) -> Option<Value> {
    let mut msg = Vec::new();
    r.read_until(0, &mut msg).unwrap();
    (msg.pop() == Some(0)).then(|| serde_json::from_slice(&msg).unwrap())
}

fn message(v: Value) -> Vec<u8> {
    let mut m = serde_json::to_vec(&v).unwrap();
    m.push(0);
    m
}

#[tokio::test]
async fn listing_8000_logs_is_streamed_and_delays_no_one() {
    let d = Daemon::start("");
    let calls = (0..8000)
        .map(|i| {
            message(json!({"method": "io.guestlogd.Manager.AppendLog",
                           "parameters": {"name": format!("instance-{i:08x}"), "message": "x"}}))
        })
        .collect();
    let replies = pipelined(&d.socket(), calls);
    assert!(replies.iter().all(|r| r == &json!({})), "{:?}", replies[0]);

    // Whole, it would pass the 1 MiB message limit.
    let whole = common::raw_call(
        &d.socket(),
        br#"{"method":"io.guestlogd.Manager.ListLogs"}"#,
    );
    let whole: Value = serde_json::from_str(&whole.unwrap()).unwrap();
    assert_eq!(
        whole,
        json!({"error": "io.guestlogd.Manager.LimitReached",
               "parameters": {"limit": "replySize", "max": 1048576}})
    );

    // Streamed, while another caller keeps asking for the status.
    let socket = d.socket();
    let list = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let s = UnixStream::connect(socket).unwrap();
        (&s).write_all(&message(
            json!({"method": "io.guestlogd.Manager.ListLogs", "more": true}),
        ))
        .unwrap();
        let mut r = BufReader::new(s);
        let mut names = Vec::new();
        loop {
            let reply = next_message(&mut r).unwrap();
            for l in reply["parameters"]["logs"].as_array().unwrap() {
                names.push(l["name"].as_str().unwrap().to_owned());
            }
            if reply["continues"] != true {
                break;
            }
        }
        (names, t.elapsed())
    });
    let mut worst = Duration::ZERO;
    while !list.is_finished() {
        let t = Instant::now();
        status(&d).await;
        worst = worst.max(t.elapsed());
    }
    let (names, took) = list.await.unwrap();
    let mut expected: Vec<String> = (0..8000).map(|i| format!("instance-{i:08x}")).collect();
    expected.sort();
    assert_eq!(names, expected);
    eprintln!(
        "ListLogs of 8,000 logs with more: {took:?}; slowest concurrent GetStatus: {worst:?}"
    );
}

#[tokio::test]
async fn a_oneway_flood_closes_its_connection_and_bounds_threads() {
    if python().is_none() {
        eprintln!("SKIPPED: needs /usr/bin/python3");
        return;
    }
    let d = Daemon::start("");
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    call(
        &mut c,
        "AppendLog",
        json!({"name": "vm", "message": "x".repeat(60_000)}),
    )
    .await
    .unwrap();
    let pid = d.pid();
    let rss_before = proc_status(pid, "VmRSS");
    let sampler = std::thread::spawn(move || {
        let (mut threads, mut rss) = (0, 0);
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            threads = threads.max(proc_status(pid, "Threads"));
            rss = rss.max(proc_status(pid, "VmRSS"));
            std::thread::sleep(Duration::from_millis(10));
        }
        (threads, rss)
    });
    let read = r#"{"method":"io.guestlogd.Manager.ReadLog","parameters":{"name":"vm","maxBytes":65536},"oneway":true}"#;
    let out = peer(&d, false, &["flood", "200000", read]);
    assert_eq!(out["state"], "closed", "{out}");
    let (threads, rss) = sampler.join().unwrap();
    eprintln!("oneway flood: {threads} threads at most, RSS {rss_before} -> {rss} KiB at most");
    assert!(threads <= 32, "{threads} threads");
    assert!(
        rss < rss_before + 64 * 1024,
        "RSS {rss_before} -> {rss} KiB"
    );
    wait_connections(&d, "the flood is counted", |c| c["closedOneway"] == 1).await;
}

#[tokio::test]
async fn a_connect_and_leave_loop_logs_a_few_lines_a_second() {
    let d = Daemon::start("");
    status(&d).await;
    let lines_before = d.stderr().lines().count();
    let socket = d.socket();
    let took = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        for i in 0..3000 {
            let mut s = UnixStream::connect(&socket).unwrap();
            // Garbage, or a call whose caller leaves before the reply.
            let msg: &[u8] = if i % 2 == 0 {
                b"garbage\0"
            } else {
                b"{\"method\":\"io.guestlogd.Manager.ReadLog\",\"parameters\":{\"name\":\"nope\"}}\0"
            };
            let _ = s.write_all(msg);
        }
        t.elapsed()
    })
    .await
    .unwrap();
    // Let the daemon finish with the last of them.
    wait_connections(&d, "every connection ended", |c| c["open"] == 1).await;
    let lines = d.stderr().lines().count() - lines_before;
    let budget = 40 * (took.as_secs() as usize + 2);
    eprintln!("3,000 connect-and-leave peers in {took:?}: {lines} log lines");
    assert!(
        lines <= budget,
        "{lines} log lines for 3,000 peers in {took:?}"
    );
}
