//! The two load loops, independent of how packets move: [`open_loop`] (requests leave on a fixed schedule,
//! whatever the replies do) and [`ping_pong`] (one request outstanding). Both run on one thread against a
//! [`Transport`] and feed a [`Recorder`].

use std::{io, sync::OnceLock, time::Instant};

use crate::{
    payload::{Request, MAX_PAYLOAD},
    record::Recorder,
    schedule::{Distribution, Schedule},
};

/// The generator's clock: ns since the first call in this process (CLOCK_MONOTONIC through `Instant`). Every
/// transport and every sender thread reads this one clock, so the threads of one run share a start time and their
/// send spans and latencies can be merged.
pub fn clock_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Moves request payloads out and reply payloads in. Times are ns on one monotonic clock.
pub trait Transport {
    /// The clock.
    fn now(&mut self) -> u64;
    /// Number of flows (source ports) requests are spread over.
    fn flows(&self) -> usize;
    /// Most requests worth handing over in one `send` call.
    fn max_batch(&self) -> usize;
    /// Sends `payloads[i][..lens[i]]` on flow `flows[i]`, in order; returns how many (from the front) left.
    /// Stopping early (a full socket buffer or TX ring) is not an error.
    fn send(&mut self, payloads: &[Vec<u8>], lens: &[usize], flows: &[usize]) -> io::Result<usize>;
    /// Shows each received payload to `on(payload, rx_ns)`; returns how many. Must not block long.
    fn recv(&mut self, on: &mut dyn FnMut(&[u8], u64)) -> io::Result<usize>;
}

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadParams {
    /// Requests per second (open loop); for ping-pong, the highest rate (0: back to back).
    pub rate: f64,
    /// Inter-departure distribution.
    pub distribution: Distribution,
    /// Requests to send, warm-up included.
    pub count: u64,
    /// UDP payload bytes.
    pub size: usize,
    /// Flows (source ports) are used in turn, `flow_block` consecutive requests each.
    pub flow_block: u64,
    /// After the last request, wait at most this long for replies.
    pub drain_ns: u64,
    /// Hard limit on the whole run, drain included.
    pub deadline_ns: u64,
    /// Ping-pong: how long to wait for each reply before counting it lost and going on.
    pub reply_timeout_ns: u64,
    /// Seed of the Poisson schedule.
    pub seed: u64,
}

/// How a loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopEnd {
    /// Start of the run on the transport's clock.
    pub start_ns: u64,
    /// End of the run.
    pub end_ns: u64,
    /// Requests handed to the transport (warm-up included).
    pub sent_total: u64,
    /// Whether the hard deadline cut the run short.
    pub hit_deadline: bool,
    /// `send` calls that could not send everything they were given.
    pub partial_sends: u64,
}

impl LoopEnd {
    /// The span of two sender threads' runs together: earliest start, latest end, counts summed.
    pub fn merge(self, o: &LoopEnd) -> LoopEnd {
        LoopEnd {
            start_ns: self.start_ns.min(o.start_ns),
            end_ns: self.end_ns.max(o.end_ns),
            sent_total: self.sent_total + o.sent_total,
            hit_deadline: self.hit_deadline || o.hit_deadline,
            partial_sends: self.partial_sends + o.partial_sends,
        }
    }
}

/// Called now and then (about every 100 ms) with the recorder and the time, e.g. to draw a progress bar.
pub type Progress<'a> = &'a mut dyn FnMut(&Recorder, u64);

const PROGRESS_EVERY_NS: u64 = 100_000_000;

fn flow_of(seq: u64, p: &LoadParams, flows: usize) -> usize {
    ((seq / p.flow_block.max(1)) % flows.max(1) as u64) as usize
}

/// Open loop: request `seq` is due at `start + schedule[seq]` and leaves as soon as possible after; latency is
/// measured from that intended time. A sender that falls behind catches up in batches, never shifting the
/// schedule, so its own (or a back-pressuring server's) stall shows up in the latency instead of thinning the
/// load. `rec` must have been created with `start_ns` = the returned `start_ns` (see [`open_loop_start`]).
pub fn open_loop<T: Transport>(
    t: &mut T,
    p: &LoadParams,
    rec: &mut Recorder,
    start_ns: u64,
    progress: Progress,
) -> io::Result<LoopEnd> {
    let batch = t.max_batch().clamp(1, 256);
    let flows = t.flows();
    let mut bufs = vec![vec![0u8; MAX_PAYLOAD]; batch];
    let mut lens = vec![0usize; batch];
    let mut flow_ids = vec![0usize; batch];
    let mut intended = vec![0u64; batch];
    let mut pending = 0usize; // encoded requests at the front of `bufs` not yet sent
    let mut schedule = Schedule::new(p.rate, p.distribution, p.seed);
    let mut next_at = start_ns + schedule.next().unwrap_or(0);
    let mut seq = 0u64;
    let mut sent_total = 0u64;
    let mut partial_sends = 0u64;
    let mut last_send_ns = start_ns;
    let mut next_progress = start_ns + PROGRESS_EVERY_NS;
    let deadline = start_ns + p.deadline_ns;
    let run_id = rec.run_id();
    loop {
        let now = t.now();
        if pending > 0 || (seq < p.count && next_at <= now) {
            for b in &mut bufs[..pending] {
                rec.restamp(b, now);
            }
            while pending < batch && seq < p.count && next_at <= now {
                let req = Request { seq, run_id, intended_ns: next_at, sent_ns: now };
                lens[pending] = rec.encode(&mut bufs[pending], p.size, &req);
                flow_ids[pending] = flow_of(seq, p, flows);
                intended[pending] = next_at;
                pending += 1;
                seq += 1;
                next_at = start_ns + schedule.next().unwrap_or(0);
            }
            let n = t.send(&bufs[..pending], &lens[..pending], &flow_ids[..pending])?.min(pending);
            for &at in &intended[..n] {
                rec.on_sent(at, now);
            }
            if n > 0 {
                last_send_ns = now;
            }
            if n < pending {
                partial_sends += 1;
                bufs[..pending].rotate_left(n);
                lens[..pending].rotate_left(n);
                flow_ids[..pending].rotate_left(n);
                intended[..pending].rotate_left(n);
            }
            pending -= n;
            sent_total += n as u64;
        }
        t.recv(&mut |payload, rx| {
            rec.on_payload(payload, rx);
        })?;
        if now >= next_progress {
            progress(rec, now);
            next_progress = now + PROGRESS_EVERY_NS;
        }
        let all_sent = seq >= p.count && pending == 0;
        if all_sent && (rec.all_answered() || now >= last_send_ns + p.drain_ns) {
            return Ok(LoopEnd { start_ns, end_ns: now, sent_total, hit_deadline: false, partial_sends });
        }
        if now >= deadline {
            return Ok(LoopEnd { start_ns, end_ns: now, sent_total, hit_deadline: true, partial_sends });
        }
    }
}

/// Ping-pong: send one request, wait for its reply (or `reply_timeout_ns`), repeat; with a positive rate,
/// request `seq` is not sent before `start + seq / rate`. Latency is from the actual send time (which is also
/// recorded as the intended one: a closed loop has no schedule to fall behind).
pub fn ping_pong<T: Transport>(
    t: &mut T,
    p: &LoadParams,
    rec: &mut Recorder,
    start_ns: u64,
    progress: Progress,
) -> io::Result<LoopEnd> {
    let mut buf = vec![vec![0u8; MAX_PAYLOAD]];
    let mut len = [0usize];
    let mut flow = [0usize];
    let period = if p.rate > 0.0 { 1e9 / p.rate } else { 0.0 };
    let deadline = start_ns + p.deadline_ns;
    let mut next_progress = start_ns + PROGRESS_EVERY_NS;
    let mut sent_total = 0u64;
    let mut partial_sends = 0u64;
    let run_id = rec.run_id();
    let mut now = t.now();
    for seq in 0..p.count {
        let not_before = start_ns + (seq as f64 * period) as u64;
        while now < not_before {
            now = t.now();
            t.recv(&mut |payload, rx| {
                rec.on_payload(payload, rx);
            })?;
        }
        if now >= deadline {
            return Ok(LoopEnd { start_ns, end_ns: now, sent_total, hit_deadline: true, partial_sends });
        }
        let sent_at = loop {
            let t_send = t.now();
            len[0] = rec.encode(&mut buf[0], p.size, &Request { seq, run_id, intended_ns: t_send, sent_ns: t_send });
            flow[0] = flow_of(seq, p, t.flows());
            if t.send(&buf, &len, &flow)? == 1 {
                rec.on_sent(t_send, t_send);
                break t_send;
            }
            partial_sends += 1;
            if t_send >= deadline {
                return Ok(LoopEnd { start_ns, end_ns: t_send, sent_total, hit_deadline: true, partial_sends });
            }
        };
        sent_total += 1;
        let give_up = sent_at + p.reply_timeout_ns;
        let mut answered = false;
        while !answered {
            t.recv(&mut |payload, rx| {
                if rec.on_payload(payload, rx) == Some(seq) {
                    answered = true;
                }
            })?;
            now = t.now();
            if now >= give_up || now >= deadline {
                break;
            }
        }
        if now >= next_progress {
            progress(rec, now);
            next_progress = now + PROGRESS_EVERY_NS;
        }
    }
    // Late replies to the last requests.
    let until = now + p.drain_ns.min(p.reply_timeout_ns);
    while !rec.all_answered() && now < until {
        t.recv(&mut |payload, rx| {
            rec.on_payload(payload, rx);
        })?;
        now = t.now();
    }
    Ok(LoopEnd { start_ns, end_ns: now, sent_total, hit_deadline: false, partial_sends })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::record::Summary;

    /// A simulated network + server on a simulated clock. Each call costs a little time; the server answers
    /// after `service_ns`. During `[stall_from, stall_to)` the server does not answer (replies queue up and
    /// leave at `stall_to`), and with `back_pressure` the sender's `send` also blocks until `stall_to`, as a
    /// blocking socket with a full buffer would.
    struct Sim {
        clock: u64,
        service_ns: u64,
        stall: (u64, u64),
        back_pressure: bool,
        inflight: VecDeque<(u64, Vec<u8>)>,
        sends: Vec<u64>,
    }

    impl Sim {
        fn new(stall: (u64, u64), back_pressure: bool) -> Sim {
            Sim { clock: 0, service_ns: 20_000, stall, back_pressure, inflight: VecDeque::new(), sends: Vec::new() }
        }
        fn stalled(&self, t: u64) -> bool {
            t >= self.stall.0 && t < self.stall.1
        }
    }

    impl Transport for Sim {
        fn now(&mut self) -> u64 {
            self.clock += 100;
            self.clock
        }
        fn flows(&self) -> usize {
            1
        }
        fn max_batch(&self) -> usize {
            32
        }
        fn send(&mut self, payloads: &[Vec<u8>], lens: &[usize], _: &[usize]) -> io::Result<usize> {
            if self.back_pressure && self.stalled(self.clock) {
                self.clock = self.stall.1; // the send blocks for the rest of the stall
            }
            for (p, &n) in payloads.iter().zip(lens) {
                let mut at = self.clock + self.service_ns;
                if self.stalled(self.clock) {
                    at = at.max(self.stall.1 + self.service_ns);
                }
                self.sends.push(self.clock);
                self.inflight.push_back((at, p[..n].to_vec()));
            }
            Ok(payloads.len())
        }
        fn recv(&mut self, on: &mut dyn FnMut(&[u8], u64)) -> io::Result<usize> {
            let mut n = 0;
            while self.inflight.front().is_some_and(|(at, _)| *at <= self.clock) {
                let (_, p) = self.inflight.pop_front().unwrap();
                on(&p, self.clock);
                n += 1;
            }
            Ok(n)
        }
    }

    fn params(rate: f64, count: u64) -> LoadParams {
        LoadParams {
            rate,
            distribution: Distribution::Uniform,
            count,
            size: 64,
            flow_block: 1,
            drain_ns: 200_000_000,
            deadline_ns: 10_000_000_000,
            reply_timeout_ns: 100_000_000,
            seed: 1,
        }
    }

    fn run_open(sim: &mut Sim, rate: f64, count: u64) -> (Recorder, LoopEnd) {
        let start = sim.now();
        let mut rec = Recorder::new(9, count, start, start, 1_000_000);
        let end = open_loop(sim, &params(rate, count), &mut rec, start, &mut |_, _| {}).unwrap();
        (rec, end)
    }

    #[test]
    fn open_loop_keeps_the_rate() {
        let mut sim = Sim::new((u64::MAX, u64::MAX), false);
        let (rec, end) = run_open(&mut sim, 50_000.0, 10_000);
        assert_eq!((rec.sent, rec.received, rec.lost()), (10_000, 10_000, 0));
        assert!(!end.hit_deadline);
        let gaps: Vec<u64> = sim.sends.windows(2).map(|w| w[1] - w[0]).collect();
        // 20 us apart, within the simulated clock's 100 ns granularity.
        assert!(gaps.iter().all(|&g| (19_900..=20_100).contains(&g)), "{:?}", &gaps[..10]);
        let lat = Summary::of(&rec.from_intended);
        assert!(lat.p50 >= 20_000 && lat.max < 21_000, "{lat:?}");
    }

    #[test]
    fn a_stalled_server_shows_in_both_histograms() {
        // 10k req/s for 1 s; the server stops answering for 50 ms in the middle (replies queue up).
        let mut sim = Sim::new((500_000_000, 550_000_000), false);
        let (rec, _) = run_open(&mut sim, 10_000.0, 10_000);
        let intended = Summary::of(&rec.from_intended);
        assert_eq!(rec.received, 10_000);
        assert!(intended.max >= 49_000_000, "{intended:?}");
        // 500 of 10 000 requests (5 %) were caught in the stall: p99 is tens of ms.
        assert!(intended.p99 >= 10_000_000, "{intended:?}");
        assert!(intended.p90 < 1_000_000, "the stall is only 5 % of the run: {intended:?}");
    }

    #[test]
    fn a_back_pressure_stall_does_not_hide_from_the_intended_time() {
        // Same stall, but the sender is blocked too: requests due during the stall leave late, in a burst.
        // Measured from the actual send time they look fast (the stall hides); from the intended time, not.
        let mut sim = Sim::new((500_000_000, 550_000_000), true);
        let (rec, _) = run_open(&mut sim, 10_000.0, 10_000);
        let intended = Summary::of(&rec.from_intended);
        let sent = Summary::of(&rec.from_sent);
        assert_eq!(rec.received, 10_000);
        assert!(intended.max >= 49_000_000 && intended.p99 >= 10_000_000, "{intended:?}");
        assert!(sent.p99 < 1_000_000, "from the actual send time the stall is (wrongly) invisible: {sent:?}");
        assert!(rec.sent_late >= 400, "the generator noticed it fell behind: {}", rec.sent_late);
    }

    #[test]
    fn ping_pong_waits_for_each_reply() {
        let mut sim = Sim::new((u64::MAX, u64::MAX), false);
        let start = sim.now();
        let mut rec = Recorder::new(9, 1000, start, start, u64::MAX);
        ping_pong(&mut sim, &params(0.0, 1000), &mut rec, start, &mut |_, _| {}).unwrap();
        assert_eq!((rec.sent, rec.received), (1000, 1000));
        let gaps: Vec<u64> = sim.sends.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g >= 20_000), "one outstanding request at a time");
        let lat = Summary::of(&rec.from_sent);
        assert!(lat.p50 >= 20_000 && lat.p50 < 21_000, "{lat:?}");
    }

    #[test]
    fn ping_pong_counts_a_timeout_as_loss_and_goes_on() {
        let mut sim = Sim::new((u64::MAX, u64::MAX), false);
        sim.service_ns = 200_000_000; // every reply arrives after the 100 ms timeout
        let start = sim.now();
        let mut rec = Recorder::new(9, 3, start, start, u64::MAX);
        let mut p = params(0.0, 3);
        p.drain_ns = 0;
        ping_pong(&mut sim, &p, &mut rec, start, &mut |_, _| {}).unwrap();
        assert_eq!(rec.sent, 3);
        assert!(rec.lost() >= 1);
    }
}
