//! Every datapath and I/O model serves the same handlers, through the real binary in the lab: the
//! 10,000-datagram echo over IPv4 and IPv6 (byte for byte) and `sockperf ping-pong` against the sockperf
//! handler, for `--mode afxdp` (each poll mode is covered by tests/poll_modes.rs), `--mode in-kernel` (the server
//! inside the kernel) and `--mode socket` with each `--io` model. The report names the mode and I/O model and carries CPU per packet in all of them.
//! A socket whose receive buffer overflows has its kernel drops counted (sent = received + dropped).

mod common;

use std::time::Duration;

use common::{client_socket, echo_exchange, echo_size, require_lab, EchoOpts, Lab, Side};

const IOS: [&str; 6] = ["blocking", "nonblocking", "epoll", "signal", "mmsg", "io_uring"];

/// `--mode` and `--io` arguments of every combination.
fn combinations() -> Vec<(&'static str, Option<&'static str>)> {
    let mut v = vec![("afxdp", None), ("in-kernel", None)];
    v.extend(IOS.iter().map(|io| ("socket", Some(*io))));
    v
}

fn mode_args(mode: &'static str, io: Option<&'static str>) -> Vec<&'static str> {
    let mut a = vec!["--cores", "1", "--quiet", "--mode", mode];
    if let Some(io) = io {
        a.extend(["--io", io]);
    }
    a
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn ten_thousand_echoes_over_ipv4_and_ipv6_in_every_mode_and_io_model() {
    require_lab();
    let lab = Lab::new(1);
    for (mode, io) in combinations() {
        let srv = lab.spawn_server(&lab.serve_args(&mode_args(mode, io)));
        for v6 in [false, true] {
            let sock = client_socket(&lab, v6, 9000);
            let st = echo_exchange(&sock, 0..10_000, echo_size, &EchoOpts::default()).unwrap_or_else(|e| {
                panic!("{mode}/{io:?} over IPv{}: {e}\n{}", if v6 { 6 } else { 4 }, srv.describe())
            });
            assert_eq!(st.answered, 10_000, "{mode}/{io:?}");
        }
        let fin = srv.stop();
        fin.assert_clean_exit();
        let r = fin.report();
        assert_eq!(r["mode"].as_str(), Some(mode), "{}", fin.describe());
        if let Some(io) = io {
            assert_eq!(r["io"].as_str(), Some(io), "{}", fin.describe());
        }
        assert!(fin.report_u64("tx_packets") >= 20_000, "{mode}/{io:?}: {}", fin.describe());
        if mode == "in-kernel" {
            // The server inside the kernel: no workers, no in-server latency; its own counters and the
            // machine's CPU per reply.
            assert!(fin.report_u64("in_kernel.answered") >= 20_000, "{}", fin.describe());
            assert!(r["cpu"]["system_ns_per_packet"].as_f64().is_some_and(|v| v > 0.0), "in-kernel: no CPU figure");
            lab.assert_no_xdp_within(Duration::from_secs(5));
            continue;
        }
        assert!(r["cpu"]["worker_ns_per_packet"].as_f64().is_some_and(|v| v > 0.0), "{mode}/{io:?}: no CPU figure");
        assert_eq!(r["frames_lost"].as_i64(), if mode == "afxdp" { Some(0) } else { None }, "{mode}/{io:?}");
        // In-server latency: every reply timed from its pick-up (service), and from the XDP stamp (AF_XDP) or
        // the kernel's receive timestamp (sockets) where the packet carried one (the rest are `unstamped`).
        let tx = fin.report_u64("tx_packets");
        let service = fin.report_u64("latency.service_ns.count");
        let stamped = fin.report_u64("latency.total_ns.count");
        let unstamped = fin.report_u64("latency.unstamped");
        assert_eq!(service, tx, "{mode}/{io:?}: replies timed\n{}", fin.describe());
        assert_eq!(stamped + unstamped, tx, "{mode}/{io:?}: stamped + unstamped\n{}", fin.describe());
        assert!(stamped * 100 >= tx * 99, "{mode}/{io:?}: only {stamped} of {tx} replies carried a receive stamp");
        if mode == "afxdp" {
            lab.assert_no_xdp_within(Duration::from_secs(5));
        }
    }
}

/// `--mode xdp`, the old name of `in-kernel`, still serves for one release: it warns at start-up, saying what
/// to write instead, and the report names the mode `in-kernel`.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn the_old_in_kernel_mode_name_still_serves_with_a_deprecation_warning() {
    require_lab();
    let lab = Lab::new(1);
    let srv = lab.spawn_server(&lab.serve_args(&mode_args("xdp", None)));
    let sock = client_socket(&lab, false, 9000);
    let st = echo_exchange(&sock, 0..100, echo_size, &EchoOpts::default())
        .unwrap_or_else(|e| panic!("--mode xdp: {e}\n{}", srv.describe()));
    assert_eq!(st.answered, 100, "--mode xdp");
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert!(
        fin.stderr.contains("deprecated") && fin.stderr.contains("--mode \"in-kernel\""),
        "no deprecation warning\n{}",
        fin.describe()
    );
    assert_eq!(fin.report()["mode"].as_str(), Some("in-kernel"), "{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sockperf_ping_pong_completes_in_every_mode_and_io_model() {
    require_lab();
    let lab = Lab::new(1);
    for (mode, io) in combinations() {
        let mut args = mode_args(mode, io);
        args.extend(["--handler", "sockperf", "--port", "11111"]);
        let srv = lab.spawn_server(&lab.serve_args(&args));
        let out = lab.exec(
            Side::Client,
            &["taskset", "-c", "0", "sockperf", "ping-pong", "-i", "198.18.0.1", "-p", "11111", "-t", "1", "-m", "64"],
            Duration::from_secs(30),
        );
        let text = format!("{}\n{}", out.stdout, out.stderr);
        assert!(out.success(), "{mode}/{io:?}: sockperf failed:\n{text}\n{}", srv.describe());
        let summary = common::parse_sockperf(&text).unwrap_or_else(|| {
            panic!("{mode}/{io:?}: sockperf printed no latency summary (no replies?):\n{text}\n{}", srv.describe())
        });
        eprintln!("{mode}/{}: {} replies, {} usec", io.unwrap_or("-"), summary.received, summary.usec);
        let fin = srv.stop();
        fin.assert_clean_exit();
        assert!(summary.received > 100, "{mode}/{io:?}: sockperf received {} replies", summary.received);
        assert!(fin.report_u64("tx_packets") >= summary.received, "{mode}/{io:?}: {}", fin.describe());
    }
}

/// The process that runs the thread named `name`, among `pid` and its descendants.
fn process_with_thread(pid: u32, name: &str) -> Option<u32> {
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            if std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name) {
                return Some(p);
            }
            if let Ok(children) = std::fs::read_to_string(t.path().join("children")) {
                todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    None
}

/// The state letter of process `pid` (`T`: stopped).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A kernel socket whose receive buffer overflows loses datagrams in the kernel, where the worker's own
/// counters cannot see them: the server reads the socket's drop count when it stops (`kernel.rx_dropped`),
/// so requests sent = replies + drops. The server is stopped (SIGSTOP) while 400 requests arrive at a
/// 4,096-byte receive buffer (some 8 KiB with the kernel's doubling: a handful of datagrams), then continued.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_full_socket_receive_buffer_is_counted_as_kernel_drops() {
    require_lab();
    const SENT: u64 = 400;
    let lab = Lab::new(1);
    let text = std::fs::read_to_string(common::lab_config()).expect("config/lab.toml");
    let config = lab.tmp_path("small-receive-buffer", "toml");
    std::fs::write(&config, format!("{text}\n[socket]\nreceive_buffer = 4096\n")).expect("write config");
    let config = config.display().to_string();
    let server_if = lab.server_if();
    for io in ["epoll", "io_uring"] {
        let args = [
            "serve",
            "--config",
            &config,
            "--interface",
            &server_if,
            "--mode",
            "socket",
            "--io",
            io,
            "--cores",
            "1",
            "--quiet",
            "--port",
            "9000",
        ];
        let srv = lab.spawn_server(&args);
        let pid = process_with_thread(srv.pid(), "shunt-q0")
            .unwrap_or_else(|| panic!("{io}: no worker thread shunt-q0\n{}", srv.describe()));
        let sock = client_socket(&lab, false, 9000);
        sock.set_read_timeout(Some(Duration::from_secs(1))).expect("SO_RCVTIMEO");
        // SAFETY: kill has no memory preconditions; `pid` is the server this test started, still running.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) }, 0, "SIGSTOP");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while process_state(pid) != Some('T') {
            assert!(std::time::Instant::now() < deadline, "{io}: the server is not stopped 5 s after SIGSTOP");
            std::thread::yield_now();
        }
        for seq in 0..SENT {
            let mut payload = [0u8; 64];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            sock.send(&payload).expect("send");
        }
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) }, 0, "SIGCONT");
        // Replies until a second passes without one (the few the buffer held come back at once).
        let mut replies = 0u64;
        let mut buf = [0u8; 128];
        while sock.recv(&mut buf).is_ok() {
            replies += 1;
        }
        let fin = srv.stop();
        fin.assert_clean_exit();
        let dropped = fin.report_u64("workers.0.kernel.rx_dropped");
        let rx = fin.report_u64("workers.0.rx_packets");
        eprintln!("{io}: {SENT} sent, {rx} received and answered ({replies} replies), {dropped} dropped by the kernel");
        assert!(dropped > 0, "{io}: {SENT} requests into a 4 KiB buffer and no drop counted\n{}", fin.describe());
        assert_eq!(rx + dropped, SENT, "{io}: received + dropped in the kernel = sent\n{}", fin.describe());
        assert_eq!(replies, rx, "{io}: every received request answered\n{}", fin.describe());
    }
}
