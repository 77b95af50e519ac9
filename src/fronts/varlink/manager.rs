//! `Manager`: the calls of `io.guestlogd.Manager` and `org.varlink.service`,
//! each a few lines over `ops`.
//!
//! `dispatch` validates a call, checks the caller's access and answers
//! from memory (`Answer::Now`), or returns the work that may touch the disk
//! as a job (`Answer::Later`, run on a blocking thread) or a stream of
//! replies (`Answer::Stream`). It never waits itself: the varlink front
//! (`framing`) awaits the job on the caller's own connection task.
//!
//! Every bad call gets an error reply: a wrong type, a missing or unknown
//! parameter and an unknown method each get one, and the connection stays
//! usable.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use base64::Engine as _;
use futures_util::{StreamExt, stream};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use zlink::varlink_service;

use super::{
    api::{self, ManagerError},
    follow::{Following, follow_stream},
    framing::{self, RawCall, Service},
    introspect::varlink_call,
    wire::{
        Empty, WireError, any_log, domain, domain_uuid, empty, encoded_len, id, int, invalid,
        journal, limit, log_name, parse, policy, ranged, replay_bytes, to_value, wire_domain,
        wire_pos,
    },
};
use crate::{
    config::Access,
    consoles::{
        boot,
        console::{AttachError, Owner},
        writers::{Who, Writers},
    },
    error_chain,
    fronts::server::{Counters, Peer},
    handover::virtlogd::handback::Request,
    limited,
    logs::{policy::PolicyChange, queue::SlowPolicy, rotator::Pos},
    ops::{ConsoleRequest, OpError, Ops, PipeOptions, Status},
};

type Answer = framing::Answer<WireError>;
type Job = framing::Job<WireError>;
type Replies = framing::Replies<WireError>;

/// The most bytes one ReadLog returns. zlink grows a reply buffer in small
/// steps, re-serialising each time, so a reply costs time quadratic in its
/// size; at 64 KiB of data (about 88 KiB of base64) it stays near 10 ms.
pub const MAX_READ: usize = 64 * 1024;
const DEFAULT_READ: usize = 32 * 1024;
/// The longest AppendLog message.
pub const MAX_MESSAGE: usize = 64 * 1024;

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
    /// Where HandBackToVirtlogd asks the daemon, when the libvirt front
    /// serves.
    pub hand_back: Option<Arc<Request>>,
}

impl Service for Manager {
    type Error = WireError;
    const INTERFACE: &'static str = api::INTERFACE;

    fn dispatch(&self, call: &RawCall, caller: &Peer) -> Result<Answer, WireError> {
        Manager::dispatch(self, call, caller)
    }
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
            "ExpectMigration" => return self.expect_migration(parse(parameters)?),
            "EndMigration" => return self.end_migration(parse(parameters)?),
            "UseFdStore" => {
                let _: Empty = parse(parameters)?;
                return self.use_fd_store(caller);
            }
            "HandBackToVirtlogd" => return self.hand_back(parse(parameters)?, caller),
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
                    bytes_suppressed: int(s.bytes_suppressed),
                    bytes_evicted: int(s.bytes_evicted),
                    rotations: int(s.rotations),
                    max_rate: int(s.policy.max_rate),
                    max_burst: int(s.policy.max_burst),
                    journal: s.journal.and_then(|j| {
                        let settings = log.journal().settings()?;
                        Some(api::LogJournal {
                            kind: settings.kind.as_str().to_owned(),
                            vm_name: settings.vm_name,
                            vm_uuid: settings.vm_uuid,
                            lines_sent: int(j.lines_sent),
                            lines_suppressed: int(j.lines_suppressed),
                        })
                    }),
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
                    bytes_dropped_for_clients: int(c.bytes_dropped_for_clients()),
                    throttled_seconds: s.throttled_us.load(Relaxed) as f64 / 1e6,
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
                    domain: c.domain().map(wire_domain),
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
            disk: self.disk_status(),
            virtlogd: self
                .status
                .from_virtlogd
                .as_ref()
                .map(|t| api::FromVirtlogd {
                    pipes: t.pipes.clone(),
                    connections: int(t.clients as u64),
                }),
        })
    }

    fn disk_status(&self) -> api::DiskStatus {
        let v = &self.ops.vacuum;
        let (l, f) = (v.limits(), &v.figures);
        let used = f.used.load(Relaxed);
        api::DiskStatus {
            active: l.budget(),
            max_use: int(l.max_use),
            keep_free: int(l.keep_free),
            used: (used != u64::MAX).then(|| int(used)),
            bytes_evicted: int(f.bytes_evicted.load(Relaxed)),
            files_evicted: int(f.files_evicted.load(Relaxed)),
            max_age_days: int(l.max_age_days),
            logs_expired: int(f.logs_expired.load(Relaxed)),
            files_expired: int(f.files_expired.load(Relaxed)),
        }
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
        let policy = policy(p.max_size, p.max_backups, p.max_rate, p.max_burst)?;
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
        // The machine of the exported lines is the console's domain unless
        // the call names another.
        let vm = p.vm.or_else(|| {
            p.domain.as_ref().map(|d| api::VirtualMachine {
                name: Some(d.name.clone()),
                uuid: Some(d.uuid.clone()),
            })
        });
        let domain = p.domain.map(|d| domain("domain", d)).transpose()?;
        let journal = journal(p.journal, vm)?;
        if journal.on == Some(true) && p.log == Some(false) {
            return Err(invalid(
                "journal",
                "needs the console's log (log: false keeps none)".into(),
            ));
        }
        // Refused before any work is queued, so a refused call changes nothing.
        self.ops.check_console(&name, domain.as_ref())?;
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
            domain,
            journal,
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
        let owner = p
            .domain_uuid
            .as_deref()
            .map(|u| domain_uuid("domainUuid", u))
            .transpose()?;
        let migrated = p.migrated == Some(true);
        let ops = self.ops.clone();
        Ok(Box::pin(async move {
            ops.remove_console(&name, owner.as_deref(), migrated)
                .await?;
            Ok((empty(), vec![]))
        }))
    }

    /// No I/O: the table is in memory, and saved by the state task.
    fn expect_migration(&self, p: api::ExpectMigrationInput) -> Result<Answer, WireError> {
        let d = domain("domain", p.domain)?;
        self.ops.expect_migration(&d);
        Ok(Answer::Now(empty()))
    }

    fn end_migration(&self, p: api::EndMigrationInput) -> Result<Answer, WireError> {
        let uuid = domain_uuid("domainUuid", &p.domain_uuid)?;
        let was_arriving = self.ops.end_migration(&uuid);
        Ok(Answer::Now(to_value(api::EndMigrationOutput {
            was_arriving,
        })))
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
                        AttachError::Limit { what, max } => limit(what, max),
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
            Ok((queue, log, seat)) => follow_stream(Following(queue, log, seat), text).boxed(),
            Err(e) => stream::iter([(Err(WireError::from(e)), false)]).boxed(),
        });
        Ok(Box::pin(stream))
    }

    fn open_pipe(&self, p: api::OpenPipeInput) -> Result<Job, WireError> {
        let name = log_name(&p.name)?;
        let options = PipeOptions {
            policy: policy(p.max_size, p.max_backups, p.max_rate, p.max_burst)?,
            truncate: p.truncate == Some(true),
            journal: journal(p.journal, p.vm)?,
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
