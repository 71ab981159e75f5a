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
//! use shunt::handler::{Handler, Request, Verdict};
//!
//! /// Answers every request with its payload reversed, and counts requests (per worker: no locks).
//! #[derive(Default)]
//! struct Reverse {
//!     served: u64,
//! }
//!
//! impl Handler for Reverse {
//!     fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize) -> Verdict {
//!         let Some(request) = payload.get_mut(..len) else { return Verdict::Drop };
//!         request.reverse();
//!         self.served += 1;
//!         Verdict::Reply { len }
//!     }
//! }
//!
//! // Tested without a socket: the time is an input like any other.
//! let mut h = Reverse::default();
//! let mut buf = *b"abc\0\0\0";
//! let request = Request::new("198.18.0.2:4000".parse().unwrap(), "198.18.0.1:9000".parse().unwrap(), Default::default());
//! assert_eq!(h.handle(&request, &mut buf, 3), Verdict::Reply { len: 3 });
//! assert_eq!(&buf[..3], b"cba");
//! ```
//!
//! Run it with [`crate::control::cli::run`] (the `shunt serve` flags) or [`crate::control::serve`].
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod echo;
mod sockperf;

pub use echo::Echo;
pub use sockperf::{Sockperf, SOCKPERF_HEADER_LEN};

use std::net::SocketAddr;

use crate::packet::{self, Datagram, UdpChecksum};

/// The current time, read by the worker once per RX batch and handed to the handler with each request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    /// CLOCK_REALTIME: nanoseconds since the Unix epoch (wall-clock time, which may jump).
    pub unix_ns: u64,
    /// CLOCK_MONOTONIC: nanoseconds since an arbitrary start (for intervals, rates and timeouts).
    pub monotonic_ns: u64,
}

/// One request as a handler sees it: who sent it to whom, and when it was taken off the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's address and port (the reply's destination).
    pub src: SocketAddr,
    /// The server's address and port the request was sent to.
    pub dst: SocketAddr,
    /// When the worker picked up the batch holding this request.
    pub now: Time,
}

impl Request {
    /// A request from `src` to `dst` at `now` (for tests and for datapaths).
    pub fn new(src: SocketAddr, dst: SocketAddr, now: Time) -> Request {
        Request { src, dst, now }
    }
}

/// A handler's decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send a reply whose payload is the first `len` bytes of the buffer.
    Reply {
        /// Reply payload length in bytes.
        len: usize,
    },
    /// Send nothing; the frame is recycled.
    Drop,
}

/// Application logic: turns a request payload into a reply payload, in place.
///
/// `payload` starts at the request's UDP payload and extends to the end of the frame's room, so a handler may
/// write a reply longer than the request; the request itself is `payload[..len]`. Each worker owns its own
/// handler (built by the factory given to [`crate::control::serve`]), so `&mut self` state needs no locks.
///
/// Called on the hot path: implementations must not allocate, block, log or make system calls. Any input may
/// arrive (the packet layer has only checked the headers): a handler must not panic on a payload it does
/// not understand, and should answer it with [`Verdict::Drop`].
pub trait Handler: Send {
    /// Handles one request.
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize) -> Verdict;

    /// The longest reply payload this handler may send to a request of `request_len` bytes. A UDP server
    /// whose replies outgrow its requests can be turned into a reflection amplifier with spoofed sources,
    /// so [`respond`] drops (and counts) any reply longer than this. The default, the request's own length,
    /// suits echo-like protocols; a handler whose protocol answers short queries with longer replies (and
    /// has its own defence, such as a cookie exchange) raises it deliberately.
    #[inline]
    fn max_reply_len(&self, request_len: usize) -> usize {
        request_len
    }

    /// Source ports this protocol's legitimate clients send from, which the source filter's
    /// `limits.deny_source_ports` (reflection-prone services' ports) then leaves alone. An NTP server says 123
    /// (ntpd queries from port 123), a DNS server 53 (resolvers may query from it): denying those would drop
    /// real clients. The replies such clients get are still bounded by [`Handler::max_reply_len`]. Default:
    /// none.
    fn client_source_ports(&self) -> &'static [u16] {
        &[]
    }
}

impl<H: Handler + ?Sized> Handler for Box<H> {
    #[inline]
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize) -> Verdict {
        (**self).handle(request, payload, len)
    }

    #[inline]
    fn max_reply_len(&self, request_len: usize) -> usize {
        (**self).max_reply_len(request_len)
    }

    fn client_source_ports(&self) -> &'static [u16] {
        (**self).client_source_ports()
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
        packet::ReplyHeaders { ttl: self.reply_ttl, dscp: self.reply_dscp, mtu: self.mtu }
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
    /// The handler asked for a reply that does not fit the frame: dropped, never sent truncated.
    ReplyTooLarge,
    /// The reply would be longer than the handler's declared bound ([`Handler::max_reply_len`]): dropped, so
    /// the server cannot amplify a spoofed request.
    Amplification,
    /// The reply's IP packet would be longer than the interface's MTU ([`RespondOptions::mtu`]): dropped,
    /// never sent (with DF set it could not cross the link, and the server does not fragment).
    OverMtu,
}

/// Runs the handler on one request payload and applies the checks every datapath shares: a reply longer
/// than the handler's declared bound is refused ([`Outcome::Amplification`]), one longer than the buffer is
/// refused ([`Outcome::ReplyTooLarge`]). Returns the reply's payload length, or the outcome to count.
///
/// Datapaths that receive bare UDP payloads (kernel sockets) call this directly; [`respond`] calls it for
/// whole frames.
#[inline]
pub fn answer<H: Handler + ?Sized>(
    handler: &mut H,
    request: &Request,
    payload: &mut [u8],
    len: usize,
) -> Result<usize, Outcome> {
    let room = payload.len();
    match handler.handle(request, payload, len) {
        Verdict::Drop => Err(Outcome::HandlerDrop),
        Verdict::Reply { len: reply } if reply > handler.max_reply_len(len) => Err(Outcome::Amplification),
        Verdict::Reply { len: reply } if reply > room => Err(Outcome::ReplyTooLarge),
        Verdict::Reply { len: reply } => Ok(reply),
    }
}

/// Runs one received frame through parse → checksum check → handler → reply (headers from `options`, no
/// longer than its MTU: [`Outcome::OverMtu`] otherwise).
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
    let mut d = match Datagram::parse(frame, len) {
        Ok(Some(d)) => d,
        Ok(None) => return Outcome::NotOurs,
        Err(e) => return Outcome::Malformed(e),
    };
    if options.verify_udp_checksum && d.udp_checksum() == UdpChecksum::Wrong {
        return Outcome::BadChecksum;
    }
    let request = Request { src: d.src(), dst: d.dst(), now };
    let request_len = d.payload_len();
    let reply_len = match answer(handler, &request, d.payload_room_mut(), request_len) {
        Ok(len) => len,
        Err(outcome) => return outcome,
    };
    match d.write_reply(reply_len, options.reply_headers()) {
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
        fn handle(&mut self, _request: &Request, payload: &mut [u8], _len: usize) -> Verdict {
            payload[..self.reply].fill(b'r');
            Verdict::Reply { len: self.reply }
        }
        fn max_reply_len(&self, request_len: usize) -> usize {
            self.bound.unwrap_or(request_len)
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
