//! Sending, not only replying: the [`Outbox`] a handler is given with every request and every timeout, and
//! what it needs ([`Envelope`], [`Marking`], [`Budget`], [`SendError`]).
//!
//! The model is Knot DNS's XDP API (`knot_xdp_send_alloc`, then `knot_xdp_send`): the handler asks for a
//! transmit buffer, writes a payload into it, and the datapath adds the headers and queues it. On AF_XDP the
//! buffer is the payload room of a UMEM frame taken from the worker's pool, so nothing is copied; on kernel
//! sockets it is one of the worker's preallocated send buffers, sent with sendmsg / sendmmsg / io_uring
//! SENDMSG. Either way nothing is allocated per send, and nothing blocks: an empty pool, a spent budget or a
//! full batch is an immediate [`SendError`], counted by the worker.
//!
//! The datapath side is the [`Transmit`] trait; [`super::testing::Harness`] implements it in memory so a
//! handler's sends can be tested without sockets.

use std::net::SocketAddr;

use super::Ecn;

/// How a datagram is marked in its IP header: the DSCP (0..=63) and the ECN codepoint of the IPv4 TOS byte /
/// IPv6 traffic class.
///
/// Without a marking a datagram gets the server's defaults (`packet.reply_dscp`, ECN not-ECT). A handler
/// that runs an ECN-capable transport (QUIC, L4S) marks its sends ECT(0) or ECT(1); marking CE is the
/// business of routers, and the datapaths write what they are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Marking {
    /// Differentiated services code point (bits above the low six are ignored).
    pub dscp: u8,
    /// ECN codepoint.
    pub ecn: Ecn,
}

impl Marking {
    /// The TOS byte (IPv4) or traffic class (IPv6) this marking makes.
    #[inline]
    pub fn traffic_class(self) -> u8 {
        ((self.dscp & 0x3f) << 2) | self.ecn.bits()
    }
}

/// Where a datagram goes, where it comes from, and how it is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// Source address and port: an address the server serves, and a port it serves or owns
    /// ([`super::Handler::owned_ports`]). A datapath refuses any other ([`SendError::Source`]): the server
    /// does not forge sources.
    pub from: SocketAddr,
    /// Destination address and port (the same IP version as `from`).
    pub to: SocketAddr,
    /// DSCP and ECN; `None`: the server's defaults.
    pub marking: Option<Marking>,
}

impl Envelope {
    /// A datagram from `from` to `to`, with the default marking.
    #[inline]
    pub fn new(from: SocketAddr, to: SocketAddr) -> Envelope {
        Envelope { from, to, marking: None }
    }

    /// A datagram back to a request's sender, from the address and port the request was sent to: what an
    /// in-place reply is, but in a buffer of its own (a second answer, a fragment of a larger one).
    #[inline]
    pub fn reply_to(request: &super::Request) -> Envelope {
        Envelope { from: request.dst, to: request.src, marking: None }
    }

    /// The same envelope with the given DSCP and ECN.
    #[inline]
    #[must_use]
    pub fn with_marking(self, dscp: u8, ecn: Ecn) -> Envelope {
        Envelope { marking: Some(Marking { dscp, ecn }), ..self }
    }
}

/// What one request may cause the server to send, in datagrams and payload bytes, the in-place reply
/// included ([`super::Handler::budget`]).
///
/// A UDP server whose output outgrows its input can be turned into a reflection amplifier with spoofed
/// sources; the datapath enforces the handler's declared budget centrally, so a handler bug cannot exceed it:
/// a send or reply beyond it is refused ([`SendError::OverBudget`]) and counted (`dropped_amplification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Datagrams (reply and sends together).
    pub packets: u32,
    /// UDP payload bytes, over all of them.
    pub bytes: usize,
}

impl Budget {
    /// One datagram no longer than the request: an echo-like protocol's budget, and the default.
    #[inline]
    pub const fn echo(request_len: usize) -> Budget {
        Budget { packets: 1, bytes: request_len }
    }

    /// `packets` datagrams of at most `bytes_each` payload bytes each.
    #[inline]
    pub const fn per_packet(packets: u32, bytes_each: usize) -> Budget {
        Budget { packets, bytes: bytes_each.saturating_mul(packets as usize) }
    }

    /// Whether a datagram of `len` payload bytes fits.
    #[inline]
    fn fits(&self, len: usize) -> bool {
        self.packets > 0 && len <= self.bytes
    }

    /// What is left after a datagram of `len` bytes.
    #[inline]
    fn spend(&mut self, len: usize) {
        self.packets = self.packets.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(len);
    }
}

/// Why a send was refused. Every refusal is counted by the worker; none blocks, and no frame or buffer is
/// lost (an unused buffer goes back to the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The worker's transmit pool is empty (AF_XDP: no free UMEM frame; sockets: every send buffer in
    /// flight). Counted as `send_pool_empty`.
    #[error("no free transmit buffer")]
    PoolEmpty,
    /// The request's [`Budget`] is spent. Counted as `dropped_amplification`.
    #[error("over the request's send budget")]
    OverBudget,
    /// The worker's sends for this batch or timer turn reached `sends.per_batch`. Counted as
    /// `send_batch_limit`.
    #[error("over the per-batch send limit")]
    BatchLimit,
    /// The source is not an address the server serves with a port it serves or owns, or the two addresses
    /// are of different IP versions. Counted as `send_bad_address`.
    #[error("the source is not a served address and port, or the IP versions differ")]
    Source,
    /// The payload does not fit the buffer, or the IP packet would exceed the interface's MTU. Counted as
    /// `dropped_over_mtu`.
    #[error("the datagram does not fit the MTU")]
    TooLarge,
    /// AF_XDP: the kernel has no route to the destination through the served interface. Counted as
    /// `send_no_route`.
    #[error("no route to the destination through the served interface")]
    NoRoute,
    /// AF_XDP: the next hop's link-layer address is not known yet; the kernel has been asked to resolve it,
    /// and a later send will find it. The datagram is dropped, never sent to a wrong or zero MAC. Counted as
    /// `send_unresolved`.
    #[error("the next hop's link-layer address is not resolved yet")]
    Unresolved,
}

/// The datapath's side of an [`Outbox`]: a pool of transmit buffers and the queue they go out on.
///
/// Implemented by each datapath (and by [`super::testing::Harness`]). A handler never calls it directly.
pub trait Transmit {
    /// Told which request the sends that follow answer (by [`super::answer`], before the handler runs), so
    /// that a send back to its sender can take the request's own link-layer path. Default: nothing.
    #[inline]
    fn on_request(&mut self, request: &super::Request) {
        let _ = request;
    }

    /// Told that the [`Outbox`] itself refused a send ([`SendError::OverBudget`], or a length beyond the
    /// buffer: [`SendError::TooLarge`]), so that the datapath counts it with its own refusals. Default:
    /// nothing.
    #[inline]
    fn refused(&mut self, error: SendError) {
        let _ = error;
    }

    /// Room for the UDP payload of one datagram described by `envelope`: at most what the MTU (and the
    /// buffer) allow for its IP version. The buffer stays reserved until [`Transmit::commit`] or the next
    /// call to this method, which hands out the same buffer again.
    fn buffer(&mut self, envelope: &Envelope) -> Result<&mut [u8], SendError>;

    /// Queues the buffer last handed out by [`Transmit::buffer`], holding `len` payload bytes, for
    /// transmission to `envelope.to`.
    fn commit(&mut self, envelope: &Envelope, len: usize) -> Result<(), SendError>;
}

/// What a handler sends through: given to [`super::Handler::handle`] with every request and to
/// [`super::Handler::handle_timeout`] on every timeout.
///
/// [`Outbox::send`] takes a buffer from the worker's pool, lets the handler write the payload, and queues it;
/// the worker transmits it with the batch's replies. With a request, sends and the in-place reply together
/// stay within the handler's [`Budget`] for it; on a timeout only the worker's per-batch limit applies.
pub struct Outbox<'a> {
    sink: &'a mut dyn Transmit,
    budget: Option<Budget>,
    reply_marking: Option<Marking>,
    sent: u32,
}

impl<'a> Outbox<'a> {
    /// An outbox over `sink`, bounded by `budget` (`None`: no per-request bound, as on a timeout). For
    /// datapaths and test harnesses.
    #[inline]
    pub fn new(sink: &'a mut dyn Transmit, budget: Option<Budget>) -> Outbox<'a> {
        Outbox { sink, budget, reply_marking: None, sent: 0 }
    }

    /// Sends one datagram: `write` gets the payload room (the MTU's worth for the envelope's IP version) and
    /// returns the payload length, or `None` to send nothing after all (the buffer goes back to the pool).
    ///
    /// `Ok` means queued: the worker transmits it after the current batch (or timeout). On AF_XDP a send to
    /// the request's own sender goes back along the request's link-layer path; any other destination goes to
    /// the next hop the kernel's routing and neighbour tables name.
    #[inline]
    pub fn send(
        &mut self,
        envelope: Envelope,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Result<(), SendError> {
        if self.budget.is_some_and(|b| b.packets == 0) {
            self.sink.refused(SendError::OverBudget);
            return Err(SendError::OverBudget);
        }
        let buffer = self.sink.buffer(&envelope)?;
        let room = buffer.len();
        let Some(len) = write(buffer) else { return Ok(()) };
        let refusal = if len > room {
            Some(SendError::TooLarge)
        } else if self.budget.is_some_and(|b| !b.fits(len)) {
            Some(SendError::OverBudget)
        } else {
            None
        };
        if let Some(e) = refusal {
            self.sink.refused(e);
            return Err(e);
        }
        self.sink.commit(&envelope, len)?;
        if let Some(b) = &mut self.budget {
            b.spend(len);
        }
        self.sent += 1;
        Ok(())
    }

    /// What is left of the request's budget (`None` on a timeout: no per-request bound).
    #[inline]
    pub fn remaining(&self) -> Option<Budget> {
        self.budget
    }

    /// Datagrams queued through this outbox so far.
    #[inline]
    pub fn sent(&self) -> u32 {
        self.sent
    }

    /// Marks the in-place reply (if the handler returns [`super::Verdict::Reply`]) with this DSCP and ECN
    /// instead of the server's defaults.
    #[inline]
    pub fn mark_reply(&mut self, dscp: u8, ecn: Ecn) {
        self.reply_marking = Some(Marking { dscp, ecn });
    }

    /// The in-place reply's marking, if the handler set one. For datapaths.
    #[inline]
    pub fn reply_marking(&self) -> Option<Marking> {
        self.reply_marking
    }

    /// Whether an in-place reply of `len` bytes fits what is left of the budget. For datapaths.
    #[inline]
    pub fn reply_fits(&self, len: usize) -> bool {
        self.budget.is_none_or(|b| b.fits(len))
    }
}

/// A [`Transmit`] that refuses every send with [`SendError::PoolEmpty`]: for callers that have nowhere to
/// send (a reply-only path, a fuzz target).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTransmit;

impl Transmit for NoTransmit {
    fn buffer(&mut self, _envelope: &Envelope) -> Result<&mut [u8], SendError> {
        Err(SendError::PoolEmpty)
    }

    fn commit(&mut self, _envelope: &Envelope, _len: usize) -> Result<(), SendError> {
        Err(SendError::PoolEmpty)
    }
}
