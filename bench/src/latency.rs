//! Latency histograms (HdrHistogram, microseconds, three significant digits).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency a histogram holds; longer ones are recorded as this.
const MAX_MICROS: u64 = 600_000_000;

/// A latency distribution.
#[derive(Clone)]
pub(crate) struct Latency {
    hist: Histogram<u64>,
}

impl Latency {
    /// An empty distribution from 1 µs to 10 minutes.
    pub(crate) fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_MICROS, 3)
            .expect("1 µs to 10 min at 3 significant digits are valid bounds");
        Self { hist }
    }

    /// Adds one observation.
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.hist.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds every observation of `other`.
    pub(crate) fn merge(&mut self, other: &Latency) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds add");
    }

    /// How many observations it holds.
    pub(crate) fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency at quantile `q` (0 to 1).
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }
}

/// `p50 1.23 ms · p99 4.56 ms · p99.9 7.89 ms · max 9.99 ms (n = 1000)`.
impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count() == 0 {
            return write!(f, "no observations");
        }
        write!(
            f,
            "p50 {} · p99 {} · p99.9 {} · max {} (n = {})",
            millis(self.quantile(0.50)),
            millis(self.quantile(0.99)),
            millis(self.quantile(0.999)),
            millis(Duration::from_micros(self.hist.max())),
            self.count()
        )
    }
}

/// A duration in milliseconds with a precision that suits its size.
pub(crate) fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_the_recorded_values() {
        let mut latency = Latency::new();
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let p50 = latency.quantile(0.5).as_secs_f64() * 1000.0;
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert_eq!(latency.count(), 100);
        assert!(latency.to_string().contains("n = 100"));
    }

    #[test]
    fn extreme_values_are_clamped_not_lost() {
        let mut latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(86_400));
        assert_eq!(latency.count(), 2);
        assert!(latency.quantile(1.0) >= Duration::from_secs(599));
    }

    #[test]
    fn merged_histograms_hold_both() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(2));
        a.merge(&b);
        assert_eq!(a.count(), 2);
    }

    #[test]
    fn millis_picks_a_readable_precision() {
        assert_eq!(millis(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(millis(Duration::from_micros(123_400)), "123.4 ms");
        assert_eq!(millis(Duration::from_millis(2500)), "2.50 s");
        assert_eq!(Latency::new().to_string(), "no observations");
    }
}
