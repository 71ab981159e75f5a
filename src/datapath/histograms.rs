//! In-server latency, recording side: the histograms a worker records into and the hand-off between worker
//! and reporter (summaries for reports are [`crate::observe::latency`]'s).
//!
//! A worker owns one [`LatencySet`] at a time and records into it without locking or allocating (values
//! beyond the configured range saturate instead of growing the histogram). Once per report interval it
//! swaps the set for an empty one the reporter handed back over a bounded crossbeam channel, and sends the
//! full one on; if no empty set is waiting it simply keeps recording. The reporter merges, resets and
//! returns sets off the hot path.

use hdrhistogram::Histogram;

use super::meta::Stamp;

/// Significant decimal digits kept by every histogram.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// The names reports, interval-log tags and metric labels give the stages, in report order.
pub const STAGE_NAMES: [&str; 4] = ["total", "ring_dwell", "service", "tx_kick"];
/// How long a stopping worker waits for an empty histogram set (see [`WorkerLatency::flush`]).
pub const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Largest RX batch recorded.
pub const MAX_BATCH: u64 = 1024;

/// One worker's histograms for one interval.
#[derive(Debug, Clone)]
pub struct LatencySet {
    /// XDP hook → worker picks the packet off the RX ring, in ns.
    pub ring_dwell: Histogram<u64>,
    /// Pick-up → reply on the TX ring, in ns.
    pub service: Histogram<u64>,
    /// XDP hook → reply on the TX ring, in ns.
    pub total: Histogram<u64>,
    /// NIC RX hardware timestamp → XDP hook, in ns (only packets the driver timestamped).
    pub nic_to_hook: Histogram<u64>,
    /// Replies on the TX ring → the TX kick's system calls returned, once per kicked batch, in ns. In copy
    /// mode the kernel builds and sends an skb per reply inside this call (on veth it even runs the peer's
    /// receive path), so this is where copy mode's cost shows.
    pub tx_kick: Histogram<u64>,
    /// Frames per non-empty RX batch.
    pub rx_batch: Histogram<u64>,
    /// Replied packets that carried no XDP timestamp (only `service` was recorded for them).
    pub unstamped: u64,
}

impl LatencySet {
    /// Empty histograms tracking 1 ns ..= `highest_ns` at [`SIGNIFICANT_DIGITS`].
    pub fn new(highest_ns: u64) -> LatencySet {
        let ns = || {
            let mut h = Histogram::new_with_bounds(1, highest_ns.max(2), SIGNIFICANT_DIGITS)
                .expect("bounds checked by config validation");
            h.auto(false);
            h
        };
        let mut rx_batch = Histogram::new_with_bounds(1, MAX_BATCH, SIGNIFICANT_DIGITS).expect("static bounds");
        rx_batch.auto(false);
        LatencySet {
            ring_dwell: ns(),
            service: ns(),
            total: ns(),
            nic_to_hook: ns(),
            tx_kick: ns(),
            rx_batch,
            unstamped: 0,
        }
    }

    /// Records one replied packet, with the XDP program's stamp if it carried one.
    #[inline]
    pub fn record_packet(&mut self, stamp: Option<Stamp>, picked_ns: u64, queued_ns: u64) {
        let service = queued_ns.saturating_sub(picked_ns);
        self.service.saturating_record(service);
        if let Some(nic) = stamp.and_then(|s| s.nic_to_hook_ns) {
            self.nic_to_hook.saturating_record(nic);
        }
        match stamp.map(|s| s.hook_ns) {
            Some(hook) if hook <= picked_ns => {
                let dwell = picked_ns - hook;
                self.ring_dwell.saturating_record(dwell);
                self.total.saturating_record(dwell + service);
            }
            _ => self.unstamped += 1,
        }
    }

    /// Records how long one batch's TX kick took (only batches that needed a system call).
    #[inline]
    pub fn record_kick(&mut self, ns: u64) {
        self.tx_kick.saturating_record(ns);
    }

    /// The per-packet stages and the kick, named by [`STAGE_NAMES`].
    pub fn stages(&self) -> [(&'static str, &Histogram<u64>); 4] {
        let [total, dwell, service, kick] = STAGE_NAMES;
        [(total, &self.total), (dwell, &self.ring_dwell), (service, &self.service), (kick, &self.tx_kick)]
    }

    /// Records the size of one non-empty RX batch.
    #[inline]
    pub fn record_batch(&mut self, frames: usize) {
        self.rx_batch.saturating_record(frames as u64);
    }

    /// Adds `other` into `self`. Both must come from [`LatencySet::new`] with the same range.
    pub fn add(&mut self, other: &LatencySet) {
        // Same bounds on both sides, so `add` cannot fail; a failure would only drop the interval.
        let _ = self.ring_dwell.add(&other.ring_dwell);
        let _ = self.service.add(&other.service);
        let _ = self.total.add(&other.total);
        let _ = self.nic_to_hook.add(&other.nic_to_hook);
        let _ = self.tx_kick.add(&other.tx_kick);
        let _ = self.rx_batch.add(&other.rx_batch);
        self.unstamped += other.unstamped;
    }

    /// Empties every histogram, keeping their memory.
    pub fn reset(&mut self) {
        self.ring_dwell.reset();
        self.service.reset();
        self.total.reset();
        self.nic_to_hook.reset();
        self.tx_kick.reset();
        self.rx_batch.reset();
        self.unstamped = 0;
    }
}

/// The worker's side of the histogram hand-off.
#[derive(Debug)]
pub struct WorkerLatency {
    /// The set being recorded into.
    pub current: LatencySet,
    /// Full sets go to the reporter here.
    pub full: crossbeam_channel::Sender<LatencySet>,
    /// Empty sets come back here.
    pub empty: crossbeam_channel::Receiver<LatencySet>,
    /// Interval between swaps, in ns.
    pub interval_ns: u64,
    /// Monotonic time of the next swap, in ns.
    pub next_swap_ns: u64,
}

/// The reporter's side of one worker's hand-off.
#[derive(Debug)]
pub struct ReporterLatency {
    /// Full sets arrive here.
    pub full: crossbeam_channel::Receiver<LatencySet>,
    /// Empty sets go back here.
    pub empty: crossbeam_channel::Sender<LatencySet>,
}

/// Sets up the hand-off for one worker with `spares` empty sets waiting, all allocated now.
pub fn hand_off(highest_ns: u64, interval_ns: u64, spares: usize) -> (WorkerLatency, ReporterLatency) {
    let (full_tx, full_rx) = crossbeam_channel::bounded(spares + 1);
    let (empty_tx, empty_rx) = crossbeam_channel::bounded(spares + 1);
    for _ in 0..spares {
        let _ = empty_tx.send(LatencySet::new(highest_ns));
    }
    (
        WorkerLatency {
            current: LatencySet::new(highest_ns),
            full: full_tx,
            empty: empty_rx,
            interval_ns,
            next_swap_ns: 0,
        },
        ReporterLatency { full: full_rx, empty: empty_tx },
    )
}

impl WorkerLatency {
    /// Swaps in an empty set and sends the full one on, if the interval has passed and an empty set is
    /// waiting. Never blocks or allocates: with no empty set, recording continues into the current one.
    #[inline]
    pub fn maybe_swap(&mut self, now_ns: u64) {
        if now_ns < self.next_swap_ns {
            return;
        }
        if let Ok(mut fresh) = self.empty.try_recv() {
            std::mem::swap(&mut self.current, &mut fresh);
            if let Err(
                crossbeam_channel::TrySendError::Full(back) | crossbeam_channel::TrySendError::Disconnected(back),
            ) = self.full.try_send(fresh)
            {
                // The reporter is behind or gone: fold the interval back in rather than lose it.
                self.current.add(&back);
            }
        }
        self.next_swap_ns = now_ns + self.interval_ns;
    }

    /// Sends whatever was recorded since the last swap (at stop). It waits up to [`FLUSH_WAIT`] for the
    /// reporter to hand an empty set back, so that the worker does not allocate one even when it stops (only
    /// if none comes, the reporter being gone, is one made), and up to as long for room to send the last one.
    pub fn flush(&mut self) {
        let fresh = self.empty.recv_timeout(FLUSH_WAIT).unwrap_or_else(|_| {
            let mut empty = self.current.clone();
            empty.reset();
            empty
        });
        let done = std::mem::replace(&mut self.current, fresh);
        // Waits, like the receive above, for room: a reporter that is behind (a busy machine) would otherwise
        // lose the last interval. Only a reporter that is gone loses it.
        let _ = self.full.send_timeout(done, FLUSH_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(hook_ns: u64) -> Stamp {
        Stamp { hook_ns, nic_to_hook_ns: None }
    }

    #[test]
    fn hardware_stamps_feed_nic_to_hook() {
        let mut s = LatencySet::new(1_000_000);
        s.record_packet(Some(Stamp { hook_ns: 10, nic_to_hook_ns: Some(700) }), 20, 30);
        assert_eq!(s.nic_to_hook.len(), 1);
        assert_eq!(s.total.len(), 1);
    }

    #[test]
    fn records_dwell_service_and_total() {
        let mut s = LatencySet::new(1_000_000_000);
        s.record_packet(Some(stamp(1_000)), 1_500, 1_800);
        s.record_packet(None, 2_000, 2_100);
        assert_eq!(s.ring_dwell.len(), 1);
        assert!(s.ring_dwell.equivalent(s.ring_dwell.max(), 500));
        assert_eq!(s.service.len(), 2);
        assert_eq!(s.total.len(), 1);
        assert!(s.total.equivalent(s.total.max(), 800));
        assert_eq!(s.unstamped, 1);
    }

    #[test]
    fn a_stamp_from_the_future_is_not_a_latency() {
        let mut s = LatencySet::new(1_000_000);
        s.record_packet(Some(stamp(5_000)), 1_000, 1_100);
        assert_eq!(s.total.len(), 0);
        assert_eq!(s.unstamped, 1);
    }

    #[test]
    fn values_beyond_range_saturate_instead_of_growing() {
        let mut s = LatencySet::new(1_000_000);
        s.record_packet(Some(stamp(0)), 5_000_000_000, 5_000_000_001);
        assert_eq!(s.total.len(), 1);
        assert!(s.total.max() >= 1_000_000);
    }

    #[test]
    fn swap_hands_full_sets_over_and_keeps_recording_without_spares() {
        let (mut w, r) = hand_off(1_000_000, 100, 1);
        w.current.record_packet(Some(stamp(10)), 20, 30);
        w.maybe_swap(0);
        let full = r.full.try_recv().expect("swapped");
        assert_eq!(full.total.len(), 1);
        assert_eq!(w.current.total.len(), 0);
        // No spare waiting: the next swap is skipped and recording goes on.
        w.current.record_packet(Some(stamp(10)), 20, 30);
        w.maybe_swap(1_000);
        assert!(r.full.try_recv().is_err());
        assert_eq!(w.current.total.len(), 1);
    }

    #[test]
    fn flush_waits_for_a_reporter_that_is_behind_instead_of_losing_the_last_interval() {
        let (mut w, r) = hand_off(1_000_000, 1, 2);
        // Fill the reporter's side: it is behind and has not taken anything yet.
        for _ in 0..2 {
            w.current.record_packet(Some(stamp(10)), 20, 30);
            w.maybe_swap(u64::MAX / 2);
            w.next_swap_ns = 0;
        }
        w.current.record_packet(Some(stamp(10)), 20, 30);
        let reporter = std::thread::spawn(move || {
            // Catches up a little later, returning empty sets as it goes.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let mut total = 0;
            while let Ok(mut set) = r.full.recv_timeout(std::time::Duration::from_secs(5)) {
                total += set.total.len();
                set.reset();
                let _ = r.empty.send(set);
                if total == 3 {
                    break;
                }
            }
            total
        });
        w.flush();
        assert_eq!(reporter.join().unwrap(), 3, "every recorded packet reached the reporter");
    }

    #[test]
    fn kicks_are_kept_apart_from_packets_and_survive_add_and_reset() {
        let mut a = LatencySet::new(1_000_000);
        a.record_packet(Some(stamp(10)), 20, 30);
        a.record_kick(2_300);
        a.record_kick(2_500);
        let mut b = LatencySet::new(1_000_000);
        b.record_kick(4_000);
        b.add(&a);
        assert_eq!(b.tx_kick.len(), 3);
        assert!(b.tx_kick.equivalent(b.tx_kick.max(), 4_000), "max {}", b.tx_kick.max());
        assert_eq!(b.total.len(), 1, "a kick is not a packet");
        let (name, h) = b.stages()[1];
        assert!(name == "ring_dwell" && std::ptr::eq(h, &b.ring_dwell), "stage 1 is ring_dwell");
        let (name, h) = b.stages()[3];
        assert!(name == "tx_kick" && std::ptr::eq(h, &b.tx_kick), "stage 3 is tx_kick");
        b.reset();
        assert!(b.tx_kick.is_empty());
    }
}
