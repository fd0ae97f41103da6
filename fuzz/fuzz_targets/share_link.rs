//! Share links from arbitrary bytes and text: what decodes re-encodes to exactly the input (the
//! encoding is canonical), the text form never panics, and decoding never allocates past its
//! caps. The bytes are sealed with their checksum so the fuzzer reaches the fields behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_proto::link::{MAX_LINK_BYTES, ShareLink};

fuzz_target!(|bytes: &[u8]| {
    let sealed = ShareLink::seal(bytes);
    if let Ok(link) = ShareLink::decode(&sealed) {
        let again = link.encode().expect("a decoded link encodes");
        assert_eq!(again, sealed);
        assert!(again.len() <= MAX_LINK_BYTES);
        let text = link.to_text().expect("a decoded link has a text form");
        assert_eq!(ShareLink::from_text(&text), Ok(link));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(link) = ShareLink::from_text(text) {
            assert_eq!(ShareLink::decode(&link.encode().expect("encodes")), Ok(link));
        }
    }
});
