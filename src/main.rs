//! The `shunt` command line.

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shunt::{
    config::{AttachMode, Config},
    handler::HandlerKind,
    server::{RunningServer, StartOptions},
};

/// Exit code for a bad config, an unusable interface/queue/core or a missing privilege.
const EXIT_SETUP: u8 = 2;

#[derive(Parser)]
#[command(
    name = "shunt",
    version,
    about = "Kernel-bypass UDP server: XDP steers the configured UDP ports into \
AF_XDP sockets served by pinned workers; everything else goes to the kernel."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT or SIGTERM, then detach and print the final report.
    Serve(ServeArgs),
    /// Validate a config file without touching the system (exit 0 if valid, 2 if not).
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Poll a running server's metrics endpoint and print a live table (per queue pps, drops, latency).
    Stats {
        /// The endpoint's ADDR:PORT (the server's `metrics.listen` / --metrics).
        #[arg(long, default_value = "127.0.0.1:9464")]
        metrics: std::net::SocketAddr,
        /// Seconds between tables.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Tables to print before exiting (0: until the server goes away).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The TOML config file (see config/example.toml).
    #[arg(long, short)]
    config: PathBuf,
    /// Override `interface`.
    #[arg(long)]
    interface: Option<String>,
    /// Override `ports` (repeat for several ports).
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Override `handler`: echo or sockperf.
    #[arg(long)]
    handler: Option<HandlerKind>,
    /// Override `workers.queues`: comma-separated queue ids.
    #[arg(long, value_delimiter = ',')]
    queues: Option<Vec<u32>>,
    /// Override `xdp.attach_mode`: native, generic or auto.
    #[arg(long)]
    attach_mode: Option<AttachModeArg>,
    /// Override `workers.cores`: comma-separated core ids, one per queue.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Write the final report as JSON to this file (overrides `report.json`).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write an HdrHistogram interval log of in-server latency to this file (overrides `report.hdr_log`).
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR:PORT (overrides `metrics.listen`).
    #[arg(long)]
    metrics: Option<String>,
    /// Do not stamp packets or record latency (overrides `latency.enabled`).
    #[arg(long)]
    no_latency: bool,
    /// Print neither the periodic lines nor the final report on stdout (logs still go to stderr).
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shunt: {e}");
                ExitCode::from(EXIT_SETUP)
            }
        },
        Command::Serve(args) => serve(args),
        Command::Stats { metrics, interval, count } => {
            match shunt::stats_client::watch(metrics, Duration::from_secs_f64(interval.max(0.05)), count) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shunt stats: {metrics}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `--attach-mode` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AttachModeArg {
    Native,
    Generic,
    Auto,
}

fn apply_overrides(config: &mut Config, args: &ServeArgs) {
    if let Some(m) = args.attach_mode {
        config.xdp.attach_mode = match m {
            AttachModeArg::Native => AttachMode::Native,
            AttachModeArg::Generic => AttachMode::Generic,
            AttachModeArg::Auto => AttachMode::Auto,
        };
    }
    if let Some(i) = &args.interface {
        config.interface = i.clone();
    }
    if !args.ports.is_empty() {
        config.ports = args.ports.clone();
    }
    if let Some(h) = args.handler {
        config.handler = h;
    }
    if let Some(q) = &args.queues {
        config.workers.queues = q.clone();
    }
    if let Some(c) = &args.cores {
        config.workers.cores = c.clone();
    }
    if let Some(r) = &args.report {
        config.report.json = Some(r.display().to_string());
    }
    if let Some(h) = &args.hdr_log {
        config.report.hdr_log = Some(h.display().to_string());
    }
    if args.no_latency {
        config.latency.enabled = false;
    }
    if let Some(m) = &args.metrics {
        config.metrics.listen = Some(m.clone());
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shunt: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    apply_overrides(&mut config, &args);
    let json_path = config.report.json.clone();
    let server = match RunningServer::start(config, StartOptions { print_intervals: !args.quiet }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shunt: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    match run_until_signalled(server, args.quiet, json_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shunt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_until_signalled(server: RunningServer, quiet: bool, json_path: Option<String>) -> anyhow::Result<()> {
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, signalled.clone()).context("installing signal handlers")?;
    }
    while !signalled.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping");
    let report = server.stop();
    if !quiet {
        print!("{}", report.text());
    }
    if let Some(path) = json_path {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, json + "\n").with_context(|| format!("writing the report to {path}"))?;
    }
    Ok(())
}
