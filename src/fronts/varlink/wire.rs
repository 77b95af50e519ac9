//! The varlink front's wire conversions: parameters decoded into
//! validated values, each refusal worded as the interface words it (naming
//! the parameter at fault), and every operation's error mapped to the
//! wire once (`From<OpError>`).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use zlink::varlink_service;

use super::api::{self, ManagerError};
use crate::{
    config,
    consoles::console::Domain,
    error_chain, limited,
    logs::{
        name::{self, LogName},
        policy::PolicyChange,
        rotator::Pos,
    },
    ops::{JournalRequest, Machine, OpError},
};

const DEFAULT_REPLAY: usize = 16 * 1024;
const MAX_REPLAY: i64 = 1024 * 1024;

/// Every error a call can end with.
#[derive(Debug)]
pub enum WireError {
    Manager(ManagerError),
    Varlink(varlink_service::Error<'static>),
}

impl Serialize for WireError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Manager(e) => e.serialize(s),
            Self::Varlink(e) => e.serialize(s),
        }
    }
}

impl From<ManagerError> for WireError {
    fn from(e: ManagerError) -> Self {
        Self::Manager(e)
    }
}

impl From<OpError> for WireError {
    fn from(e: OpError) -> Self {
        let name = |n: LogName| n.to_string();
        match e {
            OpError::NoSuchLog(n) => ManagerError::NoSuchLog { name: name(n) },
            OpError::NoSuchConsole(n) => ManagerError::NoSuchConsole { name: name(n) },
            OpError::ConsoleExists(n) => ManagerError::ConsoleExists { name: name(n) },
            OpError::ConsoleOwned { name: n, owner } => ManagerError::ConsoleOwned {
                name: name(n),
                owner: owner.map(wire_domain),
            },
            OpError::BootLogTaken(n) => {
                return invalid(
                    "bootBytes",
                    format!("the boot log's name {n} is taken by a log that is not a boot log"),
                );
            }
            OpError::Limit { what, max } => return limit(what, max),
            e @ (OpError::File(_)
            | OpError::Pipe(_)
            | OpError::Console { .. }
            | OpError::Busy(_)
            | OpError::NoChown(_)) => {
                limited!(warn, error = %error_chain(&e), "call failed");
                ManagerError::IoError {
                    message: error_chain(&e),
                }
            }
        }
        .into()
    }
}

/// A domain as the wire gives it, validated.
pub(super) fn domain(parameter: &str, d: api::ConsoleDomain) -> Result<Domain, WireError> {
    Domain::new(&d.uuid, &d.name).map_err(|e| invalid(parameter, e.to_string()))
}

/// A domain UUID alone, as RemoveConsole takes it.
pub(super) fn domain_uuid(parameter: &str, uuid: &str) -> Result<String, WireError> {
    Domain::new(uuid, "-")
        .map(|d| d.uuid)
        .map_err(|e| invalid(parameter, e.to_string()))
}

pub(super) fn wire_domain(d: Domain) -> api::ConsoleDomain {
    api::ConsoleDomain {
        uuid: d.uuid,
        name: d.name,
    }
}

/// Policy parameters as a call gives them.
pub(super) fn policy(
    max_size: Option<i64>,
    max_backups: Option<i64>,
    max_rate: Option<i64>,
    max_burst: Option<i64>,
) -> Result<PolicyChange, WireError> {
    Ok(PolicyChange {
        max_size: max_size.map(|v| ranged("maxSize", v)).transpose()?,
        max_backups: max_backups.map(|v| ranged("maxBackups", v)).transpose()?,
        max_rate: max_rate.map(|v| ranged("maxRate", v)).transpose()?,
        max_burst: max_burst.map(|v| ranged("maxBurst", v)).transpose()?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// Decodes a call's parameters, naming the parameter at fault.
pub fn parse<T: DeserializeOwned>(parameters: &Option<Value>) -> Result<T, WireError> {
    let value = match parameters {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(v) => v.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let reason = e.inner().to_string();
        let path = e.path().to_string();
        // A missing field is reported at its parent, with the field's name
        // in the message between backquotes.
        // An unknown field is already the last part of the path.
        let field = reason
            .starts_with("missing field")
            .then(|| reason.split('`').nth(1))
            .flatten();
        let parameter = match (path.as_str(), field) {
            (".", Some(f)) => f.to_owned(),
            (".", None) => "parameters".to_owned(),
            (_, Some(f)) => format!("{path}.{f}"),
            (_, None) => path,
        };
        invalid(&parameter, reason)
    })
}

pub(super) fn limit(what: &str, max: usize) -> WireError {
    ManagerError::LimitReached {
        limit: what.into(),
        max: int(max as u64),
    }
    .into()
}

/// How much output a new client or follower gets first.
pub(super) fn replay_bytes(v: Option<i64>) -> Result<usize, WireError> {
    match v {
        None => Ok(DEFAULT_REPLAY),
        Some(n @ 0..=MAX_REPLAY) => Ok(n as usize),
        Some(_) => Err(invalid(
            "replayBytes",
            format!("must be from 0 to {MAX_REPLAY}"),
        )),
    }
}

pub(super) fn id(parameter: &str, v: i64) -> Result<u32, WireError> {
    u32::try_from(v).map_err(|_| invalid(parameter, "must be from 0 to 4294967295".into()))
}

/// A plain name: what calls that create a log or console take.
pub(super) fn log_name(name: &str) -> Result<LogName, WireError> {
    LogName::new_plain(name).map_err(|e| bad_name(name, e))
}

/// A plain name or a path-addressed log's path: what calls that look up
/// an existing log take.
pub(super) fn any_log(name: &str) -> Result<LogName, WireError> {
    LogName::parse(name).map_err(|e| bad_name(name, e))
}

pub(super) fn bad_name(name: &str, e: name::NameError) -> WireError {
    let max = if name.starts_with('/') {
        name::MAX_PATH_LEN
    } else {
        name::MAX_LEN
    };
    let mut end = name.len().min(max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    ManagerError::InvalidName {
        name: name[..end].to_owned(),
        reason: e.to_string(),
    }
    .into()
}

/// A non-negative wire integer in the range its parameter allows.
pub(super) fn ranged<T: TryFrom<i64>>(parameter: &str, v: i64) -> Result<T, WireError> {
    let fits = match parameter {
        "maxSize" => config::check_policy_size(v),
        "maxBackups" => config::check_policy_backups(v),
        "maxRate" | "maxBurst" => config::check_rate(v),
        _ => (v >= 0)
            .then_some(())
            .ok_or_else(|| "must not be negative".to_owned()),
    };
    fits.map_err(|why| invalid(parameter, why))?;
    T::try_from(v).map_err(|_| invalid(parameter, "is out of range".into()))
}

/// A call's journal request: `journal` and `vm`, validated.
pub(super) fn journal(
    on: Option<bool>,
    vm: Option<api::VirtualMachine>,
) -> Result<JournalRequest, WireError> {
    let vm = vm
        .map(|m| {
            let name = m
                .name
                .map(|n| vm_name(&n).map_err(|why| invalid("vm.name", why)));
            let uuid = m.uuid.map(|u| {
                vm_uuid(&u).ok_or_else(|| {
                    invalid(
                        "vm.uuid",
                        "must be 36 hex digits and dashes, 8-4-4-4-12".into(),
                    )
                })
            });
            Ok::<_, WireError>(Machine {
                name: name.transpose()?,
                uuid: uuid.transpose()?,
            })
        })
        .transpose()?;
    Ok(JournalRequest { on, vm })
}

/// A machine's name as the journal gets it.
pub fn vm_name(n: &str) -> Result<String, String> {
    if n.is_empty() || n.len() > 256 || n.chars().any(char::is_control) {
        return Err("must be 1 to 256 bytes without control characters".into());
    }
    Ok(n.to_owned())
}

/// A UUID in its canonical form, lower case.
pub fn vm_uuid(u: &str) -> Option<String> {
    let groups: Vec<&str> = u.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let ok = lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| u.to_ascii_lowercase())
}

pub(super) fn invalid(parameter: &str, reason: String) -> WireError {
    ManagerError::InvalidParameter {
        parameter: parameter.to_owned(),
        reason,
    }
    .into()
}

pub(super) fn wire_pos(p: Pos) -> api::Position {
    api::Position {
        inode: int(p.inode),
        offset: int(p.offset),
    }
}

/// Wire integers are signed 64-bit; nothing we count comes near the limit.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn empty() -> Value {
    Value::Object(Default::default())
}

/// The bytes `v` takes as JSON, counted without keeping them.
pub(super) fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

pub(super) fn to_value(v: impl Serialize) -> Value {
    // Our own output types always serialise; a map with string keys cannot fail.
    serde_json::to_value(v).unwrap_or_else(|_| empty())
}
