//! Feeds arbitrary text to the virtlogd.conf parser (libvirt's format) and
//! to what the configuration takes from it.

#![no_main]

use guestlogd::config::{Config, virtlogd::VirtlogdConf};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(v) = VirtlogdConf::parse(&text, "fuzz") {
        let _ = Config::default().apply_virtlogd(&v, "fuzz");
    }
});
