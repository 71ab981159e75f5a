//! The DNS example (examples/dns/, an authoritative server on shunt's Handler API) in the lab:
//!
//! 1. `kdig` (knot-dnsutils) asks it for every record type over IPv4 and IPv6, on AF_XDP and on kernel sockets
//!    (`--mode socket --io epoll`);
//! 2. a differential test against Knot DNS 3.2 (`knotd`, UDP, one worker, in the server namespace on port 5300
//!    with the same zone files): tests/data/dns/differential.py sends the same 1722 queries to both from the
//!    client namespace, over IPv4 and again over IPv6, and requires the same replies (it lists the deliberate
//!    differences, with reasons);
//! 3. `dnsperf` for 5 s at 20,000 queries a second: nothing lost, NOERROR and NXDOMAIN as the query mix says;
//! 4. response rate limiting: a burst from one address gets the rate, then slipped (TC) and dropped replies.
//!
//! The zones are tests/data/dns/example.test.zone (every record type, a CNAME chain, a delegation with glue,
//! wildcards, empty non-terminals, TXT RRsets too big for 512 bytes and for 1232) and the reverse zone
//! 10.18.198.in-addr.arpa.zone, served as `--zone ORIGIN=FILE`.
//!
//! Like tests/sntp.rs it builds nothing: it runs `target/<profile>/examples/dns`, which
//! `cargo build --release --examples` makes; a missing or stale one fails the test, naming that command.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const DNS_PORT: u16 = 53;
const KNOT_PORT: u16 = 5300;
const KDIG_BOUND: Duration = Duration::from_secs(20);

fn zone_dir() -> PathBuf {
    repo_path("tests/data/dns")
}

/// The example's arguments for the lab's two zones, plus `extra`.
fn dns_args(lab: &Lab, cfg: &Path, extra: &[&str]) -> Vec<String> {
    let dir = zone_dir();
    let mut args: Vec<String> = vec![
        "--config".into(),
        cfg.display().to_string(),
        "--interface".into(),
        lab.server_if(),
        "--port".into(),
        DNS_PORT.to_string(),
        "--zone".into(),
        dir.join("example.test.zone").display().to_string(),
        "--zone".into(),
        format!("10.18.198.in-addr.arpa={}", dir.join("10.18.198.in-addr.arpa.zone").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// `kdig` in the client namespace; its output.
fn kdig(lab: &Lab, server: IpAddr, port: u16, args: &[&str]) -> CmdOutput {
    let at = format!("@{server}");
    let port = port.to_string();
    let mut argv = vec!["kdig", &at, "-p", &port, "+timeout=2", "+retry=2", "+ignore"];
    argv.extend(args);
    lab.exec(Side::Client, &argv, KDIG_BOUND)
}

/// `kdig +short` lines, trimmed and sorted.
fn short(lab: &Lab, server: IpAddr, port: u16, name: &str, rtype: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["+short", name, rtype];
    args.extend(extra);
    let out = kdig(lab, server, port, &args);
    assert!(out.success(), "kdig failed:\n{}", out.combined());
    let mut lines: Vec<String> = out.stdout.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    lines.sort();
    lines
}

/// What kdig must print for each record type (sorted `+short` lines).
fn expectations() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    vec![
        ("example.test", "A", vec!["198.18.10.1"]),
        ("example.test", "AAAA", vec!["2001:2::10:1"]),
        ("example.test", "NS", vec!["ns1.example.test.", "ns2.example.test."]),
        ("example.test", "SOA", vec!["ns1.example.test. hostmaster.example.test. 2026120701 3600 900 604800 300"]),
        ("example.test", "MX", vec!["10 mail.example.test.", "20 mx.example.net."]),
        ("example.test", "TXT", vec!["\"v=spf1 -all\""]),
        ("example.test", "CAA", vec!["0 issue \"letsencrypt.org\"", "128 iodef \"mailto:security@example.test\""]),
        ("www.example.test", "CNAME", vec!["web.example.test."]),
        ("www.example.test", "A", vec!["198.18.10.5", "198.18.10.6", "host1.example.test.", "web.example.test."]),
        ("host1.example.test", "AAAA", vec!["2001:2::10:5"]),
        ("_sip._udp.example.test", "SRV", vec!["10 60 5060 sip.example.test.", "20 0 5060 sip2.example.net."]),
        ("ptr.example.test", "PTR", vec!["host1.example.test."]),
        ("5.10.18.198.in-addr.arpa", "PTR", vec!["host1.example.test."]),
        ("anything.wild.example.test", "A", vec!["198.18.10.20"]),
        ("anything.wild.example.test", "TXT", vec!["\"wildcard\""]),
        ("nothere.example.test", "A", vec![]),
    ]
}

/// Every record type over IPv4 and IPv6, the rcodes and flags of the special cases, from the client namespace.
fn check_with_kdig(lab: &Lab) -> usize {
    let mut asked = 0;
    for server in [IpAddr::V4(lab.server_v4()), IpAddr::V6(lab.server_v6())] {
        for (name, rtype, want) in expectations() {
            let got = short(lab, server, DNS_PORT, name, rtype, &[]);
            assert_eq!(got, want, "kdig @{server} {name} {rtype}");
            asked += 1;
        }
        let full = |args: &[&str]| {
            let out = kdig(lab, server, DNS_PORT, args);
            assert!(out.success(), "{}", out.combined());
            out.stdout
        };
        let nx = full(&["nothere.example.test", "A"]);
        assert!(nx.contains("status: NXDOMAIN") && nx.contains("Flags: qr aa rd;"), "{nx}");
        assert!(nx.contains("example.test.") && nx.contains("SOA"), "the SOA in the authority section: {nx}");
        let referral = full(&["host.sub.example.test", "A"]);
        assert!(referral.contains("status: NOERROR") && referral.contains("Flags: qr rd;"), "AA clear: {referral}");
        assert!(referral.contains("AUTHORITY: 2; ADDITIONAL: 2"), "NS and glue: {referral}");
        let refused = full(&["example.org", "A"]);
        assert!(refused.contains("status: REFUSED"), "{refused}");
        // 5 × 200-byte TXT: truncated at 512 without EDNS, whole with EDNS at 1232, which the OPT announces.
        let tc = full(&["big.example.test", "TXT"]);
        assert!(tc.contains("Flags: qr aa tc rd;") && tc.contains("ANSWER: 0"), "{tc}");
        assert_eq!(short(lab, server, DNS_PORT, "big.example.test", "TXT", &["+bufsize=1232"]).len(), 5);
        let edns = full(&["example.test", "A", "+bufsize=4096", "+dnssec"]);
        assert!(edns.contains("UDP size: 1232 B") && edns.contains("flags: do"), "{edns}");
        let badvers = full(&["example.test", "A", "+edns=1"]);
        assert!(badvers.contains("status: BADVERS"), "{badvers}");
        asked += 7;
    }
    asked
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dns_example_answers_kdig_over_ipv4_and_ipv6_on_af_xdp_and_kernel_sockets() {
    require_lab();
    let bin = example_bin("dns");
    let lab = Lab::new(1);
    let cfg = lab_config();
    for extra in [&[][..], &["--mode", "socket", "--io", "epoll"][..]] {
        let args = dns_args(&lab, &cfg, &[&["--rrl-rate", "0"][..], extra].concat());
        let srv = lab.spawn_program(&bin, &args);
        let asked = check_with_kdig(&lab);
        println!("{extra:?}: {asked} kdig queries answered as expected");
        let fin = srv.stop();
        fin.assert_clean_exit();
        assert_eq!(fin.report.as_ref().and_then(|r| r["handler"].as_str()), Some("dns"), "{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.dropped_amplification"), 0, "{}", fin.describe());
        assert_eq!(fin.report_u64("workers.0.dropped_malformed"), 0, "{}", fin.describe());
        assert!(fin.report_u64("tx_packets") >= asked as u64, "{}", fin.describe());
        let line = fin.stderr.lines().find(|l| l.contains("dns worker stopped")).unwrap_or_else(|| {
            panic!("no `dns worker stopped` line\n{}", fin.describe());
        });
        assert!(line.contains("rate_limited=0") && line.contains("ignored=0"), "{line}");
    }
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

/// `knotd` serving the lab's zones on the server's addresses, port [`KNOT_PORT`] (kernel UDP; the steering
/// program only takes port 53), with its own config, run directory and storage in the lab directory. Stopped by
/// its PID (SIGTERM, then SIGKILL) when dropped, also when the test fails.
struct Knot {
    child: Child,
}

impl Knot {
    fn start(lab: &Lab) -> Knot {
        let dir = lab.dir().join("knot");
        for sub in ["run", "storage"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create knot's directories");
        }
        let conf = format!(
            "server:\n    listen: [ {v4}@{port}, {v6}@{port} ]\n    udp-workers: 1\n    tcp-workers: 1\n    \
             background-workers: 1\n    rundir: {run}\n    user: root:root\n\
             database:\n    storage: {storage}\n\
             template:\n  - id: default\n    storage: {zones}\n    zonefile-sync: -1\n    \
             journal-content: none\n    zonefile-load: whole\n\
             zone:\n  - domain: example.test.\n    file: example.test.zone\n  \
             - domain: 10.18.198.in-addr.arpa.\n    file: 10.18.198.in-addr.arpa.zone\n",
            v4 = lab.server_v4(),
            v6 = lab.server_v6(),
            port = KNOT_PORT,
            run = dir.join("run").display(),
            storage = dir.join("storage").display(),
            zones = zone_dir().display(),
        );
        let conf_path = dir.join("knot.conf");
        std::fs::write(&conf_path, conf).expect("write knot.conf");
        let log = std::fs::File::create(dir.join("knotd.log")).expect("create knotd.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.server_ns(), "/usr/sbin/knotd", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log"))
            .stderr(log)
            .spawn()
            .expect("start knotd (Debian package knot)");
        let knot = Knot { child };
        // Ready when it answers the SOA.
        let ready = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
            let out =
                kdig(lab, IpAddr::V4(lab.server_v4()), KNOT_PORT, &["+short", "+timeout=1", "example.test", "SOA"]);
            out.stdout.contains("2026120701").then_some(())
        });
        assert!(ready.is_some(), "knotd does not answer:\n{}", knot.log(lab));
        knot
    }

    fn log(&self, lab: &Lab) -> String {
        std::fs::read_to_string(lab.dir().join("knot/knotd.log")).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        // `ip netns exec` execs knotd: this PID is knotd's.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if wait_exit(&mut self.child, Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dns_example_answers_as_knot_dns_does() {
    require_lab();
    let bin = example_bin("dns");
    let lab = Lab::new(1);
    let cfg = lab_config();
    let knot = Knot::start(&lab);
    let srv = lab.spawn_program(&bin, &dns_args(&lab, &cfg, &["--rrl-rate", "0"]));
    let script = zone_dir().join("differential.py").display().to_string();
    let zones = zone_dir().display().to_string();
    let mut total = 0;
    for server in [IpAddr::V4(lab.server_v4()), IpAddr::V6(lab.server_v6())] {
        let addr = server.to_string();
        let (dns_port, knot_port) = (DNS_PORT.to_string(), KNOT_PORT.to_string());
        let out = lab.exec(
            Side::Client,
            &["/usr/bin/python3", &script, &addr, &dns_port, &addr, &knot_port, &zones],
            Duration::from_secs(300),
        );
        println!("over {addr}: {}", out.stdout);
        assert!(
            out.success(),
            "the example and Knot DNS differ:\n{}\n--- knotd ---\n{}",
            out.combined(),
            knot.log(&lab)
        );
        let count: u64 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("differential: ")?.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no query count:\n{}", out.combined()));
        assert!(count >= 300, "{count} queries");
        total += count;
    }
    println!("differential: {total} queries to each server over IPv4 and IPv6, no mismatch");
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("workers.0.dropped_amplification"), 0, "{}", fin.describe());
    drop(knot);
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

/// What dnsperf printed: (sent, completed, lost, qps, [(rcode, count)]).
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    qps: f64,
    rcodes: Vec<(String, u64)>,
}

fn parse_dnsperf(text: &str) -> Option<Perf> {
    let number = |key: &str| -> Option<String> {
        let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
        Some(line.split(':').nth(1)?.split_whitespace().next()?.to_string())
    };
    let rcodes_line = text.lines().find(|l| l.trim_start().starts_with("Response codes:"))?;
    let rcodes = rcodes_line
        .split_once(':')?
        .1
        .split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.parse().ok()?))
        })
        .collect();
    Some(Perf {
        sent: number("Queries sent")?.parse().ok()?,
        completed: number("Queries completed")?.parse().ok()?,
        lost: number("Queries lost")?.parse().ok()?,
        qps: number("Queries per second")?.parse().ok()?,
        rcodes,
    })
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dnsperf_gets_every_answer_at_20k_queries_a_second() {
    require_lab();
    let bin = example_bin("dns");
    let lab = Lab::new(1);
    let cfg = lab_config();
    // One dnsperf client address: rate limiting off.
    let srv = lab.spawn_program(&bin, &dns_args(&lab, &cfg, &["--rrl-rate", "0"]));
    // Eight lines, cycled in order: six NOERROR (answers, a chain, a wildcard, a referral, NODATA), two NXDOMAIN.
    let queries = [
        ("www.example.test", "A", "NOERROR"),
        ("example.test", "MX", "NOERROR"),
        ("_sip._udp.example.test", "SRV", "NOERROR"),
        ("anything.wild.example.test", "A", "NOERROR"),
        ("host.sub.example.test", "A", "NOERROR"),
        ("mail.example.test", "TXT", "NOERROR"),
        ("nothere.example.test", "A", "NXDOMAIN"),
        ("x.ent.example.test", "AAAA", "NXDOMAIN"),
    ];
    let file = lab.tmp_path("dnsperf", "txt");
    let text: String = queries.iter().map(|(n, t, _)| format!("{n} {t}\n")).collect();
    std::fs::write(&file, text).expect("write the query file");
    let out = lab.exec(
        Side::Client,
        &[
            "dnsperf",
            "-s",
            &lab.server_v4().to_string(),
            "-p",
            &DNS_PORT.to_string(),
            "-d",
            &file.display().to_string(),
            "-l",
            "5",
            "-Q",
            "20000",
            "-c",
            "1",
            "-T",
            "1",
            "-t",
            "2",
        ],
        Duration::from_secs(60),
    );
    println!("{}", out.stdout);
    assert!(out.success(), "{}", out.combined());
    let perf =
        parse_dnsperf(&out.stdout).unwrap_or_else(|| panic!("cannot read dnsperf's output:\n{}", out.combined()));
    assert_eq!(perf.lost, 0, "{}", out.stdout);
    assert_eq!(perf.completed, perf.sent, "{}", out.stdout);
    assert!(perf.completed >= 5 * 20_000 * 9 / 10, "{} completed in 5 s at 20k/s:\n{}", perf.completed, out.stdout);
    assert!(perf.qps > 18_000.0, "{}", out.stdout);
    let count = |rcode: &str| perf.rcodes.iter().find(|(r, _)| r == rcode).map_or(0, |(_, c)| *c);
    let nx_share = queries.iter().filter(|q| q.2 == "NXDOMAIN").count() as u64;
    let expect_nx = perf.completed * nx_share / queries.len() as u64;
    assert!(
        count("NXDOMAIN").abs_diff(expect_nx) <= 2,
        "NXDOMAIN {} of {}:\n{}",
        count("NXDOMAIN"),
        perf.completed,
        out.stdout
    );
    assert_eq!(count("NOERROR") + count("NXDOMAIN"), perf.completed, "no other rcode:\n{}", out.stdout);
    println!(
        "dnsperf: sent {} completed {} lost {} qps {:.0} NOERROR {} NXDOMAIN {}",
        perf.sent,
        perf.completed,
        perf.lost,
        perf.qps,
        count("NOERROR"),
        count("NXDOMAIN")
    );
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("workers.0.dropped_amplification"), 0, "{}", fin.describe());
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

/// A query for `name` TXT with an OPT (1232), id `id`.
fn txt_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.extend([0, 0, 16, 0, 1]);
    q.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    q
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn response_rate_limiting_answers_the_rate_then_slips_every_second_reply() {
    require_lab();
    let bin = example_bin("dns");
    let lab = Lab::new(1);
    let cfg = lab_config();
    let srv = lab.spawn_program(&bin, &dns_args(&lab, &cfg, &["--rrl-rate", "10", "--rrl-slip", "2"]));
    const BURST: u16 = 100;
    let server = SocketAddr::from((lab.server_v4(), DNS_PORT));
    let (full, slipped, query_len) = lab.in_client(move || {
        let sock = UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
        sock.connect(server).expect("connect");
        let mut query_len = 0;
        for id in 0..BURST {
            let q = txt_query(id, "big.example.test");
            query_len = q.len();
            send_retrying(&sock, &q).expect("send");
        }
        let (mut full, mut slipped) = (0u32, 0u32);
        let mut buf = [0u8; 2048];
        // Until 1 s of silence (bounded by 10 s in all).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            sock.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            match sock.recv(&mut buf) {
                Ok(n) if n >= 12 && buf[2] & 0x02 != 0 => {
                    assert!(n <= query_len, "a slipped reply of {n} bytes for a {query_len}-byte query");
                    slipped += 1;
                }
                Ok(n) if n > 512 => full += 1,
                Ok(n) => panic!("unexpected {n}-byte reply {:02x?}", &buf[..n]),
                Err(_) => break,
            }
        }
        (full, slipped, query_len)
    });
    println!("RRL: {BURST} queries of {query_len} bytes: {full} answered, {slipped} slipped (TC)");
    // The burst takes well under a second: 10 tokens, maybe one more refilled; half the rest slipped.
    assert!((10..=12).contains(&full), "{full} full answers");
    let limited = u32::from(BURST) - full;
    assert!(slipped.abs_diff(limited / 2) <= 1, "{slipped} slipped of {limited} limited");
    let fin = srv.stop();
    fin.assert_clean_exit();
    let line = fin.stderr.lines().find(|l| l.contains("dns worker stopped")).expect("the worker's counters");
    assert!(line.contains(&format!("slipped={slipped}")), "{line}");
    lab.assert_no_xdp_within(Duration::from_secs(5));
}
