//! The baseline guestlogd's virtlogd protocol must match: an unmodified
//! libvirt 11.3 with the REAL virtlogd, under systemd 257 (tests/libvirt/),
//! runs real QEMU (TCG) domains.
//! - A pty serial with `<log file=…>`: the guest's init output reaches the
//!   serial log, written by virtlogd (which holds it open; QEMU does not);
//!   NAME.log has libvirt's header and QEMU's command line; `virsh destroy`
//!   appends "shutting down, reason=destroyed".
//! - A start that fails (a unix serial whose socket has no listener): virsh's
//!   error carries QEMU's own message, which libvirt read back from virtlogd.

#[path = "common/libvirt.rs"]
mod libvirt;

use std::{
    os::unix::net::UnixListener,
    time::{Duration, Instant},
};

use libvirt::{Libvirt, QEMU_LOGS, domain_xml, pty_serial};

/// Generous: the machine may be busy (TCG guests are slow when it is).
const LIMIT: Duration = Duration::from_secs(120);

/// Paths the process `pid` (inside) has open.
fn open_files(lv: &Libvirt, pid: &str) -> String {
    lv.run(&[
        "find",
        &format!("/proc/{pid}/fd"),
        "-type",
        "l",
        "-printf",
        "%l\n",
    ])
}

#[test]
fn real_virtlogd_logs_a_domain_and_reports_a_failed_start() {
    let begin = Instant::now();
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let lv = Libvirt::boot();
    let booted = begin.elapsed();
    for unit in ["virtlogd.socket", "virtlogd.service", "libvirtd.service"] {
        assert_eq!(lv.prop(unit, "ActiveState"), "active", "{unit}");
    }
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");

    // --- A domain that runs.
    let name = "base";
    let (log, serial_log) = (
        format!("{QEMU_LOGS}/{name}.log"),
        format!("{QEMU_LOGS}/{name}-serial0.log"),
    );
    let xml = domain_xml(name, cmdline.trim(), &pty_serial(name));
    std::fs::write(lv.host().join(format!("{name}.xml")), xml).unwrap();
    let t = Instant::now();
    lv.virsh(&["create", &format!("/host/{name}.xml")]);
    let created = t.elapsed();
    assert_eq!(lv.virsh(&["domstate", name]).trim(), "running");
    let up = lv.wait_for(&serial_log, "GUEST READY", LIMIT) + created;
    let serial = lv.read(&serial_log);
    assert!(
        serial.contains("Linux version"),
        "no kernel banner:\n{serial}"
    );

    let main = lv.read(&log);
    assert!(
        main.contains("starting up libvirt version: 11."),
        "no libvirt header in {log}:\n{main}"
    );
    assert!(
        main.contains("/usr/bin/qemu-system-x86_64 \\\n") && main.contains("-name guest=base"),
        "no QEMU command line in {log}:\n{main}"
    );
    assert!(main.contains("-accel tcg"), "not TCG:\n{main}");
    // The log files belong to virtlogd, not to QEMU: QEMU writes into pipes.
    let virtlogd = lv.prop("virtlogd.service", "MainPID");
    let held = open_files(&lv, &virtlogd);
    for path in [&log, &serial_log] {
        assert!(
            held.lines().any(|l| l == path),
            "virtlogd has no {path} open:\n{held}"
        );
    }
    let qemu = lv.read(&format!("/run/libvirt/qemu/{name}.pid"));
    let qemu_files = open_files(&lv, qemu.trim());
    assert!(
        !qemu_files.contains(QEMU_LOGS),
        "QEMU opened a log itself:\n{qemu_files}"
    );

    let t = Instant::now();
    lv.virsh(&["destroy", name]);
    let destroyed = t.elapsed();
    lv.wait_for(&log, "shutting down, reason=destroyed", LIMIT);
    assert_eq!(lv.virsh(&["list", "--all", "--name"]).trim(), "");

    // --- A domain whose start fails: QEMU cannot connect its serial port to
    // a socket nobody listens on (bound, then closed: the inode stays).
    let name = "fails";
    let sock = "/run/nolistener.sock";
    drop(UnixListener::bind(lv.inside(sock)).unwrap());
    let serial = format!("<serial type='unix'><source mode='connect' path='{sock}'/></serial>");
    std::fs::write(
        lv.host().join(format!("{name}.xml")),
        domain_xml(name, cmdline.trim(), &serial),
    )
    .unwrap();
    let t = Instant::now();
    let out = lv.try_run(&["virsh", "create", &format!("/host/{name}.xml")]);
    let failed = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "virsh create {name} succeeded");
    let qemu_says = format!("qemu-system-x86_64: -chardev socket,id=charserial0,path={sock}");
    let refused = format!("Failed to connect to '{sock}': Connection refused");
    assert!(
        err.contains(&qemu_says) && err.contains(&refused),
        "virsh's error lacks QEMU's message:\n{err}"
    );
    // libvirt read it back from virtlogd (ReadLogFile): it is in the log too.
    let main = lv.read(&format!("{QEMU_LOGS}/{name}.log"));
    assert!(main.contains(&refused), "not in {name}.log:\n{main}");
    assert_eq!(lv.virsh(&["list", "--all", "--name"]).trim(), "");
    println!("virsh create {name}: {}", err.trim());

    println!(
        "boot {booted:?}, virsh create {created:?}, guest up {up:?} after create began, \
         virsh destroy {destroyed:?}, failed create {failed:?}, total {:?}",
        begin.elapsed()
    );
}
