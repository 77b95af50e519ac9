//! The metrics socket with real clients: systemd 262's `varlinkctl call
//! --more` on `io.systemd.Metrics`, whose values agree with ListLogs after
//! pipes, a console and a re-exec (counters never go back); `guestlogctl
//! metrics` parsed by the Python Prometheus client; and Debian's
//! prometheus-node-exporter serving the textfile, fetched with curl.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Daemon, TEST_CACHE, call, call_with_fds, tool};
use serde_json::{Value, json};

fn config(dir: &Path) -> String {
    format!(
        "[metrics]\nsocket = \"{}\"\n[journal]\nsocket = \"{}\"\n",
        dir.join("metrics/io.guestlogd").display(),
        dir.join("journal.sock").display()
    )
}

/// What a datagram socket standing in for journald's received.
type Received = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// A daemon whose metrics and journal sockets are in `aux`, with a
/// datagram socket there standing in for journald's, read by a thread.
fn start(aux: &Path) -> (Daemon, PathBuf, Received) {
    let journal = std::os::unix::net::UnixDatagram::bind(aux.join("journal.sock")).unwrap();
    let received = Received::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = journal.recv(&mut buf) {
            sink.lock().unwrap().push(buf[..n].to_vec());
        }
    });
    let d = Daemon::start(&config(aux));
    (d, aux.join("metrics/io.guestlogd"), received)
}

/// `varlinkctl call --more` on the metrics socket: one JSON reply a line.
fn varlinkctl_more(varlinkctl: &Path, socket: &Path, method: &str) -> Vec<Value> {
    let out = Command::new(varlinkctl)
        .args(["call", "--more", "--json=short"])
        .arg(format!("unix:{}", socket.display()))
        .arg(method)
        .arg("{}")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "varlinkctl {method}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_start_matches('\u{1e}'))
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// (family, object, reason) → value.
type Values = BTreeMap<(String, String, String), u64>;

fn values(list: &[Value]) -> Values {
    list.iter()
        .map(|m| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let key = (s(&m["name"]), s(&m["object"]), s(&m["fields"]["reason"]));
            (key, m["value"].as_u64().unwrap())
        })
        .collect()
}

async fn list_logs(socket: &Path) -> Value {
    let mut conn = zlink::tokio::unix::connect(socket).await.unwrap();
    call(&mut conn, "ListLogs", json!({})).await.unwrap()
}

/// Every figure ListLogs shows has the same value in the metrics.
fn assert_agree(listed: &Value, v: &Values) {
    let get = |family: &str, object: &str| {
        v.get(&(
            format!("io.guestlogd.{family}"),
            object.to_owned(),
            String::new(),
        ))
        .copied()
        .unwrap_or_else(|| panic!("no {family} for {object}"))
    };
    for l in listed["logs"].as_array().unwrap() {
        let name = l["name"].as_str().unwrap();
        for (family, field) in [
            ("logBytesWritten", "bytesWritten"),
            ("logBytesDropped", "bytesDropped"),
            ("logRotations", "rotations"),
            ("logSize", "size"),
            ("logPipes", "pipes"),
        ] {
            assert_eq!(
                get(family, name),
                l[field].as_u64().unwrap(),
                "{family} of {name}"
            );
        }
        if let Some(j) = l["journal"].as_object() {
            assert_eq!(
                get("logJournalLinesSent", name),
                j["linesSent"].as_u64().unwrap()
            );
            assert_eq!(
                get("logJournalLinesSuppressed", name),
                j["linesSuppressed"].as_u64().unwrap()
            );
        }
    }
    for c in listed["consoles"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        for (family, field) in [
            ("consoleBytesFromGuest", "bytesFromGuest"),
            ("consoleBytesToGuest", "bytesToGuest"),
            ("consoleBytesDroppedForClients", "bytesDroppedForClients"),
            ("consoleClients", "clients"),
            ("consoleViewers", "viewers"),
        ] {
            assert_eq!(
                get(family, name),
                c[field].as_u64().unwrap(),
                "{family} of {name}"
            );
        }
        let connected = u64::from(c["guestConnected"].as_bool().unwrap());
        assert_eq!(get("consoleGuestConnected", name), connected);
    }
}

/// Waits until ListLogs shows `bytes` written into `log`.
async fn wait_written(socket: &Path, log: &str, bytes: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = list_logs(socket).await;
        let written = listed["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == log)
            .and_then(|l| l["bytesWritten"].as_u64());
        if written == Some(bytes) {
            return listed;
        }
        assert!(
            Instant::now() < deadline,
            "{log}: {written:?} of {bytes} bytes"
        );
        sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn varlinkctl_lists_metrics_that_agree_with_listlogs_across_a_reexec() {
    let varlinkctl = match tool("varlinkctl") {
        Ok(v) => v,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let aux = tempfile::tempdir().unwrap();
    let (mut d, metrics, journal) = start(aux.path());
    let socket = d.socket();
    let mode = std::fs::metadata(&metrics).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o666,
        "anyone may read the metrics"
    );

    // Two pipes, one exported to the journal, and a console with a guest
    // and a client.
    let mut conn = zlink::tokio::unix::connect(&socket).await.unwrap();
    let (r, mut fds) = call_with_fds(
        &mut conn,
        "OpenPipe",
        json!({"name": "vm1", "journal": true, "vm": {"name": "vm1"}}),
    )
    .await;
    r.unwrap();
    let mut pipe1 = std::fs::File::from(fds.remove(0));
    let (r, mut fds) = call_with_fds(&mut conn, "OpenPipe", json!({"name": "vm2"})).await;
    r.unwrap();
    let mut pipe2 = std::fs::File::from(fds.remove(0));
    let created = call(
        &mut conn,
        "CreateConsole",
        json!({"name": "con", "viewers": true}),
    )
    .await
    .unwrap();
    let mut guest = UnixStream::connect(created["guestSocket"].as_str().unwrap()).unwrap();
    let mut client = UnixStream::connect(created["clientSocket"].as_str().unwrap()).unwrap();
    client.write_all(b"typed\n").unwrap();
    for i in 0..100 {
        writeln!(pipe1, "pipe one line {i}").unwrap();
        writeln!(pipe2, "pipe two line {i}").unwrap();
        writeln!(guest, "guest line {i}").unwrap();
    }
    drop(pipe2);
    let mut typed = [0u8; 6];
    guest.read_exact(&mut typed).unwrap();
    let len = |f: &dyn Fn(u32) -> String, r: std::ops::Range<u32>| -> u64 {
        r.map(|i| f(i).len() as u64).sum()
    };
    let one = |i| format!("pipe one line {i}\n");
    wait_written(
        &socket,
        "con",
        len(&|i| format!("guest line {i}\n"), 0..100),
    )
    .await;
    wait_written(&socket, "vm1", len(&one, 0..100)).await;
    wait_written(
        &socket,
        "vm2",
        len(&|i| format!("pipe two line {i}\n"), 0..100),
    )
    .await;

    let list = varlinkctl_more(&varlinkctl, &metrics, "io.systemd.Metrics.List");
    let before = values(&list);
    assert_agree(&list_logs(&socket).await, &before);
    // Describe covers every family List returns, with its type.
    let described = varlinkctl_more(&varlinkctl, &metrics, "io.systemd.Metrics.Describe");
    let families: BTreeMap<String, String> = described
        .iter()
        .map(|f| {
            assert!(!f["description"].as_str().unwrap().is_empty());
            (
                f["name"].as_str().unwrap().to_owned(),
                f["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (family, _, _) in before.keys() {
        assert!(families.contains_key(family), "{family} is not described");
        assert!(family.starts_with("io.guestlogd."), "{family}");
    }
    assert!(families.values().all(|t| t == "counter" || t == "gauge"));
    assert_eq!(
        before[&(
            "io.guestlogd.takeovers".into(),
            String::new(),
            String::new()
        )],
        0
    );
    assert!(
        before[&(
            "io.guestlogd.frontConnectionsAccepted".into(),
            "varlink".into(),
            String::new()
        )] >= 2
    );

    // The interface as varlinkctl reads it; nothing else is served there.
    let introspect = Command::new(&varlinkctl)
        .args(["introspect"])
        .arg(format!("unix:{}", metrics.display()))
        .arg("io.systemd.Metrics")
        .output()
        .unwrap();
    assert!(
        introspect.status.success(),
        "{}",
        String::from_utf8_lossy(&introspect.stderr)
    );
    let text = String::from_utf8_lossy(&introspect.stdout);
    assert!(text.contains("method List() -> ("), "{text}");
    let refused =
        common::raw_call(&metrics, br#"{"method":"io.guestlogd.Manager.ListLogs"}"#).unwrap();
    assert!(
        refused.contains("InterfaceNotFound"),
        "the metrics socket serves no Manager call: {refused}"
    );
    let plain = common::raw_call(&metrics, br#"{"method":"io.systemd.Metrics.List"}"#).unwrap();
    assert!(
        plain.contains("org.varlink.service.ExpectedMore"),
        "{plain}"
    );

    // A re-exec carries every counter over: none goes back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let list = Command::new(&varlinkctl)
            .args(["call", "--more", "--json=short"])
            .arg(format!("unix:{}", metrics.display()))
            .args(["io.systemd.Metrics.List", "{}"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let v: Vec<Value> = String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l.trim_start_matches('\u{1e}')).ok())
            .collect();
        let v = values(&v);
        if v.get(&(
            "io.guestlogd.takeovers".into(),
            String::new(),
            String::new(),
        )) == Some(&1)
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no re-exec'd daemon answered");
        sleep(Duration::from_millis(50));
    };
    for i in 100..150 {
        writeln!(pipe1, "pipe one line {i}").unwrap();
    }
    wait_written(&socket, "vm1", len(&one, 0..150)).await;
    // The export follows the file, as fast as the receiver takes it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let now = loop {
        let list = varlinkctl_more(&varlinkctl, &metrics, "io.systemd.Metrics.List");
        let now = values(&list);
        let key = (
            "io.guestlogd.logJournalLinesSent".into(),
            "vm1".into(),
            String::new(),
        );
        if now.get(&key) == Some(&150) || Instant::now() > deadline {
            break now;
        }
        sleep(Duration::from_millis(20));
    };
    assert_agree(&list_logs(&socket).await, &now);
    for (key, value) in &before {
        if families[&key.0] == "counter" {
            let later = now.get(key).copied().unwrap_or(0);
            assert!(later >= *value, "{key:?} went back from {value} to {later}");
        }
    }
    assert!(
        after.len() >= before.len() - 2,
        "the same metrics after the re-exec"
    );
    let sent = now[&(
        "io.guestlogd.logJournalLinesSent".into(),
        "vm1".into(),
        String::new(),
    )];
    let suppressed = now[&(
        "io.guestlogd.logJournalLinesSuppressed".into(),
        "vm1".into(),
        String::new(),
    )];
    assert_eq!(suppressed, 0, "within the default budget");
    assert_eq!(sent, 150);
    // Each line once, in order, across the re-exec.
    let messages: Vec<String> = journal
        .lock()
        .unwrap()
        .iter()
        .filter_map(|d| guestlogd::logs::journal::native::decode(d))
        .filter_map(|f| f.into_iter().find(|(k, _)| k == "MESSAGE"))
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    let want: Vec<String> = (0..150).map(|i| format!("pipe one line {i}")).collect();
    assert_eq!(messages, want);
    d.assert_alive();
}

/// Runs the test venv's Python on `script` with `input` on stdin.
fn python(script: &str, input: &[u8]) -> String {
    let py = tool("python").unwrap();
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn prometheus_client_parses_and_node_exporter_serves_the_textfile() {
    if let Err(why) = tool("python") {
        return println!("SKIPPED: {why}");
    }
    if std::fs::read_to_string(
        Path::new(TEST_CACHE)
            .join("venv/lib/python3.11/site-packages/prometheus_client/__init__.py"),
    )
    .is_err()
        && python("import prometheus_client", b"").is_empty()
    {
        return println!("SKIPPED: no prometheus_client in the test venv (run tests/env/fleet.sh)");
    }
    let aux = tempfile::tempdir().unwrap();
    let (d, metrics, _journal) = start(aux.path());
    let mut conn = zlink::tokio::unix::connect(&d.socket()).await.unwrap();
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "vm1", "message": "hello"}),
    )
    .await
    .unwrap();
    call(
        &mut conn,
        "AppendLog",
        json!({"name": "a\"b", "message": "x"}),
    )
    .await
    .err();
    call(&mut conn, "CreateConsole", json!({"name": "vm1-serial0"}))
        .await
        .unwrap();

    let ctl = env!("CARGO_BIN_EXE_guestlogctl");
    let out = Command::new(ctl)
        .args(["metrics", "--socket"])
        .arg(&metrics)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = python(
        r#"import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        print(f.type, s.name, sorted(s.labels.items()), int(s.value))
"#,
        &out.stdout,
    );
    assert!(
        parsed.contains("counter guestlogd_log_bytes_written_total [('log', 'vm1')] 6"),
        "{parsed}"
    );
    assert!(
        parsed.contains("gauge guestlogd_console_guest_connected [('console', 'vm1-serial0')] 0"),
        "{parsed}"
    );
    assert!(parsed.contains("counter guestlogd_front_connections_closed_total [('front', 'varlink'), ('reason', 'idle')]"), "{parsed}");
    assert!(
        parsed.contains("gauge guestlogd_logs_remembered [] 2"),
        "{parsed}"
    );

    let exporter = Path::new(TEST_CACHE).join("node-exporter/usr/bin/prometheus-node-exporter");
    if !exporter.exists() {
        let why = std::fs::read_to_string(Path::new(TEST_CACHE).join("node-exporter.unavailable"))
            .unwrap_or_else(|_| "run tests/env/fleet.sh".into());
        return println!("SKIPPED: node-exporter unavailable: {}", why.trim());
    }
    let textfile = aux.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    let status = Command::new(ctl)
        .args(["metrics", "--socket"])
        .arg(&metrics)
        .arg("--textfile")
        .arg(&textfile)
        .status()
        .unwrap();
    assert!(status.success());
    let names: Vec<_> = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["guestlogd.prom"], "no temporary file is left");
    // A free port on loopback, then node_exporter on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node = Command::new(&exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let scraped = loop {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        sleep(Duration::from_millis(50));
    };
    let _ = node.kill();
    let _ = node.wait();
    assert!(
        scraped.contains("guestlogd_log_bytes_written_total{log=\"vm1\"} 6"),
        "{scraped}"
    );
    assert!(
        scraped.contains("# TYPE guestlogd_console_clients gauge"),
        "{scraped}"
    );
    assert!(
        scraped.contains("node_textfile_scrape_error 0"),
        "{scraped}"
    );
}
