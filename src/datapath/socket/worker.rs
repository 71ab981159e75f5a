//! The kernel-socket worker: one loop per I/O model around the same per-datagram step (control messages →
//! [`Request`] → [`answer`] → reply from the request's destination), with the AF_XDP worker's counters and
//! latency conventions (see the module docs of [`super`]).
//!
//! Busyness (`WorkerStats::busy_ns`), in every model: a wake-up (or a pass of the non-blocking model, or a
//! recvmmsg batch, or an io_uring turn that reaped something) is busy from the clock read of its first
//! datagram, which the loop makes anyway, to one more read when its handling ends (replies and sends out);
//! a timer turn that fired likewise. The wait itself (epoll_wait, sigtimedwait, a blocking recvmsg, the
//! io_uring wait) and empty polls are idle. One extra clock read per wake-up, batch or turn, none per
//! datagram. In io_uring the replies are submitted by the same io_uring_enter that waits, so their
//! submission counts as idle.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use rustix::event::epoll;

use super::{
    cmsg,
    msg::{self, Batch, Slot},
    open::{self, PortSocket},
    send::{Outgoings, SocketSink},
    uring::{Completion, Uring},
    KernelSocketError, KernelSocketOptions, SocketIo, IO_SIGNAL_OFFSET, MAX_BATCH,
};
use crate::{
    datapath::{
        counters::{KernelSocketStats, WorkerShared, WorkerStats},
        histograms::WorkerLatency,
        meta::Stamp,
        WorkerExit,
    },
    handler::{answer, fire_timeout, Ecn, Handler, Outcome, Request, RxClock, RxTimestamp, SendError, Time},
    sys,
};

/// How long the waiting models wait (epoll_wait, sigtimedwait) before looking at the stop flag again.
const WAIT: Duration = Duration::from_millis(100);
/// Empty passes of the non-blocking model between clock reads (for the latency histograms' swaps).
const SPINS_PER_CLOCK: u32 = 1 << 12;

/// Serves one or more UDP ports through kernel sockets with one handler, in one [`SocketIo`] model, until told
/// to stop.
///
/// Every buffer the loop needs is allocated by [`KernelWorker::open`]; [`KernelWorker::run`] allocates nothing,
/// so it can be stopped and run again (counters carry on).
pub struct KernelWorker<H> {
    sockets: Vec<PortSocket>,
    io: SocketIo,
    batch: usize,
    /// The epoll instance and its event buffer (Epoll and Mmsg).
    poll: Option<Poll>,
    /// The real-time signal and the set the worker waits on (Signal).
    signal: Option<IoSignal>,
    /// recvmmsg/sendmmsg headers (Mmsg; empty otherwise).
    batch_headers: Batch,
    /// The ring and its provided buffers (IoUring).
    uring: Option<Uring>,
    core: Core<H>,
}

struct Poll {
    fd: OwnedFd,
}

/// Events taken per epoll_wait, into a buffer on the loop's stack (rustix's events are not `Send`, so the
/// worker keeps none). With more ready sockets than this, level triggering brings the rest on the next call.
const EVENTS: usize = 64;

/// An empty event buffer.
fn events() -> [epoll::Event; EVENTS] {
    [epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) }; EVENTS]
}

struct IoSignal {
    signal: i32,
    /// `signal` and SIGIO (the kernel's fallback when the real-time signal queue is full).
    set: sys::SignalSet,
}

/// What every model shares: the handler, the counters, the latency histograms and the datagram buffers.
struct Core<H> {
    handler: H,
    shared: Arc<WorkerShared>,
    latency: Option<WorkerLatency>,
    stats: WorkerStats,
    /// One slot per datagram of a batch (Mmsg), or one.
    slots: Vec<Slot>,
    /// The handler's send buffers, and the list a flush takes the queued ones into.
    outgoing: Outgoings,
    flushing: Vec<usize>,
    /// sendmmsg headers for the handler's sends (Mmsg).
    send_headers: Batch,
    /// Sends allowed per wake-up, batch or timer turn.
    per_batch: u32,
    /// Sends left in the current one.
    sends_left: u32,
    /// The sockets' ports by index, and the interface: where sends go out.
    ports: Vec<u16>,
    ifindex: u32,
    /// The handler's next deadline (CLOCK_MONOTONIC ns), asked again after each datagram, batch and timeout.
    deadline: Option<u64>,
}

/// One wake-up's datagrams, the clock when the first was in hand (where its busy stretch starts) and when
/// the latest was.
#[derive(Default)]
struct Wake {
    first_ns: u64,
    now: Option<Time>,
    taken: usize,
}

impl<H: Handler> KernelWorker<H> {
    /// Opens one socket per port of `options` and everything the loop needs; nothing runs until
    /// [`KernelWorker::run`].
    pub fn open(
        options: KernelSocketOptions,
        handler: H,
        shared: Arc<WorkerShared>,
    ) -> Result<Self, KernelSocketError> {
        if options.ports.is_empty() {
            return Err(KernelSocketError::NoPorts);
        }
        if options.io == SocketIo::Blocking && options.ports.len() != 1 {
            return Err(KernelSocketError::BlockingNeedsOnePort { ports: options.ports.len() });
        }
        if options.batch > MAX_BATCH {
            return Err(KernelSocketError::BatchTooLarge { batch: options.batch });
        }
        let batch = options.batch.max(1) as usize;
        let ifindex = sys::interface_index(&options.interface)
            .map_err(|source| KernelSocketError::Interface { interface: options.interface.clone(), source })?;
        let sockets = open::open_all(&options)?;
        if options.timestamps && !open::await_rx_stamping(open::STAMPING_DEADLINE) {
            tracing::warn!(
                "the kernel did not start stamping received datagrams within {:?} (or no loopback to check it \
                 on): the first requests may count as unstamped",
                open::STAMPING_DEADLINE
            );
        }

        let poll = match options.io {
            SocketIo::Epoll | SocketIo::Mmsg => {
                let fail = |what| move |e: rustix::io::Errno| KernelSocketError::Epoll { what, source: e.into() };
                let fd = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(fail("epoll_create1"))?;
                for (i, ps) in sockets.iter().enumerate() {
                    epoll::add(&fd, &ps.socket, epoll::EventData::new_u64(i as u64), epoll::EventFlags::IN)
                        .map_err(fail("epoll_ctl(EPOLL_CTL_ADD)"))?;
                }
                Some(Poll { fd })
            }
            SocketIo::Blocking | SocketIo::Nonblocking | SocketIo::Signal | SocketIo::IoUring => None,
        };
        let uring = if options.io == SocketIo::IoUring {
            let fds = sockets.iter().map(|ps| ps.socket.as_raw_fd()).collect();
            // Twice the batch, so a turn's replies in flight leave a batch of buffers to receive into.
            let entries = (2 * batch).next_power_of_two().clamp(64, 512) as u16;
            Some(
                Uring::open(fds, entries, options.sends_per_batch)
                    .map_err(|(what, source)| KernelSocketError::Uring { what, source })?,
            )
        } else {
            None
        };

        let signal = if options.io == SocketIo::Signal {
            let signal = sys::realtime_signal(IO_SIGNAL_OFFSET).ok_or(KernelSocketError::NoSignal)?;
            let set = sys::SignalSet::of(&[signal, libc::SIGIO]).map_err(|source| KernelSocketError::Socket {
                port: 0,
                what: "sigset",
                source,
            })?;
            // The signal and its owner are set now to find out early whether the kernel takes them; the owner
            // becomes the thread that runs the loop when it starts. Without O_ASYNC (also turned on by `run`)
            // nothing is sent.
            for ps in &sockets {
                sys::set_io_signal(ps.socket.as_fd(), signal, sys::thread_id()).map_err(|source| {
                    KernelSocketError::Socket { port: ps.port, what: "F_SETSIG / F_SETOWN_EX", source }
                })?;
            }
            Some(IoSignal { signal, set })
        } else {
            None
        };

        let slots = if options.io == SocketIo::Mmsg { batch } else { 1 };
        let per_batch = options.sends_per_batch;
        let deadline = handler.poll_timeout();
        let ports = sockets.iter().map(|ps| ps.port).collect();
        Ok(KernelWorker {
            sockets,
            io: options.io,
            batch,
            poll,
            signal,
            batch_headers: Batch::new(if options.io == SocketIo::Mmsg { batch } else { 0 }),
            uring,
            core: Core {
                handler,
                shared,
                latency: None,
                stats: WorkerStats::default(),
                slots: (0..slots).map(|_| Slot::new()).collect(),
                outgoing: Outgoings::new(per_batch as usize),
                flushing: Vec::with_capacity(per_batch as usize),
                send_headers: Batch::new(if options.io == SocketIo::Mmsg { per_batch as usize } else { 0 }),
                per_batch,
                sends_left: per_batch,
                ports,
                ifindex,
                deadline,
            },
        })
    }

    /// Records in-server latency into `latency`'s histograms (with `timestamps` on, the kernel's receive
    /// stamps start `ring_dwell` and `total`; without, only `service` is recorded).
    pub fn with_latency(mut self, latency: WorkerLatency) -> Self {
        self.core.latency = Some(latency);
        self
    }

    /// The I/O model this worker runs.
    pub fn io(&self) -> SocketIo {
        self.io
    }

    /// The ports served, one socket each.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.sockets.iter().map(|ps| ps.port)
    }

    /// Runs the loop on the calling thread until `stop` is set (seen within about 100 ms in the models that
    /// wait), then returns the counters so far.
    pub fn run(&mut self, stop: &AtomicBool) -> WorkerExit {
        match self.io {
            SocketIo::Blocking => self.run_blocking(stop),
            SocketIo::Nonblocking => self.run_nonblocking(stop),
            SocketIo::Epoll => self.run_epoll(stop),
            SocketIo::Signal => self.run_signal(stop),
            SocketIo::Mmsg => self.run_mmsg(stop),
            SocketIo::IoUring => self.run_uring(stop),
        }
        let core = &mut self.core;
        core.shared.stats.publish(&core.stats);
        if let Some(l) = &mut core.latency {
            l.flush();
        }
        // Datagrams the kernel dropped because a socket's receive buffer was full.
        let rx_dropped = self.sockets.iter().filter_map(|ps| sys::socket_drops(ps.socket.as_fd()).ok()).sum();
        WorkerExit {
            stats: core.stats,
            kernel: KernelSocketStats { rx_dropped, ..KernelSocketStats::default() },
            frames: None,
            cpu: sys::thread_cpu_times().ok(),
        }
    }

    /// One blocking recvmsg per datagram (SO_RCVTIMEO bounds each wait), one blocking sendmsg per reply.
    fn run_blocking(&mut self, stop: &AtomicBool) {
        let Some(ps) = self.sockets.first() else { return };
        let sockets = &self.sockets[..];
        let core = &mut self.core;
        // The receive timeout in force: the 100 ms the socket was opened with, shortened while the handler's
        // timer is due sooner (whole milliseconds, so at most one setsockopt per millisecond).
        let mut timeout = open::BLOCKING_TIMEOUT;
        while !stop.load(Relaxed) {
            let wanted = core.deadline.map_or(open::BLOCKING_TIMEOUT, |due| {
                let ms = due.saturating_sub(sys::monotonic_ns()).div_ceil(1_000_000).max(1);
                Duration::from_millis(ms).min(open::BLOCKING_TIMEOUT)
            });
            if wanted != timeout && ps.socket.set_read_timeout(Some(wanted)).is_ok() {
                timeout = wanted;
            }
            let Some(slot) = core.slots.first_mut() else { return };
            match msg::receive(ps.socket.as_fd(), slot) {
                Ok(()) => {}
                Err(e) if would_block(e) => {
                    // SO_RCVTIMEO passed with nothing received.
                    core.stats.sleeps += 1;
                    core.tick(sockets, None);
                    core.idle();
                    continue;
                }
                Err(libc::EINTR) => continue,
                Err(_) => {
                    core.stats.rx_errors += 1;
                    core.idle();
                    continue;
                }
            }
            let mut wake = Wake::default();
            core.on_datagram(ps, sockets, &mut wake);
            core.finish(sockets, &wake);
        }
    }

    /// Spins over the sockets with non-blocking recvmsg, up to `batch` datagrams from each per pass.
    fn run_nonblocking(&mut self, stop: &AtomicBool) {
        let mut spins: u32 = 0;
        while !stop.load(Relaxed) {
            let mut wake = Wake::default();
            for ps in &self.sockets {
                self.core.drain(ps, &self.sockets, self.batch, &mut wake, stop);
            }
            if wake.taken > 0 {
                self.core.finish(&self.sockets, &wake);
            } else {
                spins = spins.wrapping_add(1);
                // With a timer set, the clock is looked at every 16 empty passes; without, only for the
                // histograms' swaps.
                if self.core.deadline.is_some() && spins.is_multiple_of(16) {
                    self.core.tick(&self.sockets, None);
                }
                if spins.is_multiple_of(SPINS_PER_CLOCK) {
                    self.core.idle();
                }
            }
        }
    }

    /// Level-triggered epoll_wait, then every ready socket drained to EAGAIN.
    fn run_epoll(&mut self, stop: &AtomicBool) {
        let Some(poll) = &self.poll else { return };
        let mut events = events();
        while !stop.load(Relaxed) {
            let ready = self.core.wait(poll, &mut events);
            if ready == 0 {
                self.core.tick(&self.sockets, None);
                self.core.idle();
                continue;
            }
            let mut wake = Wake::default();
            for event in events.get(..ready).unwrap_or_default() {
                if let Some(ps) = self.sockets.get(event.data.u64() as usize) {
                    self.core.drain(ps, &self.sockets, usize::MAX, &mut wake, stop);
                }
            }
            self.core.finish(&self.sockets, &wake);
        }
    }

    /// sigtimedwait for the sockets' real-time signal, then the socket it names drained to EAGAIN.
    fn run_signal(&mut self, stop: &AtomicBool) {
        let Some(sig) = &self.signal else { return };
        let sockets = &self.sockets[..];
        let core = &mut self.core;
        // Block the signals before any can be raised: an unblocked real-time signal (or SIGIO) would kill the
        // process. They stay blocked after the loop (see SocketIo::Signal).
        if sys::block_signals(&sig.set).is_err() {
            core.stats.wait_errors += 1;
            return;
        }
        let tid = sys::thread_id();
        for ps in sockets {
            let fd = ps.socket.as_fd();
            if sys::set_io_signal(fd, sig.signal, tid).and_then(|()| sys::set_async(fd, true)).is_err() {
                core.stats.wait_errors += 1;
                disarm(sockets, sig);
                return;
            }
        }
        // Datagrams that arrived before O_ASYNC was on raised no signal.
        let mut wake = Wake::default();
        for ps in sockets {
            core.drain(ps, sockets, usize::MAX, &mut wake, stop);
        }
        core.finish(sockets, &wake);

        while !stop.load(Relaxed) {
            core.stats.sleeps += 1;
            let taken = match sys::take_signal(&sig.set, core.wait_time()) {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    core.tick(sockets, None);
                    core.idle();
                    continue;
                }
                Err(_) => {
                    core.stats.wait_errors += 1;
                    core.idle();
                    continue;
                }
            };
            let mut wake = Wake::default();
            let named = match taken.fd {
                Some(fd) if taken.signal == sig.signal => sockets.iter().find(|ps| ps.socket.as_raw_fd() == fd),
                _ => None,
            };
            match named {
                Some(ps) => core.drain(ps, sockets, usize::MAX, &mut wake, stop),
                // SIGIO: the real-time queue overflowed and which sockets are ready is lost: drain them all.
                None => {
                    for ps in sockets {
                        core.drain(ps, sockets, usize::MAX, &mut wake, stop);
                    }
                }
            }
            core.finish(sockets, &wake);
        }
        disarm(sockets, sig);
    }

    /// Level-triggered epoll_wait, then recvmmsg batches from every ready socket until a short one, each
    /// batch's replies sent with sendmmsg (and the handler's sends with another).
    fn run_mmsg(&mut self, stop: &AtomicBool) {
        let Some(poll) = &self.poll else { return };
        let mut events = events();
        while !stop.load(Relaxed) {
            let ready = self.core.wait(poll, &mut events);
            if ready == 0 {
                self.core.tick(&self.sockets, None);
                self.core.idle();
                continue;
            }
            for event in events.get(..ready).unwrap_or_default() {
                let Some(ps) = self.sockets.get(event.data.u64() as usize) else { continue };
                loop {
                    match msg::receive_batch(ps.socket.as_fd(), &mut self.core.slots, &mut self.batch_headers) {
                        Ok(0) => {
                            self.core.stats.empty_receives += 1;
                            break;
                        }
                        Ok(got) => {
                            self.core.serve_batch(ps, &self.sockets, got, &mut self.batch_headers);
                            if got < self.batch || stop.load(Relaxed) {
                                break;
                            }
                        }
                        Err(e) if would_block(e) => {
                            self.core.stats.empty_receives += 1;
                            break;
                        }
                        Err(libc::EINTR) => {}
                        Err(_) => {
                            self.core.stats.rx_errors += 1;
                            break;
                        }
                    }
                }
            }
            self.core.shared.stats.publish(&self.core.stats);
        }
    }

    /// One io_uring_enter per turn (submit the replies and sends queued, wait for a completion), then every
    /// completion handled: datagrams answered into sends out of their own buffers, the handler's sends out of
    /// the send buffers, sent buffers given back.
    fn run_uring(&mut self, stop: &AtomicBool) {
        let Some(u) = &mut self.uring else { return };
        let core = &mut self.core;
        while !stop.load(Relaxed) {
            u.arm();
            if u.has_queued() {
                core.stats.tx_kicks += 1;
            } else {
                core.stats.sleeps += 1;
            }
            let timeout = io_uring::types::Timespec::from(core.wait_time());
            if u.enter(&timeout).is_err() {
                core.stats.wait_errors += 1;
            }
            // Completions are copied out of the ring first and the clock read after: a completion posted in
            // between (task work run on the way back from an interrupt) would otherwise carry a kernel stamp
            // later than its pick-up. Every datagram reaped is picked up now; every send reaped is done by now.
            let reaped = u.reap();
            let now = read_time();
            let timeouts_before = core.stats.timeouts;
            let mut taken = 0;
            core.sends_left = core.per_batch;
            for k in 0..reaped {
                match u.completion(k) {
                    Completion::Received { socket, result: Ok(bid), .. } => {
                        taken += 1;
                        core.stats.rx_packets += 1;
                        let port = self.sockets.get(socket).map_or(0, |ps| ps.port);
                        let reply = match u.take(bid) {
                            Some(t) => {
                                let Core { handler, outgoing, ports, ifindex, sends_left, stats, .. } = &mut *core;
                                let mut sink =
                                    SocketSink { out: outgoing, ports, ifindex: *ifindex, left: sends_left, stats };
                                serve_datagram(handler, t.received, t.payload, t.reply_control, port, now, &mut sink)
                            }
                            None => None,
                        };
                        match reply {
                            Some(r) => {
                                if !u.send(socket, bid, r.len, r.control_len, r.stamp, now.monotonic_ns) {
                                    core.stats.tx_ring_full += 1;
                                    u.give_back(bid);
                                }
                            }
                            None => u.give_back(bid),
                        }
                    }
                    Completion::Received { result: Err(libc::ENOBUFS), .. } => core.stats.rx_no_buffer += 1,
                    Completion::Received { result: Err(_), .. } => core.stats.rx_errors += 1,
                    Completion::Sent { bid, result } => {
                        match result {
                            Ok(()) => {
                                core.stats.tx_packets += 1;
                                if let Some(l) = &mut core.latency {
                                    let (stamp, picked_ns) = u.times(bid);
                                    l.current.record_packet(stamp, picked_ns, now.monotonic_ns);
                                }
                            }
                            Err(e) => count_send_error(e, &mut core.stats),
                        }
                        u.give_back(bid);
                    }
                    Completion::SentOutgoing { index, result } => {
                        match result {
                            Ok(()) => core.stats.tx_packets += 1,
                            Err(e) => count_outgoing_error(e, &mut core.stats),
                        }
                        core.outgoing.release(index);
                    }
                    Completion::Other => {}
                }
            }
            core.fire_due(now);
            core.deadline = core.handler.poll_timeout();
            // The turn's sends (from requests and the timer) go out with the next enter.
            core.outgoing.take_queued(&mut core.flushing);
            for &index in &core.flushing {
                let queued = core.outgoing.slots.get_mut(index).is_some_and(|out| u.send_outgoing(out, index));
                if !queued {
                    core.stats.tx_ring_full += 1;
                    core.outgoing.release(index);
                }
            }
            u.publish();
            if taken > 0 {
                core.stats.rx_batches += 1;
            }
            // The turn's clock reading serves the histogram swap too: no second clock read per turn.
            if let Some(l) = &mut core.latency {
                if taken > 0 {
                    l.current.record_batch(taken);
                }
                l.maybe_swap(now.monotonic_ns);
            }
            // A turn that reaped completions (datagrams answered, sends confirmed) or fired a timer was busy
            // from its clock read to here; a timed-out wait with nothing to do was not.
            if reaped > 0 || core.stats.timeouts != timeouts_before {
                core.stats.add_busy(now.monotonic_ns, sys::monotonic_ns());
            }
            core.shared.stats.publish(&core.stats);
        }
    }
}

impl<H> Drop for KernelWorker<H> {
    /// The io_uring ring is closed first, while the send buffers its requests may point at are still here; if
    /// the kernel did not confirm that every request ended, those buffers are leaked rather than freed under
    /// it.
    fn drop(&mut self) {
        if let Some(mut u) = self.uring.take() {
            if !u.close() {
                std::mem::forget(std::mem::replace(&mut self.core.outgoing, Outgoings::new(0)));
            }
        }
    }
}

impl<H: Handler> Core<H> {
    /// How long a waiting model may wait: [`WAIT`], or less if the handler's timer is due sooner.
    fn wait_time(&self) -> Duration {
        match self.deadline {
            Some(due) => Duration::from_nanos(due.saturating_sub(sys::monotonic_ns())).min(WAIT),
            None => WAIT,
        }
    }

    /// One epoll_wait (no longer than [`Core::wait_time`]); returns how many events it brought (0 on timeout
    /// or error).
    fn wait(&mut self, poll: &Poll, events: &mut [epoll::Event]) -> usize {
        self.stats.sleeps += 1;
        let wait = self.wait_time();
        let timeout = rustix::time::Timespec { tv_sec: wait.as_secs() as _, tv_nsec: wait.subsec_nanos() as _ };
        match epoll::wait(&poll.fd, events, Some(&timeout)) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(_) => {
                self.stats.wait_errors += 1;
                0
            }
        }
    }

    /// Calls the handler's timeout if it is due at `now`, its sends queued for the next flush.
    fn fire_due(&mut self, now: Time) {
        if self.deadline.is_none_or(|due| due > now.monotonic_ns) {
            return;
        }
        let Core { handler, outgoing, ports, ifindex, sends_left, stats, .. } = self;
        let mut sink = SocketSink { out: outgoing, ports, ifindex: *ifindex, left: sends_left, stats };
        let fired = fire_timeout(handler, now, &mut sink);
        drop(sink);
        self.stats.timeouts += u64::from(fired);
        self.deadline = self.handler.poll_timeout();
    }

    /// Between wake-ups: a timer due now runs (reading the clock if `now` is not given), and its sends go
    /// out.
    fn tick(&mut self, sockets: &[PortSocket], now: Option<Time>) {
        let Some(due) = self.deadline else { return };
        let now = now.unwrap_or_else(read_time);
        if due > now.monotonic_ns {
            return;
        }
        self.sends_left = self.per_batch;
        self.fire_due(now);
        self.flush(sockets);
        self.stats.add_busy(now.monotonic_ns, sys::monotonic_ns());
    }

    /// Sends what the handler queued: one sendmsg each, or (Mmsg) one sendmmsg per run of sends out of the
    /// same socket.
    fn flush(&mut self, sockets: &[PortSocket]) {
        self.outgoing.take_queued(&mut self.flushing);
        if self.flushing.is_empty() {
            return;
        }
        let batched = self.send_headers.send_capacity() > 0;
        let mut from = 0;
        while let Some(&first) = self.flushing.get(from) {
            let socket = self.outgoing.slots.get(first).map_or(usize::MAX, |o| o.socket);
            let Some(ps) = sockets.get(socket) else {
                self.stats.send_bad_address += 1;
                from += 1;
                continue;
            };
            self.stats.tx_kicks += 1;
            let result = if batched {
                let run = self.flushing.get(from..).unwrap_or_default();
                let same =
                    run.iter().take_while(|&&k| self.outgoing.slots.get(k).is_some_and(|o| o.socket == socket)).count();
                msg::send_outgoing_batch(
                    ps.socket.as_fd(),
                    &self.outgoing.slots,
                    run.get(..same).unwrap_or_default(),
                    &mut self.send_headers,
                )
            } else {
                match self.outgoing.slots.get(first) {
                    Some(out) => msg::send_outgoing(ps.socket.as_fd(), out).map(|()| 1),
                    None => Ok(1),
                }
            };
            match result {
                Ok(sent) => {
                    self.stats.tx_packets += sent as u64;
                    from += sent.max(1);
                }
                Err(libc::EINTR) => {}
                Err(e) => {
                    count_outgoing_error(e, &mut self.stats);
                    from += 1;
                }
            }
        }
        for &k in &self.flushing {
            self.outgoing.release(k);
        }
        self.flushing.clear();
    }

    /// Receives from `ps` datagram by datagram, answering each as it comes, until EAGAIN, `limit` datagrams or
    /// `stop`.
    fn drain(&mut self, ps: &PortSocket, sockets: &[PortSocket], limit: usize, wake: &mut Wake, stop: &AtomicBool) {
        let mut taken = 0;
        while taken < limit {
            let Some(slot) = self.slots.first_mut() else { return };
            match msg::receive(ps.socket.as_fd(), slot) {
                Ok(()) => {}
                Err(e) if would_block(e) => {
                    self.stats.empty_receives += 1;
                    return;
                }
                Err(libc::EINTR) => continue,
                Err(_) => {
                    self.stats.rx_errors += 1;
                    return;
                }
            }
            taken += 1;
            self.on_datagram(ps, sockets, wake);
            if stop.load(Relaxed) {
                return;
            }
        }
    }

    /// Answers the datagram just received into slot 0 with one sendmsg, and sends what the handler sent.
    ///
    /// In these models every recvmsg is a pick-up of its own, so the clock is read for each datagram (vDSO, no
    /// system call): a clock read once per wake-up would predate the datagrams that arrive while the worker
    /// drains the socket, and their kernel stamps would lie in its future.
    fn on_datagram(&mut self, ps: &PortSocket, sockets: &[PortSocket], wake: &mut Wake) {
        self.stats.rx_packets += 1;
        let now = read_time();
        // These models flush a datagram's sends right after it (below): the per-batch limit is per datagram.
        self.sends_left = self.per_batch;
        if wake.taken == 0 {
            wake.first_ns = now.monotonic_ns;
        }
        wake.taken += 1;
        wake.now = Some(now);
        let Core { handler, slots, outgoing, ports, ifindex, sends_left, stats, .. } = self;
        let Some(slot) = slots.first_mut() else { return };
        let mut sink = SocketSink { out: outgoing, ports, ifindex: *ifindex, left: sends_left, stats };
        let replied = serve(handler, slot, ps.port, now, &mut sink);
        drop(sink);
        if replied {
            loop {
                self.stats.tx_kicks += 1;
                match msg::send(ps.socket.as_fd(), slot) {
                    Ok(()) => {
                        self.stats.tx_packets += 1;
                        if let Some(l) = &mut self.latency {
                            l.current.record_packet(slot.stamp, now.monotonic_ns, sys::monotonic_ns());
                        }
                    }
                    Err(libc::EINTR) => continue,
                    Err(e) => count_send_error(e, &mut self.stats),
                }
                break;
            }
        }
        self.flush(sockets);
    }

    /// Answers the first `got` slots (one recvmmsg batch) and sends the replies with sendmmsg, then the
    /// handler's sends.
    fn serve_batch(&mut self, ps: &PortSocket, sockets: &[PortSocket], got: usize, b: &mut Batch) {
        let now = read_time();
        self.stats.rx_packets += got as u64;
        self.stats.rx_batches += 1;
        self.sends_left = self.per_batch;
        b.send_slot.clear();
        {
            let Core { handler, slots, outgoing, ports, ifindex, sends_left, stats, .. } = &mut *self;
            let mut sink = SocketSink { out: outgoing, ports, ifindex: *ifindex, left: sends_left, stats };
            for (k, slot) in slots.iter_mut().enumerate().take(got) {
                if serve(handler, slot, ps.port, now, &mut sink) && b.send_slot.len() < b.send_slot.capacity() {
                    b.send_slot.push(k);
                }
            }
        }
        let mut from = 0;
        while from < b.send_slot.len() {
            self.stats.tx_kicks += 1;
            match msg::send_batch(ps.socket.as_fd(), &self.slots, b, from) {
                Ok(0) => break,
                Ok(sent) => {
                    self.stats.tx_packets += sent as u64;
                    if let Some(l) = &mut self.latency {
                        let queued_ns = sys::monotonic_ns();
                        for &k in b.send_slot.get(from..from + sent).unwrap_or_default() {
                            let stamp = self.slots.get(k).and_then(|s| s.stamp);
                            l.current.record_packet(stamp, now.monotonic_ns, queued_ns);
                        }
                    }
                    from += sent;
                }
                Err(libc::EINTR) => {}
                Err(e) => {
                    // The first reply of the rest was refused: count it and send the others.
                    count_send_error(e, &mut self.stats);
                    from += 1;
                }
            }
        }
        self.fire_due(now);
        self.deadline = self.handler.poll_timeout();
        self.flush(sockets);
        if let Some(l) = &mut self.latency {
            l.current.record_batch(got);
            l.maybe_swap(now.monotonic_ns);
        }
        // The batch's busy stretch: its clock read to here (the one extra read per batch).
        self.stats.add_busy(now.monotonic_ns, sys::monotonic_ns());
        self.shared.stats.publish(&self.stats);
    }

    /// Closes a wake-up: runs a timer that fell due during it, counts its batch, publishes the counters.
    fn finish(&mut self, sockets: &[PortSocket], wake: &Wake) {
        if let (Some(now), true) = (wake.now, wake.taken > 0) {
            self.stats.rx_batches += 1;
            self.sends_left = self.per_batch;
            self.fire_due(now);
            self.deadline = self.handler.poll_timeout();
            self.flush(sockets);
            if let Some(l) = &mut self.latency {
                l.current.record_batch(wake.taken);
                l.maybe_swap(now.monotonic_ns);
            }
            // The wake-up's busy stretch: its first datagram's clock read to here (the one extra read per
            // wake-up).
            self.stats.add_busy(wake.first_ns, sys::monotonic_ns());
        }
        self.shared.stats.publish(&self.stats);
    }

    /// Between packets: swaps the histograms when due and publishes the counters.
    fn idle(&mut self) {
        if let Some(l) = &mut self.latency {
            l.maybe_swap(sys::monotonic_ns());
        }
        self.shared.stats.publish(&self.stats);
    }
}

/// Runs the handler on the datagram in `slot`, received on `port`. Returns true with the reply and its source
/// control message ready in the slot, or false having counted why there is none.
fn serve<H: Handler>(handler: &mut H, slot: &mut Slot, port: u16, now: Time, sink: &mut SocketSink<'_>) -> bool {
    let received = Received {
        flags: slot.flags,
        control: slot.control.get(..slot.control_len).unwrap_or_default(),
        name: &slot.name,
        len: slot.len,
    };
    match serve_datagram(handler, received, &mut slot.payload, &mut slot.reply_control, port, now, sink) {
        Some(reply) => {
            slot.reply_len = reply.len;
            slot.reply_control_len = reply.control_len;
            slot.stamp = reply.stamp;
            true
        }
        None => false,
    }
}

/// A received datagram's metadata, wherever the kernel put it (a [`Slot`], or an io_uring provided buffer).
pub(super) struct Received<'a> {
    /// `msg_flags` of the receive (MSG_TRUNC).
    pub flags: i32,
    /// The control messages received.
    pub control: &'a [u8],
    /// The sender (v4-mapped for IPv4 on the dual-stack socket).
    pub name: &'a libc::sockaddr_in6,
    /// Payload bytes received.
    pub len: usize,
}

/// What [`serve_datagram`] made: a reply of `len` bytes in the payload buffer, `control_len` bytes of source
/// (and marking) control messages, and the request's kernel receive time.
pub(super) struct Reply {
    pub len: usize,
    pub control_len: usize,
    pub stamp: Option<Stamp>,
}

/// Runs the handler on one received datagram whose payload is in `payload`, received on `port`: the reply is
/// written over the request in `payload` and its source (and marking) control messages into `reply_control`;
/// the handler's sends are queued in `sink`. `None` when there is no reply, having counted why.
pub(super) fn serve_datagram<H: Handler>(
    handler: &mut H,
    received: Received<'_>,
    payload: &mut [u8],
    reply_control: &mut [u8],
    port: u16,
    now: Time,
    sink: &mut SocketSink<'_>,
) -> Option<Reply> {
    if received.flags & libc::MSG_TRUNC != 0 {
        // Longer than the buffer: cannot happen with a 65,535-byte buffer, but never answer a truncation.
        sink.stats.dropped_malformed += 1;
        return None;
    }
    let info = cmsg::parse(received.control);
    let src = sender(received.name);
    let local = info.dst.unwrap_or(match src {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    });
    // The kernel's receive stamp (CLOCK_REALTIME) on both clocks, converted with `now`'s pair: no clock read.
    let rx_timestamp = info.rx_realtime_ns.and_then(|rt| RxTimestamp::from_realtime(rt, now, RxClock::KernelSocket));
    let request = Request {
        rx_timestamp,
        dscp: info.traffic_class.map(|tc| tc >> 2),
        ecn: info.traffic_class.map(Ecn::from_traffic_class),
        ttl: info.ttl,
        ..Request::new(src, SocketAddr::new(local, port), now)
    };
    let len = received.len.min(payload.len());
    match answer(handler, &request, payload, len, sink) {
        Ok(a) => {
            // Kernel receive time on the monotonic clock, for the latency histograms.
            let stamp = rx_timestamp.map(|t| Stamp { hook_ns: t.monotonic_ns, nic_to_hook_ns: None });
            let tc = a.marking.map(|m| m.traffic_class());
            let control_len = match info.dst {
                Some(ip) => cmsg::write_source_and_class(reply_control, ip, info.ifindex, tc),
                None => 0,
            };
            Some(Reply { len: a.len, control_len, stamp })
        }
        Err(outcome) => {
            let stats = &mut *sink.stats;
            match outcome {
                Outcome::Amplification => stats.dropped_amplification += 1,
                // `answer` makes no frame, so never this: the kernel writes the headers and fragments.
                Outcome::OverMtu => stats.dropped_over_mtu += 1,
                Outcome::Malformed(_) => stats.dropped_malformed += 1,
                Outcome::BadChecksum => stats.dropped_bad_checksum += 1,
                Outcome::NotOurs => stats.dropped_not_ours += 1,
                Outcome::Handled => stats.handled += 1,
                Outcome::HandlerDrop | Outcome::ReplyTooLarge | Outcome::Reply(_) => stats.dropped_by_handler += 1,
            }
            None
        }
    }
}

/// The sender of a datagram on the dual-stack socket, IPv4 senders unmapped.
pub(super) fn sender(name: &libc::sockaddr_in6) -> SocketAddr {
    let ip = Ipv6Addr::from(name.sin6_addr.s6_addr);
    let port = u16::from_be(name.sin6_port);
    match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        None => SocketAddr::V6(SocketAddrV6::new(ip, port, name.sin6_flowinfo, name.sin6_scope_id)),
    }
}

/// The handler's clock (vDSO, no system call), as a consistent pair: the realtime reading is bracketed by
/// two monotonic ones and paired with their midpoint, retried while the bracket is wide (a preemption
/// between the reads). Kernel receive stamps are moved onto the monotonic clock with this pair, so a stamp
/// (taken before the realtime reading) never lands after the pick-up time.
fn read_time() -> Time {
    let mut best = None;
    for _ in 0..4 {
        let before = sys::monotonic_ns();
        let unix_ns = sys::realtime_ns();
        let after = sys::monotonic_ns();
        let gap = after.saturating_sub(before);
        let pair = (gap, Time { unix_ns, monotonic_ns: before + gap / 2 });
        if best.is_none_or(|(g, _): (u64, Time)| gap < g) {
            best = Some(pair);
        }
        if gap <= 2_000 {
            break;
        }
    }
    best.map_or_else(|| Time { unix_ns: sys::realtime_ns(), monotonic_ns: sys::monotonic_ns() }, |(_, t)| t)
}

fn would_block(errno: i32) -> bool {
    errno == libc::EAGAIN || errno == libc::EWOULDBLOCK
}

/// A refused reply: no room (send buffer full, SO_SNDTIMEO, no memory) counts as `tx_ring_full`, anything
/// else as `tx_errors`.
fn count_send_error(errno: i32, stats: &mut WorkerStats) {
    if would_block(errno) || errno == libc::ENOBUFS {
        stats.tx_ring_full += 1;
    } else {
        stats.tx_errors += 1;
    }
}

/// A refused handler send: no room as for replies ([`count_send_error`]); a source the kernel will not send
/// from (not an address of this host: EINVAL, EADDRNOTAVAIL) as `send_bad_address`; no route as
/// `send_no_route`.
fn count_outgoing_error(errno: i32, stats: &mut WorkerStats) {
    match errno {
        libc::EINVAL | libc::EADDRNOTAVAIL => stats.count_refused_send(SendError::Source),
        libc::ENETUNREACH | libc::EHOSTUNREACH => stats.count_refused_send(SendError::NoRoute),
        e => count_send_error(e, stats),
    }
}

/// Turns O_ASYNC off on every socket and takes the signals still pending, which stay blocked.
fn disarm(sockets: &[PortSocket], sig: &IoSignal) {
    for ps in sockets {
        let _ = sys::set_async(ps.socket.as_fd(), false);
    }
    while let Ok(Some(_)) = sys::take_signal(&sig.set, Duration::ZERO) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handler::Echo;

    fn options(io: SocketIo, ports: Vec<u16>, batch: u32) -> KernelSocketOptions {
        KernelSocketOptions {
            interface: "lo".into(),
            ports,
            io,
            batch,
            timestamps: false,
            receive_buffer: 1 << 20,
            sends_per_batch: 8,
        }
    }

    fn open(o: KernelSocketOptions) -> Result<KernelWorker<Echo>, KernelSocketError> {
        KernelWorker::open(o, Echo, Arc::new(WorkerShared::default()))
    }

    #[test]
    fn refuses_what_it_cannot_serve_and_says_why() {
        let e = open(options(SocketIo::Epoll, vec![], 8)).err().unwrap();
        assert!(matches!(e, KernelSocketError::NoPorts), "{e}");
        let e = open(options(SocketIo::Blocking, vec![1, 2], 8)).err().unwrap();
        assert!(e.to_string().contains("one port per worker"), "{e}");
        let e = open(options(SocketIo::Mmsg, vec![1], MAX_BATCH + 1)).err().unwrap();
        assert!(e.to_string().contains("1025"), "{e}");
        let mut o = options(SocketIo::Epoll, vec![1], 8);
        o.interface = "shunt-none0".into();
        let e = open(o).err().unwrap();
        assert!(e.to_string().contains("interface shunt-none0"), "{e}");
    }

    #[test]
    fn a_worker_can_be_opened_on_one_thread_and_run_on_another() {
        fn send<T: Send>() {}
        send::<KernelWorker<Echo>>();
    }

    #[test]
    fn senders_are_unmapped() {
        // SAFETY: sockaddr_in6 is plain data; all-zero is valid.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        name.sin6_port = 4000u16.to_be();
        name.sin6_addr.s6_addr = Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets();
        assert_eq!(sender(&name), "198.18.0.2:4000".parse().unwrap());
        name.sin6_addr.s6_addr = "2001:2::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(sender(&name), "[2001:2::2]:4000".parse().unwrap());
    }
}
