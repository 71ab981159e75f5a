//! End to end: the in-server latency measurement and its three outputs (JSON report, HdrHistogram interval
//! log, Prometheus endpoint) agree with each other and with the traffic actually served. Needs root.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{client_socket, echo_exchange, echo_size, require_root_or_skip, EchoOpts, Lab, Side};

const PACKETS: u64 = 3_000;
const METRICS: &str = "127.0.0.1:9464";

fn scrape(lab: &Lab) -> String {
    lab.in_server(|| {
        let mut s = TcpStream::connect(METRICS).expect("connect to the metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.") && text.contains(" 200 "), "metrics answered: {text}");
        assert!(text.contains("text/plain; version=0.0.4"), "not the Prometheus text format: {text}");
        text
    })
}

fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in:\n{text}"))
}

#[test]
fn latency_report_log_and_metrics_agree_with_the_traffic() {
    if !require_root_or_skip() {
        return;
    }
    let lab = Lab::new(1);
    let hdr_log = lab.tmp_path("latency", "hlog");
    let hdr = hdr_log.display().to_string();
    let server = lab.spawn_server(&lab.serve_args(&["--metrics", METRICS, "--hdr-log", &hdr, "--port", "9000"]));

    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..PACKETS / 2, echo_size, &EchoOpts::default()).expect("echo v4");
    let sock6 = client_socket(&lab, true, 9000);
    let stats6 = echo_exchange(&sock6, 0..PACKETS / 2, echo_size, &EchoOpts::default()).expect("echo v6");
    assert_eq!(stats.answered + stats6.answered, PACKETS);

    // Let the reporter take at least one more interval, so the endpoint's latency covers every packet.
    std::thread::sleep(Duration::from_millis(2_500));
    let metrics = scrape(&lab);

    // `shunt stats` reads the same endpoint.
    let table = lab.exec(
        Side::Server,
        &[common::shunt_bin(), "stats", "--metrics", METRICS, "--interval", "0.2", "--count", "1"],
        Duration::from_secs(20),
    );
    assert!(table.success(), "shunt stats failed:\n{}", table.combined());
    assert!(table.stdout.contains("rx pps") && table.stdout.contains("all"), "{}", table.stdout);

    let done = server.stop();
    done.assert_clean_exit();
    let report = done.report();
    let tx = done.report_u64("tx_packets");
    let rx = done.report_u64("rx_packets");
    let sent = stats.sent + stats6.sent;
    assert_eq!(rx, sent, "every datagram sent was received");
    assert_eq!(tx, sent, "and answered");

    // JSON: one latency sample per reply, ordered and plausible percentiles.
    let l = &report["latency_ns"];
    let get = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("latency_ns.{k} missing: {l}"));
    assert_eq!(get("count"), tx, "latency count = replied packets: {l}");
    let duration_ns = (report["duration_secs"].as_f64().unwrap() * 1e9) as u64;
    let ordered = ["min", "p50", "p90", "p99", "p999", "p9999", "max"].map(get);
    assert!(ordered[0] > 0, "a zero latency is not a measurement: {l}");
    assert!(ordered.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {l}");
    assert!(ordered[6] < duration_ns, "max latency {} beyond the run's {duration_ns} ns", ordered[6]);
    for stage in ["ring_dwell_ns", "service_ns", "total_ns"] {
        assert_eq!(report["latency"][stage]["count"].as_u64(), Some(tx), "latency.{stage}.count");
    }
    assert_eq!(report["latency"]["unstamped"].as_u64(), Some(0), "every request carried an XDP stamp");
    // Copy mode kicks every batch with replies: one kick sample per kicked batch, never more than the
    // system calls counted or the batches received.
    let kick_samples = report["latency"]["tx_kick_ns"]["count"].as_u64().expect("latency.tx_kick_ns.count");
    let worker = &report["workers"][0];
    assert!(kick_samples > 0, "copy mode kicks, so kicks were timed: {}", report["latency"]);
    assert!(kick_samples <= worker["tx_kicks"].as_u64().expect("tx_kicks"), "more kick samples than kicks");
    assert!(kick_samples <= worker["rx_batches"].as_u64().expect("rx_batches"), "more kick samples than batches");
    assert_eq!(report["workers"][0]["latency"]["total_ns"]["count"].as_u64(), Some(tx));

    // The interval log reads back with the hdrhistogram crate and holds every sample.
    let bytes = std::fs::read(&hdr_log).expect("hdr log written");
    let mut deserializer = hdrhistogram::serialization::Deserializer::new();
    let mut logged = 0u64;
    let mut intervals = 0;
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.expect("log entry parses") {
            if h.tag().map(|t| t.as_str()) != Some("total") {
                continue;
            }
            let decoded =
                base64::engine::general_purpose::STANDARD.decode(h.encoded_histogram()).expect("base64 histogram");
            let hist: hdrhistogram::Histogram<u64> =
                deserializer.deserialize(&mut decoded.as_slice()).expect("histogram decodes");
            logged += hist.len();
            intervals += 1;
        }
    }
    assert!(intervals >= 2, "only {intervals} intervals logged");
    assert_eq!(logged, tx, "samples in the interval log vs replies");

    // The endpoint counted the same (the scrape came after the traffic, before the stop).
    assert_eq!(series(&metrics, "shunt_rx_packets_total{queue=\"0\"}") as u64, rx);
    assert_eq!(series(&metrics, "shunt_tx_packets_total{queue=\"0\"}") as u64, tx);
    assert_eq!(
        series(&metrics, "shunt_xdp_packets_total{verdict=\"redirected\"}") as u64,
        done.report_u64("xdp.redirected")
    );
    assert_eq!(series(&metrics, "shunt_latency_seconds_count{queue=\"all\",stage=\"total\"}") as u64, tx);
    let p50 = series(&metrics, "shunt_latency_seconds{queue=\"all\",stage=\"total\",quantile=\"0.5\"}");
    assert_eq!((p50 * 1e9).round() as u64, get("p50"), "endpoint p50 vs report p50");
}

#[test]
fn measurement_can_be_turned_off() {
    if !require_root_or_skip() {
        return;
    }
    let lab = Lab::new(1);
    let config = lab.lab_config_with(&[("enabled", "false")]);
    let args = ["serve", "--config", config.to_str().unwrap(), "--interface", &lab.server_if()];
    let server = lab.spawn_server(&args);
    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..500, echo_size, &EchoOpts::default()).expect("echo");
    let done = server.stop();
    done.assert_clean_exit();
    assert_eq!(done.report_u64("tx_packets"), stats.sent);
    assert!(done.report()["latency"].is_null(), "no latency section when measurement is off");
    assert_eq!(done.report_u64("latency_ns.count"), 0);
}

#[test]
fn native_mode_loads_the_device_bound_program_and_says_which_clock() {
    if !require_root_or_skip() {
        return;
    }
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
