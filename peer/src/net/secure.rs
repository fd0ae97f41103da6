//! The encrypted frame stream: a Noise `XX` handshake (X25519, AES-GCM, SHA-256) over any
//! `AsyncRead + AsyncWrite`, then wire frames cut into Noise transport messages.
//!
//! On the wire every handshake and transport message is `len: u16 BE ‖ bytes` (see
//! `docs/protocol.md` §2). After the handshake the stream splits into a [`SecureReader`] and a
//! [`SecureWriter`] with their own nonces, so a peer can upload and download on one connection
//! at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use p2p_proto::PeerId;
use p2p_proto::wire::{Frame, WireError};
use snow::StatelessTransportState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::identity::Identity;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Bound into the handshake, so other protocols' handshakes cannot be replayed into ours.
pub const PROLOGUE: &[u8] = b"p2p/1";
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_NOISE_MESSAGE: usize = 65_535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one transport message.
const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;

/// Why a secure connection failed. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Noise(String),
    #[error("handshake timed out")]
    Timeout,
    #[error("connected to peer {got}, expected {expected}")]
    WrongPeer { expected: PeerId, got: PeerId },
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
}

impl From<snow::Error> for SecureError {
    fn from(e: snow::Error) -> Self {
        Self::Noise(e.to_string())
    }
}

/// Which side of the handshake this peer plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled.
    Initiator,
    /// The side that accepted.
    Responder,
}

async fn write_message<W: AsyncWrite + Unpin>(io: &mut W, msg: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(msg).await?;
    io.flush().await
}

async fn read_message<R: AsyncRead + Unpin>(io: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let len = io.read_u16().await? as usize;
    buf.resize(len, 0);
    io.read_exact(buf).await?;
    Ok(())
}

/// A secured connection: its receiving half, its sending half and the remote's peer id.
pub type Secured<S> = (
    SecureReader<ReadHalf<S>>,
    SecureWriter<WriteHalf<S>>,
    PeerId,
);

/// Runs the handshake and splits the stream. With `expected`, a remote with another static key
/// is refused. Returns the reader, the writer and the remote's peer id.
pub async fn handshake<S>(
    io: S,
    identity: &Identity,
    role: Role,
    expected: Option<PeerId>,
) -> Result<Secured<S>, SecureError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        run_handshake(io, identity, role, expected),
    )
    .await
    .map_err(|_| SecureError::Timeout)?
}

async fn run_handshake<S>(
    mut io: S,
    identity: &Identity,
    role: Role,
    expected: Option<PeerId>,
) -> Result<Secured<S>, SecureError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| SecureError::Noise(e.to_string()))?;
    let builder = snow::Builder::new(params)
        .local_private_key(identity.secret())?
        .prologue(PROLOGUE)?;
    let mut hs = match role {
        Role::Initiator => builder.build_initiator()?,
        Role::Responder => builder.build_responder()?,
    };
    let mut out = vec![0u8; MAX_NOISE_MESSAGE];
    let mut inbound = Vec::new();
    let mut scratch = vec![0u8; MAX_NOISE_MESSAGE];
    // XX: initiator → e; responder → e, ee, s, es; initiator → s, se.
    let mut sending = role == Role::Initiator;
    while !hs.is_handshake_finished() {
        if sending {
            let n = hs.write_message(&[], &mut out)?;
            write_message(&mut io, &out[..n]).await?;
        } else {
            read_message(&mut io, &mut inbound).await?;
            hs.read_message(&inbound, &mut scratch)?;
        }
        sending = !sending;
    }
    let remote = hs
        .get_remote_static()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .map(PeerId)
        .ok_or_else(|| SecureError::Noise("no remote static key".into()))?;
    if let Some(expected) = expected
        && expected != remote
    {
        return Err(SecureError::WrongPeer {
            expected,
            got: remote,
        });
    }
    let state = Arc::new(hs.into_stateless_transport_mode()?);
    let (r, w) = tokio::io::split(io);
    Ok((
        SecureReader {
            io: r,
            state: state.clone(),
            nonce: 0,
            inbound: BytesMut::with_capacity(READ_BATCH),
            plain: BytesMut::with_capacity(MAX_NOISE_MESSAGE * 2),
        },
        SecureWriter {
            io: w,
            state,
            nonce: 0,
            plain: BytesMut::new(),
            out: Vec::new(),
        },
        remote,
    ))
}

/// Bytes asked of the transport per read: several Noise messages at once, so a 256 KiB chunk
/// costs one or two reads instead of two per message.
const READ_BATCH: usize = 256 * 1024;

/// Receives frames.
pub struct SecureReader<R> {
    io: R,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    /// Received bytes not yet decrypted (whole and partial transport messages).
    inbound: BytesMut,
    /// Decrypted bytes not yet decoded into frames.
    plain: BytesMut,
}

impl<R> std::fmt::Debug for SecureReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReader")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> SecureReader<R> {
    /// The next frame, or `None` when the remote closed cleanly between frames.
    pub async fn recv(&mut self) -> Result<Option<Frame>, SecureError> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.plain)? {
                return Ok(Some(frame));
            }
            if self.decrypt_buffered()? {
                continue;
            }
            self.inbound.reserve(READ_BATCH);
            if self.io.read_buf(&mut self.inbound).await? == 0 {
                return if self.plain.is_empty() && self.inbound.is_empty() {
                    Ok(None)
                } else {
                    Err(SecureError::Truncated)
                };
            }
        }
    }

    /// Decrypts every whole transport message received so far into `plain`; whether there
    /// was one.
    fn decrypt_buffered(&mut self) -> Result<bool, SecureError> {
        let mut any = false;
        while self.inbound.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([self.inbound[0], self.inbound[1]]));
            if len < TAG_LEN {
                return Err(SecureError::Noise(
                    "transport message shorter than its tag".into(),
                ));
            }
            if self.inbound.len() < 2 + len {
                break;
            }
            // Decrypt straight into the frame buffer's spare room.
            let start = self.plain.len();
            self.plain.resize(start + len, 0);
            let n = self.state.read_message(
                self.nonce,
                &self.inbound[2..2 + len],
                &mut self.plain[start..],
            )?;
            self.plain.truncate(start + n);
            self.nonce += 1;
            let _ = self.inbound.split_to(2 + len);
            any = true;
        }
        Ok(any)
    }
}

/// Sends frames.
pub struct SecureWriter<W> {
    io: W,
    state: Arc<StatelessTransportState>,
    nonce: u64,
    plain: BytesMut,
    out: Vec<u8>,
}

impl<W> std::fmt::Debug for SecureWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureWriter")
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> SecureWriter<W> {
    /// Queues a frame; [`SecureWriter::flush`] encrypts and sends what is queued.
    pub fn feed(&mut self, frame: &Frame) {
        frame.encode(&mut self.plain);
    }

    /// Encrypts the queued frames into transport messages and writes them in one go.
    pub async fn flush(&mut self) -> Result<(), SecureError> {
        self.out.clear();
        while !self.plain.is_empty() {
            let take = self.plain.len().min(MAX_PLAINTEXT);
            let at = self.out.len();
            self.out.resize(at + 2 + take + TAG_LEN, 0);
            let n = self.state.write_message(
                self.nonce,
                &self.plain[..take],
                &mut self.out[at + 2..],
            )?;
            self.nonce += 1;
            self.out[at..at + 2].copy_from_slice(&(n as u16).to_be_bytes());
            self.out.truncate(at + 2 + n);
            let _ = self.plain.split_to(take);
        }
        self.io.write_all(&self.out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends one frame now.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), SecureError> {
        self.feed(frame);
        self.flush().await
    }

    /// Closes the sending side.
    pub async fn shutdown(&mut self) -> Result<(), SecureError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use p2p_proto::FileId;

    use super::*;

    type Side = Result<Secured<tokio::io::DuplexStream>, SecureError>;

    async fn pair(expected: Option<PeerId>) -> (Side, Side, Identity, Identity) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (ra, rb) = tokio::join!(
            handshake(a, &ia, Role::Initiator, expected),
            handshake(b, &ib, Role::Responder, None)
        );
        (ra, rb, ia, ib)
    }

    #[tokio::test]
    async fn both_sides_learn_each_others_id_and_exchange_frames() {
        let (ra, rb, ia, ib) = pair(None).await;
        let (mut a_rx, mut a_tx, a_sees) = ra.unwrap();
        let (mut b_rx, mut b_tx, b_sees) = rb.unwrap();
        assert_eq!(a_sees, ib.peer_id());
        assert_eq!(b_sees, ia.peer_id());

        // A chunk bigger than one Noise message, plus small frames around it.
        let data = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let chunk = Frame::Chunk {
            request_id: 9,
            file_id: FileId([1; 32]),
            index: 3,
            data,
        };
        a_tx.feed(&Frame::KeepAlive);
        a_tx.feed(&chunk);
        a_tx.feed(&Frame::Cancel { request_id: 2 });
        a_tx.flush().await.unwrap();
        assert_eq!(b_rx.recv().await.unwrap(), Some(Frame::KeepAlive));
        assert_eq!(b_rx.recv().await.unwrap(), Some(chunk));
        assert_eq!(
            b_rx.recv().await.unwrap(),
            Some(Frame::Cancel { request_id: 2 })
        );

        // And back, at the same time as the other direction.
        b_tx.send(&Frame::Have {
            file_id: FileId([2; 32]),
            index: 1,
        })
        .await
        .unwrap();
        assert_eq!(
            a_rx.recv().await.unwrap(),
            Some(Frame::Have {
                file_id: FileId([2; 32]),
                index: 1
            })
        );

        a_tx.shutdown().await.unwrap();
        assert_eq!(
            b_rx.recv().await.unwrap(),
            None,
            "clean close between frames"
        );
    }

    #[tokio::test]
    async fn the_wrong_peer_is_refused() {
        let someone_else = Identity::generate().unwrap().peer_id();
        let (ra, _rb, _, _) = pair(Some(someone_else)).await;
        assert!(matches!(ra, Err(SecureError::WrongPeer { .. })));
    }

    /// Handshakes through a forwarder that flips one bit of the initiator's `flip_at`-th
    /// message (1 and 2 are its handshake messages, 3 on are transport messages).
    async fn through_tampering_link(flip_at: usize) -> (Side, Side) {
        let (a, a_far) = tokio::io::duplex(1 << 20);
        let (b_far, b) = tokio::io::duplex(1 << 20);
        let (mut from_a, mut to_a) = tokio::io::split(a_far);
        let (mut from_b, mut to_b) = tokio::io::split(b_far);
        tokio::spawn(async move {
            let up = async {
                let mut buf = Vec::new();
                let mut count = 0;
                while read_message(&mut from_a, &mut buf).await.is_ok() {
                    count += 1;
                    if count == flip_at {
                        let last = buf.len() - 1;
                        buf[last] ^= 1;
                    }
                    if write_message(&mut to_b, &buf).await.is_err() {
                        break;
                    }
                }
            };
            let down = tokio::io::copy(&mut from_b, &mut to_a);
            let _ = tokio::join!(up, down);
        });
        let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        tokio::join!(
            handshake(a, &ia, Role::Initiator, None),
            handshake(b, &ib, Role::Responder, None)
        )
    }

    #[tokio::test]
    async fn a_tampered_handshake_fails() {
        let (_, rb) = through_tampering_link(2).await;
        assert!(matches!(rb, Err(SecureError::Noise(_))), "{rb:?}");
    }

    #[tokio::test]
    async fn tampered_frames_are_detected() {
        let (ra, rb) = through_tampering_link(3).await;
        let (_a_rx, mut a_tx, _) = ra.unwrap();
        let (mut b_rx, _b_tx, _) = rb.unwrap();
        a_tx.send(&Frame::Cancel { request_id: 1 }).await.unwrap();
        assert!(matches!(b_rx.recv().await, Err(SecureError::Noise(_))));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        tokio::time::pause();
        let (a, _b) = tokio::io::duplex(64);
        let ia = Identity::generate().unwrap();
        let result = handshake(a, &ia, Role::Responder, None).await;
        assert!(matches!(result, Err(SecureError::Timeout)));
    }
}
