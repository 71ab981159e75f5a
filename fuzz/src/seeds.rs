//! The seed corpus, generated: `seeds/<target>/<name>` holds `bytes` of each [`Seed`] below, and
//! `tests/corpus_smoke.rs` checks that the committed files match (`SHUNT_FUZZ_WRITE_SEEDS=1 cargo test` rewrites
//! them; run only that test then).
//!
//! Frame seeds (targets `parse`, `respond_echo`, `respond_sockperf`) are built by `packet::write_request` and then
//! edited through the offsets in `packet::field` (checksums re-fixed with the naive sum of the crate root). Their
//! names start with what `parse` must say: `ok-` (a datagram), `none-` (not ours) or `bad-` (malformed).
//! `write_request` seeds are [`BuildInput`] encodings, named `ok-` or `bad-` after what `write_request` must
//! return; `checksum` seeds are plain bytes.

use std::net::SocketAddr;

use shunt::packet::field::{eth, ipv4, ipv6, udp, vlan};
use shunt::packet::{self, FlowSpec, ETHERTYPE_QINQ, ETHERTYPE_VLAN};

use crate::{at, get16, naive_sum, naive_udp_checksum, pseudo_header, set16, BuildInput};

/// What `packet::parse` (or, for `write_request` seeds, `write_request`) must return for a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `Ok(Some(_))` (`Ok(_)` for `write_request`).
    Datagram,
    /// `Ok(None)`.
    NotOurs,
    /// `Err(_)`.
    Malformed,
    /// No expectation (`checksum` seeds).
    Anything,
}

/// One seed input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name, `ok-…`, `none-…` or `bad-…` (anything for `checksum`).
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

impl Seed {
    /// What the target's function under test must say, from the name's prefix.
    pub fn expect(&self) -> Expect {
        if self.name.starts_with("ok-") {
            Expect::Datagram
        } else if self.name.starts_with("none-") {
            Expect::NotOurs
        } else if self.name.starts_with("bad-") {
            Expect::Malformed
        } else {
            Expect::Anything
        }
    }
}

/// The fuzz targets whose input is a received frame.
pub const FRAME_TARGETS: [&str; 3] = ["parse", "respond_echo", "respond_sockperf"];

/// Every fuzz target (each has a seed directory).
pub const TARGETS: [&str; 5] = ["parse", "respond_echo", "respond_sockperf", "write_request", "checksum"];

const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const V4_SRC: &str = "198.18.0.2:40000";
const V4_DST: &str = "198.18.0.1:11111";
const V6_SRC: &str = "[fd00::2]:40000";
const V6_DST: &str = "[fd00::1]:11111";

/// The flow of the frame seeds; `tag` is (TPID, TCI).
fn flow(v6: bool, tag: Option<(u16, u16)>) -> FlowSpec {
    let (src, dst) = if v6 { (V6_SRC, V6_DST) } else { (V4_SRC, V4_DST) };
    FlowSpec {
        src_mac: SRC_MAC,
        dst_mac: DST_MAC,
        vlan_tci: tag.map(|(_, tci)| tci),
        src: src.parse::<SocketAddr>().expect("address"),
        dst: dst.parse::<SocketAddr>().expect("address"),
    }
}

/// A frame of the seeds' flow, as `write_request` builds it (full UDP checksum), then given `tag`'s TPID.
fn frame(v6: bool, tag: Option<(u16, u16)>, payload: &[u8]) -> Frame {
    let spec = flow(v6, tag);
    let off = spec.payload_offset();
    let mut bytes = vec![0u8; off + payload.len()];
    bytes[off..].copy_from_slice(payload);
    let n = packet::write_request(&mut bytes, &spec, payload.len()).expect("seed frame");
    assert_eq!(n, bytes.len());
    if let Some((tpid, _)) = tag {
        set16(&mut bytes, 0, eth::ETHERTYPE, tpid);
    }
    let l3 = eth::HEADER_LEN + if tag.is_some() { vlan::TAG_LEN } else { 0 };
    let udp_at = off - udp::HEADER_LEN;
    Frame { bytes, v6, l3, udp_at }
}

/// A frame seed being edited, with where its headers start.
#[derive(Clone)]
struct Frame {
    bytes: Vec<u8>,
    v6: bool,
    l3: usize,
    udp_at: usize,
}

/// What a frame's UDP checksum field holds.
#[derive(Clone, Copy)]
enum Sum {
    /// The full checksum, recomputed naively.
    Correct,
    /// Zero: none (IPv4), an error (IPv6).
    Zero,
    /// The folded pseudo-header sum, as an offloading sender leaves it.
    PseudoOnly,
    Value(u16),
}

impl Frame {
    fn addrs(&self) -> (Vec<u8>, Vec<u8>) {
        let b = &self.bytes;
        if self.v6 {
            (b[at(self.l3, ipv6::SRC)].to_vec(), b[at(self.l3, ipv6::DST)].to_vec())
        } else {
            (b[at(self.l3, ipv4::SRC)].to_vec(), b[at(self.l3, ipv4::DST)].to_vec())
        }
    }

    /// The UDP segment's length, from its length field.
    fn udp_len(&self) -> usize {
        usize::from(get16(&self.bytes, self.udp_at, udp::LENGTH))
    }

    /// Sets the UDP checksum field (over the segment as long as the UDP length says).
    fn udp_sum(mut self, sum: Sum) -> Frame {
        let (src, dst) = self.addrs();
        let value = match sum {
            Sum::Zero => 0,
            Sum::Value(v) => v,
            Sum::PseudoOnly => naive_sum(&pseudo_header(&src, &dst, self.udp_len())),
            Sum::Correct => {
                set16(&mut self.bytes, self.udp_at, udp::CHECKSUM, 0);
                let end = self.udp_at + self.udp_len();
                naive_udp_checksum(&src, &dst, &self.bytes[self.udp_at..end])
            }
        };
        set16(&mut self.bytes, self.udp_at, udp::CHECKSUM, value);
        self
    }

    /// Recomputes the IPv4 header checksum (naively).
    fn fix_ipv4(mut self) -> Frame {
        let l3 = self.l3;
        let ihl = usize::from(self.bytes[l3 + ipv4::VER_IHL] & 0x0f) * 4;
        set16(&mut self.bytes, l3, ipv4::CHECKSUM, 0);
        let c = !naive_sum(&self.bytes[l3..l3 + ihl]);
        set16(&mut self.bytes, l3, ipv4::CHECKSUM, c);
        self
    }

    /// Inserts IPv4 `options` after the fixed header (IHL, total length and header checksum updated).
    fn ipv4_options(mut self, options: &[u8]) -> Frame {
        assert_eq!(options.len() % 4, 0);
        let (l3, at_options) = (self.l3, self.l3 + ipv4::MIN_HEADER_LEN);
        self.bytes.splice(at_options..at_options, options.iter().copied());
        self.bytes[l3 + ipv4::VER_IHL] = 0x40 | ((ipv4::MIN_HEADER_LEN + options.len()) / 4) as u8;
        let total = get16(&self.bytes, l3, ipv4::TOTAL_LEN) + options.len() as u16;
        set16(&mut self.bytes, l3, ipv4::TOTAL_LEN, total);
        self.udp_at += options.len();
        self.fix_ipv4()
    }

    /// Edits the bytes.
    fn edit(mut self, f: impl FnOnce(&mut Vec<u8>, usize, usize)) -> Frame {
        f(&mut self.bytes, self.l3, self.udp_at);
        self
    }

    fn seed(self, name: &str) -> Seed {
        seed(name, self.bytes)
    }
}

/// A sockperf message: sequence, flags, length, then filler up to `len` bytes.
fn sockperf_message(seq: u64, flags: u16, len: usize) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.resize(len.max(shunt::handler::SOCKPERF_HEADER_LEN), 0x5a);
    m.truncate(len);
    m
}

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    Seed { name: name.to_string(), bytes }
}

/// Frame seeds shared by the frame targets: valid IPv4 / IPv6 / tagged frames with every kind of UDP checksum,
/// and broken ones.
pub fn common() -> Vec<Seed> {
    let hello = b"hello, shunt";
    let dot1q = Some((ETHERTYPE_VLAN, 0x2064));
    let options: Vec<u8> = (0..40u8).map(|i| if i % 4 == 3 { 1 } else { i }).collect();
    let base = frame(false, None, hello);
    let v6 = frame(true, None, hello);
    let cut = |f: &Frame, len: usize| f.bytes[..len].to_vec();

    let mut padded = frame(false, None, b"hi").bytes;
    padded.resize(60, 0);
    let mut padded6 = frame(true, None, b"").bytes;
    padded6.extend_from_slice(&[0xee; 6]);

    let mut arp = vec![0u8; eth::HEADER_LEN];
    arp[eth::DST].copy_from_slice(&[0xff; 6]);
    arp[eth::SRC].copy_from_slice(&SRC_MAC);
    set16(&mut arp, 0, eth::ETHERTYPE, 0x0806);
    // ARP request (Ethernet / IPv4, opcode 1): who has 198.18.0.1, tell 198.18.0.2.
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&[198, 18, 0, 2]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[198, 18, 0, 1]);

    // A hop-by-hop options header (next header UDP, length 0, a PadN option) between IPv6 and UDP.
    let mut hop_by_hop = v6.clone().edit(|f, l3, udp_at| {
        f[l3 + ipv6::NEXT_HEADER] = 0;
        f.splice(udp_at..udp_at, [packet::IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        let len = get16(f, l3, ipv6::PAYLOAD_LEN) + 8;
        set16(f, l3, ipv6::PAYLOAD_LEN, len);
    });
    hop_by_hop.udp_at += 8;
    let mut double = base.bytes[..eth::ETHERTYPE.start].to_vec();
    double.extend_from_slice(&ETHERTYPE_QINQ.to_be_bytes());
    double.extend_from_slice(&100u16.to_be_bytes());
    double.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
    double.extend_from_slice(&200u16.to_be_bytes());
    double.extend_from_slice(&base.bytes[eth::ETHERTYPE.start..]);

    vec![
        base.clone().seed("ok-v4-basic"),
        frame(false, None, b"").seed("ok-v4-empty-payload"),
        base.clone().ipv4_options(&options).udp_sum(Sum::Zero).seed("ok-v4-ihl15-no-udp-sum"),
        seed("ok-v4-padded-to-60", padded),
        frame(false, dot1q, hello).seed("ok-v4-dot1q"),
        frame(false, Some((ETHERTYPE_QINQ, 0x0005)), hello).seed("ok-v4-dot1ad"),
        base.clone().udp_sum(Sum::Value(0xbeef)).seed("ok-v4-garbage-udp-sum"),
        base.clone().udp_sum(Sum::PseudoOnly).seed("ok-v4-pseudo-header-udp-sum"),
        base.clone().edit(|f, _, udp_at| f[udp_at + udp::HEADER_LEN] ^= 0x20).seed("ok-v4-corrupted-payload"),
        base.clone()
            .edit(|f, _, udp_at| set16(f, udp_at, udp::LENGTH, (udp::HEADER_LEN + 2) as u16))
            .udp_sum(Sum::Correct)
            .seed("ok-v4-udp-shorter-than-ip"),
        v6.clone().seed("ok-v6-basic"),
        frame(true, Some((ETHERTYPE_VLAN, 0xa02a)), hello).seed("ok-v6-dot1q"),
        seed("ok-v6-padded-empty", padded6),
        v6.clone().udp_sum(Sum::Zero).seed("ok-v6-zero-udp-sum"),
        v6.clone().udp_sum(Sum::PseudoOnly).seed("ok-v6-pseudo-header-udp-sum"),
        seed("bad-empty", Vec::new()),
        seed("bad-ethernet-13-bytes", cut(&base, eth::HEADER_LEN - 1)),
        seed("bad-v4-cut-in-header", cut(&base, base.l3 + ipv4::SRC.start)),
        seed("bad-v4-cut-in-payload", cut(&base, base.bytes.len() - 1)),
        base.clone().edit(|f, l3, _| f[l3 + ipv4::CHECKSUM.start] ^= 0x01).seed("bad-v4-header-checksum"),
        base.clone().edit(|f, l3, _| f[l3 + ipv4::VER_IHL] = 0x44).seed("bad-v4-ihl-4"),
        base.clone()
            .edit(|f, l3, _| {
                let total = (f.len() - l3 + 1) as u16;
                set16(f, l3, ipv4::TOTAL_LEN, total)
            })
            .fix_ipv4()
            .seed("bad-v4-total-length"),
        base.clone().edit(|f, _, udp_at| set16(f, udp_at, udp::LENGTH, 7)).seed("bad-udp-length-7"),
        v6.clone().edit(|f, l3, _| set16(f, l3, ipv6::PAYLOAD_LEN, 0)).seed("bad-v6-payload-length-0"),
        seed("bad-v6-cut-in-header", cut(&v6, v6.l3 + ipv6::HEADER_LEN - 10)),
        seed("none-arp", arp),
        base.clone().edit(|f, l3, _| f[l3 + ipv4::PROTOCOL] = 6).fix_ipv4().seed("none-v4-tcp"),
        base.clone()
            .edit(|f, l3, _| set16(f, l3, ipv4::FLAGS_FRAG, 0x2000)) // more fragments
            .fix_ipv4()
            .seed("none-v4-fragment"),
        hop_by_hop.seed("none-v6-hop-by-hop"),
        seed("none-double-vlan", double),
    ]
}

/// Sockperf messages: ping-pong requests over IPv4 / IPv6 / VLAN, and messages it must not answer.
pub fn sockperf() -> Vec<Seed> {
    let v4 = |m: Vec<u8>| frame(false, None, &m);
    vec![
        v4(sockperf_message(1, 3, 64)).seed("ok-sockperf-v4-pong-request"),
        frame(true, Some((ETHERTYPE_VLAN, 7)), &sockperf_message(2, 3, 14)).seed("ok-sockperf-v6-dot1q-pong-request"),
        v4(sockperf_message(3, 0x0107, 32)).seed("ok-sockperf-v4-extra-flags"),
        v4(sockperf_message(4, 1, 64)).seed("ok-sockperf-client-only"),
        v4(sockperf_message(5, 2, 64)).seed("ok-sockperf-server-reply"),
        v4(sockperf_message(6, 3, 13)).seed("ok-sockperf-short"),
        v4(sockperf_message(7, 3, 64)).udp_sum(Sum::PseudoOnly).seed("ok-sockperf-v4-pseudo-header-udp-sum"),
        v4(sockperf_message(8, 3, 64))
            .edit(|f, _, udp_at| f[udp_at + udp::HEADER_LEN] ^= 0x01)
            .seed("ok-sockperf-v4-corrupted"),
    ]
}

/// `write_request` inputs: each header layout, exact fits, every error, the 64 KiB IP length limits.
pub fn write_request() -> Vec<Seed> {
    // Length classes of `BuildInput`: 0 = the low byte, 1 = mod 2048, 2 = 65_400 + the low byte,
    // 3 = usize::MAX - the low byte (payload only; for the buffer, 3 is the 16-bit value).
    let enc = |name: &str, v6: bool, tag: Option<u16>, buf: (u8, u16), payload: (u8, u16)| {
        let spec = FlowSpec { vlan_tci: tag, ..flow(v6, None) };
        seed(name, BuildInput::encode(&spec, buf, payload, b"hello, shunt"))
    };
    let mixed = FlowSpec { dst: V6_DST.parse().expect("address"), ..flow(false, None) };
    let v4_need = (eth::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN) as u16;
    let v6_need = (eth::HEADER_LEN + vlan::TAG_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN) as u16;
    vec![
        enc("ok-v4-basic", false, None, (1, 256), (0, 12)),
        enc("ok-v4-dot1q", false, Some(0x2064), (1, 1518), (1, 1472)),
        enc("ok-v6-basic", true, None, (1, 256), (0, 100)),
        enc("ok-v6-dot1q-exact-fit", true, Some(7), (0, v6_need + 5), (0, 5)),
        enc("ok-v4-empty-payload-exact-fit", false, None, (0, v4_need), (0, 0)),
        enc("ok-v4-ip-length-limit", false, None, (2, 200), (2, 107)),
        enc("ok-v6-ip-length-limit", true, None, (2, 200), (2, 127)),
        enc("bad-v4-ip-length-limit-plus-one", false, None, (2, 200), (2, 108)),
        enc("bad-v6-ip-length-limit-plus-one", true, Some(1), (2, 200), (2, 128)),
        enc("bad-v4-buffer-one-short", false, None, (0, v4_need - 1), (0, 0)),
        enc("bad-v6-dot1q-buffer-one-short", true, Some(1), (0, v6_need - 1), (0, 0)),
        enc("bad-empty-buffer", false, None, (0, 0), (0, 0)),
        enc("bad-payload-one-too-many", false, None, (1, 100), (1, 100 - v4_need + 1)),
        enc("bad-payload-usize-max", true, None, (1, 1500), (3, 0)),
        seed("bad-mixed-versions", BuildInput::encode(&mixed, (1, 256), (0, 12), b"")),
        seed("bad-empty-input", Vec::new()),
    ]
}

/// `checksum` inputs: the first 52 bytes parameterise (running sum, cut points, addresses), all of it is summed.
pub fn checksum() -> Vec<Seed> {
    let built = frame(false, None, b"hello, shunt").bytes;
    let v6 = frame(true, None, &[0xff; 33]).bytes;
    let ip_header = built[eth::HEADER_LEN..eth::HEADER_LEN + ipv4::MIN_HEADER_LEN].to_vec();
    let segment = built[eth::HEADER_LEN + ipv4::MIN_HEADER_LEN..].to_vec();
    vec![
        seed("empty", Vec::new()),
        seed("one-byte", vec![0xab]),
        // RFC 1071 §3: these words sum to 0xddf2.
        seed("rfc1071-example", vec![0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        seed("ipv4-header", ip_header),
        seed("udp-segment", segment),
        seed("ipv6-frame-odd", v6),
        seed("all-ones", vec![0xff; 129]),
        seed("all-zeros", vec![0; 64]),
        seed("frame", built),
    ]
}

/// The seeds of `target`.
pub fn for_target(target: &str) -> Vec<Seed> {
    match target {
        "write_request" => write_request(),
        "checksum" => checksum(),
        "respond_sockperf" => {
            let mut s = common();
            s.extend(sockperf());
            s
        }
        _ => common(),
    }
}
