//! Exponential backoff with jitter: how long a member whose connection
//! failed is left alone, and how long a retry waits when every member has
//! already been tried.

use std::time::Duration;

use super::rng::Rng;

/// Exponential backoff with jitter: after `n` failures in a row the delay
/// is `min(cap, base × 2^(n-1))`, of which a random half is taken off
/// ("equal jitter": the delay is between half of it and all of it), so
/// that callers who saw the same failure do not come back in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// The default first delay of a member's connection backoff: 100 ms.
    pub const CONNECT_BASE: Duration = Duration::from_millis(100);
    /// The default longest delay of a member's connection backoff: 10 s.
    pub const CONNECT_CAP: Duration = Duration::from_secs(10);
    /// The default first delay before a retry on a member already tried
    /// by the same call: 10 ms.
    pub const RETRY_BASE: Duration = Duration::from_millis(10);
    /// The default longest delay before a retry on a member already
    /// tried: 1 s.
    pub const RETRY_CAP: Duration = Duration::from_secs(1);

    /// A backoff from `base` (the first delay) doubling up to `cap` (a
    /// `cap` below `base` is raised to it).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
        }
    }

    /// The default backoff of a member whose lookup or connection failed
    /// ([`Backoff::CONNECT_BASE`], [`Backoff::CONNECT_CAP`]).
    pub fn connect() -> Self {
        Self::new(Self::CONNECT_BASE, Self::CONNECT_CAP)
    }

    /// The default delay before a retry on a member the call already
    /// tried ([`Backoff::RETRY_BASE`], [`Backoff::RETRY_CAP`]).
    pub fn retry() -> Self {
        Self::new(Self::RETRY_BASE, Self::RETRY_CAP)
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The longest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay before the next try, after `failures` failures in a row
    /// (at least 1), before jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// The jittered delay after `failures` failures in a row: between
    /// half of [`Backoff::ceiling`] and all of it.
    pub(crate) fn delay(&self, failures: u32, rng: &Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(rng.unit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_inside_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_secs(1));
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
        let rng = Rng::new();
        for n in 1..10 {
            let d = b.delay(n, &rng);
            assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{n}: {d:?}");
        }
    }

    #[test]
    fn a_cap_below_the_base_is_raised() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.cap(), Duration::from_secs(2));
    }
}
