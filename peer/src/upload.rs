//! Serving chunks: the listener that accepts peers and the per-connection loop that answers
//! manifest and chunk requests from the [`Library`].

use std::sync::Arc;

use p2p_proto::wire::{Frame, PROTOCOL_VERSION, RejectCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::net::secure::{self, Role, SecureError, SecureReader, SecureWriter};
use crate::storage::{Library, LibraryError};

/// The name peers announce in `Hello`.
pub const AGENT: &str = concat!("p2p-peer/", env!("CARGO_PKG_VERSION"));

/// Accepts connections until `shutdown`, serving each on its own task.
pub async fn serve(
    listener: TcpListener,
    identity: Identity,
    library: Arc<Library>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (identity, library, shutdown) = (identity.clone(), library.clone(), shutdown.clone());
        tokio::spawn(async move {
            let served = async {
                let (rx, tx, remote) =
                    secure::handshake(stream, &identity, Role::Responder, None).await?;
                tracing::debug!(%addr, peer = %remote, "peer connected");
                serve_connection(rx, tx, &library).await
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = served => if let Err(e) = result {
                    tracing::debug!(%addr, error = %e, "connection ended");
                }
            }
        });
    }
}

/// Answers one peer until it disconnects.
pub async fn serve_connection<R, W>(
    mut rx: SecureReader<R>,
    mut tx: SecureWriter<W>,
    library: &Library,
) -> Result<(), SecureError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    tx.send(&Frame::Hello {
        version: PROTOCOL_VERSION,
        min_version: PROTOCOL_VERSION,
        agent: AGENT.into(),
    })
    .await?;
    while let Some(frame) = rx.recv().await? {
        match frame {
            Frame::Hello {
                version,
                min_version,
                ..
            } if version < PROTOCOL_VERSION || min_version > PROTOCOL_VERSION => {
                tx.send(&Frame::Error {
                    code: 1,
                    message: format!("protocol version {PROTOCOL_VERSION} only"),
                })
                .await?;
                return Ok(());
            }
            Frame::ManifestRequest { file_id } => match library.get(&file_id) {
                Some(entry) => {
                    let have = entry.have();
                    tx.feed(&Frame::Manifest(entry.manifest.clone()));
                    tx.feed(&Frame::Bitfield {
                        file_id,
                        chunk_count: have.len() as u32,
                        bits: have.into_bytes().into(),
                    });
                    tx.flush().await?;
                }
                None => {
                    tx.send(&Frame::Reject {
                        request_id: 0,
                        code: RejectCode::UnknownFile,
                        message: format!("file {file_id} is not shared here"),
                    })
                    .await?
                }
            },
            Frame::Request {
                request_id,
                file_id,
                index,
            } => {
                let reply = match library.read_chunk(&file_id, u64::from(index)).await {
                    Ok(data) => Frame::Chunk {
                        request_id,
                        file_id,
                        index,
                        data,
                    },
                    Err(e) => {
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
                        Frame::Reject {
                            request_id,
                            code,
                            message: e.to_string(),
                        }
                    }
                };
                tx.send(&reply).await?;
            }
            Frame::Error { message, .. } => {
                tracing::debug!(%message, "peer reported an error");
                return Ok(());
            }
            // Requests are answered in order, so there is nothing queued to cancel; the other
            // frames carry nothing an uploader needs.
            _ => {}
        }
    }
    Ok(())
}
