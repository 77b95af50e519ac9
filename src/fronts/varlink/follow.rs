//! Follow's stream of replies: a follower's queue turned into replies of
//! at most `FOLLOW_CHUNK` bytes, each written before the next is taken.

use std::{collections::VecDeque, sync::Arc};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, stream};
use serde_json::Value;

use super::{
    api,
    wire::{WireError, int, to_value},
};
use crate::logs::{log::Log, queue::OutputQueue, seats::Seat};

/// feeding it; and the log, which is not forgotten while followed.
pub(super) struct Following(
    pub(super) Arc<OutputQueue>,
    #[allow(dead_code)] pub(super) Arc<Log>,
    /// Its place under `max-clients-total`.
    #[allow(dead_code)]
    pub(super) Seat,
);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The most log bytes in one Follow reply: a reply is written whole before
/// the next batch is taken, so a small one lets a slow follower's queue,
/// not the reply, absorb what it cannot take yet.
const FOLLOW_CHUNK: usize = 16 * 1024;

pub(super) fn follow_stream(
    following: Following,
    text: bool,
) -> impl Stream<Item = (Result<Value, WireError>, bool)> + Send {
    let state = (following, VecDeque::<(Bytes, u64)>::new());
    stream::unfold(state, move |(following, mut ready)| async move {
        if ready.is_empty() {
            // The last batch is out (its replies were written before this
            // stream was polled again): only now does it stop counting
            // against the follower's queue, so a follower costs one queue.
            following.0.sent();
            let Some(batch) = following.0.pop().await else {
                // Finished by the log: its domain migrated away. Said once,
                // in a last reply; a queue closed for any other reason
                // just ends.
                let ended = following.1.departed()?;
                let reply = api::FollowOutput {
                    data: "",
                    text: text.then_some(""),
                    dropped: 0,
                    ended: Some(
                        ended
                            .trim_start_matches("[guestlogd: ")
                            .trim_end_matches(']'),
                    ),
                };
                following.0.close();
                return Some(((Ok(to_value(reply)), false), (following, ready)));
            };
            let data = Bytes::from(batch.chunks.concat());
            let mut dropped = batch.dropped;
            for at in (0..data.len().max(1)).step_by(FOLLOW_CHUNK) {
                let end = (at + FOLLOW_CHUNK).min(data.len());
                ready.push_back((data.slice(at..end), std::mem::take(&mut dropped)));
            }
        }
        let (data, dropped) = ready.pop_front()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let text = text.then(|| String::from_utf8_lossy(&data));
        let reply = api::FollowOutput {
            data: &encoded,
            text: text.as_deref(),
            dropped: int(dropped),
            ended: None,
        };
        Some(((Ok(to_value(reply)), true), (following, ready)))
    })
}
