//! Starts QEMU with its serial port on a console's guest socket, as a VM
//! manager would, and kills it when dropped.
//!
//! Two kinds of machine: `Boot::Firmware` runs SeaBIOS alone (no disk, no
//! kernel), which prints its banner `SeaBIOS (version ...` on the serial
//! port a moment after it starts and then idles: quick, and enough to show
//! that QEMU is connected. `Boot::Guest` boots the kernel and initramfs of
//! tests/env/guest.sh, whose /init speaks the line protocol described in
//! tests/env/guest-init.sh (it prints `GUEST READY\r\n` when it listens).
//! Both run under TCG: KVM is not used.
#![allow(dead_code)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

/// Where tests/env/guest.sh puts its results and its `*.unavailable` notes.
pub const CACHE: &str = "/var/cache/guestlogd-test";

/// What the machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// SeaBIOS only: its banner within a fraction of a second.
    Firmware,
    /// The test guest: `GUEST READY\r\n` after a few seconds.
    Guest,
}

/// The directory of the guest's kernel, initramfs and command line.
pub fn guest_dir() -> PathBuf {
    Path::new(CACHE).join("guest")
}

/// Why `boot` cannot run here, if it cannot. Callers print
/// `SKIPPED: <reason>` and return.
pub fn unavailable(boot: Boot) -> Option<String> {
    let mut notes = vec!["qemu"];
    if boot == Boot::Guest {
        notes.push("guest");
    }
    for note in notes {
        let path = Path::new(CACHE).join(format!("{note}.unavailable"));
        if let Ok(why) = fs::read_to_string(path) {
            return Some(format!("{note} unavailable: {}", why.trim()));
        }
    }
    let works = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return Some("qemu unavailable: qemu-system-x86_64 does not run".into());
    }
    if boot == Boot::Guest {
        for f in ["vmlinuz", "initrd.gz", "cmdline"] {
            let p = guest_dir().join(f);
            if !p.exists() {
                return Some(format!(
                    "guest unavailable: {} is missing; run tests/env/guest.sh",
                    p.display()
                ));
            }
        }
    }
    None
}

/// A running QEMU, killed when dropped.
pub struct Qemu {
    child: Option<Child>,
    stderr: tempfile::NamedTempFile,
}

impl Qemu {
    /// Starts QEMU with its first serial port a chardev socket in client
    /// mode on `socket`. Without `reconnect_ms` QEMU exits at once unless
    /// something listens there; with it, QEMU starts anyway and retries
    /// every `reconnect_ms` while it is not connected.
    pub fn start(socket: &Path, boot: Boot, reconnect_ms: Option<u32>) -> Self {
        let mut chardev = format!("socket,id=s0,path={}", socket.display());
        if let Some(ms) = reconnect_ms {
            chardev.push_str(&format!(",reconnect-ms={ms}"));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35,accel=tcg",
            "-m",
            "256",
            "-nographic",
            "-nodefaults",
            "-no-reboot",
        ]);
        if boot == Boot::Guest {
            let g = guest_dir();
            let cmdline = fs::read_to_string(g.join("cmdline")).unwrap();
            cmd.arg("-kernel")
                .arg(g.join("vmlinuz"))
                .arg("-initrd")
                .arg(g.join("initrd.gz"))
                .arg("-append")
                .arg(cmdline.trim());
        }
        cmd.arg("-chardev")
            .arg(chardev)
            .args(["-serial", "chardev:s0"]);
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        Self {
            child: Some(child),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// What QEMU printed on its stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// The exit status if QEMU has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().unwrap().try_wait().unwrap()
    }

    /// Waits for QEMU to exit by itself (the guest powered off), at most
    /// `limit`; panics past it.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "qemu did not exit within {limit:?}:\n{}",
                self.stderr()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Panics, with QEMU's stderr, if QEMU has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_wait() {
            panic!("qemu exited: {status}\n{}", self.stderr());
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
