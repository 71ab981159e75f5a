//! Latency summaries for reports, logs and metrics: percentiles of the histograms the workers record
//! ([`crate::datapath::histograms::LatencySet`]), computed off the hot path.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::datapath::histograms::{LatencySet, STAGE_NAMES};

/// Count, extremes, mean and percentiles of one histogram (shared with shunt-bench's reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Smallest (0 when empty).
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// 99.99th percentile.
    pub p9999: u64,
    /// Largest.
    pub max: u64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarises `h` (all zeros when it is empty).
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    /// True when min ≤ p50 ≤ … ≤ p99.99 ≤ max, as any summary of one histogram must be.
    pub fn is_ordered(&self) -> bool {
        let v = [self.min, self.p50, self.p90, self.p99, self.p999, self.p9999, self.max];
        v.windows(2).all(|w| w[0] <= w[1])
    }
}

/// The latency part of a report: one summary per metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// XDP hook → pick-up.
    pub ring_dwell_ns: Summary,
    /// Pick-up → TX ring.
    pub service_ns: Summary,
    /// XDP hook → TX ring: the time a packet spends inside the server.
    pub total_ns: Summary,
    /// NIC hardware RX timestamp → XDP hook (empty unless the driver timestamps packets).
    pub nic_to_hook_ns: Summary,
    /// Replies on the TX ring → TX kick returned, per kicked batch.
    pub tx_kick_ns: Summary,
    /// RX batch sizes.
    pub rx_batch_size: Summary,
    /// Replies whose request carried no XDP timestamp.
    pub unstamped: u64,
}

impl LatencyReport {
    /// The per-packet stages and the kick, named by [`STAGE_NAMES`] as in [`LatencySet::stages`].
    pub fn stages(&self) -> [(&'static str, &Summary); 4] {
        let [total, dwell, service, kick] = STAGE_NAMES;
        [(total, &self.total_ns), (dwell, &self.ring_dwell_ns), (service, &self.service_ns), (kick, &self.tx_kick_ns)]
    }
}

impl LatencyReport {
    /// Summaries of every histogram in `set`.
    pub fn of(set: &LatencySet) -> LatencyReport {
        LatencyReport {
            ring_dwell_ns: Summary::of(&set.ring_dwell),
            service_ns: Summary::of(&set.service),
            total_ns: Summary::of(&set.total),
            nic_to_hook_ns: Summary::of(&set.nic_to_hook),
            tx_kick_ns: Summary::of(&set.tx_kick),
            rx_batch_size: Summary::of(&set.rx_batch),
            unstamped: set.unstamped,
        }
    }
}

/// Formats nanoseconds for people: µs with one decimal (ns below 10 µs would be noise), ms above 10 ms.
pub fn human_ns(ns: u64) -> String {
    if ns >= 10_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::meta::Stamp;

    #[test]
    fn summaries_follow_the_histograms() {
        let mut s = LatencySet::new(1_000_000_000);
        s.record_packet(Some(Stamp { hook_ns: 1_000, nic_to_hook_ns: None }), 1_500, 1_800);
        s.record_kick(2_300);
        let r = LatencyReport::of(&s);
        assert_eq!((r.total_ns.count, r.service_ns.count, r.tx_kick_ns.count), (1, 1, 1));
        assert!(s.total.equivalent(r.total_ns.p50, 800));
        assert_eq!(r.stages()[3], ("tx_kick", &r.tx_kick_ns));
        assert!(r.total_ns.is_ordered());
        assert_eq!(LatencyReport::of(&LatencySet::new(1000)).total_ns, Summary::default());
    }
}
