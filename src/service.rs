//! `Manager`: the calls of `io.guestlogd.Manager` and `org.varlink.service`.
//!
//! `dispatch` validates a call, checks the caller's access and answers
//! from memory (`Answer::Now`), or returns the work that may touch the disk
//! as a job (`Answer::Later`, run on a blocking thread) or a stream of
//! replies (`Answer::Stream`). It never waits itself: the varlink front
//! (`varlink`) awaits the job on the caller's own connection task.
//!
//! Every bad call gets an error reply: a wrong type, a missing or unknown
//! parameter and an unknown method each get one, and the connection stays
//! usable.

use std::{
    collections::VecDeque,
    os::fd::OwnedFd,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use zlink::varlink_service;

use crate::{
    api::{self, ManagerError},
    boot,
    config::{self, Access},
    console::{AttachError, Owner},
    daemon::Status,
    limited,
    name::{self, LogName},
    ops::{ConsoleRequest, OpError, Ops, PipeOptions, PolicyChange},
    queue::{OutputQueue, SlowPolicy},
    registry::{Log, error_chain},
    rotator::Pos,
    server::{Counters, Peer},
    varlink::RawCall,
    writers::{Who, Writers},
};

/// The most bytes one ReadLog returns. zlink grows a reply buffer in small
/// steps, re-serialising each time, so a reply costs time quadratic in its
/// size; at 64 KiB of data (about 88 KiB of base64) it stays near 10 ms.
pub const MAX_READ: usize = 64 * 1024;
const DEFAULT_READ: usize = 32 * 1024;
/// The longest AppendLog message.
pub const MAX_MESSAGE: usize = 64 * 1024;
const DEFAULT_REPLAY: usize = 16 * 1024;
const MAX_REPLAY: i64 = 1024 * 1024;

/// `org.varlink.service`'s own definition, for GetInterfaceDescription.
const VARLINK_SERVICE: &str = "\
# The Varlink Service Interface is provided by every varlink service. It
# describes the service and the interfaces it implements.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information
# about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not
# implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
";

/// Every error a call can end with.
#[derive(Debug)]
pub enum WireError {
    Manager(ManagerError),
    Varlink(varlink_service::Error<'static>),
}

impl Serialize for WireError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Manager(e) => e.serialize(s),
            Self::Varlink(e) => e.serialize(s),
        }
    }
}

impl From<ManagerError> for WireError {
    fn from(e: ManagerError) -> Self {
        Self::Manager(e)
    }
}

impl From<OpError> for WireError {
    fn from(e: OpError) -> Self {
        let name = |n: LogName| n.to_string();
        match e {
            OpError::NoSuchLog(n) => ManagerError::NoSuchLog { name: name(n) },
            OpError::NoSuchConsole(n) => ManagerError::NoSuchConsole { name: name(n) },
            OpError::ConsoleExists(n) => ManagerError::ConsoleExists { name: name(n) },
            OpError::Limit { what, max } => return limit(what, max),
            e @ (OpError::File(_)
            | OpError::Pipe(_)
            | OpError::Console { .. }
            | OpError::Busy(_)) => {
                limited!(warn, error = %error_chain(&e), "call failed");
                ManagerError::IoError {
                    message: error_chain(&e),
                }
            }
        }
        .into()
    }
}

/// Policy parameters as a call gives them.
fn policy(max_size: Option<i64>, max_backups: Option<i64>) -> Result<PolicyChange, WireError> {
    Ok(PolicyChange {
        max_size: max_size.map(|v| ranged("maxSize", v)).transpose()?,
        max_backups: max_backups.map(|v| ranged("maxBackups", v)).transpose()?,
    })
}

/// A reply's parameters and the FDs that go with it.
pub type Reply0 = Result<(Value, Vec<OwnedFd>), WireError>;
/// A call's work, run off the connection's task.
pub type Job = Pin<Box<dyn Future<Output = Reply0> + Send>>;
/// Replies that go on: each with whether more follow.
pub type Replies = Pin<Box<dyn Stream<Item = (Result<Value, WireError>, bool)> + Send>>;

/// How a call is answered.
pub enum Answer {
    /// A reply ready now.
    Now(Value),
    /// Work that may touch the disk; its result is the reply.
    Later(Job),
    /// A stream of replies (`more`).
    Stream(Replies),
}

/// Entries in one streamed ListLogs reply.
const LIST_PAGE: usize = 256;

/// Who may call, from the config plus uid 0 and the daemon's own uid.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    own_uid: u32,
    extra: Access,
}

impl AccessPolicy {
    pub fn new(extra: Access) -> Self {
        Self {
            own_uid: nix::unistd::geteuid().as_raw(),
            extra,
        }
    }

    /// Judged by SO_PEERCRED's uid and gid and SO_PEERGROUPS, which hold
    /// for callers outside our PID namespace too.
    fn allows(&self, c: &Peer) -> bool {
        c.uid == 0
            || c.uid == self.own_uid
            || self.extra.uids.contains(&c.uid)
            || c.gids.iter().any(|g| self.extra.gids.contains(g))
    }
}

/// The service. Cheap to hold: all state lives in the registry.
#[derive(Debug)]
pub struct Manager {
    pub ops: Ops,
    pub access: AccessPolicy,
    pub status: Arc<Status>,
    /// What happened to connections.
    pub counters: Arc<Counters>,
    /// Connection tasks, to count the connections open now.
    pub connections: TaskTracker,
    /// The libvirt front's counters and connection tasks, if it serves.
    pub libvirt: Option<(Arc<Counters>, TaskTracker)>,
}

impl Manager {
    /// Answers one call from `caller`.
    pub fn dispatch(&self, call: &RawCall, caller: &Peer) -> Result<Answer, WireError> {
        let RawCall {
            method, parameters, ..
        } = call;
        let (interface, member) = method.rsplit_once('.').unwrap_or(("", method));
        if interface == "org.varlink.service" {
            return varlink_call(member, parameters).map(Answer::Now);
        }
        if interface != api::INTERFACE {
            return Err(WireError::Varlink(
                varlink_service::Error::InterfaceNotFound {
                    interface: interface.to_owned().into(),
                },
            ));
        }

        if !self.access.allows(caller) {
            limited!(debug, uid = caller.uid, method, "call refused");
            return Err(ManagerError::PermissionDenied {
                uid: caller.uid.into(),
            }
            .into());
        }

        let job = match member {
            "ListLogs" => {
                let _: Empty = parse(parameters)?;
                return self.list_logs(call.more);
            }
            "GetStatus" => {
                let _: Empty = parse(parameters)?;
                return Ok(Answer::Now(self.status()));
            }
            "Follow" => {
                if !call.more {
                    return Err(WireError::Varlink(varlink_service::Error::ExpectedMore));
                }
                return self.follow(parse(parameters)?).map(Answer::Stream);
            }
            "OpenPipe" => self.open_pipe(parse(parameters)?)?,
            "Rotate" => self.rotate(parse(parameters)?)?,
            "ReadLog" => self.read_log(parse(parameters)?)?,
            "AppendLog" => self.append_log(parse(parameters)?)?,
            "CreateConsole" => self.create_console(parse(parameters)?)?,
            "RemoveConsole" => self.remove_console(parse(parameters)?)?,
            "AttachConsole" => self.attach_console(parse(parameters)?, caller)?,
            _ => {
                return Err(WireError::Varlink(varlink_service::Error::MethodNotFound {
                    method: method.clone().into(),
                }));
            }
        };
        Ok(Answer::Later(job))
    }

    /// The whole list in one reply if it fits the message-size limit, or
    /// in pages with `more`. Either way it costs time linear in its size.
    fn list_logs(&self, more: bool) -> Result<Answer, WireError> {
        let (logs, consoles) = self.list();
        if more {
            let mut pages: Vec<(Result<Value, WireError>, bool)> = logs
                .chunks(LIST_PAGE)
                .map(|page| {
                    to_value(api::ListLogsOutput {
                        logs: page.to_vec(),
                        consoles: vec![],
                    })
                })
                .chain(consoles.chunks(LIST_PAGE).map(|page| {
                    to_value(api::ListLogsOutput {
                        logs: vec![],
                        consoles: page.to_vec(),
                    })
                }))
                .map(|v| (Ok(v), true))
                .collect();
            match pages.last_mut() {
                Some(last) => last.1 = false,
                None => pages.push((Ok(to_value(api::ListLogsOutput { logs, consoles })), false)),
            }
            return Ok(Answer::Stream(Box::pin(stream::iter(pages))));
        }
        let reply = to_value(api::ListLogsOutput { logs, consoles });
        let max = self.ops.limits.max_message_size;
        if encoded_len(&reply) > max {
            return Err(limit("replySize", max));
        }
        Ok(Answer::Now(reply))
    }

    fn list(&self) -> (Vec<api::LogInfo>, Vec<api::ConsoleInfo>) {
        let logs = self
            .ops
            .registry
            .logs()
            .iter()
            .map(|log| {
                let s = log.snapshot();
                api::LogInfo {
                    name: s.name.to_string(),
                    path: s.path.display().to_string(),
                    size: int(s.size),
                    backups: int(s.backups),
                    max_size: int(s.policy.max_size),
                    max_backups: s.policy.max_backups.into(),
                    pipes: int(s.pipes as u64),
                    bytes_written: int(s.bytes_written),
                    bytes_dropped: int(s.bytes_dropped),
                    rotations: int(s.rotations),
                }
            })
            .collect();
        let consoles = self
            .ops
            .consoles
            .all()
            .iter()
            .map(|c| {
                let s = &c.stats;
                let path = |p: &std::path::Path| p.display().to_string();
                api::ConsoleInfo {
                    name: c.name.to_string(),
                    guest_socket: path(&c.guest_socket),
                    client_socket: path(&c.client_socket),
                    view_socket: c.view_socket.as_deref().map(path),
                    log_path: c.log_path.as_deref().map(path),
                    guest_connected: s.guest_connected.load(Relaxed),
                    clients: int(s.clients.load(Relaxed) as u64),
                    viewers: int(s.viewers.load(Relaxed) as u64),
                    bytes_from_guest: int(s.bytes_from_guest.load(Relaxed)),
                    bytes_to_guest: int(s.bytes_to_guest.load(Relaxed)),
                    bytes_dropped_for_clients: int(s.bytes_dropped_for_clients.load(Relaxed)
                        + c.log.as_ref().map_or(0, |l| l.followers_dropped())),
                    writers: c.settings.writers.as_str().to_owned(),
                    writer: s
                        .writer
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .as_ref()
                        .map(|(_, who)| api::ConsolePeer {
                            uid: who.uid.into(),
                            pid: who.pid.into(),
                        }),
                    boot_log_path: c.boot_log_path.as_deref().map(path),
                    boot_bytes: int(if c.settings.boot.is_some() {
                        c.settings.boot_bytes
                    } else {
                        0
                    }),
                }
            })
            .collect();
        (logs, consoles)
    }

    fn status(&self) -> Value {
        let started = self
            .status
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let store = self.ops.registry.store();
        to_value(api::GetStatusOutput {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id().into(),
            start_time: int(started),
            adoptions: int(self.status.adoptions),
            stored_fds: int(store.len() as u64),
            fd_store: store.under_systemd(),
            connections: Self::connection_stats(&self.counters, &self.connections),
            libvirt_connections: self
                .libvirt
                .as_ref()
                .map(|(counters, tasks)| Self::connection_stats(counters, tasks)),
            logs: int(self.ops.registry.len() as u64),
            open_log_files: int(self.ops.registry.open_files() as u64),
        })
    }

    fn connection_stats(c: &Counters, connections: &TaskTracker) -> api::ConnectionStats {
        let n = |a: &std::sync::atomic::AtomicU64| int(a.load(Relaxed));
        api::ConnectionStats {
            open: int(connections.len() as u64),
            accepted: n(&c.accepted),
            refused_connections: n(&c.refused_connections),
            refused_per_uid: n(&c.refused_per_uid),
            closed_idle: n(&c.closed_idle),
            closed_message_timeout: n(&c.closed_message_timeout),
            closed_message_size: n(&c.closed_message_size),
            closed_write_timeout: n(&c.closed_write_timeout),
            closed_fds: n(&c.closed_fds),
            fds_dropped: n(&c.fds_dropped),
            closed_oneway: n(&c.closed_oneway),
            closed_bad_message: n(&c.closed_bad_message),
        }
    }

    fn create_console(&self, p: api::CreateConsoleInput) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        let policy = policy(p.max_size, p.max_backups)?;
        let replay = replay_bytes(p.replay_bytes)?;
        let slow = match p.slow_client.as_deref() {
            None | Some("drop") => SlowPolicy::Drop,
            Some("disconnect") => SlowPolicy::Disconnect,
            Some(_) => {
                return Err(invalid(
                    "slowClient",
                    "must be \"drop\" or \"disconnect\"".into(),
                ));
            }
        };
        let owner = match p.owner {
            None => Owner::default(),
            Some(o) => Owner {
                uid: o.uid.map(|v| id("owner.uid", v)).transpose()?,
                gid: o.gid.map(|v| id("owner.gid", v)).transpose()?,
                mode: match o.mode {
                    None => 0o600,
                    Some(m @ 0..=0o777) => m as u32,
                    Some(_) => {
                        return Err(invalid("owner.mode", "must be from 0 to 511 (0777)".into()));
                    }
                },
            },
        };
        let writers = match p.writers.as_deref() {
            None | Some("all") => Writers::All,
            Some("one") => Writers::One,
            Some(_) => return Err(invalid("writers", "must be \"all\" or \"one\"".into())),
        };
        let boot = match p.boot_bytes {
            None | Some(0) => None,
            Some(n @ 1..) if n as u64 <= boot::MAX_BYTES => {
                let boot_name = boot::name(&name).map_err(|e| {
                    invalid(
                        "bootBytes",
                        format!("the boot log's name {name}.boot is refused: {e}"),
                    )
                })?;
                Some((boot_name, n as u64))
            }
            Some(_) => {
                return Err(invalid(
                    "bootBytes",
                    format!("must be from 0 to {}", boot::MAX_BYTES),
                ));
            }
        };
        // Refused before any work is queued, so a refused call changes nothing.
        self.ops.check_console(&name)?;
        let request = ConsoleRequest {
            name,
            log: p.log != Some(false),
            policy,
            replay,
            slow,
            owner,
            viewers: p.viewers == Some(true),
            writers,
            boot,
        };
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            let console = ops.create_console(request).await?;
            let path = |p: &std::path::Path| p.display().to_string();
            let reply = serde_json::json!({
                "guestSocket": path(&console.guest_socket),
                "clientSocket": path(&console.client_socket),
                "viewSocket": console.view_socket.as_deref().map(path),
                "logPath": console.log_path.as_deref().map(path),
                "bootLogPath": console.boot_log_path.as_deref().map(path),
            });
            Ok((reply, vec![]))
        }))
    }

    fn remove_console(&self, p: api::RemoveConsoleInput) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            ops.remove_console(&name).await?;
            Ok((empty(), vec![]))
        }))
    }

    /// A client end of a console for the caller, recorded with its
    /// SO_PEERCRED.
    fn attach_console(&self, p: api::AttachConsoleInput, caller: &Peer) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        if self.ops.consoles.get(&name).is_none() {
            return Err(OpError::NoSuchConsole(name).into());
        }
        let who = Who {
            uid: caller.uid,
            pid: caller.pid,
        };
        let (viewer, force) = (p.viewer == Some(true), p.force == Some(true));
        let consoles = self.ops.consoles.clone();
        Ok(Box::pin(async move {
            let (fd, writer) =
                consoles
                    .attach(&name, who, viewer, force)
                    .await
                    .map_err(|e| match e {
                        AttachError::NoSuchConsole(n) => OpError::NoSuchConsole(n).into(),
                        AttachError::Limit(max) => limit("clients", max),
                        e @ AttachError::Socket(_) => {
                            limited!(warn, error = %error_chain(&e), "call failed");
                            WireError::from(ManagerError::IoError {
                                message: error_chain(&e),
                            })
                        }
                    })?;
            let reply = serde_json::json!({ "fileDescriptor": 0, "writer": writer });
            Ok((reply, vec![fd]))
        }))
    }

    fn follow(&self, p: api::FollowInput) -> Result<Replies, WireError> {
        let name = any_log(&p.name)?;
        let replay = replay_bytes(p.replay_bytes)?;
        // Known now, so an unknown log is refused before the stream starts.
        if self.ops.registry.get(&name).is_none() {
            return Err(OpError::NoSuchLog(name).into());
        }
        let text = p.text == Some(true);
        let ops = self.ops.clone();
        let start = async move { ops.follow(&name, replay).await };
        let stream = stream::once(start).flat_map(move |started| match started {
            Ok((queue, log)) => follow_stream(Following(queue, log), text).boxed(),
            Err(e) => stream::iter([(Err(WireError::from(e)), false)]).boxed(),
        });
        Ok(Box::pin(stream))
    }

    fn open_pipe(&self, p: api::OpenPipeInput) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        let options = PipeOptions {
            policy: policy(p.max_size, p.max_backups)?,
            truncate: p.truncate == Some(true),
            ..PipeOptions::default()
        };
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            let opened = ops.open_pipe(&name, options).await?;
            let path = opened.path.display().to_string();
            let reply = api::OpenPipeOutput {
                file_descriptor: 0,
                path: &path,
                position: wire_pos(opened.position),
            };
            Ok((to_value(reply), vec![opened.fd]))
        }))
    }

    fn rotate(&self, p: api::RotateInput) -> Result<Job, WireError> {
        let name = any_log(&p.name)?;
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            ops.rotate(&name).await?;
            Ok((empty(), vec![]))
        }))
    }

    fn read_log(&self, p: api::ReadLogInput) -> Result<Job, WireError> {
        let name = any_log(&p.name)?;
        let from = p
            .position
            .map(|pos| {
                Ok::<_, WireError>(Pos {
                    inode: ranged("position.inode", pos.inode)?,
                    offset: ranged("position.offset", pos.offset)?,
                })
            })
            .transpose()?;
        let max = match p.max_bytes {
            None => DEFAULT_READ,
            Some(n) if (1..=MAX_READ as i64).contains(&n) => n as usize,
            Some(_) => {
                return Err(invalid("maxBytes", format!("must be from 1 to {MAX_READ}")));
            }
        };
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            let chunk = ops.read(&name, from, max).await?;
            let data = base64::engine::general_purpose::STANDARD.encode(&chunk.data);
            let text = (p.text == Some(true)).then(|| String::from_utf8_lossy(&chunk.data));
            let reply = api::ReadLogOutput {
                data: &data,
                text: text.as_deref(),
                position: wire_pos(chunk.next),
                eof: chunk.eof,
                skipped: chunk.skipped,
            };
            Ok((to_value(reply), vec![]))
        }))
    }

    fn append_log(&self, p: api::AppendLogInput) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        if p.message.len() > MAX_MESSAGE {
            return Err(invalid(
                "message",
                format!("is longer than {MAX_MESSAGE} bytes"),
            ));
        }
        let mut message = p.message;
        if !message.ends_with('\n') {
            message.push('\n');
        }
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            ops.append(&name, message.into_bytes(), PolicyChange::default())
                .await?;
            Ok((empty(), vec![]))
        }))
    }
}

/// Answers `org.varlink.service`, whose replies are the interface file.
fn varlink_call(member: &str, parameters: &Option<Value>) -> Result<Value, WireError> {
    match member {
        "GetInfo" => {
            let _: Empty = parse(parameters)?;
            Ok(serde_json::json!({
                "vendor": "guestlogd",
                "product": "guestlogd",
                "version": env!("CARGO_PKG_VERSION"),
                "url": "",
                "interfaces": ["io.guestlogd.Manager", "org.varlink.service"],
            }))
        }
        "GetInterfaceDescription" => {
            let p: DescriptionInput = parse(parameters)?;
            let description = match p.interface.as_str() {
                api::INTERFACE => api::DESCRIPTION,
                "org.varlink.service" => VARLINK_SERVICE,
                _ => {
                    return Err(WireError::Varlink(
                        varlink_service::Error::InterfaceNotFound {
                            interface: p.interface.into(),
                        },
                    ));
                }
            };
            Ok(serde_json::json!({ "description": description }))
        }
        _ => Err(WireError::Varlink(varlink_service::Error::MethodNotFound {
            method: format!("org.varlink.service.{member}").into(),
        })),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptionInput {
    interface: String,
}

/// Decodes a call's parameters, naming the parameter at fault.
pub fn parse<T: DeserializeOwned>(parameters: &Option<Value>) -> Result<T, WireError> {
    let value = match parameters {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let reason = e.inner().to_string();
        let path = e.path().to_string();
        // A missing field is reported at its parent, with the field's name
        // in the message between backquotes.
        // An unknown field is already the last part of the path.
        let field = reason
            .starts_with("missing field")
            .then(|| reason.split('`').nth(1))
            .flatten();
        let parameter = match (path.as_str(), field) {
            (".", Some(f)) => f.to_owned(),
            (".", None) => "parameters".to_owned(),
            (_, Some(f)) => format!("{path}.{f}"),
            (_, None) => path,
        };
        invalid(&parameter, reason)
    })
}

/// A follower's queue, closed when its stream ends, so the log stops
/// feeding it; and the log, which is not forgotten while followed.
struct Following(Arc<OutputQueue>, #[allow(dead_code)] Arc<Log>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The most log bytes in one Follow reply: a reply is written whole before
/// the next batch is taken, so a small one lets a slow follower's queue,
/// not the reply, absorb what it cannot take yet.
const FOLLOW_CHUNK: usize = 16 * 1024;

fn follow_stream(
    following: Following,
    text: bool,
) -> impl Stream<Item = (Result<Value, WireError>, bool)> + Send {
    let state = (following, VecDeque::<(Bytes, u64)>::new());
    stream::unfold(state, move |(following, mut ready)| async move {
        if ready.is_empty() {
            // The last batch is out (its replies were written before this
            // stream was polled again): only now does it stop counting
            // against the follower's queue, so a follower costs one queue.
            following.0.sent();
            let batch = following.0.pop().await?;
            let data = Bytes::from(batch.chunks.concat());
            let mut dropped = batch.dropped;
            for at in (0..data.len().max(1)).step_by(FOLLOW_CHUNK) {
                let end = (at + FOLLOW_CHUNK).min(data.len());
                ready.push_back((data.slice(at..end), std::mem::take(&mut dropped)));
            }
        }
        let (data, dropped) = ready.pop_front()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let text = text.then(|| String::from_utf8_lossy(&data));
        let reply = api::FollowOutput {
            data: &encoded,
            text: text.as_deref(),
            dropped: int(dropped),
        };
        Some(((Ok(to_value(reply)), true), (following, ready)))
    })
}

fn limit(what: &str, max: usize) -> WireError {
    ManagerError::LimitReached {
        limit: what.into(),
        max: int(max as u64),
    }
    .into()
}

/// How much output a new client or follower gets first.
fn replay_bytes(v: Option<i64>) -> Result<usize, WireError> {
    match v {
        None => Ok(DEFAULT_REPLAY),
        Some(n @ 0..=MAX_REPLAY) => Ok(n as usize),
        Some(_) => Err(invalid(
            "replayBytes",
            format!("must be from 0 to {MAX_REPLAY}"),
        )),
    }
}

fn id(parameter: &str, v: i64) -> Result<u32, WireError> {
    u32::try_from(v).map_err(|_| invalid(parameter, "must be from 0 to 4294967295".into()))
}

/// A plain name: what calls that create a log or console take.
fn log_name(name: &str) -> Result<LogName, WireError> {
    LogName::try_from(name).map_err(|e| bad_name(name, e))
}

/// A plain name or a path-addressed log's path: what calls that look up
/// an existing log take.
fn any_log(name: &str) -> Result<LogName, WireError> {
    LogName::parse(name).map_err(|e| bad_name(name, e))
}

fn bad_name(name: &str, e: name::NameError) -> WireError {
    let max = if name.starts_with('/') {
        name::MAX_PATH_LEN
    } else {
        name::MAX_LEN
    };
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    ManagerError::InvalidName {
        name: name[..end].to_owned(),
        reason: e.to_string(),
    }
    .into()
}

/// A non-negative wire integer in the range its parameter allows.
fn ranged<T: TryFrom<i64>>(parameter: &str, v: i64) -> Result<T, WireError> {
    let fits = match parameter {
        "maxSize" => config::check_policy_size(v),
        "maxBackups" => config::check_policy_backups(v),
        _ => (v >= 0)
            .then_some(())
            .ok_or_else(|| "must not be negative".to_owned()),
    };
    fits.map_err(|why| invalid(parameter, why))?;
    T::try_from(v).map_err(|_| invalid(parameter, "is out of range".into()))
}

fn invalid(parameter: &str, reason: String) -> WireError {
    ManagerError::InvalidParameter {
        parameter: parameter.to_owned(),
        reason,
    }
    .into()
}

fn wire_pos(p: Pos) -> api::Position {
    api::Position {
        inode: int(p.inode),
        offset: int(p.offset),
    }
}

/// Wire integers are signed 64-bit; nothing we count comes near the limit.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn empty() -> Value {
    Value::Object(Default::default())
}

/// The bytes `v` takes as JSON, counted without keeping them.
fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn to_value(v: impl Serialize) -> Value {
    // Our own output types always serialise; a map with string keys cannot fail.
    serde_json::to_value(v).unwrap_or_else(|_| empty())
}
