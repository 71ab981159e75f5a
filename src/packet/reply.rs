//! Turning a parsed request frame into its reply, in place.

use super::{
    checksum, Datagram, IpVersion, ETH_HEADER_LEN, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, REPLY_TTL, UDP_HEADER_LEN,
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
    /// The `Datagram`'s offsets do not describe a frame of this buffer (it was not parsed from it).
    #[error("the datagram's offsets do not fit this frame")]
    Inconsistent,
}

/// The largest UDP payload a reply to `d` may carry in a buffer of `buffer_len` bytes.
#[inline]
pub fn max_reply_payload(d: &Datagram, buffer_len: usize) -> usize {
    let by_buffer = buffer_len.saturating_sub(d.payload_offset);
    let by_header = match d.ip {
        // IPv4 total length covers the IP header too.
        IpVersion::V4 => usize::from(u16::MAX).saturating_sub(d.payload_offset.saturating_sub(d.l3_offset)),
        IpVersion::V6 => usize::from(u16::MAX) - UDP_HEADER_LEN,
    };
    by_buffer.min(by_header)
}

/// Rewrites the request frame parsed as `d` into a reply whose UDP payload is the first `payload_len` bytes at
/// `d.payload_offset` (already written by the handler): Ethernet addresses, IP addresses and UDP ports are
/// swapped, lengths set, TTL / hop limit reset, the IPv4 header checksum recomputed and a full UDP checksum
/// written (the request's may be a partial, offloaded one). Returns the reply frame's length.
///
/// `frame` must be the buffer `d` was parsed from (it may extend beyond the received length, up to the frame's
/// capacity); the VLAN tag and IPv4 options are kept as they were.
pub fn write_reply(frame: &mut [u8], d: &Datagram, payload_len: usize) -> Result<usize, ReplyError> {
    // A `Datagram` from `parse` always passes; a hand-made one that does not fit gets an error, not a panic.
    let ip_header = match d.ip {
        IpVersion::V4 => IPV4_MIN_HEADER_LEN..=60,
        IpVersion::V6 => IPV6_HEADER_LEN..=IPV6_HEADER_LEN,
    };
    if d.l3_offset < ETH_HEADER_LEN
        || !ip_header.contains(&d.udp_offset.saturating_sub(d.l3_offset))
        || d.udp_offset < d.l3_offset
        || d.payload_offset != d.udp_offset + UDP_HEADER_LEN
        || frame.len() < d.payload_offset
    {
        return Err(ReplyError::Inconsistent);
    }
    let max = max_reply_payload(d, frame.len());
    if payload_len > max {
        return Err(ReplyError::TooLarge { payload: payload_len, max });
    }
    let frame_len = d.payload_offset + payload_len;
    let udp_len = UDP_HEADER_LEN + payload_len;

    // Ethernet: destination <-> source.
    let (dst_mac, src_mac) = frame[..12].split_at_mut(6);
    dst_mac.swap_with_slice(src_mac);

    let (head, udp) = frame[..frame_len].split_at_mut(d.udp_offset);
    let ip = &mut head[d.l3_offset..];
    // UDP: ports swapped, length set, checksum zeroed before it is computed.
    let (sport, rest) = udp.split_at_mut(2);
    sport.swap_with_slice(&mut rest[..2]);
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);

    let udp_sum = match d.ip {
        IpVersion::V4 => {
            let header_len = ip.len();
            let (src, dst) = ip[12..20].split_at_mut(4);
            src.swap_with_slice(dst);
            ip[2..4].copy_from_slice(&((header_len + udp_len) as u16).to_be_bytes());
            ip[8] = REPLY_TTL;
            ip[10..12].copy_from_slice(&[0, 0]);
            let ip_sum = checksum::internet(ip);
            ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            let src = [ip[12], ip[13], ip[14], ip[15]];
            let dst = [ip[16], ip[17], ip[18], ip[19]];
            checksum::udp_ipv4(src, dst, udp)
        }
        IpVersion::V6 => {
            let (src, dst) = ip[8..40].split_at_mut(16);
            src.swap_with_slice(dst);
            ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            ip[7] = REPLY_TTL;
            let mut src = [0u8; 16];
            src.copy_from_slice(&ip[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&ip[24..40]);
            checksum::udp_ipv6(&src, &dst, udp)
        }
    };
    udp[6..8].copy_from_slice(&udp_sum.to_be_bytes());
    Ok(frame_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse;

    #[test]
    fn a_datagram_from_another_frame_is_refused_not_a_panic() {
        let mut frame = [0u8; 64];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&28u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = 17;
        frame[38..40].copy_from_slice(&8u16.to_be_bytes());
        let sum = checksum::internet(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        let d = parse(&frame[..42]).unwrap().unwrap();
        assert_eq!(write_reply(&mut frame[..30], &d, 0), Err(ReplyError::Inconsistent));
        let forged = Datagram { payload_offset: d.payload_offset + 1, ..d };
        assert_eq!(write_reply(&mut frame, &forged, 0), Err(ReplyError::Inconsistent));
        let forged = Datagram { l3_offset: 50, ..d };
        assert_eq!(write_reply(&mut frame, &forged, 0), Err(ReplyError::Inconsistent));
        assert_eq!(write_reply(&mut frame, &d, 0), Ok(42));
    }
}
