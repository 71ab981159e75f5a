//! Property and table tests of the public packet API (`shunt::packet`) and of `shunt::handler::respond`.
//!
//! Valid request frames are generated from a [`Spec`] and serialised with etherparse's header types (an
//! implementation independent of ours); every checksum a reply carries is verified twice, with the naive
//! 16-bit-word sum written here and with etherparse's own checksum functions. The properties:
//!
//! * parse(valid frame) gives exactly the expected [`Datagram`] (offsets, addresses, ports, lengths, VLAN TCI),
//!   with random MACs, no tag / one 802.1Q tag / one 802.1ad tag, IPv4 with IHL 5..=15 and random options, TTL,
//!   ID, DSCP/ECN and DF, or IPv6; a UDP checksum that is correct, zero or garbage; Ethernet padding after it;
//! * Echo through `respond` gives a reply that parses back with everything swapped, verifying checksums, TTL 64,
//!   consistent lengths, and a second `respond` restores the original;
//! * every truncation is rejected with the right `Malformed` variant (or parses the same inside the padding);
//! * each corruption is rejected with its own variant, and frames that are not ours give `Ok(None)`;
//! * arbitrary and mutated bytes never panic, and `respond` replies only to what `parse` accepts;
//! * handler semantics (Sockperf, too-large, longer / shorter replies, the 64 KiB IP length limits);
//! * `checksum::{add, fold, internet, udp_ipv4, udp_ipv6}` against naive references.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    EtherType, Ethernet2Header, IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6Header, LinkHeader, NetHeaders, PacketHeaders, PayloadSlice, SingleVlanHeader, TransportHeader, UdpHeader,
    VlanHeader, VlanId, VlanPcp,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;
use shunt::handler::{respond, Echo, Handler, Outcome, Request, Sockperf, Verdict};
use shunt::packet::{
    checksum, max_reply_payload, parse, write_reply, Datagram, IpVersion, Malformed, ReplyError, ETHERTYPE_IPV4,
    ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HEADER_LEN, IPPROTO_UDP, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN,
    REPLY_TTL, UDP_HEADER_LEN, VLAN_TAG_LEN,
};

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

/// What the request's UDP checksum field holds: the server must not care.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UdpSum {
    Correct,
    Zero,
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
    expected: Datagram,
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
    prop_oneof![3 => Just(UdpSum::Correct), 1 => Just(UdpSum::Zero), 1 => any::<u16>().prop_map(UdpSum::Garbage)]
}

fn arb_padding() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![2 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..48)]
}

fn arb_spec_with(
    ip: impl Strategy<Value = Ip>,
    payload: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Spec> {
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        arb_tag(),
        ip,
        any::<u16>(),
        any::<u16>(),
        payload,
        arb_udp_sum(),
        arb_padding(),
    )
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

/// Payload sizes: mostly small, sometimes up to the largest that fits a 1500-byte MTU over IPv4.
fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => vec(any::<u8>(), 0..=64), 1 => vec(any::<u8>(), 0..=1472)]
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    arb_spec_with(prop_oneof![arb_v4(), arb_v6()], arb_payload())
}

fn arb_spec_v4() -> impl Strategy<Value = Spec> {
    arb_spec_with(arb_v4(), arb_payload())
}

fn arb_spec_v6() -> impl Strategy<Value = Spec> {
    arb_spec_with(arb_v6(), arb_payload())
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

/// Serialises `s` with etherparse's header types (the UDP checksum from etherparse too) and computes the
/// [`Datagram`] that `parse` must return for it.
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
    let l3_offset = frame.len();
    let udp_len = UDP_HEADER_LEN + s.payload.len();
    let (version, mut udp, src_ip, dst_ip) = match &s.ip {
        Ip::V4 { src, dst, .. } => {
            let h = v4_header(&s.ip, udp_len).unwrap();
            frame.extend_from_slice(&h.to_bytes());
            let udp = UdpHeader::with_ipv4_checksum(s.sport, s.dport, &h, &s.payload).unwrap();
            (IpVersion::V4, udp, IpAddr::V4(Ipv4Addr::from(*src)), IpAddr::V4(Ipv4Addr::from(*dst)))
        }
        Ip::V6 { src, dst, .. } => {
            let h = v6_header(&s.ip, udp_len).unwrap();
            frame.extend_from_slice(&h.to_bytes());
            let udp = UdpHeader::with_ipv6_checksum(s.sport, s.dport, &h, &s.payload).unwrap();
            (IpVersion::V6, udp, IpAddr::V6(Ipv6Addr::from(*src)), IpAddr::V6(Ipv6Addr::from(*dst)))
        }
    };
    match s.udp_sum {
        UdpSum::Correct => {}
        UdpSum::Zero => udp.checksum = 0,
        UdpSum::Garbage(g) => udp.checksum = g,
    }
    let udp_offset = frame.len();
    frame.extend_from_slice(&udp.to_bytes());
    frame.extend_from_slice(&s.payload);
    let end = frame.len();
    frame.extend_from_slice(&s.padding);
    Built {
        frame,
        end,
        expected: Datagram {
            ip: version,
            vlan_tci,
            l3_offset,
            udp_offset,
            payload_offset: udp_offset + UDP_HEADER_LEN,
            payload_len: s.payload.len(),
            src: SocketAddr::new(src_ip, s.sport),
            dst: SocketAddr::new(dst_ip, s.dport),
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

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
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
    all.extend_from_slice(&segment[..6]);
    all.extend_from_slice(&[0, 0]);
    all.extend_from_slice(&segment[8..]);
    match !naive_sum(&all) {
        0 => 0xffff,
        c => c,
    }
}

/// Recomputes the IPv4 header checksum at `l3` (IHL taken from the header), naively.
fn fix_ipv4_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = !naive_sum(&frame[l3..l3 + ihl]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------------------------
// Reply verification
// ---------------------------------------------------------------------------------------------------------------

/// Checks that `reply` is the correct reply to `request` (parsed as `req`) carrying `payload`, with naive
/// checksums and with etherparse.
fn verify_reply(request: &[u8], req: &Datagram, reply: &[u8], payload: &[u8]) -> Result<(), TestCaseError> {
    let r = match parse(reply) {
        Ok(Some(r)) => r,
        other => return Err(TestCaseError::fail(format!("reply does not parse: {other:?} ({reply:02x?})"))),
    };
    prop_assert_eq!(r.ip, req.ip);
    prop_assert_eq!(r.vlan_tci, req.vlan_tci);
    prop_assert_eq!(r.l3_offset, req.l3_offset);
    prop_assert_eq!(r.udp_offset, req.udp_offset);
    prop_assert_eq!(r.payload_offset, req.payload_offset);
    prop_assert_eq!(r.payload_len, payload.len());
    prop_assert_eq!(r.src, req.dst, "reply source is the request's destination");
    prop_assert_eq!(r.dst, req.src, "reply destination is the request's source");
    prop_assert_eq!(reply.len(), r.payload_offset + payload.len(), "no padding, no slack");

    // Ethernet: MACs swapped, EtherType and the VLAN tag (TPID and TCI) kept byte for byte.
    prop_assert_eq!(&reply[0..6], &request[6..12]);
    prop_assert_eq!(&reply[6..12], &request[0..6]);
    prop_assert_eq!(&reply[12..r.l3_offset], &request[12..req.l3_offset]);

    let l3 = r.l3_offset;
    let udp = &reply[r.udp_offset..];
    let udp_len = UDP_HEADER_LEN + payload.len();
    let (src, dst): (Vec<u8>, Vec<u8>) = match r.ip {
        IpVersion::V4 => {
            let h = &reply[l3..r.udp_offset];
            let q = &request[l3..req.udp_offset];
            prop_assert_eq!(h[0], q[0], "version / IHL kept");
            prop_assert_eq!(h[1], q[1], "DSCP / ECN kept");
            prop_assert_eq!(usize::from(be16(h, 2)), h.len() + udp_len, "total length");
            prop_assert_eq!(&h[4..8], &q[4..8], "ID, flags and fragment offset kept");
            prop_assert_eq!(h[8], REPLY_TTL);
            prop_assert_eq!(h[8], 64);
            prop_assert_eq!(h[9], IPPROTO_UDP);
            prop_assert_eq!(naive_sum(h), 0xffff, "IPv4 header checksum verifies (naive)");
            prop_assert_eq!(&h[12..16], &q[16..20]);
            prop_assert_eq!(&h[16..20], &q[12..16]);
            prop_assert_eq!(&h[20..], &q[20..], "options kept");
            (h[12..16].to_vec(), h[16..20].to_vec())
        }
        IpVersion::V6 => {
            let h = &reply[l3..r.udp_offset];
            let q = &request[l3..req.udp_offset];
            prop_assert_eq!(h.len(), IPV6_HEADER_LEN);
            prop_assert_eq!(&h[0..4], &q[0..4], "version, traffic class and flow label kept");
            prop_assert_eq!(usize::from(be16(h, 4)), udp_len, "payload length");
            prop_assert_eq!(h[6], IPPROTO_UDP);
            prop_assert_eq!(h[7], 64, "hop limit");
            prop_assert_eq!(&h[8..24], &q[24..40]);
            prop_assert_eq!(&h[24..40], &q[8..24]);
            (h[8..24].to_vec(), h[24..40].to_vec())
        }
    };
    let q_udp = &request[req.udp_offset..];
    prop_assert_eq!(&udp[0..2], &q_udp[2..4], "ports swapped");
    prop_assert_eq!(&udp[2..4], &q_udp[0..2], "ports swapped");
    prop_assert_eq!(usize::from(be16(udp, 4)), udp_len);
    let segment = &udp[..udp_len];
    let sum = be16(udp, 6);
    prop_assert_ne!(sum, 0, "replies always carry a UDP checksum (mandatory over IPv6)");
    prop_assert!(udp_verifies(&src, &dst, segment), "UDP checksum {:#06x} does not verify (naive)", sum);
    prop_assert_eq!(sum, naive_udp_checksum(&src, &dst, segment));
    prop_assert_eq!(&udp[UDP_HEADER_LEN..udp_len], payload);

    // And once more with etherparse.
    let p = PacketHeaders::from_ethernet_slice(reply).map_err(|e| TestCaseError::fail(format!("etherparse: {e:?}")))?;
    let Some(LinkHeader::Ethernet2(eth)) = &p.link else { return Err(TestCaseError::fail("etherparse: no Ethernet")) };
    prop_assert_eq!(eth.destination, &request[6..12]);
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
            // etherparse does not model the reserved ("evil") flag bit, so its header checksum leaves it out.
            if reply[l3 + 6] & 0x80 == 0 {
                prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
            }
            prop_assert_eq!(h.time_to_live, 64);
            prop_assert_eq!(u.checksum, u.calc_checksum_ipv4(h, payload).unwrap());
        }
        Some(NetHeaders::Ipv6(h, _)) => {
            prop_assert_eq!(h.hop_limit, 64);
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

/// A handler made of a closure, for one-off behaviours.
struct With<F>(F);

fn with<F: FnMut(&Request, &mut [u8], usize) -> Verdict + Send>(f: F) -> With<F> {
    With(f)
}

impl<F: FnMut(&Request, &mut [u8], usize) -> Verdict + Send> Handler for With<F> {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize) -> Verdict {
        (self.0)(request, payload, len)
    }
}

/// `cases` in release mode (the whole file runs in about 2 s); an eighth of them in a debug build.
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

// ---------------------------------------------------------------------------------------------------------------
// Valid frames and round trips
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(8192))]

    /// parse gives exactly the expected Datagram; etherparse agrees the generated frame is what we meant.
    #[test]
    fn parses_valid_frames(s in arb_spec()) {
        let b = build(&s);
        prop_assert_eq!(parse(&b.frame), Ok(Some(b.expected)));
        let d = b.expected;
        prop_assert!(d.l3_offset < d.udp_offset);
        prop_assert_eq!(d.udp_offset + UDP_HEADER_LEN, d.payload_offset);
        prop_assert!(d.payload_offset + d.payload_len <= b.frame.len());
        prop_assert_eq!(&b.frame[d.payload_offset..d.payload_offset + d.payload_len], &s.payload[..]);

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

    /// Echo: the reply parses back swapped with verifying checksums, and a second respond restores the request.
    #[test]
    fn echo_round_trip(s in arb_spec(), room in 0usize..256, junk in any::<u8>()) {
        let b = build(&s);
        let d = b.expected;
        let mut buf = in_buffer(&b.frame, room, junk);
        let out = respond(&mut Echo, &mut buf, b.frame.len());
        let n = d.payload_offset + d.payload_len;
        prop_assert_eq!(out, Outcome::Reply(n));
        verify_reply(&b.frame, &d, &buf[..n], &s.payload)?;

        // Twice: back to the original addresses, ports and payload.
        let reply = buf[..n].to_vec();
        let out2 = respond(&mut Echo, &mut buf, n);
        prop_assert_eq!(out2, Outcome::Reply(n));
        let again = parse(&buf[..n]).unwrap().unwrap();
        prop_assert_eq!(again, Datagram { payload_len: s.payload.len(), ..d });
        verify_reply(&reply, &parse(&reply).unwrap().unwrap(), &buf[..n], &s.payload)?;
        prop_assert_eq!(&buf[..12], &b.frame[..12], "MACs restored");
        let mut original = b.frame[..b.end].to_vec();
        if let Ip::V4 { .. } = s.ip {
            // Only the TTL and the header checksum may differ from the request.
            original[d.l3_offset + 8] = 64;
            fix_ipv4_checksum(&mut original, d.l3_offset);
        } else {
            original[d.l3_offset + 7] = 64;
        }
        let q = &buf[..n];
        prop_assert_eq!(&q[..d.udp_offset + 6], &original[..d.udp_offset + 6]);
        prop_assert_eq!(&q[d.payload_offset..], &original[d.payload_offset..]);
        if s.udp_sum == UdpSum::Correct {
            prop_assert_eq!(q, &original[..], "with a correct request checksum, byte for byte");
        }
    }

    /// A received length beyond the buffer is clamped; the junk after the frame is padding and ignored.
    #[test]
    fn respond_clamps_len(s in arb_spec(), room in 0usize..64) {
        let b = build(&s);
        let mut exact = b.frame.clone();
        let mut roomy = in_buffer(&b.frame, room, 0x5a);
        let n = b.expected.payload_offset + b.expected.payload_len;
        prop_assert_eq!(respond(&mut Echo, &mut exact, usize::MAX), Outcome::Reply(n));
        prop_assert_eq!(respond(&mut Echo, &mut roomy, usize::MAX), Outcome::Reply(n));
        prop_assert_eq!(&exact[..n], &roomy[..n]);
    }

    /// write_reply used directly agrees with respond + Echo.
    #[test]
    fn write_reply_matches_respond(s in arb_spec()) {
        let b = build(&s);
        let d = parse(&b.frame).unwrap().unwrap();
        let mut direct = b.frame.clone();
        let mut via = b.frame.clone();
        prop_assert_eq!(write_reply(&mut direct, &d, d.payload_len), Ok(d.payload_offset + d.payload_len));
        prop_assert_eq!(respond(&mut Echo, &mut via, b.frame.len()), Outcome::Reply(d.payload_offset + d.payload_len));
        prop_assert_eq!(direct, via);
        let max = max_reply_payload(&d, b.frame.len());
        prop_assert_eq!(max, b.frame.len() - d.payload_offset);
        let mut f = b.frame.clone();
        prop_assert_eq!(write_reply(&mut f, &d, max + 1), Err(ReplyError::TooLarge { payload: max + 1, max }));
        prop_assert_eq!(&f, &b.frame, "a refused reply leaves the frame alone");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Truncations
// ---------------------------------------------------------------------------------------------------------------

/// The error `parse` must give for the first `cut` bytes of `b` (cut < b.end).
fn truncation_error(b: &Built, cut: usize) -> Malformed {
    let d = &b.expected;
    let available = cut.saturating_sub(d.l3_offset);
    if cut < d.l3_offset {
        return Malformed::TruncatedEthernet;
    }
    match d.ip {
        IpVersion::V4 => {
            let header = d.udp_offset - d.l3_offset;
            if available < header {
                Malformed::TruncatedIpv4
            } else {
                Malformed::Ipv4TotalLength { total: b.end - d.l3_offset, header, available }
            }
        }
        IpVersion::V6 => {
            if available < IPV6_HEADER_LEN {
                Malformed::TruncatedIpv6
            } else {
                Malformed::Ipv6PayloadLength { payload: b.end - d.udp_offset, available: available - IPV6_HEADER_LEN }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// Every prefix of a valid frame: the precise Malformed variant while the cut is inside the datagram, the same
    /// Datagram when it is inside the padding; respond agrees and never replies to a truncated datagram, even
    /// though the rest of the frame is still in the buffer after `len`.
    #[test]
    fn every_truncation_rejected(s in arb_spec()) {
        let b = build(&s);
        let mut buf = in_buffer(&b.frame, 16, 0);
        for cut in 0..=b.frame.len() {
            let r = parse(&b.frame[..cut]);
            if cut >= b.end {
                prop_assert_eq!(r, Ok(Some(b.expected)), "cut {} inside the padding", cut);
            } else {
                prop_assert!(matches!(r, Err(_) | Ok(None)), "cut {}: {:?}", cut, r);
                prop_assert_eq!(r, Err(truncation_error(&b, cut)), "cut {}", cut);
            }
            buf[..b.frame.len()].copy_from_slice(&b.frame);
            let out = respond(&mut Echo, &mut buf, cut);
            match r {
                Ok(Some(d)) => prop_assert_eq!(out, Outcome::Reply(d.payload_offset + d.payload_len)),
                Ok(None) => prop_assert_eq!(out, Outcome::NotOurs),
                Err(e) => prop_assert_eq!(out, Outcome::Malformed(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Corruptions
// ---------------------------------------------------------------------------------------------------------------

/// Parses `frame` and checks `respond` agrees (Malformed / NotOurs / Reply).
fn parse_and_respond(frame: &[u8]) -> Result<Result<Option<Datagram>, Malformed>, TestCaseError> {
    let r = parse(frame);
    let mut buf = in_buffer(frame, 64, 0);
    let out = respond(&mut Echo, &mut buf, frame.len());
    match r {
        Ok(Some(d)) => prop_assert_eq!(out, Outcome::Reply(d.payload_offset + d.payload_len)),
        Ok(None) => prop_assert_eq!(out, Outcome::NotOurs),
        Err(e) => prop_assert_eq!(out, Outcome::Malformed(e)),
    }
    Ok(r)
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn ipv4_wrong_version(s in arb_spec_v4(), v in (0u8..16).prop_filter("not 4", |v| *v != 4)) {
        let mut b = build(&s);
        let l3 = b.expected.l3_offset;
        b.frame[l3] = v << 4 | (b.frame[l3] & 0x0f);
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4Version(v)));
    }

    #[test]
    fn ipv4_ihl_below_5(s in arb_spec_v4(), ihl in 0u8..5) {
        let mut b = build(&s);
        let l3 = b.expected.l3_offset;
        b.frame[l3] = 0x40 | ihl;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4HeaderLength(usize::from(ihl) * 4)));
    }

    /// Total length beyond the frame (padding included), or below the header.
    #[test]
    fn ipv4_total_length_inconsistent(s in arb_spec_v4(), beyond in any::<bool>(), k in any::<u16>()) {
        let mut b = build(&s);
        let d = b.expected;
        let l3 = d.l3_offset;
        let header = d.udp_offset - l3;
        let available = b.frame.len() - l3;
        let total = if beyond {
            available + 1 + usize::from(k) % (65535 - available)
        } else {
            usize::from(k) % header
        };
        b.frame[l3 + 2..l3 + 4].copy_from_slice(&(total as u16).to_be_bytes());
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4TotalLength { total, header, available }));
    }

    /// Any single bit flipped in the header (except version / IHL and total length, checked first).
    #[test]
    fn ipv4_header_checksum_one_bit(s in arb_spec_v4(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut b = build(&s);
        let d = b.expected;
        let header = d.udp_offset - d.l3_offset;
        let choices: Vec<usize> = (1..header).filter(|i| *i != 2 && *i != 3).collect();
        let i = d.l3_offset + choices[at.index(choices.len())];
        b.frame[i] ^= 1 << bit;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv4Checksum));
    }

    /// IP payload shorter than a UDP header.
    #[test]
    fn ip_payload_below_udp_header(s in arb_spec(), short in 0usize..8) {
        let mut b = build(&s);
        let d = b.expected;
        let l3 = d.l3_offset;
        match d.ip {
            IpVersion::V4 => {
                let header = d.udp_offset - l3;
                b.frame[l3 + 2..l3 + 4].copy_from_slice(&((header + short) as u16).to_be_bytes());
                fix_ipv4_checksum(&mut b.frame, l3);
                prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::TruncatedUdp));
            }
            IpVersion::V6 => {
                b.frame[l3 + 4..l3 + 6].copy_from_slice(&(short as u16).to_be_bytes());
                let expected = if short == 0 {
                    Malformed::Ipv6PayloadLength { payload: 0, available: b.frame.len() - d.udp_offset }
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
        let d = b.expected;
        let available = b.frame.len() - d.udp_offset;
        let payload = if zero { 0 } else { available + 1 + usize::from(k) % (65535 - available) };
        b.frame[d.l3_offset + 4..d.l3_offset + 6].copy_from_slice(&(payload as u16).to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv6PayloadLength { payload, available }));
    }

    #[test]
    fn ipv6_wrong_version(s in arb_spec_v6(), v in (0u8..16).prop_filter("not 6", |v| *v != 6)) {
        let mut b = build(&s);
        let l3 = b.expected.l3_offset;
        b.frame[l3] = v << 4 | (b.frame[l3] & 0x0f);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::Ipv6Version(v)));
    }

    /// UDP length below 8, or beyond the IP payload (which, with padding, may be shorter than the frame).
    #[test]
    fn udp_length_inconsistent(s in arb_spec(), below in any::<bool>(), k in any::<u16>()) {
        let mut b = build(&s);
        let d = b.expected;
        let ip_payload = b.end - d.udp_offset;
        let udp = if below { usize::from(k) % 8 } else { ip_payload + 1 + usize::from(k) % (65535 - ip_payload) };
        b.frame[d.udp_offset + 4..d.udp_offset + 6].copy_from_slice(&(udp as u16).to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(Malformed::UdpLength { udp, ip_payload }));
    }

    /// A UDP length shorter than the IP payload is accepted: the payload is what the UDP length says.
    #[test]
    fn udp_length_shorter_than_ip_payload(s in arb_spec(), shrink in any::<prop::sample::Index>()) {
        let mut b = build(&s);
        let d = b.expected;
        let new_payload = shrink.index(d.payload_len + 1);
        b.frame[d.udp_offset + 4..d.udp_offset + 6].copy_from_slice(&((8 + new_payload) as u16).to_be_bytes());
        let r = parse_and_respond(&b.frame)?;
        prop_assert_eq!(r, Ok(Some(Datagram { payload_len: new_payload, ..d })));
        let mut buf = b.frame.clone();
        let n = d.payload_offset + new_payload;
        prop_assert_eq!(respond(&mut Echo, &mut buf, b.frame.len()), Outcome::Reply(n));
        verify_reply(&b.frame, &d, &buf[..n], &s.payload[..new_payload])?;
    }

    #[test]
    fn ipv4_not_udp(s in arb_spec_v4(), proto in any::<u8>().prop_filter("not UDP", |p| *p != IPPROTO_UDP)) {
        let mut b = build(&s);
        let l3 = b.expected.l3_offset;
        b.frame[l3 + 9] = proto;
        fix_ipv4_checksum(&mut b.frame, l3);
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// MF set and/or a nonzero fragment offset: not ours. DF alone (and the reserved bit) is fine.
    #[test]
    fn ipv4_fragments(s in arb_spec_v4(), mf in any::<bool>(), offset in 0u16..0x2000, reserved in any::<bool>()) {
        let mut b = build(&s);
        let l3 = b.expected.l3_offset;
        let df = b.frame[l3 + 6] & 0x40;
        let word = u16::from(df) << 8 | u16::from(mf) << 13 | offset | if reserved { 0x8000 } else { 0 };
        b.frame[l3 + 6..l3 + 8].copy_from_slice(&word.to_be_bytes());
        fix_ipv4_checksum(&mut b.frame, l3);
        let expected = if mf || offset != 0 { Ok(None) } else { Ok(Some(b.expected)) };
        prop_assert_eq!(parse_and_respond(&b.frame)?, expected);
    }

    #[test]
    fn ipv6_not_udp(s in arb_spec_v6(), nh in prop_oneof![Just(0u8), Just(43), Just(44), Just(60), Just(6), Just(58), any::<u8>()]) {
        prop_assume!(nh != IPPROTO_UDP);
        let mut b = build(&s);
        b.frame[b.expected.l3_offset + 6] = nh;
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// Any EtherType other than IPv4 / IPv6 / a VLAN tag (ARP first of all), tagged or not.
    #[test]
    fn other_ethertypes(s in arb_spec(), et in prop_oneof![Just(0x0806u16), Just(0x88cc), Just(0x9100), Just(0x0842), any::<u16>()]) {
        prop_assume!(![ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETHERTYPE_QINQ].contains(&et));
        let mut b = build(&s);
        let at = b.expected.l3_offset - 2;
        b.frame[at..at + 2].copy_from_slice(&et.to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Ok(None));
    }

    /// IPv4 EtherType over an IPv6 packet and vice versa.
    #[test]
    fn ethertype_version_mismatch(s in arb_spec()) {
        let mut b = build(&s);
        let at = b.expected.l3_offset - 2;
        let (et, err) = match b.expected.ip {
            IpVersion::V4 => (ETHERTYPE_IPV6, if b.frame.len() - b.expected.l3_offset < IPV6_HEADER_LEN {
                Malformed::TruncatedIpv6
            } else {
                Malformed::Ipv6Version(4)
            }),
            IpVersion::V6 => (ETHERTYPE_IPV4, Malformed::Ipv4Version(6)),
        };
        b.frame[at..at + 2].copy_from_slice(&et.to_be_bytes());
        prop_assert_eq!(parse_and_respond(&b.frame)?, Err(err));
    }

    /// Two VLAN tags (802.1ad + 802.1Q, or 802.1Q twice): not ours.
    #[test]
    fn double_vlan_tags(s in arb_spec(), outer in prop_oneof![Just(ETHERTYPE_QINQ), Just(ETHERTYPE_VLAN)],
                        inner in prop_oneof![Just(ETHERTYPE_QINQ), Just(ETHERTYPE_VLAN)], t1 in any::<u16>(), t2 in any::<u16>()) {
        let b = build(&Spec { tag: Tag::None, ..s.clone() });
        let mut f = b.frame[..12].to_vec();
        f.extend_from_slice(&outer.to_be_bytes());
        f.extend_from_slice(&vlan_header(t1, inner).to_bytes());
        f.extend_from_slice(&vlan_header(t2, ip_ethertype(&s.ip)).to_bytes());
        f.extend_from_slice(&b.frame[ETH_HEADER_LEN..]);
        prop_assert_eq!(parse_and_respond(&f)?, Ok(None));
        // etherparse agrees it is a double-tagged frame.
        let p = PacketHeaders::from_ethernet_slice(&f).map_err(|e| TestCaseError::fail(format!("{e:?} {f:02x?}")))?;
        prop_assert!(matches!(p.vlan, Some(VlanHeader::Double(_))));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitrary input
// ---------------------------------------------------------------------------------------------------------------

/// Runs arbitrary bytes through parse and respond (Echo and Sockperf); respond replies only to what parse
/// accepted, and then with a valid reply.
fn never_panics_on(data: &[u8], room: usize) -> Result<(), TestCaseError> {
    let r = parse(data);
    if let Ok(Some(d)) = r {
        prop_assert!(d.l3_offset < d.udp_offset);
        prop_assert_eq!(d.udp_offset + UDP_HEADER_LEN, d.payload_offset);
        prop_assert!(d.payload_offset + d.payload_len <= data.len());
    }
    let mut buf = in_buffer(data, room, 0xee);
    match respond(&mut Echo, &mut buf, data.len()) {
        Outcome::Reply(n) => {
            let Ok(Some(d)) = r else { return Err(TestCaseError::fail(format!("Reply without Ok(Some): {r:?}"))) };
            verify_reply(data, &d, &buf[..n], &data[d.payload_offset..d.payload_offset + d.payload_len])?;
        }
        Outcome::Malformed(e) => prop_assert_eq!(r, Err(e)),
        Outcome::NotOurs => prop_assert_eq!(r, Ok(None)),
        other => return Err(TestCaseError::fail(format!("Echo gave {other:?}"))),
    }
    let mut buf = in_buffer(data, room, 0xee);
    let out = respond(&mut Sockperf, &mut buf, data.len());
    if let Outcome::Reply(_) = out {
        prop_assert!(matches!(r, Ok(Some(_))));
    }
    // And with a received length that is not the whole input.
    let mut buf = data.to_vec();
    let half = data.len() / 2;
    if let Outcome::Reply(_) = respond(&mut Echo, &mut buf, half) {
        prop_assert!(matches!(parse(&data[..half]), Ok(Some(_))));
    }
    Ok(())
}

/// A valid frame with a few bytes overwritten (lands near the interesting branches far more often than noise).
fn arb_mutated() -> impl Strategy<Value = Vec<u8>> {
    (
        arb_spec_with(prop_oneof![arb_v4(), arb_v6()], vec(any::<u8>(), 0..=80)),
        vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        any::<bool>(),
    )
        .prop_map(|(s, edits, fix)| {
            let b = build(&s);
            let mut f = b.frame;
            for (at, v) in edits {
                let i = at.index(f.len());
                f[i] = v;
            }
            if fix && matches!(s.ip, Ip::V4 { .. }) && f.len() >= b.expected.l3_offset + 20 {
                let ihl = usize::from(f[b.expected.l3_offset] & 0x0f) * 4;
                if ihl >= 20 && b.expected.l3_offset + ihl <= f.len() {
                    fix_ipv4_checksum(&mut f, b.expected.l3_offset);
                }
            }
            f
        })
}

proptest! {
    #![proptest_config(config(32768))]

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..2000), room in 0usize..128) {
        never_panics_on(&data, room)?;
    }

    /// Arbitrary bytes after an IPv4 / IPv6 EtherType (optionally tagged), to get past the first check.
    #[test]
    fn arbitrary_ip_never_panics(
        tag in prop_oneof![Just(None), any::<u16>().prop_map(Some)],
        v6 in any::<bool>(),
        first in prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
        rest in vec(any::<u8>(), 0..200),
        room in 0usize..64,
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
        never_panics_on(&f, room)?;
    }

    #[test]
    fn mutated_frames_never_panic(f in arb_mutated(), room in 0usize..64) {
        never_panics_on(&f, room)?;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Handlers through respond
// ---------------------------------------------------------------------------------------------------------------

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
        1 => vec(any::<u8>(), 0..14),
        4 => (any::<u64>(), flags, vec(any::<u8>(), 0..200)).prop_map(|(seq, flags, rest)| {
            let mut m = seq.to_be_bytes().to_vec();
            m.extend_from_slice(&flags.to_be_bytes());
            m.extend_from_slice(&((14 + rest.len()) as u32).to_be_bytes());
            m.extend_from_slice(&rest);
            m
        }),
    ]
}

proptest! {
    #![proptest_config(config(4096))]

    /// Sockperf answers only CLIENT|PONG_REQUEST messages of at least 14 bytes, same length, CLIENT cleared.
    #[test]
    fn sockperf_semantics(s in arb_spec_with(prop_oneof![arb_v4(), arb_v6()], arb_sockperf_payload()), room in 0usize..64) {
        let b = build(&s);
        let d = b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = respond(&mut Sockperf, &mut buf, b.frame.len());
        let p = &s.payload;
        let asks = p.len() >= 14 && {
            let f = u16::from_be_bytes([p[8], p[9]]);
            f & CLIENT != 0 && f & PONG_REQUEST != 0
        };
        if asks {
            let n = d.payload_offset + p.len();
            prop_assert_eq!(out, Outcome::Reply(n));
            let mut expected = p.clone();
            let f = u16::from_be_bytes([p[8], p[9]]) & !CLIENT;
            expected[8..10].copy_from_slice(&f.to_be_bytes());
            verify_reply(&b.frame, &d, &buf[..n], &expected)?;
            let rf = be16(&buf, d.payload_offset + 8);
            prop_assert_eq!(rf & CLIENT, 0);
            prop_assert_ne!(rf & PONG_REQUEST, 0);
            // The reply (CLIENT cleared) looping back is not answered.
            prop_assert_eq!(respond(&mut Sockperf, &mut buf, n), Outcome::HandlerDrop);
        } else {
            prop_assert_eq!(out, Outcome::HandlerDrop);
        }
    }

    /// The handler sees the request's addresses, its length, and the whole room after the payload.
    #[test]
    fn handler_sees_request(s in arb_spec(), room in 0usize..300) {
        let b = build(&s);
        let d = b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let mut seen = None;
        let out = respond(&mut with(|r: &Request, p: &mut [u8], len: usize| {
            seen = Some((*r, p.len(), len, p[..len].to_vec()));
            Verdict::Drop
        }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::HandlerDrop);
        let (r, room_len, len, payload) = seen.unwrap();
        prop_assert_eq!(r, Request { src: d.src, dst: d.dst });
        prop_assert_eq!(len, s.payload.len());
        prop_assert_eq!(payload, s.payload.clone());
        prop_assert_eq!(room_len, max_reply_payload(&d, buf.len()));
        prop_assert_eq!(room_len, buf.len() - d.payload_offset);
    }

    /// A handler asking for more than the room gets ReplyTooLarge (any amount, up to usize::MAX); asking for
    /// exactly the room works.
    #[test]
    fn too_large_replies(s in arb_spec(), room in 0usize..128, extra in prop_oneof![1usize..10, Just(usize::MAX / 2), Just(usize::MAX)]) {
        let b = build(&s);
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = respond(&mut with(|_: &Request, p: &mut [u8], _| Verdict::Reply { len: p.len().saturating_add(extra) }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::ReplyTooLarge);

        let d = b.expected;
        let mut buf = in_buffer(&b.frame, room, 0);
        let out = respond(&mut with(|_: &Request, p: &mut [u8], _| {
            for (i, x) in p.iter_mut().enumerate() {
                *x = i as u8 ^ 0xa5;
            }
            Verdict::Reply { len: p.len() }
        }), &mut buf, b.frame.len());
        prop_assert_eq!(out, Outcome::Reply(buf.len()));
        let payload: Vec<u8> = (0..buf.len() - d.payload_offset).map(|i| i as u8 ^ 0xa5).collect();
        verify_reply(&b.frame, &d, &buf, &payload)?;
    }

    /// Replies longer or shorter than the request (within the room) get consistent lengths and checksums.
    #[test]
    fn longer_and_shorter_replies(s in arb_spec(), room in 0usize..256, pick in any::<prop::sample::Index>(), fill in any::<u8>()) {
        let b = build(&s);
        let d = b.expected;
        let mut buf = in_buffer(&b.frame, room, 0x77);
        let max = buf.len() - d.payload_offset;
        let len = pick.index(max + 1);
        let out = respond(&mut with(|_: &Request, p: &mut [u8], req_len| {
            // Keep the request's bytes that fit and write a pattern after them.
            for x in p[req_len.min(len)..len].iter_mut() {
                *x = fill;
            }
            Verdict::Reply { len }
        }), &mut buf, b.frame.len());
        let n = d.payload_offset + len;
        prop_assert_eq!(out, Outcome::Reply(n));
        let mut expected = s.payload.clone();
        expected.resize(len, fill);
        verify_reply(&b.frame, &d, &buf[..n], &expected)?;
    }
}

/// The IP length fields bound the reply, not only the buffer: with a 70 000-byte buffer, an IPv4 reply may carry
/// 65535 - IHL*4 - 8 bytes (total length 65535) and an IPv6 one 65527 (payload length 65535), and no more.
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
        let d = b.expected;
        let limit = match ip {
            Ip::V4 { .. } => 65535 - (d.payload_offset - d.l3_offset),
            Ip::V6 { .. } => 65535 - 8,
        };
        let mut buf = in_buffer(&b.frame, 70_000, 0);
        assert_eq!(max_reply_payload(&d, buf.len()), limit);
        let out = respond(
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
        let n = d.payload_offset + limit;
        assert_eq!(out, Outcome::Reply(n));
        let payload: Vec<u8> = (0..limit).map(|i| (i * 7) as u8).collect();
        verify_reply(&b.frame, &d, &buf[..n], &payload).unwrap();
        match ip {
            Ip::V4 { .. } => assert_eq!(be16(&buf, d.l3_offset + 2), 65535),
            Ip::V6 { .. } => assert_eq!(be16(&buf, d.l3_offset + 4), 65535),
        }
        let mut buf = in_buffer(&b.frame, 70_000, 0);
        let out = respond(
            &mut with(|_: &Request, p: &mut [u8], _| Verdict::Reply { len: p.len() + 1 }),
            &mut buf,
            b.frame.len(),
        );
        assert_eq!(out, Outcome::ReplyTooLarge);
        let mut f = in_buffer(&b.frame, 70_000, 0);
        assert_eq!(write_reply(&mut f, &d, limit + 1), Err(ReplyError::TooLarge { payload: limit + 1, max: limit }));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Checksum functions against naive references
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(16384))]

    #[test]
    fn add_fold_match_naive(data in vec(any::<u8>(), 0..600), start in any::<u32>()) {
        prop_assert_eq!(checksum::fold(checksum::add(0, &data)), naive_sum(&data));
        prop_assert_eq!(checksum::internet(&data), !naive_sum(&data));
        // A running sum carried in: same as prefixing its folded value as a word.
        let mut with_start = (start as u16).to_be_bytes().to_vec();
        with_start.extend_from_slice(&(((start >> 16) as u16).to_be_bytes()));
        with_start.extend_from_slice(&data);
        prop_assert_eq!(checksum::fold(checksum::add(u64::from(start), &data)), naive_sum(&with_start));
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

    #[test]
    fn udp_checksums_match_naive_and_etherparse(
        src4 in any::<[u8; 4]>(), dst4 in any::<[u8; 4]>(),
        src6 in any::<[u8; 16]>(), dst6 in any::<[u8; 16]>(),
        sport in any::<u16>(), dport in any::<u16>(),
        payload in vec(any::<u8>(), 0..600),
    ) {
        let h = UdpHeader::without_ipv4_checksum(sport, dport, payload.len()).unwrap();
        let mut segment = h.to_bytes().to_vec();
        segment.extend_from_slice(&payload);

        let c4 = checksum::udp_ipv4(src4, dst4, &segment);
        prop_assert_eq!(c4, naive_udp_checksum(&src4, &dst4, &segment));
        prop_assert_eq!(c4, h.calc_checksum_ipv4_raw(src4, dst4, &payload).unwrap());
        prop_assert_ne!(c4, 0);
        segment[6..8].copy_from_slice(&c4.to_be_bytes());
        prop_assert!(udp_verifies(&src4, &dst4, &segment));

        segment[6..8].copy_from_slice(&[0, 0]);
        let c6 = checksum::udp_ipv6(&src6, &dst6, &segment);
        prop_assert_eq!(c6, naive_udp_checksum(&src6, &dst6, &segment));
        prop_assert_eq!(c6, h.calc_checksum_ipv6_raw(src6, dst6, &payload).unwrap());
        prop_assert_ne!(c6, 0);
        segment[6..8].copy_from_slice(&c6.to_be_bytes());
        prop_assert!(udp_verifies(&src6, &dst6, &segment));
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
        segment[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
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

/// An IPv4/UDP frame around a header captured on the wire (192.168.0.1 → 192.168.0.199, checksum 0xb861,
/// total length 115), with 8 bytes of Ethernet padding.
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

#[test]
fn table_wire_frame() {
    let f = wire_frame();
    let d = parse(&f).unwrap().unwrap();
    assert_eq!(
        d,
        Datagram {
            ip: IpVersion::V4,
            vlan_tci: None,
            l3_offset: ETH_HEADER_LEN,
            udp_offset: ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN,
            payload_offset: ETH_HEADER_LEN + IPV4_MIN_HEADER_LEN + UDP_HEADER_LEN,
            payload_len: 87,
            src: "192.168.0.1:40000".parse().unwrap(),
            dst: "192.168.0.199:11111".parse().unwrap(),
        }
    );
    let mut buf = f.clone();
    assert_eq!(respond(&mut Echo, &mut buf, f.len()), Outcome::Reply(14 + 115));
    verify_reply(&f, &d, &buf[..14 + 115], &f[42..42 + 87]).unwrap();
    // TTL 64 was already there, ID 0, DF: only the addresses swap, so the header checksum is unchanged.
    assert_eq!(&buf[24..26], &[0xb8, 0x61]);
}

#[test]
fn table_corruptions_of_wire_frame() {
    type Edit = fn(&mut Vec<u8>);
    type Expected = Result<Option<()>, Malformed>;
    let cases: &[(&str, Edit, Expected)] = &[
        ("unchanged", |_| {}, Ok(Some(()))),
        ("empty", |f| f.clear(), Err(Malformed::TruncatedEthernet)),
        ("13 bytes", |f| f.truncate(13), Err(Malformed::TruncatedEthernet)),
        ("ethernet only", |f| f.truncate(14), Err(Malformed::TruncatedIpv4)),
        (
            "VLAN tag cut",
            |f| {
                f[12..14].copy_from_slice(&[0x81, 0x00]);
                f.truncate(17)
            },
            Err(Malformed::TruncatedEthernet),
        ),
        ("ARP", |f| f[12..14].copy_from_slice(&[0x08, 0x06]), Ok(None)),
        (
            "version 5",
            |f| {
                f[14] = 0x55;
                fix_ipv4_checksum(f, 14)
            },
            Err(Malformed::Ipv4Version(5)),
        ),
        ("IHL 4", |f| f[14] = 0x44, Err(Malformed::Ipv4HeaderLength(16))),
        ("IHL 0", |f| f[14] = 0x40, Err(Malformed::Ipv4HeaderLength(0))),
        (
            "IHL 15, frame too short",
            |f| {
                f[14] = 0x4f;
                f.truncate(14 + 59)
            },
            Err(Malformed::TruncatedIpv4),
        ),
        (
            "total 124 > 123 available",
            |f| {
                f[16..18].copy_from_slice(&124u16.to_be_bytes());
                fix_ipv4_checksum(f, 14)
            },
            Err(Malformed::Ipv4TotalLength { total: 124, header: 20, available: 123 }),
        ),
        (
            "total 19",
            |f| {
                f[16..18].copy_from_slice(&19u16.to_be_bytes());
                fix_ipv4_checksum(f, 14)
            },
            Err(Malformed::Ipv4TotalLength { total: 19, header: 20, available: 123 }),
        ),
        (
            "total 123 (into padding)",
            |f| {
                f[16..18].copy_from_slice(&123u16.to_be_bytes());
                fix_ipv4_checksum(f, 14)
            },
            Ok(Some(())),
        ),
        ("checksum bit 0", |f| f[25] ^= 1, Err(Malformed::Ipv4Checksum)),
        ("checksum off by one", |f| f[24..26].copy_from_slice(&[0xb8, 0x60]), Err(Malformed::Ipv4Checksum)),
        (
            "TCP",
            |f| {
                f[23] = 6;
                fix_ipv4_checksum(f, 14)
            },
            Ok(None),
        ),
        (
            "MF",
            |f| {
                f[20] = 0x20;
                fix_ipv4_checksum(f, 14)
            },
            Ok(None),
        ),
        (
            "reserved flag bit",
            |f| {
                f[20] = 0xc0;
                fix_ipv4_checksum(f, 14)
            },
            Ok(Some(())),
        ),
        (
            "offset 1",
            |f| {
                f[20..22].copy_from_slice(&[0x40, 0x01]);
                fix_ipv4_checksum(f, 14)
            },
            Ok(None),
        ),
        (
            "total 27",
            |f| {
                f[16..18].copy_from_slice(&27u16.to_be_bytes());
                fix_ipv4_checksum(f, 14)
            },
            Err(Malformed::TruncatedUdp),
        ),
        (
            "total 28, UDP length 95",
            |f| {
                f[16..18].copy_from_slice(&28u16.to_be_bytes());
                fix_ipv4_checksum(f, 14)
            },
            Err(Malformed::UdpLength { udp: 95, ip_payload: 8 }),
        ),
        (
            "UDP length 7",
            |f| f[38..40].copy_from_slice(&7u16.to_be_bytes()),
            Err(Malformed::UdpLength { udp: 7, ip_payload: 95 }),
        ),
        (
            "UDP length 96",
            |f| f[38..40].copy_from_slice(&96u16.to_be_bytes()),
            Err(Malformed::UdpLength { udp: 96, ip_payload: 95 }),
        ),
        ("UDP length 8", |f| f[38..40].copy_from_slice(&8u16.to_be_bytes()), Ok(Some(()))),
        ("IPv6 EtherType", |f| f[12..14].copy_from_slice(&[0x86, 0xdd]), Err(Malformed::Ipv6Version(4))),
    ];
    for (name, edit, expected) in cases {
        let mut f = wire_frame();
        edit(&mut f);
        let got = parse(&f).map(|o| o.map(|_| ()));
        assert_eq!(&got, expected, "{name}");
        let mut buf = f.clone();
        buf.resize(f.len() + 32, 0);
        let out = respond(&mut Echo, &mut buf, f.len());
        match expected {
            Ok(Some(())) => match out {
                Outcome::Reply(n) => {
                    let d = parse(&f).unwrap().unwrap();
                    let payload = f[d.payload_offset..d.payload_offset + d.payload_len].to_vec();
                    verify_reply(&f, &d, &buf[..n], &payload).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
                other => panic!("{name}: {other:?}"),
            },
            Ok(None) => assert_eq!(out, Outcome::NotOurs, "{name}"),
            Err(e) => assert_eq!(out, Outcome::Malformed(*e), "{name}"),
        }
    }
}

/// A fixed IPv6 frame over a single 802.1Q tag.
#[test]
fn table_ipv6_vlan_frame() {
    let mut f = vec![0x33, 0x33, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 9, 0x81, 0x00, 0xa0, 0x2a, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45, 0x00, 0x0c, 17, 5]);
    f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&[0x13, 0x88, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g']);
    let d = parse(&f).unwrap().unwrap();
    assert_eq!(d.ip, IpVersion::V6);
    assert_eq!(d.vlan_tci, Some(0xa02a));
    assert_eq!(d.l3_offset, ETH_HEADER_LEN + VLAN_TAG_LEN);
    assert_eq!(d.udp_offset, 18 + 40);
    assert_eq!(d.payload_len, 4);
    assert_eq!(d.src, "[2001:db8::1]:5000".parse().unwrap());
    assert_eq!(d.dst, "[2001:db8::2]:53".parse().unwrap());
    let mut buf = f.clone();
    buf.resize(200, 0);
    assert_eq!(respond(&mut Echo, &mut buf, f.len()), Outcome::Reply(f.len()));
    verify_reply(&f, &d, &buf[..f.len()], b"ping").unwrap();
    // Extension headers are not ours: hop-by-hop (0), routing (43), fragment (44).
    for nh in [0u8, 43, 44, 59, 58] {
        let mut g = f.clone();
        g[18 + 6] = nh;
        assert_eq!(parse(&g), Ok(None), "next header {nh}");
    }
    // A second tag inside the first.
    let mut g = f[..16].to_vec();
    g.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    g.extend_from_slice(&f[16..]);
    assert_eq!(parse(&g), Ok(None));
}
