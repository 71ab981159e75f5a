//! The logic of the fuzz targets, as plain functions so that they also run on stable: `fuzz_targets/*.rs` wrap
//! them in `fuzz_target!` for cargo-fuzz / libFuzzer, and `tests/corpus_smoke.rs` runs them over the seed corpus
//! and a few thousand pseudo-random inputs with `cargo test --release`.
//!
//! Every function panics (an `assert!`) when an invariant does not hold, which is what libFuzzer reports as a
//! crash. Checksums are verified with the naive word-at-a-time sum below, not with `shunt::packet::checksum`.

use shunt::handler::{respond, Echo, Handler, Outcome, Sockperf};
use shunt::packet::{self, Datagram, IpVersion, Malformed};

pub mod seeds;

/// Bytes of room after the received frame: the handler may write up to the end of the buffer.
pub const ROOM: usize = 96;

/// The sockperf header flags (see `shunt::handler::Sockperf`).
const CLIENT: u16 = 1;
const PONG_REQUEST: u16 = 2;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The folded one's-complement sum of `data` as big-endian 16-bit words, one word at a time.
pub fn naive_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
        if sum > 0xffff {
            sum = (sum & 0xffff) + 1;
        }
    }
    sum as u16
}

/// Whether the UDP `segment` (checksum included) verifies against its IPv4 or IPv6 pseudo-header.
pub fn udp_verifies(src: &[u8], dst: &[u8], segment: &[u8]) -> bool {
    let mut all = Vec::with_capacity(40 + segment.len());
    all.extend_from_slice(src);
    all.extend_from_slice(dst);
    if src.len() == 4 {
        all.extend_from_slice(&[0, packet::IPPROTO_UDP]);
        all.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    } else {
        all.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        all.extend_from_slice(&[0, 0, 0, packet::IPPROTO_UDP]);
    }
    all.extend_from_slice(segment);
    naive_sum(&all) == 0xffff
}

/// The documented invariants of a [`Datagram`] parsed from `frame`, re-derived from the bytes. Returns where the
/// IP datagram ends (what follows is Ethernet padding).
pub fn check_datagram(frame: &[u8], d: &Datagram) -> usize {
    assert!(d.l3_offset < d.udp_offset, "{d:?}");
    assert_eq!(d.udp_offset + packet::UDP_HEADER_LEN, d.payload_offset, "{d:?}");
    assert!(d.payload_offset + d.payload_len <= frame.len(), "{d:?} in {} bytes", frame.len());
    match d.vlan_tci {
        None => assert_eq!(d.l3_offset, packet::ETH_HEADER_LEN),
        Some(tci) => {
            assert_eq!(d.l3_offset, packet::ETH_HEADER_LEN + packet::VLAN_TAG_LEN);
            assert!(matches!(be16(frame, 12), packet::ETHERTYPE_VLAN | packet::ETHERTYPE_QINQ));
            assert_eq!(be16(frame, 14), tci);
        }
    }
    let l3 = &frame[d.l3_offset..];
    let header = d.udp_offset - d.l3_offset;
    let ip_payload = match d.ip {
        IpVersion::V4 => {
            assert_eq!(be16(frame, d.l3_offset - 2), packet::ETHERTYPE_IPV4);
            assert_eq!(l3[0] >> 4, 4);
            assert_eq!(header, usize::from(l3[0] & 0x0f) * 4);
            assert!((20..=60).contains(&header));
            assert_eq!(naive_sum(&l3[..header]), 0xffff, "IPv4 header checksum accepted but does not verify");
            assert_eq!(l3[9], packet::IPPROTO_UDP);
            assert_eq!(be16(l3, 6) & 0x3fff, 0, "fragment accepted");
            assert_eq!(d.src.ip(), std::net::IpAddr::from([l3[12], l3[13], l3[14], l3[15]]));
            assert_eq!(d.dst.ip(), std::net::IpAddr::from([l3[16], l3[17], l3[18], l3[19]]));
            let total = usize::from(be16(l3, 2));
            assert!(total <= l3.len());
            total - header
        }
        IpVersion::V6 => {
            assert_eq!(be16(frame, d.l3_offset - 2), packet::ETHERTYPE_IPV6);
            assert_eq!(l3[0] >> 4, 6);
            assert_eq!(header, packet::IPV6_HEADER_LEN);
            assert_eq!(l3[6], packet::IPPROTO_UDP);
            let mut src = [0u8; 16];
            src.copy_from_slice(&l3[8..24]);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&l3[24..40]);
            assert_eq!(d.src.ip(), std::net::IpAddr::from(src));
            assert_eq!(d.dst.ip(), std::net::IpAddr::from(dst));
            let payload = usize::from(be16(l3, 4));
            assert!(payload > 0 && payload + 40 <= l3.len());
            payload
        }
    };
    let udp = &frame[d.udp_offset..];
    assert_eq!(d.src.port(), be16(udp, 0));
    assert_eq!(d.dst.port(), be16(udp, 2));
    assert_eq!(usize::from(be16(udp, 4)), packet::UDP_HEADER_LEN + d.payload_len);
    assert!(packet::UDP_HEADER_LEN + d.payload_len <= ip_payload);
    d.udp_offset + ip_payload
}

/// `reply` (of `n` bytes) is a correct reply to `request`, parsed as `d`, carrying `payload`.
pub fn check_reply(request: &[u8], d: &Datagram, reply: &[u8], payload: &[u8]) {
    let r = match packet::parse(reply) {
        Ok(Some(r)) => r,
        other => panic!("reply does not parse: {other:?}"),
    };
    assert_eq!(check_datagram(reply, &r), reply.len(), "reply with padding");
    assert_eq!((r.ip, r.vlan_tci, r.l3_offset, r.udp_offset), (d.ip, d.vlan_tci, d.l3_offset, d.udp_offset));
    assert_eq!((r.src, r.dst), (d.dst, d.src), "addresses and ports swapped");
    assert_eq!(reply.len(), r.payload_offset + payload.len());
    assert_eq!(&reply[r.payload_offset..], payload);
    assert_eq!(&reply[..6], &request[6..12]);
    assert_eq!(&reply[6..12], &request[..6]);
    assert_eq!(&reply[12..r.l3_offset], &request[12..d.l3_offset], "EtherType / VLAN tag kept");
    let l3 = &reply[r.l3_offset..r.udp_offset];
    let segment = &reply[r.udp_offset..];
    let sum = be16(segment, 6);
    assert_ne!(sum, 0, "reply without UDP checksum");
    match r.ip {
        IpVersion::V4 => {
            assert_eq!(l3[8], packet::REPLY_TTL);
            assert_eq!(usize::from(be16(l3, 2)), l3.len() + segment.len());
            assert_eq!(naive_sum(l3), 0xffff, "reply IPv4 header checksum");
            assert!(udp_verifies(&l3[12..16], &l3[16..20], segment), "reply UDP checksum {sum:#06x} (IPv4)");
        }
        IpVersion::V6 => {
            assert_eq!(l3[7], packet::REPLY_TTL);
            assert_eq!(usize::from(be16(l3, 4)), segment.len());
            assert!(udp_verifies(&l3[8..24], &l3[24..40], segment), "reply UDP checksum {sum:#06x} (IPv6)");
        }
    }
}

/// Target `parse`: never panics; an accepted datagram satisfies the documented invariants, and trailing bytes
/// (Ethernet padding) do not change it.
pub fn parse(data: &[u8]) {
    let r = packet::parse(data);
    if let Ok(Some(d)) = r {
        let ip_end = check_datagram(data, &d);
        let mut padded = data.to_vec();
        padded.extend_from_slice(&[0xff; 3]);
        assert_eq!(packet::parse(&padded), r, "padding changed the parse");
        assert_eq!(packet::parse(&data[..ip_end]), r, "removing the padding changed the parse");
        if ip_end > 0 {
            assert!(packet::parse(&data[..ip_end - 1]).is_err(), "a truncated datagram was accepted");
        }
    }
    if let Err(e) = r {
        // Each error names a reason; its Display must not panic either.
        let _ = e.to_string();
    }
}

/// Runs `handler` over `data` received into a buffer with [`ROOM`] bytes to spare, checks that `respond` agrees
/// with `parse`, and returns the parse and the outcome with the buffer.
fn run<H: Handler>(handler: &mut H, data: &[u8]) -> (Result<Option<Datagram>, Malformed>, Outcome, Vec<u8>) {
    let parsed = packet::parse(data);
    let mut buf = data.to_vec();
    buf.resize(data.len() + ROOM, 0xa5);
    let out = respond(handler, &mut buf, data.len());
    match (out, parsed) {
        (Outcome::Reply(_) | Outcome::HandlerDrop | Outcome::ReplyTooLarge, Ok(Some(_))) => {}
        (Outcome::Malformed(e), Err(p)) => assert_eq!(e, p),
        (Outcome::NotOurs, Ok(None)) => {}
        (out, parsed) => panic!("respond gave {out:?} but parse gave {parsed:?}"),
    }
    (parsed, out, buf)
}

/// Target `respond_echo`: a reply only for what parses, and then one that parses back with verifying checksums
/// and the same payload; replying to the reply restores the request's addresses.
pub fn respond_echo(data: &[u8]) {
    let (parsed, out, mut buf) = run(&mut Echo, data);
    match out {
        Outcome::Reply(n) => {
            let d = parsed.unwrap().unwrap();
            assert_eq!(n, d.payload_offset + d.payload_len);
            check_reply(data, &d, &buf[..n], &data[d.payload_offset..d.payload_offset + d.payload_len]);
            let reply = buf[..n].to_vec();
            assert_eq!(respond(&mut Echo, &mut buf, n), Outcome::Reply(n));
            let again = packet::parse(&buf[..n]).unwrap().unwrap();
            assert_eq!((again.src, again.dst), (d.src, d.dst));
            assert_eq!(&buf[..12], &data[..12]);
            assert_eq!(&buf[d.payload_offset..n], &reply[d.payload_offset..]);
        }
        Outcome::HandlerDrop | Outcome::ReplyTooLarge => panic!("Echo gave {out:?}"),
        Outcome::Malformed(_) | Outcome::NotOurs => {}
    }
}

/// Target `respond_sockperf`: replies exactly to CLIENT|PONG_REQUEST messages of at least 14 bytes, with the
/// same length and CLIENT cleared, and drops everything else that parses.
pub fn respond_sockperf(data: &[u8]) {
    let (parsed, out, buf) = run(&mut Sockperf, data);
    let Ok(Some(d)) = parsed else { return };
    let request = &data[d.payload_offset..d.payload_offset + d.payload_len];
    let asks = request.len() >= shunt::handler::SOCKPERF_HEADER_LEN && {
        let f = be16(request, 8);
        f & CLIENT != 0 && f & PONG_REQUEST != 0
    };
    match out {
        Outcome::Reply(n) => {
            assert!(asks, "Sockperf replied to {request:02x?}");
            assert_eq!(n, d.payload_offset + d.payload_len);
            let mut expected = request.to_vec();
            let f = be16(request, 8) & !CLIENT;
            expected[8..10].copy_from_slice(&f.to_be_bytes());
            check_reply(data, &d, &buf[..n], &expected);
        }
        Outcome::HandlerDrop => assert!(!asks, "Sockperf dropped a pong request"),
        other => panic!("Sockperf gave {other:?} for a parsed datagram"),
    }
}
