//! The AF_XDP poll modes in the lab: each serves traffic; the waking ones (`wakeup`, `adaptive`) use
//! near-zero CPU while idle, measured from the worker thread's CPU time over a quiet second (the kernel's
//! accounting in /proc, not the server's word) against the spinning mode's; `busy_poll` is refused at
//! start-up in copy mode (veth has no zero-copy), with exit 2 naming the key and nothing left attached.

mod common;

use std::time::Duration;

use common::{
    client_socket, clock_ticks_per_second, echo_exchange, echo_size, require_lab, thread_cpu_ticks, EchoOpts, Lab,
};

/// Serves 2,000 echoes over IPv4 and IPv6 in `mode`, then returns the worker's CPU ticks over one quiet
/// second (the measurement window is the point here, so it is a fixed second by design) and the report.
fn serve_then_idle(lab: &Lab, mode: &str) -> (u64, serde_json::Value) {
    let srv = lab.spawn_server(&lab.serve_args(&["--cores", "1", "--quiet", "--poll-mode", mode]));
    for v6 in [false, true] {
        let sock = client_socket(lab, v6, 9000);
        let st = echo_exchange(&sock, 0..2_000, echo_size, &EchoOpts::default())
            .unwrap_or_else(|e| panic!("{mode}: echo over {}: {e}", if v6 { "IPv6" } else { "IPv4" }));
        assert_eq!(st.answered, 2_000, "{mode}");
    }
    // Past adaptive's spin window (50 µs by default) the worker is idle; measure a quiet second.
    let (_, before) = thread_cpu_ticks(srv.pid(), "shunt-q0").expect("worker thread in /proc");
    std::thread::sleep(Duration::from_secs(1));
    let (_, after) = thread_cpu_ticks(srv.pid(), "shunt-q0").expect("worker thread in /proc");
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert!(fin.report_u64("tx_packets") >= 4_000, "{mode}: {}", fin.describe());
    (after - before, fin.report().clone())
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn waking_modes_serve_and_idle_without_burning_the_core() {
    require_lab();
    let lab = Lab::new(1);
    let hz = clock_ticks_per_second();
    let (spin, _) = serve_then_idle(&lab, "spin");
    let (wakeup, wakeup_report) = serve_then_idle(&lab, "wakeup");
    let (adaptive, adaptive_report) = serve_then_idle(&lab, "adaptive");
    eprintln!(
        "worker CPU over a quiet second, in ticks of 1/{hz} s: spin {spin}, wakeup {wakeup}, adaptive {adaptive}"
    );
    // The spinning worker owns its core: most of the second (the VM may steal some of it).
    assert!(spin * 2 >= hz, "spin used only {spin}/{hz} ticks in a quiet second: is it spinning?");
    // The waking ones sleep in poll(2): at most 5 % of what spinning used.
    for (mode, ticks) in [("wakeup", wakeup), ("adaptive", adaptive)] {
        assert!(ticks * 20 <= spin, "{mode} used {ticks} ticks while idle, spin {spin}");
    }
    for (mode, report) in [("wakeup", &wakeup_report), ("adaptive", &adaptive_report)] {
        let sleeps = report["workers"][0]["sleeps"].as_u64().unwrap_or(0);
        assert!(sleeps > 0, "{mode}: the worker never slept: {report}");
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn busy_poll_is_refused_on_a_copy_mode_socket() {
    require_lab();
    let lab = Lab::new(1);
    let fin = lab.run_server_expect_exit(
        &lab.serve_args(&["--cores", "1", "--poll-mode", "busy_poll"]),
        Duration::from_secs(30),
    );
    assert_eq!(fin.code(), Some(2), "{}", fin.describe());
    assert!(fin.stderr.contains("`workers.poll_mode`") && fin.stderr.contains("zero-copy"), "{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(1));
}
