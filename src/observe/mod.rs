//! Observability, off the hot path: CPU cost per packet ([`cpu`]), latency summaries ([`latency`]), the
//! reporter thread that collects the
//! workers' histograms and prints interval lines ([`reporter`]), the final report ([`report`]) and the
//! Prometheus / JSON endpoint ([`metrics`]). Everything here reads what the datapath publishes; nothing here
//! is read by it.

pub mod cpu;
pub mod host;
pub mod latency;
pub mod metrics;
pub mod report;
pub mod reporter;

use latency::LatencyReport;
use metrics::QueueLatency;

/// Latest latency figures, published by the reporter thread once per interval for the metrics endpoint and
/// computed there (never on a worker): run totals per worker, as summaries and histogram buckets, and the
/// summaries of all workers' histograms merged.
#[derive(Debug, Clone, Default)]
pub struct LatencySnapshot {
    /// One per watched worker, in the order the workers were started.
    pub per_worker: Vec<QueueLatency>,
    /// Merged over workers; `None` until the reporter's first interval.
    pub total: Option<LatencyReport>,
}
