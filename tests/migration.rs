//! A domain's logs and console history survive live migration, both ways
//! and on shared storage: two unmodified libvirt 11.3 hosts under systemd
//! 257 (tests/common/libvirt_pair.rs: own net namespaces joined by a veth
//! pair, distinct host UUIDs), guestlogd in virtlogd's place on both with
//! the shipped hook (tests/common/libvirt_hook.rs). A TCG guest prints a
//! numbered TICK line every ~100 ms to a pty serial port logged with
//! `<log append='off'>` (serial0, libvirt's protocol) and to a unix serial
//! port served by a guestlogd console the hook makes (serial1). It goes
//! A→B (client-managed) and back B→A (`--p2p`); then:
//! - A's serial log keeps its boot and first stay, then `migrated out`,
//!   `migrated in` and the stay after the return; B's holds its stay
//!   between its own two lines; every TICK is in exactly one stay, none
//!   lost or repeated (the same for the consoles' logs);
//! - the console's boot log on A still holds the original boot, and B has
//!   none: the guest's connection in each Prepare is not a boot;
//! - `guestlogctl attach` and `tail -f` on the source end with "domain
//!   mig1 migrated out";
//! - neither the domain XML nor the domain logs say `tainted`;
//! - with /var/log/libvirt/qemu shared by both hosts, one serial log holds
//!   every tick exactly once, in order, with the lines where it moved.
//!
//! The figures (each migration's wall time and downtime, the ticks per
//! stay, lost and repeated) are printed with --nocapture.

#[path = "common/collect.rs"]
mod collect;
#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/libvirt_hook.rs"]
mod libvirt_hook;
#[path = "common/libvirt_pair.rs"]
mod libvirt_pair;
#[path = "common/systemd.rs"]
mod systemd;

use collect::collect;
use std::{
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::sleep,
    time::{Duration, Instant},
};

use libvirt::{HARNESS, Libvirt, QEMU_LOGS};
use libvirt_hook::{DIR, LOGS};
use libvirt_pair::{LIMIT, Options, Pair, Side, TickReport, check_ticks, tick_domain_xml, ticks};

const NAME: &str = "mig1";
const CONSOLE: &str = "mig1-serial1";
/// Ticks in each stay before the guest moves on (~2 s).
const STAY: usize = 20;
const OUT: &str = "[guestlogd: domain mig1 migrated out]";
const IN: &str = "[guestlogd: domain mig1 migrated in]";

/// A `guestlogctl` command inside one side, its output collected.
struct Ctl {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    what: String,
}

impl Ctl {
    fn start(lv: &Libvirt, args: &[&str]) -> Self {
        let mut child = Command::new(format!("{HARNESS}/ctl.sh"))
            .arg(lv.pid1.to_string())
            .arg("/host/guestlogctl")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Self {
            child,
            out,
            err,
            what: format!("guestlogctl {args:?}"),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + LIMIT;
        while !self.text().contains(what) {
            assert!(
                Instant::now() < deadline,
                "{}: no {what:?}; stderr {:?}",
                self.what,
                self.stderr()
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Waits for it to exit by itself; its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The readers hold what was written before the exit.
                sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} never ended; it printed:\n{}\nstderr {:?}",
                self.what,
                tail(&self.text()),
                self.stderr()
            );
            sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> &str {
    &text[text.floor_char_boundary(text.len().saturating_sub(800))..]
}

/// Waits (up to LIMIT) until the file inside `side` holds `n` ticks after
/// its last `IN` line (or from its start); returns its text then.
fn wait_stay(pair: &Pair, side: Side, path: &str, n: usize) -> String {
    let begin = Instant::now();
    loop {
        let text = pair.side(side).read(path);
        let stay = text.rsplit_once(IN).map_or(text.as_str(), |(_, s)| s);
        if ticks(stay).len() >= n {
            return text;
        }
        assert!(
            begin.elapsed() < LIMIT,
            "{}: not {n} ticks in this stay in {path}; it ends with:\n{}",
            side.name(),
            tail(&text)
        );
        sleep(Duration::from_millis(50));
    }
}

/// The parts of a log between its migration lines, in order; each line
/// must be a line of its own.
fn stays(text: &str) -> Vec<String> {
    for notice in [OUT, IN] {
        for (at, _) in text.match_indices(notice) {
            assert!(
                at == 0 || text.as_bytes()[at - 1] == b'\n',
                "{notice} does not start a line:\n{text}"
            );
            assert_eq!(
                text.as_bytes().get(at + notice.len()),
                Some(&b'\n'),
                "{notice} is not a line of its own:\n{text}"
            );
        }
    }
    let (out, inn) = (format!("{OUT}\n"), format!("{IN}\n"));
    text.split(out.as_str())
        .flat_map(|part| part.split(inn.as_str()))
        .map(str::to_owned)
        .collect()
}

/// Every tick in exactly one of `texts`, in order, from 1; the report.
fn exactly_once(what: &str, texts: &[&str]) -> TickReport {
    let report = check_ticks(texts);
    assert!(report.exactly_once(), "{what}: {report}");
    assert_eq!(report.first, Some(1), "{what}: {report}");
    assert!(report.disordered.is_empty(), "{what}: {report}");
    for (i, (n, _, _)) in report.texts.iter().enumerate() {
        assert!(*n > 0, "{what}: stay {i} has no tick: {report}");
    }
    report
}

fn setup(shared_logs: bool) -> Option<Pair> {
    if let Some(why) = libvirt_pair::unavailable() {
        println!("SKIPPED: {why}");
        return None;
    }
    let pair = Pair::boot(&Options { shared_logs });
    for side in [Side::A, Side::B] {
        libvirt_hook::install(pair.side(side));
    }
    Some(pair)
}

fn create(pair: &Pair) {
    let xml = tick_domain_xml(pair.a(), NAME, &format!("{DIR}/{CONSOLE}.guest"));
    std::fs::write(pair.a().host().join(format!("{NAME}.xml")), xml).unwrap();
    pair.virsh(Side::A, &["create", &format!("/host/{NAME}.xml")]);
}

#[test]
fn a_round_trip_keeps_every_log_and_console_history() {
    let begin = Instant::now();
    let Some(pair) = setup(false) else { return };
    let serial = format!("{QEMU_LOGS}/{NAME}-serial0.log");
    let domain_log = format!("{QEMU_LOGS}/{NAME}.log");
    let console_log = format!("{LOGS}/{CONSOLE}.log");
    let boot_log = format!("{LOGS}/{CONSOLE}.boot.log");
    create(&pair);
    wait_stay(&pair, Side::A, &serial, STAY);
    let boot_before = pair.a().read(&boot_log);
    assert!(
        boot_before.contains("GUEST READY"),
        "no boot in A's boot log:\n{boot_before}"
    );

    // Clients on the source, told at the end.
    let mut attach = Ctl::start(pair.a(), &["attach", CONSOLE]);
    let mut follow = Ctl::start(pair.a(), &["tail", "-f", &serial]);
    attach.wait_for("TICK");
    follow.wait_for("TICK");

    let ab = pair.migrate(NAME, Side::A, false);
    let status = attach.wait_exit();
    assert!(status.success(), "attach: {status}; {}", attach.stderr());
    let seen = attach.text();
    assert!(
        seen.trim_end().ends_with(OUT),
        "attach on the source did not end with {OUT:?}:\n{}",
        tail(&seen)
    );
    let status = follow.wait_exit();
    assert!(status.success(), "tail -f: {status}; {}", follow.stderr());
    assert!(
        follow.text().trim_end().ends_with(OUT)
            && follow.stderr().contains("domain mig1 migrated out"),
        "tail -f on the source: {:?}\n{}",
        follow.stderr(),
        tail(&follow.text())
    );
    wait_stay(&pair, Side::B, &serial, STAY);
    wait_stay(&pair, Side::B, &console_log, STAY);

    let ba = pair.migrate(NAME, Side::B, true);
    wait_stay(&pair, Side::A, &serial, STAY);
    wait_stay(&pair, Side::A, &console_log, STAY);
    // The hook printed nothing at `migrate begin`: the XML is as it was.
    let xml = pair.virsh(Side::A, &["dumpxml", NAME]);
    assert!(
        xml.contains("append='off'") && !xml.contains("tainted"),
        "{xml}"
    );
    // Destroyed before the final reads: QEMU's EOF ends every log.
    pair.virsh(Side::A, &["destroy", NAME]);

    // --- serial0 (libvirt's protocol) and serial1 (the console): on A
    // the boot and first stay, out, in, the stay after the return; on B
    // in, its stay, out.
    let mut reports = Vec::new();
    for (what, path) in [("serial log", &serial), ("console log", &console_log)] {
        let (a, b) = (pair.a().read(path), pair.b().read(path));
        let (sa, sb) = (stays(&a), stays(&b));
        assert_eq!(sa.len(), 3, "A's {what} (out, in):\n{a}");
        assert_eq!(sb.len(), 3, "B's {what} (in, out):\n{b}");
        assert!(
            a.contains(&format!("{OUT}\n{IN}\n")),
            "A's {what}: out then in:\n{a}"
        );
        assert!(
            sb[0].is_empty() && sb[2].is_empty(),
            "B's {what} begins with in and ends with out:\n{b}"
        );
        assert!(sa[0].contains("GUEST READY"), "A's {what} lost its boot");
        let report = exactly_once(what, &[&sa[0], &sb[1], &sa[2]]);
        reports.push((what, report));
    }
    // The boot log: A's first boot still, nothing of B's stay on B.
    let boot_after = pair.a().read(&boot_log);
    assert!(
        boot_after.starts_with(&boot_before) && boot_after.contains("GUEST READY"),
        "A's boot log changed:\n{}",
        tail(&boot_after)
    );
    let boot_ticks = ticks(&boot_after);
    let first_stay_end = reports[1].1.texts[0].2;
    assert!(
        boot_ticks.last().copied() <= first_stay_end,
        "A's boot log has ticks from after the guest left: {boot_ticks:?}"
    );
    assert!(
        ticks(&pair.b().read(&boot_log)).is_empty(),
        "B's boot log took the migrated guest's output"
    );
    // libvirt's own lines, untainted.
    for side in [Side::A, Side::B] {
        let text = pair.side(side).read(&domain_log);
        assert!(!text.contains("tainted"), "{}:\n{text}", side.name());
        assert!(
            text.contains(IN) && text.contains(OUT),
            "{}'s domain log has no migration line:\n{text}",
            side.name()
        );
    }

    eprintln!("boot both, link and install guestlogd: {:?}", pair.booted);
    eprintln!("{ab}");
    eprintln!("{ba}");
    for (what, report) in &reports {
        eprintln!("{what}s (A's first stay, B, A's second stay): {report}");
    }
    drop(pair);
    eprintln!("total, stop included: {:?}", begin.elapsed());
}

#[test]
fn hosts_sharing_their_qemu_logs_keep_one_file_in_order() {
    let begin = Instant::now();
    let Some(pair) = setup(true) else { return };
    let serial = format!("{QEMU_LOGS}/{NAME}-serial0.log");
    create(&pair);
    wait_stay(&pair, Side::A, &serial, STAY);
    let ab = pair.migrate(NAME, Side::A, false);
    wait_stay(&pair, Side::B, &serial, STAY);
    let ba = pair.migrate(NAME, Side::B, true);
    wait_stay(&pair, Side::A, &serial, STAY);
    pair.virsh(Side::A, &["destroy", NAME]);
    let text = pair.a().read(&serial);
    assert_eq!(text, pair.b().read(&serial), "one file");
    // Two of each line. In one shared file the source's `migrated out`
    // goes where its QEMU's pipe ends, which may follow the destination's
    // `migrated in` and first lines: each host's lines are in its own
    // order, and every tick is in the file once, in order.
    let marks = (text.matches(OUT).count(), text.matches(IN).count());
    assert_eq!(marks, (2, 2), "two outs and two ins:\n{text}");
    let parts = stays(&text);
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.trim().is_empty())
        .collect();
    assert!(parts[0].contains("GUEST READY"), "the boot is gone");
    // The parts are the file less the migration's lines.
    let report = exactly_once("the shared serial log", &parts);
    eprintln!("{ab}");
    eprintln!("{ba}");
    eprintln!("shared serial log (A, B, A): {report}");
    drop(pair);
    eprintln!("total, stop included: {:?}", begin.elapsed());
}
