//! `Metrics`: systemd's `io.systemd.Metrics` (List and Describe, both with
//! `more`) and `org.varlink.service`, the only interfaces of the metrics
//! socket, served by the varlink framing (`fronts::varlink::framing`).
//!
//! Anyone who reaches the socket may call: the replies are family names,
//! log and console names and numbers, never log content. A List is a lazy
//! stream (`families::Listing`), so a caller that reads slowly holds one
//! weak pointer per log and console and its own connection, nothing else.

use std::sync::Arc;

use futures_util::stream;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;
use zlink::varlink_service;

use super::families::{FAMILIES, Listing, Sources};
use crate::fronts::{
    server::Peer,
    varlink::{
        framing::{Answer, RawCall, Service},
        introspect::service_call,
        wire::{Empty, WireError, parse},
    },
};

/// The interface's name.
pub const INTERFACE: &str = "io.systemd.Metrics";
/// Its definition, served verbatim by GetInterfaceDescription.
pub const DESCRIPTION: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/interfaces/io.systemd.Metrics.varlink"
));

/// An error reply of the metrics socket.
#[derive(Debug)]
pub enum MetricsError {
    /// `org.varlink.service`'s errors, as the varlink socket words them.
    Varlink(WireError),
    /// No metric to list (never, while the daemon's own families exist).
    NoSuchMetric,
}

impl Serialize for MetricsError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Varlink(e) => e.serialize(s),
            Self::NoSuchMetric => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("error", "io.systemd.Metrics.NoSuchMetric")?;
                m.end()
            }
        }
    }
}

impl From<WireError> for MetricsError {
    fn from(e: WireError) -> Self {
        Self::Varlink(e)
    }
}

/// The metrics service. Cheap to hold: it reads the daemon's figures.
#[derive(Debug)]
pub struct Metrics {
    pub sources: Arc<Sources>,
}

impl Service for Metrics {
    type Error = MetricsError;
    /// A refused connection is told with guestlogd's own `LimitReached`,
    /// which `io.systemd.Metrics` has no word for.
    const INTERFACE: &'static str = crate::fronts::varlink::api::INTERFACE;

    fn dispatch(
        &self,
        call: &RawCall,
        _caller: &Peer,
    ) -> Result<Answer<MetricsError>, MetricsError> {
        let (interface, member) = call.method.rsplit_once('.').unwrap_or(("", &call.method));
        if interface == "org.varlink.service" {
            let interfaces = [(INTERFACE, DESCRIPTION)];
            return Ok(Answer::Now(service_call(
                member,
                &call.parameters,
                &interfaces,
            )?));
        }
        if interface != INTERFACE {
            return Err(
                WireError::Varlink(varlink_service::Error::InterfaceNotFound {
                    interface: interface.to_owned().into(),
                })
                .into(),
            );
        }
        if !matches!(member, "List" | "Describe") {
            return Err(WireError::Varlink(varlink_service::Error::MethodNotFound {
                method: call.method.clone().into(),
            })
            .into());
        }
        let _: Empty = parse(&call.parameters)?;
        // As systemd's own servers: both stream, and only stream.
        if !call.more {
            return Err(WireError::Varlink(varlink_service::Error::ExpectedMore).into());
        }
        let replies: Vec<Value> = match member {
            "Describe" => FAMILIES
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "name": f.name,
                        "description": f.description,
                        "type": f.kind,
                    })
                })
                .collect(),
            _ => return Ok(Answer::Stream(Box::pin(list(self.sources.clone())))),
        };
        Ok(Answer::Stream(Box::pin(last_says_so(replies.into_iter()))))
    }
}

/// Every metric, each as one reply.
fn list(
    sources: Arc<Sources>,
) -> impl futures_util::Stream<Item = (Result<Value, MetricsError>, bool)> + Send {
    last_says_so(Listing::new(sources).map(|m| serde_json::to_value(m).unwrap_or(Value::Null)))
}

/// Replies with `continues` on all but the last; an empty series is
/// NoSuchMetric, as systemd's servers answer it.
fn last_says_so(
    items: impl Iterator<Item = Value> + Send,
) -> impl futures_util::Stream<Item = (Result<Value, MetricsError>, bool)> + Send {
    let mut items = items.peekable();
    let mut first = true;
    stream::iter(std::iter::from_fn(move || {
        let was_first = std::mem::replace(&mut first, false);
        match items.next() {
            Some(v) => Some((Ok(v), items.peek().is_some())),
            None if was_first => Some((Err(MetricsError::NoSuchMetric), false)),
            None => None,
        }
    }))
}
