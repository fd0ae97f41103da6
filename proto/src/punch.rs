//! UDP hole-punching packets: what a peer sends to the tracker's rendezvous port and to the
//! other peer while two NATs are being opened.
//!
//! Every packet starts with [`MAGIC`] and a type byte. The magic's first byte is `0x00`: QUIC
//! requires its "fixed bit" (`0x40`) in the first byte, so a late probe that reaches a QUIC
//! endpoint after the punch is dropped there as not-QUIC. Layouts are in `docs/protocol.md` §7.
//!
//! - [`PunchPacket::Bind`] peer → tracker: "this socket belongs to the punch session whose
//!   token this is". The tracker answers [`PunchPacket::Check`] at the source address it saw
//!   (the peer's public, or reflexive, address) and records nothing yet.
//! - [`PunchPacket::Check`] tracker → peer: a cookie bound to the token and that address
//!   ([`bind_cookie`]); only a socket that receives at the address learns it. It is no larger
//!   than the `Bind`, so a `Bind` with a forged source makes the tracker send one datagram of
//!   the same size to that address and nothing more.
//! - [`PunchPacket::Confirm`] peer → tracker: the token and the cookie, from the same socket.
//!   The tracker now records the address, and tells the other side about it only after this.
//! - [`PunchPacket::Bound`] tracker → peer: the address is confirmed (it is the address the
//!   tracker saw).
//! - [`PunchPacket::Probe`] peer ↔ peer: sent to the other side's reflexive address until one
//!   arrives from it; the session id shows it belongs to this punch.
//!
//! Tokens and session ids are 16 random bytes the tracker hands out over the authenticated relay
//! WebSocket, so only the two peers of a session know them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};

/// The first four bytes of every punch packet: `0x00 'p' '2' 'p'`.
pub const MAGIC: [u8; 4] = [0x00, b'p', b'2', b'p'];
/// The longest punch packet (a `Confirm`).
pub const MAX_PUNCH_PACKET_LEN: usize = 4 + 1 + 16 + 16;
/// What [`bind_cookie`] MACs after the key, so the MAC means nothing elsewhere.
pub const COOKIE_CONTEXT: &[u8] = b"p2p-punch/1 bind cookie";

const ADDR_V4_LEN: usize = 1 + 4 + 2;
const ADDR_V6_LEN: usize = 1 + 16 + 2;

/// A random 16-byte value handed out by the tracker (a session id or a binding token).
pub type Nonce16 = [u8; 16];

/// Why bytes are not a punch packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PunchPacketError {
    #[error("not a punch packet (magic missing)")]
    NotPunch,
    #[error("unknown punch packet type {0:#04x}")]
    UnknownType(u8),
    #[error("{0} packet is truncated")]
    Truncated(&'static str),
    #[error("{0} packet has {1} trailing bytes")]
    Trailing(&'static str, usize),
    #[error("unknown address family {0}")]
    AddressFamily(u8),
}

/// One punch packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchPacket {
    /// Peer → tracker: bind this socket's address to the session of `token`.
    Bind { token: Nonce16 },
    /// Tracker → peer: the address the `Bind`/`Confirm` came from, now confirmed.
    Bound { addr: SocketAddr },
    /// Tracker → the address a `Bind` came from: echo `cookie` in a `Confirm`.
    Check { cookie: Nonce16 },
    /// Peer → tracker: `token`'s socket received `cookie` at the address the tracker saw.
    Confirm { token: Nonce16, cookie: Nonce16 },
    /// Peer ↔ peer: a probe of session `session`.
    Probe { session: Nonce16 },
}

mod tag {
    pub const BIND: u8 = 0x01;
    pub const BOUND: u8 = 0x02;
    pub const PROBE: u8 = 0x03;
    pub const CHECK: u8 = 0x04;
    pub const CONFIRM: u8 = 0x05;
}

impl PunchPacket {
    /// The bytes [`PunchPacket::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        5 + match self {
            Self::Bind { .. } | Self::Probe { .. } | Self::Check { .. } => 16,
            Self::Confirm { .. } => 32,
            Self::Bound { addr } => addr_len(addr),
        }
    }

    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&MAGIC);
        match self {
            Self::Bind { token } => {
                dst.put_u8(tag::BIND);
                dst.put_slice(token);
            }
            Self::Bound { addr } => {
                dst.put_u8(tag::BOUND);
                put_addr(dst, addr);
            }
            Self::Probe { session } => {
                dst.put_u8(tag::PROBE);
                dst.put_slice(session);
            }
            Self::Check { cookie } => {
                dst.put_u8(tag::CHECK);
                dst.put_slice(cookie);
            }
            Self::Confirm { token, cookie } => {
                dst.put_u8(tag::CONFIRM);
                dst.put_slice(token);
                dst.put_slice(cookie);
            }
        }
    }

    /// The packet as one datagram.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Reads one datagram.
    pub fn decode(datagram: &[u8]) -> Result<Self, PunchPacketError> {
        let mut r = datagram
            .strip_prefix(&MAGIC)
            .ok_or(PunchPacketError::NotPunch)?;
        if r.is_empty() {
            return Err(PunchPacketError::Truncated("punch"));
        }
        let (what, packet) = match r.get_u8() {
            tag::BIND => {
                let token = nonce(&mut r, "bind")?;
                ("bind", Self::Bind { token })
            }
            tag::BOUND => {
                let addr = get_addr(&mut r, "bound")?;
                ("bound", Self::Bound { addr })
            }
            tag::PROBE => {
                let session = nonce(&mut r, "probe")?;
                ("probe", Self::Probe { session })
            }
            tag::CHECK => {
                let cookie = nonce(&mut r, "check")?;
                ("check", Self::Check { cookie })
            }
            tag::CONFIRM => {
                let token = nonce(&mut r, "confirm")?;
                let cookie = nonce(&mut r, "confirm")?;
                ("confirm", Self::Confirm { token, cookie })
            }
            other => return Err(PunchPacketError::UnknownType(other)),
        };
        if !r.is_empty() {
            return Err(PunchPacketError::Trailing(what, r.len()));
        }
        Ok(packet)
    }
}

fn nonce(r: &mut &[u8], what: &'static str) -> Result<Nonce16, PunchPacketError> {
    if r.len() < 16 {
        return Err(PunchPacketError::Truncated(what));
    }
    let mut out = [0u8; 16];
    r.copy_to_slice(&mut out);
    Ok(out)
}

/// The cookie the tracker sends in `Check` for a `Bind` of `token` from `addr`: HMAC-SHA256
/// keyed by the tracker's secret over [`COOKIE_CONTEXT`], the token and the encoded address,
/// cut to 16 bytes. The tracker keeps no state per `Bind`: it recomputes the cookie for the
/// address a `Confirm` comes from, so a cookie is good only from the address it was sent to.
pub fn bind_cookie(key: &[u8; 32], token: &Nonce16, addr: &SocketAddr) -> Nonce16 {
    let mut encoded = Vec::with_capacity(ADDR_V6_LEN);
    put_addr(&mut encoded, addr);
    let mac = crate::peer_auth::hmac_sha256(key, &[COOKIE_CONTEXT, token, &encoded]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
}

/// Compares two 16-byte values in time independent of where they differ.
pub fn nonces_equal(a: &Nonce16, b: &Nonce16) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The encoded length of a socket address: family byte, IP, port.
pub fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => ADDR_V4_LEN,
        SocketAddr::V6(_) => ADDR_V6_LEN,
    }
}

/// Writes a socket address: `4` + 4 bytes or `6` + 16 bytes, then the port (big-endian).
pub fn put_addr(dst: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            dst.put_u8(4);
            dst.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            dst.put_u8(6);
            dst.put_slice(&ip.octets());
        }
    }
    dst.put_u16(addr.port());
}

/// Reads what [`put_addr`] wrote; `what` names the enclosing message in errors.
pub fn get_addr(r: &mut impl Buf, what: &'static str) -> Result<SocketAddr, PunchPacketError> {
    if r.remaining() < 1 {
        return Err(PunchPacketError::Truncated(what));
    }
    let ip = match r.get_u8() {
        4 => {
            if r.remaining() < 4 + 2 {
                return Err(PunchPacketError::Truncated(what));
            }
            let mut o = [0u8; 4];
            r.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            if r.remaining() < 16 + 2 {
                return Err(PunchPacketError::Truncated(what));
            }
            let mut o = [0u8; 16];
            r.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        other => return Err(PunchPacketError::AddressFamily(other)),
    };
    Ok(SocketAddr::new(ip, r.get_u16()))
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn golden_packets() {
        assert_eq!(
            PunchPacket::Bind { token: [7; 16] }.to_vec(),
            [&MAGIC[..], &[1], &[7; 16]].concat()
        );
        assert_eq!(
            PunchPacket::Bound {
                addr: "203.0.113.9:6881".parse().unwrap()
            }
            .to_vec(),
            [0, b'p', b'2', b'p', 2, 4, 203, 0, 113, 9, 0x1a, 0xe1]
        );
        let v6 = PunchPacket::Bound {
            addr: "[2001:db8::1]:443".parse().unwrap(),
        }
        .to_vec();
        assert_eq!(v6.len(), 4 + 1 + ADDR_V6_LEN);
        assert_eq!((v6[5], v6[6], v6[22], v6[23]), (6, 0x20, 0x01, 0xbb));
        assert_eq!(
            PunchPacket::Probe { session: [9; 16] }.to_vec()[4],
            3,
            "probe type"
        );
        assert_eq!(
            PunchPacket::Check { cookie: [5; 16] }.to_vec(),
            [&MAGIC[..], &[4], &[5; 16]].concat()
        );
        let confirm = PunchPacket::Confirm {
            token: [7; 16],
            cookie: [5; 16],
        }
        .to_vec();
        assert_eq!(confirm, [&MAGIC[..], &[5], &[7; 16], &[5; 16]].concat());
        assert_eq!(confirm.len(), MAX_PUNCH_PACKET_LEN);
    }

    #[test]
    fn a_check_is_no_larger_than_the_bind_it_answers() {
        let bind = PunchPacket::Bind { token: [0; 16] }.encoded_len();
        assert!(PunchPacket::Check { cookie: [0; 16] }.encoded_len() <= bind);
    }

    #[test]
    fn cookies_are_bound_to_key_token_and_address() {
        let a: SocketAddr = "203.0.113.9:6881".parse().unwrap();
        let c = bind_cookie(&[1; 32], &[2; 16], &a);
        assert_eq!(c, bind_cookie(&[1; 32], &[2; 16], &a));
        assert_ne!(c, bind_cookie(&[9; 32], &[2; 16], &a));
        assert_ne!(c, bind_cookie(&[1; 32], &[3; 16], &a));
        assert_ne!(
            c,
            bind_cookie(&[1; 32], &[2; 16], &"203.0.113.9:6882".parse().unwrap())
        );
        assert_ne!(
            c,
            bind_cookie(&[1; 32], &[2; 16], &"203.0.113.8:6881".parse().unwrap())
        );
        assert!(nonces_equal(&c, &c));
        assert!(!nonces_equal(&c, &[0; 16]));
    }

    #[test]
    fn the_first_byte_is_never_a_quic_packet() {
        // QUIC long and short headers both set the fixed bit 0x40 in the first byte.
        assert_eq!(MAGIC[0] & 0x40, 0);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(PunchPacket::decode(b""), Err(PunchPacketError::NotPunch));
        assert_eq!(
            PunchPacket::decode(b"\x40abcdef"),
            Err(PunchPacketError::NotPunch)
        );
        assert_eq!(
            PunchPacket::decode(&MAGIC),
            Err(PunchPacketError::Truncated("punch"))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[9]].concat()),
            Err(PunchPacketError::UnknownType(9))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[1, 0, 0]].concat()),
            Err(PunchPacketError::Truncated("bind"))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[2, 5, 0, 0]].concat()),
            Err(PunchPacketError::AddressFamily(5))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[2, 4, 1, 2, 3, 4, 0]].concat()),
            Err(PunchPacketError::Truncated("bound"))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[3], &[0; 17]].concat()),
            Err(PunchPacketError::Trailing("probe", 1))
        );
        assert_eq!(
            PunchPacket::decode(&[&MAGIC[..], &[5], &[0; 31]].concat()),
            Err(PunchPacketError::Truncated("confirm"))
        );
    }

    pub(crate) fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(ip.into()), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(ip.into()), port)),
        ]
    }

    pub(crate) fn any_packet() -> impl Strategy<Value = PunchPacket> {
        prop_oneof![
            any::<[u8; 16]>().prop_map(|token| PunchPacket::Bind { token }),
            any_addr().prop_map(|addr| PunchPacket::Bound { addr }),
            any::<[u8; 16]>().prop_map(|session| PunchPacket::Probe { session }),
            any::<[u8; 16]>().prop_map(|cookie| PunchPacket::Check { cookie }),
            (any::<[u8; 16]>(), any::<[u8; 16]>())
                .prop_map(|(token, cookie)| PunchPacket::Confirm { token, cookie }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(packet in any_packet()) {
            let bytes = packet.to_vec();
            prop_assert_eq!(bytes.len(), packet.encoded_len());
            prop_assert!(bytes.len() <= MAX_PUNCH_PACKET_LEN);
            prop_assert_eq!(PunchPacket::decode(&bytes), Ok(packet));
        }

        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = [&MAGIC[..], &tail].concat();
            if let Ok(packet) = PunchPacket::decode(&bytes) {
                prop_assert_eq!(packet.to_vec(), bytes);
            }
        }
    }
}
