//! Every latency stamp method, forced through `--stamp` (`latency.stamp`) in both XDP attach modes, on whatever
//! kernel runs the tests: echoes answered over IPv4 and IPv6, `service` measured for every reply, `ring_dwell`
//! and `total` for every reply where the method stamps, and the report saying which method ran and why. A
//! method whose helper the kernel refuses must stop start-up with exit 2 naming `latency.stamp` and the helper,
//! with nothing left attached. What to expect comes from the same probes the server runs, never from a skip.
//! Also `shunt check-host`: its lines follow the probes, and a missing interface exits 2 naming it.

mod common;

use std::time::Duration;

use common::{client_socket, echo_exchange, echo_size, probed_stamp_method, require_lab, EchoOpts, Lab};
use shunt::steer::{probe, StampMethod};

const ECHOES: u64 = 1_000;

/// Whether the kernel lets an XDP program call `helper` (the probe the server runs).
fn allowed(helper: &str) -> bool {
    probe::xdp_helper(probe::helper(helper).expect("probed helper").id) == Ok(true)
}

/// Runs the server with `--stamp choice` in `attach` mode and checks what it measured against `expected`.
fn serve_with(lab: &Lab, attach: &str, choice: &str, expected: Option<StampMethod>) {
    let args = lab.serve_args(&["--cores", "1", "--quiet", "--attach-mode", attach, "--stamp", choice]);
    let Some(method) = expected else {
        // The kernel refuses this method's helper: start-up must say so and leave nothing behind.
        let fin = lab.run_server_expect_exit(&args, Duration::from_secs(30));
        assert_eq!(fin.code(), Some(2), "{attach}/{choice}: {}", fin.describe());
        assert!(
            fin.stderr.contains("`latency.stamp`") && fin.stderr.contains("bpf_xdp_adjust_"),
            "{attach}/{choice}: the error must name the key and the helper\n{}",
            fin.describe()
        );
        lab.assert_no_xdp_within(Duration::from_secs(1));
        return;
    };
    let srv = lab.spawn_server(&args);
    for v6 in [false, true] {
        let sock = client_socket(lab, v6, 9000);
        let st = echo_exchange(&sock, 0..ECHOES, echo_size, &EchoOpts::default())
            .unwrap_or_else(|e| panic!("{attach}/{choice}: echo over {}: {e}", if v6 { "IPv6" } else { "IPv4" }));
        assert_eq!(st.answered, ECHOES, "{attach}/{choice}: every echo answered, byte for byte");
    }
    let fin = srv.stop();
    fin.assert_clean_exit();
    let r = fin.report();
    let tx = fin.report_u64("tx_packets");
    assert_eq!(tx, 2 * ECHOES, "{attach}/{choice}: {}", fin.describe());
    assert_eq!(r["host"]["choices"]["stamp"], method.name(), "{attach}/{choice}: {}", fin.describe());
    assert!(r["host"]["choices"]["stamp_reason"].as_str().is_some_and(|s| !s.is_empty()), "{}", fin.describe());
    assert_eq!(fin.report_u64("latency.service_ns.count"), tx, "{attach}/{choice}: service for every reply");
    assert_eq!(fin.report_u64("xdp.stamp_failed"), 0, "{attach}/{choice}: {}", fin.describe());
    // A device-bound program (NIC RX hardware timestamps) is loaded when packets are stamped in native attach
    // and the kernel has the kfunc; veth implements it, so here the fallback to the plain program would be a
    // regression.
    let kfunc = r["host"]["findings"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["feature"] == "bpf_xdp_metadata_rx_timestamp"))
        .and_then(|f| f["available"].as_bool())
        == Some(true);
    let device_bound = method.stamps() && attach == "native" && kfunc;
    assert_eq!(
        r["host"]["choices"]["hardware_timestamps"].as_bool(),
        Some(device_bound),
        "{attach}/{choice}: device-bound program loaded?\n{}",
        fin.describe()
    );
    if method.stamps() {
        assert_eq!(fin.report_u64("latency.total_ns.count"), tx, "{attach}/{choice}: total for every reply");
        assert_eq!(fin.report_u64("latency.ring_dwell_ns.count"), tx, "{attach}/{choice}");
        assert_eq!(fin.report_u64("latency.unstamped"), 0, "{attach}/{choice}: {}", fin.describe());
        let p50 = fin.report_u64("latency.total_ns.p50");
        assert!(p50 > 0 && p50 < 1_000_000_000, "{attach}/{choice}: total p50 {p50} ns");
    } else {
        assert_eq!(fin.report_u64("latency.total_ns.count"), 0, "{attach}/{choice}: nothing to measure total from");
        assert_eq!(fin.report_u64("latency.unstamped"), tx, "{attach}/{choice}");
        let clock = r["latency_clock"].as_str().unwrap_or_default();
        assert!(clock.contains("not measured"), "{attach}/{choice}: the report must say so: {clock}");
    }
    eprintln!(
        "{attach:>7} stamp {choice:>4} -> {}: {tx} replies, service p50 {} ns, total p50 {} ns",
        method.name(),
        fin.report_u64("latency.service_ns.p50"),
        fin.report_u64("latency.total_ns.p50")
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn every_stamp_method_in_both_attach_modes() {
    require_lab();
    let lab = Lab::new(1);
    let meta = allowed("bpf_xdp_adjust_meta").then_some(StampMethod::Meta);
    let head = allowed("bpf_xdp_adjust_head").then_some(StampMethod::Head);
    eprintln!("this kernel: bpf_xdp_adjust_meta {:?}, bpf_xdp_adjust_head {:?}", meta.is_some(), head.is_some());
    for attach in ["generic", "native"] {
        serve_with(&lab, attach, "auto", Some(probed_stamp_method()));
        serve_with(&lab, attach, "meta", meta);
        serve_with(&lab, attach, "head", head);
        serve_with(&lab, attach, "none", Some(StampMethod::None));
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn check_host_reports_what_the_probes_find() {
    require_lab();
    let lab = Lab::new(1);
    let bin = common::shunt_bin();
    let out =
        lab.exec(common::Side::Server, &[bin, "check-host", "--interface", &lab.server_if()], Duration::from_secs(30));
    assert!(out.success(), "check-host on the lab interface: {}", out.combined());
    for (helper, yes) in [
        ("bpf_xdp_adjust_meta", allowed("bpf_xdp_adjust_meta")),
        ("bpf_xdp_adjust_head", allowed("bpf_xdp_adjust_head")),
    ] {
        let line = out.stdout.lines().find(|l| l.trim_start().starts_with(helper)).unwrap_or_else(|| {
            panic!("check-host names no {helper}:\n{}", out.stdout);
        });
        let answer = line.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(answer, if yes { "yes" } else { "no" }, "{line}");
    }
    // The multishot trial runs on the namespace's loopback, which the lab brings up: a clear answer.
    let multishot = out.stdout.lines().find(|l| l.trim_start().starts_with("io_uring multishot recvmsg"));
    let answer = multishot.and_then(|l| l.split("recvmsg").nth(1)).and_then(|r| r.split_whitespace().next());
    assert!(matches!(answer, Some("yes" | "no")), "io_uring multishot: {multishot:?}\n{}", out.stdout);
    // veth: native XDP yes, zero-copy no (lab notes); the netdev family says so where the kernel has it.
    assert!(out.stdout.contains(&format!("interface {}", lab.server_if())), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("stamp {}", probed_stamp_method().name())), "{}", out.stdout);

    let json = lab.exec(common::Side::Server, &[bin, "check-host", "--json"], Duration::from_secs(30));
    assert!(json.success(), "{}", json.combined());
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("check-host --json prints JSON");
    assert!(v["findings"].as_array().is_some_and(|f| f.len() >= 10), "{v}");
    assert_eq!(v["choices"]["stamp"], probed_stamp_method().name());

    let missing =
        lab.exec(common::Side::Server, &[bin, "check-host", "--interface", "shuntnope0"], Duration::from_secs(30));
    assert_eq!(missing.status.code(), Some(2), "{}", missing.combined());
    assert!(missing.stderr.contains("interface shuntnope0"), "{}", missing.combined());
}
