//! asyncio: awaitable calls and `async def` handlers (docs/python.md,
//! "asyncio").
//!
//! **Awaitables.** `call_async`, `respond_async`, `lookup_async`,
//! `ping_async` and `wait_for_finalize_async` run their work as a task on
//! the engine's runtime (`Shared::spawn`), as a non-blocking call does, and
//! hand the event loop an asyncio future for its outcome through
//! pyo3-async-runtimes (`future_into_py_with_locals`). The bridge's future
//! only awaits the engine's task; it runs on the bridge's own small tokio
//! runtime (one `courier-py-aio` worker, built on first use), which is also
//! where the GIL is taken to complete the asyncio future (on its blocking
//! pool, through `loop.call_soon_threadsafe`), so the engine's runtime
//! never waits for the GIL. The response is unpickled there, not on the
//! event loop. When the asyncio future is cancelled (the awaiting task is
//! cancelled, `asyncio.wait_for` or `asyncio.timeout` expires), the bridge
//! drops its future, which aborts the engine's task ([`OnCancel::Abort`]):
//! a call's future dropped cancels the call and tells its server.
//!
//! **Driving the engine.** Without a progress thread (PyMargo's default)
//! the engine moves only while a Python thread waits in it, and an event
//! loop never does. The first time asyncio uses such an engine, [`drive`]
//! starts a thread, `courier-py-aio-driver`, that waits in it until it is
//! finalized, as a thread in `wait_for_finalize` would (and, like one, runs
//! the engine's blocking handlers whose requests arrive meanwhile).
//!
//! **`async def` handlers** ([`register`]) run on an asyncio event loop the
//! Python side chose (`courier/_aio.py`). A request's raw handler takes
//! the GIL on a blocking thread of the engine's runtime (never on its
//! workers) and schedules the start of the coroutine on the loop with
//! `call_soon_threadsafe`. On the loop, the arguments are unpickled and the
//! coroutine becomes a task, in a copy of the context in which
//! `courier._aio`'s request variable names the request (so `call_async`
//! from the handler inherits its deadline and cancellation, as a blocking
//! call made from a blocking handler does). The task's outcome completes
//! the raw handler: an exception reaches the caller as a blocking
//! handler's does. When the request is cancelled the engine drops the raw
//! handler's future, and dropping it cancels the task
//! (`asyncio.CancelledError` inside the coroutine).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::errors;
use crate::handle::Handle;
use crate::pickle;
use crate::shared::Shared;

/// The bridge runtime's thread names.
const BRIDGE_THREAD_NAME: &str = "courier-py-aio";

/// The driver thread's name ([`drive`]).
const DRIVER_THREAD_NAME: &str = "courier-py-aio-driver";

/// The driver thread's stack: it runs blocking handlers, which may nest
/// (as the binding's handler threads do).
const DRIVER_THREAD_STACK: usize = 16 << 20;

/// Configures the bridge's runtime (built on first use): one worker. Its
/// tasks only wait for the engine's tasks; called once, from the module's
/// initialisation.
pub(crate) fn init() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(1)
        .thread_name(BRIDGE_THREAD_NAME)
        .enable_all();
    pyo3_async_runtimes::tokio::init(builder);
}

/// What asyncio keeps per engine: whether its driver thread was started.
#[derive(Default)]
pub(crate) struct AioState {
    driven: AtomicBool,
}

/// Makes sure the engine moves while an event loop waits for it: without
/// a progress thread, starts the driver thread (once per engine). See the
/// module's comment.
pub(crate) fn drive(shared: &Arc<Shared>) -> PyResult<()> {
    if shared.progress_thread || shared.aio.driven.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    // The thread holds the engine until it is finalized (by `finalize()`,
    // a remote shutdown, or the `Engine` object being garbage collected,
    // which finalizes it).
    let driven = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(DRIVER_THREAD_NAME.to_owned())
        .stack_size(DRIVER_THREAD_STACK)
        .spawn(move || {
            while !driven.engine.is_finalized() {
                let engine = driven.engine.clone();
                let attached = Python::try_attach(|py| {
                    let waited = driven.wait(py, "the asyncio driver", async move {
                        engine.wait_for_finalize().await;
                    });
                    if let Err(e) = waited {
                        // KeyboardInterrupt or SystemExit from a handler it
                        // ran: printed, and the engine is driven on.
                        e.print(py);
                    }
                });
                if attached.is_none() {
                    // The interpreter is going away.
                    break;
                }
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

/// What cancelling the asyncio future does to the engine's task.
pub(crate) enum OnCancel {
    /// Aborts it: a call is cancelled (and its server told), a wait ends.
    Abort,
    /// Lets it finish (a response being sent: stopping it halfway would
    /// close the connection).
    Finish,
}

/// The engine's task behind an awaitable; aborted when dropped, if so
/// asked.
struct Task<T> {
    join: JoinHandle<T>,
    abort: bool,
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if self.abort {
            self.join.abort();
        }
    }
}

/// An outcome for the bridge to give the event loop: made into a Python
/// object (or exception) with the GIL, off the engine's runtime.
struct Deliver(Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>);

impl<'py> IntoPyObject<'py> for Deliver {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        (self.0)(py).map(|v| v.into_bound(py))
    }
}

/// The running event loop's task locals, or an error saying that `what`
/// must be awaited from a coroutine.
fn running_locals(py: Python<'_>, what: &str) -> PyResult<pyo3_async_runtimes::TaskLocals> {
    pyo3_async_runtimes::tokio::get_current_locals(py).map_err(|e| {
        PyRuntimeError::new_err(format!(
            "{what} returns an asyncio awaitable: call it with an event loop running in \
             this thread (from a coroutine) ({e})"
        ))
    })
}

/// Runs `fut` on the engine's runtime and returns an asyncio future of its
/// outcome, made a Python object by `convert` (with the GIL, off the event
/// loop). See the module's comment.
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
    let locals = running_locals(py, what)?;
    drive(shared)?;
    let mut task = Task {
        join: shared.spawn(fut),
        abort: matches!(on_cancel, OnCancel::Abort),
    };
    let future = pyo3_async_runtimes::tokio::future_into_py_with_locals(py, locals, async move {
        // (Once completed, aborting it on drop does nothing.)
        let joined = (&mut task.join).await;
        Ok(Deliver(Box::new(move |py| match joined {
            Ok(out) => convert(py, out),
            Err(_) => Err(errors::courier_error(
                py,
                format!("{what} was abandoned: the engine's runtime shut down"),
            )),
        })))
    })?;
    // A coroutine awaiting the future, for `asyncio.create_task`.
    aio_module(py)?.getattr("awaited")?.call1((future,))
}

static AIO_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `courier._aio`, the Python half of asyncio support.
fn aio_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = AIO_MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        Ok(py.import("courier._aio")?.unbind())
    })?;
    Ok(m.bind(py))
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
/// `provider_id`, run on `event_loop`.
pub(crate) fn register(
    py: Python<'_>,
    shared: &Arc<Shared>,
    name: &str,
    func: Bound<'_, PyAny>,
    event_loop: Bound<'_, PyAny>,
    provider_id: u16,
    disable_response: bool,
) -> PyResult<()> {
    if !func.is_callable() {
        return Err(PyValueError::new_err(format!(
            "the handler of RPC '{name}' is not callable"
        )));
    }
    if !event_loop.hasattr("call_soon_threadsafe")? {
        return Err(PyValueError::new_err(format!(
            "the event loop of RPC '{name}' is not an asyncio event loop: {event_loop}"
        )));
    }
    drive(shared)?;
    let target = Arc::new(Target {
        rpc: name.to_owned(),
        func: func.unbind(),
        event_loop: event_loop.unbind(),
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
        let Slot::Running(task) = std::mem::replace(&mut *self.slot.lock(), Slot::Gone) else {
            return;
        };
        let target = self.target.clone();
        let cancel = move || {
            Python::try_attach(|py| {
                let cancel = task.bind(py).getattr("cancel")?;
                target
                    .event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (cancel,))
                    .map(drop)
            });
        };
        // Off the engine's workers: taking the GIL may wait. Outside a
        // runtime (the engine's runtime shutting down) the task is left to
        // finish: its response goes nowhere.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn_blocking(cancel));
        }
    }
}

/// One request for an `async def` handler: starts its task on the loop,
/// and completes when the task does.
async fn serve(target: Arc<Target>, handle: courier::Handle, payload: Bytes) -> Result<(), String> {
    let token = handle.cancel_token();
    let (done, result) = oneshot::channel();
    let slot = Arc::new(TaskSlot(Mutex::new(Slot::Waiting)));
    let mut guard = CancelOnDrop {
        slot: slot.clone(),
        target: target.clone(),
        armed: true,
    };
    let start = Start {
        inner: Mutex::new(Some(Starting {
            target: target.clone(),
            handle,
            payload,
            done,
            slot,
        })),
    };
    // The GIL is taken off the engine's workers.
    let scheduled = tokio::task::spawn_blocking(move || schedule(start)).await;
    if let Ok(Err(message)) = scheduled {
        guard.armed = false;
        return Err(message);
    }
    let out = result.await.unwrap_or_else(|_| {
        Err(format!(
            "the handler of RPC '{}' did not run: its event loop closed, or the engine was \
             finalized",
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

/// Asks the loop to start the task (`call_soon_threadsafe`). An error is
/// what the caller is told.
fn schedule(start: Start) -> Result<(), String> {
    let scheduled = Python::try_attach(|py| {
        let rpc = start.rpc();
        let event_loop = start.event_loop(py);
        let start = Py::new(py, start)
            .map_err(|e| format!("the handler of RPC '{rpc}' cannot be scheduled: {e}"))?;
        let out = event_loop.call_method1("call_soon_threadsafe", (start.clone_ref(py),));
        if out.is_err() {
            // Not scheduled (the loop is closed): the request fails here,
            // and its `done` is dropped unused.
            drop(start.get().take());
        }
        out.map(drop).map_err(|e| {
            format!("the handler of RPC '{rpc}' cannot run on its asyncio event loop: {e}")
        })
    });
    scheduled.unwrap_or_else(|| Err("the Python interpreter is shutting down".to_owned()))
}

/// What a request's start needs, on the loop.
struct Starting {
    target: Arc<Target>,
    handle: courier::Handle,
    payload: Bytes,
    done: oneshot::Sender<Result<(), String>>,
    slot: Arc<TaskSlot>,
}

/// The callable the loop calls to start a request's task.
#[pyclass(module = "courier._native", name = "_StartHandler", frozen)]
struct Start {
    inner: Mutex<Option<Starting>>,
}

impl Start {
    fn take(&self) -> Option<Starting> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn rpc(&self) -> String {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.target.rpc.clone())
            .unwrap_or_default()
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or_else(
                || py.None().into_bound(py),
                |s| s.target.event_loop.bind(py).clone(),
            )
    }
}

#[pymethods]
impl Start {
    fn __call__(&self, py: Python<'_>) {
        let Some(starting) = self.take() else {
            return;
        };
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
    let (args, kwargs) = pickle::load_arguments(py, payload).map_err(|e| {
        errors::courier_error(
            py,
            format!(
                "cannot decode the arguments (a pickled (args, kwargs) pair, as courier and \
                 pymargo send): {e}"
            ),
        )
    })?;
    // The handler's context: a copy of the loop's, naming the request.
    let context = py.import("contextvars")?.call_method0("copy_context")?;
    let served = Py::new(py, ServedRequest { token })?;
    context.call_method1("run", (request_var(py)?.getattr("set")?, served))?;
    // context.run(func, handle, *args, **kwargs)
    let mut all = Vec::with_capacity(args.len() + 2);
    all.push(target.func.bind(py).clone());
    all.push(handle.into_any().into_bound(py));
    all.extend(args.iter());
    let all = PyTuple::new(py, all)?;
    let kwargs: Option<&Bound<'_, PyDict>> = (!kwargs.is_empty()).then_some(&kwargs);
    let awaitable = context.call_method("run", all, kwargs)?;
    let inspect = py.import("inspect")?;
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
