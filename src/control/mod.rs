//! The control plane: the config file ([`config`]), wiring a run together and tearing it down ([`server`]),
//! the `shunt serve` command line shared with programs that bring their own handler ([`cli`]), and
//! [`serve`], the one call that runs a whole server with any [`Handler`].

pub mod addresses;
pub mod cli;
pub mod config;
pub mod host;
pub mod server;

use std::sync::{atomic::AtomicBool, Arc};

use crate::{handler::Handler, observe::report::Report};
use config::Config;
pub use server::{RunningServer, StartError, StartOptions, Wake, WorkerDeath, WorkerInfo};

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server could not start (config, privileges, interface, XDP, sockets); nothing stays attached.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The SIGINT / SIGTERM handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A worker died (panicked) while serving: the server was detached and stopped, not restarted.
    #[error("{death}; the server was stopped (detached, workers joined)")]
    WorkerDied {
        /// Which worker, and its panic message.
        death: WorkerDeath,
        /// The final report, taken as the server stopped.
        report: Box<Report>,
    },
}

/// Waits for SIGINT / SIGTERM (`signalled`) or a worker's death, then stops `server`: a clean report, or
/// [`ServeError::WorkerDied`] with the report.
fn supervise(server: RunningServer, signalled: &AtomicBool) -> Result<Report, ServeError> {
    // systemd Type=notify: ready now that the program is attached and every socket is bound (a no-op when
    // NOTIFY_SOCKET is unset, i.e. not started by systemd).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify READY=1: {e}");
    }
    match server.wait(signalled) {
        Wake::Asked => {
            tracing::info!("stopping");
            Ok(server.stop())
        }
        Wake::WorkerDied(death) => {
            tracing::error!(
                queue = death.queue,
                "{death}: detaching and stopping the server (workers are not restarted)"
            );
            let report = server.stop();
            Err(ServeError::WorkerDied { death, report: Box::new(report) })
        }
    }
}

/// Runs the server inside the kernel (`mode = "in-kernel"`) with the built-in handler `kind` until SIGINT or
/// SIGTERM, then detaches it and returns the final report. (No workers here, so none can die.)
pub fn serve_in_kernel(config: Config, options: StartOptions, kind: config::HandlerKind) -> Result<Report, ServeError> {
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, signalled.clone()).map_err(ServeError::Signals)?;
    }
    let server = RunningServer::start_in_kernel(config, options, kind)?;
    supervise(server, &signalled)
}

/// Runs a server with `make_handler`'s handlers (one per worker) until SIGINT or SIGTERM, then detaches the
/// XDP program, stops the workers and returns the final report.
///
/// A worker that panics stops the whole server (it is not restarted): the metrics endpoint's `/ready` turns
/// 503 at once, then the program is detached and the workers joined, and the result is
/// [`ServeError::WorkerDied`] carrying the panic message and the final report.
///
/// `handler_name` names the handler in logs and reports. The config's `handler` key is not used: the
/// factory decides. Start-up errors name the config key or capability at fault.
pub fn serve<H, F>(
    config: Config,
    options: StartOptions,
    handler_name: &'static str,
    make_handler: F,
) -> Result<Report, ServeError>
where
    H: Handler + 'static,
    F: FnMut(WorkerInfo) -> H,
{
    // Installed before start-up, so a signal that arrives while the workers start is not lost.
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, signalled.clone()).map_err(ServeError::Signals)?;
    }
    let server = RunningServer::start(config, options, handler_name, make_handler)?;
    supervise(server, &signalled)
}
