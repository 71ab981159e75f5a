//! What the server answers: the [`Handler`] trait, the built-in handlers, and [`respond`], the deterministic
//! frame-in / frame-out step that the workers run for every packet.
//!
//! This is the protocol half of the server (in the spirit of quinn-proto): no I/O, no `unsafe`, no allocation,
//! so it can be tested and fuzzed without sockets. The datapath owns the rings and calls [`respond`] on each
//! received frame.

mod echo;
mod sockperf;

pub use echo::Echo;
pub use sockperf::{Sockperf, SOCKPERF_HEADER_LEN};

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::packet::{self, Datagram};

/// Who sent a request to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's address and port (the reply's destination).
    pub src: SocketAddr,
    /// The server's address and port the request was sent to.
    pub dst: SocketAddr,
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
/// write a reply longer than the request; the request itself is `payload[..len]`. Called on the hot path:
/// implementations must not allocate, block, log or make system calls.
pub trait Handler: Send {
    /// Handles one request.
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize) -> Verdict;
}

/// The built-in handlers, chosen by name in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HandlerKind {
    /// Reply with the request's payload unchanged.
    Echo,
    /// A drop-in for `sockperf server`: see [`Sockperf`].
    Sockperf,
}

impl HandlerKind {
    /// The name used in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HandlerKind::Echo => "echo",
            HandlerKind::Sockperf => "sockperf",
        }
    }
}

impl std::str::FromStr for HandlerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(HandlerKind::Echo),
            "sockperf" => Ok(HandlerKind::Sockperf),
            other => Err(format!("unknown handler {other:?} (expected \"echo\" or \"sockperf\")")),
        }
    }
}

/// What became of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The frame now holds a reply of this many bytes.
    Reply(usize),
    /// Claimed to be IP/UDP but did not hold together: dropped.
    Malformed(packet::Malformed),
    /// Not a UDP datagram we serve (the XDP program should not have sent it): dropped.
    NotOurs,
    /// The handler chose not to answer.
    HandlerDrop,
    /// The handler asked for a reply that does not fit the frame: dropped, never sent truncated.
    ReplyTooLarge,
}

/// Runs one received frame through parse → handler → reply.
///
/// `frame` is the whole writable buffer of the frame and `len` the received length (`len <= frame.len()`; a
/// larger `len` is clamped). On [`Outcome::Reply`] the frame holds the reply; on any other outcome its content
/// is unspecified and it must not be sent.
#[inline]
pub fn respond<H: Handler + ?Sized>(handler: &mut H, frame: &mut [u8], len: usize) -> Outcome {
    let received = &frame[..len.min(frame.len())];
    let d: Datagram = match packet::parse(received) {
        Ok(Some(d)) => d,
        Ok(None) => return Outcome::NotOurs,
        Err(e) => return Outcome::Malformed(e),
    };
    let request = Request { src: d.src, dst: d.dst };
    let room = packet::max_reply_payload(&d, frame.len());
    let end = d.payload_offset + room;
    let reply_len = match handler.handle(&request, &mut frame[d.payload_offset..end], d.payload_len) {
        Verdict::Drop => return Outcome::HandlerDrop,
        Verdict::Reply { len } => len,
    };
    match packet::write_reply(frame, &d, reply_len) {
        Ok(n) => Outcome::Reply(n),
        Err(packet::ReplyError::TooLarge { .. }) => Outcome::ReplyTooLarge,
        // Cannot happen for a datagram parsed from this frame; refusing is the safe answer if it ever did.
        Err(packet::ReplyError::Inconsistent) => Outcome::NotOurs,
    }
}
