//! libvirt domains get guestlogd consoles from their domain XML alone, with
//! an unmodified libvirt 11.3 and real TCG guests under systemd 257:
//! guestlogd runs in virtlogd's place (the README's drop-in), with its
//! varlink socket (systemd/guestlogd.socket, re-pointed at virtlogd.service
//! by systemd/guestlogd.socket.d/virtlogd.conf) and the shipped
//! hook in /etc/libvirt/hooks/qemu.d/ (libvirtd restarted to find it).
//! - the hook's edge cases, run as libvirt runs it: malformed XML is
//!   refused, a domain without such a port needs nothing, a console that
//!   exists is fine, and a stopped guestlogd is started by its socket;
//! - `virsh create` of a domain whose serial port points into the console
//!   directory: the hook makes the console, the guest boots into the capped
//!   log and NAME-serial0.boot.log, two `guestlogctl attach` clients and a
//!   viewer see the answer to a typed line; `virsh console` refuses the
//!   port and changes nothing; a port not named after its domain is
//!   refused and that domain does not start;
//! - `systemctl restart` of guestlogd while both clients are attached and
//!   the guest counts: both stay, and each sees every line once;
//! - writers "one": the second client cannot type until a third takes over
//!   with --force; the previous writer is told; the journal has the lines;
//! - `virsh destroy` removes the console, keeps the logs; the same domain
//!   starts again on the socket libvirt had chowned, with a new boot log.

#[path = "common/collect.rs"]
mod collect;
#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/libvirt_hook.rs"]
mod libvirt_hook;
#[path = "common/systemd.rs"]
mod systemd;

use collect::collect;
use std::{
    io::Write,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use libvirt::{HARNESS, Libvirt, check_seq};
use libvirt_hook::{
    DIR, LIMIT, LOGS, UNIT, console, consoles, create, hook, install, unix_domain, wait_console,
};

/// `guestlogctl attach` inside the instance, its stdin and stdout pipes
/// (not a terminal: it relays bytes as they are).
struct Attached {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl Attached {
    fn start(lv: &Libvirt, args: &[&str]) -> Self {
        let mut child = Command::new(format!("{HARNESS}/ctl.sh"))
            .arg(lv.pid1.to_string())
            .args(["/host/guestlogctl", "attach"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let a = Self {
            child,
            stdin,
            out,
            err,
            what: format!("attach {args:?}"),
        };
        a.wait_err("Connected to");
        a
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn wait_in(&self, what: &str, text: impl Fn() -> String) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let t = text();
            if t.contains(what) {
                return t;
            }
            let tail = &t[t.floor_char_boundary(t.len().saturating_sub(1500))..];
            assert!(
                Instant::now() < deadline,
                "{}: no {what:?}; stderr {:?}; output ends with:\n{tail}",
                self.what,
                self.stderr()
            );
            sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, what: &str) -> String {
        self.wait_in(what, || self.text())
    }

    fn wait_err(&self, what: &str) -> String {
        self.wait_in(what, || self.stderr())
    }

    fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
        self.stdin.flush().unwrap();
    }

    /// Ctrl-], as a person detaches; waits for guestlogctl to exit 0.
    fn detach(mut self) {
        self.stdin.write_all(&[0x1d]).unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{}: {status}", self.what);
                return;
            }
            assert!(Instant::now() < deadline, "{}: did not detach", self.what);
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn journal(lv: &Libvirt) -> String {
    lv.run(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"])
}

fn wait_journal(lv: &Libvirt, what: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let j = journal(lv);
        if j.contains(what) {
            return j;
        }
        assert!(
            Instant::now() < deadline,
            "the journal has no {what:?}:\n{j}"
        );
        sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn libvirt_domains_get_logged_shared_consoles_from_their_xml() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let begin = Instant::now();
    let lv = Libvirt::boot();
    install(&lv);
    let socket = lv.inside("/run/guestlogd/io.guestlogd.Manager");
    let status = systemd::wait_status(&socket, "guestlogd as virtlogd", |_| true).await;
    assert!(status.fd_store);
    println!("booted and installed in {:?}", begin.elapsed());

    // --- The hook as libvirt runs it, on its own.
    let t = Instant::now();
    let out = hook(&lv, "<domain><name>bad</name>", "bad", "prepare", "begin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the domain XML of bad is malformed"),
        "refusal: {err}"
    );
    assert!(out.stdout.is_empty(), "a hook must print nothing on stdout");

    let pty = "<domain><name>plain</name><devices><serial type='pty'/></devices></domain>";
    let out = hook(&lv, pty, "plain", "prepare", "begin");
    assert!(out.status.success(), "{out:?}");
    assert!(consoles(&lv).await.is_empty(), "a console for a pty port");

    // Stopped: the first call through the socket unit starts guestlogd.
    lv.systemctl(&["stop", UNIT]);
    assert_eq!(lv.prop(UNIT, "ActiveState"), "inactive");
    let xml = unix_domain(&lv, "act", "act-serial0");
    let mut took = Vec::new();
    for round in 0..2 {
        // The second time the console exists: fine.
        let t = Instant::now();
        let out = hook(&lv, &xml, "act", "prepare", "begin");
        took.push(t.elapsed());
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "hook at prepare begin (with nsenter): {:?} starting guestlogd through its socket, {:?} with it running",
        took[0], took[1]
    );
    assert_eq!(lv.prop(UNIT, "ActiveState"), "active");
    let c = console(&lv, "act-serial0")
        .await
        .expect("the hook's console");
    assert_eq!(c.boot_bytes, 1 << 20);
    assert_eq!(c.writers, "all");
    assert!(c.view_socket.is_some());
    let meta = std::fs::metadata(lv.inside(&format!("{DIR}/act-serial0.guest"))).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (64055, 64055, 0o600),
        "the guest socket belongs to libvirt-qemu (qemu.conf's default)"
    );
    for _ in 0..2 {
        assert!(hook(&lv, &xml, "act", "release", "end").status.success());
    }
    assert!(console(&lv, "act-serial0").await.is_none());
    // Anything else, and whatever is on stdin, is ignored.
    assert!(
        hook(&lv, "junk", "act", "started", "begin")
            .status
            .success()
    );
    println!("hook edge cases: {:?}", t.elapsed());

    // --- A port in the console directory not named after its domain:
    // libvirt shows the refusal and the domain does not start.
    let out = create(&lv, "rogue", &unix_domain(&lv, "rogue", "vm1-serial0"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("a console of this domain must be named rogue-"),
        "virsh's error lacks the hook's refusal:\n{err}"
    );
    assert!(!lv.virsh(&["list", "--name"]).contains("rogue"));
    assert!(console(&lv, "vm1-serial0").await.is_none());

    // --- A domain with nothing made by hand.
    let t = Instant::now();
    let vm = "vm1";
    let port = "vm1-serial0";
    let (log, boot_log) = (
        format!("{LOGS}/{port}.log"),
        format!("{LOGS}/{port}.boot.log"),
    );
    let xml = unix_domain(&lv, vm, port);
    let out = create(&lv, vm, &xml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lv.wait_for(&log, "GUEST READY", LIMIT);
    let booted = t.elapsed();
    let c = wait_console(&lv, port, "has its guest", |c| {
        c.is_some_and(|c| c.guest_connected)
    })
    .await
    .unwrap();
    assert_eq!(c.boot_log_path.as_deref(), Some(boot_log.as_str()));
    let boot = lv.read(&boot_log);
    assert!(boot.contains("Linux version"), "no kernel messages: {boot}");
    assert!(boot.contains("GUEST READY"), "{boot}");
    println!(
        "{vm}: virsh create to GUEST READY {booted:?}; boot log {} bytes, log {} bytes; boot log begins:\n{}",
        boot.len(),
        lv.read(&log).len(),
        &boot[..boot.floor_char_boundary(400)]
    );

    let mut a = Attached::start(&lv, &[port]);
    let b = Attached::start(&lv, &[port]);
    let v = Attached::start(&lv, &["--viewer", port]);
    // Each got the replay: the prompt's line.
    for x in [&a, &b, &v] {
        x.wait_for("GUEST READY");
    }
    a.type_line("echo first-boot-marker");
    for x in [&a, &b, &v] {
        x.wait_for("ECHO first-boot-marker");
    }
    let c = console(&lv, port).await.unwrap();
    assert_eq!((c.clients, c.viewers), (2, 1));

    // --- virsh console serves pty ports only; this one it refuses, and
    // touches nothing.
    // virsh console wants a terminal: util-linux's script gives it one.
    let command = format!("virsh console {vm} --force");
    let out = lv.try_run(&["script", "-qec", &command, "/dev/null"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("is not using a PTY"), "{said}");
    println!(
        "virsh console says: {}",
        said.lines()
            .find(|l| l.contains("PTY"))
            .unwrap_or_default()
            .trim()
    );
    a.type_line("echo after-virsh-console");
    for x in [&a, &b, &v] {
        x.wait_for("ECHO after-virsh-console");
    }
    let after = console(&lv, port).await.unwrap();
    assert!(after.guest_connected);
    assert_eq!((after.clients, after.viewers), (2, 1));

    // --- Restart guestlogd while both clients are attached and the guest
    // counts: both stay, and each sees every line exactly once.
    let n = 3000;
    a.type_line(&format!("count {n} 2"));
    a.wait_for("SEQ 000100");
    let t = Instant::now();
    let before = systemd::wait_status(&socket, "before", |_| true).await;
    lv.systemctl(&["restart", UNIT]);
    systemd::wait_status(&socket, "restart", |s| s.pid != before.pid).await;
    let took = t.elapsed();
    for x in [&a, &b, &v] {
        let text = x.wait_for(&format!("COUNT DONE {n}"));
        let (missing, errors) = check_seq(&text, n);
        assert!(
            missing.is_empty() && errors.is_empty(),
            "{}: missing {missing:?}, {errors:?}",
            x.what
        );
    }
    b.wait_for("ECHO first-boot-marker");
    a.type_line("echo after-restart");
    for x in [&a, &b, &v] {
        x.wait_for("ECHO after-restart");
    }
    println!(
        "restart with 2 clients and a viewer: new daemon after {took:?}; 0 of {n} lines lost or repeated in each"
    );
    let c = console(&lv, port).await.unwrap();
    assert_eq!((c.clients, c.viewers), (2, 1));

    // --- Destroy: the console goes, the logs stay.
    let guest_socket = lv.inside(&format!("{DIR}/{port}.guest"));
    let during = std::fs::metadata(&guest_socket).unwrap();
    lv.virsh(&["destroy", vm]);
    wait_console(&lv, port, "removed", |c| c.is_none()).await;
    for x in [a, b, v] {
        // The console closed them; they exit by themselves.
        let mut x = x;
        let deadline = Instant::now() + LIMIT;
        while x.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{} still runs", x.what);
            sleep(Duration::from_millis(50));
        }
    }
    assert!(!guest_socket.exists(), "the guest socket stayed");
    assert!(lv.read(&log).contains("ECHO after-restart"));
    assert!(lv.read(&boot_log).contains("ECHO first-boot-marker"));
    println!(
        "guest socket during the run: uid {} gid {} mode {:o}",
        during.uid(),
        during.gid(),
        during.mode() & 0o7777
    );

    // --- The same domain again: a new console on the same path, a new boot
    // log; the old boot is still in the capped log.
    let out = create(&lv, vm, &xml);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + LIMIT;
    while !lv.read(&boot_log).contains("GUEST READY") {
        assert!(Instant::now() < deadline, "no second boot in {boot_log}");
        sleep(Duration::from_millis(50));
    }
    assert!(!lv.read(&boot_log).contains("first-boot-marker"));
    assert!(lv.read(&log).contains("first-boot-marker"));
    lv.virsh(&["destroy", vm]);
    wait_console(&lv, port, "removed again", |c| c.is_none()).await;

    // --- One writer at a time: a console made beforehand (the hook finds
    // it and leaves it as it is).
    let (vm, port) = ("vm2", "vm2-serial0");
    // Owned by root, mode 0600: QEMU can connect only because libvirt's
    // DAC driver chowns the socket to libvirt-qemu for the run.
    lv.run(&[
        "/host/guestlogctl",
        "create",
        port,
        "--writers",
        "one",
        "--boot-bytes",
        "65536",
        "--max-size",
        "65536",
        "--max-backups",
        "1",
    ]);
    let guest_socket = lv.inside(&format!("{DIR}/{port}.guest"));
    assert_eq!(std::fs::metadata(&guest_socket).unwrap().uid(), 0);
    let out = create(&lv, vm, &unix_domain(&lv, vm, port));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lv.wait_for(&format!("{LOGS}/{port}.log"), "GUEST READY", LIMIT);
    let c = console(&lv, port).await.unwrap();
    assert_eq!((c.writers.as_str(), c.boot_bytes), ("one", 65536));
    let meta = std::fs::metadata(&guest_socket).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (64055, 64055),
        "libvirt did not chown the guest socket"
    );

    let mut w = Attached::start(&lv, &[port]);
    let mut r = Attached::start(&lv, &[port]);
    assert!(
        r.stderr().contains("read-only"),
        "the second client was not told: {}",
        r.stderr()
    );
    let writer = console(&lv, port).await.unwrap().writer.unwrap();
    w.type_line("echo from-writer");
    r.wait_for("ECHO from-writer");
    r.type_line("echo from-reader");
    r.wait_for("another client is the writer; input dropped");
    w.type_line("echo writer-again");
    r.wait_for("ECHO writer-again");
    assert!(
        !w.text().contains("ECHO from-reader"),
        "a reader's input reached the guest"
    );

    let mut f = Attached::start(&lv, &["--force", port]);
    let now = wait_console(&lv, port, "has a new writer", |c| {
        c.and_then(|c| c.writer.as_ref())
            .is_some_and(|w| w.pid != writer.pid)
    })
    .await
    .unwrap()
    .writer
    .unwrap();
    let notice = format!(
        "[guestlogd: {port} is now written by uid 0 pid {}]",
        now.pid
    );
    w.wait_for(&notice);
    f.wait_for("you are now the writer");
    f.type_line("echo from-forced");
    for x in [&w, &r, &f] {
        x.wait_for("ECHO from-forced");
    }
    w.type_line("echo from-old-writer");
    w.wait_for("another client is the writer; input dropped");
    f.type_line("echo forced-again");
    w.wait_for("ECHO forced-again");
    assert!(!f.text().contains("ECHO from-old-writer"));
    // The forced writer leaves: the longest attached client writes again.
    f.detach();
    w.wait_for(&format!("you are now the writer of {port}"));
    w.type_line("echo writer-back");
    r.wait_for("ECHO writer-back");

    let j = wait_journal(
        &lv,
        &format!(
            "console {port}: writer taken over by uid 0 pid {} from uid 0 pid {}",
            now.pid, writer.pid
        ),
    );
    for line in [
        format!(
            "console {port}: client attached (uid 0 pid {}), writes",
            writer.pid
        ),
        format!(
            "console {port}: client attached (uid 0 pid {}), writes",
            now.pid
        ),
        format!("console {port}: client detached (uid 0 pid {})", now.pid),
        format!(
            "console {port}: the writer left; uid 0 pid {} writes now",
            writer.pid
        ),
        "reads only: another client writes".to_owned(),
    ] {
        assert!(j.contains(&line), "the journal lacks {line:?}:\n{j}");
    }
    println!("journal:");
    for l in j
        .lines()
        .filter(|l| l.starts_with(&format!("console {port}:")))
    {
        println!("  {l}");
    }
    let log = lv.read(&format!("{LOGS}/{port}.log"));
    assert!(
        !log.contains("client attached") && !log.contains("is now written by"),
        "audit lines went into the guest's log"
    );

    // --- The boot log is never rotated away: a flood rotates the capped
    // log (64 KiB x 1) past the kernel's first lines; the boot log keeps
    // exactly its 64 KiB from the start of the boot.
    w.type_line("flood 400000");
    let vm2_log = format!("{LOGS}/{port}.log");
    lv.wait_for(&vm2_log, "FLOOD DONE", LIMIT);
    let boot = std::fs::read(lv.inside(&format!("{LOGS}/{port}.boot.log"))).unwrap();
    assert_eq!(boot.len(), 65536);
    assert!(String::from_utf8_lossy(&boot).contains("Linux version"));
    let capped = lv.read(&vm2_log) + &lv.read(&format!("{vm2_log}.0"));
    assert!(
        !capped.contains("Linux version"),
        "the flood did not rotate"
    );
    assert!(!lv.inside(&format!("{LOGS}/{port}.boot.log.0")).exists());
    for x in [w, r] {
        x.detach();
    }
    lv.virsh(&["destroy", vm]);
    wait_console(&lv, port, "removed", |c| c.is_none()).await;
    println!("total {:?}", begin.elapsed());
}
