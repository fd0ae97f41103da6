//! One peer's WebSocket: the attach proof, then a loop that reads a frame, hands it to the
//! [hub](super::hub), and a writer that drains the peer's queue into the socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use curve25519_dalek::montgomery::MontgomeryPoint;
use futures_util::{SinkExt, StreamExt};
use p2p_proto::PeerId;
use p2p_proto::relay::{RelayFrame, error_code, macs_equal, proof_mac};
use poem::web::websocket::{CloseCode as WsCloseCode, Message, WebSocketStream};

use super::hub::{Attached, DialScope, Outbound, RelayHub};

/// How long a peer has to answer the challenge.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer may take to flush what is queued once the peer detached.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Sink = futures_util::stream::SplitSink<WebSocketStream, Message>;
type Source = futures_util::stream::SplitStream<WebSocketStream>;

/// Runs one WebSocket: the attach proof, then frames until it closes.
pub async fn serve(
    hub: Arc<RelayHub>,
    stream: WebSocketStream,
    claimed: PeerId,
    principal: String,
    scope: Option<DialScope>,
    waiting: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut sink, mut source) = stream.split();
    let peer_id = match prove(&mut sink, &mut source, claimed).await {
        Ok(id) => id,
        Err(reason) => {
            let refusal = RelayFrame::Error {
                code: error_code::BAD_PROOF,
                message: reason.clone(),
            };
            let close = Message::Close(Some((WsCloseCode::Policy, reason)));
            refuse(&mut sink, refusal, close).await;
            return;
        }
    };
    drop(waiting);
    let Attached {
        conn,
        outbound,
        slot: _slot,
    } = match hub.attach_scoped(peer_id, principal, scope) {
        Ok(a) => a,
        Err(refusal) => {
            let refusal = RelayFrame::Error {
                code: error_code::PROTOCOL,
                message: refusal.to_string(),
            };
            refuse(&mut sink, refusal, Message::Close(None)).await;
            return;
        }
    };
    let writer = tokio::spawn(write(sink, outbound));

    let sweep_every = (hub.limits().idle / 4).max(Duration::from_millis(250));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.tick().await;
    let replaced = conn.replaced.clone();
    let slow = conn.slow.clone();
    // A read grant's holder is detached when the grant expires.
    let until = conn.scope.as_ref().map(|s| s.until);
    let expiry = async move {
        match until {
            Some(until) => tokio::time::sleep_until(until.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            _ = hub.shutdown().cancelled() => break,
            () = &mut expiry => {
                let message = "the read grant expired".into();
                hub.refuse(&conn, error_code::EXPIRED, message);
                break;
            }
            _ = slow.cancelled() => break,
            _ = replaced.cancelled() => {
                let message = "this peer id attached again elsewhere".into();
                hub.refuse(&conn, error_code::REPLACED, message);
                break;
            }
            _ = sweep.tick() => hub.close_idle(&conn),
            incoming = source.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => match RelayFrame::decode(Bytes::from(bytes)) {
                    Ok(frame) => hub.handle(&conn, frame),
                    Err(e) => {
                        hub.refuse(&conn, error_code::PROTOCOL, e.to_string());
                        break;
                    }
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }

    // Detach: end every tunnel of this connection, then stop writing.
    hub.detach(&conn);
    // Dropping the last sender ends the writer once it has flushed the queue; a route
    // another connection added in the meantime may still hold one, hence the bound.
    drop(conn);
    if let Ok(Ok(mut sink)) = tokio::time::timeout(FLUSH_TIMEOUT, writer).await {
        let _ = sink.close().await;
    }
}

/// Sends a refusal and closes; a peer that does not read holds up nothing but this task, and
/// not for long.
async fn refuse(sink: &mut Sink, refusal: RelayFrame, close: Message) {
    let _ = tokio::time::timeout(ATTACH_TIMEOUT, async {
        let _ = sink.send(Message::Binary(refusal.to_vec())).await;
        let _ = sink.send(close).await;
    })
    .await;
}

/// The writer: `Attached` first, then drains the queue into the WebSocket.
async fn write(mut sink: Sink, mut outbound: Outbound) -> Sink {
    let first = RelayFrame::Attached.to_vec();
    if sink.send(Message::Binary(first)).await.is_err() {
        return sink;
    }
    while let Some((bytes, taken)) = outbound.next().await {
        let sent = sink.send(Message::Binary(bytes)).await;
        outbound.release(taken);
        if sent.is_err() {
            break;
        }
    }
    sink
}

/// Challenges the peer and checks its proof; the error is the reason shown to it.
async fn prove(sink: &mut Sink, source: &mut Source, claimed: PeerId) -> Result<PeerId, String> {
    let mut secret = [0u8; 32];
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut secret)
        .and_then(|()| getrandom::fill(&mut nonce))
        .map_err(|_| "no randomness".to_owned())?;
    let server_key = MontgomeryPoint::mul_base_clamped(secret).to_bytes();
    let challenge = RelayFrame::Challenge { server_key, nonce };
    sink.send(Message::Binary(challenge.to_vec()))
        .await
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(ATTACH_TIMEOUT, async {
        loop {
            match source.next().await {
                Some(Ok(Message::Binary(b))) => return Some(b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| "no proof sent in time".to_owned())?
    .ok_or_else(|| "expected a binary proof frame".to_owned())?;
    let Ok(RelayFrame::Proof { peer_id, mac }) = RelayFrame::decode(Bytes::from(answer)) else {
        return Err("expected a proof frame".into());
    };
    if peer_id != claimed {
        return Err("the proof is for another peer id than ?peer_id".into());
    }
    let shared = MontgomeryPoint(peer_id.0).mul_clamped(secret).to_bytes();
    // A low-order "public key" gives an all-zero secret anyone can compute.
    if shared == [0u8; 32] {
        return Err("invalid peer id".into());
    }
    if !macs_equal(&mac, &proof_mac(&shared, &server_key, &nonce, &peer_id)) {
        return Err("the proof does not match the peer id".into());
    }
    Ok(peer_id)
}
