//! The man pages and completions build.rs writes (man/generate.rs), checked
//! with the real tools: `man -l` renders each page without a warning (as
//! lintian runs it), guestlogctl(1) has a section with an example for every
//! verb guestlogctl has (a verb added without its page fails here, or
//! already in build.rs), guestlogd.conf(5) and the shipped default
//! configuration name every key the configuration has, and bash loads the
//! completion.

#[allow(dead_code)]
#[path = "../src/bin/guestlogctl/cli.rs"]
mod ctl;

use std::{path::PathBuf, process::Command};

use clap::CommandFactory;

fn docs() -> PathBuf {
    PathBuf::from(env!("OUT_DIR")).join("docs")
}

fn page(name: &str) -> String {
    let path = docs().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The page as `man -l` renders it for a terminal, or why not (no man).
fn render(name: &str) -> Result<String, String> {
    let out = Command::new("man")
        .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
        .arg(docs().join(name))
        .output()
        .map_err(|e| format!("man-db is not installed ({e}); run tests/env/setup.sh"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "man -l {name}: {}\n{stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "man -l {name} warns:\n{stderr}");
    // -Z gives groff's output; plain text is enough to search.
    let text = Command::new("man")
        .args(["-l", "-Tutf8", "-P", "cat"])
        .arg(docs().join(name))
        .env("MANWIDTH", "100")
        .output()
        .map_err(|e| e.to_string())?;
    // grotty marks bold and underline by overstriking: X, backspace, X.
    let mut plain = String::new();
    for c in String::from_utf8_lossy(&text.stdout).chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    Ok(plain.replace('\u{2010}', "-"))
}

#[test]
fn every_page_renders_without_a_warning() {
    for (name, title) in [
        ("guestlogd.8", "GUESTLOGD(8)"),
        ("guestlogctl.1", "GUESTLOGCTL(1)"),
        ("guestlogd.conf.5", "GUESTLOGD.CONF(5)"),
    ] {
        let text = match render(name) {
            Ok(t) => t,
            Err(why) => {
                println!("SKIPPED: {why}");
                return;
            }
        };
        assert!(text.contains(title), "{name}:\n{text}");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"] {
            assert!(text.contains(section), "{name} has no {section}");
        }
    }
    let daemon = render("guestlogd.8").unwrap_or_default();
    for what in [
        "--virtlogd-conf",
        "SIGUSR1",
        "SIGTERM",
        "SIGHUP",
        "FILES",
        "EXIT STATUS",
        "FD store",
        "LIBVIRT FRONT",
    ] {
        assert!(daemon.contains(what), "guestlogd(8) says nothing of {what}");
    }
}

#[test]
fn guestlogctl_page_has_every_verb_with_an_example() {
    let roff = page("guestlogctl.1");
    let cmd = ctl::Args::command();
    let verbs: Vec<&str> = cmd
        .get_subcommands()
        .map(|v| v.get_name())
        .filter(|v| *v != "help")
        .collect();
    assert!(verbs.len() >= 10, "{verbs:?}");
    // Each verb's section runs to the next one; it must show the verb used.
    let sections: Vec<&str> = roff.split(".SS \"guestlogctl ").skip(1).collect();
    for verb in &verbs {
        let section = sections
            .iter()
            .find(|s| s.starts_with(&format!("{verb}\"")))
            .unwrap_or_else(|| panic!("guestlogctl(1) has no section for {verb}"));
        assert!(
            // roff escapes a hyphen: `restore-virtlogd` is `restore\-virtlogd`.
            section.contains("Example")
                && section.contains(&format!("guestlogctl {}", verb.replace('-', "\\-"))),
            "guestlogctl(1): {verb} has no example:\n{section}"
        );
    }
    assert_eq!(
        sections.len(),
        verbs.len(),
        "a section for a verb that is gone"
    );
    if let Ok(text) = render("guestlogctl.1") {
        for verb in &verbs {
            assert!(text.contains(&format!("guestlogctl {verb}")), "{verb}");
        }
    }
}

/// Every key as `section.key`, from the configuration itself.
fn config_keys() -> Vec<String> {
    let v = serde_json::to_value(guestlogd::config::Config::default()).unwrap();
    let mut keys = Vec::new();
    for (section, table) in v.as_object().unwrap() {
        for key in table.as_object().unwrap().keys() {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_and_shipped() {
    let keys = config_keys();
    assert!(keys.contains(&"libvirt.max-clients".to_owned()), "{keys:?}");
    let man = page("guestlogd.conf.5").replace("\\-", "-");
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/guestlogd.conf"
    ))
    .unwrap();
    // The shipped file parses as it is, and with every key uncommented.
    let uncommented: String = shipped
        .lines()
        .map(|l| {
            l.strip_prefix('#')
                .filter(|r| !r.starts_with([' ', '#']))
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for (what, text) in [
        ("as shipped", shipped.as_str()),
        ("uncommented", &uncommented),
    ] {
        guestlogd::config::Config::parse(text, "guestlogd.conf")
            .unwrap_or_else(|e| panic!("packaging/guestlogd.conf {what}: {e}"));
    }
    for key in keys {
        let (section, name) = key.split_once('.').unwrap();
        // The text from a section's heading to the next heading.
        let in_section = |text: &str, open: &str, next: &str| {
            text.split(open)
                .nth(1)
                .is_some_and(|rest| rest.split(next).next().unwrap_or("").contains(name))
        };
        assert!(
            in_section(&man, &format!(".SH [{section}]"), "\n.SH "),
            "guestlogd.conf(5) has no {key}"
        );
        assert!(
            in_section(&uncommented, &format!("[{section}]"), "\n["),
            "packaging/guestlogd.conf has no {key}"
        );
    }
}

#[test]
fn completions_load() {
    for name in ["guestlogctl", "guestlogd"] {
        for file in [
            format!("{name}.bash"),
            format!("_{name}"),
            format!("{name}.fish"),
        ] {
            let text = page(&file);
            assert!(text.contains(name), "{file}");
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; complete -p {name}",
                docs().join(format!("{name}.bash")).display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}.bash: {out:?}");
    }
    // Every verb is offered.
    let bash = page("guestlogctl.bash");
    for verb in ["attach", "consoles", "create", "hook", "tail"] {
        assert!(bash.contains(verb), "{verb}");
    }
}
