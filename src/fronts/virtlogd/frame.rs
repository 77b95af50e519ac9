//! Framing: the length word, the 24-byte header and the nfds word.
//!
//! A connection task calls [`check_frame`] on what it has read so far. It
//! answers how many more bytes the current frame needs, or that a complete
//! frame of length L sits at the front, without copying; the task then reads
//! no further than that frame, so its buffer is bounded by [`MAX_FRAME`] and
//! it never reads into the FDs that follow a reply. [`Frame::parse`] then
//! splits exactly one frame into header, nfds and payload, borrowing.
//!
//! Every [`FrameError`] means "close the connection": that is what libvirt
//! does on a bad length or an undecodable header, and past such an error
//! the stream can't be resynchronised anyway.

use super::xdr::{EncodeError, Reader, Writer, XdrError};

/// The length word, which counts itself.
pub const LEN_WORD: usize = 4;
/// The serialised `virNetMessageHeader`.
pub const HEADER_LEN: usize = 24;
/// The shortest frame: the length word and a header, no payload. libvirt
/// accepts a length of 4 to 27 but then fails to decode the header and
/// closes, so refusing it here is the same outcome, earlier.
pub const MIN_FRAME: usize = LEN_WORD + HEADER_LEN;
/// `VIR_NET_MESSAGE_MAX` (32 MiB of header and payload) plus the word.
pub const MAX_FRAME: usize = 33_554_432 + LEN_WORD;
/// `VIR_NET_MESSAGE_NUM_FDS_MAX`.
pub const MAX_FDS: u32 = 32;

/// `virNetMessageType`, less the stream types, which this program never
/// uses (a frame with one is a [`FrameError::UnknownType`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Call = 0,
    Reply = 1,
    /// Asynchronous; a log manager client drops the connection on one.
    Message = 2,
    CallWithFds = 4,
    ReplyWithFds = 5,
}

impl MessageType {
    /// Whether the nfds word follows the header.
    pub fn has_fds(self) -> bool {
        matches!(self, Self::CallWithFds | Self::ReplyWithFds)
    }

    fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Call,
            1 => Self::Reply,
            2 => Self::Message,
            4 => Self::CallWithFds,
            5 => Self::ReplyWithFds,
            _ => return None,
        })
    }
}

/// `virNetMessageStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    Error = 1,
    /// Streams only; a call carrying it gets an error reply.
    Continue = 2,
}

impl Status {
    fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Ok,
            1 => Self::Error,
            2 => Self::Continue,
            _ => return None,
        })
    }
}

/// `virNetMessageHeader`. A reply repeats its call's prog, vers, proc and
/// serial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub prog: u32,
    pub vers: u32,
    pub proc_: i32,
    pub kind: MessageType,
    pub serial: u32,
    pub status: Status,
}

/// A frame that cannot be read: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is below the minimum {MIN_FRAME}")]
    TooShort(u32),
    #[error("frame length {0} is above the maximum {MAX_FRAME}")]
    TooLong(u32),
    #[error("frame says {declared} bytes, buffer holds {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unknown message type {0}")]
    UnknownType(u32),
    #[error("unknown message status {0}")]
    UnknownStatus(u32),
    #[error("{0} FDs announced, the most is {MAX_FDS}")]
    TooManyFds(u32),
    #[error("truncated header")]
    Truncated(#[source] XdrError),
}

/// What the front of a read buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The frame (or its length word) is incomplete: read this many more
    /// bytes, and no more, before asking again.
    NeedMore(usize),
    /// `buf[..len]` is one complete frame; pass it to [`Frame::parse`].
    Ready(usize),
}

/// Looks at the front of `buf` without copying. Bytes after the first frame
/// are not examined.
pub fn check_frame(buf: &[u8]) -> Result<Framing, FrameError> {
    let Some(word) = buf.first_chunk::<LEN_WORD>() else {
        return Ok(Framing::NeedMore(LEN_WORD - buf.len()));
    };
    let len = frame_len(u32::from_be_bytes(*word))?;
    Ok(match len.checked_sub(buf.len()) {
        Some(0) | None => Framing::Ready(len),
        Some(more) => Framing::NeedMore(more),
    })
}

fn frame_len(word: u32) -> Result<usize, FrameError> {
    match usize::try_from(word) {
        Ok(n) if n < MIN_FRAME => Err(FrameError::TooShort(word)),
        Ok(n) if n <= MAX_FRAME => Ok(n),
        _ => Err(FrameError::TooLong(word)),
    }
}

/// One frame, split. `payload` borrows from the buffer given to
/// [`Frame::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: Header,
    /// The FDs that follow the frame on the socket, one per message with
    /// one data byte. 0 when the type has no nfds word.
    pub nfds: u32,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Parses exactly one frame: `frame` must be as long as its length word
    /// says (what [`check_frame`] reported as `Ready`).
    pub fn parse(frame: &'a [u8]) -> Result<Self, FrameError> {
        let mut r = Reader::new(frame);
        let len = frame_len(r.u32("length").map_err(FrameError::Truncated)?)?;
        if len != frame.len() {
            return Err(FrameError::LengthMismatch {
                declared: len,
                actual: frame.len(),
            });
        }
        let header = read_header(&mut r).map_err(FrameError::Truncated)?;
        let kind =
            MessageType::from_wire(header.kind).ok_or(FrameError::UnknownType(header.kind))?;
        let status =
            Status::from_wire(header.status).ok_or(FrameError::UnknownStatus(header.status))?;
        let (nfds, skip) = if kind.has_fds() {
            let n = r.u32("nfds").map_err(FrameError::Truncated)?;
            if n > MAX_FDS {
                return Err(FrameError::TooManyFds(n));
            }
            (n, MIN_FRAME + 4)
        } else {
            (0, MIN_FRAME)
        };
        Ok(Self {
            header: Header {
                prog: header.prog,
                vers: header.vers,
                proc_: header.proc_,
                kind,
                serial: header.serial,
                status,
            },
            nfds,
            // `skip` bytes were just read from `frame`, so the slice exists.
            payload: frame.get(skip..).unwrap_or_default(),
        })
    }
}

/// The header as sent, before its enums are checked.
struct RawHeader {
    prog: u32,
    vers: u32,
    proc_: i32,
    kind: u32,
    serial: u32,
    status: u32,
}

fn read_header(r: &mut Reader<'_>) -> Result<RawHeader, XdrError> {
    Ok(RawHeader {
        prog: r.u32("prog")?,
        vers: r.u32("vers")?,
        proc_: r.i32("proc")?,
        kind: r.u32("type")?,
        serial: r.u32("serial")?,
        status: r.u32("status")?,
    })
}

/// Builds one frame: length word, header, the nfds word when the header's
/// type has one, then what `payload` appends.
pub(crate) fn encode_frame(
    header: &Header,
    nfds: u32,
    payload: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    let mut w = Writer { out: &mut out };
    w.u32(0); // the length, patched below
    w.u32(header.prog);
    w.u32(header.vers);
    w.i32(header.proc_);
    w.u32(header.kind as u32);
    w.u32(header.serial);
    w.u32(header.status as u32);
    if header.kind.has_fds() {
        w.u32(nfds);
    }
    payload(&mut w)?;
    let len = u32::try_from(out.len())
        .ok()
        .filter(|_| out.len() <= MAX_FRAME)
        .ok_or(EncodeError::FrameTooLarge {
            len: out.len(),
            max: MAX_FRAME,
        })?;
    out[..LEN_WORD].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}
