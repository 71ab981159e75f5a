//! Parsing a received frame into a [`Datagram`]: every length is checked here, once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    checksum, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HEADER_LEN, IPPROTO_UDP,
    IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN, VLAN_TAG_LEN,
};

/// Which IP version carries the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4, with a header of `ihl * 4` bytes.
    V4,
    /// IPv6 with no extension headers.
    V6,
}

/// Why a frame that claimed to be IP/UDP was rejected. Each variant is a distinct, countable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Shorter than an Ethernet header (plus its VLAN tag, if tagged).
    #[error("frame shorter than its Ethernet header")]
    TruncatedEthernet,
    /// Shorter than the IPv4 header it announces.
    #[error("frame shorter than its IPv4 header")]
    TruncatedIpv4,
    /// EtherType said IPv4 but the version field did not.
    #[error("IPv4 EtherType with IP version {0}")]
    Ipv4Version(u8),
    /// IHL below 5 words.
    #[error("IPv4 header length {0} below 20 bytes")]
    Ipv4HeaderLength(usize),
    /// Total length smaller than the header, or larger than the frame.
    #[error("IPv4 total length {total} inconsistent with header {header} and frame {available}")]
    Ipv4TotalLength {
        /// The header's total-length field.
        total: usize,
        /// The header length (IHL * 4).
        header: usize,
        /// Bytes from the IPv4 header to the end of the frame.
        available: usize,
    },
    /// The IPv4 header checksum does not verify.
    #[error("IPv4 header checksum does not verify")]
    Ipv4Checksum,
    /// Shorter than the fixed IPv6 header.
    #[error("frame shorter than its IPv6 header")]
    TruncatedIpv6,
    /// EtherType said IPv6 but the version field did not.
    #[error("IPv6 EtherType with IP version {0}")]
    Ipv6Version(u8),
    /// Payload length larger than the frame (or zero, a jumbogram, which we do not serve).
    #[error("IPv6 payload length {payload} inconsistent with frame {available}")]
    Ipv6PayloadLength {
        /// The header's payload-length field.
        payload: usize,
        /// Bytes after the IPv6 header in the frame.
        available: usize,
    },
    /// Less than a UDP header after the IP header.
    #[error("IP payload shorter than a UDP header")]
    TruncatedUdp,
    /// The UDP length field is below 8 or larger than the IP payload.
    #[error("UDP length {udp} inconsistent with IP payload {ip_payload}")]
    UdpLength {
        /// The UDP header's length field.
        udp: usize,
        /// The IP payload length.
        ip_payload: usize,
    },
}

/// A UDP datagram found in a frame: where its parts are and who sent it to whom.
///
/// Holding one means the offsets were checked against the frame it was parsed from:
/// `l3_offset < udp_offset`, `udp_offset + 8 == payload_offset` and
/// `payload_offset + payload_len <= frame.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// IPv4 or IPv6.
    pub ip: IpVersion,
    /// The VLAN tag control information, if the frame carried one tag.
    pub vlan_tci: Option<u16>,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the UDP header.
    pub udp_offset: usize,
    /// Offset of the UDP payload.
    pub payload_offset: usize,
    /// Length of the UDP payload, from the UDP length field (Ethernet padding excluded).
    pub payload_len: usize,
    /// Sender's address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses `frame` (starting at the Ethernet header).
///
/// Returns `Ok(Some)` for a well-formed UDP datagram over IPv4 or IPv6, `Ok(None)` for a frame that is not ours
/// to answer (not IP, not UDP, an IPv4 fragment, IPv6 with extension headers, more than one VLAN tag), and
/// `Err` for a frame that claims to be IP/UDP but whose lengths, version or IPv4 header checksum do not hold.
///
/// The UDP checksum is not verified: over veth (and any NIC with TX checksum offload on the sending host) the
/// request carries only the pseudo-header part of it. Real NICs verify it in hardware.
pub fn parse(frame: &[u8]) -> Result<Option<Datagram>, Malformed> {
    if frame.len() < ETH_HEADER_LEN {
        return Err(Malformed::TruncatedEthernet);
    }
    let mut ethertype = be16(frame, 12);
    let mut l3_offset = ETH_HEADER_LEN;
    let mut vlan_tci = None;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if frame.len() < ETH_HEADER_LEN + VLAN_TAG_LEN {
            return Err(Malformed::TruncatedEthernet);
        }
        vlan_tci = Some(be16(frame, 14));
        ethertype = be16(frame, 16);
        l3_offset += VLAN_TAG_LEN;
    }
    let l3 = &frame[l3_offset..];
    let (ip, udp_offset, ip_payload_len, src_ip, dst_ip) = match ethertype {
        ETHERTYPE_IPV4 => {
            if l3.len() < IPV4_MIN_HEADER_LEN {
                return Err(Malformed::TruncatedIpv4);
            }
            let version = l3[0] >> 4;
            if version != 4 {
                return Err(Malformed::Ipv4Version(version));
            }
            let header = usize::from(l3[0] & 0x0f) * 4;
            if header < IPV4_MIN_HEADER_LEN {
                return Err(Malformed::Ipv4HeaderLength(header));
            }
            if l3.len() < header {
                return Err(Malformed::TruncatedIpv4);
            }
            let total = usize::from(be16(l3, 2));
            if total < header || total > l3.len() {
                return Err(Malformed::Ipv4TotalLength { total, header, available: l3.len() });
            }
            if checksum::internet(&l3[..header]) != 0 {
                return Err(Malformed::Ipv4Checksum);
            }
            if l3[9] != IPPROTO_UDP {
                return Ok(None);
            }
            // More-fragments flag or a fragment offset: reassembly is the kernel's job.
            if be16(l3, 6) & 0x3fff != 0 {
                return Ok(None);
            }
            let src = Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15]);
            let dst = Ipv4Addr::new(l3[16], l3[17], l3[18], l3[19]);
            (IpVersion::V4, l3_offset + header, total - header, IpAddr::V4(src), IpAddr::V4(dst))
        }
        ETHERTYPE_IPV6 => {
            if l3.len() < IPV6_HEADER_LEN {
                return Err(Malformed::TruncatedIpv6);
            }
            let version = l3[0] >> 4;
            if version != 6 {
                return Err(Malformed::Ipv6Version(version));
            }
            let payload = usize::from(be16(l3, 4));
            let available = l3.len() - IPV6_HEADER_LEN;
            if payload == 0 || payload > available {
                return Err(Malformed::Ipv6PayloadLength { payload, available });
            }
            if l3[6] != IPPROTO_UDP {
                return Ok(None);
            }
            let mut src = [0u8; 16];
            src.copy_from_slice(&l3[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&l3[24..40]);
            (
                IpVersion::V6,
                l3_offset + IPV6_HEADER_LEN,
                payload,
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
            )
        }
        _ => return Ok(None),
    };
    if ip_payload_len < UDP_HEADER_LEN {
        return Err(Malformed::TruncatedUdp);
    }
    let udp = &frame[udp_offset..];
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < UDP_HEADER_LEN || udp_len > ip_payload_len {
        return Err(Malformed::UdpLength { udp: udp_len, ip_payload: ip_payload_len });
    }
    Ok(Some(Datagram {
        ip,
        vlan_tci,
        l3_offset,
        udp_offset,
        payload_offset: udp_offset + UDP_HEADER_LEN,
        payload_len: udp_len - UDP_HEADER_LEN,
        src: SocketAddr::new(src_ip, be16(udp, 0)),
        dst: SocketAddr::new(dst_ip, be16(udp, 2)),
    }))
}
