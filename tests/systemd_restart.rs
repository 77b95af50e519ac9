//! Zero-loss restarts under systemd: the real units (systemd/guestlogd.socket
//! and .service, with a drop-in for the test's paths) in a systemd 257
//! container (tests/systemd/boot.sh). The daemon is socket-activated, keeps
//! everything in systemd's FD store, and goes through 20 restarts, 5 reloads
//! (re-exec), an upgrade of its binary with a restart and one with a reload,
//! 5 kill -9s and a stop + start while a real guest prints numbered lines
//! into a console, a client records the console's output and a writer
//! streams numbered lines into a pipe.
//! Nothing is lost, repeated or disconnected; only a kill -9 may lose what
//! the dead daemon had read and not yet written, at most one read buffer.

mod common;
#[path = "common/qemu.rs"]
mod qemu;
#[path = "common/systemd.rs"]
mod systemd;

use std::{
    fmt::Write as _,
    io::{Read, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread::{self, JoinHandle, sleep},
    time::{Duration, Instant},
};

use guestlogd::api::Manager as _;
use qemu::{Boot, Qemu};
use serde_json::json;
use systemd::{CACHE, SERVICE, Status, Systemd, try_status, wait_status};

/// Each round of the guest: `count ROUND DELAY_MS`.
const ROUND: u32 = 400;
const DELAY_MS: u32 = 4;
/// `SEQ 000001\r\n`
const SEQ_LINE: usize = 12;
/// `pipe line 00000001\n`
const PIPE_LINE: usize = 19;
/// Lines per write into the pipe (one write, below PIPE_BUF).
const PIPE_BATCH: u64 = 50;
/// The most a kill -9 may lose: one read buffer (src/logs/pipe.rs, src/consoles/relay.rs).
const PIPE_READ: usize = 256 * 1024;
const CONSOLE_READ: usize = 64 * 1024;
/// Logs big enough never to rotate during the test.
const MAX_SIZE: i64 = 1 << 30;

/// What a console client received, and when.
#[derive(Default)]
struct Seen {
    data: Vec<u8>,
    /// (when, total bytes received by then), one per read.
    reads: Vec<(Instant, usize)>,
    /// Why the connection ended, if it did.
    closed: Option<String>,
}

/// A console client that records everything it receives.
struct Client {
    socket: UnixStream,
    seen: Arc<Mutex<Seen>>,
}

impl Client {
    fn attach(path: &Path) -> Self {
        let socket = UnixStream::connect(path).unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (mut r, sink) = (socket.try_clone().unwrap(), seen.clone());
        thread::spawn(move || {
            let mut buf = vec![0; 65536];
            loop {
                let n = r.read(&mut buf);
                let mut s = sink.lock().unwrap();
                match n {
                    Ok(0) => s.closed = Some("EOF".into()),
                    Ok(n) => {
                        s.data.extend_from_slice(&buf[..n]);
                        let len = s.data.len();
                        s.reads.push((Instant::now(), len));
                        continue;
                    }
                    Err(e) => s.closed = Some(e.to_string()),
                }
                return;
            }
        });
        Self { socket, seen }
    }

    fn contains(&self, what: &str) -> bool {
        let s = self.seen.lock().unwrap();
        s.data.windows(what.len()).any(|w| w == what.as_bytes())
    }

    fn wait_for(&self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.contains(what) {
            assert!(Instant::now() < deadline, "never saw {what:?}");
            sleep(Duration::from_millis(50));
        }
    }
}

/// Every offset of `needle` in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Sends `count ROUND DELAY_MS` rounds, each after the previous one ended,
/// until `stop`; returns how many rounds it sent.
fn drive_guest(client: &Client, stop: Arc<AtomicBool>) -> JoinHandle<u32> {
    let (mut socket, seen) = (client.socket.try_clone().unwrap(), client.seen.clone());
    thread::spawn(move || {
        let done = format!("COUNT DONE {ROUND}\r\n");
        let (mut rounds, mut scan) = (0, seen.lock().unwrap().data.len());
        loop {
            socket
                .write_all(format!("count {ROUND} {DELAY_MS}\n").as_bytes())
                .unwrap();
            rounds += 1;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                sleep(Duration::from_millis(20));
                let s = seen.lock().unwrap();
                if let Some(at) = find_all(&s.data[scan..], done.as_bytes()).first() {
                    scan += at + done.len();
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("round {rounds}: no {done:?} within 60 s; going on");
                    scan = s.data.len();
                    break;
                }
            }
            if stop.load(Relaxed) {
                return rounds;
            }
        }
    })
}

/// Writes numbered lines into the pipe until `stop`; returns how many.
fn write_pipe(mut pipe: std::fs::File, stop: Arc<AtomicBool>) -> JoinHandle<Result<u64, String>> {
    thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Relaxed) {
            let mut batch = String::new();
            for _ in 0..PIPE_BATCH {
                writeln!(batch, "pipe line {i:08}").unwrap();
                i += 1;
            }
            pipe.write_all(batch.as_bytes())
                .map_err(|e| format!("pipe write failed after {i} lines: {e}"))?;
            sleep(Duration::from_millis(10));
        }
        Ok(i)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Restart,
    Reload,
    Upgrade,
    /// A new binary, then a reload: README promises the re-exec runs it.
    UpgradeReload,
    Kill,
    StopStart,
}

/// Where the streams stood: console log size, pipe log size, client bytes.
#[derive(Debug, Clone, Copy)]
struct Marks {
    log: usize,
    pipe: usize,
    client: usize,
}

/// One takeover: the streams before it and once the new instance served.
#[derive(Debug)]
struct Event {
    kind: Kind,
    n: usize,
    t0: Instant,
    t1: Instant,
    before: Marks,
    after: Marks,
}

struct Scenario {
    sd: Systemd,
    socket: PathBuf,
    client_seen: Arc<Mutex<Seen>>,
    status: Status,
    events: Vec<Event>,
    /// Failures that do not stop the scenario.
    errors: Vec<String>,
}

impl Scenario {
    fn file_len(&self, name: &str) -> usize {
        std::fs::metadata(self.sd.host().join("log").join(name)).map_or(0, |m| m.len() as usize)
    }

    fn marks(&self) -> Marks {
        Marks {
            log: self.file_len("vm.log"),
            pipe: self.file_len("qemu-stdout.log"),
            client: self.client_seen.lock().unwrap().data.len(),
        }
    }

    /// One takeover of `kind`; returns once the new instance answered.
    async fn takeover(&mut self, kind: Kind) {
        let prev = self.status;
        let n = self.events.iter().filter(|e| e.kind == kind).count() + 1;
        let what = format!("{kind:?} #{n}");
        if matches!(kind, Kind::Upgrade | Kind::UpgradeReload) {
            // A new binary at the same path, as a package upgrade does it.
            let new = self.sd.host().join("guestlogd.new");
            std::fs::copy(env!("CARGO_BIN_EXE_guestlogd"), &new).unwrap();
            std::fs::rename(&new, self.sd.host().join("guestlogd")).unwrap();
        }
        let restarts = self.sd.prop(SERVICE, "NRestarts");
        let before = self.marks();
        let t0 = Instant::now();
        match kind {
            Kind::Restart | Kind::Upgrade => {
                self.sd.ctl(&["restart", SERVICE]);
            }
            Kind::Reload | Kind::UpgradeReload => {
                self.sd.ctl(&["reload", SERVICE]);
            }
            Kind::Kill => {
                let main = self.sd.prop(SERVICE, "MainPID");
                assert_eq!(main, prev.pid.to_string(), "{what}: MainPID");
                self.sd.run(&["kill", "-9", &main]);
            }
            Kind::StopStart => {
                // Only the service: the socket keeps listening.
                self.sd.ctl(&["stop", SERVICE]);
                assert_eq!(self.sd.prop(SERVICE, "ActiveState"), "inactive");
                assert_eq!(
                    self.sd.prop("guestlogd.socket", "ActiveState"),
                    "active",
                    "the socket stays"
                );
                let kept = self.sd.prop(SERVICE, "NFileDescriptorStore");
                println!("stopped: systemd keeps {kept} descriptors");
                assert_ne!(kept, "0", "FileDescriptorStorePreserve=yes keeps the store");
                sleep(Duration::from_secs(1));
                self.sd.ctl(&["start", SERVICE]);
            }
        }
        let reload = matches!(kind, Kind::Reload | Kind::UpgradeReload);
        let s = if reload {
            // A re-exec keeps the process.
            wait_status(&self.socket, &what, |s| s.adoptions > prev.adoptions).await
        } else {
            wait_status(&self.socket, &what, |s| s.pid != prev.pid).await
        };
        let t1 = Instant::now();
        if reload {
            assert_eq!(s.pid, prev.pid, "{what}: a re-exec keeps the pid");
        }
        if s.adoptions != prev.adoptions + 1 {
            println!(
                "{what}: adoptions went from {} to {}",
                prev.adoptions, s.adoptions
            );
        }
        assert!(s.fd_store, "{what}: fdStore");
        assert_eq!(
            self.sd.prop(SERVICE, "MainPID"),
            s.pid.to_string(),
            "{what}: GetStatus answered by MainPID"
        );
        if kind == Kind::Kill {
            let now = self.sd.prop(SERVICE, "NRestarts");
            assert_ne!(now, restarts, "{what}: Restart=on-failure restarted it");
        }
        if matches!(kind, Kind::Upgrade | Kind::UpgradeReload) {
            let proc = self.sd.inside(&format!("/proc/{}", s.pid));
            let exe = std::fs::metadata(proc.join("exe")).unwrap();
            let new = std::fs::metadata(self.sd.host().join("guestlogd")).unwrap();
            if exe.ino() != new.ino() {
                self.errors.push(format!(
                    "{what}: pid {} still runs the replaced binary ({:?}), not the new \
                     /host/guestlogd (README: SIGUSR1 re-executes the new binary after an upgrade)",
                    s.pid,
                    std::fs::read_link(proc.join("exe")).unwrap_or_default()
                ));
            }
        }
        if reload {
            let comm = std::fs::read_to_string(self.sd.inside(&format!("/proc/{}/comm", s.pid)))
                .unwrap_or_default();
            if comm.trim() != "guestlogd" {
                println!("{what}: the re-exec'd daemon's comm is {:?}", comm.trim());
            }
        }
        // Let the new instance write for a while, so a loss shows up inside
        // this event's window.
        sleep(Duration::from_millis(300));
        let after = self.marks();
        self.status = s;
        self.events.push(Event {
            kind,
            n,
            t0,
            t1,
            before,
            after,
        });
    }
}

/// A hole in a stream: `bytes` missing (or garbled) before `offset`.
#[derive(Debug)]
struct Gap {
    offset: usize,
    bytes: usize,
    what: String,
}

/// Checks `count ROUND` rounds in `data`: each round's echo, then SEQ 1 to
/// ROUND in order, then COUNT DONE. Returns the holes and the hard errors
/// (repeats, reordering, a wrong number of rounds).
fn console_gaps(data: &[u8], rounds: u32) -> (Vec<Gap>, Vec<String>) {
    let echo = format!("count {ROUND} {DELAY_MS}\r\n");
    let done = format!("COUNT DONE {ROUND}\r\n");
    let starts = find_all(data, echo.as_bytes());
    let (mut gaps, mut errors) = (Vec::new(), Vec::new());
    if starts.len() != rounds as usize {
        errors.push(format!(
            "{} rounds found, {rounds} sent (a lost or repeated command echo)",
            starts.len()
        ));
    }
    for (k, &start) in starts.iter().enumerate() {
        let base = start + echo.len();
        let end = starts.get(k + 1).copied().unwrap_or(data.len());
        let seg = &data[base..end];
        let round = k + 1;
        let mut expect = 1u32;
        for p in find_all(seg, b"SEQ ") {
            let Some(v) = seg
                .get(p + 4..p + 10)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| d.parse::<u32>().ok())
            else {
                continue; // a garbled line: the gap shows at the next one
            };
            if v == expect {
                expect += 1;
            } else if v > expect {
                gaps.push(Gap {
                    offset: base + p,
                    bytes: (v - expect) as usize * SEQ_LINE,
                    what: format!("round {round}: SEQ {expect}..={} missing", v - 1),
                });
                expect = v + 1;
            } else {
                errors.push(format!(
                    "round {round}: SEQ {v} after SEQ {} at offset {} (repeated or reordered)",
                    expect - 1,
                    base + p
                ));
            }
        }
        let done_at = find_all(seg, done.as_bytes());
        if expect <= ROUND {
            gaps.push(Gap {
                offset: base + done_at.first().copied().unwrap_or(seg.len()),
                bytes: (ROUND + 1 - expect) as usize * SEQ_LINE,
                what: format!("round {round}: SEQ {expect}..={ROUND} missing"),
            });
        }
        match done_at.len() {
            1 => {}
            0 => gaps.push(Gap {
                offset: end,
                bytes: done.len(),
                what: format!("round {round}: {done:?} missing"),
            }),
            n => errors.push(format!("round {round}: {done:?} {n} times")),
        }
    }
    (gaps, errors)
}

/// Checks `lines` numbered pipe lines in `data`, like `console_gaps`.
fn pipe_gaps(data: &[u8], lines: u64) -> (Vec<Gap>, Vec<String>) {
    let (mut gaps, mut errors) = (Vec::new(), Vec::new());
    let mut expect = 0u64;
    let mut offset = 0;
    for line in data.split_inclusive(|b| *b == b'\n') {
        let number = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.strip_prefix("pipe line "))
            .and_then(|l| l.strip_suffix('\n'))
            .filter(|n| n.len() == 8)
            .and_then(|n| n.parse::<u64>().ok());
        match number {
            Some(v) if v == expect => expect += 1,
            Some(v) if v > expect => {
                gaps.push(Gap {
                    offset,
                    bytes: (v - expect) as usize * PIPE_LINE,
                    what: format!("pipe lines {expect}..={} missing", v - 1),
                });
                expect = v + 1;
            }
            Some(v) => errors.push(format!(
                "pipe line {v} after line {} at offset {offset} (repeated or reordered)",
                expect as i64 - 1
            )),
            None => gaps.push(Gap {
                offset,
                bytes: 0,
                what: format!("garbled line {:?}", String::from_utf8_lossy(line)),
            }),
        }
        offset += line.len();
    }
    if expect < lines {
        gaps.push(Gap {
            offset,
            bytes: (lines - expect) as usize * PIPE_LINE,
            what: format!("pipe lines {expect}..{lines} missing at the end"),
        });
    } else if expect > lines {
        errors.push(format!("{expect} pipe lines, {lines} written"));
    }
    (gaps, errors)
}

/// Attributes each gap to the event whose window holds it: only a kill -9
/// may lose anything. Returns the bytes lost per event.
fn attribute(
    stream: &str,
    gaps: &[Gap],
    events: &[Event],
    window: impl Fn(&Event) -> (usize, usize),
    errors: &mut Vec<String>,
) -> Vec<usize> {
    let mut lost = vec![0; events.len()];
    for g in gaps {
        match events.iter().position(|e| {
            let (from, to) = window(e);
            (from..=to).contains(&g.offset)
        }) {
            Some(i) if events[i].kind == Kind::Kill => {
                println!(
                    "{stream}: Kill #{}: {} ({} bytes)",
                    events[i].n, g.what, g.bytes
                );
                lost[i] += g.bytes;
            }
            Some(i) => errors.push(format!(
                "{stream}: {} at offset {}, around {:?} #{}: a planned takeover must lose nothing",
                g.what, g.offset, events[i].kind, events[i].n
            )),
            None => errors.push(format!(
                "{stream}: {} at offset {}, not around any takeover",
                g.what, g.offset
            )),
        }
    }
    lost
}

/// The longest silence the client saw around an event: from its last read
/// before the event to its first read after the new instance answered.
fn stall(reads: &[(Instant, usize)], e: &Event) -> Duration {
    if reads.is_empty() {
        return Duration::ZERO;
    }
    let first = reads.iter().rposition(|(t, _)| *t <= e.t0).unwrap_or(0);
    let last = reads
        .iter()
        .position(|(t, _)| *t > e.t1)
        .unwrap_or(reads.len() - 1);
    reads[first..=last]
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or_default()
}

fn print_stalls(what: &str, mut stalls: Vec<Duration>) {
    stalls.sort();
    if let (Some(p50), Some(max)) = (stalls.get(stalls.len() / 2), stalls.last()) {
        println!(
            "client stall across a {what} ({} events): p50 {p50:?}, max {max:?}",
            stalls.len()
        );
    }
}

#[tokio::test]
async fn systemd_restarts_reloads_upgrade_kills_and_stop_start_lose_nothing() {
    let begin = Instant::now();
    if let Ok(why) = std::fs::read_to_string(Path::new(CACHE).join("systemd.unavailable")) {
        println!("SKIPPED: systemd unavailable: {}", why.trim());
        return;
    }
    if !Path::new(CACHE).join("trixie/.guestlogd-complete").exists() {
        println!("SKIPPED: systemd unavailable: run tests/env/systemd.sh");
        return;
    }
    if let Some(why) = qemu::unavailable(Boot::Guest) {
        println!("SKIPPED: {why}");
        return;
    }

    let (sd, socket) = Systemd::with_guestlogd(env!("CARGO_BIN_EXE_guestlogd"));
    println!("systemd up after {:?}", begin.elapsed());

    // The first call activates the daemon.
    let mut conn = zlink::tokio::unix::connect(&socket).await.unwrap();
    let created = match conn
        .create_console(
            "vm",
            None,
            Some(MAX_SIZE),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        )
        .await
        .unwrap()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "CreateConsole from the host (outside the daemon's PID namespace) \
             was refused: {e:?}; the journal says: {}",
            sd.run(&["journalctl", "-u", SERVICE, "-o", "cat", "--no-pager"])
        ),
    };
    let (guest_socket, client_socket) = (
        sd.inside(created.guest_socket),
        sd.inside(created.client_socket),
    );
    assert_eq!(sd.prop(SERVICE, "ActiveState"), "active");
    let status = try_status(&socket).await.unwrap();
    println!("activated: {status:?}");
    assert!(status.fd_store, "systemd's FD store is in use");
    assert_eq!(status.adoptions, 0);
    assert_eq!(sd.prop(SERVICE, "MainPID"), status.pid.to_string());

    let mut guest = Qemu::start(&guest_socket, Boot::Guest, None);
    let client = Client::attach(&client_socket);
    client.wait_for("GUEST READY", Duration::from_secs(120));
    println!("guest ready after {:?}", begin.elapsed());

    let (reply, mut fds) = common::call_with_fds(
        &mut conn,
        "OpenPipe",
        json!({"name": "qemu-stdout", "maxSize": MAX_SIZE}),
    )
    .await;
    reply.unwrap();
    drop(conn);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = write_pipe(std::fs::File::from(fds.remove(0)), stop.clone());
    let driver = drive_guest(&client, stop.clone());
    sleep(Duration::from_millis(500));

    let mut sc = Scenario {
        status: try_status(&socket).await.unwrap(),
        sd,
        socket: socket.clone(),
        client_seen: client.seen.clone(),
        events: Vec::new(),
        errors: Vec::new(),
    };
    let plan = [
        (Kind::Restart, 20),
        (Kind::Reload, 5),
        (Kind::Upgrade, 1),
        (Kind::UpgradeReload, 1),
        (Kind::Kill, 5),
        (Kind::StopStart, 1),
    ];
    for (kind, times) in plan {
        let t = Instant::now();
        for _ in 0..times {
            sc.takeover(kind).await;
            sleep(Duration::from_millis(200));
        }
        let s = sc.status;
        println!(
            "{times} x {kind:?}: {:?}; pid {}, adoptions {}, storedFds {}",
            t.elapsed(),
            s.pid,
            s.adoptions,
            s.stored_fds
        );
    }

    // Wind down: the last round ends, the writer closes its pipe.
    stop.store(true, Relaxed);
    let rounds = driver.join().unwrap();
    let lines = writer.join().unwrap().unwrap();
    let log_path = sc.sd.host().join("log/vm.log");
    let pipe_path = sc.sd.host().join("log/qemu-stdout.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sc.file_len("qemu-stdout.log") < lines as usize * PIPE_LINE && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    sleep(Duration::from_millis(200));
    println!(
        "{rounds} rounds of {ROUND} SEQ lines, {lines} pipe lines; scenario {:?}",
        begin.elapsed()
    );

    let end = wait_status(&socket, "final", |_| true).await;
    println!("final: {end:?}");
    let mut conn = zlink::tokio::unix::connect(&socket).await.unwrap();
    let consoles = conn.list_logs().await.unwrap().unwrap().consoles;

    let mut errors = std::mem::take(&mut sc.errors);
    let client_data = client.seen.lock().unwrap().data.clone();
    let log = std::fs::read(&log_path).unwrap();
    let pipe_log = std::fs::read(&pipe_path).unwrap();
    let events = &sc.events;
    let (gaps, mut errs) = console_gaps(&log, rounds);
    errors.append(&mut errs);
    let log_lost = attribute(
        "console log",
        &gaps,
        events,
        |e| (e.before.log, e.after.log),
        &mut errors,
    );
    let (gaps, mut errs) = console_gaps(&client_data, rounds);
    errors.append(&mut errs);
    let client_lost = attribute(
        "client",
        &gaps,
        events,
        |e| (e.before.client, e.after.client),
        &mut errors,
    );
    let (gaps, mut errs) = pipe_gaps(&pipe_log, lines);
    errors.append(&mut errs);
    let pipe_lost = attribute(
        "pipe log",
        &gaps,
        events,
        |e| (e.before.pipe, e.after.pipe),
        &mut errors,
    );
    for (i, e) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::Kill)
    {
        println!(
            "kill -9 #{}: lost {} bytes of the console log, {} of the client's stream, {} of the pipe; back after {:?}",
            e.n,
            log_lost[i],
            client_lost[i],
            pipe_lost[i],
            e.t1 - e.t0
        );
        if log_lost[i] > CONSOLE_READ || client_lost[i] > CONSOLE_READ {
            errors.push(format!("kill -9 #{}: more than one console read lost", e.n));
        }
        if pipe_lost[i] > PIPE_READ {
            errors.push(format!("kill -9 #{}: more than one pipe read lost", e.n));
        }
    }

    // The stall the client saw, and how long each takeover took.
    let reads = client.seen.lock().unwrap().reads.clone();
    for kind in [
        Kind::Restart,
        Kind::Reload,
        Kind::Upgrade,
        Kind::UpgradeReload,
        Kind::Kill,
        Kind::StopStart,
    ] {
        let of_kind: Vec<&Event> = events.iter().filter(|e| e.kind == kind).collect();
        print_stalls(
            &format!("{kind:?}"),
            of_kind.iter().map(|e| stall(&reads, e)).collect(),
        );
        let mut took: Vec<Duration> = of_kind.iter().map(|e| e.t1 - e.t0).collect();
        took.sort();
        println!(
            "{kind:?}: new instance answered after p50 {:?}, max {:?}",
            took[took.len() / 2],
            took.last().unwrap()
        );
    }

    // systemd holds exactly what the daemon keeps: nothing stale, nothing
    // missing.
    let held = sc.sd.prop(SERVICE, "NFileDescriptorStore");
    println!(
        "systemd holds {held} descriptors, storedFds {}",
        end.stored_fds
    );
    if held != end.stored_fds.to_string() {
        errors.push(format!(
            "systemd's FD store holds {held} descriptors, the daemon keeps {}",
            end.stored_fds
        ));
    }
    // The daemon's own account of the takeovers.
    let journal = sc
        .sd
        .run(&["journalctl", "-u", SERVICE, "-o", "cat", "--no-pager"]);
    for bad in [
        "guest disconnected",
        "guest reconnected",
        "cannot take over",
        "was not passed",
        "closing a stored descriptor",
        "ignoring a saved state",
        "cannot reopen",
        "cannot push",
        "cannot remove a descriptor",
        "cannot save",
        "cannot keep",
        "cannot read the caller",
    ] {
        let n = journal.matches(bad).count();
        if n > 0 {
            errors.push(format!("the journal says {bad:?} {n} times"));
        }
    }
    let takeovers = events.len() as i64;
    println!("adoptions: {} after {takeovers} takeovers", end.adoptions);
    if end.adoptions < 31 {
        errors.push(format!(
            "GetStatus.adoptions is {} after {takeovers} takeovers",
            end.adoptions
        ));
    }
    if !end.fd_store {
        errors.push("fdStore false at the end".into());
    }
    if let Some(why) = &client.seen.lock().unwrap().closed {
        errors.push(format!("the client's connection ended: {why}"));
    }
    match consoles.as_slice() {
        [c] if c.guest_connected && c.clients == 1 => {}
        other => errors.push(format!("consoles at the end: {other:?}")),
    }
    if let Some(exit) = guest.try_wait() {
        errors.push(format!("QEMU exited: {exit}"));
    }
    let qemu_stderr = guest.stderr();
    if !qemu_stderr.trim().is_empty() {
        println!("QEMU's stderr:\n{qemu_stderr}");
    }
    if qemu_stderr.contains("disconnect") || qemu_stderr.contains("reconnect") {
        errors.push("QEMU saw its chardev disconnect".into());
    }
    println!("total {:?}", begin.elapsed());
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The checkers themselves: they see a hole, a repeat and a garbled line,
/// and blame a hole on the takeover around it.
#[test]
fn checkers_find_losses_and_repeats() {
    let round = |skip: &[u32], repeat: Option<u32>| {
        let mut s = format!("count {ROUND} {DELAY_MS}\r\n");
        for i in 1..=ROUND {
            if !skip.contains(&i) {
                s.push_str(&format!("SEQ {i:06}\r\n"));
            }
            if repeat == Some(i) {
                s.push_str(&format!("SEQ {i:06}\r\n"));
            }
        }
        s + &format!("COUNT DONE {ROUND}\r\n")
    };
    let whole = round(&[], None) + &round(&[], None);
    assert_eq!(console_gaps(whole.as_bytes(), 2).0.len(), 0);
    assert_eq!(console_gaps(whole.as_bytes(), 2).1.len(), 0);
    assert_eq!(console_gaps(whole.as_bytes(), 3).1.len(), 1);
    let holed = round(&[], None) + &round(&[10, 11, 12], None);
    let (gaps, errors) = console_gaps(holed.as_bytes(), 2);
    assert!(errors.is_empty());
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].bytes, 3 * SEQ_LINE);
    assert_eq!(&holed[gaps[0].offset..gaps[0].offset + 10], "SEQ 000013");
    let repeated = round(&[], Some(7)) + &round(&[], None);
    assert_eq!(console_gaps(repeated.as_bytes(), 2).1.len(), 1);

    let pipe = |skip: std::ops::Range<u64>, extra: &str| {
        let mut s = String::new();
        for i in 0..100 {
            if !skip.contains(&i) {
                s.push_str(&format!("pipe line {i:08}\n"));
            }
            if i == 50 {
                s.push_str(extra);
            }
        }
        s
    };
    assert_eq!(pipe_gaps(pipe(0..0, "").as_bytes(), 100).0.len(), 0);
    assert_eq!(pipe_gaps(pipe(0..0, "").as_bytes(), 101).0.len(), 1);
    let (gaps, errors) = pipe_gaps(pipe(40..45, "").as_bytes(), 100);
    assert!(errors.is_empty());
    assert_eq!(gaps[0].bytes, 5 * PIPE_LINE);
    assert_eq!(gaps[0].offset, 40 * PIPE_LINE);
    let (gaps, _) = pipe_gaps(pipe(0..0, "pipe li").as_bytes(), 100);
    // The garbled line, and the line it swallowed.
    assert_eq!(gaps.len(), 2, "a garbled line is a hole");
    let (_, errors) = pipe_gaps(pipe(0..0, "pipe line 00000050\n").as_bytes(), 100);
    assert_eq!(errors.len(), 1, "a repeat is an error");

    let now = Instant::now();
    let marks = |at| Marks {
        log: at,
        pipe: at,
        client: at,
    };
    let event = |kind, from, to| Event {
        kind,
        n: 1,
        t0: now,
        t1: now,
        before: marks(from),
        after: marks(to),
    };
    let (gaps, _) = pipe_gaps(pipe(40..45, "").as_bytes(), 100);
    let mut errors = Vec::new();
    let events = [event(Kind::Restart, 0, 100), event(Kind::Kill, 700, 800)];
    let lost = attribute(
        "pipe",
        &gaps,
        &events,
        |e| (e.before.pipe, e.after.pipe),
        &mut errors,
    );
    assert_eq!(lost, [0, 5 * PIPE_LINE]);
    assert!(errors.is_empty());
    let events = [event(Kind::Restart, 700, 800)];
    attribute(
        "pipe",
        &gaps,
        &events,
        |e| (e.before.pipe, e.after.pipe),
        &mut errors,
    );
    assert_eq!(errors.len(), 1, "a planned takeover loses nothing");
    attribute(
        "pipe",
        &gaps,
        &[],
        |e| (e.before.pipe, e.after.pipe),
        &mut errors,
    );
    assert_eq!(errors.len(), 2, "a hole outside any takeover");
}
