//! Compiles the XDP program in `bpf/` into a BPF object and generates its libbpf-rs skeleton
//! (`$OUT_DIR/shunt.skel.rs`, included by `src/sys/skel.rs`): the object embedded in the binary, typed fields
//! for its programs and maps, and its BTF types (`enum shunt_counter` among them) as Rust types.

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/shunt.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps asm/types.h under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    SkeletonBuilder::new()
        .source(SRC)
        .obj(out.join("shunt.bpf.o"))
        .clang_args(["-O2", "-g", "-Wall", "-Werror", multiarch.as_str()])
        .build_and_generate(out.join("shunt.skel.rs"))
        .unwrap_or_else(|e| panic!("building {SRC} failed (is clang installed? `make deps`): {e:#}"));
    println!("cargo:rerun-if-changed={SRC}");
}
