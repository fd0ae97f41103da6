//! Which chunk to ask a peer for next: the rarest first (fewest connected peers have it),
//! ties broken in a per-download shuffle of file order; once every missing chunk is being
//! fetched somewhere, the endgame hands out duplicates, least duplicated first.

use std::collections::{BTreeSet, HashMap};

use p2p_proto::Bitfield;

/// Which chunks are wanted, which are being fetched, how many peers have each.
#[derive(Debug)]
pub(super) struct Scheduler {
    have: Bitfield,
    /// Requests in flight per chunk.
    in_flight: HashMap<u64, u32>,
    availability: Vec<u32>,
    /// Wanted chunks nobody is fetching as (availability, rank, index): rarest first, then by
    /// [`Order`]. Picking is a walk from the front, not a sort.
    queue: BTreeSet<(u32, u64, u64)>,
    order: Order,
}

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

    /// Up to `n` chunks `peer_has` for this peer: unrequested ones rarest first; once every
    /// missing chunk is requested somewhere, and if `endgame` allows this peer to, ones in
    /// flight elsewhere, least duplicated first.
    pub(super) fn pick(
        &mut self,
        peer_has: &Bitfield,
        n: usize,
        skip: &HashMap<u64, ()>,
        endgame: bool,
    ) -> Vec<u64> {
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
        // The endgame: only once every missing chunk is already being fetched somewhere.
        if picked.is_empty() && self.queue.is_empty() && endgame {
            let mut dup: Vec<(u32, u64)> = self
                .in_flight
                .iter()
                .filter(|(i, _)| peer_has.get(**i) && !skip.contains_key(i))
                .map(|(i, c)| (*c, *i))
                .collect();
            dup.sort();
            picked = dup.into_iter().take(n).map(|(_, i)| i).collect();
        }
        for i in &picked {
            *self.in_flight.entry(*i).or_insert(0) += 1;
        }
        picked
    }

    /// One request for `index` ended (answered, failed or abandoned).
    pub(super) fn release(&mut self, index: u64) {
        if let Some(c) = self.in_flight.get_mut(&index) {
            *c -= 1;
            if *c == 0 {
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
        self.in_flight.get(&index).copied().unwrap_or(0)
    }

    pub(super) fn complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Chunks not yet verified and written.
    pub(super) fn missing(&self) -> u64 {
        self.have.len() - self.have.count_ones()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.pick(&everything, 2, &none, true), vec![3, 5]);
        assert_eq!(s.pick(&bits(6, &[1, 2, 4]), 5, &none, true), vec![1, 2, 4]);
        assert!(
            s.pick(&everything, 5, &none, false).is_empty(),
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
            s.pick(&Bitfield::full(len), 8, &HashMap::new(), false)
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
        assert_eq!(s.pick(&all, 3, &none, true), vec![0, 1, 2]);
        s.release(1); // its peer vanished
        assert_eq!(s.pick(&all, 3, &none, true), vec![1]);
        assert!(s.got(0));
        s.release(0);
        assert!(!s.got(0), "already had it");
        // Every missing chunk is in flight: the endgame hands out duplicates, but not chunks
        // this peer was already asked for, and only to peers allowed to play it.
        let mut asked = HashMap::new();
        asked.insert(2, ());
        assert!(s.pick(&all, 3, &asked, false).is_empty());
        assert_eq!(s.pick(&all, 3, &asked, true), vec![1]);
        assert_eq!(s.in_flight.get(&1), Some(&2));
        s.release(1);
        s.release(1);
        assert!(s.got(1) && s.got(2));
        s.release(2);
        assert!(s.complete());
        assert!(s.queue.is_empty());
    }
}
