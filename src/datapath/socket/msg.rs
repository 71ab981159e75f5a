//! The four message system calls (recvmsg, sendmsg, recvmmsg, sendmmsg, made in [`crate::sys`]) over buffers
//! the worker allocated once. Each call builds its `msghdr`s from live borrows of those buffers right before
//! the system call, so no pointer outlives the borrow it came from; nothing here allocates.

use std::os::fd::BorrowedFd;

use super::{cmsg, send::Outgoing, PAYLOAD_ROOM};
use crate::{datapath::meta::Stamp, sys};

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

/// recvmsg(2) of one datagram into `slot` (blocking or not as the socket is). `Err(errno)` on failure.
pub(super) fn receive(fd: BorrowedFd<'_>, slot: &mut Slot) -> Result<(), i32> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut msg = slot.receive_header(&mut iov);
    // SAFETY: every pointer in `msg` refers to a buffer of `slot` (or to `iov`, which points into one) with the
    // length given, all exclusively borrowed for the call; the fd is borrowed, so it stays open.
    let n = unsafe { sys::msg::recvmsg(fd, &mut msg) }?;
    slot.received(&msg, n);
    Ok(())
}

/// sendmsg(2) of `slot`'s reply to its sender. `Err(errno)` on failure.
pub(super) fn send(fd: BorrowedFd<'_>, slot: &Slot) -> Result<(), i32> {
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let msg = slot.send_header(&mut iov);
    // SAFETY: every pointer in `msg` refers to a buffer of `slot` (or to `iov`, pointing into one) with the
    // length given, all borrowed for the call; sendmsg only reads them.
    unsafe { sys::msg::sendmsg(fd, &msg) }?;
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
    let headers = b.receive.get_mut(..n).unwrap_or_default();
    // SAFETY: the first `n` headers each point at one slot's buffers (and at their own iovec), built just
    // above from exclusive borrows of `slots` and `b`, which are not touched again until the call returns; the
    // fd is borrowed, so it stays open.
    let got = unsafe { sys::msg::recvmmsg(fd, headers) }?;
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
    let headers = headers.get_mut(..n).unwrap_or_default();
    // SAFETY: the first `n` headers each point at one item's buffers (and at their own iovec), built just above
    // from borrows that last until the call returns; sendmmsg only reads through them (it writes `msg_len`
    // into the headers, which the caller lends exclusively).
    unsafe { sys::msg::sendmmsg(fd, headers) }
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
    unsafe { sys::msg::sendmsg(fd, &msg) }?;
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

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, UdpSocket},
        os::fd::AsFd,
        time::Duration,
    };

    use super::*;

    /// A dual-stack socket on an ephemeral port (as the worker's are: AF_INET6, IPv4 senders v4-mapped) and a
    /// client on 127.0.0.1.
    fn pair() -> (UdpSocket, UdpSocket, u16) {
        let server = UdpSocket::bind("[::]:0").expect("a dual-stack socket");
        let port = server.local_addr().expect("its address").port();
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("a client socket");
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("a timeout");
        (server, client, port)
    }

    /// Echoes the request in `slot`: the reply is the request, sent back to its sender.
    fn echo(slot: &mut Slot) {
        slot.reply_len = slot.len;
    }

    #[test]
    fn one_datagram_is_received_and_answered_through_sys() {
        let (server, client, port) = pair();
        client.send_to(b"ping", (Ipv4Addr::LOCALHOST, port)).expect("send");
        let mut slot = Slot::new();
        receive(server.as_fd(), &mut slot).expect("recvmsg");
        assert_eq!(slot.payload.get(..slot.len), Some(&b"ping"[..]));
        assert_eq!(slot.flags & libc::MSG_TRUNC, 0);
        echo(&mut slot);
        send(server.as_fd(), &slot).expect("sendmsg");
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).expect("the echo");
        assert_eq!((&buf[..n], from.port()), (&b"ping"[..], port));
    }

    #[test]
    fn a_batch_is_received_and_answered_in_one_call_each() {
        let (server, client, port) = pair();
        server.set_nonblocking(true).expect("non-blocking");
        let mut slots: Vec<Slot> = (0..4).map(|_| Slot::new()).collect();
        let mut b = Batch::new(4);
        assert_eq!(receive_batch(server.as_fd(), &mut slots, &mut b), Err(libc::EAGAIN), "nothing sent yet");
        for m in [&b"one"[..], b"two", b"three"] {
            client.send_to(m, (Ipv4Addr::LOCALHOST, port)).expect("send");
        }
        let got = receive_batch(server.as_fd(), &mut slots, &mut b).expect("recvmmsg");
        assert_eq!(got, 3);
        let received: Vec<&[u8]> = slots.iter().take(got).map(|s| s.payload.get(..s.len).unwrap_or_default()).collect();
        assert_eq!(received, [&b"one"[..], b"two", b"three"]);
        for slot in slots.iter_mut().take(got) {
            echo(slot);
        }
        b.send_slot.clear();
        b.send_slot.extend([2, 0]);
        assert_eq!(send_batch(server.as_fd(), &slots, &mut b, 0), Ok(2), "sendmmsg of the listed replies");
        let mut buf = [0u8; 16];
        let mut echoes = Vec::new();
        for _ in 0..2 {
            let n = client.recv(&mut buf).expect("an echo");
            echoes.push(buf[..n].to_vec());
        }
        assert_eq!(echoes, [b"three".to_vec(), b"one".to_vec()]);
    }
}
