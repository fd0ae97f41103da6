//! The hole-punch rendezvous: sessions the relay hub hands out and the UDP port where peers
//! bind a socket to one.
//!
//! A peer attached to the hub asks to punch to another attached peer; [`Rendezvous::open`]
//! makes a session with a fresh token per side, and the hub sends each side its token. Each
//! side sends its token in a `Bind` from the UDP socket it will punch with to [`serve_udp`];
//! the source address of that datagram is the socket's public address as NATs rewrote it (its
//! reflexive address). Tokens only travel over the authenticated WebSocket, so only the peer
//! the session names can bind, but a peer can forge the source address of its `Bind`. So the
//! address is not believed yet: the rendezvous answers a `Check` with a cookie at that address
//! ([`bind_cookie`]: a MAC of token and address, nothing stored), and records the address only
//! when a `Confirm` brings the cookie back from it. When both sides are confirmed the hub tells
//! each the other's address, and the peers probe each other directly. A forged `Bind` thus
//! costs its target one `Check` (no larger than the `Bind`), and at most [`MAX_CHECKS_PER_SIDE`]
//! per session side, and never a probe.
//!
//! Fairness: a session counts against the peer that asked and its credential, each with a
//! share of the table, and leaves the table as soon as both sides are told to probe (or after
//! [`SESSION_TTL`]), so one credential cannot keep others from punching.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_proto::PeerId;
use p2p_proto::punch::{MAX_PUNCH_PACKET_LEN, Nonce16, PunchPacket, bind_cookie, nonces_equal};
use p2p_proto::relay::RelayFrame;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::RelayHub;

/// How long a session waits for both sides to confirm (peers give up binding after 5 s).
pub const SESSION_TTL: Duration = Duration::from_secs(10);
/// Sessions open at once; more requests are refused until some end.
pub const MAX_SESSIONS: usize = 4096;
/// Sessions one peer may have asked for at once.
pub const MAX_SESSIONS_PER_PEER: usize = 64;
/// Sessions the peers of one credential may have asked for at once, so that ids made up
/// under one API key cannot fill the table.
pub const MAX_SESSIONS_PER_PRINCIPAL: usize = MAX_SESSIONS / 16;
/// `Check`s sent for one side of a session: a peer resends `Bind` until one arrives, so a few
/// cover loss; more would let one token aim datagrams at an address it does not own.
pub const MAX_CHECKS_PER_SIDE: u8 = 8;

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

/// What a good `Confirm` leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// The address is recorded; the other side has not confirmed yet.
    Waiting,
    /// Both sides are confirmed: the `PunchGo` for each peer. The session is over.
    Ready(Box<[(PeerId, RelayFrame); 2]>),
}

#[derive(Debug)]
struct Session {
    /// The asker, then the invited peer.
    peers: [PeerId; 2],
    /// The credential the asker attached with.
    principal: String,
    /// The asker's request id.
    request: u32,
    /// Confirmed addresses.
    addrs: [Option<SocketAddr>; 2],
    /// `Check`s sent per side.
    checks: [u8; 2],
    created: Instant,
}

#[derive(Debug, Default)]
struct Table {
    sessions: HashMap<Nonce16, Session>,
    /// token → (session, side)
    tokens: HashMap<Nonce16, (Nonce16, usize)>,
}

impl Table {
    fn remove(&mut self, session: &Nonce16) -> Option<Session> {
        let s = self.sessions.remove(session)?;
        self.tokens.retain(|_, (id, _)| id != session);
        Some(s)
    }
}

/// Punch sessions in progress.
#[derive(Debug)]
pub struct Rendezvous {
    table: Mutex<Table>,
    /// The UDP port peers bind on; 0 while hole punching is off.
    udp_port: std::sync::atomic::AtomicU16,
    /// Keys the cookies of `Check`; made at start, never leaves the tracker.
    cookie_key: [u8; 32],
}

impl Default for Rendezvous {
    fn default() -> Self {
        let mut cookie_key = [0u8; 32];
        // See `random16`: zeros only on a platform without an OS RNG.
        let _ = getrandom::fill(&mut cookie_key);
        Self {
            table: Mutex::default(),
            udp_port: Default::default(),
            cookie_key,
        }
    }
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
                checks: [0, 0],
                created: now,
            },
        );
        for (side, token) in tokens.iter().enumerate() {
            t.tokens.insert(*token, (session, side));
        }
        Ok(tokens.map(|token| Ticket { session, token }))
    }

    /// The answer to a `Bind` of `token` from `from`: a `Check` to send there, unless the
    /// token is unknown or its side had its share of checks.
    pub fn check(&self, token: &Nonce16, from: SocketAddr) -> Option<PunchPacket> {
        self.check_at(token, from, Instant::now())
    }

    fn check_at(&self, token: &Nonce16, from: SocketAddr, now: Instant) -> Option<PunchPacket> {
        let mut t = self.table.lock();
        expire(&mut t, now);
        let (session, side) = *t.tokens.get(token)?;
        let s = t.sessions.get_mut(&session)?;
        if s.checks[side] >= MAX_CHECKS_PER_SIDE {
            return None;
        }
        s.checks[side] += 1;
        let cookie = bind_cookie(&self.cookie_key, token, &from);
        Some(PunchPacket::Check { cookie })
    }

    /// A `Confirm` of `token` with `cookie` from `from`: records `from` as that side's address
    /// when the cookie is the one sent to `from`. `None`: unknown token or wrong cookie.
    pub fn confirm(
        &self,
        token: &Nonce16,
        cookie: &Nonce16,
        from: SocketAddr,
    ) -> Option<Confirmed> {
        self.confirm_at(token, cookie, from, Instant::now())
    }

    fn confirm_at(
        &self,
        token: &Nonce16,
        cookie: &Nonce16,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Confirmed> {
        if !nonces_equal(cookie, &bind_cookie(&self.cookie_key, token, &from)) {
            return None;
        }
        let mut t = self.table.lock();
        expire(&mut t, now);
        let (session_id, side) = *t.tokens.get(token)?;
        let s = t.sessions.get_mut(&session_id)?;
        s.addrs[side] = Some(from);
        let [Some(a), Some(b)] = s.addrs else {
            return Some(Confirmed::Waiting);
        };
        let peers = s.peers;
        // Both sides know where to probe: nothing is left for the rendezvous to do.
        t.remove(&session_id);
        let go = |addr| RelayFrame::PunchGo {
            session: session_id,
            addr,
        };
        Some(Confirmed::Ready(Box::new([
            (peers[0], go(b)),
            (peers[1], go(a)),
        ])))
    }

    /// The invited peer `decliner` will not punch in `session`: the session ends, and the
    /// asker and its request id are returned so it can be told.
    pub fn decline(&self, session: &Nonce16, decliner: &PeerId) -> Option<(PeerId, u32)> {
        let mut t = self.table.lock();
        if t.sessions.get(session)?.peers[1] != *decliner {
            return None;
        }
        let s = t.remove(session)?;
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

/// Answers datagrams on `socket` until `shutdown`: a `Bind` gets a `Check` at its source
/// address, a good `Confirm` gets `Bound` and, once both sides of a session are confirmed,
/// sends them `PunchGo`. Anything else gets nothing, so the port reflects no traffic.
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
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let reply = match PunchPacket::decode(&buf[..len]) {
            Ok(PunchPacket::Bind { token }) => hub.punch.check(&token, from),
            Ok(PunchPacket::Confirm { token, cookie }) => {
                match hub.punch.confirm(&token, &cookie, from) {
                    None => None,
                    Some(confirmed) => {
                        if let Confirmed::Ready(go) = confirmed {
                            hub.metrics().punch_ready.inc();
                            for (peer, frame) in *go {
                                hub.try_send_to(&peer, &frame);
                            }
                        }
                        Some(PunchPacket::Bound { addr: from })
                    }
                }
            }
            _ => None,
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply.to_vec(), from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Binds `ticket`'s side at `at` the honest way: `Bind`, `Check`, `Confirm`.
    fn bind(r: &Rendezvous, ticket: &Ticket, at: SocketAddr) -> Option<Confirmed> {
        let Some(PunchPacket::Check { cookie }) = r.check(&ticket.token, at) else {
            panic!("no check for a live token");
        };
        r.confirm(&ticket.token, &cookie, at)
    }

    #[test]
    fn both_sides_learn_the_other_confirmed_address_once() {
        let r = Rendezvous::default();
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        assert_eq!(r.open(a, "k", 1, b), Err(PunchRefusal::Disabled));
        r.enable(8080);
        let [ta, tb] = r.open(a, "k", 1, b).unwrap();
        assert_eq!(ta.session, tb.session);
        assert_ne!(ta.token, tb.token);
        assert_eq!(
            bind(&r, &ta, addr("203.0.113.5:4000")),
            Some(Confirmed::Waiting)
        );
        // A later confirmation (the socket moved) moves the address.
        assert_eq!(
            bind(&r, &ta, addr("203.0.113.5:4001")),
            Some(Confirmed::Waiting)
        );
        let go = bind(&r, &tb, addr("198.51.100.7:5000"));
        assert_eq!(
            go,
            Some(Confirmed::Ready(Box::new([
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
            ])))
        );
        // The session is over: it holds no place in the table, and its tokens are dead.
        assert_eq!(r.sessions(), 0);
        assert!(r.check(&tb.token, addr("198.51.100.7:5000")).is_none());
        assert!(r.check(&[9; 16], addr("198.51.100.7:5000")).is_none());
    }

    #[test]
    fn a_forged_source_address_is_never_confirmed() {
        let r = Rendezvous::default();
        r.enable(1);
        let (a, b) = (PeerId([1; 32]), PeerId([2; 32]));
        let [ta, tb] = r.open(a, "k", 1, b).unwrap();
        let victim = addr("192.0.2.1:53");
        let attacker = addr("198.51.100.66:4000");
        // A Bind "from" the victim: the cookie goes to the victim, and the attacker's guesses
        // (or the cookie of another address or token) confirm nothing.
        let Some(PunchPacket::Check { cookie }) = r.check(&ta.token, victim) else {
            panic!("no check");
        };
        assert_eq!(r.confirm(&ta.token, &[0; 16], victim), None);
        assert_eq!(r.confirm(&ta.token, &cookie, attacker), None);
        assert_eq!(r.confirm(&tb.token, &cookie, victim), None);
        let Some(PunchPacket::Check { cookie: own }) = r.check(&ta.token, attacker) else {
            panic!("no check");
        };
        assert_eq!(r.confirm(&ta.token, &own, victim), None);
        // The other side confirms; without A's confirmation nobody is told to probe.
        assert_eq!(
            bind(&r, &tb, addr("203.0.113.5:4000")),
            Some(Confirmed::Waiting)
        );
        // One token gets a bounded number of checks, wherever its Binds claim to come from.
        let mut checks = 2;
        for port in 0..100 {
            checks += usize::from(
                r.check(&ta.token, addr(&format!("192.0.2.1:{port}")))
                    .is_some(),
            );
        }
        assert_eq!(checks, usize::from(MAX_CHECKS_PER_SIDE));
        assert_eq!(r.sessions(), 1);
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
        assert!(r.check_at(&ta.token, addr("1.2.3.4:5"), later).is_none());
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
