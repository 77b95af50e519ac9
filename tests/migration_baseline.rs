//! The baseline for live migration: two unmodified libvirt 11.3 hosts with
//! the STOCK virtlogd (tests/common/libvirt_pair.rs: two systemd instances
//! in their own net namespaces, joined by a veth pair), a guest that prints
//! a numbered TICK line every ~100 ms on both serial ports, migrated A→B
//! (client-managed) and back B→A (`--p2p`). What it proves and measures:
//! - every migration succeeds, the destination says `running (migrated)`
//!   and the source keeps neither the domain nor a QEMU;
//! - a unix-socket listener for serial1 on each host gets every TICK
//!   exactly once across A's first stay, B and A's second stay;
//! - the serial log `<log append='off'>` is deleted and recreated by each
//!   destination, so after the round trip A's serial log has lost its boot
//!   and holds only the last stay (with a shared log directory as well):
//!   the behaviour guestlogd's consoles are to beat.
//!
//! The figures (boot, ticks per file, wall time and downtime of each
//! migration, the listeners' hand-over) are printed with --nocapture.

#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/libvirt_pair.rs"]
mod libvirt_pair;

use std::time::{Duration, Instant};

use libvirt::QEMU_LOGS;
use libvirt_pair::{
    LIMIT, Options, Pair, SerialListener, Side, check_ticks, tick_domain_xml, ticks,
};

const NAME: &str = "mig1";
const SOCK: &str = "/run/migcon.sock";

/// Ticks in each stay before the guest moves on (~2 s).
const STAY: usize = 20;

/// Waits (up to LIMIT) until `side`'s serial log holds `n` ticks; returns
/// its text then. Each arrival recreates the file, so these are the ticks
/// of the current stay.
fn wait_ticks(pair: &Pair, side: Side, n: usize) -> String {
    let path = format!("{QEMU_LOGS}/{NAME}-serial0.log");
    let begin = Instant::now();
    loop {
        let text = pair.side(side).read(&path);
        if ticks(&text).len() >= n {
            return text;
        }
        assert!(
            begin.elapsed() < LIMIT,
            "{}: not {n} ticks in {path}; it ends with:\n{}",
            side.name(),
            &text[text.floor_char_boundary(text.len().saturating_sub(500))..]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_tick(text: &str) -> u32 {
    *ticks(text).last().expect("no tick")
}

fn first_tick(text: &str) -> u32 {
    *ticks(text).first().expect("no tick")
}

/// `to` in ms after `from` (negative: before), or "never".
fn ms(from: Instant, to: Option<Instant>) -> String {
    to.map_or("never".into(), |t| match t.checked_duration_since(from) {
        Some(d) => format!("+{} ms", d.as_millis()),
        None => format!("-{} ms", from.duration_since(t).as_millis()),
    })
}

fn round_trip(shared_logs: bool) {
    let begin = Instant::now();
    if let Some(why) = libvirt_pair::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let variant = if shared_logs {
        "shared log dir"
    } else {
        "own log dirs"
    };
    let pair = Pair::boot(&Options { shared_logs });
    let serial_log = format!("{QEMU_LOGS}/{NAME}-serial0.log");
    let domain_log = format!("{QEMU_LOGS}/{NAME}.log");
    // Both listen before the start and the migrations: QEMU connects out
    // at start (A) and in Prepare (each destination).
    let listen_a = SerialListener::bind(pair.a(), SOCK);
    let listen_b = SerialListener::bind(pair.b(), SOCK);

    let xml = tick_domain_xml(pair.a(), NAME, SOCK);
    std::fs::write(pair.a().host().join(format!("{NAME}.xml")), xml).unwrap();
    let t = Instant::now();
    pair.virsh(Side::A, &["create", &format!("/host/{NAME}.xml")]);
    wait_ticks(&pair, Side::A, 1);
    let first_tick_after = t.elapsed();
    let a_before = wait_ticks(&pair, Side::A, STAY);
    assert!(a_before.contains("GUEST READY"), "no boot:\n{a_before}");

    let ab = pair.migrate(NAME, Side::A, false);
    // B's Prepare recreated the file it names: in a shared directory, A's
    // first stay is already gone from it.
    let a_on_leaving = pair.a().read(&serial_log);
    let b_before = wait_ticks(&pair, Side::B, STAY);
    // Without sharing, A's serial log stays as QEMU left it until the guest
    // comes back: read it now, whole (virtlogd had QEMU's EOF long ago).
    let a_first_stay = pair.a().read(&serial_log);

    let ba = pair.migrate(NAME, Side::B, true);
    // Without sharing, B's whole stay (QEMU's EOF came in Confirm); with
    // it, A's Prepare has already recreated the file: `b_before` is B's.
    let b_on_leaving = pair.b().read(&serial_log);
    let b_stay = if shared_logs {
        &b_before
    } else {
        &b_on_leaving
    };
    wait_ticks(&pair, Side::A, STAY);
    // Destroyed before the final reads: QEMU's EOF ends both the log and
    // the listener's connection, so nothing is half-read.
    pair.virsh(Side::A, &["destroy", NAME]);
    let a_after = pair.a().read(&serial_log);
    let b_after = pair.b().read(&serial_log);

    // --- The listeners: every tick exactly once, in stay order.
    let (ca, cb) = (listen_a.connections(), listen_b.connections());
    assert_eq!(ca.len(), 2, "connections to A's listener: A's two stays");
    assert_eq!(cb.len(), 1, "connections to B's listener");
    let heard = [ca[0].text(), cb[0].text(), ca[1].text()];
    let report = check_ticks(&heard.each_ref().map(String::as_str));
    assert!(report.exactly_once(), "listeners: {report}");
    assert_eq!(report.first, Some(1), "listeners: {report}");
    for (i, (n, _, _)) in report.texts.iter().enumerate() {
        assert!(*n > 0, "listener stay {i} heard no tick: {report}");
    }
    let stays = &report.texts;
    assert!(
        stays[0].2 < stays[1].1 && stays[1].2 < stays[2].1,
        "stays out of order: {report}"
    );
    assert!(ca[0].text().contains("GUEST READY"));

    // --- The serial logs: each destination deleted and recreated its file.
    let (log_report, files) = if shared_logs {
        // One file, recreated by each destination's Prepare: right after
        // A→B it held nothing of A's stay, before B→A only B's stay, at the
        // end only A's second stay. A's ticks after `a_before` went to the
        // unlinked inode A's virtlogd still wrote: in no file at all.
        let inode = |lv: &libvirt::Libvirt| {
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(lv.inside(&serial_log)).unwrap())
        };
        assert_eq!(inode(pair.a()), inode(pair.b()), "not one file");
        assert!(
            !a_on_leaving.contains("GUEST READY")
                && ticks(&a_on_leaving)
                    .iter()
                    .all(|&t| t > last_tick(&a_before)),
            "A's stay still in the file after A→B:\n{a_on_leaving}"
        );
        assert!(
            first_tick(b_stay) > last_tick(&a_before) && !b_stay.contains("GUEST READY"),
            "B's stay begins with A's:\n{b_stay}"
        );
        assert!(
            ticks(&b_on_leaving).iter().all(|&t| t > last_tick(b_stay)),
            "B's stay still in the file after B→A:\n{b_on_leaving}"
        );
        let r = check_ticks(&[&a_before, b_stay, &a_after]);
        assert_eq!(a_after, b_after, "one shared file");
        (r, "A before A→B, the file before B→A, the file at the end")
    } else {
        assert_eq!(a_on_leaving, a_first_stay, "A's log changed while away");
        assert_eq!(b_on_leaving, b_after, "B's log changed after it left");
        let r = check_ticks(&[&a_first_stay, &b_after, &a_after]);
        // Every line reached exactly one log: none lost, repeated or split
        // at either switch-over.
        assert!(r.exactly_once(), "serial logs: {r}");
        assert_eq!(r.first, Some(1), "serial logs: {r}");
        assert!(a_first_stay.contains("Linux version") && a_first_stay.contains("GUEST READY"));
        assert!(
            !b_after.contains("GUEST READY"),
            "B's log has a boot:\n{b_after}"
        );
        (r, "A after A→B, B, A after B→A")
    };
    // The measured behaviour guestlogd's consoles are to fix: A's serial
    // log no longer has the boot, only the ticks since the guest came back.
    assert!(
        !a_after.contains("GUEST READY") && !a_after.contains("Linux version"),
        "A's serial log kept its boot after the round trip:\n{a_after}"
    );
    assert!(
        first_tick(&a_after) > last_tick(b_stay),
        "A's serial log holds ticks from before B→A:\n{a_after}"
    );

    // --- The domain logs: appended on both sides, never truncated.
    let (dom_a, dom_b) = (pair.a().read(&domain_log), pair.b().read(&domain_log));
    let headers = |t: &str| t.matches("starting up libvirt version").count();
    for (side, text) in [(Side::A, &dom_a), (Side::B, &dom_b)] {
        assert!(
            text.contains("initiating migration")
                && text.contains("shutting down, reason=migrated"),
            "{}'s {domain_log}:\n{text}",
            side.name()
        );
        assert!(
            text.contains("-incoming defer"),
            "{}: no incoming",
            side.name()
        );
    }
    if shared_logs {
        assert_eq!(dom_a, dom_b);
        assert_eq!(headers(&dom_a), 3, "create, B's and A's incoming");
    } else {
        assert_eq!((headers(&dom_a), headers(&dom_b)), (2, 1));
    }

    // --- Figures.
    eprintln!("[{variant}] boot both and link: {:?}", pair.booted);
    eprintln!(
        "[{variant}] virsh create until the first tick in A's serial log: {first_tick_after:?}"
    );
    eprintln!("[{variant}] {ab}");
    eprintln!("[{variant}] {ba}");
    eprintln!("[{variant}] listeners (A stay 1, B, A stay 2): {report}");
    eprintln!(
        "[{variant}] serial logs ({files}): {log_report}; {} ticks in none of them",
        log_report.missing.len()
    );
    let first_stay = if shared_logs {
        &a_before
    } else {
        &a_first_stay
    };
    eprintln!(
        "[{variant}] A's serial log: {} bytes with the boot before A→B; after the round \
         trip {} bytes, ticks {}..{} of the {} the guest printed, no boot",
        first_stay.len(),
        a_after.len(),
        first_tick(&a_after),
        last_tick(&a_after),
        report.last.unwrap()
    );
    for (what, src, dst) in [("A→B", &ca[0], &cb[0]), ("B→A", &cb[0], &ca[1])] {
        // Relative to the destination's connect, made in its Prepare.
        eprintln!(
            "[{variant}] {what} serial1: destination connected at 0, source EOF {}, \
             destination first byte {}",
            ms(dst.connected, src.eof),
            ms(dst.connected, dst.first_byte)
        );
    }
    drop(pair);
    eprintln!("[{variant}] total, stop included: {:?}", begin.elapsed());
}

#[test]
fn round_trip_with_own_log_dirs() {
    round_trip(false);
}

#[test]
fn round_trip_with_a_shared_log_dir() {
    round_trip(true);
}
