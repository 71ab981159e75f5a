//! Testing a handler without sockets: [`Harness`] feeds it requests and time, as a worker would, and
//! collects what it replies and sends.
//!
//! The harness applies the same rules as the datapaths: the handler's [`Budget`](super::Budget) per request, a per-turn
//! send limit, the MTU's worth of payload per datagram, and only served or owned source ports. It allocates
//! (it keeps what was sent), so it is for tests, not the hot path.

use std::net::SocketAddr;

use super::{answer, fire_timeout, Answer, Envelope, Handler, Outcome, Request, SendError, Time, Transmit};

/// One datagram a handler sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Where it went, from where, and its marking.
    pub envelope: Envelope,
    /// Its UDP payload.
    pub payload: Vec<u8>,
}

/// What one request came to: the in-place reply, or why there was none, and the datagrams sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The reply's payload, if the handler replied within its budget.
    pub reply: Option<Vec<u8>>,
    /// The reply's full answer (length and marking), or the outcome a worker would count.
    pub outcome: Result<Answer, Outcome>,
    /// The datagrams this request's handling sent (also appended to [`Harness::sent`]).
    pub sent: Vec<Sent>,
}

/// A worker without sockets: see the [module documentation](self).
#[derive(Debug)]
pub struct Harness {
    /// Every datagram sent so far, in order.
    pub sent: Vec<Sent>,
    /// Sends refused so far, with why.
    pub refused: Vec<SendError>,
    /// Room for a reply: the request's payload buffer is this long (default 1,472: a 1500-byte MTU's IPv4 UDP
    /// payload).
    pub payload_room: usize,
    /// The most payload bytes one send may carry (default 1,472).
    pub send_room: usize,
    /// Sends allowed per request or timeout (`sends.per_batch` in a worker; default 64).
    pub per_turn: u32,
    /// Ports sends may come from besides the request's own destination port and the handler's owned ports
    /// (default: none; a timeout's sends must come from these or owned ports).
    pub served_ports: Vec<u16>,
    buffer: Vec<u8>,
    owned: Vec<u16>,
    request_dst: Option<SocketAddr>,
    turn: u32,
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    /// A harness with the defaults above.
    pub fn new() -> Harness {
        Harness {
            sent: Vec::new(),
            refused: Vec::new(),
            payload_room: 1472,
            send_room: 1472,
            per_turn: 64,
            served_ports: Vec::new(),
            buffer: Vec::new(),
            owned: Vec::new(),
            request_dst: None,
            turn: 0,
        }
    }

    /// The same harness, serving `ports` (sources its handler may send from, as `ports` in the config).
    #[must_use]
    pub fn serving(self, ports: &[u16]) -> Harness {
        Harness { served_ports: ports.to_vec(), ..self }
    }

    /// Hands `request` with `payload` to `handler`, as a worker does, and returns what came of it.
    pub fn request<H: Handler + ?Sized>(&mut self, handler: &mut H, request: &Request, payload: &[u8]) -> Answered {
        let mut buf = vec![0u8; self.payload_room.max(payload.len())];
        if let Some(head) = buf.get_mut(..payload.len()) {
            head.copy_from_slice(payload);
        }
        self.owned = handler.owned_ports().to_vec();
        self.turn = 0;
        let before = self.sent.len();
        let outcome = answer(handler, request, &mut buf, payload.len(), self);
        self.request_dst = None;
        let reply = match outcome {
            Ok(a) => buf.get(..a.len).map(<[u8]>::to_vec),
            Err(_) => None,
        };
        Answered { reply, outcome, sent: self.sent.get(before..).unwrap_or_default().to_vec() }
    }

    /// Calls the handler's timeout if it is due at `now` ([`Handler::poll_timeout`]); returns whether it was.
    /// Its sends are appended to [`Harness::sent`].
    pub fn timeout<H: Handler + ?Sized>(&mut self, handler: &mut H, now: Time) -> bool {
        self.owned = handler.owned_ports().to_vec();
        self.turn = 0;
        self.request_dst = None;
        fire_timeout(handler, now, self)
    }

    fn source_allowed(&self, from: SocketAddr) -> bool {
        let port = from.port();
        self.request_dst.is_some_and(|d| d.port() == port)
            || self.owned.contains(&port)
            || self.served_ports.contains(&port)
    }
}

impl Transmit for Harness {
    fn on_request(&mut self, request: &Request) {
        self.request_dst = Some(request.dst);
    }

    fn refused(&mut self, error: SendError) {
        self.refused.push(error);
    }

    fn buffer(&mut self, envelope: &Envelope) -> Result<&mut [u8], SendError> {
        let refuse = |s: &mut Harness, e| {
            s.refused.push(e);
            Err(e)
        };
        if envelope.from.is_ipv4() != envelope.to.is_ipv4() || !self.source_allowed(envelope.from) {
            return refuse(self, SendError::Source);
        }
        if self.turn >= self.per_turn {
            return refuse(self, SendError::BatchLimit);
        }
        self.buffer.clear();
        self.buffer.resize(self.send_room, 0);
        Ok(&mut self.buffer)
    }

    fn commit(&mut self, envelope: &Envelope, len: usize) -> Result<(), SendError> {
        let Some(payload) = self.buffer.get(..len) else {
            self.refused.push(SendError::TooLarge);
            return Err(SendError::TooLarge);
        };
        self.sent.push(Sent { envelope: *envelope, payload: payload.to_vec() });
        self.turn += 1;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::handler::{Budget, Ecn, Outbox, Verdict};

    /// Sends `copies` copies of the request to `to`, and replies with the request too.
    struct Fan {
        to: SocketAddr,
        copies: u32,
        budget: Budget,
    }

    impl Handler for Fan {
        fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, out: &mut Outbox<'_>) -> Verdict {
            let body = payload[..len].to_vec();
            for _ in 0..self.copies {
                let e = Envelope::new(request.dst, self.to).with_marking(46, Ecn::Ect0);
                let _ = out.send(e, |buf| {
                    buf.get_mut(..body.len())?.copy_from_slice(&body);
                    Some(body.len())
                });
            }
            out.mark_reply(10, Ecn::Ect1);
            Verdict::Reply { len }
        }
        fn budget(&self, _request_len: usize) -> Budget {
            self.budget
        }
    }

    fn request() -> Request {
        Request::new("198.18.0.2:4000".parse().unwrap(), "198.18.0.1:9000".parse().unwrap(), Time::default())
    }

    #[test]
    fn sends_and_the_reply_share_the_budget() {
        let to = "198.18.1.9:53".parse().unwrap();
        let mut h = Fan { to, copies: 2, budget: Budget { packets: 3, bytes: 15 } };
        let mut harness = Harness::new();
        let a = harness.request(&mut h, &request(), b"hello");
        assert_eq!(a.sent.len(), 2);
        assert_eq!(a.sent[0].payload, b"hello");
        assert_eq!(a.sent[0].envelope.marking.unwrap().traffic_class(), (46 << 2) | 0b10);
        assert_eq!(a.reply.as_deref(), Some(&b"hello"[..]));
        assert_eq!(a.outcome.unwrap().marking.unwrap().traffic_class(), (10 << 2) | 0b01);

        // Two sends spend the bytes: the reply is over budget and refused, as a worker counts it.
        let mut h = Fan { to, copies: 2, budget: Budget { packets: 3, bytes: 10 } };
        let a = harness.request(&mut h, &request(), b"hello");
        assert_eq!((a.sent.len(), a.reply, a.outcome), (2, None, Err(Outcome::Amplification)));

        // The default budget (one datagram, the request's length) leaves no room for a send and a reply.
        let mut h = Fan { to, copies: 1, budget: Budget::echo(5) };
        let a = harness.request(&mut h, &request(), b"hello");
        assert_eq!((a.sent.len(), a.outcome), (1, Err(Outcome::Amplification)));
    }

    #[test]
    fn sources_must_be_served_and_turns_are_bounded() {
        struct From(SocketAddr);
        impl Handler for From {
            fn handle(&mut self, _: &Request, _: &mut [u8], _: usize, out: &mut Outbox<'_>) -> Verdict {
                let r = out.send(Envelope::new(self.0, "198.18.0.2:1".parse().unwrap()), |_| Some(0));
                if r.is_ok() {
                    Verdict::Drop
                } else {
                    Verdict::Reply { len: 0 }
                }
            }
            fn budget(&self, _: usize) -> Budget {
                Budget::per_packet(100, 100)
            }
        }
        let mut harness = Harness::new();
        let a = harness.request(&mut From("198.18.0.1:9000".parse().unwrap()), &request(), b"x");
        assert_eq!(a.sent.len(), 1, "the request's own port is served");
        let a = harness.request(&mut From("198.18.0.1:9001".parse().unwrap()), &request(), b"x");
        assert_eq!((a.sent.len(), harness.refused.last()), (0, Some(&SendError::Source)));
        let a = harness.request(&mut From("[2001:2::1]:9000".parse().unwrap()), &request(), b"x");
        assert_eq!(a.sent.len(), 0, "IP versions must match");

        harness.per_turn = 0;
        let a = harness.request(&mut From("198.18.0.1:9000".parse().unwrap()), &request(), b"x");
        assert_eq!((a.sent.len(), harness.refused.last()), (0, Some(&SendError::BatchLimit)));
    }
}
