//! The error reply: `virNetMessageError`, and the errors a log manager
//! sends with it, worded as libvirt words them.
//!
//! Invariant: encoding cannot fail (over-long strings are cut), so a server
//! always has an answer to give.

use super::frame::{Header, MessageType, Status, encode_frame};
use super::xdr::{EncodeError, Payload, Reader, STRING_MAX, Writer, XdrError};

/// libvirt's error numbers (`virerror.h`) that a log manager sends.
pub mod errors {
    /// `VIR_FROM_RPC`.
    pub const FROM_RPC: i32 = 7;
    /// `VIR_FROM_LOGGING`.
    pub const FROM_LOGGING: i32 = 63;
    pub const INTERNAL_ERROR: i32 = 1;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_DENIED: i32 = 29;
    pub const SYSTEM_ERROR: i32 = 38;
    /// `VIR_ERR_RPC`. With [`FROM_RPC`] and a message starting "unknown
    /// procedure", libvirt's client reports "not supported".
    pub const RPC: i32 = 39;
    /// `VIR_ERR_ERROR`, the level of every error a server sends.
    pub const LEVEL_ERROR: i32 = 2;
}

/// `virNetMessageError`, the payload of a reply with status ERROR. The
/// `dom` and `net` members are always sent absent (libvirt leaves them
/// unused); when decoding, present ones are skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .message.as_deref().unwrap_or("(no message)"))]
pub struct ErrorReply {
    pub code: i32,
    pub domain: i32,
    /// Shown to the user as is.
    pub message: Option<String>,
    pub level: i32,
    pub str1: Option<String>,
    pub str2: Option<String>,
    pub str3: Option<String>,
    pub int1: i32,
    pub int2: i32,
}

impl ErrorReply {
    /// An error with the extras `virReportError` gives it, as a real
    /// virtlogd 11.3 sends them: level error, str1 the format "%s", str2 the
    /// message again, int1 and int2 -1. `message` is the whole text the user
    /// sees; libvirt's own messages for some codes carry a prefix (INTERNAL
    /// ERROR: "internal error: ..."), which is the caller's to write.
    ///
    /// virtlogd 11.3's other replies, seen on the wire: non-zero flags give
    /// INVALID_ARG/LOGGING "unsupported flags (0x1) in function
    /// virLogHandlerDomainGetLogFilePosition" with str1 the function, str2
    /// "flags", ints 0 (build that one as a struct literal); a position
    /// asked of a file with no open pipe gives "internal error: No open log
    /// file <path>".
    pub fn new(code: i32, domain: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            code,
            domain,
            str2: Some(message.clone()),
            message: Some(message),
            level: errors::LEVEL_ERROR,
            str1: Some("%s".to_owned()),
            str3: None,
            int1: -1,
            int2: -1,
        }
    }

    /// A failed system call in the log manager, as `virReportSystemError`
    /// sends it: code SYSTEM_ERROR, domain LOGGING, the errno in int1. For
    /// EBUSY virtlogd says "Cannot open log file: '<path>': Device or
    /// resource busy".
    pub fn system_error(errno: i32, message: impl Into<String>) -> Self {
        Self {
            int1: errno,
            ..Self::new(errors::SYSTEM_ERROR, errors::FROM_LOGGING, message)
        }
    }

    /// An RPC-level error, code and domain RPC, as libvirt's RPC layer
    /// raises them.
    pub fn rpc(message: impl Into<String>) -> Self {
        Self::new(errors::RPC, errors::FROM_RPC, message)
    }

    /// What libvirt sends for a procedure number it does not know; its
    /// client turns this one into "not supported".
    pub fn unknown_procedure(proc_: i32) -> Self {
        Self::rpc(format!("unknown procedure: {proc_}"))
    }

    /// libvirt's `virNetServerProgramUnknownError`, which prints both
    /// numbers with `%d`, so the program shows as negative.
    pub fn unknown_program(prog: u32, vers: u32) -> Self {
        Self::rpc(format!(
            "Cannot find program {} version {}",
            prog.cast_signed(),
            vers.cast_signed()
        ))
    }

    /// libvirt's `virNetMessageDecodePayload` failure.
    pub fn undecodable_payload() -> Self {
        Self::rpc("Unable to decode message payload")
    }

    /// The REPLY frame, status ERROR, answering `call`: its prog, vers, proc
    /// and serial are repeated. The type is REPLY even for a call that would
    /// have returned FDs. Strings over [`STRING_MAX`] are cut (no real
    /// message comes near), so this cannot fail.
    pub fn encode(&self, call: &Header) -> Vec<u8> {
        let header = Header {
            kind: MessageType::Reply,
            status: Status::Error,
            ..*call
        };
        let cut = |s: &Option<String>| s.as_deref().map(|s| cut_str(s, STRING_MAX).to_owned());
        let this = Self {
            message: cut(&self.message),
            str1: cut(&self.str1),
            str2: cut(&self.str2),
            str3: cut(&self.str3),
            ..self.clone()
        };
        // With every string within the limit the payload is under 17 MiB,
        // so neither the strings nor the frame can be refused.
        encode_frame(&header, 0, |w| this.write(w)).unwrap_or_default()
    }
}

fn cut_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn read_opt_string(r: &mut Reader<'_>, field: &'static str) -> Result<Option<String>, XdrError> {
    r.optional(field, |r| r.string(field, STRING_MAX).map(lossy))
}

/// Bytes to text, each invalid sequence becoming one '?', so the result is
/// never longer than the input.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| {
        let mut s = String::with_capacity(e.as_bytes().len());
        for chunk in e.as_bytes().utf8_chunks() {
            s.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                s.push('?');
            }
        }
        s
    })
}

fn write_opt_string(
    w: &mut Writer<'_>,
    field: &'static str,
    s: &Option<String>,
) -> Result<(), EncodeError> {
    match s {
        None => w.u32(0),
        Some(s) => {
            w.u32(1);
            w.string(field, s.as_bytes(), STRING_MAX)?;
        }
    }
    Ok(())
}

impl Payload for ErrorReply {
    fn read(r: &mut Reader<'_>) -> Result<Self, XdrError> {
        let code = r.i32("code")?;
        let domain = r.i32("domain")?;
        let message = read_opt_string(r, "message")?;
        let level = r.i32("level")?;
        // virNetMessageNonnullDomain { string name; opaque uuid[16]; int id; }
        r.optional("dom", |r| {
            r.string("dom.name", STRING_MAX)?;
            r.opaque::<16>("dom.uuid")?;
            r.i32("dom.id")
        })?;
        let str1 = read_opt_string(r, "str1")?;
        let str2 = read_opt_string(r, "str2")?;
        let str3 = read_opt_string(r, "str3")?;
        let int1 = r.i32("int1")?;
        let int2 = r.i32("int2")?;
        // virNetMessageNonnullNetwork { string name; opaque uuid[16]; }
        r.optional("net", |r| {
            r.string("net.name", STRING_MAX)?;
            r.opaque::<16>("net.uuid")
        })?;
        Ok(Self {
            code,
            domain,
            message,
            level,
            str1,
            str2,
            str3,
            int1,
            int2,
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), EncodeError> {
        w.i32(self.code);
        w.i32(self.domain);
        write_opt_string(w, "message", &self.message)?;
        w.i32(self.level);
        w.u32(0); // dom: absent
        write_opt_string(w, "str1", &self.str1)?;
        write_opt_string(w, "str2", &self.str2)?;
        write_opt_string(w, "str3", &self.str3)?;
        w.i32(self.int1);
        w.i32(self.int2);
        w.u32(0); // net: absent
        Ok(())
    }
}
