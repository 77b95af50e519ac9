//! `guestlogctl read`, `tail` and `tail -f` never send a guest's escape
//! sequences raw to an admin's terminal: on a real pseudo-terminal they
//! show control characters escaped, while `--raw`, and output that is not
//! a terminal, get the bytes as they are.

mod common;

use std::{
    io::Read,
    os::fd::{AsFd, OwnedFd},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Daemon, call};
use serde_json::json;

/// What a guest may print: OSC 52 (writes the clipboard), a screen clear,
/// a title change, a lone CR that would overwrite its line, a C1 CSI.
const HOSTILE: &str =
    "boot ok\r\n\x1b]52;c;ZXZpbA==\x07\x1b[2J\x1b]0;owned\x07hidden\rshown\u{9b}31m\tend";

/// Runs guestlogctl with its stdout on a new pseudo-terminal; its process
/// and the terminal's master end.
fn on_a_terminal(d: &Daemon, args: &[&str]) -> (Child, OwnedFd) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_guestlogctl"))
        .arg("--runtime-dir")
        .arg(d.socket().parent().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    (child, pty.master)
}

/// What the terminal showed until `until` appeared (or the writer left).
fn screen(master: &OwnedFd, until: &str) -> String {
    let mut f = std::fs::File::from(master.as_fd().try_clone_to_owned().unwrap());
    let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains(until) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The escaped form, as a terminal shows it (its own ONLCR turns the LF
/// of a CR LF into CR LF again, so CR CR LF).
const SHOWN: &str = "boot ok\r\r\n\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J\\x1b]0;owned\\x07hidden\\x0dshown\\xc2\\x9b31m\tend";

#[tokio::test]
async fn read_and_tail_escape_control_characters_on_a_terminal() {
    let d = Daemon::start("");
    let mut c = zlink::tokio::unix::connect(d.socket()).await.unwrap();
    call(
        &mut c,
        "AppendLog",
        json!({"name": "vm", "message": HOSTILE}),
    )
    .await
    .unwrap();

    for args in [&["read", "vm"][..], &["tail", "vm"]] {
        let (mut child, master) = on_a_terminal(&d, args);
        let seen = screen(&master, "end");
        child.wait().unwrap();
        assert!(!seen.contains('\x1b'), "{args:?} sent ESC raw: {seen:?}");
        assert!(seen.contains(SHOWN), "{args:?} showed {seen:?}");
    }

    // Following: what arrives later is escaped too.
    let (mut child, master) = on_a_terminal(&d, &["tail", "-f", "vm"]);
    assert!(screen(&master, "end").contains(SHOWN));
    call(
        &mut c,
        "AppendLog",
        json!({"name": "vm", "message": "later\x1b[5mblink"}),
    )
    .await
    .unwrap();
    let later = screen(&master, "blink");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(later.contains("later\\x1b[5mblink"), "{later:?}");
    assert!(!later.contains('\x1b'), "{later:?}");

    // --raw opts out; a pipe gets the bytes as they are.
    let (mut child, master) = on_a_terminal(&d, &["read", "--raw", "vm"]);
    let raw = screen(&master, "end");
    child.wait().unwrap();
    assert!(raw.contains("\x1b]52;c;ZXZpbA==\x07"), "{raw:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_guestlogctl"))
        .arg("--runtime-dir")
        .arg(d.socket().parent().unwrap())
        .args(["read", "vm"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        out.stdout,
        format!("{HOSTILE}\nlater\x1b[5mblink\n").as_bytes()
    );
}
