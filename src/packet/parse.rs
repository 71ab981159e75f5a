//! The checked view: parsing a received frame into a [`Datagram`], where every length is checked once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{
    array, be16, bytes, bytes_mut, checksum,
    field::{eth, ipv4, ipv6, udp, vlan},
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, IPPROTO_UDP,
};

/// Which IP version carries the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    /// IPv4, with a header of `ihl * 4` bytes.
    V4,
    /// IPv6 with no extension headers.
    V6,
}

/// The ECN codepoint of an IP packet (RFC 3168 §5): the two low bits of the IPv4 TOS byte or the IPv6 traffic
/// class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ecn {
    /// `00`: the sender does not support ECN.
    NotEct,
    /// `01`: ECN-capable transport, ECT(1) (L4S, RFC 9331).
    Ect1,
    /// `10`: ECN-capable transport, ECT(0).
    Ect0,
    /// `11`: congestion experienced, marked by a router on the way.
    Ce,
}

impl Ecn {
    /// The codepoint in the two low bits of `traffic_class` (the other bits are ignored).
    #[inline]
    pub fn from_traffic_class(traffic_class: u8) -> Ecn {
        match traffic_class & 0b11 {
            0b00 => Ecn::NotEct,
            0b01 => Ecn::Ect1,
            0b10 => Ecn::Ect0,
            _ => Ecn::Ce,
        }
    }

    /// The codepoint's two bits (0..=3).
    #[inline]
    pub fn bits(self) -> u8 {
        match self {
            Ecn::NotEct => 0b00,
            Ecn::Ect1 => 0b01,
            Ecn::Ect0 => 0b10,
            Ecn::Ce => 0b11,
        }
    }
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

/// What a request's UDP checksum field says, checked against its pseudo-header, header and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpChecksum {
    /// A full checksum that verifies.
    Correct,
    /// Zero over IPv4: the sender computed none (RFC 768 allows it; RFC 8200 forbids it over IPv6, where a
    /// zero is [`UdpChecksum::Wrong`]).
    Absent,
    /// Exactly the folded pseudo-header sum: what a sender with TX checksum offload leaves for the NIC to
    /// complete (CHECKSUM_PARTIAL), and what arrives as-is over veth.
    PseudoHeaderOnly,
    /// Anything else: the datagram was corrupted on the way (or forged). Never answered.
    Wrong,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &[u8] {}
    impl Sealed for &mut [u8] {}
}

/// Byte buffers a [`Datagram`] can view: shared or mutable slices, whose length cannot change under the
/// view (which is why the trait is sealed: the view's checked offsets rely on it).
pub trait Buffer: AsRef<[u8]> + sealed::Sealed {}
impl Buffer for &[u8] {}
impl Buffer for &mut [u8] {}

/// Where the parts of a checked frame are. Invariants, established by [`Datagram::parse`]:
/// `l3 == 14` or `l3 == 18`; `udp - l3` is the IPv4 header length (20..=60) or 40 for IPv6;
/// `udp + 8 + payload_len <= len <= buf.len()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) ip: IpVersion,
    pub(super) vlan_tci: Option<u16>,
    pub(super) l3: usize,
    pub(super) udp: usize,
    pub(super) payload_len: usize,
}

impl Layout {
    pub(super) fn payload(&self) -> usize {
        self.udp + udp::HEADER_LEN
    }
}

/// A UDP datagram found in a frame: a checked view over the frame's bytes.
///
/// Only [`Datagram::parse`] makes one, and it keeps the buffer it checked, so its offsets always describe
/// that buffer: reading a field or writing the reply cannot go out of bounds. `B` is `&[u8]` to read a frame
/// or `&mut [u8]` to answer it in place.
#[derive(Debug)]
pub struct Datagram<B: Buffer> {
    pub(super) buf: B,
    pub(super) layout: Layout,
}

/// Parses `frame` (starting at the Ethernet header) into a read-only view; see [`Datagram::parse`].
pub fn parse(frame: &[u8]) -> Result<Option<Datagram<&[u8]>>, Malformed> {
    Datagram::parse(frame, frame.len())
}

impl<B: Buffer> Datagram<B> {
    /// Checks the first `len` bytes of `buf` (clamped to its length) as a frame.
    ///
    /// Returns `Ok(Some)` for a well-formed UDP datagram over IPv4 or IPv6, `Ok(None)` for a frame that is not
    /// ours to answer (not IP, not UDP, an IPv4 fragment, IPv6 with extension headers, more than one VLAN tag),
    /// and `Err` for a frame that claims to be IP/UDP but whose lengths, version or IPv4 header checksum do not
    /// hold. The UDP checksum is reported by [`Datagram::udp_checksum`], not checked here.
    ///
    /// Bytes of `buf` beyond `len` are room a reply may use ([`Datagram::payload_room_mut`]).
    pub fn parse(buf: B, len: usize) -> Result<Option<Datagram<B>>, Malformed> {
        let frame = bytes(buf.as_ref(), 0..len.min(buf.as_ref().len()));
        match layout(frame)? {
            Some(layout) => Ok(Some(Datagram { buf, layout })),
            None => Ok(None),
        }
    }

    fn frame(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// IPv4 or IPv6.
    pub fn ip(&self) -> IpVersion {
        self.layout.ip
    }

    /// The VLAN tag control information, if the frame carried one tag.
    pub fn vlan_tci(&self) -> Option<u16> {
        self.layout.vlan_tci
    }

    /// The VLAN id (the low 12 bits of the tag control information), if the frame carried one tag (802.1Q or
    /// 802.1ad). A tag with id 0 (priority-only) gives `Some(0)`.
    pub fn vlan_id(&self) -> Option<u16> {
        self.layout.vlan_tci.map(|tci| tci & 0x0fff)
    }

    /// The IPv4 TOS byte or the IPv6 traffic class, as received: DSCP in the high six bits, ECN in the low two.
    pub fn traffic_class(&self) -> u8 {
        let l3 = self.layout.l3;
        match self.layout.ip {
            IpVersion::V4 => {
                let [tos] = array(self.frame(), l3 + ipv4::TOS);
                tos
            }
            IpVersion::V6 => {
                // Version (4 bits), then the traffic class across the first two bytes.
                let [first, second] = array(self.frame(), l3 + ipv6::VER_TC_FLOW.start);
                (first << 4) | (second >> 4)
            }
        }
    }

    /// The request's DSCP (0..=63): the high six bits of [`Datagram::traffic_class`].
    pub fn dscp(&self) -> u8 {
        self.traffic_class() >> 2
    }

    /// The request's ECN codepoint: the low two bits of [`Datagram::traffic_class`].
    pub fn ecn(&self) -> Ecn {
        Ecn::from_traffic_class(self.traffic_class())
    }

    /// The IPv4 TTL or the IPv6 hop limit, as received (what is left of the sender's after the hops on the way).
    pub fn ttl(&self) -> u8 {
        let at = match self.layout.ip {
            IpVersion::V4 => ipv4::TTL,
            IpVersion::V6 => ipv6::HOP_LIMIT,
        };
        let [ttl] = array(self.frame(), self.layout.l3 + at);
        ttl
    }

    /// Offset of the UDP payload in the frame (the length of all the headers).
    pub fn payload_offset(&self) -> usize {
        self.layout.payload()
    }

    /// Length of the UDP payload, from the UDP length field (Ethernet padding excluded).
    pub fn payload_len(&self) -> usize {
        self.layout.payload_len
    }

    /// The UDP payload.
    pub fn payload(&self) -> &[u8] {
        let start = self.layout.payload();
        bytes(self.frame(), start..start + self.layout.payload_len)
    }

    /// The sender's address and port.
    pub fn src(&self) -> SocketAddr {
        let l = &self.layout;
        let port = be16(self.frame(), l.udp + udp::SRC_PORT.start);
        match l.ip {
            IpVersion::V4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.v4_addr(ipv4::SRC.start))), port),
            IpVersion::V6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(self.v6_addr(ipv6::SRC.start))), port),
        }
    }

    /// The destination address and port.
    pub fn dst(&self) -> SocketAddr {
        let l = &self.layout;
        let port = be16(self.frame(), l.udp + udp::DST_PORT.start);
        match l.ip {
            IpVersion::V4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(self.v4_addr(ipv4::DST.start))), port),
            IpVersion::V6 => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(self.v6_addr(ipv6::DST.start))), port),
        }
    }

    fn v4_addr(&self, at: usize) -> [u8; 4] {
        array(self.frame(), self.layout.l3 + at)
    }

    fn v6_addr(&self, at: usize) -> [u8; 16] {
        array(self.frame(), self.layout.l3 + at)
    }

    /// Classifies the UDP checksum field (see [`UdpChecksum`]).
    pub fn udp_checksum(&self) -> UdpChecksum {
        let l = &self.layout;
        let segment = bytes(self.frame(), l.udp..l.payload() + l.payload_len);
        let field = be16(self.frame(), l.udp + udp::CHECKSUM.start);
        let pseudo = match l.ip {
            IpVersion::V4 => {
                checksum::pseudo_header_v4(self.v4_addr(ipv4::SRC.start), self.v4_addr(ipv4::DST.start), segment.len())
            }
            IpVersion::V6 => checksum::pseudo_header_v6(
                &self.v6_addr(ipv6::SRC.start),
                &self.v6_addr(ipv6::DST.start),
                segment.len(),
            ),
        };
        if field == 0 {
            return if l.ip == IpVersion::V4 { UdpChecksum::Absent } else { UdpChecksum::Wrong };
        }
        if checksum::fold(checksum::add(pseudo, segment)) == 0xffff {
            UdpChecksum::Correct
        } else if field == checksum::fold(pseudo) {
            UdpChecksum::PseudoHeaderOnly
        } else {
            UdpChecksum::Wrong
        }
    }
}

impl Datagram<&mut [u8]> {
    /// The buffer from the UDP payload on, as far as a reply may reach: the request's payload is its first
    /// [`Datagram::payload_len`] bytes, and a handler writes its reply here.
    pub fn payload_room_mut(&mut self) -> &mut [u8] {
        let start = self.layout.payload();
        let end = start + self.max_reply_payload();
        bytes_mut(self.buf, start..end)
    }

    /// The largest UDP payload a reply may carry: what is left of the buffer after the request's headers (the
    /// handler writes the reply where the request's payload is), and what the reply's IP length fields can
    /// express. The interface's MTU is not known here: [`Datagram::write_reply`] checks it.
    pub fn max_reply_payload(&self) -> usize {
        let l = &self.layout;
        let by_buffer = self.buf.len().saturating_sub(l.payload());
        let by_header = match l.ip {
            // IPv4 total length covers the IP header and the UDP header too; the reply's IP header has no
            // options (they are stripped), whatever the request's had.
            IpVersion::V4 => usize::from(u16::MAX) - ipv4::MIN_HEADER_LEN - udp::HEADER_LEN,
            IpVersion::V6 => usize::from(u16::MAX) - udp::HEADER_LEN,
        };
        by_buffer.min(by_header)
    }
}

/// Checks `frame` and finds its parts (see [`Datagram::parse`]).
fn layout(frame: &[u8]) -> Result<Option<Layout>, Malformed> {
    if frame.len() < eth::HEADER_LEN {
        return Err(Malformed::TruncatedEthernet);
    }
    let mut ethertype = be16(frame, eth::ETHERTYPE.start);
    let mut l3 = eth::HEADER_LEN;
    let mut vlan_tci = None;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        if frame.len() < eth::HEADER_LEN + vlan::TAG_LEN {
            return Err(Malformed::TruncatedEthernet);
        }
        vlan_tci = Some(be16(frame, l3 + vlan::TCI.start));
        ethertype = be16(frame, l3 + vlan::ETHERTYPE.start);
        l3 += vlan::TAG_LEN;
    }
    let available = frame.len() - l3;
    let (ip, header, ip_payload_len) = match ethertype {
        ETHERTYPE_IPV4 => {
            if available < ipv4::MIN_HEADER_LEN {
                return Err(Malformed::TruncatedIpv4);
            }
            let [ver_ihl] = array(frame, l3 + ipv4::VER_IHL);
            let version = ver_ihl >> 4;
            if version != 4 {
                return Err(Malformed::Ipv4Version(version));
            }
            let header = usize::from(ver_ihl & 0x0f) * 4;
            if header < ipv4::MIN_HEADER_LEN {
                return Err(Malformed::Ipv4HeaderLength(header));
            }
            if available < header {
                return Err(Malformed::TruncatedIpv4);
            }
            let total = usize::from(be16(frame, l3 + ipv4::TOTAL_LEN.start));
            if total < header || total > available {
                return Err(Malformed::Ipv4TotalLength { total, header, available });
            }
            if checksum::internet(bytes(frame, l3..l3 + header)) != 0 {
                return Err(Malformed::Ipv4Checksum);
            }
            let [protocol] = array(frame, l3 + ipv4::PROTOCOL);
            if protocol != IPPROTO_UDP {
                return Ok(None);
            }
            // More-fragments flag or a fragment offset: reassembly is the kernel's job.
            if be16(frame, l3 + ipv4::FLAGS_FRAG.start) & ipv4::FRAGMENT_MASK != 0 {
                return Ok(None);
            }
            (IpVersion::V4, header, total - header)
        }
        ETHERTYPE_IPV6 => {
            if available < ipv6::HEADER_LEN {
                return Err(Malformed::TruncatedIpv6);
            }
            let [first, ..] = array::<4>(frame, l3 + ipv6::VER_TC_FLOW.start);
            let version = first >> 4;
            if version != 6 {
                return Err(Malformed::Ipv6Version(version));
            }
            let payload = usize::from(be16(frame, l3 + ipv6::PAYLOAD_LEN.start));
            let after = available - ipv6::HEADER_LEN;
            if payload == 0 || payload > after {
                return Err(Malformed::Ipv6PayloadLength { payload, available: after });
            }
            let [next] = array(frame, l3 + ipv6::NEXT_HEADER);
            if next != IPPROTO_UDP {
                return Ok(None);
            }
            (IpVersion::V6, ipv6::HEADER_LEN, payload)
        }
        _ => return Ok(None),
    };
    if ip_payload_len < udp::HEADER_LEN {
        return Err(Malformed::TruncatedUdp);
    }
    // The IP length checks above put the whole IP payload, so the UDP header, inside the frame.
    let udp_at = l3 + header;
    let udp_len = usize::from(be16(frame, udp_at + udp::LENGTH.start));
    if udp_len < udp::HEADER_LEN || udp_len > ip_payload_len {
        return Err(Malformed::UdpLength { udp: udp_len, ip_payload: ip_payload_len });
    }
    Ok(Some(Layout { ip, vlan_tci, l3, udp: udp_at, payload_len: udp_len - udp::HEADER_LEN }))
}
