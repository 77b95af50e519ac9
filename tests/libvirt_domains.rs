//! A domain touches only its own consoles, with an unmodified libvirt 11.3,
//! guestlogd in virtlogd's place and the shipped hook (as in
//! tests/libvirt_consoles.rs):
//! - `web` names the console port of the running `web-2` (its name is a
//!   prefix of the other's): libvirt refuses to start it, saying whose the
//!   console is, and its release hook leaves `web-2`'s console and guest;
//! - a serial path that reaches the console directory through `..`, a
//!   symlink or `/proc/self/root` is refused, never silently ignored;
//! - a domain that asks for more consoles than `--max-consoles` (16) is
//!   refused before any is made, and a `prepare` that fails removes the
//!   consoles it had made.
//!
//! A console made by hand becomes the domain's that finds it
//! (tests/libvirt_consoles.rs, `vm2`).

#[path = "common/libvirt.rs"]
mod libvirt;
#[path = "common/libvirt_hook.rs"]
mod libvirt_hook;
#[path = "common/systemd.rs"]
mod systemd;

use libvirt::Libvirt;
use libvirt_hook::{DIR, console, consoles, create, hook, install, unix_domain, wait_console};

/// A domain with these unix serial ports (by path).
fn domain_with_ports(lv: &Libvirt, name: &str, paths: &[String]) -> String {
    let cmdline = lv.read("/var/lib/libvirt/boot/cmdline");
    let serials: String = paths
        .iter()
        .map(|p| format!("<serial type='unix'><source mode='connect' path='{p}'/></serial>"))
        .collect();
    libvirt::domain_with_devices(name, cmdline.trim(), &serials)
}

#[tokio::test]
async fn a_domain_touches_only_its_own_consoles() {
    if let Some(why) = libvirt::unavailable() {
        println!("SKIPPED: {why}");
        return;
    }
    let lv = Libvirt::boot();
    install(&lv);
    let socket = lv.inside("/run/guestlogd/io.guestlogd.Manager");
    systemd::wait_status(&socket, "guestlogd as virtlogd", |_| true).await;

    // --- web-2 runs; web names its port.
    let out = create(&lv, "web-2", &unix_domain(&lv, "web-2", "web-2-serial0"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owned = wait_console(&lv, "web-2-serial0", "has its guest", |c| {
        c.is_some_and(|c| c.guest_connected)
    })
    .await
    .unwrap();
    let domain = owned
        .domain
        .clone()
        .expect("the hook's console has a domain");
    assert_eq!(
        (domain.name.as_str(), domain.uuid),
        ("web-2", libvirt::uuid_of("web-2"))
    );
    let before = owned.bytes_from_guest;

    let web = unix_domain(&lv, "web", "web-2-serial0");
    let out = create(&lv, "web", &web);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "web started on web-2's console");
    assert!(
        err.contains("console web-2-serial0 belongs to domain web-2"),
        "virsh's error lacks the hook's refusal:\n{err}"
    );
    assert!(!lv.virsh(&["list", "--name"]).contains("web\n"));
    // libvirt runs the release hook of a domain that failed to start; and
    // a buggy libvirtd might run it any time: web-2's console stays.
    assert!(hook(&lv, &web, "web", "release", "end").status.success());
    let c = console(&lv, "web-2-serial0")
        .await
        .expect("web-2's console");
    assert!(c.guest_connected, "web-2's guest lost its console");
    assert_eq!(c.domain.map(|d| d.name).as_deref(), Some("web-2"));
    assert!(c.bytes_from_guest >= before);

    // --- Paths that reach the console directory another way.
    lv.run(&[
        "ln",
        "-s",
        &format!("{DIR}/web-2-serial0.guest"),
        "/tmp/alias.guest",
    ]);
    lv.run(&["ln", "-s", DIR, "/tmp/consoles-link"]);
    for path in [
        format!("{DIR}/../consoles/web-2-serial0.guest"),
        format!("/proc/self/root{DIR}/web-2-serial0.guest"),
        "/tmp/alias.guest".to_owned(),
        "/tmp/consoles-link/alias-serial0.guest".to_owned(),
    ] {
        let xml = domain_with_ports(&lv, "alias", std::slice::from_ref(&path));
        let out = hook(&lv, &xml, "alias", "prepare", "begin");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: not refused: {err}");
        assert!(
            err.contains("reaches guestlogd's console directory"),
            "{path}: {err}"
        );
    }
    // As libvirt shows it: the domain does not start.
    let xml = domain_with_ports(
        &lv,
        "alias",
        &[format!("{DIR}/../consoles/alias-serial0.guest")],
    );
    let out = create(&lv, "alias", &xml);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reaches guestlogd's console directory"));
    let c = console(&lv, "web-2-serial0").await.unwrap();
    assert!(c.guest_connected, "web-2's guest lost its console");

    // --- At most 16 consoles for a domain, and none made when refused.
    let ports: Vec<String> = (0..20)
        .map(|k| format!("{DIR}/many-serial{k}.guest"))
        .collect();
    let out = hook(
        &lv,
        &domain_with_ports(&lv, "many", &ports),
        "many",
        "prepare",
        "begin",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("at most 16"), "{err}");
    assert!(
        !consoles(&lv)
            .await
            .iter()
            .any(|c| c.name.starts_with("many-"))
    );

    // --- A prepare that fails removes what it made: the third console
    // belongs to another domain.
    let mut c = zlink::tokio::unix::connect(&socket).await.unwrap();
    let other = serde_json::json!({"uuid": libvirt::uuid_of("other"), "name": "other"});
    let call = zlink::Call::new(serde_json::json!({
        "method": "io.guestlogd.Manager.CreateConsole",
        "parameters": {"name": "half-serial2", "domain": other},
    }));
    let (reply, _) = c
        .call_method::<_, serde_json::Value, guestlogd::api::ManagerError>(&call, vec![])
        .await
        .unwrap();
    reply.unwrap();
    let ports: Vec<String> = (0..3)
        .map(|k| format!("{DIR}/half-serial{k}.guest"))
        .collect();
    let out = hook(
        &lv,
        &domain_with_ports(&lv, "half", &ports),
        "half",
        "prepare",
        "begin",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("console half-serial2 belongs to domain other"),
        "{err}"
    );
    let left: Vec<String> = consoles(&lv)
        .await
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.starts_with("half-"))
        .collect();
    assert_eq!(left, ["half-serial2"], "what the failed prepare left");

    lv.virsh(&["destroy", "web-2"]);
    wait_console(&lv, "web-2-serial0", "removed by its own release", |c| {
        c.is_none()
    })
    .await;
}
