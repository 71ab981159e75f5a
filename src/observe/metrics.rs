//! The Prometheus endpoint: `GET /metrics` in the text exposition format (prometheus crate encoder).
//!
//! Every scrape reads what is already published: the workers' atomics, the XDP counters map (through its own
//! fd) and the reporter's latest latency snapshot. Nothing here touches a worker.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus::{
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary as ProtoSummary},
    Encoder, TextEncoder,
};

use super::{
    latency::{LatencyReport, Summary},
    LatencySnapshot,
};
use crate::{datapath::counters::WorkerShared, steer::XdpCountersReader};

/// Everything a scrape reads.
pub struct MetricsSources {
    /// (queue, published counters) per worker.
    pub workers: Vec<(u32, Arc<WorkerShared>)>,
    /// The XDP program's counters.
    pub xdp: XdpCountersReader,
    /// The reporter's latest latency figures.
    pub latency: Arc<Mutex<LatencySnapshot>>,
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

fn summary(labels: Vec<LabelPair>, s: &Summary) -> Metric {
    let mut p = ProtoSummary::default();
    p.set_sample_count(s.count);
    p.set_sample_sum(s.mean * s.count as f64 / 1e9);
    let quantiles = [(0.5, s.p50), (0.9, s.p90), (0.99, s.p99), (0.999, s.p999), (0.9999, s.p9999), (1.0, s.max)]
        .into_iter()
        .map(|(q, v)| {
            let mut quantile = Quantile::default();
            quantile.set_quantile(q);
            quantile.set_value(v as f64 / 1e9);
            quantile
        })
        .collect::<Vec<_>>();
    p.set_quantile(quantiles);
    let mut m = Metric::default();
    m.set_label(labels);
    m.set_summary(p);
    m
}

/// A counter family read from each worker: name, help text, reader.
type WorkerCounter = (&'static str, &'static str, fn(&WorkerShared) -> u64);

/// Renders all metrics in the Prometheus text format.
pub fn render(sources: &MetricsSources) -> String {
    let mut families = Vec::new();
    let per_queue = |f: &dyn Fn(&WorkerShared) -> u64| -> Vec<Metric> {
        sources.workers.iter().map(|(q, w)| counter(vec![label("queue", &q.to_string())], f(w))).collect()
    };
    let worker_counters: [WorkerCounter; 5] = [
        ("shunt_rx_packets_total", "Frames taken off the AF_XDP RX ring.", |w| w.stats.snapshot().rx_packets),
        ("shunt_tx_packets_total", "Replies put on the AF_XDP TX ring.", |w| w.stats.snapshot().tx_packets),
        ("shunt_rx_batches_total", "Non-empty RX batches.", |w| w.stats.snapshot().rx_batches),
        ("shunt_tx_kicks_total", "TX wake-up system calls.", |w| w.stats.snapshot().tx_kicks),
        ("shunt_fill_kicks_total", "Fill-ring wake-up system calls.", |w| w.stats.snapshot().fill_kicks),
    ];
    for (name, help, f) in worker_counters {
        families.push(family(name, help, MetricType::COUNTER, per_queue(&f)));
    }
    let mut drops = Vec::new();
    for (q, w) in &sources.workers {
        let s = w.stats.snapshot();
        for (reason, v) in [
            ("malformed", s.dropped_malformed),
            ("not_ours", s.dropped_not_ours),
            ("handler", s.dropped_by_handler),
            ("tx_ring_full", s.tx_ring_full),
        ] {
            drops.push(counter(vec![label("queue", &q.to_string()), label("reason", reason)], v));
        }
    }
    families.push(family("shunt_dropped_packets_total", "Frames dropped by the workers.", MetricType::COUNTER, drops));
    let kernel: [WorkerCounter; 6] = [
        ("shunt_xsk_rx_dropped_total", "AF_XDP socket: RX drops.", |w| w.kernel.snapshot().rx_dropped),
        ("shunt_xsk_rx_invalid_descs_total", "AF_XDP socket: invalid RX descriptors.", |w| {
            w.kernel.snapshot().rx_invalid_descs
        }),
        ("shunt_xsk_tx_invalid_descs_total", "AF_XDP socket: invalid TX descriptors.", |w| {
            w.kernel.snapshot().tx_invalid_descs
        }),
        ("shunt_xsk_rx_ring_full_total", "AF_XDP socket: drops on a full RX ring.", |w| {
            w.kernel.snapshot().rx_ring_full
        }),
        ("shunt_xsk_rx_fill_ring_empty_total", "AF_XDP socket: times the fill ring was empty.", |w| {
            w.kernel.snapshot().rx_fill_ring_empty_descs
        }),
        ("shunt_xsk_tx_ring_empty_total", "AF_XDP socket: times the TX ring was empty on wake-up.", |w| {
            w.kernel.snapshot().tx_ring_empty_descs
        }),
    ];
    for (name, help, f) in kernel {
        families.push(family(name, help, MetricType::COUNTER, per_queue(&f)));
    }
    if let Ok(x) = sources.xdp.read() {
        let verdicts = [
            ("redirected", x.redirected),
            ("passed", x.passed),
            ("malformed", x.malformed),
            ("no_socket", x.no_socket),
        ]
        .into_iter()
        .map(|(v, n)| counter(vec![label("verdict", v)], n))
        .collect();
        families.push(family(
            "shunt_xdp_packets_total",
            "Packets seen by the XDP program, by verdict.",
            MetricType::COUNTER,
            verdicts,
        ));
    }
    let snapshot = sources.latency.lock().map(|s| s.clone()).unwrap_or_default();
    let mut latency = Vec::new();
    let mut stages = |queue: &str, r: &LatencyReport| {
        for (stage, s) in r.stages() {
            latency.push(summary(vec![label("queue", queue), label("stage", stage)], s));
        }
    };
    for (q, r) in &snapshot.per_worker {
        stages(&q.to_string(), r);
    }
    stages("all", &snapshot.total);
    families.push(family(
        "shunt_latency_seconds",
        "In-server latency since start: total = XDP hook to TX ring, ring_dwell = hook to pick-up, service = pick-up to TX ring, tx_kick = TX system call per kicked batch.",
        MetricType::SUMMARY,
        latency,
    ));

    let mut out = Vec::new();
    // Encoding into a Vec only fails on invalid families, which these are not.
    let _ = TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// A running endpoint; dropping it stops the server thread.
pub struct MetricsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The address actually bound (useful with port 0).
    pub local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `listen` and serves `/metrics` from a thread of its own.
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
                    let response = if path == "/metrics" {
                        let header = tiny_http::Header::from_bytes("Content-Type", TextEncoder::new().format_type())
                            .expect("static header");
                        tiny_http::Response::from_string(render(&sources)).with_header(header)
                    } else {
                        tiny_http::Response::from_string("shunt: see /metrics\n").with_status_code(404)
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
