//! The request payload: sockperf's 14-byte header followed by shunt-bench's body.
//!
//! ```text
//!  0      8      10     14       22            30        38 ... size
//!  | seq  | flags| len  | run id | intended ns | sent ns | zero padding
//! ```
//! All fields big-endian. `flags` carries sockperf's CLIENT (1) and PONG_REQUEST (2) bits, so `sockperf server`
//! and shunt's sockperf handler answer every message; `len` is the whole message length, as sockperf writes it.
//! A reply is accepted with CLIENT cleared (sockperf-protocol servers) or still set (plain echo, testpmd 5tswap).
//! The run id tells this run's replies from stragglers of an earlier one; the two timestamps make the reply
//! self-describing, so the receiver needs no per-sequence state beyond a bitmap.

/// Length of sockperf's header.
pub const SOCKPERF_HEADER_LEN: usize = 14;
/// Smallest payload shunt-bench sends (header + body).
pub const MIN_PAYLOAD: usize = SOCKPERF_HEADER_LEN + 24;
/// Largest payload (fits a 1500-byte MTU over IPv4).
pub const MAX_PAYLOAD: usize = 1472;
/// sockperf's CLIENT flag: set by clients, cleared by a sockperf-protocol server in its reply.
pub const FLAG_CLIENT: u16 = 1;
/// sockperf's PONG_REQUEST flag: the client wants a reply to this message.
pub const FLAG_PONG_REQUEST: u16 = 2;

/// What the sender puts in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Sequence number (0, 1, 2, ... within a run).
    pub seq: u64,
    /// Identifies the run.
    pub run_id: u64,
    /// When the schedule said to send it (ns on the sender's clock).
    pub intended_ns: u64,
    /// When it was handed to the kernel / the TX ring (ns on the sender's clock).
    pub sent_ns: u64,
}

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The request's fields, as echoed.
    pub request: Request,
    /// Whether the server cleared sockperf's CLIENT flag (sockperf protocol) or left it (plain reflector).
    pub client_cleared: bool,
}

/// Why a received payload is not a reply to this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Shorter than [`MIN_PAYLOAD`].
    Short,
    /// The PONG_REQUEST flag is missing (not one of our requests).
    Flags,
    /// The header's length field disagrees with the datagram.
    Length,
    /// Another run's reply.
    OtherRun,
}

/// Writes `req` into `buf[..size]` (`size` clamped to `MIN_PAYLOAD..=buf.len()`); returns the length written.
/// The padding after the body is left as it was, so a buffer reused for a run is zeroed once.
pub fn encode(buf: &mut [u8], size: usize, req: &Request) -> usize {
    let size = size.max(MIN_PAYLOAD).min(buf.len());
    buf[0..8].copy_from_slice(&req.seq.to_be_bytes());
    buf[8..10].copy_from_slice(&(FLAG_CLIENT | FLAG_PONG_REQUEST).to_be_bytes());
    buf[10..14].copy_from_slice(&(size as u32).to_be_bytes());
    buf[14..22].copy_from_slice(&req.run_id.to_be_bytes());
    buf[22..30].copy_from_slice(&req.intended_ns.to_be_bytes());
    buf[30..38].copy_from_slice(&req.sent_ns.to_be_bytes());
    size
}

/// Rewrites only the send timestamp of an encoded request (for a retry after a partial send).
pub fn restamp(buf: &mut [u8], sent_ns: u64) {
    buf[30..38].copy_from_slice(&sent_ns.to_be_bytes());
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Decodes a reply payload of run `run_id`.
pub fn decode(payload: &[u8], run_id: u64) -> Result<Reply, Foreign> {
    if payload.len() < MIN_PAYLOAD {
        return Err(Foreign::Short);
    }
    let flags = u16::from_be_bytes([payload[8], payload[9]]);
    if flags & FLAG_PONG_REQUEST == 0 {
        return Err(Foreign::Flags);
    }
    let len = u32::from_be_bytes([payload[10], payload[11], payload[12], payload[13]]) as usize;
    if len != payload.len() {
        return Err(Foreign::Length);
    }
    let request = Request {
        seq: be64(payload, 0),
        run_id: be64(payload, 14),
        intended_ns: be64(payload, 22),
        sent_ns: be64(payload, 30),
    };
    if request.run_id != run_id {
        return Err(Foreign::OtherRun);
    }
    Ok(Reply { request, client_cleared: flags & FLAG_CLIENT == 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: Request = Request { seq: 0x0102_0304_0506_0708, run_id: 77, intended_ns: 1_000, sent_ns: 1_250 };

    #[test]
    fn header_is_sockperf_compatible() {
        let mut buf = [0u8; 64];
        assert_eq!(encode(&mut buf, 64, &REQ), 64);
        assert_eq!(&buf[0..8], &[1, 2, 3, 4, 5, 6, 7, 8], "u64 sequence, big-endian");
        assert_eq!(&buf[8..10], &[0, 3], "CLIENT | PONG_REQUEST");
        assert_eq!(&buf[10..14], &[0, 0, 0, 64], "u32 message length");
    }

    #[test]
    fn round_trip_with_and_without_client_flag() {
        let mut buf = [0u8; 100];
        let n = encode(&mut buf, 100, &REQ);
        assert_eq!(decode(&buf[..n], 77), Ok(Reply { request: REQ, client_cleared: false }));
        buf[9] &= !1; // what sockperf server / shunt's sockperf handler do
        assert_eq!(decode(&buf[..n], 77), Ok(Reply { request: REQ, client_cleared: true }));
        restamp(&mut buf, 9);
        assert_eq!(decode(&buf[..n], 77).unwrap().request.sent_ns, 9);
    }

    #[test]
    fn size_is_clamped_to_the_body() {
        let mut buf = [0u8; 64];
        assert_eq!(encode(&mut buf, 14, &REQ), MIN_PAYLOAD);
        assert_eq!(encode(&mut buf, 1000, &REQ), 64);
    }

    #[test]
    fn rejects_foreign_payloads() {
        let mut buf = [0u8; 64];
        let n = encode(&mut buf, 64, &REQ);
        assert_eq!(decode(&buf[..n], 78), Err(Foreign::OtherRun));
        assert_eq!(decode(&buf[..n - 1], 77), Err(Foreign::Length));
        assert_eq!(decode(&buf[..20], 77), Err(Foreign::Short));
        buf[9] = 1;
        assert_eq!(decode(&buf[..n], 77), Err(Foreign::Flags));
    }
}
