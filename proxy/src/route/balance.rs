//! The balancer of one service port: power of two choices over peak-EWMA cost, with
//! consecutive-failure accrual that takes failing endpoints out for a growing penalty
//! and lets one probe back in when it lapses.
//!
//! A pick is O(1): two random endpoints, each behind its own small lock, compared by
//! latency estimate × (outstanding requests + 1). Nothing is queued in a shared task
//! (tower's `Balance` needs `&mut self` and so a `Buffer` worker, one more thread hop
//! per request); every app connection picks for itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rand::Rng;

use super::ewma::{PeakEwma, cost};
use crate::config::routes::FailureAccrual;

/// How an attempt at an endpoint ended, for its latency estimate and failure accrual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer that is not a failure.
    Success,
    /// A 5xx, gRPC `UNAVAILABLE`, a reset or a timed-out attempt.
    Failure,
    /// The connection or handshake was refused: out at once.
    Unreachable,
}

/// One endpoint's failure accrual (pure; the time is passed in).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Accrual {
    consecutive: u32,
    penalty: Duration,
    ejected_until: Option<Instant>,
    /// A probe is out: the penalty lapsed and one request was let through.
    probing: bool,
}

impl Accrual {
    /// Whether the endpoint takes requests at `now`: not ejected; once the penalty has
    /// lapsed, one request (the probe) until its outcome is known.
    pub(crate) fn available(&self, now: Instant) -> bool {
        match self.ejected_until {
            None => true,
            Some(until) => now >= until && !self.probing,
        }
    }

    /// Notes that a request goes to the endpoint at `now`; true when it is the probe
    /// (the first after a penalty lapsed).
    fn picked(&mut self, now: Instant) -> bool {
        let probe = self.ejected_until.is_some_and(|until| now >= until) && !self.probing;
        if probe {
            self.probing = true;
        }
        probe
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Whether `outcome` at `now` would take the endpoint out, if it may be.
    fn would_eject(&self, outcome: Outcome, policy: &FailureAccrual, now: Instant) -> bool {
        outcome != Outcome::Success
            && !self.is_ejected(now)
            && (outcome == Outcome::Unreachable
                || self.consecutive.saturating_add(1) >= policy.consecutive_failures
                || self.ejected_until.is_some())
    }

    /// Folds in an outcome; returns true when it takes the endpoint out now.
    /// `may_eject` is false when it is the last endpoint in service.
    pub(crate) fn record(
        &mut self,
        outcome: Outcome,
        policy: &FailureAccrual,
        may_eject: bool,
        now: Instant,
    ) -> bool {
        if outcome == Outcome::Success {
            *self = Self::default();
            return false;
        }
        let eject = may_eject && self.would_eject(outcome, policy, now);
        self.probing = false;
        self.consecutive = self.consecutive.saturating_add(1);
        if !eject {
            return false;
        }
        // A failed probe doubles the penalty, up to the maximum.
        self.penalty = match self.ejected_until {
            None => policy.min_penalty,
            Some(_) => (self.penalty * 2).min(policy.max_penalty),
        };
        self.ejected_until = Some(now + self.penalty);
        true
    }
}

/// One endpoint of a balanced service: where it is and what the balancer knows of it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    outstanding: AtomicUsize,
    state: Mutex<EndpointState>,
}

#[derive(Debug)]
struct EndpointState {
    latency: PeakEwma,
    accrual: Accrual,
}

impl Endpoint {
    fn new(addr: SocketAddr, now: Instant) -> Self {
        Self {
            addr,
            outstanding: AtomicUsize::new(0),
            state: Mutex::new(EndpointState {
                latency: PeakEwma::new(now),
                accrual: Accrual::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        // The state is two plain values; a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The endpoint's cost and whether failure accrual lets it take a request. An
    /// endpoint that has never answered (new to the balancer: a scale-up, a rollout)
    /// costs nothing while it has no request outstanding: it gets one probe at a time
    /// until its first answer, so that it is judged by its own latency soon, rather than
    /// waiting behind the pessimistic default, and is never flooded before that.
    fn cost_and_availability(&self, now: Instant) -> (f64, bool) {
        let outstanding = self.outstanding.load(Ordering::Relaxed);
        let state = self.state();
        let cost = if !state.latency.observed() && outstanding == 0 {
            0.0
        } else {
            cost(state.latency.estimate(now), outstanding)
        };
        (cost, state.accrual.available(now))
    }
}

/// A request on its way to an endpoint: counted as outstanding until it is dropped
/// (with its response body, for a routed request).
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
    /// This request is the probe of a lapsed penalty: until its answer's head (or its
    /// end), no other request may go there.
    probe: bool,
}

impl InFlight {
    pub(crate) fn endpoint(&self) -> SocketAddr {
        self.endpoint.addr
    }
}

impl InFlight {
    /// The probe has its answer's head: the endpoint answers, so it need not wait for a
    /// long body (a streaming call) before others may go there.
    fn probe_answered(&mut self) {
        if std::mem::take(&mut self.probe) {
            self.endpoint.state().accrual.probing = false;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
        // A probe that ended without an outcome (its request was given up) must not
        // keep the endpoint waiting on it; any other request leaves the flag alone.
        self.probe_answered();
    }
}

/// Counts a request as outstanding at `endpoint`, picked at `now`.
fn start(endpoint: Arc<Endpoint>, now: Instant) -> InFlight {
    endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
    let probe = endpoint.state().accrual.picked(now);
    InFlight {
        endpoint,
        started: Instant::now(),
        probe,
    }
}

/// Folds the time since `in_flight` was picked into its endpoint's latency estimate.
fn record_latency(in_flight: &InFlight) {
    let now = Instant::now();
    in_flight
        .endpoint
        .state()
        .latency
        .observe(now - in_flight.started, now);
}

/// How often the first of two endpoints wins, given their costs: in inverse proportion
/// to the square of its cost. The cheaper one wins most draws without winning all of
/// them: plain P2C (always the cheaper) starves whichever endpoint had the latest
/// latency spike for as long as the spike takes to decay, which at low concurrency skews
/// the spread between equal endpoints; weighted by squares, an endpoint with three times
/// the cost still gets 1 in 10 of its draws, and one with ten times, 1 in 101.
fn share_of_first(cost_a: f64, cost_b: f64) -> f64 {
    let (a, b) = (cost_a * cost_a, cost_b * cost_b);
    let sum = a + b;
    if sum > 0.0 && sum.is_finite() {
        (b / sum).clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// The balancer of one service port; shared by every app connection to it.
#[derive(Debug)]
pub(crate) struct Balancer {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    accrual: ArcSwap<FailureAccrual>,
}

impl Balancer {
    pub(crate) fn new(addrs: &[SocketAddr], accrual: FailureAccrual) -> Self {
        let now = Instant::now();
        Self {
            endpoints: ArcSwap::from_pointee(
                addrs
                    .iter()
                    .map(|&a| Arc::new(Endpoint::new(a, now)))
                    .collect(),
            ),
            accrual: ArcSwap::from_pointee(accrual),
        }
    }

    /// Follows a registry change: endpoints still listed keep what is known of them,
    /// new ones start fresh, removed ones take no new requests (live ones finish).
    pub(crate) fn update(&self, addrs: &[SocketAddr], accrual: FailureAccrual) {
        let now = Instant::now();
        let current = self.endpoints.load();
        let known: HashMap<SocketAddr, &Arc<Endpoint>> =
            current.iter().map(|e| (e.addr, e)).collect();
        let next = addrs
            .iter()
            .map(|addr| match known.get(addr) {
                Some(endpoint) => Arc::clone(endpoint),
                None => Arc::new(Endpoint::new(*addr, now)),
            })
            .collect();
        self.endpoints.store(Arc::new(next));
        self.accrual.store(Arc::new(accrual));
    }

    /// Picks the endpoint for one request, never one that has been `tried` for it while
    /// another is left, and counts the request as outstanding there.
    pub(crate) fn pick(&self, tried: &[SocketAddr]) -> Option<InFlight> {
        self.pick_with(&mut rand::thread_rng(), tried, Instant::now())
    }

    /// [`Balancer::pick`], unless the app dialed one endpoint's own address (transparent
    /// capture of a pod IP): then that endpoint, as a direct connection would have gone
    /// there. It is still counted, timed and accrued like any pick.
    pub(crate) fn pick_for(
        &self,
        pinned: Option<IpAddr>,
        tried: &[SocketAddr],
    ) -> Option<InFlight> {
        let Some(ip) = pinned else {
            return self.pick(tried);
        };
        let endpoint = self
            .endpoints
            .load()
            .iter()
            .find(|e| e.addr.ip() == ip)?
            .clone();
        Some(start(endpoint, Instant::now()))
    }

    /// How many endpoints a request `pinned` (or not) could go to.
    pub(crate) fn candidates(&self, pinned: Option<IpAddr>) -> usize {
        if pinned.is_some() { 1 } else { self.len() }
    }

    fn pick_with(
        &self,
        rng: &mut impl Rng,
        tried: &[SocketAddr],
        now: Instant,
    ) -> Option<InFlight> {
        let endpoints = self.endpoints.load();
        let fresh = |e: &&Arc<Endpoint>| !tried.contains(&e.addr);
        let chosen = match endpoints.len() {
            0 => return None,
            1 => endpoints[0].clone(),
            len => {
                // Two random distinct endpoints, a few draws to find available ones.
                let mut best: Option<&Arc<Endpoint>> = None;
                for _ in 0..4 {
                    let first = rng.gen_range(0..len);
                    let a = &endpoints[first];
                    let b = &endpoints[(first + rng.gen_range(1..len)) % len];
                    let usable = |e: &Arc<Endpoint>| {
                        let (cost, available) = e.cost_and_availability(now);
                        (available && !tried.contains(&e.addr)).then_some(cost)
                    };
                    best = match (usable(a), usable(b)) {
                        (Some(cost_a), Some(cost_b)) => {
                            Some(if rng.gen_bool(share_of_first(cost_a, cost_b)) {
                                a
                            } else {
                                b
                            })
                        }
                        (Some(_), None) => Some(a),
                        (None, Some(_)) => Some(b),
                        (None, None) => None,
                    };
                    if best.is_some() {
                        break;
                    }
                }
                match best {
                    Some(endpoint) => endpoint.clone(),
                    // Everything drawn was out: scan for any available endpoint, then
                    // for any at all (a request must go somewhere).
                    None => endpoints
                        .iter()
                        .filter(fresh)
                        .find(|e| e.cost_and_availability(now).1)
                        .or_else(|| endpoints.iter().find(fresh))
                        .unwrap_or(&endpoints[0])
                        .clone(),
                }
            }
        };
        Some(start(chosen, now))
    }

    /// Records how the attempt ended: its latency (unless it never reached the
    /// endpoint) and its failure accrual. Returns true when it took the endpoint out.
    pub(crate) fn finish(&self, in_flight: &InFlight, outcome: Outcome) -> bool {
        if outcome != Outcome::Unreachable {
            record_latency(in_flight);
        }
        self.settle(in_flight, outcome)
    }

    /// Records the latency of an answer, at its head: what the next pick compares.
    pub(crate) fn answered(&self, in_flight: &mut InFlight) {
        record_latency(in_flight);
        in_flight.probe_answered();
    }

    /// Folds the attempt's outcome into its endpoint's failure accrual (for a gRPC
    /// answer, possibly long after its head). Returns true when it took the endpoint out.
    pub(crate) fn settle(&self, in_flight: &InFlight, outcome: Outcome) -> bool {
        let now = Instant::now();
        let policy = **self.accrual.load();
        let endpoint = &in_flight.endpoint;
        let ejecting = endpoint.state().accrual.would_eject(outcome, &policy, now);
        // Only an outcome that would take the endpoint out looks at the others (the last
        // one in service stays), so an ordinary answer locks just its own endpoint.
        let may_eject = ejecting
            && self
                .endpoints
                .load()
                .iter()
                .filter(|e| !Arc::ptr_eq(e, endpoint))
                .any(|e| !e.state().accrual.is_ejected(now));
        endpoint
            .state()
            .accrual
            .record(outcome, &policy, may_eject, now)
    }

    /// The endpoints' addresses.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.load().iter().map(|e| e.addr).collect()
    }

    /// How many endpoints the service has.
    pub(crate) fn len(&self) -> usize {
        self.endpoints.load().len()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const POLICY: FailureAccrual = FailureAccrual {
        consecutive_failures: 3,
        min_penalty: Duration::from_secs(1),
        max_penalty: Duration::from_secs(4),
    };

    #[test]
    fn accrual_ejects_after_consecutive_failures_and_doubles_on_failed_probes() {
        use Outcome::*;
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (outcome, seconds after t0, may eject, ejected now?, out at that time + 1 ms?)
        let steps = [
            (Failure, 0, true, false),
            (Success, 0, true, false), // a success resets the count
            (Failure, 0, true, false),
            (Failure, 0, true, false),
            (Failure, 0, true, true),   // third in a row: out for 1 s
            (Failure, 2, true, true),   // failed probe: out for 2 s
            (Failure, 5, true, true),   // again: 4 s (the maximum)
            (Failure, 10, true, true),  // still 4 s
            (Success, 15, true, false), // a good probe: back, fully
            (Failure, 15, true, false),
        ];
        let mut accrual = Accrual::default();
        for (index, (outcome, at, may, ejects)) in steps.into_iter().enumerate() {
            let ejected = accrual.record(outcome, &POLICY, may, t0 + s(at));
            assert_eq!(ejected, ejects, "step {index}");
        }
        assert!(!accrual.is_ejected(t0 + s(15)));
        // The penalties: 1 s, then 2 s, then capped at 4 s.
        let mut accrual = Accrual::default();
        for _ in 0..3 {
            accrual.record(Failure, &POLICY, true, t0);
        }
        assert!(accrual.is_ejected(t0 + Duration::from_millis(999)));
        assert!(!accrual.is_ejected(t0 + s(1)));
        // Lapsed: one probe at a time.
        assert!(accrual.available(t0 + s(1)));
        assert!(accrual.picked(t0 + s(1)), "the first pick is the probe");
        assert!(!accrual.available(t0 + s(1)), "the probe is out");
        assert!(
            !accrual.picked(t0 + s(1)),
            "a pinned pick meanwhile is no probe"
        );
        accrual.record(Failure, &POLICY, true, t0 + s(1));
        assert!(
            accrual.is_ejected(t0 + s(2)),
            "a failed probe: out again, for 2 s"
        );
    }

    #[test]
    fn unreachable_is_out_at_once_but_never_the_last_endpoint() {
        let t0 = Instant::now();
        let mut accrual = Accrual::default();
        assert!(!accrual.record(Outcome::Unreachable, &POLICY, false, t0));
        assert!(accrual.available(t0));
        assert!(accrual.record(Outcome::Unreachable, &POLICY, true, t0));
        assert!(!accrual.available(t0));
    }

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 15008)))
            .collect()
    }

    fn observe(balancer: &Balancer, addr: SocketAddr, rtt: Duration, now: Instant) {
        let endpoints = balancer.endpoints.load();
        let endpoint = endpoints.iter().find(|e| e.addr == addr).unwrap();
        endpoint.state().latency.observe(rtt, now);
    }

    #[test]
    fn a_pinned_request_goes_to_its_endpoint_however_slow_and_counts_there() {
        let endpoints = addrs(3);
        let balancer = Balancer::new(&endpoints, POLICY);
        let now = Instant::now();
        observe(&balancer, endpoints[2], Duration::from_millis(500), now);
        for _ in 0..20 {
            let picked = balancer.pick_for(Some(endpoints[2].ip()), &[]).unwrap();
            assert_eq!(picked.endpoint(), endpoints[2]);
        }
        let held = balancer.pick_for(Some(endpoints[2].ip()), &[]).unwrap();
        let outstanding = |addr| {
            let endpoints = balancer.endpoints.load();
            let endpoint = endpoints.iter().find(|e| e.addr == addr).unwrap();
            endpoint.outstanding.load(Ordering::Relaxed)
        };
        assert_eq!(outstanding(endpoints[2]), 1);
        drop(held);
        assert_eq!(outstanding(endpoints[2]), 0);
        // The control: unpinned, the slow endpoint is rarely chosen.
        let unpinned = (0..200)
            .filter(|_| balancer.pick_for(None, &[]).unwrap().endpoint() == endpoints[2])
            .count();
        assert!(unpinned < 20, "{unpinned} of 200 went to the slow endpoint");
        assert!(balancer.pick_for(Some([10, 0, 0, 1].into()), &[]).is_none());
        assert_eq!(balancer.candidates(Some(endpoints[0].ip())), 1);
        assert_eq!(balancer.candidates(None), 3);
    }

    fn spread(balancer: &Balancer, picks: usize, now: Instant) -> HashMap<SocketAddr, usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = HashMap::new();
        for _ in 0..picks {
            let in_flight = balancer.pick_with(&mut rng, &[], now).unwrap();
            *counts.entry(in_flight.endpoint()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn the_cheaper_endpoint_wins_in_proportion_to_the_other_cost() {
        let cases = [
            (1.0, 1.0, 0.5),
            (1.0, 3.0, 0.9),
            (3.0, 1.0, 0.1),
            (0.0, 0.0, 0.5),
        ];
        for (a, b, expected) in cases {
            assert_eq!(share_of_first(a, b), expected, "{a} vs {b}");
        }
    }

    #[test]
    fn equal_endpoints_share_and_a_slow_one_gets_least() {
        let now = Instant::now();
        let balancer = Balancer::new(&addrs(3), POLICY);
        let counts = spread(&balancer, 3000, now);
        for count in counts.values() {
            assert!((800..1200).contains(count), "{counts:?}");
        }
        let slow = addrs(3)[2];
        for fast in &addrs(3)[..2] {
            observe(&balancer, *fast, Duration::from_millis(30), now);
        }
        observe(&balancer, slow, Duration::from_millis(300), now);
        let counts = spread(&balancer, 3000, now);
        // Ten times the cost: it wins about 1 in 101 of the two thirds of draws it is in.
        let slow_count = counts.get(&slow).copied().unwrap_or(0);
        assert!((5..60).contains(&slow_count), "{counts:?}");
    }

    #[test]
    fn outstanding_requests_spread_load_over_equal_endpoints() {
        let now = Instant::now();
        let balancer = Balancer::new(&addrs(2), POLICY);
        let mut rng = StdRng::seed_from_u64(1);
        // Held, not finished: each pick raises the cost of its endpoint.
        let held: Vec<InFlight> = (0..10)
            .map(|_| balancer.pick_with(&mut rng, &[], now).unwrap())
            .collect();
        let on_first = held.iter().filter(|f| f.endpoint() == addrs(2)[0]).count();
        assert!((3..=7).contains(&on_first), "{on_first} of 10");
    }

    #[test]
    fn ejected_and_tried_endpoints_are_skipped_while_others_remain() {
        let now = Instant::now();
        let all = addrs(3);
        let balancer = Balancer::new(&all, POLICY);
        let mut rng = StdRng::seed_from_u64(3);
        let first = balancer.pick_with(&mut rng, &[], now).unwrap();
        let out = first.endpoint();
        assert!(balancer.finish(&first, Outcome::Unreachable));
        for _ in 0..200 {
            let pick = balancer.pick_with(&mut rng, &[], now).unwrap();
            assert_ne!(pick.endpoint(), out);
        }
        let tried = [all[0], all[1]];
        let pick = balancer.pick_with(&mut rng, &tried, now).unwrap();
        assert_eq!(pick.endpoint(), all[2]);
        // Everything tried: a request still goes somewhere.
        assert!(balancer.pick_with(&mut rng, &all, now).is_some());
    }

    #[test]
    fn only_the_probe_frees_its_endpoint_and_it_does_so_at_its_answer() {
        let quick = FailureAccrual {
            consecutive_failures: 1,
            min_penalty: Duration::from_millis(5),
            max_penalty: Duration::from_millis(5),
        };
        let all = addrs(2);
        let balancer = Balancer::new(&all, quick);
        let pinned = Some(all[0].ip());
        let available = || {
            balancer.endpoints.load()[0]
                .cost_and_availability(Instant::now())
                .1
        };
        // A long request from before the ejection, still streaming.
        let earlier = balancer.pick_for(pinned, &[]).unwrap();
        let failed = balancer.pick_for(pinned, &[]).unwrap();
        assert!(balancer.finish(&failed, Outcome::Unreachable));
        assert!(!available());
        std::thread::sleep(Duration::from_millis(10));
        assert!(available(), "the penalty lapsed");
        let mut probe = balancer.pick_for(pinned, &[]).unwrap();
        assert!(!available(), "the probe is out");
        drop(earlier);
        assert!(!available(), "an older request ending does not free it");
        balancer.answered(&mut probe);
        assert!(available(), "the probe's answer does, before its body ends");
    }

    #[test]
    fn a_new_endpoint_is_probed_once_at_a_time_until_it_answers() {
        let now = Instant::now();
        let all = addrs(3);
        let balancer = Balancer::new(&all[..2], POLICY);
        for known in &all[..2] {
            observe(&balancer, *known, Duration::from_millis(1), now);
        }
        balancer.update(&all, POLICY);
        let mut rng = StdRng::seed_from_u64(5);
        let picks: Vec<InFlight> = (0..60)
            .map(|_| balancer.pick_with(&mut rng, &[], now).unwrap())
            .collect();
        let on_new = picks.iter().filter(|p| p.endpoint() == all[2]).count();
        // Its one probe while nothing answered; with that outstanding it costs the
        // default (30 times the others) and gets few more.
        assert!((1..=3).contains(&on_new), "{on_new} of 60");
        assert_eq!(
            picks[..4].iter().filter(|p| p.endpoint() == all[2]).count(),
            1,
            "probed at once"
        );
        // The control: an endpoint that answered slowly is not probed for free.
        drop(picks);
        observe(&balancer, all[2], Duration::from_millis(30), now);
        let later: usize = (0..60)
            .filter(|_| balancer.pick_with(&mut rng, &[], now).unwrap().endpoint() == all[2])
            .count();
        assert!(later <= 2, "{later} of 60");
    }

    #[test]
    fn updates_keep_what_is_known_of_remaining_endpoints() {
        let now = Instant::now();
        let all = addrs(3);
        let balancer = Balancer::new(&all, POLICY);
        observe(&balancer, all[0], Duration::from_millis(500), now);
        balancer.update(&[all[0], all[2]], POLICY);
        let endpoints = balancer.endpoints.load();
        assert_eq!(endpoints.len(), 2);
        let kept = endpoints[0].state().latency.estimate(now);
        assert!(kept > 4e8, "{kept}");
        assert!(endpoints[1].state().latency.estimate(now) < 4e7);
    }
}
