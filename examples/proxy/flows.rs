//! The flow table: a fixed-capacity map from a client flow (its address and port, and the served address and
//! port it sent to) to a slot, whose index is also its proxy-side port's, with the live flows on an intrusive
//! least-recently-used list and the free slots on a first-in first-out list.
//!
//! Everything is allocated when the table is made; nothing on the hot path allocates. The index is open
//! addressing with linear probing over a power-of-two array at most half full, with backward-shift deletion
//! (no tombstones), keyed with a per-process random SipHash key, so a sender who picks its source ports
//! cannot make probe chains long. Indexing is through `get`/`get_mut` only: no input can make it panic.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;

/// No slot: an empty index cell, the end of a list.
const NONE: u32 = u32::MAX;

/// One client flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The client's address and port.
    pub client: SocketAddr,
    /// The served address and port the client sent to (where its answers come from).
    pub served: SocketAddr,
    /// Index of the backend it is mapped to.
    pub backend: u16,
    /// CLOCK_MONOTONIC ns of its last packet, either way.
    pub last_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    flow: Flow,
    hash: u64,
    live: bool,
    prev: u32,
    next: u32,
}

/// A doubly linked list over slot indices (head: oldest).
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

impl List {
    const EMPTY: List = List { head: NONE, tail: NONE };
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct FlowTable {
    slots: Vec<Slot>,
    index: Vec<u32>,
    mask: usize,
    live: List,
    free: List,
    len: usize,
    keys: RandomState,
}

/// What [`FlowTable::insert`] did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The new flow's slot.
    pub slot: u32,
    /// The flow evicted for it (the least recently used), when the table was full.
    pub evicted: Option<Flow>,
}

impl FlowTable {
    /// A table of `capacity` slots (at least 1, at most 2^24), all free, slot 0 first in line.
    pub fn new(capacity: usize) -> FlowTable {
        let capacity = capacity.clamp(1, 1 << 24);
        let cells = (capacity * 2).next_power_of_two();
        let blank = Flow {
            client: SocketAddr::from(([0, 0, 0, 0], 0)),
            served: SocketAddr::from(([0, 0, 0, 0], 0)),
            backend: 0,
            last_ns: 0,
        };
        let mut table = FlowTable {
            slots: vec![Slot { flow: blank, hash: 0, live: false, prev: NONE, next: NONE }; capacity],
            index: vec![NONE; cells],
            mask: cells - 1,
            live: List::EMPTY,
            free: List::EMPTY,
            len: 0,
            keys: RandomState::new(),
        };
        for slot in 0..capacity as u32 {
            table.push_back(false, slot);
        }
        table
    }

    /// Slots in all.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Live flows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The live flow in `slot`, if any.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Flow> {
        self.slots.get(slot as usize).filter(|s| s.live).map(|s| &s.flow)
    }

    /// The slot of the live flow from `client` to `served`, if any.
    #[inline]
    pub fn find(&self, client: SocketAddr, served: SocketAddr) -> Option<u32> {
        let hash = self.keys.hash_one((client, served));
        let mut at = hash as usize & self.mask;
        // At most half the cells are used, so an empty one ends every probe; the bound is for the compiler.
        for _ in 0..self.index.len() {
            let slot = *self.index.get(at)?;
            if slot == NONE {
                return None;
            }
            if let Some(s) = self.slots.get(slot as usize) {
                if s.hash == hash && s.flow.client == client && s.flow.served == served {
                    return Some(slot);
                }
            }
            at = (at + 1) & self.mask;
        }
        None
    }

    /// Makes a live flow from `client` to `served` on `backend`, seen at `now_ns`, in the free slot that has
    /// been free longest, or, when none is free, in the least recently used flow's slot (evicting it).
    /// The caller has checked that no such flow is live ([`FlowTable::find`]).
    pub fn insert(&mut self, client: SocketAddr, served: SocketAddr, backend: u16, now_ns: u64) -> Option<Inserted> {
        let (slot, evicted) = match self.free.head {
            NONE => {
                let oldest = self.live.head;
                let flow = *self.get(oldest)?;
                self.remove(oldest);
                (self.pop_front(false)?, Some(flow))
            }
            _ => (self.pop_front(false)?, None),
        };
        let hash = self.keys.hash_one((client, served));
        let s = self.slots.get_mut(slot as usize)?;
        *s = Slot { flow: Flow { client, served, backend, last_ns: now_ns }, hash, live: true, prev: NONE, next: NONE };
        self.push_back(true, slot);
        let mut at = hash as usize & self.mask;
        for _ in 0..self.index.len() {
            let cell = self.index.get_mut(at)?;
            if *cell == NONE {
                *cell = slot;
                break;
            }
            at = (at + 1) & self.mask;
        }
        self.len += 1;
        Some(Inserted { slot, evicted })
    }

    /// Marks the live flow in `slot` as seen at `now_ns`: it becomes the most recently used.
    #[inline]
    pub fn touch(&mut self, slot: u32, now_ns: u64) {
        let Some(s) = self.slots.get_mut(slot as usize).filter(|s| s.live) else { return };
        // Times come from the worker's batches, which do not go back; keep the list sorted if one did.
        s.flow.last_ns = s.flow.last_ns.max(now_ns);
        self.unlink(true, slot);
        self.push_back(true, slot);
    }

    /// When the least recently used live flow was last seen.
    #[inline]
    pub fn oldest_ns(&self) -> Option<u64> {
        self.get(self.live.head).map(|f| f.last_ns)
    }

    /// Removes the flows last seen at or before `cutoff_ns`, oldest first, looking at `most` flows at most;
    /// returns how many it removed, and calls `gone` with each one's slot. `refreshed(slot)` tells of traffic
    /// the table did not see (answers another worker relayed, in CLOCK_MONOTONIC ns; 0: none): a flow seen
    /// after the cutoff that way is kept, as the most recently used.
    pub fn expire(
        &mut self,
        cutoff_ns: u64,
        most: usize,
        mut refreshed: impl FnMut(u32) -> u64,
        mut gone: impl FnMut(u32, &Flow),
    ) -> usize {
        let mut removed = 0;
        for _ in 0..most {
            let head = self.live.head;
            let Some(flow) = self.get(head).copied() else { break };
            if flow.last_ns > cutoff_ns {
                break;
            }
            let seen = refreshed(head);
            if seen > cutoff_ns {
                self.touch(head, seen);
                continue;
            }
            self.remove(head);
            gone(head, &flow);
            removed += 1;
        }
        removed
    }

    /// Frees the live flow in `slot`: out of the index and the LRU list, onto the back of the free list.
    pub fn remove(&mut self, slot: u32) {
        let Some(s) = self.slots.get(slot as usize).filter(|s| s.live) else { return };
        let hash = s.hash;
        // Find its cell, then shift later members of the probe run back over the hole (Knuth's algorithm R).
        let mut hole = hash as usize & self.mask;
        let mut found = false;
        for _ in 0..self.index.len() {
            match self.index.get(hole) {
                Some(&c) if c == slot => {
                    found = true;
                    break;
                }
                Some(&c) if c != NONE => hole = (hole + 1) & self.mask,
                _ => break,
            }
        }
        if found {
            let mut j = hole;
            for _ in 0..self.index.len() {
                j = (j + 1) & self.mask;
                let Some(&c) = self.index.get(j) else { break };
                if c == NONE {
                    break;
                }
                let home = self.slots.get(c as usize).map_or(j, |s| s.hash as usize & self.mask);
                // The entry at j may move to the hole unless its home lies cyclically in (hole, j].
                let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
                if !stays {
                    if let Some(h) = self.index.get_mut(hole) {
                        *h = c;
                    }
                    hole = j;
                }
            }
            if let Some(h) = self.index.get_mut(hole) {
                *h = NONE;
            }
        }
        self.unlink(true, slot);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.live = false;
        }
        self.push_back(false, slot);
        self.len = self.len.saturating_sub(1);
    }

    fn list(&mut self, live: bool) -> &mut List {
        if live {
            &mut self.live
        } else {
            &mut self.free
        }
    }

    fn push_back(&mut self, live: bool, slot: u32) {
        let tail = self.list(live).tail;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            (s.prev, s.next) = (tail, NONE);
        }
        match self.slots.get_mut(tail as usize) {
            Some(t) => t.next = slot,
            None => self.list(live).head = slot,
        }
        self.list(live).tail = slot;
    }

    fn pop_front(&mut self, live: bool) -> Option<u32> {
        let head = self.list(live).head;
        self.slots.get(head as usize)?;
        self.unlink(live, head);
        Some(head)
    }

    fn unlink(&mut self, live: bool, slot: u32) {
        let Some(&Slot { prev, next, .. }) = self.slots.get(slot as usize) else { return };
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.list(live).head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.list(live).tail = prev,
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            (s.prev, s.next) = (NONE, NONE);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    fn served() -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 1], 53))
    }

    /// Every live flow is found in its slot, and the index holds exactly the live flows.
    fn check(t: &FlowTable) {
        let mut live = 0;
        for slot in 0..t.capacity() as u32 {
            if let Some(f) = t.get(slot) {
                assert_eq!(t.find(f.client, f.served), Some(slot));
                live += 1;
            }
        }
        assert_eq!(live, t.len());
        assert_eq!(t.index.iter().filter(|&&c| c != NONE).count(), live);
    }

    #[test]
    fn inserts_find_touch_and_evict_the_least_recently_used() {
        let mut t = FlowTable::new(3);
        let a = t.insert(client(1), served(), 0, 10).unwrap();
        let b = t.insert(client(2), served(), 1, 20).unwrap();
        let c = t.insert(client(3), served(), 0, 30).unwrap();
        assert_eq!((a.slot, b.slot, c.slot), (0, 1, 2), "free slots in order");
        assert!(a.evicted.is_none() && c.evicted.is_none());
        check(&t);
        t.touch(a.slot, 40); // b is now the oldest
        assert_eq!(t.oldest_ns(), Some(20));
        let d = t.insert(client(4), served(), 1, 50).unwrap();
        assert_eq!(d.slot, b.slot, "the evicted flow's slot (and port) is reused");
        assert_eq!(d.evicted.unwrap().client, client(2));
        assert_eq!(t.find(client(2), served()), None);
        assert_eq!(t.len(), 3);
        check(&t);
    }

    #[test]
    fn expiry_takes_the_oldest_first_and_freed_slots_wait_longest_first() {
        let mut t = FlowTable::new(4);
        for (i, at) in [(1, 100), (2, 200), (3, 300)] {
            t.insert(client(i), served(), 0, at).unwrap();
        }
        let mut gone = Vec::new();
        assert_eq!(t.expire(250, usize::MAX, |_| 0, |slot, f| gone.push((slot, f.client.port()))), 2);
        assert_eq!(gone, [(0, 1), (1, 2)]);
        assert_eq!((t.len(), t.oldest_ns()), (1, Some(300)));
        check(&t);
        // Slot 3 was never used, then slots 0 and 1 were freed: the next flows take 3, then 0, then 1.
        let slots: Vec<u32> = (10..13).map(|p| t.insert(client(p), served(), 0, 400).unwrap().slot).collect();
        assert_eq!(slots, [3, 0, 1]);
        // Traffic seen elsewhere keeps a flow: slot 2 (seen at 300) was answered at 900.
        assert_eq!(t.oldest_ns(), Some(300));
        assert_eq!(t.expire(350, usize::MAX, |slot| if slot == 2 { 900 } else { 0 }, |_, _| {}), 0);
        assert_eq!(t.oldest_ns(), Some(400), "slot 2 is now the most recently used");
        assert_eq!(t.expire(1000, 1, |_| 0, |_, _| {}), 1, "bounded per call");
        assert_eq!(t.expire(950, usize::MAX, |_| 0, |_, _| {}), 3);
        assert_eq!(t.len(), 0);
        check(&t);
    }

    #[test]
    fn many_inserts_and_removals_keep_the_index_consistent() {
        let mut t = FlowTable::new(64);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = (x % 200) as u16;
            match t.find(client(port), served()) {
                Some(slot) if x % 3 == 0 => t.remove(slot),
                Some(slot) => t.touch(slot, round),
                None => {
                    t.insert(client(port), served(), 0, round).unwrap();
                }
            }
            if round % 997 == 0 {
                check(&t);
            }
        }
        check(&t);
        let before = t.len();
        assert_eq!(t.expire(u64::MAX, usize::MAX, |_| 0, |_, _| {}), before);
        assert_eq!(t.len(), 0);
        check(&t);
    }
}
