//! virtlogd's restart state, `/run/virtlogd-restart-exec.json`, as libvirt
//! 9.0 and 11.3 write it at SIGUSR1 and read it after the exec: a pure
//! codec, no I/O.
//!
//! Read strictly: a key guestlogd does not know, a sort of server, service
//! or client it does not serve (authentication, read-only, a child
//! process), is state it could not carry on, so the whole file goes back to
//! the real virtlogd (`inherit`), which understands it. Written the way
//! virtlogd writes it, with the numbers virtlogd's own configuration gives
//! (`handback`).
//!
//! `daemon.servers` is an object keyed by server name in what 9.0 and 11.3
//! write; virtlogd also reads an array (named from its default list, which
//! holds only `virtlogd`) or no `servers` at all (`daemon` is then the
//! `virtlogd` server), and so does this.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most virtlogd reads of the file; a larger one is refused.
pub const MAX_SIZE: u64 = 10 << 20;

/// Why a state could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    #[error("{path}: {source}")]
    Key {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// A whole state: the `virtlogd` server (libvirt's socket), the `admin`
/// server (virt-admin's), the log pipes, and who wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtlogdState {
    /// The writer's PID, as a decimal string.
    pub magic: String,
    pub virtlogd: Server,
    pub admin: Option<Server>,
    pub files: Vec<LogFile>,
}

/// One RPC server: its listeners (`services`) and connected clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub min_workers: u64,
    pub max_workers: u64,
    pub priority_workers: u64,
    pub max_clients: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_anonymous_clients: Option<u64>,
    /// 4294967295 (-1 as an unsigned 32-bit number): no keepalive.
    #[serde(rename = "keepaliveInterval")]
    pub keepalive_interval: i64,
    #[serde(rename = "keepaliveCount")]
    pub keepalive_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_client_id: Option<u64>,
    pub services: Vec<Service>,
    pub clients: Vec<Client>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// 0: none, the only kind on a unix socket.
    pub auth: i64,
    pub readonly: bool,
    pub nrequests_client_max: u64,
    pub socks: Vec<Sock>,
}

/// A socket, listening or connected, by the number the successor
/// inherits it at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sock {
    pub fd: i32,
    /// -1: no child process's stderr.
    pub errfd: i32,
    /// 0: no child process.
    pub pid: i64,
    #[serde(rename = "isClient")]
    pub is_client: bool,
    /// The writer bound the path itself and removes it at its final close
    /// (false under socket activation: systemd owns the path). Absent
    /// means `!is_client`.
    #[serde(
        rename = "unlinkUNIX",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub unlink_unix: Option<bool>,
}

impl Sock {
    pub fn unlinks(&self) -> bool {
        self.unlink_unix.unwrap_or(!self.is_client)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub auth: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_pending: Option<bool>,
    pub readonly: bool,
    pub nrequests_max: u64,
    /// When it connected, in seconds since the epoch; absent if unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_time: Option<i64>,
    pub sock: Sock,
    /// virtlogd keeps nothing per client: `{}`.
    #[serde(rename = "privateData")]
    pub private_data: serde_json::Map<String, Value>,
}

/// One domain log: the read end of its pipe and who opened it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    pub pipefd: i32,
    pub path: String,
    /// As libvirt's OpenLogFile gave it ("QEMU").
    pub driver: String,
    pub domname: String,
    /// The domain's UUID, lowercase with dashes.
    pub domuuid: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Top {
    daemon: Value,
    magic: String,
    handler: Handler,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Handler {
    files: Vec<LogFile>,
}

/// The `magic` of a file, if it has one: whether it is this process's is
/// decided on that alone, before anything else is read.
pub fn magic(text: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(text).ok()?;
    Some(v.get("magic")?.as_str()?.to_owned())
}

impl VirtlogdState {
    /// Parses a file, strictly (see the module's documentation).
    pub fn parse(text: &[u8]) -> Result<Self, FormatError> {
        let top: Top = typed(serde_json::from_slice(text).map_err(FormatError::Json)?, "")?;
        let mut servers = servers(top.daemon)?;
        let virtlogd = servers
            .remove("virtlogd")
            .ok_or_else(|| FormatError::Unsupported("no \"virtlogd\" server".into()))?;
        let admin = servers.remove("admin");
        if let Some(other) = servers.keys().next() {
            return Err(FormatError::Unsupported(format!(
                "a server {other:?}: virtlogd has only \"virtlogd\" and \"admin\""
            )));
        }
        let state = Self {
            magic: top.magic,
            virtlogd,
            admin,
            files: top.handler.files,
        };
        state.check()?;
        Ok(state)
    }

    /// What guestlogd serves and virtlogd's state may hold: plain unix
    /// sockets without authentication, no read-only clients on libvirt's
    /// socket, no child processes, each descriptor named once and above 2.
    fn check(&self) -> Result<(), FormatError> {
        let bad = |what: String| Err(FormatError::Unsupported(what));
        let mut seen = std::collections::BTreeSet::new();
        let mut fd = |fd: i32, what: &str| {
            if fd < 3 {
                return bad(format!("{what} at fd {fd}"));
            }
            if !seen.insert(fd) {
                return bad(format!("fd {fd} named twice ({what})"));
            }
            Ok(())
        };
        for (name, server) in [
            ("virtlogd", Some(&self.virtlogd)),
            ("admin", self.admin.as_ref()),
        ] {
            let Some(server) = server else { continue };
            for service in &server.services {
                if service.auth != 0 {
                    return bad(format!(
                        "{name}: a service with authentication {}",
                        service.auth
                    ));
                }
                for s in &service.socks {
                    if s.is_client || s.errfd != -1 || s.pid != 0 {
                        return bad(format!("{name}: socket {} is not a plain listener", s.fd));
                    }
                    fd(s.fd, "a listener")?;
                }
            }
            for c in &server.clients {
                let s = &c.sock;
                if !s.is_client || s.errfd != -1 || s.pid != 0 {
                    return bad(format!(
                        "{name}: client socket {} is not a plain connection",
                        s.fd
                    ));
                }
                if name == "virtlogd" && (c.auth != 0 || c.readonly || !c.private_data.is_empty()) {
                    return bad(format!(
                        "virtlogd: client at fd {} has authentication, is read-only or has \
                         private data",
                        s.fd
                    ));
                }
                fd(s.fd, "a client")?;
            }
        }
        let listeners: usize = self.virtlogd.services.iter().map(|s| s.socks.len()).sum();
        if listeners != 1 {
            return bad(format!(
                "the virtlogd server has {listeners} listeners, not one"
            ));
        }
        for f in &self.files {
            fd(f.pipefd, "a pipe")?;
            if !is_uuid(&f.domuuid) {
                return bad(format!("{}: domuuid {:?} is not a UUID", f.path, f.domuuid));
            }
        }
        Ok(())
    }

    /// The file as virtlogd writes it: `daemon.servers` keyed by name.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Daemon<'a> {
            servers: BTreeMap<&'static str, &'a Server>,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            daemon: Daemon<'a>,
            magic: &'a str,
            handler: HandlerOut<'a>,
        }
        #[derive(Serialize)]
        struct HandlerOut<'a> {
            files: &'a [LogFile],
        }
        let mut servers = BTreeMap::from([("virtlogd", &self.virtlogd)]);
        if let Some(admin) = &self.admin {
            servers.insert("admin", admin);
        }
        let out = Out {
            daemon: Daemon { servers },
            magic: &self.magic,
            handler: HandlerOut { files: &self.files },
        };
        // Plain data of our own types: serialising it cannot fail.
        serde_json::to_vec_pretty(&out).unwrap_or_default()
    }
}

impl Server {
    /// A server as virtlogd's configuration defaults make it (workers 0,
    /// no keepalive), with one listener and these clients.
    pub fn new(max_clients: u64, listener: Sock, clients: Vec<Client>) -> Self {
        Self {
            min_workers: 0,
            max_workers: 0,
            priority_workers: 0,
            max_clients,
            max_anonymous_clients: Some(max_clients),
            keepalive_interval: i64::from(u32::MAX),
            keepalive_count: 0,
            next_client_id: Some(clients.len() as u64 + 1),
            services: vec![Service {
                auth: 0,
                readonly: false,
                nrequests_client_max: 1,
                socks: vec![listener],
            }],
            clients,
        }
    }

    /// The listening sockets' descriptors.
    pub fn listeners(&self) -> impl Iterator<Item = &Sock> {
        self.services.iter().flat_map(|s| s.socks.iter())
    }
}

impl Client {
    /// A connected client as virtlogd writes one: no authentication,
    /// one request at a time.
    pub fn new(id: u64, fd: i32, conn_time: Option<i64>) -> Self {
        Self {
            id: Some(id),
            auth: 0,
            auth_pending: Some(false),
            readonly: false,
            nrequests_max: 1,
            conn_time,
            sock: Sock {
                fd,
                errfd: -1,
                pid: 0,
                is_client: true,
                unlink_unix: Some(false),
            },
            private_data: serde_json::Map::new(),
        }
    }
}

/// `daemon`: servers by name, in any of the three shapes virtlogd reads.
fn servers(daemon: Value) -> Result<BTreeMap<String, Server>, FormatError> {
    let Value::Object(mut daemon) = daemon else {
        return Err(FormatError::Unsupported("daemon is not an object".into()));
    };
    match daemon.remove("servers") {
        Some(Value::Object(named)) => {
            if let Some(k) = daemon.keys().next() {
                return Err(FormatError::Unsupported(format!(
                    "daemon: unknown key {k:?}"
                )));
            }
            named
                .into_iter()
                .map(|(name, v)| Ok((name.clone(), typed(v, &format!("daemon.servers.{name}"))?)))
                .collect()
        }
        Some(Value::Array(listed)) => {
            if let Some(k) = daemon.keys().next() {
                return Err(FormatError::Unsupported(format!(
                    "daemon: unknown key {k:?}"
                )));
            }
            // virtlogd names them from its default list, which holds only
            // "virtlogd"; one more is an error there too.
            if listed.len() != 1 {
                return Err(FormatError::Unsupported(format!(
                    "daemon.servers lists {} servers; virtlogd names only one",
                    listed.len()
                )));
            }
            let mut out = BTreeMap::new();
            for v in listed {
                out.insert("virtlogd".to_owned(), typed(v, "daemon.servers[0]")?);
            }
            Ok(out)
        }
        Some(_) => Err(FormatError::Unsupported(
            "daemon.servers is neither an object nor an array".into(),
        )),
        None => Ok(BTreeMap::from([(
            "virtlogd".to_owned(),
            typed(Value::Object(daemon), "daemon")?,
        )])),
    }
}

/// `v` as a `T`, with the path of whatever does not fit.
fn typed<T: serde::de::DeserializeOwned>(v: Value, at: &str) -> Result<T, FormatError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (at, inner.as_str()) {
            ("", ".") => "the top level".to_owned(),
            ("", p) => p.to_owned(),
            (a, ".") => a.to_owned(),
            (a, p) => format!("{a}.{p}"),
        };
        FormatError::Key {
            path,
            source: e.into_inner(),
        }
    })
}

/// Whether `s` is a UUID as virtlogd writes one: 8-4-4-4-12 hex digits.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What virtlogd 11.3 wrote, self-bound, vm1's client connected and
    /// one admin connection open (the takeover note's example).
    pub const WRITTEN: &str = r#"{
  "daemon": {
    "servers": {
      "admin": {
        "min_workers": 0, "max_workers": 0, "priority_workers": 0,
        "max_clients": 5000, "max_anonymous_clients": 5000,
        "keepaliveInterval": 4294967295, "keepaliveCount": 0,
        "next_client_id": 2,
        "services": [{"auth": 0, "readonly": false, "nrequests_client_max": 1,
          "socks": [{"fd": 5, "errfd": -1, "pid": 0, "isClient": false, "unlinkUNIX": true}]}],
        "clients": [{"id": 1, "auth": 0, "auth_pending": false, "readonly": false,
          "nrequests_max": 1, "conn_time": 1796292689,
          "sock": {"fd": 11, "errfd": -1, "pid": 0, "isClient": true, "unlinkUNIX": false},
          "privateData": {}}]
      },
      "virtlogd": {
        "min_workers": 0, "max_workers": 0, "priority_workers": 0,
        "max_clients": 1024, "max_anonymous_clients": 1024,
        "keepaliveInterval": 4294967295, "keepaliveCount": 0,
        "next_client_id": 3,
        "services": [{"auth": 0, "readonly": false, "nrequests_client_max": 1,
          "socks": [{"fd": 4, "errfd": -1, "pid": 0, "isClient": false, "unlinkUNIX": true}]}],
        "clients": [{"id": 1, "auth": 0, "auth_pending": false, "readonly": false,
          "nrequests_max": 1, "conn_time": 1796292689,
          "sock": {"fd": 9, "errfd": -1, "pid": 0, "isClient": true, "unlinkUNIX": false},
          "privateData": {}}]
      }
    }
  },
  "magic": "23022",
  "handler": {
    "files": [
      {"pipefd": 10, "path": "/var/log/libvirt/qemu/vm1.log", "driver": "QEMU",
       "domname": "vm1", "domuuid": "00010203-0405-0607-0809-0a0b0c0d0e0f"},
      {"pipefd": 13, "path": "/var/log/libvirt/qemu/vm2-serial0.log", "driver": "QEMU",
       "domname": "vm2", "domuuid": "10111213-1415-1617-1819-1a1b1c1d1e1f"}
    ]
  }
}"#;

    #[test]
    fn reads_what_virtlogd_writes() {
        let s = VirtlogdState::parse(WRITTEN.as_bytes()).unwrap();
        assert_eq!(magic(WRITTEN.as_bytes()).as_deref(), Some("23022"));
        assert_eq!(s.magic, "23022");
        let listener: Vec<_> = s.virtlogd.listeners().collect();
        assert_eq!((listener[0].fd, listener[0].unlinks()), (4, true));
        assert_eq!(s.virtlogd.clients[0].sock.fd, 9);
        assert_eq!(s.admin.as_ref().unwrap().clients[0].sock.fd, 11);
        assert_eq!(s.files[1].pipefd, 13);
        assert_eq!(s.files[1].domname, "vm2");
    }

    #[test]
    fn writes_what_it_reads_back() {
        let s = VirtlogdState::parse(WRITTEN.as_bytes()).unwrap();
        assert_eq!(VirtlogdState::parse(&s.to_json()).unwrap(), s);
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(
            v["daemon"]["servers"]["virtlogd"]["keepaliveInterval"],
            4294967295u64
        );
        assert_eq!(v["magic"], "23022");
    }

    #[test]
    fn reads_the_older_shapes_of_servers() {
        let v: Value = serde_json::from_str(WRITTEN).unwrap();
        let server = v["daemon"]["servers"]["virtlogd"].clone();
        let mut listed = v.clone();
        listed["daemon"] = serde_json::json!({ "servers": [server.clone()] });
        let s = VirtlogdState::parse(listed.to_string().as_bytes()).unwrap();
        assert!(s.admin.is_none());
        let mut bare = v.clone();
        bare["daemon"] = server;
        let s = VirtlogdState::parse(bare.to_string().as_bytes()).unwrap();
        assert_eq!(s.virtlogd.clients.len(), 1);
    }

    /// A change to a written state, named.
    type Case<'a> = (&'a str, &'a dyn Fn(&mut Value));

    #[test]
    fn refuses_what_it_could_not_carry() {
        let cases: &[Case] = &[
            ("unknown top key", &|v| v["future"] = 1.into()),
            ("unknown client key", &|v| {
                v["daemon"]["servers"]["virtlogd"]["clients"][0]["tls"] = true.into()
            }),
            ("authentication", &|v| {
                v["daemon"]["servers"]["virtlogd"]["services"][0]["auth"] = 2.into()
            }),
            ("fd named twice", &|v| {
                v["handler"]["files"][1]["pipefd"] = 10.into()
            }),
            ("stdin", &|v| v["handler"]["files"][0]["pipefd"] = 0.into()),
            ("bad uuid", &|v| {
                v["handler"]["files"][0]["domuuid"] = "x".into()
            }),
            ("no magic", &|v| {
                v.as_object_mut().unwrap().remove("magic");
            }),
            ("third server", &|v| {
                let admin = v["daemon"]["servers"]["admin"].clone();
                v["daemon"]["servers"]["other"] = admin;
            }),
            ("missing key", &|v| {
                v["daemon"]["servers"]["virtlogd"]
                    .as_object_mut()
                    .unwrap()
                    .remove("max_clients");
            }),
        ];
        for (what, change) in cases {
            let mut v: Value = serde_json::from_str(WRITTEN).unwrap();
            change(&mut v);
            let e = VirtlogdState::parse(v.to_string().as_bytes());
            assert!(e.is_err(), "{what} accepted");
        }
        let e = VirtlogdState::parse(
            b"{\"magic\": \"1\", \"daemon\": {}, \"handler\": {\"files\": []}, \"x\": 1}",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains('x'), "{e}");
    }

    #[test]
    fn knows_a_uuid() {
        assert!(is_uuid("00010203-0405-0607-0809-0a0b0c0d0e0f"));
        assert!(!is_uuid("00010203-0405-0607-0809-0a0b0c0d0e0"));
        assert!(!is_uuid("0001020g-0405-0607-0809-0a0b0c0d0e0f"));
    }
}
