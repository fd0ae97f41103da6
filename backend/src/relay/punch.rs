//! The hole-punch rendezvous: sessions the relay hub hands out and the UDP port where peers
//! bind a socket to one.
//!
//! A peer attached to the hub asks to punch to another attached peer; [`Rendezvous::open`]
//! makes a session with a fresh token per side, and the hub sends each side its token. Each
//! side sends its token from the UDP socket it will punch with to [`serve_udp`]; the source
//! address of that datagram is the socket's public address as NATs rewrote it (its reflexive
//! address). When both sides are bound the hub tells each the other's address, and the peers
//! probe each other directly. Tokens only travel over the authenticated WebSocket, so a bound
//! address is known to belong to the peer the session names.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_proto::PeerId;
use p2p_proto::punch::{MAX_PUNCH_PACKET_LEN, Nonce16, PunchPacket};
use p2p_proto::relay::RelayFrame;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::RelayHub;

/// How long a session waits for both sides to bind.
pub const SESSION_TTL: Duration = Duration::from_secs(30);
/// Sessions open at once; more requests are refused until some expire.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions one peer may have asked for at once.
pub const MAX_SESSIONS_PER_PEER: usize = 64;
/// Sessions the peers of one credential may have asked for at once, so that ids made up
/// under one API key cannot fill the table.
pub const MAX_SESSIONS_PER_PRINCIPAL: usize = MAX_SESSIONS / 16;

/// Why a punch cannot be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PunchRefusal {
    #[error("hole punching is off on this tracker")]
    Disabled,
    #[error("too many punch sessions in progress")]
    Busy,
}

/// One side's part of a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub session: Nonce16,
    pub token: Nonce16,
}

#[derive(Debug)]
struct Session {
    /// The asker, then the invited peer.
    peers: [PeerId; 2],
    /// The credential the asker attached with.
    principal: String,
    /// The asker's request id.
    request: u32,
    addrs: [Option<SocketAddr>; 2],
    created: Instant,
    go_sent: bool,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<Nonce16, Session>,
    /// token → (session, side)
    tokens: HashMap<Nonce16, (Nonce16, usize)>,
}

/// Punch sessions in progress.
#[derive(Debug, Default)]
pub struct Rendezvous {
    table: Mutex<Table>,
    /// The UDP port peers bind on; 0 while hole punching is off.
    udp_port: std::sync::atomic::AtomicU16,
}

fn random16() -> Nonce16 {
    let mut out = [0u8; 16];
    // The OS RNG failing leaves zeros; a session then still works, it is only guessable, and
    // getrandom does not fail on the platforms we run on.
    let _ = getrandom::fill(&mut out);
    out
}

impl Rendezvous {
    /// Turns hole punching on, with peers binding on UDP `port`.
    pub fn enable(&self, port: u16) {
        self.udp_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
    }

    /// The UDP port peers bind on, when hole punching is on.
    pub fn udp_port(&self) -> Option<u16> {
        match self.udp_port.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    /// A new session between `asker` and `target`: the tickets of each side.
    pub fn open(
        &self,
        asker: PeerId,
        principal: &str,
        request: u32,
        target: PeerId,
    ) -> Result<[Ticket; 2], PunchRefusal> {
        self.open_at(asker, principal, request, target, Instant::now())
    }

    fn open_at(
        &self,
        asker: PeerId,
        principal: &str,
        request: u32,
        target: PeerId,
        now: Instant,
    ) -> Result<[Ticket; 2], PunchRefusal> {
        if self.udp_port().is_none() {
            return Err(PunchRefusal::Disabled);
        }
        let mut t = self.table.lock();
        expire(&mut t, now);
        let asked = t.sessions.values().filter(|s| s.peers[0] == asker).count();
        let by_principal = t
            .sessions
            .values()
            .filter(|s| s.principal == principal)
            .count();
        if t.sessions.len() >= MAX_SESSIONS
            || asked >= MAX_SESSIONS_PER_PEER
            || by_principal >= MAX_SESSIONS_PER_PRINCIPAL
        {
            return Err(PunchRefusal::Busy);
        }
        let session = random16();
        let tokens = [random16(), random16()];
        t.sessions.insert(
            session,
            Session {
                peers: [asker, target],
                principal: principal.to_owned(),
                request,
                addrs: [None, None],
                created: now,
                go_sent: false,
            },
        );
        for (side, token) in tokens.iter().enumerate() {
            t.tokens.insert(*token, (session, side));
        }
        Ok(tokens.map(|token| Ticket { session, token }))
    }

    /// Records that `token`'s socket is at `addr`. When that completes the session (the first
    /// time), returns the `PunchGo` frame for each peer: each learns the other's address.
    pub fn bind(&self, token: &Nonce16, addr: SocketAddr) -> Option<[(PeerId, RelayFrame); 2]> {
        self.bind_at(token, addr, Instant::now())
    }

    fn bind_at(
        &self,
        token: &Nonce16,
        addr: SocketAddr,
        now: Instant,
    ) -> Option<[(PeerId, RelayFrame); 2]> {
        let mut t = self.table.lock();
        expire(&mut t, now);
        let (session_id, side) = *t.tokens.get(token)?;
        let s = t.sessions.get_mut(&session_id)?;
        s.addrs[side] = Some(addr);
        let [Some(a), Some(b)] = s.addrs else {
            return None;
        };
        if s.go_sent {
            return None;
        }
        s.go_sent = true;
        let go = |addr| RelayFrame::PunchGo {
            session: session_id,
            addr,
        };
        Some([(s.peers[0], go(b)), (s.peers[1], go(a))])
    }

    /// The invited peer `decliner` will not punch in `session`: the session ends, and the
    /// asker and its request id are returned so it can be told.
    pub fn decline(&self, session: &Nonce16, decliner: &PeerId) -> Option<(PeerId, u32)> {
        let mut t = self.table.lock();
        if t.sessions.get(session)?.peers[1] != *decliner {
            return None;
        }
        let s = t.sessions.remove(session)?;
        t.tokens.retain(|_, (id, _)| id != session);
        Some((s.peers[0], s.request))
    }

    /// Whether `token` belongs to a live session.
    pub fn knows(&self, token: &Nonce16) -> bool {
        self.table.lock().tokens.contains_key(token)
    }

    /// Sessions in progress (for tests and metrics).
    pub fn sessions(&self) -> usize {
        self.table.lock().sessions.len()
    }
}

fn expire(t: &mut Table, now: Instant) {
    let before = t.sessions.len();
    t.sessions
        .retain(|_, s| now.saturating_duration_since(s.created) < SESSION_TTL);
    if t.sessions.len() != before {
        let Table { sessions, tokens } = t;
        tokens.retain(|_, (session, _)| sessions.contains_key(session));
    }
}

/// Answers `Bind` datagrams on `socket` until `shutdown`: replies `Bound` with the address the
/// datagram came from and, once both sides of a session are bound, sends them `PunchGo`.
pub async fn serve_udp(socket: UdpSocket, hub: Arc<RelayHub>, shutdown: CancellationToken) {
    let mut buf = [0u8; MAX_PUNCH_PACKET_LEN + 1];
    loop {
        let (len, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // ICMP errors from earlier replies surface here on some systems; keep serving.
                Err(e) => {
                    tracing::debug!(error = %e, "rendezvous receive failed");
                    continue;
                }
            },
        };
        let Ok(PunchPacket::Bind { token }) = PunchPacket::decode(&buf[..len]) else {
            continue;
        };
        // The reply goes only to a known token, so the port cannot reflect traffic at others.
        if !hub.punch.knows(&token) {
            continue;
        }
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let _ = socket
            .send_to(&PunchPacket::Bound { addr: from }.to_vec(), from)
            .await;
        if let Some(go) = hub.punch.bind(&token, from) {
            hub.metrics().punch_ready.inc();
            for (peer, frame) in go {
                hub.try_send_to(&peer, &frame);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_sides_learn_the_other_address_once() {
        let r = Rendezvous::default();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        assert_eq!(r.open(a, "k", 1, b), Err(PunchRefusal::Disabled));
        r.enable(8080);
        let [ta, tb] = r.open(a, "k", 1, b).unwrap();
        assert_eq!(ta.session, tb.session);
        assert_ne!(ta.token, tb.token);
        assert!(r.bind(&ta.token, addr("203.0.113.5:4000")).is_none());
        // A repeated bind (the datagram is resent until the go) moves the address.
        assert!(r.bind(&ta.token, addr("203.0.113.5:4001")).is_none());
        let go = r.bind(&tb.token, addr("198.51.100.7:5000")).unwrap();
        assert_eq!(
            go,
            [
                (
                    a,
                    RelayFrame::PunchGo {
                        session: ta.session,
                        addr: addr("198.51.100.7:5000")
                    }
                ),
                (
                    b,
                    RelayFrame::PunchGo {
                        session: ta.session,
                        addr: addr("203.0.113.5:4001")
                    }
                ),
            ]
        );
        assert!(r.bind(&tb.token, addr("198.51.100.7:5000")).is_none());
        assert!(r.bind(&[9; 16], addr("198.51.100.7:5000")).is_none());
    }

    #[test]
    fn only_the_invited_peer_declines_and_the_asker_is_named() {
        let r = Rendezvous::default();
        r.enable(1);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let [ta, _] = r.open(a, "k", 7, b).unwrap();
        assert_eq!(r.decline(&ta.session, &a), None, "the asker cannot decline");
        assert_eq!(r.decline(&ta.session, &b), Some((a, 7)));
        assert!(!r.knows(&ta.token));
        assert_eq!(r.decline(&ta.session, &b), None);
    }

    #[test]
    fn sessions_expire_and_are_bounded() {
        let r = Rendezvous::default();
        r.enable(1);
        let now = Instant::now();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let [ta, _] = r.open_at(a, "k", 1, b, now).unwrap();
        assert!(r.knows(&ta.token));
        let later = now + SESSION_TTL + Duration::from_secs(1);
        assert!(r.bind_at(&ta.token, addr("1.2.3.4:5"), later).is_none());
        assert!(!r.knows(&ta.token));
        assert_eq!(r.sessions(), 0);
        for _ in 0..MAX_SESSIONS_PER_PEER {
            r.open_at(a, "k", 1, b, later).unwrap();
        }
        assert_eq!(r.open_at(a, "k", 1, b, later), Err(PunchRefusal::Busy));
        // Made-up ids under one credential stop at its share of the table.
        let id = |n: u16| {
            let mut id = [0u8; 32];
            id[..2].copy_from_slice(&n.to_be_bytes());
            PeerId(id)
        };
        let mut opened = MAX_SESSIONS_PER_PEER;
        for n in 1..=(MAX_SESSIONS_PER_PRINCIPAL / MAX_SESSIONS_PER_PEER) as u16 {
            for _ in 0..MAX_SESSIONS_PER_PEER {
                if r.open_at(id(n), "k", 1, b, later).is_ok() {
                    opened += 1;
                }
            }
        }
        assert_eq!(opened, MAX_SESSIONS_PER_PRINCIPAL);
        assert_eq!(
            r.open_at(id(999), "k", 1, b, later),
            Err(PunchRefusal::Busy)
        );
        // Other credentials fill the rest, and then the table is full.
        let mut key = 0u32;
        while r.sessions() < MAX_SESSIONS {
            key += 1;
            let principal = format!("key-{key}");
            for n in 0..(MAX_SESSIONS_PER_PRINCIPAL / MAX_SESSIONS_PER_PEER) as u16 {
                for _ in 0..MAX_SESSIONS_PER_PEER {
                    if r.sessions() < MAX_SESSIONS {
                        r.open_at(id(1000 + key as u16 * 16 + n), &principal, 1, b, later)
                            .unwrap();
                    }
                }
            }
        }
        assert_eq!(
            r.open_at(PeerId([0xff; 32]), "other", 1, b, later),
            Err(PunchRefusal::Busy)
        );
    }
}
