//! The man pages and shell completions, written by build.rs into
//! `OUT_DIR/docs/`: what clap knows is rendered with clap_mangen and
//! clap_complete from the binaries' own command lines
//! (`src/bin/*/cli.rs`), and the hand-written rest comes from `man/`.
//!
//! - `guestlogd.8`: title, NAME, SYNOPSIS, DESCRIPTION and OPTIONS from
//!   clap, then `man/guestlogd.8.in` (signals, files, the FD store, the
//!   libvirt front, exit status).
//! - `guestlogctl.1`: the same for the global options, then COMMANDS, one
//!   subsection per verb with its synopsis, text, options and example
//!   (its `after_long_help`), then `man/guestlogctl.1.in`. A verb without
//!   an example stops the build: the page must cover every verb.
//! - `guestlogd.conf.5`: `man/guestlogd.conf.5` as it is.
//! - bash, zsh and fish completions of both commands.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use clap::{Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;

#[allow(dead_code)]
#[path = "../src/bin/guestlogctl/cli.rs"]
mod ctl;
#[allow(dead_code)]
#[path = "../src/bin/guestlogd/cli.rs"]
mod daemon;

type Error = Box<dyn std::error::Error>;

/// Writes every page and completion into `out`.
pub fn generate(out: &Path) -> Result<(), Error> {
    for input in [
        "man/guestlogd.8.in",
        "man/guestlogctl.1.in",
        "man/guestlogd.conf.5",
        "src/bin/guestlogctl/cli.rs",
        "src/bin/guestlogd/cli.rs",
    ] {
        println!("cargo::rerun-if-changed={input}");
    }
    println!("cargo::rerun-if-env-changed=SOURCE_DATE_EPOCH");
    fs::create_dir_all(out)?;
    let version = env!("CARGO_PKG_VERSION");
    let source = format!("guestlogd {version}");
    let date = date()?;

    let mut d = daemon::Args::command();
    d.build();
    let mut page = Vec::new();
    let man = Man::new(d.clone())
        .title("GUESTLOGD")
        .section("8")
        .date(&date)
        .source(&source)
        .manual("System Administration");
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend(fs::read("man/guestlogd.8.in")?);
    fs::write(out.join("guestlogd.8"), once_preamble(&page))?;

    let mut c = ctl::Args::command();
    c.build();
    let mut page = Vec::new();
    let man = Man::new(c.clone())
        .title("GUESTLOGCTL")
        .section("1")
        .date(&date)
        .source(&source)
        .manual("User Commands");
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    writeln!(page, ".SH COMMANDS")?;
    // clap's own `help` verb is the same as --help, said once above.
    for verb in c
        .get_subcommands()
        .filter(|v| !v.is_hide_set() && v.get_name() != "help")
    {
        render_verb(&mut page, verb)?;
    }
    page.extend(fs::read("man/guestlogctl.1.in")?);
    fs::write(out.join("guestlogctl.1"), once_preamble(&page))?;

    fs::copy("man/guestlogd.conf.5", out.join("guestlogd.conf.5"))?;

    for (mut cmd, name) in [(d, "guestlogd"), (c, "guestlogctl")] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, name, out)?;
        }
    }
    Ok(())
}

/// One verb of guestlogctl(1): `.SS` with its synopsis, its text, its own
/// options (not the global ones, listed once above) and its example.
fn render_verb(page: &mut Vec<u8>, verb: &Command) -> Result<(), Error> {
    let name = verb.get_name();
    let example = verb
        .get_after_long_help()
        .map(|e| e.to_string())
        .filter(|e| e.starts_with("Example"))
        .ok_or_else(|| {
            format!(
                "guestlogctl {name} has no example: give it an after_long_help \
                 that starts with \"Example\" in src/bin/guestlogctl/cli.rs"
            )
        })?;
    let globals: Vec<String> = verb
        .get_arguments()
        .filter(|a| a.is_global_set() || a.get_id() == "help")
        .map(|a| a.get_id().to_string())
        .collect();
    let mut own = verb.clone().after_long_help(None::<&str>);
    for id in globals {
        own = own.mut_arg(id, |a| a.hide(true));
    }
    writeln!(page, ".SS \"guestlogctl {name}\"")?;
    let man = Man::new(own.clone());
    let mut synopsis = Vec::new();
    man.render_synopsis_section(&mut synopsis)?;
    page.extend(drop_heading(&synopsis, ".SH SYNOPSIS"));
    writeln!(page, ".PP")?;
    let mut text = Vec::new();
    man.render_description_section(&mut text)?;
    page.extend(drop_heading(&text, ".SH DESCRIPTION"));
    if own
        .get_arguments()
        .any(|a| !a.is_hide_set() && !a.is_positional())
    {
        let mut options = Vec::new();
        man.render_options_section(&mut options)?;
        writeln!(page, ".PP\nOptions:")?;
        page.extend(drop_heading(&options, ".SH OPTIONS"));
    }
    let mut lines = example.lines();
    let heading = lines.next().unwrap_or("Example:");
    writeln!(page, ".PP\n{}\n.PP\n.RS 4\n.nf", roff_text(heading))?;
    for line in lines {
        writeln!(page, "{}", roff_text(line.trim_start()))?;
    }
    writeln!(page, ".fi\n.RE")?;
    Ok(())
}

/// A rendered section without its `.SH` line, to go under a `.SS`.
fn drop_heading(roff: &[u8], heading: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    text.lines()
        .filter(|l| *l != heading)
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}

/// Plain text as a roff line: hyphens and backslashes escaped, and a line
/// that would start with a control character protected.
fn roff_text(s: &str) -> String {
    let escaped = s.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// clap_mangen starts each rendered piece with the same two lines that
/// define the `Aq` string; the page needs them once, at its top.
fn once_preamble(page: &[u8]) -> Vec<u8> {
    const PREAMBLE: [&str; 2] = [".ie \\n(.g .ds Aq \\(aq", ".el .ds Aq '"];
    let text = String::from_utf8_lossy(page);
    let mut out = format!("{}\n{}\n", PREAMBLE[0], PREAMBLE[1]);
    for line in text.lines().filter(|l| !PREAMBLE.contains(l)) {
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// The pages' date: SOURCE_DATE_EPOCH's day (packaging/build-deb sets it
/// from the changelog, so a rebuild is the same), else today's.
fn date() -> Result<String, Error> {
    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<u64>()?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    };
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    Ok(format!("{year:04}-{month:02}-{day:02}"))
}

/// Where build.rs puts them.
pub fn out_dir(out: &Path) -> PathBuf {
    out.join("docs")
}
