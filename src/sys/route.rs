//! The kernel's routing and neighbour tables over rtnetlink, for sending whole Ethernet frames: which
//! interface and next hop a destination leaves by ([`RouteSocket::route_get`], the kernel's own lookup as
//! `ip route get` does it), that next hop's link-layer address ([`RouteSocket::neighbour_get`]), a way to
//! make the kernel resolve a neighbour it does not know yet without sending a packet ourselves
//! ([`RouteSocket::neighbour_resolve`]), an interface's own MAC ([`RouteSocket::link_mac`]), and the
//! notifications that say when any of that changes ([`RouteEvents`]).
//!
//! Messages are built and parsed with `netlink-packet-route` and sent over `netlink-sys` sockets, so there is
//! no `unsafe` here. Every socket is opened in the calling thread's network namespace and keeps it for life.

use std::{
    io,
    net::IpAddr,
    os::fd::AsFd,
    time::{Duration, Instant},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `RTNLGRP_NEIGH` (linux/rtnetlink.h): neighbour table changes.
const RTNLGRP_NEIGH: u32 = 3;
/// `RTNLGRP_IPV4_ROUTE` (linux/rtnetlink.h): IPv4 routes added or removed.
const RTNLGRP_IPV4_ROUTE: u32 = 7;
/// `RTNLGRP_IPV6_ROUTE` (linux/rtnetlink.h): IPv6 routes added or removed.
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// How long a request waits for the kernel's answer. The kernel answers a route or neighbour request at
/// once; the bound only keeps a caller from hanging on a socket that went wrong.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// Receive buffer: a notification burst (a flushed neighbour table) fits many messages in one datagram.
const RECV_BUFFER: usize = 64 * 1024;

/// What the kernel's route lookup for one destination says ([`RouteSocket::route_get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The route's type: only [`RouteKind::Unicast`] routes leave by an interface towards a next hop.
    pub kind: RouteKind,
    /// The interface the packet leaves by (`RTA_OIF`); 0 when the answer names none.
    pub ifindex: u32,
    /// The gateway (`RTA_GATEWAY`, or `RTA_VIA` for an IPv4 route through an IPv6 gateway), when the
    /// destination is not on a connected network: the next hop whose MAC a frame to the destination carries.
    pub gateway: Option<IpAddr>,
    /// The source address the kernel would pick (`RTA_PREFSRC`).
    pub source: Option<IpAddr>,
}

impl Route {
    /// The address whose link-layer address a frame to `dst` carries: the gateway, or `dst` itself on a
    /// connected network.
    pub fn next_hop(&self, dst: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

/// A route's type (`rtm_type`), as far as sending frames cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `RTN_UNICAST`: a gateway or directly connected destination.
    Unicast,
    /// `RTN_LOCAL`: one of this host's own addresses.
    Local,
    /// Anything else (broadcast, multicast, blackhole, unreachable, prohibit, ...), with its `RTN_*` value.
    Other(u8),
}

/// A neighbour table entry's state: the `NUD_*` bits of linux/neighbour.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NudState(pub u16);

impl NudState {
    /// `NUD_NONE`: no state (a new entry).
    pub const NONE: NudState = NudState(0x00);
    /// `NUD_INCOMPLETE`: a solicitation is out, no answer yet.
    pub const INCOMPLETE: NudState = NudState(0x01);
    /// `NUD_REACHABLE`: confirmed recently.
    pub const REACHABLE: NudState = NudState(0x02);
    /// `NUD_STALE`: known, not confirmed lately; the kernel still sends to it (and re-checks on use).
    pub const STALE: NudState = NudState(0x04);
    /// `NUD_DELAY`: stale and in use; a probe follows shortly.
    pub const DELAY: NudState = NudState(0x08);
    /// `NUD_PROBE`: being re-confirmed with unicast probes; the address still holds.
    pub const PROBE: NudState = NudState(0x10);
    /// `NUD_FAILED`: resolution failed.
    pub const FAILED: NudState = NudState(0x20);
    /// `NUD_NOARP`: needs no resolution (point-to-point, multicast).
    pub const NOARP: NudState = NudState(0x40);
    /// `NUD_PERMANENT`: set by hand (`ip neigh add/replace ... permanent`).
    pub const PERMANENT: NudState = NudState(0x80);

    /// Whether the entry's link-layer address may be sent to: the kernel's own `NUD_VALID` set (REACHABLE,
    /// STALE, DELAY, PROBE, PERMANENT, NOARP). INCOMPLETE, FAILED and NONE hold no usable address.
    pub fn usable(self) -> bool {
        self.0 & 0xde != 0
    }
}

/// A neighbour table entry ([`RouteSocket::neighbour_get`], [`RouteEvent::Neighbour`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The interface the entry belongs to.
    pub ifindex: u32,
    /// The neighbour's IP address.
    pub ip: IpAddr,
    /// Its state.
    pub state: NudState,
    /// Its Ethernet address, when the message carries one of six bytes.
    pub lladdr: Option<[u8; 6]>,
}

impl Neighbour {
    /// The MAC a frame to this neighbour may carry: only in a [usable](NudState::usable) state, and never
    /// all zeros (a NOARP entry on a device without addresses says 00:00:00:00:00:00).
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        self.lladdr.filter(|mac| self.state.usable() && *mac != [0; 6])
    }
}

/// A request socket for route, neighbour and link queries (blocking, answered at once by the kernel).
#[derive(Debug)]
pub struct RouteSocket {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace.
    pub fn open() -> io::Result<RouteSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket { socket, sequence: 0, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    /// The kernel's route for `dst` (RTM_GETROUTE, as `ip route get` asks it). `Ok(None)` when there is no
    /// route (ENETUNREACH, EHOSTUNREACH, or a prohibit/blackhole route's EACCES/EINVAL).
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Option<Route>> {
        self.route_get_on(dst, None)
    }

    /// [`route_get`](RouteSocket::route_get) with the output interface given (`RTA_OIF`, as
    /// `ip route get DST oif IF`): needed for IPv6 link-local destinations, which every interface reaches.
    pub fn route_get_on(&mut self, dst: IpAddr, oif: Option<u32>) -> io::Result<Option<Route>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst);
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::from(dst)));
        if let Some(oif) = oif {
            msg.attributes.push(RouteAttribute::Oif(oif));
        }
        match self.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST) {
            Ok(Some(RouteNetlinkMessage::NewRoute(route))) => Ok(Some(parse_route(&route))),
            Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "RTM_GETROUTE: no route message in the answer")),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The neighbour entry for `ip` on interface `ifindex` (RTM_GETNEIGH for one entry, Linux 4.20+).
    /// `Ok(None)` when there is none (ENOENT).
    pub fn neighbour_get(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<Neighbour>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = ifindex;
        msg.attributes.push(NeighbourAttribute::Destination(neighbour_address(ip)));
        match self.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST) {
            Ok(Some(RouteNetlinkMessage::NewNeighbour(n))) => Ok(parse_neighbour(&n)),
            Ok(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "RTM_GETNEIGH: no neighbour in the answer")),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes the kernel resolve `ip` on interface `ifindex` as if a packet were waiting for it, without
    /// sending one: RTM_NEWNEIGH with NTF_USE (and NLM_F_CREATE, so an absent entry is created), which the
    /// kernel's `neigh_add` turns into `neigh_event_send`. A new or FAILED entry goes INCOMPLETE and a
    /// solicitation (ARP request, neighbour solicitation) goes out; a STALE one goes to DELAY; a valid one
    /// is left alone. The outcome arrives as [`RouteEvent::Neighbour`] notifications.
    pub fn neighbour_resolve(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = ifindex;
        msg.header.flags = NeighbourFlags::Use;
        msg.attributes.push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.request(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE).map(drop)
    }

    /// Interface `ifindex`'s own MAC (RTM_GETLINK, `IFLA_ADDRESS`); `Ok(None)` when it has no 6-byte
    /// address (loopback has one of zeros, which counts as none; tunnels have none).
    pub fn link_mac(&mut self, ifindex: u32) -> io::Result<Option<[u8; 6]>> {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        match self.request(RouteNetlinkMessage::GetLink(msg), NLM_F_REQUEST)? {
            Some(RouteNetlinkMessage::NewLink(link)) => Ok(link_address(&link)),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "RTM_GETLINK: no link in the answer")),
        }
    }

    /// Sends one request and reads until its answer: the first message of ours that is not an ack, or
    /// `Ok(None)` for an ack (an error message with code 0), or the error the kernel returned.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Option<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;

        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            wait_readable(&self.socket, deadline.saturating_duration_since(Instant::now()))?
                .then_some(())
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "netlink: no answer from the kernel"))?;
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            for parsed in messages(&self.buf) {
                let msg = parsed?;
                if msg.header.sequence_number != self.sequence {
                    continue; // A late answer to an earlier request that timed out.
                }
                return match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => Ok(None),
                        Some(_) => Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                    NetlinkPayload::Done(_) => Ok(None),
                    _ => continue,
                };
            }
        }
    }
}

/// Interface `ifindex`'s own MAC, asked with a socket of its own ([`RouteSocket::link_mac`]).
pub fn link_mac(ifindex: u32) -> io::Result<Option<[u8; 6]>> {
    RouteSocket::open()?.link_mac(ifindex)
}

/// A change [`RouteEvents`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteEvent {
    /// A neighbour entry was added or changed (RTM_NEWNEIGH: `deleted` false) or removed (RTM_DELNEIGH).
    Neighbour {
        /// The entry as the message describes it.
        neighbour: Neighbour,
        /// RTM_DELNEIGH: the entry is gone, whatever its state says.
        deleted: bool,
    },
    /// An IPv4 (`ipv6` false) or IPv6 route was added or removed: any destination's next hop may have changed.
    Route {
        /// Whether the route is an IPv6 one.
        ipv6: bool,
    },
    /// The kernel dropped notifications (the socket overran: ENOBUFS): anything may have changed.
    Lost,
}

/// A subscription to neighbour and route notifications (RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE,
/// RTNLGRP_IPV6_ROUTE), read with a timeout so that the reading thread can stop.
#[derive(Debug)]
pub struct RouteEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl RouteEvents {
    /// Subscribes in the calling thread's network namespace. Subscribe before the first query: a change
    /// between the two is then seen as an event, never missed.
    pub fn subscribe() -> io::Result<RouteEvents> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        for group in [RTNLGRP_NEIGH, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE] {
            socket.add_membership(group)?;
        }
        socket.set_non_blocking(true)?;
        Ok(RouteEvents { socket, buf: Vec::with_capacity(RECV_BUFFER) })
    }

    /// Waits up to `timeout` for notifications, then appends every one queued to `out` (nothing when the
    /// time passed first). Messages the parser refuses are skipped.
    pub fn wait(&mut self, timeout: Duration, out: &mut Vec<RouteEvent>) -> io::Result<()> {
        if !wait_readable(&self.socket, timeout)? {
            return Ok(());
        }
        loop {
            self.buf.clear();
            match self.socket.recv(&mut self.buf, 0) {
                Ok(_) => out.extend(messages(&self.buf).filter_map(|m| m.ok()).filter_map(|m| event(&m))),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => {}
                    Some(libc::ENOBUFS) => out.push(RouteEvent::Lost),
                    _ => return Err(e),
                },
            }
        }
    }
}

/// Waits up to `timeout` for `fd` to be readable; `Ok(false)` when the time passed (or a signal came).
fn wait_readable(fd: &impl AsFd, timeout: Duration) -> io::Result<bool> {
    let ts = rustix::event::Timespec {
        tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(n) => Ok(n > 0),
        Err(rustix::io::Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

/// The netlink messages in one datagram, each parsed (or the error that stopped it); a truncated or
/// malformed length ends the walk.
fn messages(buf: &[u8]) -> impl Iterator<Item = io::Result<NetlinkMessage<RouteNetlinkMessage>>> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let header = rest.get(..4)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < 16 || len > rest.len() {
            return None;
        }
        let (this, next) = rest.split_at(len);
        rest = next.get(len.next_multiple_of(4) - len..).unwrap_or_default();
        Some(
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(this)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        )
    })
}

/// The notification a message is, if it is one of ours.
fn event(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<RouteEvent> {
    match &msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
            Some(RouteEvent::Neighbour { neighbour: parse_neighbour(n)?, deleted: false })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
            Some(RouteEvent::Neighbour { neighbour: parse_neighbour(n)?, deleted: true })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r)) => {
            match r.header.address_family {
                AddressFamily::Inet => Some(RouteEvent::Route { ipv6: false }),
                AddressFamily::Inet6 => Some(RouteEvent::Route { ipv6: true }),
                _ => None,
            }
        }
        NetlinkPayload::Overrun(_) => Some(RouteEvent::Lost),
        _ => None,
    }
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A route message's type, output interface, gateway and preferred source.
fn parse_route(msg: &RouteMessage) -> Route {
    let kind = match msg.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::Local => RouteKind::Local,
        other => RouteKind::Other(u8::from(other)),
    };
    let mut route = Route { kind, ifindex: 0, gateway: None, source: None };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Oif(i) => route.ifindex = *i,
            RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
            RouteAttribute::Via(RouteVia::Inet(v4)) => route.gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Via(RouteVia::Inet6(v6)) => route.gateway = Some(IpAddr::V6(*v6)),
            RouteAttribute::PrefSource(s) => route.source = route_ip(s),
            _ => {}
        }
    }
    route
}

/// A neighbour message's entry; `None` without an IPv4 or IPv6 destination (bridge FDB entries share the
/// message type).
fn parse_neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut lladdr = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            NeighbourAttribute::LinkLocalAddress(mac) => lladdr = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => {}
        }
    }
    Some(Neighbour { ifindex: msg.header.ifindex, ip: ip?, state: NudState(u16::from(msg.header.state)), lladdr })
}

/// A link message's 6-byte, non-zero address.
fn link_address(msg: &LinkMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok().filter(|m| *m != [0; 6]),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::neighbour::NeighbourState;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// `message` as the kernel would send it, with sequence number `seq`.
    fn wire(message: RouteNetlinkMessage, seq: u32) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        out
    }

    fn neighbour_msg(ip: IpAddr, state: NeighbourState, mac: Option<[u8; 6]>) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = 7;
        msg.header.state = state;
        msg.attributes.push(NeighbourAttribute::Destination(neighbour_address(ip)));
        if let Some(mac) = mac {
            msg.attributes.push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
        }
        msg
    }

    #[test]
    fn route_answers_give_interface_gateway_and_source() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(198, 19, 1, 9))));
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(198, 18, 0, 2))));
        msg.attributes.push(RouteAttribute::PrefSource(RouteAddress::Inet(Ipv4Addr::new(198, 18, 0, 1))));
        msg.attributes.push(RouteAttribute::Oif(4));
        let bytes = wire(RouteNetlinkMessage::NewRoute(msg), 1);
        let parsed: Vec<_> = messages(&bytes).collect::<io::Result<_>>().unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = &parsed[0].payload else {
            panic!("not a route: {parsed:?}")
        };
        let route = parse_route(r);
        assert_eq!(route.kind, RouteKind::Unicast);
        assert_eq!(route.ifindex, 4);
        assert_eq!(route.gateway, Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))));
        assert_eq!(route.source, Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))));
        assert_eq!(route.next_hop(IpAddr::V4(Ipv4Addr::new(198, 19, 1, 9))), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)));

        // A connected IPv6 destination: no gateway, the destination is its own next hop; a local route says so.
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet6;
        msg.header.kind = RouteType::Local;
        msg.attributes.push(RouteAttribute::Oif(1));
        let route = parse_route(&msg);
        assert_eq!(route.kind, RouteKind::Local);
        // An IPv4 route through an IPv6 gateway (RFC 5549) names it with RTA_VIA.
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        let gw6 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        msg.attributes.push(RouteAttribute::Via(RouteVia::Inet6(gw6)));
        assert_eq!(parse_route(&msg).gateway, Some(IpAddr::V6(gw6)));
        let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2));
        assert_eq!(route.next_hop(dst), dst);
    }

    #[test]
    fn neighbour_notifications_carry_state_and_address() {
        let mac = [2, 0, 0, 0, 0, 9];
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2));
        let mut bytes =
            wire(RouteNetlinkMessage::NewNeighbour(neighbour_msg(v6, NeighbourState::Reachable, Some(mac))), 0);
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        bytes.extend(wire(RouteNetlinkMessage::DelNeighbour(neighbour_msg(v4, NeighbourState::Stale, Some(mac))), 0));
        bytes.extend(wire(RouteNetlinkMessage::NewNeighbour(neighbour_msg(v4, NeighbourState::Failed, None)), 0));
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet6;
        bytes.extend(wire(RouteNetlinkMessage::DelRoute(route), 0));
        let events: Vec<_> = messages(&bytes).map(|m| event(&m.unwrap())).collect();
        assert_eq!(
            events,
            vec![
                Some(RouteEvent::Neighbour {
                    neighbour: Neighbour { ifindex: 7, ip: v6, state: NudState::REACHABLE, lladdr: Some(mac) },
                    deleted: false
                }),
                Some(RouteEvent::Neighbour {
                    neighbour: Neighbour { ifindex: 7, ip: v4, state: NudState::STALE, lladdr: Some(mac) },
                    deleted: true
                }),
                Some(RouteEvent::Neighbour {
                    neighbour: Neighbour { ifindex: 7, ip: v4, state: NudState::FAILED, lladdr: None },
                    deleted: false
                }),
                Some(RouteEvent::Route { ipv6: true }),
            ]
        );
    }

    #[test]
    fn only_valid_states_with_a_real_address_are_usable() {
        let n = |state, lladdr| Neighbour { ifindex: 1, ip: IpAddr::V4(Ipv4Addr::LOCALHOST), state, lladdr };
        let mac = Some([2, 0, 0, 0, 0, 1]);
        for state in [NudState::REACHABLE, NudState::STALE, NudState::DELAY, NudState::PROBE, NudState::PERMANENT] {
            assert_eq!(n(state, mac).usable_mac(), mac, "{state:?}");
        }
        for state in [NudState::NONE, NudState::INCOMPLETE, NudState::FAILED] {
            assert_eq!(n(state, mac).usable_mac(), None, "{state:?}");
        }
        assert_eq!(n(NudState::NOARP, Some([0; 6])).usable_mac(), None);
        assert_eq!(n(NudState::REACHABLE, None).usable_mac(), None);
    }

    #[test]
    fn truncated_datagrams_end_the_walk_without_panicking() {
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2));
        let full =
            wire(RouteNetlinkMessage::NewNeighbour(neighbour_msg(v4, NeighbourState::Reachable, Some([2; 6]))), 0);
        for cut in 0..full.len() {
            // A cut inside the message is either not walked at all or refused by the parser: never an event.
            assert!(messages(&full[..cut]).filter_map(|m| m.ok()).filter_map(|m| event(&m)).next().is_none());
        }
        let mut link = LinkMessage::default();
        link.attributes.push(LinkAttribute::Address(vec![0; 6]));
        assert_eq!(link_address(&link), None);
        link.attributes[0] = LinkAttribute::Address(vec![2, 1, 2, 3, 4, 5]);
        assert_eq!(link_address(&link), Some([2, 1, 2, 3, 4, 5]));
    }
}
