//! The datapaths: how packets get from the wire to a handler and its replies back.
//!
//! - [`afxdp`]: an AF_XDP socket and UMEM per NIC queue ([`afxdp::QueueSocket`]), served by one pinned worker
//!   ([`afxdp::Worker`]) that takes frames off the RX ring in batches and answers in place.
//! - [`socket`]: the same handlers over ordinary kernel UDP sockets, one I/O model at a time
//!   ([`socket::KernelWorker`]), for the side-by-side comparison shunt exists to make.
//!
//! Both record into the same counters ([`counters`]) and latency histograms ([`histograms`]), read receive
//! stamps the same way ([`meta`]), and hand back a [`WorkerExit`] when they stop.
//!
//! This module and [`crate::sys`] are the only places where `unsafe` is allowed; each block says why it is
//! sound. It knows nothing of the config file: the control plane maps the config onto the plain parameter
//! types of each datapath ([`afxdp::BindMode`], [`afxdp::UmemParams`], [`socket::KernelSocketOptions`]).
#![allow(unsafe_code)]

pub mod afxdp;
pub mod counters;
pub mod histograms;
pub mod meta;
pub mod socket;

use counters::{FrameAccount, KernelSocketStats, WorkerStats};

use crate::sys;

/// What a worker hands back when it stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerExit {
    /// Final counters.
    pub stats: WorkerStats,
    /// Final kernel statistics of the socket.
    pub kernel: KernelSocketStats,
    /// Where the UMEM's frames were when it stopped (`None` from a worker that did not stop cleanly).
    pub frames: Option<FrameAccount>,
    /// The CPU time of the thread that ran the loop, read as it stopped (the thread's whole life so far).
    pub cpu: Option<sys::CpuTimes>,
}
