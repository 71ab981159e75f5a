//! Which backend a client flow goes to: rendezvous (highest random weight) hashing over the backends of the
//! client's IP version.
//!
//! Every backend gets a score for the client's address and port; the highest wins. The choice depends only
//! on the client and the set of backends, so every worker (and a restarted proxy) picks the same one, and
//! adding or removing a backend moves only the flows that go to, or went to, that backend (about 1/n of
//! them), never a flow between two backends that stayed. The hash is a fixed function (FNV-1a over the
//! address bytes, finished with SplitMix64's mixer), not a keyed one: it spreads flows, and a client that
//! picks its port to pick its backend gains nothing it could not have by sending to that backend directly.

use std::net::{IpAddr, SocketAddr};

/// SplitMix64's finaliser: a bijective mix of 64 bits.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A 64-bit hash of an address and port (no allocation).
#[inline]
pub fn addr_hash(addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    match addr.ip() {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    addr.port().to_be_bytes().into_iter().for_each(&mut eat);
    mix(h)
}

/// The backend for a client whose [`addr_hash`] is `client`, among `candidates` (indices into the backend
/// list, with each backend's own [`addr_hash`]): the highest score, the lower index on a tie. `None` when
/// there is no candidate.
#[inline]
pub fn pick(client: u64, candidates: &[(u16, u64)]) -> Option<u16> {
    let mut best: Option<(u64, u16)> = None;
    for &(index, backend) in candidates {
        let score = mix(client ^ backend.rotate_left(17));
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, index));
        }
    }
    best.map(|(_, index)| index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn backends(addrs: &[&str]) -> Vec<(u16, u64)> {
        addrs.iter().enumerate().map(|(i, a)| (i as u16, addr_hash(a.parse().unwrap()))).collect()
    }

    fn clients(n: u16) -> Vec<u64> {
        (0..n).map(|i| addr_hash(SocketAddr::from(([198, 18, 0, 2 + (i % 7) as u8], 1024 + i)))).collect()
    }

    /// The address a pick names, for comparing picks across backend lists with different indices.
    fn named<'a>(list: &[&'a str], pick: Option<u16>) -> &'a str {
        list[pick.unwrap() as usize]
    }

    #[test]
    fn flows_spread_evenly_and_always_pick_the_same_backend() {
        let list = ["198.18.2.1:53", "198.18.2.2:53", "198.18.2.3:53", "198.18.2.4:53"];
        let b = backends(&list);
        let mut counts = [0u32; 4];
        for c in clients(20_000) {
            let p = pick(c, &b).unwrap();
            assert_eq!(pick(c, &b), Some(p), "sticky");
            counts[p as usize] += 1;
        }
        for n in counts {
            assert!((4_300..=5_700).contains(&n), "uneven spread: {counts:?}");
        }
        assert_eq!(pick(1, &[]), None);
    }

    #[test]
    fn adding_or_removing_a_backend_moves_only_its_share() {
        let four = ["198.18.2.1:53", "198.18.2.2:53", "198.18.2.3:53", "198.18.2.4:53"];
        let five = ["198.18.2.1:53", "198.18.2.2:53", "198.18.2.3:53", "198.18.2.4:53", "198.18.2.5:53"];
        // The third one removed: the others keep their hashes, though their indices shift.
        let three = ["198.18.2.1:53", "198.18.2.2:53", "198.18.2.4:53"];
        let (b4, b5, b3) = (backends(&four), backends(&five), backends(&three));
        let (mut added, mut removed) = (0, 0);
        let all = clients(20_000);
        for &c in &all {
            let before = named(&four, pick(c, &b4));
            let after = named(&five, pick(c, &b5));
            if before != after {
                assert_eq!(after, "198.18.2.5:53", "a flow moved between two backends that stayed");
                added += 1;
            }
            let after = named(&three, pick(c, &b3));
            if before != after {
                assert_eq!(before, "198.18.2.3:53", "a flow moved though its backend stayed");
                removed += 1;
            } else {
                assert_ne!(before, "198.18.2.3:53");
            }
        }
        // About a fifth moves to the new backend, and the removed one's quarter moves away.
        assert!((3_400..=4_600).contains(&added), "{added} of 20000 moved to the added backend");
        assert!((4_300..=5_700).contains(&removed), "{removed} of 20000 moved off the removed backend");
    }
}
