//! guestlogd in virtlogd's place inside a libvirt test instance, with its
//! varlink socket unit and the shipped hook, and what tests of the hook
//! need around it. Use it with `#[path = "common/libvirt_hook.rs"] mod
//! libvirt_hook;` beside `mod libvirt` and `mod systemd`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use guestlogd::api::{ConsoleInfo, Manager as _};

use super::libvirt::{self, Libvirt};

pub const LIMIT: Duration = Duration::from_secs(120);
pub const UNIT: &str = "virtlogd.service";
pub const DIR: &str = "/run/guestlogd/consoles";
pub const LOGS: &str = "/var/log/guestlogd";
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// As tests/libvirt_guestlogd.rs: the binary from HOSTDIR, restarts never
/// rate-limited.
pub const TEST_DROP_IN: &str = "[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=\n\
    ExecStart=/host/guestlogd --runtime-dir /run/guestlogd --log-dir /var/log/guestlogd\n";
pub const HOOK: &str = "/etc/libvirt/hooks/qemu.d/guestlogd";

pub fn install(lv: &Libvirt) {
    for bin in [
        env!("CARGO_BIN_EXE_guestlogd"),
        env!("CARGO_BIN_EXE_guestlogctl"),
    ] {
        let name = std::path::Path::new(bin).file_name().unwrap();
        std::fs::copy(bin, lv.host().join(name)).unwrap();
    }
    let etc = lv.inside("/etc/systemd/system");
    std::fs::create_dir_all(etc.join("virtlogd.service.d")).unwrap();
    std::fs::copy(
        format!("{ROOT}/systemd/virtlogd.service.d/guestlogd.conf"),
        etc.join("virtlogd.service.d/guestlogd.conf"),
    )
    .unwrap();
    std::fs::write(etc.join("virtlogd.service.d/zz-test.conf"), TEST_DROP_IN).unwrap();
    std::fs::copy(
        format!("{ROOT}/systemd/guestlogd.socket"),
        etc.join("guestlogd.socket"),
    )
    .unwrap();
    std::fs::create_dir_all(etc.join("guestlogd.socket.d")).unwrap();
    std::fs::copy(
        format!("{ROOT}/systemd/guestlogd.socket.d/virtlogd.conf"),
        etc.join("guestlogd.socket.d/virtlogd.conf"),
    )
    .unwrap();
    // The shipped hook, with the test's binary.
    let hook = std::fs::read_to_string(format!("{ROOT}/libvirt/hooks/qemu.d/guestlogd"))
        .unwrap()
        .replace("/usr/bin/guestlogctl", "/host/guestlogctl");
    let hooks = lv.inside("/etc/libvirt/hooks/qemu.d");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("guestlogd"), hook).unwrap();
    lv.run(&["chmod", "0755", HOOK]);
    lv.systemctl(&["daemon-reload"]);
    // systemd refuses to start a socket whose service runs already.
    lv.systemctl(&["stop", UNIT]);
    lv.systemctl(&["start", "guestlogd.socket"]);
    lv.systemctl(&["start", UNIT]);
    // libvirt looks for hooks when it starts.
    lv.systemctl(&["restart", "libvirtd.service"]);
}

/// A domain whose only serial port is a unix socket in guestlogd's console
/// directory (libvirt adds the matching <console>).
pub fn unix_domain(lv: &Libvirt, name: &str, port: &str) -> String {
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    let serial =
        format!("<serial type='unix'><source mode='connect' path='{DIR}/{port}.guest'/></serial>");
    libvirt::domain_with_devices(name, cmdline.trim(), &serial)
}

pub fn create(lv: &Libvirt, name: &str, xml: &str) -> std::process::Output {
    std::fs::write(lv.host().join(format!("{name}.xml")), xml).unwrap();
    lv.try_run(&["virsh", "create", &format!("/host/{name}.xml")])
}

/// Runs the installed hook as libvirt does, with `xml` on stdin.
pub fn hook(lv: &Libvirt, xml: &str, domain: &str, op: &str, subop: &str) -> std::process::Output {
    lv.try_run(&[
        "sh",
        "-c",
        "printf '%s' \"$1\" | \"$2\" \"$3\" \"$4\" \"$5\" -",
        "sh",
        xml,
        HOOK,
        domain,
        op,
        subop,
    ])
}

pub async fn consoles(lv: &Libvirt) -> Vec<ConsoleInfo> {
    let socket = lv.inside("/run/guestlogd/io.guestlogd.Manager");
    let mut c = zlink::tokio::unix::connect(&socket).await.unwrap();
    c.list_logs().await.unwrap().unwrap().consoles
}

pub async fn console(lv: &Libvirt, name: &str) -> Option<ConsoleInfo> {
    consoles(lv).await.into_iter().find(|c| c.name == name)
}

/// Polls until `ok` holds for the console (or its absence).
pub async fn wait_console(
    lv: &Libvirt,
    name: &str,
    what: &str,
    ok: impl Fn(Option<&ConsoleInfo>) -> bool,
) -> Option<ConsoleInfo> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let c = console(lv, name).await;
        if ok(c.as_ref()) {
            return c;
        }
        assert!(Instant::now() < deadline, "{name}: never {what}: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
