//! `guestlogctl replace-virtlogd`: guestlogd takes libvirt's virtlogd's
//! place on a running host, with every domain's log, through virtlogd's own
//! SIGUSR1 re-exec.
//!
//! 1. Checks, and refuses with every reason when the switch could lose
//!    something.
//! 2. Installs what the package did not (the drop-in, the units) and
//!    reloads systemd, so virtlogd.service has an FD store from now on.
//! 3. Puts guestlogd at /usr/sbin/virtlogd atomically (`swap_in`) and runs
//!    `systemctl reload virtlogd.service`: virtlogd writes its state and
//!    executes guestlogd in its own process, which adopts everything.
//! 4. Waits until that process answers as guestlogd with what it adopted,
//!    puts the real binary back, has guestlogd push everything into the FD
//!    store (UseFdStore), checks systemd holds it all, and restarts
//!    virtlogd.service: guestlogd under its own unit settings (no longer
//!    virtlogd's sandbox), everything taken from the store.
//!
//! A step that fails puts back what it can (the binary, the diversion, the
//! files it installed) and says what happened; virtlogd, or guestlogd,
//! goes on serving whatever it holds.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use guestlogd::handover::virtlogd::inherit::{DIVERTED, VIRTLOGD};
use serde_json::Value;

use super::{
    Host, SwitchError, UNIT, argv0, call, diversion, install_carried, prop, remove_carried,
    runs_guestlogd, secs, status, swap_back, swap_in, systemctl, wait_for,
};
use crate::cli::ReplaceArgs;

pub async fn replace(runtime_dir: &Path, a: ReplaceArgs) -> Result<(), SwitchError> {
    let begin = Instant::now();
    let socket = runtime_dir.join(guestlogd::daemon::SOCKET);
    let socket = socket.as_path();
    let limit = Duration::from_secs(a.timeout);
    let host = Host::look();
    if !host.systemd {
        install_carried(&a.guestlogd)?;
        println!(
            "guestlogctl: systemd is not running: the units are installed, and guestlogd takes \
             virtlogd's place at the next boot"
        );
        return Ok(());
    }
    let Some(pid) = host.pid else {
        if install_carried(&a.guestlogd)? {
            systemctl(&["daemon-reload"])?;
        }
        println!(
            "guestlogctl: {UNIT} is not running: guestlogd takes its place when it starts \
             (libvirt's first call on virtlogd.socket starts it)"
        );
        return Ok(());
    };
    if runs_guestlogd(pid, &a.guestlogd) {
        // Already there; finish a switch that was cut short, if it was.
        if status(socket).await.is_some_and(|s| s["fdStore"] == true) {
            println!("guestlogctl: guestlogd already serves in virtlogd's place (pid {pid})");
            return Ok(());
        }
        swap_back()?;
        let adopted = adopted_paths(socket).await;
        return finish(socket, pid, adopted, limit, begin).await;
    }
    refuse_unless_safe(&host, pid, &a.guestlogd, socket).await?;

    // --- Changes from here on.
    let installed = install_carried(&a.guestlogd)?;
    systemctl(&["daemon-reload"])?;
    for unit in ["guestlogd.socket", "guestlogd.service"] {
        if prop(unit, "ActiveState") == "active" {
            systemctl(&["stop", unit])?;
        }
    }
    let undo = |why: String| -> SwitchError {
        let mut said = vec![why];
        if let Err(e) = swap_back() {
            said.push(format!("and the real virtlogd could not be put back: {e}"));
        }
        if installed && remove_carried().is_ok() {
            let _ = systemctl(&["daemon-reload"]);
        }
        SwitchError::Failed(said.join("; "))
    };
    swap_in(&a.guestlogd).map_err(|e| undo(e.to_string()))?;
    let pipes = pipes_of(pid);
    println!(
        "guestlogctl: virtlogd (pid {pid}) holds {} pipes; reloading it into guestlogd",
        pipes.len()
    );
    let reloaded = Instant::now();
    systemctl(&["reload", UNIT]).map_err(|e| undo(e.to_string()))?;
    let took = wait_for(limit, || async move {
        if main_pid_now() != Some(pid) {
            return Some(Err(format!("{UNIT} no longer runs pid {pid}")));
        }
        // Executed from the diverted path: guestlogd gave virtlogd its
        // state back, and virtlogd took it.
        if super::exe(pid).is_some_and(|e| e == Path::new(DIVERTED)) {
            return Some(Err(
                "guestlogd could not take over and gave virtlogd its state back; virtlogd \
                 goes on serving every domain (journalctl -u virtlogd.service says why)"
                    .into(),
            ));
        }
        let s = status(socket).await?;
        (s["pid"] == pid && !s["virtlogd"].is_null()).then(|| Ok(s["virtlogd"].clone()))
    })
    .await
    .unwrap_or_else(|| Err(format!("guestlogd did not answer within {}", secs(limit))))
    .map_err(undo)?;
    let serving = reloaded.elapsed();
    let adopted: Vec<String> = took["pipes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "guestlogctl: guestlogd (pid {pid}) serves in virtlogd's place {} after the reload \
         ({} after the command): it adopted {} pipes and {} connections:",
        secs(serving),
        secs(begin.elapsed()),
        adopted.len(),
        took["connections"]
    );
    for p in &adopted {
        println!("  {p}");
    }
    // Taken over: the real virtlogd goes back to its own path at once.
    swap_back()?;
    finish(socket, pid, adopted, limit, begin).await
}

/// Moves guestlogd from virtlogd's unit settings to its own: everything
/// into the FD store, checked, then a restart.
async fn finish(
    socket: &Path,
    pid: u32,
    adopted: Vec<String>,
    limit: Duration,
    begin: Instant,
) -> Result<(), SwitchError> {
    let stored = match call(socket, "UseFdStore", Value::Object(Default::default())).await {
        Ok(Ok(v)) => v["storedFds"].as_u64().unwrap_or(0),
        Ok(Err(e)) => return Err(SwitchError::Failed(format!("UseFdStore refused: {e:?}"))),
        Err(e) => return Err(SwitchError::Failed(e)),
    };
    let held = prop(UNIT, "NFileDescriptorStore")
        .parse::<u64>()
        .unwrap_or(0);
    if held < stored {
        return Err(SwitchError::Failed(format!(
            "systemd keeps {held} of guestlogd's {stored} descriptors (FileDescriptorStoreMax= \
             of {UNIT}: {}); guestlogd goes on serving in virtlogd's process, not restarted",
            prop(UNIT, "FileDescriptorStoreMax")
        )));
    }
    // The drop-in's Wants= starts guestlogd.socket with the restart (not
    // before: systemd refuses to start a socket whose service runs).
    let restarting = Instant::now();
    systemctl(&["restart", UNIT])?;
    let new = wait_for(limit, || async move {
        let now = main_pid_now().filter(|p| *p != pid)?;
        let s = status(socket).await?;
        (s["pid"] == now && s["fdStore"] == true).then_some(now)
    })
    .await
    .ok_or_else(|| {
        SwitchError::Failed(format!(
            "{UNIT} did not come back as guestlogd with its FD store within {} \
             (journalctl -u {UNIT})",
            super::secs(limit)
        ))
    })?;
    let missing = pipes_missing(socket, &adopted).await;
    if !missing.is_empty() {
        return Err(SwitchError::Failed(format!(
            "guestlogd (pid {new}) runs under its own settings, but these logs have no pipe \
             now (their domain may have stopped): {}",
            missing.join(", ")
        )));
    }
    println!(
        "guestlogctl: guestlogd (pid {new}) runs under its own unit settings, systemd's FD \
         store holding its {stored} descriptor(s), {} after the restart; every adopted pipe is \
         there; {} in all",
        secs(restarting.elapsed()),
        secs(begin.elapsed())
    );
    Ok(())
}

/// Every reason the switch could lose something now, or Ok.
async fn refuse_unless_safe(
    host: &Host,
    pid: u32,
    guestlogd: &Path,
    socket: &Path,
) -> Result<(), SwitchError> {
    let mut why = host.busy();
    if !nix::unistd::geteuid().is_root() {
        why.push("only root can switch the log daemon".into());
    }
    let exe = host.exe.clone().unwrap_or_default();
    if exe != Path::new(VIRTLOGD) || argv0(pid).as_deref() != Some(VIRTLOGD) {
        why.push(format!(
            "{UNIT} runs {} (argv[0] {:?}), not {VIRTLOGD}: virtlogd's re-exec would not find \
             guestlogd there",
            exe.display(),
            argv0(pid).unwrap_or_default()
        ));
    }
    match std::fs::symlink_metadata(VIRTLOGD) {
        Ok(m) if m.file_type().is_file() => {}
        _ => why.push(format!("{VIRTLOGD} is not a regular file")),
    }
    if let Some(d) = diversion() {
        why.push(format!("dpkg diverts {VIRTLOGD} to {d} already"));
    }
    if Path::new(DIVERTED).exists() {
        why.push(format!("{DIVERTED} exists already"));
    }
    if let Some(e) = cannot_run(guestlogd) {
        why.push(e);
    }
    if super::prop("virtlogd.socket", "ActiveState") != "active" {
        why.push(
            "virtlogd.socket is not active: libvirt's socket would not survive guestlogd's \
             restart onto its own settings"
                .into(),
        );
    }
    if std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|v| v.trim() == "1") {
        why.push("SELinux enforces: virtlogd's domain may not execute guestlogd".into());
    }
    if super::prop("guestlogd.service", "ActiveState") == "active"
        && let Some(s) = status(socket).await
        && s["storedFds"].as_u64().unwrap_or(0) > 1
    {
        why.push(format!(
            "guestlogd.service runs and holds {} pipes, consoles or clients, which the switch \
             would cut off",
            s["storedFds"].as_u64().unwrap_or(0) - 1
        ));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(SwitchError::Refused(why))
    }
}

/// Why guestlogd cannot run in virtlogd's place, if it cannot: it must be
/// an executable file that starts (its libraries are there).
fn cannot_run(guestlogd: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let ok = std::fs::metadata(guestlogd)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !ok {
        return Some(format!("{} is not an executable file", guestlogd.display()));
    }
    match std::process::Command::new(guestlogd)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() && o.stdout.starts_with(b"guestlogd ") => None,
        Ok(o) => Some(format!(
            "{} --version failed ({}): {}",
            guestlogd.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("{} cannot run: {e}", guestlogd.display())),
    }
}

fn main_pid_now() -> Option<u32> {
    super::main_pid(UNIT)
}

/// The pipes a process holds only the read end of: virtlogd's domain
/// pipes (its own signal pipe has both ends).
fn pipes_of(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for e in dir.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().into_owned();
            if t.starts_with("pipe:") {
                *seen.entry(t).or_default() += 1;
            }
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n == 1)
        .map(|(p, _)| p)
        .collect()
}

/// What GetStatus says this guestlogd adopted from virtlogd.
async fn adopted_paths(socket: &Path) -> Vec<String> {
    status(socket)
        .await
        .and_then(|s| {
            s["virtlogd"]["pipes"].as_array().map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Of `paths`, the logs that have no pipe now.
async fn pipes_missing(socket: &Path, paths: &[String]) -> Vec<String> {
    let list = match call(socket, "ListLogs", Value::Object(Default::default())).await {
        Ok(Ok(v)) => v,
        _ => return paths.to_vec(),
    };
    let with_pipe: Vec<&str> = list["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter(|l| l["pipes"].as_u64().unwrap_or(0) > 0)
                .filter_map(|l| l["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    paths
        .iter()
        .filter(|p| !with_pipe.contains(&p.as_str()))
        .cloned()
        .collect()
}
