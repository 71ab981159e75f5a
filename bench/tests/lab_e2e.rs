//! End to end in a veth lab (deploy/lab.sh): short shunt-bench runs against the real shunt server and against
//! `sockperf server` produce consistent JSON. Lab tests: ignored by a plain `cargo test`, run by `make test`
//! (`--include-ignored`); they need root and fail, loudly, without it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Called first by every lab test (each is `#[ignore = ...]`, so it only runs when asked for): a lab test that
/// was asked for and cannot run fails, it never passes without running.
fn require_lab() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "lab tests need root (network namespaces, XDP, AF_XDP); run them through `make test` as root");
}

/// A lab from deploy/lab.sh, deleted on drop (also when the test panics).
struct Lab {
    name: String,
}

impl Lab {
    fn new() -> Lab {
        Lab::with_queues(1)
    }
    /// A lab whose veth pair has `queues` queues each way (client TX queue i feeds server RX queue i; XPS maps
    /// client TX queue i to CPU i).
    fn with_queues(queues: u32) -> Lab {
        let script = repo().join("deploy/lab.sh");
        let name =
            String::from_utf8(Command::new(&script).arg("name").output().unwrap().stdout).unwrap().trim().to_string();
        let lab = Lab { name };
        let st = Command::new(&script)
            .args(["up", &lab.name, "--queues", &queues.to_string()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "lab.sh up failed");
        lab
    }
    fn server_ns(&self) -> String {
        format!("{}s", self.name)
    }
    fn client_ns(&self) -> String {
        format!("{}c", self.name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("deploy/lab.sh")).args(["down", &self.name]).status();
    }
}

/// A server we started; killed by PID on drop.
struct Proc(Child);

/// Whether `child` exits within `timeout`, waiting in poll(2) on its pidfd (readable once it has exited).
fn exited_within(child: &mut Child, timeout: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) else { return false };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) else {
        // Already reaped (or no pidfd): whatever try_wait says.
        return matches!(child.try_wait(), Ok(Some(_)));
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::time::Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ };
        match poll(&mut [PollFd::new(&pidfd, PollFlags::IN)], Some(&ts)) {
            Ok(0) => return false,
            Ok(_) => return child.wait().is_ok(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

impl Proc {
    /// SIGTERM by PID, then wait (bounded) for it to exit; SIGKILL after 10 s. Returns whether it exited on
    /// SIGTERM.
    fn stop(&mut self) -> bool {
        if let Ok(Some(_)) = self.0.try_wait() {
            return true;
        }
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        if exited_within(&mut self.0, Duration::from_secs(10)) {
            return true;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: our own unreaped child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_shunt-bench")
}

/// The shunt server binary of the same profile, built if missing.
fn shunt_bin() -> PathBuf {
    let profile_dir = Path::new(bench()).parent().unwrap().to_path_buf();
    let bin = profile_dir.join("shunt");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(repo()).args(["build", "-p", "shunt", "--bin", "shunt"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building the shunt binary");
    }
    bin
}

fn start_in(ns: &str, argv: &[&str]) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

fn bench_in(lab: &Lab, args: &[&str]) -> std::process::Output {
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &lab.client_ns(), bench()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shunt-bench {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn check_report(v: &Value, what: &str) {
    let u = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{what}: integer `{k}` in {v}"));
    let (sent, received, lost) = (u("sent"), u("received"), u("lost"));
    assert!(sent > 0, "{what}: nothing sent");
    assert_eq!(sent, received + lost, "{what}: sent = received + lost");
    assert!(received > 0, "{what}: nothing received");
    assert!(v["achieved_rate"].as_f64().unwrap() > 0.0, "{what}: achieved_rate");
    let l = &v["latency_ns"];
    let p: Vec<u64> = ["p50", "p90", "p99", "p999", "max"].iter().map(|k| l[k].as_u64().unwrap()).collect();
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{what}: percentiles ordered: {p:?}");
    assert!(p[0] > 0, "{what}: p50 positive");
}

fn run_both(lab: &Lab, target: &str) {
    let dir = std::env::temp_dir().join(format!("shunt-bench-e2e-{}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let probe = bench_in(lab, &["probe", "--target", target, "--timeout", "20"]);
    assert!(probe.status.success());
    let open = dir.join("open.json");
    let svg = dir.join("open.svg");
    bench_in(
        lab,
        &[
            "run",
            "--target",
            target,
            "--rate",
            "20000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--quiet",
            "--json",
            open.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&open).unwrap()).unwrap();
    check_report(&v, "open loop");
    assert_eq!(v["mode"], "open-loop");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let pp = dir.join("pp.json");
    bench_in(
        lab,
        &[
            "run",
            "--ping-pong",
            "--target",
            target,
            "--rate",
            "5000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--quiet",
            "--json",
            pp.to_str().unwrap(),
        ],
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&pp).unwrap()).unwrap();
    check_report(&v, "ping-pong");
    assert_eq!(v["mode"], "ping-pong");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn runs_against_shunt_produce_consistent_json() {
    require_lab();
    let shunt = shunt_bin();
    let lab = Lab::new();
    let config = repo().join("config/lab.toml");
    let sif = lab.server_ns();
    let _server = start_in(
        &lab.server_ns(),
        &[
            shunt.to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &sif,
            "--handler",
            "sockperf",
            "--quiet",
        ],
    );
    run_both(&lab, "198.18.0.1:9000");
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn runs_against_sockperf_server_produce_consistent_json() {
    require_lab();
    assert!(
        Command::new("sockperf").arg("--version").output().is_ok(),
        "sockperf is not installed (make deps installs it)"
    );
    let lab = Lab::new();
    let _server = start_in(
        &lab.server_ns(),
        &["taskset", "-c", "1", "sockperf", "server", "-i", "198.18.0.1", "-p", "9000", "--nonblocked"],
    );
    run_both(&lab, "198.18.0.1:9000");
}

/// Two sender threads, each pinned to its own core with its own socket(s), against the real shunt server with two
/// queues: both server workers get traffic, and every count adds up per thread and merged.
///
/// The 2-core lab cannot give 2 server workers and 2 generator threads a core each, so the workers sleep in
/// poll(2) when their ring is empty (`--poll-mode wakeup`) and the generator threads spin: worker i and sender
/// thread i share core i, and the worker runs only when a request is there. Native XDP: the generic hook on veth
/// sees every packet on queue 0.
fn two_threads_two_queues(sender: &[&str]) {
    require_lab();
    let shunt = shunt_bin();
    let lab = Lab::with_queues(2);
    let dir = std::env::temp_dir().join(format!("shunt-bench-e2e-{}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let server_report = dir.join("server.json");
    let config = repo().join("config/lab.toml");
    let sif = lab.server_ns();
    let mut server = start_in(
        &lab.server_ns(),
        &[
            shunt.to_str().unwrap(),
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &sif,
            "--handler",
            "echo",
            "--queues",
            "0,1",
            "--cores",
            "0,1",
            "--attach-mode",
            "native",
            "--poll-mode",
            "wakeup",
            "--quiet",
            "--report",
            server_report.to_str().unwrap(),
        ],
    );
    let target = "198.18.0.1:9000";
    bench_in(&lab, &["probe", "--target", target, "--timeout", "20"]);
    let json = dir.join("threads.json");
    let mut args = vec![
        "run",
        "--threads",
        "2",
        "--cores",
        "0,1",
        "--target",
        target,
        "--rate",
        "20000",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--flows",
        "4",
        "--quiet",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(sender);
    let out = bench_in(&lab, &args);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    check_report(&v, "merged");
    let threads = v["threads"].as_array().expect("threads in the report");
    assert_eq!(threads.len(), 2, "{v}");
    let u = |t: &Value, k: &str| t[k].as_u64().unwrap_or_else(|| panic!("integer `{k}` in {t}"));
    let mut sums = [0u64; 4];
    for (i, t) in threads.iter().enumerate() {
        let what = format!("thread {i}");
        assert_eq!(u(t, "thread"), i as u64);
        assert_eq!(t["core"].as_u64(), Some(i as u64), "{what}: pinned to core {i}");
        assert_eq!(u(t, "flows"), 2, "{what}: half the flows");
        assert_eq!(u(t, "sent"), u(t, "received") + u(t, "lost"), "{what}: sent = received + lost");
        assert!(u(t, "received") > 0, "{what}: nothing came back\n{}", String::from_utf8_lossy(&out.stdout));
        assert_eq!(u(t, "latency_samples"), u(t, "received"), "{what}: one latency value per reply");
        for (k, key) in ["sent", "received", "lost", "latency_samples"].iter().enumerate() {
            sums[k] += u(t, key);
        }
    }
    assert_eq!(u(&v, "sent"), sums[0], "merged sent = sum of the threads'");
    assert_eq!(u(&v, "received"), sums[1], "merged received = sum of the threads'");
    assert_eq!(u(&v, "lost"), sums[2], "merged lost = sum of the threads'");
    assert_eq!(u(&v, "latency_samples"), sums[3], "merged histogram count = sum of the threads'");
    assert_eq!(v["latency_ns"]["count"].as_u64(), Some(sums[3]), "merged summary count");

    // The server writes its report before it exits.
    assert!(server.stop(), "the server did not stop on SIGTERM");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&server_report).expect("the server's report"))
        .expect("the server's JSON report");
    let workers = r["workers"].as_array().expect("workers in the server report");
    assert_eq!(workers.len(), 2, "{r}");
    for q in 0..2u64 {
        let w = workers.iter().find(|w| w["queue"].as_u64() == Some(q)).unwrap_or_else(|| panic!("worker {q}: {r}"));
        let rx = w["rx_packets"].as_u64().unwrap_or(0);
        assert!(rx > 0, "server worker for queue {q} received nothing: {w}");
        eprintln!("server worker for queue {q}: rx_packets {rx}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn two_afxdp_sender_threads_reach_both_server_queues() {
    // Thread i owns an AF_XDP socket on client queue i (the interface found from the route; native XDP on the
    // client too, by default with several queues, so the replies, which come back on the queue they left from,
    // reach thread i's socket).
    two_threads_two_queues(&["--sender", "afxdp", "--queues", "0,1"]);
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn two_kernel_sender_threads_reach_both_server_queues() {
    // Thread i has its own kernel sockets; pinned to core i it transmits on client TX queue i (XPS, set by
    // deploy/lab.sh), which on veth is server RX queue i.
    two_threads_two_queues(&["--sender", "kernel"]);
}

/// The DNS example binary of the same profile, built if missing.
fn dns_example_bin() -> PathBuf {
    let profile_dir = Path::new(bench()).parent().unwrap().to_path_buf();
    let bin = profile_dir.join("examples/dns");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(repo()).args(["build", "-p", "shunt", "--example", "dns"]);
        if release {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building the DNS example");
    }
    bin
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn dns_runs_check_every_answer() {
    require_lab();
    let dns = dns_example_bin();
    let lab = Lab::new();
    let data = repo().join("bench/data/dns");
    let (zone, queries) = (data.join("bench.test.zone"), data.join("queries.txt"));
    let config = repo().join("config/lab.toml");
    let sif = lab.server_ns();
    let _server = start_in(
        &lab.server_ns(),
        &[
            dns.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--interface",
            &sif,
            "--port",
            "53",
            "--zone",
            zone.to_str().unwrap(),
            "--rrl-rate",
            "0",
            "--mode",
            "socket",
            "--io",
            "blocking",
            "--quiet",
        ],
    );
    let target = "198.18.0.1:53";
    let q = queries.to_str().unwrap();
    bench_in(&lab, &["probe", "--target", target, "--timeout", "20", "--dns-queries", q]);
    let dir = std::env::temp_dir().join(format!("shunt-bench-e2e-dns-{}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    for (mode, extra) in [("open-loop", vec!["--rate", "5000"]), ("ping-pong", vec!["--ping-pong", "--rate", "2000"])] {
        let json = dir.join(format!("{mode}.json"));
        let mut args = vec!["run", "--target", target, "--dns-queries", q, "--duration", "1", "--warmup", "0.2"];
        args.extend(extra);
        args.extend(["--quiet", "--json", json.to_str().unwrap()]);
        bench_in(&lab, &args);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        check_report(&v, mode);
        let d = &v["dns"];
        let u = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{mode}: dns.{k} in {v}"));
        // Warm-up replies are checked and counted too: at least every measured reply.
        assert!(u("noerror") + u("nxdomain") >= v["received"].as_u64().unwrap(), "{mode}: {d}");
        assert!(u("nxdomain") > 0 && u("truncated") > 0, "{mode}: the mix has NXDOMAIN and TC answers: {d}");
        assert_eq!((u("bad_rcode"), u("mismatched")), (0, 0), "{mode}: every answer checks out: {d}");
        assert_eq!(v["lost"], 0, "{mode}: nothing lost at a light load: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
