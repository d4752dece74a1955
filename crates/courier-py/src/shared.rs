//! What every Python object of one engine shares: the runtime, the engine,
//! the handler queue; and the one way a Python thread waits on Courier.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::errors;
use crate::handle::Handle;
use crate::jobs::{Job, Jobs};
use crate::pickle;

/// How long a waiting thread stays inside the runtime before it checks for
/// signals (Ctrl-C). It bounds how late a KeyboardInterrupt is raised; a
/// call's own latency does not depend on it.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How deep handlers may nest on one thread: a handler waiting runs other
/// requests' handlers (so a handler can call its own engine), up to this
/// depth; deeper waits only wait.
const MAX_NESTED_HANDLERS: usize = 8;

/// How long a wait inside a handler lasts before that thread runs other
/// handlers: long enough for a response or a request to be sent, so only
/// real waits (a call to this engine itself, a slow peer) nest handlers.
const NESTED_PATIENCE: Duration = Duration::from_millis(1);

/// The stack of a handler thread: room for nested handlers (each is a
/// Python call inside a wait), debug builds included.
const HANDLER_THREAD_STACK: usize = 16 << 20;

thread_local! {
    /// How many handlers this thread is running, one inside another's wait.
    static HANDLER_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The job queue this thread is a dedicated handler thread of (its
    /// address), or 0.
    static HANDLER_THREAD_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The request whose Python handler this thread is running (the
    /// innermost one, when handlers nest), if any.
    static SERVING: std::cell::RefCell<Option<courier::CancelToken>> =
        const { std::cell::RefCell::new(None) };
}

/// The cancellation token of the request whose Python handler this thread
/// is running, if any: a call made here inherits its deadline and is
/// cancelled with it.
///
/// The binding keeps this record itself rather than running the handler
/// inside `CancelToken::scope`: the engine reads its own record when a
/// call's future is first polled, and a thread waiting inside a handler
/// drives the engine's runtime (without a progress thread), so calls that
/// other threads started would be polled there, inside the scope, and
/// inherit a request that is not theirs. A call instead reads this record
/// on the thread that makes it, and runs its own future only under
/// `CancelToken::in_scope` (`remote.rs`).
pub(crate) fn serving() -> Option<courier::CancelToken> {
    SERVING.with(|s| s.borrow().clone())
}

/// Runs `f` as part of the request of `token` (see [`serving`]); the
/// request served before is back afterwards, even if `f` unwinds.
fn serve<T>(token: courier::CancelToken, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<courier::CancelToken>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SERVING.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = SERVING.with(|s| s.borrow_mut().replace(token));
    let _restore = Restore(previous);
    f()
}

fn queue_id(jobs: &Arc<Jobs>) -> usize {
    Arc::as_ptr(jobs) as usize
}

pub(crate) struct Shared {
    pub(crate) engine: courier::Engine,
    pub(crate) jobs: Arc<Jobs>,
    /// Whether the runtime is a progress thread (else the waiting threads
    /// drive it).
    pub(crate) progress_thread: bool,
    /// Dedicated handler threads (at least one with a progress thread).
    pub(crate) rpc_threads: usize,
    /// The Mercury spelling the engine was made with (`na+sm`, `ofi+tcp`),
    /// when it is not the canonical protocol name: addresses print with it
    /// (`address.rs`), as PyMargo prints the spelling it was given.
    pub(crate) spelling: std::sync::OnceLock<String>,
    /// `None` only while dropping.
    rt: Option<Runtime>,
    /// asyncio's state for this engine (`aio.rs`).
    pub(crate) aio: crate::aio::AioState,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.jobs.close();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

enum Step<T> {
    Done(T),
    Job(Job),
    Signals,
}

impl Shared {
    pub(crate) fn new(
        engine: courier::Engine,
        rt: Runtime,
        jobs: Arc<Jobs>,
        progress_thread: bool,
        rpc_threads: usize,
    ) -> Arc<Self> {
        let shared = Arc::new(Self {
            engine,
            jobs: jobs.clone(),
            progress_thread,
            rpc_threads,
            spelling: std::sync::OnceLock::new(),
            rt: Some(rt),
            aio: crate::aio::AioState::default(),
        });
        let closing = jobs.clone();
        shared.engine.on_finalize(move || closing.close());
        if !jobs.inline {
            for i in 0..rpc_threads.max(1) {
                let queue = jobs.clone();
                let weak = Arc::downgrade(&shared);
                let spawned = std::thread::Builder::new()
                    .name(format!("courier-py-rpc-{i}"))
                    .stack_size(HANDLER_THREAD_STACK)
                    .spawn(move || handler_thread(&queue, &weak));
                if spawned.is_err() {
                    // Without its threads the engine cannot serve: refuse
                    // requests (callers get an error) rather than queue them.
                    jobs.close();
                }
            }
        }
        shared
    }

    fn runtime(&self) -> &Runtime {
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime is only taken when dropping"))
    }

    /// Runs `fut` on the runtime in the background.
    pub(crate) fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime().spawn(fut)
    }

    /// Blocks this thread until `fut` completes, with the GIL released.
    /// `fut` is polled by this thread only: it must hold no lock of the
    /// engine while pending (else use [`Self::run`]).
    ///
    /// Between slices of at most [`SIGNAL_CHECK`] it checks for signals,
    /// so Ctrl-C raises KeyboardInterrupt here. Without a progress thread,
    /// this thread drives the engine meanwhile and runs the Python handlers
    /// whose requests arrive (Margo's progress loop).
    pub(crate) fn wait<F>(
        self: &Arc<Self>,
        py: Python<'_>,
        what: &str,
        fut: F,
    ) -> PyResult<F::Output>
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(errors::courier_error(
                py,
                format!(
                    "{what} waits for the engine and cannot be called from inside its \
                     progress loop (a finalize callback runs there)"
                ),
            ));
        }
        let rt = self.runtime();
        let jobs = self.runs_jobs().then_some(&*self.jobs);
        let nested = HANDLER_DEPTH.with(|d| d.get()) > 0;
        let mut fut = std::pin::pin!(fut);
        loop {
            let step = py.detach(|| {
                rt.block_on(async {
                    tokio::select! {
                        biased;
                        out = fut.as_mut() => Step::Done(out),
                        job = async {
                            match jobs {
                                Some(j) => {
                                    // Let ready tasks run first (the
                                    // call or response being waited for,
                                    // typically); inside a handler, wait a
                                    // little more, so handlers nest only
                                    // when the wait is a real one.
                                    if nested {
                                        tokio::time::sleep(NESTED_PATIENCE).await;
                                    } else {
                                        tokio::task::yield_now().await;
                                    }
                                    j.next().await
                                }
                                None => std::future::pending().await,
                            }
                        } => Step::Job(job),
                        () = tokio::time::sleep(SIGNAL_CHECK) => Step::Signals,
                    }
                })
            });
            match step {
                Step::Done(out) => {
                    self.jobs.pass_on();
                    return Ok(out);
                }
                Step::Job(job) => self.run_job(py, job)?,
                Step::Signals => {}
            }
            py.check_signals()?;
        }
    }

    /// Whether this thread runs handlers while it waits: without handler
    /// threads, any thread; with them, a handler thread (a handler calling
    /// its own engine would otherwise wait for itself, where a Margo ULT
    /// would let others run); not past [`MAX_NESTED_HANDLERS`].
    fn runs_jobs(&self) -> bool {
        (self.jobs.inline || HANDLER_THREAD_OF.with(|t| t.get()) == queue_id(&self.jobs))
            && HANDLER_DEPTH.with(|d| d.get()) < MAX_NESTED_HANDLERS
    }

    /// Waits for `fut` like [`Self::wait`], for futures that may hold a lock
    /// of the engine while pending (a call, a response, a lookup): when this
    /// thread may run handlers meanwhile, the future runs as a task of its
    /// own, so a handler waiting for the same lock cannot wait for a future
    /// that only its own thread would poll. Dropped (Ctrl-C) it is aborted.
    pub(crate) fn run<F>(
        self: &Arc<Self>,
        py: Python<'_>,
        what: &str,
        fut: F,
    ) -> PyResult<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if !self.runs_jobs() {
            return self.wait(py, what, fut);
        }
        struct AbortOnDrop<T>(JoinHandle<T>);
        impl<T> Drop for AbortOnDrop<T> {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut task = AbortOnDrop(self.spawn(fut));
        match self.wait(py, what, &mut task.0)? {
            Ok(out) => Ok(out),
            Err(_) => Err(errors::courier_error(
                py,
                format!("{what} was abandoned: the engine's runtime shut down"),
            )),
        }
    }

    /// Lets the engine make a little progress (without a progress thread,
    /// nothing moves unless a thread is waiting in it): runs the tasks that
    /// are ready, e.g. sends a request just started, and a handler waiting.
    pub(crate) fn tick(self: &Arc<Self>, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.progress_thread || !self.jobs.inline {
            return Ok(());
        }
        self.wait(py, what, tokio::task::yield_now())?;
        if self.runs_jobs() {
            if let Some(job) = self.jobs.try_pop() {
                self.run_job(py, job)?;
            }
        }
        Ok(())
    }

    /// Lets the engine read what has arrived, without running handlers:
    /// for `Handle.is_cancelled()`, which a handler polls while it works.
    /// Without a progress thread nothing reads the caller's `Cancel` frame
    /// unless a thread drives the engine, and a handler that works does
    /// not wait in it. With a progress thread (or inside the runtime) it
    /// does nothing.
    pub(crate) fn nudge(&self, py: Python<'_>) {
        if self.progress_thread
            || !self.jobs.inline
            || tokio::runtime::Handle::try_current().is_ok()
        {
            return;
        }
        let rt = self.runtime();
        py.detach(|| {
            rt.block_on(async {
                // Twice: the first lets the I/O driver see what arrived,
                // the second runs the tasks it woke (the reader).
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
            });
        });
    }

    /// Finalizes the engine and waits until it is, without raising (for
    /// garbage collection). Inside the runtime it can only start it.
    pub(crate) fn finalize_quietly(&self) {
        let engine = self.engine.clone();
        if tokio::runtime::Handle::try_current().is_ok() {
            self.runtime().spawn(async move { engine.finalize().await });
        } else {
            self.runtime()
                .block_on(async move { engine.finalize().await });
        }
    }

    /// Runs one Python handler (GIL held, outside the runtime). Returns an
    /// error only for what must go on up the waiting thread's stack:
    /// KeyboardInterrupt, SystemExit (the caller gets an error either way).
    pub(crate) fn run_job(self: &Arc<Self>, py: Python<'_>, job: Job) -> PyResult<()> {
        let Job {
            handle,
            payload,
            func,
            done,
        } = job;
        if handle.is_cancelled() {
            // The caller gave up (or the deadline passed) while the request
            // waited for a thread: its handler does not run, as the
            // engine's own handlers do not.
            let _ = done.send(Err(
                "the request was cancelled before its handler ran".into()
            ));
            return Ok(());
        }
        let rpc = handle.rpc_name().to_owned();
        let token = handle.cancel_token();
        let handle = Handle::new(handle, self.clone());
        let unsent = handle.unsent_response();
        HANDLER_DEPTH.with(|d| d.set(d.get() + 1));
        let outcome = serve(token, || call_handler(py, handle, &payload, &func));
        HANDLER_DEPTH.with(|d| d.set(d.get() - 1));
        match outcome {
            Ok(()) => {
                // A response `respond` could not pickle, and none since: the
                // caller gets that error (`Handle::unsent_response`).
                let _ = done.send(unsent.take().map_or(Ok(()), Err));
                Ok(())
            }
            Err(err) => {
                let message = errors::describe_handler_error(py, &rpc, &err);
                let _ = done.send(Err(message));
                if err.is_instance_of::<PyException>(py) {
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// `func(handle, *args, **kwargs)`; the handle object is released before
/// returning, so a handler that neither responded nor kept its handle is
/// reported to the caller at once.
fn call_handler(py: Python<'_>, handle: Handle, payload: &[u8], func: &Py<PyAny>) -> PyResult<()> {
    let handle = Py::new(py, handle)?;
    let (args, kwargs) = pickle::load_arguments(py, payload).map_err(|e| {
        errors::courier_error(
            py,
            format!(
                "cannot decode the arguments (a pickled (args, kwargs) pair, as courier and \
                 pymargo send): {e}"
            ),
        )
    })?;
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(handle.into_any().into_bound(py));
    all.extend(args.iter());
    let all = PyTuple::new(py, all)?;
    let kwargs: Option<&Bound<'_, PyDict>> = (!kwargs.is_empty()).then_some(&kwargs);
    func.bind(py).call(all, kwargs)?;
    Ok(())
}

/// A dedicated handler thread: runs jobs until the engine is finalized.
fn handler_thread(jobs: &Arc<Jobs>, shared: &Weak<Shared>) {
    HANDLER_THREAD_OF.with(|t| t.set(queue_id(jobs)));
    while let Some(job) = jobs.next_blocking() {
        let Some(shared) = shared.upgrade() else {
            break;
        };
        // Not while the interpreter is shutting down: the job is dropped
        // and its caller gets an error.
        Python::try_attach(|py| {
            if let Err(e) = shared.run_job(py, job) {
                e.print(py);
            }
        });
    }
}
