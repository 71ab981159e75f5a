//! The seed corpus, generated: `seeds/<target>/<name>` holds `bytes` of each [`Seed`] below, and
//! `tests/corpus_smoke.rs` checks that the committed files match (`SHUNT_FUZZ_WRITE_SEEDS=1 cargo test` rewrites
//! them; run only that test then). Names start with what `parse` must say: `ok-` (a datagram), `none-` (not ours) or `bad-` (malformed).
//!
//! Frames are assembled byte by byte here, with the naive checksum from the crate root, so that the seeds do not
//! depend on the code under test.

use crate::naive_sum;

/// What `packet::parse` must return for a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// `Ok(Some(_))`.
    Datagram,
    /// `Ok(None)`.
    NotOurs,
    /// `Err(_)`.
    Malformed,
}

/// One seed input.
#[derive(Debug, Clone)]
pub struct Seed {
    /// File name, `ok-…`, `none-…` or `bad-…`.
    pub name: String,
    /// The frame.
    pub bytes: Vec<u8>,
}

impl Seed {
    /// What `parse` must say, from the name's prefix.
    pub fn expect(&self) -> Expect {
        if self.name.starts_with("ok-") {
            Expect::Datagram
        } else if self.name.starts_with("none-") {
            Expect::NotOurs
        } else {
            assert!(self.name.starts_with("bad-"), "seed name {}", self.name);
            Expect::Malformed
        }
    }
}

/// The fuzz targets that have a seed directory.
pub const TARGETS: [&str; 3] = ["parse", "respond_echo", "respond_sockperf"];

const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const V4_SRC: [u8; 4] = [198, 18, 0, 2];
const V4_DST: [u8; 4] = [198, 18, 0, 1];
const V6_SRC: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const V6_DST: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Which UDP checksum a seed carries.
#[derive(Clone, Copy)]
enum Sum {
    Correct,
    Zero,
    Value(u16),
}

fn ethernet(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut f = DST_MAC.to_vec();
    f.extend_from_slice(&SRC_MAC);
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn udp(src: &[u8], dst: &[u8], sport: u16, dport: u16, payload: &[u8], sum: Sum) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let value = match sum {
        Sum::Zero => 0,
        Sum::Value(v) => v,
        Sum::Correct => {
            let mut all = src.to_vec();
            all.extend_from_slice(dst);
            if src.len() == 4 {
                all.extend_from_slice(&[0, 17]);
                all.extend_from_slice(&(u.len() as u16).to_be_bytes());
            } else {
                all.extend_from_slice(&(u.len() as u32).to_be_bytes());
                all.extend_from_slice(&[0, 0, 0, 17]);
            }
            all.extend_from_slice(&u);
            match !naive_sum(&all) {
                0 => 0xffff,
                c => c,
            }
        }
    };
    u[6..8].copy_from_slice(&value.to_be_bytes());
    u
}

/// An IPv4 header (checksum filled in) with `options`, `flags_frag` (flags and fragment offset) and `proto`.
fn ipv4(options: &[u8], flags_frag: u16, proto: u8, payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let header = 20 + options.len();
    let mut h = vec![0x40 | (header / 4) as u8, 0x00];
    h.extend_from_slice(&((header + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&0x1234u16.to_be_bytes());
    h.extend_from_slice(&flags_frag.to_be_bytes());
    h.extend_from_slice(&[17, proto, 0, 0]);
    h.extend_from_slice(&V4_SRC);
    h.extend_from_slice(&V4_DST);
    h.extend_from_slice(options);
    let c = !naive_sum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0x00, 0x00, 0x00];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 9]);
    h.extend_from_slice(&V6_SRC);
    h.extend_from_slice(&V6_DST);
    h.extend_from_slice(payload);
    h
}

fn v4_frame(tags: &[(u16, u16)], options: &[u8], payload: &[u8], sum: Sum) -> Vec<u8> {
    let mut f = ethernet(tags, 0x0800);
    f.extend(ipv4(options, 0x4000, 17, &udp(&V4_SRC, &V4_DST, 40000, 11111, payload, sum)));
    f
}

fn v6_frame(tags: &[(u16, u16)], payload: &[u8], sum: Sum) -> Vec<u8> {
    let mut f = ethernet(tags, 0x86dd);
    f.extend(ipv6(17, &udp(&V6_SRC, &V6_DST, 40000, 11111, payload, sum)));
    f
}

/// A sockperf message: sequence, flags, length, then filler up to `len` bytes.
fn sockperf_message(seq: u64, flags: u16, len: usize) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    m.resize(len.max(14), 0x5a);
    m.truncate(len);
    m
}

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    Seed { name: name.to_string(), bytes }
}

/// Seeds shared by all targets: valid IPv4 / IPv6 / tagged frames and broken ones.
pub fn common() -> Vec<Seed> {
    let hello = b"hello, shunt";
    let options: Vec<u8> = (0..40u8).map(|i| if i % 4 == 3 { 1 } else { i }).collect();
    let mut padded = v4_frame(&[], &[], b"hi", Sum::Correct);
    padded.resize(60, 0);
    let mut padded6 = v6_frame(&[], b"", Sum::Correct);
    padded6.extend_from_slice(&[0xee; 6]);
    let mut short_udp = v4_frame(&[], &[], hello, Sum::Correct);
    short_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&10u16.to_be_bytes()); // UDP says 2 bytes of payload

    let base = v4_frame(&[], &[], hello, Sum::Correct);
    let mut bad_checksum = base.clone();
    bad_checksum[14 + 10] ^= 0x01;
    let mut ihl4 = base.clone();
    ihl4[14] = 0x44;
    let mut total_long = base.clone();
    total_long[14 + 2..14 + 4].copy_from_slice(&((base.len() - 14 + 1) as u16).to_be_bytes());
    let mut udp_len = base.clone();
    udp_len[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
    let v6 = v6_frame(&[], hello, Sum::Correct);
    let mut v6_zero = v6.clone();
    v6_zero[14 + 4..14 + 6].copy_from_slice(&[0, 0]);

    let mut arp = ethernet(&[], 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&V4_SRC);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&V4_DST);
    let mut tcp = ethernet(&[], 0x0800);
    tcp.extend(ipv4(
        &[],
        0x4000,
        6,
        &[0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0],
    ));
    let mut fragment = ethernet(&[], 0x0800);
    fragment.extend(ipv4(&[], 0x2000, 17, &udp(&V4_SRC, &V4_DST, 40000, 11111, hello, Sum::Zero)));
    let mut hop_by_hop = ethernet(&[], 0x86dd);
    let mut ext = vec![17, 0, 1, 4, 0, 0, 0, 0];
    ext.extend(udp(&V6_SRC, &V6_DST, 40000, 11111, hello, Sum::Zero));
    hop_by_hop.extend(ipv6(0, &ext));
    let mut double = ethernet(&[(0x88a8, 100), (0x8100, 200)], 0x0800);
    double.extend_from_slice(&base[14..]);

    vec![
        seed("ok-v4-basic", base.clone()),
        seed("ok-v4-empty-payload", v4_frame(&[], &[], b"", Sum::Correct)),
        seed("ok-v4-ihl15-no-udp-sum", v4_frame(&[], &options, hello, Sum::Zero)),
        seed("ok-v4-padded-to-60", padded),
        seed("ok-v4-dot1q", v4_frame(&[(0x8100, 0x2064)], &[], hello, Sum::Correct)),
        seed("ok-v4-dot1ad", v4_frame(&[(0x88a8, 0x0005)], &[], hello, Sum::Correct)),
        seed("ok-v4-garbage-udp-sum", v4_frame(&[], &[], hello, Sum::Value(0xbeef))),
        seed("ok-v4-udp-shorter-than-ip", short_udp),
        seed("ok-v6-basic", v6.clone()),
        seed("ok-v6-dot1q", v6_frame(&[(0x8100, 0xa02a)], hello, Sum::Correct)),
        seed("ok-v6-padded-empty", padded6),
        seed("bad-empty", Vec::new()),
        seed("bad-ethernet-13-bytes", base[..13].to_vec()),
        seed("bad-v4-cut-in-header", base[..14 + 12].to_vec()),
        seed("bad-v4-cut-in-payload", base[..base.len() - 1].to_vec()),
        seed("bad-v4-header-checksum", bad_checksum),
        seed("bad-v4-ihl-4", ihl4),
        seed("bad-v4-total-length", total_long),
        seed("bad-udp-length-7", udp_len),
        seed("bad-v6-payload-length-0", v6_zero),
        seed("bad-v6-cut-in-header", v6[..14 + 30].to_vec()),
        seed("none-arp", arp),
        seed("none-v4-tcp", tcp),
        seed("none-v4-fragment", fragment),
        seed("none-v6-hop-by-hop", hop_by_hop),
        seed("none-double-vlan", double),
    ]
}

/// Sockperf messages: ping-pong requests over IPv4 / IPv6 / VLAN, and messages it must not answer.
pub fn sockperf() -> Vec<Seed> {
    vec![
        seed("ok-sockperf-v4-pong-request", v4_frame(&[], &[], &sockperf_message(1, 3, 64), Sum::Correct)),
        seed("ok-sockperf-v6-dot1q-pong-request", v6_frame(&[(0x8100, 7)], &sockperf_message(2, 3, 14), Sum::Zero)),
        seed("ok-sockperf-v4-extra-flags", v4_frame(&[], &[], &sockperf_message(3, 0x0107, 32), Sum::Correct)),
        seed("ok-sockperf-client-only", v4_frame(&[], &[], &sockperf_message(4, 1, 64), Sum::Correct)),
        seed("ok-sockperf-server-reply", v4_frame(&[], &[], &sockperf_message(5, 2, 64), Sum::Correct)),
        seed("ok-sockperf-short", v4_frame(&[], &[], &sockperf_message(6, 3, 13), Sum::Correct)),
    ]
}

/// The seeds of `target`.
pub fn for_target(target: &str) -> Vec<Seed> {
    let mut s = common();
    if target == "respond_sockperf" {
        s.extend(sockperf());
    }
    s
}
