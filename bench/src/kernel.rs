//! Kernel-socket transport: one connected, non-blocking UDP socket per flow, `sendmmsg` / `recvmmsg` in batches.

use std::{
    io,
    mem::zeroed,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
};

use rustix::net::{self as rnet, sockopt, AddressFamily, SocketFlags, SocketType};
/// CPU affinity is the library's (`shunt::sys`, rustix): one way to pin a thread in the workspace.
pub use shunt::sys::pin_to_core;

use crate::engine::Transport;

const RECV_BATCH: usize = 64;
const RECV_BUF: usize = 2048;

/// Socket buffers of `bytes`: SO_RCVBUFFORCE/SO_SNDBUFFORCE where permitted (CAP_NET_ADMIN), past
/// net.core.[rw]mem_max, else the plain options, which the kernel caps at those limits. Best effort.
fn set_buffers(fd: &OwnedFd, bytes: usize) {
    if sockopt::set_socket_recv_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(fd, bytes);
    }
    if sockopt::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(fd, bytes);
    }
}

/// Opens a non-blocking UDP socket bound to `local` (port 0: any) and connected to `target`.
pub fn connected_socket(local: SocketAddr, target: SocketAddr) -> io::Result<OwnedFd> {
    let family = if target.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rnet::socket_with(family, SocketType::DGRAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)?;
    set_buffers(&fd, 8 << 20);
    rnet::bind(&fd, &local)?;
    rnet::connect(&fd, &target)?;
    Ok(fd)
}

/// The local address a connected socket got.
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    SocketAddr::try_from(rnet::getsockname(fd)?).map_err(io::Error::from)
}

/// Kernel UDP sockets, one per flow.
pub struct KernelTransport {
    socks: Vec<OwnedFd>,
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

// SAFETY: the raw pointers in the iovec and mmsghdr arrays point into this transport's own heap buffers
// (`recv_bufs`, `send_iov`, `recv_iov`), which move with it, and are rewritten before every call; nothing is
// shared with another thread. A sender thread takes the whole transport with it for a run.
unsafe impl Send for KernelTransport {}

impl Transport for KernelTransport {
    fn now(&mut self) -> u64 {
        crate::engine::clock_ns()
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

#[cfg(test)]
mod tests {
    use std::{
        net::UdpSocket,
        time::{Duration, Instant},
    };

    use super::*;

    /// Requests go out over sendmmsg from sockets bound and connected through rustix, an echo comes back
    /// through recvmmsg; over IPv4 and (where the host has it) IPv6 loopback.
    #[test]
    fn loopback_round_trip() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let server = match UdpSocket::bind(bind) {
                Ok(s) => s,
                Err(e) if bind.starts_with('[') => {
                    eprintln!("no IPv6 loopback ({e}): IPv4 only");
                    continue;
                }
                Err(e) => panic!("bind {bind}: {e}"),
            };
            server.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let target = server.local_addr().unwrap();
            let mut transport = KernelTransport::new(target, 2, 0, 8).unwrap();
            let local = local_addr(&transport.socks[0]).unwrap();
            assert_eq!(local.is_ipv4(), target.is_ipv4());
            assert_ne!(local.port(), 0);

            let payloads = vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()];
            assert_eq!(transport.send(&payloads, &[3, 3, 5], &[0, 0, 1]).unwrap(), 3);
            let mut buf = [0u8; 64];
            for _ in 0..3 {
                let (n, from) = server.recv_from(&mut buf).unwrap();
                server.send_to(&buf[..n], from).unwrap();
            }
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < 3 && Instant::now() < deadline {
                transport.recv(&mut |payload, _| got.push(payload.to_vec())).unwrap();
            }
            got.sort();
            assert_eq!(got, [b"one".to_vec(), b"three".to_vec(), b"two".to_vec()], "over {bind}");
        }
    }
}
