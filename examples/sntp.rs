//! An SNTP server (RFC 4330, on the packet format of RFC 5905) built on shunt's public API: how a user writes
//! their own [`Handler`] and runs it with the whole server (XDP steering, pinned workers, reports, metrics, the
//! `shunt serve` flags and exit codes) in one call.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/sntp --config config/lab.toml --interface IF --port 123 \
//!     --stratum 1 --reference GPS --report sntp.json
//! sntp 198.18.0.1        # from another host (Debian's `sntp`, ntpsec's ntpdig): "... +0.000012 +/- ... s1 no-leap"
//! ```
//!
//! It takes every flag of `shunt serve` (`--config`, `--interface`, `--port`, `--queues`, `--cores`, `--report`,
//! `--metrics`, ...; `--handler` excepted: the handler is this one) plus its own:
//!
//! - `--stratum N` (1..=15, default 1) and `--reference ID`: for stratum 1 a reference identifier of up to 4
//!   ASCII characters (`GPS`, `PPS`, `DCF`, ...; default `LOCL`, the host's own clock), for stratum 2 and up
//!   the IPv4 address of the server this host synchronises to (required);
//! - `--precision LOG2` (seconds, default -20: about 1 µs; the transmit time is read once per RX batch);
//! - `--leap none|add-second|delete-second|unsynchronised` (default none): `unsynchronised` is the alarm
//!   condition, which tells clients not to use this server;
//! - `--root-delay-us`, `--root-dispersion-us` (default 0 and 100).
//!
//! What it answers. A client request (mode 3) of NTP version 3 or 4, at least 48 bytes long, gets a server
//! reply (mode 4) of exactly 48 bytes in the same frame: leap indicator, stratum, precision, root delay and
//! dispersion and reference identifier from the flags, version and poll copied from the request, the
//! originate timestamp set to the request's transmit timestamp, the receive timestamp to when the request
//! arrived ([`Request::rx_timestamp`], CLOCK_REALTIME: the XDP hook's stamp on AF_XDP, the kernel's on
//! sockets; the pick-up time [`Request::now`] when the packet carried no stamp, e.g. with `--no-latency`), the
//! transmit timestamp to the time the worker picked the request up ([`Request::now`], read once per batch,
//! just before the reply is written), and the reference timestamp to the start of the receive time's second
//! (the host's clock is taken to be disciplined continuously, by chrony, ntpd or PTP, which this server does
//! not see). Everything else is dropped, unanswered: runts, other modes
//! (including the mode 6 and 7 control queries that reflection attacks use), versions other than 3 and 4.
//! Extension fields and MACs are not echoed (the reply is unauthenticated), so a reply is never longer than
//! its request and the server amplifies nothing.
//!
//! The clock is the host's system clock: run a time daemon on the host, and give `--stratum` and
//! `--reference` as that daemon reports them (stratum one more than its source's).
//!
//! `handle` runs on the hot path, so it allocates nothing, makes no system call and cannot panic on any input
//! (only fixed-size arrays are indexed, with constant in-bounds offsets, which the compiler checks). Its unit
//! tests run with `cargo test --release --example sntp`; `tests/sntp.rs` queries it in the lab with Debian's
//! `sntp`.
#![forbid(unsafe_code)]
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{net::Ipv4Addr, process::ExitCode};

use clap::{CommandFactory, Parser};
use shunt::{
    control::{cli, WorkerInfo},
    Handler, Outbox, Request, Verdict,
};

/// Length of an NTP header without extension fields or MAC (RFC 5905 §7.3), and of every reply.
const PACKET_LEN: usize = 48;
/// Seconds from the NTP epoch of era 0 (1900-01-01 00:00 UTC) to the Unix epoch (1970-01-01 00:00 UTC).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Association modes (RFC 5905 §7.3).
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;
/// The versions answered: NTPv3 (RFC 1305) and NTPv4 (RFC 5905) share this header.
const VERSIONS: std::ops::RangeInclusive<u8> = 3..=4;

/// Byte offsets of the header's fields.
mod at {
    pub const LI_VN_MODE: usize = 0;
    pub const STRATUM: usize = 1;
    pub const POLL: usize = 2;
    pub const PRECISION: usize = 3;
    pub const ROOT_DELAY: usize = 4;
    pub const ROOT_DISPERSION: usize = 8;
    pub const REFERENCE_ID: usize = 12;
    pub const REFERENCE_TS: usize = 16;
    pub const ORIGINATE_TS: usize = 24;
    pub const RECEIVE_TS: usize = 32;
    pub const TRANSMIT_TS: usize = 40;
}

/// The leap indicator: a second to be inserted or deleted at the end of the month, or the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
enum Leap {
    /// No leap second pending.
    #[default]
    None,
    /// The last minute of the day has 61 seconds.
    AddSecond,
    /// The last minute of the day has 59 seconds.
    DeleteSecond,
    /// The alarm: this server's clock is not synchronised, clients must not use it.
    #[value(alias = "alarm")]
    Unsynchronised,
}

impl Leap {
    fn bits(self) -> u8 {
        match self {
            Leap::None => 0,
            Leap::AddSecond => 1,
            Leap::DeleteSecond => 2,
            Leap::Unsynchronised => 3,
        }
    }
}

/// What the server says about its own clock in every reply (the same for every worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerClock {
    leap: Leap,
    stratum: u8,
    /// log2 seconds.
    precision: i8,
    /// NTP short format (16.16 seconds).
    root_delay: u32,
    /// NTP short format (16.16 seconds).
    root_dispersion: u32,
    reference_id: [u8; 4],
}

/// The SNTP handler: one per worker, so its counters need no locks or atomics.
#[derive(Debug)]
struct Sntp {
    clock: ServerClock,
    worker: WorkerInfo,
    answered: u64,
    refused: u64,
}

impl Sntp {
    fn new(clock: ServerClock, worker: WorkerInfo) -> Sntp {
        Sntp { clock, worker, answered: 0, refused: 0 }
    }
}

impl Handler for Sntp {
    #[inline]
    fn handle(&mut self, request: &Request, payload: &mut [u8], len: usize, _out: &mut Outbox<'_>) -> Verdict {
        if len < PACKET_LEN || payload.len() < len {
            self.refused += 1;
            return Verdict::Drop;
        }
        let Some(packet) = payload.first_chunk_mut::<PACKET_LEN>() else {
            self.refused += 1;
            return Verdict::Drop;
        };
        // RFC 5905: receive = when the request arrived, transmit = when the reply leaves. The batch's clock
        // reading is the latest this handler has (the reply is queued right after); the stamp precedes it, and
        // the min() keeps receive <= transmit should the realtime clock have stepped back in between.
        let transmit = request.now.unix_ns;
        let receive = request.rx_timestamp.map_or(transmit, |t| t.unix_ns.min(transmit));
        if !answer(&self.clock, receive, transmit, packet) {
            self.refused += 1;
            return Verdict::Drop;
        }
        self.answered += 1;
        Verdict::Reply { len: PACKET_LEN }
    }

    // The default bound (the request's length) holds: replies are 48 bytes, requests at least 48.

    /// ntpd (and chrony in some set-ups) sends its client requests from port 123, which the default
    /// reflection filter denies: an NTP server must leave it alone. The reply is no longer than the request.
    fn client_source_ports(&self) -> &[u16] {
        &[123]
    }
}

impl Drop for Sntp {
    /// Runs on the worker's thread once it has stopped serving (off the hot path).
    fn drop(&mut self) {
        tracing::info!(
            worker = self.worker.index,
            queue = self.worker.queue,
            answered = self.answered,
            refused = self.refused,
            "sntp worker stopped"
        );
    }
}

/// Turns the client request in `packet`, received at `receive_ns`, into the server reply sent at
/// `transmit_ns` (Unix ns), in place. Returns false, with `packet` untouched, when it is not a request to
/// answer.
fn answer(clock: &ServerClock, receive_ns: u64, transmit_ns: u64, packet: &mut [u8; PACKET_LEN]) -> bool {
    let first = packet[at::LI_VN_MODE];
    let version = (first >> 3) & 0b111;
    let mode = first & 0b111;
    if mode != MODE_CLIENT || !VERSIONS.contains(&version) {
        return false;
    }
    let poll = packet[at::POLL];
    let client_transmit = read_u64(packet, at::TRANSMIT_TS);
    let now = ntp_timestamp(transmit_ns);
    let received = ntp_timestamp(receive_ns);
    let reference = received & !0xFFFF_FFFF;

    packet[at::LI_VN_MODE] = clock.leap.bits() << 6 | version << 3 | MODE_SERVER;
    packet[at::STRATUM] = clock.stratum;
    packet[at::POLL] = poll;
    packet[at::PRECISION] = clock.precision.to_be_bytes()[0];
    write(packet, at::ROOT_DELAY, clock.root_delay.to_be_bytes());
    write(packet, at::ROOT_DISPERSION, clock.root_dispersion.to_be_bytes());
    write(packet, at::REFERENCE_ID, clock.reference_id);
    write(packet, at::REFERENCE_TS, reference.to_be_bytes());
    write(packet, at::ORIGINATE_TS, client_transmit.to_be_bytes());
    write(packet, at::RECEIVE_TS, received.to_be_bytes());
    write(packet, at::TRANSMIT_TS, now.to_be_bytes());
    true
}

/// The big-endian u64 at `at` (0 where the header has no 8 bytes there: never, for the offsets above).
#[inline]
fn read_u64(packet: &[u8; PACKET_LEN], at: usize) -> u64 {
    packet.get(at..).and_then(|p| p.first_chunk::<8>()).map_or(0, |b| u64::from_be_bytes(*b))
}

/// Writes `bytes` at `at` (nothing where they would not fit: never, for the offsets above).
#[inline]
fn write<const N: usize>(packet: &mut [u8; PACKET_LEN], at: usize, bytes: [u8; N]) {
    if let Some(field) = packet.get_mut(at..).and_then(|p| p.first_chunk_mut::<N>()) {
        *field = bytes;
    }
}

/// Unix time in nanoseconds → NTP timestamp (64 bits: seconds since 1900 in the high half, modulo 2^32 as
/// RFC 5905 eras wrap in 2036, and the binary fraction of a second in the low half). The fraction is rounded
/// up, so converting back with a rounded-down fraction gives the same nanosecond.
fn ntp_timestamp(unix_ns: u64) -> u64 {
    let secs = (unix_ns / NANOS_PER_SEC + NTP_UNIX_OFFSET_SECS) & 0xFFFF_FFFF;
    let nanos = unix_ns % NANOS_PER_SEC;
    // nanos < 2^30, so nanos << 32 < 2^62; the result is below 2^32 (at most 4,294,967,292).
    let fraction = (nanos << 32).div_ceil(NANOS_PER_SEC);
    secs << 32 | fraction
}

/// Microseconds → NTP short format (16.16 seconds), rounded up, saturating.
fn ntp_short(us: u64) -> u32 {
    let v = (u128::from(us) << 16).div_ceil(1_000_000);
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The reference identifier for `stratum`: for stratum 1, 1 to 4 ASCII characters padded with NULs (a kind of
/// reference clock); above, the IPv4 address of the upstream server.
fn reference_id(stratum: u8, reference: Option<&str>) -> Result<[u8; 4], String> {
    if stratum == 1 {
        let code = reference.unwrap_or("LOCL");
        if code.is_empty() || code.len() > 4 || !code.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "--reference {code:?}: at stratum 1 the reference is 1 to 4 ASCII characters naming the clock \
                 (GPS, PPS, DCF, LOCL, ...)"
            ));
        }
        let mut id = [0u8; 4];
        for (slot, byte) in id.iter_mut().zip(code.bytes()) {
            *slot = byte;
        }
        return Ok(id);
    }
    match reference.map(str::parse::<Ipv4Addr>) {
        Some(Ok(addr)) => Ok(addr.octets()),
        Some(Err(_)) | None => Err(format!(
            "--reference: at stratum {stratum} the reference is the IPv4 address of the server this host \
             synchronises to (got {})",
            reference.map_or("none".to_string(), |r| format!("{r:?}"))
        )),
    }
}

/// `shunt serve`'s flags plus the SNTP server's.
#[derive(Debug, Parser)]
#[command(name = "sntp", about = "An SNTP (RFC 4330) server on shunt: answers NTP client requests on the --port(s)")]
struct Args {
    #[command(flatten)]
    serve: cli::ServeArgs,
    /// Stratum of this server: 1 for a reference clock, one more than the upstream server's otherwise.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=15))]
    stratum: u8,
    /// Reference identifier: up to 4 ASCII characters at stratum 1 (default LOCL), the upstream server's IPv4
    /// address above (required).
    #[arg(long)]
    reference: Option<String>,
    /// Precision of the clock, log2 seconds (-20: about 1 µs).
    #[arg(long, default_value_t = -20, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i8).range(-32..=0))]
    precision: i8,
    /// Leap indicator (`unsynchronised`, alias `alarm`: clients must not use this server).
    #[arg(long, value_enum, default_value_t = Leap::None)]
    leap: Leap,
    /// Root delay: the round trip to the primary reference source, in microseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    root_delay_us: u64,
    /// Root dispersion: the error bound relative to the primary reference source, in microseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    root_dispersion_us: u64,
}

impl Args {
    fn clock(&self) -> Result<ServerClock, String> {
        Ok(ServerClock {
            leap: self.leap,
            stratum: self.stratum,
            precision: self.precision,
            root_delay: ntp_short(self.root_delay_us),
            root_dispersion: ntp_short(self.root_dispersion_us),
            reference_id: reference_id(self.stratum, self.reference.as_deref())?,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let clock = match args.clock() {
        Ok(c) => c,
        // clap's own error: the usage line, exit code 2 (the same as a bad `shunt serve` flag).
        Err(e) => Args::command().error(clap::error::ErrorKind::ValueValidation, e).exit(),
    };
    cli::run(args.serve, "sntp", move |worker| Sntp::new(clock, worker))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use shunt::handler::{
        respond, respond_with, Arrival, NoTransmit, Outcome, RespondOptions, RxClock, RxTimestamp, Time,
    };

    /// The handler on one request, with an outbox that takes no sends (SNTP only replies in place).
    fn handle(h: &mut Sntp, request: &Request, payload: &mut [u8], len: usize) -> Verdict {
        h.handle(request, payload, len, &mut Outbox::new(&mut NoTransmit, None))
    }
    use shunt::packet::{write_request, FlowSpec};

    /// NTP timestamp → Unix nanoseconds (era 0), rounding the fraction down.
    fn unix_ns(ntp: u64) -> u64 {
        let secs = (ntp >> 32) - NTP_UNIX_OFFSET_SECS;
        let nanos = ((ntp & 0xFFFF_FFFF) * NANOS_PER_SEC) >> 32;
        secs * NANOS_PER_SEC + nanos
    }

    fn gps() -> ServerClock {
        ServerClock {
            leap: Leap::None,
            stratum: 1,
            precision: -20,
            root_delay: 0,
            root_dispersion: ntp_short(100),
            reference_id: *b"GPS\0",
        }
    }

    fn handler(clock: ServerClock) -> Sntp {
        Sntp::new(clock, WorkerInfo { index: 0, queue: 0, core: 1 })
    }

    fn at(unix_ns: u64) -> Request {
        Request::new(
            "198.18.0.2:40000".parse().unwrap(),
            "198.18.0.1:123".parse().unwrap(),
            Time { unix_ns, monotonic_ns: 5 },
        )
    }

    /// A client request as ntpdig, chrony and ntpd send it: LI 0 (or 3), version, mode 3, poll, transmit.
    fn client_request(version: u8, mode: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len.max(PACKET_LEN)];
        p[0] = 3 << 6 | version << 3 | mode;
        p[at::POLL] = 6;
        p[at::PRECISION] = 0xEC;
        p[40..48].copy_from_slice(&0xE93C_7F00_1234_5678u64.to_be_bytes());
        for (i, b) in p.iter_mut().enumerate().skip(PACKET_LEN) {
            *b = i as u8; // extension fields / MAC
        }
        p.truncate(len);
        p
    }

    fn be32(p: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(p[at..at + 4].try_into().unwrap())
    }

    fn be64(p: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(p[at..at + 8].try_into().unwrap())
    }

    // 2024-01-01 00:00:00.25 UTC.
    const NOW_NS: u64 = 1_704_067_200 * NANOS_PER_SEC + 250_000_000;

    #[test]
    fn unix_time_converts_to_ntp_timestamps() {
        assert_eq!(ntp_timestamp(0), 0x83AA_7E80_0000_0000, "the Unix epoch is 2,208,988,800 s after 1900");
        assert_eq!(ntp_timestamp(1_704_067_200 * NANOS_PER_SEC), 0xE93C_7F00_0000_0000, "2024-01-01");
        assert_eq!(ntp_timestamp(NOW_NS), 0xE93C_7F00_4000_0000, "a quarter second is 2^30");
        assert_eq!(ntp_timestamp(NANOS_PER_SEC / 2), 0x83AA_7E80_8000_0000);
        assert_eq!(ntp_timestamp(1), 0x83AA_7E80_0000_0005, "1 ns is 4.29 units, rounded up");
        assert_eq!(ntp_timestamp(NANOS_PER_SEC - 1) & 0xFFFF_FFFF, 0xFFFF_FFFC, "no carry into the seconds");
        // Era 1 begins 2036-02-07 06:28:16 UTC: the seconds wrap to 0.
        assert_eq!(ntp_timestamp(2_085_978_496 * NANOS_PER_SEC), 0);
        assert_eq!(ntp_timestamp(2_085_978_495 * NANOS_PER_SEC) >> 32, 0xFFFF_FFFF);
        for ns in [0, 1, 2, 999_999_999, NOW_NS, NOW_NS + 123_456_789, 2_085_978_495_999_999_999] {
            assert_eq!(unix_ns(ntp_timestamp(ns)), ns, "round trip of {ns} ns");
        }
    }

    #[test]
    fn microseconds_convert_to_ntp_short_format() {
        assert_eq!(ntp_short(0), 0);
        assert_eq!(ntp_short(1_000_000), 0x0001_0000);
        assert_eq!(ntp_short(500_000), 0x0000_8000);
        assert_eq!(ntp_short(100), 7, "100 µs = 6.55 units, rounded up");
        assert_eq!(ntp_short(1_000_000_000), 1000 << 16);
        assert_eq!(ntp_short(u64::MAX), u32::MAX);
    }

    #[test]
    fn a_v4_request_gets_a_48_byte_server_reply() {
        let mut h = handler(gps());
        let mut p = client_request(4, MODE_CLIENT, PACKET_LEN);
        assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, PACKET_LEN), Verdict::Reply { len: PACKET_LEN });
        assert_eq!(p[0] >> 6, 0, "leap indicator: none");
        assert_eq!(p[0] >> 3 & 7, 4, "version echoed");
        assert_eq!(p[0] & 7, MODE_SERVER);
        assert_eq!(p[at::STRATUM], 1);
        assert_eq!(p[at::POLL], 6, "poll copied");
        assert_eq!(p[at::PRECISION] as i8, -20);
        assert_eq!(be32(&p, at::ROOT_DELAY), 0);
        assert_eq!(be32(&p, at::ROOT_DISPERSION), 7);
        assert_eq!(&p[at::REFERENCE_ID..at::REFERENCE_ID + 4], b"GPS\0");
        assert_eq!(be64(&p, at::REFERENCE_TS), 0xE93C_7F00_0000_0000, "the start of the current second");
        assert_eq!(be64(&p, at::ORIGINATE_TS), 0xE93C_7F00_1234_5678, "the client's transmit timestamp");
        assert_eq!(be64(&p, at::RECEIVE_TS), 0xE93C_7F00_4000_0000);
        assert_eq!(be64(&p, at::TRANSMIT_TS), 0xE93C_7F00_4000_0000);
        assert_eq!((h.answered, h.refused), (1, 0));
    }

    #[test]
    fn the_receive_timestamp_is_the_arrival_and_transmit_the_pick_up() {
        // Stamped 1.5 ms before the batch was picked up, a quarter second into 2024 (realtime).
        let arrived = NOW_NS - 1_500_000;
        let stamp =
            RxTimestamp::from_realtime(arrived, Time { unix_ns: NOW_NS, monotonic_ns: 5_000_000 }, RxClock::XdpHook)
                .unwrap();
        assert_eq!(stamp.monotonic_ns, 3_500_000);
        let mut h = handler(gps());
        let mut p = client_request(4, MODE_CLIENT, PACKET_LEN);
        let request = at(NOW_NS).with_rx_timestamp(stamp);
        assert_eq!(handle(&mut h, &request, &mut p, PACKET_LEN), Verdict::Reply { len: PACKET_LEN });
        assert_eq!(be64(&p, at::RECEIVE_TS), ntp_timestamp(arrived), "receive = the packet's stamp");
        assert_eq!(be64(&p, at::TRANSMIT_TS), ntp_timestamp(NOW_NS), "transmit = the batch's clock reading");
        assert!(unix_ns(be64(&p, at::RECEIVE_TS)) < unix_ns(be64(&p, at::TRANSMIT_TS)));
        assert_eq!(be64(&p, at::REFERENCE_TS), 0xE93C_7F00_0000_0000, "the start of the receive time's second");

        // A stamp after the pick-up (the realtime clock stepped back in between) never makes receive > transmit.
        let late = RxTimestamp { unix_ns: NOW_NS + 7, monotonic_ns: 6, source: RxClock::KernelSocket };
        let mut p = client_request(4, MODE_CLIENT, PACKET_LEN);
        assert_eq!(
            handle(&mut h, &at(NOW_NS).with_rx_timestamp(late), &mut p, PACKET_LEN),
            Verdict::Reply { len: PACKET_LEN }
        );
        assert_eq!(be64(&p, at::RECEIVE_TS), be64(&p, at::TRANSMIT_TS));
    }

    #[test]
    fn a_v3_request_gets_a_v3_reply_and_flags_reach_the_reply() {
        let clock = ServerClock {
            leap: Leap::Unsynchronised,
            stratum: 3,
            precision: -6,
            root_delay: ntp_short(1_500),
            root_dispersion: ntp_short(20_000),
            reference_id: reference_id(3, Some("198.18.0.9")).unwrap(),
        };
        let mut h = handler(clock);
        let mut p = client_request(3, MODE_CLIENT, PACKET_LEN);
        assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, PACKET_LEN), Verdict::Reply { len: PACKET_LEN });
        assert_eq!(p[0], 3 << 6 | 3 << 3 | MODE_SERVER, "alarm, version 3, server");
        assert_eq!(p[at::STRATUM], 3);
        assert_eq!(p[at::PRECISION], 0xFA);
        assert_eq!(be32(&p, at::ROOT_DELAY), ntp_short(1_500));
        assert_eq!(be32(&p, at::ROOT_DISPERSION), ntp_short(20_000));
        assert_eq!(&p[at::REFERENCE_ID..at::REFERENCE_ID + 4], &[198, 18, 0, 9]);
    }

    #[test]
    fn extension_fields_and_macs_are_not_echoed() {
        for len in [52, 68, 72, 120, 1400] {
            let mut h = handler(gps());
            let mut p = client_request(4, MODE_CLIENT, len);
            let tail = p[PACKET_LEN..].to_vec();
            assert_eq!(
                handle(&mut h, &at(NOW_NS), &mut p, len),
                Verdict::Reply { len: PACKET_LEN },
                "request of {len}"
            );
            assert_eq!(&p[PACKET_LEN..], &tail[..], "bytes past the header untouched");
        }
    }

    #[test]
    fn other_modes_versions_and_runts_are_dropped_untouched() {
        let mut h = handler(gps());
        let mut refused = 0;
        for mode in [0, 1, 2, 4, 5, 6, 7] {
            for len in [PACKET_LEN, 12, 100] {
                let mut p = client_request(4, mode, len);
                let before = p.clone();
                assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, len), Verdict::Drop, "mode {mode}, {len} bytes");
                assert_eq!(p, before);
                refused += 1;
            }
        }
        for version in [0, 1, 2, 5, 6, 7] {
            let mut p = client_request(version, MODE_CLIENT, PACKET_LEN);
            let before = p.clone();
            assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, PACKET_LEN), Verdict::Drop, "version {version}");
            assert_eq!(p, before);
            refused += 1;
        }
        for len in 0..PACKET_LEN {
            let mut p = client_request(4, MODE_CLIENT, PACKET_LEN);
            let before = p.clone();
            assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, len), Verdict::Drop, "{len} bytes");
            assert_eq!(p, before);
            let mut short = p[..len].to_vec();
            assert_eq!(handle(&mut h, &at(NOW_NS), &mut short, len), Verdict::Drop, "{len}-byte buffer");
            refused += 2;
        }
        // A length the buffer does not hold (a broken caller) is refused too.
        let mut p = client_request(4, MODE_CLIENT, PACKET_LEN);
        assert_eq!(handle(&mut h, &at(NOW_NS), &mut p, PACKET_LEN + 1), Verdict::Drop);
        refused += 1;
        assert_eq!((h.answered, h.refused), (0, refused));
    }

    #[test]
    fn no_input_panics_and_no_reply_outgrows_its_request() {
        // Every first byte, every length up to 100, over a few buffer contents (xorshift, no dependency).
        let mut h = handler(gps());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for first in 0..=255u8 {
            for len in 0..=100usize {
                let mut p = vec![0u8; 128];
                for b in p.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                p[0] = first;
                match handle(&mut h, &at(x), &mut p, len) {
                    Verdict::Reply { len: reply } => {
                        assert_eq!(reply, PACKET_LEN);
                        assert!(reply <= len, "reply of {reply} to a request of {len}");
                        assert!(first & 7 == MODE_CLIENT && VERSIONS.contains(&(first >> 3 & 7)));
                        assert_eq!(p[0] & 7, MODE_SERVER);
                    }
                    Verdict::Drop => {
                        assert!(len < PACKET_LEN || first & 7 != MODE_CLIENT || !VERSIONS.contains(&(first >> 3 & 7)))
                    }
                    Verdict::Handled => panic!("SNTP answers in place or drops"),
                }
            }
        }
    }

    #[test]
    fn through_the_datapath_step_a_frame_gets_a_48_byte_reply_back_to_the_client() {
        for (src, dst) in [("198.18.0.2:40000", "198.18.0.1:123"), ("[2001:2::2]:40000", "[2001:2::1]:123")] {
            let spec = FlowSpec {
                src_mac: [2, 0, 0, 0, 0, 2],
                dst_mac: [2, 0, 0, 0, 0, 1],
                vlan_tci: None,
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
            };
            let mut frame = [0u8; 2048];
            let at_payload = spec.payload_offset();
            let request = client_request(4, MODE_CLIENT, 68);
            frame[at_payload..at_payload + 68].copy_from_slice(&request);
            let n = write_request(&mut frame, &spec, 68).unwrap();
            let mut h = handler(gps());
            let now = Time { unix_ns: NOW_NS, monotonic_ns: 1_000_000 };
            // As the AF_XDP worker hands it over: the XDP hook's monotonic stamp, 400 µs before the pick-up.
            let stamp = RxTimestamp::from_monotonic(600_000, now, RxClock::XdpHook);
            let arrival = Arrival { rx_timestamp: stamp, queue: Some(0) };
            let out = respond_with(&mut h, &mut frame, n, now, RespondOptions::default(), arrival, &mut NoTransmit);
            assert_eq!(out, Outcome::Reply(n - 20), "{src}: the 68-byte request is answered with 48 bytes");
            let reply = &frame[at_payload..at_payload + PACKET_LEN];
            assert_eq!(reply[0] & 7, MODE_SERVER);
            assert_eq!(be64(reply, at::ORIGINATE_TS), 0xE93C_7F00_1234_5678);
            assert_eq!(be64(reply, at::RECEIVE_TS), ntp_timestamp(NOW_NS - 400_000));
            assert_eq!(be64(reply, at::TRANSMIT_TS), ntp_timestamp(NOW_NS));

            // A mode 6 control query (the classic reflection vector) through the same step: not answered.
            let mut query = client_request(2, 6, 68);
            query[1] = 2; // READVAR
            frame[at_payload..at_payload + 68].copy_from_slice(&query);
            let n = write_request(&mut frame, &spec, 68).unwrap();
            assert_eq!(respond(&mut h, &mut frame, n, now, RespondOptions::default()), Outcome::HandlerDrop);
        }
    }

    #[test]
    fn reference_identifiers() {
        assert_eq!(reference_id(1, None), Ok(*b"LOCL"));
        assert_eq!(reference_id(1, Some("GPS")), Ok(*b"GPS\0"));
        assert_eq!(reference_id(1, Some("P")), Ok(*b"P\0\0\0"));
        assert!(reference_id(1, Some("")).is_err());
        assert!(reference_id(1, Some("GPSXX")).is_err());
        assert!(reference_id(1, Some("G S")).is_err());
        assert!(reference_id(1, Some("GPSé")).is_err());
        assert_eq!(reference_id(2, Some("198.18.0.9")), Ok([198, 18, 0, 9]));
        assert!(reference_id(2, None).is_err(), "stratum 2 needs the upstream's address");
        assert!(reference_id(2, Some("GPS")).is_err());
        assert!(reference_id(2, Some("2001:2::9")).is_err());
    }

    #[test]
    fn the_command_line_is_shunt_serves_plus_the_sntp_flags() {
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "sntp",
            "--config",
            "config/lab.toml",
            "--interface",
            "eth1",
            "--port",
            "123",
            "--stratum",
            "2",
            "--reference",
            "198.18.0.9",
            "--precision",
            "-18",
            "--leap",
            "alarm",
            "--root-delay-us",
            "1000",
        ])
        .unwrap();
        assert_eq!(args.serve.ports, [123]);
        assert_eq!(args.serve.interface.as_deref(), Some("eth1"));
        let clock = args.clock().unwrap();
        assert_eq!(clock.stratum, 2);
        assert_eq!(clock.precision, -18);
        assert_eq!(clock.leap, Leap::Unsynchronised);
        assert_eq!(clock.reference_id, [198, 18, 0, 9]);
        assert_eq!(clock.root_delay, ntp_short(1000));

        let defaults = Args::try_parse_from(["sntp", "--config", "c.toml"]).unwrap().clock().unwrap();
        assert_eq!((defaults.stratum, defaults.precision, defaults.leap), (1, -20, Leap::None));
        assert_eq!(defaults.reference_id, *b"LOCL");

        for bad in [["--stratum", "0"], ["--stratum", "16"], ["--precision", "1"], ["--leap", "maybe"]] {
            assert!(Args::try_parse_from(["sntp", "--config", "c.toml", bad[0], bad[1]]).is_err(), "{bad:?}");
        }
        let no_upstream = Args::try_parse_from(["sntp", "--config", "c.toml", "--stratum", "2"]).unwrap();
        assert!(no_upstream.clock().is_err());
    }
}
