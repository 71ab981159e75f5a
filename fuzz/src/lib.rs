//! The logic of the fuzz targets, as plain functions so that they also run on stable: `fuzz_targets/*.rs` wrap
//! them in `fuzz_target!` for cargo-fuzz / libFuzzer, and `tests/corpus_smoke.rs` runs them over the seed corpus
//! and a few thousand pseudo-random inputs with `cargo test --release`.
//!
//! Every function panics (an `assert!`) when an invariant does not hold, which is what libFuzzer reports as a
//! crash. Checksums are verified with the naive word-at-a-time sum below, not with `shunt::packet::checksum`
//! (except in the `checksum` target, which compares the two). Header offsets come from `shunt::packet::field`.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use shunt::handler::{respond, Echo, Handler, Outcome, RespondOptions, Sockperf, Time, SOCKPERF_HEADER_LEN};
use shunt::packet::field::{eth, ipv4, ipv6, udp, vlan, Field};
use shunt::packet::{
    self, checksum, Buffer, BuildError, Datagram, FlowSpec, IpVersion, Malformed, ReplyError, UdpChecksum, DEFAULT_TTL,
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, IPPROTO_UDP,
};

pub mod seeds;

/// Bytes of room after the received frame: the handler may write up to the end of the buffer.
pub const ROOM: usize = 96;

/// The time handed to `respond`.
const NOW: Time = Time { unix_ns: 1_700_000_000_000_000_000, monotonic_ns: 1 };

/// The default options with the MTU out of the way: fuzzed frames may be longer than any interface's MTU, and
/// what is checked here is parsing and replying (the MTU check is covered by tests/packet_props.rs).
const OPTIONS: RespondOptions =
    RespondOptions { verify_udp_checksum: true, reply_ttl: DEFAULT_TTL, reply_dscp: 0, mtu: usize::MAX };

/// Where a reply's UDP payload starts for the request `d`: the reply's IPv4 header has no options.
fn reply_payload_offset(d: &View) -> usize {
    d.l3 + match d.ip {
        IpVersion::V4 => ipv4::MIN_HEADER_LEN,
        IpVersion::V6 => ipv6::HEADER_LEN,
    } + udp::HEADER_LEN
}

/// The sockperf header flags (see `shunt::handler::Sockperf`), in the u16 at bytes 8..10 of its header.
const SOCKPERF_FLAGS: Range<usize> = 8..10;
const CLIENT: u16 = 1;
const PONG_REQUEST: u16 = 2;

/// `f` (a range within a header) moved to the header starting at `base`.
pub fn at(base: usize, f: Field) -> Range<usize> {
    base + f.start..base + f.end
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The big-endian u16 in field `f` of the header at `base`.
pub fn get16(b: &[u8], base: usize, f: Field) -> u16 {
    be16(b, base + f.start)
}

/// Writes `v` into field `f` of the header at `base`.
pub fn set16(b: &mut [u8], base: usize, f: Field, v: u16) {
    b[at(base, f)].copy_from_slice(&v.to_be_bytes());
}

/// Where the EtherType that announces the IP header at `l3` sits: the Ethernet header's, or the VLAN tag's.
pub fn ethertype_at(l3: usize) -> usize {
    if l3 == eth::HEADER_LEN {
        eth::ETHERTYPE.start
    } else {
        eth::HEADER_LEN + vlan::ETHERTYPE.start
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Naive checksums
// ---------------------------------------------------------------------------------------------------------------

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

/// The UDP pseudo-header of a `segment_len`-byte segment (RFC 768 / RFC 8200 §8.1), byte by byte.
pub fn pseudo_header(src: &[u8], dst: &[u8], segment_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 4 {
        p.extend_from_slice(&[0, IPPROTO_UDP]);
        p.extend_from_slice(&(segment_len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(segment_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, IPPROTO_UDP]);
    }
    p
}

/// Whether the UDP `segment` (checksum included) verifies against its IPv4 or IPv6 pseudo-header.
pub fn udp_verifies(src: &[u8], dst: &[u8], segment: &[u8]) -> bool {
    let mut all = pseudo_header(src, dst, segment.len());
    all.extend_from_slice(segment);
    naive_sum(&all) == 0xffff
}

/// The UDP checksum a `segment` whose checksum field is zero should carry, naively (zero sent as 0xffff).
pub fn naive_udp_checksum(src: &[u8], dst: &[u8], segment: &[u8]) -> u16 {
    let mut all = pseudo_header(src, dst, segment.len());
    all.extend_from_slice(segment);
    match !naive_sum(&all) {
        0 => 0xffff,
        c => c,
    }
}

/// What `Datagram::udp_checksum` must say of `segment` (as long as its UDP length says), decided naively in the
/// documented order: zero first, then a verifying sum, then the pseudo-header sum alone.
pub fn naive_classify(v4: bool, src: &[u8], dst: &[u8], segment: &[u8]) -> UdpChecksum {
    let field = get16(segment, 0, udp::CHECKSUM);
    if field == 0 {
        if v4 {
            UdpChecksum::Absent
        } else {
            UdpChecksum::Wrong
        }
    } else if udp_verifies(src, dst, segment) {
        UdpChecksum::Correct
    } else if field == naive_sum(&pseudo_header(src, dst, segment.len())) {
        UdpChecksum::PseudoHeaderOnly
    } else {
        UdpChecksum::Wrong
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The view: everything a Datagram's accessors say
// ---------------------------------------------------------------------------------------------------------------

/// What a [`Datagram`] says through its accessors, plus where its IP and UDP headers start (derived: `l3` from
/// the VLAN tag, `udp_at` from the payload offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub ip: IpVersion,
    pub vlan_tci: Option<u16>,
    pub l3: usize,
    pub udp_at: usize,
    pub payload_offset: usize,
    pub payload_len: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub udp_checksum: UdpChecksum,
}

/// Reads every accessor of `d`.
pub fn view<B: Buffer>(d: &Datagram<B>) -> View {
    let l3 = eth::HEADER_LEN + if d.vlan_tci().is_some() { vlan::TAG_LEN } else { 0 };
    assert_eq!(d.payload().len(), d.payload_len(), "payload() and payload_len() disagree");
    View {
        ip: d.ip(),
        vlan_tci: d.vlan_tci(),
        l3,
        udp_at: d.payload_offset() - udp::HEADER_LEN,
        payload_offset: d.payload_offset(),
        payload_len: d.payload_len(),
        src: d.src(),
        dst: d.dst(),
        payload: d.payload().to_vec(),
        udp_checksum: d.udp_checksum(),
    }
}

/// `packet::parse(frame)` read through every accessor.
pub fn parse_view(frame: &[u8]) -> Result<Option<View>, Malformed> {
    packet::parse(frame).map(|o| o.map(|d| view(&d)))
}

/// The IP addresses of the datagram `v` describes in `frame`.
fn ip_addrs<'a>(frame: &'a [u8], v: &View) -> (&'a [u8], &'a [u8]) {
    match v.ip {
        IpVersion::V4 => (&frame[at(v.l3, ipv4::SRC)], &frame[at(v.l3, ipv4::DST)]),
        IpVersion::V6 => (&frame[at(v.l3, ipv6::SRC)], &frame[at(v.l3, ipv6::DST)]),
    }
}

/// Re-derives from the bytes of `frame` everything the view `v` of it claims (EtherType, VLAN tag, version, IHL,
/// a verifying IPv4 header checksum, not a fragment, protocol / next header UDP, addresses, ports, UDP length,
/// payload, the checksum's classification). Returns where the IP datagram ends (what follows is padding).
pub fn check_view(frame: &[u8], v: &View) -> usize {
    assert!(v.l3 < v.udp_at, "{v:?}");
    assert_eq!(v.udp_at + udp::HEADER_LEN, v.payload_offset, "{v:?}");
    assert!(v.payload_offset + v.payload_len <= frame.len(), "{v:?} in {} bytes", frame.len());
    match v.vlan_tci {
        None => assert_eq!(v.l3, eth::HEADER_LEN),
        Some(tci) => {
            assert_eq!(v.l3, eth::HEADER_LEN + vlan::TAG_LEN);
            assert!(matches!(get16(frame, 0, eth::ETHERTYPE), ETHERTYPE_VLAN | ETHERTYPE_QINQ));
            assert_eq!(get16(frame, eth::HEADER_LEN, vlan::TCI), tci);
        }
    }
    let l3 = &frame[v.l3..];
    let header = v.udp_at - v.l3;
    let ip_payload = match v.ip {
        IpVersion::V4 => {
            assert_eq!(be16(frame, ethertype_at(v.l3)), ETHERTYPE_IPV4);
            assert_eq!(l3[ipv4::VER_IHL] >> 4, 4);
            assert_eq!(header, usize::from(l3[ipv4::VER_IHL] & 0x0f) * 4);
            assert!((ipv4::MIN_HEADER_LEN..=ipv4::MAX_HEADER_LEN).contains(&header));
            assert_eq!(naive_sum(&l3[..header]), 0xffff, "IPv4 header checksum accepted but does not verify");
            assert_eq!(l3[ipv4::PROTOCOL], IPPROTO_UDP);
            assert_eq!(get16(l3, 0, ipv4::FLAGS_FRAG) & ipv4::FRAGMENT_MASK, 0, "fragment accepted");
            let s: [u8; 4] = l3[ipv4::SRC].try_into().unwrap();
            let d: [u8; 4] = l3[ipv4::DST].try_into().unwrap();
            assert_eq!((v.src.ip(), v.dst.ip()), (IpAddr::from(s), IpAddr::from(d)));
            let total = usize::from(get16(l3, 0, ipv4::TOTAL_LEN));
            assert!(total <= l3.len());
            total - header
        }
        IpVersion::V6 => {
            assert_eq!(be16(frame, ethertype_at(v.l3)), ETHERTYPE_IPV6);
            assert_eq!(l3[ipv6::VER_TC_FLOW.start] >> 4, 6);
            assert_eq!(header, ipv6::HEADER_LEN);
            assert_eq!(l3[ipv6::NEXT_HEADER], IPPROTO_UDP);
            let s: [u8; 16] = l3[ipv6::SRC].try_into().unwrap();
            let d: [u8; 16] = l3[ipv6::DST].try_into().unwrap();
            assert_eq!((v.src.ip(), v.dst.ip()), (IpAddr::from(s), IpAddr::from(d)));
            let payload = usize::from(get16(l3, 0, ipv6::PAYLOAD_LEN));
            assert!(payload > 0 && ipv6::HEADER_LEN + payload <= l3.len());
            payload
        }
    };
    assert_eq!(v.src.port(), get16(frame, v.udp_at, udp::SRC_PORT));
    assert_eq!(v.dst.port(), get16(frame, v.udp_at, udp::DST_PORT));
    assert_eq!(usize::from(get16(frame, v.udp_at, udp::LENGTH)), udp::HEADER_LEN + v.payload_len);
    assert!(udp::HEADER_LEN + v.payload_len <= ip_payload);
    assert_eq!(&v.payload[..], &frame[v.payload_offset..v.payload_offset + v.payload_len]);
    let (src, dst) = ip_addrs(frame, v);
    let segment = &frame[v.udp_at..v.payload_offset + v.payload_len];
    assert_eq!(v.udp_checksum, naive_classify(v.ip == IpVersion::V4, src, dst, segment), "udp_checksum()");
    v.udp_at + ip_payload
}

/// `reply` is a correct reply to `request`, parsed as `d`, carrying `payload`.
pub fn check_reply(request: &[u8], d: &View, reply: &[u8], payload: &[u8]) {
    let r = match parse_view(reply) {
        Ok(Some(r)) => r,
        other => panic!("reply does not parse: {other:?}"),
    };
    assert_eq!(check_view(reply, &r), reply.len(), "reply with padding");
    assert_eq!((r.ip, r.vlan_tci, r.l3), (d.ip, d.vlan_tci, d.l3));
    assert_eq!(r.payload_offset, reply_payload_offset(d), "no IPv4 options in a reply");
    assert_eq!((r.src, r.dst), (d.dst, d.src), "addresses and ports swapped");
    assert_eq!(r.udp_checksum, UdpChecksum::Correct, "replies carry a full, verifying UDP checksum");
    assert_eq!(reply.len(), r.payload_offset + payload.len());
    assert_eq!(&r.payload[..], payload);
    assert_eq!(&reply[eth::DST], &request[eth::SRC]);
    assert_eq!(&reply[eth::SRC], &request[eth::DST]);
    assert_eq!(&reply[eth::ETHERTYPE.start..r.l3], &request[eth::ETHERTYPE.start..d.l3], "EtherType / VLAN tag kept");
    let l3 = &reply[r.l3..r.udp_at];
    let segment = &reply[r.udp_at..];
    let sum = get16(segment, 0, udp::CHECKSUM);
    assert_ne!(sum, 0, "reply without UDP checksum");
    match r.ip {
        IpVersion::V4 => {
            assert_eq!(l3[ipv4::VER_IHL], 0x45, "IHL 5");
            assert_eq!(l3[ipv4::TOS], 0, "DSCP 0, not-ECT");
            assert_eq!(get16(l3, 0, ipv4::IDENT), 0, "ID 0");
            assert_eq!(get16(l3, 0, ipv4::FLAGS_FRAG), ipv4::DONT_FRAGMENT, "DF");
            assert_eq!(l3[ipv4::TTL], DEFAULT_TTL);
            assert_eq!(usize::from(get16(l3, 0, ipv4::TOTAL_LEN)), l3.len() + segment.len());
            assert_eq!(naive_sum(l3), 0xffff, "reply IPv4 header checksum");
            assert!(udp_verifies(&l3[ipv4::SRC], &l3[ipv4::DST], segment), "reply UDP checksum {sum:#06x} (IPv4)");
        }
        IpVersion::V6 => {
            assert_eq!(&l3[ipv6::VER_TC_FLOW], &[0x60, 0, 0, 0], "traffic class 0, flow label 0");
            assert_eq!(l3[ipv6::HOP_LIMIT], DEFAULT_TTL);
            assert_eq!(usize::from(get16(l3, 0, ipv6::PAYLOAD_LEN)), segment.len());
            assert!(udp_verifies(&l3[ipv6::SRC], &l3[ipv6::DST], segment), "reply UDP checksum {sum:#06x} (IPv6)");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Target `parse`
// ---------------------------------------------------------------------------------------------------------------

/// Target `parse`: `packet::parse` and `Datagram::parse` never panic; an accepted datagram's accessors agree with
/// the bytes (and its `udp_checksum` with the naive classification); `Datagram::parse` over shared and mutable
/// buffers with any `len` says what `parse` says of the first `len` bytes; trailing bytes (Ethernet padding) do
/// not change it, cutting one byte off the datagram makes it an `Err`; on a mutable buffer, the reply-side
/// methods hold together (`payload_room_mut` is `max_reply_payload` long and starts with the payload, a reply
/// one byte too large is refused and changes nothing).
pub fn parse(data: &[u8]) {
    let r = parse_view(data);
    for len in [data.len(), data.len() + 1, usize::MAX] {
        assert_eq!(Datagram::parse(data, len).map(|o| o.map(|d| view(&d))), r, "Datagram::parse(_, {len})");
    }
    // Any shorter received length: the same as parsing that prefix.
    let half = data.len() / 2;
    assert_eq!(Datagram::parse(data, half).map(|o| o.map(|d| view(&d))), parse_view(&data[..half]));

    let mut copy = data.to_vec();
    copy.resize(data.len() + ROOM, 0x5a);
    match Datagram::parse(&mut copy[..], data.len()) {
        Ok(Some(mut d)) => {
            assert_eq!(Ok(Some(view(&d))), r, "Datagram::parse(&mut [u8])");
            let max = d.max_reply_payload();
            assert_eq!(max, (data.len() + ROOM - d.payload_offset()).min(max_by_header(&view(&d))));
            let payload = d.payload().to_vec();
            let room = d.payload_room_mut();
            assert_eq!(room.len(), max);
            assert_eq!(&room[..payload.len()], &payload[..]);
            assert_eq!(
                d.write_reply(max + 1, OPTIONS.reply_headers()),
                Err(ReplyError::TooLarge { payload: max + 1, max })
            );
            assert_eq!(&copy[..data.len()], data, "a refused reply wrote to the frame");
        }
        other => assert_eq!(other.map(|o| o.map(|d| view(&d))), r, "Datagram::parse(&mut [u8])"),
    }

    match &r {
        Ok(Some(v)) => {
            let ip_end = check_view(data, v);
            let mut padded = data.to_vec();
            padded.extend_from_slice(&[0xff; 3]);
            assert_eq!(parse_view(&padded), r, "padding changed the parse");
            assert_eq!(parse_view(&data[..ip_end]), r, "removing the padding changed the parse");
            assert!(packet::parse(&data[..ip_end - 1]).is_err(), "a truncated datagram was accepted");
        }
        // Each error names a reason; its Display must not panic either.
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(None) => {}
    }
}

/// The largest reply payload the IP length fields of the datagram `v` allow.
fn max_by_header(v: &View) -> usize {
    match v.ip {
        IpVersion::V4 => usize::from(u16::MAX) - ipv4::MIN_HEADER_LEN - udp::HEADER_LEN,
        IpVersion::V6 => usize::from(u16::MAX) - udp::HEADER_LEN,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Targets `respond_echo` and `respond_sockperf`
// ---------------------------------------------------------------------------------------------------------------

/// Runs `handler` over `data` received into a buffer with [`ROOM`] bytes to spare, checks that `respond` agrees
/// with `parse` (`BadChecksum` exactly for a wrong UDP checksum, when verifying, and then with the frame left
/// alone), and returns the parse and the outcome with the buffer.
fn run<H: Handler>(handler: &mut H, data: &[u8], verify: bool) -> (Result<Option<View>, Malformed>, Outcome, Vec<u8>) {
    let parsed = parse_view(data);
    let mut buf = data.to_vec();
    buf.resize(data.len() + ROOM, 0xa5);
    let before = buf.clone();
    let out = respond(handler, &mut buf, data.len(), NOW, RespondOptions { verify_udp_checksum: verify, ..OPTIONS });
    match (out, &parsed) {
        (Outcome::BadChecksum, Ok(Some(v))) => {
            assert!(verify, "BadChecksum without verification");
            assert_eq!(v.udp_checksum, UdpChecksum::Wrong, "BadChecksum for {:?}", v.udp_checksum);
            assert_eq!(buf, before, "a refused request was written to");
        }
        (
            Outcome::Reply(_)
            | Outcome::HandlerDrop
            | Outcome::Handled
            | Outcome::ReplyTooLarge
            | Outcome::Amplification
            | Outcome::OverMtu,
            Ok(Some(v)),
        ) => {
            assert!(!verify || v.udp_checksum != UdpChecksum::Wrong, "{out:?} for a wrong UDP checksum");
        }
        (Outcome::Malformed(e), Err(p)) => assert_eq!(e, *p),
        (Outcome::NotOurs, Ok(None)) => {}
        (out, parsed) => panic!("respond gave {out:?} but parse gave {parsed:?}"),
    }
    (parsed, out, buf)
}

/// Target `respond_echo`: with and without checksum verification, a reply only for what parses (and, verifying,
/// not for a wrong checksum), and then one that parses back with verifying checksums and the same payload;
/// replying to the reply restores the request's addresses.
pub fn respond_echo(data: &[u8]) {
    for verify in [true, false] {
        let (parsed, out, mut buf) = run(&mut Echo, data, verify);
        match out {
            Outcome::Reply(n) => {
                let d = parsed.unwrap().unwrap();
                assert_eq!(n, reply_payload_offset(&d) + d.payload_len);
                check_reply(data, &d, &buf[..n], &d.payload);
                let reply = buf[..n].to_vec();
                let again = respond(&mut Echo, &mut buf, n, NOW, OPTIONS);
                assert_eq!(again, Outcome::Reply(n));
                let again = parse_view(&buf[..n]).unwrap().unwrap();
                assert_eq!((again.src, again.dst), (d.src, d.dst));
                assert_eq!(&buf[eth::DST.start..eth::SRC.end], &data[eth::DST.start..eth::SRC.end]);
                let off = reply_payload_offset(&d);
                assert_eq!(&buf[off..n], &reply[off..]);
            }
            Outcome::HandlerDrop
            | Outcome::Handled
            | Outcome::ReplyTooLarge
            | Outcome::Amplification
            | Outcome::OverMtu => {
                panic!("Echo gave {out:?}")
            }
            Outcome::BadChecksum | Outcome::Malformed(_) | Outcome::NotOurs => {
                assert!(!matches!(parsed, Ok(Some(_))) || verify, "unverified Echo gave {out:?}");
            }
        }
    }
}

/// Target `respond_sockperf`: replies exactly to CLIENT|PONG_REQUEST messages of at least 14 bytes (whose UDP
/// checksum is not wrong, when verifying), with the same length and CLIENT cleared, and drops everything else
/// that parses.
pub fn respond_sockperf(data: &[u8]) {
    for verify in [true, false] {
        let (parsed, out, buf) = run(&mut Sockperf, data, verify);
        let Ok(Some(d)) = parsed else { continue };
        let request = &d.payload;
        let asks = request.len() >= SOCKPERF_HEADER_LEN && {
            let f = be16(request, SOCKPERF_FLAGS.start);
            f & CLIENT != 0 && f & PONG_REQUEST != 0
        };
        match out {
            Outcome::Reply(n) => {
                assert!(asks, "Sockperf replied to {request:02x?}");
                assert_eq!(n, reply_payload_offset(&d) + d.payload_len);
                let mut expected = request.to_vec();
                let f = be16(request, SOCKPERF_FLAGS.start) & !CLIENT;
                expected[SOCKPERF_FLAGS].copy_from_slice(&f.to_be_bytes());
                check_reply(data, &d, &buf[..n], &expected);
            }
            Outcome::HandlerDrop => assert!(!asks, "Sockperf dropped a pong request"),
            Outcome::BadChecksum => {}
            other => panic!("Sockperf gave {other:?} for a parsed datagram"),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Target `write_request`
// ---------------------------------------------------------------------------------------------------------------

/// A `write_request` call decoded from fuzzer bytes (see [`BuildInput::decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInput {
    pub spec: FlowSpec,
    pub buf_len: usize,
    pub payload_len: usize,
    /// Bytes the buffer is filled with (repeated), before the call.
    pub fill: Vec<u8>,
}

/// Reads fixed-size fields off the front of the fuzzer's bytes; missing bytes read as zero.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let n = N.min(self.0.len());
        a[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
}

/// Length classes of [`BuildInput`]'s encoding: how the 16-bit value is turned into a length.
fn length_of(class: u8, raw: u16) -> usize {
    match class {
        0 => usize::from(raw as u8),              // 0..=255: around the header sizes
        1 => usize::from(raw) % 2048,             // a frame's worth
        2 => 65_400 + usize::from(raw as u8),     // around the 64 KiB IP length limits
        3 => usize::MAX - usize::from(raw as u8), // absurd
        _ => usize::from(raw),
    }
}

impl BuildInput {
    /// The encoding: byte 0 holds flags (bit 0: VLAN tag; bit 1: source IPv6; bit 2: destination IPv6; bits 3-4:
    /// the buffer length's class; bits 5-7: the payload length's class, see `length_of`), then source MAC (6),
    /// destination MAC (6), TCI (2), source IP (16; the first 4 for IPv4), destination IP (16), source port (2),
    /// destination port (2), buffer length (2), payload length (2), then the fill bytes. The buffer length has
    /// no absurd class: its class 3 is the 16-bit value as it is.
    pub fn decode(data: &[u8]) -> BuildInput {
        let mut r = Reader(data);
        let [flags] = r.take::<1>();
        let src_mac = r.take::<6>();
        let dst_mac = r.take::<6>();
        let tci = r.u16();
        let src_ip = r.take::<16>();
        let dst_ip = r.take::<16>();
        let (sport, dport) = (r.u16(), r.u16());
        let (buf_raw, payload_raw) = (r.u16(), r.u16());
        let addr = |v6: bool, ip: [u8; 16], port: u16| {
            let ip = if v6 { IpAddr::from(ip) } else { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) };
            SocketAddr::new(ip, port)
        };
        let spec = FlowSpec {
            src_mac,
            dst_mac,
            vlan_tci: (flags & 1 != 0).then_some(tci),
            src: addr(flags & 2 != 0, src_ip, sport),
            dst: addr(flags & 4 != 0, dst_ip, dport),
        };
        let buf_class = match (flags >> 3) & 3 {
            3 => 4,
            c => c,
        };
        BuildInput {
            spec,
            buf_len: length_of(buf_class, buf_raw),
            payload_len: length_of(flags >> 5, payload_raw),
            fill: r.0.to_vec(),
        }
    }

    /// The inverse of [`BuildInput::decode`], for the seeds: `buf_class` / `payload_class` as in `length_of`.
    pub fn encode(spec: &FlowSpec, buf: (u8, u16), payload: (u8, u16), fill: &[u8]) -> Vec<u8> {
        let octets = |a: &SocketAddr| match a.ip() {
            IpAddr::V4(ip) => {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&ip.octets());
                o
            }
            IpAddr::V6(ip) => ip.octets(),
        };
        let flags = u8::from(spec.vlan_tci.is_some())
            | u8::from(spec.src.is_ipv6()) << 1
            | u8::from(spec.dst.is_ipv6()) << 2
            | (buf.0 & 3) << 3
            | (payload.0 & 7) << 5;
        let mut e = vec![flags];
        e.extend_from_slice(&spec.src_mac);
        e.extend_from_slice(&spec.dst_mac);
        e.extend_from_slice(&spec.vlan_tci.unwrap_or(0).to_be_bytes());
        e.extend_from_slice(&octets(&spec.src));
        e.extend_from_slice(&octets(&spec.dst));
        e.extend_from_slice(&spec.src.port().to_be_bytes());
        e.extend_from_slice(&spec.dst.port().to_be_bytes());
        e.extend_from_slice(&buf.1.to_be_bytes());
        e.extend_from_slice(&payload.1.to_be_bytes());
        e.extend_from_slice(fill);
        e
    }

    /// The buffer before the call: `fill` repeated (zeros if empty), XORed with the position.
    pub fn buffer(&self) -> Vec<u8> {
        (0..self.buf_len).map(|i| self.fill.get(i % self.fill.len().max(1)).copied().unwrap_or(0) ^ (i as u8)).collect()
    }
}

/// What `write_request` must return, worked out from the header sizes and the IP length fields.
pub fn expected_build(spec: &FlowSpec, buf_len: usize, payload_len: usize) -> Result<usize, BuildError> {
    if spec.src.is_ipv4() != spec.dst.is_ipv4() {
        return Err(BuildError::MixedVersions);
    }
    let l3 = eth::HEADER_LEN + if spec.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 };
    let ip_header = if spec.src.is_ipv4() { ipv4::MIN_HEADER_LEN } else { ipv6::HEADER_LEN };
    let off = l3 + ip_header + udp::HEADER_LEN;
    if buf_len < off {
        return Err(BuildError::BufferTooSmall { need: off, have: buf_len });
    }
    // IPv4's total length counts its header too; IPv6's payload length only what follows it.
    let by_header = (if spec.src.is_ipv4() { 65535 - ipv4::MIN_HEADER_LEN } else { 65535 }) - udp::HEADER_LEN;
    let max = (buf_len - off).min(by_header);
    if payload_len > max {
        return Err(BuildError::TooLarge { payload: payload_len, max });
    }
    Ok(off + payload_len)
}

/// Target `write_request`: never panics for any flow, buffer length (0 included) and payload length (usize::MAX
/// included); returns exactly [`expected_build`]; writes nothing when it fails and nothing but the headers when
/// it succeeds; what it builds parses back (every accessor) with a `Correct` UDP checksum, and Echo answers it.
/// The same input goes through `write_datagram` too (see [`write_datagram`]).
pub fn write_request(data: &[u8]) {
    let input = BuildInput::decode(data);
    write_datagram(&input);
    let before = input.buffer();
    let mut frame = before.clone();
    let r = packet::write_request(&mut frame, &input.spec, input.payload_len);
    assert_eq!(r, expected_build(&input.spec, input.buf_len, input.payload_len), "{input:?}");
    let Ok(n) = r else {
        assert_eq!(frame, before, "a failed build wrote to the buffer");
        return;
    };
    let spec = &input.spec;
    let off = spec.payload_offset();
    assert_eq!(&frame[off..], &before[off..], "payload and the rest of the buffer untouched");
    let v = parse_view(&frame[..n]).unwrap_or_else(|e| panic!("built frame malformed: {e}")).expect("not ours");
    assert_eq!(check_view(&frame[..n], &v), n);
    assert_eq!(v.ip, if spec.src.is_ipv4() { IpVersion::V4 } else { IpVersion::V6 });
    assert_eq!((v.vlan_tci, v.src, v.dst), (spec.vlan_tci, spec.src, spec.dst));
    assert_eq!((v.payload_offset, v.payload_len), (off, input.payload_len));
    assert_eq!(v.udp_checksum, UdpChecksum::Correct);
    assert_eq!(&frame[eth::DST], &spec.dst_mac);
    assert_eq!(&frame[eth::SRC], &spec.src_mac);
    match v.ip {
        IpVersion::V4 => {
            assert_eq!(frame[v.l3 + ipv4::TTL], DEFAULT_TTL);
            assert_eq!(get16(&frame, v.l3, ipv4::FLAGS_FRAG), ipv4::DONT_FRAGMENT);
        }
        IpVersion::V6 => assert_eq!(frame[v.l3 + ipv6::HOP_LIMIT], DEFAULT_TTL),
    }
    let request = frame[..n].to_vec();
    assert_eq!(respond(&mut Echo, &mut frame, n, NOW, OPTIONS), Outcome::Reply(n));
    check_reply(&request, &v, &frame[..n], &request[off..n]);
}

/// `packet::write_datagram` (a handler's send) on the same input, its IP header fields taken from the fill
/// bytes (TTL = fill[0] | 1, TOS = fill[1], MTU = fill[2..4] as a u16, or none when fill[2] is 0xff): never
/// panics; the result is [`expected_build`]'s, or `OverMtu` (writing nothing) for an IP packet over the MTU;
/// what it builds parses back with that TTL / hop limit and traffic class and a `Correct` UDP checksum.
fn write_datagram(input: &BuildInput) {
    let f = |i: usize| input.fill.get(i).copied().unwrap_or(0);
    let ttl = f(0) | 1;
    let tos = f(1);
    let mtu = if f(2) == 0xff { usize::MAX } else { usize::from(u16::from_be_bytes([f(2), f(3)])) };
    let headers = packet::ReplyHeaders { ttl, dscp: tos >> 2, ecn: packet::Ecn::from_traffic_class(tos), mtu };
    let before = input.buffer();
    let mut frame = before.clone();
    let r = packet::write_datagram(&mut frame, &input.spec, input.payload_len, headers);
    let l3 = eth::HEADER_LEN + if input.spec.vlan_tci.is_some() { vlan::TAG_LEN } else { 0 };
    let expected = expected_build(&input.spec, input.buf_len, input.payload_len).and_then(|n| {
        if n - l3 > mtu {
            Err(BuildError::OverMtu { ip_len: n - l3, mtu })
        } else {
            Ok(n)
        }
    });
    assert_eq!(r, expected, "{input:?}");
    let Ok(n) = r else {
        assert_eq!(frame, before, "a failed build wrote to the buffer");
        return;
    };
    let d = packet::parse(&frame[..n]).unwrap_or_else(|e| panic!("built frame malformed: {e}")).expect("not ours");
    assert_eq!((d.ttl(), d.traffic_class(), d.udp_checksum()), (ttl, tos, UdpChecksum::Correct));
    assert_eq!((d.src(), d.dst(), d.payload_len()), (input.spec.src, input.spec.dst, input.payload_len));
}

// ---------------------------------------------------------------------------------------------------------------
// Target `checksum`
// ---------------------------------------------------------------------------------------------------------------

/// Target `checksum`: `add` / `fold` / `internet` against the naive sum; a running sum carried in (any u64)
/// equals carrying in its folded value; chaining `add` over pieces cut at even offsets (the cuts taken from the
/// input) equals one `add`; the pseudo-header sums equal the pseudo-headers summed byte by byte; `udp_ipv4` /
/// `udp_ipv6` equal the naive checksum, are never 0, and written into the segment make it verify (the
/// pseudo-header sum carried over it folds to 0xffff).
pub fn checksum(data: &[u8]) {
    // The first bytes parameterise; the whole input is the data summed.
    let mut r = Reader(data);
    let start = u64::from_be_bytes(r.take::<8>());
    let cuts = r.take::<4>();
    let src4 = r.take::<4>();
    let dst4 = r.take::<4>();
    let src6 = r.take::<16>();
    let dst6 = r.take::<16>();

    assert_eq!(checksum::fold(checksum::add(0, data)), naive_sum(data));
    assert_eq!(checksum::internet(data), !naive_sum(data));
    let folded = checksum::fold(start);
    assert_eq!(folded == 0, start == 0);
    assert_eq!(u64::from(folded) % 0xffff, start % 0xffff);
    let whole = checksum::fold(checksum::add(start, data));
    assert_eq!(whole, checksum::fold(checksum::add(u64::from(folded), data)));
    if start != 0 {
        let mut prefixed = folded.to_be_bytes().to_vec();
        prefixed.extend_from_slice(data);
        assert_eq!(whole, naive_sum(&prefixed));
    }

    let mut points: Vec<usize> = cuts.iter().map(|c| (usize::from(*c) * data.len() / 255) & !1).collect();
    points.extend([0, data.len()]);
    points.sort_unstable();
    let mut sum = start;
    for w in points.windows(2) {
        sum = checksum::add(sum, &data[w[0]..w[1]]);
    }
    assert_eq!(checksum::fold(sum), whole, "chained add over {points:?}");

    // The data as a UDP segment (whatever its length), over IPv4 and over IPv6.
    for (src, dst) in [(&src4[..], &dst4[..]), (&src6[..], &dst6[..])] {
        let (pseudo, c) = if src.len() == 4 {
            let (s, d) = (src4, dst4);
            (checksum::pseudo_header_v4(s, d, data.len()), checksum::udp_ipv4(s, d, data))
        } else {
            (checksum::pseudo_header_v6(&src6, &dst6, data.len()), checksum::udp_ipv6(&src6, &dst6, data))
        };
        assert_eq!(checksum::fold(pseudo), naive_sum(&pseudo_header(src, dst, data.len())));
        assert_eq!(c, naive_udp_checksum(src, dst, data));
        assert_ne!(c, 0, "a UDP checksum is never sent as 0");
        // Written into a segment whose checksum field was zero, it makes the segment verify.
        if data.len() >= udp::HEADER_LEN {
            let mut segment = data.to_vec();
            segment[udp::CHECKSUM].copy_from_slice(&[0, 0]);
            let c = if src.len() == 4 {
                checksum::udp_ipv4(src4, dst4, &segment)
            } else {
                checksum::udp_ipv6(&src6, &dst6, &segment)
            };
            segment[udp::CHECKSUM].copy_from_slice(&c.to_be_bytes());
            assert_eq!(checksum::fold(checksum::add(pseudo, &segment)), 0xffff);
            assert!(udp_verifies(src, dst, &segment));
        }
    }
}
