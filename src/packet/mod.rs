//! The pure packet layer: parse Ethernet / 802.1Q / IPv4 / IPv6 / UDP, compute Internet checksums and turn a
//! request frame into its reply in place.
//!
//! Nothing here does I/O or uses `unsafe`, and nothing panics on any input: every length is checked once, when a
//! frame is parsed into a [`Datagram`], and all later accesses stay inside the ranges that check proved. The
//! shape follows smoltcp's `wire` module (a checked view over bytes) and s2n-quic's XDP decoder: parsing returns
//! `Ok(None)` for a frame that is simply not ours (ARP, TCP, a fragment), and `Err` for one that claims to be
//! IP/UDP but does not hold together.

mod build;
pub mod checksum;
mod parse;
mod reply;

pub use build::{write_request, BuildError, FlowSpec};
pub use parse::{parse, Datagram, IpVersion, Malformed};
pub use reply::{max_reply_payload, write_reply, ReplyError};

/// Length of an Ethernet II header without VLAN tags.
pub const ETH_HEADER_LEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_TAG_LEN: usize = 4;
/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// The TTL / hop limit written into replies: a fresh value, as the kernel would, rather than the request's
/// remaining one.
pub const REPLY_TTL: u8 = 64;
