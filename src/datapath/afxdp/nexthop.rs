//! Next-hop MAC resolution for frames a worker sends to arbitrary destinations.
//!
//! An AF_XDP worker writes whole Ethernet frames, so it must know the MAC of the next hop for every
//! destination: the gateway's when the kernel routes the destination through one, the destination's own when
//! it is on a connected network. The kernel knows (its routing and neighbour tables), but asking it costs
//! system calls, which the worker's loop never makes. So the work is split:
//!
//! - each worker owns a [`NextHops`]: a fixed-size cache it looks destinations up in with no allocation, lock
//!   or system call. A miss sends a request to the resolver over a bounded channel (`try_send`: never blocks;
//!   a full channel is counted), and [`NextHops::refresh`], called between batches, applies what the resolver
//!   sent back;
//! - one [`Resolver`] thread per interface asks the kernel (the route lookup `ip route get` does, then the
//!   neighbour entry of the next hop), makes the kernel resolve neighbours it does not know yet (NTF_USE: the
//!   kernel sends the ARP request or neighbour solicitation itself), and follows the kernel's route and
//!   neighbour notifications: every destination it has answered is re-resolved when a route changes, and
//!   every answer that changes (a new MAC, a neighbour gone FAILED or deleted, a route now leaving by another
//!   interface) is pushed to every worker.
//!
//! A worker never sends with a MAC the kernel would not use: only neighbours in a valid state (REACHABLE,
//! STALE, DELAY, PROBE, PERMANENT, NOARP) with a non-zero address give one, and an entry changes only by the
//! resolver's answers, which follow the kernel's notifications in order. Between a change in the kernel and
//! the worker's next `refresh` the old answer is still served: the notification's latency, as for any
//! user-space forwarding plane.
//!
//! Since the workers' frames bypass the kernel, the kernel never sees a next hop in use; the resolver stands
//! in for that traffic: it asks the kernel to re-confirm a next hop it has handed out when the entry goes
//! STALE or is deleted (as sending through it would), and a worker asks again about a negative answer after
//! a few thousand lookups of it (a FAILED neighbour is retried only when asked). The resolver follows at most
//! `capacity × workers` destinations; the least recently asked one beyond that is dropped from every worker.
//!
//! Not covered: multicast and broadcast destinations (their routes are not unicast: [`Miss::NoRoute`]). IPv6
//! link-local destinations (fe80::/10), which every interface reaches, are looked up on the resolver's
//! interface.
//!
//! Wiring, for the control plane (a sketch: the worker loop owns its `NextHops`):
//!
//! ```no_run
//! use shunt::datapath::afxdp::nexthop::{Miss, Resolver, ResolverParams};
//! # fn main() -> std::io::Result<()> {
//! let ifindex = shunt::sys::interface_index("eth0")?;
//! let (resolver, mut caches) = Resolver::start(ResolverParams::new(ifindex, 2))?;
//! let mut hops = caches.remove(0); // moved into worker 0's thread
//! // in the worker loop, between batches:
//! hops.refresh();
//! // per datagram to send:
//! let dst = "198.51.100.7".parse().unwrap();
//! match hops.lookup(dst) {
//!     Ok(next_hop_mac) => { /* Ethernet header: next_hop_mac, hops.source_mac() */ }
//!     Err(Miss::Pending | Miss::Unresolved | Miss::NoRoute) => { /* drop (and count) the datagram */ }
//! }
//! // publish hops.stats() with the worker's counters; at shutdown, after the workers:
//! resolver.stop();
//! # Ok(())
//! # }
//! ```

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::sys::route::{Neighbour, NudState, Route, RouteEvent, RouteEvents, RouteKind, RouteSocket};

/// Why [`NextHops::lookup`] has no MAC for a destination. The caller drops (or holds) the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The kernel has no route to the destination, or its route leaves by another interface, or it is not a
    /// unicast route (one of this host's addresses, broadcast, blackhole, ...): frames on this interface
    /// cannot reach it.
    NoRoute,
    /// The route leaves by this interface but the next hop's MAC is not known: resolution is under way
    /// (INCOMPLETE) or failed (FAILED). The resolver has asked the kernel to resolve it and pushes the MAC
    /// when the kernel learns it.
    Unresolved,
    /// The resolver has been asked about the destination and has not answered yet (or could not be asked:
    /// its request channel was full, counted in [`NextHopStats::requests_dropped`]; a later lookup asks again).
    Pending,
}

/// A worker's next-hop counters, plain numbers it can publish with its other counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NextHopStats {
    /// Lookups that returned a [`Miss`].
    pub misses: u64,
    /// Requests to the resolver not sent because its channel was full (or the resolver had stopped).
    pub requests_dropped: u64,
    /// Destinations pushed out of the cache to make room for another (the table was full around it).
    pub evictions: u64,
}

/// Sizes of a [`Resolver`] and its caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolverParams {
    /// The interface frames leave by: destinations routed through any other resolve to [`Miss::NoRoute`].
    pub ifindex: u32,
    /// How many workers (one [`NextHops`] each).
    pub workers: usize,
    /// Destinations each worker's cache holds at least (its table has twice as many slots, a power of two).
    pub capacity: usize,
    /// Requests that may wait for the resolver, all workers together.
    pub request_queue: usize,
    /// Answers that may wait for each worker's next [`NextHops::refresh`]; more wait in the resolver.
    pub update_queue: usize,
}

impl ResolverParams {
    /// Defaults for interface `ifindex` and `workers` workers: 1024 destinations per worker, 1024 requests
    /// and 1024 answers in flight.
    pub fn new(ifindex: u32, workers: usize) -> ResolverParams {
        ResolverParams { ifindex, workers, capacity: 1024, request_queue: 1024, update_queue: 1024 }
    }
}

/// Lookups of a negative answer ([`Miss::NoRoute`], [`Miss::Unresolved`]) after which a worker asks the
/// resolver again. Notifications cover route and neighbour changes, but a neighbour that FAILED is retried by
/// the kernel only when asked: re-asking now and then is what asks it, without reading a clock per lookup.
const RETRY_AFTER_LOOKUPS: u16 = 4096;
/// The longest a probe sequence in a cache grows before a full neighbourhood evicts: bounds a lookup's cost.
const MAX_PROBE: usize = 16;
/// How long the resolver waits for notifications (which wake it at once) before it looks for workers' requests
/// again, while requests are coming: the latency of its answer to one (workers cannot wake it: that would be a
/// system call on their side).
const ACTIVE_WAIT: Duration = Duration::from_millis(2);
/// The longest wait once requests have stopped coming: each quiet turn doubles the wait from [`ACTIVE_WAIT`] up
/// to this, so an idle resolver wakes ~30 times a second instead of 500, and the first request after a quiet
/// spell waits at most this long for its answer (the sends to a new destination are dropped and counted as
/// unresolved meanwhile, as they are while the kernel resolves the neighbour).
const QUIET_WAIT: Duration = Duration::from_millis(32);
/// The least time between two resolutions the resolver asks of the kernel for one next hop: a destination
/// that stays unresolvable is asked about again and again by every worker. A request while the entry is
/// INCOMPLETE costs the kernel nothing (its own retransmit timer paces the solicitations), but one on a FAILED
/// entry starts a new round of them: this bounds those to a few per second, as sending traffic would.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// A worker's question: what is `dst`'s next-hop MAC?
#[derive(Debug, Clone, Copy)]
struct Request {
    worker: usize,
    dst: IpAddr,
}

/// The resolver's answer for one destination (sent on a request, and again whenever it changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Mac([u8; 6]),
    NoRoute,
    Unresolved,
    /// The resolver no longer follows the destination: drop it, so that no stale MAC outlives the following.
    Forget,
}

#[derive(Debug, Clone, Copy)]
struct Update {
    dst: IpAddr,
    answer: Answer,
}

/// What a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Resolved([u8; 6]),
    Pending,
    NoRoute,
    Unresolved,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    dst: IpAddr,
    state: State,
    /// Lookups of a negative state left before asking again.
    retry: u16,
}

/// A fixed-size open-addressing table: linear probing, at most [`MAX_PROBE`] slots from a destination's home
/// (a lookup's cost is bounded whatever the load), deletion by re-placing the rest of the run (no tombstones
/// pile up). One slot always stays empty: a run then never wraps all the way round, which deletion needs.
/// Allocated once; nothing after that allocates.
#[derive(Debug)]
struct Cache {
    slots: Box<[Option<Slot>]>,
    mask: usize,
    /// `64 - log2(len)`: Fibonacci hashing keeps the top bits of the product.
    shift: u32,
    /// Occupied slots.
    used: usize,
    /// Rotates the victim when one must go, so that one hot destination is not always the one pushed out.
    victim: usize,
}

impl Cache {
    /// A table for `capacity` destinations: twice as many slots, rounded up to a power of two (at least 16),
    /// so that runs stay short.
    fn new(capacity: usize) -> Cache {
        let len = capacity.clamp(8, 1 << 24).saturating_mul(2).next_power_of_two();
        Cache {
            slots: vec![None; len].into_boxed_slice(),
            mask: len - 1,
            shift: 64 - len.trailing_zeros(),
            used: 0,
            victim: 0,
        }
    }

    /// The most destinations the table holds (all slots but the one kept empty).
    fn capacity(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, dst: &IpAddr) -> usize {
        let bits: u128 = match dst {
            // Distinct from every IPv6 address but the v4-mapped one, whose key still differs.
            IpAddr::V4(v4) => u128::from(u32::from(*v4)) | (0xffff << 32),
            IpAddr::V6(v6) => u128::from(*v6),
        };
        let folded = (bits as u64) ^ ((bits >> 64) as u64).rotate_left(31);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    fn window(&self) -> usize {
        MAX_PROBE.min(self.slots.len())
    }

    /// The slot index holding `dst`.
    fn find(&self, dst: &IpAddr) -> Option<usize> {
        let home = self.home(dst);
        for i in 0..self.window() {
            let at = (home + i) & self.mask;
            match self.slots.get(at)? {
                None => return None,
                Some(slot) if slot.dst == *dst => return Some(at),
                Some(_) => {}
            }
        }
        None
    }

    fn get_mut(&mut self, dst: &IpAddr) -> Option<&mut Slot> {
        let at = self.find(dst)?;
        self.slots.get_mut(at)?.as_mut()
    }

    /// Puts `dst` in the table with `state`; `true` when another destination was evicted for it.
    fn insert(&mut self, dst: IpAddr, state: State) -> bool {
        let new = Slot { dst, state, retry: RETRY_AFTER_LOOKUPS };
        if let Some(slot) = self.get_mut(&dst) {
            *slot = new;
            return false;
        }
        let mut evicted = false;
        if self.used + 1 >= self.slots.len() {
            // The table is as full as it may be: make room first.
            for _ in 0..self.slots.len() {
                self.victim = (self.victim + 1) & self.mask;
                if let Some(Some(slot)) = self.slots.get(self.victim) {
                    let old = slot.dst;
                    self.remove(&old);
                    evicted = true;
                    break;
                }
            }
        }
        let home = self.home(&dst);
        for i in 0..self.window() {
            if let Some(slot @ None) = self.slots.get_mut((home + i) & self.mask) {
                *slot = Some(new);
                self.used += 1;
                return evicted;
            }
        }
        // Every slot of the neighbourhood holds another destination: replace one. No slot becomes empty, so
        // every other destination is still found where it was.
        self.victim = self.victim.wrapping_add(1);
        if let Some(slot) = self.slots.get_mut((home + self.victim % self.window()) & self.mask) {
            *slot = Some(new);
        }
        true
    }

    /// Takes `dst` out of the table. The entries after it, up to the next empty slot, are put back in
    /// again: each lands in the first free slot from its home, so probing (which stops at an empty slot)
    /// still finds every one. Each fits within its window, as it did before, so nothing is evicted. (This
    /// needs the run to end: hence the slot kept empty.)
    fn remove(&mut self, dst: &IpAddr) {
        let Some(hole) = self.find(dst) else { return };
        if let Some(slot) = self.slots.get_mut(hole) {
            *slot = None;
            self.used -= 1;
        }
        let mut at = hole;
        for _ in 1..self.slots.len() {
            at = (at + 1) & self.mask;
            let Some(slot) = self.slots.get_mut(at).and_then(Option::take) else { break };
            let home = self.home(&slot.dst);
            for i in 0..self.window() {
                if let Some(free @ None) = self.slots.get_mut((home + i) & self.mask) {
                    *free = Some(slot);
                    break;
                }
            }
        }
    }

    fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.used = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

/// One worker's next-hop cache: destination IP → next-hop MAC, filled by the [`Resolver`] that made it.
///
/// [`lookup`](NextHops::lookup) and [`refresh`](NextHops::refresh) allocate nothing, take no lock and make no
/// system call, so they belong in the worker's loop. `Send`: made by the control plane, moved to its worker.
#[derive(Debug)]
pub struct NextHops {
    worker: usize,
    cache: Cache,
    requests: Sender<Request>,
    updates: Receiver<Update>,
    /// Answers one refresh applies at most: the channel's capacity, so that a resolver refilling it cannot
    /// keep the worker from its packets.
    refresh_budget: usize,
    source_mac: [u8; 6],
    stats: NextHopStats,
}

impl NextHops {
    /// The next-hop MAC for `dst`: the gateway's when the kernel routes `dst` through one, `dst`'s own when it
    /// is on a connected network. A destination not in the cache is asked of the resolver ([`Miss::Pending`]);
    /// its answer counts from the next [`refresh`](NextHops::refresh).
    #[inline]
    pub fn lookup(&mut self, dst: IpAddr) -> Result<[u8; 6], Miss> {
        let miss = match self.cache.get_mut(&dst) {
            Some(Slot { state: State::Resolved(mac), .. }) => return Ok(*mac),
            Some(Slot { state: State::Pending, .. }) => Miss::Pending,
            Some(slot) => {
                let miss = if slot.state == State::NoRoute { Miss::NoRoute } else { Miss::Unresolved };
                slot.retry = slot.retry.saturating_sub(1);
                if slot.retry == 0 {
                    slot.retry = RETRY_AFTER_LOOKUPS;
                    self.ask(dst);
                }
                miss
            }
            None => {
                if self.ask(dst) && self.cache.insert(dst, State::Pending) {
                    self.stats.evictions += 1;
                }
                Miss::Pending
            }
        };
        self.stats.misses += 1;
        Err(miss)
    }

    /// Applies the answers the resolver has sent since the last call (new destinations resolved, MACs that
    /// changed, destinations that became unreachable). Call it between batches. Should the resolver be gone,
    /// empties the cache: with nobody following the kernel's tables, no answer can be trusted to stay right.
    pub fn refresh(&mut self) {
        for _ in 0..self.refresh_budget {
            match self.updates.try_recv() {
                Ok(update) => self.apply(update),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.cache.clear();
                    return;
                }
            }
        }
    }

    /// The interface's own MAC: the source address of the frames this worker sends.
    pub fn source_mac(&self) -> [u8; 6] {
        self.source_mac
    }

    /// This worker's counters so far.
    pub fn stats(&self) -> NextHopStats {
        self.stats
    }

    /// How many destinations the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Asks the resolver about `dst`; `false` (and counted) when the request could not be queued.
    fn ask(&mut self, dst: IpAddr) -> bool {
        match self.requests.try_send(Request { worker: self.worker, dst }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.requests_dropped += 1;
                false
            }
        }
    }

    fn apply(&mut self, update: Update) {
        let state = match update.answer {
            Answer::Mac(mac) => State::Resolved(mac),
            Answer::NoRoute => State::NoRoute,
            Answer::Unresolved => State::Unresolved,
            Answer::Forget => {
                self.cache.remove(&update.dst);
                return;
            }
        };
        // Only destinations this worker asked about (and still holds) are updated: answers about others would
        // evict what it uses for what it may never send to.
        if let Some(slot) = self.cache.get_mut(&update.dst) {
            slot.state = state;
            slot.retry = RETRY_AFTER_LOOKUPS;
        }
    }
}

/// The background thread that answers every worker's [`NextHops`] for one interface, from the kernel's
/// tables and their notifications. Stops, and is joined, on [`Resolver::stop`] or when dropped.
#[derive(Debug)]
pub struct Resolver {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    source_mac: [u8; 6],
}

impl Resolver {
    /// Opens the netlink sockets in the calling thread's network namespace (the thread keeps them there),
    /// reads the interface's MAC, and starts the resolver thread (`shunt-nexthop`, on the CPUs the caller
    /// may use: start it from a thread that avoids the workers' cores). Returns it with one [`NextHops`] per
    /// worker, in worker order. Fails when the interface does not exist or has no Ethernet address.
    pub fn start(params: ResolverParams) -> io::Result<(Resolver, Vec<NextHops>)> {
        // Subscribe before the first query, so that a change between the two is seen.
        let events = RouteEvents::subscribe()?;
        let mut socket = RouteSocket::open()?;
        let source_mac = socket.link_mac(params.ifindex)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("interface {} has no Ethernet address", params.ifindex))
        })?;
        let (request_tx, request_rx) = crossbeam_channel::bounded(params.request_queue.max(1));
        let mut workers = Vec::with_capacity(params.workers);
        let mut senders = Vec::with_capacity(params.workers);
        for worker in 0..params.workers {
            let (tx, rx) = crossbeam_channel::bounded(params.update_queue.max(1));
            senders.push(tx);
            workers.push(NextHops {
                worker,
                cache: Cache::new(params.capacity),
                requests: request_tx.clone(),
                updates: rx,
                refresh_budget: params.update_queue.max(1),
                source_mac,
                stats: NextHopStats::default(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut core = Core::new(params.ifindex, senders, params.capacity.saturating_mul(params.workers).max(16));
        let thread = std::thread::Builder::new().name("shunt-nexthop".into()).spawn({
            let stop = stop.clone();
            move || core.run(&mut socket, events, &request_rx, &stop)
        })?;
        Ok((Resolver { stop, thread: Some(thread), source_mac }, workers))
    }

    /// The interface's own MAC, as the workers' [`NextHops::source_mac`] give it.
    pub fn source_mac(&self) -> [u8; 6] {
        self.source_mac
    }

    /// Stops the thread and waits for it (within one notification wait, a few ms). Workers' caches empty on
    /// their next [`NextHops::refresh`]: stop the workers first.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("next-hop resolver thread panicked");
            }
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The kernel queries the resolver makes: [`RouteSocket`] in production, a table in the unit tests.
trait Tables {
    fn route_get_on(&mut self, dst: IpAddr, oif: Option<u32>) -> io::Result<Option<Route>>;
    fn neighbour_get(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Neighbour>>;
    fn neighbour_resolve(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()>;
}

impl Tables for RouteSocket {
    fn route_get_on(&mut self, dst: IpAddr, oif: Option<u32>) -> io::Result<Option<Route>> {
        RouteSocket::route_get_on(self, dst, oif)
    }
    fn neighbour_get(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Neighbour>> {
        RouteSocket::neighbour_get(self, ifindex, ip)
    }
    fn neighbour_resolve(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        RouteSocket::neighbour_resolve(self, ifindex, ip)
    }
}

/// What the resolver knows about a destination it has answered.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    answer: Answer,
    /// The address whose neighbour entry gives the MAC (gateway or destination), when the route leaves by
    /// the interface.
    next_hop: Option<IpAddr>,
    /// When a worker last asked (the resolver's request count), to forget the least recently asked first.
    asked: u64,
}

/// The resolver thread's state, apart from its sockets.
struct Core {
    ifindex: u32,
    workers: Vec<Sender<Update>>,
    /// Answers waiting for room in each worker's channel, latest per destination: coalescing keeps this as
    /// small as the set of destinations, and order between destinations does not matter.
    backlog: Vec<HashMap<IpAddr, Answer>>,
    tracked: HashMap<IpAddr, Tracked>,
    max_tracked: usize,
    /// When the kernel was last asked to resolve each next hop.
    resolving: HashMap<IpAddr, Instant>,
    requests_seen: u64,
}

impl Core {
    fn new(ifindex: u32, workers: Vec<Sender<Update>>, max_tracked: usize) -> Core {
        let backlog = workers.iter().map(|_| HashMap::new()).collect();
        Core {
            ifindex,
            workers,
            backlog,
            tracked: HashMap::new(),
            max_tracked,
            resolving: HashMap::new(),
            requests_seen: 0,
        }
    }

    fn run(
        &mut self,
        tables: &mut impl Tables,
        mut events: RouteEvents,
        requests: &Receiver<Request>,
        stop: &AtomicBool,
    ) {
        let mut batch = Vec::new();
        let mut wait = ACTIVE_WAIT;
        while !stop.load(Ordering::Relaxed) {
            let mut asked = false;
            while let Ok(request) = requests.try_recv() {
                self.request(tables, request);
                asked = true;
            }
            self.flush();
            wait = if asked { ACTIVE_WAIT } else { (wait * 2).min(QUIET_WAIT) };
            batch.clear();
            if let Err(e) = events.wait(wait, &mut batch) {
                tracing::warn!("next-hop resolver: reading route notifications: {e}");
                // Whatever was missed, resolve again; and do not spin on a broken socket.
                batch.push(RouteEvent::Lost);
                std::thread::sleep(wait);
            }
            self.events(tables, &batch);
        }
    }

    /// Answers a worker's request with a fresh resolution, and every worker if the answer changed.
    fn request(&mut self, tables: &mut impl Tables, request: Request) {
        self.requests_seen += 1;
        let (answer, next_hop) = self.resolve(tables, request.dst);
        let previous = self.tracked.insert(request.dst, Tracked { answer, next_hop, asked: self.requests_seen });
        if previous.is_some_and(|p| p.answer != answer) {
            self.broadcast(request.dst, answer);
        } else {
            self.send(request.worker, request.dst, answer);
        }
        if previous.is_none() && self.tracked.len() > self.max_tracked {
            self.forget_oldest();
        }
    }

    /// Route and neighbour notifications: re-resolve what they may have changed, push what did.
    fn events(&mut self, tables: &mut impl Tables, events: &[RouteEvent]) {
        let (mut v4, mut v6) = (false, false);
        for event in events {
            match *event {
                RouteEvent::Route { ipv6 } => {
                    v4 |= !ipv6;
                    v6 |= ipv6;
                }
                RouteEvent::Lost => (v4, v6) = (true, true),
                RouteEvent::Neighbour { neighbour, deleted } if neighbour.ifindex == self.ifindex => {
                    let answer = match neighbour.usable_mac() {
                        Some(mac) if !deleted => Answer::Mac(mac),
                        _ => Answer::Unresolved,
                    };
                    let changed: Vec<IpAddr> = self
                        .tracked
                        .iter_mut()
                        .filter(|(_, t)| t.next_hop == Some(neighbour.ip) && t.answer != answer)
                        .map(|(dst, t)| {
                            t.answer = answer;
                            *dst
                        })
                        .collect();
                    for dst in changed {
                        self.broadcast(dst, answer);
                    }
                    // Frames to a next hop we hand out bypass the kernel, so the kernel never sees it in use:
                    // left alone, a STALE entry would never be re-confirmed (a neighbour that changed MAC or
                    // died would keep its old address) and unused entries are garbage-collected. Do what the
                    // kernel does when it sends to one: resolve it (STALE goes DELAY, then a unicast probe).
                    let in_use = self.tracked.values().any(|t| t.next_hop == Some(neighbour.ip));
                    if in_use && (deleted || neighbour.state == NudState::STALE) {
                        self.kick(tables, neighbour.ip);
                    }
                }
                RouteEvent::Neighbour { .. } => {}
            }
        }
        if v4 || v6 {
            let family: Vec<IpAddr> =
                self.tracked.keys().filter(|d| if d.is_ipv4() { v4 } else { v6 }).copied().collect();
            for dst in family {
                let (answer, next_hop) = self.resolve(tables, dst);
                if let Some(t) = self.tracked.get_mut(&dst) {
                    t.next_hop = next_hop;
                    if t.answer != answer {
                        t.answer = answer;
                        self.broadcast(dst, answer);
                    }
                }
            }
        }
    }

    /// The answer for `dst` from the kernel's tables, and the next hop it depends on. A next hop without a
    /// usable entry (or only a STALE one, which the kernel would re-confirm on use) is handed to the kernel to
    /// resolve.
    fn resolve(&mut self, tables: &mut impl Tables, dst: IpAddr) -> (Answer, Option<IpAddr>) {
        // A link-local destination is on every interface's link: ask about ours, or the kernel picks one.
        let link_local = matches!(dst, IpAddr::V6(v6) if v6.is_unicast_link_local());
        let route = match tables.route_get_on(dst, link_local.then_some(self.ifindex)) {
            Ok(Some(route)) => route,
            Ok(None) => return (Answer::NoRoute, None),
            Err(e) => {
                tracing::debug!("next-hop resolver: route to {dst}: {e}");
                return (Answer::Unresolved, None);
            }
        };
        if route.kind != RouteKind::Unicast || route.ifindex != self.ifindex {
            return (Answer::NoRoute, None);
        }
        let hop = route.next_hop(dst);
        let neighbour = tables.neighbour_get(self.ifindex, hop).unwrap_or_else(|e| {
            tracing::debug!("next-hop resolver: neighbour {hop}: {e}");
            None
        });
        let mac = neighbour.and_then(|n| n.usable_mac());
        if mac.is_none() || neighbour.is_some_and(|n| n.state == NudState::STALE) {
            self.kick(tables, hop);
        }
        (mac.map_or(Answer::Unresolved, Answer::Mac), Some(hop))
    }

    /// Asks the kernel to resolve `hop`, at most once per [`RESOLVE_INTERVAL`].
    fn kick(&mut self, tables: &mut impl Tables, hop: IpAddr) {
        let now = Instant::now();
        if self.resolving.get(&hop).is_some_and(|&at| now.duration_since(at) < RESOLVE_INTERVAL) {
            return;
        }
        if self.resolving.len() > self.max_tracked {
            self.resolving.retain(|_, at| now.duration_since(*at) < RESOLVE_INTERVAL);
        }
        self.resolving.insert(hop, now);
        if let Err(e) = tables.neighbour_resolve(self.ifindex, hop) {
            tracing::debug!("next-hop resolver: resolving {hop}: {e}");
        }
    }

    fn forget_oldest(&mut self) {
        let oldest = self.tracked.iter().min_by_key(|(_, t)| t.asked).map(|(dst, _)| *dst);
        if let Some(dst) = oldest {
            self.tracked.remove(&dst);
            self.broadcast(dst, Answer::Forget);
        }
    }

    fn send(&mut self, worker: usize, dst: IpAddr, answer: Answer) {
        if let Some(backlog) = self.backlog.get_mut(worker) {
            backlog.insert(dst, answer);
        }
    }

    fn broadcast(&mut self, dst: IpAddr, answer: Answer) {
        for backlog in &mut self.backlog {
            backlog.insert(dst, answer);
        }
    }

    /// Moves waiting answers into the workers' channels while they have room. Answers about one destination
    /// reach a worker in the order they were made: a newer one replaces an older one still waiting here, and
    /// is queued behind the ones already in the channel.
    fn flush(&mut self) {
        for (tx, backlog) in self.workers.iter().zip(&mut self.backlog) {
            let mut full = false;
            backlog.retain(|dst, answer| {
                if full {
                    return true;
                }
                match tx.try_send(Update { dst: *dst, answer: *answer }) {
                    Ok(()) | Err(TrySendError::Disconnected(_)) => false,
                    Err(TrySendError::Full(_)) => {
                        full = true;
                        true
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Addresses 198.18.x.y that share a home slot in `cache`, at least `n` of them.
    fn colliding(cache: &Cache, n: usize) -> Vec<IpAddr> {
        let mut by_home: HashMap<usize, Vec<IpAddr>> = HashMap::new();
        for i in 0..65536u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0xc612_0000 | i));
            let group = by_home.entry(cache.home(&ip)).or_default();
            group.push(ip);
            if group.len() >= n {
                return group.clone();
            }
        }
        panic!("no {n} colliding addresses")
    }

    #[test]
    fn cache_inserts_finds_and_removes() {
        let mut cache = Cache::new(100);
        assert_eq!(cache.capacity(), 255);
        let a = v4(198, 18, 0, 2);
        let b = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2));
        // The v4-mapped form of `a` is another key.
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped());
        assert!(cache.get_mut(&a).is_none());
        assert!(!cache.insert(a, State::Resolved([2, 0, 0, 0, 0, 1])));
        assert!(!cache.insert(b, State::Pending));
        assert_eq!(cache.get_mut(&a).map(|s| s.state), Some(State::Resolved([2, 0, 0, 0, 0, 1])));
        assert_eq!(cache.get_mut(&b).map(|s| s.state), Some(State::Pending));
        assert!(cache.get_mut(&mapped).is_none());
        // Inserting again replaces.
        assert!(!cache.insert(a, State::Unresolved));
        assert_eq!(cache.get_mut(&a).map(|s| s.state), Some(State::Unresolved));
        assert_eq!(cache.len(), 2);
        cache.remove(&a);
        assert!(cache.get_mut(&a).is_none());
        assert!(cache.get_mut(&b).is_some());
        cache.remove(&a);
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn colliding_destinations_are_all_found_and_survive_removals() {
        let mut cache = Cache::new(64);
        let group = colliding(&cache, 6);
        for (i, ip) in group.iter().enumerate() {
            assert!(!cache.insert(*ip, State::Resolved([2, 0, 0, 0, 0, i as u8])));
        }
        for (i, ip) in group.iter().enumerate() {
            assert_eq!(cache.get_mut(ip).map(|s| s.state), Some(State::Resolved([2, 0, 0, 0, 0, i as u8])));
        }
        // Removing from the middle of the run shifts the rest back: every other entry is still found.
        cache.remove(&group[1]);
        cache.remove(&group[3]);
        for (i, ip) in group.iter().enumerate() {
            let found = cache.get_mut(ip).map(|s| s.state);
            if i == 1 || i == 3 {
                assert_eq!(found, None);
            } else {
                assert_eq!(found, Some(State::Resolved([2, 0, 0, 0, 0, i as u8])), "entry {i}");
            }
        }
        assert_eq!(cache.len(), group.len() - 2);
    }

    #[test]
    fn a_full_table_evicts_within_the_neighbourhood_and_keeps_working() {
        let mut cache = Cache::new(8);
        assert_eq!(cache.capacity(), 15);
        let mut evicted = 0;
        let ips: Vec<IpAddr> = (0..200u8).map(|i| v4(198, 19, 0, i)).collect();
        for ip in &ips {
            evicted += usize::from(cache.insert(*ip, State::Pending));
            // The newest destination is always there.
            assert!(cache.get_mut(ip).is_some());
        }
        assert_eq!(cache.len(), 15);
        assert_eq!(evicted, ips.len() - 15);
        // Every resident entry is found; removing them all empties the table.
        let resident: Vec<IpAddr> = ips.iter().filter(|ip| cache.get_mut(ip).is_some()).copied().collect();
        assert_eq!(resident.len(), 15);
        for ip in &resident {
            cache.remove(ip);
            assert!(cache.get_mut(ip).is_none());
            let left = resident.iter().filter(|r| cache.get_mut(r).is_some()).count();
            assert_eq!(
                left,
                cache.len(),
                "after removing {ip}: {:?}",
                cache.slots.iter().map(|s| s.map(|s| (s.dst, cache.home(&s.dst)))).collect::<Vec<_>>()
            );
        }
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn random_inserts_and_removes_never_lose_or_mix_up_entries() {
        let mut cache = Cache::new(8);
        let ips: Vec<IpAddr> = (0..64u8).map(|i| v4(198, 18, 3, i)).collect();
        let mut model: HashMap<IpAddr, State> = HashMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let ip = ips[(seed % 64) as usize];
            if seed & (1 << 40) == 0 {
                let state = State::Resolved([2, 0, 0, 0, (step >> 8) as u8, step as u8]);
                cache.insert(ip, state);
                model.insert(ip, state);
            } else {
                cache.remove(&ip);
                model.remove(&ip);
                assert!(cache.get_mut(&ip).is_none());
            }
            // Whatever the table holds is the latest state for it, every occupied slot is reachable, and one
            // slot stays empty.
            let mut found = 0;
            for ip in &ips {
                if let Some(slot) = cache.get_mut(ip) {
                    assert_eq!(Some(&slot.state), model.get(ip), "step {step}: {ip}");
                    found += 1;
                }
            }
            assert_eq!(found, cache.len(), "step {step}: an entry became unreachable");
            assert_eq!(cache.used, cache.len());
            assert!(cache.len() <= cache.capacity());
        }
    }

    /// A worker's cache wired to channels the test plays the resolver on.
    fn worker(request_queue: usize) -> (NextHops, Receiver<Request>, Sender<Update>) {
        let (request_tx, request_rx) = crossbeam_channel::bounded(request_queue);
        let (update_tx, update_rx) = crossbeam_channel::bounded(16);
        let hops = NextHops {
            worker: 3,
            cache: Cache::new(16),
            requests: request_tx,
            updates: update_rx,
            refresh_budget: 16,
            source_mac: [2, 0, 0, 0, 0, 0xaa],
            stats: NextHopStats::default(),
        };
        (hops, request_rx, update_tx)
    }

    #[test]
    fn a_miss_asks_once_and_the_answer_counts_after_refresh() {
        let (mut hops, requests, updates) = worker(4);
        let dst = v4(198, 18, 0, 2);
        let mac = [2, 0, 0, 0, 0, 2];
        assert_eq!(hops.lookup(dst), Err(Miss::Pending));
        assert_eq!(hops.lookup(dst), Err(Miss::Pending));
        let asked: Vec<_> = requests.try_iter().collect();
        assert_eq!(asked.len(), 1, "one request per destination: {asked:?}");
        assert_eq!((asked[0].worker, asked[0].dst), (3, dst));

        updates.send(Update { dst, answer: Answer::Mac(mac) }).unwrap();
        assert_eq!(hops.lookup(dst), Err(Miss::Pending), "answers count from the next refresh");
        hops.refresh();
        assert_eq!(hops.lookup(dst), Ok(mac));

        // Invalidated by a neighbour gone FAILED, then resolved again with a new MAC.
        updates.send(Update { dst, answer: Answer::Unresolved }).unwrap();
        hops.refresh();
        assert_eq!(hops.lookup(dst), Err(Miss::Unresolved));
        updates.send(Update { dst, answer: Answer::Mac([2, 0, 0, 0, 0, 3]) }).unwrap();
        hops.refresh();
        assert_eq!(hops.lookup(dst), Ok([2, 0, 0, 0, 0, 3]));

        // Forgotten: the next lookup asks again.
        updates.send(Update { dst, answer: Answer::Forget }).unwrap();
        hops.refresh();
        assert_eq!(hops.lookup(dst), Err(Miss::Pending));
        assert_eq!(requests.try_iter().count(), 1);

        // Answers about destinations this worker does not hold are ignored.
        let other = v4(198, 18, 0, 9);
        updates.send(Update { dst: other, answer: Answer::Mac(mac) }).unwrap();
        hops.refresh();
        assert_eq!(hops.lookup(other), Err(Miss::Pending));
        assert_eq!(hops.stats().misses, 6);
        assert_eq!(hops.source_mac(), [2, 0, 0, 0, 0, 0xaa]);
    }

    #[test]
    fn negative_answers_are_asked_again_after_many_lookups() {
        let (mut hops, requests, updates) = worker(4);
        let dst = v4(198, 18, 5, 5);
        assert_eq!(hops.lookup(dst), Err(Miss::Pending));
        updates.send(Update { dst, answer: Answer::NoRoute }).unwrap();
        hops.refresh();
        requests.try_iter().for_each(drop);
        for _ in 0..RETRY_AFTER_LOOKUPS - 1 {
            assert_eq!(hops.lookup(dst), Err(Miss::NoRoute));
        }
        assert_eq!(requests.try_iter().count(), 0);
        assert_eq!(hops.lookup(dst), Err(Miss::NoRoute));
        assert_eq!(requests.try_iter().count(), 1);
    }

    #[test]
    fn a_full_request_channel_is_counted_not_waited_on() {
        let (mut hops, requests, _updates) = worker(1);
        assert_eq!(hops.lookup(v4(198, 18, 1, 1)), Err(Miss::Pending));
        // The channel is full: the request is dropped, counted, and the destination not held as pending.
        assert_eq!(hops.lookup(v4(198, 18, 1, 2)), Err(Miss::Pending));
        assert_eq!(hops.stats().requests_dropped, 1);
        requests.try_iter().for_each(drop);
        assert_eq!(hops.lookup(v4(198, 18, 1, 2)), Err(Miss::Pending));
        assert_eq!(requests.try_iter().count(), 1, "asked again once there is room");
    }

    #[test]
    fn a_stopped_resolver_empties_the_cache() {
        let (mut hops, _requests, updates) = worker(4);
        let dst = v4(198, 18, 0, 2);
        assert_eq!(hops.lookup(dst), Err(Miss::Pending));
        updates.send(Update { dst, answer: Answer::Mac([2, 0, 0, 0, 0, 2]) }).unwrap();
        hops.refresh();
        assert_eq!(hops.lookup(dst), Ok([2, 0, 0, 0, 0, 2]));
        drop(updates);
        hops.refresh();
        assert_eq!(hops.lookup(dst), Err(Miss::Pending), "no MAC is served once nobody follows the kernel");
    }

    /// Kernel tables for the resolver's logic: routes by destination, neighbours by IP.
    #[derive(Default)]
    struct FakeTables {
        routes: HashMap<IpAddr, Route>,
        neighbours: HashMap<IpAddr, Neighbour>,
        resolved: Vec<IpAddr>,
    }

    impl Tables for FakeTables {
        fn route_get_on(&mut self, dst: IpAddr, oif: Option<u32>) -> io::Result<Option<Route>> {
            let route = self.routes.get(&dst).copied();
            Ok(route.filter(|r| oif.is_none_or(|oif| r.ifindex == oif)))
        }
        fn neighbour_get(&mut self, _ifindex: u32, ip: IpAddr) -> io::Result<Option<Neighbour>> {
            Ok(self.neighbours.get(&ip).copied())
        }
        fn neighbour_resolve(&mut self, _ifindex: u32, ip: IpAddr) -> io::Result<()> {
            self.resolved.push(ip);
            Ok(())
        }
    }

    fn neighbour(ip: IpAddr, state: NudState, mac: [u8; 6]) -> Neighbour {
        Neighbour { ifindex: 4, ip, state, lladdr: Some(mac) }
    }

    #[test]
    fn the_resolver_answers_follows_neighbours_and_routes() {
        let gw = v4(198, 18, 0, 2);
        let far = v4(198, 19, 7, 7);
        let other_if = v4(10, 0, 0, 1);
        let mut tables = FakeTables::default();
        tables.routes.insert(gw, Route { kind: RouteKind::Unicast, ifindex: 4, gateway: None, source: None });
        tables.routes.insert(far, Route { kind: RouteKind::Unicast, ifindex: 4, gateway: Some(gw), source: None });
        tables.routes.insert(other_if, Route { kind: RouteKind::Unicast, ifindex: 9, gateway: None, source: None });
        let (tx0, rx0) = crossbeam_channel::bounded(64);
        let (tx1, rx1) = crossbeam_channel::bounded(64);
        let mut core = Core::new(4, vec![tx0, tx1], 64);
        let drain = |rx: &Receiver<Update>| rx.try_iter().map(|u| (u.dst, u.answer)).collect::<Vec<_>>();

        // Unknown neighbour: Unresolved, and the kernel is asked to resolve the gateway (once per interval).
        core.request(&mut tables, Request { worker: 0, dst: far });
        core.request(&mut tables, Request { worker: 1, dst: gw });
        core.request(&mut tables, Request { worker: 1, dst: other_if });
        core.flush();
        assert_eq!(tables.resolved, vec![gw]);
        assert_eq!(drain(&rx0), vec![(far, Answer::Unresolved)]);
        let mut got1 = drain(&rx1);
        got1.sort_by_key(|(d, _)| *d);
        assert_eq!(got1, vec![(other_if, Answer::NoRoute), (gw, Answer::Unresolved)]);

        // The kernel learns the gateway: both destinations behind it get its MAC, in every worker.
        let mac = [2, 0, 0, 0, 0, 2];
        core.events(
            &mut tables,
            &[RouteEvent::Neighbour { neighbour: neighbour(gw, NudState::REACHABLE, mac), deleted: false }],
        );
        core.flush();
        let mut got0 = drain(&rx0);
        got0.sort_by_key(|(d, _)| *d);
        assert_eq!(got0, vec![(gw, Answer::Mac(mac)), (far, Answer::Mac(mac))]);
        assert_eq!(drain(&rx1).len(), 2);

        // A neighbour notification on another interface changes nothing.
        let mut elsewhere = neighbour(gw, NudState::FAILED, mac);
        elsewhere.ifindex = 9;
        core.events(&mut tables, &[RouteEvent::Neighbour { neighbour: elsewhere, deleted: false }]);
        core.flush();
        assert!(drain(&rx0).is_empty());

        // The route to `far` goes away: NoRoute is pushed after the route notification.
        tables.routes.remove(&far);
        tables.neighbours.insert(gw, neighbour(gw, NudState::REACHABLE, mac));
        core.events(&mut tables, &[RouteEvent::Route { ipv6: false }]);
        core.flush();
        assert_eq!(drain(&rx0), vec![(far, Answer::NoRoute)]);
        drain(&rx1);

        // The gateway goes STALE: still sent to, and the kernel is asked to confirm it (as it would be if it
        // sent to it itself).
        core.resolving.clear();
        tables.resolved.clear();
        core.events(
            &mut tables,
            &[RouteEvent::Neighbour { neighbour: neighbour(gw, NudState::STALE, mac), deleted: false }],
        );
        core.flush();
        assert!(drain(&rx0).is_empty());
        assert_eq!(tables.resolved, vec![gw]);

        // The gateway's entry is deleted: destinations through it are unresolved, never left on the old MAC,
        // and the kernel is asked to resolve it again.
        core.resolving.clear();
        core.events(
            &mut tables,
            &[RouteEvent::Neighbour { neighbour: neighbour(gw, NudState::REACHABLE, mac), deleted: true }],
        );
        core.flush();
        assert_eq!(drain(&rx0), vec![(gw, Answer::Unresolved)]);
        assert_eq!(tables.resolved, vec![gw, gw]);

        // A neighbour no tracked destination goes through is left to the kernel.
        core.resolving.clear();
        let stranger = v4(198, 18, 0, 77);
        core.events(
            &mut tables,
            &[RouteEvent::Neighbour { neighbour: neighbour(stranger, NudState::STALE, mac), deleted: false }],
        );
        assert_eq!(tables.resolved, vec![gw, gw]);
    }

    #[test]
    fn answers_wait_for_room_and_the_latest_wins() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut core = Core::new(4, vec![tx], 64);
        let (a, b) = (v4(198, 18, 0, 2), v4(198, 18, 0, 3));
        core.send(0, a, Answer::Mac([2, 0, 0, 0, 0, 1]));
        core.send(0, b, Answer::Unresolved);
        core.flush();
        core.send(0, b, Answer::Mac([2, 0, 0, 0, 0, 2]));
        core.send(0, a, Answer::Mac([2, 0, 0, 0, 0, 3]));
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(rx.try_iter().map(|u| (u.dst, u.answer)));
            core.flush();
        }
        seen.extend(rx.try_iter().map(|u| (u.dst, u.answer)));
        // Whatever went first, each destination's last answer is its latest.
        for (dst, latest) in [(a, Answer::Mac([2, 0, 0, 0, 0, 3])), (b, Answer::Mac([2, 0, 0, 0, 0, 2]))] {
            assert_eq!(seen.iter().rev().find(|(d, _)| *d == dst).map(|(_, a)| *a), Some(latest));
        }
    }

    #[test]
    fn the_least_recently_asked_destination_is_forgotten_everywhere() {
        let mut tables = FakeTables::default();
        let (tx, rx) = crossbeam_channel::bounded(64);
        let mut core = Core::new(4, vec![tx], 2);
        for i in 1..=3 {
            core.request(&mut tables, Request { worker: 0, dst: v4(198, 18, 9, i) });
        }
        core.flush();
        let got: Vec<_> = rx.try_iter().map(|u| (u.dst, u.answer)).collect();
        assert!(got.contains(&(v4(198, 18, 9, 1), Answer::Forget)), "{got:?}");
        assert_eq!(core.tracked.len(), 2);
    }
}
