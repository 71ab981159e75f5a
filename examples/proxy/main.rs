//! A UDP forwarder and load balancer (in the manner of quilkin) built on shunt's public Handler API: what a
//! handler that sends to third parties, owns ports and keeps timers looks like.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/proxy --config config/lab.toml --interface IF --port 53 \
//!     --backend 198.18.2.1:53 --backend 198.18.2.2:53 --backend '[2001:2:0:2::1]:53' \
//!     --proxy-ports 40000-40999 --idle-timeout-ms 30000
//! ```
//!
//! It takes every flag of `shunt serve` (`--config`, `--interface`, `--port`, `--mode`, `--io`, `--cores`,
//! `--report`, ...; `--handler` excepted) plus its own:
//!
//! - `--backend ADDR:PORT` (repeatable, at least one): where client flows go. IPv4 clients go to IPv4
//!   backends, IPv6 clients to IPv6 ones; a client whose IP version has no backend is dropped (`no_backend`).
//! - `--proxy-ports START-END` (default 40000-40999): the proxy-side ports, which the handler owns
//!   ([`Handler::owned_ports`]: the server steers or binds them like `--port`). Every live flow has one of its
//!   own, so a backend's answer on port P belongs to exactly one client flow.
//! - `--idle-timeout-ms MS` (default 60000): a flow with no packet either way for this long is forgotten,
//!   and its port freed.
//! - `--max-flows N` (default: one per proxy port): the flow table's size. When it is full, a new flow
//!   evicts the least recently used one (`evicted`) and takes its port.
//!
//! What it does. A datagram from a client to a served port is sent on, unchanged, to the client flow's
//! backend, from the served address the client sent to and the flow's proxy port. A flow is the client's
//! address and port (and the served address and port it sent to); a new one gets a backend by rendezvous
//! hashing of the client's address and port (sticky, and adding or removing a backend moves only about 1/n of
//! the flows), and the free proxy port that has been free longest. A datagram from that backend to that proxy
//! port is sent, unchanged, to the client, from the served address and port the client sent to. Anything else
//! arriving on a proxy port is dropped and counted: on a port with no live flow (`unknown_port`), or from
//! someone other than the flow's backend (`foreign_source`); and a datagram to a served port from a backend's
//! own address and port is refused (`looped`: an echoing backend, or a source spoofed as one, would make the
//! proxy and the backend bounce it between them forever). Flows expire through the timer API
//! ([`Handler::poll_timeout`] / [`Handler::handle_timeout`]); time comes from the requests and timeouts, the
//! handler reads no clock.
//!
//! Amplification. Each datagram causes exactly one datagram of the same length (to the backend, or to the
//! client), so the declared [`Handler::budget`] is one packet of the request's length, and the proxy is no
//! amplifier. The backends' own answers may be larger than the queries: that is the backend's protocol, and
//! it is relayed only to the client that sent the query, from the port that flow owns. The backends' ports are
//! declared as client source ports ([`Handler::client_source_ports`]) so that the reflection filter
//! (`limits.deny_source_ports`, which lists 53) lets their answers in.
//!
//! Workers. Each worker has its own flow table (no locks), and the proxy ports are split between workers
//! (port START+j belongs to worker j mod n), and so is `--max-flows`. A client flow usually stays on one
//! worker (RSS and SO_REUSEPORT hash its addresses and ports; on veth the queue is the sender's CPU's, so a
//! client that migrates shows up on both, and gets a flow and a port on each: both work). But neither hands a
//! datagram to a worker by its destination port, so a backend's answer on port P may reach another worker
//! than P's owner. The owner publishes each
//! port's flow in a map all workers share (a sequence lock per port over atomics: no lock, no allocation),
//! and whichever worker an answer reaches relays it (`cross_worker` counts those it relayed for another) and
//! notes the time, which the owner reads before it expires the flow (such a flow may then outlive its idle
//! timeout by up to one more, as the owner's list is ordered by what it saw itself).
//!
//! Configuration. The proxy sends one datagram per datagram it receives, and `[sends] per_batch` bounds the
//! sends of one worker turn: at least `workers.batch_size` on AF_XDP, `socket.batch` with `socket.io =
//! "mmsg"`, an io_uring turn's buffers with `"io_uring"` (the models that answer datagram by datagram count
//! it per datagram). Beyond it sends are refused (`send_batch_limit`) and the datagrams lost; the proxy warns
//! at start-up when the configuration allows that.
//!
//! Eviction reuses the evicted flow's port at once: an answer still on its way to the old flow then reaches
//! the new one's client (from the same backend, so it passes the source check). Evicting the least recently
//! used flow makes that unlikely; a table sized for the flows (`--max-flows`, `--proxy-ports`) avoids it.
//!
//! The worker's own counters. A relayed datagram goes out through the outbox and the handler returns
//! [`Verdict::Handled`] (nothing goes back in place): the server's report counts it in `handled` and `sends`;
//! one the proxy refuses (no backend, a foreign source, ...) is [`Verdict::Drop`], in `dropped_by_handler`.
//!
//! Counters. Each worker logs its counters when it stops (`proxy worker stopped`); once the server has
//! stopped, the proxy prints one summary line over all workers (`proxy summary: flows=... evicted=...`) and
//! one per backend (`proxy backend ADDR: flows=... to_backend=... from_backend=...`) on stderr.
//!
//! `handle` runs on the hot path: it allocates nothing (the flow table is preallocated: an open-addressing
//! index, the slots with an intrusive LRU list, the slot index being the proxy port's), makes no system call
//! and cannot panic on any input. Its unit tests run with `cargo test --release --example proxy`;
//! `tests/proxy.rs` runs it in the lab in front of Knot DNS, with dnsperf.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod backends;
mod flows;
mod ports;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{CommandFactory, Parser};
use shunt::{
    control::{cli, WorkerInfo},
    handler::{Budget, Envelope, Time},
    Handler, Outbox, Request, Verdict,
};

use flows::FlowTable;
use ports::{Mapping, PortMap};

/// Flows expired per timer turn at most (the rest on the next turn), so that a turn stays short.
const EXPIRE_PER_TURN: usize = 1024;

/// The proxy's settings, the same for every worker.
#[derive(Debug, Clone)]
struct Settings {
    backends: Vec<SocketAddr>,
    /// First and last proxy port.
    ports: (u16, u16),
    idle_ns: u64,
    max_flows: usize,
    /// Workers in the server (the proxy ports and flows are split between them).
    workers: usize,
}

impl Settings {
    fn port_count(&self) -> usize {
        usize::from(self.ports.1 - self.ports.0) + 1
    }
}

/// Counters of one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct BackendCounters {
    /// Flows mapped to it.
    flows: u64,
    /// Datagrams sent to it.
    to_backend: u64,
    /// Datagrams from it relayed to clients.
    from_backend: u64,
}

/// Counters that are not per backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    /// Flows made.
    flows: u64,
    /// Flows evicted for a new one while the table was full.
    evicted: u64,
    /// Flows forgotten after the idle timeout.
    expired: u64,
    /// Datagrams to a proxy port with no live flow.
    unknown_port: u64,
    /// Datagrams to a live flow's proxy port from someone other than its backend.
    foreign_source: u64,
    /// Answers relayed for a flow of another worker (its port's answers reached this one).
    cross_worker: u64,
    /// Client datagrams of an IP version no backend has.
    no_backend: u64,
    /// Datagrams to a served port from a backend's own address and port (refused: a backend that echoes,
    /// or a source spoofed as one, would otherwise make the proxy and the backend loop).
    looped: u64,
    /// Sends the server refused (no buffer, batch limit, no route, ...).
    send_failed: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.flows += o.flows;
        self.evicted += o.evicted;
        self.expired += o.expired;
        self.unknown_port += o.unknown_port;
        self.foreign_source += o.foreign_source;
        self.cross_worker += o.cross_worker;
        self.no_backend += o.no_backend;
        self.looped += o.looped;
        self.send_failed += o.send_failed;
    }
}

/// All workers' counters, added up as each stops (off the hot path).
#[derive(Debug, Default)]
struct Summary {
    /// Workers whose counters are in.
    workers: usize,
    counters: Counters,
    backends: Vec<BackendCounters>,
}

/// The proxy handler: one per worker.
#[derive(Debug)]
struct Proxy {
    worker: usize,
    workers: usize,
    first_port: u16,
    last_port: u16,
    idle_ns: u64,
    backends: Vec<SocketAddr>,
    /// (index, address hash) of the IPv4 and the IPv6 backends.
    v4: Vec<(u16, u64)>,
    v6: Vec<(u16, u64)>,
    per_backend: Vec<BackendCounters>,
    counters: Counters,
    /// Every proxy port (all workers'): the server binds or steers them all.
    owned: Vec<u16>,
    client_ports: Vec<u16>,
    table: FlowTable,
    /// Every proxy port's flow, shared by all workers (each writes only its own ports).
    ports: Arc<PortMap>,
    /// Where to add this worker's counters when it stops, and which worker it is (for the log).
    summary: Option<Arc<Mutex<Summary>>>,
    info: Option<WorkerInfo>,
}

impl Proxy {
    /// Worker `worker`'s handler (of `settings.workers`), with the workers' shared port map.
    fn new(settings: &Settings, worker: usize, client_ports: Vec<u16>, ports: Arc<PortMap>) -> Proxy {
        let workers = settings.workers.max(1);
        let worker = worker % workers;
        // Port START+j is worker (j mod n)'s, as slot j / n of its table.
        let mine = (settings.port_count() + workers - 1 - worker) / workers;
        let share = settings.max_flows.div_ceil(workers);
        let family = |v4: bool| -> Vec<(u16, u64)> {
            let addrs = settings.backends.iter().enumerate().filter(|(_, a)| a.is_ipv4() == v4);
            addrs.map(|(i, a)| (i as u16, backends::addr_hash(*a))).collect()
        };
        Proxy {
            worker,
            workers,
            first_port: settings.ports.0,
            last_port: settings.ports.1,
            idle_ns: settings.idle_ns,
            backends: settings.backends.clone(),
            v4: family(true),
            v6: family(false),
            per_backend: vec![BackendCounters::default(); settings.backends.len()],
            counters: Counters::default(),
            owned: (settings.ports.0..=settings.ports.1).collect(),
            client_ports,
            table: FlowTable::new(mine.min(share).max(1)),
            ports,
            summary: None,
            info: None,
        }
    }

    /// The index (port - START) of this worker's slot `slot`'s proxy port.
    #[inline]
    fn index_of(slot: u32, worker: usize, workers: usize) -> usize {
        (slot as usize).saturating_mul(workers).saturating_add(worker)
    }

    /// The proxy port of this worker's slot `slot`.
    #[inline]
    fn port_of(&self, slot: u32) -> Option<u16> {
        let port = usize::from(self.first_port).checked_add(Self::index_of(slot, self.worker, self.workers))?;
        u16::try_from(port).ok().filter(|&p| p <= self.last_port)
    }

    /// A datagram from a client: on to its flow's backend.
    #[inline]
    fn on_client(&mut self, request: &Request, data: &[u8], out: &mut Outbox<'_>) -> bool {
        if self.backends.contains(&request.src) {
            self.counters.looped += 1;
            return false;
        }
        let now = request.now.monotonic_ns;
        let slot = match self.table.find(request.src, request.dst) {
            Some(slot) => {
                self.table.touch(slot, now);
                slot
            }
            None => {
                let candidates = if request.src.is_ipv4() { &self.v4 } else { &self.v6 };
                let Some(backend) = backends::pick(backends::addr_hash(request.src), candidates) else {
                    self.counters.no_backend += 1;
                    return false;
                };
                // Free the idle flows first: a slot they leave is better than evicting a live one.
                self.expire(request.now);
                let Some(inserted) = self.table.insert(request.src, request.dst, backend, now) else { return false };
                if inserted.evicted.is_some() {
                    self.counters.evicted += 1;
                }
                self.counters.flows += 1;
                if let Some(b) = self.per_backend.get_mut(usize::from(backend)) {
                    b.flows += 1;
                }
                // The port's answers may reach any worker: publish the flow (over the evicted one's).
                let mapping = Mapping { client: request.src, served: request.dst, backend };
                self.ports.set(Self::index_of(inserted.slot, self.worker, self.workers), Some(mapping));
                inserted.slot
            }
        };
        let Some(flow) = self.table.get(slot) else { return false };
        let backend = flow.backend;
        let (Some(&to), Some(port)) = (self.backends.get(usize::from(backend)), self.port_of(slot)) else {
            return false;
        };
        let from = SocketAddr::new(request.dst.ip(), port);
        if relay(out, Envelope::new(from, to), data) {
            if let Some(b) = self.per_backend.get_mut(usize::from(backend)) {
                b.to_backend += 1;
            }
            true
        } else {
            self.counters.send_failed += 1;
            false
        }
    }

    /// A datagram to proxy port `port`: from the backend of the flow that owns it, on to its client. The flow
    /// may be another worker's (the answer reached this one): the shared port map says which it is.
    #[inline]
    fn on_backend(&mut self, request: &Request, port: u16, data: &[u8], out: &mut Outbox<'_>) -> bool {
        let j = usize::from(port - self.first_port);
        let Some(flow) = self.ports.get(j) else {
            self.counters.unknown_port += 1;
            return false;
        };
        if self.backends.get(usize::from(flow.backend)) != Some(&request.src) {
            self.counters.foreign_source += 1;
            return false;
        }
        let now = request.now.monotonic_ns;
        if j % self.workers == self.worker {
            self.table.touch(u32::try_from(j / self.workers).unwrap_or(u32::MAX), now);
        } else {
            // The owner sees it when it looks for idle flows.
            self.ports.seen(j, now);
            self.counters.cross_worker += 1;
        }
        if relay(out, Envelope::new(flow.served, flow.client), data) {
            if let Some(b) = self.per_backend.get_mut(usize::from(flow.backend)) {
                b.from_backend += 1;
            }
            true
        } else {
            self.counters.send_failed += 1;
            false
        }
    }

    /// Forgets (some of) the flows idle since `now - idle`.
    #[inline]
    fn expire(&mut self, now: Time) {
        let Some(cutoff) = now.monotonic_ns.checked_sub(self.idle_ns) else { return };
        let (worker, workers, ports) = (self.worker, self.workers, &self.ports);
        let n = self.table.expire(
            cutoff,
            EXPIRE_PER_TURN,
            |slot| ports.seen_ns(Self::index_of(slot, worker, workers)),
            |slot, _| ports.set(Self::index_of(slot, worker, workers), None),
        );
        self.counters.expired += n as u64;
    }
}

/// Sends `data` unchanged in `envelope`; whether it was queued.
#[inline]
fn relay(out: &mut Outbox<'_>, envelope: Envelope, data: &[u8]) -> bool {
    let mut written = false;
    let sent = out.send(envelope, |buf| {
        buf.get_mut(..data.len())?.copy_from_slice(data);
        written = true;
        Some(data.len())
    });
    // `None` from the writer (a buffer shorter than the datagram) is Ok, but nothing was sent.
    sent.is_ok() && written
}

impl Handler for Proxy {
    #[inline]
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
        let Some(data) = payload.get(..len) else { return Verdict::Drop };
        let port = request.dst.port();
        let relayed = if (self.first_port..=self.last_port).contains(&port) {
            self.on_backend(request, port, data, out)
        } else {
            self.on_client(request, data, out)
        };
        // Nothing goes back in place: a datagram is relayed through the outbox (handled) or dropped.
        if relayed {
            Verdict::Handled
        } else {
            Verdict::Drop
        }
    }

    /// One datagram of the request's length, whichever way it goes: the proxy amplifies nothing.
    #[inline]
    fn budget(&self, request_len: usize) -> Budget {
        Budget { packets: 1, bytes: request_len }
    }

    /// The backends' ports: their answers come from them (53 for DNS, which the reflection filter lists).
    fn client_source_ports(&self) -> &[u16] {
        &self.client_ports
    }

    fn owned_ports(&self) -> &[u16] {
        &self.owned
    }

    #[inline]
    fn poll_timeout(&self) -> Option<u64> {
        self.table.oldest_ns().map(|t| t.saturating_add(self.idle_ns))
    }

    #[inline]
    fn handle_timeout(&mut self, now: Time, _out: &mut Outbox<'_>) {
        self.expire(now);
    }
}

impl Drop for Proxy {
    /// Runs on the worker's thread once it has stopped serving (off the hot path).
    fn drop(&mut self) {
        let Some(info) = self.info else { return };
        let c = &self.counters;
        tracing::info!(
            worker = info.index,
            queue = info.queue,
            live = self.table.len(),
            flows = c.flows,
            evicted = c.evicted,
            expired = c.expired,
            unknown_port = c.unknown_port,
            foreign_source = c.foreign_source,
            cross_worker = c.cross_worker,
            no_backend = c.no_backend,
            looped = c.looped,
            send_failed = c.send_failed,
            "proxy worker stopped"
        );
        if let Some(summary) = &self.summary {
            let mut s = summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            s.workers += 1;
            s.counters.add(c);
            s.backends.resize(self.per_backend.len(), BackendCounters::default());
            for (total, mine) in s.backends.iter_mut().zip(&self.per_backend) {
                total.flows += mine.flows;
                total.to_backend += mine.to_backend;
                total.from_backend += mine.from_backend;
            }
        }
    }
}

/// `Some((per_batch, wanted))` when `[sends] per_batch` is below the most datagrams one worker turn may take
/// in: an AF_XDP RX batch (`workers.batch_size`), a recvmmsg batch (`socket.batch`), an io_uring turn (as many
/// as its provided buffers: twice `socket.batch`, a power of two within 64..=512); the socket models that
/// answer datagram by datagram count the limit per datagram, so 1 is enough there.
fn sends_advice(config: &shunt::control::config::Config) -> Option<(u32, u32)> {
    use shunt::control::config::{Mode, SocketIo};
    let want = match (config.mode, config.socket.io) {
        (Mode::Afxdp, _) => config.workers.batch_size,
        (Mode::Socket, SocketIo::Mmsg) => config.socket.batch,
        (Mode::Socket, SocketIo::IoUring) => (2 * config.socket.batch).next_power_of_two().clamp(64, 512),
        (Mode::Socket, _) => 1,
        _ => return None,
    };
    (config.sends.per_batch < want).then_some((config.sends.per_batch, want))
}

/// `START-END`, two ports (1..=65535) with START <= END.
fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected START-END, e.g. 40000-40999"))?;
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p != 0);
    match (port(a), port(b)) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        _ => Err(format!("{s:?}: expected START-END with 1 <= START <= END <= 65535")),
    }
}

/// `shunt serve`'s flags plus the proxy's.
#[derive(Debug, Parser)]
#[command(
    name = "proxy",
    about = "A UDP forwarder / load balancer on shunt: relays client flows on the --port(s) to --backend(s)"
)]
struct Args {
    #[command(flatten)]
    serve: cli::ServeArgs,
    /// A backend, ADDR:PORT (IPv6 as [ADDR]:PORT); repeat for more. Clients go to backends of their IP version.
    #[arg(long = "backend", required = true)]
    backends: Vec<SocketAddr>,
    /// The proxy-side ports (owned by the proxy: backends answer on them), START-END.
    #[arg(long, default_value = "40000-40999", value_parser = parse_port_range)]
    proxy_ports: (u16, u16),
    /// A flow idle (no datagram either way) for this long is forgotten, in milliseconds.
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    idle_timeout_ms: u64,
    /// Flows at most (default: one per proxy port); when full, the least recently used flow is evicted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_535))]
    max_flows: Option<u64>,
}

impl Args {
    /// The settings, checked against the served ports (`served`) and the number of workers.
    fn settings(&self, served: &[u16], workers: usize) -> Result<Settings, String> {
        let (first, last) = self.proxy_ports;
        let count = usize::from(last - first) + 1;
        if let Some(p) = served.iter().find(|&&p| (first..=last).contains(&p)) {
            return Err(format!("--proxy-ports {first}-{last} includes the served port {p}"));
        }
        if self.backends.len() > usize::from(u16::MAX) {
            return Err("too many --backend".into());
        }
        if let Some(b) = self.backends.iter().find(|b| b.port() == 0 || b.ip().is_unspecified()) {
            return Err(format!("--backend {b}: needs an address and a port"));
        }
        let max_flows = self.max_flows.map_or(count, |m| m as usize);
        if max_flows > count {
            return Err(format!(
                "--max-flows {max_flows}: at most one flow per proxy port ({count} in {first}-{last})"
            ));
        }
        if count < workers {
            return Err(format!("--proxy-ports {first}-{last}: fewer ports than the {workers} workers"));
        }
        Ok(Settings {
            backends: self.backends.clone(),
            ports: (first, last),
            idle_ns: self.idle_timeout_ms * 1_000_000,
            max_flows,
            workers,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The server's own checks (and their exit code) come from cli::run below; here only what the proxy needs:
    // the served ports and the number of workers.
    let (served, workers, sends_advice) = match args.serve.load_config() {
        Ok(config) => (config.ports.clone(), config.workers.cores.len().max(1), sends_advice(&config)),
        Err(_) => (args.serve.ports.clone(), 1, None),
    };
    let settings = match args.settings(&served, workers) {
        Ok(s) => s,
        // clap's own error: the usage line, exit code 2 (the same as a bad `shunt serve` flag).
        Err(e) => Args::command().error(clap::error::ErrorKind::ValueValidation, e).exit(),
    };
    let mut backend_ports: Vec<u16> = settings.backends.iter().map(SocketAddr::port).collect();
    backend_ports.sort_unstable();
    backend_ports.dedup();
    let client_ports = backend_ports;
    let summary = Arc::new(Mutex::new(Summary::default()));
    let shared = summary.clone();
    let factory = settings.clone();
    let ports = Arc::new(PortMap::new(settings.port_count()));
    cli::init_logging();
    if let Some((per_batch, want)) = sends_advice {
        tracing::warn!(
            per_batch,
            want,
            "sends.per_batch is below what one batch or wake-up may receive: the proxy sends one datagram per \
             datagram, and sends beyond it are refused (send_batch_limit) and their datagrams lost"
        );
    }
    let code = cli::run_with_logging(args.serve, "proxy", move |worker| {
        let mut p = Proxy::new(&factory, worker.index, client_ports.clone(), ports.clone());
        p.summary = Some(shared.clone());
        p.info = Some(worker);
        p
    });
    let s = summary.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if s.workers == 0 {
        // The server did not start (its error is on stderr already): nothing was relayed.
        return code;
    }
    let c = s.counters;
    eprintln!(
        "proxy summary: flows={} evicted={} expired={} unknown_port={} foreign_source={} cross_worker={} \
         no_backend={} looped={} send_failed={}",
        c.flows,
        c.evicted,
        c.expired,
        c.unknown_port,
        c.foreign_source,
        c.cross_worker,
        c.no_backend,
        c.looped,
        c.send_failed
    );
    for (addr, b) in settings.backends.iter().zip(&s.backends) {
        eprintln!(
            "proxy backend {addr}: flows={} to_backend={} from_backend={}",
            b.flows, b.to_backend, b.from_backend
        );
    }
    code
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use shunt::handler::{testing::Harness, SendError};

    const MS: u64 = 1_000_000;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn settings(backends: &[&str], max_flows: usize) -> Settings {
        Settings {
            backends: backends.iter().map(|b| addr(b)).collect(),
            ports: (40000, 40009),
            idle_ns: 1_000 * MS,
            max_flows,
            workers: 1,
        }
    }

    fn proxy(backends: &[&str], max_flows: usize) -> Proxy {
        let s = settings(backends, max_flows);
        Proxy::new(&s, 0, vec![53], Arc::new(PortMap::new(s.port_count())))
    }

    fn at(ms: u64) -> Time {
        Time { unix_ns: 1_700_000_000_000_000_000 + ms * MS, monotonic_ns: 5_000 * MS + ms * MS }
    }

    /// A datagram from `src` to `dst` at `ms`.
    fn req(src: &str, dst: &str, ms: u64) -> Request {
        Request::new(addr(src), addr(dst), at(ms))
    }

    const SERVED: &str = "198.18.0.1:53";
    const SERVED6: &str = "[2001:2::1]:53";
    const B1: &str = "198.18.2.1:53";
    const B2: &str = "198.18.2.2:53";
    const B6: &str = "[2001:2:0:2::1]:53";

    /// Sends a client datagram and returns the one send it made (to the backend).
    fn forward(h: &mut Proxy, harness: &mut Harness, src: &str, dst: &str, ms: u64, body: &[u8]) -> Envelope {
        let a = harness.request(h, &req(src, dst, ms), body);
        assert_eq!(a.reply, None, "nothing in place");
        assert_eq!(a.sent.len(), 1, "one send per datagram: {a:?}");
        assert_eq!(a.sent[0].payload, body, "unchanged");
        a.sent[0].envelope
    }

    #[test]
    fn a_client_flow_is_mapped_to_a_backend_and_a_port_and_stays_there() {
        let mut h = proxy(&[B1, B2], 10);
        let mut harness = Harness::new().serving(&[53]);
        let e = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"query one");
        assert!(e.to == addr(B1) || e.to == addr(B2), "{e:?}");
        assert_eq!(e.from, addr("198.18.0.1:40000"), "from the served address and the first free proxy port");
        // Sticky: same backend, same port, however often.
        for ms in 1..5 {
            assert_eq!(forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, ms, b"again"), e);
        }
        // Another flow: its own port; rendezvous hashing gives its backend (whichever it is, always the same).
        let f = forward(&mut h, &mut harness, "198.18.0.2:5001", SERVED, 5, b"x");
        assert_eq!(f.from, addr("198.18.0.1:40001"));
        let again = forward(&mut h, &mut harness, "198.18.0.2:5001", SERVED, 6, b"y");
        assert_eq!(again, f);
        // Flows spread over both backends.
        let mut seen = std::collections::HashSet::new();
        for port in 6000..6008 {
            seen.insert(forward(&mut h, &mut harness, &format!("198.18.0.3:{port}"), SERVED, 7, b"z").to);
        }
        assert_eq!(seen.len(), 2, "both backends get flows: {seen:?}");
        assert_eq!(h.counters.flows, 10);
        assert_eq!(h.per_backend.iter().map(|b| b.flows).sum::<u64>(), 10);
        assert_eq!(h.per_backend.iter().map(|b| b.to_backend).sum::<u64>(), 15);
    }

    #[test]
    fn a_backend_answer_goes_back_to_the_client_from_the_address_it_sent_to() {
        let mut h = proxy(&[B1], 10);
        let mut harness = Harness::new().serving(&[53]);
        let e = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"question");
        let answer = b"a longer answer than the question";
        let a = harness.request(&mut h, &req(B1, &e.from.to_string(), 1), answer);
        assert_eq!(a.sent.len(), 1, "{a:?}");
        assert_eq!(a.sent[0].envelope, Envelope::new(addr(SERVED), addr("198.18.0.2:5000")));
        assert_eq!(a.sent[0].payload, answer);
        assert_eq!(h.per_backend[0], BackendCounters { flows: 1, to_backend: 1, from_backend: 1 });
        // Two clients, two ports: each answer goes to its own client.
        let f = forward(&mut h, &mut harness, "198.18.0.7:7", SERVED, 2, b"q");
        assert_ne!(f.from, e.from);
        let a = harness.request(&mut h, &req(B1, &f.from.to_string(), 3), b"for 7");
        assert_eq!(a.sent[0].envelope.to, addr("198.18.0.7:7"));
    }

    #[test]
    fn ipv4_and_ipv6_clients_go_to_backends_of_their_version_or_nowhere() {
        let mut h = proxy(&[B1, B6], 10);
        let mut harness = Harness::new().serving(&[53]);
        let e4 = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"v4");
        assert_eq!(e4.to, addr(B1));
        let e6 = forward(&mut h, &mut harness, "[2001:2::2]:5000", SERVED6, 0, b"v6");
        assert_eq!((e6.to, e6.from), (addr(B6), addr("[2001:2::1]:40001")));
        let a = harness.request(&mut h, &req(B6, "[2001:2::1]:40001", 1), b"answer");
        assert_eq!(a.sent[0].envelope, Envelope::new(addr(SERVED6), addr("[2001:2::2]:5000")));

        let mut only4 = proxy(&[B1], 10);
        let a = harness.request(&mut only4, &req("[2001:2::2]:5000", SERVED6, 0), b"v6");
        assert!(a.sent.is_empty());
        assert_eq!((only4.counters.no_backend, only4.counters.flows, only4.table.len()), (1, 0, 0));
    }

    #[test]
    fn idle_flows_expire_through_the_timer_and_free_their_port() {
        let mut h = proxy(&[B1], 10);
        let mut harness = Harness::new().serving(&[53]);
        assert_eq!(h.poll_timeout(), None, "no flow, no timer");
        let e = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"q");
        forward(&mut h, &mut harness, "198.18.0.2:5001", SERVED, 400, b"q");
        assert_eq!(h.poll_timeout(), Some(at(1_000).monotonic_ns), "the oldest flow's deadline");
        // An answer is traffic too: it keeps the flow, and the other one is now the oldest.
        let a = harness.request(&mut h, &req(B1, &e.from.to_string(), 500), b"a");
        assert_eq!(a.sent.len(), 1);
        assert_eq!(h.poll_timeout(), Some(at(1_400).monotonic_ns));
        assert!(!harness.timeout(&mut h, at(1_399)), "not due");
        assert!(harness.timeout(&mut h, at(1_400)));
        assert_eq!((h.counters.expired, h.table.len()), (1, 1));
        assert_eq!(h.poll_timeout(), Some(at(1_500).monotonic_ns));
        assert!(harness.timeout(&mut h, at(5_000)));
        assert_eq!((h.counters.expired, h.table.len(), h.poll_timeout()), (2, 0, None));
        // The expired flow's port answers nothing now.
        let a = harness.request(&mut h, &req(B1, &e.from.to_string(), 5_001), b"late");
        assert!(a.sent.is_empty());
        assert_eq!(h.counters.unknown_port, 1);
        // The same client again is a new flow (40000 and 40001 were freed last: an unused port first).
        let again = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 5_002, b"q");
        assert_eq!(again.from.port(), 40002);
        assert_eq!(h.counters.flows, 3);
        assert!(harness.sent.iter().all(|s| s.envelope.from.port() != 0), "timeouts send nothing");
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_used_flow_and_reuses_its_port() {
        let mut h = proxy(&[B1], 3);
        let mut harness = Harness::new().serving(&[53]);
        let ports: Vec<u16> = (0..3)
            .map(|i| forward(&mut h, &mut harness, &format!("198.18.0.2:{}", 5000 + i), SERVED, i, b"q").from.port())
            .collect();
        assert_eq!(ports, [40000, 40001, 40002]);
        forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 10, b"q"); // 5001 is now the oldest
        let e = forward(&mut h, &mut harness, "198.18.0.2:6000", SERVED, 11, b"new");
        assert_eq!(e.from.port(), 40001, "the evicted flow's port");
        assert_eq!((h.counters.evicted, h.counters.flows, h.table.len()), (1, 4, 3));
        // The port now answers the new flow, and the evicted client is a new flow again (evicting 5002).
        let a = harness.request(&mut h, &req(B1, "198.18.0.1:40001", 12), b"a");
        assert_eq!(a.sent[0].envelope.to, addr("198.18.0.2:6000"));
        let e = forward(&mut h, &mut harness, "198.18.0.2:5001", SERVED, 13, b"q");
        assert_eq!(e.from.port(), 40002);
        assert_eq!(h.counters.evicted, 2);
        // Ports past --max-flows are never used.
        assert!(harness.sent.iter().all(|s| s.envelope.from.port() <= 40002 || s.envelope.from.port() == 53));
    }

    #[test]
    fn idle_flows_are_freed_before_a_live_one_is_evicted() {
        let mut h = proxy(&[B1], 1);
        let mut harness = Harness::new().serving(&[53]);
        forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"q");
        // No timer turn ran, but the flow is idle: the new flow finds it expired, not evicted.
        forward(&mut h, &mut harness, "198.18.0.2:5001", SERVED, 2_000, b"q");
        assert_eq!((h.counters.expired, h.counters.evicted), (1, 0));
    }

    #[test]
    fn unknown_ports_foreign_sources_and_garbage_are_dropped_without_a_panic() {
        let mut h = proxy(&[B1, B6], 4);
        let mut harness = Harness::new().serving(&[53]);
        // Answers to ports with no flow, and to a port past the table.
        for port in [40000, 40003, 40009] {
            let a = harness.request(&mut h, &req(B1, &format!("198.18.0.1:{port}"), 0), b"stray");
            assert!(a.sent.is_empty());
        }
        assert_eq!(h.counters.unknown_port, 3);
        let e = forward(&mut h, &mut harness, "198.18.0.2:5000", SERVED, 0, b"q");
        // From someone else than the flow's backend (another backend, the client, another port).
        for src in [B6, "198.18.0.2:5000", "198.18.2.1:54", "198.18.2.9:53"] {
            let a = harness.request(&mut h, &req(src, &e.from.to_string(), 1), b"forged");
            assert!(a.sent.is_empty(), "{src}");
        }
        assert_eq!(h.counters.foreign_source, 4);
        // A backend's own address and port as a client: refused, or an echoing backend would loop with us.
        assert!(harness.request(&mut h, &req(B1, SERVED, 2), b"echo").sent.is_empty());
        assert_eq!(h.counters.looped, 1);
        assert_eq!(forward(&mut h, &mut harness, "198.18.2.1:5353", SERVED, 3, b"q").to, addr(B1), "other ports may");
        // Any payload is opaque: empty, one byte, the largest, random bytes, to any port.
        let mut x: u32 = 1;
        for i in 0..2_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = match i % 4 {
                0 => 0,
                1 => 1,
                2 => 1472,
                _ => (x % 1500) as usize,
            };
            let body: Vec<u8> = (0..len).map(|k| (x >> (k % 24)) as u8).collect();
            let src = if i % 3 == 0 { format!("198.18.0.{}:{}", x % 250, x % 65536) } else { B1.to_string() };
            let dst = format!("198.18.0.1:{}", if i % 2 == 0 { 53 } else { 40000 + x % 10 });
            let a = harness.request(&mut h, &req(&src, &dst, u64::from(i)), &body);
            assert!(a.sent.len() <= 1);
            assert!(a.sent.iter().all(|s| s.payload == body));
        }
        assert!(h.table.len() <= 4);
    }

    #[test]
    fn the_budget_is_one_datagram_of_the_requests_length() {
        let h = proxy(&[B1], 4);
        assert_eq!(h.budget(100), Budget { packets: 1, bytes: 100 });
        assert_eq!(h.client_source_ports(), &[53]);
        assert_eq!(h.owned_ports(), (40000..=40009).collect::<Vec<_>>().as_slice());
    }

    #[test]
    fn refused_sends_are_counted() {
        let mut h = proxy(&[B1], 4);
        let mut harness = Harness::new().serving(&[53]);
        harness.per_turn = 0;
        let a = harness.request(&mut h, &req("198.18.0.2:5000", SERVED, 0), b"q");
        assert!(a.sent.is_empty());
        assert_eq!(harness.refused, [SendError::BatchLimit]);
        assert_eq!((h.counters.send_failed, h.counters.flows), (1, 1));
        // A datagram longer than a send buffer is not sent truncated.
        harness.per_turn = 64;
        harness.send_room = 10;
        let a = harness.request(&mut h, &req("198.18.0.2:5000", SERVED, 1), &[7u8; 11]);
        assert!(a.sent.is_empty());
        assert_eq!(h.counters.send_failed, 2);
    }

    #[test]
    fn workers_split_the_ports_and_relay_each_others_answers() {
        let s = Settings { workers: 3, ..settings(&[B1], 10) };
        let map = Arc::new(PortMap::new(s.port_count()));
        let mut w1 = Proxy::new(&s, 1, vec![53], map.clone());
        let mut w2 = Proxy::new(&s, 2, vec![53], map);
        let mut harness = Harness::new().serving(&[53]);
        assert_eq!(w1.owned_ports().len(), 10, "every worker declares every port");
        let ports: Vec<u16> = (0..5)
            .map(|i| forward(&mut w1, &mut harness, &format!("198.18.0.2:{}", 5000 + i), SERVED, i, b"q").from.port())
            .collect();
        // Ports 40001, 40004, 40007 are worker 1's, and 10 flows over 3 workers is 4 each at most: 3 here.
        assert_eq!(ports[..3], [40001, 40004, 40007]);
        assert_eq!(ports[3], 40001, "evicted the oldest");
        assert_eq!(ports[4], 40004);
        // Worker 2's first flow takes its first port.
        assert_eq!(forward(&mut w2, &mut harness, "198.18.0.9:9", SERVED, 5, b"q").from.port(), 40002);

        // The answer on worker 1's port 40007 (client 5002) reaches worker 2, which relays it.
        let a = harness.request(&mut w2, &req(B1, "198.18.0.1:40007", 900), b"answer");
        assert_eq!(a.sent[0].envelope, Envelope::new(addr(SERVED), addr("198.18.0.2:5002")));
        assert_eq!((w2.counters.cross_worker, w2.per_backend[0].from_backend), (1, 1));
        // The evicted flow's port now carries the new flow, on every worker.
        let a = harness.request(&mut w2, &req(B1, "198.18.0.1:40001", 901), b"answer");
        assert_eq!(a.sent[0].envelope.to, addr("198.18.0.2:5003"));
        // A port no worker uses, and a foreign source, on any worker.
        assert!(harness.request(&mut w2, &req(B1, "198.18.0.1:40000", 902), b"a").sent.is_empty());
        assert!(harness.request(&mut w2, &req(B2, "198.18.0.1:40007", 902), b"a").sent.is_empty());
        assert_eq!((w2.counters.unknown_port, w2.counters.foreign_source), (1, 1));

        // Worker 1's timer: 5002 and 5003 were answered (by worker 2) at 900 and 901, so at 1,500 only 5004 is
        // idle; at 2,000 they all are.
        assert!(harness.timeout(&mut w1, at(1_500)));
        assert_eq!((w1.counters.expired, w1.table.len()), (1, 2), "5004 expired; 5002 and 5003 kept");
        assert!(harness.timeout(&mut w1, at(2_000)));
        assert_eq!((w1.counters.expired, w1.table.len()), (3, 0));
        // Expired flows are gone from the shared map too: their answers are unknown everywhere.
        assert!(harness.request(&mut w2, &req(B1, "198.18.0.1:40007", 2_001), b"late").sent.is_empty());
        assert_eq!(w2.counters.unknown_port, 2);
    }

    #[test]
    fn a_per_batch_send_limit_below_a_turns_intake_is_reported() {
        use shunt::control::config::{Config, Mode, SocketIo};
        let mut c = Config::defaults_for("lo", &[53]).unwrap();
        c.workers.batch_size = 64;
        c.sends.per_batch = 64;
        assert_eq!(sends_advice(&c), None, "AF_XDP: one RX batch");
        c.workers.batch_size = 128;
        assert_eq!(sends_advice(&c), Some((64, 128)));
        c.mode = Mode::Socket;
        c.socket.io = SocketIo::Epoll;
        assert_eq!(sends_advice(&c), None, "epoll: the limit is per datagram");
        c.socket.io = SocketIo::Mmsg;
        c.socket.batch = 32;
        assert_eq!(sends_advice(&c), None);
        c.socket.io = SocketIo::IoUring;
        assert_eq!(sends_advice(&c), None, "io_uring: 64 buffers, 64 sends");
        c.socket.batch = 128;
        assert_eq!(sends_advice(&c), Some((64, 256)), "io_uring: a turn may reap 256 datagrams");
        c.sends.per_batch = 0;
        c.socket.io = SocketIo::Epoll;
        assert_eq!(sends_advice(&c), Some((0, 1)));
    }

    #[test]
    fn flags_are_checked() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["proxy", "--interface", "x", "--port", "53"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv)
        };
        assert!(parse(&[]).is_err(), "a backend is required");
        let a = parse(&["--backend", B1, "--backend", B6]).unwrap();
        assert_eq!((a.proxy_ports, a.idle_timeout_ms, a.max_flows), ((40000, 40999), 60_000, None));
        assert_eq!(a.settings(&[53], 1).unwrap().max_flows, 1000);
        let a = parse(&["--backend", B1, "--proxy-ports", "41000-41010", "--max-flows", "11"]).unwrap();
        assert_eq!(a.settings(&[53], 1).unwrap().max_flows, 11);
        assert!(a.settings(&[41005], 1).unwrap_err().contains("served port 41005"));
        let a = parse(&["--backend", B1, "--proxy-ports", "41000-41010", "--max-flows", "12"]).unwrap();
        assert!(a.settings(&[53], 1).is_err(), "more flows than ports");
        for bad in ["60-50", "0-10", "x", "10-70000", "10"] {
            assert!(parse(&["--backend", B1, "--proxy-ports", bad]).is_err(), "{bad}");
        }
        let a = parse(&["--backend", "0.0.0.0:53"]).unwrap();
        assert!(a.settings(&[53], 1).is_err());
    }
}
