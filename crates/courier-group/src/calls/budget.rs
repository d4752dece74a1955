//! The retry budget: a token bucket that lets retries and hedges be a
//! bounded share of calls, so that a group in trouble is not sent a storm
//! of extra requests (the idea of Finagle's `RetryBudget` and of gRPC's
//! retry throttling).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

/// How many retries and hedges a [`GroupClient`](super::GroupClient) may send: a token
/// bucket. Every call of an idempotent RPC puts `ratio` of a token in;
/// the bucket also fills by `min_per_second` tokens a second, a floor for
/// groups called rarely; every retry or hedge takes one token out, and
/// none is sent when the bucket holds less than one. The bucket holds at
/// most `max_tokens`, and starts full.
///
/// The defaults, [`RetryBudget::default`]: `ratio` 0.2 (retries and hedges
/// at most a fifth of calls, over time), `min_per_second` 10, `max_tokens`
/// 100 (a burst of 100 retries, e.g. when a member dies under load, then
/// the steady rates) — the figures Finagle chose for its budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    max_tokens: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: Self::DEFAULT_RATIO,
            min_per_second: Self::DEFAULT_MIN_PER_SECOND,
            max_tokens: Self::DEFAULT_MAX_TOKENS,
        }
    }
}

impl RetryBudget {
    /// Tokens each call puts in, by default.
    pub const DEFAULT_RATIO: f64 = 0.2;
    /// Tokens the bucket gains each second, by default.
    pub const DEFAULT_MIN_PER_SECOND: f64 = 10.0;
    /// The bucket's size, by default.
    pub const DEFAULT_MAX_TOKENS: f64 = 100.0;

    /// The default budget.
    pub fn new() -> Self {
        Self::default()
    }

    /// No retries or hedges at all.
    pub fn none() -> Self {
        Self {
            ratio: 0.0,
            min_per_second: 0.0,
            max_tokens: 0.0,
        }
    }

    /// The share of calls that may be retried or hedged (a negative or
    /// NaN value counts as 0).
    #[must_use]
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = sane(ratio);
        self
    }

    /// Tokens the bucket gains each second whatever the calls.
    #[must_use]
    pub fn min_per_second(mut self, tokens: f64) -> Self {
        self.min_per_second = sane(tokens);
        self
    }

    /// The bucket's size (and its content at the start).
    #[must_use]
    pub fn max_tokens(mut self, tokens: f64) -> Self {
        self.max_tokens = sane(tokens);
        self
    }
}

/// Most tokens a figure may say (an infinite one says this): a
/// thousandth of `i64::MAX` thousandths, so that sums do not overflow.
const MOST: f64 = 1e15;

/// A figure as the bucket uses it: negative or NaN is 0, beyond [`MOST`]
/// (infinity too) is [`MOST`].
fn sane(x: f64) -> f64 {
    if x > 0.0 {
        x.min(MOST)
    } else {
        0.0
    }
}

/// Thousandths of a token, so that the bucket is one atomic.
const MILLI: f64 = 1000.0;

/// A [`RetryBudget`] in use.
#[derive(Debug)]
pub(crate) struct Bucket {
    config: RetryBudget,
    /// Thousandths of a token.
    tokens: AtomicI64,
    max: i64,
    deposit: i64,
    /// When time last added tokens.
    refilled: Mutex<Instant>,
}

impl Bucket {
    pub(crate) fn new(config: RetryBudget) -> Self {
        let max = (config.max_tokens * MILLI) as i64;
        Self {
            config,
            tokens: AtomicI64::new(max),
            max,
            deposit: (config.ratio * MILLI) as i64,
            refilled: Mutex::new(Instant::now()),
        }
    }

    pub(crate) fn config(&self) -> RetryBudget {
        self.config
    }

    /// A call was made: put its share in.
    pub(crate) fn deposit(&self) {
        if self.deposit > 0 {
            self.add(self.deposit);
        }
    }

    fn add(&self, milli: i64) {
        let max = self.max;
        // The closure always returns Some: the update cannot fail.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(milli).min(max))
            });
    }

    /// Takes a token for a retry or a hedge; false if there is none.
    pub(crate) fn withdraw(&self) -> bool {
        self.refill();
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }

    /// Gives back a token taken for a hedge that could not be sent.
    pub(crate) fn refund(&self) {
        self.add(1000);
    }

    /// The tokens in the bucket now.
    pub(crate) fn tokens(&self) -> f64 {
        self.refill();
        self.tokens.load(Ordering::Relaxed) as f64 / MILLI
    }

    fn refill(&self) {
        if self.config.min_per_second <= 0.0 {
            return;
        }
        let now = Instant::now();
        let mut last = match self.refilled.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let gained = (now - *last).as_secs_f64() * self.config.min_per_second * MILLI;
        // Whole thousandths only: the remainder stays in the elapsed time.
        if gained >= 1.0 {
            self.add(gained as i64);
            *last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokens_come_from_calls_and_time_and_go_to_retries() {
        let b = Bucket::new(
            RetryBudget::new()
                .ratio(0.5)
                .min_per_second(1.0)
                .max_tokens(2.0),
        );
        assert!(b.withdraw() && b.withdraw());
        assert!(!b.withdraw(), "an empty bucket refuses");
        b.deposit();
        assert!(!b.withdraw(), "half a token is not a retry");
        b.deposit();
        assert!(b.withdraw(), "two calls at 0.5 pay for one retry");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.withdraw(), "a second of the floor pays for one");
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!((b.tokens() - 2.0).abs() < 1e-9, "capped at max_tokens");
    }

    #[test]
    fn an_infinite_budget_always_allows_and_nan_is_none() {
        let b = Bucket::new(RetryBudget::none().max_tokens(f64::INFINITY));
        for _ in 0..1000 {
            assert!(b.withdraw());
        }
        let b = Bucket::new(RetryBudget::new().max_tokens(f64::NAN).ratio(-1.0));
        b.deposit();
        assert!(!b.withdraw());
    }

    #[test]
    fn none_never_allows() {
        let b = Bucket::new(RetryBudget::none());
        b.deposit();
        assert!(!b.withdraw());
    }
}
