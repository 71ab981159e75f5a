//! `shunt stats`: polls a running server's `/stats.json` and prints a live table.
//!
//! The endpoint serves a [`StatsSnapshot`] (the type is the library's, so client and server cannot disagree on
//! field names); rates are differences between two snapshots over the server's own uptime clock.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use shunt::{
    datapath::counters::WorkerStats,
    observe::{
        latency::{human_ns, LatencyReport},
        metrics::{drop_reasons, StatsSnapshot, WorkerSnapshot},
    },
};

/// Fetches and parses `/stats.json` from `addr` (plain HTTP/1.0).
pub fn fetch(addr: SocketAddr, timeout: Duration) -> std::io::Result<StatsSnapshot> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET /stats.json HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("{addr}/stats.json answered {status:?}")));
    }
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{addr}/stats.json: {e}")))
}

fn drops(s: &WorkerStats) -> u64 {
    drop_reasons(s).iter().map(|(_, n)| n).sum()
}

/// p50, p99, p99.9 and max of the in-server latency (`total` stage), or dashes when there is none.
fn latency_columns(l: Option<&LatencyReport>) -> [String; 4] {
    match l {
        Some(l) if l.total_ns.count > 0 => {
            let t = &l.total_ns;
            [t.p50, t.p99, t.p999, t.max].map(human_ns)
        }
        _ => ["-", "-", "-", "-"].map(String::from),
    }
}

fn row(out: &mut String, queue: &str, rates: [f64; 3], latency: [String; 4]) {
    let [rx, tx, drops] = rates;
    let [p50, p99, p999, max] = latency;
    let _ = writeln!(out, "{queue:>6} {rx:>11.0} {tx:>11.0} {drops:>9.0} {p50:>10} {p99:>10} {p999:>10} {max:>10}");
}

/// The table for the interval between two snapshots of the same server: per queue and summed over queues
/// ("all"), rx and tx packets and drops per second over the interval, and the in-server latency since start.
pub fn table(prev: &StatsSnapshot, now: &StatsSnapshot) -> String {
    let secs = now.uptime_ns.saturating_sub(prev.uptime_ns) as f64 / 1e9;
    let per_sec = |now: u64, prev: u64| now.saturating_sub(prev) as f64 / secs.max(1e-9);
    let rates = |w: &WorkerSnapshot| -> [f64; 3] {
        let before = prev.workers.iter().find(|p| p.queue == w.queue).map(|p| p.stats).unwrap_or_default();
        let s = &w.stats;
        [
            per_sec(s.rx_packets, before.rx_packets),
            per_sec(s.tx_packets, before.tx_packets),
            per_sec(drops(s), drops(&before)),
        ]
    };
    let mut out = format!(
        "{:>6} {:>11} {:>11} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
        "queue", "rx pps", "tx pps", "drops/s", "p50", "p99", "p99.9", "max"
    );
    let mut all = [0.0; 3];
    for w in &now.workers {
        let r = rates(w);
        for (sum, v) in all.iter_mut().zip(r) {
            *sum += v;
        }
        row(&mut out, &w.queue.to_string(), r, latency_columns(w.latency.as_ref()));
    }
    row(&mut out, "all", all, latency_columns(now.latency.as_ref()));
    // Failed calls, summed over queues, only when some failed in the interval: a line that is usually absent
    // draws the eye when it appears.
    let mut failed = WorkerStats::default().errors().map(|(name, _)| (name, 0.0));
    for w in &now.workers {
        let before = prev.workers.iter().find(|p| p.queue == w.queue).map(|p| p.stats).unwrap_or_default();
        for ((_, sum), ((_, n), (_, b))) in failed.iter_mut().zip(w.stats.errors().into_iter().zip(before.errors())) {
            *sum += per_sec(n, b);
        }
    }
    if failed.iter().any(|&(_, rate)| rate > 0.0) {
        let listed: Vec<String> = failed.iter().map(|(name, rate)| format!("{name} {rate:.0}/s")).collect();
        let _ = writeln!(out, "failed calls: {}", listed.join(" "));
    }
    match (&prev.xdp, &now.xdp) {
        (Some(p), Some(n)) => {
            let _ = writeln!(
                out,
                "xdp: redirected {:.0}/s passed {:.0}/s malformed {:.0}/s no_socket {:.0}/s filtered {:.0}/s \
                 rate_limited {:.0}/s other_address {:.0}/s",
                per_sec(n.redirected, p.redirected),
                per_sec(n.passed, p.passed),
                per_sec(n.malformed, p.malformed),
                per_sec(n.no_socket, p.no_socket),
                per_sec(n.filtered, p.filtered),
                per_sec(n.rate_limited, p.rate_limited),
                per_sec(n.other_address, p.other_address)
            );
        }
        _ => out.push_str("xdp: counters unavailable\n"),
    }
    let _ = writeln!(out, "rates over the last {secs:.1} s; latency: in-server (XDP hook -> TX ring), since start");
    out
}

/// Polls `addr` every `interval`, `count` times (0 = until the endpoint goes away), printing a table each time.
pub fn watch(addr: SocketAddr, interval: Duration, count: u64) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut prev = fetch(addr, timeout)?;
    let mut n = 0;
    while count == 0 || n < count {
        std::thread::sleep(interval);
        let now = fetch(addr, timeout)?;
        println!("{}", table(&prev, &now));
        prev = now;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use shunt::observe::latency::Summary;

    use super::*;

    fn latency(p50: u64, p99: u64, p999: u64, max: u64) -> Option<LatencyReport> {
        let total_ns = Summary { count: 10, p50, p99, p999, max, ..Summary::default() };
        Some(LatencyReport { total_ns, ..LatencyReport::default() })
    }

    fn worker(queue: u32, stats: WorkerStats, latency: Option<LatencyReport>) -> WorkerSnapshot {
        WorkerSnapshot { queue, stats, latency, ..WorkerSnapshot::default() }
    }

    /// The whitespace-separated cells of the row whose first cell is `queue`.
    fn cells<'t>(table: &'t str, queue: &str) -> Vec<&'t str> {
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.first() == Some(&queue))
            .collect();
        assert_eq!(rows.len(), 1, "one row for queue {queue} in\n{table}");
        rows[0].clone()
    }

    #[test]
    fn table_shows_each_queues_rates_and_latency_and_their_sum() {
        let prev = StatsSnapshot {
            uptime_ns: 1_000_000_000,
            workers: vec![
                worker(0, WorkerStats { rx_packets: 100, tx_packets: 90, ..Default::default() }, None),
                worker(1, WorkerStats::default(), None),
            ],
            ..StatsSnapshot::default()
        };
        // 2 s later: queue 0 took 2,000 more frames, answered 1,600, dropped 10 malformed and 4 with a bad
        // checksum; queue 1 took and answered 600.
        let q0 = WorkerStats {
            rx_packets: 2_100,
            tx_packets: 1_690,
            dropped_malformed: 10,
            dropped_bad_checksum: 4,
            ..Default::default()
        };
        let q1 = WorkerStats { rx_packets: 600, tx_packets: 600, ..Default::default() };
        let now = StatsSnapshot {
            uptime_ns: 3_000_000_000,
            workers: vec![
                worker(0, q0, latency(2_500, 9_000, 40_000, 12_000_000)),
                worker(1, q1, latency(700, 1_000, 1_500, 3_000)),
            ],
            latency: latency(1_200, 8_000, 39_000, 12_000_000),
            ..StatsSnapshot::default()
        };
        let t = table(&prev, &now);
        assert_eq!(cells(&t, "0"), ["0", "1000", "800", "7", "2.5us", "9.0us", "40.0us", "12.0ms"], "\n{t}");
        assert_eq!(cells(&t, "1"), ["1", "300", "300", "0", "0.7us", "1.0us", "1.5us", "3.0us"], "\n{t}");
        assert_eq!(cells(&t, "all"), ["all", "1300", "1100", "7", "1.2us", "8.0us", "39.0us", "12.0ms"], "\n{t}");
        assert!(t.contains("rates over the last 2.0 s"), "{t}");
        assert!(t.contains("xdp: counters unavailable"), "{t}");
        assert!(!t.contains("failed calls"), "no call failed: {t}");
    }

    #[test]
    fn failed_calls_show_as_rates_under_their_own_names() {
        let prev = StatsSnapshot {
            uptime_ns: 0,
            workers: vec![worker(0, WorkerStats { rx_errors: 4, ..Default::default() }, None)],
            ..Default::default()
        };
        let q0 = WorkerStats { rx_errors: 6, tx_errors: 1, wait_errors: 3, ..Default::default() };
        let q1 = WorkerStats { tx_errors: 1, tx_kick_errors: 2, ..Default::default() };
        let now = StatsSnapshot {
            uptime_ns: 1_000_000_000,
            workers: vec![worker(0, q0, None), worker(1, q1, None)],
            ..Default::default()
        };
        let t = table(&prev, &now);
        assert!(t.contains("failed calls: rx_errors 2/s tx_errors 2/s wait_errors 3/s tx_kick_errors 2/s"), "{t}");
    }

    #[test]
    fn a_queue_without_latency_shows_dashes_and_xdp_rates_follow_the_uptime() {
        let mut prev = StatsSnapshot {
            uptime_ns: 0,
            workers: vec![worker(4, WorkerStats::default(), None)],
            ..Default::default()
        };
        prev.xdp = Some(Default::default());
        let mut now = prev.clone();
        now.uptime_ns = 500_000_000;
        now.xdp = Some(shunt::steer::XdpCounters {
            redirected: 50,
            passed: 5,
            malformed: 1,
            no_socket: 0,
            filtered: 3,
            rate_limited: 2,
            stamp_failed: 0,
            other_address: 1,
        });
        let t = table(&prev, &now);
        assert_eq!(cells(&t, "4"), ["4", "0", "0", "0", "-", "-", "-", "-"], "\n{t}");
        assert!(
            t.contains(
                "xdp: redirected 100/s passed 10/s malformed 2/s no_socket 0/s filtered 6/s rate_limited 4/s \
                 other_address 2/s"
            ),
            "{t}"
        );
    }
}
