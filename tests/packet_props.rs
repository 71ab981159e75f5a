//! Property and table tests of the public packet API (`shunt::packet`) and of `shunt::handler::respond`.
//!
//! Valid request frames are generated from a [`Spec`] and serialised with etherparse's header types (an
//! implementation independent of ours); every checksum a reply carries is verified twice, with the naive
//! 16-bit-word sum written here and with etherparse's own checksum functions, and every field offset comes from
//! `shunt::packet::field`. The properties:
//!
//! * `parse` / `Datagram::parse` on a valid frame give exactly the expected view through every accessor (`ip`,
//!   `vlan_tci`, `src`, `dst`, `payload`, `payload_len`, `payload_offset`, `udp_checksum`), with random MACs, no
//!   tag / one 802.1Q tag / one 802.1ad tag, IPv4 with IHL 5..=15 and random options, TTL, ID, DSCP/ECN and DF, or
//!   IPv6; a UDP checksum that is correct, zero, the pseudo-header sum only, or garbage; Ethernet padding after
//!   it; any `len`, clamped to the buffer; shared or mutable buffers;
//! * `udp_checksum` classifies exactly as a naive oracle does: correct, zero over IPv4 (absent), zero over IPv6
//!   (wrong), pseudo-header only (offload), and any single-bit corruption of addresses, UDP header or payload is
//!   never `Correct`;
//! * `payload_room_mut`, `max_reply_payload` and `write_reply` (the reply parses back swapped with a `Correct`
//!   checksum; too large is refused and leaves the frame alone; the 64 KiB IP length limits);
//! * Echo through `respond` gives a reply that parses back with everything swapped, verifying checksums,
//!   consistent lengths, and a second `respond` restores the original, headers normalised; a request whose UDP checksum is wrong
//!   (a corrupted payload byte) gets `BadChecksum` unless verification is off; an offloaded (pseudo-header only)
//!   request is answered;
//! * every truncation is rejected with the right `Malformed` variant (or parses the same inside the padding);
//! * each corruption is rejected with its own variant, and frames that are not ours give `Ok(None)`;
//! * arbitrary and mutated bytes never panic, `respond` replies only to what `parse` accepts, and `parse` agrees
//!   with etherparse both ways;
//! * handler semantics (Sockperf, too-large, longer / shorter replies, what the handler sees);
//! * `write_request` never panics (any buffer length, any payload length, any flow) and what it builds parses back
//!   with a `Correct` checksum and reads the same in etherparse; `write_datagram` (a handler's send) writes the
//!   TTL, DSCP and ECN it is given and refuses (writing nothing) an IP packet over its MTU;
//! * `checksum::{add, fold, internet, udp_ipv4, udp_ipv6, pseudo_header_v4, pseudo_header_v6}` against naive
//!   references;
//! * request metadata: `traffic_class`, `dscp`, `ecn`, `ttl` and `vlan_id` read what the frame's bytes say (on
//!   every frame `parse` accepts, arbitrary ones included) and what a generated frame was built with; the
//!   handler sees them, and the datapath's `Arrival` (receive stamp, queue), in its `Request` through
//!   `respond_with` (`respond`: no arrival); `Ecn` and the `RxTimestamp` clock conversions never panic or wrap;
//! * reply headers are the server's own (every reply is checked in `verify_reply`): IHL 5 with the request's
//!   IPv4 options stripped, the configured TTL / hop limit and DSCP with ECN not-ECT whatever the request's
//!   TOS / traffic class (CE included), flow label 0, ID 0 with DF; a reply over the MTU is refused
//!   (`OverMtu` / `ReplyError::OverMtu`, the frame untouched).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6Header, LinkHeader, LinkSlice, NetHeaders, NetSlice, PacketHeaders, PayloadSlice, SingleVlanHeader,
    SlicedPacket, TransportHeader, TransportSlice, UdpHeader, VlanHeader, VlanId, VlanPcp, VlanSlice,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use shunt::handler::{
    respond, respond_with, Arrival, Budget, Echo, Handler, NoTransmit, Outbox, Outcome, Request, RespondOptions,
    RxClock, RxTimestamp, Sockperf, Time, Verdict, SOCKPERF_HEADER_LEN,
};
use shunt::packet::field::{eth, ipv4, ipv6, udp, vlan, Field};
use shunt::packet::{
    checksum, parse, write_datagram, write_request, Buffer, BuildError, Datagram, Ecn, FlowSpec, IpVersion, Malformed,
    ReplyError, ReplyHeaders, UdpChecksum, DEFAULT_TTL, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN,
    IPPROTO_UDP,
};

// ---------------------------------------------------------------------------------------------------------------
// Field helpers
// ---------------------------------------------------------------------------------------------------------------

/// `f` (a range within a header) moved to the header starting at `base`.
fn at(base: usize, f: Field) -> Range<usize> {
    base + f.start..base + f.end
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u16 in field `f` of the header at `base`.
fn get16(b: &[u8], base: usize, f: Field) -> u16 {
    assert_eq!(f.len(), 2);
    be16(b, base + f.start)
}

/// Writes `v` into field `f` of the header at `base`.
fn set16(b: &mut [u8], base: usize, f: Field, v: u16) {
    b[at(base, f)].copy_from_slice(&v.to_be_bytes());
}

/// Where the EtherType that announces the IP header at `l3` sits: the Ethernet header's, or the VLAN tag's.
fn ethertype_at(l3: usize) -> usize {
    if l3 == eth::HEADER_LEN {
        eth::ETHERTYPE.start
    } else {
        eth::HEADER_LEN + vlan::ETHERTYPE.start
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The view: everything a Datagram's accessors say
// ---------------------------------------------------------------------------------------------------------------

/// What a [`Datagram`] says through its accessors (`Datagram` itself has no `PartialEq`: it holds its buffer),
/// plus where its IP and UDP headers start, derived from the accessors (`l3` from the VLAN tag, `udp_at` from
/// the payload offset) or, for a generated frame, known from how it was built.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    ip: IpVersion,
    vlan_tci: Option<u16>,
    l3: usize,
    udp_at: usize,
    payload_offset: usize,
    payload_len: usize,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
    udp_checksum: UdpChecksum,
}

impl View {
    /// Where a reply's UDP payload starts: after the same link header and an option-less IP header.
    fn reply_payload_offset(&self) -> usize {
        self.l3 + reply_ip_header_len(self.ip) + udp::HEADER_LEN
    }

    /// The length of the reply frame to this request carrying `payload_len` bytes.
    fn reply_len(&self, payload_len: usize) -> usize {
        self.reply_payload_offset() + payload_len
    }

    /// The length of the reply's IP packet carrying `payload_len` bytes (what the MTU limits).
    fn reply_ip_len(&self, payload_len: usize) -> usize {
        reply_ip_header_len(self.ip) + udp::HEADER_LEN + payload_len
    }

    /// The same datagram with a UDP payload of `len` bytes (the first `len` of this one's).
    fn with_payload_len(&self, len: usize, udp_checksum: UdpChecksum) -> View {
        View { payload_len: len, payload: self.payload[..len].to_vec(), udp_checksum, ..self.clone() }
    }
}

/// A reply's IP header length: IPv4 without options, or IPv6's fixed header.
fn reply_ip_header_len(ip: IpVersion) -> usize {
    match ip {
        IpVersion::V4 => ipv4::MIN_HEADER_LEN,
        IpVersion::V6 => ipv6::HEADER_LEN,
    }
}

/// Reads every accessor of `d` (and checks the ones that must agree with each other).
fn view<B: Buffer>(d: &Datagram<B>) -> View {
    let l3 = eth::HEADER_LEN + if d.vlan_tci().is_some() { vlan::TAG_LEN } else { 0 };
    let payload_offset = d.payload_offset();
    assert!(payload_offset >= l3 + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN, "payload offset {payload_offset}");
    assert_eq!(d.payload().len(), d.payload_len(), "payload() and payload_len() disagree");
    assert_eq!(d.src().is_ipv4(), d.ip() == IpVersion::V4);
    assert_eq!(d.dst().is_ipv4(), d.ip() == IpVersion::V4);
    if d.ip() == IpVersion::V6 {
        assert_eq!(payload_offset, l3 + ipv6::HEADER_LEN + udp::HEADER_LEN);
    }
    View {
        ip: d.ip(),
        vlan_tci: d.vlan_tci(),
        l3,
        udp_at: payload_offset - udp::HEADER_LEN,
        payload_offset,
        payload_len: d.payload_len(),
        src: d.src(),
        dst: d.dst(),
        payload: d.payload().to_vec(),
        udp_checksum: d.udp_checksum(),
    }
}

type Parsed = Result<Option<View>, Malformed>;

/// The IP header fields of a parsed frame, read from its bytes here: (traffic class, TTL / hop limit).
fn header_fields(frame: &[u8], ip: IpVersion, l3: usize) -> (u8, u8) {
    match ip {
        IpVersion::V4 => (frame[l3 + ipv4::TOS], frame[l3 + ipv4::TTL]),
        IpVersion::V6 => {
            let word = u32::from_be_bytes(frame[at(l3, ipv6::VER_TC_FLOW)].try_into().unwrap());
            (((word >> 20) & 0xff) as u8, frame[l3 + ipv6::HOP_LIMIT])
        }
    }
}

/// The metadata accessors of `d` (`traffic_class`, `dscp`, `ecn`, `ttl`, `vlan_id`) say what `frame`'s bytes
/// say, and agree with each other.
fn check_metadata<B: Buffer>(frame: &[u8], d: &Datagram<B>) {
    let l3 = eth::HEADER_LEN + if d.vlan_tci().is_some() { vlan::TAG_LEN } else { 0 };
    let (tc, ttl) = header_fields(frame, d.ip(), l3);
    assert_eq!(d.traffic_class(), tc, "traffic class");
    assert_eq!(d.dscp(), tc >> 2, "DSCP");
    assert_eq!(d.ecn().bits(), tc & 0b11, "ECN");
    assert_eq!(d.ecn(), Ecn::from_traffic_class(tc));
    assert_eq!(d.ttl(), ttl, "TTL / hop limit");
    assert_eq!(d.vlan_id(), d.vlan_tci().map(|tci| tci & 0x0fff), "VLAN id");
    if let Some(tci) = d.vlan_tci() {
        assert_eq!(get16(frame, eth::HEADER_LEN, vlan::TCI) & 0x0fff, d.vlan_id().unwrap_or(u16::MAX));
        assert_eq!(tci, get16(frame, eth::HEADER_LEN, vlan::TCI));
    }
}

/// `parse(frame)`, read through every accessor; also checks that `Datagram::parse` over a shared and a mutable
/// buffer, with the frame's length or any larger one (clamped), says the same.
fn parse_view(frame: &[u8]) -> Parsed {
    let r = parse(frame).map(|o| {
        o.map(|d| {
            check_metadata(frame, &d);
            view(&d)
        })
    });
    for len in [frame.len(), frame.len() + 1, usize::MAX] {
        let shared = Datagram::parse(frame, len).map(|o| o.map(|d| view(&d)));
        assert_eq!(shared, r, "Datagram::parse(&[u8], {len})");
    }
    let mut copy = frame.to_vec();
    let mutable = Datagram::parse(&mut copy[..], frame.len()).map(|o| o.map(|d| view(&d)));
    assert_eq!(mutable, r, "Datagram::parse(&mut [u8])");
    assert_eq!(copy, frame, "parsing wrote to the buffer");
    r
}

// ---------------------------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------------------------

/// At most one VLAN tag: 802.1Q (TPID 0x8100) or 802.1ad (TPID 0x88a8), each followed by the IP EtherType.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Tag {
    None,
    Dot1q(u16),
    Dot1ad(u16),
}

#[derive(Debug, Clone, PartialEq)]
enum Ip {
    V4 { src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16, dscp: u8, ecn: u8, df: bool, options: Vec<u8> },
    V6 { src: [u8; 16], dst: [u8; 16], hop: u8, traffic_class: u8, flow: u32 },
}

/// What the request's UDP checksum field holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UdpSum {
    /// The full checksum.
    Correct,
    /// Zero: "none" over IPv4, an error over IPv6.
    Zero,
    /// The folded pseudo-header sum, as a sender with TX checksum offload leaves it (CHECKSUM_PARTIAL).
    PseudoOnly,
    /// Anything (almost always wrong).
    Garbage(u16),
}

#[derive(Debug, Clone, PartialEq)]
struct Spec {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    tag: Tag,
    ip: Ip,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
    udp_sum: UdpSum,
    /// Ethernet padding after the IP datagram (must be ignored).
    padding: Vec<u8>,
}

/// A serialised [`Spec`] and what `parse` must say about it.
#[derive(Debug, Clone)]
struct Built {
    frame: Vec<u8>,
    expected: View,
    /// End of the IP datagram (the padding starts here).
    end: usize,
}

fn arb_tag() -> impl Strategy<Value = Tag> {
    prop_oneof![
        2 => Just(Tag::None),
        1 => any::<u16>().prop_map(Tag::Dot1q),
        1 => any::<u16>().prop_map(Tag::Dot1ad),
    ]
}

fn arb_v4() -> impl Strategy<Value = Ip> {
    (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u8>(),
        any::<u16>(),
        0u8..64,
        0u8..4,
        any::<bool>(),
        (0usize..=10).prop_flat_map(|words| vec(any::<u8>(), words * 4)),
    )
        .prop_map(|(src, dst, ttl, id, dscp, ecn, df, options)| Ip::V4 {
            src,
            dst,
            ttl,
            id,
            dscp,
            ecn,
            df,
            options,
        })
}

fn arb_v6() -> impl Strategy<Value = Ip> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u8>(), any::<u8>(), 0u32..(1 << 20))
        .prop_map(|(src, dst, hop, traffic_class, flow)| Ip::V6 { src, dst, hop, traffic_class, flow })
}

fn arb_udp_sum() -> impl Strategy<Value = UdpSum> {
    prop_oneof![
        4 => Just(UdpSum::Correct),
        1 => Just(UdpSum::Zero),
        1 => Just(UdpSum::PseudoOnly),
        1 => any::<u16>().prop_map(UdpSum::Garbage),
    ]
}

fn arb_padding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![2 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..48)]
}

fn arb_spec_full(
    ip: impl Strategy<Value = Ip>,
    payload: impl Strategy<Value = Vec<u8>>,
    udp_sum: impl Strategy<Value = UdpSum>,
) -> impl Strategy<Value = Spec> {
    (any::<[u8; 6]>(), any::<[u8; 6]>(), arb_tag(), ip, any::<u16>(), any::<u16>(), payload, udp_sum, arb_padding())
        .prop_map(|(dst_mac, src_mac, tag, ip, sport, dport, payload, udp_sum, padding)| Spec {
            dst_mac,
            src_mac,
            tag,
            ip,
            sport,
            dport,
            payload,
            udp_sum,
            padding,
        })
}

fn arb_spec_with(
    ip: impl Strategy<Value = Ip>,
    payload: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Spec> {
    arb_spec_full(ip, payload, arb_udp_sum())
}

/// Payload sizes: mostly small, sometimes up to the largest that fits a 1500-byte MTU over IPv4.
fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => vec(any::<u8>(), 0..=64), 1 => vec(any::<u8>(), 0..=1472)]
}

fn arb_ip() -> impl Strategy<Value = Ip> {
    prop_oneof![arb_v4(), arb_v6()]
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    arb_spec_with(arb_ip(), arb_payload())
}

fn arb_spec_v4() -> impl Strategy<Value = Spec> {
    arb_spec_with(arb_v4(), arb_payload())
}

fn arb_spec_v6() -> impl Strategy<Value = Spec> {
    arb_spec_with(arb_v6(), arb_payload())
}

/// A spec whose UDP checksum is the given kind.
fn arb_spec_summed(sum: UdpSum) -> impl Strategy<Value = Spec> {
    arb_spec_full(arb_ip(), arb_payload(), Just(sum))
}

fn ip_ethertype(ip: &Ip) -> u16 {
    match ip {
        Ip::V4 { .. } => ETHERTYPE_IPV4,
        Ip::V6 { .. } => ETHERTYPE_IPV6,
    }
}

fn vlan_header(tci: u16, ether_type: u16) -> SingleVlanHeader {
    SingleVlanHeader {
        pcp: VlanPcp::try_new((tci >> 13) as u8).unwrap(),
        drop_eligible_indicator: tci & 0x1000 != 0,
        vlan_id: VlanId::try_new(tci & 0x0fff).unwrap(),
        ether_type: EtherType(ether_type),
    }
}

fn v4_header(ip: &Ip, udp_len: usize) -> Option<Ipv4Header> {
    let Ip::V4 { src, dst, ttl, id, dscp, ecn, df, options } = ip else { return None };
    let options = Ipv4Options::try_from(&options[..]).unwrap();
    let mut h = Ipv4Header {
        dscp: Ipv4Dscp::try_new(*dscp).unwrap(),
        ecn: Ipv4Ecn::try_new(*ecn).unwrap(),
        total_len: 0,
        identification: *id,
        dont_fragment: *df,
        more_fragments: false,
        fragment_offset: IpFragOffset::ZERO,
        time_to_live: *ttl,
        protocol: IpNumber::UDP,
        header_checksum: 0,
        source: *src,
        destination: *dst,
        options,
    };
    h.total_len = (h.header_len() + udp_len) as u16;
    h.header_checksum = h.calc_header_checksum();
    Some(h)
}

fn v6_header(ip: &Ip, udp_len: usize) -> Option<Ipv6Header> {
    let Ip::V6 { src, dst, hop, traffic_class, flow } = ip else { return None };
    Some(Ipv6Header {
        traffic_class: *traffic_class,
        flow_label: Ipv6FlowLabel::try_new(*flow).unwrap(),
        payload_length: udp_len as u16,
        next_header: IpNumber::UDP,
        hop_limit: *hop,
        source: *src,
        destination: *dst,
    })
}

/// Serialises `s` with etherparse's header types (the UDP checksum from etherparse too) and computes the view
/// that `parse` must give for it (the checksum classification from the naive oracle below).
fn build(s: &Spec) -> Built {
    let mut frame = Vec::new();
    let (outer_type, vlan_tci) = match s.tag {
        Tag::None => (ip_ethertype(&s.ip), None),
        Tag::Dot1q(tci) => (ETHERTYPE_VLAN, Some(tci)),
        Tag::Dot1ad(tci) => (ETHERTYPE_QINQ, Some(tci)),
    };
    let eth = Ethernet2Header { source: s.src_mac, destination: s.dst_mac, ether_type: EtherType(outer_type) };
    frame.extend_from_slice(&eth.to_bytes());
    if let Some(tci) = vlan_tci {
        frame.extend_from_slice(&vlan_header(tci, ip_ethertype(&s.ip)).to_bytes());
    }
    let l3 = frame.len();
    let udp_len = udp::HEADER_LEN + s.payload.len();
    let (version, mut uh, src_ip, dst_ip, addrs) = match &s.ip {
        Ip::V4 { src, dst, .. } => {
            let h = v4_header(&s.ip, udp_len).unwrap();
            frame.extend_from_slice(&h.to_bytes());
            let uh = UdpHeader::with_ipv4_checksum(s.sport, s.dport, &h, &s.payload).unwrap();
            let addrs = (src.to_vec(), dst.to_vec());
            (IpVersion::V4, uh, IpAddr::V4(Ipv4Addr::from(*src)), IpAddr::V4(Ipv4Addr::from(*dst)), addrs)
        }
        Ip::V6 { src, dst, .. } => {
            let h = v6_header(&s.ip, udp_len).unwrap();
            frame.extend_from_slice(&h.to_bytes());
            let uh = UdpHeader::with_ipv6_checksum(s.sport, s.dport, &h, &s.payload).unwrap();
            let addrs = (src.to_vec(), dst.to_vec());
            (IpVersion::V6, uh, IpAddr::V6(Ipv6Addr::from(*src)), IpAddr::V6(Ipv6Addr::from(*dst)), addrs)
        }
    };
    match s.udp_sum {
        UdpSum::Correct => {}
        UdpSum::Zero => uh.checksum = 0,
        UdpSum::PseudoOnly => uh.checksum = naive_sum(&pseudo_header(&addrs.0, &addrs.1, udp_len)),
        UdpSum::Garbage(g) => uh.checksum = g,
    }
    let udp_at = frame.len();
    frame.extend_from_slice(&uh.to_bytes());
    frame.extend_from_slice(&s.payload);
    let end = frame.len();
    frame.extend_from_slice(&s.padding);
    let udp_checksum = naive_classify(version == IpVersion::V4, &addrs.0, &addrs.1, &frame[udp_at..end]);
    Built {
        frame,
        end,
        expected: View {
            ip: version,
            vlan_tci,
            l3,
            udp_at,
            payload_offset: udp_at + udp::HEADER_LEN,
            payload_len: s.payload.len(),
            src: SocketAddr::new(src_ip, s.sport),
            dst: SocketAddr::new(dst_ip, s.dport),
            payload: s.payload.clone(),
            udp_checksum,
        },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Independent checksum computation
// ---------------------------------------------------------------------------------------------------------------

/// The one's-complement sum of `data` as big-endian 16-bit words (odd byte padded with zero), folded, computed
/// the textbook way: one word at a time, end-around carry after every addition.
fn naive_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 { u32::from(pair[0]) << 8 | u32::from(pair[1]) } else { u32::from(pair[0]) << 8 };
        sum += word;
        if sum > 0xffff {
            sum = (sum & 0xffff) + 1;
        }
    }
    sum as u16
}

/// The UDP pseudo-header for `segment` (RFC 768 / RFC 8200 §8.1), built byte by byte.
fn pseudo_header(src: &[u8], dst: &[u8], segment_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 4 {
        p.extend_from_slice(&[0, IPPROTO_UDP]);
        p.extend_from_slice(&(segment_len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(segment_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    }
    p
}

/// Whether the UDP `segment` (checksum field included) verifies against the pseudo-header, naively.
fn udp_verifies(src: &[u8], dst: &[u8], segment: &[u8]) -> bool {
    let mut all = pseudo_header(src, dst, segment.len());
    all.extend_from_slice(segment);
    naive_sum(&all) == 0xffff
}

/// The UDP checksum `segment` should carry (its checksum field is ignored), naively; zero sent as 0xffff.
fn naive_udp_checksum(src: &[u8], dst: &[u8], segment: &[u8]) -> u16 {
    let mut all = pseudo_header(src, dst, segment.len());
    all.extend_from_slice(&segment[..udp::CHECKSUM.start]);
    all.extend_from_slice(&[0, 0]);
    all.extend_from_slice(&segment[udp::CHECKSUM.end..]);
    match !naive_sum(&all) {
        0 => 0xffff,
        c => c,
    }
}

/// What `udp_checksum` must say about `segment` (UDP header and payload, as long as its length field says),
/// decided naively, in the documented order: zero first, then a verifying sum, then the pseudo-header sum alone.
fn naive_classify(v4: bool, src: &[u8], dst: &[u8], segment: &[u8]) -> UdpChecksum {
    let field = be16(segment, udp::CHECKSUM.start);
    if field == 0 {
        if v4 {
            UdpChecksum::Absent
        } else {
            UdpChecksum::Wrong
        }
    } else if udp_verifies(src, dst, segment) {
        UdpChecksum::Correct
    } else if field == naive_sum(&pseudo_header(src, dst, segment.len())) {
        UdpChecksum::PseudoHeaderOnly
    } else {
        UdpChecksum::Wrong
    }
}

/// The IP addresses of the datagram `v` describes in `frame`, as bytes.
fn ip_addrs(frame: &[u8], v: &View) -> (Vec<u8>, Vec<u8>) {
    match v.ip {
        IpVersion::V4 => (frame[at(v.l3, ipv4::SRC)].to_vec(), frame[at(v.l3, ipv4::DST)].to_vec()),
        IpVersion::V6 => (frame[at(v.l3, ipv6::SRC)].to_vec(), frame[at(v.l3, ipv6::DST)].to_vec()),
    }
}

/// [`naive_classify`] for the datagram `v` describes in `frame`.
fn classify_in(frame: &[u8], v: &View) -> UdpChecksum {
    let (src, dst) = ip_addrs(frame, v);
    let end = v.udp_at + usize::from(get16(frame, v.udp_at, udp::LENGTH));
    naive_classify(v.ip == IpVersion::V4, &src, &dst, &frame[v.udp_at..end])
}

/// The folded pseudo-header sum of the datagram `v` describes in `frame` (what an offloading sender leaves).
fn pseudo_fold_in(frame: &[u8], v: &View) -> u16 {
    let (src, dst) = ip_addrs(frame, v);
    naive_sum(&pseudo_header(&src, &dst, usize::from(get16(frame, v.udp_at, udp::LENGTH))))
}

/// Recomputes the IPv4 header checksum at `l3` (IHL taken from the header), naively.
fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4;
    set16(frame, l3, ipv4::CHECKSUM, 0);
    let c = !naive_sum(&frame[l3..l3 + ihl]);
    set16(frame, l3, ipv4::CHECKSUM, c);
}

/// Rewrites the UDP checksum of the datagram `v` describes in `frame` to the correct full one (after an edit).
fn fix_udp_checksum(frame: &mut [u8], v: &View) {
    let (src, dst) = ip_addrs(frame, v);
    let end = v.udp_at + usize::from(get16(frame, v.udp_at, udp::LENGTH));
    let c = naive_udp_checksum(&src, &dst, &frame[v.udp_at..end]);
    set16(frame, v.udp_at, udp::CHECKSUM, c);
}

// ---------------------------------------------------------------------------------------------------------------
// What the bytes say, and what etherparse says
// ---------------------------------------------------------------------------------------------------------------

/// Re-derives from the bytes of `frame` everything the view `v` of it claims (EtherType, VLAN tag, version, IHL,
/// a verifying IPv4 header checksum, not a fragment, protocol / next header UDP, addresses, ports, UDP length,
/// payload); returns where the IP datagram ends (what follows is Ethernet padding).
fn check_view(frame: &[u8], v: &View) -> Result<usize, TestCaseError> {
    prop_assert!(v.l3 < v.udp_at);
    prop_assert_eq!(v.udp_at + udp::HEADER_LEN, v.payload_offset);
    prop_assert!(v.payload_offset + v.payload_len <= frame.len());
    match v.vlan_tci {
        None => prop_assert_eq!(v.l3, eth::HEADER_LEN),
        Some(tci) => {
            prop_assert_eq!(v.l3, eth::HEADER_LEN + vlan::TAG_LEN);
            prop_assert!(matches!(get16(frame, 0, eth::ETHERTYPE), ETHERTYPE_VLAN | ETHERTYPE_QINQ));
            prop_assert_eq!(get16(frame, eth::HEADER_LEN, vlan::TCI), tci);
        }
    }
    let l3 = &frame[v.l3..];
    let header = v.udp_at - v.l3;
    let ip_payload = match v.ip {
        IpVersion::V4 => {
            prop_assert_eq!(be16(frame, ethertype_at(v.l3)), ETHERTYPE_IPV4);
            prop_assert_eq!(l3[ipv4::VER_IHL] >> 4, 4);
            prop_assert_eq!(header, usize::from(l3[ipv4::VER_IHL] & 0x0f) * 4);
            prop_assert!((ipv4::MIN_HEADER_LEN..=ipv4::MAX_HEADER_LEN).contains(&header));
            prop_assert_eq!(naive_sum(&l3[..header]), 0xffff, "IPv4 header checksum accepted but does not verify");
            prop_assert_eq!(l3[ipv4::PROTOCOL], IPPROTO_UDP);
            prop_assert_eq!(get16(l3, 0, ipv4::FLAGS_FRAG) & ipv4::FRAGMENT_MASK, 0, "fragment accepted");
            let (s, d): ([u8; 4], [u8; 4]) = (l3[ipv4::SRC].try_into().unwrap(), l3[ipv4::DST].try_into().unwrap());
            prop_assert_eq!(v.src.ip(), IpAddr::from(s));
            prop_assert_eq!(v.dst.ip(), IpAddr::from(d));
            let total = usize::from(get16(l3, 0, ipv4::TOTAL_LEN));
            prop_assert!(total <= l3.len());
            total - header
        }
        IpVersion::V6 => {
            prop_assert_eq!(be16(frame, ethertype_at(v.l3)), ETHERTYPE_IPV6);
            prop_assert_eq!(l3[ipv6::VER_TC_FLOW.start] >> 4, 6);
            prop_assert_eq!(header, ipv6::HEADER_LEN);
            prop_assert_eq!(l3[ipv6::NEXT_HEADER], IPPROTO_UDP);
            let (s, d): ([u8; 16], [u8; 16]) = (l3[ipv6::SRC].try_into().unwrap(), l3[ipv6::DST].try_into().unwrap());
            prop_assert_eq!(v.src.ip(), IpAddr::from(s));
            prop_assert_eq!(v.dst.ip(), IpAddr::from(d));
            let payload = usize::from(get16(l3, 0, ipv6::PAYLOAD_LEN));
            prop_assert!(payload > 0 && ipv6::HEADER_LEN + payload <= l3.len());
            payload
        }
    };
    prop_assert_eq!(v.src.port(), get16(frame, v.udp_at, udp::SRC_PORT));
    prop_assert_eq!(v.dst.port(), get16(frame, v.udp_at, udp::DST_PORT));
    prop_assert_eq!(usize::from(get16(frame, v.udp_at, udp::LENGTH)), udp::HEADER_LEN + v.payload_len);
    prop_assert!(udp::HEADER_LEN + v.payload_len <= ip_payload);
    prop_assert_eq!(&v.payload[..], &frame[v.payload_offset..v.payload_offset + v.payload_len]);
    prop_assert_eq!(v.udp_checksum, classify_in(frame, v));
    Ok(v.udp_at + ip_payload)
}

/// Whether etherparse's slicing of `frame` is a UDP datagram shunt serves: UDP length at least 8 (etherparse reads
/// 0 as "the rest"), at most one VLAN tag with TPID 0x8100 or 0x88a8 (etherparse also takes 0x9100), IPv4 with
/// protocol UDP (not UDP behind an AH header) and a header checksum that verifies (etherparse does not check it),
/// or IPv6 with no extension headers and a nonzero payload length (etherparse reads 0 as a jumbogram).
fn etherparse_serves(frame: &[u8], p: &SlicedPacket) -> bool {
    let Some(TransportSlice::Udp(u)) = &p.transport else { return false };
    if usize::from(u.length()) < udp::HEADER_LEN {
        return false;
    }
    match &p.vlan {
        None => {}
        Some(VlanSlice::SingleVlan(_))
            if !matches!(get16(frame, 0, eth::ETHERTYPE), ETHERTYPE_VLAN | ETHERTYPE_QINQ) =>
        {
            return false
        }
        Some(VlanSlice::SingleVlan(_)) => {}
        Some(VlanSlice::DoubleVlan(_)) => return false,
    }
    match &p.net {
        Some(NetSlice::Ipv4(ip)) => ip.header().protocol() == IpNumber::UDP && naive_sum(ip.header().slice()) == 0xffff,
        Some(NetSlice::Ipv6(ip)) => ip.extensions().is_empty() && ip.header().payload_length() != 0,
        _ => false,
    }
}

/// `parse` and etherparse agree, both ways: what shunt accepts etherparse slices to the same VLAN tag, addresses,
/// ports, UDP length, checksum field and payload; and what etherparse slices to a UDP datagram shunt serves (see
/// [`etherparse_serves`]), shunt accepts.
fn etherparse_agrees(frame: &[u8], ours: &Parsed) -> Result<(), TestCaseError> {
    let theirs = SlicedPacket::from_ethernet(frame);
    if let Ok(Some(v)) = ours {
        let p = match &theirs {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("shunt parsed {v:?}; etherparse: {e:?}"))),
        };
        prop_assert!(matches!(p.link, Some(LinkSlice::Ethernet2(_))));
        match &p.vlan {
            None => prop_assert_eq!(v.vlan_tci, None),
            Some(VlanSlice::SingleVlan(t)) => {
                prop_assert_eq!(v.vlan_tci, Some(get16(t.header_slice(), 0, vlan::TCI)))
            }
            Some(other) => return Err(TestCaseError::fail(format!("shunt parsed {v:?}; etherparse: {other:?}"))),
        }
        match (&p.net, v.ip) {
            (Some(NetSlice::Ipv4(ip)), IpVersion::V4) => {
                prop_assert_eq!(v.src.ip(), IpAddr::from(ip.header().source()));
                prop_assert_eq!(v.dst.ip(), IpAddr::from(ip.header().destination()));
            }
            (Some(NetSlice::Ipv6(ip)), IpVersion::V6) => {
                prop_assert_eq!(v.src.ip(), IpAddr::from(ip.header().source()));
                prop_assert_eq!(v.dst.ip(), IpAddr::from(ip.header().destination()));
                prop_assert!(ip.extensions().is_empty());
            }
            (net, ip) => return Err(TestCaseError::fail(format!("shunt parsed {ip:?}; etherparse: {net:?}"))),
        }
        let Some(TransportSlice::Udp(u)) = &p.transport else {
            return Err(TestCaseError::fail(format!("shunt parsed {v:?}; etherparse: {:?}", p.transport)));
        };
        prop_assert_eq!(v.src.port(), u.source_port());
        prop_assert_eq!(v.dst.port(), u.destination_port());
        prop_assert_eq!(usize::from(u.length()), udp::HEADER_LEN + v.payload_len);
        prop_assert_eq!(u.checksum(), get16(frame, v.udp_at, udp::CHECKSUM));
        prop_assert_eq!(u.payload(), &v.payload[..]);
        prop_assert!(etherparse_serves(frame, p));
    } else if let Ok(p) = &theirs {
        prop_assert!(!etherparse_serves(frame, p), "etherparse found a datagram we serve; shunt said {:?}", ours);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Reply verification
// ---------------------------------------------------------------------------------------------------------------

/// Checks that `reply` is the correct reply to `request` (parsed as `req`) carrying `payload`, with the default
/// reply headers (TTL 64, DSCP 0), with naive checksums and with etherparse.
fn verify_reply(request: &[u8], req: &View, reply: &[u8], payload: &[u8]) -> Result<(), TestCaseError> {
    verify_reply_with(request, req, reply, payload, ReplyHeaders::default())
}

/// [`verify_reply`] with the reply headers `headers` asked for: the reply's IP header is the server's own (IHL 5,
/// no options; TTL / hop limit `headers.ttl`; DSCP `headers.dscp`, ECN not-ECT; IPv6 flow label 0; IPv4 ID 0 and
/// DF), whatever the request's said.
fn verify_reply_with(
    request: &[u8],
    req: &View,
    reply: &[u8],
    payload: &[u8],
    headers: ReplyHeaders,
) -> Result<(), TestCaseError> {
    let r = match parse_view(reply) {
        Ok(Some(r)) => r,
        other => return Err(TestCaseError::fail(format!("reply does not parse: {other:?} ({reply:02x?})"))),
    };
    prop_assert_eq!(check_view(reply, &r)?, reply.len(), "reply with padding");
    prop_assert_eq!(r.ip, req.ip);
    prop_assert_eq!(r.vlan_tci, req.vlan_tci);
    prop_assert_eq!(r.l3, req.l3);
    prop_assert_eq!(r.udp_at, req.l3 + reply_ip_header_len(req.ip), "no IPv4 options in a reply");
    prop_assert_eq!(r.payload_offset, req.reply_payload_offset());
    prop_assert_eq!(r.payload_len, payload.len());
    prop_assert_eq!(&r.payload[..], payload);
    prop_assert_eq!(r.udp_checksum, UdpChecksum::Correct, "replies carry a full, verifying UDP checksum");
    prop_assert_eq!(r.src, req.dst, "reply source is the request's destination");
    prop_assert_eq!(r.dst, req.src, "reply destination is the request's source");
    prop_assert_eq!(reply.len(), r.payload_offset + payload.len(), "no padding, no slack");

    // Ethernet: MACs swapped, EtherType and the VLAN tag (TPID and TCI) kept byte for byte.
    prop_assert_eq!(&reply[eth::DST], &request[eth::SRC]);
    prop_assert_eq!(&reply[eth::SRC], &request[eth::DST]);
    prop_assert_eq!(&reply[eth::ETHERTYPE.start..r.l3], &request[eth::ETHERTYPE.start..req.l3]);

    let l3 = r.l3;
    let seg = &reply[r.udp_at..];
    let udp_len = udp::HEADER_LEN + payload.len();
    let h = &reply[l3..r.udp_at];
    let q = &request[l3..req.udp_at];
    let tos = headers.dscp << 2;
    let (src, dst): (Vec<u8>, Vec<u8>) = match r.ip {
        IpVersion::V4 => {
            prop_assert_eq!(h.len(), ipv4::MIN_HEADER_LEN, "IPv4 options stripped");
            prop_assert_eq!(h[ipv4::VER_IHL], 0x45, "version 4, IHL 5");
            prop_assert_eq!(h[ipv4::TOS], tos, "DSCP as configured, ECN not-ECT (request TOS {:#04x})", q[ipv4::TOS]);
            prop_assert_eq!(usize::from(get16(h, 0, ipv4::TOTAL_LEN)), h.len() + udp_len, "total length");
            prop_assert_eq!(get16(h, 0, ipv4::IDENT), 0, "ID 0");
            prop_assert_eq!(get16(h, 0, ipv4::FLAGS_FRAG), ipv4::DONT_FRAGMENT, "DF, no other flag, offset 0");
            prop_assert_eq!(h[ipv4::TTL], headers.ttl, "fresh TTL (request's {})", q[ipv4::TTL]);
            prop_assert_eq!(h[ipv4::PROTOCOL], IPPROTO_UDP);
            prop_assert_eq!(naive_sum(h), 0xffff, "IPv4 header checksum verifies (naive)");
            prop_assert_eq!(&h[ipv4::SRC], &q[ipv4::DST]);
            prop_assert_eq!(&h[ipv4::DST], &q[ipv4::SRC]);
            (h[ipv4::SRC].to_vec(), h[ipv4::DST].to_vec())
        }
        IpVersion::V6 => {
            prop_assert_eq!(h.len(), ipv6::HEADER_LEN);
            let first = u32::from_be_bytes(h[ipv6::VER_TC_FLOW].try_into().unwrap());
            prop_assert_eq!(first >> 28, 6, "version");
            prop_assert_eq!((first >> 20) as u8, tos, "traffic class: DSCP as configured, ECN not-ECT");
            prop_assert_eq!(first & 0xfffff, 0, "flow label 0");
            prop_assert_eq!(usize::from(get16(h, 0, ipv6::PAYLOAD_LEN)), udp_len, "payload length");
            prop_assert_eq!(h[ipv6::NEXT_HEADER], IPPROTO_UDP);
            prop_assert_eq!(h[ipv6::HOP_LIMIT], headers.ttl, "fresh hop limit");
            prop_assert_eq!(&h[ipv6::SRC], &q[ipv6::DST]);
            prop_assert_eq!(&h[ipv6::DST], &q[ipv6::SRC]);
            (h[ipv6::SRC].to_vec(), h[ipv6::DST].to_vec())
        }
    };
    let q_udp = &request[req.udp_at..];
    prop_assert_eq!(&seg[udp::SRC_PORT], &q_udp[udp::DST_PORT], "ports swapped");
    prop_assert_eq!(&seg[udp::DST_PORT], &q_udp[udp::SRC_PORT], "ports swapped");
    prop_assert_eq!(usize::from(get16(seg, 0, udp::LENGTH)), udp_len);
    let segment = &seg[..udp_len];
    let sum = get16(seg, 0, udp::CHECKSUM);
    prop_assert_ne!(sum, 0, "replies always carry a UDP checksum (mandatory over IPv6)");
    prop_assert!(udp_verifies(&src, &dst, segment), "UDP checksum {:#06x} does not verify (naive)", sum);
    prop_assert_eq!(sum, naive_udp_checksum(&src, &dst, segment));
    prop_assert_eq!(&seg[udp::HEADER_LEN..udp_len], payload);

    // And once more with etherparse.
    let p = PacketHeaders::from_ethernet_slice(reply).map_err(|e| TestCaseError::fail(format!("etherparse: {e:?}")))?;
    let Some(LinkHeader::Ethernet2(e)) = &p.link else { return Err(TestCaseError::fail("etherparse: no Ethernet")) };
    prop_assert_eq!(&e.destination[..], &request[eth::SRC]);
    match (&p.vlan, req.vlan_tci) {
        (None, None) => {}
        (Some(VlanHeader::Single(v)), Some(tci)) => {
            prop_assert_eq!(v.vlan_id.value(), tci & 0x0fff);
            prop_assert_eq!(v.pcp.value(), (tci >> 13) as u8);
        }
        (v, tci) => return Err(TestCaseError::fail(format!("etherparse VLAN {v:?} vs {tci:?}"))),
    }
    let Some(TransportHeader::Udp(u)) = &p.transport else { return Err(TestCaseError::fail("etherparse: no UDP")) };
    match &p.net {
        Some(NetHeaders::Ipv4(h, _)) => {
            // A reply's flags are DF alone (the reserved bit, which etherparse does not model, is clear).
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
            prop_assert_eq!(h.time_to_live, headers.ttl);
            prop_assert!(h.options.is_empty());
            prop_assert_eq!((h.dscp.value(), h.ecn.value()), (headers.dscp, 0));
            prop_assert_eq!((h.identification, h.dont_fragment, h.more_fragments), (0, true, false));
            prop_assert_eq!(u.checksum, u.calc_checksum_ipv4(h, payload).unwrap());
        }
        Some(NetHeaders::Ipv6(h, _)) => {
            prop_assert_eq!(h.hop_limit, headers.ttl);
            prop_assert_eq!((h.traffic_class, h.flow_label.value()), (tos, 0));
            prop_assert_eq!(u.checksum, u.calc_checksum_ipv6(h, payload).unwrap());
        }
        other => return Err(TestCaseError::fail(format!("etherparse net {other:?}"))),
    }
    match p.payload {
        PayloadSlice::Udp(b) => prop_assert_eq!(b, payload),
        other => return Err(TestCaseError::fail(format!("etherparse payload {other:?}"))),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Running respond
// ---------------------------------------------------------------------------------------------------------------

/// The time handed to `respond` (the handler must see it as it is).
const NOW: Time = Time { unix_ns: 1_700_000_000_123_456_789, monotonic_ns: 987_654_321 };

/// The default options but for the MTU, which is out of the way (any reply the IP length fields allow fits):
/// most properties here are about parsing and replying, and use payloads and rooms beyond 1500 bytes. The MTU
/// has its own properties.
const VERIFIED: RespondOptions =
    RespondOptions { verify_udp_checksum: true, reply_ttl: DEFAULT_TTL, reply_dscp: 0, mtu: usize::MAX };

/// Checksum verification off (what a server behind a verifying NIC may choose).
const UNVERIFIED: RespondOptions = RespondOptions { verify_udp_checksum: false, ..VERIFIED };

/// `respond` with [`VERIFIED`] options (UDP checksums verified).
fn run<H: Handler + ?Sized>(handler: &mut H, frame: &mut [u8], len: usize) -> Outcome {
    respond(handler, frame, len, NOW, VERIFIED)
}

/// `respond` with UDP checksum verification off.
fn run_unverified<H: Handler + ?Sized>(handler: &mut H, frame: &mut [u8], len: usize) -> Outcome {
    respond(handler, frame, len, NOW, UNVERIFIED)
}

/// What a verifying `respond` gives for the datagram `v` when the handler would answer with `reply`.
fn verified(v: &View, reply: Outcome) -> Outcome {
    if v.udp_checksum == UdpChecksum::Wrong {
        Outcome::BadChecksum
    } else {
        reply
    }
}

/// A handler made of a closure, for one-off behaviours. It declares no bound on its replies (its budget's
/// bytes are `usize::MAX`), so that only the room limits them; [`Bounded`] keeps the default budget.
struct With<F>(F);

fn with<F: FnMut(&Request, &mut [u8], usize) -> Verdict + Send>(f: F) -> With<F> {
    With(f)
}

impl<F: FnMut(&Request, &mut [u8], usize) -> Verdict + Send> Handler for With<F> {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        (self.0)(request, payload, len)
    }

    fn budget(&self, _request_len: usize) -> Budget {
        Budget { packets: 1, bytes: usize::MAX }
    }
}

/// A handler made of a closure that keeps `Handler::budget`'s default (one datagram of the request's length).
struct Bounded<F>(F);

impl<F: FnMut(&Request, &mut [u8], usize) -> Verdict + Send> Handler for Bounded<F> {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        (self.0)(request, payload, len)
    }
}

/// `cases` in release mode (the whole file runs in a few seconds); an eighth of them in a debug build.
fn config(cases: u32) -> Config {
    let cases = if cfg!(debug_assertions) { cases / 8 } else { cases };
    Config { cases, failure_persistence: None, ..Config::default() }
}

/// `frame` followed by `room` bytes of junk: the buffer a frame is received into.
fn in_buffer(frame: &[u8], room: usize, junk: u8) -> Vec<u8> {
    let mut buf = frame.to_vec();
    buf.resize(frame.len() + room, junk);
    buf
}

/// `Datagram::parse` over a mutable buffer holding `frame` and `room` bytes more, for the reply-side methods.
fn max_reply_payload_in(frame: &[u8], room: usize) -> usize {
    let mut buf = in_buffer(frame, room, 0);
    Datagram::parse(&mut buf[..], frame.len()).unwrap().unwrap().max_reply_payload()
}

// ---------------------------------------------------------------------------------------------------------------
// Valid frames and round trips
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(8192))]

    /// parse gives exactly the expected view through every accessor; the bytes and etherparse agree.
    #[test]
    fn parses_valid_frames(s in arb_spec()) {
        let b = build(&s);
        let v = parse_view(&b.frame);
        prop_assert_eq!(&v, &Ok(Some(b.expected.clone())));
        let d = &b.expected;
        prop_assert_eq!(check_view(&b.frame, d)?, b.end);
        prop_assert_eq!(&b.frame[d.payload_offset..d.payload_offset + d.payload_len], &s.payload[..]);
        etherparse_agrees(&b.frame, &v)?;

        // Generator sanity: etherparse reads back the same datagram.
        let p = PacketHeaders::from_ethernet_slice(&b.frame).unwrap();
        match p.payload {
            PayloadSlice::Udp(pl) => prop_assert_eq!(pl, &s.payload[..]),
            other => prop_assert!(false, "etherparse payload {:?}", other),
        }
        if let Some(NetHeaders::Ipv4(h, _)) = &p.net {
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
    }

    /// `Datagram::parse(buf, len)` looks only at the first `len` bytes (clamped to the buffer): with the frame
    /// followed by junk and any `len`, it says what `parse` says of the first `len` bytes.
    #[test]
    fn datagram_parse_honours_len(s in arb_spec(), room in 0usize..64, junk in any::<u8>(), pick in any::<usize>()) {
        let b = build(&s);
        let mut buf = in_buffer(&b.frame, room, junk);
        let len = if pick.is_multiple_of(4) { pick } else { pick % (buf.len() + 1) };
        let expected = parse_view(&buf[..len.min(buf.len())]);
        let shared = Datagram::parse(&buf[..], len).map(|o| o.map(|d| view(&d)));
        prop_assert_eq!(&shared, &expected);
        let mutable = Datagram::parse(&mut buf[..], len).map(|o| o.map(|d| view(&d)));
        prop_assert_eq!(&mutable, &expected);
        if len >= b.end {
            prop_assert_eq!(&expected, &Ok(Some(b.expected.clone())));
        }
    }

    /// Echo: the reply parses back swapped with verifying checksums, and a second respond restores the request. A
    /// request whose checksum is wrong is refused, untouched, unless verification is off.
    #[test]
    fn echo_round_trip(s in arb_spec(), room in 0usize..256, junk in any::<u8>()) {
        let b = build(&s);
        let d = &b.expected;
        let n = d.reply_len(d.payload_len);
        let mut buf = in_buffer(&b.frame, room, junk);
        let out = run(&mut Echo, &mut buf, b.frame.len());
        if d.udp_checksum == UdpChecksum::Wrong {
            prop_assert_eq!(out, Outcome::BadChecksum);
            prop_assert_eq!(&buf, &in_buffer(&b.frame, room, junk), "a refused request is left alone");
            prop_assert_eq!(run_unverified(&mut Echo, &mut buf, b.frame.len()), Outcome::Reply(n));
        } else {
            prop_assert_eq!(out, Outcome::Reply(n));
        }
        verify_reply(&b.frame, d, &buf[..n], &s.payload)?;

        // Twice: back to the original addresses, ports and payload.
        let reply = buf[..n].to_vec();
        let out2 = run(&mut Echo, &mut buf, n);
        prop_assert_eq!(out2, Outcome::Reply(n));
        let again = parse_view(&buf[..n]).unwrap().unwrap();
        let normal = normalised(&b.expected);
        prop_assert_eq!(&again, &View { udp_checksum: UdpChecksum::Correct, ..normal.clone() });
        verify_reply(&reply, &parse_view(&reply).unwrap().unwrap(), &buf[..n], &s.payload)?;
        prop_assert_eq!(&buf[..eth::ETHERTYPE.start], &b.frame[..eth::ETHERTYPE.start], "MACs restored");
        // The request as a server would have sent it: no options, headers normalised. Only the UDP checksum
        // may differ (the request's may be partial or absent; the reply's is full).
        let original = build(&normalise(&s)).frame;
        prop_assert_eq!(original.len(), n);
        let q = &buf[..n];
        prop_assert_eq!(&q[..normal.udp_at + udp::CHECKSUM.start], &original[..normal.udp_at + udp::CHECKSUM.start]);
        prop_assert_eq!(&q[normal.payload_offset..], &original[normal.payload_offset..]);
        if s.udp_sum == UdpSum::Correct {
            prop_assert_eq!(q, &original[..], "with a correct request checksum, byte for byte");
        }
    }

    /// A received length beyond the buffer is clamped; the junk after the frame is padding and ignored.
    #[test]
    fn respond_clamps_len(s in arb_spec(), room in 0usize..64) {
        let b = build(&s);
        let d = &b.expected;
        let n = d.reply_len(d.payload_len);
        let mut exact = b.frame.clone();
        let mut roomy = in_buffer(&b.frame, room, 0x5a);
        prop_assert_eq!(run(&mut Echo, &mut exact.clone(), usize::MAX), verified(d, Outcome::Reply(n)));
        prop_assert_eq!(run_unverified(&mut Echo, &mut exact, usize::MAX), Outcome::Reply(n));
        prop_assert_eq!(run_unverified(&mut Echo, &mut roomy, usize::MAX), Outcome::Reply(n));
        prop_assert_eq!(&exact[..n], &roomy[..n]);
    }

    /// write_reply used directly agrees with respond + Echo; max_reply_payload is what the buffer leaves; a reply
    /// one byte (or any amount) too large is refused and leaves the frame alone.
    #[test]
    fn write_reply_matches_respond(s in arb_spec(), room in 0usize..64, huge in any::<bool>()) {
        let b = build(&s);
        let d = &b.expected;
        let n = d.reply_len(d.payload_len);
        let mut direct = in_buffer(&b.frame, room, 0);
        let dg = Datagram::parse(&mut direct[..], b.frame.len()).unwrap().unwrap();
        prop_assert_eq!(&view(&dg), d);
        let max = dg.max_reply_payload();
        prop_assert_eq!(max, b.frame.len() + room - d.payload_offset);
        prop_assert_eq!(dg.write_reply(d.payload_len, VERIFIED.reply_headers()), Ok(n));
        let mut via = in_buffer(&b.frame, room, 0);
        prop_assert_eq!(run_unverified(&mut Echo, &mut via, b.frame.len()), Outcome::Reply(n));
        prop_assert_eq!(&direct, &via);

        let mut f = in_buffer(&b.frame, room, 0);
        let dg = Datagram::parse(&mut f[..], b.frame.len()).unwrap().unwrap();
        let ask = if huge { usize::MAX } else { max + 1 };
        prop_assert_eq!(dg.write_reply(ask, VERIFIED.reply_headers()), Err(ReplyError::TooLarge { payload: ask, max }));
        prop_assert_eq!(&f, &in_buffer(&b.frame, room, 0), "a refused reply leaves the frame alone");
    }

    /// payload_room_mut is the buffer from the payload to the end (as far as max_reply_payload allows): it
    /// starts with the request's payload, and writing it changes the payload and nothing before it.
    #[test]
    fn payload_room_mut_is_the_room(s in arb_spec(), room in 0usize..300, junk in any::<u8>(), fill in any::<u8>()) {
        let b = build(&s);
        let d = &b.expected;
        let before = in_buffer(&b.frame, room, junk);
        let mut buf = before.clone();
        let mut dg = Datagram::parse(&mut buf[..], b.frame.len()).unwrap().unwrap();
        let max = dg.max_reply_payload();
        prop_assert_eq!(max, before.len() - d.payload_offset);
        let r = dg.payload_room_mut();
        prop_assert_eq!(r.len(), max);
        prop_assert_eq!(&r[..d.payload_len], &s.payload[..]);
        prop_assert_eq!(&r[..], &before[d.payload_offset..]);
        r.fill(fill);
        let after = view(&dg);
        prop_assert_eq!(&after.payload, &vec![fill; d.payload_len]);
        prop_assert_eq!(
            View { payload: s.payload.clone(), udp_checksum: d.udp_checksum, ..after },
            d.clone(),
            "only the payload changed"
        );
        prop_assert_eq!(&buf[..d.payload_offset], &before[..d.payload_offset]);
        prop_assert!(buf[d.payload_offset..].iter().all(|x| *x == fill));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// UDP checksums: classification, corruption, offload
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(4096))]

    /// Each kind of checksum field is classified as documented (and as the naive oracle says).
    #[test]
    fn udp_checksum_kinds(s in arb_spec()) {
        let b = build(&s);
        let v = parse_view(&b.frame).unwrap().unwrap();
        prop_assert_eq!(v.udp_checksum, b.expected.udp_checksum);
        prop_assert_eq!(v.udp_checksum, classify_in(&b.frame, &v));
        let verifies = {
            let (src, dst) = ip_addrs(&b.frame, &v);
            udp_verifies(&src, &dst, &b.frame[v.udp_at..b.end])
        };
        match (s.udp_sum, v.ip) {
            (UdpSum::Correct, _) => prop_assert_eq!(v.udp_checksum, UdpChecksum::Correct),
            (UdpSum::Zero, IpVersion::V4) => prop_assert_eq!(v.udp_checksum, UdpChecksum::Absent),
            (UdpSum::Zero, IpVersion::V6) => prop_assert_eq!(v.udp_checksum, UdpChecksum::Wrong),
            // The pseudo-header sum alone, unless it happens to be the full checksum as well.
            (UdpSum::PseudoOnly, _) if verifies => prop_assert_eq!(v.udp_checksum, UdpChecksum::Correct),
            (UdpSum::PseudoOnly, _) => prop_assert_eq!(v.udp_checksum, UdpChecksum::PseudoHeaderOnly),
            (UdpSum::Garbage(g), _) => {
                let expected = if g == 0 {
                    if v.ip == IpVersion::V4 { UdpChecksum::Absent } else { UdpChecksum::Wrong }
                } else if verifies {
                    UdpChecksum::Correct
                } else if g == pseudo_fold_in(&b.frame, &v) {
                    UdpChecksum::PseudoHeaderOnly
                } else {
                    UdpChecksum::Wrong
                };
                prop_assert_eq!(v.udp_checksum, expected);
            }
        }
    }

    /// Any single bit flipped in the IP addresses (IPv4 header checksum re-fixed), the UDP ports, the UDP
    /// checksum field or the payload of a datagram with a correct checksum: never `Correct` (one flipped bit
    /// changes the one's-complement sum by ±2^k, never a multiple of 0xffff); `Wrong` unless the flip lands the
    /// field on zero or on the pseudo-header sum; and a verifying respond refuses exactly the `Wrong` ones.
    #[test]
    fn udp_checksum_single_bit_corruption(s in arb_spec_summed(UdpSum::Correct), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = build(&s);
        let v = b.expected.clone();
        let (src, dst) = match v.ip {
            IpVersion::V4 => (at(v.l3, ipv4::SRC), at(v.l3, ipv4::DST)),
            IpVersion::V6 => (at(v.l3, ipv6::SRC), at(v.l3, ipv6::DST)),
        };
        let places: Vec<usize> = src
            .chain(dst)
            .chain(at(v.udp_at, udp::SRC_PORT))
            .chain(at(v.udp_at, udp::DST_PORT))
            .chain(at(v.udp_at, udp::CHECKSUM))
            .chain(v.payload_offset..v.payload_offset + v.payload_len)
            .collect();
        let i = places[pick.index(places.len())];
        b.frame[i] ^= 1 << bit;
        if v.ip == IpVersion::V4 {
            fix_ipv4_checksum(&mut b.frame, v.l3);
        }
        let got = parse_view(&b.frame).unwrap().unwrap();
        prop_assert_eq!(got.udp_checksum, classify_in(&b.frame, &got));
        prop_assert_ne!(got.udp_checksum, UdpChecksum::Correct, "a flipped bit at {} still verifies", i);
        let field = get16(&b.frame, v.udp_at, udp::CHECKSUM);
        if field != 0 && field != pseudo_fold_in(&b.frame, &got) {
            prop_assert_eq!(got.udp_checksum, UdpChecksum::Wrong);
        }
        let mut buf = in_buffer(&b.frame, 16, 0);
        let n = v.reply_len(v.payload_len);
        prop_assert_eq!(run(&mut Echo, &mut buf, b.frame.len()), verified(&got, Outcome::Reply(n)));
    }

    /// A request with one payload byte changed on the way gets BadChecksum: the handler is not called and the
    /// frame is left alone. With verification off it is answered, with a checksum correct for what arrived.
    #[test]
    fn corrupted_payload_is_refused(
        s in arb_spec_full(arb_ip(), vec(any::<u8>(), 1..=600), Just(UdpSum::Correct)),
        pick in any::<prop::sample::Index>(),
        delta in 1u8..=255,
        room in 0usize..64,
    ) {
        let mut b = build(&s);
        let v = b.expected.clone();
        let i = v.payload_offset + pick.index(v.payload_len);
        b.frame[i] ^= delta;
        // Still well-formed; the field is the old full checksum, which (barring a 1-in-65535 coincidence that
        // makes it look like an offloaded one) no longer verifies.
        prop_assume!(get16(&b.frame, v.udp_at, udp::CHECKSUM) != pseudo_fold_in(&b.frame, &v));
        let got = parse_view(&b.frame).unwrap().unwrap();
        prop_assert_eq!(got.udp_checksum, UdpChecksum::Wrong);

        let before = in_buffer(&b.frame, room, 0x11);
        let mut buf = before.clone();
        let mut called = false;
        let out = run(&mut with(|_: &Request, _: &mut [u8], _| { called = true; Verdict::Drop }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::BadChecksum);
        prop_assert!(!called, "the handler saw a corrupted request");
        prop_assert_eq!(&buf, &before);
        prop_assert_eq!(run(&mut Echo, &mut buf, b.frame.len()), Outcome::BadChecksum);
        prop_assert_eq!(run(&mut Sockperf, &mut buf, b.frame.len()), Outcome::BadChecksum);
        prop_assert_eq!(&buf, &before);

        let n = v.reply_len(v.payload_len);
        prop_assert_eq!(run_unverified(&mut Echo, &mut buf, b.frame.len()), Outcome::Reply(n));
        verify_reply(&b.frame, &v, &buf[..n], &b.frame[v.payload_offset..v.payload_offset + v.payload_len])?;
    }

    /// A CHECKSUM_PARTIAL request (the field holds only the folded pseudo-header sum, as a sender with TX
    /// checksum offload leaves it, and as it arrives over veth) is answered, with a full checksum; so is one
    /// without a checksum over IPv4.
    #[test]
    fn offloaded_and_absent_checksums_are_answered(
        s in arb_spec_full(arb_ip(), arb_payload(), prop_oneof![Just(UdpSum::PseudoOnly), Just(UdpSum::Zero)]),
        room in 0usize..64,
    ) {
        let b = build(&s);
        let v = &b.expected;
        let n = v.reply_len(v.payload_len);
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = run(&mut Echo, &mut buf, b.frame.len());
        match (s.udp_sum, v.ip) {
            (UdpSum::Zero, IpVersion::V6) => {
                prop_assert_eq!(v.udp_checksum, UdpChecksum::Wrong, "RFC 8200: zero is not allowed over IPv6");
                prop_assert_eq!(out, Outcome::BadChecksum);
                return Ok(());
            }
            (UdpSum::Zero, IpVersion::V4) => prop_assert_eq!(v.udp_checksum, UdpChecksum::Absent),
            _ => prop_assert!(matches!(v.udp_checksum, UdpChecksum::PseudoHeaderOnly | UdpChecksum::Correct)),
        }
        prop_assert_eq!(out, Outcome::Reply(n));
        verify_reply(&b.frame, v, &buf[..n], &s.payload)?;
    }
}

/// `RespondOptions::default()` verifies checksums and writes TTL 64, DSCP 0, replies up to 1500 bytes of IP.
#[test]
fn respond_verifies_by_default() {
    assert_eq!(
        RespondOptions::default(),
        RespondOptions { verify_udp_checksum: true, reply_ttl: 64, reply_dscp: 0, mtu: 1500 }
    );
    assert_eq!(ReplyHeaders::default(), ReplyHeaders { ttl: 64, dscp: 0, ecn: Ecn::NotEct, mtu: 1500 });
    assert_eq!(RespondOptions::default().reply_headers(), ReplyHeaders::default());
}

// ---------------------------------------------------------------------------------------------------------------
// Reply headers: the server's own IP header, and the MTU
// ---------------------------------------------------------------------------------------------------------------

/// `s` as the server's reply header would have it, as a request: no IPv4 options, TTL / hop limit 64, TOS /
/// traffic class 0, ID 0 with DF, flow label 0, and no Ethernet padding (a reply has none).
fn normalise(s: &Spec) -> Spec {
    let ip = match &s.ip {
        Ip::V4 { src, dst, .. } => {
            Ip::V4 { src: *src, dst: *dst, ttl: DEFAULT_TTL, id: 0, dscp: 0, ecn: 0, df: true, options: vec![] }
        }
        Ip::V6 { src, dst, .. } => Ip::V6 { src: *src, dst: *dst, hop: DEFAULT_TTL, traffic_class: 0, flow: 0 },
    };
    Spec { ip, padding: vec![], ..s.clone() }
}

/// The view of `v`'s datagram once its IP header has no options (where a reply's UDP header and payload are).
fn normalised(v: &View) -> View {
    let udp_at = v.l3 + reply_ip_header_len(v.ip);
    View { udp_at, payload_offset: udp_at + udp::HEADER_LEN, ..v.clone() }
}

/// `s` with addresses, ports and MACs swapped and a correct UDP checksum: the request a reply to `s` would be.
fn swapped(s: &Spec) -> Spec {
    let mut r = Spec {
        dst_mac: s.src_mac,
        src_mac: s.dst_mac,
        sport: s.dport,
        dport: s.sport,
        udp_sum: UdpSum::Correct,
        ..s.clone()
    };
    match &mut r.ip {
        Ip::V4 { src, dst, .. } => std::mem::swap(src, dst),
        Ip::V6 { src, dst, .. } => std::mem::swap(src, dst),
    }
    r
}

/// IPv4 requests that always carry options (1..=10 words of anything, or a loose source route), with a TOS that
/// is CE-marked half the time.
fn arb_v4_with_options() -> impl Strategy<Value = Ip> {
    let options = prop_oneof![
        (1usize..=10).prop_flat_map(|words| vec(any::<u8>(), words * 4)),
        vec(any::<[u8; 4]>(), 1..=9).prop_map(|route| lsrr(&route)),
    ];
    (arb_v4(), options, prop_oneof![Just(3u8), 0u8..4]).prop_map(|(ip, opts, ce)| match ip {
        Ip::V4 { src, dst, ttl, id, dscp, df, .. } => Ip::V4 { src, dst, ttl, id, dscp, ecn: ce, df, options: opts },
        other => other,
    })
}

/// A loose source and record route option (RFC 791: type 131, length, pointer 4, the route) padded with
/// end-of-options to whole words.
fn lsrr(route: &[[u8; 4]]) -> Vec<u8> {
    let mut o = vec![0x83, (3 + 4 * route.len()) as u8, 4];
    for a in route {
        o.extend_from_slice(a);
    }
    o.resize(o.len().div_ceil(4) * 4, 0);
    o
}

/// Any reply headers a configuration allows (TTL 1..=255, DSCP 0..=63), checksums verified or not; the MTU out
/// of the way.
fn arb_reply_options() -> impl Strategy<Value = RespondOptions> {
    (1u8..=255, 0u8..64, any::<bool>()).prop_map(|(ttl, dscp, verify)| RespondOptions {
        verify_udp_checksum: verify,
        reply_ttl: ttl,
        reply_dscp: dscp,
        mtu: usize::MAX,
    })
}

proptest! {
    #![proptest_config(config(4096))]

    /// Whatever the request's IP header said (IPv4 with or without options, a loose source route, any TOS with
    /// CE, any TTL, ID and DF; IPv6 with any traffic class and flow label), the reply's is the server's own:
    /// IHL 5, the configured TTL and DSCP, ECN not-ECT, ID 0 + DF, flow label 0, valid checksums, the payload
    /// intact and every length consistent (all checked by `verify_reply_with`). `write_reply` used directly
    /// writes the same bytes.
    #[test]
    fn reply_headers_are_the_servers_own(
        s in arb_spec_with(prop_oneof![arb_v4(), arb_v4_with_options(), arb_v6()], arb_payload()),
        o in arb_reply_options(),
        room in 0usize..64,
    ) {
        let b = build(&s);
        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0x33);
        let out = respond(&mut Echo, &mut buf, b.frame.len(), NOW, o);
        if o.verify_udp_checksum && d.udp_checksum == UdpChecksum::Wrong {
            prop_assert_eq!(out, Outcome::BadChecksum);
            return Ok(());
        }
        let n = d.reply_len(d.payload_len);
        prop_assert_eq!(out, Outcome::Reply(n));
        prop_assert_eq!(n, b.end - (d.udp_at - d.l3 - reply_ip_header_len(d.ip)), "the reply is shorter by the options");
        verify_reply_with(&b.frame, d, &buf[..n], &s.payload, o.reply_headers())?;

        let mut direct = in_buffer(&b.frame, room, 0x33);
        let dg = Datagram::parse(&mut direct[..], b.frame.len()).unwrap().unwrap();
        prop_assert_eq!(dg.write_reply(d.payload_len, o.reply_headers()), Ok(n));
        prop_assert_eq!(&direct[..n], &buf[..n]);

        // With the default headers, the reply is byte for byte the request rebuilt with normalised headers,
        // addresses and ports swapped (etherparse builds it, independently of shunt).
        let mut direct = in_buffer(&b.frame, room, 0x33);
        let dg = Datagram::parse(&mut direct[..], b.frame.len()).unwrap().unwrap();
        prop_assert_eq!(dg.write_reply(d.payload_len, ReplyHeaders { mtu: usize::MAX, ..ReplyHeaders::default() }), Ok(n));
        prop_assert_eq!(&direct[..n], &build(&swapped(&normalise(&s))).frame[..]);
    }

    /// A reply whose IP packet is longer than the MTU is refused (`OverMtu`; `ReplyError::OverMtu` naming both
    /// lengths, the frame untouched); one that fits exactly, or less, is sent.
    #[test]
    fn replies_over_the_mtu_are_refused(
        s in arb_spec_with(prop_oneof![arb_v4(), arb_v4_with_options(), arb_v6()], arb_payload()),
        mtu in prop_oneof![28usize..1600, Just(1500)],
        room in 0usize..300,
        pick in any::<prop::sample::Index>(),
    ) {
        let b = build(&s);
        let d = &b.expected;
        let before = in_buffer(&b.frame, room, 0x44);
        let len = pick.index(before.len() - d.payload_offset + 1);
        let o = RespondOptions { mtu, ..UNVERIFIED };
        let mut buf = before.clone();
        let out = respond(&mut with(|_: &Request, p: &mut [u8], _| {
            p[..len].fill(0x5c);
            Verdict::Reply { len }
        }), &mut buf, b.frame.len(), NOW, o);
        let ip_len = d.reply_ip_len(len);
        let mut direct = before.clone();
        let dg = Datagram::parse(&mut direct[..], b.frame.len()).unwrap().unwrap();
        let written = dg.write_reply(len, o.reply_headers());
        if ip_len > mtu {
            prop_assert_eq!(out, Outcome::OverMtu);
            prop_assert_eq!(written, Err(ReplyError::OverMtu { ip_len, mtu }));
            prop_assert_eq!(&direct, &before, "a refused reply leaves the frame alone");
        } else {
            prop_assert_eq!(out, Outcome::Reply(d.reply_len(len)));
            prop_assert_eq!(written, Ok(d.reply_len(len)));
            verify_reply_with(&b.frame, d, &buf[..d.reply_len(len)], &vec![0x5c; len], o.reply_headers())?;
        }
    }
}

/// A request with a loose source route, TTL 3, CE-marked TOS (DSCP 46) and an ID, without DF: the reply has no
/// options, TTL 64, TOS 0, ID 0 with DF, and is exactly what a fresh option-less request would be, swapped. And
/// the MTU edges with the default options: a 1500-byte IP packet is sent, a 1501-byte one is not.
#[test]
fn table_source_routed_ce_request() {
    let route = [[198, 18, 0, 9], [198, 18, 0, 10]];
    let s = Spec {
        dst_mac: [0x02, 0, 0, 0, 0, 1],
        src_mac: [0x02, 0, 0, 0, 0, 2],
        tag: Tag::None,
        ip: Ip::V4 {
            src: [198, 18, 0, 2],
            dst: [198, 18, 0, 1],
            ttl: 3,
            id: 0x1234,
            dscp: 46,
            ecn: 3,
            df: false,
            options: lsrr(&route),
        },
        sport: 40000,
        dport: 9000,
        payload: b"route me".to_vec(),
        udp_sum: UdpSum::Correct,
        padding: vec![],
    };
    let b = build(&s);
    assert_eq!(b.frame[eth::HEADER_LEN + ipv4::VER_IHL], 0x48, "IHL 8: 12 bytes of options");
    assert_eq!(b.frame[eth::HEADER_LEN + ipv4::TOS], 0xbb, "DSCP 46, CE");
    let d = &b.expected;
    let mut buf = b.frame.clone();
    let out = respond(&mut Echo, &mut buf, b.frame.len(), NOW, RespondOptions::default());
    assert_eq!(out, Outcome::Reply(b.frame.len() - 12));
    let reply = &buf[..b.frame.len() - 12];
    verify_reply(&b.frame, d, reply, b"route me").unwrap();
    let expected = Spec {
        dst_mac: s.src_mac,
        src_mac: s.dst_mac,
        ip: Ip::V4 {
            src: [198, 18, 0, 1],
            dst: [198, 18, 0, 2],
            ttl: 64,
            id: 0,
            dscp: 0,
            ecn: 0,
            df: true,
            options: vec![],
        },
        sport: 9000,
        dport: 40000,
        ..s.clone()
    };
    assert_eq!(reply, &build(&expected).frame[..]);

    // MTU edges with the defaults (1500), IPv4 and IPv6.
    for (ip, max_payload) in [
        (
            Ip::V4 {
                src: [198, 18, 0, 2],
                dst: [198, 18, 0, 1],
                ttl: 9,
                id: 1,
                dscp: 0,
                ecn: 3,
                df: false,
                options: lsrr(&route),
            },
            1472,
        ),
        (Ip::V6 { src: [0x20; 16], dst: [0x21; 16], hop: 2, traffic_class: 0xff, flow: 0xfffff }, 1452),
    ] {
        for (len, fits) in [(max_payload, true), (max_payload + 1, false)] {
            let s = Spec { ip: ip.clone(), payload: vec![0x61; len], ..s.clone() };
            let b = build(&s);
            let mut buf = b.frame.clone();
            let out = respond(&mut Echo, &mut buf, b.frame.len(), NOW, RespondOptions::default());
            if fits {
                let n = b.expected.reply_len(len);
                assert_eq!(out, Outcome::Reply(n), "{ip:?} {len}");
                verify_reply(&b.frame, &b.expected, &buf[..n], &s.payload).unwrap();
            } else {
                assert_eq!(out, Outcome::OverMtu, "{ip:?} {len}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Truncations
// ---------------------------------------------------------------------------------------------------------------

/// The error `parse` must give for the first `cut` bytes of `b` (cut < b.end).
fn truncation_error(b: &Built, cut: usize) -> Malformed {
    let d = &b.expected;
    let available = cut.saturating_sub(d.l3);
    if cut < d.l3 {
        return Malformed::TruncatedEthernet;
    }
    match d.ip {
        IpVersion::V4 => {
            let header = d.udp_at - d.l3;
            if available < header {
                Malformed::TruncatedIpv4
            } else {
                Malformed::Ipv4TotalLength { total: b.end - d.l3, header, available }
            }
        }
        IpVersion::V6 => {
            if available < ipv6::HEADER_LEN {
                Malformed::TruncatedIpv6
            } else {
                Malformed::Ipv6PayloadLength { payload: b.end - d.udp_at, available: available - ipv6::HEADER_LEN }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every prefix of a valid frame: the precise Malformed variant while the cut is inside the datagram, the same
    /// view when it is inside the padding; `Datagram::parse` with that `len` over the whole buffer says the same,
    /// and respond agrees and never replies to a truncated datagram, even though the rest of the frame is still
    /// in the buffer after `len`.
    #[test]
    fn every_truncation_rejected(s in arb_spec()) {
        let b = build(&s);
        let mut buf = in_buffer(&b.frame, 16, 0);
        for cut in 0..=b.frame.len() {
            let r = parse(&b.frame[..cut]).map(|o| o.map(|d| view(&d)));
            if cut >= b.end {
                prop_assert_eq!(&r, &Ok(Some(b.expected.clone())), "cut {} inside the padding", cut);
            } else {
                prop_assert_eq!(&r, &Err(truncation_error(&b, cut)), "cut {}", cut);
            }
            buf[..b.frame.len()].copy_from_slice(&b.frame);
            let in_place = Datagram::parse(&buf[..], cut).map(|o| o.map(|d| view(&d)));
            prop_assert_eq!(&in_place, &r, "cut {} in the whole buffer", cut);
            let out = run(&mut Echo, &mut buf, cut);
            match r {
                Ok(Some(v)) => prop_assert_eq!(out, verified(&v, Outcome::Reply(v.reply_len(v.payload_len)))),
                Ok(None) => prop_assert_eq!(out, Outcome::NotOurs),
                Err(e) => prop_assert_eq!(out, Outcome::Malformed(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Corruptions
// ---------------------------------------------------------------------------------------------------------------

/// Parses `frame` and checks `respond` agrees (Malformed / NotOurs / BadChecksum / Reply, and Reply whatever the
/// checksum when verification is off).
fn parse_and_respond(frame: &[u8]) -> Result<Parsed, TestCaseError> {
    let r = parse_view(frame);
    let mut buf = in_buffer(frame, 64, 0);
    let out = run(&mut Echo, &mut buf, frame.len());
    match &r {
        Ok(Some(v)) => {
            check_view(frame, v)?;
            let n = v.reply_len(v.payload_len);
            prop_assert_eq!(out, verified(v, Outcome::Reply(n)));
            let mut buf = in_buffer(frame, 64, 0);
            prop_assert_eq!(run_unverified(&mut Echo, &mut buf, frame.len()), Outcome::Reply(n));
        }
        Ok(None) => prop_assert_eq!(out, Outcome::NotOurs),
        Err(e) => prop_assert_eq!(out, Outcome::Malformed(*e)),
    }
    etherparse_agrees(frame, &r)?;
    Ok(r)
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn ipv4_wrong_version(s in arb_spec_v4(), v in (0u8..16).prop_filter("not 4", |v| *v != 4)) {
        let mut b = build(&s);
        let l3 = b.expected.l3;
        b.frame[l3 + ipv4::VER_IHL] = v << 4 | (b.frame[l3 + ipv4::VER_IHL] & 0x0f);
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4Version(v)));
    }

    #[test]
    fn ipv4_ihl_below_5(s in arb_spec_v4(), ihl in 0u8..5) {
        let mut b = build(&s);
        let l3 = b.expected.l3;
        b.frame[l3 + ipv4::VER_IHL] = 0x40 | ihl;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4HeaderLength(usize::from(ihl) * 4)));
    }

    /// Total length beyond the frame (padding included), or below the header.
    #[test]
    fn ipv4_total_length_inconsistent(s in arb_spec_v4(), beyond in any::<bool>(), k in any::<u16>()) {
        let mut b = build(&s);
        let d = &b.expected;
        let l3 = d.l3;
        let header = d.udp_at - l3;
        let available = b.frame.len() - l3;
        let total = if beyond {
            available + 1 + usize::from(k) % (65535 - available)
        } else {
            usize::from(k) % header
        };
        set16(&mut b.frame, l3, ipv4::TOTAL_LEN, total as u16);
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4TotalLength { total, header, available }));
    }

    /// Any single bit flipped in the header (except version / IHL and total length, checked first).
    #[test]
    fn ipv4_header_checksum_one_bit(s in arb_spec_v4(), pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = build(&s);
        let d = &b.expected;
        let header = d.udp_at - d.l3;
        let choices: Vec<usize> =
            (0..header).filter(|i| *i != ipv4::VER_IHL && !ipv4::TOTAL_LEN.contains(i)).collect();
        let i = d.l3 + choices[pick.index(choices.len())];
        b.frame[i] ^= 1 << bit;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4Checksum));
    }

    /// IP payload shorter than a UDP header.
    #[test]
    fn ip_payload_below_udp_header(s in arb_spec(), short in 0usize..8) {
        let mut b = build(&s);
        let d = b.expected.clone();
        let l3 = d.l3;
        match d.ip {
            IpVersion::V4 => {
                let header = d.udp_at - l3;
                set16(&mut b.frame, l3, ipv4::TOTAL_LEN, (header + short) as u16);
                fix_ipv4_checksum(&mut b.frame, l3);
                prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::TruncatedUdp));
            }
            IpVersion::V6 => {
                set16(&mut b.frame, l3, ipv6::PAYLOAD_LEN, short as u16);
                let expected = if short == 0 {
                    Malformed::Ipv6PayloadLength { payload: 0, available: b.frame.len() - d.udp_at }
                } else {
                    Malformed::TruncatedUdp
                };
                prop_assert_eq!(parse_and_respond(&b.frame)?, Err(expected));
            }
        }
    }

    #[test]
    fn ipv6_payload_length_zero_or_beyond(s in arb_spec_v6(), k in any::<u16>(), zero in any::<bool>()) {
        let mut b = build(&s);
        let d = b.expected.clone();
        let available = b.frame.len() - d.udp_at;
        let payload = if zero { 0 } else { available + 1 + usize::from(k) % (65535 - available) };
        set16(&mut b.frame, d.l3, ipv6::PAYLOAD_LEN, payload as u16);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv6PayloadLength { payload, available }));
    }

    #[test]
    fn ipv6_wrong_version(s in arb_spec_v6(), v in (0u8..16).prop_filter("not 6", |v| *v != 6)) {
        let mut b = build(&s);
        let i = b.expected.l3 + ipv6::VER_TC_FLOW.start;
        b.frame[i] = v << 4 | (b.frame[i] & 0x0f);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv6Version(v)));
    }

    /// UDP length below 8, or beyond the IP payload (which, with padding, may be shorter than the frame).
    #[test]
    fn udp_length_inconsistent(s in arb_spec(), below in any::<bool>(), k in any::<u16>()) {
        let mut b = build(&s);
        let d = b.expected.clone();
        let ip_payload = b.end - d.udp_at;
        let len = if below { usize::from(k) % 8 } else { ip_payload + 1 + usize::from(k) % (65535 - ip_payload) };
        set16(&mut b.frame, d.udp_at, udp::LENGTH, len as u16);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::UdpLength { udp: len, ip_payload }));
    }

    /// A UDP length shorter than the IP payload is accepted: the payload is what the UDP length says, and so is
    /// the checksum (over the shorter segment, with the shorter length in the pseudo-header).
    #[test]
    fn udp_length_shorter_than_ip_payload(s in arb_spec(), shrink in any::<prop::sample::Index>(), fix in any::<bool>()) {
        let mut b = build(&s);
        let d = b.expected.clone();
        let new_payload = shrink.index(d.payload_len + 1);
        set16(&mut b.frame, d.udp_at, udp::LENGTH, (udp::HEADER_LEN + new_payload) as u16);
        if fix {
            fix_udp_checksum(&mut b.frame, &d);
        }
        let sum = classify_in(&b.frame, &d);
        if fix {
            prop_assert_eq!(sum, UdpChecksum::Correct);
        }
        let r = parse_and_respond(&b.frame)?;
        prop_assert_eq!(r, Ok(Some(d.with_payload_len(new_payload, sum))));
        let mut buf = b.frame.clone();
        let n = d.reply_len(new_payload);
        prop_assert_eq!(run_unverified(&mut Echo, &mut buf, b.frame.len()), Outcome::Reply(n));
        verify_reply(&b.frame, &d, &buf[..n], &s.payload[..new_payload])?;
    }

    #[test]
    fn ipv4_not_udp(s in arb_spec_v4(), proto in any::<u8>().prop_filter("not UDP", |p| *p != IPPROTO_UDP)) {
        let mut b = build(&s);
        let l3 = b.expected.l3;
        b.frame[l3 + ipv4::PROTOCOL] = proto;
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// MF set and/or a nonzero fragment offset: not ours. DF alone (and the reserved bit) is fine.
    #[test]
    fn ipv4_fragments(s in arb_spec_v4(), mf in any::<bool>(), offset in 0u16..0x2000, reserved in any::<bool>()) {
        let mut b = build(&s);
        let l3 = b.expected.l3;
        let df = get16(&b.frame, l3, ipv4::FLAGS_FRAG) & ipv4::DONT_FRAGMENT;
        let word = df | u16::from(mf) << 13 | offset | if reserved { 0x8000 } else { 0 };
        set16(&mut b.frame, l3, ipv4::FLAGS_FRAG, word);
        fix_ipv4_checksum(&mut b.frame, l3);
        let expected = if mf || offset != 0 { Ok(None) } else { Ok(Some(b.expected.clone())) };
        prop_assert_eq!(parse_and_respond(&b.frame)?, expected);
    }

    #[test]
    fn ipv6_not_udp(s in arb_spec_v6(), nh in prop_oneof![Just(0u8), Just(43), Just(44), Just(60), Just(6), Just(58), any::<u8>()]) {
        prop_assume!(nh != IPPROTO_UDP);
        let mut b = build(&s);
        b.frame[b.expected.l3 + ipv6::NEXT_HEADER] = nh;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// Any EtherType other than IPv4 / IPv6 / a VLAN tag (ARP first of all), tagged or not.
    #[test]
    fn other_ethertypes(s in arb_spec(), et in prop_oneof![Just(0x0806u16), Just(0x88cc), Just(0x9100), Just(0x0842), any::<u16>()]) {
        prop_assume!(![ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETHERTYPE_QINQ].contains(&et));
        let mut b = build(&s);
        let i = ethertype_at(b.expected.l3);
        b.frame[i..i + 2].copy_from_slice(&et.to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// IPv4 EtherType over an IPv6 packet and vice versa.
    #[test]
    fn ethertype_version_mismatch(s in arb_spec()) {
        let mut b = build(&s);
        let i = ethertype_at(b.expected.l3);
        let (et, err) = match b.expected.ip {
            IpVersion::V4 => (ETHERTYPE_IPV6, if b.frame.len() - b.expected.l3 < ipv6::HEADER_LEN {
                Malformed::TruncatedIpv6
            } else {
                Malformed::Ipv6Version(4)
            }),
            IpVersion::V6 => (ETHERTYPE_IPV4, Malformed::Ipv4Version(6)),
        };
        b.frame[i..i + 2].copy_from_slice(&et.to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(err));
    }

    /// Two VLAN tags (802.1ad + 802.1Q, or 802.1Q twice): not ours.
    #[test]
    fn double_vlan_tags(s in arb_spec(), outer in prop_oneof![Just(ETHERTYPE_QINQ), Just(ETHERTYPE_VLAN)],
                        inner in prop_oneof![Just(ETHERTYPE_QINQ), Just(ETHERTYPE_VLAN)], t1 in any::<u16>(), t2 in any::<u16>()) {
        let b = build(&Spec { tag: Tag::None, ..s.clone() });
        let mut f = b.frame[..eth::ETHERTYPE.start].to_vec();
        f.extend_from_slice(&outer.to_be_bytes());
        f.extend_from_slice(&vlan_header(t1, inner).to_bytes());
        f.extend_from_slice(&vlan_header(t2, ip_ethertype(&s.ip)).to_bytes());
        f.extend_from_slice(&b.frame[eth::HEADER_LEN..]);
        prop_assert_eq!(parse_and_respond(&f)?, Ok(None));
        // etherparse agrees it is a double-tagged frame.
        let p = PacketHeaders::from_ethernet_slice(&f).map_err(|e| TestCaseError::fail(format!("{e:?} {f:02x?}")))?;
        prop_assert!(matches!(p.vlan, Some(VlanHeader::Double(_))));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------------------------------------------

/// Runs arbitrary bytes through parse (every accessor, checked against the bytes and etherparse) and respond
/// (Echo and Sockperf, verified and not); respond replies only to what parse accepted, and then with a valid
/// reply. `len` is any received length, larger than the input included.
fn never_panics_on(data: &[u8], room: usize, len: usize) -> Result<(), TestCaseError> {
    let r = parse_view(data);
    if let Ok(Some(v)) = &r {
        check_view(data, v)?;
    }
    etherparse_agrees(data, &r)?;

    let before = in_buffer(data, room, 0xee);
    let mut buf = before.clone();
    match run(&mut Echo, &mut buf, data.len()) {
        Outcome::Reply(n) => {
            let Ok(Some(v)) = &r else { return Err(TestCaseError::fail(format!("Reply without Ok(Some): {r:?}"))) };
            prop_assert_ne!(v.udp_checksum, UdpChecksum::Wrong);
            verify_reply(data, v, &buf[..n], &v.payload)?;
        }
        Outcome::BadChecksum => {
            prop_assert!(matches!(&r, Ok(Some(v)) if v.udp_checksum == UdpChecksum::Wrong), "{:?}", r);
            prop_assert_eq!(&buf, &before);
        }
        Outcome::Malformed(e) => prop_assert_eq!(&r, &Err(e)),
        Outcome::NotOurs => prop_assert_eq!(&r, &Ok(None)),
        other => return Err(TestCaseError::fail(format!("Echo gave {other:?}"))),
    }
    let mut buf = before.clone();
    match run_unverified(&mut Echo, &mut buf, data.len()) {
        Outcome::Reply(n) => {
            let Ok(Some(v)) = &r else { return Err(TestCaseError::fail(format!("Reply without Ok(Some): {r:?}"))) };
            verify_reply(data, v, &buf[..n], &v.payload)?;
        }
        other => prop_assert!(!matches!(r, Ok(Some(_))), "unverified Echo gave {:?} for {:?}", other, r),
    }
    let mut buf = before.clone();
    let out = run(&mut Sockperf, &mut buf, data.len());
    if let Outcome::Reply(_) = out {
        prop_assert!(matches!(&r, Ok(Some(v)) if v.udp_checksum != UdpChecksum::Wrong));
    }
    // And with a received length that is not the whole input (clamped when larger).
    let mut buf = data.to_vec();
    let cut = len.min(data.len());
    let expected = parse_view(&data[..cut]);
    match (run_unverified(&mut Echo, &mut buf, len), &expected) {
        (Outcome::Reply(n), Ok(Some(v))) => prop_assert_eq!(n, v.reply_len(v.payload_len)),
        (Outcome::Malformed(e), Err(p)) => prop_assert_eq!(e, *p),
        (Outcome::NotOurs, Ok(None)) => {}
        (out, expected) => return Err(TestCaseError::fail(format!("len {len}: {out:?} but parse gave {expected:?}"))),
    }
    Ok(())
}

/// A received length: mostly within the input, sometimes anything.
fn pick_len(pick: usize, data_len: usize) -> usize {
    if pick.is_multiple_of(4) {
        pick
    } else {
        pick % (data_len + 1)
    }
}

/// A valid frame with a few bytes overwritten (lands near the interesting branches far more often than noise).
fn arb_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_spec_with(arb_ip(), vec(any::<u8>(), 0..=80)),
        vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(s, edits, fix)| {
            let b = build(&s);
            let l3 = b.expected.l3;
            let mut f = b.frame;
            for (at, v) in edits {
                let i = at.index(f.len());
                f[i] = v;
            }
            if fix && matches!(s.ip, Ip::V4 { .. }) && f.len() >= l3 + ipv4::MIN_HEADER_LEN {
                let ihl = usize::from(f[l3 + ipv4::VER_IHL] & 0x0f) * 4;
                if ihl >= ipv4::MIN_HEADER_LEN && l3 + ihl <= f.len() {
                    fix_ipv4_checksum(&mut f, l3);
                }
            }
            f
        })
}

proptest! {
    #![proptest_config(config(32768))]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..2000), room in 0usize..128, len in any::<usize>()) {
        never_panics_on(&data, room, pick_len(len, data.len()))?;
    }

    /// Arbitrary bytes after an IPv4 / IPv6 EtherType (optionally tagged), to get past the first check.
    #[test]
    fn arbitrary_ip_never_panics(
        tag in prop_oneof![Just(None), any::<u16>().prop_map(Some)],
        v6 in any::<bool>(),
        first in prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
        rest in vec(any::<u8>(), 0..200),
        room in 0usize..64,
        len in any::<usize>(),
    ) {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        let et = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
        if let Some(tci) = tag {
            f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&et.to_be_bytes());
        f.push(first);
        f.extend_from_slice(&rest);
        never_panics_on(&f, room, pick_len(len, f.len()))?;
    }

    #[test]
    fn mutated_frames_never_panic(f in arb_mutated(), room in 0usize..64, len in any::<usize>()) {
        never_panics_on(&f, room, pick_len(len, f.len()))?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers through respond
// ---------------------------------------------------------------------------------------------------------------

/// sockperf's message header: u64 sequence, u16 flags, u32 length (see `shunt::handler::Sockperf`).
const SOCKPERF_FLAGS: Range<usize> = 8..10;
const CLIENT: u16 = 1;
const PONG_REQUEST: u16 = 2;

fn arb_sockperf_payload() -> impl Strategy<Value = Vec<u8>> {
    let flags = prop_oneof![
        any::<u16>(),
        any::<u16>().prop_map(|f| f | CLIENT | PONG_REQUEST),
        Just(CLIENT),
        Just(PONG_REQUEST)
    ];
    prop_oneof![
        1 => vec(any::<u8>(), 0..SOCKPERF_HEADER_LEN),
        4 => (any::<u64>(), flags, vec(any::<u8>(), 0..200)).prop_map(|(seq, flags, rest)| {
            let mut m = seq.to_be_bytes().to_vec();
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&((SOCKPERF_HEADER_LEN + rest.len()) as u32).to_be_bytes());
            m.extend_from_slice(&rest);
            m
        }),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    /// Sockperf answers only CLIENT|PONG_REQUEST messages of at least 14 bytes, same length, CLIENT cleared (and
    /// only those whose checksum is not wrong, unless verification is off).
    #[test]
    fn sockperf_semantics(s in arb_spec_with(arb_ip(), arb_sockperf_payload()), room in 0usize..64) {
        let b = build(&s);
        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let mut out = run(&mut Sockperf, &mut buf, b.frame.len());
        if d.udp_checksum == UdpChecksum::Wrong {
            prop_assert_eq!(out, Outcome::BadChecksum);
            out = run_unverified(&mut Sockperf, &mut buf, b.frame.len());
        }
        let p = &s.payload;
        let asks = p.len() >= SOCKPERF_HEADER_LEN && {
            let f = be16(p, SOCKPERF_FLAGS.start);
            f & CLIENT != 0 && f & PONG_REQUEST != 0
        };
        if asks {
            let n = d.reply_len(p.len());
            prop_assert_eq!(out, Outcome::Reply(n));
            let mut expected = p.clone();
            let f = be16(p, SOCKPERF_FLAGS.start) & !CLIENT;
            expected[SOCKPERF_FLAGS].copy_from_slice(&f.to_be_bytes());
            verify_reply(&b.frame, d, &buf[..n], &expected)?;
            let rf = be16(&buf, d.reply_payload_offset() + SOCKPERF_FLAGS.start);
            prop_assert_eq!(rf & CLIENT, 0);
            prop_assert_ne!(rf & PONG_REQUEST, 0);
            // The reply (CLIENT cleared) looping back is not answered.
            prop_assert_eq!(run(&mut Sockperf, &mut buf, n), Outcome::HandlerDrop);
        } else {
            prop_assert_eq!(out, Outcome::HandlerDrop);
        }
    }

    /// The handler sees the request's addresses and header metadata, the time given to respond, the request's
    /// length, and the whole room after the payload.
    #[test]
    fn handler_sees_request(s in arb_spec(), room in 0usize..300) {
        let b = build(&s);
        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let mut seen = None;
        let out = run_unverified(&mut with(|r: &Request, p: &mut [u8], len: usize| {
            seen = Some((*r, p.len(), len, p[..len].to_vec()));
            Verdict::Drop
        }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::HandlerDrop);
        let (r, room_len, len, payload) = seen.unwrap();
        // With the frame's metadata (see `the_handler_sees_the_frames_metadata_and_the_arrival`), no arrival.
        let (tc, ttl, vlan_id) = spec_metadata(&s);
        let plain = Request::new(d.src, d.dst, NOW).with_traffic_class(tc).with_ttl(ttl);
        prop_assert_eq!(r, Request { vlan_id, ..plain });
        prop_assert_eq!(r.now, NOW);
        prop_assert_eq!(len, s.payload.len());
        prop_assert_eq!(payload, s.payload.clone());
        prop_assert_eq!(room_len, max_reply_payload_in(&b.frame, room));
        prop_assert_eq!(room_len, buf.len() - d.payload_offset);
    }

    /// A handler asking for more than the room gets ReplyTooLarge (any amount, up to usize::MAX); asking for
    /// exactly the room works.
    #[test]
    fn too_large_replies(s in arb_spec(), room in 0usize..128, extra in prop_oneof![1usize..10, Just(usize::MAX / 2), Just(usize::MAX)]) {
        let b = build(&s);
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = run_unverified(&mut with(|_: &Request, p: &mut [u8], _| Verdict::Reply { len: p.len().saturating_add(extra) }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::ReplyTooLarge);

        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = run_unverified(&mut with(|_: &Request, p: &mut [u8], _| {
            for (i, x) in p.iter_mut().enumerate() {
                *x = i as u8 ^ 0xa5;
            }
            Verdict::Reply { len: p.len() }
        }), &mut buf, b.frame.len());
        let room_len = buf.len() - d.payload_offset;
        prop_assert_eq!(out, Outcome::Reply(d.reply_len(room_len)));
        let payload: Vec<u8> = (0..room_len).map(|i| i as u8 ^ 0xa5).collect();
        verify_reply(&b.frame, d, &buf[..d.reply_len(room_len)], &payload)?;
    }

    /// Replies longer or shorter than the request (within the room) get consistent lengths and checksums.
    #[test]
    fn longer_and_shorter_replies(s in arb_spec(), room in 0usize..256, pick in any::<prop::sample::Index>(), fill in any::<u8>()) {
        let b = build(&s);
        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0x77);
        let max = buf.len() - d.payload_offset;
        let len = pick.index(max + 1);
        let out = run_unverified(&mut with(|_: &Request, p: &mut [u8], req_len| {
            // Keep the request's bytes that fit and write a pattern after them.
            for x in p[req_len.min(len)..len].iter_mut() {
                *x = fill;
            }
            Verdict::Reply { len }
        }), &mut buf, b.frame.len());
        let n = d.reply_len(len);
        prop_assert_eq!(out, Outcome::Reply(n));
        let mut expected = s.payload.clone();
        expected.resize(len, fill);
        verify_reply(&b.frame, d, &buf[..n], &expected)?;
    }
}

proptest! {
    #![proptest_config(config(2048))]

    /// No amplification: with the default bound, a reply longer than the request is refused
    /// (`Amplification`, before the room is even considered), one as long or shorter is sent.
    #[test]
    fn replies_longer_than_the_request_are_refused_by_default(s in arb_spec(), room in 0usize..300, pick in any::<usize>()) {
        let b = build(&s);
        let d = &b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let max = buf.len() - d.payload_offset;
        // Anything up to the room, or beyond it.
        let len = if pick.is_multiple_of(8) { pick } else { pick % (max + 1) };
        let out = run_unverified(&mut Bounded(|_: &Request, p: &mut [u8], _| {
            let n = len.min(p.len());
            p[..n].fill(0x42);
            Verdict::Reply { len }
        }), &mut buf, b.frame.len());
        if len > d.payload_len {
            prop_assert_eq!(out, Outcome::Amplification);
        } else {
            prop_assert_eq!(out, Outcome::Reply(d.reply_len(len)));
            verify_reply(&b.frame, d, &buf[..d.reply_len(len)], &vec![0x42; len])?;
        }
        // Echo, Sockperf and a Box<dyn Handler> keep the default bound and never exceed it.
        let mut boxed: Box<dyn Handler> = Box::new(Echo);
        prop_assert_eq!(boxed.budget(d.payload_len), Budget::echo(d.payload_len));
        prop_assert_eq!(Echo.budget(d.payload_len), Budget::echo(d.payload_len));
        prop_assert_eq!(Sockperf.budget(d.payload_len), Budget::echo(d.payload_len));
        let mut buf = in_buffer(&b.frame, room, 0);
        prop_assert_eq!(run_unverified(&mut boxed, &mut buf, b.frame.len()), Outcome::Reply(d.reply_len(d.payload_len)));
    }
}

/// The IP length fields bound the reply, not only the buffer: with a 70 000-byte buffer, an IPv4 reply may carry
/// 65535 - 20 - 8 bytes (total length 65535: the reply has no options, whatever the request had) and an IPv6 one
/// 65527 (payload length 65535), and no more.
#[test]
fn replies_up_to_the_ip_length_limits() {
    let specs = [
        (
            Tag::None,
            Ip::V4 {
                src: [10, 0, 0, 1],
                dst: [10, 0, 0, 2],
                ttl: 3,
                id: 7,
                dscp: 46,
                ecn: 1,
                df: true,
                options: vec![],
            },
        ),
        (
            Tag::Dot1q(0x2064),
            Ip::V4 { src: [1; 4], dst: [2; 4], ttl: 64, id: 0, dscp: 0, ecn: 0, df: false, options: vec![1; 40] },
        ),
        (Tag::None, Ip::V6 { src: [0xfe; 16], dst: [0x20; 16], hop: 1, traffic_class: 0xb8, flow: 0xabcde }),
        (Tag::Dot1ad(0xffff), Ip::V6 { src: [0; 16], dst: [0xff; 16], hop: 255, traffic_class: 0, flow: 0 }),
    ];
    for (tag, ip) in specs {
        let s = Spec {
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            src_mac: [0x02, 0, 0, 0, 0, 2],
            tag,
            ip: ip.clone(),
            sport: 4000,
            dport: 11111,
            payload: b"ping".to_vec(),
            udp_sum: UdpSum::Correct,
            padding: vec![],
        };
        let b = build(&s);
        let d = &b.expected;
        let limit = match ip {
            Ip::V4 { .. } => 65535 - ipv4::MIN_HEADER_LEN - udp::HEADER_LEN,
            Ip::V6 { .. } => 65535 - udp::HEADER_LEN,
        };
        let mut buf = in_buffer(&b.frame, 70_000, 0);
        assert_eq!(max_reply_payload_in(&b.frame, 70_000), limit);
        assert_eq!(Datagram::parse(&mut buf[..], b.frame.len()).unwrap().unwrap().payload_room_mut().len(), limit);
        let out = run(
            &mut with(|_: &Request, p: &mut [u8], _| {
                assert_eq!(p.len(), limit);
                for (i, x) in p.iter_mut().enumerate() {
                    *x = (i * 7) as u8;
                }
                Verdict::Reply { len: p.len() }
            }),
            &mut buf,
            b.frame.len(),
        );
        let n = d.reply_len(limit);
        assert_eq!(out, Outcome::Reply(n));
        let payload: Vec<u8> = (0..limit).map(|i| (i * 7) as u8).collect();
        verify_reply(&b.frame, d, &buf[..n], &payload).unwrap();
        match ip {
            Ip::V4 { .. } => assert_eq!(get16(&buf, d.l3, ipv4::TOTAL_LEN), 65535),
            Ip::V6 { .. } => assert_eq!(get16(&buf, d.l3, ipv6::PAYLOAD_LEN), 65535),
        }
        let mut buf = in_buffer(&b.frame, 70_000, 0);
        let out =
            run(&mut with(|_: &Request, p: &mut [u8], _| Verdict::Reply { len: p.len() + 1 }), &mut buf, b.frame.len());
        assert_eq!(out, Outcome::ReplyTooLarge);
        let mut f = in_buffer(&b.frame, 70_000, 0);
        let dg = Datagram::parse(&mut f[..], b.frame.len()).unwrap().unwrap();
        assert_eq!(
            dg.write_reply(limit + 1, VERIFIED.reply_headers()),
            Err(ReplyError::TooLarge { payload: limit + 1, max: limit })
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// write_request
// ---------------------------------------------------------------------------------------------------------------

fn arb_v4_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port))
}

fn arb_v6_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port))
}

/// Any flow: both IPv4, both IPv6, or (sometimes) mixed versions.
fn arb_flow() -> impl Strategy<Value = FlowSpec> {
    let addrs = prop_oneof![
        4 => (arb_v4_addr(), arb_v4_addr()),
        4 => (arb_v6_addr(), arb_v6_addr()),
        1 => (arb_v4_addr(), arb_v6_addr()),
        1 => (arb_v6_addr(), arb_v4_addr()),
    ];
    (any::<[u8; 6]>(), any::<[u8; 6]>(), prop_oneof![Just(None), any::<u16>().prop_map(Some)], addrs)
        .prop_map(|(src_mac, dst_mac, vlan_tci, (src, dst))| FlowSpec { src_mac, dst_mac, vlan_tci, src, dst })
}

/// What `write_request` must return, worked out from the header sizes and the IP length fields.
fn expected_build(spec: &FlowSpec, buf_len: usize, payload_len: usize) -> Result<usize, BuildError> {
    if spec.src.is_ipv4() != spec.dst.is_ipv4() {
        return Err(BuildError::MixedVersions);
    }
    let l3 = eth::HEADER_LEN + if spec.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 };
    let ip_header = if spec.src.is_ipv4() { ipv4::MIN_HEADER_LEN } else { ipv6::HEADER_LEN };
    let off = l3 + ip_header + udp::HEADER_LEN;
    if buf_len < off {
        return Err(BuildError::BufferTooSmall { need: off, have: buf_len });
    }
    // IPv4's total length counts its header too; IPv6's payload length only what follows it.
    let by_header = (if spec.src.is_ipv4() { 65535 - ipv4::MIN_HEADER_LEN } else { 65535 }) - udp::HEADER_LEN;
    let max = (buf_len - off).min(by_header);
    if payload_len > max {
        return Err(BuildError::TooLarge { payload: payload_len, max });
    }
    Ok(off + payload_len)
}

proptest! {
    #![proptest_config(config(4096))]

    /// write_request never panics, whatever the buffer length (0 included), the payload length (usize::MAX
    /// included) and the flow; it returns exactly the documented result, writes nothing when it fails and
    /// nothing outside the headers when it succeeds; what it builds parses back (every accessor) with a
    /// Correct UDP checksum, reads the same in etherparse, and is answered by Echo.
    #[test]
    fn write_request_builds_what_parses_back(
        spec in arb_flow(),
        buf_len in prop_oneof![4 => 0usize..100, 4 => 0usize..1600, 1 => 65_500usize..65_600],
        payload_len in prop_oneof![4 => 0usize..1600, 1 => 65_400usize..65_600, 1 => any::<usize>()],
        fill in any::<u8>(),
    ) {
        let before: Vec<u8> = (0..buf_len).map(|i| fill ^ (i as u8)).collect();
        let mut frame = before.clone();
        let r = write_request(&mut frame, &spec, payload_len);
        prop_assert_eq!(r, expected_build(&spec, buf_len, payload_len));
        let Ok(n) = r else {
            prop_assert_eq!(&frame, &before, "a failed build wrote to the buffer");
            return Ok(());
        };
        let off = spec.payload_offset();
        prop_assert_eq!(n, off + payload_len);
        prop_assert_eq!(&frame[off..], &before[off..], "payload and the rest of the buffer untouched");

        let v = parse_view(&frame[..n]).unwrap().unwrap();
        prop_assert_eq!(check_view(&frame[..n], &v)?, n);
        prop_assert_eq!(v.ip, if spec.src.is_ipv4() { IpVersion::V4 } else { IpVersion::V6 });
        prop_assert_eq!(v.vlan_tci, spec.vlan_tci);
        prop_assert_eq!(v.src, spec.src);
        prop_assert_eq!(v.dst, spec.dst);
        prop_assert_eq!(v.payload_offset, off);
        prop_assert_eq!(v.payload_len, payload_len);
        prop_assert_eq!(v.udp_checksum, UdpChecksum::Correct);
        prop_assert_eq!(&frame[eth::DST], &spec.dst_mac[..]);
        prop_assert_eq!(&frame[eth::SRC], &spec.src_mac[..]);
        if spec.vlan_tci.is_some() {
            prop_assert_eq!(get16(&frame, 0, eth::ETHERTYPE), ETHERTYPE_VLAN);
        }
        match v.ip {
            IpVersion::V4 => {
                prop_assert_eq!(frame[v.l3 + ipv4::VER_IHL], 0x45);
                prop_assert_eq!(frame[v.l3 + ipv4::TTL], DEFAULT_TTL);
                prop_assert_eq!(get16(&frame, v.l3, ipv4::FLAGS_FRAG), ipv4::DONT_FRAGMENT);
                prop_assert_eq!(checksum::internet(&frame[v.l3..v.udp_at]), 0);
            }
            IpVersion::V6 => prop_assert_eq!(frame[v.l3 + ipv6::HOP_LIMIT], DEFAULT_TTL),
        }
        etherparse_agrees(&frame[..n], &Ok(Some(v.clone())))?;
        let p = PacketHeaders::from_ethernet_slice(&frame[..n]).unwrap();
        let Some(TransportHeader::Udp(u)) = &p.transport else { return Err(TestCaseError::fail("etherparse: no UDP")) };
        let payload = &frame[off..n];
        match &p.net {
            Some(NetHeaders::Ipv4(h, _)) => {
                prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
                prop_assert_eq!(u.checksum, u.calc_checksum_ipv4(h, payload).unwrap());
            }
            Some(NetHeaders::Ipv6(h, _)) => prop_assert_eq!(u.checksum, u.calc_checksum_ipv6(h, payload).unwrap()),
            other => return Err(TestCaseError::fail(format!("etherparse net {other:?}"))),
        }
        // The server answers it.
        let request = frame[..n].to_vec();
        prop_assert_eq!(run(&mut Echo, &mut frame, n), Outcome::Reply(n));
        verify_reply(&request, &v, &frame[..n], &request[off..n])?;
    }
}

fn arb_ecn() -> impl Strategy<Value = Ecn> {
    prop_oneof![Just(Ecn::NotEct), Just(Ecn::Ect0), Just(Ecn::Ect1), Just(Ecn::Ce)]
}

proptest! {
    #![proptest_config(config(4096))]

    /// write_datagram (a handler's send) never panics; it returns write_request's result with the IP header
    /// from `headers` (TTL / hop limit, DSCP and ECN in the TOS / traffic class, flow label 0, DF), or
    /// OverMtu (writing nothing) when the IP packet would exceed `headers.mtu`; what it builds parses back
    /// with a Correct UDP checksum and the request's metadata.
    #[test]
    fn write_datagram_marks_what_it_builds_and_keeps_to_the_mtu(
        spec in arb_flow(),
        buf_len in prop_oneof![4 => 0usize..100, 4 => 0usize..1600],
        payload_len in prop_oneof![4 => 0usize..1600, 1 => any::<usize>()],
        ttl in 1u8..=255,
        dscp in any::<u8>(),
        ecn in arb_ecn(),
        mtu in prop_oneof![3 => 0usize..1600, 1 => Just(usize::MAX)],
        fill in any::<u8>(),
    ) {
        let headers = ReplyHeaders { ttl, dscp, ecn, mtu };
        let before: Vec<u8> = (0..buf_len).map(|i| fill ^ (i as u8)).collect();
        let mut frame = before.clone();
        let r = write_datagram(&mut frame, &spec, payload_len, headers);
        let expected = expected_build(&spec, buf_len, payload_len).and_then(|n| {
            let l3 = eth::HEADER_LEN + if spec.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 };
            let ip_len = n - l3;
            if ip_len > mtu { Err(BuildError::OverMtu { ip_len, mtu }) } else { Ok(n) }
        });
        prop_assert_eq!(r, expected);
        let Ok(n) = r else {
            prop_assert_eq!(&frame, &before, "a failed build wrote to the buffer");
            return Ok(());
        };
        let d = parse(&frame[..n]).unwrap().unwrap();
        prop_assert_eq!((d.src(), d.dst(), d.payload_len()), (spec.src, spec.dst, payload_len));
        prop_assert_eq!(d.udp_checksum(), UdpChecksum::Correct);
        prop_assert_eq!(d.ttl(), ttl);
        prop_assert_eq!(d.traffic_class(), ((dscp & 0x3f) << 2) | ecn.bits());
        let r = Request::new(spec.src, spec.dst, NOW).with_traffic_class(d.traffic_class());
        prop_assert_eq!((r.dscp, r.ecn), (Some(dscp & 0x3f), Some(ecn)));
        let l3 = eth::HEADER_LEN + if spec.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 };
        if spec.src.is_ipv4() {
            prop_assert_eq!(get16(&frame, l3, ipv4::FLAGS_FRAG), ipv4::DONT_FRAGMENT);
            prop_assert_eq!(checksum::internet(&frame[l3..l3 + ipv4::MIN_HEADER_LEN]), 0);
        } else {
            prop_assert_eq!(get16(&frame, l3, 2..4) & 0x0fff, 0, "flow label 0 (low bits)");
            prop_assert_eq!(frame[l3 + 1] & 0x0f, 0, "flow label 0 (high bits)");
        }
        // write_request is write_datagram with the defaults and no MTU.
        let mut again = before.clone();
        let plain = write_request(&mut again, &spec, payload_len);
        let mut defaults = before.clone();
        let with_defaults =
            write_datagram(&mut defaults, &spec, payload_len, ReplyHeaders { mtu: usize::MAX, ..ReplyHeaders::default() });
        prop_assert_eq!(plain, with_defaults);
        prop_assert_eq!(again, defaults);
    }
}

/// Buffers shorter than the headers, for each header layout: an error naming both lengths, never a panic.
#[test]
fn write_request_buffers_shorter_than_the_headers() {
    for (src, dst) in [("198.18.0.2:4000", "198.18.0.1:9000"), ("[2001:2::2]:4000", "[2001:2::1]:9000")] {
        for vlan_tci in [None, Some(7)] {
            let spec = FlowSpec {
                src_mac: [2, 0, 0, 0, 0, 1],
                dst_mac: [2, 0, 0, 0, 0, 2],
                vlan_tci,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
            };
            let need = spec.payload_offset();
            for len in 0..need {
                for payload_len in [0, 1, usize::MAX] {
                    let mut frame = vec![0xaa; len];
                    assert_eq!(
                        write_request(&mut frame, &spec, payload_len),
                        Err(BuildError::BufferTooSmall { need, have: len })
                    );
                    assert!(frame.iter().all(|x| *x == 0xaa));
                }
            }
            let mut frame = vec![0; need];
            assert_eq!(write_request(&mut frame, &spec, 0), Ok(need));
            assert!(
                matches!(parse(&frame), Ok(Some(d)) if d.payload_len() == 0 && d.udp_checksum() == UdpChecksum::Correct)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Checksum functions against naive references
// ---------------------------------------------------------------------------------------------------------------

/// A UDP segment (header with a zero checksum field, then `payload`).
fn segment_of(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let h = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).unwrap();
    let mut segment = h.to_bytes().to_vec();
    segment.extend_from_slice(payload);
    segment
}

proptest! {
    #![proptest_config(config(16384))]

    #[test]
    fn add_fold_match_naive(data in vec(any::<u8>(), 0..600), start in any::<u32>()) {
        prop_assert_eq!(checksum::fold(checksum::add(0, &data)), naive_sum(&data));
        prop_assert_eq!(checksum::internet(&data), !naive_sum(&data));
        prop_assert_eq!(checksum::internet(&data), !checksum::fold(checksum::add(0, &data)));
        // A running sum carried in: same as prefixing its folded value as a word.
        let mut with_start = (start as u16).to_be_bytes().to_vec();
        with_start.extend_from_slice(&(((start >> 16) as u16).to_be_bytes()));
        with_start.extend_from_slice(&data);
        prop_assert_eq!(checksum::fold(checksum::add(u64::from(start), &data)), naive_sum(&with_start));
    }

    /// Any running sum, up to u64::MAX, can be carried in without overflow: the result is congruent to carrying in
    /// its folded value.
    #[test]
    fn add_carries_any_running_sum(data in vec(any::<u8>(), 0..600), start in any::<u64>()) {
        let folded = checksum::fold(start);
        prop_assert_eq!(checksum::fold(checksum::add(start, &data)), checksum::fold(checksum::add(u64::from(folded), &data)));
        let mut with_start = folded.to_be_bytes().to_vec();
        with_start.extend_from_slice(&data);
        if start != 0 {
            prop_assert_eq!(checksum::fold(checksum::add(start, &data)), naive_sum(&with_start));
        }
    }

    /// Summing two parts where the first has even length equals summing the whole.
    #[test]
    fn add_split_at_even_point(data in vec(any::<u8>(), 0..600), at in any::<prop::sample::Index>()) {
        let split = at.index(data.len() + 1) & !1;
        let (a, b) = data.split_at(split);
        let whole = checksum::fold(checksum::add(0, &data));
        prop_assert_eq!(checksum::fold(checksum::add(checksum::add(0, a), b)), whole);
        // Folding the first half before carrying on changes nothing either.
        prop_assert_eq!(checksum::fold(checksum::add(u64::from(checksum::fold(checksum::add(0, a))), b)), whole);
    }

    /// Chaining `add` over any number of pieces cut at even offsets equals one `add` over the whole.
    #[test]
    fn add_chains_over_even_splits(data in vec(any::<u8>(), 0..1200), cuts in vec(any::<prop::sample::Index>(), 0..8), start in any::<u32>()) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1) & !1).collect();
        points.push(0);
        points.push(data.len());
        points.sort_unstable();
        let mut sum = u64::from(start);
        for w in points.windows(2) {
            sum = checksum::add(sum, &data[w[0]..w[1]]);
        }
        prop_assert_eq!(checksum::fold(sum), checksum::fold(checksum::add(u64::from(start), &data)));
    }

    /// Large running sums (many words) still fold correctly.
    #[test]
    fn fold_large_sums(sum in any::<u64>()) {
        let mut s = sum;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        let f = checksum::fold(sum);
        prop_assert_eq!(u64::from(f), s);
        // Congruent modulo 0xffff, and zero only for zero.
        prop_assert_eq!(u64::from(f) % 0xffff, sum % 0xffff);
        prop_assert_eq!(f == 0, sum == 0);
    }

    /// The checksum written into data makes it verify.
    #[test]
    fn internet_checksum_verifies(mut data in vec(any::<u8>(), 2..100), at in any::<prop::sample::Index>()) {
        let i = at.index(data.len() / 2) * 2;
        data[i] = 0;
        data[i + 1] = 0;
        let c = checksum::internet(&data);
        data[i..i + 2].copy_from_slice(&c.to_be_bytes());
        prop_assert_eq!(checksum::internet(&data), 0);
        prop_assert_eq!(naive_sum(&data), 0xffff);
    }

    /// The pseudo-header sums are the sums of the pseudo-headers built byte by byte (RFC 768, RFC 8200 §8.1).
    #[test]
    fn pseudo_headers_match_naive(
        src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(), len4 in 0usize..=65535,
        src6 in any::<[u8; 16]>(), dst6 in any::<[u8; 16]>(), len6 in any::<u32>(),
    ) {
        prop_assert_eq!(checksum::fold(checksum::pseudo_header_v4(src4, dst4, len4)), naive_sum(&pseudo_header(&src4, &dst4, len4)));
        let len6 = len6 as usize;
        prop_assert_eq!(checksum::fold(checksum::pseudo_header_v6(&src6, &dst6, len6)), naive_sum(&pseudo_header(&src6, &dst6, len6)));
    }

    /// udp_ipv4 / udp_ipv6 match the naive computation and etherparse's, are never 0, and make the segment
    /// verify: the pseudo-header sum carried over the finished segment folds to 0xffff.
    #[test]
    fn udp_checksums_match_naive_and_etherparse(
        src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(),
        src6 in any::<[u8; 16]>(), dst6 in any::<[u8; 16]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        payload in vec(any::<u8>(), 0..600),
    ) {
        let h = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).unwrap();
        let mut segment = segment_of(sport, dport, &payload);
        let sum_at = udp::CHECKSUM;

        let c4 = checksum::udp_ipv4(src4, dst4, &segment);
        prop_assert_eq!(c4, naive_udp_checksum(&src4, &dst4, &segment));
        prop_assert_eq!(c4, h.calc_checksum_ipv4_raw(src4, dst4, &payload).unwrap());
        prop_assert_ne!(c4, 0);
        let pseudo4 = checksum::pseudo_header_v4(src4, dst4, segment.len());
        let unfinished = !checksum::fold(checksum::add(pseudo4, &segment));
        prop_assert_eq!(c4, if unfinished == 0 { 0xffff } else { unfinished });
        segment[sum_at.clone()].copy_from_slice(&c4.to_be_bytes());
        prop_assert!(udp_verifies(&src4, &dst4, &segment));
        prop_assert_eq!(checksum::fold(checksum::add(pseudo4, &segment)), 0xffff);
        prop_assert_eq!(naive_classify(true, &src4, &dst4, &segment), UdpChecksum::Correct);

        segment[sum_at.clone()].copy_from_slice(&[0, 0]);
        let c6 = checksum::udp_ipv6(&src6, &dst6, &segment);
        prop_assert_eq!(c6, naive_udp_checksum(&src6, &dst6, &segment));
        prop_assert_eq!(c6, h.calc_checksum_ipv6_raw(src6, dst6, &payload).unwrap());
        prop_assert_ne!(c6, 0);
        let pseudo6 = checksum::pseudo_header_v6(&src6, &dst6, segment.len());
        segment[sum_at].copy_from_slice(&c6.to_be_bytes());
        prop_assert!(udp_verifies(&src6, &dst6, &segment));
        prop_assert_eq!(checksum::fold(checksum::add(pseudo6, &segment)), 0xffff);
        prop_assert_eq!(naive_classify(false, &src6, &dst6, &segment), UdpChecksum::Correct);
    }
}

/// A computed UDP checksum of zero goes out as 0xffff: find a payload whose checksum would be zero and check.
#[test]
fn zero_udp_checksum_sent_as_ffff() {
    for (src, dst) in [([192, 0, 2, 1], [198, 51, 100, 7]), ([0, 0, 0, 0], [0, 0, 0, 0])] {
        let mut segment = vec![0x12, 0x34, 0x56, 0x78, 0, 10, 0, 0, 0, 0];
        // Choose the last payload word so that the whole sum is 0xffff, i.e. the checksum !0xffff == 0.
        let partial = naive_sum(&[&pseudo_header(&src, &dst, 10)[..], &segment[..]].concat());
        let word = 0xffffu16.wrapping_sub(partial); // partial + word == 0xffff (no carry: partial <= 0xffff)
        segment[8..10].copy_from_slice(&word.to_be_bytes());
        assert_eq!(naive_sum(&[&pseudo_header(&src, &dst, 10)[..], &segment[..]].concat()), 0xffff);
        assert_eq!(checksum::udp_ipv4(src, dst, &segment), 0xffff);
        segment[udp::CHECKSUM].copy_from_slice(&0xffffu16.to_be_bytes());
        assert!(udp_verifies(&src, &dst, &segment));
    }
    let (src, dst) = ([0x20; 16], [0x01; 16]);
    let mut segment = vec![0xab, 0xcd, 0x00, 0x35, 0, 12, 0, 0, 0, 0, 0, 0];
    let partial = naive_sum(&[&pseudo_header(&src, &dst, 12)[..], &segment[..]].concat());
    segment[10..12].copy_from_slice(&0xffffu16.wrapping_sub(partial).to_be_bytes());
    assert_eq!(checksum::udp_ipv6(&src, &dst, &segment), 0xffff);
}

// ---------------------------------------------------------------------------------------------------------------
// Table tests on fixed frames
// ---------------------------------------------------------------------------------------------------------------

/// Where the wire frame's IPv4 header and UDP header start.
const WIRE_L3: usize = eth::HEADER_LEN;
const WIRE_UDP: usize = WIRE_L3 + ipv4::MIN_HEADER_LEN;

/// An IPv4/UDP frame around a header captured on the wire (192.168.0.1 → 192.168.0.199, checksum 0xb861,
/// total length 115), no UDP checksum, with 8 bytes of Ethernet padding.
fn wire_frame() -> Vec<u8> {
    let mut f = vec![0x00, 0x1b, 0x21, 0x3c, 0x4d, 0x5e, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ]);
    f.extend_from_slice(&[0x9c, 0x40, 0x2b, 0x67, 0x00, 0x5f, 0x00, 0x00]); // 40000 → 11111, length 95
    f.extend((0..87u8).map(|i| i.wrapping_mul(3)));
    f.extend_from_slice(&[0; 8]);
    f
}

/// What `parse` says of [`wire_frame`].
fn wire_view() -> View {
    View {
        ip: IpVersion::V4,
        vlan_tci: None,
        l3: WIRE_L3,
        udp_at: WIRE_UDP,
        payload_offset: WIRE_UDP + udp::HEADER_LEN,
        payload_len: 87,
        src: "192.168.0.1:40000".parse().unwrap(),
        dst: "192.168.0.199:11111".parse().unwrap(),
        payload: (0..87u8).map(|i| i.wrapping_mul(3)).collect(),
        udp_checksum: UdpChecksum::Absent,
    }
}

#[test]
fn table_wire_frame() {
    let f = wire_frame();
    let d = parse_view(&f).unwrap().unwrap();
    assert_eq!(d, wire_view());
    assert_eq!(check_view(&f, &d).unwrap(), WIRE_L3 + 115);
    let mut buf = f.clone();
    let n = WIRE_L3 + 115;
    assert_eq!(run(&mut Echo, &mut buf, f.len()), Outcome::Reply(n));
    verify_reply(&f, &d, &buf[..n], &d.payload).unwrap();
    // TTL 64 was already there, ID 0, DF: only the addresses swap, so the header checksum is unchanged.
    assert_eq!(&buf[at(WIRE_L3, ipv4::CHECKSUM)], &[0xb8, 0x61]);
}

#[test]
fn table_corruptions_of_wire_frame() {
    type Edit = fn(&mut Vec<u8>);
    /// `Ok(Some(checksum))`: a datagram whose UDP checksum is classified so.
    type Expected = Result<Option<UdpChecksum>, Malformed>;
    fn total_len(f: &mut [u8], total: u16) {
        set16(f, WIRE_L3, ipv4::TOTAL_LEN, total);
        fix_ipv4_checksum(f, WIRE_L3);
    }
    let cases: &[(&str, Edit, Expected)] = &[
        ("unchanged", |_| {}, Ok(Some(UdpChecksum::Absent))),
        ("empty", |f| f.clear(), Err(Malformed::TruncatedEthernet)),
        ("13 bytes", |f| f.truncate(eth::HEADER_LEN - 1), Err(Malformed::TruncatedEthernet)),
        ("ethernet only", |f| f.truncate(eth::HEADER_LEN), Err(Malformed::TruncatedIpv4)),
        (
            "VLAN tag cut",
            |f| {
                f[eth::ETHERTYPE].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                f.truncate(eth::HEADER_LEN + vlan::TAG_LEN - 1)
            },
            Err(Malformed::TruncatedEthernet),
        ),
        ("ARP", |f| f[eth::ETHERTYPE].copy_from_slice(&[0x08, 0x06]), Ok(None)),
        (
            "version 5",
            |f| {
                f[WIRE_L3 + ipv4::VER_IHL] = 0x55;
                fix_ipv4_checksum(f, WIRE_L3)
            },
            Err(Malformed::Ipv4Version(5)),
        ),
        ("IHL 4", |f| f[WIRE_L3 + ipv4::VER_IHL] = 0x44, Err(Malformed::Ipv4HeaderLength(16))),
        ("IHL 0", |f| f[WIRE_L3 + ipv4::VER_IHL] = 0x40, Err(Malformed::Ipv4HeaderLength(0))),
        (
            "IHL 15, frame too short",
            |f| {
                f[WIRE_L3 + ipv4::VER_IHL] = 0x4f;
                f.truncate(WIRE_L3 + ipv4::MAX_HEADER_LEN - 1)
            },
            Err(Malformed::TruncatedIpv4),
        ),
        (
            "total 124 > 123 available",
            |f| total_len(f, 124),
            Err(Malformed::Ipv4TotalLength { total: 124, header: 20, available: 123 }),
        ),
        ("total 19", |f| total_len(f, 19), Err(Malformed::Ipv4TotalLength { total: 19, header: 20, available: 123 })),
        ("total 123 (into padding)", |f| total_len(f, 123), Ok(Some(UdpChecksum::Absent))),
        ("checksum bit 0", |f| f[WIRE_L3 + ipv4::CHECKSUM.end - 1] ^= 1, Err(Malformed::Ipv4Checksum)),
        (
            "checksum off by one",
            |f| f[at(WIRE_L3, ipv4::CHECKSUM)].copy_from_slice(&[0xb8, 0x60]),
            Err(Malformed::Ipv4Checksum),
        ),
        (
            "TCP",
            |f| {
                f[WIRE_L3 + ipv4::PROTOCOL] = 6;
                fix_ipv4_checksum(f, WIRE_L3)
            },
            Ok(None),
        ),
        (
            "MF",
            |f| {
                f[WIRE_L3 + ipv4::FLAGS_FRAG.start] = 0x20;
                fix_ipv4_checksum(f, WIRE_L3)
            },
            Ok(None),
        ),
        (
            "reserved flag bit",
            |f| {
                f[WIRE_L3 + ipv4::FLAGS_FRAG.start] = 0xc0;
                fix_ipv4_checksum(f, WIRE_L3)
            },
            Ok(Some(UdpChecksum::Absent)),
        ),
        (
            "offset 1",
            |f| {
                set16(f, WIRE_L3, ipv4::FLAGS_FRAG, ipv4::DONT_FRAGMENT | 1);
                fix_ipv4_checksum(f, WIRE_L3)
            },
            Ok(None),
        ),
        ("total 27", |f| total_len(f, 27), Err(Malformed::TruncatedUdp)),
        ("total 28, UDP length 95", |f| total_len(f, 28), Err(Malformed::UdpLength { udp: 95, ip_payload: 8 })),
        ("UDP length 7", |f| set16(f, WIRE_UDP, udp::LENGTH, 7), Err(Malformed::UdpLength { udp: 7, ip_payload: 95 })),
        (
            "UDP length 96",
            |f| set16(f, WIRE_UDP, udp::LENGTH, 96),
            Err(Malformed::UdpLength { udp: 96, ip_payload: 95 }),
        ),
        ("UDP length 8", |f| set16(f, WIRE_UDP, udp::LENGTH, 8), Ok(Some(UdpChecksum::Absent))),
        ("UDP checksum filled in", |f| fix_udp_checksum(f, &wire_view()), Ok(Some(UdpChecksum::Correct))),
        ("UDP checksum 0x0001", |f| set16(f, WIRE_UDP, udp::CHECKSUM, 1), Ok(Some(UdpChecksum::Wrong))),
        (
            "UDP checksum, then a payload byte changed",
            |f| {
                fix_udp_checksum(f, &wire_view());
                f[WIRE_UDP + udp::HEADER_LEN] ^= 0x40
            },
            Ok(Some(UdpChecksum::Wrong)),
        ),
        (
            "UDP checksum of the pseudo-header only",
            |f| {
                let p = checksum::fold(checksum::pseudo_header_v4([192, 168, 0, 1], [192, 168, 0, 199], 95));
                set16(f, WIRE_UDP, udp::CHECKSUM, p)
            },
            Ok(Some(UdpChecksum::PseudoHeaderOnly)),
        ),
        (
            "IPv6 EtherType",
            |f| f[eth::ETHERTYPE].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes()),
            Err(Malformed::Ipv6Version(4)),
        ),
    ];
    for (name, edit, expected) in cases {
        let mut f = wire_frame();
        edit(&mut f);
        let got = parse_view(&f).map(|o| o.map(|v| v.udp_checksum));
        assert_eq!(&got, expected, "{name}");
        let mut buf = f.clone();
        buf.resize(f.len() + 32, 0);
        let out = run(&mut Echo, &mut buf, f.len());
        match expected {
            Ok(Some(UdpChecksum::Wrong)) => {
                assert_eq!(out, Outcome::BadChecksum, "{name}");
                assert_eq!(run_unverified(&mut Echo, &mut buf, f.len()), Outcome::Reply(WIRE_L3 + 115), "{name}");
            }
            Ok(Some(_)) => match out {
                Outcome::Reply(n) => {
                    let d = parse_view(&f).unwrap().unwrap();
                    verify_reply(&f, &d, &buf[..n], &d.payload).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                other => panic!("{name}: {other:?}"),
            },
            Ok(None) => assert_eq!(out, Outcome::NotOurs, "{name}"),
            Err(e) => assert_eq!(out, Outcome::Malformed(*e), "{name}"),
        }
    }
}

/// A fixed IPv6 frame over a single 802.1Q tag, first without a UDP checksum (forbidden over IPv6), then with.
#[test]
fn table_ipv6_vlan_frame() {
    const L3: usize = eth::HEADER_LEN + vlan::TAG_LEN;
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 9, 0x81, 0x00, 0xa0, 0x2a, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45, 0x00, 0x0c, 17, 5]);
    f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g']);
    let d = parse_view(&f).unwrap().unwrap();
    assert_eq!(d.ip, IpVersion::V6);
    assert_eq!(d.vlan_tci, Some(0xa02a));
    assert_eq!(d.l3, L3);
    assert_eq!(d.udp_at, L3 + ipv6::HEADER_LEN);
    assert_eq!(d.payload_offset, L3 + ipv6::HEADER_LEN + udp::HEADER_LEN);
    assert_eq!(d.payload_len, 4);
    assert_eq!(d.payload, b"ping");
    assert_eq!(d.src, "[2001:db8::1]:5000".parse().unwrap());
    assert_eq!(d.dst, "[2001:db8::2]:53".parse().unwrap());
    assert_eq!(d.udp_checksum, UdpChecksum::Wrong, "zero over IPv6");
    let mut buf = f.clone();
    buf.resize(200, 0);
    assert_eq!(run(&mut Echo, &mut buf, f.len()), Outcome::BadChecksum);
    assert_eq!(run_unverified(&mut Echo, &mut buf, f.len()), Outcome::Reply(f.len()));
    verify_reply(&f, &d, &buf[..f.len()], b"ping").unwrap();

    fix_udp_checksum(&mut f, &d);
    let d = parse_view(&f).unwrap().unwrap();
    assert_eq!(d.udp_checksum, UdpChecksum::Correct);
    let mut buf = f.clone();
    buf.resize(200, 0);
    assert_eq!(run(&mut Echo, &mut buf, f.len()), Outcome::Reply(f.len()));
    verify_reply(&f, &d, &buf[..f.len()], b"ping").unwrap();

    // Extension headers are not ours: hop-by-hop (0), routing (43), fragment (44).
    for nh in [0u8, 43, 44, 59, 58] {
        let mut g = f.clone();
        g[L3 + ipv6::NEXT_HEADER] = nh;
        assert!(matches!(parse(&g), Ok(None)), "next header {nh}");
    }
    // A second tag inside the first.
    let mut g = f[..eth::HEADER_LEN + vlan::TCI.end].to_vec();
    g.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    g.extend_from_slice(&f[eth::HEADER_LEN + vlan::TCI.end..]);
    assert!(matches!(parse(&g), Ok(None)));
}

// ---------------------------------------------------------------------------------------------------------------
// Request metadata: what the packet says (DSCP/ECN, TTL, VLAN id) and what the datapath adds (stamp, queue)
// ---------------------------------------------------------------------------------------------------------------

/// The traffic class, TTL / hop limit and VLAN id a spec puts on the wire.
fn spec_metadata(s: &Spec) -> (u8, u8, Option<u16>) {
    let vlan_id = match s.tag {
        Tag::None => None,
        Tag::Dot1q(tci) | Tag::Dot1ad(tci) => Some(tci & 0x0fff),
    };
    match &s.ip {
        Ip::V4 { ttl, dscp, ecn, .. } => ((dscp << 2) | ecn, *ttl, vlan_id),
        Ip::V6 { hop, traffic_class, .. } => (*traffic_class, *hop, vlan_id),
    }
}

fn arb_arrival() -> impl Strategy<Value = Arrival> {
    let stamp = prop_oneof![
        Just(None),
        (any::<u64>(), any::<bool>()).prop_map(|(ns, hook)| {
            let source = if hook { RxClock::XdpHook } else { RxClock::KernelSocket };
            Some(RxTimestamp { unix_ns: ns, monotonic_ns: ns / 3, source })
        }),
    ];
    (stamp, prop_oneof![Just(None), any::<u32>().prop_map(Some)])
        .prop_map(|(rx_timestamp, queue)| Arrival { rx_timestamp, queue })
}

proptest! {
    #![proptest_config(config(4096))]

    /// `traffic_class`, `dscp`, `ecn`, `ttl` and `vlan_id` of a generated frame are the spec's (any DSCP/ECN,
    /// TTL, hop limit, traffic class, 802.1Q / 802.1ad tag or none), over shared and mutable buffers.
    #[test]
    fn metadata_accessors_read_what_was_sent(s in arb_spec()) {
        let b = build(&s);
        let (tc, ttl, vlan_id) = spec_metadata(&s);
        let d = parse(&b.frame).unwrap().unwrap();
        prop_assert_eq!(d.traffic_class(), tc);
        prop_assert_eq!(d.dscp(), tc >> 2);
        prop_assert_eq!(d.ecn().bits(), tc & 0b11);
        prop_assert_eq!(d.ttl(), ttl);
        prop_assert_eq!(d.vlan_id(), vlan_id);
        let mut copy = b.frame.clone();
        let m = Datagram::parse(&mut copy[..], b.frame.len()).unwrap().unwrap();
        prop_assert_eq!((m.traffic_class(), m.ttl(), m.vlan_id(), m.ecn()), (tc, ttl, vlan_id, d.ecn()));
    }

    /// The handler sees the frame's metadata and the datapath's arrival (stamp and queue) in its `Request`,
    /// exactly, through `respond_with`; `respond` hands no arrival over. The reply is the same either way.
    #[test]
    fn the_handler_sees_the_frames_metadata_and_the_arrival(s in arb_spec_summed(UdpSum::Correct), arrival in arb_arrival()) {
        let b = build(&s);
        let (tc, ttl, vlan_id) = spec_metadata(&s);
        let mut seen = None;
        let mut buf = in_buffer(&b.frame, 0, 0);
        let out = respond_with(&mut with(|r: &Request, _: &mut [u8], len| {
            seen = Some(*r);
            Verdict::Reply { len }
        }), &mut buf, b.frame.len(), NOW, VERIFIED, arrival, &mut NoTransmit);
        prop_assert!(matches!(out, Outcome::Reply(_)), "{:?}", out);
        let r = seen.unwrap();
        let mut expected = Request::new(b.expected.src, b.expected.dst, NOW).with_traffic_class(tc).with_ttl(ttl);
        if let Some(id) = vlan_id {
            expected = expected.with_vlan_id(id);
        }
        if let Some(t) = arrival.rx_timestamp {
            expected = expected.with_rx_timestamp(t);
        }
        if let Some(q) = arrival.queue {
            expected = expected.with_queue(q);
        }
        prop_assert_eq!(r, expected);
        prop_assert_eq!(r.ecn, Some(Ecn::from_traffic_class(tc)));

        let mut plain = None;
        let mut again = in_buffer(&b.frame, 0, 0);
        let out2 = respond(&mut with(|r: &Request, _: &mut [u8], len| {
            plain = Some(*r);
            Verdict::Reply { len }
        }), &mut again, b.frame.len(), NOW, VERIFIED);
        prop_assert_eq!(out2, out);
        prop_assert_eq!(&again, &buf, "the arrival changes what the handler sees, not the reply");
        prop_assert_eq!(plain.unwrap(), Request { rx_timestamp: None, queue: None, ..expected });
    }

    /// `Ecn::from_traffic_class` reads the two low bits of any byte, and `bits` gives them back.
    #[test]
    fn ecn_is_the_two_low_bits(tc in any::<u8>()) {
        let e = Ecn::from_traffic_class(tc);
        prop_assert_eq!(e.bits(), tc & 0b11);
        prop_assert_eq!(Ecn::from_traffic_class(e.bits()), e);
        prop_assert_eq!(Ecn::from_traffic_class(tc | 0b11), Ecn::Ce);
        prop_assert_eq!(Ecn::from_traffic_class(tc & !0b11), Ecn::NotEct);
    }

    /// Stamp conversions with any clock pair: exact where they fit (and back again), `None` where they do not,
    /// never a panic or a wrapped value.
    #[test]
    fn rx_timestamps_convert_with_the_batch_clock_pair(stamp in any::<u64>(), unix in any::<u64>(), mono in any::<u64>()) {
        let now = Time { unix_ns: unix, monotonic_ns: mono };
        let want = (i128::from(stamp) + i128::from(unix) - i128::from(mono)).try_into().ok();
        let m = RxTimestamp::from_monotonic(stamp, now, RxClock::XdpHook);
        if let Some(t) = m {
            prop_assert_eq!(Some(t.unix_ns), want);
            prop_assert_eq!((t.monotonic_ns, t.source), (stamp, RxClock::XdpHook));
            let back = RxTimestamp::from_realtime(t.unix_ns, now, RxClock::XdpHook);
            prop_assert_eq!(back.map(|b| b.monotonic_ns), Some(stamp));
        } else {
            // `None` only when the sum or the difference does not fit.
            prop_assert!(want.is_none() || stamp.checked_add(unix).is_none(), "{:?}", want);
        }
        let want_mono: Option<u64> = (i128::from(stamp) + i128::from(mono) - i128::from(unix)).try_into().ok();
        match RxTimestamp::from_realtime(stamp, now, RxClock::KernelSocket) {
            Some(t) => prop_assert_eq!((Some(t.monotonic_ns), t.unix_ns), (want_mono, stamp)),
            None => prop_assert!(want_mono.is_none() || stamp.checked_add(mono).is_none()),
        }
    }
}
