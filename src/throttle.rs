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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Principal;
use crate::config::{RateLimitConfig, RateLimitKey};

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
    pub fn check(&self, principal: &Principal, ip: IpAddr) -> Result<(), ThrottleError> {
        let key = match (self.key, principal) {
            (RateLimitKey::Principal, Principal::Anonymous(ip)) => client_key(*ip),
            (RateLimitKey::Principal, p) => p.id(),
            (RateLimitKey::Ip, _) => client_key(ip),
            (RateLimitKey::Trigger, _) => String::new(),
        };
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ThrottleError::RateLimited {
                trigger: self.trigger.clone(),
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

/// The rate-limit key of a client address: an IPv4 address, or the /64 network of an IPv6
/// one (a single subscriber usually holds a whole /64, so per-address keys would let one
/// client take 2^64 buckets).
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Why throttling refused a request (SPEC section 6). `crate::error` maps these to 429
/// `ResourceExhausted` and 503 `ResourceThrottled`, each with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ThrottleError {
    /// A trigger's rate limit.
    #[error("rate limit of trigger '{trigger}' exceeded")]
    RateLimited { trigger: String, retry_after_s: u64 },
    /// A function's `max_concurrency`.
    #[error("function '{function}' is at its max_concurrency of {max}")]
    FunctionBusy { function: String, max: usize },
    /// The node's `max_in_flight`.
    #[error("this node is at its limit of {max} executions")]
    NodeBusy { max: usize },
    /// The node is shutting down.
    #[error("this node is shutting down")]
    Draining,
    /// The connection's requests already hold `limits.connection_buffer_bytes` read ahead.
    #[error("this connection holds its limit of {max} bytes of request bodies read ahead")]
    ConnectionBuffered { max: usize },
}

impl ThrottleError {
    /// Whole seconds a client should wait before trying again.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            ThrottleError::RateLimited { retry_after_s, .. } => *retry_after_s,
            _ => 1,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            ThrottleError::RateLimited { .. } => "rate_limit",
            ThrottleError::FunctionBusy { .. } => "function_concurrency",
            ThrottleError::NodeBusy { .. } => "node_in_flight",
            ThrottleError::Draining => "draining",
            ThrottleError::ConnectionBuffered { .. } => "connection_buffer",
        }
    }
}

/// A counted capacity whose maximum can change while permits are out: a reload that
/// lowers it refuses new takers until enough permits come back, and one that raises it
/// admits more at once. Taking a slot is one compare-and-swap, no allocation, no waiting.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// Takes a slot if one is free.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < max).then_some(used + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    pub fn resize(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Acquire)
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The permits an admitted invocation holds until its guest is done.
#[derive(Debug)]
pub struct Admission {
    _function: Slot,
    _node: Slot,
}

/// The node's and every function's concurrency: one object for the life of the process.
/// A reload resizes it ([`Limits::resize`]); it is never rebuilt, so requests admitted
/// under the old configuration still count against the new one.
#[derive(Debug)]
pub struct Limits {
    node: Arc<Slots>,
    /// One entry per function name, shared by all its versions.
    functions: Mutex<HashMap<String, Arc<Slots>>>,
}

impl Limits {
    pub fn new(max_in_flight: usize) -> Arc<Limits> {
        Arc::new(Limits {
            node: Slots::new(max_in_flight),
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// Applies a (re)loaded configuration: the node's `max_in_flight` and each configured
    /// function's `max_concurrency`.
    pub fn resize(&self, max_in_flight: usize, functions: &[(String, usize)]) {
        self.node.resize(max_in_flight);
        for (name, max) in functions {
            self.function(name, *max).resize(*max);
        }
    }

    /// The slots of `function`, created with `max` the first time it is seen.
    fn function(&self, name: &str, max: usize) -> Arc<Slots> {
        let mut map = match self.functions.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Looked up by `&str` first: a name is allocated once, when first seen.
        if let Some(slots) = map.get(name) {
            return slots.clone();
        }
        map.entry(name.to_string())
            .or_insert_with(|| Slots::new(max))
            .clone()
    }

    /// Executions running now.
    pub fn in_flight(&self) -> usize {
        self.node.used()
    }

    /// Admits one invocation of `function` (whose own `max_concurrency` is `max` unless a
    /// configuration set it), or refuses at once: 429 for the function, 503 for the node.
    pub fn admit(&self, function: &str, max: usize) -> Result<Admission, ThrottleError> {
        let slots = self.function(function, max);
        let function_slot = slots
            .try_take()
            .ok_or_else(|| ThrottleError::FunctionBusy {
                function: function.to_string(),
                max: slots.max(),
            })?;
        let node_slot = self.node.try_take().ok_or(ThrottleError::NodeBusy {
            max: self.node.max(),
        })?;
        Ok(Admission {
            _function: function_slot,
            _node: node_slot,
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
            Err(ThrottleError::RateLimited { retry_after_s, .. }) => {
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
            Err(ThrottleError::RateLimited { retry_after_s, .. }) => {
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

    #[test]
    fn limits_resize_without_forgetting_admitted_work() {
        let limits = Limits::new(2);
        let a = limits.admit("f", 10).unwrap();
        let b = limits.admit("f", 10).unwrap();
        assert!(matches!(
            limits.admit("f", 10),
            Err(ThrottleError::NodeBusy { max: 2 })
        ));
        // A reload that lowers the node limit keeps counting what is running.
        limits.resize(1, &[("f".into(), 1)]);
        drop(a);
        assert!(matches!(
            limits.admit("f", 10),
            Err(ThrottleError::FunctionBusy { max: 1, .. })
        ));
        drop(b);
        let c = limits.admit("f", 10).unwrap();
        assert!(limits.admit("g", 10).is_err());
        drop(c);
        // Raising it admits more at once.
        limits.resize(3, &[("f".into(), 3)]);
        let held: Vec<_> = (0..3).map(|_| limits.admit("f", 10).unwrap()).collect();
        assert_eq!(limits.in_flight(), 3);
        assert!(limits.admit("g", 10).is_err());
        drop(held);
        assert_eq!(limits.in_flight(), 0);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for key in [RateLimitKey::Ip, RateLimitKey::Principal] {
            let (l, _) = limit(1, 1, key);
            l.check(&Principal::Anonymous(a), a).unwrap();
            assert!(l.check(&Principal::Anonymous(b), b).is_err(), "{key:?}");
            l.check(&Principal::Anonymous(other), other).unwrap();
        }
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), client_key(ip(1)));
    }
}
