//! AF_XDP transport: shunt's own [`XskPort`] and steering program on the client interface. The program steers
//! replies to the client's source ports (one per flow) into the sockets and passes everything else (ARP,
//! neighbour discovery, other traffic) to the kernel. Frames are built with [`packet::write_request`] (full UDP
//! checksum, so even a reflector that only swaps headers returns a valid datagram).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    process::Command,
    sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use shunt::{
    client::XskPort,
    datapath::afxdp::{BindMode, QueueSocket, SocketOptions, UmemParams},
    packet::{self, FlowSpec},
    steer::{AttachMode, ProgramVariant, StampMethod, XdpLink, XdpProgram},
    sys,
};

use crate::{engine::Transport, payload::MAX_PAYLOAD};

/// Most frames per TX kick in copy mode (the kernel sends at most 32 per `sendto`).
const TX_BATCH: usize = 32;

/// Where and how to open the AF_XDP client.
#[derive(Debug, Clone)]
pub struct AfXdpOptions {
    /// The client interface.
    pub interface: String,
    /// Per sender thread: the queues it opens a socket on (its flows are spread over them) and its flow count.
    /// Thread i's source ports follow thread i-1's.
    pub threads: Vec<ThreadQueues>,
    /// Source port of flow 0 of thread 0; the flows of all threads use consecutive ports from here.
    pub src_port_base: u16,
    /// The server.
    pub target: SocketAddr,
    /// Our address (None: the interface's address of the target's family).
    pub src_ip: Option<IpAddr>,
    /// Ethernet source (None: the interface's).
    pub src_mac: Option<[u8; 6]>,
    /// Ethernet destination (None: from the kernel's neighbour table, resolved if needed).
    pub dst_mac: Option<[u8; 6]>,
    /// XDP attach mode (generic on veth for one queue; native for several, since the generic hook sees every
    /// veth packet on queue 0).
    pub attach_mode: AttachMode,
}

/// One sender thread's share of the AF_XDP client.
#[derive(Debug, Clone)]
pub struct ThreadQueues {
    /// Queues it owns a socket on (no two threads share a queue).
    pub queues: Vec<u32>,
    /// Flows (source ports) it sends from.
    pub flows: usize,
}

/// The steering program on the client interface, shared by every thread's sockets (one XSKMAP entry per queue,
/// every thread's source ports steered). Dropping it detaches the program: keep it for as long as the transports.
pub struct AfXdpShared {
    // Dropping the link detaches the program; keep the program (and its maps) alive as long.
    _link: XdpLink,
    _program: XdpProgram,
}

/// Replies one thread may hold for another before handing one over fails (and that reply counts as lost).
const CROSSING_CAPACITY: usize = 4096;

/// A reply that arrived on another thread's socket, on its way to the thread that sent the request.
struct Crossing {
    /// When the receiving thread read it off its RX ring.
    rx_ns: u64,
    len: usize,
    payload: [u8; MAX_PAYLOAD],
}

/// One thread's AF_XDP sockets.
///
/// A reply comes back on the queue the server sent it on. shunt answers on the queue a request came in on (on
/// veth the peer's receive queue is the sender's transmit queue), so a thread gets its own replies; a kernel-socket
/// server does not: SO_REUSEPORT picks the worker by a hash of the flow, and that worker's core picks the transmit
/// queue, so a reply may land on another thread's socket (an AF_XDP socket receives only from its own queue, so
/// the steering program cannot send it home). The thread that finds a reply for a port it does not own hands it to
/// the owner over a bounded channel, allocation-free after set-up; the owner accounts it with the receive time it
/// was read at. Without the hand-off such replies were lost (a two-thread generator lost replies against every
/// kernel-socket server).
pub struct AfXdpTransport {
    ports: Vec<XskPort>,
    flows: Vec<FlowSpec>,
    src_ports: Vec<u16>,
    /// Source port of flow 0 of thread 0, and each global flow's owner thread: who a reply is for.
    port_base: u16,
    owners: Vec<usize>,
    /// This thread's index, the other threads' inboxes (indexed by thread; `None` for this one) and its own.
    index: usize,
    outboxes: Vec<Option<SyncSender<Crossing>>>,
    inbox: Receiver<Crossing>,
    /// Replies handed to another thread, and those that found its inbox full (lost).
    handed_over: u64,
    hand_over_failed: u64,
}

impl Drop for AfXdpTransport {
    fn drop(&mut self) {
        if self.hand_over_failed > 0 {
            eprintln!(
                "shunt-bench: sender thread {}: {} of {} replies for other threads were lost (inbox full)",
                self.index, self.hand_over_failed, self.handed_over
            );
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.trim().split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC address {s:?}");
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC address {s:?}"))?;
    }
    Ok(m)
}

/// The MAC address of `interface` (from sysfs).
pub fn interface_mac(interface: &str) -> anyhow::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{interface}/address");
    parse_mac(&std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?)
}

/// The interface holding `ip` (via getifaddrs), and that interface's address of the other family if asked.
pub fn interface_of(ip: IpAddr) -> anyhow::Result<String> {
    let mut found = None;
    // SAFETY: getifaddrs allocates a list we walk read-only and free once.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) != 0 {
            return Err(io::Error::last_os_error()).context("getifaddrs");
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null() {
                let fam = (*ifa.ifa_addr).sa_family as i32;
                let addr: Option<IpAddr> = match fam {
                    libc::AF_INET => {
                        Some(IpAddr::from((*ifa.ifa_addr.cast::<libc::sockaddr_in>()).sin_addr.s_addr.to_ne_bytes()))
                    }
                    libc::AF_INET6 => {
                        Some(IpAddr::from((*ifa.ifa_addr.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr))
                    }
                    _ => None,
                };
                if addr == Some(ip) {
                    found = Some(std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned());
                    break;
                }
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    found.with_context(|| format!("no interface has address {ip}"))
}

/// The source address the kernel would use towards `target`.
pub fn route_source(target: SocketAddr) -> anyhow::Result<IpAddr> {
    let unspecified: IpAddr = if target.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
    let fd = crate::kernel::connected_socket(SocketAddr::new(unspecified, 0), target)
        .context("finding the route to the target")?;
    Ok(crate::kernel::local_addr(&fd)?.ip())
}

fn neighbour(ip: IpAddr, interface: &str) -> Option<[u8; 6]> {
    let out = Command::new("ip").args(["neigh", "show", "to", &ip.to_string(), "dev", interface]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.contains("FAILED") && !l.contains("INCOMPLETE"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return parse_mac(words.next()?).ok();
        }
    }
    None
}

/// The target's MAC from the neighbour table; if absent, pokes the kernel into resolving it (a datagram to the
/// discard port) and waits up to 2 s.
pub fn resolve_dst_mac(target: SocketAddr, interface: &str) -> anyhow::Result<[u8; 6]> {
    if let Some(m) = neighbour(target.ip(), interface) {
        return Ok(m);
    }
    let unspecified: IpAddr = if target.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(fd) =
            crate::kernel::connected_socket(SocketAddr::new(unspecified, 0), SocketAddr::new(target.ip(), 9))
        {
            use std::os::fd::AsRawFd;
            // SAFETY: sending one byte from a live buffer on a valid socket.
            unsafe { libc::send(fd.as_raw_fd(), b"x".as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        }
        std::thread::sleep(Duration::from_millis(50));
        if let Some(m) = neighbour(target.ip(), interface) {
            return Ok(m);
        }
    }
    bail!("cannot resolve the MAC address of {} on {interface}: pass --dst-mac", target.ip())
}

impl AfXdpTransport {
    /// Opens every thread's sockets, loads the program, steers all source ports and attaches it. Returns the
    /// shared program (keep it) and one transport per thread, in order.
    pub fn open(o: &AfXdpOptions) -> anyhow::Result<(AfXdpShared, Vec<AfXdpTransport>)> {
        let src_ip = match o.src_ip {
            Some(ip) => ip,
            None => route_source(o.target)?,
        };
        let src_mac = match o.src_mac {
            Some(m) => m,
            None => interface_mac(&o.interface)?,
        };
        // Resolve before attaching: from then on, ARP still works (our program passes it), but a first
        // resolution is simpler through the kernel's own socket path.
        let dst_mac = match o.dst_mac {
            Some(m) => m,
            None => resolve_dst_mac(o.target, &o.interface)?,
        };
        let _ = sys::raise_memlock_limit();
        if o.threads.is_empty() {
            bail!("no sender threads");
        }
        let total_flows: usize = o.threads.iter().map(|t| t.flows.max(1)).sum();
        if usize::from(o.src_port_base) + total_flows > 65_536 {
            bail!("source ports {} + {total_flows} flows exceed 65535", o.src_port_base);
        }
        let all_queues: Vec<u32> = o.threads.iter().flat_map(|t| t.queues.iter().copied()).collect();
        let mut distinct = all_queues.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != all_queues.len() {
            bail!("a queue can hold one AF_XDP socket: the threads' queues {all_queues:?} repeat one");
        }
        let all_ports: Vec<u16> = (0..total_flows).map(|i| o.src_port_base + i as u16).collect();
        let program =
            XdpProgram::load(ProgramVariant::Plain, StampMethod::None).context("loading shunt's XDP program")?;
        program.set_ports(&all_ports).context("steering the client's source ports")?;
        let owners: Vec<usize> =
            o.threads.iter().enumerate().flat_map(|(i, t)| std::iter::repeat_n(i, t.flows.max(1))).collect();
        let (senders, mut inboxes): (Vec<_>, Vec<_>) =
            o.threads.iter().map(|_| sync_channel::<Crossing>(CROSSING_CAPACITY)).map(|(s, r)| (s, Some(r))).unzip();
        let mut transports = Vec::new();
        let mut next_port = 0usize;
        for (index, t) in o.threads.iter().enumerate() {
            let mut ports = Vec::new();
            for &q in &t.queues {
                let socket = QueueSocket::open(&SocketOptions {
                    interface: o.interface.clone(),
                    queue: q,
                    bind_mode: BindMode::Copy,
                    umem: UmemParams {
                        frame_count: 4096,
                        frame_size: 2048,
                        fill_ring: 2048,
                        completion_ring: 2048,
                        rx_ring: 2048,
                        tx_ring: 2048,
                    },
                })
                .with_context(|| format!("opening an AF_XDP socket on {} queue {q}", o.interface))?;
                program.register_socket(q, socket.raw_fd())?;
                ports.push(XskPort::new(socket, 64));
            }
            if ports.is_empty() {
                bail!("a sender thread has no queue");
            }
            let src_ports = all_ports[next_port..next_port + t.flows.max(1)].to_vec();
            next_port += t.flows.max(1);
            let flows = src_ports
                .iter()
                .map(|&p| FlowSpec { src_mac, dst_mac, vlan_tci: None, src: SocketAddr::new(src_ip, p), dst: o.target })
                .collect();
            let outboxes = senders
                .iter()
                .enumerate()
                .map(|(j, s)| (j != index && o.threads.len() > 1).then(|| s.clone()))
                .collect();
            let inbox = inboxes[index].take().context("one inbox per thread")?;
            transports.push(AfXdpTransport {
                ports,
                flows,
                src_ports,
                port_base: o.src_port_base,
                owners: owners.clone(),
                index,
                outboxes,
                inbox,
                handed_over: 0,
                hand_over_failed: 0,
            });
        }
        let ifindex = sys::interface_index(&o.interface).with_context(|| format!("interface {}", o.interface))?;
        let link = program.attach(&o.interface, ifindex, o.attach_mode)?;
        Ok((AfXdpShared { _link: link, _program: program }, transports))
    }
}

impl Transport for AfXdpTransport {
    fn now(&mut self) -> u64 {
        crate::engine::clock_ns()
    }

    fn flows(&self) -> usize {
        self.flows.len()
    }

    fn max_batch(&self) -> usize {
        TX_BATCH
    }

    fn send(&mut self, payloads: &[Vec<u8>], lens: &[usize], flows: &[usize]) -> io::Result<usize> {
        let nq = self.ports.len();
        let mut done = 0;
        while done < payloads.len() {
            // Consecutive requests for the same queue go out in one batch (one kick).
            let q = flows[done] % self.flows.len() % nq;
            let run = flows[done..].iter().take_while(|&&f| f % self.flows.len() % nq == q).count().min(TX_BATCH);
            let specs = &self.flows;
            let n = self.ports[q].send(run, |i, buf| {
                let k = done + i;
                let spec = &specs[flows[k] % specs.len()];
                let off = spec.payload_offset();
                let len = lens[k];
                buf.get_mut(off..off + len)?.copy_from_slice(&payloads[k][..len]);
                packet::write_request(buf, spec, len).ok()
            });
            done += n;
            if n < run {
                self.ports[q].service();
                break;
            }
        }
        Ok(done)
    }

    fn recv(&mut self, on: &mut dyn FnMut(&[u8], u64)) -> io::Result<usize> {
        let mut total = 0;
        let rx = self.now();
        let (base, count) = (self.src_ports[0], self.src_ports.len());
        let (port_base, owners, outboxes) = (self.port_base, &self.owners, &self.outboxes);
        let (mut handed, mut failed) = (0u64, 0u64);
        for port in &mut self.ports {
            total += port.receive(|frame| {
                let Ok(Some(d)) = packet::parse(frame) else { return };
                let p = d.dst().port();
                if p >= base && usize::from(p - base) < count {
                    on(d.payload(), rx);
                    return;
                }
                // Another thread's reply: hand it over (see the type's docs).
                let owner = p.checked_sub(port_base).and_then(|k| owners.get(usize::from(k)));
                let Some(outbox) = owner.and_then(|&o| outboxes.get(o)).and_then(Option::as_ref) else { return };
                let payload = d.payload();
                // Its own clock reading: `rx` was read before this batch, possibly before the owner stamped the
                // request's send time (on veth the server's reply can arrive while the owner is still in sendto).
                let now = crate::engine::clock_ns();
                let mut crossing =
                    Crossing { rx_ns: now, len: payload.len().min(MAX_PAYLOAD), payload: [0; MAX_PAYLOAD] };
                crossing.payload[..crossing.len].copy_from_slice(&payload[..crossing.len]);
                handed += 1;
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = outbox.try_send(crossing) {
                    failed += 1;
                }
            });
            port.service();
        }
        self.handed_over += handed;
        self.hand_over_failed += failed;
        // Replies other threads found for this one.
        while let Ok(c) = self.inbox.try_recv() {
            on(&c.payload[..c.len], c.rx_ns);
            total += 1;
        }
        Ok(total)
    }
}
