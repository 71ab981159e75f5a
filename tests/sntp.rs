//! The SNTP example (examples/sntp.rs, a handler written on shunt's public API) in the lab: Debian's NTP client
//! (`sntp`, ntpsec's ntpdig) queries it over IPv4 and IPv6 and accepts the reply; a socket in the client
//! namespace checks the reply's fields and that what is not a client request goes unanswered; the server's
//! report counts it all, and SIGTERM stops it cleanly.
//!
//! The test builds nothing: it runs `target/<profile>/examples/sntp`, which `cargo build --release --examples`
//! makes (cargo hands integration tests the paths of binaries, not of examples). A missing or stale one fails
//! the test, naming that command.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// The sntp client's own bound on one query, and ours on the whole command.
const CLIENT_TIMEOUT_S: &str = "3";
const CLIENT_BOUND: Duration = Duration::from_secs(20);
/// Seconds from 1900 (NTP era 0) to 1970.
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// `target/<profile>/examples/sntp` (see [`common::example_bin`]).
fn example_bin() -> PathBuf {
    common::example_bin("sntp")
}

/// Runs Debian's `sntp` in the client namespace against `server`, in JSON output, and returns its output.
fn sntp_query(lab: &Lab, family: &str, server: &str) -> CmdOutput {
    let out = lab.exec(Side::Client, &["sntp", family, "-j", "-t", CLIENT_TIMEOUT_S, server], CLIENT_BOUND);
    println!("{}", out.combined());
    out
}

/// What `sntp -j` printed about the server it accepted.
fn accepted(out: &CmdOutput) -> Value {
    assert!(out.success(), "sntp did not accept the server's reply:\n{}", out.combined());
    let line = out.stdout.lines().find(|l| l.trim_start().starts_with('{')).unwrap_or_else(|| {
        panic!("sntp printed no JSON line:\n{}", out.combined());
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("sntp's line is not JSON ({e}):\n{}", out.combined()))
}

fn unix_now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

/// NTP timestamp → Unix nanoseconds (era 0).
fn ntp_to_unix_ns(ts: u64) -> u64 {
    ((ts >> 32) - NTP_UNIX_OFFSET_SECS) * 1_000_000_000 + (((ts & 0xFFFF_FFFF) * 1_000_000_000) >> 32)
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(p[at..at + 4].try_into().unwrap())
}

fn be64(p: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(p[at..at + 8].try_into().unwrap())
}

/// A client request: LI 3 (unsynchronised, as clients send), `version`, `mode`, poll 6, and a transmit
/// timestamp that is the current time, padded to `len` bytes (past 48: stand-ins for extension fields / MAC).
fn request(version: u8, mode: u8, len: usize) -> (Vec<u8>, u64) {
    let ns = unix_now_ns();
    let transmit = ((ns / 1_000_000_000 + NTP_UNIX_OFFSET_SECS) << 32) | (((ns % 1_000_000_000) << 32) / 1_000_000_000);
    let mut p = vec![0u8; len.max(48)];
    p[0] = 3 << 6 | version << 3 | mode;
    p[2] = 6;
    p[40..48].copy_from_slice(&transmit.to_be_bytes());
    for (i, b) in p.iter_mut().enumerate().skip(48) {
        *b = i as u8;
    }
    p.truncate(len);
    (p, transmit)
}

/// The good request's reply, and the times around the exchange.
struct Exchange {
    reply: Vec<u8>,
    /// The request's transmit timestamp.
    transmit: u64,
    /// Unix ns just before the request was sent, and just after the reply came.
    before: u64,
    after: u64,
}

/// From a socket in the client namespace: three datagrams the server must not answer (a mode 6 control query,
/// an NTPv5 request, a 47-byte runt), then one good NTPv4 request carrying 20 more bytes (a stand-in MAC).
/// Returns the one reply that came back. The server answers one flow in order, so a reply to any of the first
/// three would arrive before it.
fn raw_exchange(lab: &Lab, server: SocketAddr, source_port: u16) -> Exchange {
    lab.in_client(move || {
        let sock = UdpSocket::bind(("0.0.0.0", source_port)).expect("bind a client socket");
        sock.connect(server).expect("connect");
        let mode6 = [2 << 3 | 6, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]; // NTPv2 control: READVAR, sequence 1
        sock.send(&mode6).expect("send the mode 6 query");
        sock.send(&request(5, 3, 48).0).expect("send the v5 request");
        sock.send(&request(4, 3, 47).0).expect("send the runt");
        let before = unix_now_ns();
        let (good, transmit) = request(4, 3, 68);
        sock.send(&good).expect("send the request");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply from the SNTP server within 5 s");
            sock.set_read_timeout(Some(left)).expect("set a read timeout");
            match sock.recv(&mut buf) {
                Ok(n) => return Exchange { reply: buf[..n].to_vec(), transmit, before, after: unix_now_ns() },
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("recv from the SNTP server: {e}"),
            }
        }
    })
}

/// What the server's flags say its replies carry.
struct Expect {
    leap: u8,
    stratum: u8,
    precision: i8,
    reference_id: [u8; 4],
    /// Whether requests carry a receive stamp (XDP hook or kernel socket), which the receive field then is.
    stamped: bool,
}

/// Checks the reply to [`raw_exchange`]'s good request.
fn check_reply(x: &Exchange, want: &Expect) {
    let reply = &x.reply[..];
    assert_eq!(
        reply.len(),
        48,
        "the reply is the NTP header alone, the request's 20 more bytes not echoed: {reply:02x?}"
    );
    assert_eq!(reply[0], want.leap << 6 | 4 << 3 | 4, "LI {}, version 4 echoed, mode 4: {reply:02x?}", want.leap);
    assert_eq!(reply[1], want.stratum, "stratum");
    assert_eq!(reply[2], 6, "poll copied");
    assert_eq!(reply[3] as i8, want.precision, "precision");
    assert_eq!(be32(reply, 4), 0, "root delay");
    assert_eq!(be32(reply, 8), 7, "root dispersion: 100 µs in 16.16 seconds, rounded up");
    assert_eq!(reply[12..16], want.reference_id, "reference id");
    assert_eq!(be64(reply, 24), x.transmit, "originate = the request's transmit timestamp");
    let (receive, transmit) = (ntp_to_unix_ns(be64(reply, 32)), ntp_to_unix_ns(be64(reply, 40)));
    assert!(receive <= transmit, "receive {receive} after transmit {transmit}");
    if want.stamped {
        // The receive field is the packet's stamp (XDP hook or kernel socket), taken before the worker's
        // once-per-batch clock reading that gives transmit: strictly earlier.
        assert!(receive < transmit, "receive = transmit = {receive}: the packet's receive stamp was not used");
    } else {
        assert_eq!(receive, transmit, "no stamp: both are the batch's clock reading");
    }
    // Both namespaces read the same clock, the server between our two readings (1 ns of rounding allowed).
    for (what, t) in [("receive", receive), ("transmit", transmit)] {
        assert!(x.before <= t + 1 && t <= x.after, "{what} time {t} outside [{}, {}]", x.before, x.after);
    }
    let reference = ntp_to_unix_ns(be64(reply, 16));
    assert!(reference <= receive && receive - reference < 1_000_000_000, "reference {reference}, receive {receive}");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sntp_example_answers_debian_sntp_over_ipv4_and_ipv6() {
    require_lab();
    let bin = example_bin();
    let lab = Lab::new(1);
    let sif = lab.server_if();
    let cfg = lab_config().display().to_string();
    let srv = lab.spawn_program(
        &bin,
        &["--config", &cfg, "--interface", &sif, "--port", "123", "--stratum", "1", "--reference", "GPS"],
    );

    for (family, server) in [("-4", lab.server_v4().to_string()), ("-6", lab.server_v6().to_string())] {
        let out = sntp_query(&lab, family, &server);
        let v = accepted(&out);
        assert_eq!(v["ip"].as_str(), Some(server.as_str()), "answered by the lab's server:\n{}", out.combined());
        assert_eq!(v["stratum"].as_u64(), Some(1), "{}", out.combined());
        assert_eq!(v["leap"].as_str(), Some("no-leap"), "{}", out.combined());
        let offset = v["offset"].as_f64().unwrap_or_else(|| panic!("no offset:\n{}", out.combined()));
        // One clock for both namespaces: the offset is at most half the round trip (a Python client's, so
        // allow 50 ms on a loaded 2-core machine).
        assert!(offset.abs() < 0.05, "offset {offset} s against the same clock:\n{}", out.combined());
        let distance = v["precision"].as_f64().unwrap_or(f64::NAN);
        assert!(
            distance < 0.001,
            "synchronisation distance {distance} s (root dispersion 100 µs):\n{}",
            out.combined()
        );
    }

    let x = raw_exchange(&lab, SocketAddr::from((lab.server_v4(), 123)), 0);
    check_reply(&x, &Expect { leap: 0, stratum: 1, precision: -20, reference_id: *b"GPS\0", stamped: true });
    // ntpd queries from port 123, which the default reflection filter (limits.deny_source_ports) lists: the
    // handler declares it as its clients' port, so the example, configured as its docs say, answers it.
    let x = raw_exchange(&lab, SocketAddr::from((lab.server_v4(), 123)), 123);
    check_reply(&x, &Expect { leap: 0, stratum: 1, precision: -20, reference_id: *b"GPS\0", stamped: true });

    let fin = srv.stop();
    fin.assert_clean_exit();
    // Four replies (two to sntp, two to the sockets), six datagrams refused by the handler, nothing filtered.
    assert_eq!(fin.report_u64("xdp.filtered"), 0, "{}", fin.describe());
    assert_eq!(fin.report_u64("tx_packets"), 4, "{}", fin.describe());
    assert_eq!(fin.report_u64("rx_packets"), 10, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.dropped_by_handler"), 6, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.dropped_malformed"), 0, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.dropped_amplification"), 0, "{}", fin.describe());
    assert_eq!(fin.report.as_ref().and_then(|r| r["handler"].as_str()), Some("sntp"), "{}", fin.describe());
    // The handler's own per-worker counters, logged as the worker stops.
    let line = fin.stderr.lines().find(|l| l.contains("sntp worker stopped")).unwrap_or_else(|| {
        panic!("no `sntp worker stopped` line\n{}", fin.describe());
    });
    assert!(line.contains("answered=4") && line.contains("refused=6"), "{line}\n{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sntp_example_flags_reach_the_wire_and_the_alarm_is_refused_by_the_client() {
    require_lab();
    let bin = example_bin();
    let lab = Lab::new(1);
    let sif = lab.server_if();
    let cfg = lab_config().display().to_string();
    let srv = lab.spawn_program(
        &bin,
        &[
            "--config",
            &cfg,
            "--interface",
            &sif,
            "--port",
            "123",
            "--stratum",
            "3",
            "--reference",
            "198.18.0.9",
            "--precision",
            "-10",
            "--leap",
            "unsynchronised",
        ],
    );

    // The server answers, and the client refuses to use an unsynchronised server.
    let out = sntp_query(&lab, "-4", &lab.server_v4().to_string());
    assert_eq!(out.code(), Some(1), "sntp must refuse a server in the alarm condition:\n{}", out.combined());
    assert!(out.stderr.contains("leap not in sync"), "sntp's reason:\n{}", out.combined());

    let x = raw_exchange(&lab, SocketAddr::from((lab.server_v4(), 123)), 0);
    check_reply(&x, &Expect { leap: 3, stratum: 3, precision: -10, reference_id: [198, 18, 0, 9], stamped: true });

    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("tx_packets"), 2, "{}", fin.describe());
    assert_eq!(fin.report_u64("workers.0.dropped_by_handler"), 3, "{}", fin.describe());
}

/// The receive field is the packet's own receive stamp wherever there is one: the XDP hook's with the lab's
/// `latency.stamp = "auto"` (which picks `head` on a kernel that refuses `bpf_xdp_adjust_meta`), the kernel's
/// software stamp on kernel sockets; without latency stamps (`--no-latency`) both fields are the batch's clock.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sntp_receive_field_is_the_packets_stamp_in_every_datapath() {
    require_lab();
    let bin = example_bin();
    let lab = Lab::new(1);
    let sif = lab.server_if();
    let cfg = lab_config().display().to_string();
    let base = ["--config", &cfg, "--interface", &sif, "--port", "123", "--stratum", "1", "--reference", "GPS"];
    for (extra, stamped) in [
        (&[][..], true),
        (&["--no-latency"][..], false),
        (&["--mode", "socket", "--io", "mmsg"][..], true),
        (&["--mode", "socket", "--io", "blocking", "--no-latency"][..], false),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let srv = lab.spawn_program(&bin, &args);
        for _ in 0..3 {
            let x = raw_exchange(&lab, SocketAddr::from((lab.server_v4(), 123)), 0);
            check_reply(&x, &Expect { leap: 0, stratum: 1, precision: -20, reference_id: *b"GPS\0", stamped });
        }
        let fin = srv.stop();
        fin.assert_clean_exit();
        assert_eq!(fin.report_u64("tx_packets"), 3, "{extra:?}: {}", fin.describe());
    }
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

/// A custom handler cannot run inside the kernel: `--mode in-kernel` is refused at start-up with exit 2, naming the
/// key, and nothing is attached.
#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_custom_handler_is_refused_the_in_kernel_mode() {
    require_lab();
    let lab = Lab::new(1);
    let bin = example_bin();
    let cfg = lab_config().display().to_string();
    let ns = lab.server_ns();
    let sif = lab.server_if();
    let out = run_cmd(
        &[
            "ip",
            "netns",
            "exec",
            &ns,
            bin.to_str().unwrap(),
            "--config",
            &cfg,
            "--interface",
            &sif,
            "--port",
            "123",
            "--mode",
            "in-kernel",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), Some(2), "{}", out.combined());
    assert!(out.stderr.contains("`mode`") && out.stderr.contains("custom handler sntp"), "{}", out.combined());
    lab.assert_no_xdp_within(Duration::from_secs(1));
}
