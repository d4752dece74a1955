//! Limits that keep one misbehaving peer from taking more than its share.
//!
//! Each limit is a key of the JSON [`Config`](crate::Config) (the defaults
//! are the `DEFAULT_*` constants of `config.rs`), and each one answers a
//! kind of greedy or slow peer (`docs/reliability.md` has the tests):
//!
//! * `max_connections`: connections accepted by a server at once. An extra
//!   one is closed as soon as it is accepted (the peer reads end of stream),
//!   so a peer that opens connections and sends nothing runs out of slots,
//!   not the server out of file descriptors.
//! * `timeouts.hello_ms`: an accepted connection must deliver its first
//!   frame (the Hello) within this time, or it is closed. This ends
//!   connections that never send, or send half a frame and stall before
//!   introducing themselves (slowloris).
//! * `max_in_flight_per_connection`: requests from one connection whose
//!   handler has not finished (or whose response has not been sent). At the
//!   limit the connection's reader stops reading: the peer's further
//!   requests wait in its own socket buffers (backpressure), not in the
//!   server's memory. A peer that floods requests, or a million one-way
//!   RPCs, gets at most this many handlers at a time.
//! * `max_queued_response_bytes`: bytes waiting in one connection's outbox
//!   (`conn.rs`) to be written: responses, error answers, and any other
//!   small message queued while a write was under way. A peer that sends
//!   requests but never reads the responses fills its socket buffers, then
//!   this budget; then its reader stops, and so do the handlers' responses
//!   (they wait for room). One message larger than the whole budget is
//!   still sent (it waits for the queue to drain first).
//!
//! Frames in progress need no limit of their own: a stream connection has at
//! most one partial message at a time, whose buffer grows with the bytes
//! actually received (see `courier_transport::framing::Deframer`), never
//! from the announced length; a length over `max_message_size` closes the
//! connection. So they are bounded by `max_connections` times the bytes a
//! peer really sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::Config;

/// Messages up to this size are copied into a connection's outbox and
/// written in batches; larger ones are written from their sender's buffer
/// (`conn.rs`). Also how far below `max_queued_response_bytes` a small
/// message may have to wait for room.
pub(crate) const COPY_MAX: usize = 16 * 1024;

/// The server's connection slots (`max_connections`).
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One accepted connection's slot, given back when the connection ends.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a newly accepted connection, or `None` when all are taken.
    pub(crate) fn admit(&self) -> Option<ConnectionSlot> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|p| ConnectionSlot { _permit: p })
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// Per-connection budgets: requests in flight, response bytes queued.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    requests: Arc<Semaphore>,
    queued: AtomicUsize,
    max_queued: usize,
    drained: Notify,
}

/// The right to run one request's handler; held until the request is done
/// (its handle dropped), then given back to the connection.
#[derive(Debug)]
pub(crate) struct RequestSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

impl ConnLimits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(config.max_in_flight_per_connection)),
            queued: AtomicUsize::new(0),
            max_queued: config.max_queued_response_bytes,
            drained: Notify::new(),
        }
    }

    /// Waits until this connection may take one more request: a request
    /// slot is free and the queued responses are within their budget. The
    /// reader calls this *before* reading, so a peer over its budget is
    /// simply not read from.
    pub(crate) async fn request_slot(&self) -> RequestSlot {
        // The semaphore is never closed (the error case is only a type).
        let permit = self.requests.clone().acquire_owned().await.ok();
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.queued.load(Ordering::Acquire) <= self.max_queued {
                break;
            }
            drained.await;
        }
        RequestSlot { _permit: permit }
    }

    /// Whether a message of `bytes` may be queued now: within the budget,
    /// or the queue is empty (a message larger than the whole budget still
    /// goes, alone).
    pub(crate) fn has_room(&self, bytes: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued == 0 || queued.saturating_add(bytes) <= self.max_queued
    }

    /// Counts `bytes` as queued on the connection (waiting to be written,
    /// or being written).
    pub(crate) fn add_queued(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Counts `bytes` as written (or dropped with the connection).
    pub(crate) fn remove_queued(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let before = self.queued.fetch_sub(bytes, Ordering::AcqRel);
        // Nobody waits for room unless the queue was near its budget: the
        // reader waits above it, a message of at most `COPY_MAX` bytes
        // waits while it would take the queue over it. Below that, skip the
        // notification (a lock) on the hot path.
        if before.saturating_add(COPY_MAX) > self.max_queued {
            self.drained.notify_waiters();
        }
    }

    /// Resolves after the next [`ConnLimits::remove_queued`].
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Requests of this connection in flight now.
    pub(crate) fn in_flight(&self, max: usize) -> usize {
        max - self.requests.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(in_flight: usize, queued: usize) -> Config {
        Config {
            max_in_flight_per_connection: in_flight,
            max_queued_response_bytes: queued,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn request_slots_run_out_and_come_back() {
        let limits = ConnLimits::new(&config(2, 1 << 20));
        let a = limits.request_slot().await;
        let _b = limits.request_slot().await;
        assert_eq!(limits.in_flight(2), 2);
        let third = limits.request_slot();
        tokio::pin!(third);
        assert!(futures_poll_once(third.as_mut()).is_none(), "a third slot");
        drop(a);
        let _c = third.await;
        assert_eq!(limits.in_flight(2), 2);
    }

    #[tokio::test]
    async fn queued_bytes_over_budget_hold_the_next_request() {
        let limits = ConnLimits::new(&config(8, 100));
        assert!(limits.has_room(1000), "an empty queue takes anything");
        limits.add_queued(101);
        assert!(!limits.has_room(1));
        let next = limits.request_slot();
        tokio::pin!(next);
        assert!(
            futures_poll_once(next.as_mut()).is_none(),
            "read while over"
        );
        limits.remove_queued(101);
        let _slot = next.await;
        limits.add_queued(60);
        assert!(limits.has_room(40) && !limits.has_room(41));
        limits.add_queued(40);
        let _slot2 = limits.request_slot().await;
    }

    #[test]
    fn connection_slots_refuse_past_the_maximum() {
        let slots = ConnectionSlots::new(1);
        let first = slots.admit();
        assert!(first.is_some());
        assert!(slots.admit().is_none());
        drop(first);
        assert!(slots.admit().is_some());
        assert_eq!(slots.max(), 1);
    }

    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
