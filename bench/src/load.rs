//! Run settings from flags and/or a TOML file, hard caps, and running one load (open loop or ping-pong) or a
//! sweep over rates on a transport.

use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Barrier,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use shunt::steer::AttachMode;

use crate::{
    afxdp::{parse_mac, AfXdpOptions, AfXdpShared, AfXdpTransport, ThreadQueues},
    engine::{self, LoadParams, LoopEnd, Transport},
    kernel::{pin_to_core, KernelTransport},
    plot,
    record::{merge_intervals, Interval, Recorder},
    report::{self, BehindPolicy, RunMeta, RunReport, ThreadReport},
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
/// Hard cap on sender threads.
pub const MAX_THREADS: usize = 64;

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
    /// AF_XDP: queues to open sockets on, comma-separated (default 0; with several threads, one per thread:
    /// 0,1,...). One thread: all of them, flows spread over them; several threads: thread i owns the i-th.
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
    /// AF_XDP: native XDP attach (`true`) or generic (`false`). Default: generic for one queue, native for several
    /// (on veth the generic hook sees every packet on queue 0, so replies would all reach queue 0's socket).
    #[arg(long)]
    pub native: Option<bool>,
    /// Pin the generator thread to this core (default 0; -1: no pinning). With several threads and no --cores:
    /// the first thread's core, the others on the next allowed cores in turn.
    #[arg(long, allow_hyphen_values = true)]
    pub core: Option<i64>,
    /// Sender threads (default 1, or one per --cores entry). Each is pinned to its own core and sends from its
    /// own sockets (an AF_XDP socket on its own queue, or its own kernel sockets) and its own flows; the rate,
    /// the request count and the flows are split evenly. The report shows each thread and the merged figures.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cores of the sender threads, comma-separated, one per thread.
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
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
    /// DNS payloads: cycle through the queries of this file (dnsperf's format, `name TYPE` per line), each with a
    /// fresh ID, and accept a reply only with the ID and question sent, QR set and a consistent NOERROR or
    /// NXDOMAIN rcode (bench/src/dns.rs); `--size` is ignored.
    #[arg(long)]
    pub dns_queries: Option<PathBuf>,
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
                threads,
                cores,
                batch,
                drain_ms,
                reply_timeout_ms,
                late_threshold_us,
                seed,
                rates,
                dns_queries
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
    /// Sender threads.
    pub threads: usize,
    /// Core of each sender thread (None: not pinned).
    pub cores: Vec<Option<usize>>,
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
    /// DNS queries to send instead of shunt-bench's payload.
    pub dns: Option<std::sync::Arc<crate::dns::Queries>>,
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
    let dns = a.dns_queries.as_deref().map(crate::dns::Queries::load).transpose()?;
    let size = match &dns {
        Some(q) => q.max_len(),
        None => a.size.unwrap_or(64),
    };
    if dns.is_none() && !(crate::payload::MIN_PAYLOAD..=crate::payload::MAX_PAYLOAD).contains(&size) {
        bail!("--size must be {}..={} bytes", crate::payload::MIN_PAYLOAD, crate::payload::MAX_PAYLOAD);
    }
    let drain = a.drain_ms.unwrap_or(500);
    if drain > MAX_DRAIN_MS {
        notes.push(format!("drain capped at {MAX_DRAIN_MS} ms"));
    }
    let threads = a.threads.or(a.cores.as_ref().map(Vec::len)).unwrap_or(1);
    if !(1..=MAX_THREADS).contains(&threads) {
        bail!("--threads must be 1..={MAX_THREADS}");
    }
    let cores = thread_cores(a, threads, &mut notes)?;
    let mut flows = a.flows.unwrap_or(threads).clamp(1, 4096);
    if flows < threads {
        notes.push(format!("{flows} flow(s) for {threads} threads: raised to one per thread"));
        flows = threads;
    }
    Ok(Resolved {
        target,
        rate,
        duration,
        warmup,
        count: a.count,
        size,
        flows,
        flow_block: a.flow_block.unwrap_or(32).max(1),
        distribution: a.distribution.unwrap_or_default(),
        sender: a.sender.unwrap_or_default(),
        threads,
        cores,
        batch: a.batch.unwrap_or(32).clamp(1, 256),
        drain_ns: drain.min(MAX_DRAIN_MS) * 1_000_000,
        reply_timeout_ns: a.reply_timeout_ms.unwrap_or(100).clamp(1, 10_000) * 1_000_000,
        policy: BehindPolicy { late_threshold_ns: a.late_threshold_us.unwrap_or(100) * 1000, ..Default::default() },
        seed: a.seed,
        notes,
        dns,
    })
}

/// The core of each sender thread: `--cores`, or `--core` for the first and the next allowed cores in turn.
fn thread_cores(a: &LoadArgs, threads: usize, notes: &mut Vec<String>) -> anyhow::Result<Vec<Option<usize>>> {
    let cores: Vec<Option<usize>> = match (&a.cores, a.core.unwrap_or(0)) {
        (Some(list), _) => {
            if list.len() != threads {
                bail!("--cores lists {} core(s) for {threads} thread(s): give one per thread", list.len());
            }
            list.iter().map(|&c| Some(c)).collect()
        }
        (None, c) if c < 0 => vec![None; threads],
        (None, c) if threads == 1 => vec![Some(c as usize)],
        (None, c) => {
            let allowed = shunt::sys::allowed_cores().unwrap_or_default();
            match allowed.iter().position(|&x| x == c as usize) {
                Some(first) => (0..threads).map(|i| Some(allowed[(first + i) % allowed.len()])).collect(),
                None => (0..threads).map(|i| Some(c as usize + i)).collect(),
            }
        }
    };
    let mut pinned: Vec<usize> = cores.iter().flatten().copied().collect();
    pinned.sort_unstable();
    pinned.dedup();
    if threads > 1 && cores.iter().all(Option::is_some) && pinned.len() < threads {
        notes.push(format!(
            "{threads} sender threads on {} distinct core(s): threads share a core and may not keep their rate",
            pinned.len()
        ));
    }
    Ok(cores)
}

/// One sender thread: where it runs and what it owns.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    /// Core it is pinned to (None: not pinned).
    pub core: Option<usize>,
    /// AF_XDP queues it owns (empty for kernel sockets).
    pub queues: Vec<u32>,
    /// Flows (source ports) it sends from.
    pub flows: usize,
    /// Its first source port (None: ephemeral kernel ports).
    pub first_src_port: Option<u16>,
}

/// The sender threads' transports, opened once and used for every run (a sweep's rates included).
pub struct Generator {
    // Dropped in declaration order: the sockets first, then the shared XDP program.
    transports: Vec<Box<dyn DynTransport>>,
    /// Per thread, in order.
    pub threads: Vec<ThreadInfo>,
    _shared: Option<AfXdpShared>,
}

/// Flows of thread `i` of `n` when `total` are split evenly (the last ones get the remainder).
fn flows_of_thread(total: usize, n: usize, i: usize) -> usize {
    (i + 1) * total / n - i * total / n
}

/// Opens every sender thread's transport (in the current network namespace).
pub fn open_generator(a: &LoadArgs, r: &Resolved) -> anyhow::Result<Generator> {
    let n = r.threads;
    let mut split = Vec::new(); // (first flow, flows) per thread
    let mut first = 0usize;
    for i in 0..n {
        let f = flows_of_thread(r.flows, n, i);
        split.push((first, f));
        first += f;
    }
    let mut threads = Vec::new();
    Ok(match r.sender {
        Sender::Kernel => {
            let base = a.src_port_base.unwrap_or(0);
            if base != 0 && usize::from(base) + r.flows > 65_536 {
                bail!("source ports {base} + {} flows exceed 65535", r.flows);
            }
            let mut transports: Vec<Box<dyn DynTransport>> = Vec::new();
            for (i, &(first, f)) in split.iter().enumerate() {
                let port = if base == 0 { 0 } else { base + first as u16 };
                transports.push(Box::new(
                    KernelTransport::new(r.target, f, port, r.batch)
                        .with_context(|| format!("opening UDP sockets to {} (thread {i})", r.target))?,
                ));
                threads.push(ThreadInfo {
                    core: r.cores[i],
                    queues: vec![],
                    flows: f,
                    first_src_port: (base != 0).then_some(port),
                });
            }
            Generator { transports, threads, _shared: None }
        }
        Sender::Afxdp => {
            let src_ip = match a.src_ip {
                Some(ip) => ip,
                None => crate::afxdp::route_source(r.target)?,
            };
            let interface = match &a.interface {
                Some(i) => i.clone(),
                None => crate::afxdp::interface_of(src_ip)?,
            };
            let queues: Vec<Vec<u32>> = match (&a.queues, n) {
                (None, 1) => vec![vec![0]],
                (Some(q), 1) => vec![q.clone()],
                (None, n) => (0..n as u32).map(|q| vec![q]).collect(),
                (Some(q), n) if q.len() == n => q.iter().map(|&q| vec![q]).collect(),
                (Some(q), n) => bail!("--queues lists {} queue(s) for {n} threads: give one per thread", q.len()),
            };
            let several = queues.iter().map(Vec::len).sum::<usize>() > 1;
            let native = a.native.unwrap_or(several);
            if several && !native {
                eprintln!(
                    "shunt-bench: warning: several queues with generic XDP: on veth the generic hook sees every \
                     reply on queue 0, so the other queues' sockets get none (use --native true)"
                );
            }
            let base = a.src_port_base.unwrap_or(40_000);
            let (shared, ts) = AfXdpTransport::open(&AfXdpOptions {
                interface,
                threads: queues
                    .iter()
                    .zip(&split)
                    .map(|(q, &(_, flows))| ThreadQueues { queues: q.clone(), flows })
                    .collect(),
                src_port_base: base,
                target: r.target,
                src_ip: Some(src_ip),
                src_mac: a.src_mac.as_deref().map(parse_mac).transpose()?,
                dst_mac: a.dst_mac.as_deref().map(parse_mac).transpose()?,
                attach_mode: if native { AttachMode::Native } else { AttachMode::Generic },
            })?;
            let mut transports: Vec<Box<dyn DynTransport>> = Vec::new();
            for (i, t) in ts.into_iter().enumerate() {
                transports.push(Box::new(t));
                threads.push(ThreadInfo {
                    core: r.cores[i],
                    queues: queues[i].clone(),
                    flows: split[i].1,
                    first_src_port: Some(base + split[i].0 as u16),
                });
            }
            Generator { transports, threads, _shared: Some(shared) }
        }
    })
}

/// Object-safe wrapper so both transports can sit in one `Box` (and go to a sender thread for a run).
pub trait DynTransport: Send {
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

impl<T: Transport + Send> DynTransport for T {
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

/// Requests of thread `i` of `n` when `total` are split evenly.
fn count_of_thread(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

/// Runs one load at `rate` (the sum over the sender threads): every thread runs the same loop on its own
/// transport, pinned to its core, at `rate / threads`, from one common start time on one clock. Returns the
/// merged report (counters summed, histograms added) with each thread's own figures in `threads`.
pub fn run_one(
    g: &mut Generator,
    r: &Resolved,
    rate: f64,
    ping_pong: bool,
    command: &str,
    show_progress: bool,
) -> anyhow::Result<Outcome> {
    let n = g.transports.len().max(1);
    let base_id = new_run_id();
    let total_secs = r.warmup + r.duration;
    let mut count = if ping_pong && rate <= 0.0 { MAX_PACKETS } else { (rate * total_secs).ceil() as u64 };
    if let Some(c) = r.count {
        count = count.min(c + (rate * r.warmup).ceil() as u64);
    }
    count = count.clamp(n as u64, MAX_PACKETS);
    let warmup_ns = (r.warmup * 1e9) as u64;
    let deadline_s = if ping_pong { total_secs } else { (total_secs * 1.5 + 1.0).min(MAX_RUN_SECONDS) };
    let thread_rate = rate / n as f64;
    let bar = (show_progress && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new((total_secs * 10.0) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    // Every thread pins itself; then all wait for one start time, set a little after the last is ready.
    let barrier = Barrier::new(n + 1);
    let start_at = AtomicU64::new(0);
    let results: Vec<anyhow::Result<(Recorder, LoopEnd)>> = std::thread::scope(|s| {
        let handles: Vec<_> = g
            .transports
            .iter_mut()
            .zip(&g.threads)
            .enumerate()
            .map(|(i, (t, info))| {
                let (barrier, start_at, bar) = (&barrier, &start_at, if i == 0 { bar.as_ref() } else { None });
                s.spawn(move || -> anyhow::Result<(Recorder, LoopEnd)> {
                    if let Some(c) = info.core {
                        if let Err(e) = pin_to_core(c) {
                            eprintln!("shunt-bench: cannot pin sender thread {i} to core {c}: {e}");
                        }
                    }
                    barrier.wait();
                    barrier.wait();
                    let start = start_at.load(Ordering::Acquire);
                    let run_id = crate::schedule::Rng::new(base_id ^ i as u64).next_u64();
                    let count_i = count_of_thread(count, n, i);
                    let mut rec = Recorder::new(run_id, count_i, start, start + warmup_ns, r.policy.late_threshold_ns);
                    if let Some(q) = &r.dns {
                        rec = rec.with_dns(q.clone());
                    }
                    let p = LoadParams {
                        rate: thread_rate,
                        distribution: r.distribution,
                        count: count_i,
                        size: r.size,
                        flow_block: r.flow_block,
                        drain_ns: r.drain_ns,
                        deadline_ns: (deadline_s * 1e9) as u64 + r.drain_ns,
                        reply_timeout_ns: r.reply_timeout_ns,
                        seed: r.seed.map(|s| s.wrapping_add(i as u64)).unwrap_or(run_id),
                    };
                    let mut last = (start, 0u64);
                    let mut progress = |rec: &Recorder, now: u64| {
                        if let Some(b) = bar {
                            let sent = rec.sent + rec.warmup_sent;
                            let dt = now.saturating_sub(last.0) as f64 / 1e9;
                            let rate_now = if dt > 0.0 { (sent - last.1) as f64 / dt } else { 0.0 };
                            last = (now, sent);
                            b.set_position((now.saturating_sub(start) / 100_000_000).min((total_secs * 10.0) as u64));
                            b.set_message(format!(
                                "{rate_now:>9.0} req/s  p99 {} us  lost {}{}",
                                rec.recent_p99().map(report::us).unwrap_or_else(|| "-".into()),
                                rec.lost(),
                                if n > 1 { format!("  (thread 0 of {n})") } else { String::new() }
                            ));
                        }
                    };
                    // Let the transport settle (AF_XDP: the first frames after attach).
                    while t.clock() < start {
                        std::hint::spin_loop();
                    }
                    let end = t.run(&p, &mut rec, start, ping_pong, &mut progress).context("running the load")?;
                    Ok((rec, end))
                })
            })
            .collect();
        barrier.wait();
        start_at.store(engine::clock_ns() + 1_000_000, Ordering::Release);
        barrier.wait();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().unwrap_or_else(|_| Err(anyhow!("sender thread {i} panicked"))))
            .collect()
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let meta = |rate: f64, flows: usize| RunMeta {
        mode: if ping_pong { "ping-pong" } else { "open-loop" },
        sender: match r.sender {
            Sender::Kernel => "kernel",
            Sender::Afxdp => "af_xdp",
        },
        target: r.target.to_string(),
        rate,
        distribution: format!("{:?}", r.distribution).to_lowercase(),
        size: r.size,
        flows,
        duration_s: r.duration,
        warmup_s: r.warmup,
        command: command.to_string(),
    };
    let mut merged: Option<(Recorder, LoopEnd)> = None;
    let mut intervals: Vec<Interval> = Vec::new();
    let mut threads = Vec::new();
    for (i, res) in results.into_iter().enumerate() {
        let (mut rec, end) = res.with_context(|| format!("sender thread {i}"))?;
        merge_intervals(&mut intervals, rec.take_intervals(end.end_ns));
        let info = &g.threads[i];
        let one = report::build(&meta(thread_rate, info.flows), &rec, &end, &r.policy);
        threads.push(ThreadReport::of(i, info.core, &info.queues, info.first_src_port, &one));
        merged = Some(match merged {
            None => (rec, end),
            Some((mut m, e)) => {
                m.absorb(&rec);
                (m, e.merge(&end))
            }
        });
    }
    let (rec, end) = merged.context("no sender thread")?;
    let mut report = report::build(&meta(rate, r.flows), &rec, &end, &r.policy);
    if n > 1 {
        for t in &threads {
            for why in &t.behind_reasons {
                report.behind_reasons.push(format!("thread {}: {why}", t.thread));
            }
        }
        report.generator_behind = !report.behind_reasons.is_empty();
    }
    report.threads = threads;
    Ok(Outcome { report, intervals })
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
/// Waits until `target` answers a request (shunt-bench's payload, or with `dns` its first query, answered with
/// NOERROR or NXDOMAIN).
pub fn probe(
    target: SocketAddr,
    timeout: Duration,
    dns: Option<std::sync::Arc<crate::dns::Queries>>,
) -> anyhow::Result<Duration> {
    let mut t = KernelTransport::new(target, 1, 0, 1)?;
    let run_id = new_run_id();
    let t0 = std::time::Instant::now();
    let mut buf = vec![vec![0u8; 512]];
    let mut seq = 0u64;
    let mut dns = dns.map(crate::dns::DnsState::new);
    while t0.elapsed() < timeout {
        let now = t.now();
        let req = crate::payload::Request { seq, run_id, intended_ns: now, sent_ns: now };
        let len = match &mut dns {
            Some(d) => d.encode(&mut buf[0], 0, now, now),
            None => crate::payload::encode(&mut buf[0], 64, &req),
        };
        seq += 1;
        let _ = t.send(&buf, &[len], &[0]);
        let until = std::time::Instant::now() + Duration::from_millis(100);
        while std::time::Instant::now() < until {
            let mut ok = false;
            t.recv(&mut |p, _| {
                ok |= match &mut dns {
                    Some(d) => matches!(d.check(p), crate::dns::Verdict::Answer { .. }),
                    None => crate::payload::decode(p, run_id).is_ok(),
                }
            })?;
            if ok {
                return Ok(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    bail!("no reply from {target} within {timeout:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_and_requests_split_evenly_over_threads() {
        assert_eq!((0..3).map(|i| flows_of_thread(7, 3, i)).collect::<Vec<_>>(), vec![2, 2, 3]);
        assert_eq!((0..2).map(|i| flows_of_thread(4, 2, i)).sum::<usize>(), 4);
        assert_eq!((0..3).map(|i| count_of_thread(10, 3, i)).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!((0..4).map(|i| count_of_thread(1_000_001, 4, i)).sum::<u64>(), 1_000_001);
    }

    #[test]
    fn threads_get_cores_and_flows() {
        let base = LoadArgs { target: Some("198.18.0.1:9000".parse().unwrap()), rate: Some(1e4), ..Default::default() };
        let r = resolve(&base, false).unwrap();
        assert_eq!((r.threads, r.cores.clone(), r.flows), (1, vec![Some(0)], 1));
        let r = resolve(&LoadArgs { cores: Some(vec![1, 0]), ..base.clone() }, false).unwrap();
        assert_eq!((r.threads, r.cores.clone(), r.flows), (2, vec![Some(1), Some(0)], 2));
        let r = resolve(&LoadArgs { threads: Some(2), core: Some(-1), flows: Some(1), ..base.clone() }, false).unwrap();
        assert_eq!((r.cores.clone(), r.flows), (vec![None, None], 2));
        assert!(!r.notes.is_empty(), "flows raised to one per thread is noted");
        assert!(resolve(&LoadArgs { threads: Some(3), cores: Some(vec![0, 1]), ..base.clone() }, false).is_err());
        assert!(resolve(&LoadArgs { threads: Some(0), ..base }, false).is_err());
    }
}
