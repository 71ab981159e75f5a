//! Send schedules: the intended departure time of every request, fixed before the run starts, so a stalled
//! sender or server cannot move it (coordinated omission).

use serde::{Deserialize, Serialize};

/// Inter-departure distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Constant gaps of 1/rate.
    #[default]
    Uniform,
    /// Exponential gaps with mean 1/rate (a Poisson arrival process).
    Poisson,
}

/// A small, fast, seedable generator (xorshift64*), so runs are reproducible from their seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        // splitmix64 step so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1].
    pub fn unit_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
}

/// Intended send times (ns after the start of the run) of consecutive requests.
#[derive(Debug, Clone)]
pub struct Schedule {
    period_ns: f64,
    dist: Distribution,
    rng: Rng,
    next: f64,
}

impl Schedule {
    /// A schedule at `rate` per second (must be positive).
    pub fn new(rate: f64, dist: Distribution, seed: u64) -> Schedule {
        assert!(rate > 0.0, "rate must be positive");
        Schedule { period_ns: 1e9 / rate, dist, rng: Rng::new(seed), next: 0.0 }
    }
}

impl Iterator for Schedule {
    type Item = u64;

    /// The next intended send time; the first is 0.
    fn next(&mut self) -> Option<u64> {
        let t = self.next;
        let gap = match self.dist {
            Distribution::Uniform => self.period_ns,
            Distribution::Poisson => -self.rng.unit_open0().ln() * self.period_ns,
        };
        self.next += gap;
        Some(t.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(dist: Distribution, rate: f64, n: usize) -> Vec<f64> {
        let times: Vec<u64> = Schedule::new(rate, dist, 42).take(n + 1).collect();
        times.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
    }

    #[test]
    fn uniform_gaps_are_constant() {
        let g = gaps(Distribution::Uniform, 250_000.0, 10_000);
        assert!(g.iter().all(|&x| (x - 4_000.0).abs() <= 1.0), "every gap is 4 us");
    }

    #[test]
    fn uniform_does_not_drift_with_fractional_periods() {
        let times: Vec<u64> = Schedule::new(300_000.0, Distribution::Uniform, 1).take(300_001).collect();
        assert!((times[300_000] as i64 - 1_000_000_000).abs() <= 1, "{}", times[300_000]);
    }

    #[test]
    fn poisson_gaps_are_exponential() {
        let rate = 100_000.0;
        let mean_ns = 1e9 / rate;
        let g = gaps(Distribution::Poisson, rate, 200_000);
        let n = g.len() as f64;
        let mean = g.iter().sum::<f64>() / n;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        assert!((mean / mean_ns - 1.0).abs() < 0.01, "mean gap {mean} vs {mean_ns}");
        // Exponential: standard deviation equals the mean (coefficient of variation 1).
        assert!((var.sqrt() / mean - 1.0).abs() < 0.02, "cv {}", var.sqrt() / mean);
        // Memorylessness check on the CDF: P(gap > mean) = 1/e, P(gap > 3 mean) = e^-3.
        for k in [1.0, 3.0] {
            let p = g.iter().filter(|&&x| x > k * mean_ns).count() as f64 / n;
            assert!((p - (-k).exp()).abs() < 0.005, "P(gap > {k} mean) = {p}");
        }
    }

    #[test]
    fn seeds_reproduce() {
        let a: Vec<u64> = Schedule::new(1e5, Distribution::Poisson, 7).take(100).collect();
        let b: Vec<u64> = Schedule::new(1e5, Distribution::Poisson, 7).take(100).collect();
        let c: Vec<u64> = Schedule::new(1e5, Distribution::Poisson, 8).take(100).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
