//! The io_uring model's machinery: one ring per worker, a multishot recvmsg armed on each socket that takes
//! its buffers from a provided-buffer ring, and each reply sent with IORING_OP_SENDMSG out of the very buffer
//! its request came in; the buffer goes back to the ring when the send completes.
//!
//! Each provided buffer holds what a multishot recvmsg writes (`struct io_uring_recvmsg_out`, the sender's
//! address, the control messages, then the payload) and is large enough for any UDP payload, so nothing is
//! ever truncated. A buffer id is in one of three places: on the provided-buffer ring (the kernel may fill
//! it), in the worker's hands (a request being answered), or under a send in flight.

use std::{
    alloc::{self, Layout},
    io,
    os::fd::RawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use io_uring::{cqueue, opcode, types, IoUring};

use super::{cmsg, send::Outgoing, worker::Received, PAYLOAD_ROOM};
use crate::datapath::meta::Stamp;

/// The provided-buffer group the receives take from (one group per ring).
const GROUP: u16 = 0;
/// `user_data` bit of a send; its low 16 bits are the buffer id. Without it (and without [`CANCEL`]), the
/// `user_data` of a receive is the index of its socket.
const SEND: u64 = 1 << 63;
/// `user_data` of the cancellation sent when the ring is closed.
const CANCEL: u64 = 1 << 62;
/// `user_data` bit of a handler's send out of a send buffer ([`Outgoing`]); its low 32 bits are the
/// buffer's index.
const OUTGOING: u64 = 1 << 61;

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags, each a u32, before the name.
const OUT_HEADER: usize = 16;
/// Room for the sender's address: the sockets are AF_INET6 (IPv4 senders v4-mapped).
const NAME: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// Room for the control messages, as in the other models.
const CONTROL: usize = cmsg::RECEIVE_ROOM;
/// Where the payload starts in a buffer.
const PAYLOAD_AT: usize = OUT_HEADER + NAME + CONTROL;
/// Bytes per provided buffer: the header, address and control room, and the largest UDP payload.
pub(super) const BUFFER: usize = (PAYLOAD_AT + PAYLOAD_ROOM).next_multiple_of(64);
// A buffer holds the header, the address, the control messages and the largest UDP payload.
const _: () = assert!(PAYLOAD_AT == 16 + 28 + CONTROL && BUFFER >= PAYLOAD_AT + 65_535);

/// Alignment of the buffer ring (the kernel wants it page-aligned) and of the buffers.
const PAGE: usize = 4096;

/// What a completion was.
pub(super) enum Completion {
    /// A multishot receive on socket `socket` produced a datagram in buffer `bid`, or failed with `Err(errno)`
    /// (a receive that has ended is armed again by the next [`Uring::arm`]).
    Received { socket: usize, result: Result<u16, i32> },
    /// The send out of buffer `bid` completed (`Err(errno)` if it failed); the buffer is the worker's again.
    Sent { bid: u16, result: Result<(), i32> },
    /// A handler's send out of send buffer `index` completed; the buffer is the worker's again.
    SentOutgoing { index: usize, result: Result<(), i32> },
    /// The cancellation sent on close, or a completion that names nothing of ours.
    Other,
}

/// A datagram taken out of its provided buffer: what the handler needs, and where the reply goes.
pub(super) struct Taken<'a> {
    pub received: Received<'a>,
    /// The payload buffer: the request's bytes, to be overwritten with the reply.
    pub payload: &'a mut [u8],
    /// Room for the reply's source control message.
    pub reply_control: &'a mut [u8],
}

/// The ring of provided buffers and the buffers themselves, in memory shunt allocates and the kernel writes.
struct Buffers {
    /// `entries` ring entries (`struct io_uring_buf`), registered with the ring; the first entry's `resv`
    /// field is the ring's tail.
    ring: NonNull<types::BufRingEntry>,
    ring_layout: Layout,
    /// `entries` buffers of [`BUFFER`] bytes, buffer id `i` at `i * BUFFER`.
    data: NonNull<u8>,
    data_layout: Layout,
    entries: u16,
    /// The tail as user space has it; published to the kernel by [`Buffers::publish`].
    tail: u16,
    /// Set when the kernel might still write into `data` (close could not confirm every request ended):
    /// the memory is then leaked rather than freed under it.
    leak: bool,
}

impl Buffers {
    /// Allocates `entries` (a power of two) buffers and puts them all on the ring (not yet published).
    fn new(entries: u16) -> io::Result<Buffers> {
        let n = usize::from(entries);
        let too_big = |_| io::Error::from(io::ErrorKind::OutOfMemory);
        let ring_layout =
            Layout::from_size_align(n * std::mem::size_of::<types::BufRingEntry>(), PAGE).map_err(too_big)?;
        let data_layout = Layout::from_size_align(n * BUFFER, PAGE).map_err(too_big)?;
        // SAFETY: both layouts have a non-zero size (entries >= 1).
        let ring = NonNull::new(unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<types::BufRingEntry>());
        // SAFETY: as above.
        let data = NonNull::new(unsafe { alloc::alloc_zeroed(data_layout) });
        let (Some(ring), Some(data)) = (ring, data) else {
            // SAFETY: each pointer, when not null, came from `alloc_zeroed` with that layout.
            unsafe {
                if let Some(r) = ring {
                    alloc::dealloc(r.as_ptr().cast(), ring_layout);
                }
                if let Some(d) = data {
                    alloc::dealloc(d.as_ptr(), data_layout);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let mut buffers = Buffers { ring, ring_layout, data, data_layout, entries, tail: 0, leak: false };
        for bid in 0..entries {
            buffers.give(bid);
        }
        Ok(buffers)
    }

    /// The address of buffer `bid` (which must be below `entries`).
    fn address(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < entries, so the offset stays inside the `data` allocation.
        unsafe { self.data.as_ptr().add(usize::from(bid) * BUFFER) }
    }

    /// Puts buffer `bid` back on the ring, for the kernel once [`Buffers::publish`]ed.
    fn give(&mut self, bid: u16) {
        if bid >= self.entries {
            return;
        }
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: index < entries, inside the ring allocation. The kernel only reads entries between its head
        // and the published tail, and this one is at or beyond the tail, so nothing reads it while it changes.
        let entry = unsafe { &mut *self.ring.as_ptr().add(index) };
        entry.set_addr(self.address(bid) as u64);
        entry.set_len(BUFFER as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the tail: the buffers given back so far become the kernel's.
    fn publish(&self) {
        // SAFETY: the tail is the `resv` u16 of the first ring entry, inside the ring allocation and 2-byte
        // aligned; the kernel reads it concurrently, so it is written atomically, with release ordering so
        // that the entries written before are seen before the new tail.
        unsafe {
            let tail = types::BufRingEntry::tail(self.ring.as_ptr()).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// Buffer `bid`, while it is the worker's (not on the ring, not under a send).
    fn buffer_mut(&mut self, bid: u16) -> Option<&mut [u8]> {
        if bid >= self.entries {
            return None;
        }
        // SAFETY: in bounds (bid < entries); the caller holds the buffer (the kernel handed it over in a
        // completion and has not had it back), so nothing else reads or writes it while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.address(bid), BUFFER) })
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: both pointers came from `alloc_zeroed` with these layouts, and the ring that used them is
        // gone (see `Uring`'s Drop).
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.data.as_ptr(), self.data_layout);
        }
    }
}

/// One buffer id's send: the reply's header, address and source control message, kept where they are until
/// the send completes, and the request's times for the latency histograms.
struct Out {
    name: libc::sockaddr_in6,
    reply_control: [u8; cmsg::REPLY_ROOM],
    iov: libc::iovec,
    msg: libc::msghdr,
    stamp: Option<Stamp>,
    picked_ns: u64,
}

/// A worker's io_uring: the ring, its provided buffers, one multishot receive per socket.
pub(super) struct Uring {
    ring: IoUring,
    buffers: Buffers,
    /// One per buffer id; boxed once so the addresses the kernel is given never move.
    outs: Box<[Out]>,
    /// The receive template: only `msg_namelen` and `msg_controllen` matter to a multishot recvmsg.
    recv_msg: Box<libc::msghdr>,
    /// The sockets, and whether each has a multishot receive armed.
    fds: Vec<RawFd>,
    armed: Vec<bool>,
    sends_in_flight: usize,
    /// Submissions queued since the last enter.
    queued: usize,
    /// [`Uring::close`] has run.
    closed: bool,
    /// The completions of one turn (`user_data`, `res`, `flags`), room for a full completion queue.
    completions: Vec<(u64, i32, u32)>,
}

// SAFETY: every raw pointer in a `Uring` (the buffer ring and buffers, the `msghdr`s and iovecs) points into
// memory the `Uring` itself owns; moving it to another thread moves all of that with it, and nothing is
// shared with another thread.
unsafe impl Send for Uring {}

impl Uring {
    /// A ring with `entries` provided buffers (a power of two, 1 ..= 32,768) for the sockets `fds`, with
    /// submission room for `sends` handler sends in flight besides the replies.
    pub(super) fn open(fds: Vec<RawFd>, entries: u16, sends: u32) -> Result<Uring, (&'static str, io::Error)> {
        let sq = u32::from(entries) + fds.len() as u32 + 1 + sends;
        // Completions: one per datagram and one per send, with room to spare, so that a multishot receive
        // is not ended by a full completion queue while a turn's replies are out.
        let cq = (4 * u32::from(entries) + 2 * sends).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(cq)
            // Completions posted from task work wait for the worker's next enter instead of interrupting it.
            .setup_coop_taskrun()
            .build(sq)
            .or_else(|_| IoUring::builder().setup_cqsize(cq).build(sq))
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => ("io_uring_setup (refused: see the kernel.io_uring_disabled sysctl)", e),
                _ => ("io_uring_setup", e),
            })?;
        let buffers = Buffers::new(entries).map_err(|e| ("provided buffers", e))?;
        // SAFETY: the ring memory is page-aligned, `entries` entries long, and lives in `buffers` until the
        // ring is unregistered or closed (Drop below closes the ring first).
        unsafe { ring.submitter().register_buf_ring_with_flags(buffers.ring.as_ptr() as u64, entries, GROUP, 0) }
            .map_err(|e| ("IORING_REGISTER_PBUF_RING (Linux 5.19+)", e))?;
        buffers.publish();
        let outs = (0..entries)
            .map(|_| Out {
                // SAFETY: sockaddr_in6, iovec and msghdr are plain data; all-zero is a valid value.
                name: unsafe { std::mem::zeroed() },
                reply_control: [0; cmsg::REPLY_ROOM],
                // SAFETY: as above.
                iov: unsafe { std::mem::zeroed() },
                // SAFETY: as above.
                msg: unsafe { std::mem::zeroed() },
                stamp: None,
                picked_ns: 0,
            })
            .collect();
        // SAFETY: as above.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_msg.msg_namelen = NAME as libc::socklen_t;
        recv_msg.msg_controllen = CONTROL as _;
        let sockets = fds.len();
        Ok(Uring {
            ring,
            buffers,
            outs,
            recv_msg,
            fds,
            armed: vec![false; sockets],
            sends_in_flight: 0,
            queued: 0,
            closed: false,
            completions: Vec::with_capacity(cq as usize),
        })
    }

    /// Queues a multishot receive on every socket that has none.
    pub(super) fn arm(&mut self) {
        for (i, fd) in self.fds.iter().enumerate() {
            if self.armed.get(i).copied().unwrap_or(true) {
                continue;
            }
            let entry = opcode::RecvMsgMulti::new(types::Fd(*fd), &*self.recv_msg, GROUP).build().user_data(i as u64);
            // SAFETY: the msghdr lives in `self.recv_msg` (boxed) as long as the ring; the buffers the receive
            // fills are registered and owned by `self.buffers`.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                if let Some(a) = self.armed.get_mut(i) {
                    *a = true;
                }
                self.queued += 1;
            }
        }
    }

    /// Whether submissions are queued (the next [`Uring::enter`] will submit them).
    pub(super) fn has_queued(&self) -> bool {
        self.queued > 0
    }

    /// One io_uring_enter: submits what is queued and waits up to `timeout` for at least one completion.
    /// Returns `Err(errno)` for anything but a timeout or a signal.
    pub(super) fn enter(&mut self, timeout: &types::Timespec) -> Result<(), i32> {
        let args = types::SubmitArgs::new().timespec(timeout);
        let result = self.ring.submitter().submit_with_args(1, &args);
        match result {
            Ok(_) => {
                self.queued = 0;
                Ok(())
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) => {
                    self.queued = 0;
                    Ok(())
                }
                Some(libc::EINTR) | Some(libc::EBUSY) => Ok(()),
                other => Err(other.unwrap_or(libc::EIO)),
            },
        }
    }

    /// Moves the completions out of the completion queue into a list that [`Uring::completion`] decodes;
    /// returns how many. The list has room for a full completion queue, so this does not allocate.
    pub(super) fn reap(&mut self) -> usize {
        self.completions.clear();
        let room = self.completions.capacity();
        for cqe in self.ring.completion().take(room) {
            self.completions.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        self.completions.len()
    }

    /// The `k`-th completion of the last [`Uring::reap`], decoded; the ring's own bookkeeping (receives
    /// armed, sends in flight) is updated.
    pub(super) fn completion(&mut self, k: usize) -> Completion {
        let Some(&(user_data, result, flags)) = self.completions.get(k) else { return Completion::Other };
        if user_data & OUTGOING != 0 {
            self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
            let index = (user_data & 0xffff_ffff) as usize;
            return Completion::SentOutgoing { index, result: if result < 0 { Err(-result) } else { Ok(()) } };
        }
        if user_data & SEND != 0 {
            self.sends_in_flight = self.sends_in_flight.saturating_sub(1);
            let bid = (user_data & 0xffff) as u16;
            return Completion::Sent { bid, result: if result < 0 { Err(-result) } else { Ok(()) } };
        }
        if user_data & CANCEL != 0 {
            return Completion::Other;
        }
        let socket = user_data as usize;
        let more = cqueue::more(flags);
        if !more {
            if let Some(a) = self.armed.get_mut(socket) {
                *a = false;
            }
        }
        let result = match (result, cqueue::buffer_select(flags)) {
            (r, _) if r < 0 => Err(-r),
            (_, Some(bid)) => Ok(bid),
            // A success without a buffer cannot happen with BUFFER_SELECT.
            (_, None) => Err(libc::EIO),
        };
        Completion::Received { socket, result }
    }

    /// The datagram in buffer `bid` (just received), split into what the handler reads and where the reply
    /// goes. `None` if `bid` is not a buffer of this ring.
    pub(super) fn take(&mut self, bid: u16) -> Option<Taken<'_>> {
        let out = self.outs.get_mut(usize::from(bid))?;
        let buffer = self.buffers.buffer_mut(bid)?;
        let (head, payload) = buffer.split_at_mut(PAYLOAD_AT);
        let word = |at: usize| head.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
        let (name_len, control_len, payload_len, msg_flags) = (word(0), word(4), word(8), word(12));
        out.name = sockaddr_in6(head.get(OUT_HEADER..OUT_HEADER + (name_len as usize).min(NAME)).unwrap_or_default());
        let control_at = OUT_HEADER + NAME;
        let control = head.get(control_at..control_at + (control_len as usize).min(CONTROL)).unwrap_or_default();
        let mut flags = msg_flags as i32;
        if payload_len as usize > payload.len() {
            flags |= libc::MSG_TRUNC;
        }
        let Out { name, reply_control, .. } = out;
        Some(Taken { received: Received { flags, control, name, len: payload_len as usize }, payload, reply_control })
    }

    /// Queues the reply in buffer `bid` (`len` bytes of payload, `control_len` bytes of source control
    /// message, both written by the handler through [`Uring::take`]) to go out of socket `socket`. The
    /// buffer stays under the send until its completion. Returns false if it could not be queued (the
    /// buffer is then the caller's to give back).
    pub(super) fn send(
        &mut self,
        socket: usize,
        bid: u16,
        len: usize,
        control_len: usize,
        stamp: Option<Stamp>,
        picked_ns: u64,
    ) -> bool {
        let Some(&fd) = self.fds.get(socket) else { return false };
        if bid >= self.buffers.entries {
            return false;
        }
        let payload = self.buffers.address(bid).wrapping_add(PAYLOAD_AT);
        let Some(out) = self.outs.get_mut(usize::from(bid)) else { return false };
        out.stamp = stamp;
        out.picked_ns = picked_ns;
        out.iov = libc::iovec { iov_base: payload.cast(), iov_len: len.min(PAYLOAD_ROOM) };
        out.msg.msg_name = (&mut out.name as *mut libc::sockaddr_in6).cast();
        out.msg.msg_namelen = NAME as libc::socklen_t;
        out.msg.msg_iov = &mut out.iov;
        out.msg.msg_iovlen = 1;
        let control_len = control_len.min(out.reply_control.len());
        out.msg.msg_control =
            if control_len > 0 { out.reply_control.as_mut_ptr().cast() } else { std::ptr::null_mut() };
        out.msg.msg_controllen = control_len as _;
        let entry = opcode::SendMsg::new(types::Fd(fd), &out.msg).build().user_data(SEND | u64::from(bid));
        // SAFETY: the msghdr, its iovec, address and control message live in `self.outs` (boxed, never moved)
        // and the payload in buffer `bid`, which is neither on the provided-buffer ring nor handed out again
        // until this send's completion gives it back.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false;
        }
        self.sends_in_flight += 1;
        self.queued += 1;
        true
    }

    /// Queues a handler's send out of `out` (send buffer `index`) on the socket it names. `out` must stay where
    /// it is, untouched, until its [`Completion::SentOutgoing`]. Returns false if it could not be queued.
    pub(super) fn send_outgoing(&mut self, out: &mut Outgoing, index: usize) -> bool {
        let Some(&fd) = self.fds.get(out.socket) else { return false };
        let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        let msg = super::msg::outgoing_header(out, &mut iov);
        out.iov = iov;
        out.msg = msg;
        // The header was pointed at the local iovec: point it at the copy that stays with the buffer.
        out.msg.msg_iov = &mut out.iov;
        let entry = opcode::SendMsg::new(types::Fd(fd), &out.msg).build().user_data(OUTGOING | index as u64);
        // SAFETY: the msghdr, its iovec, address, control messages and payload all live in `out`, one of the
        // worker's send buffers (boxed once, never moved), which the worker does not touch or hand out again
        // until this send's completion releases it; the ring is closed before the buffers are freed
        // (`KernelWorker`'s Drop), and they are leaked if the kernel does not confirm the end in time.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false;
        }
        self.sends_in_flight += 1;
        self.queued += 1;
        true
    }

    /// The request times kept with buffer `bid`'s send: its kernel receive stamp and its pick-up time.
    pub(super) fn times(&self, bid: u16) -> (Option<Stamp>, u64) {
        self.outs.get(usize::from(bid)).map_or((None, 0), |o| (o.stamp, o.picked_ns))
    }

    /// Gives buffer `bid` back to the kernel (at the next [`Uring::publish`]).
    pub(super) fn give_back(&mut self, bid: u16) {
        self.buffers.give(bid);
    }

    /// Publishes the buffers given back.
    pub(super) fn publish(&self) {
        self.buffers.publish();
    }

    /// Whether a receive is armed or a send is in flight: the kernel may still use the buffers.
    fn busy(&self) -> bool {
        self.sends_in_flight > 0 || self.armed.iter().any(|&a| a)
    }
}

impl Uring {
    /// Cancels the receives and waits (a second at most) until the kernel has ended every request. Returns
    /// whether it confirmed that; if not, the ring's own buffers will be leaked when it is dropped, and the
    /// caller must leak the send buffers its requests may point at ([`Uring::send_outgoing`]).
    pub(super) fn close(&mut self) -> bool {
        if self.closed {
            return !self.busy();
        }
        self.closed = true;
        let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(CANCEL);
        // SAFETY: a cancellation carries no pointer into user memory.
        let cancelled = unsafe { self.ring.submission().push(&entry) }.is_ok();
        let deadline = Instant::now() + Duration::from_secs(1);
        let timeout = types::Timespec::from(Duration::from_millis(50));
        while cancelled && self.busy() && Instant::now() < deadline {
            if self.enter(&timeout).is_err() {
                break;
            }
            for k in 0..self.reap() {
                let _ = self.completion(k);
            }
        }
        !self.busy()
    }
}

impl Drop for Uring {
    /// Closes the ring ([`Uring::close`]) so the buffers are not freed while the kernel could still write
    /// into them; if it does not confirm in time they are leaked instead, and so is every `msghdr`, iovec
    /// and address a request in flight may still point at.
    fn drop(&mut self) {
        if !self.close() {
            // The kernel may still read a reply's msghdr, iovec, address and control message (a send in
            // flight) or the receive template, and write into the buffers: all of it is leaked rather than
            // freed under it.
            self.buffers.leak = true;
            Box::leak(std::mem::take(&mut self.outs));
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let template: libc::msghdr = unsafe { std::mem::zeroed() };
            Box::leak(std::mem::replace(&mut self.recv_msg, Box::new(template)));
        }
        let _ = self.ring.submitter().unregister_buf_ring(GROUP);
    }
}

/// A `sockaddr_in6` from the bytes a multishot receive wrote (missing bytes stay zero).
fn sockaddr_in6(bytes: &[u8]) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let u16_at = |at: usize| bytes.get(at..at + 2).and_then(|b| b.try_into().ok()).map_or(0, u16::from_ne_bytes);
    let u32_at = |at: usize| bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_ne_bytes);
    sa.sin6_family = u16_at(0);
    sa.sin6_port = u16_at(2);
    sa.sin6_flowinfo = u32_at(4);
    if let Some(addr) = bytes.get(8..24).and_then(|b| <[u8; 16]>::try_from(b).ok()) {
        sa.sin6_addr.s6_addr = addr;
    }
    sa.sin6_scope_id = u32_at(24);
    sa
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_back_field_by_field() {
        let mut bytes = [0u8; 28];
        bytes[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        bytes[2..4].copy_from_slice(&4000u16.to_be_bytes());
        bytes[8..24].copy_from_slice(&std::net::Ipv4Addr::new(198, 18, 0, 2).to_ipv6_mapped().octets());
        let sa = sockaddr_in6(&bytes);
        assert_eq!(super::super::worker::sender(&sa), "198.18.0.2:4000".parse().unwrap());
        // Short input: what is missing is zero, nothing panics.
        let sa = sockaddr_in6(&bytes[..5]);
        assert_eq!(u16::from_be(sa.sin6_port), 4000);
        assert_eq!(sa.sin6_addr.s6_addr, [0; 16]);
    }
}

/// What the kernel's io_uring offers the `io_uring` model, found by setting up a ring as the model does
/// (a provided-buffer ring registered), asking it which opcodes it supports (IORING_REGISTER_PROBE), and
/// arming one multishot receive as the model does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringProbe {
    /// `io_uring_setup` and IORING_REGISTER_PBUF_RING worked (`Err`: which step failed, and why).
    pub ring: Result<(), String>,
    /// IORING_OP_RECVMSG.
    pub recvmsg: bool,
    /// IORING_OP_SENDMSG.
    pub sendmsg: bool,
    /// A multishot recvmsg (IORING_RECV_MULTISHOT into the provided buffers) received a datagram; `Err`: it
    /// could not be tried, and why.
    pub multishot_recvmsg: Result<bool, String>,
}

/// Probes io_uring for the `io_uring` model (see [`UringProbe`]). The multishot trial receives one datagram
/// that a UDP socket on the loopback interface of the calling thread's network namespace sends itself.
pub fn probe() -> UringProbe {
    let failed = |why: String| UringProbe {
        ring: Err(why.clone()),
        recvmsg: false,
        sendmsg: false,
        multishot_recvmsg: Err(why),
    };
    let ring = match Uring::open(Vec::new(), 1, 0) {
        Ok(ring) => ring,
        Err((step, e)) => return failed(format!("{step}: {e}")),
    };
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.ring.submitter().register_probe(&mut probe) {
        return failed(format!("IORING_REGISTER_PROBE: {e}"));
    }
    drop(ring);
    let recvmsg = probe.is_supported(opcode::RecvMsg::CODE);
    UringProbe {
        ring: Ok(()),
        recvmsg,
        sendmsg: probe.is_supported(opcode::SendMsg::CODE),
        multishot_recvmsg: if recvmsg { try_multishot() } else { Ok(false) },
    }
}

/// Arms a multishot recvmsg on a loopback UDP socket and sends it one datagram: a datagram received means
/// the kernel has multishot receives; EINVAL means it does not.
fn try_multishot() -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("could not try: a loopback UDP socket: {e}"))?;
    let to = socket.local_addr().map_err(|e| format!("could not try: {e}"))?;
    let mut ring = Uring::open(vec![socket.as_raw_fd()], 2, 0).map_err(|(step, e)| format!("{step}: {e}"))?;
    ring.arm();
    let timeout = types::Timespec::from(Duration::from_millis(50));
    ring.enter(&timeout).map_err(|errno| format!("io_uring_enter: {}", io::Error::from_raw_os_error(errno)))?;
    socket.send_to(b"shunt io_uring probe", to).map_err(|e| format!("could not try: sending to {to}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        ring.enter(&timeout).map_err(|errno| format!("io_uring_enter: {}", io::Error::from_raw_os_error(errno)))?;
        for k in 0..ring.reap() {
            if let Completion::Received { result, .. } = ring.completion(k) {
                return match result {
                    Ok(_) => Ok(true),
                    Err(libc::EINVAL) => Ok(false),
                    Err(errno) => Err(format!("the receive failed: {}", io::Error::from_raw_os_error(errno))),
                };
            }
        }
    }
    Err("could not try: no completion within 1 s (is the loopback interface up?)".to_string())
}
