//! Frames decoded from arbitrary bytes: never a panic, never an allocation over the frame cap,
//! and whatever decodes re-encodes to the same bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use p2p_proto::wire::Frame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    while let Ok(Some(frame)) = Frame::decode(&mut buf) {
        let encoded = frame.to_bytes();
        let start = consumed;
        consumed = data.len() - buf.len();
        assert_eq!(&data[start..consumed], encoded.as_ref());
    }
});
