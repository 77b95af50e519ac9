//! The varlink socket, with limits zlink does not have.
//!
//! - `Listener` refuses a connection past `max_connections`: the peer gets a
//!   `LimitReached` error in place of a reply, then the connection closes.
//! - `Stream`'s read half counts the bytes since the last NUL (the end of a
//!   varlink message). Past `max_message_size` the peer gets `LimitReached`
//!   and the connection ends, before zlink would buffer up to 100 MiB.
//!
//! Both keep the socket's FD passing and peer credentials working: the read
//! half is still a unix socket (`AsFd` + `UnixSocket`).

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use nix::sys::socket::{MsgFlags, send};
use tracing::warn;
use zlink::{
    Connection,
    connection::socket::{self, ReadResult},
    tokio::unix,
};

/// Accepts connections up to a limit.
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::UnixListener,
    live: Arc<AtomicUsize>,
    max_connections: usize,
    max_message_size: usize,
}

impl Listener {
    pub fn new(
        inner: tokio::net::UnixListener,
        max_connections: usize,
        max_message_size: usize,
    ) -> Self {
        Self {
            inner,
            live: Arc::new(AtomicUsize::new(0)),
            max_connections,
            max_message_size,
        }
    }

    /// Connections open now.
    pub fn live(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }
}

impl zlink::Listener for Listener {
    type Socket = Stream;

    async fn accept(&mut self) -> zlink::Result<Option<Connection<Stream>>> {
        loop {
            let stream = match self.inner.accept().await {
                Ok((stream, _)) => stream,
                // Out of FDs or memory, or a peer that left before we took
                // it: the listener itself is fine, so go on serving.
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let taken = self
                .live
                .fetch_update(Relaxed, Relaxed, |n| {
                    (n < self.max_connections).then_some(n + 1)
                })
                .is_ok();
            if !taken {
                refuse(stream.as_fd(), "connections", self.max_connections);
                continue;
            }
            let slot = Slot(self.live.clone());
            let inner = match unix::Stream::try_from(stream) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot set up a connection");
                    continue;
                }
            };
            return Ok(Some(Connection::new(Stream {
                inner,
                slot,
                max_message_size: self.max_message_size,
            })));
        }
    }
}

/// A connection's place under `max_connections`, given back on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// A connection's socket.
#[derive(Debug)]
pub struct Stream {
    inner: unix::Stream,
    slot: Slot,
    max_message_size: usize,
}

impl socket::Socket for Stream {
    type ReadHalf = ReadHalf;
    type WriteHalf = <unix::Stream as socket::Socket>::WriteHalf;

    const CAN_TRANSFER_FDS: bool = true;

    fn split(self) -> (ReadHalf, Self::WriteHalf) {
        let (read, write) = self.inner.split();
        (
            ReadHalf {
                inner: read,
                _slot: self.slot,
                unterminated: 0,
                max_message_size: self.max_message_size,
            },
            write,
        )
    }
}

/// The read half, which bounds the size of one message.
#[derive(Debug)]
pub struct ReadHalf {
    inner: <unix::Stream as socket::Socket>::ReadHalf,
    /// The read half lives exactly as long as the connection.
    _slot: Slot,
    /// Bytes read since the last NUL.
    unterminated: usize,
    max_message_size: usize,
}

impl socket::ReadHalf for ReadHalf {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let result = self.inner.read(buf).await?;
        let got = &buf[..result.bytes_read()];
        self.unterminated = match got.iter().rposition(|b| *b == 0) {
            Some(i) => got.len() - i - 1,
            None => self.unterminated + got.len(),
        };
        if self.unterminated > self.max_message_size {
            refuse(self.as_fd(), "messageSize", self.max_message_size);
            return Err(zlink::Error::BufferOverflow);
        }
        Ok(result)
    }
}

impl AsFd for ReadHalf {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl socket::UnixSocket for ReadHalf {}

/// Sends a `LimitReached` error in place of a reply, without waiting: a
/// peer that does not read it simply misses it.
fn refuse(fd: BorrowedFd<'_>, limit: &str, max: usize) {
    warn!(limit, max, "varlink limit reached; closing the connection");
    let msg = format!(
        "{{\"error\":\"io.guestlogd.Manager.LimitReached\",\"parameters\":{{\"limit\":\"{limit}\",\"max\":{max}}}}}\0"
    );
    let _ = send(
        fd.as_raw_fd(),
        msg.as_bytes(),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

/// Watches how much a connection's socket can take without blocking, so a
/// reply is produced only once it fits.
#[derive(Debug)]
pub struct Room(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

nix::ioctl_read_bad!(unsent_bytes, nix::libc::TIOCOUTQ, nix::libc::c_int);

impl Room {
    pub fn new(socket: &ReadHalf) -> std::io::Result<Self> {
        let fd = socket.as_fd().try_clone_to_owned()?;
        // SAFETY: the `OwnedFd` keeps its descriptor open, naming the same
        // socket, for as long as the `AsyncFd` that owns it lives.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::WRITABLE)
        }
        .map_err(std::io::Error::from)?;
        Ok(Self(fd))
    }

    /// Waits until `bytes` more fit in the socket's send buffer.
    pub async fn wait_for(&self, bytes: usize) -> std::io::Result<()> {
        use nix::sys::socket::{getsockopt, sockopt::SndBuf};
        loop {
            let mut queued: nix::libc::c_int = 0;
            // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int, the bytes a
            // socket has not yet had taken by its peer.
            unsafe { unsent_bytes(self.0.as_raw_fd(), &mut queued) }?;
            let size = getsockopt(self.0.get_ref(), SndBuf)?;
            if size.saturating_sub(queued.max(0) as usize) >= bytes {
                return Ok(());
            }
            let mut ready = self.0.writable().await?;
            ready.clear_ready();
            // Writability says some room came free, not how much; the peer
            // reads at its pace, so look again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
