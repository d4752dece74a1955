//! Polling before parking: the engine's progress policy.
//!
//! On virtual machines, waking a thread that sleeps in the kernel (in
//! `epoll_wait`, on a futex) from another core costs 25-30 µs, more than
//! everything else in a small RPC. Margo avoids it by polling for a while
//! after activity before it sleeps (`progress_spindown_msec`); Courier does
//! the same for every transport.
//!
//! After each message sent or received, a spinner task on the engine's
//! runtime keeps the runtime busy for `progress_spin_us` microseconds by
//! yielding in a loop. A runtime with a task ready never parks: it polls its
//! I/O driver without blocking (`epoll_wait` with a zero timeout) between
//! tasks, so a message that arrives during the window is seen at once,
//! without a wake-up. When the window ends with no new activity, the spinner
//! sleeps until the next message and the runtime parks as usual.
//!
//! While calls of the engine wait for their answers, the window is longer
//! (`progress_spin_busy_us`, 1 ms by default): an answer is on its way —
//! a large response arriving in pieces, a handler still computing — and
//! parking in between would make its arrival pay the wake-up. Each poll of
//! a transport operation counts as activity too ([`Progress::watch`]), so
//! a message that arrives in many pieces keeps the window open while its
//! bytes flow. An engine with nothing outstanding parks after
//! `progress_spin_us`.
//!
//! A window that has seen nothing for [`YIELD_AFTER`] (10 µs) offers its
//! core to any other thread that wants it every [`YIELD_EVERY`] (5 µs):
//! `sched_yield`, which returns at once when no other thread is runnable
//! there. Where more engines are busy than there are cores (three group
//! members and a client on two cores), a spinner that never let go held
//! the core the next message's sender needed: calls through a group of 3
//! such processes went 2.5 to 3 times faster once it yields, with direct
//! calls between two processes unchanged (`docs/benchmarks.md`, "Spinning
//! on shared cores").
//!
//! The cost is CPU: one core kept busy for the window after each message,
//! and while calls wait (at most `progress_spin_busy_us` after the last
//! byte moved). An idle engine costs nothing: no call waits, nothing
//! arrives, the spinner sleeps. `progress_spin_us = 0` turns all of it off
//! (park at once).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The spin window and a count of activity.
#[derive(Debug)]
pub(crate) struct Progress {
    spin: Duration,
    /// The window while calls are outstanding.
    busy_spin: Duration,
    /// Calls of the engine waiting for their answers.
    outstanding: AtomicUsize,
    /// Bumped on every activity: a relaxed increment, no clock read, so
    /// that counting costs nothing on the hot path; only the spinner, which
    /// has nothing better to do, reads the clock.
    activity: AtomicU64,
    spinning: AtomicBool,
    wake: Notify,
    /// Windows that ended without activity (the runtime may park after).
    parks: AtomicU64,
    /// Parks that a message received ended within `SHORT_PARK`, and their
    /// total length in microseconds (statistics: a window that just
    /// missed).
    short_parks: AtomicU64,
    short_parks_us: AtomicU64,
}

/// What a message received adds to [`Progress::activity`], besides the one
/// every activity adds: the bits above count messages received (the bits
/// below would carry into them after 2^40 other activities, once).
const RECEIVED: u64 = 1 << 40;

/// How often a spinning window offers its core to other threads...
const YIELD_EVERY: Duration = Duration::from_micros(5);
/// ...once it has seen no activity for this long.
const YIELD_AFTER: Duration = Duration::from_micros(10);

/// A park shorter than this, in microseconds, was a gap a longer window
/// would have bridged (the statistics' short parks: `stats::SHORT_PARK_US`).
pub(crate) const SHORT_PARK_US: u64 = 1000;

/// [`SHORT_PARK_US`] as a duration.
const SHORT_PARK: Duration = Duration::from_micros(SHORT_PARK_US);

impl Progress {
    pub(crate) fn new(spin: Duration, busy_spin: Duration) -> Self {
        Self {
            spin,
            busy_spin: busy_spin.max(spin),
            outstanding: AtomicUsize::new(0),
            activity: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
            parks: AtomicU64::new(0),
            short_parks: AtomicU64::new(0),
            short_parks_us: AtomicU64::new(0),
        }
    }

    /// Windows that ended without activity so far (statistics).
    pub(crate) fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// Parks that a message received ended within [`SHORT_PARK`], and
    /// their total length in microseconds (statistics).
    pub(crate) fn short_parks(&self) -> (u64, u64) {
        (
            self.short_parks.load(Ordering::Relaxed),
            self.short_parks_us.load(Ordering::Relaxed),
        )
    }

    /// Counts a park of `parked` that a message ended, if it was short.
    fn woke_after(&self, parked: Duration) {
        if parked < SHORT_PARK {
            self.short_parks.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(parked.as_micros()).unwrap_or(u64::MAX);
            self.short_parks_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.spin.is_zero()
    }

    /// Records activity: (re)opens the polling window.
    #[inline]
    pub(crate) fn activity(&self) {
        self.bump(1);
    }

    /// Records a message received: activity, counted apart (in the same
    /// increment) so that the spinner can tell the parks that a message
    /// ended from those its own engine's sends ended.
    #[inline]
    pub(crate) fn received(&self) {
        self.bump(1 + RECEIVED);
    }

    #[inline]
    fn bump(&self, by: u64) {
        if self.spin.is_zero() {
            return;
        }
        self.activity.fetch_add(by, Ordering::Relaxed);
        if !self.spinning.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Counts a call waiting for its answer until the guard is dropped.
    pub(crate) fn outstanding(&self) -> Outstanding<'_> {
        if !self.spin.is_zero() {
            self.outstanding.fetch_add(1, Ordering::Relaxed);
        }
        Outstanding { progress: self }
    }

    /// The window after the last activity: longer while calls wait.
    fn window(&self) -> Duration {
        if self.outstanding.load(Ordering::Relaxed) > 0 {
            self.busy_spin
        } else {
            self.spin
        }
    }

    /// Wraps a transport operation so that every time it is polled — woken
    /// by its medium: part of a large message arrived, the socket became
    /// writable again — counts as activity. A message that takes longer than
    /// the window to move keeps the window open while bytes flow, instead
    /// of letting the runtime park between its chunks.
    pub(crate) fn watch<F: std::future::Future + Unpin>(&self, inner: F) -> Watched<'_, F> {
        Watched {
            progress: self,
            inner,
        }
    }

    /// The spinner: sleeps until activity, then yields until the window
    /// has passed without any. How long each sleep lasted comes from the
    /// clock reads it makes anyway (statistics: short parks).
    pub(crate) async fn run(self: Arc<Self>) {
        // When the last window closed, and the activity count then.
        let mut parked: Option<(Instant, u64)> = None;
        loop {
            self.wake.notified().await;
            self.spinning.store(true, Ordering::Relaxed);
            let mut seen = self.activity.load(Ordering::Relaxed);
            let mut last = Instant::now();
            if let Some((at, before)) = parked {
                // A message ended the park (not a send of this engine's).
                if seen / RECEIVED != before / RECEIVED {
                    self.woke_after(last.saturating_duration_since(at));
                }
            }
            let mut yielded = last;
            loop {
                tokio::task::yield_now().await;
                let now = self.activity.load(Ordering::Relaxed);
                let t = Instant::now();
                if now != seen {
                    seen = now;
                    last = t;
                } else if t.saturating_duration_since(last) >= self.window() {
                    parked = Some((t, seen));
                    break;
                }
                // Every few microseconds, offer the core to another thread
                // that wants it (`sched_yield`; it returns at once when
                // none does): where more threads are busy than there are
                // cores, the one a spinner keeps waiting may be the one
                // that would send the next message.
                if t.saturating_duration_since(last) >= YIELD_AFTER
                    && t.saturating_duration_since(yielded) >= YIELD_EVERY
                {
                    std::thread::yield_now();
                    yielded = t;
                }
            }
            self.spinning.store(false, Ordering::Relaxed);
            self.parks.fetch_add(1, Ordering::Relaxed);
            // Activity between the last check and the store above would
            // find `spinning` still set and not notify: look once more.
            if self.activity.load(Ordering::Relaxed) != seen {
                self.wake.notify_one();
            }
        }
    }
}

/// A call waiting for its answer, counted by [`Progress::outstanding`].
#[derive(Debug)]
pub(crate) struct Outstanding<'a> {
    progress: &'a Progress,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        if !self.progress.spin.is_zero() {
            self.progress.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// See [`Progress::watch`].
pub(crate) struct Watched<'a, F> {
    progress: &'a Progress,
    inner: F,
}

impl<F: std::future::Future + Unpin> std::future::Future for Watched<'_, F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.progress.activity();
        std::pin::Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_the_busy_one_while_calls_wait() {
        let spin = Duration::from_micros(50);
        let busy = Duration::from_micros(1000);
        let p = Progress::new(spin, busy);
        assert_eq!(p.window(), spin, "nothing outstanding");
        let a = p.outstanding();
        let b = p.outstanding();
        assert_eq!(p.window(), busy);
        drop(a);
        assert_eq!(p.window(), busy, "one call still waits");
        drop(b);
        assert_eq!(p.window(), spin);
        // Never shorter than the plain window.
        let p = Progress::new(spin, Duration::from_micros(10));
        let _c = p.outstanding();
        assert_eq!(p.window(), spin);
    }

    #[test]
    fn messages_received_are_told_apart_from_other_activity() {
        let p = Progress::new(Duration::from_micros(50), Duration::from_micros(1000));
        p.activity();
        p.activity();
        assert_eq!(p.activity.load(Ordering::Relaxed) / RECEIVED, 0);
        p.received();
        let a = p.activity.load(Ordering::Relaxed);
        assert_eq!((a / RECEIVED, a % RECEIVED), (1, 3));
    }

    #[test]
    fn only_short_parks_are_counted_as_such() {
        let p = Progress::new(Duration::from_micros(50), Duration::from_micros(1000));
        p.woke_after(Duration::from_micros(200));
        p.woke_after(Duration::from_micros(300));
        p.woke_after(SHORT_PARK);
        p.woke_after(Duration::from_secs(10));
        assert_eq!(p.short_parks(), (2, 500));
    }

    #[test]
    fn parking_at_once_counts_nothing() {
        let p = Progress::new(Duration::ZERO, Duration::from_micros(1000));
        let _c = p.outstanding();
        assert_eq!(p.outstanding.load(Ordering::Relaxed), 0);
        assert_eq!(p.window(), Duration::ZERO);
    }
}
