//! Switching a running host between libvirt's virtlogd and guestlogd with
//! domains running: `replace-virtlogd` (`replace`) and `restore-virtlogd`
//! (`restore`), through virtlogd's own SIGUSR1 re-exec.
//!
//! This file holds what both need: the host's facts (`Host`: which daemon
//! virtlogd.service runs, from which binary, whether a reload is under
//! way), systemctl, the files the switch installs (carried in this binary,
//! so that a host with only the binaries installed can switch), the atomic
//! swap of `/usr/sbin/virtlogd`, and guestlogd's varlink calls.
//!
//! Invariants: every check comes before the first change, and a refusal
//! says every reason at once and changes nothing; `/usr/sbin/virtlogd`
//! never goes missing (a hard link keeps the real binary, a symlink is
//! renamed over it, and the real one renamed back); files are written
//! through a new temporary file and a rename, never through a link; only
//! files this program installed (marked `MARK`) are ever removed.

mod replace;
mod restore;

use std::{
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use guestlogd::{
    api::ManagerError,
    handover::virtlogd::inherit::{DIVERTED, STATE_FILE, VIRTLOGD},
};
pub use replace::replace;
pub use restore::restore;
use serde_json::Value;

/// The unit libvirt starts its log daemon as.
pub const UNIT: &str = "virtlogd.service";
/// The first line of every file this program installs.
pub const MARK: &str = "# Installed by guestlogctl replace-virtlogd; restore-virtlogd removes it.";
/// The package that ships the drop-ins; its maintainer scripts call us.
const PACKAGE: &str = "guestlogd-virtlogd";

/// A file the switch needs: where the package puts it, where this program
/// puts it when the package did not, and its text.
pub struct Carried {
    pub packaged: &'static str,
    pub ours: &'static str,
    pub text: &'static str,
}

macro_rules! shipped {
    ($path:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path))
    };
}

/// What guestlogd in virtlogd's place needs from systemd: the drop-in that
/// makes virtlogd.service run guestlogd with an FD store, the varlink
/// socket and its drop-in (which starts virtlogd.service), and guestlogd's
/// own service, which the drop-in's `Conflicts=` names.
pub const CARRIED: &[Carried] = &[
    Carried {
        packaged: "/usr/lib/systemd/system/virtlogd.service.d/guestlogd.conf",
        ours: "/etc/systemd/system/virtlogd.service.d/guestlogd.conf",
        text: shipped!("systemd/virtlogd.service.d/guestlogd.conf"),
    },
    Carried {
        packaged: "/usr/lib/systemd/system/guestlogd.socket",
        ours: "/etc/systemd/system/guestlogd.socket",
        text: shipped!("systemd/guestlogd.socket"),
    },
    Carried {
        packaged: "/usr/lib/systemd/system/guestlogd.service",
        ours: "/etc/systemd/system/guestlogd.service",
        text: shipped!("systemd/guestlogd.service"),
    },
    Carried {
        packaged: "/usr/lib/systemd/system/guestlogd.socket.d/virtlogd.conf",
        ours: "/etc/systemd/system/guestlogd.socket.d/virtlogd.conf",
        text: shipped!("systemd/guestlogd.socket.d/virtlogd.conf"),
    },
];

/// Why a switch was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("refused, nothing was changed:\n  - {}", .0.join("\n  - "))]
    Refused(Vec<String>),
    #[error("{0}")]
    Failed(String),
    #[error("cannot run {what}")]
    Run {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs a command; its stdout, or its stderr as the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, SwitchError> {
    let shown = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| SwitchError::Run {
            what: shown(),
            source,
        })?;
    if !out.status.success() {
        return Err(SwitchError::Failed(format!(
            "{} failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn systemctl(args: &[&str]) -> Result<String, SwitchError> {
    run("systemctl", args)
}

/// A unit's property, "" when it cannot be read.
pub fn prop(unit: &str, name: &str) -> String {
    systemctl(&["show", "-p", name, "--value", unit])
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The unit's main process, if it runs.
pub fn main_pid(unit: &str) -> Option<u32> {
    prop(unit, "MainPID").parse().ok().filter(|p| *p > 0)
}

/// Which binary a process runs, as the kernel names it.
pub fn exe(pid: u32) -> Option<PathBuf> {
    let link = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let shown = link.to_string_lossy();
    Some(shown.strip_suffix(" (deleted)").unwrap_or(&shown).into())
}

/// The process's argv[0].
pub fn argv0(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}

/// Whether two paths are the same file (a symlink followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Which daemon a process is: guestlogd (the binary at `guestlogd`), or
/// anything else.
pub fn runs_guestlogd(pid: u32, guestlogd: &Path) -> bool {
    let running = Path::new("/proc").join(pid.to_string()).join("exe");
    same_file(&running, guestlogd)
        || exe(pid).is_some_and(|e| e.file_name().is_some_and(|n| n == "guestlogd"))
}

/// What the switch looks at before it changes anything.
#[derive(Debug)]
pub struct Host {
    /// systemd is the service manager.
    pub systemd: bool,
    /// virtlogd.service's main process, and the binary it runs.
    pub pid: Option<u32>,
    pub exe: Option<PathBuf>,
    pub active: String,
    /// The package's drop-in is installed.
    pub packaged: bool,
    /// Called from the package's own maintainer scripts.
    pub from_package: bool,
}

impl Host {
    pub fn look() -> Self {
        let systemd = Path::new("/run/systemd/system").is_dir();
        let pid = if systemd { main_pid(UNIT) } else { None };
        Self {
            systemd,
            pid,
            exe: pid.and_then(exe),
            active: if systemd {
                prop(UNIT, "ActiveState")
            } else {
                String::new()
            },
            packaged: Path::new(CARRIED[0].packaged).exists(),
            from_package: std::env::var("DPKG_MAINTSCRIPT_PACKAGE").is_ok_and(|p| p == PACKAGE),
        }
    }

    /// Reasons a reload or a hand-back is under way now.
    pub fn busy(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.active == "reloading" || self.active == "activating" {
            why.push(format!(
                "{UNIT} is {}: a reload or start is under way",
                self.active
            ));
        }
        if !prop(UNIT, "Job").is_empty() && prop(UNIT, "Job") != "0" {
            why.push(format!("{UNIT} has a job queued (systemctl list-jobs)"));
        }
        if Path::new(STATE_FILE).exists() {
            why.push(format!(
                "{STATE_FILE} exists: a re-exec of virtlogd is under way or failed"
            ));
        }
        why
    }
}

/// Installs every carried file the package did not, marked as ours, with
/// guestlogd's path `guestlogd` in it; true if any was written.
pub fn install_carried(guestlogd: &Path) -> Result<bool, SwitchError> {
    let mut wrote = false;
    for c in CARRIED {
        if Path::new(c.packaged).exists() || Path::new(c.ours).exists() {
            continue;
        }
        let text = c
            .text
            .replace("/usr/sbin/guestlogd", &guestlogd.display().to_string());
        write_file(Path::new(c.ours), &format!("{MARK}\n{text}"))?;
        wrote = true;
    }
    Ok(wrote)
}

/// Removes every carried file this program installed (marked); true if
/// any was removed.
pub fn remove_carried() -> Result<bool, SwitchError> {
    let mut removed = false;
    for c in CARRIED {
        let path = Path::new(c.ours);
        let ours = std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARK));
        if ours {
            std::fs::remove_file(path).map_err(|source| SwitchError::File {
                what: format!("cannot remove {}", path.display()),
                source,
            })?;
            let drop_in_dir = |d: &&Path| d.to_string_lossy().ends_with(".d");
            if let Some(dir) = path.parent().filter(drop_in_dir) {
                let _ = std::fs::remove_dir(dir);
            }
            removed = true;
        }
    }
    Ok(removed)
}

/// Writes `text` at `path` through a new file and a rename.
fn write_file(path: &Path, text: &str) -> Result<(), SwitchError> {
    use std::io::Write;
    let failed = |source| SwitchError::File {
        what: format!("cannot write {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let tmp = path.with_extension("guestlogctl-new");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(failed)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(failed)?;
    std::fs::rename(&tmp, path).map_err(failed)
}

/// The local diversion of `/usr/sbin/virtlogd`, if dpkg manages it.
fn dpkg_divert(args: &[&str]) -> Result<(), SwitchError> {
    if which("dpkg-divert").is_none() {
        return Ok(());
    }
    run("dpkg-divert", args).map(drop)
}

/// Whether a program is on $PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Where dpkg diverts `/usr/sbin/virtlogd` to now, if anywhere.
pub fn diversion() -> Option<String> {
    which("dpkg-divert")?;
    let out = run("dpkg-divert", &["--truename", VIRTLOGD]).ok()?;
    let truename = out.trim();
    (truename != VIRTLOGD).then(|| truename.to_owned())
}

/// Puts guestlogd at `/usr/sbin/virtlogd`, atomically: a dpkg diversion
/// without rename (so an upgrade of libvirt meanwhile unpacks beside it),
/// a hard link that keeps the real binary at `DIVERTED`, and a symlink to
/// guestlogd renamed over `/usr/sbin/virtlogd`. A symlink, not a bind
/// mount: the kernel then names guestlogd's own path as the running
/// binary, which guestlogd's own re-exec uses.
pub fn swap_in(guestlogd: &Path) -> Result<(), SwitchError> {
    let file = |what: &str| {
        let what = what.to_owned();
        move |source| SwitchError::File { what, source }
    };
    dpkg_divert(&[
        "--local",
        "--no-rename",
        "--divert",
        DIVERTED,
        "--add",
        VIRTLOGD,
    ])?;
    if let Some(dir) = Path::new(DIVERTED).parent() {
        std::fs::create_dir_all(dir)
            .map_err(file("cannot make the diverted binary's directory"))?;
    }
    let _ = std::fs::remove_file(DIVERTED);
    std::fs::hard_link(VIRTLOGD, DIVERTED)
        .map_err(file("cannot link virtlogd to its diverted path"))?;
    let new = Path::new(VIRTLOGD).with_extension("guestlogd-new");
    let _ = std::fs::remove_file(&new);
    std::os::unix::fs::symlink(guestlogd, &new).map_err(file("cannot link guestlogd"))?;
    std::fs::rename(&new, VIRTLOGD).map_err(file("cannot put guestlogd at /usr/sbin/virtlogd"))
}

/// Puts the real virtlogd back at `/usr/sbin/virtlogd` (renamed over the
/// symlink) and removes the diversion; nothing if it is there already.
pub fn swap_back() -> Result<(), SwitchError> {
    let diverted = Path::new(DIVERTED);
    let placed = std::fs::symlink_metadata(VIRTLOGD).is_ok_and(|m| m.file_type().is_symlink());
    if diverted.is_file() && (placed || !Path::new(VIRTLOGD).exists()) {
        std::fs::rename(diverted, VIRTLOGD).map_err(|source| SwitchError::File {
            what: format!("cannot move {DIVERTED} back to {VIRTLOGD}"),
            source,
        })?;
    }
    if diversion().is_some_and(|d| d == DIVERTED) {
        dpkg_divert(&["--local", "--no-rename", "--remove", VIRTLOGD])?;
    }
    // Its directory goes too, if nothing else is in it.
    if let Some(dir) = diverted.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Calls a method of guestlogd's varlink API; the protocol's failure as
/// the outer error, guestlogd's refusal as the inner one.
pub async fn call(
    socket: &Path,
    method: &str,
    parameters: Value,
) -> Result<Result<Value, ManagerError>, String> {
    #[derive(Debug, serde::Serialize)]
    struct Raw<'a> {
        method: String,
        parameters: &'a Value,
    }
    let mut conn = zlink::tokio::unix::connect(socket)
        .await
        .map_err(|e| format!("cannot reach guestlogd at {}: {e}", socket.display()))?;
    let call = zlink::Call::new(Raw {
        method: format!("io.guestlogd.Manager.{method}"),
        parameters: &parameters,
    });
    let (reply, _) = conn
        .call_method::<_, Value, ManagerError>(&call, vec![])
        .await
        .map_err(|e| format!("{method}: {e}"))?;
    Ok(reply.map(|r| r.into_parameters().unwrap_or_default()))
}

/// guestlogd's GetStatus, if it answers.
pub async fn status(socket: &Path) -> Option<Value> {
    // Bounded: while a process is between two images (guestlogd handing
    // back to virtlogd) or systemd holds the socket for a service that is
    // not running, a connection is accepted and never answered.
    let call = call(socket, "GetStatus", Value::Object(Default::default()));
    tokio::time::timeout(STATUS_WAIT, call)
        .await
        .ok()?
        .ok()?
        .ok()
}

/// How long one GetStatus of a switch's polls may take.
const STATUS_WAIT: Duration = Duration::from_secs(2);

/// Polls `check` every 50 ms until it gives a value, or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A duration for people: "1.234 s".
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
