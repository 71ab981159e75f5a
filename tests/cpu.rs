//! The report's CPU accounting checked against an independent reading of /proc for the same thread: while
//! the server runs, this test reads the worker thread's utime + stime from /proc/PID/task/TID/stat; the
//! report, written when the server stops a moment later, must show at least that much and not much more.

mod common;

use std::time::{Duration, Instant};

use common::{
    client_socket, clock_ticks_per_second as ticks_per_second, echo_exchange, echo_size, require_lab,
    thread_cpu_ticks as thread_ticks, EchoOpts, Lab,
};

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn report_cpu_agrees_with_proc_for_the_worker_thread() {
    require_lab();
    let lab = Lab::new(1);
    let srv = lab.spawn_server(&lab.serve_args(&["--cores", "1", "--quiet"]));
    let sock = client_socket(&lab, false, 9000);
    let stats = echo_exchange(&sock, 0..20_000, echo_size, &EchoOpts::default()).expect("echo exchange");
    assert_eq!(stats.answered, 20_000);

    // Let the spinning worker accumulate a measurable amount of CPU time (ticks are 10 ms), polling /proc
    // until it shows at least half a second, then take the independent reading.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (tid, ticks) = loop {
        let reading = thread_ticks(srv.pid(), "shunt-q0").expect("worker thread shunt-q0 in /proc");
        if reading.1 * 2 >= ticks_per_second() || Instant::now() > deadline {
            break reading;
        }
        std::thread::yield_now();
    };
    let proc_ns = ticks * 1_000_000_000 / ticks_per_second();
    let fin = srv.stop();
    fin.assert_clean_exit();
    let cpu = &fin.report()["cpu"];
    let worker = &cpu["workers"][0];
    let report_ns = worker["user_ns"].as_u64().unwrap() + worker["system_ns"].as_u64().unwrap();
    eprintln!("worker tid {tid}: /proc {proc_ns} ns while running, report {report_ns} ns at stop");
    // The report is read later (at stop), so it may only be larger; by the time between the two readings
    // (the stop path takes well under a second) plus one tick of /proc rounding.
    let tick_ns = 1_000_000_000 / ticks_per_second();
    assert!(report_ns + tick_ns >= proc_ns, "report {report_ns} ns < /proc {proc_ns} ns");
    assert!(report_ns <= proc_ns + 2_000_000_000, "report {report_ns} ns far above /proc {proc_ns} ns");
    // Per-packet figures are the totals over the replies.
    let replies = fin.report_u64("tx_packets");
    assert_eq!(cpu["packets"].as_u64(), Some(replies));
    let per = cpu["worker_ns_per_packet"].as_f64().unwrap();
    assert!((per - report_ns as f64 / replies as f64).abs() < 1.0, "worker_ns_per_packet {per}");
    // Every core of the machine is accounted, and something ran.
    let cores = cpu["cores"].as_array().unwrap();
    assert_eq!(cores.len(), common::num_cpus(), "{cpu}");
    assert!(cpu["system_ns_per_packet"].as_f64().unwrap() > 0.0, "{cpu}");
}
