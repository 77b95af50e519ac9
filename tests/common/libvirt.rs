//! A real libvirt 11.3 (monolithic libvirtd, virtlogd, QEMU) under systemd
//! 257, booted by tests/libvirt/boot.sh on a fresh overlay of the cached root
//! (tests/env/libvirt.sh). Use it with `#[path = "common/libvirt.rs"] mod libvirt;`.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    thread::{self, sleep},
    time::{Duration, Instant},
};

pub const CACHE: &str = "/var/cache/guestlogd-test";
pub const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/libvirt");
/// Where libvirt's QEMU driver keeps the domains' logs.
pub const QEMU_LOGS: &str = "/var/log/libvirt/qemu";
/// The most any one command inside may take (generous: a busy machine).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// Why the libvirt tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    let cache = Path::new(CACHE);
    if let Ok(why) = std::fs::read_to_string(cache.join("libvirt.unavailable")) {
        return Some(format!("libvirt unavailable: {}", why.trim()));
    }
    if !cache.join("libvirt-root/.guestlogd-complete").exists() {
        return Some("libvirt unavailable: run tests/env/libvirt.sh".into());
    }
    None
}

/// A booted instance, stopped (its journal saved to HOSTDIR/systemd-journal.log)
/// when dropped. HOSTDIR is bind-mounted at /host inside; it is kept if the
/// test panicked.
pub struct Libvirt {
    pub pid1: u32,
    dir: Option<tempfile::TempDir>,
}

impl Libvirt {
    /// Boots with a new HOSTDIR; returns once systemd says running/degraded
    /// (libvirtd and virtlogd are enabled, so they are up by then).
    pub fn boot() -> Self {
        let dir = tempfile::Builder::new().prefix("gld-lv").tempdir().unwrap();
        Self::boot_in(dir)
    }

    /// Boots with HOSTDIR `dir` (prepared by the caller: binaries, units…).
    pub fn boot_in(dir: tempfile::TempDir) -> Self {
        Self::boot_env(dir, &[])
    }

    /// Like `boot_in`, with boot.sh's opt-in variables (`SD_NET`,
    /// `SD_FILES`, `SD_BIND`: tests/systemd/boot.sh) in its environment.
    pub fn boot_env(dir: tempfile::TempDir, env: &[(&str, &str)]) -> Self {
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

    /// HOSTDIR on the host (/host inside).
    pub fn host(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// A path inside, as the host reaches it.
    pub fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1)).join(path.trim_start_matches('/'))
    }

    /// A command inside (tests/libvirt/ctl.sh); whatever its outcome.
    /// Killed after `COMMAND_LIMIT`: libvirt waits forever on a log daemon
    /// that accepts and never answers.
    pub fn try_run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["-k", "5", &COMMAND_LIMIT.as_secs().to_string()])
            .arg(format!("{HARNESS}/ctl.sh"))
            .arg(self.pid1.to_string())
            .args(args)
            .output()
            .unwrap()
    }

    /// A command inside; panics unless it succeeds; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn virsh(&self, args: &[&str]) -> String {
        self.run(&[&["virsh", "-q"], args].concat())
    }

    pub fn systemctl(&self, args: &[&str]) -> String {
        self.run(&[&["systemctl"], args].concat())
    }

    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.systemctl(&["show", "-p", name, "--value", unit])
            .trim()
            .to_owned()
    }

    /// Puts another daemon in virtlogd's place: a drop-in for
    /// virtlogd.service replaces ExecStart (and empties ExecReload), adds
    /// `extra` to [Service] (e.g. to relax virtlogd's sandbox, which the
    /// replacement inherits), then daemon-reload and a restart of the service
    /// alone: virtlogd.socket and virtlogd-admin.socket stay up, and so does
    /// libvirtd (Requires=virtlogd.socket). The daemon is started with the
    /// two listening FDs named virtlogd.socket and virtlogd-admin.socket (look
    /// them up by name) and must send READY=1 (Type=notify). Do it before
    /// starting domains: a stopped virtlogd takes their pipes with it.
    pub fn replace_virtlogd(&self, exec_start: &str, extra: &str) {
        let dir = self.inside("/etc/systemd/system/virtlogd.service.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("replace.conf"),
            format!("[Service]\nExecStart=\nExecStart={exec_start}\nExecReload=\n{extra}\n"),
        )
        .unwrap();
        self.systemctl(&["daemon-reload"]);
        self.systemctl(&["restart", "virtlogd.service"]);
    }

    /// The text of a file inside ("" while it does not exist).
    pub fn read(&self, path: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.inside(path)).unwrap_or_default()).into_owned()
    }

    /// Polls (every 50 ms, up to `limit`) until the file inside contains
    /// `what`; returns how long that took. Panics with the file's tail if
    /// it never does.
    pub fn wait_for(&self, path: &str, what: &str, limit: Duration) -> Duration {
        let begin = Instant::now();
        loop {
            let text = self.read(path);
            if text.contains(what) {
                return begin.elapsed();
            }
            if begin.elapsed() > limit {
                let tail = &text[text.floor_char_boundary(text.len().saturating_sub(2000))..];
                panic!("{path}: no {what:?} after {limit:?}; it ends with:\n{tail}");
            }
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = Command::new(format!("{HARNESS}/stop.sh"))
            .arg(self.pid1.to_string())
            .status();
        if let Some(dir) = self.dir.take()
            && thread::panicking()
        {
            let kept = dir.keep();
            eprintln!(
                "kept {} (the journal in systemd-journal.log)",
                kept.display()
            );
        }
    }
}

/// A transient TCG domain XML: 256 MiB, 1 vCPU, direct kernel boot of the
/// test guest (copied to /var/lib/libvirt/boot/ by tests/env/libvirt.sh),
/// no disk, no network, no balloon, `serial` as its first serial port, plus
/// a `<console type='pty'>`.
pub fn domain_xml(name: &str, cmdline: &str, serial: &str) -> String {
    domain_with_devices(
        name,
        cmdline,
        &format!("{serial}\n    <console type='pty'/>"),
    )
}

/// A UUID for the domain called `name`, the same for the same name: a
/// domain started again keeps its identity, as a defined domain does.
pub fn uuid_of(name: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in name.bytes() {
        h = (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    let hex = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The same domain with `devices` (besides no balloon) as its devices.
pub fn domain_with_devices(name: &str, cmdline: &str, devices: &str) -> String {
    domain_booting(name, "/var/lib/libvirt/boot/initrd.gz", cmdline, devices)
}

/// The same domain booting another initramfs (a path inside).
pub fn domain_booting(name: &str, initrd: &str, cmdline: &str, devices: &str) -> String {
    let uuid = uuid_of(name);
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>/var/lib/libvirt/boot/vmlinuz</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {devices}
    <memballoon model='none'/>
  </devices>
</domain>
"
    )
}

/// A pty serial port logged by the log daemon into `NAME-serial0.log`.
pub fn pty_serial(name: &str) -> String {
    format!("<serial type='pty'><log file='{QEMU_LOGS}/{name}-serial0.log' append='off'/></serial>")
}

/// Types a line into a domain's pty serial port, as `virsh console` would.
/// The pty lives in QEMU's own /dev (libvirt gives each QEMU a private
/// mount namespace), so it is reached through QEMU's root.
pub fn type_into(lv: &Libvirt, domain: &str, line: &str) {
    let pty = lv.virsh(&["ttyconsole", domain]);
    let pid = lv.read(&format!("/run/libvirt/qemu/{domain}.pid"));
    let tty = format!("/proc/{}/root{}", pid.trim(), pty.trim());
    // QEMU looks for a reader on the pty once a second and drops what comes
    // while it sees none: hold the pty open around the line.
    let script = "exec 3>\"$2\"; sleep 1.5; printf '%s\\n' \"$1\" >&3; sleep 1.5";
    lv.run(&["sh", "-c", script, "sh", line, &tty]);
}

/// Which of `SEQ 000001` … `SEQ n` are missing, and whether any came twice
/// or out of order.
pub fn check_seq(text: &str, n: u32) -> (Vec<u32>, Vec<String>) {
    let mut seen = Vec::new();
    for l in text.lines() {
        if let Some(v) = l.trim_end_matches('\r').strip_prefix("SEQ ")
            && let Ok(v) = v.parse::<u32>()
        {
            seen.push(v);
        }
    }
    let errors = seen
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .map(|w| format!("SEQ {} after SEQ {}", w[1], w[0]))
        .collect();
    let missing = (1..=n).filter(|i| !seen.contains(i)).collect();
    (missing, errors)
}

/// The highest `SEQ n` in a log.
pub fn highest_seq(text: &str) -> u32 {
    text.lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("SEQ "))
        .filter_map(|v| v.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
}

/// Which of the lines up to the highest seen are missing, and whether any
/// came twice or out of order: `check_seq` up to what was written so far.
pub fn seq_so_far(text: &str) -> (u32, Vec<u32>, Vec<String>) {
    let n = highest_seq(text);
    let (missing, errors) = check_seq(text, n);
    (n, missing, errors)
}

/// Starts a transient domain whose serial port is logged by the log
/// daemon (`NAME-serial0.log`) and has it print a numbered line every
/// `every_ms` until destroyed; returns its serial log once the first line
/// is there.
pub fn counting_domain(lv: &Libvirt, name: &str, every_ms: u32) -> String {
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    let xml = domain_xml(name, cmdline.trim(), &pty_serial(name));
    std::fs::write(lv.host().join(format!("{name}.xml")), xml).unwrap();
    lv.virsh(&["create", &format!("/host/{name}.xml")]);
    let log = format!("{QEMU_LOGS}/{name}-serial0.log");
    lv.wait_for(&log, "GUEST READY", Duration::from_secs(120));
    type_into(lv, name, &format!("count 9999999 {every_ms}"));
    lv.wait_for(&log, "SEQ 000001", Duration::from_secs(120));
    log
}

/// Which daemon runs as virtlogd.service: "guestlogd" or "virtlogd".
pub fn log_daemon(lv: &Libvirt) -> String {
    let pid = lv.prop("virtlogd.service", "MainPID");
    lv.read(&format!("/proc/{pid}/comm")).trim().to_owned()
}

/// Whether the process holds `path` open.
pub fn holds(lv: &Libvirt, pid: &str, path: &str) -> bool {
    let fds = lv.run(&["sh", "-c", &format!("readlink /proc/{pid}/fd/*")]);
    fds.lines().any(|l| l == path)
}

/// Every log's numbered lines so far, oldest first across its rotations
/// (`.2` … `.0`, then the log): each there once, in order. Returns the
/// highest of each.
pub fn intact(lv: &Libvirt, logs: &[String], when: &str) -> Vec<u32> {
    logs.iter()
        .map(|log| {
            let text: String = [".2", ".1", ".0", ""]
                .iter()
                .map(|b| lv.read(&format!("{log}{b}")))
                .collect();
            let (n, missing, errors) = seq_so_far(&text);
            assert!(
                missing.is_empty() && errors.is_empty(),
                "{when}: {log}: {} of {n} lines missing {missing:?}, {errors:?}",
                missing.len()
            );
            n
        })
        .collect()
}

/// How long a domain printing a line every 100 ms may take to print three.
const COUNT_LIMIT: Duration = Duration::from_secs(120);

/// Waits until each log has new lines past `since`, then checks them all.
pub fn still_counting(lv: &Libvirt, logs: &[String], since: &[u32], when: &str) -> Vec<u32> {
    for (log, n) in logs.iter().zip(since) {
        lv.wait_for(log, &format!("SEQ {:06}", n + 3), COUNT_LIMIT);
    }
    intact(lv, logs, when)
}
