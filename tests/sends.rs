//! Lab tests: handlers that send, not only reply, on the AF_XDP worker and on every kernel-socket I/O model,
//! run in-process in the lab's server namespace with a real client in the client namespace.
//!
//! - [`Fan`] answers `fan:N` with N datagrams sent through its outbox back to the requester, marked DSCP 46
//!   ECT(0), plus its in-place reply marked DSCP 10 ECT(1): the client sees N + 1 datagrams and each one's
//!   TOS / traffic class (IP_RECVTOS / IPV6_RECVTCLASS), over IPv4 and IPv6.
//! - An exhausted pool (AF_XDP: a UMEM of 128 frames, a burst asking for far more sends) is counted
//!   (`send_pool_empty`), never blocks, and loses no frame (the frame account adds up when the worker stops);
//!   every datagram the worker put on the TX ring reaches the client.
//! - The per-batch limit (`sends.per_batch`) refuses and counts the sends beyond it.
//! - The worker allocates nothing while it sends (a counting global allocator watches its thread).

mod common;

#[global_allocator]
static GLOBAL: common::alloc::CountingAllocator = common::alloc::CountingAllocator;

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use common::{Lab, SERVER_V4, SERVER_V6};
use shunt::{
    datapath::{
        afxdp::{BindMode, QueueSocket, SendOptions, SocketOptions, UmemParams, Worker},
        counters::WorkerShared,
        socket::{KernelSocketOptions, KernelWorker, SocketIo},
        WorkerExit,
    },
    handler::{Budget, Ecn, Envelope, Handler, Outbox, Request, Verdict},
    steer::{AttachMode, ProgramVariant, StampMethod, XdpProgram},
    sys,
};

const PORT: u16 = 9000;
/// The sends' marking (DSCP 46, ECT(0)) and the reply's (DSCP 10, ECT(1)), as TOS bytes.
const SEND_TOS: u8 = (46 << 2) | 0b10;
const REPLY_TOS: u8 = (10 << 2) | 0b01;

/// `fan:N` → N sends back to the requester (payload `copy:i`), then the request itself as the reply.
struct Fan;

impl Handler for Fan {
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
        let Some(n) = payload.get(..len).and_then(|p| p.strip_prefix(b"fan:")).and_then(|d| d.first()) else {
            return Verdict::Drop;
        };
        let n = n.wrapping_sub(b'0');
        for i in 0..n {
            let envelope = Envelope::reply_to(request).with_marking(46, Ecn::Ect0);
            let _ = out.send(envelope, |buf| {
                let body = [b'c', b'o', b'p', b'y', b':', b'0' + i];
                buf.get_mut(..body.len())?.copy_from_slice(&body);
                Some(body.len())
            });
        }
        out.mark_reply(10, Ecn::Ect1);
        Verdict::Reply { len }
    }

    fn budget(&self, request_len: usize) -> Budget {
        Budget::per_packet(10, request_len.max(6))
    }
}

/// A client socket in the client namespace that reports each datagram's TOS / traffic class.
fn client(lab: &Lab, v6: bool) -> UdpSocket {
    let sock = lab.in_client(|| UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" }).unwrap());
    let (level, name) =
        if v6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS) } else { (libc::IPPROTO_IP, libc::IP_RECVTOS) };
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a valid pointer for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "IP_RECVTOS / IPV6_RECVTCLASS: {}", std::io::Error::last_os_error());
    // Room for a whole burst's answers (the burst test reads them only after sending).
    socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20).unwrap();
    let big: libc::c_int = 8 << 20;
    // SAFETY: as above; SO_RCVBUFFORCE (root) lifts rmem_max.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock
}

/// One datagram and its TOS / traffic class (`None` if the kernel gave none).
fn receive(sock: &UdpSocket) -> std::io::Result<(Vec<u8>, Option<u8>)> {
    let mut buf = [0u8; 2048];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at a live local buffer of the length given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut tos = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            if level == libc::IPPROTO_IP && kind == libc::IP_TOS {
                tos = Some(*data);
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_TCLASS {
                tos = Some(std::ptr::read_unaligned(data.cast::<libc::c_int>()) as u8);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((buf[..n as usize].to_vec(), tos))
}

/// Sends `fan:3` from both families and checks the four datagrams of each: three marked copies and the
/// marked reply.
fn check_fan(lab: &Lab, what: &str) {
    for v6 in [false, true] {
        let sock = client(lab, v6);
        let server = if v6 { SocketAddr::from((SERVER_V6, PORT)) } else { SocketAddr::from((SERVER_V4, PORT)) };
        sock.send_to(b"fan:3", server).unwrap();
        let mut got: Vec<(Vec<u8>, Option<u8>)> = (0..4)
            .map(|k| receive(&sock).unwrap_or_else(|e| panic!("{what}: datagram {k} of 4 (v6 {v6}): {e}")))
            .collect();
        got.sort();
        let want: Vec<(Vec<u8>, Option<u8>)> = vec![
            (b"copy:0".to_vec(), Some(SEND_TOS)),
            (b"copy:1".to_vec(), Some(SEND_TOS)),
            (b"copy:2".to_vec(), Some(SEND_TOS)),
            (b"fan:3".to_vec(), Some(REPLY_TOS)),
        ];
        assert_eq!(got, want, "{what}: the sends and the reply, with their markings (v6 {v6})");
    }
}

/// The AF_XDP side: program, socket and worker on a thread in the server namespace, run until `stop`.
fn start_afxdp(
    lab: &Lab,
    frames: u32,
    per_batch: u32,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<(WorkerExit, u64)>) {
    let server_if = lab.server_if();
    let stamp = common::probed_stamp_method();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = lab.spawn_in_server(move || {
        let program = XdpProgram::load(ProgramVariant::Plain, stamp).expect("load XDP program");
        program.set_ports(&[PORT]).unwrap();
        let socket = QueueSocket::open(&SocketOptions {
            interface: server_if.clone(),
            queue: 0,
            bind_mode: BindMode::Copy,
            umem: UmemParams {
                frame_count: frames,
                fill_ring: frames / 2,
                completion_ring: frames,
                rx_ring: frames,
                tx_ring: frames,
                ..Default::default()
            },
        })
        .expect("open AF_XDP socket");
        program.register_socket(0, socket.raw_fd()).unwrap();
        let ifindex = sys::interface_index(&server_if).unwrap();
        let _link = program.attach(&server_if, ifindex, AttachMode::Generic).expect("attach");
        let sends = SendOptions {
            per_batch,
            source_mac: sys::route::link_mac(ifindex).expect("RTM_GETLINK").expect("the server's MAC"),
            addresses: vec![IpAddr::V4(SERVER_V4), IpAddr::V6(SERVER_V6)],
            ports: vec![PORT],
        };
        let mut worker = Worker::new(socket, Fan, Arc::new(WorkerShared::default()), 32)
            .with_stamp_in_packet(stamp == StampMethod::Head)
            .with_stamp_in_metadata(stamp == StampMethod::Meta)
            .with_sends(sends, None);
        ready_tx.send(()).unwrap();
        common::alloc::count_allocations(|| worker.run(&stop))
    });
    (ready_rx, thread)
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn afxdp_sends_go_back_marked_and_an_empty_pool_loses_no_frame() {
    common::require_lab();
    let lab = Lab::new(1);

    // Marked sends and reply, v4 and v6.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, server) = start_afxdp(&lab, 1024, 64, stop.clone());
    ready.recv_timeout(Duration::from_secs(20)).expect("server side set up");
    check_fan(&lab, "afxdp");
    stop.store(true, Ordering::Relaxed);
    let (exit, allocations) = server.join().expect("worker thread");
    let s = exit.stats;
    assert_eq!((s.rx_packets, s.sends, s.tx_packets), (2, 6, 8), "{s:?}");
    assert_eq!(allocations, 0, "the worker allocated while sending");
    assert_eq!(exit.frames.expect("frame account").frames_lost, 0, "{exit:?}");

    // A burst of `fan:9` into a UMEM of 128 frames (64 stocked on the fill ring): the sends outrun the pool.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, server) = start_afxdp(&lab, 128, 1024, stop.clone());
    ready.recv_timeout(Duration::from_secs(20)).expect("server side set up");
    let sock = client(&lab, false);
    let to = SocketAddr::from((SERVER_V4, PORT));
    const REQUESTS: u64 = 200;
    for _ in 0..REQUESTS {
        sock.send_to(b"fan:9", to).unwrap();
    }
    // Then one request at a time: the pool refills as sends complete, and sends go out again.
    let mut received = 0u64;
    sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while receive(&sock).is_ok() {
        received += 1;
    }
    sock.send_to(b"fan:3", to).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let after: Vec<_> = (0..4).map(|_| receive(&sock).expect("the pool recovered").0).collect();
    stop.store(true, Ordering::Relaxed);
    let (exit, allocations) = server.join().expect("worker thread");
    let s = exit.stats;
    assert_eq!(allocations, 0, "the worker allocated while its pool ran dry");
    println!("burst of {REQUESTS} x fan:9 into 128 frames: {s:?}");
    assert!(after.contains(&b"copy:2".to_vec()), "sends go out again once frames return: {after:?}");
    assert!(s.send_pool_empty > 0, "the burst must exhaust the pool: {s:?}");
    let asked = 9 * (s.rx_packets - 1) + 3;
    assert_eq!(s.sends + s.send_pool_empty, asked, "every send either queued or counted as refused: {s:?}");
    assert_eq!(received + 4, s.tx_packets, "every datagram put on the TX ring reached the client: {s:?}");
    assert_eq!(exit.frames.expect("frame account").frames_lost, 0, "no frame lost: {exit:?}");
}

/// A kernel-socket worker running `Fan` on a thread in the server namespace.
fn start_sockets(
    lab: &Lab,
    io: SocketIo,
    per_batch: u32,
    stop: Arc<AtomicBool>,
) -> (mpsc::Receiver<()>, std::thread::JoinHandle<(WorkerExit, u64)>) {
    let options = KernelSocketOptions {
        interface: lab.server_if(),
        ports: vec![PORT],
        io,
        batch: 32,
        timestamps: false,
        receive_buffer: 1 << 20,
        sends_per_batch: per_batch,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = lab.spawn_in_server(move || {
        let mut worker = KernelWorker::open(options, Fan, Arc::new(WorkerShared::default())).expect("open");
        ready_tx.send(()).unwrap();
        common::alloc::count_allocations(|| worker.run(&stop))
    });
    (ready_rx, thread)
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn socket_sends_go_back_marked_in_every_io_model_and_the_batch_limit_counts() {
    common::require_lab();
    let lab = Lab::new(1);
    for io in SocketIo::ALL {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, server) = start_sockets(&lab, io, 64, stop.clone());
        ready.recv_timeout(Duration::from_secs(20)).expect("server side set up");
        check_fan(&lab, io.name());
        stop.store(true, Ordering::Relaxed);
        let (exit, allocations) = server.join().expect("worker thread");
        let s = exit.stats;
        assert_eq!((s.rx_packets, s.sends, s.tx_packets), (2, 6, 8), "{}: {s:?}", io.name());
        assert_eq!(allocations, 0, "{}: the worker allocated while sending", io.name());
    }
    // Two sends per batch: `fan:3` gets two copies and the reply; the third send is refused and counted.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready, server) = start_sockets(&lab, SocketIo::Epoll, 2, stop.clone());
    ready.recv_timeout(Duration::from_secs(20)).expect("server side set up");
    let sock = client(&lab, false);
    sock.send_to(b"fan:3", SocketAddr::from((SERVER_V4, PORT))).unwrap();
    let mut got: Vec<Vec<u8>> = (0..3).map(|_| receive(&sock).expect("two sends and the reply").0).collect();
    got.sort();
    assert_eq!(got, [b"copy:0".to_vec(), b"copy:1".to_vec(), b"fan:3".to_vec()]);
    stop.store(true, Ordering::Relaxed);
    let s = server.join().expect("worker thread").0.stats;
    assert_eq!((s.sends, s.send_batch_limit, s.tx_packets), (2, 1, 3), "{s:?}");
}
