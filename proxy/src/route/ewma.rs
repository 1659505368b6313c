//! Peak-EWMA latency: an estimate of how long an endpoint takes to answer that jumps up
//! at once on a slow answer and decays back smoothly (so one slow answer weighs at once,
//! and an endpoint that has been quiet drifts towards "fast" and gets probed again).
//! Pure: every call is given the time.

use std::time::{Duration, Instant};

/// The estimate an endpoint starts with, before it has answered anything: about a
/// cross-zone round trip, so a new endpoint is tried but not flooded.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);

/// How fast old observations fade: after `DECAY`, an observation weighs 1/e (Linkerd's
/// default; 2 s was measured to skew the spread between equal endpoints on a busy node).
pub(crate) const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's latency estimate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeakEwma {
    /// Nanoseconds.
    estimate: f64,
    updated: Instant,
    /// False until the first answer, which replaces the default outright.
    observed: bool,
}

impl PeakEwma {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            estimate: DEFAULT_RTT.as_nanos() as f64,
            updated: now,
            observed: false,
        }
    }

    /// Folds in one observed latency `rtt` at `now`: a peak replaces the estimate, a
    /// faster answer moves it by the weight the elapsed time gives.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if !self.observed || rtt > self.estimate {
            self.observed = true;
            self.estimate = rtt;
        } else {
            let weight = self.decay_weight(now);
            self.estimate = self.estimate * weight + rtt * (1.0 - weight);
        }
        self.updated = now;
    }

    /// True once an answer replaced the default.
    pub(crate) fn observed(&self) -> bool {
        self.observed
    }

    /// The estimate at `now`, decayed towards zero for the time without observations.
    pub(crate) fn estimate(&self, now: Instant) -> f64 {
        self.estimate * self.decay_weight(now)
    }

    fn decay_weight(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_nanos() as f64;
        (-elapsed / DECAY.as_nanos() as f64).exp()
    }
}

/// The balancer's cost of sending one more request to an endpoint: its latency estimate
/// weighted by the requests already waiting on it (so a fast endpoint with a queue loses
/// to a slightly slower idle one).
pub(crate) fn cost(estimate: f64, outstanding: usize) -> f64 {
    estimate * (outstanding as f64 + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_peak_replaces_the_estimate_and_fast_answers_pull_it_down_gradually() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(start);
        // The first answer replaces the default, even when faster.
        ewma.observe(2 * MS, start);
        assert_eq!(ewma.estimate(start), (2 * MS).as_nanos() as f64);
        ewma.observe(100 * MS, start);
        assert_eq!(ewma.estimate(start), (100 * MS).as_nanos() as f64);
        // One fast answer a second later moves it by about a tenth of the way.
        let later = start + Duration::from_secs(1);
        ewma.observe(10 * MS, later);
        let ms = ewma.estimate(later) / 1e6;
        assert!((90.0..92.0).contains(&ms), "{ms}");
        // Many fast answers bring it close to them.
        let mut now = later;
        for _ in 0..100 {
            now += Duration::from_secs(1);
            ewma.observe(10 * MS, now);
        }
        let ms = ewma.estimate(now) / 1e6;
        assert!((10.0..11.0).contains(&ms), "{ms}");
    }

    #[test]
    fn quiet_endpoints_decay_towards_zero() {
        let start = Instant::now();
        let mut ewma = PeakEwma::new(start);
        ewma.observe(50 * MS, start);
        let after = ewma.estimate(start + DECAY);
        let expected = (50 * MS).as_nanos() as f64 / std::f64::consts::E;
        assert!((after - expected).abs() < 1.0, "{after} vs {expected}");
    }

    #[test]
    fn outstanding_requests_weigh_on_the_cost() {
        let cases = [
            (10.0, 0, 10.0),
            (10.0, 1, 20.0),
            (10.0, 4, 50.0),
            (0.0, 9, 0.0),
        ];
        for (estimate, outstanding, expected) in cases {
            assert_eq!(
                cost(estimate, outstanding),
                expected,
                "{estimate} {outstanding}"
            );
        }
    }
}
