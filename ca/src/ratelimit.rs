//! A token bucket per caller address, so one noisy or hostile client cannot starve the
//! CA's signing capacity for everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Beyond this many tracked callers, buckets that have refilled completely are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// The per-caller token buckets of `POST /v1/svid` ([`RateLimitConfig`]), keyed by
/// [`caller_key`].
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// No caller tracked yet; each bucket starts full (`burst` tokens) at its caller's
    /// first request.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `caller`; `Err(seconds)` says when the next one is due.
    pub fn check(&self, caller: IpAddr, now: Instant) -> Result<(), u64> {
        let caller = caller_key(caller);
        let burst = f64::from(self.config.burst);
        let rate = self.config.per_second;
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + rate * now.duration_since(b.updated).as_secs_f64() < burst
            });
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil() as u64)
        }
    }
}

/// IPv6 callers are bucketed by /64: one host usually owns a whole /64 and could
/// otherwise rotate through it to dodge the limit. An IPv4 caller of a dual-stack listener
/// arrives as `::ffff:a.b.c.d`; it is its IPv4 address first, or every IPv4 caller would
/// share one /64 bucket.
pub fn caller_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

/// Open connections per caller address (IPv6 by /64), so one client cannot hold every
/// connection slot.
pub struct ConnectionsPerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionsPerIp {
    /// At most `limit` open connections per caller key (`limits.max_connections_per_ip`).
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Mutex::default(),
        }
    }

    /// A slot for one connection from `ip`, given back when the [`IpSlot`] drops; `None`
    /// when its address (IPv6: its /64) already holds `limit` connections.
    pub fn acquire(self: Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = caller_key(ip);
        let mut counts = self.counts.lock().expect("connection counter poisoned");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(IpSlot { owner: self, key })
    }
}

/// One connection's share of its address's limit; released on drop.
pub struct IpSlot {
    owner: Arc<ConnectionsPerIp>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .expect("connection counter poisoned");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill_per_caller() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1.0,
            burst: 2,
        });
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0).is_ok());
        assert_eq!(limiter.check(a, t0), Err(1));
        assert!(
            limiter.check(b, t0).is_ok(),
            "other callers keep their own bucket"
        );
        assert!(limiter.check(a, t0 + Duration::from_secs(1)).is_ok());

        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert!(limiter.check(v6a, t0).is_ok());
        assert!(limiter.check(v6b, t0).is_ok());
        assert!(limiter.check(v6a, t0).is_err(), "one /64, one bucket");
    }

    #[test]
    fn ipv4_callers_of_a_dual_stack_listener_keep_their_own_buckets() {
        let cases = [
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("::ffff:10.0.0.2", "10.0.0.2"),
            ("10.0.0.3", "10.0.0.3"),
            ("2001:db8::1", "2001:db8::"),
            ("::1", "::"),
        ];
        for (caller, key) in cases {
            let caller: IpAddr = caller.parse().unwrap();
            assert_eq!(
                caller_key(caller),
                key.parse::<IpAddr>().unwrap(),
                "{caller}"
            );
        }
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1.0,
            burst: 1,
        });
        let t0 = Instant::now();
        assert!(
            limiter
                .check("::ffff:10.0.0.1".parse().unwrap(), t0)
                .is_ok()
        );
        assert!(
            limiter
                .check("::ffff:10.0.0.1".parse().unwrap(), t0)
                .is_err()
        );
        assert!(
            limiter
                .check("::ffff:10.0.0.2".parse().unwrap(), t0)
                .is_ok(),
            "another IPv4 caller is not in the first one's bucket"
        );
        let slots = Arc::new(ConnectionsPerIp::new(1));
        let first = slots.clone().acquire("::ffff:10.0.0.1".parse().unwrap());
        assert!(first.is_some());
        assert!(
            slots.clone().acquire("10.0.0.1".parse().unwrap()).is_none(),
            "same caller"
        );
        assert!(
            slots
                .clone()
                .acquire("::ffff:10.0.0.2".parse().unwrap())
                .is_some()
        );
    }
}
