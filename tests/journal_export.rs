//! Journal export end to end, under a real systemd 257 (tests/systemd/,
//! on a root with systemd-journal-remote, tests/env/fleet.sh): two real
//! QEMU guests on consoles made by the libvirt hook with `--journal`;
//! `systemd-journal-upload` ships the journal to `systemd-journal-remote`
//! on loopback. While vm1 prints 1,500 numbered lines and vm2 floods its
//! console, guestlogd restarts 5 times and is killed once. Every line of
//! vm1 arrives at the remote exactly once (`journalctl --file …
//! VM_NAME=vm1` finds them), none suppressed: the flood did not silence
//! it; vm2's lines arrive at most once, and the ones that did not are
//! counted as suppressed and reported. `journalctl -x` explains the
//! takeovers from the catalog, and systemd-report (where the package
//! archive has it) lists the metrics that guestlogd-metrics.socket serves.

mod common;
#[path = "common/qemu.rs"]
mod qemu;
#[path = "common/systemd.rs"]
mod systemd;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread::{self, sleep},
    time::{Duration, Instant},
};

use qemu::{Boot, Qemu};
use systemd::{CACHE, SERVICE, Systemd, try_status, wait_status};

const LINES: u32 = 1500;
const CONFIG: &str = "[journal]\nmax-lines-per-second = 300\nmax-burst = 600\n";
const DROP_IN: &str = "\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=
ExecStart=/host/guestlogd --runtime-dir /run/guestlogd --log-dir /host/log --config /host/guestlogd.toml
ReadWritePaths=/host/log
RestartSec=100ms
";

/// Records what a console client receives.
fn record(path: &Path) -> (UnixStream, Arc<Mutex<Vec<u8>>>) {
    let s = UnixStream::connect(path).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (mut r, sink) = (s.try_clone().unwrap(), seen.clone());
    thread::spawn(move || {
        let mut buf = vec![0; 65536];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    (s, seen)
}

fn wait_for(seen: &Mutex<Vec<u8>>, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !String::from_utf8_lossy(&seen.lock().unwrap()).contains(what) {
        assert!(Instant::now() < deadline, "never saw {what:?}");
        sleep(Duration::from_millis(50));
    }
}

/// The remote journal's entries for `filter`, as JSON objects.
fn remote(sd: &Systemd, filter: &str) -> Vec<serde_json::Value> {
    let out = sd.run(&[
        "journalctl",
        "--file",
        "/var/log/journal/remote/all.journal",
        "-o",
        "json",
        "--no-pager",
        filter,
    ]);
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn message(e: &serde_json::Value) -> String {
    match &e["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        // journalctl shows bytes that are not text as an array of numbers.
        serde_json::Value::Array(a) => String::from_utf8_lossy(
            &a.iter()
                .filter_map(|b| b.as_u64())
                .map(|b| b as u8)
                .collect::<Vec<_>>(),
        )
        .into_owned(),
        _ => String::new(),
    }
}

fn metric(list: &str, family: &str, object: &str) -> u64 {
    list.lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l.trim_start_matches('\u{1e}')).ok()
        })
        .find(|m| {
            m["name"] == family
                && (m["object"] == object || (object.is_empty() && m["object"].is_null()))
        })
        .and_then(|m| m["value"].as_u64())
        .unwrap_or_else(|| panic!("no {family} for {object} in {list}"))
}

#[tokio::test]
async fn journal_export_survives_restarts_and_a_kill_and_ships_every_line_once() {
    if let Some(why) = systemd::unavailable() {
        return println!("SKIPPED: {why}");
    }
    let root = Path::new(CACHE).join("journal-root");
    if !root.join(".guestlogd-complete").exists() {
        let why = std::fs::read_to_string(Path::new(CACHE).join("journal-root.unavailable"))
            .unwrap_or_else(|_| "run tests/env/fleet.sh".into());
        return println!("SKIPPED: journal root unavailable: {}", why.trim());
    }
    if let Some(why) = qemu::unavailable(Boot::Guest) {
        return println!("SKIPPED: {why}");
    }
    let varlinkctl = match common::tool("varlinkctl") {
        Ok(v) => v,
        Err(why) => return println!("SKIPPED: {why}"),
    };

    let dir = tempfile::Builder::new()
        .prefix("gld-journal")
        .tempdir()
        .unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_guestlogd"),
        dir.path().join("guestlogd"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("log")).unwrap();
    std::fs::write(dir.path().join("guestlogd.toml"), CONFIG).unwrap();
    let report = Path::new(CACHE).join("report/usr/lib/systemd/systemd-report.standalone");
    if report.exists() {
        std::fs::copy(&report, dir.path().join("systemd-report")).unwrap();
    }
    let root_env = root.display().to_string();
    let sd = Systemd::boot_on(dir, &[("SD_ROOT", &root_env), ("SD_SETUP", "fleet")]);
    let etc = sd.inside("/etc/systemd/system");
    for unit in [
        "guestlogd.socket",
        "guestlogd.service",
        "guestlogd-metrics.socket",
    ] {
        std::fs::copy(Path::new(systemd::UNITS).join(unit), etc.join(unit)).unwrap();
    }
    std::fs::create_dir(etc.join("guestlogd.service.d")).unwrap();
    std::fs::write(etc.join("guestlogd.service.d/test.conf"), DROP_IN).unwrap();
    let catalog = sd.inside("/usr/lib/systemd/catalog/guestlogd.catalog");
    std::fs::copy(Path::new(systemd::UNITS).join("guestlogd.catalog"), catalog).unwrap();
    sd.run(&["journalctl", "--update-catalog"]);
    sd.ctl(&["daemon-reload"]);
    sd.ctl(&["start", "guestlogd.socket", "guestlogd-metrics.socket"]);

    // The remote journal on loopback, and the uploader feeding it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sd.run(&["mkdir", "-p", "/var/log/journal/remote"]);
    sd.run(&[
        "systemd-run",
        "--unit=jremote",
        "/usr/lib/systemd/systemd-journal-remote",
        &format!("--listen-http=127.0.0.1:{port}"),
        "--output=/var/log/journal/remote/all.journal",
        "--split-mode=none",
    ]);
    sd.run(&[
        "systemd-run",
        "--unit=jupload",
        "/usr/lib/systemd/systemd-journal-upload",
        &format!("--url=http://127.0.0.1:{port}"),
        "--save-state=/var/lib/jupload.state",
        "--follow=yes",
    ]);

    // The hook makes vm1's console, as libvirt would run it; vm2's too.
    let rundir = sd.inside("/run/guestlogd");
    let consoles = rundir.join("consoles");
    let ctl = env!("CARGO_BIN_EXE_guestlogctl");
    for (vm, uuid) in [
        ("vm1", "6a0d3c52-0c1e-4b43-9d7f-0c5e2d1a0001"),
        ("vm2", "6a0d3c52-0c1e-4b43-9d7f-0c5e2d1a0002"),
    ] {
        let xml = format!(
            "<domain type='qemu'><name>{vm}</name><uuid>{uuid}</uuid><devices>\
             <serial type='unix'><source mode='connect' path='{}'/></serial></devices></domain>",
            consoles.join(format!("{vm}-serial0.guest")).display()
        );
        let mut hook = Command::new(ctl)
            .arg("--runtime-dir")
            .arg(&rundir)
            .args([
                "hook",
                "--journal",
                "--owner",
                "0:0",
                "--timeout",
                "30",
                "--",
                vm,
                "prepare",
                "begin",
                "-",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        hook.stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        assert!(hook.wait().unwrap().success(), "the hook for {vm}");
    }
    let socket = rundir.join("io.guestlogd.Manager");
    let mut status = try_status(&socket).await.unwrap();
    assert!(status.fd_store);

    let (_q1, _q2) = (
        Qemu::start(&consoles.join("vm1-serial0.guest"), Boot::Guest, Some(200)),
        Qemu::start(&consoles.join("vm2-serial0.guest"), Boot::Guest, Some(200)),
    );
    let (mut c1, seen1) = record(&consoles.join("vm1-serial0.client"));
    let (mut c2, seen2) = record(&consoles.join("vm2-serial0.client"));
    wait_for(&seen1, "GUEST READY", Duration::from_secs(60));
    wait_for(&seen2, "GUEST READY", Duration::from_secs(60));
    c1.write_all(format!("count {LINES} 10\n").as_bytes())
        .unwrap();
    c2.write_all(b"flood 2000000\n").unwrap();

    // Five restarts and a kill while both print.
    for i in 0..6 {
        sleep(Duration::from_millis(1500));
        let prev = status;
        if i == 3 {
            let main = sd.prop(SERVICE, "MainPID");
            sd.run(&["kill", "-9", &main]);
        } else {
            sd.ctl(&["restart", SERVICE]);
        }
        status = wait_status(&socket, "takeover", |s| s.pid != prev.pid).await;
    }
    wait_for(
        &seen1,
        &format!("COUNT DONE {LINES}"),
        Duration::from_secs(180),
    );
    wait_for(&seen2, "FLOOD DONE", Duration::from_secs(180));

    // Until the remote has vm1's last line, and every entry the metrics
    // say vm2's export sent, with summaries for all it suppressed (an
    // episode ends after a quiet second).
    let metrics = sd.inside("/run/systemd/report/io.guestlogd");
    let list = || {
        let out = Command::new(&varlinkctl)
            .args(["call", "--more", "--json=short"])
            .arg(format!("unix:{}", metrics.display()))
            .args(["io.systemd.Metrics.List", "{}"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (list, entries2, reported) = loop {
        let list = list();
        let sent = metric(&list, "io.guestlogd.logJournalLinesSent", "vm2-serial0");
        let suppressed = metric(
            &list,
            "io.guestlogd.logJournalLinesSuppressed",
            "vm2-serial0",
        );
        let done1 = remote(&sd, "VM_NAME=vm1")
            .iter()
            .any(|e| message(e).contains(&format!("COUNT DONE {LINES}")));
        let entries2 = remote(&sd, "VM_NAME=vm2");
        let reported: u64 = entries2
            .iter()
            .filter_map(|e| e["GUESTLOGD_SUPPRESSED"].as_str()?.parse::<u64>().ok())
            .sum();
        let lines2 = entries2
            .iter()
            .filter(|e| e["GUESTLOGD_SUPPRESSED"].is_null())
            .count() as u64;
        if done1 && lines2 == sent && reported == suppressed && suppressed > 0 {
            break (list, entries2, reported);
        }
        assert!(
            Instant::now() < deadline,
            "the remote journal lacks entries: vm1 done {done1}; vm2 {lines2} of {sent} sent, \
             {reported} of {suppressed} suppressed reported"
        );
        sleep(Duration::from_millis(500));
    };
    // Let anything repeated arrive too.
    sleep(Duration::from_secs(2));

    // vm1: every numbered line exactly once, with its fields.
    let entries = remote(&sd, "VM_NAME=vm1");
    let mut seq: BTreeMap<u32, usize> = BTreeMap::new();
    for e in &entries {
        assert_eq!(e["VM_UUID"], "6a0d3c52-0c1e-4b43-9d7f-0c5e2d1a0001");
        assert_eq!(e["GUESTLOGD_LOG"], "vm1-serial0");
        assert_eq!(e["GUESTLOGD_KIND"], "console");
        assert_eq!(e["SYSLOG_IDENTIFIER"], "guestlogd");
        let m = message(e);
        if let Some(n) = m
            .strip_prefix("SEQ ")
            .and_then(|n| n.trim().parse::<u32>().ok())
        {
            *seq.entry(n).or_default() += 1;
        }
    }
    // The file is the complete record, less what the kill took: the one
    // read the killed daemon had not written yet (README: a crash loses at
    // most one read). The remote has exactly the file's lines, once each.
    let log = std::fs::read(sd.host().join("log/vm1-serial0.log")).unwrap();
    let in_file: Vec<u32> = String::from_utf8_lossy(&log)
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("SEQ ")?.parse().ok())
        .collect();
    let lost: Vec<u32> = (1..=LINES).filter(|n| !in_file.contains(n)).collect();
    println!("vm1: lines the kill took from the log itself: {lost:?}");
    assert!(
        lost.windows(2).all(|w| w[1] == w[0] + 1) && lost.len() <= 4,
        "more than one read lost: {lost:?}"
    );
    let missing: Vec<u32> = in_file
        .iter()
        .copied()
        .filter(|n| !seq.contains_key(n))
        .collect();
    let extra: Vec<u32> = seq
        .keys()
        .copied()
        .filter(|n| !in_file.contains(n))
        .collect();
    let repeated: Vec<(u32, usize)> = seq
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    println!(
        "vm1: {} numbered lines at the remote, {} of the file's missing, {} repeated",
        seq.len(),
        missing.len(),
        repeated.len()
    );
    assert!(
        missing.is_empty(),
        "vm1 lines missing at the remote: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "vm1 lines at the remote that the file lacks: {extra:?}"
    );
    assert!(
        repeated.is_empty(),
        "vm1 lines repeated at the remote: {repeated:?}"
    );
    assert_eq!(
        metric(
            &list,
            "io.guestlogd.logJournalLinesSuppressed",
            "vm1-serial0"
        ),
        0,
        "the flood did not cost vm1 a line"
    );

    // vm2: each flood line at most once; every line of its file was sent
    // or counted as suppressed, and each suppressed one reported.
    let mut flood: BTreeMap<u32, usize> = BTreeMap::new();
    for e in entries2
        .iter()
        .filter(|e| e["GUESTLOGD_SUPPRESSED"].is_null())
    {
        if let Some(n) = message(e)
            .strip_prefix('F')
            .and_then(|n| n.get(..8))
            .and_then(|n| n.parse::<u32>().ok())
        {
            *flood.entry(n).or_default() += 1;
        }
    }
    assert!(flood.values().all(|c| *c == 1), "a flood line repeated");
    let sent = metric(&list, "io.guestlogd.logJournalLinesSent", "vm2-serial0");
    let suppressed = metric(
        &list,
        "io.guestlogd.logJournalLinesSuppressed",
        "vm2-serial0",
    );
    let log = std::fs::read(sd.host().join("log/vm2-serial0.log")).unwrap();
    let in_file = log.iter().filter(|b| **b == b'\n').count() as u64;
    println!(
        "vm2: {in_file} lines in its log; {sent} sent ({} flood lines), {suppressed} suppressed, {reported} reported",
        flood.len()
    );
    assert_eq!(
        sent + suppressed,
        in_file,
        "every line of vm2's file was sent or counted"
    );
    assert!(metric(&list, "io.guestlogd.takeovers", "") >= 6);

    // The catalog explains the takeovers.
    let explained = sd.run(&[
        "journalctl",
        "-x",
        "--no-pager",
        "-u",
        SERVICE,
        &format!("MESSAGE_ID={}", guestlogd::logging::events::TAKEOVER),
    ]);
    assert!(
        explained.contains("guestlogd took over its logs and consoles after a restart"),
        "{explained}"
    );
    let crashed = sd.run(&[
        "journalctl",
        "-x",
        "--no-pager",
        "-u",
        SERVICE,
        &format!("MESSAGE_ID={}", guestlogd::logging::events::TAKEOVER_CRASH),
    ]);
    assert!(crashed.contains("after a crash"), "{crashed}");

    // systemd-report finds the metrics where guestlogd-metrics.socket is.
    if sd.host().join("systemd-report").exists() {
        let out = sd.run(&["/host/systemd-report", "metrics", "--no-pager"]);
        assert!(out.contains("io.guestlogd.logBytesWritten"), "{out}");
        println!("systemd-report lists guestlogd's metrics");
    } else {
        println!("SKIPPED: systemd-report unavailable (tests/env/fleet.sh)");
    }
    drop(c1);
    drop(c2);
}
