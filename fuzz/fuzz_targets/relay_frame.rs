//! Relay frames decoded from arbitrary bytes (one WebSocket message each): never a panic, and
//! whatever decodes re-encodes to the same bytes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use p2p_proto::relay::RelayFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = RelayFrame::decode(Bytes::copy_from_slice(data)) {
        assert_eq!(frame.to_vec(), data);
    }
});
