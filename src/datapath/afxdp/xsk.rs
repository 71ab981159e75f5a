//! One queue's UMEM and AF_XDP socket.

use std::{num::NonZeroU32, os::fd::AsRawFd};

use xsk_rs::{
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

use super::{BindMode, UmemParams};
use crate::datapath::counters::{FrameAccount, KernelSocketStats};

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
        /// The kernel said EBUSY: another socket holds the queue.
        busy: bool,
    },
}

/// How long [`QueueSocket::open`] waits for a busy queue to be released.
pub const BUSY_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
    pub umem: UmemParams,
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
    fill_ring_size: u32,
    /// Bytes per frame (a power of two).
    pub(super) frame_size: usize,
    /// Frames in the UMEM, on rings or not.
    pub(super) frame_count: usize,
    /// TX wake-ups that failed with an error other than the transient ones (EAGAIN, EBUSY, ENOBUFS,
    /// ENETDOWN: ring busy or out of buffers, retried on the next kick), so far.
    pub(super) tx_kick_errors: u64,
    /// Failed waits and fill-ring wake-ups (see `WorkerStats::wait_errors`).
    pub(super) wait_errors: u64,
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
    ///
    /// A queue still held by a socket that is being torn down (a previous server that has just exited: the
    /// kernel releases AF_XDP sockets asynchronously) answers EBUSY; that is retried for up to
    /// [`BUSY_QUEUE_WAIT`] before giving up.
    pub fn open(opts: &SocketOptions) -> Result<QueueSocket, DatapathError> {
        let deadline = std::time::Instant::now() + BUSY_QUEUE_WAIT;
        let mut logged = false;
        loop {
            let result = match opts.bind_mode {
                BindMode::Zerocopy | BindMode::Copy => Self::open_mode(opts, opts.bind_mode),
                BindMode::Auto => Self::open_mode(opts, BindMode::Zerocopy).or_else(|zc| {
                    tracing::info!(queue = opts.queue, "zero-copy unavailable ({zc}); using copy mode");
                    Self::open_mode(opts, BindMode::Copy)
                }),
            };
            match result {
                Err(DatapathError::Bind { busy: true, .. }) if std::time::Instant::now() < deadline => {
                    if !std::mem::replace(&mut logged, true) {
                        tracing::info!(
                            queue = opts.queue,
                            "queue busy (a previous socket is being released); retrying"
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
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
            // No UMEM headroom: XDP metadata (the `meta` stamp) lives in the XDP_PACKET_HEADROOM the kernel
            // keeps in front of every packet anyway.
            .frame_headroom(0)
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
        let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &interface, q) }.map_err(|e| {
            let busy = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EBUSY);
            DatapathError::Bind {
                queue: q,
                interface: opts.interface.clone(),
                mode: mode_name,
                message: error_chain(&e),
                busy,
            }
        })?;
        let (mut fill, completion) = rings.ok_or_else(|| DatapathError::Bind {
            queue: q,
            interface: opts.interface.clone(),
            mode: mode_name,
            message: "the UMEM's fill and completion rings were already taken".into(),
            busy: false,
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
            fill_ring_size: u.fill_ring,
            frame_count,
            frame_size: u.frame_size as usize,
            tx_kick_errors: 0,
            wait_errors: 0,
        })
    }

    /// Sleeps in poll(2) until the RX ring has a packet or `timeout_ms` passes (a wake-up, not per packet).
    pub(super) fn wait_for_rx(&mut self, timeout_ms: i32) {
        // An error only ends this wait early (the loop looks at the ring either way); a signal is no fault,
        // anything else is counted.
        if let Err(e) = self.rx.poll(timeout_ms) {
            if e.raw_os_error() != Some(libc::EINTR) {
                self.wait_errors += 1;
            }
        }
    }

    /// Turns on preferred busy polling for this socket (see [`super::PollMode::BusyPoll`]).
    pub fn enable_busy_poll(&self, usecs: u32, budget: u16) -> std::io::Result<()> {
        // SAFETY: the descriptor is this socket's, open for as long as `self` lives, which outlives the borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.raw_fd()) };
        crate::sys::set_busy_poll(fd, usecs, budget)
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn raw_fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }

    /// Moves frames whose transmission completed into `free`, using `scratch` (as long as the TX ring) to
    /// receive their descriptors. `free` has capacity for every frame, so this never allocates.
    #[inline]
    pub(crate) fn reclaim(&mut self, scratch: &mut [FrameDesc], free: &mut Vec<FrameDesc>) {
        // SAFETY: `scratch` only receives descriptors of this socket's UMEM, filled in by the kernel; the frames
        // are ours again once they come off the completion ring.
        let done = unsafe { self.completion.consume(scratch) };
        free.extend_from_slice(&scratch[..done]);
    }

    /// Gives as many frames from `free` to the fill ring as it has room for.
    #[inline]
    pub(crate) fn refill(&mut self, free: &mut Vec<FrameDesc>) {
        if free.is_empty() {
            return;
        }
        let room = self.fill.nb_free(free.len() as u32) as usize;
        let give = room.min(free.len());
        if give > 0 {
            let from = free.len() - give;
            // SAFETY: every descriptor in `free` belongs to this UMEM and is on no ring; after this call the
            // produced ones belong to the kernel until they come back through RX.
            let produced = unsafe { self.fill.produce(&free[from..]) };
            free.truncate(free.len() - produced);
        }
    }

    /// Wakes the driver to fill the RX ring, if it asked to be woken (never in copy mode). Returns the number
    /// of system calls made (0 or 1).
    #[inline]
    pub(crate) fn wake_fill(&mut self) -> u64 {
        if !self.fill.needs_wakeup() {
            return 0;
        }
        if let Err(e) = self.fill.wakeup(self.rx.fd_mut(), 0) {
            if e.raw_os_error() != Some(libc::EINTR) {
                self.wait_errors += 1;
            }
        }
        1
    }

    /// Puts as many of `frames` on the TX ring as fit and returns how many did; the rest stay the caller's.
    #[inline]
    pub(crate) fn transmit(&mut self, frames: &[FrameDesc]) -> usize {
        let room = self.tx.nb_free(frames.len() as u32) as usize;
        let send = room.min(frames.len());
        if send == 0 {
            return 0;
        }
        // SAFETY: the descriptors are frames of this UMEM that the caller owns and has written; the kernel owns
        // them until they come back through the completion ring.
        unsafe { self.tx.produce(&frames[..send]) }
    }

    /// Free TX slots (the cached count, refreshed from the kernel's consumer index when it looks short).
    #[inline]
    pub(super) fn tx_room(&mut self, wanted: u32) -> u32 {
        self.tx.nb_free(wanted)
    }

    /// Descriptors on the TX ring the kernel has not taken yet.
    #[inline]
    pub(crate) fn tx_pending(&mut self) -> u32 {
        self.tx_ring_size - self.tx.nb_free_exact()
    }

    /// Wakes the kernel to transmit what is on the TX ring, if it asked to be woken, and returns the number of
    /// system calls made. Copy mode sends at most 32 descriptors per wake-up (TX_BATCH_SIZE in xsk.c), so a
    /// larger batch takes several; zero-copy drivers drain the ring on one.
    #[inline]
    pub(crate) fn kick_tx(&mut self) -> u64 {
        let pending = self.tx_pending();
        let most = if self.bind_mode == BindMode::Copy { pending.div_ceil(COPY_MODE_TX_PER_KICK) } else { 1 };
        let mut kicks = 0;
        while kicks < u64::from(most) && self.tx.needs_wakeup() && self.tx_pending() > 0 {
            // xsk-rs already treats the transient errors (ring busy, out of buffers, link down) as success:
            // what was not sent stays on the ring for the next kick. Anything else is counted, not logged
            // (this is the hot path), and the report and metrics show it.
            if self.tx.wakeup().is_err() {
                self.tx_kick_errors += 1;
            }
            kicks += 1;
        }
        kicks
    }

    /// Frames in the UMEM.
    pub(crate) fn frame_count(&self) -> usize {
        self.frame_count
    }

    /// Slots of the TX ring (the most descriptors [`QueueSocket::reclaim`] can take back at once).
    pub(crate) fn tx_ring_size(&self) -> u32 {
        self.tx_ring_size
    }

    /// Moves the frames the socket has not stocked the fill ring with (on no ring, never written) into
    /// `free`: from now on they are the caller's to write and send.
    pub(crate) fn take_frames(&mut self, free: &mut Vec<FrameDesc>) {
        free.append(&mut self.frames);
    }

    /// Runs `build` over the whole buffer of frame `desc`, which must be one this side owns: from its free
    /// pool (taken with [`QueueSocket::take_frames`], back from [`QueueSocket::reclaim`] or
    /// [`QueueSocket::receive_frames`]) and on no ring. `build` returns the frame's length; a length of 0 or
    /// beyond the buffer, or `None`, leaves the frame unsent and gives `None`. Returns the length set.
    ///
    /// For a socket driven from outside (a client); the worker writes its frames in place with its own loop.
    pub(crate) fn write_frame(
        &mut self,
        desc: &mut FrameDesc,
        build: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        // SAFETY: the contract above: `desc` is a frame of this UMEM from the caller's free pool, on no ring,
        // so neither the kernel nor another descriptor touches its buffer while it is borrowed here. The
        // crate's one caller (the client's port) only passes descriptors from its pool, which holds exactly
        // the frames handed back by take_frames, reclaim and receive_frames.
        let mut data = unsafe { self.umem.data_mut(desc) };
        let capacity = data.cursor().buf_len();
        data.cursor().set_pos(capacity);
        match build(data.contents_mut()) {
            Some(len) if len > 0 && len <= capacity => {
                data.cursor().set_pos(len);
                Some(len)
            }
            _ => None,
        }
    }

    /// Takes up to `batch.len()` received frames off the RX ring into `batch` and shows each frame's bytes to
    /// `seen`. Returns how many: the first that many descriptors of `batch` are the caller's from now on (to
    /// give back to the fill ring with [`QueueSocket::refill`], or to write and send).
    pub(crate) fn receive_frames(&mut self, batch: &mut [FrameDesc], mut seen: impl FnMut(&[u8])) -> usize {
        // SAFETY: `batch` only receives descriptors of this socket's UMEM, filled in by the kernel.
        let received = unsafe { self.rx.consume(batch) };
        for desc in batch.iter().take(received) {
            // SAFETY: the frame came off the RX ring just now, so it is ours and no ring holds it until the
            // caller gives it back; only shared access, for the length the kernel wrote.
            let data = unsafe { self.umem.data(desc) };
            seen(data.contents());
        }
        received
    }

    /// Counts the frames in each place, given how many are in the caller's free pool (exact ring counts: this
    /// reads the kernel's indices, so it is for the stop path, not the hot one).
    pub(super) fn frame_account(&mut self, free: usize) -> FrameAccount {
        let places = FrameAccount {
            total: self.frame_count as u64,
            free: free as u64,
            fill_ring: u64::from(self.fill_ring_size - self.fill.nb_free_exact()),
            rx_ring: u64::from(self.rx.nb_avail_exact()),
            tx_ring: u64::from(self.tx_pending()),
            completion_ring: u64::from(self.completion.nb_avail_exact()),
            frames_lost: 0,
        };
        let placed = places.free + places.fill_ring + places.rx_ring + places.tx_ring + places.completion_ring;
        FrameAccount { frames_lost: places.total as i64 - placed as i64, ..places }
    }

    /// Reads the socket's kernel statistics (one getsockopt).
    pub(super) fn kernel_stats(&self) -> Option<KernelSocketStats> {
        let k = self.rx.fd().xdp_statistics().ok()?;
        Some(KernelSocketStats {
            rx_dropped: k.rx_dropped(),
            rx_invalid_descs: k.rx_invalid_descs(),
            tx_invalid_descs: k.tx_invalid_descs(),
            rx_ring_full: k.rx_ring_full(),
            rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: k.tx_ring_empty_descs(),
        })
    }
}

/// In copy mode the kernel transmits at most this many descriptors per kick.
const COPY_MODE_TX_PER_KICK: u32 = 32;

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
