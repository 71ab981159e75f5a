//! The worker loop: RX batch → [`respond`] in place → TX batch, recycling frames through the completion and
//! fill rings. Nothing in the loop allocates, locks, logs or makes a system call per packet: the only system
//! calls are TX kicks (per batch, when the kernel asks for one), fill-ring wake-ups (when the driver asks), and
//! one statistics read per second.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use xsk_rs::FrameDesc;

use super::{meta, sys, QueueSocket};
use crate::{
    config::BindMode,
    latency::WorkerLatency,
    handler::{respond, Handler, Outcome},
    stats::{KernelSocketStats, WorkerShared, WorkerStats},
};

/// In copy mode the kernel transmits at most this many descriptors per kick (TX_BATCH_SIZE in xsk.c).
const COPY_MODE_TX_PER_KICK: u32 = 32;
/// How often the socket's kernel statistics are refreshed.
const KERNEL_STATS_PERIOD: Duration = Duration::from_secs(1);
/// Loop iterations between clock reads (a vDSO call, but still not free).
const CLOCK_EVERY: u32 = 1 << 12;

/// Serves one [`QueueSocket`] with one handler until told to stop.
///
/// Every buffer the loop needs is allocated by [`Worker::new`]; [`Worker::run`] allocates nothing, so it can be
/// stopped and run again (counters carry on).
pub struct Worker<H> {
    socket: QueueSocket,
    handler: H,
    shared: Arc<WorkerShared>,
    /// Frames owned by user space and on no ring; capacity for every frame, so pushes never allocate.
    free: Vec<FrameDesc>,
    rx_batch: Vec<FrameDesc>,
    tx_batch: Vec<FrameDesc>,
    completed: Vec<FrameDesc>,
    /// XDP stamps of the replies in `tx_batch`, position by position.
    stamps: Vec<Option<u64>>,
    latency: Option<WorkerLatency>,
    stats: WorkerStats,
    kernel: KernelSocketStats,
}

/// What a worker hands back when it stops.
#[derive(Debug, Clone, Copy)]
pub struct WorkerExit {
    /// Final counters.
    pub stats: WorkerStats,
    /// Final kernel statistics of the socket.
    pub kernel: KernelSocketStats,
}

impl<H: Handler> Worker<H> {
    /// Prepares a worker; nothing runs until [`Worker::run`].
    pub fn new(mut socket: QueueSocket, handler: H, shared: Arc<WorkerShared>, batch_size: u32) -> Self {
        let batch = batch_size.max(1) as usize;
        let mut free = Vec::with_capacity(socket.frame_count);
        free.append(&mut socket.frames);
        Worker {
            rx_batch: vec![FrameDesc::default(); batch],
            tx_batch: Vec::with_capacity(batch),
            completed: vec![FrameDesc::default(); socket.tx_ring_size as usize],
            stamps: Vec::with_capacity(batch),
            free,
            socket,
            handler,
            shared,
            latency: None,
            stats: WorkerStats::default(),
            kernel: KernelSocketStats::default(),
        }
    }

    /// Records in-server latency into `latency`'s histograms (the XDP program must be stamping packets).
    pub fn with_latency(mut self, latency: WorkerLatency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Runs the busy-polling loop on the calling thread until `stop` is set, then returns the counters so far.
    pub fn run(&mut self, stop: &AtomicBool) -> WorkerExit {
        let Worker { socket: s, handler, shared, free, rx_batch, tx_batch, completed, stamps, latency, stats, kernel } =
            self;
        let frame_mask = s.frame_size - 1;
        let copy_mode = s.bind_mode == BindMode::Copy;
        let mut next_kernel_read = Instant::now();
        let mut spins: u32 = 0;

        while !stop.load(Relaxed) {
            // 1. Frames whose replies have left go back to the free pool.
            // SAFETY: `completed` only receives descriptors of this socket's UMEM, filled in by the kernel.
            let done = unsafe { s.completion.consume(completed) };
            free.extend_from_slice(&completed[..done]);

            // 2. Keep the fill ring stocked so the kernel always has somewhere to put packets.
            if !free.is_empty() {
                let room = s.fill.nb_free(free.len() as u32) as usize;
                let give = room.min(free.len());
                if give > 0 {
                    let from = free.len() - give;
                    // SAFETY: every descriptor in `free` belongs to this UMEM and is on no ring; after this call
                    // the produced ones belong to the kernel until they come back through RX.
                    let produced = unsafe { s.fill.produce(&free[from..]) };
                    free.truncate(free.len() - produced);
                }
            }

            // 3. A batch of requests.
            // SAFETY: `rx_batch` receives descriptors of frames the kernel filled and handed to us.
            let received = unsafe { s.rx.consume(rx_batch) };
            if received == 0 {
                if s.fill.needs_wakeup() {
                    stats.fill_kicks += 1;
                    let _ = s.fill.wakeup(s.rx.fd_mut(), 0);
                }
                // Replies still on the TX ring (the kernel could not take them all last time) need a kick.
                if s.tx.needs_wakeup() && s.tx.nb_free_exact() < s.tx_ring_size {
                    stats.tx_kicks += 1;
                    let _ = s.tx.wakeup();
                }
                spins = spins.wrapping_add(1);
                if spins % CLOCK_EVERY == 0 {
                    if let Some(l) = latency {
                        l.maybe_swap(sys::monotonic_ns());
                    }
                    refresh_kernel_stats(s, shared, kernel, &mut next_kernel_read);
                }
                std::hint::spin_loop();
                continue;
            }
            stats.rx_packets += received as u64;
            stats.rx_batches += 1;
            let picked_ns = if latency.is_some() { sys::monotonic_ns() } else { 0 };

            for desc in &mut rx_batch[..received] {
                // SAFETY: the kernel handed this frame to us through the RX ring and no ring holds it now, so
                // this is the only reference to its memory until it is produced to TX or fill.
                let offset_in_frame = desc.addr() & frame_mask;
                let mut data = unsafe { s.umem.data_mut(desc) };
                let len = data.len();
                let stamp =
                    if latency.is_some() { meta::take_stamp(data.contents_mut().as_mut_ptr(), offset_in_frame) } else { None };
                // Open the frame up to its full capacity so that a handler may reply with more than it got.
                let capacity = data.cursor().buf_len();
                data.cursor().set_pos(capacity);
                let outcome = respond(handler, data.contents_mut(), len);
                match outcome {
                    Outcome::Reply(n) => {
                        data.cursor().set_pos(n);
                        tx_batch.push(*desc);
                        stamps.push(stamp);
                    }
                    other => {
                        match other {
                            Outcome::Malformed(_) => stats.dropped_malformed += 1,
                            Outcome::NotOurs => stats.dropped_not_ours += 1,
                            _ => stats.dropped_by_handler += 1,
                        }
                        free.push(*desc);
                    }
                }
            }

            // 4. The replies go out as one batch.
            if !tx_batch.is_empty() {
                let room = s.tx.nb_free(tx_batch.len() as u32) as usize;
                let send = room.min(tx_batch.len());
                // SAFETY: the descriptors are frames of this UMEM that we own and have just written; the kernel
                // owns them until they come back through the completion ring.
                let sent = if send > 0 { unsafe { s.tx.produce(&tx_batch[..send]) } } else { 0 };
                stats.tx_packets += sent as u64;
                if sent < tx_batch.len() {
                    stats.tx_ring_full += (tx_batch.len() - sent) as u64;
                    free.extend_from_slice(&tx_batch[sent..]);
                }
                tx_batch.clear();
                // Service ends when the replies are on the TX ring; the kick that follows is transmission.
                let queued_ns = if latency.is_some() { sys::monotonic_ns() } else { 0 };
                stats.tx_kicks += kick_tx(s, copy_mode);
                if let Some(l) = latency {
                    for stamp in &stamps[..sent] {
                        l.current.record_packet(*stamp, picked_ns, queued_ns);
                    }
                    l.maybe_swap(queued_ns);
                }
            }
            if let Some(l) = latency {
                l.current.record_batch(received);
            }
            stamps.clear();
            shared.stats.publish(stats);
        }
        refresh_kernel_stats(s, shared, kernel, &mut Instant::now());
        shared.stats.publish(stats);
        if let Some(l) = latency {
            l.flush();
        }
        WorkerExit { stats: *stats, kernel: *kernel }
    }
}

/// Wakes the kernel to transmit what is on the TX ring, if it asked to be woken. Copy mode sends at most 32
/// descriptors per wake-up, so a larger batch takes several; zero-copy drivers drain the ring on one.
#[inline]
fn kick_tx(s: &mut QueueSocket, copy_mode: bool) -> u64 {
    let mut kicks = 0;
    let pending = s.tx_ring_size - s.tx.nb_free_exact();
    let most = if copy_mode { pending.div_ceil(COPY_MODE_TX_PER_KICK) } else { 1 };
    while kicks < u64::from(most) && s.tx.needs_wakeup() && s.tx.nb_free_exact() < s.tx_ring_size {
        // Errors here are transient (EAGAIN, EBUSY, ENOBUFS: ring busy or out of buffers); what was not sent
        // stays on the ring and is kicked again from the idle path.
        let _ = s.tx.wakeup();
        kicks += 1;
    }
    kicks
}

fn refresh_kernel_stats(s: &QueueSocket, shared: &WorkerShared, kernel: &mut KernelSocketStats, next: &mut Instant) {
    let now = Instant::now();
    if now < *next {
        return;
    }
    *next = now + KERNEL_STATS_PERIOD;
    if let Ok(k) = s.rx.fd().xdp_statistics() {
        *kernel = KernelSocketStats {
            rx_dropped: k.rx_dropped(),
            rx_invalid_descs: k.rx_invalid_descs(),
            tx_invalid_descs: k.tx_invalid_descs(),
            rx_ring_full: k.rx_ring_full(),
            rx_fill_ring_empty_descs: k.rx_fill_ring_empty_descs(),
            tx_ring_empty_descs: k.tx_ring_empty_descs(),
        };
        shared.kernel.publish(kernel);
    }
}
