//! The control plane: the config file ([`config`]), wiring a run together and tearing it down ([`server`]),
//! the `shunt serve` command line shared with programs that bring their own handler ([`cli`]), and
//! [`serve`], the one call that runs a whole server with any [`Handler`].

pub mod addresses;
pub mod cli;
pub mod config;
pub mod host;
pub mod server;

use std::{
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use crate::{handler::Handler, observe::report::Report};
use config::Config;
pub use server::{RunningServer, StartError, StartOptions, WorkerInfo};

/// Why [`serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The server could not start (config, privileges, interface, XDP, sockets); nothing stays attached.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The SIGINT / SIGTERM handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs the server inside the kernel (`mode = "xdp"`) with the built-in handler `kind` until SIGINT or
/// SIGTERM, then detaches it and returns the final report.
pub fn serve_in_kernel(config: Config, options: StartOptions, kind: config::HandlerKind) -> Result<Report, ServeError> {
    let signalled = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, signalled.clone()).map_err(ServeError::Signals)?;
    }
    let server = RunningServer::start_in_kernel(config, options, kind)?;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify READY=1: {e}");
    }
    while !signalled.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("stopping");
    Ok(server.stop())
}

/// Runs a server with `make_handler`'s handlers (one per worker) until SIGINT or SIGTERM, then detaches the
/// XDP program, stops the workers and returns the final report.
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
    // systemd Type=notify: ready now that the program is attached and every socket is bound (a no-op when
    // NOTIFY_SOCKET is unset, i.e. not started by systemd).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!("sd_notify READY=1: {e}");
    }
    while !signalled.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("stopping");
    Ok(server.stop())
}
