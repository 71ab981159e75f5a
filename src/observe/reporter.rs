//! The reporter thread: collects the workers' interval histograms, prints one line per interval, writes the
//! HdrHistogram interval log, keeps run totals and publishes the latest figures for the metrics endpoint.
//! It runs on whatever core the scheduler picks outside the workers' cores, never on the hot path.

use std::{
    fs::File,
    io::{BufWriter, Write},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use hdrhistogram::serialization::{interval_log, V2DeflateSerializer};

use super::{
    latency::{human_ns, LatencyReport},
    metrics::QueueLatency,
    LatencySnapshot,
};
use crate::datapath::{
    counters::{busy_fraction, WorkerShared, WorkerStats},
    histograms::{LatencySet, ReporterLatency},
};

/// What the reporter watches for one worker.
#[derive(Debug)]
pub struct WatchedWorker {
    /// The worker's queue.
    pub queue: u32,
    /// Its published counters.
    pub shared: Arc<WorkerShared>,
    /// Its histogram hand-off.
    pub latency: ReporterLatency,
}

/// How the reporter runs.
#[derive(Debug, Clone)]
pub struct ReporterOptions {
    /// Interval between lines.
    pub interval: Duration,
    /// Print the periodic lines (on stdout).
    pub print: bool,
    /// Write an HdrHistogram interval log here.
    pub hdr_log: Option<String>,
    /// The histograms' range.
    pub highest_ns: u64,
    /// Packets carry no XDP-hook stamp on this host: the lines give `service` and say that `ring_dwell` and
    /// `total` are not measured.
    pub service_only: bool,
}

/// The reporter's result: run-total histograms per worker, in the order given.
#[derive(Debug)]
pub struct ReporterExit {
    /// One per watched worker.
    pub per_worker: Vec<LatencySet>,
    /// Set when the interval log could not be written.
    pub hdr_log_error: Option<String>,
}

/// Spawns the reporter. It stops when `finish` is set, after taking what the workers flushed.
pub fn spawn(
    workers: Vec<WatchedWorker>,
    options: ReporterOptions,
    finish: Arc<AtomicBool>,
    snapshot: Arc<Mutex<LatencySnapshot>>,
) -> std::io::Result<std::thread::JoinHandle<ReporterExit>> {
    let log_file = match &options.hdr_log {
        Some(path) => Some(File::create(path)?),
        None => None,
    };
    std::thread::Builder::new()
        .name("shunt-reporter".into())
        .spawn(move || run(workers, options, finish, snapshot, log_file))
}

fn run(
    workers: Vec<WatchedWorker>,
    options: ReporterOptions,
    finish: Arc<AtomicBool>,
    snapshot: Arc<Mutex<LatencySnapshot>>,
    log_file: Option<File>,
) -> ReporterExit {
    let started = Instant::now();
    let start_time = SystemTime::now();
    let mut totals: Vec<LatencySet> = workers.iter().map(|_| LatencySet::new(options.highest_ns)).collect();
    let mut interval = LatencySet::new(options.highest_ns);
    let mut last_stats: Vec<WorkerStats> = vec![WorkerStats::default(); workers.len()];
    let mut last_tick = started;

    let mut file = log_file.map(BufWriter::new);
    let mut serializer = V2DeflateSerializer::new();
    let mut hdr_log_error = None;
    let mut log = match file.as_mut() {
        Some(f) => interval_log::IntervalLogWriterBuilder::new()
            .add_comment("shunt in-server latency (ns): tags total, ring_dwell, service, tx_kick")
            .with_start_time(start_time)
            .with_base_time(start_time)
            .with_max_value_divisor(1_000_000.0)
            .begin_log_with(f, &mut serializer)
            .map_err(|e| hdr_log_error = Some(e.to_string()))
            .ok(),
        None => None,
    };

    loop {
        let finishing = finish.load(Relaxed);
        if !finishing {
            std::thread::sleep(Duration::from_millis(10).min(options.interval));
            if last_tick.elapsed() < options.interval {
                continue;
            }
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last_tick);
        interval.reset();
        for (i, w) in workers.iter().enumerate() {
            while let Ok(mut set) = w.latency.full.try_recv() {
                interval.add(&set);
                totals[i].add(&set);
                set.reset();
                let _ = w.latency.empty.try_send(set);
            }
        }
        let stats: Vec<WorkerStats> = workers.iter().map(|w| w.shared.stats.snapshot()).collect();
        if options.print && !interval_is_empty(&stats, &last_stats, &interval) {
            println!(
                "{}",
                interval_line(
                    now.duration_since(started),
                    elapsed,
                    &stats,
                    &last_stats,
                    &interval,
                    options.service_only
                )
            );
        }
        if let Some(log) = log.as_mut() {
            let start = last_tick.duration_since(started);
            for (tag, h) in interval.stages() {
                let tag = interval_log::Tag::new(tag);
                if let Err(e) = log.write_histogram(h, start, elapsed, tag) {
                    hdr_log_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        publish(&workers, &totals, &snapshot);
        last_stats = stats;
        last_tick = now;
        if finishing {
            break;
        }
    }
    drop(log);
    if let Some(mut f) = file {
        if let Err(e) = f.flush() {
            hdr_log_error.get_or_insert_with(|| e.to_string());
        }
    }
    ReporterExit { per_worker: totals, hdr_log_error }
}

fn interval_is_empty(stats: &[WorkerStats], last: &[WorkerStats], interval: &LatencySet) -> bool {
    interval.service.is_empty() && stats.iter().zip(last).all(|(s, l)| s.rx_packets == l.rx_packets)
}

fn publish(workers: &[WatchedWorker], totals: &[LatencySet], snapshot: &Mutex<LatencySnapshot>) {
    // Summaries and buckets are computed here, before taking the lock, so a scrape never waits on them.
    let per_worker: Vec<QueueLatency> = workers.iter().zip(totals).map(|(w, t)| QueueLatency::of(w.queue, t)).collect();
    let mut merged = LatencySet::new(totals.first().map(|t| t.total.high()).unwrap_or(1_000_000_000));
    for t in totals {
        merged.add(t);
    }
    let published = LatencySnapshot { per_worker, total: Some(LatencyReport::of(&merged)) };
    if let Ok(mut s) = snapshot.lock() {
        *s = published;
    }
}

fn interval_line(
    at: Duration,
    elapsed: Duration,
    stats: &[WorkerStats],
    last: &[WorkerStats],
    interval: &LatencySet,
    service_only: bool,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let delta =
        |f: fn(&WorkerStats) -> u64| -> u64 { stats.iter().zip(last).map(|(s, l)| f(s).saturating_sub(f(l))).sum() };
    let rx = delta(|s| s.rx_packets);
    let tx = delta(|s| s.tx_packets);
    let drops = delta(|s| super::metrics::drop_reasons(s).iter().map(|(_, n)| n).sum());
    let t = &interval.total;
    let s = &interval.service;
    let latency = if service_only {
        if s.is_empty() {
            "service: no replies (ring_dwell/total not measured on this host)".to_string()
        } else {
            format!(
                "service p50 {} p99 {} max {} (ring_dwell/total not measured on this host: no XDP stamp)",
                human_ns(s.value_at_quantile(0.5)),
                human_ns(s.value_at_quantile(0.99)),
                human_ns(s.max())
            )
        }
    } else if t.is_empty() {
        "latency: no stamped packets".to_string()
    } else {
        format!(
            "in-server latency p50 {} p99 {} p99.9 {} max {}",
            human_ns(t.value_at_quantile(0.5)),
            human_ns(t.value_at_quantile(0.99)),
            human_ns(t.value_at_quantile(0.999)),
            human_ns(t.max())
        )
    };
    format!(
        "[{:>7.1}s] rx {:>9.0} pps  tx {:>9.0} pps  drops {:>6}  {}  {}",
        at.as_secs_f64(),
        rx as f64 / secs,
        tx as f64 / secs,
        drops,
        busy(elapsed, stats, last),
        latency
    )
}

/// The workers' busyness over the interval: busy time (turns that found work) over the interval's wall time,
/// averaged over the workers (so 100 % is every worker core busy all the time), with the busiest worker's
/// when there are several: `busy 12.3%` or `busy 12.3% (max 20.1%)`.
fn busy(elapsed: Duration, stats: &[WorkerStats], last: &[WorkerStats]) -> String {
    let wall_ns = elapsed.as_nanos() as u64;
    let fractions =
        stats.iter().zip(last).filter_map(|(s, l)| busy_fraction(s.busy_ns.saturating_sub(l.busy_ns), wall_ns));
    let (sum, max, n) = fractions.fold((0.0, 0.0f64, 0usize), |(sum, max, n), f| (sum + f, max.max(f), n + 1));
    match n {
        0 => "busy -".to_string(),
        1 => format!("busy {:.1}%", 100.0 * sum),
        _ => format!("busy {:.1}% (max {:.1}%)", 100.0 * sum / n as f64, 100.0 * max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::meta::Stamp;

    #[test]
    fn the_interval_line_says_when_only_service_is_measured() {
        let stats = [WorkerStats { rx_packets: 10, tx_packets: 10, ..WorkerStats::default() }];
        let last = [WorkerStats::default()];
        let mut unstamped = LatencySet::new(1_000_000_000);
        unstamped.record_packet(None, 1_000, 1_400);
        let line = interval_line(Duration::from_secs(1), Duration::from_secs(1), &stats, &last, &unstamped, true);
        assert!(line.contains("service p50 0.4us") && line.contains("not measured on this host"), "{line}");
        let mut stamped = LatencySet::new(1_000_000_000);
        stamped.record_packet(Some(Stamp { hook_ns: 500, nic_to_hook_ns: None }), 1_000, 1_400);
        let line = interval_line(Duration::from_secs(1), Duration::from_secs(1), &stats, &last, &stamped, false);
        assert!(line.contains("in-server latency p50 0.9us") && !line.contains("not measured"), "{line}");
    }

    #[test]
    fn the_interval_line_gives_the_busy_share_of_the_interval() {
        let at = Duration::from_secs(3);
        let second = Duration::from_secs(1);
        let stats = [WorkerStats { rx_packets: 10, busy_ns: 1_123_000_000, ..WorkerStats::default() }];
        let last = [WorkerStats { busy_ns: 1_000_000_000, ..WorkerStats::default() }];
        let empty = LatencySet::new(1_000_000_000);
        let line = interval_line(at, second, &stats, &last, &empty, false);
        assert!(line.contains("busy 12.3%"), "{line}");
        let two = [stats[0], WorkerStats { busy_ns: 201_000_000, ..WorkerStats::default() }];
        let line = interval_line(at, second, &two, &[last[0], WorkerStats::default()], &empty, false);
        assert!(line.contains("busy 16.2% (max 20.1%)"), "{line}");
        assert!(interval_line(at, Duration::ZERO, &stats, &last, &empty, false).contains("busy -"));
    }
}
