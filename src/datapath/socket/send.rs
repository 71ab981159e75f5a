//! Sends on kernel sockets: the [`Transmit`] a kernel-socket worker hands its handler, over a pool of send
//! buffers allocated once ([`Outgoing`]). Each committed send carries its destination, its source (IP_PKTINFO
//! / IPV6_PKTINFO, out of the socket bound to its source port) and its marking (IP_TOS / IPV6_TCLASS) and goes
//! out with the model's own send call: sendmsg, sendmmsg, or io_uring SENDMSG.

use std::net::SocketAddr;

use super::{cmsg, PAYLOAD_ROOM};
use crate::{
    datapath::counters::WorkerStats,
    handler::{Envelope, Request, SendError, Transmit},
};

/// The largest UDP payload an IPv4 datagram can carry (65,535 − 20 − 8); sends are held to it on both IP
/// versions so that a handler meets one limit.
pub(super) const SEND_ROOM: usize = 65_507;
const _: () = assert!(SEND_ROOM <= PAYLOAD_ROOM);

/// One send buffer: the payload, where it goes, the control messages that pick its source and marking, and
/// the `msghdr` an io_uring SENDMSG reads while it is in flight (kept here so that it never moves).
pub(super) struct Outgoing {
    pub payload: Box<[u8]>,
    /// The destination (the sockets are AF_INET6: IPv4 destinations v4-mapped).
    pub name: libc::sockaddr_in6,
    pub control: [u8; cmsg::REPLY_ROOM],
    pub control_len: usize,
    /// Payload bytes to send.
    pub len: usize,
    /// Index of the socket (by source port) it goes out of.
    pub socket: usize,
    /// io_uring: the header and iovec of the SENDMSG in flight.
    pub iov: libc::iovec,
    pub msg: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `msg` only ever point into this same `Outgoing` (set right before a
// submission by the thread that owns it) and are never dereferenced by Rust code.
unsafe impl Send for Outgoing {}

impl Outgoing {
    fn new() -> Outgoing {
        Outgoing {
            payload: vec![0u8; SEND_ROOM].into_boxed_slice(),
            // SAFETY: sockaddr_in6, iovec and msghdr are plain data; all-zero is a valid value.
            name: unsafe { std::mem::zeroed() },
            control: [0; cmsg::REPLY_ROOM],
            control_len: 0,
            len: 0,
            socket: 0,
            // SAFETY: as above.
            iov: unsafe { std::mem::zeroed() },
            // SAFETY: as above.
            msg: unsafe { std::mem::zeroed() },
        }
    }

    /// The control messages to send with it.
    pub fn control(&self) -> &[u8] {
        self.control.get(..self.control_len).unwrap_or_default()
    }

    /// The payload to send.
    pub fn payload(&self) -> &[u8] {
        self.payload.get(..self.len).unwrap_or_default()
    }
}

/// A worker's send buffers: free ones, the one handed to the handler, and those queued for the next flush.
/// Buffers under an io_uring send are in none of these until the send completes ([`Outgoings::release`]).
pub(super) struct Outgoings {
    pub slots: Box<[Outgoing]>,
    free: Vec<usize>,
    held: Option<usize>,
    /// Committed sends, in order, waiting for the model's flush.
    pub queued: Vec<usize>,
}

impl Outgoings {
    /// `n` send buffers (`sends.per_batch`; 0 turns sending off).
    pub fn new(n: usize) -> Outgoings {
        Outgoings {
            slots: (0..n).map(|_| Outgoing::new()).collect(),
            free: (0..n).rev().collect(),
            held: None,
            queued: Vec::with_capacity(n),
        }
    }

    /// Takes the queued sends for flushing (the caller gives each back with [`Outgoings::release`] once it
    /// is sent, or once its send completes).
    pub fn take_queued(&mut self, into: &mut Vec<usize>) {
        into.clear();
        into.append(&mut self.queued);
    }

    /// Gives buffer `k` back to the pool.
    pub fn release(&mut self, k: usize) {
        if k < self.slots.len() && self.free.len() < self.free.capacity() {
            self.free.push(k);
        }
    }
}

/// The [`Transmit`] of one datagram's (or batch's, or timer turn's) handling on kernel sockets.
pub(super) struct SocketSink<'a> {
    pub out: &'a mut Outgoings,
    /// The worker's sockets' ports, by socket index: a send goes out of the socket bound to its source port.
    pub ports: &'a [u16],
    /// The served interface, for IPV6_PKTINFO.
    pub ifindex: u32,
    /// Sends left in this batch or turn.
    pub left: &'a mut u32,
    pub stats: &'a mut WorkerStats,
}

impl SocketSink<'_> {
    fn refuse(&mut self, e: SendError) -> SendError {
        self.stats.count_refused_send(e);
        e
    }
}

impl Transmit for SocketSink<'_> {
    fn on_request(&mut self, _request: &Request) {}

    fn refused(&mut self, error: SendError) {
        self.stats.count_refused_send(error);
    }

    fn buffer(&mut self, envelope: &Envelope) -> Result<&mut [u8], SendError> {
        if envelope.from.is_ipv4() != envelope.to.is_ipv4() || envelope.from.ip().is_unspecified() {
            return Err(self.refuse(SendError::Source));
        }
        let Some(socket) = self.ports.iter().position(|&p| p == envelope.from.port()) else {
            return Err(self.refuse(SendError::Source));
        };
        if *self.left == 0 {
            return Err(self.refuse(SendError::BatchLimit));
        }
        let k = match self.out.held.take() {
            Some(k) => k,
            None => self.out.free.pop().ok_or_else(|| self.refuse(SendError::PoolEmpty))?,
        };
        self.out.held = Some(k);
        let Some(slot) = self.out.slots.get_mut(k) else { return Err(SendError::PoolEmpty) };
        slot.socket = socket;
        Ok(&mut slot.payload[..])
    }

    fn commit(&mut self, envelope: &Envelope, len: usize) -> Result<(), SendError> {
        let Some(k) = self.out.held.take() else { return Err(SendError::PoolEmpty) };
        let Some(slot) = self.out.slots.get_mut(k) else { return Err(SendError::PoolEmpty) };
        if len > slot.payload.len() {
            self.out.held = Some(k);
            return Err(self.refuse(SendError::TooLarge));
        }
        slot.len = len;
        slot.name = sockaddr_in6(envelope.to);
        let tc = envelope.marking.map(|m| m.traffic_class());
        slot.control_len = cmsg::write_source_and_class(&mut slot.control, envelope.from.ip(), self.ifindex, tc);
        self.out.queued.push(k);
        *self.left -= 1;
        self.stats.sends += 1;
        Ok(())
    }
}

impl Drop for SocketSink<'_> {
    /// A buffer handed out and never committed goes back to the pool.
    fn drop(&mut self) {
        if let Some(k) = self.out.held.take() {
            self.out.release(k);
        }
    }
}

/// `addr` as the AF_INET6 sockets take it: IPv4 v4-mapped.
pub(super) fn sockaddr_in6(addr: SocketAddr) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    name.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    name.sin6_port = addr.port().to_be();
    match addr {
        SocketAddr::V4(v4) => name.sin6_addr.s6_addr = v4.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(v6) => {
            name.sin6_addr.s6_addr = v6.ip().octets();
            name.sin6_flowinfo = 0;
            name.sin6_scope_id = v6.scope_id();
        }
    }
    name
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::handler::{Ecn, Outbox};

    #[test]
    fn sends_take_buffers_from_the_pool_and_give_them_back() {
        let mut out = Outgoings::new(2);
        let mut stats = WorkerStats::default();
        let mut left = 8;
        let ports = [9000u16, 9001];
        {
            let mut sink = SocketSink { out: &mut out, ports: &ports, ifindex: 1, left: &mut left, stats: &mut stats };
            let mut outbox = Outbox::new(&mut sink, None);
            let e = Envelope::new("198.18.0.1:9001".parse().unwrap(), "198.18.0.2:53".parse().unwrap())
                .with_marking(46, Ecn::Ect0);
            for _ in 0..2 {
                outbox.send(e, |b| Some(b.len().min(3))).unwrap();
            }
            assert_eq!(outbox.send(e, |_| Some(1)), Err(SendError::PoolEmpty));
            let bad = Envelope::new("198.18.0.1:1".parse().unwrap(), "198.18.0.2:53".parse().unwrap());
            assert_eq!(outbox.send(bad, |_| Some(1)), Err(SendError::Source));
            // A buffer handed out and not used is not lost.
            let mut again = Outbox::new(&mut sink, None);
            assert_eq!(again.send(e, |_| None), Err(SendError::PoolEmpty));
        }
        assert_eq!((stats.sends, stats.send_pool_empty, stats.send_bad_address), (2, 2, 1));
        let mut queued = Vec::new();
        out.take_queued(&mut queued);
        assert_eq!(queued.len(), 2);
        let slot = &out.slots[queued[0]];
        assert_eq!((slot.socket, slot.len, u16::from_be(slot.name.sin6_port)), (1, 3, 53));
        assert!(slot.control_len > 0);
        for k in queued.drain(..) {
            out.release(k);
        }
        let mut sink = SocketSink { out: &mut out, ports: &ports, ifindex: 1, left: &mut left, stats: &mut stats };
        let e = Envelope::new("[2001:2::1]:9000".parse().unwrap(), "[2001:2::2]:53".parse().unwrap());
        assert_eq!(Outbox::new(&mut sink, None).send(e, |_| Some(4)), Ok(()));
    }
}
