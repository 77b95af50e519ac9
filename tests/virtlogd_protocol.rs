//! libvirt's log manager protocol (program 0x87539319 v1), served by the
//! real daemon on `[libvirt] socket`, checked by the independent Python
//! client (tests/virtlogd/client.py) through tests/virtlogd/protocol.py,
//! which runs numbered checks and stops at the first failure.
//!
//! The libvirt socket and root live in a directory of their own, made
//! before the daemon so that the config can name them.
//!
//! virtlogd.conf (`--virtlogd-conf`): its max_size and max_backups give
//! libvirt's logs their policy (the same rotation checks), guestlogd.conf's
//! [libvirt] keys win over them, max_clients bounds libvirt's connections,
//! ignored keys are listed once, and a malformed file stops the start
//! naming its line, before anything is made.

mod common;

use std::{
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use common::Daemon;

/// The daemon, and the directory holding its libvirt socket and root.
struct Front {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

impl Front {
    fn start(policy: &str) -> Self {
        Self::start_with(policy, None)
    }

    /// With `virtlogd` as the daemon's virtlogd.conf.
    fn start_with(policy: &str, virtlogd: Option<&str>) -> Self {
        Self::start_in(policy, virtlogd, None)
    }

    /// A second daemon whose libvirt root is `other`'s: two hosts that
    /// share a log directory.
    fn start_sharing(policy: &str, other: &Front) -> Self {
        Self::start_in(policy, None, Some(other.root()))
    }

    fn start_in(policy: &str, virtlogd: Option<&str>, root: Option<PathBuf>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("vlproto")
            .tempdir()
            .unwrap();
        // The non-root check must reach the socket in it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(dir.path().join("logs/qemu")).unwrap();
        let f = |p: PathBuf| toml_string(&p);
        let config = format!(
            "[libvirt]\nsocket = {}\nroots = [{}]\n{policy}",
            f(dir.path().join("virtlogd-sock")),
            f(root.unwrap_or_else(|| dir.path().join("logs"))),
        );
        let conf = dir.path().join("virtlogd.conf");
        let daemon = Daemon::start_args(&config, |_| match virtlogd {
            Some(text) => {
                std::fs::write(&conf, text).unwrap();
                vec!["--virtlogd-conf".into(), conf.display().to_string()]
            }
            None => vec![],
        });
        let front = Self { daemon, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(front.socket()).is_err() {
            assert!(
                Instant::now() < deadline,
                "the libvirt socket never listened:\n{}",
                front.daemon.stderr()
            );
            sleep(Duration::from_millis(10));
        }
        // The probe above took a connection slot until the daemon saw it
        // close: a test that counts slots starts once it has.
        let status = br#"{"method":"io.guestlogd.Manager.GetStatus"}"#;
        loop {
            let reply = common::raw_call(&front.daemon.socket(), status).unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
            if v["parameters"]["libvirtConnections"]["open"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the probe never closed: {reply}");
            sleep(Duration::from_millis(10));
        }
        front
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("virtlogd-sock")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Runs protocol.py `mode` (with `wrap` before the interpreter) and
    /// panics, with its output and the daemon's log, unless it succeeds.
    fn protocol(&mut self, python: &Path, wrap: &[&str], mode: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/virtlogd/protocol.py");
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(python);
                c
            }
            None => Command::new(python),
        };
        let out = cmd
            .arg(&script)
            .arg(mode)
            .arg(self.socket())
            .arg(self.root())
            .current_dir("/")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("protocol.py {mode}:\n{text}");
        self.daemon.assert_alive();
        assert!(
            out.status.success(),
            "protocol.py {mode} failed ({}):\n{text}\n--- daemon:\n{}",
            out.status,
            self.daemon.stderr()
        );
        assert!(text.contains("OK: "), "{text}");
        text
    }
}

fn toml_string(p: &Path) -> String {
    format!("{:?}", p.to_str().unwrap())
}

/// A Python 3 that other uids can run too, or why the tests skip.
fn python() -> Result<PathBuf, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("not root".into());
    }
    let system = PathBuf::from("/usr/bin/python3");
    if system.exists() {
        return Ok(system);
    }
    common::tool("python").map_err(|why| format!("no python: {why}"))
}

#[tokio::test]
async fn procedures_flags_errors_and_framing() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    front.protocol(&python, &[], "main");

    // The path-addressed log is listed under its absolute path.
    let vm1 = front.root().join("qemu/vm1.log");
    let mut conn = zlink::tokio::unix::connect(front.daemon.socket())
        .await
        .unwrap();
    let list = common::call(&mut conn, "ListLogs", serde_json::json!({}))
        .await
        .unwrap();
    let logs = list["logs"].as_array().unwrap();
    let entry = logs
        .iter()
        .find(|l| l["name"] == vm1.to_str().unwrap())
        .unwrap_or_else(|| panic!("{} not in ListLogs: {list:#}", vm1.display()));
    assert_eq!(entry["path"], vm1.to_str().unwrap(), "{entry:#}");
    assert_eq!(
        entry["size"],
        std::fs::metadata(&vm1).unwrap().len(),
        "{entry:#}"
    );
    assert_eq!(entry["pipes"], 0, "{entry:#}");
    // libvirt's defaults, as no [libvirt] policy was set.
    assert_eq!(entry["maxSize"], 2 * 1024 * 1024, "{entry:#}");
    assert_eq!(entry["maxBackups"], 3, "{entry:#}");
    // Nothing the refused calls named was listed either.
    for l in logs {
        let name = l["name"].as_str().unwrap();
        assert!(
            name.starts_with(front.root().join("qemu/").to_str().unwrap()),
            "{name} in ListLogs: {list:#}"
        );
        assert!(!name.contains("link"), "{name} in ListLogs");
    }
}

#[test]
fn rotation_at_the_configured_cap() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("max-size = 4096\nmax-backups = 2\n");
    front.protocol(&python, &[], "rotation");
}

#[test]
fn a_non_root_peer_is_dropped() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    // Reachable by anyone, so that only the uid can refuse.
    std::fs::set_permissions(front.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    front.protocol(
        &python,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        "nonroot",
    );
    let nobody = front.root().join("qemu/nobody.log");
    assert!(!nobody.exists(), "{} was created", nobody.display());
    assert_eq!(
        std::fs::read_dir(front.root().join("qemu"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        front.daemon.stderr().contains("only uid 0 may connect"),
        "{}",
        front.daemon.stderr()
    );
}

/// The EBUSY guard holds under concurrency: of several connections asking
/// for the same path at once, one gets a pipe. (virtlogd, single-threaded,
/// checks and opens in one step.)
#[test]
fn concurrent_opens_of_one_path_hand_out_one_pipe() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    front.protocol(&python, &[], "exclusive");
}

/// `virsh destroy --remove-logs` unlinks NAME.log and NAME.log.N itself;
/// the next OpenLogFile or AppendLogFile must make the file again.
#[test]
fn a_log_unlinked_by_libvirt_is_made_again() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    front.protocol(&python, &[], "unlinked");
}

/// A log directory removed and made again serves new logs.
#[test]
fn a_log_directory_made_again_is_used() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    front.protocol(&python, &[], "recreated");
}

/// virtlogd.conf's max_size and max_backups are what the rotation checks
/// find; the keys guestlogd does not apply are listed once.
#[test]
fn virtlogd_conf_gives_libvirts_logs_their_policy() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let conf = "# as an operator tunes it\nlog_level = 3\nmax_size = 4096\nmax_backups = 2\n\
                admin_max_clients = 5\nmax_age_days = 0\n";
    let mut front = Front::start_with("", Some(conf));
    front.protocol(&python, &[], "rotation");
    let log = front.daemon.stderr();
    let once = |what: &str| assert_eq!(log.matches(what).count(), 1, "{what:?} in:\n{log}");
    once("applied to libvirt's logs and connections: max_size = 4096, max_backups = 2");
    once("ignored (virtlogd's own settings, not guestlogd's): log_level, admin_max_clients");
}

/// Keys set in guestlogd's own [libvirt] win over virtlogd.conf's.
#[test]
fn guestlogd_conf_wins_over_virtlogd_conf() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let conf = "max_size = 1048576\nmax_backups = 9\n";
    let mut front = Front::start_with("max-size = 4096\nmax-backups = 2\n", Some(conf));
    front.protocol(&python, &[], "rotation");
    let log = front.daemon.stderr();
    assert!(
        log.contains("guestlogd's own configuration wins for max_size (libvirt.max-size), max_backups (libvirt.max-backups)"),
        "{log}"
    );
}

/// One call on a libvirt connection, answered or not: whether a reply came.
fn answered(s: &mut UnixStream) -> bool {
    use guestlogd::fronts::virtlogd::{Call, GetLogFilePosition};
    use std::io::{Read, Write};
    let call = Call::GetLogFilePosition(GetLogFilePosition {
        path: b"/nowhere/x.log".to_vec(),
        flags: 0,
    });
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(&call.encode(1).unwrap()).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).is_ok()
}

/// max_clients bounds the connections libvirt holds: one more is closed,
/// and a slot that frees serves again.
#[test]
fn virtlogd_conf_max_clients_bounds_libvirts_connections() {
    if !nix::unistd::Uid::effective().is_root() {
        return println!("SKIPPED: not root (the libvirt front serves uid 0 only)");
    }
    let front = Front::start_with("", Some("max_clients = 2\n"));
    // The probes that waited for the socket may hold a slot until the
    // daemon sees them close: a refused connection is tried again.
    let served = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = UnixStream::connect(front.socket()).unwrap();
            if answered(&mut s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "never served:\n{}",
                front.daemon.stderr()
            );
            sleep(Duration::from_millis(20));
        }
    };
    let a = served();
    let mut b = served();
    let mut c = UnixStream::connect(front.socket()).unwrap();
    assert!(!answered(&mut c), "a third connection was served");
    drop(a);
    // The slot frees when the daemon sees the close: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = UnixStream::connect(front.socket()).unwrap();
        if answered(&mut d) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never served");
        sleep(Duration::from_millis(20));
    }
    assert!(answered(&mut b), "the second connection was dropped");
}

/// A malformed virtlogd.conf stops the daemon at start with its line, and
/// nothing is made: no runtime directory, no socket.
#[test]
fn a_malformed_virtlogd_conf_stops_the_start_naming_its_line() {
    let dir = tempfile::Builder::new().prefix("vlconf").tempdir().unwrap();
    let conf = dir.path().join("virtlogd.conf");
    std::fs::write(
        &conf,
        "# virtlogd\nmax_size = 65536\nmax_backups = \nlog_level = 3\n",
    )
    .unwrap();
    let config = dir.path().join("guestlogd.conf");
    let sock = dir.path().join("virtlogd-sock");
    std::fs::write(
        &config,
        format!("[libvirt]\nsocket = {}\n", toml_string(&sock)),
    )
    .unwrap();
    let run = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_guestlogd"))
        .arg("--runtime-dir")
        .arg(&run)
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .arg("--config")
        .arg(&config)
        .arg("--virtlogd-conf")
        .arg(&conf)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "bad virtlogd configuration: {}:3: expecting a value",
            conf.display()
        )),
        "{stderr}"
    );
    assert!(
        !run.exists() && !sock.exists(),
        "the refused start made something"
    );
}

/// Runs tests/virtlogd/migration.py with `args`; panics, with its output
/// and the daemons' logs, unless it succeeds.
fn migration(python: &Path, args: &[&Path], daemons: &mut [&mut Front]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/virtlogd/migration.py");
    let out = Command::new(python)
        .arg(&script)
        .args(args)
        .current_dir("/")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("migration.py:\n{text}");
    let mut logs = String::new();
    for d in daemons.iter_mut() {
        d.daemon.assert_alive();
        logs.push_str(&d.daemon.stderr());
    }
    assert!(
        out.status.success() && text.contains("OK: "),
        "migration.py failed ({}):\n{text}\n--- daemons:\n{logs}",
        out.status
    );
}

/// Python and varlinkctl, or why the migration tests skip.
fn python_and_varlinkctl() -> Result<(PathBuf, PathBuf), String> {
    Ok((python()?, common::tool("varlinkctl")?))
}

/// What libvirt and guestlogd's hook do to a host's logs as a domain
/// leaves by live migration, comes back (across a re-exec between its
/// arrival and its first byte), fails to leave and starts afresh:
/// `migrated out` where each log ends and followers told; TRUNCATE while
/// arriving appends and removes nothing; `migrated in` before the first
/// byte; a failed migration and a fresh start as before.
#[test]
fn a_migrating_domain_keeps_its_logs_and_they_say_where_it_went() {
    let (python, varlinkctl) = match python_and_varlinkctl() {
        Ok(t) => t,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut front = Front::start("");
    let (socket, varlink, root) = (front.socket(), front.daemon.socket(), front.root());
    let pid = PathBuf::from(front.daemon.pid().to_string());
    migration(
        &python,
        &[
            Path::new("single"),
            &varlinkctl,
            &socket,
            &varlink,
            &root,
            &pid,
        ],
        &mut [&mut front],
    );
}

/// Two hosts writing one log directory: the destination appends after the
/// source's last byte, which the source writes after the destination
/// opened the file (and past a rotation), and neither loses the other's
/// output; the destination then rotates at the true size.
#[test]
fn two_hosts_sharing_a_log_directory_keep_one_file_through_a_migration() {
    let (python, varlinkctl) = match python_and_varlinkctl() {
        Ok(t) => t,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let policy = "max-size = 4096\nmax-backups = 9\n";
    let mut a = Front::start(policy);
    let mut b = Front::start_sharing(policy, &a);
    let (sa, va, root) = (a.socket(), a.daemon.socket(), a.root());
    let (sb, vb) = (b.socket(), b.daemon.socket());
    migration(
        &python,
        &[Path::new("shared"), &varlinkctl, &sa, &va, &sb, &vb, &root],
        &mut [&mut a, &mut b],
    );
}

/// The calls of the switch between virtlogd and guestlogd refuse where
/// they do not apply and change nothing: a hand-back to virtlogd from a
/// guestlogd that is not virtlogd.service's process (forced or not: it has
/// nothing of virtlogd's to give back), and UseFdStore without a service
/// manager. The daemon goes on serving libvirt's socket.
#[tokio::test]
async fn the_switch_calls_refuse_outside_virtlogd_service() {
    use guestlogd::api::ManagerError;
    let front = Front::start("");
    let mut conn = zlink::tokio::unix::connect(front.daemon.socket())
        .await
        .unwrap();
    for force in [false, true] {
        let r = common::call(
            &mut conn,
            "HandBackToVirtlogd",
            serde_json::json!({ "force": force }),
        )
        .await;
        match r {
            Err(ManagerError::HandBackRefused { reason, closes }) => {
                assert!(reason.contains("virtlogd.service"), "{reason}");
                assert!(closes.is_empty(), "{closes:?}");
            }
            other => panic!("a hand-back outside virtlogd.service: {other:?}"),
        }
    }
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        let r = common::call(&mut conn, "UseFdStore", serde_json::json!({})).await;
        assert!(
            matches!(&r, Err(ManagerError::IoError { message }) if message.contains("NOTIFY_SOCKET")),
            "{r:?}"
        );
    } else {
        println!("SKIPPED: UseFdStore's refusal: the tests run under a service manager");
    }
    let status = common::call(&mut conn, "GetStatus", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(status["fdStore"], false);
    assert!(status["virtlogd"].is_null(), "{status}");
    assert!(UnixStream::connect(front.socket()).is_ok());
}
