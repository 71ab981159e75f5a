//! The malformed corpus through the real XDP program and worker in the lab: frames built byte for byte on
//! the client and sent with an AF_PACKET socket (the kernel's own sockets cannot make most of them), replies
//! captured the same way. Every case has the place it must be counted in, known from how it was built:
//! the XDP program's `malformed` (headers it cannot read) or `passed` (not ours: fragments, extension
//! headers, stacked tags, other protocols and ports), the worker's `dropped_malformed` or
//! `dropped_bad_checksum`, the kernel's AF_XDP `rx_dropped` (a frame larger than a UMEM frame), or a reply.
//! Random frames are predicted by `shunt::handler::respond`, the worker's own pure step, so the test checks
//! that the datapath around it counts and answers exactly what it decides. Nothing malformed is answered,
//! and nothing crashes.
//!
//! The second test echoes IPv6 over 802.1Q and 802.1ad through the same path. The test kernel has no 802.1Q
//! support (CONFIG_VLAN_8021Q is off), so the tagged frames are hand-built too, and the replies' tags are read
//! from the packet socket's auxiliary data.

mod common;

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{require_lab, Lab, RawPort, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::{
    handler::{respond, Echo, Outcome, RespondOptions, Time},
    packet::{
        checksum,
        field::{eth, ipv4, ipv6, udp},
        parse, FlowSpec, UdpChecksum,
    },
};

const PORT: u16 = 9000;
/// Source port of every hand-built request; UDP sockets bound to it in the client namespace absorb the
/// replies the kernel would otherwise answer with ICMP port unreachable.
const CLIENT_PORT: u16 = 47_321;

/// Where a frame must be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Place {
    /// Answered (a reply with this frame's payload comes back).
    Reply,
    /// The XDP program's `malformed` counter (passed to the kernel, which drops it).
    XdpMalformed,
    /// The XDP program's `passed` counter (not ours).
    XdpPassed,
    /// The worker's `dropped_malformed`.
    WorkerMalformed,
    /// The worker's `dropped_bad_checksum`.
    BadChecksum,
    /// The kernel's AF_XDP `rx_dropped`: larger than a UMEM frame.
    KernelDropped,
}

struct Case {
    name: String,
    frame: Vec<u8>,
    place: Place,
}

fn spec(lab: &Lab, v6: bool, vlan: Option<u16>) -> FlowSpec {
    let (src, dst): (SocketAddr, SocketAddr) = if v6 {
        ((CLIENT_V6, CLIENT_PORT).into(), (SERVER_V6, PORT).into())
    } else {
        ((CLIENT_V4, CLIENT_PORT).into(), (SERVER_V4, PORT).into())
    };
    FlowSpec { src_mac: lab.client_mac(), dst_mac: lab.server_mac(), vlan_tci: vlan, src, dst }
}

/// A valid request carrying `payload` (which should be unique: replies are matched by it).
fn request(lab: &Lab, v6: bool, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let spec = spec(lab, v6, vlan);
    common::request_frame(&spec, payload)
}

fn tag(name: &str) -> Vec<u8> {
    let mut p = format!("corpus:{name}:").into_bytes();
    p.resize(48, b'.');
    p
}

/// Recomputes the IPv4 header checksum of an untagged frame (header length from its IHL).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let l3 = eth::HEADER_LEN;
    let ihl = usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4;
    frame[l3 + ipv4::CHECKSUM.start..l3 + ipv4::CHECKSUM.end].copy_from_slice(&[0, 0]);
    let sum = checksum::internet(&frame[l3..l3 + ihl]);
    frame[l3 + ipv4::CHECKSUM.start..l3 + ipv4::CHECKSUM.end].copy_from_slice(&sum.to_be_bytes());
}

/// Recomputes the UDP checksum of an untagged IPv4 frame from its headers.
fn fix_udp_checksum_v4(frame: &mut [u8]) {
    let l3 = eth::HEADER_LEN;
    let ihl = usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4;
    let u = l3 + ihl;
    let len = usize::from(u16::from_be_bytes([frame[u + 4], frame[u + 5]]));
    frame[u + udp::CHECKSUM.start..u + udp::CHECKSUM.end].copy_from_slice(&[0, 0]);
    let src: [u8; 4] = frame[l3 + ipv4::SRC.start..l3 + ipv4::SRC.end].try_into().unwrap();
    let dst: [u8; 4] = frame[l3 + ipv4::DST.start..l3 + ipv4::DST.end].try_into().unwrap();
    let sum = checksum::udp_ipv4(src, dst, &frame[u..u + len]);
    frame[u + udp::CHECKSUM.start..u + udp::CHECKSUM.end].copy_from_slice(&sum.to_be_bytes());
}

fn set16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The hand-made corpus: every kind of damage the issue names, each with the place it must be counted.
fn corpus(lab: &Lab) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: String, frame: Vec<u8>, place: Place| cases.push(Case { name, frame, place });
    let l3 = eth::HEADER_LEN;
    let u4 = l3 + ipv4::MIN_HEADER_LEN;
    let u6 = l3 + ipv6::HEADER_LEN;

    // Valid ones, answered: plain, IPv4 options, zero-length payloads, one 802.1ad tag.
    add("v4".into(), request(lab, false, None, &tag("v4")), Place::Reply);
    add("v6".into(), request(lab, true, None, &tag("v6")), Place::Reply);
    for v6 in [false, true] {
        add(format!("zero-length-v{}", if v6 { 6 } else { 4 }), request(lab, v6, None, b""), Place::Reply);
    }
    {
        // IHL 6: four bytes of NOP options between the fixed header and UDP.
        let base = request(lab, false, None, &tag("v4-options"));
        let mut f = base[..u4].to_vec();
        f.extend_from_slice(&[1, 1, 1, 1]);
        f.extend_from_slice(&base[u4..]);
        f[l3 + ipv4::VER_IHL] = 0x46;
        let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) + 4;
        set16(&mut f, l3 + ipv4::TOTAL_LEN.start, total);
        fix_ipv4_checksum(&mut f);
        add("v4-options".into(), f, Place::Reply);
    }
    {
        let mut f = request(lab, true, Some(7), &tag("v6-8021ad"));
        set16(&mut f, eth::ETHERTYPE.start, 0x88a8);
        add("v6-8021ad".into(), f, Place::Reply);
    }

    // Every truncation of a valid IPv4 and IPv6 request: inside the IP header or the UDP header the XDP
    // program cannot read the port (malformed); inside the payload the worker finds the lengths wrong.
    let v4 = request(lab, false, None, &tag("v4-trunc"));
    for len in eth::HEADER_LEN..v4.len() {
        let place = if len < u4 + udp::HEADER_LEN { Place::XdpMalformed } else { Place::WorkerMalformed };
        add(format!("v4-truncated-{len}"), v4[..len].to_vec(), place);
    }
    let v6 = request(lab, true, None, &tag("v6-trunc"));
    for len in eth::HEADER_LEN..v6.len() {
        let place = if len < u6 + udp::HEADER_LEN { Place::XdpMalformed } else { Place::WorkerMalformed };
        add(format!("v6-truncated-{len}"), v6[..len].to_vec(), place);
    }

    // IPv4 header fields.
    for ihl in 0..5u8 {
        let mut f = request(lab, false, None, &tag(&format!("ihl{ihl}")));
        f[l3 + ipv4::VER_IHL] = 0x40 | ihl;
        add(format!("v4-ihl-{ihl}"), f, Place::XdpMalformed);
    }
    {
        // IHL 15 (60 bytes) over a 20-byte header: the XDP program reads a "UDP header" inside the payload,
        // whose destination port this payload makes 9000; the worker finds the header checksum wrong.
        let mut p = tag("ihl15");
        let fake_port_at = (l3 + ipv4::MAX_HEADER_LEN + udp::DST_PORT.start) - u4 - udp::HEADER_LEN;
        p[fake_port_at..fake_port_at + 2].copy_from_slice(&PORT.to_be_bytes());
        let mut f = request(lab, false, None, &p);
        f[l3 + ipv4::VER_IHL] = 0x4f;
        add("v4-ihl-15".into(), f, Place::WorkerMalformed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-version6"));
        f[l3 + ipv4::VER_IHL] = 0x65;
        add("v4-ethertype-version-6".into(), f, Place::XdpMalformed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-total-short"));
        set16(&mut f, l3 + ipv4::TOTAL_LEN.start, 27);
        fix_ipv4_checksum(&mut f);
        add("v4-total-length-below-headers".into(), f, Place::XdpMalformed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-total-long"));
        let n = f.len() as u16;
        set16(&mut f, l3 + ipv4::TOTAL_LEN.start, n);
        fix_ipv4_checksum(&mut f);
        add("v4-total-length-beyond-frame".into(), f, Place::WorkerMalformed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-bad-ip-checksum"));
        f[l3 + ipv4::CHECKSUM.start] ^= 0x10;
        add("v4-header-checksum".into(), f, Place::WorkerMalformed);
    }
    // UDP length.
    for (name, udp_len) in [("v4-udp-length-7", 7u16), ("v4-udp-length-beyond", 200)] {
        let mut f = request(lab, false, None, &tag(name));
        set16(&mut f, u4 + udp::LENGTH.start, udp_len);
        add(name.into(), f, Place::WorkerMalformed);
    }
    for (name, udp_len) in [("v6-udp-length-0", 0u16), ("v6-udp-length-beyond", 300)] {
        let mut f = request(lab, true, None, &tag(name));
        set16(&mut f, u6 + udp::LENGTH.start, udp_len);
        add(name.into(), f, Place::WorkerMalformed);
    }
    // IPv6 payload length.
    for (name, len) in [("v6-payload-length-0", 0u16), ("v6-payload-length-beyond", 1000)] {
        let mut f = request(lab, true, None, &tag(name));
        set16(&mut f, l3 + ipv6::PAYLOAD_LEN.start, len);
        add(name.into(), f, Place::WorkerMalformed);
    }
    // UDP checksums that do not verify.
    for v6 in [false, true] {
        let name = format!("v{}-payload-flipped", if v6 { 6 } else { 4 });
        let mut f = request(lab, v6, None, &tag(&name));
        let last = f.len() - 1;
        f[last] ^= 0x01;
        add(name, f, Place::BadChecksum);
    }
    {
        let mut f = request(lab, true, None, &tag("v6-zero-checksum"));
        set16(&mut f, u6 + udp::CHECKSUM.start, 0);
        add("v6-zero-checksum".into(), f, Place::BadChecksum);
    }

    // Not ours: the kernel's (fragments, extension headers, stacked tags, other protocols and ports).
    for (name, flags) in [("v4-more-fragments", 0x2000u16), ("v4-fragment-offset", 0x0010)] {
        let mut f = request(lab, false, None, &tag(name));
        set16(&mut f, l3 + ipv4::FLAGS_FRAG.start, flags);
        fix_ipv4_checksum(&mut f);
        add(name.into(), f, Place::XdpPassed);
    }
    {
        // A hop-by-hop options header (8 bytes: next header UDP, length 0, PadN) before UDP.
        let base = request(lab, true, None, &tag("v6-hop-by-hop"));
        let mut f = base[..u6].to_vec();
        f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        f.extend_from_slice(&base[u6..]);
        f[l3 + ipv6::NEXT_HEADER] = 0;
        let len = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + 8;
        set16(&mut f, l3 + ipv6::PAYLOAD_LEN.start, len);
        add("v6-extension-header".into(), f, Place::XdpPassed);
    }
    {
        // 802.1ad outer tag, then an 802.1Q tag: the XDP program reads one tag and finds 0x8100 inside.
        let inner = request(lab, true, Some(7), &tag("qinq"));
        let mut f = inner[..eth::ETHERTYPE.start].to_vec();
        f.extend_from_slice(&0x88a8u16.to_be_bytes());
        f.extend_from_slice(&100u16.to_be_bytes());
        f.extend_from_slice(&inner[eth::ETHERTYPE.start..]);
        add("qinq-stack".into(), f, Place::XdpPassed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-tcp"));
        f[l3 + ipv4::PROTOCOL] = 6;
        fix_ipv4_checksum(&mut f);
        add("v4-tcp-to-port".into(), f, Place::XdpPassed);
    }
    {
        let mut f = request(lab, false, None, &tag("v4-other-port"));
        set16(&mut f, u4 + udp::DST_PORT.start, PORT + 1);
        fix_udp_checksum_v4(&mut f);
        add("v4-other-port".into(), f, Place::XdpPassed);
    }
    // Larger than a UMEM frame (4096 bytes less the kernel's 256 of headroom): the AF_XDP receive path
    // drops it and counts it (the lab's MTU is raised for this).
    {
        let big = vec![b'b'; 5000];
        add("v4-oversize".into(), request(lab, false, None, &big), Place::KernelDropped);
    }
    cases
}

/// A tiny deterministic generator (the test must be reproducible).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// Whether the XDP program's source filter (limits.filter_sources, on in the lab config with the default
/// deny_source_ports) drops a request from `src`:`sport` (docs/operations.md, "Protecting the service").
fn filtered(src: std::net::Ipv4Addr, sport: u16) -> bool {
    let first = src.octets()[0];
    first == 0
        || first == 127
        || first >= 224
        || src == SERVER_V4
        || sport == 0
        || [17, 19, 53, 123, 161, 389, 1900, 11211].contains(&sport)
}

/// Random IPv4 frames to the served port and address that the XDP program redirects unless their random
/// source is filtered (version, IHL, protocol, total length, fragment bits and destination address fixed),
/// everything else random, in four
/// strata that reach each of the worker's checks and its handler. Returns the frames and how many the
/// worker's pure step answers, rejects as malformed, rejects for the checksum, and the filter drops.
fn random_redirected(lab: &Lab, rng: &mut XorShift, n: usize) -> (Vec<Vec<u8>>, [u64; 4]) {
    let l3 = eth::HEADER_LEN;
    let u4 = l3 + ipv4::MIN_HEADER_LEN;
    let mut frames = Vec::new();
    let mut predicted = [0u64; 4];
    for i in 0..n {
        let mut f = request(lab, false, None, &[0u8; 64]);
        // A quarter each: random IPv4 header checksum; correct header checksum with a random UDP length;
        // correct lengths with a random UDP checksum; everything correct around random addresses and data.
        // The destination address stays the server's: another one is passed to the kernel (other_address).
        let mut fixed =
            vec![l3, l3 + 2, l3 + 3, l3 + 6, l3 + 7, l3 + 9, l3 + 16, l3 + 17, l3 + 18, l3 + 19, u4 + 2, u4 + 3];
        if i % 4 >= 2 {
            fixed.extend([u4 + 4, u4 + 5]);
        }
        let keep: Vec<(usize, u8)> = fixed.iter().map(|&a| (a, f[a])).collect();
        rng.fill(&mut f[l3..]);
        for (a, v) in keep {
            f[a] = v;
        }
        if i % 4 >= 1 {
            fix_ipv4_checksum(&mut f);
        }
        if i % 4 == 3 {
            fix_udp_checksum_v4(&mut f);
        }
        let src = std::net::Ipv4Addr::new(f[l3 + 12], f[l3 + 13], f[l3 + 14], f[l3 + 15]);
        if filtered(src, u16::from_be_bytes([f[u4], f[u4 + 1]])) {
            predicted[3] += 1;
            frames.push(f);
            continue;
        }
        let mut copy = f.clone();
        copy.resize(4096, 0);
        match respond(&mut Echo, &mut copy, f.len(), Time::default(), RespondOptions::default()) {
            Outcome::Reply(_) => predicted[0] += 1,
            Outcome::Malformed(_) => predicted[1] += 1,
            Outcome::BadChecksum => predicted[2] += 1,
            other => panic!("random frame {i}: unexpected prediction {other:?}"),
        }
        frames.push(f);
    }
    (frames, predicted)
}

/// Fully random frames to the server's MAC whose EtherType is neither IP nor a VLAN tag: not ours.
fn random_other(lab: &Lab, rng: &mut XorShift, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let len = 14 + (rng.next() % 200) as usize;
            let mut f = vec![0u8; len];
            rng.fill(&mut f);
            f[..6].copy_from_slice(&lab.server_mac());
            f[6..12].copy_from_slice(&lab.client_mac());
            let mut et = rng.next() as u16;
            while [0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806].contains(&et) || et < 0x0600 {
                et = rng.next() as u16;
            }
            f[12..14].copy_from_slice(&et.to_be_bytes());
            f
        })
        .collect()
}

/// A reply captured on the client: its payload, VLAN tag, and whether its UDP checksum verifies.
struct Reply {
    payload: Vec<u8>,
    tci: Option<u16>,
    src: SocketAddr,
    checksum: UdpChecksum,
}

fn drain(port: &RawPort, server_mac: [u8; 6], into: &mut Vec<Reply>) {
    let mut buf = vec![0u8; 9216];
    while let Some((n, tci)) = port.try_recv(&mut buf) {
        let frame = &buf[..n];
        if frame.len() < 14 || frame[6..12] != server_mac {
            continue;
        }
        if let Ok(Some(d)) = parse(frame) {
            if d.src().port() == PORT {
                into.push(Reply { payload: d.payload().to_vec(), tci, src: d.src(), checksum: d.udp_checksum() });
            }
        }
    }
}

fn set_mtu(lab: &Lab, mtu: u32) {
    for side in [Side::Server, Side::Client] {
        let dev = if side == Side::Server { lab.server_if() } else { lab.client_if() };
        lab.exec(side, &["ip", "link", "set", "dev", &dev, "mtu", &mtu.to_string()], Duration::from_secs(10))
            .expect_success();
    }
}

/// Sends `frames`, draining replies as it goes, then a sentinel request; returns the replies once the
/// sentinel's has come back (one queue answers in order, so every reply that was coming has come).
fn exchange(lab: &Lab, port: &RawPort, frames: &[Vec<u8>]) -> Vec<Reply> {
    let mut replies = Vec::new();
    for f in frames {
        port.send(f).unwrap_or_else(|e| panic!("sending a {}-byte frame: {e}", f.len()));
        drain(port, lab.server_mac(), &mut replies);
    }
    let sentinel = tag("sentinel");
    port.send(&request(lab, false, None, &sentinel)).expect("send the sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        drain(port, lab.server_mac(), &mut replies);
        if let Some(i) = replies.iter().position(|r| r.payload == sentinel) {
            replies.remove(i);
            return replies;
        }
        assert!(
            Instant::now() < deadline,
            "no reply to the sentinel within 10 s ({} replies before it)",
            replies.len()
        );
        std::thread::yield_now();
    }
}

fn absorbers(lab: &Lab) -> (UdpSocket, UdpSocket) {
    lab.in_client(|| {
        (UdpSocket::bind((CLIENT_V4, CLIENT_PORT)).unwrap(), UdpSocket::bind((CLIENT_V6, CLIENT_PORT)).unwrap())
    })
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn every_malformed_frame_is_counted_where_it_falls_and_none_is_answered() {
    require_lab();
    let lab = Lab::new(1);
    set_mtu(&lab, 9000);
    let _absorb = absorbers(&lab);
    let srv = lab.spawn_server(&lab.serve_args(&["--cores", "1", "--quiet"]));
    let port = RawPort::open(&lab, Side::Client);

    let cases = corpus(&lab);
    let mut rng = XorShift(0x5eed_1234_abcd_0001);
    let (random, predicted) = random_redirected(&lab, &mut rng, 2_000);
    let other = random_other(&lab, &mut rng, 500);
    let mut frames: Vec<Vec<u8>> = cases.iter().map(|c| c.frame.clone()).collect();
    frames.extend(random.iter().cloned());
    frames.extend(other.iter().cloned());
    let replies = exchange(&lab, &port, &frames);
    let fin = srv.stop();
    fin.assert_clean_exit();

    let count = |p: Place| cases.iter().filter(|c| c.place == p).count() as u64;
    let mut by_place: HashMap<Place, u64> = HashMap::new();
    for c in &cases {
        *by_place.entry(c.place).or_default() += 1;
    }
    eprintln!(
        "corpus: {} hand-made cases {by_place:?}, {} random redirected (predicted reply/malformed/bad checksum \
         /filtered {predicted:?}), {} random other; {} replies",
        cases.len(),
        random.len(),
        other.len(),
        replies.len()
    );

    // No reply to anything that should not have one; exactly one to each that should.
    let answered_cases: Vec<&Case> = cases.iter().filter(|c| c.place == Place::Reply).collect();
    for c in &cases {
        let payload = match parse(&c.frame) {
            Ok(Some(d)) => d.payload().to_vec(),
            _ => continue,
        };
        let n = replies.iter().filter(|r| r.payload == payload && !payload.is_empty()).count();
        if c.place == Place::Reply {
            assert!(payload.is_empty() || n == 1, "{}: {n} replies, expected 1", c.name);
        } else {
            assert_eq!(n, 0, "{} was answered", c.name);
        }
    }
    for r in &replies {
        assert_eq!(r.checksum, UdpChecksum::Correct, "a reply with a wrong UDP checksum");
    }
    let hand_replies = replies.iter().filter(|r| r.payload.starts_with(b"corpus:") || r.payload.is_empty()).count();
    assert_eq!(hand_replies as u64, answered_cases.len() as u64, "replies to the hand-made corpus");

    // Every frame counted exactly where it fell.
    let r = fin.report();
    let w = &r["workers"][0];
    let get = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    let sentinel = 1;
    assert_eq!(get(&r["xdp"], "malformed"), count(Place::XdpMalformed), "xdp.malformed\n{}", fin.describe());
    assert_eq!(get(&r["xdp"], "filtered"), predicted[3], "xdp.filtered\n{}", fin.describe());
    assert_eq!(get(&r["xdp"], "other_address"), 0, "xdp.other_address\n{}", fin.describe());
    assert!(get(&r["xdp"], "passed") >= count(Place::XdpPassed) + other.len() as u64, "xdp.passed\n{}", fin.describe());
    assert_eq!(get(&w["kernel"], "rx_dropped"), count(Place::KernelDropped), "kernel rx_dropped");
    assert_eq!(get(w, "dropped_malformed"), count(Place::WorkerMalformed) + predicted[1], "dropped_malformed");
    assert_eq!(get(w, "dropped_bad_checksum"), count(Place::BadChecksum) + predicted[2], "dropped_bad_checksum");
    assert_eq!(get(w, "tx_packets"), count(Place::Reply) + predicted[0] + sentinel, "tx_packets");
    assert_eq!(get(w, "dropped_not_ours") + get(w, "dropped_by_handler") + get(w, "dropped_amplification"), 0);
    let redirected = count(Place::Reply)
        + count(Place::WorkerMalformed)
        + count(Place::BadChecksum)
        + count(Place::KernelDropped)
        + random.len() as u64
        - predicted[3]
        + sentinel;
    assert_eq!(get(&r["xdp"], "redirected"), redirected, "xdp.redirected\n{}", fin.describe());
    assert_eq!(get(w, "rx_packets") + get(&w["kernel"], "rx_dropped"), redirected, "worker rx + kernel drops");
    assert_eq!(r["frames_lost"].as_i64(), Some(0));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn ipv6_echo_over_8021q_and_8021ad_tags() {
    require_lab();
    let lab = Lab::new(1);
    let _absorb = absorbers(&lab);
    let srv = lab.spawn_server(&lab.serve_args(&["--cores", "1", "--quiet"]));
    let port = RawPort::open(&lab, Side::Client);
    const N: usize = 500;
    let mut frames = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..N {
        let p = tag(&format!("vlan-{i}"));
        let mut f = request(&lab, true, Some(7 + (i % 3) as u16), &p);
        if i % 2 == 1 {
            set16(&mut f, eth::ETHERTYPE.start, 0x88a8);
        }
        frames.push(f);
        payloads.push(p);
    }
    let replies = exchange(&lab, &port, &frames);
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(replies.len(), N, "one reply per tagged request");
    for (i, p) in payloads.iter().enumerate() {
        let r = replies.iter().find(|r| &r.payload == p).unwrap_or_else(|| panic!("no reply to {i}"));
        assert_eq!(r.tci, Some(7 + (i % 3) as u16), "reply {i} carries the request's tag");
        assert_eq!(r.src, SocketAddr::from((SERVER_V6, PORT)), "reply {i} comes from the server");
        assert_eq!(r.checksum, UdpChecksum::Correct, "reply {i}");
    }
    assert_eq!(fin.report_u64("tx_packets"), N as u64 + 1);
}
