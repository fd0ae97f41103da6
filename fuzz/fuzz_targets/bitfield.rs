//! Bitfields from arbitrary bytes and chunk counts: accepted ones round-trip through base64.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::Bitfield;

fuzz_target!(|input: (u16, &[u8])| {
    let (chunks, bytes) = input;
    if let Ok(b) = Bitfield::from_bytes(bytes.to_vec(), u64::from(chunks)) {
        let back = Bitfield::from_base64(&b.to_base64(), u64::from(chunks)).expect("round-trip");
        assert_eq!(back, b);
        assert!(b.count_ones() <= u64::from(chunks));
    }
    let _ = Bitfield::from_base64(&String::from_utf8_lossy(bytes), u64::from(chunks));
});
