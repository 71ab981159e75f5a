//! Lab test: a handler's timer runs with no request traffic at all, in every datapath.
//!
//! `examples/heartbeat` sends one datagram (sequence number, due time, send time) every 10 ms to a listener in
//! the client namespace; nothing is ever sent to the server. For AF_XDP in each poll mode that can run on veth
//! (spin, wakeup, adaptive: a waking worker must sleep no longer than the deadline) and for every kernel-socket
//! I/O model, the test takes 30 heartbeats and checks that they come in order from the served address and
//! port, none lost once the listener's MAC is resolved (AF_XDP drops and counts the first beats while the
//! kernel resolves it), that no beat was sent before it was due (the worker calls the timeout when due, never
//! before), that the send times are an interval apart (a median gap within 9..=15 ms), and that the report
//! counts the timeouts and sends.
//! Timings are the server's own clock readings, written into each datagram, so the listener's scheduling
//! does not enter them.

mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use common::{example_bin, lab_config, require_lab, Lab};

/// Heartbeats taken per datapath.
const BEATS: usize = 30;
const INTERVAL_MS: u64 = 10;

/// Throws away whatever waits in `sock`.
fn drain(sock: &UdpSocket) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
}

/// Receives `BEATS` heartbeats on `sock` (each wait bounded), returning (sequence, server send ns, source,
/// due ns).
fn take_beats(sock: &UdpSocket) -> Vec<(u64, u64, SocketAddr, u64)> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let mut beats = Vec::with_capacity(BEATS);
    while beats.len() < BEATS {
        let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
            panic!("heartbeat {} of {BEATS} did not come within 5 s: {e}", beats.len());
        });
        assert_eq!(n, 24, "a heartbeat is 24 bytes");
        let field = |k: usize| u64::from_be_bytes(buf[8 * k..8 * k + 8].try_into().unwrap());
        beats.push((field(0), field(2), from, field(1)));
    }
    beats
}

#[test]
#[ignore = "lab test: needs root and network namespaces; `make test` runs it (--include-ignored)"]
fn a_timer_sends_every_10_ms_with_no_requests_in_every_datapath() {
    require_lab();
    let bin = example_bin("heartbeat");
    let lab = Lab::new(1);
    let sif = lab.server_if();
    let cfg = lab_config().display().to_string();
    let listener = lab.in_client(|| UdpSocket::bind("0.0.0.0:7000").expect("bind the listener"));
    let from = SocketAddr::from((lab.server_v4(), 9000)).to_string();
    let to = SocketAddr::from((lab.client_v4(), 7000)).to_string();
    let interval = INTERVAL_MS.to_string();
    let datapaths: [&[&str]; 9] = [
        &["--mode", "socket", "--io", "blocking"],
        &["--mode", "socket", "--io", "nonblocking"],
        &["--mode", "socket", "--io", "epoll"],
        &["--mode", "socket", "--io", "signal"],
        &["--mode", "socket", "--io", "mmsg"],
        &["--mode", "socket", "--io", "io_uring"],
        &["--poll-mode", "spin"],
        &["--poll-mode", "wakeup"],
        &["--poll-mode", "adaptive"],
    ];
    for extra in datapaths {
        let base = [
            "--config",
            &cfg,
            "--interface",
            &sif,
            "--port",
            "9000",
            "--from",
            &from,
            "--to",
            &to,
            "--interval-ms",
            &interval,
        ];
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        // Heartbeats of the previous datapath still in the socket are not this one's.
        drain(&listener);
        let srv = lab.spawn_program(&bin, &args);
        let beats = take_beats(&listener);
        let fin = srv.stop();
        fin.assert_clean_exit();
        // On AF_XDP the first beats may find the listener's MAC not resolved yet: they are dropped and counted
        // (send_unresolved) while the kernel resolves it, never sent to a guessed MAC. From then on, none is lost.
        let first = beats[0].0;
        let unresolved = fin.report_u64("workers.0.send_unresolved");
        assert_eq!(first, unresolved, "{extra:?}: the beats before the first received were the unresolved ones");
        assert!(first <= 5, "{extra:?}: resolving the listener's MAC took {first} beats");
        for (i, (seq, _, src, _)) in beats.iter().enumerate() {
            assert_eq!(*seq, first + i as u64, "{extra:?}: heartbeats in order, none lost: {beats:?}");
            assert_eq!(src.to_string(), from, "{extra:?}: from the served address and port");
        }
        // Never early: each beat went out at or after its deadline (a late turn is caught up on the next, so a
        // single gap may be shorter than the interval, but no deadline is run ahead of).
        for (seq, at, _, due) in &beats {
            assert!(at >= due, "{extra:?}: heartbeat {seq} ran {} ns before it was due", due - at);
        }
        // Beat 0 is due at once (deadline 0): lateness counts from the first real deadline.
        let late = beats.iter().filter(|b| b.3 > 0).map(|(_, at, _, due)| at - due).max().unwrap_or(0);
        let mut gaps: Vec<u64> = beats.windows(2).map(|w| w[1].1.saturating_sub(w[0].1)).collect();
        gaps.sort_unstable();
        let median = gaps[gaps.len() / 2];
        let ms = |ns: u64| ns as f64 / 1e6;
        println!(
            "{extra:?}: {BEATS} heartbeats, send gaps min {:.2} / median {:.2} / max {:.2} ms, latest {:.3} ms after \
             its deadline",
            ms(gaps[0]),
            ms(median),
            ms(gaps[gaps.len() - 1]),
            ms(late)
        );
        assert!(
            (9_000_000..=15_000_000).contains(&median),
            "{extra:?}: median gap {:.2} ms, asked for {INTERVAL_MS} ms: {gaps:?}",
            ms(median)
        );
        let timeouts = fin.report_u64("workers.0.timeouts");
        let sends = fin.report_u64("workers.0.sends");
        assert!(
            timeouts as usize >= BEATS && sends + unresolved == timeouts,
            "{extra:?}: every timeout sent its beat or counted it: {}",
            fin.describe()
        );
        assert_eq!(fin.report_u64("rx_packets"), 0, "{extra:?}: no request was sent");
        assert_eq!(fin.report_u64("workers.0.send_no_route"), 0, "{extra:?}");
    }
    lab.assert_no_xdp_within(Duration::from_secs(5));
}
