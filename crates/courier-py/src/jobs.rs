//! The queue of requests waiting for a Python thread to run their handler.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use pyo3::prelude::*;
use tokio::sync::{oneshot, Notify};

/// One request for a Python handler.
pub(crate) struct Job {
    /// The engine's handle on the request (answer through it).
    pub(crate) handle: courier::Handle,
    /// The pickled `(args, kwargs)`.
    pub(crate) payload: Bytes,
    /// The registered Python callable.
    pub(crate) func: Arc<Py<PyAny>>,
    /// Completes the engine's handler: `Err(message)` is sent to the caller.
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// Jobs waiting to run, and the threads' ways to wait for them.
pub(crate) struct Jobs {
    /// Whether threads waiting in the engine run the jobs (no progress
    /// thread, no RPC threads), rather than dedicated threads.
    pub(crate) inline: bool,
    queue: Mutex<VecDeque<Job>>,
    closed: AtomicBool,
    /// Wakes a thread waiting in the engine (inline mode).
    notify: Notify,
    /// Wakes a dedicated handler thread.
    ready: Condvar,
}

impl Jobs {
    pub(crate) fn new(inline: bool) -> Self {
        Self {
            inline,
            queue: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; gives it back if the engine is finalized.
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        {
            let mut q = self.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(job);
            }
            q.push_back(job);
        }
        // A handler thread blocked in a call of its own handler waits on
        // `notify` too (see `Shared::wait`), so both are told.
        self.notify.notify_one();
        if !self.inline {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// A queued job, if any, without waiting.
    pub(crate) fn try_pop(&self) -> Option<Job> {
        self.pop()
    }

    fn pop(&self) -> Option<Job> {
        self.lock().pop_front()
    }

    /// The next job, for a thread waiting in the engine; pending forever
    /// once closed.
    pub(crate) async fn next(&self) -> Job {
        loop {
            // Created before looking, so a push in between leaves a permit.
            let notified = self.notify.notified();
            if let Some(job) = self.pop() {
                return job;
            }
            notified.await;
        }
    }

    /// After a waiting thread returned without taking a job it may have
    /// been woken for, passes the wake-up on.
    pub(crate) fn pass_on(&self) {
        if !self.lock().is_empty() {
            self.notify.notify_one();
        }
    }

    /// The next job for a dedicated handler thread; `None` once closed.
    pub(crate) fn next_blocking(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            if let Some(job) = q.pop_front() {
                return Some(job);
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuses new jobs, drops the queued ones (their callers get an error
    /// if their connection still lives) and ends the handler threads.
    pub(crate) fn close(&self) {
        let dropped: Vec<Job> = {
            let mut q = self.lock();
            self.closed.store(true, Ordering::Release);
            q.drain(..).collect()
        };
        self.ready.notify_all();
        drop(dropped);
    }
}
