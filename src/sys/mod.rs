//! The one OS module: the raw system calls the datapath, the XDP steering and the control plane need, each
//! behind a safe function (bpf_link creation, rlimits, clocks, CPU affinity, interface and ethtool queries).
//! Where `rustix` has a safe wrapper it is used; what is left (bpf_link_create, if_nametoindex, the ethtool
//! ioctl) is `unsafe` here and nowhere else outside the datapath. The XDP program's generated libbpf-rs
//! skeleton (`skel`), whose generated code has `unsafe` blocks of its own, is included here for that reason.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

pub(crate) mod skel;

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
        if !node.ifa_addr.is_null() {
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
