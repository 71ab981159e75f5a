//! Turning a checked request into its reply, in place.

use super::{
    array, bytes, checksum,
    field::{eth, ipv4, ipv6, udp},
    put, Datagram, IpVersion, REPLY_TTL,
};

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
}

impl Datagram<&mut [u8]> {
    /// Rewrites the request into a reply whose UDP payload is the first `payload_len` bytes of
    /// [`Datagram::payload_room_mut`] (already written by the handler): Ethernet addresses, IP addresses and
    /// UDP ports are swapped, lengths set, TTL / hop limit reset, the IPv4 header checksum recomputed and a
    /// full UDP checksum written (the request's may be a partial, offloaded one). The VLAN tag and IPv4
    /// options are kept as they were. Returns the reply frame's length.
    pub fn write_reply(self, payload_len: usize) -> Result<usize, ReplyError> {
        let max = self.max_reply_payload();
        if payload_len > max {
            return Err(ReplyError::TooLarge { payload: payload_len, max });
        }
        let l = self.layout;
        let frame = self.buf;
        // From here on every offset is below `l.payload() + payload_len <= frame.len()`, as `parse` and the
        // check above proved.
        let udp_len = udp::HEADER_LEN + payload_len;
        let frame_len = l.udp + udp_len;

        let (dst_mac, src_mac) = (array::<6>(frame, eth::DST.start), array::<6>(frame, eth::SRC.start));
        put(frame, eth::DST.start, &src_mac);
        put(frame, eth::SRC.start, &dst_mac);

        let (sport, dport) =
            (array::<2>(frame, l.udp + udp::SRC_PORT.start), array::<2>(frame, l.udp + udp::DST_PORT.start));
        put(frame, l.udp + udp::SRC_PORT.start, &dport);
        put(frame, l.udp + udp::DST_PORT.start, &sport);
        put(frame, l.udp + udp::LENGTH.start, &(udp_len as u16).to_be_bytes());
        put(frame, l.udp + udp::CHECKSUM.start, &[0, 0]);

        let sum = match l.ip {
            IpVersion::V4 => {
                let (src, dst) = (array::<4>(frame, l.l3 + ipv4::SRC.start), array::<4>(frame, l.l3 + ipv4::DST.start));
                put(frame, l.l3 + ipv4::SRC.start, &dst);
                put(frame, l.l3 + ipv4::DST.start, &src);
                let header_len = l.udp - l.l3;
                put(frame, l.l3 + ipv4::TOTAL_LEN.start, &((header_len + udp_len) as u16).to_be_bytes());
                put(frame, l.l3 + ipv4::TTL, &[REPLY_TTL]);
                put(frame, l.l3 + ipv4::CHECKSUM.start, &[0, 0]);
                let ip_sum = checksum::internet(bytes(frame, l.l3..l.udp));
                put(frame, l.l3 + ipv4::CHECKSUM.start, &ip_sum.to_be_bytes());
                checksum::udp_ipv4(dst, src, bytes(frame, l.udp..frame_len))
            }
            IpVersion::V6 => {
                let (src, dst) =
                    (array::<16>(frame, l.l3 + ipv6::SRC.start), array::<16>(frame, l.l3 + ipv6::DST.start));
                put(frame, l.l3 + ipv6::SRC.start, &dst);
                put(frame, l.l3 + ipv6::DST.start, &src);
                put(frame, l.l3 + ipv6::PAYLOAD_LEN.start, &(udp_len as u16).to_be_bytes());
                put(frame, l.l3 + ipv6::HOP_LIMIT, &[REPLY_TTL]);
                checksum::udp_ipv6(&dst, &src, bytes(frame, l.udp..frame_len))
            }
        };
        put(frame, l.udp + udp::CHECKSUM.start, &sum.to_be_bytes());
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
            let m = d.write_reply(6).unwrap();
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
        assert_eq!(d.write_reply(max + 1), Err(ReplyError::TooLarge { payload: max + 1, max }));
    }
}
