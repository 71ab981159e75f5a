//! The kernel-socket datapath: the same handlers served through ordinary UDP sockets, one I/O model at a time,
//! so that shunt can be compared with the classic ways of writing a UDP server on the same machine, with the
//! same handler, counters and latency histograms.
//!
//! A [`KernelWorker`] owns one UDP socket per configured port, each bound to `[::]:port` dual-stack with
//! SO_REUSEPORT (several pinned workers share a port, one socket each, and the kernel spreads flows across
//! them) and SO_BINDTODEVICE (only datagrams arriving on the configured interface). IP_PKTINFO and
//! IPV6_RECVPKTINFO give each datagram's real destination address, which the handler sees as
//! [`Request::dst`](crate::handler::Request) and the reply is sent from (IPv4 clients appear to the handler as
//! plain IPv4 addresses, not v4-mapped ones). IP_RECVTOS / IP_RECVTTL (IPv4, dual-stack included) and
//! IPV6_RECVTCLASS / IPV6_RECVHOPLIMIT give each datagram's DSCP / ECN and TTL / hop limit
//! ([`Request::dscp`](crate::handler::Request), `ecn`, `ttl`), and with timestamps on the kernel's receive stamp
//! becomes [`Request::rx_timestamp`](crate::handler::Request) ([`RxClock::KernelSocket`](crate::handler::RxClock)),
//! converted with the pick-up's clock pair; `vlan_id` and `queue` are `None` here. Every reply goes through
//! [`crate::handler::answer`], so a handler's declared reply bound holds here exactly as it does on the AF_XDP
//! path.
//!
//! # I/O models
//!
//! Each [`SocketIo`] makes exactly the system calls its model is defined by, and nothing else per packet: no
//! allocation, lock or log. Buffers (payloads, control messages, `mmsghdr` arrays, iovecs) are allocated by
//! [`KernelWorker::open`]; [`KernelWorker::run`] allocates nothing.
//!
//! | model | waits in | per datagram | per wake-up / batch |
//! |---|---|---|---|
//! | [`SocketIo::Blocking`] | recvmsg (SO_RCVTIMEO 100 ms) | recvmsg + sendmsg | |
//! | [`SocketIo::Nonblocking`] | nothing: spins | recvmsg + sendmsg | one recvmsg → EAGAIN per empty socket visited |
//! | [`SocketIo::Epoll`] | epoll_wait (100 ms) | recvmsg + sendmsg | epoll_wait + one recvmsg → EAGAIN per ready socket |
//! | [`SocketIo::Signal`] | sigtimedwait (100 ms) | recvmsg + sendmsg | sigtimedwait + one recvmsg → EAGAIN |
//! | [`SocketIo::Mmsg`] | epoll_wait (100 ms) | | recvmmsg + sendmmsg per batch of up to `batch` |
//! | [`SocketIo::IoUring`] | io_uring_enter (100 ms) | | one io_uring_enter per turn: submits the turn's replies, reaps every completion |
//!
//! # Counters
//!
//! The worker publishes the AF_XDP worker's [`WorkerStats`](super::counters::WorkerStats), once per batch.
//! A counter means one thing in every datapath: those only sockets have (`rx_errors`, `tx_errors`,
//! `empty_receives`, `rx_no_buffer`) stay 0 on AF_XDP, and the AF_XDP-only ones (`tx_kick_errors`,
//! `busy_polls`, `tx_backpressure`, `fill_kicks`) stay 0 here. The socket worker counts:
//!
//! - `rx_packets`, `tx_packets`: datagrams received, replies the kernel accepted.
//! - `rx_batches`: non-empty receive batches: the datagrams taken in one wake-up (one blocking receive, one
//!   pass over the sockets, one epoll_wait or one signal), or one recvmmsg call in [`SocketIo::Mmsg`].
//! - `tx_kicks`: send system calls (sendmsg, sendmmsg).
//! - `tx_ring_full`: replies the kernel refused for want of room: EAGAIN/EWOULDBLOCK (a full send buffer, or
//!   SO_SNDTIMEO passing in the blocking model) or ENOBUFS.
//! - `tx_errors`: send calls that failed with any other error (a reply from an address that cannot be a
//!   source, a route gone...); `rx_errors`: receive calls that failed with an error other than EAGAIN and
//!   EINTR; `wait_errors`: failed epoll_wait, sigtimedwait or io_uring_enter calls (and a signal model that
//!   could not set up its signals).
//! - `empty_receives`: receive calls that found the socket empty (EAGAIN): the spins of the non-blocking model,
//!   the call that ends each drain in the others (a signal whose socket had already been drained shows as
//!   one of these alone).
//! - `sleeps`: wait system calls (epoll_wait, sigtimedwait), and in the blocking model the receives that
//!   timed out.
//! - `dropped_by_handler`, `dropped_amplification`: as on the AF_XDP path (handler said no / reply too large;
//!   reply over the handler's declared bound). `dropped_over_mtu` stays 0: the kernel writes the reply's headers
//!   and fragments by path MTU. `dropped_malformed` counts datagrams longer than the 65,535-byte
//!   buffer (which UDP cannot carry, so it stays 0). The kernel has checked headers and checksums: the
//!   other drop counters stay 0.
//! - `rx_no_buffer`, in [`SocketIo::IoUring`] only: multishot receives that ended with ENOBUFS: every provided buffer
//!   was held by a request or a reply in flight, and the datagrams waited in the socket until buffers came
//!   back and the receive was armed again.
//! - In [`SocketIo::IoUring`]: `rx_batches` counts turns that completed at least one receive, `tx_kicks` the
//!   io_uring_enter calls that submitted replies (or re-armed receives), `sleeps` those that had nothing to
//!   submit and only waited, and `tx_ring_full` the sends that completed with EAGAIN/ENOBUFS.
//!
//! So the system calls of a run add up from the counters: `rx_packets + empty_receives + sleeps + tx_kicks` for
//! the per-datagram models (plus the blocking model's timeouts, counted in `sleeps` and not as receives),
//! `rx_batches + empty_receives + sleeps + tx_kicks` for [`SocketIo::Mmsg`], and `sleeps + tx_kicks` for
//! [`SocketIo::IoUring`].
//!
//! # Latency
//!
//! With [`KernelSocketOptions::timestamps`] on, each socket has SO_TIMESTAMPING with
//! SOF_TIMESTAMPING_RX_SOFTWARE: the kernel stamps every datagram (CLOCK_REALTIME) as it enters the network
//! stack, and the worker converts the stamp to CLOCK_MONOTONIC (subtracting the realtime − monotonic offset
//! it reads with the clock, below) so that [`WorkerLatency`](crate::datapath::histograms::WorkerLatency) records the same stages
//! as for AF_XDP: `ring_dwell` = kernel receive → the worker has the datagram, `service` = that → the reply's
//! send call returned, `total` = both. Without timestamps only `service` is recorded (the replies count as
//! `unstamped`). The kernel starts stamping a while after the first socket asks (its global switch is flipped
//! from a work item), so [`KernelWorker::open`] waits, up to two seconds, until a datagram it sends itself
//! over loopback comes back stamped: requests are stamped from the moment the server is ready.
//!
//! The clock ([`Time`](crate::handler::Time), the handler's `now` and the pick-up time) is read once per
//! recvmmsg batch in [`SocketIo::Mmsg`], every datagram of which was queued before the call returned. In the
//! per-datagram models each recvmsg is a pick-up of its own and the clock is read after each (two vDSO reads,
//! no system call): one reading per wake-up would predate the datagrams that arrive while the worker drains a
//! socket, putting their kernel stamps in its future.
#![allow(unsafe_code)]

mod cmsg;
mod msg;
mod open;
mod send;
mod uring;
pub use uring::{probe as probe_io_uring, UringProbe};
mod worker;

pub use worker::KernelWorker;

/// The kernel socket I/O model a [`KernelWorker`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SocketIo {
    /// Blocking recvmsg/sendmsg, one datagram per call, the receive bounded by SO_RCVTIMEO (100 ms) so that
    /// the stop flag is seen. A blocking receive waits on one socket, so this model serves exactly one port
    /// per worker (one thread per socket, as blocking servers are written).
    Blocking,
    /// Non-blocking sockets (O_NONBLOCK): the worker spins over its sockets with recvmsg, taking up to
    /// `batch` datagrams from a socket before moving to the next, and never sleeps.
    Nonblocking,
    /// Level-triggered epoll: epoll_wait (100 ms timeout), then each ready socket drained with recvmsg until
    /// EAGAIN, each reply sent with sendmsg as it is made.
    Epoll,
    /// Signal-driven I/O: O_ASYNC with F_SETSIG to a real-time signal and F_SETOWN_EX to the worker's own
    /// thread; the worker keeps the signal blocked and takes it with sigtimedwait (100 ms timeout), then drains
    /// the socket named by the signal's `si_fd` until EAGAIN. If the real-time signal queue overflows the
    /// kernel sends a plain SIGIO instead, which is blocked and taken too, and makes the worker drain every
    /// socket. The signal stays blocked in the worker's thread after [`KernelWorker::run`] returns, so that
    /// one still in flight as O_ASYNC is turned off cannot kill the process.
    Signal,
    /// recvmmsg/sendmmsg: up to `batch` datagrams per receive call and their replies in one send call.
    /// Readiness comes from level-triggered epoll, like [`SocketIo::Epoll`], rather than from MSG_WAITFORONE
    /// on a blocking socket: a blocking recvmmsg waits on one socket only (one port per worker, as in
    /// [`SocketIo::Blocking`]), and its own timeout is only looked at after a datagram arrives (recvmmsg(2),
    /// BUGS), so the stop flag would need SO_RCVTIMEO anyway. epoll costs one epoll_wait per wake-up, and
    /// none while a socket keeps filling whole batches (the worker receives again until a short batch).
    Mmsg,
    /// io_uring: a multishot recvmsg armed on each socket takes datagrams into a ring of provided buffers
    /// (Linux 6.0+), each reply is queued as an IORING_OP_SENDMSG out of the buffer its request came in, and
    /// one io_uring_enter per turn submits the turn's replies and waits (100 ms at most) for completions.
    /// `batch` sizes the provided-buffer ring (twice the batch, 64 ..= 512 buffers of 64 KiB each).
    IoUring,
}

impl SocketIo {
    /// Every model, in the order of the table above.
    pub const ALL: [SocketIo; 6] = [
        SocketIo::Blocking,
        SocketIo::Nonblocking,
        SocketIo::Epoll,
        SocketIo::Signal,
        SocketIo::Mmsg,
        SocketIo::IoUring,
    ];

    /// The lowercase name used in reports, logs and the config (`socket.io`).
    pub fn name(self) -> &'static str {
        match self {
            SocketIo::Blocking => "blocking",
            SocketIo::Nonblocking => "nonblocking",
            SocketIo::Epoll => "epoll",
            SocketIo::Signal => "signal",
            SocketIo::Mmsg => "mmsg",
            SocketIo::IoUring => "io_uring",
        }
    }
}

/// Longest `batch` (datagrams per recvmmsg): the kernel caps `vlen` at UIO_MAXIOV (1024), and so does the
/// RX batch histogram ([`crate::datapath::histograms::MAX_BATCH`]).
pub const MAX_BATCH: u32 = 1024;

/// Bytes of payload each receive buffer holds: the largest UDP payload, so no datagram is ever truncated,
/// and the room a handler may fill with its reply.
pub const PAYLOAD_ROOM: usize = 65_535;

/// How much above SIGRTMIN the signal-driven model's real-time signal is (SIGRTMIN+3).
pub const IO_SIGNAL_OFFSET: i32 = 3;

/// What a [`KernelWorker`] serves and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSocketOptions {
    /// The interface whose datagrams are served (SO_BINDTODEVICE).
    pub interface: String,
    /// The UDP ports served, one socket each (exactly one for [`SocketIo::Blocking`]).
    pub ports: Vec<u16>,
    /// The I/O model.
    pub io: SocketIo,
    /// Datagrams per recvmmsg call in [`SocketIo::Mmsg`], and the most taken from one socket before the
    /// next is looked at in [`SocketIo::Nonblocking`]; 1 ..= [`MAX_BATCH`] (0 is taken as 1).
    pub batch: u32,
    /// Kernel software receive timestamps (SO_TIMESTAMPING), for the `ring_dwell` and `total` histograms.
    pub timestamps: bool,
    /// Each socket's receive buffer, bytes: SO_RCVBUFFORCE (CAP_NET_ADMIN) where allowed, else SO_RCVBUF
    /// (capped by net.core.rmem_max). Datagrams that find it full are dropped by the kernel; the worker
    /// reads how many (SO_MEMINFO) when it stops, into [`KernelSocketStats::rx_dropped`](super::counters::KernelSocketStats).
    pub receive_buffer: u32,
    /// Handler sends allowed per wake-up, batch or timer turn, and the send buffers allocated for them
    /// (`sends.per_batch`; 0: the handler cannot send, only reply).
    pub sends_per_batch: u32,
}

/// Why a [`KernelWorker`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KernelSocketError {
    /// No port to serve.
    #[error("no UDP port to serve")]
    NoPorts,
    /// The blocking model waits on one socket, so it serves one port per worker.
    #[error("the blocking I/O model serves exactly one port per worker (one thread per socket), not {ports}")]
    BlockingNeedsOnePort {
        /// How many were asked for.
        ports: usize,
    },
    /// `batch` is beyond what recvmmsg takes.
    #[error("batch {batch} is larger than {MAX_BATCH}, the most recvmmsg takes in one call")]
    BatchTooLarge {
        /// The batch asked for.
        batch: u32,
    },
    /// The interface does not exist in this network namespace.
    #[error("interface {interface}: {source}")]
    Interface {
        /// The interface.
        interface: String,
        /// if_nametoindex's error.
        source: std::io::Error,
    },
    /// Creating or configuring a port's socket failed.
    #[error("UDP port {port}: {what}: {source}")]
    Socket {
        /// The port.
        port: u16,
        /// What was being done.
        what: &'static str,
        /// The system call's error.
        source: std::io::Error,
    },
    /// SO_BINDTODEVICE was refused.
    #[error(
        "UDP port {port}: binding the socket to interface {interface} (SO_BINDTODEVICE): {source}{}",
        if source.raw_os_error() == Some(libc::EPERM) { " (needs CAP_NET_RAW)" } else { "" }
    )]
    BindToDevice {
        /// The port.
        port: u16,
        /// The interface.
        interface: String,
        /// setsockopt's error.
        source: std::io::Error,
    },
    /// Binding `[::]:port` failed.
    #[error(
        "UDP port {port}: bind [::]:{port}: {source}{}",
        if source.raw_os_error() == Some(libc::EADDRINUSE) {
            " (a socket without SO_REUSEPORT, or another user's, holds the port)"
        } else {
            ""
        }
    )]
    Bind {
        /// The port.
        port: u16,
        /// bind's error.
        source: std::io::Error,
    },
    /// Setting up epoll failed.
    #[error("epoll: {what}: {source}")]
    Epoll {
        /// What was being done.
        what: &'static str,
        /// The system call's error.
        source: std::io::Error,
    },
    /// Setting up io_uring failed (io_uring_setup refused with EPERM: see the `kernel.io_uring_disabled`
    /// sysctl; EINVAL from the provided-buffer ring: the kernel is older than 5.19).
    #[error("io_uring: {what}: {source}")]
    Uring {
        /// What was being done.
        what: &'static str,
        /// The system call's error.
        source: std::io::Error,
    },
    /// No real-time signal is free for signal-driven I/O.
    #[error("signal-driven I/O: SIGRTMIN+{IO_SIGNAL_OFFSET} is beyond SIGRTMAX")]
    NoSignal,
}
