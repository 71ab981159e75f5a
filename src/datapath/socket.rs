//! One queue's UMEM and AF_XDP socket.

use std::{num::NonZeroU32, os::fd::AsRawFd};

use xsk_rs::{
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

use crate::config::{self, BindMode};

/// Why a queue's socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A size was rejected by xsk-rs / libxdp.
    #[error("queue {queue}: invalid {what}: {message}")]
    Setting {
        /// The queue.
        queue: u32,
        /// Which setting.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The UMEM could not be created or registered.
    #[error("queue {queue}: creating the UMEM ({frames} frames of {frame_size} bytes) failed: {message}")]
    Umem {
        /// The queue.
        queue: u32,
        /// Frames requested.
        frames: u32,
        /// Frame size.
        frame_size: u32,
        /// xsk-rs's message, with the OS error.
        message: String,
    },
    /// The socket could not be created or bound.
    #[error("queue {queue}: binding an AF_XDP socket to {interface} in {mode} mode failed: {message}")]
    Bind {
        /// The queue.
        queue: u32,
        /// Interface name.
        interface: String,
        /// `zerocopy` or `copy`.
        mode: &'static str,
        /// xsk-rs's message, with the OS error.
        message: String,
    },
}

/// What a [`QueueSocket`] is built from.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Interface name.
    pub interface: String,
    /// Receive queue to bind to.
    pub queue: u32,
    /// Zero-copy, copy or try both.
    pub bind_mode: BindMode,
    /// UMEM and ring sizes.
    pub umem: config::UmemConfig,
    /// Bytes reserved in front of each packet for XDP metadata.
    pub metadata_room: u32,
}

/// A bound AF_XDP socket with its own UMEM and four rings, ready to be served by a worker.
pub struct QueueSocket {
    pub(super) umem: Umem,
    pub(super) tx: TxQueue,
    pub(super) rx: RxQueue,
    pub(super) fill: FillQueue,
    pub(super) completion: CompQueue,
    /// Frames on no ring yet (the rest were given to the fill ring at open).
    pub(super) frames: Vec<FrameDesc>,
    /// The queue it is bound to.
    pub queue: u32,
    /// The bind mode actually in effect (never `Auto`).
    pub bind_mode: BindMode,
    pub(super) tx_ring_size: u32,
    /// Bytes per frame (a power of two).
    pub(super) frame_size: usize,
    /// Frames in the UMEM, on rings or not.
    pub(super) frame_count: usize,
}

impl std::fmt::Debug for QueueSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSocket").field("queue", &self.queue).field("bind_mode", &self.bind_mode).finish()
    }
}

fn ring(queue: u32, what: &'static str, n: u32) -> Result<QueueSize, DatapathError> {
    QueueSize::new(n).map_err(|e| DatapathError::Setting { queue, what, message: e.to_string() })
}

impl QueueSocket {
    /// Creates the UMEM and binds the socket. With [`BindMode::Auto`], zero-copy is tried first and copy mode
    /// used if the driver refuses it (logged at INFO).
    pub fn open(opts: &SocketOptions) -> Result<QueueSocket, DatapathError> {
        match opts.bind_mode {
            BindMode::Zerocopy | BindMode::Copy => Self::open_mode(opts, opts.bind_mode),
            BindMode::Auto => Self::open_mode(opts, BindMode::Zerocopy).or_else(|zc| {
                tracing::info!(queue = opts.queue, "zero-copy unavailable ({zc}); using copy mode");
                Self::open_mode(opts, BindMode::Copy)
            }),
        }
    }

    fn open_mode(opts: &SocketOptions, mode: BindMode) -> Result<QueueSocket, DatapathError> {
        let q = opts.queue;
        let u = &opts.umem;
        let frame_size = FrameSize::new(u.frame_size).map_err(|e| DatapathError::Setting {
            queue: q,
            what: "umem.frame_size",
            message: e.to_string(),
        })?;
        let umem_config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(ring(q, "umem.fill_ring", u.fill_ring)?)
            .comp_queue_size(ring(q, "umem.completion_ring", u.completion_ring)?)
            .frame_headroom(opts.metadata_room)
            .build()
            .map_err(|e| DatapathError::Setting { queue: q, what: "umem", message: e.to_string() })?;
        let frame_count = NonZeroU32::new(u.frame_count).ok_or(DatapathError::Setting {
            queue: q,
            what: "umem.frame_count",
            message: "must be positive".into(),
        })?;
        let (umem, frames) = Umem::new(umem_config, frame_count, false).map_err(|e| DatapathError::Umem {
            queue: q,
            frames: u.frame_count,
            frame_size: u.frame_size,
            message: error_chain(&e),
        })?;

        let (mode_flag, mode_name) = match mode {
            BindMode::Zerocopy => (BindFlags::XDP_ZEROCOPY, "zerocopy"),
            _ => (BindFlags::XDP_COPY, "copy"),
        };
        let socket_config = SocketConfig::builder()
            .rx_queue_size(ring(q, "umem.rx_ring", u.rx_ring)?)
            .tx_queue_size(ring(q, "umem.tx_ring", u.tx_ring)?)
            // Our own program steers packets; libxdp must not load its default one.
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | mode_flag)
            .build();
        let interface: Interface = opts.interface.parse().map_err(|_| DatapathError::Setting {
            queue: q,
            what: "interface",
            message: "contains a NUL byte".into(),
        })?;
        // SAFETY: this UMEM was created just above and is used by this one socket only, so no other socket is
        // bound to this (interface, queue) pair through it; xsk-rs's contract for `Socket::new`.
        let (tx, rx, rings) =
            unsafe { Socket::new(socket_config, &umem, &interface, q) }.map_err(|e| DatapathError::Bind {
                queue: q,
                interface: opts.interface.clone(),
                mode: mode_name,
                message: error_chain(&e),
            })?;
        let (mut fill, completion) = rings.ok_or_else(|| DatapathError::Bind {
            queue: q,
            interface: opts.interface.clone(),
            mode: mode_name,
            message: "the UMEM's fill and completion rings were already taken".into(),
        })?;
        // Stock the fill ring now, so the socket can receive from the moment the program steers to it.
        let mut frames = frames;
        let frame_count = frames.len();
        let stock = frames.len().min(u.fill_ring as usize);
        let from = frames.len() - stock;
        // SAFETY: these descriptors are fresh frames of this UMEM that no ring holds; from here on the kernel
        // owns them until they come back through the RX ring.
        let stocked = unsafe { fill.produce(&frames[from..]) };
        frames.truncate(frames.len() - stocked);
        Ok(QueueSocket {
            umem,
            tx,
            rx,
            fill,
            completion,
            frames,
            queue: q,
            bind_mode: if mode == BindMode::Zerocopy { BindMode::Zerocopy } else { BindMode::Copy },
            tx_ring_size: u.tx_ring,
            frame_count,
            frame_size: u.frame_size as usize,
        })
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn raw_fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
