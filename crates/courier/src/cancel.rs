//! Cancellation and inherited deadlines: what a handler knows of its
//! caller's patience, and what the calls it makes inherit.
//!
//! Every request a handler serves has a [`CancelToken`]. It fires when the
//! caller gives up (a `Cancel` frame: the caller dropped its call, or its
//! deadline passed there) or when the request's own deadline passes here.
//! An async handler's future is then dropped (`handler.rs`); a handler that
//! blocks polls the token.
//!
//! While a handler runs (each poll of its future, and the call that makes
//! it), this thread knows the request it serves (`current`). A call first
//! polled there inherits the request's deadline, unless it sets its own
//! timeout, and is cancelled with it: the peer it called is told in turn.
//! [`CancelToken::scope`] and [`CancelToken::in_scope`] extend that to
//! threads and futures the handler hands its work to.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

/// Why a request was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReason {
    /// The caller gave up: it dropped its call, cancelled it, or its
    /// deadline passed on its side (a `Cancel` frame).
    Caller = 1,
    /// The deadline the caller sent passed on this side.
    Deadline = 2,
    /// The connection to the caller was lost: no answer can reach it.
    ConnectionLost = 3,
}

impl CancelReason {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Caller),
            2 => Some(Self::Deadline),
            3 => Some(Self::ConnectionLost),
            _ => None,
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Caller => "the caller cancelled the call",
            Self::Deadline => "the caller's deadline passed",
            Self::ConnectionLost => "the connection to the caller was lost",
        })
    }
}

struct Inner {
    /// 0 while not cancelled, else a [`CancelReason`].
    reason: AtomicU8,
    notify: Notify,
    deadline: Option<Instant>,
}

/// The cancellation state of one request, shared by its handle, the
/// engine and whatever the handler hands it to: cheap to clone, `Send`,
/// pollable from a thread ([`CancelToken::is_cancelled`]) or awaited
/// ([`CancelToken::cancelled`]).
#[derive(Clone)]
pub struct CancelToken {
    inner: Arc<Inner>,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.reason())
            .field("deadline", &self.inner.deadline)
            .finish()
    }
}

impl CancelToken {
    /// A token for a request that must be done by `deadline`, if any.
    pub(crate) fn new(deadline: Option<Instant>) -> Self {
        Self {
            inner: Arc::new(Inner {
                reason: AtomicU8::new(0),
                notify: Notify::new(),
                deadline,
            }),
        }
    }

    /// The instant by which the caller wants its answer, if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Why the request was cancelled, if it was. A deadline that passed
    /// counts, even before the engine noticed it.
    pub fn reason(&self) -> Option<CancelReason> {
        if let Some(r) = CancelReason::from_u8(self.inner.reason.load(Ordering::Acquire)) {
            return Some(r);
        }
        match self.inner.deadline {
            Some(at) if Instant::now() >= at => Some(CancelReason::Deadline),
            _ => None,
        }
    }

    /// Whether the request was cancelled, or its deadline passed: a
    /// handler that blocks polls this between steps of its work.
    pub fn is_cancelled(&self) -> bool {
        self.reason().is_some()
    }

    /// Completes when the request is cancelled or its deadline passes.
    pub async fn cancelled(&self) -> CancelReason {
        let fired = self.fired_reason();
        match self.inner.deadline {
            None => fired.await,
            Some(at) => match tokio::time::timeout_at(at.into(), fired).await {
                Ok(r) => r,
                Err(_) => {
                    self.fire(CancelReason::Deadline);
                    self.reason().unwrap_or(CancelReason::Deadline)
                }
            },
        }
    }

    /// Completes when the token is fired (not when its deadline passes:
    /// for calls made for the request, which are bounded by it already).
    pub(crate) async fn fired_reason(&self) -> CancelReason {
        let inner = &self.inner;
        loop {
            let notified = inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = CancelReason::from_u8(inner.reason.load(Ordering::Acquire)) {
                return r;
            }
            notified.await;
        }
    }

    /// Runs `f` as part of the request this token belongs to: calls made
    /// in it inherit the request's deadline and cancellation, as calls made
    /// by its handler do. For a thread the handler hands its work to.
    pub fn scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut slot: Option<Arc<dyn Serving>> = Some(Arc::new(self.clone()));
        enter(&mut slot, f)
    }

    /// Polls `fut` as part of the request this token belongs to: calls and
    /// transfers it makes inherit the request's deadline and cancellation,
    /// wherever it is polled (a task the handler spawned, a runtime a
    /// binding drives). Only `fut` is: other futures polled by the same
    /// thread are not.
    pub async fn in_scope<F: std::future::Future>(&self, fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut slot: Option<Arc<dyn Serving>> = Some(Arc::new(self.clone()));
        std::future::poll_fn(move |cx| enter(&mut slot, || fut.as_mut().poll(cx))).await
    }

    /// Runs `f` as the handler of this token's request on this thread,
    /// for code that runs handlers outside any runtime (the blocking
    /// facade's serving threads, a binding's handler threads): calls made
    /// in `f` find the request with [`CancelToken::served_here`] and run
    /// their own future under [`CancelToken::in_scope`].
    ///
    /// Unlike [`CancelToken::scope`], nothing else is part of the request:
    /// a call made in `f` blocks in a runtime's `block_on`, where this
    /// thread may also poll other tasks (calls other threads started) for
    /// the first time, and those must not inherit it. The request served
    /// before is back afterwards, even if `f` unwinds.
    pub fn serve_here<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Restore(Option<CancelToken>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                SERVED_HERE.with(|s| *s.borrow_mut() = previous);
            }
        }
        let previous = SERVED_HERE.with(|s| s.borrow_mut().replace(self.clone()));
        let _restore = Restore(previous);
        f()
    }

    /// The request whose handler this thread runs under
    /// [`CancelToken::serve_here`], if any.
    pub fn served_here() -> Option<Self> {
        SERVED_HERE.with(|s| s.borrow().clone())
    }

    /// Cancels the request (the first reason stays). Returns whether this
    /// call cancelled it.
    pub(crate) fn fire(&self, reason: CancelReason) -> bool {
        let first = self
            .inner
            .reason
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.inner.notify.notify_waiters();
        }
        first
    }
}

/// A request being served, as calls made for it see it: its token is made
/// only when something asks for it (most handlers make no call, and never
/// wait: they pay for no token).
pub(crate) trait Serving: Send + Sync {
    /// The request's token.
    fn token(&self) -> CancelToken;

    /// The request as it is (to take it back from the thread's record
    /// without a second reference to it).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl Serving for CancelToken {
    fn token(&self) -> CancelToken {
        self.clone()
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

thread_local! {
    /// The request this thread serves outside a runtime (see
    /// [`CancelToken::serve_here`]).
    static SERVED_HERE: std::cell::RefCell<Option<CancelToken>> =
        const { std::cell::RefCell::new(None) };

    /// The request whose handler this thread is running, if any.
    static CURRENT: Cell<Option<Arc<dyn Serving>>> = const { Cell::new(None) };
}

/// The token of the request whose handler is running on this thread (see
/// the module docs), if any.
pub(crate) fn current() -> Option<CancelToken> {
    CURRENT.with(|c| {
        let serving = c.take();
        let token = serving.as_ref().map(|s| s.token());
        c.set(serving);
        token
    })
}

/// Runs `f` as part of the handler of the request in `slot` (moved in for
/// the call, and back after: no clone per poll).
pub(crate) fn enter<T>(slot: &mut Option<Arc<dyn Serving>>, f: impl FnOnce() -> T) -> T {
    let previous = CURRENT.with(|c| c.replace(slot.take()));
    let restore = Restore { slot, previous };
    let out = f();
    drop(restore);
    out
}

/// Puts back the request that ran before, even if `f` panicked, and gives
/// the slot its token back.
struct Restore<'a> {
    slot: &'a mut Option<Arc<dyn Serving>>,
    previous: Option<Arc<dyn Serving>>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        *self.slot = CURRENT.with(|c| c.replace(previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_first_reason_stays() {
        let t = CancelToken::new(None);
        assert!(!t.is_cancelled());
        assert!(t.fire(CancelReason::Caller));
        assert!(!t.fire(CancelReason::Deadline));
        assert_eq!(t.reason(), Some(CancelReason::Caller));
        assert!(t.clone().is_cancelled());
    }

    #[test]
    fn a_passed_deadline_is_a_cancellation() {
        let past = Instant::now();
        let t = CancelToken::new(Some(past));
        assert_eq!(t.reason(), Some(CancelReason::Deadline));
        assert_eq!(t.inner.reason.load(Ordering::Acquire), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_completes_on_fire_or_deadline() {
        let t = CancelToken::new(None);
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.cancelled().await }
        });
        tokio::task::yield_now().await;
        t.fire(CancelReason::Caller);
        assert_eq!(waiter.await.unwrap(), CancelReason::Caller);
        let d = CancelToken::new(Some(Instant::now() + Duration::from_millis(5)));
        assert_eq!(d.cancelled().await, CancelReason::Deadline);
        assert_ne!(d.inner.reason.load(Ordering::Acquire), 0);
    }

    #[test]
    fn current_is_set_while_entered_only() {
        assert!(current().is_none());
        let outer = CancelToken::new(None);
        outer.scope(|| {
            assert!(current().is_some());
            let inner = CancelToken::new(None);
            inner.scope(|| current().map(|c| c.fire(CancelReason::Caller)));
            assert!(inner.is_cancelled());
            // The outer request is back after the inner one.
            assert!(!current().is_some_and(|c| c.is_cancelled()));
        });
        assert!(!outer.is_cancelled());
        assert!(current().is_none());
    }

    #[tokio::test]
    async fn in_scope_holds_for_its_future_only() {
        let token = CancelToken::new(None);
        let seen = token
            .in_scope(async {
                tokio::task::yield_now().await;
                current().is_some()
            })
            .await;
        assert!(seen, "polled again after a yield, still in scope");
        assert!(current().is_none());
    }
}
