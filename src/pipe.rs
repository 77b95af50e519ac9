//! Pipes from OpenPipe: each read end is pumped into its log by one task.
//!
//! A task reads as much as the pipe holds (up to `CHUNK` bytes) and writes
//! it to the log before it reads again: nothing waits in user space, where a
//! crash would lose it, and a slow disk slows the writer through the pipe
//! instead of growing a buffer. The read buffer belongs to the worker
//! thread, not the pipe, so an idle pipe costs no buffer at all.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    unistd::pipe2,
};
use tokio::io::{Interest, unix::AsyncFd};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, warn};

use crate::registry::PipeGuard;

/// Requests to read the pipe dry, each answered once it is.
type Requests = tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>;

/// The most read at once: at least the 64 KiB the issue asks for, and
/// twice what `cat` uses.
const CHUNK: usize = 256 * 1024;
/// The kernel-side buffer asked for, so a writer can run ahead of a slow
/// disk by this much. Best effort: the kernel may refuse.
const PIPE_SIZE: i32 = 1024 * 1024;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// Creates a pipe whose read end feeds `guard`'s log until every writer has
/// closed it, and returns the write end. Must run inside the runtime.
pub fn open(
    guard: PipeGuard,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<OwnedFd> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    if let Err(e) = fcntl(&read, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        debug!(error = %e, "pipe size stays at the kernel default");
    }
    let store = guard.registry().store();
    let name = format!("pipe/{}/{}", guard.log().name().fd_part(), store.id());
    // No polling: a pipe whose writers are gone may still hold data.
    store.add(name.clone(), read.as_fd(), false);
    adopt(name, read, guard, tracker, shutdown)?;
    Ok(write)
}

/// Feeds `guard`'s log from the read end of a pipe stored as `name` (by
/// `open`, or by a previous guestlogd) until every writer has closed it.
pub fn adopt(
    name: String,
    read: OwnedFd,
    guard: PipeGuard,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // Only our end is non-blocking; the writer keeps ordinary semantics.
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    // SAFETY: an `OwnedFd` keeps its descriptor open, and names the same
    // one, for as long as the `AsyncFd` that owns it lives.
    let read = unsafe { AsyncFd::register_with_interest(read, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let span = info_span!("pipe", log = %guard.log().name(), fd = read.as_raw_fd());
    // A few waiting requests are plenty: one dry read answers them all.
    let (drains, requests) = tokio::sync::mpsc::channel(4);
    guard.log().add_drain(drains);
    tracker.spawn(pump(name, read, guard, requests, shutdown).instrument(span));
    Ok(())
}

/// Moves bytes from the pipe to the log until EOF, an error, or shutdown.
/// A shutdown that hands over leaves unread bytes in the kernel for the
/// next guestlogd; a final one first takes whatever the pipe holds.
async fn pump(
    name: String,
    read: AsyncFd<OwnedFd>,
    guard: PipeGuard,
    mut drains: Requests,
    shutdown: CancellationToken,
) {
    debug!("pipe opened");
    loop {
        let ready = tokio::select! {
            biased;
            ready = read.readable() => ready,
            Some(done) = drains.recv() => {
                // Asked for the log's end: what the writer put in the pipe
                // before asking must be in the log first.
                let eof = read_dry(&read, &guard, Instant::now() + DRAIN_FOR).is_some_and(|eof| eof);
                let _ = done.send(());
                if eof {
                    break;
                }
                continue;
            }
            () = shutdown.cancelled() => {
                if guard.registry().handing_over() {
                    debug!("pipe handed over");
                    return;
                }
                let deadline = *DRAIN_DEADLINE.get_or_init(|| Instant::now() + DRAIN_FOR);
                if read_dry(&read, &guard, deadline).is_none() {
                    let left = unread(read.get_ref());
                    warn!(left, "stopping with bytes still in a pipe: its writer kept writing");
                }
                break;
            }
        };
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "pipe poll failed");
                break;
            }
        };
        match ready.try_io(|fd| transfer(fd.get_ref(), &guard)) {
            Ok(Ok(0)) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "pipe read failed");
                break;
            }
            Err(_would_block) => {}
        }
    }
    let registry = guard.registry();
    registry.store().remove(&name);
    registry.touch();
    debug!("pipe closed");
}

/// How long a final stop may spend draining pipes, over all of them: a
/// writer that keeps writing must not hold the stop for ever.
pub const DRAIN_FOR: Duration = Duration::from_secs(5);

/// When the drain of a final stop ends, set by the first pipe to drain.
static DRAIN_DEADLINE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Reads until the pipe is empty or at EOF (`Some(true)`), before
/// `deadline`: `None` if the writer kept it full until then.
fn read_dry(read: &AsyncFd<OwnedFd>, guard: &PipeGuard, deadline: Instant) -> Option<bool> {
    loop {
        if Instant::now() >= deadline {
            return None;
        }
        match transfer(read.get_ref(), guard) {
            Ok(0) => return Some(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(false),
            Err(e) => {
                crate::limited!(warn, error = %e, "pipe read failed while reading it dry");
                return Some(false);
            }
        }
    }
}

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes waiting in a pipe.
fn unread(fd: &OwnedFd) -> usize {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, the bytes readable now.
    match unsafe { fionread(fd.as_raw_fd(), &mut n) } {
        Ok(_) => n.max(0) as usize,
        Err(_) => 0,
    }
}

/// One read into the thread's buffer, written to the log at once.
fn transfer(fd: &OwnedFd, guard: &PipeGuard) -> io::Result<usize> {
    BUFFER.with_borrow_mut(|buf| {
        let n = loop {
            match nix::unistd::read(fd, buf) {
                Err(nix::errno::Errno::EINTR) => {}
                other => break other?,
            }
        };
        if n > 0 {
            // A refused write is counted and logged by the log; the pipe
            // goes on, since the next write may succeed.
            let _ = guard.log().write(&buf[..n]);
        }
        Ok(n)
    })
}
