//! Opening the worker's UDP sockets: one per port, dual-stack `[::]:port`, SO_REUSEPORT, SO_BINDTODEVICE,
//! packet info, optional software receive timestamps, blocking or not as the I/O model wants.

use std::{
    net::{Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{
    cmsg,
    msg::{self, Slot},
    KernelSocketError, KernelSocketOptions, SocketIo,
};
use crate::sys;

/// How long a blocking receive (or send) waits before the worker looks at its stop flag again.
pub(super) const BLOCKING_TIMEOUT: Duration = Duration::from_millis(100);

/// One served port's socket.
pub(super) struct PortSocket {
    pub socket: Socket,
    pub port: u16,
}

/// Opens one socket per port of `options`.
pub(super) fn open_all(options: &KernelSocketOptions) -> Result<Vec<PortSocket>, KernelSocketError> {
    options.ports.iter().map(|&port| open(options, port).map(|socket| PortSocket { socket, port })).collect()
}

fn open(options: &KernelSocketOptions, port: u16) -> Result<Socket, KernelSocketError> {
    let fail = |what: &'static str| move |source| KernelSocketError::Socket { port, what, source };
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).map_err(fail("socket(AF_INET6, UDP)"))?;
    socket.set_only_v6(false).map_err(fail("IPV6_V6ONLY off (dual stack)"))?;
    socket.set_reuse_port(true).map_err(fail("SO_REUSEPORT"))?;
    socket.bind_device(Some(options.interface.as_bytes())).map_err(|source| KernelSocketError::BindToDevice {
        port,
        interface: options.interface.clone(),
        source,
    })?;
    sys::enable_packet_info(socket.as_fd()).map_err(fail("IP_PKTINFO / IPV6_RECVPKTINFO"))?;
    sys::enable_ip_header_info(socket.as_fd())
        .map_err(fail("IP_RECVTOS / IP_RECVTTL / IPV6_RECVTCLASS / IPV6_RECVHOPLIMIT"))?;
    // Beyond net.core.rmem_max where the process may (CAP_NET_ADMIN); within it otherwise.
    let size = options.receive_buffer as usize;
    if sys::force_receive_buffer(socket.as_fd(), options.receive_buffer).is_err() {
        socket.set_recv_buffer_size(size).map_err(fail("SO_RCVBUF"))?;
    }
    if options.timestamps {
        sys::enable_rx_software_timestamps(socket.as_fd()).map_err(fail("SO_TIMESTAMPING (RX software)"))?;
    }
    match options.io {
        SocketIo::Blocking => {
            socket.set_read_timeout(Some(BLOCKING_TIMEOUT)).map_err(fail("SO_RCVTIMEO"))?;
            socket.set_write_timeout(Some(BLOCKING_TIMEOUT)).map_err(fail("SO_SNDTIMEO"))?;
        }
        SocketIo::Nonblocking | SocketIo::Epoll | SocketIo::Signal | SocketIo::Mmsg => {
            socket.set_nonblocking(true).map_err(fail("O_NONBLOCK"))?;
        }
        // io_uring tries each operation without blocking and waits on the socket's readiness itself; an
        // O_NONBLOCK socket would have it complete receives with EAGAIN instead of waiting.
        SocketIo::IoUring => {}
    }
    let any = SockAddr::from(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    socket.bind(&any).map_err(|source| KernelSocketError::Bind { port, source })?;
    Ok(socket)
}

/// How long [`await_rx_stamping`] waits for the kernel to start stamping.
pub(super) const STAMPING_DEADLINE: Duration = Duration::from_secs(2);

/// Waits until the kernel stamps received datagrams, so that latency is measured from the first request.
///
/// Turning SO_TIMESTAMPING on for a socket does not start the stamping at once: the kernel flips its global
/// "timestamps wanted" switch (`netstamp_needed_key`) from a work item, which on a busy machine (a spinning
/// worker beside the load generator on two CPUs) ran after hundreds of requests had come in unstamped. The
/// switch is global, so a datagram this process sends itself over loopback and gets back stamped shows it is
/// on. Returns whether it was seen on before `deadline`; without a loopback (down in this namespace) the
/// answer is `false` at once.
pub(super) fn await_rx_stamping(deadline: Duration) -> bool {
    let Ok(probe) = open_probe() else { return false };
    let Ok(to) = probe.local_addr() else { return false };
    let mut slot = Slot::new();
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if probe.send_to(&[0], &to).is_err() {
            return false;
        }
        // A loopback datagram is queued before send_to returns; the timeout only covers a dropped one.
        if msg::receive(probe.as_fd(), &mut slot).is_ok()
            && cmsg::parse(slot.received_control()).rx_realtime_ns.is_some()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// A UDP socket on 127.0.0.1 (or ::1) receiving software timestamps, for [`await_rx_stamping`].
fn open_probe() -> std::io::Result<Socket> {
    let v4 = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    let mut last = None;
    for addr in [v4, v6] {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        sys::enable_rx_software_timestamps(socket.as_fd())?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        match socket.bind(&addr.into()) {
            Ok(()) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loopback_probe_sees_stamping_switched_on() {
        // The probe's own socket asks for stamps, so the kernel's switch must come on within the deadline.
        assert!(await_rx_stamping(STAMPING_DEADLINE));
    }
}
