//! Counters a worker keeps and publishes for the control plane to read while it runs.
//!
//! The worker is the only writer: it keeps plain local counts and stores them into these atomics once per
//! batch (relaxed stores, no read-modify-write, no lock), so publishing costs a few stores per batch and
//! nothing per packet. Readers take a [`WorkerStats`] snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::handler::SendError;

/// A snapshot of one worker's counters: the same struct for the AF_XDP and the kernel-socket workers, and
/// a counter means one thing in both. Each says which datapaths count it; one that only the other
/// datapath has stays 0 (see the [`socket`](super::socket) module docs for the socket worker's system
/// calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Requests received: frames taken off the RX ring (AF_XDP), datagrams received (kernel sockets).
    pub rx_packets: u64,
    /// Replies and sends sent: put on the TX ring (AF_XDP), accepted by the kernel (kernel sockets).
    pub tx_packets: u64,
    /// Frames whose headers did not hold together.
    pub dropped_malformed: u64,
    /// Requests whose UDP checksum did not verify (see `packet.verify_udp_checksum`).
    pub dropped_bad_checksum: u64,
    /// Replies and sends beyond the handler's declared budget for their request (`Handler::budget`): never sent.
    pub dropped_amplification: u64,
    /// Replies longer than the interface's MTU (`RespondOptions::mtu`): never sent. Absent from reports of
    /// servers older than the counter, hence the default.
    #[serde(default)]
    pub dropped_over_mtu: u64,
    /// Frames that were not UDP over IP for a served port (should not reach a worker).
    pub dropped_not_ours: u64,
    /// Requests the handler chose not to answer, or answered with a reply too large for the frame.
    pub dropped_by_handler: u64,
    /// Replies and sends dropped for want of room: a full TX ring (AF_XDP); a send the kernel refused with
    /// EAGAIN/ENOBUFS, or SO_SNDTIMEO passing (kernel sockets).
    pub tx_ring_full: u64,
    /// TX wake-up system calls (AF_XDP); send system calls (kernel sockets: sendmsg, sendmmsg, and the
    /// io_uring_enter calls that submitted sends).
    pub tx_kicks: u64,
    /// AF_XDP only: TX wake-ups that failed with an unexpected error (not EAGAIN/EBUSY/ENOBUFS/ENETDOWN).
    /// Kernel sockets count their failed sends in `tx_errors`.
    pub tx_kick_errors: u64,
    /// AF_XDP only: turns on which RX was not looked at because the TX ring had no free slot (requests wait
    /// in the RX ring instead of being answered into a full TX ring and dropped).
    pub tx_backpressure: u64,
    /// AF_XDP only: fill-ring wake-up system calls.
    pub fill_kicks: u64,
    /// Receive batches that carried at least one request: RX batches (AF_XDP); the datagrams of one
    /// wake-up, one recvmmsg call or one io_uring turn (kernel sockets).
    pub rx_batches: u64,
    /// Waits for packets: a waking AF_XDP worker (poll mode wakeup or adaptive) going to sleep in poll(2) on
    /// an empty ring; a kernel-socket worker's wait calls (epoll_wait, sigtimedwait, io_uring_enter with
    /// nothing to submit) and the blocking model's receives that timed out.
    pub sleeps: u64,
    /// AF_XDP only: busy-poll system calls made on an empty ring (poll mode busy_poll). Kernel sockets count
    /// their receives that found nothing in `empty_receives`.
    pub busy_polls: u64,
    /// Waits for packets that failed, other than by a signal (EINTR): the loop goes on either way, but a
    /// rising count says the socket is in trouble. AF_XDP: poll(2) on the socket and fill-ring wake-ups;
    /// kernel sockets: epoll_wait, sigtimedwait (and the signal model's set-up of its signals), and
    /// io_uring_enter.
    #[serde(default)]
    pub wait_errors: u64,
    /// Kernel sockets only: receive calls (recvmsg, recvmmsg, io_uring receive completions) that failed
    /// with an unexpected error (not EAGAIN/EINTR, and not io_uring's ENOBUFS, see `rx_no_buffer`). 0 on
    /// AF_XDP. Absent from reports of servers older than the counter, hence the default (as for every
    /// counter below).
    #[serde(default)]
    pub rx_errors: u64,
    /// Kernel sockets only: send calls (sendmsg, sendmmsg, io_uring send completions) that failed with an
    /// unexpected error (a reply from an address that cannot be a source, a route gone...); no room (EAGAIN,
    /// ENOBUFS) counts in `tx_ring_full` instead. 0 on AF_XDP, whose failed TX wake-ups are `tx_kick_errors`.
    #[serde(default)]
    pub tx_errors: u64,
    /// Kernel sockets only: receive calls that found the socket empty (EAGAIN): the spins of the
    /// non-blocking model, the call that ends each drain in the others (a signal whose socket had already
    /// been drained shows as one of these alone). 0 on AF_XDP, whose empty busy polls are `busy_polls`.
    #[serde(default)]
    pub empty_receives: u64,
    /// Kernel sockets with io_uring only: multishot receives that ended with ENOBUFS, every provided buffer
    /// being held by a request or a reply in flight (the datagrams waited in the socket until buffers came
    /// back and the receive was armed again). 0 elsewhere.
    #[serde(default)]
    pub rx_no_buffer: u64,
    /// Datagrams handlers sent through their outbox (`Outbox::send`), besides in-place replies; once queued
    /// they count in `tx_packets` too, or in `tx_ring_full` if the TX ring / socket had no room.
    #[serde(default)]
    pub sends: u64,
    /// Sends refused because the transmit pool was empty (AF_XDP: no free UMEM frame; sockets: every send
    /// buffer in flight).
    #[serde(default)]
    pub send_pool_empty: u64,
    /// Sends refused because the batch or timer turn had already sent `sends.per_batch`.
    #[serde(default)]
    pub send_batch_limit: u64,
    /// Sends refused for their addresses: a source that is not a served address with a served or owned port,
    /// or source and destination of different IP versions.
    #[serde(default)]
    pub send_bad_address: u64,
    /// AF_XDP sends refused because the kernel has no route to the destination through the served interface.
    #[serde(default)]
    pub send_no_route: u64,
    /// AF_XDP sends dropped because the next hop's MAC was not resolved yet (the kernel was asked to
    /// resolve it; never sent to a wrong or zero MAC).
    #[serde(default)]
    pub send_unresolved: u64,
    /// Calls of the handler's `handle_timeout`.
    #[serde(default)]
    pub timeouts: u64,
    /// Time spent in turns that found work (DPDK's lcore busyness), in ns: RX batches (or a waiting model's
    /// wake-ups) from pick-up to the end of their handling, kicks, and timer turns that fired. Empty polls,
    /// housekeeping and waits are idle. Measured with clock reads the loop makes anyway, plus at most one per
    /// batch or kick, never one per packet (see [`WorkerStats::add_busy`]). Absent from reports of servers
    /// older than the counter, hence the default.
    #[serde(default)]
    pub busy_ns: u64,
    /// Requests the handler dealt with without a reply in place (`Verdict::Handled`: relayed through its
    /// outbox, or one-way): neither replies nor drops.
    #[serde(default)]
    pub handled: u64,
}

impl WorkerStats {
    /// Counts a busy stretch that began at `start_ns` and ended at `end_ns` (CLOCK_MONOTONIC readings;
    /// a reversed pair counts nothing).
    ///
    /// The clock is `CLOCK_MONOTONIC` through the vDSO, not the TSC: the loops read it already (once per
    /// batch for the handler's `now`), so a busy stretch costs the one reading at its end, per batch and never
    /// per packet; on x86 with the `tsc` clocksource that reading is itself a TSC read plus a scale (tens of
    /// ns), and it needs no calibration, stays right across frequency changes and migrations, and is the
    /// clock every other figure of the worker (latency, timers) is on.
    #[inline]
    pub fn add_busy(&mut self, start_ns: u64, end_ns: u64) {
        self.busy_ns = self.busy_ns.wrapping_add(end_ns.saturating_sub(start_ns));
    }
}

/// The share of `wall_ns` that `busy_ns` is (0.0 ..= 1.0 for one worker; several workers' busy time over one
/// wall interval add up beyond 1.0); `None` for an empty interval.
pub fn busy_fraction(busy_ns: u64, wall_ns: u64) -> Option<f64> {
    (wall_ns > 0).then(|| busy_ns as f64 / wall_ns as f64)
}

impl WorkerStats {
    /// The calls that failed unexpectedly, by counter name: each datapath's own (AF_XDP: `tx_kick_errors`;
    /// kernel sockets: `rx_errors`, `tx_errors`) and the failed waits both have (`wait_errors`).
    pub fn errors(&self) -> [(&'static str, u64); 4] {
        [
            ("rx_errors", self.rx_errors),
            ("tx_errors", self.tx_errors),
            ("wait_errors", self.wait_errors),
            ("tx_kick_errors", self.tx_kick_errors),
        ]
    }

    /// Counts a handler's send refused with `e` under its counter (see [`SendError`]).
    #[inline]
    pub fn count_refused_send(&mut self, e: SendError) {
        match e {
            SendError::PoolEmpty => self.send_pool_empty += 1,
            SendError::OverBudget => self.dropped_amplification += 1,
            SendError::BatchLimit => self.send_batch_limit += 1,
            SendError::TooLarge => self.dropped_over_mtu += 1,
            SendError::NoRoute => self.send_no_route += 1,
            SendError::Unresolved => self.send_unresolved += 1,
            _ => self.send_bad_address += 1,
        }
    }
}

/// Where a socket's UMEM frames are: every frame is in exactly one place, so the places add up to `total`
/// and `frames_lost` is 0. Counted when a worker stops, after it has taken back what the kernel completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameAccount {
    /// Frames in the UMEM.
    pub total: u64,
    /// In user space's free pool, on no ring.
    pub free: u64,
    /// On the fill ring, waiting for packets.
    pub fill_ring: u64,
    /// On the RX ring, received and not yet taken.
    pub rx_ring: u64,
    /// On the TX ring, not yet taken by the kernel.
    pub tx_ring: u64,
    /// On the completion ring, sent and not yet taken back.
    pub completion_ring: u64,
    /// `total` minus all of the above: frames in none of the places (negative: counted twice). Must be 0.
    pub frames_lost: i64,
}

/// Kernel-side statistics of an AF_XDP socket (getsockopt XDP_STATISTICS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSocketStats {
    /// Dropped for reasons other than invalid descriptors (e.g. frame too small).
    pub rx_dropped: u64,
    /// Invalid RX descriptors.
    pub rx_invalid_descs: u64,
    /// Invalid TX descriptors.
    pub tx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when woken.
    pub tx_ring_empty_descs: u64,
}

macro_rules! published {
    ($name:ident, $snapshot:ident { $($field:ident),* $(,)? }) => {
        /// The atomics behind a snapshot of the same fields; written by one worker, read by anyone.
        #[derive(Debug, Default)]
        #[repr(align(64))]
        pub struct $name { $($field: AtomicU64,)* }

        impl $name {
            /// Publishes a snapshot (single writer).
            #[inline]
            pub fn publish(&self, s: &$snapshot) {
                $(self.$field.store(s.$field, Relaxed);)*
            }

            /// Reads the latest published values.
            pub fn snapshot(&self) -> $snapshot {
                $snapshot { $($field: self.$field.load(Relaxed),)* }
            }
        }
    };
}

published!(
    PublishedWorkerStats,
    WorkerStats {
        rx_packets,
        tx_packets,
        dropped_malformed,
        dropped_bad_checksum,
        dropped_amplification,
        dropped_over_mtu,
        dropped_not_ours,
        dropped_by_handler,
        tx_ring_full,
        tx_kicks,
        tx_kick_errors,
        tx_backpressure,
        fill_kicks,
        rx_batches,
        sleeps,
        busy_polls,
        wait_errors,
        rx_errors,
        tx_errors,
        empty_receives,
        rx_no_buffer,
        sends,
        send_pool_empty,
        send_batch_limit,
        send_bad_address,
        send_no_route,
        send_unresolved,
        timeouts,
        busy_ns,
        handled,
    }
);

published!(
    PublishedKernelStats,
    KernelSocketStats {
        rx_dropped,
        rx_invalid_descs,
        tx_invalid_descs,
        rx_ring_full,
        rx_fill_ring_empty_descs,
        tx_ring_empty_descs,
    }
);

/// Everything a worker publishes.
#[derive(Debug, Default)]
pub struct WorkerShared {
    /// The worker's own counters, published once per batch.
    pub stats: PublishedWorkerStats,
    /// The socket's kernel statistics, refreshed about once a second.
    pub kernel: PublishedKernelStats,
    /// True while the worker runs its loop: set by the control plane once the worker is ready, cleared when
    /// the loop ends (a stop, or a panic). Read by the metrics endpoint's readiness check; never per packet.
    pub alive: AtomicBool,
}

impl WorkerShared {
    /// Whether the worker is running its loop now.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_stretches_add_up_and_reversed_readings_count_nothing() {
        let mut s = WorkerStats::default();
        s.add_busy(1_000, 1_250);
        s.add_busy(5_000, 5_000);
        s.add_busy(9_000, 8_000);
        s.add_busy(10_000, 10_750);
        assert_eq!(s.busy_ns, 1_000);
    }

    #[test]
    fn busy_fraction_is_busy_over_wall() {
        assert_eq!(busy_fraction(40_000_000, 1_000_000_000), Some(0.04));
        assert_eq!(busy_fraction(0, 1_000), Some(0.0));
        assert_eq!(busy_fraction(5, 0), None);
    }

    #[test]
    fn busy_ns_is_published_and_defaults_when_absent() {
        let shared = WorkerShared::default();
        shared.stats.publish(&WorkerStats { busy_ns: 123, ..WorkerStats::default() });
        assert_eq!(shared.stats.snapshot().busy_ns, 123);
        let old: WorkerStats = serde_json::from_str(
            &serde_json::to_string(&WorkerStats::default()).unwrap().replace(",\"busy_ns\":0", ""),
        )
        .unwrap();
        assert_eq!(old.busy_ns, 0);
    }

    #[test]
    fn errors_name_each_counter_once() {
        let s = WorkerStats { rx_errors: 1, tx_errors: 2, wait_errors: 3, tx_kick_errors: 4, ..Default::default() };
        assert_eq!(s.errors(), [("rx_errors", 1), ("tx_errors", 2), ("wait_errors", 3), ("tx_kick_errors", 4)]);
    }

    #[test]
    fn published_counters_come_back_in_their_own_fields() {
        let s = WorkerStats {
            tx_kick_errors: 1,
            tx_backpressure: 2,
            busy_polls: 3,
            wait_errors: 4,
            rx_errors: 5,
            tx_errors: 6,
            empty_receives: 7,
            rx_no_buffer: 8,
            ..Default::default()
        };
        let published = PublishedWorkerStats::default();
        published.publish(&s);
        assert_eq!(published.snapshot(), s);
    }

    #[test]
    fn a_report_without_the_socket_counters_still_reads() {
        let mut old = serde_json::to_value(WorkerStats { rx_packets: 5, ..Default::default() }).expect("json");
        let fields = old.as_object_mut().expect("an object");
        for key in ["rx_errors", "tx_errors", "empty_receives", "rx_no_buffer"] {
            assert!(fields.remove(key).is_some(), "{key} is serialized");
        }
        let read: WorkerStats = serde_json::from_value(old).expect("an older report's counters");
        assert_eq!(read, WorkerStats { rx_packets: 5, ..Default::default() });
    }
}
