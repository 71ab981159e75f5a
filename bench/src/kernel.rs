//! Kernel-socket transport: one connected, non-blocking UDP socket per flow, `sendmmsg` / `recvmmsg` in batches.

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Instant,
};

use crate::engine::Transport;

const RECV_BATCH: usize = 64;
const RECV_BUF: usize = 2048;

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn set_buf(fd: i32, force: libc::c_int, plain: libc::c_int, bytes: libc::c_int) {
    let v = &bytes as *const libc::c_int as *const libc::c_void;
    let l = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, option value points to a live c_int of the given length.
    unsafe {
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, v, l) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, plain, v, l);
        }
    }
}

/// Opens a non-blocking UDP socket bound to `local` (port 0: any) and connected to `target`.
pub fn connected_socket(local: SocketAddr, target: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        OwnedFd::from_raw_fd(check(libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        ))?)
    };
    set_buf(fd.as_raw_fd(), libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, 8 << 20);
    set_buf(fd.as_raw_fd(), libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, 8 << 20);
    let (ss, len) = sockaddr(&local);
    // SAFETY: ss holds a valid address of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    let (ss, len) = sockaddr(&target);
    // SAFETY: as above.
    check(unsafe { libc::connect(fd.as_raw_fd(), (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(fd)
}

/// The local address a connected socket got.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    // SAFETY: getsockname writes at most `len` bytes into `ss`.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    check(unsafe { libc::getsockname(fd.as_raw_fd(), (&mut ss as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let sin = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::new(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()), u16::from_be(sin.sin_port)))
        }
        _ => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let sin6 = unsafe { &*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Ok(SocketAddr::new(IpAddr::from(sin6.sin6_addr.s6_addr), u16::from_be(sin6.sin6_port)))
        }
    }
}

/// Kernel UDP sockets, one per flow.
pub struct KernelTransport {
    socks: Vec<OwnedFd>,
    epoch: Instant,
    send_iov: Vec<libc::iovec>,
    send_hdr: Vec<libc::mmsghdr>,
    recv_bufs: Vec<Vec<u8>>,
    recv_iov: Vec<libc::iovec>,
    recv_hdr: Vec<libc::mmsghdr>,
    batch: usize,
}

impl KernelTransport {
    /// `flows` sockets to `target`, bound to `src_port_base + i` (or ephemeral ports when `src_port_base` is 0).
    /// `recv` never blocks: the loops spin on the pinned generator core, like a busy-polling client.
    pub fn new(target: SocketAddr, flows: usize, src_port_base: u16, batch: usize) -> io::Result<KernelTransport> {
        let unspecified: IpAddr = if target.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() };
        let socks = (0..flows.max(1))
            .map(|i| {
                let port = if src_port_base == 0 { 0 } else { src_port_base.wrapping_add(i as u16) };
                connected_socket(SocketAddr::new(unspecified, port), target)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let batch = batch.clamp(1, 256);
        let mut recv_bufs = vec![vec![0u8; RECV_BUF]; RECV_BATCH];
        let recv_iov: Vec<libc::iovec> =
            recv_bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: mmsghdr is plain data; pointers are filled in before each call.
        let zero_hdr: libc::mmsghdr = unsafe { zeroed() };
        Ok(KernelTransport {
            socks,
            epoch: Instant::now(),
            send_iov: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; batch],
            send_hdr: vec![zero_hdr; batch],
            recv_bufs,
            recv_iov,
            recv_hdr: vec![zero_hdr; RECV_BATCH],
            batch,
        })
    }

    fn send_run(&mut self, fd: i32, payloads: &[Vec<u8>], lens: &[usize]) -> io::Result<usize> {
        let n = payloads.len().min(self.batch);
        for i in 0..n {
            self.send_iov[i] = libc::iovec { iov_base: payloads[i].as_ptr() as *mut libc::c_void, iov_len: lens[i] };
            let h = &mut self.send_hdr[i].msg_hdr;
            h.msg_iov = &mut self.send_iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: the headers point at iovecs that point at live payload buffers of the given lengths.
        let rc = unsafe { libc::sendmmsg(fd, self.send_hdr.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => Ok(0),
                // The server is not (yet) listening: the request is lost, not the run.
                Some(libc::ECONNREFUSED) => Ok(1),
                _ => Err(e),
            };
        }
        Ok(rc as usize)
    }
}

impl Transport for KernelTransport {
    fn now(&mut self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn flows(&self) -> usize {
        self.socks.len()
    }

    fn max_batch(&self) -> usize {
        self.batch
    }

    fn send(&mut self, payloads: &[Vec<u8>], lens: &[usize], flows: &[usize]) -> io::Result<usize> {
        // Consecutive requests of the same flow go in one sendmmsg.
        let mut done = 0;
        while done < payloads.len() {
            let flow = flows[done] % self.socks.len();
            let run = flows[done..].iter().take_while(|&&f| f % self.socks.len() == flow).count();
            let fd = self.socks[flow].as_raw_fd();
            let n = self.send_run(fd, &payloads[done..done + run], &lens[done..done + run])?;
            done += n;
            if n < run {
                break;
            }
        }
        Ok(done)
    }

    fn recv(&mut self, on: &mut dyn FnMut(&[u8], u64)) -> io::Result<usize> {
        let mut total = 0;
        for s in 0..self.socks.len() {
            let fd = self.socks[s].as_raw_fd();
            loop {
                for i in 0..RECV_BATCH {
                    self.recv_iov[i] =
                        libc::iovec { iov_base: self.recv_bufs[i].as_mut_ptr().cast(), iov_len: RECV_BUF };
                    let h = &mut self.recv_hdr[i];
                    h.msg_hdr.msg_iov = &mut self.recv_iov[i];
                    h.msg_hdr.msg_iovlen = 1;
                    h.msg_len = 0;
                }
                // SAFETY: headers point at iovecs over owned buffers of RECV_BUF bytes.
                let rc = unsafe {
                    libc::recvmmsg(
                        fd,
                        self.recv_hdr.as_mut_ptr(),
                        RECV_BATCH as libc::c_uint,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if rc <= 0 {
                    let e = io::Error::last_os_error();
                    if rc < 0
                        && !matches!(
                            e.raw_os_error(),
                            Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNREFUSED)
                        )
                    {
                        return Err(e);
                    }
                    break;
                }
                // Stamped when the data reached user space, as sockperf does: an upper bound on the arrival time.
                let rx = self.now();
                for i in 0..rc as usize {
                    let n = (self.recv_hdr[i].msg_len as usize).min(RECV_BUF);
                    on(&self.recv_bufs[i][..n], rx);
                }
                total += rc as usize;
                if (rc as usize) < RECV_BATCH {
                    break;
                }
            }
        }
        Ok(total)
    }
}

/// Pins the calling thread to `core`.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(core, &mut set);
        check(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set))?;
    }
    Ok(())
}
