//! libvirt's QEMU hook for guestlogd's consoles:
//! `guestlogctl hook [OPTIONS] -- DOMAIN OPERATION SUBOP EXTRA`, with the
//! domain XML on stdin, run by libvirt from /etc/libvirt/hooks/qemu.d/.
//!
//! At `prepare begin` (before libvirt checks that a unix serial socket
//! exists) it creates a console for every `<serial>` and `<console>` of
//! `type='unix'` whose source has `mode='connect'` and a path
//! `RUNDIR/consoles/NAME.guest`; at `release end` it removes them (their
//! logs stay), saying so to their clients when EXTRA is `migrated`.
//!
//! Live migration: at `migrate begin`, which only the destination gets,
//! it tells guestlogd that the domain is arriving (ExpectMigration), so
//! that its logs and consoles keep their history (`logs::migration`); at
//! `started begin` and `release end` that the arrival is over
//! (EndMigration). Everything else it ignores, silently. libvirt reads a
//! hook's stdout as a new domain XML at `migrate` and `restore`, so this
//! hook never prints on stdout: the XML stays as it is, untainted.
//!
//! The rules, so that a domain touches only its own consoles:
//! - Each console is made with the domain's UUID and name (`domain`), and
//!   that decides who owns it: `prepare` refuses a console that exists and
//!   belongs to another domain (or to none), and `release` removes only the
//!   consoles the domain owns. A name that merely starts with the domain's
//!   name decides nothing.
//! - NAME must be a valid console name that starts with `DOMAIN-`
//!   (`DOMAIN-serial0` by convention); a path in the console directory that
//!   breaks this is refused, and libvirt does not start the domain.
//! - A path that reaches the console directory any other way than as
//!   `RUNDIR/consoles/NAME.guest` (through `..`, a symlink, or an alias
//!   such as `/proc/self/root/…`) is refused: QEMU would connect through it
//!   all the same, so it is never ignored.
//! - A domain gets at most `--max-consoles` consoles (16); a domain that
//!   asks for more is refused before any is made, and a `prepare` that
//!   fails removes the consoles it made.
//! - The sockets belong to the user QEMU runs as: the `<label>` of the
//!   domain's `<seclabel model='dac'>` if it has one (`+UID:+GID` or
//!   `USER:GROUP`), else `user`/`group` of qemu.conf, else libvirt's
//!   Debian default `libvirt-qemu`. `--owner` overrides all of that.
//! - A console that exists already is fine (`prepare` after a crash, or a
//!   second port on the same path); one that is gone at `release` is too.
//! - A refusal is one line on stderr and exit status 1; libvirt puts it in
//!   the error of `virsh start`. Malformed XML is refused the same way.
//! - The whole run is bounded (`--timeout`, 5 s): connecting retries while
//!   the socket is missing or refuses, which covers a guestlogd that is
//!   being socket-activated or restarted, and gives up at the deadline.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use guestlogd::{api::ManagerError, daemon::SOCKET, logs::name::LogName};
use serde_json::json;
use tokio::io::AsyncReadExt;
use zlink::tokio::unix::{Connection, Stream};

use crate::cli::HookArgs;

/// The most XML read from stdin; libvirt's own domain XML is far smaller.
const MAX_XML: u64 = 16 * 1024 * 1024;

/// Why the hook refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read the domain XML from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("the domain XML on stdin is larger than {MAX_XML} bytes")]
    TooLarge,
    #[error("guestlogd consoles: the domain XML of {domain} is malformed")]
    Xml {
        domain: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("guestlogd consoles: the XML of {domain} is not a <domain> (its root is <{root}>)")]
    NotDomain { domain: String, root: String },
    #[error("guestlogd consoles: domain {domain}: {reason}")]
    Refused { domain: String, reason: String },
    #[error(
        "guestlogd consoles: cannot tell QEMU's {what} {name:?}; set it in qemu.conf or the domain's <seclabel model='dac'>"
    )]
    Owner { what: &'static str, name: String },
    #[error("guestlogd consoles: guestlogd did not answer at {} within {secs} s", path.display())]
    Timeout { path: PathBuf, secs: u64 },
    #[error("guestlogd consoles: cannot reach guestlogd at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guestlogd consoles: the call to guestlogd failed")]
    Call(#[source] zlink::Error),
    #[error("guestlogd consoles: guestlogd refused console {name}: {error:?}")]
    Daemon { name: String, error: ManagerError },
    #[error("guestlogd: domain {domain}: guestlogd refused its migration: {error:?}")]
    Migration { domain: String, error: ManagerError },
    #[error(
        "guestlogd consoles: domain {domain}: console {name} belongs to {owner}; remove it (guestlogctl remove {name}) if that is stale"
    )]
    Owned {
        domain: String,
        name: String,
        owner: String,
    },
}

/// A console the domain's XML asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub path: String,
}

/// What the domain XML says, for this hook.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub consoles: Vec<Wanted>,
    /// The DAC label QEMU runs under, e.g. "+64055:+64055".
    pub dac_label: Option<String>,
    /// The domain's UUID, from `<uuid>`.
    pub uuid: Option<String>,
}

/// What the hook does for libvirt's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `migrate begin`: the domain is arriving by live migration.
    Arriving,
    /// `prepare begin`: its consoles are made.
    Prepare,
    /// `started begin`: its arrival, if it was arriving, is over.
    Started,
    /// `release end`: its consoles go (and its arrival, if it failed);
    /// `true` when it left by migration.
    Release(bool),
}

pub async fn run(runtime_dir: &Path, a: HookArgs) -> Result<(), HookError> {
    let step = match (a.operation.as_str(), a.subop.as_str()) {
        ("migrate", "begin") => Step::Arriving,
        ("prepare", "begin") => Step::Prepare,
        ("started", "begin") => Step::Started,
        ("release", "end") => Step::Release(a.extra.as_deref() == Some("migrated")),
        _ => return Ok(()),
    };
    let secs = a.timeout;
    let socket = runtime_dir.join(SOCKET);
    let work = async {
        let xml = read_stdin().await?;
        let plan = match plan(&xml, &a.domain, &runtime_dir.join("consoles")) {
            Ok(plan) => plan,
            // A domain that is running is not refused for its XML: an
            // arrival ends by itself in time.
            Err(_) if step == Step::Started => return Ok(()),
            Err(e) => return Err(e),
        };
        let creating = match step {
            Step::Arriving => return migration(&socket, &a, &plan, step).await,
            Step::Prepare => true,
            Step::Started | Step::Release(_) => {
                // The arrival is over (at release: it failed). Said on
                // stderr if guestlogd does not hear it: the arrival ends
                // by itself in time, and the domain must not pay for it.
                if let Err(e) = migration(&socket, &a, &plan, Step::Started).await {
                    eprintln!("{}", guestlogd::error_chain(&e));
                }
                if step == Step::Started {
                    return Ok(());
                }
                false
            }
        };
        if plan.consoles.is_empty() {
            return Ok(());
        }
        let refuse = |reason: String| HookError::Refused {
            domain: a.domain.clone(),
            reason,
        };
        let uuid = plan
            .uuid
            .clone()
            .ok_or_else(|| refuse("the domain XML has no <uuid>".into()))?;
        let mut conn = connect(&socket).await?;
        if creating {
            if plan.consoles.len() > a.max_consoles {
                return Err(refuse(format!(
                    "{} consoles asked for; a domain may have at most {} (--max-consoles)",
                    plan.consoles.len(),
                    a.max_consoles
                )));
            }
            let (uid, gid) = match a.owner {
                Some((uid, Some(gid))) => (uid, gid),
                Some((uid, None)) => (uid, owner(&plan, &a.qemu_conf)?.1),
                None => owner(&plan, &a.qemu_conf)?,
            };
            let mut made = Vec::new();
            for c in &plan.consoles {
                match create(&mut conn, c, &a, &uuid, uid, gid).await {
                    Ok(new) => {
                        if new {
                            made.push(c);
                        }
                    }
                    Err(e) => {
                        // The domain will not start: what this run made goes.
                        for c in made {
                            let _ = remove(&mut conn, c, &a.domain, &uuid, false).await;
                        }
                        return Err(e);
                    }
                }
            }
        } else {
            let migrated = step == Step::Release(true);
            for c in &plan.consoles {
                remove(&mut conn, c, &a.domain, &uuid, migrated).await?;
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(secs), work)
        .await
        .unwrap_or(Err(HookError::Timeout { path: socket, secs }))
}

async fn read_stdin() -> Result<String, HookError> {
    let mut xml = String::new();
    tokio::io::stdin()
        .take(MAX_XML + 1)
        .read_to_string(&mut xml)
        .await
        .map_err(HookError::Stdin)?;
    if xml.len() as u64 > MAX_XML {
        return Err(HookError::TooLarge);
    }
    Ok(xml)
}

/// Connects, retrying while nothing listens yet: a guestlogd that is being
/// started (by its socket unit or a restart) answers a moment later. The
/// caller's deadline ends the retries.
async fn connect(path: &Path) -> Result<Connection, HookError> {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    loop {
        match tokio::net::UnixStream::connect(path).await {
            Ok(s) => {
                let s = Stream::try_from(s).map_err(HookError::Call)?;
                return Ok(Connection::new(s));
            }
            Err(e) if matches!(e.kind(), NotFound | ConnectionRefused) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => {
                return Err(HookError::Connect {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Makes a console for the domain; true if it is new, false if the domain
/// had it already (a `prepare` after a crash, or a second port on the same
/// path).
async fn create(
    conn: &mut Connection,
    c: &Wanted,
    a: &HookArgs,
    uuid: &str,
    uid: u32,
    gid: u32,
) -> Result<bool, HookError> {
    let mut params = json!({
        "name": c.name,
        "owner": {"uid": uid, "gid": gid, "mode": 0o600},
        "viewers": !a.no_viewers,
        "writers": a.writers.as_str(),
        "bootBytes": a.boot_bytes,
        "domain": {"uuid": uuid, "name": a.domain},
        "maxRate": a.max_rate,
        "maxBurst": a.max_burst,
    });
    if a.journal {
        params["journal"] = json!(true);
        params["vm"] = json!({"name": a.domain, "uuid": uuid});
    }
    match call(conn, "CreateConsole", params).await? {
        Ok(()) => Ok(true),
        Err(ManagerError::ConsoleExists { .. }) => Ok(false),
        Err(ManagerError::ConsoleOwned { owner, .. }) => Err(HookError::Owned {
            domain: a.domain.clone(),
            name: c.name.clone(),
            owner: owner.map_or("no domain (it was made by hand)".into(), |o| {
                format!("domain {} ({})", o.name, o.uuid)
            }),
        }),
        Err(error) => Err(HookError::Daemon {
            name: c.name.clone(),
            error,
        }),
    }
}

/// Tells guestlogd that the domain is arriving by live migration
/// (`migrate begin`), or that its arrival is over (`started begin`).
/// libvirt reads what a hook prints at `migrate` as a new domain XML:
/// nothing is printed, so the XML stays as it is and untainted. A domain
/// without a UUID (libvirt always gives one) has nothing to say.
async fn migration(socket: &Path, a: &HookArgs, plan: &Plan, step: Step) -> Result<(), HookError> {
    let Some(uuid) = &plan.uuid else {
        return Ok(());
    };
    let mut conn = connect(socket).await?;
    let (method, params) = match step {
        Step::Arriving => (
            "ExpectMigration",
            json!({"domain": {"uuid": uuid, "name": a.domain}}),
        ),
        _ => ("EndMigration", json!({"domainUuid": uuid})),
    };
    match call(&mut conn, method, params).await? {
        Ok(()) => Ok(()),
        Err(error) => Err(HookError::Migration {
            domain: a.domain.clone(),
            error,
        }),
    }
}

/// Removes the domain's console; one that is gone, or that belongs to
/// another domain, is left alone (said on stderr for the latter).
async fn remove(
    conn: &mut Connection,
    c: &Wanted,
    domain: &str,
    uuid: &str,
    migrated: bool,
) -> Result<(), HookError> {
    let mut params = json!({"name": c.name, "domainUuid": uuid});
    if migrated {
        params["migrated"] = json!(true);
    }
    match call(conn, "RemoveConsole", params).await? {
        Ok(()) | Err(ManagerError::NoSuchConsole { .. }) => Ok(()),
        Err(ManagerError::ConsoleOwned { .. }) => {
            eprintln!(
                "guestlogd consoles: domain {domain}: console {} belongs to another domain; left alone",
                c.name
            );
            Ok(())
        }
        Err(error) => Err(HookError::Daemon {
            name: c.name.clone(),
            error,
        }),
    }
}

async fn call(
    conn: &mut Connection,
    method: &str,
    parameters: serde_json::Value,
) -> Result<Result<(), ManagerError>, HookError> {
    let call = zlink::Call::new(json!({
        "method": format!("io.guestlogd.Manager.{method}"),
        "parameters": parameters,
    }));
    let (reply, _) = conn
        .call_method::<_, serde_json::Value, ManagerError>(&call, vec![])
        .await
        .map_err(HookError::Call)?;
    Ok(reply.map(|_| ()))
}

/// Reads the consoles and the DAC label out of a domain XML.
pub fn plan(xml: &str, domain: &str, console_dir: &Path) -> Result<Plan, HookError> {
    let doc = roxmltree::Document::parse(xml).map_err(|source| HookError::Xml {
        domain: domain.to_owned(),
        source,
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(HookError::NotDomain {
            domain: domain.to_owned(),
            root: root.tag_name().name().to_owned(),
        });
    }
    let refuse = |reason: String| HookError::Refused {
        domain: domain.to_owned(),
        reason,
    };
    let mut out = Plan::default();
    let devices = root
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|d| d.children());
    for dev in devices.filter(|n| n.has_tag_name("serial") || n.has_tag_name("console")) {
        if dev.attribute("type") != Some("unix") {
            continue;
        }
        let Some(source) = dev.children().find(|n| n.has_tag_name("source")) else {
            continue;
        };
        // libvirt's default mode for a unix source is connect.
        if source.attribute("mode").unwrap_or("connect") != "connect" {
            continue;
        }
        let Some(path) = source.attribute("path") else {
            continue;
        };
        let p = Path::new(path);
        if p.parent() != Some(console_dir) {
            if reaches(p, console_dir) {
                return Err(refuse(format!(
                    "{path} reaches guestlogd's console directory through \"..\", a symlink \
                     or an alias; name it as {}/NAME.guest",
                    console_dir.display()
                )));
            }
            continue;
        }
        let file = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        let Some(name) = file.strip_suffix(".guest") else {
            return Err(refuse(format!(
                "{path} is in guestlogd's console directory but is not NAME.guest"
            )));
        };
        if let Err(e) = LogName::new_plain(name) {
            return Err(refuse(format!(
                "{path}: {name:?} is not a console name: {e}"
            )));
        }
        if !name.starts_with(&format!("{domain}-")) {
            return Err(refuse(format!(
                "{path}: a console of this domain must be named {domain}-… (e.g. {domain}-serial0.guest)"
            )));
        }
        // <console> repeats the first <serial> on x86: one console each.
        if !out.consoles.iter().any(|c| c.name == name) {
            out.consoles.push(Wanted {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
    }
    out.uuid = root
        .children()
        .find(|n| n.has_tag_name("uuid"))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_ascii_lowercase());
    out.dac_label = root
        .children()
        .find(|n| n.has_tag_name("seclabel") && n.attribute("model") == Some("dac"))
        .filter(|n| n.attribute("type") != Some("none"))
        .and_then(|n| n.children().find(|c| c.has_tag_name("label")))
        .and_then(|l| l.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    Ok(out)
}

/// Whether `path`, named other than as `console_dir/FILE`, would reach a
/// file in `console_dir` all the same: through `..` or `.`, a symlink on the
/// way (the file itself included), or an alias of a directory such as
/// `/proc/self/root`. Judged both by the names alone and by the file
/// system, so a path whose file does not exist yet is caught too.
fn reaches(path: &Path, console_dir: &Path) -> bool {
    let dir = std::fs::canonicalize(console_dir).unwrap_or_else(|_| console_dir.to_owned());
    let lexical = normalize(path);
    if lexical.parent() == Some(console_dir) || lexical.parent() == Some(&dir) {
        return true;
    }
    if let Ok(real) = std::fs::canonicalize(path)
        && real.parent() == Some(&dir)
    {
        return true;
    }
    path.parent()
        .and_then(|p| std::fs::canonicalize(p).ok())
        .is_some_and(|real| real == dir)
}

/// `path` with `.` and `..` taken away by name alone.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The uid and gid QEMU runs as: the DAC label, else qemu.conf, else
/// libvirt-qemu.
fn owner(plan: &Plan, qemu_conf: &Path) -> Result<(u32, u32), HookError> {
    let (user, group) = match &plan.dac_label {
        Some(label) => match label.split_once(':') {
            Some((u, g)) => (u.to_owned(), g.to_owned()),
            None => (label.clone(), label.clone()),
        },
        None => {
            // A missing qemu.conf means libvirt's defaults.
            let text = std::fs::read_to_string(qemu_conf).unwrap_or_default();
            let (u, g) = qemu_conf_user(&text);
            (
                u.unwrap_or_else(|| DEFAULT_USER.to_owned()),
                g.unwrap_or_else(|| DEFAULT_USER.to_owned()),
            )
        }
    };
    Ok((resolve_user(&user)?, resolve_group(&group)?))
}

/// Debian's build of libvirt runs QEMU as this user and group.
const DEFAULT_USER: &str = "libvirt-qemu";

/// `user = "..."` and `group = "..."` from qemu.conf's text.
pub fn qemu_conf_user(text: &str) -> (Option<String>, Option<String>) {
    let (mut user, mut group) = (None, None);
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        match key.trim() {
            "user" => user = Some(value),
            "group" => group = Some(value),
            _ => {}
        }
    }
    (user, group)
}

/// libvirt's spelling: `+N` is a number, anything else a name (or, if no
/// such name exists, a number).
fn resolve_user(s: &str) -> Result<u32, HookError> {
    let bad = || HookError::Owner {
        what: "user",
        name: s.to_owned(),
    };
    if let Some(n) = s.strip_prefix('+') {
        return n.parse().map_err(|_| bad());
    }
    match nix::unistd::User::from_name(s) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => s.parse().map_err(|_| bad()),
    }
}

fn resolve_group(s: &str) -> Result<u32, HookError> {
    let bad = || HookError::Owner {
        what: "group",
        name: s.to_owned(),
    };
    if let Some(n) = s.strip_prefix('+') {
        return n.parse().map_err(|_| bad());
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => s.parse().map_err(|_| bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/run/guestlogd/consoles";

    fn domain(devices: &str, extra: &str) -> String {
        format!(
            "<domain type='qemu' id='3'><name>vm1</name>{extra}<devices>{devices}</devices></domain>"
        )
    }

    fn names(p: &Plan) -> Vec<&str> {
        p.consoles.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn finds_unix_connect_ports_in_the_console_directory_once_each() {
        let xml = domain(
            "<serial type='unix'><source mode='connect' path='/run/guestlogd/consoles/vm1-serial0.guest'/>\
               <target type='isa-serial' port='0'/></serial>\
             <serial type='unix'><source path='/run/guestlogd/consoles/vm1-serial1.guest'/></serial>\
             <console type='unix'><source mode='connect' path='/run/guestlogd/consoles/vm1-serial0.guest'/>\
               <target type='serial' port='0'/></console>\
             <serial type='pty'/>\
             <serial type='unix'><source mode='bind' path='/run/guestlogd/consoles/vm1-bound.guest'/></serial>\
             <serial type='unix'><source mode='connect' path='/run/other/vm1-x.guest'/></serial>\
             <channel type='unix'><source mode='connect' path='/run/guestlogd/consoles/vm1-ch.guest'/></channel>",
            "",
        );
        let p = plan(&xml, "vm1", Path::new(DIR)).unwrap();
        assert_eq!(names(&p), ["vm1-serial0", "vm1-serial1"]);
        assert_eq!(p.dac_label, None);
    }

    #[test]
    fn a_domain_without_such_a_port_needs_nothing() {
        let xml = domain("<serial type='pty'/><console type='pty'/>", "");
        assert_eq!(plan(&xml, "vm1", Path::new(DIR)).unwrap(), Plan::default());
    }

    #[test]
    fn reads_the_dac_label() {
        let xml = domain(
            "",
            "<seclabel type='dynamic' model='apparmor'><label>x</label></seclabel>\
             <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+994</label>\
             <imagelabel>+64055:+994</imagelabel></seclabel>",
        );
        let p = plan(&xml, "vm1", Path::new(DIR)).unwrap();
        assert_eq!(p.dac_label.as_deref(), Some("+64055:+994"));
        let plan_ = Plan {
            dac_label: p.dac_label,
            ..Plan::default()
        };
        assert_eq!(
            owner(&plan_, Path::new("/nonexistent")).unwrap(),
            (64055, 994)
        );
        let none = domain("", "<seclabel type='none' model='dac'/>");
        assert_eq!(plan(&none, "vm1", Path::new(DIR)).unwrap().dac_label, None);
    }

    #[test]
    fn qemu_conf_gives_the_default_user() {
        let text = "# user = \"nobody\"\nuser = \"root\"  # comment\n group=\"+77\"\n";
        assert_eq!(
            qemu_conf_user(text),
            (Some("root".into()), Some("+77".into()))
        );
        assert_eq!(qemu_conf_user(""), (None, None));
        assert_eq!(resolve_user("root").unwrap(), 0);
        assert_eq!(resolve_user("+5").unwrap(), 5);
        assert!(matches!(
            resolve_user("no-such-user-here"),
            Err(HookError::Owner { .. })
        ));
    }

    #[test]
    fn refuses_malformed_xml_and_other_roots() {
        for bad in [
            "",
            "<domain>",
            "<domain><devices></domain>",
            "not xml",
            "<a/><b/>",
        ] {
            assert!(
                matches!(plan(bad, "vm1", Path::new(DIR)), Err(HookError::Xml { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            plan("<network/>", "vm1", Path::new(DIR)),
            Err(HookError::NotDomain { .. })
        ));
        // Entities are refused (no DTD), so no expansion bomb gets far.
        let dtd = "<!DOCTYPE d [<!ENTITY a 'aaaa'>]><domain>&a;</domain>";
        assert!(plan(dtd, "vm1", Path::new(DIR)).is_err());
    }

    #[test]
    fn refuses_ports_not_named_after_the_domain() {
        let port = |path: &str| {
            domain(
                &format!("<serial type='unix'><source mode='connect' path='{path}'/></serial>"),
                "",
            )
        };
        for path in [
            "/run/guestlogd/consoles/vm2-serial0.guest",
            "/run/guestlogd/consoles/vm1-serial0.client",
            "/run/guestlogd/consoles/vm1 serial0.guest",
            "/run/guestlogd/consoles/vm1.guest",
        ] {
            let e = plan(&port(path), "vm1", Path::new(DIR)).unwrap_err();
            assert!(matches!(e, HookError::Refused { .. }), "{path}: {e:?}");
        }
    }

    #[test]
    fn refuses_paths_that_reach_the_console_directory_another_way() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("consoles");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("vm2-serial0.guest"), b"").unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(dir.join("vm2-serial0.guest"), elsewhere.join("link.guest"))
            .unwrap();
        std::os::unix::fs::symlink(&dir, tmp.path().join("dirlink")).unwrap();
        let d = dir.display();
        let t = tmp.path().display();
        for path in [
            format!("{d}/../consoles/vm2-serial0.guest"),
            format!("{t}/elsewhere/link.guest"),
            format!("{t}/dirlink/vm2-serial0.guest"),
            format!("{t}/dirlink/not-yet-made.guest"),
            format!("/proc/self/root{d}/vm2-serial0.guest"),
        ] {
            let xml = domain(
                &format!("<serial type='unix'><source mode='connect' path='{path}'/></serial>"),
                "",
            );
            let e = plan(&xml, "vm1", &dir).unwrap_err();
            assert!(
                matches!(&e, HookError::Refused { reason, .. } if reason.contains("reaches")),
                "{path}: {e:?}"
            );
        }
        // Elsewhere is not our business.
        let xml = domain(
            &format!(
                "<serial type='unix'><source mode='connect' path='{t}/elsewhere/x.sock'/></serial>"
            ),
            "",
        );
        assert_eq!(plan(&xml, "vm1", &dir).unwrap().consoles, []);
    }

    #[test]
    fn reads_the_domains_uuid() {
        let xml = domain("", "<uuid>4DEA22B3-1D52-D8F3-2516-782E98AB3FA0</uuid>");
        assert_eq!(
            plan(&xml, "vm1", Path::new(DIR)).unwrap().uuid.as_deref(),
            Some("4dea22b3-1d52-d8f3-2516-782e98ab3fa0")
        );
    }
}
