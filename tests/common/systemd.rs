//! systemd 257 booted as PID 1 of a private namespace (tests/systemd/boot.sh),
//! and guestlogd's status as the host sees it through the namespace.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use guestlogd::api::Manager as _;

pub const CACHE: &str = "/var/cache/guestlogd-test";
pub const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd");
pub const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
pub const SERVICE: &str = "guestlogd.service";

/// The test's paths: the binary and the logs live in HOSTDIR, at /host
/// inside; restarts are never rate-limited.
pub const DROP_IN: &str = "\
[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=
ExecStart=/host/guestlogd --runtime-dir /run/guestlogd --log-dir /host/log
ReadWritePaths=/host/log
RestartSec=100ms
";

/// Why a systemd cannot be booted here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Ok(why) = std::fs::read_to_string(Path::new(CACHE).join("systemd.unavailable")) {
        return Some(format!("systemd unavailable: {}", why.trim()));
    }
    if !Path::new(CACHE).join("trixie/.guestlogd-complete").exists() {
        return Some("systemd unavailable: run tests/env/systemd.sh".into());
    }
    None
}

/// A systemd booted by tests/systemd/boot.sh, stopped (with its journal
/// saved to HOSTDIR/systemd-journal.log) when dropped. HOSTDIR is kept if
/// the test panicked.
pub struct Systemd {
    pub pid1: u32,
    dir: Option<tempfile::TempDir>,
}

impl Systemd {
    pub fn boot(dir: tempfile::TempDir) -> Self {
        Self::boot_on(dir, &[])
    }

    /// Boots with extra environment for boot.sh (`SD_ROOT`, `SD_SETUP`
    /// for another cached root).
    pub fn boot_on(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
        let out = Command::new(format!("{HARNESS}/boot.sh"))
            .arg(dir.path())
            .env("SD_OWNER_PID", std::process::id().to_string())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "boot.sh: {}\n{stderr}", out.status);
        eprint!("{stderr}");
        let pid1 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        Self {
            pid1,
            dir: Some(dir),
        }
    }

    /// Boots a systemd with guestlogd's own units (systemd/, plus
    /// `DROP_IN`) installed and its socket listening, the service not yet
    /// started; returns it and the varlink socket as the host reaches it.
    pub fn with_guestlogd(binary: &str) -> (Self, PathBuf) {
        let dir = tempfile::Builder::new().prefix("gld-sd").tempdir().unwrap();
        std::fs::copy(binary, dir.path().join("guestlogd")).unwrap();
        std::fs::create_dir(dir.path().join("log")).unwrap();
        let sd = Self::boot(dir);
        let etc = sd.inside("/etc/systemd/system");
        for unit in ["guestlogd.socket", "guestlogd.service"] {
            std::fs::copy(Path::new(UNITS).join(unit), etc.join(unit)).unwrap();
        }
        std::fs::create_dir(etc.join("guestlogd.service.d")).unwrap();
        std::fs::write(etc.join("guestlogd.service.d/test.conf"), DROP_IN).unwrap();
        sd.ctl(&["daemon-reload"]);
        sd.ctl(&["start", "guestlogd.socket"]);
        assert_eq!(sd.prop(SERVICE, "ActiveState"), "inactive");
        let socket = sd.inside("/run/guestlogd/io.guestlogd.Manager");
        (sd, socket)
    }

    pub fn host(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// A path inside the container, as the host reaches it.
    pub fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1)).join(path.trim_start_matches('/'))
    }

    pub fn script(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(format!("{HARNESS}/{script}"))
            .arg(self.pid1.to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script} {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// systemctl inside; panics unless it succeeds.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.script("ctl.sh", args)
    }

    /// A command inside the container's namespaces.
    pub fn run(&self, args: &[&str]) -> String {
        self.script("run.sh", args)
    }

    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.ctl(&["show", "-p", name, "--value", unit])
            .trim()
            .to_owned()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = Command::new(format!("{HARNESS}/stop.sh"))
            .arg(self.pid1.to_string())
            .status();
        if let Some(dir) = self.dir.take()
            && thread::panicking()
        {
            let kept = dir.keep();
            for big in ["guestlogd", "guestlogd.new"] {
                let _ = std::fs::remove_file(kept.join(big));
            }
            eprintln!(
                "kept {} (logs in log/, the journal in systemd-journal.log)",
                kept.display()
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub pid: i64,
    pub adoptions: i64,
    pub stored_fds: i64,
    pub fd_store: bool,
}

pub async fn try_status(socket: &Path) -> Result<Status, String> {
    let call = async {
        let mut conn = zlink::tokio::unix::connect(socket)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let s = conn
            .get_status()
            .await
            .map_err(|e| format!("call: {e}"))?
            .map_err(|e| format!("error: {e:?}"))?;
        Ok(Status {
            pid: s.pid,
            adoptions: s.adoptions,
            stored_fds: s.stored_fds,
            fd_store: s.fd_store,
        })
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())?
}

/// Polls GetStatus until `ok` holds, for at most 30 s.
pub async fn wait_status(socket: &Path, what: &str, ok: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match try_status(socket).await {
            Ok(s) if ok(&s) => return s,
            Ok(s) => format!("{s:?}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: no new instance answered within 30 s; last GetStatus: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
