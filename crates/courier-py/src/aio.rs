//! asyncio: awaitable calls and `async def` handlers (docs/python.md,
//! "asyncio").
//!
//! **Only the event loop's thread touches Python.** Everything the engine
//! hands to an event loop goes through that loop's [`Mailbox`]: a queue,
//! and a socket pair whose reading end the loop watches (`add_reader`). An
//! engine thread posts without the GIL and writes one byte; the loop's
//! reader callback drains the queue with the GIL it holds anyway. No other
//! thread takes the GIL for asyncio, so nothing races the interpreter's
//! finalization (pyo3-async-runtimes completes futures from threads of its
//! own runtime with the GIL, which crashed the interpreter at exit when one
//! was still inside `call_soon_threadsafe`: docs/python.md says more).
//!
//! **Awaitables.** `call_async`, `respond_async`, `lookup_async`,
//! `ping_async` and `wait_for_finalize_async` run their work as a task on
//! the engine's runtime (`Shared::spawn`), as a non-blocking call does; the
//! task posts its outcome to the running loop's mailbox, whose drain
//! completes an asyncio future (the response is unpickled there). The
//! caller gets a coroutine awaiting that future (`courier._aio.awaited`),
//! so `asyncio.create_task` takes it too. When the future is cancelled
//! (the awaiting task is cancelled, `asyncio.wait_for` or `asyncio.timeout`
//! expires), its done callback aborts the engine's task
//! ([`OnCancel::Abort`]): a call's future dropped cancels the call and
//! tells its server.
//!
//! **Driving the engine.** Without a progress thread (PyMargo's default)
//! the engine moves only while a Python thread waits in it, and an event
//! loop never does. The first time asyncio uses such an engine (or when it
//! is made while a loop runs), [`drive`] starts a thread,
//! `courier-py-aio-driver`, that waits in it until it is finalized, as a
//! thread in `wait_for_finalize` would (and, like one, runs the engine's
//! blocking handlers whose requests arrive meanwhile).
//!
//! **`async def` handlers** ([`register`]) run on an event loop the Python
//! side chose (`courier/_aio.py`). A request's raw handler posts the start
//! of its handler to that loop's mailbox. On the loop, the arguments are
//! unpickled and the coroutine becomes a task, in a copy of the context in
//! which `courier._aio.request` names the request (so `call_async` from the
//! handler inherits its deadline and cancellation, as a blocking call made
//! from a blocking handler does). The task's outcome completes the raw
//! handler: an exception reaches the caller as a blocking handler's does.
//! When the request is cancelled the engine drops the raw handler's
//! future, which posts the task's cancellation (`asyncio.CancelledError`
//! inside the coroutine). An async generator function's items are the
//! response stream (`courier._aio.serve_async_generator` drives it, as the
//! task's coroutine).

use std::collections::VecDeque;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::{oneshot, Notify};

use crate::address::Address;
use crate::errors;
use crate::handle::Handle;
use crate::pickle;
use crate::shared::Shared;

/// The driver thread's name ([`drive`]).
const DRIVER_THREAD_NAME: &str = "courier-py-aio-driver";

/// The driver thread's stack: it runs blocking handlers, which may nest
/// (as the binding's handler threads do).
const DRIVER_THREAD_STACK: usize = 16 << 20;

/// What asyncio keeps per engine: whether its driver thread was started,
/// and the awaitables whose tasks have not ended.
#[derive(Default)]
pub(crate) struct AioState {
    driven: AtomicBool,
    pending: Arc<Pending>,
}

/// How many awaitables' tasks have not ended: the driver drives the
/// engine after its finalization until there are none (their outcomes,
/// errors mostly, still reach their loops).
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    none: Notify,
}

impl Pending {
    fn enter(self: &Arc<Self>) -> PendingGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        PendingGuard(self.clone())
    }

    async fn until_none(&self) {
        loop {
            // Made before looking, so an end in between is not missed.
            let none = self.none.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            none.await;
        }
    }
}

/// One awaitable's task, counted in [`Pending`] until dropped.
struct PendingGuard(Arc<Pending>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

/// Makes sure the engine moves while an event loop waits for it: without
/// a progress thread, starts the driver thread (once per engine). See the
/// module's comment.
pub(crate) fn drive(shared: &Arc<Shared>) -> PyResult<()> {
    if shared.progress_thread || shared.aio.driven.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    // The thread holds the engine until it is finalized (by `finalize()`,
    // a remote shutdown, the `Engine` object being garbage collected, or
    // the interpreter's exit, which finalize it) and no awaitable is left.
    let driven = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(DRIVER_THREAD_NAME.to_owned())
        .stack_size(DRIVER_THREAD_STACK)
        .spawn(move || loop {
            if !drive_until_done(&driven) {
                return; // the interpreter is going away
            }
            let aio = &driven.aio;
            aio.driven.store(false, Ordering::Release);
            // An awaitable made after the last look (on the finalized
            // engine: it fails at once, but only if driven) is counted
            // before its maker calls `drive`: either that call starts a
            // new driver, or this one sees it here and goes on.
            if aio.pending.count.load(Ordering::Acquire) == 0
                || aio.driven.swap(true, Ordering::AcqRel)
            {
                return;
            }
        });
    if let Err(e) = spawned {
        shared.aio.driven.store(false, Ordering::Release);
        return Err(PyRuntimeError::new_err(format!(
            "cannot start the thread that drives the engine for asyncio \
             ({DRIVER_THREAD_NAME}): {e}"
        )));
    }
    Ok(())
}

/// The driver's work: drives the engine until it is finalized and no
/// awaitable's task is left (their outcomes, errors mostly, still reach
/// their loops). False if the interpreter is going away.
fn drive_until_done(shared: &Arc<Shared>) -> bool {
    loop {
        let engine = shared.engine.clone();
        let pending = shared.aio.pending.clone();
        let attached = Python::try_attach(|py| {
            let waited = shared.wait(py, "the asyncio driver", async move {
                engine.wait_for_finalize().await;
                pending.until_none().await;
            });
            waited.map_err(|e| {
                // KeyboardInterrupt or SystemExit from a handler it ran:
                // printed, and the engine is driven on.
                e.print(py);
            })
        });
        match attached {
            Some(Ok(())) => return true,
            Some(Err(())) => {}
            None => return false,
        }
    }
}

// ---------------------------------------------------------------------
// An event loop's mailbox.

/// An outcome made a Python object (or exception) on the loop's thread.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What an engine thread hands to an event loop.
enum Delivery {
    /// Completes an asyncio future (unless it was cancelled).
    Complete { future: Py<PyAny>, outcome: Outcome },
    /// Starts an `async def` handler's task.
    Start(Starting),
    /// Cancels a handler's task (its request was cancelled).
    Cancel(Py<PyAny>),
}

/// One event loop's mailbox (see the module's comment): made by
/// `courier._aio.mailbox(loop)`, which has the loop watch `fileno()` and
/// call `_drain()` when it is readable.
#[pyclass(module = "courier._native", name = "_Mailbox", frozen)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    /// Whether a wake-up byte is on its way (one is enough).
    woken: AtomicBool,
    /// The end the engine's threads write a wake-up byte to.
    wake: UnixStream,
    /// The end the loop watches.
    watched: UnixStream,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Delivery>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `delivery` to the loop (from any thread, without the GIL).
    fn post(&self, delivery: Delivery) {
        self.lock().push_back(delivery);
        if !self.woken.swap(true, Ordering::AcqRel) {
            // Non-blocking, and at most one byte is ever unread: it cannot
            // be full. A loop that closed no longer reads it; what it would
            // have drained waits (docs/python.md).
            let _ = (&self.wake).write(&[1]);
        }
    }
}

#[pymethods]
impl Mailbox {
    #[new]
    fn py_new() -> PyResult<Self> {
        let made = UnixStream::pair().and_then(|(wake, watched)| {
            wake.set_nonblocking(true)?;
            watched.set_nonblocking(true)?;
            Ok((wake, watched))
        });
        let (wake, watched) = made.map_err(|e| {
            PyRuntimeError::new_err(format!(
                "cannot make the socket pair that wakes an asyncio event loop: {e}"
            ))
        })?;
        Ok(Self {
            queue: Mutex::new(VecDeque::new()),
            woken: AtomicBool::new(false),
            wake,
            watched,
        })
    }

    /// The descriptor the loop watches.
    fn fileno(&self) -> i32 {
        self.watched.as_raw_fd()
    }

    /// The loop's reader callback: runs what was posted.
    fn _drain(&self, py: Python<'_>) {
        let mut sink = [0u8; 64];
        while matches!((&self.watched).read(&mut sink), Ok(n) if n > 0) {}
        // Before taking the queue: a post after this writes a new byte.
        self.woken.store(false, Ordering::Release);
        let posted = std::mem::take(&mut *self.lock());
        for delivery in posted {
            match delivery {
                Delivery::Complete { future, outcome } => complete(py, future.bind(py), outcome),
                Delivery::Start(starting) => start(py, starting),
                Delivery::Cancel(task) => {
                    if let Err(e) = task.bind(py).call_method0("cancel") {
                        e.print(py);
                    }
                }
            }
        }
    }
}

/// Sets an asyncio future's result or exception, unless it was cancelled.
fn complete(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Outcome) {
    let set = (|| -> PyResult<()> {
        if future.call_method0("done")?.is_truthy()? {
            return Ok(()); // cancelled meanwhile
        }
        match outcome(py) {
            Ok(value) => future.call_method1("set_result", (value,))?,
            Err(err) => future.call_method1("set_exception", (err.into_value(py),))?,
        };
        Ok(())
    })();
    if let Err(e) = set {
        e.print(py);
    }
}

static AIO_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `courier._aio`, the Python half of asyncio support.
fn aio_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = AIO_MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("courier._aio")?.unbind())
    })?;
    Ok(m.bind(py))
}

/// The mailbox of `event_loop` (`courier._aio.mailbox`).
fn mailbox_of(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Py<Mailbox>> {
    Ok(aio_module(py)?
        .call_method1("mailbox", (event_loop,))?
        .cast_into::<Mailbox>()?
        .unbind())
}

// ---------------------------------------------------------------------
// Awaitables.

/// What cancelling the awaiting task does to the engine's task.
pub(crate) enum OnCancel {
    /// Aborts it: a call is cancelled (and its server told), a wait ends.
    Abort,
    /// Lets it finish (a response being sent: stopping it halfway would
    /// close the connection).
    Finish,
}

/// The done callback of an awaitable's future: aborts the engine's task
/// when the future was cancelled.
#[pyclass(module = "courier._native", name = "_AbortOnCancel", frozen)]
struct AbortOnCancel {
    abort: tokio::task::AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.abort.abort();
        }
        Ok(())
    }
}

/// Completes an awaitable's asyncio future from its task: with the
/// task's outcome, or, if the task is dropped before (its engine's runtime
/// shut down, or the future was cancelled, which the loop then ignores),
/// with an error.
struct Completion {
    mailbox: Py<Mailbox>,
    future: Option<Py<PyAny>>,
    what: &'static str,
    _pending: PendingGuard,
}

impl Completion {
    fn complete(&mut self, outcome: Outcome) {
        if let Some(future) = self.future.take() {
            self.mailbox
                .get()
                .post(Delivery::Complete { future, outcome });
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let what = self.what;
        self.complete(Box::new(move |py| {
            Err(errors::courier_error(
                py,
                format!("{what} was abandoned: its engine's runtime shut down"),
            ))
        }));
    }
}

/// The running event loop, or an error saying that `what` must be called
/// from a coroutine.
fn running_loop<'py>(py: Python<'py>, what: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("asyncio")?
        .call_method0("get_running_loop")
        .map_err(|e| {
            PyRuntimeError::new_err(format!(
                "{what} returns an asyncio awaitable: call it with an event loop running in \
                 this thread (from a coroutine) ({e})"
            ))
        })
}

/// Runs `fut` on the engine's runtime and returns a coroutine awaiting its
/// outcome, made a Python object by `convert` on the loop's thread. See
/// the module's comment.
pub(crate) fn awaitable_with<'py, F, C>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    what: &'static str,
    fut: F,
    on_cancel: OnCancel,
    convert: C,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
    C: FnOnce(Python<'_>, F::Output) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let event_loop = running_loop(py, what)?;
    let mailbox = mailbox_of(py, &event_loop)?;
    let future = event_loop.call_method0("create_future")?;
    // Counted before `drive` (see the driver's exit).
    let mut completion = Completion {
        mailbox,
        future: Some(future.clone().unbind()),
        what,
        _pending: shared.aio.pending.enter(),
    };
    drive(shared)?;
    let task = shared.spawn(async move {
        let out = fut.await;
        completion.complete(Box::new(move |py| convert(py, out)));
    });
    if matches!(on_cancel, OnCancel::Abort) {
        let abort = AbortOnCancel {
            abort: task.abort_handle(),
        };
        future.call_method1("add_done_callback", (Py::new(py, abort)?,))?;
    }
    aio_module(py)?.call_method1("awaited", (future,))
}

/// [`awaitable_with`] for a call or a response: the unpickled response
/// (`None` without one), or the call's exception.
pub(crate) fn awaitable<'py, F>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    what: &'static str,
    fut: F,
    on_cancel: OnCancel,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = courier::Result<Option<Bytes>>> + Send + 'static,
{
    awaitable_with(py, shared, what, fut, on_cancel, crate::remote::outcome)
}

/// A coroutine that returns `value` at once (`__aenter__`, `__aexit__`).
pub(crate) fn ready(py: Python<'_>, value: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    aio_module(py)?.call_method1("ready", (value,))
}

/// `await engine.lookup_async(address)`.
pub(crate) fn lookup<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    address: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let engine = shared.engine.clone();
    let text = address.to_owned();
    let owner = shared.clone();
    awaitable_with(
        py,
        shared,
        "Engine.lookup_async",
        async move { engine.lookup(&text).await },
        OnCancel::Abort,
        move |py, out| match out {
            Ok(addr) => Ok(Py::new(py, Address::new(addr, owner))?.into_any()),
            Err(e) => Err(errors::to_py(py, &e)),
        },
    )
}

/// `await engine.wait_for_finalize_async()`.
pub(crate) fn wait_for_finalize<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
) -> PyResult<Bound<'py, PyAny>> {
    let engine = shared.engine.clone();
    awaitable_with(
        py,
        shared,
        "Engine.wait_for_finalize_async",
        async move { engine.wait_for_finalize().await },
        OnCancel::Abort,
        |py, ()| Ok(py.None()),
    )
}

/// `await address.ping_async(timeout=None)`: seconds.
pub(crate) fn ping<'py>(
    py: Python<'py>,
    shared: &Arc<Shared>,
    address: courier::Address,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let after = crate::remote::timeout_from_ms(timeout)?;
    awaitable_with(
        py,
        shared,
        "Address.ping_async",
        async move { address.ping(after).await },
        OnCancel::Abort,
        |py, out| match out {
            Ok(d) => Ok(d.as_secs_f64().into_pyobject(py)?.into_any().unbind()),
            Err(e) => Err(errors::to_py(py, &e)),
        },
    )
}

// ---------------------------------------------------------------------
// The request an `async def` handler serves, as a context variable.

/// `courier._aio`'s context variable naming the request whose handler
/// runs (in the handler's task and the tasks it starts).
fn request_var(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    aio_module(py)?.getattr("request")
}

/// The request of an `async def` handler, as its context sees it.
#[pyclass(module = "courier._native", name = "_ServedRequest", frozen)]
pub(crate) struct ServedRequest {
    token: courier::CancelToken,
}

/// The cancellation token of the request whose `async def` handler's
/// context this code runs in, if any: a `call_async` made there inherits
/// its deadline and is cancelled with it.
pub(crate) fn serving(py: Python<'_>) -> PyResult<Option<courier::CancelToken>> {
    let current = request_var(py)?.call_method0("get")?;
    Ok(current
        .cast::<ServedRequest>()
        .ok()
        .map(|s| s.get().token.clone()))
}

// ---------------------------------------------------------------------
// `async def` handlers.

/// A coroutine function registered as a handler, and its event loop.
struct Target {
    rpc: String,
    func: Py<PyAny>,
    event_loop: Py<PyAny>,
    mailbox: Py<Mailbox>,
    /// Weak: the registration lives in the engine, which `Shared` owns.
    shared: Weak<Shared>,
}

/// Where a request's task is, for its cancellation.
enum Slot {
    /// Not started on the loop yet.
    Waiting,
    /// Running on the loop.
    Running(Py<PyAny>),
    /// Cancelled before it started, or finished: nothing to cancel.
    Gone,
}

struct TaskSlot(Mutex<Slot>);

impl TaskSlot {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registers `func`, a coroutine function, as the handler of `name` at
/// `provider_id`, run on `event_loop` (whose mailbox is `mailbox`).
#[allow(clippy::too_many_arguments)] // `Engine.register`'s, and the loop's
pub(crate) fn register(
    py: Python<'_>,
    shared: &Arc<Shared>,
    name: &str,
    func: Bound<'_, PyAny>,
    event_loop: Bound<'_, PyAny>,
    mailbox: Bound<'_, PyAny>,
    provider_id: u16,
    disable_response: bool,
) -> PyResult<()> {
    if !func.is_callable() {
        return Err(PyValueError::new_err(format!(
            "the handler of RPC '{name}' is not callable"
        )));
    }
    let mailbox = mailbox.cast_into::<Mailbox>()?.unbind();
    drive(shared)?;
    let target = Arc::new(Target {
        rpc: name.to_owned(),
        func: func.unbind(),
        event_loop: event_loop.unbind(),
        mailbox,
        shared: Arc::downgrade(shared),
    });
    let mut options = courier::RpcOptions::provider(provider_id);
    options.disable_response = disable_response;
    shared
        .engine
        .register_raw(
            name,
            options,
            move |handle: courier::Handle, payload: Bytes| serve(target.clone(), handle, payload),
        )
        .map_err(|e| errors::to_py(py, &e))
}

/// Cancels the request's task on its loop when dropped armed: the engine
/// drops the raw handler's future when the request is cancelled.
struct CancelOnDrop {
    slot: Arc<TaskSlot>,
    target: Arc<Target>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Slot::Running(task) = std::mem::replace(&mut *self.slot.lock(), Slot::Gone) {
            self.target.mailbox.get().post(Delivery::Cancel(task));
        }
    }
}

/// One request for an `async def` handler: posts its start to the loop,
/// and completes when its task does.
async fn serve(target: Arc<Target>, handle: courier::Handle, payload: Bytes) -> Result<(), String> {
    let token = handle.cancel_token();
    let (done, result) = oneshot::channel();
    let slot = Arc::new(TaskSlot(Mutex::new(Slot::Waiting)));
    let mut guard = CancelOnDrop {
        slot: slot.clone(),
        target: target.clone(),
        armed: true,
    };
    // It waits for its event loop: a `waiting` request in the statistics
    // until the loop starts its task (`start`).
    handle.mark_queued();
    target.mailbox.get().post(Delivery::Start(Starting {
        target: target.clone(),
        handle,
        payload,
        done,
        slot,
    }));
    let out = result.await.unwrap_or_else(|_| {
        Err(format!(
            "the handler of RPC '{}' did not complete: its event loop dropped it",
            target.rpc
        ))
    });
    guard.armed = false;
    if token.is_cancelled() {
        // Cancelled while the task ran (its deadline may have passed before
        // the engine noticed): nothing is sent back, and the engine ends
        // the request as cancelled, as in `Engine._register`.
        std::future::pending::<()>().await;
    }
    out
}

/// What a request's start needs, on the loop.
struct Starting {
    target: Arc<Target>,
    handle: courier::Handle,
    payload: Bytes,
    done: oneshot::Sender<Result<(), String>>,
    slot: Arc<TaskSlot>,
}

/// Starts a request's task (on the loop's thread).
fn start(py: Python<'_>, starting: Starting) {
    let Starting {
        target,
        handle,
        payload,
        done,
        slot,
    } = starting;
    if handle.is_cancelled() || matches!(*slot.lock(), Slot::Gone) {
        // The caller gave up while the request waited for the loop: its
        // handler does not run (as a blocking handler's would not).
        let _ = done.send(Err(
            "the request was cancelled before its handler ran".into()
        ));
        return;
    }
    let Some(shared) = target.shared.upgrade() else {
        let _ = done.send(Err(format!(
            "the handler of RPC '{}' did not run: the engine was finalized",
            target.rpc
        )));
        return;
    };
    // The loop takes it up: its wait (the `queue` phase) ends here.
    handle.mark_started();
    match start_task(py, &target, handle, &payload, shared) {
        Ok(Some(task)) => {
            let finished = Finished {
                rpc: target.rpc.clone(),
                done: Mutex::new(Some(done)),
            };
            let watched = Py::new(py, finished)
                .and_then(|f| task.call_method1("add_done_callback", (f,)).map(drop));
            if let Err(e) = watched {
                // `done` went with the callback: the caller is told the
                // handler did not complete.
                e.print(py);
            }
            let mut slot = slot.lock();
            if matches!(*slot, Slot::Gone) {
                drop(task.call_method0("cancel"));
            } else {
                *slot = Slot::Running(task.unbind());
            }
        }
        // Not a coroutine: it ran when called.
        Ok(None) => {
            let _ = done.send(Ok(()));
        }
        Err(err) => {
            let _ = done.send(Err(errors::describe_handler_error(py, &target.rpc, &err)));
        }
    }
}

/// Calls the handler with its arguments and makes its coroutine a task on
/// the loop, in a context naming the request; `None` if the handler
/// returned no awaitable.
fn start_task<'py>(
    py: Python<'py>,
    target: &Target,
    handle: courier::Handle,
    payload: &[u8],
    shared: Arc<Shared>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let token = handle.cancel_token();
    let handle = Py::new(py, Handle::new(handle, shared))?;
    let (args, kwargs) = pickle::load_arguments(py, payload)?;
    // The handler's context: a copy of the loop's, naming the request.
    let context = py.import("contextvars")?.call_method0("copy_context")?;
    let served = Py::new(py, ServedRequest { token })?;
    context.call_method1("run", (request_var(py)?.getattr("set")?, served))?;
    // context.run(func, handle, *args, **kwargs)
    let mut all = Vec::with_capacity(args.len() + 2);
    all.push(target.func.bind(py).clone());
    all.push(handle.clone_ref(py).into_any().into_bound(py));
    all.extend(args.iter());
    let all = PyTuple::new(py, all)?;
    let kwargs: Option<&Bound<'_, PyDict>> = (!kwargs.is_empty()).then_some(&kwargs);
    let mut awaitable = context.call_method("run", all, kwargs)?;
    let inspect = py.import("inspect")?;
    if inspect
        .call_method1("isasyncgen", (&awaitable,))?
        .is_truthy()?
    {
        // An async generator: its items are the response stream.
        awaitable = aio_module(py)?.call_method1("serve_async_generator", (handle, awaitable))?;
    }
    if inspect
        .call_method1("iscoroutine", (&awaitable,))?
        .is_truthy()?
    {
        let kw = PyDict::new(py);
        kw.set_item("context", &context)?;
        let task =
            target
                .event_loop
                .bind(py)
                .call_method("create_task", (awaitable,), Some(&kw))?;
        return Ok(Some(task));
    }
    if inspect
        .call_method1("isawaitable", (&awaitable,))?
        .is_truthy()?
    {
        let kw = PyDict::new(py);
        kw.set_item("loop", target.event_loop.bind(py))?;
        let task = py
            .import("asyncio")?
            .call_method("ensure_future", (awaitable,), Some(&kw))?;
        return Ok(Some(task));
    }
    Ok(None)
}

/// The done callback of a request's task: completes the raw handler with
/// the task's outcome (an exception is described to the caller, and
/// logged, as a blocking handler's is).
#[pyclass(module = "courier._native", name = "_HandlerFinished", frozen)]
struct Finished {
    rpc: String,
    done: Mutex<Option<oneshot::Sender<Result<(), String>>>>,
}

#[pymethods]
impl Finished {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(done) = done else {
            return Ok(());
        };
        let out = if task.call_method0("cancelled")?.is_truthy()? {
            Err(format!(
                "the handler of RPC '{}' was cancelled (asyncio.CancelledError)",
                self.rpc
            ))
        } else {
            // Reading it also tells asyncio the exception was retrieved.
            let exception = task.call_method0("exception")?;
            if exception.is_none() {
                Ok(())
            } else {
                let err = PyErr::from_value(exception);
                Err(errors::describe_handler_error(py, &self.rpc, &err))
            }
        };
        let _ = done.send(out);
        Ok(())
    }
}
