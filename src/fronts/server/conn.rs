//! `Conn`: one peer's socket, its read buffer and its deadlines.
//!
//! Reads go through `recvmsg` so that FDs a peer passes (SCM_RIGHTS) are
//! seen at once: they are closed in the same call, counted, and the
//! connection ends. The read buffer never holds more than one message's
//! limit plus one read. Writes go out with the reply's FDs attached to its
//! first bytes, and fail with `WriteTimeout` when the peer takes nothing
//! for `write_timeout`.
//!
//! Framing is the front's: a function that finds the end of the first
//! message in the buffer.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use tokio::{io::Interest, net::UnixStream};

use super::limits::{ConnLimits, Counters, Slot};

/// The most read from a socket at once.
const READ_CHUNK: usize = 64 * 1024;
/// A buffer that grew past this for one large message is given back once
/// that message is consumed.
const KEEP_CAPACITY: usize = 2 * READ_CHUNK;

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("socket error")]
    Io(#[source] io::Error),
    #[error("idle for too long")]
    Idle,
    #[error("a message did not arrive in time")]
    MessageTimeout,
    #[error("a message is larger than the limit")]
    MessageSize,
    #[error("the peer read no reply in time")]
    WriteTimeout,
    #[error("the peer passed file descriptors")]
    FdsPassed,
    #[error("too many oneway calls queued")]
    Oneway,
    #[error("not a valid message: {0}")]
    BadMessage(String),
    #[error("the daemon is stopping")]
    Shutdown,
    #[error("the peer may not use this front")]
    Refused,
}

/// Where the first message in a buffer ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// No whole message yet.
    Incomplete,
    /// The message is `buf[..len]`; `consume` bytes (its terminator too)
    /// are taken from the buffer once the caller is done with it.
    Message { len: usize, consume: usize },
    /// The bytes cannot start a message: the connection must end.
    Bad(String),
}

/// Who is on the other end, from SO_PEERCRED at accept.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    /// The primary group first, then the supplementary groups.
    pub gids: Vec<u32>,
    /// 0 for a peer outside our PID namespace.
    pub pid: i32,
}

impl Peer {
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred = getsockopt(&fd, PeerCredentials)?;
        let mut gids = vec![cred.gid()];
        gids.extend(peer_groups(fd)?);
        Ok(Self {
            uid: cred.uid(),
            gids,
            pid: cred.pid(),
        })
    }
}

/// SO_PEERGROUPS: the peer's supplementary groups as of its connect().
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<u32> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as nix::libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes, and the kernel writes at
        // most that many, setting `len` to what it wrote or, with ERANGE,
        // to what it needs.
        let ret = unsafe {
            nix::libc::getsockopt(
                fd.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<u32>();
        if ret == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(nix::libc::ERANGE) if n > groups.len() && n <= 65536 => groups.resize(n, 0),
            // Kernels before 4.13: judge by uid and primary group.
            Some(nix::libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    pub peer: Peer,
    limits: Arc<ConnLimits>,
    counters: Arc<Counters>,
    /// Received bytes; `buf[start..]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    /// Bytes the last message returned still occupies at `start`.
    pending: usize,
    /// When the first byte of the partial message at `start` arrived.
    partial_since: Option<Instant>,
    /// Gives the connection's place back when it ends.
    _slot: Slot,
}

impl Conn {
    pub(super) fn new(
        stream: UnixStream,
        peer: Peer,
        limits: Arc<ConnLimits>,
        counters: Arc<Counters>,
        slot: Slot,
    ) -> Self {
        Self {
            stream,
            peer,
            limits,
            counters,
            buf: Vec::new(),
            start: 0,
            pending: 0,
            partial_since: None,
            _slot: slot,
        }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.stream.as_fd()
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Whether nothing of a next message has arrived: every byte read was
    /// part of a message already returned.
    pub fn at_frame_boundary(&self) -> bool {
        self.buf.len() == self.start + self.pending
    }

    /// Waits for the next whole message, within the connection's deadlines.
    pub async fn next_message(
        &mut self,
        frame: impl Fn(&[u8]) -> Framing,
    ) -> Result<&[u8], ConnError> {
        self.consume();
        loop {
            let unread = &self.buf[self.start..];
            match frame(unread) {
                Framing::Message { len, consume } if len <= self.limits.max_message => {
                    self.pending = consume;
                    return Ok(&self.buf[self.start..self.start + len]);
                }
                Framing::Message { .. } => return Err(ConnError::MessageSize),
                Framing::Bad(why) => return Err(ConnError::BadMessage(why)),
                Framing::Incomplete if unread.len() > self.limits.max_message => {
                    return Err(ConnError::MessageSize);
                }
                Framing::Incomplete => {}
            }
            let deadline = match self.partial_since {
                Some(t) => Some((t + self.limits.message_timeout, ConnError::MessageTimeout)),
                None => self
                    .limits
                    .idle_timeout
                    .map(|d| (Instant::now() + d, ConnError::Idle)),
            };
            let read = match deadline {
                Some((at, why)) => tokio::time::timeout_at(at.into(), self.read_more())
                    .await
                    .unwrap_or(Err(why)),
                None => self.read_more().await,
            };
            let n = read?;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            self.partial_since.get_or_insert_with(Instant::now);
        }
    }

    /// Reads what arrives while a stream of replies is going out, so that
    /// a peer that leaves is noticed, and returns only when the connection
    /// must end. Calls sent meanwhile wait in the buffer, within its limit.
    pub async fn watch(&mut self) -> ConnError {
        loop {
            if self.buf.len() - self.start > self.limits.max_message {
                return ConnError::MessageSize;
            }
            match self.read_more().await {
                Ok(0) => return ConnError::Closed,
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// Drops the message `next_message` last returned.
    fn consume(&mut self) {
        self.start += std::mem::take(&mut self.pending);
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.partial_since = None;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf.shrink_to(KEEP_CAPACITY);
            }
        } else if self.partial_since.is_some() {
            // The next message's first bytes came with the last read.
            self.partial_since = Some(Instant::now());
        }
    }

    /// One read into the buffer: the bytes read, 0 at EOF. Cancel-safe:
    /// the buffer changes only between awaits.
    async fn read_more(&mut self) -> Result<usize, ConnError> {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        loop {
            self.stream.readable().await.map_err(ConnError::Io)?;
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK, 0);
            let fd = self.stream.as_raw_fd();
            let tail = &mut self.buf[len..];
            let got = self.stream.try_io(Interest::READABLE, || receive(fd, tail));
            self.buf.truncate(len + got.as_ref().map_or(0, |(n, _)| *n));
            match got {
                Ok((n, 0)) => return Ok(n),
                Ok((_, fds)) => {
                    self.counters.fds_dropped.fetch_add(fds, Relaxed);
                    return Err(ConnError::FdsPassed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(0),
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }

    /// Writes `data` whole, with `fds` attached to its first bytes.
    pub async fn send(&mut self, data: &[u8], fds: &[OwnedFd]) -> Result<(), ConnError> {
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut at = 0;
        while at < data.len() {
            let fd = self.stream.as_raw_fd();
            let rights = if at == 0 { &raw[..] } else { &[][..] };
            match self
                .stream
                .try_io(Interest::WRITABLE, || transmit(fd, &data[at..], rights))
            {
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match tokio::time::timeout(self.limits.write_timeout, self.stream.writable())
                        .await
                    {
                        Err(_) => return Err(ConnError::WriteTimeout),
                        Ok(Err(e)) => return Err(ConnError::Io(e)),
                        Ok(Ok(())) => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Err(ConnError::Closed),
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
        Ok(())
    }
}

/// One `recvmsg`: the bytes read and how many FDs came with them (closed
/// here, at once).
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, u64)> {
    // Room for SCM_MAX_FD (253), the most one sendmsg can pass: FDs that
    // did not fit would be installed in our table, but nix (rightly) will
    // not walk a truncated control buffer, so we could not close them.
    let mut space = nix::cmsg_space!([RawFd; 253]);
    let mut iov = [IoSliceMut::new(buf)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), flags)?;
    let mut fds = 0u64;
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Ok((msg.bytes, 1));
    }
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for raw in received {
                // SAFETY: the kernel just installed this descriptor for us
                // and nothing else refers to it; it is closed right here.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                fds += 1;
            }
        }
    }
    Ok((msg.bytes, fds))
}

fn transmit(fd: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let iov = [IoSlice::new(data)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { &rights[..] };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    Ok(sendmsg::<()>(fd, &iov, cmsgs, flags, None)?)
}
