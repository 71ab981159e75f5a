//! What the server answers: the [`Handler`] trait (the public extension point), the built-in handlers, and
//! [`respond`], the deterministic frame-in / frame-out step that the workers run for every packet.
//!
//! This is the protocol half of the server, sans-I/O in the quinn-proto sense: no I/O, no clock reads, no
//! `unsafe`, no allocation. The current time is an input ([`Request::now`]), so a handler behaves the same
//! under test as in the datapath, and can be tested and fuzzed without rings or sockets. The datapath owns the
//! rings and calls [`respond`] on each received frame.
//!
//! # Writing a handler
//!
//! ```
//! use shunt::handler::{Handler, Outbox, Request, Verdict};
//!
//! /// Answers every request with its payload reversed, and counts requests (per worker: no locks).
//! #[derive(Default)]
//! struct Reverse {
//!     served: u64,
//! }
//!
//! impl Handler for Reverse {
//!     fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
//!         let Some(request) = payload.get_mut(..len) else { return Verdict::Drop };
//!         request.reverse();
//!         self.served += 1;
//!         Verdict::Reply { len }
//!     }
//! }
//!
//! // Tested without a socket (see [`testing::Harness`]): the time is an input like any other.
//! let mut harness = shunt::handler::testing::Harness::new();
//! let request = Request::new("198.18.0.2:4000".parse().unwrap(), "198.18.0.1:9000".parse().unwrap(), Default::default());
//! let answered = harness.request(&mut Reverse::default(), &request, b"abc");
//! assert_eq!(answered.reply.as_deref(), Some(&b"cba"[..]));
//! ```
//!
//! # Sending, and time
//!
//! Besides replying in place, a handler may send datagrams to anyone through the [`Outbox`] it is handed
//! ([`Outbox::send`] with an [`Envelope`]: from a served address and a served or [owned](Handler::owned_ports)
//! port, to any address, marked with any DSCP and ECN), within the [`Budget`] it declares per request
//! ([`Handler::budget`]). It may also ask to be called at a time of its choosing, with no request at all
//! ([`Handler::poll_timeout`], [`Handler::handle_timeout`]: quinn-proto's shape), to retransmit, keep alive or
//! expire state:
//!
//! ```
//! use shunt::handler::{testing::Harness, Envelope, Handler, Outbox, Request, Time, Verdict};
//!
//! /// Tells a listener "tick" every 10 ms, whatever the traffic.
//! struct Ticker { next_ns: u64, from: std::net::SocketAddr, to: std::net::SocketAddr }
//!
//! impl Handler for Ticker {
//!     fn handle(&mut self, _: &Request, _: &mut [u8], _: usize, _: &mut Outbox<'_>) -> Verdict {
//!         Verdict::Drop
//!     }
//!     fn poll_timeout(&self) -> Option<u64> {
//!         Some(self.next_ns)
//!     }
//!     fn handle_timeout(&mut self, now: Time, out: &mut Outbox<'_>) {
//!         let _ = out.send(Envelope::new(self.from, self.to), |buf| {
//!             buf.get_mut(..4)?.copy_from_slice(b"tick");
//!             Some(4)
//!         });
//!         self.next_ns = now.monotonic_ns + 10_000_000;
//!     }
//! }
//!
//! let mut h = Ticker { next_ns: 0, from: "198.18.0.1:9000".parse().unwrap(), to: "198.18.0.2:7000".parse().unwrap() };
//! let mut harness = Harness::new().serving(&[9000]);
//! assert!(harness.timeout(&mut h, Time { unix_ns: 0, monotonic_ns: 5 }));
//! assert!(!harness.timeout(&mut h, Time { unix_ns: 0, monotonic_ns: 9_000_000 }), "not due yet");
//! assert_eq!(harness.sent.len(), 1);
//! assert_eq!(harness.sent[0].payload, b"tick");
//! ```
//!
//! Run it with [`crate::control::cli::run`] (the `shunt serve` flags) or [`crate::control::serve`].
//!
//! # What a request says about its packet
//!
//! Besides its addresses and the batch's time ([`Request::now`]), a [`Request`] carries what is known about the
//! packet, each an `Option` that is `None` where the datapath cannot know it:
//!
//! - [`Request::rx_timestamp`]: when the packet arrived, on both clocks, and which clock took the stamp
//!   ([`RxClock::XdpHook`]: the steering program's CLOCK_MONOTONIC stamp on AF_XDP, present whenever the
//!   program stamps, i.e. `latency.stamp` resolves to `meta` or `head`, so not with `"none"`,
//!   `latency.enabled = false` or `--no-latency`; [`RxClock::KernelSocket`]: the kernel's CLOCK_REALTIME
//!   software stamp on kernel sockets, present with `latency.enabled`). The other clock's reading is derived
//!   with the batch's clock pair ([`RxTimestamp::from_monotonic`], [`RxTimestamp::from_realtime`]): no clock is
//!   read per packet.
//! - [`Request::dscp`] and [`Request::ecn`] (IPv4 TOS / IPv6 traffic class), [`Request::ttl`] (TTL / hop limit):
//!   from the frame on AF_XDP, from IP_TOS / IPV6_TCLASS and IP_TTL / IPV6_HOPLIMIT control messages on kernel
//!   sockets.
//! - [`Request::vlan_id`]: the frame's one 802.1Q / 802.1ad tag on AF_XDP (`None` untagged, and on kernel
//!   sockets, where the kernel has stripped it).
//! - [`Request::queue`]: the NIC queue the AF_XDP worker serves (`None` on kernel sockets).
//!
//! A test sets them with the `with_*` builders:
//!
//! ```
//! use shunt::handler::{Ecn, Request, RxClock, RxTimestamp, Time};
//!
//! let now = Time { unix_ns: 1_700_000_000_000_000_000, monotonic_ns: 5_000_000 };
//! let arrived = RxTimestamp::from_monotonic(4_000_000, now, RxClock::XdpHook).unwrap();
//! let request = Request::new("198.18.0.2:4000".parse().unwrap(), "198.18.0.1:123".parse().unwrap(), now)
//!     .with_rx_timestamp(arrived)
//!     .with_traffic_class(0xb9) // DSCP 46 (EF), ECN ECT(1)
//!     .with_ttl(63)
//!     .with_vlan_id(42)
//!     .with_queue(1);
//! assert_eq!(request.rx_timestamp.unwrap().unix_ns, now.unix_ns - 1_000_000);
//! assert_eq!((request.dscp, request.ecn), (Some(46), Some(Ecn::Ect1)));
//! assert_eq!((request.ttl, request.vlan_id, request.queue), (Some(63), Some(42), Some(1)));
//! ```
//!
//! Datapaths hand what the frame does not say (the stamp, the queue) to [`respond_with`] as an [`Arrival`];
//! [`respond`] is the same with none.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod echo;
mod send;
mod sockperf;
pub mod testing;

pub use echo::Echo;
pub use send::{Budget, Envelope, Marking, NoTransmit, Outbox, SendError, Transmit};
pub use sockperf::{Sockperf, SOCKPERF_HEADER_LEN};

use std::net::SocketAddr;

pub use crate::packet::Ecn;
use crate::packet::{self, Datagram, UdpChecksum};

/// The current time, read by the worker once per RX batch and handed to the handler with each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    /// CLOCK_REALTIME: nanoseconds since the Unix epoch (wall-clock time, which may jump).
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC: nanoseconds since an arbitrary start (for intervals, rates and timeouts).
    pub monotonic_ns: u64,
}

/// Which clock stamped a request's arrival, and where on the packet's way in (see [`RxTimestamp`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RxClock {
    /// AF_XDP: the steering program's stamp at the XDP hook (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), taken as the
    /// driver hands the packet to XDP, before it waits in the socket's RX ring. Present when the program stamps
    /// (`latency.stamp` resolves to `meta` or `head`, which needs `latency.enabled`).
    XdpHook,
    /// AF_XDP with NIC hardware timestamps (a device-bound program on a driver that gives them, native attach:
    /// `bpf_xdp_metadata_rx_timestamp`): when the NIC received the packet, moved onto CLOCK_MONOTONIC by the
    /// XDP hook's own stamp minus the NIC-to-hook delay (measured against CLOCK_TAI, so it is meaningful when
    /// the NIC's clock is synchronised to TAI, e.g. by phc2sys). The earliest arrival time shunt can know.
    Nic,
    /// Kernel sockets: the kernel's software receive timestamp (SO_TIMESTAMPING with
    /// SOF_TIMESTAMPING_RX_SOFTWARE, CLOCK_REALTIME), taken as the datagram enters the network stack. Present
    /// when the sockets ask for it (`latency.enabled`).
    KernelSocket,
}

/// When a request arrived, on both clocks, and which clock took the stamp.
///
/// The stamp is taken on one clock ([`RxTimestamp::source`] says which); the other reading is derived from it
/// with the batch's own clock pair ([`Request::now`]): `realtime = monotonic + (now.unix_ns - now.monotonic_ns)`
/// and the reverse. So no clock is read per packet, and the two readings are as consistent as the batch's pair
/// (a realtime clock step between the stamp and the batch is not seen). Use `unix_ns` for protocols that put
/// wall-clock time on the wire (NTP's receive timestamp), `monotonic_ns` for intervals against `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RxTimestamp {
    /// CLOCK_REALTIME at arrival: nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC at arrival: comparable with [`Time::monotonic_ns`] (at most the batch's `now`).
    pub monotonic_ns: u64,
    /// Which clock took the stamp.
    pub source: RxClock,
}

impl RxTimestamp {
    /// A stamp taken on CLOCK_MONOTONIC (`monotonic_ns`), its realtime reading derived with `now`'s pair.
    /// `None` if the conversion does not fit a `u64` (a clock pair no host gives).
    #[inline]
    pub fn from_monotonic(monotonic_ns: u64, now: Time, source: RxClock) -> Option<RxTimestamp> {
        let unix_ns = monotonic_ns.checked_add(now.unix_ns)?.checked_sub(now.monotonic_ns)?;
        Some(RxTimestamp { unix_ns, monotonic_ns, source })
    }

    /// A stamp taken on CLOCK_REALTIME (`unix_ns`), its monotonic reading derived with `now`'s pair. `None` if
    /// the conversion does not fit a `u64` (a stamp older than the monotonic clock's start).
    #[inline]
    pub fn from_realtime(unix_ns: u64, now: Time, source: RxClock) -> Option<RxTimestamp> {
        let monotonic_ns = unix_ns.checked_add(now.monotonic_ns)?.checked_sub(now.unix_ns)?;
        Some(RxTimestamp { unix_ns, monotonic_ns, source })
    }
}

/// One request as a handler sees it: who sent it to whom, when, and what its IP header and the datapath said
/// about it.
///
/// The metadata fields are `Option`s: `None` where the datapath cannot know (see each field), and in a request
/// made with [`Request::new`] until a `with_*` method sets it (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's address and port (the reply's destination).
    pub src: SocketAddr,
    /// The server's address and port the request was sent to.
    pub dst: SocketAddr,
    /// When the worker picked up the batch holding this request (one clock reading per batch; per datagram in
    /// the per-datagram socket models). Later than [`Request::rx_timestamp`].
    pub now: Time,
    /// When the request arrived, if the packet was stamped: on AF_XDP the XDP hook's stamp
    /// ([`RxClock::XdpHook`]) whenever the steering program stamps (`latency.stamp` = `meta` or `head`, so
    /// `None` with `latency.stamp = "none"`, `latency.enabled = false` or `--no-latency`), or the NIC's
    /// hardware stamp where the device-bound program read one ([`RxClock::Nic`]); on kernel sockets the
    /// kernel's software stamp ([`RxClock::KernelSocket`]) when `latency.enabled`.
    pub rx_timestamp: Option<RxTimestamp>,
    /// The request's DSCP (0..=63), from the IPv4 TOS / IPv6 traffic class: read from the frame on AF_XDP,
    /// from the IP_TOS / IPV6_TCLASS control message on kernel sockets (`None` if the kernel sent none).
    pub dscp: Option<u8>,
    /// The request's ECN codepoint, from the same byte as [`Request::dscp`] (`None` where it is).
    pub ecn: Option<Ecn>,
    /// The request's TTL / hop limit as it arrived: from the frame on AF_XDP, from the IP_TTL / IPV6_HOPLIMIT
    /// control message on kernel sockets (`None` if the kernel sent none).
    pub ttl: Option<u8>,
    /// The VLAN id of the frame's one 802.1Q / 802.1ad tag (0 for a priority-only tag); `None` for an untagged
    /// frame, and on kernel sockets (the kernel strips the tag before the socket).
    pub vlan_id: Option<u16>,
    /// The NIC receive queue the AF_XDP worker serves ([`crate::control::WorkerInfo::queue`]); `None` on kernel
    /// sockets, whose datagrams are spread across the workers' SO_REUSEPORT sockets, not by queue.
    pub queue: Option<u32>,
}

impl Request {
    /// A request from `src` to `dst` at `now`, with no metadata (set it with the `with_*` methods).
    pub fn new(src: SocketAddr, dst: SocketAddr, now: Time) -> Request {
        Request { src, dst, now, rx_timestamp: None, dscp: None, ecn: None, ttl: None, vlan_id: None, queue: None }
    }

    /// The same request, received at `at`.
    #[must_use]
    pub fn with_rx_timestamp(self, at: RxTimestamp) -> Request {
        Request { rx_timestamp: Some(at), ..self }
    }

    /// The same request with DSCP and ECN from `traffic_class` (an IPv4 TOS byte or IPv6 traffic class).
    #[must_use]
    pub fn with_traffic_class(self, traffic_class: u8) -> Request {
        Request { dscp: Some(traffic_class >> 2), ecn: Some(Ecn::from_traffic_class(traffic_class)), ..self }
    }

    /// The same request, arrived with TTL / hop limit `ttl`.
    #[must_use]
    pub fn with_ttl(self, ttl: u8) -> Request {
        Request { ttl: Some(ttl), ..self }
    }

    /// The same request, tagged with VLAN id `vlan_id` (its low 12 bits).
    #[must_use]
    pub fn with_vlan_id(self, vlan_id: u16) -> Request {
        Request { vlan_id: Some(vlan_id & 0x0fff), ..self }
    }

    /// The same request, received on queue `queue`.
    #[must_use]
    pub fn with_queue(self, queue: u32) -> Request {
        Request { queue: Some(queue), ..self }
    }
}

/// What a datapath knows about a received frame that the frame itself does not say: handed to
/// [`respond_with`], copied into the [`Request`]. Plain values: making one costs no clock read or system call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    /// See [`Request::rx_timestamp`].
    pub rx_timestamp: Option<RxTimestamp>,
    /// See [`Request::queue`].
    pub queue: Option<u32>,
}

/// A handler's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send a reply whose payload is the first `len` bytes of the buffer.
    Reply {
        /// Reply payload length in bytes.
        len: usize,
    },
    /// Send nothing; the frame is recycled. Counted as a drop (`dropped_by_handler`).
    Drop,
    /// The request was dealt with and needs nothing back in place (a proxy that relayed it through the
    /// [`Outbox`], a one-way protocol): the frame is recycled, and the request is counted as `handled`, not as
    /// a drop.
    Handled,
}

/// Application logic: turns a request into a reply written in place, and/or datagrams sent through the
/// [`Outbox`]; and, on its own clock, into datagrams with no request at all ([`Handler::handle_timeout`]).
///
/// `payload` starts at the request's UDP payload and extends to the end of the frame's room, so a handler may
/// write a reply longer than the request; the request itself is `payload[..len]`. Each worker owns its own
/// handler (built by the factory given to [`crate::control::serve`]), so `&mut self` state needs no locks.
///
/// Called on the hot path: implementations must not allocate, block, log or make system calls. Any input may
/// arrive (the packet layer has only checked the headers): a handler must not panic on a payload it does
/// not understand, and should answer it with [`Verdict::Drop`].
pub trait Handler: Send {
    /// Handles one request: returns the in-place reply's verdict, and may send other datagrams through
    /// `out` (to the requester or anyone else), all within [`Handler::budget`].
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict;

    /// What a request of `request_len` payload bytes may cause to be sent: datagrams and payload bytes, the
    /// in-place reply included. A UDP server whose output outgrows its input can be turned into a reflection
    /// amplifier with spoofed sources, so the worker refuses (and counts, `dropped_amplification`) any reply
    /// or send beyond this. The default, one datagram no longer than the request ([`Budget::echo`]), suits
    /// echo-like protocols; a handler whose protocol answers short queries with longer replies raises it
    /// deliberately, and says what else protects a spoofed victim (a cookie exchange, a rate limit).
    #[inline]
    fn budget(&self, request_len: usize) -> Budget {
        Budget::echo(request_len)
    }

    /// Source ports this protocol's legitimate clients send from, which the source filter's
    /// `limits.deny_source_ports` (reflection-prone services' ports) then leaves alone. An NTP server says 123
    /// (ntpd queries from port 123), a DNS server 53 (resolvers may query from it): denying those would drop
    /// real clients. The replies such clients get are still bounded by [`Handler::budget`]. Default: none.
    fn client_source_ports(&self) -> &[u16] {
        &[]
    }

    /// Ports the handler owns besides the configured ones: it may send from them, and what arrives on them
    /// comes to [`Handler::handle`] like any request (a proxy's backend-side ports, where backends answer).
    /// Read once at start-up, from the first worker's handler: the server steers them (AF_XDP) or binds them
    /// (kernel sockets) like the configured ports. Default: none.
    fn owned_ports(&self) -> &[u16] {
        &[]
    }

    /// When the handler next wants [`Handler::handle_timeout`] called: a CLOCK_MONOTONIC deadline in ns,
    /// comparable with [`Time::monotonic_ns`], or `None` for no timer. Asked after every batch and idle
    /// turn, so it must be cheap; a waking worker sleeps no longer than the deadline.
    #[inline]
    fn poll_timeout(&self) -> Option<u64> {
        None
    }

    /// Called once the deadline from [`Handler::poll_timeout`] has passed (`now` is at or after it), with an
    /// outbox bounded only by the worker's per-batch limit: retransmits, keep-alives, expiry. The handler
    /// moves or clears its deadline; one still in the past is called again on the next turn.
    #[inline]
    fn handle_timeout(&mut self, now: Time, out: &mut Outbox<'_>) {
        let _ = (now, out);
    }
}

impl<H: Handler + ?Sized> Handler for Box<H> {
    #[inline]
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
        (**self).handle(request, payload, len, out)
    }

    #[inline]
    fn budget(&self, request_len: usize) -> Budget {
        (**self).budget(request_len)
    }

    fn client_source_ports(&self) -> &[u16] {
        (**self).client_source_ports()
    }

    fn owned_ports(&self) -> &[u16] {
        (**self).owned_ports()
    }

    #[inline]
    fn poll_timeout(&self) -> Option<u64> {
        (**self).poll_timeout()
    }

    #[inline]
    fn handle_timeout(&mut self, now: Time, out: &mut Outbox<'_>) {
        (**self).handle_timeout(now, out)
    }
}

/// Calls [`Handler::handle_timeout`] if the handler's deadline ([`Handler::poll_timeout`]) is at or before
/// `now`, with an outbox over `sink` (no per-request budget). Returns whether it was called.
#[inline]
pub fn fire_timeout<H: Handler + ?Sized>(handler: &mut H, now: Time, sink: &mut dyn Transmit) -> bool {
    match handler.poll_timeout() {
        Some(deadline) if deadline <= now.monotonic_ns => {
            handler.handle_timeout(now, &mut Outbox::new(sink, None));
            true
        }
        _ => false,
    }
}

/// How [`respond`] treats requests before the handler sees them, and what it writes into the reply's IP header
/// besides the addresses (see [`packet::ReplyHeaders`] for why a reply's header is its own, not the request's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespondOptions {
    /// Verify each request's UDP checksum and drop those that fail ([`Outcome::BadChecksum`]). Costs one
    /// pass over the payload per request; a server behind a NIC that verifies checksums in hardware may turn
    /// it off, as Knot DNS and dnsdist do.
    pub verify_udp_checksum: bool,
    /// TTL / hop limit of every reply (`packet.reply_ttl`, 1..=255; default 64).
    pub reply_ttl: u8,
    /// DSCP of every reply (`packet.reply_dscp`, 0..=63; default 0); ECN is always not-ECT.
    pub reply_dscp: u8,
    /// The largest IP packet, header included, a reply may be: the interface's MTU, read by the control
    /// plane at start-up (default 1500). A longer reply is dropped ([`Outcome::OverMtu`]).
    pub mtu: usize,
}

impl Default for RespondOptions {
    fn default() -> Self {
        let headers = packet::ReplyHeaders::default();
        RespondOptions { verify_udp_checksum: true, reply_ttl: headers.ttl, reply_dscp: headers.dscp, mtu: headers.mtu }
    }
}

impl RespondOptions {
    /// The same options with replies limited to `mtu` bytes of IP packet (the interface's MTU).
    pub fn with_mtu(self, mtu: usize) -> Self {
        RespondOptions { mtu, ..self }
    }

    /// What the packet layer writes into each reply's IP header.
    #[inline]
    pub fn reply_headers(&self) -> packet::ReplyHeaders {
        packet::ReplyHeaders { ttl: self.reply_ttl, dscp: self.reply_dscp, ecn: Ecn::NotEct, mtu: self.mtu }
    }
}

/// What became of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The frame now holds a reply of this many bytes.
    Reply(usize),
    /// Claimed to be IP/UDP but did not hold together: dropped.
    Malformed(packet::Malformed),
    /// The UDP checksum did not verify (a payload corrupted on the way): dropped, never answered.
    BadChecksum,
    /// Not a UDP datagram we serve (the XDP program should not have sent it): dropped.
    NotOurs,
    /// The handler chose not to answer.
    HandlerDrop,
    /// The handler dealt with the request without a reply in place ([`Verdict::Handled`]).
    Handled,
    /// The handler asked for a reply that does not fit the frame: dropped, never sent truncated.
    ReplyTooLarge,
    /// The reply would exceed what is left of the handler's declared budget ([`Handler::budget`]): dropped, so
    /// the server cannot amplify a spoofed request.
    Amplification,
    /// The reply's IP packet would be longer than the interface's MTU ([`RespondOptions::mtu`]): dropped,
    /// never sent (with DF set it could not cross the link, and the server does not fragment).
    OverMtu,
}

/// An in-place reply [`answer`] accepted: its payload length and how the handler marked it (`None`: the
/// server's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Reply payload bytes, at the start of the payload buffer.
    pub len: usize,
    /// DSCP and ECN the handler asked for ([`Outbox::mark_reply`]).
    pub marking: Option<Marking>,
}

/// Runs the handler on one request payload, with an [`Outbox`] over `sink` bounded by the handler's
/// [`Handler::budget`], and applies the checks every datapath shares: a reply beyond what is left of the
/// budget after the handler's sends is refused ([`Outcome::Amplification`]), one longer than the buffer is
/// refused ([`Outcome::ReplyTooLarge`]). Returns the reply, or the outcome to count; sends the handler made
/// are queued in `sink` either way.
///
/// Datapaths that receive bare UDP payloads (kernel sockets) call this directly; [`respond_with`] calls it
/// for whole frames.
#[inline]
pub fn answer<H: Handler + ?Sized>(
    handler: &mut H,
    request: &Request,
    payload: &mut [u8],
    len: usize,
    sink: &mut dyn Transmit,
) -> Result<Answer, Outcome> {
    let room = payload.len();
    sink.on_request(request);
    let mut out = Outbox::new(sink, Some(handler.budget(len)));
    match handler.handle(request, payload, len, &mut out) {
        Verdict::Drop => Err(Outcome::HandlerDrop),
        Verdict::Handled => Err(Outcome::Handled),
        Verdict::Reply { len: reply } if !out.reply_fits(reply) => Err(Outcome::Amplification),
        Verdict::Reply { len: reply } if reply > room => Err(Outcome::ReplyTooLarge),
        Verdict::Reply { len: reply } => Ok(Answer { len: reply, marking: out.reply_marking() }),
    }
}

/// Runs one received frame through parse → checksum check → handler → reply (headers from `options`, no
/// longer than its MTU: [`Outcome::OverMtu`] otherwise), with no [`Arrival`] metadata (no receive timestamp,
/// no queue); see [`respond_with`].
///
/// `frame` is the whole writable buffer of the frame and `len` the received length (`len <= frame.len()`; a
/// larger `len` is clamped). On [`Outcome::Reply`] the frame holds the reply; on any other outcome its content
/// is unspecified and it must not be sent.
#[inline]
pub fn respond<H: Handler + ?Sized>(
    handler: &mut H,
    frame: &mut [u8],
    len: usize,
    now: Time,
    options: RespondOptions,
) -> Outcome {
    respond_with(handler, frame, len, now, options, Arrival::default(), &mut NoTransmit)
}

/// [`respond`], with what the datapath knows about the frame (`arrival`: its receive timestamp, the queue)
/// copied into the [`Request`], next to what the frame's headers say (DSCP, ECN, TTL / hop limit, VLAN id),
/// and with the handler's sends going to `sink`.
#[inline]
pub fn respond_with<H: Handler + ?Sized>(
    handler: &mut H,
    frame: &mut [u8],
    len: usize,
    now: Time,
    options: RespondOptions,
    arrival: Arrival,
    sink: &mut dyn Transmit,
) -> Outcome {
    let mut d = match Datagram::parse(frame, len) {
        Ok(Some(d)) => d,
        Ok(None) => return Outcome::NotOurs,
        Err(e) => return Outcome::Malformed(e),
    };
    if options.verify_udp_checksum && d.udp_checksum() == UdpChecksum::Wrong {
        return Outcome::BadChecksum;
    }
    let traffic_class = d.traffic_class();
    let request = Request {
        src: d.src(),
        dst: d.dst(),
        now,
        rx_timestamp: arrival.rx_timestamp,
        dscp: Some(traffic_class >> 2),
        ecn: Some(Ecn::from_traffic_class(traffic_class)),
        ttl: Some(d.ttl()),
        vlan_id: d.vlan_id(),
        queue: arrival.queue,
    };
    let request_len = d.payload_len();
    let reply = match answer(handler, &request, d.payload_room_mut(), request_len, sink) {
        Ok(reply) => reply,
        Err(outcome) => return outcome,
    };
    let mut headers = options.reply_headers();
    if let Some(m) = reply.marking {
        (headers.dscp, headers.ecn) = (m.dscp, m.ecn);
    }
    match d.write_reply(reply.len, headers) {
        Ok(n) => Outcome::Reply(n),
        Err(packet::ReplyError::TooLarge { .. }) => Outcome::ReplyTooLarge,
        Err(packet::ReplyError::OverMtu { .. }) => Outcome::OverMtu,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::packet::{field::udp, write_request, FlowSpec};

    /// Answers every request with `reply` bytes, declaring `bound` (None: the default bound).
    struct Fixed {
        reply: usize,
        bound: Option<usize>,
    }

    impl Handler for Fixed {
        fn handle(&mut self, _request: &Request, payload: &mut [u8], _len: usize, _out: &mut Outbox<'_>) -> Verdict {
            payload[..self.reply].fill(b'r');
            Verdict::Reply { len: self.reply }
        }
        fn budget(&self, request_len: usize) -> Budget {
            Budget::echo(self.bound.unwrap_or(request_len))
        }
    }

    fn request(frame: &mut [u8], payload: &[u8]) -> usize {
        let spec = FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan_tci: None,
            src: "198.18.0.2:4000".parse().unwrap(),
            dst: "198.18.0.1:9000".parse().unwrap(),
        };
        let at = spec.payload_offset();
        frame[at..at + payload.len()].copy_from_slice(payload);
        write_request(frame, &spec, payload.len()).unwrap()
    }

    #[test]
    fn replies_longer_than_the_declared_bound_are_dropped() {
        let mut frame = [0u8; 512];
        let n = request(&mut frame, b"0123456789");
        let now = Time::default();
        let opts = RespondOptions::default();
        assert_eq!(respond(&mut Fixed { reply: 10, bound: None }, &mut frame, n, now, opts), Outcome::Reply(n));
        let n = request(&mut frame, b"0123456789");
        assert_eq!(respond(&mut Fixed { reply: 11, bound: None }, &mut frame, n, now, opts), Outcome::Amplification);
        let n = request(&mut frame, b"0123456789");
        let out = respond(&mut Fixed { reply: 100, bound: Some(100) }, &mut frame, n, now, opts);
        assert_eq!(out, Outcome::Reply(n - 10 + 100), "a handler may raise its bound deliberately");
    }

    /// Keeps the last request it saw, and echoes.
    #[derive(Default)]
    struct Seen(Option<Request>);

    impl Handler for Seen {
        fn handle(&mut self, request: &Request, _payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
            self.0 = Some(*request);
            Verdict::Reply { len }
        }
    }

    #[test]
    fn the_request_carries_the_frames_metadata_and_the_arrival() {
        // IPv6 in an 802.1Q tag, traffic class 0xb9 (DSCP 46, ECT(1)) and hop limit 7 (neither is covered by
        // the UDP checksum, so they are set after building).
        let spec = FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlan_tci: Some(0x6000 | 42),
            src: "[2001:2::2]:4000".parse().unwrap(),
            dst: "[2001:2::1]:9000".parse().unwrap(),
        };
        let mut frame = [0u8; 256];
        let n = write_request(&mut frame, &spec, 5).unwrap();
        let l3 = 18;
        frame[l3] = 0x60 | (0xb9 >> 4);
        frame[l3 + 1] = ((0xb9 & 0x0f) << 4) | (frame[l3 + 1] & 0x0f);
        frame[l3 + 7] = 7;
        let now = Time { unix_ns: 1_700_000_000_000_000_000, monotonic_ns: 9_000 };
        let stamp = RxTimestamp::from_monotonic(8_000, now, RxClock::XdpHook).unwrap();
        assert_eq!(stamp.unix_ns, now.unix_ns - 1_000);
        let arrival = Arrival { rx_timestamp: Some(stamp), queue: Some(3) };
        let mut h = Seen::default();
        let copy = frame;
        assert!(matches!(
            respond_with(&mut h, &mut frame, n, now, RespondOptions::default(), arrival, &mut NoTransmit),
            Outcome::Reply(_)
        ));
        let r = h.0.unwrap();
        let expected = Request::new(spec.src, spec.dst, now)
            .with_rx_timestamp(stamp)
            .with_traffic_class(0xb9)
            .with_ttl(7)
            .with_vlan_id(42)
            .with_queue(3);
        assert_eq!(r, expected);
        assert_eq!((r.dscp, r.ecn), (Some(46), Some(Ecn::Ect1)));

        // `respond` hands no arrival over: no stamp, no queue; the frame's own fields are still there.
        let mut frame = copy;
        assert!(matches!(respond(&mut h, &mut frame, n, now, RespondOptions::default()), Outcome::Reply(_)));
        let r = h.0.unwrap();
        assert_eq!((r.rx_timestamp, r.queue), (None, None));
        assert_eq!((r.ttl, r.vlan_id, r.dscp), (Some(7), Some(42), Some(46)));
    }

    #[test]
    fn a_new_request_has_no_metadata_and_stamps_convert_both_ways() {
        let now = Time { unix_ns: 1_000_000, monotonic_ns: 400 };
        let r = Request::new("198.18.0.2:1".parse().unwrap(), "198.18.0.1:2".parse().unwrap(), now);
        assert_eq!((r.rx_timestamp, r.dscp, r.ecn, r.ttl, r.vlan_id, r.queue), (None, None, None, None, None, None));
        assert_eq!(r.with_vlan_id(0xffff).vlan_id, Some(0x0fff), "the id is 12 bits");
        let m = RxTimestamp::from_monotonic(300, now, RxClock::XdpHook).unwrap();
        assert_eq!((m.unix_ns, m.monotonic_ns), (999_900, 300));
        let k = RxTimestamp::from_realtime(999_900, now, RxClock::KernelSocket).unwrap();
        assert_eq!((k.unix_ns, k.monotonic_ns, k.source), (999_900, 300, RxClock::KernelSocket));
        // Conversions that do not fit are refused, never wrapped.
        assert_eq!(RxTimestamp::from_realtime(100, now, RxClock::KernelSocket), None);
        assert_eq!(RxTimestamp::from_monotonic(u64::MAX, now, RxClock::XdpHook), None);
        let odd = Time { unix_ns: 0, monotonic_ns: 10 };
        assert_eq!(RxTimestamp::from_monotonic(5, odd, RxClock::XdpHook), None);
        for tc in 0..=255u8 {
            let r = r.with_traffic_class(tc);
            assert_eq!((r.dscp.unwrap() << 2) | r.ecn.unwrap().bits(), tc);
        }
    }

    #[test]
    fn a_corrupted_request_is_not_answered_unless_checks_are_off() {
        let mut frame = [0u8; 256];
        let n = request(&mut frame, b"hello");
        let last = n - 1;
        frame[last] ^= 0x01;
        let now = Time::default();
        assert_eq!(respond(&mut Echo, &mut frame, n, now, RespondOptions::default()), Outcome::BadChecksum);
        let off = RespondOptions { verify_udp_checksum: false, ..RespondOptions::default() };
        assert!(matches!(respond(&mut Echo, &mut frame, n, now, off), Outcome::Reply(_)));
    }

    #[test]
    fn the_pseudo_header_only_checksum_of_offloading_senders_is_accepted() {
        let mut frame = [0u8; 256];
        let n = request(&mut frame, b"hello");
        // What a sender with TX checksum offload leaves: the folded pseudo-header sum, not complemented.
        let udp_at = n - 5 - udp::HEADER_LEN;
        let pseudo = crate::packet::checksum::pseudo_header_v4([198, 18, 0, 2], [198, 18, 0, 1], 13);
        frame[udp_at + 6..udp_at + 8].copy_from_slice(&crate::packet::checksum::fold(pseudo).to_be_bytes());
        assert!(matches!(
            respond(&mut Echo, &mut frame, n, Time::default(), RespondOptions::default()),
            Outcome::Reply(_)
        ));
    }
}
