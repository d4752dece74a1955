//! What keepalive (`keepalive.rs`) knows of each connection, kept so that
//! the hot path pays two relaxed atomic loads per poll of a connection's
//! receive (and a store once per tick): no clock read per message.
//!
//! The engine has one coarse [`Clock`], milliseconds since it started,
//! advanced by the keepalive ticker on each tick (and when a connection
//! opens). Each connection's [`Liveness`] records the coarse time at which
//! something was last received on it ([`Heard`] wraps the reader's receive
//! future and stores the clock each time the medium wakes it, so a large
//! message that takes long to arrive counts while its bytes flow), and
//! the keepalive probe outstanding on it, if any.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

/// An engine's coarse clock: whole milliseconds since it was made, as of
/// the last [`Clock::refresh`].
#[derive(Debug)]
pub(crate) struct Clock {
    start: Instant,
    now_ms: AtomicU64,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            now_ms: AtomicU64::new(0),
        }
    }

    /// The time of the last refresh (no clock read).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    /// Reads the real clock, stores it, and returns it.
    pub(crate) fn refresh(&self) -> u64 {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Never backwards, even if two refreshes race.
        self.now_ms.fetch_max(ms, Ordering::Relaxed).max(ms)
    }
}

/// One connection's liveness, as keepalive sees it.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    /// Coarse time something was last received.
    heard: AtomicU64,
    /// Coarse time the outstanding probe was sent (0: none sent yet); the
    /// probe is answered once `heard >= probed`.
    probed: AtomicU64,
    /// Sequence number of the last probe, whose Pong is still expected (0:
    /// none): forgotten when the next probe goes.
    probe_seq: AtomicU64,
    /// Set while the reader does not read on purpose (the connection's
    /// requests are over their budget): silence is then ours, not the
    /// peer's.
    paused: AtomicBool,
}

impl Liveness {
    /// Records that something was received at `now`.
    #[inline]
    pub(crate) fn heard_at(&self, now: u64) {
        self.heard.store(now, Ordering::Relaxed);
    }

    /// When something was last received.
    pub(crate) fn heard(&self) -> u64 {
        self.heard.load(Ordering::Relaxed)
    }

    /// When the probe still unanswered was sent, if one is.
    pub(crate) fn probe_outstanding(&self) -> Option<u64> {
        let probed = self.probed.load(Ordering::Relaxed);
        (probed > self.heard()).then_some(probed)
    }

    /// Records a probe sent at `now` with sequence number `seq`; returns
    /// the sequence number of the previous one (0: none), whose Pong is no
    /// longer waited for.
    pub(crate) fn probe_sent(&self, now: u64, seq: u64) -> u64 {
        self.probed.store(now, Ordering::Relaxed);
        self.probe_seq.swap(seq, Ordering::Relaxed)
    }

    /// Whether the reader holds back on purpose (see [`Liveness::pause`]).
    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Marks the connection as not read on purpose until the guard is
    /// dropped; then it counts as heard from at that moment.
    pub(crate) fn pause<'a>(&'a self, clock: &'a Clock) -> Paused<'a> {
        self.paused.store(true, Ordering::Relaxed);
        Paused {
            liveness: self,
            clock,
        }
    }

    /// Wraps the reader's receive future: each poll (the medium woke it:
    /// bytes arrived) records the connection as heard from.
    pub(crate) fn watch<'a, F>(&'a self, clock: &'a Clock, inner: F) -> Heard<'a, F> {
        Heard {
            liveness: self,
            clock,
            inner,
        }
    }
}

/// See [`Liveness::pause`].
#[derive(Debug)]
pub(crate) struct Paused<'a> {
    liveness: &'a Liveness,
    clock: &'a Clock,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.liveness.heard_at(self.clock.now());
        self.liveness.paused.store(false, Ordering::Relaxed);
    }
}

/// See [`Liveness::watch`].
pub(crate) struct Heard<'a, F> {
    liveness: &'a Liveness,
    clock: &'a Clock,
    inner: F,
}

impl<F: Future + Unpin> Future for Heard<'_, F> {
    type Output = F::Output;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // The clock moves once per tick: store only when it did, so that
        // the connection's cache line is read, not written, per message.
        let now = self.clock.now();
        if self.liveness.heard() != now {
            self.liveness.heard_at(now);
        }
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_answered_by_anything_heard_after_it() {
        let l = Liveness::default();
        l.heard_at(10);
        assert_eq!(l.probe_outstanding(), None);
        assert_eq!(l.probe_sent(20, 7), 0);
        assert_eq!(l.probe_outstanding(), Some(20));
        // Heard in the same tick as the probe went: answered.
        l.heard_at(20);
        assert_eq!(l.probe_outstanding(), None);
        assert_eq!(l.probe_sent(40, 8), 7, "the previous probe's sequence");
        assert_eq!(l.probe_outstanding(), Some(40));
    }

    #[test]
    fn a_pause_counts_as_heard_when_it_ends() {
        let clock = Clock::new();
        let l = Liveness::default();
        let now = clock.refresh();
        {
            let _p = l.pause(&clock);
            assert!(l.is_paused());
        }
        assert!(!l.is_paused());
        assert!(l.heard() >= now);
    }
}
