//! Response rate limiting, after Knot DNS's RRL (and BIND's): the answer to defend against reflection.
//!
//! A DNS reply is larger than its query (a 40-byte question for a 1 kB TXT RRset), so a server that answers
//! spoofed queries amplifies a flood towards the address they claim to come from. The handler declares the bound
//! honestly (its replies may be as long as `--udp-size`), and this table limits what any one network can be
//! sent: each source prefix (/24 for IPv4, /56 for IPv6, as Knot's defaults, so a victim cannot be hit from
//! many of its own addresses) has a token bucket of `--rrl-rate` responses per second, with a burst of one
//! second's worth. A response over the rate is not sent, except every `--rrl-slip`th one (0: none), which goes
//! out "slipped": TC=1 with the header, the question and the OPT only, no larger than the query, so it
//! amplifies nothing, while a real client behind the prefix retries over TCP (or on a later second) instead of
//! timing out. Knot classifies responses further (by type and name); this table counts all of a prefix's
//! responses to well-formed queries together (answers, referrals, NXDOMAIN, REFUSED, BADVERS), which is
//! stricter. Replies to malformed queries and other opcodes (FORMERR, NOTIMP: the header, or the header and the
//! question) are never longer than their query and are not counted.
//!
//! The table is per worker and fixed-size (allocated once at start-up; nothing per packet): a prefix hashes to
//! one slot, and a different prefix arriving on the same slot takes it over with a full bucket. An attacker
//! who rotates spoofed prefixes can thus reset a victim's bucket only by colliding with it, one slot in
//! [`SLOTS`]; with several workers each enforces the rate on the queries it sees (so a prefix spread over N
//! queues gets up to N times the rate). `--rrl-rate 0` turns limiting off.

use std::net::IpAddr;

/// Slots per worker (a power of two): 4096 × 48 bytes.
pub const SLOTS: usize = 4096;
const NANOS: u64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The prefix (with a family tag; 0: unused).
    key: u128,
    /// Tokens × 10^9 (one response costs 10^9).
    tokens: u64,
    /// CLOCK_MONOTONIC ns of the last refill.
    at_ns: u64,
    /// Responses limited since the slot was taken (for the slip).
    limited: u64,
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Send,
    /// Send a truncated reply (TC=1, no records) instead.
    Slip,
    Drop,
}

pub struct Rrl {
    rate: u32,
    slip: u32,
    slots: Box<[Slot]>,
}

impl Rrl {
    /// A table for `rate` responses per second per prefix (0: no limit), every `slip`th limited one slipped.
    pub fn new(rate: u32, slip: u32) -> Rrl {
        let slots = if rate == 0 { Vec::new() } else { vec![Slot::default(); SLOTS] };
        Rrl { rate, slip, slots: slots.into_boxed_slice() }
    }

    /// The prefix `src` is counted under.
    fn key(src: IpAddr) -> u128 {
        match src {
            IpAddr::V4(v4) => 1 << 64 | u128::from(u32::from(v4) & 0xFFFF_FF00),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                match v6.to_ipv4_mapped() {
                    Some(v4) => Self::key(IpAddr::V4(v4)),
                    None => (bits & !((1u128 << 72) - 1)) | 2,
                }
            }
        }
    }

    /// Counts one response to `src` at `now_ns` and says whether to send it.
    pub fn check(&mut self, src: IpAddr, now_ns: u64) -> Decision {
        if self.rate == 0 {
            return Decision::Send;
        }
        let key = Self::key(src);
        let hash = ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = (hash >> (64 - SLOTS.trailing_zeros())) as usize;
        let full = u64::from(self.rate) * NANOS;
        let Some(slot) = self.slots.get_mut(index) else { return Decision::Send };
        if slot.key != key {
            *slot = Slot { key, tokens: full, at_ns: now_ns, limited: 0 };
        } else {
            let elapsed = now_ns.saturating_sub(slot.at_ns).min(NANOS);
            slot.tokens = slot.tokens.saturating_add(elapsed * u64::from(self.rate)).min(full);
            slot.at_ns = now_ns.max(slot.at_ns);
        }
        if slot.tokens >= NANOS {
            slot.tokens -= NANOS;
            return Decision::Send;
        }
        slot.limited += 1;
        if self.slip > 0 && slot.limited % u64::from(self.slip) == 0 {
            Decision::Slip
        } else {
            Decision::Drop
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_prefix_gets_its_rate_then_every_slipth_limited_response_slips() {
        let mut rrl = Rrl::new(5, 2);
        let t = 1_000 * NANOS;
        let got: Vec<Decision> = (0..9).map(|_| rrl.check(ip("198.18.0.2"), t)).collect();
        use Decision::*;
        assert_eq!(got, [Send, Send, Send, Send, Send, Drop, Slip, Drop, Slip]);
        // The same /24 shares the bucket; another /24 has its own.
        assert_eq!(rrl.check(ip("198.18.0.200"), t), Drop);
        assert_eq!(rrl.check(ip("198.18.1.2"), t), Send);
        // A fifth of a second later, one token more (5/s).
        assert_eq!(rrl.check(ip("198.18.0.2"), t + NANOS / 5), Send);
        assert_eq!(rrl.check(ip("198.18.0.2"), t + NANOS / 5), Slip);
        // After a second the bucket is full again, and holds no more than the rate.
        let later = t + 10 * NANOS;
        let sent = (0..20).filter(|_| rrl.check(ip("198.18.0.9"), later) == Send).count();
        assert_eq!(sent, 5);
    }

    #[test]
    fn ipv6_counts_per_56_and_rate_zero_is_off() {
        let mut rrl = Rrl::new(1, 0);
        assert_eq!(rrl.check(ip("2001:2::1"), 0), Decision::Send);
        assert_eq!(rrl.check(ip("2001:2:0:ff::1"), 0), Decision::Drop, "same /56, slip 0: dropped");
        assert_eq!(rrl.check(ip("2001:2:0:100::1"), 0), Decision::Send, "the next /56");
        let mut off = Rrl::new(0, 2);
        assert!((0..1000).all(|_| off.check(ip("198.18.0.2"), 0) == Decision::Send));
    }
}
