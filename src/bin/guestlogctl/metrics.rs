//! `guestlogctl metrics`: guestlogd's `io.systemd.Metrics` in Prometheus'
//! text exposition format (0.0.4), on stdout or, with `--textfile DIR`,
//! in `DIR/guestlogd.prom`, replaced atomically for node_exporter's
//! textfile collector.
//!
//! Names: `io.guestlogd.logBytesWritten` becomes
//! `guestlogd_log_bytes_written_total` (counters end in `_total`), the
//! metric's object becomes a `log`, `console` or `front` label after its
//! family, and its fields become labels of their own.

use std::{collections::BTreeMap, io::Write, path::Path};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::{CtlError, cli::MetricsArgs};

#[derive(Debug, Deserialize)]
struct Family {
    name: String,
    description: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct Metric {
    name: String,
    object: Option<String>,
    fields: Option<BTreeMap<String, Value>>,
    value: Value,
}

pub async fn run(a: MetricsArgs) -> Result<(), CtlError> {
    let failed = |source| CtlError::Attach {
        path: a.socket.clone(),
        source,
    };
    let mut conn = std::os::unix::net::UnixStream::connect(&a.socket).map_err(failed)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .map_err(failed)?;
    let families: Vec<Family> =
        stream(&mut conn, "io.systemd.Metrics.Describe").map_err(failed)??;
    let metrics: Vec<Metric> = stream(&mut conn, "io.systemd.Metrics.List").map_err(failed)??;
    let text = render(&families, &metrics);
    match a.textfile {
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(CtlError::Stdout),
        Some(dir) => write_textfile(&dir, &text),
    }
}

/// Calls `method` with `more` and collects every reply: plain varlink
/// (NUL-terminated JSON), for the handful of lines it takes.
fn stream<T: serde::de::DeserializeOwned>(
    conn: &mut std::os::unix::net::UnixStream,
    method: &str,
) -> std::io::Result<Result<Vec<T>, CtlError>> {
    use std::io::{BufRead, BufReader};
    let mut call = serde_json::to_vec(&json!({ "method": method, "more": true }))?;
    call.push(0);
    conn.write_all(&call)?;
    let mut reader = BufReader::new(conn);
    let mut out = Vec::new();
    loop {
        let mut message = Vec::new();
        if reader.read_until(0, &mut message)? == 0 || message.pop() != Some(0) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let reply: Value = serde_json::from_slice(&message)?;
        if let Some(e) = reply.get("error") {
            return Ok(Err(CtlError::Metrics(format!("{method}: {e}"))));
        }
        match serde_json::from_value(reply["parameters"].clone()) {
            Ok(v) => out.push(v),
            Err(e) => return Ok(Err(CtlError::Metrics(format!("{method}: {e}")))),
        }
        if reply["continues"] != Value::Bool(true) {
            return Ok(Ok(out));
        }
    }
}

/// The exposition text: each family with its HELP and TYPE, then its
/// samples, in Describe's order.
fn render(families: &[Family], metrics: &[Metric]) -> String {
    let mut out = String::new();
    for f in families {
        let (kind, suffix) = match f.kind.as_str() {
            "counter" => ("counter", "_total"),
            "gauge" => ("gauge", ""),
            // Strings and objects have no Prometheus sample.
            _ => continue,
        };
        let name = format!("{}{suffix}", prometheus_name(&f.name));
        out.push_str(&format!("# HELP {name} {}\n", escape_help(&f.description)));
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for m in metrics.iter().filter(|m| m.name == f.name) {
            let Some(value) = m
                .value
                .as_u64()
                .map(|v| v.to_string())
                .or_else(|| m.value.as_f64().map(|v| v.to_string()))
            else {
                continue;
            };
            let mut labels = Vec::new();
            if let Some(o) = &m.object {
                labels.push((object_label(&f.name).to_owned(), o.clone()));
            }
            for (k, v) in m.fields.iter().flatten() {
                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                labels.push((snake(k), v));
            }
            out.push_str(&name);
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                out.push_str(&format!("{{{}}}", inner.join(",")));
            }
            out.push_str(&format!(" {value}\n"));
        }
    }
    out
}

/// `io.guestlogd.logBytesWritten` → `guestlogd_log_bytes_written`.
fn prometheus_name(family: &str) -> String {
    let family = family.strip_prefix("io.").unwrap_or(family);
    family.split('.').map(snake).collect::<Vec<_>>().join("_")
}

fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            if !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// The label an object gets: what it names in that family.
fn object_label(family: &str) -> &'static str {
    let short = family.rsplit('.').next().unwrap_or_default();
    for (prefix, label) in [("log", "log"), ("console", "console"), ("front", "front")] {
        if short
            .strip_prefix(prefix)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_uppercase()))
        {
            return label;
        }
    }
    "object"
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes `DIR/guestlogd.prom` through a temporary file in DIR (which the
/// collector ignores: it reads `*.prom` only), so a scrape never sees half
/// of it.
fn write_textfile(dir: &Path, text: &str) -> Result<(), CtlError> {
    let path = dir.join("guestlogd.prom");
    let temp = dir.join(format!(".guestlogd.prom.{}", std::process::id()));
    let failed = |source| CtlError::Textfile {
        path: path.clone(),
        source,
    };
    let written = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&temp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_escapes() {
        assert_eq!(
            prometheus_name("io.guestlogd.logBytesWritten"),
            "guestlogd_log_bytes_written"
        );
        assert_eq!(object_label("io.guestlogd.consoleClients"), "console");
        assert_eq!(object_label("io.guestlogd.logsRemembered"), "object");
        let families = vec![Family {
            name: "io.guestlogd.logBytesWritten".into(),
            description: "Bytes \\ written.".into(),
            kind: "counter".into(),
        }];
        let metrics = vec![Metric {
            name: "io.guestlogd.logBytesWritten".into(),
            object: Some("/var/log/a\"b".into()),
            fields: None,
            value: json!(12),
        }];
        assert_eq!(
            render(&families, &metrics),
            "# HELP guestlogd_log_bytes_written_total Bytes \\\\ written.\n\
             # TYPE guestlogd_log_bytes_written_total counter\n\
             guestlogd_log_bytes_written_total{log=\"/var/log/a\\\"b\"} 12\n"
        );
    }
}
