//! Feeds arbitrary bytes to the reader of the saved state, which a
//! successor reads from whatever memfd the FD store hands it.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = guestlogd::handover::state::State::parse(data);
});
