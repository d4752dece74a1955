//! Locks that shrug off poisoning: a lock is poisoned when a thread
//! panicked while holding it, and every table the engine guards stays
//! consistent across such a panic (each change is made under one lock, in
//! one step), so the engine goes on rather than failing every caller.
//!
//! And [`poll_once`], the engine's way of trying a future at once and
//! deciding what to do if it must wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Poll;

/// Locks `m`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks `l` for reading.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Locks `l` for writing.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` once, in the task that runs this, and says how it went: a
/// future that must wait has registered this task's waker, and can be
/// awaited later, moved to a task of its own, or raced with something.
pub(crate) async fn poll_once<F: Future + Unpin + ?Sized>(f: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
}
