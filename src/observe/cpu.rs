//! CPU cost per packet: the worker threads' own CPU time (from the kernel's per-thread accounting, read by
//! each worker as it stops) and the whole machine's busy and softirq time per core over the run (from
//! /proc/stat), each divided by the replies sent.
//!
//! Beside them, the workers' busy time (`WorkerStats::busy_ns`, DPDK's lcore busyness: turns that found work,
//! timed by the worker's own clock reads) per reply, which a spinning worker's CPU time cannot give.
//!
//! On veth, the machine's figure includes the peer's work and the XDP hook wherever they ran; on a real NIC
//! it includes the driver's NAPI polling. A spinning worker burns its core by design, so its figure measures
//! the load it was given as much as the server: compare spinning modes by latency, and work-conserving
//! ones by CPU at equal offered load.

use serde::Serialize;

use crate::sys::{self, CpuTimes};

/// One core's counters from /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CoreTicks {
    busy: u64,
    softirq: u64,
}

/// A reading of /proc/stat: per core, busy (everything but idle and iowait) and softirq ticks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemCpu {
    cores: Vec<(usize, CoreTicks)>,
}

impl SystemCpu {
    /// Reads /proc/stat now (empty if it cannot be read).
    pub fn read() -> SystemCpu {
        std::fs::read_to_string("/proc/stat").map(|t| SystemCpu::parse(&t)).unwrap_or_default()
    }

    /// Parses the text of /proc/stat.
    pub fn parse(text: &str) -> SystemCpu {
        let cores = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let cpu: usize = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
                let v: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
                let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = v[..] else { return None };
                let _ = (idle, iowait);
                Some((cpu, CoreTicks { busy: user + nice + system + irq + softirq + steal, softirq }))
            })
            .collect();
        SystemCpu { cores }
    }
}

/// CPU time of one worker thread over its run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WorkerCpu {
    /// The queue it served.
    pub queue: u32,
    /// The core it was pinned to.
    pub core: usize,
    /// Its CPU time (user and system).
    #[serde(flatten)]
    pub times: CpuTimes,
}

/// Busy and softirq time of one core over the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CoreCpu {
    /// The core.
    pub cpu: usize,
    /// Time not idle (user, nice, system, irq, softirq, steal), in ns.
    pub busy_ns: u64,
    /// Time in softirq (on veth and NICs: the receive path, XDP included), in ns.
    pub softirq_ns: u64,
}

/// The `cpu` part of a report.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// Replies the figures are divided by.
    pub packets: u64,
    /// The worker threads' CPU time, each.
    pub workers: Vec<WorkerCpu>,
    /// User + system time of all worker threads, per reply, in ns.
    pub worker_ns_per_packet: Option<f64>,
    /// User time of all worker threads, per reply, in ns.
    pub worker_user_ns_per_packet: Option<f64>,
    /// System time of all worker threads, per reply, in ns.
    pub worker_system_ns_per_packet: Option<f64>,
    /// Every core's busy and softirq time over the run.
    pub cores: Vec<CoreCpu>,
    /// Busy time of all cores, per reply, in ns (whatever ran: the server, the XDP hook, on veth the peer).
    pub system_ns_per_packet: Option<f64>,
    /// Softirq time of all cores, per reply, in ns.
    pub softirq_ns_per_packet: Option<f64>,
    /// The workers' busy time (`workers[].busy_ns`: turns that found work, empty polls and waits left out)
    /// summed, per reply, in ns: what a reply cost a worker whatever its poll mode, where a spinning worker's
    /// CPU time is its whole run. Absent without worker threads (the in-kernel server) or replies.
    pub busy_ns_per_packet: Option<f64>,
    /// How to read the figures.
    pub note: &'static str,
}

/// How to read the figures when the workers spin (poll_mode = spin, socket.io = nonblocking).
pub const SPIN_NOTE: &str = "the workers spin (poll_mode = spin or socket.io = nonblocking): a worker's CPU time is \
    its whole run, whatever the load, so worker_ns_per_packet falls as load rises; compare it between servers at \
    equal offered load, or read busy_ns_per_packet (the worker's time in turns that found work)";
/// How to read the figures when the workers sleep while there is no work.
pub const WAIT_NOTE: &str = "the workers sleep when there is no work: their CPU time follows the load; compare \
    worker_ns_per_packet between servers at equal offered load";
/// How to read the figures of the in-kernel server, which has no worker threads.
pub const IN_KERNEL_NOTE: &str = "no worker threads: replies are made in the XDP hook, in softirq, and show in \
    system_ns_per_packet and softirq_ns_per_packet";

impl CpuReport {
    /// Builds the report from the workers' times, the machine's readings at start and stop, the replies, the
    /// workers' summed busy time (`None` without worker threads), and the note on how to read them
    /// ([`SPIN_NOTE`], [`WAIT_NOTE`] or [`IN_KERNEL_NOTE`]).
    pub fn new(
        workers: Vec<WorkerCpu>,
        start: &SystemCpu,
        stop: &SystemCpu,
        packets: u64,
        busy_ns: Option<u64>,
        note: &'static str,
    ) -> CpuReport {
        let tick_ns = 1_000_000_000 / sys::clock_ticks_per_second().max(1);
        let cores: Vec<CoreCpu> = stop
            .cores
            .iter()
            .filter_map(|(cpu, end)| {
                let (_, begin) = start.cores.iter().find(|(c, _)| c == cpu)?;
                Some(CoreCpu {
                    cpu: *cpu,
                    busy_ns: end.busy.saturating_sub(begin.busy) * tick_ns,
                    softirq_ns: end.softirq.saturating_sub(begin.softirq) * tick_ns,
                })
            })
            .collect();
        let per = |total: u64| (packets > 0).then(|| total as f64 / packets as f64);
        let user: u64 = workers.iter().map(|w| w.times.user_ns).sum();
        let system: u64 = workers.iter().map(|w| w.times.system_ns).sum();
        CpuReport {
            packets,
            worker_ns_per_packet: per(user + system),
            worker_user_ns_per_packet: per(user),
            worker_system_ns_per_packet: per(system),
            system_ns_per_packet: per(cores.iter().map(|c| c.busy_ns).sum()),
            softirq_ns_per_packet: per(cores.iter().map(|c| c.softirq_ns).sum()),
            busy_ns_per_packet: busy_ns.and_then(per),
            workers,
            cores,
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  10 0 10 100 0 0 5 0 0 0\ncpu0 4 1 3 50 2 1 2 0 0 0\ncpu1 6 0 7 50 0 0 3 0 0 0\nintr 1 2\n";

    #[test]
    fn parses_per_core_busy_and_softirq() {
        let s = SystemCpu::parse(STAT);
        assert_eq!(s.cores, vec![(0, CoreTicks { busy: 11, softirq: 2 }), (1, CoreTicks { busy: 16, softirq: 3 })]);
    }

    #[test]
    fn divides_deltas_by_packets() {
        let start = SystemCpu::parse(STAT);
        let stop = SystemCpu::parse("cpu0 14 1 3 50 2 1 2 0 0 0\ncpu1 6 0 7 50 0 0 13 0 0 0\n");
        let tick = 1_000_000_000 / sys::clock_ticks_per_second();
        let w = WorkerCpu { queue: 0, core: 1, times: CpuTimes { user_ns: 3_000, system_ns: 1_000 } };
        let r = CpuReport::new(vec![w], &start, &stop, 100, Some(2_500), SPIN_NOTE);
        assert_eq!(r.worker_ns_per_packet, Some(40.0));
        assert_eq!(r.worker_system_ns_per_packet, Some(10.0));
        assert_eq!(r.system_ns_per_packet, Some((20 * tick) as f64 / 100.0));
        assert_eq!(r.softirq_ns_per_packet, Some((10 * tick) as f64 / 100.0));
        assert_eq!(r.busy_ns_per_packet, Some(25.0));
        let none = CpuReport::new(vec![], &start, &stop, 0, Some(0), SPIN_NOTE);
        assert_eq!((none.worker_ns_per_packet, none.busy_ns_per_packet), (None, None));
        assert_eq!(CpuReport::new(vec![], &start, &stop, 10, None, IN_KERNEL_NOTE).busy_ns_per_packet, None);
    }
}
