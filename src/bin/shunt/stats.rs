//! `shunt stats`: polls a running server's metrics endpoint and prints a live table.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

/// One scrape: series name with labels → value.
pub type Scrape = BTreeMap<String, f64>;

/// Fetches `/metrics` from `addr` (plain HTTP/1.0).
pub fn fetch(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let status = body.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("{addr}/metrics answered {status:?}")));
    }
    Ok(body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// Parses the text exposition format into series → value (comments skipped).
pub fn parse(text: &str) -> Scrape {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(s: &Scrape, name: &str) -> f64 {
    s.get(name).copied().unwrap_or(0.0)
}

fn queues(s: &Scrape) -> Vec<String> {
    let mut q: Vec<String> = s
        .keys()
        .filter_map(|k| k.strip_prefix("shunt_rx_packets_total{queue=\""))
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect();
    q.sort_by_key(|q| q.parse::<u32>().unwrap_or(u32::MAX));
    q
}

/// Formats the table for one interval between two scrapes.
pub fn table(prev: &Scrape, now: &Scrape, secs: f64) -> String {
    let mut out = format!(
        "{:>6} {:>11} {:>11} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
        "queue", "rx pps", "tx pps", "drops/s", "p50", "p99", "p99.9", "max"
    );
    let rate = |name: String| (get(now, &name) - get(prev, &name)).max(0.0) / secs.max(1e-9);
    let quantile = |queue: &str, q: &str| {
        let v = get(now, &format!("shunt_latency_seconds{{queue=\"{queue}\",stage=\"total\",quantile=\"{q}\"}}"));
        format!("{:.1}us", v * 1e6)
    };
    let mut rows = queues(now);
    rows.push("all".into());
    for q in rows {
        let (rx, tx, drops) = if q == "all" {
            let sum = |p: &str| queues(now).iter().map(|q| rate(format!("{p}{{queue=\"{q}\"}}"))).sum::<f64>();
            let drop_sum = queues(now)
                .iter()
                .flat_map(|q| {
                    ["malformed", "not_ours", "handler", "tx_ring_full"]
                        .map(|r| format!("shunt_dropped_packets_total{{queue=\"{q}\",reason=\"{r}\"}}"))
                })
                .map(&rate)
                .sum::<f64>();
            (sum("shunt_rx_packets_total"), sum("shunt_tx_packets_total"), drop_sum)
        } else {
            let drops = ["malformed", "not_ours", "handler", "tx_ring_full"]
                .iter()
                .map(|r| rate(format!("shunt_dropped_packets_total{{queue=\"{q}\",reason=\"{r}\"}}")))
                .sum::<f64>();
            (
                rate(format!("shunt_rx_packets_total{{queue=\"{q}\"}}")),
                rate(format!("shunt_tx_packets_total{{queue=\"{q}\"}}")),
                drops,
            )
        };
        out.push_str(&format!(
            "{:>6} {:>11.0} {:>11.0} {:>9.0} {:>10} {:>10} {:>10} {:>10}\n",
            q,
            rx,
            tx,
            drops,
            quantile(&q, "0.5"),
            quantile(&q, "0.99"),
            quantile(&q, "0.999"),
            quantile(&q, "1")
        ));
    }
    out.push_str(&format!(
        "xdp: redirected {:.0}/s passed {:.0}/s malformed {:.0}/s (latency columns: in-server, since start)\n",
        rate("shunt_xdp_packets_total{verdict=\"redirected\"}".into()),
        rate("shunt_xdp_packets_total{verdict=\"passed\"}".into()),
        rate("shunt_xdp_packets_total{verdict=\"malformed\"}".into()),
    ));
    out
}

/// Polls `addr` every `interval`, `count` times (0 = until the endpoint goes away), printing a table each time.
pub fn watch(addr: SocketAddr, interval: Duration, count: u64) -> std::io::Result<()> {
    let timeout = Duration::from_secs(2);
    let mut prev = parse(&fetch(addr, timeout)?);
    let mut last = Instant::now();
    let mut n = 0;
    while count == 0 || n < count {
        std::thread::sleep(interval);
        let now = parse(&fetch(addr, timeout)?);
        let secs = last.elapsed().as_secs_f64();
        last = Instant::now();
        println!("{}", table(&prev, &now, secs));
        prev = now;
        n += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x\n# TYPE shunt_rx_packets_total counter\nshunt_rx_packets_total{queue=\"0\"} 100\n\
        shunt_tx_packets_total{queue=\"0\"} 90\nshunt_latency_seconds{queue=\"0\",stage=\"total\",quantile=\"0.5\"} 0.0000025\n";

    #[test]
    fn parses_series_and_values() {
        let s = parse(TEXT);
        assert_eq!(s["shunt_rx_packets_total{queue=\"0\"}"], 100.0);
        assert_eq!(queues(&s), vec!["0".to_string()]);
    }

    #[test]
    fn table_shows_rates() {
        let prev = parse("shunt_rx_packets_total{queue=\"0\"} 0\n");
        let t = table(&prev, &parse(TEXT), 2.0);
        assert!(t.contains("50"), "{t}");
        assert!(t.contains("2.5us"), "{t}");
    }
}
