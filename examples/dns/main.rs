//! An authoritative DNS server on shunt's [`Handler`] API: zones from RFC 1035 master files, answered over UDP
//! by shunt's workers (AF_XDP or kernel sockets), with response rate limiting against reflection.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/dns --interface IF --port 53 \
//!     --zone example.test.zone --zone 10.18.198.in-addr.arpa.=reverse.zone --rrl-rate 20 --rrl-slip 2
//! kdig @198.18.0.1 www.example.test A       # from another host
//! ```
//!
//! It takes every flag of `shunt serve` (`--config`, `--interface`, `--port`, `--queues`, `--cores`, `--mode`,
//! `--report`, `--metrics`, ...; `--handler` excepted) plus its own:
//!
//! - `--zone FILE` or `--zone ORIGIN=FILE` (repeatable, at least one): a master file, its origin the file's
//!   `$ORIGIN` or ORIGIN. Parsed at start-up (record data by hickory-proto); any error stops the program with
//!   exit 2.
//! - `--rrl-rate N` (responses per second per /24 or /56, default 20; 0 turns RRL off) and `--rrl-slip N`
//!   (every Nth rate-limited response is sent truncated, the others dropped; default 2; 0: all dropped). See
//!   [`rrl`] for why and how.
//! - `--udp-size N` (512..=4096, default 1232, the DNS flag day's value): the EDNS UDP payload size the server
//!   announces and the largest reply it sends.
//!
//! What it answers, and where it deliberately differs from Knot DNS, is in [`answer`]; the zone structure in
//! [`zone`]; the wire format and name compression in [`wire`]. A reply is written over the query in the
//! frame, with no allocation, system call or panic on any input. Unit tests: `cargo test --release --example
//! dns`; lab tests (kdig over IPv4 and IPv6, a differential test against Knot DNS, dnsperf): `tests/dns.rs`.
// The test build registers a counting global allocator (which needs `unsafe impl GlobalAlloc`, in
// tests/common/alloc.rs) to prove the hot path allocates nothing; everything else forbids unsafe code.
#![cfg_attr(not(test), forbid(unsafe_code))]
#![cfg_attr(test, deny(unsafe_code))]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod answer;
mod rrl;
mod wire;
mod zone;

use std::{process::ExitCode, sync::Arc};

use clap::{CommandFactory, Parser};
use shunt::{
    control::{cli, WorkerInfo},
    Budget, Handler, Outbox, Request, Verdict,
};

use answer::Server;
use rrl::Rrl;
use zone::Zones;

/// One worker's handler: the DNS logic is all in [`Server::answer`]; this adapts it to the Handler API.
struct Dns {
    server: Server<Arc<Zones>>,
    worker: WorkerInfo,
}

impl Handler for Dns {
    #[inline]
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        match self.server.answer(payload, len, request.src.ip(), request.now.monotonic_ns) {
            Some(len) => Verdict::Reply { len },
            None => Verdict::Drop,
        }
    }

    /// One reply of up to `--udp-size` bytes, whatever the query's size: DNS amplifies by nature, and
    /// response rate limiting ([`rrl`]) is the defence.
    fn budget(&self, _request_len: usize) -> Budget {
        Budget { packets: 1, bytes: self.server.max_reply_len() }
    }

    /// Resolvers may query from port 53, which the default reflection filter denies.
    fn client_source_ports(&self) -> &[u16] {
        &[53]
    }
}

impl Drop for Dns {
    /// Runs on the worker's thread once it has stopped serving (off the hot path).
    fn drop(&mut self) {
        let c = self.server.counters;
        tracing::info!(
            worker = self.worker.index,
            queue = self.worker.queue,
            answered = c.answered,
            truncated = c.truncated,
            errors = c.errors,
            rate_limited = c.rate_limited,
            slipped = c.slipped,
            ignored = c.ignored,
            "dns worker stopped"
        );
    }
}

/// `shunt serve`'s flags plus the DNS server's.
#[derive(Debug, Parser)]
#[command(
    name = "dns",
    about = "An authoritative DNS server on shunt: answers queries for the --zone(s) on the --port(s)"
)]
struct Args {
    #[command(flatten)]
    serve: cli::ServeArgs,
    /// A zone: FILE (a master file with $ORIGIN) or ORIGIN=FILE. Repeatable.
    #[arg(long = "zone", value_name = "[ORIGIN=]FILE", required = true)]
    zones: Vec<String>,
    /// Response rate limit: responses per second to one /24 (IPv4) or /56 (IPv6) per worker; 0 is off.
    #[arg(long, default_value_t = 20)]
    rrl_rate: u32,
    /// Every Nth rate-limited response is sent truncated (TC=1, no records), the others dropped; 0 drops all.
    #[arg(long, default_value_t = 2)]
    rrl_slip: u32,
    /// The EDNS UDP payload size announced, and the longest reply sent.
    #[arg(long, default_value_t = 1232, value_parser = clap::value_parser!(u16).range(512..=4096))]
    udp_size: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let zones = match Zones::load(&args.zones) {
        Ok(z) => Arc::new(z),
        // clap's own error: the usage line, exit code 2 (the same as a bad `shunt serve` flag).
        Err(e) => Args::command().error(clap::error::ErrorKind::ValueValidation, e).exit(),
    };
    let (rate, slip, udp_size) = (args.rrl_rate, args.rrl_slip, args.udp_size);
    cli::run(args.serve, "dns", move |worker| Dns {
        server: Server::new(Arc::clone(&zones), udp_size, Rrl::new(rate, slip)),
        worker,
    })
}

/// The counting allocator the no-allocation test registers (its `unsafe impl GlobalAlloc` is why the test
/// build denies rather than forbids unsafe code).
#[cfg(test)]
#[allow(unsafe_code)]
#[path = "../../tests/common/alloc.rs"]
mod alloc;

#[cfg(test)]
mod tests;
