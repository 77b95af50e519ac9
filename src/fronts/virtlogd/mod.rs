//! The codec of libvirt's log manager protocol, what libvirt speaks to
//! virtlogd: framing, XDR and the four procedures of program 0x87539319
//! version 1, as pure synchronous functions with no I/O; `front`, the
//! connection task that serves it over the operations of `ops`; and
//! `serve`, the listener and its connections, for the daemon.
//!
//! Wire facts are those of `/shared/notes/virtlogd-protocol.md`, checked
//! against libvirt's `virnetprotocol.x`, `virnetmessage.c`,
//! `virnetserverprogram.c` and `log_protocol.x`.
//!
//! Invariants:
//! - decoding never panics, whatever the bytes;
//! - decoding allocates at most the size of the frame it is given: every
//!   length on the wire is checked against the bytes that remain first;
//! - a [`FrameError`] means "close the connection"; a [`CallError`] says
//!   which error reply libvirt would send, or that it too would close;
//! - encoding produces what libvirt produces: zero padding, optionals as
//!   0/1, the nfds word exactly for the two `…_WITH_FDS` types.
//!
//! Decoding accepts what libvirt's own XDR (libtirpc) accepts, no more and
//! no less: non-zero padding is skipped unchecked, any non-zero optional
//! discriminant means present, and bytes after a payload's last field are
//! ignored.
//!
//! The XDR is hand-written (`xdr.rs`, under 250 lines with its tests). The
//! crates looked at don't fit: `serde-xdr` (last release 2020, GPL-3.0, on
//! the abandoned `failure`) and `xdr-codec` (2017, `error_chain`) are
//! unmaintained; `facet-xdr` is a young 0.x pulling a reflection framework
//! of ~50k lines for five primitives; none documents bounded allocation or
//! libvirt's lenient padding and optionals, which we would have to check by
//! fuzzing someone else's code anyway.

mod codec;
mod error_reply;
mod frame;
pub mod front;
pub mod serve;
mod xdr;

pub use codec::{
    AppendLogFile, Call, CallError, Domain, GetLogFilePosition, OPEN_TRUNCATE, OpenLogFile,
    PROGRAM, Position, Procedure, ReadLogFile, Reply, ReplyError, VERSION,
};
pub use error_reply::{ErrorReply, errors};
pub use frame::{
    Frame, FrameError, Framing, HEADER_LEN, Header, LEN_WORD, MAX_FDS, MAX_FRAME, MIN_FRAME,
    MessageType, Status, check_frame,
};
pub use xdr::{EncodeError, Payload, STRING_MAX, XdrError};

#[cfg(test)]
mod tests;
