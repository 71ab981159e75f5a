//! Control messages (ancillary data) read and written as plain bytes, with no CMSG_* pointer arithmetic.
//!
//! The layout is the kernel's ABI (include/linux/socket.h): each message is a header `{ size_t cmsg_len; int
//! cmsg_level; int cmsg_type; }` padded to a multiple of `sizeof(size_t)`, then the data; `cmsg_len` counts the
//! header and the data, and the next message starts at `cmsg_len` rounded up to `sizeof(size_t)`. The unit
//! tests check this module against the C library's own CMSG_* macros.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::sys;

/// Bytes of `cmsg_len` (a `size_t`).
const LEN: usize = std::mem::size_of::<usize>();
/// Messages and their data are aligned to this (CMSG_ALIGN).
const ALIGN: usize = std::mem::size_of::<usize>();
/// Header bytes before the data (CMSG_LEN(0)).
pub(super) const HEADER: usize = align(LEN + 8);

/// CMSG_ALIGN.
const fn align(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// CMSG_SPACE: the bytes a message with `data` bytes of data takes.
pub(super) const fn space(data: usize) -> usize {
    HEADER + align(data)
}

/// The messages in a control buffer the kernel filled (`control[..msg_controllen]`), as
/// `(level, type, data)`. Stops at the first malformed header.
pub(super) fn messages(control: &[u8]) -> Messages<'_> {
    Messages { rest: control }
}

/// Iterator returned by [`messages`].
pub(super) struct Messages<'a> {
    rest: &'a [u8],
}

fn ne_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(*bytes.get(at..)?.first_chunk::<4>()?))
}

impl<'a> Iterator for Messages<'a> {
    type Item = (i32, i32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        let len = usize::from_ne_bytes(*rest.first_chunk::<LEN>()?);
        let level = ne_i32(rest, LEN)?;
        let kind = ne_i32(rest, LEN + 4)?;
        let data = rest.get(HEADER..len)?;
        self.rest = rest.get(align(len)..).unwrap_or_default();
        Some((level, kind, data))
    }
}

/// Writes one message at the start of `buf`; returns the bytes it takes (CMSG_SPACE), or `None` if `buf` is
/// too small. Padding bytes are zeroed.
pub(super) fn write(buf: &mut [u8], level: i32, kind: i32, data: &[u8]) -> Option<usize> {
    let total = space(data.len());
    let out = buf.get_mut(..total)?;
    out.fill(0);
    out.get_mut(..LEN)?.copy_from_slice(&(HEADER + data.len()).to_ne_bytes());
    out.get_mut(LEN..LEN + 4)?.copy_from_slice(&level.to_ne_bytes());
    out.get_mut(LEN + 4..LEN + 8)?.copy_from_slice(&kind.to_ne_bytes());
    out.get_mut(HEADER..HEADER + data.len())?.copy_from_slice(data);
    Some(total)
}

/// `sizeof(struct in_pktinfo)`: `{ int ipi_ifindex; struct in_addr ipi_spec_dst, ipi_addr; }`.
const IN_PKTINFO: usize = 12;
/// `sizeof(struct in6_pktinfo)`: `{ struct in6_addr ipi6_addr; int ipi6_ifindex; }`.
const IN6_PKTINFO: usize = 20;
/// `sizeof(struct scm_timestamping64)`: three `__kernel_timespec`s (`{ s64 tv_sec; s64 tv_nsec; }`), the first
/// the software timestamp.
const TIMESTAMPING64: usize = 48;

/// Control bytes a reply or send needs at most: one IP_PKTINFO or one IPV6_PKTINFO, and one IP_TOS or
/// IPV6_TCLASS (an int).
pub(super) const REPLY_ROOM: usize = space(IN6_PKTINFO) + space(INT);
/// Control bytes a received datagram may bring: IP_PKTINFO, IPV6_PKTINFO, SCM_TIMESTAMPING_NEW, IP_TOS (one
/// byte) and IP_TTL, or IPV6_TCLASS and IPV6_HOPLIMIT (an int each), with room to spare for anything else the
/// socket was asked for.
pub(super) const RECEIVE_ROOM: usize =
    2 * (space(IN_PKTINFO) + space(IN6_PKTINFO) + space(TIMESTAMPING64) + 2 * space(INT));
/// `sizeof(int)`: IP_TTL, IPV6_TCLASS and IPV6_HOPLIMIT carry one.
const INT: usize = 4;

/// What the control messages of one received datagram said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Received {
    /// The address the datagram was sent to (IPv4 for IPv4 datagrams, never v4-mapped).
    pub dst: Option<IpAddr>,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// The kernel's software receive timestamp, CLOCK_REALTIME ns.
    pub rx_realtime_ns: Option<u64>,
    /// The IPv4 TOS byte (IP_TOS) or IPv6 traffic class (IPV6_TCLASS).
    pub traffic_class: Option<u8>,
    /// The IPv4 TTL (IP_TTL) or IPv6 hop limit (IPV6_HOPLIMIT).
    pub ttl: Option<u8>,
}

/// Reads the destination address, the interface, the software receive timestamp and the IP header's
/// traffic class and TTL / hop limit from a received datagram's control messages.
pub(super) fn parse(control: &[u8]) -> Received {
    let mut r = Received::default();
    for (level, kind, data) in messages(control) {
        match (level, kind) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                if let (Some(ifindex), Some(addr)) = (ne_i32(data, 0), data.get(8..12)) {
                    let addr: [u8; 4] = addr.try_into().unwrap_or_default();
                    r.dst = Some(IpAddr::V4(Ipv4Addr::from(addr)));
                    r.ifindex = ifindex as u32;
                }
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                if let (Some(addr), Some(ifindex)) = (data.first_chunk::<16>(), ne_i32(data, 16)) {
                    let v6 = Ipv6Addr::from(*addr);
                    // An IPv4 datagram on the dual-stack socket; IP_PKTINFO says the same, unmapped.
                    r.dst = Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
                    r.ifindex = ifindex as u32;
                }
            }
            (libc::SOL_SOCKET, sys::SO_TIMESTAMPING_NEW) => {
                let sec = data.first_chunk::<8>().map(|b| i64::from_ne_bytes(*b));
                let nsec = data.get(8..).and_then(|d| d.first_chunk::<8>()).map(|b| i64::from_ne_bytes(*b));
                if let (Some(sec), Some(nsec)) = (sec, nsec) {
                    // All zero: the kernel had no software stamp (it then leaves ts[0] empty).
                    if sec > 0 || nsec > 0 {
                        let ns = (sec as u64).saturating_mul(1_000_000_000).saturating_add(nsec as u64);
                        r.rx_realtime_ns = Some(ns);
                    }
                }
            }
            (libc::IPPROTO_IP, libc::IP_TOS) => r.traffic_class = data.first().copied(),
            (libc::IPPROTO_IP, libc::IP_TTL) => r.ttl = ne_i32(data, 0).and_then(|v| u8::try_from(v).ok()),
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                r.traffic_class = ne_i32(data, 0).and_then(|v| u8::try_from(v).ok())
            }
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => r.ttl = ne_i32(data, 0).and_then(|v| u8::try_from(v).ok()),
            _ => {}
        }
    }
    r
}

/// Writes the control message that sends a reply from `src` (the request's destination) out of interface
/// `ifindex`: IP_PKTINFO (`ipi_spec_dst`) for IPv4, IPV6_PKTINFO for IPv6. Returns the bytes written.
pub(super) fn write_source(buf: &mut [u8], src: IpAddr, ifindex: u32) -> Option<usize> {
    match src {
        IpAddr::V4(v4) => {
            // The interface is left to SO_BINDTODEVICE: an IP_PKTINFO interface must agree with it anyway.
            let mut info = [0u8; IN_PKTINFO];
            info.get_mut(4..8)?.copy_from_slice(&v4.octets());
            write(buf, libc::IPPROTO_IP, libc::IP_PKTINFO, &info)
        }
        IpAddr::V6(v6) => {
            let mut info = [0u8; IN6_PKTINFO];
            info.get_mut(..16)?.copy_from_slice(&v6.octets());
            info.get_mut(16..)?.copy_from_slice(&(ifindex as i32).to_ne_bytes());
            write(buf, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info)
        }
    }
}

/// [`write_source`], followed, if `traffic_class` is given, by the message that sets the datagram's TOS byte
/// (IP_TOS, IPv4) or traffic class (IPV6_TCLASS): its DSCP and ECN. Returns the bytes written (0 if `buf` is
/// too small for even the source).
pub(super) fn write_source_and_class(buf: &mut [u8], src: IpAddr, ifindex: u32, traffic_class: Option<u8>) -> usize {
    let Some(n) = write_source(buf, src, ifindex) else { return 0 };
    let Some(tc) = traffic_class else { return n };
    let (level, kind) = match src {
        IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_TOS),
        IpAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    };
    let more = buf.get_mut(n..).and_then(|rest| write(rest, level, kind, &i32::from(tc).to_ne_bytes()));
    n + more.unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_source_and_a_class_fit_the_reply_room() {
        let mut buf = [0u8; REPLY_ROOM];
        let v6 = "2001:2::1".parse().unwrap();
        let n = write_source_and_class(&mut buf, v6, 3, Some(0xb9));
        assert_eq!(n, REPLY_ROOM);
        let kinds: Vec<(i32, i32, Vec<u8>)> = messages(&buf[..n]).map(|(l, k, d)| (l, k, d.to_vec())).collect();
        assert_eq!(kinds[1], (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, 0xb9i32.to_ne_bytes().to_vec()));
        let v4 = "198.18.0.1".parse().unwrap();
        let n4 = write_source_and_class(&mut buf, v4, 3, None);
        assert_eq!(messages(&buf[..n4]).count(), 1);
        let n4 = write_source_and_class(&mut buf, v4, 3, Some(4));
        assert_eq!(messages(&buf[..n4]).nth(1).map(|(l, k, _)| (l, k)), Some((libc::IPPROTO_IP, libc::IP_TOS)));
    }

    #[test]
    fn sizes_match_the_c_library() {
        // SAFETY: CMSG_LEN and CMSG_SPACE are pure arithmetic.
        let (len, space12, space20, space48) =
            unsafe { (libc::CMSG_LEN(0), libc::CMSG_SPACE(12), libc::CMSG_SPACE(20), libc::CMSG_SPACE(48)) };
        assert_eq!(HEADER, len as usize);
        assert_eq!(space(12), space12 as usize);
        assert_eq!(space(20), space20 as usize);
        assert_eq!(space(48), space48 as usize);
        assert_eq!(IN_PKTINFO, std::mem::size_of::<libc::in_pktinfo>());
    }

    /// Builds a control buffer with the C library's macros, as the kernel lays one out.
    fn with_c_macros(messages: &[(i32, i32, &[u8])]) -> Vec<u8> {
        let mut buf = vec![0u64; 64];
        // SAFETY: msghdr is plain data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = buf.len() * 8;
        let mut used = 0;
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk `buf` within msg_controllen; each message written fits (checked by
        // the macros returning non-null), and CMSG_DATA points inside it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            for (level, kind, data) in messages {
                assert!(!c.is_null());
                (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                (*c).cmsg_level = *level;
                (*c).cmsg_type = *kind;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
                used = c as usize - buf.as_ptr() as usize + libc::CMSG_SPACE(data.len() as u32) as usize;
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        bytes[..used].to_vec()
    }

    #[test]
    fn reads_what_the_c_macros_write_and_writes_the_same() {
        let a: &[u8] = &[1, 2, 3];
        let b: &[u8] = &[9; 20];
        let built = with_c_macros(&[(1, 2, a), (41, 50, b)]);
        let read: Vec<(i32, i32, Vec<u8>)> = messages(&built).map(|(l, k, d)| (l, k, d.to_vec())).collect();
        assert_eq!(read, vec![(1, 2, a.to_vec()), (41, 50, b.to_vec())]);
        let mut mine = vec![0xffu8; 128];
        let n = write(&mut mine, 1, 2, a).unwrap();
        let m = write(&mut mine[n..], 41, 50, b).unwrap();
        assert_eq!(&mine[..n + m], &built[..], "bytes as the C library lays them out");
    }

    #[test]
    fn truncated_or_bogus_headers_end_the_walk() {
        let built = with_c_macros(&[(1, 2, &[7; 8]), (3, 4, &[8; 8])]);
        for cut in 0..built.len() {
            // Never panics, and never yields data beyond the buffer.
            let n = messages(&built[..cut]).count();
            assert!(n <= 2);
        }
        let mut bogus = built.clone();
        bogus[..LEN].copy_from_slice(&usize::MAX.to_ne_bytes());
        assert_eq!(messages(&bogus).count(), 0);
        bogus[..LEN].copy_from_slice(&3usize.to_ne_bytes());
        assert_eq!(messages(&bogus).count(), 0, "a length shorter than the header");
        assert!(write(&mut [0u8; 8], 1, 2, &[1]).is_none());
    }

    #[test]
    fn packet_info_and_timestamps_are_decoded() {
        let v4 = libc::in_pktinfo {
            ipi_ifindex: 7,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from_ne_bytes([198, 18, 0, 9]) },
            ipi_addr: libc::in_addr { s_addr: u32::from_ne_bytes([198, 18, 0, 1]) },
        };
        // SAFETY: in_pktinfo is plain data of IN_PKTINFO bytes.
        let v4_bytes: [u8; IN_PKTINFO] = unsafe { std::mem::transmute(v4) };
        let mut mapped = [0u8; IN6_PKTINFO];
        mapped[..16].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped().octets());
        mapped[16..].copy_from_slice(&7i32.to_ne_bytes());
        let mut ts = [0u8; TIMESTAMPING64];
        ts[..8].copy_from_slice(&1_700_000_000i64.to_ne_bytes());
        ts[8..16].copy_from_slice(&123i64.to_ne_bytes());
        let built = with_c_macros(&[
            (libc::IPPROTO_IP, libc::IP_PKTINFO, &v4_bytes),
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &mapped),
            (libc::SOL_SOCKET, sys::SO_TIMESTAMPING_NEW, &ts),
        ]);
        let r = parse(&built);
        assert_eq!(r.dst, Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))), "the header's address, unmapped");
        assert_eq!(r.ifindex, 7);
        assert_eq!(r.rx_realtime_ns, Some(1_700_000_000_000_000_123));

        let v6: Ipv6Addr = "2001:2::1".parse().unwrap();
        let mut info = [0u8; IN6_PKTINFO];
        info[..16].copy_from_slice(&v6.octets());
        info[16..].copy_from_slice(&3i32.to_ne_bytes());
        let r = parse(&with_c_macros(&[(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info)]));
        assert_eq!((r.dst, r.ifindex, r.rx_realtime_ns), (Some(IpAddr::V6(v6)), 3, None));
        assert_eq!(
            parse(&with_c_macros(&[(libc::SOL_SOCKET, sys::SO_TIMESTAMPING_NEW, &[0; 48])])),
            Received::default()
        );
    }

    #[test]
    fn traffic_class_and_ttl_are_decoded() {
        let r = parse(&with_c_macros(&[
            (libc::IPPROTO_IP, libc::IP_TOS, &[0xb9]),
            (libc::IPPROTO_IP, libc::IP_TTL, &63i32.to_ne_bytes()),
        ]));
        assert_eq!((r.traffic_class, r.ttl), (Some(0xb9), Some(63)));
        let r = parse(&with_c_macros(&[
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &0x2ei32.to_ne_bytes()),
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, &255i32.to_ne_bytes()),
        ]));
        assert_eq!((r.traffic_class, r.ttl), (Some(0x2e), Some(255)));
        // Out-of-range ints and empty data say nothing.
        let r = parse(&with_c_macros(&[
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &(-1i32).to_ne_bytes()),
            (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT, &256i32.to_ne_bytes()),
            (libc::IPPROTO_IP, libc::IP_TOS, &[]),
        ]));
        assert_eq!((r.traffic_class, r.ttl), (None, None));
        let everything = space(IN_PKTINFO) + space(IN6_PKTINFO) + space(TIMESTAMPING64) + space(1) + 3 * space(INT);
        assert!(RECEIVE_ROOM >= everything, "room for every message the socket asks for");
    }

    #[test]
    fn reply_sources_round_trip() {
        let mut buf = [0u8; REPLY_ROOM];
        let n = write_source(&mut buf, IpAddr::V6("2001:2::1".parse().unwrap()), 5).unwrap();
        assert_eq!(n, space(IN6_PKTINFO));
        let r = parse(&buf[..n]);
        assert_eq!((r.dst, r.ifindex), (Some(IpAddr::V6("2001:2::1".parse().unwrap())), 5));
        let n = write_source(&mut buf, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 5).unwrap();
        assert_eq!(n, space(IN_PKTINFO));
        let (level, kind, data) = messages(&buf[..n]).next().unwrap();
        assert_eq!((level, kind), (libc::IPPROTO_IP, libc::IP_PKTINFO));
        assert_eq!(&data[4..8], &[198, 18, 0, 1], "ipi_spec_dst: the source the reply is sent from");
        assert_eq!(&data[..4], &[0; 4], "ipi_ifindex left to SO_BINDTODEVICE");
    }
}
