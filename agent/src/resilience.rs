//! Circuit breaking and outlier detection, per cluster. A cluster's limit bounds the
//! requests (HTTP) or connections (TCP) in flight to it: past it a request fails at once
//! with 503 / UNAVAILABLE, nothing waits. A host that answers `consecutive_5xx` failures in a
//! row (5xx or no connection) is ejected for `base_ejection × times ejected`, while at most
//! `max_ejection_percent` of the cluster's hosts are out (always at least one may be); when
//! every host is out, all are used again. Among the usable hosts, a request goes to the
//! next in turn or, under least request, to the less busy of two drawn at random (counting
//! each host's requests in flight until their responses end). A local rate limit is a token
//! bucket per inbound listener.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trellis_model::telemetry::Membership;

/// How a cluster picks one of its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Each in turn.
    RoundRobin,
    /// The one with the fewest requests in flight of `choices` drawn at random (Envoy's
    /// default: two, the power of two choices).
    LeastRequest { choices: u32 },
}

impl LbPolicy {
    /// Which of the usable endpoints gets a request, given each one's requests in flight
    /// (`outstanding`, not empty), the cluster's round-robin turn, and random indices into
    /// `outstanding` to draw from. Ties go to the first drawn.
    pub fn choose(self, outstanding: &[u32], turn: u64, mut draws: impl FnMut() -> usize) -> usize {
        let n = outstanding.len();
        match self {
            LbPolicy::RoundRobin => (turn % n as u64) as usize,
            LbPolicy::LeastRequest { choices } => {
                let mut best = draws() % n;
                for _ in 1..choices.max(1) {
                    let other = draws() % n;
                    if outstanding[other] < outstanding[best] {
                        best = other;
                    }
                }
                best
            }
        }
    }
}

/// When to eject a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_5xx: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Active health checks: failed or passed in a row, and the verdict. A host is healthy
    /// until checks say otherwise.
    checks_failed: u32,
    checks_passed: u32,
    failing: bool,
    /// Requests in flight to the host, for least-request balancing.
    active: u32,
}

/// How a cluster's hosts are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckPolicy {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// `GET <path>` over the cluster's mTLS; `None`: a TCP connect.
    pub http_path: Option<String>,
    /// Accepted statuses as `[start, end)` ranges; empty: 200 only.
    pub expected: Vec<(u16, u16)>,
}

impl HealthCheckPolicy {
    pub fn accepts(&self, status: u16) -> bool {
        if self.expected.is_empty() {
            return status == 200;
        }
        self.expected.iter().any(|(from, to)| (*from..*to).contains(&status))
    }
}

/// A map looked up on every request: foldhash takes a fraction of SipHash's instructions for
/// short keys, and these keys come from the configuration, never from a peer.
pub type RequestMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What one cluster's requests have seen.
#[derive(Debug, Default)]
pub struct ClusterHealth {
    in_flight: AtomicU32,
    hosts: Mutex<RequestMap<SocketAddr, Host>>,
    /// Round robin's next turn.
    turn: AtomicU64,
}

/// A request counted as in flight to one host until dropped (its response body ended).
pub struct HostRequest {
    health: Arc<ClusterHealth>,
    host: SocketAddr,
}

impl Drop for HostRequest {
    fn drop(&mut self) {
        if let Some(h) = self.health.hosts.lock().expect("not poisoned").get_mut(&self.host) {
            h.active = h.active.saturating_sub(1);
        }
    }
}

/// A request or connection counted against its cluster's limit until dropped.
pub struct InFlight(Arc<ClusterHealth>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ClusterHealth {
    /// Admits one more request, unless `limit` are in flight.
    pub fn admit(self: &Arc<Self>, limit: Option<u32>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        match limit {
            Some(max) if before >= max => None,
            _ => Some(guard),
        }
    }

    /// One of `usable` (not empty) for a request, as `lb` balances.
    pub fn choose(&self, lb: LbPolicy, usable: &[SocketAddr]) -> SocketAddr {
        if let [only] = usable {
            return *only;
        }
        let outstanding: Vec<u32> = {
            let state = self.hosts.lock().expect("not poisoned");
            usable.iter().map(|h| state.get(h).map_or(0, |s| s.active)).collect()
        };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut rng = rand::rng();
        usable[lb.choose(&outstanding, turn, || rand::Rng::random_range(&mut rng, 0..usable.len()))]
    }

    /// Counts a request to `host` as in flight until the guard is dropped.
    pub fn started(self: &Arc<Self>, host: SocketAddr) -> HostRequest {
        self.hosts.lock().expect("not poisoned").entry(host).or_default().active += 1;
        HostRequest { health: self.clone(), host }
    }

    /// The hosts not ejected at `now`; all of them when every one is (or none is, the
    /// usual case, which copies nothing).
    pub fn usable<'h>(&self, hosts: &'h [SocketAddr], now: Instant) -> Cow<'h, [SocketAddr]> {
        let state = self.hosts.lock().expect("not poisoned");
        let up = |h: &SocketAddr| {
            state.get(h).is_none_or(|s| !s.failing && s.ejected_until.is_none_or(|t| t <= now))
        };
        if hosts.iter().all(up) {
            return Cow::Borrowed(hosts);
        }
        let up: Vec<SocketAddr> = hosts.iter().copied().filter(up).collect();
        if up.is_empty() { Cow::Borrowed(hosts) } else { Cow::Owned(up) }
    }

    /// What the proxy sees of `hosts` at `now`, as Envoy's cluster gauges count it: an
    /// ejected host or one failing its health checks is not healthy (even while every host
    /// is out and all are used again).
    pub fn membership(&self, hosts: &[SocketAddr], now: Instant) -> Membership {
        let state = self.hosts.lock().expect("not poisoned");
        let (mut healthy, mut ejected) = (0, 0);
        for h in hosts {
            let s = state.get(h);
            let out = s.is_some_and(|s| s.ejected_until.is_some_and(|t| t > now));
            ejected += u64::from(out);
            healthy += u64::from(!out && s.is_none_or(|s| !s.failing));
        }
        Membership { total: hosts.len() as u64, healthy, degraded: 0, ejected }
    }

    /// Records one health check of `host`; returns its new verdict (`true`: failing) when it
    /// changed.
    pub fn checked(&self, policy: &HealthCheckPolicy, host: SocketAddr, ok: bool) -> Option<bool> {
        let mut state = self.hosts.lock().expect("not poisoned");
        let h = state.entry(host).or_default();
        if ok {
            h.checks_passed += 1;
            h.checks_failed = 0;
            if h.failing && h.checks_passed >= policy.healthy_threshold {
                h.failing = false;
                return Some(false);
            }
        } else {
            h.checks_failed += 1;
            h.checks_passed = 0;
            if !h.failing && h.checks_failed >= policy.unhealthy_threshold {
                h.failing = true;
                return Some(true);
            }
        }
        None
    }

    /// Records one answer of `host` (out of `total` hosts); returns whether it was ejected now.
    pub fn record(
        &self,
        policy: &OutlierPolicy,
        host: SocketAddr,
        failed: bool,
        total: usize,
        now: Instant,
    ) -> bool {
        let mut state = self.hosts.lock().expect("not poisoned");
        let ejected = state.values().filter(|h| h.ejected_until.is_some_and(|t| t > now)).count();
        let h = state.entry(host).or_default();
        if !failed {
            h.consecutive = 0;
            return false;
        }
        h.consecutive += 1;
        let room = ejected == 0 || (ejected + 1) * 100 <= total * policy.max_ejection_percent as usize;
        if h.consecutive < policy.consecutive_5xx || !room || h.ejected_until.is_some_and(|t| t > now) {
            return false;
        }
        h.consecutive = 0;
        h.ejections += 1;
        h.ejected_until = Some(now + policy.base_ejection * h.ejections);
        true
    }
}

/// A token bucket: `max` tokens, `per_fill` added every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub per_fill: u32,
    pub interval: Duration,
}

/// The bucket's state.
#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    tokens: u32,
    filled_at: Instant,
}

impl Bucket {
    pub fn new(limit: RateLimit, now: Instant) -> Bucket {
        Bucket { limit, tokens: limit.max, filled_at: now }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token if there is one (after the fills due at `now`).
    pub fn take(&mut self, now: Instant) -> bool {
        let fills = (now.saturating_duration_since(self.filled_at).as_nanos()
            / self.limit.interval.as_nanos()) as u64;
        if fills > 0 {
            let added = fills.saturating_mul(u64::from(self.limit.per_fill));
            self.tokens = (u64::from(self.tokens) + added).min(u64::from(self.limit.max)) as u32;
            self.filled_at += self.limit.interval * u32::try_from(fills).unwrap_or(u32::MAX);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: OutlierPolicy = OutlierPolicy {
        consecutive_5xx: 3,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 50,
    };

    #[test]
    fn a_host_failing_in_a_row_is_ejected_for_longer_each_time_and_comes_back() {
        let health = ClusterHealth::default();
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let t0 = Instant::now();
        assert!(!health.record(&POLICY, a, true, 2, t0));
        assert!(!health.record(&POLICY, a, false, 2, t0), "a success resets the count");
        assert!(!health.record(&POLICY, a, true, 2, t0));
        assert!(!health.record(&POLICY, a, true, 2, t0));
        assert!(health.record(&POLICY, a, true, 2, t0), "third failure in a row");
        assert_eq!(*health.usable(&[a, b], t0), [b]);
        // No more than half of two hosts: b stays in whatever it does.
        for _ in 0..5 {
            assert!(!health.record(&POLICY, b, true, 2, t0));
        }
        assert_eq!(*health.usable(&[a, b], t0 + Duration::from_secs(31)), [a, b], "back after 30 s");
        for _ in 0..3 {
            health.record(&POLICY, a, true, 2, t0 + Duration::from_secs(31));
        }
        assert_eq!(*health.usable(&[a, b], t0 + Duration::from_secs(80)), [b], "60 s the second time");
        assert_eq!(*health.usable(&[a], t0 + Duration::from_secs(80)), [a], "all out: all in");
        let seen = health.membership(&[a, b], t0 + Duration::from_secs(80));
        assert_eq!(seen, Membership { total: 2, healthy: 1, degraded: 0, ejected: 1 });
        let back = health.membership(&[a, b], t0 + Duration::from_secs(92));
        assert_eq!(back, Membership { total: 2, healthy: 2, degraded: 0, ejected: 0 });
    }

    #[test]
    fn health_checks_take_a_host_out_and_bring_it_back_by_their_thresholds() {
        let policy = HealthCheckPolicy {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            http_path: Some("/health".into()),
            expected: vec![],
        };
        let health = ClusterHealth::default();
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let now = Instant::now();
        assert_eq!(health.checked(&policy, a, false), None);
        assert_eq!(health.checked(&policy, a, false), None);
        assert_eq!(health.checked(&policy, a, false), Some(true), "three failures");
        assert_eq!(*health.usable(&[a, b], now), [b]);
        let seen = health.membership(&[a, b], now);
        assert_eq!(
            (seen.total, seen.healthy, seen.ejected, seen.unhealthy()),
            (2, 1, 0, 1),
            "failing, not ejected"
        );
        assert_eq!(health.checked(&policy, a, true), None);
        assert_eq!(health.checked(&policy, a, true), Some(false), "two passes");
        assert_eq!(*health.usable(&[a, b], now), [a, b]);
        assert!(policy.accepts(200) && !policy.accepts(204));
        let ranged = HealthCheckPolicy { expected: vec![(200, 300)], ..policy };
        assert!(ranged.accepts(204) && !ranged.accepts(503));
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let limit = RateLimit { max: 3, per_fill: 2, interval: Duration::from_secs(1) };
        let mut b = Bucket::new(limit, t0);
        assert_eq!((0..5).filter(|_| b.take(t0)).count(), 3, "the burst");
        assert!(!b.take(t0 + Duration::from_millis(999)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..5).filter(|_| b.take(t1)).count(), 2, "one fill");
        let t9 = t0 + Duration::from_secs(9);
        assert_eq!((0..5).filter(|_| b.take(t9)).count(), 3, "never above max");
    }

    #[test]
    fn least_request_steers_away_from_a_host_with_requests_in_flight_until_they_end() {
        let health = Arc::new(ClusterHealth::default());
        let (a, b): (SocketAddr, SocketAddr) =
            ("10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap());
        let lr = LbPolicy::LeastRequest { choices: 2 };
        let busy: Vec<HostRequest> = (0..3).map(|_| health.started(a)).collect();
        let to_a = (0..4_000).filter(|_| health.choose(lr, &[a, b]) == a).count();
        assert!((800..1_200).contains(&to_a), "a only when drawn twice: {to_a} of 4000");
        drop(busy);
        let to_a = (0..4_000).filter(|_| health.choose(lr, &[a, b]) == a).count();
        assert!((1_700..2_300).contains(&to_a), "even again once they ended: {to_a} of 4000");
        let rr = LbPolicy::RoundRobin;
        let turns: Vec<SocketAddr> = (0..4).map(|_| health.choose(rr, &[a, b])).collect();
        assert!(turns[0] != turns[1] && turns[0] == turns[2] && turns[1] == turns[3], "{turns:?}");
    }

    #[test]
    fn past_the_limit_requests_are_refused_until_one_ends() {
        let health = Arc::new(ClusterHealth::default());
        let one = health.admit(Some(2)).unwrap();
        let _two = health.admit(Some(2)).unwrap();
        assert!(health.admit(Some(2)).is_none());
        drop(one);
        assert!(health.admit(Some(2)).is_some());
        assert!(health.admit(None).is_some(), "no limit");
    }
}
