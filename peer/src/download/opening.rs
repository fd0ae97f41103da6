//! A worker's first steps with its peer: connect (the pooled session, or a new one) and open
//! (ask for the manifest, learn which chunks the peer has).

use p2p_proto::wire::{Frame, RejectCode};
use p2p_proto::{Bitfield, FileId};

use super::lane::Lane;
use super::state::Shared;
use super::{DownloadOptions, PeerReport, WorkerError};
use crate::identity::Identity;
use crate::net::PeerAddr;
use crate::net::link::{LinkEvent, Subscription};
use crate::net::transport::ConnectionPath;

/// A subscription to `file` on the session with `peer` for `lane`; `None` for a further lane
/// when the peer's main session is not direct.
pub(super) async fn connect(
    identity: &Identity,
    peer: &PeerAddr,
    lane: &Lane,
    opts: &DownloadOptions,
    report: &mut PeerReport,
    file: FileId,
) -> Result<Option<Subscription>, WorkerError> {
    let (connector, timeout) = (&opts.connector, opts.connect_timeout);
    // A pooled link may close between the pool and `subscribe`: then once more, afresh.
    for _ in 0..2 {
        let link = if lane.index == 0 {
            Some(connector.link(peer, identity, timeout).await?)
        } else {
            connector
                .extra_link(peer, identity, timeout, lane.index)
                .await?
        };
        let Some(link) = link else {
            return Ok(None);
        };
        if let Some(connected) = &lane.connected {
            connected.send_replace(Some(link.path() == ConnectionPath::Direct));
        }
        report.path = Some(link.path());
        if let Some(sub) = link.subscribe(file) {
            return Ok(Some(sub));
        }
    }
    Err(WorkerError::Closed)
}

/// Asks the peer for the manifest (after the tracker's admission to the file, when this peer
/// holds one); returns which chunks it has, once it has shown the same content, and the
/// expiry of the admission sent.
pub(super) async fn open(
    shared: &Shared,
    opts: &DownloadOptions,
    sub: &mut Subscription,
) -> Result<(Bitfield, Option<u64>), WorkerError> {
    let file_id = shared.manifest.id;
    let admission = opts.admissions.get(&file_id);
    let mut frames: Vec<Frame> = admission.into_iter().map(Frame::Admission).collect();
    frames.push(Frame::ManifestRequest { file_id });
    sub.send(frames)?;
    let sent = admission.map(|a| a.expires_at_ms);
    loop {
        let event = tokio::time::timeout(opts.request_timeout, sub.recv())
            .await
            .map_err(|_| WorkerError::Timeout)?;
        let frame = match event {
            LinkEvent::Frame(f) => f,
            LinkEvent::Closed(why) => return Err(WorkerError::closed(why)),
        };
        match frame {
            Frame::Manifest(m) if !m.same_content(&shared.manifest) => {
                return Err(WorkerError::WrongManifest);
            }
            Frame::Bitfield {
                chunk_count, bits, ..
            } => {
                return Bitfield::from_bytes(bits.to_vec(), u64::from(chunk_count))
                    .ok()
                    .filter(|b| b.len() == shared.manifest.chunk_count())
                    .map(|b| (b, sent))
                    .ok_or(WorkerError::WrongManifest);
            }
            Frame::Reject {
                code: RejectCode::NotAdmitted,
                message,
                ..
            } => return Err(WorkerError::NotAdmitted(message)),
            Frame::Reject { .. } => return Err(WorkerError::NoFile),
            Frame::Error { message, .. } => return Err(WorkerError::Refused(message)),
            _ => {}
        }
    }
}
