//! Punch packets decoded from arbitrary datagrams: never a panic, and whatever decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::punch::PunchPacket;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = PunchPacket::decode(data) {
        assert_eq!(packet.to_vec(), data);
    }
});
