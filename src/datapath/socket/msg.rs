//! The four message system calls (recvmsg, sendmsg, recvmmsg, sendmmsg) over buffers the worker allocated
//! once. Each call builds its `msghdr`s from live borrows of those buffers right before the system call, so
//! no pointer outlives the borrow it came from; nothing here allocates.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::{cmsg, send::Outgoing, PAYLOAD_ROOM};
use crate::datapath::meta::Stamp;

/// One datagram's buffers: what was received (payload, source address, control messages) and, once the
/// handler has answered, the reply (in `payload`, in place) and the control message that picks its source.
pub(super) struct Slot {
    /// The request, then the reply.
    pub payload: Box<[u8]>,
    /// The sender (the socket is AF_INET6: IPv4 senders are v4-mapped), and the reply's destination.
    pub name: libc::sockaddr_in6,
    /// Bytes of `name` the kernel filled.
    pub name_len: libc::socklen_t,
    /// Control messages received.
    pub control: [u8; cmsg::RECEIVE_ROOM],
    /// Bytes of `control` the kernel filled.
    pub control_len: usize,
    /// `msg_flags` of the receive (MSG_TRUNC, MSG_CTRUNC).
    pub flags: i32,
    /// Bytes received.
    pub len: usize,
    /// The reply's control message (its source address).
    pub reply_control: [u8; cmsg::REPLY_ROOM],
    /// Bytes of `reply_control` in use (0: let the kernel choose the source).
    pub reply_control_len: usize,
    /// Bytes of reply in `payload`.
    pub reply_len: usize,
    /// The request's receive time, as a latency stamp.
    pub stamp: Option<Stamp>,
}

impl Slot {
    pub fn new() -> Slot {
        Slot {
            payload: vec![0u8; PAYLOAD_ROOM].into_boxed_slice(),
            // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
            name: unsafe { std::mem::zeroed() },
            name_len: 0,
            control: [0; cmsg::RECEIVE_ROOM],
            control_len: 0,
            flags: 0,
            len: 0,
            reply_control: [0; cmsg::REPLY_ROOM],
            reply_control_len: 0,
            reply_len: 0,
            stamp: None,
        }
    }

    /// The received control messages.
    pub fn received_control(&self) -> &[u8] {
        self.control.get(..self.control_len).unwrap_or_default()
    }

    /// A msghdr receiving into this slot through `iov`, which it points at the whole payload buffer.
    fn receive_header(&mut self, iov: &mut libc::iovec) -> libc::msghdr {
        *iov = libc::iovec { iov_base: self.payload.as_mut_ptr().cast(), iov_len: self.payload.len() };
        // SAFETY: msghdr is plain data; all-zero is a valid value (some C libraries add padding fields).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut self.name as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.control.as_mut_ptr().cast();
        msg.msg_controllen = self.control.len() as _;
        msg
    }

    /// Records what the kernel wrote back into a receive header.
    fn received(&mut self, msg: &libc::msghdr, len: usize) {
        self.len = len;
        self.name_len = msg.msg_namelen;
        // `size_t` in glibc, `socklen_t` in musl.
        #[allow(clippy::unnecessary_cast)]
        let control_len = msg.msg_controllen as usize;
        self.control_len = control_len.min(self.control.len());
        self.flags = msg.msg_flags;
    }

    /// A msghdr sending this slot's reply back to its sender through `iov`. The kernel only reads through the
    /// (formally mutable) pointers of a send.
    fn send_header(&self, iov: &mut libc::iovec) -> libc::msghdr {
        let len = self.reply_len.min(self.payload.len());
        *iov = libc::iovec { iov_base: self.payload.as_ptr() as *mut libc::c_void, iov_len: len };
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&self.name as *const libc::sockaddr_in6 as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = self.name_len;
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        if self.reply_control_len > 0 {
            msg.msg_control = self.reply_control.as_ptr() as *mut libc::c_void;
            msg.msg_controllen = self.reply_control_len.min(self.reply_control.len()) as _;
        }
        msg
    }
}

/// The errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// recvmsg(2) of one datagram into `slot` (blocking or not as the socket is). `Err(errno)` on failure.
pub(super) fn receive(fd: BorrowedFd<'_>, slot: &mut Slot) -> Result<(), i32> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut msg = slot.receive_header(&mut iov);
    // SAFETY: every pointer in `msg` refers to a buffer of `slot` (or to `iov`, which points into one) with the
    // length given, all exclusively borrowed for the call; the fd is borrowed, so it stays open.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(errno());
    }
    slot.received(&msg, n as usize);
    Ok(())
}

/// sendmsg(2) of `slot`'s reply to its sender. `Err(errno)` on failure.
pub(super) fn send(fd: BorrowedFd<'_>, slot: &Slot) -> Result<(), i32> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let msg = slot.send_header(&mut iov);
    // SAFETY: every pointer in `msg` refers to a buffer of `slot` (or to `iov`, pointing into one) with the
    // length given, all borrowed for the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(())
}

/// The header arrays of recvmmsg and sendmmsg, allocated once for `batch` messages each.
pub(super) struct Batch {
    receive: Vec<libc::mmsghdr>,
    receive_iov: Vec<libc::iovec>,
    send: Vec<libc::mmsghdr>,
    send_iov: Vec<libc::iovec>,
    /// Which slot each entry of `send` carries the reply of.
    pub send_slot: Vec<usize>,
}

// SAFETY: the raw pointers in the arrays are only ever set from live borrows right before a system call on
// the thread that holds `&mut Batch`, and are never dereferenced by Rust code: moving the arrays to another
// thread moves nothing they point at into shared use.
unsafe impl Send for Batch {}

impl Batch {
    /// Messages one sendmmsg through these arrays may carry.
    pub fn send_capacity(&self) -> usize {
        self.send.len()
    }

    pub fn new(batch: usize) -> Batch {
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let zero: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let no_iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        Batch {
            receive: vec![zero; batch],
            receive_iov: vec![no_iov; batch],
            send: vec![zero; batch],
            send_iov: vec![no_iov; batch],
            send_slot: Vec::with_capacity(batch),
        }
    }
}

/// recvmmsg(2) of up to `slots.len()` datagrams (at most the batch size) without waiting (MSG_DONTWAIT).
/// Returns how many arrived, the first that many slots holding them.
pub(super) fn receive_batch(fd: BorrowedFd<'_>, slots: &mut [Slot], b: &mut Batch) -> Result<usize, i32> {
    let n = slots.len().min(b.receive.len());
    for ((slot, hdr), iov) in slots.iter_mut().zip(b.receive.iter_mut()).zip(b.receive_iov.iter_mut()).take(n) {
        hdr.msg_hdr = slot.receive_header(iov);
        hdr.msg_len = 0;
    }
    // SAFETY: the first `n` headers each point at one slot's buffers (and at their own iovec), built just
    // above from exclusive borrows of `slots` and `b`, which are not touched again until the call returns; the
    // timeout is null; the fd is borrowed, so it stays open.
    let got = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            b.receive.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if got < 0 {
        return Err(errno());
    }
    let got = (got as usize).min(n);
    for (slot, hdr) in slots.iter_mut().zip(b.receive.iter()).take(got) {
        slot.received(&hdr.msg_hdr, hdr.msg_len as usize);
    }
    Ok(got)
}

/// sendmmsg(2) of the replies of the slots listed in `b.send_slot[from..]`. Returns how many the kernel took
/// (at least one), or `Err(errno)` of the first, which was not sent.
pub(super) fn send_batch(fd: BorrowedFd<'_>, slots: &[Slot], b: &mut Batch, from: usize) -> Result<usize, i32> {
    let Batch { send, send_iov, send_slot, .. } = b;
    send_listed(fd, slots, send_slot.get(from..).unwrap_or_default(), send, send_iov, Slot::send_header)
}

/// sendmmsg(2) of `items[k]` for each `k` of `list` (as many as the header arrays hold), each message's
/// header made by `header` from the item and its own iovec. Returns how many the kernel took (at least one),
/// or `Err(errno)` of the first, which was not sent.
fn send_listed<T>(
    fd: BorrowedFd<'_>,
    items: &[T],
    list: &[usize],
    headers: &mut [libc::mmsghdr],
    iovs: &mut [libc::iovec],
    header: impl Fn(&T, &mut libc::iovec) -> libc::msghdr,
) -> Result<usize, i32> {
    let mut n = 0;
    for ((&k, hdr), iov) in list.iter().zip(headers.iter_mut()).zip(iovs.iter_mut()) {
        let Some(item) = items.get(k) else { break };
        hdr.msg_hdr = header(item, iov);
        hdr.msg_len = 0;
        n += 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: the first `n` headers each point at one item's buffers (and at their own iovec), built just above
    // from borrows that last until the call returns; sendmmsg only reads through them (it writes `msg_len`
    // into the headers, which the caller lends exclusively).
    let sent = unsafe { libc::sendmmsg(fd.as_raw_fd(), headers.as_mut_ptr(), n as libc::c_uint, 0) };
    if sent < 0 {
        return Err(errno());
    }
    Ok((sent as usize).min(n))
}

/// A msghdr sending `out`'s payload to its destination with its control messages, through `iov`. The kernel
/// only reads through the (formally mutable) pointers of a send.
pub(super) fn outgoing_header(out: &Outgoing, iov: &mut libc::iovec) -> libc::msghdr {
    let payload = out.payload();
    *iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&out.name as *const libc::sockaddr_in6 as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    let control = out.control();
    if !control.is_empty() {
        msg.msg_control = control.as_ptr() as *mut libc::c_void;
        msg.msg_controllen = control.len() as _;
    }
    msg
}

/// sendmsg(2) of a handler's send. `Err(errno)` on failure.
pub(super) fn send_outgoing(fd: BorrowedFd<'_>, out: &Outgoing) -> Result<(), i32> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let msg = outgoing_header(out, &mut iov);
    // SAFETY: every pointer in `msg` refers to a buffer of `out` (or to `iov`, pointing into one) with the
    // length given, all borrowed for the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(())
}

/// sendmmsg(2) of the handler's sends `list` (indices into `slots`, all out of the same socket), with the
/// header arrays `b` lends (at most as many as it has). Returns how many the kernel took (at least one), or
/// `Err(errno)` of the first, which was not sent.
pub(super) fn send_outgoing_batch(
    fd: BorrowedFd<'_>,
    slots: &[Outgoing],
    list: &[usize],
    b: &mut Batch,
) -> Result<usize, i32> {
    send_listed(fd, slots, list, &mut b.send, &mut b.send_iov, outgoing_header)
}
