//! The dashboard's non-visual logic: formatting, the session, the event log, sorting and the
//! chart series. Plain Rust, tested natively with `cargo test -p p2p-web`.

use std::collections::VecDeque;

use p2p_proto::api::{
    ConnectionPathKind, Event, EventMessage, FileSummary, LeaveReason, LoginResponse,
    PeerConnection, role,
};
use serde::{Deserialize, Serialize};

/// `1536` → `1.5 KiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago `then_ms` was, coarsely: `just now`, `42 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn format_ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=4 => "just now".to_owned(),
        5..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The first 8 and last 4 characters of a long hex id.
pub fn short_id(id: &str) -> String {
    if id.len() <= 16 {
        id.to_owned()
    } else {
        format!("{}…{}", &id[..8], &id[id.len() - 4..])
    }
}

/// A peer's connections counted by path: `2 direct, 1 relayed`, or `–` for none.
pub fn format_connections(connections: &[PeerConnection]) -> String {
    let counts: Vec<String> = [
        ConnectionPathKind::Direct,
        ConnectionPathKind::HolePunched,
        ConnectionPathKind::Relayed,
    ]
    .into_iter()
    .filter_map(|path| {
        let n = connections.iter().filter(|c| c.path == path).count();
        (n > 0).then(|| format!("{n} {path}"))
    })
    .collect();
    if counts.is_empty() {
        "–".to_owned()
    } else {
        counts.join(", ")
    }
}

/// The logged-in session, kept in the browser's session storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub subject: String,
    pub expires_at_ms: u64,
    /// `admin` manages; anything else only looks (a session stored before roles: no role).
    #[serde(default)]
    pub role: String,
}

impl Session {
    pub fn from_login(resp: &LoginResponse) -> Self {
        Self {
            token: resp.token.clone(),
            subject: resp.subject.clone(),
            expires_at_ms: resp.expires_at_ms,
            role: resp.role.clone(),
        }
    }

    /// Whether the dashboard offers management (the tracker checks again on every change).
    pub fn is_admin(&self) -> bool {
        self.role == role::ADMIN
    }

    /// Expired, or expiring within the next 5 seconds.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms + 5_000 >= self.expires_at_ms
    }
}

/// `http://host` → `ws://host/ws?token=…` (and https → wss).
pub fn ws_url(origin: &str, token: &str) -> String {
    let ws_origin = if let Some(rest) = origin.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = origin.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        origin.to_owned()
    };
    format!("{ws_origin}/ws?token={}", percent_encode(token))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Increasing number, a stable key for the view.
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: &'static str,
    pub text: String,
}

/// What an event says, in words; `None` for protocol messages not worth logging.
pub fn describe(event: &Event) -> Option<(&'static str, String)> {
    Some(match event {
        Event::PeerJoined {
            peer_id,
            addresses,
            port,
            relay_only,
            observed_ip,
        } => {
            let how = if *relay_only { " (relay only)" } else { "" };
            // A peer that registered no address is reached where the tracker saw it.
            let at = addresses
                .first()
                .map(String::as_str)
                .or(Some(observed_ip.as_str()).filter(|ip| !ip.is_empty()))
                .unwrap_or("?");
            let at = if at.contains(':') {
                format!("[{at}]")
            } else {
                at.to_owned()
            };
            (
                "join",
                format!(
                    "peer {} joined at {at}:{port}{how}",
                    short_id(&peer_id.to_string())
                ),
            )
        }
        Event::PeerLeft { peer_id, reason } => {
            let why = match reason {
                LeaveReason::Unregistered => "left",
                LeaveReason::Expired => "timed out",
                LeaveReason::Removed => "was removed by an admin",
            };
            (
                "leave",
                format!("peer {} {why}", short_id(&peer_id.to_string())),
            )
        }
        Event::FileAnnounced {
            name,
            size,
            peer_id,
            complete,
            created,
            ..
        } => {
            let what = if *created {
                "shared new file"
            } else {
                "announced"
            };
            let part = if *complete { "" } else { " (partial)" };
            (
                "announce",
                format!(
                    "peer {} {what} {name} ({}){part}",
                    short_id(&peer_id.to_string()),
                    format_bytes(*size)
                ),
            )
        }
        Event::FileUnannounced { file_id, peer_id } => (
            "announce",
            format!(
                "peer {} stopped sharing file {}",
                short_id(&peer_id.to_string()),
                short_id(&file_id.to_string())
            ),
        ),
        Event::FileRemoved { file_id, name } => (
            "remove",
            format!(
                "file {name} ({}) was removed by an admin",
                short_id(&file_id.to_string())
            ),
        ),
        Event::RelayConnected { peer_id } => (
            "relay",
            format!(
                "peer {} connected to the relay",
                short_id(&peer_id.to_string())
            ),
        ),
        Event::RelayDisconnected { peer_id } => (
            "relay",
            format!("peer {} left the relay", short_id(&peer_id.to_string())),
        ),
        Event::TunnelOpened { from, to } => (
            "relay",
            format!(
                "relay tunnel {} → {} opened",
                short_id(&from.to_string()),
                short_id(&to.to_string())
            ),
        ),
        Event::TunnelClosed {
            from,
            to,
            bytes,
            reason,
        } => (
            "relay",
            format!(
                "relay tunnel {} → {} closed after {} ({reason})",
                short_id(&from.to_string()),
                short_id(&to.to_string()),
                format_bytes(*bytes)
            ),
        ),
        Event::Lagged { missed } => ("warn", format!("{missed} events were missed")),
        _ => return None,
    })
}

/// The live event log: newest first, bounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventLog {
    lines: VecDeque<LogLine>,
    next_seq: u64,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(capacity),
            next_seq: 0,
            capacity,
        }
    }

    /// Adds an event; returns whether it was worth a line.
    pub fn push(&mut self, msg: &EventMessage) -> bool {
        let Some((kind, text)) = describe(&msg.event) else {
            return false;
        };
        if self.lines.len() == self.capacity {
            self.lines.pop_back();
        }
        self.lines.push_front(LogLine {
            seq: self.next_seq,
            ts_ms: msg.ts_ms,
            kind,
            text,
        });
        self.next_seq += 1;
        true
    }

    /// Newest first.
    pub fn lines(&self) -> impl Iterator<Item = &LogLine> {
        self.lines.iter()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Columns the files table sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSort {
    Name,
    Size,
    Seeders,
    Chunks,
    Newest,
}

/// Filters by a case-insensitive name substring and sorts.
pub fn filter_and_sort(
    files: &[FileSummary],
    query: &str,
    by: FileSort,
    descending: bool,
) -> Vec<FileSummary> {
    let needle = query.trim().to_lowercase();
    let mut out: Vec<FileSummary> = files
        .iter()
        .filter(|f| needle.is_empty() || f.name.to_lowercase().contains(&needle))
        .cloned()
        .collect();
    out.sort_by(|a, b| {
        let order = match by {
            FileSort::Name => a.name.to_lowercase().cmp(&b.name.to_lowercase()),
            FileSort::Size => a.size.cmp(&b.size),
            FileSort::Seeders => a.seeders.cmp(&b.seeders),
            FileSort::Chunks => a.chunk_count.cmp(&b.chunk_count),
            FileSort::Newest => a.created_at_ms.cmp(&b.created_at_ms),
        };
        let order = order.then_with(|| a.id.cmp(&b.id));
        if descending { order.reverse() } else { order }
    });
    out
}

/// Samples over time for the chart: peers online and events seen, one point per sample,
/// covering the last `window_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    points: VecDeque<(u64, u64, u64)>,
    window_ms: u64,
}

impl Series {
    pub fn new(window_ms: u64) -> Self {
        Self {
            points: VecDeque::new(),
            window_ms,
        }
    }

    /// Records `peers_online` and `events` (since the last sample) at `now_ms`.
    pub fn sample(&mut self, now_ms: u64, peers_online: u64, events: u64) {
        self.points.push_back((now_ms, peers_online, events));
        while let Some(&(t, _, _)) = self.points.front() {
            if now_ms.saturating_sub(t) > self.window_ms {
                self.points.pop_front();
            } else {
                break;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// SVG polyline points for peers online, scaled into `width` × `height` (y grows down).
    pub fn peers_polyline(&self, width: f64, height: f64) -> String {
        self.polyline(width, height, |p| p.1)
    }

    /// SVG polyline points for events per sample.
    pub fn events_polyline(&self, width: f64, height: f64) -> String {
        self.polyline(width, height, |p| p.2)
    }

    /// The largest peers-online value in the window (the chart's scale).
    pub fn peak_peers(&self) -> u64 {
        self.points.iter().map(|p| p.1).max().unwrap_or(0)
    }

    fn polyline(&self, width: f64, height: f64, value: impl Fn(&(u64, u64, u64)) -> u64) -> String {
        let (Some(first), Some(last)) = (self.points.front(), self.points.back()) else {
            return String::new();
        };
        let span = (last.0 - first.0).max(1) as f64;
        let peak = self.points.iter().map(&value).max().unwrap_or(0).max(1) as f64;
        let points = self
            .points
            .iter()
            .map(|p| {
                let x = (p.0 - first.0) as f64 / span * width;
                let y = height - value(p) as f64 / peak * height;
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>();
        if self.points.len() == 1 {
            // One sample so far: a level line at its value.
            let y = height - value(first) as f64 / peak * height;
            return format!("0.0,{y:.1} {width:.1},{y:.1}");
        }
        points.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2p_proto::{FileId, PeerId, Sha256Hash};

    #[test]
    fn bytes_and_times() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(format_bytes(u64::MAX), "16384 PiB");
        assert_eq!(format_ago(10_000, 9_000), "just now");
        assert_eq!(format_ago(100_000, 58_000), "42 s ago");
        assert_eq!(format_ago(400_000, 100_000), "5 min ago");
        assert_eq!(format_ago(4 * 3_600_000, 0), "4 h ago");
        assert_eq!(format_ago(0, 5), "just now", "clock skew is not negative");
        assert_eq!(short_id(&"ab".repeat(32)), "abababab…abab");
        assert_eq!(short_id("short"), "short");
    }

    #[test]
    fn a_peer_joins_at_its_first_address_or_where_the_tracker_saw_it() {
        let joined = |addresses: &[&str], observed_ip: &str| {
            describe(&Event::PeerJoined {
                peer_id: PeerId([7; 32]),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
                port: 6931,
                relay_only: false,
                observed_ip: observed_ip.into(),
            })
            .map(|(_, text)| text)
        };
        let id = short_id(&PeerId([7; 32]).to_string());
        let said = |at: &str| Some(format!("peer {id} joined at {at}"));
        assert_eq!(
            joined(&["192.0.2.1"], "203.0.113.5"),
            said("192.0.2.1:6931")
        );
        assert_eq!(joined(&[], "203.0.113.5"), said("203.0.113.5:6931"));
        assert_eq!(joined(&[], "2001:db8::1"), said("[2001:db8::1]:6931"));
        assert_eq!(joined(&[], ""), said("?:6931"));
    }

    #[test]
    fn connections_are_counted_by_path() {
        let to = |n, path| PeerConnection {
            peer_id: PeerId([n; 32]),
            path,
        };
        assert_eq!(format_connections(&[]), "–");
        assert_eq!(
            format_connections(&[
                to(1, ConnectionPathKind::Relayed),
                to(2, ConnectionPathKind::Direct),
                to(3, ConnectionPathKind::Direct),
                to(4, ConnectionPathKind::HolePunched),
            ]),
            "2 direct, 1 hole-punched, 1 relayed"
        );
    }

    #[test]
    fn session_expiry_and_ws_url() {
        let s = Session {
            token: "a.b+c".into(),
            subject: "admin".into(),
            expires_at_ms: 100_000,
            role: "viewer".into(),
        };
        assert!(!s.is_admin());
        assert!(!s.is_expired(90_000));
        assert!(s.is_expired(96_000));
        assert_eq!(
            ws_url("http://h:8080", &s.token),
            "ws://h:8080/ws?token=a.b%2Bc"
        );
        assert_eq!(ws_url("https://x.org", "t"), "wss://x.org/ws?token=t");
    }

    #[test]
    fn sessions_know_admins_and_old_ones_are_viewers() {
        let login = LoginResponse {
            token: "t".into(),
            token_type: "Bearer".into(),
            expires_in: 60,
            expires_at_ms: 60_000,
            subject: "root".into(),
            role: "admin".into(),
        };
        assert!(Session::from_login(&login).is_admin());
        // A session stored before sessions kept their role does not manage.
        let old: Session =
            serde_json::from_str(r#"{"token":"t","subject":"admin","expires_at_ms":1}"#).unwrap();
        assert!(!old.is_admin());
    }

    #[test]
    fn removals_are_told_in_words() {
        let (kind, text) = describe(&Event::FileRemoved {
            file_id: FileId([7; 32]),
            name: "old.iso".into(),
        })
        .unwrap();
        assert_eq!(kind, "remove");
        assert_eq!(text, "file old.iso (07070707…0707) was removed by an admin");
        let (_, text) = describe(&Event::PeerLeft {
            peer_id: PeerId([9; 32]),
            reason: LeaveReason::Removed,
        })
        .unwrap();
        assert_eq!(text, "peer 09090909…0909 was removed by an admin");
    }

    fn msg(event: Event) -> EventMessage {
        EventMessage { ts_ms: 1, event }
    }

    #[test]
    fn event_log_is_newest_first_and_bounded() {
        let mut log = EventLog::new(3);
        assert!(
            !log.push(&msg(Event::Hello {
                version: "1".into()
            })),
            "hello is not logged"
        );
        for i in 0..5u8 {
            log.push(&msg(Event::PeerLeft {
                peer_id: PeerId([i; 32]),
                reason: LeaveReason::Expired,
            }));
        }
        assert_eq!(log.len(), 3);
        let seqs: Vec<u64> = log.lines().map(|l| l.seq).collect();
        assert_eq!(seqs, vec![4, 3, 2]);
        let first = log.lines().next().unwrap();
        assert_eq!(first.kind, "leave");
        assert_eq!(first.text, "peer 04040404…0404 timed out");
        let (kind, text) = describe(&Event::FileAnnounced {
            file_id: FileId([1; 32]),
            name: "a.iso".into(),
            size: 2048,
            peer_id: PeerId([2; 32]),
            complete: false,
            created: true,
        })
        .unwrap();
        assert_eq!(kind, "announce");
        assert_eq!(
            text,
            "peer 02020202…0202 shared new file a.iso (2.0 KiB) (partial)"
        );
    }

    fn file(name: &str, size: u64, seeders: u64, created: u64) -> FileSummary {
        FileSummary {
            id: FileId([created as u8; 32]),
            name: name.into(),
            size,
            chunk_size: 262_144,
            chunk_count: size.div_ceil(262_144),
            merkle_root: Sha256Hash([0; 32]),
            seeders,
            leechers: 0,
            created_at_ms: created,
        }
    }

    #[test]
    fn files_filter_and_sort() {
        let files = vec![
            file("b.iso", 10, 1, 1),
            file("A.txt", 30, 3, 2),
            file("c.iso", 20, 2, 3),
        ];
        let names = |v: Vec<FileSummary>| v.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(
            names(filter_and_sort(&files, "", FileSort::Name, false)),
            ["A.txt", "b.iso", "c.iso"]
        );
        assert_eq!(
            names(filter_and_sort(&files, "ISO", FileSort::Size, true)),
            ["c.iso", "b.iso"]
        );
        assert_eq!(
            names(filter_and_sort(&files, "", FileSort::Seeders, true)),
            ["A.txt", "c.iso", "b.iso"]
        );
        assert_eq!(
            names(filter_and_sort(&files, "", FileSort::Newest, true)),
            ["c.iso", "A.txt", "b.iso"]
        );
        assert!(filter_and_sort(&files, "zzz", FileSort::Name, false).is_empty());
    }

    #[test]
    fn series_window_and_polyline() {
        let mut s = Series::new(10_000);
        assert_eq!(s.peers_polyline(100.0, 50.0), "");
        s.sample(0, 2, 0);
        assert_eq!(
            s.peers_polyline(100.0, 50.0),
            "0.0,0.0 100.0,0.0",
            "one sample: a level line"
        );
        s = Series::new(10_000);
        s.sample(0, 0, 0);
        s.sample(5_000, 2, 1);
        s.sample(10_000, 4, 3);
        assert_eq!(
            s.peers_polyline(100.0, 50.0),
            "0.0,50.0 50.0,25.0 100.0,0.0"
        );
        assert_eq!(s.peak_peers(), 4);
        s.sample(15_000, 1, 0);
        assert_eq!(s.len(), 3, "points older than the window fall out");
        assert_eq!(s.events_polyline(10.0, 10.0), "0.0,6.7 5.0,0.0 10.0,10.0");
    }
}
