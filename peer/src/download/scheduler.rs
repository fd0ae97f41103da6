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

/// Chunks this many apart in file order are shuffled among themselves (16 MiB). Within a
/// window each download has its own order, so leechers that start together ask the seeder for
/// different chunks and have something to trade; window by window the file still fills from
/// the front, so a download's writes and an uploader's reads stay close together.
const SHUFFLE_WINDOW: u64 = 64;

/// The tie-break among equally rare chunks: file order, permuted within each
/// [`SHUFFLE_WINDOW`] by `x ↦ (a·x + b) mod window` (a bijection, as `a` is odd).
#[derive(Debug, Clone, Copy)]
pub(super) struct Order {
    a: u64,
    b: u64,
}

impl Order {
    /// Plain file order.
    #[cfg(test)]
    const FILE: Self = Self { a: 1, b: 0 };

    /// A per-download shuffle.
    pub(super) fn random() -> Self {
        let mut seed = [0u8; 16];
        // Without randomness every download shuffles alike, which is still correct.
        let _ = getrandom::fill(&mut seed);
        let [a, b] = [&seed[..8], &seed[8..]].map(|h| {
            let mut w = [0u8; 8];
            w.copy_from_slice(h);
            u64::from_le_bytes(w)
        });
        Self { a: a | 1, b }
    }

    fn rank(&self, index: u64) -> u64 {
        let w = SHUFFLE_WINDOW;
        let x = index % w;
        index - x + (self.a.wrapping_mul(x).wrapping_add(self.b) % w)
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
    fn equally_rare_chunks_are_shuffled_within_windows_only() {
        let w = SHUFFLE_WINDOW;
        let order = Order { a: 37, b: 11 };
        for window in 0..3 {
            let mut ranks: Vec<u64> = (window * w..(window + 1) * w)
                .map(|i| order.rank(i))
                .collect();
            assert_ne!(ranks, (window * w..(window + 1) * w).collect::<Vec<_>>());
            ranks.sort();
            assert_eq!(ranks, (window * w..(window + 1) * w).collect::<Vec<_>>());
        }
        // Two downloads starting together ask for different chunks first.
        let len = 3 * w + 5;
        let first = |order: Order| {
            let mut s = Scheduler::new(Bitfield::new(len), order);
            (0..len).for_each(|i| s.add_source(i));
            s.pick(&Bitfield::full(len), 8, &HashMap::new(), false)
        };
        let (x, y) = (first(Order { a: 3, b: 0 }), first(Order { a: 5, b: 7 }));
        assert!(x.iter().all(|i| *i < w) && y.iter().all(|i| *i < w));
        assert_ne!(x, y);
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
