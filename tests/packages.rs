//! guestlogd's Debian packages, installed with dpkg as an operator would, in
//! the libvirt 11.3 test root under systemd 257 with real TCG guests. The
//! packages are packaging/build-deb's (tests/run-all builds them, and the
//! same build again as a higher version for the upgrade, before the tests);
//! each run boots a fresh overlay of the cached root, so dpkg inside changes
//! nothing outside.
//! - both packages installed while two domains print a numbered line to a
//!   logged pty serial port every 100 ms under libvirt's virtlogd: the
//!   switch happens live (guestlogctl replace-virtlogd, from the postinst),
//!   virtlogd.service's main process is guestlogd, and every line is in
//!   each log once; guestlogd-virtlogd removed with them running: libvirt's
//!   virtlogd is back live (restore-virtlogd, from the prerm), every line is
//!   still there, new ones keep coming and a new domain is logged by
//!   virtlogd; installed again with the three running: guestlogd again,
//!   nothing lost. The figures are printed.
//! - virtlogd.conf says max_size = 65536, max_backups = 2: a flooding
//!   domain's libvirt log is at most 64 KiB with exactly 2 backups.
//! - guestlogd.conf's [libvirt] max-size = 4 MiB wins over virtlogd.conf
//!   (after a reload); a libvirt log past libvirt's logrotate threshold is
//!   left alone by logrotate, which libvirt's own rule alone would copy
//!   and truncate.
//! - a domain whose serial port is a guestlogd console (the packaged hook)
//!   prints numbered lines to a client attached to it while both packages
//!   are upgraded: the daemon re-executes in place (same pid, the new
//!   binary), every line is in the log once and the client saw every line
//!   once. The figures are printed.
//! - guestlogd-virtlogd removed while that domain runs: refused, naming its
//!   console, and nothing changes; once the domain is gone, removed, and
//!   virtlogd is back at once.
//! - installed again with no domain running: guestlogd at once; a
//!   malformed virtlogd.conf then fails guestlogd's start, naming its line.
//! - removed with no domain running: virtlogd is back at once; guestlogd
//!   on its own (guestlogd.service) is re-executed in place by a package
//!   change too.

#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/systemd.rs"]
mod systemd;

use std::{
    io::{Read, Write},
    os::unix::{fs::MetadataExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libvirt::{
    Libvirt, QEMU_LOGS, check_seq, counting_domain, domain_with_devices, domain_xml, holds, intact,
    pty_serial, still_counting,
};

const LIMIT: Duration = Duration::from_secs(120);
const UNIT: &str = "virtlogd.service";
const CONSOLES: &str = "/run/guestlogd/consoles";
const VIRTLOGD_CONF: &str = "/etc/libvirt/virtlogd.conf";
/// Numbered lines the guest prints across the upgrade, 5 ms apart.
const LINES: u32 = 2000;

/// The package files of `version` (any, when `None`, if there is one) in
/// `dir`: guestlogd's and guestlogd-virtlogd's.
fn debs(dir: &Path, version: Option<&str>) -> Result<(PathBuf, PathBuf), String> {
    let find = |prefix: &str, suffix: &str| {
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                let v = name
                    .strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(suffix));
                v.is_some_and(|v| version.is_none_or(|want| v == want))
            })
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            _ => Err(format!(
                "want one {prefix}{}{suffix} in {}, found {found:?}",
                version.unwrap_or("*"),
                dir.display()
            )),
        }
    };
    Ok((
        find("guestlogd_", "_amd64.deb")?,
        find("guestlogd-virtlogd_", "_all.deb")?,
    ))
}

/// The version packaging/debian/changelog gives the packages.
fn changelog_version() -> String {
    let changelog = include_str!("../packaging/debian/changelog");
    let first = changelog.lines().next().unwrap_or_default();
    first
        .split(['(', ')'])
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The version in a package file's name.
fn version(deb: &Path) -> String {
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    name.split('_').nth(1).unwrap().to_owned()
}

/// Copies both packages into HOSTDIR/`sub`; their paths inside.
fn stage(lv: &Libvirt, (main, virt): &(PathBuf, PathBuf), sub: &str) -> [String; 2] {
    std::fs::create_dir_all(lv.host().join(sub)).unwrap();
    [main, virt].map(|deb| {
        let name = deb.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(deb, lv.host().join(sub).join(&name)).unwrap();
        format!("/host/{sub}/{name}")
    })
}

/// A dpkg command inside; what it printed, both streams.
fn dpkg(lv: &Libvirt, args: &[&str]) -> String {
    let (text, ok) = try_dpkg(lv, args);
    assert!(ok, "dpkg {args:?} failed:\n{text}");
    text
}

/// A dpkg command inside that may fail: what it printed, and whether it
/// succeeded.
fn try_dpkg(lv: &Libvirt, args: &[&str]) -> (String, bool) {
    let out = lv.try_run(&[&["dpkg"], args].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("--- dpkg {args:?} ({})\n{}", out.status, text.trim_end());
    (text, out.status.success())
}

/// Lines written between two counts, over all logs.
fn written(before: &[u32], after: &[u32]) -> u32 {
    before.iter().zip(after).map(|(b, a)| a - b).sum()
}

fn main_pid(lv: &Libvirt) -> String {
    lv.prop(UNIT, "MainPID")
}

/// Which daemon runs as virtlogd.service: "guestlogd" or "virtlogd".
fn daemon(lv: &Libvirt) -> String {
    lv.read(&format!("/proc/{}/comm", main_pid(lv)))
        .trim()
        .to_owned()
}

fn create(lv: &Libvirt, name: &str, xml: &str) {
    std::fs::write(lv.host().join(format!("{name}.xml")), xml).unwrap();
    lv.virsh(&["create", &format!("/host/{name}.xml")]);
}

fn cmdline(lv: &Libvirt) -> String {
    lv.read("/var/lib/libvirt/boot/cmdline").trim().to_owned()
}

/// A domain whose serial port is logged by the log daemon, booted.
fn pty_domain(lv: &Libvirt, name: &str) -> String {
    create(lv, name, &domain_xml(name, &cmdline(lv), &pty_serial(name)));
    let log = format!("{QEMU_LOGS}/{name}-serial0.log");
    lv.wait_for(&log, "GUEST READY", LIMIT);
    log
}

fn size(lv: &Libvirt, path: &str) -> Option<u64> {
    std::fs::metadata(lv.inside(path)).ok().map(|m| m.len())
}

fn journal(lv: &Libvirt) -> String {
    lv.run(&["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"])
}

/// Polls guestlogd until no log has a pipe and no console is left.
fn wait_idle(lv: &Libvirt) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let logs = lv.run(&["guestlogctl", "list"]);
        let consoles = lv.run(&["guestlogctl", "consoles"]);
        // Columns: NAME SIZE MAX BACKUPS PIPES ...
        let piped = logs
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(4).is_some_and(|p| p != "0"));
        if !piped && consoles.lines().count() <= 1 {
            return;
        }
        if Instant::now() >= deadline {
            let pid = main_pid(lv);
            let fds = lv.try_run(&["ls", "-l", &format!("/proc/{pid}/fd")]);
            panic!(
                "guestlogd never idle:\n{logs}{consoles}\n{}{}",
                String::from_utf8_lossy(&fds.stdout),
                String::from_utf8_lossy(&fds.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each read of a client, with when it arrived.
type Reads = Arc<Mutex<Vec<(Instant, Vec<u8>)>>>;

/// A console client: what it read.
struct Client {
    stream: UnixStream,
    reads: Reads,
}

impl Client {
    fn attach(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        let mut r = stream.try_clone().unwrap();
        let reads = Reads::default();
        let out = reads.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.lock()
                    .unwrap()
                    .push((Instant::now(), buf[..n].to_vec()));
            }
        });
        Self { stream, reads }
    }

    fn type_line(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn text(&self) -> String {
        let reads = self.reads.lock().unwrap();
        String::from_utf8_lossy(&reads.iter().flat_map(|r| r.1.clone()).collect::<Vec<_>>())
            .into_owned()
    }

    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.text().contains(what) {
            assert!(Instant::now() < deadline, "the client never got {what:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// When each numbered line arrived.
    fn arrivals(&self) -> Vec<Instant> {
        let reads = self.reads.lock().unwrap();
        let mut at = Vec::new();
        let mut line = Vec::new();
        for (t, bytes) in reads.iter() {
            for &b in bytes {
                line.push(b);
                if b == b'\n' {
                    if line.starts_with(b"SEQ ") {
                        at.push(*t);
                    }
                    line.clear();
                }
            }
        }
        at
    }
}

#[tokio::test]
async fn packages_install_upgrade_and_remove_with_domains_running() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let base = changelog_version();
    let upgrades = target.join("upgrade");
    if !target.join(format!("guestlogd_{base}_amd64.deb")).exists() || !upgrades.exists() {
        println!(
            "SKIPPED: no packages in {}: run packaging/build-deb and packaging/build-deb \
             --version VERSION --out target/debian/upgrade (tests/run-all does)",
            target.display()
        );
        return;
    }
    // Built, so they must be unambiguous: a failure, not a skip.
    let first = debs(&target, Some(&base)).unwrap();
    let upgrade = debs(&upgrades, None).unwrap();
    let (v1, v2) = (version(&first.0), version(&upgrade.0));
    let begin = Instant::now();
    let lv = Libvirt::boot();
    let [main1, virt1] = stage(&lv, &first, "first");
    let [main2, virt2] = stage(&lv, &upgrade, "upgrade");
    std::fs::write(
        lv.inside(VIRTLOGD_CONF),
        lv.read(VIRTLOGD_CONF) + "max_size = 65536\nmax_backups = 2\nlog_level = 3\n",
    )
    .unwrap();
    let socket = lv.inside("/run/guestlogd/io.guestlogd.Manager");

    // --- Both packages, with domains running: the switch happens live.
    let mut logs = vec![
        counting_domain(&lv, "pa", 100),
        counting_domain(&lv, "pb", 100),
    ];
    let virtlogd = main_pid(&lv);
    assert_eq!(daemon(&lv), "virtlogd");
    let before = intact(&lv, &logs, "before the installation");
    let t = Instant::now();
    let out = dpkg(&lv, &["-i", &main1, &virt1]);
    let took = t.elapsed();
    let after = intact(&lv, &logs, "after the installation");
    assert!(
        out.contains(&format!(
            "guestlogd (pid {virtlogd}) serves in virtlogd's place"
        )) && out.contains("runs under its own unit settings"),
        "{out}"
    );
    for log in &logs {
        assert!(out.contains(log.as_str()), "{log} not adopted:\n{out}");
    }
    assert_eq!(daemon(&lv), "guestlogd");
    assert_ne!(main_pid(&lv), virtlogd);
    assert_eq!(
        lv.systemctl(&["is-enabled", "guestlogd.socket"]).trim(),
        "enabled"
    );
    systemd::wait_status(&socket, "guestlogd in virtlogd's place", |s| s.fd_store).await;
    let j = journal(&lv);
    assert!(
        j.contains("applied to libvirt's logs and connections: max_size = 65536, max_backups = 2"),
        "{j}"
    );
    // Once per start: in virtlogd's process, then under its own unit.
    assert_eq!(
        j.matches("ignored (virtlogd's own settings").count(),
        2,
        "{j}"
    );
    let now = still_counting(&lv, &logs, &after, "guestlogd serving");
    println!(
        "dpkg -i of both packages ({v1}), virtlogd -> guestlogd live: {took:?}; {} lines \
         written during it, 0 lost or repeated",
        written(&before, &after)
    );

    // --- guestlogd-virtlogd removed with them running: virtlogd back live.
    let before = now;
    let pid = main_pid(&lv);
    let t = Instant::now();
    let out = dpkg(&lv, &["-r", "guestlogd-virtlogd"]);
    let took = t.elapsed();
    let after = intact(&lv, &logs, "after the removal");
    assert!(out.contains("libvirt's virtlogd (pid"), "{out}");
    assert_eq!(
        (main_pid(&lv), daemon(&lv)),
        (pid.clone(), "virtlogd".into())
    );
    assert_eq!(lv.prop(UNIT, "DropInPaths"), "");
    still_counting(&lv, &logs, &after, "virtlogd serving again");
    for log in &logs {
        assert!(holds(&lv, &pid, log), "virtlogd does not write {log}");
    }
    println!(
        "dpkg -r guestlogd-virtlogd, guestlogd -> virtlogd live: {took:?}; {} lines written \
         during it, 0 lost or repeated",
        written(&before, &after)
    );
    logs.push(counting_domain(&lv, "pn", 100));
    assert!(
        holds(&lv, &pid, &logs[2]),
        "virtlogd does not write {}",
        logs[2]
    );

    // --- Installed again with the three running: guestlogd again, live.
    let before = intact(&lv, &logs, "before installing again");
    let out = dpkg(&lv, &["-i", &virt1]);
    let after = intact(&lv, &logs, "after installing again");
    assert!(out.contains("serves in virtlogd's place"), "{out}");
    assert_eq!(daemon(&lv), "guestlogd");
    still_counting(&lv, &logs, &after, "guestlogd serving again");
    println!(
        "dpkg -i guestlogd-virtlogd again: {} lines written during it, 0 lost or repeated",
        written(&before, &after)
    );
    for vm in ["pa", "pb", "pn"] {
        lv.virsh(&["destroy", vm]);
    }
    wait_idle(&lv);

    // --- virtlogd.conf's policy on a libvirt log.
    let log = pty_domain(&lv, "flood");
    libvirt::type_into(&lv, "flood", "flood 400000");
    lv.wait_for(&log, "FLOOD DONE", LIMIT);
    let sizes: Vec<Option<u64>> = ["", ".0", ".1", ".2"]
        .iter()
        .map(|s| size(&lv, &format!("{log}{s}")))
        .collect();
    println!("64 KiB x 2: {log} and backups: {sizes:?}");
    assert!(
        sizes[..3].iter().all(|s| s.is_some_and(|s| s <= 65536)),
        "{sizes:?}"
    );
    assert_eq!(sizes[3], None, "a third backup");
    lv.virsh(&["destroy", "flood"]);

    // --- guestlogd.conf wins; logrotate leaves a large libvirt log alone.
    std::fs::write(
        lv.inside("/etc/guestlogd/guestlogd.conf"),
        "[libvirt]\nmax-size = 4194304\n",
    )
    .unwrap();
    let before = systemd::wait_status(&socket, "before reload", |_| true).await;
    lv.systemctl(&["reload", UNIT]);
    systemd::wait_status(&socket, "reload", |s| s.adoptions > before.adoptions).await;
    assert!(journal(&lv).contains("guestlogd's own configuration wins for max_size"));
    let log = pty_domain(&lv, "big");
    libvirt::type_into(&lv, "big", "flood 2400000");
    lv.wait_for(&log, "FLOOD DONE", LIMIT);
    let was = std::fs::metadata(lv.inside(&log)).unwrap();
    assert!(was.len() > 2_097_153, "{log}: {} bytes", was.len());
    let out = lv.try_run(&["logrotate", "-d", "/etc/logrotate.d/libvirtd.qemu"]);
    let libvirts = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        libvirts.contains("big-serial0.log") && libvirts.contains("log needs rotating"),
        "libvirt's rule alone would leave it too:\n{libvirts}"
    );
    let out = lv.try_run(&["logrotate", "-v", "/etc/logrotate.conf"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "logrotate: {}\n{said}", out.status);
    // Ours claims the files first; libvirt's own rule is skipped for them
    // ("ignore duplicate log entry"), not refused with an error.
    assert!(
        said.contains(
            "libvirtd.qemu:1 ignore duplicate log entry for /var/log/libvirt/qemu/big-serial0.log"
        ) && !said.lines().any(|l| l.starts_with("error")),
        "{said}"
    );
    let now = std::fs::metadata(lv.inside(&log)).unwrap();
    assert_eq!((now.ino(), now.len()), (was.ino(), was.len()), "{said}");
    let files: Vec<String> = std::fs::read_dir(lv.inside(QEMU_LOGS))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("big-serial0"))
        .collect();
    assert_eq!(files, ["big-serial0.log"], "logrotate rotated it");
    println!("logrotate left {log} ({} bytes) alone", now.len());
    lv.virsh(&["destroy", "big"]);

    // --- The upgrade while a guest counts to an attached client.
    let port = "up-serial0";
    let serial = format!(
        "<serial type='unix'><source mode='connect' path='{CONSOLES}/{port}.guest'/></serial>"
    );
    create(
        &lv,
        "up",
        &domain_with_devices("up", &cmdline(&lv), &serial),
    );
    let console_log = format!("/var/log/guestlogd/{port}.log");
    lv.wait_for(&console_log, "GUEST READY", LIMIT);
    let mut client = Client::attach(&lv.inside(&format!("{CONSOLES}/{port}.client")));
    client.wait_for("GUEST READY");
    let pid = main_pid(&lv);
    let old_binary = std::fs::metadata(lv.inside("/usr/sbin/guestlogd"))
        .unwrap()
        .ino();
    let before = systemd::wait_status(&socket, "before the upgrade", |_| true).await;
    client.type_line(&format!("count {LINES} 5"));
    lv.wait_for(&console_log, "SEQ 000100", LIMIT);
    let upgrading = Instant::now();
    let out = dpkg(&lv, &["-i", &main2, &virt2]);
    let upgraded = Instant::now();
    assert!(
        out.contains("virtlogd.service re-executed in place"),
        "{out}"
    );
    let after = systemd::wait_status(&socket, "after the upgrade", |_| true).await;
    assert_eq!(main_pid(&lv), pid, "the upgrade restarted virtlogd.service");
    assert_eq!(after.pid, before.pid);
    assert_eq!(after.adoptions, before.adoptions + 1, "one re-execution");
    let exe = lv.run(&["readlink", &format!("/proc/{pid}/exe")]);
    assert_eq!(
        exe.trim(),
        "/usr/sbin/guestlogd",
        "runs the old, deleted binary"
    );
    let running = std::fs::metadata(lv.inside(&format!("/proc/{pid}/exe")))
        .unwrap()
        .ino();
    let installed = std::fs::metadata(lv.inside("/usr/sbin/guestlogd"))
        .unwrap()
        .ino();
    assert_eq!(running, installed);
    assert_ne!(running, old_binary);
    let installed_version = lv.run(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Version}",
        "guestlogd",
        "guestlogd-virtlogd",
    ]);
    assert_eq!(installed_version, format!("{v2}{v2}"));
    client.wait_for(&format!("COUNT DONE {LINES}"));
    lv.wait_for(&console_log, &format!("COUNT DONE {LINES}"), LIMIT);
    let (missing, errors) = check_seq(&client.text(), LINES);
    assert!(
        missing.is_empty() && errors.is_empty(),
        "client: {missing:?} {errors:?}"
    );
    let (missing, errors) = check_seq(&lv.read(&console_log), LINES);
    assert!(
        missing.is_empty() && errors.is_empty(),
        "log: {missing:?} {errors:?}"
    );
    let at = client.arrivals();
    let mut gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    let during = at
        .windows(2)
        .filter(|w| w[1] >= upgrading && w[0] <= upgraded)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    gaps.sort();
    println!(
        "upgrade {v1} -> {v2} (dpkg -i took {:?}): {LINES} lines written, 0 lost or repeated \
         in the log and at the client; longest silence at the client during the upgrade \
         {during:?} (median gap {:?}, longest of the run {:?})",
        upgraded - upgrading,
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1]
    );

    // --- Removed while the console domain runs: refused, nothing changes.
    let (out, ok) = try_dpkg(&lv, &["-r", "guestlogd-virtlogd"]);
    assert!(!ok, "removed while a console runs:\n{out}");
    assert!(
        out.contains("console up-serial0")
            && out.contains("guestlogd-virtlogd stays installed")
            && out.contains("GUESTLOGD_FORCE=1"),
        "{out}"
    );
    assert_eq!(
        (main_pid(&lv), daemon(&lv)),
        (pid.clone(), "guestlogd".into())
    );
    // dpkg keeps the package, marked for removal ("deinstall").
    let state = lv.run(&["dpkg-query", "-W", "-f", "${Status}", "guestlogd-virtlogd"]);
    assert!(state.ends_with(" ok installed"), "{state}");
    client.type_line("echo still-guestlogd");
    client.wait_for("ECHO still-guestlogd");
    lv.wait_for(&console_log, "ECHO still-guestlogd", LIMIT);
    lv.virsh(&["destroy", "up"]);
    // The hook still removes the console at release.
    wait_idle(&lv);

    // --- Removed with no domain running: virtlogd is back at once.
    let out = dpkg(&lv, &["-r", "guestlogd-virtlogd"]);
    assert!(out.contains("libvirt's virtlogd (pid"), "{out}");
    assert_eq!((main_pid(&lv), daemon(&lv)), (pid, "virtlogd".into()));

    // --- Installed again with no domain running: guestlogd at once.
    let out = dpkg(&lv, &["-i", &virt2]);
    assert!(out.contains("serves in virtlogd's place"), "{out}");
    assert_eq!(daemon(&lv), "guestlogd");
    systemd::wait_status(&socket, "guestlogd again", |s| s.fd_store).await;

    // --- A malformed virtlogd.conf: the start fails, naming its line.
    let good = lv.read(VIRTLOGD_CONF);
    std::fs::write(
        lv.inside(VIRTLOGD_CONF),
        "max_size = 65536\nmax_backups =\n",
    )
    .unwrap();
    let out = lv.try_run(&["systemctl", "restart", UNIT]);
    assert!(
        !out.status.success(),
        "guestlogd started on a malformed file"
    );
    let j = journal(&lv);
    assert!(
        j.contains("bad virtlogd configuration: /etc/libvirt/virtlogd.conf:2: expecting a value"),
        "{j}"
    );
    std::fs::write(lv.inside(VIRTLOGD_CONF), good).unwrap();
    lv.systemctl(&["reset-failed", UNIT]);
    lv.systemctl(&["start", UNIT]);
    assert_eq!(daemon(&lv), "guestlogd");

    // --- Removed with no domain running: virtlogd is back at once.
    let out = dpkg(&lv, &["-r", "guestlogd-virtlogd"]);
    assert!(out.contains("libvirt's virtlogd (pid"), "{out}");
    assert_eq!(daemon(&lv), "virtlogd");

    // --- guestlogd on its own (guestlogd.service, socket-activated): a
    // package change re-executes it in place too (here back to v1).
    let before = systemd::wait_status(&socket, "guestlogd.service", |_| true).await;
    assert_eq!(
        lv.prop("guestlogd.service", "MainPID"),
        before.pid.to_string()
    );
    let out = dpkg(&lv, &["-i", &main1]);
    assert!(
        out.contains("guestlogd.service re-executed in place"),
        "{out}"
    );
    let after = systemd::wait_status(&socket, "after", |s| s.adoptions > before.adoptions).await;
    assert_eq!(
        (after.pid, after.adoptions),
        (before.pid, before.adoptions + 1)
    );
    assert_eq!(daemon(&lv), "virtlogd");
    println!("total {:?}", begin.elapsed());
}
