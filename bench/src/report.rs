//! Turning a finished run into its report: JSON, the terminal table, and the HdrHistogram interval log.

use std::{io::Write, path::Path, time::Duration};

use anyhow::Context;
use hdrhistogram::serialization::{interval_log::IntervalLogWriterBuilder, V2DeflateSerializer};
use serde::{Deserialize, Serialize};

use crate::{
    engine::LoopEnd,
    record::{spectrum, Interval, Recorder, Summary},
};

/// Everything measured in one run; the JSON written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// `open-loop` or `ping-pong`.
    pub mode: String,
    /// `kernel` or `af_xdp`.
    pub sender: String,
    /// The server.
    pub target: String,
    /// Requested rate (requests/s; ping-pong: the cap, 0 = back to back).
    pub offered_rate: f64,
    /// `uniform` or `poisson`.
    pub distribution: String,
    /// UDP payload bytes.
    pub size: usize,
    /// Flows (source ports).
    pub flows: usize,
    /// Requested measurement duration (s).
    pub duration_s: f64,
    /// Warm-up before it (s).
    pub warmup_s: f64,
    /// Measured requests sent.
    pub sent: u64,
    /// Distinct measured requests answered.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost / sent`.
    pub loss_ratio: f64,
    /// Replies to an already answered request.
    pub duplicates: u64,
    /// Replies arriving after a later request's reply.
    pub reordered: u64,
    /// Received payloads that were not replies of this run.
    pub foreign: u64,
    /// Replies with sockperf's CLIENT flag cleared (a sockperf-protocol server).
    pub client_flag_cleared: u64,
    /// Requests actually sent per second over the measured part.
    pub send_rate: f64,
    /// Replies per second: received over the measured span of the schedule, or over the span the requests
    /// actually took if that was longer (the generator fell behind).
    pub achieved_rate: f64,
    /// Latency from the intended send time (open loop) or the send time (ping-pong), ns.
    pub latency_ns: Summary,
    /// Values in the latency histogram (one per measured reply); merged: the sum of the threads'.
    #[serde(default)]
    pub latency_samples: u64,
    /// Latency from the actual send time, ns.
    pub latency_from_send_ns: Summary,
    /// How late requests left: actual - intended send time, ns.
    pub send_lag_ns: Summary,
    /// Requests that left more than the lateness threshold after their intended time.
    pub sent_late: u64,
    /// Whether the generator, not the server, limited the run (see `behind_reasons`).
    pub generator_behind: bool,
    /// Why `generator_behind` is set.
    pub behind_reasons: Vec<String>,
    /// Whether the hard time cap ended the run.
    pub hit_deadline: bool,
    /// (percentile, ns) of `latency_ns`, for plots.
    pub spectrum: Vec<(f64, u64)>,
    /// DNS runs (`--dns-queries`): how the replies checked out (bench/src/dns.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<crate::dns::DnsCounts>,
    /// The run id carried in every request.
    pub run_id: u64,
    /// The command line that produced this report.
    pub command: String,
    /// Per sender thread (`--threads`): what it sent and got back. The figures above merge them (counters
    /// summed, latency histograms added).
    #[serde(default)]
    pub threads: Vec<ThreadReport>,
}

/// One sender thread's share of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadReport {
    /// Index (0-based).
    pub thread: usize,
    /// Core it was pinned to (None: not pinned).
    pub core: Option<usize>,
    /// AF_XDP queues it sent and received on (empty: kernel sockets).
    pub queues: Vec<u32>,
    /// Flows (source ports) it used.
    pub flows: usize,
    /// Its first source port (None: ephemeral kernel ports).
    pub first_src_port: Option<u16>,
    /// Its share of the rate, requests/s.
    pub offered_rate: f64,
    /// Measured requests sent.
    pub sent: u64,
    /// Distinct measured requests answered.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// Requests actually sent per second.
    pub send_rate: f64,
    /// Replies per second.
    pub achieved_rate: f64,
    /// Values in its latency histogram.
    pub latency_samples: u64,
    /// Its latency summary, ns.
    pub latency_ns: Summary,
    /// Replies that were not this thread's.
    pub foreign: u64,
    /// Whether it fell behind its share of the schedule.
    pub generator_behind: bool,
    /// Why.
    pub behind_reasons: Vec<String>,
    /// Its run id.
    pub run_id: u64,
}

impl ThreadReport {
    /// Thread `thread`'s figures from its own report.
    pub fn of(thread: usize, core: Option<usize>, queues: &[u32], first_src_port: Option<u16>, r: &RunReport) -> Self {
        ThreadReport {
            thread,
            core,
            queues: queues.to_vec(),
            flows: r.flows,
            first_src_port,
            offered_rate: r.offered_rate,
            sent: r.sent,
            received: r.received,
            lost: r.lost,
            send_rate: r.send_rate,
            achieved_rate: r.achieved_rate,
            latency_samples: r.latency_samples,
            latency_ns: r.latency_ns,
            foreign: r.foreign,
            generator_behind: r.generator_behind,
            behind_reasons: r.behind_reasons.clone(),
            run_id: r.run_id,
        }
    }
}

/// How far behind the generator may fall before the run is flagged.
#[derive(Debug, Clone, Copy)]
pub struct BehindPolicy {
    /// A request is late if it leaves more than this after its intended time.
    pub late_threshold_ns: u64,
    /// Flag the run if more than this fraction of requests were late.
    pub late_fraction: f64,
    /// Flag the run if the actual send rate is below this fraction of the offered rate.
    pub min_rate_fraction: f64,
}

impl Default for BehindPolicy {
    fn default() -> Self {
        BehindPolicy { late_threshold_ns: 100_000, late_fraction: 0.01, min_rate_fraction: 0.98 }
    }
}

/// Run parameters echoed in the report.
#[derive(Debug, Clone)]
pub struct RunMeta {
    /// `open-loop` / `ping-pong`.
    pub mode: &'static str,
    /// `kernel` / `af_xdp`.
    pub sender: &'static str,
    /// Target address.
    pub target: String,
    /// Rate asked for.
    pub rate: f64,
    /// Distribution name.
    pub distribution: String,
    /// Payload size.
    pub size: usize,
    /// Flows.
    pub flows: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// The command line.
    pub command: String,
}

/// Builds the report of a finished run.
pub fn build(meta: &RunMeta, rec: &Recorder, end: &LoopEnd, policy: &BehindPolicy) -> RunReport {
    let secs = |span: Option<(u64, u64)>| span.map(|(a, b)| (b.saturating_sub(a)) as f64 / 1e9).unwrap_or(0.0);
    let send_span = secs(rec.send_span());
    let intended_span = secs(rec.intended_span());
    // n requests span n-1 gaps.
    let per_s = |n: u64, span: f64| if n > 1 && span > 0.0 { (n - 1) as f64 / span } else { 0.0 };
    let send_rate = per_s(rec.sent, send_span);
    // Replies per second over the span the measured requests were meant to cover, or over the longer span
    // they actually took when the generator fell behind: never more than the rate they were sent at.
    let fraction = if rec.sent > 0 { rec.received as f64 / rec.sent as f64 } else { 0.0 };
    let achieved_rate = if meta.mode == "ping-pong" {
        fraction * send_rate
    } else {
        fraction * per_s(rec.sent, intended_span).min(send_rate)
    };
    let mut reasons = Vec::new();
    if meta.mode == "open-loop" && rec.sent > 0 {
        let late = rec.sent_late as f64 / rec.sent as f64;
        if late > policy.late_fraction {
            reasons.push(format!(
                "{:.1} % of requests left more than {} us after their intended time (max lag {:.0} us)",
                late * 100.0,
                policy.late_threshold_ns / 1000,
                rec.send_lag.max() as f64 / 1e3
            ));
        }
        if meta.rate > 0.0 && send_rate < meta.rate * policy.min_rate_fraction {
            reasons.push(format!(
                "sent {:.0}/s of the {:.0}/s requested ({:.1} % short)",
                send_rate,
                meta.rate,
                (1.0 - send_rate / meta.rate) * 100.0
            ));
        }
        if end.hit_deadline {
            reasons.push("the hard time cap cut the run short".into());
        }
    }
    RunReport {
        mode: meta.mode.into(),
        sender: meta.sender.into(),
        target: meta.target.clone(),
        offered_rate: meta.rate,
        distribution: meta.distribution.clone(),
        size: meta.size,
        flows: meta.flows,
        duration_s: meta.duration_s,
        warmup_s: meta.warmup_s,
        sent: rec.sent,
        received: rec.received,
        lost: rec.lost(),
        loss_ratio: if rec.sent > 0 { rec.lost() as f64 / rec.sent as f64 } else { 0.0 },
        duplicates: rec.duplicates,
        reordered: rec.reordered,
        foreign: rec.foreign,
        client_flag_cleared: rec.client_cleared,
        send_rate,
        achieved_rate,
        latency_ns: Summary::of(&rec.from_intended),
        latency_samples: rec.from_intended.len(),
        latency_from_send_ns: Summary::of(&rec.from_sent),
        send_lag_ns: Summary::of(&rec.send_lag),
        sent_late: rec.sent_late,
        generator_behind: !reasons.is_empty(),
        behind_reasons: reasons,
        hit_deadline: end.hit_deadline,
        spectrum: spectrum(&rec.from_intended),
        dns: rec.dns_counts().cloned(),
        run_id: rec.run_id(),
        command: meta.command.clone(),
        threads: Vec::new(),
    }
}

/// Formats ns as µs with adaptive precision.
pub fn us(ns: u64) -> String {
    let v = ns as f64 / 1e3;
    if v < 100.0 {
        format!("{v:.2}")
    } else if v < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The one-line verdict of a run the generator limited (None when it kept its schedule).
pub fn generator_limit_line(r: &RunReport) -> Option<String> {
    r.generator_behind.then(|| {
        format!(
            "the generator, not the server, is the limit at {:.0}/s requested ({:.0}/s sent): {}",
            r.offered_rate,
            r.send_rate,
            r.behind_reasons.first().map(String::as_str).unwrap_or("behind its schedule")
        )
    })
}

/// Prints the generator-behind banner to stderr.
pub fn warn_if_behind(r: &RunReport) {
    if let Some(line) = generator_limit_line(r) {
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!!! {line}.");
        eprintln!("!!! Latency from the intended time still counts the delay.");
        for why in &r.behind_reasons {
            eprintln!("!!!   - {why}");
        }
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    }
}

/// Header of the terminal table.
pub const TABLE_HEADER: &str =
    "  offered/s  achieved/s     sent     lost   loss%   min(us)   p50(us)   p90(us)   p99(us) p99.9(us) p99.99(us)   max(us)";

/// One terminal-table row.
pub fn table_row(r: &RunReport) -> String {
    let l = &r.latency_ns;
    format!(
        "{:>11} {:>11.0} {:>8} {:>8} {:>7.3} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9}{}",
        if r.offered_rate > 0.0 { format!("{:.0}", r.offered_rate) } else { "max".into() },
        r.achieved_rate,
        r.sent,
        r.lost,
        r.loss_ratio * 100.0,
        us(l.min),
        us(l.p50),
        us(l.p90),
        us(l.p99),
        us(l.p999),
        us(l.p9999),
        us(l.max),
        if r.generator_behind { "  GENERATOR BEHIND" } else { "" }
    )
}

/// Prints a one-run table.
pub fn print_run(r: &RunReport) {
    println!(
        "{} via {} sockets -> {} ({} B, {} flow(s), {}), latency from the {} send time:",
        r.mode,
        r.sender,
        r.target,
        r.size,
        r.flows,
        r.distribution,
        if r.mode == "ping-pong" { "actual" } else { "intended" }
    );
    println!("{TABLE_HEADER}");
    println!("{}", table_row(r));
    let s = &r.latency_from_send_ns;
    println!(
        "  from the actual send time: p50 {} us, p99 {} us, p99.9 {} us, max {} us; send lag p99 {} us, max {} us",
        us(s.p50),
        us(s.p99),
        us(s.p999),
        us(s.max),
        us(r.send_lag_ns.p99),
        us(r.send_lag_ns.max)
    );
    if r.duplicates + r.reordered + r.foreign > 0 {
        println!("  duplicates {}, reordered {}, foreign {}", r.duplicates, r.reordered, r.foreign);
    }
    if let Some(d) = &r.dns {
        println!(
            "  dns: NOERROR {}, NXDOMAIN {}, truncated (TC) {}, wrong rcode {}, wrong ID/question {}",
            d.noerror, d.nxdomain, d.truncated, d.bad_rcode, d.mismatched
        );
    }
    print_threads(r);
    if let Some(line) = generator_limit_line(r) {
        println!("  {line}");
    }
    warn_if_behind(r);
}

/// Per-thread rows (when there is more than one sender thread).
pub fn print_threads(r: &RunReport) {
    if r.threads.len() < 2 {
        return;
    }
    println!("  per sender thread (the row above merges them):");
    println!("  thread  core  queues  flows   offered/s    sent/s       sent   received     lost   p50(us)   p99(us)");
    for t in &r.threads {
        let q = if t.queues.is_empty() {
            "-".to_string()
        } else {
            t.queues.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        };
        println!(
            "  {:>6} {:>5} {:>7} {:>6} {:>11.0} {:>9.0} {:>10} {:>10} {:>8} {:>9} {:>9}{}",
            t.thread,
            t.core.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            q,
            t.flows,
            t.offered_rate,
            t.send_rate,
            t.sent,
            t.received,
            t.lost,
            us(t.latency_ns.p50),
            us(t.latency_ns.p99),
            if t.generator_behind { "  BEHIND" } else { "" }
        );
    }
}

/// Writes `intervals` as an HdrHistogram interval log (V2, deflate-compressed; values in ns).
pub fn write_hdr_log(path: &Path, intervals: &[Interval], comment: &str) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    {
        let mut ser = V2DeflateSerializer::new();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values in nanoseconds: latency from the intended send time")
            .with_start_time(std::time::SystemTime::now())
            .begin_log_with(&mut buf, &mut ser)
            .context("starting the HdrHistogram log")?;
        for iv in intervals {
            w.write_histogram(&iv.hist, Duration::from_nanos(iv.start_ns), Duration::from_nanos(iv.duration_ns), None)
                .map_err(|e| anyhow::anyhow!("writing the HdrHistogram log: {e:?}"))?;
        }
    }
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(&buf))
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `value` as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}
