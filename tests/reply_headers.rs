//! Reply headers through the real server in the lab: requests whose IP headers say things a reply must not
//! repeat -- IPv4 options (a loose source route among them), TTL 3, a CE-marked TOS, an ID without DF; IPv6
//! with a traffic class (ECT) and a flow label -- are built byte for byte on the client and sent through an
//! AF_PACKET socket ([`RawPort`]), and the replies captured the same way. Every reply must carry the server's
//! own header: no options (IHL 5), the configured TTL / hop limit and DSCP, ECN not-ECT, flow label 0, ID 0
//! with DF, a valid IPv4 header checksum and a full UDP checksum, the payload intact and every length
//! consistent. The client kernel's UDP sockets must receive them too (it verifies what it accepts).
//!
//! - `--mode afxdp` with `packet.reply_ttl = 17`, `packet.reply_dscp = 10`, and a reply longer than the MTU the
//!   server read at start-up dropped and counted (`dropped_over_mtu`), never sent;
//! - `--mode in-kernel` (the server inside the kernel): the same rules with its fixed TTL 64 and DSCP 0; and its
//!   refusal of any other `packet.reply_ttl`.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{require_lab, run_cmd, shunt_bin, Lab, RawPort, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::packet::{
    checksum,
    field::{eth, ipv4, ipv6, udp},
    parse, FlowSpec, UdpChecksum,
};

const PORT: u16 = 9000;
/// Source port of every hand-built request; UDP sockets bound to it in the client namespace absorb the replies
/// (and show that the client's kernel accepts them).
const CLIENT_PORT: u16 = 47_555;
const T: Duration = Duration::from_secs(10);

/// What the replies' IP headers must say.
#[derive(Clone, Copy, Debug)]
struct Expect {
    ttl: u8,
    dscp: u8,
}

/// One request and what it is.
struct Case {
    name: &'static str,
    frame: Vec<u8>,
    payload: Vec<u8>,
}

fn payload(name: &str) -> Vec<u8> {
    let mut p = format!("reply-headers:{name}:").into_bytes();
    p.resize(64, b'.');
    p
}

/// A valid request from the client to the server carrying `payload`, as `write_request` builds it.
fn request(lab: &Lab, v6: bool, payload: &[u8]) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = if v6 {
        ((CLIENT_V6, CLIENT_PORT).into(), (SERVER_V6, PORT).into())
    } else {
        ((CLIENT_V4, CLIENT_PORT).into(), (SERVER_V4, PORT).into())
    };
    let spec = FlowSpec { src_mac: lab.client_mac(), dst_mac: lab.server_mac(), vlan_tci: None, src, dst };
    common::request_frame(&spec, payload)
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn set16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// An untagged IPv4 request with `options` inserted after the fixed header, and the given TOS, TTL, ID and
/// flags; both checksums recomputed.
fn ipv4_request(lab: &Lab, name: &str, options: &[u8], tos: u8, ttl: u8, id: u16, flags: u16) -> Case {
    assert_eq!(options.len() % 4, 0, "options are whole words");
    let p = payload(name);
    let mut f = request(lab, false, &p);
    let l3 = eth::HEADER_LEN;
    let at = l3 + ipv4::MIN_HEADER_LEN;
    f.splice(at..at, options.iter().copied());
    f[l3 + ipv4::VER_IHL] = 0x45 + (options.len() / 4) as u8;
    let total = get16(&f, l3 + ipv4::TOTAL_LEN.start) + options.len() as u16;
    set16(&mut f, l3 + ipv4::TOTAL_LEN.start, total);
    f[l3 + ipv4::TOS] = tos;
    f[l3 + ipv4::TTL] = ttl;
    set16(&mut f, l3 + ipv4::IDENT.start, id);
    set16(&mut f, l3 + ipv4::FLAGS_FRAG.start, flags);
    set16(&mut f, l3 + ipv4::CHECKSUM.start, 0);
    let sum = checksum::internet(&f[l3..at + options.len()]);
    set16(&mut f, l3 + ipv4::CHECKSUM.start, sum);
    // The UDP checksum does not cover the IP header: it stays correct.
    let d = parse(&f).expect("well-formed").expect("ours");
    assert_eq!(d.udp_checksum(), UdpChecksum::Correct, "{name}");
    Case { name: leak(name), frame: f, payload: p }
}

/// An IPv6 request with the given traffic class, flow label and hop limit.
fn ipv6_request(lab: &Lab, name: &str, traffic_class: u8, flow: u32, hop: u8) -> Case {
    let p = payload(name);
    let mut f = request(lab, true, &p);
    let l3 = eth::HEADER_LEN;
    let first = (6u32 << 28) | (u32::from(traffic_class) << 20) | (flow & 0xfffff);
    f[l3..l3 + 4].copy_from_slice(&first.to_be_bytes());
    f[l3 + ipv6::HOP_LIMIT] = hop;
    Case { name: leak(name), frame: f, payload: p }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A loose source and record route option (RFC 791: type 131, length, pointer 4, the route), padded with
/// end-of-options to whole words.
fn lsrr(route: &[[u8; 4]]) -> Vec<u8> {
    let mut o = vec![0x83, (3 + 4 * route.len()) as u8, 4];
    for a in route {
        o.extend_from_slice(a);
    }
    o.resize(o.len().div_ceil(4) * 4, 0);
    o
}

/// The requests: IPv4 with a loose source route, TTL 3 and a CE-marked TOS (DSCP 46); with 40 bytes of
/// options (record route) and TTL 1; without options but ECT(0), ID 7 and no DF; IPv6 with a traffic class
/// (DSCP 46, ECT(1)) and a flow label, hop limit 3; IPv6 with CE.
fn cases(lab: &Lab) -> Vec<Case> {
    let mut record_route = vec![0x07, 39, 4];
    record_route.resize(40, 0);
    vec![
        ipv4_request(lab, "v4-lsrr-ttl3-ce", &lsrr(&[[198, 18, 0, 9], [198, 18, 0, 10]]), 0xbb, 3, 0x1234, 0),
        ipv4_request(lab, "v4-record-route-40-ttl1-ce", &record_route, 0x03, 1, 0xffff, 0x4000),
        ipv4_request(lab, "v4-nops-ect1", &[1, 1, 1, 1], 0x01, 200, 1, 0),
        ipv4_request(lab, "v4-no-options-ect0", &[], 0x02, 3, 7, 0),
        ipv6_request(lab, "v6-tc-ect1-flow", 0xb9, 0xabcde, 3),
        ipv6_request(lab, "v6-ce-flow", 0x03, 0x00001, 1),
    ]
}

/// Every frame that arrived from the server's MAC on the client's port, until `want` replies to ours (the
/// payloads in `payloads`) are in or `T` passes.
fn capture(lab: &Lab, port: &RawPort, payloads: &[Vec<u8>], want: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 9216];
    let deadline = Instant::now() + T;
    while got.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !port.wait_readable(left) {
            break;
        }
        while let Some((n, _)) = port.try_recv(&mut buf) {
            let f = &buf[..n];
            if f.len() < eth::HEADER_LEN || f[eth::SRC] != lab.server_mac() {
                continue;
            }
            if let Ok(Some(d)) = parse(f) {
                if d.src().port() == PORT && payloads.iter().any(|p| p == d.payload()) {
                    got.push(f.to_vec());
                }
            }
        }
    }
    got
}

/// Checks that `reply` is the server's reply to `case`, with a header of the server's own.
fn check_reply(case: &Case, reply: &[u8], e: Expect) {
    let name = case.name;
    let req = parse(&case.frame).unwrap().unwrap();
    let d = parse(reply).unwrap_or_else(|m| panic!("{name}: reply malformed: {m}")).expect("UDP");
    assert_eq!((d.src(), d.dst()), (req.dst(), req.src()), "{name}: addresses and ports swapped");
    assert_eq!(d.payload(), &case.payload[..], "{name}: payload intact");
    assert_eq!(d.udp_checksum(), UdpChecksum::Correct, "{name}: full UDP checksum");
    let l3 = &reply[eth::HEADER_LEN..];
    let tos = e.dscp << 2;
    let udp_len = udp::HEADER_LEN + case.payload.len();
    if req.src().is_ipv4() {
        assert_eq!(l3[ipv4::VER_IHL], 0x45, "{name}: IHL 5, no options");
        assert_eq!(d.payload_offset(), eth::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN, "{name}");
        assert_eq!(l3[ipv4::TOS], tos, "{name}: DSCP {}, ECN not-ECT", e.dscp);
        assert_eq!(usize::from(get16(l3, ipv4::TOTAL_LEN.start)), ipv4::MIN_HEADER_LEN + udp_len, "{name}: total");
        assert_eq!(get16(l3, ipv4::IDENT.start), 0, "{name}: ID 0");
        assert_eq!(get16(l3, ipv4::FLAGS_FRAG.start), ipv4::DONT_FRAGMENT, "{name}: DF");
        assert_eq!(l3[ipv4::TTL], e.ttl, "{name}: fresh TTL");
        assert_eq!(checksum::internet(&l3[..ipv4::MIN_HEADER_LEN]), 0, "{name}: header checksum");
    } else {
        let first = u32::from_be_bytes(l3[..4].try_into().unwrap());
        assert_eq!(first, (6 << 28) | (u32::from(tos) << 20), "{name}: traffic class DSCP {}, not-ECT, flow 0", e.dscp);
        assert_eq!(usize::from(get16(l3, ipv6::PAYLOAD_LEN.start)), udp_len, "{name}: payload length");
        assert_eq!(l3[ipv6::HOP_LIMIT], e.ttl, "{name}: fresh hop limit");
    }
    assert!(reply.len() >= d.payload_offset() + case.payload.len(), "{name}: frame length");
}

/// Sockets bound to [`CLIENT_PORT`] in the client namespace: they keep the client kernel from answering the
/// replies with ICMP port unreachable, and receive what it accepted.
fn absorbers(lab: &Lab) -> (UdpSocket, UdpSocket) {
    lab.in_client(|| {
        let v4 = UdpSocket::bind((CLIENT_V4, CLIENT_PORT)).unwrap();
        let v6 = UdpSocket::bind((CLIENT_V6, CLIENT_PORT)).unwrap();
        for s in [&v4, &v6] {
            s.set_read_timeout(Some(T)).unwrap();
        }
        (v4, v6)
    })
}

/// Receives `n` datagrams on `sock` (each within [`T`]) and returns their payloads.
fn received(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 2048];
    (0..n)
        .map(|i| {
            let (len, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("datagram {i} of {n}: {e}"));
            assert_eq!(from.port(), PORT, "from the server");
            buf[..len].to_vec()
        })
        .collect()
}

/// Sends every case, captures the replies, checks each against `e`, and checks that the client kernel's
/// sockets received exactly our payloads.
fn exchange_and_check(lab: &Lab, port: &RawPort, sockets: &(UdpSocket, UdpSocket), e: Expect) {
    let cases = cases(lab);
    let payloads: Vec<Vec<u8>> = cases.iter().map(|c| c.payload.clone()).collect();
    for c in &cases {
        port.send(&c.frame).unwrap_or_else(|err| panic!("{}: send: {err}", c.name));
    }
    let replies = capture(lab, port, &payloads, cases.len());
    assert_eq!(replies.len(), cases.len(), "one reply per request");
    for c in &cases {
        let r = replies
            .iter()
            .find(|r| parse(r).ok().flatten().is_some_and(|d| d.payload() == &c.payload[..]))
            .unwrap_or_else(|| panic!("{}: no reply", c.name));
        check_reply(c, r, e);
    }
    let v4 = cases.iter().filter(|c| parse(&c.frame).unwrap().unwrap().src().is_ipv4()).count();
    let mut got = received(&sockets.0, v4);
    got.extend(received(&sockets.1, cases.len() - v4));
    got.sort();
    let mut want = payloads;
    want.sort();
    assert_eq!(got, want, "the client kernel accepted every reply");
}

fn set_mtu(lab: &Lab, mtu: u32) {
    for side in [Side::Server, Side::Client] {
        let dev = if side == Side::Server { lab.server_if() } else { lab.client_if() };
        lab.exec(side, &["ip", "link", "set", "dev", &dev, "mtu", &mtu.to_string()], T).expect_success();
    }
}

/// A copy of config/lab.toml with `[packet]` settings appended.
fn config_with_packet(lab: &Lab, name: &str, packet: &str) -> String {
    let text = std::fs::read_to_string(common::lab_config()).expect("config/lab.toml");
    assert!(!text.contains("[packet]"), "config/lab.toml has a [packet] table already");
    let path = lab.tmp_path(name, "toml");
    std::fs::write(&path, format!("{text}\n[packet]\n{packet}\n")).expect("write config");
    path.display().to_string()
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn afxdp_replies_carry_the_configured_header_and_none_exceeds_the_mtu() {
    require_lab();
    let lab = Lab::new(1);
    let sockets = absorbers(&lab);
    // The server reads its interface's MTU at start-up: 1300 here, raised to 1500 once it runs, so that a
    // request of more than 1300 bytes can reach it and its echo must be dropped, not sent. (Not below 1280:
    // the kernel takes IPv6 off a link with a smaller MTU, addresses and all.)
    set_mtu(&lab, 1300);
    let config = config_with_packet(&lab, "reply-ttl-dscp", "reply_ttl = 17\nreply_dscp = 10");
    let server_if = lab.server_if();
    let srv = lab.spawn_server(&["serve", "--config", &config, "--interface", &server_if, "--cores", "1", "--quiet"]);
    set_mtu(&lab, 1500);
    let port = RawPort::open(&lab, Side::Client);

    exchange_and_check(&lab, &port, &sockets, Expect { ttl: 17, dscp: 10 });

    // Over the MTU read at start-up: 20 + 8 + 1273 = 1301 bytes of IPv4, 40 + 8 + 1253 = 1301 of IPv6; both
    // dropped. At the MTU exactly (1300): answered.
    let mut big = Vec::new();
    for (v6, len, over) in [(false, 1273, true), (true, 1253, true), (false, 1272, false), (true, 1252, false)] {
        let mut p = format!("over-mtu:{v6}:{len}:").into_bytes();
        p.resize(len, b'#');
        port.send(&request(&lab, v6, &p)).expect("send");
        big.push((p, over));
    }
    let fits: Vec<Vec<u8>> = big.iter().filter(|(_, over)| !over).map(|(p, _)| p.clone()).collect();
    let all: Vec<Vec<u8>> = big.iter().map(|(p, _)| p.clone()).collect();
    // The ones that fit are answered in order after the ones that do not (one queue): once they are in, any
    // reply to the others would have come.
    let replies = capture(&lab, &port, &all, fits.len());
    let mut payloads: Vec<Vec<u8>> = replies.iter().map(|r| parse(r).unwrap().unwrap().payload().to_vec()).collect();
    payloads.sort();
    let mut want = fits.clone();
    want.sort();
    assert_eq!(payloads, want, "exactly the replies within the MTU were sent");
    let _ = received(&sockets.0, 1);
    let _ = received(&sockets.1, 1);

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("workers.0.dropped_over_mtu"), 2, "{}", fin.describe());
    assert_eq!(fin.report_u64("tx_packets"), cases(&lab).len() as u64 + 2, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.dropped_by_handler"), 0, "{}", fin.describe());
    assert!(!fin.stderr.contains("cannot read the MTU"), "{}", fin.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn the_in_kernel_server_writes_the_same_header_and_refuses_other_settings() {
    require_lab();
    let lab = Lab::new(1);
    let sockets = absorbers(&lab);

    // mode = "in-kernel" writes TTL 64 and DSCP 0 only: another value is refused before anything is loaded,
    // naming the key (mode afxdp takes it).
    let bad = config_with_packet(&lab, "xdp-reply-ttl", "reply_ttl = 17");
    let checked = run_cmd(&[shunt_bin(), "check-config", &bad], T);
    assert_eq!(checked.code(), Some(0), "mode afxdp takes reply_ttl = 17:\n{}", checked.combined());
    let server_if = lab.server_if();
    let refused =
        run_cmd(&[shunt_bin(), "serve", "--config", &bad, "--interface", &server_if, "--mode", "in-kernel"], T);
    assert_ne!(refused.code(), Some(0), "mode in-kernel started with reply_ttl = 17:\n{}", refused.combined());
    assert!(refused.combined().contains("packet.reply_ttl"), "the refusal names the key:\n{}", refused.combined());

    let srv = lab.spawn_server(&lab.serve_args(&["--mode", "in-kernel", "--quiet"]));
    let port = RawPort::open(&lab, Side::Client);
    exchange_and_check(&lab, &port, &sockets, Expect { ttl: 64, dscp: 0 });
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("in_kernel.answered"), cases(&lab).len() as u64, "{}", fin.describe());
}
