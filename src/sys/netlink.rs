//! rtnetlink address notifications: a `NETLINK_ROUTE` socket subscribed to the kernel's IPv4 and IPv6
//! address groups (`RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`), so that the control plane learns when an
//! interface gains or loses an address. Only "something changed on this interface" is extracted from the
//! messages; the caller lists the addresses again ([`super::interface_addresses`]), which also covers
//! notifications the kernel had to drop (`ENOBUFS` on an overrun socket).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

/// `NETLINK_ROUTE` (linux/netlink.h).
const NETLINK_ROUTE: libc::c_int = 0;
/// `RTMGRP_IPV4_IFADDR` (linux/rtnetlink.h).
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// `RTMGRP_IPV6_IFADDR` (linux/rtnetlink.h).
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// `RTM_NEWADDR` (linux/rtnetlink.h).
const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR` (linux/rtnetlink.h).
const RTM_DELADDR: u16 = 21;
use super::NLMSG_HDRLEN;
/// `struct ifaddrmsg`: family, prefixlen, flags, scope (one byte each), then the u32 interface index.
const IFADDRMSG_LEN: usize = 8;

/// A subscription to the kernel's address notifications, for one interface. Opened in the calling thread's
/// network namespace; it keeps that namespace for life.
#[derive(Debug)]
pub struct AddressEvents {
    fd: OwnedFd,
    ifindex: u32,
}

impl AddressEvents {
    /// Subscribes to IPv4 and IPv6 address notifications and keeps those about interface `ifindex`. Subscribe
    /// before listing the addresses: a change between the two is then seen as an event, never missed.
    pub fn subscribe(ifindex: u32) -> io::Result<AddressEvents> {
        let fd = super::owned_socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK, NETLINK_ROUTE)?;
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        // SAFETY: bind(2) reads `size_of::<sockaddr_nl>()` bytes from a live, initialised sockaddr_nl.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AddressEvents { fd, ifindex })
    }

    /// Waits up to `timeout` for notifications and reads all that are queued. `Ok(true)` when an address of
    /// the interface was added or removed, or when notifications were lost (the socket overran), so that the
    /// caller should list the addresses again; `Ok(false)` when nothing about the interface came in time.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll(2) reads and writes one pollfd through a valid pointer for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        if rc == 0 {
            return Ok(false);
        }
        let mut changed = false;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv(2) writes at most `buf.len()` bytes into a live buffer.
            let got = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(changed),
                    Some(libc::EINTR) => continue,
                    // The kernel dropped notifications: we cannot tell which, so list again.
                    Some(libc::ENOBUFS) => changed = true,
                    _ => return Err(e),
                }
                continue;
            }
            changed |= concerns(buf.get(..got as usize).unwrap_or_default(), self.ifindex);
        }
    }
}

/// Whether the netlink messages in `buf` include an address added to or removed from interface `ifindex`.
/// Malformed input ends the walk (never a panic).
fn concerns(buf: &[u8], ifindex: u32) -> bool {
    let mut rest = buf;
    while let Some(header) = rest.get(..NLMSG_HDRLEN) {
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            return false;
        }
        if kind == RTM_NEWADDR || kind == RTM_DELADDR {
            if let Some(msg) = rest.get(NLMSG_HDRLEN..NLMSG_HDRLEN + IFADDRMSG_LEN) {
                if u32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]) == ifindex {
                    return true;
                }
            }
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, ifindex: u32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDRLEN + IFADDRMSG_LEN + 8];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&kind.to_ne_bytes());
        m[NLMSG_HDRLEN] = libc::AF_INET as u8;
        m[NLMSG_HDRLEN + 4..NLMSG_HDRLEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
        m
    }

    #[test]
    fn address_messages_are_matched_by_interface() {
        assert!(concerns(&message(RTM_NEWADDR, 7), 7));
        assert!(concerns(&message(RTM_DELADDR, 7), 7));
        assert!(!concerns(&message(RTM_NEWADDR, 8), 7));
        // Another message type about the same index (RTM_NEWLINK = 16) is not an address change.
        assert!(!concerns(&message(16, 7), 7));
        // Several messages in one datagram: the second one counts.
        let mut two = message(RTM_NEWADDR, 8);
        two.extend(message(RTM_DELADDR, 7));
        assert!(concerns(&two, 7));
        // Truncated input is never a match and never a panic.
        let full = message(RTM_NEWADDR, 7);
        for cut in 0..full.len() {
            assert!(!concerns(&full[..cut], 7), "cut at {cut}");
        }
        let mut bad = message(RTM_NEWADDR, 7);
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(!concerns(&bad, 7));
    }
}
