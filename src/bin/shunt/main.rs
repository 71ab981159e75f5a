//! The `shunt` command line: `serve` with a built-in handler, `check-config`, and `stats` (a live table
//! read from a running server's JSON endpoint).

mod stats;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use shunt::control::{
    cli::{self, ServeArgs, EXIT_SETUP},
    config::{Config, HandlerKind},
    host,
};

#[derive(Parser)]
#[command(
    name = "shunt",
    version,
    about = "Kernel-bypass UDP server: XDP steers the configured UDP ports into \
AF_XDP sockets served by pinned workers; everything else goes to the kernel.",
    after_help = "Your own handler: a crate that depends on shunt implements shunt::Handler and calls \
shunt::control::cli::run(args, name, |worker| MyHandler::new()), which takes exactly the flags of \
`shunt serve` (see examples/sntp.rs and docs/handlers.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a built-in handler until SIGINT or SIGTERM, then detach and print the final report.
    ///
    /// Exit codes: 0 after a clean stop (SIGINT/SIGTERM); 2 when the config, the machine or the privileges
    /// do not allow the run (the message names the key or capability; nothing attached); 3 when a worker died
    /// (its handler panicked): the server does not restart it, but detaches and stops at once, prints the
    /// panic message on stderr and, when it died while serving, the report as usual (the metrics endpoint's
    /// /ready answers 503 from the moment of the death; a worker that dies before start-up is complete gets
    /// no report); 1 when the report could not be written.
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Override `handler`.
        #[arg(long, value_enum)]
        handler: Option<HandlerKind>,
    },
    /// Validate a config file without touching the system (exit 0 if valid, 2 if not). Deprecated spellings
    /// (`mode = "xdp"`) are valid but get a warning on stderr.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Probe what this kernel (and an interface) offer shunt: one line per feature, with what shunt uses
    /// without it. Exit 0 when shunt can serve on AF_XDP here, 2 naming the missing required feature otherwise.
    /// Needs the privileges the server has (CAP_BPF, CAP_NET_RAW, ...): without them answers are "unknown".
    CheckHost {
        /// Also probe this interface (native XDP, zero-copy, RX timestamp metadata), in this network namespace.
        #[arg(long)]
        interface: Option<String>,
        /// Print the findings as JSON (the `host` object of a report) instead of lines.
        #[arg(long)]
        json: bool,
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
        /// Print one snapshot of the endpoint's /stats.json (every counter of every worker, busy time included)
        /// as one line of JSON and exit, instead of tables: for scripts and benchmarks.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                for message in &config.deprecated {
                    eprintln!("shunt: warning: {}: {message}", file.display());
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shunt: {e}");
                ExitCode::from(EXIT_SETUP)
            }
        },
        Command::Serve { args, handler } => {
            cli::init_logging();
            cli::run_builtin(args, handler)
        }
        Command::CheckHost { interface, json } => check_host(interface.as_deref(), json),
        Command::Stats { metrics, json: true, .. } => match stats::fetch(metrics, Duration::from_secs(2)) {
            Ok(snapshot) => match serde_json::to_string(&snapshot) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("shunt stats: {metrics}: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("shunt stats: {metrics}: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Stats { metrics, interval, count, json: false } => {
            match stats::watch(metrics, Duration::from_secs_f64(interval.max(0.05)), count) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shunt stats: {metrics}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `shunt check-host`: the probes, the choices `shunt serve` would make with the defaults, and the verdict.
fn check_host(interface: Option<&str>, json: bool) -> ExitCode {
    let mut report = host::probe(interface, true);
    let stamp = host::auto_stamp(&report);
    report.choices.stamp = Some(stamp.0.name().to_string());
    report.choices.stamp_reason = Some(stamp.1);
    if interface.is_some() {
        let native = report.findings.iter().find(|f| f.feature.starts_with("native XDP")).and_then(|f| f.available);
        let zc = report.findings.iter().find(|f| f.feature.starts_with("AF_XDP zero-copy")).and_then(|f| f.available);
        report.choices.attach_mode = Some(
            match native {
                Some(true) => "native",
                Some(false) => "generic (set xdp.attach_mode = \"generic\" or \"auto\")",
                None => "native if the driver has it (xdp.attach_mode = \"auto\" falls back to generic)",
            }
            .to_string(),
        );
        report.choices.bind_mode = Some(
            match zc {
                Some(true) => "zerocopy",
                Some(false) => "copy",
                None => "zerocopy if the driver has it (xdp.bind_mode = \"auto\" falls back to copy)",
            }
            .to_string(),
        );
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("shunt check-host: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.text());
    }
    match report.missing_required() {
        Some(missing) => {
            eprintln!(
                "shunt check-host: this host lacks {}, which {} needs: shunt cannot serve on AF_XDP here",
                missing.feature, missing.needed_by
            );
            ExitCode::from(EXIT_SETUP)
        }
        None => {
            if !json {
                println!("host OK: shunt can serve on AF_XDP here");
            }
            ExitCode::SUCCESS
        }
    }
}
