//! The queue of requests waiting for a Python thread to run their handler,
//! and the accounting of the threads that run them.
//!
//! The handler threads wait for jobs inside the engine's runtime (one of
//! them drives it meanwhile); a request is given to the thread whose
//! reader received it when that thread is waiting, so the thread that
//! read a request runs its handler, and the runtime passes to the next
//! idle thread. At most `target` handlers run at once (1 without RPC
//! threads, else `num_rpc_threads`), as Margo's execution streams would
//! run them. A
//! handler that waits inside the engine (a call of its own, a transfer)
//! lends its place meanwhile ([`Jobs::lend`]): another thread may run the
//! next handler, and one is started when none is idle, up to
//! `max_threads`. So a handler that calls its own engine, or calls back its
//! caller, completes, without handlers ever running nested inside a wait.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::thread::ThreadId;

use bytes::Bytes;
use pyo3::prelude::*;
use tokio::sync::oneshot;

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
    /// The wakers of the threads waiting for a job, by thread.
    waiting: Vec<(ThreadId, Waker)>,
}

/// Jobs waiting to run, and the threads' ways to wait for them.
pub(crate) struct Jobs {
    state: Mutex<State>,
    closed: AtomicBool,
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
                waiting: Vec::new(),
            }),
            closed: AtomicBool::new(false),
            target,
            max_threads: target + EXTRA_THREADS,
        }
    }

    /// How many handler threads to start with: with `n` RPC threads, one
    /// more than `n`, so that one is always free to drive the engine.
    pub(crate) fn initial_threads(&self, progress_thread: bool) -> usize {
        if progress_thread {
            self.target + 1
        } else {
            1
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The waker to wake for a new job, taken out of the list: this
    /// thread's own if it waits (it is the one driving the engine, whose
    /// reader received the job: it runs it at once), else the longest
    /// waiting.
    fn waiter(s: &mut State) -> Option<Waker> {
        if s.waiting.is_empty() {
            return None;
        }
        let me = std::thread::current().id();
        let at = s.waiting.iter().position(|(t, _)| *t == me).unwrap_or(0);
        Some(s.waiting.swap_remove(at).1)
    }

    /// Queues a job; gives it back if the engine is finalized.
    pub(crate) fn push(&self, job: Job) -> Result<(), Job> {
        let waker = {
            let mut s = self.lock();
            if self.closed.load(Ordering::Acquire) {
                return Err(job);
            }
            s.queue.push_back(job);
            Self::waiter(&mut s)
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Takes the next job if one is queued and a place is free; the caller
    /// then runs it and calls [`Self::finished`].
    fn take(&self, s: &mut State) -> Option<Job> {
        if s.running >= self.target {
            return None;
        }
        let job = s.queue.pop_front()?;
        s.running += 1;
        Some(job)
    }

    /// The next job, for a handler thread, which waits inside the runtime
    /// (driving it meanwhile, when it holds it); pending forever once
    /// closed.
    pub(crate) async fn next(&self) -> Job {
        struct Idle<'a>(&'a Jobs);
        impl Drop for Idle<'_> {
            fn drop(&mut self) {
                let me = std::thread::current().id();
                let mut s = self.0.lock();
                s.idle -= 1;
                s.waiting.retain(|(t, _)| *t != me);
            }
        }
        self.lock().idle += 1;
        let _idle = Idle(self);
        std::future::poll_fn(|cx| {
            let mut s = self.lock();
            if !self.closed.load(Ordering::Acquire) {
                if let Some(job) = self.take(&mut s) {
                    return Poll::Ready(job);
                }
            }
            let me = std::thread::current().id();
            match s.waiting.iter_mut().find(|(t, _)| *t == me) {
                Some((_, w)) => w.clone_from(cx.waker()),
                None => s.waiting.push((me, cx.waker().clone())),
            }
            Poll::Pending
        })
        .await
    }

    /// Wakes one waiting thread if jobs are queued (a place came free).
    fn wake_if_queued(&self, s: &mut State) -> Option<Waker> {
        if s.queue.is_empty() {
            None
        } else {
            Self::waiter(s)
        }
    }

    /// A handler taken with `next` ended.
    pub(crate) fn finished(&self) {
        let waker = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            self.wake_if_queued(&mut s)
        };
        if let Some(w) = waker {
            w.wake();
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
        let (start, waker) = {
            let mut s = self.lock();
            s.running = s.running.saturating_sub(1);
            let start = s.idle == 0 && s.threads < self.max_threads;
            if start {
                s.threads += 1;
            }
            (start, self.wake_if_queued(&mut s))
        };
        if let Some(w) = waker {
            w.wake();
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
        let (dropped, waiting): (Vec<Job>, Vec<(ThreadId, Waker)>) = {
            let mut s = self.lock();
            self.closed.store(true, Ordering::Release);
            (s.queue.drain(..).collect(), std::mem::take(&mut s.waiting))
        };
        for (_, w) in waiting {
            w.wake();
        }
        drop(dropped);
    }
}
