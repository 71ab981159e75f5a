//! Building a UDP request frame from scratch (for clients and load generators; the server only rewrites).

use std::net::{IpAddr, SocketAddr};

use super::{
    checksum, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_VLAN, ETH_HEADER_LEN, IPPROTO_UDP, IPV4_MIN_HEADER_LEN,
    IPV6_HEADER_LEN, REPLY_TTL, UDP_HEADER_LEN, VLAN_TAG_LEN,
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
    /// The frame does not fit the buffer or the IP length fields.
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
        let l2 = ETH_HEADER_LEN + if self.vlan_tci.is_some() { VLAN_TAG_LEN } else { 0 };
        let l3 = if self.src.is_ipv4() { IPV4_MIN_HEADER_LEN } else { IPV6_HEADER_LEN };
        l2 + l3 + UDP_HEADER_LEN
    }
}

/// Writes Ethernet, IP and UDP headers (with IPv4 header checksum and full UDP checksum) in front of the
/// `payload_len` bytes already at `spec.payload_offset()` in `frame`, and returns the frame length.
pub fn write_request(frame: &mut [u8], spec: &FlowSpec, payload_len: usize) -> Result<usize, BuildError> {
    let payload_offset = spec.payload_offset();
    let max = frame.len().saturating_sub(payload_offset).min(usize::from(u16::MAX) - 48);
    if payload_len > max {
        return Err(BuildError::TooLarge { payload: payload_len, max });
    }
    let frame_len = payload_offset + payload_len;
    let frame = &mut frame[..frame_len];
    frame[0..6].copy_from_slice(&spec.dst_mac);
    frame[6..12].copy_from_slice(&spec.src_mac);
    let mut l3 = 12;
    if let Some(tci) = spec.vlan_tci {
        frame[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        frame[14..16].copy_from_slice(&tci.to_be_bytes());
        l3 += VLAN_TAG_LEN;
    }
    let udp_len = UDP_HEADER_LEN + payload_len;
    let udp_offset = payload_offset - UDP_HEADER_LEN;
    let (head, udp) = frame.split_at_mut(udp_offset);
    udp[0..2].copy_from_slice(&spec.src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&spec.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let sum = match (spec.src.ip(), spec.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            head[l3..l3 + 2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let ip = &mut head[l3 + 2..];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&((IPV4_MIN_HEADER_LEN + udp_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]);
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
            ip[8] = REPLY_TTL;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let ip_sum = checksum::internet(ip);
            ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            checksum::udp_ipv4(src.octets(), dst.octets(), udp)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            head[l3..l3 + 2].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let ip = &mut head[l3 + 2..];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = REPLY_TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            checksum::udp_ipv6(&src.octets(), &dst.octets(), udp)
        }
        _ => return Err(BuildError::MixedVersions),
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    Ok(frame_len)
}

#[cfg(test)]
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
            assert_eq!((p.ip, p.vlan_tci, p.src, p.dst, p.payload_len), (ip, v, spec.src, spec.dst, 5));
            assert_eq!(&frame[p.payload_offset..n], b"hello");
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
