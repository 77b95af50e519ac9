//! Feeds arbitrary bytes to the reader of virtlogd's restart state, which
//! guestlogd reads in virtlogd's process from /run/virtlogd-restart-exec.json,
//! and writes back whatever it accepts: what it writes must read the same.

#![no_main]

use guestlogd::handover::virtlogd::format::{VirtlogdState, magic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = magic(data);
    if let Ok(state) = VirtlogdState::parse(data) {
        let again = VirtlogdState::parse(&state.to_json());
        assert!(again.is_ok_and(|a| a == state));
    }
});
