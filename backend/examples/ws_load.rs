//! Load for `bench/ws/run.sh`: holds idle WebSockets open against a running tracker and reads
//! the tracker's resident memory (`VmRSS` of its pid) after each step:
//!
//! 1. `RELAY_PEERS` relay attachments (`/relay`, each with its own X25519 key and the attach
//!    proof);
//! 2. `TUNNELS` tunnels between them: attached peers in pairs, the first of each pair opening
//!    streams to the second (the second hears `Incoming` for each);
//! 3. `WS_SOCKETS` authenticated `/ws` event-feed sockets (the API key as `?token=`), each
//!    confirmed by its `hello`.
//!
//! Every socket then stays idle; a task per socket reads it (answering the tracker's pings).
//! The tracker's own gauges (`/metrics`) must agree with the counts. Prints one line per step.
//!
//! Usage: ws_load BASE_URL API_KEY TRACKER_PID WS_SOCKETS RELAY_PEERS TUNNELS
//! Loopback only: the sockets come from 127.x.y.z source addresses (so more than one range of
//! ephemeral ports is available); the tracker must listen on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use curve25519_dalek::montgomery::MontgomeryPoint;
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::{SinkExt, future};
use p2p_proto::PeerId;
use p2p_proto::relay::{RelayFrame, proof_mac};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

type Ws = WebSocketStream<TcpStream>;

/// Sockets being opened at once (the tracker's waiting room for unproven relay attachments
/// holds 256 by default).
const CONCURRENCY: usize = 128;
/// Bound on opening one socket (connect, upgrade, first message or proof).
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a whole step.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause before reading the memory after a step: the tracker finishes what it queued.
const SETTLE: Duration = Duration::from_secs(3);
/// Sockets per source address: well under the ~28 000 ephemeral ports of one address.
const PER_SOURCE: usize = 10_000;

struct Target {
    host: SocketAddr,
    base: String,
    key: String,
    /// Second octet of this run's source addresses (so two runs in a row do not meet each
    /// other's TIME_WAIT sockets).
    run: u8,
}

impl Target {
    /// A TCP connection from the `i`-th socket's source address.
    async fn connect(&self, i: usize) -> anyhow::Result<TcpStream> {
        let block = u8::try_from(i / PER_SOURCE).context("too many sockets")?;
        let source = Ipv4Addr::new(127, self.run, block, 1);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((source, 0)))?;
        let stream = socket.connect(self.host).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A WebSocket to `path_and_query` (small buffers: this process holds many).
    async fn websocket(&self, i: usize, path_and_query: &str) -> anyhow::Result<Ws> {
        let tcp = self.connect(i).await?;
        let url = format!("ws://{}{path_and_query}", self.host);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = client_async_with_config(url, tcp, Some(config)).await?;
        Ok(ws)
    }
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    line.split_whitespace()
        .nth(1)
        .context("VmRSS without a figure")?
        .parse()
        .context("VmRSS figure")
}

/// A gauge from the tracker's `/metrics`.
async fn gauge(target: &Target, name: &str) -> anyhow::Result<i64> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", target.base))
        .header("X-API-Key", &target.key)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("{name} not in /metrics"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("gauge value")?
        .parse::<f64>()? as i64)
}

/// Runs `open(i)` for every `i` in `range`, `CONCURRENCY` at a time; fails on the first error.
async fn open_all<T, F, Fut>(range: std::ops::Range<usize>, open: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let opened = future::try_join_all(range.map(|i| {
        let gate = gate.clone();
        let fut = open(i);
        async move {
            let _permit = gate.acquire().await?;
            tokio::time::timeout(OPEN_TIMEOUT, fut)
                .await
                .with_context(|| format!("socket {i} took over {OPEN_TIMEOUT:?} to open"))?
                .with_context(|| format!("socket {i}"))
        }
    }));
    tokio::time::timeout(STEP_TIMEOUT, opened)
        .await
        .context("step timed out")?
}

/// One relay attachment: a fresh key, the proof, `Attached`.
async fn attach(target: &Target, i: usize) -> anyhow::Result<(PeerId, Ws)> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let peer_id = PeerId(MontgomeryPoint::mul_base_clamped(secret).to_bytes());
    let mut ws = target
        .websocket(i, &format!("/relay?peer_id={peer_id}&token={}", target.key))
        .await?;
    let Some(RelayFrame::Challenge { server_key, nonce }) = next_frame(&mut ws).await? else {
        bail!("expected a challenge");
    };
    let shared = MontgomeryPoint(server_key).mul_clamped(secret).to_bytes();
    let proof = RelayFrame::Proof {
        peer_id,
        mac: proof_mac(&shared, &server_key, &nonce, &peer_id),
    };
    ws.send(Message::Binary(proof.to_vec().into())).await?;
    match next_frame(&mut ws).await? {
        Some(RelayFrame::Attached) => Ok((peer_id, ws)),
        other => bail!("expected Attached, got {other:?}"),
    }
}

/// The next relay frame, skipping pings; `None` when the socket closes.
async fn next_frame(ws: &mut Ws) -> anyhow::Result<Option<RelayFrame>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(Some(RelayFrame::decode(b)?)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// An authenticated `/ws` socket, once its `hello` arrived.
async fn event_feed(target: &Target, i: usize) -> anyhow::Result<Ws> {
    let mut ws = target
        .websocket(i, &format!("/ws?token={}", target.key))
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.contains("\"hello\"") => Ok(ws),
        other => bail!("expected hello, got {other:?}"),
    }
}

/// Keeps reading `ws` (pings are answered while reading) until it closes; counts the relay
/// `Incoming` frames it hears in `incoming`.
fn keep_reading(
    mut ws: impl futures_util::Stream<Item = WsResult> + Unpin + Send + 'static,
    incoming: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Binary(b) = msg
                && b.first() == Some(&0x11)
            {
                incoming.fetch_add(1, Ordering::Relaxed);
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    });
}

type WsResult = Result<Message, tokio_tungstenite::tungstenite::Error>;

struct Step {
    name: &'static str,
    count: usize,
    rss_before: u64,
    rss_after: u64,
}

impl Step {
    fn print(&self) {
        let grown = self.rss_after.saturating_sub(self.rss_before);
        let each = grown as f64 / self.count.max(1) as f64;
        let per_gib = if each > 0.0 {
            format!("{:.0}", 1024.0 * 1024.0 / each)
        } else {
            "-".into()
        };
        println!(
            "{:<22} {:>7} {:>10.1} {:>10.2} {:>12}",
            self.name,
            self.count,
            grown as f64 / 1024.0,
            each,
            per_gib
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, key, pid, ws_sockets, relay_peers, tunnels] = args.as_slice() else {
        bail!("usage: ws_load BASE_URL API_KEY TRACKER_PID WS_SOCKETS RELAY_PEERS TUNNELS");
    };
    let pid: u32 = pid.parse().context("TRACKER_PID")?;
    let ws_sockets: usize = ws_sockets.parse().context("WS_SOCKETS")?;
    let relay_peers: usize = relay_peers.parse().context("RELAY_PEERS")?;
    let tunnels: usize = tunnels.parse().context("TUNNELS")?;
    ensure!(
        tunnels == 0 || relay_peers >= 2,
        "tunnels need at least two relay peers"
    );
    let host: SocketAddr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("BASE_URL must be http://127.0.0.1:PORT")?;
    ensure!(host.ip().is_loopback(), "loopback only");
    let target = Arc::new(Target {
        host,
        base: base.trim_end_matches('/').to_owned(),
        key: key.clone(),
        run: 10 + (std::process::id() % 200) as u8,
    });
    let incoming = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let mut steps = Vec::new();
    tokio::time::sleep(SETTLE).await;
    let baseline = rss_kib(pid)?;

    // 1. Relay attachments.
    let started = Instant::now();
    let before = rss_kib(pid)?;
    let attached = open_all(0..relay_peers, |i| {
        let target = target.clone();
        async move { attach(&target, i).await }
    })
    .await
    .context("relay attachments")?;
    let mut peers = Vec::with_capacity(attached.len());
    let mut sinks: Vec<SplitSink<Ws, Message>> = Vec::with_capacity(attached.len());
    for (peer_id, ws) in attached {
        let (sink, stream) = ws.split();
        keep_reading(stream, incoming.clone(), closed.clone());
        peers.push(peer_id);
        sinks.push(sink);
    }
    eprintln!("{relay_peers} relay attachments in {:?}", started.elapsed());
    tokio::time::sleep(SETTLE).await;
    steps.push(Step {
        name: "relay attachments",
        count: relay_peers,
        rss_before: before,
        rss_after: rss_kib(pid)?,
    });

    // 2. Tunnels: pair p opens streams to p + 1, round-robin over the pairs.
    let started = Instant::now();
    let before = rss_kib(pid)?;
    let pairs = relay_peers / 2;
    for t in 0..tunnels {
        let pair = t % pairs.max(1);
        let stream = u32::try_from(t / pairs.max(1) + 1)?;
        let open = RelayFrame::Open {
            stream,
            to: peers[2 * pair + 1],
        };
        sinks[2 * pair]
            .send(Message::Binary(open.to_vec().into()))
            .await?;
    }
    let deadline = Instant::now() + STEP_TIMEOUT;
    while incoming.load(Ordering::Relaxed) < tunnels {
        ensure!(
            Instant::now() < deadline,
            "only {} of {tunnels} tunnels opened",
            incoming.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{tunnels} tunnels in {:?}", started.elapsed());
    tokio::time::sleep(SETTLE).await;
    steps.push(Step {
        name: "relay tunnels",
        count: tunnels,
        rss_before: before,
        rss_after: rss_kib(pid)?,
    });

    // 3. Idle /ws sockets, from the source addresses after the relay's.
    let started = Instant::now();
    let before = rss_kib(pid)?;
    let offset = relay_peers.div_ceil(PER_SOURCE) * PER_SOURCE;
    let feeds = open_all(offset..offset + ws_sockets, |i| {
        let target = target.clone();
        async move { event_feed(&target, i).await }
    })
    .await
    .context("/ws sockets")?;
    for ws in feeds {
        keep_reading(ws, incoming.clone(), closed.clone());
    }
    eprintln!("{ws_sockets} /ws sockets in {:?}", started.elapsed());
    tokio::time::sleep(SETTLE).await;
    let after = rss_kib(pid)?;
    steps.push(Step {
        name: "idle /ws sockets",
        count: ws_sockets,
        rss_before: before,
        rss_after: after,
    });

    // The tracker must count what was opened, and nothing may have closed.
    let ws_clients = gauge(&target, "p2p_tracker_ws_clients").await?;
    let relay = gauge(&target, "p2p_tracker_relay_connections").await?;
    let open_tunnels = gauge(&target, "p2p_tracker_relay_tunnels_open").await?;
    ensure!(
        closed.load(Ordering::Relaxed) == 0,
        "{} sockets closed",
        closed.load(Ordering::Relaxed)
    );
    ensure!(
        (ws_clients, relay, open_tunnels)
            == (ws_sockets as i64, relay_peers as i64, tunnels as i64),
        "the tracker counts {ws_clients} /ws clients, {relay} relay connections and \
         {open_tunnels} tunnels"
    );

    println!(
        "{:<22} {:>7} {:>10} {:>10} {:>12}",
        "step", "count", "+RSS MiB", "KiB each", "per GiB"
    );
    for step in &steps {
        step.print();
    }
    let sockets = ws_sockets + relay_peers;
    let total = after.saturating_sub(baseline);
    println!(
        "tracker RSS: {:.1} MiB at rest, {:.1} MiB with {sockets} sockets and {tunnels} tunnels \
         ({:.2} KiB per socket in all)",
        baseline as f64 / 1024.0,
        after as f64 / 1024.0,
        total as f64 / sockets.max(1) as f64
    );
    drop(sinks);
    Ok(())
}
