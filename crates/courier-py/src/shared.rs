//! What every Python object of one engine shares: the runtime, the engine,
//! the handler queue; and the one way a Python thread waits on Courier.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Once, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::errors;
use crate::handle::Handle;
use crate::jobs::{Job, Jobs};
use crate::pickle;

/// How long a waiting thread stays inside the runtime before it checks for
/// signals (Ctrl-C). It bounds how late a KeyboardInterrupt is raised; a
/// call's own latency does not depend on it.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// How long a wait inside a handler lasts before the handler lends its
/// place to the next request (`Jobs::lend`): long enough for a response or
/// a request to be written, so that only real waits (a call to this engine
/// itself, a slow peer) hand requests to another thread.
const LEND_PATIENCE: Duration = Duration::from_millis(1);

/// The stack of a handler thread, debug builds included.
const HANDLER_THREAD_STACK: usize = 16 << 20;

/// The name of the engine's own thread (without a progress thread).
const ENGINE_THREAD_NAME: &str = "courier-py-progress";

/// The name of the handler threads with a progress thread or RPC threads,
/// and of those started for handlers that lend their place.
const RPC_THREAD_NAME: &str = "courier-py-rpc";

thread_local! {
    /// The engine whose handlers this thread runs, if it is a handler
    /// thread (dangling otherwise).
    static POOL: std::cell::RefCell<Weak<Shared>> = const { std::cell::RefCell::new(Weak::new()) };
    /// Whether this is Python's main thread, once known.
    static MAIN_THREAD: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// The cancellation token of the request whose Python handler this thread
/// is running, if any: a call made here inherits its deadline and is
/// cancelled with it.
///
/// The handler runs under `CancelToken::serve_here`, not inside
/// `CancelToken::scope`: the engine reads its own record when a call's
/// future is first polled, and a thread waiting in the engine may drive
/// its runtime, so calls that other threads started would be polled there,
/// inside the scope, and inherit a request that is not theirs. A call
/// instead reads this record on the thread that makes it, and runs its own
/// future only under `CancelToken::in_scope` (`remote.rs`).
pub(crate) fn serving() -> Option<courier::CancelToken> {
    courier::CancelToken::served_here()
}

/// Whether this is Python's main thread, the only one that ever raises
/// KeyboardInterrupt (worked out once per thread; when unknown, yes).
fn is_main_thread(py: Python<'_>) -> bool {
    fn ask(py: Python<'_>) -> PyResult<bool> {
        let threading = py.import("threading")?;
        let main: u64 = threading
            .call_method0("main_thread")?
            .getattr("ident")?
            .extract()?;
        let this: u64 = threading.call_method0("get_ident")?.extract()?;
        Ok(main == this)
    }
    MAIN_THREAD.with(|m| match m.get() {
        Some(main) => main,
        None => {
            let main = ask(py).unwrap_or(true);
            m.set(Some(main));
            main
        }
    })
}

fn is_serving() -> bool {
    serving().is_some()
}

/// A handler's place lent while it waits (see `Jobs::lend`); given back
/// when dropped.
struct Lent(Arc<Shared>);

impl Lent {
    /// Lends this thread's place if it is a handler thread running a
    /// handler (of any engine: a handler of A waiting on B lends its place
    /// at A, where B's handler may call back).
    fn lend() -> Option<Self> {
        if !is_serving() {
            return None;
        }
        let pool = POOL.with(|p| p.borrow().upgrade())?;
        if pool.jobs.lend() {
            pool.start_handler_thread(RPC_THREAD_NAME);
        }
        Some(Self(pool))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.jobs.unlend();
    }
}

pub(crate) struct Shared {
    pub(crate) engine: courier::Engine,
    pub(crate) jobs: Arc<Jobs>,
    /// PyMargo's `use_progress_thread` (or RPC threads): the handler
    /// threads start with the engine, one more than the RPC threads, so
    /// one of them always drives it.
    pub(crate) progress_thread: bool,
    /// PyMargo's `num_rpc_threads` (handler threads: at least one with a
    /// progress thread).
    pub(crate) rpc_threads: usize,
    /// The Mercury spellings the engine was made with (`na+sm`,
    /// `ofi+tcp`), for each of its protocols given as an alias rather than
    /// by its canonical name: addresses print with them (`address.rs`), as
    /// PyMargo prints the spelling it was given.
    pub(crate) spellings: std::sync::OnceLock<Vec<crate::address::Spelling>>,
    /// asyncio's state for this engine (`aio.rs`).
    pub(crate) aio: crate::aio::AioState,
    /// Whether the handler threads were started (at the first handler
    /// registered).
    started: Once,
    /// Set once a handler thread runs: one drives the engine while it
    /// waits for requests.
    engine_thread: AtomicBool,
    /// Tells the handler threads to end.
    stop: watch::Sender<bool>,
    /// `None` only while dropping.
    rt: Option<Arc<Runtime>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.jobs.close();
        self.stop.send_replace(true);
        if let Some(rt) = self.rt.take() {
            // The engine's thread, if it still holds the runtime, shuts it
            // down itself when it ends.
            if let Ok(rt) = Arc::try_unwrap(rt) {
                rt.shutdown_background();
            }
        }
    }
}

enum Step<T> {
    Done(T),
    Signals,
    Lend,
}

/// One slice of a wait: `fut` until it completes or, if `length` is set,
/// until that much time has passed. The timer is armed only once `fut` is
/// pending: most waits end at the first poll (a response written, a
/// request sent), and a timer armed from outside a progress thread wakes
/// it to re-arm its own.
struct Slice<'a, F: Future> {
    fut: Pin<&'a mut F>,
    length: Option<Duration>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// What the end of the slice means: lend the handler's place, or
    /// check for signals.
    lend: bool,
}

impl<F: Future> Future for Slice<'_, F> {
    type Output = Step<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(out) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Step::Done(out));
        }
        let Some(length) = self.length else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(length)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) if self.lend => Poll::Ready(Step::Lend),
            Poll::Ready(()) => Poll::Ready(Step::Signals),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Shared {
    pub(crate) fn new(
        engine: courier::Engine,
        rt: Runtime,
        progress_thread: bool,
        rpc_threads: usize,
    ) -> Arc<Self> {
        let jobs = Arc::new(Jobs::new(rpc_threads));
        let shared = Arc::new(Self {
            engine,
            jobs: jobs.clone(),
            progress_thread,
            rpc_threads,
            spellings: std::sync::OnceLock::new(),
            aio: crate::aio::AioState::default(),
            started: Once::new(),
            engine_thread: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            rt: Some(Arc::new(rt)),
        });
        shared.engine.on_finalize(move || jobs.close());
        shared
    }

    fn runtime(&self) -> &Arc<Runtime> {
        self.rt
            .as_ref()
            .unwrap_or_else(|| unreachable!("the runtime is only taken when dropping"))
    }

    /// Starts the threads that run Python handlers, once: without a
    /// progress thread, at the first handler registered (an engine that
    /// serves nothing has none), the engine's own thread; with one, when
    /// the engine is built, `num_rpc_threads + 1` threads (at least 2).
    /// Each waits for requests inside the runtime, the one holding it
    /// driving it, and runs the handler of a request it read itself.
    pub(crate) fn start_handlers(self: &Arc<Self>) {
        self.started.call_once(|| {
            let name = if self.progress_thread {
                RPC_THREAD_NAME
            } else {
                ENGINE_THREAD_NAME
            };
            for _ in 0..self.jobs.initial_threads(self.progress_thread) {
                if self.jobs.add_thread() {
                    self.start_handler_thread(name);
                }
            }
        });
    }

    /// Starts one more handler thread (counted already in the pool).
    fn start_handler_thread(self: &Arc<Self>, name: &str) {
        let rt = self.runtime().clone();
        let jobs = self.jobs.clone();
        let stop = self.stop.subscribe();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .stack_size(HANDLER_THREAD_STACK)
            .spawn(move || handler_thread(rt, &jobs, stop, weak));
        match spawned {
            Ok(_) => self.engine_thread.store(true, Ordering::Release),
            Err(_) => self.thread_failed(),
        }
    }

    /// A handler thread could not be started: if none runs, the engine
    /// cannot serve, so it refuses requests (callers get an error) rather
    /// than queue them.
    fn thread_failed(&self) {
        if self.jobs.thread_failed() == 0 {
            self.jobs.close();
        }
    }

    /// Runs `fut` at once, as far as it goes without waiting (in the
    /// runtime's context, from any thread), and the rest on the runtime
    /// in the background: for what must leave now even if no thread
    /// drives the engine (a stream's cancellation, when its call is
    /// dropped).
    pub(crate) fn start<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut fut = Box::pin(fut);
        let _runtime = self.runtime().enter();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if fut.as_mut().poll(&mut cx).is_pending() {
            self.runtime().spawn(fut);
        }
    }

    /// `op` (a send: a stream's item, its end, its opening request) and,
    /// without a progress thread, one turn of the engine after it, for
    /// [`Self::wait`]: what it queued (a QUIC stream's packets, which a
    /// task of the engine's sends) leaves before the wait returns, even if
    /// the program then waits elsewhere.
    pub(crate) fn flushed<'a, F>(&self, op: F) -> impl Future<Output = F::Output> + Send + 'a
    where
        F: Future + Send + 'a,
        F::Output: Send,
    {
        let turn = !self.progress_thread;
        async move {
            let out = op.await;
            if turn {
                tokio::task::yield_now().await;
            }
            out
        }
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
    ///
    /// Between slices of at most [`SIGNAL_CHECK`] it checks for signals,
    /// so Ctrl-C raises KeyboardInterrupt here. Without a progress thread,
    /// this thread helps drive the engine meanwhile (it takes the runtime
    /// whenever the engine's own thread leaves it to run a handler), so a
    /// call's timeout fires whatever the handlers do. It never runs
    /// handlers: inside a handler, a wait that lasts lends the handler's
    /// place to another thread ([`Lent`]).
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
        // Only the main thread ever sees KeyboardInterrupt: other threads
        // wait in one go, without a timer (which, armed from outside a
        // progress thread, would wake it to re-arm its own).
        let main = is_main_thread(py);
        let mut lent = None;
        let mut may_lend = is_serving();
        let mut fut = std::pin::pin!(fut);
        loop {
            let slice = if may_lend {
                Some(LEND_PATIENCE)
            } else if main {
                Some(SIGNAL_CHECK)
            } else {
                None
            };
            let step = py.detach(|| {
                rt.block_on(Slice {
                    fut: fut.as_mut(),
                    length: slice,
                    timer: None,
                    lend: may_lend,
                })
            });
            match step {
                Step::Done(out) => {
                    drop(lent);
                    return Ok(out);
                }
                Step::Lend => {
                    may_lend = false;
                    lent = Lent::lend();
                }
                Step::Signals => {}
            }
            py.check_signals()?;
        }
    }

    /// Waits for `fut`, which only the engine's progress needs to complete
    /// (`wait_for_finalize`, `sleep`), without taking part in it when the
    /// engine's own thread drives it: this thread then parks (GIL released,
    /// checking for signals), and the engine's thread keeps the runtime to
    /// itself, so requests are read and handled there without crossing
    /// threads. Otherwise as [`Self::wait`].
    pub(crate) fn wait_idle<F>(
        self: &Arc<Self>,
        py: Python<'_>,
        what: &str,
        fut: F,
    ) -> PyResult<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if !self.engine_thread.load(Ordering::Acquire)
            || is_serving()
            || tokio::runtime::Handle::try_current().is_ok()
        {
            return self.wait(py, what, fut);
        }
        struct AbortOnDrop<T>(JoinHandle<T>);
        impl<T> Drop for AbortOnDrop<T> {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let _task = AbortOnDrop(self.spawn(async move {
            let _ = tx.send(fut.await);
        }));
        let main = is_main_thread(py);
        let mut rx = rx;
        loop {
            // The receiver moves to the detached closure and back (it is
            // Send, not Sync).
            let (received, back) = py.detach(move || {
                let received = if main {
                    rx.recv_timeout(SIGNAL_CHECK)
                } else {
                    rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
                };
                (received, rx)
            });
            rx = back;
            match received {
                Ok(out) => return Ok(out),
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(errors::courier_error(
                        py,
                        format!("{what} was abandoned: the engine's runtime shut down"),
                    ))
                }
            }
        }
    }

    /// Lets the engine make a little progress: runs the tasks that are
    /// ready, e.g. sends a request just started, when no thread drives the
    /// engine (its own thread busy in a handler, or none). With a progress
    /// thread it does nothing.
    pub(crate) fn tick(self: &Arc<Self>, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.progress_thread {
            return Ok(());
        }
        self.wait(py, what, tokio::task::yield_now())
    }

    /// Lets the engine read what has arrived: for `Handle.is_cancelled()`,
    /// which a handler polls while it works. Without a progress thread the
    /// engine's own thread is the one running the handler, so nothing reads
    /// the caller's `Cancel` frame unless a thread drives the engine. With
    /// a progress thread (or inside the runtime) it does nothing.
    pub(crate) fn nudge(&self, py: Python<'_>) {
        if self.progress_thread || tokio::runtime::Handle::try_current().is_ok() {
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

    /// Runs one Python handler taken from the queue (GIL held, outside the
    /// runtime), and frees its place. Returns an error only for what must
    /// not be swallowed: KeyboardInterrupt, SystemExit (the caller gets an
    /// error either way).
    fn run_job(self: &Arc<Self>, py: Python<'_>, job: Job) -> PyResult<()> {
        struct Finished<'a>(&'a Jobs);
        impl Drop for Finished<'_> {
            fn drop(&mut self) {
                self.0.finished();
            }
        }
        let _finished = Finished(&self.jobs);
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
        // A thread took the request up: its wait for one (the statistics'
        // `queue` phase, and its count among the `waiting`) ends here.
        handle.mark_started();
        let rpc = handle.rpc_name().to_owned();
        let token = handle.cancel_token();
        let handle = Handle::new(handle, self.clone());
        let unsent = handle.unsent_response();
        let outcome = token.serve_here(|| call_handler(py, handle, &payload, &func));
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
/// reported to the caller at once. A generator (or iterator) it returns is served as the response stream
/// (`stream::serve_returned`) before the handle is released.
fn call_handler(py: Python<'_>, handle: Handle, payload: &[u8], func: &Py<PyAny>) -> PyResult<()> {
    let handle = Bound::new(py, handle)?;
    let (args, kwargs) = pickle::load_arguments(py, payload)?;
    let mut all = Vec::with_capacity(args.len() + 1);
    all.push(handle.clone().into_any());
    all.extend(args.iter());
    let all = PyTuple::new(py, all)?;
    let kwargs: Option<&Bound<'_, PyDict>> = (!kwargs.is_empty()).then_some(&kwargs);
    let returned = func.bind(py).call(all, kwargs)?;
    crate::stream::serve_returned(py, &handle, returned)
}

/// Runs one job on a handler thread: takes the GIL for the Python call
/// only. Not while the interpreter is shutting down: the job is dropped
/// and its caller gets an error. A KeyboardInterrupt or SystemExit raised
/// by the handler has no thread of the program's to go up: it is printed.
fn run_on_handler_thread(jobs: &Jobs, shared: &Weak<Shared>, job: Job) {
    let ran = shared.upgrade().and_then(|shared| {
        Python::try_attach(|py| {
            if let Err(e) = shared.run_job(py, job) {
                e.print(py);
            }
        })
    });
    if ran.is_none() {
        jobs.finished();
    }
}

/// The next request for a handler thread (driving the runtime while it
/// waits); `None` once the engine's objects are all gone.
fn next_job(rt: &Runtime, jobs: &Jobs, stop: &mut watch::Receiver<bool>) -> Option<Job> {
    rt.block_on(async {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => None,
            job = jobs.next() => Some(job),
        }
    })
}

/// Runs `first`, then every request that follows, until there is none.
fn serve_jobs(
    first: Option<Job>,
    rt: &Runtime,
    jobs: &Jobs,
    stop: &mut watch::Receiver<bool>,
    shared: &Weak<Shared>,
) {
    let mut job = first;
    while let Some(j) = job {
        run_on_handler_thread(jobs, shared, j);
        job = next_job(rt, jobs, stop);
    }
}

/// A handler thread: waits for requests inside the runtime, driving it
/// while it holds it (reading requests, writing responses, firing
/// timers), and runs each handler outside it, so that another handler
/// thread, or a thread waiting in the engine, takes the runtime over
/// meanwhile. Ends when the engine's objects are all gone.
fn handler_thread(
    rt: Arc<Runtime>,
    jobs: &Jobs,
    mut stop: watch::Receiver<bool>,
    shared: Weak<Shared>,
) {
    POOL.with(|p| *p.borrow_mut() = shared.clone());
    // The first request is waited for without a Python thread state (the
    // thread takes nothing of Python's until a handler must run: an engine
    // serving bulk transfers never waits for the GIL). From then on the
    // thread keeps one state for its whole life: each handler only takes
    // the GIL (`Python::try_attach` finds the state), where attaching a
    // thread without one creates a state and destroys it again, an mmap
    // and a munmap of its frame stack per request (half of what Python
    // added to a round trip over shm; docs/python.md).
    let mut first = next_job(&rt, jobs, &mut stop);
    if first.is_some() {
        let held = Python::try_attach(|py| {
            let job = first.take();
            py.detach(|| serve_jobs(job, &rt, jobs, &mut stop, &shared));
        });
        if held.is_none() {
            serve_jobs(first.take(), &rt, jobs, &mut stop, &shared);
        }
    }
    if let Ok(rt) = Arc::try_unwrap(rt) {
        rt.shutdown_background();
    }
}
