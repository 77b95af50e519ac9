//! `VirtlogdConf`: what guestlogd takes from libvirt's `virtlogd.conf` when
//! it serves libvirt in virtlogd's place.
//!
//! The file is in libvirt's own format (`virconf.c`): statements `name =
//! value`, ended by a line end or `;`; a value is an integer (`-` or `+`
//! allowed), a string in `'…'`, `"…"` or `"""…"""` (no escapes), or a
//! `[list, …]` that may span lines; `#` starts a comment. The whole file is
//! parsed before anything is applied, so a malformed one is refused with its
//! line and changes nothing, as virtlogd refuses it. When a name is
//! assigned twice the first counts, as in virtlogd.
//!
//! What is applied: `max_size` and `max_backups` (the policy of libvirt's
//! logs), `max_clients` (the libvirt front's connections) and
//! `max_age_days` (retention); each only when guestlogd's own configuration
//! does not set it. `log_root` is noted, not applied: guestlogd's roots
//! are `[libvirt] roots`. The rest (`log_level`, `log_filters`,
//! `log_outputs`, `admin_*`, names virtlogd does not know) is virtlogd's own
//! business; the caller logs their names once.

use std::path::Path;

/// One statement: its name, its value and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub value: Value,
    pub line: usize,
}

/// A value as libvirt's parser types it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Any integer libvirt's `long long` holds, negative or not.
    Int(i128),
    Str(String),
    List(Vec<Value>),
}

/// A setting guestlogd applies, with the line that gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub line: usize,
}

/// What the file says that guestlogd acts on; every number already checked
/// against guestlogd's own bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtlogdConf {
    /// Bytes; `None` when absent, or 0 (virtlogd's "no rollover", which
    /// guestlogd never does: see `unbounded`).
    pub max_size: Option<Setting<u64>>,
    pub max_backups: Option<Setting<u32>>,
    pub max_clients: Option<Setting<usize>>,
    /// Days; noted for when retention exists.
    pub max_age_days: Option<Setting<u64>>,
    /// The line of `max_size = 0`, if the file says so.
    pub unbounded: Option<usize>,
    /// Names read and not applied, in file order, each once.
    pub ignored: Vec<String>,
}

/// Why the file was refused: always with its line.
#[derive(Debug, thiserror::Error)]
pub enum VirtlogdConfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {what}")]
    Syntax {
        path: String,
        line: usize,
        what: String,
    },
    #[error("{path}:{line}: {name}: {what}")]
    Value {
        path: String,
        line: usize,
        name: String,
        what: String,
    },
}

impl VirtlogdConf {
    /// Reads `path`. A missing file is `Ok(None)` when `required` is false
    /// (a host without libvirt's log daemon package has none).
    pub fn load(path: &Path, required: bool) -> Result<Option<Self>, VirtlogdConfError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&String::from_utf8_lossy(&bytes), &shown).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(source) => Err(VirtlogdConfError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// Parses a file's text; `shown` names it in errors.
    pub fn parse(text: &str, shown: &str) -> Result<Self, VirtlogdConfError> {
        let entries = parse(text).map_err(|(line, what)| VirtlogdConfError::Syntax {
            path: shown.to_owned(),
            line,
            what,
        })?;
        let mut conf = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for e in &entries {
            if seen.contains(&e.name.as_str()) {
                continue;
            }
            seen.push(&e.name);
            let bad = |what: String| VirtlogdConfError::Value {
                path: shown.to_owned(),
                line: e.line,
                name: e.name.clone(),
                what,
            };
            let line = e.line;
            match e.name.as_str() {
                "max_size" => match unsigned(&e.value).map_err(bad)? {
                    0 => conf.unbounded = Some(e.line),
                    v => conf.max_size = Some(Setting { value: v, line }),
                },
                "max_backups" => {
                    let v = unsigned(&e.value).map_err(bad)?;
                    let v = u32::try_from(v).map_err(|_| bad(format!("{v} is too large")))?;
                    conf.max_backups = Some(Setting { value: v, line });
                }
                "max_clients" => {
                    let v = unsigned(&e.value).map_err(bad)?;
                    let v = usize::try_from(v).map_err(|_| bad(format!("{v} is too large")))?;
                    conf.max_clients = Some(Setting { value: v, line });
                }
                "max_age_days" => {
                    let value = unsigned(&e.value).map_err(bad)?;
                    conf.max_age_days = Some(Setting { value, line });
                }
                other => conf.ignored.push(other.to_owned()),
            }
        }
        Ok(conf)
    }
}

/// The value as virtlogd's `virConfGetValueSizeT` takes it.
fn unsigned(v: &Value) -> Result<u64, String> {
    match v {
        Value::Int(i) if *i < 0 => Err(format!("{i} is negative")),
        Value::Int(i) => u64::try_from(*i).map_err(|_| format!("{i} is too large")),
        Value::Str(_) | Value::List(_) => Err("expected an unsigned integer".into()),
    }
}

/// Parses libvirt's configuration syntax into its statements, or says on
/// which line and why it cannot.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
        line: 1,
        depth: 0,
    };
    let mut entries = Vec::new();
    loop {
        p.skip_blanks_comments_and_eol();
        if p.at >= p.s.len() {
            return Ok(entries);
        }
        let line = p.line;
        let name = p.name()?;
        p.skip_blanks();
        if p.peek() != Some(b'=') {
            return Err(p.error("expecting an assignment"));
        }
        p.at += 1;
        p.skip_blanks();
        let value = p.value()?;
        entries.push(Entry { name, value, line });
        p.skip_blanks();
        if p.peek() == Some(b'#') {
            p.skip_comment();
        }
        match p.peek() {
            None | Some(b'\n' | b'\r') => {}
            Some(b';') => p.at += 1,
            Some(_) => return Err(p.error("expecting a separator")),
        }
    }
}

/// How deep lists may nest: libvirt's parser recurses without a bound; a
/// file of brackets must not exhaust the stack here.
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    line: usize,
    /// Lists open around the value being parsed.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn error(&self, what: &str) -> (usize, String) {
        (self.line, what.to_owned())
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn skip_comment(&mut self) {
        while !matches!(self.peek(), None | Some(b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn skip_blanks_comments_and_eol(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r') => self.at += 1,
                Some(b'\n') => {
                    self.at += 1;
                    self.line += 1;
                }
                Some(b'#') => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn name(&mut self) -> Result<String, (usize, String)> {
        let start = self.at;
        if !self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            return Err(self.error("expecting a name"));
        }
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.at += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn value(&mut self) -> Result<Value, (usize, String)> {
        match self.peek() {
            None => Err(self.error("expecting a value")),
            Some(b'"' | b'\'') => self.string().map(Value::Str),
            Some(b'[') => self.list(),
            Some(c) if c.is_ascii_digit() || c == b'-' || c == b'+' => self.number(),
            Some(_) => Err(self.error("expecting a value")),
        }
    }

    fn number(&mut self) -> Result<Value, (usize, String)> {
        let negative = self.peek() == Some(b'-');
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.at += 1;
        }
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(self.error("unterminated number"));
        }
        let mut v: i128 = 0;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            v = v * 10 + i128::from(c - b'0');
            // Past what libvirt's long long holds: refuse rather than wrap.
            if v > i128::from(u64::MAX) {
                return Err(self.error("number out of range"));
            }
            self.at += 1;
        }
        Ok(Value::Int(if negative { -v } else { v }))
    }

    fn string(&mut self) -> Result<String, (usize, String)> {
        let rest = &self.s[self.at..];
        let (quote, multi): (&[u8], bool) = if rest.starts_with(b"\"\"\"") {
            (b"\"\"\"", true)
        } else if rest.starts_with(b"'") {
            (b"'", false)
        } else {
            (b"\"", false)
        };
        let opened = self.line;
        self.at += quote.len();
        let start = self.at;
        loop {
            if self.s[self.at..].starts_with(quote) {
                let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                self.at += quote.len();
                return Ok(text);
            }
            match self.peek() {
                None => return Err((opened, "unterminated string".into())),
                Some(b'\n' | b'\r') if !multi => {
                    return Err((opened, "unterminated string".into()));
                }
                Some(b'\n') => self.line += 1,
                Some(_) => {}
            }
            self.at += 1;
        }
    }

    fn list(&mut self) -> Result<Value, (usize, String)> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("lists nested too deeply"));
        }
        self.depth += 1;
        let list = self.list_items();
        self.depth -= 1;
        list
    }

    fn list_items(&mut self) -> Result<Value, (usize, String)> {
        let opened = self.line;
        self.at += 1;
        let mut items = Vec::new();
        self.skip_blanks_comments_and_eol();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Value::List(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_blanks_comments_and_eol();
            match self.peek() {
                Some(b']') => {
                    self.at += 1;
                    return Ok(Value::List(items));
                }
                Some(b',') => {
                    self.at += 1;
                    self.skip_blanks_comments_and_eol();
                    // A trailing comma before the bracket is fine.
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        return Ok(Value::List(items));
                    }
                }
                None => return Err((opened, "list is not closed with ]".into())),
                Some(_) => return Err(self.error("expecting a separator in list")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> VirtlogdConf {
        VirtlogdConf::parse(text, "virtlogd.conf").unwrap()
    }

    fn error(text: &str) -> String {
        VirtlogdConf::parse(text, "virtlogd.conf")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn debian_default_file_applies_nothing() {
        // Every line of libvirt's shipped file is a comment.
        let text = "# Master virtlogd daemon configuration file\n#\n\n#log_level = 3\n\
                    #log_filters=\"1:logging 4:object\"\n#max_clients = 1024\n#max_size = 2097152\n";
        assert_eq!(conf(text), VirtlogdConf::default());
    }

    #[test]
    fn reads_what_it_applies_and_lists_the_rest() {
        let c = conf(
            "log_level = 3\nmax_size = 65536   # 64 KiB\nmax_backups=2; max_clients = +12\n\
             log_outputs = \"3:syslog:virtlogd\"\nadmin_max_clients = 5\nmax_age_days = 7\n\
             log_root = '/var/log/libvirt'\nfuture_key = [ 1, \"a\",\n  'b', ]\n",
        );
        assert_eq!(
            c.max_size,
            Some(Setting {
                value: 65536,
                line: 2
            })
        );
        assert_eq!(c.max_backups.map(|s| (s.value, s.line)), Some((2, 3)));
        assert_eq!(c.max_clients.map(|s| (s.value, s.line)), Some((12, 3)));
        assert_eq!(c.max_age_days.map(|s| s.value), Some(7));
        assert_eq!(
            c.ignored,
            [
                "log_level",
                "log_outputs",
                "admin_max_clients",
                "log_root",
                "future_key"
            ]
        );
    }

    #[test]
    fn the_first_assignment_counts() {
        let c = conf("max_backups = 2\nmax_backups = 9\nlog_level = 1\nlog_level = 2\n");
        assert_eq!(c.max_backups.map(|s| s.value), Some(2));
        assert_eq!(c.ignored, ["log_level"]);
    }

    #[test]
    fn zero_size_is_noted_not_applied() {
        let c = conf("\n\nmax_size = 0\n");
        assert_eq!((c.max_size, c.unbounded), (None, Some(3)));
    }

    #[test]
    fn triple_quoted_strings_span_lines_and_count_them() {
        let c = conf("log_filters = \"\"\"1:a\n2:b\n\"\"\"\nmax_size = 1\n");
        assert_eq!(c.max_size.map(|s| s.line), Some(4));
    }

    #[test]
    fn malformed_files_name_their_line() {
        for (text, want) in [
            (
                "max_size = 1\nmax_backups 3\n",
                "virtlogd.conf:2: expecting an assignment",
            ),
            ("\n\nmax_size = \n", "virtlogd.conf:3: expecting a value"),
            (
                "log_outputs = \"3:syslog\nmax_size = 1\n",
                "virtlogd.conf:1: unterminated string",
            ),
            ("max_size = 1 2\n", "virtlogd.conf:1: expecting a separator"),
            (
                "x = [1, 2\n\n",
                "virtlogd.conf:1: list is not closed with ]",
            ),
            (
                "x = [1 2]\n",
                "virtlogd.conf:1: expecting a separator in list",
            ),
            ("\n_x = 1\n", "virtlogd.conf:2: expecting a name"),
            ("max_size = -\n", "virtlogd.conf:1: unterminated number"),
            ("max_size = yes\n", "virtlogd.conf:1: expecting a value"),
            (
                "max_size = 99999999999999999999999\n",
                "virtlogd.conf:1: number out of range",
            ),
            (
                "\nmax_size = \"2M\"\n",
                "virtlogd.conf:2: max_size: expected an unsigned integer",
            ),
            (
                "max_backups = -1\n",
                "virtlogd.conf:1: max_backups: -1 is negative",
            ),
            (
                "max_backups = 99999999999\n",
                "virtlogd.conf:1: max_backups: 99999999999 is too large",
            ),
        ] {
            assert_eq!(error(text), want, "{text:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("x = {}\n", "[".repeat(100_000));
        assert_eq!(error(&deep), "virtlogd.conf:1: lists nested too deeply");
        let fine = format!("x = {}1{}\n", "[".repeat(32), "]".repeat(32));
        assert_eq!(conf(&fine).ignored, ["x"]);
    }

    #[test]
    fn values_it_ignores_are_not_type_checked() {
        // virtlogd checks log_level's type; guestlogd never reads it.
        assert_eq!(conf("log_level = \"debug\"\n").ignored, ["log_level"]);
    }
}
