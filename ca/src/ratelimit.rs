//! A token bucket per caller address, so one noisy or hostile client cannot starve the
//! CA's signing capacity for everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::RateLimitConfig;

/// Beyond this many tracked callers, buckets that have refilled completely are dropped.
const PRUNE_ABOVE: usize = 10_000;

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
/// otherwise rotate through it to dodge the limit.
pub fn caller_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
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
}
