//! An unmodified libvirt 11.3 uses guestlogd in virtlogd's place, installed
//! the way README says (systemd/virtlogd.service.d/guestlogd.conf), under
//! systemd 257 with real TCG guests:
//! - the serial log and NAME.log fill through guestlogd; ListLogs lists
//!   both by path; `virsh destroy` appends "shutting down";
//! - a start that fails shows QEMU's own message, read back through
//!   ReadLogFile; a second domain on a busy log path gets EBUSY's text;
//! - a second domain floods its serial port: its log rotates at libvirt's
//!   defaults (2 MiB x 3);
//! - while a guest prints numbered lines: 10 restarts, 3 reloads, an
//!   upgrade, a stop and start and 3 kill -9s of virtlogd.service lose
//!   nothing but what a kill may lose (one read), and repeat nothing;
//! - the same restart with the real virtlogd, in the same run, for the
//!   README's side by side: it loses the rest of the guest's output.

#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/systemd.rs"]
mod systemd;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use libvirt::{Libvirt, QEMU_LOGS, check_seq, domain_xml, pty_serial, type_into};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);
const UNIT: &str = "virtlogd.service";
const DROP_IN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/virtlogd.service.d/guestlogd.conf"
);
/// The test's binary lives in HOSTDIR; everything else is the shipped file.
const TEST_DROP_IN: &str = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=\n\
    ExecStart=/host/guestlogd --runtime-dir /run/guestlogd --log-dir /var/log/guestlogd\n";
/// One read of a pipe (src/logs/pipe.rs): the most a kill -9 may lose.
const PIPE_READ: usize = 256 * 1024;

fn install(lv: &Libvirt) {
    std::fs::copy(env!("CARGO_BIN_EXE_guestlogd"), lv.host().join("guestlogd")).unwrap();
    let dir = lv.inside("/etc/systemd/system/virtlogd.service.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(DROP_IN, dir.join("guestlogd.conf")).unwrap();
    std::fs::write(dir.join("zz-test.conf"), TEST_DROP_IN).unwrap();
    lv.systemctl(&["daemon-reload"]);
    lv.systemctl(&["restart", UNIT]);
}

fn uninstall(lv: &Libvirt) {
    let dir = lv.inside("/etc/systemd/system/virtlogd.service.d");
    std::fs::remove_dir_all(dir).unwrap();
    lv.systemctl(&["daemon-reload"]);
    lv.systemctl(&["restart", UNIT]);
}

fn varlink(lv: &Libvirt) -> PathBuf {
    lv.inside("/run/guestlogd/io.guestlogd.Manager")
}

async fn list_names(socket: &Path) -> Vec<String> {
    let mut c = zlink::tokio::unix::connect(socket).await.unwrap();
    let call = zlink::Call::new(json!({"method": "io.guestlogd.Manager.ListLogs"}));
    let (reply, _) = c
        .call_method::<_, serde_json::Value, guestlogd::api::ManagerError>(&call, vec![])
        .await
        .unwrap();
    let v = reply.unwrap().into_parameters().unwrap();
    v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

fn create(lv: &Libvirt, name: &str, serial: &str) -> std::process::Output {
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    std::fs::write(
        lv.host().join(format!("{name}.xml")),
        domain_xml(name, cmdline.trim(), serial),
    )
    .unwrap();
    lv.try_run(&["virsh", "create", &format!("/host/{name}.xml")])
}

async fn takeover(lv: &Libvirt, socket: &Path, how: &str) -> Duration {
    let before = systemd::wait_status(socket, "before", |_| true).await;
    let t = Instant::now();
    match how {
        "restart" => lv.systemctl(&["restart", UNIT]),
        "reload" => lv.systemctl(&["reload", UNIT]),
        "kill" => lv.systemctl(&["kill", "--signal=SIGKILL", UNIT]),
        "stop-start" => {
            lv.systemctl(&["stop", UNIT]);
            lv.systemctl(&["start", UNIT])
        }
        "upgrade" => {
            let new = lv.host().join("guestlogd.new");
            std::fs::copy(env!("CARGO_BIN_EXE_guestlogd"), &new).unwrap();
            std::fs::rename(&new, lv.host().join("guestlogd")).unwrap();
            lv.systemctl(&["restart", UNIT])
        }
        _ => unreachable!(),
    };
    if how == "reload" {
        systemd::wait_status(socket, how, |s| s.adoptions > before.adoptions).await;
    } else {
        systemd::wait_status(socket, how, |s| s.pid != before.pid).await;
    }
    t.elapsed()
}

#[tokio::test]
async fn libvirt_runs_domains_whose_logs_guestlogd_writes() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let begin = Instant::now();
    let lv = Libvirt::boot();
    install(&lv);
    let socket = varlink(&lv);
    let status = systemd::wait_status(&socket, "guestlogd as virtlogd", |_| true).await;
    assert!(
        status.fd_store,
        "virtlogd.service gives guestlogd an FD store"
    );
    assert_eq!(lv.prop(UNIT, "MainPID"), status.pid.to_string());
    for unit in ["virtlogd.socket", "libvirtd.service"] {
        assert_eq!(lv.prop(unit, "ActiveState"), "active", "{unit}");
    }

    // --- A domain, logged by guestlogd.
    let vm = "vm1";
    let (log, serial_log) = (
        format!("{QEMU_LOGS}/{vm}.log"),
        format!("{QEMU_LOGS}/{vm}-serial0.log"),
    );
    let out = create(&lv, vm, &pty_serial(vm));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up = lv.wait_for(&serial_log, "GUEST READY", LIMIT);
    let main = lv.read(&log);
    assert!(main.contains("starting up libvirt version: 11."), "{main}");
    assert!(
        main.contains("-name guest=vm1"),
        "no QEMU command line:\n{main}"
    );
    let names = list_names(&socket).await;
    for path in [&log, &serial_log] {
        assert!(names.contains(path), "ListLogs lacks {path}: {names:?}");
    }
    println!("{vm} up {up:?} after create; ListLogs: {names:?}");

    // --- The same log path again while its pipe is open: EBUSY.
    let busy = format!("<serial type='pty'><log file='{serial_log}' append='off'/></serial>");
    let out = create(&lv, "busy", &busy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second writer on {serial_log} was let in"
    );
    assert!(
        err.contains(&format!(
            "Cannot open log file: '{serial_log}': Device or resource busy"
        )),
        "{err}"
    );

    // --- A start that fails: QEMU's message, read back through ReadLogFile.
    let sock = "/run/nolistener.sock";
    drop(std::os::unix::net::UnixListener::bind(lv.inside(sock)).unwrap());
    let out = create(
        &lv,
        "fails",
        &format!("<serial type='unix'><source mode='connect' path='{sock}'/></serial>"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "Failed to connect to '{sock}': Connection refused"
        )),
        "virsh's error lacks QEMU's message:\n{err}"
    );

    // --- A second domain at once, flooding: rotation at 2 MiB x 3.
    let out = create(&lv, "vm2", &pty_serial("vm2"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm2_log = format!("{QEMU_LOGS}/vm2-serial0.log");
    lv.wait_for(&vm2_log, "GUEST READY", LIMIT);
    type_into(&lv, "vm2", "flood 7000000");

    // --- Numbered lines through every kind of takeover.
    let n = 6000;
    type_into(&lv, vm, &format!("count {n} 5"));
    lv.wait_for(&serial_log, "SEQ 000100", LIMIT);
    let mut plan = vec!["restart"; 10];
    plan.extend(["reload"; 3]);
    plan.extend(["upgrade", "stop-start"]);
    plan.extend(["kill"; 3]);
    let mut kills_at = Vec::new();
    for how in &plan {
        lv.systemctl(&["reset-failed", UNIT]);
        if *how == "kill" {
            kills_at.push(lv.read(&serial_log).len());
        }
        let took = takeover(&lv, &socket, how).await;
        println!("{how}: new instance answered after {took:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    lv.wait_for(&serial_log, &format!("COUNT DONE {n}"), LIMIT * 2);
    let (missing, errors) = check_seq(&lv.read(&serial_log), n);
    println!(
        "guestlogd, {} takeovers ({} kill -9): {} of {n} lines missing",
        plan.len(),
        kills_at.len(),
        missing.len()
    );
    assert!(errors.is_empty(), "repeated or out of order: {errors:?}");
    // Only a kill may lose anything, at most one read each; at 12 bytes a
    // line that bounds the lines too.
    assert!(
        missing.len() * 12 <= kills_at.len() * PIPE_READ,
        "lost {} lines: {missing:?}",
        missing.len()
    );

    lv.wait_for(&vm2_log, "FLOOD DONE", LIMIT * 2);
    let size = |p: &str| std::fs::metadata(lv.inside(p)).map(|m| m.len());
    assert!(size(&vm2_log).unwrap() <= 2 * 1024 * 1024);
    for k in 0..3 {
        let backup = format!("{vm2_log}.{k}");
        assert!(
            size(&backup).is_ok_and(|s| s <= 2 * 1024 * 1024),
            "{backup}"
        );
    }
    assert!(size(&format!("{vm2_log}.3")).is_err(), "a fourth backup");

    lv.virsh(&["destroy", vm]);
    lv.wait_for(&log, "shutting down, reason=destroyed", LIMIT);
    lv.virsh(&["destroy", "vm2"]);

    // --- The real virtlogd, the same way, for comparison.
    uninstall(&lv);
    assert_eq!(
        lv.run(&["cat", &format!("/proc/{}/comm", lv.prop(UNIT, "MainPID"))])
            .trim(),
        "virtlogd"
    );
    let vm = "vm3";
    let serial_log = format!("{QEMU_LOGS}/{vm}-serial0.log");
    let out = create(&lv, vm, &pty_serial(vm));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lv.wait_for(&serial_log, "GUEST READY", LIMIT);
    let n = 2000;
    type_into(&lv, vm, &format!("count {n} 5"));
    lv.wait_for(&serial_log, "SEQ 000100", LIMIT);
    lv.systemctl(&["restart", UNIT]);
    // The guest goes on counting; virtlogd no longer hears it.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) && !lv.read(&serial_log).contains("COUNT DONE") {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (missing, _) = check_seq(&lv.read(&serial_log), n);
    println!(
        "the real virtlogd, one restart: {} of {n} lines missing",
        missing.len()
    );
    lv.virsh(&["destroy", vm]);
    println!("total {:?}", begin.elapsed());
}
