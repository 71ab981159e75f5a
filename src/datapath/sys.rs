//! The few raw system calls the datapath and its XDP steering need, each behind a safe function.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

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
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit only reads the struct passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The id of the calling thread (for logs and for matching /proc/self/task entries).
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
