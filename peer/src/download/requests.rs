//! The requests a worker has out with its peer, and topping them up from the scheduler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use p2p_proto::Bitfield;
use p2p_proto::wire::Frame;
use parking_lot::Mutex;

use super::scheduler::{Endgame, Picked};
use super::state::Shared;
use super::{DownloadOptions, Sizing, Source, WorkerError};
use crate::net::link::Subscription;

/// `have` without chunk `index`.
pub(super) fn without(have: &Bitfield, index: u64) -> Bitfield {
    let mut fresh = Bitfield::new(have.len());
    for i in (0..have.len()).filter(|&i| i != index && have.get(i)) {
        fresh.set(i);
    }
    fresh
}

/// The requests a worker has out with its peer.
#[derive(Debug)]
pub(super) struct InFlight {
    /// Request id → chunk index and when it was asked for.
    pub(super) by_id: HashMap<u32, (u64, Instant)>,
    /// Every chunk asked of this peer, over any of its connections (see [`super::lane::Lane`]).
    pub(super) asked: Arc<Mutex<HashMap<u64, ()>>>,
}

impl InFlight {
    /// Tops this peer's share of the pipeline up to what its score allows; `busy` chunks
    /// received but still being stored count against it. In the endgame, says when a chunk
    /// this peer may not duplicate yet becomes late (see [`super::scheduler::LATE`]): topping
    /// up again then may give it one.
    pub(super) fn top_up(
        &mut self,
        shared: &Shared,
        opts: &DownloadOptions,
        sizing: Sizing,
        sub: &Subscription,
        peer_has: &Bitfield,
        busy: usize,
    ) -> Result<Option<Instant>, WorkerError> {
        let peer = sub.link().peer();
        let chunk_size = shared.manifest.chunk_size;
        let source = if peer_has.is_complete() {
            Source::Complete
        } else {
            Source::Partial
        };
        let depth = shared
            .scores
            .pipeline(&peer, sizing, source, chunk_size, opts.pipeline);
        let want = depth.saturating_sub(self.by_id.len() + busy);
        if want == 0 {
            return Ok(None);
        }
        let endgame = match (shared.scores.may_endgame(&peer), source) {
            (false, _) => Endgame::Off,
            (true, Source::Complete) => Endgame::Any,
            (true, Source::Partial) => Endgame::Late,
        };
        let mine = shared.scores.get(&peer).latency;
        let now = Instant::now();
        let picked = {
            let (mut s, mut asked) = (shared.sched.lock(), self.asked.lock());
            if s.complete() {
                Picked::default()
            } else {
                let picked = s.pick(peer_has, want, &asked, endgame, mine, now);
                for &index in &picked.chunks {
                    asked.insert(index, ());
                }
                picked
            }
        };
        if picked.chunks.is_empty() {
            return Ok(picked.late_at);
        }
        let file_id = shared.manifest.id;
        let mut requests = Vec::with_capacity(picked.chunks.len());
        for index in picked.chunks {
            let request_id = sub.next_request_id();
            self.by_id.insert(request_id, (index, now));
            requests.push(Frame::Request {
                request_id,
                file_id,
                index: index as u32,
            });
        }
        sub.send(requests)?;
        Ok(None)
    }
}
