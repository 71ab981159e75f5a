//! The proxy ports' shared map: which client flow each proxy port carries, written by the worker that owns
//! the port and read by whichever worker a backend's answer reaches.
//!
//! Neither RSS (AF_XDP) nor SO_REUSEPORT (kernel sockets) hands a datagram to a worker by its destination
//! port, so the answer on proxy port P may reach another worker than the one whose flow owns P. Each port's
//! entry is a sequence lock over atomics: the owner (the only writer of its ports) makes the sequence odd,
//! writes, and makes it even again; a reader reads the sequence, the words, and the sequence again, and
//! retries (a few times, then gives up) if a write overlapped. Nothing blocks, nothing is allocated after
//! start-up, and there is no `unsafe`: every word is an atomic.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{fence, AtomicU64, Ordering};

/// A proxy port's flow: the client, the served address and port it sent to, and its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub client: SocketAddr,
    pub served: SocketAddr,
    pub backend: u16,
}

/// `meta`: bit 63 live, bit 62 IPv4, then the client's port, the served port and the backend (16 bits each).
const LIVE: u64 = 1 << 63;
const V4: u64 = 1 << 62;

#[derive(Debug, Default)]
struct Entry {
    seq: AtomicU64,
    client: [AtomicU64; 2],
    served: [AtomicU64; 2],
    meta: AtomicU64,
    /// CLOCK_MONOTONIC ns of the last answer relayed by a worker other than the owner (0: none).
    seen_ns: AtomicU64,
}

/// See the [module documentation](self).
#[derive(Debug)]
pub struct PortMap {
    entries: Box<[Entry]>,
}

/// Reads of an entry that a write overlapped, before a reader gives up (the write takes nanoseconds).
const READ_TRIES: usize = 8;

fn split(ip: IpAddr) -> [u64; 2] {
    let bits = match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    };
    [(bits >> 64) as u64, bits as u64]
}

fn join(words: [u64; 2], v4: bool) -> IpAddr {
    let a = Ipv6Addr::from((u128::from(words[0]) << 64) | u128::from(words[1]));
    match a.to_ipv4_mapped() {
        Some(v) if v4 => IpAddr::V4(v),
        _ => IpAddr::V6(a),
    }
}

impl PortMap {
    /// A map of `ports` entries, none live.
    pub fn new(ports: usize) -> PortMap {
        PortMap { entries: (0..ports).map(|_| Entry::default()).collect() }
    }

    /// Sets (or, with `None`, clears) port `index`'s flow. Only the worker that owns the port calls this.
    pub fn set(&self, index: usize, mapping: Option<Mapping>) {
        let Some(e) = self.entries.get(index) else { return };
        let s = e.seq.load(Ordering::Relaxed);
        e.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        match mapping {
            Some(m) => {
                for (w, v) in e.client.iter().zip(split(m.client.ip())) {
                    w.store(v, Ordering::Relaxed);
                }
                for (w, v) in e.served.iter().zip(split(m.served.ip())) {
                    w.store(v, Ordering::Relaxed);
                }
                let v4 = if m.client.is_ipv4() { V4 } else { 0 };
                let ports = u64::from(m.client.port()) << 32 | u64::from(m.served.port()) << 16;
                e.meta.store(LIVE | v4 | ports | u64::from(m.backend), Ordering::Relaxed);
            }
            None => e.meta.store(0, Ordering::Relaxed),
        }
        e.seen_ns.store(0, Ordering::Relaxed);
        e.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// Port `index`'s flow, if live (`None` too if writes kept overlapping the read).
    #[inline]
    pub fn get(&self, index: usize) -> Option<Mapping> {
        let e = self.entries.get(index)?;
        for _ in 0..READ_TRIES {
            let s1 = e.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let client = [e.client[0].load(Ordering::Relaxed), e.client[1].load(Ordering::Relaxed)];
            let served = [e.served[0].load(Ordering::Relaxed), e.served[1].load(Ordering::Relaxed)];
            let meta = e.meta.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if e.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            if meta & LIVE == 0 {
                return None;
            }
            let v4 = meta & V4 != 0;
            return Some(Mapping {
                client: SocketAddr::new(join(client, v4), (meta >> 32) as u16),
                served: SocketAddr::new(join(served, v4), (meta >> 16) as u16),
                backend: meta as u16,
            });
        }
        None
    }

    /// Notes an answer on port `index` at `now_ns`, relayed by a worker other than the owner.
    #[inline]
    pub fn seen(&self, index: usize, now_ns: u64) {
        if let Some(e) = self.entries.get(index) {
            e.seen_ns.fetch_max(now_ns, Ordering::Relaxed);
        }
    }

    /// The last answer on port `index` another worker relayed (0: none since the flow was set).
    #[inline]
    pub fn seen_ns(&self, index: usize) -> u64 {
        self.entries.get(index).map_or(0, |e| e.seen_ns.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn entries_round_trip_both_ip_versions_and_clear() {
        let map = PortMap::new(4);
        assert_eq!(map.get(0), None);
        let m4 = Mapping {
            client: "198.18.0.2:5000".parse().unwrap(),
            served: "198.18.0.1:53".parse().unwrap(),
            backend: 7,
        };
        let m6 = Mapping {
            client: "[2001:2::2]:1".parse().unwrap(),
            served: "[2001:2::1]:65535".parse().unwrap(),
            backend: 65535,
        };
        // An IPv4-mapped IPv6 client stays IPv6.
        let mapped = Mapping {
            client: "[::ffff:198.18.0.2]:9".parse().unwrap(),
            served: "[2001:2::1]:53".parse().unwrap(),
            backend: 0,
        };
        map.set(0, Some(m4));
        map.set(1, Some(m6));
        map.set(2, Some(mapped));
        assert_eq!((map.get(0), map.get(1), map.get(2), map.get(3)), (Some(m4), Some(m6), Some(mapped), None));
        map.seen(0, 42);
        assert_eq!(map.seen_ns(0), 42);
        map.set(0, None);
        assert_eq!((map.get(0), map.seen_ns(0)), (None, 0));
        assert_eq!(map.get(99), None, "out of range");
        map.set(99, Some(m4));
    }

    #[test]
    fn a_reader_never_sees_a_torn_entry() {
        let map = std::sync::Arc::new(PortMap::new(1));
        let a = Mapping {
            client: "198.18.0.2:1111".parse().unwrap(),
            served: "198.18.0.1:53".parse().unwrap(),
            backend: 1,
        };
        let b = Mapping {
            client: "[2001:2::9]:2222".parse().unwrap(),
            served: "[2001:2::1]:54".parse().unwrap(),
            backend: 2,
        };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let reader = {
            let (map, stop) = (map.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                loop {
                    let done = stop.load(Ordering::Relaxed);
                    if let Some(m) = map.get(0) {
                        assert!(m == a || m == b, "torn: {m:?}");
                        seen += 1;
                    }
                    if done {
                        return seen;
                    }
                }
            })
        };
        for i in 0..200_000 {
            map.set(0, Some(if i % 2 == 0 { a } else { b }));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }
}
