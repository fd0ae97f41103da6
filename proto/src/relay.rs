//! Relay frames: what a peer and the tracker's relay hub (`/relay`) say to each other, one frame
//! per binary WebSocket message.
//!
//! A frame is `type: u8` then its body; integers are big-endian, peer ids are 32 raw bytes. The
//! hub forwards the bytes of a tunnel without reading them: peers run the Noise handshake of
//! `wire` end to end inside the tunnel, so the hub only ever sees ciphertext. The layout is
//! documented byte by byte in `docs/protocol.md` §5.
//!
//! Attaching: the hub sends [`RelayFrame::Challenge`] (a fresh X25519 public key and a nonce);
//! the peer answers [`RelayFrame::Proof`] with [`proof_mac`] keyed by the Diffie-Hellman of its
//! static key and the hub's fresh key. Only the holder of the peer id's private key can compute
//! it. The hub answers [`RelayFrame::Attached`] or an [`RelayFrame::Error`] and closes.
//!
//! Streams: a peer opens a stream with [`RelayFrame::Open`] (ids it picks have the high bit
//! clear); the other side hears [`RelayFrame::Incoming`] with an id the hub picks (high bit set).
//! Each side may send [`INITIAL_WINDOW`] bytes of [`RelayFrame::Data`] and then only as much as
//! the receiver grants with [`RelayFrame::Window`]; the hub enforces this, so it queues at most a
//! window per stream. [`RelayFrame::Close`] ends a stream (sent by either side or the hub).
//!
//! Hole punching: the WebSocket is also the control channel of a UDP hole punch. A peer asks
//! with [`RelayFrame::PunchRequest`]; the hub gives both peers a session and a token each
//! ([`RelayFrame::PunchBind`]); each binds a fresh UDP socket by sending the token to the hub's
//! UDP port ([`crate::punch`]), which shows the hub that socket's public address; once both are
//! bound the hub tells each the other's address ([`RelayFrame::PunchGo`]) and both probe.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes};

use crate::ids::PeerId;
// One HMAC and one constant-time compare serve every proof and cookie (peer_auth.rs).
use crate::peer_auth::hmac_sha256;
pub use crate::peer_auth::macs_equal;
use crate::punch::{self, Nonce16};

/// Largest payload of one `Data` frame.
pub const MAX_DATA_LEN: usize = 64 * 1024;
/// Largest frame: a full `Data` frame plus its header.
pub const MAX_RELAY_FRAME_LEN: usize = MAX_DATA_LEN + 16;
/// Longest `Error` message, in bytes.
pub const MAX_ERROR_LEN: usize = 512;
/// Bytes each side of a new stream may send before the receiver grants more. Big enough for
/// the round trip through the hub not to cap throughput (on loopback, 1 MiB gave 0.14× the
/// direct rate, 4 MiB 0.32×, 8 MiB 0.61×); it is also what the hub may queue per stream
/// direction, so the hub's memory is bounded by tunnels × 2 × this.
pub const INITIAL_WINDOW: u32 = 8 * 1024 * 1024;
/// Stream ids the hub assigns to incoming streams have this bit set; ids a peer picks do not.
pub const INCOMING_STREAM_BIT: u32 = 1 << 31;
/// Domain separation of the attach proof.
pub const PROOF_CONTEXT: &[u8] = b"p2p-relay/1 attach proof";

/// Why bytes are not a valid relay frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayFrameError {
    #[error("relay frame of {0} bytes is over the {MAX_RELAY_FRAME_LEN}-byte cap")]
    TooLarge(usize),
    #[error("empty relay frame")]
    Empty,
    #[error("unknown relay frame type {0:#04x}")]
    UnknownType(u8),
    #[error("{0} relay frame is truncated")]
    Truncated(&'static str),
    #[error("{0} relay frame has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("relay error message is not valid UTF-8")]
    Utf8,
    #[error("unknown address family {0}")]
    AddressFamily(u8),
    #[error("{what} of {len} bytes is over the limit of {max}")]
    Limit {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// Why a stream was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The peer closed its side normally.
    Normal,
    /// The target peer is not attached to the relay.
    UnknownPeer,
    /// The tunnel reached its byte limit, or the relay its total budget.
    LimitExceeded,
    /// No data moved for the idle timeout.
    Idle,
    /// The sender broke the protocol (sent beyond its window, reused an id…).
    ProtocolViolation,
    /// The other side detached from the relay.
    Gone,
    /// The relay does not offer this (hole punching is off).
    Unsupported,
    /// Any other code, kept as sent.
    Other(u8),
}

impl CloseCode {
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::UnknownPeer,
            2 => Self::LimitExceeded,
            3 => Self::Idle,
            4 => Self::ProtocolViolation,
            5 => Self::Gone,
            6 => Self::Unsupported,
            other => Self::Other(other),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::UnknownPeer => 1,
            Self::LimitExceeded => 2,
            Self::Idle => 3,
            Self::ProtocolViolation => 4,
            Self::Gone => 5,
            Self::Unsupported => 6,
            Self::Other(v) => v,
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Normal => f.write_str("closed"),
            Self::UnknownPeer => f.write_str("peer is not attached to the relay"),
            Self::LimitExceeded => f.write_str("relay byte limit reached"),
            Self::Idle => f.write_str("idle timeout"),
            Self::ProtocolViolation => f.write_str("relay protocol violation"),
            Self::Gone => f.write_str("peer left the relay"),
            Self::Unsupported => f.write_str("not supported by this relay"),
            Self::Other(v) => write!(f, "closed with code {v}"),
        }
    }
}

/// Connection-level error codes of [`RelayFrame::Error`].
pub mod error_code {
    /// The proof did not match the claimed peer id.
    pub const BAD_PROOF: u8 = 1;
    /// A frame that makes no sense in this state.
    pub const PROTOCOL: u8 = 2;
    /// A frame for a stream that is not open.
    pub const UNKNOWN_STREAM: u8 = 3;
    /// The same peer id attached again elsewhere; this connection is replaced.
    pub const REPLACED: u8 = 4;
    /// The read grant that let this connection in (instead of credentials) expired.
    pub const EXPIRED: u8 = 5;
}

/// One relay message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayFrame {
    /// Hub → peer, first: a fresh X25519 public key and a random nonce.
    Challenge {
        server_key: [u8; 32],
        nonce: [u8; 32],
    },
    /// Peer → hub: the peer id it claims and [`proof_mac`] over the challenge.
    Proof { peer_id: PeerId, mac: [u8; 32] },
    /// Hub → peer: the proof is good; streams may be opened.
    Attached,
    /// Peer → hub: open stream `stream` (high bit clear) to `to`.
    Open { stream: u32, to: PeerId },
    /// Hub → peer: `from` opened a stream to us, known here as `stream` (high bit set).
    Incoming { stream: u32, from: PeerId },
    /// Tunnel bytes.
    Data { stream: u32, data: Bytes },
    /// The receiver of a stream grants `credit` more bytes.
    Window { stream: u32, credit: u32 },
    /// The stream is over.
    Close { stream: u32, code: CloseCode },
    /// A connection-level error; after `BAD_PROOF` or `REPLACED` the hub closes.
    Error { code: u8, message: String },
    /// Peer → hub: set up a UDP hole punch with `to`; `request` (not 0) pairs the answer.
    PunchRequest { request: u32, to: PeerId },
    /// Hub → peer: a punch session with `peer`. `request` is the asker's own id, or 0 on the
    /// invited side. Send `Bind { token }` from the socket to punch with to the hub's UDP port
    /// `udp_port` (on the tracker's host) until `PunchGo` arrives.
    PunchBind {
        request: u32,
        peer: PeerId,
        session: Nonce16,
        token: Nonce16,
        udp_port: u16,
    },
    /// Hub → peer: both sides are bound; `addr` is the other side's address as the hub saw it.
    PunchGo { session: Nonce16, addr: SocketAddr },
    /// Hub → peer: request `request` cannot go ahead (the peer is not attached, declined…).
    PunchFailed { request: u32, code: CloseCode },
    /// Invited peer → hub: it will not punch in `session` (punching is off, or it is busy); the
    /// hub tells the asker at once with `PunchFailed`, so it moves on to the relay.
    PunchDecline { session: Nonce16 },
}

mod tag {
    pub const CHALLENGE: u8 = 0x01;
    pub const PROOF: u8 = 0x02;
    pub const ATTACHED: u8 = 0x03;
    pub const OPEN: u8 = 0x10;
    pub const INCOMING: u8 = 0x11;
    pub const DATA: u8 = 0x12;
    pub const WINDOW: u8 = 0x13;
    pub const CLOSE: u8 = 0x14;
    pub const ERROR: u8 = 0x1f;
    pub const PUNCH_REQUEST: u8 = 0x20;
    pub const PUNCH_BIND: u8 = 0x21;
    pub const PUNCH_GO: u8 = 0x22;
    pub const PUNCH_FAILED: u8 = 0x23;
    pub const PUNCH_DECLINE: u8 = 0x24;
}

impl RelayFrame {
    /// The bytes [`RelayFrame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Challenge { .. } | Self::Proof { .. } => 64,
            Self::Attached => 0,
            Self::Open { .. } | Self::Incoming { .. } => 36,
            Self::Data { data, .. } => 4 + data.len().min(MAX_DATA_LEN),
            Self::Window { .. } => 8,
            Self::Close { .. } => 5,
            Self::Error { message, .. } => 3 + clipped(message).len(),
            Self::PunchRequest { .. } => 36,
            Self::PunchBind { .. } => 4 + 32 + 16 + 16 + 2,
            Self::PunchGo { addr, .. } => 16 + punch::addr_len(addr),
            Self::PunchFailed { .. } => 5,
            Self::PunchDecline { .. } => 16,
        }
    }

    /// Writes the frame. `Data` beyond [`MAX_DATA_LEN`] and `Error` text beyond
    /// [`MAX_ERROR_LEN`] are cut (senders split data; see [`RelayFrame::data_frames`]).
    pub fn encode(&self, dst: &mut impl BufMut) {
        match self {
            Self::Challenge { server_key, nonce } => {
                dst.put_u8(tag::CHALLENGE);
                dst.put_slice(server_key);
                dst.put_slice(nonce);
            }
            Self::Proof { peer_id, mac } => {
                dst.put_u8(tag::PROOF);
                dst.put_slice(&peer_id.0);
                dst.put_slice(mac);
            }
            Self::Attached => dst.put_u8(tag::ATTACHED),
            Self::Open { stream, to } => {
                dst.put_u8(tag::OPEN);
                dst.put_u32(*stream);
                dst.put_slice(&to.0);
            }
            Self::Incoming { stream, from } => {
                dst.put_u8(tag::INCOMING);
                dst.put_u32(*stream);
                dst.put_slice(&from.0);
            }
            Self::Data { stream, data } => {
                dst.put_u8(tag::DATA);
                dst.put_u32(*stream);
                dst.put_slice(&data[..data.len().min(MAX_DATA_LEN)]);
            }
            Self::Window { stream, credit } => {
                dst.put_u8(tag::WINDOW);
                dst.put_u32(*stream);
                dst.put_u32(*credit);
            }
            Self::Close { stream, code } => {
                dst.put_u8(tag::CLOSE);
                dst.put_u32(*stream);
                dst.put_u8(code.as_u8());
            }
            Self::Error { code, message } => {
                let message = clipped(message);
                dst.put_u8(tag::ERROR);
                dst.put_u8(*code);
                dst.put_u16(message.len() as u16);
                dst.put_slice(message.as_bytes());
            }
            Self::PunchRequest { request, to } => {
                dst.put_u8(tag::PUNCH_REQUEST);
                dst.put_u32(*request);
                dst.put_slice(&to.0);
            }
            Self::PunchBind {
                request,
                peer,
                session,
                token,
                udp_port,
            } => {
                dst.put_u8(tag::PUNCH_BIND);
                dst.put_u32(*request);
                dst.put_slice(&peer.0);
                dst.put_slice(session);
                dst.put_slice(token);
                dst.put_u16(*udp_port);
            }
            Self::PunchGo { session, addr } => {
                dst.put_u8(tag::PUNCH_GO);
                dst.put_slice(session);
                punch::put_addr(dst, addr);
            }
            Self::PunchFailed { request, code } => {
                dst.put_u8(tag::PUNCH_FAILED);
                dst.put_u32(*request);
                dst.put_u8(code.as_u8());
            }
            Self::PunchDecline { session } => {
                dst.put_u8(tag::PUNCH_DECLINE);
                dst.put_slice(session);
            }
        }
    }

    /// The frame as one buffer (one WebSocket message).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Reads one whole frame (one WebSocket message). `Data` payloads share `src`'s memory.
    pub fn decode(src: Bytes) -> Result<Self, RelayFrameError> {
        if src.len() > MAX_RELAY_FRAME_LEN {
            return Err(RelayFrameError::TooLarge(src.len()));
        }
        let mut r = src;
        if r.is_empty() {
            return Err(RelayFrameError::Empty);
        }
        let t = r.get_u8();
        let (what, frame) = match t {
            tag::CHALLENGE => {
                let what = "challenge";
                let server_key = id32(&mut r, what)?;
                let nonce = id32(&mut r, what)?;
                (what, Self::Challenge { server_key, nonce })
            }
            tag::PROOF => {
                let what = "proof";
                let peer_id = PeerId(id32(&mut r, what)?);
                let mac = id32(&mut r, what)?;
                (what, Self::Proof { peer_id, mac })
            }
            tag::ATTACHED => ("attached", Self::Attached),
            tag::OPEN => {
                let what = "open";
                let stream = u32_(&mut r, what)?;
                let to = PeerId(id32(&mut r, what)?);
                (what, Self::Open { stream, to })
            }
            tag::INCOMING => {
                let what = "incoming";
                let stream = u32_(&mut r, what)?;
                let from = PeerId(id32(&mut r, what)?);
                (what, Self::Incoming { stream, from })
            }
            tag::DATA => {
                let what = "data";
                let stream = u32_(&mut r, what)?;
                let data = r.split_off(0);
                if data.len() > MAX_DATA_LEN {
                    return Err(RelayFrameError::Limit {
                        what: "data",
                        len: data.len(),
                        max: MAX_DATA_LEN,
                    });
                }
                (what, Self::Data { stream, data })
            }
            tag::WINDOW => {
                let what = "window";
                let stream = u32_(&mut r, what)?;
                let credit = u32_(&mut r, what)?;
                (what, Self::Window { stream, credit })
            }
            tag::CLOSE => {
                let what = "close";
                let stream = u32_(&mut r, what)?;
                need(&r, 1, what)?;
                let code = CloseCode::from_u8(r.get_u8());
                (what, Self::Close { stream, code })
            }
            tag::ERROR => {
                let what = "error";
                need(&r, 3, what)?;
                let code = r.get_u8();
                let len = r.get_u16() as usize;
                if len > MAX_ERROR_LEN {
                    return Err(RelayFrameError::Limit {
                        what: "error message",
                        len,
                        max: MAX_ERROR_LEN,
                    });
                }
                need(&r, len, what)?;
                let message = std::str::from_utf8(&r[..len])
                    .map_err(|_| RelayFrameError::Utf8)?
                    .to_owned();
                r.advance(len);
                (what, Self::Error { code, message })
            }
            tag::PUNCH_REQUEST => {
                let what = "punch request";
                let request = u32_(&mut r, what)?;
                let to = PeerId(id32(&mut r, what)?);
                (what, Self::PunchRequest { request, to })
            }
            tag::PUNCH_BIND => {
                let what = "punch bind";
                let request = u32_(&mut r, what)?;
                let peer = PeerId(id32(&mut r, what)?);
                let session = id16(&mut r, what)?;
                let token = id16(&mut r, what)?;
                need(&r, 2, what)?;
                let udp_port = r.get_u16();
                let frame = Self::PunchBind {
                    request,
                    peer,
                    session,
                    token,
                    udp_port,
                };
                (what, frame)
            }
            tag::PUNCH_GO => {
                let what = "punch go";
                let session = id16(&mut r, what)?;
                let addr = punch::get_addr(&mut r, what).map_err(|e| match e {
                    punch::PunchPacketError::AddressFamily(f) => RelayFrameError::AddressFamily(f),
                    _ => RelayFrameError::Truncated(what),
                })?;
                (what, Self::PunchGo { session, addr })
            }
            tag::PUNCH_FAILED => {
                let what = "punch failed";
                let request = u32_(&mut r, what)?;
                need(&r, 1, what)?;
                let code = CloseCode::from_u8(r.get_u8());
                (what, Self::PunchFailed { request, code })
            }
            tag::PUNCH_DECLINE => {
                let what = "punch decline";
                let session = id16(&mut r, what)?;
                (what, Self::PunchDecline { session })
            }
            other => return Err(RelayFrameError::UnknownType(other)),
        };
        if !r.is_empty() {
            return Err(RelayFrameError::Trailing(what, r.len()));
        }
        Ok(frame)
    }

    /// `data` cut into `Data` frames of at most [`MAX_DATA_LEN`] bytes.
    pub fn data_frames(stream: u32, mut data: Bytes) -> impl Iterator<Item = RelayFrame> {
        std::iter::from_fn(move || {
            if data.is_empty() {
                return None;
            }
            let take = data.len().min(MAX_DATA_LEN);
            Some(Self::Data {
                stream,
                data: data.split_to(take),
            })
        })
    }
}

fn clipped(s: &str) -> &str {
    let mut end = s.len().min(MAX_ERROR_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn need(r: &Bytes, n: usize, what: &'static str) -> Result<(), RelayFrameError> {
    if r.len() < n {
        Err(RelayFrameError::Truncated(what))
    } else {
        Ok(())
    }
}

fn u32_(r: &mut Bytes, what: &'static str) -> Result<u32, RelayFrameError> {
    need(r, 4, what)?;
    Ok(r.get_u32())
}

fn id16(r: &mut Bytes, what: &'static str) -> Result<Nonce16, RelayFrameError> {
    need(r, 16, what)?;
    let mut out = [0u8; 16];
    r.copy_to_slice(&mut out);
    Ok(out)
}

fn id32(r: &mut Bytes, what: &'static str) -> Result<[u8; 32], RelayFrameError> {
    need(r, 32, what)?;
    let mut out = [0u8; 32];
    r.copy_to_slice(&mut out);
    Ok(out)
}

/// The attach proof: HMAC-SHA256 keyed by the X25519 shared secret of the peer's static key and
/// the hub's challenge key, over the context, the challenge key, the nonce and the claimed id.
pub fn proof_mac(
    shared_secret: &[u8; 32],
    server_key: &[u8; 32],
    nonce: &[u8; 32],
    peer_id: &PeerId,
) -> [u8; 32] {
    hmac_sha256(
        shared_secret,
        &[PROOF_CONTEXT, server_key, nonce, &peer_id.0],
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn golden_frames() {
        let open = RelayFrame::Open {
            stream: 7,
            to: PeerId([0xab; 32]),
        };
        let mut want = vec![0x10, 0, 0, 0, 7];
        want.extend([0xab; 32]);
        assert_eq!(open.to_vec(), want);

        let data = RelayFrame::Data {
            stream: 0x8000_0001,
            data: Bytes::from_static(b"xyz"),
        };
        assert_eq!(data.to_vec(), [0x12, 0x80, 0, 0, 1, b'x', b'y', b'z']);
        assert_eq!(
            RelayFrame::Window {
                stream: 1,
                credit: 65536
            }
            .to_vec(),
            [0x13, 0, 0, 0, 1, 0, 1, 0, 0]
        );
        assert_eq!(
            RelayFrame::Close {
                stream: 2,
                code: CloseCode::UnknownPeer
            }
            .to_vec(),
            [0x14, 0, 0, 0, 2, 1]
        );
        assert_eq!(
            RelayFrame::Error {
                code: 1,
                message: "no".into()
            }
            .to_vec(),
            [0x1f, 1, 0, 2, b'n', b'o']
        );
        assert_eq!(RelayFrame::Attached.to_vec(), [0x03]);
        let proof = RelayFrame::Proof {
            peer_id: PeerId([1; 32]),
            mac: [2; 32],
        }
        .to_vec();
        assert_eq!(proof.len(), 65);
        assert_eq!((proof[0], proof[1], proof[33]), (0x02, 1, 2));

        let mut want = vec![0x20, 0, 0, 0, 9];
        want.extend([0xcd; 32]);
        let request = RelayFrame::PunchRequest {
            request: 9,
            to: PeerId([0xcd; 32]),
        };
        assert_eq!(request.to_vec(), want);
        let bind = RelayFrame::PunchBind {
            request: 0,
            peer: PeerId([1; 32]),
            session: [2; 16],
            token: [3; 16],
            udp_port: 8080,
        }
        .to_vec();
        assert_eq!(bind.len(), 71);
        assert_eq!(
            (bind[0], bind[5], bind[37], bind[53], &bind[69..]),
            (0x21, 1, 2, 3, &[0x1f, 0x90][..])
        );
        let go = RelayFrame::PunchGo {
            session: [4; 16],
            addr: "203.0.113.7:50000".parse().unwrap(),
        };
        assert_eq!(
            go.to_vec(),
            [&[0x22][..], &[4; 16], &[4, 203, 0, 113, 7, 0xc3, 0x50]].concat()
        );
        assert_eq!(
            RelayFrame::PunchFailed {
                request: 1,
                code: CloseCode::UnknownPeer
            }
            .to_vec(),
            [0x23, 0, 0, 0, 1, 1]
        );
        assert_eq!(
            RelayFrame::PunchDecline { session: [5; 16] }.to_vec(),
            [&[0x24][..], &[5; 16]].concat()
        );
    }

    #[test]
    fn hmac_matches_rfc4231_shape() {
        // RFC 4231 test case 2 uses a 4-byte key; ours is always 32 bytes, zero-padded the
        // same way HMAC pads short keys, so the key "Jefe" padded to 32 bytes gives its MAC.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn proof_depends_on_every_input() {
        let base = proof_mac(&[1; 32], &[2; 32], &[3; 32], &PeerId([4; 32]));
        assert!(macs_equal(&base, &base));
        assert!(!macs_equal(
            &base,
            &proof_mac(&[9; 32], &[2; 32], &[3; 32], &PeerId([4; 32]))
        ));
        assert!(!macs_equal(
            &base,
            &proof_mac(&[1; 32], &[2; 32], &[9; 32], &PeerId([4; 32]))
        ));
        assert!(!macs_equal(
            &base,
            &proof_mac(&[1; 32], &[2; 32], &[3; 32], &PeerId([9; 32]))
        ));
    }

    #[test]
    fn bad_input_is_refused_without_panics() {
        assert_eq!(
            RelayFrame::decode(Bytes::new()),
            Err(RelayFrameError::Empty)
        );
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[0x77])),
            Err(RelayFrameError::UnknownType(0x77))
        );
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[0x10, 0, 0])),
            Err(RelayFrameError::Truncated("open"))
        );
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[0x03, 0])),
            Err(RelayFrameError::Trailing("attached", 1))
        );
        assert!(matches!(
            RelayFrame::decode(Bytes::from(vec![0x12; MAX_RELAY_FRAME_LEN + 1])),
            Err(RelayFrameError::TooLarge(_))
        ));
        assert!(matches!(
            RelayFrame::decode(Bytes::from(vec![0x12; MAX_DATA_LEN + 6])),
            Err(RelayFrameError::Limit { .. })
        ));
        assert_eq!(
            RelayFrame::decode(Bytes::from_static(&[0x1f, 1, 0, 1, 0xff])),
            Err(RelayFrameError::Utf8)
        );
        let mut go = vec![0x22];
        go.extend([0; 16]);
        go.extend([5, 1, 2]);
        assert_eq!(
            RelayFrame::decode(go.into()),
            Err(RelayFrameError::AddressFamily(5))
        );
    }

    #[test]
    fn data_is_split_at_the_cap() {
        let frames: Vec<_> =
            RelayFrame::data_frames(3, Bytes::from(vec![1u8; MAX_DATA_LEN * 2 + 5])).collect();
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[2], RelayFrame::Data { data, .. } if data.len() == 5));
    }

    fn any_frame() -> impl Strategy<Value = RelayFrame> {
        let id = any::<[u8; 32]>();
        prop_oneof![
            (id, id).prop_map(|(server_key, nonce)| RelayFrame::Challenge { server_key, nonce }),
            (id, id).prop_map(|(p, mac)| RelayFrame::Proof {
                peer_id: PeerId(p),
                mac
            }),
            Just(RelayFrame::Attached),
            (any::<u32>(), id).prop_map(|(stream, p)| RelayFrame::Open {
                stream,
                to: PeerId(p)
            }),
            (any::<u32>(), id).prop_map(|(stream, p)| RelayFrame::Incoming {
                stream,
                from: PeerId(p)
            }),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..2000)
            )
                .prop_map(|(stream, d)| RelayFrame::Data {
                    stream,
                    data: d.into()
                }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(stream, credit)| RelayFrame::Window { stream, credit }),
            (any::<u32>(), any::<u8>()).prop_map(|(stream, c)| RelayFrame::Close {
                stream,
                code: CloseCode::from_u8(c)
            }),
            (any::<u8>(), "\\PC{0,100}")
                .prop_map(|(code, message)| RelayFrame::Error { code, message }),
            (any::<u32>(), id).prop_map(|(request, p)| RelayFrame::PunchRequest {
                request,
                to: PeerId(p)
            }),
            (
                any::<u32>(),
                id,
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(request, p, session, token, udp_port)| {
                    RelayFrame::PunchBind {
                        request,
                        peer: PeerId(p),
                        session,
                        token,
                        udp_port,
                    }
                }),
            (any::<[u8; 16]>(), punch::tests::any_addr())
                .prop_map(|(session, addr)| RelayFrame::PunchGo { session, addr }),
            (any::<u32>(), any::<u8>()).prop_map(|(request, c)| RelayFrame::PunchFailed {
                request,
                code: CloseCode::from_u8(c)
            }),
            any::<[u8; 16]>().prop_map(|session| RelayFrame::PunchDecline { session }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(frame in any_frame()) {
            let bytes = frame.to_vec();
            prop_assert_eq!(bytes.len(), frame.encoded_len());
            prop_assert_eq!(RelayFrame::decode(bytes.into()), Ok(frame));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame) = RelayFrame::decode(bytes.clone().into()) {
                prop_assert_eq!(frame.to_vec(), bytes);
            }
        }
    }
}
