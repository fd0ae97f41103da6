//! Share links: one copy-pastable string that says where to fetch a file or folder, and read
//! grants, the tracker's signed permission to read one id without an API key.
//!
//! A [`ShareLink`] carries the tracker URL(s), the file or collection id, a few peers (id and
//! socket addresses) and relay URLs to start from, and optionally a [`ReadGrant`]. It is written
//! `p2p1` followed by its bytes in lowercase base32 (RFC 4648, no padding), or the same bytes
//! after `p2p://`. The bytes end with a 4-byte checksum (truncated SHA-256), so a link damaged in
//! transit is refused with a clear error rather than misread. Every count and length is capped
//! and checked before anything is allocated. A link has no field for an API key, and tracker or
//! relay URLs that carry credentials (`user:pass@`, a query or a fragment) are refused. The byte
//! layout is in `docs/protocol.md` §11. No IO here.
//!
//! A [`ReadGrant`] names a file (or collection) id and an expiry, with an HMAC-SHA256 by a key
//! only the tracker (and replicas sharing its secret) holds. The receiver sends it as
//! [`READ_GRANT_HEADER`] to read that one id's details and peers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sha2::{Digest, Sha256};

use crate::api::FilePeer;
use crate::ids::{FileId, PeerId};
use crate::peer_auth::{hmac_sha256, macs_equal};

/// The header that carries a read grant (hex, [`READ_GRANT_LEN`] bytes).
pub const READ_GRANT_HEADER: &str = "X-Read-Grant";
/// Domain separation of the grant's MAC.
pub const READ_GRANT_CONTEXT: &[u8] = b"p2p-tracker/1 read grant";
/// Bytes of an encoded grant: file id, expiry, MAC.
pub const READ_GRANT_LEN: usize = 32 + 8 + 32;

/// The text form's prefix: `p2p`, then `1`, which is not a base32 digit.
pub const LINK_PREFIX: &str = "p2p1";
/// The URL form's prefix (the same base32 after it).
pub const LINK_URL_PREFIX: &str = "p2p://";
/// The layout version this code writes and reads.
pub const LINK_VERSION: u8 = 1;
/// Tracker URLs in a link at most.
pub const MAX_LINK_TRACKERS: usize = 4;
/// Relay URLs in a link at most.
pub const MAX_LINK_RELAYS: usize = 4;
/// Peers in a link at most.
pub const MAX_LINK_PEERS: usize = 8;
/// Socket addresses per peer at most.
pub const MAX_PEER_ADDRS: usize = 4;
/// Bytes of a tracker or relay URL at most (one length byte).
pub const MAX_URL_LEN: usize = 255;
/// Bytes of the checksum that ends a link.
pub const CHECKSUM_LEN: usize = 4;
/// Bytes of the largest link: everything at its cap.
pub const MAX_LINK_BYTES: usize = 2
    + 32
    + READ_GRANT_LEN
    + 1
    + MAX_LINK_TRACKERS * (1 + MAX_URL_LEN)
    + 1
    + MAX_LINK_RELAYS * (1 + MAX_URL_LEN)
    + 1
    + MAX_LINK_PEERS * (32 + 2 + MAX_PEER_ADDRS * 19)
    + CHECKSUM_LEN;
/// Characters of the largest link's text, whitespace left out.
pub const MAX_LINK_TEXT: usize = LINK_URL_PREFIX.len() + MAX_LINK_BYTES.div_ceil(5) * 8;

/// Domain separation of the checksum.
const CHECKSUM_CONTEXT: &[u8] = b"p2p link";
/// Flag bit: a read grant follows the id.
const FLAG_GRANT: u8 = 1;
/// A peer's relay index meaning "no relay named".
const NO_RELAY: u8 = 0xff;

/// Why a string is not a usable share link or grant. The text is shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("not a share link: it must start with {LINK_PREFIX} or {LINK_URL_PREFIX}")]
    Prefix,
    #[error("the link is {0} characters long; a link has at most {MAX_LINK_TEXT}")]
    TooLong(usize),
    #[error("the link is damaged: it is not base32 (a-z, 2-7) after its prefix")]
    Base32,
    #[error("the link is damaged: its checksum does not match (copy the whole link again)")]
    Checksum,
    #[error("the link is damaged: it ends in the middle of {0}")]
    Truncated(&'static str),
    #[error("the link has {0} bytes after its end")]
    Trailing(usize),
    #[error("link version {0} is not supported (this peer reads version {LINK_VERSION})")]
    Version(u8),
    #[error("the link sets flags this peer does not know ({0:#04x})")]
    Flags(u8),
    #[error("the link has {count} {what}; at most {max} are allowed")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("the link names no tracker")]
    NoTracker,
    #[error("bad URL {url:?} in the link: {why}")]
    Url { url: String, why: &'static str },
    #[error("a peer in the link names relay {index}, but the link has {relays} relays")]
    RelayIndex { index: u8, relays: usize },
    #[error("a peer address in the link has an unknown family {0}")]
    Family(u8),
    #[error("a read grant is {READ_GRANT_LEN} bytes ({} hex characters)", READ_GRANT_LEN * 2)]
    GrantLength,
}

/// Why a read grant does not let its holder read an id. The text is sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    #[error("malformed read grant: expected {} hex characters", READ_GRANT_LEN * 2)]
    Malformed,
    #[error("the read grant was not issued by this tracker")]
    BadMac,
    #[error("the read grant expired; ask whoever shared the link for a fresh one")]
    Expired,
    #[error("the read grant is for {granted}, not {wanted}")]
    OtherId { granted: FileId, wanted: FileId },
}

/// The tracker's permission to read `file_id` until `expires_at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadGrant {
    pub file_id: FileId,
    /// Unix milliseconds, the tracker's clock.
    pub expires_at_ms: u64,
    /// HMAC-SHA256 keyed by the tracker's grant key over [`READ_GRANT_CONTEXT`], the id and the
    /// expiry (u64 big-endian).
    pub mac: [u8; 32],
}

impl ReadGrant {
    /// A grant to read `file_id` until `expires_at_ms`, signed with `key`.
    pub fn sign(key: &[u8; 32], file_id: FileId, expires_at_ms: u64) -> Self {
        Self {
            file_id,
            expires_at_ms,
            mac: grant_mac(key, &file_id, expires_at_ms),
        }
    }

    /// Checks that `key` signed this grant, that it covers `wanted` and that it has not
    /// expired at `now_ms`.
    pub fn check(&self, key: &[u8; 32], wanted: &FileId, now_ms: u64) -> Result<(), GrantError> {
        if !macs_equal(
            &self.mac,
            &grant_mac(key, &self.file_id, self.expires_at_ms),
        ) {
            return Err(GrantError::BadMac);
        }
        if now_ms >= self.expires_at_ms {
            return Err(GrantError::Expired);
        }
        if self.file_id != *wanted {
            return Err(GrantError::OtherId {
                granted: self.file_id,
                wanted: *wanted,
            });
        }
        Ok(())
    }

    /// `file_id ‖ expires_at_ms (u64 BE) ‖ mac`.
    pub fn to_bytes(&self) -> [u8; READ_GRANT_LEN] {
        let mut out = [0u8; READ_GRANT_LEN];
        out[..32].copy_from_slice(&self.file_id.0);
        out[32..40].copy_from_slice(&self.expires_at_ms.to_be_bytes());
        out[40..].copy_from_slice(&self.mac);
        out
    }

    /// The encoding as lowercase hex (the header's value).
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Parses [`ReadGrant::to_hex`] (either case, surrounding spaces ignored).
    pub fn from_hex(text: &str) -> Result<Self, GrantError> {
        let text = text.trim();
        let mut b = [0u8; READ_GRANT_LEN];
        if text.len() != READ_GRANT_LEN * 2 || hex::decode_to_slice(text, &mut b).is_err() {
            return Err(GrantError::Malformed);
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[..32]);
        let mut at = [0u8; 8];
        at.copy_from_slice(&b[32..40]);
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&b[40..]);
        Ok(Self {
            file_id: FileId(id),
            expires_at_ms: u64::from_be_bytes(at),
            mac,
        })
    }
}

fn grant_mac(key: &[u8; 32], file_id: &FileId, expires_at_ms: u64) -> [u8; 32] {
    hmac_sha256(
        key,
        &[READ_GRANT_CONTEXT, &file_id.0, &expires_at_ms.to_be_bytes()],
    )
}

/// A peer to start from: its id (the Noise handshake proves it) and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPeer {
    pub peer_id: PeerId,
    /// Where it listens for direct connections (IP and port: an IPv6 scope or flow label is
    /// not carried), at most [`MAX_PEER_ADDRS`].
    pub addrs: Vec<SocketAddr>,
    /// Its home relay: an index into [`ShareLink::relays`].
    pub relay: Option<u8>,
}

/// Everything a receiver needs to fetch a file or folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareLink {
    /// The file id, or a folder's collection id.
    pub id: FileId,
    /// Tracker base URLs (`http(s)://host[:port][/path]`), 1 to [`MAX_LINK_TRACKERS`].
    pub trackers: Vec<String>,
    /// Relay URLs, at most [`MAX_LINK_RELAYS`].
    pub relays: Vec<String>,
    /// Peers that had the id when the link was made, at most [`MAX_LINK_PEERS`].
    pub peers: Vec<LinkPeer>,
    /// Permission to read an id without an API key: `id`'s, unless the link is wrong (the
    /// tracker then refuses it, naming both ids).
    pub grant: Option<ReadGrant>,
}

impl ShareLink {
    /// A link to `id` at `trackers` (the first [`MAX_LINK_TRACKERS`]) starting from the
    /// tracker's `peers` of it: `first` (the sharer) first, at most [`MAX_LINK_PEERS`], each
    /// with its IP addresses and its home relay (URLs a link may not carry are left out, and
    /// peers with neither); with `grant` when given.
    pub fn from_swarm(
        id: FileId,
        trackers: &[String],
        peers: &[FilePeer],
        first: Option<PeerId>,
        grant: Option<&ReadGrant>,
    ) -> Result<Self, LinkError> {
        let mut relays: Vec<String> = Vec::new();
        let mut out: Vec<LinkPeer> = Vec::new();
        let mut ordered: Vec<&FilePeer> = peers.iter().collect();
        ordered.sort_by_key(|p| Some(p.peer_id) != first);
        for p in ordered {
            if out.len() == MAX_LINK_PEERS {
                break;
            }
            let mut addrs = Vec::new();
            for ip in p.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                let addr = SocketAddr::new(ip, p.port);
                if !addrs.contains(&addr) && addrs.len() < MAX_PEER_ADDRS {
                    addrs.push(addr);
                }
            }
            let relay = p.relay.as_deref().filter(|r| check_url(r).is_ok());
            let relay = relay.and_then(|r| match relays.iter().position(|k| k == r) {
                Some(i) => Some(i as u8),
                None if relays.len() < MAX_LINK_RELAYS => {
                    relays.push(r.to_owned());
                    Some(relays.len() as u8 - 1)
                }
                None => None,
            });
            if !addrs.is_empty() || relay.is_some() {
                out.push(LinkPeer {
                    peer_id: p.peer_id,
                    addrs,
                    relay,
                });
            }
        }
        let link = Self {
            id,
            trackers: trackers.iter().take(MAX_LINK_TRACKERS).cloned().collect(),
            relays,
            peers: out,
            grant: grant.copied(),
        };
        link.validate()?;
        Ok(link)
    }

    /// Checks the caps and URLs (what [`ShareLink::decode`] would refuse).
    pub fn validate(&self) -> Result<(), LinkError> {
        if self.trackers.is_empty() {
            return Err(LinkError::NoTracker);
        }
        cap("trackers", self.trackers.len(), MAX_LINK_TRACKERS)?;
        cap("relays", self.relays.len(), MAX_LINK_RELAYS)?;
        cap("peers", self.peers.len(), MAX_LINK_PEERS)?;
        for url in self.trackers.iter().chain(&self.relays) {
            check_url(url)?;
        }
        for p in &self.peers {
            cap("addresses for one peer", p.addrs.len(), MAX_PEER_ADDRS)?;
            if let Some(index) = p.relay
                && usize::from(index) >= self.relays.len()
            {
                return Err(LinkError::RelayIndex {
                    index,
                    relays: self.relays.len(),
                });
            }
        }
        Ok(())
    }

    /// The link's bytes (layout in `docs/protocol.md` §11), checksum included.
    pub fn encode(&self) -> Result<Vec<u8>, LinkError> {
        self.validate()?;
        let mut out = Vec::with_capacity(256);
        out.push(LINK_VERSION);
        out.push(if self.grant.is_some() { FLAG_GRANT } else { 0 });
        out.extend_from_slice(&self.id.0);
        if let Some(g) = &self.grant {
            out.extend_from_slice(&g.to_bytes());
        }
        for list in [&self.trackers, &self.relays] {
            out.push(list.len() as u8);
            for url in list {
                out.push(url.len() as u8);
                out.extend_from_slice(url.as_bytes());
            }
        }
        out.push(self.peers.len() as u8);
        for p in &self.peers {
            out.extend_from_slice(&p.peer_id.0);
            out.push(p.relay.unwrap_or(NO_RELAY));
            out.push(p.addrs.len() as u8);
            for addr in &p.addrs {
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&addr.port().to_be_bytes());
            }
        }
        let sum = checksum(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Decodes [`ShareLink::encode`]'s bytes: the checksum first, then every field with its
    /// caps; nothing may follow.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        if bytes.len() > MAX_LINK_BYTES {
            return Err(LinkError::TooLong(bytes.len()));
        }
        let Some(body_len) = bytes.len().checked_sub(CHECKSUM_LEN) else {
            return Err(LinkError::Truncated("the checksum"));
        };
        let (body, sum) = bytes.split_at(body_len);
        if checksum(body) != sum {
            return Err(LinkError::Checksum);
        }
        let mut r = Reader(body);
        let version = r.u8("the header")?;
        if version != LINK_VERSION {
            return Err(LinkError::Version(version));
        }
        let flags = r.u8("the header")?;
        if flags & !FLAG_GRANT != 0 {
            return Err(LinkError::Flags(flags & !FLAG_GRANT));
        }
        let id = FileId(r.array("the id")?);
        let grant = if flags & FLAG_GRANT != 0 {
            Some(ReadGrant {
                file_id: FileId(r.array("the read grant")?),
                expires_at_ms: u64::from_be_bytes(r.array("the read grant")?),
                mac: r.array("the read grant")?,
            })
        } else {
            None
        };
        let trackers = r.urls("trackers", MAX_LINK_TRACKERS)?;
        let relays = r.urls("relays", MAX_LINK_RELAYS)?;
        let count = usize::from(r.u8("the peers")?);
        cap("peers", count, MAX_LINK_PEERS)?;
        let mut peers = Vec::with_capacity(count);
        for _ in 0..count {
            let peer_id = PeerId(r.array("a peer")?);
            let relay = match r.u8("a peer")? {
                NO_RELAY => None,
                index => Some(index),
            };
            let n = usize::from(r.u8("a peer")?);
            cap("addresses for one peer", n, MAX_PEER_ADDRS)?;
            let mut addrs = Vec::with_capacity(n);
            for _ in 0..n {
                let ip = match r.u8("a peer address")? {
                    4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("a peer address")?)),
                    6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("a peer address")?)),
                    family => return Err(LinkError::Family(family)),
                };
                let port = u16::from_be_bytes(r.array("a peer address")?);
                addrs.push(SocketAddr::new(ip, port));
            }
            peers.push(LinkPeer {
                peer_id,
                addrs,
                relay,
            });
        }
        if !r.0.is_empty() {
            return Err(LinkError::Trailing(r.0.len()));
        }
        let link = Self {
            id,
            trackers,
            relays,
            peers,
            grant,
        };
        link.validate()?;
        Ok(link)
    }

    /// The text form: `p2p1` and the bytes in lowercase base32.
    pub fn to_text(&self) -> Result<String, LinkError> {
        let b32 = data_encoding::BASE32_NOPAD_NOCASE.encode(&self.encode()?);
        Ok(format!("{LINK_PREFIX}{}", b32.to_ascii_lowercase()))
    }

    /// Parses the text form, `p2p1…` or `p2p://…` (either case; whitespace, as a line break
    /// from copying, is ignored).
    pub fn from_text(text: &str) -> Result<Self, LinkError> {
        let text = text.trim();
        if text.len() > MAX_LINK_TEXT * 2 {
            return Err(LinkError::TooLong(text.len()));
        }
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if compact.len() > MAX_LINK_TEXT {
            return Err(LinkError::TooLong(compact.len()));
        }
        let lower = compact.to_ascii_lowercase();
        let body = lower
            .strip_prefix(LINK_URL_PREFIX)
            .or_else(|| lower.strip_prefix(LINK_PREFIX))
            .ok_or(LinkError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD_NOCASE
            .decode(body.trim_end_matches('/').as_bytes())
            .map_err(|_| LinkError::Base32)?;
        Self::decode(&bytes)
    }

    /// `body` followed by its checksum: what [`ShareLink::decode`] checks first (for tests and
    /// fuzzing of the fields behind the checksum).
    pub fn seal(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + CHECKSUM_LEN);
        out.extend_from_slice(body);
        out.extend_from_slice(&checksum(body));
        out
    }

    /// Whether `text` looks like a link (its prefix), as opposed to a bare id.
    pub fn is_link(text: &str) -> bool {
        let t = text.trim().as_bytes();
        [LINK_PREFIX, LINK_URL_PREFIX]
            .iter()
            .any(|p| t.len() >= p.len() && t[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
    }
}

impl std::fmt::Display for ShareLink {
    /// The text form; a link that breaks its caps shows its error instead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.to_text() {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "<invalid link: {e}>"),
        }
    }
}

impl std::str::FromStr for ShareLink {
    type Err = LinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s)
    }
}

fn cap(what: &'static str, count: usize, max: usize) -> Result<(), LinkError> {
    if count > max {
        return Err(LinkError::TooMany { what, count, max });
    }
    Ok(())
}

/// Whether `url` may be a link's tracker or relay URL: `http(s)`, without credentials, query
/// or fragment, at most [`MAX_URL_LEN`] bytes.
pub fn check_url(url: &str) -> Result<(), LinkError> {
    let bad = |why| {
        Err(LinkError::Url {
            url: url.chars().take(80).collect(),
            why,
        })
    };
    if url.len() > MAX_URL_LEN {
        return bad("longer than 255 bytes");
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("it must start with http:// or https://");
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return bad("no host");
    }
    if authority.contains('@') {
        return bad("a link carries no credentials");
    }
    if url.contains(['?', '#']) {
        return bad("a link's URLs have no query or fragment");
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("control characters or spaces");
    }
    Ok(())
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(CHECKSUM_CONTEXT)
        .chain_update(body)
        .finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}

/// A cursor over the link's bytes; every read says what it was reading when they ran out.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&[u8], LinkError> {
        if self.0.len() < n {
            return Err(LinkError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, LinkError> {
        Ok(self.take(1, what)?[0])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], LinkError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// A count, then that many length-prefixed URLs.
    fn urls(&mut self, what: &'static str, max: usize) -> Result<Vec<String>, LinkError> {
        let count = usize::from(self.u8(what)?);
        cap(what, count, max)?;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(self.u8(what)?);
            let raw = self.take(len, what)?;
            let url = std::str::from_utf8(raw).map_err(|_| LinkError::Url {
                url: String::from_utf8_lossy(raw).chars().take(80).collect(),
                why: "not UTF-8",
            })?;
            out.push(url.to_owned());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn example() -> ShareLink {
        ShareLink {
            id: FileId([0xab; 32]),
            trackers: vec!["https://tracker.example".into()],
            relays: vec!["https://relay.example:8443".into()],
            peers: vec![LinkPeer {
                peer_id: PeerId([0xcd; 32]),
                addrs: vec![
                    "203.0.113.7:6881".parse().unwrap(),
                    "[2001:db8::1]:6881".parse().unwrap(),
                ],
                relay: Some(0),
            }],
            grant: Some(ReadGrant {
                file_id: FileId([0xab; 32]),
                expires_at_ms: NOW,
                mac: [0x11; 32],
            }),
        }
    }

    /// The worked example of docs/protocol.md §11, byte by byte.
    #[test]
    fn golden_link() {
        let bytes = example().encode().unwrap();
        let mut want = vec![1u8, 1];
        want.extend([0xab; 32]);
        want.extend([0xab; 32]);
        want.extend([0, 0, 0x01, 0xa3, 0x18, 0x5c, 0x50, 0]);
        want.extend([0x11; 32]);
        want.push(1);
        want.push(23);
        want.extend(b"https://tracker.example");
        want.push(1);
        want.push(26);
        want.extend(b"https://relay.example:8443");
        want.push(1);
        want.extend([0xcd; 32]);
        want.extend([0, 2]);
        want.extend([4, 203, 0, 113, 7, 0x1a, 0xe1]);
        want.extend([6, 0x20, 0x01, 0x0d, 0xb8]);
        want.extend([0; 11]);
        want.extend([1, 0x1a, 0xe1]);
        assert_eq!(&bytes[..bytes.len() - CHECKSUM_LEN], &want[..]);
        assert_eq!(
            hex::encode(&bytes[bytes.len() - CHECKSUM_LEN..]),
            GOLDEN_SUM
        );
        assert_eq!(bytes.len(), 224);
        let text = example().to_text().unwrap();
        assert_eq!(text.len(), 363);
        assert_eq!(text, GOLDEN_TEXT);
        assert_eq!(ShareLink::from_text(&text), Ok(example()));
    }

    const GOLDEN_TEXT: &str = "p2p1aea2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvov2xk5lvmaaaanddbofaaarceirceirceirceirceirceirceirceirceirceirceirceircearo2duoryhgorpf52heyldnnsxeltfpbqw24dmmuaru2duoryhgorpf5zgk3dbpexgk6dbnvygyzj2ha2dimybzxg43tonzxg43tonzxg43tonzxg43tonzxg43tonzxg43tonzxgqaaqezmahcby24edcaainxaaaaaaaaaaaaaaaaaaacgxbflaxqki";

    const GOLDEN_SUM: &str = "2ac17829";

    #[test]
    fn both_forms_any_case_and_wrapped_lines_parse() {
        let link = example();
        let text = link.to_text().unwrap();
        let body = &text[LINK_PREFIX.len()..];
        for form in [
            text.clone(),
            text.to_uppercase(),
            format!("p2p://{body}"),
            format!("P2P://{}/", body.to_uppercase()),
            format!("  {}\n{}  ", &text[..40], &text[40..]),
        ] {
            assert_eq!(ShareLink::from_text(&form), Ok(link.clone()), "{form}");
            assert!(ShareLink::is_link(&form));
        }
        assert!(!ShareLink::is_link(&"ab".repeat(32)));
        assert_eq!(
            ShareLink::from_text(&"ab".repeat(32)),
            Err(LinkError::Prefix)
        );
    }

    #[test]
    fn corruption_is_refused_clearly() {
        let text = example().to_text().unwrap();
        // Every single-character change is caught: by the base32 alphabet or the checksum.
        let alphabet = "abcdefghijklmnopqrstuvwxyz234567";
        for at in LINK_PREFIX.len()..text.len() {
            let old = text.as_bytes()[at] as char;
            let new = alphabet.chars().find(|&c| c != old).unwrap();
            let mut bad = text.clone();
            bad.replace_range(at..=at, &new.to_string());
            let err = ShareLink::from_text(&bad).unwrap_err();
            assert!(
                matches!(err, LinkError::Checksum | LinkError::Base32),
                "{at}: {err}"
            );
        }
        assert_eq!(
            ShareLink::from_text(&format!("{text}0")),
            Err(LinkError::Base32)
        );
        // A cut link: not canonical base32 at its new end, or fewer bytes whose last 4 are not
        // their checksum.
        for cut in 1..40 {
            let err = ShareLink::from_text(&text[..text.len() - cut]).unwrap_err();
            assert!(
                matches!(err, LinkError::Checksum | LinkError::Base32),
                "{cut}: {err}"
            );
            assert!(err.to_string().starts_with("the link is damaged"), "{err}");
        }
        assert_eq!(
            ShareLink::from_text("p2p1"),
            Err(LinkError::Truncated("the checksum"))
        );
        assert_eq!(
            ShareLink::from_text(&"p2p1".repeat(3000)),
            Err(LinkError::TooLong(12000))
        );
        assert_eq!(
            LinkError::Checksum.to_string(),
            "the link is damaged: its checksum does not match (copy the whole link again)"
        );
    }

    /// Bytes with a good checksum but a bad body: each field's error.
    #[test]
    fn bad_fields_with_good_checksums() {
        let seal = |body: Vec<u8>| ShareLink::seal(&body);
        let mut body = example().encode().unwrap();
        body.truncate(body.len() - CHECKSUM_LEN);
        let mut v2 = body.clone();
        v2[0] = 2;
        assert_eq!(ShareLink::decode(&seal(v2)), Err(LinkError::Version(2)));
        let mut flags = body.clone();
        flags[1] = 0x81;
        assert_eq!(ShareLink::decode(&seal(flags)), Err(LinkError::Flags(0x80)));
        let mut trailing = body.clone();
        trailing.push(0);
        assert_eq!(
            ShareLink::decode(&seal(trailing)),
            Err(LinkError::Trailing(1))
        );
        assert_eq!(
            ShareLink::decode(&seal(body[..50].to_vec())),
            Err(LinkError::Truncated("the read grant"))
        );
        // 200 trackers: refused on the count, before anything is read or allocated.
        let mut many = body[..106].to_vec();
        many.push(200);
        assert_eq!(
            ShareLink::decode(&seal(many)),
            Err(LinkError::TooMany {
                what: "trackers",
                count: 200,
                max: MAX_LINK_TRACKERS
            })
        );
        let mut none = body[..106].to_vec();
        none.extend([0, 0, 0]);
        assert_eq!(ShareLink::decode(&seal(none)), Err(LinkError::NoTracker));
    }

    #[test]
    fn urls_with_credentials_are_refused() {
        for url in [
            "https://user:key@tracker.example",
            "https://tracker.example/?api_key=secret",
            "https://tracker.example/#k",
            "ftp://tracker.example",
            "https://",
            "https://tracker example",
        ] {
            let link = ShareLink {
                trackers: vec![url.into()],
                ..example()
            };
            assert!(
                matches!(link.to_text(), Err(LinkError::Url { .. })),
                "{url}"
            );
        }
        let link = ShareLink {
            peers: vec![LinkPeer {
                relay: Some(3),
                ..example().peers[0].clone()
            }],
            ..example()
        };
        assert_eq!(
            link.to_text(),
            Err(LinkError::RelayIndex {
                index: 3,
                relays: 1
            })
        );
    }

    #[test]
    fn links_from_a_swarm_put_the_sharer_first_and_keep_to_the_caps() {
        let peer = |n: u8, addresses: Vec<&str>, relay: Option<&str>| FilePeer {
            peer_id: PeerId([n; 32]),
            addresses: addresses.into_iter().map(str::to_owned).collect(),
            port: 6881,
            udp_port: None,
            relay_only: false,
            relay: relay.map(str::to_owned),
            complete: true,
            have: None,
            chunks_have: 1,
            last_seen_ms: 0,
            variant: None,
        };
        let mut swarm = vec![
            peer(1, vec!["10.0.0.1", "host.example", "10.0.0.1"], None),
            peer(2, vec![], Some("https://relay.example")),
            peer(3, vec!["::1"], Some("https://relay.example")),
            peer(4, vec![], Some("https://user:pw@relay.example")),
        ];
        swarm.extend((10..30).map(|n| peer(n, vec!["192.0.2.1"], None)));
        let grant = ReadGrant::sign(&[1; 32], FileId([9; 32]), NOW);
        let link = ShareLink::from_swarm(
            FileId([9; 32]),
            &["http://t.example".to_owned()],
            &swarm,
            Some(PeerId([3; 32])),
            Some(&grant),
        )
        .unwrap();
        assert_eq!(link.peers.len(), MAX_LINK_PEERS);
        assert_eq!(link.peers[0].peer_id, PeerId([3; 32]));
        assert_eq!(link.peers[0].relay, Some(0));
        assert_eq!(link.relays, vec!["https://relay.example".to_owned()]);
        // One address for peer 1 (the host name and the repeat left out); peer 4 has nothing
        // a link may carry.
        assert_eq!(link.peers[1].addrs, vec!["10.0.0.1:6881".parse().unwrap()]);
        assert_eq!(link.peers[2].peer_id, PeerId([2; 32]));
        assert!(link.peers.iter().all(|p| p.peer_id != PeerId([4; 32])));
        assert_eq!(link.grant, Some(grant));
    }

    #[test]
    fn grants_check_key_expiry_and_id() {
        let key = [7u8; 32];
        let id = FileId([1; 32]);
        let g = ReadGrant::sign(&key, id, NOW + 1000);
        assert_eq!(g.check(&key, &id, NOW), Ok(()));
        assert_eq!(g.check(&key, &id, NOW + 1000), Err(GrantError::Expired));
        assert_eq!(
            g.check(&key, &FileId([2; 32]), NOW),
            Err(GrantError::OtherId {
                granted: id,
                wanted: FileId([2; 32])
            })
        );
        assert_eq!(g.check(&[8; 32], &id, NOW), Err(GrantError::BadMac));
        let stretched = ReadGrant {
            expires_at_ms: NOW + 10_000_000,
            ..g
        };
        assert_eq!(stretched.check(&key, &id, NOW), Err(GrantError::BadMac));
        let moved = ReadGrant {
            file_id: FileId([2; 32]),
            ..g
        };
        assert_eq!(
            moved.check(&key, &FileId([2; 32]), NOW),
            Err(GrantError::BadMac)
        );
        assert_eq!(ReadGrant::from_hex(&g.to_hex()), Ok(g));
        assert_eq!(ReadGrant::from_hex("abc"), Err(GrantError::Malformed));
        assert_eq!(
            ReadGrant::from_hex(&"zz".repeat(READ_GRANT_LEN)),
            Err(GrantError::Malformed)
        );
    }

    /// The grant's MAC in docs/protocol.md §11 (HMAC-SHA256, checked with Python's hmac).
    #[test]
    fn golden_grant() {
        let g = ReadGrant::sign(&[7; 32], FileId([0xab; 32]), NOW);
        assert_eq!(hex::encode(g.mac), GOLDEN_GRANT_MAC);
        assert_eq!(&g.to_hex()[64..80], "000001a3185c5000");
    }

    const GOLDEN_GRANT_MAC: &str =
        "b6c19e027ff878637ffaca701bdc824f2cf86a2c1e08c0d5f648acb56c82a448";

    fn url() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("http://"), Just("https://")],
            "[a-z0-9.-]{1,40}",
            proptest::option::of(any::<u16>()),
            "(/[a-zA-Z0-9._~-]{0,30}){0,3}",
        )
            .prop_map(|(scheme, host, port, path)| match port {
                Some(p) => format!("{scheme}{host}:{p}{path}"),
                None => format!("{scheme}{host}{path}"),
            })
    }

    fn peer(relays: usize) -> impl Strategy<Value = LinkPeer> {
        (
            any::<[u8; 32]>(),
            // What a link holds of an address: its IP and port (no IPv6 flow or scope).
            proptest::collection::vec(
                (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port)),
                0..=MAX_PEER_ADDRS,
            ),
            proptest::option::of(0..relays.max(1) as u8),
        )
            .prop_map(move |(id, addrs, relay)| LinkPeer {
                peer_id: PeerId(id),
                addrs,
                relay: relay.filter(|_| relays > 0),
            })
    }

    fn link() -> impl Strategy<Value = ShareLink> {
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(url(), 1..=MAX_LINK_TRACKERS),
            proptest::collection::vec(url(), 0..=MAX_LINK_RELAYS),
            proptest::option::of((any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>())),
        )
            .prop_flat_map(|(id, trackers, relays, grant)| {
                let n = relays.len();
                (
                    Just((id, trackers, relays, grant)),
                    proptest::collection::vec(peer(n), 0..=MAX_LINK_PEERS),
                )
            })
            .prop_map(|((id, trackers, relays, grant), peers)| ShareLink {
                id: FileId(id),
                trackers,
                relays,
                peers,
                grant: grant.map(|(id, expires_at_ms, mac)| ReadGrant {
                    file_id: FileId(id),
                    expires_at_ms,
                    mac,
                }),
            })
    }

    proptest! {
        #[test]
        fn roundtrip(link in link()) {
            let bytes = link.encode().unwrap();
            prop_assert!(bytes.len() <= MAX_LINK_BYTES);
            prop_assert_eq!(ShareLink::decode(&bytes), Ok(link.clone()));
            let text = link.to_text().unwrap();
            prop_assert!(text.len() <= MAX_LINK_TEXT);
            prop_assert_eq!(ShareLink::from_text(&text), Ok(link.clone()));
            prop_assert_eq!(text.parse::<ShareLink>(), Ok(link));
        }

        #[test]
        fn a_flipped_bit_is_refused(link in link(), at in any::<usize>(), bit in 0u8..8) {
            let mut bytes = link.encode().unwrap();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            prop_assert!(ShareLink::decode(&bytes).is_err());
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
            let bytes = ShareLink::seal(&body);
            if let Ok(link) = ShareLink::decode(&bytes) {
                prop_assert_eq!(link.encode().unwrap(), bytes);
            }
        }
    }
}
