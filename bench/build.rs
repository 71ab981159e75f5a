//! Compiles the comparison's in-kernel XDP responder (bpf/reflect.bpf.c), which `shunt-bench xdp-reflector`
//! embeds and loads, and generates its libbpf-rs skeleton (`$OUT_DIR/reflect.skel.rs`, included by
//! src/reflector.rs).

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/reflect.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    SkeletonBuilder::new()
        .source(SRC)
        .obj(out.join("reflect.bpf.o"))
        .clang_args(["-O2", "-g", "-Wall", "-Werror", multiarch.as_str()])
        .build_and_generate(out.join("reflect.skel.rs"))
        .unwrap_or_else(|e| panic!("building {SRC} failed (is clang installed? `make deps`): {e:#}"));
    println!("cargo:rerun-if-changed={SRC}");
}
