//! `LogName`: a validated name for a log, a console or an FD-store entry.
//!
//! Two kinds, told apart by their first byte:
//! - a plain name: 1 to 128 bytes of `A-Z a-z 0-9 _ . + @ -`, not starting
//!   with `.`; a single path component that cannot be `.`, `..` or a hidden
//!   temporary file of ours. Its log is `LOGDIR/NAME.log`.
//! - a path, for logs libvirt names by their file (`from_path`): absolute,
//!   normal (no `.`, `..`, empty component or trailing `/`), at most
//!   `MAX_PATH_LEN` bytes of printable ASCII other than `:`, `%` and
//!   space. Its log is that very file. Whether the path lies under an
//!   allowed root is the front's to check; a name never says so.
//!
//! Neither holds `:`, which systemd's FD names refuse; `fd_part` spells a
//! path without `/` for the FD store's `pipe/NAME/ID` names.

use std::fmt;

/// The longest plain name, in bytes.
pub const MAX_LEN: usize = 128;
/// The longest path name: its FD-store spelling (each `/` as `%2F`) must
/// stay within systemd's 255-byte FD names, with room for `pipe/` and an id.
pub const MAX_PATH_LEN: usize = 160;

/// Plain names that end in this are consoles' boot logs
/// (`consoles::boot`): no caller may make a log or console so named, so a
/// boot log can never be another log.
pub const BOOT_SUFFIX: &str = ".boot";

/// A name that passed the name rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogName(String);

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("the name starts with a dot")]
    LeadingDot,
    #[error("the name holds {0:?}; only A-Z a-z 0-9 _ . + @ - are allowed")]
    BadChar(char),
    #[error("the path is not absolute")]
    Relative,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    PathTooLong,
    #[error("the path has an empty, \".\" or \"..\" component")]
    NotNormal,
    #[error("the path holds {0:?}; only printable ASCII other than : % and space is allowed")]
    BadPathChar(char),
    #[error("names ending in \"{BOOT_SUFFIX}\" are reserved for consoles' boot logs")]
    Reserved,
}

impl LogName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A log addressed by its file's absolute path.
    pub fn from_path(path: &str) -> Result<Self, NameError> {
        if !path.starts_with('/') {
            return Err(NameError::Relative);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(NameError::PathTooLong);
        }
        if let Some(c) = path
            .chars()
            .find(|c| !c.is_ascii_graphic() || ":%".contains(*c))
        {
            return Err(NameError::BadPathChar(c));
        }
        if path[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(NameError::NotNormal);
        }
        Ok(Self(path.to_owned()))
    }

    /// A plain name, or a path if it starts with `/`: how callers name an
    /// existing log of either kind.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.starts_with('/') {
            Self::from_path(name)
        } else {
            Self::try_from(name)
        }
    }

    /// A plain name a caller may give a new log or console: any but the
    /// boot logs' reserved names.
    pub fn new_plain(name: &str) -> Result<Self, NameError> {
        let n = Self::try_from(name)?;
        if n.is_boot() {
            return Err(NameError::Reserved);
        }
        Ok(n)
    }

    /// Whether this is a boot log's name.
    pub fn is_boot(&self) -> bool {
        !self.is_path() && self.0.ends_with(BOOT_SUFFIX)
    }

    /// Whether this log is addressed by its file's path.
    pub fn is_path(&self) -> bool {
        self.0.starts_with('/')
    }

    /// The file's path, for a path-addressed log.
    pub fn as_path(&self) -> Option<&std::path::Path> {
        self.is_path().then(|| std::path::Path::new(&self.0))
    }

    /// The name as one `/`-free part of an FD-store name.
    pub fn fd_part(&self) -> String {
        self.0.replace('/', "%2F")
    }

    /// The inverse of `fd_part`.
    pub fn from_fd_part(part: &str) -> Result<Self, NameError> {
        Self::parse(&part.replace("%2F", "/"))
    }

    /// A log libvirt names by its path: a valid path under one of `roots`,
    /// not ending like a backup (`.0` …), which could be another log's
    /// backup in the same directory. The same rule whether libvirt asks
    /// (OpenLogFile) or virtlogd hands its logs over; the error says why
    /// in words libvirt shows its user.
    pub fn libvirt(path: &str, roots: &[std::path::PathBuf]) -> Result<Self, String> {
        let name = Self::from_path(path).map_err(|e| e.to_string())?;
        let file = path.rsplit('/').next().unwrap_or_default();
        let ext = file.rsplit_once('.').map(|(_, e)| e);
        if ext.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())) {
            return Err("ends like a log backup (.N)".into());
        }
        let inside = roots.iter().any(|root| {
            name.as_path()
                .and_then(|p| p.strip_prefix(root).ok())
                .is_some_and(|rest| !rest.as_os_str().is_empty())
        });
        if !inside {
            return Err(format!(
                "is not under an allowed root ({})",
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(name)
    }
}

impl TryFrom<&str> for LogName {
    type Error = NameError;

    fn try_from(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(NameError::TooLong);
        }
        if name.starts_with('.') {
            return Err(NameError::LeadingDot);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.+@-".contains(*c)))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(name.to_owned()))
    }
}

impl fmt::Display for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_libvirt_style_names() {
        for ok in [
            "vm1",
            "instance-0000002a",
            "a.b+c@d_e-f",
            "x",
            &"n".repeat(MAX_LEN),
        ] {
            assert_eq!(
                LogName::try_from(ok).map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn refuses_paths_and_oddities() {
        let long = "n".repeat(MAX_LEN + 1);
        let cases: [(&str, NameError); 9] = [
            ("", NameError::Empty),
            (&long, NameError::TooLong),
            (".", NameError::LeadingDot),
            ("..", NameError::LeadingDot),
            ("../x", NameError::LeadingDot),
            ("a/b", NameError::BadChar('/')),
            ("a\0b", NameError::BadChar('\0')),
            ("a b", NameError::BadChar(' ')),
            ("é", NameError::BadChar('é')),
        ];
        for (name, why) in cases {
            assert_eq!(LogName::try_from(name), Err(why), "{name:?}");
        }
        assert_eq!(LogName::try_from("a:b"), Err(NameError::BadChar(':')));
        // A plain name never becomes a path.
        assert_eq!(
            LogName::try_from("/var/log/x"),
            Err(NameError::BadChar('/'))
        );
    }

    #[test]
    fn paths_are_absolute_normal_and_round_trip_through_fd_names() {
        let p = LogName::from_path("/var/log/libvirt/qemu/vm1-serial0.log").unwrap();
        assert!(p.is_path());
        assert_eq!(
            p.fd_part(),
            "%2Fvar%2Flog%2Flibvirt%2Fqemu%2Fvm1-serial0.log"
        );
        assert_eq!(LogName::from_fd_part(&p.fd_part()), Ok(p.clone()));
        assert_eq!(LogName::parse(p.as_str()), Ok(p));
        let plain = LogName::parse("vm1").unwrap();
        assert!(!plain.is_path());
        assert_eq!(LogName::from_fd_part(&plain.fd_part()), Ok(plain));
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        for (path, why) in [
            ("var/log/x", NameError::Relative),
            ("/var/log/../etc/shadow", NameError::NotNormal),
            ("/var/log/./x", NameError::NotNormal),
            ("/var//x", NameError::NotNormal),
            ("/var/log/", NameError::NotNormal),
            ("/", NameError::NotNormal),
            ("/a b", NameError::BadPathChar(' ')),
            ("/a:b", NameError::BadPathChar(':')),
            ("/a%2Fb", NameError::BadPathChar('%')),
            ("/a\nb", NameError::BadPathChar('\n')),
            (&long, NameError::PathTooLong),
        ] {
            assert_eq!(LogName::from_path(path), Err(why), "{path:?}");
        }
    }
}
