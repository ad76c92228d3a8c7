//! Which endpoint serves a request, and the passive health check.
//!
//! The choice is least in flight of two endpoints drawn at random (power
//! of two choices): nearly as even as asking every endpoint, at the cost
//! of two loads, and never a herd on the one that looked idlest. The
//! draw is a counter stepped atomically and mixed (splitmix64), so
//! picking takes no lock and allocates nothing; a [`Lease`] counts the
//! request in flight until it is dropped.
//!
//! Passive check: [`Lease::report`] counts an endpoint's consecutive
//! connect failures and 5xx answers; at `eject_after` it gets no requests
//! for `eject_for`, then it is tried again. A lone endpoint is never
//! ejected this way (as NGINX ignores `max_fails` for a single server):
//! with nowhere else to send, the client is better served by the
//! upstream's own answer than by a 503. The active check ([`super::health`])
//! takes an endpoint out until it passes again, lone or not.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Endpoint, Upstream, MAX_ENDPOINTS};

/// One request's hold on an endpoint: counted in flight while it lives.
pub(crate) struct Lease {
    upstream: Arc<Upstream>,
    index: usize,
}

impl Upstream {
    /// An available endpoint not in `tried` (a bit per endpoint index),
    /// the less loaded of two random ones; `None` when every endpoint is
    /// down, ejected or tried.
    pub(crate) fn pick(self: &Arc<Self>, tried: u64) -> Option<Lease> {
        let n = self.endpoints.len();
        let mut now = None;
        let mut ok = |i: usize| {
            let ep = &self.endpoints[i];
            if tried & (1 << i) != 0 || ep.down.load(Ordering::Relaxed) {
                return false;
            }
            let until = ep.ejected_until.load(Ordering::Relaxed);
            // The clock is read only when an ejection is pending.
            until == 0 || self.ejection_over(ep, until, *now.get_or_insert_with(|| self.now_ms()))
        };
        let index = if n == 1 {
            ok(0).then_some(0)?
        } else {
            let r = splitmix(self.draws.fetch_add(GOLDEN, Ordering::Relaxed));
            let a = (r % n as u64) as usize;
            let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            match (ok(a), ok(b)) {
                (true, true) => {
                    let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
                    if load(b) < load(a) {
                        b
                    } else {
                        a
                    }
                }
                (true, false) => a,
                (false, true) => b,
                (false, false) => (1..n).map(|k| (a + k) % n).find(|&i| ok(i))?,
            }
        };
        self.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            upstream: self.clone(),
            index,
        })
    }

    /// Whether a passive ejection ending at `until` is over at `now`; the
    /// first caller to see it end logs the endpoint's return.
    fn ejection_over(&self, ep: &Endpoint, until: u64, now: u64) -> bool {
        if until > now {
            return false;
        }
        if ep
            .ejected_until
            .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(
                upstream = %self.config.name,
                endpoint = %ep.address,
                "endpoint back in rotation after its ejection"
            );
        }
        true
    }

    /// How many retries a request that could not connect gets: one per
    /// other endpoint, at most two.
    pub(crate) fn max_retries(&self) -> usize {
        (self.endpoints.len() - 1).min(2)
    }
}

impl Lease {
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.upstream.endpoints[self.index]
    }

    /// This endpoint's bit, for [`Upstream::pick`]'s `tried`.
    pub(crate) fn bit(&self) -> u64 {
        1 << self.index
    }

    /// What the endpoint did with the request, for the passive check: it
    /// could not be connected to or answered 5xx (`failed`), or answered.
    pub(crate) fn report(&self, failed: bool) {
        let ep = self.endpoint();
        if !failed {
            // A load first: a healthy endpoint's counter is not written.
            if ep.failures.load(Ordering::Relaxed) != 0 {
                ep.failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let up = &self.upstream;
        let fails = ep.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let limit = up.config.eject_after;
        if limit == 0 || up.endpoints.len() < 2 || fails < limit {
            return;
        }
        ep.failures.store(0, Ordering::Relaxed);
        let for_ms = u64::try_from(up.config.eject_for.as_millis()).unwrap_or(u64::MAX);
        ep.ejected_until
            .store(up.now_ms().saturating_add(for_ms).max(1), Ordering::Relaxed);
        tracing::warn!(
            upstream = %up.config.name,
            endpoint = %ep.address,
            failures = fails,
            eject_for_ms = for_ms,
            "endpoint ejected after consecutive connect failures or 5xx answers"
        );
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint().in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const _: () = assert!(MAX_ENDPOINTS <= 64, "`tried` is one u64");

#[cfg(test)]
mod tests {
    use super::super::tests::config;
    use super::*;

    fn upstream(n: usize) -> Arc<Upstream> {
        let names: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 1000 + i)).collect();
        Arc::new(Upstream::new(&config(&names), 1))
    }

    #[test]
    fn the_less_loaded_of_two_is_picked_and_load_spreads() {
        let up = upstream(4);
        let mut held = Vec::new();
        for _ in 0..400 {
            held.push(up.pick(0).unwrap());
        }
        let loads: Vec<usize> = up
            .endpoints()
            .iter()
            .map(|e| e.in_flight.load(Ordering::Relaxed))
            .collect();
        // Least-in-flight of two keeps every endpoint within a few
        // requests of the mean (100).
        assert!(loads.iter().all(|&l| (90..=110).contains(&l)), "{loads:?}");
        drop(held);
        assert!(up
            .endpoints()
            .iter()
            .all(|e| e.in_flight.load(Ordering::Relaxed) == 0));
    }

    /// A lease on endpoint `index`, as [`Upstream::pick`] would make it.
    fn lease(up: &Arc<Upstream>, index: usize) -> Lease {
        up.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Lease {
            upstream: up.clone(),
            index,
        }
    }

    #[test]
    fn ejected_down_and_tried_endpoints_are_skipped() {
        let up = upstream(3);
        up.endpoints()[0].down.store(true, Ordering::Relaxed);
        for _ in 1..up.config.eject_after {
            lease(&up, 1).report(true);
        }
        // One success resets the count.
        lease(&up, 1).report(false);
        for _ in 1..up.config.eject_after {
            lease(&up, 1).report(true);
        }
        assert_eq!(up.view()["available"], 2);
        lease(&up, 1).report(true);
        assert_eq!(up.view()["available"], 1);
        assert_eq!(up.view()["endpoints"][1]["state"], "ejected");
        for _ in 0..50 {
            assert_eq!(
                up.pick(0).map(|l| l.index),
                Some(2),
                "only endpoint 2 is left"
            );
        }
        assert!(up.pick(0b100).is_none(), "all down, ejected or tried");
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected_passively() {
        let up = upstream(1);
        for _ in 0..20 {
            up.pick(0).unwrap().report(true);
        }
        assert!(up.pick(0).is_some());
        assert_eq!(up.max_retries(), 0);
    }
}
