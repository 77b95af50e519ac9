//! virtlogd's command line, read as virtlogd's getopt_long reads it: when
//! guestlogd runs by virtlogd's name (argv[0] `virtlogd`: executed by
//! virtlogd's SIGUSR1 re-exec, or started by libvirt's own unit while
//! guestlogd sits at /usr/sbin/virtlogd), its arguments are virtlogd's.
//!
//! `-f FILE` is virtlogd.conf, which guestlogd reads in virtlogd's place;
//! `-p FILE` is the pid file it takes again; `-d`, `-t SECS` and `-v` mean
//! nothing here and are accepted. Anything else is refused, so that a
//! successor gives virtlogd a state it was started with options guestlogd
//! does not know.

use std::{ffi::OsString, path::PathBuf};

/// What guestlogd takes from virtlogd's command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VirtlogdArgs {
    /// `-f`, `--config`: virtlogd.conf.
    pub config: Option<PathBuf>,
    /// `-p`, `--pid-file`.
    pub pid_file: Option<PathBuf>,
}

/// Parses argv (argv[0] included).
pub fn parse(argv: &[OsString]) -> Result<VirtlogdArgs, String> {
    let mut out = VirtlogdArgs::default();
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let mut value = |name: &str, attached: Option<&str>| -> Result<PathBuf, String> {
            match attached {
                Some(v) if !v.is_empty() => Ok(v.into()),
                _ => args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("option {name} needs an argument")),
            }
        };
        if let Some(long) = text.strip_prefix("--") {
            let (name, attached) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            match name {
                "daemon" | "verbose" if attached.is_none() => {}
                "timeout" => drop(value("--timeout", attached)?),
                "config" => out.config = Some(value("--config", attached)?),
                "pid-file" => out.pid_file = Some(value("--pid-file", attached)?),
                _ => return Err(format!("unknown option --{name}")),
            }
            continue;
        }
        let Some(shorts) = text.strip_prefix('-').filter(|s| !s.is_empty()) else {
            return Err(format!("unexpected argument {text:?}"));
        };
        for (i, c) in shorts.char_indices() {
            let rest = &shorts[i + c.len_utf8()..];
            match c {
                'd' | 'v' => continue,
                't' => drop(value("-t", Some(rest))?),
                'f' => out.config = Some(value("-f", Some(rest))?),
                'p' => out.pid_file = Some(value("-p", Some(rest))?),
                other => return Err(format!("unknown option -{other}")),
            }
            // An option with an argument takes the rest of the word.
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("/usr/sbin/virtlogd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn reads_what_virtlogd_reads() {
        assert_eq!(parse(&argv(&[])), Ok(VirtlogdArgs::default()));
        let want = VirtlogdArgs {
            config: Some("/etc/v.conf".into()),
            pid_file: Some("/run/v.pid".into()),
        };
        for args in [
            &[
                "-f",
                "/etc/v.conf",
                "-p",
                "/run/v.pid",
                "-t",
                "30",
                "-d",
                "-v",
            ][..],
            &["-dvf/etc/v.conf", "-p/run/v.pid", "-t30"],
            &[
                "--config=/etc/v.conf",
                "--pid-file",
                "/run/v.pid",
                "--timeout=30",
                "--verbose",
            ],
        ] {
            assert_eq!(parse(&argv(args)), Ok(want.clone()), "{args:?}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for args in [
            &["-x"][..],
            &["--foo"],
            &["-f"],
            &["stray"],
            &["--daemon=1"],
        ] {
            assert!(parse(&argv(args)).is_err(), "{args:?}");
        }
    }
}
