//! The TOML run configuration: every key, its default, and the checks that can be made without touching the
//! system. Checks against the machine (interface, queues, cores, privileges) happen in
//! [`crate::control::server`]. The lower layers never see these types: [`Config`] maps itself onto their
//! plain parameters ([`crate::datapath::afxdp::UmemParams`], [`crate::steer::AttachMode`], ...).

use std::{collections::BTreeSet, fmt, path::Path};

use serde::{Deserialize, Serialize};

use crate::{datapath, handler::RespondOptions, in_kernel, steer};

/// A configuration problem, naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...). The message names the key.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's message, with line, column and key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.to_string() }
}

/// How the XDP program is attached to the interface (`xdp.attach_mode`, `--attach-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): fails if the driver has no native XDP.
    Native,
    /// In the generic, skb-based hook (XDP_FLAGS_SKB_MODE): works everywhere, slower.
    Generic,
    /// Let the kernel choose: native where the driver supports it, generic otherwise.
    Auto,
}

/// How the steering program stamps packets with the XDP-hook time (`latency.stamp`, `--stamp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StampChoice {
    /// The best the kernel allows, found by probing at start-up: `meta`, else `head`, else `none`.
    Auto,
    /// XDP metadata (`bpf_xdp_adjust_meta`); start-up fails, naming the helper, where the kernel refuses it.
    Meta,
    /// The stamp prepended to the packet (`bpf_xdp_adjust_head`) and stripped by the worker.
    Head,
    /// No stamp: only `service` latency is measured.
    None,
}

impl StampChoice {
    /// The method asked for, `None` for `auto`.
    pub fn forced(self) -> Option<steer::StampMethod> {
        match self {
            StampChoice::Auto => None,
            StampChoice::Meta => Some(steer::StampMethod::Meta),
            StampChoice::Head => Some(steer::StampMethod::Head),
            StampChoice::None => Some(steer::StampMethod::None),
        }
    }
}

/// How AF_XDP sockets are bound to their queues (`xdp.bind_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy (XDP_ZEROCOPY): the NIC DMAs into the UMEM. Fails where the driver lacks support.
    Zerocopy,
    /// Copy mode (XDP_COPY): the kernel copies between its buffers and the UMEM. Works on any XDP driver.
    Copy,
    /// Try zero-copy, fall back to copy (and say so in the log).
    Auto,
}

/// How a worker waits for packets (`workers.poll_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum PollMode {
    /// Busy-poll the rings without ever sleeping: lowest latency, one core at 100 %.
    Spin,
    /// Sleep in poll(2) whenever the RX ring is empty: no CPU when idle, a wake-up's latency after a pause.
    Wakeup,
    /// Spin for `workers.spin_us` after the last packet, then sleep like `wakeup`.
    Adaptive,
    /// Preferred busy polling (SO_PREFER_BUSY_POLL): the worker's own poll calls drive the NIC's NAPI poll.
    /// Needs zero-copy AF_XDP on a real NIC; refused at start-up in copy mode.
    BusyPoll,
}

/// Which datapath serves the ports (`mode`, `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// XDP steers the ports into AF_XDP sockets served by pinned workers: the kernel's stack is skipped.
    Afxdp,
    /// Kernel UDP sockets (one SO_REUSEPORT socket per port per worker), with the I/O model `socket.io`:
    /// the classic server, for comparison, with the same handlers.
    Socket,
    /// The server inside the kernel: the XDP program answers the ports itself (XDP_TX). Built-in handlers
    /// only (echo, sockperf), written in C; a custom Rust handler cannot run there. `"xdp"`, its old
    /// name, is still read (with a deprecation warning, see [`Config::deprecated`]) until the next release.
    #[serde(rename = "in-kernel", alias = "xdp")]
    InKernel,
}

/// The deprecated spelling of `mode = "in-kernel"` (file and `--mode`), accepted for one more release.
pub const DEPRECATED_IN_KERNEL_MODE: &str = "xdp";

/// Says that `mode = "xdp"` was read, what it means and what to write instead.
fn in_kernel_mode_deprecation(key: &str) -> String {
    format!(
        "{key} \"{DEPRECATED_IN_KERNEL_MODE}\" is deprecated and will be removed in the next release: it means the \
         in-kernel XDP_TX server, not the AF_XDP datapath that [xdp] configures; write {key} \"in-kernel\" instead"
    )
}

impl SocketIo {
    /// The lowercase name used in the config and reports.
    pub fn name(self) -> &'static str {
        match self {
            SocketIo::Blocking => "blocking",
            SocketIo::Nonblocking => "nonblocking",
            SocketIo::Epoll => "epoll",
            SocketIo::Signal => "signal",
            SocketIo::Mmsg => "mmsg",
            SocketIo::IoUring => "io_uring",
        }
    }
}

impl PollMode {
    /// The snake_case name used in the config and reports.
    pub fn name(self) -> &'static str {
        match self {
            PollMode::Spin => "spin",
            PollMode::Wakeup => "wakeup",
            PollMode::Adaptive => "adaptive",
            PollMode::BusyPoll => "busy_poll",
        }
    }
}

impl Mode {
    /// The lowercase name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Afxdp => "afxdp",
            Mode::Socket => "socket",
            Mode::InKernel => "in-kernel",
        }
    }
}

/// The kernel-socket I/O models (`socket.io`, `--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SocketIo {
    /// recvmsg/sendmsg on a blocking socket (one port per worker).
    Blocking,
    /// Non-blocking sockets, spinning on EAGAIN.
    Nonblocking,
    /// epoll_wait for readiness, then drain each ready socket.
    Epoll,
    /// Signal-driven I/O: O_ASYNC + F_SETSIG, the worker waits in sigtimedwait.
    Signal,
    /// recvmmsg/sendmmsg batches of `socket.batch`.
    Mmsg,
    /// io_uring: multishot recvmsg into provided buffers (2 x `socket.batch`), sends batched per turn.
    #[serde(rename = "io_uring")]
    #[value(name = "io_uring")]
    IoUring,
}

impl From<SocketIo> for datapath::socket::SocketIo {
    fn from(io: SocketIo) -> Self {
        match io {
            SocketIo::Blocking => datapath::socket::SocketIo::Blocking,
            SocketIo::Nonblocking => datapath::socket::SocketIo::Nonblocking,
            SocketIo::Epoll => datapath::socket::SocketIo::Epoll,
            SocketIo::Signal => datapath::socket::SocketIo::Signal,
            SocketIo::Mmsg => datapath::socket::SocketIo::Mmsg,
            SocketIo::IoUring => datapath::socket::SocketIo::IoUring,
        }
    }
}

/// `[socket]`: the kernel-socket datapath (`mode = "socket"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// The I/O model.
    pub io: SocketIo,
    /// Datagrams per recvmmsg/sendmmsg (`mmsg`), the most taken from one socket in a row (`nonblocking`), and
    /// half the provided buffers of `io_uring`.
    pub batch: u32,
    /// Each socket's receive buffer, bytes (SO_RCVBUFFORCE, so beyond net.core.rmem_max; the kernel doubles
    /// it for its bookkeeping). Datagrams that find it full are dropped by the kernel and counted at stop as
    /// the worker's `kernel.rx_dropped`.
    pub receive_buffer: u32,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig { io: SocketIo::Epoll, batch: 64, receive_buffer: 4 << 20 }
    }
}

/// The built-in handlers `shunt serve` chooses between (`handler`, `--handler`). A program that runs its own
/// handler through [`crate::control::serve`] ignores this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// Reply with the request's payload unchanged.
    Echo,
    /// A drop-in for `sockperf server` (see [`crate::handler::Sockperf`]).
    Sockperf,
}

impl HandlerKind {
    /// The name used in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Echo => "echo",
            HandlerKind::Sockperf => "sockperf",
        }
    }
}

impl From<HandlerKind> for in_kernel::InKernelHandler {
    fn from(kind: HandlerKind) -> Self {
        match kind {
            HandlerKind::Echo => in_kernel::InKernelHandler::Echo,
            HandlerKind::Sockperf => in_kernel::InKernelHandler::Sockperf,
        }
    }
}

impl From<AttachMode> for steer::AttachMode {
    fn from(m: AttachMode) -> Self {
        match m {
            AttachMode::Native => steer::AttachMode::Native,
            AttachMode::Generic => steer::AttachMode::Generic,
            AttachMode::Auto => steer::AttachMode::Auto,
        }
    }
}

impl From<BindMode> for datapath::afxdp::BindMode {
    fn from(m: BindMode) -> Self {
        match m {
            BindMode::Zerocopy => datapath::afxdp::BindMode::Zerocopy,
            BindMode::Copy => datapath::afxdp::BindMode::Copy,
            BindMode::Auto => datapath::afxdp::BindMode::Auto,
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The network interface to serve.
    pub interface: String,
    /// UDP destination ports steered to the server.
    pub ports: Vec<u16>,
    /// The handler that answers requests.
    #[serde(default = "default_handler")]
    pub handler: HandlerKind,
    /// Which datapath serves the ports.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// The kernel-socket datapath's settings (`mode = "socket"`).
    #[serde(default)]
    pub socket: SocketConfig,
    /// XDP attach and AF_XDP bind settings.
    #[serde(default)]
    pub xdp: XdpConfig,
    /// Worker queues, cores and loop settings.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// What is checked in each request before the handler sees it.
    #[serde(default)]
    pub packet: PacketConfig,
    /// UMEM and ring sizes (per queue).
    #[serde(default)]
    pub umem: UmemConfig,
    /// In-server latency measurement.
    #[serde(default)]
    pub latency: LatencyConfig,
    /// Reporting.
    #[serde(default)]
    pub report: ReportConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Which sources are served, and how fast (enforced in XDP).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// What handlers may send besides in-place replies.
    #[serde(default)]
    pub sends: SendsConfig,
    /// Deprecated spellings this configuration was written with, one message each (what to write
    /// instead). Not a key: [`Config::parse`] and the command line's overrides fill it, the server logs each
    /// at start-up and `shunt check-config` prints them.
    #[serde(skip)]
    pub deprecated: Vec<String>,
}

fn default_mode() -> Mode {
    Mode::Afxdp
}

fn default_handler() -> HandlerKind {
    HandlerKind::Echo
}

/// `[xdp]`: how the program is attached and sockets are bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// `native`, `generic` or `auto`.
    pub attach_mode: AttachMode,
    /// `zerocopy`, `copy` or `auto`.
    pub bind_mode: BindMode,
    /// The destination addresses served (IPv4 or IPv6); a datagram to a served port but another address
    /// (traffic the host forwards, to a pod or a VM, say) is left to the kernel and counted as
    /// `xdp.other_address`. Absent: the interface's own addresses, IPv6 link-local ones included, read at
    /// start-up and followed as they change (rtnetlink). A list is served as given, and only it. Applies to
    /// `mode = "afxdp"` and `"in-kernel"`; kernel sockets (`"socket"`) get only what the kernel routes to them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<std::net::IpAddr>>,
}

impl Default for XdpConfig {
    fn default() -> Self {
        XdpConfig { attach_mode: AttachMode::Native, bind_mode: BindMode::Auto, addresses: None }
    }
}

/// `[workers]`: one worker per queue, pinned to the core at the same position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// NIC receive queues to serve, one AF_XDP socket and worker each.
    pub queues: Vec<u32>,
    /// CPU core for each worker, same length as `queues`.
    pub cores: Vec<usize>,
    /// How workers wait for packets.
    pub poll_mode: PollMode,
    /// `adaptive`: µs to keep spinning after the last packet; `busy_poll`: µs per busy poll (SO_BUSY_POLL).
    pub spin_us: u32,
    /// Most descriptors taken from the RX ring per iteration (and the busy-poll budget).
    pub batch_size: u32,
    /// Kick the kernel to transmit once this many replies wait on the TX ring (1: after every batch).
    pub tx_kick_batch: u32,
    /// ... or once the oldest waiting reply has waited this many µs (with `tx_kick_batch` > 1).
    pub tx_kick_delay_us: u32,
}

impl WorkersConfig {
    /// The datapath's view of `tx_kick_batch` and `tx_kick_delay_us`.
    pub fn kick_policy(&self) -> datapath::afxdp::KickPolicy {
        datapath::afxdp::KickPolicy { batch: self.tx_kick_batch, delay_ns: u64::from(self.tx_kick_delay_us) * 1_000 }
    }

    /// The datapath's view of `poll_mode`, `spin_us` and `batch_size`.
    pub fn poll_mode(&self) -> datapath::afxdp::PollMode {
        match self.poll_mode {
            PollMode::Spin => datapath::afxdp::PollMode::Spin,
            PollMode::Wakeup => datapath::afxdp::PollMode::Wakeup,
            PollMode::Adaptive => {
                datapath::afxdp::PollMode::Adaptive { spin: std::time::Duration::from_micros(self.spin_us.into()) }
            }
            PollMode::BusyPoll => datapath::afxdp::PollMode::BusyPoll {
                usecs: self.spin_us,
                budget: u16::try_from(self.batch_size).unwrap_or(u16::MAX),
            },
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            queues: vec![0],
            cores: vec![0],
            poll_mode: PollMode::Spin,
            spin_us: 50,
            batch_size: 64,
            tx_kick_batch: 1,
            tx_kick_delay_us: 50,
        }
    }
}

/// `[packet]`: checks made on every request before the handler sees it, and the reply's IP header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PacketConfig {
    /// Drop (and count) requests whose UDP checksum does not verify. A correct checksum, a zero one over
    /// IPv4 and the pseudo-header-only value an offloading sender leaves are accepted. Off saves one pass over
    /// each payload; turn it off only where the NIC verifies checksums in hardware.
    pub verify_udp_checksum: bool,
    /// TTL / hop limit of every reply, 1..=255 (default 64, the kernel's own default): a fresh value rather
    /// than what is left of the request's.
    pub reply_ttl: u16,
    /// DSCP of every reply, 0..=63 (default 0, best effort); ECN is always not-ECT. The request's TOS /
    /// traffic class is never copied: its ECN bits describe the request's path, not the reply's.
    pub reply_dscp: u16,
}

impl Default for PacketConfig {
    fn default() -> Self {
        let r = RespondOptions::default();
        PacketConfig {
            verify_udp_checksum: r.verify_udp_checksum,
            reply_ttl: r.reply_ttl.into(),
            reply_dscp: r.reply_dscp.into(),
        }
    }
}

impl PacketConfig {
    /// The datapath's view of these settings; the MTU is the default until the control plane sets the
    /// interface's ([`RespondOptions::with_mtu`]). Values out of range (refused by [`Config::validate`]) fall
    /// back to the defaults.
    pub fn respond_options(&self) -> RespondOptions {
        let d = RespondOptions::default();
        RespondOptions {
            verify_udp_checksum: self.verify_udp_checksum,
            reply_ttl: u8::try_from(self.reply_ttl).ok().filter(|&t| t > 0).unwrap_or(d.reply_ttl),
            reply_dscp: u8::try_from(self.reply_dscp).ok().filter(|&c| c <= 63).unwrap_or(d.reply_dscp),
            ..d
        }
    }
}

/// `[umem]`: per-queue packet memory and ring sizes. Ring sizes must be powers of two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UmemConfig {
    /// Frames in each queue's UMEM.
    pub frame_count: u32,
    /// Bytes per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Fill ring entries.
    pub fill_ring: u32,
    /// Completion ring entries.
    pub completion_ring: u32,
    /// RX ring entries.
    pub rx_ring: u32,
    /// TX ring entries.
    pub tx_ring: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        let p = datapath::afxdp::UmemParams::default();
        UmemConfig {
            frame_count: p.frame_count,
            frame_size: p.frame_size,
            fill_ring: p.fill_ring,
            completion_ring: p.completion_ring,
            rx_ring: p.rx_ring,
            tx_ring: p.tx_ring,
        }
    }
}

impl UmemConfig {
    /// The datapath's view of these sizes.
    pub fn params(&self) -> datapath::afxdp::UmemParams {
        datapath::afxdp::UmemParams {
            frame_count: self.frame_count,
            frame_size: self.frame_size,
            fill_ring: self.fill_ring,
            completion_ring: self.completion_ring,
            rx_ring: self.rx_ring,
            tx_ring: self.tx_ring,
        }
    }
}

/// `[latency]`: in-server latency histograms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LatencyConfig {
    /// Stamp packets in XDP and record ring dwell / service / total latency and RX batch sizes.
    pub enabled: bool,
    /// Highest latency the histograms track, in ns; larger values are recorded as this.
    pub highest_ns: u64,
    /// How packets are stamped with the XDP-hook time, for `ring_dwell` and `total` (AF_XDP only).
    pub stamp: StampChoice,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig { enabled: true, highest_ns: 1_000_000_000, stamp: StampChoice::Auto }
    }
}

/// `[report]`: what is reported and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Milliseconds between periodic report lines (and histogram swaps).
    pub interval_ms: u64,
    /// Write the final report as JSON to this file.
    pub json: Option<String>,
    /// Write an HdrHistogram interval log to this file.
    pub hdr_log: Option<String>,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig { interval_ms: 1000, json: None, hdr_log: None }
    }
}

/// `[limits]`: abuse resistance, enforced in the XDP program before a request is steered, so abuse never
/// reaches the workers: filtered and over-rate requests are dropped and counted (`xdp.filtered`,
/// `xdp.rate_limited`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Drop requests from sources no real client has: unspecified, loopback, multicast and broadcast
    /// addresses, this host's own addresses, source port 0, `deny_source_ports`, `deny`, and (when `allow`
    /// is not empty) anything outside `allow`.
    pub filter_sources: bool,
    /// Source ports of reflection-prone services, whose "requests" are replies being reflected at us.
    pub deny_source_ports: Vec<u16>,
    /// When not empty, the only source prefixes served (CIDR, IPv4 or IPv6).
    pub allow: Vec<ipnet::IpNet>,
    /// Source prefixes never served.
    pub deny: Vec<ipnet::IpNet>,
    /// Requests per second each source address may send (a token bucket in XDP); 0: no limit.
    pub per_source_pps: u64,
    /// Requests a source may send at once above its rate.
    pub per_source_burst: u64,
    /// Sources the rate limiter tracks at once (least recently seen ones are evicted).
    pub table_size: u32,
}

/// The default reflection-prone source ports: echo, chargen, DNS, NTP, SNMP, CLDAP, SSDP, memcached.
pub const DEFAULT_DENY_SOURCE_PORTS: [u16; 8] = [17, 19, 53, 123, 161, 389, 1900, 11211];

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            filter_sources: true,
            deny_source_ports: DEFAULT_DENY_SOURCE_PORTS.to_vec(),
            allow: Vec::new(),
            deny: Vec::new(),
            // Off by default: one legitimate source can be very busy (a large resolver's egress address sends
            // an authoritative server tens of thousands of queries a second), and a limit that fits the
            // clients can only be set by someone who knows them.
            per_source_pps: 0,
            per_source_burst: 1_000,
            table_size: 65_536,
        }
    }
}

impl LimitsConfig {
    /// The steering program's view of these limits, with this host's `own` addresses.
    pub fn source_policy(&self, own: Vec<std::net::IpAddr>) -> steer::SourcePolicy {
        steer::SourcePolicy {
            filter: self.filter_sources,
            deny_source_ports: self.deny_source_ports.clone(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            own,
            rate: (self.per_source_pps > 0).then_some((self.per_source_pps, self.per_source_burst)),
        }
    }
}

/// `[sends]`: the datagrams handlers send through their outbox (`Outbox::send`), besides in-place replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendsConfig {
    /// Sends one worker allows per AF_XDP RX batch, recvmmsg batch or io_uring turn (per datagram in the
    /// socket models that answer datagram by datagram) and per timer turn; more are refused and counted
    /// (`send_batch_limit`). On kernel sockets, also the send buffers each worker allocates. 0: a
    /// handler can only reply in place.
    pub per_batch: u32,
    /// AF_XDP: destinations whose next-hop MAC each worker caches (from the kernel's routing and neighbour
    /// tables, kept current through netlink events).
    pub neighbours: u32,
}

impl Default for SendsConfig {
    fn default() -> Self {
        SendsConfig { per_batch: 64, neighbours: 1024 }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address (e.g. "127.0.0.1:9464"); off when absent.
    pub listen: Option<String>,
}

/// Entries in the XSKMAP (MAX_QUEUES in bpf/shunt.bpf.c): queue ids must be below it.
pub const MAX_QUEUES: u32 = 256;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// The built-in defaults for serving `ports` on `interface`, with no config file: every other key as
    /// config/example.toml documents its default. Validated (an empty `ports` is refused, naming the key).
    pub fn defaults_for(interface: &str, ports: &[u16]) -> Result<Config, ConfigError> {
        let text = format!(
            "interface = {}\nports = [{}]\n",
            toml::Value::String(interface.to_string()),
            ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        );
        Config::parse(&text, "the command line (no --config)")
    }

    /// The configuration as TOML, every key with its value (defaults included).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print the configuration: {e}\n"))
    }

    /// Parses and validates config text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim().to_string(),
        };
        let mut config: Config = toml::from_str(text).map_err(parse_error)?;
        // serde's alias forgets which spelling it read: look at the raw value to tell the user.
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        if table.get("mode").and_then(toml::Value::as_str) == Some(DEPRECATED_IN_KERNEL_MODE) {
            config.deprecate_in_kernel_spelling("mode =");
        }
        config.validate()?;
        Ok(config)
    }

    /// Notes that `mode` was given as `"xdp"` (`key` names where: the file's key or the flag).
    pub fn deprecate_in_kernel_spelling(&mut self, key: &str) {
        self.deprecated.push(in_kernel_mode_deprecation(key));
    }

    /// Logs each deprecated spelling this configuration was written with (`tracing::warn!`).
    pub fn warn_deprecated(&self) {
        for message in &self.deprecated {
            tracing::warn!("{message}");
        }
    }

    /// Checks every value that can be checked without looking at the machine.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interface.is_empty() || self.interface.len() > 15 {
            return Err(invalid("interface", "must be an interface name of 1 to 15 bytes"));
        }
        if self.ports.is_empty() {
            return Err(invalid("ports", "at least one UDP port is needed"));
        }
        if let Some(i) = self.ports.iter().position(|&p| p == 0) {
            return Err(invalid(format!("ports[{i}]"), "port 0 cannot be served"));
        }
        if let Some((i, p)) = first_repeat(&self.ports) {
            return Err(invalid(format!("ports[{i}]"), format!("port {p} is listed twice")));
        }
        if self.sends.per_batch > 4096 {
            return Err(invalid("sends.per_batch", "at most 4096 sends per batch"));
        }
        if !(1..=1 << 20).contains(&self.sends.neighbours) {
            return Err(invalid("sends.neighbours", "must be 1 to 1048576 cached destinations"));
        }
        let w = &self.workers;
        if w.queues.is_empty() {
            return Err(invalid("workers.queues", "at least one queue is needed"));
        }
        if let Some(i) = w.queues.iter().position(|&q| q >= MAX_QUEUES) {
            return Err(invalid(format!("workers.queues[{i}]"), format!("queue ids must be below {MAX_QUEUES}")));
        }
        if let Some((i, q)) = first_repeat(&w.queues) {
            return Err(invalid(format!("workers.queues[{i}]"), format!("queue {q} is listed twice")));
        }
        if w.cores.len() != w.queues.len() {
            return Err(invalid(
                "workers.cores",
                format!("{} cores for {} queues: give one core per queue", w.cores.len(), w.queues.len()),
            ));
        }
        if let Some((i, c)) = first_repeat(&w.cores) {
            return Err(invalid(format!("workers.cores[{i}]"), format!("core {c} is used twice")));
        }
        if w.spin_us > 1_000_000 {
            return Err(invalid("workers.spin_us", "must be at most 1000000 (1 s)"));
        }
        if w.tx_kick_batch == 0 || w.tx_kick_batch > self.umem.tx_ring {
            return Err(invalid("workers.tx_kick_batch", "must be between 1 and umem.tx_ring"));
        }
        if w.tx_kick_delay_us > 1_000_000 {
            return Err(invalid("workers.tx_kick_delay_us", "must be at most 1000000 (1 s)"));
        }
        if w.batch_size == 0 || w.batch_size > 1024 {
            return Err(invalid("workers.batch_size", "must be between 1 and 1024"));
        }
        let u = &self.umem;
        if u.frame_size != 2048 && u.frame_size != 4096 {
            return Err(invalid("umem.frame_size", "must be 2048 or 4096"));
        }
        for (key, v) in [
            ("umem.fill_ring", u.fill_ring),
            ("umem.completion_ring", u.completion_ring),
            ("umem.rx_ring", u.rx_ring),
            ("umem.tx_ring", u.tx_ring),
        ] {
            if !v.is_power_of_two() || !(64..=32768).contains(&v) {
                return Err(invalid(key, format!("{v} is not a power of two between 64 and 32768")));
            }
        }
        // Every frame on the TX ring comes back through the completion ring; a smaller one would leave sent
        // frames nowhere to go, and the pool would shrink.
        if u.completion_ring < u.tx_ring {
            return Err(invalid(
                "umem.completion_ring",
                format!(
                    "{} is smaller than umem.tx_ring ({}): it must be at least as large",
                    u.completion_ring, u.tx_ring
                ),
            ));
        }
        if w.batch_size > u.rx_ring.min(u.tx_ring) {
            return Err(invalid("workers.batch_size", "must not exceed umem.rx_ring or umem.tx_ring"));
        }
        // Every ring may hold frames at the same time only if there are enough of them; fewer would let the
        // fill ring run dry while replies sit in TX.
        let needed = u.fill_ring + u.tx_ring;
        if u.frame_count < needed {
            return Err(invalid(
                "umem.frame_count",
                format!("{} frames cannot keep the fill ring and TX ring full (need at least {needed})", u.frame_count),
            ));
        }
        if u.frame_count > 1 << 20 {
            return Err(invalid("umem.frame_count", "at most 1048576 frames per queue"));
        }
        if !(1_000..=3_600_000_000_000).contains(&self.latency.highest_ns) {
            return Err(invalid("latency.highest_ns", "must be between 1000 (1 us) and 3600000000000 (1 h)"));
        }
        if !(10..=3_600_000).contains(&self.report.interval_ms) {
            return Err(invalid("report.interval_ms", "must be between 10 and 3600000"));
        }
        let l = &self.limits;
        if l.per_source_pps > 1_000_000_000 {
            return Err(invalid("limits.per_source_pps", "must be at most 1000000000 (0 turns the limit off)"));
        }
        if l.per_source_pps > 0 && !(1..=1_000_000_000).contains(&l.per_source_burst) {
            return Err(invalid("limits.per_source_burst", "must be between 1 and 1000000000 when a rate is set"));
        }
        if !(1..=16_777_216).contains(&l.table_size) {
            return Err(invalid("limits.table_size", "must be between 1 and 16777216"));
        }
        if let Some(i) = l.deny_source_ports.iter().position(|&p| p == 0) {
            return Err(invalid(
                format!("limits.deny_source_ports[{i}]"),
                "port 0 is always filtered; list real ports",
            ));
        }
        if l.allow.len() > 1024 || l.deny.len() > 1024 {
            return Err(invalid(
                if l.allow.len() > 1024 { "limits.allow" } else { "limits.deny" },
                "at most 1024 prefixes",
            ));
        }
        if !l.allow.is_empty() && !l.filter_sources {
            return Err(invalid("limits.allow", "an allow-list needs limits.filter_sources = true"));
        }
        if let Some(addresses) = &self.xdp.addresses {
            if addresses.is_empty() {
                return Err(invalid(
                    "xdp.addresses",
                    "an empty list would serve nothing: list the addresses to serve, or leave the key out to serve \
                     the interface's own addresses",
                ));
            }
            if addresses.len() > steer::MAX_SERVED_ADDRESSES {
                return Err(invalid("xdp.addresses", format!("at most {} addresses", steer::MAX_SERVED_ADDRESSES)));
            }
            if let Some(i) = addresses.iter().position(|a| a.is_unspecified()) {
                return Err(invalid(
                    format!("xdp.addresses[{i}]"),
                    format!("{} is never a packet's destination", addresses[i]),
                ));
            }
            if let Some((i, a)) = first_repeat(addresses) {
                return Err(invalid(format!("xdp.addresses[{i}]"), format!("{a} is listed twice")));
            }
        }
        if self.mode == Mode::Socket {
            if self.socket.io == SocketIo::Blocking && self.ports.len() != 1 {
                return Err(invalid("socket.io", "\"blocking\" waits on one socket, so it serves exactly one port"));
            }
            if !(1..=1024).contains(&self.socket.batch) {
                return Err(invalid("socket.batch", "must be between 1 and 1024"));
            }
            if !(4096..=(1 << 30)).contains(&self.socket.receive_buffer) {
                return Err(invalid("socket.receive_buffer", "must be between 4096 and 1073741824 bytes"));
            }
        }
        let p = &self.packet;
        if !(1..=255).contains(&p.reply_ttl) {
            return Err(invalid("packet.reply_ttl", "must be between 1 and 255"));
        }
        if p.reply_dscp > 63 {
            return Err(invalid("packet.reply_dscp", "must be between 0 and 63 (a DSCP; ECN is always not-ECT)"));
        }
        // The other datapaths write their own reply headers: the kernel's stack (mode = "socket") takes its
        // TTL and TOS from sysctls and socket options, the in-kernel server (mode = "in-kernel") writes TTL 64 and
        // DSCP 0. Refuse rather than silently ignore a setting they would not honour.
        let default = PacketConfig::default();
        if self.mode != Mode::Afxdp && (p.reply_ttl != default.reply_ttl || p.reply_dscp != default.reply_dscp) {
            return Err(invalid(
                if p.reply_ttl != default.reply_ttl { "packet.reply_ttl" } else { "packet.reply_dscp" },
                format!(
                    "only mode = \"afxdp\" writes its own reply headers; mode = \"{}\" keeps the defaults",
                    self.mode.name()
                ),
            ));
        }
        if let Some(addr) = &self.metrics.listen {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("metrics.listen", format!("{addr:?} is not ADDR:PORT ({e})")))?;
        }
        Ok(())
    }
}

fn first_repeat<T: Ord + Copy>(items: &[T]) -> Option<(usize, T)> {
    let mut seen = BTreeSet::new();
    items.iter().enumerate().find(|(_, v)| !seen.insert(**v)).map(|(i, v)| (i, *v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml")
    }

    const MINIMAL: &str = "interface = \"eth0\"\nports = [9000]\n";

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.handler, HandlerKind::Echo);
        assert_eq!(c.workers, WorkersConfig::default());
        assert_eq!(c.umem, UmemConfig::default());
        assert_eq!(c.xdp.attach_mode, AttachMode::Native);
        assert_eq!(c.xdp.addresses, None, "by default the interface's own addresses are served");
    }

    #[test]
    fn the_old_in_kernel_mode_name_still_parses_with_a_deprecation() {
        let old = parse(&format!("mode = \"xdp\"\n{MINIMAL}")).unwrap();
        assert_eq!(old.mode, Mode::InKernel);
        assert_eq!(old.deprecated.len(), 1, "{:?}", old.deprecated);
        let message = &old.deprecated[0];
        assert!(message.contains("removed") && message.contains("mode = \"in-kernel\""), "{message}");
        let new = parse(&format!("mode = \"in-kernel\"\n{MINIMAL}")).unwrap();
        assert_eq!(new.mode, Mode::InKernel);
        assert!(new.deprecated.is_empty(), "{:?}", new.deprecated);
        // A port or interface called "xdp" is no deprecated mode.
        let other = parse("interface = \"xdp\"\nports = [9000]\n").unwrap();
        assert!(other.deprecated.is_empty(), "{:?}", other.deprecated);
    }

    #[test]
    fn the_in_kernel_mode_round_trips_through_the_printed_config() {
        let old = parse(&format!("mode = \"xdp\"\n{MINIMAL}")).unwrap();
        let printed = old.to_toml();
        assert!(printed.contains("mode = \"in-kernel\""), "{printed}");
        let again = parse(&printed).unwrap();
        assert_eq!(again.mode, Mode::InKernel);
        assert!(again.deprecated.is_empty(), "the printed config uses the new name: {:?}", again.deprecated);
        assert_eq!(Mode::InKernel.name(), "in-kernel");
    }

    #[test]
    fn served_addresses_parse() {
        let c = parse(&format!("{MINIMAL}[xdp]\naddresses = [\"198.18.0.1\", \"2001:2::1\"]\n")).unwrap();
        let want: Vec<std::net::IpAddr> = vec!["198.18.0.1".parse().unwrap(), "2001:2::1".parse().unwrap()];
        assert_eq!(c.xdp.addresses, Some(want));
        let e = parse(&format!("{MINIMAL}[xdp]\naddresses = [\"198.18.0.0/24\"]\n")).unwrap_err().to_string();
        assert!(e.contains("addresses"), "{e}");
    }

    #[test]
    fn example_and_lab_files_are_valid() {
        for f in ["config/example.toml", "config/lab.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn reply_header_keys_are_checked_and_reach_the_datapath() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!((c.packet.reply_ttl, c.packet.reply_dscp), (64, 0));
        assert_eq!(c.packet.respond_options(), RespondOptions::default());
        let c = parse(&format!("{MINIMAL}[packet]\nreply_ttl = 255\nreply_dscp = 46\n")).unwrap();
        let o = c.packet.respond_options();
        assert_eq!((o.reply_ttl, o.reply_dscp, o.mtu), (255, 46, RespondOptions::default().mtu));
        for (text, key) in [
            ("reply_ttl = 0", "packet.reply_ttl"),
            ("reply_ttl = 256", "packet.reply_ttl"),
            ("reply_dscp = 64", "packet.reply_dscp"),
        ] {
            let e = parse(&format!("{MINIMAL}[packet]\n{text}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = parse(&format!("{MINIMAL}mode = \"xdp\"\n[packet]\nreply_ttl = 9\n")).unwrap_err().to_string();
        assert!(e.contains("packet.reply_ttl") && e.contains("afxdp"), "{e}");
        parse(&format!("{MINIMAL}mode = \"socket\"\n[packet]\nreply_ttl = 64\n")).unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse(&format!("{MINIMAL}colour = 1\n")).unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
        let e = parse(&format!("{MINIMAL}[umem]\nframes = 1\n")).unwrap_err().to_string();
        assert!(e.contains("frames"), "{e}");
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse("interface = \"eth0\"\nports = [\"x\"]\n").unwrap_err().to_string();
        assert!(e.contains("ports"), "{e}");
        let e = parse(&format!("{MINIMAL}[packet]\nverify_udp_checksum = 1\n")).unwrap_err().to_string();
        assert!(e.contains("verify_udp_checksum"), "{e}");
        let e = parse(&format!("{MINIMAL}[limits]\ndeny = [\"198.18.0.0/33\"]\n")).unwrap_err().to_string();
        assert!(e.contains("deny"), "{e}");
        let e = parse(&format!("{MINIMAL}handler = \"nope\"\n")).unwrap_err().to_string();
        assert!(e.contains("handler") && e.contains("nope"), "{e}");
    }

    #[test]
    fn defaults_serve_with_only_an_interface_and_ports() {
        let c = Config::defaults_for("eth0", &[53, 9000]).unwrap();
        assert_eq!((c.interface.as_str(), c.ports.as_slice()), ("eth0", &[53, 9000][..]));
        assert_eq!(c, parse(&c.to_toml()).unwrap(), "the printed config reads back as the same config");
        let e = Config::defaults_for("eth0", &[]).unwrap_err().to_string();
        assert!(e.contains("`ports`"), "{e}");
        let e = Config::defaults_for("a-name-longer-than-15", &[53]).unwrap_err().to_string();
        assert!(e.contains("`interface`"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("interface = \"\"\nports = [1]\n", "interface"),
            ("interface = \"eth0\"\nports = []\n", "ports"),
            ("interface = \"eth0\"\nports = [0]\n", "ports[0]"),
            ("interface = \"eth0\"\nports = [5, 5]\n", "ports[1]"),
            (&format!("{MINIMAL}[workers]\nqueues = [0, 1]\ncores = [1]\n"), "workers.cores"),
            (&format!("{MINIMAL}[workers]\nqueues = [0, 1]\ncores = [1, 1]\n"), "workers.cores[1]"),
            (&format!("{MINIMAL}[workers]\nqueues = [3, 3]\ncores = [0, 1]\n"), "workers.queues[1]"),
            (&format!("{MINIMAL}[workers]\nqueues = []\ncores = []\n"), "workers.queues"),
            (&format!("{MINIMAL}[workers]\nbatch_size = 0\n"), "workers.batch_size"),
            (&format!("{MINIMAL}[umem]\nframe_size = 3000\n"), "umem.frame_size"),
            (&format!("{MINIMAL}[umem]\nrx_ring = 1000\n"), "umem.rx_ring"),
            (&format!("{MINIMAL}[umem]\nframe_count = 100\n"), "umem.frame_count"),
            (&format!("{MINIMAL}[umem]\ncompletion_ring = 2048\n"), "umem.completion_ring"),
            (&format!("{MINIMAL}[latency]\nhighest_ns = 5\n"), "latency.highest_ns"),
            (&format!("{MINIMAL}[report]\ninterval_ms = 0\n"), "report.interval_ms"),
            (&format!("{MINIMAL}[metrics]\nlisten = \"localhost\"\n"), "metrics.listen"),
            (&format!("{MINIMAL}[limits]\nper_source_pps = 100\nper_source_burst = 0\n"), "limits.per_source_burst"),
            (&format!("{MINIMAL}[limits]\ntable_size = 0\n"), "limits.table_size"),
            (&format!("{MINIMAL}[limits]\ndeny_source_ports = [53, 0]\n"), "limits.deny_source_ports[1]"),
            (&format!("{MINIMAL}[limits]\nfilter_sources = false\nallow = [\"198.18.0.0/15\"]\n"), "limits.allow"),
            (&format!("{MINIMAL}[xdp]\naddresses = []\n"), "xdp.addresses"),
            (&format!("{MINIMAL}[xdp]\naddresses = [\"198.18.0.1\", \"0.0.0.0\"]\n"), "xdp.addresses[1]"),
            (&format!("{MINIMAL}[xdp]\naddresses = [\"2001:2::1\", \"2001:2::1\"]\n"), "xdp.addresses[1]"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "expected key {key} in: {e}");
        }
    }
}
