//! Pipes from OpenPipe: each read end is pumped into its log by one task.
//!
//! A task waits for the pipe to be readable, then runs a job in its log's
//! turn, on a blocking thread, that moves what the pipe holds into the
//! log: with `splice(2)`, never through user space, when nothing needs the
//! bytes there (no follower, no rate limit; see `Log::splices`), else, and
//! within a line's reach of the cap, by reads of `CHUNK` bytes each
//! written to the log before the next:
//! nothing waits in user space, where a crash would lose it, a slow disk
//! slows the writer through the pipe instead of growing a buffer, and a
//! disk that hangs holds this pipe's job, not an async worker. The read
//! buffer belongs to the blocking thread, not the pipe, so an idle pipe
//! costs no buffer at all.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    unistd::pipe2,
};
use tokio::io::{Interest, unix::AsyncFd};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span, warn};

use super::{
    log::{PipeRequest, Wait},
    registry::PipeGuard,
    rotator::Spliced,
};
use crate::fdstore::Kept;

/// Requests to read the pipe dry or finish it, each answered once done.
type Requests = tokio::sync::mpsc::Receiver<PipeRequest>;

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
    let store = guard.registry().store().clone();
    let name = format!("pipe/{}/{}", guard.log().name().fd_part(), store.id());
    // No polling: a pipe whose writers are gone may still hold data.
    store.add(name.clone(), read.as_fd(), false);
    if let Err(e) = adopt(name.clone(), read, guard, tracker, shutdown) {
        store.remove(&name);
        return Err(e);
    }
    Ok(write)
}

/// Feeds `guard`'s log from the read end of a pipe stored as `name` (by
/// `open`, or by a previous guestlogd), lent by the store, until every
/// writer has closed it.
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
    let read = Arc::new(Kept::lent(guard.registry().store(), name.clone(), read));
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
    read: Arc<Kept<AsyncFd<OwnedFd>>>,
    guard: PipeGuard,
    mut drains: Requests,
    shutdown: CancellationToken,
) {
    debug!("pipe opened");
    // Answered once the pipe has ended and no longer counts in its log.
    let mut finished: Option<tokio::sync::oneshot::Sender<bool>> = None;
    // Over the rate, the pipe is drained into /dev/null in batches: while
    // dropping, the task waits this long between drains (shorter when the
    // pipe came back more than half full, so its writer never fills it).
    let mut dropping = Duration::ZERO;
    let mut paused: Option<tokio::time::Instant> = None;
    // Every writer closed the pipe (not a stop or a failure).
    let mut ended = false;
    loop {
        let ready = tokio::select! {
            // A stop comes first: a writer that keeps its pipe full must
            // not keep this task from seeing it (each job yields, so the
            // pipe is always ready again).
            biased;
            () = shutdown.cancelled() => {
                if guard.registry().handing_over() {
                    debug!("pipe handed over");
                    return;
                }
                let deadline = *DRAIN_DEADLINE.get_or_init(|| Instant::now() + DRAIN_FOR);
                if read_dry(&read, &guard, deadline).await.is_none() {
                    let left = unread(read.get_ref());
                    warn!(left, "stopping with bytes still in a pipe: its writer kept writing");
                }
                break;
            }
            Some(request) = drains.recv() => match request {
                PipeRequest::Drain(done) => {
                    // Asked for the log's end: what the writer put in the
                    // pipe before asking must be in the log first.
                    let eof = read_dry(&read, &guard, Instant::now() + DRAIN_FOR).await.is_some_and(|eof| eof);
                    let _ = done.send(());
                    if eof {
                        ended = true;
                        break;
                    }
                    continue;
                }
                PipeRequest::FinishIfEnded(done) => {
                    // Asked by a new OpenLogFile while this pipe still held
                    // the log: with every writer gone (its QEMU exited) the
                    // pipe has ended, only this task has not read its end.
                    if !hung_up(read.get_ref()) {
                        let _ = done.send(false);
                        continue;
                    }
                    if read_dry(&read, &guard, Instant::now() + DRAIN_FOR).await == Some(true) {
                        finished = Some(done);
                        ended = true;
                        break;
                    }
                    let _ = done.send(false);
                    continue;
                }
            },
            () = sleep_until(paused), if paused.is_some() => {
                paused = None;
                continue;
            }
            ready = read.readable(), if paused.is_none() => ready,
        };
        let mut ready = match ready {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "pipe poll failed");
                break;
            }
        };
        // Over the log's rate with nothing left to admit: the bytes are
        // dropped in the kernel, never copied out nor written, and the
        // writer is never held up.
        if guard.log().rate_exhausted() {
            match discard(read.get_ref()) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    guard.log().suppressed(n);
                    dropping = if n >= PIPE_SIZE as usize / 2 {
                        dropping / 2
                    } else {
                        (dropping * 2).clamp(Duration::from_millis(1), MAX_DROP_PAUSE)
                    };
                    paused = Some(tokio::time::Instant::now() + dropping);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => {
                    warn!(error = %e, "pipe read failed");
                    break;
                }
            }
            continue;
        }
        dropping = Duration::ZERO;
        match transfer(&read, &guard, Until::More).await {
            Moved::Eof => {
                ended = true;
                break;
            }
            Moved::Dry => ready.clear_ready(),
            Moved::More => {}
            Moved::Failed(e) => {
                warn!(error = %e, "pipe read failed");
                break;
            }
        }
    }
    let registry = guard.registry().clone();
    registry.store().remove(&name);
    if ended {
        // Every writer closed it: if its QEMU went because the domain
        // migrated away, the log says so where its output ends.
        guard.log().pipe_ended(registry.migrations()).await;
    }
    registry.touch();
    drop(guard);
    if let Some(done) = finished {
        let _ = done.send(true);
    }
    debug!("pipe closed");
}

/// The longest wait between two drains of a pipe over its rate: its
/// kernel buffer (`PIPE_SIZE`) holds this long of a 20 MB/s writer.
const MAX_DROP_PAUSE: Duration = Duration::from_millis(50);

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// `/dev/null`, where a pipe over its rate drops what is over.
static NULL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();

/// Drops up to a pipe's worth of what `fd` holds by splicing it into
/// `/dev/null`: no copy to user space. Falls back to a read where
/// `/dev/null` cannot be opened. `Ok(0)` at the pipe's end.
fn discard(fd: &OwnedFd) -> io::Result<usize> {
    use nix::fcntl::{SpliceFFlags, splice};
    let null = NULL.get_or_init(|| {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()
    });
    match null {
        Some(null) => loop {
            match splice(
                fd,
                None,
                null,
                None,
                PIPE_SIZE as usize,
                SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        },
        None => BUFFER.with_borrow_mut(|buf| nix::unistd::read(fd, buf).map_err(io::Error::from)),
    }
}

/// Whether every writer has closed the pipe (POLLHUP on its read end).
fn hung_up(fd: &OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

/// How long a final stop may spend draining pipes, over all of them: a
/// writer that keeps writing must not hold the stop for ever.
pub const DRAIN_FOR: Duration = Duration::from_secs(5);

/// When the drain of a final stop ends, set by the first pipe to drain.
static DRAIN_DEADLINE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Reads until the pipe is empty or at EOF (`Some(true)`), before
/// `deadline`: `None` if the writer kept it full until then.
async fn read_dry(
    read: &Arc<Kept<AsyncFd<OwnedFd>>>,
    guard: &PipeGuard,
    deadline: Instant,
) -> Option<bool> {
    match transfer(read, guard, Until::Dry(deadline)).await {
        Moved::Eof => Some(true),
        Moved::Dry => Some(false),
        Moved::More => None,
        Moved::Failed(e) => {
            crate::limited!(warn, error = %e, "pipe read failed while reading it dry");
            Some(false)
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

/// How long one job reads.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// A few reads, then the job ends so other logs' jobs get threads.
    More,
    /// Until the pipe is dry, or the deadline.
    Dry(Instant),
}

/// What a job left of the pipe.
#[derive(Debug)]
enum Moved {
    Eof,
    Dry,
    More,
    Failed(io::Error),
}

/// Reads a job's budget at most: each is written at once.
const JOB_READS: usize = 16;
/// The least worth a splice: one costs about ten system calls (its own
/// pipe made, moved into, moved out of, closed), a read and a write two;
/// a pipe holding less (a guest's few bytes at a time) is read.
const SPLICE_MIN: usize = 64 * 1024;
/// The most one splice moves: the whole pipe.
const SPLICE_MAX: usize = PIPE_SIZE as usize;
/// What is read, not spliced, where the cap is near: more than the line
/// window the cut looks at (80 bytes), little enough that a rotation
/// copies almost nothing through user space.
const NEAR_CAP_READ: usize = 4096;

/// Reads from the pipe and writes each read to the log at once, in the
/// log's turn on a blocking thread.
async fn transfer(read: &Arc<Kept<AsyncFd<OwnedFd>>>, guard: &PipeGuard, until: Until) -> Moved {
    let read = read.clone();
    let job = guard.log().run(Wait::Forever, move |log, slot| {
        // Nothing needs the bytes in user space: the kernel moves them
        // from the pipe into the file, and a read (below) happens only
        // for a few bytes (`SPLICE_MIN`), near the cap, where a line end
        // decides the cut, or after a failed splice, so that what the disk
        // refuses is counted.
        let splices = log.splices();
        Ok(BUFFER.with_borrow_mut(|buf| {
            for k in 0.. {
                match until {
                    Until::More if k == JOB_READS => return Moved::More,
                    Until::Dry(deadline) if Instant::now() >= deadline => return Moved::More,
                    _ => {}
                }
                // Near the cap a small read sees the line ends that decide
                // the cut; after a failed splice a whole one is counted.
                let mut want = buf.len();
                if splices && unread(read.get_ref()) >= SPLICE_MIN {
                    match log.splice_in(slot, read.get_ref().as_fd(), SPLICE_MAX) {
                        Ok(Spliced::Moved(_)) => continue,
                        Ok(Spliced::Eof) => return Moved::Eof,
                        Ok(Spliced::Empty) => return Moved::Dry,
                        Ok(Spliced::NearCap) => want = NEAR_CAP_READ,
                        Ok(Spliced::ReadInstead) => {}
                        Err(_) => {}
                    }
                }
                let n = match nix::unistd::read(read.get_ref(), &mut buf[..want]) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(nix::errno::Errno::EAGAIN) => return Moved::Dry,
                    Err(e) => return Moved::Failed(e.into()),
                    Ok(0) => return Moved::Eof,
                    Ok(n) => n,
                };
                // Over the log's rate, the rest of the read is dropped
                // (and marked in the log): the writer is never held up.
                let admitted = log.admit(n);
                log.suppressed(n - admitted);
                if admitted > 0 {
                    // A refused write is counted and logged by the log;
                    // the pipe goes on, since the next write may succeed.
                    let _ = log.write_in(slot, &buf[..admitted]);
                }
            }
            Moved::More
        }))
    });
    match job.await {
        Ok(moved) => moved,
        Err(e) => Moved::Failed(io::Error::other(e)),
    }
}
