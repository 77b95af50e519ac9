//! The live switch between libvirt's virtlogd and guestlogd, both ways, with
//! domains running and nothing lost, under Debian's unmodified libvirt 11.3
//! and virtlogd.service as Debian ships it (its sandbox too), systemd 257,
//! real TCG guests. Only the binaries are installed (/usr/sbin/guestlogd,
//! /usr/bin/guestlogctl): guestlogctl carries the units it needs. Two
//! domains print a numbered line to a logged `<serial type='pty'>` every
//! 100 ms throughout, and after each step every line so far is in each
//! log once, in order, and new ones keep coming:
//! - the successor's fall-back: guestlogd executed by virtlogd's reload
//!   with a state it cannot parse (a key it does not know, which virtlogd
//!   ignores) gives it back, and the real virtlogd adopts every pipe;
//! - a second `systemctl reload virtlogd` right after the first, with
//!   guestlogd at /usr/sbin/virtlogd: guestlogd holds every pipe;
//! - `guestlogctl replace-virtlogd`: guestlogd serves with every pipe, then
//!   under its own unit settings with an FD store; a third domain is
//!   logged by guestlogd; `systemctl restart virtlogd.service` loses
//!   nothing;
//! - `guestlogctl restore-virtlogd` with a guestlogd console running is
//!   refused and changes nothing; with `--force` it says it closes the
//!   console, libvirt's virtlogd takes every libvirt log back, no
//!   diversion and no drop-in is left, and a new domain is logged by it.
//!
//! The figures asked for (time from the command to the new daemon serving,
//! lines written and lost meanwhile) are printed for each direction.

#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/systemd.rs"]
mod systemd;

use std::time::{Duration, Instant};

use libvirt::{
    Libvirt, QEMU_LOGS, counting_domain, domain_with_devices, holds, intact, log_daemon,
    still_counting,
};

const LIMIT: Duration = Duration::from_secs(120);
const UNIT: &str = "virtlogd.service";
const STATE: &str = "/run/virtlogd-restart-exec.json";
/// Where the real virtlogd waits while guestlogd is at /usr/sbin/virtlogd.
const DIVERTED: &str = "/usr/libexec/guestlogd/virtlogd";
/// A stand-in for this test alone, put at /usr/sbin/virtlogd: virtlogd's
/// state gets a key guestlogd does not know (virtlogd ignores unknown
/// keys), then guestlogd runs in virtlogd's process under its name. Only
/// bash builtins touch the file: no chown, which the sandbox would kill.
const UNPARSABLE: &str = r#"#!/bin/bash
f=/run/virtlogd-restart-exec.json
state=$(<"$f")
printf '{"x-guestlogd-test": 1, %s' "${state#\{}" >"$f"
exec -a "$0" /usr/sbin/guestlogd "$@"
"#;

/// A guestlogctl command inside: its output, whether it succeeded, and
/// how long it took.
fn guestlogctl(lv: &Libvirt, args: &[&str]) -> (String, bool, Duration) {
    let t = Instant::now();
    let out = lv.try_run(&[&["guestlogctl"], args].concat());
    let took = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "--- guestlogctl {args:?} ({took:?}, {})\n{}",
        out.status,
        text.trim_end()
    );
    (text, out.status.success(), took)
}

/// The figure guestlogctl prints as "(N s after the command)".
fn after_command(out: &str) -> String {
    out.split(" after the command)")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .unwrap_or("?")
        .to_owned()
}

fn main_pid(lv: &Libvirt) -> String {
    lv.prop(UNIT, "MainPID")
}

/// Lines written during a switch, over all logs: they are all there.
fn written(before: &[u32], after: &[u32]) -> u32 {
    before.iter().zip(after).map(|(b, a)| a - b).sum()
}

#[tokio::test]
async fn virtlogd_and_guestlogd_switch_live_both_ways() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let begin = Instant::now();
    let lv = Libvirt::boot();
    for (bin, at) in [
        (env!("CARGO_BIN_EXE_guestlogd"), "/usr/sbin/guestlogd"),
        (env!("CARGO_BIN_EXE_guestlogctl"), "/usr/bin/guestlogctl"),
    ] {
        std::fs::copy(bin, lv.inside(at)).unwrap();
    }
    let socket = lv.inside("/run/guestlogd/io.guestlogd.Manager");
    let mut logs = vec![
        counting_domain(&lv, "va", 100),
        counting_domain(&lv, "vb", 100),
    ];
    assert_eq!(log_daemon(&lv), "virtlogd");

    // --- The fall-back: a state guestlogd cannot parse goes back.
    let virtlogd = main_pid(&lv);
    std::fs::write(lv.host().join("stand-in"), UNPARSABLE).unwrap();
    lv.run(&[
        "sh",
        "-c",
        "mkdir -p /usr/libexec/guestlogd && \
         ln -f /usr/sbin/virtlogd /usr/libexec/guestlogd/virtlogd && \
         install -m 0755 /host/stand-in /usr/sbin/virtlogd.new && \
         mv -T /usr/sbin/virtlogd.new /usr/sbin/virtlogd",
    ]);
    let before = intact(&lv, &logs, "before the fall-back");
    lv.systemctl(&["reload", UNIT]);
    let journal = || lv.run(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]);
    let t = Instant::now();
    while !journal().contains("giving virtlogd's state back to virtlogd") {
        assert!(t.elapsed() < LIMIT, "no fall-back:\n{}", journal());
        std::thread::sleep(Duration::from_millis(50));
    }
    lv.wait_for(&logs[0], &format!("SEQ {:06}", before[0] + 3), LIMIT);
    let exe = lv.run(&["readlink", &format!("/proc/{virtlogd}/exe")]);
    assert_eq!(exe.trim(), DIVERTED, "not the real virtlogd");
    assert_eq!(
        (main_pid(&lv), log_daemon(&lv)),
        (virtlogd.clone(), "virtlogd".into())
    );
    assert!(!lv.inside(STATE).exists());
    let j = journal();
    assert!(j.contains("cannot read virtlogd's state"), "{j}");
    let now = still_counting(&lv, &logs, &before, "after the fall-back");
    println!(
        "fall-back: virtlogd (pid {virtlogd}) took its pipes back from guestlogd; {} lines \
         written meanwhile, 0 lost",
        written(&before, &now)
    );
    lv.run(&["mv", "-T", DIVERTED, "/usr/sbin/virtlogd"]);

    // --- Two reloads in a row with guestlogd at /usr/sbin/virtlogd.
    lv.run(&[
        "sh",
        "-c",
        "mkdir -p /usr/libexec/guestlogd && \
         ln -f /usr/sbin/virtlogd /usr/libexec/guestlogd/virtlogd && \
         ln -s /usr/sbin/guestlogd /usr/sbin/virtlogd.new && \
         mv -T /usr/sbin/virtlogd.new /usr/sbin/virtlogd",
    ]);
    let before = intact(&lv, &logs, "before two reloads");
    lv.run(&[
        "sh",
        "-c",
        &format!("systemctl reload {UNIT} && systemctl reload {UNIT}"),
    ]);
    let status = systemd::wait_status(&socket, "after two reloads", |s| {
        s.pid.to_string() == virtlogd
    })
    .await;
    let held = lv.run(&["guestlogctl", "list"]);
    for log in &logs {
        assert!(
            held.lines()
                .any(|l| l.starts_with(log.as_str()) && l.split_whitespace().nth(4) == Some("1")),
            "{log} has no pipe in guestlogd:\n{held}"
        );
    }
    let now = still_counting(&lv, &logs, &before, "after two reloads");
    println!(
        "two reloads in a row: guestlogd (pid {virtlogd}, {} re-execution of its own) holds \
         every pipe; {} lines written meanwhile, 0 lost",
        status.adoptions,
        written(&before, &now)
    );
    // Back with the real way back, which also puts the binary back.
    let (out, ok, _) = guestlogctl(&lv, &["restore-virtlogd"]);
    assert!(ok, "{out}");
    assert_eq!(log_daemon(&lv), "virtlogd");
    let before = still_counting(&lv, &logs, &now, "back to virtlogd");

    // --- replace-virtlogd.
    let (out, ok, took) = guestlogctl(&lv, &["replace-virtlogd"]);
    assert!(ok, "{out}");
    let after = intact(&lv, &logs, "after replace-virtlogd");
    for log in &logs {
        assert!(out.contains(log.as_str()), "{log} not adopted:\n{out}");
        assert!(out.contains(&log.replace("-serial0", "")), "{out}");
    }
    let guestlogd = main_pid(&lv);
    assert_ne!(guestlogd, virtlogd, "not moved onto guestlogd's own unit");
    assert_eq!(log_daemon(&lv), "guestlogd");
    let s = systemd::wait_status(&socket, "replaced", |_| true).await;
    assert!(s.fd_store && s.pid.to_string() == guestlogd, "{s:?}");
    assert_eq!(
        lv.run(&["readlink", "-f", "/usr/sbin/virtlogd"]).trim(),
        "/usr/sbin/virtlogd"
    );
    assert!(!lv.inside(DIVERTED).exists());
    assert!(
        lv.run(&["dpkg-divert", "--list"])
            .lines()
            .all(|l| !l.contains("virtlogd"))
    );
    still_counting(&lv, &logs, &after, "guestlogd serving");
    println!(
        "virtlogd -> guestlogd (replace-virtlogd): the command took {took:?}; guestlogd served \
         in virtlogd's process {} after the command; {} lines written during the command, 0 \
         lost or repeated",
        after_command(&out),
        written(&before, &after)
    );
    // A third domain, logged by guestlogd.
    logs.push(counting_domain(&lv, "vc", 100));
    let list = lv.run(&["guestlogctl", "list"]);
    assert!(list.contains(&logs[2]), "{list}");
    // A restart loses nothing now.
    let before = intact(&lv, &logs, "before a restart");
    lv.systemctl(&["restart", UNIT]);
    systemd::wait_status(&socket, "restarted", |s| s.pid.to_string() != guestlogd).await;
    let since: Vec<u32> = before.clone();
    let now = still_counting(&lv, &logs, &since, "after a restart");
    println!(
        "systemctl restart virtlogd.service: {} lines written meanwhile, 0 lost",
        written(&before, &now)
    );

    // --- restore-virtlogd with a console running: refused, then forced.
    let port = "ve-serial0";
    lv.run(&["guestlogctl", "create", port]);
    let serial = format!(
        "<serial type='unix'><source mode='connect' path='/run/guestlogd/consoles/{port}.guest'/></serial>"
    );
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    std::fs::write(
        lv.host().join("ve.xml"),
        domain_with_devices("ve", cmdline.trim(), &serial),
    )
    .unwrap();
    lv.virsh(&["create", "/host/ve.xml"]);
    lv.wait_for(
        &format!("/var/log/guestlogd/{port}.log"),
        "GUEST READY",
        LIMIT,
    );
    let pid = main_pid(&lv);
    let (out, ok, _) = guestlogctl(&lv, &["restore-virtlogd"]);
    assert!(!ok, "a hand-back with a console running was let through");
    assert!(
        out.contains(&format!("console {port}")) && out.contains("--force"),
        "{out}"
    );
    assert_eq!(
        (main_pid(&lv), log_daemon(&lv)),
        (pid.clone(), "guestlogd".into())
    );
    let before = intact(&lv, &logs, "after a refused restore");
    let (out, ok, took) = guestlogctl(&lv, &["restore-virtlogd", "--force"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "closing what virtlogd cannot take: console {port}"
        )),
        "{out}"
    );
    let after = intact(&lv, &logs, "after restore-virtlogd");
    assert_eq!(
        (main_pid(&lv), log_daemon(&lv)),
        (pid.clone(), "virtlogd".into())
    );
    assert_eq!(lv.prop(UNIT, "DropInPaths"), "");
    assert!(
        lv.prop(UNIT, "ExecStart")
            .contains("path=/usr/sbin/virtlogd ")
    );
    assert_eq!(lv.prop(UNIT, "NFileDescriptorStore"), "0");
    assert!(
        lv.run(&["dpkg-divert", "--list"])
            .lines()
            .all(|l| !l.contains("virtlogd"))
    );
    still_counting(&lv, &logs, &after, "virtlogd serving again");
    for log in &logs {
        assert!(holds(&lv, &pid, log), "virtlogd does not write {log}");
    }
    println!(
        "guestlogd -> virtlogd (restore-virtlogd --force): the command took {took:?}; virtlogd \
         served {} after the command; {} lines written during the command, 0 lost or repeated",
        after_command(&out),
        written(&before, &after)
    );
    // A new domain, logged by libvirt's virtlogd.
    let vf = counting_domain(&lv, "vf", 100);
    assert!(
        holds(&lv, &main_pid(&lv), &vf),
        "virtlogd does not write {vf}"
    );
    assert!(vf.starts_with(QEMU_LOGS));
    println!("total {:?}", begin.elapsed());
}
