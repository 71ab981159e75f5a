//! The in-kernel server (`shunt::in_kernel`, bpf/answer.bpf.c) in the lab: attached in the server
//! namespace by this process, as a bpf_link, and driven from the client namespace.
//!
//! - Echo over IPv4 and IPv6 with kernel UDP sockets, in native and generic mode: every reply byte-identical,
//!   accepted by the client kernel (which verifies the UDP checksum the program wrote, and whose connected
//!   socket accepts replies from the server's address only), and the program's counters equal to what the
//!   client's kernel counted. Dropping the link gives the port back to the kernel.
//! - `sockperf ping-pong` and `sockperf under-load` against the sockperf handler.
//! - What is not answered: corrupted checksums dropped and counted, malformed headers and over-long payloads
//!   passed to the kernel and counted, other ports received by kernel sockets in the server namespace.
//! - Random requests (VLAN tags, IPv4 options, any TOS / traffic class / flow label / TTL / ID, padding, every
//!   checksum form, damaged headers) answered byte for byte as the user-space path's pure step
//!   `shunt::handler::respond` answers them, for both handlers: options stripped, the header the server's own.
//!
//! Every test checks that the counters add up exactly: each frame the client's veth end sent is counted in
//! exactly one of the program's counters (the veth pair has no other way in).
//!
//! Over veth in native mode, XDP_TX frames reach the peer only if the peer has an XDP program attached too
//! (the veth driver wakes the peer's NAPI after XDP_TX only then): the tests that attach in native mode
//! attach one that serves nothing, and so passes everything, to the client's end.

mod common;

use std::{
    collections::HashMap,
    io::ErrorKind,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use common::{Lab, RawPort, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::{
    handler::{respond, Echo, Handler, Outcome, RespondOptions, Sockperf, Time},
    in_kernel::{InKernelCounters, InKernelCountersReader, InKernelHandler, InKernelServer, MAX_PAYLOAD},
    packet::{
        checksum,
        field::{eth, ipv4, ipv6, udp},
        parse, write_request, FlowSpec, UdpChecksum,
    },
    steer::{AttachMode, XdpLink},
    sys,
};

/// The served port.
const PORT: u16 = 9000;
/// A port nobody serves in XDP; kernel sockets in the server namespace listen on it.
const OTHER_PORT: u16 = 9001;
/// Source port of the hand-built requests; sockets bound to it in the client namespace absorb the replies.
const CLIENT_PORT: u16 = 47_123;
const T: Duration = Duration::from_secs(20);
/// The MTU of both veth ends in the tests that send long frames: room for the longest payload the program
/// answers (over IPv6, with a tag) and for the over-long ones it passes.
const LAB_MTU: u32 = 2000;

// ---------------------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------------------

/// Loads the in-kernel server with `handler`, serves [`PORT`] and attaches it to the server's veth end in
/// `mode`, from a thread in the server namespace (the interface index is looked up there).
fn start(lab: &Lab, handler: InKernelHandler, mode: AttachMode) -> (InKernelServer, XdpLink) {
    let interface = lab.server_if();
    lab.in_server(move || {
        let server = InKernelServer::load(handler).expect("load the in-kernel server");
        server.set_ports(&[PORT]).expect("serve the port");
        let ifindex = sys::interface_index(&interface).expect("server interface index");
        let link = server.attach(&interface, ifindex, mode).expect("attach the in-kernel server");
        (server, link)
    })
}

/// Native XDP_TX over veth delivers to the peer only when the peer has an XDP program of its own (the veth
/// driver wakes the peer's NAPI after XDP_TX only then): attaches one to the client's end, natively, that
/// serves no port and so passes everything. Keep it for as long as replies are wanted.
fn client_peer_program(lab: &Lab) -> (InKernelServer, XdpLink) {
    let interface = lab.client_if();
    lab.in_client(move || {
        let program = InKernelServer::load(InKernelHandler::Echo).expect("load the client's pass-through program");
        let ifindex = sys::interface_index(&interface).expect("client interface index");
        let link = program.attach(&interface, ifindex, AttachMode::Native).expect("attach on the client");
        (program, link)
    })
}

fn set_mtu(lab: &Lab, mtu: u32) {
    for side in [Side::Server, Side::Client] {
        let dev = if side == Side::Server { lab.server_if() } else { lab.client_if() };
        lab.exec(side, &["ip", "link", "set", "dev", &dev, "mtu", &mtu.to_string()], T).expect_success();
    }
}

/// Packets the client's veth end has sent: every frame that reaches the server's XDP hook.
fn client_tx_packets(lab: &Lab) -> u64 {
    let out = lab.exec(Side::Client, &["ip", "-s", "-j", "link", "show", "dev", &lab.client_if()], T).expect_success();
    let v: common::Value = serde_json::from_str(&out.stdout).expect("ip -j output");
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or_else(|| panic!("no tx packets in {}", out.stdout))
}

/// Frames the client sent that the program has not counted, read while nothing is in flight (two reads of
/// each agree). Constant for as long as every frame is counted exactly once.
fn uncounted(lab: &Lab, reader: &InKernelCountersReader) -> i64 {
    let deadline = Instant::now() + T;
    loop {
        let (t1, c1) = (client_tx_packets(lab), reader.read().expect("counters").total());
        let (t2, c2) = (client_tx_packets(lab), reader.read().expect("counters").total());
        if t1 == t2 && c1 == c2 {
            return t1 as i64 - c1 as i64;
        }
        assert!(Instant::now() < deadline, "the client never stopped sending for long enough to read the counters");
    }
}

/// Waits (bounded) until every frame the client sent since `base` was taken is counted, once.
fn assert_every_frame_counted(lab: &Lab, reader: &InKernelCountersReader, base: i64) {
    let deadline = Instant::now() + T;
    loop {
        let now = uncounted(lab, reader);
        if now == base {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "frames sent by the client minus frames counted: {now}, was {base} ({:?})",
            reader.read()
        );
        std::thread::yield_now();
    }
}

/// Waits (bounded) until `cond` holds for the counters; returns them.
fn wait_counters(
    reader: &InKernelCountersReader,
    what: &str,
    cond: impl Fn(&InKernelCounters) -> bool,
) -> InKernelCounters {
    let deadline = Instant::now() + T;
    loop {
        let c = reader.read().expect("counters");
        if cond(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: counters {c:?}");
        std::thread::yield_now();
    }
}

/// The client namespace's UDP counters (/proc/net/snmp, /proc/net/snmp6), by name (`Udp:InDatagrams`,
/// `Udp6InDatagrams`, ...).
fn client_udp_stats(lab: &Lab) -> HashMap<String, u64> {
    let out = lab.exec(Side::Client, &["cat", "/proc/net/snmp", "/proc/net/snmp6"], T).expect_success();
    let mut stats = HashMap::new();
    let lines: Vec<&str> = out.stdout.lines().collect();
    for pair in lines.windows(2) {
        if let (Some(h), Some(v)) = (pair[0].strip_prefix("Udp: "), pair[1].strip_prefix("Udp: ")) {
            if v.split_whitespace().all(|x| x.parse::<i64>().is_ok()) {
                for (k, x) in h.split_whitespace().zip(v.split_whitespace()) {
                    stats.insert(format!("Udp:{k}"), x.parse().unwrap_or(0));
                }
            }
        }
    }
    for line in &lines {
        let mut it = line.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next()) {
            if k.starts_with("Udp6") {
                stats.insert(k.to_string(), v.parse().unwrap_or(0));
            }
        }
    }
    assert!(stats.contains_key("Udp:InCsumErrors") && stats.contains_key("Udp6InCsumErrors"), "{}", out.stdout);
    stats
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, key: &str) -> u64 {
    after[key] - before[key]
}

// ---------------------------------------------------------------------------------------------------------
// Echo with kernel sockets
// ---------------------------------------------------------------------------------------------------------

const ECHOES: u64 = 10_000;

fn echo_with_kernel_sockets(mode: AttachMode) {
    common::require_lab();
    let lab = Lab::new(1);
    let _peer = (mode == AttachMode::Native).then(|| client_peer_program(&lab));
    let (server, link) = start(&lab, InKernelHandler::Echo, mode);
    let reader = server.counters_reader().expect("counters reader");
    let base = uncounted(&lab, &reader);
    let before = client_udp_stats(&lab);
    let capture = ReplyCapture::start(&lab);

    let mut sent = 0;
    for v6 in [false, true] {
        let sock = common::client_socket(&lab, v6, PORT);
        let start = Instant::now();
        let st = common::echo_exchange(&sock, 0..ECHOES, common::echo_size, &common::EchoOpts::default())
            .unwrap_or_else(|e| panic!("echo over IPv{}: {e}\n{:?}", if v6 { 6 } else { 4 }, reader.read()));
        let took = start.elapsed();
        assert_eq!(st.answered, ECHOES, "distinct requests answered over IPv{}", if v6 { 6 } else { 4 });
        sent += st.sent;
        // The largest payloads a 1500-byte MTU carries, and the empty one.
        let largest = if v6 { 1500 - 40 - 8 } else { MAX_PAYLOAD };
        for len in [0, 1, largest] {
            let p = common::echo_payload(ECHOES + len as u64, len);
            common::send_retrying(&sock, &p).expect("send");
            let mut buf = vec![0u8; 2048];
            sock.set_read_timeout(Some(T)).unwrap();
            let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no echo of {len} bytes: {e}"));
            assert_eq!(&buf[..n], &p[..], "echo of {len} bytes over IPv{}", if v6 { 6 } else { 4 });
            sent += 1;
        }
        eprintln!(
            "in-kernel echo ({}, IPv{}): {ECHOES} requests of 1..=1400 bytes, window 32, in {took:.2?} ({:.0}/s), \
             {} retransmits",
            mode.name(),
            if v6 { 6 } else { 4 },
            ECHOES as f64 / took.as_secs_f64(),
            st.retransmits
        );
    }

    let after = client_udp_stats(&lab);
    let c = reader.read().expect("counters");
    // Every reply carried a full, correct UDP checksum (checked here, whatever the client kernel trusts).
    let (correct, wrong) = capture.stop();
    assert_eq!((correct, wrong), (sent, 0), "replies with a correct and a wrong UDP checksum");
    // The client kernel accepted every reply: checksum verified (no InCsumErrors), from the address its
    // connected sockets expect.
    let out = delta(&after, &before, "Udp:OutDatagrams") + delta(&after, &before, "Udp6OutDatagrams");
    let inn = delta(&after, &before, "Udp:InDatagrams") + delta(&after, &before, "Udp6InDatagrams");
    assert_eq!(out, sent, "datagrams the client kernel sent");
    assert_eq!(inn, sent, "replies the client kernel accepted ({c:?})");
    for key in ["Udp:InCsumErrors", "Udp6InCsumErrors", "Udp:InErrors", "Udp6InErrors", "Udp:NoPorts", "Udp6NoPorts"] {
        assert_eq!(delta(&after, &before, key), 0, "client {key}");
    }
    assert_eq!(c.answered, sent, "answered: {c:?}");
    assert_eq!((c.malformed, c.bad_checksum, c.dropped_by_handler, c.too_long), (0, 0, 0, 0), "{c:?}");
    assert_every_frame_counted(&lab, &reader, base);

    // Dropping the link detaches the program; the port goes back to the kernel.
    let counted = reader.read().expect("counters");
    drop(link);
    lab.assert_no_xdp_within(Duration::from_secs(5));
    let listener = lab.in_server(|| UdpSocket::bind((SERVER_V4, PORT)).expect("bind the served port in the kernel"));
    listener.set_read_timeout(Some(T)).unwrap();
    let sock = common::client_socket(&lab, false, PORT);
    common::send_retrying(&sock, b"back to the kernel").expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = listener.recv_from(&mut buf).expect("the kernel socket receives once the link is gone");
    assert_eq!(&buf[..n], b"back to the kernel");
    assert_eq!(reader.read().expect("counters"), counted, "nothing counted after the link was dropped");
    drop(server);
}

/// Replies from the served port arriving at the client, captured on a packet socket by a thread of their
/// own and classified by their UDP checksum.
struct ReplyCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl ReplyCapture {
    fn start(lab: &Lab) -> ReplyCapture {
        use std::sync::{atomic::AtomicBool, atomic::Ordering, Arc};
        let port = RawPort::open(lab, Side::Client);
        let server_mac = lab.server_mac();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut correct, mut wrong) = (0, 0);
            let mut buf = vec![0u8; 9216];
            loop {
                // Read the flag first: after it is set, one more pass takes whatever arrived before.
                let last = stopped.load(Ordering::Acquire);
                let mut idle = true;
                while let Some((n, _)) = port.try_recv(&mut buf) {
                    idle = false;
                    let frame = &buf[..n];
                    if frame.len() < 14 || frame[6..12] != server_mac {
                        continue;
                    }
                    if let Ok(Some(d)) = parse(frame) {
                        if d.src().port() == PORT {
                            if d.udp_checksum() == UdpChecksum::Correct {
                                correct += 1;
                            } else {
                                wrong += 1;
                            }
                        }
                    }
                }
                if last {
                    return (correct, wrong);
                }
                if idle {
                    // Nothing waiting: block until a frame is (or 20 ms pass, to look at the flag again)
                    // rather than spin against the test on 2 CPUs.
                    port.wait_readable(Duration::from_millis(20));
                }
            }
        });
        ReplyCapture { stop, thread }
    }

    /// Stops capturing; (replies with a correct UDP checksum, replies with any other).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().expect("capture thread")
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn echo_in_the_kernel_native() {
    echo_with_kernel_sockets(AttachMode::Native);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn echo_in_the_kernel_generic() {
    echo_with_kernel_sockets(AttachMode::Generic);
}

// ---------------------------------------------------------------------------------------------------------
// sockperf
// ---------------------------------------------------------------------------------------------------------

/// `s` without terminal colour sequences (sockperf colours its summary).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=` in sockperf's output.
fn sockperf_value(out: &str, key: &str) -> Option<u64> {
    let at = out.find(key)? + key.len();
    out[at..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sockperf_against_the_in_kernel_sockperf_handler() {
    common::require_lab();
    let lab = Lab::new(1);
    let _peer = client_peer_program(&lab);
    let (server, _link) = start(&lab, InKernelHandler::Sockperf, AttachMode::Native);
    assert_eq!(server.handler(), InKernelHandler::Sockperf);
    let reader = server.counters_reader().expect("counters reader");
    let base = uncounted(&lab, &reader);
    let server_ip = SERVER_V4.to_string();
    let port = PORT.to_string();

    // ping-pong: every message asks for a reply; sockperf ignores replies with its CLIENT flag still set.
    let before = client_udp_stats(&lab);
    let c0 = reader.read().unwrap();
    let pp = lab.exec(
        Side::Client,
        &["sockperf", "ping-pong", "-i", &server_ip, "-p", &port, "-t", "2", "-m", "64", "--mps", "5000", "--full-rtt"],
        Duration::from_secs(60),
    );
    assert!(pp.success(), "{}", pp.combined());
    let text = strip_ansi(&pp.combined());
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("sockperf: ---> <MAX>")
                || l.contains("percentile 50.000")
                || l.contains("avg-rtt")
                || l.contains("[Total Run]")
        })
        .collect();
    eprintln!("sockperf ping-pong against the in-kernel sockperf handler (native):\n{}", summary.join("\n"));
    let received = sockperf_value(&text, "ReceivedMessages=").unwrap_or_else(|| panic!("no summary:\n{text}"));
    assert!(received > 0 && text.contains("avg-rtt"), "sockperf completed without replies:\n{text}");
    let after = client_udp_stats(&lab);
    let c1 =
        wait_counters(&reader, "ping-pong", |c| c.answered - c0.answered == delta(&after, &before, "Udp:InDatagrams"));
    let out = delta(&after, &before, "Udp:OutDatagrams");
    assert_eq!(
        (c1.answered - c0.answered) + (c1.dropped_by_handler - c0.dropped_by_handler),
        out,
        "every message sockperf sent answered or dropped by the handler: {c1:?}"
    );
    assert_eq!(delta(&after, &before, "Udp:InCsumErrors"), 0);

    // under-load asks for a reply on one message in ten: the other nine are the handler's to drop.
    let before = client_udp_stats(&lab);
    let ul = lab.exec(
        Side::Client,
        &[
            "sockperf",
            "under-load",
            "-i",
            &server_ip,
            "-p",
            &port,
            "-t",
            "2",
            "-m",
            "64",
            "--mps",
            "5000",
            "--reply-every",
            "10",
        ],
        Duration::from_secs(60),
    );
    assert!(ul.success(), "{}", ul.combined());
    let after = client_udp_stats(&lab);
    let c2 =
        wait_counters(&reader, "under-load", |c| c.answered - c1.answered == delta(&after, &before, "Udp:InDatagrams"));
    let (answered, dropped) = (c2.answered - c1.answered, c2.dropped_by_handler - c1.dropped_by_handler);
    assert_eq!(answered + dropped, delta(&after, &before, "Udp:OutDatagrams"), "{c2:?}");
    assert!(dropped >= 8 * answered, "under-load --reply-every 10: {answered} answered, {dropped} dropped");
    eprintln!("sockperf under-load --reply-every 10: {answered} answered, {dropped} dropped by the handler");
    assert_eq!((c2.malformed, c2.bad_checksum, c2.too_long), (0, 0, 0), "{c2:?}");
    assert_every_frame_counted(&lab, &reader, base);
}

// ---------------------------------------------------------------------------------------------------------
// Hand-built frames
// ---------------------------------------------------------------------------------------------------------

fn spec(lab: &Lab, v6: bool, vlan: Option<u16>, port: u16) -> FlowSpec {
    let (src, dst): (SocketAddr, SocketAddr) = if v6 {
        ((CLIENT_V6, CLIENT_PORT).into(), (SERVER_V6, port).into())
    } else {
        ((CLIENT_V4, CLIENT_PORT).into(), (SERVER_V4, port).into())
    };
    FlowSpec { src_mac: lab.client_mac(), dst_mac: lab.server_mac(), vlan_tci: vlan, src, dst }
}

/// A valid request (full UDP checksum) carrying `payload`.
fn request_with(spec: &FlowSpec, payload: &[u8]) -> Vec<u8> {
    let off = spec.payload_offset();
    let mut frame = vec![0u8; off + payload.len()];
    frame[off..].copy_from_slice(payload);
    let n = write_request(&mut frame, spec, payload.len()).expect("build request");
    frame.truncate(n);
    frame
}

fn request(lab: &Lab, v6: bool, payload: &[u8]) -> Vec<u8> {
    request_with(&spec(lab, v6, None, PORT), payload)
}

/// A sockperf message: sequence, flags, length, then filler up to `len` bytes.
fn sockperf_message(seq: u64, flags: u16, len: usize) -> Vec<u8> {
    let mut m = vec![0x5a; len.max(14)];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m[8..10].copy_from_slice(&flags.to_be_bytes());
    m[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    m.truncate(len);
    m
}

fn l3_of(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x8100 | 0x88a8 => eth::HEADER_LEN + 4,
        _ => eth::HEADER_LEN,
    }
}

fn get16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

fn set16(frame: &mut [u8], at: usize, v: u16) {
    frame[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the IPv4 header checksum (header length from its IHL).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let l3 = l3_of(frame);
    let ihl = usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4;
    set16(frame, l3 + ipv4::CHECKSUM.start, 0);
    let sum = checksum::internet(&frame[l3..l3 + ihl]);
    set16(frame, l3 + ipv4::CHECKSUM.start, sum);
}

/// Where the UDP header starts.
fn udp_of(frame: &[u8]) -> usize {
    let l3 = l3_of(frame);
    if frame[l3] >> 4 == 4 {
        l3 + usize::from(frame[l3 + ipv4::VER_IHL] & 0x0f) * 4
    } else {
        l3 + ipv6::HEADER_LEN
    }
}

/// The folded pseudo-header sum of the datagram in `frame` (from its UDP length field).
fn pseudo_sum(frame: &[u8]) -> u16 {
    let (l3, u) = (l3_of(frame), udp_of(frame));
    let len = usize::from(get16(frame, u + udp::LENGTH.start));
    checksum::fold(if frame[l3] >> 4 == 4 {
        checksum::pseudo_header_v4(
            frame[l3 + 12..l3 + 16].try_into().unwrap(),
            frame[l3 + 16..l3 + 20].try_into().unwrap(),
            len,
        )
    } else {
        checksum::pseudo_header_v6(
            &frame[l3 + 8..l3 + 24].try_into().unwrap(),
            &frame[l3 + 24..l3 + 40].try_into().unwrap(),
            len,
        )
    })
}

/// Writes the full UDP checksum of the datagram in `frame` (its UDP length field says how long it is).
fn fix_udp_checksum(frame: &mut [u8]) {
    let (l3, u) = (l3_of(frame), udp_of(frame));
    let len = usize::from(get16(frame, u + udp::LENGTH.start));
    set16(frame, u + udp::CHECKSUM.start, 0);
    let sum = if frame[l3] >> 4 == 4 {
        checksum::udp_ipv4(
            frame[l3 + 12..l3 + 16].try_into().unwrap(),
            frame[l3 + 16..l3 + 20].try_into().unwrap(),
            &frame[u..u + len],
        )
    } else {
        checksum::udp_ipv6(
            &frame[l3 + 8..l3 + 24].try_into().unwrap(),
            &frame[l3 + 24..l3 + 40].try_into().unwrap(),
            &frame[u..u + len],
        )
    };
    set16(frame, u + udp::CHECKSUM.start, sum);
}

/// A reply seen by the client: the frame as the packet socket gives it (a VLAN tag taken out by the
/// kernel) and the tag's TCI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Seen {
    frame: Vec<u8>,
    tci: Option<u16>,
}

impl Seen {
    /// What the client sees of a reply `frame` the server sends.
    fn of(frame: &[u8]) -> Seen {
        if l3_of(frame) == eth::HEADER_LEN {
            return Seen { frame: frame.to_vec(), tci: None };
        }
        let mut untagged = frame[..12].to_vec();
        untagged.extend_from_slice(&frame[16..]);
        Seen { frame: untagged, tci: Some(get16(frame, 14)) }
    }
}

/// UDP replies from the server's port that arrived at the client.
fn drain(lab: &Lab, port: &RawPort, into: &mut Vec<Seen>) {
    let mut buf = vec![0u8; 9216];
    while let Some((n, tci)) = port.try_recv(&mut buf) {
        let frame = &buf[..n];
        if frame.len() < 14 || frame[6..12] != lab.server_mac() {
            continue;
        }
        if let Ok(Some(d)) = parse(frame) {
            if d.src().port() == PORT {
                into.push(Seen { frame: frame.to_vec(), tci });
            }
        }
    }
}

/// Sends `frames`, draining replies as it goes, then `sentinel` (a request that is answered, whose payload
/// starts with 8 bytes no other request's does); returns the replies once the sentinel's has come back (one
/// queue answers in order, so every reply that was coming has come). The sentinel's reply is not among them.
fn exchange(lab: &Lab, port: &RawPort, frames: &[Vec<u8>], sentinel: &[u8]) -> Vec<Seen> {
    let mut replies = Vec::new();
    for f in frames {
        port.send(f).unwrap_or_else(|e| panic!("sending a {}-byte frame: {e}", f.len()));
        drain(lab, port, &mut replies);
    }
    let marker = parse(sentinel).unwrap().unwrap().payload()[..8].to_vec();
    port.send(sentinel).expect("send the sentinel");
    let deadline = Instant::now() + T;
    loop {
        drain(lab, port, &mut replies);
        if let Some(i) = replies.iter().position(|r| parse(&r.frame).unwrap().unwrap().payload().starts_with(&marker)) {
            replies.remove(i);
            return replies;
        }
        assert!(Instant::now() < deadline, "no reply to the sentinel ({} replies before it)", replies.len());
        std::thread::yield_now();
    }
}

/// Sockets bound to the hand-built requests' source in the client namespace, so that replies do not make
/// the client kernel answer with ICMP port unreachable.
fn absorbers(lab: &Lab) -> (UdpSocket, UdpSocket) {
    lab.in_client(|| {
        (UdpSocket::bind((CLIENT_V4, CLIENT_PORT)).unwrap(), UdpSocket::bind((CLIENT_V6, CLIENT_PORT)).unwrap())
    })
}

/// Kernel sockets in the server namespace on `port`, IPv4 and IPv6, non-blocking.
fn server_sockets(lab: &Lab, port: u16) -> [UdpSocket; 2] {
    let socks = lab
        .in_server(move || [UdpSocket::bind((SERVER_V4, port)).unwrap(), UdpSocket::bind((SERVER_V6, port)).unwrap()]);
    for s in &socks {
        s.set_nonblocking(true).unwrap();
    }
    socks
}

/// Waits (bounded) for the next datagram on `sock`; returns its length.
fn next_datagram(sock: &UdpSocket, what: &str) -> usize {
    let deadline = Instant::now() + T;
    let mut buf = vec![0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(Instant::now() < deadline, "{what}: nothing arrived");
        std::thread::yield_now();
    }
}

fn assert_nothing_waiting(sock: &UdpSocket, what: &str) {
    let mut buf = vec![0u8; 4096];
    match sock.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what}: {other:?}"),
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn what_is_not_answered_is_counted_and_what_is_not_ours_goes_to_the_kernel() {
    common::require_lab();
    let lab = Lab::new(1);
    set_mtu(&lab, LAB_MTU);
    let _absorb = absorbers(&lab);
    let served = server_sockets(&lab, PORT);
    let other = server_sockets(&lab, OTHER_PORT);
    let (server, link) = start(&lab, InKernelHandler::Echo, AttachMode::Generic);
    let reader = server.counters_reader().expect("counters reader");
    let port = RawPort::open(&lab, Side::Client);
    let base = uncounted(&lab, &reader);
    let sentinel = request(&lab, false, b"sentinel");
    let mut answered = 1; // the sentinel

    // Corrupted on the way: a payload bit flipped (IPv4, IPv6), a zero checksum over IPv6. Dropped, not
    // answered, not passed to the kernel either.
    let mut corrupted = Vec::new();
    for v6 in [false, true] {
        let mut f = request(&lab, v6, b"a corrupted request");
        let last = f.len() - 1;
        f[last] ^= 0x01;
        corrupted.push(f);
    }
    let mut f = request(&lab, true, b"zero checksum over IPv6");
    let u = udp_of(&f);
    set16(&mut f, u + udp::CHECKSUM.start, 0);
    corrupted.push(f);
    let replies = exchange(&lab, &port, &corrupted, &sentinel);
    assert!(replies.is_empty(), "a corrupted request was answered: {replies:?}");
    let c = wait_counters(&reader, "bad checksums", |c| c.bad_checksum == 3);
    assert_eq!(c.answered, answered, "{c:?}");

    // The checksums a request may carry besides a full one: zero over IPv4 (none computed), and the
    // pseudo-header sum alone (a sender with TX offload). Answered, with a full checksum.
    let mut zero = request(&lab, false, b"no checksum over IPv4");
    let u = udp_of(&zero);
    set16(&mut zero, u + udp::CHECKSUM.start, 0);
    let mut frames = vec![zero];
    for v6 in [false, true] {
        let mut f = request(&lab, v6, format!("pseudo-header only, IPv{}", if v6 { 6 } else { 4 }).as_bytes());
        let (u, sum) = (udp_of(&f), pseudo_sum(&f));
        set16(&mut f, u + udp::CHECKSUM.start, sum);
        frames.push(f);
    }
    let replies = exchange(&lab, &port, &frames, &sentinel);
    answered += 1 + frames.len() as u64;
    assert_eq!(replies.len(), frames.len(), "{replies:?}");
    for r in &replies {
        assert_eq!(parse(&r.frame).unwrap().unwrap().udp_checksum(), UdpChecksum::Correct, "{r:?}");
    }

    // Malformed on the served port: a wrong IPv4 header checksum, a UDP length beyond the IP payload. Passed
    // to the kernel, which drops them.
    let mut bad_header = request(&lab, false, b"wrong IPv4 header checksum");
    bad_header[eth::HEADER_LEN + ipv4::CHECKSUM.start] ^= 0x10;
    let mut bad_length = request(&lab, true, b"UDP length beyond the payload");
    let u = udp_of(&bad_length);
    set16(&mut bad_length, u + udp::LENGTH.start, 300);
    let replies = exchange(&lab, &port, &[bad_header, bad_length], &sentinel);
    answered += 1;
    assert!(replies.is_empty(), "{replies:?}");
    let c = wait_counters(&reader, "malformed", |c| c.malformed == 2);
    assert_eq!(c.answered, answered, "{c:?}");

    // Another port: the kernel's. Its sockets in the server namespace receive the datagrams.
    for v6 in [false, true] {
        let sock = common::client_socket(&lab, v6, OTHER_PORT);
        common::send_retrying(&sock, b"for the kernel").unwrap();
        assert_eq!(next_datagram(&other[usize::from(v6)], "a datagram to another port"), 14);
    }

    // The largest payload answered, and one byte more: passed to the kernel, whose socket on the served port
    // receives it.
    for v6 in [false, true] {
        let sock = common::client_socket(&lab, v6, PORT);
        sock.set_read_timeout(Some(T)).unwrap();
        let p = common::echo_payload(7, MAX_PAYLOAD);
        common::send_retrying(&sock, &p).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = sock.recv(&mut buf).expect("the largest payload is answered");
        assert_eq!(&buf[..n], &p[..]);
        answered += 1;
        common::send_retrying(&sock, &common::echo_payload(8, MAX_PAYLOAD + 1)).unwrap();
        let what = format!("a {}-byte payload over IPv{}", MAX_PAYLOAD + 1, if v6 { 6 } else { 4 });
        assert_eq!(next_datagram(&served[usize::from(v6)], &what), MAX_PAYLOAD + 1);
    }
    let c = wait_counters(&reader, "too long", |c| c.too_long == 2);

    // Nothing the program dropped or the kernel dropped reached the served port's kernel sockets.
    for s in &served {
        assert_nothing_waiting(s, "the served port's kernel socket");
    }
    assert_eq!(c.answered, answered, "{c:?}");
    assert_eq!((c.bad_checksum, c.malformed, c.dropped_by_handler, c.too_long), (3, 2, 0, 2), "{c:?}");
    assert!(c.passed >= 2, "{c:?}");
    assert_every_frame_counted(&lab, &reader, base);
    eprintln!("counters: {:?}", reader.read().unwrap());
    drop(link);
}

// ---------------------------------------------------------------------------------------------------------
// Byte for byte against the user-space path
// ---------------------------------------------------------------------------------------------------------

/// A tiny deterministic generator (the test must be reproducible).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// Where a request must be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fate {
    Answered,
    Malformed,
    BadChecksum,
    DroppedByHandler,
    TooLong,
}

/// A random request to the served port: IPv4 (with options, sometimes) or IPv6, sometimes behind an
/// 802.1Q or 802.1ad tag, any payload length up to a little more than answered, a full, zero (IPv4),
/// pseudo-header-only or corrupted UDP checksum; sometimes Ethernet padding, a UDP length shorter than the
/// IP payload, or a damaged header.
fn random_request(lab: &Lab, rng: &mut XorShift, seq: u64, sockperf: bool) -> Vec<u8> {
    let v6 = rng.chance(40);
    let vlan = if rng.chance(25) { Some((rng.below(4094) + 1) as u16) } else { None };
    let mut spec = spec(lab, v6, vlan, PORT);
    if rng.chance(30) {
        // Any source: the program answers whoever asks (MACs are still the lab's).
        let port = rng.next() as u16;
        spec.src = if v6 {
            let mut a = [0u8; 16];
            rng.fill(&mut a);
            (std::net::Ipv6Addr::from(a), port).into()
        } else {
            (std::net::Ipv4Addr::from(rng.next() as u32), port).into()
        };
    }
    let len = match rng.below(10) {
        0..=4 => rng.below(64) as usize,
        5..=8 => rng.below(MAX_PAYLOAD as u64 + 1) as usize,
        _ => MAX_PAYLOAD - 20 + rng.below(60) as usize,
    };
    let mut payload = vec![0u8; len];
    rng.fill(&mut payload);
    let head = seq.to_be_bytes();
    let n = len.min(8);
    payload[..n].copy_from_slice(&head[..n]);
    if sockperf && len >= 10 {
        let flags: u16 = match rng.below(6) {
            0 | 1 => 0x0003,
            2 => 0x0001,
            3 => 0x0002,
            4 => 0x0007,
            _ => rng.next() as u16,
        };
        payload[8..10].copy_from_slice(&flags.to_be_bytes());
    }
    let mut f = request_with(&spec, &payload);
    let l3 = l3_of(&f);
    if vlan.is_some() && rng.chance(50) {
        set16(&mut f, eth::ETHERTYPE.start, 0x88a8);
    }
    if !v6 {
        // Random TOS, identification, TTL and DF; sometimes options (NOPs or random bytes).
        f[l3 + 1] = rng.next() as u8;
        f[l3 + 4] = rng.next() as u8;
        f[l3 + 5] = rng.next() as u8;
        f[l3 + 8] = rng.next() as u8;
        if rng.chance(30) {
            set16(&mut f, l3 + ipv4::FLAGS_FRAG.start, 0x4000);
        }
        if rng.chance(25) {
            let words = 1 + rng.below(10) as usize;
            let mut options = vec![1u8; words * 4];
            if rng.chance(50) {
                rng.fill(&mut options);
            } else if words >= 2 && rng.chance(50) {
                // A loose source route through the client's own address: type 131, length, pointer 4.
                let hops = (words * 4 - 3) / 4;
                options[..3].copy_from_slice(&[0x83, (3 + 4 * hops) as u8, 4]);
                for h in 0..hops {
                    options[3 + 4 * h..7 + 4 * h].copy_from_slice(&[198, 18, 0, 9]);
                }
                options[3 + 4 * hops..].fill(0);
            }
            let at = l3 + ipv4::MIN_HEADER_LEN;
            f.splice(at..at, options);
            f[l3 + ipv4::VER_IHL] = 0x45 + words as u8;
            let total = get16(&f, l3 + ipv4::TOTAL_LEN.start) + (words * 4) as u16;
            set16(&mut f, l3 + ipv4::TOTAL_LEN.start, total);
        }
        fix_ipv4_checksum(&mut f);
    } else {
        // Random traffic class, flow label and hop limit.
        f[l3] = 0x60 | (rng.next() as u8 & 0x0f);
        rng.fill(&mut f[l3 + 1..l3 + 4]);
        f[l3 + 7] = rng.next() as u8;
    }
    let u = udp_of(&f);
    // A UDP length shorter than the IP payload: the rest is not part of the datagram.
    if len > 0 && rng.chance(5) {
        let cut = 1 + rng.below(len as u64) as u16;
        let udp_len = get16(&f, u + udp::LENGTH.start) - cut;
        set16(&mut f, u + udp::LENGTH.start, udp_len);
        fix_udp_checksum(&mut f);
    }
    match rng.below(20) {
        0..=1 if !v6 => set16(&mut f, u + udp::CHECKSUM.start, 0),
        2..=4 => {
            let sum = pseudo_sum(&f);
            set16(&mut f, u + udp::CHECKSUM.start, sum);
        }
        5 if f.len() > u + udp::HEADER_LEN => {
            // A payload bit flipped on the way.
            let at = u + udp::HEADER_LEN + rng.below((f.len() - u - udp::HEADER_LEN) as u64) as usize;
            f[at] ^= 1 << rng.below(8);
        }
        6 => {
            let sum = get16(&f, u + udp::CHECKSUM.start);
            set16(&mut f, u + udp::CHECKSUM.start, sum ^ (1 + rng.below(0xfffe) as u16));
        }
        _ => {}
    }
    match rng.below(40) {
        0 if !v6 => f[l3 + ipv4::CHECKSUM.start] ^= 1 + rng.below(255) as u8,
        1 => set16(&mut f, u + udp::LENGTH.start, rng.below(8) as u16),
        2 => {
            let udp_len = get16(&f, u + udp::LENGTH.start);
            set16(&mut f, u + udp::LENGTH.start, udp_len + 1 + rng.below(100) as u16);
        }
        3..=6 => {
            // Ethernet padding after the IP packet.
            let pad = 1 + rng.below(40) as usize;
            let start = f.len();
            f.resize(start + pad, 0);
            rng.fill(&mut f[start..]);
        }
        _ => {}
    }
    f
}

/// What the user-space path makes of `frame`, and the reply frame if it answers: `respond`, the worker's
/// pure step, with `handler` and the default reply headers (the program's: TTL 64, DSCP 0) under the lab's
/// MTU; a payload over [`MAX_PAYLOAD`] is the in-kernel server's to refuse.
fn predict(frame: &[u8], handler: &mut dyn Handler) -> (Fate, Option<Vec<u8>>) {
    if let Ok(Some(d)) = parse(frame) {
        if d.payload_len() > MAX_PAYLOAD {
            return (Fate::TooLong, None);
        }
    }
    let mut buf = frame.to_vec();
    buf.resize(4096, 0);
    let options = RespondOptions::default().with_mtu(LAB_MTU as usize);
    match respond(handler, &mut buf, frame.len(), Time::default(), options) {
        Outcome::Reply(n) => (Fate::Answered, Some(buf[..n].to_vec())),
        Outcome::Malformed(_) => (Fate::Malformed, None),
        Outcome::BadChecksum => (Fate::BadChecksum, None),
        Outcome::HandlerDrop => (Fate::DroppedByHandler, None),
        other => panic!("unexpected prediction {other:?} for {frame:02x?}"),
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn replies_are_byte_for_byte_those_of_the_user_space_path() {
    common::require_lab();
    let lab = Lab::new(1);
    set_mtu(&lab, LAB_MTU);
    let _peer = client_peer_program(&lab);
    let _absorb = absorbers(&lab);
    let (mut server, _link) = start(&lab, InKernelHandler::Echo, AttachMode::Native);
    let reader = server.counters_reader().expect("counters reader");
    let port = RawPort::open(&lab, Side::Client);
    let base = uncounted(&lab, &reader);
    let mut rng = XorShift(0x5eed_a45e_e000_0001);
    const N: u64 = 2_500;

    for kind in [InKernelHandler::Echo, InKernelHandler::Sockperf] {
        server.set_handler(kind).expect("select the handler");
        let sockperf = kind == InKernelHandler::Sockperf;
        let before = reader.read().unwrap();
        let mut fates: HashMap<Fate, u64> = HashMap::new();
        let mut expected: HashMap<Seen, u64> = HashMap::new();
        let mut frames = Vec::new();
        for seq in 0..N {
            let f = random_request(&lab, &mut rng, seq, sockperf);
            let (fate, reply) = if sockperf { predict(&f, &mut Sockperf) } else { predict(&f, &mut Echo) };
            *fates.entry(fate).or_default() += 1;
            if let Some(r) = reply {
                *expected.entry(Seen::of(&r)).or_default() += 1;
            }
            frames.push(f);
        }
        let sentinel = if sockperf {
            request(&lab, false, &sockperf_message(u64::MAX, 0x0003, 64))
        } else {
            request(&lab, false, b"sentinel")
        };
        let replies = exchange(&lab, &port, &frames, &sentinel);

        let mut unexpected = Vec::new();
        for r in replies {
            match expected.get_mut(&r) {
                Some(n) if *n > 0 => *n -= 1,
                _ => unexpected.push(r),
            }
        }
        let missing: Vec<&Seen> = expected.iter().filter(|(_, n)| **n > 0).map(|(s, _)| s).collect();
        assert!(
            unexpected.is_empty() && missing.is_empty(),
            "{}: {} replies the user-space path would not send (first {:02x?}), {} it would send missing (first \
             {:02x?})",
            kind.name(),
            unexpected.len(),
            unexpected.first().map(|s| &s.frame[..s.frame.len().min(64)]),
            missing.len(),
            missing.first().map(|s| &s.frame[..s.frame.len().min(64)])
        );
        let fate = |f: Fate| fates.get(&f).copied().unwrap_or(0);
        let c = reader.read().unwrap();
        let got = (
            c.answered - before.answered,
            c.malformed - before.malformed,
            c.bad_checksum - before.bad_checksum,
            c.dropped_by_handler - before.dropped_by_handler,
            c.too_long - before.too_long,
        );
        let want = (
            fate(Fate::Answered) + 1,
            fate(Fate::Malformed),
            fate(Fate::BadChecksum),
            fate(Fate::DroppedByHandler),
            fate(Fate::TooLong),
        );
        assert_eq!(got, want, "{}: (answered, malformed, bad checksum, dropped by handler, too long)", kind.name());
        eprintln!("{}: {N} random requests {fates:?}, every reply byte for byte the user-space path's", kind.name());
    }
    assert_every_frame_counted(&lab, &reader, base);
}
