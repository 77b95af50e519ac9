//! Program 0x87539319 version 1: its four calls, their replies, and the
//! error reply, as typed values.
//!
//! A server decodes a [`Call`] from a [`Frame`] and encodes a [`Reply`] or
//! an [`ErrorReply`]; a client does the reverse. A [`CallError`] says what
//! libvirt's server would answer to a call it cannot serve
//! ([`CallError::reply`]), or that the connection must close.
//!
//! Strings are `Vec<u8>` as sent: libvirt's strings are C strings with no
//! encoding promise, and paths on Linux are bytes. Validation belongs to the
//! operations layer, once.

use super::error_reply::ErrorReply;
use super::frame::{Frame, Header, MessageType, Status, encode_frame};
use super::xdr::{EncodeError, Payload, Reader, STRING_MAX, Writer, XdrError};

/// `VIR_LOG_MANAGER_PROTOCOL_PROGRAM`.
pub const PROGRAM: u32 = 0x8753_9319;
/// `VIR_LOG_MANAGER_PROTOCOL_PROGRAM_VERSION`.
pub const VERSION: u32 = 1;
/// OpenLogFile's only flag: truncate the file (virtlogd also deletes its
/// backups). virtlogd ignores other bits; the front refuses them.
pub const OPEN_TRUNCATE: u32 = 1;

/// The procedures of the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Procedure {
    OpenLogFile = 1,
    GetLogFilePosition = 2,
    ReadLogFile = 3,
    AppendLogFile = 4,
}

impl Procedure {
    pub const ALL: [Self; 4] = [
        Self::OpenLogFile,
        Self::GetLogFilePosition,
        Self::ReadLogFile,
        Self::AppendLogFile,
    ];

    pub fn from_wire(proc_: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as i32 == proc_)
    }
}

/// `virLogManagerProtocolDomain`: recorded by virtlogd, never checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Domain {
    pub uuid: [u8; 16],
    pub name: Vec<u8>,
}

/// `virLogManagerProtocolLogFilePosition`: a file by inode, and an offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub inode: u64,
    pub offset: u64,
}

/// Procedure 1: open (create) a log file and get the write end of a pipe
/// into it, and the position its end had.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenLogFile {
    pub driver: Vec<u8>,
    pub dom: Domain,
    pub path: Vec<u8>,
    /// [`OPEN_TRUNCATE`] or 0.
    pub flags: u32,
}

/// Procedure 2: where the end of a log file is now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetLogFilePosition {
    pub path: Vec<u8>,
    pub flags: u32,
}

/// Procedure 3: up to `maxlen` bytes of a log file from `pos`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadLogFile {
    pub path: Vec<u8>,
    pub pos: Position,
    pub maxlen: u64,
    pub flags: u32,
}

/// Procedure 4: append a message to a log file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendLogFile {
    pub driver: Vec<u8>,
    pub dom: Domain,
    pub path: Vec<u8>,
    pub message: Vec<u8>,
    pub flags: u32,
}

fn read_domain(r: &mut Reader<'_>) -> Result<Domain, XdrError> {
    Ok(Domain {
        uuid: r.opaque("dom.uuid")?,
        name: r.string("dom.name", STRING_MAX)?,
    })
}

fn write_domain(w: &mut Writer<'_>, dom: &Domain) -> Result<(), EncodeError> {
    w.opaque(&dom.uuid);
    w.string("dom.name", &dom.name, STRING_MAX)
}

impl Payload for Position {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            inode: r.u64("pos.inode")?,
            offset: r.u64("pos.offset")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.u64(self.inode);
        w.u64(self.offset);
        Ok(())
    }
}

impl Payload for OpenLogFile {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            driver: r.string("driver", STRING_MAX)?,
            dom: read_domain(r)?,
            path: r.string("path", STRING_MAX)?,
            flags: r.u32("flags")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.string("driver", &self.driver, STRING_MAX)?;
        write_domain(w, &self.dom)?;
        w.string("path", &self.path, STRING_MAX)?;
        w.u32(self.flags);
        Ok(())
    }
}

impl Payload for GetLogFilePosition {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            path: r.string("path", STRING_MAX)?,
            flags: r.u32("flags")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.string("path", &self.path, STRING_MAX)?;
        w.u32(self.flags);
        Ok(())
    }
}

impl Payload for ReadLogFile {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            path: r.string("path", STRING_MAX)?,
            pos: Position::read(r)?,
            maxlen: r.u64("maxlen")?,
            flags: r.u32("flags")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.string("path", &self.path, STRING_MAX)?;
        self.pos.write(w)?;
        w.u64(self.maxlen);
        w.u32(self.flags);
        Ok(())
    }
}

impl Payload for AppendLogFile {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        Ok(Self {
            driver: r.string("driver", STRING_MAX)?,
            dom: read_domain(r)?,
            path: r.string("path", STRING_MAX)?,
            message: r.string("message", STRING_MAX)?,
            flags: r.u32("flags")?,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.string("driver", &self.driver, STRING_MAX)?;
        write_domain(w, &self.dom)?;
        w.string("path", &self.path, STRING_MAX)?;
        w.string("message", &self.message, STRING_MAX)?;
        w.u32(self.flags);
        Ok(())
    }
}

/// A decoded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    OpenLogFile(OpenLogFile),
    GetLogFilePosition(GetLogFilePosition),
    ReadLogFile(ReadLogFile),
    AppendLogFile(AppendLogFile),
}

/// Why a frame is not a call this server can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// A reply or an asynchronous message sent to the server; no client of
    /// this protocol does that.
    #[error("message type {0:?} is not a call")]
    NotACall(MessageType),
    #[error("unknown program {prog:#x} version {vers}")]
    UnknownProgram { prog: u32, vers: u32 },
    #[error("call with status {0:?}")]
    BadStatus(Status),
    #[error("unknown procedure {0}")]
    UnknownProcedure(i32),
    #[error("cannot decode the arguments of {procedure:?}")]
    Payload {
        procedure: Procedure,
        #[source]
        source: XdrError,
    },
}

impl CallError {
    /// The error reply libvirt's server sends for this, or `None` when the
    /// connection must be closed instead.
    pub fn reply(&self) -> Option<ErrorReply> {
        match *self {
            Self::NotACall(_) => None,
            Self::UnknownProgram { prog, vers } => Some(ErrorReply::unknown_program(prog, vers)),
            Self::BadStatus(status) => Some(ErrorReply::rpc(format!(
                "Unexpected message status {}",
                status as u32
            ))),
            Self::UnknownProcedure(proc_) => Some(ErrorReply::unknown_procedure(proc_)),
            Self::Payload { .. } => Some(ErrorReply::undecodable_payload()),
        }
    }
}

impl Call {
    pub fn procedure(&self) -> Procedure {
        match self {
            Self::OpenLogFile(_) => Procedure::OpenLogFile,
            Self::GetLogFilePosition(_) => Procedure::GetLogFilePosition,
            Self::ReadLogFile(_) => Procedure::ReadLogFile,
            Self::AppendLogFile(_) => Procedure::AppendLogFile,
        }
    }

    /// Decodes a call, checking the header in libvirt's order: program and
    /// version, status, procedure, then the arguments. A CALL_WITH_FDS is
    /// accepted like a CALL (libvirt does); its `nfds` FDs are the
    /// connection's to receive and close, since no procedure takes one.
    pub fn decode(frame: &Frame<'_>) -> Result<Self, CallError> {
        let h = &frame.header;
        if !matches!(h.kind, MessageType::Call | MessageType::CallWithFds) {
            return Err(CallError::NotACall(h.kind));
        }
        if h.prog != PROGRAM || h.vers != VERSION {
            return Err(CallError::UnknownProgram {
                prog: h.prog,
                vers: h.vers,
            });
        }
        if h.status != Status::Ok {
            return Err(CallError::BadStatus(h.status));
        }
        let procedure =
            Procedure::from_wire(h.proc_).ok_or(CallError::UnknownProcedure(h.proc_))?;
        let payload = frame.payload;
        let call = match procedure {
            Procedure::OpenLogFile => Payload::decode(payload).map(Self::OpenLogFile),
            Procedure::GetLogFilePosition => Payload::decode(payload).map(Self::GetLogFilePosition),
            Procedure::ReadLogFile => Payload::decode(payload).map(Self::ReadLogFile),
            Procedure::AppendLogFile => Payload::decode(payload).map(Self::AppendLogFile),
        };
        call.map_err(|source| CallError::Payload { procedure, source })
    }

    /// A CALL frame with this serial.
    pub fn encode(&self, serial: u32) -> Result<Vec<u8>, EncodeError> {
        let header = Header {
            prog: PROGRAM,
            vers: VERSION,
            proc_: self.procedure() as i32,
            kind: MessageType::Call,
            serial,
            status: Status::Ok,
        };
        encode_frame(&header, 0, |w| match self {
            Self::OpenLogFile(a) => a.write(w),
            Self::GetLogFilePosition(a) => a.write(w),
            Self::ReadLogFile(a) => a.write(w),
            Self::AppendLogFile(a) => a.write(w),
        })
    }
}

/// A successful reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// To OpenLogFile: sent as REPLY_WITH_FDS with nfds 1, the pipe's write
    /// end following the frame.
    Opened(Position),
    /// To GetLogFilePosition.
    Position(Position),
    /// To ReadLogFile: at most [`STRING_MAX`] bytes.
    Data(Vec<u8>),
    /// To AppendLogFile: always 0 from virtlogd.
    Appended(i32),
}

/// Why a frame is not the reply a client expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The server answered with an error.
    #[error("server error: {0}")]
    Remote(ErrorReply),
    #[error("message type {0:?} is not a reply")]
    NotAReply(MessageType),
    #[error("reply for program {prog:#x} version {vers} procedure {proc_}, not {expected:?}")]
    Mismatch {
        prog: u32,
        vers: u32,
        proc_: i32,
        expected: Procedure,
    },
    #[error("reply with status {0:?}")]
    BadStatus(Status),
    #[error("reply type {kind:?} with {nfds} FDs, expected {expected} FDs")]
    Fds {
        kind: MessageType,
        nfds: u32,
        expected: u32,
    },
    #[error("cannot decode the reply")]
    Payload(#[source] XdrError),
}

impl Reply {
    pub fn procedure(&self) -> Procedure {
        match self {
            Self::Opened(_) => Procedure::OpenLogFile,
            Self::Position(_) => Procedure::GetLogFilePosition,
            Self::Data(_) => Procedure::ReadLogFile,
            Self::Appended(_) => Procedure::AppendLogFile,
        }
    }

    /// The reply frame to the call with this serial. Only `Data` can fail,
    /// when it is longer than [`STRING_MAX`].
    pub fn encode(&self, serial: u32) -> Result<Vec<u8>, EncodeError> {
        let (kind, nfds) = match self {
            Self::Opened(_) => (MessageType::ReplyWithFds, 1),
            _ => (MessageType::Reply, 0),
        };
        let header = Header {
            prog: PROGRAM,
            vers: VERSION,
            proc_: self.procedure() as i32,
            kind,
            serial,
            status: Status::Ok,
        };
        encode_frame(&header, nfds, |w| match self {
            Self::Opened(pos) | Self::Position(pos) => pos.write(w),
            Self::Data(data) => w.string("data", data, STRING_MAX),
            Self::Appended(ret) => {
                w.i32(*ret);
                Ok(())
            }
        })
    }

    /// Decodes the reply to a call of `expected`. Matching the serial is the
    /// caller's: with pipelined calls it picks the call by serial first.
    pub fn decode(frame: &Frame<'_>, expected: Procedure) -> Result<Self, ReplyError> {
        let h = &frame.header;
        if !matches!(h.kind, MessageType::Reply | MessageType::ReplyWithFds) {
            return Err(ReplyError::NotAReply(h.kind));
        }
        if h.prog != PROGRAM || h.vers != VERSION || h.proc_ != expected as i32 {
            return Err(ReplyError::Mismatch {
                prog: h.prog,
                vers: h.vers,
                proc_: h.proc_,
                expected,
            });
        }
        match h.status {
            Status::Ok => {}
            Status::Error => {
                let err = ErrorReply::decode(frame.payload).map_err(ReplyError::Payload)?;
                return Err(ReplyError::Remote(err));
            }
            Status::Continue => return Err(ReplyError::BadStatus(h.status)),
        }
        let (kind, nfds) = match expected {
            Procedure::OpenLogFile => (MessageType::ReplyWithFds, 1),
            _ => (MessageType::Reply, 0),
        };
        if h.kind != kind || frame.nfds != nfds {
            return Err(ReplyError::Fds {
                kind: h.kind,
                nfds: frame.nfds,
                expected: nfds,
            });
        }
        let mut r = Reader::new(frame.payload);
        let reply = match expected {
            Procedure::OpenLogFile => Position::read(&mut r).map(Self::Opened),
            Procedure::GetLogFilePosition => Position::read(&mut r).map(Self::Position),
            Procedure::ReadLogFile => r.string("data", STRING_MAX).map(Self::Data),
            Procedure::AppendLogFile => r.i32("ret").map(Self::Appended),
        };
        reply.map_err(ReplyError::Payload)
    }
}
