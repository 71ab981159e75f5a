//! Keep-alives on a timer: a handler that sends a heartbeat datagram every `--interval-ms` to each `--to`
//! address, whether or not any request arrives, and answers a request with the number of heartbeats it has
//! sent so far. It shows both halves of the sans-I/O contract ([`Handler::poll_timeout`] /
//! [`Handler::handle_timeout`], quinn-proto's shape) and sending without a request ([`Outbox::send`]).
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/heartbeat --interface IF --port 9000 --from 198.18.0.1:9000 \
//!     --to 198.18.0.2:7000 --interval-ms 10
//! ```
//!
//! Each heartbeat is 24 bytes, three big-endian u64s: the sequence number (from 0), when it was due and
//! when it was sent (CLOCK_MONOTONIC ns: the deadline the handler asked for, and the time the worker's timer
//! turn read). `--from` is the source: a served
//! address and a served port (`--port`). With several workers each sends its own heartbeats (the sequence is
//! per worker); give `--queues 0` for one stream. It takes every flag of `shunt serve` (`--handler` excepted).
//!
//! `tests/timers.rs` runs it in every datapath (AF_XDP in each poll mode, every kernel-socket I/O model)
//! with no request traffic and checks the stream: one datagram per interval, in order.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::SocketAddr, process::ExitCode};

use clap::{CommandFactory, Parser};
use shunt::{
    control::cli,
    handler::{Envelope, Time},
    Handler, Outbox, Request, Verdict,
};

/// Bytes of a heartbeat: sequence number, due time, send time.
const HEARTBEAT_LEN: usize = 24;

/// Sends heartbeats to `to` every `interval_ns`; see the module documentation.
struct Heartbeat {
    from: SocketAddr,
    to: Vec<SocketAddr>,
    interval_ns: u64,
    /// The next heartbeat is due at this CLOCK_MONOTONIC time; 0: at once.
    next_ns: u64,
    sent: u64,
}

impl Handler for Heartbeat {
    /// Answers any request with the count of heartbeats sent so far (8 bytes, big-endian), if the request
    /// is at least that long (the reply never outgrows it).
    fn handle(&mut self, _request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        match payload.get_mut(..len).and_then(|p| p.first_chunk_mut::<8>()) {
            Some(head) => {
                *head = self.sent.to_be_bytes();
                Verdict::Reply { len: 8 }
            }
            None => Verdict::Drop,
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        Some(self.next_ns)
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox<'_>) {
        let fields = [self.sent, self.next_ns, now.monotonic_ns];
        for &to in &self.to {
            let _ = out.send(Envelope::new(self.from, to), |buf| {
                for (chunk, field) in buf.get_mut(..HEARTBEAT_LEN)?.chunks_exact_mut(8).zip(fields) {
                    chunk.copy_from_slice(&field.to_be_bytes());
                }
                Some(HEARTBEAT_LEN)
            });
        }
        self.sent += 1;
        // The next beat is one interval after this one was due, not after now: a late turn does not shift
        // the schedule; after a long stall (more than an interval late) it restarts from now.
        let after = self.next_ns.saturating_add(self.interval_ns);
        self.next_ns = if after > now.monotonic_ns { after } else { now.monotonic_ns.saturating_add(self.interval_ns) };
    }
}

#[derive(Parser)]
#[command(about = "Sends a heartbeat datagram every --interval-ms to each --to, from --from, with no requests")]
struct Args {
    #[command(flatten)]
    serve: cli::ServeArgs,
    /// Source address and port of the heartbeats: a served address and a served port.
    #[arg(long, value_name = "ADDR:PORT")]
    from: SocketAddr,
    /// Where heartbeats go (repeatable).
    #[arg(long, value_name = "ADDR:PORT", required = true)]
    to: Vec<SocketAddr>,
    /// Milliseconds between heartbeats (1..=60000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.to.iter().any(|t| t.is_ipv4() != args.from.is_ipv4()) {
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, "--to must be of the same IP version as --from")
            .exit();
    }
    let (from, to, interval_ns) = (args.from, args.to, args.interval_ms * 1_000_000);
    cli::run(args.serve, "heartbeat", move |_worker| Heartbeat {
        from,
        to: to.clone(),
        interval_ns,
        next_ns: 0,
        sent: 0,
    })
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use shunt::handler::testing::Harness;

    fn at(ms: u64) -> Time {
        Time { unix_ns: 0, monotonic_ns: ms * 1_000_000 }
    }

    #[test]
    fn beats_on_schedule_without_requests() {
        let to = "198.18.0.2:7000".parse().unwrap();
        let mut h = Heartbeat {
            from: "198.18.0.1:9000".parse().unwrap(),
            to: vec![to],
            interval_ns: 10_000_000,
            next_ns: 0,
            sent: 0,
        };
        let mut harness = Harness::new().serving(&[9000]);
        assert!(harness.timeout(&mut h, at(1)));
        assert!(!harness.timeout(&mut h, at(5)), "not due before the interval");
        assert!(harness.timeout(&mut h, at(12)), "due at 10 ms");
        assert_eq!(h.poll_timeout(), Some(20_000_000), "the schedule is kept, not shifted by a late turn");
        assert!(harness.timeout(&mut h, at(100)), "a stall");
        assert_eq!(h.poll_timeout(), Some(110_000_000), "after a stall the schedule restarts from now");
        let seqs: Vec<u64> =
            harness.sent.iter().map(|s| u64::from_be_bytes(s.payload[..8].try_into().unwrap())).collect();
        assert_eq!(seqs, [0, 1, 2]);
        let due: Vec<u64> =
            harness.sent.iter().map(|s| u64::from_be_bytes(s.payload[8..16].try_into().unwrap())).collect();
        assert_eq!(due, [0, 10_000_000, 20_000_000], "each beat says when it was due");
        assert!(harness.sent.iter().all(|s| s.envelope.to == to && s.payload.len() == HEARTBEAT_LEN));

        let request = Request::new(to, "198.18.0.1:9000".parse().unwrap(), at(101));
        let answered = harness.request(&mut h, &request, &[0; 8]);
        assert_eq!(answered.reply.unwrap(), 3u64.to_be_bytes());
        assert!(harness.request(&mut h, &request, &[0; 7]).reply.is_none(), "a short request is dropped");
    }

    #[test]
    fn a_source_the_server_does_not_serve_is_refused() {
        let mut h = Heartbeat {
            from: "198.18.0.1:9999".parse().unwrap(),
            to: vec!["198.18.0.2:7000".parse().unwrap()],
            interval_ns: 1,
            next_ns: 0,
            sent: 0,
        };
        let mut harness = Harness::new().serving(&[9000]);
        assert!(harness.timeout(&mut h, at(1)));
        assert!(harness.sent.is_empty());
        assert_eq!(harness.refused, [shunt::handler::SendError::Source]);
    }
}
