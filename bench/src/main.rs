//! shunt-bench: an open-loop and ping-pong UDP load generator (kernel sockets or AF_XDP), and `compare`, which
//! runs the same loads against several UDP echo servers in a lab and writes a side-by-side report, and `tables`,
//! which writes the tables of README.md and docs/ from its result files.
//! See bench/README.md.

mod afxdp;
mod compare;
mod dns;
mod engine;
mod kernel;
mod load;
mod payload;
mod plot;
mod record;
mod reflector;
mod report;
mod schedule;
mod tables;
mod verdict;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};

use load::LoadArgs;

#[derive(Parser)]
#[command(
    name = "shunt-bench",
    version,
    about = "Open-loop / ping-pong UDP latency load generator and server comparisons"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run: open loop at --rate (latency from the intended send time), or --ping-pong.
    Run {
        #[command(flatten)]
        load: LoadArgs,
        /// Closed loop: one request outstanding (like `sockperf ping-pong`).
        #[arg(long)]
        ping_pong: bool,
        /// Write the report as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the percentile spectrum as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Write an HdrHistogram interval log (1 s intervals).
        #[arg(long)]
        hdr_log: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Open-loop runs at each of --rates: highest rate with loss < 0.1 % and where p99 bends.
    Sweep {
        #[command(flatten)]
        load: LoadArgs,
        /// Write the sweep as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write latency and loss against offered load as SVG.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Run shunt's in-kernel server (`shunt::in_kernel`, bpf/answer.bpf.c) on an interface until
    /// SIGINT/SIGTERM: the "server inside the kernel" that the comparison measures shunt against.
    XdpReflector {
        /// Interface to attach to.
        #[arg(long)]
        interface: String,
        /// UDP port to answer.
        #[arg(long)]
        port: u16,
        /// Speak sockperf's protocol (clear CLIENT, answer only PONG_REQUEST messages).
        #[arg(long)]
        sockperf: bool,
        /// Attach in the generic hook instead of the driver (faster on veth for one queue, see docs/performance.md; over veth, native
        /// replies reach the peer only if it has an XDP program attached too).
        #[arg(long)]
        generic: bool,
    },
    /// Wait until a server answers a sockperf-format request, or a DNS query (exit 1 if it does not within --timeout).
    Probe {
        /// Server address.
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Seconds to keep trying.
        #[arg(long, default_value_t = 20.0)]
        timeout: f64,
        /// Ask the first query of this DNS query file instead (a NOERROR or NXDOMAIN answer counts).
        #[arg(long)]
        dns_queries: Option<PathBuf>,
    },
    /// Compare servers in a lab as described by a plan file (see bench/plans/lab.toml); `make bench` runs this.
    Compare(compare::CompareArgs),
    /// Rewrite the marked tables in Markdown files from result files (`--check`: exit 1 if any is stale).
    Tables(tables::TablesArgs),
}

fn command_line() -> String {
    std::env::args().map(|a| if a.contains(' ') { format!("'{a}'") } else { a }).collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shunt-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let cmd = command_line();
    match cli.command {
        Command::Run { load, ping_pong, json, plot, hdr_log, quiet } => {
            let load = load.merged()?;
            let r = load::resolve(&load, ping_pong)?;
            for n in &r.notes {
                eprintln!("shunt-bench: note: {n}");
            }
            let mut g = load::open_generator(&load, &r)?;
            let out = load::run_one(&mut g, &r, r.rate, ping_pong, &cmd, !quiet)?;
            report::print_run(&out.report);
            if let Some(p) = json {
                report::write_json(&p, &out.report)?;
            }
            if let Some(p) = plot {
                load::plot_run(&p, &out.report)?;
            }
            if let Some(p) = hdr_log {
                report::write_hdr_log(&p, &out.intervals, &cmd)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { load, json, plot, quiet } => {
            let load = load.merged()?;
            let r = load::resolve(&load, false)?;
            let rates = load.rates.clone().context("--rates R1,R2,... is required for a sweep")?;
            if rates.is_empty() || rates.iter().any(|&x| x <= 0.0) {
                anyhow::bail!("--rates must be positive");
            }
            for n in &r.notes {
                eprintln!("shunt-bench: note: {n}");
            }
            let mut g = load::open_generator(&load, &r)?;
            let mut points = Vec::new();
            for &rate in &rates {
                let rate = rate.min(load::MAX_RATE);
                let out = load::run_one(&mut g, &r, rate, false, &cmd, !quiet)?;
                eprintln!("{}", report::table_row(&out.report));
                report::warn_if_behind(&out.report);
                points.push(out.report);
            }
            let s = load::summarize_sweep(points, &cmd);
            load::print_sweep(&s);
            if let Some(p) = json {
                report::write_json(&p, &s)?;
            }
            if let Some(p) = plot {
                load::plot_sweep(&p, &format!("open-loop sweep -> {}", r.target), &s)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::XdpReflector { interface, port, sockperf, generic } => {
            reflector::run(&interface, port, sockperf, generic)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { target, timeout, dns_queries } => {
            let dns = dns_queries.as_deref().map(dns::Queries::load).transpose()?;
            match load::probe(target, Duration::from_secs_f64(timeout.clamp(0.1, 120.0)), dns) {
                Ok(d) => {
                    println!("{target} answered after {:.1} s", d.as_secs_f64());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("shunt-bench probe: {e:#}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Compare(args) => compare::run(args).context("compare"),
        Command::Tables(args) => tables::run(args).context("tables"),
    }
}
