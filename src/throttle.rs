//! Throttling (SPEC section 6): per-trigger rate limits (429), each function's concurrency
//! cap (429) and the node's in-flight cap (503).
//!
//! Rate limits are GCRA limiters from `governor`, keyed by principal, client IP or trigger,
//! generic over governor's `Clock` so tests drive them with a fake clock. Keyed state is kept
//! bounded by [`RateLimit::sweep`] (run every few seconds by the server), which drops every
//! key whose bucket has refilled: a key costs memory only while it is being limited.
//!
//! Permits are taken before any instance is built and are released when the guest is done,
//! on every path (success, trap, timeout, client disconnect), because they are owned by the
//! task that runs the guest. A refusal is a failed `try_acquire`: no allocation, no waiting.

use std::net::IpAddr;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::config::{RateLimitConfig, RateLimitKey};
use crate::error::GatewayError;
use crate::runtime::Function;

type Keyed<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A trigger's rate limit.
pub struct RateLimit<C: Clock + Clone = DefaultClock> {
    limiter: Keyed<C>,
    key: RateLimitKey,
    clock: C,
    trigger: String,
}

impl<C: Clock + Clone> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("trigger", &self.trigger)
            .field("key", &self.key)
            .finish()
    }
}

impl RateLimit<DefaultClock> {
    pub fn new(trigger: &str, config: &RateLimitConfig) -> Self {
        Self::with_clock(trigger, config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    pub fn with_clock(trigger: &str, config: &RateLimitConfig, clock: C) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        RateLimit {
            limiter: RateLimiter::dashmap_with_clock(quota, clock.clone()),
            key: config.key,
            clock,
            trigger: trigger.to_string(),
        }
    }

    /// Takes one cell for this request's key, or refuses with 429 and an honest
    /// `Retry-After` (whole seconds until a request would be allowed, at least 1).
    pub fn check(&self, principal: &Principal, ip: IpAddr) -> Result<(), GatewayError> {
        let key = match self.key {
            RateLimitKey::Principal => principal.id(),
            RateLimitKey::Ip => ip.to_string(),
            RateLimitKey::Trigger => String::new(),
        };
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            GatewayError::ResourceExhausted {
                message: format!("rate limit of trigger '{}' exceeded", self.trigger),
                retry_after_s: secs.max(1),
            }
        })
    }

    /// Forgets keys whose bucket is full again; returns how many keys remain.
    pub fn sweep(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }

    /// Keys currently tracked.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

/// The permits an admitted invocation holds until its guest is done.
#[derive(Debug)]
pub struct Admission {
    _function: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// Node-wide admission state.
#[derive(Debug)]
pub struct NodeLimiter {
    in_flight: Arc<Semaphore>,
    max: usize,
}

impl NodeLimiter {
    pub fn new(max_in_flight: usize) -> Self {
        NodeLimiter {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max: max_in_flight,
        }
    }

    /// Executions running now.
    pub fn in_flight(&self) -> usize {
        self.max - self.in_flight.available_permits()
    }

    /// Admits one invocation of `function`, or refuses at once.
    pub fn admit(&self, function: &Function) -> Result<Admission, GatewayError> {
        let function_permit = function.permits.clone().try_acquire_owned().map_err(|_| {
            GatewayError::ResourceExhausted {
                message: format!(
                    "function '{}' is at its max_concurrency of {}",
                    function.name, function.config.max_concurrency
                ),
                retry_after_s: 1,
            }
        })?;
        let node_permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            GatewayError::ResourceThrottled {
                message: format!("this node is at its limit of {} executions", self.max),
                retry_after_s: 1,
            }
        })?;
        Ok(Admission {
            _function: function_permit,
            _node: node_permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limit(
        per_second: u32,
        burst: u32,
        key: RateLimitKey,
    ) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let config = RateLimitConfig {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            key,
        };
        (RateLimit::with_clock("t", &config, clock.clone()), clock)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn user(name: &str) -> Principal {
        Principal::User(name.into())
    }

    #[test]
    fn admits_exactly_burst_then_refuses_with_retry_after() {
        let (l, _) = limit(2, 5, RateLimitKey::Principal);
        for _ in 0..5 {
            l.check(&user("a"), ip(1)).unwrap();
        }
        match l.check(&user("a"), ip(1)) {
            Err(GatewayError::ResourceExhausted { retry_after_s, .. }) => {
                assert_eq!(retry_after_s, 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refills_at_the_configured_rate() {
        let (l, clock) = limit(2, 2, RateLimitKey::Principal);
        l.check(&user("a"), ip(1)).unwrap();
        l.check(&user("a"), ip(1)).unwrap();
        assert!(l.check(&user("a"), ip(1)).is_err());
        // 2 per second: one cell every 500 ms.
        clock.advance(Duration::from_millis(499));
        assert!(l.check(&user("a"), ip(1)).is_err());
        clock.advance(Duration::from_millis(1));
        l.check(&user("a"), ip(1)).unwrap();
        assert!(l.check(&user("a"), ip(1)).is_err());
        clock.advance(Duration::from_secs(10));
        l.check(&user("a"), ip(1)).unwrap();
        l.check(&user("a"), ip(1)).unwrap();
        assert!(l.check(&user("a"), ip(1)).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let (l, _) = limit(1, 1, RateLimitKey::Trigger);
        l.check(&user("a"), ip(1)).unwrap();
        // Slow rate: 1 per second, so the wait is about 1 s.
        match l.check(&user("b"), ip(2)) {
            Err(GatewayError::ResourceExhausted { retry_after_s, .. }) => {
                assert_eq!(retry_after_s, 1)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keys_are_independent_by_kind() {
        let (by_principal, _) = limit(1, 1, RateLimitKey::Principal);
        by_principal.check(&user("a"), ip(1)).unwrap();
        by_principal.check(&user("b"), ip(1)).unwrap();
        assert!(by_principal.check(&user("a"), ip(2)).is_err());

        let (by_ip, _) = limit(1, 1, RateLimitKey::Ip);
        by_ip.check(&user("a"), ip(1)).unwrap();
        by_ip.check(&user("a"), ip(2)).unwrap();
        assert!(by_ip.check(&user("b"), ip(1)).is_err());

        let (by_trigger, _) = limit(1, 1, RateLimitKey::Trigger);
        by_trigger.check(&user("a"), ip(1)).unwrap();
        assert!(by_trigger.check(&user("b"), ip(2)).is_err());
    }

    #[test]
    fn keyed_state_is_swept_once_buckets_refill() {
        let (l, clock) = limit(10, 10, RateLimitKey::Ip);
        for i in 0..=255u8 {
            l.check(&Principal::Anonymous(ip(i)), ip(i)).unwrap();
        }
        assert_eq!(l.keys(), 256);
        // Half a second later no bucket is full yet: nothing can be forgotten.
        clock.advance(Duration::from_millis(50));
        assert_eq!(l.sweep(), 256);
        // Once every bucket has refilled, every key goes.
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.sweep(), 0);
    }
}
