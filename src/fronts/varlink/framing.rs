//! The varlink framing: NUL-terminated JSON messages on a unix socket,
//! served one connection per task (`server`), over any `Service`.
//!
//! Written on `server::Conn` rather than zlink's server, whose single loop
//! awaits every reply's write (one caller that stops reading stops all),
//! keeps FDs that arrive inside an unfinished message, and grows a reply's
//! buffer 256 bytes at a time, re-serialising at each step. Here a reply is
//! serialised once, straight into its buffer, and written with its own
//! deadline; the calls themselves are the `Service`'s (`Manager`).
//!
//! Per connection, calls are answered in order. A oneway call's work is
//! queued for a worker of the connection's own, at most `ONEWAY_QUEUE`
//! deep; past that the connection is closed, so a flood of oneway calls
//! costs one thread and a small queue, not a thread per call.

use std::{
    os::fd::{BorrowedFd, OwnedFd},
    pin::Pin,
    sync::Arc,
};

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fronts::server::{Conn, ConnError, Framing, Front, Peer};

/// A reply's parameters and the FDs that go with it.
pub type Reply<E> = Result<(Value, Vec<OwnedFd>), E>;
/// A call's work, run off the connection's task.
pub type Job<E> = Pin<Box<dyn Future<Output = Reply<E>> + Send>>;
/// Replies that go on: each with whether more follow.
pub type Replies<E> = Pin<Box<dyn Stream<Item = (Result<Value, E>, bool)> + Send>>;

/// How a call is answered.
pub enum Answer<E> {
    /// A reply ready now.
    Now(Value),
    /// Work that may touch the disk; its result is the reply.
    Later(Job<E>),
    /// A stream of replies (`more`).
    Stream(Replies<E>),
}

/// What answers the calls of a varlink connection.
pub trait Service: Send + Sync + 'static {
    /// An error reply: serialised as `{"error": …, "parameters": …}`.
    type Error: Serialize + Send + 'static;

    /// The interface whose `LimitReached(limit, max)` and
    /// `IoError(message)` errors the framing sends on its own: when a peer
    /// is refused, and when a reply cannot be encoded.
    const INTERFACE: &'static str;

    /// Answers one call from `caller`, without waiting: work that may
    /// block is returned as a job or a stream.
    fn dispatch(&self, call: &RawCall, caller: &Peer) -> Result<Answer<Self::Error>, Self::Error>;
}

/// Oneway calls whose work may wait, per connection.
pub const ONEWAY_QUEUE: usize = 16;

/// A call as it comes off the wire, before its parameters are checked.
#[derive(Debug, Deserialize)]
pub struct RawCall {
    pub method: String,
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub oneway: bool,
    #[serde(default)]
    pub more: bool,
    #[serde(default)]
    pub upgrade: bool,
}

impl RawCall {
    /// Decodes one message. `None` for anything that is not a call: such a
    /// peer gets no reply and its connection ends, as with sd-varlink.
    pub fn parse(message: &[u8]) -> Option<Self> {
        serde_json::from_slice(message).ok()
    }
}

/// Where a varlink message ends: at its NUL.
pub fn frame(buf: &[u8]) -> Framing {
    match buf.iter().position(|b| *b == 0) {
        Some(len) => Framing::Message {
            len,
            consume: len + 1,
        },
        None => Framing::Incomplete,
    }
}

#[derive(Serialize)]
struct ReplyMessage<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    continues: bool,
}

/// One reply's bytes, NUL included. Serialising our own types cannot fail;
/// if it ever did, the caller would get an internal error, not silence.
fn encode<E: Serialize>(reply: &Result<Value, E>, continues: bool, interface: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let written = match reply {
        Ok(params) => {
            // An empty reply carries no parameters, as zlink's own clients
            // expect for methods that return `()`.
            let empty = params.as_object().is_some_and(|o| o.is_empty());
            let parameters = (!empty && !params.is_null()).then_some(params);
            serde_json::to_writer(
                &mut out,
                &ReplyMessage {
                    parameters,
                    continues,
                },
            )
        }
        Err(e) => serde_json::to_writer(&mut out, e),
    };
    if written.is_err() {
        out.clear();
        out.extend_from_slice(
            format!(
                r#"{{"error":"{interface}.IoError","parameters":{{"message":"internal error"}}}}"#
            )
            .as_bytes(),
        );
    }
    out.push(0);
    out
}

/// The varlink front of a `Service`.
#[derive(Debug)]
pub struct Varlink<S> {
    pub service: S,
}

impl<S: Service> Front for Varlink<S> {
    async fn serve(self: Arc<Self>, mut conn: Conn, shutdown: CancellationToken) -> ConnError {
        let encode =
            |reply: &Result<Value, S::Error>, continues| encode(reply, continues, S::INTERFACE);
        let mut oneway: Option<mpsc::Sender<Job<S::Error>>> = None;
        loop {
            let call = tokio::select! {
                () = shutdown.cancelled() => return ConnError::Shutdown,
                m = conn.next_message(frame) => match m {
                    Ok(m) => RawCall::parse(m),
                    Err(ConnError::MessageSize) => {
                        refuse(conn.fd(), S::INTERFACE, "messageSize", conn.limits().max_message);
                        return ConnError::MessageSize;
                    }
                    Err(e) => return e,
                },
            };
            let Some(call) = call else {
                return ConnError::BadMessage("not a varlink call".into());
            };
            let answer = self.service.dispatch(&call, &conn.peer);
            if call.oneway {
                if let Ok(Answer::Later(job)) = answer {
                    let tx = oneway.get_or_insert_with(spawn_oneway_worker);
                    if tx.try_send(job).is_err() {
                        return ConnError::Oneway;
                    }
                }
                continue;
            }
            let sent = match answer {
                Err(e) => conn.send(&encode(&Err(e), false), &[]).await,
                Ok(Answer::Now(v)) => conn.send(&encode(&Ok(v), false), &[]).await,
                Ok(Answer::Later(job)) => {
                    // The peer may leave meanwhile; the work is done anyway,
                    // so a pipe it asked for is not half made.
                    let (reply, fds) = match job.await {
                        Ok((v, fds)) => (Ok(v), fds),
                        Err(e) => (Err(e), vec![]),
                    };
                    conn.send(&encode(&reply, false), &fds).await
                }
                Ok(Answer::Stream(mut replies)) => loop {
                    let next = tokio::select! {
                        () = shutdown.cancelled() => return ConnError::Shutdown,
                        why = conn.watch() => return why,
                        next = replies.next() => next,
                    };
                    // A stream that ends without a last reply has lost its
                    // source (its log is gone): the caller sees the end.
                    let Some((reply, continues)) = next else {
                        return ConnError::Closed;
                    };
                    let failed = reply.is_err();
                    if let Err(e) = conn.send(&encode(&reply, continues), &[]).await {
                        return e;
                    }
                    if !continues || failed {
                        break Ok(());
                    }
                },
            };
            if let Err(e) = sent {
                return e;
            }
        }
    }

    fn refuse(&self, fd: BorrowedFd<'_>, limit: &str, max: usize) {
        refuse(fd, S::INTERFACE, limit, max);
    }

    fn name(&self) -> &'static str {
        "varlink"
    }
}

/// Runs a connection's oneway work, one call at a time, until the
/// connection is gone and its queue is empty.
fn spawn_oneway_worker<E: Send + 'static>() -> mpsc::Sender<Job<E>> {
    let (tx, mut rx) = mpsc::channel::<Job<E>>(ONEWAY_QUEUE);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            // No one waits for the reply; failures were logged where they
            // happened.
            let _ = job.await;
        }
    });
    tx
}

/// Sends a `LimitReached` error in place of a reply, without waiting.
pub fn refuse(fd: BorrowedFd<'_>, interface: &str, limit: &str, max: usize) {
    use nix::sys::socket::{MsgFlags, send};
    use std::os::fd::AsRawFd;
    let msg = format!(
        "{{\"error\":\"{interface}.LimitReached\",\"parameters\":{{\"limit\":\"{limit}\",\"max\":{max}}}}}\0"
    );
    let _ = send(
        fd.as_raw_fd(),
        msg.as_bytes(),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_their_nul() {
        assert_eq!(frame(b"{}"), Framing::Incomplete);
        assert_eq!(frame(b"{}\0{"), Framing::Message { len: 2, consume: 3 });
    }

    #[test]
    fn replies_are_varlink_messages() {
        let v = serde_json::json!({"a": 1});
        let encode = |r: &Result<Value, ()>, continues| encode(r, continues, "a.b");
        assert_eq!(
            encode(&Ok(v.clone()), false),
            b"{\"parameters\":{\"a\":1}}\0"
        );
        assert_eq!(
            encode(&Ok(v), true),
            b"{\"parameters\":{\"a\":1},\"continues\":true}\0"
        );
        assert_eq!(encode(&Ok(serde_json::json!({})), false), b"{}\0");
    }

    #[test]
    fn calls_parse_with_their_flags() {
        let c = RawCall::parse(br#"{"method":"a.b.C","oneway":true}"#).unwrap();
        assert!(c.oneway && !c.more && c.parameters.is_none());
        assert!(RawCall::parse(b"{not json").is_none());
        assert!(RawCall::parse(br#"{"parameters":{}}"#).is_none());
        // serde_json refuses numbers it cannot hold: not a call, no panic.
        assert!(RawCall::parse(br#"{"method":"a.b.C","parameters":{"x":1e400}}"#).is_none());
    }
}
