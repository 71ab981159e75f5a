//! The kernel-socket datapath (`shunt::datapath::socket`) in the lab, in every I/O model, driven directly the
//! way tests/hot_path.rs drives the AF_XDP worker: a `KernelWorker` on a thread in the server namespace,
//! pinned to a core, with a stand-in reporter taking its latency histograms.
//!
//! - 10,000 echoes over IPv4 and 10,000 over IPv6 per model, from connected client sockets (which accept only
//!   replies from the address they sent to, so every reply left from the request's destination address), all
//!   answered byte-identical; the handler saw the real destination address and the client's address, IPv4
//!   ones as plain IPv4, and the request's metadata (the TTL / hop limit 17 and DSCP 46 / ECT(1) the clients
//!   set, from control messages; the kernel's receive stamp on both clocks, before the pick-up); the counters agree with what was sent, the system calls add up as the module docs
//!   say; with timestamps on, every reply is in the `total` histogram; `run` allocated nothing.
//! - Mixed outcomes in bursts (echo, handler drop, a longer reply within the declared bound, one beyond it):
//!   exactly the allowed replies come back, each drop counted where it belongs, also inside recvmmsg batches.
//! - `sockperf ping-pong` against the `Sockperf` handler in every model, to its summary line.
//!
//! A lab test (needs root and network namespaces): ignored by a plain `cargo test`, run by `make test`.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::{Lab, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::{
    datapath::{
        counters::{WorkerShared, WorkerStats},
        histograms::{self, LatencySet},
        socket::{KernelSocketOptions, KernelWorker, SocketIo},
        WorkerExit,
    },
    handler::{Budget, Echo, Ecn, Handler, Outbox, Request, RxClock, Sockperf, Verdict},
    sys,
};

// ---------------------------------------------------------------------------------------------------------
// Allocation counting (the worker thread only, for the whole of `run`)
// ---------------------------------------------------------------------------------------------------------

#[global_allocator]
static GLOBAL: common::alloc::CountingAllocator = common::alloc::CountingAllocator;

// ---------------------------------------------------------------------------------------------------------
// A worker on a pinned thread in the server namespace
// ---------------------------------------------------------------------------------------------------------

/// Histogram range and swap interval of the worker's latency hand-off (swaps every 5 ms, so that many happen).
const HIGHEST_NS: u64 = 1_000_000_000;
const SWAP_NS: u64 = 5_000_000;

/// The two cores of the lab machine: the worker gets the last one, clients the first.
fn server_core() -> usize {
    common::num_cpus().saturating_sub(1)
}

struct ServerRun {
    exit: WorkerExit,
    allocations: u64,
    /// Every histogram set the worker handed over, merged.
    latency: LatencySet,
    swaps: u64,
    elapsed: Duration,
}

struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ServerRun>,
    /// Receives once the worker's thread has its result.
    done: mpsc::Receiver<()>,
}

impl Server {
    /// Opens a worker for `options` on a thread in the server namespace pinned to [`server_core`], and runs it
    /// once it is open. Panics with the open error.
    fn start<H: Handler + 'static>(lab: &Lab, options: KernelSocketOptions, handler: H) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = {
            let stop = stop.clone();
            lab.spawn_in_server(move || {
                let (worker_side, reporter_side) = histograms::hand_off(HIGHEST_NS, SWAP_NS, 2);
                // The stand-in reporter is spawned before the pinning, so it does not share the worker's core.
                let stand_in = std::thread::spawn(move || {
                    let mut merged = LatencySet::new(HIGHEST_NS);
                    let mut swaps = 0;
                    while let Ok(mut set) = reporter_side.full.recv() {
                        swaps += 1;
                        merged.add(&set);
                        set.reset();
                        let _ = reporter_side.empty.send(set);
                    }
                    (merged, swaps)
                });
                sys::pin_to_core(server_core()).expect("pin the worker thread");
                let shared = Arc::new(WorkerShared::default());
                let mut worker = match KernelWorker::open(options, handler, shared) {
                    Ok(w) => w.with_latency(worker_side),
                    Err(e) => {
                        ready_tx.send(Err(e.to_string())).unwrap();
                        panic!("open: {e}");
                    }
                };
                ready_tx.send(Ok(())).unwrap();
                let start = Instant::now();
                let (exit, allocations) = common::alloc::count_allocations(|| worker.run(&stop));
                let elapsed = start.elapsed();
                drop(worker); // closes the hand-off: the stand-in ends
                let (latency, swaps) = stand_in.join().expect("stand-in reporter");
                let _ = done_tx.send(());
                ServerRun { exit, allocations, latency, swaps, elapsed }
            })
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("KernelWorker::open failed: {e}"),
            Err(e) => panic!("the server thread did not open its worker in 20 s: {e}"),
        }
        Server { stop, thread, done }
    }

    fn stop(self) -> ServerRun {
        self.stop.store(true, Ordering::Relaxed);
        match self.done.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the worker did not stop within 10 s of the stop flag"),
            // The thread ended without saying so: it panicked, and join reports why.
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        self.thread.join().expect("server thread")
    }
}

fn options(lab: &Lab, io: SocketIo, port: u16, batch: u32, timestamps: bool) -> KernelSocketOptions {
    KernelSocketOptions {
        interface: lab.server_if(),
        ports: vec![port],
        io,
        batch,
        timestamps,
        receive_buffer: 4 << 20,
        sends_per_batch: 64,
    }
}

/// Runs `f` on a thread pinned to core 0 (away from the worker's core).
fn on_client_core<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::pin_to_core(0).expect("pin the client thread");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn quantile_us(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------------------
// Echo, every model, IPv4 and IPv6
// ---------------------------------------------------------------------------------------------------------

/// What the handler saw, checked on the worker thread without allocating.
#[derive(Default)]
struct Seen {
    v4: AtomicU64,
    v6: AtomicU64,
    wrong: AtomicU64,
    first_wrong: OnceLock<(SocketAddr, SocketAddr)>,
    /// Requests whose metadata was not what the client sent (TTL / hop limit 64, DSCP 0, not-ECT, untagged,
    /// no queue) or whose receive stamp was missing or after the pick-up, and the first of them.
    bad_meta: AtomicU64,
    first_bad_meta: OnceLock<Request>,
}

/// Echo, after checking each request's addresses: from the client to the server's address on one of `ports`,
/// an IPv4 client as a plain IPv4 address; and that the time was read.
struct Checked {
    ports: Vec<u16>,
    seen: Arc<Seen>,
    /// The traffic class (TOS) and TTL / hop limit the clients send with.
    traffic_class: u8,
    ttl: u8,
}

impl Checked {
    fn new(ports: &[u16]) -> (Checked, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        (Checked { ports: ports.to_vec(), seen: seen.clone(), traffic_class: 0, ttl: 64 }, seen)
    }
}

impl Handler for Checked {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
        let (src, dst) = (request.src, request.dst);
        let ours = self.ports.contains(&dst.port());
        let v4 = ours && matches!(src, SocketAddr::V4(_)) && src.ip() == CLIENT_V4 && dst.ip() == SERVER_V4;
        let v6 = ours && matches!(src, SocketAddr::V6(_)) && src.ip() == CLIENT_V6 && dst.ip() == SERVER_V6;
        let timed = request.now.unix_ns > 0 && request.now.monotonic_ns > 0;
        // The client sockets send with `traffic_class` and `ttl` (by default TOS 0 and TTL / hop limit 64) over
        // one veth hop; the sockets ask for the kernel's receive stamps (`timestamps` on), taken before the
        // pick-up.
        let stamped = request.rx_timestamp.is_some_and(|t| {
            t.source == RxClock::KernelSocket
                && t.unix_ns <= request.now.unix_ns
                && t.monotonic_ns <= request.now.monotonic_ns
                && request.now.unix_ns - t.unix_ns < 1_000_000_000
        });
        let meta = request.ttl == Some(self.ttl)
            && request.dscp == Some(self.traffic_class >> 2)
            && request.ecn == Some(Ecn::from_traffic_class(self.traffic_class))
            && request.vlan_id.is_none()
            && request.queue.is_none();
        if !(stamped && meta) {
            self.seen.bad_meta.fetch_add(1, Ordering::Relaxed);
            let _ = self.seen.first_bad_meta.set(*request);
        }
        if v4 && timed {
            self.seen.v4.fetch_add(1, Ordering::Relaxed);
        } else if v6 && timed {
            self.seen.v6.fetch_add(1, Ordering::Relaxed);
        } else {
            self.seen.wrong.fetch_add(1, Ordering::Relaxed);
            let _ = self.seen.first_wrong.set((src, dst));
        }
        Echo.handle(request, payload, len, out)
    }
}

const ECHOES: u64 = 10_000;

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn every_io_model_echoes_ipv4_and_ipv6_from_the_right_address() {
    common::require_lab();
    let lab = Lab::new(1);
    let mut figures = Vec::new();
    for (i, io) in SocketIo::ALL.into_iter().enumerate() {
        let port = 9100 + i as u16;
        let (mut handler, seen) = Checked::new(&[port]);
        // DSCP 46 (EF) with ECT(1), and a TTL / hop limit of 17: what the handler must see.
        (handler.traffic_class, handler.ttl) = (0xb9, 17);
        let server = Server::start(&lab, options(&lab, io, port, 32, true), handler);
        let (c4, c6) = (common::client_socket(&lab, false, port), common::client_socket(&lab, true, port));
        let (r4, r6) = (socket2::SockRef::from(&c4), socket2::SockRef::from(&c6));
        r4.set_tos_v4(0xb9).and_then(|()| r4.set_ttl_v4(17)).expect("IP_TOS / IP_TTL on the IPv4 client");
        r6.set_tclass_v6(0xb9)
            .and_then(|()| r6.set_unicast_hops_v6(17))
            .expect("IPV6_TCLASS / hops on the IPv6 client");
        let opts = common::EchoOpts::default();
        let started = Instant::now();
        let (st4, st6) = on_client_core(|| {
            let st4 = common::echo_exchange(&c4, 0..ECHOES, common::echo_size, &opts);
            let st6 = common::echo_exchange(&c6, 0..ECHOES, common::echo_size, &opts);
            (st4, st6)
        });
        let client_time = started.elapsed();
        let run = server.stop();
        let name = io.name();
        let st4 = st4.unwrap_or_else(|e| panic!("{name}: IPv4: {e}\nserver: {:?}", run.exit.stats));
        let st6 = st6.unwrap_or_else(|e| panic!("{name}: IPv6: {e}\nserver: {:?}", run.exit.stats));
        let s = run.exit.stats;
        assert_eq!((st4.answered, st6.answered), (ECHOES, ECHOES), "{name}: {st4:?} {st6:?}");

        // What the handler saw.
        assert_eq!(
            seen.wrong.load(Ordering::Relaxed),
            0,
            "{name}: requests with wrong addresses, first (src, dst) = {:?}",
            seen.first_wrong.get()
        );
        assert_eq!(
            seen.bad_meta.load(Ordering::Relaxed),
            0,
            "{name}: requests without the expected metadata (TTL, DSCP/ECN, receive stamp), first: {:?}",
            seen.first_bad_meta.get()
        );
        assert_eq!(seen.v4.load(Ordering::Relaxed), st4.sent, "{name}: IPv4 requests the handler saw");
        assert_eq!(seen.v6.load(Ordering::Relaxed), st6.sent, "{name}: IPv6 requests the handler saw");

        // Counters.
        let sent = st4.sent + st6.sent;
        assert_eq!(s.rx_packets, sent, "{name}: rx_packets vs datagrams sent: {s:?}");
        assert_eq!(s.tx_packets, sent, "{name}: every request answered: {s:?}");
        assert_eq!(
            (s.dropped_by_handler, s.dropped_amplification, s.dropped_malformed, s.tx_ring_full, s.errors()),
            (0, 0, 0, 0, WorkerStats::default().errors()),
            "{name}: nothing dropped or refused: {s:?}"
        );
        assert_eq!(
            (s.tx_kick_errors, s.busy_polls, s.tx_backpressure, s.fill_kicks),
            (0, 0, 0, 0),
            "{name}: the AF_XDP-only counters stay 0 on kernel sockets: {s:?}"
        );
        assert!(s.rx_batches >= 1 && s.rx_batches <= s.rx_packets, "{name}: batches: {s:?}");
        assert!(run.exit.kernel == Default::default() && run.exit.frames.is_none(), "{name}: {:?}", run.exit);
        assert!(run.exit.cpu.is_some(), "{name}: the worker thread's CPU time");
        // The system calls, as the module docs count them.
        match io {
            SocketIo::Blocking => {
                assert_eq!(s.rx_batches, s.rx_packets, "{name}: one datagram per blocking receive: {s:?}");
                assert_eq!(s.tx_kicks, s.tx_packets, "{name}: one sendmsg per reply: {s:?}");
                assert_eq!(s.empty_receives, 0, "{name}: {s:?}");
            }
            SocketIo::Nonblocking => {
                assert_eq!(s.tx_kicks, s.tx_packets, "{name}: one sendmsg per reply: {s:?}");
                assert!(s.empty_receives > 0, "{name}: an idle non-blocking worker spins on EAGAIN: {s:?}");
                assert_eq!(s.sleeps, 0, "{name}: never waits: {s:?}");
            }
            SocketIo::Epoll | SocketIo::Signal => {
                assert_eq!(s.tx_kicks, s.tx_packets, "{name}: one sendmsg per reply: {s:?}");
                assert!(s.sleeps >= s.rx_batches, "{name}: a wait per wake-up: {s:?}");
                assert!(s.empty_receives >= s.rx_batches, "{name}: every drain ends on EAGAIN: {s:?}");
            }
            SocketIo::Mmsg => {
                assert!(s.tx_kicks <= s.rx_batches, "{name}: at most one sendmmsg per recvmmsg batch: {s:?}");
                assert!(s.sleeps >= 1, "{name}: {s:?}");
            }
            SocketIo::IoUring => {
                // One io_uring_enter submits a turn's replies; the first also arms the receives, and a
                // receive that ran out of buffers is armed again in a turn of its own at most.
                assert!(
                    s.tx_kicks <= s.rx_batches + 1 + s.rx_no_buffer,
                    "{name}: at most one submitting enter per turn that received: {s:?}"
                );
                assert!(s.sleeps >= 1, "{name}: an idle worker waits in io_uring_enter: {s:?}");
                assert_eq!(s.empty_receives, 0, "{name}: never spins: {s:?}");
            }
        }

        // Latency: every reply timed from the kernel's receive stamp.
        let l = &run.latency;
        assert_timed(name, l, s.tx_packets);
        assert_eq!(l.service.len(), s.tx_packets, "{name}: service histogram");
        assert!(run.swaps >= 2, "{name}: only {} histogram swaps: the hand-off was not exercised", run.swaps);
        assert_eq!(run.allocations, 0, "{name}: KernelWorker::run allocated {} times", run.allocations);

        let cpu = run.exit.cpu.unwrap_or_default();
        figures.push(format!(
            "{name:>11}: {} echoes in {:.2} s ({:.0}/s) | batches {} (mean {:.2}) | tx calls {} | EAGAIN {} | waits {} | \
             total p50 {:.1} µs p99 {:.1} µs | ring_dwell p50 {:.1} µs | service p50 {:.1} µs | worker CPU {:.0} ns/reply ({} user, {} sys ms over {:.2} s)",
            s.tx_packets,
            client_time.as_secs_f64(),
            s.tx_packets as f64 / client_time.as_secs_f64(),
            s.rx_batches,
            s.rx_packets as f64 / s.rx_batches as f64,
            s.tx_kicks,
            s.empty_receives,
            s.sleeps,
            quantile_us(&l.total, 0.5),
            quantile_us(&l.total, 0.99),
            quantile_us(&l.ring_dwell, 0.5),
            quantile_us(&l.service, 0.5),
            (cpu.user_ns + cpu.system_ns) as f64 / s.tx_packets as f64,
            cpu.user_ns / 1_000_000,
            cpu.system_ns / 1_000_000,
            run.elapsed.as_secs_f64(),
        ));
    }
    for line in figures {
        eprintln!("{line}");
    }
}

/// Every reply was timed from its pick-up (`service`) and from its kernel receive stamp (`total`): the
/// server waits at start-up until the kernel stamps datagrams, so none comes unstamped.
fn assert_timed(name: &str, l: &shunt::datapath::histograms::LatencySet, tx: u64) {
    assert_eq!(l.service.len(), tx, "{name}: every reply timed from its pick-up");
    assert_eq!(l.total.len() + l.unstamped, tx, "{name}: stamped + unstamped");
    assert_eq!(l.unstamped, 0, "{name}: {} of {tx} replies without a kernel receive stamp", l.unstamped);
}

// ---------------------------------------------------------------------------------------------------------
// Several ports per worker; several workers per port
// ---------------------------------------------------------------------------------------------------------

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn one_worker_serves_several_ports_and_workers_share_a_port() {
    common::require_lab();
    let lab = Lab::new(1);
    const EACH: u64 = 2_000;
    // One worker, two ports, both busy at once (IPv4 to one, IPv6 to the other): each model finds the ready
    // socket by its epoll data or its signal's si_fd, or by looking at both.
    for (i, io) in SocketIo::ALL.into_iter().filter(|io| *io != SocketIo::Blocking).enumerate() {
        let name = io.name();
        let ports = [9300 + 2 * i as u16, 9301 + 2 * i as u16];
        let (handler, seen) = Checked::new(&ports);
        let mut o = options(&lab, io, ports[0], 16, true);
        o.ports = ports.to_vec();
        let server = Server::start(&lab, o, handler);
        let (c4, c6) = (common::client_socket(&lab, false, ports[0]), common::client_socket(&lab, true, ports[1]));
        let opts = common::EchoOpts::default();
        let (st4, st6) = std::thread::scope(|s| {
            let t4 = s.spawn(|| on_client_core(|| common::echo_exchange(&c4, 0..EACH, common::echo_size, &opts)));
            let t6 = s.spawn(|| on_client_core(|| common::echo_exchange(&c6, 0..EACH, common::echo_size, &opts)));
            (t4.join().unwrap(), t6.join().unwrap())
        });
        let run = server.stop();
        let s = run.exit.stats;
        let st4 = st4.unwrap_or_else(|e| panic!("{name}: port {}: {e}\nserver: {s:?}", ports[0]));
        let st6 = st6.unwrap_or_else(|e| panic!("{name}: port {}: {e}\nserver: {s:?}", ports[1]));
        assert_eq!(seen.wrong.load(Ordering::Relaxed), 0, "{name}: first wrong: {:?}", seen.first_wrong.get());
        assert_eq!(seen.v4.load(Ordering::Relaxed), st4.sent, "{name}: requests on port {}", ports[0]);
        assert_eq!(seen.v6.load(Ordering::Relaxed), st6.sent, "{name}: requests on port {}", ports[1]);
        assert_eq!((s.rx_packets, s.tx_packets), (st4.sent + st6.sent, st4.sent + st6.sent), "{name}: {s:?}");
        assert_timed(name, &run.latency, s.tx_packets);
        assert_eq!(run.allocations, 0, "{name}: KernelWorker::run allocated {} times", run.allocations);
    }

    // Two workers, one port (SO_REUSEPORT): the kernel spreads 16 flows across their sockets by hash; every
    // request is answered once, and both workers get some.
    const FLOWS: u64 = 16;
    const PER_FLOW: u64 = 100;
    let port = 9400;
    let (h1, seen1) = Checked::new(&[port]);
    let (h2, seen2) = Checked::new(&[port]);
    let first = Server::start(&lab, options(&lab, SocketIo::Epoll, port, 16, false), h1);
    let second = Server::start(&lab, options(&lab, SocketIo::Mmsg, port, 16, false), h2);
    let mut sent = 0;
    for flow in 0..FLOWS {
        let c = common::client_socket(&lab, flow % 2 == 1, port);
        let st = common::echo_exchange(&c, 0..PER_FLOW, common::echo_size, &common::EchoOpts::default())
            .unwrap_or_else(|e| panic!("flow {flow}: {e}"));
        sent += st.sent;
    }
    let (a, b) = (first.stop().exit.stats, second.stop().exit.stats);
    assert_eq!(seen1.wrong.load(Ordering::Relaxed) + seen2.wrong.load(Ordering::Relaxed), 0);
    assert_eq!(a.rx_packets + b.rx_packets, sent, "requests over both workers: {a:?} {b:?}");
    assert_eq!(a.tx_packets + b.tx_packets, sent, "replies over both workers: {a:?} {b:?}");
    assert!(a.rx_packets > 0 && b.rx_packets > 0, "SO_REUSEPORT spread {FLOWS} flows to one worker only: {a:?} {b:?}");
    eprintln!(
        "SO_REUSEPORT: {FLOWS} flows, {sent} requests: {} to the epoll worker, {} to the mmsg worker",
        a.rx_packets, b.rx_packets
    );
}

// ---------------------------------------------------------------------------------------------------------
// Mixed outcomes in bursts
// ---------------------------------------------------------------------------------------------------------

/// By the first payload byte: `E` echo, `D` drop, `G` a reply 8 bytes longer (within its declared bound),
/// `A` a reply 9 bytes longer (beyond it: never sent).
struct Mixed;

impl Handler for Mixed {
    fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        match payload.first() {
            Some(b'E') => Verdict::Reply { len },
            Some(b'G') | Some(b'A') => {
                let grow = if payload[0] == b'G' { 8 } else { 9 };
                payload[len..len + grow].fill(b'+');
                Verdict::Reply { len: len + grow }
            }
            _ => Verdict::Drop,
        }
    }

    fn budget(&self, request_len: usize) -> Budget {
        Budget::echo(request_len + 8)
    }
}

fn mixed_request(i: u64) -> Vec<u8> {
    let kind = [b'E', b'D', b'G', b'A'][(i % 4) as usize];
    let mut p = vec![kind];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend(std::iter::repeat_n((i % 251) as u8, (i % 97) as usize));
    p
}

fn expected_reply(i: u64) -> Option<Vec<u8>> {
    let mut p = mixed_request(i);
    match p[0] {
        b'E' => Some(p),
        b'G' => {
            p.extend_from_slice(&[b'+'; 8]);
            Some(p)
        }
        _ => None,
    }
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn drops_and_the_reply_bound_are_counted_in_every_model() {
    common::require_lab();
    let lab = Lab::new(1);
    const BURSTS: u64 = 16;
    const BURST: u64 = 64;
    for (i, io) in SocketIo::ALL.into_iter().enumerate() {
        let name = io.name();
        let port = 9200 + i as u16;
        // Timestamps off: only `service` is recorded, every reply counted as unstamped.
        let server = Server::start(&lab, options(&lab, io, port, 16, false), Mixed);
        let client = common::client_socket(&lab, i % 2 == 1, port);
        let replies = on_client_core(|| {
            client.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 2048];
            let mut got = 0u64;
            for burst in 0..BURSTS {
                let seqs = burst * BURST..(burst + 1) * BURST;
                for seq in seqs.clone() {
                    common::send_retrying(&client, &mixed_request(seq)).unwrap();
                }
                // Half of each burst is answered (E and G); wait for that half, then make sure nothing else came.
                let want = BURST / 2;
                let mut this = 0;
                let deadline = Instant::now() + Duration::from_secs(5);
                while this < want {
                    assert!(Instant::now() < deadline, "{name}: burst {burst}: {this}/{want} replies in 5 s");
                    let Ok(n) = client.recv(&mut buf) else { continue };
                    let seq = u64::from_be_bytes(buf[1..9].try_into().unwrap());
                    assert!(seqs.contains(&seq), "{name}: reply for seq {seq} outside burst {burst}");
                    assert_eq!(Some(&buf[..n]), expected_reply(seq).as_deref(), "{name}: reply to seq {seq}");
                    this += 1;
                }
                got += this;
            }
            assert!(client.recv(&mut buf).is_err(), "{name}: a reply beyond the expected ones");
            got
        });
        let run = server.stop();
        let s = run.exit.stats;
        let total = BURSTS * BURST;
        assert_eq!(replies, total / 2, "{name}");
        assert_eq!(s.rx_packets, total, "{name}: {s:?}");
        assert_eq!(s.tx_packets, total / 2, "{name}: {s:?}");
        assert_eq!(s.dropped_by_handler, total / 4, "{name}: D requests: {s:?}");
        assert_eq!(s.dropped_amplification, total / 4, "{name}: A requests: {s:?}");
        assert_eq!((s.tx_ring_full, s.tx_errors), (0, 0), "{name}: {s:?}");
        let l = &run.latency;
        assert_eq!((l.total.len(), l.unstamped, l.service.len()), (0, s.tx_packets, s.tx_packets), "{name}");
        assert_eq!(run.allocations, 0, "{name}: KernelWorker::run allocated {} times", run.allocations);
        eprintln!(
            "{name:>11}: {} requests in {} batches (mean {:.2}), {} replies in {} send calls",
            s.rx_packets,
            s.rx_batches,
            s.rx_packets as f64 / s.rx_batches as f64,
            s.tx_packets,
            s.tx_kicks
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// sockperf ping-pong
// ---------------------------------------------------------------------------------------------------------

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn sockperf_ping_pong_in_every_model() {
    common::require_lab();
    let lab = Lab::new(1);
    let mut figures = Vec::new();
    for (i, io) in SocketIo::ALL.into_iter().enumerate() {
        let name = io.name();
        let port = 11111 + i as u16;
        let server = Server::start(&lab, options(&lab, io, port, 32, true), Sockperf);
        let port_arg = port.to_string();
        let argv =
            ["taskset", "-c", "0", "sockperf", "ping-pong", "-i", "198.18.0.1", "-p", &port_arg, "-t", "2", "-m", "64"];
        let out = lab.exec(Side::Client, &[&argv[..], &["--full-rtt"]].concat(), Duration::from_secs(60));
        let run = server.stop();
        let s = run.exit.stats;
        let text = format!("{}\n{}", out.stdout, out.stderr);
        let summary = common::parse_sockperf(&text)
            .unwrap_or_else(|| panic!("{name}: sockperf produced no summary:\n{}\nserver: {s:?}", out.combined()));
        assert!(out.success(), "{name}: sockperf failed:\n{}", out.combined());
        assert!(summary.received > 0, "{name}: sockperf received no replies:\n{}", out.combined());
        assert!(summary.usec > 0.0, "{name}: summary latency {}:\n{}", summary.usec, out.combined());
        assert!(
            s.tx_packets >= summary.received,
            "{name}: server sent {} replies, sockperf counted {}",
            s.tx_packets,
            summary.received
        );
        assert!(s.rx_packets >= s.tx_packets, "{name}: {s:?}");
        assert_eq!((s.tx_ring_full, s.tx_errors), (0, 0), "{name}: {s:?}");
        assert_timed(name, &run.latency, s.tx_packets);
        assert_eq!(run.allocations, 0, "{name}: KernelWorker::run allocated {} times", run.allocations);
        figures.push(format!(
            "{name:>11}: sockperf sent {} received {}, full RTT avg {:.3} µs | in-server total p50 {:.1} µs p99 {:.1} µs",
            summary.sent,
            summary.received,
            summary.usec,
            quantile_us(&run.latency.total, 0.5),
            quantile_us(&run.latency.total, 0.99),
        ));
    }
    for line in figures {
        eprintln!("{line}");
    }
}
