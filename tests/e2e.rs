//! End-to-end tests: the real binary in a two-namespace veth lab. Every test is a lab test: ignored by a plain
//! `cargo test`, run by `make test` (`cargo test --release --test e2e -- --include-ignored --test-threads=1`);
//! needs root; runs serially: the server pins busy workers and the machine may have only 2 cores. Every test
//! creates its own lab, which is torn down on drop, also on failure.

mod common;

use common::*;
use std::net::UdpSocket;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 9000;
const SOCKPERF_PORT: u16 = 11111;
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Checks that the JSON report has every documented field with the documented type.
fn assert_report_shape(fin: &Finished) {
    let r = fin.report();
    for key in ["rx_packets", "tx_packets"] {
        assert!(r.get(key).and_then(Value::as_u64).is_some(), "report lacks integer `{key}`\n{}", fin.describe());
    }
    for key in ["redirected", "passed", "malformed", "no_socket"] {
        assert!(json_u64(r, &format!("xdp.{key}")).is_some(), "report lacks integer `xdp.{key}`\n{}", fin.describe());
    }
    let workers = fin.workers();
    assert!(!workers.is_empty(), "report has no workers\n{}", fin.describe());
    for (i, w) in workers.iter().enumerate() {
        for key in [
            "queue",
            "core",
            "rx_packets",
            "tx_packets",
            "dropped_malformed",
            "dropped_bad_checksum",
            "dropped_by_handler",
            "tx_ring_full",
            "fill_ring_empty",
            "tx_kicks",
        ] {
            assert!(
                w.get(key).and_then(Value::as_u64).is_some(),
                "worker {i} lacks integer `{key}`\n{}",
                fin.describe()
            );
        }
        assert!(w.get("bind_mode").is_some(), "worker {i} lacks `bind_mode`\n{}", fin.describe());
    }
    let sum = |key: &str| workers.iter().map(|w| w.get(key).and_then(Value::as_u64).unwrap_or(0)).sum::<u64>();
    assert_eq!(
        sum("rx_packets"),
        fin.report_u64("rx_packets"),
        "workers' rx_packets do not add up\n{}",
        fin.describe()
    );
    assert_eq!(
        sum("tx_packets"),
        fin.report_u64("tx_packets"),
        "workers' tx_packets do not add up\n{}",
        fin.describe()
    );
}

fn worker_for_queue(fin: &Finished, queue: u64) -> &Value {
    fin.workers()
        .iter()
        .find(|w| w.get("queue").and_then(Value::as_u64) == Some(queue))
        .unwrap_or_else(|| panic!("report has no worker for queue {queue}\n{}", fin.describe()))
}

fn echo_or_panic(
    srv: &ServerProcess,
    sock: &UdpSocket,
    seqs: std::ops::Range<u64>,
    size: impl Fn(u64) -> usize,
) -> EchoStats {
    echo_exchange(sock, seqs, size, &EchoOpts::default())
        .unwrap_or_else(|e| panic!("echo failed: {e}\n{}", srv.describe()))
}

// -----------------------------------------------------------------------------------------------------
// The lab fixture itself (no server needed)
// -----------------------------------------------------------------------------------------------------

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn lab_fixture_connectivity_and_teardown() {
    require_lab();
    let lab = Lab::new(2);
    let (sns, cns) = (lab.server_ns(), lab.client_ns());
    assert!(netns_exists(&sns) && netns_exists(&cns));
    assert!(lab.server_if().len() <= 15 && lab.client_if().len() <= 15);
    assert!(lab.server_if().starts_with("shunt"));
    assert_ne!(lab.server_mac(), [0; 6]);
    assert_ne!(lab.server_mac(), lab.client_mac());
    // Nothing of the lab in the root namespace.
    let root_links = run_cmd(&["ip", "-o", "link", "show"], Duration::from_secs(10)).expect_success().stdout;
    assert!(!root_links.contains(lab.name()), "lab interface visible in root namespace:\n{root_links}");
    // Both queues exist on both ends.
    let link = lab.server_link_text();
    assert!(link.contains("numrxqueues 2"), "{link}");

    for (side, dst) in [(Side::Client, "198.18.0.1"), (Side::Client, "2001:2::1"), (Side::Server, "198.18.0.2")] {
        let out = lab.exec(side, &["ping", "-c", "2", "-i", "0.2", "-W", "2", dst], Duration::from_secs(20));
        assert!(out.success(), "ping {dst} from {side:?} failed:\n{}", out.combined());
    }

    // Sockets created by in_server/in_client live in those namespaces.
    for v6 in [false, true] {
        let bind = if v6 { format!("[{SERVER_V6}]:7777") } else { format!("{SERVER_V4}:7777") };
        let srv = lab.in_server(|| UdpSocket::bind(&bind).expect("bind in server ns"));
        srv.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let cli = client_socket(&lab, v6, 7777);
        let mut buf = [0u8; 64];
        let mut got = None;
        for _ in 0..20 {
            cli.send(b"fixture").unwrap();
            if let Ok((n, from)) = srv.recv_from(&mut buf) {
                got = Some((buf[..n].to_vec(), from));
                break;
            }
        }
        let (payload, from) = got.expect("datagram from client namespace never arrived");
        assert_eq!(payload, b"fixture");
        let want_ip: std::net::IpAddr = if v6 { CLIENT_V6.into() } else { CLIENT_V4.into() };
        assert_eq!(from.ip(), want_ip);
    }
    // A socket in the root namespace cannot bind lab addresses.
    assert!(UdpSocket::bind(format!("{SERVER_V4}:0")).is_err(), "198.18.0.1 is bindable in the root namespace");

    // XPS: client TX queue i pinned to CPU i (mod ncpus).
    let xps = lab
        .exec(
            Side::Client,
            &["sh", "-c", &format!("cat /sys/class/net/{}/queues/tx-*/xps_cpus", lab.client_if())],
            Duration::from_secs(10),
        )
        .expect_success()
        .stdout;
    let masks: Vec<u64> =
        xps.split_whitespace().map(|m| u64::from_str_radix(&m.replace(',', ""), 16).unwrap()).collect();
    assert_eq!(masks.len(), 2, "{xps}");
    assert_eq!(masks[0], 1, "{xps}");
    if num_cpus() > 1 {
        assert_eq!(masks[1], 2, "{xps}");
    }

    drop(lab);
    assert!(!netns_exists(&sns) && !netns_exists(&cns), "namespaces left after drop");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn lab_fixture_teardown_on_panic() {
    require_lab();
    let name = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new(1);
        *name.lock().unwrap() = lab.name().to_string();
        // A panic inside a namespace closure propagates to the caller.
        lab.in_client(|| panic!("deliberate panic inside the client namespace"));
    }));
    assert!(r.is_err(), "the panic did not propagate");
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(
        !netns_exists(&format!("{name}s")) && !netns_exists(&format!("{name}c")),
        "namespaces of lab {name} left after a panic"
    );
}

// -----------------------------------------------------------------------------------------------------
// Server behaviour
// -----------------------------------------------------------------------------------------------------

/// 10,000 datagrams of sizes 1..=1400 over IPv4 and IPv6 come back byte-identical; the report counts them.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn echo_v4_v6_10000_datagrams() {
    require_lab();
    let lab = Lab::new(1);
    let srv = lab.spawn_server(&lab.serve_args(&[]));
    let v4 = client_socket(&lab, false, ECHO_PORT);
    let v6 = client_socket(&lab, true, ECHO_PORT);

    let s4 = echo_or_panic(&srv, &v4, 0..5_000, echo_size);
    let s6 = echo_or_panic(&srv, &v6, 5_000..10_000, echo_size);
    let answered = s4.answered + s6.answered;
    let sent = s4.sent + s6.sent;
    let retransmits = s4.retransmits + s6.retransmits;
    assert_eq!(answered, 10_000);
    eprintln!("echo: v4 {s4:?}, v6 {s6:?}");

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_report_shape(&fin);
    assert!(!fin.stdout.trim().is_empty(), "no text report on stdout\n{}", fin.describe());
    let rx = fin.report_u64("rx_packets");
    let tx = fin.report_u64("tx_packets");
    assert!(rx >= 10_000 && tx >= 10_000, "rx_packets {rx} / tx_packets {tx} < 10000\n{}", fin.describe());
    if retransmits == 0 {
        assert_eq!(rx, 10_000, "rx_packets != datagrams sent\n{}", fin.describe());
        assert_eq!(tx, 10_000, "tx_packets != datagrams sent\n{}", fin.describe());
    } else {
        assert!(rx <= sent && tx <= sent, "server counted more than was sent ({sent})\n{}", fin.describe());
    }
    // Kernel sockets over veth leave only the pseudo-header sum in the checksum field (TX offload): accepted.
    for key in [
        "xdp.malformed",
        "xdp.no_socket",
        "workers.0.dropped_malformed",
        "workers.0.dropped_bad_checksum",
        "workers.0.dropped_by_handler",
    ] {
        assert_eq!(fin.report_u64(key), 0, "`{key}` is not 0 for well-formed traffic\n{}", fin.describe());
    }
    let redirected = fin.report_u64("xdp.redirected");
    assert!(redirected >= rx, "xdp.redirected {redirected} < rx_packets {rx}\n{}", fin.describe());
}

/// While the server runs, ICMP and UDP to other ports still reach the kernel.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn kernel_still_served() {
    require_lab();
    let lab = Lab::new(1);
    let srv = lab.spawn_server(&lab.serve_args(&[]));

    for dst in ["198.18.0.1", "2001:2::1"] {
        let out = lab.exec(Side::Client, &["ping", "-c", "3", "-i", "0.2", "-W", "2", dst], Duration::from_secs(30));
        assert!(out.success(), "ping {dst} failed while the server runs:\n{}\n{}", out.combined(), srv.describe());
    }

    for v6 in [false, true] {
        let bind = if v6 { format!("[{SERVER_V6}]:9999") } else { format!("{SERVER_V4}:9999") };
        let ksock = lab.in_server(|| UdpSocket::bind(&bind).expect("bind kernel socket in server ns"));
        ksock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let cli = client_socket(&lab, v6, 9999);
        let msg: &[u8] = if v6 { b"to-the-kernel-v6" } else { b"to-the-kernel-v4" };
        let mut buf = [0u8; 256];
        let mut ok = false;
        for _ in 0..15 {
            let _ = cli.send(msg);
            if let Ok((n, _)) = ksock.recv_from(&mut buf) {
                assert_eq!(&buf[..n], msg);
                ok = true;
                break;
            }
        }
        assert!(ok, "UDP to port 9999 ({bind}) never reached the kernel socket\n{}", srv.describe());
    }

    // And the served port is still served.
    let sock = client_socket(&lab, false, ECHO_PORT);
    let st = echo_or_panic(&srv, &sock, 0..200, |s| 16 + (s as usize % 200));

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_report_shape(&fin);
    let rx = fin.report_u64("rx_packets");
    if st.retransmits == 0 {
        assert_eq!(rx, 200, "rx_packets counts traffic that was not for the served port\n{}", fin.describe());
    }
    let passed = fin.report_u64("xdp.passed");
    assert!(passed >= 2, "xdp.passed = {passed}, but ping and UDP 9999 went through\n{}", fin.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sockperf_ping_pong() {
    require_lab();
    let lab = Lab::new(1);
    let srv = lab.spawn_server(&lab.serve_args(&["--handler", "sockperf", "--port", "11111"]));
    let port = SOCKPERF_PORT.to_string();
    let out = lab.exec(
        Side::Client,
        &[
            "taskset",
            "-c",
            "0",
            "sockperf",
            "ping-pong",
            "-i",
            "198.18.0.1",
            "-p",
            &port,
            "-t",
            "3",
            "-m",
            "64",
            "--full-rtt",
        ],
        Duration::from_secs(60),
    );
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let summary = common::parse_sockperf(&text).unwrap_or_else(|| {
        panic!("sockperf ping-pong produced no summary (no replies?):\n{}\n{}", out.combined(), srv.describe())
    });
    assert!(out.success(), "sockperf failed:\n{}\n{}", out.combined(), srv.describe());
    assert!(summary.received > 0, "sockperf received no replies:\n{}\n{}", out.combined(), srv.describe());
    assert!(summary.usec > 0.0, "sockperf summary latency is {}:\n{}", summary.usec, out.combined());
    eprintln!("sockperf: sent {} received {} full RTT avg {:.3} usec", summary.sent, summary.received, summary.usec);

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_report_shape(&fin);
    let rx = fin.report_u64("rx_packets");
    let tx = fin.report_u64("tx_packets");
    assert!(rx > 0 && tx > 0, "rx {rx} tx {tx}\n{}", fin.describe());
    assert!(
        tx >= summary.received,
        "server sent {tx} replies, sockperf counted {}\n{}",
        summary.received,
        fin.describe()
    );
    assert!(rx >= tx, "server replied more ({tx}) than it received ({rx})\n{}", fin.describe());
}

/// Two queues, two pinned workers: traffic from client threads pinned to CPU 0 and CPU 1 (XPS maps client TX
/// queue i to CPU i, and on veth the server RX queue is the client TX queue) reaches both workers.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn two_queues_both_workers_serve() {
    require_lab();
    assert!(num_cpus() >= 2, "this test needs at least 2 CPUs");
    let lab = Lab::new(2);
    // Only native XDP spreads veth traffic over RX queues: in generic (skb) mode veth records no RX queue
    // and every packet is seen on queue 0. So this test attaches natively whatever config/lab.toml says.
    let cfg = lab.lab_config_with(&[("attach_mode", "\"native\"")]).display().to_string();
    let sif = lab.server_if();
    let srv = lab.spawn_server(&["serve", "--config", &cfg, "--interface", &sif, "--queues", "0,1", "--cores", "0,1"]);
    const SOCKETS: u64 = 32;
    const PER_SOCKET: u64 = 32;
    let handles: Vec<_> = (0..2usize)
        .map(|cpu| {
            lab.spawn_in_client(move || -> Result<EchoStats, String> {
                pin_current_thread(cpu);
                let mut total = EchoStats::default();
                let socks: Vec<UdpSocket> = (0..SOCKETS)
                    .map(|_| {
                        let s = UdpSocket::bind(format!("{CLIENT_V4}:0")).expect("bind");
                        s.connect(format!("{SERVER_V4}:{ECHO_PORT}")).expect("connect");
                        s
                    })
                    .collect();
                for (k, s) in socks.iter().enumerate() {
                    let base = (cpu as u64 * SOCKETS + k as u64) * PER_SOCKET;
                    let st = echo_exchange(
                        s,
                        base..base + PER_SOCKET,
                        |q| 1 + (q as usize * 37) % 1400,
                        &EchoOpts::default(),
                    )?;
                    total.sent += st.sent;
                    total.answered += st.answered;
                    total.retransmits += st.retransmits;
                }
                Ok(total)
            })
        })
        .collect();
    let mut answered = 0;
    for (cpu, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(st)) => {
                eprintln!("client thread on CPU {cpu}: {st:?}");
                answered += st.answered;
            }
            Ok(Err(e)) => panic!("client thread on CPU {cpu}: {e}\n{}", srv.describe()),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
    assert_eq!(answered, 2 * SOCKETS * PER_SOCKET);
    let queue_stats = lab
        .exec(Side::Server, &["ethtool", "-S", &lab.server_if()], Duration::from_secs(10))
        .stdout
        .lines()
        .filter(|l| l.contains("xdp_packets") || l.contains("xdp_redirect"))
        .collect::<Vec<_>>()
        .join("\n");

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_report_shape(&fin);
    assert_eq!(fin.workers().len(), 2, "expected two workers\n{}", fin.describe());
    for q in 0..2 {
        let w = worker_for_queue(&fin, q);
        let rx = w.get("rx_packets").and_then(Value::as_u64).unwrap_or(0);
        let tx = w.get("tx_packets").and_then(Value::as_u64).unwrap_or(0);
        assert!(
            rx > 0 && tx > 0,
            "worker for queue {q}: rx {rx} tx {tx}\nveth per-queue stats:\n{queue_stats}\n{}",
            fin.describe()
        );
    }
    let cores: Vec<u64> = (0..2).map(|q| json_u64(worker_for_queue(&fin, q), "core").unwrap()).collect();
    assert_eq!(cores, vec![0, 1], "workers not on the requested cores\n{}", fin.describe());
}

/// SIGKILL under load: the XDP program goes away with the process, the kernel gets the port back, and a new
/// server can attach at once.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sigkill_under_load_detaches() {
    require_lab();
    let lab = Lab::new(1);
    let args = lab.serve_args(&[]);
    let mut srv = lab.spawn_server(&args);
    assert!(lab.server_xdp().is_some(), "server is ready but no XDP program is attached\n{}", srv.describe());

    let sock = client_socket(&lab, false, ECHO_PORT);
    sock.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, echoes, sent) = (stop.clone(), echoes.clone(), sent.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            let payload = [0xabu8; 64];
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && sent.load(Ordering::Relaxed) < 2_000_000
            {
                for _ in 0..32 {
                    if sock.send(&payload).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while let Ok(n) = sock.recv(&mut buf) {
                    if n == payload.len() {
                        echoes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::yield_now();
            }
        })
    };
    let wait_until = Instant::now() + Duration::from_secs(10);
    while echoes.load(Ordering::Relaxed) < 1_000 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let echoed = echoes.load(Ordering::Relaxed);
    if echoed < 1_000 {
        stop.store(true, Ordering::Relaxed);
        let _ = load.join();
        panic!(
            "only {echoed} echoes of {} datagrams under load within 10 s\n{}",
            sent.load(Ordering::Relaxed),
            srv.describe()
        );
    }
    let killed = srv.kill();
    assert_eq!(killed.status.signal(), Some(libc::SIGKILL), "server was not killed by SIGKILL\n{}", killed.describe());
    // Traffic keeps coming while the kernel takes the program away: let the load send another 1,000 datagrams.
    let sent_at_kill = sent.load(Ordering::Relaxed);
    let wait_until = Instant::now() + Duration::from_secs(5);
    while sent.load(Ordering::Relaxed) < sent_at_kill + 1_000 && Instant::now() < wait_until {
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    eprintln!("load: sent {} echoes {}", sent.load(Ordering::Relaxed), echoes.load(Ordering::Relaxed));

    lab.assert_no_xdp_within(Duration::from_secs(5));

    // The kernel has port 9000 back.
    {
        let ksock =
            lab.in_server(|| UdpSocket::bind(format!("{SERVER_V4}:{ECHO_PORT}")).expect("bind 9000 in server ns"));
        ksock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let cli = client_socket(&lab, false, ECHO_PORT);
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ok = false;
        'outer: while Instant::now() < deadline {
            let _ = cli.send(b"after-kill");
            while let Ok((n, _)) = ksock.recv_from(&mut buf) {
                if &buf[..n] == b"after-kill" {
                    ok = true;
                    break 'outer;
                }
            }
        }
        assert!(ok, "after SIGKILL, UDP 9000 did not reach a kernel socket\n{}", lab.server_link_text());
    }

    // Restart at once: echo works.
    let srv2 = lab.spawn_server(&args);
    let sock2 = client_socket(&lab, false, ECHO_PORT);
    let st = echo_or_panic(&srv2, &sock2, 0..500, echo_size);
    assert_eq!(st.answered, 500);
    let fin = srv2.stop();
    fin.assert_clean_exit();
    assert!(fin.report_u64("rx_packets") >= 500, "{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

// -----------------------------------------------------------------------------------------------------
// Start-up errors: exit code 2, a message naming the culprit, nothing attached
// -----------------------------------------------------------------------------------------------------

fn assert_exit_2_naming(fin: &Finished, needle: &str) {
    assert_eq!(fin.code(), Some(2), "expected exit code 2\n{}", fin.describe());
    assert!(
        fin.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr does not name `{needle}`\n{}",
        fin.describe()
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn startup_error_unknown_config_key() {
    require_lab();
    let lab = Lab::new(1);
    let good = std::fs::read_to_string(lab_config()).expect("read config/lab.toml");
    let bad = lab.tmp_path("bad-config", "toml");
    std::fs::write(&bad, format!("shunt_bogus_key = 1\n{good}")).unwrap();

    let ok = run_cmd(&[shunt_bin(), "check-config", &lab_config().display().to_string()], EXIT_TIMEOUT);
    assert_eq!(ok.code(), Some(0), "check-config rejects config/lab.toml:\n{}", ok.combined());
    let out = run_cmd(&[shunt_bin(), "check-config", &bad.display().to_string()], EXIT_TIMEOUT);
    assert_eq!(out.code(), Some(2), "check-config accepts an unknown key:\n{}", out.combined());
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("shunt_bogus_key"),
        "check-config does not name the bad key:\n{}",
        out.combined()
    );

    let bad_s = bad.display().to_string();
    let sif = lab.server_if();
    let fin = lab.run_server_expect_exit(&["serve", "--config", &bad_s, "--interface", &sif], EXIT_TIMEOUT);
    assert_exit_2_naming(&fin, "shunt_bogus_key");
    lab.assert_no_xdp_within(Duration::from_secs(1));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn startup_error_unknown_interface() {
    require_lab();
    let lab = Lab::new(1);
    let cfg = lab_config().display().to_string();
    let fin = lab.run_server_expect_exit(&["serve", "--config", &cfg, "--interface", "shuntnope0"], EXIT_TIMEOUT);
    assert_exit_2_naming(&fin, "shuntnope0");
    lab.assert_no_xdp_within(Duration::from_secs(1));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn startup_error_bad_queues_and_cores() {
    require_lab();
    let lab = Lab::new(2);
    let absent_core = (num_cpus() + 64).to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--queues", "0,1", "--cores", "0,0"], "core"),
        (vec!["--queues", "7", "--cores", "1"], "queue"),
        (vec!["--cores", absent_core.as_str()], "core"),
    ];
    for (extra, needle) in cases {
        let fin = lab.run_server_expect_exit(&lab.serve_args(&extra), EXIT_TIMEOUT);
        assert_exit_2_naming(&fin, needle);
        lab.assert_no_xdp_within(Duration::from_secs(1));
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn startup_error_missing_privilege() {
    require_lab();
    let lab = Lab::new(1);
    // Root uid, but no capabilities at all after exec.
    let wrapper = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"];
    let fin = lab.run_server_expect_exit_with(&wrapper, &lab.serve_args(&[]), EXIT_TIMEOUT);
    assert_eq!(fin.code(), Some(2), "expected exit code 2 without capabilities\n{}", fin.describe());
    let err = fin.stderr.to_lowercase();
    assert!(
        err.contains("cap_") || err.contains("capabilit"),
        "stderr does not name the missing capability\n{}",
        fin.describe()
    );
    lab.assert_no_xdp_within(Duration::from_secs(1));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn startup_error_queue_taken_by_another_server() {
    require_lab();
    let lab = Lab::new(1);
    let first = lab.spawn_server(&lab.serve_args(&[]));
    // A second server on the same queue waits a bounded time for the queue to be released (it would be,
    // were the first one exiting), then gives up with exit 2 and the kernel's reason.
    let started = Instant::now();
    let second = lab.run_server_expect_exit(&lab.serve_args(&["--cores", "0"]), Duration::from_secs(20));
    assert_exit_2_naming(&second, "busy");
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up without waiting for the queue");
    // The first server is untouched: still attached, still answering.
    assert!(lab.server_xdp().is_some(), "the first server's program is gone:\n{}", lab.server_link_text());
    let sock = client_socket(&lab, false, 9000);
    echo_exchange(&sock, 0..100, echo_size, &EchoOpts::default()).expect("the first server still echoes");
    let fin = first.stop();
    fin.assert_clean_exit();
}

// -----------------------------------------------------------------------------------------------------
// UDP checksum validation: frames built byte for byte and sent through an AF_PACKET socket (RawPort)
// -----------------------------------------------------------------------------------------------------

/// Source port of the hand-built requests; a kernel UDP socket in the client namespace receives the replies.
const CSUM_CLIENT_PORT: u16 = 47_123;

/// What a hand-built request carries in its UDP checksum field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UdpSum {
    /// The full checksum.
    Full,
    /// The full checksum, then one payload byte flipped: corrupted on the way.
    PayloadFlipped,
    /// Only the folded pseudo-header sum, as a sender with TX checksum offload leaves it.
    PseudoHeaderOnly,
    /// Zero: no checksum (allowed over IPv4 only).
    Zero,
}

/// A request frame from the client to the echo port (payload as given, before any corruption) and the payload
/// as it goes on the wire.
fn checksum_request(lab: &Lab, v6: bool, payload: &[u8], sum: UdpSum) -> (Vec<u8>, Vec<u8>) {
    use shunt::packet::{checksum, field::udp, write_request, FlowSpec};
    let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) = if v6 {
        ((CLIENT_V6, CSUM_CLIENT_PORT).into(), (SERVER_V6, ECHO_PORT).into())
    } else {
        ((CLIENT_V4, CSUM_CLIENT_PORT).into(), (SERVER_V4, ECHO_PORT).into())
    };
    let spec = FlowSpec { src_mac: lab.client_mac(), dst_mac: lab.server_mac(), vlan_tci: None, src, dst };
    let off = spec.payload_offset();
    let mut frame = vec![0u8; off + payload.len()];
    frame[off..].copy_from_slice(payload);
    let len = write_request(&mut frame, &spec, payload.len()).expect("build request");
    assert_eq!(len, frame.len());
    let sum_at = off - udp::HEADER_LEN + udp::CHECKSUM.start;
    match sum {
        UdpSum::Full => {}
        UdpSum::PayloadFlipped => frame[off + payload.len() / 2] ^= 0x01,
        UdpSum::PseudoHeaderOnly => {
            let udp_len = udp::HEADER_LEN + payload.len();
            let pseudo = if v6 {
                checksum::pseudo_header_v6(&CLIENT_V6.octets(), &SERVER_V6.octets(), udp_len)
            } else {
                checksum::pseudo_header_v4(CLIENT_V4.octets(), SERVER_V4.octets(), udp_len)
            };
            let folded = checksum::fold(pseudo);
            assert_ne!(folded, 0, "a pseudo-header sum of 0 would read as 'no checksum'");
            frame[sum_at..sum_at + 2].copy_from_slice(&folded.to_be_bytes());
        }
        UdpSum::Zero => frame[sum_at..sum_at + 2].copy_from_slice(&[0, 0]),
    }
    let wire_payload = frame[off..].to_vec();
    (frame, wire_payload)
}

/// Sends one hand-built request per case (IPv4 or IPv6, checksum kind) and then an IPv4 sentinel with a full
/// checksum; the server answers in order on its one queue, so once the sentinel's reply is in, every reply
/// that was coming has come. Returns, per case, whether it was answered (an echo of its wire payload).
fn checksum_cases(lab: &Lab, srv: &ServerProcess, cases: &[(bool, UdpSum)]) -> Vec<bool> {
    let sender = RawPort::open(lab, Side::Client);
    let (r4, r6) = lab.in_client(|| {
        let r4 = UdpSocket::bind((CLIENT_V4, CSUM_CLIENT_PORT)).expect("bind v4 reply socket");
        let r6 = UdpSocket::bind((CLIENT_V6, CSUM_CLIENT_PORT)).expect("bind v6 reply socket");
        (r4, r6)
    });
    r6.set_nonblocking(true).unwrap();
    r4.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut wire = Vec::new();
    for (i, &(v6, sum)) in cases.iter().enumerate() {
        let mut p = format!("checksum case {i}: {sum:?} over IPv{}", if v6 { 6 } else { 4 }).into_bytes();
        p.resize(48, b'.');
        let (frame, on_wire) = checksum_request(lab, v6, &p, sum);
        sender.send(&frame).expect("send on AF_PACKET");
        wire.push(on_wire);
    }
    let sentinel = b"checksum sentinel: the last request, answered last".to_vec();
    sender.send(&checksum_request(lab, false, &sentinel, UdpSum::Full).0).expect("send on AF_PACKET");

    let mut replies: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match r4.recv(&mut buf) {
            Ok(n) if buf[..n] == sentinel[..] => break,
            Ok(n) => replies.push(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("recv: {e}"),
        }
        assert!(Instant::now() < deadline, "no reply to the sentinel within 10 s\n{}", srv.describe());
    }
    // Replies delivered before the sentinel's, to either socket.
    r4.set_nonblocking(true).unwrap();
    for s in [&r4, &r6] {
        while let Ok(n) = s.recv(&mut buf) {
            replies.push(buf[..n].to_vec());
        }
    }
    for r in &replies {
        assert!(wire.contains(r), "a reply matching no request: {:?}", String::from_utf8_lossy(r));
    }
    let answered: Vec<bool> = wire.iter().map(|w| replies.iter().filter(|r| *r == w).count() == 1).collect();
    assert_eq!(replies.len(), answered.iter().filter(|a| **a).count(), "duplicate replies");
    answered
}

/// A request whose UDP checksum does not verify is counted and never answered; a full checksum, the
/// pseudo-header-only checksum of TX offload and (over IPv4) no checksum at all are answered. With
/// `--no-checksum-check` the corrupted request is answered too.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn udp_checksum_validation() {
    require_lab();
    let lab = Lab::new(1);
    let cases = [
        (false, UdpSum::Full),
        (false, UdpSum::PayloadFlipped),
        (false, UdpSum::PseudoHeaderOnly),
        (false, UdpSum::Zero),
        (true, UdpSum::Full),
        (true, UdpSum::PayloadFlipped),
        (true, UdpSum::PseudoHeaderOnly),
        (true, UdpSum::Zero), // RFC 8200: zero is not "no checksum" over IPv6
    ];
    let bad = |v6: bool, sum: UdpSum| sum == UdpSum::PayloadFlipped || (v6 && sum == UdpSum::Zero);
    let total = cases.len() as u64 + 1; // and the sentinel

    for check in [true, false] {
        let extra: &[&str] = if check { &[] } else { &["--no-checksum-check"] };
        let srv = lab.spawn_server(&lab.serve_args(extra));
        let answered = checksum_cases(&lab, &srv, &cases);
        let expected: Vec<bool> = cases.iter().map(|&(v6, sum)| !check || !bad(v6, sum)).collect();
        let fin = srv.stop();
        fin.assert_clean_exit();
        let described: Vec<String> = cases
            .iter()
            .zip(&answered)
            .map(|((v6, sum), a)| {
                format!("IPv{} {sum:?}: {}", if *v6 { 6 } else { 4 }, if *a { "answered" } else { "not answered" })
            })
            .collect();
        assert_eq!(answered, expected, "checking {check}: {described:#?}\n{}", fin.describe());
        let dropped = if check { cases.iter().filter(|&&(v6, sum)| bad(v6, sum)).count() as u64 } else { 0 };
        assert_eq!(fin.report_u64("xdp.redirected"), total, "requests redirected\n{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.rx_packets"), total, "requests received\n{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.tx_packets"), total - dropped, "replies sent\n{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.dropped_bad_checksum"), dropped, "bad checksums\n{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.dropped_malformed"), 0, "malformed\n{}", fin.describe());
        eprintln!("checksum check {}: {described:?}; dropped_bad_checksum {dropped}", if check { "on" } else { "off" });
    }
}
