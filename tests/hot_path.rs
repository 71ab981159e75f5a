//! Proves the worker loop's hot-path promises on a real AF_XDP socket in the lab:
//! - `Worker::run` allocates nothing, whatever traffic it serves, with latency histograms on and swapped with
//!   the reporter every few milliseconds (a counting global allocator watches the worker thread for the whole
//!   of `run`);
//! - it makes no system call per packet: a backlog of requests is served in RX batches, and the TX kicks it
//!   makes are the copy-mode minimum of one per 32 replies (the only system calls in the loop are those kicks,
//!   fill-ring wake-ups and a once-a-second statistics read, and the first two are counted);
//! - the handler gets each request's metadata on that path: the XDP hook's receive stamp on both clocks (where
//!   the program stamps), the queue, TTL / hop limit, DSCP / ECN, no VLAN id.
//!
//! A lab test (needs root, namespaces, XDP, AF_XDP): ignored by a plain `cargo test`, run by `make test`.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use common::{Lab, SERVER_V4, SERVER_V6};
use shunt::{
    datapath::{
        afxdp::{BindMode, QueueSocket, SocketOptions, UmemParams, Worker},
        counters::WorkerShared,
        histograms, WorkerExit,
    },
    handler::{Echo, Ecn, Handler, Outbox, Request, RxClock, Verdict},
    steer::{AttachMode, ProgramVariant, StampMethod, XdpCountersReader, XdpProgram},
    sys,
};

#[global_allocator]
static GLOBAL: common::alloc::CountingAllocator = common::alloc::CountingAllocator;

/// Echo, after checking the request's metadata on the worker thread (without allocating): the XDP hook's
/// receive stamp on both clocks before the batch's pick-up whenever the program stamps, queue 0, the clients'
/// TTL / hop limit 17, DSCP 46 and ECT(1) (traffic class 0xb9), no VLAN tag. Counts requests that differ.
struct MetaEcho {
    stamped: bool,
    bad: Arc<AtomicU64>,
}

impl Handler for MetaEcho {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
        let stamp_ok = match request.rx_timestamp {
            Some(t) => {
                self.stamped
                    && t.source == RxClock::XdpHook
                    && t.monotonic_ns <= request.now.monotonic_ns
                    && t.unix_ns <= request.now.unix_ns
                    && request.now.monotonic_ns - t.monotonic_ns == request.now.unix_ns - t.unix_ns
            }
            None => !self.stamped,
        };
        let header_ok = request.queue == Some(0)
            && request.ttl == Some(17)
            && request.dscp == Some(46)
            && request.ecn == Some(Ecn::Ect1)
            && request.vlan_id.is_none();
        if !(stamp_ok && header_ok) {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        Echo.handle(request, payload, len, out)
    }
}

/// Runs `worker` with the allocation counter watching this thread, and returns what it counted.
fn tracked_run(worker: &mut Worker<MetaEcho>, stop: &AtomicBool) -> (WorkerExit, u64) {
    common::alloc::count_allocations(|| worker.run(stop))
}

/// Sends `count` datagrams of varying sizes to `to` with at most `window` outstanding; checks every reply.
fn echo_traffic(sock: &UdpSocket, to: SocketAddr, count: usize, window: usize) {
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 2048];
    let mut next = 0usize;
    let mut done = 0usize;
    let payload = |i: usize| -> Vec<u8> {
        let len = 8 + (i * 37) % 1393;
        let mut p = vec![(i % 251) as u8; len];
        p[..8].copy_from_slice(&(i as u64).to_be_bytes());
        p
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < count {
        while next < count && next - done < window {
            sock.send_to(&payload(next), to).unwrap();
            next += 1;
        }
        assert!(Instant::now() < deadline, "echo traffic did not finish in 60 s ({done}/{count})");
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("reply {done}/{count} missing: {e}"));
        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
        assert_eq!(&buf[..n], &payload(seq)[..], "reply {seq} differs from its request");
        done += 1;
    }
}

fn set_receive_buffer(sock: &UdpSocket, bytes: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads an int from a valid pointer for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

enum Phase {
    Run,
    Finish,
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn worker_loop_allocates_nothing_and_batches_its_system_calls() {
    common::require_lab();
    let lab = Lab::new(1);
    let server_if = lab.server_if();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(WorkerShared::default());
    let (phase_tx, phase_rx) = mpsc::channel::<Phase>();
    let (exit_tx, exit_rx) = mpsc::channel::<(WorkerExit, u64)>();
    let (ready_tx, ready_rx) = mpsc::channel::<XdpCountersReader>();

    // The server side lives on one thread in the server namespace: it owns the program, the link and the
    // worker, and runs the worker once per phase.
    // Stamped as the server would stamp on this kernel, so that the stripping of a prepended stamp is on the
    // measured path too where that is the method.
    let stamp = common::probed_stamp_method();
    let bad_meta = Arc::new(AtomicU64::new(0));
    let bad_meta_worker = bad_meta.clone();
    let server = {
        let (stop, shared) = (stop.clone(), shared.clone());
        lab.spawn_in_server(move || {
            let program = XdpProgram::load(ProgramVariant::Plain, stamp).expect("load XDP program");
            program.set_ports(&[9000]).unwrap();
            let socket = QueueSocket::open(&SocketOptions {
                interface: server_if.clone(),
                queue: 0,
                bind_mode: BindMode::Copy,
                umem: UmemParams {
                    frame_count: 4096,
                    fill_ring: 2048,
                    completion_ring: 2048,
                    rx_ring: 2048,
                    tx_ring: 2048,
                    ..Default::default()
                },
            })
            .expect("open AF_XDP socket");
            program.register_socket(0, socket.raw_fd()).unwrap();
            let ifindex = sys::interface_index(&server_if).unwrap();
            let _link = program.attach(&server_if, ifindex, AttachMode::Generic).expect("attach");
            // Histogram swaps every 5 ms, so that many happen during the run; a thread stands in for the
            // reporter, returning each full set emptied.
            let (worker_side, reporter_side) = histograms::hand_off(1_000_000_000, 5_000_000, 2);
            let swaps = Arc::new(AtomicU64::new(0));
            let recorded = Arc::new(AtomicU64::new(0));
            let stand_in = {
                let (swaps, recorded) = (swaps.clone(), recorded.clone());
                std::thread::spawn(move || {
                    while let Ok(mut set) = reporter_side.full.recv() {
                        swaps.fetch_add(1, Ordering::Relaxed);
                        recorded.fetch_add(set.total.len(), Ordering::Relaxed);
                        set.reset();
                        let _ = reporter_side.empty.send(set);
                    }
                })
            };
            let handler = MetaEcho { stamped: stamp.stamps(), bad: bad_meta_worker };
            let mut worker = Worker::new(socket, handler, shared, 64)
                .with_latency(worker_side)
                .with_stamp_in_packet(stamp == StampMethod::Head)
                .with_stamp_in_metadata(stamp == StampMethod::Meta);
            ready_tx.send(program.counters_reader().expect("counters reader")).unwrap();
            while let Ok(Phase::Run) = phase_rx.recv() {
                let result = tracked_run(&mut worker, &stop);
                exit_tx.send(result).unwrap();
            }
            drop(worker); // closes the channel: the stand-in drains it and ends
            stand_in.join().unwrap();
            (swaps.load(Ordering::Relaxed), recorded.load(Ordering::Relaxed))
        })
    };
    let xdp = ready_rx.recv_timeout(Duration::from_secs(20)).expect("server side set up");
    let redirected = || xdp.read().expect("read the XDP program's counters").redirected;

    let v4 = SocketAddr::from((SERVER_V4, 9000));
    let v6 = SocketAddr::from((SERVER_V6, 9000));
    let (c4, c6) = lab.in_client(|| (UdpSocket::bind("0.0.0.0:0").unwrap(), UdpSocket::bind("[::]:0").unwrap()));
    // Marked requests (traffic class 0xb9: DSCP 46, ECT(1); TTL / hop limit 17), which MetaEcho checks.
    let (r4, r6) = (socket2::SockRef::from(&c4), socket2::SockRef::from(&c6));
    r4.set_tos_v4(0xb9).and_then(|()| r4.set_ttl_v4(17)).expect("IP_TOS / IP_TTL");
    r6.set_tclass_v6(0xb9).and_then(|()| r6.set_unicast_hops_v6(17)).expect("IPV6_TCLASS / IPV6_UNICAST_HOPS");

    // Phase 1: steady-state serving, v4 and v6, sizes 8..1400, the whole run watched.
    stop.store(false, Ordering::Relaxed);
    phase_tx.send(Phase::Run).unwrap();
    echo_traffic(&c4, v4, 10_000, 16);
    echo_traffic(&c6, v6, 10_000, 16);
    stop.store(true, Ordering::Relaxed);
    let (first, allocations) = exit_rx.recv_timeout(Duration::from_secs(10)).expect("worker stopped");
    assert_eq!((first.stats.rx_packets, first.stats.tx_packets), (20_000, 20_000), "served {:?}", first.stats);
    assert_eq!(redirected(), 20_000, "requests the XDP program redirected");
    assert_eq!(allocations, 0, "Worker::run allocated {allocations} times while serving 20,000 packets");

    // Phase 2: a backlog. With the worker stopped, a burst queues up on the RX ring; then the worker serves it.
    // The client must be able to hold all the replies at once.
    set_receive_buffer(&c4, 8 << 20);
    const BURST: u64 = 512;
    let burst = vec![0x5au8; 64];
    let before = redirected();
    for _ in 0..BURST {
        c4.send_to(&burst, v4).unwrap();
    }
    // The burst is on the RX ring once the XDP program has redirected all of it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redirected() - before < BURST {
        assert!(Instant::now() < deadline, "only {} of {BURST} requests redirected in 10 s", redirected() - before);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(redirected() - before, BURST, "requests redirected");
    stop.store(false, Ordering::Relaxed);
    phase_tx.send(Phase::Run).unwrap();
    c4.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 256];
    let mut replies = 0;
    while replies < BURST {
        match c4.recv_from(&mut buf) {
            Ok(_) => replies += 1,
            Err(e) => panic!("burst reply {replies}/{BURST} missing: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (second, allocations) = exit_rx.recv_timeout(Duration::from_secs(10)).expect("worker stopped");
    phase_tx.send(Phase::Finish).unwrap();
    let (swaps, recorded) = server.join().expect("server thread");
    assert_eq!(allocations, 0, "Worker::run allocated {allocations} times serving a burst");

    let rx = second.stats.rx_packets - first.stats.rx_packets;
    let batches = second.stats.rx_batches - first.stats.rx_batches;
    let kicks = second.stats.tx_kicks - first.stats.tx_kicks;
    let fill_kicks = second.stats.fill_kicks - first.stats.fill_kicks;
    assert_eq!(rx, BURST, "the whole burst was served: {second:?}");
    assert_eq!(second.stats.tx_packets - first.stats.tx_packets, BURST, "the whole burst was answered: {second:?}");
    // The whole backlog was on the ring before the worker started: 512 frames in full batches of 64.
    assert_eq!(batches, BURST / 64, "RX batches for a backlog of {BURST}: {second:?}");
    // Copy mode transmits at most 32 descriptors per kick: exactly two kicks per batch of 64 replies, and
    // no fill-ring wake-up (the kernel never asks for one in copy mode).
    assert_eq!(kicks, BURST / 32, "TX kicks for {BURST} replies in {batches} batches: {second:?}");
    assert_eq!(fill_kicks, 0, "fill-ring wake-ups: {second:?}");
    assert!(swaps >= 5, "only {swaps} histogram swaps happened: the test did not exercise them");
    assert_eq!(bad_meta.load(Ordering::Relaxed), 0, "requests whose metadata the handler did not get right");
    // Every reply was timed from its XDP stamp, where this kernel lets the program stamp.
    let expected = if stamp.stamps() { second.stats.tx_packets } else { 0 };
    assert_eq!(recorded, expected, "stamped replies recorded vs replies sent (stamp method {})", stamp.name());
    eprintln!(
        "{swaps} histogram swaps, {recorded} replies timed; backlog of {BURST}: {batches} RX batches, {kicks} TX kicks, {fill_kicks} fill kicks; 0 allocations in {} packets",
        second.stats.rx_packets
    );
}
