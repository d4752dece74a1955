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
//! The cost is CPU: one core kept busy for the window after each message.
//! `progress_spin_us = 0` turns it off (park at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The spin window and a count of activity.
#[derive(Debug)]
pub(crate) struct Progress {
    spin: Duration,
    /// Bumped on every activity: a relaxed increment, no clock read, so
    /// that counting costs nothing on the hot path; only the spinner, which
    /// has nothing better to do, reads the clock.
    activity: AtomicU64,
    spinning: AtomicBool,
    wake: Notify,
}

impl Progress {
    pub(crate) fn new(spin: Duration) -> Self {
        Self {
            spin,
            activity: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            wake: Notify::new(),
        }
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
            let mut deadline = Instant::now() + self.spin;
            loop {
                tokio::task::yield_now().await;
                let now = self.activity.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    deadline = Instant::now() + self.spin;
                } else if Instant::now() >= deadline {
                    break;
                }
            }
            self.spinning.store(false, Ordering::Relaxed);
            // Activity between the last check and the store above would
            // find `spinning` still set and not notify: look once more.
            if self.activity.load(Ordering::Relaxed) != seen {
                self.wake.notify_one();
            }
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
