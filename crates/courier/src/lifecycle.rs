//! An engine's life: running, finalizing, finalized; whether peers may shut
//! it down; the callbacks around finalize.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::watch;

use crate::sync::lock;

/// A callback run around finalize.
pub(crate) type Callback = Box<dyn FnOnce() + Send>;

/// Work awaited when finalize starts, while the engine still works.
pub(crate) type AsyncCallback =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The lifecycle flags and callbacks of one engine.
pub(crate) struct Lifecycle {
    /// Set by the first finalize, before its async callbacks run.
    closing: AtomicBool,
    finalizing: AtomicBool,
    finalized: watch::Sender<bool>,
    remote_shutdown: AtomicBool,
    pre_finalize_async: Mutex<Vec<AsyncCallback>>,
    pre_finalize: Mutex<Vec<Callback>>,
    on_finalize: Mutex<Vec<Callback>>,
}

impl Lifecycle {
    pub(crate) fn new(remote_shutdown: bool) -> Self {
        Self {
            closing: AtomicBool::new(false),
            finalizing: AtomicBool::new(false),
            finalized: watch::channel(false).0,
            remote_shutdown: AtomicBool::new(remote_shutdown),
            pre_finalize_async: Mutex::new(Vec::new()),
            pre_finalize: Mutex::new(Vec::new()),
            on_finalize: Mutex::new(Vec::new()),
        }
    }

    /// Whether finalize has started (or is over).
    pub(crate) fn is_finalizing(&self) -> bool {
        self.finalizing.load(Ordering::Acquire)
    }

    /// Marks the first finalize call as under way; true for the first
    /// caller only (its async callbacks run before finalize proper).
    pub(crate) fn begin_closing(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }

    /// Marks finalize as started; true for the first caller only.
    pub(crate) fn begin_finalize(&self) -> bool {
        !self.finalizing.swap(true, Ordering::AcqRel)
    }

    /// Whether finalize is over.
    pub(crate) fn is_finalized(&self) -> bool {
        *self.finalized.borrow()
    }

    /// Waits until finalize is over.
    pub(crate) async fn wait_finalized(&self) {
        let mut rx = self.finalized.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Says that finalize is over (wakes every waiter).
    pub(crate) fn set_finalized(&self) {
        self.finalizing.store(true, Ordering::Release);
        self.finalized.send_replace(true);
    }

    pub(crate) fn remote_shutdown_enabled(&self) -> bool {
        self.remote_shutdown.load(Ordering::Acquire)
    }

    pub(crate) fn enable_remote_shutdown(&self) {
        self.remote_shutdown.store(true, Ordering::Release);
    }

    pub(crate) fn add_pre_finalize_async(&self, cb: AsyncCallback) {
        lock(&self.pre_finalize_async).push(cb);
    }

    pub(crate) fn add_pre_finalize(&self, cb: Callback) {
        lock(&self.pre_finalize).push(cb);
    }

    pub(crate) fn add_on_finalize(&self, cb: Callback) {
        lock(&self.on_finalize).push(cb);
    }

    /// Runs (once, in the order registered) the async callbacks registered
    /// to run before finalize, awaiting each.
    pub(crate) async fn run_pre_finalize_async(&self) {
        let callbacks = std::mem::take(&mut *lock(&self.pre_finalize_async));
        for cb in callbacks {
            cb().await;
        }
    }

    /// Runs (once) the callbacks registered to run before finalize.
    pub(crate) fn run_pre_finalize(&self) {
        for cb in std::mem::take(&mut *lock(&self.pre_finalize)) {
            cb();
        }
    }

    /// Runs (once) the callbacks registered to run at the end of finalize.
    pub(crate) fn run_on_finalize(&self) {
        for cb in std::mem::take(&mut *lock(&self.on_finalize)) {
            cb();
        }
    }
}
