//! Two libvirt hosts on one machine, for live migration: `lvmig-a` and
//! `lvmig-b`, each a `Libvirt` (tests/common/libvirt.rs) booted with its own
//! net namespace (`SD_NET=1`) and its own files (`SD_FILES`), joined by a
//! veth pair that exists only inside the two namespaces (10.231.0.1/30 and
//! .2), each libvirtd listening on ADDR:16509 without auth. Recipe and
//! facts: /work/shared/notes/migration-facts.md §6–§9. Also the ticking
//! guest (tests/env/tick-init.sh) and what reads its output: a listener for
//! a unix-socket serial port and the TICK parser. Use it with
//! `#[path = "common/libvirt_pair.rs"] mod libvirt_pair;` beside
//! `#[path = "common/libvirt.rs"] mod libvirt;`.
//!
//! Pairs run in parallel with each other and with other tests: the veth,
//! its addresses and the TCP sockets live in the pair's own namespaces;
//! everything on the host (overlays, state, cgroups, temp dirs) is per
//! instance already.
#![allow(dead_code)]

use std::{
    io::Read,
    os::unix::{fs::symlink, net::UnixListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle, sleep},
    time::{Duration, Instant},
};

use super::libvirt::{self, CACHE, Libvirt, QEMU_LOGS};

/// Generous: the machine may be busy, and other tests run beside.
pub const LIMIT: Duration = Duration::from_secs(120);
/// Where the ticking guest's initramfs is, inside both hosts.
pub const TICK_INITRD: &str = "/var/lib/libvirt/boot/tick.cpio";
/// The port libvirtd-tcp.socket listens on, on each host's veth address.
pub const PORT: u16 = 16509;
const TICK_INIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/env/tick-init.sh");
const LIBVIRT_ROOT: &str = "/var/cache/guestlogd-test/libvirt-root";

/// One of the two hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Its hostname (in both hosts' /etc/hosts).
    pub fn name(self) -> &'static str {
        match self {
            Side::A => "lvmig-a",
            Side::B => "lvmig-b",
        }
    }

    /// Its address on the veth.
    pub fn addr(self) -> &'static str {
        match self {
            Side::A => "10.231.0.1",
            Side::B => "10.231.0.2",
        }
    }

    /// The URI its peer reaches its libvirtd by.
    pub fn uri(self) -> String {
        format!("qemu+tcp://{}/system", self.addr())
    }

    fn veth(self) -> &'static str {
        match self {
            Side::A => "mig-va",
            Side::B => "mig-vb",
        }
    }

    /// Distinct, or libvirt refuses: "Attempt to migrate guest to the same
    /// host" (both would read the same SMBIOS UUID from the shared /sys).
    fn host_uuid(self) -> &'static str {
        match self {
            Side::A => "a1a1a1a1-0000-4000-8000-00000000000a",
            Side::B => "b2b2b2b2-0000-4000-8000-00000000000b",
        }
    }
}

/// Why a pair cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = libvirt::unavailable() {
        return Some(why);
    }
    let busybox = Path::new(CACHE).join("guest/busybox");
    if !busybox.exists() {
        return Some(format!(
            "no {} for the ticking guest: run tests/env/guest.sh",
            busybox.display()
        ));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no working `ip` (iproute2) on the host for the veth pair".into()),
    }
}

/// How to boot a pair.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// One host directory bound at /var/log/libvirt/qemu in both hosts, as
    /// with shared storage: both log daemons write the same files.
    pub shared_logs: bool,
}

/// Two booted, linked hosts; both are stopped when dropped (each journal
/// saved to its HOSTDIR/systemd-journal.log, which is kept if the test
/// panicked, as `Libvirt` does; so is the shared log directory).
pub struct Pair {
    a: Option<Libvirt>,
    b: Option<Libvirt>,
    logs: Option<tempfile::TempDir>,
    /// From the start of `boot` until both libvirtds answered each other.
    pub booted: Duration,
}

/// One `virsh migrate` and what libvirt reported of it.
#[derive(Clone, Debug)]
pub struct Migration {
    pub from: Side,
    pub p2p: bool,
    /// `virsh migrate` as the caller waited for it.
    pub wall: Duration,
    /// From `domjobinfo --completed` on the destination (None: not there).
    pub elapsed: Option<Duration>,
    pub downtime: Option<Duration>,
    pub iterations: Option<u64>,
    /// "Memory processed", as virsh prints it (e.g. "87.934 MiB").
    pub memory_processed: Option<String>,
    /// The destination's `domjobinfo --completed`, whole.
    pub jobinfo: String,
}

impl std::fmt::Display for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("?".into(), |d| format!("{} ms", d.as_millis()));
        write!(
            f,
            "{}→{}{}: wall {} ms, job elapsed {}, downtime {}, {} iterations, {} processed",
            self.from.name(),
            self.from.other().name(),
            if self.p2p { " (--p2p)" } else { "" },
            self.wall.as_millis(),
            ms(self.elapsed),
            ms(self.downtime),
            self.iterations.map_or("?".into(), |i| i.to_string()),
            self.memory_processed.as_deref().unwrap_or("?"),
        )
    }
}

impl Pair {
    /// Boots both hosts (in parallel) and links them; returns once each
    /// libvirtd answers the other over TCP.
    pub fn boot(opts: &Options) -> Pair {
        Self::boot_with(opts, |_, _| {})
    }

    /// Like `boot`, with `prepare(side, root)` adding files to the tree
    /// copied over that host's root before its systemd starts (units, a
    /// hook, configuration: what is read only at start).
    pub fn boot_with(opts: &Options, prepare: impl Fn(Side, &Path) + Sync) -> Pair {
        let begin = Instant::now();
        let initrd = tick_initrd();
        let logs = opts.shared_logs.then(|| {
            let d = tempfile::Builder::new()
                .prefix("gld-mig-logs")
                .tempdir()
                .unwrap();
            // As the root's /var/log/libvirt/qemu: QEMU (libvirt-qemu) reads nothing
            // there, but anyone may look, as on a real host.
            std::fs::set_permissions(
                d.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
            d
        });
        let boot = |side: Side| {
            let dir = tempfile::Builder::new()
                .prefix(&format!("gld-{}", side.name()))
                .tempdir()
                .unwrap();
            let files = dir.path().join("files");
            write_files(side, &files, &initrd);
            prepare(side, &files);
            let files = files.to_str().unwrap().to_owned();
            let mut env = vec![("SD_NET", "1".to_owned()), ("SD_FILES", files)];
            if let Some(logs) = &logs {
                let bind = format!("{}:{QEMU_LOGS}", logs.path().display());
                env.push(("SD_BIND", bind));
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Libvirt::boot_env(dir, &env)
        };
        let (a, b) = thread::scope(|s| {
            let a = s.spawn(|| boot(Side::A));
            let b = s.spawn(|| boot(Side::B));
            (a.join(), b.join())
        });
        // A boot that failed cleaned up after itself (boot.sh); the other
        // host, if up, stops as the tuple drops while the panic goes on.
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Ok(_), Err(e)) | (Err(e), Ok(_)) | (Err(e), Err(_)) => std::panic::resume_unwind(e),
        };
        let mut pair = Pair {
            a: Some(a),
            b: Some(b),
            logs,
            booted: Duration::ZERO,
        };
        pair.link();
        pair.booted = begin.elapsed();
        pair
    }

    pub fn a(&self) -> &Libvirt {
        self.a.as_ref().unwrap()
    }

    pub fn b(&self) -> &Libvirt {
        self.b.as_ref().unwrap()
    }

    pub fn side(&self, side: Side) -> &Libvirt {
        match side {
            Side::A => self.a(),
            Side::B => self.b(),
        }
    }

    /// `virsh -q ARGS` on `side` (qemu:///system); panics unless it succeeds.
    pub fn virsh(&self, side: Side, args: &[&str]) -> String {
        self.side(side).virsh(args)
    }

    /// The directory both hosts have at /var/log/libvirt/qemu, if shared.
    pub fn shared_logs(&self) -> Option<&Path> {
        self.logs.as_ref().map(|d| d.path())
    }

    /// The veth pair, made inside the two net namespaces at once (never on
    /// the host, so pairs do not clash), addressed and up; then waits until
    /// each libvirtd answers the other (its socket, bound with FreeBind at
    /// boot, takes connections as soon as the address exists).
    fn link(&self) {
        let (pa, pb) = (self.a().pid1.to_string(), self.b().pid1.to_string());
        let (va, vb) = (Side::A.veth(), Side::B.veth());
        let out = Command::new("ip")
            .args(["link", "add", va, "netns", &pa, "type", "veth"])
            .args(["peer", "name", vb, "netns", &pb])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip link add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for side in [Side::A, Side::B] {
            let script = format!(
                "ip link set lo up && ip addr add {}/30 dev {v} && ip link set {v} up",
                side.addr(),
                v = side.veth()
            );
            self.side(side).run(&["sh", "-c", &script]);
        }
        for side in [Side::A, Side::B] {
            let uri = side.other().uri();
            let begin = Instant::now();
            loop {
                let out = self.side(side).try_run(&["virsh", "-c", &uri, "uri"]);
                if out.status.success() {
                    break;
                }
                assert!(
                    begin.elapsed() < LIMIT,
                    "{} cannot reach {uri}: {}",
                    side.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
                sleep(Duration::from_millis(100));
            }
        }
    }

    /// `virsh migrate --live [--p2p] DOMAIN URI` run on `from`: client-managed
    /// (virsh on `from` talks to both libvirtds) or peer-to-peer (`from`'s
    /// libvirtd talks to the other's). Panics unless it succeeds, the
    /// destination says `running (migrated)`, and `from` has neither the
    /// domain nor a QEMU left.
    pub fn migrate(&self, domain: &str, from: Side, p2p: bool) -> Migration {
        let to = from.other();
        let uri = to.uri();
        let mut args = vec!["virsh", "migrate", "--live"];
        if p2p {
            args.push("--p2p");
        }
        args.extend([domain, uri.as_str()]);
        let begin = Instant::now();
        let out = self.side(from).try_run(&args);
        let wall = begin.elapsed();
        assert!(
            out.status.success(),
            "{args:?} on {}: {}\n{}{}",
            from.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let state = self.virsh(to, &["domstate", "--reason", domain]);
        assert_eq!(
            state.trim(),
            "running (migrated)",
            "{domain} on {}",
            to.name()
        );
        // The same look finds the destination's QEMU: the check below is
        // not vacuous.
        assert!(!self.qemus(to).is_empty(), "no QEMU on {}", to.name());
        let left = self.virsh(from, &["list", "--all", "--name"]);
        assert!(
            !left.lines().any(|l| l.trim() == domain),
            "{domain} still on {}: {left}",
            from.name()
        );
        // libvirt has stopped the source's QEMU by the time migrate
        // returns (Confirm); wait anyway rather than trust a timing.
        let begin = Instant::now();
        while !self.qemus(from).is_empty() {
            assert!(
                begin.elapsed() < LIMIT,
                "a QEMU still runs on {}: {}",
                from.name(),
                self.qemus(from)
            );
            sleep(Duration::from_millis(50));
        }
        let jobinfo = self.virsh(to, &["domjobinfo", "--completed", domain]);
        let field = |key: &str| {
            jobinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_owned())
            })
        };
        let ms = |key: &str| {
            let v = field(key)?;
            let n = v.strip_suffix(" ms")?.trim().parse().ok()?;
            Some(Duration::from_millis(n))
        };
        Migration {
            from,
            p2p,
            wall,
            elapsed: ms("Time elapsed"),
            downtime: ms("Total downtime"),
            iterations: field("Iteration").and_then(|v| v.parse().ok()),
            memory_processed: field("Memory processed"),
            jobinfo,
        }
    }

    /// The QEMU processes running on `side` ("" when none), one per line.
    pub fn qemus(&self, side: Side) -> String {
        // pgrep is exec'd by nsenter in the host's pid namespace: it sees
        // only that host's processes, and never counts itself.
        let out = self
            .side(side)
            .try_run(&["pgrep", "-a", "-f", "^/usr/bin/qemu-system"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let (a, b) = (self.a.take(), self.b.take());
        if thread::panicking() {
            // On this thread, so that each Libvirt sees the panic and keeps
            // its HOSTDIR (the journal) for the post-mortem.
            drop(a);
            drop(b);
            if let Some(logs) = self.logs.take() {
                eprintln!("kept the shared log directory {}", logs.keep().display());
            }
        } else {
            // Each stop takes ~2 s: both at once.
            thread::scope(|s| {
                s.spawn(|| drop(a));
                s.spawn(|| drop(b));
            });
        }
    }
}

/// The files of §6 for one host, under `root` (copied over its root by
/// boot.sh before systemd starts): hostname, hosts, a resolv.conf with no
/// server, libvirtd.conf with a host_uuid of its own and no TCP auth,
/// libvirtd-tcp.socket on the veth address (enabled), and the ticking
/// guest's initramfs.
fn write_files(side: Side, root: &Path, initrd: &[u8]) {
    let put = |path: &str, data: &[u8]| {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    put("etc/hostname", format!("{}\n", side.name()).as_bytes());
    // libvirtd of the source resolves the name the destination gives in
    // its migration URI (tcp://lvmig-b:49152) itself.
    put(
        "etc/hosts",
        format!(
            "127.0.0.1 localhost\n{} {}\n{} {}\n",
            Side::A.addr(),
            Side::A.name(),
            Side::B.addr(),
            Side::B.name()
        )
        .as_bytes(),
    );
    // No server: a lookup that /etc/hosts does not answer fails at once.
    put(
        "etc/resolv.conf",
        b"# no DNS inside a migration test host\n",
    );
    let conf = std::fs::read_to_string(format!("{LIBVIRT_ROOT}/etc/libvirt/libvirtd.conf"))
        .unwrap_or_default();
    put(
        "etc/libvirt/libvirtd.conf",
        format!(
            "{conf}\n# migration test host {}\nhost_uuid = \"{}\"\nauth_tcp = \"none\"\n",
            side.name(),
            side.host_uuid()
        )
        .as_bytes(),
    );
    // The address does not exist yet when systemd binds the socket at
    // boot: FreeBind. Replacing ListenStream keeps libvirtd off 0.0.0.0.
    put(
        "etc/systemd/system/libvirtd-tcp.socket.d/mig.conf",
        format!(
            "[Socket]\nListenStream=\nListenStream={}:{PORT}\nFreeBind=yes\n",
            side.addr()
        )
        .as_bytes(),
    );
    let wants = root.join("etc/systemd/system/sockets.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    symlink(
        "/usr/lib/systemd/system/libvirtd-tcp.socket",
        wants.join("libvirtd-tcp.socket"),
    )
    .unwrap();
    put(TICK_INITRD.trim_start_matches('/'), initrd);
}

/// The ticking guest's initramfs: an uncompressed newc cpio (the kernel
/// takes it as it is; ~2 MB, cheaper to write than to compress) with
/// tests/env/guest.sh's static busybox and tests/env/tick-init.sh as /init,
/// laid out as tests/env/guest.sh lays out the console-test guest's.
pub fn tick_initrd() -> Vec<u8> {
    let busybox = std::fs::read(Path::new(CACHE).join("guest/busybox")).unwrap();
    let init = std::fs::read(TICK_INIT).unwrap();
    let mut buf = Vec::new();
    let mut ino = 1u32;
    let mut add = |name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let n = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            n as u32,
            0,
        ];
        buf.extend_from_slice(b"070701");
        for f in fields {
            buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        buf.resize(buf.len().next_multiple_of(4), 0);
        buf.extend_from_slice(data);
        buf.resize(buf.len().next_multiple_of(4), 0);
        ino += 1;
    };
    const DIR: u32 = 0o040_755;
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root",
    ] {
        add(d, DIR, b"", (0, 0));
    }
    add("dev/console", 0o020_600, b"", (5, 1));
    add("bin/busybox", 0o100_755, &busybox, (0, 0));
    add("bin/sh", 0o120_777, b"busybox", (0, 0));
    add("init", 0o100_755, &init, (0, 0));
    add("TRAILER!!!", 0, b"", (0, 0));
    buf
}

/// The domain of §9: the ticking guest, serial0 a pty logged by the log
/// daemon into `NAME-serial0.log` (append='off', as libvirt's default
/// domains), serial1 a unix socket QEMU connects to at `serial1` (a path
/// inside; something must listen there before a start or a migration),
/// and the console on serial0.
pub fn tick_domain_xml(lv: &Libvirt, name: &str, serial1: &str) -> String {
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    let devices = format!(
        "<serial type='pty'>
      <log file='{QEMU_LOGS}/{name}-serial0.log' append='off'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='connect' path='{serial1}'/>
      <target port='1'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>"
    );
    libvirt::domain_booting(name, TICK_INITRD, cmdline.trim(), &devices)
}

/// The tick numbers in `text`, in order: each whole line (ended by "\n")
/// that matches `^TICK (\d{6}) up=[0-9.]+\r?$`. A last line without its
/// "\n" does not count: it may be cut (still being written, or its rest
/// went to another host), and a cut "up=1." would still match.
pub fn ticks(text: &str) -> Vec<u32> {
    text.split_inclusive('\n')
        .filter_map(|l| tick(l.strip_suffix('\n')?))
        .collect()
}

/// The tick whose line `before` ends and `after` completes, if `ticks`
/// counted neither part: a part without its newline never counts, one with
/// it does when it reads as a tick on its own.
fn cut_tick(before: &str, after: &str) -> Option<u32> {
    let (head, whole) = match before.strip_suffix('\n') {
        Some(b) => (b.rsplit('\n').next()?, true),
        None => (before.rsplit('\n').next()?, false),
    };
    let (tail, _) = after.split_once('\n')?;
    if (whole && tick(head).is_some()) || tick(tail).is_some() {
        return None;
    }
    tick(&format!("{head}{tail}"))
}

fn tick(line: &str) -> Option<u32> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (num, up) = line.strip_prefix("TICK ")?.split_once(" up=")?;
    let num_ok = num.len() == 6 && num.bytes().all(|b| b.is_ascii_digit());
    let up_ok = !up.is_empty() && up.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if num_ok && up_ok {
        num.parse().ok()
    } else {
        None
    }
}

/// What a set of texts (logs, listener connections) holds of the ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickReport {
    /// Per text: how many ticks, and its first and last.
    pub texts: Vec<(usize, Option<u32>, Option<u32>)>,
    /// The lowest and highest tick in any text.
    pub first: Option<u32>,
    pub last: Option<u32>,
    /// Between first and last, in no text.
    pub missing: Vec<u32>,
    /// Seen more than once, in one text or across texts.
    pub repeated: Vec<u32>,
    /// In a text, a tick not above the one before it ("7 after 9").
    pub disordered: Vec<String>,
    /// Ticks whose line was cut between two texts, counted in the later.
    pub cut: Vec<u32>,
}

impl TickReport {
    /// Every tick from first to last, once each, in order in each text.
    pub fn exactly_once(&self) -> bool {
        self.missing.is_empty() && self.repeated.is_empty() && self.disordered.is_empty()
    }
}

impl std::fmt::Display for TickReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |t: Option<u32>| t.map_or("-".into(), |t| t.to_string());
        let texts: Vec<String> = self
            .texts
            .iter()
            .map(|(c, a, b)| format!("{c} ({}..{})", n(*a), n(*b)))
            .collect();
        write!(
            f,
            "ticks {}..{} in [{}]; missing {:?}, repeated {:?}, disordered {:?}",
            n(self.first),
            n(self.last),
            texts.join(", "),
            self.missing,
            self.repeated,
            self.disordered
        )?;
        if !self.cut.is_empty() {
            write!(f, "; cut between texts {:?}", self.cut)?;
        }
        Ok(())
    }
}

/// Checks the ticks across `texts`, each tick expected in exactly one. A
/// tick line that a hop cut in two (its start ends one text, its rest
/// starts the next: the guest was paused mid-line) counts once, in the
/// later text, and is listed in `cut`.
pub fn check_ticks(texts: &[&str]) -> TickReport {
    let mut lists: Vec<Vec<u32>> = texts.iter().map(|t| ticks(t)).collect();
    let mut cut = Vec::new();
    for (i, pair) in texts.windows(2).enumerate() {
        if let Some(n) = cut_tick(pair[0], pair[1]) {
            lists[i + 1].insert(0, n);
            cut.push(n);
        }
    }
    let mut all: Vec<u32> = lists.iter().flatten().copied().collect();
    all.sort_unstable();
    let (first, last) = (all.first().copied(), all.last().copied());
    let mut repeated: Vec<u32> = all
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    repeated.dedup();
    let missing = match (first, last) {
        (Some(a), Some(b)) => (a..=b).filter(|t| all.binary_search(t).is_err()).collect(),
        _ => Vec::new(),
    };
    let disordered = lists
        .iter()
        .flat_map(|l| l.windows(2).filter(|w| w[1] <= w[0]))
        .map(|w| format!("{} after {}", w[1], w[0]))
        .collect();
    TickReport {
        cut,
        texts: lists
            .iter()
            .map(|l| (l.len(), l.first().copied(), l.last().copied()))
            .collect(),
        first,
        last,
        missing,
        repeated,
        disordered,
    }
}

/// One connection a `SerialListener` accepted.
#[derive(Clone, Debug)]
pub struct Connection {
    pub connected: Instant,
    pub first_byte: Option<Instant>,
    /// When the peer closed it (None: still open).
    pub eof: Option<Instant>,
    pub data: Vec<u8>,
}

impl Connection {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// A unix socket listening inside a host, bound by the test process through
/// /proc/PID1/root (a path socket is reached by its inode, whatever the net
/// namespace), where a domain's `<serial type='unix'>` connects: it keeps
/// each connection's bytes and when it opened, first had data and closed.
pub struct SerialListener {
    path: PathBuf,
    conns: Arc<Mutex<Vec<Connection>>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl SerialListener {
    /// Listens at `path` inside `lv` (before a start or an incoming
    /// migration: QEMU fails to start without a listener).
    pub fn bind(lv: &Libvirt, path: &str) -> SerialListener {
        let host_path = lv.inside(path);
        let listener = UnixListener::bind(&host_path).unwrap();
        // Non-blocking, polled: so that drop can end the accept loop.
        listener.set_nonblocking(true).unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (conns, stop) = (conns.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            let i = {
                                let mut c = conns.lock().unwrap();
                                c.push(Connection {
                                    connected: Instant::now(),
                                    first_byte: None,
                                    eof: None,
                                    data: Vec::new(),
                                });
                                c.len() - 1
                            };
                            // Not joined: it ends at EOF, when QEMU goes.
                            let conns = conns.clone();
                            thread::spawn(move || read_into(s, &conns, i));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        SerialListener {
            path: host_path,
            conns,
            stop,
            accept: Some(accept),
        }
    }

    /// Every connection so far, in the order accepted.
    pub fn connections(&self) -> Vec<Connection> {
        self.conns.lock().unwrap().clone()
    }

    /// All connections' bytes, one after another.
    pub fn text(&self) -> String {
        self.connections().iter().map(Connection::text).collect()
    }

    /// Polls (every 50 ms, up to `LIMIT`) until connection `i` holds `what`.
    pub fn wait_for(&self, i: usize, what: &str) {
        let begin = Instant::now();
        loop {
            let conns = self.connections();
            if conns.get(i).is_some_and(|c| c.text().contains(what)) {
                return;
            }
            assert!(
                begin.elapsed() < LIMIT,
                "{}: connection {i} never got {what:?}; connections: {:?}",
                self.path.display(),
                conns.iter().map(|c| c.data.len()).collect::<Vec<_>>()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

fn read_into(mut s: std::os::unix::net::UnixStream, conns: &Mutex<Vec<Connection>>, i: usize) {
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        let mut c = conns.lock().unwrap();
        let c = &mut c[i];
        if n == 0 {
            c.eof = Some(Instant::now());
            return;
        }
        c.first_byte.get_or_insert_with(Instant::now);
        c.data.extend_from_slice(&buf[..n]);
    }
}

impl Drop for SerialListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_tick_lines_count() {
        let text = "GUEST READY\r\nTICK 000001 up=1.00\r\nTICK 000002 up=1.10\n\
            xTICK 000003 up=1.2\r\nTICK 00004 up=1.3\r\nTICK 000005 up=\r\n\
            TICK 000006 up=1.5\r\r\nTICK 000007 up=1.6 \r\nTICK 000008 up=1.7";
        assert_eq!(ticks(text), vec![1, 2]);
    }

    #[test]
    fn missing_repeated_and_disordered_across_texts() {
        let t = |ns: &[u32]| -> String {
            ns.iter()
                .map(|n| format!("TICK {n:06} up=0.1\r\n"))
                .collect()
        };
        let r = check_ticks(&[&t(&[1, 2, 3]), &t(&[3, 5, 4]), &t(&[7])]);
        assert_eq!(r.first, Some(1));
        assert_eq!(r.last, Some(7));
        assert_eq!(r.missing, vec![6]);
        assert_eq!(r.repeated, vec![3]);
        assert_eq!(r.disordered, vec!["4 after 5".to_owned()]);
        assert!(!r.exactly_once());
        assert!(check_ticks(&[&t(&[1, 2]), &t(&[3])]).exactly_once());
    }

    #[test]
    fn a_line_cut_between_two_texts_counts_once() {
        // Cut mid-line, as a listener's two connections see it.
        let r = check_ticks(&[
            "TICK 000001 up=0.1\r\nTICK 0000",
            "02 up=0.2\r\nTICK 000003 up=0.3\r\n",
        ]);
        assert!(r.exactly_once(), "{r}");
        assert_eq!((r.cut.clone(), r.texts[1].0), (vec![2], 2));
        // Cut between its CR and LF.
        let r = check_ticks(&["TICK 000001 up=0.1\r", "\nTICK 000002 up=0.2\r\n"]);
        assert!(r.exactly_once() && r.cut == [1], "{r}");
        // Cut within its number, which reads as a tick until its end.
        let r = check_ticks(&["TICK 000001 up=0", ".1\r\nTICK 000002 up=0.2\r\n"]);
        assert!(r.exactly_once() && r.cut == [1], "{r}");
        // A log that ended the first part with a line of its own.
        let r = check_ticks(&["TICK 0000\n", "01 up=0.1\r\nTICK 000002 up=0.2\r\n"]);
        assert!(r.exactly_once() && r.cut == [1], "{r}");
        // Whole lines on both sides: nothing to join.
        let r = check_ticks(&["TICK 000001 up=0.1\r\n", "TICK 000002 up=0.2\r\n"]);
        assert!(r.exactly_once() && r.cut.is_empty(), "{r}");
    }
}
