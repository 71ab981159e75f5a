//! The `shunt serve` command line, shared by the `shunt` binary and by programs that run their own handler:
//! the same flags ([`ServeArgs`]), the same exit codes, the same report on stdout and in `--report FILE`.
//!
//! ```no_run
//! use clap::Parser;
//! use shunt::{control::cli, handler::Echo};
//!
//! #[derive(Parser)]
//! struct Args {
//!     #[command(flatten)]
//!     serve: cli::ServeArgs,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     cli::run(Args::parse().serve, "my-echo", |_worker| Echo)
//! }
//! ```

use std::{path::PathBuf, process::ExitCode};

use super::{
    config::{AttachMode, Config, ConfigError, HandlerKind, Mode, PollMode, SocketIo, StampChoice},
    serve, ServeError, StartError, StartOptions, WorkerInfo,
};
use crate::{
    handler::{Echo, Handler, Sockperf},
    observe::report::Report,
};

/// Exit code for a bad config, an unusable interface/queue/core or a missing privilege.
pub const EXIT_SETUP: u8 = 2;

/// Exit code when a worker died (its handler panicked), while serving or before it was ready: the server
/// detached and stopped rather than serve on without that queue; the panic message is on stderr (and, while
/// serving, in the report as `workers[].died`). A supervisor may restart the process.
pub const EXIT_WORKER_DIED: u8 = 3;

/// `--mode`'s values: [`Mode`]'s, and `xdp`, the deprecated spelling of `in-kernel` (hidden from the help;
/// it warns at start-up and goes in the next release).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeFlag {
    /// XDP steers the ports into AF_XDP sockets served by pinned workers: the kernel's stack is skipped.
    Afxdp,
    /// Kernel UDP sockets with the I/O model `socket.io` (`--io`): the classic server, for comparison.
    Socket,
    /// The server inside the kernel: the XDP program answers the ports itself (XDP_TX). Built-in handlers
    /// only.
    #[value(name = "in-kernel")]
    InKernel,
    /// The deprecated spelling of `in-kernel`.
    #[value(hide = true)]
    Xdp,
}

impl ModeFlag {
    /// The mode this flag value selects.
    pub fn mode(self) -> Mode {
        match self {
            ModeFlag::Afxdp => Mode::Afxdp,
            ModeFlag::Socket => Mode::Socket,
            ModeFlag::InKernel | ModeFlag::Xdp => Mode::InKernel,
        }
    }
}

/// The flags of `shunt serve`: a config file and overrides of its keys.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The TOML config file (see config/example.toml). Without it, built-in defaults with the flags below
    /// (`--interface` and `--port` at least).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Override `interface`.
    #[arg(long)]
    pub interface: Option<String>,
    /// Override `ports` (repeat for several ports).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Override `workers.queues`: comma-separated queue ids.
    #[arg(long, value_delimiter = ',')]
    pub queues: Option<Vec<u32>>,
    /// Override `xdp.attach_mode`.
    #[arg(long, value_enum)]
    pub attach_mode: Option<AttachMode>,
    /// Override `mode`: afxdp (kernel bypass), socket (kernel UDP sockets, for comparison) or in-kernel (the
    /// XDP program answers itself; built-in handlers only).
    #[arg(long, value_enum)]
    pub mode: Option<ModeFlag>,
    /// Override `socket.io` (with `--mode socket`).
    #[arg(long, value_enum)]
    pub io: Option<SocketIo>,
    /// Override `workers.poll_mode`.
    #[arg(long, value_enum)]
    pub poll_mode: Option<PollMode>,
    /// Override `workers.cores`: comma-separated core ids, one per queue.
    #[arg(long, value_delimiter = ',')]
    pub cores: Option<Vec<usize>>,
    /// Write the final report as JSON to this file (overrides `report.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write an HdrHistogram interval log of in-server latency to this file (overrides `report.hdr_log`).
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,
    /// Serve Prometheus metrics and a JSON snapshot on ADDR:PORT (overrides `metrics.listen`).
    #[arg(long)]
    pub metrics: Option<String>,
    /// Do not stamp packets or record latency (overrides `latency.enabled`).
    #[arg(long)]
    pub no_latency: bool,
    /// How packets are stamped with the XDP-hook time (overrides `latency.stamp`).
    #[arg(long, value_enum)]
    pub stamp: Option<StampChoice>,
    /// Answer requests whatever their UDP checksum (overrides `packet.verify_udp_checksum = true`).
    #[arg(long)]
    pub no_checksum_check: bool,
    /// Print neither the periodic lines nor the final report on stdout (logs still go to stderr).
    #[arg(long)]
    pub quiet: bool,
    /// Print the effective configuration (the file, or the defaults, with the flags applied) as TOML and
    /// exit without serving.
    #[arg(long)]
    pub print_config: bool,
}

impl ServeArgs {
    /// The process's command line, parsed as `shunt serve`'s flags: for a program whose only arguments are
    /// these. A bad flag, `--help` or `--version` ends the process as clap does (usage on stderr, exit 2). A
    /// program with flags of its own flattens `ServeArgs` into its own `clap::Parser` instead.
    pub fn from_env() -> ServeArgs {
        #[derive(clap::Parser)]
        #[command(version, about = "A UDP server on shunt (the flags of `shunt serve`)")]
        struct Command {
            #[command(flatten)]
            serve: ServeArgs,
        }
        <Command as clap::Parser>::parse().serve
    }

    /// Loads the config file and applies the overrides, then validates the result.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::defaults_for(
                self.interface.as_deref().ok_or_else(|| ConfigError::Invalid {
                    key: "interface".into(),
                    message: "no --config file: give at least --interface IF and --port P".into(),
                })?,
                &self.ports,
            )?,
        };
        if let Some(m) = self.attach_mode {
            config.xdp.attach_mode = m;
        }
        if let Some(i) = &self.interface {
            config.interface = i.clone();
        }
        if !self.ports.is_empty() {
            config.ports = self.ports.clone();
        }
        if let Some(q) = &self.queues {
            config.workers.queues = q.clone();
        }
        if let Some(m) = self.mode {
            config.mode = m.mode();
            if m == ModeFlag::Xdp {
                config.deprecate_in_kernel_spelling("--mode");
            }
        }
        if let Some(io) = self.io {
            config.socket.io = io;
        }
        if let Some(p) = self.poll_mode {
            config.workers.poll_mode = p;
        }
        if let Some(c) = &self.cores {
            config.workers.cores = c.clone();
        }
        if let Some(r) = &self.report {
            config.report.json = Some(r.display().to_string());
        }
        if let Some(h) = &self.hdr_log {
            config.report.hdr_log = Some(h.display().to_string());
        }
        if self.no_latency {
            config.latency.enabled = false;
        }
        if let Some(stamp) = self.stamp {
            config.latency.stamp = stamp;
        }
        if self.no_checksum_check {
            config.packet.verify_udp_checksum = false;
        }
        if let Some(m) = &self.metrics {
            config.metrics.listen = Some(m.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

/// The log filter without `SHUNT_LOG`: shunt's own messages from `info` up. netlink-packet-route warns whenever the
/// kernel sends a newer attribute layout than the crate knows (on kernel 6.18: "IFLA_INET6_CONF ... expecting 236,
/// got 240", at every start); the attributes shunt reads are parsed regardless, so only its errors are shown.
const DEFAULT_LOG_FILTER: &str = "info,netlink_packet_route=error";

/// Sends `tracing` output to stderr, filtered by `SHUNT_LOG` (an `EnvFilter` directive; default `info`, the
/// netlink parser's warnings left out). Call once, first thing.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
}

/// Everything `shunt serve` does, with the caller's handler: sets up logging, loads the config with the
/// flags' overrides, serves until SIGINT / SIGTERM, prints the report (unless `--quiet`) and writes it as
/// JSON if asked. Exit codes: 0 after a clean stop; 2 ([`EXIT_SETUP`]) when the config, the machine or the
/// privileges do not allow the run (the message names the key or capability, and nothing stays attached);
/// 3 ([`EXIT_WORKER_DIED`]) when a worker died (its handler panicked): the server stops at once, detached,
/// with the panic message on stderr and the report still printed and written when it was serving; 1 when
/// the report could not be written.
pub fn run<H, F>(args: ServeArgs, handler_name: &'static str, make_handler: F) -> ExitCode
where
    H: Handler + 'static,
    F: FnMut(WorkerInfo) -> H,
{
    init_logging();
    run_with_logging(args, handler_name, make_handler)
}

/// [`run`] for a program that has set up `tracing` itself.
pub fn run_with_logging<H, F>(args: ServeArgs, handler_name: &'static str, make_handler: F) -> ExitCode
where
    H: Handler + 'static,
    F: FnMut(WorkerInfo) -> H,
{
    match effective_config(&args, None) {
        Ok(config) => serve_config(config, &args, handler_name, make_handler),
        Err(code) => code,
    }
}

/// The config the flags make (with `handler` overriding its `handler` key), or the exit code to end with: 2
/// with the error on stderr, or 0 once it was printed for `--print-config`.
fn effective_config(args: &ServeArgs, handler: Option<HandlerKind>) -> Result<Config, ExitCode> {
    let mut config = args.load_config().map_err(|e| {
        eprintln!("shunt: {e}");
        ExitCode::from(EXIT_SETUP)
    })?;
    if let Some(kind) = handler {
        config.handler = kind;
    }
    if args.print_config {
        print!("{}", config.to_toml());
        return Err(ExitCode::SUCCESS);
    }
    Ok(config)
}

/// Serves `config` with the handlers `make_handler` builds until stopped, and concludes.
fn serve_config<H, F>(config: Config, args: &ServeArgs, handler_name: &'static str, make_handler: F) -> ExitCode
where
    H: Handler + 'static,
    F: FnMut(WorkerInfo) -> H,
{
    let json_path = config.report.json.clone();
    let options = StartOptions { print_intervals: !args.quiet };
    conclude(serve(config, options, handler_name, make_handler), args.quiet, json_path)
}

/// `shunt serve` with a built-in handler (`handler`, else the config's `handler` key): on the configured
/// datapath, or inside the kernel when `mode` is `"in-kernel"` (which only the built-in handlers can do). Logging
/// must be set up.
pub fn run_builtin(args: ServeArgs, handler: Option<HandlerKind>) -> ExitCode {
    let config = match effective_config(&args, handler) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let kind = config.handler;
    if config.mode == Mode::InKernel {
        let json_path = config.report.json.clone();
        let options = StartOptions { print_intervals: !args.quiet };
        return conclude(super::serve_in_kernel(config, options, kind), args.quiet, json_path);
    }
    match kind {
        HandlerKind::Echo => serve_config(config, &args, kind.name(), |_| Echo),
        HandlerKind::Sockperf => serve_config(config, &args, kind.name(), |_| Sockperf),
    }
}

/// Prints the report (unless quiet), writes its JSON, and turns the outcome into the exit code.
fn conclude(result: Result<Report, ServeError>, quiet: bool, json_path: Option<String>) -> ExitCode {
    let (report, died) = match result {
        Ok(r) => (r, None),
        Err(ServeError::WorkerDied { death, report }) => (*report, Some(death)),
        Err(e @ ServeError::Start(StartError::WorkerDied { .. })) => {
            eprintln!("shunt: {e}");
            return ExitCode::from(EXIT_WORKER_DIED);
        }
        Err(e @ ServeError::Start(_)) => {
            eprintln!("shunt: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
        Err(e) => {
            eprintln!("shunt: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !quiet {
        print!("{}", report.text());
    }
    if let Some(path) = json_path {
        let written = serde_json::to_string_pretty(&report)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json + "\n"));
        if let Err(e) = written {
            eprintln!("shunt: writing the report to {path}: {e}");
            if died.is_none() {
                return ExitCode::FAILURE;
            }
        }
    }
    match died {
        Some(death) => {
            eprintln!("shunt: {death}; the server was detached and stopped (exit code {EXIT_WORKER_DIED})");
            ExitCode::from(EXIT_WORKER_DIED)
        }
        None => ExitCode::SUCCESS,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn load(flags: &[&str]) -> Config {
        let args = Command::try_parse_from([&["shunt", "--interface", "eth0", "--port", "9000"], flags].concat())
            .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        args.serve.load_config().unwrap_or_else(|e| panic!("{flags:?}: {e}"))
    }

    #[test]
    fn the_old_in_kernel_mode_flag_still_works_with_a_deprecation() {
        let old = load(&["--mode", "xdp"]);
        assert_eq!(old.mode, Mode::InKernel);
        assert_eq!(old.deprecated.len(), 1, "{:?}", old.deprecated);
        assert!(old.deprecated[0].contains("--mode \"in-kernel\""), "{}", old.deprecated[0]);
        let new = load(&["--mode", "in-kernel"]);
        assert_eq!(new.mode, Mode::InKernel);
        assert!(new.deprecated.is_empty(), "{:?}", new.deprecated);
        assert!(new.to_toml().contains("mode = \"in-kernel\""), "{}", new.to_toml());
        assert_eq!(load(&["--mode", "socket"]).mode, Mode::Socket);
    }
}
