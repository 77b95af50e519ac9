//! `guestlogctl attach` as a person uses it: in a real terminal (tmux),
//! against a real guest.

mod common;
#[path = "common/qemu.rs"]
mod qemu;

use std::{
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use common::Daemon;
use guestlogd::api::Manager as _;
use qemu::{Boot, Qemu};

struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Self {
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "120",
                "-y",
                "40",
                command,
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux did not start");
        Self(name.to_owned())
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.0])
            .args(keys)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-S", "-", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {text:?} on:\n{screen}"
            );
            sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[tokio::test]
async fn attach_types_to_the_guest_detaches_and_restores_the_terminal() {
    if let Some(why) = qemu::unavailable(Boot::Guest) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIPPED: tmux is not installed");
        return;
    }
    let d = Daemon::start("");
    let mut conn = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    let created = conn
        .create_console(
            "vm", None, None, None, None, None, None, None, None, None, None, None, None, None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    let guest_socket = created.guest_socket.to_owned();
    let mut guest = Qemu::start(guest_socket.as_ref(), Boot::Guest, None);

    // A shell records the terminal's mode before and after the attach.
    let dir = d.dir.path();
    let script = format!(
        "stty -a > {dir}/before; {ctl} --runtime-dir {dir}/run attach vm; \
         stty -a > {dir}/after; echo ATTACH-EXITED-$?; sleep 600",
        dir = dir.display(),
        ctl = env!("CARGO_BIN_EXE_guestlogctl"),
    );
    let name = format!("guestlogd-attach-{}", std::process::id());
    let tmux = Tmux::start(&name, &format!("bash --norc -c '{script}'"));
    tmux.wait_for("escape character is ^]");
    tmux.wait_for("GUEST READY");

    tmux.keys(&["echo typed-in-tmux", "Enter"]);
    tmux.wait_for("ECHO typed-in-tmux");
    // The guest's echo is in the log (which gets each read as the client
    // does, so a moment may pass); what was typed went only to the guest.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(d.log_path("vm")).unwrap();
        if log.contains("ECHO typed-in-tmux") || std::time::Instant::now() >= deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(log.contains("ECHO typed-in-tmux"), "{log}");

    tmux.keys(&["C-]"]);
    tmux.wait_for("ATTACH-EXITED-0");
    let before = std::fs::read_to_string(dir.join("before")).unwrap();
    let after = std::fs::read_to_string(dir.join("after")).unwrap();
    assert_eq!(before, after, "the terminal mode was not restored");
    assert!(
        before.contains(" icanon ") && before.contains(" echo "),
        "{before}"
    );

    // Detaching leaves the guest and the console running; the client is
    // gone once the daemon notices the hang-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let consoles = conn.list_logs().await.unwrap().unwrap().consoles;
        assert!(consoles[0].guest_connected);
        if consoles[0].clients == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the detached client still counts"
        );
        sleep(Duration::from_millis(50));
    }
    guest.assert_running();
}
