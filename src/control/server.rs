//! Wiring a run together: check the machine against the config, load and fill the XDP program, open one
//! socket per queue, attach, start pinned workers; and on stop, detach, join and report.
//!
//! Start-up is ordered so that a failure leaves nothing behind: everything that can be checked is checked
//! before the program is attached, and the attachment is a bpf_link owned by [`RunningServer`] (and by the
//! process), so an error after it, or a crash, detaches it.
//!
//! Workers are supervised: a worker whose handler (or loop) panics is caught at the top of its thread, marks
//! itself not running (the metrics endpoint's `/ready` answers 503 from that moment), records a
//! [`WorkerDeath`] and wakes [`RunningServer::wait`]. The policy is *stop, not restart*: a handler that
//! panicked once may hold broken state, and a queue without its worker silently falls back to the kernel
//! stack, so [`crate::control::serve`] detaches and stops the whole server and `shunt serve` exits with
//! [`EXIT_WORKER_DIED`](crate::control::cli::EXIT_WORKER_DIED); the supervisor (systemd, the fleet) restarts
//! the process.

use std::{
    any::Any,
    collections::BTreeSet,
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::config::{self, AttachMode, Config, Mode, SocketIo};
use crate::{
    datapath::{
        afxdp::{
            nexthop::{Resolver, ResolverParams},
            BindMode, DatapathError, NextHop, PollMode, QueueSocket, SendOptions, SocketOptions, Worker,
        },
        counters::{WorkerShared, WorkerStats},
        histograms::{self, LatencySet},
        socket::{KernelSocketError, KernelSocketOptions, KernelWorker},
        WorkerExit,
    },
    handler::Handler,
    in_kernel::InKernelServer,
    observe::host::HostReport,
    observe::{
        cpu::{self, CpuReport, SystemCpu, WorkerCpu},
        latency::LatencyReport,
        metrics::{MetricsServer, MetricsSources},
        report::{Report, WorkerReport},
        reporter::{self, ReporterExit, ReporterOptions, WatchedWorker},
        LatencySnapshot,
    },
    steer::{ProgramVariant, StampMethod, XdpCounters, XdpError, XdpLink, XdpProgram},
    sys,
};

fn latency_clock(enabled: bool, program: Option<(ProgramVariant, StampMethod)>) -> String {
    if !enabled {
        return "not measured (latency.enabled = false)".to_string();
    }
    let base = match program.map(|p| p.1) {
        Some(StampMethod::None) => {
            return "clock_gettime(CLOCK_MONOTONIC) in the worker; service only: ring_dwell and total are not measured \
                    on this host (no XDP-hook stamp, see host.choices.stamp_reason)"
                .to_string()
        }
        Some(StampMethod::Head) => {
            "CLOCK_MONOTONIC: bpf_ktime_get_ns() at the XDP hook, prepended to the packet (bpf_xdp_adjust_head), \
             clock_gettime() in the worker"
        }
        _ => "CLOCK_MONOTONIC: bpf_ktime_get_ns() at the XDP hook, clock_gettime() in the worker",
    };
    match program.map(|p| p.0) {
        None => "kernel software RX timestamps (SO_TIMESTAMPING, CLOCK_REALTIME, moved onto CLOCK_MONOTONIC once \
                 per batch) and clock_gettime() in the worker"
            .to_string(),
        Some(ProgramVariant::Plain) => format!("{base}; no NIC hardware timestamps (plain program)"),
        Some(ProgramVariant::DeviceBound { .. }) => format!(
            "{base}; NIC RX hardware timestamps requested (bpf_xdp_metadata_rx_timestamp), nic_to_hook compares \
             them with CLOCK_TAI at the hook"
        ),
    }
}

/// Histogram sets waiting for each worker besides the one it records into.
const SPARE_LATENCY_SETS: usize = 2;

/// The longest start-up waits for every worker to report ready: a backstop (workers report within
/// milliseconds; the kernel-socket datapath's wait for stamped loopback datagrams is bounded well below it).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How often [`RunningServer::wait`] looks at the caller's stop flag (a worker's death wakes it at once).
const WAIT_TICK: Duration = Duration::from_millis(20);

/// A worker that died: its thread panicked (in the handler, or in the loop around it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDeath {
    /// The NIC receive queue it served.
    pub queue: u32,
    /// The panic message (the payload of `panic!`, when it is a string).
    pub message: String,
}

impl std::fmt::Display for WorkerDeath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the worker of queue {} panicked: {}", self.queue, self.message)
    }
}

/// Why [`RunningServer::wait`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The caller's flag was set (e.g. by SIGINT / SIGTERM).
    Asked,
    /// A worker died; the others still run until [`RunningServer::stop`].
    WorkerDied(WorkerDeath),
}

/// The text of a panic payload: `panic!("...")` carries a `&str` or a `String`.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic payload that is not a string)".to_string())
}

/// What a handler factory is told about the worker it builds a handler for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's position (0-based) in `workers.queues`.
    pub index: usize,
    /// The NIC receive queue it serves.
    pub queue: u32,
    /// The core it is pinned to.
    pub core: usize,
}

/// Run-time choices that are not part of the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Print one line per report interval on stdout.
    pub print_intervals: bool,
}

/// Why the server could not start. Every variant names the config key or capability at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// The process lacks a capability it needs.
    #[error("missing capability {capability}: {why} (run as root or grant it)")]
    Privilege {
        /// e.g. `CAP_NET_RAW`.
        capability: &'static str,
        /// What it is needed for.
        why: &'static str,
    },
    /// The configured interface does not exist in this network namespace.
    #[error("config key `interface`: no interface named {0:?} in this network namespace")]
    NoInterface(String),
    /// The UMEMs cannot be locked in memory.
    #[error(
        "missing capability CAP_IPC_LOCK: the UMEMs need {umem_bytes} bytes of locked memory and RLIMIT_MEMLOCK \
         allows {limit} (grant CAP_IPC_LOCK, raise the limit, e.g. LimitMEMLOCK=infinity, or shrink umem.frame_count)"
    )]
    MemLock {
        /// Bytes all UMEMs need.
        umem_bytes: u64,
        /// RLIMIT_MEMLOCK's soft limit.
        limit: u64,
    },
    /// A configured queue does not exist on the interface.
    #[error("config key `{key}`: {interface} has no receive queue {queue} (it has {available})")]
    NoQueue {
        /// e.g. `workers.queues[1]`.
        key: String,
        /// Interface name.
        interface: String,
        /// The queue asked for.
        queue: u32,
        /// How many the interface has.
        available: usize,
    },
    /// A configured core does not exist or may not be used by this process.
    #[error("config key `{key}`: core {core} is not available to this process (available: {available})")]
    NoCore {
        /// e.g. `workers.cores[0]`.
        key: String,
        /// The core asked for.
        core: usize,
        /// The cores that are.
        available: String,
    },
    /// Pinning a worker failed.
    #[error("config key `{key}`: could not pin the worker to core {core}")]
    Pin {
        /// e.g. `workers.cores[0]`.
        key: String,
        /// The core.
        core: usize,
    },
    /// The XDP program could not be loaded or attached.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// A socket could not be opened.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The metrics endpoint could not be served.
    #[error("{0}")]
    Metrics(String),
    /// A kernel socket could not be opened.
    #[error("mode \"socket\": {0}")]
    KernelSocket(#[from] KernelSocketError),
    /// `mode = "in-kernel"` was asked of a custom handler.
    #[error(
        "config key `mode`: \"xdp\" answers inside the kernel with the built-in echo or sockperf handler, written \
         in C; the custom handler {0} cannot run there (use mode \"afxdp\")"
    )]
    InKernelCustomHandler(&'static str),
    /// The source limits could not be set up.
    #[error("config table `[limits]`: {0}")]
    Limits(String),
    /// A configured feature is not offered by this host (the message names the key and the kernel feature).
    #[error(transparent)]
    Unavailable(#[from] super::host::Unavailable),
    /// A worker died before it reported ready: its handler factory or its thread panicked, or its thread
    /// ended without a word. Nothing stays attached.
    #[error("the worker of queue {queue} died during start-up: {message}")]
    WorkerDied {
        /// The queue it was to serve.
        queue: u32,
        /// The panic message, or what is known.
        message: String,
    },
    /// Not every worker reported ready within the start-up deadline.
    #[error("the workers of queues {queues:?} did not start serving within {waited:?}")]
    NotReady {
        /// The queues whose workers did not report.
        queues: Vec<u32>,
        /// How long start-up waited.
        waited: Duration,
    },
    /// The configured poll mode cannot work with how the socket was bound.
    #[error("config key `workers.poll_mode`: {0}")]
    PollMode(String),
    /// The served destination addresses could not be set up.
    #[error(transparent)]
    Addresses(#[from] super::addresses::AddressError),
    /// A report file could not be created.
    #[error("config key `{key}`: {path}: {source}")]
    ReportFile {
        /// e.g. `report.hdr_log`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

struct WorkerSlot {
    queue: u32,
    core: usize,
    bind_mode: Option<BindMode>,
    shared: Arc<WorkerShared>,
    /// The loop's exit, and the panic message if it died.
    thread: JoinHandle<(WorkerExit, Option<String>)>,
}

/// A worker's word at start-up: its queue, and whether it is running.
type ReadyMessage = (u32, Result<(), StartError>);

/// A server whose workers are running.
///
/// Stop it with [`stop`](Self::stop), which detaches the XDP program first (the kernel answers the ports
/// from then on), then stops and joins the workers and returns the final report. Dropped without `stop`
/// (an error path, a library user's early return or panic), it does the same and discards the report: no
/// worker thread is left spinning and nothing stays attached.
///
/// Supervision: a worker that panics is not restarted. It is caught at the top of its thread, the metrics
/// endpoint's `/ready` turns 503 at once (`shunt_ready 0`), and [`wait`](Self::wait) returns
/// [`Wake::WorkerDied`]; the caller is expected to `stop` the whole server then ([`crate::control::serve`]
/// does, and `shunt serve` exits with code 3). Until then the dead worker's queue falls back to the kernel
/// stack (its socket is closed) while the others still serve.
pub struct RunningServer {
    config: Config,
    handler_name: &'static str,
    /// The steering program (AF_XDP mode only).
    program: Option<XdpProgram>,
    /// The in-kernel server (`mode = "in-kernel"` only).
    in_kernel: Option<InKernelServer>,
    link: Option<XdpLink>,
    workers: Vec<WorkerSlot>,
    stop: Arc<AtomicBool>,
    started: Instant,
    reporter: Option<JoinHandle<ReporterExit>>,
    reporter_finish: Arc<AtomicBool>,
    latency: Arc<Mutex<LatencySnapshot>>,
    metrics: Option<MetricsServer>,
    /// /proc/stat when the workers were ready.
    cpu_start: SystemCpu,
    /// What the host offers and what this run chose.
    host: HostReport,
    /// True from ready until stop begins (the metrics endpoint's readiness).
    serving: Arc<AtomicBool>,
    /// Workers report their death here; [`Self::wait`] listens.
    deaths_tx: crossbeam_channel::Sender<WorkerDeath>,
    deaths_rx: crossbeam_channel::Receiver<WorkerDeath>,
    /// Every death so far, in order.
    deaths: Arc<Mutex<Vec<WorkerDeath>>>,
    /// Keeps the served destination addresses in step with the interface's (`xdp.addresses` absent).
    addresses: Option<super::addresses::AddressFollower>,
    /// Follows the kernel's routing and neighbour tables for the workers' next-hop caches (AF_XDP sends);
    /// stopped and joined when the server is dropped, after the workers.
    next_hops: Option<Resolver>,
}

/// Capabilities needed, by bit number in CapEff.
const CAPABILITIES: [(u32, &str, &str); 4] = [
    (12, "CAP_NET_ADMIN", "needed to attach the XDP program"),
    (13, "CAP_NET_RAW", "needed to open AF_XDP sockets"),
    (39, "CAP_BPF", "needed to load the XDP program and its maps"),
    (38, "CAP_PERFMON", "needed for the verifier to accept the XDP program's packet pointer arithmetic"),
];
const CAP_SYS_ADMIN: u32 = 21;
const CAP_IPC_LOCK: u32 = 14;

/// Checks the capabilities shunt needs, and that the UMEMs can be locked in memory: with CAP_IPC_LOCK, or
/// within RLIMIT_MEMLOCK (which the kernel charges UMEMs to otherwise). `umem_bytes` is all queues' UMEMs.
fn check_privileges(umem_bytes: u64) -> Result<(), StartError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Ok(()); // cannot tell; the kernel will say EPERM
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    for (bit, capability, why) in CAPABILITIES {
        // CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (and stands in for them on kernels that predate them).
        let covered = has(bit) || ((bit == 38 || bit == 39) && has(CAP_SYS_ADMIN));
        if !covered {
            return Err(StartError::Privilege { capability, why });
        }
    }
    if !has(CAP_IPC_LOCK) {
        let limit = sys::memlock_limit().unwrap_or(Some(0));
        if limit.is_some_and(|bytes| bytes < umem_bytes) {
            return Err(StartError::MemLock { umem_bytes, limit: limit.unwrap_or(0) });
        }
    }
    Ok(())
}

/// `mode = "socket"`: binding to the interface (SO_BINDTODEVICE) needs CAP_NET_RAW, and ports below 1024
/// CAP_NET_BIND_SERVICE.
fn check_socket_privileges(ports: &[u16]) -> Result<(), StartError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) =
        status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Ok(()); // cannot tell; the kernel will say EPERM
    };
    if eff & (1 << 13) == 0 {
        return Err(StartError::Privilege {
            capability: "CAP_NET_RAW",
            why: "needed to bind the sockets to the interface (SO_BINDTODEVICE)",
        });
    }
    if ports.iter().any(|&p| p < 1024) && eff & (1 << 10) == 0 {
        return Err(StartError::Privilege {
            capability: "CAP_NET_BIND_SERVICE",
            why: "needed to bind a UDP port below 1024",
        });
    }
    Ok(())
}

/// `[packet]`'s options with the interface's MTU, read now: replies longer than it are dropped and counted.
/// Unreadable (a driver without SIOCGIFMTU), the default (1500) stays, and a warning says so.
/// The configured ports followed by the handler's owned ports that are not among them.
fn served_ports(configured: &[u16], owned: Option<&[u16]>) -> Vec<u16> {
    let mut ports = configured.to_vec();
    for &p in owned.unwrap_or_default() {
        if p != 0 && !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

fn respond_options(config: &Config) -> crate::handler::RespondOptions {
    let options = config.packet.respond_options();
    match sys::interface_mtu(&config.interface) {
        Ok(mtu) => options.with_mtu(mtu as usize),
        Err(e) => {
            tracing::warn!(interface = %config.interface, mtu = options.mtu, "cannot read the MTU ({e}); assuming");
            options
        }
    }
}

fn check_machine(config: &Config) -> Result<u32, StartError> {
    let ifindex =
        sys::interface_index(&config.interface).map_err(|_| StartError::NoInterface(config.interface.clone()))?;
    // A driver without ETHTOOL_GCHANNELS gets no check here; binding to a missing queue then fails, naming it.
    if let Ok(available) = sys::rx_queue_count(&config.interface) {
        let available = available as usize;
        for (i, &queue) in config.workers.queues.iter().enumerate() {
            if queue as usize >= available {
                return Err(StartError::NoQueue {
                    key: format!("workers.queues[{i}]"),
                    interface: config.interface.clone(),
                    queue,
                    available,
                });
            }
        }
    }
    let cores: BTreeSet<usize> = sys::allowed_cores().unwrap_or_default().into_iter().collect();
    for (i, &core) in config.workers.cores.iter().enumerate() {
        if !cores.contains(&core) {
            let available = cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
            return Err(StartError::NoCore { key: format!("workers.cores[{i}]"), core, available });
        }
    }
    Ok(ifindex)
}

/// Warns about the interface's receive queues that no worker serves: the XDP program passes what arrives
/// there to the kernel stack (`XDP_PASS`, no socket in the map), so the ports are answered by whatever listens
/// in the kernel, or refused, on those queues.
fn warn_unserved_queues(config: &Config) {
    let Ok(count) = sys::rx_queue_count(&config.interface) else { return };
    let unserved: Vec<u32> = (0..count).filter(|q| !config.workers.queues.contains(q)).collect();
    if !unserved.is_empty() {
        tracing::warn!(
            interface = %config.interface,
            ?unserved,
            "{} has {count} receive queues and workers serve only {:?}: the ports' packets that arrive on queues \
             {unserved:?} go to the kernel stack, not to shunt (add them to workers.queues, or steer the ports' \
             flows to served queues, e.g. with shunt-tune-nic)",
            config.interface,
            config.workers.queues
        );
    }
}

/// Calls the handler factory for one worker, turning a panic into a start-up error that names the queue.
fn make_handler_for<H, F>(make_handler: &mut F, info: WorkerInfo) -> Result<H, StartError>
where
    F: FnMut(WorkerInfo) -> H,
{
    catch_unwind(AssertUnwindSafe(|| make_handler(info))).map_err(|payload| StartError::WorkerDied {
        queue: info.queue,
        message: format!("its handler factory panicked: {}", panic_message(&*payload)),
    })
}

/// Loads the steering program, stamping by `stamp`: bound to the device, asking it for RX hardware timestamps,
/// when packets are stamped in native mode and the kernel has the kfunc (device-bound programs cannot run in
/// the generic hook); the plain one otherwise, or when the device-bound load is refused.
fn load_program(
    config: &Config,
    ifindex: u32,
    stamp: StampMethod,
    host: &HostReport,
) -> Result<XdpProgram, StartError> {
    let kfunc = host.finding(super::host::RX_TIMESTAMP_KFUNC).and_then(|f| f.available) != Some(false);
    if stamp.stamps() && kfunc && config.xdp.attach_mode == AttachMode::Native {
        match XdpProgram::load_with(ProgramVariant::DeviceBound { ifindex }, stamp, config.limits.table_size) {
            Ok(p) => return Ok(p),
            Err(e) => tracing::info!("no device-bound program ({e}); RX hardware timestamps will not be read"),
        }
    }
    Ok(XdpProgram::load_with(ProgramVariant::Plain, stamp, config.limits.table_size)?)
}

impl RunningServer {
    /// A server with no workers yet, serving through `program` and `link` (none for kernel sockets).
    fn new(config: Config, handler_name: &'static str, program: Option<XdpProgram>, link: Option<XdpLink>) -> Self {
        let (deaths_tx, deaths_rx) = crossbeam_channel::unbounded();
        RunningServer {
            config,
            handler_name,
            program,
            in_kernel: None,
            link,
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            reporter: None,
            reporter_finish: Arc::new(AtomicBool::new(false)),
            latency: Arc::new(Mutex::new(LatencySnapshot::default())),
            metrics: None,
            cpu_start: SystemCpu::default(),
            host: HostReport::default(),
            serving: Arc::new(AtomicBool::new(false)),
            deaths_tx,
            deaths_rx,
            deaths: Arc::new(Mutex::new(Vec::new())),
            addresses: None,
            next_hops: None,
        }
    }

    /// Checks, loads, binds, attaches and starts one worker per queue, each with its own handler from
    /// `make_handler` (called once per worker, in queue order, on this thread). `handler_name` names it in
    /// logs and reports. On error nothing stays attached.
    pub fn start<H, F>(
        config: Config,
        options: StartOptions,
        handler_name: &'static str,
        mut make_handler: F,
    ) -> Result<RunningServer, StartError>
    where
        H: Handler + 'static,
        F: FnMut(WorkerInfo) -> H,
    {
        config.validate()?;
        config.warn_deprecated();
        match config.mode {
            Mode::Socket => return Self::start_sockets(config, options, handler_name, make_handler),
            Mode::InKernel => return Err(StartError::InKernelCustomHandler(handler_name)),
            Mode::Afxdp => {}
        }
        let umem_bytes =
            config.workers.queues.len() as u64 * u64::from(config.umem.frame_count) * u64::from(config.umem.frame_size);
        // Raised first, so that a process allowed to raise it (CAP_SYS_RESOURCE) needs no CAP_IPC_LOCK.
        if let Err(e) = sys::raise_memlock_limit() {
            tracing::debug!("could not raise RLIMIT_MEMLOCK: {e}");
        }
        check_privileges(umem_bytes)?;
        let ifindex = check_machine(&config)?;
        warn_unserved_queues(&config);

        if config.xdp.attach_mode == AttachMode::Generic && config.workers.queues.len() > 1 {
            tracing::warn!(
                "xdp.attach_mode = \"generic\" with {} queues: the generic hook reports the RX queue the driver \
                 recorded, which on veth (and drivers without skb RX-queue recording) is always 0, so the other \
                 workers may stay idle; use \"native\" to spread traffic",
                config.workers.queues.len()
            );
        }
        let mut host = super::host::probe(Some(&config.interface), false);
        if let Some(missing) = host.missing_required() {
            return Err(StartError::Unavailable(super::host::Unavailable {
                key: "mode",
                message: format!(
                    "\"afxdp\" needs {} ({}), which this host lacks (`shunt check-host` lists what it offers)",
                    missing.feature, missing.needed_by
                ),
            }));
        }
        let (stamp, stamp_reason) = super::host::choose_stamp(&config, &host)?;
        tracing::info!(stamp = stamp.name(), "latency stamp: {stamp_reason}");
        let program = load_program(&config, ifindex, stamp, &host)?;
        host.choices.stamp = Some(stamp.name().to_string());
        host.choices.stamp_reason = Some(stamp_reason);
        host.choices.hardware_timestamps = Some(matches!(program.variant, ProgramVariant::DeviceBound { .. }));
        host.choices.attach_mode = Some(crate::steer::AttachMode::from(config.xdp.attach_mode).name().to_string());
        host.choices.poll_mode = Some(config.workers.poll_mode.name().to_string());
        let measure = config.latency.enabled;
        let own =
            sys::host_addresses().map_err(|e| StartError::Limits(format!("listing this host's addresses: {e}")))?;
        // The handlers are made first: each declares the source ports its protocol's clients use, which the
        // deny list must leave alone (an NTP server's clients send from 123).
        let mut handlers = Vec::with_capacity(config.workers.queues.len());
        for (i, &queue) in config.workers.queues.iter().enumerate() {
            handlers.push(make_handler_for(
                &mut make_handler,
                WorkerInfo { index: i, queue, core: config.workers.cores[i] },
            )?);
        }
        let mut policy = config.limits.source_policy(own);
        if let Some(first) = handlers.first() {
            let keep = first.client_source_ports();
            let before = policy.deny_source_ports.len();
            policy.deny_source_ports.retain(|p| !keep.contains(p));
            if policy.deny_source_ports.len() < before {
                tracing::info!(
                    handler = handler_name,
                    ports = ?keep,
                    "source ports the handler's clients use are not denied (limits.deny_source_ports)"
                );
            }
        }
        // The handler's own ports are steered like the configured ones: what arrives on them is its.
        let ports = served_ports(&config.ports, handlers.first().map(|h| h.owned_ports()));
        program.set_ports(&ports)?;
        let mut handlers = handlers.into_iter();
        program.set_source_policy(&policy)?;
        let (served, addrs) = (program.served_addresses()?, config.xdp.addresses.as_deref());
        let follower = super::addresses::serve(served, addrs, &config.interface, ifindex, &config.workers.cores)?;
        program.set_settings(policy.setting_bits() | crate::steer::SETTING_SERVED_ONLY)?;

        let mut sockets = Vec::with_capacity(config.workers.queues.len());
        for &queue in &config.workers.queues {
            let socket = QueueSocket::open(&SocketOptions {
                interface: config.interface.clone(),
                queue,
                bind_mode: config.xdp.bind_mode.into(),
                umem: config.umem.params(),
            })?;
            if let PollMode::BusyPoll { usecs, budget } = config.workers.poll_mode() {
                // Preferred busy polling drives the device's NAPI poll from the socket's system calls; a
                // copy-mode socket has no NAPI of its own to drive, so packets would wait for the
                // softirq's deferral timeout instead (220 µs measured on veth). Refuse rather than run so.
                if socket.bind_mode != BindMode::Zerocopy {
                    return Err(StartError::PollMode(format!(
                        "busy_poll needs a zero-copy AF_XDP socket, and queue {queue} of {} is bound in {} mode \
                         (no zero-copy in the driver, or xdp.bind_mode says so); use spin, adaptive or wakeup",
                        config.interface,
                        socket.bind_mode.name()
                    )));
                }
                socket
                    .enable_busy_poll(usecs, budget)
                    .map_err(|e| StartError::PollMode(format!("enabling busy polling on queue {queue}: {e}")))?;
            }
            program.register_socket(queue, socket.raw_fd())?;
            sockets.push(socket);
        }
        let link = program.attach(&config.interface, ifindex, config.xdp.attach_mode.into())?;
        let mut binds: Vec<&str> = sockets.iter().map(|s| s.bind_mode.name()).collect();
        binds.dedup();
        host.choices.bind_mode = Some(binds.join(","));

        let mut server = RunningServer::new(config, handler_name, Some(program), Some(link));
        server.host = host;
        server.addresses = follower;
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<ReadyMessage>(sockets.len());
        let highest_ns = server.config.latency.highest_ns;
        let interval = Duration::from_millis(server.config.report.interval_ms);
        let mut watched = Vec::new();
        let respond_options = respond_options(&server.config);
        // Next hops for the handlers' sends to anyone but a requester: the kernel's routing and neighbour
        // tables, followed by one resolver thread, cached per worker. Without it (netlink refused), such sends
        // are refused and counted (send_no_route); replies and sends back to requesters still work.
        let workers = server.config.workers.queues.len();
        let mut caches: Vec<Option<Box<dyn NextHop>>> = (0..workers).map(|_| None).collect();
        if server.config.sends.per_batch > 0 {
            let params = ResolverParams {
                capacity: server.config.sends.neighbours as usize,
                ..ResolverParams::new(ifindex, workers)
            };
            // The resolver's thread inherits this thread's affinity: keep it off the workers' cores (this thread
            // keeps off them from here on anyway, see finish_start).
            if let Err(e) = sys::avoid_cores(&server.config.workers.cores) {
                tracing::warn!("could not keep the next-hop resolver off the worker cores: {e}");
            }
            match Resolver::start(params) {
                Ok((resolver, hops)) => {
                    for (slot, h) in caches.iter_mut().zip(hops) {
                        *slot = Some(Box::new(h));
                    }
                    server.next_hops = Some(resolver);
                }
                Err(e) => tracing::warn!(
                    "next-hop resolution is unavailable ({e}): handlers' sends to anyone but the requester will be \
                     refused and counted (send_no_route)"
                ),
            }
        }
        let source_mac = match sys::route::link_mac(ifindex) {
            Ok(Some(mac)) => mac,
            Ok(None) => [0; 6],
            Err(e) => {
                return Err(StartError::Unavailable(super::host::Unavailable {
                    key: "interface",
                    message: format!("reading the MAC address of {}: {e}", server.config.interface),
                }))
            }
        };
        let send_options = SendOptions {
            per_batch: server.config.sends.per_batch,
            source_mac,
            addresses: match &server.config.xdp.addresses {
                Some(listed) => listed.clone(),
                None => sys::interface_addresses(&server.config.interface).unwrap_or_default(),
            },
            ports,
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            let core = server.config.workers.cores[i];
            let queue = socket.queue;
            let (worker_side, reporter_side) = if measure {
                let (w, r) = histograms::hand_off(highest_ns, interval.as_nanos() as u64, SPARE_LATENCY_SETS);
                (Some(w), Some(r))
            } else {
                (None, None)
            };
            let handler = handlers.next().expect("one handler per queue, made above");
            let bind_mode = socket.bind_mode;
            let shared = Arc::new(WorkerShared::default());
            let mut worker = Worker::new(socket, handler, shared.clone(), server.config.workers.batch_size)
                .with_options(respond_options)
                .with_poll_mode(server.config.workers.poll_mode())
                .with_kick_policy(server.config.workers.kick_policy())
                .with_stamp_in_packet(stamp == StampMethod::Head)
                .with_stamp_in_metadata(stamp == StampMethod::Meta)
                .with_sends(send_options.clone(), caches.get_mut(i).and_then(Option::take));
            if let Some(l) = worker_side {
                worker = worker.with_latency(l);
            }
            let slot = server.spawn(i, core, queue, Some(bind_mode), shared, ready_tx.clone(), move || {
                Ok(move |stop: &AtomicBool| worker.run(stop))
            });
            if let Some(latency) = reporter_side {
                watched.push(WatchedWorker { queue, shared: slot.shared.clone(), latency });
            }
            server.workers.push(slot);
        }
        server.finish_start(ready_tx, ready_rx, watched, &options)
    }

    /// Starts the server inside the kernel (`mode = "in-kernel"`): the XDP program answers the ports itself with
    /// the built-in handler `kind`; there are no workers, and no in-server latency to record.
    pub fn start_in_kernel(
        config: Config,
        options: StartOptions,
        kind: super::config::HandlerKind,
    ) -> Result<RunningServer, StartError> {
        config.validate()?;
        config.warn_deprecated();
        check_privileges(0)?;
        let ifindex = check_machine(&config)?;
        let mut server = InKernelServer::load(kind.into())?;
        server.set_ports(&config.ports)?;
        let (served, addrs) = (server.served_addresses()?, config.xdp.addresses.as_deref());
        let follower = super::addresses::serve(served, addrs, &config.interface, ifindex, &[])?;
        server.serve_listed_addresses_only()?;
        let link = server.attach(&config.interface, ifindex, config.xdp.attach_mode.into())?;
        let mut host = super::host::probe(Some(&config.interface), false);
        host.choices.attach_mode = Some(crate::steer::AttachMode::from(config.xdp.attach_mode).name().to_string());
        let mut running = RunningServer::new(config, kind.name(), None, Some(link));
        running.in_kernel = Some(server);
        running.host = host;
        running.addresses = follower;
        running.cpu_start = SystemCpu::read();
        running.serving.store(true, Relaxed);
        let _ = options;
        tracing::info!(
            interface = %running.config.interface,
            ports = ?running.config.ports,
            mode = "in-kernel",
            handler = running.handler_name,
            "ready: serving"
        );
        Ok(running)
    }

    /// Starts one kernel-socket worker per configured core (`mode = "socket"`): no XDP program, no AF_XDP.
    fn start_sockets<H, F>(
        config: Config,
        options: StartOptions,
        handler_name: &'static str,
        mut make_handler: F,
    ) -> Result<RunningServer, StartError>
    where
        H: Handler + 'static,
        F: FnMut(WorkerInfo) -> H,
    {
        check_socket_privileges(&config.ports)?;
        check_machine(&config)?;
        let measure = config.latency.enabled;
        let mut host = super::host::probe(Some(&config.interface), config.socket.io == SocketIo::IoUring);
        host.choices.poll_mode = Some(config.socket.io.name().to_string());
        let mut server = RunningServer::new(config, handler_name, None, None);
        server.host = host;
        let n = server.config.workers.cores.len();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<ReadyMessage>(n);
        let highest_ns = server.config.latency.highest_ns;
        let interval = Duration::from_millis(server.config.report.interval_ms);
        let mut watched = Vec::new();
        for i in 0..n {
            let core = server.config.workers.cores[i];
            let queue = server.config.workers.queues.get(i).copied().unwrap_or(i as u32);
            let handler = make_handler_for(&mut make_handler, WorkerInfo { index: i, queue, core })?;
            let opts = KernelSocketOptions {
                interface: server.config.interface.clone(),
                ports: served_ports(&server.config.ports, Some(handler.owned_ports())),
                io: server.config.socket.io.into(),
                batch: server.config.socket.batch,
                receive_buffer: server.config.socket.receive_buffer,
                timestamps: measure,
                sends_per_batch: server.config.sends.per_batch,
            };
            let shared = Arc::new(WorkerShared::default());
            let mut worker_latency = None;
            if measure {
                let (w, r) = histograms::hand_off(highest_ns, interval.as_nanos() as u64, SPARE_LATENCY_SETS);
                worker_latency = Some(w);
                watched.push(WatchedWorker { queue, shared: shared.clone(), latency: r });
            }
            // Opened on the worker's own thread: its buffers stay there, and the signal-driven model
            // directs the sockets' signals at that thread.
            let for_worker = shared.clone();
            let slot = server.spawn(i, core, queue, None, shared, ready_tx.clone(), move || {
                let mut worker = KernelWorker::open(opts, handler, for_worker)?;
                if let Some(l) = worker_latency {
                    worker = worker.with_latency(l);
                }
                Ok(move |stop: &AtomicBool| worker.run(stop))
            });
            server.workers.push(slot);
        }
        server.finish_start(ready_tx, ready_rx, watched, &options)
    }

    /// Waits for every worker to be pinned and running, keeps the control threads off their cores, and
    /// starts the reporter and the metrics endpoint. `ready_tx` is the original sender (the workers hold
    /// clones): it is dropped first, so that a worker whose thread ends without a word is seen as a
    /// disconnect rather than waited for. On error `self` is dropped, which detaches and joins everything.
    fn finish_start(
        mut self,
        ready_tx: crossbeam_channel::Sender<ReadyMessage>,
        ready_rx: crossbeam_channel::Receiver<ReadyMessage>,
        watched: Vec<WatchedWorker>,
        options: &StartOptions,
    ) -> Result<RunningServer, StartError> {
        drop(ready_tx);
        let deadline = Instant::now() + READY_DEADLINE;
        let mut waiting: Vec<u32> = self.workers.iter().map(|w| w.queue).collect();
        while !waiting.is_empty() {
            match ready_rx.recv_deadline(deadline) {
                Ok((queue, Ok(()))) => waiting.retain(|&q| q != queue),
                Ok((queue, Err(e))) => {
                    // The others may still be setting up: until the deadline, let each report (joining it in
                    // Drop is then quick), and let go of any still silent, as on a timeout below.
                    waiting.retain(|&q| q != queue);
                    while !waiting.is_empty() {
                        match ready_rx.recv_deadline(deadline) {
                            Ok((q, _)) => waiting.retain(|&w| w != q),
                            Err(_) => break,
                        }
                    }
                    self.workers.retain(|w| !waiting.contains(&w.queue));
                    return Err(e);
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    // Every worker thread has dropped its sender, and these never said a word.
                    let queue = waiting[0];
                    let message = self
                        .deaths
                        .lock()
                        .ok()
                        .and_then(|d| d.iter().find(|d| d.queue == queue).map(|d| d.message.clone()))
                        .unwrap_or_else(|| "its thread ended before it started serving".to_string());
                    return Err(StartError::WorkerDied { queue, message });
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // Threads stuck in their set-up would hang the join in Drop: let them go (dropping a
                    // JoinHandle detaches the thread; the process exits after this error anyway). The rest
                    // are stopped and joined as usual.
                    self.workers.retain(|w| !waiting.contains(&w.queue));
                    return Err(StartError::NotReady { queues: waiting, waited: READY_DEADLINE });
                }
            }
        }
        // A worker may have died right after it reported ready: start-up fails then too.
        if let Ok(death) = self.deaths_rx.try_recv() {
            return Err(StartError::WorkerDied { queue: death.queue, message: death.message });
        }
        let server = &mut self;
        // The calling thread and everything it starts from now on (reporter, metrics) keep off the workers'
        // cores: a control thread scheduled there would preempt a spinning worker for a whole time slice.
        if let Err(e) = sys::avoid_cores(&server.config.workers.cores) {
            tracing::warn!("could not keep control threads off the worker cores: {e}");
        }
        server.cpu_start = SystemCpu::read();
        server.serving.store(true, Relaxed);
        server.start_observers(watched, options)?;
        tracing::info!(
            interface = %self.config.interface,
            ports = ?self.config.ports,
            mode = self.config.mode.name(),
            handler = self.handler_name,
            workers = self.workers.len(),
            "ready: serving"
        );
        Ok(self)
    }

    fn start_observers(&mut self, watched: Vec<WatchedWorker>, options: &StartOptions) -> Result<(), StartError> {
        if !watched.is_empty() {
            let reporter_options = ReporterOptions {
                interval: Duration::from_millis(self.config.report.interval_ms),
                print: options.print_intervals,
                hdr_log: self.config.report.hdr_log.clone(),
                // Kernel sockets stamp through SO_TIMESTAMPING; an AF_XDP run without an XDP stamp has service only.
                service_only: self.program.as_ref().is_some_and(|p| !p.stamp.stamps()),
                highest_ns: self.config.latency.highest_ns,
            };
            let handle = reporter::spawn(watched, reporter_options, self.reporter_finish.clone(), self.latency.clone())
                .map_err(|source| StartError::ReportFile {
                    key: "report.hdr_log",
                    path: self.config.report.hdr_log.clone().unwrap_or_default(),
                    source,
                })?;
            self.reporter = Some(handle);
        }
        if let Some(listen) = &self.config.metrics.listen {
            let sources = MetricsSources {
                started: self.started,
                workers: self.workers.iter().map(|w| (w.queue, w.shared.clone())).collect(),
                xdp: self.program.as_ref().map(XdpProgram::counters_reader).transpose()?,
                latency: self.latency.clone(),
                serving: self.serving.clone(),
            };
            let metrics = MetricsServer::start(listen, sources).map_err(StartError::Metrics)?;
            tracing::info!(address = %metrics.local_addr, "metrics endpoint serving /metrics, /stats.json and /ready");
            self.metrics = Some(metrics);
        }
        Ok(())
    }

    /// Starts worker `index` on its own thread, pinned to `core`: `make` builds its loop there (an error is
    /// reported through `ready`), which then runs until the stop flag is set.
    ///
    /// The whole thread runs under `catch_unwind` (once, around the loop: nothing per packet). A panic before
    /// the worker reported ready is reported through `ready` as [`StartError::WorkerDied`]; one after it
    /// clears the worker's `alive` flag, records a [`WorkerDeath`] and wakes [`Self::wait`]. The loop's
    /// captures (the socket among them) are dropped while unwinding, so the kernel takes the dead queue's
    /// socket out of the XSKMAP and the queue falls through to the kernel stack until the server stops.
    #[allow(clippy::too_many_arguments)]
    fn spawn<M, R>(
        &self,
        index: usize,
        core: usize,
        queue: u32,
        bind_mode: Option<BindMode>,
        shared: Arc<WorkerShared>,
        ready: crossbeam_channel::Sender<ReadyMessage>,
        make: M,
    ) -> WorkerSlot
    where
        M: FnOnce() -> Result<R, StartError> + Send + 'static,
        R: FnOnce(&AtomicBool) -> WorkerExit,
    {
        let stop = self.stop.clone();
        let deaths_tx = self.deaths_tx.clone();
        let deaths = self.deaths.clone();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shunt-q{queue}"))
            .spawn(move || {
                let shared = for_thread;
                let mut ready = Some(ready);
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    let report = |r: Result<(), StartError>| {
                        if let Some(tx) = &ready {
                            let _ = tx.send((queue, r));
                        }
                    };
                    if sys::pin_to_core(core).is_err() {
                        report(Err(StartError::Pin { key: format!("workers.cores[{index}]"), core }));
                        return WorkerExit::default();
                    }
                    let run = match make() {
                        Ok(run) => run,
                        Err(e) => {
                            report(Err(e));
                            return WorkerExit::default();
                        }
                    };
                    tracing::debug!(queue, core, tid = sys::thread_id(), ?bind_mode, "worker started");
                    shared.alive.store(true, Relaxed);
                    report(Ok(()));
                    ready = None;
                    run(&stop)
                }));
                shared.alive.store(false, Relaxed);
                match outcome {
                    Ok(exit) => (exit, None),
                    Err(payload) => {
                        let message = panic_message(&*payload);
                        match ready.take() {
                            // Before ready: a start-up error.
                            Some(tx) => {
                                let _ =
                                    tx.send((queue, Err(StartError::WorkerDied { queue, message: message.clone() })));
                            }
                            None => {
                                tracing::error!(queue, "worker died: {message}");
                                let death = WorkerDeath { queue, message: message.clone() };
                                if let Ok(mut d) = deaths.lock() {
                                    d.push(death.clone());
                                }
                                let _ = deaths_tx.send(death);
                            }
                        }
                        let exit = WorkerExit {
                            stats: shared.stats.snapshot(),
                            kernel: shared.kernel.snapshot(),
                            ..WorkerExit::default()
                        };
                        (exit, Some(message))
                    }
                }
            })
            .expect("spawning a worker thread");
        WorkerSlot { queue, core, bind_mode, shared, thread }
    }

    /// Blocks until `asked` is set (looked at every 20 ms) or a worker dies (at once), and says which.
    /// A death that happened before the call is returned at once.
    pub fn wait(&self, asked: &AtomicBool) -> Wake {
        loop {
            if asked.load(Relaxed) {
                return Wake::Asked;
            }
            // The server keeps a sender itself, so this channel never disconnects.
            if let Ok(death) = self.deaths_rx.recv_timeout(WAIT_TICK) {
                return Wake::WorkerDied(death);
            }
        }
    }

    /// The workers that died so far (empty while all run), in the order they died.
    pub fn worker_deaths(&self) -> Vec<WorkerDeath> {
        self.deaths.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// The flag that stops the workers; set it (e.g. from a signal handler) and then call [`Self::stop`].
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The XDP program's counters now.
    pub fn xdp_counters(&self) -> XdpCounters {
        self.program.as_ref().and_then(|p| p.counters().ok()).unwrap_or_default()
    }

    /// Live snapshots of each worker's counters: (queue, stats).
    pub fn worker_stats(&self) -> Vec<(u32, WorkerStats)> {
        self.workers.iter().map(|w| (w.queue, w.shared.stats.snapshot())).collect()
    }

    /// Detaches the program, stops and joins the workers, and returns the final report (a worker that
    /// died is in it with its panic message, `workers[].died`).
    pub fn stop(mut self) -> Report {
        self.serving.store(false, Relaxed);
        let duration = self.started.elapsed().as_secs_f64();
        let xdp = self.xdp_counters();
        let in_kernel = self.in_kernel.as_ref().and_then(|k| k.counters().ok());
        let cpu_stop = SystemCpu::read();
        // Detach first: from here on the kernel answers (or refuses) the served ports itself.
        self.link.take();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut workers: Vec<WorkerReport> = std::mem::take(&mut self.workers)
            .into_iter()
            .map(|w| {
                let (exit, died) = w.thread.join().unwrap_or_else(|payload| {
                    // Not reached: the thread catches its own panics. Kept for a panic in the catching.
                    let message = panic_message(&*payload);
                    tracing::error!(queue = w.queue, "worker panicked: {message}");
                    let exit = WorkerExit {
                        stats: w.shared.stats.snapshot(),
                        kernel: w.shared.kernel.snapshot(),
                        ..WorkerExit::default()
                    };
                    (exit, Some(message))
                });
                WorkerReport {
                    queue: w.queue,
                    core: w.core,
                    bind_mode: w.bind_mode,
                    stats: exit.stats,
                    fill_ring_empty: exit.kernel.rx_fill_ring_empty_descs,
                    kernel: exit.kernel,
                    frames: exit.frames,
                    latency: None,
                    cpu: exit.cpu,
                    died,
                }
            })
            .collect();
        // The workers have flushed their last histograms; now the reporter takes them and stops.
        self.metrics.take();
        self.reporter_finish.store(true, std::sync::atomic::Ordering::Relaxed);
        let reporter_exit = self.reporter.take().and_then(|r| r.join().ok());
        let mut merged: Option<LatencySet> = None;
        if let Some(exit) = reporter_exit {
            if let Some(e) = &exit.hdr_log_error {
                tracing::error!("writing the HdrHistogram log failed: {e}");
            }
            // The reporter watches every worker, in the same order, whenever latency is measured.
            for (w, set) in workers.iter_mut().zip(&exit.per_worker) {
                w.latency = Some(LatencyReport::of(set));
                merged.get_or_insert_with(|| LatencySet::new(self.config.latency.highest_ns)).add(set);
            }
        }
        let cpu_workers = workers
            .iter()
            .filter_map(|w| w.cpu.map(|times| WorkerCpu { queue: w.queue, core: w.core, times }))
            .collect();
        let replies = workers.iter().map(|w| w.stats.tx_packets).sum::<u64>() + in_kernel.map_or(0, |k| k.answered);
        let c = &self.config;
        let note = match (c.mode, c.socket.io, c.workers.poll_mode) {
            (Mode::InKernel, _, _) => cpu::IN_KERNEL_NOTE,
            (Mode::Socket, SocketIo::Nonblocking, _) | (Mode::Afxdp, _, config::PollMode::Spin) => cpu::SPIN_NOTE,
            _ => cpu::WAIT_NOTE,
        };
        // Busy time per reply over the workers' counters (replies, as for the other figures); no workers (the
        // in-kernel server), no figure.
        let busy = (!workers.is_empty()).then(|| workers.iter().map(|w| w.stats.busy_ns).sum::<u64>());
        let cpu = CpuReport::new(cpu_workers, &self.cpu_start, &cpu_stop, replies, busy, note);
        let mut report = Report::new(
            c.interface.clone(),
            self.handler_name,
            c.ports.clone(),
            c.xdp.attach_mode.into(),
            duration,
            xdp,
            workers,
            merged.map(|m| LatencyReport::of(&m)),
            latency_clock(c.latency.enabled, self.program.as_ref().map(|p| (p.variant, p.stamp))),
            cpu,
        );
        report.mode = c.mode.name();
        report.host = Some(std::mem::take(&mut self.host));
        if let Some(k) = in_kernel {
            report.in_kernel = Some(k);
            report.tx_packets = k.answered;
            report.rx_packets = k.answered + k.bad_checksum + k.dropped_by_handler;
        }
        report.io = match c.mode {
            Mode::Socket => self.config.socket.io.name(),
            Mode::Afxdp => c.workers.poll_mode.name(),
            Mode::InKernel => "xdp_tx",
        };
        report
    }
}

impl Drop for RunningServer {
    /// What [`RunningServer::stop`] does, without the report, for a server dropped without it: detach,
    /// stop and join the workers, stop the metrics endpoint and the reporter. After `stop` (which has taken
    /// all of these) there is nothing left to do.
    fn drop(&mut self) {
        self.serving.store(false, Relaxed);
        self.link.take();
        self.stop.store(true, Relaxed);
        for w in std::mem::take(&mut self.workers) {
            if w.thread.join().is_err() {
                tracing::error!(queue = w.queue, "worker panicked");
            }
        }
        self.metrics.take();
        self.reporter_finish.store(true, Relaxed);
        if let Some(r) = self.reporter.take() {
            let _ = r.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server with no program, no link and no workers yet (no privileges needed), on a core this process
    /// may use.
    fn bare_server() -> (RunningServer, usize) {
        let mut config = Config::parse(include_str!("../../config/lab.toml"), "config/lab.toml").expect("lab config");
        let core = sys::allowed_cores().expect("affinity").first().copied().expect("a core");
        config.workers.cores = vec![core];
        config.workers.queues = vec![7];
        (RunningServer::new(config, "test", None, None), core)
    }

    fn ready_channel() -> (crossbeam_channel::Sender<ReadyMessage>, crossbeam_channel::Receiver<ReadyMessage>) {
        crossbeam_channel::bounded(4)
    }

    /// A loop that idles until the stop flag, then sets `ended`.
    fn idle_until_stop(ended: Arc<AtomicBool>) -> impl FnOnce(&AtomicBool) -> WorkerExit {
        move |stop: &AtomicBool| {
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            ended.store(true, Relaxed);
            WorkerExit::default()
        }
    }

    #[test]
    fn a_worker_that_panics_before_ready_fails_start_naming_its_queue() {
        let (mut server, core) = bare_server();
        let (tx, rx) = ready_channel();
        let shared = Arc::new(WorkerShared::default());
        let slot =
            server.spawn(0, core, 7, None, shared, tx.clone(), || -> Result<fn(&AtomicBool) -> WorkerExit, _> {
                panic!("boom before ready")
            });
        server.workers.push(slot);
        fails_start_quickly(server, tx, rx, "boom before ready");
    }

    #[test]
    fn a_worker_thread_that_ends_without_a_word_is_seen_not_waited_for() {
        let (mut server, core) = bare_server();
        let (tx, rx) = ready_channel();
        let silent = tx.clone();
        let thread = std::thread::spawn(move || {
            drop(silent);
            (WorkerExit::default(), None)
        });
        let shared = Arc::new(WorkerShared::default());
        server.workers.push(WorkerSlot { queue: 7, core, bind_mode: None, shared, thread });
        fails_start_quickly(server, tx, rx, "ended before it started serving");
    }

    /// Start-up fails well within its deadline with worker 7's death, whose message holds `expected`.
    fn fails_start_quickly(
        server: RunningServer,
        tx: crossbeam_channel::Sender<ReadyMessage>,
        rx: crossbeam_channel::Receiver<ReadyMessage>,
        expected: &str,
    ) {
        let started = Instant::now();
        match server.finish_start(tx, rx, Vec::new(), &StartOptions::default()) {
            Err(StartError::WorkerDied { queue: 7, message }) => assert!(message.contains(expected), "{message}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("started although worker 7 died"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "start-up waited {:?}", started.elapsed());
    }

    #[test]
    fn a_worker_that_panics_while_serving_wakes_wait_and_is_in_the_report() {
        let (mut server, core) = bare_server();
        let (tx, rx) = ready_channel();
        let trigger = Arc::new(AtomicBool::new(false));
        let pull = trigger.clone();
        let doomed = Arc::new(WorkerShared::default());
        let slot = server.spawn(0, core, 7, None, doomed.clone(), tx.clone(), move || {
            Ok(move |_stop: &AtomicBool| -> WorkerExit {
                while !pull.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                panic!("boom while serving")
            })
        });
        server.workers.push(slot);
        let healthy_ended = Arc::new(AtomicBool::new(false));
        let ended = healthy_ended.clone();
        let slot = server.spawn(1, core, 8, None, Arc::default(), tx.clone(), move || Ok(idle_until_stop(ended)));
        server.workers.push(slot);
        let server = server.finish_start(tx, rx, Vec::new(), &StartOptions::default()).expect("started");
        assert!(doomed.is_alive());
        assert!(server.worker_deaths().is_empty());

        trigger.store(true, Relaxed);
        let asked = AtomicBool::new(false);
        let death = match server.wait(&asked) {
            Wake::WorkerDied(d) => d,
            Wake::Asked => panic!("woke without a death"),
        };
        assert_eq!(death.queue, 7);
        assert!(death.message.contains("boom while serving"), "{death}");
        assert!(!doomed.is_alive(), "the dead worker still counts as running");
        assert_eq!(server.worker_deaths(), vec![death]);
        assert!(!healthy_ended.load(Relaxed), "the other worker runs until stop");

        let report = server.stop();
        assert!(healthy_ended.load(Relaxed), "stop joins the other worker");
        let died: Vec<_> = report.workers.iter().map(|w| (w.queue, w.died.clone())).collect();
        assert_eq!(died.len(), 2);
        assert!(died[0].1.as_deref().is_some_and(|m| m.contains("boom while serving")), "{died:?}");
        assert_eq!(died[1], (8, None));
        assert!(report.text().contains("queue 7 worker DIED: boom while serving"), "{}", report.text());
    }

    #[test]
    fn wait_returns_when_asked() {
        let (mut server, core) = bare_server();
        let (tx, rx) = ready_channel();
        let ended = Arc::new(AtomicBool::new(false));
        let slot = server.spawn(0, core, 7, None, Arc::default(), tx.clone(), {
            let ended = ended.clone();
            move || Ok(idle_until_stop(ended))
        });
        server.workers.push(slot);
        let server = server.finish_start(tx, rx, Vec::new(), &StartOptions::default()).expect("started");
        assert_eq!(server.wait(&AtomicBool::new(true)), Wake::Asked);
        let report = server.stop();
        assert!(ended.load(Relaxed));
        assert_eq!(report.workers[0].died, None);
    }

    #[test]
    fn dropping_a_running_server_stops_and_joins_its_workers() {
        let (mut server, core) = bare_server();
        let (tx, rx) = ready_channel();
        let ended = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(WorkerShared::default());
        let slot = server.spawn(0, core, 7, None, shared.clone(), tx.clone(), {
            let ended = ended.clone();
            move || Ok(idle_until_stop(ended))
        });
        server.workers.push(slot);
        let server = server.finish_start(tx, rx, Vec::new(), &StartOptions::default()).expect("started");
        assert!(shared.is_alive());
        drop(server);
        assert!(ended.load(Relaxed), "Drop returned before the worker ended");
        assert!(!shared.is_alive());
    }
}
