//! Interoperability: the real daemon driven by other varlink
//! implementations, systemd's `varlinkctl` and the Python `asyncvarlink`
//! and `varlink` packages (see tests/env/setup.sh). A test whose tool is
//! missing prints `SKIPPED: <reason>` and returns.

mod common;

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{Daemon, tool};
use serde_json::{Value, json};

const IFACE: &str = "io.guestlogd.Manager";
/// Longest any one external command may run.
const TIMEOUT: Duration = Duration::from_secs(25);

/// The tool's path, or prints why the test is skipped and returns.
macro_rules! tool_or_skip {
    ($name:expr) => {
        match tool($name) {
            Ok(path) => path,
            Err(reason) => {
                eprintln!("SKIPPED: {reason}");
                return;
            }
        }
    };
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs `cmd` to completion, killing it after `TIMEOUT`.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Read both pipes on threads, so a chatty child cannot block on them.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} ran longer than {TIMEOUT:?}\nstderr: {}",
                String::from_utf8_lossy(&err.join().unwrap())
            );
        }
        sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn describe(o: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `varlinkctl call ADDR IFACE.METHOD PARAMS` that must succeed; its reply.
fn ctl_call(ctl: &Path, d: &Daemon, method: &str, params: &Value) -> Value {
    let o = run(Command::new(ctl)
        .arg("call")
        .arg(d.address())
        .arg(format!("{IFACE}.{method}"))
        .arg(params.to_string()));
    assert!(
        o.status.success(),
        "{method} {params} failed:\n{}",
        describe(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{method} reply is not JSON ({e}):\n{}", describe(&o)))
}

/// `varlinkctl call` that must fail with `error`; its error parameters.
fn ctl_call_error(ctl: &Path, d: &Daemon, method: &str, params: &str, error: &str) -> Value {
    let o = run(Command::new(ctl)
        .arg("call")
        .arg(d.address())
        .arg(method)
        .arg(params));
    assert!(
        !o.status.success(),
        "{method} {params} succeeded:\n{}",
        describe(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    // varlinkctl names errors it knows no errno for, and translates the
    // org.varlink.service ones into an errno's text.
    if !error.starts_with("org.varlink.service.") {
        assert!(
            stderr.contains(error),
            "{method} {params}: stderr does not name {error}:\n{}",
            describe(&o)
        );
    }
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{method} {params}: error parameters are not JSON ({e}):\n{}",
            describe(&o)
        )
    })
}

fn ctl_log_info(ctl: &Path, d: &Daemon, name: &str) -> Option<Value> {
    let reply = ctl_call(ctl, d, "ListLogs", &json!({}));
    let logs = reply["logs"].as_array().expect("logs is an array");
    logs.iter().find(|l| l["name"] == name).cloned()
}

/// Polls until `check` holds, for up to 10 s; panics with `what` if not.
fn wait_until(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => sleep(Duration::from_millis(20)),
        }
    }
}

/// Runs a script from tests/interop with the venv's Python; it prints
/// `FAIL: ...` for each failed check and exits non-zero if there was one.
fn run_script(python: &Path, script: &str, target: &str, scenario: &str, d: &mut Daemon) {
    let o = run(Command::new(python)
        .arg(repo_path("tests/interop").join(script))
        .arg(target)
        .arg(scenario));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains(&format!("ok {scenario}")),
        "{script} {scenario} failed:\n{}\ndaemon stderr (tail):\n{}",
        describe(&o),
        tail(&d.stderr(), 40)
    );
    d.assert_alive();
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- varlinkctl

#[test]
fn varlinkctl_introspect_names_every_method() {
    let ctl = tool_or_skip!("varlinkctl");
    let mut d = Daemon::start("");
    let o = run(Command::new(&ctl)
        .arg("introspect")
        .arg(d.address())
        .arg(IFACE));
    assert!(o.status.success(), "introspect failed:\n{}", describe(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("interface {IFACE}")),
        "introspect output lacks the interface line:\n{text}"
    );
    for method in ["OpenPipe", "Rotate", "ListLogs", "ReadLog", "AppendLog"] {
        assert!(
            text.contains(&format!("method {method}(")),
            "introspect output lacks method {method}:\n{text}"
        );
    }
    for error in [
        "NoSuchLog",
        "InvalidName",
        "InvalidParameter",
        "PermissionDenied",
        "LimitReached",
        "IoError",
    ] {
        assert!(
            text.contains(&format!("error {error}")),
            "introspect output lacks error {error}:\n{text}"
        );
    }

    // An interface the daemon does not have is refused.
    let o = run(Command::new(&ctl)
        .arg("introspect")
        .arg(d.address())
        .arg("io.example.Nope"));
    assert!(
        !o.status.success(),
        "introspect of an unknown interface succeeded:\n{}",
        describe(&o)
    );
    d.assert_alive();
}

#[test]
fn varlinkctl_validates_the_interface_file() {
    let ctl = tool_or_skip!("varlinkctl");
    let o = run(Command::new(&ctl)
        .arg("validate-idl")
        .arg(repo_path("interfaces/io.guestlogd.Manager.varlink")));
    assert!(o.status.success(), "validate-idl failed:\n{}", describe(&o));
}

#[test]
fn varlinkctl_list_logs_and_oneway_append() {
    let ctl = tool_or_skip!("varlinkctl");
    let mut d = Daemon::start("");
    let reply = ctl_call(&ctl, &d, "ListLogs", &json!({}));
    assert_eq!(reply, json!({ "logs": [], "consoles": [] }));

    // A oneway call gets no reply, but is carried out.
    let o = run(Command::new(&ctl)
        .arg("call")
        .arg("--oneway")
        .arg(d.address())
        .arg(format!("{IFACE}.AppendLog"))
        .arg(json!({"name": "vm1", "message": "one way"}).to_string()));
    assert!(
        o.status.success(),
        "oneway AppendLog failed:\n{}",
        describe(&o)
    );
    assert!(
        o.stdout.is_empty(),
        "oneway call printed a reply:\n{}",
        describe(&o)
    );
    let path = d.log_path("vm1");
    wait_until("the oneway AppendLog to land", || {
        let got = std::fs::read(&path).map_err(|e| e.to_string())?;
        (got == b"one way\n")
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });

    let reply = ctl_call(&ctl, &d, "ListLogs", &json!({}));
    let logs = reply["logs"].as_array().expect("logs is an array");
    assert_eq!(logs.len(), 1, "{reply}");
    let l = &logs[0];
    assert_eq!(l["name"], "vm1");
    assert_eq!(l["path"], path.display().to_string());
    assert_eq!(l["size"], 8);
    assert_eq!(l["bytesWritten"], 8);
    assert_eq!(l["pipes"], 0);
    assert_eq!(l["backups"], 0);
    d.assert_alive();
}

#[test]
fn varlinkctl_exec_writes_through_the_pipe() {
    let ctl = tool_or_skip!("varlinkctl");
    let mut d = Daemon::start("");
    // The child gets the reply's FDs from fd 3 and the reply on stdin: it
    // copies the reply to stdout and writes NULs and non-UTF-8 into the pipe.
    let script = r#"cat; echo; echo "LISTEN_FDS=$LISTEN_FDS"; printf 'hello\000\377\376 world\n' >&3 && printf 'tail\000' >&3"#;
    let o = run(Command::new(&ctl)
        .arg("call")
        .arg("--exec")
        .arg(d.address())
        .arg(format!("{IFACE}.OpenPipe"))
        .arg(json!({"name": "vm1"}).to_string())
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(script));
    assert!(o.status.success(), "call --exec failed:\n{}", describe(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let mut lines = stdout.lines().filter(|l| !l.is_empty());
    let reply: Value = serde_json::from_str(lines.next().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "the child's stdin is not the reply ({e}):\n{}",
            describe(&o)
        )
    });
    assert_eq!(reply["fileDescriptor"], 0, "{reply}");
    assert_eq!(
        reply["path"],
        d.log_path("vm1").display().to_string(),
        "{reply}"
    );
    assert_eq!(reply["position"]["offset"], 0, "{reply}");
    assert!(reply["position"]["inode"].as_u64().is_some(), "{reply}");
    assert_eq!(lines.next(), Some("LISTEN_FDS=1"), "{}", describe(&o));

    let expected: &[u8] = b"hello\0\xff\xfe world\ntail\0";
    let path = d.log_path("vm1");
    wait_until("the pipe's bytes in vm1.log", || {
        let got = std::fs::read(&path).map_err(|e| e.to_string())?;
        (got == expected)
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    wait_until("ListLogs to count the bytes and close the pipe", || {
        let l = ctl_log_info(&ctl, &d, "vm1").ok_or("no vm1")?;
        (l["bytesWritten"] == expected.len() && l["size"] == expected.len() && l["pipes"] == 0)
            .then_some(())
            .ok_or_else(|| l.to_string())
    });
    // The inode in the reply is the log file's.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        reply["position"]["inode"].as_u64(),
        Some(std::fs::metadata(&path).unwrap().ino())
    );

    // A second pipe appends.
    let o = run(Command::new(&ctl)
        .arg("call")
        .arg("--exec")
        .arg(d.address())
        .arg(format!("{IFACE}.OpenPipe"))
        .arg(json!({"name": "vm1", "truncate": false}).to_string())
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(r"printf 'more\n' >&3"));
    assert!(
        o.status.success(),
        "second call --exec failed:\n{}",
        describe(&o)
    );
    let expected = [expected, b"more\n"].concat();
    wait_until("the second pipe's bytes", || {
        let got = std::fs::read(&path).map_err(|e| e.to_string())?;
        (got == expected)
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    d.assert_alive();
}

#[test]
fn varlinkctl_error_replies_exit_non_zero() {
    let ctl = tool_or_skip!("varlinkctl");
    let mut d = Daemon::start("");
    let p = ctl_call_error(
        &ctl,
        &d,
        &format!("{IFACE}.Rotate"),
        r#"{"name":"nope"}"#,
        &format!("{IFACE}.NoSuchLog"),
    );
    assert_eq!(p, json!({"name": "nope"}));

    let p = ctl_call_error(
        &ctl,
        &d,
        &format!("{IFACE}.Rotate"),
        r#"{"name":"../x"}"#,
        &format!("{IFACE}.InvalidName"),
    );
    assert_eq!(p["name"], "../x", "{p}");
    assert!(p["reason"].as_str().is_some_and(|r| !r.is_empty()), "{p}");

    let p = ctl_call_error(
        &ctl,
        &d,
        &format!("{IFACE}.ReadLog"),
        r#"{"name":"vm1","maxBytes":65537}"#,
        &format!("{IFACE}.InvalidParameter"),
    );
    assert_eq!(p["parameter"], "maxBytes", "{p}");

    let p = ctl_call_error(
        &ctl,
        &d,
        &format!("{IFACE}.Nope"),
        "{}",
        "org.varlink.service.MethodNotFound",
    );
    assert_eq!(p, json!({"method": format!("{IFACE}.Nope")}));

    // --graceful turns the named error into success.
    let o = run(Command::new(&ctl)
        .arg("call")
        .arg(format!("--graceful={IFACE}.NoSuchLog"))
        .arg(d.address())
        .arg(format!("{IFACE}.Rotate"))
        .arg(r#"{"name":"nope"}"#));
    assert!(o.status.success(), "--graceful failed:\n{}", describe(&o));

    // None of that created a log.
    assert_eq!(
        ctl_call(&ctl, &d, "ListLogs", &json!({})),
        json!({"logs": [], "consoles": []})
    );
    d.assert_alive();
}

// -------------------------------------------------------------- asyncvarlink

fn asyncvarlink(scenario: &str) {
    let python = tool_or_skip!("python");
    let mut d = Daemon::start("");
    let socket = d.socket().display().to_string();
    run_script(&python, "asyncvarlink_client.py", &socket, scenario, &mut d);
}

/// ~1 MiB of random bytes with NULs and invalid UTF-8 through a received
/// pipe FD, read back with ReadLog in 64 KiB steps, byte for byte.
#[test]
fn asyncvarlink_pipe_round_trip() {
    asyncvarlink("pipe");
}

/// AppendLog, then ReadLog with text=true (and U+FFFD for invalid UTF-8).
#[test]
fn asyncvarlink_append_and_read_text() {
    asyncvarlink("append");
}

/// NoSuchLog, InvalidParameter (wrong type, missing, unknown, out of
/// range), InvalidName, MethodNotFound, InterfaceNotFound; the connection
/// answers ListLogs after each.
#[test]
fn asyncvarlink_error_replies_keep_the_connection() {
    asyncvarlink("errors");
}

/// A missing or unknown field inside `position` is named with a dot, as
/// the interface's InvalidParameter says.
#[test]
fn asyncvarlink_nested_parameter_errors() {
    asyncvarlink("nested");
}

// -------------------------------------------------------- varlink (python)

fn python_varlink(scenario: &str) {
    let python = tool_or_skip!("python");
    let mut d = Daemon::start("");
    let address = d.address();
    run_script(&python, "varlink_client.py", &address, scenario, &mut d);
}

/// GetInfo, the interface description (parsed by the client, and equal to
/// the file), calls whose replies the client checks against it, errors.
#[test]
fn python_varlink_introspects_and_calls() {
    python_varlink("basic");
}

/// A client that cannot take FDs: OpenPipe's FD is discarded by the
/// kernel, the pipe ends, and the daemon goes on.
#[test]
fn python_varlink_open_pipe_without_fd_passing() {
    python_varlink("openpipe");
}
