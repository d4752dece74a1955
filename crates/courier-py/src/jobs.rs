//! The queue of requests waiting for a Python thread to run their handler,
//! and the accounting of the threads that run them.
//!
//! At most `target` handlers run at once (1 without RPC threads, else
//! `num_rpc_threads`), as Margo's execution streams would run them. A
//! handler that waits inside the engine (a call of its own, a transfer)
//! lends its place meanwhile ([`Jobs::lend`]): another thread may run the
//! next handler, and one is started when none is idle, up to
//! `max_threads`. So a handler that calls its own engine, or calls back its
//! caller, completes, without handlers ever running nested inside a wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// How many more threads than `target` may be started for handlers that
/// lend their place while they wait (a handler calling its own engine, or
/// calling back its caller, needs one; eight such waits deep is plenty).
const EXTRA_THREADS: usize = 8;

/// What the lock guards.
struct State {
    queue: VecDeque<Job>,
    /// Handlers running and not lent.
    running: usize,
    /// Handler threads started (the engine thread included).
    threads: usize,
    /// Handler threads waiting for a job.
    idle: usize,
    /// Handler threads parked on `ready` (told only when there are some).
    parked: usize,
}

/// Jobs waiting to run, and the threads' ways to wait for them.
pub(crate) struct Jobs {
    state: Mutex<State>,
    /// How many jobs are queued, readable without the lock: a handler
    /// thread spins on it before it parks.
    queued: AtomicUsize,
    closed: AtomicBool,
    /// Wakes the engine thread, which waits for jobs inside the runtime.
    notify: Notify,
    /// Wakes a handler thread parked outside the runtime.
    ready: Condvar,
    /// How many handlers may run at once.
    target: usize,
    /// How many handler threads may be started in all.
    max_threads: usize,
}

impl Jobs {
    /// A queue whose handlers run `target` at a time.
    pub(crate) fn new(target: usize) -> Self {
        let target = target.max(1);
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                running: 0,
                threads: 0,
                idle: 0,
                parked: 0,
            }),
            queued: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
            ready: Condvar::new(),
            target,
            max_threads: target + EXTRA_THREADS,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes a thread waiting for a job, of either kind; `parked` is how
    /// many handler threads were parked (read under the lock).
    fn wake(&self, parked: usize) {
        self.notify.notify_one();
        if parked > 0 {
            self.ready.notify_one();
        }
    }

    /// Queues a job; gives it back if the engine is finalized.
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        let parked = {
            let mut s = self.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(job);
            }
            s.queue.push_back(job);
            self.queued.fetch_add(1, Ordering::Release);
            s.parked
        };
        self.wake(parked);
        Ok(())
    }

    /// Takes the next job if one is queued and a place is free; the caller
    /// then runs it and calls [`Self::finished`].
    fn take(&self, s: &mut State) -> Option<Job> {
        if s.running >= self.target {
            return None;
        }
        let job = s.queue.pop_front()?;
        self.queued.fetch_sub(1, Ordering::Release);
        s.running += 1;
        Some(job)
    }

    /// The next job, for the engine thread, which waits inside the runtime
    /// (driving it meanwhile); pending forever once closed.
    pub(crate) async fn next(&self) -> Job {
        struct Idle<'a>(&'a Jobs);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                self.0.lock().idle -= 1;
            }
        }
        self.lock().idle += 1;
        let _idle = Idle(self);
        loop {
            // Created before looking, so a push in between leaves a permit.
            let notified = self.notify.notified();
            if !self.closed.load(Ordering::Acquire) {
                if let Some(job) = self.take(&mut self.lock()) {
                    return job;
                }
            }
            notified.await;
        }
    }

    /// The next job for a handler thread outside the runtime; `None` once
    /// closed. It first spins up to `spin` without the lock (a request
    /// often follows the last response within microseconds), then parks.
    pub(crate) fn next_blocking(&self, spin: Duration) -> Option<Job> {
        if !spin.is_zero() {
            let start = Instant::now();
            while start.elapsed() < spin && !self.closed.load(Ordering::Acquire) {
                if self.queued.load(Ordering::Acquire) > 0 {
                    if let Some(job) = self.take(&mut self.lock()) {
                        return Some(job);
                    }
                }
                std::hint::spin_loop();
            }
        }
        let mut s = self.lock();
        s.idle += 1;
        let job = loop {
            if self.closed.load(Ordering::Acquire) {
                break None;
            }
            if let Some(job) = self.take(&mut s) {
                break Some(job);
            }
            s.parked += 1;
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            s.parked -= 1;
        };
        s.idle -= 1;
        job
    }

    /// A handler taken with `next`/`next_blocking` ended.
    pub(crate) fn finished(&self) {
        let (more, parked) = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            (!s.queue.is_empty(), s.parked)
        };
        if more {
            self.wake(parked);
        }
    }

    /// Counts a handler thread about to be started; false when the pool is
    /// full.
    pub(crate) fn add_thread(&self) -> bool {
        let mut s = self.lock();
        if s.threads >= self.max_threads {
            return false;
        }
        s.threads += 1;
        true
    }

    /// A handler thread that could not be started after all; returns how
    /// many there are.
    pub(crate) fn thread_failed(&self) -> usize {
        let mut s = self.lock();
        s.threads = s.threads.saturating_sub(1);
        s.threads
    }

    /// A running handler starts a wait inside an engine: its place is lent
    /// to the next job. Returns true when a thread should be started to run
    /// it (none is idle, and the pool is not full: counted already).
    pub(crate) fn lend(&self) -> bool {
        let (start, more) = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            let start = s.idle == 0 && s.threads < self.max_threads;
            if start {
                s.threads += 1;
            }
            (start, (!s.queue.is_empty()).then_some(s.parked))
        };
        if let Some(parked) = more {
            self.wake(parked);
        }
        start
    }

    /// The wait of a handler that [`Self::lend`] lent its place ended: it
    /// runs on (over `target` for a while, if another took the place).
    pub(crate) fn unlend(&self) {
        self.lock().running += 1;
    }

    /// Refuses new jobs, drops the queued ones (their callers get an error
    /// if their connection still lives) and ends the handler threads.
    pub(crate) fn close(&self) {
        let dropped: Vec<Job> = {
            let mut s = self.lock();
            self.closed.store(true, Ordering::Release);
            self.queued.store(0, Ordering::Release);
            s.queue.drain(..).collect()
        };
        self.ready.notify_all();
        self.notify.notify_waiters();
        drop(dropped);
    }
}
