//! Probes of what the kernel and a network device offer, each by asking the kernel directly (a socket
//! option set on a throw-away socket, a generic-netlink query), never by comparing version numbers.
//!
//! Every probe answers `Ok(true)` / `Ok(false)` when the kernel gave a clear answer and `Err` when it could not
//! be asked (a missing privilege, say), so that callers can tell "no" from "unknown".

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

/// `AF_XDP` (linux/socket.h).
const AF_XDP: libc::c_int = 44;
/// `SOL_XDP` (linux/socket.h).
const SOL_XDP: libc::c_int = 283;
/// `XDP_MMAP_OFFSETS` (linux/if_xdp.h).
const XDP_MMAP_OFFSETS: libc::c_int = 1;
/// `SO_PREFER_BUSY_POLL` (asm-generic/socket.h).
const SO_PREFER_BUSY_POLL: libc::c_int = 69;

use super::owned_socket as socket;

/// Whether an error means "the kernel does not know this", as opposed to "you may not ask".
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOPROTOOPT | libc::EINVAL | libc::EAFNOSUPPORT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT)
    )
}

fn answer(result: io::Result<()>) -> io::Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the kernel has AF_XDP sockets (creating one needs CAP_NET_RAW).
pub fn af_xdp_sockets() -> io::Result<bool> {
    answer(socket(AF_XDP, libc::SOCK_RAW, 0).map(drop))
}

/// Whether AF_XDP rings carry a flags word (`XDP_MMAP_OFFSETS` answers with the larger struct), which is
/// where the kernel raises `XDP_RING_NEED_WAKEUP`: without it every ring needs a system call to move.
pub fn af_xdp_need_wakeup() -> io::Result<bool> {
    let fd = socket(AF_XDP, libc::SOCK_RAW, 0)?;
    // struct xdp_mmap_offsets: four rings of (producer, consumer, desc, flags); kernels without ring flags
    // answer with the three-field layout (12 words instead of 16).
    let mut offsets = [0u64; 16];
    let mut len = std::mem::size_of_val(&offsets) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `offsets` and stores the length it wrote in `len`.
    let rc =
        unsafe { libc::getsockopt(fd.as_raw_fd(), SOL_XDP, XDP_MMAP_OFFSETS, offsets.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize == std::mem::size_of_val(&offsets))
}

/// Whether sockets accept `SO_PREFER_BUSY_POLL` (the `busy-poll` poll mode needs it).
pub fn prefer_busy_poll() -> io::Result<bool> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    answer(super::set_int_option(fd.as_fd(), SO_PREFER_BUSY_POLL, 1))
}

/// Whether UDP sockets give software receive timestamps (`SO_TIMESTAMPING_NEW` with RX_SOFTWARE): the
/// kernel-socket datapath's in-server latency needs them.
pub fn rx_software_timestamps() -> io::Result<bool> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    answer(super::enable_rx_software_timestamps(fd.as_fd()))
}

/// What a device says it can do with XDP (the kernel's `netdev` generic-netlink family, `dev-get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpFeatures {
    /// `NETDEV_XDP_ACT_*` bits: what XDP actions the driver implements natively.
    pub actions: u64,
    /// `NETDEV_XDP_RX_METADATA_*` bits: which RX metadata kfuncs the driver answers.
    pub rx_metadata: u64,
}

impl XdpFeatures {
    /// `NETDEV_XDP_ACT_BASIC`: native (driver) XDP with XDP_PASS/DROP/TX.
    pub const ACT_BASIC: u64 = 1;
    /// `NETDEV_XDP_ACT_REDIRECT`: native XDP_REDIRECT (into AF_XDP sockets, among others).
    pub const ACT_REDIRECT: u64 = 2;
    /// `NETDEV_XDP_ACT_XSK_ZEROCOPY`: AF_XDP zero-copy.
    pub const ACT_XSK_ZEROCOPY: u64 = 8;
    /// `NETDEV_XDP_RX_METADATA_TIMESTAMP`: `bpf_xdp_metadata_rx_timestamp` answers.
    pub const RX_METADATA_TIMESTAMP: u64 = 1;

    /// Native XDP with redirects, as shunt's native attach needs.
    pub fn native_redirect(&self) -> bool {
        self.actions & (Self::ACT_BASIC | Self::ACT_REDIRECT) == Self::ACT_BASIC | Self::ACT_REDIRECT
    }

    /// AF_XDP zero-copy.
    pub fn zero_copy(&self) -> bool {
        self.actions & Self::ACT_XSK_ZEROCOPY != 0
    }

    /// RX hardware timestamps through the metadata kfunc.
    pub fn rx_timestamp(&self) -> bool {
        self.rx_metadata & Self::RX_METADATA_TIMESTAMP != 0
    }
}

// Generic netlink (linux/netlink.h, linux/genetlink.h) and the netdev family (linux/netdev.h, Linux 6.3).
const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NETDEV_A_DEV_XDP_RX_METADATA_FEATURES: u16 = 5;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
use super::NLMSG_HDRLEN;
const GENL_HDRLEN: usize = 4;

/// One generic-netlink request: header, genl header, then attributes.
fn genl_request(family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDRLEN];
    msg.extend_from_slice(&[cmd, 1, 0, 0]);
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        msg.extend_from_slice(&(len as u16).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(payload);
        msg.resize(msg.len().next_multiple_of(4), 0);
    }
    let total = msg.len() as u32;
    msg[0..4].copy_from_slice(&total.to_ne_bytes());
    msg[4..6].copy_from_slice(&family.to_ne_bytes());
    msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
    msg
}

/// Sends `request` and returns the attributes of the answer, or the kernel's error.
fn genl_exchange(fd: &OwnedFd, request: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    // SAFETY: send(2) reads `request.len()` bytes from a live slice.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 16384];
    // SAFETY: recv(2) writes at most `buf.len()` bytes into a live buffer.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_genl_answer(buf.get(..got as usize).unwrap_or_default())
}

/// The attributes of the first message in `buf`; an `NLMSG_ERROR` becomes its errno.
fn parse_genl_answer(buf: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer");
    let header = buf.get(..NLMSG_HDRLEN).ok_or_else(bad)?;
    let len = u32::from_ne_bytes(header[0..4].try_into().map_err(|_| bad())?) as usize;
    let kind = u16::from_ne_bytes(header[4..6].try_into().map_err(|_| bad())?);
    let body = buf.get(NLMSG_HDRLEN..len.min(buf.len())).ok_or_else(bad)?;
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(body.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        return Err(io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(libc::EINVAL)));
    }
    let mut attrs = Vec::new();
    let mut rest = body.get(GENL_HDRLEN..).ok_or_else(bad)?;
    while rest.len() >= 4 {
        let alen = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let akind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if alen < 4 || alen > rest.len() {
            return Err(bad());
        }
        attrs.push((akind, rest[4..alen].to_vec()));
        rest = rest.get(alen.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(attrs)
}

fn attr_u64(attrs: &[(u16, Vec<u8>)], kind: u16) -> Option<u64> {
    let value = &attrs.iter().find(|(k, _)| *k == kind)?.1;
    match value.len() {
        8 => Some(u64::from_ne_bytes(value.as_slice().try_into().ok()?)),
        4 => Some(u64::from(u32::from_ne_bytes(value.as_slice().try_into().ok()?))),
        _ => None,
    }
}

/// What device `ifindex` (in the calling thread's network namespace) says it can do with XDP, from the
/// kernel's `netdev` generic-netlink family; `Ok(None)` when the kernel has no such family (it reports XDP
/// features since Linux 6.3), so the answer is unknown and only an attach or bind will tell.
pub fn xdp_features(ifindex: u32) -> io::Result<Option<XdpFeatures>> {
    let fd = socket(libc::AF_NETLINK, libc::SOCK_RAW, NETLINK_GENERIC)?;
    let family = match genl_exchange(
        &fd,
        &genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &[(CTRL_ATTR_FAMILY_NAME, b"netdev\0")]),
    ) {
        Ok(attrs) => match attr_u64(&attrs, CTRL_ATTR_FAMILY_ID) {
            Some(id) => id as u16,
            None => {
                // CTRL_ATTR_FAMILY_ID is a u16: two bytes, padded.
                let id = attrs.iter().find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID).and_then(|(_, v)| v.first_chunk::<2>());
                match id {
                    Some(b) => u16::from_ne_bytes(*b),
                    None => return Err(io::Error::new(io::ErrorKind::InvalidData, "no family id in the answer")),
                }
            }
        },
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let attrs = genl_exchange(
        &fd,
        &genl_request(family, NETDEV_CMD_DEV_GET, &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())]),
    )?;
    Ok(Some(XdpFeatures {
        actions: attr_u64(&attrs, NETDEV_A_DEV_XDP_FEATURES).unwrap_or(0),
        rx_metadata: attr_u64(&attrs, NETDEV_A_DEV_XDP_RX_METADATA_FEATURES).unwrap_or(0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_padded_and_answers_parsed() {
        let req = genl_request(0x10, 3, &[(2, b"netdev\0")]);
        assert_eq!(req.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
        // An answer: header, genl header, a u16 attribute (padded) and a u64 one.
        let mut answer = genl_request(0x20, 1, &[(1, &0x1234u16.to_ne_bytes()), (3, &9u64.to_ne_bytes())]);
        answer[4..6].copy_from_slice(&0x20u16.to_ne_bytes());
        let attrs = parse_genl_answer(&answer).unwrap();
        assert_eq!(attrs[0], (1, 0x1234u16.to_ne_bytes().to_vec()));
        assert_eq!(attr_u64(&attrs, 3), Some(9));
        // An error answer carries the negative errno.
        let mut err = vec![0u8; 20];
        err[0..4].copy_from_slice(&20u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_genl_answer(&err).unwrap_err().raw_os_error(), Some(libc::ENOENT));
        // Truncated input is an error, never a panic.
        for cut in 0..answer.len() {
            let _ = parse_genl_answer(&answer[..cut]);
        }
    }

    #[test]
    fn feature_bits_read_as_named() {
        let f = XdpFeatures { actions: 1 | 2 | 8, rx_metadata: 1 };
        assert!(f.native_redirect() && f.zero_copy() && f.rx_timestamp());
        assert!(!XdpFeatures { actions: 1, rx_metadata: 0 }.native_redirect());
    }
}
