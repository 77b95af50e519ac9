//! `LogName`: a validated name for a log, a console or an FD-store entry.
//!
//! Invariant: 1 to 128 bytes of `A-Z a-z 0-9 _ . + @ -`, not starting with
//! `.`. Such a name is a single path component that cannot be `.`, `..` or a
//! hidden temporary file of ours, and it never holds `:`, which the FD store
//! uses as a separator.

use std::fmt;

/// The longest name, in bytes.
pub const MAX_LEN: usize = 128;

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
}

impl LogName {
    pub fn as_str(&self) -> &str {
        &self.0
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
    }
}
