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
}

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
        }
    }

    /// Windows that ended without activity so far (statistics).
    pub(crate) fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.spin.is_zero()
    }

    /// Records activity: (re)opens the polling window.
    #[inline]
    pub(crate) fn activity(&self) {
        if self.spin.is_zero() {
            return;
        }
        self.activity.fetch_add(1, Ordering::Relaxed);
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
    /// has passed without any.
    pub(crate) async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            self.spinning.store(true, Ordering::Relaxed);
            let mut seen = self.activity.load(Ordering::Relaxed);
            let mut last = Instant::now();
            loop {
                tokio::task::yield_now().await;
                let now = self.activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    last = Instant::now();
                } else if last.elapsed() >= self.window() {
                    break;
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
    fn parking_at_once_counts_nothing() {
        let p = Progress::new(Duration::ZERO, Duration::from_micros(1000));
        let _c = p.outstanding();
        assert_eq!(p.outstanding.load(Ordering::Relaxed), 0);
        assert_eq!(p.window(), Duration::ZERO);
    }
}
