//! Manifests as the tracker receives them (JSON): parsing and validation never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = m.validate();
        let _ = m.chunk_count();
    }
});
