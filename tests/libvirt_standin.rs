//! How a replacement for virtlogd is started (what later tests use to put
//! guestlogd in its place): Libvirt::replace_virtlogd with a stand-in
//! (tests/libvirt/standin.py) that logs what systemd gave it, sends READY=1,
//! and accepts calls without ever answering (it closes the connection).
//! - the stand-in runs as virtlogd.service with the FDs virtlogd.socket and
//!   virtlogd-admin.socket, bound to libvirt's two paths;
//! - libvirtd is still the same process, and its first call on a domain start
//!   is OpenLogFile (proc 1) of program 0x87539319 as uid 0;
//! - the start then fails at once, and the domain is gone.

#[path = "common/libvirt.rs"]
mod libvirt;

use libvirt::{HARNESS, Libvirt, domain_xml, pty_serial};

#[test]
fn a_drop_in_puts_another_daemon_on_virtlogds_sockets() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let lv = Libvirt::boot();
    std::fs::copy(
        format!("{HARNESS}/standin.py"),
        lv.host().join("standin.py"),
    )
    .unwrap();
    let libvirtd = lv.prop("libvirtd.service", "MainPID");
    lv.replace_virtlogd("/usr/bin/python3 /host/standin.py", "");
    assert_eq!(lv.prop("virtlogd.service", "ActiveState"), "active");
    assert_eq!(lv.prop("libvirtd.service", "MainPID"), libvirtd);
    let standin = lv.prop("virtlogd.service", "MainPID");
    assert_eq!(lv.read(&format!("/proc/{standin}/comm")).trim(), "python3");

    let log = "/host/standin.log";
    lv.wait_for(log, "sent READY=1", libvirt::COMMAND_LIMIT);
    let text = lv.read(log);
    assert!(
        // The order of the two FDs varies from boot to boot: by name only.
        (text.contains(
            "listen_pid_ok=True listen_fds=2 fdnames=virtlogd.socket:virtlogd-admin.socket"
        ) || text.contains(
            "listen_pid_ok=True listen_fds=2 fdnames=virtlogd-admin.socket:virtlogd.socket"
        )) && text.contains("fd name=virtlogd.socket addr=/run/libvirt/virtlogd-sock")
            && text.contains("fd name=virtlogd-admin.socket addr=/run/libvirt/virtlogd-admin-sock")
            && text.contains("cgroup=/system.slice/virtlogd.service"),
        "{text}"
    );

    std::fs::write(
        lv.host().join("d.xml"),
        domain_xml("d", "console=ttyS0", &pty_serial("d")),
    )
    .unwrap();
    let out = lv.try_run(&["virsh", "create", "/host/d.xml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "virsh create succeeded");
    println!("virsh create with the stand-in: {}", err.trim());
    let text = lv.read(log);
    assert!(
        text.contains("uid=0: call len=")
            && text.contains("prog=0x87539319 vers=1 proc=1 type=0 serial=0"),
        "{text}"
    );
    assert_eq!(lv.virsh(&["list", "--all", "--name"]).trim(), "");
    assert_eq!(lv.prop("libvirtd.service", "MainPID"), libvirtd);
}
