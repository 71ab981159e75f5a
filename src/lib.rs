//! shunt: a kernel-bypass UDP server.
//!
//! An XDP program ([`xdp`]) steers the configured UDP ports into AF_XDP sockets and passes everything else to
//! the kernel; one pinned worker per NIC queue ([`datapath`]) takes packets off the RX ring in batches, runs
//! them through a [`handler`] that builds the reply in place ([`packet`]), and puts them on the TX ring. The
//! control plane ([`config`], [`server`], [`report`]) validates the run, wires it up and reports on it.
#![warn(missing_docs)]

pub mod config;
pub mod datapath;
pub mod handler;
pub mod latency;
pub mod metrics;
pub mod packet;
pub mod report;
pub mod reporter;
pub mod server;
pub mod stats;
pub mod stats_client;
pub mod xdp;
