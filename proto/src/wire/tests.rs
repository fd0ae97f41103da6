use proptest::prelude::*;

use super::*;

fn id(b: u8) -> FileId {
    FileId([b; 32])
}

#[test]
fn golden_request_and_chunk() {
    let req = Frame::Request {
        request_id: 7,
        file_id: id(0xab),
        index: 2,
    };
    let mut want = vec![0, 0, 0, 41, 0x06, 0, 0, 0, 7];
    want.extend([0xab; 32]);
    want.extend([0, 0, 0, 2]);
    assert_eq!(req.to_bytes().as_ref(), want.as_slice());

    let chunk = Frame::Chunk {
        request_id: 1,
        file_id: id(1),
        index: 0,
        data: Bytes::from_static(b"xyz"),
    };
    let bytes = chunk.to_bytes();
    assert_eq!(&bytes[..5], &[0, 0, 0, 44, 0x07]);
    assert_eq!(&bytes[bytes.len() - 3..], b"xyz");
    // A sender placing the data itself writes the same header.
    assert_eq!(
        &chunk_header(1, id(1), 0, 3)[..],
        &bytes[..CHUNK_HEADER_LEN]
    );
}

#[test]
fn golden_hello_and_keepalive() {
    let hello = Frame::Hello {
        version: 1,
        min_version: 1,
        agent: "p2p/0.1".into(),
    };
    assert_eq!(
        hello.to_bytes().as_ref(),
        &[
            0, 0, 0, 14, 0x01, 0, 1, 0, 1, 0, 7, b'p', b'2', b'p', b'/', b'0', b'.', b'1'
        ]
    );
    assert_eq!(Frame::KeepAlive.to_bytes().as_ref(), &[0, 0, 0, 1, 0]);
}

#[test]
fn golden_admission_frame_and_not_admitted() {
    let a = Admission {
        tracker_key: [1; 32],
        file_id: id(2),
        peer_id: crate::PeerId([3; 32]),
        expires_at_ms: 0x0102_0304_0506_0708,
        signature: [4; 64],
    };
    let mut want = vec![0, 0, 0, 169, 0x0b];
    want.extend([1; 32]);
    want.extend([2; 32]);
    want.extend([3; 32]);
    want.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    want.extend([4; 64]);
    assert_eq!(Frame::Admission(a).to_bytes().as_ref(), want.as_slice());
    let mut short = BytesMut::from(&[0u8, 0, 0, 2, 0x0b, 0][..]);
    assert_eq!(
        Frame::decode(&mut short),
        Err(WireError::Truncated("admission"))
    );
    assert_eq!(RejectCode::from_u8(5), RejectCode::NotAdmitted);
    assert_eq!(RejectCode::NotAdmitted.as_u8(), 5);
}

#[test]
fn partial_input_waits_and_consumes_nothing() {
    let bytes = Frame::Have {
        file_id: id(3),
        index: 9,
    }
    .to_bytes();
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(Frame::decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn golden_manifest() {
    // 20 KiB of zeros in 16 KiB chunks: two chunk hashes, one chain value.
    let m = Manifest::of_bytes("z", &[0u8; 20 * 1024], 16 * 1024).unwrap();
    let bytes = Frame::Manifest(m.clone()).to_bytes();
    let mut want = vec![0, 0, 0, 184, 0x03];
    want.extend(m.id.0); // sha256sum of the content
    want.extend([0, 0, 0, 0, 0, 0, 0x50, 0]); // size 20 480
    want.extend([0, 0, 0x40, 0]); // chunk size 16 384
    want.extend(m.merkle_root.0);
    want.extend([0, 1, b'z']);
    want.extend([0, 0, 0, 2]);
    want.extend(m.chunk_hashes[0].0);
    want.extend(m.chunk_hashes[1].0);
    want.extend([0, 0, 0, 1]);
    want.extend(m.chain[0].0); // SHA-256's chaining value after the first 16 KiB
    assert_eq!(bytes.as_ref(), want.as_slice());
    assert_eq!(
        m.id.to_string(),
        "cc61635da46b2c9974335ea37e0b5fd660a5c8a42a89b271fa7ec2ac4b8b26f6"
    );
    assert_eq!(
        m.chain[0].to_string(),
        "ff3db09f16f50a32060f2cc85cd0c6ae508b239293f6087adfe52046f510bc27"
    );
}

#[test]
fn only_manifests_may_exceed_the_frame_cap() {
    let over = MAX_FRAME_LEN + 1;
    // The type byte decides, so four bytes alone wait for it.
    let mut four = BytesMut::from(&over.to_be_bytes()[..]);
    assert_eq!(Frame::decode(&mut four), Ok(None));
    let mut chunk = BytesMut::from(&over.to_be_bytes()[..]);
    chunk.put_u8(0x07);
    assert_eq!(Frame::decode(&mut chunk), Err(WireError::TooLarge(over)));
    let mut manifest = BytesMut::from(&over.to_be_bytes()[..]);
    manifest.put_u8(0x03);
    assert_eq!(Frame::decode(&mut manifest), Ok(None), "waits for the rest");
    assert!(
        manifest.capacity() <= 4 + MAX_FRAME_LEN as usize,
        "a long manifest's header does not reserve its whole length"
    );
    let mut huge = BytesMut::from(&(MAX_MANIFEST_FRAME_LEN + 1).to_be_bytes()[..]);
    huge.put_u8(0x03);
    assert_eq!(
        Frame::decode(&mut huge),
        Err(WireError::TooLarge(MAX_MANIFEST_FRAME_LEN + 1))
    );
}

#[test]
fn bad_frames_are_errors() {
    let mut empty = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(Frame::decode(&mut empty), Err(WireError::Empty));
    let mut unknown = BytesMut::from(&[0u8, 0, 0, 1, 0x7f][..]);
    assert_eq!(
        Frame::decode(&mut unknown),
        Err(WireError::UnknownType(0x7f))
    );
    let mut short = BytesMut::from(&[0u8, 0, 0, 3, 0x09, 0, 0][..]);
    assert_eq!(
        Frame::decode(&mut short),
        Err(WireError::Truncated("cancel"))
    );
    let mut long = BytesMut::from(&[0u8, 0, 0, 6, 0x09, 0, 0, 0, 1, 9][..]);
    assert_eq!(
        Frame::decode(&mut long),
        Err(WireError::Trailing("cancel", 1))
    );
    // A manifest claiming a million hashes with none present fails before allocating them.
    let mut m = BytesMut::new();
    m.put_u32(1 + 32 + 8 + 4 + 32 + 2 + 4);
    m.put_u8(0x03);
    m.put_slice(&[0; 32 + 8 + 4 + 32]);
    m.put_u16(0);
    m.put_u32(1 << 20);
    assert_eq!(Frame::decode(&mut m), Err(WireError::Truncated("manifest")));
    // The same for its chain.
    let mut m = BytesMut::new();
    m.put_u32(1 + 32 + 8 + 4 + 32 + 2 + 4 + 4);
    m.put_u8(0x03);
    m.put_slice(&[0; 32 + 8 + 4 + 32]);
    m.put_u16(0);
    m.put_u32(0);
    m.put_u32(1 << 20);
    assert_eq!(Frame::decode(&mut m), Err(WireError::Truncated("manifest")));
}

#[test]
fn long_strings_are_cut_on_a_character_boundary() {
    let message = "é".repeat(MAX_MESSAGE_LEN);
    let frame = Frame::Error { code: 1, message };
    let mut buf = BytesMut::from(frame.to_bytes().as_ref());
    let Some(Frame::Error { message, .. }) = Frame::decode(&mut buf).unwrap() else {
        panic!("not an error frame")
    };
    assert_eq!(message, "é".repeat(MAX_MESSAGE_LEN / 2));
}

#[test]
fn two_frames_in_one_buffer() {
    let mut buf = BytesMut::new();
    Frame::Cancel { request_id: 1 }.encode(&mut buf);
    Frame::KeepAlive.encode(&mut buf);
    assert_eq!(
        Frame::decode(&mut buf),
        Ok(Some(Frame::Cancel { request_id: 1 }))
    );
    assert_eq!(Frame::decode(&mut buf), Ok(Some(Frame::KeepAlive)));
    assert_eq!(Frame::decode(&mut buf), Ok(None));
}

fn arb_file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; 32]>().prop_map(FileId)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        Just(Frame::KeepAlive),
        (any::<u16>(), any::<u16>(), "[a-z0-9/. ]{0,40}").prop_map(
            |(version, min_version, agent)| Frame::Hello {
                version,
                min_version,
                agent
            }
        ),
        arb_file_id().prop_map(|file_id| Frame::ManifestRequest { file_id }),
        (
            arb_file_id(),
            any::<u64>(),
            any::<u32>(),
            "[^/]{1,40}",
            prop::collection::vec(any::<[u8; 32]>(), 0..50),
            any::<[u8; 32]>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..50),
        )
            .prop_map(
                |(id, size, chunk_size, name, hashes, root, chain)| Frame::Manifest(Manifest {
                    id,
                    name,
                    size,
                    chunk_size,
                    chunk_hashes: hashes.into_iter().map(Sha256Hash).collect(),
                    merkle_root: Sha256Hash(root),
                    chain: chain.into_iter().map(Sha256Hash).collect(),
                })
            ),
        (arb_file_id(), 0u32..5000).prop_flat_map(|(file_id, n)| {
            prop::collection::vec(any::<u8>(), (n as usize).div_ceil(8)).prop_map(move |bits| {
                Frame::Bitfield {
                    file_id,
                    chunk_count: n,
                    bits: Bytes::from(bits),
                }
            })
        }),
        (arb_file_id(), any::<u32>()).prop_map(|(file_id, index)| Frame::Have { file_id, index }),
        (any::<u32>(), arb_file_id(), any::<u32>()).prop_map(|(request_id, file_id, index)| {
            Frame::Request {
                request_id,
                file_id,
                index,
            }
        }),
        (
            any::<u32>(),
            arb_file_id(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(request_id, file_id, index, data)| Frame::Chunk {
                request_id,
                file_id,
                index,
                data: Bytes::from(data)
            }),
        (any::<u32>(), any::<u8>(), ".{0,60}").prop_map(|(request_id, code, message)| {
            Frame::Reject {
                request_id,
                code: RejectCode::from_u8(code),
                message,
            }
        }),
        any::<u32>().prop_map(|request_id| Frame::Cancel { request_id }),
        (any::<u8>(), ".{0,60}").prop_map(|(code, message)| Frame::Error { code, message }),
        (
            any::<[u8; 32]>(),
            arb_file_id(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(tracker_key, file_id, peer, expires_at_ms, half)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&half);
                signature[32..].copy_from_slice(&tracker_key);
                Frame::Admission(Admission {
                    tracker_key,
                    file_id,
                    peer_id: crate::PeerId(peer),
                    expires_at_ms,
                    signature,
                })
            }),
    ]
}

proptest! {
    #[test]
    fn roundtrip(frames in prop::collection::vec(arb_frame(), 1..5), split in any::<prop::sample::Index>()) {
        let mut stream = BytesMut::new();
        for f in &frames {
            f.encode(&mut stream);
        }
        // Deliver the bytes in two parts, as a network would.
        let at = split.index(stream.len() + 1);
        let mut buf = BytesMut::from(&stream[..at]);
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            out.push(f);
        }
        buf.extend_from_slice(&stream[at..]);
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            out.push(f);
        }
        prop_assert_eq!(&out, &frames);
        prop_assert!(buf.is_empty());
        // Each frame's length is known from its first bytes, and is exactly what it takes.
        let mut at = 0;
        for f in &frames {
            let len = f.to_bytes().len();
            prop_assert_eq!(Frame::frame_len(&stream[at..at + 5.min(len)]).unwrap(), Some(len));
            prop_assert_eq!(Frame::frame_len(&stream[at..at + 3]).unwrap(), None);
            at += len;
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(bytes.as_slice());
        while let Ok(Some(_)) = Frame::decode(&mut buf) {}
    }
}

#[test]
fn unknown_reject_codes_round_trip_exactly() {
    // Found by the wire_frame fuzz target: code 0 used to come back as 255.
    let bytes = [0u8, 0, 0, 10, 8, 0, 0, 0, 1, 0, 0, 2, 0, 4];
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = Frame::decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.to_bytes().as_ref(), &bytes[..]);
}
