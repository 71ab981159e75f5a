//! The UDP message system calls of the kernel-socket datapath (recvmsg, sendmsg, recvmmsg, sendmmsg), one
//! `unsafe fn` each: the datapath builds the headers from its own buffers (which only it can vouch for) and
//! states at the call why they are valid; here is only the call itself and the errno. Each is `#[inline]`
//! and allocates nothing, so the datapath's loops cost what they did with the calls in place.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The errno of the last failed call (EIO if the OS gave none).
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// recvmsg(2) into `msg` with no flags (blocking or not as the socket is): the datagram's length, or
/// `Err(errno)`.
///
/// # Safety
///
/// Every pointer in `msg` (name, iovecs and what they point at, control) must be valid for writes of the
/// length given next to it, and nothing else may touch that memory until the call returns.
#[inline]
pub(crate) unsafe fn recvmsg(fd: BorrowedFd<'_>, msg: &mut libc::msghdr) -> Result<usize, i32> {
    // SAFETY: the caller vouches for every pointer in `msg`; the fd is borrowed, so it stays open.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), msg, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(n as usize)
}

/// sendmsg(2) of `msg` with no flags: the bytes sent, or `Err(errno)`.
///
/// # Safety
///
/// Every pointer in `msg` (name, iovecs and what they point at, control) must be valid for reads of the
/// length given next to it until the call returns.
#[inline]
pub(crate) unsafe fn sendmsg(fd: BorrowedFd<'_>, msg: &libc::msghdr) -> Result<usize, i32> {
    // SAFETY: the caller vouches for every pointer in `msg`; sendmsg only reads through them; the fd is
    // borrowed, so it stays open.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), msg, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(n as usize)
}

/// recvmmsg(2) into `headers` without waiting (MSG_DONTWAIT, no timeout): how many datagrams arrived (the
/// kernel set each one's `msg_len`), or `Err(errno)`.
///
/// # Safety
///
/// Every pointer in each of `headers` must be valid for writes of the length given next to it, and nothing
/// else may touch that memory until the call returns.
#[inline]
pub(crate) unsafe fn recvmmsg(fd: BorrowedFd<'_>, headers: &mut [libc::mmsghdr]) -> Result<usize, i32> {
    // SAFETY: `headers` is an exclusive borrow of `len` headers whose pointers the caller vouches for; the
    // timeout is null; the fd is borrowed, so it stays open.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(errno());
    }
    Ok((got as usize).min(headers.len()))
}

/// sendmmsg(2) of `headers` with no flags: how many messages the kernel took (it sets each one's
/// `msg_len`), or `Err(errno)` of the first, which was not sent.
///
/// # Safety
///
/// Every pointer in each of `headers` must be valid for reads of the length given next to it until the call
/// returns.
#[inline]
pub(crate) unsafe fn sendmmsg(fd: BorrowedFd<'_>, headers: &mut [libc::mmsghdr]) -> Result<usize, i32> {
    // SAFETY: `headers` is an exclusive borrow of `len` headers (the kernel writes their `msg_len`) whose
    // pointers the caller vouches for; sendmmsg only reads through them; the fd is borrowed, so it stays
    // open.
    let sent = unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), headers.len() as libc::c_uint, 0) };
    if sent < 0 {
        return Err(errno());
    }
    Ok((sent as usize).min(headers.len()))
}
