//! The client side: `RemoteFunction`, `CallableRemoteFunction`, `Request`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::errors;
use crate::pickle;
use crate::shared::Shared;

/// A timeout in milliseconds (PyMargo's unit) as a duration; `None` or 0:
/// no timeout.
pub(crate) fn timeout_from_ms(ms: Option<f64>) -> PyResult<Option<Duration>> {
    match ms {
        None => Ok(None),
        Some(0.0) => Ok(None),
        Some(ms) if ms > 0.0 => Duration::try_from_secs_f64(ms / 1000.0)
            .map(Some)
            .map_err(|e| PyValueError::new_err(format!("timeout={ms} ms: {e}"))),
        Some(ms) => Err(PyValueError::new_err(format!(
            "timeout={ms}: a timeout is a number of milliseconds, 0 for none"
        ))),
    }
}

/// An RPC by name, as `Engine.register` returns it; `on(address)` makes it
/// callable.
#[pyclass(module = "courier._native", name = "RemoteFunction", frozen)]
pub(crate) struct RemoteFunction {
    raw: courier::RawRemoteFunction,
    shared: Arc<Shared>,
    engine: Py<PyAny>,
    /// The provider id it was registered at (for `deregister`).
    provider_id: u16,
    one_way: AtomicBool,
}

impl RemoteFunction {
    pub(crate) fn new(
        shared: Arc<Shared>,
        engine: Py<PyAny>,
        name: &str,
        provider_id: u16,
        one_way: bool,
    ) -> Self {
        Self {
            raw: shared.engine.remote_raw(name),
            shared,
            engine,
            provider_id,
            one_way: AtomicBool::new(one_way),
        }
    }
}

/// An address given as an `Address` or as a string to look up.
pub(crate) fn resolve(
    py: Python<'_>,
    shared: &Arc<Shared>,
    address: &Bound<'_, PyAny>,
) -> PyResult<courier::Address> {
    if let Ok(a) = address.cast::<Address>() {
        return Ok(a.get().inner.clone());
    }
    let text: String = address.extract()?;
    let engine = shared.engine.clone();
    shared
        .wait(py, "lookup", async move { engine.lookup(&text).await })?
        .map_err(|e| errors::to_py(py, &e))
}

#[pymethods]
impl RemoteFunction {
    /// Binds the function to `address` (an `Address`, or a string to look
    /// up) and `provider_id`.
    #[pyo3(signature = (address, provider_id=0))]
    fn on(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        address: &Bound<'_, PyAny>,
        provider_id: u16,
    ) -> PyResult<CallableRemoteFunction> {
        let this = slf.get();
        let addr = resolve(py, &this.shared, address)?;
        Ok(CallableRemoteFunction {
            function: slf.clone().unbind(),
            callable: this.raw.on_provider(&addr, provider_id),
            one_way: this
                .raw
                .clone()
                .disable_response()
                .on_provider(&addr, provider_id),
            address: Py::new(py, Address::new(addr, this.shared.clone()))?,
            provider_id,
            shared: this.shared.clone(),
        })
    }

    /// Makes calls one-way (or two-way again with `False`): they return
    /// `None` once the request is sent. The server must register the RPC
    /// with `disable_response=True`.
    #[pyo3(signature = (disable=true))]
    fn disable_response(&self, disable: bool) {
        self.one_way.store(disable, Ordering::Release);
    }

    /// Whether calls are one-way.
    fn disabled_response(&self) -> bool {
        self.one_way.load(Ordering::Acquire)
    }

    /// Removes the handler this function was registered with (server side).
    fn deregister(&self, py: Python<'_>) -> PyResult<()> {
        self.shared
            .engine
            .deregister(self.raw.name(), self.provider_id)
            .map_err(|e| errors::to_py(py, &e))
    }

    /// The RPC's name.
    #[getter]
    fn name(&self) -> &str {
        self.raw.name()
    }

    /// The RPC's id (the hash of its name on the wire).
    #[getter]
    fn rpc_id(&self) -> u64 {
        self.raw.id()
    }

    /// The engine it belongs to.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.engine.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!("RemoteFunction('{}')", self.raw.name())
    }
}

/// A `RemoteFunction` bound to an address and provider: call it like a
/// function. `timeout=` (milliseconds) and `blocking=` are the call's own
/// keywords; every other argument goes to the remote handler, pickled.
#[pyclass(module = "courier._native", name = "CallableRemoteFunction", frozen)]
pub(crate) struct CallableRemoteFunction {
    function: Py<RemoteFunction>,
    callable: courier::RawCallable,
    one_way: courier::RawCallable,
    address: Py<Address>,
    provider_id: u16,
    shared: Arc<Shared>,
}

impl CallableRemoteFunction {
    /// The call of `args` and `kwargs` as a future to run on the engine's
    /// runtime (the response, `None` for a one-way call), and whether it is
    /// one-way. `serving` is the request it is part of, if any (its deadline
    /// is inherited, its cancellation cancels the call).
    fn prepare(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'_, PyDict>>,
        serving: Option<courier::CancelToken>,
    ) -> PyResult<(
        impl std::future::Future<Output = courier::Result<Option<Bytes>>> + Send + 'static,
        bool,
    )> {
        let payload = pickle::dump_arguments(py, self.function.get().raw.name(), args, kwargs)?;
        let one_way = self.function.get().one_way.load(Ordering::Acquire);
        let mut callable = if one_way {
            self.one_way.clone()
        } else {
            self.callable.clone()
        };
        if let Some(after) = timeout_from_ms(timeout)? {
            callable = callable.timeout(after);
        }
        let call = async move {
            let out = match &serving {
                Some(token) => token.in_scope(callable.call(&payload)).await,
                None => callable.call(&payload).await,
            };
            out.map(|out| (!one_way).then_some(out))
        };
        Ok((call, one_way))
    }
}

impl CallableRemoteFunction {
    /// The opening of a stream call of `args` and `kwargs`, as a future
    /// to run on the engine's runtime.
    fn prepare_stream(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'_, PyDict>>,
        serving: Option<courier::CancelToken>,
    ) -> PyResult<
        impl std::future::Future<Output = courier::Result<courier::stream::RawStreamCall>>
            + Send
            + 'static,
    > {
        let name = self.function.get().raw.name();
        if self.function.get().one_way.load(Ordering::Acquire) {
            return Err(crate::stream::one_way_error(name));
        }
        let payload = pickle::dump_arguments(py, name, args, kwargs)?;
        let mut callable = self.callable.clone();
        if let Some(after) = timeout_from_ms(timeout)? {
            callable = callable.timeout(after);
        }
        Ok(crate::stream::open(callable, payload, serving))
    }

    fn stream_call(&self, call: courier::stream::RawStreamCall) -> crate::stream::StreamCall {
        crate::stream::StreamCall::new(
            call,
            self.function.get().raw.name(),
            self.callable.address(),
            self.shared.clone(),
        )
    }
}

#[pymethods]
impl CallableRemoteFunction {
    /// Calls the RPC with `args` and `kwargs` and returns the value the
    /// handler responded with (`None` for a one-way RPC). With
    /// `blocking=False`, returns a `Request` at once.
    ///
    /// Raises `courier.TimeoutError` past `timeout` milliseconds (0: none),
    /// `courier.RemoteError` when the handler raised, `CourierError`
    /// otherwise.
    ///
    /// Made from inside a handler (on its thread), a call without a
    /// `timeout` inherits the deadline of the request being served, and is
    /// cancelled (`courier.CancelledError`) when that request is.
    #[pyo3(signature = (*args, timeout=None, blocking=true, **kwargs))]
    fn __call__(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        blocking: bool,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        // Made from a handler: the call is part of its request (read here,
        // on the thread that makes the call; see `shared::serving`).
        let serving = crate::shared::serving();
        let (call, one_way) = self.prepare(py, args, timeout, kwargs, serving)?;
        if blocking {
            let out = self.shared.wait(py, "call", call)?;
            outcome(py, out)
        } else {
            let join = self.shared.spawn(call);
            self.shared.tick(py, "call")?;
            // A one-way call is not cancellable: nothing waits for its
            // handler, and the server is told nothing.
            let cancel = (!one_way).then(|| CallCancel {
                rpc: self.function.get().raw.name().to_owned(),
                address: self.callable.address(),
                abort: join.abort_handle(),
                cancelled: AtomicBool::new(false),
            });
            Ok(Py::new(py, Request::with_cancel(join, self.shared.clone(), cancel))?.into_any())
        }
    }

    /// The awaitable form of a call, for asyncio: `await
    /// f.call_async(*args, timeout=0, **kwargs)` returns the handler's
    /// response (`None` for a one-way RPC) and raises what the blocking
    /// call raises. It does not block the event loop. Cancelling the
    /// awaiting task cancels the call, and its server is told. Called from
    /// an `async def` handler, the call inherits its request's deadline
    /// and cancellation. Must be called with an event loop running in this
    /// thread (from a coroutine). See `aio.rs`.
    #[pyo3(signature = (*args, timeout=None, **kwargs))]
    fn call_async<'py>(
        &self,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let serving = crate::aio::serving(py)?.or_else(crate::shared::serving);
        let (call, _) = self.prepare(py, args, timeout, kwargs, serving)?;
        crate::aio::awaitable(
            py,
            &self.shared,
            "call_async",
            call,
            crate::aio::OnCancel::Abort,
        )
    }

    /// Opens a stream call with `args` and `kwargs` (docs/python.md,
    /// "Streams") and returns its `StreamCall` once the request is sent:
    /// send items to the handler, iterate over those it sends, `finish()`
    /// for its answer. `timeout` (milliseconds; 0: none) bounds the whole
    /// stream, and the handler sees it as its deadline. Made from a
    /// handler, the stream inherits that request's deadline, as a call
    /// does.
    #[pyo3(signature = (*args, timeout=None, **kwargs))]
    fn stream(
        &self,
        py: Python<'_>,
        args: &Bound<'_, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<crate::stream::StreamCall> {
        let serving = crate::shared::serving();
        let open = self.prepare_stream(py, args, timeout, kwargs, serving)?;
        let call = self
            .shared
            .wait(py, "stream", self.shared.flushed(open))?
            .map_err(|e| errors::to_py(py, &e))?;
        Ok(self.stream_call(call))
    }

    /// The awaitable form of `stream`: `call = await
    /// f.stream_async(*args, timeout=0, **kwargs)` opens the stream
    /// without blocking the event loop; `async for item in call` reads
    /// its items. Called from an `async def` handler, the stream inherits
    /// its request's deadline.
    #[pyo3(signature = (*args, timeout=None, **kwargs))]
    fn stream_async<'py>(
        slf: &Bound<'py, Self>,
        py: Python<'py>,
        args: &Bound<'py, PyTuple>,
        timeout: Option<f64>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.get();
        let serving = crate::aio::serving(py)?.or_else(crate::shared::serving);
        let open = this.prepare_stream(py, args, timeout, kwargs, serving)?;
        let me = slf.clone().unbind();
        crate::aio::awaitable_with(
            py,
            &this.shared,
            "stream_async",
            open,
            crate::aio::OnCancel::Abort,
            move |py, out| match out {
                Ok(call) => Ok(Py::new(py, me.get().stream_call(call))?.into_any()),
                Err(e) => Err(errors::to_py(py, &e)),
            },
        )
    }

    /// The remote function.
    #[getter]
    fn remote_function(&self, py: Python<'_>) -> Py<RemoteFunction> {
        self.function.clone_ref(py)
    }

    /// The target address.
    #[getter]
    fn address(&self, py: Python<'_>) -> Py<Address> {
        self.address.clone_ref(py)
    }

    /// The target provider id.
    #[getter]
    fn provider_id(&self) -> u16 {
        self.provider_id
    }

    /// The engine it belongs to.
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyAny> {
        self.function.get().engine.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "CallableRemoteFunction('{}' at {}, provider_id={})",
            self.function.get().raw.name(),
            self.callable.address(),
            self.provider_id
        )
    }
}

/// A call's result as Python: the unpickled response, `None` without one.
pub(crate) fn outcome(py: Python<'_>, out: courier::Result<Option<Bytes>>) -> PyResult<Py<PyAny>> {
    match out {
        Ok(Some(bytes)) => Ok(pickle::loads(py, &bytes)?.unbind()),
        Ok(None) => Ok(py.None()),
        Err(e) => Err(errors::to_py(py, &e)),
    }
}

type Pending = JoinHandle<courier::Result<Option<Bytes>>>;

enum State {
    Running(Pending),
    /// Another thread is in `wait()`.
    Waiting,
    Done(PyResult<Py<PyAny>>),
}

/// What cancels a call's request: its task's abort handle, and what the
/// error then names.
pub(crate) struct CallCancel {
    rpc: String,
    address: String,
    abort: tokio::task::AbortHandle,
    /// Set by `cancel()` (or by dropping the request): an aborted task is
    /// then a cancellation, not a runtime that shut down.
    cancelled: AtomicBool,
}

impl CallCancel {
    /// What cancels the call of `rpc` to `address` (what the error names)
    /// run by the task of `abort`.
    pub(crate) fn new(rpc: String, address: String, abort: tokio::task::AbortHandle) -> Self {
        Self {
            rpc,
            address,
            abort,
            cancelled: AtomicBool::new(false),
        }
    }
}

/// A call (or response, or bulk transfer) in flight, from `blocking=False`:
/// `test()` whether it completed, `wait()` for its result, `cancel()` a
/// call. Dropping the request of a call that is still in flight cancels it;
/// dropping that of a response or a transfer does not.
#[pyclass(module = "courier._native", name = "Request", frozen)]
pub(crate) struct Request {
    state: Mutex<State>,
    shared: Arc<Shared>,
    /// For a two-way call: how to cancel it.
    cancel: Option<CallCancel>,
}

impl Drop for Request {
    fn drop(&mut self) {
        // A call nobody can wait for any more is given up: the server is
        // told (once the engine runs: at once with a progress thread).
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let (Some(_), State::Running(join)) = (&self.cancel, &*state) {
            join.abort();
        }
    }
}

impl Request {
    /// A request that cannot be cancelled (a response, a bulk transfer).
    pub(crate) fn new(join: Pending, shared: Arc<Shared>) -> Self {
        Self::with_cancel(join, shared, None)
    }

    pub(crate) fn with_cancel(
        join: Pending,
        shared: Arc<Shared>,
        cancel: Option<CallCancel>,
    ) -> Self {
        Self {
            state: Mutex::new(State::Running(join)),
            shared,
            cancel,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `cancel()` (or a drop) cancelled the call.
    fn was_cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.cancelled.load(Ordering::Acquire))
    }

    /// The outcome of a task that ended: its result, or why it has none.
    fn joined(
        &self,
        py: Python<'_>,
        joined: Result<courier::Result<Option<Bytes>>, tokio::task::JoinError>,
    ) -> PyResult<Py<PyAny>> {
        match joined {
            Ok(out) => {
                // Completed before a cancel() could stop it: the result
                // stands.
                if let Some(c) = &self.cancel {
                    c.cancelled.store(false, Ordering::Release);
                }
                outcome(py, out)
            }
            Err(_) => match &self.cancel {
                Some(c) if c.cancelled.load(Ordering::Acquire) => {
                    let e = courier::Error::Cancelled {
                        rpc: c.rpc.clone(),
                        address: c.address.clone(),
                    };
                    Err(errors::to_py(py, &e))
                }
                _ => Err(errors::courier_error(
                    py,
                    "the request was abandoned: its engine's runtime shut down".into(),
                )),
            },
        }
    }

    /// Records a result, and returns a copy of it.
    fn finish(&self, py: Python<'_>, out: PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
        let copy = copy_result(py, &out);
        *self.lock() = State::Done(out);
        copy
    }
}

fn copy_result(py: Python<'_>, r: &PyResult<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    match r {
        Ok(v) => Ok(v.clone_ref(py)),
        Err(e) => Err(e.clone_ref(py)),
    }
}

#[pymethods]
impl Request {
    /// Waits for completion and returns the result (the response of a
    /// call, `None` for a one-way call or a response); raises as the call
    /// would have (`courier.CancelledError` after `cancel()`). Waiting
    /// again returns the same.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let join = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Waiting) {
                State::Running(join) => join,
                State::Waiting => {
                    return Err(errors::courier_error(
                        py,
                        "another thread is already waiting on this request".into(),
                    ));
                }
                State::Done(r) => {
                    let copy = copy_result(py, &r);
                    *state = State::Done(r);
                    return copy;
                }
            }
        };
        let mut join = join;
        match self.shared.wait(py, "Request.wait", &mut join) {
            Err(interrupted) => {
                // Ctrl-C: the request goes on; wait() may be called again.
                *self.lock() = State::Running(join);
                Err(interrupted)
            }
            Ok(joined) => {
                let out = self.joined(py, joined);
                self.finish(py, out)
            }
        }
    }

    /// Whether it completed (so `wait()` returns at once). Without a
    /// progress thread, also lets the engine make a little progress.
    fn test(&self, py: Python<'_>) -> PyResult<bool> {
        let finished = |s: &State| match s {
            State::Running(j) => j.is_finished(),
            State::Waiting => false,
            State::Done(_) => true,
        };
        if finished(&self.lock()) {
            return Ok(true);
        }
        self.shared.tick(py, "Request.test")?;
        Ok(finished(&self.lock()))
    }

    /// Cancels a call still in flight: the call is given up, and its
    /// server is told, whose handler then sees `handle.is_cancelled()`.
    /// `wait()` then raises `courier.CancelledError`. Returns True if this
    /// cancelled the call; False if it had completed already (its result
    /// stays), or if the request is not a call's that can be cancelled (a
    /// one-way call's, a response's, a bulk transfer's).
    fn cancel(&self, py: Python<'_>) -> PyResult<bool> {
        let Some(cancel) = &self.cancel else {
            return Ok(false);
        };
        let join = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Waiting) {
                State::Running(join) => join,
                State::Waiting => {
                    // Another thread waits on it: that thread sees the
                    // task end and raises CancelledError.
                    *state = State::Waiting;
                    if cancel.abort.is_finished() {
                        return Ok(false);
                    }
                    cancel.cancelled.store(true, Ordering::Release);
                    cancel.abort.abort();
                    return Ok(true);
                }
                done @ State::Done(_) => {
                    *state = done;
                    return Ok(false);
                }
            }
        };
        cancel.cancelled.store(true, Ordering::Release);
        join.abort();
        // The task ends at once (its call future dropped, which sends the
        // Cancel frame from a task of its own); without a progress thread
        // this thread runs both.
        let mut join = join;
        let joined = match self.shared.wait(py, "Request.cancel", &mut join) {
            Ok(joined) => joined,
            Err(interrupted) => {
                *self.lock() = State::Running(join);
                return Err(interrupted);
            }
        };
        let cancelled = joined.is_err();
        let out = self.joined(py, joined);
        *self.lock() = State::Done(out);
        self.shared.tick(py, "Request.cancel")?;
        Ok(cancelled)
    }

    /// Whether `cancel()` cancelled the call (`wait()` then raises
    /// `courier.CancelledError`).
    fn cancelled(&self) -> bool {
        self.was_cancelled()
    }

    fn __repr__(&self) -> String {
        let what = match &*self.lock() {
            _ if self.was_cancelled() => "cancelled",
            State::Running(_) | State::Waiting => "in flight",
            State::Done(_) => "completed",
        };
        format!("Request({what})")
    }
}
