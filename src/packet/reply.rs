//! Turning a checked request into its reply, in place.
//!
//! A reply's IP header is the server's own, not a copy of the request's: only the addresses (swapped) and
//! the protocol come from the request. Everything else a request says about its own path is not the
//! reply's to repeat:
//!
//! - IPv4 options are stripped, not copied: a loose or strict source route in a request would route the
//!   reply along the sender's chosen path (RFC 1812 §4.1.3 lets a router do this only on purpose), and a
//!   record-route or timestamp option would grow on the way back. The request is still ours to answer, so
//!   its UDP header and payload move down over the options rather than the request being passed to the
//!   kernel.
//! - TTL / hop limit are fresh ([`ReplyHeaders::ttl`]), not the request's remainder.
//! - TOS / traffic class: DSCP [`ReplyHeaders::dscp`] (0 unless configured) and ECN not-ECT. Echoing a
//!   CE mark would report congestion on a path the reply never crossed; echoing ECT would claim an ECN
//!   transport that a UDP responder is not.
//! - IPv6 flow label 0: the label names the sender's flow, not ours (RFC 6437 lets a source set 0).
//! - IPv4 ID 0 with DF set: an atomic datagram (RFC 6864 §4.1) never fragmented on the way, so it needs no ID.
//!
//! A reply longer than the interface's MTU ([`ReplyHeaders::mtu`]) is refused ([`ReplyError::OverMtu`]):
//! with DF it could only be dropped further on, and the server has no path to fragment it in.

use super::{
    array, bytes, checksum,
    field::{eth, ipv4, ipv6, udp},
    move_within, put, Datagram, Ecn, IpVersion, DEFAULT_MTU, DEFAULT_TTL,
};

/// What a reply's IP header says that the request does not decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeaders {
    /// TTL (IPv4) or hop limit (IPv6) of every reply. Zero would make the reply undeliverable past the
    /// first router; the configuration refuses it (1..=255), this layer writes what it is given.
    pub ttl: u8,
    /// DSCP (0..=63) of every reply. Bits above the six of a DSCP are ignored.
    pub dscp: u8,
    /// ECN codepoint: not-ECT for replies (see the module documentation), unless the handler marks one (an
    /// ECN-capable transport built on shunt).
    pub ecn: Ecn,
    /// The largest IP packet, header included, a reply may be: the interface's MTU.
    pub mtu: usize,
}

impl Default for ReplyHeaders {
    /// TTL 64, DSCP 0 (best effort), not-ECT, MTU 1500.
    fn default() -> Self {
        ReplyHeaders { ttl: DEFAULT_TTL, dscp: 0, ecn: Ecn::NotEct, mtu: DEFAULT_MTU }
    }
}

impl ReplyHeaders {
    /// The TOS byte (IPv4) or traffic class (IPv6): DSCP in the top six bits, ECN in the low two.
    pub fn traffic_class(&self) -> u8 {
        ((self.dscp & 0x3f) << 2) | self.ecn.bits()
    }
}

/// Why a reply could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The reply payload does not fit in the frame buffer or in the IP length fields.
    #[error("reply payload of {payload} bytes does not fit (at most {max})")]
    TooLarge {
        /// Requested reply payload length.
        payload: usize,
        /// The most that fits.
        max: usize,
    },
    /// The reply's IP packet would be longer than the interface's MTU: never sent.
    #[error("reply IP packet of {ip_len} bytes exceeds the MTU of {mtu}")]
    OverMtu {
        /// The reply's IP packet length, header included.
        ip_len: usize,
        /// The MTU it was checked against ([`ReplyHeaders::mtu`]).
        mtu: usize,
    },
}

impl Datagram<&mut [u8]> {
    /// Rewrites the request into a reply whose UDP payload is the first `payload_len` bytes of
    /// [`Datagram::payload_room_mut`] (already written by the handler), and returns the reply frame's length.
    ///
    /// Ethernet addresses, IP addresses and UDP ports are swapped; the VLAN tag is kept. The IP header is
    /// written afresh from `headers` (see the module documentation for why): IPv4 with no options (the UDP
    /// header and payload move down over them; the frame gets shorter), ID 0, DF, TTL and TOS from
    /// `headers`; IPv6 with the traffic class from `headers`, flow label 0, and the hop limit. Lengths are
    /// set, the IPv4 header checksum computed and a full UDP checksum written (the request's may be a
    /// partial, offloaded one).
    ///
    /// A payload beyond [`Datagram::max_reply_payload`] is [`ReplyError::TooLarge`], an IP packet longer than
    /// `headers.mtu` is [`ReplyError::OverMtu`]; either way the frame is left as it was.
    pub fn write_reply(self, payload_len: usize, headers: ReplyHeaders) -> Result<usize, ReplyError> {
        let max = self.max_reply_payload();
        if payload_len > max {
            return Err(ReplyError::TooLarge { payload: payload_len, max });
        }
        let l = self.layout;
        let udp_len = udp::HEADER_LEN + payload_len;
        let ip_header_len = match l.ip {
            IpVersion::V4 => ipv4::MIN_HEADER_LEN,
            IpVersion::V6 => ipv6::HEADER_LEN,
        };
        let ip_len = ip_header_len + udp_len;
        if ip_len > headers.mtu {
            return Err(ReplyError::OverMtu { ip_len, mtu: headers.mtu });
        }
        let frame = self.buf;
        // The reply's UDP header follows an option-less IP header. From here on every offset is below
        // `l.payload() + payload_len <= frame.len()`, as `parse` and the check above proved (the reply only
        // gets shorter: `reply_udp <= l.udp`).
        let reply_udp = l.l3 + ip_header_len;
        if reply_udp < l.udp {
            move_within(frame, l.udp..l.udp + udp_len, reply_udp);
        }
        let frame_len = reply_udp + udp_len;

        let (dst_mac, src_mac) = (array::<6>(frame, eth::DST.start), array::<6>(frame, eth::SRC.start));
        put(frame, eth::DST.start, &src_mac);
        put(frame, eth::SRC.start, &dst_mac);

        let u = reply_udp;
        let (sport, dport) = (array::<2>(frame, u + udp::SRC_PORT.start), array::<2>(frame, u + udp::DST_PORT.start));
        put(frame, u + udp::SRC_PORT.start, &dport);
        put(frame, u + udp::DST_PORT.start, &sport);
        put(frame, u + udp::LENGTH.start, &(udp_len as u16).to_be_bytes());
        put(frame, u + udp::CHECKSUM.start, &[0, 0]);

        let sum = match l.ip {
            IpVersion::V4 => {
                let (src, dst) = (array::<4>(frame, l.l3 + ipv4::SRC.start), array::<4>(frame, l.l3 + ipv4::DST.start));
                put(frame, l.l3 + ipv4::SRC.start, &dst);
                put(frame, l.l3 + ipv4::DST.start, &src);
                put(frame, l.l3 + ipv4::VER_IHL, &[0x40 | (ipv4::MIN_HEADER_LEN / 4) as u8]);
                put(frame, l.l3 + ipv4::TOS, &[headers.traffic_class()]);
                put(frame, l.l3 + ipv4::TOTAL_LEN.start, &(ip_len as u16).to_be_bytes());
                put(frame, l.l3 + ipv4::IDENT.start, &[0, 0]);
                put(frame, l.l3 + ipv4::FLAGS_FRAG.start, &ipv4::DONT_FRAGMENT.to_be_bytes());
                put(frame, l.l3 + ipv4::TTL, &[headers.ttl]);
                put(frame, l.l3 + ipv4::CHECKSUM.start, &[0, 0]);
                let ip_sum = checksum::internet(bytes(frame, l.l3..reply_udp));
                put(frame, l.l3 + ipv4::CHECKSUM.start, &ip_sum.to_be_bytes());
                checksum::udp_ipv4(dst, src, bytes(frame, u..frame_len))
            }
            IpVersion::V6 => {
                let (src, dst) =
                    (array::<16>(frame, l.l3 + ipv6::SRC.start), array::<16>(frame, l.l3 + ipv6::DST.start));
                put(frame, l.l3 + ipv6::SRC.start, &dst);
                put(frame, l.l3 + ipv6::DST.start, &src);
                let ver_tc_flow = (6u32 << 28) | (u32::from(headers.traffic_class()) << 20);
                put(frame, l.l3 + ipv6::VER_TC_FLOW.start, &ver_tc_flow.to_be_bytes());
                put(frame, l.l3 + ipv6::PAYLOAD_LEN.start, &(udp_len as u16).to_be_bytes());
                put(frame, l.l3 + ipv6::HOP_LIMIT, &[headers.ttl]);
                checksum::udp_ipv6(&dst, &src, bytes(frame, u..frame_len))
            }
        };
        put(frame, u + udp::CHECKSUM.start, &sum.to_be_bytes());
        Ok(frame_len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::packet::{write_request, FlowSpec, UdpChecksum};

    fn request(frame: &mut [u8], src: &str, dst: &str, payload: &[u8]) -> usize {
        let spec = FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan_tci: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        };
        let at = spec.payload_offset();
        frame[at..at + payload.len()].copy_from_slice(payload);
        write_request(frame, &spec, payload.len()).unwrap()
    }

    #[test]
    fn reply_swaps_everything_and_verifies() {
        for (c, s) in [("198.18.0.2:4000", "198.18.0.1:9000"), ("[2001:2::2]:4000", "[2001:2::1]:9000")] {
            let mut frame = [0u8; 256];
            let n = request(&mut frame, c, s, b"hello");
            let mut d = Datagram::parse(&mut frame[..], n).unwrap().unwrap();
            d.payload_room_mut()[..6].copy_from_slice(b"world!");
            let m = d.write_reply(6, ReplyHeaders::default()).unwrap();
            let r = crate::packet::parse(&frame[..m]).unwrap().unwrap();
            assert_eq!((r.src(), r.dst()), (s.parse().unwrap(), c.parse().unwrap()));
            assert_eq!(r.payload(), b"world!");
            assert_eq!(r.udp_checksum(), UdpChecksum::Correct);
            assert_eq!(&frame[0..6], &[2, 0, 0, 0, 0, 1]);
        }
    }

    #[test]
    fn too_large_is_refused() {
        let mut frame = [0u8; 64];
        let n = request(&mut frame, "198.18.0.2:1", "198.18.0.1:2", b"");
        let d = Datagram::parse(&mut frame[..], n).unwrap().unwrap();
        let max = d.max_reply_payload();
        assert_eq!(max, 64 - 42);
        assert_eq!(
            d.write_reply(max + 1, ReplyHeaders::default()),
            Err(ReplyError::TooLarge { payload: max + 1, max })
        );
    }
}
