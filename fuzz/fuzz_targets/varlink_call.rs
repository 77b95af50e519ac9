//! Feeds arbitrary bytes to the varlink front's call decoder and, for a
//! call that decodes, its parameters to every method's parameter decoder:
//! whatever a caller sends gets a call or a refusal, never a panic.

#![no_main]

use guestlogd::{
    api,
    fronts::varlink::{framing::RawCall, wire::parse},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(call) = RawCall::parse(data) else {
        return;
    };
    let p = &call.parameters;
    let _ = parse::<api::OpenPipeInput>(p);
    let _ = parse::<api::RotateInput>(p);
    let _ = parse::<api::ReadLogInput>(p);
    let _ = parse::<api::AppendLogInput>(p);
    let _ = parse::<api::CreateConsoleInput>(p);
    let _ = parse::<api::AttachConsoleInput>(p);
    let _ = parse::<api::RemoveConsoleInput>(p);
    let _ = parse::<api::FollowInput>(p);
    let _ = guestlogd::logs::name::LogName::parse(&call.method);
});
