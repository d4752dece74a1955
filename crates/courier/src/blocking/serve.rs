//! Where a blocking engine's handlers run: on a thread of the engine's own,
//! outside the runtime.
//!
//! A blocking handler is a plain closure that may block (sleep, wait on a
//! lock, make blocking calls). Run inside the runtime, as a task, it would
//! hold the thread that drives the runtime's I/O and timers: with a
//! current-thread runtime, a caller waiting in a call on another thread
//! could not see its own timeout fire until the handler returned; and
//! without a progress thread, nothing would read a request while the
//! program's threads sleep outside Courier.
//!
//! So the engine's raw handler only queues a [`Job`]; the serving thread
//! (`courier-serve`, started at the first registration) waits for jobs
//! inside `block_on` — driving the engine's I/O while it waits, which is
//! what lets a server whose threads are all busy elsewhere still serve —
//! and runs each job *outside* it. While it runs one, the runtime is free:
//! a caller blocked in a call on another thread takes the runtime over,
//! and its timeout fires on time.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::cancel::CancelToken;
use crate::trace;

/// The name of a blocking engine's serving thread.
pub const SERVE_THREAD_NAME: &str = "courier-serve";

/// How many spare serving threads an engine may start, beyond its own
/// (one, or its RPC threads): one for each handler that waits in a
/// blocking call while no other serving thread is free (so a handler can
/// call its own engine, or a peer that calls back). Past it, such a wait
/// only waits (its timeout still fires).
pub(super) const MAX_SPARE_THREADS: usize = 64;

/// A request's handler, ready to run.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting for the serving threads.
pub(super) struct Queue {
    /// The serving threads' name.
    pub(super) name: &'static str,
    /// How many threads may serve at once (own ones and spares).
    limit: usize,
    jobs: Mutex<VecDeque<Job>>,
    closed: AtomicBool,
    notify: Notify,
    /// Serving threads alive.
    threads: AtomicUsize,
    /// Serving threads waiting for a job.
    idle: AtomicUsize,
}

impl Queue {
    /// A queue for `threads` serving threads named `name` (and spares).
    pub(super) fn new(name: &'static str, threads: usize) -> Self {
        Self {
            name,
            limit: threads + MAX_SPARE_THREADS,
            jobs: Mutex::default(),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`; gives it back once the engine is finalized.
    pub(super) fn push(&self, job: Job) -> Result<(), Job> {
        {
            let mut jobs = self.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(job);
            }
            jobs.push_back(job);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// The next job; `None` once the queue is closed.
    pub(super) async fn next(&self) -> Option<Job> {
        struct Idle<'a>(&'a AtomicUsize);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.idle.fetch_add(1, Ordering::AcqRel);
        let _idle = Idle(&self.idle);
        loop {
            // Made before looking, so a push in between leaves a permit.
            let notified = self.notify.notified();
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(job) = self.lock().pop_front() {
                return Some(job);
            }
            notified.await;
        }
    }

    /// Counts a serving thread in; `false` (not counted) when there are as
    /// many as the limit already.
    pub(super) fn thread_starts(&self) -> bool {
        self.threads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether a serving thread that just ran a job should end: two others
    /// wait for jobs (spares started while handlers waited in calls), so
    /// this one is not needed; one spare is kept, so a handler that calls
    /// out does not start a thread every time. Counts it out if so.
    pub(super) fn thread_retires(&self) -> bool {
        if self.idle.load(Ordering::Acquire) < 2 {
            return false;
        }
        self.threads.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Counts out a serving thread that ends because the queue closed.
    pub(super) fn thread_ends(&self) {
        self.threads.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether no serving thread waits for jobs.
    pub(super) fn none_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire) == 0
    }

    /// Refuses new jobs and drops the queued ones (their requests are
    /// answered with an error); the serving thread ends.
    pub(super) fn close(&self) {
        let dropped: Vec<Job> = {
            let mut jobs = self.lock();
            self.closed.store(true, Ordering::Release);
            jobs.drain(..).collect()
        };
        self.notify.notify_waiters();
        drop(dropped);
    }
}

/// `fut`, as part of the request this thread serves, if any, and with
/// this thread's trace context (`trace::with_context`, or the handler's).
pub(super) async fn scoped<F: Future>(fut: F) -> F::Output {
    let fut = trace::scoped(trace::here(), fut);
    match CancelToken::served_here() {
        Some(token) => token.in_scope(fut).await,
        None => fut.await,
    }
}
