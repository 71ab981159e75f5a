//! Observability, off the hot path: CPU cost per packet ([`cpu`]), latency summaries ([`latency`]), the
//! reporter thread that collects the
//! workers' histograms and prints interval lines ([`reporter`]), the final report ([`report`]) and the
//! Prometheus / JSON endpoint ([`metrics`]). Everything here reads what the datapath publishes; nothing here
//! is read by it.

pub mod cpu;
pub mod latency;
pub mod metrics;
pub mod report;
pub mod reporter;

use latency::LatencyReport;

/// Latest latency figures, published by the reporter for the metrics endpoint: run totals per worker (by
/// queue) and merged.
#[derive(Debug, Clone, Default)]
pub struct LatencySnapshot {
    /// (queue, summary of the run so far).
    pub per_worker: Vec<(u32, LatencyReport)>,
    /// Merged over workers.
    pub total: LatencyReport,
    /// Sum of the total latency over the run, in ns.
    pub total_sum_ns: f64,
}
