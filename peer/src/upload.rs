//! Serving chunks: the per-connection loop that answers manifest and chunk requests from the
//! [`Library`], for every session the acceptor ([`crate::net::accept`]) opens.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;

use p2p_proto::FileId;
use p2p_proto::wire::{self, Frame, PROTOCOL_VERSION, RejectCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net::accept::Serve;
use crate::net::secure::{Outbox, SecureError, SecureReader, SecureWriter};
use crate::net::session::{Session, speaks_our_version};
use crate::net::transport::ConnectionPath;
use crate::storage::{ChunkBuf, Library, LibraryError};
use crate::throttle::Throttle;

/// Answers the sessions other peers open to us (see [`crate::net::accept::Acceptor`]) from
/// the library, within the upload limit.
#[derive(Debug)]
pub struct Uploader {
    library: Arc<Library>,
    throttle: Arc<Throttle>,
}

impl Uploader {
    pub fn new(library: Arc<Library>, throttle: Arc<Throttle>) -> Self {
        Self { library, throttle }
    }
}

impl Serve for Uploader {
    /// Chunk reads run on the connection's task while the disk keeps up only over plain TCP
    /// (see [`crate::storage::InlineIo`] for why relayed and hole-punched streams do not).
    async fn serve(&self, session: Session, path: ConnectionPath) -> Result<(), SecureError> {
        let in_place = path == ConnectionPath::Direct;
        serve_connection(
            session.reader,
            session.writer,
            &self.library,
            &self.throttle,
            in_place,
        )
        .await
    }
}

/// Chunk reads (and their hash checks) queued per connection. They run in place while the
/// disk keeps up (see [`crate::storage::InlineIo`]); on a slow disk they go to the blocking
/// pool, where this many overlap with encrypting and sending.
const READ_AHEAD: usize = 4;

/// How long announcements of new chunks (`Have`) wait for company: they go out with the next
/// frame sent or after this. A leecher writing hundreds of chunks a second then tells each of
/// its peers in a few messages, not one message (and one wake-up at the other end) per chunk.
const HAVE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Answers one peer, whose session is open (our `Hello` sent), until it disconnects. Frames
/// are read on their own task (a frame read is not cancel-safe), chunk reads run ahead of
/// sending, and answers go out in request order. With `in_place`, chunk reads run on this task
/// while the disk keeps up.
pub async fn serve_connection<R, W>(
    rx: SecureReader<R>,
    mut tx: SecureWriter<W>,
    library: &Library,
    throttle: &Throttle,
    in_place: bool,
) -> Result<(), SecureError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(read_frames(rx, frames_tx));
    let mut reads = FuturesOrdered::new();
    // Send buffers of answered chunks, for the next ones (at most READ_AHEAD are in use).
    let mut outboxes: Vec<Outbox> = Vec::new();
    // Files this peer asked about: it hears of our new chunks of them as they arrive.
    let mut interested = std::collections::HashSet::new();
    let mut haves = library.subscribe();
    // When the `Have`s fed since the last write must go out.
    let mut haves_due: Option<tokio::time::Instant> = None;
    let result = loop {
        tokio::select! {
            incoming = frames.recv(), if reads.len() < READ_AHEAD => {
                let frame = match incoming {
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                };
                match frame {
                    Frame::Hello {
                        version,
                        min_version,
                        ..
                    } if !speaks_our_version(version, min_version) => {
                        tx.send(&Frame::Error {
                            code: 1,
                            message: format!("protocol version {PROTOCOL_VERSION} only"),
                        })
                        .await?;
                        break Ok(());
                    }
                    Frame::ManifestRequest { file_id } => {
                        interested.insert(file_id);
                        let reply = manifest_reply(library, file_id);
                        for frame in &reply {
                            tx.feed(frame);
                        }
                        tx.flush().await?;
                    }
                    Frame::Request { request_id, file_id, index } => {
                        let outbox = outboxes.pop().unwrap_or_default();
                        reads.push_back(answer(library, request_id, file_id, index, outbox, in_place));
                    }
                    Frame::Error { message, .. } => {
                        tracing::debug!(%message, "peer reported an error");
                        break Ok(());
                    }
                    // Cancelled requests are cheap to answer anyway; the other frames carry
                    // nothing an uploader needs.
                    _ => {}
                }
            }
            have = haves.recv(), if !interested.is_empty() => match have {
                Ok(first) => {
                    // Queue them with whatever else is waiting; see HAVE_DELAY.
                    let mut next = Some(first);
                    let mut queued = 0;
                    while let Some((file_id, index)) = next.take() {
                        if interested.contains(&file_id) {
                            tx.feed(&Frame::Have { file_id, index: index as u32 });
                            queued += 1;
                        }
                        if queued < 1024 {
                            next = haves.try_recv().ok();
                        }
                    }
                    if queued > 0 && haves_due.is_none() {
                        haves_due = Some(tokio::time::Instant::now() + HAVE_DELAY);
                    }
                }
                // Too many to tell one by one: send the whole picture again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for file_id in &interested {
                        for frame in manifest_reply(library, *file_id).into_iter().skip(1) {
                            tx.feed(&frame);
                        }
                    }
                    tx.flush().await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => interested.clear(),
            },
            // Any write sends the queued `Have`s too; this one is for when nothing else went.
            _ = tokio::time::sleep_until(haves_due.unwrap_or_else(tokio::time::Instant::now)),
                if haves_due.is_some() => {
                haves_due = None;
                tx.flush().await?;
            }
            Some(reply) = reads.next(), if !reads.is_empty() => {
                let mut outbox = match reply {
                    Reply::Chunk(mut chunk) => {
                        throttle.consume(chunk.len).await;
                        tx.send_outbox(&mut chunk.outbox).await?;
                        chunk.outbox
                    }
                    Reply::Reject(frame, outbox) => {
                        tx.send(&frame).await?;
                        outbox
                    }
                };
                outbox.clear();
                outboxes.push(outbox);
            }
        }
    };
    reader.abort();
    result
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut rx: SecureReader<R>,
    out: tokio::sync::mpsc::Sender<Result<Frame, SecureError>>,
) {
    loop {
        let next = rx.recv().await;
        let stop = !matches!(next, Ok(Some(_)));
        let item = match next {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        if out.send(item).await.is_err() || stop {
            return;
        }
    }
}

fn manifest_reply(library: &Library, file_id: FileId) -> Vec<Frame> {
    match library.get(&file_id) {
        Some(entry) => {
            let have = entry.have();
            vec![
                Frame::Manifest(entry.manifest.clone()),
                Frame::Bitfield {
                    file_id,
                    chunk_count: have.len() as u32,
                    bits: have.into_bytes().into(),
                },
            ]
        }
        None => vec![Frame::Reject {
            request_id: 0,
            code: RejectCode::UnknownFile,
            message: format!("file {file_id} is not shared here"),
        }],
    }
}

/// An answer to a chunk request.
enum Reply {
    /// The chunk, laid out for sending.
    Chunk(ChunkAnswer),
    /// A refusal, and the send buffer that was not needed.
    Reject(Frame, Outbox),
}

/// A `Chunk` frame read from disk straight into a send buffer.
#[derive(Debug)]
struct ChunkAnswer {
    outbox: Outbox,
    request_id: u32,
    file_id: FileId,
    index: u32,
    /// The chunk's length, once read.
    len: usize,
}

impl Default for ChunkAnswer {
    fn default() -> Self {
        Self {
            outbox: Outbox::default(),
            request_id: 0,
            file_id: FileId([0; 32]),
            index: 0,
            len: 0,
        }
    }
}

impl ChunkBuf for ChunkAnswer {
    fn room(&mut self, len: usize) -> Vec<&mut [u8]> {
        self.len = len;
        self.outbox.clear();
        let header = wire::chunk_header(self.request_id, self.file_id, self.index, len);
        self.outbox.put(&header);
        self.outbox.room(len)
    }
}

async fn answer(
    library: &Library,
    request_id: u32,
    file_id: FileId,
    index: u32,
    outbox: Outbox,
    in_place: bool,
) -> Reply {
    let chunk = ChunkAnswer {
        outbox,
        request_id,
        file_id,
        index,
        len: 0,
    };
    let (chunk, read) = library
        .read_chunk_into(&file_id, u64::from(index), chunk, in_place)
        .await;
    let Err(e) = read else {
        return Reply::Chunk(chunk);
    };
    let code = match e {
        LibraryError::UnknownFile(_) => RejectCode::UnknownFile,
        LibraryError::NotAvailable { .. } | LibraryError::Changed { .. } => {
            RejectCode::NotAvailable
        }
        _ => RejectCode::Other(255),
    };
    if matches!(e, LibraryError::Changed { .. } | LibraryError::Io { .. }) {
        tracing::warn!(error = %e, "cannot serve a chunk");
    }
    let reject = Frame::Reject {
        request_id,
        code,
        message: e.to_string(),
    };
    Reply::Reject(reject, chunk.outbox)
}
