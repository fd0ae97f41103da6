//! The encrypted frame stream: a Noise `XX` handshake (X25519, AES-GCM, SHA-256) over any
//! `AsyncRead + AsyncWrite`, then wire frames cut into Noise transport messages.
//!
//! On the wire every handshake and transport message is `len: u16 BE ‖ bytes` (see
//! `docs/protocol.md` §2). After the handshake the stream splits into a [`SecureReader`] and a
//! [`SecureWriter`] with their own keys and nonces, so a peer can upload and download on one
//! connection at once.
//!
//! The handshake runs in `snow`. Transport messages are Noise's `AESGCM` cipher exactly (the
//! keys of the handshake's `Split()`, nonce `0u32 ‖ n u64 BE`, empty associated data), but
//! sealed and opened in place with `ring`: an uploader reads a chunk from disk straight into
//! the buffer that goes out ([`Outbox`]), and a downloader decrypts each message where it
//! arrived, so a chunk is copied by the kernel and by the cipher and by nothing else.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use p2p_proto::PeerId;
use p2p_proto::wire::{self, Frame, WireError};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::identity::Identity;
use crate::storage::ChunkBuf;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";
/// Bound into the handshake, so other protocols' handshakes cannot be replayed into ours.
pub const PROLOGUE: &[u8] = b"p2p/1";
/// How long a handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Noise's largest message, tag included.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// AES-GCM's tag at the end of every transport message.
pub const TAG_LEN: usize = 16;
/// Plaintext carried by one transport message.
pub const MAX_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TAG_LEN;

/// Why a secure connection failed. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("noise: {0}")]
    Handshake(#[from] snow::Error),
    /// A transport message that cannot be sealed or opened (ring says no more than that).
    #[error("noise: {0}")]
    Noise(&'static str),
    #[error("handshake timed out")]
    Timeout,
    #[error("connected to peer {got}, expected {expected}")]
    WrongPeer { expected: PeerId, got: PeerId },
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A frame larger than the session's state allows (see [`FrameCap`]), refused before its
    /// body was buffered.
    #[error("frame of {len} bytes is over this session's {cap}-byte cap")]
    FrameTooLarge { len: usize, cap: u32 },
    /// No frame began within the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A frame began but did not arrive whole within the frame deadline.
    #[error("a frame took over {0:?} to arrive")]
    SlowFrame(Duration),
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
    let params = NOISE_PARAMS.parse().map_err(SecureError::Handshake)?;
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
        .ok_or(SecureError::Noise("no remote static key"))?;
    if let Some(expected) = expected
        && expected != remote
    {
        return Err(SecureError::WrongPeer {
            expected,
            got: remote,
        });
    }
    // Split(): the first key encrypts what the initiator sends, the second what it receives.
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (send, recv) = match role {
        Role::Initiator => (k1, k2),
        Role::Responder => (k2, k1),
    };
    let (r, w) = tokio::io::split(io);
    Ok((
        SecureReader::new(r, Cipher::new(&recv)?),
        SecureWriter {
            io: w,
            cipher: Cipher::new(&send)?,
            pending: Outbox::default(),
        },
        remote,
    ))
}

/// One direction of a session's transport: Noise's `AESGCM` with the key from the handshake.
struct Cipher {
    key: LessSafeKey,
    /// The next nonce.
    n: u64,
}

impl Cipher {
    fn new(key: &[u8; 32]) -> Result<Self, SecureError> {
        let key = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| SecureError::Noise("unusable transport key"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            n: 0,
        })
    }

    /// Noise's nonce for the next message: 32 zero bits, then the counter big-endian. The last
    /// value (2^64 − 1) is reserved.
    fn next_nonce(&mut self) -> Result<Nonce, SecureError> {
        if self.n == u64::MAX {
            return Err(SecureError::Noise("the session ran out of nonces"));
        }
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.n.to_be_bytes());
        self.n += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    /// Encrypts `msg` (plaintext, then [`TAG_LEN`] bytes of room) in place and puts the tag in
    /// that room.
    fn seal(&mut self, msg: &mut [u8]) -> Result<(), SecureError> {
        let nonce = self.next_nonce()?;
        let at = msg.len().saturating_sub(TAG_LEN);
        let (text, room) = msg.split_at_mut(at);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), text)
            .map_err(|_| SecureError::Noise("message too long to encrypt"))?;
        room.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts the message (ciphertext and tag) at `buf[from..]` into the front of `buf`;
    /// returns the plaintext's length.
    fn open_within(&mut self, buf: &mut [u8], from: usize) -> Result<usize, SecureError> {
        let nonce = self.next_nonce()?;
        self.key
            .open_within(nonce, Aad::empty(), buf, from..)
            .map(|plain| plain.len())
            .map_err(|_| SecureError::Noise("transport message failed authentication"))
    }
}

/// Frames laid out as transport messages before they are encrypted: each message is
/// `len u16 ‖ plaintext ‖ room for the tag`, with up to [`MAX_PLAINTEXT`] bytes of plaintext.
/// Whoever sends fills it ([`Outbox::feed`], or [`ChunkBuf::room`] to read a chunk from disk
/// straight into place, off the writer's task); the [`SecureWriter`], which owns the nonces,
/// seals it in place and sends it. The buffer is kept for reuse, so a steady stream of chunks
/// allocates nothing.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Only ever grows: bytes past `end` are leftovers of earlier use, overwritten as needed.
    buf: Vec<u8>,
    end: usize,
    /// Closed messages: where each starts and its plaintext length.
    messages: Vec<(usize, usize)>,
    /// Where the message being filled starts.
    open: Option<usize>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// Empties it for reuse, keeping its memory.
    pub fn clear(&mut self) {
        self.end = 0;
        self.messages.clear();
        self.open = None;
    }

    /// Appends a frame.
    pub fn feed(&mut self, frame: &Frame) {
        match frame {
            // Straight into place: a chunk's data is copied once.
            Frame::Chunk {
                request_id,
                file_id,
                index,
                data,
            } => {
                self.put(&wire::chunk_header(
                    *request_id,
                    *file_id,
                    *index,
                    data.len(),
                ));
                self.put(data);
            }
            _ => self.put(&frame.to_bytes()),
        }
    }

    fn grow(&mut self, n: usize) {
        self.end += n;
        if self.buf.len() < self.end {
            self.buf.resize(self.end, 0);
        }
    }

    /// Ends the message being filled, leaving room for its tag.
    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let plain = self.end - start - 2;
            self.grow(TAG_LEN);
            self.messages.push((start, plain));
        }
    }

    /// Encrypts every message in place with the next nonces; the bytes to send.
    fn seal(&mut self, cipher: &mut Cipher) -> Result<&[u8], SecureError> {
        self.close();
        for &(start, plain) in &self.messages {
            let len = (plain + TAG_LEN) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_be_bytes());
            cipher.seal(&mut self.buf[start + 2..start + 2 + plain + TAG_LEN])?;
        }
        self.messages.clear();
        Ok(&self.buf[..self.end])
    }
}

/// Plaintext goes in as [`ChunkBuf::put`] (frames, headers) or [`ChunkBuf::room`] (a chunk read
/// from disk into place).
impl ChunkBuf for Outbox {
    /// Appends `len` bytes of plaintext for the caller to write: the pieces they fall into, in
    /// order (several when they cross messages). Their content is whatever was there before.
    fn room(&mut self, len: usize) -> Vec<&mut [u8]> {
        let mut ranges = Vec::new();
        let mut left = len;
        while left > 0 {
            let start = match self.open {
                Some(start) => start,
                None => {
                    let start = self.end;
                    self.grow(2);
                    self.open = Some(start);
                    start
                }
            };
            let room = MAX_PLAINTEXT - (self.end - start - 2);
            if room == 0 {
                self.close();
                continue;
            }
            let take = room.min(left);
            ranges.push(self.end..self.end + take);
            self.grow(take);
            left -= take;
        }
        let mut pieces = Vec::with_capacity(ranges.len());
        let mut rest = &mut self.buf[..];
        let mut base = 0;
        for r in ranges {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - base);
            let (piece, tail) = tail.split_at_mut(r.len());
            pieces.push(piece);
            rest = tail;
            base = r.end;
        }
        pieces
    }
}

/// The largest frame body a session accepts, changeable while its reader runs (by whoever
/// sends the requests whose answers may be large). Cheap to clone; every clone is the same
/// cap. A frame over it is refused as soon as its length is known, before its body is
/// buffered: an uploader never needs more than small requests, and a downloader needs a
/// `Manifest` frame (up to [`wire::MAX_MANIFEST_FRAME_LEN`]) only after asking for one.
#[derive(Debug, Clone)]
pub struct FrameCap(Arc<AtomicU32>);

impl FrameCap {
    /// A cap of `max` bytes (the frame body, type byte included).
    pub fn new(max: u32) -> Self {
        Self(Arc::new(AtomicU32::new(max)))
    }

    pub fn set(&self, max: u32) {
        self.0.store(max, Ordering::Relaxed);
    }

    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A session's cap until someone changes it: a chunk frame, not a manifest.
impl Default for FrameCap {
    fn default() -> Self {
        Self::new(wire::MAX_FRAME_LEN)
    }
}

/// How long a reader waits, when set (see [`SecureReader::set_deadlines`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadDeadlines {
    /// For the first byte of the next frame, counted from when [`SecureReader::recv`] is
    /// called with nothing of a frame received.
    pub idle: Option<Duration>,
    /// For the rest of a frame once its first byte arrived.
    pub frame: Option<Duration>,
}

/// A receive buffer's size: room for several chunk frames, so a frame rarely straddles two
/// buffers (then its first part is copied over).
const BUFFER: usize = 1024 * 1024;
/// A receive buffer's size while no frame larger than a message is on its way: an idle session
/// holds no more.
const SMALL_BUFFER: usize = 2 * MAX_NOISE_MESSAGE + MIN_READ;
/// The least room a read gets.
const MIN_READ: usize = 16 * 1024;
/// Earlier receive buffers kept for reuse once the frames cut from them are dropped.
const SPARE_BUFFERS: usize = 8;

/// Receives frames.
pub struct SecureReader<R> {
    io: R,
    cipher: Cipher,
    /// `buf[..plain]` is decrypted and not yet cut into frames; `buf[sealed..]` is received and
    /// not yet decrypted; between them lies the framing (lengths, tags) of messages already
    /// opened. Frames are cut off the front without copying, so their data shares this memory.
    buf: BytesMut,
    plain: usize,
    sealed: usize,
    /// Buffers given up while frames cut from them were still alive: reused once they are not,
    /// so a long transfer cycles through the same few megabytes. Only [`BUFFER`]-sized ones
    /// are kept: a larger one (grown for a manifest) goes back to the allocator.
    spares: VecDeque<BytesMut>,
    cap: FrameCap,
    deadlines: ReadDeadlines,
    /// When the frame being received began to arrive (`None` between frames).
    frame_started: Option<Instant>,
}

impl<R> std::fmt::Debug for SecureReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReader")
            .field("nonce", &self.cipher.n)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRead + Unpin> SecureReader<R> {
    fn new(io: R, cipher: Cipher) -> Self {
        Self {
            io,
            cipher,
            buf: BytesMut::new(),
            plain: 0,
            sealed: 0,
            spares: VecDeque::new(),
            cap: FrameCap::default(),
            deadlines: ReadDeadlines::default(),
            frame_started: None,
        }
    }

    /// The cap on incoming frames' size, to change it (it starts at a chunk frame's size).
    pub fn frame_cap(&self) -> &FrameCap {
        &self.cap
    }

    /// Sets how long [`SecureReader::recv`] waits for a frame to begin and then to arrive
    /// whole; by default it waits forever (the caller has its own timers).
    pub fn set_deadlines(&mut self, deadlines: ReadDeadlines) {
        self.deadlines = deadlines;
    }

    /// Bytes this reader holds in its buffers (the receive buffer and its spares), for tests
    /// of memory bounds.
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity() + self.spares.iter().map(BytesMut::capacity).sum::<usize>()
    }

    /// Whether part of a frame has arrived (received bytes not yet handed out).
    fn mid_frame(&self) -> bool {
        self.plain > 0 || self.sealed < self.buf.len()
    }

    /// When the current read must have finished, by the deadlines.
    fn read_deadline(&self, idle_from: Instant) -> Option<(Instant, SecureError)> {
        match self.frame_started {
            Some(start) => self
                .deadlines
                .frame
                .map(|d| (start + d, SecureError::SlowFrame(d))),
            None => self
                .deadlines
                .idle
                .map(|d| (idle_from + d, SecureError::Idle(d))),
        }
    }

    /// The next frame, or `None` when the remote closed cleanly between frames. Cancel-safe:
    /// it only awaits the transport's read.
    pub async fn recv(&mut self) -> Result<Option<Frame>, SecureError> {
        let idle_from = Instant::now();
        if !self.mid_frame() {
            self.frame_started = None;
        }
        loop {
            let pending = Frame::frame_len(&self.buf[..self.plain])?;
            if let Some(total) = pending {
                let cap = self.cap.get();
                if total - 4 > cap as usize {
                    return Err(SecureError::FrameTooLarge {
                        len: total - 4,
                        cap,
                    });
                }
                if total <= self.plain {
                    let mut frame = self.buf.split_to(total);
                    self.plain -= total;
                    self.sealed -= total;
                    self.frame_started = self.mid_frame().then(Instant::now);
                    self.give_back();
                    return Frame::decode(&mut frame)?
                        .map(Some)
                        .ok_or(SecureError::Truncated);
                }
            }
            if self.open_next()? {
                continue;
            }
            self.make_room(pending.unwrap_or(0));
            let deadline = self.read_deadline(idle_from);
            let read = self.io.read_buf(&mut self.buf);
            let n = match deadline {
                Some((at, late)) => match tokio::time::timeout_at(at, read).await {
                    Ok(n) => n?,
                    Err(_) => return Err(late),
                },
                None => read.await?,
            };
            if n > 0 && self.frame_started.is_none() {
                self.frame_started = Some(Instant::now());
            }
            if n == 0 {
                return if self.plain == 0 && self.sealed == self.buf.len() {
                    Ok(None)
                } else {
                    Err(SecureError::Truncated)
                };
            }
        }
    }

    /// Decrypts the next transport message if it has arrived whole; whether it had.
    fn open_next(&mut self) -> Result<bool, SecureError> {
        let Some(&[a, b]) = self.buf.get(self.sealed..self.sealed + 2) else {
            return Ok(false);
        };
        let len = usize::from(u16::from_be_bytes([a, b]));
        if len < TAG_LEN {
            return Err(SecureError::Noise("transport message shorter than its tag"));
        }
        let end = self.sealed + 2 + len;
        if self.buf.len() < end {
            return Ok(false);
        }
        let from = self.sealed + 2 - self.plain;
        let n = self
            .cipher
            .open_within(&mut self.buf[self.plain..end], from)?;
        self.plain += n;
        self.sealed = end;
        Ok(true)
    }

    /// After a frame was cut off: a buffer grown well past [`BUFFER`] (for a manifest or a
    /// large chunk) is given back, its few remaining bytes moved to a fresh one, so a session
    /// holds a large buffer only while a large frame arrives.
    fn give_back(&mut self) {
        if self.buf.capacity() > 2 * BUFFER && self.buf.len() <= MAX_NOISE_MESSAGE * 2 {
            let mut fresh = BytesMut::with_capacity(SMALL_BUFFER.max(self.buf.len()));
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }

    /// Makes room to read into: a read's worth at least, and enough for the rest of the frame
    /// being received (`frame` bytes in all, 0 when not known yet) to arrive in this buffer,
    /// so its data is never copied from one buffer to another as it arrives. Room is made
    /// ahead for a frame up to a chunk frame's size; a larger one (a manifest) grows the
    /// buffer as its bytes arrive, doubling, so a length prefix alone reserves nothing.
    fn make_room(&mut self, frame: usize) {
        if self.plain == 0 {
            // Nothing decrypted is waiting: the framing before the sealed bytes can go.
            self.buf.advance(self.sealed);
            self.sealed = 0;
        }
        // The rest of the frame as it travels (plus each message's framing), then at most the
        // rest of the message it ends in.
        let frame = if frame > 4 + wire::MAX_FRAME_LEN as usize {
            0
        } else {
            frame
        };
        let rest = frame.saturating_sub(self.plain);
        let framing = (rest / MAX_PLAINTEXT + 2) * (2 + TAG_LEN);
        let need =
            (self.sealed + rest + framing + MAX_NOISE_MESSAGE).max(self.buf.len() + MIN_READ);
        if self.buf.capacity() >= need {
            return;
        }
        // Reclaiming in place works once every frame cut from this buffer is gone.
        if self.buf.try_reclaim(need - self.buf.len()) {
            return;
        }
        let size = if need <= SMALL_BUFFER && self.buf.capacity() < SMALL_BUFFER {
            SMALL_BUFFER
        } else if need <= BUFFER {
            BUFFER
        } else {
            // Past a buffer's size (only a manifest gets there): doubling, so a large frame
            // is copied O(its size) times in all as it grows.
            need.max(self.buf.len() * 2)
        };
        let mut next = None;
        for _ in 0..self.spares.len() {
            let Some(mut spare) = self.spares.pop_front() else {
                break;
            };
            if spare.try_reclaim(size) {
                next = Some(spare);
                break;
            }
            self.spares.push_back(spare);
        }
        let mut next = next.unwrap_or_else(|| BytesMut::with_capacity(size));
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        old.clear();
        if old.capacity() < BUFFER || old.capacity() > 2 * BUFFER {
            return;
        }
        if self.spares.len() == SPARE_BUFFERS {
            self.spares.pop_front();
        }
        self.spares.push_back(old);
    }
}

/// Sends frames.
pub struct SecureWriter<W> {
    io: W,
    cipher: Cipher,
    /// Frames fed and not yet flushed.
    pending: Outbox,
}

impl<W> std::fmt::Debug for SecureWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureWriter")
            .field("nonce", &self.cipher.n)
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin> SecureWriter<W> {
    /// Queues a frame; [`SecureWriter::flush`] encrypts and sends what is queued.
    pub fn feed(&mut self, frame: &Frame) {
        self.pending.feed(frame);
    }

    /// Encrypts the queued frames and writes them in one go.
    pub async fn flush(&mut self) -> Result<(), SecureError> {
        self.write_pending().await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Encrypts and writes what is queued, without flushing the transport.
    async fn write_pending(&mut self) -> Result<(), SecureError> {
        if !self.pending.is_empty() {
            let bytes = self.pending.seal(&mut self.cipher)?;
            self.io.write_all(bytes).await?;
            self.pending.clear();
        }
        Ok(())
    }

    /// Sends one frame now.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), SecureError> {
        self.feed(frame);
        self.flush().await
    }

    /// Sends what the caller laid out in `outbox` (after anything queued here), encrypting it
    /// in place, and empties it for reuse.
    pub async fn send_outbox(&mut self, outbox: &mut Outbox) -> Result<(), SecureError> {
        self.write_pending().await?;
        let bytes = outbox.seal(&mut self.cipher)?;
        self.io.write_all(bytes).await?;
        outbox.clear();
        self.io.flush().await?;
        Ok(())
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

    /// Our transport is Noise's `AESGCM`: what snow's own transport seals, ours opens, and
    /// the other way round.
    #[test]
    fn transport_messages_are_noise_aesgcm() {
        let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        fn build(id: &Identity) -> snow::Builder<'_> {
            snow::Builder::new(NOISE_PARAMS.parse().unwrap())
                .local_private_key(id.secret())
                .unwrap()
                .prologue(PROLOGUE)
                .unwrap()
        }
        let mut a = build(&ia).build_initiator().unwrap();
        let mut b = build(&ib).build_responder().unwrap();
        let (mut buf, mut scratch) = (vec![0u8; MAX_NOISE_MESSAGE], vec![0u8; MAX_NOISE_MESSAGE]);
        for initiator_speaks in [true, false, true] {
            let (from, to) = if initiator_speaks {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let n = from.write_message(&[], &mut buf).unwrap();
            to.read_message(&buf[..n], &mut scratch).unwrap();
        }
        let (k1, k2) = a.dangerously_get_raw_split();
        let (mut a_send, mut a_recv) = (Cipher::new(&k1).unwrap(), Cipher::new(&k2).unwrap());
        let theirs = b.into_stateless_transport_mode().unwrap();
        for nonce in 0..3u64 {
            let text = format!("message {nonce}");
            let mut msg = text.clone().into_bytes();
            msg.extend([0; TAG_LEN]);
            a_send.seal(&mut msg).unwrap();
            let n = theirs.read_message(nonce, &msg, &mut scratch).unwrap();
            assert_eq!(&scratch[..n], text.as_bytes());

            let n = theirs.write_message(nonce, b"reply", &mut buf).unwrap();
            // Opened into the bytes before it, as a reader compacts its buffer.
            let mut held = b"xyz".to_vec();
            held.extend(&buf[..n]);
            let len = a_recv.open_within(&mut held, 3).unwrap();
            assert_eq!(&held[..len], b"reply");
        }
        // A wrong nonce (a replayed or dropped message) fails.
        let n = theirs.write_message(9, b"late", &mut buf).unwrap();
        let mut late = buf[..n].to_vec();
        assert!(a_recv.open_within(&mut late, 0).is_err());
    }

    #[test]
    fn an_outbox_cuts_frames_into_messages() {
        let mut outbox = Outbox::default();
        outbox.put(&[1; 45]);
        let sizes: Vec<usize> = outbox.room(200_000).iter().map(|p| p.len()).collect();
        assert_eq!(
            sizes,
            [
                MAX_PLAINTEXT - 45,
                MAX_PLAINTEXT,
                MAX_PLAINTEXT,
                200_000 - 3 * MAX_PLAINTEXT + 45
            ]
        );
        assert_eq!(outbox.end, 2 + 45 + 200_000 + 3 * (2 + TAG_LEN));
        outbox.clear();
        assert!(outbox.is_empty());
        // Reused: no bigger than before.
        let before = outbox.buf.len();
        outbox.put(&[2; 1000]);
        assert_eq!(outbox.buf.len(), before);
    }

    #[tokio::test]
    async fn a_long_stream_of_chunks_arrives_intact_through_reused_buffers() {
        let (ra, rb, _, _) = pair(None).await;
        let (_a_rx, mut a_tx, _) = ra.unwrap();
        let (mut b_rx, _b_tx, _) = rb.unwrap();
        let chunk = |i: u32| Frame::Chunk {
            request_id: i,
            file_id: FileId([3; 32]),
            index: i,
            data: Bytes::from(
                (0..262_144 + i as usize)
                    .map(|j| (j as u32 ^ i.wrapping_mul(2_654_435_761)) as u8)
                    .collect::<Vec<_>>(),
            ),
        };
        const CHUNKS: u32 = 40;
        let sender = tokio::spawn(async move {
            for i in 0..CHUNKS {
                if i % 3 == 0 {
                    // Laid out by the caller, as an uploader reading from disk does.
                    let Frame::Chunk { data, .. } = chunk(i) else {
                        unreachable!()
                    };
                    let mut outbox = Outbox::default();
                    outbox.put(&wire::chunk_header(i, FileId([3; 32]), i, data.len()));
                    outbox.put(&data);
                    a_tx.feed(&Frame::KeepAlive); // queued before: goes first
                    a_tx.send_outbox(&mut outbox).await.unwrap();
                } else {
                    a_tx.feed(&chunk(i));
                    a_tx.feed(&Frame::KeepAlive);
                    a_tx.flush().await.unwrap();
                }
            }
            a_tx
        });
        // Some frames stay alive a while (as chunks waiting for the disk do), pinning the
        // buffers they were cut from; the reader moves on to others and reuses them later.
        let mut held = VecDeque::new();
        for i in 0..CHUNKS {
            let mut next = b_rx.recv().await.unwrap().unwrap();
            while next == Frame::KeepAlive {
                next = b_rx.recv().await.unwrap().unwrap();
            }
            assert_eq!(next, chunk(i), "chunk {i}");
            held.push_back(next);
            if held.len() > 6 {
                held.pop_front();
            }
            assert!(b_rx.spares.len() <= SPARE_BUFFERS);
        }
        let mut a_tx = sender.await.unwrap();
        a_tx.shutdown().await.unwrap();
        assert_eq!(b_rx.recv().await.unwrap(), None);
    }

    /// Hands out its bytes in pieces of the given sizes, in turn, as a network would.
    struct Choppy {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Choppy {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let n = size.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn arb_frame() -> impl proptest::strategy::Strategy<Value = Frame> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Frame::KeepAlive),
            any::<u32>().prop_map(|request_id| Frame::Cancel { request_id }),
            (any::<u32>(), 0usize..300_000, any::<u8>()).prop_map(|(id, len, seed)| {
                Frame::Chunk {
                    request_id: id,
                    file_id: FileId([seed; 32]),
                    index: id,
                    data: Bytes::from(
                        (0..len)
                            .map(|i| (i as u8).wrapping_mul(seed))
                            .collect::<Vec<_>>(),
                    ),
                }
            }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Whatever the frames, however they were queued (fed, or laid out by the caller), and
        /// however the bytes arrive, the same frames come out, then a clean end.
        #[test]
        fn frames_survive_any_layout_and_any_read_sizes(
            frames in proptest::collection::vec((arb_frame(), proptest::bool::ANY), 1..12),
            sizes in proptest::collection::vec(1usize..200_000, 1..8),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(async {
                let key = [7u8; 32];
                let mut tx = SecureWriter {
                    io: Vec::new(),
                    cipher: Cipher::new(&key).unwrap(),
                    pending: Outbox::default(),
                };
                for (frame, laid_out) in &frames {
                    match frame {
                        Frame::Chunk { request_id, file_id, index, data } if *laid_out => {
                            let mut outbox = Outbox::default();
                            outbox.put(&wire::chunk_header(*request_id, *file_id, *index, data.len()));
                            outbox.put(data);
                            tx.send_outbox(&mut outbox).await.unwrap();
                        }
                        _ => tx.feed(frame),
                    }
                }
                tx.flush().await.unwrap();
                let mut rx = SecureReader::new(
                    Choppy { data: tx.io, at: 0, sizes, turn: 0 },
                    Cipher::new(&key).unwrap(),
                );
                let mut got = Vec::new();
                while let Some(frame) = rx.recv().await.unwrap() {
                    got.push(frame);
                }
                got
            });
            let want: Vec<Frame> = frames.into_iter().map(|(f, _)| f).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// A reader and the raw sending side for it (a writer fed by hand, as an attacker would).
    fn raw_pair(
        pipe: usize,
    ) -> (
        SecureWriter<tokio::io::DuplexStream>,
        SecureReader<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(pipe);
        let key = [5u8; 32];
        let tx = SecureWriter {
            io: a,
            cipher: Cipher::new(&key).unwrap(),
            pending: Outbox::default(),
        };
        (tx, SecureReader::new(b, Cipher::new(&key).unwrap()))
    }

    /// The first bytes of a frame of `len` body bytes (type byte included) of type `tag`.
    fn frame_start(len: u32, tag: u8) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.push(tag);
        v
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_refused_from_its_length_alone() {
        let (mut tx, mut rx) = raw_pair(1 << 20);
        rx.frame_cap().set(16 * 1024);
        let mut outbox = Outbox::default();
        // A manifest's header: within the protocol's cap, over this session's.
        outbox.put(&frame_start(wire::MAX_MANIFEST_FRAME_LEN, 0x03));
        tx.send_outbox(&mut outbox).await.unwrap();
        let got = rx.recv().await;
        assert!(
            matches!(got, Err(SecureError::FrameTooLarge { cap: 16384, .. })),
            "{got:?}"
        );
        assert!(
            rx.buffered_capacity() <= SMALL_BUFFER,
            "nothing reserved for it"
        );
        // By default, a chunk frame's size: a manifest is refused too.
        let (mut tx, mut rx) = raw_pair(1 << 20);
        let mut outbox = Outbox::default();
        outbox.put(&frame_start(wire::MAX_FRAME_LEN + 1, 0x03));
        tx.send_outbox(&mut outbox).await.unwrap();
        assert!(matches!(
            rx.recv().await,
            Err(SecureError::FrameTooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn a_large_frame_grows_the_buffer_as_it_arrives_and_gives_it_back() {
        let (mut tx, mut rx) = raw_pair(16 << 20);
        rx.frame_cap().set(wire::MAX_MANIFEST_FRAME_LEN);
        // A 64 MiB frame's header, then 3 MiB of it: the buffer holds about what arrived.
        let mut outbox = Outbox::default();
        outbox.put(&frame_start(wire::MAX_MANIFEST_FRAME_LEN, 0x03));
        tx.send_outbox(&mut outbox).await.unwrap();
        for _ in 0..3 {
            outbox.put(&vec![0u8; 1 << 20]);
            tx.send_outbox(&mut outbox).await.unwrap();
        }
        let recv = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(recv.is_err(), "the frame is not whole");
        let held = rx.buffered_capacity();
        assert!(
            held <= 8 << 20,
            "{held} bytes held for 3 MiB received of a 64 MiB frame"
        );
        drop(tx);

        // A real manifest, large, arrives whole; afterwards the buffer is small again.
        let (mut tx, mut rx) = raw_pair(1 << 20);
        rx.frame_cap().set(wire::MAX_MANIFEST_FRAME_LEN);
        let chunks = 200_000u64;
        let manifest = p2p_proto::Manifest {
            id: FileId([1; 32]),
            name: "big".into(),
            size: chunks * 16 * 1024,
            chunk_size: 16 * 1024,
            chunk_hashes: vec![p2p_proto::Sha256Hash([2; 32]); chunks as usize],
            merkle_root: p2p_proto::Sha256Hash([3; 32]),
            chain: Vec::new(),
        };
        let frame = Frame::Manifest(manifest);
        let sender = tokio::spawn({
            let frame = frame.clone();
            async move {
                tx.feed(&frame);
                tx.feed(&Frame::KeepAlive);
                tx.flush().await.unwrap();
                tx
            }
        });
        assert_eq!(rx.recv().await.unwrap(), Some(frame));
        let _tx = sender.await.unwrap();
        assert!(
            rx.buffered_capacity() <= 2 * BUFFER,
            "{} bytes kept after the frame",
            rx.buffered_capacity()
        );
        assert_eq!(rx.recv().await.unwrap(), Some(Frame::KeepAlive));
    }

    #[tokio::test]
    async fn a_silent_session_and_a_slow_frame_time_out() {
        tokio::time::pause();
        let (mut tx, mut rx) = raw_pair(1 << 20);
        rx.set_deadlines(ReadDeadlines {
            idle: Some(Duration::from_secs(5)),
            frame: Some(Duration::from_secs(2)),
        });
        tx.send(&Frame::KeepAlive).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Some(Frame::KeepAlive));
        assert!(matches!(rx.recv().await, Err(SecureError::Idle(_))));

        // Half a frame, then nothing: the frame deadline, shorter than the idle one.
        let mut outbox = Outbox::default();
        outbox.put(&frame_start(100, 0x09));
        tx.send_outbox(&mut outbox).await.unwrap();
        let started = Instant::now();
        assert!(matches!(rx.recv().await, Err(SecureError::SlowFrame(_))));
        assert!(started.elapsed() < Duration::from_secs(3));
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
        assert!(matches!(rb, Err(SecureError::Handshake(_))), "{rb:?}");
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
