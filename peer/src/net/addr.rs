//! The address of a peer, as every layer passes it (in the manner of iroh's endpoint address):
//! who the peer is, which the Noise handshake proves, and hints of where it may be reached. The
//! hints are only hints: a wrong address costs a failed attempt, never a wrong peer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use p2p_proto::PeerId;

/// A relay hub's URL (`ws://host:port/relay`, see [`crate::net::relay::relay_url`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayUrl(Arc<str>);

impl RelayUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for RelayUrl {
    fn from(url: String) -> Self {
        Self(url.into())
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a peer can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    pub peer_id: PeerId,
    /// Where it listens for direct connections, in the order to try them.
    pub addrs: Vec<SocketAddr>,
    /// The relay hub it is attached to, when known. Without it, the connector assumes the hub
    /// its own node is attached to (a peer found on the DHT, say).
    pub relay: Option<RelayUrl>,
}

impl PeerAddr {
    /// A peer at `addrs`, with no relay hint.
    pub fn new(peer_id: PeerId, addrs: Vec<SocketAddr>) -> Self {
        Self {
            peer_id,
            addrs,
            relay: None,
        }
    }

    /// The same, attached to the hub at `relay`.
    pub fn with_relay(mut self, relay: RelayUrl) -> Self {
        self.relay = Some(relay);
        self
    }

    /// Adds what `other`, another sighting of the same peer, knows: its addresses not yet
    /// listed, and its relay when this one names none.
    pub fn merge(&mut self, other: Self) {
        debug_assert_eq!(self.peer_id, other.peer_id);
        for addr in other.addrs {
            if !self.addrs.contains(&addr) {
                self.addrs.push(addr);
            }
        }
        if self.relay.is_none() {
            self.relay = other.relay;
        }
    }
}

/// Whether `ip` is one only this machine or its link reaches: loopback, link-local
/// (169.254.0.0/16, fe80::/10, where cloud metadata services answer), unspecified, multicast
/// or broadcast, also as an IPv4-mapped IPv6 address. Addresses learnt from the tracker or the
/// DHT in these ranges are not dialled unless the user allows it: otherwise whoever runs the
/// tracker, or anyone on the DHT, could make a peer connect to services on its own host.
/// Private LAN ranges (RFC 1918, fc00::/7) are not local in this sense: LAN use needs them.
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                // 0.0.0.0/8 reaches this host on Linux.
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses_are_told_apart_from_lan_and_public_ones() {
        for local in [
            "127.0.0.1",
            "127.4.5.6",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for remote in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
            "fec0::1",
            "::ffff:192.168.1.1",
        ] {
            assert!(!is_local(remote.parse().unwrap()), "{remote}");
        }
    }

    #[test]
    fn merging_adds_new_addresses_and_a_missing_relay() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let hub = RelayUrl::from("ws://t:1/relay".to_owned());
        let mut a = PeerAddr::new(PeerId([1; 32]), vec![addr(1)]);
        a.merge(PeerAddr::new(PeerId([1; 32]), vec![addr(1), addr(2)]).with_relay(hub.clone()));
        assert_eq!(a.addrs, vec![addr(1), addr(2)]);
        assert_eq!(a.relay, Some(hub.clone()));
        let other = RelayUrl::from("ws://u:1/relay".to_owned());
        a.merge(PeerAddr::new(PeerId([1; 32]), vec![]).with_relay(other));
        assert_eq!(a.relay, Some(hub), "the first relay named stays");
    }
}
