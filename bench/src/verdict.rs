//! Whether a comparison's figures can be trusted, and `compare`'s exit status.
//!
//! Three kinds of finding, each one line on the results page and on stderr:
//!
//! * `broken: ...` — a real contradiction: the benchmark itself is wrong, not the machine. A target or a run
//!   failed; counts that do not add up (sent != received + lost); or the two ping-pong clients (shunt-bench and
//!   `sockperf ping-pong`) disagree beyond [`CROSSCHECK_TOLERANCE`] in *every* back-to-back pair, in the same
//!   direction, by more than either client moves by itself against the same server start. Exit status 1.
//! * `noisy: ...` — the machine, not the benchmark: the clients disagree, but not consistently or not beyond their
//!   own slice-to-slice spread; one target's ping-pong p50s spread more than [`NOISY_SPREAD`] of their median;
//!   or other work was running when the comparison started. Exit status 0: rerun on a quiet machine.
//! * `limited: ...` — at those sweep points the generator fell behind its schedule: the figure is the generator's,
//!   not the server's. Exit status 0.
//!
//! No finding: every figure is trustworthy as far as these checks can tell. Exit status 0.

use std::fmt;

use serde::{Deserialize, Serialize};

/// shunt-bench's and sockperf's ping-pong p50 must agree within this fraction (relative to sockperf's).
pub const CROSSCHECK_TOLERANCE: f64 = 0.15;
/// A target whose ping-pong p50s (every slice of every repetition) spread more than this fraction of their median
/// ((max - min) / median) was measured on a noisy machine.
pub const NOISY_SPREAD: f64 = 0.25;
/// A 1-minute load average above this many runnable tasks per CPU at the start means other work shared the machine.
pub const BUSY_LOAD_PER_CPU: f64 = 0.25;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A contradiction in the benchmark: exit 1.
    Broken,
    /// The machine was too noisy for the figure: exit 0, with a warning.
    Noisy,
    /// The generator, not the server, limited the figure: exit 0, with a warning.
    Limited,
    /// A target marked `may_fail` (e.g. a peer this kernel cannot load) did not run: its row says why; exit 0.
    Unavailable,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Broken => "broken",
            Level::Noisy => "noisy",
            Level::Limited => "limited",
            Level::Unavailable => "unavailable",
        })
    }
}

/// One reason not to trust a figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// Why, in one line (without the level).
    pub text: String,
}

impl Finding {
    /// `level: text`, the line printed and written.
    pub fn line(&self) -> String {
        format!("{}: {}", self.level, self.text)
    }
}

/// The verdict in a few words for a line under a table: `ok`, or each level found, worst first, with what it means
/// for the figures (`limited (generator-limited figures marked ⚠)`); the findings themselves are on the page.
pub fn summary(findings: &[Finding]) -> String {
    let mut levels: Vec<Level> = findings.iter().map(|f| f.level).collect();
    levels.sort();
    levels.dedup();
    if levels.is_empty() {
        return "ok".into();
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    levels
        .iter()
        .map(|&l| match l {
            Level::Broken | Level::Noisy => {
                let n = count(l);
                format!("{l} ({n} finding{} on the page)", if n == 1 { "" } else { "s" })
            }
            Level::Limited => "limited (generator-limited figures marked ⚠)".into(),
            Level::Unavailable => "unavailable (targets that did not run say why)".into(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the cross-check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    /// Within tolerance.
    Agree,
    /// Beyond tolerance, but within what the machine's noise explains.
    Noisy,
    /// Beyond tolerance in every pair, the same way, beyond the noise: the two clients measure different things.
    Broken,
}

/// shunt-bench's ping-pong against `sockperf ping-pong`, run alternately against the same server start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossCheck {
    /// Back-to-back pairs (repetitions x alternations).
    pub pairs: usize,
    /// Per pair: shunt-bench p50 / sockperf p50 - 1.
    pub diffs: Vec<f64>,
    /// Median of `diffs`.
    pub median_diff: f64,
    /// The largest spread ((max - min) / median) of one client's p50s against one server start: how much a
    /// client moves by itself from one slice to the next.
    pub within_spread: f64,
    /// The conclusion.
    pub outcome: Agreement,
}

/// (max - min) / median of `v`, or None for fewer than two values or a median that is not positive.
pub fn spread(v: &[f64]) -> Option<f64> {
    if v.len() < 2 {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (median > 0.0).then(|| (s[n - 1] - s[0]) / median)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The cross-check over `reps`: per repetition (one server start), the (shunt-bench p50, sockperf p50) of each
/// alternation. None when there is no pair with both p50s positive.
pub fn crosscheck(reps: &[Vec<(f64, f64)>]) -> Option<CrossCheck> {
    let pairs: Vec<(f64, f64)> = reps.iter().flatten().copied().filter(|&(_, s)| s > 0.0).collect();
    if pairs.is_empty() {
        return None;
    }
    let diffs: Vec<f64> = pairs.iter().map(|&(b, s)| b / s - 1.0).collect();
    let median_diff = median(&diffs);
    let within_spread = reps
        .iter()
        .flat_map(|rep| {
            let b: Vec<f64> = rep.iter().map(|p| p.0).collect();
            let s: Vec<f64> = rep.iter().map(|p| p.1).collect();
            [spread(&b), spread(&s)]
        })
        .flatten()
        .fold(0.0, f64::max);
    let outcome = if median_diff.abs() <= CROSSCHECK_TOLERANCE {
        Agreement::Agree
    } else {
        let consistent = diffs.len() >= 2
            && diffs.iter().all(|d| d.abs() > CROSSCHECK_TOLERANCE && d.signum() == median_diff.signum());
        if consistent && median_diff.abs() > within_spread {
            Agreement::Broken
        } else {
            Agreement::Noisy
        }
    };
    Some(CrossCheck { pairs: diffs.len(), diffs, median_diff, within_spread, outcome })
}

/// What one target's rounds showed, for [`findings`].
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Target name.
    pub name: String,
    /// shunt-bench ping-pong p50 (µs) of every slice of every repetition.
    pub pp_p50_us: Vec<f64>,
    /// The sockperf cross-check, where the target speaks sockperf's protocol.
    pub crosscheck: Option<CrossCheck>,
    /// Sweep rates at which the generator fell behind.
    pub behind_rates: Vec<f64>,
    /// Failures ("rep N: what"), each a `broken` finding.
    pub errors: Vec<String>,
    /// Counts that contradict each other ("rep N: what"), each a `broken` finding.
    pub contradictions: Vec<String>,
    /// Other figures the generator limited (a CPU-phase run that fell behind, dnsperf below its rate), each a
    /// `limited` finding.
    pub limited: Vec<String>,
    /// Failures of a target that may fail on this machine (`may_fail`), each an `unavailable` finding.
    pub unavailable: Vec<String>,
}

fn pct(x: f64) -> String {
    format!("{:+.1} %", x * 100.0)
}

/// Every finding, worst first. `load_at_start`: the 1-minute load average and the CPU count when the comparison
/// started.
pub fn findings(targets: &[Evidence], load_at_start: Option<(f64, usize)>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut push = |level, text: String| out.push(Finding { level, text });
    for t in targets {
        for e in &t.errors {
            push(Level::Broken, format!("{}: {e}", t.name));
        }
        for c in &t.contradictions {
            push(Level::Broken, format!("{}: {c}", t.name));
        }
        if let Some(c) = &t.crosscheck {
            let pairs = c.diffs.iter().map(|&d| pct(d)).collect::<Vec<_>>().join(", ");
            match c.outcome {
                Agreement::Agree => {}
                Agreement::Broken => push(
                    Level::Broken,
                    format!(
                        "{}: shunt-bench and sockperf ping-pong p50 disagree by {} (median of {} back-to-back pairs: \
                         {pairs}; tolerance {:.0} %), the same way in every pair and beyond either client's own \
                         spread ({:.0} %): the two clients measure different things",
                        t.name,
                        pct(c.median_diff),
                        c.pairs,
                        CROSSCHECK_TOLERANCE * 100.0,
                        c.within_spread * 100.0
                    ),
                ),
                Agreement::Noisy => push(
                    Level::Noisy,
                    format!(
                        "{}: shunt-bench and sockperf ping-pong p50 differ by {} (median of {} back-to-back pairs: \
                         {pairs}; tolerance {:.0} %), but not in every pair the same way or not beyond a client's own \
                         spread against one server start ({:.0} %): the machine, not the benchmark",
                        t.name,
                        pct(c.median_diff),
                        c.pairs,
                        CROSSCHECK_TOLERANCE * 100.0,
                        c.within_spread * 100.0
                    ),
                ),
            }
        }
        if let Some(s) = spread(&t.pp_p50_us).filter(|&s| s > NOISY_SPREAD) {
            let lo = t.pp_p50_us.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = t.pp_p50_us.iter().copied().fold(0.0, f64::max);
            push(
                Level::Noisy,
                format!(
                    "{}: ping-pong p50 ranged {lo:.2}-{hi:.2} µs over {} slices (spread {:.0} % of the median > {:.0} %)",
                    t.name,
                    t.pp_p50_us.len(),
                    s * 100.0,
                    NOISY_SPREAD * 100.0
                ),
            );
        }
        for l in &t.limited {
            push(Level::Limited, format!("{}: {l}", t.name));
        }
        for u in &t.unavailable {
            push(Level::Unavailable, format!("{}: {u}", t.name));
        }
        if !t.behind_rates.is_empty() {
            let rates = t.behind_rates.iter().map(|r| format!("{:.0}k", r / 1e3)).collect::<Vec<_>>().join(", ");
            push(
                Level::Limited,
                format!(
                    "{}: the generator, not the server, is the limit at {rates} req/s (sweep points marked ⚠)",
                    t.name
                ),
            );
        }
    }
    if let Some((load, cpus)) = load_at_start {
        if load > BUSY_LOAD_PER_CPU * cpus.max(1) as f64 {
            push(
                Level::Noisy,
                format!(
                    "load average {load:.2} at the start on {cpus} CPU(s) (> {:.2}): other work shared the machine",
                    BUSY_LOAD_PER_CPU * cpus.max(1) as f64
                ),
            );
        }
    }
    out.sort_by_key(|f| f.level);
    out
}

/// The exit status: 1 when anything is broken, else 0 (noisy and limited figures are warnings).
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.level == Level::Broken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_each_level_worst_first() {
        assert_eq!(summary(&[]), "ok");
        let f = |level, text: &str| Finding { level, text: text.into() };
        let found = [f(Level::Limited, "a"), f(Level::Noisy, "b"), f(Level::Limited, "c"), f(Level::Unavailable, "d")];
        assert_eq!(
            summary(&found),
            "noisy (1 finding on the page), limited (generator-limited figures marked ⚠), unavailable (targets that \
             did not run say why)"
        );
        assert_eq!(summary(&[f(Level::Broken, "x"), f(Level::Broken, "y")]), "broken (2 findings on the page)");
    }

    #[test]
    fn spreads() {
        assert_eq!(spread(&[5.0]), None);
        assert_eq!(spread(&[4.0, 6.0]), Some(0.4));
        assert!((spread(&[5.0, 6.0, 7.5]).unwrap() - 2.5 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn clients_within_tolerance_agree() {
        let c = crosscheck(&[vec![(6.0, 6.5), (6.2, 6.4)], vec![(7.0, 7.4), (6.9, 7.5)]]).unwrap();
        assert_eq!((c.pairs, c.outcome), (4, Agreement::Agree));
    }

    #[test]
    fn a_consistent_disagreement_beyond_the_noise_is_broken() {
        // shunt-bench reports half the round trip, say: -50 % in every pair; each client steady within 5 %.
        let c = crosscheck(&[vec![(3.0, 6.0), (3.1, 6.2)], vec![(3.6, 7.0), (3.5, 7.1)]]).unwrap();
        assert_eq!(c.outcome, Agreement::Broken, "{c:?}");
        assert!((c.median_diff + 0.5).abs() < 0.02);
    }

    #[test]
    fn a_disagreement_the_noise_explains_is_noisy() {
        // Beyond tolerance on median, but one pair agrees: not consistent.
        let c = crosscheck(&[vec![(5.0, 6.5), (6.4, 6.5)], vec![(5.0, 6.6), (5.2, 6.5)]]).unwrap();
        assert_eq!(c.outcome, Agreement::Noisy, "{c:?}");
        // Consistent, but each client moves more than that by itself against one server start.
        let c = crosscheck(&[vec![(5.0, 6.5), (8.0, 10.0)], vec![(5.0, 6.2), (7.5, 9.0)]]).unwrap();
        assert!(c.diffs.iter().all(|d| *d < -CROSSCHECK_TOLERANCE), "{c:?}");
        assert_eq!(c.outcome, Agreement::Noisy, "{c:?}");
        // A single pair can never prove a contradiction.
        assert_eq!(crosscheck(&[vec![(3.0, 6.0)]]).unwrap().outcome, Agreement::Noisy);
        assert!(crosscheck(&[vec![(3.0, 0.0)]]).is_none());
    }

    #[test]
    fn exit_rule_and_order() {
        let quiet = Evidence { name: "a".into(), pp_p50_us: vec![6.0, 6.2, 6.1], ..Default::default() };
        assert!(findings(std::slice::from_ref(&quiet), Some((0.1, 2))).is_empty());
        assert_eq!(exit_code(&[]), 0);

        let noisy =
            Evidence { name: "b".into(), pp_p50_us: vec![5.0, 7.6], behind_rates: vec![200e3], ..quiet.clone() };
        let f = findings(&[quiet.clone(), noisy], Some((1.9, 2)));
        assert_eq!(f.iter().map(|f| f.level).collect::<Vec<_>>(), vec![Level::Noisy, Level::Noisy, Level::Limited]);
        assert!(f[0].line().starts_with("noisy: b: ping-pong p50 ranged 5.00-7.60"), "{}", f[0].line());
        assert!(f[1].line().contains("load average 1.90"), "{}", f[1].line());
        assert!(f[2].line().contains("the generator, not the server, is the limit at 200k"), "{}", f[2].line());
        assert_eq!(exit_code(&f), 0);

        let broken = Evidence {
            name: "c".into(),
            crosscheck: crosscheck(&[vec![(3.0, 6.0), (3.1, 6.2)]]),
            errors: vec!["rep 1: did not answer".into()],
            ..quiet
        };
        let f = findings(&[broken], None);
        assert_eq!(f.iter().map(|f| f.level).collect::<Vec<_>>(), vec![Level::Broken, Level::Broken]);
        assert_eq!(f[0].line(), "broken: c: rep 1: did not answer");
        assert!(f[1].line().contains("disagree by -50.0 %"), "{}", f[1].line());
        assert_eq!(exit_code(&f), 1);
    }
}
