//! Hedging: when to send a second request, and the recent latencies a
//! percentile is read from.

use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::table::lock;

/// When a hedged call sends its second request, to another member, if the
/// first has not answered: after a fixed delay, or after the given
/// percentile of the latencies of this function's recent successful calls
/// (none is sent until [`Hedge::MIN_SAMPLES`] calls have answered).
///
/// `Duration`s convert: `.hedge_after(Duration::from_millis(20))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hedge {
    /// After this long.
    After(Duration),
    /// After this percentile (0 to 100, e.g. 95.0) of recent latencies.
    Percentile(f64),
}

impl Hedge {
    /// The successful calls a percentile needs before it is used.
    pub const MIN_SAMPLES: u64 = 20;
    /// How many calls "recent" means: the percentile is read from the last
    /// full window of this many calls (or from the current one until a
    /// window is full).
    pub const WINDOW: u64 = 1000;
}

impl From<Duration> for Hedge {
    fn from(after: Duration) -> Self {
        Self::After(after)
    }
}

/// The latencies of recent successful calls, in microseconds: the window
/// being filled, and the last full one.
#[derive(Debug)]
pub(crate) struct Latencies {
    windows: Option<Mutex<Windows>>,
}

#[derive(Debug)]
struct Windows {
    current: Histogram<u64>,
    previous: Histogram<u64>,
}

impl Latencies {
    pub(crate) fn new() -> Self {
        // 1 µs to an hour, two significant figures (a latency past an hour
        // counts as an hour). Creation fails only for bounds out of range.
        let window = || Histogram::new_with_bounds(1, 3_600_000_000, 2).ok();
        let windows = window()
            .zip(window())
            .map(|(current, previous)| Mutex::new(Windows { current, previous }));
        Self { windows }
    }

    pub(crate) fn record(&self, latency: Duration) {
        let Some(w) = &self.windows else { return };
        let mut w = lock(w);
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        w.current.saturating_record(micros);
        if w.current.len() >= Hedge::WINDOW {
            let Windows { current, previous } = &mut *w;
            std::mem::swap(current, previous);
            current.reset();
        }
    }

    /// The `percentile` of recent latencies, if enough are known.
    pub(crate) fn percentile(&self, percentile: f64) -> Option<Duration> {
        let w = lock(self.windows.as_ref()?);
        let h = if w.previous.len() >= Hedge::MIN_SAMPLES {
            &w.previous
        } else {
            &w.current
        };
        (h.len() >= Hedge::MIN_SAMPLES)
            .then(|| Duration::from_micros(h.value_at_percentile(percentile.clamp(0.0, 100.0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percentile_needs_samples_and_follows_recent_ones() {
        let l = Latencies::new();
        for _ in 0..Hedge::MIN_SAMPLES - 1 {
            l.record(Duration::from_millis(1));
        }
        assert_eq!(l.percentile(95.0), None);
        l.record(Duration::from_millis(1));
        let p = l.percentile(95.0).unwrap_or_default();
        assert!(
            p >= Duration::from_micros(990) && p <= Duration::from_micros(1010),
            "{p:?}"
        );
        // A full window of slower calls replaces the old ones.
        for _ in 0..Hedge::WINDOW {
            l.record(Duration::from_millis(10));
        }
        let p = l.percentile(50.0).unwrap_or_default();
        assert!(p >= Duration::from_micros(9900), "{p:?}");
    }
}
