//! shunt: a kernel-bypass UDP server, and the library to build your own.
//!
//! An XDP program steers the UDP ports you serve into AF_XDP sockets and passes everything else to the kernel;
//! one pinned worker per NIC queue takes packets off the RX ring in batches, runs each through your
//! [`Handler`], which writes the reply in place, and puts the replies on the TX ring. No system call,
//! allocation, lock or copy per packet. The same handler also runs on kernel UDP sockets (six classic I/O
//! models), so that what kernel bypass buys can be measured with your own code.
//!
//! # Start here
//!
//! - **Write a handler**: implement [`Handler`] ([`handler`] has the request, the [`Outbox`] for sends, budgets,
//!   timers and metadata; [`handler::testing::Harness`] runs it without sockets). `docs/handlers.md` in the
//!   repository is the guide.
//! - **Run it**: [`control::cli::run`] gives your binary the whole `shunt serve` command line (config file,
//!   flags, reports, metrics, exit codes); [`control::serve`] does the same from a [`Config`] you build.
//!
//! ```no_run
//! use shunt::{control::cli, Handler, Outbox, Request, Verdict};
//!
//! struct Upper;
//!
//! impl Handler for Upper {
//!     fn handle(&mut self, _req: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
//!         let Some(p) = payload.get_mut(..len) else { return Verdict::Drop };
//!         p.make_ascii_uppercase();
//!         Verdict::Reply { len }
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     cli::run(cli::ServeArgs::from_env(), "upper", |_worker| Upper)
//! }
//! ```
//!
//! # Modules, lowest layer first
//!
//! The layers depend on each other in one direction (a test, `tests/layers.rs`, fails on an arrow pointing up):
//!
//! | module | what it is |
//! |---|---|
//! | [`packet`] | pure bytes: the checked view of a frame, replies and requests built in place, checksums; no `unsafe`, no panics on any input |
//! | [`handler`] | the sans-I/O handler API: requests and time in, replies and sends out; the built-in `echo` and `sockperf` |
//! | [`sys`] | every raw system call: bpf_link, sockets, clocks, CPU affinity, rtnetlink |
//! | [`datapath`] | the workers: [`datapath::afxdp`] (UMEM, rings, the pinned worker loop) and [`datapath::socket`] (kernel sockets, one loop per I/O model) |
//! | [`steer`] | the steering XDP program: load, fill its maps, attach as a bpf_link, read its counters |
//! | [`in_kernel`] | the in-kernel XDP_TX server, the floor the others are measured against |
//! | [`client`] | [`client::XskPort`]: an AF_XDP socket driven from outside, for load generators and tests |
//! | [`observe`] | latency summaries, the reporter thread, the final report, the metrics endpoint |
//! | [`control`] | the TOML [`Config`], start-up checks and wiring, [`control::serve`] and the command line |
//!
//! `unsafe` is denied crate-wide; only [`datapath`] and [`sys`] opt back in, and every block there carries a
//! `// SAFETY:` line. [`packet`] and [`handler`] forbid it outright.
//!
//! # Requirements
//!
//! Linux with AF_XDP and XDP bpf_link; what else each feature needs, and what shunt does without it, is found
//! out at start-up (`shunt check-host`) and listed in `docs/requirements.md`. Serving needs CAP_NET_ADMIN,
//! CAP_NET_RAW, CAP_BPF and CAP_PERFMON (or root).
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(missing_docs)]

pub mod client;
pub mod control;
pub mod datapath;
pub mod handler;
pub mod in_kernel;
pub mod observe;
pub mod packet;
pub mod steer;
pub mod sys;

pub use control::config::Config;
pub use handler::{Budget, Envelope, Handler, Outbox, Request, Verdict};

/// The README's code blocks, compiled as doctests so the handler example there stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The handler guide's code blocks (docs/handlers.md), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/handlers.md")]
pub struct HandlerGuideDoctests;

/// The other pages of docs/, included so that any Rust block added to them is compiled too.
#[cfg(doctest)]
pub mod docs_pages {
    /// docs/configuration.md.
    #[doc = include_str!("../docs/configuration.md")]
    pub struct Configuration;
    /// docs/operations.md.
    #[doc = include_str!("../docs/operations.md")]
    pub struct Operations;
    /// docs/performance.md.
    #[doc = include_str!("../docs/performance.md")]
    pub struct Performance;
    /// docs/internals.md.
    #[doc = include_str!("../docs/internals.md")]
    pub struct Internals;
    /// docs/requirements.md.
    #[doc = include_str!("../docs/requirements.md")]
    pub struct Requirements;
}
