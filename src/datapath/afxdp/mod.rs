//! The AF_XDP datapath: per-queue UMEM and AF_XDP socket ([`QueueSocket`]), the worker loop that serves it
//! ([`Worker`]), handlers' sends from the worker's free frames ([`SendOptions`], [`NextHop`]), next-hop MACs
//! from the kernel's tables ([`nexthop`]). A client that drives a socket from outside (the load generator's
//! port) lives in the `client` module, above this one, and uses the socket's crate-visible frame calls.

pub mod nexthop;
mod send;
mod worker;
mod xsk;

pub use send::{NextHop, SendOptions};
pub use worker::Worker;
pub use xsk::{DatapathError, QueueSocket, SocketOptions, BUSY_QUEUE_WAIT};

/// How an AF_XDP socket is bound to its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy (XDP_ZEROCOPY): the NIC DMAs into the UMEM. Fails where the driver lacks support.
    Zerocopy,
    /// Copy mode (XDP_COPY): the kernel copies between its buffers and the UMEM. Works on any XDP driver.
    Copy,
    /// Try zero-copy, fall back to copy (and say so in the log). A bound socket never reports this.
    Auto,
}

impl BindMode {
    /// The lowercase name used in reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            BindMode::Zerocopy => "zerocopy",
            BindMode::Copy => "copy",
            BindMode::Auto => "auto",
        }
    }
}

/// How an AF_XDP worker waits when its RX ring is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Busy-poll the rings without ever sleeping: lowest latency, its core at 100 % whatever the load.
    Spin,
    /// Sleep in poll(2) on the socket until a packet arrives (or a timeout, to see the stop flag): no CPU
    /// when idle, a wake-up's latency on the first packet after a quiet spell.
    Wakeup,
    /// Spin for `spin` after the last packet, then sleep as [`PollMode::Wakeup`] does: spinning's latency
    /// under load, near-zero CPU when idle.
    Adaptive {
        /// How long to keep spinning after the last packet.
        spin: std::time::Duration,
    },
    /// Preferred busy polling (SO_PREFER_BUSY_POLL): the worker's poll(2) calls drive the device's NAPI
    /// poll instead of interrupts. Needs a zero-copy socket on a real NIC; in copy mode the socket has no
    /// NAPI to drive, so the control plane refuses it there.
    BusyPoll {
        /// µs each poll may busy-poll (SO_BUSY_POLL).
        usecs: u32,
        /// Packets per busy-poll round (SO_BUSY_POLL_BUDGET).
        budget: u16,
    },
}

/// When a worker wakes the kernel to transmit the replies it put on the TX ring (copy mode and any driver that
/// asks for TX wake-ups; one `sendto` per kick).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KickPolicy {
    /// Kick once this many replies wait on the TX ring unkicked (1: after every RX batch, the default).
    pub batch: u32,
    /// ... or once the oldest of them has waited this long, in ns: the most a reply is held back.
    pub delay_ns: u64,
}

impl Default for KickPolicy {
    /// Kick after every batch: the lowest latency, one system call per batch however small.
    fn default() -> Self {
        KickPolicy { batch: 1, delay_ns: 0 }
    }
}

/// Per-queue packet memory and ring sizes. Ring sizes must be powers of two (xsk-rs refuses others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemParams {
    /// Frames in the UMEM.
    pub frame_count: u32,
    /// Bytes per frame (2048 or 4096).
    pub frame_size: u32,
    /// Fill ring entries.
    pub fill_ring: u32,
    /// Completion ring entries.
    pub completion_ring: u32,
    /// RX ring entries.
    pub rx_ring: u32,
    /// TX ring entries.
    pub tx_ring: u32,
}

impl Default for UmemParams {
    /// The sizes `config/example.toml` documents as defaults.
    fn default() -> Self {
        UmemParams {
            frame_count: 8192,
            frame_size: 4096,
            fill_ring: 4096,
            completion_ring: 4096,
            rx_ring: 4096,
            tx_ring: 4096,
        }
    }
}
