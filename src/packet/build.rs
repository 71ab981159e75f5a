//! Building a UDP frame from scratch: requests for clients and load generators ([`write_request`]), and the
//! datagrams a handler sends ([`write_datagram`]), whose IP header follows the same rules as a reply's
//! ([`ReplyHeaders`]).

use std::net::{IpAddr, SocketAddr};

use super::{
    bytes, checksum,
    field::{eth, ipv4, ipv6, udp, vlan},
    put, ReplyHeaders, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, IPPROTO_UDP,
};

/// Addresses of a UDP flow at every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// 802.1Q tag control information, if the frame is tagged.
    pub vlan_tci: Option<u16>,
    /// IP source and UDP source port.
    pub src: SocketAddr,
    /// IP destination and UDP destination port; must be the same IP version as `src`.
    pub dst: SocketAddr,
}

/// Why a frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// `src` and `dst` are of different IP versions.
    #[error("source and destination are of different IP versions")]
    MixedVersions,
    /// The buffer cannot even hold the headers.
    #[error("a {have}-byte buffer cannot hold the {need} bytes of headers")]
    BufferTooSmall {
        /// Bytes of headers the flow needs.
        need: usize,
        /// The buffer's length.
        have: usize,
    },
    /// The IP packet would be longer than the MTU it was built for ([`ReplyHeaders::mtu`]).
    #[error("an IP packet of {ip_len} bytes exceeds the MTU of {mtu}")]
    OverMtu {
        /// The IP packet's length, header included.
        ip_len: usize,
        /// The MTU it was checked against.
        mtu: usize,
    },
    /// The payload does not fit the buffer or the IP length fields.
    #[error("a {payload}-byte payload does not fit (at most {max})")]
    TooLarge {
        /// Requested payload.
        payload: usize,
        /// The most that fits.
        max: usize,
    },
}

impl FlowSpec {
    /// Offset of the UDP payload in frames of this flow.
    pub fn payload_offset(&self) -> usize {
        self.l3_offset() + if self.src.is_ipv4() { ipv4::MIN_HEADER_LEN } else { ipv6::HEADER_LEN } + udp::HEADER_LEN
    }

    fn l3_offset(&self) -> usize {
        eth::HEADER_LEN + if self.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 }
    }
}

/// Writes Ethernet, IP and UDP headers (with IPv4 header checksum and full UDP checksum) in front of the
/// `payload_len` bytes already at `spec.payload_offset()` in `frame`, and returns the frame length. TTL 64,
/// TOS / traffic class 0, no MTU check. A buffer too short for the headers or the payload is an error, never
/// a panic.
pub fn write_request(frame: &mut [u8], spec: &FlowSpec, payload_len: usize) -> Result<usize, BuildError> {
    write_datagram(frame, spec, payload_len, ReplyHeaders { mtu: usize::MAX, ..ReplyHeaders::default() })
}

/// [`write_request`] with the IP header's TTL / hop limit, DSCP and ECN from `headers`, refusing an IP packet
/// longer than `headers.mtu` ([`BuildError::OverMtu`]). IPv4: no options, ID 0, DF; IPv6: flow label 0.
pub fn write_datagram(
    frame: &mut [u8],
    spec: &FlowSpec,
    payload_len: usize,
    headers: ReplyHeaders,
) -> Result<usize, BuildError> {
    let (v4, v6) = match (spec.src.ip(), spec.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (Some((s.octets(), d.octets())), None),
        (IpAddr::V6(s), IpAddr::V6(d)) => (None, Some((s.octets(), d.octets()))),
        _ => return Err(BuildError::MixedVersions),
    };
    let payload_offset = spec.payload_offset();
    if frame.len() < payload_offset {
        return Err(BuildError::BufferTooSmall { need: payload_offset, have: frame.len() });
    }
    let l3 = spec.l3_offset();
    let udp_at = payload_offset - udp::HEADER_LEN;
    // The IP length fields must hold the IP payload (IPv6) or the whole IP packet (IPv4).
    let by_header = usize::from(u16::MAX) - (payload_offset - if v4.is_some() { l3 } else { udp_at });
    let max = (frame.len() - payload_offset).min(by_header);
    if payload_len > max {
        return Err(BuildError::TooLarge { payload: payload_len, max });
    }
    let ip_len = payload_offset - l3 + payload_len;
    if ip_len > headers.mtu {
        return Err(BuildError::OverMtu { ip_len, mtu: headers.mtu });
    }
    // From here on every offset is below `payload_offset + payload_len <= frame.len()`, checked above.
    let frame_len = payload_offset + payload_len;
    let udp_len = udp::HEADER_LEN + payload_len;
    put(frame, eth::DST.start, &spec.dst_mac);
    put(frame, eth::SRC.start, &spec.src_mac);
    let ethertype = if v4.is_some() { ETHERTYPE_IPV4 } else { ETHERTYPE_IPV6 };
    if let Some(tci) = spec.vlan_tci {
        put(frame, eth::ETHERTYPE.start, &ETHERTYPE_VLAN.to_be_bytes());
        put(frame, eth::HEADER_LEN + vlan::TCI.start, &tci.to_be_bytes());
        put(frame, eth::HEADER_LEN + vlan::ETHERTYPE.start, &ethertype.to_be_bytes());
    } else {
        put(frame, eth::ETHERTYPE.start, &ethertype.to_be_bytes());
    }
    put(frame, udp_at + udp::SRC_PORT.start, &spec.src.port().to_be_bytes());
    put(frame, udp_at + udp::DST_PORT.start, &spec.dst.port().to_be_bytes());
    put(frame, udp_at + udp::LENGTH.start, &(udp_len as u16).to_be_bytes());
    put(frame, udp_at + udp::CHECKSUM.start, &[0, 0]);
    let sum = match (v4, v6) {
        (Some((src, dst)), _) => {
            let mut h = [0u8; ipv4::MIN_HEADER_LEN];
            h[ipv4::VER_IHL] = 0x45;
            h[ipv4::TOS] = headers.traffic_class();
            h[ipv4::TOTAL_LEN].copy_from_slice(&((ipv4::MIN_HEADER_LEN + udp_len) as u16).to_be_bytes());
            h[ipv4::FLAGS_FRAG].copy_from_slice(&ipv4::DONT_FRAGMENT.to_be_bytes());
            h[ipv4::TTL] = headers.ttl;
            h[ipv4::PROTOCOL] = IPPROTO_UDP;
            h[ipv4::SRC].copy_from_slice(&src);
            h[ipv4::DST].copy_from_slice(&dst);
            let ip_sum = checksum::internet(&h);
            h[ipv4::CHECKSUM].copy_from_slice(&ip_sum.to_be_bytes());
            put(frame, l3, &h);
            checksum::udp_ipv4(src, dst, bytes(frame, udp_at..frame_len))
        }
        (None, Some((src, dst))) => {
            let mut h = [0u8; ipv6::HEADER_LEN];
            let tc = u32::from(headers.traffic_class());
            h[ipv6::VER_TC_FLOW].copy_from_slice(&(0x6000_0000u32 | (tc << 20)).to_be_bytes());
            h[ipv6::PAYLOAD_LEN].copy_from_slice(&(udp_len as u16).to_be_bytes());
            h[ipv6::NEXT_HEADER] = IPPROTO_UDP;
            h[ipv6::HOP_LIMIT] = headers.ttl;
            h[ipv6::SRC].copy_from_slice(&src);
            h[ipv6::DST].copy_from_slice(&dst);
            put(frame, l3, &h);
            checksum::udp_ipv6(&src, &dst, bytes(frame, udp_at..frame_len))
        }
        (None, None) => return Err(BuildError::MixedVersions),
    };
    put(frame, udp_at + udp::CHECKSUM.start, &sum.to_be_bytes());
    Ok(frame_len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::packet::{parse, IpVersion};

    fn spec(src: &str, dst: &str, vlan: Option<u16>) -> FlowSpec {
        FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan_tci: vlan,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    #[test]
    fn built_frames_parse_back() {
        for (s, d, v, ip) in [
            ("198.18.0.2:4000", "198.18.0.1:9000", None, IpVersion::V4),
            ("[2001:2::2]:4000", "[2001:2::1]:9000", Some(7), IpVersion::V6),
        ] {
            let spec = spec(s, d, v);
            let mut frame = [0u8; 256];
            let off = spec.payload_offset();
            frame[off..off + 5].copy_from_slice(b"hello");
            let n = write_request(&mut frame, &spec, 5).unwrap();
            let p = parse(&frame[..n]).unwrap().unwrap();
            assert_eq!((p.ip(), p.vlan_tci(), p.src(), p.dst(), p.payload_len()), (ip, v, spec.src, spec.dst, 5));
            assert_eq!(p.payload(), b"hello");
            assert_eq!(p.udp_checksum(), crate::packet::UdpChecksum::Correct);
        }
    }

    #[test]
    fn checksums_verify() {
        let spec = spec("198.18.0.2:4000", "198.18.0.1:9000", None);
        let mut frame = [0u8; 128];
        let n = write_request(&mut frame, &spec, 20).unwrap();
        assert_eq!(checksum::internet(&frame[14..34]), 0);
        // A UDP segment with its checksum in place sums (with the pseudo-header) to 0xffff.
        let mut sum = checksum::add(0, &frame[26..34]);
        sum += u64::from(IPPROTO_UDP) + (n - 34) as u64;
        sum = checksum::add(sum, &frame[34..n]);
        assert_eq!(checksum::fold(sum), 0xffff);
    }

    #[test]
    fn a_buffer_shorter_than_the_headers_is_an_error() {
        for len in 0..42 {
            let mut frame = vec![0u8; len];
            assert_eq!(
                write_request(&mut frame, &spec("198.18.0.2:1", "198.18.0.1:2", None), 0),
                Err(BuildError::BufferTooSmall { need: 42, have: len })
            );
        }
    }

    #[test]
    fn rejects_mixed_versions_and_oversize() {
        let mut frame = [0u8; 64];
        assert_eq!(
            write_request(&mut frame, &spec("198.18.0.2:1", "[2001:2::1]:2", None), 0),
            Err(BuildError::MixedVersions)
        );
        assert!(matches!(
            write_request(&mut frame, &spec("198.18.0.2:1", "198.18.0.1:2", None), 40),
            Err(BuildError::TooLarge { .. })
        ));
    }
}
