//! The worker loop: RX batch → [`respond`] in place → TX batch, recycling frames through the completion and
//! fill rings. Nothing in the loop allocates, locks, logs or makes a system call per packet: the only system
//! calls are TX kicks (per batch, when the kernel asks for one), fill-ring wake-ups (when the driver asks), and
//! one statistics read per second.
//!
//! Busyness (`WorkerStats::busy_ns`): a spinning worker costs a whole core whatever the load, so it accounts
//! the time of the turns that found work: an RX batch from the clock read it makes for the handler to one
//! more read once its replies are kicked and its frames recycled; a timer turn that fired, from its clock read
//! to after its sends' kick; a kick of held-back or left-over replies, around the kick. Empty polls,
//! housekeeping and sleeps are idle. That is one extra clock read per batch or kick (vDSO, no system call),
//! none per packet.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use xsk_rs::FrameDesc;

use super::{
    send::{NextHop, Path, SendOptions, Sending, XskSink},
    KickPolicy, PollMode, QueueSocket,
};
use crate::{
    datapath::{
        counters::{FrameAccount, KernelSocketStats, WorkerShared, WorkerStats},
        histograms::WorkerLatency,
        meta, WorkerExit,
    },
    handler::{fire_timeout, respond_with, Arrival, Handler, Outcome, RespondOptions, Time},
    sys,
};

/// How often the socket's kernel statistics are refreshed.
const KERNEL_STATS_PERIOD: Duration = Duration::from_secs(1);
/// Loop iterations between clock reads (a vDSO call, but still not free).
const CLOCK_EVERY: u32 = 1 << 12;
/// Idle turns between housekeeping passes (completion ring, fill ring, wake-ups).
const HOUSEKEEPING_EVERY: u32 = 16;

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
    stamps: Vec<Option<meta::Stamp>>,
    latency: Option<WorkerLatency>,
    /// Whether every packet starts with the XDP program's stamp (`StampMethod::Head`), to be stripped.
    strip_stamp: bool,
    /// Whether the XDP program writes its stamp as XDP metadata in front of each packet (`StampMethod::Meta`),
    /// to be read for the handler even when no latency is recorded.
    meta_stamp: bool,
    options: RespondOptions,
    poll_mode: PollMode,
    kick: KickPolicy,
    stats: WorkerStats,
    kernel: KernelSocketStats,
    /// The handler's sends: their queue, where they may come from, next hops.
    sending: Sending,
}

/// Longest sleep of a waking worker in one poll(2): bounds how long it takes to see the stop flag and to
/// swap its latency histograms while idle.
const IDLE_WAIT_MS: i32 = 100;

/// How long a stopping worker waits for the kernel to complete what is still being transmitted, so that
/// the frame account covers every frame.
const DRAIN: Duration = Duration::from_millis(200);

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
            strip_stamp: false,
            meta_stamp: false,
            options: RespondOptions::default(),
            poll_mode: PollMode::Spin,
            kick: KickPolicy::default(),
            stats: WorkerStats::default(),
            kernel: KernelSocketStats::default(),
            sending: Sending::new(SendOptions::default(), None, RespondOptions::default().reply_headers()),
        }
    }

    /// Lets the handler send (see [`crate::handler::Outbox`]): up to `options.per_batch` datagrams per batch
    /// or timer turn, from `options`' addresses and ports, to the request's sender along its own path and to
    /// anyone else through `next_hops` (without it, only back to senders). Default: no sends.
    pub fn with_sends(mut self, options: SendOptions, next_hops: Option<Box<dyn NextHop>>) -> Self {
        self.sending = Sending::new(options, next_hops, self.options.reply_headers());
        self
    }

    /// Records in-server latency into `latency`'s histograms (the XDP program must be stamping packets).
    pub fn with_latency(mut self, latency: WorkerLatency) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Says that the steering program prepends its stamp to every packet (the `head` stamp method): the
    /// worker reads the first [`meta::META_LEN`] bytes as the stamp (for the handler and the latency
    /// histograms) and strips them before the handler sees the packet. Must match the loaded program.
    pub fn with_stamp_in_packet(mut self, prepended: bool) -> Self {
        self.strip_stamp = prepended;
        self
    }

    /// Says that the steering program writes its stamp as XDP metadata in front of every packet it stamps
    /// (the `meta` stamp method): the worker then reads it for the handler
    /// ([`crate::handler::Request::rx_timestamp`]) even when it records no latency (with latency, it always
    /// looks). Must match the loaded program.
    pub fn with_stamp_in_metadata(mut self, metadata: bool) -> Self {
        self.meta_stamp = metadata;
        self
    }

    /// Sets how requests are checked before the handler sees them (default: verify UDP checksums), and the
    /// IP header of replies and sends.
    pub fn with_options(mut self, options: RespondOptions) -> Self {
        self.options = options;
        self.sending.headers = options.reply_headers();
        self
    }

    /// Sets how the worker waits when its RX ring is empty (default: [`PollMode::Spin`]). For
    /// [`PollMode::BusyPoll`] the socket must already have busy polling enabled
    /// ([`QueueSocket::enable_busy_poll`]).
    pub fn with_poll_mode(mut self, poll_mode: PollMode) -> Self {
        self.poll_mode = poll_mode;
        self
    }

    /// Sets when replies are kicked out (default: after every batch). Holding them back until several wait
    /// trades latency for fewer system calls per packet when the worker outruns its load.
    pub fn with_kick_policy(mut self, kick: KickPolicy) -> Self {
        self.kick = kick;
        self
    }

    /// Runs the loop on the calling thread until `stop` is set, then returns the counters so far.
    pub fn run(&mut self, stop: &AtomicBool) -> WorkerExit {
        let Worker {
            socket: s,
            handler,
            shared,
            free,
            rx_batch,
            tx_batch,
            completed,
            stamps,
            latency,
            strip_stamp,
            meta_stamp,
            options,
            poll_mode,
            kick,
            stats,
            kernel,
            sending,
        } = self;
        let per_batch = sending.per_batch();
        // The handler's next deadline, asked again after every batch and timer turn.
        let mut deadline = handler.poll_timeout();
        // Replies on the TX ring not kicked yet, and when the oldest of them got there.
        let mut unkicked: u32 = 0;
        let mut oldest_unkicked_ns = 0u64;
        // After this long without a packet, a waking mode sleeps; `None`: never sleep.
        let sleep_after_ns = match *poll_mode {
            PollMode::Spin | PollMode::BusyPoll { .. } => None,
            PollMode::Wakeup => Some(0),
            PollMode::Adaptive { spin } => Some(spin.as_nanos() as u64),
        };
        let busy_poll = matches!(poll_mode, PollMode::BusyPoll { .. });
        let mut last_packet_ns = sys::monotonic_ns();
        let frame_mask = s.frame_size - 1;
        let queue = Some(s.queue);
        let read_meta_stamp = *meta_stamp || latency.is_some();
        let mut next_kernel_ns = 0u64;
        let mut spins: u32 = 0;

        while !stop.load(Relaxed) {
            // Take no more requests than the TX ring has room for replies, so that a request is either
            // answered or left waiting in the RX ring (where the kernel counts what overflows), never
            // answered into a full TX ring and thrown away.
            let room = (s.tx_room(rx_batch.len() as u32) as usize).min(rx_batch.len());
            if room == 0 {
                stats.tx_backpressure += 1;
            }
            // The RX ring is looked at first on every turn, so a packet waits for at most one idle turn of
            // housekeeping before it is picked up.
            // SAFETY: `rx_batch` receives descriptors of frames the kernel filled and handed to us.
            let received = if room == 0 { 0 } else { unsafe { s.rx.consume(&mut rx_batch[..room]) } };
            if received == 0 {
                spins = spins.wrapping_add(1);
                if spins.is_multiple_of(HOUSEKEEPING_EVERY) {
                    if let Some(due) = deadline {
                        // A timer is set: the clock is read on housekeeping turns (every 16 idle turns while
                        // spinning) and the handler called once it is due.
                        let now = Time { unix_ns: sys::realtime_ns(), monotonic_ns: sys::monotonic_ns() };
                        if due <= now.monotonic_ns {
                            let mut left = per_batch;
                            let fired = {
                                let mut sink = XskSink::new(&s.umem, free, sending, &mut left, stats, None);
                                fire_timeout(handler, now, &mut sink)
                            };
                            stats.timeouts += u64::from(fired);
                            deadline = handler.poll_timeout();
                            if !sending.queued.is_empty() {
                                transmit_sends(s, &mut sending.queued, free, stats);
                                stats.tx_kicks += s.kick_tx();
                            }
                            // A timer turn is work: from its clock read to its sends' kick.
                            stats.add_busy(now.monotonic_ns, sys::monotonic_ns());
                        }
                    }
                    if let Some(hops) = &mut sending.next_hops {
                        hops.refresh();
                    }
                    // Frames whose replies have left go back to the pool, the fill ring is kept stocked, and
                    // replies the kernel could not take last time are kicked again.
                    s.reclaim(completed, free);
                    s.refill(free);
                    stats.fill_kicks += s.wake_fill();
                    // Re-kick what the kernel did not take last time; replies held back by the kick policy
                    // go out when it says so (below).
                    if s.tx_pending() > unkicked {
                        // A kick is work (in copy mode the kernel sends inside it): timed around it, which
                        // happens at most once per batch the kernel did not take whole.
                        let kick_ns = sys::monotonic_ns();
                        stats.tx_kicks += s.kick_tx();
                        unkicked = 0;
                        stats.add_busy(kick_ns, sys::monotonic_ns());
                    }
                }
                if unkicked > 0 {
                    let now_ns = sys::monotonic_ns();
                    if now_ns.saturating_sub(oldest_unkicked_ns) >= kick.delay_ns {
                        stats.tx_kicks += s.kick_tx();
                        unkicked = 0;
                        stats.add_busy(now_ns, sys::monotonic_ns());
                    }
                }
                if spins.is_multiple_of(CLOCK_EVERY) {
                    let now_ns = sys::monotonic_ns();
                    if let Some(l) = latency {
                        l.maybe_swap(now_ns);
                    }
                    // What idle turns counted (timer turns, kicks, their busy time) reaches the readers
                    // without waiting for the next batch.
                    shared.stats.publish(stats);
                    refresh_kernel_stats(s, shared, kernel, now_ns, &mut next_kernel_ns);
                }
                if let Some(after) = sleep_after_ns {
                    // Sleep only on a housekeeping turn (the rings were just serviced) and with nothing left
                    // on the TX ring for the kernel to take.
                    if spins.is_multiple_of(HOUSEKEEPING_EVERY)
                        && s.tx_pending() == 0
                        && sys::monotonic_ns().saturating_sub(last_packet_ns) >= after
                    {
                        stats.sleeps += 1;
                        shared.stats.publish(stats);
                        s.wait_for_rx(wait_ms(deadline, sys::monotonic_ns()));
                        stats.wait_errors = s.wait_errors;
                        let now_ns = sys::monotonic_ns();
                        if let Some(l) = latency {
                            l.maybe_swap(now_ns);
                        }
                        refresh_kernel_stats(s, shared, kernel, now_ns, &mut next_kernel_ns);
                        continue;
                    }
                } else if busy_poll {
                    // The poll itself runs the device's NAPI poll (preferred busy polling): by design one
                    // system call per idle turn, and none when the ring has packets.
                    stats.busy_polls += 1;
                    s.wait_for_rx(0);
                    stats.wait_errors = s.wait_errors;
                    continue;
                }
                std::hint::spin_loop();
                continue;
            }
            if room < rx_batch.len() {
                // A short batch because TX was nearly full: get completions back before the next turn.
                s.reclaim(completed, free);
            }
            stats.rx_packets += received as u64;
            stats.rx_batches += 1;
            // The handler's clock, read once per batch (vDSO, no system call); the monotonic reading doubles as
            // the pick-up time for the latency histograms.
            let now = Time { unix_ns: sys::realtime_ns(), monotonic_ns: sys::monotonic_ns() };
            let picked_ns = now.monotonic_ns;
            last_packet_ns = picked_ns;
            let mut sends_left = per_batch;

            for desc in &mut rx_batch[..received] {
                let offset_in_frame = desc.addr() & frame_mask;
                // SAFETY: the kernel handed this frame to us through the RX ring and no ring holds it now, so
                // this is the only reference to its memory until it is produced to TX or fill.
                let mut data = unsafe { s.umem.data_mut(desc) };
                let mut len = data.len();
                let stamp = if *strip_stamp {
                    // The stamp is the packet's first bytes: read it, then move the packet down over it (the
                    // descriptor's address cannot be moved), so the handler and the reply start at the frame's
                    // data as usual. A frame too short to hold a stamp cannot come from the program.
                    let contents = data.contents_mut();
                    let Some(head) = contents.first_chunk::<{ meta::META_LEN }>() else {
                        stats.dropped_malformed += 1;
                        free.push(*desc);
                        continue;
                    };
                    let stamp = meta::decode(head);
                    contents.copy_within(meta::META_LEN..len, 0);
                    len -= meta::META_LEN;
                    stamp
                } else if read_meta_stamp {
                    // SAFETY: the pointer is the packet data of a frame this loop owns (see above), and
                    // `offset_in_frame` is that data's offset within its frame.
                    unsafe { meta::take_stamp(data.contents_mut().as_mut_ptr(), offset_in_frame) }
                } else {
                    None
                };
                // Open the frame up to its full capacity so that a handler may reply with more than it got.
                let capacity = data.cursor().buf_len();
                data.cursor().set_pos(capacity);
                // The stamp on both clocks for the handler, converted with the batch's clock pair (no clock read).
                let rx_timestamp = stamp.and_then(|st| st.arrival(now));
                let arrival = Arrival { rx_timestamp, queue };
                let path = Path::of(data.contents());
                let outcome = {
                    let mut sink = XskSink::new(&s.umem, free, sending, &mut sends_left, stats, path);
                    respond_with(handler, data.contents_mut(), len, now, *options, arrival, &mut sink)
                };
                match outcome {
                    Outcome::Reply(n) => {
                        data.cursor().set_pos(n);
                        tx_batch.push(*desc);
                        stamps.push(stamp);
                    }
                    other => {
                        match other {
                            Outcome::Malformed(_) => stats.dropped_malformed += 1,
                            Outcome::BadChecksum => stats.dropped_bad_checksum += 1,
                            Outcome::NotOurs => stats.dropped_not_ours += 1,
                            Outcome::Amplification => stats.dropped_amplification += 1,
                            Outcome::OverMtu => stats.dropped_over_mtu += 1,
                            Outcome::Handled => stats.handled += 1,
                            Outcome::HandlerDrop | Outcome::ReplyTooLarge | Outcome::Reply(_) => {
                                stats.dropped_by_handler += 1
                            }
                        }
                        free.push(*desc);
                    }
                }
            }

            // A timer due by now runs with the batch: its sends go out with the batch's.
            if deadline.is_some_and(|due| due <= now.monotonic_ns) {
                let fired = {
                    let mut sink = XskSink::new(&s.umem, free, sending, &mut sends_left, stats, None);
                    fire_timeout(handler, now, &mut sink)
                };
                stats.timeouts += u64::from(fired);
            }
            deadline = handler.poll_timeout();
            if let Some(hops) = &mut sending.next_hops {
                hops.refresh();
            }

            // The replies go out as one batch, the handler's sends after them.
            if !tx_batch.is_empty() || !sending.queued.is_empty() {
                let sent = s.transmit(tx_batch);
                stats.tx_packets += sent as u64;
                if sent < tx_batch.len() {
                    stats.tx_ring_full += (tx_batch.len() - sent) as u64;
                    free.extend_from_slice(&tx_batch[sent..]);
                }
                tx_batch.clear();
                let sent_sends = transmit_sends(s, &mut sending.queued, free, stats);
                // Service ends when the replies are on the TX ring; the kick that follows is transmission.
                let coalescing = kick.batch > 1;
                let queued_ns = if latency.is_some() || coalescing { sys::monotonic_ns() } else { 0 };
                if unkicked == 0 {
                    oldest_unkicked_ns = queued_ns;
                }
                unkicked += (sent + sent_sends) as u32;
                let due = !coalescing
                    || unkicked >= kick.batch
                    || queued_ns.saturating_sub(oldest_unkicked_ns) >= kick.delay_ns;
                let kicks = if due {
                    unkicked = 0;
                    s.kick_tx()
                } else {
                    0
                };
                stats.tx_kicks += kicks;
                if let Some(l) = latency {
                    if kicks > 0 {
                        l.current.record_kick(sys::monotonic_ns().saturating_sub(queued_ns));
                    }
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
            // Under load there are no idle turns: housekeeping happens after every batch, and the kernel's
            // socket statistics are refreshed on their timer (they matter most during overload).
            s.reclaim(completed, free);
            s.refill(free);
            // The batch's busy stretch: from its pick-up (the handler's clock read) to here, replies kicked and
            // frames recycled. The one extra clock read per batch.
            let done_ns = sys::monotonic_ns();
            stats.add_busy(picked_ns, done_ns);
            stats.tx_kick_errors = s.tx_kick_errors;
            stats.wait_errors = s.wait_errors;
            shared.stats.publish(stats);
            refresh_kernel_stats(s, shared, kernel, done_ns, &mut next_kernel_ns);
        }
        refresh_kernel_stats(s, shared, kernel, 0, &mut 0);
        stats.tx_kick_errors = s.tx_kick_errors;
        stats.wait_errors = s.wait_errors;
        shared.stats.publish(stats);
        if let Some(l) = latency {
            l.flush();
        }
        let frames = Some(drain(s, completed, free));
        WorkerExit { stats: *stats, kernel: *kernel, frames, cpu: sys::thread_cpu_times().ok() }
    }
}

/// Puts the handler's sends on the TX ring (after the batch's replies), counting those that found no room
/// (their frames go back to the pool); returns how many went on.
#[inline]
fn transmit_sends(
    s: &mut QueueSocket,
    sends: &mut Vec<FrameDesc>,
    free: &mut Vec<FrameDesc>,
    stats: &mut WorkerStats,
) -> usize {
    let sent = s.transmit(sends);
    stats.tx_packets += sent as u64;
    if sent < sends.len() {
        stats.tx_ring_full += (sends.len() - sent) as u64;
        free.extend_from_slice(&sends[sent..]);
    }
    sends.clear();
    sent
}

/// How long a waking worker may sleep: [`IDLE_WAIT_MS`], or less if the handler's timer is due sooner (in
/// whole milliseconds, rounded up: poll(2)'s unit).
#[inline]
fn wait_ms(deadline: Option<u64>, now_ns: u64) -> i32 {
    match deadline {
        Some(due) => {
            let ms = due.saturating_sub(now_ns).div_ceil(1_000_000);
            ms.min(IDLE_WAIT_MS as u64) as i32
        }
        None => IDLE_WAIT_MS,
    }
}

/// Reads the socket's kernel statistics (one getsockopt) when `now_ns` has reached `next_ns`, and sets the
/// next reading one period later.
#[inline]
fn refresh_kernel_stats(
    s: &QueueSocket,
    shared: &WorkerShared,
    kernel: &mut KernelSocketStats,
    now_ns: u64,
    next_ns: &mut u64,
) {
    if now_ns < *next_ns {
        return;
    }
    *next_ns = now_ns + KERNEL_STATS_PERIOD.as_nanos() as u64;
    if let Some(k) = s.kernel_stats() {
        *kernel = k;
        shared.kernel.publish(kernel);
    }
}

/// Takes back every frame the kernel completes within [`DRAIN`] (kicking what is still on the TX ring), then
/// counts where the frames are. A frame in none of the places after that is reported as lost.
fn drain(s: &mut QueueSocket, completed: &mut [FrameDesc], free: &mut Vec<FrameDesc>) -> FrameAccount {
    let deadline = std::time::Instant::now() + DRAIN;
    loop {
        s.reclaim(completed, free);
        if s.tx_pending() > 0 {
            s.kick_tx();
        }
        let account = s.frame_account(free.len());
        if account.frames_lost == 0 || std::time::Instant::now() >= deadline {
            return account;
        }
        std::hint::spin_loop();
    }
}
