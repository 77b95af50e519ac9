//! What a reader sends, gathered by a thread into a buffer the test reads
//! while it runs: a socket's incoming bytes, a child's stdout. Use it with
//! `#[path = "common/collect.rs"] mod collect;`.

use std::{
    io::Read,
    sync::{Arc, Mutex},
};

/// Reads `r` until its end on a thread of its own; the bytes so far.
pub fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 65536];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}
