//! The libvirt front: libvirt's log manager protocol on a connection of its
//! own task (`server`), answered by the same operations as varlink (`ops`).
//!
//! Per connection, calls are answered in order, one at a time, as virtlogd
//! does; nothing is ever sent unasked (libvirt's client drops a connection
//! that gets an unsolicited message). Only uid 0 is served (libvirt's
//! system instance); any other peer is dropped before a byte is read, and
//! nothing changes.
//!
//! A pipe's write end goes out the way libvirt's client takes it: after
//! the whole REPLY_WITH_FDS frame, in a `sendmsg` of its own carrying one
//! data byte (0) and one SCM_RIGHTS with one descriptor.

use std::{os::fd::BorrowedFd, path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;

use super::{
    AppendLogFile, Call, ErrorReply, Frame, GetLogFilePosition, OPEN_TRUNCATE, OpenLogFile,
    Position, ReadLogFile, Reply, STRING_MAX, check_frame, errors,
};
use crate::{
    error_chain,
    fronts::server::{Conn, ConnError, Framing, Front},
    fronts::varlink::wire::vm_name,
    handover::virtlogd::origins::{Origin, uuid_string},
    limited,
    logs::{
        migration::LogDomain,
        name::LogName,
        policy::{Policy, PolicyChange},
        rotator::Pos,
    },
    ops::{JournalRequest, Machine, OpError, Ops, PipeOptions},
};

/// The largest frame a libvirt caller sends: AppendLogFile's message is an
/// XDR string of at most 4 MiB, and the rest of a call is small.
pub const MAX_CALL: usize = STRING_MAX + 64 * 1024;

/// The libvirt front.
#[derive(Debug)]
pub struct Virtlogd {
    pub ops: Ops,
    /// Directories under which libvirt may name logs.
    pub roots: Vec<PathBuf>,
    /// The policy of the logs it opens: libvirt's own defaults unless the
    /// config says otherwise.
    pub policy: Policy,
    /// Export the logs it opens to the journal (`[libvirt] journal`).
    pub journal: bool,
    /// Connections kept for a hand-back to virtlogd.
    pub kept: Arc<Kept>,
}

/// At a hand-back to virtlogd, each connection that stops at a frame
/// boundary, with nothing queued, leaves its socket here instead of
/// closing it: virtlogd serves it next, and libvirt's next call on it
/// works. Unarmed (every other stop), connections just close.
#[derive(Debug, Default)]
pub struct Kept {
    armed: std::sync::atomic::AtomicBool,
    sockets: std::sync::Mutex<Vec<std::os::fd::OwnedFd>>,
}

impl Kept {
    /// The next stop is a hand-back.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn keep(&self, conn: &Conn) {
        match conn.fd().try_clone_to_owned() {
            Ok(fd) => crate::lock(&self.sockets).push(fd),
            Err(e) => limited!(warn, error = %e, "cannot keep a libvirt connection for virtlogd"),
        }
    }

    /// The sockets kept.
    pub fn take(&self) -> Vec<std::os::fd::OwnedFd> {
        std::mem::take(&mut *crate::lock(&self.sockets))
    }
}

/// Where a frame ends, for `server::Conn`.
pub fn frame(buf: &[u8]) -> Framing {
    match check_frame(buf) {
        Ok(super::Framing::Ready(len)) => Framing::Message { len, consume: len },
        Ok(super::Framing::NeedMore(_)) => Framing::Incomplete,
        Err(e) => Framing::Bad(e.to_string()),
    }
}

/// What one call produced: a reply or an error reply, and the pipe's write
/// end for OpenLogFile.
type Answer = (Result<Reply, ErrorReply>, Option<std::os::fd::OwnedFd>);

impl Front for Virtlogd {
    async fn serve(self: Arc<Self>, mut conn: Conn, shutdown: CancellationToken) -> ConnError {
        if conn.peer.uid != 0 {
            limited!(
                warn,
                uid = conn.peer.uid,
                pid = conn.peer.pid,
                "libvirt protocol: only uid 0 may connect; dropped"
            );
            return ConnError::Refused;
        }
        // At a hand-back, a call already begun is read whole and answered
        // first (within the message timeout), so the socket goes to
        // virtlogd at a frame boundary.
        let mut finishing = false;
        loop {
            let (header, call) = tokio::select! {
                () = shutdown.cancelled(), if !finishing => {
                    if !self.kept.armed() {
                        return ConnError::Shutdown;
                    }
                    if conn.at_frame_boundary() {
                        self.kept.keep(&conn);
                        return ConnError::Shutdown;
                    }
                    finishing = true;
                    continue;
                }
                m = conn.next_message(frame) => match m {
                    Err(e) => return e,
                    Ok(bytes) => match Frame::parse(bytes) {
                        // A frame that does not parse: libvirt closes.
                        Err(e) => return ConnError::BadMessage(e.to_string()),
                        Ok(f) => (f.header, Call::decode(&f)),
                    },
                },
            };
            let (reply, fd) = match call {
                Ok(call) => self.answer(call).await,
                Err(e) => match e.reply() {
                    Some(reply) => (Err(reply), None),
                    None => return ConnError::BadMessage(e.to_string()),
                },
            };
            let bytes = match reply {
                Ok(reply) => match reply.encode(header.serial) {
                    Ok(b) => b,
                    // Our own replies always fit; say so rather than hang.
                    Err(e) => {
                        ErrorReply::new(errors::INTERNAL_ERROR, errors::FROM_LOGGING, e.to_string())
                            .encode(&header)
                    }
                },
                Err(e) => e.encode(&header),
            };
            if let Err(e) = conn.send(&bytes, &[]).await {
                return e;
            }
            if let Some(fd) = fd
                && let Err(e) = conn.send(&[0], &[fd]).await
            {
                return e;
            }
            if finishing {
                if conn.at_frame_boundary() {
                    self.kept.keep(&conn);
                }
                return ConnError::Shutdown;
            }
        }
    }

    fn refuse(&self, _fd: BorrowedFd<'_>, _limit: &str, _max: usize) {
        // libvirt's client takes any unasked message as a broken
        // connection; closing says as much.
    }

    fn name(&self) -> &'static str {
        "libvirt"
    }
}

impl Virtlogd {
    async fn answer(&self, call: Call) -> Answer {
        let answered = match call {
            Call::OpenLogFile(c) => self.open(c).await,
            Call::GetLogFilePosition(c) => self.position(c).await.map(|r| (r, None)),
            Call::ReadLogFile(c) => self.read(c).await.map(|r| (r, None)),
            Call::AppendLogFile(c) => self.append(c).await.map(|r| (r, None)),
        };
        match answered {
            Ok((reply, fd)) => (Ok(reply), fd),
            Err(e) => (Err(e), None),
        }
    }

    /// A path libvirt names, as a log: absolute, normal, under a root.
    fn log(&self, path: &[u8]) -> Result<LogName, ErrorReply> {
        let shown = String::from_utf8_lossy(path);
        let invalid = |why: String| {
            ErrorReply::new(
                errors::INVALID_ARG,
                errors::FROM_LOGGING,
                format!("invalid argument: log file path '{shown}': {why}"),
            )
        };
        let text = std::str::from_utf8(path).map_err(|_| invalid("is not UTF-8".into()))?;
        LogName::libvirt(text, &self.roots).map_err(invalid)
    }

    async fn open(
        &self,
        c: OpenLogFile,
    ) -> Result<(Reply, Option<std::os::fd::OwnedFd>), ErrorReply> {
        check_flags(c.flags, OPEN_TRUNCATE, "virLogHandlerDomainOpenLogFile")?;
        let name = self.log(&c.path)?;
        let vm = machine(&c.dom);
        let domain = log_domain(&vm);
        let migrations = self.ops.registry.migrations();
        // A domain arriving by migration keeps what its logs hold here
        // (its own history, on a return, or the source's very file, on
        // shared storage); one that opens its logs otherwise starts here
        // and is not leaving.
        let arrival = domain.as_ref().and_then(|d| migrations.arriving(&d.uuid));
        if let Some(d) = &domain
            && arrival.is_none()
        {
            migrations.stay(&d.uuid);
        }
        let truncate = c.flags & OPEN_TRUNCATE != 0 && arrival.is_none();
        let options = PipeOptions {
            policy: PolicyChange::from(self.policy),
            truncate,
            drop_backups: truncate,
            exclusive: true,
            journal: JournalRequest {
                on: self.journal.then_some(true),
                vm: self.journal.then_some(vm),
            },
            domain,
            arrival,
            libvirt: Some(Origin {
                driver: String::from_utf8_lossy(&c.driver).into_owned(),
                domain: String::from_utf8_lossy(&c.dom.name).into_owned(),
                uuid: uuid_string(&c.dom.uuid),
            }),
        };
        let opened = self
            .ops
            .open_pipe(&name, options)
            .await
            .map_err(to_reply_any)?;
        let reply = Reply::Opened(wire_pos(opened.position));
        Ok((reply, Some(opened.fd)))
    }

    async fn position(&self, c: GetLogFilePosition) -> Result<Reply, ErrorReply> {
        no_flags(c.flags, "virLogHandlerDomainGetLogFilePosition")?;
        let name = self.log(&c.path)?;
        let pos = self
            .ops
            .position(&name)
            .await
            .map_err(|e| to_reply(&name, e))?;
        Ok(Reply::Position(wire_pos(pos)))
    }

    async fn read(&self, c: ReadLogFile) -> Result<Reply, ErrorReply> {
        no_flags(c.flags, "virLogHandlerDomainReadLogFile")?;
        let name = self.log(&c.path)?;
        if c.maxlen > STRING_MAX as u64 {
            return Err(ErrorReply::new(
                errors::INTERNAL_ERROR,
                errors::FROM_LOGGING,
                format!(
                    "internal error: Requested data len {} is larger than maximum {STRING_MAX}",
                    c.maxlen
                ),
            ));
        }
        let from = Pos {
            inode: c.pos.inode,
            offset: c.pos.offset,
        };
        let max = c.maxlen as usize;
        let mut data = Vec::new();
        let mut at = Some(from);
        while data.len() < max {
            let chunk = self
                .ops
                .read(&name, at, max - data.len())
                .await
                .map_err(to_reply_any)?;
            data.extend_from_slice(&chunk.data);
            if chunk.eof || chunk.data.is_empty() {
                break;
            }
            at = Some(chunk.next);
        }
        // virtlogd's data is a C string: it ends at the first NUL.
        if let Some(nul) = data.iter().position(|b| *b == 0) {
            data.truncate(nul);
        }
        Ok(Reply::Data(data))
    }

    async fn append(&self, c: AppendLogFile) -> Result<Reply, ErrorReply> {
        no_flags(c.flags, "virLogHandlerDomainAppendLogFile")?;
        let name = self.log(&c.path)?;
        if let Some(d) = log_domain(&machine(&c.dom)) {
            self.note_migration(&d, &c.message);
        }
        // A log this front makes gets its policy, as OpenLogFile's do.
        let policy = PolicyChange::from(self.policy);
        self.ops
            .append(&name, c.message, policy)
            .await
            .map_err(to_reply_any)?;
        Ok(Reply::Appended(0))
    }
}

impl Virtlogd {
    /// What libvirt's own lines in a domain's log say of a migration: the
    /// source writes `initiating migration` as it begins, and `shutting
    /// down, reason=R` as its QEMU stops, R being `migrated` only if the
    /// domain went.
    fn note_migration(&self, domain: &LogDomain, message: &[u8]) {
        let text = String::from_utf8_lossy(message);
        let text = text.trim_end();
        let migrations = self.ops.registry.migrations();
        if text.ends_with("initiating migration") {
            migrations.leave(&domain.uuid, &domain.name);
            self.ops.registry.touch();
        } else if let Some((_, reason)) = text.rsplit_once("shutting down, reason=")
            && reason.trim() != "migrated"
            && migrations.stay(&domain.uuid)
        {
            self.ops.registry.touch();
        }
    }
}

/// The domain a call names, for its logs' migrations: its UUID and a name
/// to show (the UUID if libvirt's name is not one we can show).
fn log_domain(vm: &Machine) -> Option<LogDomain> {
    let uuid = vm.uuid.clone()?;
    let name = vm.name.clone().unwrap_or_else(|| uuid.clone());
    Some(LogDomain { uuid, name })
}

/// The domain libvirt names, for the journal: its name if it is one we
/// can show, and its UUID.
fn machine(dom: &super::Domain) -> Machine {
    let name = std::str::from_utf8(&dom.name)
        .ok()
        .and_then(|n| vm_name(n).ok());
    let u = &dom.uuid;
    let uuid = (u.iter().any(|b| *b != 0)).then(|| uuid_string(u));
    Machine { name, uuid }
}

fn no_flags(flags: u32, function: &str) -> Result<(), ErrorReply> {
    check_flags(flags, 0, function)
}

/// Refuses flags outside `supported` before anything is made. libvirt
/// sends OpenLogFile only 0 or TRUNCATE; virtlogd ignores other bits there,
/// but a bit we do not know may mean something we would not do, so it is
/// refused as libvirt's virCheckFlags words it.
fn check_flags(flags: u32, supported: u32, function: &str) -> Result<(), ErrorReply> {
    let flags = flags & !supported;
    if flags == 0 {
        return Ok(());
    }
    Err(ErrorReply {
        str1: Some(function.to_owned()),
        str2: Some("flags".to_owned()),
        str3: None,
        int1: 0,
        int2: 0,
        ..ErrorReply::new(
            errors::INVALID_ARG,
            errors::FROM_LOGGING,
            format!("unsupported flags ({flags:#x}) in function {function}"),
        )
    })
}

fn to_reply(name: &LogName, e: OpError) -> ErrorReply {
    match e {
        OpError::NoSuchLog(_) => ErrorReply::new(
            errors::INTERNAL_ERROR,
            errors::FROM_LOGGING,
            format!("internal error: No open log file {name}"),
        ),
        e => to_reply_any(e),
    }
}

/// libvirt shows `message` to the user as it is, so it says what failed.
fn to_reply_any(e: OpError) -> ErrorReply {
    match &e {
        OpError::Busy(name) => ErrorReply::system_error(
            nix::libc::EBUSY,
            format!("Cannot open log file: '{name}': Device or resource busy"),
        ),
        OpError::NoSuchLog(name) => ErrorReply::new(
            errors::INTERNAL_ERROR,
            errors::FROM_LOGGING,
            format!("internal error: No open log file {name}"),
        ),
        OpError::Limit { what, max } => ErrorReply::new(
            errors::OPERATION_DENIED,
            errors::FROM_LOGGING,
            format!("operation forbidden: guestlogd's limit of {max} {what} is reached"),
        ),
        _ => {
            limited!(warn, error = %error_chain(&e), "libvirt call failed");
            ErrorReply::system_error(nix::libc::EIO, format!("guestlogd: {}", error_chain(&e)))
        }
    }
}

fn wire_pos(p: Pos) -> Position {
    Position {
        inode: p.inode,
        offset: p.offset,
    }
}
