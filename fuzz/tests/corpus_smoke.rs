//! Runs the fuzz targets on stable, without libFuzzer: over the committed seed corpus, and over a few thousand
//! inputs from a fixed-seed PRNG (random bytes, and seeds mutated the way a fuzzer would).
//!
//! `SHUNT_FUZZ_WRITE_SEEDS=1 cargo test --release seeds_are_committed_and_current` rewrites `seeds/` from
//! `src/seeds.rs`.

use std::fs;
use std::path::{Path, PathBuf};

use shunt::packet;
use shunt_fuzz::seeds::{self, Expect, Seed, TARGETS};

/// Random inputs per target.
const RANDOM_INPUTS: usize = 20_000;

fn target_fn(name: &str) -> fn(&[u8]) {
    match name {
        "parse" => shunt_fuzz::parse,
        "respond_echo" => shunt_fuzz::respond_echo,
        "respond_sockperf" => shunt_fuzz::respond_sockperf,
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
        for Seed { name, bytes } in seeds::for_target(target) {
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

/// Each seed is what its name says: a datagram, not ours, or malformed.
#[test]
fn seeds_mean_what_they_say() {
    for target in TARGETS {
        let seeds = seeds::for_target(target);
        assert!(seeds.len() >= 20, "{target}: {} seeds", seeds.len());
        for s in &seeds {
            let got = packet::parse(&s.bytes);
            let ok = match s.expect() {
                Expect::Datagram => matches!(got, Ok(Some(_))),
                Expect::NotOurs => got == Ok(None),
                Expect::Malformed => got.is_err(),
            };
            assert!(ok, "{target}/{}: parse gave {got:?}", s.name);
        }
    }
}

#[test]
fn targets_over_seed_corpus() {
    for target in TARGETS {
        let f = target_fn(target);
        let files = corpus(target);
        assert!(files.len() >= 20, "seeds/{target} holds {} files", files.len());
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

/// Recomputes an IPv4 header checksum at offset 14 or 18 if the bytes there look like one, so that mutated
/// headers get past the checksum check and reach the later branches.
fn fix_ipv4_checksum(f: &mut [u8]) {
    for l3 in [14usize, 18] {
        if f.len() >= l3 + 20 && f[l3 - 2..l3] == [0x08, 0x00] && f[l3] >> 4 == 4 {
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            if ihl >= 20 && f.len() >= l3 + ihl {
                f[l3 + 10] = 0;
                f[l3 + 11] = 0;
                let c = !shunt_fuzz::naive_sum(&f[l3..l3 + ihl]);
                f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
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

#[test]
fn targets_over_random_inputs() {
    for (k, target) in TARGETS.into_iter().enumerate() {
        let f = target_fn(target);
        let seeds: Vec<Vec<u8>> = seeds::for_target(target).into_iter().map(|s| s.bytes).collect();
        let mut rng = Rng(0x5eed_0000_0000_0001 + k as u64);
        let mut accepted = 0;
        for i in 0..RANDOM_INPUTS {
            let input = if i % 4 == 0 {
                let n = rng.below(200);
                rng.bytes(n)
            } else {
                let s = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, s)
            };
            if matches!(packet::parse(&input), Ok(Some(_))) {
                accepted += 1;
            }
            let r = std::panic::catch_unwind(|| f(&input));
            assert!(r.is_ok(), "target {target} panicked on input #{i}: {input:02x?}");
        }
        eprintln!("{target}: {RANDOM_INPUTS} inputs, {accepted} parsed as datagrams");
        // The mutations must keep reaching the reply path, or this smoke test tests little.
        assert!(accepted > RANDOM_INPUTS / 10, "{target}: only {accepted} of {RANDOM_INPUTS} inputs parsed");
    }
}
