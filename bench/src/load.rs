//! Run settings from flags and/or a TOML file, hard caps, and running one load (open loop or ping-pong) or a
//! sweep over rates on a transport.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use shunt::steer::AttachMode;

use crate::{
    afxdp::{parse_mac, AfXdpOptions, AfXdpTransport},
    engine::{self, LoadParams, LoopEnd, Transport},
    kernel::{pin_to_core, KernelTransport},
    plot,
    record::{Interval, Recorder},
    report::{self, BehindPolicy, RunMeta, RunReport},
    schedule::Distribution,
};

/// Hard cap on one run's measured + warm-up time, whatever is asked.
pub const MAX_RUN_SECONDS: f64 = 300.0;
/// Hard cap on requests in one run.
pub const MAX_PACKETS: u64 = 100_000_000;
/// Hard cap on the offered rate.
pub const MAX_RATE: f64 = 20_000_000.0;
/// Hard cap on the drain time after the last request.
pub const MAX_DRAIN_MS: u64 = 5_000;

/// Which sockets send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    /// Kernel UDP sockets (sendmmsg / recvmmsg).
    #[default]
    Kernel,
    /// AF_XDP through shunt's XskPort, with shunt's XDP program on the client interface.
    Afxdp,
}

/// Load settings. Every field may come from a flag or from the TOML file given with `--config`
/// (same names, with `_` for `-`); flags win.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadArgs {
    /// TOML file with any of these settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Server address, IP:PORT ([IPv6]:PORT).
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// Requests per second (open loop: required; ping-pong: cap, default back to back).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured seconds (default 5).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many measured requests (default: rate x duration).
    #[arg(long)]
    pub count: Option<u64>,
    /// Warm-up seconds before measuring (default 0.5).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// UDP payload bytes (default 64, at least 38).
    #[arg(long)]
    pub size: Option<usize>,
    /// Flows (source ports) to spread requests over (default 1).
    #[arg(long)]
    pub flows: Option<usize>,
    /// Consecutive requests per flow before moving to the next one (default 32).
    #[arg(long)]
    pub flow_block: Option<u64>,
    /// Inter-departure distribution (default uniform).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// kernel or afxdp (default kernel).
    #[arg(long, value_enum)]
    pub sender: Option<Sender>,
    /// AF_XDP: client interface (default: the one holding the source address).
    #[arg(long)]
    pub interface: Option<String>,
    /// AF_XDP: queues to open sockets on, comma-separated (default 0).
    #[arg(long, value_delimiter = ',')]
    pub queues: Option<Vec<u32>>,
    /// Source port of flow 0 (default: AF_XDP 40000, kernel ephemeral).
    #[arg(long)]
    pub src_port_base: Option<u16>,
    /// AF_XDP: source address (default: the kernel's route source towards the target).
    #[arg(long)]
    pub src_ip: Option<IpAddr>,
    /// AF_XDP: Ethernet source (default: the interface's).
    #[arg(long)]
    pub src_mac: Option<String>,
    /// AF_XDP: Ethernet destination (default: the neighbour table).
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// AF_XDP: native XDP attach instead of generic (real NICs).
    #[arg(long)]
    pub native: Option<bool>,
    /// Pin the generator thread to this core (default 0; -1: no pinning).
    #[arg(long, allow_hyphen_values = true)]
    pub core: Option<i64>,
    /// Requests per send call (default 32).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Milliseconds to wait for replies after the last request (default 500, at most 5000).
    #[arg(long)]
    pub drain_ms: Option<u64>,
    /// Ping-pong: milliseconds to wait for each reply (default 100).
    #[arg(long)]
    pub reply_timeout_ms: Option<u64>,
    /// A request is late if it leaves more than this after its intended time (default 100 us).
    #[arg(long)]
    pub late_threshold_us: Option<u64>,
    /// Seed of the Poisson schedule (default: from the run id).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sweep: rates, comma-separated (k and M suffixes allowed).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate)]
    pub rates: Option<Vec<f64>>,
}

/// Parses `250000`, `250k` or `1.5M`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        _ => (s, 1.0),
    };
    num.parse::<f64>().map(|v| v * mult).map_err(|e| format!("bad rate {s:?}: {e}"))
}

macro_rules! merge {
    ($cli:ident, $file:ident, $($f:ident),*) => { $( if $cli.$f.is_none() { $cli.$f = $file.$f.clone(); } )* };
}

impl LoadArgs {
    /// Fills unset flags from the `--config` file.
    pub fn merged(mut self) -> anyhow::Result<LoadArgs> {
        if let Some(path) = self.config.clone() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let file: LoadArgs = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            merge!(
                self,
                file,
                target,
                rate,
                duration,
                count,
                warmup,
                size,
                flows,
                flow_block,
                distribution,
                sender,
                interface,
                queues,
                src_port_base,
                src_ip,
                src_mac,
                dst_mac,
                native,
                core,
                batch,
                drain_ms,
                reply_timeout_ms,
                late_threshold_us,
                seed,
                rates
            );
        }
        Ok(self)
    }
}

/// Settings after defaults and caps.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Server.
    pub target: SocketAddr,
    /// Rate (0 = ping-pong back to back).
    pub rate: f64,
    /// Measured seconds.
    pub duration: f64,
    /// Warm-up seconds.
    pub warmup: f64,
    /// Measured-request cap.
    pub count: Option<u64>,
    /// Payload bytes.
    pub size: usize,
    /// Flows.
    pub flows: usize,
    /// Requests per flow in a row.
    pub flow_block: u64,
    /// Distribution.
    pub distribution: Distribution,
    /// Sender.
    pub sender: Sender,
    /// Core to pin to.
    pub core: Option<usize>,
    /// Send batch.
    pub batch: usize,
    /// Drain.
    pub drain_ns: u64,
    /// Ping-pong reply timeout.
    pub reply_timeout_ns: u64,
    /// Generator lateness policy.
    pub policy: BehindPolicy,
    /// Schedule seed.
    pub seed: Option<u64>,
    /// Notes about caps applied.
    pub notes: Vec<String>,
}

/// Applies defaults and the hard caps.
pub fn resolve(a: &LoadArgs, ping_pong: bool) -> anyhow::Result<Resolved> {
    let target = a.target.context("--target ADDR:PORT is required")?;
    let mut notes = Vec::new();
    let mut rate = a.rate.unwrap_or(0.0);
    if !ping_pong && rate <= 0.0 && a.rates.is_none() {
        bail!("--rate is required for an open-loop run (or use --ping-pong)");
    }
    if rate > MAX_RATE {
        notes.push(format!("rate capped at {MAX_RATE}/s"));
        rate = MAX_RATE;
    }
    let mut warmup = a.warmup.unwrap_or(0.5).max(0.0);
    let mut duration = a.duration.unwrap_or(5.0);
    if duration <= 0.0 {
        bail!("--duration must be positive");
    }
    if warmup + duration > MAX_RUN_SECONDS {
        notes.push(format!("warm-up + duration capped at {MAX_RUN_SECONDS} s"));
        warmup = warmup.min(MAX_RUN_SECONDS / 10.0);
        duration = MAX_RUN_SECONDS - warmup;
    }
    let size = a.size.unwrap_or(64);
    if !(crate::payload::MIN_PAYLOAD..=crate::payload::MAX_PAYLOAD).contains(&size) {
        bail!("--size must be {}..={} bytes", crate::payload::MIN_PAYLOAD, crate::payload::MAX_PAYLOAD);
    }
    let drain = a.drain_ms.unwrap_or(500);
    if drain > MAX_DRAIN_MS {
        notes.push(format!("drain capped at {MAX_DRAIN_MS} ms"));
    }
    Ok(Resolved {
        target,
        rate,
        duration,
        warmup,
        count: a.count,
        size,
        flows: a.flows.unwrap_or(1).clamp(1, 4096),
        flow_block: a.flow_block.unwrap_or(32).max(1),
        distribution: a.distribution.unwrap_or_default(),
        sender: a.sender.unwrap_or_default(),
        core: match a.core.unwrap_or(0) {
            c if c < 0 => None,
            c => Some(c as usize),
        },
        batch: a.batch.unwrap_or(32).clamp(1, 256),
        drain_ns: drain.min(MAX_DRAIN_MS) * 1_000_000,
        reply_timeout_ns: a.reply_timeout_ms.unwrap_or(100).clamp(1, 10_000) * 1_000_000,
        policy: BehindPolicy { late_threshold_ns: a.late_threshold_us.unwrap_or(100) * 1000, ..Default::default() },
        seed: a.seed,
        notes,
    })
}

/// Opens the transport the settings ask for (in the current network namespace).
pub fn open_transport(a: &LoadArgs, r: &Resolved) -> anyhow::Result<Box<dyn DynTransport>> {
    Ok(match r.sender {
        Sender::Kernel => Box::new(
            KernelTransport::new(r.target, r.flows, a.src_port_base.unwrap_or(0), r.batch)
                .with_context(|| format!("opening UDP sockets to {}", r.target))?,
        ),
        Sender::Afxdp => {
            let src_ip = match a.src_ip {
                Some(ip) => ip,
                None => crate::afxdp::route_source(r.target)?,
            };
            let interface = match &a.interface {
                Some(i) => i.clone(),
                None => crate::afxdp::interface_of(src_ip)?,
            };
            Box::new(AfXdpTransport::open(&AfXdpOptions {
                interface,
                queues: a.queues.clone().unwrap_or_else(|| vec![0]),
                src_port_base: a.src_port_base.unwrap_or(40_000),
                flows: r.flows,
                target: r.target,
                src_ip: Some(src_ip),
                src_mac: a.src_mac.as_deref().map(parse_mac).transpose()?,
                dst_mac: a.dst_mac.as_deref().map(parse_mac).transpose()?,
                attach_mode: if a.native.unwrap_or(false) { AttachMode::Native } else { AttachMode::Generic },
            })?)
        }
    })
}

/// Object-safe wrapper so both transports can sit in one `Box`.
pub trait DynTransport {
    /// Runs one load on this transport.
    fn run(
        &mut self,
        p: &LoadParams,
        rec: &mut Recorder,
        start: u64,
        ping_pong: bool,
        progress: engine::Progress,
    ) -> std::io::Result<LoopEnd>;
    /// Current time on the transport's clock.
    fn clock(&mut self) -> u64;
}

impl<T: Transport> DynTransport for T {
    fn run(
        &mut self,
        p: &LoadParams,
        rec: &mut Recorder,
        start: u64,
        ping_pong: bool,
        progress: engine::Progress,
    ) -> std::io::Result<LoopEnd> {
        if ping_pong {
            engine::ping_pong(self, p, rec, start, progress)
        } else {
            engine::open_loop(self, p, rec, start, progress)
        }
    }
    fn clock(&mut self) -> u64 {
        self.now()
    }
}

/// A fresh run id (time and pid mixed).
pub fn new_run_id() -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    crate::schedule::Rng::new(t ^ (u64::from(std::process::id()) << 40)).next_u64()
}

/// Result of one load: the report and its interval histograms.
pub struct Outcome {
    /// The report.
    pub report: RunReport,
    /// Per-second histograms.
    pub intervals: Vec<Interval>,
}

/// Runs one load at `rate` on `t`.
pub fn run_one(
    t: &mut dyn DynTransport,
    r: &Resolved,
    rate: f64,
    ping_pong: bool,
    command: &str,
    show_progress: bool,
) -> anyhow::Result<Outcome> {
    let run_id = new_run_id();
    let total_secs = r.warmup + r.duration;
    let mut count = if ping_pong && rate <= 0.0 { MAX_PACKETS } else { (rate * total_secs).ceil() as u64 };
    if let Some(c) = r.count {
        count = count.min(c + (rate * r.warmup).ceil() as u64);
    }
    count = count.clamp(1, MAX_PACKETS);
    let start = t.clock() + 1_000_000;
    let warmup_ns = (r.warmup * 1e9) as u64;
    let mut rec = Recorder::new(run_id, count, start, start + warmup_ns, r.policy.late_threshold_ns);
    let deadline_s = if ping_pong { total_secs } else { (total_secs * 1.5 + 1.0).min(MAX_RUN_SECONDS) };
    let p = LoadParams {
        rate,
        distribution: r.distribution,
        count,
        size: r.size,
        flow_block: r.flow_block,
        drain_ns: r.drain_ns,
        deadline_ns: (deadline_s * 1e9) as u64 + r.drain_ns,
        reply_timeout_ns: r.reply_timeout_ns,
        seed: r.seed.unwrap_or(run_id),
    };
    let bar = (show_progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new((total_secs * 10.0) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut last = (start, 0u64);
    let mut progress = |rec: &Recorder, now: u64| {
        if let Some(b) = &bar {
            let sent = rec.sent + rec.warmup_sent;
            let dt = (now - last.0) as f64 / 1e9;
            let rate_now = if dt > 0.0 { (sent - last.1) as f64 / dt } else { 0.0 };
            last = (now, sent);
            b.set_position((now.saturating_sub(start) / 100_000_000).min((total_secs * 10.0) as u64));
            b.set_message(format!(
                "{rate_now:>9.0} req/s  p99 {} us  lost {}",
                rec.recent_p99().map(report::us).unwrap_or_else(|| "-".into()),
                rec.lost()
            ));
        }
    };
    // Let the transport settle (AF_XDP: the first frames after attach).
    while t.clock() < start {
        std::hint::spin_loop();
    }
    let end = t.run(&p, &mut rec, start, ping_pong, &mut progress).context("running the load")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let intervals = rec.take_intervals(end.end_ns);
    let meta = RunMeta {
        mode: if ping_pong { "ping-pong" } else { "open-loop" },
        sender: match r.sender {
            Sender::Kernel => "kernel",
            Sender::Afxdp => "af_xdp",
        },
        target: r.target.to_string(),
        rate,
        distribution: format!("{:?}", r.distribution).to_lowercase(),
        size: r.size,
        flows: r.flows,
        duration_s: r.duration,
        warmup_s: r.warmup,
        command: command.to_string(),
    };
    Ok(Outcome { report: report::build(&meta, &rec, &end, &r.policy), intervals })
}

/// Pins the current thread as asked (warning on failure).
pub fn pin(r: &Resolved) {
    if let Some(c) = r.core {
        if let Err(e) = pin_to_core(c) {
            eprintln!("shunt-bench: cannot pin to core {c}: {e}");
        }
    }
}

/// A sweep: one open-loop run per rate, and where the server stops keeping up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// One report per rate, in the order run.
    pub points: Vec<RunReport>,
    /// Highest offered rate whose loss was below 0.1 %.
    pub max_rate_loss_below_0_1pct: Option<f64>,
    /// p99 (from the intended time) at the lowest rate, ns.
    pub baseline_p99_ns: u64,
    /// First rate whose p99 exceeded twice `baseline_p99_ns` (the p99 "bend").
    pub p99_knee_rate: Option<f64>,
    /// The definitions used.
    pub definitions: String,
    /// Rates at which the generator fell behind its schedule.
    pub generator_behind_at: Vec<f64>,
    /// The command line.
    pub command: String,
}

/// Loss threshold for the sustained rate.
pub const LOSS_THRESHOLD: f64 = 0.001;
/// p99 bend factor.
pub const KNEE_FACTOR: f64 = 2.0;

/// Summarizes sweep points.
pub fn summarize_sweep(points: Vec<RunReport>, command: &str) -> SweepReport {
    let mut by_rate: Vec<&RunReport> = points.iter().collect();
    by_rate.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let max_ok = by_rate
        .iter()
        .filter(|p| p.sent > 0 && p.loss_ratio < LOSS_THRESHOLD)
        .map(|p| p.offered_rate)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let baseline = by_rate.first().map(|p| p.latency_ns.p99).unwrap_or(0);
    let knee = by_rate
        .iter()
        .find(|p| p.latency_ns.p99 as f64 > KNEE_FACTOR * baseline as f64 || p.loss_ratio >= 0.5)
        .map(|p| p.offered_rate);
    SweepReport {
        generator_behind_at: by_rate.iter().filter(|p| p.generator_behind).map(|p| p.offered_rate).collect(),
        max_rate_loss_below_0_1pct: max_ok,
        baseline_p99_ns: baseline,
        p99_knee_rate: knee,
        definitions: format!(
            "max_rate_loss_below_0_1pct: highest offered rate with loss < {} %; p99_knee_rate: lowest offered rate whose \
             p99 from the intended send time exceeds {KNEE_FACTOR} x the p99 at the lowest rate of the sweep (or that \
             loses half its requests)",
            LOSS_THRESHOLD * 100.0
        ),
        points,
        command: command.into(),
    }
}

/// Prints a sweep's table and summary.
pub fn print_sweep(s: &SweepReport) {
    if let Some(p) = s.points.first() {
        println!(
            "open-loop sweep via {} sockets -> {} ({} B, {} flow(s), {}), latency from the intended send time:",
            p.sender, p.target, p.size, p.flows, p.distribution
        );
    }
    println!("{}", report::TABLE_HEADER);
    for p in &s.points {
        println!("{}", report::table_row(p));
    }
    let k = |r: Option<f64>| r.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "none".into());
    println!("highest rate with loss < 0.1 %: {}", k(s.max_rate_loss_below_0_1pct));
    println!(
        "p99 bend (first rate with p99 > {KNEE_FACTOR} x {} us): {}",
        report::us(s.baseline_p99_ns),
        k(s.p99_knee_rate)
    );
    if !s.generator_behind_at.is_empty() {
        eprintln!(
            "!!! GENERATOR FELL BEHIND at {:?} req/s: those points measure the generator, not the server.",
            s.generator_behind_at
        );
    }
}

/// Writes the sweep plot.
pub fn plot_sweep(path: &std::path::Path, title: &str, s: &SweepReport) -> anyhow::Result<()> {
    let k = |p: &RunReport| p.offered_rate / 1e3;
    let pick = |name: &str, f: fn(&RunReport) -> u64| plot::Series {
        name: name.into(),
        points: s.points.iter().map(|p| (k(p), f(p) as f64 / 1e3)).collect(),
    };
    let lat = vec![
        pick("p50", |p| p.latency_ns.p50),
        pick("p99", |p| p.latency_ns.p99),
        pick("p99.9", |p| p.latency_ns.p999),
    ];
    let loss = vec![plot::Series {
        name: "loss".into(),
        points: s.points.iter().map(|p| (k(p), p.loss_ratio * 100.0)).collect(),
    }];
    plot::load_sweep(path, title, &lat, &loss)
}

/// Writes one run's percentile-spectrum plot.
pub fn plot_run(path: &std::path::Path, r: &RunReport) -> anyhow::Result<()> {
    let title = format!(
        "{} {} -> {} at {}",
        r.mode,
        r.sender,
        r.target,
        if r.offered_rate > 0.0 { format!("{:.0}/s", r.offered_rate) } else { "max rate".into() }
    );
    let s = plot::Series {
        name: format!("{} {}", r.mode, r.target),
        points: r.spectrum.iter().map(|&(p, v)| (p, v as f64 / 1e3)).collect(),
    };
    plot::percentile_spectrum(path, &title, &[s])
}

/// Sends sockperf-format requests until one is answered or `timeout` passes.
pub fn probe(target: SocketAddr, timeout: Duration) -> anyhow::Result<Duration> {
    let mut t = KernelTransport::new(target, 1, 0, 1)?;
    let run_id = new_run_id();
    let t0 = std::time::Instant::now();
    let mut buf = vec![vec![0u8; 64]];
    let mut seq = 0u64;
    while t0.elapsed() < timeout {
        let now = t.now();
        let len = crate::payload::encode(
            &mut buf[0],
            64,
            &crate::payload::Request { seq, run_id, intended_ns: now, sent_ns: now },
        );
        seq += 1;
        let _ = t.send(&buf, &[len], &[0]);
        let until = std::time::Instant::now() + Duration::from_millis(100);
        while std::time::Instant::now() < until {
            let mut ok = false;
            t.recv(&mut |p, _| ok |= crate::payload::decode(p, run_id).is_ok())?;
            if ok {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    bail!("no reply from {target} within {timeout:?}")
}
