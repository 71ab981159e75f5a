//! The Internet checksum (RFC 1071) and the UDP pseudo-header sums for IPv4 and IPv6.

/// Adds `data` to a running one's-complement sum, as if it were big-endian 16-bit words starting at an even
/// offset (a trailing odd byte is padded with zero). The result is unfolded; pass it to [`fold`].
#[inline]
pub fn add(sum: u64, data: &[u8]) -> u64 {
    // Fold a large running sum first (≡ mod 0xffff), so that any input, however long the chain, cannot overflow.
    let mut sum = (sum & 0xffff_ffff) + (sum >> 32);
    // Summing 32-bit words is equivalent modulo 0xffff (2^16 ≡ 1) and halves the number of additions; a u64
    // cannot overflow for any slice (< 2^61 bytes, so < 2^59 words of < 2^32 each).
    let (words, rest) = data.as_chunks::<4>();
    for w in words {
        sum += u64::from(u32::from_be_bytes(*w));
    }
    let (pairs, last) = rest.as_chunks::<2>();
    for p in pairs {
        sum += u64::from(u16::from_be_bytes(*p));
    }
    if let [last] = last {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a running sum into 16 bits with end-around carry (not yet complemented).
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data`: the complement of its folded one's-complement sum.
#[inline]
pub fn internet(data: &[u8]) -> u16 {
    !fold(add(0, data))
}

/// The unfolded sum of the IPv4 pseudo-header of a UDP segment of `udp_len` bytes (RFC 768).
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> u64 {
    add(add(0, &src), &dst) + u64::from(super::IPPROTO_UDP) + udp_len as u64
}

/// The unfolded sum of the IPv6 pseudo-header of a UDP segment of `udp_len` bytes (RFC 8200 §8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], udp_len: usize) -> u64 {
    add(add(0, src), dst) + u64::from(super::IPPROTO_UDP) + udp_len as u64
}

/// The UDP checksum over IPv4: pseudo-header, then `udp` (header with its checksum field zeroed, then payload).
/// A computed zero is sent as 0xffff, since zero means "no checksum" over IPv4 and is forbidden over IPv6.
#[inline]
pub fn udp_ipv4(src: [u8; 4], dst: [u8; 4], udp: &[u8]) -> u16 {
    finish_udp(add(pseudo_header_v4(src, dst, udp.len()), udp))
}

/// The UDP checksum over IPv6; see [`udp_ipv4`].
#[inline]
pub fn udp_ipv6(src: &[u8; 16], dst: &[u8; 16], udp: &[u8]) -> u16 {
    finish_udp(add(pseudo_header_v6(src, dst, udp.len()), udp))
}

#[inline]
fn finish_udp(sum: u64) -> u16 {
    match !fold(sum) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &data)), 0xddf2);
        assert_eq!(internet(&data), !0xddf2);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(fold(add(0, &[0xab])), 0xab00);
        assert_eq!(fold(add(0, &[0x12, 0x34, 0xab])), 0x1234 + 0xab00);
        assert_eq!(fold(add(0, &[0x12, 0x34, 0x56, 0x78, 0x9a])), fold(0x1234u64 + 0x5678 + 0x9a00));
    }

    #[test]
    fn known_ipv4_header() {
        // A header captured on the wire, checksum field 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
            0x00, 0xc7,
        ];
        assert_eq!(internet(&h), 0, "a valid header sums to zero");
        h[10] = 0;
        h[11] = 0;
        assert_eq!(internet(&h), 0xb861);
    }

    #[test]
    fn a_huge_running_sum_does_not_overflow() {
        let big = u64::MAX - 1;
        assert_eq!(fold(add(big, &[0xff; 4])), fold(add(fold(big).into(), &[0xff; 4])));
    }

    #[test]
    fn zero_udp_checksum_is_sent_as_ffff() {
        assert_eq!(finish_udp(0xffff), 0xffff);
    }
}
