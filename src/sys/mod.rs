//! The one OS module: the raw system calls the datapath, the XDP steering and the control plane need, each
//! behind a safe function (bpf_link creation, rlimits, clocks, CPU affinity, interface and ethtool queries;
//! the kernel's routing and neighbour tables over rtnetlink in [`route`], which needs no `unsafe` at all).
//! The kernel-socket datapath's UDP message calls (recvmsg, sendmsg, recvmmsg, sendmmsg) are here too, in
//! `msg`, as `unsafe fn`s: the headers they take point into the datapath's buffers, which only the datapath
//! can vouch for, so it builds them and states why they are valid at each call. The datapath makes no raw
//! system call of its own; what it still calls directly goes through safe crates (io_uring, xsk-rs, rustix's
//! epoll).
//! Where `rustix` has a safe wrapper it is used; what is left (bpf_link_create, if_nametoindex, the ethtool
//! ioctl) is `unsafe` here and nowhere else outside the datapath. The XDP program's generated libbpf-rs
//! skeleton (`skel`), whose generated code has `unsafe` blocks of its own, is included here for that reason.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

pub(crate) mod answer_skel;
pub(crate) mod msg;
pub mod netlink;
pub mod probe;
pub mod route;
pub(crate) mod skel;

/// `NLMSG_HDRLEN` (linux/netlink.h): the aligned `struct nlmsghdr`, for the netlink messages built and read
/// here (`probe`, `netlink`).
const NLMSG_HDRLEN: usize = 16;

/// A new socket (`socket(2)` with SOCK_CLOEXEC added to `kind`), owned.
fn owned_socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; a non-negative return is a new descriptor that nothing else owns.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `XDP_FLAGS_SKB_MODE`: attach in the generic hook.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: attach in the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Attaches the XDP program `prog_fd` to interface `ifindex` through a bpf_link with the given `XDP_FLAGS_*`
/// mode, returning the link's fd. Closing the fd (or the process exiting) detaches the program.
pub fn create_xdp_link(prog_fd: RawFd, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as libbpf_sys::size_t,
        flags,
        ..Default::default()
    };
    // SAFETY: `opts` is a fully initialised bpf_link_create_opts whose `sz` matches its size, and it outlives
    // the call; the fds are plain integers the kernel validates.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lifts RLIMIT_MEMLOCK, which kernels older than 5.11 charge BPF maps and every kernel charges UMEMs to
/// (unless the process has CAP_IPC_LOCK). Best effort: a failure shows up later as ENOMEM/EPERM.
pub fn raise_memlock_limit() -> io::Result<()> {
    let unlimited = rustix::process::Rlimit { current: None, maximum: None };
    rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited).map_err(io::Error::from)
}

/// The id of the calling thread (for logs and for matching /proc/self/task entries).
pub fn thread_id() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// `struct ethtool_channels` from linux/ethtool.h.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// The number of receive queues of interface `name` (RX-only plus combined channels), asked of the driver
/// with ETHTOOL_GCHANNELS in the calling thread's network namespace.
pub fn rx_queue_count(name: &str) -> io::Result<u32> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut channels = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast();
    // SAFETY: plain socket creation; the fd is wrapped right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads `req` and writes through ifru_data into `channels`, both alive for the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&sock), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(channels.rx_count + channels.combined_count)
}

/// An interface request (`struct ifreq`) for `name`, answered by the kernel's `request` ioctl (one that reads
/// the name and writes into the request's union) in the calling thread's network namespace.
fn interface_request(name: &str, request: libc::Ioctl) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation; the fd is wrapped right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the callers' requests (SIOCGIFMTU) read the NUL-terminated name in `req` (zeroed
    // past the name, which is shorter than IFNAMSIZ) and write into its union, inside `req`, which is alive
    // for the call.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&sock), request, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(req)
}

/// The MTU of interface `name` (the largest IP packet it sends, header included), asked of the kernel with
/// SIOCGIFMTU in the calling thread's network namespace.
pub fn interface_mtu(name: &str) -> io::Result<u32> {
    let req = interface_request(name, libc::SIOCGIFMTU)?;
    // SAFETY: after a successful SIOCGIFMTU the kernel has written the union's ifru_mtu member (a c_int).
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so XDP stamps and worker times
/// compare directly. Served by the vDSO: no system call.
#[inline]
pub fn monotonic_ns() -> u64 {
    timespec_ns(rustix::time::clock_gettime(rustix::time::ClockId::Monotonic))
}

/// CLOCK_REALTIME in nanoseconds since the Unix epoch (0 for a clock set before 1970). Served by the vDSO.
#[inline]
pub fn realtime_ns() -> u64 {
    timespec_ns(rustix::time::clock_gettime(rustix::time::ClockId::Realtime))
}

#[inline]
fn timespec_ns(ts: rustix::time::Timespec) -> u64 {
    u64::try_from(ts.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// The CPUs the calling thread may run on.
pub fn allowed_cores() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Pins the calling thread to `core` alone.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    if core >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(core);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Restricts the calling thread (and threads it spawns afterwards) to the CPUs it may use now minus
/// `exclude`, so that control-plane threads never preempt a spinning worker. Does nothing if that would leave
/// no CPU.
pub fn avoid_cores(exclude: &[usize]) -> io::Result<()> {
    let mut set = rustix::thread::sched_getaffinity(None)?;
    let mut left = 0;
    for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
        if set.is_set(cpu) {
            if exclude.contains(&cpu) {
                set.unset(cpu);
            } else {
                left += 1;
            }
        }
    }
    if left == 0 {
        return Ok(());
    }
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// CPU time a thread has used, from the kernel's accounting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuTimes {
    /// Time spent in user space, in ns.
    pub user_ns: u64,
    /// Time spent in the kernel on the thread's behalf (system calls, and in copy mode the TX kicks), in ns.
    pub system_ns: u64,
}

/// The CPU time the calling thread has used so far (getrusage RUSAGE_THREAD, microsecond resolution).
pub fn thread_cpu_times() -> io::Result<CpuTimes> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage through a valid pointer that outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let ns =
        |t: libc::timeval| (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_usec as u64 * 1_000);
    Ok(CpuTimes { user_ns: ns(usage.ru_utime), system_ns: ns(usage.ru_stime) })
}

/// Clock ticks per second: the unit of the times in /proc/stat and /proc/PID/task/TID/stat.
pub fn clock_ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// `SO_BUSY_POLL` (asm-generic/socket.h): µs to busy-poll the device queue in blocking calls.
const SO_BUSY_POLL: libc::c_int = 46;
/// `SO_PREFER_BUSY_POLL` (asm-generic/socket.h, Linux 5.11): prefer busy polling over softirq processing.
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET` (asm-generic/socket.h, Linux 5.11): packets per busy-poll round.
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

fn set_int_option(fd: std::os::fd::BorrowedFd<'_>, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int through a valid pointer for the duration of the call; the fd is
    // borrowed, so it stays open.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns on preferred busy polling for socket `fd` (SO_PREFER_BUSY_POLL, SO_BUSY_POLL = `usecs`,
/// SO_BUSY_POLL_BUDGET = `budget`): the application's own system calls then drive the device's NAPI poll,
/// instead of interrupts and softirqs (Documentation/networking/af_xdp.rst, "busy polling").
pub fn set_busy_poll(fd: std::os::fd::BorrowedFd<'_>, usecs: u32, budget: u16) -> io::Result<()> {
    set_int_option(fd, SO_PREFER_BUSY_POLL, 1)?;
    set_int_option(fd, SO_BUSY_POLL, libc::c_int::try_from(usecs).unwrap_or(libc::c_int::MAX))?;
    set_int_option(fd, SO_BUSY_POLL_BUDGET, libc::c_int::from(budget))
}

/// Every IPv4 and IPv6 address of every interface in the calling thread's network namespace (getifaddrs).
pub fn host_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    addresses_where(|_| true)
}

/// Every IPv4 and IPv6 address of interface `name` in the calling thread's network namespace (getifaddrs),
/// IPv6 link-local ones included; empty when it has none, or when there is no such interface. Labelled IPv4
/// addresses (`ip addr add ... dev eth0 label eth0:vip`, as keepalived sets them) are listed under their
/// label, `name:` and the label's rest, and count as the interface's.
pub fn interface_addresses(name: &str) -> io::Result<Vec<std::net::IpAddr>> {
    addresses_where(|ifa_name| {
        ifa_name == name.as_bytes()
            || ifa_name.strip_prefix(name.as_bytes()).is_some_and(|rest| rest.first() == Some(&b':'))
    })
}

/// The IPv4 and IPv6 addresses of the interfaces whose name `keep` accepts, sorted, without repeats.
fn addresses_where(keep: impl Fn(&[u8]) -> bool) -> io::Result<Vec<std::net::IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores a list it allocated in `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which stays valid until freeifaddrs.
        let node = unsafe { &*cur };
        let named = !node.ifa_name.is_null()
            // SAFETY: a non-null ifa_name is a NUL-terminated string owned by the list, alive until freeifaddrs.
            && keep(unsafe { std::ffi::CStr::from_ptr(node.ifa_name) }.to_bytes());
        if named && !node.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says which struct it is.
            let family = i32::from(unsafe { (*node.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*node.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = node.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once; no reference into it outlives this call.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// RLIMIT_MEMLOCK's soft limit in bytes, `None` when unlimited.
pub fn memlock_limit() -> io::Result<Option<u64>> {
    Ok(rustix::process::getrlimit(rustix::process::Resource::Memlock).current)
}

// ---------------------------------------------------------------------------------------------------------
// Kernel-socket datapath (crate::datapath::socket): the socket options and the signal-driven I/O calls that
// neither socket2 nor rustix wraps.
// ---------------------------------------------------------------------------------------------------------

/// `SO_TIMESTAMPING_NEW` (asm-generic/socket.h, Linux 5.1): like SO_TIMESTAMPING, but the control message it
/// produces (`SCM_TIMESTAMPING_NEW`, the same number) always carries 64-bit `__kernel_timespec`s, whatever
/// the architecture's `time_t`.
pub const SO_TIMESTAMPING_NEW: libc::c_int = 65;

/// Sets an integer socket option at any level (`setsockopt(fd, level, name, &value, sizeof(int))`).
fn set_int_option_at(
    fd: std::os::fd::BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt reads one c_int through a valid pointer for the duration of the call; the fd is
    // borrowed, so it stays open.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Asks a dual-stack UDP socket for each datagram's destination address and arrival interface: IP_PKTINFO
/// (an `in_pktinfo` for IPv4 datagrams) and IPV6_RECVPKTINFO (an `in6_pktinfo`, v4-mapped for IPv4 ones).
pub fn enable_packet_info(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    set_int_option_at(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    set_int_option_at(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
}

/// Asks for each received datagram's IP header fields as control messages: IP_RECVTOS and IP_RECVTTL (IPv4,
/// also for IPv4 datagrams on a dual-stack IPv6 socket), IPV6_RECVTCLASS and IPV6_RECVHOPLIMIT (IPv6).
pub fn enable_ip_header_info(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    set_int_option_at(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, 1)?;
    set_int_option_at(fd, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
    set_int_option_at(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, 1)?;
    set_int_option_at(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)
}

/// Sets socket `fd`'s receive buffer to `bytes` with SO_RCVBUFFORCE, beyond net.core.rmem_max (needs
/// CAP_NET_ADMIN; EPERM without it).
pub fn force_receive_buffer(fd: std::os::fd::BorrowedFd<'_>, bytes: u32) -> io::Result<()> {
    set_int_option_at(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes.min(i32::MAX as u32) as libc::c_int)
}

/// `SK_MEMINFO_DROPS`: the index of the drop count in SO_MEMINFO's array (linux/sock_diag.h).
const SK_MEMINFO_DROPS: usize = 8;
/// Entries of SO_MEMINFO's array (`SK_MEMINFO_VARS`).
const SK_MEMINFO_VARS: usize = 9;

/// How many datagrams the kernel has dropped on this socket (receive buffer full, filter), from SO_MEMINFO.
pub fn socket_drops(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<u64> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that long; the fd is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info.get(SK_MEMINFO_DROPS).copied().unwrap_or(0)))
}

/// Turns on the kernel's software receive timestamps for socket `fd`, delivered with each datagram as an
/// `SCM_TIMESTAMPING_NEW` control message (CLOCK_REALTIME, taken as the packet entered the stack):
/// SO_TIMESTAMPING_NEW with SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE.
pub fn enable_rx_software_timestamps(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    set_int_option_at(fd, libc::SOL_SOCKET, SO_TIMESTAMPING_NEW, flags as libc::c_int)
}

/// `F_SETSIG` (linux/fcntl.h): the signal sent when I/O becomes possible on an O_ASYNC descriptor.
const F_SETSIG: libc::c_int = 10;
/// `F_SETOWN_EX` (linux/fcntl.h): who receives that signal.
const F_SETOWN_EX: libc::c_int = 15;
/// `F_OWNER_TID` (linux/fcntl.h): the owner is one thread, not a process or process group.
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex` (linux/fcntl.h).
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// Directs descriptor `fd`'s I/O-readiness notifications: real-time signal `signal` (F_SETSIG, so the
/// siginfo names the descriptor in `si_fd`) to thread `tid` alone (F_SETOWN_EX with F_OWNER_TID). Nothing
/// is sent until O_ASYNC is turned on ([`set_async`]).
pub fn set_io_signal(fd: std::os::fd::BorrowedFd<'_>, signal: i32, tid: i32) -> io::Result<()> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: F_SETSIG takes an int argument; the fd is borrowed, so it stays open.
    if unsafe { libc::fcntl(raw, F_SETSIG, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let owner = FOwnerEx { kind: F_OWNER_TID, pid: tid };
    // SAFETY: F_SETOWN_EX reads one f_owner_ex through a valid pointer for the duration of the call.
    if unsafe { libc::fcntl(raw, F_SETOWN_EX, &owner as *const FOwnerEx) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns signal-driven I/O (O_ASYNC) on or off for `fd`, keeping its other file status flags.
pub fn set_async(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: F_GETFL takes no argument; the fd is borrowed, so it stays open.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on { flags | libc::O_ASYNC } else { flags & !libc::O_ASYNC };
    // SAFETY: F_SETFL takes an int argument.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The real-time signal `offset` places above SIGRTMIN (as the C library defines it, after the signals it
/// keeps for itself), if that is still at most SIGRTMAX.
pub fn realtime_signal(offset: i32) -> Option<i32> {
    let signal = libc::SIGRTMIN().checked_add(offset)?;
    (offset >= 0 && signal <= libc::SIGRTMAX()).then_some(signal)
}

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl std::fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<i32> = (1..=libc::SIGRTMAX()).filter(|&s| self.contains(s)).collect();
        f.debug_tuple("SignalSet").field(&members).finish()
    }
}

impl SignalSet {
    /// The set holding exactly `signals`.
    pub fn of(signals: &[i32]) -> io::Result<SignalSet> {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set it is given a valid pointer to.
        if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: initialised by sigemptyset just above.
        let mut set = unsafe { set.assume_init() };
        for &signal in signals {
            // SAFETY: sigaddset updates an initialised set through a valid pointer.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }

    /// Whether `signal` is in the set.
    pub fn contains(&self, signal: i32) -> bool {
        // SAFETY: sigismember reads an initialised set through a valid pointer.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }
}

/// Blocks the signals of `set` in the calling thread (pthread_sigmask SIG_BLOCK), so that they stay pending
/// for [`take_signal`] instead of being delivered; returns the thread's previous mask.
pub fn block_signals(set: &SignalSet) -> io::Result<SignalSet> {
    let mut old = SignalSet::of(&[])?;
    // SAFETY: both pointers refer to initialised sets that outlive the call.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set.0, &mut old.0) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(old)
}

/// A signal [`take_signal`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakenSignal {
    /// The signal number.
    pub signal: i32,
    /// The descriptor an I/O-readiness signal was sent for (`si_fd`: set when `si_code` is one of the
    /// POLL_* codes, as for a signal chosen with F_SETSIG); `None` for any other signal, such as the plain
    /// SIGIO the kernel falls back to when the real-time signal queue is full.
    pub fd: Option<i32>,
}

/// The start of a `siginfo_t` as the kernel fills it for SIGPOLL-kind signals: `si_signo`, `si_errno`,
/// `si_code`, then the `_sigpoll` member of the union (`si_band`, `si_fd`), which is aligned as a `long`.
/// Only `code` and `fd` are read; the others hold the layout.
#[repr(C)]
#[allow(dead_code)]
struct SigInfoPoll {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    band: libc::c_long,
    fd: libc::c_int,
}

/// `POLL_IN` ..= `POLL_HUP` (asm-generic/siginfo.h): the `si_code`s of an I/O-readiness signal.
const POLL_CODES: std::ops::RangeInclusive<libc::c_int> = 1..=6;

/// Waits up to `timeout` for a signal of `set` (which the calling thread must have blocked) to be pending,
/// and takes it (sigtimedwait). `Ok(None)` when the time passed or another signal's handler interrupted
/// the wait.
pub fn take_signal(set: &SignalSet, timeout: std::time::Duration) -> io::Result<Option<TakenSignal>> {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9: fits a 32-bit long too.
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: sigtimedwait reads the set and the timeout and writes one siginfo_t, all through valid pointers
    // that outlive the call.
    let signal = unsafe { libc::sigtimedwait(&set.0, info.as_mut_ptr(), &ts) };
    if signal < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    const _: () = assert!(std::mem::size_of::<SigInfoPoll>() <= std::mem::size_of::<libc::siginfo_t>());
    // SAFETY: `info` was zeroed and then filled by the kernel; SigInfoPoll is a prefix of siginfo_t's layout
    // (checked to fit above) made of plain integers, for which any bit pattern is valid.
    let poll = unsafe { info.as_ptr().cast::<SigInfoPoll>().read_unaligned() };
    let fd = POLL_CODES.contains(&poll.code).then_some(poll.fd);
    Ok(Some(TakenSignal { signal, fd }))
}
