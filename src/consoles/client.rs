//! One console client's task: it sends the backlog in the client's queue
//! at the client's pace and takes what the client types for the guest
//! (`Input`), and, once it ends, counts the client out and closes its
//! connection for good unless the console is being handed over
//! (`Attached`). The relay's side of a client is `clients`.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::poll_fn,
    io,
    os::fd::AsFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{net::UnixStream, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{console::Stats, input::Input, writers::Who};
use crate::{
    fdstore::Kept,
    lock,
    logs::{
        name::LogName,
        queue::{OutputQueue, drop_marker},
        registry::Registry,
        seats::Seat,
    },
};

/// The most read from a client at once.
const INPUT_CHUNK: usize = 4096;

thread_local! {
    /// Client reads land here, on the worker thread, and are copied out as
    /// big as they are: an idle client holds no buffer.
    static INPUT_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; INPUT_CHUNK]);
}

/// Counts a client while its task runs; when it ends, the connection is
/// closed for good unless the console is being handed over.
pub(super) struct Attached {
    pub(super) stats: Arc<Stats>,
    pub(super) viewer: bool,
    pub(super) fd_name: String,
    pub(super) registry: Arc<Registry>,
    pub(super) keep: Arc<AtomicBool>,
    pub(super) left: Arc<Notify>,
    pub(super) console: LogName,
    pub(super) who: Who,
    /// Its place under `max-clients-total`, given back when it ends.
    pub(super) _seat: Seat,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let counter = if self.viewer {
            &self.stats.viewers
        } else {
            &self.stats.clients
        };
        counter.fetch_sub(1, Relaxed);
        if !self.keep.load(Relaxed) {
            lock(&self.stats.peers).retain(|(name, _)| *name != self.fd_name);
            self.registry.store().remove(&self.fd_name);
            self.registry.touch();
            crate::limited!(
                info,
                console = %self.console,
                uid = self.who.uid,
                pid = self.who.pid,
                viewer = self.viewer,
                "console {}: {} detached (uid {} pid {})",
                self.console,
                if self.viewer { "viewer" } else { "client" },
                self.who.uid,
                self.who.pid
            );
        }
        self.left.notify_one();
    }
}

/// What a client's task owns.
pub(super) struct Task {
    pub(super) socket: Arc<Kept<UnixStream>>,
    pub(super) queue: Arc<OutputQueue>,
    /// Where its input goes; none for a viewer.
    pub(super) input: Option<Arc<Input>>,
    pub(super) may_write: Arc<AtomicBool>,
    pub(super) stop: CancellationToken,
    pub(super) attached: Attached,
}

/// How often a client that has closed its sending side is checked for
/// having gone altogether.
const HANGUP_POLL: Duration = Duration::from_secs(1);

/// A client's task: sends the backlog in its queue at the client's pace,
/// and takes its input (for a viewer, or a client that is not the writer,
/// to nowhere). Ends when the client goes, its queue is closed (it was
/// disconnected), or `stop`.
pub(super) async fn serve(t: Task) {
    let Task {
        socket,
        queue,
        input,
        may_write,
        stop,
        attached,
    } = t;
    // The batch being sent, in order, sent piece by piece so that a stop in
    // the middle can put back exactly what the client has not got.
    let mut batch: VecDeque<Bytes> = VecDeque::new();
    let mut sending = false;
    // Input read but not yet taken: the guest's input queue is full.
    let mut typed: Option<Bytes> = None;
    let mut reading = true;
    let (mut told, mut told_read_only) = (false, false);
    loop {
        let sent = tokio::select! {
            biased;
            () = stop.cancelled() => {
                if sending {
                    queue.unsend(std::mem::take(&mut batch).into(), 0);
                }
                return;
            }
            b = queue.pop(), if !sending => match b {
                None => break,
                Some(b) => {
                    batch = b.chunks.into();
                    if b.dropped > 0 {
                        batch.push_front(Bytes::from(drop_marker(b.dropped)));
                    }
                    sending = true;
                    // Most likely writable now: no wait for a wake-up.
                    send_some(&socket, &mut batch)
                }
            },
            // Poll methods keep the waker in tokio's registration: the
            // task's future holds a pointer, not a wait.
            r = poll_fn(|cx| socket.poll_write_ready(cx)), if sending => match r {
                Ok(()) => send_some(&socket, &mut batch),
                Err(e) => Err(e),
            },
            () = send_typed(input.as_deref(), &mut typed), if typed.is_some() => Ok(false),
            r = poll_fn(|cx| socket.poll_read_ready(cx)), if reading && typed.is_none() => {
                let read = r.and_then(|()| {
                    INPUT_BUFFER.with_borrow_mut(|buf| {
                        socket.try_read(buf).map(|n| Bytes::copy_from_slice(&buf[..n]))
                    })
                });
                match read {
                    // EOF may be a half-close by a client that still reads
                    // its output; the client has gone once it hangs up.
                    Ok(data) if data.is_empty() => reading = false,
                    Ok(data) => {
                        let input = input.as_deref();
                        let to_guest = match input {
                            None => false,
                            Some(_) if !may_write.load(Relaxed) => {
                                if !std::mem::replace(&mut told_read_only, true) {
                                    let _ = socket.try_write(READ_ONLY);
                                }
                                false
                            }
                            Some(_) if !attached.stats.guest_connected.load(Relaxed) => {
                                told_read_only = false;
                                if !std::mem::replace(&mut told, true) {
                                    // Best effort and never waited for: a
                                    // notice, not output.
                                    let _ = socket.try_write(NO_GUEST);
                                }
                                crate::limited!(debug, bytes = data.len(), "input dropped: no guest");
                                false
                            }
                            Some(_) => {
                                (told, told_read_only) = (false, false);
                                true
                            }
                        };
                        if to_guest {
                            typed = Some(data);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        debug!(error = %e, "client read failed");
                        reading = false;
                    }
                }
                Ok(false)
            }
            () = hangup_poll(reading) => {
                if hung_up(&socket) {
                    break;
                }
                Ok(false)
            }
        };
        match sent {
            Ok(true) => {
                queue.sent();
                sending = false;
            }
            Ok(false) => {}
            Err(e) => {
                debug!(error = %e, "client write failed");
                break;
            }
        }
    }
    stop.cancel();
    queue.close();
}

/// Writes from the front of `batch` until it is empty (true) or the socket
/// takes no more now (false).
fn send_some(socket: &UnixStream, batch: &mut VecDeque<Bytes>) -> io::Result<bool> {
    while let Some(front) = batch.front_mut() {
        match socket.try_write(front) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) if n == front.len() => {
                batch.pop_front();
            }
            Ok(n) => *front = front.slice(n..),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Queues what the client typed for the guest, once there is room. Its
/// wait is boxed: an idle client's task stays small.
async fn send_typed(input: Option<&Input>, typed: &mut Option<Bytes>) {
    match input {
        Some(input) => Box::pin(input.send(typed)).await,
        None => *typed = None,
    }
}

/// Ready every `HANGUP_POLL` once the client stopped sending (never
/// before); the timer exists only then.
async fn hangup_poll(reading: bool) {
    if reading {
        std::future::pending::<()>().await;
    }
    Box::pin(tokio::time::sleep(HANGUP_POLL)).await;
}

/// Whether the client has gone (POLLHUP: both directions closed).
fn hung_up(socket: &UnixStream) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

/// What a client that types while another writes is told, once until it
/// may write again.
const READ_ONLY: &[u8] =
    b"\r\n[guestlogd: another client is the writer; input dropped (attach --force takes over)]\r\n";

/// What a client that types while no guest is connected is told, once.
const NO_GUEST: &[u8] = b"\r\n[guestlogd: no guest is connected; input dropped]\r\n";
