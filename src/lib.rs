//! shunt: a kernel-bypass UDP server.
//!
//! An XDP program ([`steer`]) steers the configured UDP ports into AF_XDP sockets and passes everything else to
//! the kernel; one pinned worker per NIC queue ([`datapath`]) takes packets off the RX ring in batches, runs
//! them through a [`handler`] that builds the reply in place ([`packet`]), and puts them on the TX ring. The
//! control plane ([`control`]) validates the run and wires it up; [`observe`] reports on it.
//!
//! The layers depend on each other in one direction only:
//!
//! ```text
//! packet  <-  handler  <-  datapath  <-  observe, control
//!   (pure bytes)  (sans-I/O)   (rings, UMEM)     (config, wiring, reports)
//!                   sys  <-  datapath, steer     (the one OS module: raw system calls)
//! ```
//!
//! `unsafe` is denied crate-wide; only [`datapath`] and [`sys`] opt back in, and every block there carries a
//! `// SAFETY:` line. [`packet`] and [`handler`] forbid it outright.
//!
//! # Running your own handler
//!
//! A crate that depends on `shunt` implements [`handler::Handler`] and hands a factory (one handler per
//! worker, so per-worker state needs no locks) to [`control::cli::run`] (the `shunt serve` command line,
//! flags and all) or to [`control::serve`] (a [`Config`] you built). `examples/sntp.rs` is a complete one.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod control;
pub mod datapath;
pub mod handler;
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
