//! Which chunk to ask a peer for next: the rarest first (fewest connected peers have it),
//! ties broken in a per-download shuffle of file order; once every missing chunk is being
//! fetched somewhere, the endgame hands out duplicates, least duplicated first, of chunks that
//! are late or that the asking peer would deliver well before their current request.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use p2p_proto::Bitfield;

/// Which chunks are wanted, which are being fetched, how many peers have each.
#[derive(Debug)]
pub(super) struct Scheduler {
    have: Bitfield,
    /// Requests in flight per chunk.
    in_flight: HashMap<u64, Flight>,
    availability: Vec<u32>,
    /// Wanted chunks nobody is fetching as (availability, rank, index): rarest first, then by
    /// [`Order`]. Picking is a walk from the front, not a sort.
    queue: BTreeSet<(u32, u64, u64)>,
    order: Order,
}

/// The requests in flight for one chunk, and when the latest of them is expected to deliver.
#[derive(Debug, Clone, Copy)]
struct Flight {
    requests: u32,
    /// When the request the chunk now waits on was made.
    asked_at: Instant,
    /// How long its peer takes to deliver a chunk (its smoothed latency); `None` when not
    /// measured yet, and then any peer may duplicate it in the endgame.
    expected: Option<Duration>,
}

/// A request in the endgame is late once it has been out this many times its peer's latency;
/// then any peer may duplicate it. Before that, only a peer that would deliver the chunk in
/// under half the time its request still has to go may.
///
/// Duplicating every chunk in flight (BitTorrent's endgame) had each leecher of the 32-peer
/// swarm lab receive 1.7-1.8 MiB of its 64 MiB twice, out of uploads the whole swarm shares;
/// with this rule 0.3-0.7 MiB (`bench/README.md`).
pub(super) const LATE: u32 = 2;

/// The tie-break among equally rare chunks: a per-download pseudo-random order of the whole
/// file (SplitMix64 of the chunk index and the download's seed; equal ranks fall back to file
/// order), so leechers that start together ask the seeder for different chunks and have
/// something to trade.
///
/// It used to shuffle only within 16 MiB windows, so that the file filled front to back and
/// writes and reads stayed close together; in the swarm lab (`bench/README.md`) that made the
/// leechers of a 32-peer swarm run out of chunks to trade at every window's end, all at once,
/// every 7-8 s: their uploads fell to a quarter for 2-3 s each time (73 % used over the run,
/// 93 % with the whole file shuffled). Chunks are 256 KiB, so scattered reads and writes cost
/// a disk little.
#[derive(Debug, Clone, Copy)]
pub(super) struct Order {
    /// `None`: file order.
    seed: Option<u64>,
}

impl Order {
    /// Plain file order.
    #[cfg(test)]
    const FILE: Self = Self { seed: None };

    /// A per-download shuffle.
    pub(super) fn random() -> Self {
        let mut seed = [0u8; 8];
        // Without randomness every download shuffles alike, which is still correct.
        let _ = getrandom::fill(&mut seed);
        Self {
            seed: Some(u64::from_le_bytes(seed)),
        }
    }

    fn rank(&self, index: u64) -> u64 {
        let Some(seed) = self.seed else {
            return index;
        };
        // SplitMix64's output function on the seed's sequence at `index`.
        let mut z = seed.wrapping_add(index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// What a peer may take in the endgame: duplicates of chunks asked of others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endgame {
    /// None: it is too slow (see `Scoreboard::may_endgame`).
    Off,
    /// Any, least duplicated first: a peer with the whole file. Its upload is not what the
    /// leechers trade with one another, and at the end of a swarm's download it idles
    /// otherwise, every chunk being asked of leechers (the swarm lab's seeder sent nothing
    /// for the last 2-3 s when it took only late chunks, `bench/README.md`).
    Any,
    /// Only chunks that are late or that this peer would deliver well before their request
    /// ([`LATE`]): another leecher, whose upload the swarm shares.
    Late,
}

/// What [`Scheduler::pick`] gave a peer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Picked {
    pub(super) chunks: Vec<u64>,
    /// When nothing was picked in the endgame: when the first chunk this peer may not
    /// duplicate yet becomes late.
    pub(super) late_at: Option<Instant>,
}

impl Flight {
    /// Whether a peer that delivers a chunk in `mine` may duplicate this one at `now`; if not,
    /// when it may (the chunk is late then).
    fn may_duplicate(&self, mine: Option<Duration>, now: Instant) -> Result<(), Instant> {
        let Some(expected) = self.expected else {
            return Ok(());
        };
        let late = self.asked_at + expected * LATE;
        let due = self.asked_at + expected;
        let faster = mine.is_some_and(|m| now + m * 2 <= due);
        if now >= late || faster {
            Ok(())
        } else {
            Err(late)
        }
    }
}

impl Scheduler {
    pub(super) fn new(have: Bitfield, order: Order) -> Self {
        let queue = (0..have.len())
            .filter(|&i| !have.get(i))
            .map(|i| (0, order.rank(i), i))
            .collect();
        Self {
            availability: vec![0; have.len() as usize],
            have,
            in_flight: HashMap::new(),
            queue,
            order,
        }
    }

    fn key(&self, index: u64) -> (u32, u64, u64) {
        (
            self.availability[index as usize],
            self.order.rank(index),
            index,
        )
    }

    /// Up to `n` chunks `peer_has` for this peer, whose latency is `mine`: unrequested ones
    /// rarest first. Once every missing chunk is requested somewhere, ones in flight elsewhere
    /// as `endgame` allows, least duplicated first; with [`Endgame::Late`] only those whose
    /// request is late ([`LATE`]) or that this peer would deliver in under half the time their
    /// request is still expected to take, and it hears when the first of the others is late.
    pub(super) fn pick(
        &mut self,
        peer_has: &Bitfield,
        n: usize,
        skip: &HashMap<u64, ()>,
        endgame: Endgame,
        mine: Option<Duration>,
        now: Instant,
    ) -> Picked {
        let mut picked: Vec<u64> = self
            .queue
            .iter()
            .filter(|(_, _, i)| peer_has.get(*i))
            .take(n)
            .map(|(_, _, i)| *i)
            .collect();
        for i in &picked {
            let key = self.key(*i);
            self.queue.remove(&key);
        }
        let mut late_at = None;
        // The endgame: only once every missing chunk is already being fetched somewhere.
        if picked.is_empty() && self.queue.is_empty() && endgame != Endgame::Off {
            let mut dup: Vec<(u32, u64)> = Vec::new();
            for (&i, f) in &self.in_flight {
                if !peer_has.get(i) || skip.contains_key(&i) {
                    continue;
                }
                let may = match endgame {
                    Endgame::Late => f.may_duplicate(mine, now),
                    _ => Ok(()),
                };
                match may {
                    Ok(()) => dup.push((f.requests, i)),
                    Err(at) => late_at = Some(late_at.map_or(at, |l: Instant| l.min(at))),
                }
            }
            dup.sort();
            picked = dup.into_iter().take(n).map(|(_, i)| i).collect();
            if !picked.is_empty() {
                late_at = None;
            }
        }
        for i in &picked {
            let f = self.in_flight.entry(*i).or_insert(Flight {
                requests: 0,
                asked_at: now,
                expected: mine,
            });
            f.requests += 1;
            // A duplicate: the chunk now waits on this request, and is late when it is.
            if f.requests > 1 && mine.is_some() {
                (f.asked_at, f.expected) = (now, mine);
            }
        }
        Picked {
            chunks: picked,
            late_at,
        }
    }

    /// One request for `index` ended (answered, failed or abandoned).
    pub(super) fn release(&mut self, index: u64) {
        if let Some(f) = self.in_flight.get_mut(&index) {
            f.requests -= 1;
            if f.requests == 0 {
                self.in_flight.remove(&index);
                if !self.have.get(index) {
                    let key = self.key(index);
                    self.queue.insert(key);
                }
            }
        }
    }

    /// One more connected peer has chunk `index`.
    pub(super) fn add_source(&mut self, index: u64) {
        let (a, rank, _) = self.key(index);
        if self.queue.remove(&(a, rank, index)) {
            self.queue.insert((a + 1, rank, index));
        }
        self.availability[index as usize] += 1;
    }

    /// Records a verified chunk; whether it was new.
    pub(super) fn got(&mut self, index: u64) -> bool {
        let fresh = !self.have.get(index);
        self.have.set(index);
        let key = self.key(index);
        self.queue.remove(&key);
        fresh
    }

    /// Whether chunk `index` is verified and written.
    pub(super) fn has(&self, index: u64) -> bool {
        self.have.get(index)
    }

    /// Requests for chunk `index` in flight (more than one only in the endgame).
    pub(super) fn requests(&self, index: u64) -> u32 {
        self.in_flight.get(&index).map_or(0, |f| f.requests)
    }

    pub(super) fn complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Chunks no peer has been asked for yet (none left: the endgame).
    pub(super) fn unasked(&self) -> usize {
        self.queue.len()
    }

    /// Chunks not yet verified and written.
    pub(super) fn missing(&self) -> u64 {
        self.have.len() - self.have.count_ones()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picks for a peer whose latency is not measured yet.
    fn pick(
        s: &mut Scheduler,
        peer_has: &Bitfield,
        n: usize,
        skip: &HashMap<u64, ()>,
        endgame: bool,
    ) -> Vec<u64> {
        let endgame = if endgame { Endgame::Any } else { Endgame::Off };
        s.pick(peer_has, n, skip, endgame, None, Instant::now())
            .chunks
    }

    fn bits(len: u64, set: &[u64]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in set {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_chunks_first_then_file_order() {
        let mut s = Scheduler::new(bits(6, &[0]), Order::FILE);
        let everything = Bitfield::full(6);
        for i in 1..6 {
            s.add_source(i); // the seeder
        }
        for i in [1, 2, 4] {
            s.add_source(i); // a partial peer
        }
        let none = HashMap::new();
        assert_eq!(pick(&mut s, &everything, 2, &none, true), vec![3, 5]);
        assert_eq!(
            pick(&mut s, &bits(6, &[1, 2, 4]), 5, &none, true),
            vec![1, 2, 4]
        );
        assert!(
            pick(&mut s, &everything, 5, &none, false).is_empty(),
            "no endgame"
        );
    }

    #[test]
    fn equally_rare_chunks_are_shuffled_over_the_whole_file() {
        let len = 256;
        for seed in [0, 11, u64::MAX] {
            let order = Order { seed: Some(seed) };
            let mut by_rank: Vec<u64> = (0..len).collect();
            by_rank.sort_by_key(|&i| (order.rank(i), i));
            assert_ne!(by_rank, (0..len).collect::<Vec<_>>(), "not file order");
            // The first quarter picked comes from all over the file.
            let first = &by_rank[..len as usize / 4];
            for part in 0..4 {
                let within = first.iter().filter(|&&i| i / (len / 4) == part).count();
                assert!(
                    (4..=28).contains(&within),
                    "seed {seed}: {within} from quarter {part}"
                );
            }
        }
        // Two downloads starting together ask for different chunks first, from all over the
        // file.
        let first = |order: Order| {
            let mut s = Scheduler::new(Bitfield::new(len), order);
            (0..len).for_each(|i| s.add_source(i));
            pick(&mut s, &Bitfield::full(len), 8, &HashMap::new(), false)
        };
        let (x, y) = (
            first(Order { seed: Some(3) }),
            first(Order { seed: Some(4) }),
        );
        assert_ne!(x, y);
        assert!(x.iter().chain(&y).any(|&i| i >= len / 2));
    }

    #[test]
    fn released_chunks_return_and_the_endgame_duplicates_least_requested() {
        let mut s = Scheduler::new(Bitfield::new(3), Order::FILE);
        let all = Bitfield::full(3);
        for i in 0..3 {
            s.add_source(i);
        }
        let none = HashMap::new();
        assert_eq!(pick(&mut s, &all, 3, &none, true), vec![0, 1, 2]);
        s.release(1); // its peer vanished
        assert_eq!(pick(&mut s, &all, 3, &none, true), vec![1]);
        assert!(s.got(0));
        s.release(0);
        assert!(!s.got(0), "already had it");
        // Every missing chunk is in flight: the endgame hands out duplicates, but not chunks
        // this peer was already asked for, and only to peers allowed to play it.
        let mut asked = HashMap::new();
        asked.insert(2, ());
        assert!(pick(&mut s, &all, 3, &asked, false).is_empty());
        assert_eq!(pick(&mut s, &all, 3, &asked, true), vec![1]);
        assert_eq!(s.requests(1), 2);
        s.release(1);
        s.release(1);
        assert!(s.got(1) && s.got(2));
        s.release(2);
        assert!(s.complete());
        assert!(s.queue.is_empty());
    }

    #[test]
    fn the_endgame_duplicates_only_late_chunks_or_for_a_much_faster_peer() {
        let mut s = Scheduler::new(Bitfield::new(4), Order::FILE);
        let all = Bitfield::full(4);
        (0..4).for_each(|i| s.add_source(i));
        let none = HashMap::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // Two chunks asked of a leecher that takes 2 s a chunk, two of one that takes 1 s.
        let slow = s.pick(&all, 2, &none, Endgame::Late, Some(ms(2000)), t0);
        let quick = s.pick(&all, 2, &none, Endgame::Late, Some(ms(1000)), t0);
        assert_eq!((slow.chunks, quick.chunks), (vec![0, 1], vec![2, 3]));
        // Another leecher as quick: nothing is late yet; it hears when the first chunk is.
        let t = t0 + ms(500);
        let equal = s.pick(&all, 4, &none, Endgame::Late, Some(ms(1000)), t);
        assert_eq!(
            equal,
            Picked {
                chunks: vec![],
                late_at: Some(t0 + ms(2000))
            }
        );
        // A seeder that takes 0.4 s: only where it saves over half the wait (the slow chunks).
        let fast = s.pick(&all, 4, &none, Endgame::Late, Some(ms(400)), t);
        assert_eq!(fast.chunks, vec![0, 1]);
        // Those now wait on the seeder's requests: nothing is duplicated again before one is
        // late, the seeder's first (0.4 s from 0.5 s, twice).
        let t = t0 + ms(1100);
        let early = s.pick(&all, 4, &none, Endgame::Late, Some(ms(1000)), t);
        assert_eq!(
            early,
            Picked {
                chunks: vec![],
                late_at: Some(t0 + ms(1300))
            }
        );
        // Once all are late, the least duplicated go first.
        let t = t0 + ms(2100);
        let later = s.pick(&all, 2, &none, Endgame::Late, Some(ms(1000)), t);
        assert_eq!(later.chunks, vec![2, 3]);
        assert_eq!((s.requests(0), s.requests(2)), (2, 2));
        // A peer that sits the endgame out gets nothing and waits for nothing.
        assert_eq!(
            s.pick(&all, 4, &none, Endgame::Off, Some(ms(1)), t),
            Picked::default()
        );
    }
}
