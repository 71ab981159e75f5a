//! Runs the fuzz targets on stable, without libFuzzer: over the committed seed corpus, and over a few thousand
//! inputs from a fixed-seed PRNG (random bytes, and seeds mutated the way a fuzzer would).
//!
//! `SHUNT_FUZZ_WRITE_SEEDS=1 cargo test --release seeds_are_committed_and_current` rewrites `seeds/` from
//! `src/seeds.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use shunt::packet::field::{eth, ipv4, ipv6, udp, vlan};
use shunt::packet::{self, ETHERTYPE_IPV4};
use shunt_fuzz::seeds::{self, Expect, Seed, FRAME_TARGETS, TARGETS};
use shunt_fuzz::{expected_build, set16, BuildInput};

/// Random inputs per target.
const RANDOM_INPUTS: usize = 20_000;

fn target_fn(name: &str) -> fn(&[u8]) {
    match name {
        "parse" => shunt_fuzz::parse,
        "respond_echo" => shunt_fuzz::respond_echo,
        "respond_sockperf" => shunt_fuzz::respond_sockperf,
        "write_request" => shunt_fuzz::write_request,
        "checksum" => shunt_fuzz::checksum,
        other => panic!("unknown target {other}"),
    }
}

fn seed_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target)
}

/// Every file under `seeds/<target>/`, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(seed_dir(target))
        .unwrap_or_else(|e| panic!("seeds/{target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn seeds_are_committed_and_current() {
    let write = std::env::var_os("SHUNT_FUZZ_WRITE_SEEDS").is_some();
    for target in TARGETS {
        let dir = seed_dir(target);
        if write {
            fs::create_dir_all(&dir).unwrap();
        }
        let seeds = seeds::for_target(target);
        let names: Vec<&str> = seeds.iter().map(|s| s.name.as_str()).collect();
        // No file that src/seeds.rs no longer makes (a renamed or dropped seed).
        for (name, _) in corpus(target) {
            if !names.contains(&name.as_str()) {
                if write {
                    fs::remove_file(dir.join(&name)).unwrap();
                } else {
                    panic!("seeds/{target}/{name} is not in src/seeds.rs (SHUNT_FUZZ_WRITE_SEEDS=1?)");
                }
            }
        }
        for Seed { name, bytes } in seeds {
            let path = dir.join(&name);
            if write {
                fs::write(&path, &bytes).unwrap();
            } else {
                let on_disk =
                    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (SHUNT_FUZZ_WRITE_SEEDS=1?)", path.display()));
                assert_eq!(on_disk, bytes, "{} differs from src/seeds.rs", path.display());
            }
        }
    }
}

/// Each frame seed is what its name says: a datagram, not ours, or malformed; each `write_request` seed builds
/// or fails as its name says.
#[test]
fn seeds_mean_what_they_say() {
    for target in FRAME_TARGETS {
        let seeds = seeds::for_target(target);
        assert!(seeds.len() >= 20, "{target}: {} seeds", seeds.len());
        for s in &seeds {
            let got = packet::parse(&s.bytes);
            let ok = match s.expect() {
                Expect::Datagram => matches!(got, Ok(Some(_))),
                Expect::NotOurs => matches!(got, Ok(None)),
                Expect::Malformed => got.is_err(),
                Expect::Anything => false,
            };
            assert!(ok, "{target}/{}: parse gave {got:?}", s.name);
        }
    }
    let seeds = seeds::for_target("write_request");
    assert!(seeds.len() >= 10);
    for s in &seeds {
        let input = BuildInput::decode(&s.bytes);
        let got = expected_build(&input.spec, input.buf_len, input.payload_len);
        let ok = match s.expect() {
            Expect::Datagram => got.is_ok(),
            Expect::Malformed => got.is_err(),
            Expect::NotOurs | Expect::Anything => false,
        };
        assert!(ok, "write_request/{}: {got:?} for {input:?}", s.name);
    }
    assert!(seeds::for_target("checksum").len() >= 5);
}

#[test]
fn targets_over_seed_corpus() {
    for target in TARGETS {
        let f = target_fn(target);
        let files = corpus(target);
        assert!(files.len() >= 5, "seeds/{target} holds {} files", files.len());
        for (name, bytes) in &files {
            let r = std::panic::catch_unwind(|| f(bytes));
            assert!(r.is_ok(), "target {target} panicked on seeds/{target}/{name}");
        }
    }
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Recomputes an IPv4 header checksum where an untagged or single-tagged frame's IPv4 header would start, if
/// the bytes there look like one, so that mutated headers get past the checksum check and reach the later
/// branches.
fn fix_ipv4_checksum(f: &mut [u8]) {
    for l3 in [eth::HEADER_LEN, eth::HEADER_LEN + vlan::TAG_LEN] {
        if f.len() >= l3 + ipv4::MIN_HEADER_LEN
            && f[l3 - 2..l3] == ETHERTYPE_IPV4.to_be_bytes()
            && f[l3 + ipv4::VER_IHL] >> 4 == 4
        {
            let ihl = usize::from(f[l3 + ipv4::VER_IHL] & 0x0f) * 4;
            if ihl >= ipv4::MIN_HEADER_LEN && f.len() >= l3 + ihl {
                set16(f, l3, ipv4::CHECKSUM, 0);
                let c = !shunt_fuzz::naive_sum(&f[l3..l3 + ihl]);
                set16(f, l3, ipv4::CHECKSUM, c);
            }
        }
    }
}

/// A fuzzer-like mutation of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0 | 1 if !f.is_empty() => {
                let i = rng.below(f.len());
                f[i] = rng.next() as u8;
            }
            2 if !f.is_empty() => {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
            3 => {
                let n = rng.below(f.len() + 1);
                f.truncate(n);
            }
            4 => {
                let n = rng.below(32);
                let extra = rng.bytes(n);
                f.extend_from_slice(&extra);
            }
            _ if f.len() >= 2 => {
                // Interesting 16-bit values into a random field.
                let i = rng.below(f.len() - 1);
                let v: u16 = [0, 1, 7, 8, 9, 20, 40, 0x7fff, 0xffff, 0x0800, 0x86dd, 0x8100, 0x88a8][rng.below(13)];
                f[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    if rng.below(2) == 0 {
        fix_ipv4_checksum(&mut f);
    }
    f
}

/// Rewrites the UDP checksum of a frame that parses to the correct one, so that mutated datagrams also reach the
/// handler when checksums are verified.
fn fix_udp_checksum(f: &mut [u8]) {
    let Ok(Some(v)) = shunt_fuzz::parse_view(f) else { return };
    let (src, dst) = match v.ip {
        packet::IpVersion::V4 => (shunt_fuzz::at(v.l3, ipv4::SRC), shunt_fuzz::at(v.l3, ipv4::DST)),
        packet::IpVersion::V6 => (shunt_fuzz::at(v.l3, ipv6::SRC), shunt_fuzz::at(v.l3, ipv6::DST)),
    };
    let (src, dst) = (f[src].to_vec(), f[dst].to_vec());
    set16(f, v.udp_at, udp::CHECKSUM, 0);
    let c = shunt_fuzz::naive_udp_checksum(&src, &dst, &f[v.udp_at..v.payload_offset + v.payload_len]);
    set16(f, v.udp_at, udp::CHECKSUM, c);
}

/// Whether `input` exercises the interesting path of `target`: a datagram that parses (for `write_request`, a
/// build that succeeds).
fn reaches_the_end(target: &str, input: &[u8]) -> bool {
    match target {
        "write_request" => {
            let b = BuildInput::decode(input);
            expected_build(&b.spec, b.buf_len, b.payload_len).is_ok()
        }
        "checksum" => true,
        _ => matches!(packet::parse(input), Ok(Some(_))),
    }
}

#[test]
fn targets_over_random_inputs() {
    for (k, target) in TARGETS.into_iter().enumerate() {
        let f = target_fn(target);
        let seeds: Vec<Vec<u8>> = seeds::for_target(target).into_iter().map(|s| s.bytes).collect();
        let mut rng = Rng(0x5eed_0000_0000_0001 + k as u64);
        let (mut accepted, mut correct) = (0, 0);
        for i in 0..RANDOM_INPUTS {
            let mut input = if i % 4 == 0 {
                let n = rng.below(200);
                rng.bytes(n)
            } else {
                let s = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, s)
            };
            if FRAME_TARGETS.contains(&target) && rng.below(2) == 0 {
                fix_udp_checksum(&mut input);
            }
            if reaches_the_end(target, &input) {
                accepted += 1;
            }
            if let Ok(Some(v)) = shunt_fuzz::parse_view(&input) {
                correct += usize::from(v.udp_checksum == packet::UdpChecksum::Correct);
            }
            let r = std::panic::catch_unwind(|| f(&input));
            assert!(r.is_ok(), "target {target} panicked on input #{i}: {input:02x?}");
        }
        eprintln!("{target}: {RANDOM_INPUTS} inputs, {accepted} reached the end, {correct} datagrams with a correct UDP checksum");
        // The mutations must keep reaching the reply path (or a successful build), or this smoke test tests little.
        assert!(accepted > RANDOM_INPUTS / 10, "{target}: only {accepted} of {RANDOM_INPUTS} inputs reached the end");
        if FRAME_TARGETS.contains(&target) {
            assert!(correct > RANDOM_INPUTS / 20, "{target}: only {correct} datagrams with a correct checksum");
        }
    }
}
