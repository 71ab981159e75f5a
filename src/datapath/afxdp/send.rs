//! Sends on AF_XDP: the [`Transmit`] a worker hands its handler, over the worker's own pool of free UMEM
//! frames (Knot DNS's `knot_xdp_send_alloc` model: the handler writes its payload straight into the frame
//! that will go out, and the worker writes the headers around it).
//!
//! A send back to the request's own sender takes the request frame's link-layer path (its MACs swapped, its
//! VLAN tag kept), as a reply does, and needs no lookup. Any other destination goes to the next hop the
//! kernel's routing and neighbour tables name ([`NextHops`]); an unknown one is refused and counted, never
//! sent to a guessed MAC.

use std::net::{IpAddr, SocketAddr};

use xsk_rs::{FrameDesc, Umem};

use crate::{
    datapath::counters::WorkerStats,
    handler::{Envelope, Request, SendError, Transmit},
    packet::{self, field, FlowSpec, ReplyHeaders},
};

/// Where the next hop towards an address is on the link: the kernel's routing and neighbour tables, as a
/// worker's cache of them sees them. Implementations answer without blocking, allocating or a system call.
pub trait NextHop: Send {
    /// The MAC of the next hop towards `to` through the served interface: [`SendError::NoRoute`] if the
    /// route leaves by another interface or there is none, [`SendError::Unresolved`] if the neighbour is not
    /// resolved yet (having asked for it to be).
    fn next_hop(&mut self, to: IpAddr) -> Result<[u8; 6], SendError>;

    /// Takes in what the resolver has learnt since the last call; called between batches.
    fn refresh(&mut self) {}
}

impl NextHop for super::nexthop::NextHops {
    #[inline]
    fn next_hop(&mut self, to: IpAddr) -> Result<[u8; 6], SendError> {
        use super::nexthop::Miss;
        self.lookup(to).map_err(|miss| match miss {
            Miss::NoRoute => SendError::NoRoute,
            Miss::Unresolved | Miss::Pending => SendError::Unresolved,
        })
    }

    #[inline]
    fn refresh(&mut self) {
        super::nexthop::NextHops::refresh(self);
    }
}

/// What an AF_XDP worker needs to address and build its handler's sends; made by the control plane.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Sends allowed per RX batch or timer turn (`sends.per_batch`).
    pub per_batch: u32,
    /// The served interface's MAC: every send's Ethernet source.
    pub source_mac: [u8; 6],
    /// Addresses sends may come from: the served addresses at start-up (`xdp.addresses`, or the interface's
    /// own). A request's own destination is always allowed.
    pub addresses: Vec<IpAddr>,
    /// Ports sends may come from: the served ports and the handler's owned ports.
    pub ports: Vec<u16>,
}

/// The request frame's link-layer path, for sends back to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Path {
    /// The request's Ethernet source: a send to the sender goes there.
    pub peer_mac: [u8; 6],
    /// The request's Ethernet destination: the send's source.
    pub own_mac: [u8; 6],
    /// The request's 802.1Q / 802.1ad tag control information, kept on the way back.
    pub vlan_tci: Option<u16>,
}

impl Path {
    /// The path of a received frame, read from its Ethernet header (`None` for a frame too short, which the
    /// packet layer then refuses anyway).
    pub fn of(frame: &[u8]) -> Option<Path> {
        let peer_mac = *frame.get(field::eth::SRC)?.first_chunk::<6>()?;
        let own_mac = *frame.get(field::eth::DST)?.first_chunk::<6>()?;
        let ethertype = u16::from_be_bytes(*frame.get(field::eth::ETHERTYPE)?.first_chunk::<2>()?);
        let vlan_tci = match ethertype {
            packet::ETHERTYPE_VLAN | packet::ETHERTYPE_QINQ => {
                let at = field::eth::HEADER_LEN + field::vlan::TCI.start;
                Some(u16::from_be_bytes(*frame.get(at..at + 2)?.first_chunk::<2>()?))
            }
            _ => None,
        };
        Some(Path { peer_mac, own_mac, vlan_tci })
    }
}

/// A send's link layer: source MAC, destination MAC, VLAN tag control information.
type Link = ([u8; 6], [u8; 6], Option<u16>);

/// What an AF_XDP worker keeps for its handler's sends between batches.
pub(super) struct Sending {
    /// Sends of the current batch or timer turn, ready for the TX ring after the replies; room for
    /// `options.per_batch`, so pushes never allocate.
    pub queued: Vec<FrameDesc>,
    pub options: SendOptions,
    pub next_hops: Option<Box<dyn NextHop>>,
    /// What every send's IP header says unless the envelope marks it (the replies' TTL, DSCP, MTU).
    pub headers: ReplyHeaders,
}

impl Sending {
    /// Sending as `options` and `next_hops` allow, with headers as `headers` say.
    pub fn new(options: SendOptions, next_hops: Option<Box<dyn NextHop>>, headers: ReplyHeaders) -> Sending {
        Sending { queued: Vec::with_capacity(options.per_batch as usize), options, next_hops, headers }
    }

    /// Sends allowed per batch or timer turn (no more than `queued` holds without allocating).
    pub fn per_batch(&self) -> u32 {
        self.options.per_batch.min(self.queued.capacity() as u32)
    }
}

/// The [`Transmit`] of one request's handling (or one timer turn) of an AF_XDP worker.
pub(super) struct XskSink<'a> {
    umem: &'a Umem,
    /// The worker's free frames: sends take theirs from here.
    free: &'a mut Vec<FrameDesc>,
    sending: &'a mut Sending,
    /// Sends left in this batch or turn.
    left: &'a mut u32,
    stats: &'a mut WorkerStats,
    /// The request being handled: its frame's path and its addresses (none on a timer turn).
    path: Option<Path>,
    request: Option<(SocketAddr, SocketAddr)>,
    /// A frame handed out by `buffer` and not committed yet, with the spec its headers will follow.
    held: Option<(FrameDesc, FlowSpec)>,
}

impl<'a> XskSink<'a> {
    /// A sink over the worker's pool `free` and `sending`'s queue, with `left` sends left in the batch; `path`:
    /// the request frame's link-layer path (`None` on a timer turn).
    pub fn new(
        umem: &'a Umem,
        free: &'a mut Vec<FrameDesc>,
        sending: &'a mut Sending,
        left: &'a mut u32,
        stats: &'a mut WorkerStats,
        path: Option<Path>,
    ) -> XskSink<'a> {
        XskSink { umem, free, sending, left, stats, path, request: None, held: None }
    }
}

impl XskSink<'_> {
    fn refuse(&mut self, e: SendError) -> SendError {
        self.stats.count_refused_send(e);
        e
    }

    /// Where a datagram to `to` goes on the link (source MAC, destination MAC, VLAN tag): the request's own
    /// path back to its sender, or the next hop.
    fn link_for(&mut self, to: IpAddr) -> Result<Link, SendError> {
        if let (Some(p), Some((src, _))) = (self.path, self.request) {
            if src.ip() == to {
                return Ok((p.own_mac, p.peer_mac, p.vlan_tci));
            }
        }
        let Some(hops) = self.sending.next_hops.as_deref_mut() else { return Err(SendError::NoRoute) };
        hops.next_hop(to).map(|mac| (self.sending.options.source_mac, mac, None))
    }

    fn source_allowed(&self, from: SocketAddr) -> bool {
        let own_request = self.request.is_some_and(|(_, dst)| dst == from);
        let o = &self.sending.options;
        own_request || (o.ports.contains(&from.port()) && o.addresses.contains(&from.ip()))
    }

    fn check(&mut self, envelope: &Envelope) -> Result<FlowSpec, SendError> {
        if envelope.from.is_ipv4() != envelope.to.is_ipv4() || !self.source_allowed(envelope.from) {
            return Err(SendError::Source);
        }
        if *self.left == 0 {
            return Err(SendError::BatchLimit);
        }
        let (src_mac, dst_mac, vlan_tci) = self.link_for(envelope.to.ip())?;
        Ok(FlowSpec { src_mac, dst_mac, vlan_tci, src: envelope.from, dst: envelope.to })
    }
}

impl Transmit for XskSink<'_> {
    fn on_request(&mut self, request: &Request) {
        self.request = Some((request.src, request.dst));
    }

    fn refused(&mut self, error: SendError) {
        self.refuse(error);
    }

    fn buffer(&mut self, envelope: &Envelope) -> Result<&mut [u8], SendError> {
        let spec = self.check(envelope).map_err(|e| self.refuse(e))?;
        let mut desc = match self.held.take() {
            Some((desc, _)) => desc,
            None => self.free.pop().ok_or_else(|| self.refuse(SendError::PoolEmpty))?,
        };
        let offset = spec.payload_offset();
        let ip_header =
            offset - field::eth::HEADER_LEN - if spec.vlan_tci.is_some() { field::vlan::TAG_LEN } else { 0 };
        // The payload may fill the frame, or the MTU's worth of IP packet, whichever is less.
        let by_mtu = self.sending.headers.mtu.saturating_sub(ip_header);
        // SAFETY: `desc` came from the worker's free pool (or was held since): a frame of this UMEM on no ring,
        // so nothing else reads or writes it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let capacity = data.cursor().buf_len();
        data.cursor().set_pos(capacity);
        let contents = data.contents_mut();
        let room = contents.len().saturating_sub(offset).min(by_mtu);
        let (ptr, len) = match contents.get_mut(offset..offset + room) {
            Some(s) => (s.as_mut_ptr(), s.len()),
            None => (contents.as_mut_ptr(), 0),
        };
        self.held = Some((desc, spec));
        // SAFETY: the bytes lie in the frame just put in `self.held`, which stays there (no ring, no other
        // reference) until `commit` or drop, both of which need `&mut self`; the returned borrow of `self`
        // keeps them from running while the slice lives. The UMEM's memory outlives `self` (`&'a Umem`).
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }

    fn commit(&mut self, envelope: &Envelope, len: usize) -> Result<(), SendError> {
        let Some((mut desc, spec)) = self.held.take() else { return Err(SendError::PoolEmpty) };
        let mut headers = self.sending.headers;
        if let Some(m) = envelope.marking {
            (headers.dscp, headers.ecn) = (m.dscp, m.ecn);
        }
        // SAFETY: as in `buffer`: the held frame is on no ring and only this sink touches it.
        let mut data = unsafe { self.umem.data_mut(&mut desc) };
        let written = packet::write_datagram(data.contents_mut(), &spec, len, headers);
        match written {
            Ok(n) => {
                data.cursor().set_pos(n);
                self.sending.queued.push(desc);
                *self.left -= 1;
                self.stats.sends += 1;
                Ok(())
            }
            Err(_) => {
                self.held = Some((desc, spec));
                Err(self.refuse(SendError::TooLarge))
            }
        }
    }
}

impl Drop for XskSink<'_> {
    /// A frame handed out and never committed goes back to the pool: none is lost.
    fn drop(&mut self) {
        if let Some((desc, _)) = self.held.take() {
            self.free.push(desc);
        }
    }
}
