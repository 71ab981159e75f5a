//! Abuse resistance in the lab, through the real XDP program: requests from sources no real client has
//! (broadcast, multicast, unspecified, loopback, the server's own addresses, source port 0, reflection-prone
//! source ports, a denied prefix, outside an allow-list) are dropped in XDP and counted as `filtered`; a
//! source over `limits.per_source_pps` is dropped and counted as `rate_limited` while another source is
//! served. Requests with forged sources are built by hand and sent with an AF_PACKET socket.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use common::{require_lab, Lab, RawPort, Side, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6};
use shunt::packet::{parse, FlowSpec};

const PORT: u16 = 9000;

fn request(lab: &Lab, src: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let dst: SocketAddr = if src.is_ipv4() { (SERVER_V4, PORT).into() } else { (SERVER_V6, PORT).into() };
    let spec = FlowSpec { src_mac: lab.client_mac(), dst_mac: lab.server_mac(), vlan_tci: None, src, dst };
    common::request_frame(&spec, payload)
}

/// Sends a sentinel from the client's real IPv6 address and waits for its reply: one queue answers in order,
/// so everything sent before it has been dealt with.
fn sentinel(lab: &Lab, port: &RawPort) {
    let payload = b"limits sentinel";
    port.send(&request(lab, (CLIENT_V6, 47_999).into(), payload)).expect("send the sentinel");
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((n, _)) = port.try_recv(&mut buf) {
            if let Ok(Some(d)) = parse(&buf[..n]) {
                if d.payload() == payload {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "no reply to the sentinel within 10 s");
        std::thread::yield_now();
    }
}

fn serve(lab: &Lab, set: &[(&str, &str)]) -> common::ServerProcess {
    let cfg = lab.lab_config_with(set);
    lab.spawn_server(&["serve", "--config", cfg.to_str().unwrap(), "--interface", &lab.server_if(), "--quiet"])
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn bogus_sources_are_filtered_in_xdp_and_counted() {
    require_lab();
    let lab = Lab::new(1);
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    // (source, port, filtered?)
    let cases: Vec<(IpAddr, u16, bool)> = vec![
        (CLIENT_V4.into(), 40_000, false),
        (CLIENT_V6.into(), 40_000, false),
        (ip("255.255.255.255"), 40_000, true),
        (ip("224.0.0.1"), 40_000, true),
        (ip("240.0.0.1"), 40_000, true),
        (ip("0.0.0.0"), 40_000, true),
        (ip("127.0.0.1"), 40_000, true),
        (SERVER_V4.into(), 40_000, true),
        (CLIENT_V4.into(), 0, true),
        (CLIENT_V4.into(), 53, true),
        (CLIENT_V4.into(), 123, true),
        (CLIENT_V4.into(), 11211, true),
        (ip("::"), 40_000, true),
        (ip("::1"), 40_000, true),
        (ip("ff02::1"), 40_000, true),
        (SERVER_V6.into(), 40_000, true),
        (ip("198.18.0.200"), 40_000, true), // in the denied 198.18.0.128/25
        (ip("198.18.0.3"), 40_000, false),
    ];
    let srv = serve(&lab, &[("deny", "[\"198.18.0.128/25\"]")]);
    let port = RawPort::open(&lab, Side::Client);
    for (i, (src, sport, _)) in cases.iter().enumerate() {
        port.send(&request(&lab, SocketAddr::new(*src, *sport), format!("case {i}").as_bytes())).unwrap();
    }
    sentinel(&lab, &port);
    let fin = srv.stop();
    fin.assert_clean_exit();
    let filtered = cases.iter().filter(|c| c.2).count() as u64;
    let served = cases.len() as u64 - filtered + 1; // and the sentinel
    assert_eq!(fin.report_u64("xdp.filtered"), filtered, "{}", fin.describe());
    assert_eq!(fin.report_u64("xdp.redirected"), served, "{}", fin.describe());
    assert_eq!(fin.report_u64("tx_packets"), served, "{}", fin.describe());
    assert_eq!(fin.report_u64("xdp.rate_limited"), 0);

    // With an allow-list, only its prefixes are served.
    let srv = serve(&lab, &[("allow", "[\"198.18.0.2/32\", \"2001:2::2/128\"]")]);
    let port = RawPort::open(&lab, Side::Client);
    for src in [ip("198.18.0.3"), ip("2001:2::3"), ip("198.18.1.2")] {
        port.send(&request(&lab, SocketAddr::new(src, 40_000), b"outside the allow-list")).unwrap();
    }
    port.send(&request(&lab, (CLIENT_V4, 40_000).into(), b"inside the allow-list")).unwrap();
    sentinel(&lab, &port);
    let fin = srv.stop();
    fin.assert_clean_exit();
    assert_eq!(fin.report_u64("xdp.filtered"), 3, "{}", fin.describe());
    assert_eq!(fin.report_u64("tx_packets"), 2, "{}", fin.describe());
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_source_over_its_rate_is_limited_in_xdp_while_another_is_served() {
    require_lab();
    let lab = Lab::new(1);
    const PPS: u64 = 1_000;
    const BURST: u64 = 100;
    let srv = serve(&lab, &[("per_source_pps", &PPS.to_string()), ("per_source_burst", &BURST.to_string())]);
    let port = RawPort::open(&lab, Side::Client);
    // A flood from one source at four times its rate for one second (paced; bounded in count and time).
    let flood = request(&lab, (CLIENT_V4, 40_000).into(), b"flood");
    let other = request(&lab, ("198.18.0.3".parse::<IpAddr>().unwrap(), 40_000).into(), b"another source");
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < 4 * PPS && started.elapsed() < Duration::from_secs(10) {
        let due = (started.elapsed().as_secs_f64() * 4.0 * PPS as f64) as u64;
        while sent < due.min(4 * PPS) {
            port.send(&flood).unwrap();
            sent += 1;
            if sent.is_multiple_of(80) {
                port.send(&other).unwrap(); // 50 in all: within its own burst
            }
        }
        std::hint::spin_loop();
    }
    let elapsed = started.elapsed();
    sentinel(&lab, &port);
    let fin = srv.stop();
    fin.assert_clean_exit();
    let limited = fin.report_u64("xdp.rate_limited");
    let served = fin.report_u64("tx_packets");
    let flood_served = served - 50 - 1; // the other source's 50 and the sentinel
                                        // GCRA: the burst at once, then one per 1/PPS; a little slack for timing at the edges.
    let most = BURST + (PPS as f64 * elapsed.as_secs_f64() * 1.1) as u64 + 10;
    let least = BURST + (PPS as f64 * elapsed.as_secs_f64() * 0.9) as u64 - 10;
    eprintln!(
        "rate limit {PPS}/s, burst {BURST}: {sent} requests from one source in {elapsed:?} ({:.0}/s): {flood_served} served, \
         {limited} rate_limited ({least}..={most} expected); the other source's 50 all served",
        sent as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(flood_served + limited, sent, "every flood request served or counted\n{}", fin.describe());
    assert!(flood_served >= least, "only {flood_served} served in {elapsed:?}: under the limit (at least {least})");
    assert!(flood_served <= most, "{flood_served} served in {elapsed:?}: over the limit");
    assert_eq!(fin.report_u64("xdp.filtered"), 0);
}
