//! The steering program's generated skeleton (build.rs: libbpf-cargo from bpf/shunt.bpf.c): the embedded
//! BPF object, `ShuntSkelBuilder`, typed fields for its programs (`progs.shunt_steer`, `progs.shunt_steer_hw`)
//! and maps (`maps.shunt_xsks`, ...), and its BTF types in `types` (`types::shunt_counter`, the counter slots).
//!
//! The generated code contains `unsafe` blocks (libbpf's skeleton calls) without `// SAFETY:` comments, so it
//! lives here, in the one OS module; `steer` uses only its safe API.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks, missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/shunt.skel.rs"));
