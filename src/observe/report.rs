//! The final report: totals, the XDP program's counters and one row per worker, as text and as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    cpu::CpuReport,
    host::HostReport,
    latency::{human_ns, LatencyReport, Summary},
};
use crate::{
    datapath::{
        afxdp::BindMode,
        counters::{FrameAccount, KernelSocketStats, WorkerStats},
    },
    in_kernel::InKernelCounters,
    steer::{AttachMode, XdpCounters},
    sys::CpuTimes,
};

/// One worker's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerReport {
    /// The NIC queue it served.
    pub queue: u32,
    /// The core it was pinned to.
    pub core: usize,
    /// `zerocopy` or `copy` (absent for kernel sockets).
    pub bind_mode: Option<BindMode>,
    /// Its counters.
    #[serde(flatten)]
    pub stats: WorkerStats,
    /// Times the kernel found the fill ring empty (from the socket's kernel statistics).
    pub fill_ring_empty: u64,
    /// The socket's kernel statistics.
    pub kernel: KernelSocketStats,
    /// Where the UMEM's frames were at stop (absent if the worker did not stop cleanly).
    pub frames: Option<FrameAccount>,
    /// The worker thread's CPU time (absent if the worker did not stop cleanly).
    #[serde(skip)]
    pub cpu: Option<CpuTimes>,
    /// In-server latency over the run (absent when measurement is off).
    pub latency: Option<LatencyReport>,
    /// The panic message of a worker that died (absent when it ran until stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub died: Option<String>,
}

/// The report printed when the server stops and written with `--report FILE`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The interface served.
    pub interface: String,
    /// The handler's name.
    pub handler: &'static str,
    /// The datapath: `afxdp` or `socket`.
    pub mode: &'static str,
    /// The kernel-socket I/O model (`mode = "socket"`), or the AF_XDP workers' poll mode.
    pub io: &'static str,
    /// Served UDP ports.
    pub ports: Vec<u16>,
    /// How the XDP program was attached.
    pub attach_mode: AttachMode,
    /// Seconds between the start of serving and the stop.
    pub duration_secs: f64,
    /// Frames received by all workers.
    pub rx_packets: u64,
    /// Replies transmitted by all workers.
    pub tx_packets: u64,
    /// The XDP program's counters.
    pub xdp: XdpCounters,
    /// The in-kernel server's counters (`mode = "in-kernel"`).
    pub in_kernel: Option<InKernelCounters>,
    /// UMEM frames in no ring and not in the free pool at stop, over all workers (must be 0); absent when a
    /// worker did not stop cleanly.
    pub frames_lost: Option<i64>,
    /// In-server latency (XDP hook → TX ring) over all workers, in ns; all zero when measurement is off.
    pub latency_ns: Summary,
    /// Every latency metric over all workers (absent when measurement is off).
    pub latency: Option<LatencyReport>,
    /// Which clocks the latency figures come from.
    pub latency_clock: String,
    /// CPU cost: the worker threads' time and the machine's, per reply.
    pub cpu: CpuReport,
    /// Per worker.
    pub workers: Vec<WorkerReport>,
    /// What the host offered and what the run chose from it.
    pub host: Option<HostReport>,
}

impl Report {
    /// Builds a report, computing the totals from the workers.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        interface: String,
        handler: &'static str,
        ports: Vec<u16>,
        attach_mode: AttachMode,
        duration_secs: f64,
        xdp: XdpCounters,
        workers: Vec<WorkerReport>,
        latency: Option<LatencyReport>,
        latency_clock: String,
        cpu: CpuReport,
    ) -> Report {
        let rx_packets = workers.iter().map(|w| w.stats.rx_packets).sum();
        let tx_packets = workers.iter().map(|w| w.stats.tx_packets).sum();
        let frames_lost = workers.iter().map(|w| w.frames.map(|f| f.frames_lost)).sum();
        Report {
            interface,
            handler,
            mode: "afxdp",
            io: "spin",
            ports,
            attach_mode,
            duration_secs,
            rx_packets,
            tx_packets,
            frames_lost,
            in_kernel: None,
            xdp,
            latency_ns: latency.map(|l| l.total_ns).unwrap_or_default(),
            latency,
            latency_clock,
            cpu,
            workers,
            host: None,
        }
    }

    /// The report as a human-readable table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let secs = self.duration_secs.max(1e-9);
        let _ = writeln!(
            out,
            "shunt report: {} handler on {} ports {:?}, {} datapath ({}), {:.1} s",
            self.handler, self.interface, self.ports, self.mode, self.io, self.duration_secs
        );
        let _ = writeln!(
            out,
            "  total: rx {} tx {} ({:.0} rx pps average)",
            self.rx_packets,
            self.tx_packets,
            self.rx_packets as f64 / secs
        );
        let x = &self.xdp;
        let _ = writeln!(
            out,
            "  xdp:   redirected {} passed {} malformed {} no_socket {} filtered {} rate_limited {} stamp_failed {} \
             other_address {}",
            x.redirected,
            x.passed,
            x.malformed,
            x.no_socket,
            x.filtered,
            x.rate_limited,
            x.stamp_failed,
            x.other_address
        );
        if let Some(c) = self.host.as_ref().map(|h| &h.choices) {
            let kernel = self.host.as_ref().map_or("", |h| h.kernel.as_str());
            let _ = writeln!(out, "  host:  kernel {kernel}; {}", c.summary());
            if let Some(r) = &c.stamp_reason {
                let _ = writeln!(out, "         stamp: {r}");
            }
        }
        let _ = writeln!(
            out,
            "  {:>5} {:>4} {:>8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
            "queue",
            "core",
            "mode",
            "rx",
            "tx",
            "malformed",
            "bad_csum",
            "handler",
            "tx_full",
            "fill_empty",
            "tx_kicks",
            "avg_batch"
        );
        for w in &self.workers {
            let s = &w.stats;
            let mode = w.bind_mode.map_or("socket", BindMode::name);
            let _ = writeln!(
                out,
                "  {:>5} {:>4} {:>8} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10.2}",
                w.queue,
                w.core,
                mode,
                s.rx_packets,
                s.tx_packets,
                s.dropped_malformed,
                s.dropped_bad_checksum,
                s.dropped_by_handler,
                s.tx_ring_full,
                w.fill_ring_empty,
                s.tx_kicks,
                s.rx_packets as f64 / s.rx_batches.max(1) as f64
            );
        }
        for w in &self.workers {
            let errors = w.stats.errors();
            if errors.iter().any(|&(_, n)| n > 0) {
                let listed: Vec<String> = errors.iter().map(|(name, n)| format!("{name} {n}")).collect();
                let _ = writeln!(out, "  queue {} failed calls: {}", w.queue, listed.join(" "));
            }
        }
        for w in self.workers.iter().filter(|w| w.died.is_some()) {
            let _ = writeln!(out, "  queue {} worker DIED: {}", w.queue, w.died.as_deref().unwrap_or(""));
        }
        let c = &self.cpu;
        let ns = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "  cpu per reply: workers {} ns (user {} + system {}, busy {}), all cores {} ns (softirq {}) over {} \
             replies",
            ns(c.worker_ns_per_packet),
            ns(c.worker_user_ns_per_packet),
            ns(c.worker_system_ns_per_packet),
            ns(c.busy_ns_per_packet),
            ns(c.system_ns_per_packet),
            ns(c.softirq_ns_per_packet),
            c.packets
        );
        let _ = writeln!(out, "    ({})", c.note);
        for w in &self.workers {
            match &w.frames {
                Some(f) => {
                    let _ = writeln!(
                        out,
                        "  queue {} frames at stop: {} = free {} + fill {} + rx {} + tx {} + completion {}; lost {}",
                        w.queue, f.total, f.free, f.fill_ring, f.rx_ring, f.tx_ring, f.completion_ring, f.frames_lost
                    );
                }
                // Kernel sockets have no UMEM; an AF_XDP worker without an account did not stop cleanly.
                None if w.bind_mode.is_some() => {
                    let _ =
                        writeln!(out, "  queue {} frames at stop: unknown (the worker did not stop cleanly)", w.queue);
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  queue {} sockets: {} datagrams dropped by the kernel (receive buffer full); {} receives \
                         found nothing; {} io_uring receives had no buffer",
                        w.queue, w.kernel.rx_dropped, w.stats.empty_receives, w.stats.rx_no_buffer
                    );
                }
            }
        }
        if let Some(total) = &self.latency {
            let _ = writeln!(out, "  in-server latency ({})", self.latency_clock);
            let _ = writeln!(
                out,
                "  {:>7} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "queue", "stage", "count", "min", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean"
            );
            let rows = self.workers.iter().filter_map(|w| w.latency.as_ref().map(|l| (w.queue.to_string(), l)));
            for (queue, l) in rows.chain(std::iter::once(("all".to_string(), total))) {
                for (stage, s) in l.stages() {
                    let _ = writeln!(
                        out,
                        "  {:>7} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        queue,
                        stage,
                        s.count,
                        human_ns(s.min),
                        human_ns(s.p50),
                        human_ns(s.p90),
                        human_ns(s.p99),
                        human_ns(s.p999),
                        human_ns(s.p9999),
                        human_ns(s.max),
                        human_ns(s.mean as u64)
                    );
                }
            }
            let n = &total.nic_to_hook_ns;
            if n.count > 0 {
                let _ = writeln!(
                    out,
                    "  nic_to_hook (hardware RX timestamp -> XDP hook): count {} p50 {} p99 {} max {}",
                    n.count,
                    human_ns(n.p50),
                    human_ns(n.p99),
                    human_ns(n.max)
                );
            }
            let b = &total.rx_batch_size;
            let _ = writeln!(
                out,
                "  rx batch size: mean {:.2} p50 {} p99 {} max {}; replies without a receive stamp: {}",
                b.mean, b.p50, b.p99, b.max, total.unstamped
            );
        }
        out
    }
}
