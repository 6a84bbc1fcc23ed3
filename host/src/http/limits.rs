//! Limits at the door: a token bucket per tenant (429 with Retry-After) and
//! a cap on requests in flight (503 at once rather than a queue).

use crate::config::RateLimit;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// Takes one token for `tenant`; `Err(seconds)` to wait when empty.
    pub fn check(&self, tenant: &str, limit: &RateLimit) -> Result<(), u64> {
        if limit.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap();
        let b = map.entry(tenant.to_string()).or_insert(Bucket {
            tokens: limit.burst.max(1.0),
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * limit.per_second;
        b.tokens = (b.tokens + refill).min(limit.burst.max(1.0));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / limit.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills() {
        let r = RateLimiter::default();
        let l = RateLimit {
            per_second: 1000.0,
            burst: 3.0,
        };
        assert!(r.check("t", &l).is_ok());
        assert!(r.check("t", &l).is_ok());
        assert!(r.check("t", &l).is_ok());
        assert_eq!(r.check("t", &l), Err(1));
        // Other tenants have their own bucket.
        assert!(r.check("u", &l).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(r.check("t", &l).is_ok());
        // Off.
        let off = RateLimit {
            per_second: 0.0,
            burst: 0.0,
        };
        for _ in 0..100 {
            assert!(r.check("t", &off).is_ok());
        }
    }
}
