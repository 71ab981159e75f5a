//! Opening the worker's UDP sockets: one per port, dual-stack `[::]:port`, SO_REUSEPORT, SO_BINDTODEVICE,
//! packet info, optional software receive timestamps, blocking or not as the I/O model wants.

use std::{
    net::{Ipv6Addr, SocketAddr},
    os::fd::AsFd,
    time::Duration,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{KernelSocketError, KernelSocketOptions, SocketIo};
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
    }
    let any = SockAddr::from(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)));
    socket.bind(&any).map_err(|source| KernelSocketError::Bind { port, source })?;
    Ok(socket)
}
