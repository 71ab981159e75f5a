//! Accounting of one run: which requests were answered (loss, duplicates, reordering), latency histograms from
//! the intended and from the actual send time, how late the generator sent, and per-interval histograms for the
//! HdrHistogram log and the progress bar. No I/O; the engine feeds it.

use hdrhistogram::Histogram;

use crate::{
    dns::{DnsCounts, DnsState, Verdict},
    payload::{self, Foreign, Request},
};

/// Highest latency tracked (60 s); larger values are recorded as this.
pub const HIGHEST_NS: u64 = 60_000_000_000;

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, v: u64) {
    h.saturating_record(v.clamp(1, HIGHEST_NS));
}

/// One completed interval of the run (for the HdrHistogram interval log).
#[derive(Debug, Clone)]
pub struct Interval {
    /// Start, ns after the run's start.
    pub start_ns: u64,
    /// Length in ns.
    pub duration_ns: u64,
    /// Latency from the intended send time of the replies received in it.
    pub hist: Histogram<u64>,
}

/// Percentile summary of a histogram, in ns: the same figures the server reports.
pub use shunt::observe::latency::Summary;

/// Percentiles at which the spectrum is sampled (for plots): dense towards the tail.
pub const SPECTRUM_PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75, 99.9, 99.95, 99.975, 99.99, 99.995, 99.9975,
    99.999, 99.9995, 99.9999, 100.0,
];

/// (percentile, ns) pairs of `h`, up to the resolution its sample count supports.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let n = h.len() as f64;
    SPECTRUM_PERCENTILES
        .iter()
        // Keep a percentile only if at least one sample lies above it (plus the maximum itself).
        .filter(|&&p| p >= 100.0 || (1.0 - p / 100.0) * n >= 1.0)
        .map(|&p| (p, if p >= 100.0 { h.max() } else { h.value_at_percentile(p) }))
        .collect()
}

/// Which requests came back, and how fast.
pub struct Recorder {
    run_id: u64,
    /// Requests whose intended time is before this (ns on the sender's clock) are warm-up: sent, not counted.
    measure_from_ns: u64,
    seen: Vec<u64>,
    capacity: u64,
    highest_seq: Option<u64>,
    /// Measured requests sent.
    pub sent: u64,
    /// Warm-up requests sent.
    pub warmup_sent: u64,
    /// Distinct measured requests answered.
    pub received: u64,
    /// Replies to a request already answered.
    pub duplicates: u64,
    /// Replies whose sequence is below the highest seen so far.
    pub reordered: u64,
    /// Payloads that were not replies of this run (short, wrong flags or length, another run).
    pub foreign: u64,
    /// Replies with sockperf's CLIENT flag cleared (a sockperf-protocol server) rather than left set.
    pub client_cleared: u64,
    /// Latency from the intended send time.
    pub from_intended: Histogram<u64>,
    /// Latency from the actual send time.
    pub from_sent: Histogram<u64>,
    /// How late each measured request left (actual - intended send time).
    pub send_lag: Histogram<u64>,
    /// Measured requests that left more than `late_threshold_ns` after their intended time.
    pub sent_late: u64,
    late_threshold_ns: u64,
    first_sent_ns: Option<u64>,
    last_sent_ns: u64,
    first_intended_ns: Option<u64>,
    last_intended_ns: u64,
    interval_ns: u64,
    start_ns: u64,
    current: Histogram<u64>,
    current_start_ns: u64,
    intervals: Vec<Interval>,
    /// DNS payloads (`--dns-queries`): the ID table and the replies' validation.
    dns: Option<DnsState>,
}

impl Recorder {
    /// A recorder for up to `capacity` requests of run `run_id` started at `start_ns`.
    pub fn new(run_id: u64, capacity: u64, start_ns: u64, measure_from_ns: u64, late_threshold_ns: u64) -> Recorder {
        Recorder {
            run_id,
            measure_from_ns,
            seen: vec![0; capacity.div_ceil(64) as usize],
            capacity,
            highest_seq: None,
            sent: 0,
            warmup_sent: 0,
            received: 0,
            duplicates: 0,
            reordered: 0,
            foreign: 0,
            client_cleared: 0,
            from_intended: new_hist(),
            from_sent: new_hist(),
            send_lag: new_hist(),
            sent_late: 0,
            late_threshold_ns,
            first_sent_ns: None,
            last_sent_ns: 0,
            first_intended_ns: None,
            last_intended_ns: 0,
            interval_ns: 1_000_000_000,
            start_ns,
            current: new_hist(),
            current_start_ns: start_ns,
            intervals: Vec::new(),
            dns: None,
        }
    }

    /// Sends DNS queries from `queries` instead of shunt-bench's payload (see bench/src/dns.rs).
    pub fn with_dns(mut self, queries: std::sync::Arc<crate::dns::Queries>) -> Recorder {
        self.dns = Some(DnsState::new(queries));
        self
    }

    /// The DNS validation counts (None: not a DNS run).
    pub fn dns_counts(&self) -> Option<&DnsCounts> {
        self.dns.as_ref().map(|d| &d.counts)
    }

    /// Writes request `req` into `buf` (shunt-bench's payload of `size` bytes, or the next DNS query); returns
    /// the length.
    pub fn encode(&mut self, buf: &mut [u8], size: usize, req: &Request) -> usize {
        match &mut self.dns {
            Some(d) => d.encode(buf, req.seq, req.intended_ns, req.sent_ns),
            None => payload::encode(buf, size, req),
        }
    }

    /// Moves the send time of the request encoded in `buf` (a retry after a partial send).
    pub fn restamp(&mut self, buf: &mut [u8], sent_ns: u64) {
        match &mut self.dns {
            Some(d) => d.restamp(buf, sent_ns),
            None => payload::restamp(buf, sent_ns),
        }
    }

    /// The run id replies must carry.
    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// Notes that a request intended for `intended_ns` left at `sent_ns`.
    pub fn on_sent(&mut self, intended_ns: u64, sent_ns: u64) {
        if intended_ns < self.measure_from_ns {
            self.warmup_sent += 1;
            return;
        }
        self.sent += 1;
        let lag = sent_ns.saturating_sub(intended_ns);
        record(&mut self.send_lag, lag.max(1));
        if lag > self.late_threshold_ns {
            self.sent_late += 1;
        }
        self.first_sent_ns.get_or_insert(sent_ns);
        self.last_sent_ns = sent_ns;
        self.first_intended_ns.get_or_insert(intended_ns);
        self.last_intended_ns = intended_ns;
    }

    /// Accounts a received payload at `rx_ns`. Returns the decoded sequence number if it is a reply of this run.
    pub fn on_payload(&mut self, payload: &[u8], rx_ns: u64) -> Option<u64> {
        if let Some(d) = &mut self.dns {
            return match d.check(payload) {
                Verdict::Answer { seq, intended_ns, sent_ns } => {
                    self.on_reply(seq, intended_ns, sent_ns, rx_ns, true);
                    Some(seq)
                }
                // Answered, wrongly: not counted as received (a ping-pong goes on to the next request).
                Verdict::BadRcode { seq } => Some(seq),
                Verdict::Foreign => {
                    self.foreign += 1;
                    None
                }
            };
        }
        match payload::decode(payload, self.run_id) {
            Ok(reply) => {
                let r = reply.request;
                self.on_reply(r.seq, r.intended_ns, r.sent_ns, rx_ns, reply.client_cleared);
                Some(r.seq)
            }
            Err(Foreign::Short | Foreign::Flags | Foreign::Length | Foreign::OtherRun) => {
                self.foreign += 1;
                None
            }
        }
    }

    /// Accounts the reply to request `seq`.
    pub fn on_reply(&mut self, seq: u64, intended_ns: u64, sent_ns: u64, rx_ns: u64, client_cleared: bool) {
        if seq >= self.capacity {
            self.foreign += 1;
            return;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        match self.highest_seq {
            Some(h) if seq < h => self.reordered += 1,
            _ => self.highest_seq = Some(seq),
        }
        if client_cleared {
            self.client_cleared += 1;
        }
        if intended_ns < self.measure_from_ns {
            return;
        }
        self.received += 1;
        self.roll_intervals(rx_ns);
        let lat = rx_ns.saturating_sub(intended_ns);
        record(&mut self.from_intended, lat);
        record(&mut self.current, lat);
        record(&mut self.from_sent, rx_ns.saturating_sub(sent_ns));
    }

    fn roll_intervals(&mut self, now_ns: u64) {
        while now_ns >= self.current_start_ns + self.interval_ns {
            let hist = std::mem::replace(&mut self.current, new_hist());
            self.intervals.push(Interval {
                start_ns: self.current_start_ns - self.start_ns,
                duration_ns: self.interval_ns,
                hist,
            });
            self.current_start_ns += self.interval_ns;
        }
    }

    /// Closes the last interval at `end_ns` and returns them all.
    pub fn take_intervals(&mut self, end_ns: u64) -> Vec<Interval> {
        self.roll_intervals(end_ns);
        if !self.current.is_empty() {
            let hist = std::mem::replace(&mut self.current, new_hist());
            let duration_ns = end_ns.saturating_sub(self.current_start_ns).max(1);
            self.intervals.push(Interval { start_ns: self.current_start_ns - self.start_ns, duration_ns, hist });
        }
        std::mem::take(&mut self.intervals)
    }

    /// p99 from the intended time over the current (incomplete) interval or, if empty, the last completed one.
    pub fn recent_p99(&self) -> Option<u64> {
        let h = if self.current.is_empty() { &self.intervals.last()?.hist } else { &self.current };
        (!h.is_empty()).then(|| h.value_at_quantile(0.99))
    }

    /// Measured requests not answered (so far).
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }

    /// Whether every measured request sent so far was answered.
    pub fn all_answered(&self) -> bool {
        self.received >= self.sent
    }

    /// (first, last) actual send time of measured requests.
    pub fn send_span(&self) -> Option<(u64, u64)> {
        self.first_sent_ns.map(|f| (f, self.last_sent_ns))
    }

    /// (first, last) intended send time of measured requests.
    pub fn intended_span(&self) -> Option<(u64, u64)> {
        self.first_intended_ns.map(|f| (f, self.last_intended_ns))
    }

    /// Adds another sender thread's run (same clock, same start) into this one: counters summed, histograms
    /// added (HdrHistogram `add`), send spans widened. Afterwards this recorder describes the merged run; its
    /// per-request bitmap and interval histograms stay its own (merge those with [`merge_intervals`]).
    pub fn absorb(&mut self, o: &Recorder) {
        self.sent += o.sent;
        self.warmup_sent += o.warmup_sent;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.foreign += o.foreign;
        self.client_cleared += o.client_cleared;
        self.sent_late += o.sent_late;
        if let (Some(mine), Some(theirs)) = (&mut self.dns, &o.dns) {
            mine.counts.add(&theirs.counts);
        }
        for (mine, theirs) in [
            (&mut self.from_intended, &o.from_intended),
            (&mut self.from_sent, &o.from_sent),
            (&mut self.send_lag, &o.send_lag),
        ] {
            mine.add(theirs).expect("histograms of the same bounds add");
        }
        let widen = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        if o.first_sent_ns.is_some() {
            self.last_sent_ns =
                if self.first_sent_ns.is_some() { self.last_sent_ns.max(o.last_sent_ns) } else { o.last_sent_ns };
            self.last_intended_ns = if self.first_intended_ns.is_some() {
                self.last_intended_ns.max(o.last_intended_ns)
            } else {
                o.last_intended_ns
            };
        }
        self.first_sent_ns = widen(self.first_sent_ns, o.first_sent_ns);
        self.first_intended_ns = widen(self.first_intended_ns, o.first_intended_ns);
    }
}

/// Adds `more` (one thread's intervals, from the same start) into `into`, interval by interval.
pub fn merge_intervals(into: &mut Vec<Interval>, more: Vec<Interval>) {
    for (k, iv) in more.into_iter().enumerate() {
        match into.get_mut(k) {
            Some(mine) => {
                mine.hist.add(&iv.hist).expect("histograms of the same bounds add");
                mine.duration_ns = mine.duration_ns.max(iv.duration_ns);
            }
            None => into.push(iv),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_duplicates_and_reordering() {
        let mut r = Recorder::new(1, 10, 0, 0, 1_000);
        for s in 0..5 {
            r.on_sent(s * 100, s * 100);
        }
        r.on_reply(0, 0, 0, 50, true);
        r.on_reply(2, 200, 200, 260, true);
        r.on_reply(1, 100, 100, 270, false); // reordered
        r.on_reply(2, 200, 200, 280, true); // duplicate
        assert_eq!((r.sent, r.received, r.lost(), r.duplicates, r.reordered), (5, 3, 2, 1, 1));
        assert_eq!(r.client_cleared, 2);
        r.on_reply(99, 0, 0, 0, true);
        assert_eq!(r.foreign, 1, "out-of-range sequence");
    }

    #[test]
    fn warmup_is_sent_but_not_measured() {
        let mut r = Recorder::new(1, 10, 0, 1_000, 1_000);
        r.on_sent(500, 500);
        r.on_sent(1_500, 1_500);
        r.on_reply(0, 500, 500, 600, true);
        r.on_reply(1, 1_500, 1_500, 1_600, true);
        assert_eq!((r.warmup_sent, r.sent, r.received), (1, 1, 1));
        assert_eq!(r.from_intended.len(), 1);
    }

    #[test]
    fn latency_from_intended_and_sent_differ_by_send_lag() {
        let mut r = Recorder::new(1, 10, 0, 0, 1_000);
        r.on_sent(0, 5_000);
        r.on_reply(0, 0, 5_000, 6_000, true);
        assert!(r.from_intended.equivalent(r.from_intended.max(), 6_000));
        assert!(r.from_sent.equivalent(r.from_sent.max(), 1_000));
        assert_eq!(r.sent_late, 1);
        assert!(Summary::of(&r.from_intended).is_ordered());
    }

    #[test]
    fn intervals_split_replies_by_receive_time() {
        let mut r = Recorder::new(1, 10, 0, 0, 1_000);
        for s in 0..4u64 {
            r.on_sent(s * 600_000_000, s * 600_000_000);
            r.on_reply(s, s * 600_000_000, s * 600_000_000, s * 600_000_000 + 10, true);
        }
        let iv = r.take_intervals(2_400_000_000);
        let counts: Vec<u64> = iv.iter().map(|i| i.hist.len()).collect();
        assert_eq!(counts, vec![2, 2]);
        assert_eq!(iv[1].start_ns, 1_000_000_000);
    }

    #[test]
    fn absorbing_another_thread_sums_counts_and_adds_histograms() {
        let mut a = Recorder::new(1, 10, 0, 0, 1_000);
        let mut b = Recorder::new(2, 10, 0, 0, 1_000);
        for s in 0..4 {
            a.on_sent(100 + s * 100, 100 + s * 100);
            b.on_sent(50 + s * 200, 5_050 + s * 200); // late
        }
        for s in 0..3 {
            a.on_reply(s, 100 + s * 100, 100 + s * 100, 1_000 + s * 100, true);
        }
        b.on_reply(0, 50, 5_050, 9_000, false);
        a.absorb(&b);
        assert_eq!((a.sent, a.received, a.lost()), (8, 4, 4));
        assert_eq!(a.from_intended.len(), 4);
        assert_eq!(a.from_sent.len(), 4);
        assert_eq!(a.send_lag.len(), 8);
        assert_eq!((a.sent_late, a.client_cleared), (4, 3));
        assert_eq!(a.send_span(), Some((100, 5_650)));
        assert_eq!(a.intended_span(), Some((50, 650)));
        // Absorbing into an empty recorder takes the other's spans.
        let mut e = Recorder::new(3, 1, 0, 0, 1_000);
        e.absorb(&a);
        assert_eq!((e.send_span(), e.intended_span()), (a.send_span(), a.intended_span()));
    }

    #[test]
    fn intervals_merge_by_position() {
        let mut a = Recorder::new(1, 10, 0, 0, 1_000);
        let mut b = Recorder::new(2, 10, 0, 0, 1_000);
        a.on_sent(0, 0);
        a.on_reply(0, 0, 0, 10, true);
        for s in 0..2u64 {
            b.on_sent(s * 1_500_000_000, s * 1_500_000_000);
            b.on_reply(s, s * 1_500_000_000, s * 1_500_000_000, s * 1_500_000_000 + 10, true);
        }
        let mut merged = a.take_intervals(500_000_000);
        merge_intervals(&mut merged, b.take_intervals(2_000_000_000));
        assert_eq!(merged.iter().map(|i| i.hist.len()).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn spectrum_stops_at_the_resolution_of_the_sample() {
        let mut h = new_hist();
        for v in 1..=1000 {
            h.record(v * 1000).unwrap();
        }
        let s = spectrum(&h);
        assert!(s.iter().all(|&(p, _)| p <= 99.9 || p == 100.0));
        assert_eq!(s.last().unwrap().1, h.max());
        assert!(s.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
