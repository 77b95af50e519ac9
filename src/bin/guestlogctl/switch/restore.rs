//! `guestlogctl restore-virtlogd`: the way back, with domains running.
//!
//! guestlogd (HandBackToVirtlogd) empties its FD store, writes virtlogd's
//! state for the libvirt logs it holds and executes the real virtlogd in
//! its own process, which adopts them; this waits until virtlogd serves,
//! then removes what `replace-virtlogd` installed, so that the unit runs
//! virtlogd's own ExecStart again, with no diversion left. Consoles and
//! pipes libvirt did not open are refused by name unless `--force`, which
//! says what it closes. With the package installed, its removal does this
//! (its prerm calls us); by hand, the package's files would bring guestlogd
//! back at the next start, so that is refused.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use guestlogd::{
    api::ManagerError,
    handover::virtlogd::inherit::{STATE_FILE, VIRTLOGD},
};
use serde_json::json;

use super::{
    Host, SwitchError, UNIT, call, prop, remove_carried, runs_guestlogd, same_file, secs, status,
    swap_back, systemctl, wait_for,
};
use crate::cli::RestoreArgs;

pub async fn restore(runtime_dir: &Path, a: RestoreArgs) -> Result<(), SwitchError> {
    let begin = Instant::now();
    let socket = runtime_dir.join(guestlogd::daemon::SOCKET);
    let socket = socket.as_path();
    let limit = Duration::from_secs(a.timeout);
    let host = Host::look();
    if host.packaged && !host.from_package {
        return Err(SwitchError::Refused(vec![
            "the package guestlogd-virtlogd is installed: its files would bring guestlogd \
             back at the next start of virtlogd.service; remove it instead (apt remove \
             guestlogd-virtlogd), which restores virtlogd the same way"
                .into(),
        ]));
    }
    // A switch cut short leaves guestlogd at /usr/sbin/virtlogd: the real
    // binary goes back first, since a hand-back executes that path.
    swap_back()?;
    let guestlogd_running = host
        .pid
        .is_some_and(|pid| runs_guestlogd(pid, Path::new("/usr/sbin/guestlogd")) || is_ours(pid));
    let (Some(pid), true) = (host.pid, host.systemd && guestlogd_running) else {
        let removed = remove_carried()?;
        if removed && host.systemd {
            systemctl(&["daemon-reload"])?;
        }
        println!(
            "guestlogctl: guestlogd does not serve in virtlogd's place{}: nothing to hand back",
            if removed {
                "; the units it was installed with are removed"
            } else {
                ""
            }
        );
        return Ok(());
    };
    let mut why = host.busy();
    if !nix::unistd::geteuid().is_root() {
        why.push("only root can switch the log daemon".into());
    }
    match std::fs::symlink_metadata(VIRTLOGD) {
        Ok(m) if m.file_type().is_file() && !same_file(Path::new(VIRTLOGD), &exe_of(pid)) => {}
        _ => why.push(format!("{VIRTLOGD} is not libvirt's virtlogd")),
    }
    if !why.is_empty() {
        return Err(SwitchError::Refused(why));
    }

    let asked = Instant::now();
    let answer = call(socket, "HandBackToVirtlogd", json!({ "force": a.force }))
        .await
        .map_err(SwitchError::Failed)?;
    let reply = match answer {
        Ok(v) => v,
        Err(ManagerError::HandBackRefused { reason, closes }) => {
            let mut said = vec![reason];
            if !closes.is_empty() {
                said.push(format!(
                    "restore-virtlogd --force closes them: {}",
                    closes.join(", ")
                ));
            }
            return Err(SwitchError::Refused(said));
        }
        Err(e) => return Err(SwitchError::Failed(format!("guestlogd refused: {e:?}"))),
    };
    let list = |k: &str| -> Vec<String> {
        reply[k]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (pipes, closed) = (list("pipes"), list("closed"));
    if !closed.is_empty() {
        println!(
            "guestlogctl: closing what virtlogd cannot take: {}",
            closed.join(", ")
        );
    }
    println!(
        "guestlogctl: guestlogd (pid {pid}) hands {} pipes and {} connections back to virtlogd",
        pipes.len(),
        reply["connections"]
    );
    wait_for(limit, || async move {
        if super::main_pid(UNIT) != Some(pid) {
            return Some(Err(format!("{UNIT} no longer runs pid {pid}")));
        }
        let now = exe_of(pid);
        if same_file(&now, Path::new(VIRTLOGD)) {
            let settled = !Path::new(STATE_FILE).exists() && prop(UNIT, "ActiveState") == "active";
            return settled.then_some(Ok(()));
        }
        // guestlogd again: the exec failed, and it re-executed itself.
        let back = status(socket).await.is_some_and(|s| s["pid"] == pid);
        back.then(|| {
            Err(
                "libvirt's virtlogd could not be executed; guestlogd goes on serving \
                 (journalctl -u virtlogd.service says why)"
                    .to_owned(),
            )
        })
    })
    .await
    .unwrap_or_else(|| Err(format!("virtlogd did not take over within {}", secs(limit))))
    .map_err(SwitchError::Failed)?;
    let serving = asked.elapsed();
    for p in &pipes {
        println!("  {p}");
    }
    // The unit runs virtlogd's own ExecStart from its next start.
    if remove_carried()? || host.from_package {
        systemctl(&["daemon-reload"])?;
    }
    if prop("guestlogd.socket", "ActiveState") == "active" {
        // Its drop-in (Service=virtlogd.service) is gone or going: it
        // starts guestlogd.service alone again, or nothing if removed.
        let _ = systemctl(&["stop", "guestlogd.socket"]);
        if prop("guestlogd.socket", "LoadState") == "loaded"
            && prop("guestlogd.socket", "UnitFileState") == "enabled"
            && !host.from_package
        {
            let _ = systemctl(&["start", "guestlogd.socket"]);
        }
    }
    println!(
        "guestlogctl: libvirt's virtlogd (pid {pid}) serves again, {} after the hand-back was \
         asked ({} after the command); no diversion is left",
        secs(serving),
        secs(begin.elapsed())
    );
    Ok(())
}

fn exe_of(pid: u32) -> std::path::PathBuf {
    Path::new("/proc").join(pid.to_string()).join("exe")
}

/// Whether the process answers as guestlogd by its binary's name.
fn is_ours(pid: u32) -> bool {
    super::exe(pid).is_some_and(|e| e.file_name().is_some_and(|n| n == "guestlogd"))
}
