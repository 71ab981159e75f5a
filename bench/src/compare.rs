//! `shunt-bench compare`: the same ping-pong and the same open-loop sweep against every target of a plan, in one
//! lab, with repetitions interleaved (A B C A B C ...) so that drift of a shared machine spreads over all targets.
//! Writes `<out>/<name>.md` (figures, ratios to the baseline, machine, exact commands), `<name>.json` and SVGs.
//!
//! A target is a UDP echo server started by a shell command in the server namespace (see bench/plans/lab.toml):
//! any new datapath plugs in with a plan entry. The lab is either created here with deploy/lab.sh (`kind =
//! "veth"`) or described (`kind = "static"`: existing interfaces, e.g. two hosts joined by real NICs, reached
//! through command prefixes such as `ssh dut`), so a real-NIC run produces the same report the same way.

use std::{
    collections::BTreeMap,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::{
    load::{parse_rate, SweepReport},
    plot,
    report::{self, RunReport},
    verdict::{self, Agreement, CrossCheck, Evidence, Finding},
};

/// Flags of `compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// The plan: lab and targets.
    #[arg(long, default_value = "bench/plans/lab.toml")]
    pub plan: PathBuf,
    /// Name of the result set: writes <out-dir>/<name>.md, .json, -pingpong.svg, -sweep.svg.
    #[arg(long, default_value = "lab-veth")]
    pub name: String,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// Repetitions of the whole target list (interleaved).
    #[arg(long, default_value_t = 2)]
    pub reps: u32,
    /// Ping-pong: seconds measured per run (shunt-bench and sockperf alike; sockperf's rounded up).
    #[arg(long, default_value_t = 3.0)]
    pub pp_duration: f64,
    /// Ping-pong: runs of each client per repetition, alternating against the same server start (shunt-bench then
    /// sockperf, then sockperf then shunt-bench, ...), so the cross-check compares back-to-back pairs (at least 2).
    #[arg(long, default_value_t = 2)]
    pub pp_alternations: u32,
    /// Ping-pong: request rate cap (a low rate, as for sockperf --mps).
    #[arg(long, default_value_t = 10_000.0)]
    pub pp_rate: f64,
    /// Sweep: rates (k/M suffixes).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, default_value = "20k,50k,100k,150k,200k")]
    pub rates: Vec<f64>,
    /// Sweep: seconds measured per rate.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
    /// Sweep: sender (afxdp pushes more packets per core than kernel sockets).
    #[arg(long, value_enum, default_value = "afxdp")]
    pub sweep_sender: crate::load::Sender,
    /// Sweep: flows (source ports).
    #[arg(long, default_value_t = 4)]
    pub flows: usize,
    /// Sweep: generator threads, each pinned to its own core with its own socket(s) (AF_XDP: its own queue, so the
    /// lab needs that many queues). On the 2-core lab one is right: a second would share the server's core.
    #[arg(long, default_value_t = 1)]
    pub sweep_threads: usize,
    /// Sweep: cores of the generator threads (default: the client core, then the next allowed cores).
    #[arg(long, value_delimiter = ',')]
    pub sweep_cores: Option<Vec<usize>>,
    /// CPU cost: the fixed offered loads (k/M suffixes; `max` = the highest loss-free rate the sweep found for
    /// that target) of the runs during which the server's CPU time is read, from light to near the server's limit
    /// (the same for every target, so that work-conserving servers compare at equal load); 0 skips the phase.
    #[arg(long, value_delimiter = ',', value_parser = parse_cpu_load, default_value = "20k,100k,200k,max")]
    pub cpu_rate: Vec<CpuLoad>,
    /// CPU cost: seconds of each run.
    #[arg(long, default_value_t = 3.0)]
    pub cpu_duration: f64,
    /// DNS plans (`dns_queries`): dnsperf's loads, queries per second (`-Q`; `max`: no `-Q`, as fast as
    /// dnsperf goes); empty or 0 skips dnsperf.
    #[arg(long, value_delimiter = ',', value_parser = parse_cpu_load, default_value = "20k,50k,max")]
    pub dnsperf_rates: Vec<CpuLoad>,
    /// DNS plans: seconds of each dnsperf run (its `-l`).
    #[arg(long, default_value_t = 3.0)]
    pub dnsperf_duration: f64,
    /// UDP payload bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Only these targets (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<String>>,
    /// The shunt-bench binary run in the client namespace (default: this one).
    #[arg(long)]
    pub bench_bin: Option<PathBuf>,
    /// The shunt binary ({shunt} in plans).
    #[arg(long, default_value = "target/release/shunt")]
    pub shunt_bin: PathBuf,
    /// Keep the per-run logs and JSON (printed path) even on success.
    #[arg(long)]
    pub keep_logs: bool,
    /// Measure nothing: rewrite the page and plots of an earlier run from its JSON (<out-dir>/<name>.json,
    /// the rates and CPU rate it was run with).
    #[arg(long)]
    pub replot: bool,
}

/// One load of the CPU phase: a fixed offered rate, or the highest loss-free rate the target's sweep found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CpuLoad {
    /// Requests per second (0: skip).
    Rate(f64),
    /// The sweep's highest rate with loss < 0.1 % for this target (in this repetition).
    Max,
}

impl CpuLoad {
    /// Key in figure names and in the JSON's params (`20000`, `max`).
    pub fn key(&self) -> String {
        match self {
            CpuLoad::Rate(r) => format!("{r:.0}"),
            CpuLoad::Max => "max".into(),
        }
    }

    /// Column heading (`20k`, `1.5M`, `max`).
    pub fn label(&self) -> String {
        match self {
            CpuLoad::Rate(r) => rate_label(*r),
            CpuLoad::Max => "max".into(),
        }
    }
}

/// `20k`, `max`, `0` (nothing) ...
pub fn parse_cpu_load(s: &str) -> Result<CpuLoad, String> {
    if s.trim().eq_ignore_ascii_case("max") {
        return Ok(CpuLoad::Max);
    }
    let r = parse_rate(s)?;
    if !(0.0..=crate::load::MAX_RATE).contains(&r) {
        return Err(format!("CPU load {s:?} out of 0..={}", crate::load::MAX_RATE));
    }
    Ok(CpuLoad::Rate(r))
}

/// The loads actually measured (0 dropped).
pub(crate) fn cpu_loads(loads: &[CpuLoad]) -> Vec<CpuLoad> {
    loads.iter().copied().filter(|l| *l != CpuLoad::Rate(0.0)).collect()
}

/// `20k`, `1.5M`.
pub(crate) fn rate_label(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.1}M", r / 1e6)
    } else {
        format!("{:.0}k", r / 1e3)
    }
}

/// The plan file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Name of the target that ratios are relative to.
    pub baseline: String,
    /// DNS servers: every shunt-bench run sends the queries of this file (dnsperf's format, path relative to the
    /// repository) instead of its own payload and checks each answer (bench/src/dns.rs), and dnsperf runs too.
    #[serde(default)]
    pub dns_queries: Option<String>,
    /// The lab.
    #[serde(default)]
    pub lab: LabSpec,
    /// The servers compared.
    #[serde(rename = "target")]
    pub targets: Vec<Target>,
}

/// The lab: created (veth) or described (static).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LabSpec {
    /// `veth` (created with deploy/lab.sh and deleted afterwards) or `static` (existing; fields below).
    pub kind: String,
    /// Queues of the veth pair.
    pub queues: u32,
    /// Core the servers are pinned to ({server_core}).
    pub server_core: usize,
    /// Core the load generator is pinned to ({client_core}).
    pub client_core: usize,
    /// Static labs: command prefix that runs a command on the server side (e.g. ["ssh", "root@dut"]).
    pub server_exec: Vec<String>,
    /// Static labs: command prefix for the client side (empty: here).
    pub client_exec: Vec<String>,
    /// Static labs: interface names, addresses and MACs.
    pub server_if: String,
    /// See `server_if`.
    pub client_if: String,
    /// See `server_if`.
    pub server_ip: String,
    /// See `server_if`.
    pub client_ip: String,
    /// See `server_if`.
    pub server_mac: String,
    /// See `server_if`.
    pub client_mac: String,
    /// Free text describing the hardware (NICs, link), copied into the report.
    pub description: String,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            kind: "veth".into(),
            queues: 1,
            server_core: 1,
            client_core: 0,
            server_exec: vec![],
            client_exec: vec![],
            server_if: String::new(),
            client_if: String::new(),
            server_ip: String::new(),
            client_ip: String::new(),
            server_mac: String::new(),
            client_mac: String::new(),
            description: String::new(),
        }
    }
}

/// One server to compare.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Short name (table rows, file names).
    pub name: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
    /// Shell command starting the server on the server side (placeholders: see bench/README.md).
    pub start: String,
    /// UDP port it serves.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Speaks sockperf's protocol (clears CLIENT, answers PONG_REQUEST): `sockperf ping-pong` works against it
    /// and is run for the cross-check. Plain echoes and header-swapping reflectors: false.
    #[serde(default, alias = "sockperf_protocol_only")]
    pub sockperf_protocol: bool,
    /// Shell commands run (on this host) before starting it.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Shell commands run after stopping it (also after a failure).
    #[serde(default)]
    pub teardown: Vec<String>,
    /// Seconds to wait for its first reply.
    #[serde(default = "default_ready")]
    pub ready_timeout: f64,
    /// It may fail to start on some machines (e.g. a peer whose XDP program this kernel refuses): a failure is
    /// reported on its row with the server's own messages, as `unavailable`, not as a broken benchmark.
    #[serde(default)]
    pub may_fail: bool,
    /// A DNS server: this target's query file (overrides the plan's `dns_queries`; a plan of mixed targets sets it
    /// on its DNS targets only).
    #[serde(default)]
    pub dns_queries: Option<String>,
    /// A shunt server's metrics endpoint in the server's namespace (placeholders expanded; `{metrics}` is the
    /// one the plans use, with `--metrics {metrics}` in `start`): the CPU phase reads its workers' busy time
    /// there (`shunt stats --json`) before and after each run, for busy ns per reply beside the whole-core cost.
    /// Empty: not read.
    #[serde(default)]
    pub stats: String,
}

impl Target {
    /// Its DNS query file, its own or the plan's (None: not a DNS server).
    pub(crate) fn dns_queries<'a>(&'a self, plan: &'a Plan) -> Option<&'a str> {
        self.dns_queries.as_deref().or(plan.dns_queries.as_deref())
    }
}

fn default_port() -> u16 {
    9000
}
fn default_ready() -> f64 {
    20.0
}

static STOP: once_flag::Flag = once_flag::Flag::new();

mod once_flag {
    use super::*;
    /// A process-wide stop flag set by SIGINT/SIGTERM/SIGHUP.
    pub struct Flag(std::sync::OnceLock<Arc<AtomicBool>>);
    impl Flag {
        pub const fn new() -> Flag {
            Flag(std::sync::OnceLock::new())
        }
        pub fn get(&self) -> &Arc<AtomicBool> {
            self.0.get_or_init(|| Arc::new(AtomicBool::new(false)))
        }
        pub fn is_set(&self) -> bool {
            self.get().load(Ordering::Relaxed)
        }
    }
}

fn check_stop() -> anyhow::Result<()> {
    if STOP.is_set() {
        bail!("interrupted");
    }
    Ok(())
}

/// Placeholder values.
type Vars = BTreeMap<String, String>;

fn subst(s: &str, vars: &Vars) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c)) {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn shown(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
}

/// Output of a bounded command.
struct Out {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

/// Runs `argv` bounded by `timeout` (killed by PID on timeout or interruption).
fn run_bounded(argv: &[String], timeout: Duration) -> anyhow::Result<Out> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("starting `{}`", shown(argv)))?;
    let mut so = child.stdout.take().context("stdout")?;
    let mut se = child.stderr.take().context("stderr")?;
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if STOP.is_set() || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = (t1.join(), t2.join());
            if STOP.is_set() {
                bail!("interrupted");
            }
            bail!("`{}` timed out after {timeout:?}", shown(argv));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Out {
        ok: status.success(),
        status: status.to_string(),
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    })
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

/// A server process started by us; SIGTERM then SIGKILL (by PID) when dropped.
struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(argv: &[String], log: PathBuf) -> anyhow::Result<Server> {
        let f = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("starting `{}`", shown(argv)))?;
        Ok(Server { child: Some(child), log })
    }

    /// The server's PID while it runs (the plan's command is exec'd, so this is the server itself).
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            // SAFETY: signalling our own unreaped child by its PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs teardown commands when dropped.
struct Teardown(Vec<String>);

impl Drop for Teardown {
    fn drop(&mut self) {
        for c in &self.0 {
            // Teardown must run even when interrupted: no STOP check here.
            let _ = Command::new("sh")
                .args(["-c", c])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A veth lab created with deploy/lab.sh; deleted when dropped.
struct LabGuard {
    script: PathBuf,
    name: String,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).args(["down", &self.name]).stdin(Stdio::null()).status();
    }
}

/// sockperf's ping-pong summary (full RTT, µs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SockperfResult {
    /// Percentiles parsed from its output, µs (keys "50.000", "99.000", "MAX", "MIN", ...).
    pub percentiles_us: BTreeMap<String, f64>,
    /// Observations.
    pub observations: u64,
    /// Its "# dropped messages" line.
    pub dropped: u64,
    /// The command.
    pub command: String,
}

/// Parses `sockperf ping-pong` output.
pub fn parse_sockperf(text: &str) -> Option<SockperfResult> {
    let mut r = SockperfResult::default();
    for line in text.lines() {
        let l = line.trim_start_matches("sockperf:").trim();
        if let Some(rest) = l.strip_prefix("---> percentile") {
            let mut it = rest.split('=');
            let (k, v) = (it.next()?.trim(), it.next()?.trim());
            r.percentiles_us.insert(k.to_string(), v.parse().ok()?);
        } else if let Some(rest) = l.strip_prefix("---> <MAX> observation =") {
            r.percentiles_us.insert("MAX".into(), rest.trim().parse().ok()?);
        } else if let Some(rest) = l.strip_prefix("---> <MIN> observation =") {
            r.percentiles_us.insert("MIN".into(), rest.trim().parse().ok()?);
        } else if let Some(rest) = l.strip_prefix("Total ") {
            r.observations = rest.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = l.strip_prefix("# dropped messages =") {
            r.dropped = rest.split(';').next()?.trim().parse().ok()?;
        }
    }
    r.percentiles_us.contains_key("50.000").then_some(r)
}

/// One alternation of a repetition: shunt-bench's ping-pong and, where the target speaks sockperf's protocol,
/// `sockperf ping-pong` right before or after it, against the same server start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Alternation {
    /// shunt-bench ping-pong (kernel sockets).
    pub ping_pong: Option<RunReport>,
    /// sockperf ping-pong --full-rtt.
    pub sockperf: Option<SockperfResult>,
    /// Whether sockperf ran first in this pair (the order alternates, so that a drift does not favour one client).
    pub sockperf_first: bool,
}

impl Alternation {
    /// (shunt-bench p50, sockperf p50) in µs, when both ran.
    pub fn pair(&self) -> Option<(f64, f64)> {
        let b = self.ping_pong.as_ref()?.latency_ns.p50 as f64 / 1e3;
        let s = *self.sockperf.as_ref()?.percentiles_us.get("50.000")?;
        Some((b, s))
    }
}

/// Everything measured against one target in one repetition (one server start).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Round {
    /// Repetition (1-based).
    pub rep: u32,
    /// The ping-pong runs, in order.
    pub alternations: Vec<Alternation>,
    /// shunt-bench open-loop sweep.
    pub sweep: Option<SweepReport>,
    /// The CPU time spent during the fixed-load runs, one per load of `--cpu-rate` (results written before
    /// several loads existed hold one object here, or null: both still read).
    #[serde(default, deserialize_with = "one_or_many")]
    pub cpu: Vec<CpuCost>,
    /// dnsperf runs (DNS plans), one per `--dnsperf-rates` load.
    #[serde(default)]
    pub dnsperf: Vec<DnsperfResult>,
    /// What went wrong, if anything.
    pub errors: Vec<String>,
}

/// What one dnsperf run printed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DnsperfResult {
    /// The load (`20000`, `max`).
    pub load: String,
    /// Queries per second asked for (`-Q`; 0: as fast as it goes).
    pub requested_qps: f64,
    /// Queries sent.
    pub sent: u64,
    /// Queries completed.
    pub completed: u64,
    /// Queries lost.
    pub lost: u64,
    /// Its "Queries per second".
    pub qps: f64,
    /// Its average latency, µs.
    pub avg_latency_us: f64,
    /// Its maximum latency, µs.
    pub max_latency_us: f64,
    /// Response codes and counts.
    pub rcodes: Vec<(String, u64)>,
    /// The server process's CPU time over the run's wall time (1.0: one core busy all along; a spinning server
    /// shows 1.0 at any load). Below 1 at `max` with nothing lost: dnsperf, not the server, set the pace.
    #[serde(default)]
    pub server_cpu_share: f64,
    /// The command.
    pub command: String,
}

/// Parses dnsperf's summary.
pub fn parse_dnsperf(text: &str) -> Option<DnsperfResult> {
    let field = |key: &str| -> Option<String> {
        let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
        Some(line.split_once(':')?.1.split_whitespace().next()?.to_string())
    };
    let num = |key: &str| -> Option<u64> { field(key)?.parse().ok() };
    let rcodes = text
        .lines()
        .find(|l| l.trim_start().starts_with("Response codes:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, r)| {
            r.split(',')
                .filter_map(|part| {
                    let mut w = part.split_whitespace();
                    Some((w.next()?.to_string(), w.next()?.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    // "Average Latency (s):  0.000123 (min 0.000050, max 0.001000)"
    let avg_line = text.lines().find(|l| l.trim_start().starts_with("Average Latency"))?;
    let avg = avg_line.split_once(':')?.1.split_whitespace().next()?.parse::<f64>().ok()?;
    let max =
        avg_line.split("max ").nth(1).and_then(|m| m.trim_end_matches(')').trim().parse::<f64>().ok()).unwrap_or(0.0);
    Some(DnsperfResult {
        sent: num("Queries sent")?,
        completed: num("Queries completed")?,
        lost: num("Queries lost")?,
        qps: field("Queries per second")?.parse().ok()?,
        avg_latency_us: avg * 1e6,
        max_latency_us: max * 1e6,
        rcodes,
        ..Default::default()
    })
}

/// Medians over the repetitions of one target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TargetSummary {
    /// Target name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Figures (name -> median value; latency in µs, rates in pps).
    pub figures: BTreeMap<String, f64>,
    /// Cross-check against sockperf (None: the target does not speak its protocol, or no pair ran).
    pub crosscheck: Option<CrossCheck>,
    /// Repetitions that produced each figure.
    pub reps_ok: u32,
    /// Sweep points: rate -> (median p99 µs, median loss %).
    pub sweep: Vec<(f64, f64, f64)>,
    /// Whether the generator fell behind in any sweep point or repetition.
    pub generator_behind_at: Vec<f64>,
}

/// The JSON written next to the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// Result-set name.
    pub name: String,
    /// The command that produced it.
    pub command: String,
    /// Start time (UTC, RFC 3339-ish).
    pub started: String,
    /// Machine description lines.
    pub machine: Vec<String>,
    /// The plan.
    pub plan: Plan,
    /// Parameters.
    pub params: BTreeMap<String, String>,
    /// Per target: summaries.
    pub summaries: Vec<TargetSummary>,
    /// Per target: every round.
    pub rounds: BTreeMap<String, Vec<Round>>,
    /// Exact commands of the first repetition, per target.
    pub commands: BTreeMap<String, Vec<String>>,
    /// Why figures cannot be trusted (worst first); empty: nothing found. See bench/src/verdict.rs.
    pub findings: Vec<Finding>,
}

/// `null`, one object or a list of them (older result files had one CPU reading per round).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CpuCost>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<CpuCost>),
        One(CpuCost),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(c)) => vec![c],
        Some(OneOrMany::Many(v)) => v,
    })
}

/// CPU time read around one open-loop run at a fixed offered rate, from the kernel's accounting (outside the
/// server, so it is the same reading for every target, shunt or not).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuCost {
    /// Which load of `--cpu-rate` (`20000`, `max`; empty in older files: the only one).
    #[serde(default)]
    pub load: String,
    /// Offered rate (pps).
    pub rate: f64,
    /// Whether the generator fell behind its schedule in this run (the load was the generator's, not the server's).
    #[serde(default)]
    pub generator_behind: bool,
    /// Replies the generator received in the run.
    pub replies: u64,
    /// Wall time between the two readings, s.
    pub wall_s: f64,
    /// CPU time of the server's process (every thread, user + system, /proc/PID/task/*/schedstat), ns.
    pub server_ns: u64,
    /// Busy time (everything but idle and iowait, softirq included) of the server's core, ns (/proc/stat).
    pub server_core_ns: u64,
    /// Busy time of every core, the generator's included, ns.
    pub all_cores_ns: u64,
    /// The server's workers' busy time over the run (`busy_ns`, DPDK's lcore busyness: turns that found work),
    /// ns, read from its metrics endpoint; None for targets without one (`Target::stats`).
    #[serde(default)]
    pub busy_ns: Option<u64>,
}

/// CPU time (ns on CPU, every thread) of process `pid` and its descendants, from schedstat.
fn process_tree_cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            let path = task.path();
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total += stat.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let children = std::fs::read_to_string(path.join("children")).unwrap_or_default();
            todo.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
    }
    total
}

/// Busy time of each core (cpuN lines of /proc/stat: user + nice + system + irq + softirq + steal), ns.
fn core_busy_ns() -> BTreeMap<usize, u64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal ...
            let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum::<u64>();
            Some((cpu, busy * 1_000_000_000 / hz))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn summarize(t: &Target, rounds: &[Round], rates: &[f64], loads: &[CpuLoad], dnsperf: &[CpuLoad]) -> TargetSummary {
    let mut figures = BTreeMap::new();
    let mut put = |k: &str, vals: Vec<f64>| {
        if let Some(m) = median(vals) {
            figures.insert(k.to_string(), m);
        }
    };
    let pp: Vec<&RunReport> =
        rounds.iter().flat_map(|r| &r.alternations).filter_map(|a| a.ping_pong.as_ref()).collect();
    let us = |ns: u64| ns as f64 / 1e3;
    put("pp_p50_us", pp.iter().map(|r| us(r.latency_ns.p50)).collect());
    put("pp_p99_us", pp.iter().map(|r| us(r.latency_ns.p99)).collect());
    put("pp_p999_us", pp.iter().map(|r| us(r.latency_ns.p999)).collect());
    put("pp_max_us", pp.iter().map(|r| us(r.latency_ns.max)).collect());
    put("pp_rate", pp.iter().map(|r| r.achieved_rate).collect());
    let sp: Vec<&SockperfResult> =
        rounds.iter().flat_map(|r| &r.alternations).filter_map(|a| a.sockperf.as_ref()).collect();
    put("sockperf_p50_us", sp.iter().filter_map(|s| s.percentiles_us.get("50.000").copied()).collect());
    put("sockperf_p99_us", sp.iter().filter_map(|s| s.percentiles_us.get("99.000").copied()).collect());
    let sw: Vec<&SweepReport> = rounds.iter().filter_map(|r| r.sweep.as_ref()).collect();
    put("max_rate_loss_lt_0.1pct", sw.iter().map(|s| s.max_rate_loss_below_0_1pct.unwrap_or(0.0)).collect());
    put("p99_knee_rate", sw.iter().filter_map(|s| s.p99_knee_rate).collect());
    // CPU per reply at each load (`cpu_server_ns@20000`, `...@max`, and the actual offered rate `cpu_rate@max`);
    // the first load's figures also go by the plain names (the main table's columns).
    for (i, load) in loads.iter().enumerate() {
        let key = load.key();
        let cpu: Vec<&CpuCost> = rounds
            .iter()
            .flat_map(|r| &r.cpu)
            .filter(|c| c.replies > 0 && (c.load == key || (c.load.is_empty() && i == 0)))
            .collect();
        let per = |f: fn(&CpuCost) -> u64| cpu.iter().map(|c| f(c) as f64 / c.replies as f64).collect::<Vec<_>>();
        for (name, f) in [
            ("cpu_server_ns", (|c| c.server_ns) as fn(&CpuCost) -> u64),
            ("cpu_server_core_ns", |c| c.server_core_ns),
            ("cpu_all_cores_ns", |c| c.all_cores_ns),
        ] {
            put(&format!("{name}@{key}"), per(f));
            if i == 0 {
                put(name, per(f));
            }
        }
        let busy: Vec<f64> = cpu.iter().filter_map(|c| c.busy_ns.map(|b| b as f64 / c.replies as f64)).collect();
        put(&format!("cpu_busy_ns@{key}"), busy.clone());
        if i == 0 {
            put("cpu_busy_ns", busy);
        }
        put(&format!("cpu_rate@{key}"), cpu.iter().map(|c| c.rate).collect());
        if cpu.iter().any(|c| c.generator_behind) {
            put(&format!("cpu_generator_behind@{key}"), vec![1.0]);
        }
    }
    for load in dnsperf {
        let key = load.key();
        let runs: Vec<&DnsperfResult> = rounds.iter().flat_map(|r| &r.dnsperf).filter(|d| d.load == key).collect();
        put(&format!("dnsperf_qps@{key}"), runs.iter().map(|d| d.qps).collect());
        put(
            &format!("dnsperf_loss_pct@{key}"),
            runs.iter().filter(|d| d.sent > 0).map(|d| d.lost as f64 * 100.0 / d.sent as f64).collect(),
        );
        put(&format!("dnsperf_avg_us@{key}"), runs.iter().map(|d| d.avg_latency_us).collect());
        put(&format!("dnsperf_server_cpu@{key}"), runs.iter().map(|d| d.server_cpu_share * 100.0).collect());
        if runs.iter().any(|d| dnsperf_limited(d)) {
            put(&format!("dnsperf_limited@{key}"), vec![1.0]);
        }
    }
    let mut sweep = Vec::new();
    let mut behind = Vec::new();
    for &rate in rates {
        let pts: Vec<&RunReport> =
            sw.iter().flat_map(|s| s.points.iter()).filter(|p| (p.offered_rate - rate).abs() < 0.5).collect();
        if pts.iter().any(|p| p.generator_behind) {
            behind.push(rate);
        }
        if let Some(p50) = median(pts.iter().map(|p| us(p.latency_ns.p50)).collect()) {
            figures.insert(format!("sweep_p50_us@{rate:.0}"), p50);
        }
        if let (Some(p99), Some(loss)) = (
            median(pts.iter().map(|p| us(p.latency_ns.p99)).collect()),
            median(pts.iter().map(|p| p.loss_ratio * 100.0).collect()),
        ) {
            figures.insert(format!("sweep_p99_us@{rate:.0}"), p99);
            sweep.push((rate, p99, loss));
        }
    }
    let crosscheck = if t.sockperf_protocol {
        verdict::crosscheck(
            &rounds.iter().map(|r| r.alternations.iter().filter_map(Alternation::pair).collect()).collect::<Vec<_>>(),
        )
    } else {
        None
    };
    TargetSummary {
        name: t.name.clone(),
        description: t.description.clone(),
        figures,
        crosscheck,
        reps_ok: rounds.iter().filter(|r| r.errors.is_empty()).count() as u32,
        sweep,
        generator_behind_at: behind,
    }
}

/// dnsperf did not keep the rate it was asked for although the server answered everything (< 0.1 % lost): the
/// figure is dnsperf's (one thread), not the server's.
fn dnsperf_limited(d: &DnsperfResult) -> bool {
    d.requested_qps > 0.0 && d.qps < 0.98 * d.requested_qps && d.lost * 1000 <= d.sent
}

/// What one target's rounds say about the trust its figures deserve (see bench/src/verdict.rs).
fn evidence(t: &Target, rounds: &[Round], summary: &TargetSummary) -> Evidence {
    let mut ev = Evidence {
        name: t.name.clone(),
        crosscheck: summary.crosscheck.clone(),
        behind_rates: summary.generator_behind_at.clone(),
        ..Default::default()
    };
    let adds_up = |r: &RunReport| {
        let mut wrong = Vec::new();
        if r.sent != r.received + r.lost {
            wrong.push(format!("sent {} != received {} + lost {}", r.sent, r.received, r.lost));
        }
        if !r.threads.is_empty() {
            let sum = |f: fn(&report::ThreadReport) -> u64| r.threads.iter().map(f).sum::<u64>();
            if (sum(|t| t.sent), sum(|t| t.received), sum(|t| t.latency_samples))
                != (r.sent, r.received, r.latency_samples)
            {
                wrong.push("the threads' counts do not sum to the merged ones".to_string());
            }
        }
        wrong
    };
    for round in rounds {
        let rep = round.rep;
        for e in &round.errors {
            let line = format!("rep {rep}: {}", e.lines().next().unwrap_or(""));
            if t.may_fail {
                ev.unavailable.push(line);
            } else {
                ev.errors.push(line);
            }
        }
        for c in &round.cpu {
            if c.generator_behind {
                ev.limited.push(format!(
                    "rep {rep}: the CPU-phase run at {:.0}k req/s: the generator fell behind (CPU table ⚠)",
                    c.rate / 1e3
                ));
            }
        }
        for d in round.dnsperf.iter().filter(|d| dnsperf_limited(d)) {
            ev.limited.push(format!(
                "rep {rep}: dnsperf asked for {:.0}k qps, did {:.1}k with {} lost: dnsperf, not the server, is the limit",
                d.requested_qps / 1e3,
                d.qps / 1e3,
                d.lost
            ));
        }
        let runs = round
            .sweep
            .iter()
            .flat_map(|s| &s.points)
            .chain(round.alternations.iter().filter_map(|a| a.ping_pong.as_ref()));
        for r in runs {
            if let Some(d) = r.dns.as_ref().filter(|d| d.bad_rcode > 0) {
                ev.contradictions.push(format!(
                    "rep {rep} at {:.0}/s: {} DNS answers with a wrong rcode (not NOERROR/NXDOMAIN, or not what the \
                     same query got before)",
                    r.offered_rate, d.bad_rcode
                ));
            }
        }
        for (k, alt) in round.alternations.iter().enumerate() {
            if let Some(pp) = &alt.ping_pong {
                for w in adds_up(pp) {
                    ev.contradictions.push(format!("rep {rep} ping-pong {}: {w}", k + 1));
                }
                if pp.received == 0 {
                    ev.contradictions.push(format!(
                        "rep {rep} ping-pong {}: shunt-bench got no reply from a server that answered the probe",
                        k + 1
                    ));
                } else {
                    ev.pp_p50_us.push(pp.latency_ns.p50 as f64 / 1e3);
                }
            }
        }
        for p in round.sweep.iter().flat_map(|s| &s.points) {
            for w in adds_up(p) {
                ev.contradictions.push(format!("rep {rep} sweep at {:.0}/s: {w}", p.offered_rate));
            }
        }
    }
    ev
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn machine_description(lab: &LabSpec) -> Vec<String> {
    let cmd = |argv: &[&str]| {
        Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").to_string();
    let mut v = vec![
        format!("kernel: {}", cmd(&["uname", "-srm"])),
        format!("cpu: {model} x {} online", cmd(&["nproc"])),
        format!("memory: {}", mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")),
        format!("load average at start: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()),
        format!("sockperf: {}", cmd(&["sockperf", "--version"]).lines().next().unwrap_or("?")),
        format!("dpdk: {}", cmd(&["dpkg-query", "-W", "-f", "${Version}", "dpdk"])),
        format!("rustc: {}", cmd(&["rustc", "-V"])),
        format!("shunt commit: {}", cmd(&["git", "rev-parse", "--short", "HEAD"])),
    ];
    if lab.kind == "veth" {
        v.push(format!(
            "lab: veth pair between two network namespaces (deploy/lab.sh), {} queue(s); server pinned to core {}, \
             client to core {}; XDP generic mode, AF_XDP copy mode",
            lab.queues, lab.server_core, lab.client_core
        ));
    }
    if !lab.description.is_empty() {
        v.push(format!("lab: {}", lab.description));
    }
    v
}

fn now_utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let out = Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_else(|_| secs.to_string())
}

/// Runs the comparison.
pub fn run(a: CompareArgs) -> anyhow::Result<ExitCode> {
    if a.replot {
        return replot(a);
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(sig, STOP.get().clone()).context("installing signal handlers")?;
    }
    let command = std::env::args().map(|x| shell_quote(&x)).collect::<Vec<_>>().join(" ");
    let plan_text = std::fs::read_to_string(&a.plan).with_context(|| format!("reading {}", a.plan.display()))?;
    let mut plan: Plan = toml::from_str(&plan_text).with_context(|| format!("parsing {}", a.plan.display()))?;
    if let Some(only) = &a.only {
        plan.targets.retain(|t| only.contains(&t.name));
    }
    if plan.targets.is_empty() {
        bail!("no targets to run");
    }
    if a.reps == 0 || a.reps > 20 {
        bail!("--reps must be 1..=20");
    }
    if a.rates.is_empty() || a.rates.iter().any(|&r| r <= 0.0 || r > crate::load::MAX_RATE) {
        bail!("--rates must be positive and at most {}", crate::load::MAX_RATE);
    }
    if !(0.1..=60.0).contains(&a.duration) || !(0.1..=60.0).contains(&a.pp_duration) {
        bail!("--duration and --pp-duration must be 0.1..=60 s");
    }
    if !(2..=10).contains(&a.pp_alternations) {
        bail!("--pp-alternations must be 2..=10 (one pair cannot tell noise from a contradiction)");
    }
    if !(1..=crate::load::MAX_THREADS).contains(&a.sweep_threads) {
        bail!("--sweep-threads must be 1..={}", crate::load::MAX_THREADS);
    }
    if a.sweep_cores.as_ref().is_some_and(|c| c.len() != a.sweep_threads) {
        bail!("--sweep-cores must list one core per sweep thread ({})", a.sweep_threads);
    }
    if a.sweep_sender == crate::load::Sender::Afxdp && a.sweep_threads as u32 > plan.lab.queues {
        bail!(
            "--sweep-threads {} with the AF_XDP sender needs a queue per thread: the plan's lab has {} (lab.queues)",
            a.sweep_threads,
            plan.lab.queues
        );
    }
    // SAFETY: geteuid has no preconditions.
    if plan.lab.kind == "veth" && unsafe { libc::geteuid() } != 0 {
        bail!("the veth lab needs root");
    }
    let repo = std::env::current_dir()?;
    let bench = match &a.bench_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let shunt = if a.shunt_bin.is_absolute() { a.shunt_bin.clone() } else { repo.join(&a.shunt_bin) };
    if !shunt.exists() && plan.targets.iter().any(|t| t.start.contains("{shunt}")) {
        bail!("{} not found: build it first (cargo build --release)", shunt.display());
    }
    let work = std::env::temp_dir().join(format!("shunt-bench-{}-{}", a.name, std::process::id()));
    std::fs::create_dir_all(&work)?;
    let started = now_utc();
    let load_at_start = load_average().map(|l| (l, std::thread::available_parallelism().map_or(1, |n| n.get())));
    let machine = machine_description(&plan.lab);

    // The lab.
    let mut vars = Vars::new();
    let _lab_guard;
    let (server_exec, client_exec): (Vec<String>, Vec<String>);
    if plan.lab.kind == "veth" {
        let script = repo.join("deploy/lab.sh");
        let name = String::from_utf8(Command::new(&script).arg("name").output()?.stdout)?.trim().to_string();
        let up = run_bounded(
            &[script.display().to_string(), "up".into(), name.clone(), "--queues".into(), plan.lab.queues.to_string()],
            Duration::from_secs(30),
        )?;
        _lab_guard = Some(LabGuard { script: script.clone(), name: name.clone() });
        if !up.ok {
            bail!("lab.sh up failed: {}{}", up.stdout, up.stderr);
        }
        let info = run_bounded(&[script.display().to_string(), "info".into(), name.clone()], Duration::from_secs(10))?;
        for line in info.stdout.lines() {
            if let Some((k, v)) = line.split_once('=') {
                vars.insert(k.to_string(), v.to_string());
            }
        }
        vars.insert("server_ip".into(), vars.get("server_v4").cloned().unwrap_or_default());
        vars.insert("client_ip".into(), vars.get("client_v4").cloned().unwrap_or_default());
        vars.insert("lab".into(), name);
        server_exec = vec!["ip".into(), "netns".into(), "exec".into(), vars["server_ns"].clone()];
        client_exec = vec!["ip".into(), "netns".into(), "exec".into(), vars["client_ns"].clone()];
        eprintln!("compare: lab {} up", vars["lab"]);
    } else if plan.lab.kind == "static" {
        _lab_guard = None;
        let l = &plan.lab;
        for (k, v) in [
            ("server_if", &l.server_if),
            ("client_if", &l.client_if),
            ("server_ip", &l.server_ip),
            ("client_ip", &l.client_ip),
            ("server_mac", &l.server_mac),
            ("client_mac", &l.client_mac),
        ] {
            if v.is_empty() {
                bail!("a static lab needs lab.{k}");
            }
            vars.insert(k.into(), v.clone());
        }
        vars.insert("lab".into(), format!("shuntstatic{}", std::process::id() % 1000));
        server_exec = l.server_exec.clone();
        client_exec = l.client_exec.clone();
    } else {
        bail!("lab.kind must be \"veth\" or \"static\"");
    }
    vars.insert("repo".into(), repo.display().to_string());
    vars.insert("shunt".into(), shunt.display().to_string());
    // The examples built next to that shunt binary (target/release/examples).
    vars.insert(
        "examples".into(),
        shunt.parent().map(|d| d.join("examples")).unwrap_or_else(|| "examples".into()).display().to_string(),
    );
    let mut dns_count = None;
    for t in &plan.targets {
        if let Some(q) = t.dns_queries(&plan) {
            let queries =
                crate::dns::Queries::load(&repo.join(q)).with_context(|| format!("{}'s dns_queries", t.name))?;
            dns_count.get_or_insert(queries.count());
        }
    }
    vars.insert("bench".into(), bench.display().to_string());
    vars.insert("server_core".into(), plan.lab.server_core.to_string());
    // shunt targets' metrics endpoint, inside the server's namespace (or on a static lab's server: keep it local).
    vars.insert("metrics".into(), "127.0.0.1:19464".into());
    vars.insert("client_core".into(), plan.lab.client_core.to_string());
    vars.insert("server_exec".into(), shown(&server_exec));
    vars.insert("client_exec".into(), shown(&client_exec));
    vars.insert("work".into(), work.display().to_string());

    let mut rounds: BTreeMap<String, Vec<Round>> = BTreeMap::new();
    let mut commands: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let t0 = Instant::now();
    for rep in 1..=a.reps {
        for t in &plan.targets {
            check_stop()?;
            let mut tv = vars.clone();
            tv.insert("port".into(), t.port.to_string());
            if let Some(q) = t.dns_queries(&plan) {
                tv.insert("dns_queries".into(), repo.join(q).display().to_string());
            }
            eprintln!("compare: rep {rep}/{} target {} ({:.0} s elapsed)", a.reps, t.name, t0.elapsed().as_secs_f64());
            let mut cmds = Vec::new();
            let round = one_round(&a, t, rep, &tv, &server_exec, &client_exec, &bench, &work, &mut cmds);
            if STOP.is_set() {
                bail!("interrupted");
            }
            for e in &round.errors {
                eprintln!("compare: {} rep {rep}: {e}", t.name);
            }
            commands.entry(t.name.clone()).or_insert(cmds);
            rounds.entry(t.name.clone()).or_default().push(round);
        }
    }
    eprintln!("compare: all rounds done in {:.0} s", t0.elapsed().as_secs_f64());

    let summaries: Vec<TargetSummary> = plan
        .targets
        .iter()
        .map(|t| {
            let rs = rounds.get(&t.name).map(Vec::as_slice).unwrap_or(&[]);
            summarize(t, rs, &a.rates, &cpu_loads(&a.cpu_rate), &cpu_loads(&a.dnsperf_rates))
        })
        .collect();
    let mut params = BTreeMap::new();
    params.insert("reps".into(), a.reps.to_string());
    params.insert("pp_rate".into(), a.pp_rate.to_string());
    params.insert("pp_duration_s".into(), a.pp_duration.to_string());
    params.insert("pp_alternations".into(), a.pp_alternations.to_string());
    params.insert("sweep_threads".into(), a.sweep_threads.to_string());
    params.insert("rates".into(), a.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(","));
    params.insert("sweep_duration_s".into(), a.duration.to_string());
    params.insert("sweep_sender".into(), format!("{:?}", a.sweep_sender).to_lowercase());
    params.insert("sweep_flows".into(), a.flows.to_string());
    params.insert("size".into(), a.size.to_string());
    let loads = cpu_loads(&a.cpu_rate);
    params.insert("cpu_rate".into(), loads.first().map_or("0".into(), CpuLoad::key));
    params.insert("cpu_rates".into(), loads.iter().map(CpuLoad::key).collect::<Vec<_>>().join(","));
    params.insert("cpu_duration_s".into(), a.cpu_duration.to_string());
    if let Some(n) = dns_count {
        params.insert("dns_query_count".into(), n.to_string());
        params.insert(
            "dnsperf_rates".into(),
            cpu_loads(&a.dnsperf_rates).iter().map(CpuLoad::key).collect::<Vec<_>>().join(","),
        );
        params.insert("dnsperf_duration_s".into(), a.dnsperf_duration.to_string());
    }
    let mut machine = machine;
    machine
        .push(format!("load average at end: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()));
    let evidence: Vec<Evidence> = plan
        .targets
        .iter()
        .zip(&summaries)
        .map(|(t, s)| evidence(t, rounds.get(&t.name).map(Vec::as_slice).unwrap_or(&[]), s))
        .collect();
    let findings = verdict::findings(&evidence, load_at_start);
    let cmp = Comparison {
        name: a.name.clone(),
        command,
        started,
        machine,
        plan,
        params,
        summaries,
        rounds,
        commands,
        findings,
    };

    std::fs::create_dir_all(&a.out_dir)?;
    let base = a.out_dir.join(&a.name);
    report::write_json(&base.with_extension("json"), &cmp)?;
    let md = write_page(&cmp, &a)?;
    println!("{md}");
    eprintln!("compare: wrote {}.md, .json and the plots", base.display());
    if a.keep_logs {
        eprintln!("compare: logs kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if cmp.findings.is_empty() {
        eprintln!("compare: trustworthy: no contradiction, no noise beyond the limits, generator never behind");
    }
    for f in &cmp.findings {
        eprintln!("compare: {}", f.line());
    }
    Ok(ExitCode::from(verdict::exit_code(&cmp.findings)))
}

#[allow(clippy::too_many_arguments)]
fn one_round(
    a: &CompareArgs,
    t: &Target,
    rep: u32,
    vars: &Vars,
    server_exec: &[String],
    client_exec: &[String],
    bench: &Path,
    work: &Path,
    cmds: &mut Vec<String>,
) -> Round {
    let mut round = Round { rep, ..Default::default() };
    if let Err(e) = round_inner(a, t, rep, vars, server_exec, client_exec, bench, work, cmds, &mut round) {
        round.errors.push(format!("{e:#}"));
    }
    round
}

#[allow(clippy::too_many_arguments)]
fn round_inner(
    a: &CompareArgs,
    t: &Target,
    rep: u32,
    vars: &Vars,
    server_exec: &[String],
    client_exec: &[String],
    bench: &Path,
    work: &Path,
    cmds: &mut Vec<String>,
    round: &mut Round,
) -> anyhow::Result<()> {
    let target = format!("{}:{}", vars["server_ip"], t.port);
    let core = vars["client_core"].clone();
    let tag = format!("{}-{rep}", t.name);
    let _teardown = Teardown(t.teardown.iter().map(|c| subst(c, vars)).collect());
    for c in &t.setup {
        let c = subst(c, vars);
        cmds.push(format!("# setup\n{c}"));
        let out = run_bounded(&sh(&c), Duration::from_secs(30))?;
        if !out.ok {
            bail!("setup `{c}` failed ({}): {}{}", out.status, out.stdout, out.stderr);
        }
    }
    let mut start = server_exec.to_vec();
    start.extend(sh(&format!("exec {}", subst(&t.start, vars))));
    cmds.push(format!("# server\n{}", shown(&start)));
    let mut server = Server::start(&start, work.join(format!("{tag}-server.log")))?;
    for c in &t.teardown {
        cmds.push(format!("# teardown (after the server stops)\n{}", subst(c, vars)));
    }

    let client = |args: Vec<String>| -> Vec<String> {
        let mut v = client_exec.to_vec();
        v.extend(["taskset".into(), "-c".into(), core.clone()]);
        v.extend(args);
        v
    };
    let b = bench.display().to_string();
    // The workers' busy time, summed, from the server's own endpoint (in its namespace), when the target has one.
    let stats_addr = subst(&t.stats, vars);
    let busy_ns = || -> Option<u64> {
        if stats_addr.is_empty() {
            return None;
        }
        let mut argv = server_exec.to_vec();
        argv.extend([vars["shunt"].clone(), "stats".into(), "--metrics".into(), stats_addr.clone(), "--json".into()]);
        let out = run_bounded(&argv, Duration::from_secs(5)).ok().filter(|o| o.ok)?;
        let snapshot: shunt::observe::metrics::StatsSnapshot = serde_json::from_str(out.stdout.trim()).ok()?;
        Some(snapshot.workers.iter().map(|w| w.stats.busy_ns).sum())
    };
    // DNS plans: every shunt-bench run sends the query file's messages and checks the answers.
    let dns: Vec<String> = vars.get("dns_queries").map(|q| vec!["--dns-queries".into(), q.clone()]).unwrap_or_default();
    let mut probe = client(vec![
        b.clone(),
        "probe".into(),
        "--target".into(),
        target.clone(),
        "--timeout".into(),
        t.ready_timeout.to_string(),
    ]);
    probe.extend(dns.iter().cloned());
    cmds.push(format!("# wait until it answers\n{}", shown(&probe)));
    let out = run_bounded(&probe, Duration::from_secs_f64(t.ready_timeout + 10.0))?;
    if !out.ok || !server.alive() {
        let log = server.log_tail();
        let what = if server.alive() { "did not answer" } else { "exited without answering" };
        // The server's own words on the first line (the page's error list shows first lines).
        bail!("{} {what}: {}\n{}{}\n--- server log ---\n{log}", t.name, key_lines(&log), out.stdout, out.stderr);
    }

    // Ping-pong: shunt-bench (kernel sockets, like sockperf's client) and, where the target speaks sockperf's
    // protocol, `sockperf ping-pong`, alternately against this one server start: B S, S B, B S, ... Each pair
    // runs back to back, so the cross-check compares the two clients under the same conditions.
    for k in 0..a.pp_alternations {
        check_stop()?;
        let first = k == 0;
        let sockperf_first = t.sockperf_protocol && k % 2 == 1;
        let mut alt = Alternation { sockperf_first, ..Default::default() };
        let steps: &[bool] = match (t.sockperf_protocol, sockperf_first) {
            (false, _) => &[false],
            (true, false) => &[false, true],
            (true, true) => &[true, false],
        };
        for &is_sockperf in steps {
            if !server.alive() {
                bail!("{} exited:\n{}", t.name, server.log_tail());
            }
            if is_sockperf {
                let sp = client(vec![
                    "sockperf".into(),
                    "ping-pong".into(),
                    "-i".into(),
                    vars["server_ip"].clone(),
                    "-p".into(),
                    t.port.to_string(),
                    "-t".into(),
                    format!("{}", a.pp_duration.ceil() as u64),
                    "--mps".into(),
                    format!("{:.0}", a.pp_rate),
                    "-m".into(),
                    a.size.to_string(),
                    "--full-rtt".into(),
                    // Spin on a non-blocking socket, as shunt-bench does (the default epoll wait adds a wake-up).
                    "--nonblocked".into(),
                ]);
                if first || k == 1 {
                    cmds.push(format!("# ping-pong {} (sockperf)\n{}", k + 1, shown(&sp)));
                }
                let out = run_bounded(&sp, Duration::from_secs_f64(a.pp_duration + 30.0))?;
                match parse_sockperf(&out.stdout).or_else(|| parse_sockperf(&out.stderr)) {
                    Some(mut s) if out.ok => {
                        s.command = shown(&sp);
                        alt.sockperf = Some(s);
                    }
                    _ => round.errors.push(format!(
                        "sockperf ping-pong {} failed ({}): {}{}",
                        k + 1,
                        out.status,
                        out.stdout,
                        out.stderr
                    )),
                }
            } else {
                let pp_json = work.join(format!("{tag}-pingpong-{}.json", k + 1));
                let pp = client(vec![
                    b.clone(),
                    "run".into(),
                    "--ping-pong".into(),
                    "--target".into(),
                    target.clone(),
                    "--rate".into(),
                    a.pp_rate.to_string(),
                    "--duration".into(),
                    a.pp_duration.to_string(),
                    "--warmup".into(),
                    "0.5".into(),
                    "--size".into(),
                    a.size.to_string(),
                    "--core".into(),
                    "-1".into(),
                    "--quiet".into(),
                    "--json".into(),
                    pp_json.display().to_string(),
                ]);
                let mut pp = pp;
                pp.extend(dns.iter().cloned());
                if first || k == 1 {
                    cmds.push(format!("# ping-pong {} (shunt-bench)\n{}", k + 1, shown(&pp)));
                }
                let out = run_bounded(&pp, Duration::from_secs_f64(a.pp_duration + 30.0))?;
                if out.ok {
                    alt.ping_pong = Some(serde_json::from_str(&std::fs::read_to_string(&pp_json)?)?);
                } else {
                    round.errors.push(format!("ping-pong {} failed ({}): {}", k + 1, out.status, out.stderr.trim()));
                }
            }
        }
        round.alternations.push(alt);
    }
    if a.pp_alternations > 2 {
        cmds.push(format!("# ... {} alternations in all, in turn", a.pp_alternations));
    }

    // Open-loop sweep.
    if !server.alive() {
        bail!("{} exited:\n{}", t.name, server.log_tail());
    }
    let sw_json = work.join(format!("{tag}-sweep.json"));
    let mut sw = vec![
        b.clone(),
        "sweep".into(),
        "--sender".into(),
        format!("{:?}", a.sweep_sender).to_lowercase(),
        "--target".into(),
        target.clone(),
        "--rates".into(),
        a.rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(","),
        "--duration".into(),
        a.duration.to_string(),
        "--warmup".into(),
        "0.3".into(),
        "--drain-ms".into(),
        "300".into(),
        "--size".into(),
        a.size.to_string(),
        "--flows".into(),
        a.flows.max(a.sweep_threads).to_string(),
        "--core".into(),
        "-1".into(),
        "--quiet".into(),
        "--json".into(),
        sw_json.display().to_string(),
    ];
    sw.extend(sender_flags(a, vars));
    sw.extend(dns.iter().cloned());
    let sw = if a.sweep_threads > 1 {
        // Each thread pinned to its own core (shunt-bench pins them; taskset lets it), AF_XDP: its own queue.
        let cores = sweep_cores(a, vars["client_core"].parse().unwrap_or(0));
        let list = cores.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        sw.extend(["--threads".into(), a.sweep_threads.to_string(), "--cores".into(), list.clone()]);
        if a.sweep_sender == crate::load::Sender::Afxdp {
            let queues = (0..a.sweep_threads).map(|q| q.to_string()).collect::<Vec<_>>().join(",");
            sw.extend(["--queues".into(), queues, "--native".into(), "true".into()]);
        }
        let mut v = client_exec.to_vec();
        v.extend(["taskset".into(), "-c".into(), list]);
        v.extend(sw);
        v
    } else {
        client(sw)
    };
    cmds.push(format!("# open-loop sweep (shunt-bench)\n{}", shown(&sw)));
    let budget = a.rates.len() as f64 * (a.duration * 1.5 + 3.0) + 30.0;
    let out = run_bounded(&sw, Duration::from_secs_f64(budget))?;
    if out.ok {
        round.sweep = Some(serde_json::from_str(&std::fs::read_to_string(&sw_json)?)?);
    } else {
        round.errors.push(format!("sweep failed ({}): {}", out.status, out.stderr.trim()));
    }
    for load in cpu_loads(&a.cpu_rate) {
        if !server.alive() {
            break;
        }
        check_stop()?;
        let rate = match load {
            CpuLoad::Rate(r) => r,
            CpuLoad::Max => match round.sweep.as_ref().and_then(|s| s.max_rate_loss_below_0_1pct) {
                Some(r) if r > 0.0 => r,
                _ => continue, // no loss-free rate: nothing to measure at "max"
            },
        };
        if let Some(c) =
            cpu_cost(a, vars, &target, &server, &client, &b, work, &tag, cmds, round, load, rate, &busy_ns)?
        {
            round.cpu.push(c);
        }
    }
    if let Some(queries) = vars.get("dns_queries") {
        for load in cpu_loads(&a.dnsperf_rates) {
            if !server.alive() {
                break;
            }
            check_stop()?;
            let mut argv = vec![
                "dnsperf".to_string(),
                "-s".into(),
                vars["server_ip"].clone(),
                "-p".into(),
                t.port.to_string(),
                "-d".into(),
                queries.clone(),
                "-l".into(),
                format!("{}", a.dnsperf_duration.ceil().max(1.0) as u64),
                "-c".into(),
                a.flows.max(1).to_string(),
                "-T".into(),
                "1".into(),
                "-t".into(),
                "1".into(),
            ];
            let qps = match load {
                CpuLoad::Rate(r) => r,
                CpuLoad::Max => 0.0,
            };
            if qps > 0.0 {
                argv.extend(["-Q".into(), format!("{qps:.0}")]);
            }
            let argv = client(argv);
            if round.dnsperf.is_empty() {
                cmds.push(format!("# dnsperf at each load (-Q; none for max); the first:\n{}", shown(&argv)));
            }
            let pid = server.pid();
            let (cpu0, t0) = (pid.map_or(0, process_tree_cpu_ns), Instant::now());
            let out = run_bounded(&argv, Duration::from_secs_f64(a.dnsperf_duration + 30.0))?;
            let cpu = pid.map_or(0, process_tree_cpu_ns).saturating_sub(cpu0) as f64;
            let wall = t0.elapsed().as_secs_f64();
            match parse_dnsperf(&out.stdout) {
                Some(mut r) if out.ok => {
                    r.server_cpu_share = if wall > 0.0 { cpu / 1e9 / wall } else { 0.0 };
                    r.load = load.key();
                    r.requested_qps = qps;
                    r.command = shown(&argv);
                    round.dnsperf.push(r);
                }
                _ => round.errors.push(format!(
                    "dnsperf at {} failed ({}): {}{}",
                    load.label(),
                    out.status,
                    out.stdout.lines().last().unwrap_or(""),
                    out.stderr.trim()
                )),
            }
        }
    }
    if !server.alive() {
        round.errors.push(format!("{} exited during the run:\n{}", t.name, server.log_tail()));
    }
    server.stop();
    Ok(())
}

/// The lines of a server log that say what went wrong (error, critical, failed, cannot ...), joined with ` | `,
/// so that a failure's first line carries the server's own words; the last line when none matches.
fn key_lines(log: &str) -> String {
    let words = ["error", "critical", "fatal", "failed", "cannot", "refused", "panicked"];
    let keys: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && words.iter().any(|w| l.to_ascii_lowercase().contains(w)))
        .collect();
    if keys.is_empty() {
        log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(empty log)").trim().to_string()
    } else {
        keys.join(" | ")
    }
}

/// The AF_XDP sender's interface and MAC flags (none for the kernel sender).
fn sender_flags(a: &CompareArgs, vars: &Vars) -> Vec<String> {
    if a.sweep_sender != crate::load::Sender::Afxdp {
        return Vec::new();
    }
    [("--interface", "client_if"), ("--src-mac", "client_mac"), ("--dst-mac", "server_mac")]
        .into_iter()
        .flat_map(|(flag, key)| [flag.to_string(), vars[key].clone()])
        .collect()
}

/// The CPU phase: one open-loop run at `--cpu-rate` (one generator thread, the sweep's sender), with the
/// server's process CPU time and the cores' busy time read just before it starts and just after it ends.
#[allow(clippy::too_many_arguments)]
fn cpu_cost(
    a: &CompareArgs,
    vars: &Vars,
    target: &str,
    server: &Server,
    client: &dyn Fn(Vec<String>) -> Vec<String>,
    bench: &str,
    work: &Path,
    tag: &str,
    cmds: &mut Vec<String>,
    round: &mut Round,
    load: CpuLoad,
    rate: f64,
    busy_ns: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<Option<CpuCost>> {
    let Some(pid) = server.pid() else { return Ok(None) };
    let json = work.join(format!("{tag}-cpu-{}.json", load.key()));
    let mut args: Vec<String> = vec![
        bench.into(),
        "run".into(),
        "--sender".into(),
        format!("{:?}", a.sweep_sender).to_lowercase(),
        "--target".into(),
        target.into(),
        "--rate".into(),
        format!("{rate:.0}"),
        "--duration".into(),
        a.cpu_duration.to_string(),
        "--warmup".into(),
        "0".into(),
        "--size".into(),
        a.size.to_string(),
        "--flows".into(),
        a.flows.to_string(),
        "--core".into(),
        "-1".into(),
        "--quiet".into(),
        "--json".into(),
        json.display().to_string(),
    ];
    args.extend(sender_flags(a, vars));
    if let Some(q) = vars.get("dns_queries") {
        args.extend(["--dns-queries".into(), q.clone()]);
    }
    let argv = client(args);
    if round.cpu.is_empty() {
        cmds.push(format!(
            "# CPU cost at each fixed load (shunt-bench; server CPU read from /proc around it); the first:\n{}",
            shown(&argv)
        ));
    }
    let server_core: usize = vars["server_core"].parse().unwrap_or(usize::MAX);
    let busy0 = busy_ns();
    let (cores0, proc0, t0) = (core_busy_ns(), process_tree_cpu_ns(pid), Instant::now());
    let out = run_bounded(&argv, Duration::from_secs_f64(a.cpu_duration + 30.0))?;
    let (cores1, proc1, wall) = (core_busy_ns(), process_tree_cpu_ns(pid), t0.elapsed());
    let busy1 = busy_ns();
    if !out.ok {
        round.errors.push(format!("CPU-cost run at {} failed ({}): {}", load.label(), out.status, out.stderr.trim()));
        return Ok(None);
    }
    let run: RunReport = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let delta = |k: &usize| cores1.get(k).unwrap_or(&0).saturating_sub(*cores0.get(k).unwrap_or(&0));
    Ok(Some(CpuCost {
        load: load.key(),
        rate,
        generator_behind: run.generator_behind,
        replies: run.received,
        wall_s: wall.as_secs_f64(),
        server_ns: proc1.saturating_sub(proc0),
        server_core_ns: delta(&server_core),
        all_cores_ns: cores1.keys().map(delta).sum(),
        busy_ns: busy0.zip(busy1).map(|(b0, b1)| b1.saturating_sub(b0)),
    }))
}

/// The sweep threads' cores: `--sweep-cores`, or the client core and the next allowed cores in turn.
fn sweep_cores(a: &CompareArgs, client_core: usize) -> Vec<usize> {
    if let Some(c) = &a.sweep_cores {
        return c.clone();
    }
    let allowed = shunt::sys::allowed_cores().unwrap_or_default();
    match allowed.iter().position(|&c| c == client_core) {
        Some(i) => (0..a.sweep_threads).map(|k| allowed[(i + k) % allowed.len()]).collect(),
        None => (0..a.sweep_threads).map(|k| client_core + k).collect(),
    }
}

/// Writes `<out-dir>/<name>.md` and the plots for `cmp`; returns the page.
fn write_page(cmp: &Comparison, a: &CompareArgs) -> anyhow::Result<String> {
    let base = a.out_dir.join(&a.name);
    let pp_svg = a.out_dir.join(format!("{}-pingpong.svg", a.name));
    let sweep_svg = a.out_dir.join(format!("{}-sweep.svg", a.name));
    let cost_svg = a.out_dir.join(format!("{}-cost.svg", a.name));
    let cost_lat_svg = a.out_dir.join(format!("{}-cost-latency.svg", a.name));
    write_plots(cmp, &pp_svg, &sweep_svg)?;
    let loads = cpu_loads(&a.cpu_rate);
    let with_cost = !loads.is_empty();
    if with_cost {
        write_cost_plots(cmp, &loads, &cost_svg, &cost_lat_svg)?;
    }
    let costs = [cost_svg.as_path(), cost_lat_svg.as_path()];
    let md = markdown(cmp, a, &pp_svg, &sweep_svg, if with_cost { &costs } else { &[] });
    std::fs::write(base.with_extension("md"), &md)?;
    Ok(md)
}

/// The CPU loads a result file was measured at: `cpu_rates` (`20000,100000,max`), or the one `cpu_rate` of
/// files written before several loads existed.
pub(crate) fn loads_of(params: &BTreeMap<String, String>) -> Vec<CpuLoad> {
    let list = params.get("cpu_rates").or_else(|| params.get("cpu_rate")).map(String::as_str).unwrap_or("0");
    cpu_loads(&list.split(',').filter_map(|x| parse_cpu_load(x).ok()).collect::<Vec<_>>())
}

/// `--replot`: the page and plots again from `<out-dir>/<name>.json`, with the rates it was measured at.
fn replot(mut a: CompareArgs) -> anyhow::Result<ExitCode> {
    let path = a.out_dir.join(&a.name).with_extension("json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cmp: Comparison = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(r) = cmp.params.get("rates") {
        a.rates =
            r.split(',').map(parse_rate).collect::<Result<_, _>>().map_err(|e| anyhow!("rates in the JSON: {e}"))?;
    }
    a.cpu_rate = loads_of(&cmp.params);
    a.dnsperf_rates = cmp
        .params
        .get("dnsperf_rates")
        .map(|r| r.split(',').filter_map(|x| parse_cpu_load(x).ok()).collect())
        .unwrap_or_default();
    write_page(&cmp, &a)?;
    eprintln!("compare: rewrote {}.md and the plots from {}", a.out_dir.join(&a.name).display(), path.display());
    Ok(ExitCode::SUCCESS)
}

/// A figure of `s` at CPU load `i` (`key`): `name@key`, or the plain name for the first load (older files).
pub(crate) fn cpu_fig(s: &TargetSummary, name: &str, load: &CpuLoad, i: usize) -> Option<f64> {
    s.figures
        .get(&format!("{name}@{}", load.key()))
        .or_else(|| (i == 0).then(|| s.figures.get(name)).flatten())
        .copied()
}

/// Whether the server's process shows in the CPU readings: a server whose process used under 1 % of the
/// machine's busy time per reply (the in-kernel one) does not; on veth its work runs in softirq on the
/// generator's core, where it cannot be told apart from the generator's.
fn has_server_process(s: &TargetSummary) -> bool {
    match (s.figures.get("cpu_server_ns"), s.figures.get("cpu_all_cores_ns")) {
        (Some(server), all) => server * 100.0 >= all.copied().unwrap_or(0.0),
        (None, _) => false,
    }
}

/// The cost plot's curves: per target with a server process, (offered load in kpps, server CPU ns per reply) at
/// each CPU load, in order of load (`max` at the rate it was for that target: the median over repetitions).
fn cost_curves(c: &Comparison, loads: &[CpuLoad]) -> Vec<plot::Series> {
    c.summaries
        .iter()
        .filter(|s| has_server_process(s))
        .map(|s| {
            let mut points: Vec<(f64, f64)> = loads
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let y = cpu_fig(s, "cpu_server_ns", l, i)?;
                    let x = cpu_fig(s, "cpu_rate", l, usize::MAX).or(match l {
                        CpuLoad::Rate(r) => Some(*r),
                        CpuLoad::Max => None,
                    })?;
                    Some((x / 1e3, y))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            points.dedup_by(|a, b| a.0 == b.0);
            plot::Series { name: s.name.clone(), points }
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// `-cost.svg`: server CPU per reply against offered load, a curve per target; `-cost-latency.svg`: ping-pong
/// latency against CPU per reply at the lightest load, one point per target with a server process.
fn write_cost_plots(c: &Comparison, loads: &[CpuLoad], curve: &Path, latency: &Path) -> anyhow::Result<()> {
    plot::cost_over_load(curve, &format!("{}: server CPU per reply vs offered load", c.name), &cost_curves(c, loads))?;
    let points: Vec<plot::CostPoint> = c
        .summaries
        .iter()
        .filter(|s| has_server_process(s))
        .filter_map(|s| {
            let f = |k: &str| s.figures.get(k).copied();
            Some(plot::CostPoint {
                name: s.name.clone(),
                cpu_ns: f("cpu_server_ns")?,
                p50_us: f("pp_p50_us")?,
                p99_us: f("pp_p99_us")?,
            })
        })
        .collect();
    plot::cost_latency(
        latency,
        &format!(
            "{}: ping-pong latency vs server CPU per reply at {} pps",
            c.name,
            loads.first().map_or("?".into(), CpuLoad::label)
        ),
        "server CPU per reply (ns, log)",
        &points,
    )
}

fn write_plots(c: &Comparison, pp_svg: &Path, sweep_svg: &Path) -> anyhow::Result<()> {
    // Ping-pong spectra: per target, the repetition with the median p50.
    let mut spectra = Vec::new();
    for t in &c.plan.targets {
        let mut pps: Vec<&RunReport> = c
            .rounds
            .get(&t.name)
            .into_iter()
            .flatten()
            .flat_map(|r| &r.alternations)
            .filter_map(|a| a.ping_pong.as_ref())
            .collect();
        pps.sort_by_key(|r| r.latency_ns.p50);
        if let Some(r) = pps.get(pps.len() / 2) {
            spectra.push(plot::Series {
                name: t.name.clone(),
                points: r.spectrum.iter().map(|&(p, v)| (p, v as f64 / 1e3)).collect(),
            });
        }
    }
    plot::percentile_spectrum(pp_svg, &format!("{}: ping-pong RTT (shunt-bench, kernel sockets)", c.name), &spectra)?;
    let lat: Vec<plot::Series> = c
        .summaries
        .iter()
        .map(|s| plot::Series {
            name: format!("{} p99", s.name),
            points: s.sweep.iter().map(|&(r, p99, _)| (r / 1e3, p99)).collect(),
        })
        .collect();
    let loss: Vec<plot::Series> = c
        .summaries
        .iter()
        .map(|s| plot::Series { name: s.name.clone(), points: s.sweep.iter().map(|&(r, _, l)| (r / 1e3, l)).collect() })
        .collect();
    plot::load_sweep(
        sweep_svg,
        &format!("{}: open-loop p99 (from intended send time) and loss vs offered load", c.name),
        &lat,
        &loss,
    )
    .map_err(|e| anyhow!("{e}"))
}

/// A figure as the page shows it (`us`: 2 decimals, `ns`: none, `kpps`: thousands), with its ratio to the
/// baseline's when there is one; `–` when missing.
pub(crate) fn fmt_fig(v: Option<f64>, base: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".into(),
        Some(v) => {
            let val = match unit {
                "kpps" => format!("{:.0}", v / 1e3),
                "ns" => format!("{v:.0}"),
                _ => format!("{v:.2}"),
            };
            match base {
                Some(b) if b > 0.0 => format!("{val} ({:.2}x)", v / b),
                _ => val,
            }
        }
    }
}

/// The first error of a target's rounds (first line), or "?".
pub(crate) fn first_error(c: &Comparison, name: &str) -> String {
    c.rounds
        .get(name)
        .into_iter()
        .flatten()
        .flat_map(|r| &r.errors)
        .next()
        .map_or("?".into(), |e| e.lines().next().unwrap_or("?").to_string())
}

/// The DNS section: per target, the highest loss-free qps, p50/p99 at each offered rate (shunt-bench, from the
/// intended send time), how the answers checked out, and dnsperf's figures at its loads.
fn dns_section(c: &Comparison, a: &CompareArgs) -> String {
    let p = &c.params;
    let mut m = format!(
        "## DNS\n\nThe same zone and query file for every DNS server (`{}`, {} queries cycled in order). shunt-bench \
         sends them open loop ({} sender, {} flow(s), {} s per rate), each with a fresh ID, and counts a reply only \
         with the ID and question sent and a NOERROR / NXDOMAIN rcode that the same query always got \
         (bench/src/dns.rs); latency from the intended send time. dnsperf: one thread, {} s per load, `-Q` at the \
         fixed loads, none at `max` (as fast as dnsperf goes: its own limit or the server's).\n\n",
        c.plan.targets.iter().find_map(|t| t.dns_queries(&c.plan)).unwrap_or("?"),
        p.get("dns_query_count").map(String::as_str).unwrap_or("?"),
        p.get("sweep_sender").map(String::as_str).unwrap_or("?"),
        p.get("sweep_flows").map(String::as_str).unwrap_or("?"),
        p.get("sweep_duration_s").map(String::as_str).unwrap_or("?"),
        p.get("dnsperf_duration_s").map(String::as_str).unwrap_or("?"),
    );
    m += "| target | max qps, loss < 0.1 % (k) |";
    for r in &a.rates {
        m += &format!(" p50 / p99 µs @ {} |", rate_label(*r));
    }
    m += " answers checked (NOERROR / NXDOMAIN / TC / wrong rcode / mismatched) |\n|---|---|";
    m += &"---|".repeat(a.rates.len() + 1);
    m += "\n";
    let is_dns = |name: &str| c.plan.targets.iter().any(|t| t.name == name && t.dns_queries(&c.plan).is_some());
    for s in c.summaries.iter().filter(|s| is_dns(&s.name)) {
        if s.figures.is_empty() {
            m += &format!("| {} | did not run: {} |", s.name, first_error(c, &s.name).replace('|', "/"));
            m += &" – |".repeat(a.rates.len() + 1);
            m += "\n";
            continue;
        }
        m += &format!("| {} | {} |", s.name, fmt_fig(s.figures.get("max_rate_loss_lt_0.1pct").copied(), None, "kpps"));
        for r in &a.rates {
            m += &format!(" {} |", sweep_latency_cell(s, *r));
        }
        let mut sum = crate::dns::DnsCounts::default();
        for r in c.rounds.get(&s.name).into_iter().flatten() {
            for p in r.sweep.iter().flat_map(|s| &s.points) {
                if let Some(d) = &p.dns {
                    sum.add(d);
                }
            }
        }
        m += &format!(
            " {} / {} / {} / {} / {} |\n",
            sum.noerror, sum.nxdomain, sum.truncated, sum.bad_rcode, sum.mismatched
        );
    }
    let dp = cpu_loads(&a.dnsperf_rates);
    if !dp.is_empty() {
        m += "\ndnsperf: queries per second completed (k) / lost % / average latency µs / the server process's CPU \
              (% of one core, over the run, startup included), median over repetitions; ⚠ = dnsperf did not keep the \
              asked rate while the server lost nothing (dnsperf is the limit). At `max` a server that sleeps when \
              idle and stays well under 100 % with nothing lost was not the limit: dnsperf was (spinning servers \
              show 100 % at any load).\n\n| target |";
        for l in &dp {
            m += &format!(" {} |", l.label());
        }
        m += "\n|---|";
        m += &"---|".repeat(dp.len());
        m += "\n";
        for s in c.summaries.iter().filter(|s| is_dns(&s.name)) {
            m += &format!("| {} |", s.name);
            for l in &dp {
                m += &format!(" {} |", dnsperf_cell(s, l));
            }
            m += "\n";
        }
    }
    m += "\n";
    m
}

/// `p50 / p99` µs of the sweep at offered rate `r` (` ⚠`: the generator fell behind there), or `–`.
pub(crate) fn sweep_latency_cell(s: &TargetSummary, r: f64) -> String {
    let f = |k: &str| s.figures.get(&format!("{k}@{r:.0}")).copied();
    let mark = if s.generator_behind_at.contains(&r) { " ⚠" } else { "" };
    match (f("sweep_p50_us"), f("sweep_p99_us")) {
        (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1}{mark}"),
        _ => "–".into(),
    }
}

/// dnsperf at load `l`: kqps completed / lost % / average µs / server CPU % (` ⚠`: dnsperf was the limit), or `–`.
pub(crate) fn dnsperf_cell(s: &TargetSummary, l: &CpuLoad) -> String {
    let k = l.key();
    let f = |n: &str| s.figures.get(&format!("{n}@{k}")).copied();
    let mark = if f("dnsperf_limited").is_some() { " ⚠" } else { "" };
    let cpu = f("dnsperf_server_cpu").map_or("–".into(), |c| format!("{c:.0} %"));
    match (f("dnsperf_qps"), f("dnsperf_loss_pct"), f("dnsperf_avg_us")) {
        (Some(q), Some(l), Some(avg)) => format!("{:.1} / {l:.2} / {avg:.0} / {cpu}{mark}", q / 1e3),
        _ => "–".into(),
    }
}

/// One cell of the CPU table: server CPU ns per reply at load `l` (the `i`th; ratio to `base`'s) / every core's,
/// `@ rate` for `max`, ` ⚠` where the generator fell behind in that run; `–` when not measured.
pub(crate) fn cpu_cell(s: &TargetSummary, l: &CpuLoad, i: usize, base: Option<&TargetSummary>) -> String {
    let server = cpu_fig(s, "cpu_server_ns", l, i);
    let b = base.and_then(|b| cpu_fig(b, "cpu_server_ns", l, i));
    match server {
        None => "–".into(),
        Some(_) => {
            let all = cpu_fig(s, "cpu_all_cores_ns", l, i).map_or("–".into(), |v| format!("{v:.0}"));
            let at = match (l, cpu_fig(s, "cpu_rate", l, usize::MAX)) {
                (CpuLoad::Max, Some(r)) => format!(" @ {}", rate_label(r)),
                _ => String::new(),
            };
            let warn = if s.figures.contains_key(&format!("cpu_generator_behind@{}", l.key())) { " ⚠" } else { "" };
            let busy = cpu_fig(s, "cpu_busy_ns", l, i).map_or(String::new(), |v| format!(" (busy {v:.0})"));
            format!("{}{busy} / {all}{at}{warn}", fmt_fig(server, b, "ns"))
        }
    }
}

/// The CPU table itself (heading row, rule, a row per target), without the page's prose.
pub(crate) fn cpu_grid(c: &Comparison, loads: &[CpuLoad], base: Option<&TargetSummary>) -> String {
    let mut m = String::from("| target |");
    for l in loads {
        m += &format!(" {} |", l.label());
    }
    m += "\n|---|";
    m += &"---|".repeat(loads.len());
    m += "\n";
    for s in &c.summaries {
        m += &format!("| {} |", s.name);
        for (i, l) in loads.iter().enumerate() {
            m += &format!(" {} |", cpu_cell(s, l, i, base));
        }
        m += "\n";
    }
    m
}

/// The CPU sub-table: per target, server CPU ns per reply (and every core's) at each load of the CPU phase.
fn cpu_table(c: &Comparison, loads: &[CpuLoad], base: Option<&TargetSummary>) -> String {
    let mut m = String::from(
        "### CPU per reply at each load\n\nServer CPU ns per reply / all cores ns per reply, median over \
         repetitions, at each offered load of the CPU phase (ratio of the server figure to the baseline's in \
         parentheses; `max` also gives the rate it was for that target). (busy N): a shunt server's workers' busy \
         time per reply, read from its own counters (turns that found work; DPDK's lcore busyness), where the \
         target serves metrics. ⚠: the generator fell behind in that run, so the load was the generator's. A \
         spinning server costs a core whatever the load: its figure falls as the load rises, while its busy \
         time per reply is what the work costs.\n\n",
    );
    m += &cpu_grid(c, loads, base);
    m += "\n";
    m
}

/// The Makefile target that runs the plan named in `command` (`--plan bench/plans/NAME.toml`), if one does.
/// `makefile_targets_run_their_plans` keeps this list and the Makefile in step.
fn make_target(command: &str) -> Option<&'static str> {
    const TARGETS: [(&str, &str); 7] = [
        ("lab", "bench"),
        ("dns", "bench-dns"),
        ("many-core", "bench-many-core"),
        ("latency-overhead", "bench-overhead"),
        ("loop-design", "bench-loop-design"),
        ("send-api", "bench-send-api"),
        ("attach-mode", "bench-attach-mode"),
    ];
    let plan = command.split_whitespace().skip_while(|w| *w != "--plan").nth(1)?;
    let stem = Path::new(plan).file_stem()?.to_str()?;
    TARGETS.iter().find(|(p, _)| *p == stem).map(|(_, t)| *t)
}

fn markdown(c: &Comparison, a: &CompareArgs, pp_svg: &Path, sweep_svg: &Path, cost_svgs: &[&Path]) -> String {
    let mut m = String::new();
    let base = c.summaries.iter().find(|s| s.name == c.plan.baseline);
    let p = &c.params;
    m += &format!("# shunt-bench comparison: {}\n\n", c.name);
    m += &format!("Produced {} by\n\n```\n{}\n```\n\n", c.started, c.command);
    if let Some(target) = make_target(&c.command) {
        m += &format!(
            "(`make {target}` runs this plan with the Makefile's flags, `BENCH_FLAGS` added; flags change durations, \
             rates and repetitions.)\n\n"
        );
    }
    m += &format!(
        "Each target was started, measured and stopped in turn, {} repetitions interleaved (A B C … A B C …); within \
         a repetition (one server start) the two ping-pong clients ran {} times each, alternately. Every figure is the \
         median over repetitions (ping-pong: over every run of every repetition). Ratios in parentheses are value / \
         value of the baseline `{}`.\n\n",
        p["reps"],
        p.get("pp_alternations").map(String::as_str).unwrap_or("1"),
        c.plan.baseline
    );
    m += "## Verdict\n\n";
    if c.findings.is_empty() {
        m += "trustworthy: the two ping-pong clients agree, no figure spreads beyond the noise limit, the generator \
              kept its schedule everywhere, and nothing failed.\n\n";
    } else {
        m += "```\n";
        for f in &c.findings {
            m += &f.line();
            m += "\n";
        }
        m += "```\n\n";
    }
    m += &format!(
        "Exit status 1 when a line says `broken` (a contradiction in the benchmark: a failure, counts that do not add \
         up, or the two clients disagreeing beyond {:.0} % in every back-to-back pair, the same way, beyond either \
         client's own spread); 0 otherwise, with `noisy` (the machine: figures spread more than {:.0} % of their \
         median, a disagreement the noise explains, a load average above {:.2} per CPU at the start) and `limited` \
         (the generator fell behind: the figure is the generator's) as warnings. Rules: bench/README.md.\n\n",
        verdict::CROSSCHECK_TOLERANCE * 100.0,
        verdict::NOISY_SPREAD * 100.0,
        verdict::BUSY_LOAD_PER_CPU
    );
    m += "## Results\n\n";
    m += &format!(
        "Ping-pong: one request outstanding, kernel UDP sockets spinning on core {}, {} B payload, at most {} req/s, {} s \
         (+0.5 s warm-up); RTT in µs. Sweep: open loop ({} sender, {} flows, uniform schedule), {} s per rate, latency \
         from the intended send time.\n\n",
        c.plan.lab.client_core, p["size"], p["pp_rate"], p["pp_duration_s"], p["sweep_sender"], p["sweep_flows"], p["sweep_duration_s"]
    );
    // The one table: latency unloaded (ping-pong), p99 at two fixed offered loads (the sweep's lowest and
    // middle rates), the highest loss-free rate, and CPU per reply at the fixed CPU-phase load.
    let mut fixed: Vec<f64> = a.rates.first().copied().into_iter().collect();
    if let Some(&mid) = a.rates.get(a.rates.len() / 2) {
        if a.rates.len() > 1 {
            fixed.push(mid);
        }
    }
    let p99_keys: Vec<(String, String)> =
        fixed.iter().map(|&r| (format!("sweep_p99_us@{r:.0}"), format!("p99 µs @ {} pps", rate_label(r)))).collect();
    let loads = cpu_loads(&a.cpu_rate);
    let cpu_rate = loads.first().map_or("-".into(), CpuLoad::label);
    let cpu_server = format!("server CPU ns/reply @ {cpu_rate} pps");
    let cpu_all = format!("all cores ns/reply @ {cpu_rate} pps");
    let mut cols: Vec<(&str, &str, &str)> = vec![
        ("pp_p50_us", "ping-pong p50 µs", "us"),
        ("pp_p99_us", "ping-pong p99 µs", "us"),
        ("pp_p999_us", "ping-pong p99.9 µs", "us"),
    ];
    cols.extend(p99_keys.iter().map(|(k, h)| (k.as_str(), h.as_str(), "us")));
    cols.push(("max_rate_loss_lt_0.1pct", "max rate, loss < 0.1 % (kpps)", "kpps"));
    if !loads.is_empty() {
        cols.push(("cpu_server_ns", cpu_server.as_str(), "ns"));
        cols.push(("cpu_all_cores_ns", cpu_all.as_str(), "ns"));
    }
    m += "| target | ";
    m += &cols.iter().map(|c| c.1).collect::<Vec<_>>().join(" | ");
    m += " | cross-check |\n|---|";
    m += &"---|".repeat(cols.len() + 1);
    m += "\n";
    for s in &c.summaries {
        if s.figures.is_empty() {
            m += &format!("| {} | ", s.name);
            m += &vec!["–"; cols.len()].join(" | ");
            m += &format!(" | did not run: {} |\n", first_error(c, &s.name).replace('|', "/"));
            continue;
        }
        m += &format!("| {} | ", s.name);
        let cells: Vec<String> = cols
            .iter()
            .map(|&(k, _, unit)| {
                if unit == "rate" {
                    return s.figures.get(k).map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into());
                }
                fmt_fig(s.figures.get(k).copied(), base.and_then(|b| b.figures.get(k).copied()), unit)
            })
            .collect();
        m += &cells.join(" | ");
        m += &format!(
            " | {} |\n",
            match &s.crosscheck {
                Some(x) => format!(
                    "{} ({:+.1} %)",
                    match x.outcome {
                        Agreement::Agree => "agree",
                        Agreement::Noisy => "noisy",
                        Agreement::Broken => "BROKEN",
                    },
                    x.median_diff * 100.0
                ),
                None => "n/a".into(),
            }
        );
    }
    m += &format!(
        "\n`p99 µs @ R pps`: the sweep's p99 at that offered rate (from the intended send time). `max rate`: highest \
         offered rate with loss < 0.1 % (0: none). The CPU columns come from runs of their own at fixed offered \
         loads ({} pps; `max`: the highest loss-free rate of that target's sweep; {} s each, one generator thread, \
         the sweep's sender), the same for every target; the main table shows the lightest: `server CPU` is the time the \
         server's process spent on CPU (every thread, user + system, from /proc/PID/task/*/schedstat) and `all \
         cores` the busy time of every core (/proc/stat, softirq included, and the generator's core with it), each \
         divided by the replies the generator received. A server that spins (AF_XDP `spin`, the non-blocking \
         socket model, testpmd) burns its core whatever the load, so its figure is a core's time divided by the \
         load; the in-kernel server has no process on the CPU at all and shows only in `all cores` (on veth its \
         work runs on the generator's core, so it is left off the cost plot). Per-rate \
         detail, the p99 bend and sockperf's own figures are below.\n\n",
        loads.iter().map(CpuLoad::label).collect::<Vec<_>>().join(", "),
        c.params.get("cpu_duration_s").map(String::as_str).unwrap_or("-"),
    );
    if !loads.is_empty() {
        m += &cpu_table(c, &loads, base);
    }
    if c.plan.targets.iter().any(|t| t.dns_queries(&c.plan).is_some()) {
        m += &dns_section(c, a);
    }
    m += &format!(
        "`p99 bend` (per target): the lowest offered rate whose p99 exceeds {} x the p99 at the lowest rate of the \
         sweep.\n\n",
        crate::load::KNEE_FACTOR
    );
    m += "| target | p99 bend (kpps) | sockperf p50 µs | sockperf p99 µs |\n|---|---|---|---|\n";
    for s in &c.summaries {
        let f = |k: &str, unit: &str| {
            fmt_fig(s.figures.get(k).copied(), base.and_then(|b| b.figures.get(k).copied()), unit)
        };
        m += &format!(
            "| {} | {} | {} | {} |\n",
            s.name,
            f("p99_knee_rate", "kpps"),
            f("sockperf_p50_us", "us"),
            f("sockperf_p99_us", "us")
        );
    }
    m += "\n";
    m += "### Cross-check against sockperf\n\n";
    m += &format!(
        "shunt-bench ping-pong p50 vs `sockperf ping-pong --full-rtt` p50 against the same server start, same rate and \
         size, run back to back in pairs (the order alternating); per pair the difference shunt-bench / sockperf - 1. \
         They agree when the median difference is within {:.0} %; beyond it, `BROKEN` when every pair differs beyond \
         it the same way and by more than a client's own spread against one server start, `noisy` otherwise.\n\n",
        verdict::CROSSCHECK_TOLERANCE * 100.0
    );
    for s in &c.summaries {
        if let (Some(x), Some(a), Some(b)) =
            (&s.crosscheck, s.figures.get("pp_p50_us"), s.figures.get("sockperf_p50_us"))
        {
            m += &format!(
                "- {}: shunt-bench {a:.2} µs, sockperf {b:.2} µs (medians); per pair {}; median {:+.1} %, a client's own \
                 spread up to {:.0} % → **{}**\n",
                s.name,
                x.diffs.iter().map(|d| format!("{:+.1} %", d * 100.0)).collect::<Vec<_>>().join(", "),
                x.median_diff * 100.0,
                x.within_spread * 100.0,
                match x.outcome {
                    Agreement::Agree => "agree",
                    Agreement::Noisy => "noisy",
                    Agreement::Broken => "BROKEN",
                }
            );
        }
    }
    m += "\n### Sweep detail: p99 µs / loss % per offered rate (median over repetitions)\n\n| target |";
    for r in &a.rates {
        m += &format!(" {:.0}k |", r / 1e3);
    }
    m += "\n|---|";
    m += &"---|".repeat(a.rates.len());
    m += "\n";
    for s in &c.summaries {
        m += &format!("| {} |", s.name);
        for r in &a.rates {
            match s.sweep.iter().find(|x| (x.0 - r).abs() < 0.5) {
                Some(&(_, p99, loss)) => {
                    let mark = if s.generator_behind_at.contains(r) { " ⚠" } else { "" };
                    m += &format!(" {p99:.1} / {loss:.2}{mark} |");
                }
                None => m += " – |",
            }
        }
        m += "\n";
    }
    if c.summaries.iter().any(|s| !s.generator_behind_at.is_empty()) {
        m += "\n⚠ = the generator fell behind its own schedule in at least one repetition at that rate: there the \
              generator (one client core), not the server, limits the figure.\n";
    }
    let errors: Vec<String> = c
        .rounds
        .iter()
        .flat_map(|(n, rs)| {
            rs.iter().flat_map(move |r| {
                r.errors.iter().map(move |e| format!("- {n} rep {}: {}", r.rep, e.lines().next().unwrap_or("")))
            })
        })
        .collect();
    if !errors.is_empty() {
        m += "\n### Errors\n\n";
        m += &errors.join("\n");
        m += "\n";
    }
    m += "\n## Plots\n\n";
    for f in [pp_svg, sweep_svg].into_iter().chain(cost_svgs.iter().copied()) {
        let n = f.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        m += &format!("![{n}]({n})\n\n");
    }
    m += &format!("Raw data (every repetition, every sweep point, percentile spectra): `{}.json`.\n\n", c.name);
    m += "## Machine\n\n";
    for l in &c.machine {
        m += &format!("- {l}\n");
    }
    m += "\nThe machine is shared and virtual: absolute figures move between runs; compare targets within one run.\n";
    m += "\n## Targets\n\n";
    for t in &c.plan.targets {
        m += &format!(
            "- **{}**: {} (port {}, sockperf protocol: {})\n",
            t.name, t.description, t.port, t.sockperf_protocol
        );
    }
    m += "\n## Exact commands (first repetition; lab names and temp paths vary per run)\n\n";
    for t in &c.plan.targets {
        if let Some(cmds) = c.commands.get(&t.name) {
            m += &format!("### {}\n\n```\n{}\n```\n\n", t.name, cmds.join("\n"));
        }
    }
    m += "## Adding a run on real NICs\n\nWrite a plan with `[lab] kind = \"static\"` (see `bench/plans/nic-example.toml`): \
          interface names, addresses and MACs of the two hosts, and command prefixes (`server_exec`, `client_exec`, e.g. \
          `[\"ssh\", \"root@dut\"]`) that run a command on each side. Then run \
          `target/release/shunt-bench compare --plan bench/plans/<yours>.toml --name <nic-name>`: it writes \
          `bench/results/<nic-name>.md` with the same tables, ratios and plots as this one.\n";
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKPERF_OUT: &str = "sockperf: == version #3.7-no.git ==
sockperf: [Total Run] RunTime=3.000 sec; Warm up time=400 msec; SentMessages=29999; ReceivedMessages=29998
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=2.550 sec; SentMessages=25497; ReceivedMessages=25497
sockperf: ====> avg-rtt=12.236 (std-dev=3.419)
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 12.236 usec
sockperf: Total 25497 observations; each percentile contains 254.97 observations
sockperf: ---> <MAX> observation =  102.881
sockperf: ---> percentile 99.999 =  102.881
sockperf: ---> percentile 99.990 =   95.003
sockperf: ---> percentile 99.900 =   40.134
sockperf: ---> percentile 99.000 =   22.080
sockperf: ---> percentile 90.000 =   14.060
sockperf: ---> percentile 75.000 =   12.650
sockperf: ---> percentile 50.000 =   11.574
sockperf: ---> percentile 25.000 =   11.000
sockperf: ---> <MIN> observation =    9.866
";

    #[test]
    fn parses_sockperf_output() {
        let r = parse_sockperf(SOCKPERF_OUT).unwrap();
        assert_eq!(r.percentiles_us["50.000"], 11.574);
        assert_eq!(r.percentiles_us["99.000"], 22.080);
        assert_eq!(r.percentiles_us["MAX"], 102.881);
        assert_eq!((r.observations, r.dropped), (25497, 0));
        assert!(parse_sockperf("garbage").is_none());
    }

    #[test]
    fn placeholders_and_quoting() {
        let mut v = Vars::new();
        v.insert("server_if".into(), "shuntabcs".into());
        assert_eq!(subst("ethtool -K {server_if} tx off {x}", &v), "ethtool -K shuntabcs tx off {x}");
        assert_eq!(shown(&["sh".into(), "-c".into(), "exec a b".into()]), "sh -c 'exec a b'");
    }

    #[test]
    fn the_shipped_plans_parse() {
        for f in ["plans/lab.toml", "plans/many-core.toml", "plans/nic-example.toml", "plans/dns.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            let plan: Plan =
                toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(plan.targets.iter().any(|t| t.name == plan.baseline), "{f}: baseline is a target");
        }
    }

    #[test]
    fn cpu_loads_parse() {
        assert_eq!(parse_cpu_load("20k"), Ok(CpuLoad::Rate(20_000.0)));
        assert_eq!(parse_cpu_load("MAX"), Ok(CpuLoad::Max));
        assert!(parse_cpu_load("fast").is_err() && parse_cpu_load("-5").is_err());
        let a = <CompareArgs as clap::FromArgMatches>::from_arg_matches(
            &<CompareArgs as clap::Args>::augment_args(clap::Command::new("c")).get_matches_from([
                "c",
                "--cpu-rate",
                "20k,100k,max",
            ]),
        )
        .unwrap();
        assert_eq!(a.cpu_rate, vec![CpuLoad::Rate(20e3), CpuLoad::Rate(100e3), CpuLoad::Max]);
        let d = <CompareArgs as clap::FromArgMatches>::from_arg_matches(
            &<CompareArgs as clap::Args>::augment_args(clap::Command::new("c")).get_matches_from(["c"]),
        )
        .unwrap();
        assert_eq!(d.cpu_rate.len(), 4, "default: light to near the limit, and max");
        assert_eq!(d.cpu_rate.last(), Some(&CpuLoad::Max));
        assert!(cpu_loads(&[CpuLoad::Rate(0.0)]).is_empty(), "0 skips the phase");
        assert_eq!(
            [CpuLoad::Rate(2e5), CpuLoad::Max].map(|l| (l.key(), l.label())),
            [("200000".to_string(), "200k".to_string()), ("max".into(), "max".into())]
        );
        let mut params = BTreeMap::new();
        params.insert("cpu_rate".to_string(), "20000".to_string());
        assert_eq!(loads_of(&params), vec![CpuLoad::Rate(20e3)], "a file from before: its one rate");
        params.insert("cpu_rates".to_string(), "20000,max".to_string());
        assert_eq!(loads_of(&params), vec![CpuLoad::Rate(20e3), CpuLoad::Max]);
    }

    #[test]
    fn old_rounds_with_one_cpu_reading_still_read() {
        let one: Round = serde_json::from_str(
            r#"{"rep":1,"alternations":[],"sweep":null,"errors":[],
                "cpu":{"rate":20000.0,"replies":60000,"wall_s":3.0,"server_ns":600000000,"server_core_ns":1,"all_cores_ns":2}}"#,
        )
        .unwrap();
        assert_eq!(one.cpu.len(), 1);
        assert_eq!(one.cpu[0].load, "");
        let none: Round =
            serde_json::from_str(r#"{"rep":1,"alternations":[],"sweep":null,"errors":[],"cpu":null}"#).unwrap();
        assert!(none.cpu.is_empty());
        let absent: Round = serde_json::from_str(r#"{"rep":1,"alternations":[],"sweep":null,"errors":[]}"#).unwrap();
        assert!(absent.cpu.is_empty());
        let back: Round = serde_json::from_str(&serde_json::to_string(&one).unwrap()).unwrap();
        assert_eq!(back.cpu.len(), 1);
    }

    #[test]
    fn makefile_targets_run_their_plans() {
        let makefile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Makefile")).unwrap();
        let mut target = String::new();
        let mut seen = 0;
        let default_plan = makefile.lines().find_map(|l| l.strip_prefix("BENCH_PLAN ?= ")).unwrap().trim();
        for line in makefile.lines() {
            let line = &line.replace("$(BENCH_PLAN)", default_plan);
            if let Some((name, _)) = line.split_once(':').filter(|_| !line.starts_with(['\t', ' ', '#', '.'])) {
                target = name.trim().to_string();
            }
            if let Some(at) = line.find("compare --plan ") {
                let command = &line[at..];
                let plan = command.split_whitespace().nth(2).unwrap();
                if plan.starts_with("bench/plans/") {
                    assert_eq!(make_target(command), Some(target.as_str()), "{line}");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 7, "only {seen} compare runs found in the Makefile");
        assert_eq!(make_target("shunt-bench compare --plan /tmp/mine.toml"), None);
    }

    /// A comparison named "t" of `plan`'s targets, with nothing but their summaries and rounds.
    fn comparison(plan: Plan, summaries: Vec<TargetSummary>, rounds: BTreeMap<String, Vec<Round>>) -> Comparison {
        Comparison {
            name: "t".into(),
            command: String::new(),
            started: String::new(),
            machine: vec![],
            plan,
            params: BTreeMap::new(),
            summaries,
            rounds,
            commands: BTreeMap::new(),
            findings: vec![],
        }
    }

    fn cost(load: &str, rate: f64, replies: u64, server_ns: u64, all: u64) -> CpuCost {
        CpuCost {
            load: load.into(),
            rate,
            replies,
            server_ns,
            all_cores_ns: all,
            server_core_ns: server_ns,
            wall_s: 3.0,
            generator_behind: false,
            busy_ns: None,
        }
    }

    fn target(name: &str) -> Target {
        toml::from_str(&format!("name = \"{name}\"\nstart = \"true\"")).unwrap()
    }

    #[test]
    fn cpu_figures_table_and_curves_at_every_load() {
        let loads = [CpuLoad::Rate(20e3), CpuLoad::Rate(100e3), CpuLoad::Max];
        // A spinner: one core's second whatever the load; max was 150k and 170k in two repetitions.
        let spin = |max: f64| Round {
            rep: 1,
            cpu: vec![
                // Its workers were busy 1 µs per reply at 20k (read from its metrics endpoint).
                CpuCost { busy_ns: Some(60_000_000), ..cost("20000", 20e3, 60_000, 3_000_000_000, 3_100_000_000) },
                cost("100000", 100e3, 300_000, 3_000_000_000, 3_500_000_000),
                cost("max", max, (max * 3.0) as u64, 3_000_000_000, 3_900_000_000),
            ],
            ..Default::default()
        };
        let s = summarize(&target("spin"), &[spin(150e3), spin(170e3)], &[], &loads, &[]);
        assert_eq!(s.figures["cpu_server_ns@20000"], 50_000.0);
        assert_eq!(s.figures["cpu_server_ns"], 50_000.0, "the first load by its plain name");
        assert_eq!(s.figures["cpu_server_ns@100000"], 10_000.0);
        assert_eq!(s.figures["cpu_rate@max"], 160e3);
        assert_eq!(s.figures["cpu_busy_ns@20000"], 1_000.0, "busy time per reply beside the whole core");
        assert!(!s.figures.contains_key("cpu_busy_ns@100000"), "no reading, no figure");
        // The in-kernel server: no process time; left off the curves.
        let kern = Round { rep: 1, cpu: vec![cost("20000", 20e3, 60_000, 0, 900_000_000)], ..Default::default() };
        let k = summarize(&target("kernel"), &[kern], &[], &loads, &[]);
        // A file from before several loads: one reading without a load key, plain figures only.
        let old = Round { rep: 1, cpu: vec![cost("", 20e3, 60_000, 120_000_000, 300_000_000)], ..Default::default() };
        let o = summarize(&target("old"), &[old], &[], &loads[..1], &[]);
        assert_eq!(o.figures["cpu_server_ns"], 2_000.0);
        let plan: Plan = toml::from_str(
            "baseline = \"spin\"\n[[target]]\nname = \"spin\"\nstart = \"true\"\n[[target]]\nname = \"kernel\"\nstart = \"true\"",
        )
        .unwrap();
        let c = comparison(plan, vec![s, k, o], BTreeMap::new());
        let curves = cost_curves(&c, &loads);
        assert_eq!(curves.len(), 2, "the in-kernel server has no process to measure: {curves:?}");
        assert_eq!(curves[0].name, "spin");
        let at_max = (3e9 / 450e3 + 3e9 / 510e3) / 2.0; // the median of two repetitions' figures
        assert_eq!(curves[0].points, vec![(20.0, 50_000.0), (100.0, 10_000.0), (160.0, at_max)]);
        assert_eq!(curves[1].points, vec![(20.0, 2_000.0)], "old files: one point at their one rate");
        let t = cpu_table(&c, &loads, c.summaries.first());
        assert!(t.contains("| target | 20k | 100k | max |"), "{t}");
        assert!(
            t.contains(
                "| spin | 50000 (1.00x) (busy 1000) / 51667 | 10000 (1.00x) / 11667 | 6275 (1.00x) / 8157 @ 160k |"
            ),
            "{t}"
        );
        assert!(t.contains("| old | 2000 (0.04x) / 5000 | – | – |"), "{t}");
    }

    #[test]
    fn parses_dnsperf_output_and_judges_it() {
        let text = "DNS Performance Testing Tool
Statistics:

  Queries sent:         60000
  Queries completed:    59990 (99.98%)
  Queries lost:         10 (0.02%)

  Response codes:       NOERROR 53991 (90.00%), NXDOMAIN 5999 (10.00%)
  Average packet size:  request 38, response 102
  Run time (s):         3.000123
  Queries per second:   19996.180000

  Average Latency (s):  0.000231 (min 0.000041, max 0.012001)
  Latency StdDev (s):   0.000300
";
        let d = parse_dnsperf(text).unwrap();
        assert_eq!((d.sent, d.completed, d.lost), (60_000, 59_990, 10));
        assert_eq!(d.rcodes, vec![("NOERROR".to_string(), 53_991), ("NXDOMAIN".to_string(), 5_999)]);
        assert!((d.qps - 19_996.18).abs() < 1e-6);
        assert!((d.avg_latency_us - 231.0).abs() < 1e-6 && (d.max_latency_us - 12_001.0).abs() < 1e-6);
        assert!(parse_dnsperf("garbage").is_none());
        let asked =
            |q: f64, qps: f64, lost: u64| DnsperfResult { requested_qps: q, qps, lost, sent: 100_000, ..d.clone() };
        assert!(dnsperf_limited(&asked(50e3, 40e3, 0)), "slower than asked, nothing lost: dnsperf's limit");
        assert!(!dnsperf_limited(&asked(50e3, 40e3, 5_000)), "the server lost queries: its limit");
        assert!(!dnsperf_limited(&asked(0.0, 40e3, 0)), "max: nothing asked");
    }

    #[test]
    fn the_dns_section_shows_every_dns_target() {
        let a = <CompareArgs as clap::FromArgMatches>::from_arg_matches(
            &<CompareArgs as clap::Args>::augment_args(clap::Command::new("c")).get_matches_from([
                "c",
                "--rates",
                "20k,50k",
                "--dnsperf-rates",
                "20k,max",
            ]),
        )
        .unwrap();
        let plan: Plan = toml::from_str(
            "baseline = \"echo\"\n[[target]]\nname = \"echo\"\nstart = \"true\"\n\
             [[target]]\nname = \"dns-a\"\nstart = \"true\"\ndns_queries = \"q.txt\"\n\
             [[target]]\nname = \"knot-xdp\"\nstart = \"true\"\ndns_queries = \"q.txt\"\nmay_fail = true",
        )
        .unwrap();
        let dnsperf = |load: &str, q: f64, qps: f64| DnsperfResult {
            load: load.into(),
            requested_qps: q,
            sent: 40_000,
            completed: 40_000,
            qps,
            avg_latency_us: 100.0,
            server_cpu_share: 0.25,
            ..Default::default()
        };
        let round = Round {
            rep: 1,
            dnsperf: vec![dnsperf("20000", 20e3, 20e3), dnsperf("max", 0.0, 60e3)],
            ..Default::default()
        };
        let mut sa = summarize(&plan.targets[1], &[round], &a.rates, &[], &cpu_loads(&a.dnsperf_rates));
        sa.figures.insert("max_rate_loss_lt_0.1pct".into(), 50e3);
        for (r, p50, p99) in [(20e3, 20.0, 40.0), (50e3, 25.0, 90.0)] {
            sa.figures.insert(format!("sweep_p50_us@{r:.0}"), p50);
            sa.figures.insert(format!("sweep_p99_us@{r:.0}"), p99);
        }
        sa.generator_behind_at = vec![50e3];
        let failed = Round {
            rep: 1,
            errors: vec!["knot-xdp exited without answering: critical: no".into()],
            ..Default::default()
        };
        let sk = summarize(&plan.targets[2], std::slice::from_ref(&failed), &a.rates, &[], &[]);
        let summaries = vec![TargetSummary { name: "echo".into(), ..Default::default() }, sa, sk];
        let c = comparison(plan, summaries, [("knot-xdp".to_string(), vec![failed])].into_iter().collect());
        let m = dns_section(&c, &a);
        assert!(!m.contains("| echo |"), "not a DNS target: {m}");
        assert!(m.contains("| dns-a | 50 | 20.0 / 40.0 | 25.0 / 90.0 ⚠ | 0 / 0 / 0 / 0 / 0 |"), "{m}");
        assert!(m.contains("| dns-a | 20.0 / 0.00 / 100 / 25 % | 60.0 / 0.00 / 100 / 25 % |"), "{m}");
        assert!(m.contains("| knot-xdp | did not run: knot-xdp exited without answering: critical: no |"), "{m}");
    }

    #[test]
    fn a_failed_start_keeps_the_servers_own_words() {
        let log = "info: Knot DNS 3.2.6 starting\n29: (85) call bpf_xdp_adjust_meta#54\nprogram of this type cannot \
                   use helper bpf_xdp_adjust_meta#54\nwarning: failed to initialize XDP interface s@53, queue 0 \
                   (program not loaded)\ncritical: failed to configure server\n";
        let k = key_lines(log);
        assert!(k.starts_with("program of this type cannot use helper bpf_xdp_adjust_meta#54 | "), "{k}");
        assert!(k.ends_with("critical: failed to configure server"), "{k}");
        assert_eq!(key_lines("a\nlast words\n"), "last words");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
