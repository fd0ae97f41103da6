//! Collections from arbitrary bytes: what decodes re-encodes to exactly the input (the
//! encoding is canonical), and decoding never allocates past its caps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::collection::Collection;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(c) = Collection::decode(bytes) {
        assert_eq!(c.encode(), bytes);
        assert_eq!(c.encoded_len(), bytes.len());
    }
});
