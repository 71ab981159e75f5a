//! The metrics endpoint, one HTTP thread serving two views of the same figures:
//!
//! - `GET /metrics`: the OpenMetrics text format (prometheus-client's encoder), per-queue counters only
//!   (summing over `queue` gives the server's total; there is no pre-aggregated series to double-count), and
//!   the in-server latency as a histogram `shunt_latency_seconds{queue,stage}` with the fixed buckets
//!   [`LATENCY_BUCKETS_NS`], its `_sum` the sum of the recorded samples, and each worker's busy time (turns
//!   that found work) as the counter `shunt_worker_busy_seconds_total{queue}`;
//! - `GET /stats.json`: a [`StatsSnapshot`], the structured counters and latency summaries that `shunt stats`
//!   reads (it deserializes this very type);
//! - `GET /ready`: the readiness probe, `200 ready` while the server serves with every worker running, `503`
//!   naming what is wrong as soon as a worker has died (or the server has begun to stop). `/metrics` carries
//!   the same as the gauges `shunt_ready` and `shunt_worker_up{queue}`.
//!
//! Every request reads what is already published: the workers' atomics, the XDP counters map (through its
//! own fd) and the reporter's latest [`LatencySnapshot`] (histograms turned into buckets and summaries on the
//! reporter thread). Nothing here touches a worker.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use serde::{Deserialize, Serialize};

use super::{latency::LatencyReport, LatencySnapshot};
use crate::{
    datapath::counters::{KernelSocketStats, WorkerShared, WorkerStats},
    steer::{XdpCounters, XdpCountersReader},
};

/// Content type of `/metrics`.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `/stats.json`.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// Upper bounds, in ns, of the latency histogram's buckets (a last `+Inf` bucket follows): 100 ns to 1 s in
/// 1-2.5-5 steps, three per decade. In-server latency sits around a microsecond (p50 ≈ 0.7 µs in the lab),
/// the TX kick at a few µs, and a stall shows up in the ms; the sub-µs buckets keep the common case apart.
pub const LATENCY_BUCKETS_NS: [u64; 22] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
];

/// One histogram turned into the endpoint's buckets, on the reporter thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyBuckets {
    /// Samples per bucket, not cumulative: `counts[i]` for `i < LATENCY_BUCKETS_NS.len()` holds the samples
    /// above the previous bound and at most `LATENCY_BUCKETS_NS[i]`; the last one those above every bound.
    /// A sample is placed by its HdrHistogram bucket's highest equivalent value, the value the percentiles
    /// report, so one within the histogram's resolution (0.1 %) of a bound may land on its upper side.
    pub counts: [u64; LATENCY_BUCKETS_NS.len() + 1],
    /// Samples in all (the sum of `counts`).
    pub count: u64,
    /// Sum of the samples in ns, each taken at the middle of its HdrHistogram bucket: within the histogram's
    /// resolution of the true sum (exact below 2,048 ns, where its buckets are 1 ns wide), and not an
    /// estimate from the mean. Samples beyond `latency.highest_ns` were saturated there when recorded.
    pub sum_ns: u64,
}

impl LatencyBuckets {
    /// Buckets, count and sum of every sample recorded in `h`.
    pub fn of(h: &Histogram<u64>) -> LatencyBuckets {
        let mut b = LatencyBuckets::default();
        for v in h.iter_recorded() {
            let n = v.count_at_value();
            let value = v.value_iterated_to();
            let slot = LATENCY_BUCKETS_NS.iter().position(|&bound| value <= bound).unwrap_or(LATENCY_BUCKETS_NS.len());
            if let Some(c) = b.counts.get_mut(slot) {
                *c += n;
            }
            b.count += n;
            b.sum_ns = b.sum_ns.saturating_add(h.median_equivalent(value).saturating_mul(n));
        }
        b
    }

    /// Cumulative counts per bound, in seconds, `+Inf` last: what `_bucket{le=...}` shows.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        let bounds = LATENCY_BUCKETS_NS.iter().map(|&ns| ns as f64 / 1e9).chain(std::iter::once(f64::INFINITY));
        bounds
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

/// One worker's latency since start, as the reporter publishes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLatency {
    /// The worker's queue.
    pub queue: u32,
    /// Percentile summaries of every histogram.
    pub report: LatencyReport,
    /// Buckets of each stage, named and ordered as [`STAGE_NAMES`](crate::datapath::histograms::STAGE_NAMES).
    pub stages: [(&'static str, LatencyBuckets); 4],
}

impl QueueLatency {
    /// Summaries and buckets of one worker's run-total histograms (call it off the hot path).
    pub fn of(queue: u32, set: &crate::datapath::histograms::LatencySet) -> QueueLatency {
        QueueLatency {
            queue,
            report: LatencyReport::of(set),
            stages: set.stages().map(|(name, h)| (name, LatencyBuckets::of(h))),
        }
    }
}

/// `GET /stats.json`: the endpoint's figures as one JSON document, deserialized by `shunt stats`. Counters
/// are totals since start; a client computes rates from two snapshots, dividing the counters' difference by
/// the difference of their `uptime_ns`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Nanoseconds between the start of serving and this snapshot, on the monotonic clock.
    pub uptime_ns: u64,
    /// The XDP program's counters (null when its map could not be read).
    pub xdp: Option<XdpCounters>,
    /// One per worker, in the order of `workers.queues`.
    pub workers: Vec<WorkerSnapshot>,
    /// In-server latency since start over all workers (their histograms merged), as of the reporter's last
    /// interval; null when measurement is off or before the first interval.
    pub latency: Option<LatencyReport>,
}

/// One worker in a [`StatsSnapshot`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// The NIC queue it serves.
    pub queue: u32,
    /// Its counters.
    pub stats: WorkerStats,
    /// Its socket's kernel statistics (refreshed by the worker about once a second).
    pub kernel: KernelSocketStats,
    /// Its in-server latency since start, as of the reporter's last interval; null when measurement is off
    /// or before the first interval.
    pub latency: Option<LatencyReport>,
}

/// The reasons a worker drops a frame and how many it dropped for each: the `reason` label of
/// `shunt_dropped_packets_total`, and what `shunt stats` adds up as drops.
pub fn drop_reasons(s: &WorkerStats) -> [(&'static str, u64); 12] {
    [
        ("malformed", s.dropped_malformed),
        ("bad_checksum", s.dropped_bad_checksum),
        ("amplification", s.dropped_amplification),
        ("over_mtu", s.dropped_over_mtu),
        ("not_ours", s.dropped_not_ours),
        ("handler", s.dropped_by_handler),
        ("tx_ring_full", s.tx_ring_full),
        ("send_pool_empty", s.send_pool_empty),
        ("send_batch_limit", s.send_batch_limit),
        ("send_bad_address", s.send_bad_address),
        ("send_no_route", s.send_no_route),
        ("send_unresolved", s.send_unresolved),
    ]
}

/// Whether the server serves: what `GET /ready` answers and the `shunt_ready` / `shunt_worker_up` gauges show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// The server has not begun to stop.
    pub serving: bool,
    /// (queue, running its loop) per worker.
    pub workers: Vec<(u32, bool)>,
}

impl Readiness {
    /// Serving, and every worker running.
    pub fn is_ready(&self) -> bool {
        self.serving && self.workers.iter().all(|&(_, up)| up)
    }

    /// Why it is not ready (empty when it is).
    pub fn reason(&self) -> String {
        let down: Vec<String> = self.workers.iter().filter(|(_, up)| !up).map(|(q, _)| q.to_string()).collect();
        match (self.serving, down.is_empty()) {
            (_, false) => format!("the worker of queue {} is not running", down.join(", ")),
            (false, true) => "the server is stopping".to_string(),
            (true, true) => String::new(),
        }
    }
}

/// Everything a request reads.
pub struct MetricsSources {
    /// When serving started (uptime is measured from here).
    pub started: Instant,
    /// (queue, published counters) per worker.
    pub workers: Vec<(u32, Arc<WorkerShared>)>,
    /// The XDP program's counters (none in `mode = "socket"`).
    pub xdp: Option<XdpCountersReader>,
    /// The reporter's latest latency figures.
    pub latency: Arc<Mutex<LatencySnapshot>>,
    /// True while the server serves; cleared when it begins to stop.
    pub serving: Arc<AtomicBool>,
}

impl MetricsSources {
    /// The counters now and the reporter's latest latency figures.
    pub fn read(&self) -> (StatsSnapshot, LatencySnapshot) {
        let latency = self.latency.lock().map(|s| s.clone()).unwrap_or_default();
        let uptime_ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let workers = self
            .workers
            .iter()
            .map(|(queue, w)| WorkerSnapshot {
                queue: *queue,
                stats: w.stats.snapshot(),
                kernel: w.kernel.snapshot(),
                latency: latency.per_worker.iter().find(|l| l.queue == *queue).map(|l| l.report),
            })
            .collect();
        let stats = StatsSnapshot {
            uptime_ns,
            xdp: self.xdp.as_ref().and_then(|x| x.read().ok()),
            workers,
            latency: latency.total,
        };
        (stats, latency)
    }

    /// Readiness now: the serving flag and each worker's liveness.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            serving: self.serving.load(Relaxed),
            workers: self.workers.iter().map(|(queue, w)| (*queue, w.is_alive())).collect(),
        }
    }
}

/// The figures of one request, encoded by prometheus-client through [`Collector`]: the values are read
/// once per request, so every family describes the same instant.
#[derive(Debug)]
struct Scrape {
    stats: StatsSnapshot,
    latency: LatencySnapshot,
    readiness: Option<Readiness>,
}

/// A counter family read from each worker: name (without `_total`), help text, reader.
type PerQueue = (&'static str, &'static str, fn(&WorkerSnapshot) -> u64);

const PER_QUEUE: [PerQueue; 22] = [
    ("shunt_rx_packets", "Requests received: AF_XDP RX frames, kernel-socket datagrams.", |w| w.stats.rx_packets),
    ("shunt_tx_packets", "Replies and sends sent: on the AF_XDP TX ring, accepted by the kernel socket.", |w| {
        w.stats.tx_packets
    }),
    ("shunt_sends", "Datagrams handlers sent through their outbox, besides in-place replies.", |w| w.stats.sends),
    ("shunt_timeouts", "Calls of the handler's handle_timeout.", |w| w.stats.timeouts),
    ("shunt_rx_batches", "Non-empty receive batches (AF_XDP RX batches, kernel-socket wake-ups or calls).", |w| {
        w.stats.rx_batches
    }),
    ("shunt_tx_kicks", "AF_XDP: TX wake-up system calls; kernel sockets: send system calls.", |w| w.stats.tx_kicks),
    ("shunt_tx_kick_errors", "AF_XDP only: TX wake-ups that failed with an unexpected error.", |w| {
        w.stats.tx_kick_errors
    }),
    ("shunt_tx_backpressure", "AF_XDP only: turns on which RX waited because the TX ring had no free slot.", |w| {
        w.stats.tx_backpressure
    }),
    ("shunt_fill_kicks", "AF_XDP only: fill-ring wake-up system calls.", |w| w.stats.fill_kicks),
    ("shunt_sleeps", "Waits for packets: AF_XDP poll(2) on an empty ring; kernel-socket wait calls.", |w| {
        w.stats.sleeps
    }),
    ("shunt_busy_polls", "AF_XDP only: busy-poll system calls made on an empty ring.", |w| w.stats.busy_polls),
    (
        "shunt_wait_errors",
        "Waits for packets that failed (not EINTR): AF_XDP poll and fill wake-ups; kernel-socket \
      epoll_wait, sigtimedwait, io_uring_enter.",
        |w| w.stats.wait_errors,
    ),
    ("shunt_rx_errors", "Kernel sockets only: receive calls that failed with an unexpected error.", |w| {
        w.stats.rx_errors
    }),
    ("shunt_tx_errors", "Kernel sockets only: send calls that failed with an error other than no room.", |w| {
        w.stats.tx_errors
    }),
    ("shunt_empty_receives", "Kernel sockets only: receive calls that found the socket empty (EAGAIN).", |w| {
        w.stats.empty_receives
    }),
    ("shunt_rx_no_buffer", "Kernel sockets, io_uring only: receives that ended with no provided buffer left.", |w| {
        w.stats.rx_no_buffer
    }),
    ("shunt_xsk_rx_dropped", "AF_XDP socket: RX drops.", |w| w.kernel.rx_dropped),
    ("shunt_xsk_rx_invalid_descs", "AF_XDP socket: invalid RX descriptors.", |w| w.kernel.rx_invalid_descs),
    ("shunt_xsk_tx_invalid_descs", "AF_XDP socket: invalid TX descriptors.", |w| w.kernel.tx_invalid_descs),
    ("shunt_xsk_rx_ring_full", "AF_XDP socket: drops on a full RX ring.", |w| w.kernel.rx_ring_full),
    ("shunt_xsk_rx_fill_ring_empty", "AF_XDP socket: times the fill ring was empty.", |w| {
        w.kernel.rx_fill_ring_empty_descs
    }),
    ("shunt_xsk_tx_ring_empty", "AF_XDP socket: times the TX ring was empty on wake-up.", |w| {
        w.kernel.tx_ring_empty_descs
    }),
];

const LATENCY_HELP: &str = "In-server latency since start: total = XDP hook to TX ring, ring_dwell = hook to pick-up, \
     service = pick-up to TX ring, tx_kick = TX system call per kicked batch.";

fn counter(family: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: u64) -> std::fmt::Result {
    family.encode_family(labels)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        if let Some(r) = &self.readiness {
            encoder
                .encode_descriptor(
                    "shunt_ready",
                    "1 while the server serves with every worker running; 0 once a worker died or it stops.",
                    None,
                    MetricType::Gauge,
                )?
                .encode_gauge(&i64::from(r.is_ready()))?;
            let mut up = encoder.encode_descriptor(
                "shunt_worker_up",
                "1 while the queue's worker runs its loop; 0 once it has ended (stopped or died).",
                None,
                MetricType::Gauge,
            )?;
            for &(queue, alive) in &r.workers {
                up.encode_family(&[("queue", queue.to_string())])?.encode_gauge(&i64::from(alive))?;
            }
        }
        let workers = &self.stats.workers;
        for (name, help, read) in PER_QUEUE {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for w in workers {
                counter(&mut family, &[("queue", w.queue.to_string())], read(w))?;
            }
        }
        let mut busy = encoder.encode_descriptor(
            "shunt_worker_busy",
            "Time the worker spent in turns that found work (RX batches, kicks, timer turns), not in empty polls \
             or waits.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        for w in workers {
            busy.encode_family(&[("queue", w.queue.to_string())])?
                .encode_counter::<NoLabelSet, f64, u64>(&(w.stats.busy_ns as f64 / 1e9), None)?;
        }
        let mut drops = encoder.encode_descriptor(
            "shunt_dropped_packets",
            "Frames dropped by the workers, by reason.",
            None,
            MetricType::Counter,
        )?;
        for w in workers {
            let queue = w.queue.to_string();
            for (reason, n) in drop_reasons(&w.stats) {
                counter(&mut drops, &[("queue", queue.as_str()), ("reason", reason)], n)?;
            }
        }
        if let Some(x) = &self.stats.xdp {
            let mut verdicts = encoder.encode_descriptor(
                "shunt_xdp_packets",
                "Packets seen by the XDP program, by verdict.",
                None,
                MetricType::Counter,
            )?;
            for (verdict, n) in [
                ("redirected", x.redirected),
                ("passed", x.passed),
                ("malformed", x.malformed),
                ("no_socket", x.no_socket),
                ("filtered", x.filtered),
                ("rate_limited", x.rate_limited),
                ("stamp_failed", x.stamp_failed),
                ("other_address", x.other_address),
            ] {
                counter(&mut verdicts, &[("verdict", verdict)], n)?;
            }
        }
        if !self.latency.per_worker.is_empty() {
            let mut latency = encoder.encode_descriptor(
                "shunt_latency",
                LATENCY_HELP,
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for q in &self.latency.per_worker {
                let queue = q.queue.to_string();
                for (stage, b) in &q.stages {
                    latency
                        .encode_family(&[("queue", queue.as_str()), ("stage", stage)])?
                        .encode_histogram::<NoLabelSet>(b.sum_ns as f64 / 1e9, b.count, &per_bucket_seconds(b), None)?;
                }
            }
        }
        Ok(())
    }
}

/// (upper bound in seconds, samples in that bucket only): the encoder accumulates them into `le` counts.
fn per_bucket_seconds(b: &LatencyBuckets) -> Vec<(f64, u64)> {
    LATENCY_BUCKETS_NS.iter().map(|&ns| ns as f64 / 1e9).chain(std::iter::once(f64::INFINITY)).zip(b.counts).collect()
}

/// The OpenMetrics text of one request's figures (ends with `# EOF`), without the readiness gauges.
pub fn render(stats: &StatsSnapshot, latency: &LatencySnapshot) -> String {
    render_with(stats, latency, None)
}

/// [`render`], with the `shunt_ready` and `shunt_worker_up` gauges when `readiness` is given.
pub fn render_with(stats: &StatsSnapshot, latency: &LatencySnapshot, readiness: Option<&Readiness>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape {
        stats: stats.clone(),
        latency: latency.clone(),
        readiness: readiness.cloned(),
    }));
    let mut out = String::new();
    // Writing into a String cannot fail; the encoder reports no other error for these families.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// A running endpoint; dropping it stops the server thread.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

fn header(value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes("Content-Type", value).expect("static header")
}

impl MetricsServer {
    /// Binds `listen` and serves `/metrics`, `/stats.json` and `/ready` from a thread of its own.
    pub fn start(listen: &str, sources: MetricsSources) -> Result<MetricsServer, String> {
        let server =
            tiny_http::Server::http(listen).map_err(|e| format!("config key `metrics.listen`: {listen}: {e}"))?;
        let local_addr = server.server_addr().to_ip().ok_or("metrics.listen: not an IP address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shunt-metrics".into())
            .spawn(move || {
                while !flag.load(Relaxed) {
                    let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) else { continue };
                    let path = request.url().split('?').next().unwrap_or("");
                    let response = match path {
                        "/metrics" => {
                            let (stats, latency) = sources.read();
                            let readiness = sources.readiness();
                            tiny_http::Response::from_string(render_with(&stats, &latency, Some(&readiness)))
                                .with_header(header(OPENMETRICS_CONTENT_TYPE))
                        }
                        "/ready" => {
                            let readiness = sources.readiness();
                            if readiness.is_ready() {
                                tiny_http::Response::from_string("ready\n")
                            } else {
                                tiny_http::Response::from_string(format!("not ready: {}\n", readiness.reason()))
                                    .with_status_code(503)
                            }
                        }
                        "/stats.json" => {
                            let (stats, _) = sources.read();
                            match serde_json::to_string(&stats) {
                                Ok(json) => {
                                    tiny_http::Response::from_string(json).with_header(header(JSON_CONTENT_TYPE))
                                }
                                Err(e) => {
                                    tiny_http::Response::from_string(format!("shunt: {e}\n")).with_status_code(500)
                                }
                            }
                        }
                        _ => tiny_http::Response::from_string("shunt: see /metrics, /stats.json or /ready\n")
                            .with_status_code(404),
                    };
                    let _ = request.respond(response);
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(MetricsServer { stop, thread: Some(thread), local_addr })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::datapath::{histograms::LatencySet, meta::Stamp};

    /// One sample line: name, labels (in any order), value.
    type Sample = (String, BTreeMap<String, String>, f64);

    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (series, v) = l.rsplit_once(' ').expect("series value");
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let labels = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("k=v");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, v.parse().expect("a number"))
            })
            .collect()
    }

    /// The value of the one sample named `name` with exactly `labels`.
    fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let found: Vec<f64> =
            samples(text).into_iter().filter(|(n, l, _)| n == name && *l == want).map(|(.., v)| v).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?} in\n{text}");
        found[0]
    }

    /// A worker whose `total` stage saw 3 × 100 ns, 1 × 700 ns, 1 × 1,999 ns, 1 × 3 µs and 1 × 2 s (saturated
    /// at the 1 s range), and one 4 µs TX kick.
    fn worker_latency() -> LatencySet {
        let mut set = LatencySet::new(1_000_000_000);
        for total in [100, 100, 100, 700, 1_999, 3_000, 2_000_000_000] {
            set.record_packet(Some(Stamp { hook_ns: 1_000, nic_to_hook_ns: None }), 1_000, 1_000 + total);
        }
        set.record_kick(4_000);
        set
    }

    fn snapshot() -> (StatsSnapshot, LatencySnapshot) {
        let set = worker_latency();
        let q = QueueLatency::of(3, &set);
        let stats = StatsSnapshot {
            uptime_ns: 5,
            xdp: Some(XdpCounters {
                redirected: 11,
                passed: 2,
                malformed: 1,
                no_socket: 0,
                filtered: 3,
                rate_limited: 4,
                stamp_failed: 0,
                other_address: 5,
            }),
            workers: vec![
                WorkerSnapshot {
                    queue: 3,
                    stats: WorkerStats {
                        rx_packets: 9,
                        tx_packets: 7,
                        dropped_bad_checksum: 2,
                        busy_ns: 1_500_000_000,
                        ..Default::default()
                    },
                    kernel: KernelSocketStats { rx_ring_full: 4, ..Default::default() },
                    latency: Some(q.report),
                },
                WorkerSnapshot {
                    queue: 5,
                    stats: WorkerStats { rx_packets: 1, ..Default::default() },
                    ..Default::default()
                },
            ],
            latency: Some(q.report),
        };
        (stats, LatencySnapshot { per_worker: vec![q], total: Some(LatencyReport::of(&set)) })
    }

    #[test]
    fn buckets_count_each_sample_once_and_sum_exactly() {
        let set = worker_latency();
        let h = &set.total;
        let b = LatencyBuckets::of(h);
        assert_eq!(b.count, 7);
        assert_eq!(b.counts.iter().sum::<u64>(), 7);
        let slot = |ns: u64| LATENCY_BUCKETS_NS.iter().position(|&b| b == ns).expect("a bound");
        assert_eq!(b.counts[slot(100)], 3, "three samples of exactly 100 ns are <= 100 ns");
        assert_eq!(b.counts[slot(1_000)], 1, "700 ns");
        assert_eq!(b.counts[slot(2_500)], 1, "1,999 ns");
        assert_eq!(b.counts[slot(5_000)], 1, "3 µs");
        assert_eq!(b.counts[LATENCY_BUCKETS_NS.len()], 1, "2 s, saturated at the 1 s range, is above every bound");
        // Below 2,048 ns the histogram is exact; 3,000 and the saturated sample sit in wider buckets, and the
        // sum takes each at its bucket's middle.
        let exact = 3 * 100 + 700 + 1_999;
        let wide = b.sum_ns - exact;
        let saturated = h.max();
        let lowest = h.lowest_equivalent(3_000) + h.lowest_equivalent(saturated);
        let highest = h.highest_equivalent(3_000) + h.highest_equivalent(saturated);
        assert!((lowest..=highest).contains(&wide), "sum {} not within the histogram's resolution", b.sum_ns);
        assert_eq!(wide, h.median_equivalent(3_000) + h.median_equivalent(saturated));
        assert_eq!(LatencyBuckets::of(&LatencySet::new(1000).total), LatencyBuckets::default());
    }

    #[test]
    fn openmetrics_exposition_has_per_queue_counters_and_a_cumulative_histogram() {
        let (stats, latency) = snapshot();
        let text = render(&stats, &latency);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("\"all\""), "no aggregated series: {text}");
        assert_eq!(value(&text, "shunt_rx_packets_total", &[("queue", "3")]), 9.0);
        assert_eq!(value(&text, "shunt_rx_packets_total", &[("queue", "5")]), 1.0);
        assert_eq!(value(&text, "shunt_dropped_packets_total", &[("queue", "3"), ("reason", "bad_checksum")]), 2.0);
        assert_eq!(value(&text, "shunt_dropped_packets_total", &[("queue", "3"), ("reason", "malformed")]), 0.0);
        assert_eq!(value(&text, "shunt_xsk_rx_ring_full_total", &[("queue", "3")]), 4.0);
        assert_eq!(value(&text, "shunt_xdp_packets_total", &[("verdict", "redirected")]), 11.0);
        assert_eq!(value(&text, "shunt_worker_busy_seconds_total", &[("queue", "3")]), 1.5);
        assert_eq!(value(&text, "shunt_worker_busy_seconds_total", &[("queue", "5")]), 0.0);
        assert!(text.contains("# TYPE shunt_worker_busy_seconds counter\n"), "{text}");
        assert!(text.contains("# UNIT shunt_worker_busy_seconds seconds\n"), "{text}");
        assert!(text.contains("# TYPE shunt_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("# UNIT shunt_latency_seconds seconds\n"), "{text}");

        let total = [("queue", "3"), ("stage", "total")];
        let buckets: Vec<(f64, f64)> = samples(&text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == "shunt_latency_seconds_bucket" && l.len() == 3 && total.iter().all(|(k, v)| l[*k] == *v)
            })
            .map(|(_, l, v)| (if l["le"] == "+Inf" { f64::INFINITY } else { l["le"].parse().expect("le") }, v))
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS_NS.len() + 1, "{text}");
        assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "not cumulative: {buckets:?}");
        let at = |le: f64| buckets.iter().find(|(b, _)| (*b - le).abs() <= le * 1e-9).expect("bound").1;
        let expected = [(100e-9, 3.0), (500e-9, 3.0), (1e-6, 4.0), (2.5e-6, 5.0), (5e-6, 6.0), (1.0, 6.0)];
        for (le, n) in expected {
            assert_eq!(at(le), n, "le {le}: {buckets:?}");
        }
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 7.0)));
        assert_eq!(value(&text, "shunt_latency_seconds_count", &total), 7.0);
        let sum = value(&text, "shunt_latency_seconds_sum", &total);
        let exact = latency.per_worker[0].stages[0].1.sum_ns as f64 / 1e9;
        assert!((sum - exact).abs() <= exact * 1e-12, "_sum {sum} vs {exact}");
        assert_eq!(value(&text, "shunt_latency_seconds_count", &[("queue", "3"), ("stage", "tx_kick")]), 1.0);
        // The second worker has no latency published: no histogram for it.
        assert!(samples(&text).iter().all(|(n, l, _)| !n.starts_with("shunt_latency") || l["queue"] == "3"));
    }

    #[test]
    fn each_worker_counter_has_its_own_metric() {
        let stats = WorkerStats {
            tx_kicks: 1,
            tx_kick_errors: 2,
            tx_backpressure: 3,
            fill_kicks: 4,
            sleeps: 5,
            busy_polls: 6,
            wait_errors: 7,
            rx_errors: 8,
            tx_errors: 9,
            empty_receives: 10,
            rx_no_buffer: 11,
            ..WorkerStats::default()
        };
        let snapshot = StatsSnapshot {
            workers: vec![WorkerSnapshot { queue: 2, stats, ..WorkerSnapshot::default() }],
            ..StatsSnapshot::default()
        };
        let text = render(&snapshot, &LatencySnapshot::default());
        let expected = [
            ("shunt_tx_kicks_total", 1.0),
            ("shunt_tx_kick_errors_total", 2.0),
            ("shunt_tx_backpressure_total", 3.0),
            ("shunt_fill_kicks_total", 4.0),
            ("shunt_sleeps_total", 5.0),
            ("shunt_busy_polls_total", 6.0),
            ("shunt_wait_errors_total", 7.0),
            ("shunt_rx_errors_total", 8.0),
            ("shunt_tx_errors_total", 9.0),
            ("shunt_empty_receives_total", 10.0),
            ("shunt_rx_no_buffer_total", 11.0),
        ];
        for (name, v) in expected {
            assert_eq!(value(&text, name, &[("queue", "2")]), v, "{name}\n{text}");
        }
        let names: BTreeSet<&str> = PER_QUEUE.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names.len(), PER_QUEUE.len(), "a metric name twice");
    }

    #[test]
    fn no_latency_no_histogram_family() {
        let (stats, _) = snapshot();
        let text = render(&stats, &LatencySnapshot::default());
        assert!(!text.contains("shunt_latency"), "{text}");
        assert_eq!(value(&text, "shunt_tx_packets_total", &[("queue", "3")]), 7.0);
    }

    fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
        (status, body)
    }

    #[test]
    fn readiness_drops_as_soon_as_a_worker_is_not_running() {
        let workers: Vec<(u32, Arc<WorkerShared>)> = [3, 5].map(|q| (q, Arc::new(WorkerShared::default()))).into();
        for (_, w) in &workers {
            w.alive.store(true, Relaxed);
        }
        let serving = Arc::new(AtomicBool::new(true));
        let sources = MetricsSources {
            started: Instant::now(),
            workers: workers.clone(),
            xdp: None,
            latency: Arc::default(),
            serving: serving.clone(),
        };
        let server = MetricsServer::start("127.0.0.1:0", sources).expect("metrics endpoint");
        let addr = server.local_addr;
        assert_eq!(http_get(addr, "/ready"), (200, "ready\n".to_string()));
        let (status, text) = http_get(addr, "/metrics");
        assert_eq!(status, 200);
        assert_eq!(value(&text, "shunt_ready", &[]), 1.0, "{text}");
        assert!(text.contains("# TYPE shunt_ready gauge\n"), "{text}");
        assert_eq!(value(&text, "shunt_worker_up", &[("queue", "5")]), 1.0, "{text}");

        // A worker dies: its flag drops, and the next request sees it (no wait on the control thread).
        workers[1].1.alive.store(false, Relaxed);
        let (status, body) = http_get(addr, "/ready");
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("queue 5"), "{body}");
        let (_, text) = http_get(addr, "/metrics");
        assert_eq!(value(&text, "shunt_ready", &[]), 0.0, "{text}");
        assert_eq!(value(&text, "shunt_worker_up", &[("queue", "3")]), 1.0, "{text}");
        assert_eq!(value(&text, "shunt_worker_up", &[("queue", "5")]), 0.0, "{text}");

        // Stopping with every worker still running is not ready either.
        workers[1].1.alive.store(true, Relaxed);
        serving.store(false, Relaxed);
        let (status, body) = http_get(addr, "/ready");
        assert_eq!((status, body.as_str()), (503, "not ready: the server is stopping\n"));
    }

    #[test]
    fn json_snapshot_round_trips() {
        let (stats, _) = snapshot();
        let json = serde_json::to_string(&stats).expect("serializes");
        let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        assert_eq!(v["uptime_ns"], 5);
        assert_eq!(v["workers"][0]["stats"]["dropped_bad_checksum"], 2);
        assert_eq!(v["workers"][0]["kernel"]["rx_ring_full"], 4);
        assert_eq!(v["workers"][0]["latency"]["total_ns"]["count"], 7);
        assert!(v["workers"][1]["latency"].is_null());
        assert_eq!(v["xdp"]["redirected"], 11);
        assert_eq!(v["latency"]["tx_kick_ns"]["count"], 1);
        let back: StatsSnapshot = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, stats);
    }
}
