//! The proxy example (examples/proxy: a UDP forwarder / load balancer on shunt's Handler API) in the lab, in
//! front of a real DNS server: Knot DNS (`knotd`, UDP mode, one UDP worker) runs in the client namespace on
//! addresses of its own, with a zone the test writes; the proxy runs in the server namespace with those
//! addresses as its backends; `dnsperf` and `kdig` in the client namespace query through the proxy.
//!
//! - `dnsperf` through the proxy at a bounded rate loses nothing, and `kdig` gets the same answers through the
//!   proxy as directly from knotd, over IPv4 and IPv6;
//! - a backend on another subnet, reached through a gateway route, answers through the proxy;
//! - a flow table smaller than the number of client flows evicts (counted) and still serves new flows.
//!
//! Each runs on a kernel-socket datapath (`--mode socket --io epoll`) and on AF_XDP (the default mode). On
//! AF_XDP the proxy's sends go to hosts other than the request's sender (the backend, then the client), which
//! needs the datapath's next-hop resolution.
//!
//! Like tests/sntp.rs, the test builds nothing: it runs `target/<profile>/examples/proxy`, which
//! `cargo build --release --examples` makes. knotd is stopped by its PID at the end, also when a test fails.

mod common;

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Knot's addresses on the client's veth (on-link backends).
const KNOT_V4: &str = "198.18.0.3";
const KNOT_V6: &str = "2001:2::3";
/// Knot's addresses on the client namespace's loopback, on subnets the server reaches through the client (a
/// gateway route).
const ROUTED_V4: &str = "198.18.1.1";
const ROUTED_V6: &str = "2001:2:0:1::1";
/// The proxy's served port and its proxy-side ports.
const DNS_PORT: &str = "53";
const PROXY_PORTS: &str = "40000-40063";

/// The zone knotd serves.
const ZONE: &str = "example.test";
const ZONE_TEXT: &str = "$ORIGIN example.test.
$TTL 3600
@       SOA   ns.example.test. hostmaster.example.test. 1 3600 900 604800 300
@       NS    ns
@       MX    10 mail
ns      A     198.18.0.3
www     A     198.18.5.5
www     AAAA  2001:2::5:5
mail    A     198.18.5.6
txt     TXT   \"hello through the proxy\"
alias   CNAME www
";
/// Names and types compared through the proxy and directly (one NXDOMAIN among them).
const QUERIES: &[(&str, &str)] = &[
    ("www.example.test", "A"),
    ("www.example.test", "AAAA"),
    ("example.test", "MX"),
    ("example.test", "SOA"),
    ("txt.example.test", "TXT"),
    ("alias.example.test", "A"),
    ("nope.example.test", "A"),
];

/// The datapath the proxy runs on.
#[derive(Debug, Clone, Copy)]
enum Datapath {
    /// Kernel sockets, epoll.
    Socket,
    /// AF_XDP (the default mode).
    AfXdp,
}

impl Datapath {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Datapath::Socket => &["--mode", "socket", "--io", "epoll"],
            Datapath::AfXdp => &[],
        }
    }
}

/// Makes a child die with the test (its spawning thread) should the test process die first.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

/// A knotd in the client namespace, with its own config, rundir and storage in the lab's directory; stopped
/// by PID (SIGTERM, then SIGKILL) when dropped, so also when the test fails.
struct Knot {
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
}

impl Knot {
    /// Starts knotd listening on `addrs` (port 53) with [`ZONE_TEXT`], and waits (bounded) until it answers.
    fn start(lab: &Lab, addrs: &[&str]) -> Knot {
        let dir = lab.dir().join(format!("knot-{}", addrs.first().copied().unwrap_or("x").replace(':', "_")));
        fs::create_dir_all(dir.join("run")).expect("create knot's rundir");
        fs::create_dir_all(dir.join("storage")).expect("create knot's storage");
        let zone_file = dir.join("example.test.zone");
        fs::write(&zone_file, ZONE_TEXT).expect("write the zone");
        let listen: Vec<String> = addrs.iter().map(|a| format!("{a}@53")).collect();
        let conf = format!(
            "server:
    rundir: \"{run}\"
    user: root:root
    listen: [ {listen} ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: \"{storage}\"
log:
  - target: stderr
    any: info
template:
  - id: default
    storage: \"{storage}\"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: {ZONE}
    file: \"{zone}\"
",
            run = dir.join("run").display(),
            storage = dir.join("storage").display(),
            listen = listen.join(", "),
            zone = zone_file.display(),
        );
        let conf_path = dir.join("knot.conf");
        fs::write(&conf_path, conf).expect("write knot.conf");
        let log = dir.join("knotd.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.client_ns(), "knotd", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log).expect("create knotd.log"))
            .stderr(fs::File::create(dir.join("knotd.stderr")).expect("create knotd.stderr"));
        die_with_parent(&mut cmd);
        // `ip netns exec` execs knotd: the child's PID is knotd's.
        let child = cmd.spawn().expect("start knotd (Debian package knot)");
        let pid = child.id();
        let mut knot = Knot { child: Some(child), pid, log: dir.join("knotd.stderr") };
        let ready = poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
            if let Some(Ok(Some(st))) = knot.child.as_mut().map(Child::try_wait) {
                panic!("knotd exited at start-up ({st}):\n{}", knot.log_text());
            }
            let (status, _) = dig(lab, addrs.first().copied().unwrap_or(KNOT_V4), ZONE, "SOA");
            (status == "NOERROR").then_some(())
        });
        assert!(ready.is_some(), "knotd did not answer within 15 s:\n{}", knot.log_text());
        knot
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, bounded wait, SIGKILL: by the PID of the knotd this test started.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: our own child, not yet reaped, so the PID cannot have been reused.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if wait_exit(&mut child, Duration::from_secs(10)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- knotd log ---\n{}", self.log_text());
        }
    }
}

/// `kdig @server NAME TYPE` from the client namespace: the response's status and its answer section's lines
/// (sorted). Status "TIMEOUT" when no answer came.
fn dig(lab: &Lab, server: &str, name: &str, rtype: &str) -> (String, Vec<String>) {
    let out = lab.exec(
        Side::Client,
        &["kdig", &format!("@{server}"), "-p", DNS_PORT, "+timeout=1", "+retry=1", "+notcp", name, rtype],
        Duration::from_secs(15),
    );
    let text = out.stdout;
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_alphanumeric()).next())
        .unwrap_or("TIMEOUT")
        .to_string();
    let mut answer: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with(";; ANSWER SECTION:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase())
        .collect();
    answer.sort();
    (status, answer)
}

/// Adds an extra address on the client's veth (on-link: the server resolves it like the client's own).
fn add_client_addresses(lab: &Lab) {
    let cns = lab.client_ns();
    let cif = lab.client_if();
    run_cmd(&["ip", "-n", &cns, "addr", "add", &format!("{KNOT_V4}/24"), "dev", &cif], Duration::from_secs(10))
        .expect_success();
    run_cmd(
        &["ip", "-n", &cns, "-6", "addr", "add", &format!("{KNOT_V6}/64"), "dev", &cif, "nodad"],
        Duration::from_secs(10),
    )
    .expect_success();
}

/// Puts [`ROUTED_V4`] / [`ROUTED_V6`] on the client namespace's loopback (this kernel has no dummy
/// interfaces; a local address on `lo` is reached the same way), and routes their subnets from the server
/// namespace through the client's lab addresses: the server reaches them only through that gateway.
fn add_routed_backend(lab: &Lab) {
    let (cns, sns) = (lab.client_ns(), lab.server_ns());
    let t = Duration::from_secs(10);
    for argv in [
        vec!["ip", "-n", &cns, "addr", "add", "198.18.1.1/32", "dev", "lo"],
        vec!["ip", "-n", &cns, "-6", "addr", "add", "2001:2:0:1::1/128", "dev", "lo", "nodad"],
        vec!["ip", "-n", &sns, "route", "add", "198.18.1.0/24", "via", "198.18.0.2"],
        vec!["ip", "-n", &sns, "-6", "route", "add", "2001:2:0:1::/64", "via", "2001:2::2"],
    ] {
        run_cmd(&argv, t).expect_success();
    }
}

/// Starts the proxy in the server namespace on `datapath`, serving port 53 with `backends`, plus `extra`.
fn start_proxy(lab: &Lab, datapath: Datapath, backends: &[String], extra: &[&str]) -> ServerProcess {
    let cfg = lab_config().display().to_string();
    let sif = lab.server_if();
    let mut args: Vec<String> =
        ["--config", &cfg, "--interface", &sif, "--port", DNS_PORT].iter().map(|s| s.to_string()).collect();
    args.extend(datapath.flags().iter().map(|s| s.to_string()));
    for b in backends {
        args.push("--backend".into());
        args.push(b.clone());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    lab.spawn_program(&example_bin("proxy"), &args)
}

/// Stops the proxy and fails the test with `what` and everything the proxy said and counted (its summary
/// lines and report are written as it exits).
fn fail(srv: ServerProcess, what: &str) -> ! {
    let fin = srv.stop();
    panic!("{what}\n{}", fin.describe());
}

/// The `key=value` fields of the proxy's stderr line that starts with `prefix`.
fn summary_fields(fin: &Finished, prefix: &str) -> HashMap<String, u64> {
    let line = fin.stderr.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| {
        panic!("no `{prefix}` line\n{}", fin.describe());
    });
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// What dnsperf printed: queries sent, completed, lost; queries per second; average latency in seconds.
#[derive(Debug)]
struct Perf {
    sent: u64,
    completed: u64,
    lost: u64,
    qps: f64,
    latency_s: f64,
}

fn parse_dnsperf(out: &str) -> Option<Perf> {
    let field = |key: &str| -> Option<&str> {
        let line = out.lines().find(|l| l.trim_start().starts_with(key))?;
        line.split_once(':')?.1.split_whitespace().next()
    };
    Some(Perf {
        sent: field("Queries sent")?.parse().ok()?,
        completed: field("Queries completed")?.parse().ok()?,
        lost: field("Queries lost")?.parse().ok()?,
        qps: field("Queries per second")?.parse().ok()?,
        latency_s: field("Average Latency")?.parse().ok()?,
    })
}

/// dnsperf from the client namespace against `server`: 5 s at 5,000 queries/s from `clients` sockets.
fn dnsperf(lab: &Lab, server: &str, clients: u32, what: &str) -> Perf {
    let qfile = lab.tmp_path("queries", "txt");
    let text: String = QUERIES.iter().map(|(n, t)| format!("{n} {t}\n")).collect();
    fs::write(&qfile, text).expect("write the query file");
    let q = qfile.display().to_string();
    let out = lab.exec(
        Side::Client,
        &[
            "dnsperf",
            "-s",
            server,
            "-p",
            DNS_PORT,
            "-d",
            &q,
            "-l",
            "5",
            "-Q",
            "5000",
            "-c",
            &clients.to_string(),
            "-T",
            "1",
            "-t",
            "2",
        ],
        Duration::from_secs(40),
    );
    println!("--- dnsperf {what} ---\n{}", out.combined());
    assert!(out.success(), "dnsperf {what} failed:\n{}", out.combined());
    let perf =
        parse_dnsperf(&out.stdout).unwrap_or_else(|| panic!("cannot read dnsperf's summary:\n{}", out.combined()));
    println!(
        "figures: dnsperf {what}: {} sent, {} completed, {} lost, {:.0} qps, average latency {:.1} µs",
        perf.sent,
        perf.completed,
        perf.lost,
        perf.qps,
        perf.latency_s * 1e6
    );
    perf
}

/// Queries through the proxy at each of `proxies` (kdig, which retries) until one is answered, for at most
/// 10 s each. On AF_XDP the datapath resolves a new next hop's link-layer address while it drops the first
/// sends to it (counted as `send_unresolved`, never sent to a wrong MAC): the exchanges the tests check then
/// run on warm paths. On kernel sockets the first query is answered.
fn warm_up(lab: &Lab, srv: ServerProcess, proxies: &[String]) -> ServerProcess {
    for proxy in proxies {
        let answered = poll_until(Duration::from_secs(10), Duration::from_millis(10), || {
            (dig(lab, proxy, ZONE, "SOA").0 == "NOERROR").then_some(())
        });
        if answered.is_none() {
            fail(srv, &format!("no answer through the proxy at {proxy} within 10 s"));
        }
    }
    srv
}

/// The counters' relations that hold whatever the warm-up cost: the only sends the server refused were to
/// next hops still being resolved (none on kernel sockets), and every query sent to a backend was answered
/// unless the answer's relay was one of those. Returns how many sends were refused.
fn check_accounting(fin: &Finished, backends: &[String]) -> u64 {
    let s = summary_fields(fin, "proxy summary:");
    let refused = s["send_failed"];
    let unresolved: u64 = fin.workers().iter().map(|w| json_u64(w, "send_unresolved").unwrap_or(u64::MAX)).sum();
    assert_eq!(refused, unresolved, "refused sends\n{}", fin.describe());
    // A few per next hop and worker (each resolution takes a moment, and sends meanwhile are dropped).
    assert!(refused <= 64, "{refused} refused sends\n{}", fin.describe());
    let mut flows = 0;
    for b in backends {
        let c = summary_fields(fin, &format!("proxy backend {b}:"));
        assert!(c["from_backend"] <= c["to_backend"], "{b}\n{}", fin.describe());
        assert!(c["to_backend"] - c["from_backend"] <= refused, "{b}: answers lost\n{}", fin.describe());
        flows += c["flows"];
    }
    assert_eq!(s["flows"], flows, "every flow has a backend\n{}", fin.describe());
    for zero in ["unknown_port", "foreign_source", "no_backend", "looped"] {
        assert_eq!(s[zero], 0, "{zero}\n{}", fin.describe());
    }
    for w in fin.workers() {
        assert_eq!(json_u64(w, "dropped_amplification"), Some(0), "{}", fin.describe());
    }
    refused
}

fn dnsperf_through_the_proxy_to_knot(datapath: Datapath) {
    require_lab();
    let lab = Lab::new(1);
    add_client_addresses(&lab);
    let mut knot = Knot::start(&lab, &[KNOT_V4, KNOT_V6]);
    let backends = [format!("{KNOT_V4}:53"), format!("[{KNOT_V6}]:53")];
    let srv = start_proxy(&lab, datapath, &backends, &["--proxy-ports", PROXY_PORTS, "--idle-timeout-ms", "30000"]);
    let srv = warm_up(&lab, srv, &[lab.server_v4().to_string(), lab.server_v6().to_string()]);

    // The same answers through the proxy as from knotd itself, over both IP versions.
    for (proxy, direct) in [(lab.server_v4().to_string(), KNOT_V4), (lab.server_v6().to_string(), KNOT_V6)] {
        for (name, rtype) in QUERIES {
            let through = dig(&lab, &proxy, name, rtype);
            let straight = dig(&lab, direct, name, rtype);
            assert_ne!(straight.0, "TIMEOUT", "knotd itself did not answer {name} {rtype}");
            if through != straight {
                fail(
                    srv,
                    &format!("{name} {rtype} through the proxy at {proxy}: {through:?}; from knotd: {straight:?}"),
                );
            }
        }
    }
    assert_eq!(dig(&lab, &lab.server_v4().to_string(), "nope.example.test", "A").0, "NXDOMAIN");
    assert_eq!(dig(&lab, &lab.server_v4().to_string(), "www.example.test", "A").1.len(), 1);

    let direct = dnsperf(&lab, KNOT_V4, 4, "directly to knotd");
    let through = dnsperf(&lab, &lab.server_v4().to_string(), 4, "through the proxy");
    let fin = srv.stop();
    knot.stop();
    for (what, p) in [("direct", &direct), ("through the proxy", &through)] {
        assert!(p.sent >= 20_000, "{what}: dnsperf sent only {} queries in 5 s at 5,000/s", p.sent);
        assert_eq!((p.completed, p.lost), (p.sent, 0), "{what}: queries lost\n{}", fin.describe());
    }
    fin.assert_clean_exit();
    let refused = check_accounting(&fin, &backends);
    let s = summary_fields(&fin, "proxy summary:");
    assert_eq!((s["evicted"], s["expired"], s["cross_worker"]), (0, 0, 0), "{}", fin.describe());
    let b4 = summary_fields(&fin, &format!("proxy backend {KNOT_V4}:53:"));
    let b6 = summary_fields(&fin, &format!("proxy backend [{KNOT_V6}]:53:"));
    // Every query went to its family's backend and every answer came back: dnsperf's and kdig's (the 7
    // compared and 2 more over IPv4), after the warm-up's.
    let kdig4 = QUERIES.len() as u64 + 2;
    assert!(b4["from_backend"] > through.sent + kdig4, "{}", fin.describe());
    assert!(b6["from_backend"] > QUERIES.len() as u64, "{}", fin.describe());
    // dnsperf's 4 sockets, and one flow per kdig run (each from a port of its own).
    assert!(b4["flows"] > 4 + kdig4, "{}", fin.describe());
    if refused == 0 {
        // Nothing refused: the warm-up was one query per IP version, one flow each.
        assert_eq!((b4["to_backend"], b4["from_backend"]), (through.sent + kdig4 + 1, through.sent + kdig4 + 1));
        assert_eq!((b6["to_backend"], b6["from_backend"]), (8, 8), "{}", fin.describe());
        assert_eq!((b4["flows"], b6["flows"]), (4 + kdig4 + 1, 8), "{}", fin.describe());
    }
    lab.assert_no_xdp_within(Duration::from_secs(5));
}

fn a_backend_behind_a_gateway_answers_through_the_proxy(datapath: Datapath) {
    require_lab();
    let lab = Lab::new(1);
    add_routed_backend(&lab);
    let mut knot = Knot::start(&lab, &[ROUTED_V4, ROUTED_V6]);
    let backends = [format!("{ROUTED_V4}:53"), format!("[{ROUTED_V6}]:53")];
    let srv = start_proxy(&lab, datapath, &backends, &["--proxy-ports", PROXY_PORTS]);
    let srv = warm_up(&lab, srv, &[lab.server_v4().to_string(), lab.server_v6().to_string()]);
    for (proxy, direct) in [(lab.server_v4().to_string(), ROUTED_V4), (lab.server_v6().to_string(), ROUTED_V6)] {
        for (name, rtype) in &QUERIES[..3] {
            let (through, straight) = (dig(&lab, &proxy, name, rtype), dig(&lab, direct, name, rtype));
            if through.0 != "NOERROR" || through != straight {
                fail(
                    srv,
                    &format!("{name} {rtype} through the proxy at {proxy}: {through:?}; from {direct}: {straight:?}"),
                );
            }
        }
    }
    let fin = srv.stop();
    knot.stop();
    fin.assert_clean_exit();
    let refused = check_accounting(&fin, &backends);
    for b in &backends {
        // The 3 compared queries (3 flows), after the warm-up's.
        let c = summary_fields(&fin, &format!("proxy backend {b}:"));
        assert!(c["from_backend"] > 3 && c["flows"] > 3, "{b}\n{}", fin.describe());
        if refused == 0 {
            assert_eq!((c["flows"], c["to_backend"], c["from_backend"]), (4, 4, 4), "{b}\n{}", fin.describe());
        }
    }
}

/// A DNS query for www.example.test A with `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in ["www", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; A; IN
    q
}

/// From a socket of its own in the client namespace (a flow of its own), one query to `server`; whether
/// its answer (same id, QR set, NOERROR, one answer record) came back within 3 s.
fn query_from_own_socket(sock: &UdpSocket, server: SocketAddr, id: u16) -> Result<(), String> {
    sock.send_to(&dns_query(id), server).map_err(|e| format!("send: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer to query {id:#06x} within 3 s"));
        }
        sock.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let a = &buf[..n];
                if from != server {
                    return Err(format!("an answer from {from}, not from {server}"));
                }
                let ok =
                    n > 12 && a[..2] == id.to_be_bytes() && a[2] & 0x80 != 0 && a[3] & 0x0f == 0 && a[6..8] == [0, 1];
                return if ok { Ok(()) } else { Err(format!("a bad answer to {id:#06x}: {a:02x?}")) };
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("recv: {e}")),
        }
    }
}

fn a_full_flow_table_evicts_and_still_serves_new_flows(datapath: Datapath) {
    require_lab();
    let lab = Lab::new(1);
    add_client_addresses(&lab);
    let mut knot = Knot::start(&lab, &[KNOT_V4]);
    let srv = start_proxy(
        &lab,
        datapath,
        &[format!("{KNOT_V4}:53")],
        &["--proxy-ports", "40000-40009", "--max-flows", "4", "--idle-timeout-ms", "60000"],
    );
    let server = SocketAddr::from((lab.server_v4(), 53));
    // Ten client flows (ten sockets, ten source ports) one after the other, then the first one again (evicted
    // long ago: a new flow). Every query is answered.
    let results = lab.in_client(move || {
        let socks: Vec<UdpSocket> =
            (0..10).map(|_| UdpSocket::bind(("198.18.0.2", 0)).expect("bind a client socket")).collect();
        // A warm-up flow first, retried (on AF_XDP the first sends to a host wait for its next hop's address).
        let warm = UdpSocket::bind(("198.18.0.2", 0)).expect("bind a client socket");
        let mut warmed = Err(String::new());
        for attempt in 0..5 {
            warmed = query_from_own_socket(&warm, server, 0x50 + attempt);
            if warmed.is_ok() {
                break;
            }
        }
        warmed.map_err(|e| format!("warm-up: {e}"))?;
        // The first failure ends it (the rest would only wait out their own timeouts).
        for (i, s) in socks.iter().enumerate() {
            query_from_own_socket(s, server, 0x100 + i as u16).map_err(|e| format!("client {i}: {e}"))?;
        }
        query_from_own_socket(&socks[0], server, 0x200).map_err(|e| format!("client 0 again: {e}"))
    });
    if let Err(e) = results {
        fail(srv, &e);
    }
    let fin = srv.stop();
    knot.stop();
    fin.assert_clean_exit();
    check_accounting(&fin, &[format!("{KNOT_V4}:53")]);
    // The warm-up flow and clients 0 to 2 fill the table; clients 3 to 9 evict one each, and client 0, evicted
    // long ago, is a new flow that evicts one more. Each flow's query was answered once.
    let s = summary_fields(&fin, "proxy summary:");
    assert_eq!((s["flows"], s["evicted"], s["expired"]), (12, 8, 0), "{}", fin.describe());
    let b = summary_fields(&fin, &format!("proxy backend {KNOT_V4}:53:"));
    assert_eq!((b["flows"], b["from_backend"]), (12, 12), "{}", fin.describe());
}

/// Two workers: client flows spread over them, and a backend's answer reaches whichever worker the kernel
/// (SO_REUSEPORT) or the NIC (RSS; on veth the sender's queue) picks, not necessarily the one whose flow owns
/// the port; that worker relays it through the shared port map. dnsperf from 16 sockets loses nothing but
/// what the datapath refused to send, counted, while a worker's own next-hop cache was still cold (AF_XDP).
fn two_workers_relay_each_others_answers(datapath: Datapath) {
    require_lab();
    let lab = Lab::new(2);
    add_client_addresses(&lab);
    let mut knot = Knot::start(&lab, &[KNOT_V4]);
    let backends = [format!("{KNOT_V4}:53")];
    // 128 ports each: on veth a client's queue is its CPU's, so a client that migrates shows up on both
    // workers, with a flow on each; no flow is evicted here.
    let mut extra = vec!["--proxy-ports", "40000-40255", "--queues", "0,1", "--cores", "0,1"];
    if matches!(datapath, Datapath::AfXdp) {
        // The generic hook sees every veth packet on queue 0 (config/lab.toml): native for two queues.
        extra.extend(["--attach-mode", "native"]);
    }
    let srv = start_proxy(&lab, datapath, &backends, &extra);
    let srv = warm_up(&lab, srv, &[lab.server_v4().to_string()]);
    // Each worker has its own next-hop cache on AF_XDP: a second warm-up, 1 s from the 16 sockets, warms both.
    let qfile = lab.tmp_path("warm-up", "txt");
    fs::write(&qfile, "www.example.test A\n").expect("write the warm-up query file");
    let q = qfile.display().to_string();
    let server = lab.server_v4().to_string();
    let warm = ["dnsperf", "-s", &server, "-p", DNS_PORT, "-d", &q, "-l", "1", "-Q", "1000", "-c", "16", "-t", "2"];
    lab.exec(Side::Client, &warm, Duration::from_secs(20));
    let through = dnsperf(&lab, &server, 16, "through a two-worker proxy");
    let fin = srv.stop();
    knot.stop();
    fin.assert_clean_exit();
    let refused = check_accounting(&fin, &backends);
    assert!(through.sent >= 20_000, "dnsperf sent only {} queries in 5 s at 5,000/s", through.sent);
    assert_eq!(through.completed + through.lost, through.sent, "{}", fin.describe());
    // Nothing is lost but what the datapath refused to send while it resolved a next hop for a worker whose
    // cache did not have it yet (AF_XDP, where each worker has its own; none on kernel sockets).
    assert!(through.lost <= refused, "{} queries lost, {refused} sends refused\n{}", through.lost, fin.describe());
    let s = summary_fields(&fin, "proxy summary:");
    assert_eq!(s["evicted"], 0, "{}", fin.describe());
    // 33 flows or more (kdig's, then two dnsperf runs' 16 sockets each), each of whose answers reaches the
    // owner or the other worker: that all of them reach their owner is a chance of about 2^-33.
    assert!(s["cross_worker"] > 0, "no answer reached another worker than its flow's\n{}", fin.describe());
    let per_worker: Vec<u64> = fin.workers().iter().map(|w| json_u64(w, "sends").unwrap_or(0)).collect();
    assert!(per_worker.iter().all(|&n| n > 0), "both workers relay: {per_worker:?}\n{}", fin.describe());
    println!("figures: two workers: {s:?}, sends per worker {per_worker:?}");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dnsperf_through_the_proxy_to_knot_on_kernel_sockets() {
    dnsperf_through_the_proxy_to_knot(Datapath::Socket);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dnsperf_through_the_proxy_to_knot_on_af_xdp() {
    dnsperf_through_the_proxy_to_knot(Datapath::AfXdp);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_backend_behind_a_gateway_answers_through_the_proxy_on_kernel_sockets() {
    a_backend_behind_a_gateway_answers_through_the_proxy(Datapath::Socket);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_backend_behind_a_gateway_answers_through_the_proxy_on_af_xdp() {
    a_backend_behind_a_gateway_answers_through_the_proxy(Datapath::AfXdp);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_full_flow_table_evicts_and_still_serves_new_flows_on_kernel_sockets() {
    a_full_flow_table_evicts_and_still_serves_new_flows(Datapath::Socket);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_full_flow_table_evicts_and_still_serves_new_flows_on_af_xdp() {
    a_full_flow_table_evicts_and_still_serves_new_flows(Datapath::AfXdp);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn two_workers_relay_each_others_answers_on_kernel_sockets() {
    two_workers_relay_each_others_answers(Datapath::Socket);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn two_workers_relay_each_others_answers_on_af_xdp() {
    two_workers_relay_each_others_answers(Datapath::AfXdp);
}
