//! The in-kernel server's generated skeleton (build.rs: libbpf-cargo from bpf/answer.bpf.c): the embedded BPF
//! object, `AnswerSkelBuilder`, typed fields for its program (`progs.answer`) and maps (`maps.answer_ports`,
//! `maps.answer_counters`, `maps.answer_settings`), and its BTF types in `types` (`types::answer_counter`, the
//! counter slots; `types::answer_handler`; `types::answer_settings`).
//!
//! Like `skel`, the generated code contains `unsafe` blocks (libbpf's skeleton calls) without `// SAFETY:`
//! comments, so it lives here, in the one OS module; `in_kernel` uses only its safe API.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks, missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/answer.skel.rs"));
