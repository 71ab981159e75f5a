//! End to end: the in-server latency measurement and its outputs (JSON report, HdrHistogram interval log,
//! the endpoint's `/metrics` and `/stats.json`, `shunt stats`) agree with each other and with the traffic
//! actually served. Lab tests: they need root and network namespaces (`make test` runs them).

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{client_socket, echo_exchange, echo_size, EchoOpts, Lab, Side};
use hdrhistogram::Histogram;
use shunt::{
    datapath::histograms::STAGE_NAMES,
    observe::{
        latency::{human_ns, Summary},
        metrics::{drop_reasons, StatsSnapshot, JSON_CONTENT_TYPE, LATENCY_BUCKETS_NS},
    },
};

const PACKETS: u64 = 3_000;
const METRICS: &str = "127.0.0.1:9464";
/// How long the counters and the reporter's latency may take to catch up with traffic already answered (the
/// lab reports every second).
const CATCH_UP: Duration = Duration::from_secs(15);

/// `GET path` on the server's endpoint: (Content-Type, body); panics unless it answers 200.
fn get(lab: &Lab, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    let response = lab.in_server(move || {
        let mut s = TcpStream::connect(METRICS).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    });
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{path}: no header end: {response}"));
    assert!(head.starts_with("HTTP/1.") && head.lines().next().unwrap_or("").contains(" 200 "), "{path}: {head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("{path}: no Content-Type in {head}"));
    (content_type.to_string(), body.to_string())
}

fn stats_json(lab: &Lab) -> StatsSnapshot {
    let (content_type, body) = get(lab, "/stats.json");
    assert_eq!(content_type, JSON_CONTENT_TYPE);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stats.json does not parse ({e}): {body}"))
}

/// Polls `/stats.json` until `done` holds or [`CATCH_UP`] has passed; returns the last snapshot either way
/// (the caller asserts on it).
fn poll_stats(lab: &Lab, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let s = stats_json(lab);
        if done(&s) || Instant::now() >= deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One OpenMetrics sample: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// `/metrics`, checked for its content type and terminator, as samples.
fn scrape(lab: &Lab) -> (String, Vec<Sample>) {
    let (content_type, text) = get(lab, "/metrics");
    assert!(content_type.starts_with("application/openmetrics-text"), "not OpenMetrics: {content_type}");
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {l:?}"));
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let labels = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("bad label {kv:?} in {l:?}"));
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            let value = value.parse().unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            Sample { name: name.to_string(), labels, value }
        })
        .collect();
    (text, samples)
}

fn labels_are(s: &Sample, labels: &[(&str, &str)]) -> bool {
    s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

/// The value of the one sample `name` with exactly `labels`.
fn value(text: &str, samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples.iter().filter(|s| s.name == name && labels_are(s, labels)).collect();
    assert_eq!(found.len(), 1, "expected one {name}{labels:?} in:\n{text}");
    found[0].value
}

/// The `_bucket` samples of one queue and stage: (le, cumulative count), in exposition order.
fn buckets(samples: &[Sample], queue: &str, stage: &str) -> Vec<(f64, u64)> {
    samples
        .iter()
        .filter(|s| s.name == "shunt_latency_seconds_bucket")
        .filter(|s| s.labels.len() == 3 && s.labels["queue"] == queue && s.labels["stage"] == stage)
        .map(|s| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") };
            (le, s.value as u64)
        })
        .collect()
}

/// The integer figures of a summary (its mean is a float, compared elsewhere).
fn figures(s: &Summary) -> [u64; 8] {
    [s.count, s.min, s.p50, s.p90, s.p99, s.p999, s.p9999, s.max]
}

fn report_figures(v: &serde_json::Value) -> [u64; 8] {
    ["count", "min", "p50", "p90", "p99", "p999", "p9999", "max"]
        .map(|k| v[k].as_u64().unwrap_or_else(|| panic!("no integer {k} in {v}")))
}

/// The whitespace-separated cells of the one row of `table` that starts with `first`.
fn row<'t>(table: &'t str, first: &str) -> Vec<&'t str> {
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cells| cells.first() == Some(&first))
        .collect();
    assert_eq!(rows.len(), 1, "expected one row {first:?} in:\n{table}");
    rows[0].clone()
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn latency_report_log_and_endpoint_agree_with_the_traffic() {
    common::require_lab();
    let lab = Lab::new(1);
    let hdr_log = lab.tmp_path("latency", "hlog");
    let hdr = hdr_log.display().to_string();
    let server = lab.spawn_server(&lab.serve_args(&["--metrics", METRICS, "--hdr-log", &hdr, "--port", "9000"]));
    let started = stats_json(&lab);

    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..PACKETS / 2, echo_size, &EchoOpts::default()).expect("echo v4");
    let sock6 = client_socket(&lab, true, 9000);
    let stats6 = echo_exchange(&sock6, 0..PACKETS / 2, echo_size, &EchoOpts::default()).expect("echo v6");
    assert_eq!(stats.answered + stats6.answered, PACKETS);
    let sent = stats.sent + stats6.sent;

    // /stats.json: poll until the counters and the reporter's latency cover every datagram sent.
    let caught_up = |s: &StatsSnapshot| {
        s.workers.first().is_some_and(|w| {
            w.stats.rx_packets == sent
                && w.stats.tx_packets == sent
                && w.latency.is_some_and(|l| l.total_ns.count == sent && l.service_ns.count == sent)
        })
    };
    let json = poll_stats(&lab, caught_up);
    assert!(caught_up(&json), "the endpoint did not reach {sent} packets and samples within {CATCH_UP:?}: {json:#?}");
    assert_eq!(json.workers.iter().map(|w| w.queue).collect::<Vec<_>>(), [0], "one worker, queue 0");
    let w = &json.workers[0];
    let latency = w.latency.expect("worker latency");
    assert_eq!(
        json.latency.map(|l| figures(&l.total_ns)),
        Some(figures(&latency.total_ns)),
        "one worker: merged = its own"
    );
    assert_eq!(latency.unstamped, 0, "every request carried an XDP stamp");
    assert!(latency.total_ns.min > 0 && latency.total_ns.is_ordered(), "{:?}", latency.total_ns);
    assert_eq!(json.xdp.map(|x| x.redirected), Some(sent), "every datagram sent was steered: {:?}", json.xdp);
    assert!(json.uptime_ns > started.uptime_ns, "uptime went from {} to {} ns", started.uptime_ns, json.uptime_ns);
    assert!(drop_reasons(&w.stats).iter().all(|(_, n)| *n == 0), "valid echo traffic, no drops: {:?}", w.stats);

    // /metrics, read after /stats.json caught up (nothing is sent any more, so both show the same figures).
    let (text, samples) = scrape(&lab);
    let stray: Vec<&Sample> = samples.iter().filter(|s| s.labels.get("queue").is_some_and(|q| q != "0")).collect();
    assert!(stray.is_empty(), "series for a queue that is not served (an aggregate?): {stray:?}");
    let queue0 = [("queue", "0")];
    assert_eq!(value(&text, &samples, "shunt_rx_packets_total", &queue0), sent as f64);
    assert_eq!(value(&text, &samples, "shunt_tx_packets_total", &queue0), sent as f64);
    assert_eq!(value(&text, &samples, "shunt_rx_batches_total", &queue0), w.stats.rx_batches as f64);
    assert_eq!(value(&text, &samples, "shunt_xsk_rx_ring_full_total", &queue0), w.kernel.rx_ring_full as f64);
    for (reason, n) in drop_reasons(&w.stats) {
        let labels = [("queue", "0"), ("reason", reason)];
        assert_eq!(value(&text, &samples, "shunt_dropped_packets_total", &labels), n as f64, "{reason}");
    }
    assert_eq!(value(&text, &samples, "shunt_xdp_packets_total", &[("verdict", "redirected")]), sent as f64);
    // Busy time: the worker handled every batch inside a busy stretch, so it has some; in seconds on /metrics.
    let busy_ns = w.stats.busy_ns;
    assert!(busy_ns > 0, "a worker that answered {sent} requests was never busy: {:?}", w.stats);
    let busy_secs = value(&text, &samples, "shunt_worker_busy_seconds_total", &queue0);
    assert!((busy_secs - busy_ns as f64 / 1e9).abs() <= 1e-9 * busy_ns as f64, "{busy_secs} s vs {busy_ns} ns");
    for (stage, summary) in latency.stages() {
        let b = buckets(&samples, "0", stage);
        assert_eq!(b.len(), LATENCY_BUCKETS_NS.len() + 1, "{stage}: one bucket per bound and +Inf:\n{text}");
        for (got, ns) in b.iter().zip(LATENCY_BUCKETS_NS) {
            assert!((got.0 * 1e9 - ns as f64).abs() < 1e-3, "{stage}: le {} for the {ns} ns bound", got.0);
        }
        assert_eq!(b.last().map(|b| b.0), Some(f64::INFINITY), "{stage}: +Inf last");
        assert!(b.windows(2).all(|p| p[0].1 <= p[1].1), "{stage}: buckets not cumulative: {b:?}");
        let labels = [("queue", "0"), ("stage", stage)];
        let count = value(&text, &samples, "shunt_latency_seconds_count", &labels) as u64;
        assert_eq!(count, summary.count, "{stage}: _count vs /stats.json");
        assert_eq!(b.last().map(|b| b.1), Some(count), "{stage}: +Inf bucket vs _count");
    }
    assert_eq!(latency.stages()[0].1.count, sent, "one total sample per reply");

    // `shunt stats` reads /stats.json: with no traffic now, zero rates, and the latency just read.
    let table = lab.exec(
        Side::Server,
        &[common::shunt_bin(), "stats", "--metrics", METRICS, "--interval", "0.2", "--count", "1"],
        Duration::from_secs(20),
    );
    assert!(table.success(), "shunt stats failed:\n{}", table.combined());
    let t = &latency.total_ns;
    let expected_latency = [t.p50, t.p99, t.p999, t.max].map(human_ns);
    for first in ["0", "all"] {
        let cells = row(&table.stdout, first);
        assert_eq!(cells[1..4], ["0", "0", "0"], "idle: no rx, tx or drops per second\n{}", table.stdout);
        assert_eq!(cells[4..], expected_latency, "p50 p99 p99.9 max of /stats.json\n{}", table.stdout);
    }

    let done = server.stop();
    done.assert_clean_exit();
    let report = done.report();
    let tx = done.report_u64("tx_packets");
    assert_eq!(done.report_u64("rx_packets"), sent, "every datagram sent was received");
    assert_eq!(tx, sent, "and answered");
    assert_eq!(done.report_u64("xdp.redirected"), sent);

    // JSON report: one latency sample per reply, ordered and plausible percentiles, the same figures the
    // endpoint showed (no packet came in between).
    let l = &report["latency_ns"];
    let get = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("latency_ns.{k} missing: {l}"));
    assert_eq!(get("count"), tx, "latency count = replied packets: {l}");
    let duration_ns = (report["duration_secs"].as_f64().unwrap() * 1e9) as u64;
    assert!(get("max") < duration_ns, "max latency {} beyond the run's {duration_ns} ns", get("max"));
    assert_eq!(report_figures(l), figures(&latency.total_ns), "report vs /stats.json: {l}");
    for (stage, key) in [("ring_dwell", "ring_dwell_ns"), ("service", "service_ns"), ("tx_kick", "tx_kick_ns")] {
        let s = latency.stages().into_iter().find(|(n, _)| *n == stage).expect("stage").1;
        assert_eq!(report_figures(&report["latency"][key]), figures(s), "latency.{key} vs /stats.json");
    }
    assert_eq!(report["latency"]["unstamped"].as_u64(), Some(0), "every request carried an XDP stamp");
    // Copy mode kicks every batch with replies: one kick sample per kicked batch, never more than the
    // system calls counted or the batches received.
    let kick_samples = report["latency"]["tx_kick_ns"]["count"].as_u64().expect("latency.tx_kick_ns.count");
    let worker = &report["workers"][0];
    assert!(kick_samples > 0, "copy mode kicks, so kicks were timed: {}", report["latency"]);
    assert!(kick_samples <= worker["tx_kicks"].as_u64().expect("tx_kicks"), "more kick samples than kicks");
    assert!(kick_samples <= worker["rx_batches"].as_u64().expect("rx_batches"), "more kick samples than batches");
    assert_eq!(worker["latency"]["total_ns"]["count"].as_u64(), Some(tx));
    // Busy time: the report's is at least what the endpoint showed (idle turns add none), and the per-reply
    // figure is it over the replies.
    let report_busy = worker["busy_ns"].as_u64().expect("workers[0].busy_ns");
    assert!(report_busy >= busy_ns, "report busy_ns {report_busy} < the endpoint's {busy_ns}");
    let per = report["cpu"]["busy_ns_per_packet"].as_f64().expect("cpu.busy_ns_per_packet");
    assert!((per - report_busy as f64 / tx as f64).abs() < 1e-6 * per, "busy_ns_per_packet {per}");
    // Every interval line gives the workers' busy share.
    let out = &done.stdout;
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('[') && l.contains(" pps ")).collect();
    assert!(!lines.is_empty(), "no interval line for an interval with traffic:\n{out}");
    for line in lines {
        let pct = line.split("busy ").nth(1).and_then(|r| r.split('%').next()).and_then(|p| p.parse::<f64>().ok());
        assert!(pct.is_some_and(|p| (0.0..=100.5).contains(&p)), "no busy % in the interval line {line:?}");
    }

    // The interval log reads back with the hdrhistogram crate and holds every sample; merged per stage, it is
    // the histogram the endpoint's buckets and sums came from.
    let bytes = std::fs::read(&hdr_log).expect("hdr log written");
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut logged: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut intervals = 0;
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.expect("log entry parses") {
            let tag = h.tag().map(|t| t.as_str().to_string()).expect("every interval is tagged");
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).expect("base64 histogram");
            let hist: Histogram<u64> = deserializer.deserialize(&mut decoded.as_slice()).expect("histogram decodes");
            intervals += usize::from(tag == "total");
            logged.entry(tag).or_insert_with(|| Histogram::new(3).expect("histogram")).add(&hist).expect("add");
        }
    }
    assert!(intervals >= 2, "only {intervals} intervals logged");
    assert_eq!(logged.get("total").map(Histogram::len), Some(tx), "samples in the interval log vs replies");
    for stage in STAGE_NAMES {
        let h = logged.get(stage).unwrap_or_else(|| panic!("no {stage} intervals in the log"));
        let labels = [("queue", "0"), ("stage", stage)];
        assert_eq!(value(&text, &samples, "shunt_latency_seconds_count", &labels) as u64, h.len(), "{stage}: count");
        // Each bucket holds the samples whose HdrHistogram value (its bucket's highest equivalent, what the
        // percentiles report) is at most `le`.
        let expected: Vec<u64> = LATENCY_BUCKETS_NS
            .iter()
            .map(|&le| h.iter_recorded().filter(|v| v.value_iterated_to() <= le).map(|v| v.count_at_value()).sum())
            .chain(std::iter::once(h.len()))
            .collect();
        let got: Vec<u64> = buckets(&samples, "0", stage).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, expected, "{stage}: buckets vs the interval log");
        // _sum: every sample at the middle of its HdrHistogram bucket, so within the histogram's resolution of
        // the true sum, which lies between the sums of the buckets' lowest and highest values.
        let sum_ns = value(&text, &samples, "shunt_latency_seconds_sum", &labels) * 1e9;
        let over = |f: &dyn Fn(u64) -> u64| -> f64 {
            h.iter_recorded().map(|v| f(v.value_iterated_to()) as f64 * v.count_at_value() as f64).sum()
        };
        let (lowest, middle, highest) =
            (over(&|v| h.lowest_equivalent(v)), over(&|v| h.median_equivalent(v)), over(&|v| h.highest_equivalent(v)));
        assert!((sum_ns - middle).abs() <= middle * 1e-9 + 1.0, "{stage}: _sum {sum_ns} ns, log says {middle} ns");
        assert!(
            lowest - 1.0 <= sum_ns && sum_ns <= highest + 1.0,
            "{stage}: _sum {sum_ns} outside [{lowest}, {highest}]"
        );
        if stage == "total" {
            assert!(sum_ns >= h.len() as f64 * 50.0, "{stage}: {sum_ns} ns is not {} in-server latencies", h.len());
        }
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn measurement_can_be_turned_off() {
    common::require_lab();
    let lab = Lab::new(1);
    let config = lab.lab_config_with(&[("enabled", "false")]);
    let args = ["serve", "--config", config.to_str().unwrap(), "--interface", &lab.server_if(), "--metrics", METRICS];
    let server = lab.spawn_server(&args);
    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..500, echo_size, &EchoOpts::default()).expect("echo");
    let json = poll_stats(&lab, |s| s.workers.first().is_some_and(|w| w.stats.tx_packets == stats.sent));
    assert_eq!(json.workers.first().map(|w| w.stats.tx_packets), Some(stats.sent), "{json:#?}");
    assert!(json.latency.is_none() && json.workers.iter().all(|w| w.latency.is_none()), "latency off: {json:#?}");
    let (text, samples) = scrape(&lab);
    assert_eq!(value(&text, &samples, "shunt_tx_packets_total", &[("queue", "0")]), stats.sent as f64);
    assert!(!text.contains("shunt_latency"), "no latency histogram when measurement is off:\n{text}");
    let done = server.stop();
    done.assert_clean_exit();
    assert_eq!(done.report_u64("tx_packets"), stats.sent);
    assert!(done.report()["latency"].is_null(), "no latency section when measurement is off");
    assert_eq!(done.report_u64("latency_ns.count"), 0);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn native_mode_loads_the_device_bound_program_and_says_which_clock() {
    common::require_lab();
    let lab = Lab::new(1);
    let config = lab.lab_config_with(&[("attach_mode", "\"native\"")]);
    let args = ["serve", "--config", config.to_str().unwrap(), "--interface", &lab.server_if()];
    let server = lab.spawn_server(&args);
    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..300, echo_size, &EchoOpts::default()).expect("echo");
    let done = server.stop();
    done.assert_clean_exit();
    let report = done.report();
    let clock = report["latency_clock"].as_str().unwrap_or_default();
    assert!(clock.contains("bpf_xdp_metadata_rx_timestamp"), "device-bound program not used: {clock}");
    assert_eq!(done.report_u64("latency_ns.count"), stats.sent, "every reply timed from its XDP stamp");
    // veth implements the kfunc but has no hardware clock: no packet may claim a hardware stamp.
    assert_eq!(done.report_u64("latency.nic_to_hook_ns.count"), 0);
}
