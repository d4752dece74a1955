//! Flow control of one stream, on one side: the items received and not yet
//! consumed, the credit granted to the peer and the credit it granted us.
//! Sans-IO: the engine moves frames (`stream.rs`, `dispatch.rs`), this
//! module only counts, queues and wakes, and is tested without sockets.
//!
//! Credit is counted in bytes: an item costs its length plus
//! [`ITEM_COST`], so that empty items are not free. A receiver grants its
//! window at the start and, as its consumer takes items, grants again
//! whatever brings the peer's credit back to a full window once half of it
//! is used (one credit frame per half window, not one per item). A sender
//! may send an item while it has credit left, at least one byte: an item
//! may overshoot its credit, so a receiver holds at most its window plus
//! one item. An item that arrives when the sender had no credit left broke
//! the rule: [`Flow::on_item`] refuses it, and the engine cuts the
//! connection off (a peer that floods is not read any further).
//!
//! Each stream has one [`Flow`] per side, shared by the connection's table
//! (where the reader puts what arrives) and the stream's owner (the
//! [`StreamCall`](crate::StreamCall) of a caller, the handle of a handler).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::frame::Header;
use crate::stats::record::StreamCounters;
use crate::sync::lock;

/// What an item costs in credit beyond its bytes.
pub(crate) const ITEM_COST: u64 = 32;

/// The credit an item of `len` bytes costs.
pub(crate) fn cost(len: usize) -> u64 {
    len as u64 + ITEM_COST
}

/// How the incoming side of a stream ended.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// The peer ended it cleanly (a caller's `RequestEnd`).
    Finished,
    /// The caller aborted its request stream, with a message.
    Aborted(String),
    /// The handler's answer (`Response` or `Error`), which ends a
    /// caller's response stream and the call.
    Reply(Header, Bytes),
    /// The connection was lost, or the engine finalized (the connection
    /// says why).
    Lost,
}

/// An item that came without credit: the peer broke flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flood {
    /// Credit the peer had used before this item.
    pub(crate) used: u64,
    /// Credit granted to it in all.
    pub(crate) granted: u64,
}

/// Why nothing more may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// This side ended its own sending (closed or aborted it).
    Done,
    /// The other side finished the call (the handler answered).
    PeerFinished,
    /// The connection is gone.
    Lost,
}

struct Inner {
    // Receiving.
    items: VecDeque<Bytes>,
    /// Bytes of the items queued (not counting [`ITEM_COST`]).
    queued: u64,
    /// Credit the peer used in all (items received).
    received: u64,
    /// Credit granted to the peer in all.
    granted: u64,
    /// Credit of the items consumed in all.
    consumed: u64,
    end: Option<End>,
    /// Nobody reads any more: items are dropped as they come, and their
    /// credit given back.
    discarding: bool,
    recv_waker: Option<Waker>,
    // Sending.
    /// Credit the peer granted us in all.
    credit: u64,
    /// Credit used in all (items sent).
    sent: u64,
    closed: Option<Closed>,
    send_waker: Option<Waker>,
}

/// One side of one stream. See the module's docs.
pub(crate) struct Flow {
    window: u64,
    inner: Mutex<Inner>,
    /// The engine's figures: flows alive, bytes queued, items.
    counters: Arc<StreamCounters>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        let queued = lock(&self.inner).queued;
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        self.counters.buffered.fetch_sub(queued, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = lock(&self.inner);
        f.debug_struct("Flow")
            .field("window", &self.window)
            .field("queued_items", &i.items.len())
            .field("queued_bytes", &i.queued)
            .field("credit_left", &i.credit.saturating_sub(i.sent))
            .field("ended", &i.end.is_some())
            .finish()
    }
}

/// What receiving one item did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    /// The item.
    pub(crate) item: Bytes,
    /// Credit to grant the peer now, if any (a credit frame to send).
    pub(crate) grant: Option<u64>,
}

impl Flow {
    /// A flow whose receiving side grants `window` bytes of credit (the
    /// grant is the owner's to send, or was sent with the request), and
    /// whose sending side may use `credit` at once.
    pub(crate) fn new(window: u64, credit: u64, counters: Arc<StreamCounters>) -> Self {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Self {
            window,
            counters,
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                queued: 0,
                received: 0,
                granted: window,
                consumed: 0,
                end: None,
                discarding: false,
                recv_waker: None,
                credit,
                sent: 0,
                closed: None,
                send_waker: None,
            }),
        }
    }

    /// An item arrived. `Err` if it came without credit (the peer broke
    /// flow control: the engine cuts the connection off). With nobody
    /// reading, it is dropped, and `Ok(Some(grant))` gives its credit back.
    pub(crate) fn on_item(&self, item: Bytes) -> Result<Option<u64>, Flood> {
        let mut i = lock(&self.inner);
        if i.received >= i.granted {
            return Err(Flood {
                used: i.received,
                granted: i.granted,
            });
        }
        let c = cost(item.len());
        i.received += c;
        self.counters.items_in.fetch_add(1, Ordering::Relaxed);
        if i.end.is_some() || i.discarding {
            // Ended here (cancelled, or its reader gone): dropped, and
            // its credit given back so a producer that goes on is not
            // stuck (the peer learns of the end by other frames).
            i.consumed += c;
            return Ok(Self::regrant(&mut i, self.window));
        }
        i.queued += item.len() as u64;
        self.counters
            .buffered
            .fetch_add(item.len() as u64, Ordering::Relaxed);
        i.items.push_back(item);
        let waker = i.recv_waker.take();
        drop(i);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(None)
    }

    /// The incoming side ended (the first end counts). Also closes the
    /// sending side when the end is the call's: a reply or a lost
    /// connection.
    pub(crate) fn finish(&self, end: End) {
        let mut i = lock(&self.inner);
        let closes = match &end {
            End::Reply(..) => Some(Closed::PeerFinished),
            End::Lost => Some(Closed::Lost),
            End::Finished | End::Aborted(_) => None,
        };
        if i.end.is_none() {
            i.end = Some(end);
        }
        if let Some(c) = closes {
            if i.closed.is_none() || c == Closed::Lost {
                i.closed = Some(c);
            }
        }
        let wakers = (i.recv_waker.take(), i.send_waker.take());
        drop(i);
        for w in [wakers.0, wakers.1].into_iter().flatten() {
            w.wake();
        }
    }

    /// Takes the next item, or the end once every item is taken; pending
    /// (the waker kept) while neither has come.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Result<Taken, End>> {
        let mut i = lock(&self.inner);
        if let Some(item) = i.items.pop_front() {
            return Poll::Ready(Ok(self.taken(&mut i, item)));
        }
        if let Some(end) = &i.end {
            return Poll::Ready(Err(end.clone()));
        }
        match &i.recv_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => i.recv_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Accounts for an item taken off the queue.
    fn taken(&self, i: &mut Inner, item: Bytes) -> Taken {
        i.queued -= item.len() as u64;
        self.counters
            .buffered
            .fetch_sub(item.len() as u64, Ordering::Relaxed);
        i.consumed += cost(item.len());
        let grant = Self::regrant(i, self.window);
        Taken { item, grant }
    }

    /// Credit to grant after items were consumed: enough to bring the
    /// peer back to a full window, once half of it is used.
    /// (The peer may have overshot its credit by one item: what was
    /// consumed may pass what was granted.)
    fn regrant(i: &mut Inner, window: u64) -> Option<u64> {
        let grant = (i.consumed + window).saturating_sub(i.granted);
        if grant == 0 || grant < window / 2 {
            return None;
        }
        i.granted += grant;
        Some(grant)
    }

    /// Nobody reads any more: the queued items are dropped, later ones
    /// dropped as they come; returns the credit to give back now.
    pub(crate) fn discard(&self) -> Option<u64> {
        let mut i = lock(&self.inner);
        i.discarding = true;
        let dropped: u64 = i.items.drain(..).map(|b| cost(b.len())).sum();
        self.counters
            .buffered
            .fetch_sub(i.queued, Ordering::Relaxed);
        i.queued = 0;
        i.consumed += dropped;
        if i.end.is_some() {
            return None;
        }
        Self::regrant(&mut i, self.window)
    }

    /// The peer granted `more` credit.
    pub(crate) fn on_credit(&self, more: u64) {
        let mut i = lock(&self.inner);
        i.credit = i.credit.saturating_add(more);
        let waker = i.send_waker.take();
        drop(i);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the credit of an item of `len` bytes: ready once there is
    /// credit left (an item may overshoot it), or the sending side is
    /// closed (`Err`).
    pub(crate) fn poll_credit(&self, cx: &mut Context<'_>, len: usize) -> Poll<Result<(), Closed>> {
        let mut i = lock(&self.inner);
        if let Some(c) = i.closed {
            return Poll::Ready(Err(c));
        }
        if i.sent < i.credit {
            i.sent += cost(len);
            self.counters.items_out.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        match &i.send_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => i.send_waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes the credit of an item if there is some now: the fast path of
    /// a send, without a waker.
    pub(crate) fn try_credit(&self, len: usize) -> Option<Result<(), Closed>> {
        let mut i = lock(&self.inner);
        if let Some(c) = i.closed {
            return Some(Err(c));
        }
        if i.sent < i.credit {
            i.sent += cost(len);
            self.counters.items_out.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(()));
        }
        None
    }

    /// Takes the next item if one is queued (or the end, once every item
    /// is taken): the fast path of a read, without a waker.
    pub(crate) fn try_take(&self) -> Option<Result<Taken, End>> {
        let mut i = lock(&self.inner);
        if let Some(item) = i.items.pop_front() {
            return Some(Ok(self.taken(&mut i, item)));
        }
        i.end.as_ref().map(|e| Err(e.clone()))
    }

    /// Closes the sending side (the owner's own end: closed, aborted, or
    /// answered). Returns whether it was open.
    pub(crate) fn close_sending(&self, why: Closed) -> bool {
        let mut i = lock(&self.inner);
        if i.closed.is_some() {
            return false;
        }
        i.closed = Some(why);
        let waker = i.send_waker.take();
        drop(i);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Whether the incoming side has ended (every item may not be taken).
    pub(crate) fn ended(&self) -> bool {
        lock(&self.inner).end.is_some()
    }

    /// Bytes of items queued here, not yet taken.
    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> u64 {
        lock(&self.inner).queued
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;
    use crate::frame::Kind;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn flow(window: u64, credit: u64) -> Flow {
        Flow::new(window, credit, Arc::default())
    }

    #[test]
    fn counters_follow_the_flows() {
        let counters = Arc::<StreamCounters>::default();
        let f = Flow::new(1000, 1000, counters.clone());
        f.on_item(item(10)).unwrap();
        f.on_item(item(20)).unwrap();
        assert_eq!(f.try_credit(5), Some(Ok(())));
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(load(&counters.open), 1);
        assert_eq!(load(&counters.buffered), 30);
        assert_eq!(load(&counters.items_in), 2);
        assert_eq!(load(&counters.items_out), 1);
        f.try_take().unwrap().unwrap();
        assert_eq!(load(&counters.buffered), 20);
        drop(f);
        assert_eq!(load(&counters.open), 0);
        assert_eq!(load(&counters.buffered), 0);
    }

    fn item(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn items_come_out_in_order_then_the_end() {
        let f = flow(1000, 0);
        f.on_item(item(1)).unwrap();
        f.on_item(item(2)).unwrap();
        f.finish(End::Finished);
        assert_eq!(f.try_take().unwrap().unwrap().item.len(), 1);
        assert_eq!(f.try_take().unwrap().unwrap().item.len(), 2);
        assert!(matches!(f.try_take(), Some(Err(End::Finished))));
        // The end stays.
        assert!(matches!(f.try_take(), Some(Err(End::Finished))));
    }

    #[test]
    fn credit_is_granted_again_once_half_the_window_is_consumed() {
        // A window of 4 items of 68 bytes (cost 100).
        let f = flow(400, 0);
        for _ in 0..4 {
            f.on_item(item(68)).unwrap();
        }
        // The peer used all its credit: one more item is a flood.
        assert_eq!(
            f.on_item(item(68)),
            Err(Flood {
                used: 400,
                granted: 400
            })
        );
        assert_eq!(f.try_take().unwrap().unwrap().grant, None);
        // Half consumed: 200 outstanding, back to 400.
        assert_eq!(f.try_take().unwrap().unwrap().grant, Some(200));
        f.on_item(item(68)).unwrap();
        f.on_item(item(68)).unwrap();
        assert!(f.on_item(item(68)).is_err());
    }

    #[test]
    fn an_overshooting_item_is_granted_back_in_full() {
        // One item of 1000 on a window of 100: allowed (credit left), and
        // once consumed the peer gets a full window back.
        let f = flow(100, 0);
        f.on_item(item(968)).unwrap();
        assert!(f.on_item(item(1)).is_err());
        let t = f.try_take().unwrap().unwrap();
        assert_eq!(t.grant, Some(1000));
        f.on_item(item(1)).unwrap();
    }

    #[test]
    fn a_sender_waits_for_credit_and_may_overshoot_by_one_item() {
        let f = flow(0, 50);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        // 50 of credit: a 1000-byte item goes (it overshoots).
        assert_eq!(f.poll_credit(&mut cx, 1000), Poll::Ready(Ok(())));
        assert_eq!(f.poll_credit(&mut cx, 1), Poll::Pending);
        assert_eq!(f.try_credit(1), None);
        f.on_credit(1000);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // 1050 granted, 1032 used: one more goes.
        assert_eq!(f.poll_credit(&mut cx, 1), Poll::Ready(Ok(())));
        assert_eq!(f.poll_credit(&mut cx, 1), Poll::Pending);
    }

    #[test]
    fn a_reply_wakes_both_sides_and_closes_sending() {
        let f = flow(100, 0);
        let (recv, rw) = waker();
        let (send, sw) = waker();
        assert!(f.poll_take(&mut Context::from_waker(&rw)).is_pending());
        assert!(f.poll_credit(&mut Context::from_waker(&sw), 1).is_pending());
        f.finish(End::Reply(Header::new(Kind::Response), Bytes::new()));
        assert_eq!(recv.0.load(Ordering::SeqCst), 1);
        assert_eq!(send.0.load(Ordering::SeqCst), 1);
        assert_eq!(f.try_credit(1), Some(Err(Closed::PeerFinished)));
        assert!(matches!(f.try_take(), Some(Err(End::Reply(..)))));
    }

    #[test]
    fn a_lost_connection_fails_both_sides() {
        let f = flow(100, 100);
        f.close_sending(Closed::Done);
        f.finish(End::Lost);
        assert_eq!(f.try_credit(1), Some(Err(Closed::Lost)));
        assert!(matches!(f.try_take(), Some(Err(End::Lost))));
    }

    #[test]
    fn discarding_drops_items_and_gives_their_credit_back() {
        let f = flow(400, 0);
        for _ in 0..3 {
            f.on_item(item(68)).unwrap();
        }
        assert_eq!(f.queued_bytes(), 204);
        // 300 used and dropped: 100 outstanding, granted back to 400.
        assert_eq!(f.discard(), Some(300));
        assert_eq!(f.queued_bytes(), 0);
        // Later items are dropped as they come, their credit given back
        // each half window.
        assert_eq!(f.on_item(item(68)).unwrap(), None);
        assert_eq!(f.on_item(item(68)).unwrap(), Some(200));
        assert_eq!(f.queued_bytes(), 0);
    }

    #[test]
    fn memory_is_bounded_by_the_window_plus_one_item() {
        // A producer that uses every credit it has: what is queued never
        // exceeds the window plus one item.
        let window = 1000;
        let f = flow(window, 0);
        let mut peer_credit = window;
        let mut peer_sent = 0;
        let mut max_queued = 0;
        for round in 0..1000 {
            while peer_sent < peer_credit {
                let len = 1 + (round * 37) % 300;
                f.on_item(item(len)).unwrap();
                peer_sent += cost(len);
                max_queued = max_queued.max(f.queued_bytes());
            }
            // The consumer takes one or two items.
            for _ in 0..(1 + round % 2) {
                if let Some(Ok(t)) = f.try_take() {
                    peer_credit += t.grant.unwrap_or(0);
                }
            }
        }
        assert!(max_queued <= window + 300, "{max_queued}");
    }
}
