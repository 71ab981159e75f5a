//! The pure packet layer: parse Ethernet / 802.1Q / IPv4 / IPv6 / UDP into a checked view ([`Datagram`]),
//! verify and compute Internet checksums ([`checksum`]), turn a request into its reply in place
//! ([`Datagram::write_reply`]) and build request frames from scratch ([`write_request`]).
//!
//! Nothing here does I/O or uses `unsafe`, and nothing panics on any input. Lengths are checked once, when a
//! frame is parsed into a [`Datagram`]; the view's offsets are private, so a `Datagram` always describes the
//! buffer it holds and every later access stays inside what that check proved. Field offsets live in one
//! place, [`field`]. The shape follows smoltcp's `wire` module (a checked view over bytes) and s2n-quic's XDP
//! decoder: parsing returns `Ok(None)` for a frame that is simply not ours (ARP, TCP, a fragment), and `Err`
//! for one that claims to be IP/UDP but does not hold together.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod build;
pub mod checksum;
pub mod field;
mod parse;
mod reply;

pub use build::{write_datagram, write_request, BuildError, FlowSpec};
pub use parse::{parse, Buffer, Datagram, Ecn, IpVersion, Malformed, UdpChecksum};
pub use reply::{ReplyError, ReplyHeaders};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType (TPID) of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType (TPID) of an 802.1ad (QinQ outer) tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// The default TTL / hop limit of replies (and the one of built requests): a fresh value, as the kernel's
/// own default (`net.ipv4.ip_default_ttl`), rather than the request's remaining one. Replies take theirs from
/// [`ReplyHeaders::ttl`] (`packet.reply_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// The default largest IP packet (header included) a reply may be: Ethernet's MTU. The server replaces it with
/// the interface's MTU ([`ReplyHeaders::mtu`]).
pub const DEFAULT_MTU: usize = 1500;

/// Bytes `range` of `buf`.
///
/// The only place the packet layer indexes a slice. Callers pass ranges they have checked against
/// `buf.len()` (in `parse`, before using them; in `Datagram`, through its private layout, checked by `parse`
/// against a buffer whose length cannot change; in `write_request`, against the length checked on entry).
#[allow(clippy::indexing_slicing)] // proof: every caller checked `range.end <= buf.len()` (see above)
#[inline]
fn bytes(buf: &[u8], range: core::ops::Range<usize>) -> &[u8] {
    &buf[range]
}

/// Mutable bytes `range` of `buf`; the same contract as [`bytes`].
#[allow(clippy::indexing_slicing)] // proof: every caller checked `range.end <= buf.len()` (see `bytes`)
#[inline]
fn bytes_mut(buf: &mut [u8], range: core::ops::Range<usize>) -> &mut [u8] {
    &mut buf[range]
}

/// `N` bytes of `buf` from `start`, by value; the same contract as [`bytes`].
#[inline]
fn array<const N: usize>(buf: &[u8], start: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(bytes(buf, start..start + N));
    a
}

/// The big-endian u16 at `start`; the same contract as [`bytes`].
#[inline]
fn be16(buf: &[u8], start: usize) -> u16 {
    u16::from_be_bytes(array(buf, start))
}

/// Copies bytes `from` of `buf` to `to..`, the two possibly overlapping (memmove); the same contract as
/// [`bytes`], for `from` and for `to..to + from.len()`.
#[inline]
fn move_within(buf: &mut [u8], from: core::ops::Range<usize>, to: usize) {
    let (lo, hi) = (from.start.min(to), from.end.max(to + from.len()));
    bytes_mut(buf, lo..hi).copy_within(from.start - lo..from.end - lo, to - lo);
}

/// Writes `value` at `start`; the same contract as [`bytes`].
#[inline]
fn put(buf: &mut [u8], start: usize, value: &[u8]) {
    bytes_mut(buf, start..start + value.len()).copy_from_slice(value);
}
