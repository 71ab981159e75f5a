//! Compiles the XDP programs in `bpf/` into BPF objects and generates their libbpf-rs skeletons: the steering
//! program (`$OUT_DIR/shunt.skel.rs`, included by `src/sys/skel.rs`) and the in-kernel server
//! (`$OUT_DIR/answer.skel.rs`, included by `src/sys/answer_skel.rs`). Each is the object embedded in the
//! binary, typed fields for its programs and maps, and its BTF types (`enum shunt_counter` among them) as
//! Rust types.

use std::{env, path::PathBuf};

use libbpf_cargo::SkeletonBuilder;

/// Each BPF source and the stem of its object and skeleton in `$OUT_DIR`.
const PROGRAMS: [(&str, &str); 2] = [("bpf/shunt.bpf.c", "shunt"), ("bpf/answer.bpf.c", "answer")];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // Debian keeps asm/types.h under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    for (src, stem) in PROGRAMS {
        SkeletonBuilder::new()
            .source(src)
            .obj(out.join(format!("{stem}.bpf.o")))
            .clang_args(["-O2", "-g", "-Wall", "-Werror", multiarch.as_str()])
            .build_and_generate(out.join(format!("{stem}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {src} failed (is clang installed? `make deps`): {e:#}"));
        println!("cargo:rerun-if-changed={src}");
    }
}
